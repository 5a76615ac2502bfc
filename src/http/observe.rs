//! What the logs and the metrics see of a job, written once for both ways
//! a job enters: a request of its own ([`super::jobs`]) and a line of a
//! stream ([`super::stream`]).
//!
//! [`job`] wraps a job's whole life at this peer: it runs the work inside
//! the job's tracing span (so every log line of the job carries its id and
//! app), counts the job in flight meanwhile
//! (`disruptor_jobs_in_flight`), then logs how it went and records it
//! ([`metrics::job_done`]: the counters, the latency histogram, and the
//! per-app stats and latest errors the dashboard shows).
//!
//! The wrapper is generic over the work's future: nothing is boxed.

use std::future::Future;
use std::time::Duration;

use tracing::Instrument;

use crate::apps::AppName;
use crate::dispatch::{self, Done};
use crate::error::JobError;
use crate::obs::{metrics, stats};

/// How a job came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A request of its own: its failure is a warning in the log.
    Request,
    /// Line `n` (from 1) of a stream. A stream may fail many lines and
    /// answers each in its output, so failures stay at debug level.
    Line(u64),
}

/// How a job went: its result, how many workers it was tried on, and the
/// peer of its last attempt (where it ran, or last failed).
#[derive(Debug)]
pub struct Outcome<T> {
    /// The result, or why there is none.
    pub result: Result<T, JobError>,
    /// Workers the job was tried on (0: it was not tried).
    pub attempts: u32,
    /// The peer of the last attempt (`None`: not tried, or fan-out).
    pub peer: Option<String>,
}

impl<T> Outcome<T> {
    /// A job refused before it was tried anywhere (a bad body or line).
    pub fn refused(e: JobError) -> Outcome<T> {
        Outcome::unrouted(Err(e))
    }

    /// A job that is not routed to one peer (fan-out asks them all).
    pub fn unrouted(result: Result<T, JobError>) -> Outcome<T> {
        Outcome {
            result,
            attempts: 0,
            peer: None,
        }
    }

    /// The same outcome with `f` applied to the result.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Outcome<U> {
        Outcome {
            result: self.result.map(f),
            attempts: self.attempts,
            peer: self.peer,
        }
    }
}

impl From<dispatch::Outcome> for Outcome<Done> {
    fn from(out: dispatch::Outcome) -> Outcome<Done> {
        Outcome {
            result: out.result,
            attempts: out.attempts,
            peer: out.last_peer,
        }
    }
}

/// Runs `work`, job `id` of `app`, observed (see the module's docs).
pub async fn job<T>(
    app: &AppName,
    id: u64,
    source: Source,
    work: impl Future<Output = Outcome<T>>,
) -> Outcome<T> {
    let span = match source {
        Source::Request => {
            tracing::debug_span!("job", id = %stats::job_id_text(id), app = %app)
        }
        Source::Line(n) => {
            tracing::debug_span!("job", id = %stats::job_id_text(id), app = %app, line = n)
        }
    };
    let started = std::time::Instant::now();
    let out = work.instrument(span.clone()).await;
    let took = started.elapsed();
    span.in_scope(|| log(&out, source, took));
    let result = out.result.as_ref().map(|_| ());
    metrics::job_done(app, result, took, out.peer.as_deref());
    out
}

/// The job's last log line.
fn log<T>(out: &Outcome<T>, source: Source, took: Duration) {
    let attempts = out.attempts;
    match (&out.result, source) {
        (Ok(_), _) => tracing::debug!(
            // No peer of its own: fan-out, every peer running the app.
            peer = out.peer.as_deref().unwrap_or("all"),
            attempts,
            took_ms = took.as_secs_f64() * 1000.0,
            "job answered"
        ),
        (Err(e), Source::Request) => tracing::warn!(
            peer = out.peer.as_deref().unwrap_or("-"),
            attempts,
            "job failed: {e}"
        ),
        (Err(e), Source::Line(_)) => tracing::debug!(
            peer = out.peer.as_deref().unwrap_or("-"),
            attempts,
            "job failed: {e}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_job_is_recorded_once_done() {
        let app = AppName::parse("apps/observe-test").unwrap();
        let out = job(&app, 7, Source::Line(3), async {
            Outcome::<()> {
                result: Err(JobError::Timeout("observe-test: too slow".into())),
                attempts: 2,
                peer: Some("12D3KooWpeer".into()),
            }
        })
        .await;
        assert_eq!(
            (out.attempts, out.peer.as_deref()),
            (2, Some("12D3KooWpeer"))
        );
        let errors = stats::STATS.view(crate::clock::unix_ms()).errors;
        let recorded: Vec<_> = errors
            .iter()
            .filter(|e| e.message == "observe-test: too slow")
            .collect();
        assert_eq!(recorded.len(), 1, "{errors:?}");
        assert_eq!(recorded[0].app, "apps/observe-test");
        assert_eq!(recorded[0].peer.as_deref(), Some("12D3KooWpeer"));
    }
}
