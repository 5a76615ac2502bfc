//! `disruptor peer`: start everything, print where we are, run until a
//! signal, then shut down in order.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::sync::Arc;

use tokio::sync::watch;

use crate::apps::AppsDir;
use crate::config::PeerConfig;
use crate::deploy::{BundleError, BundleRef, Store};
use crate::dispatch::Dispatcher;
use crate::mesh::desired::DesiredApps;
use crate::network::bundles::Fetched;
use crate::worker::Workers;
use crate::{http, network};

/// How often the reconciler looks again at apps that were missing, so an
/// app copied into the apps directory later starts without a new `start`.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// How long a bundle that no decision and no worker refers to is kept
/// before it is deleted (at least: see [`gc_grace`]). A rollback within it
/// costs no fetch.
const GC_GRACE: Duration = Duration::from_secs(600);

/// How long a bundle whose contents were refused is left alone before it is
/// fetched again (the refusal may have been for room, freed since).
const REFUSED_RETRY: Duration = Duration::from_secs(600);

/// How long the tasks get to finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long after start a peer with a mesh to join may wait for the mesh
/// before answering that an app runs nowhere.
const LEARNING_WINDOW: Duration = Duration::from_secs(5);

pub async fn run(config: PeerConfig) -> anyhow::Result<()> {
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    let http_addr = http_listener.local_addr()?;
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
    let (desired_tx, desired_rx) = watch::channel(Arc::new(DesiredApps::default()));
    let mut registry = crate::obs::metrics::registry();
    let (client, event_loop) = network::start(
        &config.network(http_addr),
        Box::new(Announce(workers.clone())),
        desired_tx,
        &mut registry,
    )
    .await?;
    let registry = Arc::new(registry);
    let stream_control = event_loop.stream_control();
    // A peer that will be part of a mesh (it has somewhere to bootstrap
    // from, or an identity others may remember) learns the mesh's apps in
    // its first moments; until then a job waits rather than being told that
    // nothing runs its app.
    let learning_until = (!config.bootstrap.is_empty() || config.persistent_identity)
        .then(|| tokio::time::Instant::now() + LEARNING_WINDOW);
    let dispatcher = Dispatcher::new(
        workers.clone(),
        client,
        event_loop.local_peer_id().to_string(),
        config.retries,
        config.dispatch,
        desired_rx.clone(),
        learning_until,
    );
    let http_config = http::HttpConfig {
        max_job_bytes: config.max_job_bytes,
        max_connections: config.http_max_connections,
        header_timeout: config.http_header_timeout,
        body_timeout: config.http_body_timeout,
    };

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "disruptor peer {}", event_loop.local_peer_id())?;
        for addr in event_loop.listen_addrs() {
            writeln!(out, "listen: {addr}")?;
        }
        writeln!(out, "http: http://{http_addr}/")?;
        out.flush()?;
    }
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

    // Cancelled by a signal, or by any task that ends unexpectedly (each
    // holds a drop guard), so the peer never lingers half-alive.
    let shutdown = CancellationToken::new();
    // The HTTP endpoint stops first (when draining starts); its requests
    // in flight still complete. Cancelled with `shutdown` too.
    let http_shutdown = shutdown.child_token();
    let net = dispatcher.net().clone();
    let drain_dispatcher = dispatcher.clone();
    let tracker = TaskTracker::new();
    tracker.spawn(event_loop.run(shutdown.clone()));
    let access = http::Access {
        guard: crate::http::guard::Guard {
            hosts: config.http_hosts.clone(),
            token: config.http_token.clone(),
        },
        admins: config.admins.clone(),
    };
    tracker.spawn(http::serve(
        http_listener,
        dispatcher,
        registry,
        http_config,
        access,
        http_shutdown.clone(),
    ));
    tracker.spawn(reconcile(
        desired_rx,
        workers.clone(),
        net.clone(),
        gc_grace(config.worker_grace),
        shutdown.clone(),
    ));
    if let Some(store) = store {
        tracker.spawn(network::bundles::serve(
            stream_control.clone(),
            store,
            shutdown.clone(),
        ));
    }
    tracker.spawn(network::serve_inbound(
        stream_control,
        run_job(workers.clone()),
        config.max_job_bytes,
        shutdown.clone(),
    ));
    tracker.close();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
        _ = shutdown.cancelled() => tracing::warn!("a core task stopped, shutting down"),
    }
    // Drain: tell the mesh we are leaving (others stop sending jobs here),
    // take no new jobs, let those in flight finish, then stop.
    if !shutdown.is_cancelled() {
        let drain = async {
            let _ = tokio::time::timeout(Duration::from_secs(1), net.leave()).await;
            workers.start_draining();
            http_shutdown.cancel();
            let started = tokio::time::Instant::now();
            loop {
                // Jobs at this peer's workers, and jobs that entered here
                // and run elsewhere (their answers come back through us).
                let left = workers.in_flight() as usize + drain_dispatcher.in_flight();
                if left == 0 {
                    break;
                }
                if started.elapsed() >= config.drain_grace {
                    tracing::warn!(
                        jobs = left,
                        "drain grace of {:?} over; stopping with jobs in flight",
                        config.drain_grace
                    );
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tracing::info!("drained in {:?}", started.elapsed());
        };
        tokio::select! {
            _ = drain => {}
            _ = shutdown.cancelled() => tracing::warn!("a core task stopped while draining"),
            _ = sigint.recv() => tracing::warn!("second SIGINT: not waiting for jobs in flight"),
            _ = sigterm.recv() => tracing::warn!("second SIGTERM: not waiting for jobs in flight"),
        }
    }
    shutdown.cancel();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("tasks did not finish within {SHUTDOWN_GRACE:?}"),
        _ = sigint.recv() => tracing::warn!("second SIGINT: exiting at once"),
        _ = sigterm.recv() => tracing::warn!("second SIGTERM: exiting at once"),
    }
    tokio::select! {
        _ = workers.shutdown() => {}
        _ = sigint.recv() => tracing::warn!("second SIGINT: killing workers"),
        _ = sigterm.recv() => tracing::warn!("second SIGTERM: killing workers"),
    }
    tracing::info!("stopped");
    Ok(())
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
fn run_job(workers: Workers) -> network::RunJob {
    Arc::new(move |app, payload, deadline| {
        let workers = workers.clone();
        Box::pin(async move { workers.run(&app, payload, deadline).await })
    })
}

/// Applies the mesh's desired app state to this peer's workers whenever it
/// changes, and every few seconds (for apps that were missing); fetches
/// the deployed versions this peer does not have yet.
async fn reconcile(
    mut desired: watch::Receiver<Arc<DesiredApps>>,
    workers: Workers,
    net: crate::network::Client,
    gc_grace: Duration,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(RECONCILE_EVERY);
    let mut gc: Option<tokio::task::JoinHandle<()>> = None;
    // Fetches in progress, by bundle hash; each reports here when done,
    // and whether the bundle was refused.
    let fetching: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    let (fetched_tx, mut fetched_rx) = tokio::sync::mpsc::channel::<(String, bool)>(16);
    // Bundles refused lately, not fetched again until REFUSED_RETRY has
    // passed (at most one per decision: they expire or are replaced).
    let mut refused: std::collections::HashMap<String, tokio::time::Instant> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = desired.changed() => if changed.is_err() { return },
            _ = every.tick() => {}
            Some((hash, was_refused)) = fetched_rx.recv() => if was_refused {
                refused.insert(hash, tokio::time::Instant::now());
            },
        }
        let current = desired.borrow_and_update().clone();
        workers.apply(&current).await;
        crate::obs::metrics::track_apps(current.entries().map(|d| &d.app));
        let Some(store) = workers.store() else {
            continue;
        };
        refused.retain(|_, at| at.elapsed() < REFUSED_RETRY);
        for d in current.entries() {
            let Some(b) = &d.bundle else { continue };
            if store.has(&b.hash)
                || refused.contains_key(&b.hash)
                || !fetching
                    .lock()
                    .expect("fetching lock")
                    .insert(b.hash.clone())
            {
                continue;
            }
            let (store, net, b) = (store.clone(), net.clone(), b.clone());
            let (fetching, done, shutdown) =
                (fetching.clone(), fetched_tx.clone(), shutdown.clone());
            let app = d.app.clone();
            tokio::spawn(async move {
                let outcome = tokio::select! {
                    _ = shutdown.cancelled() => Fetch::GaveUp,
                    o = fetch_bundle(&store, &net, &app, &b) => o,
                };
                fetching.lock().expect("fetching lock").remove(&b.hash);
                let _ = done.send((b.hash, matches!(outcome, Fetch::Refused))).await;
            });
        }
        // One collection at a time, off the runtime (it deletes files).
        if gc.as_ref().is_none_or(|t| t.is_finished()) {
            let keep = referenced(&current, &workers, &fetching.lock().expect("fetching lock"));
            let store = store.clone();
            gc = Some(tokio::task::spawn_blocking(move || {
                for h in store.gc(&keep, gc_grace) {
                    tracing::info!(
                        version = &h[..12],
                        "removed a bundle nothing refers to any more"
                    );
                }
            }));
        }
    }
}

