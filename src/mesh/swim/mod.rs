//! SWIM membership with Lifeguard: failure detection and dissemination
//! whose cost per peer does not grow with the mesh.
//!
//! A pure state machine (no I/O, no clock of its own, a seeded random
//! source): the caller hands it messages from authenticated senders and
//! the time, and carries out the sends it asks for. The same code runs in
//! the peer and, thousands of copies at once, in the simulator
//! ([`crate::mesh::sim`]); it is generic over the member identity so the
//! simulator can use small integers where the peer uses `PeerId`s.
//!
//! # The protocol (Das, Gupta, Motivala: "SWIM", 2002; HashiCorp memberlist)
//! - **Probing.** Every probe interval this peer probes *one* member, in a
//!   shuffled round-robin order (so every member is probed within a
//!   bounded time): a `Ping`, answered by an `Ack`. No ack within the probe
//!   timeout: it asks `indirect_checks` other members to probe the target
//!   for it (`PingReq`); they relay the target's ack or answer `Nack`. No
//!   ack by the end of the interval: the target becomes *suspect*.
//! - **Suspicion.** A suspect that does not refute the suspicion before its
//!   suspicion timeout is declared *dead*. The timeout scales with log N
//!   and shrinks as other members confirm the suspicion ([`lifeguard`]). A
//!   member refutes a suspicion about itself by raising its
//!   *incarnation* and announcing itself alive; an update with a higher
//!   incarnation overrides anything older.
//! - **Dissemination.** Changes (alive, suspect, dead, left) are
//!   piggybacked on probes and acks and sent in a small periodic gossip to
//!   `gossip_fanout` random members, each change `retransmit_mult *
//!   ceil(log10(N + 1))` times ([`gossip`]): an epidemic that reaches every
//!   member in O(log N) rounds, at constant cost per peer.
//! - **Repair.** Every sync interval (stretched as the mesh grows) this
//!   peer exchanges its full member list with one random member
//!   (push-pull), which repairs whatever gossip lost. A joining peer starts
//!   with such an exchange with the peer it was told about.
//!
//! # Per-peer cost
//! Per probe interval a peer sends one ping, answers the pings it gets (one
//! on average), and sends at most `gossip_fanout` gossip messages per
//! gossip interval while it has changes to spread; each message carries at
//! most `max_updates_per_message` updates. None of this depends on N; the
//! full-state exchange does, and is made rarer as N grows.
//!
//! # Bounds against what others send
//! The member table holds at most `max_members`; the dissemination queue at
//! most `max_queue` entries; indirect probes run for others at most
//! `max_relays` at once; a suspicion counts at most `indirect_checks`
//! confirmations. Every message's length is bounded by the caller's
//! decoder (see [`MAX_UPDATES_IN_MESSAGE`]).

pub mod gossip;
pub mod lifeguard;

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use gossip::Queue;
use lifeguard::{Health, Suspicion};

/// Updates a receiver accepts in one message, at most (a decoder drops the
/// rest); a full-state exchange may carry up to `max_members`.
pub const MAX_UPDATES_IN_MESSAGE: usize = 128;

/// Probe intervals between two pull repairs of one peer, at least.
pub const PULL_INTERVALS: u32 = 5;

/// Full-state answers followed up at once, at most (see [`Swim`]'s
/// follow-ups); a newer answer pushes out the oldest.
pub const MAX_FOLLOW_UPS: usize = 32;

/// Probe intervals during which a full-state answer is followed up.
pub const FOLLOW_UP_INTERVALS: u32 = 10;

/// What is known about a member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Answers probes (as far as this peer knows).
    Alive,
    /// A probe went unanswered; dead unless it refutes in time.
    Suspect,
    /// Declared dead after a suspicion that was not refuted.
    Dead,
    /// Said goodbye.
    Left,
}

/// One piece of membership news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update<I> {
    /// The member it is about.
    pub id: I,
    /// The member's incarnation it applies to.
    pub incarnation: u64,
    /// What it says.
    pub status: Status,
    /// Who raised it (a suspicion's confirmations are counted by this);
    /// the member itself for `Alive` and `Left`.
    pub from: I,
}

impl<I: Copy> Update<I> {
    /// `id` alive at `incarnation`, as it says itself.
    pub fn alive(id: I, incarnation: u64) -> Self {
        Update {
            id,
            incarnation,
            status: Status::Alive,
            from: id,
        }
    }
}

/// A message between two peers. The sender is not in it: the transport
/// authenticates it and hands it over with the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg<I> {
    /// Are you there? Answered by an `Ack` with the same `seq`.
    Ping {
        /// Matches the answer to the probe.
        seq: u32,
        /// Members the sender knows alive, itself included (see
        /// [`Swim`]'s pull repair).
        known: u32,
        /// Piggybacked news.
        updates: Vec<Update<I>>,
    },
    /// Yes (or, from an indirect prober, "the target answered").
    Ack {
        /// The `seq` of the ping (or ping request) answered.
        seq: u32,
        /// Members the sender knows alive, itself included.
        known: u32,
        /// Piggybacked news.
        updates: Vec<Update<I>>,
    },
    /// Probe `target` for me and tell me.
    PingReq {
        /// To put in the answer.
        seq: u32,
        /// Whom to probe.
        target: I,
        /// Piggybacked news.
        updates: Vec<Update<I>>,
    },
    /// I probed the target for you; it did not answer (Lifeguard).
    Nack {
        /// The `seq` of the ping request.
        seq: u32,
    },
    /// Just news.
    Gossip {
        /// The news.
        updates: Vec<Update<I>>,
    },
    /// A full-state exchange: the sender's whole member list; `reply`
    /// asks for the receiver's in return.
    Sync {
        /// Whether the receiver should answer with its own list.
        reply: bool,
        /// Every member the sender knows, itself included.
        members: Vec<Update<I>>,
    },
}

