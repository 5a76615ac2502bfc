//! The dissemination queue: membership changes waiting to ride on outgoing
//! messages (piggybacking), each sent a limited number of times.
//!
//! Infection-style dissemination (SWIM section 4.1): every change is
//! attached to the next messages this peer sends anyway (probes, acks, the
//! periodic gossip), the least-sent first, until it has been sent
//! `limit` times, where `limit` grows with log N. An epidemic with fanout
//! `f` reaches every peer with high probability after O(log N) rounds, so a
//! change costs each peer a constant number of sends however large the
//! mesh.
//!
//! Urgent news goes first: suspicions, deaths, departures, and the
//! "alive" that refutes a suspicion. They race a timer (a suspect must
//! hear of its suspicion, and everyone of its refutation, before a
//! suspicion runs out), while a missed plain "alive" only delays a
//! member's discovery until the next full-state exchange.
//!
//! # Bounds
//! One entry per member (a newer change about a member replaces the older
//! one: the older is stale), and at most `max_len` entries: when full, the
//! "alive" entry sent most often (the one that has spread furthest) is
//! dropped, or if there is none, the most-sent entry. The periodic
//! full-state exchange repairs what a dropped entry would have told.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use super::Update;

/// Changes waiting to be piggybacked, least-sent first.
#[derive(Debug)]
pub struct Queue<I> {
    /// The queued update per member, with the key it has in `order`.
    by_member: HashMap<I, (Update<I>, Key)>,
    /// (times sent, newest first) -> member: the next to send comes first.
    order: BTreeSet<(Key, I)>,
    /// Makes keys unique and orders equally-sent entries newest first.
    next_seq: u64,
    max_len: usize,
}

/// The class of urgent news in [`Key`].
const URGENT: u8 = 0;
/// Urgent news is sent this many times the plain budget.
pub const URGENT_MULT: u32 = 2;

/// Ordering key: urgent news first, then the fewest transmissions, then
/// the newest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    /// 0: urgent; 1: plain news.
    class: u8,
    sent: u32,
    /// `u64::MAX - seq`: newer entries sort first among equals.
    age: u64,
}

impl<I: Copy + Eq + Hash + Ord> Queue<I> {
    /// An empty queue holding at most `max_len` entries.
    pub fn new(max_len: usize) -> Self {
        Queue {
            by_member: HashMap::new(),
            order: BTreeSet::new(),
            next_seq: 0,
            max_len: max_len.max(1),
        }
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.by_member.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_member.is_empty()
    }

    /// Queues `update`, replacing any older one about the same member;
    /// `urgent` puts it before plain news (see the module's doc).
    pub fn push(&mut self, update: Update<I>, urgent: bool) {
        if let Some((_, key)) = self.by_member.remove(&update.id) {
            self.order.remove(&(key, update.id));
        }
        if self.by_member.len() >= self.max_len {
            // Full: the last in the order is the most-sent "alive" entry
            // (or, with none left, the most-sent of the urgent ones).
            if let Some(&(key, id)) = self.order.iter().next_back() {
                self.order.remove(&(key, id));
                self.by_member.remove(&id);
            }
        }
        let key = Key {
            class: u8::from(!urgent),
            sent: 0,
            age: u64::MAX - self.next_seq,
        };
        self.next_seq += 1;
        self.order.insert((key, update.id));
        self.by_member.insert(update.id, (update, key));
    }

    /// Up to `max` updates for one message, the least-sent first; each
    /// counts as sent once more and leaves the queue after `limit` sends.
    pub fn take(&mut self, max: usize, limit: u32) -> Vec<Update<I>> {
        let picked: Vec<(Key, I)> = self.order.iter().take(max).copied().collect();
        let mut out = Vec::with_capacity(picked.len());
        for (key, id) in picked {
            self.order.remove(&(key, id));
            let entry = self.by_member.get_mut(&id).expect("queue entry");
            out.push(entry.0);
            let key = Key {
                sent: key.sent + 1,
                ..key
            };
            // Urgent news is sent twice as often: the log N budget assumes
            // gossip to random members of the whole mesh, but a peer gossips
            // to its ~10 neighbours only, and in a 50-peer mesh one peer in
            // a few runs heard of a death from nobody for over 3 s.
            let limit = if key.class == URGENT {
                limit * URGENT_MULT
            } else {
                limit
            };
            if key.sent >= limit {
                self.by_member.remove(&id);
            } else {
                entry.1 = key;
                self.order.insert((key, id));
            }
        }
        out
    }

