//! Streaming jobs: an NDJSON request body of any length, one job per line,
//! answered by an NDJSON stream of results as they complete.
//!
//! One task per stream (`run`) reads the body only while fewer than
//! `window` lines are in flight or waiting to be written, runs each line
//! through the [`Dispatcher`] (so every job gets the usual failover, and is
//! observed like any job: see [`super::observe`]), and hands output lines
//! to the response body through a channel of `window` places. A slow
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
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

use super::observe::{self, Outcome, Source};
use crate::apps::AppName;
use crate::dispatch::{Dispatcher, Policy};
use crate::error::JobError;
use crate::json::one_line;
use crate::obs::stats;

pub use crate::api::NDJSON;
/// Lines in flight (or answered and waiting to be written) per stream.
pub const DEFAULT_WINDOW: usize = 256;
/// The largest `window` a stream may ask for.
pub const MAX_WINDOW: usize = 4096;

/// How a stream runs, from its request.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    /// Answers in the order of the lines (else as they complete).
    pub ordered: bool,
    /// Lines in flight or waiting to be written, at most.
    pub window: usize,
    /// Per job.
    pub timeout: Duration,
    /// How each line's worker is chosen.
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

/// The stream's task: reads lines while the window has room, starts their
/// jobs, and writes the answers, until the input ended and every job is
/// answered (or the client went away).
async fn run(
    dispatcher: Dispatcher,
    app: AppName,
    body: Body,
    opts: StreamOptions,
    tx: mpsc::Sender<Bytes>,
) {
    let mut lines = Lines::new(body, opts.max_line);
    let mut output = Output::new(tx, opts.ordered);
    // Borrows the dispatcher and the app: one future per line, unboxed.
    let mut running = FuturesUnordered::new();
    let mut read = 0u64;
    let mut input_done = false;
    let mut broken: Option<String> = None;
    loop {
        let room = running.len() + output.waiting.len() < opts.window;
        tokio::select! {
            Some((n, answer)) = running.next(), if !running.is_empty() => {
                if output.send(n, answer).await.is_err() {
                    return;
                }
            }
            next = tokio::time::timeout(opts.idle_timeout, lines.next()), if room && !input_done => {
                match next_input(next, read, opts) {
                    Input::Line(line) => {
                        read += 1;
                        running.push(one_job(&dispatcher, &app, read, line, opts));
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
        tracing::debug!(app = %app, "stream ended early: {why}");
        output.stream_error(why).await;
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

/// The response side of a stream: answers written in the order they are
/// due, through the channel to the response body.
struct Output {
    tx: mpsc::Sender<Bytes>,
    ordered: bool,
    /// Ordered mode: answers that came before an earlier line's.
    waiting: BTreeMap<u64, Bytes>,
    /// Ordered mode: the line whose answer is due.
    next: u64,
}

/// The client went away.
struct Gone;

impl Output {
    fn new(tx: mpsc::Sender<Bytes>, ordered: bool) -> Output {
        Output {
            tx,
            ordered,
            waiting: BTreeMap::new(),
            next: 1,
        }
    }

    /// Line `n`'s answer: written now, or when the lines before it are
    /// (ordered mode).
    async fn send(&mut self, n: u64, answer: Bytes) -> Result<(), Gone> {
        if !self.ordered {
            return self.tx.send(answer).await.map_err(|_| Gone);
        }
        self.waiting.insert(n, answer);
        while let Some(answer) = self.waiting.remove(&self.next) {
            self.tx.send(answer).await.map_err(|_| Gone)?;
            self.next += 1;
        }
        Ok(())
    }

    /// The last line of a stream whose input broke off: why.
    async fn stream_error(self, why: String) {
        let mut s = serde_json::json!({ "stream_error": why }).to_string();
        s.push('\n');
        let _ = self.tx.send(Bytes::from(s)).await;
    }
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

/// Line `n`'s job, observed, and its output line. A line refused as it
/// was read (too long) is answered without being a job.
async fn one_job(
    d: &Dispatcher,
    app: &AppName,
    n: u64,
    line: Result<Bytes, JobError>,
    opts: StreamOptions,
) -> (u64, Bytes) {
    let result = match line {
        Ok(line) => {
            let job = stats::new_job_id();
            let work = run_line(d, app, &line, opts, job);
            observe::job(app, job, Source::Line(n), work).await.result
        }
        Err(e) => Err(e),
    };
    (n, line_output(n, opts.ordered, result))
}

/// One line's job: validated, run with failover, and retried while the
/// mesh is merely saturated (a stream waits rather than failing lines).
async fn run_line(
    d: &Dispatcher,
    app: &AppName,
    line: &[u8],
    opts: StreamOptions,
    job: u64,
) -> Outcome<String> {
    // Not UTF-8: the JSON check reports it.
    let text = String::from_utf8_lossy(line);
    if text.trim().is_empty() {
        return Outcome::refused(JobError::BadRequest("empty line".into()));
    }
    let payload: Arc<str> = match one_line(&text) {
        Ok(p) => p.into(),
        Err(e) => {
            let e = JobError::BadRequest(format!("the line is not valid JSON ({e})"));
            return Outcome::refused(e);
        }
    };
    let deadline = Instant::now() + opts.timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let out = d.run(app, payload.clone(), left, opts.policy, job).await;
        match out.result {
            Err(JobError::Busy(_)) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            _ => return Outcome::from(out).map(|done| done.result),
        }
    }
}

/// Why [`Lines`] gave no line.
enum LineError {
    /// The line is longer than the limit (it is skipped to its end).
    TooLong,
    /// The request body broke off.
    Body(String),
}

/// Splits a request body into lines (without their `\n` or `\r\n`), each
/// at most `max` bytes; a longer line is skipped up to its end and
/// reported as `TooLong`. Holds at most one partial line (plus a chunk).
///
/// The framing is tokio-util's [`AnyDelimiterCodec`] (bounded, and it
/// discards an over-long line up to its newline by itself), driven here
/// rather than through `FramedRead`, which answers `None` after a decoding
/// error (a line too long) where a stream of jobs goes on. Not
/// `LinesCodec`: its lines are `String`s, so a line that is not UTF-8
/// would be a codec error instead of a line the JSON check answers, and
/// each line would be copied once more.
struct Lines {
    body: axum::body::BodyDataStream,
    buf: BytesMut,
    codec: AnyDelimiterCodec,
    max: usize,
    ended: bool,
}

impl Lines {
    fn new(body: Body, max: usize) -> Self {
        Lines {
            body: body.into_data_stream(),
            buf: BytesMut::new(),
            // One byte over the limit for a `\r` before the `\n`: the
            // limit is on the line without it (checked in `next`).
            codec: AnyDelimiterCodec::new_with_max_length(
                b"\n".to_vec(),
                b"\n".to_vec(),
                max.saturating_add(1),
            ),
            max,
            ended: false,
        }
    }

    /// The next line; `None` at the end of the body.
    async fn next(&mut self) -> Option<Result<Bytes, LineError>> {
        loop {
            let decoded = if self.ended {
                self.codec.decode_eof(&mut self.buf)
            } else {
                self.codec.decode(&mut self.buf)
            };
            match decoded {
                Ok(Some(line)) => return Some(self.checked(line)),
                Ok(None) if self.ended => return None,
                Ok(None) => {}
                Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                    return Some(Err(LineError::TooLong));
                }
                Err(AnyDelimiterCodecError::Io(e)) => {
                    return Some(Err(LineError::Body(e.to_string())));
                }
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Some(Err(LineError::Body(e.to_string()))),
                None => self.ended = true,
            }
        }
    }

    /// A line without its `\r`, within the limit.
    fn checked(&self, mut line: Bytes) -> Result<Bytes, LineError> {
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.len() > self.max {
            return Err(LineError::TooLong);
        }
        Ok(line)
    }
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
            out.push(
                l.map(|l| String::from_utf8_lossy(&l).into_owned())
                    .map_err(|e| match e {
                        LineError::TooLong => "too long".to_string(),
                        LineError::Body(e) => e,
                    }),
            );
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

    #[tokio::test]
    async fn the_limit_is_on_the_line_without_its_line_break() {
        let chunks: Vec<&[u8]> = vec![b"0123456789\r\n01234567890\r\n", b"01234567890\n0123456789"];
        let got = split(chunks, 10).await;
        assert_eq!(
            got,
            vec![
                Ok("0123456789".into()),
                Err("too long".into()),
                Err("too long".into()),
                Ok("0123456789".into())
            ]
        );
        // A lone `\r` at the end is an (empty) line, as it always was.
        let got = split(vec![b"1\n\r"], 10).await;
        assert_eq!(got, vec![Ok("1".into()), Ok("".into())]);
        // Bytes that are not UTF-8 are a line still (the JSON check
        // answers it).
        let got = split(vec![b"\"\xff\"\nok"], 10).await;
        assert_eq!(got, vec![Ok("\"\u{fffd}\"".into()), Ok("ok".into())]);
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_ends_the_lines() {
        let stream = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"1\n2")),
            Err(std::io::Error::other("reset")),
        ]);
        let mut lines = Lines::new(Body::from_stream(stream), 10);
        assert!(matches!(lines.next().await, Some(Ok(l)) if &l[..] == b"1"));
        assert!(matches!(lines.next().await, Some(Err(LineError::Body(e))) if e.contains("reset")));
    }
}
