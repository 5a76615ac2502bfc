//! Streaming jobs: an NDJSON request body of any length, one job per line,
//! answered by an NDJSON stream of results as they complete; and
//! pipelines, where each line's result from one app is the job of the
//! next (`?then=apps/...`, see [`pipeline`]).
//!
//! One task per stream (`run`) reads the body only while fewer than
//! `window` items are in flight or waiting to be written, sends them off
//! in batches ([`batch`]: the items of one stage that are ready together
//! go to one worker in one piece, each stage dispatched on its own, every
//! item with the usual failover), and hands output lines to the response
//! body through a channel of `window` places ([`flow`] says what is where
//! and what is due). A slow reader fills that channel, the task stops
//! taking results, the window fills, and the task stops reading the
//! request: memory stays bounded by the window whatever the length of the
//! stream, and the slowest stage sets the pace.
//!
//! Lines are numbered from 1. A line that is not JSON, is empty, is longer
//! than the job size limit, or whose job fails gets its error object and
//! the stream goes on. If the request body breaks off or stalls, the lines
//! read so far are answered, then one last `{"stream_error": "..."}` says
//! why.

mod batch;
mod flow;
mod lines;
pub mod pipeline;
pub mod reduce;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;

use crate::dispatch::{Dispatcher, Policy};
use crate::error::JobError;
use crate::json::one_line;
use crate::obs::metrics;
use batch::{batch_lines, next_batch, one_batch};
use flow::{Flow, Group, Output};
use lines::{LineError, Lines};
use pipeline::Stages;

pub use crate::api::NDJSON;
/// Items in flight (or answered and waiting to be written) per stream.
pub const DEFAULT_WINDOW: usize = 256;
/// The largest `window` a stream may ask for.
pub const MAX_WINDOW: usize = 4096;

/// How a stream runs, from its request.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// Answers in the order of the lines (else as they complete).
    pub ordered: bool,
    /// Items in flight or waiting to be written, at most.
    pub window: usize,
    /// Per job.
    pub timeout: Duration,
    /// How each batch's worker is chosen.
    pub policy: Policy,
    /// Longest line (the job size limit).
    pub max_line: usize,
    /// Longest wait for the next piece of the request body.
    pub idle_timeout: Duration,
}

/// Starts the stream's task and returns the streaming response, once the
/// request's body has begun to arrive.
///
/// Why wait for it: a client that sent `Expect: 100-continue` (curl does
/// for any body over 1 MiB) sends the body only after `100 Continue`,
/// which hyper sends when the body is first read. Answered with the
/// response's head before that, curl waits a whole second before it sends
/// anything (this was most of the time of a 100,000-line stream).
pub async fn respond(
    dispatcher: Dispatcher,
    stages: Stages,
    body: Body,
    opts: StreamOptions,
) -> Response {
    let body = asked_for(body, opts).await;
    // Receiver: the response body below; dropped when the client goes
    // away, which ends the task at its next send.
    let (tx, rx) = mpsc::channel::<Bytes>(opts.window.max(1));
    tokio::spawn(run(dispatcher, stages, body, opts, tx));
    let out = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(out));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp
}

/// `body`, once its first piece has arrived (see [`respond`] for why).
async fn asked_for(body: Body, opts: StreamOptions) -> Body {
    let mut data = body.into_data_stream();
    // The first piece (or the end, or an error): kept for the task. A
    // client that sends nothing in time is left to the task's own idle
    // timeout.
    let first = tokio::time::timeout(opts.idle_timeout, data.next())
        .await
        .ok()
        .flatten();
    Body::from_stream(futures::stream::iter(first).chain(data))
}

/// What a reduced stream came to.
pub struct Reduced {
    /// The reducer's answer.
    pub answer: String,
    /// The results it reduced.
    pub count: u64,
    /// Lines (or items) that failed, left out.
    pub failed: u64,
}

/// A stream whose results go to the reducer `reducer` instead of the
/// client (see [`reduce`]), in completion order; its answer once the
/// input ended and every result is reduced. The stream's own error (its
/// input broke off) or the reducer's failure ends it.
pub async fn reduced(
    dispatcher: Dispatcher,
    stages: Stages,
    reducer: crate::apps::AppName,
    body: Body,
    opts: StreamOptions,
) -> Result<Reduced, JobError> {
    let opts = StreamOptions {
        ordered: false,
        ..opts
    };
    let body = asked_for(body, opts).await;
    let (tx, mut rx) = mpsc::channel::<Bytes>(opts.window.max(1));
    // Dropping `rx` (a failure here) ends the task at its next send.
    let task = tokio::spawn(run(dispatcher.clone(), stages, body, opts, tx));
    let mut r = reduce::Reducer::new(&dispatcher, reducer, opts.policy, opts.timeout);
    let mut failed = 0;
    while let Some(line) = rx.recv().await {
        match reduce::seen(&line) {
            reduce::Seen::Result(result) => r.add(result).await?,
            reduce::Seen::Failed => failed += 1,
            reduce::Seen::Broken(why) => {
                return Err(JobError::BadRequest(format!("{why}; nothing was reduced")));
            }
        }
    }
    let _ = task.await;
    let count = r.count;
    Ok(Reduced {
        answer: r.finish().await?,
        count,
        failed,
    })
}

