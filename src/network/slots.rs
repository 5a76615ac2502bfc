//! Per-peer places: a bound on how many of something one peer may hold
//! open here at once (inbound SWIM links, inbound job streams), so that a
//! peer cannot take all of a shared budget.
//!
//! A [`Slot`] is taken for each thing opened and given back when dropped
//! (its task ends, however it ends). The map holds only peers with a slot
//! taken, so its size is bounded by the slots taken in all, which the
//! caller bounds (a semaphore, a cap on links). Without a bound per peer
//! (`usize::MAX`) it counts what is open: [`super::usage::Usage`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

/// At most `max` slots per peer; cheap to clone (clones share the count).
#[derive(Clone)]
pub struct PerPeerSlots {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    max: usize,
}

/// One of a peer's places, held while what it counts is open.
pub struct Slot {
    slots: PerPeerSlots,
    peer: PeerId,
}

impl PerPeerSlots {
    pub fn new(max: usize) -> Self {
        PerPeerSlots {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for `peer`, or `None` if it holds `max` already.
    pub fn take(&self, peer: PeerId) -> Option<Slot> {
        let mut open = self.open.lock().expect("slots lock");
        let n = open.entry(peer).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Slot {
            slots: self.clone(),
            peer,
        })
    }

    /// Slots `peer` holds now.
    pub fn open(&self, peer: &PeerId) -> usize {
        let open = self.open.lock().expect("slots lock");
        open.get(peer).copied().unwrap_or(0)
    }
}

impl PerPeerSlots {
    /// Peers with a slot taken (the map's size).
    #[cfg(test)]
    pub fn peers(&self) -> usize {
        self.open.lock().expect("slots lock").len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().expect("slots lock");
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_holds_at_most_its_slots_and_gets_them_back() {
        let slots = PerPeerSlots::new(2);
        let (a, b) = (PeerId::random(), PeerId::random());
        let held: Vec<Slot> = (0..2).map(|_| slots.take(a).expect("a slot")).collect();
        assert!(slots.take(a).is_none(), "one slot too many for a");
        assert!(slots.take(b).is_some(), "another peer is not held up by a");
        assert_eq!(slots.open(&b), 0, "b's slot was dropped");
        drop(held);
        assert_eq!(slots.open(&a), 0);
        assert_eq!(slots.peers(), 0, "no entry outlives its slots");
        assert!(slots.take(a).is_some());
    }
}
