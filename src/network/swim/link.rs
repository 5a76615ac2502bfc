//! SWIM links: one long-lived stream per peer and direction, carrying
//! length-prefixed SWIM messages one after another.
//!
//! Why not one stream per message: `libp2p-stream` hands inbound streams
//! to the accepting task through a channel that holds one, and drops (so
//! resets) any stream that arrives while it is full. A busy peer whose
//! accepting task was not scheduled between two arrivals lost SWIM
//! messages that way: 3,008 of them while 50 debug peers formed a mesh on
//! 2 cores, enough for false downs and a kill that one peer did not hear
//! of within 3 s. A link is opened once per peer and reused, so inbound
//! streams arrive about once per neighbour, not once per message; and
//! each message costs a write, not a stream negotiation.
//!
//! Sending ([`Links::send`]): each peer's link is a task fed by a bounded
//! queue. It opens the stream on its first message, writes what is queued
//! and flushes, and ends after [`LINK_IDLE`] without a message, or when a
//! write fails twice (it opens a fresh stream once: the old one may have
//! been closed by an idle receiver or a trimmed connection). A message
//! for a full queue, or beyond [`MAX_LINKS`] links, is dropped and
//! counted: SWIM is built for lost messages.
//!
//! What links do not cure: the stream that opens a link still goes
//! through that channel of one, so links opened to one peer at the same
//! moment can collide, and a stream reset there after its first batch was
//! written loses that batch without the sender knowing (its next write
//! fails and it opens a fresh link). Opens are rare (one per peer and 30 s
//! of silence); SWIM's retries cover such a loss.
//!
//! Receiving ([`read_links`]): each inbound stream is read frame after
//! frame until its end, on a task of its own: at most [`MAX_INBOUND`] at
//! once and [`MAX_INBOUND_PER_PEER`] per peer (more are reset unread), a
//! frame's body within [`READ_TIMEOUT`] of its length, and the stream
//! reset after [`LINK_IDLE`] twice over without a frame. Peers that send
//! one message per stream and close it (earlier versions) read the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use libp2p_stream::Control;
use tokio::sync::{Semaphore, mpsc};

use crate::network::slots::PerPeerSlots;

use super::driver::SWIM_PROTOCOL;
use super::metrics;
use super::wire::MAX_FRAME;

/// Inbound links read at once, at most (more are reset unread).
pub const MAX_INBOUND: usize = 256;
/// Inbound links read at once from one peer, at most. An honest peer
/// holds one; a second may overlap while the first is replaced.
pub const MAX_INBOUND_PER_PEER: usize = 2;
/// Outbound links held at once, at most.
pub const MAX_LINKS: usize = 512;
/// Messages queued on one outbound link, at most.
pub const LINK_QUEUE: usize = 64;
/// An outbound link with nothing to send for this long is closed; an
/// inbound one silent for twice as long is reset.
pub const LINK_IDLE: Duration = Duration::from_secs(30);
/// How long reading one message's body may take, once its length is in.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// How long opening a stream, or writing and flushing a batch, may take.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// This peer's outbound SWIM links.
pub struct Links {
    control: Control,
    links: HashMap<PeerId, mpsc::Sender<Vec<u8>>>,
}

impl Links {
    /// No links yet: each starts with its first message.
    pub fn new(control: Control) -> Self {
        Links {
            control,
            links: HashMap::new(),
        }
    }

    /// Queues `frame` on the link to `to`, starting the link if it has
    /// none (or its task ended). Never waits: a full queue drops the frame.
    pub fn send(&mut self, to: PeerId, frame: Vec<u8>) {
        if let Some(link) = self.links.get(&to) {
            match link.try_send(frame) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::count("send_dropped");
                    tracing::debug!(%to, "SWIM message dropped: {LINK_QUEUE} queued on its link");
                    return;
                }
                // The link's task ended: start another below.
                Err(mpsc::error::TrySendError::Closed(f)) => {
                    self.links.remove(&to);
                    return self.send(to, f);
                }
            }
        }
        if self.links.len() >= MAX_LINKS {
            self.links.retain(|_, link| !link.is_closed());
            if self.links.len() >= MAX_LINKS {
                metrics::count("send_dropped");
                tracing::debug!(%to, "SWIM message dropped: {MAX_LINKS} links open");
                return;
            }
        }
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        tx.try_send(frame).expect("a new queue has room");
        self.links.insert(to, tx);
        tokio::spawn(run_link(self.control.clone(), to, rx));
    }
}

