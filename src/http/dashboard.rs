//! The status page at `GET /`: a live dashboard of the mesh, rendered on
//! the server (no build step, no CDN: peers may run offline).
//!
//! The page is the HTML of [`fragment`] inside a shell with the styles and
//! a small script that fetches `/dashboard/live` (the same fragment, fresh)
//! every second and swaps it in, so the page stays current without a
//! reload, and still says something useful without JavaScript.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use crate::api::{AppsView, MeshView, PeerView};
use crate::apps::{AppState, AppStatus};
use crate::obs::stats::{Point, StatsView};
use crate::text::{ago, head, short_id};

/// How often the page refreshes its live part.
pub const REFRESH_MS: u32 = 1000;
/// Characters of a peer id shown wherever one is shortened (the picture,
/// the tables, the title), as the CLI's tables show them; the whole id is
/// in the element's `title`.
const ID_CHARS: usize = 10;
/// Characters of a deployed version (a bundle's SHA-256) shown.
const VERSION_CHARS: usize = 8;
/// Up to this many nodes, the picture draws every announced link and
/// labels every node; beyond, it draws smaller unlabelled nodes and only
/// this peer's own connections (a full mesh of 150 would be 11,000 lines
/// every second, and its labels would overlap).
const DENSE: usize = 24;
/// An empty cell.
const NOTHING: &str = "<span class=\"muted\">–</span>";

