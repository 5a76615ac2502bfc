//! `disruptor start` and `disruptor stop`: decisions about where an app
//! runs, and the wait until the mesh carries them out.
//!
//! The mesh agrees on one decision per app ("apps/x runs, 2 workers per
//! peer"; "apps/x is stopped"), stamped with a Lamport clock so that the
//! latest wins everywhere. A decision reaches the mesh in one of two ways:
//!
//! - **Unsigned**: the CLI asks the peer to decide (`POST
//!   /api/apps/start` or `/stop`). A peer that trusts admin keys (`peer
//!   --admin`) refuses this with 401.
//! - **Signed** (`--key FILE`): the CLI reads the peer's decisions and
//!   clock (`GET /api/decisions`), makes the next decision itself, signs it
//!   with the admin key, and hands it over (`POST /api/decisions`). If
//!   another decision got there first (409), it does all that again.
//!   `deploy` hands over its signed decisions the same way, through
//!   [`signed_decision`].
//!
//! Then it waits (`wait.rs`) until every peer that is up reports a state
//! that answers the decision: running, missing or failing for a start
//! (a peer without the app, or whose workers crash, has done all it
//! can), stopped for a stop; and prints what each peer says.

use std::time::Duration;

use reqwest::StatusCode;

use super::http::{PeerApi, Refused};
use super::wait::{Look, peer_line, until_settled, up_ids};
use super::{UsageError, app_arg};
use crate::api::{AppsView, DecisionsView, MeshView};
use crate::apps::{AppName, AppState, AppStatus};
use crate::cli::{Signing, StartArgs, StopArgs};
use crate::clock::unix_ms;
use crate::mesh::desired::{Change, DesiredApp, next_decision};
use crate::mesh::labels::Labels;
use crate::mesh::placement::{MAX_SELECTORS, Placement};
use crate::mesh::trust::AdminSecret;
use crate::text::printable;

/// How many times a signed decision is made again when others keep
/// getting in first.
const ATTEMPTS: usize = 5;

/// `disruptor start`: the app runs on every peer that has it.
pub async fn start(args: StartArgs) -> anyhow::Result<()> {
    if args.workers == Some(0) {
        return Err(UsageError("--workers must be at least 1".into()).into());
    }
    let on = Labels::parse_all(&args.on).map_err(|e| UsageError(format!("--on: {e}")))?;
    if on.len() > MAX_SELECTORS {
        return Err(UsageError(format!("--on: at most {MAX_SELECTORS} labels")).into());
    }
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    let change = Change::Start {
        workers: args.workers,
        placement: Placement {
            peers: args.peers,
            on,
        },
    };
    start_stop(&peer, &args.app, change, &args.signing, args.wait).await
}

/// `disruptor stop`: the app runs nowhere.
pub async fn stop(args: StopArgs) -> anyhow::Result<()> {
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    start_stop(&peer, &args.app, Change::Stop, &args.signing, args.wait).await
}

/// Hands the decision to the peer, waits for the mesh, prints what every
/// peer says. A start that settles with the app running nowhere fails.
async fn start_stop(
    peer: &PeerApi,
    app: &str,
    change: Change,
    signing: &Signing,
    wait: Duration,
) -> anyhow::Result<()> {
    let app = app_arg(app)?;
    let decision = hand_over(peer, &app, change, signing).await?;
    let look = until_settled(peer, wait, |view, apps| {
        let look = settle_report(view, apps, &decision);
        Look {
            settled: look.settled,
            seen: (look.seen, running_anywhere(apps, &app)),
        }
    })
    .await?;
    let (report, running) = look.seen;
    print!("{report}");
    if !look.settled {
        let state = if decision.run { "started" } else { "stopped" };
        anyhow::bail!("the mesh did not report {app} as {state} everywhere within {wait:?}");
    }
    if decision.run && running == 0 {
        anyhow::bail!("{app} runs on no peer of the mesh");
    }
    Ok(())
}

/// The decision, as the peer took it: signed here with `--key`, else made
/// by the peer.
async fn hand_over(
    peer: &PeerApi,
    app: &AppName,
    change: Change,
    signing: &Signing,
) -> anyhow::Result<DesiredApp> {
    let verb = if matches!(change, Change::Stop) {
        "stop"
    } else {
        "start"
    };
    if let Some(key) = signing_key(signing)? {
        return signed_decision(peer, verb, app, change, &key, async |d: &DesiredApp| {
            peer.post_json("/api/decisions", d).await
        })
        .await;
    }
    let mut body = serde_json::json!({ "app": app });
    if let Change::Start { workers, placement } = change {
        if let Some(w) = workers {
            body["workers"] = w.into();
        }
        if let Some(p) = placement.peers {
            body["peers"] = p.into();
        }
        if !placement.on.is_empty() {
            body["on"] = serde_json::to_value(&placement.on)?;
        }
    }
    peer.post_json(&format!("/api/apps/{verb}"), &body)
        .await?
        .map_err(|refused| anyhow::anyhow!("{verb} {app}: {refused}"))
}

