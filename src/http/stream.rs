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
use crate::dispatch::{Dispatcher, Failover, Policy, Target};
use crate::error::JobError;
use crate::json::one_line;
use crate::network::MAX_BATCH_BYTES;
use crate::obs::{metrics, stats};

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
    app: AppName,
    body: Body,
    opts: StreamOptions,
) -> Response {
    let mut data = body.into_data_stream();
    // The first piece (or the end, or an error): kept for the task. A
    // client that sends nothing in time is left to the task's own idle
    // timeout.
    let first = tokio::time::timeout(opts.idle_timeout, data.next())
        .await
        .ok()
        .flatten();
    let body = Body::from_stream(futures::stream::iter(first).chain(data));
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

/// The stream's task: reads lines while the window has room, sends them
/// off in batches, and writes the answers, until the input ended and every
/// line is answered (or the client went away).
async fn run(
    dispatcher: Dispatcher,
    app: AppName,
    body: Body,
    opts: StreamOptions,
    tx: mpsc::Sender<Bytes>,
) {
    let mut lines = Lines::new(body, opts.max_line);
    let mut output = Output::new(tx, opts.ordered);
    // Borrows the dispatcher and the app: one future per batch, unboxed.
    let mut running = FuturesUnordered::new();
    // Lines in `running`'s batches.
    let mut in_flight = 0usize;
    // Lines read and checked, not yet sent off.
    let mut forming: Vec<(u64, Arc<str>)> = Vec::new();
    let most = batch_lines(opts.window);
    let mut read = 0u64;
    let mut input_done = false;
    let mut broken: Option<String> = None;
    loop {
        let room = |forming: &Vec<_>, in_flight: usize, output: &Output| {
            in_flight + forming.len() + output.waiting.len() < opts.window
        };
        // Every line the request has already delivered, while there is
        // room: lines that arrive together travel together.
        while !input_done && room(&forming, in_flight, &output) {
            let Some(next) = lines.buffered() else { break };
            read += 1;
            match checked(next) {
                Ok(line) => forming.push((read, line)),
                Err(answer) => {
                    if output.refuse(&app, read, answer).await.is_err() {
                        return;
                    }
                }
            }
        }
        for batch in take_batches(&mut forming, most) {
            in_flight += batch.len();
            running.push(one_batch(&dispatcher, &app, batch, opts));
        }
        tokio::select! {
            Some(answers) = running.next(), if !running.is_empty() => {
                in_flight -= answers.len();
                for (n, answer) in answers {
                    if output.send(n, answer).await.is_err() {
                        return;
                    }
                }
            }
            next = tokio::time::timeout(opts.idle_timeout, lines.next()),
                if room(&forming, in_flight, &output) && !input_done =>
            {
                match next_input(next, read, opts) {
                    Input::Line(line) => {
                        read += 1;
                        match checked(line) {
                            Ok(line) => forming.push((read, line)),
                            Err(answer) => {
                                if output.refuse(&app, read, answer).await.is_err() {
                                    return;
                                }
                            }
                        }
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

/// Most lines in one batch for a stream of `window` lines in flight: an
/// eighth of it (so that several batches, on several peers, are in flight
/// at once), at most 128 and at least 1.
fn batch_lines(window: usize) -> usize {
    (window / 8).clamp(1, 128)
}

/// `forming`'s lines as batches, in order, leaving it empty: at most
/// `most` lines and [`MAX_BATCH_BYTES`] of them in each (a longer line goes
/// alone).
fn take_batches(forming: &mut Vec<(u64, Arc<str>)>, most: usize) -> Vec<Vec<(u64, Arc<str>)>> {
    let mut batches: Vec<Vec<(u64, Arc<str>)>> = Vec::new();
    let mut bytes = 0;
    for line in forming.drain(..) {
        let size = line.1.len() + 4;
        match batches.last_mut() {
            Some(b) if b.len() < most && bytes + size <= MAX_BATCH_BYTES => {
                bytes += size;
                b.push(line);
            }
            _ => {
                bytes = size;
                batches.push(vec![line]);
            }
        }
    }
    batches
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

    /// Line `n` refused before it ran (not JSON, empty, too long): its
    /// error, counted like a job's.
    async fn refuse(&mut self, app: &AppName, n: u64, e: JobError) -> Result<(), Gone> {
        metrics::job_done(app, Err(&e), Duration::ZERO, None);
        tracing::debug!(app = %app, line = n, "line refused: {e}");
        let answer = line_output(n, self.ordered, Err(e));
        self.send(n, answer).await
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

/// A batch of lines, numbered, as one piece of work: sent to one target
/// (chosen like a single job's), and each line whose answer is a failure
/// that failover retries (its worker died, the peer went away) tried again
/// on its own, as a job of its own would be. Returns every line's output.
async fn one_batch(
    d: &Dispatcher,
    app: &AppName,
    lines: Vec<(u64, Arc<str>)>,
    opts: StreamOptions,
) -> Vec<(u64, Bytes)> {
    let job = stats::new_job_id();
    let started = std::time::Instant::now();
    let deadline = Instant::now() + opts.timeout;
    let payloads: Vec<Arc<str>> = lines.iter().map(|(_, p)| p.clone()).collect();
    let first = first_attempt(d, app, &payloads, deadline, opts.policy, job).await;
    // Each line: its result, or its failover state to go on with.
    let mut settled: Vec<Result<Result<String, JobError>, Failover>> =
        Vec::with_capacity(lines.len());
    let mut peer = None;
    match first {
        Err(e) => settled.extend(lines.iter().map(|_| Ok(Err(e.clone())))),
        Ok((target, id, answers)) => {
            let mut answers = match answers {
                Ok(rs) => rs.into_iter(),
                // The batch as a whole got no answer: each line failed so.
                Err(e) => vec![Err(e); lines.len()].into_iter(),
            };
            for _ in &lines {
                let answer = answers.next().unwrap_or_else(|| {
                    Err(JobError::WorkerCrashed("the batch lost this line".into()))
                });
                settled.push(match answer {
                    Ok(r) => Ok(Ok(r)),
                    Err(e) => d
                        .first_failure(app, opts.policy, target, &id, e, deadline)
                        .map_or_else(|e| Ok(Err(e)), Err),
                });
            }
            peer = Some(id);
        }
    }
    let errors = settled
        .iter()
        .filter_map(|s| s.as_ref().ok()?.as_ref().err());
    let ok = settled.iter().filter(|s| matches!(s, Ok(Ok(_)))).count() as u64;
    let errors: Vec<&JobError> = errors.collect();
    metrics::batch_done(
        app,
        ok,
        errors.into_iter(),
        started.elapsed(),
        peer.as_deref(),
    );
    // The lines to try again, each on its own and all at once.
    let again = lines
        .iter()
        .zip(settled.iter_mut())
        .filter_map(|((n, p), s)| {
            let f = std::mem::take(s.as_mut().err()?);
            Some(async move {
                let job = stats::new_job_id();
                let work = run_line_from(d, app, p.clone(), deadline, opts.policy, job, f);
                (
                    *n,
                    observe::job(app, job, Source::Line(*n), work).await.result,
                )
            })
        });
    let mut retried: BTreeMap<u64, Result<String, JobError>> =
        futures::future::join_all(again).await.into_iter().collect();
    lines
        .iter()
        .zip(settled)
        .map(|((n, _), s)| {
            let result = match s {
                Ok(r) => r,
                Err(_) => retried.remove(n).expect("retried above"),
            };
            (*n, line_output(*n, opts.ordered, result))
        })
        .collect()
}

/// A batch's first attempt: the target chosen (and its peer's id) and
/// what it answered, or why no target could be chosen. Waits while the
/// mesh is merely saturated (a stream waits rather than failing lines).
async fn first_attempt(
    d: &Dispatcher,
    app: &AppName,
    payloads: &[Arc<str>],
    deadline: Instant,
    policy: Policy,
    job: u64,
) -> Result<
    (
        Target,
        String,
        Result<Vec<Result<String, JobError>>, JobError>,
    ),
    JobError,
> {
    let mut pause = Duration::from_millis(5);
    loop {
        match d.choose(app, policy, deadline).await {
            Ok((target, id)) => {
                let answers = d.run_batch_on(target, app, payloads, deadline, job).await;
                return Ok((target, id, answers));
            }
            Err(JobError::Busy(_)) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One line's job after its batch failed it: run with failover from `f`,
/// and retried while the mesh is merely saturated.
async fn run_line_from(
    d: &Dispatcher,
    app: &AppName,
    payload: Arc<str>,
    deadline: Instant,
    policy: Policy,
    job: u64,
    mut f: Failover,
) -> Outcome<String> {
    let mut pause = Duration::from_millis(5);
    loop {
        let out = d
            .run_from(
                app,
                payload.clone(),
                deadline,
                policy,
                job,
                std::mem::take(&mut f),
            )
            .await;
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

    /// The next line if the request already delivered it (no waiting);
    /// `None` when it must be waited for (or the body ended).
    fn buffered(&mut self) -> Option<Result<Bytes, JobError>> {
        let decoded = if self.ended {
            self.codec.decode_eof(&mut self.buf)
        } else {
            self.codec.decode(&mut self.buf)
        };
        match decoded {
            Ok(Some(line)) => Some(self.checked(line).map_err(|e| self.refused(e))),
            Ok(None) | Err(AnyDelimiterCodecError::Io(_)) => None,
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                Some(Err(self.refused(LineError::TooLong)))
            }
        }
    }

    /// Why a line the request delivered is not a job.
    fn refused(&self, e: LineError) -> JobError {
        match e {
            LineError::TooLong => JobError::TooLarge(format!(
                "the line is longer than the job size limit of {} bytes",
                self.max
            )),
            LineError::Body(e) => JobError::BadRequest(e),
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

    #[test]
    fn lines_are_cut_into_batches_in_order() {
        let line = |n: u64| (n, Arc::<str>::from(n.to_string()));
        let mut forming: Vec<_> = (1..=10).map(line).collect();
        let batches = take_batches(&mut forming, 4);
        assert!(forming.is_empty());
        let numbers: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.iter().map(|(n, _)| *n).collect())
            .collect();
        assert_eq!(
            numbers,
            vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]
        );
        assert!(take_batches(&mut forming, 4).is_empty());
        let mut exactly: Vec<_> = (1..=4).map(line).collect();
        assert_eq!(take_batches(&mut exactly, 4).len(), 1);
        // Bytes bound a batch too: a long line goes alone.
        let long = |n: u64, len: usize| (n, Arc::<str>::from("7".repeat(len)));
        let half = MAX_BATCH_BYTES / 2 - 4;
        let mut big = vec![
            long(1, half),
            long(2, half),
            long(3, half),
            long(4, MAX_BATCH_BYTES),
            long(5, 1),
        ];
        let sizes: Vec<usize> = take_batches(&mut big, 100).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
        // An eighth of the window, within 1 and 128.
        assert_eq!(
            [1, 8, 16, 256, 1024, 1032, 4096].map(batch_lines),
            [1, 1, 2, 32, 128, 128, 128]
        );
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
