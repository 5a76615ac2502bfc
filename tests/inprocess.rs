//! Meshes of several peers inside one test process: libp2p's memory
//! transport instead of TCP, and tokio's clock paused, so time moves only
//! when every peer is idle and a test of many virtual seconds takes a
//! fraction of a real one, the same way every run.
//!
//! Each peer is the real network layer (swarm, event loop, membership,
//! job links) and the real dispatcher. What it says about its apps and
//! how it runs the jobs others send it are given by the test (the network
//! takes both from the layer above, so no worker process is needed): the
//! tests drive membership, dispatch and failover deterministically. The
//! process tests (`tests/jobs.rs`, `tests/mesh.rs`, ...) remain the proof
//! with real peers and real workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use disruptor::apps::{AppName, AppState, AppStatus, AppsDir};
use disruptor::dispatch::{Dispatcher, Policy};
use disruptor::error::JobError;
use disruptor::mesh::desired::DesiredApps;
use disruptor::mesh::membership::Timing;
use disruptor::mesh::view::{DownReason, MeshView, PeerState};
use disruptor::network::{self, Announced, Client, RunJob, Settings};
use disruptor::worker::Workers;
use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a test peer answers the jobs it is sent.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// `{"peer": i}` at once.
    Answer,
    /// After this long (virtual time).
    Slow(Duration),
    /// The worker "dies" holding the job.
    Crash,
}

/// One peer of an in-process mesh.
struct Peer {
    index: usize,
    client: Client,
    dispatcher: Dispatcher,
    addr: Multiaddr,
    id: String,
    /// What it announces of the app.
    apps: Arc<Mutex<Vec<AppStatus>>>,
    behaviour: Arc<Mutex<Behaviour>>,
    /// Jobs it ran for others.
    ran: Arc<AtomicU32>,
    shutdown: CancellationToken,
    /// Its tasks, to kill it without a goodbye.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

struct FakeApps(Arc<Mutex<Vec<AppStatus>>>);

impl Announced for FakeApps {
    fn apps(&self) -> Vec<AppStatus> {
        self.0.lock().unwrap().clone()
    }
    fn bundles(&self) -> Vec<String> {
        Vec::new()
    }
    fn remote_deploy(&self) -> bool {
        false
    }
}

fn app() -> AppName {
    AppName::parse("apps/echo/echo").unwrap()
}

fn running(workers: u32) -> AppStatus {
    AppStatus {
        app: app(),
        state: AppState::Running,
        workers,
        in_flight: 0,
        clock: 1,
        error: None,
        version: None,
    }
}

impl Peer {
    /// Starts peer `index`, joining through `bootstrap` (if any).
    async fn start(index: usize, bootstrap: Option<&Multiaddr>) -> Peer {
        // Memory ports are shared by the whole process (tests run in parallel).
        static NEXT_PORT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
        let settings = Settings {
            keypair: Keypair::generate_ed25519(),
            listen: vec![format!("/memory/{port}").parse().unwrap()],
            bootstrap: bootstrap.into_iter().cloned().collect(),
            psk: None,
            timing: Timing::default(),
            admins: Default::default(),
            http_addr: "127.0.0.1:9".parse().unwrap(),
            labels: Default::default(),
        };
        let apps = Arc::new(Mutex::new(Vec::new()));
        let (desired_tx, desired_rx) = watch::channel(Arc::new(DesiredApps::default()));
        let mut registry = prometheus_client::registry::Registry::default();
        let (client, event_loop) = network::start(
            &settings,
            Box::new(FakeApps(apps.clone())),
            desired_tx,
            &mut registry,
        )
        .await
        .expect("start a peer");
        let id = event_loop.local_peer_id().to_string();
        let addr = event_loop.listen_addrs().pop().expect("a listen address");
        let behaviour = Arc::new(Mutex::new(Behaviour::Answer));
        let ran = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let control = event_loop.stream_control();
        let usage = event_loop.usage();
        let run = RunHere {
            index,
            behaviour: behaviour.clone(),
            ran: ran.clone(),
        };
        let tasks = vec![
            tokio::spawn(event_loop.run(shutdown.clone())),
            tokio::spawn(network::serve_inbound(
                control,
                run,
                1 << 20,
                shutdown.clone(),
                usage,
            )),
        ];
        let workers = Workers::new(
            AppsDir::new(std::path::Path::new("/nonexistent/apps")),
            None,
            1,
            Duration::from_secs(1),
        );
        let dispatcher = Dispatcher::new(
            workers,
            client.clone(),
            id.clone(),
            2,
            Policy::Random,
            desired_rx,
            None,
        );
        Peer {
            index,
            client,
            dispatcher,
            addr,
            id,
            apps,
            behaviour,
            ran,
            shutdown,
            tasks,
        }
    }

