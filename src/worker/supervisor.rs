//! Keeping an app's worker processes alive and feeding them jobs.
//!
//! [`Workers`] is the registry of this peer's apps (a cloneable handle; the
//! map sits behind a `std::sync::Mutex` that is never held across an
//! `.await`). Each running app has a bounded MPMC job queue
//! (`async_channel`) and one task per worker process that owns that
//! process: it takes a job from the queue, runs it, replies through the
//! job's oneshot, and restarts its process with capped exponential backoff
//! when it exits.
//!
//! Correlation: a worker process holds at most one job at a time, so an
//! answer always belongs to the job just sent. Parallelism comes from
//! several processes per app (default: one per core).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::protocol::{Line, MAX_RESULT_BYTES, WorkerProcess};
use crate::apps::{AppName, AppSpec, AppsDir, MAX_WORKERS_PER_APP};
use crate::apps::{AppState, AppStatus, LocalApp, WorkerDetail, WorkerState};
use crate::deploy::Store;
use crate::error::JobError;
use crate::mesh::desired::{DesiredApp, DesiredApps};

/// Jobs that may wait in one app's queue on this peer; more are refused
/// with 503 rather than queued without bound.
pub const QUEUE_PER_WORKER: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A process that ran this long resets the crash count.
const HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// A new worker process counts as running once it has stayed up this long
/// (or answered a job).
const SETTLE: Duration = Duration::from_millis(300);
/// Crashes in a row after which a worker shows as failing.
const FAILING_AFTER: u32 = 3;

/// A job for a local worker.
pub struct LocalJob {
    /// Compact JSON text, no newline.
    pub payload: Arc<str>,
    pub deadline: Instant,
    /// Receiver: whoever submitted the job (the HTTP handler, or the task
    /// answering a remote peer). Dropped unanswered when the app stops.
    pub reply: oneshot::Sender<Result<String, JobError>>,
}

#[derive(Clone)]
pub struct Workers {
    inner: Arc<Inner>,
}

struct Inner {
    apps_dir: AppsDir,
    /// Deployed bundles; none on a peer started with `--no-remote-deploy`
    /// (it runs only what its `--apps` directory has).
    store: Option<Store>,
    default_workers: u32,
    grace: Duration,
    apps: Mutex<HashMap<AppName, Entry>>,
    tracker: TaskTracker,
    /// Set when the peer is stopping: no new jobs, the queued ones finish.
    draining: std::sync::atomic::AtomicBool,
}

enum Resolved {
    Ready(AppSpec, Option<String>),
    /// Its deployed version is not here yet.
    Pending(String),
    Failed(String),
}

// One entry per app, few apps: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Running(Runner),
    Missing { clock: u64, error: String },
    Stopped { clock: u64 },
}

struct Runner {
    spec: AppSpec,
    /// The bundle it runs, if deployed.
    version: Option<String>,
    clock: u64,
    workers: u32,
    /// Receivers: the runner's worker tasks. Closing it (on stop) ends them
    /// once the queue is empty; dropping it fails the queued jobs.
    queue: async_channel::Sender<LocalJob>,
    stop: CancellationToken,
    slots: Vec<Arc<Mutex<WorkerDetail>>>,
}

impl Runner {
    fn live(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.lock().expect("slot lock").state == WorkerState::Running)
            .count() as u32
    }

    /// Jobs being run by this runner's processes right now.
    fn busy(&self) -> u32 {
        self.slots
            .iter()
            .map(|s| s.lock().expect("slot lock").in_flight)
            .sum()
    }

    fn state(&self) -> AppState {
        let states: Vec<WorkerState> = self
            .slots
            .iter()
            .map(|s| s.lock().expect("slot lock").state)
            .collect();
        if states.contains(&WorkerState::Running) {
            AppState::Running
        } else if states.iter().all(|s| *s == WorkerState::Failing) {
            AppState::Failing
        } else {
            AppState::Starting
        }
    }

    fn shutdown(self) {
        self.queue.close();
        self.stop.cancel();
    }
}

