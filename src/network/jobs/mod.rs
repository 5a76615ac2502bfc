//! The job transport between peers: one long-lived libp2p stream per
//! (caller, callee) pair carrying many jobs at once as framed messages with
//! ids, instead of a freshly negotiated substream per job.
//!
//! Streams are opened and accepted through `libp2p-stream`'s
//! [`Control`](libp2p_stream::Control), so job traffic never passes
//! through the swarm task: a caller's
//! [`JobLinks`] owns one link task per remote peer (writer and reader of
//! its stream); a callee runs one task per inbound stream that reads
//! requests, runs each on the local workers, and writes answers back in
//! whatever order they complete.
//!
//! Frame: `u32` big-endian length of the rest, then
//! - request: `1`, id `u64` (per link), job id `u64` (mesh-wide, for logs),
//!   timeout ms `u32`, app name length `u16`, app name, payload (one line
//!   of compact JSON);
//! - answer: `2`, id `u64`, status `u8` (0 ok, else a
//!   [`JobError`](crate::error::JobError) kind), then the result JSON or
//!   the error message;
//! - batch request (a stream's lines bound for one peer, see
//!   [`crate::http::stream`]): `3`, then the request's header up to the
//!   app name, a count `u32` (1 to [`MAX_BATCH_LINES`]) and per job its
//!   length `u32` and text;
//! - batch answer part: `4`, id `u64`, the index of its first result
//!   `u32`, a count `u32`, then per result its status `u8`, length `u32`
//!   and text. A batch's results may come in several parts, in order, so
//!   that no frame is larger than one answer may be.
//!
//! Every frame is size-checked before it is read; a malformed frame closes
//! that stream (the sender's jobs then fail with an error, nobody waits).
//!
//! Files: [`frame`] (the codec and the framed reads and writes),
//! [`caller`] (links to other peers, one task each), [`callee`] (inbound
//! streams, one task each, with a bound per peer).

mod callee;
mod caller;
pub mod frame;

use libp2p::StreamProtocol;

pub use callee::serve_inbound;
pub use caller::JobLinks;

/// The job protocol's name: one stream of it per (caller, callee) pair.
pub const JOBS_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/jobs-stream/3");
/// Room for the header of a frame beyond its payload.
pub(super) const FRAME_HEADER_ROOM: usize = 1024;
/// Largest answer accepted (a worker's result is at most 10 MiB).
pub(super) const MAX_ANSWER_BYTES: usize = 10 * 1024 * 1024 + FRAME_HEADER_ROOM;
/// Jobs in flight from this peer to one other peer; more wait for a place
/// (within their own timeout). Bounds the memory a link can hold.
pub const WINDOW_PER_PEER: usize = 1024;
/// Jobs a callee runs at once for one inbound stream; it stops reading the
/// stream while at the limit, which pushes back on the caller.
pub(super) const INBOUND_CONCURRENCY: usize = 1024;
/// Inbound job streams one peer may hold open at once. An honest peer
/// keeps one (a second while it replaces a broken one); more are closed at
/// once, so nobody can multiply `INBOUND_CONCURRENCY` by opening streams.
pub(super) const MAX_INBOUND_STREAMS_PER_PEER: usize = 4;
pub(super) const KIND_REQUEST: u8 = 1;
pub(super) const KIND_ANSWER: u8 = 2;
pub(super) const KIND_BATCH_REQUEST: u8 = 3;
pub(super) const KIND_BATCH_ANSWER: u8 = 4;
/// Most jobs in one batch frame.
pub const MAX_BATCH_LINES: usize = 1024;
/// Most bytes of jobs a sender puts in one batch frame (a single job larger
/// than this travels alone). A callee reads frames up to this size even
/// when its own job size limit is lower, and holds each job of a batch to
/// that limit.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;
pub(super) const IO_BUF: usize = 64 * 1024;

/// Jobs waiting for their answers on one link, by id.
pub(super) type Pending = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, Waiter>>>;

/// Who waits for the answer to a request on a link.
pub(super) enum Waiter {
    /// One job.
    One(tokio::sync::oneshot::Sender<Result<String, crate::error::JobError>>),
    /// A batch of `lines` jobs; its results so far (parts come in order).
    Batch {
        lines: usize,
        results: Vec<Result<String, crate::error::JobError>>,
        reply: tokio::sync::oneshot::Sender<Vec<Result<String, crate::error::JobError>>>,
    },
}

impl Waiter {
    /// Fails whatever is not answered yet with `err`.
    pub(super) fn fail(self, err: crate::error::JobError) {
        match self {
            Waiter::One(reply) => {
                let _ = reply.send(Err(err));
            }
            Waiter::Batch {
                lines,
                mut results,
                reply,
            } => {
                results.resize_with(lines, || Err(err.clone()));
                let _ = reply.send(results);
            }
        }
    }
}
