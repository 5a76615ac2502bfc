//! The local HTTP endpoint (axum): status page and JSON API.
//!
//! It holds handles ([`Dispatcher`], and through it the network client and
//! the workers), never the swarm. Every error answer is JSON
//! `{"error": "..."}` with a fitting status code.

pub mod dashboard;
pub mod guard;
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::{AppsView, DecisionsView, ErrorBody, MeshView};
use crate::apps::{AppName, MAX_WORKERS_PER_APP};
use crate::clock::unix_ms;
use crate::deploy::Store;
use crate::dispatch::{Dispatcher, Policy};
use crate::error::JobError;
use crate::http::guard::Guard;
use crate::json::one_line;
use crate::mesh::desired::DesiredApp;
use crate::network;
use crate::network::MAX_JOB_TIMEOUT;
use crate::worker::Workers;

use crate::mesh::trust::{Admins, Refusal};
use crate::obs::{metrics, stats};
use prometheus_client::registry::Registry;
use tracing::Instrument;

/// Per-request job timeout header, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-disruptor-timeout-ms";
/// Response header: how many workers the job was tried on (failover).
pub const ATTEMPTS_HEADER: &str = "x-disruptor-attempts";
/// Response header: the job's id, as it appears in the logs of the peer
/// that received it and of the peer that ran it.
pub const JOB_ID_HEADER: &str = "x-disruptor-job-id";
/// Request header of `POST /api/deploy`: the bundle's SHA-256 (hex).
pub const BUNDLE_HASH_HEADER: &str = "x-disruptor-bundle-sha256";
/// Request header of `POST /api/deploy`: the signed deployment decision
/// (JSON).
pub const DECISION_HEADER: &str = "x-disruptor-decision";
/// Response header naming the peer whose worker ran the job.
pub const PEER_HEADER: &str = "x-disruptor-peer";
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
pub struct HttpConfig {
    pub max_job_bytes: usize,
    /// Open connections at most; more are closed as they arrive.
    pub max_connections: usize,
    /// Time allowed for a request's headers (and an idle keep-alive).
    pub header_timeout: Duration,
    /// Time allowed for a request's body to arrive.
    pub body_timeout: Duration,
}

/// What the endpoint works with, built by the peer at start.
#[derive(Clone)]
pub struct Handles {
    /// Runs jobs somewhere in the mesh.
    pub dispatcher: Dispatcher,
    /// The mesh: its view, and the decisions this peer takes.
    pub mesh: network::Client,
    /// This peer's workers (the detail `/api/apps` shows).
    pub workers: Workers,
    /// Where deployed bundles are installed (`None`: this peer takes none).
    pub store: Option<Store>,
    /// This peer's id.
    pub local_id: String,
}

/// Shared by every request; axum clones the state once per request, so it
/// sits behind one `Arc` (cloning the dispatcher's handles per job showed
/// in the profile).
type Ctx = Arc<Shared>;

struct Shared {
    dispatcher: Dispatcher,
    mesh: network::Client,
    workers: Workers,
    store: Option<Store>,
    local_id: String,
    config: HttpConfig,
    registry: Arc<Registry>,
    /// Whose signed decisions this peer takes (empty: unsigned ones).
    admins: Admins,
}

/// Who may do what through this endpoint: the request guard's settings
/// and the admin keys decisions are checked against.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub guard: Guard,
    pub admins: Admins,
}

