//! A simulator of the SWIM membership ([`crate::mesh::swim`]): thousands
//! of copies of the real state machine in one process, over a simulated
//! network with latency and loss, on virtual time.
//!
//! Deterministic: one seeded random source decides latencies, losses and
//! every peer's seed, and events at the same virtual instant run in the
//! order they were scheduled; a seed reproduces a run exactly.
//!
//! An event queue holds two kinds of events: a message arriving at a peer,
//! and a peer's wake-up (when its [`Swim::next_wake`] is due). Handling
//! either runs the peer's state machine, then carries out what it asks:
//! each send becomes a delivery after a random latency (or is lost), and
//! its next wake-up is scheduled. Identities are `u32`s (the state machine
//! is generic over them); bytes are counted as a `PeerId` would make them.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::swim::{Config, Event, Msg, Status, Swim};

/// What a simulation runs on.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Peers in the mesh.
    pub peers: usize,
    /// Probability that a message is lost.
    pub loss: f64,
    /// One-way latency, drawn uniformly from this range.
    pub latency: (Duration, Duration),
    /// Seeds everything.
    pub seed: u64,
    /// Bytes per identity on the wire (38: an Ed25519 `PeerId`).
    pub id_bytes: usize,
    /// Peers start this far apart, each joining through the one before
    /// it (a chain, as `scripts/mesh-bench` starts real peers).
    pub start_gap: Duration,
    /// The protocol's parameters.
    pub swim: Config,
}

impl SimConfig {
    /// `peers` peers with memberlist's LAN parameters, 1-5 ms latency.
    pub fn new(peers: usize, loss: f64, seed: u64) -> Self {
        SimConfig {
            peers,
            loss,
            latency: (Duration::from_millis(1), Duration::from_millis(5)),
            seed,
            id_bytes: 38,
            start_gap: Duration::from_millis(1),
            swim: Config {
                max_members: peers.max(16) * 2,
                ..Config::default()
            },
        }
    }
}

enum What {
    Wake(u32),
    Deliver { to: u32, from: u32, msg: Msg<u32> },
}

struct Scheduled {
    at: Duration,
    seq: u64,
    what: What,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

/// Traffic counted over a window.
#[derive(Debug, Default, Clone, Copy)]
pub struct Traffic {
    /// Messages sent.
    pub messages: u64,
    /// Bytes sent.
    pub bytes: u64,
    /// The largest message, in bytes.
    pub largest: usize,
}

/// A mesh of simulated peers.
pub struct Sim {
    cfg: SimConfig,
    t0: Instant,
    now: Duration,
    peers: Vec<Option<Swim<u32>>>,
    killed: Vec<bool>,
    wake_at: Vec<Option<Duration>>,
    queue: BinaryHeap<Reverse<Scheduled>>,
    seq: u64,
    rng: StdRng,
    /// Traffic since [`Sim::reset_traffic`].
    pub traffic: Traffic,
    /// Every `Down` event: (when, observer, subject).
    pub downs: Vec<(Duration, u32, u32)>,
    /// Events handled (wake-ups and deliveries).
    pub handled: u64,
}

impl Sim {
    /// A mesh of `cfg.peers` peers, none started yet.
    pub fn new(cfg: SimConfig) -> Self {
        let n = cfg.peers;
        Sim {
            rng: StdRng::seed_from_u64(cfg.seed),
            cfg,
            t0: Instant::now(),
            now: Duration::ZERO,
            peers: (0..n).map(|_| None).collect(),
            killed: vec![false; n],
            wake_at: vec![None; n],
            queue: BinaryHeap::new(),
            seq: 0,
            traffic: Traffic::default(),
            downs: Vec::new(),
            handled: 0,
        }
    }

    /// Virtual time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Peer `i`'s state machine (once started).
    pub fn peer(&self, i: u32) -> Option<&Swim<u32>> {
        self.peers[i as usize].as_ref()
    }

    /// Adds a peer (not started yet) to the mesh; returns its index.
    pub fn add_peer(&mut self) -> u32 {
        self.peers.push(None);
        self.killed.push(false);
        self.wake_at.push(None);
        (self.peers.len() - 1) as u32
    }