/// Loads the admin key of `--key` / `DISRUPTOR_KEY`, if one is given.
pub(super) fn signing_key(signing: &Signing) -> anyhow::Result<Option<AdminSecret>> {
    signing
        .key
        .as_deref()
        .map(|p| AdminSecret::load(p).map_err(|e| UsageError(e).into()))
        .transpose()
}

/// Makes a decision signed by `key` and hands it to the peer through
/// `deliver`: reads the peer's decisions and clock, stamps the change
/// above them, signs it, and delivers it; if another decision got in
/// between (409), does it again. A refusal fails as `VERB APP: STATUS:
/// MESSAGE`.
pub(super) async fn signed_decision(
    peer: &PeerApi,
    verb: &str,
    app: &AppName,
    change: Change,
    key: &AdminSecret,
    deliver: impl AsyncFn(&DesiredApp) -> anyhow::Result<Result<DesiredApp, Refused>>,
) -> anyhow::Result<DesiredApp> {
    for _ in 0..ATTEMPTS {
        let held: DecisionsView = peer.get("/api/decisions").await?;
        let mut d = next_decision(&held.decisions, held.clock, app, change.clone(), unix_ms());
        key.sign(&mut d);
        match deliver(&d).await? {
            Ok(taken) => return Ok(taken),
            Err(r) if r.status == StatusCode::CONFLICT && r.message.contains("newer decision") => {
                continue;
            }
            Err(refused) => anyhow::bail!("{verb} {app}: {refused}"),
        }
    }
    anyhow::bail!("{verb} {app}: other decisions kept getting in first; try again")
}

/// How many peers report `app` running, whatever decision they answer.
fn running_anywhere(apps: &AppsView, app: &AppName) -> usize {
    apps.mesh
        .get(app.as_str())
        .map(|m| m.values().filter(|s| s.state == AppState::Running).count())
        .unwrap_or(0)
}

/// Whether every peer that is up reports a state for `decision` (or a
/// later one) that answers it, and a report of what each says.
fn settle_report(view: &MeshView, apps: &AppsView, decision: &DesiredApp) -> Look<String> {
    let ids = up_ids(view);
    let per_peer = apps.mesh.get(decision.app.as_str());
    let mut settled = true;
    let (mut running, mut able) = (0, 0);
    let mut lines = String::new();
    for id in &ids {
        let st = per_peer
            .and_then(|m| m.get(*id))
            .filter(|s| s.clock >= decision.clock);
        settled &= st.is_some_and(|s| answers(decision.run, s.state));
        running += usize::from(st.is_some_and(|s| s.state == AppState::Running));
        let labels = if *id == view.local.id {
            Some(&view.local.labels)
        } else {
            view.peers.iter().find(|p| p.id == *id).map(|p| &p.labels)
        };
        let labelled = labels.is_some_and(|l| l.satisfy(&decision.on));
        able += usize::from(
            labelled
                && st.is_some_and(|s| {
                    matches!(
                        s.state,
                        AppState::Running
                            | AppState::Starting
                            | AppState::Failing
                            | AppState::Standby
                    )
                }),
        );
        let what = st.map_or_else(|| "waiting".to_string(), state_text);
        lines.push_str(&peer_line(view, id, &what));
    }
    // A placed start has settled once its places are taken (peers
    // standing by answer it only then).
    if let Some(n) = decision.peers {
        let holding = per_peer.map_or(0, |m| {
            ids.iter()
                .filter_map(|id| m.get(*id))
                .filter(|s| s.clock >= decision.clock)
                .filter(|s| matches!(s.state, AppState::Running | AppState::Failing))
                .count()
        });
        settled &= holding >= (n as usize).min(able);
    }
    let placed = match (decision.peers, decision.on.is_empty()) {
        (None, true) => String::new(),
        (None, false) => format!(" (on peers labelled {})", decision.on),
        (Some(n), on_all) => {
            let labelled = if on_all {
                String::new()
            } else {
                format!(" labelled {}", decision.on)
            };
            if (n as usize) > able && settled {
                format!(" (asked for {n} peers{labelled}; only {able} can run it: all of them)")
            } else {
                format!(" (asked for {n} peers{labelled}; {able} can run it)")
            }
        }
    };
    let head = if decision.run {
        format!(
            "{} is running on {running} of {} peers{placed}:\n",
            decision.app,
            ids.len()
        )
    } else {
        format!("{} is stopped ({} peers):\n", decision.app, ids.len())
    };
    Look {
        settled,
        seen: head + &lines,
    }
}