impl<I> Msg<I> {
    /// Bytes on the wire, as the simulator counts them: `id_bytes` per
    /// identity (38 for an Ed25519 `PeerId`), 8 per incarnation and seq.
    pub fn wire_size(&self, id_bytes: usize) -> usize {
        let update = |u: &Update<I>| {
            id_bytes
                + 9
                + if matches!(u.status, Status::Suspect | Status::Dead) {
                    id_bytes
                } else {
                    0
                }
        };
        let updates = |us: &[Update<I>]| 2 + us.iter().map(update).sum::<usize>();
        1 + match self {
            Msg::Ping { updates: u, .. } | Msg::Ack { updates: u, .. } => 8 + updates(u),
            Msg::PingReq { updates: u, .. } => 4 + id_bytes + updates(u),
            Msg::Nack { .. } => 4,
            Msg::Gossip { updates: u } => updates(u),
            Msg::Sync { members, .. } => 1 + updates(members),
        }
    }
}

/// What the layer above is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<I> {
    /// A member is alive: new, or back after it was dead or left.
    Up(I),
    /// A member is suspected (still counted as up).
    Suspect(I),
    /// A member is gone: dead (`left == false`) or said goodbye.
    Down {
        /// Who.
        id: I,
        /// Whether it left rather than failed.
        left: bool,
    },
}

/// The protocol's parameters. [`Config::default`] is memberlist's LAN
/// profile.
#[derive(Debug, Clone)]
pub struct Config {
    /// One member is probed per interval.
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before indirect probes.
    pub probe_timeout: Duration,
    /// Members asked to probe indirectly; also the confirmations that bring
    /// a suspicion's timeout down to its minimum.
    pub indirect_checks: usize,
    /// How often news is gossiped (while there is news).
    pub gossip_interval: Duration,
    /// Members gossiped to per gossip interval.
    pub gossip_fanout: usize,
    /// Each change is sent `retransmit_mult * ceil(log10(N + 1))` times.
    pub retransmit_mult: u32,
    /// Minimum suspicion timeout: `suspicion_mult * max(1, log10(N))`
    /// probe intervals.
    pub suspicion_mult: u32,
    /// Maximum suspicion timeout: this many times the minimum.
    pub suspicion_max_mult: u32,
    /// Base interval of the full-state exchange (stretched for N > 32).
    pub sync_interval: Duration,
    /// Updates piggybacked on one message, at most.
    pub max_updates_per_message: usize,
    /// Changes waiting to be spread, at most.
    pub max_queue: usize,
    /// Members held, at most (alive, suspect and recently dead).
    pub max_members: usize,
    /// Ceiling of the local health score.
    pub health_max: u32,
    /// How long a dead or departed member is remembered (so late news
    /// about its old incarnation cannot revive it).
    pub dead_retention: Duration,
    /// Indirect probes run for others at once, at most.
    pub max_relays: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: 3,
            retransmit_mult: 4,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            sync_interval: Duration::from_secs(30),
            max_updates_per_message: 64,
            max_queue: 1024,
            max_members: 4096,
            health_max: 8,
            dead_retention: Duration::from_secs(60),
            max_relays: 64,
        }
    }
}

/// A member as this peer holds it.
#[derive(Debug, Clone, Copy)]
struct Member {
    incarnation: u64,
    status: Status,
}

/// The probe in flight.
#[derive(Debug)]
struct Probe<I> {
    target: I,
    seq: u32,
    /// When to fall back to indirect probes (None once sent).
    indirect_at: Option<Instant>,
    /// End of the round: suspect the target unless it answered.
    end: Instant,
    acked: bool,
    /// Members asked to probe indirectly that have not answered yet.
    asked: Vec<I>,
    /// Those that answered that the target stayed silent for them too.
    nacked: Vec<I>,
}

/// An indirect probe this peer runs for another member.
#[derive(Debug)]
struct Relay<I> {
    origin: I,
    origin_seq: u32,
    target: I,
    /// When to tell the origin the target stayed silent.
    nack_at: Instant,
}

/// A join waiting for the seed's answer.
#[derive(Debug)]
struct Joining<I> {
    seed: I,
    retry_at: Instant,
    backoff: Duration,
}

/// A full-state answer given: to whom, how many members it listed, and
/// until when it is followed up.
#[derive(Debug)]
struct Told<I> {
    to: I,
    members: usize,
    until: Instant,
}

/// Counters of what the machine did, for metrics and the simulator.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Updates refused because the member table was full.
    pub refused_full: u64,
    /// Ping requests refused because `max_relays` were running.
    pub refused_relays: u64,
    /// Suspicions about this peer that it refuted.
    pub refutations: u64,
}

