//! Where a job runs: a random live worker anywhere in the mesh.
//!
//! The candidates are this peer (if it has live workers for the app) and
//! every peer that is up and announced live workers for it, each weighted
//! by its number of live worker processes, so every worker in the mesh is
//! equally likely to get a job. A remote job goes over the network
//! [`Client`]; a local one straight into the app's queue.
pub mod fanout;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::apps::AppState;
use crate::apps::{AppName, MAX_WORKERS_PER_APP};
use crate::error::JobError;
use crate::mesh::desired::DesiredApps;
use crate::mesh::view::PeerView;
use crate::network::Client;
use crate::worker::Workers;

/// Peers tried for one job when the chosen one turns out not to run the
/// app any more (its announcement was stale).
const MAX_STALE_RETRIES: usize = 4;

/// How a job's worker is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Policy {
    /// A random live worker (each peer weighted by its live workers).
    #[default]
    Random,
    /// Power of two choices: two random candidates, the less loaded one
    /// (jobs this peer has outstanding there plus what it announced, per worker).
    LeastLoaded,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "random" => Ok(Policy::Random),
            "least-loaded" => Ok(Policy::LeastLoaded),
            other => Err(format!(
                "unknown dispatch policy {other:?} (random or least-loaded)"
            )),
        }
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    workers: Workers,
    net: Client,
    local_id: String,
    policy: Policy,
    /// Jobs this peer has out at each target right now (std mutex: never
    /// held across an await).
    outstanding: Arc<Mutex<HashMap<Target, u32>>>,
    /// Further attempts after a job's first one failed (peer lost, worker died).
    retries: u32,
    /// Sender: the network event loop. Which apps the mesh wants running.
    desired: watch::Receiver<Arc<DesiredApps>>,
    /// Until then (and until it hears from another peer) this peer is still
    /// learning the mesh: a job finding no worker waits instead of failing.
    learning_until: Option<Instant>,
    /// Jobs that entered the mesh here and are not answered yet (a peer
    /// that drains waits for them, wherever they run).
    entered: Arc<AtomicUsize>,
    /// See [`worker_cap`].
    unset_cap: u32,
}

/// Counts a job in [`Dispatcher::in_flight`] while it lives.
struct Entered(Arc<AtomicUsize>);

impl Entered {
    fn new(n: &Arc<AtomicUsize>) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Entered(n.clone())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Longest a job waits for a worker of an app that the mesh wants running
/// but that has none live at the moment (starting, restarting).
const WAIT_FOR_WORKER: Duration = Duration::from_secs(3);

/// What [`Dispatcher::run`] made of a job.
pub struct Outcome {
    pub result: Result<Done, JobError>,
    /// Workers it was tried on.
    pub attempts: u32,
    /// The peer of the last attempt (where it ran, or last failed).
    pub last_peer: Option<String>,
}

/// A job's result and where it ran.
pub struct Done {
    pub result: String,
    pub peer: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Target {
    Local,
    Remote(libp2p::PeerId),
}

impl Dispatcher {
    pub fn new(
        workers: Workers,
        net: Client,
        local_id: String,
        retries: u32,
        policy: Policy,
        desired: watch::Receiver<Arc<DesiredApps>>,
        learning_until: Option<Instant>,
    ) -> Self {
        Dispatcher {
            workers,
            net,
            local_id,
            retries,
            policy,
            outstanding: Arc::default(),
            desired,
            learning_until,
            entered: Arc::default(),
            unset_cap: unset_cap(),
        }
    }

    /// Jobs that entered the mesh at this peer and are not answered yet.
    pub fn in_flight(&self) -> usize {
        self.entered.load(Ordering::Relaxed)
    }

    /// Whether a worker of `app` is expected soon: the mesh wants it
    /// running, or this peer has not heard from the mesh yet.
    fn worker_expected(&self, app: &AppName) -> (bool, bool) {
        let wanted = self.desired.borrow().get(app).is_some_and(|d| d.run);
        let learning = self.learning_until.is_some_and(|t| Instant::now() < t)
            && !self.net.mesh().peers.iter().any(|p| p.is_up());
        (wanted, learning)
    }

