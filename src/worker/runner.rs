//! One app's workers on this peer: a [`Runner`] with its job queue, and
//! one task per worker process that feeds it jobs and brings it back when
//! it exits.
//!
//! # A job's way through
//!
//! [`Runner::try_submit`] puts the job in the app's bounded queue (an
//! MPMC `async_channel`: every process's task takes from the same one, so
//! a free process takes the next job). The task writes it to its process
//! and keeps it in its pipeline, oldest first, until the answer comes: a
//! worker answers in order, so its next answer is always the front job's.
//! A process holds up to its app's `pipeline` jobs at once (8 for native
//! workers unless the manifest says otherwise, 1 for Node), and an app
//! runs several processes (one per core by default): that is where
//! parallelism comes from.
//!
//! A stream's lines may come as a [`LocalBatch`]: one queue item, written
//! to one process in one go and answered line by line in order. A batch
//! counts as one of the `pipeline` jobs a process holds (its lines are
//! already in one pipe write), and as its number of lines on the gauges.
//! When a process fails with a batch in front, the line it was on gets
//! the failure and the lines after it the "replaced before it answered"
//! error, as separate jobs would: the stream fails those lines over one by
//! one.
//!
//! When the pipeline cannot be trusted any more (a line that is not JSON,
//! an answer too long, the front job's deadline passed) the process is
//! killed and replaced; the jobs it held fail, each with the reason. A
//! process that exits is restarted at once if a job it held is to blame
//! (failover bounds how often one job can do that), else with capped
//! exponential backoff, and shown as failing after a few crashes in a row.
//!
//! # Counting
//!
//! Each queued job carries two [`Held`] counts, one on its runner's gauge
//! and one on the peer's: a replaced runner waits on its own to reach zero
//! before it stops, and the peer's drain waits on the other
//! (`Workers::until_idle`). Per process, a [`WorkerDetail`] slot (behind
//! its own small mutex) shows state, pid and counts on the status pages.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::gauge::{Gauge, Held};
use super::protocol::{Line, MAX_RESULT_BYTES, WorkerProcess};
use crate::apps::{AppName, AppSpec, AppState, AppStatus, LocalApp, WorkerDetail, WorkerState};
use crate::error::JobError;

/// Jobs that may wait in one app's queue on this peer, per worker process;
/// more are refused with 503 rather than queued without bound.
const QUEUE_PER_WORKER: usize = 64;
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
    /// When the caller stops waiting: a job still queued then is not sent,
    /// and a process that has not answered it by then is recycled.
    pub deadline: Instant,
    /// Receiver: whoever submitted the job (the HTTP handler, or the task
    /// answering a remote peer). Dropped unanswered when the app stops.
    pub reply: oneshot::Sender<Result<String, JobError>>,
}

/// Lines of a stream bound for this peer's workers, run as one piece of
/// work: queued once, written to one process together, answered together
/// (each line with its own result, in order).
pub struct LocalBatch {
    /// Compact JSON texts, no newlines; never empty.
    pub payloads: Vec<Arc<str>>,
    /// As [`LocalJob::deadline`], for the whole batch.
    pub deadline: Instant,
    /// Receiver: whoever submitted the batch; one result per payload, in
    /// their order.
    pub reply: oneshot::Sender<Vec<Result<String, JobError>>>,
}

/// Where a queued item's answers go.
enum Reply {
    One(oneshot::Sender<Result<String, JobError>>),
    Batch {
        tx: oneshot::Sender<Vec<Result<String, JobError>>>,
        /// The answers so far, in the order of the payloads.
        results: Vec<Result<String, JobError>>,
    },
}

/// A job (or a batch of them) in a runner's queue or pipeline, counted on
/// the runner's and the peer's gauges (one count per line) until it is
/// answered or dropped.
pub(super) struct Queued {
    payloads: Payloads,
    deadline: Instant,
    reply: Reply,
    _counted: [Held; 2],
}

enum Payloads {
    One(Arc<str>),
    Batch(Vec<Arc<str>>),
}

