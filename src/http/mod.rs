//! The local HTTP endpoint (axum): the JSON API, the job endpoint and the
//! status page.
//!
//! The endpoint works with the [`Handles`] the peer gives it at start: the
//! [`Dispatcher`] that runs jobs somewhere in the mesh, the mesh's
//! [`network::Client`] (its view, and the decisions this peer takes), this
//! peer's [`Workers`] and the bundle [`Store`]. It never holds the swarm.
//!
//! One file per job:
//! - this file: the router (every route in one list), what each request
//!   sees (`Ctx`), and the accept loop with its limits;
//! - [`guard`]: what a request must look like before any handler sees it;
//! - [`jobs`]: `POST /apps/<app>`, the path every job enters by;
//! - [`stream`]: NDJSON streams of jobs on that same path;
//! - [`observe`]: what the logs and the metrics see of every job;
//! - [`decisions`]: start, stop and deploy: the decisions this peer takes;
//! - [`views`]: the `GET`s (peers, apps, stats, metrics, the dashboard);
//! - [`dashboard`]: the status page's HTML;
//! - [`error`]: the one error shape, `{"error": "..."}` with a fitting
//!   status code.

pub mod dashboard;
pub mod decisions;
pub mod error;
pub mod guard;
pub mod jobs;
pub mod observe;
pub mod stream;
pub mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::deploy::Store;
use crate::dispatch::Dispatcher;
use crate::mesh::trust::Admins;
use crate::network;
use crate::worker::Workers;

pub use decisions::{BUNDLE_HASH_HEADER, DECISION_HEADER};
pub use error::error_response;
pub use jobs::{ATTEMPTS_HEADER, DEFAULT_JOB_TIMEOUT, JOB_ID_HEADER, PEER_HEADER, TIMEOUT_HEADER};

/// The endpoint's limits.
#[derive(Clone, Copy)]
pub struct HttpConfig {
    /// Largest job body (and stream line), in bytes (`--max-job-bytes`).
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

/// Who may do what through this endpoint: the request guard's settings
/// and the admin keys decisions are checked against.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// What every request is checked against before a handler sees it.
    pub guard: guard::Guard,
    /// Whose signed decisions this peer takes (empty: unsigned ones).
    pub admins: Admins,
}

/// What every handler sees. axum clones the state once per request, so it
/// sits behind one `Arc` (cloning the dispatcher's handles per job showed
/// in the profile).
type Ctx = Arc<Shared>;

/// The state behind [`Ctx`]: the [`Handles`], the limits, and the access
/// rules the handlers apply themselves.
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

/// The endpoint's routes, behind the [`guard`].
pub fn router(
    handles: Handles,
    registry: Arc<Registry>,
    config: HttpConfig,
    access: Access,
) -> Router {
    let shared = Arc::new(Shared {
        dispatcher: handles.dispatcher,
        mesh: handles.mesh,
        workers: handles.workers,
        store: handles.store,
        local_id: handles.local_id,
        config,
        registry,
        admins: access.admins,
    });
    Router::new()
        .route("/", get(views::status_page))
        .route("/healthz", get(views::healthz))
        .route("/dashboard/live", get(views::dashboard_live))
        .route("/metrics", get(views::metrics_text))
        .route("/api/stats", get(views::stats))
        .route("/api/echo", post(jobs::echo))
        .route("/api/peers", get(views::peers))
        .route("/api/apps", get(views::apps))
        .route("/api/apps/start", post(decisions::start))
        .route("/api/apps/stop", post(decisions::stop))
        .route("/api/deploy", post(decisions::deploy))
        .route(
            "/api/decisions",
            get(decisions::list).post(decisions::decide),
        )
        .route(
            "/apps/{*path}",
            post(jobs::job).fallback(error::method_not_allowed),
        )
        .fallback(error::not_found)
        .with_state(shared)
        // Outermost: nothing reaches a handler without passing the guard.
        .layer(guard::GuardLayer::new(access.guard))
}

/// Serves until `shutdown` is cancelled, then lets the requests in
/// progress finish.
///
/// Our own accept loop rather than `axum::serve`, for two limits that keep
/// slow or idle clients from exhausting the endpoint: a cap on open
/// connections (over it, a new one is closed at once) and a deadline for a
/// request's headers (hyper closes the connection).
pub async fn serve(
    listener: TcpListener,
    handles: Handles,
    registry: Arc<Registry>,
    config: HttpConfig,
    access: Access,
    shutdown: CancellationToken,
) {
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
        let conn = connection(stream, peer, app.clone(), config.header_timeout, &shutdown);
        connections.spawn(async move {
            let _slot = slot;
            conn.await
        });
    }
    connections.close();
    connections.wait().await;
}

/// One connection's requests, one after the other (HTTP/1.1 keep-alive),
/// until the client closes it or `shutdown` (then the request in progress
/// is finished first).
fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    header_timeout: Duration,
    shutdown: &CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    let _ = stream.set_nodelay(true);
    let service = hyper_util::service::TowerToHyperService::new(app);
    let shutdown = shutdown.clone();
    async move {
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
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}
