//! Streaming jobs: an NDJSON request body of any length, one job per line,
//! answered by an NDJSON stream of results as they complete.
//!
//! One task per stream reads the body only while fewer than `window` lines
//! are in flight or waiting to be written, runs each line through the
//! [`Dispatcher`] (so every job gets the usual failover), and hands output
//! lines to the response body through a channel of `window` places. A slow
//! reader fills that channel, the task stops taking results, the window
//! fills, and the task stops reading the request: memory stays bounded by
//! the window whatever the length of the stream.
//!
//! Output, one JSON value per line:
//! - ordered (default): line n of the output answers line n of the input:
//!   the worker's result, or `{"line": n, "error": "..."}`;
//! - unordered: in completion order, `{"line": n, "result": ...}` or
//!   `{"line": n, "error": "..."}`.
//!
//! Lines are numbered from 1. A line that is not JSON, is empty, is longer
//! than the job size limit, or whose job fails gets its error object and
//! the stream goes on. If the request body breaks off or stalls, the lines
//! read so far are answered, then one last `{"stream_error": "..."}` says
//! why.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::BytesMut;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::apps::AppName;
use crate::dispatch::{Dispatcher, Policy};
use crate::error::JobError;
use crate::json::one_line;

pub const NDJSON: &str = "application/x-ndjson";
/// Lines in flight (or answered and waiting to be written) per stream.
pub const DEFAULT_WINDOW: usize = 256;
pub const MAX_WINDOW: usize = 4096;

#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    pub ordered: bool,
    pub window: usize,
    /// Per job.
    pub timeout: Duration,
    pub policy: Policy,
    /// Longest line (the job size limit).
    pub max_line: usize,
    /// Longest wait for the next piece of the request body.
    pub idle_timeout: Duration,
}

/// Starts the stream's task and returns the streaming response.
pub fn respond(dispatcher: Dispatcher, app: AppName, body: Body, opts: StreamOptions) -> Response {
    // Receiver: the response body below; dropped when the client goes
    // away, which ends the task at its next send.
    let (tx, rx) = mpsc::channel::<Bytes>(opts.window.max(1));
    tokio::spawn(run(dispatcher, app, body, opts, tx));
    let out = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    let mut resp = Response::new(Body::from_stream(out));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    resp
}

/// The output of one input line, numbered from 1.
fn line_output(n: u64, ordered: bool, result: Result<String, JobError>) -> Bytes {
    let mut s = match (result, ordered) {
        (Ok(r), true) => r,
        (Ok(r), false) => format!("{{\"line\":{n},\"result\":{r}}}"),
        (Err(e), _) => format!(
            "{{\"line\":{n},\"error\":{}}}",
            serde_json::Value::String(e.to_string())
        ),
    };
    s.push('\n');
    Bytes::from(s)
}

async fn run(
    dispatcher: Dispatcher,
    app: AppName,
    body: Body,
    opts: StreamOptions,
    tx: mpsc::Sender<Bytes>,
) {
    let mut lines = Lines::new(body, opts.max_line);
    let mut running = FuturesUnordered::new();
    // Ordered mode: answers that came before an earlier line's.
    let mut waiting: BTreeMap<u64, Bytes> = BTreeMap::new();
    let mut next_out = 1u64;
    let mut read = 0u64;
    let mut input_done = false;
    let mut broken: Option<String> = None;
    loop {
        let room = running.len() + waiting.len() < opts.window;
        tokio::select! {
            Some((n, out)) = running.next(), if !running.is_empty() => {
                if opts.ordered {
                    waiting.insert(n, out);
                    while let Some(out) = waiting.remove(&next_out) {
                        if tx.send(out).await.is_err() {
                            return;
                        }
                        next_out += 1;
                    }
                } else if tx.send(out).await.is_err() {
                    return;
                }
            }
            next = tokio::time::timeout(opts.idle_timeout, lines.next()), if room && !input_done => {
                match next {
                    Ok(Some(Ok(line))) => {
                        read += 1;
                        running.push(one_job(dispatcher.clone(), app.clone(), read, line, opts));
                    }
                    Ok(Some(Err(LineError::TooLong))) => {
                        read += 1;
                        let e = JobError::TooLarge(format!(
                            "the line is longer than the job size limit of {} bytes",
                            opts.max_line
                        ));
                        let out = line_output(read, opts.ordered, Err(e));
                        running.push(Box::pin(async move { (read, out) }));
                    }
                    Ok(Some(Err(LineError::Body(e)))) => {
                        broken = Some(format!("the request body broke off after {read} lines: {e}"));
                        input_done = true;
                    }
                    Ok(None) => input_done = true,
                    Err(_) => {
                        broken = Some(format!(
                            "the request body stalled for {:?} after {read} lines",
                            opts.idle_timeout
                        ));
                        input_done = true;
                    }
                }
            }
            else => break,
        }
    }
    if let Some(why) = broken {
        tracing::debug!(app = %app, "stream ended early: {why}");
        let mut s = serde_json::json!({ "stream_error": why }).to_string();
        s.push('\n');
        let _ = tx.send(Bytes::from(s)).await;
    }
}

type JobFuture = std::pin::Pin<Box<dyn std::future::Future<Output = (u64, Bytes)> + Send>>;