    /// Every peer with a live worker of `app` (this one included), each
    /// once, with its id; waits like [`Self::run`] for a worker that is
    /// expected, and fails the same way when there is none.
    pub async fn everyone_running(
        &self,
        app: &AppName,
        deadline: Instant,
    ) -> Result<Vec<(Target, String)>, JobError> {
        self.pick_or_wait(app, &[], Policy::Random, deadline)
            .await?;
        let mut all = Vec::new();
        if self.workers.capacity(app) > 0 {
            all.push((Target::Local, self.local_id.clone()));
        }
        let mesh = self.net.mesh();
        for p in mesh.peers.iter().filter(|p| p.is_up()) {
            let Some(peer) = p.peer else { continue };
            if p.apps
                .iter()
                .any(|a| a.app == *app && matches!(a.state, AppState::Running | AppState::Starting))
            {
                all.push((Target::Remote(peer), p.id.clone()));
            }
        }
        Ok(all)
    }

    /// One attempt of a job on the given target (no failover: fan-out
    /// asks each peer in particular).
    pub async fn run_on(
        &self,
        target: Target,
        app: &AppName,
        payload: Arc<str>,
        deadline: Instant,
        job: u64,
    ) -> Result<String, JobError> {
        let _entered = Entered::new(&self.entered);
        self.attempt(target, app, payload, deadline, job).await
    }

    /// One attempt, counted as outstanding at its target ([`Self::run`]
    /// counts the job as entered once, whatever its attempts).
    async fn attempt(
        &self,
        target: Target,
        app: &AppName,
        payload: Arc<str>,
        deadline: Instant,
        job: u64,
    ) -> Result<String, JobError> {
        let _out = Outstanding::new(&self.outstanding, target);
        match target {
            Target::Local => self.workers.run(app, payload, deadline).await,
            Target::Remote(peer) => self.net.send_job(peer, app, &payload, deadline, job).await,
        }
    }

