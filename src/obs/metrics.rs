//! `GET /metrics`: Prometheus metrics (OpenMetrics text, via the
//! `prometheus-client` crate that libp2p's own metrics use).
//!
//! Counters and histograms are updated where things happen (the HTTP job
//! path and guard, the dispatcher, the worker supervisor, membership, the
//! network event loop) through the process-wide [`METRICS`]; gauges that
//! describe current state (workers by state, peers by state, jobs in
//! flight) are set from the live views when scraped ([`scrape`]).
//! libp2p's swarm, gossipsub, identify and ping metrics are recorded by the
//! network event loop into the same registry.
//!
//! Label sets are bounded by design: an `app` label exists only for apps
//! in the mesh's desired state (see [`track_apps`]); jobs sent to any other
//! name, made up or mistyped, are counted together under
//! `app="(other)"` ([`OTHER_APP`]). Anyone who can POST to a peer can
//! choose app names, and each label set costs a few dozen lines of
//! `/metrics` for the life of the process.

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::apps::WorkerState;

/// Labels of `disruptor_jobs_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    /// The app, or [`OTHER_APP`] for a name the mesh does not run.
    pub app: String,
    /// `ok`, or the error kind (`timeout`, `busy`, `worker_crashed`, ...).
    pub outcome: String,
}

/// Label of the per-app metrics `disruptor_job_seconds` and
/// `disruptor_worker_restarts_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppLabel {
    /// The app (for job latencies, [`OTHER_APP`] for a name the mesh does
    /// not run).
    pub app: String,
}

/// Labels of `disruptor_workers`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AppStateLabels {
    /// The app.
    pub app: String,
    /// A [`WorkerState`]'s name.
    pub state: String,
}

/// Label of `disruptor_peers`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `up` or `down`.
    pub state: String,
}

/// Label of the counters of refusals and downs
/// (`disruptor_peer_downs_total`, `disruptor_decisions_refused_total`,
/// `disruptor_http_refused_total`, `disruptor_membership_refused_total`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// A name fixed in the code, never taken from input: the label sets
    /// stay few.
    pub reason: &'static str,
}

/// Label of `disruptor_http_job_responses_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    /// The HTTP status code, e.g. `503`.
    pub code: String,
}

fn job_histogram() -> Histogram {
    Histogram::new(exponential_buckets(
        super::LATENCY_FIRST_BOUND.as_secs_f64(),
        2.0,
        super::LATENCY_BOUNDS as u16,
    ))
}

