//! What one job's attempts have seen, and what to do after each failure:
//! a small state machine, separate from the I/O so its rules are tested
//! one by one.
//!
//! Two kinds of failure differ:
//! - a *redirect*: the chosen peer does not run the app any more (its
//!   announcement was stale) or its queues are full. Nothing ran; the job
//!   goes elsewhere and it does not count as an attempt (at most
//!   [`MAX_REDIRECTS`] times);
//! - a *failure*: the peer could not be reached or the worker died while it
//!   held the job. The job may have run; it is tried again elsewhere, up to
//!   the peer's `--retries`, and it counts.

use crate::error::JobError;

use super::pick::Target;

/// Peers tried for one job when the chosen one turns out not to run the
/// app any more (its announcement was stale) or to be full.
pub const MAX_REDIRECTS: usize = 4;

/// One job's history of attempts.
#[derive(Debug, Default)]
pub struct Failover {
    /// Targets not to pick again for this job.
    excluded: Vec<Target>,
    redirects: usize,
    /// One line per counted failure, for the final error.
    failures: Vec<String>,
    /// Attempts made (redirects not counted).
    attempts: u32,
}

/// What to do after an attempt failed.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// Pick again (the failed target is now excluded).
    Again,
    /// Answer the client with this error.
    GiveUp(JobError),
}

impl Failover {
    /// Targets not to pick for the next attempt.
    pub fn excluded(&self) -> &[Target] {
        &self.excluded
    }

    /// Whether something failed already: then, when no candidate is left
    /// outside [`Self::excluded`], the job may go back to anyone (a crashed
    /// worker's peer may have others, or restart it).
    pub fn has_failed(&self) -> bool {
        !self.failures.is_empty() || self.redirects > 0
    }

    /// Attempts made so far (for the response's header).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Counts an attempt that succeeded.
    pub fn succeeded(&mut self) {
        self.attempts += 1;
    }

    /// Decides after `error` from `target` (its peer's id in `peer`).
    /// `elsewhere` says whether another candidate exists outside the
    /// excluded ones and `target` (asked only for `Busy`: a full peer is
    /// passed over only when someone else can take the job); `retries` is
    /// the peer's `--retries`; `expired` whether the job's deadline passed.
    pub fn failed(
        &mut self,
        error: JobError,
        target: Target,
        peer: &str,
        elsewhere: impl FnOnce(&[Target]) -> bool,
        retries: u32,
        expired: bool,
    ) -> Next {
        match error {
            JobError::NotRunning(_) if self.redirects < MAX_REDIRECTS => self.redirect(target),
            JobError::Busy(_)
                if self.redirects < MAX_REDIRECTS
                    && elsewhere(&[self.excluded.as_slice(), &[target]].concat()) =>
            {
                self.redirect(target)
            }
            e @ (JobError::Unreachable(_) | JobError::WorkerCrashed(_)) => {
                self.attempts += 1;
                self.failures
                    .push(format!("attempt {} on {peer}: {e}", self.attempts));
                if self.failures.len() as u32 > retries || expired {
                    return Next::GiveUp(self.final_error(e));
                }
                self.excluded.push(target);
                Next::Again
            }
            e => {
                self.attempts += 1;
                Next::GiveUp(e)
            }
        }
    }

    fn redirect(&mut self, target: Target) -> Next {
        self.redirects += 1;
        self.excluded.push(target);
        Next::Again
    }