    /// The queued update about `id`, if any.
    #[cfg(test)]
    pub fn get(&self, id: &I) -> Option<&Update<I>> {
        self.by_member.get(id).map(|(u, _)| u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::swim::Status;

    fn alive(id: u32, incarnation: u64) -> Update<u32> {
        Update::alive(id, incarnation)
    }

    #[test]
    fn urgent_news_is_sent_twice_the_budget_of_plain_news() {
        let mut q = Queue::new(16);
        q.push(alive(1, 0), false);
        q.push(
            Update {
                status: Status::Dead,
                ..alive(2, 0)
            },
            true,
        );
        let mut sent = std::collections::HashMap::new();
        for _ in 0..100 {
            for u in q.take(16, 3) {
                *sent.entry(u.id).or_insert(0) += 1;
            }
        }
        assert_eq!(sent.get(&1), Some(&3));
        assert_eq!(sent.get(&2), Some(&(3 * URGENT_MULT)));
        assert!(q.is_empty());
    }

    #[test]
    fn least_sent_first_then_newest() {
        let mut q = Queue::new(16);
        q.push(alive(1, 0), false);
        q.push(alive(2, 0), false);
        // Newest first among the never-sent.
        assert_eq!(q.take(1, 10)[0].id, 2);
        // 1 has been sent less than 2 now.
        assert_eq!(q.take(1, 10)[0].id, 1);
        let both: Vec<u32> = q.take(5, 10).iter().map(|u| u.id).collect();
        assert_eq!(both.len(), 2);
    }

    #[test]
    fn an_update_leaves_after_limit_sends() {
        let mut q = Queue::new(16);
        q.push(alive(1, 0), false);
        for _ in 0..3 {
            assert_eq!(q.take(4, 3).len(), 1);
        }
        assert!(q.is_empty());
        assert!(q.take(4, 3).is_empty());
    }

    #[test]
    fn a_newer_update_replaces_the_older_and_starts_over() {
        let mut q = Queue::new(16);
        q.push(alive(1, 0), false);
        q.take(1, 3);
        q.take(1, 3);
        q.push(alive(1, 7), false);
        assert_eq!(q.len(), 1);
        assert_eq!(q.get(&1).unwrap().incarnation, 7);
        // Counted from zero again: three more sends.
        for _ in 0..3 {
            assert_eq!(q.take(1, 3).len(), 1);
        }
        assert!(q.is_empty());
    }

    #[test]
    fn urgent_news_goes_first_and_is_dropped_last() {
        let mut q = Queue::new(3);
        let suspect = Update {
            status: super::super::Status::Suspect,
            from: 9,
            ..alive(1, 0)
        };
        q.push(suspect, true);
        q.push(alive(2, 0), false);
        // The suspicion goes first although the alive news is newer.
        assert_eq!(q.take(1, 100)[0].id, 1);
        q.take(1, 100);
        q.take(1, 100); // the suspicion has now been sent most
        q.push(alive(3, 0), false);
        q.push(alive(4, 0), false); // full: an alive entry goes, not the suspicion
        assert!(q.get(&1).is_some());
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn the_bound_holds_and_drops_the_most_sent() {
        let mut q = Queue::new(3);
        q.push(alive(1, 0), false);
        q.take(1, 100); // 1 sent once
        q.push(alive(2, 0), false);
        q.push(alive(3, 0), false);
        q.push(alive(4, 0), false); // full: 1 (most sent) goes
        assert_eq!(q.len(), 3);
        assert!(q.get(&1).is_none());
        for id in 5..1000 {
            q.push(alive(id, 0), false);
            assert!(q.len() <= 3);
        }
    }
}
