//! The signatures this peer holds: its own, and the latest checked one of
//! every member, to pass on with their news.
//!
//! A member's "alive" travels many hops and reaches each peer several
//! times (each spreader sends it a few times, and every sync repeats it),
//! so a signature is checked once: a copy equal to the one held is taken
//! without checking again. Only a signature for a newer incarnation (or a
//! different one for the same) costs a check, so a peer's checks follow
//! the mesh's changes, not its traffic.

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::identity::Keypair;

use super::wire::{self, SIG_LEN, Vouch};
use crate::mesh::swim::{Status, Update};

/// Signatures held, at most (the member table's bound, plus this peer).
pub const MAX_HELD: usize = super::wire::MAX_SYNC_MEMBERS + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Held {
    incarnation: u64,
    status: Status,
    sig: [u8; SIG_LEN],
}

/// This peer's signing key and the signatures it vouches with.
pub struct Signatures {
    key: Keypair,
    me: PeerId,
    held: HashMap<PeerId, Held>,
    /// Signatures held, at most ([`MAX_HELD`] in the peer).
    max: usize,
    /// Signatures checked (the expensive part), for tests and metrics.
    checks: u64,
    /// Signatures refused.
    refused: u64,
}

impl Signatures {
    /// A store for the peer with identity `key`.
    pub fn new(key: Keypair) -> Self {
        Self::bounded(key, MAX_HELD)
    }

    /// A store that holds at most `max` signatures.
    pub fn bounded(key: Keypair, max: usize) -> Self {
        let me = key.public().to_peer_id();
        Signatures {
            key,
            me,
            held: HashMap::new(),
            max,
            checks: 0,
            refused: 0,
        }
    }

    /// Signs this peer's own record at `incarnation` (alive, or left when
    /// `leaving`) if it is not signed yet.
    pub fn sign_own(&mut self, incarnation: u64, leaving: bool) {
        let status = if leaving { Status::Left } else { Status::Alive };
        if self
            .held
            .get(&self.me)
            .is_some_and(|h| h.incarnation == incarnation && h.status == status)
        {
            return;
        }
        if let Some(sig) = wire::sign(&self.key, &self.me, incarnation, status) {
            self.held.insert(
                self.me,
                Held {
                    incarnation,
                    status,
                    sig,
                },
            );
        }
    }

    /// Keeps the signatures of `keep` (and this peer's own) only: called
    /// with the member table now and then, so members forgotten there are
    /// forgotten here.
    pub fn retain(&mut self, keep: impl Fn(&PeerId) -> bool) {
        let me = self.me;
        self.held.retain(|id, _| *id == me || keep(id));
    }

    /// Signatures held.
    #[allow(clippy::len_without_is_empty)] // never empty: this peer's own is held
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Signatures checked so far, and refused so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.checks, self.refused)
    }
}

impl Vouch for Signatures {
    fn signature(&self, u: &Update<PeerId>) -> Option<[u8; SIG_LEN]> {
        let h = self.held.get(&u.id)?;
        (h.incarnation == u.incarnation && h.status == u.status).then_some(h.sig)
    }

    fn check(&mut self, u: &Update<PeerId>, sig: &[u8; SIG_LEN]) -> bool {
        if u.id == self.me {
            // News about this peer is for the state machine to refute or
            // ignore; only this peer's own key could have signed it, and
            // its own record needs no check.
            return self.signature(u).is_some_and(|s| &s == sig) || wire::verify(u, sig);
        }
        let held = self.held.get(&u.id).copied();
        if let Some(h) = held {
            if u.incarnation < h.incarnation {
                // Older than what is held: the state machine would ignore
                // it anyway; not worth a check.
                return false;
            }
            if h.incarnation == u.incarnation && h.status == u.status && &h.sig == sig {
                return true;
            }
        } else if self.held.len() >= self.max {
            // Full: the member table is too (it has the same bound).
            return false;
        }
        self.checks += 1;
        if !wire::verify(u, sig) {
            self.refused += 1;
            return false;
        }
        // A newer record, or a left at the same incarnation, replaces the
        // one held.
        let newer = held.is_none_or(|h| {
            u.incarnation > h.incarnation || (u.status == Status::Left && h.status != Status::Left)
        });
        if newer {
            self.held.insert(
                u.id,
                Held {
                    incarnation: u.incarnation,
                    status: u.status,
                    sig: *sig,
                },
            );
        }
        true
    }
}