/// disruptor's own metrics, one set per process ([`METRICS`]); [`registry`]
/// names them (a counter's name gets `_total` in the text, as in the docs
/// here).
pub struct Metrics {
    /// Jobs that entered the mesh here (HTTP; each line of a stream is one).
    pub jobs: Family<JobLabels, Counter>,
    /// Seconds from a job's arrival here to its answer, by app; buckets
    /// from [`LATENCY_FIRST_BOUND`](super::LATENCY_FIRST_BOUND), doubling.
    pub job_seconds: Family<AppLabel, Histogram, fn() -> Histogram>,
    /// Jobs that entered here and are not answered yet: set at each
    /// scrape from [`Gauges::jobs_in_flight`].
    pub jobs_in_flight: Gauge,
    /// Further attempts made after a job's attempt failed (failover).
    pub retries: Counter,
    /// Answers of the job endpoint by status code (503s among them).
    pub responses: Family<CodeLabel, Counter>,
    /// Worker processes of this peer started again after they exited, by app.
    pub worker_restarts: Family<AppLabel, Counter>,
    /// Worker processes of this peer by app and state: set at each scrape
    /// from [`Gauges::workers`].
    pub workers: Family<AppStateLabels, Gauge>,
    /// Peers this peer knows by state: set at each scrape.
    pub peers: Family<StateLabel, Gauge>,
    /// Times a known peer was marked down here, by reason (`left`,
    /// `unreachable`, `silent`, `dead`). Silent downs of peers that are in fact
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

/// The process's [`Metrics`]: whatever records a metric goes through it.
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
        "Times a known peer was marked down here, by reason (left, unreachable, silent, dead)",
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

/// What the state gauges show, counted by the caller from its views.
#[derive(Debug, Default)]
pub struct Gauges {
    /// (app, state) of every local worker process.
    pub workers: Vec<(String, WorkerState)>,
    /// Peers known to be up.
    pub peers_up: usize,
    /// Peers known to be down.
    pub peers_down: usize,
    /// Jobs that entered the mesh here and are not answered yet (the
    /// dispatcher's count, which a draining peer waits on too).
    pub jobs_in_flight: usize,
}

/// Sets the state gauges, then encodes everything.
pub fn scrape(registry: &Registry, gauges: Gauges) -> String {
    let m = &*METRICS;
    m.workers.clear();
    for (app, state) in gauges.workers {
        m.workers
            .get_or_create(&AppStateLabels {
                app,
                state: state.as_str().into(),
            })
            .inc();
    }
    m.jobs_in_flight.set(gauges.jobs_in_flight as i64);
    m.peers.clear();
    for (state, n) in [("up", gauges.peers_up), ("down", gauges.peers_down)] {
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

/// The `app` label (and dashboard series) of every job for an app that is
/// not in the mesh's desired state.
pub const OTHER_APP: &str = "(other)";

/// Most apps with label sets of their own: as many as the desired state
/// holds (`mesh::desired::MAX_DESIRED`, checked by a test there), so every
/// app the mesh runs has its own.
pub const MAX_LABELLED_APPS: usize = 128;

/// Every outcome label: `ok` and each [`crate::error::JobError::kind`].
const OUTCOMES: [&str; 9] = [
    "ok",
    "bad_request",
    "not_running",
    "too_large",
    "worker_crashed",
    "bad_output",
    "timeout",
    "busy",
    "unreachable",
];

/// What the job path needs of one app's metrics, made once per app: no
/// label strings built and no family lookup for a job that went well.
#[derive(Clone)]
struct AppHandles {
    label: Arc<str>,
    ok: Counter,
    seconds: Histogram,
}

impl AppHandles {
    fn new(label: &str) -> AppHandles {
        let m = &*METRICS;
        AppHandles {
            label: label.into(),
            ok: m
                .jobs
                .get_or_create(&JobLabels {
                    app: label.to_string(),
                    outcome: "ok".into(),
                })
                .clone(),
            seconds: m
                .job_seconds
                .get_or_create(&AppLabel {
                    app: label.to_string(),
                })
                .clone(),
        }
    }
}

type Labelled = HashMap<crate::apps::AppName, AppHandles>;

/// The apps with label sets of their own, with a generation number that
/// changes whenever they do. Written by [`track_apps`] (rarely: when the
/// desired state changes); read by the job path only after a change.
static LABELLED: LazyLock<RwLock<(u64, Arc<Labelled>)>> = LazyLock::new(Default::default);
/// [`LABELLED`]'s generation, readable without its lock.
static GENERATION: AtomicU64 = AtomicU64::new(0);
static OTHER: LazyLock<AppHandles> = LazyLock::new(|| AppHandles::new(OTHER_APP));

thread_local! {
    /// Each thread's copy of [`LABELLED`]: the job path looks an app up
    /// here, and compares one atomic with [`GENERATION`] to know that the
    /// copy is current, so it takes no lock (it takes the read lock once
    /// per thread after a change).
    static SNAPSHOT: RefCell<(u64, Arc<Labelled>)> = RefCell::default();
}

/// Runs `f` with `app`'s handles, or [`OTHER_APP`]'s if it has none.
fn with_handles<T>(app: &crate::apps::AppName, f: impl FnOnce(&AppHandles) -> T) -> T {
    SNAPSHOT.with(|cell| {
        let mut snap = cell.borrow_mut();
        if snap.0 != GENERATION.load(Ordering::Acquire) {
            *snap = LABELLED.read().expect("metrics labels").clone();
        }
        f(snap.1.get(app).unwrap_or(&OTHER))
    })
}

/// Gives `apps` (the desired state's entries, started or stopped: the apps
/// the mesh runs or ran) label sets of their own, at most
/// [`MAX_LABELLED_APPS`]; jobs for any other name count as [`OTHER_APP`].
/// The label sets and dashboard series of apps no longer listed are
/// dropped, so what `/metrics` holds follows the desired state, which is
/// bounded. Called by the reconciler at every change of the desired state
/// (and every few seconds); nearly free when nothing changed.
pub fn track_apps<'a>(apps: impl IntoIterator<Item = &'a crate::apps::AppName>) {
    let wanted: BTreeSet<&crate::apps::AppName> =
        apps.into_iter().take(MAX_LABELLED_APPS).collect();
    let mut labelled = LABELLED.write().expect("metrics labels");
    let (generation, current) = &*labelled;
    if current.len() == wanted.len() && wanted.iter().all(|a| current.contains_key(*a)) {
        return;
    }
    let next: Labelled = wanted
        .into_iter()
        .map(|app| {
            let h = current.get(app).cloned();
            (
                app.clone(),
                h.unwrap_or_else(|| AppHandles::new(app.as_str())),
            )
        })
        .collect();
    for gone in current.keys().filter(|a| !next.contains_key(*a)) {
        forget(gone.as_str());
    }
    let generation = generation + 1;
    let keep: HashSet<String> = next.keys().map(|a| a.to_string()).collect();
    *labelled = (generation, Arc::new(next));
    GENERATION.store(generation, Ordering::Release);
    drop(labelled);
    crate::obs::stats::STATS.keep_apps(|app| app == OTHER_APP || keep.contains(app));
}

/// Drops every label set of `app`.
fn forget(app: &str) {
    let m = &*METRICS;
    for outcome in OUTCOMES {
        m.jobs.remove(&JobLabels {
            app: app.to_string(),
            outcome: outcome.to_string(),
        });
    }
    let label = AppLabel {
        app: app.to_string(),
    };
    m.job_seconds.remove(&label);
    m.worker_restarts.remove(&label);
}

/// Records a finished job that entered here: counters, latency, the
/// dashboard's series, and (when it failed) the dashboard's latest errors.
/// An app the mesh does not run is recorded as [`OTHER_APP`].
pub fn job_done(
    app: &crate::apps::AppName,
    result: Result<(), &crate::error::JobError>,
    took: std::time::Duration,
    peer: Option<&str>,
) {
    let label = with_handles(app, |h| {
        match result {
            Ok(()) => h.ok.inc(),
            Err(e) => METRICS
                .jobs
                .get_or_create(&JobLabels {
                    app: h.label.to_string(),
                    outcome: e.kind().into(),
                })
                .inc(),
        };
        h.seconds.observe(took.as_secs_f64());
        h.label.clone()
    });
    let stats = &crate::obs::stats::STATS;
    stats.job(&label, result.is_ok(), took, crate::clock::unix_ms());
    if let Err(e) = result {
        stats.error_now("job", app.as_str(), peer.map(str::to_string), e.to_string());
    }
}

/// Records a batch of a stream's jobs that took `took` together: `ok`
/// answered, and the errors of the others (each counted and, like
/// [`job_done`]'s, shown on the dashboard).
pub fn batch_done<'e>(
    app: &crate::apps::AppName,
    ok: u64,
    errors: impl ExactSizeIterator<Item = &'e crate::error::JobError>,
    took: std::time::Duration,
    peer: Option<&str>,
) {
    let failed = errors.len() as u64;
    let label = with_handles(app, |h| {
        h.ok.inc_by(ok);
        for _ in 0..ok + failed {
            h.seconds.observe(took.as_secs_f64());
        }
        h.label.clone()
    });
    let stats = &crate::obs::stats::STATS;
    stats.jobs(&label, ok, failed, took, crate::clock::unix_ms());
    for e in errors {
        METRICS
            .jobs
            .get_or_create(&JobLabels {
                app: label.to_string(),
                outcome: e.kind().into(),
            })
            .inc();
        stats.error_now("job", app.as_str(), peer.map(str::to_string), e.to_string());
    }
}

/// Counts one answer of the job endpoint (`POST /apps/...`; a stream is one
/// answer) with HTTP status `code`.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppName;
    use crate::error::JobError;
    use std::time::Duration;

