//! `disruptor peer`: start everything, print where we are, run until a
//! signal, then shut down in order: leave the mesh, drain the jobs in
//! flight, stop the tasks, stop the workers.
//!
//! This is the one place that knows every layer: it builds the worker
//! registry, the network (handing it what it needs from above: how to run
//! an inbound job, what to announce), the dispatcher and the HTTP endpoint,
//! and the reconciler (`reconcile`) that applies the mesh's decisions.

mod reconcile;

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::apps::{AppName, AppsDir};
use crate::config::PeerConfig;
use crate::deploy::Store;
use crate::dispatch::Dispatcher;
use crate::error::JobError;
use crate::http;
use crate::mesh::desired::DesiredApps;
use crate::network::{self, EventLoop};
use crate::worker::Workers;

/// How long the tasks get to finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long after start a peer with a mesh to join may wait for the mesh
/// before answering that an app runs nowhere.
const LEARNING_WINDOW: Duration = Duration::from_secs(5);

/// Runs a peer until SIGTERM or SIGINT (a second one cuts each shutdown
/// step short), or until a core task stops.
pub async fn run(config: PeerConfig) -> anyhow::Result<()> {
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    let http_addr = http_listener.local_addr()?;
    let (parts, event_loop) = Parts::build(&config, http_addr).await?;
    announce_start(&config, &event_loop, http_addr)?;
    // Cancelled by a signal, or by any task that ends unexpectedly, so the
    // peer never lingers half-alive. The HTTP endpoint stops first (when
    // draining starts); its requests in flight still complete.
    let shutdown = CancellationToken::new();
    let http_shutdown = shutdown.child_token();
    let tracker = parts.spawn(
        &config,
        event_loop,
        http_listener,
        &shutdown,
        &http_shutdown,
    );
    let mut signals = Signals::new()?;
    tokio::select! {
        s = signals.next() => tracing::info!("{s} received, shutting down"),
        _ = shutdown.cancelled() => tracing::warn!("a core task stopped, shutting down"),
    }
    if !shutdown.is_cancelled() {
        tokio::select! {
            _ = parts.drain(config.drain_grace, &http_shutdown) => {}
            _ = shutdown.cancelled() => tracing::warn!("a core task stopped while draining"),
            s = signals.next() => tracing::warn!("second {s}: not waiting for jobs in flight"),
        }
    }
    shutdown.cancel();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("tasks did not finish within {SHUTDOWN_GRACE:?}"),
        s = signals.next() => tracing::warn!("second {s}: exiting at once"),
    }
    tokio::select! {
        _ = parts.workers.shutdown() => {}
        s = signals.next() => tracing::warn!("second {s}: killing workers"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The handles a running peer is made of.
struct Parts {
    workers: Workers,
    store: Option<Store>,
    net: network::Client,
    dispatcher: Dispatcher,
    desired: watch::Receiver<Arc<DesiredApps>>,
    registry: Arc<prometheus_client::registry::Registry>,
}

impl Parts {
    /// Builds the worker registry, the network and the dispatcher; returns
    /// them with the network's event loop, not running yet.
    async fn build(
        config: &PeerConfig,
        http_addr: std::net::SocketAddr,
    ) -> anyhow::Result<(Parts, EventLoop)> {
        let apps_dir = AppsDir::new(&config.apps_dir);
        if !apps_dir.root().is_dir() {
            tracing::warn!(dir = %config.apps_dir.display(), "apps directory does not exist: this peer runs no workers, but serves jobs through others");
        }
        let store = config.remote_deploy.then(|| {
            let store = Store::new(&config.data_dir, config.max_bundle_bytes);
            match config.max_store_bytes {
                Some(quota) => store.with_quota(quota),
                None => store,
            }
        });
        let workers = Workers::new(
            apps_dir,
            store.clone(),
            config.default_workers,
            config.worker_grace,
        );
        let (desired_tx, desired) = watch::channel(Arc::new(DesiredApps::default()));
        let mut registry = crate::obs::metrics::registry();
        let (net, event_loop) = network::start(
            &config.network(http_addr),
            Box::new(Announce(workers.clone())),
            desired_tx,
            &mut registry,
        )
        .await?;
        // A peer that will be part of a mesh (it has somewhere to bootstrap
        // from, or an identity others may remember) learns the mesh's apps
        // in its first moments; until then a job waits rather than being
        // told that nothing runs its app.
        let learning_until = (!config.bootstrap.is_empty() || config.persistent_identity)
            .then(|| tokio::time::Instant::now() + LEARNING_WINDOW);
        let dispatcher = Dispatcher::new(
            workers.clone(),
            net.clone(),
            event_loop.local_peer_id().to_string(),
            config.retries,
            config.dispatch,
            desired.clone(),
            learning_until,
        );
        let registry = Arc::new(registry);
        let parts = Parts {
            workers,
            store,
            net,
            dispatcher,
            desired,
            registry,
        };
        Ok((parts, event_loop))
    }

    /// Starts every task; each cancels `shutdown` if it ends on its own.
    fn spawn(
        &self,
        config: &PeerConfig,
        event_loop: EventLoop,
        http_listener: TcpListener,
        shutdown: &CancellationToken,
        http_shutdown: &CancellationToken,
    ) -> TaskTracker {
        let tracker = TaskTracker::new();
        let control = event_loop.stream_control();
        let usage = event_loop.usage();
        let handles = http::Handles {
            dispatcher: self.dispatcher.clone(),
            mesh: self.net.clone(),
            workers: self.workers.clone(),
            store: self.store.clone(),
            local_id: event_loop.local_peer_id().to_string(),
        };
        tracker.spawn(event_loop.run(shutdown.clone()));
        let access = http::Access {
            guard: http::guard::Guard {
                hosts: config.http_hosts.clone(),
                token: config.http_token.clone(),
            },
            admins: config.admins.clone(),
        };
        let http_config = http::HttpConfig {
            max_job_bytes: config.max_job_bytes,
            max_connections: config.http_max_connections,
            header_timeout: config.http_header_timeout,
            body_timeout: config.http_body_timeout,
        };
        tracker.spawn(http::serve(
            http_listener,
            handles,
            self.registry.clone(),
            http_config,
            access,
            http_shutdown.clone(),
        ));
        tracker.spawn(reconcile::reconcile(
            self.desired.clone(),
            self.workers.clone(),
            self.net.clone(),
            reconcile::gc_grace(config.worker_grace),
            // Two announcements from every peer: what they run is known.
            config.timing.announce_interval * 2,
            shutdown.clone(),
        ));
        if let Some(store) = &self.store {
            tracker.spawn(network::bundles::serve(
                control.clone(),
                store.clone(),
                shutdown.clone(),
            ));
        }
        tracker.spawn(network::serve_inbound(
            control,
            RunHere(self.workers.clone()),
            config.max_job_bytes,
            shutdown.clone(),
            usage,
        ));
        tracker.close();
        tracker
    }

    /// Drains: tells the mesh this peer is leaving (others stop sending it
    /// jobs), takes no new jobs, and waits for those in flight (at its
    /// workers, and those that entered here and run elsewhere: their
    /// answers come back through it), at most `grace`.
    async fn drain(&self, grace: Duration, http_shutdown: &CancellationToken) {
        let _ = tokio::time::timeout(Duration::from_secs(1), self.net.leave()).await;
        self.workers.start_draining();
        http_shutdown.cancel();
        let started = tokio::time::Instant::now();
        let idle = async {
            self.dispatcher.until_idle().await;
            self.workers.until_idle().await;
        };
        if tokio::time::timeout(grace, idle).await.is_err() {
            let left = self.workers.in_flight() as usize + self.dispatcher.in_flight();
            tracing::warn!(
                jobs = left,
                "drain grace of {grace:?} over; stopping with jobs in flight"
            );
        }
        tracing::info!("drained in {:?}", started.elapsed());
    }
}

/// Prints the banner tests and scripts read (id, addresses) and logs the
/// settings that matter for safety.
fn announce_start(
    config: &PeerConfig,
    event_loop: &EventLoop,
    http_addr: std::net::SocketAddr,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "disruptor peer {}", event_loop.local_peer_id())?;
    for addr in event_loop.listen_addrs() {
        writeln!(out, "listen: {addr}")?;
    }
    writeln!(out, "http: http://{http_addr}/")?;
    out.flush()?;
    tracing::info!(
        peer = %event_loop.local_peer_id(),
        private = config.psk.is_some(),
        bootstrap = config.bootstrap.len(),
        admins = config.admins.len(),
        remote_deploy = config.remote_deploy,
        http_token = config.http_token.is_some(),
        "peer started"
    );
    if config.admins.is_empty() {
        tracing::info!(
            "no admin keys (--admin): this peer takes unsigned start/stop of its own --apps and installs no deployed bundles"
        );
    }
    Ok(())
}

/// SIGTERM and SIGINT, whichever comes first, as often as they come.
struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// What this peer announces of its workers and bundles.
struct Announce(Workers);

impl network::Announced for Announce {
    fn apps(&self) -> Vec<crate::apps::AppStatus> {
        self.0.statuses()
    }
    fn bundles(&self) -> Vec<String> {
        self.0.held_bundles()
    }
    fn remote_deploy(&self) -> bool {
        self.0.store().is_some()
    }
}

/// Jobs other peers send here run on this peer's workers.
#[derive(Clone)]
struct RunHere(Workers);

impl network::RunJob for RunHere {
    async fn run(
        &self,
        app: AppName,
        payload: Arc<str>,
        deadline: Instant,
    ) -> Result<String, JobError> {
        self.0.run(&app, payload, deadline).await
    }

    async fn run_batch(
        &self,
        app: AppName,
        payloads: Vec<Arc<str>>,
        deadline: Instant,
    ) -> Vec<Result<String, JobError>> {
        let n = payloads.len();
        match self.0.run_batch(&app, payloads, deadline).await {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }
}
