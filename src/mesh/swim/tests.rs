//! The SWIM rules one at a time (a few peers driven by hand), then whole
//! meshes in the simulator with a fixed seed.

use std::time::{Duration, Instant};

use super::*;
use crate::mesh::sim::{self, Sim, SimConfig};

fn peer(me: u32, now: Instant) -> Swim<u32> {
    Swim::new(me, 0, Config::default(), now, u64::from(me))
}

fn alive(id: u32, incarnation: u64) -> Update<u32> {
    Update::alive(id, incarnation)
}

fn news(updates: Vec<Update<u32>>) -> Msg<u32> {
    Msg::Gossip { updates }
}

/// Delivers everything `a` and `b` send each other until both are quiet.
fn exchange(a: &mut Swim<u32>, b: &mut Swim<u32>, now: Instant) {
    for _ in 0..10 {
        let from_a: Vec<_> = a.drain_sends().collect();
        let from_b: Vec<_> = b.drain_sends().collect();
        if from_a.is_empty() && from_b.is_empty() {
            return;
        }
        for (to, m) in from_a {
            if to == b.me() {
                b.handle(a.me(), m, now);
            }
        }
        for (to, m) in from_b {
            if to == a.me() {
                a.handle(b.me(), m, now);
            }
        }
    }
}