    /// Kills it as a crash would: its tasks stop where they are and its
    /// connections close, with no goodbye.
    fn kill(&self) {
        for t in &self.tasks {
            t.abort();
        }
    }

    fn view(&self) -> Arc<MeshView> {
        self.client.mesh()
    }

    fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    fn announce(&self, apps: Vec<AppStatus>) {
        *self.apps.lock().unwrap() = apps;
    }

    async fn job(&self, n: u32) -> Result<(String, u32), JobError> {
        let payload: Arc<str> = format!("{{\"n\": {n}}}").into();
        let out = self
            .dispatcher
            .run(
                &app(),
                payload,
                Duration::from_secs(30),
                Policy::Random,
                u64::from(n),
            )
            .await;
        out.result.map(|d| (d.result, out.attempts))
    }
}

/// What a peer does with a job another peer sent it.
#[derive(Clone)]
struct RunHere {
    index: usize,
    behaviour: Arc<Mutex<Behaviour>>,
    ran: Arc<AtomicU32>,
}

impl RunJob for RunHere {
    async fn run(
        &self,
        _app: AppName,
        _payload: Arc<str>,
        _deadline: Instant,
    ) -> Result<String, JobError> {
        let b = *self.behaviour.lock().unwrap();
        match b {
            Behaviour::Answer => {}
            Behaviour::Slow(d) => tokio::time::sleep(d).await,
            Behaviour::Crash => {
                return Err(JobError::WorkerCrashed(
                    "the worker died holding the job".into(),
                ));
            }
        }
        self.ran.fetch_add(1, Ordering::Relaxed);
        Ok(format!("{{\"peer\": {}}}", self.index))
    }
}

/// `n` peers, each joining through the one before it (a chain: every peer
/// but the first knows one other at start).
async fn chain(n: usize) -> Vec<Peer> {
    let mut peers: Vec<Peer> = Vec::new();
    for i in 0..n {
        let boot = peers.last().map(|p| p.addr.clone());
        peers.push(Peer::start(i, boot.as_ref()).await);
    }
    peers
}

/// Polls `check` every 50 ms of virtual time until it holds or `within`
/// (virtual) has passed; on timeout panics with what `seen` reports.
async fn eventually(
    what: &str,
    within: Duration,
    mut check: impl FnMut() -> bool,
    seen: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > within {
            panic!("not within {within:?} (virtual): {what}; seen: {}", seen());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

/// Each peer's count of peers it sees up.
fn up_counts(peers: &[Peer]) -> Vec<usize> {
    peers.iter().map(|p| p.view().up().count()).collect()
}

#[tokio::test(start_paused = true)]
async fn a_chain_of_six_converges_and_a_killed_peer_is_down_at_once() {
    let real = std::time::Instant::now();
    let peers = chain(6).await;
    let took = eventually(
        "every peer sees the 5 others up",
        Duration::from_secs(30),
        || up_counts(&peers).iter().all(|&n| n == 5),
        || format!("{:?}", up_counts(&peers)),
    )
    .await;
    println!("6 peers converged in {took:?} of virtual time");
    // Killed: its connections close, redials fail, it is down everywhere.
    let victim = &peers[3];
    victim.kill();
    let others: Vec<&Peer> = peers.iter().filter(|p| p.index != 3).collect();
    let state_of_victim = |p: &Peer| {
        p.view()
            .peers
            .iter()
            .find(|v| v.id == victim.id)
            .map(|v| (v.state, v.reason))
    };
    let took = eventually(
        "the killed peer is down (unreachable) at every other peer",
        Duration::from_secs(15),
        || {
            others.iter().all(|p| {
                state_of_victim(p) == Some((PeerState::Down, Some(DownReason::Unreachable)))
            })
        },
        || {
            format!(
                "{:?}",
                others
                    .iter()
                    .map(|p| state_of_victim(p))
                    .collect::<Vec<_>>()
            )
        },
    )
    .await;
    println!("the killed peer was down everywhere {took:?} (virtual) after it died");
    for p in &peers {
        p.shutdown.cancel();
    }
    println!("real time: {:?}", real.elapsed());
}

#[tokio::test(start_paused = true)]
async fn jobs_spread_over_every_worker_and_fail_over_a_crashing_one() {
    let peers = chain(4).await;
    for p in &peers[1..] {
        p.announce(vec![running(1)]);
    }
    let entry = &peers[0];
    let candidates = |p: &Peer| {
        p.view()
            .up()
            .filter(|v| v.apps.iter().any(|a| a.app == app()))
            .count()
    };
    eventually(
        "peer 0 sees the 3 others running the app",
        Duration::from_secs(30),
        || candidates(entry) == 3,
        || format!("{}", candidates(entry)),
    )
    .await;
    // 300 jobs from peer 0: each of the three gets about a third.
    let mut by_peer: HashMap<String, u32> = HashMap::new();
    for n in 0..300 {
        let (result, attempts) = entry.job(n).await.expect("a job");
        assert_eq!(attempts, 1);
        *by_peer.entry(result).or_default() += 1;
    }
    assert_eq!(by_peer.len(), 3, "{by_peer:?}");
    assert!(by_peer.values().all(|&n| n > 60), "{by_peer:?}");
    // Peer 2's worker now dies holding every job: each job that lands
    // there is tried again elsewhere and still answered.
    peers[2].set(Behaviour::Crash);
    let mut retried = 0;
    for n in 0..100 {
        let (result, attempts) = entry.job(n).await.expect("a job despite a crashing worker");
        assert_ne!(result, r#"{"peer": 2}"#);
        if attempts > 1 {
            retried += 1;
        }
    }
    assert!(
        retried > 10,
        "only {retried} of 100 jobs met the crashing worker"
    );
    assert_eq!(
        peers[2].ran.load(Ordering::Relaxed),
        by_peer[r#"{"peer": 2}"#]
    );
    for p in &peers {
        p.shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_held_by_a_peer_that_dies_is_answered_by_another() {
    let peers = chain(3).await;
    peers[1].announce(vec![running(1)]);
    let entry = &peers[0];
    let has_app =
        |p: &Peer, who: &Peer| p.view().up().any(|v| v.id == who.id && !v.apps.is_empty());
    eventually(
        "peer 0 sees peer 1 running the app",
        Duration::from_secs(30),
        || has_app(entry, &peers[1]),
        || format!("{:?}", up_counts(&peers)),
    )
    .await;
    // Peer 1 holds jobs for a minute; peer 2 starts the app too.
    peers[1].set(Behaviour::Slow(Duration::from_secs(60)));
    let job = entry.job(1);
    tokio::pin!(job);
    // Let the job reach peer 1 (only peer 1 runs the app).
    tokio::select! {
        r = &mut job => panic!("answered too early: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    // It counts as in flight at the peer it entered (a draining peer waits
    // for it).
    assert_eq!(entry.dispatcher.in_flight(), 1);
    peers[2].announce(vec![running(1)]);
    eventually(
        "peer 0 sees peer 2 running the app",
        Duration::from_secs(30),
        || has_app(entry, &peers[2]),
        String::new,
    )
    .await;
    let started = Instant::now();
    peers[1].kill();
    let (result, attempts) = job.await.expect("the job is answered by peer 2");
    assert_eq!(result, r#"{"peer": 2}"#);
    assert_eq!(attempts, 2);
    assert_eq!(entry.dispatcher.in_flight(), 0);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for p in &peers {
        p.shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_for_a_started_app_waits_for_its_first_worker_and_wakes_at_once() {
    let peers = chain(2).await;
    eventually(
        "the two peers see each other",
        Duration::from_secs(30),
        || up_counts(&peers) == [1, 1],
        || format!("{:?}", up_counts(&peers)),
    )
    .await;
    // The mesh wants the app running; nobody runs it yet.
    let decided = peers[0]
        .client
        .set_desired(app(), true, None, Default::default())
        .await
        .expect("running")
        .expect("taken");
    assert!(decided.run);
    let entry = &peers[0];
    let dispatcher = entry.dispatcher.clone();
    let job = tokio::spawn(async move {
        let out = dispatcher
            .run(
                &app(),
                r#"{"n": 7}"#.into(),
                Duration::from_secs(30),
                Policy::Random,
                7,
            )
            .await;
        (out.result.map(|d| d.result), Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!job.is_finished(), "answered with no worker anywhere");
    // Peer 1's worker comes up: the job goes there as soon as peer 0 hears
    // of it (it is woken by the new view, not by a timer).
    peers[1].announce(vec![running(1)]);
    let runs_it = |p: &Peer| p.view().up().any(|v| !v.apps.is_empty());
    eventually(
        "peer 0 hears that peer 1 runs the app",
        Duration::from_secs(3),
        || runs_it(entry),
        String::new,
    )
    .await;
    let heard = Instant::now();
    let (result, answered) = job.await.expect("the job task");
    assert_eq!(result.expect("the waiting job runs"), r#"{"peer": 1}"#);
    // The poll above looks every 50 ms (virtual); the job was answered
    // within that of the news, not at the end of its 3 s wait.
    let late = answered.saturating_duration_since(heard - Duration::from_millis(50));
    assert!(
        late <= Duration::from_millis(60),
        "answered {late:?} after the news"
    );
    for p in &peers {
        p.shutdown.cancel();
    }
}

#[tokio::test(start_paused = true)]
async fn least_loaded_sends_little_to_a_slow_peer() {
    let peers = chain(3).await;
    peers[1].announce(vec![running(1)]);
    peers[2].announce(vec![running(1)]);
    peers[1].set(Behaviour::Slow(Duration::from_millis(500)));
    let entry = &peers[0];
    let candidates = |p: &Peer| p.view().up().filter(|v| !v.apps.is_empty()).count();
    eventually(
        "peer 0 sees both running the app",
        Duration::from_secs(30),
        || candidates(entry) == 2,
        String::new,
    )
    .await;
    // 200 jobs, one every 10 ms (virtual), for each policy; where each ran
    // and how long it took.
    let mut results = Vec::new();
    for policy in [Policy::Random, Policy::LeastLoaded] {
        let mut jobs = Vec::new();
        for n in 0..200u64 {
            let d = entry.dispatcher.clone();
            jobs.push(tokio::spawn(async move {
                let started = Instant::now();
                let out = d
                    .run(&app(), "1".into(), Duration::from_secs(30), policy, n)
                    .await;
                (out.result.expect("a job").result, started.elapsed())
            }));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut slow = 0;
        let mut total = Duration::ZERO;
        for j in jobs {
            let (result, took) = j.await.unwrap();
            slow += u32::from(result == r#"{"peer": 1}"#);
            total += took;
        }
        results.push((slow, total / 200));
    }
    let [(r_slow, r_mean), (l_slow, l_mean)] = results[..] else {
        unreachable!()
    };
    println!(
        "random: {r_slow}/200 to the slow peer, mean {r_mean:?}; least-loaded: {l_slow}/200, mean {l_mean:?}"
    );
    assert!(r_slow > 70, "random sends about half: {r_slow}");
    assert!(
        l_slow * 3 < r_slow,
        "least-loaded avoids the slow peer: {l_slow} vs {r_slow}"
    );
    assert!(
        l_mean * 2 < r_mean,
        "and cuts the mean latency: {l_mean:?} vs {r_mean:?}"
    );
    for p in &peers {
        p.shutdown.cancel();
    }
}