/// The bundles that must stay: those the mesh's decisions name (running
/// or stopped: a start needs it again), those this peer's workers run, and
/// those being fetched.
fn referenced(
    desired: &DesiredApps,
    workers: &Workers,
    fetching: &std::collections::HashSet<String>,
) -> std::collections::HashSet<String> {
    let decided = desired
        .entries()
        .filter_map(|d| d.bundle.as_ref().map(|b| b.hash.clone()));
    decided
        .chain(workers.running_versions())
        .chain(fetching.iter().cloned())
        .collect()
}

/// The collection grace: a replaced version's workers may take up to
/// `max(worker_grace, 30 s)` to finish their jobs and `worker_grace` more
/// to exit, and run from the bundle's directory all that time.
fn gc_grace(worker_grace: Duration) -> Duration {
    let retiring = worker_grace.max(Duration::from_secs(30)) * 2;
    GC_GRACE.max(retiring + Duration::from_secs(60))
}

/// How a fetch ended.
enum Fetch {
    Installed,
    /// The contents were refused. Every holder serves the same bytes (the
    /// hash says so), so fetching them again from another is pointless.
    Refused,
    GaveUp,
}

/// Fetches a bundle from the peers that announce it, one after another,
/// with backoff, until it is installed (or, after many rounds, gives up
/// until the next reconcile).
async fn fetch_bundle(
    store: &Store,
    net: &crate::network::Client,
    app: &crate::apps::AppName,
    b: &BundleRef,
) -> Fetch {
    let mut pause = Duration::from_millis(200);
    for round in 0..30 {
        for peer in holders(net, b) {
            let fetched = match net.fetch_bundle(peer, b, store).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(app = %app, from = %peer, round, "bundle fetch failed: {e}");
                    continue;
                }
            };
            match install(store, fetched, &b.hash).await {
                Ok(()) => {
                    tracing::info!(app = %app, version = &b.hash[..12], bytes = b.size, from = %peer, "installed a deployed version");
                    return Fetch::Installed;
                }
                // Says nothing about the bundle: another try may work.
                Err(BundleError::Io(e)) => {
                    tracing::warn!(app = %app, "cannot store a fetched bundle: {e}")
                }
                Err(e) => {
                    crate::obs::stats::STATS.error_now(
                        "deploy",
                        app.as_str(),
                        Some(peer.to_string()),
                        e.to_string(),
                    );
                    tracing::warn!(app = %app, from = %peer, "refused a bundle: {e}");
                    return Fetch::Refused;
                }
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(5));
    }
    tracing::warn!(app = %app, version = &b.hash[..12], "could not fetch a deployed version; will try again");
    Fetch::GaveUp
}

