//! The `GET`s: what this peer knows, for people and for tools.
//!
//! - `/` and `/dashboard/live`: the status page and its live part
//!   ([`super::dashboard`]);
//! - `/api/peers`: the mesh as this peer sees it;
//! - `/api/apps`: this peer's apps in detail, and who runs which app;
//! - `/api/stats`: per-app throughput, latency and the latest errors;
//! - `/metrics`: Prometheus metrics;
//! - `/healthz`: whether the endpoint answers.
//!
//! Each one reads a snapshot (the mesh view, the workers' details, the
//! stats) and changes nothing.

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Json, Response};

use super::{Ctx, Shared, dashboard};
use crate::api::{AppsView, MeshView};
use crate::clock::unix_ms;
use crate::obs::{metrics, stats};

/// `GET /healthz`: `{"status": "ok"}` (the one route that needs no token).
pub(super) async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

/// `GET /api/peers`: the mesh as this peer sees it.
pub(super) async fn peers(State(s): State<Ctx>) -> Json<MeshView> {
    Json((*s.mesh.mesh()).clone())
}

/// `GET /api/apps`: this peer's apps with every worker process, and per
/// app the peers running it.
pub(super) async fn apps(State(s): State<Ctx>) -> Json<AppsView> {
    Json(apps_view(&s))
}

/// `GET /api/stats`: per-app throughput and latency over the last minutes,
/// and the latest errors, as this peer saw them.
pub(super) async fn stats() -> Json<stats::StatsView> {
    Json(stats::STATS.view(unix_ms()))
}

/// `GET /metrics`: Prometheus metrics (OpenMetrics text).
pub(super) async fn metrics_text(State(s): State<Ctx>) -> Response {
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
        jobs_in_flight: s.dispatcher.in_flight(),
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

/// `GET /`: the status page.
pub(super) async fn status_page(State(s): State<Ctx>) -> Html<String> {
    let apps = apps_view(&s);
    let now = unix_ms();
    let stats = stats::STATS.view(now);
    Html(dashboard::page(&s.mesh.mesh(), &apps, &stats, now))
}

/// `GET /dashboard/live`: the live part of the status page, fetched by its
/// script every second.
pub(super) async fn dashboard_live(State(s): State<Ctx>) -> Html<String> {
    let apps = apps_view(&s);
    let now = unix_ms();
    let stats = stats::STATS.view(now);
    Html(dashboard::fragment(&s.mesh.mesh(), &apps, &stats, now))
}

/// This peer's apps and the mesh's, as `/api/apps` shows them.
fn apps_view(s: &Shared) -> AppsView {
    let mesh = s.mesh.mesh();
    let mut v = AppsView::build(&s.local_id, s.workers.details(), &mesh)
        .with_placement(&s.dispatcher.desired(), &mesh);
    v.remote_deploy = s.store.is_some();
    v
}
