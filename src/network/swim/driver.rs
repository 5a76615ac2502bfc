//! The task that runs this peer's SWIM state machine: it feeds it the
//! messages other peers send, the clock, and what the event loop saw
//! (connections, deaths), and carries out the sends it asks for.
//!
//! It runs beside the swarm task, not in it: messages come and go on
//! libp2p streams through `libp2p-stream`'s [`Control`] (one long-lived
//! link per peer and direction, see [`super::link`]), and the event loop
//! learns the result from a `watch`ed [`SwimView`]. Nothing here blocks;
//! a send or a read that takes too long is dropped (SWIM is built for lost
//! messages).
//!
//! # Bounds
//! Inbound and outbound links: see [`super::link`]. Per sender at most
//! [`SENDER_BURST`] messages at once, [`SENDER_RATE`] a second on average
//! (the rest are dropped unread: an honest peer sends a few a second), and
//! at most [`INBOX`] messages read but not yet handled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::identity::Keypair;
use libp2p::{PeerId, StreamProtocol};
use libp2p_stream::Control;
use tokio::sync::{mpsc, watch};

use super::link::{self, Links};
use super::metrics;
use super::vouch::Signatures;
use super::wire;
use crate::mesh::swim::{Config, Event, Msg, Status, Swim};
use crate::ratelimit::PerKeyBudget;

/// The SWIM protocol's name.
pub const SWIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/swim/1");
/// Messages taken from one sender at once, and per second on average.
pub const SENDER_BURST: u32 = 64;
/// See [`SENDER_BURST`].
pub const SENDER_RATE: u32 = 32;
/// Full-state exchanges with newly connected peers at once (then one a
/// second): each sends this peer's member list.
const CONNECT_SYNC_BURST: u32 = 16;
/// Messages read but not yet handled, at most (more are dropped).
pub const INBOX: usize = 256;

/// What the event loop tells the driver.
#[derive(Debug, Clone)]
pub enum Input {
    /// A connection to this peer is up: if this peer knows nobody yet, it
    /// joins the mesh through it.
    Connected(PeerId),
    /// This peer's last connection to it closed and the redial failed: it
    /// is dead (see [`Swim::declare_dead`]).
    Unreachable(PeerId),
    /// This peer is stopping: say goodbye.
    Leave,
    /// A dial to it failed without a refusal: suspect it (see
    /// [`Swim::suspect`]).
    Doubt(PeerId),
    /// The peers this peer is connected to now: SWIM talks to those only
    /// (see [`Swim::set_neighbours`]).
    Neighbours(Vec<PeerId>),
}

/// What SWIM holds, as the event loop reads it.
#[derive(Debug, Default, Clone)]
pub struct SwimView {
    /// Every member held, with its status.
    pub members: HashMap<PeerId, Status>,
    /// This peer's local health score (0 is healthy).
    pub health: u32,
}

/// The event loop's handle on the driver task.
pub struct SwimHandle {
    inputs: mpsc::Sender<Input>,
    /// The latest view, replaced whenever a member changes status.
    pub view: watch::Receiver<Arc<SwimView>>,
}

impl SwimHandle {
    /// Tells the driver something; dropped if the driver is 1024 inputs
    /// behind (it never is unless it is gone).
    pub fn tell(&self, input: Input) {
        let _ = self.inputs.try_send(input);
    }
}

/// Starts the driver for the peer with identity `key`, starting at
/// `incarnation`. It runs until the handle is dropped.
pub fn spawn(mut control: Control, key: Keypair, incarnation: u64, cfg: Config) -> SwimHandle {
    let me = key.public().to_peer_id();
    let (inputs_tx, inputs) = mpsc::channel(1024);
    let (view_tx, view) = watch::channel(Arc::new(SwimView::default()));
    let (inbox_tx, inbox) = mpsc::channel(INBOX);
    match control.accept(SWIM_PROTOCOL) {
        Ok(incoming) => {
            tokio::spawn(link::read_links(incoming, inbox_tx));
        }
        Err(e) => tracing::error!("SWIM protocol not served: {e}"),
    }
    let seed = rand::random();
    let swim = Swim::new(me, incarnation, cfg, Instant::now(), seed);
    let driver = Driver {
        swim,
        sigs: Signatures::new(key),
        links: Links::new(control),
        budget: PerKeyBudget::new(SENDER_BURST, SENDER_RATE, wire::MAX_SYNC_MEMBERS),
        view_tx,
        leaving: false,
        connect_syncs: PerKeyBudget::new(CONNECT_SYNC_BURST, 1, 1),
    };
    tokio::spawn(driver.run(inputs, inbox));
    SwimHandle {
        inputs: inputs_tx,
        view,
    }
}

struct Driver {
    swim: Swim<PeerId>,
    sigs: Signatures,
    links: Links,
    budget: PerKeyBudget<PeerId>,
    view_tx: watch::Sender<Arc<SwimView>>,
    leaving: bool,
    /// Full-state exchanges started by new connections (see `on_input`).
    connect_syncs: PerKeyBudget<()>,
}