    /// `pick`, but when nothing runs `app` and a worker is expected soon,
    /// waits for one (polling, within the deadline and `WAIT_FOR_WORKER`).
    /// An app the mesh wants running with no live worker is `Busy` (503,
    /// try again), not `NotRunning`.
    async fn pick_or_wait(
        &self,
        app: &AppName,
        excluded: &[Target],
        policy: Policy,
        deadline: Instant,
    ) -> Result<(Target, String), JobError> {
        let until = deadline.min(Instant::now() + WAIT_FOR_WORKER);
        loop {
            let err = match self.pick(app, excluded, policy) {
                Ok(t) => return Ok(t),
                Err(e) => e,
            };
            let (wanted, learning) = self.worker_expected(app);
            if !(wanted || learning) {
                return Err(err);
            }
            if Instant::now() >= until {
                return Err(if wanted {
                    JobError::Busy(format!(
                        "{app} is started in the mesh but has no live worker right now (starting or restarting); try again"
                    ))
                } else {
                    err
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// The mesh's decisions as this peer holds them.
    pub fn desired(&self) -> Arc<DesiredApps> {
        self.desired.borrow().clone()
    }

    /// Runs `payload` (one line of compact JSON) on a worker of `app`.
    ///
    /// At-least-once: when the chosen peer cannot be reached or its
    /// connection drops, or the worker dies before answering, the job is
    /// tried again on another live worker, up to `retries` more times and
    /// never past the deadline. Returns the outcome and the attempts made.
    /// `job` is the job's id, carried to the peer that runs it (for logs).
    pub async fn run(
        &self,
        app: &AppName,
        payload: Arc<str>,
        timeout: Duration,
        policy: Policy,
        job: u64,
    ) -> Outcome {
        let _entered = Entered::new(&self.entered);
        let deadline = Instant::now() + timeout;
        let mut excluded: Vec<Target> = Vec::new();
        let mut stale = 0;
        let mut attempts = 0u32;
        let mut failures: Vec<String> = Vec::new();
        let mut last_peer: Option<String> = None;
        let out = |result, attempts, last_peer| Outcome {
            result,
            attempts,
            last_peer,
        };
        loop {
            let (target, peer_id) = match self.pick(app, &excluded, policy) {
                Ok(t) => t,
                // Everything that failed is excluded; a crashed worker's
                // peer may still have others (or restart it): try anyone.
                Err(_) if !failures.is_empty() || stale > 0 => {
                    match self.pick_or_wait(app, &[], policy, deadline).await {
                        Ok(t) => t,
                        Err(e) => return out(Err(e), attempts, last_peer),
                    }
                }
                Err(_) => match self.pick_or_wait(app, &excluded, policy, deadline).await {
                    Ok(t) => t,
                    Err(e) => return out(Err(e), attempts, last_peer),
                },
            };
            attempts += 1;
            last_peer = Some(peer_id.clone());
            let result = self
                .attempt(target, app, payload.clone(), deadline, job)
                .await;
            match result {
                Ok(result) => {
                    return out(
                        Ok(Done {
                            result,
                            peer: peer_id,
                        }),
                        attempts,
                        last_peer,
                    );
                }
                // A stale view (that peer no longer runs it), or that peer's
                // queues are full (another may have room): not a failure,
                // try elsewhere. When every candidate is full, the last
                // `Busy` goes back to the client (503).
                Err(JobError::NotRunning(_) | JobError::Busy(_))
                    if stale < MAX_STALE_RETRIES
                        && self
                            .pick(app, &[excluded.as_slice(), &[target]].concat(), policy)
                            .is_ok() =>
                {
                    stale += 1;
                    attempts -= 1;
                    excluded.push(target);
                }
                Err(JobError::NotRunning(_)) if stale < MAX_STALE_RETRIES => {
                    stale += 1;
                    attempts -= 1;
                    excluded.push(target);
                }
                Err(e @ (JobError::Unreachable(_) | JobError::WorkerCrashed(_))) => {
                    failures.push(format!("attempt {attempts} on {peer_id}: {e}"));
                    if failures.len() as u32 > self.retries || Instant::now() >= deadline {
                        let msg = if failures.len() == 1 {
                            e.to_string()
                        } else {
                            format!(
                                "the job failed on {} attempts (it may be a poison job): {}",
                                failures.len(),
                                failures.join(" | ")
                            )
                        };
                        return out(
                            Err(match e {
                                JobError::Unreachable(_) => JobError::Unreachable(msg),
                                _ => JobError::WorkerCrashed(msg),
                            }),
                            attempts,
                            last_peer,
                        );
                    }
                    tracing::debug!(app = %app, peer = %peer_id, "retrying a job elsewhere: {e}");
                    crate::obs::metrics::METRICS.retries.inc();
                    excluded.push(target);
                }
                Err(e) => return out(Err(e), attempts, last_peer),
            }
        }
    }

    /// A random target, weighted by capacity, with its peer id as text
    /// (taken from the view: encoding a peer id is not free).
    fn pick(
        &self,
        app: &AppName,
        excluded: &[Target],
        policy: Policy,
    ) -> Result<(Target, String), JobError> {
        let mut candidates: Vec<Candidate> = Vec::new();
        let local = self.workers.capacity(app);
        if local > 0 && !excluded.contains(&Target::Local) {
            candidates.push(Candidate {
                target: Target::Local,
                id: self.local_id.as_str(),
                weight: local as u64,
                announced_load: 0,
            });
        }
        let decided = self.desired.borrow().get(app).and_then(|d| d.workers);
        let cap = worker_cap(decided, local, self.unset_cap);
        let mesh = self.net.mesh();
        candidates.extend(remote_candidates(&mesh.peers, app, excluded, cap));
        let total: u64 = candidates.iter().map(|c| c.weight).sum();
        if total == 0 {
            return Err(JobError::NotRunning(format!(
                "{app} has no live worker anywhere in the mesh (start it with `disruptor start`)"
            )));
        }
        let mut rng = rand::thread_rng();
        let first = draw(&candidates, total, &mut rng);
        let chosen = match policy {
            Policy::Random => first,
            Policy::LeastLoaded => {
                // Two distinct candidates (the same one twice would
                // compare nothing).
                let mut second = draw(&candidates, total, &mut rng);
                if candidates.len() > 1 {
                    for _ in 0..8 {
                        if second != first {
                            break;
                        }
                        second = draw(&candidates, total, &mut rng);
                    }
                    if second == first {
                        second = (first + 1) % candidates.len();
                    }
                }
                let outstanding = self.outstanding.lock().expect("outstanding lock");
                // Load per worker, compared without division.
                let load = |i: usize| {
                    let c = &candidates[i];
                    outstanding.get(&c.target).copied().unwrap_or(0) as u64 + c.announced_load
                };
                let (la, lb) = (load(first), load(second));
                if lb * candidates[first].weight < la * candidates[second].weight {
                    second
                } else {
                    first
                }
            }
        };
        let c = &candidates[chosen];
        Ok((c.target, c.id.to_string()))
    }
}

/// A place a job may run, and how much of the draw it gets.
#[derive(Debug, Clone, PartialEq)]
struct Candidate<'a> {
    target: Target,
    id: &'a str,
    /// Live workers, as far as they are believed (see [`worker_cap`]).
    weight: u64,
    /// Jobs it announced in flight (remote only).
    announced_load: u64,
}

/// When the decision does not say how many workers each peer runs, a
/// remote peer is weighted by at most this many, or twice this machine's
/// cores if more (see [`worker_cap`]).
const UNSET_CAP_MIN: u32 = 8;

/// Most live workers a remote peer is believed to have for an app.
///
/// A peer's worker count is its own claim, and jobs are drawn in
/// proportion to it: a peer announcing 256 would draw nearly every job,
/// and see (and answer) them all. So it is capped by what the mesh's
/// decision allows:
/// - the decision's `workers`, when it sets one: every honest peer runs
///   exactly that many (the supervisor applies it as is);
/// - otherwise each peer runs its manifest's count or one per core, which
///   this peer cannot check. `unset_cap` is then twice this machine's
///   cores, at least [`UNSET_CAP_MIN`] (machines of one mesh are usually
///   alike; twice leaves room for a bigger one), and never less than what
///   this peer runs itself (a manifest may ask for more than the cores).
///   A peer claiming more gets no more jobs for it.
fn worker_cap(decided: Option<u32>, local: u32, unset_cap: u32) -> u32 {
    let cap = match decided {
        Some(w) => w,
        None => unset_cap.max(local),
    };
    cap.min(MAX_WORKERS_PER_APP)
}

/// [`worker_cap`]'s bound when the decision leaves the count open.
fn unset_cap() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    cores.saturating_mul(2).max(UNSET_CAP_MIN)
}

/// The up peers that announced live workers of `app`, weighted by their
/// workers capped at `cap` (a starting app counts as one).
fn remote_candidates<'a>(
    peers: &'a [PeerView],
    app: &AppName,
    excluded: &[Target],
    cap: u32,
) -> impl Iterator<Item = Candidate<'a>> {
    peers.iter().filter(|p| p.is_up()).filter_map(move |p| {
        let target = Target::Remote(p.peer?);
        if excluded.contains(&target) {
            return None;
        }
        let a = p.apps.iter().find(|a| a.app == *app)?;
        let weight = match a.state {
            AppState::Running => a.workers.min(cap),
            AppState::Starting => 1,
            _ => 0,
        };
        (weight > 0).then(|| Candidate {
            target,
            id: p.id.as_str(),
            weight: weight as u64,
            announced_load: a.in_flight.min(1 << 20) as u64,
        })
    })
}

/// Index of a candidate drawn with probability weight / `total`.
fn draw(candidates: &[Candidate], total: u64, rng: &mut impl Rng) -> usize {
    let mut r = rng.gen_range(0..total);
    for (i, c) in candidates.iter().enumerate() {
        if r < c.weight {
            return i;
        }
        r -= c.weight;
    }
    unreachable!("r < total")
}

/// Counts a job as outstanding at a target while it lives.
struct Outstanding<'a> {
    map: &'a Mutex<HashMap<Target, u32>>,
    target: Target,
}

impl<'a> Outstanding<'a> {
    fn new(map: &'a Mutex<HashMap<Target, u32>>, target: Target) -> Self {
        *map.lock()
            .expect("outstanding lock")
            .entry(target)
            .or_insert(0) += 1;
        Outstanding { map, target }
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().expect("outstanding lock");
        if let Some(n) = m.get_mut(&self.target) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.target);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppStatus;
    use rand::SeedableRng;

