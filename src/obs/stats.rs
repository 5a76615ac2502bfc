//! What the dashboard and `disruptor status` show of recent work: per-app
//! throughput and latency over the last minutes, and the latest errors.
//!
//! Jobs are counted where they enter the mesh (this peer's HTTP endpoint);
//! worker crashes where they happen. Fixed memory: [`BUCKETS`] buckets of
//! [`BUCKET_SECS`] per app and the last [`MAX_ERRORS`] errors. The apps are
//! those of the mesh's desired state, and `(other)` for every other name
//! ([`crate::obs::metrics::track_apps`] chooses, and drops the series of apps
//! that leave it); [`MAX_APPS`] is a backstop. A std mutex, held for a few
//! arithmetic operations and never across an await.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::clock::unix_ms;

/// Seconds per interval of an app's series: the dashboard's resolution.
pub const BUCKET_SECS: u64 = 5;
/// 5 minutes of history.
pub const BUCKETS: usize = 60;
/// Every app that has its own metrics, and `(other)`.
pub const MAX_APPS: usize = crate::obs::metrics::MAX_LABELLED_APPS + 1;
/// Recent errors kept; a new one pushes the oldest out.
pub const MAX_ERRORS: usize = 50;
/// An error message is cut to this many characters.
pub const MAX_ERROR_CHARS: usize = 300;
/// Latency histogram per bucket: bin k holds latencies below
/// [`super::LATENCY_FIRST_BOUND`] * 2^k (the last one everything above).
const LAT_BINS: usize = super::LATENCY_BOUNDS + 1;

#[derive(Clone, Default)]
struct Bucket {
    /// Start of the bucket, in whole `BUCKET_SECS` since the epoch.
    slot: u64,
    ok: u64,
    failed: u64,
    lat: [u32; LAT_BINS],
}

#[derive(Default)]
struct AppSeries {
    buckets: Vec<Bucket>,
}

/// One recent error, as shown on the dashboard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ErrorEvent {
    /// When it happened, unix ms.
    pub at_ms: u64,
    /// "job" (a job that failed) or "worker" (a worker process that died).
    pub kind: String,
    /// The app's name, as the job or worker had it.
    pub app: String,
    /// The peer where it happened (for a job: where it ran or was last tried).
    pub peer: Option<String>,
    /// What went wrong, for people (cut to [`MAX_ERROR_CHARS`] characters
    /// by [`Stats::error_now`]).
    pub message: String,
}

/// One point of an app's series.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Start of the interval, unix ms.
    pub at_ms: u64,
    /// Jobs that finished in the interval, failed ones included.
    pub jobs: u64,
    /// Of those, the ones that failed.
    pub failed: u64,
    /// Jobs per second over the interval.
    pub rate: f64,
    /// Upper bounds of the bins holding the median and the 99th
    /// percentile, in milliseconds (null without jobs).
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
}

/// `GET /api/stats`: recent work, as the dashboard and `disruptor status`
/// show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsView {
    /// Length of each interval, in seconds ([`BUCKET_SECS`]).
    pub bucket_secs: u64,
    /// Per app, oldest first, the last `BUCKETS` intervals (empty ones too).
    pub apps: BTreeMap<String, Vec<Point>>,
    /// Newest first.
    pub errors: Vec<ErrorEvent>,
    /// Pipelines (streams through several apps) entering here now, oldest
    /// first, at most [`MAX_PIPELINES`].
    #[serde(default)]
    pub pipelines: Vec<PipelineView>,
}

/// A pipeline running now: its stages, and since when.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PipelineView {
    /// Its apps, in order.
    pub stages: Vec<String>,
    /// When its stream started, unix ms.
    pub started_ms: u64,
}

/// Pipelines shown at once; more run, but only these are listed.
pub const MAX_PIPELINES: usize = 16;

/// Recent per-app series and errors, in fixed memory (see the module
/// docs). A peer records into its one [`STATS`].
#[derive(Default)]
pub struct Stats {
    apps: Mutex<BTreeMap<String, AppSeries>>,
    errors: Mutex<VecDeque<ErrorEvent>>,
    /// Running pipelines by a number of their own.
    pipelines: Mutex<(u64, BTreeMap<u64, PipelineView>)>,
}

/// A listed pipeline; it leaves the list when this is dropped.
pub struct Listed<'a> {
    stats: &'a Stats,
    id: Option<u64>,
}

impl Drop for Listed<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            self.stats
                .pipelines
                .lock()
                .expect("stats lock")
                .1
                .remove(&id);
        }
    }
}