/// One peer's SWIM state.
pub struct Swim<I> {
    me: I,
    incarnation: u64,
    leaving: bool,
    cfg: Config,
    members: HashMap<I, Member>,
    /// Members alive or suspect.
    live: usize,
    suspicions: HashMap<I, Suspicion<I>>,
    /// Dead and departed members, with when they went.
    gone: HashMap<I, Instant>,
    probe_order: Vec<I>,
    probe_index: usize,
    joining: Option<Joining<I>>,
    /// Full-state answers given lately (see `follow_up`).
    told: Vec<Told<I>>,
    last_stranger_sync: Option<Instant>,
    last_pull: Option<Instant>,
    probe: Option<Probe<I>>,
    next_probe: Instant,
    next_gossip: Instant,
    next_sync: Instant,
    relays: HashMap<u32, Relay<I>>,
    next_seq: u32,
    health: Health,
    queue: Queue<I>,
    rng: StdRng,
    /// Members this peer talks to (see [`Swim::set_neighbours`]); `None`:
    /// any member.
    neighbours: Option<Vec<I>>,
    out: Vec<(I, Msg<I>)>,
    events: Vec<Event<I>>,
    counters: Counters,
}

impl<I: Copy + Eq + Hash + Ord + std::fmt::Debug> Swim<I> {
    /// A peer `me` alone in its mesh at `now`, starting at `incarnation`
    /// (a restarted peer should start above its previous life's: its start
    /// time does). `seed` seeds its random choices.
    pub fn new(me: I, incarnation: u64, cfg: Config, now: Instant, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        // Spread the first probes and gossip of peers started together.
        let jitter = |rng: &mut StdRng, d: Duration| d.mul_f64(rng.gen_range(0.0..1.0));
        let next_probe = now + jitter(&mut rng, cfg.probe_interval);
        let next_gossip = now + jitter(&mut rng, cfg.gossip_interval);
        // The first exchange comes early: a new peer's view (its seed's,
        // taken while the mesh may itself have been forming) is repaired
        // within seconds, not after a full sync interval.
        let early = cfg.probe_interval * 2;
        let next_sync = now + early + jitter(&mut rng, early);
        Swim {
            me,
            incarnation,
            leaving: false,
            health: Health::new(cfg.health_max),
            queue: Queue::new(cfg.max_queue),
            cfg,
            members: HashMap::new(),
            live: 0,
            suspicions: HashMap::new(),
            gone: HashMap::new(),
            probe_order: Vec::new(),
            probe_index: 0,
            joining: None,
            told: Vec::new(),
            last_stranger_sync: None,
            last_pull: None,
            probe: None,
            next_probe,
            next_gossip,
            next_sync,
            relays: HashMap::new(),
            next_seq: 0,
            rng,
            neighbours: None,
            out: Vec::new(),
            events: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// This peer's identity.
    pub fn me(&self) -> I {
        self.me
    }

    /// This peer's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Members alive or suspect (this peer excluded).
    pub fn live_members(&self) -> usize {
        self.live
    }

    /// What this peer holds about `id`.
    pub fn status(&self, id: &I) -> Option<Status> {
        self.members.get(id).map(|m| m.status)
    }

    /// Every member held, with its status.
    pub fn members(&self) -> impl Iterator<Item = (I, Status)> + '_ {
        self.members.iter().map(|(id, m)| (*id, m.status))
    }

    /// The local health score (0 is healthy).
    pub fn health(&self) -> u32 {
        self.health.score()
    }

    /// Counters of refusals and refutations.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Messages to send, oldest first.
    pub fn drain_sends(&mut self) -> std::vec::Drain<'_, (I, Msg<I>)> {
        self.out.drain(..)
    }

