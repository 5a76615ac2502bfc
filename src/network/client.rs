//! The cloneable handle through which the rest of the peer (the HTTP layer,
//! the dispatcher) uses the network. It never touches the swarm: it reads
//! the [`MeshView`] the event loop publishes through a `watch` channel, and
//! sends [`Command`]s, each with a `oneshot` for the answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use super::behaviour::{JobRequest, MAX_JOBS_IN_FLIGHT_PER_PEER};
use crate::api::MeshView;
use crate::apps::AppName;
use crate::desired::DesiredApp;
use crate::error::JobError;

/// What the event loop is asked to do.
pub(crate) enum Command {
    /// Send a job to `peer`; the answer (or the transport failure) goes to `reply`.
    SendJob {
        peer: PeerId,
        request: JobRequest,
        reply: oneshot::Sender<Result<String, JobError>>,
    },
    /// Record a start/stop decision and tell the mesh.
    SetDesired {
        app: AppName,
        run: bool,
        workers: Option<u32>,
        reply: oneshot::Sender<DesiredApp>,
    },
}

#[derive(Clone)]
pub struct Client {
    /// Sender: the event loop. When it is dropped (the loop ended), the last
    /// view stays readable; the peer is shutting down anyway.
    view: watch::Receiver<Arc<MeshView>>,
    /// Receiver: the event loop. A send error means the loop has ended
    /// (the peer is stopping).
    commands: mpsc::Sender<Command>,
    /// Per remote peer, permits for jobs in flight to it, so no connection
    /// is asked for more concurrent streams than it allows.
    in_flight: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>>,
}

impl Client {
    pub(crate) fn new(
        view: watch::Receiver<Arc<MeshView>>,
        commands: mpsc::Sender<Command>,
    ) -> Self {
        Client {
            view,
            commands,
            in_flight: Arc::default(),
        }
    }

    /// The latest view of the mesh (cheap: an `Arc` clone).
    pub fn mesh(&self) -> Arc<MeshView> {
        self.view.borrow().clone()
    }

    /// Records a start (`run`) or stop decision for `app` and broadcasts it.
    pub async fn set_desired(
        &self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
    ) -> Option<DesiredApp> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SetDesired {
                app,
                run,
                workers,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Runs a job on `peer`'s workers. Waits for a stream permit, then for
    /// the answer, never past `deadline` (plus a moment for the remote
    /// peer's own timeout answer to arrive).
    pub async fn send_job(
        &self,
        peer: PeerId,
        app: &AppName,
        payload: &str,
        deadline: Instant,
    ) -> Result<String, JobError> {
        let sem = self
            .in_flight
            .lock()
            .expect("in-flight lock")
            .entry(peer)
            .or_insert_with(|| Arc::new(Semaphore::new(MAX_JOBS_IN_FLIGHT_PER_PEER)))
            .clone();
        let _permit = match tokio::time::timeout_at(deadline, sem.acquire_owned()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(JobError::Busy("the peer is stopping".into())),
            Err(_) => {
                return Err(JobError::Timeout(format!(
                    "no result within the timeout: {MAX_JOBS_IN_FLIGHT_PER_PEER} jobs were already in flight to {peer}"
                )));
            }
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let payload = serde_json::value::RawValue::from_string(payload.to_owned())
            .map_err(|e| JobError::BadRequest(format!("job is not valid JSON: {e}")))?;
        let request = JobRequest {
            app: app.to_string(),
            timeout_ms: remaining.as_millis().max(1) as u64,
            payload,
        };
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::SendJob {
                peer,
                request,
                reply,
            })
            .await
            .map_err(|_| JobError::Busy("this peer is stopping".into()))?;
        match tokio::time::timeout_at(deadline + Duration::from_millis(500), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(JobError::Unreachable(
                "this peer's network task stopped".into(),
            )),
            Err(_) => Err(JobError::Timeout(format!(
                "no result from {peer} within the timeout"
            ))),
        }
    }
}
