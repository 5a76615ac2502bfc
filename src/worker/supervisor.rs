//! This peer's apps: which run, on which version, and the way in for jobs.
//!
//! [`Workers`] is a cloneable handle on the registry: a table from app name
//! to its [`Entry`] (running, missing, or stopped), behind a
//! `std::sync::Mutex`. That lock is taken by every job ([`Workers::submit`])
//! and every dispatch decision ([`Workers::capacity`]), so it is only ever
//! held for a lookup or a swap: never across an `.await`, never around
//! file system work or anything else that can block.
//!
//! # Reconciling
//!
//! The mesh agrees on which apps should run ([`DesiredApps`]); the peer's
//! reconciler calls [`Workers::apply`] with that whenever it changes and
//! every few seconds. `apply` works in two steps:
//!
//! 1. *Resolve*, without the lock and off the runtime (`spawn_blocking`):
//!    find what each app to run would run now, from its deployed bundle or
//!    the `--apps` directory: paths canonicalized, manifests read and
//!    parsed.
//! 2. *Swap*, under the lock: per app, keep the running workers if nothing
//!    changed, start new ones (and retire the old) if the version or the
//!    settings did, stop them if the app is to stop.
//!
//! Resolving again each time is what picks up an app copied into the apps
//! directory later, or a manifest edited in place.
//!
//! # Counting and draining
//!
//! Every job queued or running at this peer's workers is counted (see
//! `super::gauge`), those of replaced versions still finishing included:
//! [`Workers::in_flight`] reads the count and [`Workers::until_idle`]
//! waits for it to reach zero, woken by the last job rather than polling.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gauge::Gauge;
use super::runner::{LocalBatch, LocalJob, Refused, Runner};
use crate::apps::{AppName, AppSpec, AppsDir, MAX_WORKERS_PER_APP};
use crate::apps::{AppState, AppStatus, LocalApp};
use crate::deploy::{BundleRef, Store};
use crate::error::JobError;
use crate::mesh::desired::{DesiredApp, DesiredApps};

/// The least time a replaced version gets to finish the jobs it holds.
const RETIRE_GRACE_MIN: Duration = Duration::from_secs(30);

/// This peer's apps and their workers. Cloning is cheap; clones share
/// everything.
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
    /// Held through an [`Workers::apply`], so two never interleave (an
    /// older resolution swapped in after a newer one).
    applying: tokio::sync::Mutex<()>,
    tracker: TaskTracker,
    /// Set when the peer is stopping: no new jobs, the queued ones finish.
    draining: AtomicBool,
    /// Jobs queued for or held by any of this peer's workers.
    load: Arc<Gauge>,
    /// Cancelled by [`Workers::shutdown`]: replaced versions stop at once
    /// instead of finishing their jobs.
    stopping: CancellationToken,
    /// Bumped whenever the apps table changes (apps started, stopped,
    /// replaced), so a job waiting for a worker wakes at once.
    changes: tokio::sync::watch::Sender<u64>,
}

/// What an app to run resolved to.
enum Resolved {
    /// What to run, and the bundle it comes from (if deployed).
    Ready(AppSpec, Option<String>),
    /// Its deployed version is not here yet.
    Pending(String),
    /// It cannot run here (the message says why).
    Failed(String),
}

/// An app in the table.
// One entry per app, few apps: the size difference costs nothing.
#[allow(clippy::large_enum_variant)]
enum Entry {
    Running(Runner),
    Missing {
        clock: u64,
        error: String,
    },
    Stopped {
        clock: u64,
    },
    /// The app is here and could run, but the decision placed it on other
    /// peers (`start --peers N` / `--on`).
    Standby {
        clock: u64,
    },
}

impl Entry {
    /// What the status pages show of it, as the app `name`.
    fn local_app(&self, name: &AppName) -> LocalApp {
        let (state, clock, error) = match self {
            Entry::Running(r) => return r.local_app(name),
            Entry::Missing { clock, error } => (AppState::Missing, *clock, Some(error.clone())),
            Entry::Stopped { clock } => (AppState::Stopped, *clock, None),
            Entry::Standby { clock } => (AppState::Standby, *clock, None),
        };
        LocalApp {
            status: AppStatus {
                app: name.clone(),
                state,
                workers: 0,
                in_flight: 0,
                clock,
                error,
                version: None,
            },
            source: None,
            protocol: None,
            queued: 0,
            processes: Vec::new(),
        }
    }
}

