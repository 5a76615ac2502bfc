//! Where a job runs: a live worker anywhere in the mesh, and another one
//! when the first fails.
//!
//! - [`pick`]: the choice itself, a pure function of a snapshot (this
//!   peer's live workers, the mesh view, the jobs it has out);
//! - [`failover`]: what one job's failed attempts lead to;
//! - [`fanout`]: one job on every peer that runs the app;
//! - [`Dispatcher`] (here): the handle the HTTP layer uses; it reads the
//!   snapshot, runs attempts through the worker registry (local) or the
//!   network client (remote), and counts what is in flight.
//!
//! Dependencies point down: dispatch uses `worker` and `network`, which
//! know nothing of it.

pub mod failover;
pub mod fanout;
pub mod pick;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use crate::apps::AppName;
use crate::error::JobError;
use crate::mesh::desired::DesiredApps;
use crate::network::Client;
use crate::worker::Workers;
pub use failover::Failover;
use failover::Next;
pub use pick::{NoWorker, Policy, Snapshot, Target};

/// Longest a job waits for a worker of an app that the mesh wants running
/// but that has none live at the moment (starting, restarting).
const WAIT_FOR_WORKER: Duration = Duration::from_secs(3);

/// Routes jobs to workers anywhere in the mesh. Cheap to clone (handles).
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
    /// Jobs that entered the mesh here and are not answered yet.
    entered: Arc<Entered>,
    /// See [`pick::worker_cap`].
    unset_cap: u32,
}

/// Jobs that entered the mesh at this peer and are unanswered, with a
/// notification when the count reaches zero (a draining peer waits for it).
#[derive(Default)]
struct Entered {
    count: AtomicUsize,
    idle: Notify,
}

/// Counts jobs (one, or a batch's) in [`Entered`] while it lives.
struct EnteredGuard(Arc<Entered>, usize);

impl EnteredGuard {
    fn new(e: &Arc<Entered>, n: usize) -> Self {
        e.count.fetch_add(n, Ordering::Relaxed);
        EnteredGuard(e.clone(), n)
    }
}

impl Drop for EnteredGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(self.1, Ordering::AcqRel) == self.1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What [`Dispatcher::run`] made of a job.
pub struct Outcome {
    /// The result, or why there is none.
    pub result: Result<Done, JobError>,
    /// Workers it was tried on.
    pub attempts: u32,
    /// The peer of the last attempt (where it ran, or last failed).
    pub last_peer: Option<String>,
}

/// A job's result and where it ran.
pub struct Done {
    /// The worker's answer (one line of JSON).
    pub result: String,
    /// The id of the peer that ran it.
    pub peer: String,
}

