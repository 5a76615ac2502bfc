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
//!   the error message.
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
pub const JOBS_STREAM_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/jobs-stream/2");
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
pub(super) const IO_BUF: usize = 64 * 1024;

/// Jobs waiting for their answers on one link, by id.
pub(super) type Pending = std::sync::Arc<
    std::sync::Mutex<
        std::collections::HashMap<
            u64,
            tokio::sync::oneshot::Sender<Result<String, crate::error::JobError>>,
        >,
    >,
>;
