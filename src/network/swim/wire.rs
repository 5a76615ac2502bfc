//! SWIM messages on the wire, and the signatures that make an "alive"
//! impossible to forge.
//!
//! # Why signatures
//! The transport authenticates the *sender* of a message, but a SWIM
//! message mostly carries news about *others*. Unsigned, a rogue member
//! could announce thousands of invented members (each one probed, gossiped
//! and listed by every peer) or keep a dead peer alive forever. So the
//! news that only its subject may give, "I am alive at incarnation i" and
//! "I am leaving", carries the subject's signature (its libp2p identity
//! key, the key its `PeerId` names), and every receiver checks it before
//! the news counts ([`Vouch::check`]). Suspicions and deaths cannot be
//! signed by their subject; they stay claims that the subject refutes with
//! a higher, signed incarnation, so a rogue can make a live peer refute,
//! not make it dead.
//!
//! # Frame
//! `u32` big-endian length of the rest (at most [`MAX_FRAME`]), then a kind
//! byte and the kind's fields:
//! - `1` ping: seq `u32`, known `u32`, updates;
//! - `2` ack: seq `u32`, known `u32`, updates;
//! - `3` ping request: seq `u32`, target id, updates;
//! - `4` nack: seq `u32`;
//! - `5` gossip: updates;
//! - `6` sync: reply `u8` (0 or 1), updates (the whole member list).
//!
//! An id is a length `u8` (1 to 64) and the `PeerId`'s bytes. Updates are a
//! count `u16` (at most [`MAX_UPDATES_IN_MESSAGE`], or [`MAX_SYNC_MEMBERS`]
//! in a sync) and per update: id, incarnation `u64`, status `u8` (0 alive,
//! 1 suspect, 2 dead, 3 left), then for alive and left a 64-byte Ed25519
//! signature by the subject of [`signed_bytes`], for suspect and dead the
//! id of the member that raised it.
//!
//! Anything malformed (a short read, a bad kind or status, a count over
//! its bound, bytes left over) refuses the whole message; an update whose
//! signature does not check is dropped and the rest of the message counts.

use libp2p::PeerId;
use libp2p::identity::Keypair;

use crate::mesh::swim::{MAX_UPDATES_IN_MESSAGE, Msg, Status, Update};

/// Bytes of one frame, at most (a sync of [`MAX_SYNC_MEMBERS`] members
/// with signatures is ~470 KB).
pub const MAX_FRAME: usize = 1 << 20;
/// Members one sync carries, at most; the member table holds no more.
pub const MAX_SYNC_MEMBERS: usize = 4096;
/// Bytes of an Ed25519 signature (the same as a record's).
pub use crate::mesh::record::SIG_LEN;
/// Longest `PeerId` accepted (an identity multihash of an Ed25519 key is
/// 38 bytes; sha256 ones 34).
const MAX_ID_LEN: usize = 64;
/// Domain separation: a SWIM signature cannot be replayed as anything else.
const DOMAIN: &[u8] = b"disruptor/swim/alive/1";