impl Queued {
    fn lines(&self) -> usize {
        match &self.payloads {
            Payloads::One(_) => 1,
            Payloads::Batch(p) => p.len(),
        }
    }

    /// Its lines not answered yet.
    fn unanswered(&self) -> usize {
        match &self.reply {
            Reply::One(_) => 1,
            Reply::Batch { results, .. } => self.lines() - results.len(),
        }
    }

    /// Whether nobody waits for the answers any more.
    fn abandoned(&self) -> bool {
        match &self.reply {
            Reply::One(tx) => tx.is_closed(),
            Reply::Batch { tx, .. } => tx.is_closed(),
        }
    }

    /// The answer to its next unanswered line; `Err(self)` while lines
    /// remain unanswered, `Ok(())` once every answer went out.
    fn answer(mut self, result: Result<String, JobError>) -> Result<(), Queued> {
        let lines = self.lines();
        match &mut self.reply {
            Reply::Batch { results, .. } if results.len() + 1 < lines => {
                results.push(result);
                Err(self)
            }
            _ => {
                self.finish(result, None);
                Ok(())
            }
        }
    }

    /// Answers its next unanswered line with `first` and the rest with
    /// `rest` (or `first` too).
    fn finish(self, first: Result<String, JobError>, rest: Option<JobError>) {
        let lines = self.lines();
        match self.reply {
            Reply::One(tx) => {
                let _ = tx.send(first);
            }
            Reply::Batch { tx, mut results } => {
                let rest = rest.or_else(|| first.as_ref().err().cloned());
                results.push(first);
                while results.len() < lines {
                    results.push(Err(rest.clone().expect("an error for the rest")));
                }
                let _ = tx.send(results);
            }
        }
    }

    /// Fails every line it has not answered.
    fn fail(self, err: JobError) {
        self.finish(Err(err), None);
    }
}

/// Why a job was not queued.
pub(super) enum Refused {
    /// The queue is full (its capacity).
    Full(usize),
    /// The queue is closed: the runner is stopping.
    Closed,
}

/// An app's running workers on this peer: the job queue, one task per
/// process, and what the status pages show of them.
pub(super) struct Runner {
    /// What runs: program, arguments, protocol, pipeline depth.
    pub(super) spec: AppSpec,
    /// The bundle it runs, if deployed.
    pub(super) version: Option<String>,
    /// The clock of the decision it runs under.
    pub(super) clock: u64,
    /// How many processes it runs.
    pub(super) workers: u32,
    /// Receivers: the runner's worker tasks. Closing it (on stop) ends them
    /// once the queue is empty; dropping it fails the queued jobs.
    queue: async_channel::Sender<Queued>,
    stop: CancellationToken,
    slots: Vec<Arc<Mutex<WorkerDetail>>>,
    /// Jobs queued for or held by this runner's processes.
    load: Arc<Gauge>,
}

impl Runner {
    /// Starts `workers` processes of `spec`, each owned by a task on
    /// `tracker`; a stopped process gets `grace` to exit after SIGTERM.
    pub(super) fn start(
        spec: AppSpec,
        workers: u32,
        clock: u64,
        version: Option<String>,
        grace: Duration,
        tracker: &TaskTracker,
    ) -> Runner {
        let (tx, rx) = async_channel::bounded(QUEUE_PER_WORKER * workers as usize);
        let stop = CancellationToken::new();
        let slots: Vec<_> = (0..workers)
            .map(|index| {
                Arc::new(Mutex::new(WorkerDetail {
                    index,
                    pid: None,
                    state: WorkerState::Starting,
                    restarts: 0,
                    jobs_done: 0,
                    in_flight: 0,
                    last_error: None,
                }))
            })
            .collect();
        for slot in &slots {
            let (spec, jobs, slot, stop) = (spec.clone(), rx.clone(), slot.clone(), stop.clone());
            tracker.spawn(worker_task(spec, jobs, slot, stop, grace));
        }
        Runner {
            spec,
            version,
            clock,
            workers,
            queue: tx,
            stop,
            slots,
            load: Arc::default(),
        }
    }

