//! The decisions this peer takes through its endpoint: which apps the mesh
//! runs, with how many workers, in which deployed version.
//!
//! A decision is taken by the event loop ([`network::Client::decide`]),
//! which merges it into the desired state and tells the mesh; the handlers
//! here check a request before it gets there:
//! - `POST /api/apps/start` and `/stop`: an unsigned decision from a JSON
//!   body, taken only by a peer without admin keys;
//! - `POST /api/decisions`: a decision signed in the CLI;
//! - `POST /api/deploy`: a bundle with its signed deployment decision,
//!   installed here before the decision is announced;
//! - `GET /api/decisions`: what the CLI needs to make the next one.
//!
//! [`network::Client::decide`]: crate::network::Client::decide

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Json, Response};
use serde::Deserialize;

use super::Ctx;
use super::error::ApiError;
use crate::api::DecisionsView;
use crate::apps::{AppName, MAX_WORKERS_PER_APP};
use crate::deploy::{BundleError, BundleRef, Store};
use crate::mesh::desired::DesiredApp;
use crate::mesh::labels::Labels;
use crate::mesh::placement::{MAX_PEERS_PLACED, MAX_SELECTORS, Placement};
use crate::mesh::trust::{self, Admins, Refusal};

pub use crate::api::{BUNDLE_HASH_HEADER, DECISION_HEADER};

/// `GET /api/decisions`: the start/stop/deploy decisions this peer holds and
/// the highest clock it has seen: what the CLI needs to make (and sign) the
/// next decision.
pub(super) async fn list(State(s): State<Ctx>) -> Json<DecisionsView> {
    let desired = s.dispatcher.desired();
    Json(DecisionsView {
        clock: desired.clock(),
        admins: !s.admins.is_empty(),
        decisions: desired.to_vec(),
    })
}

/// `POST /api/decisions`: a decision signed in the CLI (start, stop, or a
/// version already installed). `202` with it once taken.
pub(super) async fn decide(State(s): State<Ctx>, body: Bytes) -> Result<Response, ApiError> {
    let decision: DesiredApp = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected a signed decision (`disruptor start ... --key FILE` makes one): {e}"
        ))
    })?;
    trust::check(&decision, &s.admins)?;
    taken(s.mesh.decide(decision).await)
}

/// The body of `POST /api/apps/start` and `/stop`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartStop {
    app: String,
    #[serde(default)]
    workers: Option<u32>,
    #[serde(default)]
    peers: Option<u32>,
    #[serde(default)]
    on: Labels,
}

/// `POST /api/apps/start` `{"app": "apps/...", "workers": N, "peers": N,
/// "on": ["zone=eu"]}` (all but `app` optional): an unsigned decision to
/// run the app (on a peer without admin keys).
pub(super) async fn start(State(s): State<Ctx>, body: Bytes) -> Result<Response, ApiError> {
    start_stop(&s, &body, true).await
}

/// `POST /api/apps/stop` `{"app": "apps/..."}`: an unsigned decision to
/// stop the app (on a peer without admin keys).
pub(super) async fn stop(State(s): State<Ctx>, body: Bytes) -> Result<Response, ApiError> {
    start_stop(&s, &body, false).await
}

async fn start_stop(s: &Ctx, body: &[u8], run: bool) -> Result<Response, ApiError> {
    let req: StartStop = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected a JSON body like {{\"app\": \"apps/wordcount/counter\", \"workers\": 2}}: {e}"
        ))
    })?;
    let app = AppName::parse(&req.app).map_err(|e| ApiError::bad_request(e.to_string()))?;
    if req
        .workers
        .is_some_and(|w| w == 0 || w > MAX_WORKERS_PER_APP)
    {
        return Err(ApiError::bad_request(format!(
            "workers must be between 1 and {MAX_WORKERS_PER_APP}"
        )));
    }
    if req.peers.is_some_and(|p| p == 0 || p > MAX_PEERS_PLACED) {
        return Err(ApiError::bad_request(format!(
            "peers must be between 1 and {MAX_PEERS_PLACED}"
        )));
    }
    if req.on.len() > MAX_SELECTORS {
        return Err(ApiError::bad_request(format!(
            "at most {MAX_SELECTORS} labels to place on"
        )));
    }
    if !run && (req.workers.is_some() || req.peers.is_some() || !req.on.is_empty()) {
        return Err(ApiError::bad_request(
            "stop takes no workers, peers or labels",
        ));
    }
    if !s.admins.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            format!(
                "this peer takes only decisions signed by an admin key: `disruptor {} ... --key FILE`",
                if run { "start" } else { "stop" }
            ),
        ));
    }
    let placement = Placement {
        peers: req.peers,
        on: req.on,
    };
    taken(s.mesh.set_desired(app, run, req.workers, placement).await)
}