    /// Events for the layer above, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event<I>> {
        self.events.drain(..)
    }

    /// Joins the mesh through `seed`: a full-state exchange with it,
    /// sent again (every probe interval, then less often, up to the sync
    /// interval) until the seed's answer arrives: a lost join must not
    /// leave this peer, and everyone who joins through it, outside.
    ///
    /// A join in progress keeps its seed: a peer met meanwhile (often a
    /// newcomer joining through this one, and knowing nothing) gets a
    /// one-off exchange instead. Taken as the seed, its answer ended this
    /// peer's join with two members known, and every peer that joined
    /// after it through the chain inherited that fragment: a 150-peer
    /// chain formed as islands that gossip had to merge for seconds.
    pub fn join(&mut self, seed: I, now: Instant) {
        if seed == self.me {
            return;
        }
        if self.joining.as_ref().is_some_and(|j| j.seed != seed) {
            self.send_sync(seed);
            return;
        }
        self.joining = Some(Joining {
            seed,
            retry_at: now + self.cfg.probe_interval,
            backoff: self.cfg.probe_interval,
        });
        self.send_sync(seed);
        // Its own arrival is news this peer spreads itself, first of all
        // (memberlist broadcasts a node's own alive at start too). Left to
        // the seed alone, in a mesh forming on a loaded machine the seed
        // (often a newcomer itself, with few connections) was the only
        // source for seconds; the joiner's first gossip rounds, to the
        // peers of its active view, carried others' news and not its own.
        self.queue.push(self.own_state(), true);
    }

    /// One full-state exchange with `peer` (no retry, unlike [`Self::join`]):
    /// for a peer met outside SWIM that it does not hold alive.
    pub fn sync_with(&mut self, peer: I) {
        if peer != self.me {
            self.send_sync(peer);
        }
    }

    /// Says goodbye: the news goes out at once to `gossip_fanout` members
    /// and keeps spreading by gossip while this peer runs.
    pub fn leave(&mut self) {
        if self.leaving {
            return;
        }
        self.leaving = true;
        self.incarnation += 1;
        self.queue.push(
            Update {
                id: self.me,
                incarnation: self.incarnation,
                status: Status::Left,
                from: self.me,
            },
            true,
        );
        self.gossip_now();
    }

    /// This peer saw `id` die itself (its last connection closed and a
    /// redial was refused: the kernel of a killed peer closes its sockets):
    /// `id` is dead at once, and the news spreads as urgent. A death
    /// announced by one peer is still a claim: if `id` is in fact alive it
    /// hears of it and refutes it with a higher incarnation.
    pub fn declare_dead(&mut self, id: I, now: Instant) {
        if self.claim(id, &[Status::Alive, Status::Suspect], Status::Dead, now) {
            self.gossip_now();
        }
    }

    /// Applies this peer's own claim that `id` is `status` at its current
    /// incarnation, if `id` is held as one of `from`; returns whether.
    fn claim(&mut self, id: I, from: &[Status], status: Status, now: Instant) -> bool {
        let Some(m) = self.members.get(&id).copied() else {
            return false;
        };
        if !from.contains(&m.status) {
            return false;
        }
        let u = Update {
            id,
            incarnation: m.incarnation,
            status,
            from: self.me,
        };
        self.apply(&u, now);
        true
    }

    /// This peer failed to reach `id` by means of its own (a dial that
    /// timed out): weaker evidence than a refusal, so `id` becomes
    /// *suspect*, as after a failed probe, and is declared dead only if it
    /// does not refute within the suspicion timeout.
    pub fn suspect(&mut self, id: I, now: Instant) {
        self.claim(id, &[Status::Alive], Status::Suspect, now);
    }

    /// Restricts whom this peer probes, asks for indirect probes, gossips
    /// to and exchanges state with to `ids` (those that are live members):
    /// where talking to a member means a connection (TCP and a handshake,
    /// not a UDP datagram as in memberlist), the peer talks to the members
    /// it is connected to, and every member is someone's neighbour. The
    /// member list itself still holds everyone. `None` (the default):
    /// anyone, as in the paper.
    ///
    /// A probe whose target stops being a neighbour is dropped without a
    /// suspicion: its connection was closed by this side or the other
    /// (connections nothing uses are trimmed), which says nothing about
    /// the target, and an ack could no longer come. Where the connection
    /// closed because the target died, the connection-close fast path
    /// ([`Self::declare_dead`]) and the other members' probes decide.
    pub fn set_neighbours(&mut self, ids: Option<Vec<I>>) {
        self.neighbours = ids;
        if let Some(p) = &self.probe
            && !p.acked
            && !self.talks_to(&p.target)
        {
            self.probe = None;
        }
    }

    fn talks_to(&self, id: &I) -> bool {
        self.neighbours.as_ref().is_none_or(|n| n.contains(id))
    }

    /// The earliest time [`Self::tick`] has something to do.
    pub fn next_wake(&self) -> Instant {
        let mut t = self.next_probe.min(self.next_sync);
        if !self.queue.is_empty() {
            t = t.min(self.next_gossip);
        }
        if let Some(p) = &self.probe {
            t = t.min(p.end);
            if let Some(i) = p.indirect_at {
                t = t.min(i);
            }
        }
        for r in self.relays.values() {
            t = t.min(r.nack_at);
        }
        for s in self.suspicions.values() {
            t = t.min(s.deadline());
        }
        for g in self.gone.values() {
            t = t.min(*g + self.cfg.dead_retention);
        }
        if let Some(j) = &self.joining {
            t = t.min(j.retry_at);
        }
        t
    }

    /// Does whatever is due at `now`: probe steps, relays' nacks, expired
    /// suspicions, gossip, the full-state exchange, forgetting the long
    /// dead.
    pub fn tick(&mut self, now: Instant) {
        self.probe_step(now);
        if self.probe.is_none() && now >= self.next_probe {
            self.next_probe = now + self.health.scale(self.cfg.probe_interval);
            self.start_probe(now);
        }
        self.relay_nacks(now);
        self.expire_suspicions(now);
        if let Some(j) = &mut self.joining
            && now >= j.retry_at
        {
            j.backoff = (j.backoff * 2).min(self.cfg.sync_interval);
            j.retry_at = now + j.backoff;
            let seed = j.seed;
            self.send_sync(seed);
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.cfg.gossip_interval;
            self.gossip_now();
        }
        if now >= self.next_sync {
            self.next_sync = now + self.sync_interval();
            if let Some(peer) = self.random_live(&[]) {
                self.send_sync(peer);
            }
        }
        let retention = self.cfg.dead_retention;
        let mut forget: Vec<I> = self
            .gone
            .iter()
            .filter(|(_, t)| now >= **t + retention)
            .map(|(id, _)| *id)
            .collect();
        forget.sort_unstable();
        for id in forget {
            self.gone.remove(&id);
            self.members.remove(&id);
        }
        self.follow_up(now);
    }

    /// Handles a message `from` an authenticated sender.
    pub fn handle(&mut self, from: I, msg: Msg<I>, now: Instant) {
        if from == self.me {
            return;
        }
        let stranger = !matches!(&msg, Msg::Sync { .. }) && !self.is_live(&from);
        self.dispatch(from, msg, now);
        // A member first heard of from itself missed the news of the mesh
        // (or the mesh missed its): a full-state exchange puts both right.
        // At most one per probe interval.
        if stranger
            && self.is_live(&from)
            && self
                .last_stranger_sync
                .is_none_or(|t| now >= t + self.cfg.probe_interval)
        {
            self.last_stranger_sync = Some(now);
            self.send_sync(from);
        }
        self.follow_up(now);
    }

    /// A ping that introduces this peer, with `first` before the news.
    fn send_ping(&mut self, target: I, seq: u32, first: Option<Update<I>>) {
        let updates = self.piggyback(true, first);
        let known = self.known();
        self.out.push((
            target,
            Msg::Ping {
                seq,
                known,
                updates,
            },
        ));
    }

    /// Members this peer knows alive, itself included.
    fn known(&self) -> u32 {
        self.n() as u32
    }

    /// Pull repair: once gossip has gone quiet here (nothing queued), a
    /// member that knows more members than this peer does has news that
    /// gossip lost on the way here: a full-state exchange with it fetches
    /// it, at most once per [`PULL_INTERVALS`] probe intervals. This
    /// removes the long tail of an epidemic (the last few peers missing
    /// the last few members) without waiting for the periodic exchange,
    /// which grows rarer with N. A member lying about its count earns
    /// itself one exchange per that interval, no more.
    fn pull_if_behind(&mut self, from: I, known: u32, now: Instant) {
        if known as usize <= self.n() || !self.queue.is_empty() || !self.is_live(&from) {
            return;
        }
        let every = self.cfg.probe_interval * PULL_INTERVALS;
        if self.last_pull.is_some_and(|t| now < t + every) {
            return;
        }
        self.last_pull = Some(now);
        self.send_sync(from);
    }

    fn is_live(&self, id: &I) -> bool {
        matches!(
            self.members.get(id).map(|m| m.status),
            Some(Status::Alive | Status::Suspect)
        )
    }

    fn dispatch(&mut self, from: I, msg: Msg<I>, now: Instant) {
        match msg {
            Msg::Ping {
                seq,
                known,
                updates,
            } => {
                self.apply_all(&updates, now);
                self.pull_if_behind(from, known, now);
                let updates = self.piggyback(true, None);
                let known = self.known();
                self.out.push((
                    from,
                    Msg::Ack {
                        seq,
                        known,
                        updates,
                    },
                ));
            }
            Msg::Ack {
                seq,
                known,
                updates,
            } => {
                self.apply_all(&updates, now);
                self.pull_if_behind(from, known, now);
                self.on_ack(from, seq);
            }
            Msg::PingReq {
                seq,
                target,
                updates,
            } => {
                self.apply_all(&updates, now);
                self.relay(from, seq, target, now);
            }
            Msg::Nack { seq } => {
                if let Some(p) = &mut self.probe
                    && p.seq == seq
                    && let Some(i) = p.asked.iter().position(|a| *a == from)
                {
                    p.asked.swap_remove(i);
                    p.nacked.push(from);
                }
            }
            Msg::Gossip { updates } => self.apply_all(&updates, now),
            Msg::Sync { reply, members } => {
                if !reply && self.joining.as_ref().is_some_and(|j| j.seed == from) {
                    self.joining = None;
                }
                if reply {
                    self.answer_sync(from, now);
                }
                self.merge(&members, now);
            }
        }
    }

    /// Answers a full-state request from `to` with this peer's list, and
    /// remembers it for follow-ups.
    fn answer_sync(&mut self, to: I, now: Instant) {
        let mine = self.full_state();
        self.told.retain(|t| t.to != to);
        if self.told.len() >= MAX_FOLLOW_UPS {
            self.told.remove(0);
        }
        self.told.push(Told {
            to,
            members: mine.len(),
            until: now + self.cfg.probe_interval * FOLLOW_UP_INTERVALS,
        });
        self.out.push((
            to,
            Msg::Sync {
                reply: false,
                members: mine,
            },
        ));
    }

    /// Follow-ups: a peer that answered a full-state request while it knew
    /// little (itself joining, or its join answered by a newcomer) sends
    /// its list again once it knows at least twice as many members, for
    /// [`FOLLOW_UP_INTERVALS`] probe intervals after the answer. In a
    /// chain of joins, the next peer took this one's list as its view of
    /// the mesh and passed it on: without follow-ups a 150-peer chain
    /// formed as islands (a joiner told of 2 members, the one after it of
    /// 3, ...) that gossip took seconds to merge. With them, the whole
    /// list runs down the chain as fast as messages do: each follow-up
    /// doubles what its receiver knows, which follows up in turn. At most
    /// [`MAX_FOLLOW_UPS`] answers are watched, each followed up at most
    /// log2(members) times.
    fn follow_up(&mut self, now: Instant) {
        if self.told.is_empty() {
            return;
        }
        self.told.retain(|t| now < t.until);
        let known = self.members.len() + 1;
        let due: Vec<I> = self
            .told
            .iter()
            .filter(|t| known >= 2 * t.members)
            .map(|t| t.to)
            .collect();
        for to in due {
            self.answer_sync(to, now);
        }
    }

    // ---- probing ----

    fn start_probe(&mut self, now: Instant) {
        let Some(target) = self.next_target() else {
            return;
        };
        let seq = self.seq();
        // Buddy system: a suspect learns of the suspicion from the probe.
        let buddy = match self.members.get(&target) {
            Some(m) if m.status == Status::Suspect => Some(Update {
                id: target,
                incarnation: m.incarnation,
                status: Status::Suspect,
                from: self.me,
            }),
            _ => None,
        };
        self.send_ping(target, seq, buddy);
        self.probe = Some(Probe {
            target,
            seq,
            indirect_at: Some(now + self.health.scale(self.cfg.probe_timeout)),
            end: now + self.health.scale(self.cfg.probe_interval),
            acked: false,
            asked: Vec::new(),
            nacked: Vec::new(),
        });
    }

    fn probe_step(&mut self, now: Instant) {
        let Some(p) = &self.probe else { return };
        let (target, seq, acked, end) = (p.target, p.seq, p.acked, p.end);
        if !acked && p.indirect_at.is_some_and(|t| now >= t) {
            let helpers = self.random_live_n(self.cfg.indirect_checks, &[target]);
            for h in &helpers {
                let updates = self.piggyback(false, None);
                self.out.push((
                    *h,
                    Msg::PingReq {
                        seq,
                        target,
                        updates,
                    },
                ));
            }
            let p = self.probe.as_mut().expect("probe");
            p.indirect_at = None;
            p.asked = helpers;
        }
        if now < end {
            return;
        }
        let p = self.probe.take().expect("probe");
        if p.acked {
            return;
        }
        // Lifeguard: a failed probe, and every nack that did not come,
        // count against this peer's own health.
        self.health.apply(1 + p.asked.len() as i32);
        if let Some(m) = self.members.get(&target).copied()
            && m.status == Status::Alive
        {
            let u = Update {
                id: target,
                incarnation: m.incarnation,
                status: Status::Suspect,
                from: self.me,
            };
            self.apply(&u, now);
            // Each nack is a member that found the target silent too: an
            // independent confirmation, so the suspicion does not wait for
            // members that probe the target only once per N intervals.
            // (Only this peer's timer needs it: whoever declares the
            // member dead first tells everyone.)
            if let Some(s) = self.suspicions.get_mut(&target) {
                for h in &p.nacked {
                    s.confirm(*h);
                }
            }
        }
    }

    fn on_ack(&mut self, from: I, seq: u32) {
        if let Some(p) = &mut self.probe
            && p.seq == seq
            && (from == p.target || p.asked.contains(&from))
        {
            if !p.acked {
                p.acked = true;
                p.indirect_at = None;
                self.health.apply(-1);
            }
            return;
        }
        if let Some(r) = self.relays.get(&seq)
            && r.target == from
        {
            let r = self.relays.remove(&seq).expect("relay");
            let updates = self.piggyback(false, None);
            self.out.push((
                r.origin,
                Msg::Ack {
                    seq: r.origin_seq,
                    known: self.known(),
                    updates,
                },
            ));
        }
    }

    /// Probes `target` for `origin`; only members this peer knows alive,
    /// and at most `max_relays` at once.
    fn relay(&mut self, origin: I, origin_seq: u32, target: I, now: Instant) {
        // Not a neighbour: no way to reach it, so no probe and no nack (a
        // nack would count as a confirmation of the suspicion).
        if !self.is_live(&target) || target == self.me || !self.talks_to(&target) {
            return;
        }
        if self.relays.len() >= self.cfg.max_relays {
            self.counters.refused_relays += 1;
            return;
        }
        let seq = self.seq();
        self.relays.insert(
            seq,
            Relay {
                origin,
                origin_seq,
                target,
                // Sooner than the origin's own wait (it asked half-way
                // through its probe interval), so the nack arrives while
                // the origin's probe still counts it.
                nack_at: now + self.cfg.probe_timeout.mul_f64(0.8),
            },
        );
        self.send_ping(target, seq, None);
    }

    fn relay_nacks(&mut self, now: Instant) {
        let due: Vec<u32> = self
            .relays
            .iter()
            .filter(|(_, r)| now >= r.nack_at)
            .map(|(s, _)| *s)
            .collect();
        // Hash maps iterate in a random order; the simulator needs runs
        // that a seed reproduces, so whatever is built from one is sorted.
        let mut due = due;
        due.sort_unstable();
        for seq in due {
            let r = self.relays.remove(&seq).expect("relay");
            self.out.push((r.origin, Msg::Nack { seq: r.origin_seq }));
        }
    }

    /// The next member in the shuffled round-robin order; reshuffled (and
    /// cleared of the gone) at the end of each pass.
    fn next_target(&mut self) -> Option<I> {
        for _ in 0..2 {
            while self.probe_index < self.probe_order.len() {
                let id = self.probe_order[self.probe_index];
                self.probe_index += 1;
                if self.is_live(&id) && self.talks_to(&id) {
                    return Some(id);
                }
            }
            let members = &self.members;
            self.probe_order.retain(|id| {
                matches!(
                    members.get(id).map(|m| m.status),
                    Some(Status::Alive | Status::Suspect)
                )
            });
            self.probe_order.shuffle(&mut self.rng);
            self.probe_index = 0;
        }
        None
    }

    fn seq(&mut self) -> u32 {
        self.next_seq = self.next_seq.wrapping_add(1);
        self.next_seq
    }

    // ---- suspicion ----

    fn expire_suspicions(&mut self, now: Instant) {
        let due: Vec<(I, u64)> = self
            .suspicions
            .iter()
            .filter(|(_, s)| now >= s.deadline())
            .filter_map(|(id, _)| self.members.get(id).map(|m| (*id, m.incarnation)))
            .collect();
        let mut due = due;
        due.sort_unstable();
        for (id, incarnation) in due {
            let u = Update {
                id,
                incarnation,
                status: Status::Dead,
                from: self.me,
            };
            self.apply(&u, now);
        }
    }

    /// N as the formulas use it: the live members and this peer.
    fn n(&self) -> usize {
        self.live + 1
    }

    fn suspicion_bounds(&self) -> (Duration, Duration) {
        let scale = (self.n() as f64).log10().max(1.0);
        let min = self
            .cfg
            .probe_interval
            .mul_f64(self.cfg.suspicion_mult as f64 * scale);
        (min, min * self.cfg.suspicion_max_mult)
    }

    fn retransmit_limit(&self) -> u32 {
        self.cfg.retransmit_mult * ((self.n() + 1) as f64).log10().ceil().max(1.0) as u32
    }

    /// memberlist's push-pull scale: the base interval up to 32 members,
    /// then one more base interval per doubling.
    fn sync_interval(&self) -> Duration {
        let n = self.n() as f64;
        if n <= 32.0 {
            return self.cfg.sync_interval;
        }
        let mult = (n.log2() - 32f64.log2()).ceil() + 1.0;
        self.cfg.sync_interval.mul_f64(mult)
    }

    // ---- news ----

    fn apply_all(&mut self, updates: &[Update<I>], now: Instant) {
        for u in updates.iter().take(MAX_UPDATES_IN_MESSAGE) {
            self.apply(u, now);
        }
    }

    /// A full state from another peer: like news, except that a death it
    /// reports becomes a suspicion here (the member gets its chance to
    /// refute; memberlist does the same).
    fn merge(&mut self, members: &[Update<I>], now: Instant) {
        for u in members.iter().take(self.cfg.max_members + 1) {
            let u = if u.status == Status::Dead {
                Update {
                    status: Status::Suspect,
                    ..*u
                }
            } else {
                *u
            };
            self.apply(&u, now);
        }
    }

    /// Applies one update (the rules of SWIM's incarnations).
    fn apply(&mut self, u: &Update<I>, now: Instant) {
        if u.id == self.me {
            self.about_me(u);
            return;
        }
        let known = self.members.get(&u.id).copied();
        match (u.status, known) {
            (Status::Alive, None) => {
                if self.members.len() >= self.cfg.max_members {
                    self.counters.refused_full += 1;
                    return;
                }
                self.set(u, now);
            }
            (Status::Alive, Some(m)) if u.incarnation > m.incarnation => self.set(u, now),
            (Status::Suspect, Some(m))
                if m.status == Status::Suspect && u.incarnation == m.incarnation =>
            {
                if let Some(s) = self.suspicions.get_mut(&u.id)
                    && s.confirm(u.from)
                {
                    // Confirmations spread too: they shorten the timeout
                    // elsewhere.
                    self.queue.push(*u, true);
                }
            }
            // A new suspicion: only of a member held alive or suspect
            // (one held dead stays dead until it is alive again).
            (Status::Suspect, Some(m))
                if m.status == Status::Alive && u.incarnation >= m.incarnation
                    || m.status == Status::Suspect && u.incarnation > m.incarnation =>
            {
                self.set(u, now)
            }
            (Status::Dead | Status::Left, Some(m))
                if u.incarnation > m.incarnation
                    || (u.incarnation == m.incarnation
                        && matches!(m.status, Status::Alive | Status::Suspect)) =>
            {
                self.set(u, now)
            }
            _ => {}
        }
    }

    /// Records `u` as the member's state, tells the layer above, and
    /// queues it for dissemination.
    fn set(&mut self, u: &Update<I>, now: Instant) {
        let before = self.members.get(&u.id).map(|m| m.status);
        let was_live = matches!(before, Some(Status::Alive | Status::Suspect));
        let is_live = matches!(u.status, Status::Alive | Status::Suspect);
        self.members.insert(
            u.id,
            Member {
                incarnation: u.incarnation,
                status: u.status,
            },
        );
        match (was_live, is_live) {
            (false, true) => {
                self.live += 1;
                self.gone.remove(&u.id);
                if before.is_none() {
                    // New members join the probe order at a random place.
                    let at = self.rng.gen_range(0..=self.probe_order.len());
                    self.probe_order.insert(at, u.id);
                } else if !self.probe_order.contains(&u.id) {
                    self.probe_order.push(u.id);
                }
            }
            (true, false) => {
                self.live -= 1;
                self.gone.insert(u.id, now);
            }
            (false, false) => {
                self.gone.insert(u.id, now);
            }
            (true, true) => {}
        }
        match u.status {
            Status::Suspect => {
                if u.from == self.me {
                    // Tell the suspect at once: it refutes in time even if
                    // gossip is slow to reach it.
                    self.out.push((u.id, Msg::Gossip { updates: vec![*u] }));
                }
                let (min, max) = self.suspicion_bounds();
                let k = self.cfg.indirect_checks.min(self.n().saturating_sub(2)) as u32;
                self.suspicions
                    .insert(u.id, Suspicion::new(u.from, now, min, max, k));
                if before != Some(Status::Suspect) {
                    self.events.push(Event::Suspect(u.id));
                }
            }
            _ => {
                self.suspicions.remove(&u.id);
            }
        }
        match u.status {
            Status::Alive if before != Some(Status::Alive) && before != Some(Status::Suspect) => {
                self.events.push(Event::Up(u.id))
            }
            Status::Alive => {}
            Status::Suspect => {}
            Status::Dead | Status::Left if was_live => self.events.push(Event::Down {
                id: u.id,
                left: u.status == Status::Left,
            }),
            Status::Dead | Status::Left => {}
        }
        // Urgent: anything but "alive", and an "alive" that clears a
        // suspicion or a death (a refutation racing the timers).
        let urgent = u.status != Status::Alive || before.is_some_and(|b| b != Status::Alive);
        self.queue.push(*u, urgent);
    }

    /// News about this peer: a suspicion or death at its incarnation (or
    /// later) is refuted by a higher incarnation.
    fn about_me(&mut self, u: &Update<I>) {
        if self.leaving || u.incarnation < self.incarnation {
            return;
        }
        if u.status == Status::Alive && u.incarnation == self.incarnation {
            return;
        }
        // Suspected: maybe this peer is slow to answer (Lifeguard).
        if u.status == Status::Suspect {
            self.health.apply(1);
        }
        self.counters.refutations += 1;
        self.incarnation = u.incarnation + 1;
        let alive = Update::alive(self.me, self.incarnation);
        self.queue.push(alive, true);
        // The suspector holds the shortest timer (it counted the nacks):
        // it hears the refutation directly.
        if u.from != self.me {
            self.out.push((
                u.from,
                Msg::Gossip {
                    updates: vec![alive],
                },
            ));
        }
    }

    /// News for one message: `first`, then this peer's own state when
    /// `introduce` (pings and acks carry it, so whoever this peer talks to
    /// knows it, even if the news of its joining passed them by), then the
    /// least-sent of the queue.
    fn piggyback(&mut self, introduce: bool, first: Option<Update<I>>) -> Vec<Update<I>> {
        let limit = self.retransmit_limit();
        let max = self.cfg.max_updates_per_message;
        let mut updates = Vec::new();
        if let Some(f) = first {
            updates.push(f);
        }
        if introduce {
            updates.push(self.own_state());
        }
        updates.extend(self.queue.take(max.saturating_sub(updates.len()), limit));
        updates
    }

    /// This peer's own entry, as others should hold it.
    fn own_state(&self) -> Update<I> {
        Update {
            id: self.me,
            incarnation: self.incarnation,
            status: if self.leaving {
                Status::Left
            } else {
                Status::Alive
            },
            from: self.me,
        }
    }

    fn gossip_now(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        for peer in self.random_live_n(self.cfg.gossip_fanout, &[]) {
            let updates = self.piggyback(false, None);
            if updates.is_empty() {
                break;
            }
            self.out.push((peer, Msg::Gossip { updates }));
        }
    }

    /// Sends this peer's whole member list to `to`, asking for its list.
    fn send_sync(&mut self, to: I) {
        let members = self.full_state();
        self.out.push((
            to,
            Msg::Sync {
                reply: true,
                members,
            },
        ));
    }

    /// This peer's whole member list, itself first.
    fn full_state(&self) -> Vec<Update<I>> {
        let mut all = Vec::with_capacity(self.members.len() + 1);
        all.push(self.own_state());
        all.extend(self.members.iter().map(|(id, m)| Update {
            id: *id,
            incarnation: m.incarnation,
            status: m.status,
            from: self.me,
        }));
        all[1..].sort_unstable_by_key(|u| u.id);
        all
    }

    // ---- random choices ----

    fn random_live(&mut self, exclude: &[I]) -> Option<I> {
        self.random_live_n(1, exclude).pop()
    }

    /// Up to `n` distinct live members outside `exclude`, at random: draws
    /// from the probe order (which holds every live member) with a bounded
    /// number of tries, so it costs O(n) however large the mesh.
    fn random_live_n(&mut self, n: usize, exclude: &[I]) -> Vec<I> {
        if let Some(neighbours) = &self.neighbours {
            let mut some: Vec<I> = neighbours
                .iter()
                .filter(|id| self.is_live(id) && !exclude.contains(id))
                .copied()
                .collect();
            some.sort_unstable();
            some.shuffle(&mut self.rng);
            some.truncate(n);
            return some;
        }
        let mut out: Vec<I> = Vec::with_capacity(n);
        let len = self.probe_order.len();
        if len == 0 {
            return out;
        }
        for _ in 0..n * 4 + 8 {
            if out.len() == n {
                break;
            }
            let id = self.probe_order[self.rng.gen_range(0..len)];
            if self.is_live(&id) && !exclude.contains(&id) && !out.contains(&id) {
                out.push(id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