/// One outbound link: see the module's documentation.
async fn run_link(mut control: Control, to: PeerId, mut queue: mpsc::Receiver<Vec<u8>>) {
    let mut stream: Option<libp2p::Stream> = None;
    let mut batch: Vec<Vec<u8>> = Vec::new();
    loop {
        match tokio::time::timeout(LINK_IDLE, queue.recv()).await {
            Ok(Some(frame)) => batch.push(frame),
            // Idle, or the driver is gone.
            Ok(None) | Err(_) => break,
        }
        while batch.len() < LINK_QUEUE {
            match queue.try_recv() {
                Ok(frame) => batch.push(frame),
                Err(_) => break,
            }
        }
        let mut sent = false;
        // The stream held may have been closed under us: one fresh try.
        for _attempt in 0..2 {
            let fresh = stream.is_none();
            let s = match stream.take() {
                Some(s) => s,
                None => {
                    match tokio::time::timeout(SEND_TIMEOUT, control.open_stream(to, SWIM_PROTOCOL))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%to, "SWIM link not opened: {e}");
                            break;
                        }
                        Err(_) => {
                            tracing::debug!(%to, "SWIM link not opened within {SEND_TIMEOUT:?}");
                            break;
                        }
                    }
                }
            };
            let mut s = s;
            match tokio::time::timeout(SEND_TIMEOUT, write_batch(&mut s, &batch)).await {
                Ok(Ok(())) => {
                    stream = Some(s);
                    sent = true;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(%to, fresh, "SWIM link write failed: {e}"),
                Err(_) => {
                    tracing::debug!(%to, fresh, "SWIM link write not done within {SEND_TIMEOUT:?}")
                }
            }
            if fresh {
                // A stream opened just now failed: the peer is not taking
                // SWIM from us at the moment; do not try again at once.
                break;
            }
        }
        let outcome = if sent { "sent" } else { "send_failed" };
        for _ in 0..batch.len() {
            metrics::count(outcome);
        }
        batch.clear();
        if !sent {
            // Whatever was queued meanwhile goes with this link: the next
            // message starts another.
            break;
        }
    }
    if let Some(mut s) = stream {
        let _ = tokio::time::timeout(SEND_TIMEOUT, s.close()).await;
    }
}

async fn write_batch(stream: &mut libp2p::Stream, batch: &[Vec<u8>]) -> std::io::Result<()> {
    for frame in batch {
        stream.write_all(frame).await?;
    }
    stream.flush().await
}

/// Reads inbound SWIM links (see the module's documentation) and hands
/// each message, with its sender, to `inbox`; a full inbox drops it.
pub async fn read_links(
    mut incoming: impl futures::Stream<Item = (PeerId, libp2p::Stream)> + Unpin,
    inbox: mpsc::Sender<(PeerId, Vec<u8>)>,
) {
    let readers = Arc::new(Semaphore::new(MAX_INBOUND));
    // Inbound links per peer, at most MAX_INBOUND_PER_PEER: a slot is held
    // while its link is read (the map is bounded by MAX_INBOUND).
    let per_peer = PerPeerSlots::new(MAX_INBOUND_PER_PEER);
    while let Some((peer, mut stream)) = incoming.next().await {
        // Dropping a stream resets it.
        let Ok(permit) = readers.clone().try_acquire_owned() else {
            metrics::count("link_refused");
            continue;
        };
        let Some(slot) = per_peer.take(peer) else {
            metrics::count("link_refused");
            continue;
        };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            loop {
                match read_frame(&mut stream).await {
                    Ok(Some(body)) => {
                        if inbox.try_send((peer, body)).is_err() {
                            metrics::count("inbox_full");
                        }
                    }
                    // The sender closed the link.
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(%peer, "SWIM link read ended: {e}");
                        break;
                    }
                }
            }
        });
    }
}

