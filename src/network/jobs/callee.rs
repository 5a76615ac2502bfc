//! The callee's side: accepts job streams, runs each request through the
//! handler the network was given, writes the answers back as they complete.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::io::{AsyncReadExt, BufReader};
use libp2p::{PeerId, Stream};
use libp2p_stream::Control;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::network::slots::PerPeerSlots;

use super::frame::{
    decode_batch_request, decode_request, decode_request_header, encode_answer,
    encode_batch_answer, read_frame, write_frames,
};
use super::*;
use crate::apps::AppName;
use crate::error::JobError;
use crate::network::RunJob;

/// The callee's side: accepts job streams and serves them until shutdown.
pub async fn serve_inbound<R: RunJob>(
    mut control: Control,
    run: R,
    max_job_bytes: usize,
    shutdown: CancellationToken,
    usage: crate::network::usage::Usage,
) {
    let mut incoming = match control.accept(JOBS_STREAM_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("cannot accept job streams: {e}");
            shutdown.cancel();
            return;
        }
    };
    let open = PerPeerSlots::new(MAX_INBOUND_STREAMS_PER_PEER);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            next = incoming.next() => match next {
                Some((peer, stream)) => {
                    let Some(slot) = open.take(peer) else {
                        tracing::warn!(%peer, "refused a job stream: {MAX_INBOUND_STREAMS_PER_PEER} already open from this peer");
                        drop(stream);
                        continue;
                    };
                    let run = run.clone();
                    let held = usage.hold(peer);
                    tokio::spawn(async move {
                        serve_stream(peer, stream, run, max_job_bytes).await;
                        drop((slot, held));
                    });
                }
                None => return,
            },
        }
    }
}

