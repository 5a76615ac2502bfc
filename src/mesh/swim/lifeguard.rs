//! Lifeguard's defences against false downs (Dadgar et al., "Lifeguard:
//! Local Health Awareness for More Accurate Failure Detection", 2018).
//!
//! Plain SWIM declares a peer down when one prober's probes went
//! unanswered for a fixed time. Under load that goes wrong in both
//! directions: a *slow prober* (a busy CPU, a full socket buffer) misses
//! acks that were sent, and suspects healthy peers. Lifeguard adds:
//!
//! - **Local health** ([`Health`]): a score that rises when this peer's own
//!   probes fail or when others suspect *it* (it was too slow to answer),
//!   and falls when probes succeed. Probe timeouts and the probe interval
//!   are stretched by `score + 1`, so a struggling peer waits longer before
//!   blaming others.
//! - **Dynamic suspicion** ([`Suspicion`]): a suspect starts with a long
//!   timeout that shrinks (on a log scale) as independent peers confirm the
//!   suspicion; one confused prober alone cannot make a peer down quickly,
//!   and a real failure seen by many is declared down quickly.
//! - **Buddy system**: a probe to a suspect carries the suspicion first, so
//!   the suspect learns of it at once and can refute it (in `mod.rs`).
//! - **Nacks**: the peers asked for an indirect probe answer "no ack" when
//!   the target stayed silent; a missing nack means this peer's own links
//!   are the problem, and raises its health score (in `mod.rs`).

use std::collections::HashSet;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// This peer's local health score: 0 is healthy, `max - 1` is the worst.
#[derive(Debug, Clone, Copy)]
pub struct Health {
    score: u32,
    max: u32,
}

impl Health {
    /// A healthy score with the given ceiling (Lifeguard uses 8).
    pub fn new(max: u32) -> Self {
        Health {
            score: 0,
            max: max.max(1),
        }
    }

    /// Moves the score by `delta`, kept within `0..max`.
    pub fn apply(&mut self, delta: i32) {
        let s = self.score as i64 + delta as i64;
        self.score = s.clamp(0, self.max as i64 - 1) as u32;
    }

    /// The score.
    pub fn score(&self) -> u32 {
        self.score
    }

    /// `d` stretched by the score: `d * (score + 1)`.
    pub fn scale(&self, d: Duration) -> Duration {
        d * (self.score + 1)
    }
}

/// A suspicion about one member: when it started, who confirmed it, and
/// when it expires.
#[derive(Debug, Clone)]
pub struct Suspicion<I> {
    /// Who raised it: its own repeats are not confirmations.
    first: I,
    started: Instant,
    min: Duration,
    max: Duration,
    /// Confirmations the timeout reaches `min` at.
    expected: u32,
    /// Distinct peers that suspected it too (the first suspector excluded);
    /// at most `expected`, so a rogue peer naming many suspectors cannot
    /// grow this set.
    confirmed: HashSet<I>,
}

impl<I: Eq + Hash> Suspicion<I> {
    /// A suspicion raised by `first` at `now`, which expires after `max`
    /// with no confirmation and after `min` with `expected` of them.
    pub fn new(first: I, now: Instant, min: Duration, max: Duration, expected: u32) -> Self {
        Suspicion {
            first,
            started: now,
            min,
            max: max.max(min),
            expected,
            confirmed: HashSet::new(),
        }
    }

    /// Counts `from` as an independent confirmation (once each, up to
    /// `expected`); true when it was new.
    pub fn confirm(&mut self, from: I) -> bool {
        if from == self.first || self.confirmed.len() as u32 >= self.expected {
            return false;
        }
        self.confirmed.insert(from)
    }

    /// Confirmations so far.
    pub fn confirmations(&self) -> u32 {
        self.confirmed.len() as u32
    }

    /// When the member is declared down, given the confirmations so far:
    /// `max - (max - min) * log(c + 1) / log(expected + 1)`, never below
    /// `min` (Lifeguard, section 4.2).
    pub fn deadline(&self) -> Instant {
        self.started + timeout(self.min, self.max, self.confirmations(), self.expected)
    }
}

/// The suspicion timeout after `c` of `k` expected confirmations.
pub fn timeout(min: Duration, max: Duration, c: u32, k: u32) -> Duration {
    if k == 0 || max <= min {
        return min;
    }
    let frac = ((c as f64) + 1.0).ln() / ((k as f64) + 1.0).ln();
    let span = (max - min).as_secs_f64();
    let t = max.as_secs_f64() - span * frac.min(1.0);
    Duration::from_secs_f64(t.max(min.as_secs_f64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_stays_in_bounds_and_scales() {
        let mut h = Health::new(8);
        h.apply(-1);
        assert_eq!(h.score(), 0);
        assert_eq!(
            h.scale(Duration::from_millis(500)),
            Duration::from_millis(500)
        );
        for _ in 0..20 {
            h.apply(1);
        }
        assert_eq!(h.score(), 7);
        assert_eq!(h.scale(Duration::from_millis(500)), Duration::from_secs(4));
        h.apply(-1);
        assert_eq!(h.score(), 6);
    }

    #[test]
    fn the_timeout_shrinks_with_confirmations_down_to_min() {
        let (min, max) = (Duration::from_secs(4), Duration::from_secs(24));
        assert_eq!(timeout(min, max, 0, 3), max);
        let one = timeout(min, max, 1, 3);
        let two = timeout(min, max, 2, 3);
        assert!(one < max && two < one && two > min, "{one:?} {two:?}");
        assert_eq!(timeout(min, max, 3, 3), min);
        assert_eq!(timeout(min, max, 9, 3), min);
        assert_eq!(timeout(min, max, 0, 0), min);
    }

    #[test]
    fn confirmations_count_once_each_and_are_bounded() {
        let now = Instant::now();
        let mut s = Suspicion::new(
            1u32,
            now,
            Duration::from_secs(4),
            Duration::from_secs(24),
            3,
        );
        assert_eq!(s.deadline(), now + Duration::from_secs(24));
        assert!(!s.confirm(1), "the first suspector does not confirm itself");
        assert!(s.confirm(2));
        assert!(!s.confirm(2));
        assert!(s.confirm(3));
        assert!(s.confirm(4));
        // A rogue naming a thousand suspectors adds nothing past `expected`.
        for id in 5..1000 {
            assert!(!s.confirm(id));
        }
        assert_eq!(s.confirmations(), 3);
        assert_eq!(s.deadline(), now + Duration::from_secs(4));
    }
}
