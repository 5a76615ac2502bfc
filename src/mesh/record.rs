//! A peer's announcement, signed by the peer itself: a *record* that any
//! peer can pass on and every receiver can check, however it came.
//!
//! Gossipsub signs what it carries, but only for the hop-by-hop gossip
//! itself: once an announcement is out of gossipsub (held by a peer and
//! handed to a newcomer in a member list) nothing vouched for it any more.
//! So an announcement carries its author's own signature (its libp2p
//! identity key, the key its `PeerId` names): a newcomer fetches the
//! records of the mesh from whichever peer it reached first, checks each
//! one, and nobody (the peer that handed them over included) can forge or
//! alter one. Replaying an old record gains nothing: records are ordered
//! by the author's `(incarnation, seq)` and an older one is ignored.
//!
//! Bytes: the 64-byte Ed25519 signature of `DOMAIN ‖ json`, then the
//! announcement's JSON.

use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey};

/// Bytes of the signature in front of a record.
pub const SIG_LEN: usize = 64;
/// Domain separation: a record's signature is good for nothing else.
const DOMAIN: &[u8] = b"disruptor/announce/1";

/// Why a record was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Shorter than a signature.
    #[error("a record of {0} bytes is too short to be signed")]
    Short(usize),
    /// The signature is not the named peer's.
    #[error("the record's signature is not its author's")]
    BadSignature,
}

/// Signs `json` as `key`'s record.
pub fn seal(key: &Keypair, json: &[u8]) -> Option<Vec<u8>> {
    let sig = key.sign(&signed(json)).ok()?;
    if sig.len() != SIG_LEN {
        return None;
    }
    let mut out = Vec::with_capacity(SIG_LEN + json.len());
    out.extend_from_slice(&sig);
    out.extend_from_slice(json);
    Some(out)
}

/// The signature and the JSON of a record, unchecked.
pub fn split(data: &[u8]) -> Result<(&[u8], &[u8]), RecordError> {
    if data.len() < SIG_LEN {
        return Err(RecordError::Short(data.len()));
    }
    Ok(data.split_at(SIG_LEN))
}

/// Whether `sig` is `author`'s signature of `json`.
pub fn check(author: &PeerId, sig: &[u8], json: &[u8]) -> Result<(), RecordError> {
    let key = public_key(author).ok_or(RecordError::BadSignature)?;
    if key.verify(&signed(json), sig) {
        Ok(())
    } else {
        Err(RecordError::BadSignature)
    }
}

fn signed(json: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(DOMAIN.len() + json.len());
    b.extend_from_slice(DOMAIN);
    b.extend_from_slice(json);
    b
}

/// The public key a `PeerId` contains, if it contains one (Ed25519 keys,
/// every disruptor peer's, are inlined in their ids; hashed ids cannot be
/// checked and are refused).
pub fn public_key(id: &PeerId) -> Option<PublicKey> {
    let mh: &libp2p::multihash::Multihash<64> = id.as_ref();
    // Code 0: the identity "hash", i.e. the protobuf-encoded key itself.
    if mh.code() != 0 {
        return None;
    }
    PublicKey::try_decode_protobuf(mh.digest()).ok()
}

/// Lowercase hex of `bytes` (records travel in JSON member lists).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The bytes of lowercase or uppercase hex; `None` if it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.as_bytes();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_checks_only_with_its_authors_key_and_unaltered() {
        let key = Keypair::generate_ed25519();
        let author = key.public().to_peer_id();
        let other = Keypair::generate_ed25519().public().to_peer_id();
        let json = br#"{"id":"x","seq":1}"#;
        let rec = seal(&key, json).unwrap();
        let (sig, body) = split(&rec).unwrap();
        assert_eq!(body, json);
        assert_eq!(check(&author, sig, body), Ok(()));
        assert_eq!(check(&other, sig, body), Err(RecordError::BadSignature));
        let mut altered = body.to_vec();
        altered[10] ^= 1;
        assert_eq!(
            check(&author, sig, &altered),
            Err(RecordError::BadSignature)
        );
        assert_eq!(split(&rec[..63]), Err(RecordError::Short(63)));
        // A swim signature of the same bytes is not a record's (domains).
        let swim =
            crate::network::swim::wire::sign(&key, &author, 1, crate::mesh::swim::Status::Alive)
                .unwrap();
        assert!(check(&author, &swim, body).is_err());
    }

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let bytes: Vec<u8> = (0..=255).collect();
        assert_eq!(from_hex(&to_hex(&bytes)).unwrap(), bytes);
        assert_eq!(from_hex("0aFf"), Some(vec![0x0a, 0xff]));
        assert_eq!(from_hex("abc"), None);
        assert_eq!(from_hex("zz"), None);
        assert_eq!(from_hex(""), Some(vec![]));
    }
}