/// `s` as HTML text (or an attribute's value): `&`, `<`, `>` and quotes
/// escaped.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root{--up:#1a7f37;--down:#b42318;--mut:#6b7280;--line:#e5e7eb;--bg:#f6f7f9;--card:#fff;--acc:#2563eb}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#111827;background:var(--bg)}
header{background:#111827;color:#f9fafb;padding:.9em 1.5em;display:flex;flex-wrap:wrap;gap:.4em 2em;align-items:baseline}
header h1{font-size:1.15em;margin:0;font-weight:650}
header .sub{color:#9ca3af}
main{padding:1.2em 1.5em;display:grid;grid-template-columns:minmax(300px,380px) 1fr;gap:1.2em}
@media (max-width:900px){main{grid-template-columns:1fr}}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:1em 1.2em}
.wide{grid-column:1/-1}
h2{font-size:.8em;letter-spacing:.06em;text-transform:uppercase;color:var(--mut);margin:0 0 .7em}
code,.id{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
.counts{display:flex;gap:1.5em;flex-wrap:wrap}
.counts div{font-size:1.6em;font-weight:650}.counts span{display:block;font-size:.45em;font-weight:500;color:var(--mut);text-transform:uppercase;letter-spacing:.06em}
.badge{display:inline-block;padding:.05em .55em;border-radius:99px;font-size:.8em;font-weight:600}
.b-up{background:#dcfce7;color:var(--up)}.b-down{background:#fee2e2;color:var(--down)}.b-self{background:#dbeafe;color:var(--acc)}.b-mut{background:#f3f4f6;color:var(--mut)}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid var(--line);padding:.4em .6em;text-align:left;vertical-align:top}
th{font-size:.75em;text-transform:uppercase;letter-spacing:.05em;color:var(--mut);font-weight:600}
tr.down td{color:var(--mut)}
.muted{color:var(--mut)}
.apps{display:grid;grid-template-columns:repeat(auto-fill,minmax(400px,1fr));gap:1em}
.app{border:1px solid var(--line);border-radius:8px;padding:.7em .9em}
.app h3{margin:0 0 .3em;font-size:1em}
.chart{display:flex;align-items:center;gap:.6em;margin-top:.3em}
.chart .lbl{width:6em;color:var(--mut);font-size:.85em}
.chart .val{white-space:nowrap;font-size:.9em}
.err td{font-size:.9em}
svg text{font:11px ui-monospace,monospace}
.scroll{max-height:32em;overflow:auto}
footer{padding:0 1.5em 1.5em;color:var(--mut)}
footer a{color:var(--mut)}
"#;

const SCRIPT: &str = r#"
(function(){
  var live=document.getElementById('live'), stamp=document.getElementById('stamp');
  function tick(){
    fetch('/dashboard/live',{cache:'no-store'}).then(function(r){
      if(!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function(html){
      live.innerHTML=html; stamp.textContent='live · updated '+new Date().toLocaleTimeString();
    }).catch(function(e){ stamp.textContent='cannot reach this peer ('+e.message+'), retrying…'; });
  }
  setInterval(tick, REFRESH);
})();
"#;

/// The whole page.
pub fn page(view: &MeshView, apps: &AppsView, stats: &StatsView, now: u64) -> String {
    let mut h = String::new();
    let up = view.peers.iter().filter(|p| p.is_up()).count();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>disruptor · {short} · {up} up</title><style>{STYLE}</style></head><body>
<header><h1>disruptor</h1><span class="sub">peer <code>{id}</code></span>
<span class="sub">HTTP {http} · {private}{deploy}</span><span class="sub" id="stamp">live</span></header>
<div id="live">{live}</div>
<footer>JSON: <a href="/api/peers">/api/peers</a> · <a href="/api/apps">/api/apps</a> ·
<a href="/api/stats">/api/stats</a> · <a href="/metrics">/metrics</a></footer>
<script>var REFRESH={REFRESH_MS};{SCRIPT}</script></body></html>
"#,
        short = esc(&short_id(&view.local.id, ID_CHARS)),
        id = esc(&view.local.id),
        http = esc(&view.local.http),
        private = if view.local.private {
            "private mesh (pre-shared key)"
        } else {
            "open mesh"
        },
        live = fragment(view, apps, stats, now),
        deploy = if apps.remote_deploy {
            ""
        } else {
            " · remote deploy off (--no-remote-deploy)"
        },
    );
    h
}

/// The live part of the page.
pub fn fragment(view: &MeshView, apps: &AppsView, stats: &StatsView, now: u64) -> String {
    let mut h = String::from("<main>");
    let up: Vec<&PeerView> = view.peers.iter().filter(|p| p.is_up()).collect();
    let rate_now: f64 = stats
        .apps
        .values()
        .filter_map(|pts| pts.iter().rev().nth(1))
        // A fold from +0: an empty f64 sum is -0.0, shown as "-0".
        .fold(0.0, |sum, p| sum + p.rate);
    let _ = write!(
        h,
        r#"<section class="card wide"><div class="counts">
<div id="count-up">{}<span>peers up</span></div>
<div id="count-down">{}<span>peers down</span></div>
<div>{}<span>apps</span></div>
<div>{:.0}<span>jobs/s entering here</span></div>
<div>{}<span>this peer up</span></div></div></section>"#,
        up.len() + 1,
        view.peers.len() - up.len(),
        apps.mesh.len(),
        rate_now,
        ago(now, view.local.started_ms),
    );
    h.push_str(r#"<section class="card"><h2>Mesh</h2>"#);
    h.push_str(&mesh_svg(view));
    let lines = if view.peers.len() + 1 > DENSE {
        "lines: this peer's live connections (the others' are left out at this size)"
    } else {
        "lines: live connections"
    };
    let _ = write!(
        h,
        r#"<div class="muted">{lines} · grey: down · blue ring: this peer · hover a node for its id</div></section>"#
    );
    h.push_str(r#"<section class="card"><h2>Peers</h2><div class="scroll">"#);
    h.push_str(&peer_table(view, apps, now));
    h.push_str("</div></section>");
    h.push_str(r#"<section class="card wide"><h2>Apps</h2>"#);
    h.push_str(&app_cards(apps, stats));
    h.push_str("</section>");
    if !stats.pipelines.is_empty() {
        h.push_str(r#"<section class="card wide"><h2>Pipelines</h2>"#);
        h.push_str(&pipelines(stats, now));
        h.push_str("</section>");
    }
    h.push_str(r#"<section class="card wide"><h2>Latest errors</h2>"#);
    h.push_str(&errors(stats, &view.local.id, now));
    h.push_str("</section></main>");
    h
}

/// The picture of the mesh: every peer a node on a circle, this one at
/// the top; a line for each live connection.
fn mesh_svg(view: &MeshView) -> String {
    let ids = circle_order(view);
    let dense = ids.len() > DENSE;
    // Past DENSE, nodes shrink to stay separate dots: a diameter of at
    // most 80% of their spacing on the circle (place()'s radius is 125).
    let r = if dense {
        (0.4 * std::f64::consts::TAU * 125.0 / ids.len() as f64).clamp(2.0, 14.0)
    } else {
        14.0
    };
    let peer = |id: &str| view.peers.iter().find(|p| p.id == id);
    let is_down = |i: usize| i != 0 && peer(ids[i]).is_some_and(|p| !p.is_up());
    let mut s = String::from(
        r#"<svg id="mesh" viewBox="0 0 340 330" width="100%" style="max-width:380px" role="img" aria-label="mesh">"#,
    );
    for (a, b) in edges(view, &ids, !dense) {
        let ((x1, y1), (x2, y2)) = (place(a, ids.len()), place(b, ids.len()));
        let _ = write!(
            s,
            r##"<line x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}" stroke="{}" stroke-width="1.5"/>"##,
            if is_down(a) || is_down(b) {
                "#e5e7eb"
            } else {
                "#94a3b8"
            }
        );
    }
    for (i, id) in ids.iter().enumerate() {
        let (fill, state) = match (i, peer(id)) {
            (0, _) => ("#2563eb", "self"),
            (_, Some(p)) if p.is_up() => ("#1a7f37", "up"),
            _ => ("#cbd5e1", "down"),
        };
        let ring = if i == 0 {
            format!(
                r##"<circle r="{:.1}" fill="none" stroke="#2563eb" stroke-width="2"/>"##,
                r + 5.0
            )
        } else {
            String::new()
        };
        let label = if dense {
            String::new()
        } else {
            format!(
                r##"<text y="30" text-anchor="middle" fill="#374151">{}</text>"##,
                esc(&short_id(id, ID_CHARS))
            )
        };
        let (x, y) = place(i, ids.len());
        let _ = write!(
            s,
            r##"<g class="node" data-peer="{id}" data-state="{state}" transform="translate({x:.1},{y:.1})"><title>{id} ({state})</title>{ring}<circle r="{r:.1}" fill="{fill}"/>{label}</g>"##,
            id = esc(id),
        );
    }
    s.push_str("</svg>");
    s
}

/// The order of the nodes around the circle: this peer first, then the
/// others by id, so nodes keep their places between refreshes.
fn circle_order(view: &MeshView) -> Vec<&str> {
    let mut ids: Vec<&str> = view.peers.iter().map(|p| p.id.as_str()).collect();
    ids.sort();
    let me = view.local.id.as_str();
    let pos_of_me = ids.partition_point(|id| *id < me);
    ids.insert(pos_of_me, me);
    ids.rotate_left(pos_of_me);
    ids
}

/// Where node `i` of `n` sits on the circle (node 0 at the top).
fn place(i: usize, n: usize) -> (f64, f64) {
    let (cx, cy, r) = (170.0, 165.0, if n <= 1 { 0.0 } else { 125.0 });
    let a = -std::f64::consts::FRAC_PI_2 + i as f64 * std::f64::consts::TAU / n as f64;
    (cx + r * a.cos(), cy + r * a.sin())
}

/// The picture's lines, as pairs of nodes (lower first): this peer to
/// each peer it is connected to, and (with `announced`) each peer that is
/// up to the peers it announced links to.
fn edges(view: &MeshView, ids: &[&str], announced: bool) -> BTreeSet<(usize, usize)> {
    let index = |id: &str| ids.iter().position(|x| *x == id);
    let mut edges = BTreeSet::new();
    for p in &view.peers {
        let Some(i) = index(&p.id) else { continue };
        if p.connected {
            edges.insert((0, i)); // this peer is node 0
        }
        if !p.is_up() || !announced {
            continue;
        }
        for l in p.links.iter() {
            if let Some(j) = index(l)
                && j != i
            {
                edges.insert((i.min(j), i.max(j)));
            }
        }
    }
    edges
}

/// The table of peers: this one, then the others (those up first).
fn peer_table(view: &MeshView, apps: &AppsView, now: u64) -> String {
    let mut s = String::from(
        "<table id=\"peers\"><tr><th>peer</th><th>state</th><th>for</th><th>ping</th><th>apps (workers · in flight)</th></tr>",
    );
    let _ = write!(
        s,
        r#"<tr data-peer="{id}" data-state="self"><td><code title="{id}">{short}</code></td><td><span class="badge b-self">this peer</span></td><td>{up}</td><td>–</td><td>{apps}</td></tr>"#,
        id = esc(&view.local.id),
        short = esc(&short_id(&view.local.id, ID_CHARS)),
        up = ago(now, view.local.started_ms),
        apps = apps_cell(apps, &view.local.id),
    );
    let mut peers: Vec<&PeerView> = view.peers.iter().collect();
    peers.sort_by(|a, b| (!a.is_up(), &a.id).cmp(&(!b.is_up(), &b.id)));
    for p in peers {
        peer_row(&mut s, p, apps, now);
    }
    s.push_str("</table>");
    s
}

/// The row of another peer.
fn peer_row(s: &mut String, p: &PeerView, apps: &AppsView, now: u64) {
    let up = p.is_up();
    let state = if up {
        "<span class=\"badge b-up\">up</span>".to_string()
    } else {
        format!(
            "<span class=\"badge b-down\">down</span> <span class=\"muted\">{}</span>",
            esc(p.reason.map_or("", |r| r.as_str()))
        )
    };
    let since = match (up, p.started_ms) {
        (true, Some(t)) => ago(now, t),
        (true, None) => "?".into(),
        (false, _) => format!("last seen {} ago", ago(now, p.last_seen_ms)),
    };
    let ping = match p.rtt_ms {
        Some(r) if up => format!("{r:.2} ms"),
        _ => "–".into(),
    };
    let _ = write!(
        s,
        r#"<tr class="{st}" data-peer="{id}" data-state="{st}"><td><code title="{id}">{short}</code><br><span class="muted">{http}</span></td><td>{state}</td><td>{since}</td><td>{ping}</td><td>{apps}</td></tr>"#,
        st = if up { "up" } else { "down" },
        id = esc(&p.id),
        short = esc(&short_id(&p.id, ID_CHARS)),
        http = esc(p.http.as_deref().unwrap_or("")),
        apps = if up {
            apps_cell(apps, &p.id)
        } else {
            NOTHING.into()
        },
    );
}

/// The apps cell of peer `id`'s row: each app it runs, with its state,
/// workers, jobs in flight and deployed version.
fn apps_cell(apps: &AppsView, id: &str) -> String {
    let list: Vec<String> = (apps.mesh.iter())
        .filter_map(|(app, per_peer)| per_peer.get(id).map(|st| (app, st)))
        .map(|(app, st)| {
            let class = match st.state {
                AppState::Running => "b-up",
                AppState::Failing | AppState::Missing => "b-down",
                _ => "b-mut",
            };
            let version = st.version.as_deref().map(|v| {
                format!(
                    " <span class=\"muted\" title=\"deployed version {}\">v:{}</span>",
                    esc(v),
                    esc(head(v, VERSION_CHARS))
                )
            });
            format!(
                "<code>{}</code> <span class=\"badge {class}\">{}</span> {} · {}{}",
                esc(app),
                st.state,
                st.workers,
                st.in_flight,
                version.unwrap_or_default()
            )
        })
        .collect();
    if list.is_empty() {
        NOTHING.into()
    } else {
        list.join("<br>")
    }
}

/// A small line chart of `values` (None: no data), 0 at the bottom.
fn sparkline(values: &[Option<f64>], color: &str, unit: &str) -> String {
    let (w, h) = (220.0, 36.0);
    let max = values.iter().flatten().cloned().fold(0.0f64, f64::max);
    let last = values.iter().rev().flatten().next().cloned();
    let mut s = format!(r#"<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}">"#);
    let _ = write!(
        s,
        r##"<line x1="0" y1="{h}" x2="{w}" y2="{h}" stroke="#e5e7eb"/>"##
    );
    if max > 0.0 {
        let step = w / (values.len().max(2) - 1) as f64;
        let mut path = String::new();
        for (i, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let (x, y) = (i as f64 * step, h - 2.0 - (v / max) * (h - 4.0));
                let _ = write!(path, "{x:.1},{y:.1} ");
            }
        }
        let _ = write!(
            s,
            r#"<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{path}"/>"#
        );
    }
    s.push_str("</svg>");
    let _ = write!(
        s,
        "<span class=\"val\">{} <span class=\"muted\">· max {}</span></span>",
        last.map(|v| format!("{v:.1} {unit}"))
            .unwrap_or_else(|| "–".into()),
        if max > 0.0 {
            format!("{max:.1}")
        } else {
            "–".into()
        }
    );
    s
}

/// A card per app the mesh runs or this peer saw jobs for: where it runs,
/// and its throughput and latency here.
fn app_cards(apps: &AppsView, stats: &StatsView) -> String {
    let names: BTreeSet<&String> = apps.mesh.keys().chain(stats.apps.keys()).collect();
    if names.is_empty() {
        return "<p class=\"muted\">No app started yet: <code>disruptor start HTTP_ADDR apps/NAME</code></p>".into();
    }
    let mut s = String::from("<div class=\"apps\">");
    for app in names {
        let pts = stats.apps.get(app).map_or(&[][..], |p| &p[..]);
        let placed = apps.placement.get(app).map(|p| p.summary());
        app_card(&mut s, app, apps.mesh.get(app), placed, pts);
    }
    s.push_str("</div>");
    s
}

/// The card of `app`: `per_peer`, its state on each peer running it;
/// `pts`, its series here.
fn app_card(
    s: &mut String,
    app: &str,
    per_peer: Option<&BTreeMap<String, AppStatus>>,
    placed: Option<String>,
    pts: &[Point],
) {
    let statuses = || per_peer.into_iter().flat_map(|m| m.values());
    let running = statuses()
        .filter(|st| st.state == AppState::Running)
        .count();
    let workers: u32 = statuses().map(|st| st.workers).sum();
    let in_flight: u32 = statuses().map(|st| st.in_flight).sum();
    // The last interval is still filling: leave it out of the charts.
    let done = &pts[..pts.len().saturating_sub(1)];
    let rate: Vec<Option<f64>> = done.iter().map(|p| Some(p.rate)).collect();
    let p99: Vec<Option<f64>> = done.iter().map(|p| p.p99_ms).collect();
    let failed: u64 = done.iter().map(|p| p.failed).sum();
    let total: u64 = done.iter().map(|p| p.jobs).sum();
    let what = if app == crate::obs::metrics::OTHER_APP {
        "jobs for apps the mesh does not run, counted together".to_string()
    } else {
        let placed = placed
            .map(|p| format!(" ({})", esc(&p)))
            .unwrap_or_default();
        format!(
            "running on {running} peer{}{placed} · {workers} workers · {in_flight} in flight",
            if running == 1 { "" } else { "s" }
        )
    };
    let _ = write!(
        s,
        r#"<div class="app" data-app="{name}"><h3><code>{name}</code></h3>
<div class="muted">{what} · last 5 min here: {total} jobs, {failed} failed</div>
<div class="chart"><span class="lbl">jobs/s</span>{rate}</div>
<div class="chart"><span class="lbl">p99 latency</span>{p99}</div></div>"#,
        name = esc(app),
        rate = sparkline(&rate, "#2563eb", "/s"),
        p99 = sparkline(&p99, "#d97706", "ms"),
    );
}

/// The pipelines entering here now: per stage, the rate and p99 of its
/// app's jobs here over the last full interval.
fn pipelines(stats: &StatsView, now: u64) -> String {
    let mut s = String::new();
    for p in &stats.pipelines {
        let chain: Vec<String> = p
            .stages
            .iter()
            .map(|a| format!("<code>{}</code>", esc(a)))
            .collect();
        let _ = write!(
            s,
            r#"<div class="pipeline"><div>{} <span class="muted">· running {}</span></div>
<table><tr><th>stage</th><th>app</th><th>jobs/s here</th><th>p99</th></tr>"#,
            chain.join(" → "),
            ago(now, p.started_ms)
        );
        for (k, app) in p.stages.iter().enumerate() {
            let pts = stats.apps.get(app).map_or(&[][..], |p| &p[..]);
            // The last interval is still filling: the one before it.
            let last = pts.len().checked_sub(2).map(|i| &pts[i]);
            let rate = last.map_or("–".to_string(), |p| format!("{:.0}", p.rate));
            let p99 = last
                .and_then(|p| p.p99_ms)
                .map_or("–".to_string(), |v| format!("{v:.1} ms"));
            let _ = write!(
                s,
                "<tr><td>{}</td><td><code>{}</code></td><td>{rate}</td><td>{p99}</td></tr>",
                k + 1,
                esc(app)
            );
        }
        s.push_str("</table></div>");
    }
    s
}

/// The latest errors seen here, newest first (20 at most).
fn errors(stats: &StatsView, local_id: &str, now: u64) -> String {
    if stats.errors.is_empty() {
        return "<p class=\"muted\">None: no failed job and no worker crash seen here.</p>".into();
    }
    let mut s = String::from(
        "<table class=\"err\"><tr><th>when</th><th>what</th><th>app</th><th>peer</th><th>message</th></tr>",
    );
    for e in stats.errors.iter().take(20) {
        let peer = e.peer.as_deref().unwrap_or(local_id);
        let _ = write!(
            s,
            "<tr><td>{} ago</td><td>{}</td><td><code>{}</code></td><td><code title=\"{}\">{}</code></td><td>{}</td></tr>",
            ago(now, e.at_ms),
            if e.kind == "worker" {
                "worker exited"
            } else {
                "job failed"
            },
            esc(&e.app),
            esc(peer),
            esc(&short_id(peer, ID_CHARS)),
            esc(&e.message),
        );
    }
    s.push_str("</table>");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::SelfView;
    use crate::mesh::view::{DownReason, PeerState};
    use crate::obs::stats::Stats;

    fn peer(id: &str, state: &str, links: &[&str]) -> PeerView {
        PeerView {
            id: id.into(),
            peer: None,
            apps: vec![],
            state: if state == "up" {
                PeerState::Up
            } else {
                PeerState::Down
            },
            reason: (state == "down").then_some(DownReason::Unreachable),
            addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
            http: Some("<script>".into()),
            first_seen_ms: 1_000,
            last_seen_ms: 61_000,
            since_ms: 2_000,
            started_ms: Some(1_000),
            rtt_ms: Some(0.42),
            connected: state == "up",
            links: links.iter().map(|s| s.to_string()).collect(),
            bundles: vec![],
            remote_deploy: true,
            labels: Default::default(),
        }
    }

    #[test]
    fn the_page_shows_peers_edges_and_escapes() {
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: true,
                labels: Default::default(),
            },
            peers: vec![
                peer("12D3KooWaaaa1111", "up", &["12D3KooWbbbb2222"]),
                peer("12D3KooWbbbb2222", "down", &[]),
            ],
        };
        let apps = AppsView::build(&view.local.id, vec![], &view);
        let stats = Stats::default();
        stats.error_now("job", "apps/x", None, "<boom>");
        let page = page(&view, &apps, &stats.view(62_000), 62_000);
        assert!(page.contains("data-peer=\"12D3KooWaaaa1111\" data-state=\"up\""));
        assert!(page.contains("data-peer=\"12D3KooWbbbb2222\" data-state=\"down\""));
        assert!(page.contains("data-state=\"self\""));
        assert!(page.contains("private mesh"));
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>\""));
        assert!(page.contains("&lt;boom&gt;"));
        // self-a (connected) and a-b (announced by a): two edges.
        assert_eq!(page.matches("<line x1").count(), 2, "{page}");
        assert!(page.contains("/dashboard/live"));
        // Every shortened id, in the picture and the tables, is as long.
        let live = fragment(&view, &apps, &stats.view(62_000), 62_000);
        let shortened = live.match_indices('…').map(|(i, _)| {
            let rest = &live[i + '…'.len_utf8()..];
            rest.chars().take_while(|c| c.is_alphanumeric()).count()
        });
        assert_eq!(
            shortened.collect::<Vec<_>>(),
            vec![ID_CHARS; 7],
            "3 nodes, 3 rows, 1 error"
        );
        assert!(page.contains("<title>disruptor · …oWself0000 · 1 up</title>"));
    }

    /// A running pipeline shows each stage with its app's rate and p99
    /// over the last full interval; none shows no card.
    #[test]
    fn a_running_pipeline_shows_its_stages() {
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec![],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: false,
                labels: Default::default(),
            },
            peers: vec![],
        };
        let apps = AppsView::build(&view.local.id, vec![], &view);
        let stats = Stats::default();
        let t0 = 1_000_000_000_000u64;
        for _ in 0..50 {
            stats.job(
                "apps/split",
                true,
                std::time::Duration::from_millis(3),
                t0 + 100,
            );
        }
        let none = fragment(&view, &apps, &stats.view(t0 + 6_000), t0 + 6_000);
        assert!(!none.contains("Pipelines"));
        let stages = vec!["apps/split".to_string(), "apps/<b>".to_string()];
        let listed = stats.pipeline(stages, t0 - 12_000);
        let live = fragment(&view, &apps, &stats.view(t0 + 6_000), t0 + 6_000);
        assert!(live.contains("<h2>Pipelines</h2>"), "{live}");
        assert!(
            live.contains("<code>apps/split</code> → <code>apps/&lt;b&gt;</code>"),
            "{live}"
        );
        // 50 jobs of 3 ms in the 5 s interval before: 10/s, p99 in the 3.2 ms bin.
        assert!(
            live.contains("<td>1</td><td><code>apps/split</code></td><td>10</td><td>3.2 ms</td>"),
            "{live}"
        );
        assert!(
            live.contains("<td>2</td><td><code>apps/&lt;b&gt;</code></td><td>–</td><td>–</td>"),
            "{live}"
        );
        drop(listed);
        let after = fragment(&view, &apps, &stats.view(t0 + 6_000), t0 + 6_000);
        assert!(!after.contains("Pipelines"));
    }

    /// A version is whatever another peer announced: a multi-byte
    /// character where the page shortens it must not panic the page.
    #[test]
    fn a_multi_byte_version_from_another_peer_is_shortened_safely() {
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec![],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: false,
                labels: Default::default(),
            },
            peers: vec![peer("12D3KooWaaaa1111", "up", &[])],
        };
        let mut apps = AppsView::build(&view.local.id, vec![], &view);
        let status = crate::apps::AppStatus {
            app: crate::apps::AppName::parse("apps/x").unwrap(),
            state: AppState::Running,
            workers: 1,
            in_flight: 0,
            clock: 1,
            error: None,
            version: Some("1234567é".repeat(4)), // byte 8 is inside the é
        };
        apps.mesh
            .entry("apps/x".into())
            .or_default()
            .insert("12D3KooWaaaa1111".into(), status);
        let page = page(&view, &apps, &Stats::default().view(62_000), 62_000);
        assert!(page.contains("v:1234567é<"), "{page}");
    }

    #[test]
    fn a_placed_app_says_where_it_is_placed() {
        use crate::mesh::labels::Labels;
        use crate::mesh::placement::Placement;
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec![],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: false,
                labels: Labels::parse_all(&["zone=eu"]).unwrap(),
            },
            peers: vec![peer("12D3KooWaaaa1111", "up", &[])],
        };
        let app = crate::apps::AppName::parse("apps/x").unwrap();
        let mut desired = crate::mesh::desired::DesiredApps::default();
        let placement = Placement {
            peers: Some(1),
            on: Labels::parse_all(&["zone"]).unwrap(),
        };
        desired
            .set_placed(app, true, None, placement, "me", 1_000)
            .unwrap();
        let apps = AppsView::build(&view.local.id, vec![], &view).with_placement(&desired, &view);
        assert_eq!(apps.placement["apps/x"].placed, ["12D3KooWself0000"]);
        let mut apps = apps;
        apps.mesh.entry("apps/x".into()).or_default();
        let page = page(&view, &apps, &Stats::default().view(62_000), 62_000);
        assert!(
            page.contains("(placed on 1 peer labelled zone (1 can run it))"),
            "{page}"
        );
    }

    #[test]
    fn a_mesh_of_150_stays_readable_and_small() {
        let ids: Vec<String> = (0..150).map(|i| format!("12D3KooWpeer{i:04}")).collect();
        let all: Vec<&str> = ids.iter().map(String::as_str).collect();
        // A full mesh: every peer announces links to every other.
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec![],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: false,
                labels: Default::default(),
            },
            peers: ids.iter().map(|id| peer(id, "up", &all)).collect(),
        };
        let apps = AppsView::build(&view.local.id, vec![], &view);
        let live = fragment(&view, &apps, &Stats::default().view(62_000), 62_000);
        // Every peer is a node, and in the table (which scrolls).
        assert_eq!(live.matches(r#"class="node""#).count(), 151);
        assert_eq!(live.matches("<tr ").count(), 151, "a row per peer");
        assert!(live.contains(r#"<div class="scroll"><table id="peers">"#));
        // Only this peer's connections are drawn, and no node labels.
        assert_eq!(live.matches("<line x1").count(), 150);
        let svg = &live[live.find("<svg id=\"mesh\"").unwrap()..];
        let svg = &svg[..svg.find("</svg>").unwrap()];
        assert!(!svg.contains("<text"), "no labels at this size");
        assert!(live.contains("this peer's live connections"));
        assert!(live.contains(">0<span>jobs/s"), "no jobs: 0, not -0");
        assert!(live.len() < 200_000, "{} bytes every second", live.len());
        // At DENSE peers, the picture is as before: all links, labels.
        let small = MeshView {
            peers: view.peers[..DENSE - 1].to_vec(),
            ..view.clone()
        };
        let live = fragment(&small, &apps, &Stats::default().view(62_000), 62_000);
        let n = DENSE - 1;
        assert_eq!(live.matches("<line x1").count(), n + n * (n - 1) / 2);
        assert!(live.contains("<text y=\"30\""));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(61_000, 0), "1m 1s");
        assert_eq!(ago(3_600_000 * 25, 0), "1d 1h");
        assert_eq!(ago(0, 5_000), "0s");
    }
}
