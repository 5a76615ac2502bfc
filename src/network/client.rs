//! The cloneable handle through which the rest of the peer (the HTTP layer,
//! the dispatcher, the reconciler) uses the network. It never touches the
//! swarm: it reads the [`MeshView`] the event loop publishes through a
//! `watch` channel, sends [`Command`]s, each with a `oneshot` for the
//! answer, and carries jobs and bundle fetches on streams of its own
//! (opened through `libp2p-stream`, outside the swarm task).

use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::bundles::Fetched;
use super::jobs::JobLinks;
use crate::apps::AppName;
use crate::deploy::{BundleRef, Store};
use crate::error::JobError;
use crate::mesh::desired::DesiredApp;
use crate::mesh::trust::Refusal;
use crate::mesh::view::MeshView;

/// What the event loop is asked to do.
pub(crate) enum Command {
    /// Tell the mesh this peer is leaving (it keeps serving what it has).
    Leave { reply: oneshot::Sender<()> },
    /// Record an unsigned start/stop decision taken here and tell the mesh
    /// (only on a peer without admins: the HTTP layer checks).
    SetDesired {
        app: AppName,
        run: bool,
        workers: Option<u32>,
        placement: crate::mesh::placement::Placement,
        reply: oneshot::Sender<Result<DesiredApp, Refusal>>,
    },
    /// Take a decision signed in the CLI: checked like one from gossip,
    /// merged, and told to the mesh.
    Decide {
        decision: Box<DesiredApp>,
        reply: oneshot::Sender<Result<DesiredApp, Refusal>>,
    },
}

/// The network, for everything above it: the mesh's view, decisions, jobs
/// to other peers, bundle fetches. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Client {
    /// Sender: the event loop. When it is dropped (the loop ended), the last
    /// view stays readable; the peer is shutting down anyway.
    view: watch::Receiver<Arc<MeshView>>,
    /// Receiver: the event loop. A send error means the loop has ended
    /// (the peer is stopping).
    commands: mpsc::Sender<Command>,
    /// Job streams to other peers.
    jobs: JobLinks,
    /// Bundle fetches this peer may run at once (shared by all clones).
    bundle_fetches: Arc<Semaphore>,
}

impl Client {
    pub(crate) fn new(
        view: watch::Receiver<Arc<MeshView>>,
        commands: mpsc::Sender<Command>,
        jobs: JobLinks,
    ) -> Self {
        Client {
            view,
            commands,
            jobs,
            bundle_fetches: Arc::new(Semaphore::new(super::bundles::MAX_FETCHES)),
        }
    }

    /// The latest view of the mesh (cheap: an `Arc` clone).
    pub fn mesh(&self) -> Arc<MeshView> {
        self.view.borrow().clone()
    }

    /// A receiver that sees every new view of the mesh from now on.
    pub fn watch_mesh(&self) -> watch::Receiver<Arc<MeshView>> {
        let mut rx = self.view.clone();
        rx.mark_unchanged();
        rx
    }

    /// Announces that this peer is leaving, so others stop sending it jobs;
    /// connections stay up so jobs in flight can still be answered.
    pub async fn leave(&self) {
        let (reply, rx) = oneshot::channel();
        if self.commands.send(Command::Leave { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Records an unsigned start (`run`) or stop decision for `app` and
    /// broadcasts it. `None` when the peer is stopping.
    pub async fn set_desired(
        &self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
        placement: crate::mesh::placement::Placement,
    ) -> Option<Result<DesiredApp, Refusal>> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SetDesired {
                app,
                run,
                workers,
                placement,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Takes a signed decision (start, stop or deployment): the event loop
    /// checks it against this peer's admins, merges it and broadcasts it.
    /// `None` when the peer is stopping.
    pub async fn decide(&self, decision: DesiredApp) -> Option<Result<DesiredApp, Refusal>> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Decide {
                decision: Box::new(decision),
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Fetches a bundle's archive from `peer` into `store`'s `tmp/`, at most
    /// [`super::bundles::MAX_FETCHES`] at a time (see [`super::bundles`]).
    pub async fn fetch_bundle(
        &self,
        peer: PeerId,
        bundle: &BundleRef,
        store: &Store,
    ) -> Result<Fetched, String> {
        let permits = self.bundle_fetches.clone();
        super::bundles::fetch(self.jobs.control(), permits, peer, bundle, store).await
    }

    /// Runs a job on `peer`'s workers, on the one long-lived job stream to
    /// that peer; never waits past `deadline` (plus a moment for the remote
    /// peer's own timeout answer to arrive).
    pub async fn send_job(
        &self,
        peer: PeerId,
        app: &AppName,
        payload: &str,
        deadline: Instant,
        job: u64,
    ) -> Result<String, JobError> {
        self.jobs.send_job(peer, app, payload, deadline, job).await
    }

    /// Runs a batch of jobs on `peer`'s workers in one frame each way:
    /// see [`JobLinks::send_batch`](super::jobs::JobLinks::send_batch).
    pub async fn send_batch(
        &self,
        peer: PeerId,
        app: &AppName,
        payloads: &[Arc<str>],
        deadline: Instant,
        job: u64,
    ) -> Result<Vec<Result<String, JobError>>, JobError> {
        self.jobs
            .send_batch(peer, app, payloads, deadline, job)
            .await
    }
}