pub fn router(
    handles: Handles,
    registry: Arc<Registry>,
    config: HttpConfig,
    access: Access,
) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/dashboard/live", get(dashboard_live))
        .route("/metrics", get(metrics_text))
        .route("/api/stats", get(api_stats))
        .route("/api/echo", post(echo))
        .route("/api/peers", get(api_peers))
        .route("/api/apps", get(api_apps))
        .route("/api/apps/start", post(api_start))
        .route("/api/apps/stop", post(api_stop))
        .route("/api/deploy", post(api_deploy))
        .route("/api/decisions", get(api_decisions).post(api_decide))
        .route("/apps/{*path}", post(job).fallback(method_not_allowed))
        .fallback(not_found)
        .with_state(Arc::new(Shared {
            dispatcher: handles.dispatcher,
            mesh: handles.mesh,
            workers: handles.workers,
            store: handles.store,
            local_id: handles.local_id,
            config,
            registry,
            admins: access.admins,
        }))
        // Outermost: nothing reaches a handler without passing the guard.
        .layer(crate::http::guard::GuardLayer::new(access.guard))
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    handles: Handles,
    registry: Arc<Registry>,
    config: HttpConfig,
    access: Access,
    shutdown: CancellationToken,
) {
    // Our own accept loop rather than `axum::serve`, for two limits that
    // keep slow or idle clients from exhausting the endpoint: a cap on
    // open connections (over it, a new one is closed at once) and a
    // deadline for a request's headers (hyper closes the connection).
    let app = router(handles, registry, config, access);
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off briefly.
                    tracing::warn!("HTTP accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "HTTP connection refused: {} connections open", config.max_connections);
            continue; // dropping the stream closes it
        };
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        let header_timeout = config.header_timeout;
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, "HTTP connection ended: {e}") },
                _ = shutdown.cancelled() => {
                    // Finish the request in progress, then close.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

/// `POST /api/echo`: answers a JSON body with itself, through the same body
/// handling as a job but without dispatch. The benchmark's ceiling.
async fn echo(State(s): State<Ctx>, body: Body) -> Response {
    let max = s.config.max_job_bytes;
    let result = async {
        let bytes = axum::body::to_bytes(body, max)
            .await
            .map_err(|_| JobError::TooLarge(format!("larger than {max} bytes")))?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| JobError::BadRequest("the body is not UTF-8".into()))?;
        one_line(text)
            .map_err(|e| JobError::BadRequest(format!("the body is not valid JSON ({e})")))
    }
    .await;
    match result {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
async fn metrics_text(State(s): State<Ctx>) -> Response {
    let apps = apps_view(&s);
    let mesh = s.mesh.mesh();
    let gauges = metrics::Gauges {
        workers: (apps.local.iter())
            .flat_map(|a| {
                a.processes
                    .iter()
                    .map(|p| (a.status.app.to_string(), p.state))
            })
            .collect(),
        peers_up: mesh.up().count(),
        peers_down: mesh.peers.len() - mesh.up().count(),
    };
    let text = metrics::scrape(&s.registry, gauges);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /api/stats`: per-app throughput and latency over the last minutes,
/// and the latest errors, as this peer saw them.
async fn api_stats() -> Json<stats::StatsView> {
    Json(stats::STATS.view(unix_ms()))
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error_response(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} {} is not supported: send jobs with POST",
            uri.path()
        ),
    )
}

async fn api_peers(State(s): State<Ctx>) -> Json<MeshView> {
    Json((*s.mesh.mesh()).clone())
}

async fn status_page(State(s): State<Ctx>) -> Html<String> {
    let apps = apps_view(&s);
    let now = unix_ms();
    Html(dashboard::page(
        &s.mesh.mesh(),
        &apps,
        &stats::STATS.view(now),
        now,
    ))
}

/// The live part of the dashboard, fetched by its script every second.
async fn dashboard_live(State(s): State<Ctx>) -> Html<String> {
    let apps = apps_view(&s);
    let now = unix_ms();
    Html(dashboard::fragment(
        &s.mesh.mesh(),
        &apps,
        &stats::STATS.view(now),
        now,
    ))
}

fn apps_view(s: &Shared) -> AppsView {
    let mut v = AppsView::build(&s.local_id, s.workers.details(), &s.mesh.mesh());
    v.remote_deploy = s.store.is_some();
    v
}

/// `POST /api/deploy?name=apps/...`: the body is an app bundle (tar +
/// zstd, see [`crate::deploy`]); header `X-Disruptor-Decision` holds the
/// deployment decision signed by an admin key (`disruptor deploy --key`),
/// which names the bundle's SHA-256 and size. The decision is checked
/// before a byte of the body is read; the bundle is checked against it and
/// installed here, then the decision is announced; `202` with it.
async fn api_deploy(
    State(s): State<Ctx>,
    Query(q): Query<DeployQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Some(store) = s.store.clone() else {
        let why = if s.admins.is_empty() {
            "this peer installs no deployed bundles: it has no admin key to check them against (start it with --admin PUBKEY)"
        } else {
            "this peer installs no deployed bundles (started with --no-remote-deploy)"
        };
        return error_response(StatusCode::FORBIDDEN, why);
    };
    let app = match AppName::parse(&q.name) {
        Ok(a) => a,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (decision, bundle) = match signed_deployment(&headers, &app, &s.admins, store.max_bytes()) {
        Ok(d) => d,
        Err(resp) => return resp,
    };
    let bytes = match axum::body::to_bytes(body, bundle.size as usize).await {
        Ok(b) if b.len() as u64 == bundle.size => b,
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "the body is not the {} bytes the decision names",
                    bundle.size
                ),
            );
        }
    };
    let (install_store, app2, hash) = (store.clone(), app.clone(), bundle.hash.clone());
    let installed = tokio::task::spawn_blocking(move || {
        let r = install_store.install(&bytes, Some(&hash))?;
        install_store.resolve(&r.hash, &app2)?;
        Ok::<_, crate::deploy::BundleError>(r)
    })
    .await;
    match installed {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            use crate::deploy::BundleError as E;
            let status = match e {
                E::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                E::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
                _ => StatusCode::BAD_REQUEST,
            };
            tracing::warn!(app = %app, "deployment refused: {e}");
            return error_response(status, e.to_string());
        }
        Err(e) => return error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
    decide(&s, decision).await
}

#[derive(Deserialize)]
struct DeployQuery {
    #[serde(default)]
    name: String,
}

/// The signed deployment decision of a `POST /api/deploy` and the bundle
/// it names, checked against this peer's admins and the request before
/// the body is read.
#[allow(clippy::result_large_err)]
fn signed_deployment(
    headers: &HeaderMap,
    app: &AppName,
    admins: &Admins,
    max_bytes: u64,
) -> Result<(DesiredApp, crate::deploy::BundleRef), Response> {
    let Some(raw) = headers.get(DECISION_HEADER) else {
        return Err(error_response(
            StatusCode::UNAUTHORIZED,
            "a deployment must be signed by an admin key: `disruptor deploy ... --key FILE`",
        ));
    };
    let decision: DesiredApp = serde_json::from_slice(raw.as_bytes()).map_err(|e| {
        error_response(
            StatusCode::BAD_REQUEST,
            format!("{DECISION_HEADER} is not a decision: {e}"),
        )
    })?;
    crate::mesh::trust::check(&decision, admins).map_err(refusal_response)?;
    let Some(bundle) = decision.bundle.clone() else {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            "the decision names no bundle",
        ));
    };
    if &decision.app != app {
        return Err(error_response(
            StatusCode::BAD_REQUEST,
            format!("the decision is for {}, not {app}", decision.app),
        ));
    }
    if bundle.size > max_bytes {
        return Err(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "the bundle is {} bytes, over the limit of {max_bytes} bytes (--max-bundle-bytes)",
                bundle.size
            ),
        ));
    }
    Ok((decision, bundle))
}

/// `GET /api/decisions`: the start/stop/deploy decisions this peer holds and
/// the highest clock it has seen: what the CLI needs to make (and sign) the
/// next decision.
async fn api_decisions(State(s): State<Ctx>) -> Json<DecisionsView> {
    let desired = s.dispatcher.desired();
    Json(DecisionsView {
        clock: desired.clock(),
        admins: !s.admins.is_empty(),
        decisions: desired.to_vec(),
    })
}

/// `POST /api/decisions`: a decision signed in the CLI (start, stop, or a
/// version already installed). `202` with it once taken.
async fn api_decide(State(s): State<Ctx>, body: Bytes) -> Response {
    let decision: DesiredApp = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a signed decision (`disruptor start ... --key FILE` makes one): {e}"
                ),
            );
        }
    };
    if let Err(refusal) = crate::mesh::trust::check(&decision, &s.admins) {
        return refusal_response(refusal);
    }
    decide(&s, decision).await
}

/// Hands a checked decision to the event loop, which checks it again (it
/// is the one place that merges) and tells the mesh.
async fn decide(s: &Ctx, decision: DesiredApp) -> Response {
    match s.mesh.decide(decision).await {
        Some(Ok(entry)) => (StatusCode::ACCEPTED, Json(entry)).into_response(),
        Some(Err(refusal)) => refusal_response(refusal),
        None => error_response(StatusCode::SERVICE_UNAVAILABLE, "this peer is stopping"),
    }
}

/// The answer for a refused decision.
fn refusal_response(refusal: Refusal) -> Response {
    let status = match refusal {
        Refusal::Unsigned | Refusal::BadSignature => StatusCode::UNAUTHORIZED,
        Refusal::UntrustedKey => StatusCode::FORBIDDEN,
        Refusal::Invalid => StatusCode::BAD_REQUEST,
        Refusal::Full | Refusal::Stale => StatusCode::CONFLICT,
    };
    error_response(status, refusal.to_string())
}

async fn api_apps(State(s): State<Ctx>) -> Json<AppsView> {
    Json(apps_view(&s))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StartStop {
    app: String,
    #[serde(default)]
    workers: Option<u32>,
}

async fn api_start(State(s): State<Ctx>, body: Bytes) -> Response {
    start_stop(&s, &body, true).await
}

async fn api_stop(State(s): State<Ctx>, body: Bytes) -> Response {
    start_stop(&s, &body, false).await
}

async fn start_stop(s: &Ctx, body: &[u8], run: bool) -> Response {
    let req: StartStop = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "expected a JSON body like {{\"app\": \"apps/wordcount/counter\", \"workers\": 2}}: {e}"
                ),
            );
        }
    };
    let app = match AppName::parse(&req.app) {
        Ok(a) => a,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    if req
        .workers
        .is_some_and(|w| w == 0 || w > MAX_WORKERS_PER_APP)
    {
        return error_response(
            StatusCode::BAD_REQUEST,
            format!("workers must be between 1 and {MAX_WORKERS_PER_APP}"),
        );
    }
    if !run && req.workers.is_some() {
        return error_response(StatusCode::BAD_REQUEST, "stop takes no workers");
    }
    if !s.admins.is_empty() {
        return error_response(
            StatusCode::UNAUTHORIZED,
            format!(
                "this peer takes only decisions signed by an admin key: `disruptor {} ... --key FILE`",
                if run { "start" } else { "stop" }
            ),
        );
    }
    match s.mesh.set_desired(app, run, req.workers).await {
        Some(Ok(entry)) => (StatusCode::ACCEPTED, Json(entry)).into_response(),
        Some(Err(refusal)) => refusal_response(refusal),
        None => error_response(StatusCode::SERVICE_UNAVAILABLE, "this peer is stopping"),
    }
}

/// `POST /apps/<path>`: one JSON job, answered with the worker's result;
/// with `?to=all`, the job on every peer running the app; with an NDJSON
/// body, a stream of jobs (see [`crate::http::stream`]).
async fn job(
    State(s): State<Ctx>,
    Path(path): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let resp = job_inner(s, path, query, headers, body).await;
    metrics::response(resp.status().as_u16());
    resp
}

async fn job_inner(
    s: Ctx,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let q = match JobQuery::parse(query.as_deref(), s.dispatcher.policy()) {
        Ok(q) => q,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let (app, timeout) = match job_target(&path, &headers) {
        Ok(t) => t,
        Err(e) => return error_response(e.status(), e.to_string()),
    };
    if content_type_is(&headers, stream::NDJSON) {
        if q.to_all {
            return error_response(
                StatusCode::BAD_REQUEST,
                "to=all sends one job to every peer; it does not take an NDJSON stream",
            );
        }
        // Refuse at once, rather than line by line, an app that runs nowhere.
        if let Err(e) = s
            .dispatcher
            .everyone_running(&app, Instant::now() + timeout)
            .await
        {
            return error_response(e.status(), e.to_string());
        }
        let opts = stream::StreamOptions {
            ordered: q.ordered,
            window: q.window,
            timeout,
            policy: q.policy,
            max_line: s.config.max_job_bytes,
            idle_timeout: s.config.body_timeout,
        };
        return stream::respond(s.dispatcher.clone(), app, body, opts);
    }
    let job_id = stats::new_job_id();
    let span = tracing::debug_span!("job", id = %stats::job_id_text(job_id), app = %app);
    let started = std::time::Instant::now();
    let _in_flight = metrics::InFlight::new();
    let mut attempts = 0;
    let mut last_peer = None;
    let outcome = async {
        tracing::debug!("job received");
        let payload: Arc<str> = read_job_body(&s, &headers, body).await?.into();
        if q.to_all {
            let all = stream::fan_out(&s.dispatcher, &app, payload, timeout, job_id).await?;
            return Ok((all, None));
        }
        let out = s
            .dispatcher
            .run(&app, payload, timeout, q.policy, job_id)
            .await;
        attempts = out.attempts;
        last_peer = out.last_peer;
        let done = out.result?;
        Ok::<_, JobError>((done.result, Some(done.peer)))
    }
    .instrument(span.clone())
    .await;
    let took = started.elapsed();
    span.in_scope(|| match &outcome {
        Ok((_, peer)) => tracing::debug!(
            peer = peer.as_deref().unwrap_or("all"),
            attempts,
            took_ms = took.as_secs_f64() * 1000.0,
            "job answered"
        ),
        Err(e) => tracing::warn!(
            peer = last_peer.as_deref().unwrap_or("-"),
            attempts,
            "job failed: {e}"
        ),
    });
    metrics::job_done(
        &app,
        outcome.as_ref().map(|_| ()),
        took,
        last_peer.as_deref(),
    );
    let mut resp = match outcome {
        Ok((result, peer)) => {
            let mut resp = Response::new(Body::from(result));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(v) = peer.and_then(|p| HeaderValue::from_str(&p).ok()) {
                h.insert(PEER_HEADER, v);
            }
            resp
        }
        Err(e) => error_response(e.status(), e.to_string()),
    };
    if attempts > 0 {
        resp.headers_mut()
            .insert(ATTEMPTS_HEADER, HeaderValue::from(attempts));
    }
    if resp.status() == StatusCode::SERVICE_UNAVAILABLE {
        // Saturated: tell the client when to come back instead of queueing it.
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Ok(v) = HeaderValue::from_str(&stats::job_id_text(job_id)) {
        resp.headers_mut().insert(JOB_ID_HEADER, v);
    }
    resp
}

/// The query of a job request.
#[derive(Debug, PartialEq)]
struct JobQuery {
    /// `dispatch=random|least-loaded` overrides the peer's `--dispatch`.
    policy: Policy,
    /// `to=all`: fan-out.
    to_all: bool,
    /// Streams: `ordered=true|false`, `window=N`.
    ordered: bool,
    window: usize,
}

impl JobQuery {
    fn parse(query: Option<&str>, default: Policy) -> Result<JobQuery, String> {
        let mut q = JobQuery {
            policy: default,
            to_all: false,
            ordered: true,
            window: stream::DEFAULT_WINDOW,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "dispatch" => q.policy = v.parse()?,
                "to" if v == "all" => q.to_all = true,
                "to" => return Err(format!("to={v:?}: the only target is \"all\"")),
                "ordered" => {
                    q.ordered = v
                        .parse()
                        .map_err(|_| format!("ordered={v:?}: expected true or false"))?
                }
                "window" => {
                    q.window = v
                        .parse()
                        .ok()
                        .filter(|w| (1..=stream::MAX_WINDOW).contains(w))
                        .ok_or_else(|| {
                            format!("window={v:?}: expected 1 to {}", stream::MAX_WINDOW)
                        })?
                }
                _ => {} // unknown parameters are ignored
            }
        }
        Ok(q)
    }
}

fn content_type_is(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case(mime)
        })
}

/// The app a job request names, and its timeout.
fn job_target(path: &str, headers: &HeaderMap) -> Result<(AppName, Duration), JobError> {
    let app =
        AppName::parse(&format!("apps/{path}")).map_err(|e| JobError::BadRequest(e.to_string()))?;
    let timeout = match headers.get(TIMEOUT_HEADER) {
        None => DEFAULT_JOB_TIMEOUT,
        Some(v) => {
            let ms = v
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|ms| *ms >= 1 && *ms <= MAX_JOB_TIMEOUT.as_millis() as u64)
                .ok_or_else(|| {
                    JobError::BadRequest(format!(
                        "{TIMEOUT_HEADER} must be a whole number of milliseconds from 1 to {}",
                        MAX_JOB_TIMEOUT.as_millis()
                    ))
                })?;
            Duration::from_millis(ms)
        }
    };
    Ok((app, timeout))
}

/// A single job's body, size-checked, as one line of JSON.
async fn read_job_body(s: &Ctx, headers: &HeaderMap, body: Body) -> Result<String, JobError> {
    let max = s.config.max_job_bytes;
    let too_large = || {
        JobError::TooLarge(format!(
            "the job is larger than the limit of {max} bytes (--max-job-bytes)"
        ))
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large());
    }
    let body_timeout = s.config.body_timeout;
    let bytes = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| {
            JobError::BadRequest(format!(
                "the request body did not arrive within {body_timeout:?}"
            ))
        })?
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                too_large()
            } else {
                JobError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| JobError::BadRequest("the body is not UTF-8".into()))?;
    one_line(text).map_err(|e| {
        JobError::BadRequest(format!(
            "the body is not valid JSON ({e}); send text as a JSON string (\"like this\")"
        ))
    })
}