    /// Starts peer `i` now, joining through `seed` if given.
    pub fn start(&mut self, i: u32, seed: Option<u32>) {
        let peer_seed = self.rng.r#gen();
        let mut swim = Swim::new(i, 0, self.cfg.swim.clone(), self.t0 + self.now, peer_seed);
        if let Some(s) = seed {
            swim.join(s, self.t0 + self.now);
        }
        self.peers[i as usize] = Some(swim);
        self.after(i);
    }

    /// Starts every peer as a chain, `start_gap` apart, running the mesh
    /// meanwhile; returns when the last one started.
    pub fn start_chain(&mut self) {
        for i in 0..self.cfg.peers as u32 {
            if i > 0 {
                let until = self.now + self.cfg.start_gap;
                self.run_until(until);
            }
            self.start(i, i.checked_sub(1));
        }
    }

    /// Stops peer `i` without a word (its messages are dropped from now).
    pub fn kill(&mut self, i: u32) {
        self.killed[i as usize] = true;
    }

    /// Whether peer `i` was killed.
    pub fn is_killed(&self, i: u32) -> bool {
        self.killed[i as usize]
    }

    /// Starts counting traffic afresh.
    pub fn reset_traffic(&mut self) {
        self.traffic = Traffic::default();
    }

    /// Runs every event up to `until` (virtual).
    pub fn run_until(&mut self, until: Duration) {
        while let Some(Reverse(next)) = self.queue.peek() {
            if next.at > until {
                break;
            }
            let Reverse(ev) = self.queue.pop().expect("peeked");
            self.now = ev.at;
            self.handled += 1;
            match ev.what {
                What::Wake(i) => {
                    if self.wake_at[i as usize] != Some(ev.at) || self.killed[i as usize] {
                        continue;
                    }
                    self.wake_at[i as usize] = None;
                    let now = self.t0 + self.now;
                    if let Some(p) = self.peers[i as usize].as_mut() {
                        p.tick(now);
                        // A tick does everything due, so the next wake-up
                        // is later (else the simulation would spin).
                        debug_assert!(p.next_wake() > now, "peer {i} wakes again at once");
                    }
                    self.after(i);
                }
                What::Deliver { to, from, msg } => {
                    if self.killed[to as usize] {
                        continue;
                    }
                    let now = self.t0 + self.now;
                    let Some(p) = self.peers[to as usize].as_mut() else {
                        continue;
                    };
                    p.handle(from, msg, now);
                    self.after(to);
                }
            }
        }
        self.now = self.now.max(until);
    }

    /// Runs until `done` holds (checked every `step`) or `within` passed;
    /// returns the virtual time it took, or None.
    pub fn run_until_true(
        &mut self,
        within: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now - start >= within {
                return None;
            }
            let next = self.now + step;
            self.run_until(next);
        }
    }

    /// Whether every running peer sees every other running peer as alive
    /// or suspect, and nothing else as such.
    pub fn converged(&self) -> bool {
        let running = self.running().count();
        self.running().all(|(_, p)| p.live_members() == running - 1)
    }

    /// How many running peers hold `subject` as dead or left.
    pub fn seen_down_by(&self, subject: u32) -> usize {
        self.running()
            .filter(|(i, p)| {
                *i != subject
                    && matches!(p.status(&subject), Some(Status::Dead | Status::Left) | None)
            })
            .count()
    }

    /// Running peers.
    pub fn running(&self) -> impl Iterator<Item = (u32, &Swim<u32>)> {
        self.peers
            .iter()
            .enumerate()
            .filter(|(i, _)| !self.killed[*i])
            .filter_map(|(i, p)| p.as_ref().map(|p| (i as u32, p)))
    }

    /// `Down` events about peers that were not killed: false downs.
    pub fn false_downs(&self) -> usize {
        self.downs
            .iter()
            .filter(|(_, _, subject)| !self.killed[*subject as usize])
            .count()
    }