/// The stream's task: reads lines while the window has room, sends the
/// items of each stage off in batches, and writes the answers, until the
/// input ended and every item is answered (or the client went away).
async fn run(
    dispatcher: Dispatcher,
    stages: Stages,
    body: Body,
    opts: StreamOptions,
    tx: mpsc::Sender<Bytes>,
) {
    let mut lines = Lines::new(body, opts.max_line);
    let mut output = Output::new(tx, opts.ordered);
    let mut flow = Flow::new(stages.clone(), opts.ordered);
    // Borrows the dispatcher and the stages: one future per batch, unboxed.
    let mut running = FuturesUnordered::new();
    let most = batch_lines(opts.window);
    let mut ready: Vec<(u64, Group)> = Vec::new();
    let mut read = 0u64;
    let mut input_done = false;
    let mut broken: Option<String> = None;
    let first = stages.get(0).clone();
    // Listed on the dashboard while it runs.
    let _listed = stages.is_pipeline().then(|| {
        let names = stages.iter().map(|a| a.to_string()).collect();
        crate::obs::stats::STATS.pipeline(names, crate::clock::unix_ms())
    });
    loop {
        let room =
            |flow: &Flow, output: &Output| flow.in_flight + output.waiting.len() < opts.window;
        // Every line the request has already delivered, while there is
        // room: lines that arrive together travel together.
        while !input_done && room(&flow, &output) {
            let Some(next) = lines.buffered() else { break };
            read += 1;
            admit(&mut flow, &first, read, next, &mut ready);
        }
        for (n, group) in ready.drain(..) {
            if output.send(n, group).await.is_err() {
                return;
            }
        }
        // Later stages first: items nearer the output leave the window
        // sooner. Never more items out than the window.
        for k in (0..stages.len()).rev() {
            while flow.dispatched < opts.window {
                let room = (opts.window - flow.dispatched).min(most);
                let batch = next_batch(&mut flow.forming[k], room);
                if batch.is_empty() {
                    break;
                }
                flow.dispatched += batch.len();
                running.push(one_batch(&dispatcher, &stages, k, batch, opts));
            }
        }
        tokio::select! {
            Some((k, answers)) = running.next(), if !running.is_empty() => {
                flow.dispatched -= answers.len();
                for (item, result) in answers {
                    flow.answered(k, item, result, &mut ready);
                }
            }
            next = tokio::time::timeout(opts.idle_timeout, lines.next()),
                if room(&flow, &output) && !input_done =>
            {
                match next_input(next, read, opts) {
                    Input::Line(line) => {
                        read += 1;
                        admit(&mut flow, &first, read, line, &mut ready);
                    }
                    Input::End(why) => {
                        input_done = true;
                        broken = why;
                    }
                }
            }
            else => break,
        }
    }
    if let Some(why) = broken {
        tracing::debug!(app = %first, "stream ended early: {why}");
        output.stream_error(why).await;
    }
}

/// Input line `n` into the flow: its job, or the error that answers it at
/// once (counted like a failed job of the first stage).
fn admit(
    flow: &mut Flow,
    first: &crate::apps::AppName,
    n: u64,
    line: Result<Bytes, JobError>,
    ready: &mut Vec<(u64, Group)>,
) {
    let job = checked(line);
    if let Err(e) = &job {
        metrics::job_done(first, Err(e), Duration::ZERO, None);
        tracing::debug!(app = %first, line = n, "line refused: {e}");
    }
    flow.admit(n, job, ready);
}

/// A line read from the request as a job (compact JSON), or the error that
/// answers it without running it.
fn checked(line: Result<Bytes, JobError>) -> Result<Arc<str>, JobError> {
    let line = line?;
    // Not UTF-8: the JSON check reports it.
    let text = String::from_utf8_lossy(&line);
    if text.trim().is_empty() {
        return Err(JobError::BadRequest("empty line".into()));
    }
    match one_line(&text) {
        Ok(p) => Ok(p.into()),
        Err(e) => Err(JobError::BadRequest(format!(
            "the line is not valid JSON ({e})"
        ))),
    }
}

/// What the next read of the request gave.
enum Input {
    /// A line (or why it cannot be a job).
    Line(Result<Bytes, JobError>),
    /// The end of the input: `None` when the body ended, or why it broke
    /// off.
    End(Option<String>),
}

/// The next read of the request, `read` lines into it.
fn next_input(
    next: Result<Option<Result<Bytes, LineError>>, tokio::time::error::Elapsed>,
    read: u64,
    opts: StreamOptions,
) -> Input {
    match next {
        Ok(Some(Ok(line))) => Input::Line(Ok(line)),
        Ok(Some(Err(LineError::TooLong))) => Input::Line(Err(JobError::TooLarge(format!(
            "the line is longer than the job size limit of {} bytes",
            opts.max_line
        )))),
        Ok(Some(Err(LineError::Body(e)))) => Input::End(Some(format!(
            "the request body broke off after {read} lines: {e}"
        ))),
        Ok(None) => Input::End(None),
        Err(_) => Input::End(Some(format!(
            "the request body stalled for {:?} after {read} lines",
            opts.idle_timeout
        ))),
    }
}
