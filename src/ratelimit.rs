//! Per-key token buckets: how a peer bounds what others can make it do.
//! The network event loop limits the announcements it takes from each
//! peer; membership limits its first dials of newly learned peers (one key
//! for them all).
//!
//! Pure bookkeeping with the clock passed in, so the rules are unit tested.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Up to `burst` events at once, then `per_second` on average, per key.
/// The table holds at most `max_keys` keys; when full, keys whose bucket
/// has refilled (nothing to remember) are dropped first, and if none has,
/// new keys are refused until one does.
#[derive(Debug)]
pub struct PerKeyBudget<K> {
    burst: f64,
    per_second: f64,
    max_keys: usize,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: Hash + Eq + Clone> PerKeyBudget<K> {
    /// A budget of `burst` tokens per key, refilled at `per_second`, for at
    /// most `max_keys` keys (each at least 1).
    pub fn new(burst: u32, per_second: u32, max_keys: usize) -> Self {
        PerKeyBudget {
            burst: burst.max(1) as f64,
            per_second: per_second.max(1) as f64,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes one token for `key`; false when its budget is spent.
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) && self.buckets.len() >= self.max_keys {
            let (burst, rate) = (self.burst, self.per_second);
            self.buckets
                .retain(|_, (tokens, at)| refill(*tokens, *at, now, burst, rate) < burst);
            if self.buckets.len() >= self.max_keys {
                return false;
            }
        }
        let (burst, rate) = (self.burst, self.per_second);
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((burst, now));
        let available = refill(*tokens, *at, now, burst, rate);
        *at = now;
        if available >= 1.0 {
            *tokens = available - 1.0;
            true
        } else {
            *tokens = available;
            false
        }
    }
}

fn refill(tokens: f64, at: Instant, now: Instant, burst: f64, per_second: f64) -> f64 {
    let elapsed = now
        .saturating_duration_since(at)
        .min(Duration::from_secs(3600));
    (tokens + elapsed.as_secs_f64() * per_second).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let mut b = PerKeyBudget::new(5, 10, 100);
        let t0 = Instant::now();
        let allowed = (0..20).filter(|_| b.allow(&"a", t0)).count();
        assert_eq!(allowed, 5);
        // Another key has its own budget.
        assert!(b.allow(&"b", t0));
        // One second later, 10 more (the burst caps what accumulates).
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (0..20).filter(|_| b.allow(&"a", t1)).count();
        assert_eq!(allowed, 5);
        // A steady 10/s is always allowed.
        let mut t = t1 + Duration::from_secs(1);
        for _ in 0..100 {
            assert!(b.allow(&"a", t));
            t += Duration::from_millis(100);
        }
    }

    #[test]
    fn the_table_is_bounded() {
        let mut b = PerKeyBudget::new(2, 1, 3);
        let t0 = Instant::now();
        for k in 0..3 {
            assert!(b.allow(&k, t0));
        }
        // Full, and every bucket is partly spent: a new key is refused.
        assert!(!b.allow(&99, t0));
        // Once the buckets refilled, they are dropped to make room.
        assert!(b.allow(&99, t0 + Duration::from_secs(5)));
        assert!(b.buckets.len() <= 3);
    }
}
