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

/// An answer frame, length prefix included.
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

/// Decodes an answer frame's body (after its length).
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