    fn text() -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry()).unwrap();
        out
    }

    fn lines_of(app: &str) -> usize {
        let label = format!("app=\"{app}\"");
        text().lines().filter(|l| l.contains(&label)).count()
    }

    /// The only test here that calls `track_apps` (it is process-wide).
    #[test]
    fn only_tracked_apps_get_label_sets_and_forgotten_ones_lose_them() {
        let known = AppName::parse("apps/unit-known").unwrap();
        let made_up = AppName::parse("apps/unit-made-up").unwrap();
        let fail = JobError::NotRunning("no".into());
        job_done(&known, Ok(()), Duration::from_millis(1), None);
        job_done(&made_up, Err(&fail), Duration::from_millis(1), None);
        assert_eq!(lines_of("apps/unit-known"), 0, "not tracked yet");
        assert_eq!(lines_of("apps/unit-made-up"), 0);
        assert!(lines_of(OTHER_APP) > 0);

        track_apps([&known]);
        job_done(&known, Ok(()), Duration::from_millis(1), None);
        job_done(&known, Err(&fail), Duration::from_millis(1), None);
        job_done(&made_up, Ok(()), Duration::from_millis(1), None);
        let t = text();
        assert!(
            t.contains(r#"disruptor_jobs_total{app="apps/unit-known",outcome="ok"} 1"#),
            "{t}"
        );
        assert!(
            t.contains(r#"disruptor_jobs_total{app="apps/unit-known",outcome="not_running"} 1"#)
        );
        assert_eq!(lines_of("apps/unit-made-up"), 0);
        assert!(
            crate::obs::stats::STATS
                .view(0)
                .apps
                .contains_key("apps/unit-known")
        );

        // Out of the desired state: its label sets and series go.
        track_apps([]);
        assert_eq!(lines_of("apps/unit-known"), 0);
        assert!(
            !crate::obs::stats::STATS
                .view(0)
                .apps
                .contains_key("apps/unit-known")
        );
        job_done(&known, Ok(()), Duration::from_millis(1), None);
        assert_eq!(lines_of("apps/unit-known"), 0);
    }

    #[test]
    fn every_error_kind_is_an_outcome_that_can_be_forgotten() {
        for e in [
            JobError::BadRequest(String::new()),
            JobError::NotRunning(String::new()),
            JobError::TooLarge(String::new()),
            JobError::WorkerCrashed(String::new()),
            JobError::BadOutput(String::new()),
            JobError::Timeout(String::new()),
            JobError::Busy(String::new()),
            JobError::Unreachable(String::new()),
        ] {
            assert!(OUTCOMES.contains(&e.kind()), "{}", e.kind());
        }
    }
}