/// The process's one set (a peer is one process; tests make their own).
pub static STATS: LazyLock<Stats> = LazyLock::new(Stats::default);

/// A new job id: random, so ids from different entry peers do not clash.
pub fn new_job_id() -> u64 {
    rand::random()
}

/// How a job id appears in logs and in `X-Disruptor-Job-Id`.
pub fn job_id_text(id: u64) -> String {
    format!("{id:016x}")
}

fn lat_bin(d: Duration) -> usize {
    let us = d.as_micros() as u64;
    let mut bound = super::LATENCY_FIRST_BOUND.as_micros() as u64;
    for k in 0..LAT_BINS - 1 {
        if us < bound {
            return k;
        }
        bound *= 2;
    }
    LAT_BINS - 1
}

fn bin_upper_ms(k: usize) -> f64 {
    super::LATENCY_FIRST_BOUND.as_secs_f64() * 1e3 * (1u64 << k) as f64
}

impl Stats {
    /// Records a finished job of `app` at `now_ms`.
    pub fn job(&self, app: &str, ok: bool, took: Duration, now_ms: u64) {
        self.jobs(app, u64::from(ok), u64::from(!ok), took, now_ms);
    }

    /// Records `ok` jobs answered and `failed` failed, all of `app` and
    /// taking `took` (a batch of a stream's lines), at `now_ms`.
    pub fn jobs(&self, app: &str, ok: u64, failed: u64, took: Duration, now_ms: u64) {
        let slot = now_ms / 1000 / BUCKET_SECS;
        let mut apps = self.apps.lock().expect("stats lock");
        if !apps.contains_key(app) {
            if apps.len() >= MAX_APPS {
                return;
            }
            apps.insert(app.to_string(), AppSeries::default());
        }
        let series = apps.get_mut(app).expect("inserted above");
        if series.buckets.is_empty() {
            series.buckets = vec![Bucket::default(); BUCKETS];
        }
        let b = &mut series.buckets[(slot % BUCKETS as u64) as usize];
        if b.slot != slot {
            *b = Bucket {
                slot,
                ..Bucket::default()
            };
        }
        b.ok += ok;
        b.failed += failed;
        b.lat[lat_bin(took)] += (ok + failed) as u32;
    }