/// Whether a peer in `state` has done what the decision asked: for a
/// start, all it can (running, or without the app, or failing); for a
/// stop, stopped.
fn answers(run: bool, state: AppState) -> bool {
    if run {
        matches!(
            state,
            AppState::Running | AppState::Missing | AppState::Failing | AppState::Standby
        )
    } else {
        state == AppState::Stopped
    }
}

/// A peer's state for the report: `running, 2 workers`, `missing (why)`.
fn state_text(s: &AppStatus) -> String {
    let mut text = s.state.to_string();
    if s.state == AppState::Running || s.state == AppState::Starting {
        text.push_str(&format!(", {} workers", s.workers));
    }
    if let Some(e) = &s.error {
        text.push_str(&format!(" ({})", printable(e)));
    }
    text
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use axum::Json;
    use axum::extract::State;
    use axum::http::StatusCode as Code;
    use axum::routing::get;

    use super::*;
    use crate::cli::Access;

    type Answers = Arc<Mutex<VecDeque<(Code, &'static str)>>>;

    /// A peer that holds no decisions at clock 3 and answers the decisions
    /// posted to it with `answers`, in turn, then takes them.
    async fn fake_peer(answers: Vec<(Code, &'static str)>) -> PeerApi {
        async fn held() -> Json<serde_json::Value> {
            Json(serde_json::json!({ "clock": 3, "admins": true, "decisions": [] }))
        }
        async fn take(
            State(answers): State<Answers>,
            Json(d): Json<DesiredApp>,
        ) -> Result<Json<DesiredApp>, (Code, Json<serde_json::Value>)> {
            match answers.lock().unwrap().pop_front() {
                Some((code, error)) => Err((code, Json(serde_json::json!({ "error": error })))),
                None => Ok(Json(d)),
            }
        }
        let answers: Answers = Arc::new(Mutex::new(answers.into()));
        let app = axum::Router::new()
            .route("/api/decisions", get(held).post(take))
            .with_state(answers);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        PeerApi::new(&addr.to_string(), &Access { token_file: None }).unwrap()
    }

    /// `--key FILE` with a new admin key.
    fn signing(dir: &tempfile::TempDir) -> Signing {
        let path = dir.path().join("admin.key");
        let text = AdminSecret::generate().to_file_text();
        crate::secret_file::write_private_file(&path, text.as_bytes(), false).unwrap();
        Signing { key: Some(path) }
    }

    fn app() -> AppName {
        AppName::parse("apps/x").unwrap()
    }

    #[tokio::test]
    async fn a_refused_signed_decision_names_its_status_once() {
        let peer = fake_peer(vec![(Code::FORBIDDEN, "not signed by a trusted admin")]).await;
        let dir = tempfile::tempdir().unwrap();
        let change = Change::Start {
            workers: None,
            placement: Placement::default(),
        };
        let err = hand_over(&peer, &app(), change, &signing(&dir))
            .await
            .unwrap_err();
        // It read "apps/x: 403 Forbidden: 403 Forbidden: not signed ...".
        assert_eq!(
            format!("{err:#}"),
            "start apps/x: 403 Forbidden: not signed by a trusted admin"
        );
    }

    #[tokio::test]
    async fn a_signed_decision_is_made_again_when_another_got_in_first() {
        let newer = "a newer decision for this app exists; decide again";
        let peer = fake_peer(vec![(Code::CONFLICT, newer), (Code::CONFLICT, newer)]).await;
        let dir = tempfile::tempdir().unwrap();
        let key = signing(&dir);
        let d = hand_over(&peer, &app(), Change::Stop, &key).await.unwrap();
        assert!(!d.run && d.clock > 3 && d.signed.is_some(), "{d:?}");

        let peer = fake_peer(vec![(Code::CONFLICT, newer); ATTEMPTS]).await;
        let err = hand_over(&peer, &app(), Change::Stop, &key)
            .await
            .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "stop apps/x: other decisions kept getting in first; try again"
        );
    }

    #[test]
    fn a_start_has_settled_where_a_peer_did_all_it_can() {
        for (state, start, stop) in [
            (AppState::Running, true, false),
            (AppState::Missing, true, false),
            (AppState::Failing, true, false),
            (AppState::Starting, false, false),
            (AppState::Stopped, false, true),
            (AppState::Standby, true, false),
        ] {
            assert_eq!((answers(true, state), answers(false, state)), (start, stop));
        }
    }
}