impl Workers {
    /// An empty registry: apps come from `apps_dir`, or from `store` when
    /// deployed (if this peer takes deployments); `default_workers`
    /// processes per app unless decided otherwise; a stopped process gets
    /// `grace` to exit after SIGTERM.
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
                applying: tokio::sync::Mutex::new(()),
                tracker: TaskTracker::new(),
                draining: AtomicBool::new(false),
                load: Arc::default(),
                stopping: CancellationToken::new(),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Brings local workers in line with the mesh's desired state: resolves
    /// each app to run off the runtime, then swaps the table's entries (see
    /// the module's documentation). Apps that were missing are resolved
    /// again each time, so an app copied into the apps directory later is
    /// picked up.
    pub async fn apply(&self, desired: &DesiredApps, elsewhere: &HashSet<AppName>) {
        let _one_at_a_time = self.inner.applying.lock().await;
        let to_run = desired
            .entries()
            .filter(|d| d.run)
            .map(|d| (d.app.clone(), d.bundle.clone()))
            .collect();
        let Some(mut resolved) = self.resolve_all(to_run).await else {
            return; // the runtime is shutting down
        };
        let mut apps = self.inner.apps.lock().expect("apps lock");
        if self.inner.stopping.is_cancelled() {
            return; // shut down while resolving: start nothing
        }
        for d in desired.entries() {
            let current = apps.remove(&d.app);
            let next = match resolved.remove(&d.app) {
                Some(Resolved::Ready(..)) if elsewhere.contains(&d.app) => to_standby(d, current),
                Some(found) => self.to_run(d, current, found),
                None => to_stop(d, current),
            };
            apps.insert(d.app.clone(), next);
        }
        drop(apps);
        self.inner.changes.send_modify(|n| *n += 1);
    }