    /// Lists a pipeline of `stages` that starts at `now_ms` until the
    /// returned guard is dropped (not listed when [`MAX_PIPELINES`] are).
    pub fn pipeline<'a>(&'a self, stages: Vec<String>, now_ms: u64) -> Listed<'a> {
        let mut p = self.pipelines.lock().expect("stats lock");
        if p.1.len() >= MAX_PIPELINES {
            return Listed {
                stats: self,
                id: None,
            };
        }
        p.0 += 1;
        let id = p.0;
        p.1.insert(
            id,
            PipelineView {
                stages,
                started_ms: now_ms,
            },
        );
        Listed {
            stats: self,
            id: Some(id),
        }
    }

    /// Drops the series of every app for which `keep` is false.
    pub fn keep_apps(&self, keep: impl Fn(&str) -> bool) {
        self.apps
            .lock()
            .expect("stats lock")
            .retain(|app, _| keep(app));
    }

    /// Records `e` as the newest error, dropping the oldest beyond
    /// [`MAX_ERRORS`]. Its message is kept as given.
    pub fn error(&self, e: ErrorEvent) {
        let mut errors = self.errors.lock().expect("stats lock");
        if errors.len() >= MAX_ERRORS {
            errors.pop_back();
        }
        errors.push_front(e);
    }

    /// Shorthand for an error that happens now.
    pub fn error_now(
        &self,
        kind: &'static str,
        app: &str,
        peer: Option<String>,
        message: impl Into<String>,
    ) {
        let mut message = message.into();
        crate::text::truncate(&mut message, MAX_ERROR_CHARS);
        self.error(ErrorEvent {
            at_ms: unix_ms(),
            kind: kind.to_string(),
            app: app.to_string(),
            peer,
            message,
        });
    }

    /// The series as of `now_ms` (unix ms): per app, the last [`BUCKETS`]
    /// intervals; the errors, newest first.
    pub fn view(&self, now_ms: u64) -> StatsView {
        let now_slot = now_ms / 1000 / BUCKET_SECS;
        let apps = self.apps.lock().expect("stats lock");
        let mut out = BTreeMap::new();
        for (app, series) in apps.iter() {
            let mut points = Vec::with_capacity(BUCKETS);
            for age in (0..BUCKETS as u64).rev() {
                let Some(slot) = now_slot.checked_sub(age) else {
                    continue;
                };
                let b = series
                    .buckets
                    .get((slot % BUCKETS as u64) as usize)
                    .filter(|b| b.slot == slot);
                let (jobs, failed, lat) = match b {
                    Some(b) => (b.ok + b.failed, b.failed, b.lat),
                    None => (0, 0, [0; LAT_BINS]),
                };
                let quantile = |q: f64| -> Option<f64> {
                    if jobs == 0 {
                        return None;
                    }
                    let want = ((jobs as f64) * q).ceil().max(1.0) as u64;
                    let mut seen = 0u64;
                    for (k, n) in lat.iter().enumerate() {
                        seen += *n as u64;
                        if seen >= want {
                            return Some(bin_upper_ms(k));
                        }
                    }
                    Some(bin_upper_ms(LAT_BINS - 1))
                };
                // The current interval is still filling: rate over its
                // elapsed part.
                let span = if age == 0 {
                    ((now_ms - slot * BUCKET_SECS * 1000) as f64 / 1000.0).max(1.0)
                } else {
                    BUCKET_SECS as f64
                };
                points.push(Point {
                    at_ms: slot * BUCKET_SECS * 1000,
                    jobs,
                    failed,
                    rate: jobs as f64 / span,
                    p50_ms: quantile(0.5),
                    p99_ms: quantile(0.99),
                });
            }
            out.insert(app.clone(), points);
        }
        drop(apps);
        StatsView {
            bucket_secs: BUCKET_SECS,
            apps: out,
            errors: self
                .errors
                .lock()
                .expect("stats lock")
                .iter()
                .cloned()
                .collect(),
            pipelines: self
                .pipelines
                .lock()
                .expect("stats lock")
                .1
                .values()
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_count_jobs_per_interval_and_forget_old_ones() {
        let s = Stats::default();
        let t0 = 1_000_000_000_000u64; // a multiple of 5 s
        for i in 0..10 {
            s.job("apps/a", i % 5 != 0, Duration::from_millis(i), t0 + 100);
        }
        s.job("apps/a", true, Duration::from_millis(3), t0 + 5_100);
        let v = s.view(t0 + 6_000);
        let pts = &v.apps["apps/a"];
        assert_eq!(pts.len(), BUCKETS);
        let last = &pts[BUCKETS - 1];
        let prev = &pts[BUCKETS - 2];
        assert_eq!((prev.jobs, prev.failed), (10, 2));
        assert_eq!(prev.rate, 2.0);
        assert_eq!(last.jobs, 1);
        // 0..9 ms: the median is in the bin up to 6.4 ms, p99 up to 12.8.
        assert_eq!(prev.p50_ms, Some(6.4));
        assert_eq!(prev.p99_ms, Some(12.8));
        // Five minutes later, all of it is history.
        let v = s.view(t0 + 6_000 + (BUCKETS as u64) * 5_000);
        assert!(v.apps["apps/a"].iter().all(|p| p.jobs == 0));
    }

    #[test]
    fn running_pipelines_are_listed_while_they_run_and_bounded() {
        let s = Stats::default();
        let stages = |i: usize| vec![format!("apps/a{i}"), "apps/b".to_string()];
        let first = s.pipeline(stages(0), 7);
        assert_eq!(
            s.view(10).pipelines,
            vec![PipelineView {
                stages: stages(0),
                started_ms: 7
            }]
        );
        let more: Vec<_> = (1..=MAX_PIPELINES)
            .map(|i| s.pipeline(stages(i), 8))
            .collect();
        let listed = s.view(10).pipelines;
        assert_eq!(listed.len(), MAX_PIPELINES, "the last one is not listed");
        assert_eq!(listed[0].stages, stages(0));
        drop(first);
        assert_eq!(s.view(10).pipelines.len(), MAX_PIPELINES - 1);
        // The one that was not listed leaves nothing behind when it ends.
        drop(more);
        assert!(s.view(10).pipelines.is_empty());
    }

    #[test]
    fn errors_are_bounded_newest_first() {
        let s = Stats::default();
        for i in 0..(MAX_ERRORS + 10) {
            s.error_now("job", "apps/a", None, format!("e{i}"));
        }
        let v = s.view(unix_ms());
        assert_eq!(v.errors.len(), MAX_ERRORS);
        assert_eq!(v.errors[0].message, format!("e{}", MAX_ERRORS + 9));
    }
}
