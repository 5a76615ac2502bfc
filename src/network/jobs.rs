//! The job transport between peers: one long-lived libp2p stream per
//! (caller, callee) pair carrying many jobs at once as framed messages with
//! ids, instead of a freshly negotiated substream per job.
//!
//! Streams are opened and accepted through `libp2p-stream`'s [`Control`],
//! so job traffic never passes through the swarm task: a caller's
//! [`JobLinks`] owns one link task per remote peer (writer and reader of
//! its stream); a callee runs one task per inbound stream that reads
//! requests, runs each on the local workers, and writes answers back in
//! whatever order they complete.
//!
//! Frame: `u32` big-endian length of the rest, then
//! - request: `1`, id `u64` (per link), job id `u64` (mesh-wide, for logs),
//!   timeout ms `u32`, app name length `u16`, app name, payload (one line
//!   of compact JSON);
//! - answer: `2`, id `u64`, status `u8` (0 ok, else a [`JobError`] kind),
//!   then the result JSON or the error message.
//!
//! Every frame is size-checked before it is read; a malformed frame closes
//! that stream (the sender's jobs then fail with an error, nobody waits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::Control;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::RunJob;
use crate::apps::AppName;
use crate::error::JobError;

pub const JOBS_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/jobs-stream/2");
/// Room for the header of a frame beyond its payload.
const FRAME_HEADER_ROOM: usize = 1024;
/// Largest answer accepted (a worker's result is at most 10 MiB).
const MAX_ANSWER_BYTES: usize = 10 * 1024 * 1024 + FRAME_HEADER_ROOM;
/// Jobs in flight from this peer to one other peer; more wait for a place
/// (within their own timeout). Bounds the memory a link can hold.
pub const WINDOW_PER_PEER: usize = 1024;
/// Jobs a callee runs at once for one inbound stream; it stops reading the
/// stream while at the limit, which pushes back on the caller.
const INBOUND_CONCURRENCY: usize = 1024;
/// Inbound job streams one peer may hold open at once. An honest peer
/// keeps one (a second while it replaces a broken one); more are closed at
/// once, so nobody can multiply `INBOUND_CONCURRENCY` by opening streams.
const MAX_INBOUND_STREAMS_PER_PEER: usize = 4;
const KIND_REQUEST: u8 = 1;
const KIND_ANSWER: u8 = 2;
const IO_BUF: usize = 64 * 1024;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<String, JobError>>>>>;

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

/// Writes frames from `rx`, flushing only when the queue is empty, so that
/// frames queued under load go out in few writes.
async fn write_frames<W: AsyncWrite + Unpin>(
    write: W,
    rx: &mut impl FrameQueue,
) -> std::io::Result<()> {
    let mut w = BufWriter::with_capacity(IO_BUF, write);
    while let Some(frame) = rx.recv().await {
        w.write_all(&frame).await?;
        while let Ok(frame) = rx.try_recv() {
            w.write_all(&frame).await?;
        }
        // Let the tasks that are ready run once before flushing: under
        // load they are about to queue frames of their own. Without this,
        // on a single runtime thread the woken writer runs right after each
        // job's task (tokio's LIFO slot) and every frame went out in a
        // socket write of its own (perf stat: ~1 sendto per job).
        tokio::task::yield_now().await;
        while let Ok(frame) = rx.try_recv() {
            w.write_all(&frame).await?;
        }
        w.flush().await?;
    }
    w.close().await
}

/// The two kinds of frame queue a writer drains: the caller's unbounded one
/// (bounded by its window) and the callee's bounded one.
trait FrameQueue {
    async fn recv(&mut self) -> Option<Vec<u8>>;
    fn try_recv(&mut self) -> Result<Vec<u8>, mpsc::error::TryRecvError>;
}

impl FrameQueue for mpsc::UnboundedReceiver<Vec<u8>> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        mpsc::UnboundedReceiver::recv(self).await
    }
    fn try_recv(&mut self) -> Result<Vec<u8>, mpsc::error::TryRecvError> {
        mpsc::UnboundedReceiver::try_recv(self)
    }
}