    /// Carries out what peer `i` asked for and schedules its next wake-up.
    fn after(&mut self, i: u32) {
        let Some(p) = self.peers[i as usize].as_mut() else {
            return;
        };
        let sends: Vec<(u32, Msg<u32>)> = p.drain_sends().collect();
        let events: Vec<Event<u32>> = p.drain_events().collect();
        let wake = p.next_wake().saturating_duration_since(self.t0);
        for e in events {
            if let Event::Down { id, left: false } = e {
                self.downs.push((self.now, i, id));
            }
        }
        for (to, msg) in sends {
            let size = msg.wire_size(self.cfg.id_bytes);
            self.traffic.messages += 1;
            self.traffic.bytes += size as u64;
            self.traffic.largest = self.traffic.largest.max(size);
            if self.rng.gen_bool(self.cfg.loss.clamp(0.0, 1.0)) {
                continue;
            }
            let (lo, hi) = self.cfg.latency;
            let latency = if hi > lo {
                self.rng.gen_range(lo..hi)
            } else {
                lo
            };
            let at = self.now + latency;
            self.push(at, What::Deliver { to, from: i, msg });
        }
        // A wake-up in the past runs at once (but never twice at one
        // instant, which could spin).
        let wake = wake.max(self.now + Duration::from_micros(1));
        if self.wake_at[i as usize].is_none_or(|w| wake < w) {
            self.wake_at[i as usize] = Some(wake);
            self.push(wake, What::Wake(i));
        }
    }

    fn push(&mut self, at: Duration, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            what,
        }));
    }
}

/// What one simulated scenario measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Peers.
    pub peers: usize,
    /// Loss rate.
    pub loss: f64,
    /// From the last start until every peer sees every other (None: not
    /// within the limit).
    pub converged: Option<Duration>,
    /// From the start of one more peer, joining the formed mesh through a
    /// random member, until every peer sees every other again: how long a
    /// single join takes to reach everyone (the mesh-wide start above
    /// measures a burst of joins).
    pub joined: Option<Duration>,
    /// From a kill until the first survivor holds the peer dead.
    pub detected_first: Option<Duration>,
    /// From a kill until every survivor does.
    pub detected_all: Option<Duration>,
    /// Downs of peers that were not killed, over the whole run.
    pub false_downs: usize,
    /// Idle traffic per peer per second (messages, bytes).
    pub idle_per_peer: (f64, f64),
    /// The largest message seen while idle, in bytes.
    pub largest_idle: usize,
    /// Virtual seconds simulated.
    pub simulated: Duration,
}

/// Virtual time between convergence and the idle measurement.
pub const SETTLE: Duration = Duration::from_secs(30);

/// Forms a mesh as a chain, idles for `idle`, starts one more peer and
/// waits until everyone sees everyone, kills one peer and waits for every
/// survivor to see it down (each step bounded by `limit`).
pub fn scenario(cfg: SimConfig, idle: Duration, limit: Duration) -> Report {
    let (peers, loss, seed) = (cfg.peers, cfg.loss, cfg.seed);
    let mut sim = Sim::new(cfg);
    sim.start_chain();
    let step = Duration::from_millis(50);
    let converged = sim.run_until_true(limit, step, Sim::converged);
    // Idle traffic, once the news of the joins has drained: every peer
    // learned every member as news and passes it on a bounded number of
    // times, which takes seconds after convergence (a second of settling
    // measured that tail, not the idle mesh: 4-5x the steady figures at
    // 1,000 peers, more the sooner the mesh converged).
    let settle = sim.now() + SETTLE;
    sim.run_until(settle);
    sim.reset_traffic();
    let idle_end = sim.now() + idle;
    sim.run_until(idle_end);
    let t = sim.traffic;
    let secs = idle.as_secs_f64().max(1e-9);
    let idle_per_peer = (
        t.messages as f64 / peers as f64 / secs,
        t.bytes as f64 / peers as f64 / secs,
    );
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    let late = sim.add_peer();
    let through = rng.gen_range(0..peers) as u32;
    sim.start(late, Some(through));
    let joined = sim.run_until_true(limit, Duration::from_millis(10), Sim::converged);
    let victim = rng.gen_range(0..peers) as u32;
    sim.kill(victim);
    let killed_at = sim.now();
    // All but the victim, the late joiner included.
    let survivors = peers;
    let detected_first = sim.run_until_true(limit, Duration::from_millis(10), |s| {
        s.downs.iter().any(|(_, _, subject)| *subject == victim)
    });
    let detected_all = detected_first.and_then(|_| {
        sim.run_until_true(limit, step, |s| s.seen_down_by(victim) == survivors)
            .map(|_| sim.now() - killed_at)
    });
    Report {
        peers,
        loss,
        converged,
        joined,
        detected_first,
        detected_all,
        false_downs: sim.false_downs(),
        idle_per_peer,
        largest_idle: t.largest,
        simulated: sim.now(),
    }
}