impl Workers {
    pub fn new(
        apps_dir: AppsDir,
        store: Option<Store>,
        default_workers: u32,
        grace: Duration,
    ) -> Workers {
        Workers {
            inner: Arc::new(Inner {
                apps_dir,
                store,
                default_workers: default_workers.max(1),
                grace,
                apps: Mutex::new(HashMap::new()),
                tracker: TaskTracker::new(),
                draining: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Brings local workers in line with the mesh's desired state. Apps that
    /// were missing are resolved again each time, so an app copied into the
    /// apps directory later is picked up.
    pub fn apply(&self, desired: &DesiredApps) {
        let mut apps = self.inner.apps.lock().expect("apps lock");
        for d in desired.entries() {
            let current = apps.remove(&d.app);
            let next = if d.run {
                let resolved = self.resolve(d);
                match (current, resolved) {
                    // The new version is still on its way: keep running
                    // what runs (or wait for it).
                    (Some(Entry::Running(mut r)), Resolved::Pending(_)) => {
                        r.clock = d.clock;
                        Entry::Running(r)
                    }
                    (_, Resolved::Pending(why)) => Entry::Missing {
                        clock: d.clock,
                        error: why,
                    },
                    (current, Resolved::Failed(e)) => {
                        if let Some(Entry::Running(r)) = current {
                            r.shutdown();
                        }
                        Entry::Missing {
                            clock: d.clock,
                            error: e,
                        }
                    }
                    (current, Resolved::Ready(spec, version)) => {
                        let want = d
                            .workers
                            .or(spec.workers)
                            .unwrap_or(self.inner.default_workers)
                            .clamp(1, MAX_WORKERS_PER_APP);
                        match current {
                            Some(Entry::Running(mut r))
                                if want == r.workers && spec == r.spec && version == r.version =>
                            {
                                r.clock = d.clock;
                                Entry::Running(r)
                            }
                            Some(Entry::Running(r)) => {
                                // New workers first; the old ones finish
                                // what they hold, then stop.
                                tracing::info!(app = %d.app, workers = want, version = ?version.as_deref().map(|v| &v[..12]), source = %spec.source.display(), "moving app to new workers (new version or settings)");
                                let next = self.spawn_runner(spec, want, d.clock, version);
                                self.retire(r);
                                Entry::Running(next)
                            }
                            _ => {
                                tracing::info!(app = %d.app, workers = want, version = ?version.as_deref().map(|v| &v[..12]), source = %spec.source.display(), "starting app");
                                Entry::Running(self.spawn_runner(spec, want, d.clock, version))
                            }
                        }
                    }
                }
            } else {
                if let Some(Entry::Running(r)) = current {
                    tracing::info!(app = %d.app, "stopping app");
                    r.shutdown();
                }
                Entry::Stopped { clock: d.clock }
            };
            apps.insert(d.app.clone(), next);
        }
    }

    /// Where `d`'s app comes from: its deployed bundle (when it has one
    /// and this peer takes deployments), else the `--apps` directory.
    fn resolve(&self, d: &DesiredApp) -> Resolved {
        match (&d.bundle, &self.inner.store) {
            (Some(b), Some(store)) => {
                if !store.has(&b.hash) {
                    return Resolved::Pending(format!(
                        "fetching version {} ({} bytes) from the mesh",
                        &b.hash[..12],
                        b.size
                    ));
                }
                match store.resolve(&b.hash, &d.app) {
                    Ok(spec) => Resolved::Ready(spec, Some(b.hash.clone())),
                    Err(e) => Resolved::Failed(e.to_string()),
                }
            }
            _ => match self.inner.apps_dir.resolve(&d.app) {
                Ok(spec) => Resolved::Ready(spec, None),
                Err(e) => Resolved::Failed(e.to_string()),
            },
        }
    }

    /// Lets a replaced runner finish the jobs it holds (nobody sends it
    /// more: it is out of the table), then stops it.
    fn retire(&self, r: Runner) {
        let grace = self.inner.grace.max(Duration::from_secs(30));
        self.inner.tracker.spawn(async move {
            let started = tokio::time::Instant::now();
            while (r.busy() > 0 || !r.queue.is_empty()) && started.elapsed() < grace {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            r.shutdown();
        });
    }

    /// Hashes of the bundles this peer holds (and serves), at most as many
    /// as an announcement carries. From memory: no file is read (see
    /// [`Store::list`]).
    pub fn held_bundles(&self) -> Vec<String> {
        self.inner
            .store
            .as_ref()
            .map(|s| s.list(crate::mesh::membership::MAX_BUNDLES))
            .unwrap_or_default()
    }

    /// The deployed versions this peer's apps run now (their bundles must
    /// not be collected).
    pub fn running_versions(&self) -> Vec<String> {
        let apps = self.inner.apps.lock().expect("apps lock");
        apps.values()
            .filter_map(|e| match e {
                Entry::Running(r) => r.version.clone(),
                _ => None,
            })
            .collect()
    }

    /// The store of deployed bundles, if this peer takes deployments.
    pub fn store(&self) -> Option<&Store> {
        self.inner.store.as_ref()
    }

    fn spawn_runner(
        &self,
        spec: AppSpec,
        workers: u32,
        clock: u64,
        version: Option<String>,
    ) -> Runner {
        let (tx, rx) = async_channel::bounded(QUEUE_PER_WORKER * workers as usize);
        let stop = CancellationToken::new();
        let mut slots = Vec::new();
        for index in 0..workers {
            let slot = Arc::new(Mutex::new(WorkerDetail {
                index,
                pid: None,
                state: WorkerState::Starting,
                restarts: 0,
                jobs_done: 0,
                in_flight: 0,
                last_error: None,
            }));
            slots.push(slot.clone());
            self.inner.tracker.spawn(worker_task(
                spec.clone(),
                rx.clone(),
                slot,
                stop.clone(),
                self.inner.grace,
            ));
        }
        Runner {
            spec,
            version,
            clock,
            workers,
            queue: tx,
            stop,
            slots,
        }
    }

    /// Queues a job for one of this peer's workers of `app`.
    /// Stops taking new jobs (they are refused as "not running here", which
    /// callers answer by trying another peer); jobs already queued finish.
    pub fn start_draining(&self) {
        self.inner
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Jobs queued for or held by this peer's workers.
    pub fn in_flight(&self) -> u32 {
        let apps = self.inner.apps.lock().expect("apps lock");
        apps.values()
            .map(|e| match e {
                Entry::Running(r) => r.busy() + r.queue.len() as u32,
                _ => 0,
            })
            .sum()
    }

    /// Runs a job on one of this peer's own workers and waits for its
    /// result (the worker enforces the deadline while it runs the job; the
    /// wait here covers the queue and a worker task that went away).
    pub async fn run(
        &self,
        app: &AppName,
        payload: Arc<str>,
        deadline: Instant,
    ) -> Result<String, JobError> {
        let (reply, rx) = oneshot::channel();
        self.submit(
            app,
            LocalJob {
                payload,
                deadline,
                reply,
            },
        )?;
        match tokio::time::timeout_at(deadline + Duration::from_millis(200), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(JobError::NotRunning(format!(
                "{app} was stopped on this peer"
            ))),
            Err(_) => Err(JobError::Timeout("no result within the timeout".into())),
        }
    }

    pub fn submit(&self, app: &AppName, job: LocalJob) -> Result<(), JobError> {
        if self
            .inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return Err(JobError::NotRunning("this peer is stopping".into()));
        }
        let apps = self.inner.apps.lock().expect("apps lock");
        let Some(Entry::Running(r)) = apps.get(app) else {
            return Err(JobError::NotRunning(format!(
                "{app} is not running on this peer"
            )));
        };
        match r.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(async_channel::TrySendError::Full(_)) => Err(JobError::Busy(format!(
                "{app}: all {} queue places on this peer are taken",
                r.queue.capacity().unwrap_or(0)
            ))),
            Err(async_channel::TrySendError::Closed(_)) => Err(JobError::NotRunning(format!(
                "{app} is stopping on this peer"
            ))),
        }
    }

    /// How many jobs of `app` this peer can take at once: its live worker
    /// processes, or 1 while they are being (re)started, so that jobs wait
    /// in the queue for a worker that is about to come back; 0 when the app
    /// does not run here or every worker keeps crashing.
    pub fn capacity(&self, app: &AppName) -> u32 {
        if self
            .inner
            .draining
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return 0;
        }
        match self.inner.apps.lock().expect("apps lock").get(app) {
            Some(Entry::Running(r)) => match r.state() {
                AppState::Running => r.live(),
                AppState::Starting => 1,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// What this peer announces about its apps.
    pub fn statuses(&self) -> Vec<AppStatus> {
        self.details().into_iter().map(|d| d.status).collect()
    }

    pub fn details(&self) -> Vec<LocalApp> {
        let apps = self.inner.apps.lock().expect("apps lock");
        let mut out: Vec<LocalApp> = apps
            .iter()
            .map(|(name, e)| match e {
                Entry::Running(r) => LocalApp {
                    status: AppStatus {
                        app: name.clone(),
                        state: r.state(),
                        workers: r.live(),
                        in_flight: r.busy() + r.queue.len() as u32,
                        clock: r.clock,
                        error: r
                            .slots
                            .iter()
                            .filter_map(|s| s.lock().expect("slot lock").last_error.clone())
                            .next_back(),
                        version: r.version.clone(),
                    },
                    source: Some(r.spec.source.display().to_string()),
                    protocol: Some(r.spec.protocol),
                    queued: r.queue.len() as u32,
                    processes: r
                        .slots
                        .iter()
                        .map(|s| s.lock().expect("slot lock").clone())
                        .collect(),
                },
                Entry::Missing { clock, error } => LocalApp {
                    status: AppStatus {
                        app: name.clone(),
                        state: AppState::Missing,
                        workers: 0,
                        in_flight: 0,
                        clock: *clock,
                        error: Some(error.clone()),
                        version: None,
                    },
                    source: None,
                    protocol: None,
                    queued: 0,
                    processes: Vec::new(),
                },
                Entry::Stopped { clock } => LocalApp {
                    status: AppStatus {
                        app: name.clone(),
                        state: AppState::Stopped,
                        workers: 0,
                        in_flight: 0,
                        clock: *clock,
                        error: None,
                        version: None,
                    },
                    source: None,
                    protocol: None,
                    queued: 0,
                    processes: Vec::new(),
                },
            })
            .collect();
        out.sort_by(|a, b| a.status.app.cmp(&b.status.app));
        out
    }

    /// Stops every worker (SIGTERM, grace, SIGKILL) and waits for them.
    pub async fn shutdown(&self) {
        let runners: Vec<Runner> = {
            let mut apps = self.inner.apps.lock().expect("apps lock");
            apps.drain()
                .filter_map(|(_, e)| match e {
                    Entry::Running(r) => Some(r),
                    _ => None,
                })
                .collect()
        };
        for r in runners {
            r.shutdown();
        }
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

fn set_slot(slot: &Mutex<WorkerDetail>, f: impl FnOnce(&mut WorkerDetail)) {
    f(&mut slot.lock().expect("slot lock"));
}

/// Owns one worker process at a time for its whole life: start, feed,
/// restart with backoff, stop.
async fn worker_task(
    spec: AppSpec,
    jobs: async_channel::Receiver<LocalJob>,
    slot: Arc<Mutex<WorkerDetail>>,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut crashes_in_a_row = 0u32;
    loop {
        if stop.is_cancelled() {
            break;
        }
        let started = Instant::now();
        // (why it ended, whether a job it held is to blame)
        let (reason, job_related) = match WorkerProcess::spawn(&spec) {
            Err(e) => (
                format!("cannot start {}: {e}", spec.program.display()),
                false,
            ),
            Ok(mut proc) => {
                // Shown as starting until it has stayed up a moment (or
                // answered a job), so a worker that dies on start-up is
                // never reported as running.
                set_slot(&slot, |s| {
                    s.pid = Some(proc.pid());
                    s.state = WorkerState::Starting;
                });
                match serve(&mut proc, &jobs, &slot, &stop, spec.pipeline as usize).await {
                    Served::Stop => {
                        set_slot(&slot, |s| s.state = WorkerState::Stopped);
                        proc.stop(grace).await;
                        set_slot(&slot, |s| s.pid = None);
                        return;
                    }
                    Served::Recycle(reason) => {
                        proc.kill().await;
                        (reason, true)
                    }
                    Served::Exited(reason, job_related) => (reason, job_related),
                }
            }
        };
        // A worker that keeps failing on its own (at start, or idle) is
        // backed off and shown as failing; one that a job broke (a crash,
        // bad output, a hang) comes straight back: the job is to blame,
        // and failover bounds how often one job can do that.
        if started.elapsed() >= HEALTHY_AFTER || job_related {
            crashes_in_a_row = 0;
        }
        crashes_in_a_row += 1;
        let backoff = (BACKOFF_MIN * 2u32.saturating_pow(crashes_in_a_row - 1)).min(BACKOFF_MAX);
        tracing::warn!(app = %spec.name, "worker {reason}; restarting in {backoff:?}");
        crate::obs::metrics::METRICS
            .worker_restarts
            .get_or_create(&crate::obs::metrics::AppLabel {
                app: spec.name.to_string(),
            })
            .inc();
        crate::obs::stats::STATS.error_now("worker", spec.name.as_str(), None, reason.clone());
        set_slot(&slot, |s| {
            s.pid = None;
            s.restarts += 1;
            s.last_error = Some(reason);
            s.state = if crashes_in_a_row >= FAILING_AFTER {
                WorkerState::Failing
            } else {
                WorkerState::Restarting
            };
        });
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
    }
    set_slot(&slot, |s| {
        s.state = WorkerState::Stopped;
        s.pid = None;
    });
}

enum Served {
    /// Asked to stop, or the queue closed: stop the process gracefully.
    Stop,
    /// The process must be killed and replaced (hung, or out of sync).
    Recycle(String),
    /// The process is gone (and whether it held a job when it went).
    Exited(String, bool),
}

async fn serve(
    proc: &mut WorkerProcess,
    jobs: &async_channel::Receiver<LocalJob>,
    slot: &Mutex<WorkerDetail>,
    stop: &CancellationToken,
    depth: usize,
) -> Served {
    // Jobs written to the worker and not yet answered, oldest first: the
    // worker answers in order, so its next answer is the front one's.
    let mut inflight: VecDeque<LocalJob> = VecDeque::with_capacity(depth);
    let settle = tokio::time::sleep(SETTLE);
    tokio::pin!(settle);
    let mut settled = false;
    // One timer for the oldest job's deadline, moved only when a job with
    // an earlier deadline comes to the front or when it fires early (the
    // front has moved on to a later job): deadlines mostly grow, so under
    // load it is rarely touched, instead of a new timer per job.
    let hang = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(hang);
    let mut hang_at: Option<Instant> = None;
    loop {
        if let Some(front) = inflight.front().map(|j| j.deadline)
            && hang_at.is_none_or(|at| front < at)
        {
            hang.as_mut().reset(front);
            hang_at = Some(front);
        }
        tokio::select! {
            biased;
            _ = &mut settle, if !settled => {
                settled = true;
                set_slot(slot, |s| s.state = WorkerState::Running);
            }
            // Stopping does not wait for running jobs.
            _ = stop.cancelled() => {
                fail_all(&mut inflight, || JobError::NotRunning(
                    "the app was stopped on this peer while the job ran".into(),
                ));
                return Served::Stop;
            }
            line = proc.next_line() => match line {
                Line::Skip => {}
                Line::Answer(text) => match inflight.pop_front() {
                    Some(job) => {
                        let _ = job.reply.send(Ok(text));
                        settled = true;
                        set_slot(slot, |s| {
                            s.jobs_done += 1;
                            s.state = WorkerState::Running;
                        });
                    }
                    // Output while no job is outstanding belongs to no job:
                    // log and drop it, never take it for the next answer.
                    None => tracing::warn!(app = %proc.app(), pid = proc.pid(), "worker wrote while it had no job (dropped): {text}"),
                },
                Line::NotJson(msg) => match inflight.pop_front() {
                    Some(job) => {
                        // The real answer may still come, so later answers
                        // can no longer be matched to jobs: replace it.
                        let _ = job.reply.send(Err(JobError::BadOutput(msg.clone())));
                        let why = format!("broke the protocol: {msg}");
                        fail_all(&mut inflight, || JobError::WorkerCrashed(format!("the worker was replaced before it answered: it {why}")));
                        return Served::Recycle(why);
                    }
                    None => tracing::warn!(app = %proc.app(), pid = proc.pid(), "worker wrote while it had no job (dropped): {msg}"),
                },
                Line::TooLong => {
                    let msg = format!("the worker's answer is larger than {} MiB", MAX_RESULT_BYTES >> 20);
                    if let Some(job) = inflight.pop_front() {
                        let _ = job.reply.send(Err(JobError::BadOutput(msg.clone())));
                    }
                    fail_all(&mut inflight, || JobError::WorkerCrashed(format!("the worker was replaced before it answered: {msg}")));
                    return Served::Recycle(msg);
                }
                Line::End(what) => {
                    let when = if inflight.is_empty() { "while idle".to_string() } else { format!("while it held a job ({what})") };
                    let report = proc.crash_report(&when).await;
                    let job_related = !inflight.is_empty();
                    fail_all(&mut inflight, || JobError::WorkerCrashed(report.clone()));
                    return Served::Exited(report, job_related);
                }
            },
            _ = &mut hang, if hang_at.is_some() && !inflight.is_empty() => {
                hang_at = None;
                if inflight.front().is_some_and(|j| Instant::now() < j.deadline) {
                    continue; // set for a job answered since: re-armed above
                }
                if let Some(job) = inflight.pop_front() {
                    let _ = job.reply.send(Err(JobError::Timeout(
                        "no result within the timeout; the worker was recycled".into(),
                    )));
                }
                fail_all(&mut inflight, || JobError::WorkerCrashed(
                    "the worker was replaced before it answered: an earlier job hung it".into(),
                ));
                return Served::Recycle("did not answer a job within its timeout (hung?)".into());
            }
            job = jobs.recv(), if inflight.len() < depth => {
                let Ok(job) = job else {
                    // The queue closed: the app is stopping.
                    fail_all(&mut inflight, || JobError::NotRunning("the app was stopped on this peer".into()));
                    return Served::Stop;
                };
                if job.reply.is_closed() {
                    continue; // the caller gave up while the job was queued
                }
                if Instant::now() >= job.deadline {
                    let _ = job.reply.send(Err(JobError::Timeout(
                        "the job timed out while queued for a worker".into(),
                    )));
                    continue;
                }
                if !proc.send(job.payload.clone()) {
                    let _ = job.reply.send(Err(JobError::WorkerCrashed("the worker's input is closed".into())));
                    return Served::Recycle("its input closed".into());
                }
                inflight.push_back(job);
            }
        }
        let n = inflight.len() as u32;
        set_slot(slot, |s| s.in_flight = n);
    }
}

fn fail_all(inflight: &mut VecDeque<LocalJob>, err: impl Fn() -> JobError) {
    for job in inflight.drain(..) {
        let _ = job.reply.send(Err(err()));
    }
}
