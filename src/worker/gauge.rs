//! A count of jobs in progress that can be waited on until it is zero.
//!
//! A job is counted by holding a [`Held`] guard, taken with
//! [`Gauge::hold`] when the job is accepted and dropped with the job,
//! whichever way it ends: answered, failed, timed out, or dropped with a
//! queue that closed. Nobody has to remember to count down, so no path can
//! forget to.
//!
//! [`Gauge::until_zero`] waits by notification, not by polling: the guard
//! that brings the count to zero wakes every waiter. A waiter registers
//! for the wake-up *before* it reads the count, so a count that reaches
//! zero between its read and its wait still wakes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Jobs in progress (see the module's documentation). Shared as an `Arc`:
/// the guards point back to it.
#[derive(Debug, Default)]
pub(super) struct Gauge {
    count: AtomicUsize,
    /// Signalled when `count` drops to zero.
    zero: Notify,
}

impl Gauge {
    /// The count now.
    pub(super) fn get(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Counts one more until the returned guard is dropped.
    pub(super) fn hold(self: &Arc<Self>) -> Held {
        self.hold_many(1)
    }

    /// Counts `n` more (a batch of a stream's lines) until the returned
    /// guard is dropped.
    pub(super) fn hold_many(self: &Arc<Self>, n: usize) -> Held {
        self.count.fetch_add(n, Ordering::SeqCst);
        Held(self.clone(), n)
    }

    /// Returns once the count is zero: at once if it is, else when the
    /// last guard is dropped.
    pub(super) async fn until_zero(&self) {
        loop {
            let notified = self.zero.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.get() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One count on a [`Gauge`], given back when dropped.
#[must_use = "the count is given back when the guard is dropped"]
#[derive(Debug)]
pub(super) struct Held(Arc<Gauge>, usize);

impl Drop for Held {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(self.1, Ordering::SeqCst) == self.1 {
            self.0.zero.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Far longer than any wake-up takes; only reached if one is missed.
    const DEADLINE: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn counts_while_held_and_wakes_its_waiters_at_zero() {
        let gauge = Arc::new(Gauge::default());
        tokio::time::timeout(DEADLINE, gauge.until_zero())
            .await
            .expect("zero from the start");
        let (a, b) = (gauge.hold(), gauge.hold_many(3));
        assert_eq!(gauge.get(), 4);
        let mut first = std::pin::pin!(gauge.until_zero());
        let mut second = std::pin::pin!(gauge.until_zero());
        assert!(futures::poll!(first.as_mut()).is_pending());
        assert!(futures::poll!(second.as_mut()).is_pending());
        drop(a);
        assert_eq!(gauge.get(), 3);
        assert!(futures::poll!(first.as_mut()).is_pending());
        // The last one goes on another task, while both wait.
        let last = tokio::spawn(async move { drop(b) });
        tokio::time::timeout(DEADLINE, async { tokio::join!(first, second) })
            .await
            .expect("woken when the last guard went");
        last.await.unwrap();
        assert_eq!(gauge.get(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_drop_to_zero_racing_the_wait_is_never_missed() {
        let gauge = Arc::new(Gauge::default());
        for _ in 0..1000 {
            let held = gauge.hold();
            let dropper = tokio::spawn(async move { drop(held) });
            tokio::time::timeout(DEADLINE, gauge.until_zero())
                .await
                .expect("a wake-up was missed");
            dropper.await.unwrap();
        }
    }
}