impl Dispatcher {
    /// A dispatcher over this peer's `workers` and the mesh behind `net`.
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
            unset_cap: pick::unset_cap(),
        }
    }

    /// Jobs that entered the mesh at this peer and are not answered yet.
    pub fn in_flight(&self) -> usize {
        self.entered.count.load(Ordering::Acquire)
    }

    /// Returns once no job that entered here is unanswered.
    pub async fn until_idle(&self) {
        loop {
            let idle = self.entered.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The dispatch policy of jobs that do not ask for one.
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
    /// never past the deadline (see [`failover`]). `job` is the job's id,
    /// carried to the peer that runs it (for logs).
    pub async fn run(
        &self,
        app: &AppName,
        payload: Arc<str>,
        timeout: Duration,
        policy: Policy,
        job: u64,
    ) -> Outcome {
        let deadline = Instant::now() + timeout;
        self.run_from(app, payload, deadline, policy, job, Failover::default())
            .await
    }

    /// [`Self::run`] for a job whose attempts so far are `f` (a line of a
    /// batch that failed: see [`Self::first_failure`]).
    pub async fn run_from(
        &self,
        app: &AppName,
        payload: Arc<str>,
        deadline: Instant,
        policy: Policy,
        job: u64,
        mut f: Failover,
    ) -> Outcome {
        let _entered = EnteredGuard::new(&self.entered, 1);
        let mut last_peer = None;
        let result = loop {
            // Once something failed, a job with no candidate left outside
            // the excluded ones goes back to anyone.
            let choice = match self.pick(app, f.excluded(), policy) {
                Ok(t) => Ok(t),
                Err(_) if f.has_failed() => self.pick_or_wait(app, &[], policy, deadline).await,
                Err(_) => self.pick_or_wait(app, f.excluded(), policy, deadline).await,
            };
            let (target, peer) = match choice {
                Ok(t) => t,
                Err(e) => break Err(e),
            };
            last_peer = Some(peer.clone());
            let error = match self
                .attempt(target, app, payload.clone(), deadline, job)
                .await
            {
                Ok(result) => {
                    f.succeeded();
                    break Ok(Done { result, peer });
                }
                Err(e) => e,
            };
            if let Err(e) = self.after(&mut f, app, policy, target, &peer, error, deadline) {
                break Err(e);
            }
        };
        Outcome {
            result,
            attempts: f.attempts(),
            last_peer,
        }
    }

    /// What failover makes of `error` from `target` (peer `peer`): `Ok`
    /// to try again elsewhere, or the job's final error.
    #[allow(clippy::too_many_arguments)]
    fn after(
        &self,
        f: &mut Failover,
        app: &AppName,
        policy: Policy,
        target: Target,
        peer: &str,
        error: JobError,
        deadline: Instant,
    ) -> Result<(), JobError> {
        let elsewhere = |ex: &[Target]| self.pick(app, ex, policy).is_ok();
        let expired = Instant::now() >= deadline;
        match f.failed(error, target, peer, elsewhere, self.retries, expired) {
            Next::Again => {
                tracing::debug!(app = %app, peer = %peer, "trying the job elsewhere");
                crate::obs::metrics::METRICS.retries.inc();
                Ok(())
            }
            Next::GiveUp(e) => Err(e),
        }
    }

    /// A job's first attempt, made in a batch on `target` (peer `peer`),
    /// failed with `error`: its failover state to go on with
    /// ([`Self::run_from`]), or its final error.
    pub fn first_failure(
        &self,
        app: &AppName,
        policy: Policy,
        target: Target,
        peer: &str,
        error: JobError,
        deadline: Instant,
    ) -> Result<Failover, JobError> {
        let mut f = Failover::default();
        self.after(&mut f, app, policy, target, peer, error, deadline)?;
        Ok(f)
    }

    /// Where a batch of `app`'s jobs goes: a target chosen by `policy`,
    /// waiting like [`Self::run`] for a worker that is expected.
    pub async fn choose(
        &self,
        app: &AppName,
        policy: Policy,
        deadline: Instant,
    ) -> Result<(Target, String), JobError> {
        self.pick_or_wait(app, &[], policy, deadline).await
    }

    /// One attempt of a batch of jobs of `app` on `target`: one result per
    /// payload, in their order, or why the batch as a whole got none.
    /// Counts as `payloads.len()` jobs entered and outstanding at the
    /// target while it runs.
    pub async fn run_batch_on(
        &self,
        target: Target,
        app: &AppName,
        payloads: &[Arc<str>],
        deadline: Instant,
        job: u64,
    ) -> Result<Vec<Result<String, JobError>>, JobError> {
        let n = payloads.len();
        let _entered = EnteredGuard::new(&self.entered, n);
        let _out = Outstanding::new(&self.outstanding, target, n as u32);
        match target {
            Target::Local => {
                self.workers
                    .run_batch(app, payloads.to_vec(), deadline)
                    .await
            }
            Target::Remote(peer) => {
                self.net
                    .send_batch(peer, app, payloads, deadline, job)
                    .await
            }
        }
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
        let mesh = self.net.mesh();
        let snap = self.snapshot(app, &mesh.peers);
        let all = pick::everyone(&snap, app);
        Ok(all.into_iter().map(|(t, id)| (t, id.to_string())).collect())
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
        let _entered = EnteredGuard::new(&self.entered, 1);
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
        let _out = Outstanding::new(&self.outstanding, target, 1);
        match target {
            Target::Local => self.workers.run(app, payload, deadline).await,
            Target::Remote(peer) => self.net.send_job(peer, app, &payload, deadline, job).await,
        }
    }

    /// What a pick for `app` is made from, over `peers` (the mesh view).
    fn snapshot<'a>(
        &'a self,
        app: &AppName,
        peers: &'a [crate::mesh::view::PeerView],
    ) -> Snapshot<'a> {
        let local = self.workers.capacity(app);
        let decided = self.desired.borrow().get(app).and_then(|d| d.workers);
        Snapshot {
            local: (self.local_id.as_str(), local),
            peers,
            cap: pick::worker_cap(decided, local, self.unset_cap),
        }
    }

    /// A target for `app` outside `excluded`, now, with its peer id.
    fn pick(
        &self,
        app: &AppName,
        excluded: &[Target],
        policy: Policy,
    ) -> Result<(Target, String), JobError> {
        let mesh = self.net.mesh();
        let snap = self.snapshot(app, &mesh.peers);
        let outstanding = |t: Target| {
            let map = self.outstanding.lock().expect("outstanding lock");
            map.get(&t).copied().unwrap_or(0)
        };
        let mut rng = rand::thread_rng();
        match pick::pick(&snap, app, excluded, policy, outstanding, &mut rng) {
            Ok((target, id)) => Ok((target, id.to_string())),
            Err(NoWorker) => Err(JobError::NotRunning(format!(
                "{app} has no live worker anywhere in the mesh (start it with `disruptor start`)"
            ))),
        }
    }

    /// Whether a worker of `app` is expected soon: the mesh wants it
    /// running, or this peer has not heard from the mesh yet.
    fn worker_expected(&self, app: &AppName) -> (bool, bool) {
        let wanted = self.desired.borrow().get(app).is_some_and(|d| d.run);
        let learning = self.learning_until.is_some_and(|t| Instant::now() < t)
            && self.net.mesh().up().next().is_none();
        (wanted, learning)
    }

    /// `pick`, but when nothing runs `app` and a worker is expected soon,
    /// waits for one (within the deadline and [`WAIT_FOR_WORKER`]). An app
    /// the mesh wants running with no live worker is `Busy` (503, try
    /// again), not `NotRunning`.
    async fn pick_or_wait(
        &self,
        app: &AppName,
        excluded: &[Target],
        policy: Policy,
        deadline: Instant,
    ) -> Result<(Target, String), JobError> {
        let until = deadline.min(Instant::now() + WAIT_FOR_WORKER);
        let mut changes = self.changes();
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
            changes.next(until).await;
        }
    }

    /// Notifications of what can change a pick's answer.
    fn changes(&self) -> Changes {
        Changes {
            mesh: self.net.watch_mesh(),
            desired: {
                let mut rx = self.desired.clone();
                rx.mark_unchanged();
                rx
            },
            workers: self.workers.watch_changes(),
        }
    }
}

