//! Which connections are in use: job streams open to or from a peer, and
//! neighbour streams other peers hold to this one. The event loop closes
//! connections that nothing uses (see `EventLoop::trim_connections`), so
//! a peer holds its active view, its work in progress and little else.
//!
//! Counts are kept per remote peer, raised and lowered by [`Held`] guards
//! that the stream's owner keeps for as long as the stream is open.

use libp2p::PeerId;

use super::slots::{PerPeerSlots, Slot};

/// Streams open per remote peer, by purpose.
#[derive(Clone)]
pub struct Usage {
    open: PerPeerSlots,
}

impl Default for Usage {
    fn default() -> Self {
        Usage {
            open: PerPeerSlots::new(usize::MAX),
        }
    }
}

/// A stream counted in [`Usage`] while this guard lives.
pub type Held = Slot;

impl Usage {
    /// Counts one open stream with `peer` until the guard is dropped.
    pub fn hold(&self, peer: PeerId) -> Held {
        self.open.take(peer).expect("usage has no bound")
    }

    /// Whether any stream with `peer` is open.
    pub fn in_use(&self, peer: &PeerId) -> bool {
        self.open.open(peer) > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_in_use_while_any_of_its_guards_lives() {
        let u = Usage::default();
        let p = PeerId::random();
        assert!(!u.in_use(&p));
        let a = u.hold(p);
        let b = u.hold(p);
        drop(a);
        assert!(u.in_use(&p));
        drop(b);
        assert!(!u.in_use(&p));
        assert_eq!(u.open.peers(), 0, "nothing left behind");
    }
}
