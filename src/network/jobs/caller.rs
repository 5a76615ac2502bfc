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

use super::frame::{
    decode_answer, decode_batch_answer, encode_batch_request, encode_request, read_frame,
    write_frames,
};
use super::*;
use crate::apps::AppName;
use crate::error::JobError;
use crate::network::usage::{Held, Usage};

struct Link {
    /// Receiver: the link task's writer. Closed when the link dies.
    frames: mpsc::UnboundedSender<Vec<u8>>,
    pending: Pending,
    window: Arc<Semaphore>,
    dead: CancellationToken,
    /// Requests that took this link (see [`idle`]).
    uses: AtomicU64,
}

/// A link that took no request for this long, with none in flight, is
/// closed: its stream goes, and the connection under it is trimmed unless
/// something else uses it.
pub const LINK_IDLE: Duration = Duration::from_secs(20);

/// The caller's side: links to other peers, created on first use and
/// replaced when they die.
#[derive(Clone)]
pub struct JobLinks {
    control: Control,
    links: Arc<Mutex<HashMap<PeerId, Arc<Link>>>>,
    next_id: Arc<AtomicU64>,
    usage: Usage,
}

impl JobLinks {
    /// Links opened through `control`, each counted in `usage` while open.
    pub fn new(control: Control, usage: Usage) -> Self {
        JobLinks {
            control,
            links: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            usage,
        }
    }

    /// A handle for opening other streams (bundle fetches).
    pub fn control(&self) -> Control {
        self.control.clone()
    }