    /// A receiver that sees a change whenever the apps table changes (a
    /// job waiting for a worker of an app being started wakes at once).
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// Resolves each `(app, bundle)` on a blocking thread: it reads the
    /// disk. `None` if the runtime is shutting down.
    async fn resolve_all(
        &self,
        to_run: Vec<(AppName, Option<BundleRef>)>,
    ) -> Option<HashMap<AppName, Resolved>> {
        let apps_dir = self.inner.apps_dir.clone();
        let store = self.inner.store.clone();
        let found = tokio::task::spawn_blocking(move || {
            to_run
                .into_iter()
                .map(|(app, bundle)| {
                    let r = resolve(&apps_dir, store.as_ref(), &app, bundle.as_ref());
                    (app, r)
                })
                .collect()
        })
        .await;
        match found {
            Ok(found) => Some(found),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }

    /// The entry for `d`, an app to run, now that it `resolved`; `current`
    /// is its entry so far. Called under the apps lock: it only starts and
    /// stops tasks.
    fn to_run(&self, d: &DesiredApp, current: Option<Entry>, resolved: Resolved) -> Entry {
        let (spec, version) = match resolved {
            Resolved::Ready(spec, version) => (spec, version),
            // The new version is still on its way: keep running what runs
            // (or wait for it).
            Resolved::Pending(why) => {
                return match current {
                    Some(Entry::Running(mut r)) => {
                        r.clock = d.clock;
                        Entry::Running(r)
                    }
                    _ => Entry::Missing {
                        clock: d.clock,
                        error: why,
                    },
                };
            }
            Resolved::Failed(error) => {
                if let Some(Entry::Running(r)) = current {
                    r.shutdown();
                }
                return Entry::Missing {
                    clock: d.clock,
                    error,
                };
            }
        };
        let want = d
            .workers
            .or(spec.workers)
            .unwrap_or(self.inner.default_workers)
            .clamp(1, MAX_WORKERS_PER_APP);
        let short = version.as_deref().map(|v| &v[..12]);
        match current {
            Some(Entry::Running(mut r))
                if want == r.workers && spec == r.spec && version == r.version =>
            {
                r.clock = d.clock;
                Entry::Running(r)
            }
            Some(Entry::Running(r)) => {
                // New workers first; the old ones finish what they hold,
                // then stop.
                tracing::info!(app = %d.app, workers = want, version = ?short, source = %spec.source.display(), "moving app to new workers (new version or settings)");
                let next = self.start(spec, want, d.clock, version);
                self.retire(r);
                Entry::Running(next)
            }
            _ => {
                tracing::info!(app = %d.app, workers = want, version = ?short, source = %spec.source.display(), "starting app");
                Entry::Running(self.start(spec, want, d.clock, version))
            }
        }
    }

    fn start(&self, spec: AppSpec, workers: u32, clock: u64, version: Option<String>) -> Runner {
        let (grace, tracker) = (self.inner.grace, &self.inner.tracker);
        Runner::start(spec, workers, clock, version, grace, tracker)
    }

    /// Lets a replaced runner finish the jobs it holds (nobody sends it
    /// more: it is out of the table), then stops it.
    fn retire(&self, r: Runner) {
        let grace = self.inner.grace.max(RETIRE_GRACE_MIN);
        let stopping = self.inner.stopping.clone();
        self.inner.tracker.spawn(r.retire(grace, stopping));
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

    /// Stops taking new jobs (they are refused as "not running here", which
    /// callers answer by trying another peer); jobs already queued finish.
    pub fn start_draining(&self) {
        self.inner.draining.store(true, Ordering::SeqCst);
    }

    fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    /// Jobs queued for or held by this peer's workers, those of replaced
    /// versions still finishing included. Reads a counter: no lock.
    pub fn in_flight(&self) -> u32 {
        self.inner.load.get() as u32
    }

    /// Returns once no job is queued for or held by this peer's workers (at
    /// once if none is). Woken by the last job to end, not by polling.
    /// Jobs may be submitted again after; to wait for the last one, start
    /// draining first ([`Workers::start_draining`]).
    pub async fn until_idle(&self) {
        self.inner.load.until_zero().await
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
        let job = LocalJob {
            payload,
            deadline,
            reply,
        };
        self.submit(app, job)?;
        match tokio::time::timeout_at(deadline + Duration::from_millis(200), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(JobError::NotRunning(format!(
                "{app} was stopped on this peer"
            ))),
            Err(_) => Err(JobError::Timeout("no result within the timeout".into())),
        }
    }

    /// Runs a batch of a stream's lines on one of this peer's workers of
    /// `app`: one result per payload, in their order. Refused as a whole
    /// like [`Self::submit`] (busy, not running here).
    pub async fn run_batch(
        &self,
        app: &AppName,
        payloads: Vec<Arc<str>>,
        deadline: Instant,
    ) -> Result<Vec<Result<String, JobError>>, JobError> {
        let n = payloads.len();
        let (reply, rx) = oneshot::channel();
        let batch = LocalBatch {
            payloads,
            deadline,
            reply,
        };
        self.queue(app, |r, load| r.try_submit_batch(batch, load))?;
        match tokio::time::timeout_at(deadline + Duration::from_millis(200), rx).await {
            Ok(Ok(results)) => {
                debug_assert_eq!(results.len(), n, "a batch is answered line for line");
                Ok(results)
            }
            Ok(Err(_)) => Err(JobError::NotRunning(format!(
                "{app} was stopped on this peer"
            ))),
            Err(_) => Err(JobError::Timeout("no result within the timeout".into())),
        }
    }

    /// Queues a job for one of this peer's workers of `app`, without
    /// waiting; its answer comes through `job.reply`. Refused at once when
    /// the peer is draining, the app does not run here, or its queue is
    /// full. Takes the apps lock for a lookup and a queue push.
    pub fn submit(&self, app: &AppName, job: LocalJob) -> Result<(), JobError> {
        self.queue(app, |r, load| r.try_submit(job, load))
    }

    /// Puts work in `app`'s queue with `push`, or says why not.
    fn queue(
        &self,
        app: &AppName,
        push: impl FnOnce(&Runner, &Arc<Gauge>) -> Result<(), Refused>,
    ) -> Result<(), JobError> {
        if self.is_draining() {
            return Err(JobError::NotRunning("this peer is stopping".into()));
        }
        let apps = self.inner.apps.lock().expect("apps lock");
        let Some(Entry::Running(r)) = apps.get(app) else {
            return Err(JobError::NotRunning(format!(
                "{app} is not running on this peer"
            )));
        };
        push(r, &self.inner.load).map_err(|refused| match refused {
            Refused::Full(places) => JobError::Busy(format!(
                "{app}: all {places} queue places on this peer are taken"
            )),
            Refused::Closed => JobError::NotRunning(format!("{app} is stopping on this peer")),
        })
    }

    /// How many jobs of `app` this peer can take at once: its live worker
    /// processes, or 1 while they are being (re)started, so that jobs wait
    /// in the queue for a worker that is about to come back; 0 when the app
    /// does not run here or every worker keeps crashing. Takes the apps
    /// lock for a lookup and a look at each process's state.
    pub fn capacity(&self, app: &AppName) -> u32 {
        if self.is_draining() {
            return 0;
        }
        match self.inner.apps.lock().expect("apps lock").get(app) {
            Some(Entry::Running(r)) => r.capacity(),
            _ => 0,
        }
    }

    /// What this peer announces about its apps.
    pub fn statuses(&self) -> Vec<AppStatus> {
        self.details().into_iter().map(|d| d.status).collect()
    }

    /// Every app this peer knows of, with its processes, by name: this
    /// peer's own `/api/apps`.
    pub fn details(&self) -> Vec<LocalApp> {
        let apps = self.inner.apps.lock().expect("apps lock");
        let mut out: Vec<LocalApp> = apps.iter().map(|(name, e)| e.local_app(name)).collect();
        out.sort_by(|a, b| a.status.app.cmp(&b.status.app));
        out
    }

    /// Stops every worker (SIGTERM, grace, SIGKILL), those of replaced
    /// versions included, and waits for them.
    pub async fn shutdown(&self) {
        self.inner.stopping.cancel();
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

/// The entry for `d`, an app to stop; `current` is its entry so far.
/// The entry for `d`, an app this peer has but that is placed on others:
/// its workers, if any, stop as for a stop decision.
fn to_standby(d: &DesiredApp, current: Option<Entry>) -> Entry {
    if let Some(Entry::Running(r)) = current {
        tracing::info!(app = %d.app, "stopping app: placed on other peers");
        r.shutdown();
    }
    Entry::Standby { clock: d.clock }
}

fn to_stop(d: &DesiredApp, current: Option<Entry>) -> Entry {
    if let Some(Entry::Running(r)) = current {
        tracing::info!(app = %d.app, "stopping app");
        r.shutdown();
    }
    Entry::Stopped { clock: d.clock }
}

/// Where `app` comes from: its deployed `bundle` (when it has one and this
/// peer takes deployments, i.e. has a `store`), else the `--apps`
/// directory. Blocking: it reads the disk.
fn resolve(
    apps_dir: &AppsDir,
    store: Option<&Store>,
    app: &AppName,
    bundle: Option<&BundleRef>,
) -> Resolved {
    match (bundle, store) {
        (Some(b), Some(store)) => {
            if !store.has(&b.hash) {
                return Resolved::Pending(format!(
                    "fetching version {} ({} bytes) from the mesh",
                    &b.hash[..12],
                    b.size
                ));
            }
            match store.resolve(&b.hash, app) {
                Ok(spec) => Resolved::Ready(spec, Some(b.hash.clone())),
                Err(e) => Resolved::Failed(e.to_string()),
            }
        }
        _ => match apps_dir.resolve(app) {
            Ok(spec) => Resolved::Ready(spec, None),
            Err(e) => Resolved::Failed(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Far longer than anything here takes; reached only on a failure.
    const DEADLINE: Duration = Duration::from_secs(20);

    /// Answers each job with the job itself, once its gate lets it: a line
    /// written to the FIFO `gate` (see [`Fixture::release`]).
    const GATED: &str = "while read job; do read go < gate; echo \"$job\"; done";

    /// Dies on its first job.
    const CRASHES: &str = "read job; exit 3";

    /// An apps directory with one app, `apps/w`: a shell worker running
    /// `script` (one process), and the workers of a peer running it.
    struct Fixture {
        dir: tempfile::TempDir,
        script: &'static str,
        workers: Workers,
        desired: DesiredApps,
        /// The writing end of the gate, opened at the first release.
        gate: Option<std::fs::File>,
    }

    impl Fixture {
        async fn start(script: &'static str) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            nix::unistd::mkfifo(&dir.path().join("gate"), nix::sys::stat::Mode::S_IRWXU).unwrap();
            let workers = Workers::new(AppsDir::new(dir.path()), None, 1, DEADLINE);
            let mut f = Fixture {
                dir,
                script,
                workers,
                desired: DesiredApps::default(),
                gate: None,
            };
            f.manifest("1");
            f.apply().await;
            f
        }

        fn app() -> AppName {
            AppName::parse("apps/w").unwrap()
        }

        /// Writes the app's manifest; a new `version` (an environment
        /// variable) is a new app to move to.
        fn manifest(&self, version: &str) {
            let text = format!(
                "command = \"sh\"\nargs = [\"-c\", '{}']\nenv = {{ V = \"{version}\" }}\n",
                self.script
            );
            std::fs::write(self.dir.path().join("w.toml"), text).unwrap();
        }

        /// Decides again that the app runs, and applies that.
        async fn apply(&mut self) {
            let now = crate::clock::unix_ms();
            self.desired
                .set(Self::app(), true, None, "test", now)
                .unwrap();
            self.workers.apply(&self.desired, &HashSet::new()).await;
        }

        fn submit(&self, payload: &str) -> oneshot::Receiver<Result<String, JobError>> {
            let (reply, rx) = oneshot::channel();
            let job = LocalJob {
                payload: payload.into(),
                deadline: Instant::now() + DEADLINE,
                reply,
            };
            self.workers.submit(&Self::app(), job).unwrap();
            rx
        }

        /// Lets the worker answer one job. The gate is opened for reading
        /// and writing, so that opening does not wait for the worker, and
        /// kept open, so that the line waits in the pipe until the worker
        /// reads it (and the worker's next read waits for the next line).
        fn release(&mut self) {
            let path = self.dir.path().join("gate");
            let gate = self.gate.get_or_insert_with(|| {
                let mut open = std::fs::OpenOptions::new();
                open.read(true).write(true).open(path).unwrap()
            });
            gate.write_all(b"go\n").unwrap();
        }
    }

    async fn answer(rx: oneshot::Receiver<Result<String, JobError>>) -> Result<String, JobError> {
        tokio::time::timeout(DEADLINE, rx)
            .await
            .expect("an answer in time")
            .expect("an answer, not a dropped job")
    }

    /// Answers every job with itself.
    const ECHO: &str = "while read job; do echo \"$job\"; done";

    /// Answers its first job, then dies on the second.
    const ANSWERS_ONE: &str = "read job; echo \"$job\"; read job; exit 3";

    async fn batch(f: &Fixture, payloads: &[&str]) -> Vec<Result<String, JobError>> {
        let payloads = payloads.iter().map(|p| Arc::from(*p)).collect();
        let app = Fixture::app();
        let run = f
            .workers
            .run_batch(&app, payloads, Instant::now() + DEADLINE);
        tokio::time::timeout(DEADLINE, run)
            .await
            .expect("an answer in time")
            .expect("the batch was queued")
    }

    #[tokio::test]
    async fn a_batch_is_answered_line_for_line_in_order() {
        let f = Fixture::start(ECHO).await;
        let lines: Vec<String> = (0..300).map(|i| format!("{{\"i\":{i}}}")).collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        let got = batch(&f, &lines).await;
        let want: Vec<Result<String, JobError>> = lines.iter().map(|l| Ok(l.to_string())).collect();
        assert_eq!(got, want);
        assert_eq!(f.workers.in_flight(), 0);
        f.workers.shutdown().await;
    }

    /// The lines a worker answered before it died keep their answers; the
    /// line it died on and those after it fail as a worker crash (which a
    /// stream fails over line by line).
    #[tokio::test]
    async fn a_worker_dying_mid_batch_fails_only_the_lines_it_did_not_answer() {
        let f = Fixture::start(ANSWERS_ONE).await;
        let got = batch(&f, &["1", "2", "3"]).await;
        assert_eq!(got[0], Ok("1".to_string()), "{got:?}");
        assert_eq!(got.len(), 3, "{got:?}");
        for r in &got[1..] {
            assert!(matches!(r, Err(JobError::WorkerCrashed(_))), "{got:?}");
        }
        f.workers.shutdown().await;
    }

    #[tokio::test]
    async fn a_batch_counts_each_of_its_lines_in_flight() {
        let mut f = Fixture::start(GATED).await;
        let workers = f.workers.clone();
        let payloads = vec![Arc::from("1"), Arc::from("2"), Arc::from("3")];
        let run = tokio::spawn(async move {
            workers
                .run_batch(&Fixture::app(), payloads, Instant::now() + DEADLINE)
                .await
        });
        let counted = async {
            while f.workers.in_flight() != 3 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(DEADLINE, counted)
            .await
            .expect("three lines in flight");
        for _ in 0..3 {
            f.release();
        }
        let got = tokio::time::timeout(DEADLINE, run)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, vec![Ok("1".into()), Ok("2".into()), Ok("3".into())]);
        assert_eq!(f.workers.in_flight(), 0);
        f.workers.shutdown().await;
    }

    #[tokio::test]
    async fn until_idle_wakes_when_the_last_job_ends() {
        let mut f = Fixture::start(GATED).await;
        tokio::time::timeout(DEADLINE, f.workers.until_idle())
            .await
            .expect("idle before any job");
        let (a, b) = (f.submit(r#"{"n":1}"#), f.submit(r#"{"n":2}"#));
        assert_eq!(f.workers.in_flight(), 2);
        let workers = f.workers.clone();
        let mut idle = std::pin::pin!(workers.until_idle());
        assert!(futures::poll!(idle.as_mut()).is_pending());
        f.release();
        assert_eq!(answer(a).await.unwrap(), r#"{"n":1}"#);
        assert!(
            futures::poll!(idle.as_mut()).is_pending(),
            "the second job still runs"
        );
        f.release();
        assert_eq!(answer(b).await.unwrap(), r#"{"n":2}"#);
        tokio::time::timeout(DEADLINE, idle)
            .await
            .expect("woken by the last job");
        assert_eq!(f.workers.in_flight(), 0);
        f.workers.shutdown().await;
    }

    /// A replaced version's jobs used to drop out of `in_flight` (which
    /// counted only the table's runners), so a peer's drain did not wait
    /// for them.
    #[tokio::test]
    async fn a_replaced_version_finishes_its_jobs_and_they_count_until_then() {
        let mut f = Fixture::start(GATED).await;
        let old = f.submit("1");
        f.manifest("2");
        f.apply().await;
        assert_eq!(f.workers.in_flight(), 1, "the replaced version's job");
        let workers = f.workers.clone();
        let mut idle = std::pin::pin!(workers.until_idle());
        assert!(futures::poll!(idle.as_mut()).is_pending());
        f.release();
        assert_eq!(answer(old).await.unwrap(), "1");
        tokio::time::timeout(DEADLINE, idle)
            .await
            .expect("woken by the replaced version's last job");
        // The new version takes jobs.
        let new = f.submit("2");
        f.release();
        assert_eq!(answer(new).await.unwrap(), "2");
        f.workers.shutdown().await;
    }

    /// Shutting down used to wait for a replaced version to finish its
    /// jobs: up to 30 seconds.
    #[tokio::test]
    async fn shutdown_stops_a_replaced_version_at_once() {
        let mut f = Fixture::start(GATED).await;
        let old = f.submit("1");
        f.manifest("2");
        f.apply().await;
        let started = std::time::Instant::now();
        tokio::time::timeout(RETIRE_GRACE_MIN / 2, f.workers.shutdown())
            .await
            .expect("shutdown does not wait for the replaced version's jobs");
        eprintln!("shut down in {:?}", started.elapsed());
        // The job failed (held), or was dropped (still queued).
        let failed = tokio::time::timeout(DEADLINE, old).await.expect("no hang");
        assert!(
            matches!(failed, Ok(Err(JobError::NotRunning(_))) | Err(_)),
            "{failed:?}"
        );
        assert_eq!(f.workers.in_flight(), 0);
    }

    /// A process that died holding a job used to show it in flight until
    /// its replacement had settled (backoff plus 300 ms).
    #[tokio::test]
    async fn a_worker_that_dies_shows_no_job_in_flight() {
        let f = Fixture::start(CRASHES).await;
        let crashed = answer(f.submit("1")).await;
        assert!(
            matches!(&crashed, Err(JobError::WorkerCrashed(m)) if m.contains("status 3")),
            "{crashed:?}"
        );
        // The process's count is cleared before its jobs are answered.
        let process = f.workers.details()[0].processes[0].clone();
        assert_eq!(process.in_flight, 0, "{process:?}");
        tokio::time::timeout(DEADLINE, f.workers.until_idle())
            .await
            .expect("idle once the job failed");
        assert_eq!(f.workers.details()[0].status.in_flight, 0);
        f.workers.shutdown().await;
    }

    #[tokio::test]
    async fn a_draining_peer_refuses_jobs_and_idles_when_the_last_ends() {
        let mut f = Fixture::start(GATED).await;
        let queued = f.submit("1");
        f.workers.start_draining();
        let (reply, _rx) = oneshot::channel();
        let late = LocalJob {
            payload: "2".into(),
            deadline: Instant::now() + DEADLINE,
            reply,
        };
        let refused = f.workers.submit(&Fixture::app(), late);
        assert!(
            matches!(refused, Err(JobError::NotRunning(_))),
            "{refused:?}"
        );
        assert_eq!(f.workers.capacity(&Fixture::app()), 0);
        f.release();
        assert_eq!(answer(queued).await.unwrap(), "1");
        tokio::time::timeout(DEADLINE, f.workers.until_idle())
            .await
            .expect("idle");
        f.workers.shutdown().await;
    }
}
