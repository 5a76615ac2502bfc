//! `disruptor stream`: many jobs through the mesh as one request.
//!
//! The input (a file, or stdin with `-`) has one job per line: NDJSON, or
//! with `--lines` any text, each line sent as a JSON string. It goes to
//! the peer as one chunked NDJSON request (`POST /APP?window=N`) while it
//! is read, and the peer answers with one line per job as the jobs
//! complete: in input order, or with `--unordered` as they finish, each as
//! `{"line": n, ...}`. The answer lines go to stdout as they arrive.
//!
//! Three parts run at once:
//!
//! - a thread reads the input (blocking I/O) and hands the request body
//!   ~64 KiB chunks through a channel of four places: when the peer stops
//!   reading, the thread stops too (backpressure);
//! - reqwest sends the body;
//! - [`stream`] reads the answer, prints it, and keeps a [`Tally`].
//!
//! At the end a summary goes to stderr (`stream: N jobs, E errors, R
//! jobs/s`), and the command fails when the stream broke off, when fewer
//! answers came than lines were sent, or when any job failed. On a
//! terminal a progress bar shows the answers so far (and, for a file,
//! an ETA).

use std::io::{BufRead, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use tokio::sync::mpsc;

use super::http::{PeerApi, with_job_timeout};
use super::term::progress_bar;
use super::{UsageError, app_arg};
use crate::cli::StreamArgs;
use crate::text::printable;

/// The size the input thread fills a chunk of the body to.
const CHUNK: usize = 64 * 1024;

/// `disruptor stream`: sends the input as one NDJSON request, chunked as
/// it is read, and prints the result lines as they arrive.
pub async fn stream(args: StreamArgs) -> anyhow::Result<()> {
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    let app = app_arg(&args.app)?;
    let then = super::then_query(&args.then)?;
    let input = open_input(&args.input)?;
    // The total, for the progress bar's ETA: only for a file, only when
    // someone watches.
    let show_progress = std::io::stderr().is_terminal();
    let total = (show_progress && args.input != "-")
        .then(|| count_lines(&args.input).ok())
        .flatten();
    let sent = Arc::new(AtomicU64::new(0));
    let (chunks_tx, mut chunks_rx) = mpsc::channel(4);
    let reader = {
        let (sent, as_text) = (sent.clone(), args.lines);
        std::thread::spawn(move || read_jobs(input, as_text, &sent, &chunks_tx))
    };
    let body =
        reqwest::Body::wrap_stream(futures::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx)));
    let mut path = format!("/{app}?window={}", args.window);
    if args.unordered {
        path.push_str("&ordered=false");
    }
    path.push_str(&then);
    if let Some(reducer) = &args.reduce {
        path.push_str(&format!("&reduce={}", app_arg(reducer)?));
    }
    let req = peer
        .post(&path)
        .header("content-type", crate::api::NDJSON)
        .body(body);
    let started = Instant::now();
    let resp = peer
        .send(with_job_timeout(req, args.timeout))
        .await?
        .map_err(|refused| anyhow::anyhow!("{app}: {refused}"))?;
    let progress = show_progress.then(|| match total {
        Some(n) => progress_bar(Some(n), "{bar:30} {pos}/{len} jobs, {per_sec}, ETA {eta}"),
        None => progress_bar(None, "{spinner} {pos} jobs, {per_sec}"),
    });
    if args.reduce.is_some() {
        return print_reduced(resp, sent, reader, started).await;
    }
    let pipeline = !args.then.is_empty();
    let (tally, broken) = print_answers(resp, !args.unordered, pipeline, progress.as_ref()).await?;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let _ = reader.join();
    finish(
        &tally,
        sent.load(Ordering::Relaxed),
        started.elapsed(),
        broken,
    )
}