/// The peers that announce they hold `b`, in random order.
fn holders(net: &crate::network::Client, b: &BundleRef) -> Vec<libp2p::PeerId> {
    use rand::seq::SliceRandom;
    let mut holders: Vec<libp2p::PeerId> = net
        .mesh()
        .peers
        .iter()
        .filter(|p| p.is_up() && p.bundles.contains(&b.hash))
        .filter_map(|p| p.peer)
        .collect();
    holders.shuffle(&mut rand::thread_rng());
    holders
}

/// Installs a fetched archive off the runtime, holding its fetch permit
/// until it is unpacked.
async fn install(store: &Store, fetched: Fetched, hash: &str) -> Result<(), BundleError> {
    let (store, hash) = (store.clone(), hash.to_string());
    tokio::task::spawn_blocking(move || {
        let (archive, _permit) = fetched.into_parts();
        store.install_received(archive, Some(&hash)).map(drop)
    })
    .await
    .unwrap_or_else(|e| Err(BundleError::Io(std::io::Error::other(e))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_collection_grace_outlasts_a_retiring_version() {
        assert_eq!(gc_grace(Duration::from_secs(5)), GC_GRACE);
        assert_eq!(
            gc_grace(Duration::from_secs(600)),
            Duration::from_secs(2 * 600 + 60)
        );
    }
}
