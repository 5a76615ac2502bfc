//! The codec's round trips and bounds, and the signature rules: an alive
//! nobody signed, or somebody else signed, does not count.

use libp2p::PeerId;
use libp2p::identity::Keypair;
use proptest::prelude::*;

use super::vouch::{MAX_HELD, Signatures};
use super::wire::{self, MAX_SYNC_MEMBERS, SIG_LEN, Vouch, WireError};
use crate::mesh::swim::{MAX_UPDATES_IN_MESSAGE, Msg, Status, Update};

/// A new peer identity.
fn member() -> (Keypair, PeerId) {
    let key = Keypair::generate_ed25519();
    let id = key.public().to_peer_id();
    (key, id)
}

/// Encodes with `from`'s store, decodes with `to`'s; the frame's length
/// prefix is checked and stripped.
fn round_trip(
    msg: &Msg<PeerId>,
    from: &Signatures,
    to: &mut Signatures,
) -> Result<Msg<PeerId>, WireError> {
    let frame = wire::encode(msg, from);
    let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4);
    wire::decode(&frame[4..], to)
}

/// A store that has checked (and so holds) `id`'s alive at `incarnation`.
fn holding(store: &mut Signatures, key: &Keypair, incarnation: u64) {
    let id = key.public().to_peer_id();
    let sig = wire::sign(key, &id, incarnation, Status::Alive).unwrap();
    assert!(store.check(&Update::alive(id, incarnation), &sig));
}

#[test]
fn every_kind_of_message_round_trips_with_its_signatures() {
    let (ka, a) = member();
    let (kb, b) = member();
    let (_, c) = member();
    let mut sa = Signatures::new(ka.clone());
    sa.sign_own(1, false);
    holding(&mut sa, &kb, 7);
    let mut sc = Signatures::new(Keypair::generate_ed25519());
    let suspect = Update {
        id: c,
        incarnation: 3,
        status: Status::Suspect,
        from: b,
    };
    let dead = Update {
        status: Status::Dead,
        ..suspect
    };
    let news = vec![Update::alive(a, 1), Update::alive(b, 7), suspect, dead];
    let msgs = vec![
        Msg::Ping {
            seq: 9,
            known: 40,
            updates: news.clone(),
        },
        Msg::Ack {
            seq: u32::MAX,
            known: 0,
            updates: news.clone(),
        },
        Msg::PingReq {
            seq: 1,
            target: c,
            updates: news.clone(),
        },
        Msg::Nack { seq: 77 },
        Msg::Gossip {
            updates: news.clone(),
        },
        Msg::Sync {
            reply: true,
            members: news.clone(),
        },
        Msg::Sync {
            reply: false,
            members: vec![],
        },
    ];
    for m in msgs {
        assert_eq!(round_trip(&m, &sa, &mut sc), Ok(m.clone()), "{m:?}");
    }
    // The receiver checked a's and b's signatures once each, and now holds
    // them to pass on: the copies that came after cost no check.
    assert_eq!(sc.counts(), (2, 0));
    assert!(sc.signature(&Update::alive(b, 7)).is_some());
}

#[test]
fn an_alive_without_a_signature_to_send_is_left_out() {
    let (ka, a) = member();
    let (_, stranger) = member();
    let mut sa = Signatures::new(ka);
    sa.sign_own(1, false);
    let mut to = Signatures::new(Keypair::generate_ed25519());
    let m = Msg::Gossip {
        updates: vec![Update::alive(stranger, 4), Update::alive(a, 1)],
    };
    // a has no signature of the stranger's: it cannot vouch for it. Nor
    // of its own record at another incarnation.
    let got = round_trip(&m, &sa, &mut to).unwrap();
    assert_eq!(
        got,
        Msg::Gossip {
            updates: vec![Update::alive(a, 1)]
        }
    );
    let m = Msg::Gossip {
        updates: vec![Update::alive(a, 2)],
    };
    assert_eq!(
        round_trip(&m, &sa, &mut to).unwrap(),
        Msg::Gossip { updates: vec![] }
    );
}

/// A rogue's store: it "holds" whatever signature it was given for
/// whichever update.
struct Liar(Vec<u8>);

impl Vouch for Liar {
    fn signature(&self, _: &Update<PeerId>) -> Option<[u8; SIG_LEN]> {
        self.0.clone().try_into().ok()
    }
    fn check(&mut self, _: &Update<PeerId>, _: &[u8; SIG_LEN]) -> bool {
        true
    }
}