    /// Queues `job` without waiting, counted on this runner's gauge and on
    /// `peer`'s until it is answered.
    pub(super) fn try_submit(&self, job: LocalJob, peer: &Arc<Gauge>) -> Result<(), Refused> {
        self.try_queue(Queued {
            payloads: Payloads::One(job.payload),
            deadline: job.deadline,
            reply: Reply::One(job.reply),
            _counted: [self.load.hold(), peer.hold()],
        })
    }

    /// Queues a batch as one item (one process runs it all), counted as
    /// its number of lines.
    pub(super) fn try_submit_batch(
        &self,
        batch: LocalBatch,
        peer: &Arc<Gauge>,
    ) -> Result<(), Refused> {
        let n = batch.payloads.len();
        self.try_queue(Queued {
            payloads: Payloads::Batch(batch.payloads),
            deadline: batch.deadline,
            reply: Reply::Batch {
                tx: batch.reply,
                results: Vec::with_capacity(n),
            },
            _counted: [self.load.hold_many(n), peer.hold_many(n)],
        })
    }

    fn try_queue(&self, queued: Queued) -> Result<(), Refused> {
        self.queue.try_send(queued).map_err(|e| match e {
            async_channel::TrySendError::Full(_) => {
                Refused::Full(self.queue.capacity().unwrap_or(0))
            }
            async_channel::TrySendError::Closed(_) => Refused::Closed,
        })
    }

    /// How many jobs it can take at once: its live processes, or 1 while
    /// they are being (re)started (jobs wait in the queue for them), or 0
    /// when every process keeps crashing.
    pub(super) fn capacity(&self) -> u32 {
        // One look at each process (this is on every dispatch decision).
        capacity_of(
            self.slots
                .iter()
                .map(|s| s.lock().expect("slot lock").state),
        )
    }

    /// Jobs queued for or held by its processes.
    pub(super) fn in_flight(&self) -> u32 {
        self.load.get() as u32
    }

    /// What the status pages show of it, as the app `name`.
    pub(super) fn local_app(&self, name: &AppName) -> LocalApp {
        let processes: Vec<WorkerDetail> = self
            .slots
            .iter()
            .map(|s| s.lock().expect("slot lock").clone())
            .collect();
        LocalApp {
            status: AppStatus {
                app: name.clone(),
                state: self.state(),
                workers: self.live(),
                in_flight: self.in_flight(),
                clock: self.clock,
                error: processes
                    .iter()
                    .filter_map(|p| p.last_error.clone())
                    .next_back(),
                version: self.version.clone(),
            },
            source: Some(self.spec.source.display().to_string()),
            protocol: Some(self.spec.protocol),
            queued: self.queue.len() as u32,
            processes,
        }
    }

    /// Lets the runner finish the jobs it holds, for at most `grace` and
    /// until `stopping` is cancelled, then stops it. Nobody may send it
    /// more: it must be out of the table already.
    pub(super) async fn retire(self, grace: Duration, stopping: CancellationToken) {
        tokio::select! {
            _ = self.load.until_zero() => {}
            _ = tokio::time::sleep(grace) => {}
            _ = stopping.cancelled() => {}
        }
        self.shutdown();
    }

    /// Stops its processes (SIGTERM, grace, SIGKILL). The jobs they hold
    /// fail, and those still queued are dropped (their callers hear that
    /// the app stopped).
    pub(super) fn shutdown(self) {
        self.queue.close();
        self.stop.cancel();
    }