/// One message: `Ok(None)` at a clean end of the stream.
async fn read_frame(stream: &mut libp2p::Stream) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    let idle = async {
        while got < len.len() {
            let n = stream.read(&mut len[got..]).await?;
            if n == 0 {
                return if got == 0 {
                    Ok(false)
                } else {
                    Err(std::io::ErrorKind::UnexpectedEof.into())
                };
            }
            got += n;
        }
        Ok(true)
    };
    match tokio::time::timeout(LINK_IDLE * 2, idle).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return Ok(None),
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(std::io::Error::other("idle for too long")),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a SWIM message of {len} bytes (at most {MAX_FRAME})"
        )));
    }
    let mut body = vec![0u8; len];
    match tokio::time::timeout(READ_TIMEOUT, stream.read_exact(&mut body)).await {
        Ok(Ok(())) => Ok(Some(body)),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(std::io::Error::other(format!(
            "a message's body not read within {READ_TIMEOUT:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;
    use libp2p::swarm::SwarmEvent;
    use libp2p::{Multiaddr, Swarm};

    /// A swarm that speaks only `libp2p-stream`, on the memory transport,
    /// connected to `dial` (if given) and driven by a task of its own.
    async fn node(
        port: u64,
        dial: Option<Multiaddr>,
    ) -> (PeerId, Control, Multiaddr, tokio::task::JoinHandle<()>) {
        let key = Keypair::generate_ed25519();
        let transport = crate::network::secure(
            libp2p::core::transport::MemoryTransport::default(),
            &key,
            Duration::from_secs(5),
        )
        .unwrap();
        let mut swarm: Swarm<libp2p_stream::Behaviour> =
            libp2p::SwarmBuilder::with_existing_identity(key.clone())
                .with_tokio()
                .with_other_transport(|_| transport)
                .unwrap()
                .with_behaviour(|_| libp2p_stream::Behaviour::new())
                .unwrap()
                .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
                .build();
        let addr: Multiaddr = format!("/memory/{port}").parse().unwrap();
        swarm.listen_on(addr.clone()).unwrap();
        let dialing = dial.is_some();
        if let Some(dial) = dial {
            swarm.dial(dial).unwrap();
        }
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => break,
                SwarmEvent::NewListenAddr { .. } if !dialing => break,
                _ => {}
            }
        }
        let control = swarm.behaviour().new_control();
        let id = *swarm.local_peer_id();
        let task = tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        (id, control, addr, task)
    }

    fn frame(sender: usize, i: usize) -> Vec<u8> {
        let body = format!("{sender}:{i}").into_bytes();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend(body);
        frame
    }

    /// Bursts from several peers at once all arrive on open links (one
    /// stream per message lost some of such bursts: `libp2p-stream` resets
    /// inbound streams that arrive while its accept channel, of one, is
    /// full), and links are reused: one inbound stream per sender.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bursts_from_several_peers_all_arrive_on_one_link_each() {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        static PORT: AtomicU64 = AtomicU64::new(7_000_000);
        let port = || PORT.fetch_add(1, Ordering::Relaxed);
        const SENDERS: usize = 3;
        const ROUNDS: usize = 3;
        const BURST: usize = LINK_QUEUE;

        let (receiver, mut control, addr, receiver_task) = node(port(), None).await;
        let streams = Arc::new(AtomicUsize::new(0));
        let counted = streams.clone();
        let incoming = control.accept(SWIM_PROTOCOL).unwrap().inspect(move |_| {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let (inbox_tx, mut inbox) = mpsc::channel(4 * SENDERS * BURST);
        let reader = tokio::spawn(read_links(incoming, inbox_tx));
        let mut senders = Vec::new();
        for _ in 0..SENDERS {
            let (_, control, _, task) = node(port(), Some(addr.clone())).await;
            senders.push((Links::new(control), task));
        }

        // Each link opened first, one at a time: opens that collide at the
        // receiver's accept channel lose their first batch (see the
        // module's documentation); bursts on open links must not.
        for (s, (links, _)) in senders.iter_mut().enumerate() {
            links.send(receiver, frame(s, usize::MAX));
            let hello = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
            let body = hello
                .expect("the first message arrives")
                .expect("inbox open")
                .1;
            assert_eq!(body, format!("{s}:{}", usize::MAX).into_bytes());
        }
        let mut got = std::collections::HashSet::new();
        for round in 0..ROUNDS {
            for (s, (links, _)) in senders.iter_mut().enumerate() {
                for i in 0..BURST {
                    links.send(receiver, frame(s, round * BURST + i));
                }
            }
            let want = (round + 1) * SENDERS * BURST;
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while got.len() < want {
                match tokio::time::timeout_at(deadline, inbox.recv()).await {
                    Ok(Some((_, body))) => {
                        got.insert(String::from_utf8(body).unwrap());
                    }
                    _ => panic!("round {round}: {} of {want} messages arrived", got.len()),
                }
            }
        }
        assert_eq!(
            streams.load(Ordering::Relaxed),
            SENDERS,
            "one inbound stream per sender"
        );
        reader.abort();
        receiver_task.abort();
        for (_, task) in senders {
            task.abort();
        }
    }
}
