//! The active view made real: a peer holds one idle "neighbour" stream to
//! each peer of its active view (see `Membership::active`), and accepts
//! such streams from the peers that chose it.
//!
//! The stream carries nothing. It says "I keep this connection": the
//! event loop closes connections that nothing uses
//! ([`super::usage::Usage`]), and a neighbour stream, in either direction,
//! is a use. So both ends of an active-view link keep it, and a peer whose
//! connection to a neighbour closes finds out at once (the connection-close
//! fast path: a redial, then "unreachable" if refused).
//!
//! # Bounds
//! At most [`MAX_INBOUND`] inbound neighbour streams are held (more are
//! reset: the peer that asked picks another neighbour when its
//! connection to this one is trimmed); each is read and anything it
//! carries discarded, at most [`READ_LIMIT`] bytes, then it is reset.

use std::collections::HashMap;

use futures::{AsyncReadExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::Control;
use tokio::task::AbortHandle;

use super::usage::Usage;

/// The neighbour protocol's name.
pub const NEIGHBOR_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/neighbor/1");
/// Inbound neighbour streams held, at most.
pub const MAX_INBOUND: usize = 64;
/// Bytes read from a neighbour stream before it is reset (it should carry
/// none).
const READ_LIMIT: usize = 4096;

/// The neighbour streams this peer holds (its active view).
pub struct Neighbors {
    control: Control,
    usage: Usage,
    held: HashMap<PeerId, AbortHandle>,
}

impl Neighbors {
    /// Starts accepting neighbour streams (each counted in `usage` while
    /// open) and returns the handle for holding this peer's own.
    pub fn start(mut control: Control, usage: Usage) -> Self {
        match control.accept(NEIGHBOR_PROTOCOL) {
            Ok(incoming) => {
                tokio::spawn(accept(incoming, usage.clone()));
            }
            Err(e) => tracing::error!("neighbour streams not served: {e}"),
        }
        Neighbors {
            control,
            usage,
            held: HashMap::new(),
        }
    }

    /// Holds a stream to each of `peers` (connected peers of the active
    /// view) and lets go of the others.
    pub fn hold(&mut self, peers: &[PeerId]) {
        self.held.retain(|p, task| {
            let keep = peers.contains(p) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for &peer in peers {
            if self.held.contains_key(&peer) {
                continue;
            }
            let mut control = self.control.clone();
            let usage = self.usage.clone();
            let task = tokio::spawn(async move {
                let Ok(mut stream) = control.open_stream(peer, NEIGHBOR_PROTOCOL).await else {
                    return;
                };
                let _held = usage.hold(peer);
                // Until the other side resets it or the connection ends.
                let mut buf = [0u8; 64];
                while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
            });
            self.held.insert(peer, task.abort_handle());
        }
    }
}

async fn accept(mut incoming: libp2p_stream::IncomingStreams, usage: Usage) {
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "neighbour stream refused: {MAX_INBOUND} held");
            continue;
        };
        let held = usage.hold(peer);
        tokio::spawn(async move {
            let (_permit, _held) = (permit, held);
            let mut buf = [0u8; 64];
            let mut read = 0;
            while read < READ_LIMIT {
                match stream.read(&mut buf).await {
                    Ok(n) if n > 0 => read += n,
                    _ => break,
                }
            }
        });
    }
}
