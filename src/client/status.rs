//! `disruptor status`: the dashboard's picture as text.
//!
//! Three calls to the peer (`/api/peers`, `/api/apps`, `/api/stats`), then
//! [`render_status`] turns their answers into four parts:
//!
//! 1. a summary line: this peer, its HTTP address, its age, open or
//!    private mesh;
//! 2. PEERS: one row per peer, the apps each runs;
//! 3. APPS: per app, where it runs and the jobs that entered the mesh at
//!    this peer (rate, p99 latency, totals), from the stats' 5 s buckets;
//! 4. LATEST ERRORS: the last ten failed jobs and exited workers.

use std::collections::BTreeSet;

use super::http::PeerApi;
use super::term::{header, short, table};
use crate::api::{AppsView, MeshView};
use crate::apps::AppState;
use crate::cli::StatusArgs;
use crate::clock::unix_ms;
use crate::obs::stats::{Point, StatsView};
use crate::text::{ago, head, printable};

/// `disruptor status`: prints the mesh as the peer at `http_addr` sees it.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    let view: MeshView = peer.get("/api/peers").await?;
    let apps: AppsView = peer.get("/api/apps").await?;
    let stats: StatsView = peer.get("/api/stats").await?;
    print!("{}", render_status(&view, &apps, &stats, unix_ms()));
    Ok(())
}

/// What `disruptor status` prints, as of `now` (unix ms).
pub fn render_status(view: &MeshView, apps: &AppsView, stats: &StatsView, now: u64) -> String {
    let mut out = summary(view, apps, now);
    out.push_str(&peers_part(view, apps, now));
    out.push_str(&apps_part(apps, stats));
    out.push_str(&errors_part(view, stats, now));
    out
}

/// The first line, and the count of peers up and down.
fn summary(view: &MeshView, apps: &AppsView, now: u64) -> String {
    let up = view.peers.iter().filter(|p| p.is_up()).count();
    let mesh = if view.local.private {
        "private mesh"
    } else {
        "open mesh"
    };
    let deploy = if apps.remote_deploy {
        ""
    } else {
        " · remote deploy off"
    };
    format!(
        "disruptor peer {} · HTTP {} · up {} · {mesh}{deploy}\n\nPEERS: {} up (this one included), {} down\n",
        printable(&view.local.id),
        printable(&view.local.http),
        ago(now, view.local.started_ms),
        up + 1,
        view.peers.len() - up
    )
}

/// The table of peers: this one first, then those up, then those down.
fn peers_part(view: &MeshView, apps: &AppsView, now: u64) -> String {
    let mut rows = vec![header(&["PEER", "STATE", "FOR", "PING", "APPS"])];
    rows.push(vec![
        format!("{} (this peer)", short(&view.local.id)),
        "self".into(),
        ago(now, view.local.started_ms),
        "-".into(),
        apps_on(apps, &view.local.id),
    ]);
    let mut peers: Vec<_> = view.peers.iter().collect();
    peers.sort_by_key(|p| (!p.is_up(), p.id.clone()));
    for p in peers {
        let is_up = p.is_up();
        rows.push(vec![
            short(&p.id),
            match &p.reason {
                Some(r) => format!("down ({r})"),
                None => p.state.to_string(),
            },
            if is_up {
                p.started_ms
                    .map(|t| ago(now, t))
                    .unwrap_or_else(|| "?".into())
            } else {
                format!("seen {} ago", ago(now, p.last_seen_ms))
            },
            p.rtt_ms
                .filter(|_| is_up)
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            if is_up {
                apps_on(apps, &p.id)
            } else {
                "-".into()
            },
        ]);
    }
    table(&rows, "  ")
}

/// The apps peer `id` announced, one phrase each: `apps/x running (2w, 0
/// in flight, v:1a2b3c4d)`; `-` for none.
fn apps_on(apps: &AppsView, id: &str) -> String {
    let list: Vec<String> = apps
        .mesh
        .iter()
        .filter_map(|(app, m)| m.get(id).map(|st| (app, st)))
        .map(|(app, st)| {
            format!(
                "{app} {} ({}w, {} in flight{})",
                st.state,
                st.workers,
                st.in_flight,
                st.version
                    .as_deref()
                    .map(|v| format!(", v:{}", head(v, 8)))
                    .unwrap_or_default()
            )
        })
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(", ")
    }
}

/// The table of apps: every app some peer announced or this peer has
/// statistics for.
fn apps_part(apps: &AppsView, stats: &StatsView) -> String {
    let mut out = String::from(
        "\nAPPS (jobs entering at this peer; rate over the last minute, p99 of the last complete 5 s)\n",
    );
    let names: BTreeSet<&String> = apps.mesh.keys().chain(stats.apps.keys()).collect();
    if names.is_empty() {
        out.push_str("  none started\n");
        return out;
    }
    let mut rows = vec![header(&[
        "APP",
        "RUNNING ON",
        "WORKERS",
        "JOBS/S",
        "P99",
        "JOBS (5 MIN)",
        "FAILED",
    ])];
    rows.extend(names.into_iter().map(|app| app_row(app, apps, stats)));
    out.push_str(&table(&rows, "  "));
    out
}