    /// Its processes that are up and running.
    fn live(&self) -> u32 {
        self.slots
            .iter()
            .filter(|s| s.lock().expect("slot lock").state == WorkerState::Running)
            .count() as u32
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
}

/// [`Runner::capacity`] of processes in `states`: what [`Runner::state`]
/// and [`Runner::live`] say together, in one pass.
fn capacity_of(states: impl ExactSizeIterator<Item = WorkerState>) -> u32 {
    let all = states.len();
    let (mut live, mut failing) = (0, 0);
    for state in states {
        match state {
            WorkerState::Running => live += 1,
            WorkerState::Failing => failing += 1,
            _ => {}
        }
    }
    if live > 0 {
        live
    } else if failing == all {
        0
    } else {
        1
    }
}

fn set_slot(slot: &Mutex<WorkerDetail>, f: impl FnOnce(&mut WorkerDetail)) {
    f(&mut slot.lock().expect("slot lock"));
}

/// Owns one worker process at a time for its whole life: start, feed,
/// restart with backoff, stop.
async fn worker_task(
    spec: AppSpec,
    jobs: async_channel::Receiver<Queued>,
    slot: Arc<Mutex<WorkerDetail>>,
    stop: CancellationToken,
    grace: Duration,
) {
    let mut crashes_in_a_row = 0u32;
    while !stop.is_cancelled() {
        let started = Instant::now();
        let Some((reason, job_related)) = run_process(&spec, &jobs, &slot, &stop, grace).await
        else {
            break;
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
        record_exit(&spec.name, &slot, reason, crashes_in_a_row);
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

/// Starts a process and serves it until it ends. `None` when it was
/// stopped (and has exited); else why it ended, and whether a job it held
/// is to blame.
async fn run_process(
    spec: &AppSpec,
    jobs: &async_channel::Receiver<Queued>,
    slot: &Mutex<WorkerDetail>,
    stop: &CancellationToken,
    grace: Duration,
) -> Option<(String, bool)> {
    let mut proc = match WorkerProcess::spawn(spec) {
        Ok(proc) => proc,
        Err(e) => {
            let reason = format!("cannot start {}: {e}", spec.program.display());
            return Some((reason, false));
        }
    };
    // Shown as starting until it has stayed up a moment (or answered a
    // job), so a worker that dies on start-up is never reported as running.
    set_slot(slot, |s| {
        s.pid = Some(proc.pid());
        s.state = WorkerState::Starting;
    });
    match serve(&mut proc, jobs, slot, stop, spec.pipeline as usize).await {
        Served::Stop => {
            set_slot(slot, |s| s.state = WorkerState::Stopped);
            proc.stop(grace).await;
            set_slot(slot, |s| s.pid = None);
            None
        }
        Served::Recycle(reason) => {
            proc.kill().await;
            Some((reason, true))
        }
        Served::Exited(reason, job_related) => Some((reason, job_related)),
    }
}

/// Counts and shows a process that ended for `reason`, the
/// `crashes_in_a_row`th time in a row.
fn record_exit(app: &AppName, slot: &Mutex<WorkerDetail>, reason: String, crashes_in_a_row: u32) {
    use crate::obs::{metrics, stats};
    metrics::METRICS
        .worker_restarts
        .get_or_create(&metrics::AppLabel {
            app: app.to_string(),
        })
        .inc();
    stats::STATS.error_now("worker", app.as_str(), None, reason.clone());
    set_slot(slot, |s| {
        s.pid = None;
        s.restarts += 1;
        s.last_error = Some(reason);
        s.state = if crashes_in_a_row >= FAILING_AFTER {
            WorkerState::Failing
        } else {
            WorkerState::Restarting
        };
    });
}

/// Why [`serve`] returned.
enum Served {
    /// Asked to stop, or the queue closed: stop the process gracefully.
    Stop,
    /// The process must be killed and replaced (hung, or out of sync).
    Recycle(String),
    /// The process is gone (and whether it held a job when it went).
    Exited(String, bool),
}

/// Feeds one process jobs from the queue and hands back its answers, until
/// it must stop, be replaced, or has exited.
async fn serve(
    proc: &mut WorkerProcess,
    jobs: &async_channel::Receiver<Queued>,
    slot: &Mutex<WorkerDetail>,
    stop: &CancellationToken,
    depth: usize,
) -> Served {
    let mut p = Pipeline {
        proc,
        slot,
        inflight: VecDeque::with_capacity(depth),
        depth,
        settled: false,
        hang_at: None,
    };
    let settle = tokio::time::sleep(SETTLE);
    tokio::pin!(settle);
    // One timer for the oldest job's deadline (see `Pipeline::arm`).
    let hang = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(hang);
    loop {
        p.arm(hang.as_mut());
        let ended = tokio::select! {
            biased;
            _ = &mut settle, if !p.settled => {
                p.settle();
                None
            }
            // Stopping does not wait for running jobs.
            _ = stop.cancelled() => {
                Some(p.stopped("the app was stopped on this peer while the job ran"))
            }
            line = p.proc.next_line() => p.on_line(line).await,
            _ = &mut hang, if p.hang_at.is_some() && !p.inflight.is_empty() => p.on_hang(),
            job = jobs.recv(), if p.inflight.len() < p.depth => p.on_job(job),
        };
        if let Some(ended) = ended {
            set_slot(p.slot, |s| s.in_flight = 0);
            return ended;
        }
        let n = p.inflight.iter().map(Queued::unanswered).sum::<usize>() as u32;
        set_slot(p.slot, |s| s.in_flight = n);
    }
}

/// One process's jobs in flight, and what [`serve`] knows of it.
struct Pipeline<'a> {
    proc: &'a mut WorkerProcess,
    slot: &'a Mutex<WorkerDetail>,
    /// Jobs written to the worker and not yet answered, oldest first: the
    /// worker answers in order, so its next answer is the front one's.
    inflight: VecDeque<Queued>,
    /// How many jobs it may hold at once (its app's `pipeline`).
    depth: usize,
    /// Whether it shows as running: it stayed up [`SETTLE`], or answered.
    settled: bool,
    /// Where the hang timer is set, if it is.
    hang_at: Option<Instant>,
}

impl Pipeline<'_> {
    /// Sets the hang timer to the oldest job's deadline when that is
    /// earlier than where it is set. Moved only when a job with an earlier
    /// deadline comes to the front or when it fires early (the front has
    /// moved on to a later job): deadlines mostly grow, so under load it is
    /// rarely touched, instead of a new timer per job.
    fn arm(&mut self, hang: Pin<&mut Sleep>) {
        if let Some(front) = self.inflight.front().map(|q| q.deadline)
            && self.hang_at.is_none_or(|at| front < at)
        {
            hang.reset(front);
            self.hang_at = Some(front);
        }
    }

    fn settle(&mut self) {
        self.settled = true;
        set_slot(self.slot, |s| s.state = WorkerState::Running);
    }

    /// An output line: an answer for the front job, or the end of this
    /// process.
    async fn on_line(&mut self, line: Line) -> Option<Served> {
        match line {
            Line::Skip => None,
            Line::Answer(text) => {
                self.answer(text);
                None
            }
            Line::NotJson(msg) if self.inflight.is_empty() => {
                self.stray(&msg);
                None
            }
            Line::NotJson(msg) => {
                // The real answer may still come, so later answers can no
                // longer be matched to jobs: replace it.
                let why = format!("broke the protocol: {msg}");
                let rest = format!("the worker was replaced before it answered: it {why}");
                self.fail(JobError::BadOutput(msg), JobError::WorkerCrashed(rest));
                Some(Served::Recycle(why))
            }
            Line::TooLong => {
                let msg = format!(
                    "the worker's answer is larger than {} MiB",
                    MAX_RESULT_BYTES >> 20
                );
                let rest = format!("the worker was replaced before it answered: {msg}");
                self.fail(
                    JobError::BadOutput(msg.clone()),
                    JobError::WorkerCrashed(rest),
                );
                Some(Served::Recycle(msg))
            }
            Line::End(what) => {
                let job_related = !self.inflight.is_empty();
                let when = if job_related {
                    format!("while it held a job ({what})")
                } else {
                    "while idle".to_string()
                };
                let report = self.proc.crash_report(&when).await;
                self.fail_all(JobError::WorkerCrashed(report.clone()));
                Some(Served::Exited(report, job_related))
            }
        }
    }

    fn answer(&mut self, text: String) {
        let Some(job) = self.inflight.pop_front() else {
            // Output while no job is outstanding belongs to no job: log and
            // drop it, never take it for the next answer.
            return self.stray(&text);
        };
        if let Err(rest) = job.answer(Ok(text)) {
            // A batch with lines still to answer stays in front.
            self.inflight.push_front(rest);
        }
        self.settled = true;
        set_slot(self.slot, |s| {
            s.jobs_done += 1;
            s.state = WorkerState::Running;
        });
    }

    fn stray(&self, text: &str) {
        let (app, pid) = (self.proc.app(), self.proc.pid());
        tracing::warn!(app = %app, pid, "worker wrote while it had no job (dropped): {text}");
    }

    /// The hang timer fired: the process is replaced if the front job's
    /// deadline has passed.
    fn on_hang(&mut self) -> Option<Served> {
        self.hang_at = None;
        if self
            .inflight
            .front()
            .is_some_and(|q| Instant::now() < q.deadline)
        {
            return None; // set for a job answered since: re-armed
        }
        self.fail(
            JobError::Timeout("no result within the timeout; the worker was recycled".into()),
            JobError::WorkerCrashed(
                "the worker was replaced before it answered: an earlier job hung it".into(),
            ),
        );
        Some(Served::Recycle(
            "did not answer a job within its timeout (hung?)".into(),
        ))
    }

    /// A job from the queue (or the queue closed): written to the process,
    /// unless its caller gave up or its deadline passed while it waited.
    fn on_job(&mut self, job: Result<Queued, async_channel::RecvError>) -> Option<Served> {
        let Ok(job) = job else {
            // The queue closed: the app is stopping.
            return Some(self.stopped("the app was stopped on this peer"));
        };
        if job.abandoned() {
            return None; // the caller gave up while the job was queued
        }
        if Instant::now() >= job.deadline {
            job.fail(JobError::Timeout(
                "the job timed out while queued for a worker".into(),
            ));
            return None;
        }
        // A batch is written whole: it counts as one of the `depth` jobs
        // a process holds (see the module's documentation).
        let sent = match &job.payloads {
            Payloads::One(p) => self.proc.send(p.clone()),
            Payloads::Batch(ps) => ps.iter().all(|p| self.proc.send(p.clone())),
        };
        if !sent {
            let closed = JobError::WorkerCrashed("the worker's input is closed".into());
            job.fail(closed);
            return Some(Served::Recycle("its input closed".into()));
        }
        self.inflight.push_back(job);
        None
    }

    /// Fails what it holds: the app is stopping.
    fn stopped(&mut self, why: &str) -> Served {
        self.fail_all(JobError::NotRunning(why.into()));
        Served::Stop
    }

    /// Fails the front job with `front` and the others with `rest`.
    fn fail(&mut self, front: JobError, rest: JobError) {
        set_slot(self.slot, |s| s.in_flight = 0);
        if let Some(job) = self.inflight.pop_front() {
            job.finish(Err(front), Some(rest.clone()));
        }
        self.fail_all(rest);
    }

    /// Fails every job it holds with `err`. The slot shows none in flight
    /// before the first caller hears of it.
    fn fail_all(&mut self, err: JobError) {
        set_slot(self.slot, |s| s.in_flight = 0);
        for job in self.inflight.drain(..) {
            job.fail(err.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use WorkerState::*;

    #[test]
    fn capacity_is_the_live_processes_or_one_while_they_start() {
        for (states, capacity) in [
            (&[Starting, Starting][..], 1),
            (&[Running, Starting, Restarting], 1),
            (&[Running, Running, Failing], 2),
            (&[Restarting, Failing], 1),
            (&[Stopped], 1),
            (&[Failing, Failing], 0),
        ] {
            assert_eq!(capacity_of(states.iter().copied()), capacity, "{states:?}");
            // The same as the app's state and live processes say.
            let live = states.iter().filter(|s| **s == Running).count() as u32;
            let by_state = if live > 0 {
                live
            } else if states.iter().all(|s| *s == Failing) {
                0
            } else {
                1
            };
            assert_eq!(by_state, capacity, "{states:?}");
        }
    }
}