/// What a waiting pick wakes up on: the mesh view, the decisions, and this
/// peer's workers.
struct Changes {
    mesh: watch::Receiver<Arc<crate::mesh::view::MeshView>>,
    desired: watch::Receiver<Arc<DesiredApps>>,
    workers: watch::Receiver<u64>,
}

impl Changes {
    /// Returns at the next change of any of them, or at `until`. A closed
    /// channel (the peer is stopping) is left out rather than woken on.
    async fn next(&mut self, until: Instant) {
        tokio::select! {
            Ok(()) = self.mesh.changed() => {}
            Ok(()) = self.desired.changed() => {}
            Ok(()) = self.workers.changed() => {}
            _ = tokio::time::sleep_until(until) => {}
        }
    }
}

/// Counts `n` jobs as outstanding at a target while it lives.
struct Outstanding<'a> {
    map: &'a Mutex<HashMap<Target, u32>>,
    target: Target,
    n: u32,
}

impl<'a> Outstanding<'a> {
    fn new(map: &'a Mutex<HashMap<Target, u32>>, target: Target, n: u32) -> Self {
        *map.lock()
            .expect("outstanding lock")
            .entry(target)
            .or_insert(0) += n;
        Outstanding { map, target, n }
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        let mut m = self.map.lock().expect("outstanding lock");
        if let Some(n) = m.get_mut(&self.target) {
            *n = n.saturating_sub(self.n);
            if *n == 0 {
                m.remove(&self.target);
            }
        }
    }
}
