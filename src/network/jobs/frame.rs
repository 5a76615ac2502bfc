//! Frames of the job protocol: their encoding and decoding (pure, and
//! property-tested against anything a peer may send), and the framed reads
//! and writes on a stream.

use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use futures::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;

use super::*;
use crate::error::JobError;

/// Writes frames from `rx`, flushing only when the queue is empty, so that
/// frames queued under load go out in few writes.
pub(super) async fn write_frames<W: AsyncWrite + Unpin>(
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
pub(super) trait FrameQueue {
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

pub(super) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Vec<u8>, String> {
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
    /// Its id on the link (the answer carries it back).
    pub id: u64,
    /// The job's mesh-wide id (for logs).
    pub job: u64,
    /// How long the caller waits for the answer.
    pub timeout: Duration,
    /// The app to run it on (not yet checked).
    pub app: &'a str,
    /// The job (not yet checked).
    pub payload: &'a str,
}

const REQUEST_HEADER: usize = 1 + 8 + 8 + 4 + 2;

/// A request frame, length prefix included.
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
pub(super) fn decode_request_header(body: &[u8]) -> Result<u64, String> {
    if body.len() < REQUEST_HEADER || !matches!(body[0], KIND_REQUEST | KIND_BATCH_REQUEST) {
        return Err("malformed job request frame".into());
    }
    Ok(u64::from_be_bytes(body[1..9].try_into().expect("8 bytes")))
}

/// The header both kinds of request share: id, job id, timeout and the
/// app name's length.
fn decode_header(body: &[u8], kind: u8) -> Result<(u64, u64, Duration, usize), String> {
    if body.len() < REQUEST_HEADER || body[0] != kind {
        return Err("malformed job request frame".into());
    }
    let id = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let job = u64::from_be_bytes(body[9..17].try_into().expect("8 bytes"));
    let timeout =
        Duration::from_millis(u32::from_be_bytes(body[17..21].try_into().expect("4 bytes")) as u64);
    let app_len = u16::from_be_bytes(body[21..23].try_into().expect("2 bytes")) as usize;
    Ok((id, job, timeout, app_len))
}

/// Decodes a request frame's body (after its length).
pub fn decode_request(body: &[u8]) -> Result<Request<'_>, String> {
    let (id, job, timeout, app_len) = decode_header(body, KIND_REQUEST)?;
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

/// A result as its status byte and text.
fn status_of(result: &Result<String, JobError>) -> (u8, &str) {
    match result {
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
    }
}

/// A result from its status byte and text (a result must be JSON).
fn result_of(status: u8, data: String) -> Result<Result<String, JobError>, String> {
    Ok(match status {
        0 => {
            // A result must be JSON, and travels on as one line (a
            // stream's output line, a pipeline's next job): a peer that
            // says otherwise is wrong, or its line breaks are dropped.
            if serde_json::from_str::<&serde_json::value::RawValue>(&data).is_err() {
                Err(JobError::BadOutput(
                    "the remote peer answered a result that is not JSON".into(),
                ))
            } else if data.contains(['\n', '\r']) {
                Ok(crate::json::one_line(&data).unwrap_or_default())
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
    })
}

/// An answer frame, length prefix included.
pub fn encode_answer(id: u64, result: &Result<String, JobError>) -> Vec<u8> {
    let (status, data) = status_of(result);
    let len = 1 + 8 + 1 + data.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(KIND_ANSWER);
    f.extend_from_slice(&id.to_be_bytes());
    f.push(status);
    f.extend_from_slice(data.as_bytes());
    f
}

/// Decodes an answer frame's body (after its length).
pub fn decode_answer(body: &[u8]) -> Result<(u64, Result<String, JobError>), String> {
    if body.len() < 10 || body[0] != KIND_ANSWER {
        return Err("malformed job answer frame".into());
    }
    let id = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let data = String::from_utf8(body[10..].to_vec())
        .map_err(|_| "job answer is not UTF-8".to_string())?;
    Ok((id, result_of(body[9], data)?))
}

/// A decoded batch request frame: several jobs of one app, one answer
/// (in parts) for all of them.
#[derive(Debug, PartialEq)]
pub struct BatchRequest<'a> {
    /// Its id on the link (the answer parts carry it back).
    pub id: u64,
    /// The mesh-wide id of its first job (for logs).
    pub job: u64,
    /// How long the caller waits for the whole answer.
    pub timeout: Duration,
    /// The app to run them on (not yet checked).
    pub app: &'a str,
    /// The jobs (not yet checked), at most [`MAX_BATCH_LINES`].
    pub payloads: Vec<&'a str>,
}

/// A batch request frame, length prefix included.
pub fn encode_batch_request<P: AsRef<str>>(
    id: u64,
    job: u64,
    timeout: Duration,
    app: &str,
    payloads: &[P],
) -> Vec<u8> {
    let app = &app.as_bytes()[..app.len().min(u16::MAX as usize)];
    let items: usize = payloads.iter().map(|p| 4 + p.as_ref().len()).sum();
    let len = REQUEST_HEADER + app.len() + 4 + items;
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(KIND_BATCH_REQUEST);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&job.to_be_bytes());
    f.extend_from_slice(&(timeout.as_millis().min(u32::MAX as u128) as u32).to_be_bytes());
    f.extend_from_slice(&(app.len() as u16).to_be_bytes());
    f.extend_from_slice(app);
    f.extend_from_slice(&(payloads.len() as u32).to_be_bytes());
    for p in payloads {
        f.extend_from_slice(&(p.as_ref().len() as u32).to_be_bytes());
        f.extend_from_slice(p.as_ref().as_bytes());
    }
    f
}

/// Splits `n` bytes off the front of `rest`, or says what ran past the end.
fn take<'a>(rest: &mut &'a [u8], n: usize, what: &str) -> Result<&'a [u8], String> {
    if rest.len() < n {
        return Err(format!("malformed job frame: {what} runs past the end"));
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn take_u32(rest: &mut &[u8], what: &str) -> Result<u32, String> {
    Ok(u32::from_be_bytes(
        take(rest, 4, what)?.try_into().expect("4 bytes"),
    ))
}

/// Decodes a batch request frame's body (after its length).
pub fn decode_batch_request(body: &[u8]) -> Result<BatchRequest<'_>, String> {
    let (id, job, timeout, app_len) = decode_header(body, KIND_BATCH_REQUEST)?;
    let mut rest = &body[REQUEST_HEADER..];
    let app = std::str::from_utf8(take(&mut rest, app_len, "the app name")?)
        .map_err(|_| "app name is not UTF-8".to_string())?;
    let count = take_u32(&mut rest, "the job count")? as usize;
    if count == 0 || count > MAX_BATCH_LINES {
        return Err(format!(
            "a job batch of {count} jobs is out of bounds (1 to {MAX_BATCH_LINES})"
        ));
    }
    let mut payloads = Vec::with_capacity(count);
    for _ in 0..count {
        let len = take_u32(&mut rest, "a job's length")? as usize;
        let p = take(&mut rest, len, "a job")?;
        payloads.push(std::str::from_utf8(p).map_err(|_| "job is not UTF-8".to_string())?);
    }
    if !rest.is_empty() {
        return Err("malformed job batch frame: bytes after its last job".into());
    }
    Ok(BatchRequest {
        id,
        job,
        timeout,
        app,
        payloads,
    })
}

/// The answer to batch `id`: one frame per part, each within
/// [`MAX_ANSWER_BYTES`] (a part holds as many results as fit, at least
/// one), length prefixes included. A part: `4`, id `u64`, the index of
/// its first result `u32`, its count `u32`, then per result its status
/// `u8`, length `u32` and text.
pub fn encode_batch_answer(id: u64, results: &[Result<String, JobError>]) -> Vec<Vec<u8>> {
    const HEADER: usize = 1 + 8 + 4 + 4;
    let mut frames = Vec::new();
    let mut first = 0;
    while first < results.len() {
        let mut end = first;
        let mut len = HEADER;
        while end < results.len() {
            let item = 5 + status_of(&results[end]).1.len();
            if end > first && len + item > MAX_ANSWER_BYTES {
                break;
            }
            len += item;
            end += 1;
        }
        let mut f = Vec::with_capacity(4 + len);
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.push(KIND_BATCH_ANSWER);
        f.extend_from_slice(&id.to_be_bytes());
        f.extend_from_slice(&(first as u32).to_be_bytes());
        f.extend_from_slice(&((end - first) as u32).to_be_bytes());
        for r in &results[first..end] {
            let (status, data) = status_of(r);
            f.push(status);
            f.extend_from_slice(&(data.len() as u32).to_be_bytes());
            f.extend_from_slice(data.as_bytes());
        }
        frames.push(f);
        first = end;
    }
    frames
}

/// One part of a batch's answer: the batch's id, the index of its first
/// result, and the results.
pub type BatchAnswerPart = (u64, usize, Vec<Result<String, JobError>>);

/// Decodes a batch answer part's body (after its length).
pub fn decode_batch_answer(body: &[u8]) -> Result<BatchAnswerPart, String> {
    if body.len() < 17 || body[0] != KIND_BATCH_ANSWER {
        return Err("malformed job batch answer frame".into());
    }
    let id = u64::from_be_bytes(body[1..9].try_into().expect("8 bytes"));
    let mut rest = &body[9..];
    let first = take_u32(&mut rest, "the first index")? as usize;
    let count = take_u32(&mut rest, "the result count")? as usize;
    if count == 0 || count > MAX_BATCH_LINES {
        return Err(format!(
            "a batch answer of {count} results is out of bounds"
        ));
    }
    let mut results = Vec::with_capacity(count);
    for _ in 0..count {
        let status = take(&mut rest, 1, "a result's status")?[0];
        let len = take_u32(&mut rest, "a result's length")? as usize;
        let data = String::from_utf8(take(&mut rest, len, "a result")?.to_vec())
            .map_err(|_| "job answer is not UTF-8".to_string())?;
        results.push(result_of(status, data)?);
    }
    if !rest.is_empty() {
        return Err("malformed job batch answer frame: bytes after its last result".into());
    }
    Ok((id, first, results))
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

    proptest! {
        #![proptest_config(crate::fuzz::config())]

        /// Any bytes as a batch frame: errors, never a panic.
        #[test]
        fn batch_frames_from_anyone(body in prop::collection::vec(any::<u8>(), 0..96)) {
            let _ = decode_batch_request(&body);
            let _ = decode_batch_answer(&body);
        }

        #[test]
        fn batches_round_trip(id in any::<u64>(), job in any::<u64>(), ms in any::<u32>(),
                              app in "[a-z/]{0,20}",
                              payloads in prop::collection::vec(any::<String>(), 1..20)) {
            let timeout = Duration::from_millis(ms as u64);
            let f = encode_batch_request(id, job, timeout, &app, &payloads);
            prop_assert_eq!(u32::from_be_bytes(f[..4].try_into().unwrap()) as usize, f.len() - 4);
            prop_assert_eq!(decode_request_header(&f[4..]), Ok(id));
            let r = decode_batch_request(&f[4..]).map_err(TestCaseError::fail)?;
            let want: Vec<&str> = payloads.iter().map(String::as_str).collect();
            prop_assert_eq!(r, BatchRequest { id, job, timeout, app: app.as_str(), payloads: want });
        }

        #[test]
        fn batch_answers_round_trip(id in any::<u64>(),
                                    results in prop::collection::vec((crate::fuzz::json_value(), any::<String>(), any::<bool>()), 1..20)) {
            let results: Vec<Result<String, JobError>> = results
                .into_iter()
                .map(|(json, msg, ok)| if ok { Ok(json.to_string()) } else { Err(JobError::Busy(msg)) })
                .collect();
            let frames = encode_batch_answer(id, &results);
            prop_assert_eq!(frames.len(), 1);
            let (i, first, back) = decode_batch_answer(&frames[0][4..]).map_err(TestCaseError::fail)?;
            prop_assert_eq!((i, first, back), (id, 0, results));
        }
    }

    /// A batch's answer never makes a frame larger than one answer may be:
    /// it comes in parts, each as large as fits, in order.
    #[test]
    fn a_large_batch_answer_comes_in_parts_within_the_frame_limit() {
        let big = format!("\"{}\"", "a".repeat(4 << 20));
        let results: Vec<Result<String, JobError>> = vec![
            Ok(big.clone()),
            Ok(big.clone()),
            Err(JobError::Timeout("slow".into())),
            Ok(big.clone()),
            Ok("1".into()),
        ];
        let frames = encode_batch_answer(5, &results);
        assert_eq!(frames.len(), 2);
        let mut back = Vec::new();
        for f in &frames {
            assert!(f.len() - 4 <= MAX_ANSWER_BYTES, "{}", f.len());
            assert_eq!(
                u32::from_be_bytes(f[..4].try_into().unwrap()) as usize,
                f.len() - 4
            );
            let (id, first, part) = decode_batch_answer(&f[4..]).unwrap();
            assert_eq!((id, first), (5, back.len()));
            back.extend(part);
        }
        assert_eq!(back, results);
    }

    #[test]
    fn batch_bounds_are_enforced() {
        let ok = encode_batch_request(1, 2, Duration::ZERO, "apps/x", &["1", "2"]);
        assert!(decode_batch_request(&ok[4..]).is_ok());
        // The count is where the payloads start: 4 bytes after the app.
        let count_at = 4 + REQUEST_HEADER + "apps/x".len();
        for (count, why) in [
            (0u32, "out of bounds"),
            (MAX_BATCH_LINES as u32 + 1, "out of bounds"),
            (3, "past the end"),
        ] {
            let mut f = ok.clone();
            f[count_at..count_at + 4].copy_from_slice(&count.to_be_bytes());
            let e = decode_batch_request(&f[4..]).unwrap_err();
            assert!(e.contains(why), "{count}: {e}");
        }
        // The largest batch passes; one job more does not.
        let most = vec!["1"; MAX_BATCH_LINES];
        let f = encode_batch_request(1, 2, Duration::ZERO, "apps/x", &most);
        assert_eq!(
            decode_batch_request(&f[4..]).unwrap().payloads.len(),
            MAX_BATCH_LINES
        );
        let more = vec!["1"; MAX_BATCH_LINES + 1];
        let f = encode_batch_request(1, 2, Duration::ZERO, "apps/x", &more);
        assert!(decode_batch_request(&f[4..]).is_err());
        // Bytes after the last job, or a job running past the end.
        let mut trailing = ok[4..].to_vec();
        trailing.push(b'x');
        assert!(
            decode_batch_request(&trailing)
                .unwrap_err()
                .contains("after its last")
        );
        let short = &ok[4..ok.len() - 1];
        assert!(
            decode_batch_request(short)
                .unwrap_err()
                .contains("past the end")
        );
        // The same for answers.
        let a = encode_batch_answer(3, &[Ok("1".into()), Ok("2".into())]);
        let mut zero = a[0][4..].to_vec();
        zero[13..17].copy_from_slice(&0u32.to_be_bytes());
        assert!(decode_batch_answer(&zero).is_err());
        let mut trailing = a[0][4..].to_vec();
        trailing.push(0);
        assert!(decode_batch_answer(&trailing).is_err());
        let mut bad_status = a[0][4..].to_vec();
        bad_status[17] = 99;
        assert!(decode_batch_answer(&bad_status).is_err());
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
        // A result over several lines arrives as one.
        let lines = encode_answer(1, &Ok("{\"a\":\n[1,\r\n2]}".into()));
        assert_eq!(
            decode_answer(&lines[4..]).unwrap().1,
            Ok("{\"a\":[1,2]}".into())
        );
        let not_json = encode_answer(1, &Ok("not json".into()));
        assert!(matches!(
            decode_answer(&not_json[4..]).unwrap().1,
            Err(JobError::BadOutput(_))
        ));
    }
}