impl FrameQueue for mpsc::Receiver<Vec<u8>> {
    async fn recv(&mut self) -> Option<Vec<u8>> {
        mpsc::Receiver::recv(self).await
    }
    fn try_recv(&mut self) -> Result<Vec<u8>, mpsc::error::TryRecvError> {
        mpsc::Receiver::try_recv(self)
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

/// The callee's side: accepts job streams and serves them until shutdown.
pub async fn serve_inbound(
    mut control: Control,
    run: RunJob,
    max_job_bytes: usize,
    shutdown: CancellationToken,
) {
    let mut incoming = match control.accept(JOBS_STREAM_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("cannot accept job streams: {e}");
            shutdown.cancel();
            return;
        }
    };
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let Some(slot) = StreamSlot::take(&open, peer) else {
                        tracing::warn!(%peer, "refused a job stream: {MAX_INBOUND_STREAMS_PER_PEER} already open from this peer");
                        drop(stream);
                        continue;
                    };
                    let run = run.clone();
                    tokio::spawn(async move {
                        serve_stream(peer, stream, run, max_job_bytes).await;
                        drop(slot);
                    });
                }
                None => return,
            },
        }
    }
}

/// One of a peer's `MAX_INBOUND_STREAMS_PER_PEER` places; given back on drop.
struct StreamSlot {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl StreamSlot {
    fn take(open: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<StreamSlot> {
        let mut map = open.lock().expect("stream slots lock");
        let n = map.entry(peer).or_insert(0);
        if *n >= MAX_INBOUND_STREAMS_PER_PEER {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut map = self.open.lock().expect("stream slots lock");
        if let Some(n) = map.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.peer);
            }
        }
    }
}

/// Serves one inbound stream in one task: a reader decodes requests, a
/// runner drives the jobs in flight, a writer sends answers as they
/// complete. Keeping all three in one task avoids a task (and a thread
/// hop) per job.
async fn serve_stream(peer: PeerId, stream: Stream, run: RunJob, max_job_bytes: usize) {
    let (read, write) = stream.split();
    // Answers wait here for the writer. Bounded: when the caller stops
    // reading, the runner stops finishing jobs into it, stops taking
    // requests, and the reader stops reading; memory stays bounded.
    let (answers_tx, mut answers_rx) = mpsc::channel::<Vec<u8>>(INBOUND_CONCURRENCY);
    let (req_tx, mut req_rx) = mpsc::channel::<Vec<u8>>(INBOUND_CONCURRENCY);
    let reader = async {
        let mut r = BufReader::with_capacity(IO_BUF, read);
        loop {
            let body = match read_frame(&mut r, max_job_bytes + FRAME_HEADER_ROOM).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            // The header must be sound (or the stream is out of sync); the
            // rest is checked when the job runs, and answered.
            if let Err(e) = decode_request_header(&body) {
                return e;
            }
            // Waits while INBOUND_CONCURRENCY jobs are queued or running:
            // backpressure to the caller through the stream.
            if req_tx.send(body).await.is_err() {
                return "closed".into();
            }
        }
    };
    let runner = async {
        let mut running = futures::stream::FuturesUnordered::new();
        loop {
            tokio::select! {
                Some(answer) = running.next(), if !running.is_empty() => {
                    if answers_tx.send(answer).await.is_err() {
                        return;
                    }
                }
                body = req_rx.recv(), if running.len() < INBOUND_CONCURRENCY => {
                    let Some(body) = body else { return };
                    let run = run.clone();
                    running.push(async move {
                        let (id, result) = match decode_request(&body) {
                            Ok(r) => {
                                let span = tracing::debug_span!("job", id = %crate::obs::stats::job_id_text(r.job), app = %r.app, from = %peer);
                                let result = run_request(&run, r.app, r.payload, r.timeout).instrument(span.clone()).await;
                                span.in_scope(|| match &result {
                                    Ok(_) => tracing::debug!("ran the job for another peer"),
                                    Err(e) => tracing::debug!("the job failed here: {e}"),
                                });
                                (r.id, result)
                            }
                            Err(e) => (decode_request_header(&body).unwrap_or(0), Err(JobError::BadRequest(e))),
                        };
                        encode_answer(id, &result)
                    });
                }
            }
        }
    };
    let writer = write_frames(write, &mut answers_rx);
    tokio::select! {
        why = reader => tracing::debug!(%peer, "inbound job stream ended: {why}"),
        () = runner => {}
        r = writer => if let Err(e) = r { tracing::debug!(%peer, "inbound job stream write failed: {e}") },
    }
}