/// The answer once the event loop had its say on a decision: `202` with
/// the decision taken, its refusal, or `503` when the peer is stopping.
fn taken(decided: Option<Result<DesiredApp, Refusal>>) -> Result<Response, ApiError> {
    match decided {
        Some(entry) => Ok((StatusCode::ACCEPTED, Json(entry?)).into_response()),
        None => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this peer is stopping",
        )),
    }
}

/// The query of `POST /api/deploy`.
#[derive(Deserialize)]
pub(super) struct DeployQuery {
    /// The app the bundle is deployed as (`apps/...`).
    #[serde(default)]
    name: String,
}

/// `POST /api/deploy?name=apps/...`: the body is an app bundle (tar +
/// zstd, see [`crate::deploy`]); header `X-Disruptor-Decision` holds the
/// deployment decision signed by an admin key (`disruptor deploy --key`),
/// which names the bundle's SHA-256 and size. The decision is checked
/// before a byte of the body is read; the bundle is checked against it and
/// installed here, then the decision is announced; `202` with it.
pub(super) async fn deploy(
    State(s): State<Ctx>,
    Query(q): Query<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let store = deploy_store(&s)?;
    let app = AppName::parse(&q.name).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let (decision, bundle) = signed_deployment(&headers, &app, &s.admins, store.max_bytes())?;
    let bytes = match axum::body::to_bytes(body, bundle.size as usize).await {
        Ok(b) if b.len() as u64 == bundle.size => b,
        _ => {
            return Err(ApiError::bad_request(format!(
                "the body is not the {} bytes the decision names",
                bundle.size
            )));
        }
    };
    install(store, app, bytes, bundle.hash).await?;
    taken(s.mesh.decide(decision).await)
}

/// The store deployed bundles go to, if this peer takes them.
fn deploy_store(s: &Ctx) -> Result<Store, ApiError> {
    match &s.store {
        Some(store) => Ok(store.clone()),
        None if s.admins.is_empty() => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this peer installs no deployed bundles: it has no admin key to check them against (start it with --admin PUBKEY)",
        )),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "this peer installs no deployed bundles (started with --no-remote-deploy)",
        )),
    }
}

/// The signed deployment decision of a `POST /api/deploy` and the bundle
/// it names, checked against this peer's admins and the request before
/// the body is read.
fn signed_deployment(
    headers: &HeaderMap,
    app: &AppName,
    admins: &Admins,
    max_bytes: u64,
) -> Result<(DesiredApp, BundleRef), ApiError> {
    let Some(raw) = headers.get(DECISION_HEADER) else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a deployment must be signed by an admin key: `disruptor deploy ... --key FILE`",
        ));
    };
    let decision: DesiredApp = serde_json::from_slice(raw.as_bytes())
        .map_err(|e| ApiError::bad_request(format!("{DECISION_HEADER} is not a decision: {e}")))?;
    trust::check(&decision, admins)?;
    let Some(bundle) = decision.bundle.clone() else {
        return Err(ApiError::bad_request("the decision names no bundle"));
    };
    if &decision.app != app {
        return Err(ApiError::bad_request(format!(
            "the decision is for {}, not {app}",
            decision.app
        )));
    }
    if bundle.size > max_bytes {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the bundle is {} bytes, over the limit of {max_bytes} bytes (--max-bundle-bytes)",
                bundle.size
            ),
        ));
    }
    Ok((decision, bundle))
}

/// Installs the bundle `bytes` (whose SHA-256 must be `hash`) and checks
/// that it holds `app`, off the async threads.
async fn install(store: Store, app: AppName, bytes: Bytes, hash: String) -> Result<(), ApiError> {
    let checked_app = app.clone();
    let installed = tokio::task::spawn_blocking(move || {
        let r = store.install(&bytes, Some(&hash))?;
        store.resolve(&r.hash, &checked_app)?;
        Ok::<_, BundleError>(())
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    installed.map_err(|e| {
        let status = match e {
            BundleError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BundleError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        };
        tracing::warn!(app = %app, "deployment refused: {e}");
        ApiError::new(status, e.to_string())
    })
}