    /// The error after the last failure: as it is when it was the only
    /// one, else every attempt's, of the last one's kind.
    fn final_error(&self, last: JobError) -> JobError {
        if self.failures.len() == 1 {
            return last;
        }
        let msg = format!(
            "the job failed on {} attempts (it may be a poison job): {}",
            self.failures.len(),
            self.failures.join(" | ")
        );
        match last {
            JobError::Unreachable(_) => JobError::Unreachable(msg),
            _ => JobError::WorkerCrashed(msg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u8) -> Target {
        let _ = n;
        Target::Remote(libp2p::PeerId::random())
    }

    fn crashed() -> JobError {
        JobError::WorkerCrashed("worker died".into())
    }

    #[test]
    fn stale_views_redirect_without_counting_up_to_a_bound() {
        let mut f = Failover::default();
        for i in 0..MAX_REDIRECTS {
            let t = peer(i as u8);
            let next = f.failed(JobError::NotRunning("x".into()), t, "p", |_| true, 0, false);
            assert_eq!(next, Next::Again);
            assert_eq!(f.excluded().last(), Some(&t));
        }
        assert_eq!(f.attempts(), 0, "redirects are not attempts");
        assert!(f.has_failed());
        // One more stale answer is the answer.
        let next = f.failed(
            JobError::NotRunning("gone".into()),
            peer(9),
            "p",
            |_| true,
            0,
            false,
        );
        assert_eq!(next, Next::GiveUp(JobError::NotRunning("gone".into())));
        assert_eq!(f.attempts(), 1);
    }

    #[test]
    fn busy_moves_on_only_when_someone_else_can_take_it() {
        let mut f = Failover::default();
        let t = peer(1);
        let mut asked = Vec::new();
        let next = f.failed(
            JobError::Busy("full".into()),
            t,
            "p",
            |ex| {
                asked = ex.to_vec();
                true
            },
            0,
            false,
        );
        assert_eq!(next, Next::Again);
        assert_eq!(
            asked,
            vec![t],
            "the full peer is excluded from the question"
        );
        let next = f.failed(
            JobError::Busy("all full".into()),
            peer(2),
            "p",
            |_| false,
            0,
            false,
        );
        assert_eq!(next, Next::GiveUp(JobError::Busy("all full".into())));
    }

    #[test]
    fn failures_retry_up_to_retries_then_report_every_attempt() {
        let mut f = Failover::default();
        assert_eq!(
            f.failed(crashed(), peer(1), "a", |_| true, 2, false),
            Next::Again
        );
        assert_eq!(
            f.failed(
                JobError::Unreachable("gone".into()),
                peer(2),
                "b",
                |_| true,
                2,
                false
            ),
            Next::Again
        );
        assert_eq!(f.excluded().len(), 2);
        let Next::GiveUp(e) = f.failed(crashed(), peer(3), "c", |_| true, 2, false) else {
            panic!("a third failure with 2 retries gives up");
        };
        assert_eq!(f.attempts(), 3);
        let text = e.to_string();
        assert!(matches!(e, JobError::WorkerCrashed(_)), "{e:?}");
        assert!(text.contains("failed on 3 attempts"), "{text}");
        assert!(
            text.contains("attempt 1 on a")
                && text.contains("attempt 2 on b: ")
                && text.contains("attempt 3 on c"),
            "{text}"
        );
    }

    #[test]
    fn one_failure_without_retries_is_reported_as_it_is() {
        let mut f = Failover::default();
        let next = f.failed(
            JobError::Unreachable("no route".into()),
            peer(1),
            "a",
            |_| true,
            0,
            false,
        );
        assert_eq!(next, Next::GiveUp(JobError::Unreachable("no route".into())));
    }

    #[test]
    fn an_expired_deadline_stops_retrying() {
        let mut f = Failover::default();
        let next = f.failed(crashed(), peer(1), "a", |_| true, 5, true);
        assert_eq!(next, Next::GiveUp(crashed()));
    }

    #[test]
    fn other_errors_are_answers() {
        for e in [
            JobError::BadRequest("x".into()),
            JobError::Timeout("x".into()),
            JobError::BadOutput("x".into()),
        ] {
            let mut f = Failover::default();
            assert_eq!(
                f.failed(e.clone(), peer(1), "a", |_| true, 5, false),
                Next::GiveUp(e)
            );
            assert_eq!(f.attempts(), 1);
            assert!(!f.has_failed());
        }
    }
}