/// Serves one inbound stream in one task: a reader decodes requests, a
/// runner drives the jobs in flight, a writer sends answers as they
/// complete. Keeping all three in one task avoids a task (and a thread
/// hop) per job.
async fn serve_stream<R: RunJob>(peer: PeerId, stream: Stream, run: R, max_job_bytes: usize) {
    let (read, write) = stream.split();
    // Answers wait here for the writer. Bounded: when the caller stops
    // reading, the runner stops finishing jobs into it, stops taking
    // requests, and the reader stops reading; memory stays bounded.
    let (answers_tx, mut answers_rx) = mpsc::channel::<Vec<u8>>(INBOUND_CONCURRENCY);
    let (req_tx, mut req_rx) = mpsc::channel::<Vec<u8>>(INBOUND_CONCURRENCY);
    let reader = async {
        let mut r = BufReader::with_capacity(IO_BUF, read);
        loop {
            // A batch may be larger than one job (each of its jobs is held
            // to the limit when it runs).
            let most = max_job_bytes.max(MAX_BATCH_BYTES) + FRAME_HEADER_ROOM;
            let body = match read_frame(&mut r, most).await {
                Ok(b) => b,
                Err(e) => return e,
            };
            // The header must be sound (or the stream is out of sync); the
            // rest is checked when the job runs, and answered.
            if let Err(e) = decode_request_header(&body) {
                return e;
            }
            // A batch's framing too: its answer must name each of its jobs.
            if body[0] == KIND_BATCH_REQUEST
                && let Err(e) = decode_batch_request(&body)
            {
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
                    let sent = match answer {
                        Answer::One(frame) => answers_tx.send(frame).await.is_ok(),
                        Answer::Parts(frames) => {
                            let mut ok = true;
                            for frame in frames {
                                ok = ok && answers_tx.send(frame).await.is_ok();
                            }
                            ok
                        }
                    };
                    if !sent {
                        return;
                    }
                }
                body = req_rx.recv(), if running.len() < INBOUND_CONCURRENCY => {
                    let Some(body) = body else { return };
                    let run = run.clone();
                    running.push(async move {
                        if body[0] == KIND_BATCH_REQUEST {
                            return Answer::Parts(run_batch(&run, peer, &body, max_job_bytes).await);
                        }
                        let (id, result) = match decode_request(&body) {
                            Ok(r) => {
                                let span = tracing::debug_span!("job", id = %crate::obs::stats::job_id_text(r.job), app = %r.app, from = %peer);
                                let result = run_request(&run, r.app, r.payload, r.timeout, max_job_bytes).instrument(span.clone()).await;
                                span.in_scope(|| match &result {
                                    Ok(_) => tracing::debug!("ran the job for another peer"),
                                    Err(e) => tracing::debug!("the job failed here: {e}"),
                                });
                                (r.id, result)
                            }
                            Err(e) => (decode_request_header(&body).unwrap_or(0), Err(JobError::BadRequest(e))),
                        };
                        Answer::One(encode_answer(id, &result))
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

/// What one request's job leaves to write back.
enum Answer {
    One(Vec<u8>),
    /// A batch's answer, in as many frames as it takes.
    Parts(Vec<Vec<u8>>),
}

/// Runs a batch request: its app and each job checked as a single job's
/// are, the good ones run together, one result per job in its place.
async fn run_batch<R: RunJob>(
    run: &R,
    peer: PeerId,
    body: &[u8],
    max_job_bytes: usize,
) -> Vec<Vec<u8>> {
    let Ok(req) = decode_batch_request(body) else {
        // The reader decoded it before passing it on (a malformed batch
        // closes the stream).
        return Vec::new();
    };
    let span = tracing::debug_span!("batch", id = %crate::obs::stats::job_id_text(req.job), app = %req.app, jobs = req.payloads.len(), from = %peer);
    let results = async {
        let app = match AppName::parse(req.app) {
            Ok(a) => a,
            Err(e) => {
                let e = JobError::BadRequest(e.to_string());
                return vec![Err(e); req.payloads.len()];
            }
        };
        let mut results: Vec<Result<String, JobError>> = Vec::with_capacity(req.payloads.len());
        let mut good = Vec::with_capacity(req.payloads.len());
        for p in &req.payloads {
            if p.len() > max_job_bytes {
                results.push(Err(too_large(max_job_bytes)));
                continue;
            }
            match crate::json::one_line(p) {
                Ok(p) => {
                    good.push(Arc::<str>::from(p));
                    results.push(Ok(String::new())); // its place
                }
                Err(e) => results.push(Err(JobError::BadRequest(format!(
                    "job is not valid JSON: {e}"
                )))),
            }
        }
        if good.is_empty() {
            return results;
        }
        let timeout = req.timeout.min(crate::network::MAX_JOB_TIMEOUT);
        let mut ran = run
            .run_batch(app, good, Instant::now() + timeout)
            .await
            .into_iter();
        for r in results.iter_mut().filter(|r| r.is_ok()) {
            *r = ran
                .next()
                .unwrap_or_else(|| Err(JobError::WorkerCrashed("the batch lost this job".into())));
        }
        tracing::debug!("ran a batch for another peer");
        results
    }
    .instrument(span)
    .await;
    encode_batch_answer(req.id, &results)
}

async fn run_request<R: RunJob>(
    run: &R,
    app: &str,
    payload: &str,
    timeout: Duration,
    max_job_bytes: usize,
) -> Result<String, JobError> {
    let app = AppName::parse(app).map_err(|e| JobError::BadRequest(e.to_string()))?;
    if payload.len() > max_job_bytes {
        return Err(too_large(max_job_bytes));
    }
    let payload = crate::json::one_line(payload)
        .map_err(|e| JobError::BadRequest(format!("job is not valid JSON: {e}")))?;
    let timeout = timeout.min(crate::network::MAX_JOB_TIMEOUT);
    run.run(app, payload.into(), Instant::now() + timeout).await
}

/// A job over this peer's size limit (`--max-job-bytes`).
fn too_large(max_job_bytes: usize) -> JobError {
    JobError::TooLarge(format!(
        "the job is larger than the job size limit of {max_job_bytes} bytes on this peer"
    ))
}