async fn run_request(
    run: &RunJob,
    app: &str,
    payload: &str,
    timeout: Duration,
) -> Result<String, JobError> {
    let app = AppName::parse(app).map_err(|e| JobError::BadRequest(e.to_string()))?;
    let payload = crate::json::one_line(payload)
        .map_err(|e| JobError::BadRequest(format!("job is not valid JSON: {e}")))?;
    let timeout = timeout.min(super::MAX_JOB_TIMEOUT);
    run(app, payload.into(), Instant::now() + timeout).await
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > max {
        return Err(format!("frame of {len} bytes is out of bounds (max {max})"));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(|e| format!("read: {e}"))?;
    Ok(body)
}

/// A decoded request frame.
#[derive(Debug, PartialEq)]
pub struct Request<'a> {
    pub id: u64,
    pub job: u64,
    pub timeout: Duration,
    pub app: &'a str,
    pub payload: &'a str,
}

const REQUEST_HEADER: usize = 1 + 8 + 8 + 4 + 2;

pub fn encode_request(id: u64, job: u64, timeout: Duration, app: &str, payload: &str) -> Vec<u8> {
    let app = &app.as_bytes()[..app.len().min(u16::MAX as usize)];
    let len = REQUEST_HEADER + app.len() + payload.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(KIND_REQUEST);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&job.to_be_bytes());
    f.extend_from_slice(&(timeout.as_millis().min(u32::MAX as u128) as u32).to_be_bytes());
    f.extend_from_slice(&(app.len() as u16).to_be_bytes());
    f.extend_from_slice(app);
    f.extend_from_slice(payload.as_bytes());
    f
}

/// The id of a request frame, if its header is well-formed.
fn decode_request_header(body: &[u8]) -> Result<u64, String> {
    if body.len() < REQUEST_HEADER || body[0] != KIND_REQUEST {
        return Err("malformed job request frame".into());
    }
    Ok(u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")))
}

/// Decodes a request frame's body (after its length).
pub fn decode_request(body: &[u8]) -> Result<Request<'_>, String> {
    if body.len() < REQUEST_HEADER || body[0] != KIND_REQUEST {
        return Err("malformed job request frame".into());
    }
    let id = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let job = u64::from_be_bytes(body[9..17].try_into().expect("8 bytes"));
    let timeout =
        Duration::from_millis(u32::from_be_bytes(body[17..21].try_into().expect("4 bytes")) as u64);
    let app_len = u16::from_be_bytes(body[21..23].try_into().expect("2 bytes")) as usize;
    let rest = &body[REQUEST_HEADER..];
    if rest.len() < app_len {
        return Err("malformed job request frame: app name runs past the end".into());
    }
    let app =
        std::str::from_utf8(&rest[..app_len]).map_err(|_| "app name is not UTF-8".to_string())?;
    let payload =
        std::str::from_utf8(&rest[app_len..]).map_err(|_| "job is not UTF-8".to_string())?;
    Ok(Request {
        id,
        job,
        timeout,
        app,
        payload,
    })
}

fn error_code(e: &JobError) -> u8 {
    match e {
        JobError::BadRequest(_) => 1,
        JobError::NotRunning(_) => 2,
        JobError::TooLarge(_) => 3,
        JobError::WorkerCrashed(_) => 4,
        JobError::BadOutput(_) => 5,
        JobError::Timeout(_) => 6,
        JobError::Busy(_) => 7,
        JobError::Unreachable(_) => 8,
    }
}

pub fn encode_answer(id: u64, result: &Result<String, JobError>) -> Vec<u8> {
    let (status, data) = match result {
        Ok(r) => (0u8, r.as_str()),
        Err(e) => (
            error_code(e),
            match e {
                JobError::BadRequest(m)
                | JobError::NotRunning(m)
                | JobError::TooLarge(m)
                | JobError::WorkerCrashed(m)
                | JobError::BadOutput(m)
                | JobError::Timeout(m)
                | JobError::Busy(m)
                | JobError::Unreachable(m) => m.as_str(),
            },
        ),
    };
    let len = 1 + 8 + 1 + data.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(KIND_ANSWER);
    f.extend_from_slice(&id.to_be_bytes());
    f.push(status);
    f.extend_from_slice(data.as_bytes());
    f
}