impl Driver {
    async fn run(
        mut self,
        mut inputs: mpsc::Receiver<Input>,
        mut inbox: mpsc::Receiver<(PeerId, Vec<u8>)>,
    ) {
        self.sigs.sign_own(self.swim.incarnation(), false);
        // Forget the signatures of forgotten members now and then.
        let mut prune = tokio::time::interval(Duration::from_secs(30));
        loop {
            let wake = tokio::time::Instant::from_std(self.swim.next_wake());
            tokio::select! {
                input = inputs.recv() => match input {
                    Some(input) => self.on_input(input),
                    // The event loop is gone: so is this peer.
                    None => break,
                },
                Some((peer, body)) = inbox.recv() => self.on_message(peer, &body),
                _ = tokio::time::sleep_until(wake) => self.swim.tick(Instant::now()),
                _ = prune.tick() => {
                    let swim = &self.swim;
                    self.sigs.retain(|id| swim.status(id).is_some());
                }
            }
            self.flush();
        }
    }

    fn on_input(&mut self, input: Input) {
        let now = Instant::now();
        tracing::trace!(?input, "SWIM input");
        match input {
            Input::Connected(peer) => {
                // A connection to a peer SWIM does not hold alive: a
                // full-state exchange with it (a join). Alone, that is
                // how this peer enters the mesh; otherwise it merges two
                // parts of the mesh that formed apart (peers that joined
                // through each other while both were alone). At most
                // [`CONNECT_SYNC_BURST`] at once, then one a second.
                let live = matches!(
                    self.swim.status(&peer),
                    Some(Status::Alive | Status::Suspect)
                );
                let alone = self.swim.live_members() == 0;
                if live {
                } else if alone {
                    // Retried until answered: how this peer enters.
                    self.swim.join(peer, now);
                } else if self.connect_syncs.allow(&(), now) {
                    // Once: a peer that does not answer (it may not speak
                    // SWIM) is not asked again.
                    self.swim.sync_with(peer);
                }
            }
            Input::Unreachable(peer) => self.swim.declare_dead(peer, now),
            Input::Doubt(peer) => self.swim.suspect(peer, now),
            Input::Neighbours(peers) => self.swim.set_neighbours(Some(peers)),
            Input::Leave => {
                self.leaving = true;
                self.swim.leave();
            }
        }
    }

    fn on_message(&mut self, peer: PeerId, body: &[u8]) {
        let now = Instant::now();
        if !self.budget.allow(&peer, now) {
            metrics::count("over_budget");
            tracing::debug!(%peer, "SWIM message dropped: over the sender's budget");
            return;
        }
        match wire::decode(body, &mut self.sigs) {
            Ok(msg) => {
                metrics::count("received");
                let (kind, updates) = summary(&msg);
                tracing::trace!(%peer, kind, updates, "SWIM received");
                self.swim.handle(peer, msg, now)
            }
            Err(e) => {
                metrics::count("malformed");
                tracing::debug!(%peer, "malformed SWIM message refused: {e}")
            }
        }
    }

    /// Signs this peer's record if its incarnation moved (a refutation),
    /// sends what the state machine asked for, and publishes the view when
    /// a member changed.
    fn flush(&mut self) {
        self.sigs.sign_own(self.swim.incarnation(), self.leaving);
        let sends: Vec<_> = self.swim.drain_sends().collect();
        for (to, msg) in sends {
            let (kind, updates) = summary(&msg);
            tracing::trace!(%to, kind, updates, "SWIM send");
            let frame = wire::encode(&msg, &self.sigs);
            self.links.send(to, frame);
        }
        let mut changed = false;
        for event in self.swim.drain_events() {
            changed = true;
            match event {
                Event::Up(id) => tracing::debug!(peer = %id, "SWIM: alive"),
                Event::Suspect(id) => tracing::debug!(peer = %id, "SWIM: suspect"),
                Event::Down { id, left } => {
                    tracing::debug!(peer = %id, left, "SWIM: down")
                }
            }
        }
        if changed {
            let view = SwimView {
                members: self.swim.members().collect(),
                health: self.swim.health(),
            };
            metrics::set_members(view.members.values().copied(), view.health);
            self.view_tx.send_replace(Arc::new(view));
        }
    }
}

/// A message's kind and how many updates it carries, for the trace log.
fn summary(msg: &Msg<PeerId>) -> (&'static str, usize) {
    match msg {
        Msg::Ping { updates, .. } => ("ping", updates.len()),
        Msg::Ack { updates, .. } => ("ack", updates.len()),
        Msg::PingReq { updates, .. } => ("ping-req", updates.len()),
        Msg::Nack { .. } => ("nack", 0),
        Msg::Gossip { updates } => ("gossip", updates.len()),
        Msg::Sync { members, .. } => ("sync", members.len()),
    }
}