    fn peer(apps: Vec<AppStatus>) -> PeerView {
        let id = libp2p::PeerId::random();
        PeerView {
            id: id.to_string(),
            peer: Some(id),
            state: crate::mesh::view::PeerState::Up,
            reason: None,
            addrs: Vec::new(),
            http: None,
            first_seen_ms: 0,
            last_seen_ms: 0,
            since_ms: 0,
            started_ms: None,
            rtt_ms: None,
            connected: true,
            apps,
            links: Vec::new(),
            bundles: Vec::new(),
            remote_deploy: true,
        }
    }

    fn running(app: &AppName, workers: u32) -> AppStatus {
        AppStatus {
            app: app.clone(),
            state: AppState::Running,
            workers,
            in_flight: 0,
            clock: 1,
            error: None,
            version: None,
        }
    }

    /// Share of `draws` jobs that go to `peers[which]`.
    fn share(peers: &[PeerView], app: &AppName, cap: u32, which: usize, draws: u32) -> f64 {
        let candidates: Vec<Candidate> = remote_candidates(peers, app, &[], cap).collect();
        let total = candidates.iter().map(|c| c.weight).sum();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let target = Target::Remote(peers[which].peer.unwrap());
        let hits = (0..draws)
            .filter(|_| candidates[draw(&candidates, total, &mut rng)].target == target)
            .count();
        hits as f64 / draws as f64
    }