/// A reduced stream's answer: the reducer's, printed once the stream
/// ended; an error when lines failed (they are not in it).
async fn print_reduced(
    resp: reqwest::Response,
    sent: Arc<AtomicU64>,
    reader: std::thread::JoinHandle<()>,
    started: Instant,
) -> anyhow::Result<()> {
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (reduced, failed) = (header(crate::api::REDUCED_HEADER), failed_header(&resp));
    let text = resp.text().await?;
    let _ = reader.join();
    println!("{text}");
    let lines = sent.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "stream: {lines} lines in, {reduced} results reduced, {failed} failed, {:.0} lines/s ({secs:.1} s)",
        lines as f64 / secs.max(1e-9)
    );
    if failed > 0 {
        anyhow::bail!("{failed} lines failed and were left out of the reduction");
    }
    Ok(())
}

/// The lines (or peers) a reduced answer says failed.
pub(super) fn failed_header(resp: &reqwest::Response) -> u64 {
    resp.headers()
        .get(crate::api::FAILED_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The input: stdin for `-`, else the file (a usage error if it cannot be
/// opened).
fn open_input(input: &str) -> Result<Box<dyn BufRead + Send>, UsageError> {
    if input == "-" {
        return Ok(Box::new(std::io::BufReader::new(std::io::stdin())));
    }
    let f =
        std::fs::File::open(input).map_err(|e| UsageError(format!("cannot read {input}: {e}")))?;
    Ok(Box::new(std::io::BufReader::with_capacity(256 * 1024, f)))
}

/// The input thread: reads lines, one job each (without its line end; as
/// a JSON string with `as_text`), counts them in `sent`, and hands them
/// on in chunks of about [`CHUNK`] bytes. Stops at the end of the input,
/// on a read error (handed on, to fail the body), or when the body is
/// dropped.
fn read_jobs(
    mut input: Box<dyn BufRead + Send>,
    as_text: bool,
    sent: &AtomicU64,
    chunks: &mpsc::Sender<std::io::Result<Vec<u8>>>,
) {
    let mut chunk = Vec::with_capacity(CHUNK);
    let mut line = String::new();
    loop {
        line.clear();
        match input.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                let text = line.strip_suffix('\n').unwrap_or(&line);
                let text = text.strip_suffix('\r').unwrap_or(text);
                if as_text {
                    let json = serde_json::Value::String(text.to_string()).to_string();
                    chunk.extend_from_slice(json.as_bytes());
                } else {
                    chunk.extend_from_slice(text.as_bytes());
                }
                chunk.push(b'\n');
                sent.fetch_add(1, Ordering::Relaxed);
                if chunk.len() >= CHUNK
                    && chunks
                        .blocking_send(Ok(std::mem::take(&mut chunk)))
                        .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                let _ = chunks.blocking_send(Err(e));
                return;
            }
        }
    }
    if !chunk.is_empty() {
        let _ = chunks.blocking_send(Ok(chunk));
    }
}

/// Prints the answer's lines as they arrive, except the stream's own
/// final error; the tally, and why the stream broke off, if it did.
async fn print_answers(
    mut resp: reqwest::Response,
    ordered: bool,
    pipeline: bool,
    progress: Option<&ProgressBar>,
) -> anyhow::Result<(Tally, Option<String>)> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut tally = Tally {
        pipeline,
        ..Tally::default()
    };
    let mut partial: Vec<u8> = Vec::new();
    let mut broken = None;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                broken = Some(format!("the answer stream broke off: {e}"));
                break;
            }
        };
        partial.extend_from_slice(&chunk);
        let Some(last_nl) = partial.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let rest = partial.split_off(last_nl + 1);
        for line in partial.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(why) = tally.add(line, ordered) {
                broken = Some(why);
                continue;
            }
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        partial = rest;
        out.flush()?;
        if let Some(pb) = progress {
            pb.set_position(tally.results);
        }
    }
    out.flush()?;
    Ok((tally, broken))
}