/// One app's row. The stats' last bucket is still filling, so only the
/// complete ones count: the last 12 (a minute) for the rate, the last one
/// for the p99, all of them (5 minutes) for the totals.
fn app_row(app: &String, apps: &AppsView, stats: &StatsView) -> Vec<String> {
    let m = apps.mesh.get(app);
    let running = m
        .map(|m| m.values().filter(|s| s.state == AppState::Running).count())
        .unwrap_or(0);
    let workers: u32 = m.map(|m| m.values().map(|s| s.workers).sum()).unwrap_or(0);
    let pts: &[Point] = stats.apps.get(app).map(Vec::as_slice).unwrap_or(&[]);
    let done = &pts[..pts.len().saturating_sub(1)];
    let minute = &done[done.len().saturating_sub(12)..];
    let rate = minute.iter().map(|p| p.jobs).sum::<u64>() as f64
        / (minute.len().max(1) as u64 * stats.bucket_secs) as f64;
    let p99 = done
        .last()
        .and_then(|p| p.p99_ms)
        .map(|v| format!("{v:.1}ms"))
        .unwrap_or_else(|| "-".into());
    let placed = apps
        .placement
        .get(app)
        .map(|p| format!(", {}", p.summary()))
        .unwrap_or_default();
    vec![
        app.clone(),
        format!("{running} peers{placed}"),
        workers.to_string(),
        format!("{rate:.1}"),
        p99,
        done.iter().map(|p| p.jobs).sum::<u64>().to_string(),
        done.iter().map(|p| p.failed).sum::<u64>().to_string(),
    ]
}

/// The ten latest errors, newest first, each on one line.
fn errors_part(view: &MeshView, stats: &StatsView, now: u64) -> String {
    let mut out = String::from("\nLATEST ERRORS\n");
    if stats.errors.is_empty() {
        out.push_str("  none\n");
    }
    for e in stats.errors.iter().take(10) {
        let what = if e.kind == "worker" {
            "worker exited"
        } else {
            "job failed"
        };
        out.push_str(&format!(
            "  {} ago  {what}  {}  {}  {}\n",
            ago(now, e.at_ms),
            printable(&e.app),
            printable(&short(e.peer.as_deref().unwrap_or(&view.local.id))),
            printable(&e.message)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PeerView, SelfView};
    use crate::apps::{AppName, AppStatus};
    use crate::client::render_peers_table;
    use crate::obs::stats::ErrorEvent;

    /// A mesh of this peer and one other, which announced `http` as its
    /// address and runs `apps/x` at `version` with `error`.
    fn mesh_with(http: &str, version: &str, error: &str) -> (MeshView, AppsView) {
        let other = "12D3KooWother0000";
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: false,
                labels: Default::default(),
            },
            peers: vec![PeerView {
                id: other.into(),
                peer: None,
                apps: vec![],
                state: crate::mesh::view::PeerState::Up,
                reason: None,
                addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
                http: Some(http.into()),
                first_seen_ms: 1_000,
                last_seen_ms: 61_000,
                since_ms: 2_000,
                started_ms: Some(1_000),
                rtt_ms: Some(0.42),
                connected: true,
                links: Default::default(),
                bundles: vec![],
                remote_deploy: true,
                labels: Default::default(),
            }],
        };
        let mut apps = AppsView::build(&view.local.id, vec![], &view);
        let status = AppStatus {
            app: AppName::parse("apps/x").unwrap(),
            state: AppState::Running,
            workers: 1,
            in_flight: 0,
            clock: 1,
            error: Some(error.into()),
            version: Some(version.into()),
        };
        apps.mesh
            .entry("apps/x".into())
            .or_default()
            .insert(other.into(), status);
        (view, apps)
    }

    fn stats_with_error(message: &str) -> StatsView {
        StatsView {
            bucket_secs: 5,
            apps: Default::default(),
            errors: vec![ErrorEvent {
                at_ms: 60_000,
                kind: "job".into(),
                app: "apps/x".into(),
                peer: Some("12D3KooWother0000".into()),
                message: message.into(),
            }],
            pipelines: vec![],
        }
    }

    #[test]
    fn status_shortens_a_multi_byte_version_without_panicking() {
        // Byte 8 falls inside the é: `&v[..8]` panicked `disruptor status`.
        let (view, apps) = mesh_with("127.0.0.1:8002", &"1234567é".repeat(8), "");
        let out = render_status(&view, &apps, &stats_with_error("boom"), 62_000);
        assert!(out.contains("v:1234567é)"), "{out}");
    }

    #[test]
    fn peer_strings_reach_the_terminal_without_control_characters() {
        let evil = "\x1b]0;owned\x07\x1b[2J\x1b[31m";
        let (view, apps) = mesh_with(
            &format!("{evil}10.0.0.1:80"),
            &format!("{evil}abc"),
            &format!("{evil}bad\nnews"),
        );
        let stats = stats_with_error(&format!("{evil}boom\r\u{9b}1Afake line"));
        for out in [
            render_peers_table(&view, 62_000),
            render_status(&view, &apps, &stats, 62_000),
        ] {
            assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        }
        let table = render_peers_table(&view, 62_000);
        assert!(table.contains(" 10.0.0.1:80 "), "{table}");
        let status = render_status(&view, &apps, &stats, 62_000);
        assert!(status.contains("boom fake line"), "{status}");
        assert!(!status.contains("owned"), "{status}");
    }
}
