//! `futures_timer::Delay` backed by tokio's timer, for disruptor.
//!
//! libp2p (swarm, gossipsub, ping, identify, request-response) times
//! everything with `futures-timer`, whose `Delay::new` hands each timer to
//! one global helper thread and wakes that thread through a futex: a
//! context switch per timer created. An idle peer creates dozens a second
//! (one per gossip message queued for each neighbour, one per ping), and in
//! a VM each of those wake-ups is dear. disruptor already runs tokio,
//! whose timer wheel is driven by the runtime's own threads, so this crate
//! replaces `futures-timer` through `[patch.crates-io]` with the same API
//! (`Delay::new`, `Delay::reset`, `Future<Output = ()>`) on
//! `tokio::time::Sleep`. A timer is only put on the wheel when first
//! polled, and one that is never polled (most per-message timeouts) costs
//! an allocation and nothing else.
//!
//! A `Delay` created outside a tokio runtime (nothing in disruptor does)
//! is bound to a small fallback runtime on a thread of its own, so it still
//! fires instead of panicking.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::time::{Instant, Sleep};

/// A future that completes once its duration has passed; polled again
/// after that, it stays complete (as `futures_timer::Delay` does).
pub struct Delay {
    sleep: Pin<Box<Sleep>>,
}

impl Delay {
    /// A delay that fires `dur` from now.
    pub fn new(dur: Duration) -> Delay {
        let deadline = deadline_after(dur);
        let sleep = match Handle::try_current() {
            Ok(_) => tokio::time::sleep_until(deadline),
            Err(_) => {
                let _guard = FALLBACK.enter();
                tokio::time::sleep_until(deadline)
            }
        };
        Delay {
            sleep: Box::pin(sleep),
        }
    }

    /// Fires `dur` from now instead, whether or not it has fired already.
    pub fn reset(&mut self, dur: Duration) {
        self.sleep.as_mut().reset(deadline_after(dur));
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.sleep.as_mut().poll(cx)
    }
}

impl fmt::Debug for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delay")
            .field("deadline", &self.sleep.deadline())
            .finish()
    }
}

/// `now + dur`, or about 30 years from now for durations that do not fit
/// (libp2p uses very long ones to mean "never").
fn deadline_after(dur: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(dur)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// Drives the timers of delays created off-runtime: a runtime whose one
/// worker thread drives its timer for the life of the process.
static FALLBACK: LazyLock<Runtime> = LazyLock::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("delay-timer")
        .enable_time()
        .build()
        .expect("a timer runtime with no I/O can be built")
});

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn fires_after_its_duration_and_stays_fired() {
        let start = Instant::now();
        let mut d = Delay::new(Duration::from_millis(250));
        (&mut d).await;
        assert!(start.elapsed() >= Duration::from_millis(250));
        // Complete futures-timer delays stay complete.
        (&mut d).await;
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn reset_moves_the_deadline_even_after_firing() {
        let mut d = Delay::new(Duration::from_millis(10));
        (&mut d).await;
        let t = Instant::now();
        d.reset(Duration::from_secs(5));
        (&mut d).await;
        assert!(t.elapsed() >= Duration::from_secs(5));
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn huge_durations_mean_never_rather_than_overflow() {
        let mut d = Delay::new(Duration::MAX);
        let waited = tokio::time::timeout(Duration::from_secs(3600), &mut d).await;
        assert!(waited.is_err(), "a Duration::MAX delay fired");
    }

    #[test]
    fn works_outside_any_runtime() {
        let start = StdInstant::now();
        let d = Delay::new(Duration::from_millis(50));
        // A plain executor with no tokio context, as a non-tokio user has.
        futures_lite_block_on(d);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(50), "fired after {took:?}");
        assert!(took < Duration::from_secs(5), "fired after {took:?}");
    }

    /// Polls a future to completion on this thread, parking between polls.
    fn futures_lite_block_on<F: Future>(f: F) -> F::Output {
        use std::sync::Arc;
        use std::task::{Wake, Waker};
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = std::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }
}
