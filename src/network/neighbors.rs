//! The active view made real: a peer holds one idle "neighbour" stream to
//! each peer of its active view (see `Membership::active`), and accepts
//! such streams from the peers that chose it.
//!
//! The stream carries nothing. It says "I keep this connection": the
//! event loop closes connections that nothing uses
//! ([`super::usage::Usage`]), and a neighbour stream, in either direction,
//! is a use. So both ends of an active-view link keep it, and a peer whose
//! connection to a neighbour closes finds out at once (the connection-close
//! fast path: a redial, then "unreachable" if refused), on both ends: the
//! peer that was chosen asks [`Neighbors::chose_us`] when a connection
//! closes (it may learn of the close before or after the stream ends).
//!
//! # Bounds
//! At most [`MAX_INBOUND`] inbound neighbour streams are held (more are
//! reset: the peer that asked picks another neighbour when its
//! connection to this one is trimmed); each is read and anything it
//! carries discarded, at most [`READ_LIMIT`] bytes, then it is reset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
/// How long after its inbound neighbour stream ended a peer still counts
/// as having chosen this one (the stream's end and its connection's close
/// reach this peer in either order, a few milliseconds apart).
const CHOSEN_GRACE: Duration = Duration::from_secs(1);

/// Per peer that chose this one as a neighbour: its inbound neighbour
/// streams open, and when the last one ended. Entries of peers whose
/// streams ended more than [`CHOSEN_GRACE`] ago are dropped as others are
/// added, so the map holds at most 2 x [`MAX_INBOUND`] entries plus those
/// whose streams ended within the last [`CHOSEN_GRACE`] (each a peer that
/// connected with its own key: connections are limited per peer and in
/// total).
#[derive(Clone, Default)]
struct ChosenBy(Arc<Mutex<HashMap<PeerId, (u32, Instant)>>>);

impl ChosenBy {
    fn opened(&self, peer: PeerId, now: Instant) {
        let mut map = self.0.lock().expect("chosen_by lock");
        if map.len() >= 2 * MAX_INBOUND {
            map.retain(|_, (open, ended)| *open > 0 || now.duration_since(*ended) < CHOSEN_GRACE);
        }
        map.entry(peer).or_insert((0, now)).0 += 1;
    }

    fn closed(&self, peer: PeerId, now: Instant) {
        let mut map = self.0.lock().expect("chosen_by lock");
        if let Some((open, ended)) = map.get_mut(&peer) {
            *open = open.saturating_sub(1);
            *ended = now;
        }
    }

    fn holds(&self, peer: &PeerId, now: Instant) -> bool {
        let map = self.0.lock().expect("chosen_by lock");
        map.get(peer)
            .is_some_and(|(open, ended)| *open > 0 || now.duration_since(*ended) < CHOSEN_GRACE)
    }
}

/// The neighbour streams this peer holds (its active view).
pub struct Neighbors {
    control: Control,
    usage: Usage,
    held: HashMap<PeerId, AbortHandle>,
    chosen_by: ChosenBy,
}

impl Neighbors {
    /// Starts accepting neighbour streams (each counted in `usage` while
    /// open) and returns the handle for holding this peer's own.
    pub fn start(mut control: Control, usage: Usage) -> Self {
        let chosen_by = ChosenBy::default();
        match control.accept(NEIGHBOR_PROTOCOL) {
            Ok(incoming) => {
                tokio::spawn(accept(incoming, usage.clone(), chosen_by.clone()));
            }
            Err(e) => tracing::error!("neighbour streams not served: {e}"),
        }
        Neighbors {
            control,
            usage,
            held: HashMap::new(),
            chosen_by,
        }
    }

    /// Whether `peer` holds a neighbour stream to this peer (this peer is
    /// in its active view), or held one until a moment ago.
    pub fn chose_us(&self, peer: &PeerId) -> bool {
        self.chosen_by.holds(peer, Instant::now())
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

async fn accept(mut incoming: libp2p_stream::IncomingStreams, usage: Usage, chosen_by: ChosenBy) {
    let open = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_INBOUND));
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = open.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "neighbour stream refused: {MAX_INBOUND} held");
            continue;
        };
        let held = usage.hold(peer);
        chosen_by.opened(peer, Instant::now());
        let chosen_by = chosen_by.clone();
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
            chosen_by.closed(peer, Instant::now());
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_chose_us_while_its_stream_is_open_and_a_moment_after() {
        let c = ChosenBy::default();
        let (p, t0) = (PeerId::random(), Instant::now());
        assert!(!c.holds(&p, t0), "never chose us");
        c.opened(p, t0);
        c.opened(p, t0);
        c.closed(p, t0);
        assert!(c.holds(&p, t0 + 10 * CHOSEN_GRACE), "one stream still open");
        c.closed(p, t0 + CHOSEN_GRACE);
        assert!(c.holds(&p, t0 + CHOSEN_GRACE), "just ended");
        assert!(!c.holds(&p, t0 + 2 * CHOSEN_GRACE), "ended a while ago");
    }

    #[test]
    fn ended_entries_are_dropped_so_the_map_stays_bounded() {
        let c = ChosenBy::default();
        let t0 = Instant::now();
        let open = PeerId::random();
        c.opened(open, t0);
        for _ in 0..10 * MAX_INBOUND {
            let p = PeerId::random();
            c.opened(p, t0);
            c.closed(p, t0);
        }
        let later = t0 + 2 * CHOSEN_GRACE;
        c.opened(PeerId::random(), later);
        let len = c.0.lock().unwrap().len();
        assert!(len <= 2, "ended entries dropped, {len} left");
        assert!(c.holds(&open, later), "an open one is kept");
        // Within the grace, the map holds what it must, bounded by the
        // streams that ended within it.
        for _ in 0..10 * MAX_INBOUND {
            let p = PeerId::random();
            c.opened(p, later);
            c.closed(p, later);
        }
        assert!(c.0.lock().unwrap().len() <= 10 * MAX_INBOUND + 3);
    }
}