    #[test]
    fn a_peer_announcing_256_workers_draws_no_more_than_the_decision_allows() {
        let app = AppName::parse("apps/echo/echo").unwrap();
        let peers = vec![
            peer(vec![running(&app, 2)]),
            peer(vec![running(&app, 2)]),
            peer(vec![running(&app, 256)]), // the rogue
        ];
        // The decision asks for 2 workers per peer: everyone weighs 2.
        let cap = worker_cap(Some(2), 0, unset_cap());
        assert_eq!(cap, 2);
        let rogue = share(&peers, &app, cap, 2, 30_000);
        assert!(
            (rogue - 1.0 / 3.0).abs() < 0.02,
            "the rogue drew {rogue:.3}"
        );
        // Uncapped, it would draw 256 of every 260 jobs.
        let uncapped = share(&peers, &app, MAX_WORKERS_PER_APP, 2, 30_000);
        assert!(uncapped > 0.97, "{uncapped:.3}");
    }

    #[test]
    fn without_a_decided_count_the_cap_is_a_bound_a_real_default_stays_under() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let unset = unset_cap();
        assert!(unset >= UNSET_CAP_MIN && unset >= 2 * cores);
        assert_eq!(worker_cap(None, 0, unset), unset);
        // This peer's own count raises it (a manifest may ask for more).
        assert_eq!(worker_cap(None, unset + 5, unset), unset + 5);
        // Never above the hard limit, whatever is decided.
        assert_eq!(worker_cap(Some(10_000), 0, unset), MAX_WORKERS_PER_APP);
        assert_eq!(worker_cap(None, 10_000, unset), MAX_WORKERS_PER_APP);
        // A starting app counts one, stopped or missing nothing.
        let app = AppName::parse("apps/echo/echo").unwrap();
        let mut starting = running(&app, 256);
        starting.state = AppState::Starting;
        let mut failing = running(&app, 256);
        failing.state = AppState::Failing;
        let peers = vec![peer(vec![starting]), peer(vec![failing])];
        let weights: Vec<u64> = remote_candidates(&peers, &app, &[], unset)
            .map(|c| c.weight)
            .collect();
        assert_eq!(weights, vec![1]);
    }
}
