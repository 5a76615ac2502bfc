//! The reconciler: makes this peer's workers match the mesh's decisions
//! (and their placement, see [`crate::mesh::placement`]), fetches the
//! deployed versions it lacks from the peers that hold them, and collects
//! the bundles nothing refers to any more.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::api::MeshView;
use crate::apps::AppName;
use crate::deploy::{BundleError, BundleRef, Store};
use crate::mesh::desired::DesiredApps;
use crate::mesh::placement::{Candidate, Hold, place};
use crate::network::Client;
use crate::network::bundles::Fetched;
use crate::worker::Workers;

/// How often the reconciler looks again at apps that were missing, so an
/// app copied into the apps directory later starts without a new `start`
/// (a directory has no change notification that works everywhere).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// How long a bundle that no decision and no worker refers to is kept
/// before it is deleted (at least: see [`gc_grace`]). A rollback within it
/// costs no fetch.
const GC_GRACE: Duration = Duration::from_secs(600);

/// How long a bundle whose contents were refused is left alone before it is
/// fetched again (the refusal may have been for room, freed since).
const REFUSED_RETRY: Duration = Duration::from_secs(600);

/// Applies the mesh's desired app state to this peer's workers whenever it
/// changes, and every few seconds (for apps that were missing); fetches
/// the deployed versions this peer does not have yet.
///
/// Placement depends on the mesh too (who is up, who runs what), so a
/// change of the mesh view that moves an app onto or off this peer is
/// applied at once; `settle` is how long this peer listens to the mesh
/// after it starts before it takes a free place.
pub(super) async fn reconcile(
    mut desired: watch::Receiver<Arc<DesiredApps>>,
    workers: Workers,
    net: Client,
    gc_grace: Duration,
    settle: Duration,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let mut mesh = net.watch_mesh();
    let mut elsewhere: HashSet<AppName> = HashSet::new();
    let mut settle_seen = false;
    let mut every = tokio::time::interval(RECONCILE_EVERY);
    let mut gc: Option<tokio::task::JoinHandle<()>> = None;
    // Fetches in progress, by bundle hash; each reports here when done,
    // and whether the bundle was refused.
    let fetching: Arc<Mutex<HashSet<String>>> = Arc::default();
    let (fetched_tx, mut fetched_rx) = tokio::sync::mpsc::channel::<(String, bool)>(16);
    // Bundles refused lately, not fetched again until REFUSED_RETRY has
    // passed (at most one per decision: they expire or are replaced).
    let mut refused: HashMap<String, Instant> = Default::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = desired.changed() => if changed.is_err() { return },
            _ = every.tick() => {}
            Some((hash, was_refused)) = fetched_rx.recv() => if was_refused {
                refused.insert(hash, Instant::now());
            },
            // Settled: free places may be taken now.
            _ = tokio::time::sleep_until(started + settle), if !settle_seen => {
                settle_seen = true;
            }
            changed = mesh.changed() => {
                if changed.is_err() {
                    return;
                }
                // Only a change of placement is worth an apply.
                let view = mesh.borrow_and_update().clone();
                let settled = started.elapsed() >= settle;
                if placed_elsewhere(&desired.borrow(), &view, &workers, settled) == elsewhere {
                    continue;
                }
            }
        }
        let current = desired.borrow_and_update().clone();
        let settled = started.elapsed() >= settle;
        elsewhere = placed_elsewhere(&current, &net.mesh(), &workers, settled);
        workers.apply(&current, &elsewhere).await;
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

/// The apps to run that are placed on other peers than this one (see
/// [`crate::mesh::placement`]). Until `settled`, this peer takes no place
/// it does not hold already.
fn placed_elsewhere(
    desired: &DesiredApps,
    view: &MeshView,
    workers: &Workers,
    settled: bool,
) -> HashSet<AppName> {
    let mut out = HashSet::new();
    let placed: Vec<_> = desired
        .entries()
        .filter(|d| d.run && !d.placement().is_everywhere())
        .collect();
    if placed.is_empty() {
        return out;
    }
    let mine = workers.statuses();
    for d in placed {
        let mut candidates = vec![Candidate {
            id: &view.local.id,
            labels: &view.local.labels,
            hold: Hold::of(mine.iter().find(|s| s.app == d.app)),
        }];
        let mine_hold = candidates[0].hold;
        candidates.extend(view.up().map(|p| Candidate {
            id: &p.id,
            labels: &p.labels,
            hold: Hold::of(p.apps.iter().find(|s| s.app == d.app)),
        }));
        let chosen = place(&d.app, d.peers, &d.on, &candidates).chosen;
        let here = chosen.contains(&view.local.id) && (settled || mine_hold == Hold::Runs);
        if !here {
            out.insert(d.app.clone());
        }
    }
    out
}

/// The bundles that must stay: those the mesh's decisions name (running
/// or stopped: a start needs it again), those this peer's workers run, and
/// those being fetched.
fn referenced(
    desired: &DesiredApps,
    workers: &Workers,
    fetching: &HashSet<String>,
) -> HashSet<String> {
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
pub(super) fn gc_grace(worker_grace: Duration) -> Duration {
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
async fn fetch_bundle(store: &Store, net: &Client, app: &AppName, b: &BundleRef) -> Fetch {
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
fn holders(net: &Client, b: &BundleRef) -> Vec<libp2p::PeerId> {
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
