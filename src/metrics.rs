//! `GET /metrics`: Prometheus metrics (OpenMetrics text, via the
//! `prometheus-client` crate that libp2p's own metrics use).
//!
//! Counters and histograms are updated where things happen (the HTTP job
//! path, the dispatcher, the worker supervisor) through the process-wide
//! [`METRICS`]; gauges that describe current state (workers by state, peers
//! by state) are set from the live views when scraped. libp2p's swarm,
//! gossipsub, identify and ping metrics are recorded by the network event
//! loop into the same registry.

use std::collections::HashMap;
use std::sync::{LazyLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::api::{AppsView, MeshView};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub app: String,
    /// `ok`, or the error kind (`timeout`, `busy`, `worker_crashed`, ...).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    pub app: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppStateLabels {
    pub app: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

fn job_histogram() -> Histogram {
    // 100 µs to ~26 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

pub struct Metrics {
    /// Jobs that entered the mesh here (HTTP; each line of a stream is one).
    pub jobs: Family<JobLabels, Counter>,
    pub job_seconds: Family<AppLabel, Histogram, fn() -> Histogram>,
    pub jobs_in_flight: Gauge,
    /// Further attempts made after a job's attempt failed (failover).
    pub retries: Counter,
    /// Answers of the job endpoint by status code (503s among them).
    pub responses: Family<CodeLabel, Counter>,
    pub worker_restarts: Family<AppLabel, Counter>,
    pub workers: Family<AppStateLabels, Gauge>,
    pub peers: Family<StateLabel, Gauge>,
    /// Times a known peer was marked down here, by reason (`left`,
    /// `unreachable`, `silent`). Silent downs of peers that are in fact
    /// alive are false downs: a healthy mesh has none.
    pub peer_downs: Family<ReasonLabel, Counter>,
    /// Announcements of other peers that were never taken here: gaps in
    /// an author's sequence numbers (lost, or overtaken by a later one).
    pub announcements_skipped: Counter,
    /// Start/stop/deploy decisions not taken here, by reason (`unsigned`,
    /// `bad_signature`, `untrusted_key`, `invalid`, `full`, `stale`): each
    /// counted once, however often it is relayed.
    pub decisions_refused: Family<ReasonLabel, Counter>,
    /// HTTP requests refused by the guard, by reason (`host`, `origin`,
    /// `content_type`, `token`).
    pub http_refused: Family<ReasonLabel, Counter>,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
    jobs: Family::default(),
    job_seconds: Family::new_with_constructor(job_histogram),
    jobs_in_flight: Gauge::default(),
    retries: Counter::default(),
    responses: Family::default(),
    worker_restarts: Family::default(),
    workers: Family::default(),
    peers: Family::default(),
    peer_downs: Family::default(),
    announcements_skipped: Counter::default(),
    decisions_refused: Family::default(),
    http_refused: Family::default(),
});

/// A registry with disruptor's metrics; the caller adds libp2p's.
pub fn registry() -> Registry {
    let mut r = Registry::default();
    let m = &*METRICS;
    r.register(
        "disruptor_jobs",
        "Jobs that entered the mesh at this peer, by app and outcome",
        m.jobs.clone(),
    );
    r.register(
        "disruptor_job_seconds",
        "Time from a job's arrival at this peer to its answer",
        m.job_seconds.clone(),
    );
    r.register(
        "disruptor_jobs_in_flight",
        "Jobs that entered at this peer and are not answered yet",
        m.jobs_in_flight.clone(),
    );
    r.register(
        "disruptor_dispatch_retries",
        "Jobs tried again on another worker after an attempt failed",
        m.retries.clone(),
    );
    r.register(
        "disruptor_http_job_responses",
        "Answers of the job endpoint by HTTP status code",
        m.responses.clone(),
    );
    r.register(
        "disruptor_worker_restarts",
        "Worker processes of this peer restarted after they exited",
        m.worker_restarts.clone(),
    );
    r.register(
        "disruptor_workers",
        "Worker processes of this peer by app and state",
        m.workers.clone(),
    );
    r.register(
        "disruptor_peers",
        "Peers this peer knows, by state",
        m.peers.clone(),
    );
    r.register(
        "disruptor_peer_downs",
        "Times a known peer was marked down here, by reason (left, unreachable, silent)",
        m.peer_downs.clone(),
    );
    r.register(
        "disruptor_announcements_skipped",
        "Announcements of other peers never taken here (gaps in their sequence numbers)",
        m.announcements_skipped.clone(),
    );
    r.register(
        "disruptor_decisions_refused",
        "Start/stop/deploy decisions refused here, by reason (each counted once)",
        m.decisions_refused.clone(),
    );
    r.register(
        "disruptor_http_refused",
        "HTTP requests refused before reaching a handler, by reason (host, origin, content_type, token)",
        m.http_refused.clone(),
    );
    r
}

/// Sets the state gauges from the live views, then encodes everything.
pub fn scrape(registry: &Registry, mesh: &MeshView, apps: &AppsView) -> String {
    let m = &*METRICS;
    m.workers.clear();
    for a in &apps.local {
        for p in &a.processes {
            m.workers
                .get_or_create(&AppStateLabels {
                    app: a.status.app.to_string(),
                    state: format!("{:?}", p.state).to_lowercase(),
                })
                .inc();
        }
    }
    m.peers.clear();
    for state in ["up", "down"] {
        let n = mesh.peers.iter().filter(|p| p.state == state).count();
        m.peers
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .set(n as i64);
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, registry) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    out
}

/// Records a finished job that entered here: counters, latency, the
/// dashboard's series, and (when it failed) the dashboard's latest errors.
pub fn job_done(
    app: &crate::apps::AppName,
    result: Result<(), &crate::error::JobError>,
    took: std::time::Duration,
    peer: Option<&str>,
) {
    let m = &*METRICS;
    // The hot path (a job that went well) uses handles cached per app: no
    // label strings built, no allocation.
    let (ok, seconds) = app_handles(app);
    match result {
        Ok(()) => ok.inc(),
        Err(e) => m
            .jobs
            .get_or_create(&JobLabels {
                app: app.to_string(),
                outcome: e.kind().into(),
            })
            .inc(),
    };
    seconds.observe(took.as_secs_f64());
    let stats = &crate::stats::STATS;
    stats.job(
        app.as_str(),
        result.is_ok(),
        took,
        crate::membership::unix_ms(),
    );
    if let Err(e) = result {
        stats.error_now("job", app.as_str(), peer.map(str::to_string), e.to_string());
    }
}

/// Counts a job in `jobs_in_flight` while it lives.
pub struct InFlight(());

impl InFlight {
    pub fn new() -> Self {
        METRICS.jobs_in_flight.inc();
        InFlight(())
    }
}

impl Default for InFlight {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.jobs_in_flight.dec();
    }
}

/// The `ok` counter and the latency histogram of `app`.
fn app_handles(app: &crate::apps::AppName) -> (Counter, Histogram) {
    static CACHE: LazyLock<RwLock<HashMap<crate::apps::AppName, (Counter, Histogram)>>> =
        LazyLock::new(Default::default);
    if let Some(h) = CACHE.read().expect("metrics cache").get(app) {
        return h.clone();
    }
    let m = &*METRICS;
    let h = (
        m.jobs
            .get_or_create(&JobLabels {
                app: app.to_string(),
                outcome: "ok".into(),
            })
            .clone(),
        m.job_seconds
            .get_or_create(&AppLabel {
                app: app.to_string(),
            })
            .clone(),
    );
    CACHE
        .write()
        .expect("metrics cache")
        .insert(app.clone(), h.clone());
    h
}

pub fn response(code: u16) {
    static OK: LazyLock<Counter> = LazyLock::new(|| {
        METRICS
            .responses
            .get_or_create(&CodeLabel { code: "200".into() })
            .clone()
    });
    if code == 200 {
        OK.inc();
        return;
    }
    METRICS
        .responses
        .get_or_create(&CodeLabel {
            code: code.to_string(),
        })
        .inc();
}