/// A malformed message (the whole message is refused).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// It ended before a field it announced.
    #[error("message ends early")]
    Short,
    /// An unknown message kind or status byte, or a bad flag.
    #[error("unknown {0} {1}")]
    Unknown(&'static str, u8),
    /// A count or length over its bound.
    #[error("{0} over its bound ({1})")]
    TooMany(&'static str, usize),
    /// An id that is not a `PeerId`.
    #[error("bad peer id")]
    BadId,
    /// Bytes after the last field.
    #[error("{0} bytes after the message")]
    Trailing(usize),
}

/// Signs and checks the news only its subject may give (see the module
/// docs). The peer's implementation is [`super::vouch::Signatures`].
pub trait Vouch {
    /// The signature to send with `u` (alive or left); `None` leaves the
    /// update out of the message (this peer cannot vouch for it).
    fn signature(&self, u: &Update<PeerId>) -> Option<[u8; SIG_LEN]>;
    /// Whether `sig` is `u.id`'s signature of `u`.
    fn check(&mut self, u: &Update<PeerId>, sig: &[u8; SIG_LEN]) -> bool;
}

/// What a subject signs: the domain, the status, the incarnation and its
/// own id.
pub fn signed_bytes(id: &PeerId, incarnation: u64, status: Status) -> Vec<u8> {
    let id = id.to_bytes();
    let mut out = Vec::with_capacity(DOMAIN.len() + 1 + 8 + id.len());
    out.extend_from_slice(DOMAIN);
    out.push(status_byte(status));
    out.extend_from_slice(&incarnation.to_be_bytes());
    out.extend_from_slice(&id);
    out
}

/// Signs this peer's own alive or left record.
pub fn sign(key: &Keypair, id: &PeerId, incarnation: u64, status: Status) -> Option<[u8; SIG_LEN]> {
    let sig = key.sign(&signed_bytes(id, incarnation, status)).ok()?;
    sig.try_into().ok()
}

/// Whether `sig` is `u.id`'s own signature of `u`. Only ids that contain
/// their public key (Ed25519, as every disruptor peer's) can be checked;
/// any other is refused.
pub fn verify(u: &Update<PeerId>, sig: &[u8; SIG_LEN]) -> bool {
    let Some(key) = crate::mesh::record::public_key(&u.id) else {
        return false;
    };
    key.verify(&signed_bytes(&u.id, u.incarnation, u.status), sig)
}

fn status_byte(s: Status) -> u8 {
    match s {
        Status::Alive => 0,
        Status::Suspect => 1,
        Status::Dead => 2,
        Status::Left => 3,
    }
}

fn signed_by_subject(s: Status) -> bool {
    matches!(s, Status::Alive | Status::Left)
}

/// Encodes `msg` as one frame (length prefix included). Alive and left
/// updates go with the signature `vouch` gives, or are left out.
pub fn encode(msg: &Msg<PeerId>, vouch: &dyn Vouch) -> Vec<u8> {
    let mut b = vec![0u8; 4];
    match msg {
        Msg::Ping {
            seq,
            known,
            updates,
        }
        | Msg::Ack {
            seq,
            known,
            updates,
        } => {
            b.push(if matches!(msg, Msg::Ping { .. }) {
                1
            } else {
                2
            });
            b.extend_from_slice(&seq.to_be_bytes());
            b.extend_from_slice(&known.to_be_bytes());
            put_updates(&mut b, updates, MAX_UPDATES_IN_MESSAGE, vouch);
        }
        Msg::PingReq {
            seq,
            target,
            updates,
        } => {
            b.push(3);
            b.extend_from_slice(&seq.to_be_bytes());
            put_id(&mut b, target);
            put_updates(&mut b, updates, MAX_UPDATES_IN_MESSAGE, vouch);
        }
        Msg::Nack { seq } => {
            b.push(4);
            b.extend_from_slice(&seq.to_be_bytes());
        }
        Msg::Gossip { updates } => {
            b.push(5);
            put_updates(&mut b, updates, MAX_UPDATES_IN_MESSAGE, vouch);
        }
        Msg::Sync { reply, members } => {
            b.push(6);
            b.push(u8::from(*reply));
            put_updates(&mut b, members, MAX_SYNC_MEMBERS, vouch);
        }
    }
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    b
}

fn put_id(b: &mut Vec<u8>, id: &PeerId) {
    let bytes = id.to_bytes();
    b.push(bytes.len() as u8);
    b.extend_from_slice(&bytes);
}

fn put_updates(b: &mut Vec<u8>, updates: &[Update<PeerId>], max: usize, vouch: &dyn Vouch) {
    let at = b.len();
    b.extend_from_slice(&[0, 0]);
    let mut n: u16 = 0;
    for u in updates {
        if usize::from(n) >= max {
            break;
        }
        let sig = if signed_by_subject(u.status) {
            match vouch.signature(u) {
                Some(s) => Some(s),
                None => continue,
            }
        } else {
            None
        };
        put_id(b, &u.id);
        b.extend_from_slice(&u.incarnation.to_be_bytes());
        b.push(status_byte(u.status));
        match sig {
            Some(s) => b.extend_from_slice(&s),
            None => put_id(b, &u.from),
        }
        n += 1;
    }
    b[at..at + 2].copy_from_slice(&n.to_be_bytes());
}

/// Decodes one frame's body (after the length prefix). Alive and left
/// updates whose signature `vouch` does not accept are dropped.
pub fn decode(body: &[u8], vouch: &mut dyn Vouch) -> Result<Msg<PeerId>, WireError> {
    let mut r = Reader { b: body };
    let kind = r.u8()?;
    let msg = match kind {
        1 | 2 => {
            let seq = r.u32()?;
            let known = r.u32()?;
            let updates = r.updates(MAX_UPDATES_IN_MESSAGE, vouch)?;
            if kind == 1 {
                Msg::Ping {
                    seq,
                    known,
                    updates,
                }
            } else {
                Msg::Ack {
                    seq,
                    known,
                    updates,
                }
            }
        }
        3 => Msg::PingReq {
            seq: r.u32()?,
            target: r.id()?,
            updates: r.updates(MAX_UPDATES_IN_MESSAGE, vouch)?,
        },
        4 => Msg::Nack { seq: r.u32()? },
        5 => Msg::Gossip {
            updates: r.updates(MAX_UPDATES_IN_MESSAGE, vouch)?,
        },
        6 => {
            let reply = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(WireError::Unknown("reply flag", other)),
            };
            Msg::Sync {
                reply,
                members: r.updates(MAX_SYNC_MEMBERS, vouch)?,
            }
        }
        other => return Err(WireError::Unknown("message kind", other)),
    };
    if !r.b.is_empty() {
        return Err(WireError::Trailing(r.b.len()));
    }
    Ok(msg)
}

struct Reader<'a> {
    b: &'a [u8],
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], WireError> {
        if self.b.len() < n {
            return Err(WireError::Short);
        }
        let (head, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(self.take(2)?.try_into().expect("2")))
    }

    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn id(&mut self) -> Result<PeerId, WireError> {
        let len = usize::from(self.u8()?);
        if len == 0 || len > MAX_ID_LEN {
            return Err(WireError::TooMany("id length", MAX_ID_LEN));
        }
        PeerId::from_bytes(self.take(len)?).map_err(|_| WireError::BadId)
    }

    fn updates(
        &mut self,
        max: usize,
        vouch: &mut dyn Vouch,
    ) -> Result<Vec<Update<PeerId>>, WireError> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(WireError::TooMany("updates", max));
        }
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let id = self.id()?;
            let incarnation = self.u64()?;
            let status = match self.u8()? {
                0 => Status::Alive,
                1 => Status::Suspect,
                2 => Status::Dead,
                3 => Status::Left,
                other => return Err(WireError::Unknown("status", other)),
            };
            if signed_by_subject(status) {
                let sig: [u8; SIG_LEN] = self.take(SIG_LEN)?.try_into().expect("64");
                let u = Update {
                    id,
                    incarnation,
                    status,
                    from: id,
                };
                if vouch.check(&u, &sig) {
                    out.push(u);
                }
            } else {
                let from = self.id()?;
                out.push(Update {
                    id,
                    incarnation,
                    status,
                    from,
                });
            }
        }
        Ok(out)
    }
}