#[test]
fn forged_and_replayed_alives_are_dropped_and_the_rest_counts() {
    let (kv, victim) = member();
    let (krogue, _) = member();
    let (_, other) = member();
    let mut to = Signatures::new(Keypair::generate_ed25519());
    let suspect = Update {
        id: other,
        incarnation: 1,
        status: Status::Suspect,
        from: victim,
    };
    // Signed by somebody else's key: refused.
    let by_rogue = wire::sign(&krogue, &victim, 5, Status::Alive).unwrap();
    let m = Msg::Gossip {
        updates: vec![Update::alive(victim, 5), suspect],
    };
    let frame = wire::encode(&m, &Liar(by_rogue.to_vec()));
    let got = wire::decode(&frame[4..], &mut to).unwrap();
    assert_eq!(
        got,
        Msg::Gossip {
            updates: vec![suspect]
        }
    );
    // The victim's real signature of incarnation 5, replayed for 6, or as
    // a goodbye: refused.
    let real = wire::sign(&kv, &victim, 5, Status::Alive).unwrap();
    for forged in [
        Update::alive(victim, 6),
        Update {
            status: Status::Left,
            ..Update::alive(victim, 5)
        },
    ] {
        let frame = wire::encode(
            &Msg::Gossip {
                updates: vec![forged],
            },
            &Liar(real.to_vec()),
        );
        let got = wire::decode(&frame[4..], &mut to).unwrap();
        assert_eq!(got, Msg::Gossip { updates: vec![] }, "{forged:?}");
    }
    assert_eq!(to.counts(), (3, 3));
    // Nothing refused is held or passed on.
    assert_eq!(to.len(), 0);
    // The real one counts.
    let frame = wire::encode(
        &Msg::Gossip {
            updates: vec![Update::alive(victim, 5)],
        },
        &Liar(real.to_vec()),
    );
    assert_eq!(
        wire::decode(&frame[4..], &mut to).unwrap().clone(),
        Msg::Gossip {
            updates: vec![Update::alive(victim, 5)]
        }
    );
}

#[test]
fn a_held_signature_is_not_checked_again_but_a_newer_one_is() {
    let (k, id) = member();
    let mut s = Signatures::new(Keypair::generate_ed25519());
    let sig1 = wire::sign(&k, &id, 1, Status::Alive).unwrap();
    for _ in 0..5 {
        assert!(s.check(&Update::alive(id, 1), &sig1));
    }
    assert_eq!(s.counts(), (1, 0));
    // Older than held: refused without a check.
    let sig0 = wire::sign(&k, &id, 0, Status::Alive).unwrap();
    assert!(!s.check(&Update::alive(id, 0), &sig0));
    assert_eq!(s.counts(), (1, 0));
    // Newer: checked, and replaces the held one.
    let sig2 = wire::sign(&k, &id, 2, Status::Alive).unwrap();
    assert!(s.check(&Update::alive(id, 2), &sig2));
    assert_eq!(s.counts(), (2, 0));
    assert_eq!(s.signature(&Update::alive(id, 2)), Some(sig2));
    assert_eq!(s.signature(&Update::alive(id, 1)), None);
    // A goodbye at the same incarnation replaces the alive.
    let left = Update {
        status: Status::Left,
        ..Update::alive(id, 2)
    };
    let sig_left = wire::sign(&k, &id, 2, Status::Left).unwrap();
    assert!(s.check(&left, &sig_left));
    assert_eq!(s.signature(&left), Some(sig_left));
    // Forgotten members' signatures go with them.
    s.retain(|_| false);
    assert_eq!(s.len(), 0);
}

#[test]
fn signatures_held_are_bounded() {
    // The peer's bound, checked here on a small store (each check is an
    // Ed25519 verification).
    assert_eq!(MAX_HELD, MAX_SYNC_MEMBERS + 1);
    const MAX: usize = 20;
    let mut s = Signatures::bounded(Keypair::generate_ed25519(), MAX);
    let keys: Vec<Keypair> = (0..MAX + 1).map(|_| Keypair::generate_ed25519()).collect();
    for (i, k) in keys.iter().enumerate() {
        let id = k.public().to_peer_id();
        let sig = wire::sign(k, &id, 1, Status::Alive).unwrap();
        let took = s.check(&Update::alive(id, 1), &sig);
        assert_eq!(took, i < MAX, "signature {i}");
    }
    assert_eq!(s.len(), MAX);
    // A newer record of a member held still gets in.
    let k = &keys[0];
    let id = k.public().to_peer_id();
    let sig = wire::sign(k, &id, 2, Status::Alive).unwrap();
    assert!(s.check(&Update::alive(id, 2), &sig));
}

