//! The caller's side: one link task per remote peer, writing requests and
//! reading answers on one long-lived stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncRead;
use futures::io::{AsyncReadExt, BufReader};
use libp2p::PeerId;
use libp2p_stream::Control;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::frame::{decode_answer, encode_request, read_frame, write_frames};
use super::*;
use crate::apps::AppName;
use crate::error::JobError;

struct Link {
    /// Receiver: the link task's writer. Closed when the link dies.
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    window: Arc<Semaphore>,
    dead: CancellationToken,
}

/// The caller's side: links to other peers, created on first use and
/// replaced when they die.
#[derive(Clone)]
pub struct JobLinks {
    control: Control,
    links: Arc<Mutex<HashMap<PeerId, Arc<Link>>>>,
    next_id: Arc<AtomicU64>,
}

impl JobLinks {
    pub fn new(control: Control) -> Self {
        JobLinks {
            control,
            links: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
        }
    }

    /// A handle for opening other streams (bundle fetches).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    fn link(&self, peer: PeerId) -> Arc<Link> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(l) = links.get(&peer).filter(|l| !l.dead.is_cancelled()) {
            return l.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            frames: tx,
            pending: Arc::default(),
            window: Arc::new(Semaphore::new(WINDOW_PER_PEER)),
            dead: CancellationToken::new(),
        });
        links.insert(peer, link.clone());
        tokio::spawn(run_link(
            self.control.clone(),
            peer,
            rx,
            link.clone(),
            self.links.clone(),
        ));
        link
    }

    /// Runs a job on `peer`'s workers; never waits past `deadline` (plus a
    /// moment for the remote peer's own timeout answer to arrive).
    pub async fn send_job(
        &self,
        peer: PeerId,
        app: &AppName,
        payload: &str,
        deadline: Instant,
        job: u64,
    ) -> Result<String, JobError> {
        let link = self.link(peer);
        let _permit = match tokio::time::timeout_at(deadline, link.window.clone().acquire_owned())
            .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(JobError::Unreachable(format!("the link to {peer} closed"))),
            Err(_) => {
                return Err(JobError::Timeout(format!(
                    "no result within the timeout: {WINDOW_PER_PEER} jobs were already in flight to {peer}"
                )));
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let frame = encode_request(id, job, remaining, app.as_str(), payload);
        let (reply, rx) = oneshot::channel();
        link.pending.lock().expect("pending lock").insert(id, reply);
        if link.dead.is_cancelled() || link.frames.send(frame).is_err() {
            link.pending.lock().expect("pending lock").remove(&id);
            return Err(JobError::Unreachable(format!("the link to {peer} closed")));
        }
        match tokio::time::timeout_at(deadline + Duration::from_millis(500), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(JobError::Unreachable(format!("the link to {peer} closed"))),
            Err(_) => {
                link.pending.lock().expect("pending lock").remove(&id);
                Err(JobError::Timeout(format!(
                    "no result from {peer} within the timeout"
                )))
            }
        }
    }
}

/// Owns one outbound stream: writes queued frames (batched), reads answers.
/// When it ends, for any reason, every pending job fails at once.
async fn run_link(
    mut control: Control,
    peer: PeerId,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    link: Arc<Link>,
    links: Arc<Mutex<HashMap<PeerId, Arc<Link>>>>,
) {
    let reason = match tokio::time::timeout(
        Duration::from_secs(10),
        control.open_stream(peer, JOBS_STREAM_PROTOCOL),
    )
    .await
    {
        Err(_) => format!("could not open a job stream to {peer} within 10 s"),
        Ok(Err(e)) => format!("could not open a job stream to {peer}: {e}"),
        Ok(Ok(stream)) => {
            let (read, write) = stream.split();
            tokio::select! {
                r = write_frames(write, &mut frames) => match r {
                    Ok(()) => "the link was closed".to_string(),
                    Err(e) => format!("the connection to {peer} failed: {e}"),
                },
                r = read_answers(read, &link.pending) => format!("the connection to {peer} was lost: {r}"),
            }
        }
    };
    tracing::debug!(%peer, "job link ended: {reason}");
    link.dead.cancel();
    link.window.close();
    {
        let mut map = links.lock().expect("links lock");
        if map.get(&peer).is_some_and(|l| Arc::ptr_eq(l, &link)) {
            map.remove(&peer);
        }
    }
    frames.close();
    let pending: Vec<_> = link.pending.lock().expect("pending lock").drain().collect();
    for (_, reply) in pending {
        let _ = reply.send(Err(JobError::Unreachable(reason.clone())));
    }
}

async fn read_answers<R: AsyncRead + Unpin>(read: R, pending: &Pending) -> String {
    let mut r = BufReader::with_capacity(IO_BUF, read);
    loop {
        let body = match read_frame(&mut r, MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(e) => return e,
        };
        let (id, result) = match decode_answer(&body) {
            Ok(a) => a,
            Err(e) => return e,
        };
        if let Some(reply) = pending.lock().expect("pending lock").remove(&id) {
            let _ = reply.send(result);
        }
    }
}