#[test]
fn a_join_makes_two_peers_see_each_other() {
    let now = Instant::now();
    let (mut a, mut b) = (peer(1, now), peer(2, now));
    b.join(1, now);
    exchange(&mut a, &mut b, now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    assert_eq!(b.status(&1), Some(Status::Alive));
    assert_eq!(a.drain_events().collect::<Vec<_>>(), vec![Event::Up(2)]);
    assert_eq!((a.live_members(), b.live_members()), (1, 1));
}

/// The full states `from` sent `to` (the `members` of each).
fn syncs_to(sends: &[(u32, Msg<u32>)], to: u32) -> Vec<Vec<u32>> {
    sends
        .iter()
        .filter_map(|(t, m)| match m {
            Msg::Sync { members, .. } if *t == to => Some(members.iter().map(|u| u.id).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_peer_still_joining_keeps_its_seed_and_follows_up_a_newcomer_with_the_whole_mesh() {
    // Peer 2 joins through seed 1 (which knows 3..=20); before the seed
    // answers, newcomer 21 joins through 2 (and 2, alone, is told to join
    // through it too: the driver does so for any connection while alone).
    let now = Instant::now();
    let mut two = peer(2, now);
    two.join(1, now);
    two.drain_sends().for_each(drop);
    two.join(21, now);
    two.handle(
        21,
        Msg::Sync {
            reply: true,
            members: vec![alive(21, 1)],
        },
        now,
    );
    // The newcomer is answered with what 2 knows: itself.
    let sends: Vec<_> = two.drain_sends().collect();
    assert!(
        sends.iter().any(|(to, m)| *to == 21
            && matches!(m, Msg::Sync { reply: false, members } if members.len() == 1)),
        "{sends:?}"
    );
    // The seed answers: the newcomer is followed up with the whole mesh.
    let mesh: Vec<Update<u32>> = std::iter::once(1)
        .chain(3..=20)
        .map(|id| alive(id, 1))
        .collect();
    two.handle(
        1,
        Msg::Sync {
            reply: false,
            members: mesh,
        },
        now + Duration::from_millis(300),
    );
    let sends: Vec<_> = two.drain_sends().collect();
    let answers = syncs_to(&sends, 21);
    assert_eq!(answers.len(), 1, "{sends:?}");
    assert_eq!(
        answers[0].len(),
        21,
        "itself, the seed, 3..=20 and 21: {answers:?}"
    );
    // Its join through 1 is over (the newcomer did not replace the seed):
    // no retry to 21, and none to 1 (one was due after a probe interval;
    // the periodic exchange comes later).
    two.tick(now + Duration::from_millis(1500));
    let sends: Vec<_> = two.drain_sends().collect();
    assert!(syncs_to(&sends, 1).is_empty(), "{sends:?}");
    assert!(syncs_to(&sends, 21).is_empty(), "{sends:?}");
}

#[test]
fn follow_ups_wait_for_twice_the_members_are_bounded_and_stop_after_a_while() {
    let now = Instant::now();
    let mut two = peer(2, now);
    let ask = |two: &mut Swim<u32>, from: u32, at: Instant| {
        two.handle(
            from,
            Msg::Sync {
                reply: true,
                members: vec![alive(from, 1)],
            },
            at,
        );
    };
    let learn = |two: &mut Swim<u32>, ids: std::ops::Range<u32>, at: Instant| {
        two.handle(1, news(ids.map(|id| alive(id, 1)).collect()), at);
    };
    // 2 knows 1 and 3..=8 (8 with itself) and answers 100 with 8 members.
    learn(&mut two, 1..2, now);
    learn(&mut two, 3..9, now);
    ask(&mut two, 100, now);
    two.drain_sends().for_each(drop);
    // With 100 and 6 more it knows 15: not yet twice the 8 it told.
    learn(&mut two, 200..206, now);
    assert!(syncs_to(&two.drain_sends().collect::<Vec<_>>(), 100).is_empty());
    learn(&mut two, 206..207, now);
    let sends: Vec<_> = two.drain_sends().collect();
    assert_eq!(
        syncs_to(&sends, 100)
            .iter()
            .map(Vec::len)
            .collect::<Vec<_>>(),
        vec![16]
    );
    // Followed up once per doubling, not on every new member.
    learn(&mut two, 209..212, now);
    assert!(syncs_to(&two.drain_sends().collect::<Vec<_>>(), 100).is_empty());

    // At most MAX_FOLLOW_UPS answers are watched: the oldest goes first.
    let cap = MAX_FOLLOW_UPS as u32;
    learn(&mut two, 300..300 + cap, now);
    for from in 300..300 + cap {
        ask(&mut two, from, now);
    }
    two.drain_sends().for_each(drop);
    let known = two.members().count() as u32 + 1;
    learn(&mut two, 1000..1000 + known, now);
    let sends: Vec<_> = two.drain_sends().collect();
    assert!(
        syncs_to(&sends, 100).is_empty(),
        "100 was pushed out: {sends:?}"
    );
    for from in 300..300 + cap {
        assert_eq!(syncs_to(&sends, from).len(), 1, "{from}: {sends:?}");
    }

    // FOLLOW_UP_INTERVALS probe intervals after its answer, a peer is
    // no longer followed up.
    let later = now + Config::default().probe_interval * FOLLOW_UP_INTERVALS;
    ask(&mut two, 400, later - Duration::from_millis(1));
    ask(&mut two, 401, now + Duration::from_secs(1));
    two.drain_sends().for_each(drop);
    let known = two.members().count() as u32 + 1;
    learn(&mut two, 5000..5000 + known, later + Duration::from_secs(1));
    let sends: Vec<_> = two.drain_sends().collect();
    assert_eq!(syncs_to(&sends, 400).len(), 1, "{sends:?}");
    assert!(syncs_to(&sends, 401).is_empty(), "{sends:?}");
}

#[test]
fn two_peers_joining_through_each_other_answer_each_other_at_once() {
    let now = Instant::now();
    let (mut a, mut b) = (peer(1, now), peer(2, now));
    a.join(2, now);
    b.join(1, now);
    exchange(&mut a, &mut b, now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    assert_eq!(b.status(&1), Some(Status::Alive));
    // Both joins are over: no retries (due after a probe interval).
    a.tick(now + Duration::from_millis(1500));
    b.tick(now + Duration::from_millis(1500));
    assert!(syncs_to(&a.drain_sends().collect::<Vec<_>>(), 2).is_empty());
    assert!(syncs_to(&b.drain_sends().collect::<Vec<_>>(), 1).is_empty());
}

#[test]
fn a_joiner_gossips_its_own_arrival_first() {
    // The seed answers with a mesh of members new to the joiner (news it
    // also queues); the joiner's first gossip carries itself first.
    let now = Instant::now();
    let mut b = peer(2, now);
    b.set_neighbours(Some(vec![1, 3, 4]));
    b.join(1, now);
    b.drain_sends().for_each(drop);
    let members: Vec<Update<u32>> = (1..=101)
        .filter(|id| *id != 2)
        .map(|id| alive(id, 1))
        .collect();
    b.handle(
        1,
        Msg::Sync {
            reply: false,
            members,
        },
        now,
    );
    b.tick(now + Duration::from_millis(250));
    let gossip: Vec<(u32, Msg<u32>)> = b
        .drain_sends()
        .filter(|(_, m)| matches!(m, Msg::Gossip { .. }))
        .collect();
    assert!(!gossip.is_empty(), "it gossips");
    for (to, m) in gossip {
        let Msg::Gossip { updates } = m else {
            unreachable!()
        };
        assert_eq!(updates[0], alive(2, 0), "to {to}: {updates:?}");
    }
}

#[test]
fn incarnations_decide_which_news_wins() {
    let now = Instant::now();
    let mut a = peer(1, now);
    a.handle(9, news(vec![alive(2, 5)]), now);
    let suspect = |inc| Update {
        id: 2,
        incarnation: inc,
        status: Status::Suspect,
        from: 3,
    };
    // An older suspicion is stale.
    a.handle(9, news(vec![suspect(4)]), now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    // One at its incarnation holds.
    a.handle(9, news(vec![suspect(5)]), now);
    assert_eq!(a.status(&2), Some(Status::Suspect));
    // Alive at the same incarnation does not clear it; a higher one does.
    a.handle(9, news(vec![alive(2, 5)]), now);
    assert_eq!(a.status(&2), Some(Status::Suspect));
    a.handle(9, news(vec![alive(2, 6)]), now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    // Dead at its incarnation; then news of its older life changes nothing.
    let dead = Update {
        id: 2,
        incarnation: 6,
        status: Status::Dead,
        from: 3,
    };
    a.handle(9, news(vec![dead]), now);
    assert_eq!(a.status(&2), Some(Status::Dead));
    a.handle(9, news(vec![alive(2, 6), suspect(6)]), now);
    assert_eq!(a.status(&2), Some(Status::Dead));
    assert_eq!(a.live_members(), 0);
    // It comes back at a higher incarnation.
    a.handle(9, news(vec![alive(2, 7)]), now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    let events: Vec<_> = a.drain_events().collect();
    assert_eq!(
        events,
        vec![
            Event::Up(2),
            Event::Suspect(2),
            Event::Down { id: 2, left: false },
            Event::Up(2)
        ]
    );
}

#[test]
fn news_about_unknown_members_other_than_alive_is_ignored() {
    let now = Instant::now();
    let mut a = peer(1, now);
    for status in [Status::Suspect, Status::Dead, Status::Left] {
        a.handle(
            9,
            news(vec![Update {
                id: 7,
                incarnation: 0,
                status,
                from: 9,
            }]),
            now,
        );
    }
    assert_eq!(a.status(&7), None);
}

#[test]
fn a_suspected_peer_refutes_with_a_higher_incarnation() {
    let now = Instant::now();
    let (mut a, mut b) = (peer(1, now), peer(2, now));
    b.join(1, now);
    exchange(&mut a, &mut b, now);
    a.drain_events().for_each(drop);
    // Someone tells b that it is suspected.
    b.handle(
        1,
        news(vec![Update {
            id: 2,
            incarnation: 0,
            status: Status::Suspect,
            from: 1,
        }]),
        now,
    );
    assert_eq!(b.incarnation(), 1);
    assert_eq!(b.counters().refutations, 1);
    assert_eq!(b.health(), 1, "being suspected counts against b's health");
    // a held b suspect; b's refutation reaches it on the next message.
    a.handle(
        3,
        news(vec![Update {
            id: 2,
            incarnation: 0,
            status: Status::Suspect,
            from: 3,
        }]),
        now,
    );
    assert_eq!(a.status(&2), Some(Status::Suspect));
    b.tick(now + Duration::from_secs(1));
    exchange(&mut a, &mut b, now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    // Old news about itself does not make it bump again.
    b.handle(
        1,
        news(vec![Update {
            id: 2,
            incarnation: 0,
            status: Status::Dead,
            from: 1,
        }]),
        now,
    );
    assert_eq!(b.incarnation(), 1);
}

#[test]
fn a_silent_member_is_suspected_then_dead_and_a_probe_tells_the_suspect() {
    let t0 = Instant::now();
    let mut a = peer(1, t0);
    a.handle(2, news(vec![alive(2, 0)]), t0);
    a.drain_events().for_each(drop);
    // Run a's clock without ever answering it.
    let mut now = t0;
    let mut pinged_as_buddy = false;
    for _ in 0..200_000 {
        now = a.next_wake().max(now + Duration::from_millis(1));
        a.tick(now);
        for (to, m) in a.drain_sends() {
            if let (2, Msg::Ping { updates, .. }) = (to, &m)
                && updates.first().map(|u| (u.id, u.status)) == Some((2, Status::Suspect))
            {
                pinged_as_buddy = true;
            }
        }
        if a.status(&2) == Some(Status::Dead) {
            break;
        }
    }
    let events: Vec<_> = a.drain_events().collect();
    assert_eq!(
        events,
        vec![Event::Suspect(2), Event::Down { id: 2, left: false }]
    );
    assert!(
        pinged_as_buddy,
        "a probe to a suspect carries the suspicion first"
    );
    // N = 2: the suspicion lasts its minimum, 4 probe intervals (no one
    // else could confirm it, so nothing is waited for), after the first
    // probe round (up to 1 s of jitter, then 1 s).
    let took = now - t0;
    assert!(took >= Duration::from_secs(5), "down after {took:?}");
    assert!(took < Duration::from_secs(7), "down after {took:?}");
    assert!(a.health() > 0, "failed probes raise the health score");
    // Forgotten after the retention.
    let later = now + Config::default().dead_retention;
    a.tick(later);
    assert_eq!(a.status(&2), None);
}

#[test]
fn an_ack_counts_only_from_the_target_or_a_helper() {
    let t0 = Instant::now();
    let mut a = peer(1, t0);
    a.handle(2, news(vec![alive(2, 0)]), t0);
    let mut seq = None;
    for _ in 0..10 {
        a.tick(a.next_wake());
        seq = a.drain_sends().find_map(|(to, m)| match (to, m) {
            (2, Msg::Ping { seq, .. }) => Some(seq),
            _ => None,
        });
        if seq.is_some() {
            break;
        }
    }
    let seq = seq.expect("a ping to 2");
    // A stranger acking the probe in 2's place changes nothing.
    a.handle(
        7,
        Msg::Ack {
            seq,
            known: 2,
            updates: vec![],
        },
        t0,
    );
    let end = t0 + Duration::from_secs(3);
    a.tick(end);
    assert_eq!(a.status(&2), Some(Status::Suspect));
}

#[test]
fn messages_claiming_to_be_from_this_peer_are_ignored() {
    let now = Instant::now();
    let mut a = peer(1, now);
    a.handle(1, news(vec![alive(5, 0)]), now);
    assert_eq!(a.status(&5), None);
}

#[test]
fn the_member_table_is_bounded() {
    let now = Instant::now();
    let cfg = Config {
        max_members: 50,
        ..Config::default()
    };
    let mut a = Swim::new(1u32, 0, cfg, now, 1);
    for chunk in (100..1100u32).collect::<Vec<_>>().chunks(16) {
        a.handle(9, news(chunk.iter().map(|id| alive(*id, 0)).collect()), now);
    }
    assert_eq!(a.members().count(), 50);
    assert_eq!(a.counters().refused_full, 950);
    // A full-state exchange is bounded the same way.
    a.handle(
        9,
        Msg::Sync {
            reply: false,
            members: (5000..9000).map(|id| alive(id, 0)).collect(),
        },
        now,
    );
    assert_eq!(a.members().count(), 50);
}

#[test]
fn one_message_applies_at_most_max_updates() {
    let now = Instant::now();
    let mut a = peer(1, now);
    a.handle(9, news((100..1100).map(|id| alive(id, 0)).collect()), now);
    assert_eq!(a.members().count(), MAX_UPDATES_IN_MESSAGE);
}

#[test]
fn indirect_probes_for_others_are_bounded_and_nacked() {
    let now = Instant::now();
    let cfg = Config {
        max_relays: 4,
        ..Config::default()
    };
    let mut a = Swim::new(1u32, 0, cfg, now, 1);
    a.handle(9, news(vec![alive(2, 0), alive(3, 0)]), now);
    a.drain_sends().for_each(drop);
    for seq in 0..10 {
        a.handle(
            3,
            Msg::PingReq {
                seq,
                target: 2,
                updates: vec![],
            },
            now,
        );
    }
    // A ping request for a member it does not know is not carried out.
    a.handle(
        3,
        Msg::PingReq {
            seq: 99,
            target: 42,
            updates: vec![],
        },
        now,
    );
    let pings: Vec<_> = a.drain_sends().collect();
    assert_eq!(pings.len(), 4, "{pings:?}");
    assert!(
        pings
            .iter()
            .all(|(to, m)| *to == 2 && matches!(m, Msg::Ping { .. }))
    );
    assert_eq!(a.counters().refused_relays, 6);
    // The target stays silent: the requester gets nacks.
    a.tick(now + Duration::from_secs(1));
    let nacks = a
        .drain_sends()
        .filter(|(to, m)| *to == 3 && matches!(m, Msg::Nack { .. }))
        .count();
    assert_eq!(nacks, 4);
}

#[test]
fn a_relayed_ack_reaches_the_origin() {
    let now = Instant::now();
    let mut helper = peer(1, now);
    helper.handle(9, news(vec![alive(2, 0), alive(3, 0)]), now);
    helper.drain_sends().for_each(drop);
    helper.handle(
        3,
        Msg::PingReq {
            seq: 77,
            target: 2,
            updates: vec![],
        },
        now,
    );
    let (to, ping) = helper.drain_sends().next().expect("a ping");
    let Msg::Ping { seq, .. } = ping else {
        panic!("{ping:?}")
    };
    assert_eq!(to, 2);
    helper.handle(
        2,
        Msg::Ack {
            seq,
            known: 2,
            updates: vec![],
        },
        now,
    );
    let sent: Vec<_> = helper.drain_sends().collect();
    assert!(
        matches!(sent.as_slice(), [(3, Msg::Ack { seq: 77, .. })]),
        "{sent:?}"
    );
}

#[test]
fn a_peer_behind_pulls_the_full_state_once_gossip_is_quiet_and_not_too_often() {
    let t0 = Instant::now();
    let mut a = peer(1, t0);
    a.handle(9, news(vec![alive(2, 0)]), t0);
    let ping = |known| Msg::Ping {
        seq: 1,
        known,
        updates: vec![],
    };
    let syncs = |a: &mut Swim<u32>| {
        a.drain_sends()
            .filter(|(to, m)| *to == 2 && matches!(m, Msg::Sync { reply: true, .. }))
            .count()
    };
    // News still queued here: gossip is not done, no pull yet.
    a.handle(2, ping(50), t0);
    assert_eq!(syncs(&mut a), 0);
    // Gossip done (the queue drained): 2 knows more, so pull from it.
    while !a.piggyback(false, None).is_empty() {}
    a.handle(2, ping(50), t0);
    assert_eq!(syncs(&mut a), 1);
    // Not again within PULL_INTERVALS probe intervals, whatever it claims.
    let soon = t0 + Config::default().probe_interval * (PULL_INTERVALS - 1);
    a.handle(2, ping(5000), soon);
    assert_eq!(syncs(&mut a), 0);
    let later = t0 + Config::default().probe_interval * PULL_INTERVALS;
    a.handle(2, ping(5000), later);
    assert_eq!(syncs(&mut a), 1);
    // A peer that knows no more than this one is no reason to pull.
    let much_later = later + Duration::from_secs(60);
    a.handle(2, ping(2), much_later);
    assert_eq!(syncs(&mut a), 0);
}

#[test]
fn leaving_spreads_at_once() {
    let now = Instant::now();
    let (mut a, mut b) = (peer(1, now), peer(2, now));
    b.join(1, now);
    exchange(&mut a, &mut b, now);
    a.drain_events().for_each(drop);
    b.leave();
    exchange(&mut a, &mut b, now);
    assert_eq!(a.status(&2), Some(Status::Left));
    assert_eq!(
        a.drain_events().collect::<Vec<_>>(),
        vec![Event::Down { id: 2, left: true }]
    );
}

// ---- whole meshes, simulated ----

#[test]
fn a_simulated_mesh_converges_detects_a_kill_and_has_no_false_down_at_1pc_loss() {
    let cfg = SimConfig::new(300, 0.01, 7);
    let r = sim::scenario(cfg, Duration::from_secs(30), Duration::from_secs(120));
    let converged = r.converged.expect("converges");
    assert!(converged < Duration::from_secs(10), "{r:?}");
    // One join into the formed mesh: its news crosses the mesh in a few
    // gossip rounds (200 ms, 3 peers each: log3(300) ~ 5.2 rounds).
    let joined = r.joined.expect("the late joiner is seen by all");
    assert!(joined < Duration::from_secs(3), "{r:?}");
    let all = r.detected_all.expect("every survivor sees the kill");
    // N = 300: suspicion between 4 * log10(300) ~ 9.9 s and 6x that
    // (59.5 s), shorter with each confirmation; plus the probe that finds
    // the victim (every peer probes one member a second, so some peer
    // probes it within a second or two) and the spread of the news.
    assert!(all < Duration::from_secs(65), "{r:?}");
    assert_eq!(r.false_downs, 0, "{r:?}");
    // Idle cost per peer: about a ping and an ack out per second, a little
    // gossip; bounded whatever N is.
    assert!(r.idle_per_peer.0 < 5.0, "{r:?}");
}

#[test]
fn the_simulator_is_deterministic() {
    let run = || {
        let mut sim = Sim::new(SimConfig::new(50, 0.05, 3));
        sim.start_chain();
        sim.run_until(Duration::from_secs(5));
        (sim.traffic.messages, sim.traffic.bytes, sim.converged())
    };
    assert_eq!(run(), run());
}

#[test]
fn a_death_seen_here_is_news_at_once_and_the_living_refute_it() {
    let now = Instant::now();
    let (mut a, mut b) = (peer(1, now), peer(2, now));
    b.join(1, now);
    exchange(&mut a, &mut b, now);
    a.handle(3, news(vec![alive(3, 0)]), now);
    a.drain_events().for_each(drop);
    a.drain_sends().for_each(drop);
    // Unknown members and this peer itself: nothing happens.
    a.declare_dead(7, now);
    a.declare_dead(1, now);
    assert_eq!(a.status(&1), None);
    assert!(a.drain_events().next().is_none());
    a.declare_dead(2, now);
    assert_eq!(a.status(&2), Some(Status::Dead));
    assert_eq!(
        a.drain_events().collect::<Vec<_>>(),
        vec![Event::Down { id: 2, left: false }]
    );
    // Gossiped at once to the living (not at the next gossip round).
    let sends: Vec<_> = a.drain_sends().collect();
    assert!(
        sends.iter().any(|(to, m)| *to == 3
            && matches!(m, Msg::Gossip { updates }
            if updates.iter().any(|u| u.id == 2 && u.status == Status::Dead))),
        "{sends:?}"
    );
    // Dead already: a second report changes nothing.
    a.declare_dead(2, now);
    assert!(a.drain_events().next().is_none());
    // The claim reaches b, alive after all: it refutes and is alive again.
    let dead = Update {
        id: 2,
        incarnation: 0,
        status: Status::Dead,
        from: 1,
    };
    b.handle(1, news(vec![dead]), now);
    exchange(&mut a, &mut b, now);
    assert_eq!(a.status(&2), Some(Status::Alive));
    assert!(b.incarnation() > 0);
}

#[test]
fn with_neighbours_set_a_peer_talks_only_to_them() {
    let now = Instant::now();
    let mut a = peer(1, now);
    a.handle(9, news((2..30).map(|i| alive(i, 0)).collect()), now);
    a.set_neighbours(Some(vec![3, 4, 99]));
    a.drain_sends().for_each(drop);
    // Probes, gossip and their indirect probes, over many intervals.
    let mut t = now;
    let mut talked = std::collections::BTreeSet::new();
    for _ in 0..200 {
        t += Duration::from_millis(100);
        a.tick(t);
        for (to, _) in a.drain_sends() {
            talked.insert(to);
        }
    }
    talked.remove(&9); // answers go to whoever wrote
    assert!(!talked.is_empty());
    assert!(
        talked.iter().all(|to| [3, 4].contains(to)),
        "talked to {talked:?}"
    );
    // Everyone is still a member (alive, or suspect for the silent 3 and 4).
    assert_eq!(a.live_members(), 28);
}

#[test]
fn a_probe_whose_connection_closes_is_dropped_without_a_suspicion() {
    let t0 = Instant::now();
    let mut a = peer(1, t0);
    a.handle(9, news(vec![alive(2, 0)]), t0);
    a.set_neighbours(Some(vec![2]));
    a.drain_sends().for_each(drop);
    // Tick until the probe to 2 is out.
    let mut now = t0;
    while !a
        .drain_sends()
        .any(|(to, m)| to == 2 && matches!(m, Msg::Ping { .. }))
    {
        now = a.next_wake().max(now + Duration::from_millis(1));
        assert!(now < t0 + Duration::from_secs(5), "no probe to 2");
        a.tick(now);
    }
    // Its connection is trimmed mid-probe: no ack can come, and that says
    // nothing about 2.
    a.set_neighbours(Some(vec![]));
    for _ in 0..100 {
        now += Duration::from_millis(100);
        a.tick(now);
    }
    assert_eq!(a.status(&2), Some(Status::Alive));
    assert_eq!(a.health(), 0, "a dropped probe is no failed probe");
    assert!(!a.drain_events().any(|e| matches!(e, Event::Suspect(2))));
}

#[test]
fn a_ping_request_for_a_member_it_is_not_connected_to_is_not_nacked() {
    let now = Instant::now();
    let mut a = peer(1, now);
    a.handle(9, news(vec![alive(2, 0), alive(3, 0)]), now);
    a.set_neighbours(Some(vec![3]));
    a.drain_sends().for_each(drop);
    a.handle(
        3,
        Msg::PingReq {
            seq: 7,
            target: 2,
            updates: vec![],
        },
        now,
    );
    a.tick(now + Duration::from_secs(2));
    let sent: Vec<_> = a.drain_sends().collect();
    assert!(
        !sent
            .iter()
            .any(|(to, m)| *to == 2 || matches!(m, Msg::Nack { .. })),
        "neither a probe it cannot send nor a nack that would confirm a suspicion: {sent:?}"
    );
}

#[test]
fn a_doubt_makes_a_suspect_that_refutes_and_a_silent_one_dead() {
    let t0 = Instant::now();
    let (mut a, mut b) = (peer(1, t0), peer(2, t0));
    b.join(1, t0);
    exchange(&mut a, &mut b, t0);
    a.drain_events().for_each(drop);
    a.suspect(2, t0);
    assert_eq!(a.status(&2), Some(Status::Suspect));
    assert_eq!(
        a.drain_events().collect::<Vec<_>>(),
        vec![Event::Suspect(2)]
    );
    // b hears of it (gossip) and refutes: alive again at a higher
    // incarnation.
    a.tick(a.next_wake());
    exchange(&mut a, &mut b, t0);
    assert_eq!(a.status(&2), Some(Status::Alive));
    assert!(b.incarnation() > 0);
    // Unknown, dead or already suspect members: nothing happens.
    a.suspect(42, t0);
    assert_eq!(a.status(&42), None);
    // A member that stays silent after a doubt is dead once its suspicion
    // times out.
    let mut c = peer(1, t0);
    c.handle(9, news(vec![alive(3, 0)]), t0);
    c.set_neighbours(Some(vec![]));
    c.suspect(3, t0);
    let mut now = t0;
    while c.status(&3) == Some(Status::Suspect) {
        now = c.next_wake().max(now + Duration::from_millis(1));
        assert!(now < t0 + Duration::from_secs(60), "never declared dead");
        c.tick(now);
    }
    assert_eq!(c.status(&3), Some(Status::Dead));
}