#[test]
fn counts_over_their_bounds_refuse_the_message() {
    let (_, a) = member();
    let mut to = Signatures::new(Keypair::generate_ed25519());
    let suspect = Update {
        id: a,
        incarnation: 1,
        status: Status::Suspect,
        from: a,
    };
    // The encoder never sends more than the bound...
    let m = Msg::Gossip {
        updates: vec![suspect; MAX_UPDATES_IN_MESSAGE + 5],
    };
    let frame = wire::encode(&m, &to);
    match wire::decode(&frame[4..], &mut to).unwrap() {
        Msg::Gossip { updates } => assert_eq!(updates.len(), MAX_UPDATES_IN_MESSAGE),
        other => panic!("{other:?}"),
    }
    // ...and the decoder refuses a count over it, before reading on.
    let mut body = vec![5u8];
    body.extend_from_slice(&((MAX_UPDATES_IN_MESSAGE + 1) as u16).to_be_bytes());
    assert_eq!(
        wire::decode(&body, &mut to),
        Err(WireError::TooMany("updates", MAX_UPDATES_IN_MESSAGE))
    );
    let mut body = vec![6u8, 0];
    body.extend_from_slice(&((MAX_SYNC_MEMBERS + 1) as u16).to_be_bytes());
    assert_eq!(
        wire::decode(&body, &mut to),
        Err(WireError::TooMany("updates", MAX_SYNC_MEMBERS))
    );
    // A sync's bound is the member table's.
    let m = Msg::Sync {
        reply: false,
        members: vec![suspect; MAX_SYNC_MEMBERS + 5],
    };
    let frame = wire::encode(&m, &to);
    assert!(frame.len() <= wire::MAX_FRAME);
    match wire::decode(&frame[4..], &mut to).unwrap() {
        Msg::Sync { members, .. } => assert_eq!(members.len(), MAX_SYNC_MEMBERS),
        other => panic!("{other:?}"),
    }
}

#[test]
fn malformed_messages_are_refused() {
    let mut to = Signatures::new(Keypair::generate_ed25519());
    let (_, a) = member();
    let good = wire::encode(
        &Msg::PingReq {
            seq: 1,
            target: a,
            updates: vec![],
        },
        &to,
    );
    let body = &good[4..];
    assert_eq!(wire::decode(&[], &mut to), Err(WireError::Short));
    assert_eq!(
        wire::decode(&[9], &mut to),
        Err(WireError::Unknown("message kind", 9))
    );
    assert_eq!(
        wire::decode(&[6, 2, 0, 0], &mut to),
        Err(WireError::Unknown("reply flag", 2))
    );
    // Every truncation is refused.
    for cut in 0..body.len() {
        assert!(wire::decode(&body[..cut], &mut to).is_err(), "cut at {cut}");
    }
    let mut long = body.to_vec();
    long.push(0);
    assert_eq!(wire::decode(&long, &mut to), Err(WireError::Trailing(1)));
    // An id of length 0 or over 64, or not a peer id.
    let mut bad = vec![3u8, 0, 0, 0, 1, 0];
    assert!(matches!(
        wire::decode(&bad, &mut to),
        Err(WireError::TooMany("id length", _))
    ));
    bad[5] = 65;
    assert!(matches!(
        wire::decode(&bad, &mut to),
        Err(WireError::TooMany("id length", _))
    ));
    let mut garbage = vec![3u8, 0, 0, 0, 1, 4, 0xff, 0xff, 0xff, 0xff];
    garbage.extend_from_slice(&[0, 0]);
    assert_eq!(wire::decode(&garbage, &mut to), Err(WireError::BadId));
    // An unknown status.
    let mut st = vec![5u8, 0, 1];
    let id = a.to_bytes();
    st.push(id.len() as u8);
    st.extend_from_slice(&id);
    st.extend_from_slice(&1u64.to_be_bytes());
    st.push(4);
    assert_eq!(
        wire::decode(&st, &mut to),
        Err(WireError::Unknown("status", 4))
    );
}

proptest! {
    /// No input makes the decoder panic or read past the end.
    #[test]
    fn the_decoder_takes_any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut to = Signatures::new(Keypair::generate_ed25519());
        let _ = wire::decode(&bytes, &mut to);
    }
}