/// One line's job: validated, run with failover, and retried while the
/// mesh is merely saturated (a stream waits rather than failing lines).
fn one_job(d: Dispatcher, app: AppName, n: u64, line: String, opts: StreamOptions) -> JobFuture {
    Box::pin(async move {
        let job = crate::obs::stats::new_job_id();
        let span = tracing::debug_span!("job", id = %crate::obs::stats::job_id_text(job), app = %app, line = n);
        let started = std::time::Instant::now();
        let _in_flight = crate::obs::metrics::InFlight::new();
        let (result, peer) = async {
            if line.trim().is_empty() {
                return (Err(JobError::BadRequest("empty line".into())), None);
            }
            let payload: Arc<str> = match one_line(&line) {
                Ok(p) => p.into(),
                Err(e) => {
                    let e = JobError::BadRequest(format!("the line is not valid JSON ({e})"));
                    return (Err(e), None);
                }
            };
            let deadline = Instant::now() + opts.timeout;
            let mut pause = Duration::from_millis(5);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let out = d.run(&app, payload.clone(), left, opts.policy, job).await;
                match out.result {
                    Err(JobError::Busy(_)) if Instant::now() + pause < deadline => {
                        tokio::time::sleep(pause).await;
                        pause = (pause * 2).min(Duration::from_millis(200));
                    }
                    r => return (r.map(|done| done.result), out.last_peer),
                }
            }
        }
        .instrument(span.clone())
        .await;
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(peer = peer.as_deref().unwrap_or("-"), "job answered"),
            Err(e) => tracing::debug!(peer = peer.as_deref().unwrap_or("-"), "job failed: {e}"),
        });
        crate::obs::metrics::job_done(
            &app,
            result.as_ref().map(|_| ()),
            started.elapsed(),
            peer.as_deref(),
        );
        (n, line_output(n, opts.ordered, result))
    })
}

enum LineError {
    TooLong,
    Body(String),
}

/// Splits a request body into lines (without their `\n` or `\r\n`), each
/// at most `max` bytes; a longer line is skipped up to its end and
/// reported as `TooLong`. Holds at most one partial line (plus a chunk).
struct Lines {
    body: axum::body::BodyDataStream,
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline.
    scanned: usize,
    max: usize,
    /// Inside a line that is too long: drop bytes up to the next newline.
    skipping: bool,
    ended: bool,
}

impl Lines {
    fn new(body: Body, max: usize) -> Self {
        Lines {
            body: body.into_data_stream(),
            buf: BytesMut::new(),
            scanned: 0,
            max,
            skipping: false,
            ended: false,
        }
    }

    async fn next(&mut self) -> Option<Result<String, LineError>> {
        loop {
            if let Some(i) = self.buf[self.scanned..].iter().position(|b| *b == b'\n') {
                let mut line = self.buf.split_to(self.scanned + i + 1);
                self.scanned = 0;
                line.truncate(line.len() - 1);
                if line.last() == Some(&b'\r') {
                    line.truncate(line.len() - 1);
                }
                if std::mem::take(&mut self.skipping) || line.len() > self.max {
                    return Some(Err(LineError::TooLong));
                }
                return Some(Ok(String::from_utf8(line.to_vec()).unwrap_or_else(|e| {
                    // Not UTF-8: let the JSON check report it.
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                })));
            }
            self.scanned = self.buf.len();
            if self.buf.len() > self.max {
                self.buf.clear();
                self.scanned = 0;
                self.skipping = true;
            }
            if self.ended {
                if self.buf.is_empty() && !self.skipping {
                    return None;
                }
                // A last line without a newline.
                self.buf.extend_from_slice(b"\n");
                continue;
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(LineError::Body(e.to_string()))),
                None => self.ended = true,
            }
        }
    }
}

/// Fan-out (`?to=all`): the job once on every peer running the app, all at
/// once; each peer's result or error, keyed by peer id, when all answered
/// or the timeout passed.
pub async fn fan_out(
    d: &Dispatcher,
    app: &AppName,
    payload: Arc<str>,
    timeout: Duration,
    job: u64,
) -> Result<String, JobError> {
    let deadline = Instant::now() + timeout;
    let targets = d.everyone_running(app, deadline).await?;
    let runs = targets.into_iter().map(|(target, id)| {
        let payload = payload.clone();
        async move {
            let r =
                tokio::time::timeout_at(deadline, d.run_on(target, app, payload, deadline, job))
                    .await
                    .unwrap_or_else(|_| {
                        Err(JobError::Timeout(format!("no answer within {timeout:?}")))
                    });
            (id, r)
        }
    });
    let answers = futures::future::join_all(runs).await;
    let mut out = String::from("{");
    for (i, (id, r)) in answers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(id.clone()).to_string());
        out.push(':');
        match r {
            Ok(result) => out.push_str(result),
            Err(e) => out.push_str(&serde_json::json!({ "error": e.to_string() }).to_string()),
        }
    }
    out.push('}');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn split(chunks: Vec<&'static [u8]>, max: usize) -> Vec<Result<String, String>> {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c))),
        );
        let mut lines = Lines::new(Body::from_stream(stream), max);
        let mut out = Vec::new();
        while let Some(l) = lines.next().await {
            out.push(l.map_err(|e| match e {
                LineError::TooLong => "too long".to_string(),
                LineError::Body(e) => e,
            }));
        }
        out
    }

    #[tokio::test]
    async fn lines_are_split_across_chunks_and_bounded() {
        let got = split(vec![b"1\n2", b"2\r\n", b"\n", b"[3]"], 10).await;
        assert_eq!(
            got,
            vec![
                Ok("1".into()),
                Ok("22".into()),
                Ok("".into()),
                Ok("[3]".into())
            ]
        );
        // A long line is skipped to its end, whatever the chunks.
        let got = split(
            vec![
                b"ok\n0123456789",
                b"0123456789",
                b"01\nafter\n",
                b"0123456789012",
            ],
            10,
        )
        .await;
        assert_eq!(
            got,
            vec![
                Ok("ok".into()),
                Err("too long".into()),
                Ok("after".into()),
                Err("too long".into())
            ]
        );
    }
}