pub fn decode_answer(body: &[u8]) -> Result<(u64, Result<String, JobError>), String> {
    if body.len() < 10 || body[0] != KIND_ANSWER {
        return Err("malformed job answer frame".into());
    }
    let id = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let data = String::from_utf8(body[10..].to_vec())
        .map_err(|_| "job answer is not UTF-8".to_string())?;
    let result = match body[9] {
        0 => {
            // A result must be JSON; a peer that says otherwise is wrong.
            if serde_json::from_str::<&serde_json::value::RawValue>(&data).is_err() {
                Err(JobError::BadOutput(
                    "the remote peer answered a result that is not JSON".into(),
                ))
            } else {
                Ok(data)
            }
        }
        1 => Err(JobError::BadRequest(data)),
        2 => Err(JobError::NotRunning(data)),
        3 => Err(JobError::TooLarge(data)),
        4 => Err(JobError::WorkerCrashed(data)),
        5 => Err(JobError::BadOutput(data)),
        6 => Err(JobError::Timeout(data)),
        7 => Err(JobError::Busy(data)),
        8 => Err(JobError::Unreachable(data)),
        other => return Err(format!("unknown job answer status {other}")),
    };
    Ok((id, result))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any bytes as a frame body, or as a whole stream: errors, never
        /// a panic, and never a frame past the size limit.
        #[test]
        fn frames_from_anyone(body in prop::collection::vec(any::<u8>(), 0..64),
                              stream in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_request_header(&body);
            let _ = decode_request(&body);
            let _ = decode_answer(&body);
            let mut r = futures::io::Cursor::new(stream);
            while let Ok(f) = futures::executor::block_on(read_frame(&mut r, 32)) {
                prop_assert!(!f.is_empty() && f.len() <= 32);
            }
        }

        /// Whatever a caller encodes, the callee decodes the same.
        #[test]
        fn requests_round_trip(id in any::<u64>(), job in any::<u64>(), ms in any::<u32>(),
                               app in any::<String>(), payload in any::<String>()) {
            let timeout = Duration::from_millis(ms as u64);
            let f = encode_request(id, job, timeout, &app, &payload);
            prop_assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
            let r = decode_request(&f[4..]).map_err(TestCaseError::fail)?;
            prop_assert_eq!(r, Request { id, job, timeout, app: app.as_str(), payload: payload.as_str() });
        }

        #[test]
        fn answers_round_trip(id in any::<u64>(), json in crate::fuzz::json_value(), msg in any::<String>(), ok in any::<bool>()) {
            let r = if ok { Ok(json.to_string()) } else { Err(JobError::Timeout(msg)) };
            let f = encode_answer(id, &r);
            let (i, back) = decode_answer(&f[4..]).map_err(TestCaseError::fail)?;
            prop_assert_eq!((i, back), (id, r));
        }
    }

    #[test]
    fn frames_round_trip() {
        let f = encode_request(
            7,
            42,
            Duration::from_millis(1500),
            "apps/echo/echo",
            r#"{"a":1}"#,
        );
        assert_eq!(
            u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
            f.len() - 4
        );
        assert_eq!(
            decode_request(&f[4..]).unwrap(),
            Request {
                id: 7,
                job: 42,
                timeout: Duration::from_millis(1500),
                app: "apps/echo/echo",
                payload: r#"{"a":1}"#
            }
        );

        for r in [
            Ok("[1,2]".to_string()),
            Err(JobError::WorkerCrashed("boom".into())),
            Err(JobError::Timeout("slow".into())),
            Err(JobError::Unreachable("gone".into())),
        ] {
            let f = encode_answer(9, &r);
            let (id, back) = decode_answer(&f[4..]).unwrap();
            assert_eq!((id, back), (9, r));
        }
    }

    #[test]
    fn garbage_frames_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"\x01",
            b"\x02\x00",
            b"\x09aaaaaaaaaaaaaaaaaaa",
            b"\x01\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x01\xff\xff",
        ] {
            assert!(decode_request(body).is_err(), "{body:?}");
            assert!(decode_answer(body).is_err(), "{body:?}");
        }
        let mut bad_utf8 = encode_request(1, 2, Duration::ZERO, "apps/x", "1")[4..].to_vec();
        bad_utf8[REQUEST_HEADER] = 0xff;
        assert!(decode_request(&bad_utf8).is_err());
        let mut bad_status = encode_answer(1, &Ok("1".into()))[4..].to_vec();
        bad_status[9] = 99;
        assert!(decode_answer(&bad_status).is_err());
        let not_json = encode_answer(1, &Ok("not json".into()));
        assert!(matches!(
            decode_answer(&not_json[4..]).unwrap().1,
            Err(JobError::BadOutput(_))
        ));
    }
}
