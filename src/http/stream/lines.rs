//! The request side of a stream: its body split into lines.

use axum::body::{Body, Bytes};
use bytes::BytesMut;
use futures::StreamExt;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder};

use crate::error::JobError;

/// Why [`Lines`] gave no line.
pub(super) enum LineError {
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
pub(super) struct Lines {
    body: axum::body::BodyDataStream,
    buf: BytesMut,
    codec: AnyDelimiterCodec,
    max: usize,
    ended: bool,
}

impl Lines {
    pub(super) fn new(body: Body, max: usize) -> Self {
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
    pub(super) async fn next(&mut self) -> Option<Result<Bytes, LineError>> {
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
    pub(super) fn buffered(&mut self) -> Option<Result<Bytes, JobError>> {
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
    pub(super) fn refused(&self, e: LineError) -> JobError {
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
