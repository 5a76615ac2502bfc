//! Which connections are in use: job streams open to or from a peer, and
//! neighbour streams other peers hold to this one. The event loop closes
//! connections that nothing uses (see `EventLoop::trim_connections`), so
//! a peer holds its active view, its work in progress and little else.
//!
//! Counts are kept per remote peer, raised and lowered by [`Held`] guards
//! that the stream's owner keeps for as long as the stream is open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use libp2p::PeerId;

/// Streams open per remote peer, by purpose.
#[derive(Clone, Default)]
pub struct Usage {
    open: Arc<Mutex<HashMap<PeerId, u32>>>,
}

impl Usage {
    /// Counts one open stream with `peer` until the guard is dropped.
    pub fn hold(&self, peer: PeerId) -> Held {
        *self
            .open
            .lock()
            .expect("usage lock")
            .entry(peer)
            .or_insert(0) += 1;
        Held {
            usage: self.clone(),
            peer,
        }
    }

    /// Whether any stream with `peer` is open.
    pub fn in_use(&self, peer: &PeerId) -> bool {
        self.open.lock().expect("usage lock").contains_key(peer)
    }
}

/// One open stream, counted until dropped.
pub struct Held {
    usage: Usage,
    peer: PeerId,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.usage.open.lock().expect("usage lock");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
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
        assert!(u.open.lock().unwrap().is_empty(), "nothing left behind");
    }
}