    fn link(&self, peer: PeerId) -> Arc<Link> {
        let mut links = self.links.lock().expect("links lock");
        if let Some(l) = links.get(&peer).filter(|l| !l.dead.is_cancelled()) {
            l.uses.fetch_add(1, Ordering::Relaxed);
            return l.clone();
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            frames: tx,
            pending: Arc::default(),
            window: Arc::new(Semaphore::new(WINDOW_PER_PEER)),
            dead: CancellationToken::new(),
            uses: AtomicU64::new(1),
        });
        links.insert(peer, link.clone());
        tokio::spawn(run_link(
            self.control.clone(),
            peer,
            rx,
            link.clone(),
            self.links.clone(),
            self.usage.hold(peer),
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
        let frame = |id, left| encode_request(id, job, left, app.as_str(), payload);
        self.request(peer, 1, deadline, frame, Waiter::One).await?
    }

    /// Runs a batch of jobs of `app` on `peer`'s workers: one frame out,
    /// one result per payload back, in their order. The batch takes one
    /// place of the link's window per job. `Err` when the batch as a whole
    /// got no answer (the link closed, the deadline passed): none of its
    /// jobs is known to have run.
    pub async fn send_batch(
        &self,
        peer: PeerId,
        app: &AppName,
        payloads: &[Arc<str>],
        deadline: Instant,
        job: u64,
    ) -> Result<Vec<Result<String, JobError>>, JobError> {
        let n = payloads.len();
        let frame = |id, left| encode_batch_request(id, job, left, app.as_str(), payloads);
        let waiter = |reply| Waiter::Batch {
            lines: n,
            results: Vec::with_capacity(n),
            reply,
        };
        self.request(peer, n, deadline, frame, waiter).await
    }

    /// One request on the link to `peer`: takes `places` of its window
    /// (waiting within the deadline), sends the frame that `frame` makes of
    /// the request's id and the time left, and waits for the answer that
    /// the link's reader hands to the waiter `waiter` makes.
    async fn request<T>(
        &self,
        peer: PeerId,
        places: usize,
        deadline: Instant,
        frame: impl FnOnce(u64, Duration) -> Vec<u8>,
        waiter: impl FnOnce(oneshot::Sender<T>) -> Waiter,
    ) -> Result<T, JobError> {
        let link = self.link(peer);
        let places = places.clamp(1, WINDOW_PER_PEER) as u32;
        let window = link.window.clone().acquire_many_owned(places);
        let _permit = match tokio::time::timeout_at(deadline, window).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(JobError::Unreachable(format!("the link to {peer} closed"))),
            Err(_) => {
                return Err(JobError::Timeout(format!(
                    "no result within the timeout: {WINDOW_PER_PEER} jobs were already in flight to {peer}"
                )));
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let frame = frame(id, deadline.saturating_duration_since(Instant::now()));
        let (reply, rx) = oneshot::channel();
        link.pending
            .lock()
            .expect("pending lock")
            .insert(id, waiter(reply));
        if link.dead.is_cancelled() || link.frames.send(frame).is_err() {
            link.pending.lock().expect("pending lock").remove(&id);
            return Err(JobError::Unreachable(format!("the link to {peer} closed")));
        }
        match tokio::time::timeout_at(deadline + Duration::from_millis(500), rx).await {
            Ok(Ok(answer)) => Ok(answer),
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
    _held: Held,
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
                r = idle(&link, &links, peer) => r,
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
    for (_, waiter) in pending {
        waiter.fail(JobError::Unreachable(reason.clone()));
    }
}

/// Returns once the link took no request for [`LINK_IDLE`] and has none
/// in flight, taking it out of `links` first (under their lock, so no
/// request can take it after that).
async fn idle(link: &Arc<Link>, links: &Mutex<HashMap<PeerId, Arc<Link>>>, peer: PeerId) -> String {
    let mut seen = link.uses.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(LINK_IDLE).await;
        let mut map = links.lock().expect("links lock");
        let uses = link.uses.load(Ordering::Relaxed);
        if uses == seen && link.pending.lock().expect("pending lock").is_empty() {
            if map.get(&peer).is_some_and(|l| Arc::ptr_eq(l, link)) {
                map.remove(&peer);
            }
            link.dead.cancel();
            return format!("idle for {LINK_IDLE:?}");
        }
        seen = uses;
    }
}

async fn read_answers<R: AsyncRead + Unpin>(read: R, pending: &Pending) -> String {
    let mut r = BufReader::with_capacity(IO_BUF, read);
    loop {
        let body = match read_frame(&mut r, MAX_ANSWER_BYTES).await {
            Ok(b) => b,
            Err(e) => return e,
        };
        if body[0] == KIND_BATCH_ANSWER {
            let (id, first, results) = match decode_batch_answer(&body) {
                Ok(a) => a,
                Err(e) => return e,
            };
            if let Err(e) = batch_part(pending, id, first, results) {
                return e;
            }
            continue;
        }
        let (id, result) = match decode_answer(&body) {
            Ok(a) => a,
            Err(e) => return e,
        };
        match pending.lock().expect("pending lock").remove(&id) {
            Some(Waiter::One(reply)) => {
                let _ = reply.send(result);
            }
            Some(Waiter::Batch { .. }) => {
                return format!("the peer answered batch {id} as one job");
            }
            None => {} // given up on (timed out)
        }
    }
}

/// Adds a part of batch `id`'s answer; its waiter hears once every result
/// is in. A part out of order, or more results than the batch had, is the
/// peer breaking the protocol: the link ends.
fn batch_part(
    pending: &Pending,
    id: u64,
    first: usize,
    part: Vec<Result<String, JobError>>,
) -> Result<(), String> {
    let mut map = pending.lock().expect("pending lock");
    let Some(Waiter::Batch { lines, results, .. }) = map.get_mut(&id) else {
        return match map.get(&id) {
            Some(Waiter::One(_)) => Err(format!("the peer answered job {id} as a batch")),
            _ => Ok(()), // given up on (timed out)
        };
    };
    if first != results.len() || first + part.len() > *lines {
        return Err(format!(
            "the peer's answer to batch {id} is out of order or too long"
        ));
    }
    results.extend(part);
    if results.len() == *lines
        && let Some(Waiter::Batch { results, reply, .. }) = map.remove(&id)
    {
        let _ = reply.send(results);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(
        pending: &Pending,
        id: u64,
        lines: usize,
    ) -> oneshot::Receiver<Vec<Result<String, JobError>>> {
        let (reply, rx) = oneshot::channel();
        pending.lock().unwrap().insert(
            id,
            Waiter::Batch {
                lines,
                results: Vec::new(),
                reply,
            },
        );
        rx
    }

    fn ok(n: usize) -> Vec<Result<String, JobError>> {
        (0..n).map(|i| Ok(i.to_string())).collect()
    }

    #[test]
    fn a_batch_is_answered_once_all_its_parts_are_in() {
        let pending = Pending::default();
        let mut rx = waiting(&pending, 7, 3);
        batch_part(&pending, 7, 0, ok(2)).unwrap();
        assert!(rx.try_recv().is_err(), "one result still missing");
        batch_part(&pending, 7, 2, vec![Err(JobError::Busy("full".into()))]).unwrap();
        let got = rx.try_recv().unwrap();
        assert_eq!(got.len(), 3);
        assert!(pending.lock().unwrap().is_empty());
        // A part for a batch given up on is dropped.
        batch_part(&pending, 8, 0, ok(1)).unwrap();
    }

    /// A peer that answers out of order, or with more results than the
    /// batch had, breaks the protocol: the link ends (its jobs fail over).
    #[test]
    fn a_part_out_of_order_or_too_long_is_refused() {
        let pending = Pending::default();
        let _rx = waiting(&pending, 1, 3);
        assert!(batch_part(&pending, 1, 1, ok(1)).is_err(), "a gap");
        assert!(
            batch_part(&pending, 1, 0, ok(4)).is_err(),
            "one result too many"
        );
        batch_part(&pending, 1, 0, ok(3)).unwrap();
        let (reply, _one) = oneshot::channel();
        pending.lock().unwrap().insert(2, Waiter::One(reply));
        assert!(
            batch_part(&pending, 2, 0, ok(1)).is_err(),
            "a single job answered as a batch"
        );
    }
}