/// The summary on stderr, and the verdict: the stream broke off, fewer
/// answers than `lines` sent, or failed jobs.
fn finish(
    tally: &Tally,
    lines: u64,
    elapsed: Duration,
    broken: Option<String>,
) -> anyhow::Result<()> {
    let secs = elapsed.as_secs_f64();
    if tally.pipeline {
        // Stages may flatten or drop items: lines in and out differ.
        eprintln!(
            "stream: {lines} lines in, {} out, {} errors, {:.0} lines/s ({secs:.1} s)",
            tally.results,
            tally.errors,
            lines as f64 / secs.max(1e-9)
        );
    } else {
        eprintln!(
            "stream: {} jobs, {} errors, {:.0} jobs/s ({secs:.1} s)",
            tally.results,
            tally.errors,
            tally.results as f64 / secs.max(1e-9)
        );
    }
    if let Some(why) = broken {
        anyhow::bail!("{why}");
    }
    if tally.pipeline {
        if tally.errors > 0 {
            anyhow::bail!(
                "{} items failed on their way through the stages",
                tally.errors
            );
        }
        return Ok(());
    }
    if tally.results != lines {
        anyhow::bail!("{lines} lines were sent but {} answered", tally.results);
    }
    if tally.errors > 0 {
        anyhow::bail!("{} of {lines} jobs failed", tally.errors);
    }
    Ok(())
}

/// Counts a stream's answers and which of them are errors.
#[derive(Default)]
struct Tally {
    results: u64,
    errors: u64,
    /// Through several stages: an error names its stage, and there may be
    /// more or fewer answers than lines.
    pipeline: bool,
}

impl Tally {
    /// Takes one answer line; returns the stream's own final error, if the
    /// line is one (`{"stream_error": ...}`).
    fn add(&mut self, line: &[u8], ordered: bool) -> Option<String> {
        // Errors (and, unordered, every answer) start with {"line":n; the
        // stream's own last word with {"stream_error":.
        if line.starts_with(b"{\"stream_error\":")
            && let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(line)
            && o.len() == 1
        {
            // The peer's words, printed by main: printable.
            return Some(printable(o["stream_error"].as_str().unwrap_or("")).into_owned());
        }
        if line.starts_with(b"{\"line\":")
            && let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(line)
        {
            let n = o.get("line").and_then(|n| n.as_u64());
            // Ordered, a worker's result may look like anything: an error
            // object is the one with exactly our two keys and the expected
            // line number.
            let ours = if self.pipeline {
                o.len() == 3 && o.contains_key("stage")
            } else {
                !ordered || (o.len() == 2 && n == Some(self.results + 1))
            };
            if o.contains_key("error") && ours {
                self.errors += 1;
            }
        }
        self.results += 1;
        None
    }
}

/// The lines of the file at `path` (a last line without `\n` counts).
fn count_lines(path: &str) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    let mut last = b'\n';
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[k - 1];
    }
    Ok(n + u64::from(last != b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tally_counts_errors_by_their_line_number_when_ordered() {
        let mut t = Tally::default();
        assert_eq!(t.add(br#"{"line":1,"error":"boom"}"#, true), None);
        // A worker's result that looks like an error, at the wrong line.
        assert_eq!(t.add(br#"{"line":7,"error":"mine"}"#, true), None);
        assert_eq!(t.add(br#"{"ok":true}"#, true), None);
        assert_eq!((t.results, t.errors), (3, 1));
        assert_eq!(
            t.add(br#"{"stream_error":"gone\u001b[2J"}"#, true)
                .as_deref(),
            Some("gone")
        );
        assert_eq!(t.results, 3);
    }

    #[test]
    fn lines_are_counted_with_or_without_a_last_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jobs");
        std::fs::write(&path, "1\n2\n3").unwrap();
        assert_eq!(count_lines(path.to_str().unwrap()).unwrap(), 3);
        std::fs::write(&path, "1\n2\n").unwrap();
        assert_eq!(count_lines(path.to_str().unwrap()).unwrap(), 2);
        std::fs::write(&path, "").unwrap();
        assert_eq!(count_lines(path.to_str().unwrap()).unwrap(), 0);
    }
}
