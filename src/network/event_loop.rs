//! The one task that owns the libp2p `Swarm`, the membership table and the
//! mesh's decisions.
//!
//! It reacts to swarm events, announces this peer periodically (and at
//! once to a new neighbour or after a decision taken here), carries out
//! the dials that [`Membership`] asks for, merges the decisions that
//! announcements and the API bring, and publishes a fresh [`MeshView`]
//! (for everything above) and [`DesiredApps`] (for the reconciler) after
//! every change. Jobs and bundles do not pass through it: they travel on
//! streams of their own. On shutdown it says goodbye on the membership
//! topic, so others mark it `left` at once.

use rand::seq::SliceRandom;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Now, on tokio's clock: membership's rules take the time as an
/// argument, and tokio's clock is the one tests can pause and advance.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, Message};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, ping};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::behaviour::{
    Behaviour, BehaviourEvent, GRAYLIST_THRESHOLD, MAX_GOSSIP_BYTES, MAX_MEMBERS_IN_ANSWER,
    MEMBERSHIP_TOPIC, MemberHint, MembersRequest, MembersResponse, PROTOCOL_VERSION,
};
use super::client::{Client, Command};
use super::neighbors::Neighbors;
use super::swim::{Input, SwimHandle};
use super::usage::Usage;
use super::{Announced, Settings};
use crate::clock::unix_ms;
use crate::mesh::desired::{DesiredApp, DesiredApps};
use crate::mesh::membership::Timing;
use crate::mesh::membership::{
    ANNOUNCE_VERSION, Announce, AnnounceError, Dial, MAX_LINKS, MAX_PEERS, Membership,
    Refusal as MemberRefusal,
};
use crate::mesh::swim::Status as SwimStatus;
use crate::mesh::trust::{Admins, Refusal};
use crate::mesh::view::{MeshView, SelfView};
use crate::ratelimit::PerKeyBudget;

/// Longest gap between two rounds of membership housekeeping (silence
/// checks, redials, forgetting, the lazily refreshed view). Rounds run
/// when the next of those is due, and at least this often: a timer that
/// fires four times a second whether or not anything is due was a tenth of
/// an idle peer's wake-ups.
const HOUSEKEEPING_MAX: Duration = Duration::from_secs(1);
/// Shortest gap between two rounds, whatever a deadline says.
const HOUSEKEEPING_MIN: Duration = Duration::from_millis(10);
/// Shortest gap between two copies of the membership table into what is
/// derived from it (the published view, the active view, the address
/// book). Each copy costs O(N): taken on every change, a 150-peer mesh
/// forming spent a tenth of its CPU building views nobody read before the
/// next one replaced them. The first change after a quiet gap is copied at
/// once; a burst of changes is copied once per gap (at 100 ms the copies
/// of a forming 150-peer mesh still took a tenth of its CPU).
const VIEW_EVERY: Duration = Duration::from_millis(250);
/// Minimum gap between two announcements triggered by new subscribers.
const ANNOUNCE_DEBOUNCE: Duration = Duration::from_millis(100);
/// Minimum gap before an announcement whose only change is its links (the
/// active view, shown in the dashboard's picture and nowhere else). Every
/// announcement is taken, checked and forwarded by every peer of the mesh;
/// a newcomer's active view changes two or three times in its first
/// seconds, and announcing each change made three announcements per join
/// where one carries everything that matters: in a forming 150-peer mesh
/// they were two thirds of its gossip and of its signature checks.
const LINKS_EVERY: Duration = Duration::from_secs(10);
/// How long a stopping peer keeps its connections open so its goodbye
/// announcement is flushed to every neighbour.
const GOODBYE_FLUSH: Duration = Duration::from_millis(300);
const BOOTSTRAP_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Shortest gap between two log lines summing up membership refusals.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// The swarm task, built by [`start`](super::start) and not running until
/// [`EventLoop::run`] is spawned.
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    membership: Membership,
    topic: IdentTopic,
    local: PeerId,
    timing: Timing,
    private: bool,
    http_addr: SocketAddr,
    labels: crate::mesh::labels::Labels,
    incarnation: u64,
    seq: u64,
    last_announce: Option<Instant>,
    announce_soon: bool,
    bootstrap: Vec<Multiaddr>,
    /// Per bootstrap address: whether a dial to it ever succeeded.
    bootstrap_reached: Vec<bool>,
    next_bootstrap: Instant,
    bootstrap_backoff: Duration,
    /// Receiver: every [`Client`]. Dropped when the loop ends.
    view_tx: watch::Sender<Arc<MeshView>>,
    /// Senders: every [`Client`]. The loop also ends on cancellation, so
    /// this never needs to close.
    commands: mpsc::Receiver<Command>,
    /// What this peer says about its apps and bundles.
    announced: Box<dyn Announced>,
    desired: DesiredApps,
    /// Receiver: the reconciler, which applies the desired state to `workers`.
    desired_tx: watch::Sender<Arc<DesiredApps>>,
    /// Set once this peer has announced that it is leaving (draining).
    leaving: bool,
    /// Whose signed decisions this peer takes (empty: unsigned ones).
    admins: Admins,
    /// Announcements each author may have us process and forward: an
    /// honest peer sends about one a second (a few more while its apps
    /// change); a flood from one author is dropped, not forwarded.
    announce_budget: PerKeyBudget<PeerId>,
    /// libp2p's own metrics (swarm, gossipsub, identify, ping), in the
    /// registry `/metrics` serves.
    p2p_metrics: libp2p::metrics::Metrics,
    /// Membership refusals as last logged (see [`Self::log_refusals`]).
    refusals_logged: [u64; MemberRefusal::ALL.len()],
    next_refusal_log: Instant,
    /// Connected peers whose gossip is dropped unread (graylisted by peer
    /// scoring), as of the last housekeeping round.
    graylisted: HashSet<PeerId>,
    /// This peer's identity: SWIM signs its "alive" with it, and this
    /// peer its announcements.
    keypair: libp2p::identity::Keypair,
    /// The last announcement published (its `seq` zeroed): the next one
    /// goes out when it differs, or after the refresh interval.
    last_content: Option<Announce>,
    /// This peer's latest record as published: handed to peers that ask
    /// for it.
    own_record: Option<Arc<[u8]>>,
    /// The peers reached at a bootstrap address (at most one per address):
    /// asked first for missing records while connected.
    joined_through: HashSet<PeerId>,
    /// Whether records are being asked for (a request went out and some
    /// were missing at the last look), those asked for at the last request, the records taken since, when that request went
    /// out and the wait after it (see [`Self::fetch_missing_records`]).
    records_missing: bool,
    records_asked: HashSet<PeerId>,
    records_taken: usize,
    records_last_request: Instant,
    records_backoff: Duration,
    /// The SWIM driver (failure detection), once [`Self::run`] started it.
    swim: Option<SwimHandle>,
    /// Streams open per peer (jobs, neighbours): what keeps a connection.
    usage: Usage,
    /// The neighbour streams of the active view, once [`Self::run`] started.
    neighbors: Option<Neighbors>,
    /// When this peer's first current connection to each peer came up.
    connected_at: HashMap<PeerId, Instant>,
    /// The table changed since the view and the active view were derived
    /// from it (see [`VIEW_EVERY`]).
    view_stale: bool,
    /// Only times that need no recomputation changed (last seen, ping).
    view_soft_stale: bool,
    /// When the view was last derived.
    view_derived: Instant,
}

/// Announcements per second (and burst) accepted from any one author.
const ANNOUNCE_RATE: u32 = 20;
const ANNOUNCE_BURST: u32 = 50;

impl EventLoop {
    pub(super) fn new(
        mut swarm: Swarm<Behaviour>,
        config: &Settings,
        announced: Box<dyn Announced>,
        desired_tx: watch::Sender<Arc<DesiredApps>>,
        p2p_metrics: libp2p::metrics::Metrics,
    ) -> (Client, EventLoop) {
        let local = *swarm.local_peer_id();
        let topic = IdentTopic::new(MEMBERSHIP_TOPIC);
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic)
            .expect("subscribing to a fresh topic cannot fail");
        let http_addr = config.http_addr;
        let incarnation = unix_ms();
        let membership = Membership::new(local, config.timing);
        let first_view = Arc::new(MeshView {
            local: SelfView {
                id: local.to_string(),
                listen: Vec::new(),
                http: http_addr.to_string(),
                started_ms: incarnation,
                private: config.psk.is_some(),
                labels: config.labels.clone(),
            },
            peers: Vec::new(),
        });
        let (view_tx, view_rx) = watch::channel(first_view);
        let (commands_tx, commands) = mpsc::channel(1024);
        let mut event_loop = EventLoop {
            swarm,
            membership,
            topic,
            local,
            timing: config.timing,
            private: config.psk.is_some(),
            http_addr,
            labels: config.labels.clone(),
            incarnation,
            seq: 0,
            last_announce: None,
            announce_soon: false,
            bootstrap: config.bootstrap.clone(),
            bootstrap_reached: vec![false; config.bootstrap.len()],
            next_bootstrap: now(),
            bootstrap_backoff: Duration::from_millis(500),
            view_tx,
            commands,
            announced,
            desired: DesiredApps::default(),
            desired_tx,
            leaving: false,
            admins: config.admins.clone(),
            p2p_metrics,
            announce_budget: PerKeyBudget::new(ANNOUNCE_BURST, ANNOUNCE_RATE, MAX_PEERS),
            refusals_logged: [0; MemberRefusal::ALL.len()],
            next_refusal_log: now(),
            graylisted: HashSet::new(),
            keypair: config.keypair.clone(),
            last_content: None,
            own_record: None,
            joined_through: HashSet::new(),
            records_missing: false,
            records_asked: HashSet::new(),
            records_taken: 0,
            // The first request goes out as soon as something is missing.
            records_last_request: now().checked_sub(RECORDS_REQUEST_EVERY).unwrap_or_else(now),
            records_backoff: RECORDS_REQUEST_EVERY,
            swim: None,
            usage: Usage::default(),
            neighbors: None,
            connected_at: HashMap::new(),
            view_stale: false,
            view_soft_stale: false,
            view_derived: now(),
        };
        event_loop.publish_view();
        let jobs = super::jobs::JobLinks::new(
            event_loop.swarm.behaviour().stream.new_control(),
            event_loop.usage.clone(),
        );
        (Client::new(view_rx, commands_tx, jobs), event_loop)
    }

    /// This peer's listen addresses, each ending in `/p2p/<peer id>`.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(self.local)))
            .collect()
    }

    /// A handle for opening and accepting job streams.
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.swarm.behaviour().stream.new_control()
    }

    /// The count of streams open per peer, for the job streams this peer
    /// serves ([`super::serve_inbound`]).
    pub fn usage(&self) -> Usage {
        self.usage.clone()
    }

    /// This peer's id.
    pub fn local_peer_id(&self) -> PeerId {
        self.local
    }

    /// Runs until `shutdown` is cancelled, then says goodbye. Cancels
    /// `shutdown` itself if it ends for any other reason, so the peer never
    /// keeps serving HTTP without a network behind it.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let _stop_everything_on_exit = shutdown.clone().drop_guard();
        let swim = super::swim::driver::spawn(
            self.stream_control(),
            self.keypair.clone(),
            self.incarnation,
            swim_config(&self.timing),
        );
        let mut swim_view = swim.view.clone();
        self.swim = Some(swim);
        self.neighbors = Some(Neighbors::start(self.stream_control(), self.usage.clone()));
        self.dial_bootstraps(now());
        let housekeeping = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(housekeeping);
        let announce = tokio::time::sleep_until(aligned_after(self.timing.announce_interval));
        tokio::pin!(announce);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                event = self.swarm.select_next_some() => self.handle_event(event),
                _ = &mut housekeeping => {
                    let next = self.housekeeping();
                    housekeeping.as_mut().reset(next.into());
                }
                _ = &mut announce => {
                    self.announce(false);
                    announce.as_mut().reset(aligned_after(self.timing.announce_interval));
                }
                Some(command) = self.commands.recv() => self.handle_command(command),
                Ok(()) = swim_view.changed() => {
                    let view = swim_view.borrow_and_update().clone();
                    self.membership.on_swim(&view.members, now());
                    self.fetch_missing_records();
                }
            }
            for peer in self.membership.take_unreachable() {
                self.tell_swim(Input::Unreachable(peer));
            }
            for peer in self.membership.take_doubted() {
                self.tell_swim(Input::Doubt(peer));
            }
            for peer in self.membership.take_silenced() {
                tracing::info!(%peer, "closing the connections of a silent peer (its jobs fail over; it is redialled)");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            if self.membership.take_dirty() {
                self.view_stale = true;
            }
            if self.view_stale {
                let due = self.view_derived + VIEW_EVERY;
                if now() >= due {
                    self.derive_view();
                } else if due < housekeeping.deadline().into_std() {
                    housekeeping.as_mut().reset(due.into());
                }
            }
            // A debounced announcement goes out at the end of its debounce,
            // not at the next regular round.
            if self.announce_soon
                && let Some(t) = self.last_announce
            {
                let due = tokio::time::Instant::from_std(t + ANNOUNCE_DEBOUNCE);
                if due < housekeeping.deadline() {
                    housekeeping.as_mut().reset(due);
                }
            }
        }
        self.goodbye().await;
    }

    async fn goodbye(&mut self) {
        tracing::info!(
            "leaving the mesh: announcing goodbye to {} peers",
            self.membership.connected_count()
        );
        self.tell_swim(Input::Leave);
        self.announce(true);
        let deadline = tokio::time::Instant::now() + GOODBYE_FLUSH;
        while let Ok(event) = tokio::time::timeout_at(deadline, self.swarm.select_next_some()).await
        {
            tracing::trace!(?event, "event while leaving");
        }
    }

    /// One round of housekeeping; returns when the next one is due.
    fn housekeeping(&mut self) -> Instant {
        let now = now();
        if self.desired.expire(unix_ms()) {
            self.desired_tx.send_replace(Arc::new(self.desired.clone()));
        }
        self.view_stale |= self.membership.take_dirty();
        self.view_soft_stale |= self.membership.take_any_dirty();
        if (self.view_stale || self.view_soft_stale) && now >= self.view_derived + VIEW_EVERY {
            self.derive_view();
        }
        for dial in self.membership.tick(now) {
            self.dial(dial);
        }
        self.hold_neighbors();
        self.trim_connections(now);
        if self.announce_soon {
            self.announce(false);
        }
        self.dial_bootstraps(now);
        self.fetch_missing_records();
        self.update_table_size();
        self.log_refusals(now);
        self.watch_scores();
        let mut next = aligned_after(HOUSEKEEPING_MAX).into_std();
        if let Some(due) = self.membership.next_deadline(now) {
            next = next.min(due);
        }
        if self.bootstraps_pending() {
            next = next.min(self.next_bootstrap);
        }
        if self.records_missing {
            next = next.min(self.records_last_request + self.records_backoff);
        }
        // Times alone (last seen, ping) wait for the next regular round.
        if self.view_stale {
            next = next.min(self.view_derived + VIEW_EVERY);
        }
        // Never a busy loop, whatever a deadline says.
        next.max(now + HOUSEKEEPING_MIN)
    }

    /// Whether some bootstrap address is still to be dialled (see
    /// [`Self::dial_bootstraps`]).
    fn bootstraps_pending(&self) -> bool {
        !self.bootstrap.is_empty()
            && (self.swarm.connected_peers().next().is_none()
                || !self.bootstrap_reached.iter().all(|r| *r))
    }

    /// Dials each bootstrap address until it has been reached once (peers
    /// may be started in any order), and all of them again whenever this
    /// peer finds itself without any connection.
    fn dial_bootstraps(&mut self, now: Instant) {
        if now < self.next_bootstrap || !self.bootstraps_pending() {
            return;
        }
        let alone = self.swarm.connected_peers().next().is_none();
        self.next_bootstrap = now + self.bootstrap_backoff;
        self.bootstrap_backoff = (self.bootstrap_backoff * 2).min(BOOTSTRAP_BACKOFF_MAX);
        let targets: Vec<Multiaddr> = self
            .bootstrap
            .iter()
            .zip(&self.bootstrap_reached)
            .filter(|(_, reached)| alone || !**reached)
            .map(|(a, _)| a.clone())
            .collect();
        for addr in targets {
            let opts = match addr.iter().last() {
                Some(Protocol::P2p(peer)) => DialOpts::peer_id(peer)
                    .addresses(vec![addr.clone()])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build(),
                _ => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            tracing::debug!(%addr, "dialing bootstrap peer");
            if let Err(e) = self.swarm.dial(opts)
                && !matches!(e, DialError::DialPeerConditionFalse(_))
            {
                tracing::warn!(%addr, "cannot dial bootstrap peer: {}", describe_dial_error(&e, self.private));
            }
        }
    }

    fn dial(&mut self, dial: Dial) {
        let opts = DialOpts::peer_id(dial.peer)
            .addresses(dial.addrs)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        match self.swarm.dial(opts) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => {
                tracing::debug!(peer = %dial.peer, "dial failed at once: {e}");
                self.membership.on_dial_failed(dial.peer, now());
            }
        }
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Leave { reply } => {
                tracing::info!("announcing that this peer is leaving; finishing the jobs it has");
                self.leaving = true;
                self.announce(true);
                let _ = reply.send(());
            }
            Command::SetDesired {
                app,
                run,
                workers,
                placement,
                reply,
            } => {
                // Defence in depth: the HTTP layer refuses these already.
                let entry = if self.admins.is_empty() {
                    let me = self.local.to_string();
                    self.desired
                        .set_placed(app, run, workers, placement, &me, unix_ms())
                } else {
                    Err(Refusal::Unsigned)
                };
                if let Ok(e) = &entry {
                    tracing::info!(app = %e.app, run, clock = e.clock, "start/stop decision taken here");
                    self.decided();
                }
                let _ = reply.send(entry);
            }
            Command::Decide { decision, reply } => {
                let held = self.desired.get(&decision.app).cloned();
                let result = match self
                    .desired
                    .merge((*decision).clone(), &self.admins, unix_ms())
                {
                    Ok(true) => {
                        tracing::info!(app = %decision.app, run = decision.run, origin = %decision.origin, clock = decision.clock, "signed decision taken here");
                        self.decided();
                        Ok(*decision)
                    }
                    // Sent twice: the same decision is held already.
                    Ok(false) if held.as_ref() == Some(&*decision) => Ok(*decision),
                    Ok(false) => Err(Refusal::Stale),
                    Err(refusal) => {
                        refused(refusal);
                        Err(refusal)
                    }
                };
                let _ = reply.send(result);
            }
        }
    }

    /// A decision was taken here: apply it, and tell the mesh now rather
    /// than after the debounce.
    fn decided(&mut self) {
        self.desired_tx.send_replace(Arc::new(self.desired.clone()));
        self.last_announce = None;
        self.announce(false);
    }

    /// Publishes this peer's announcement if it changed since the last one
    /// (or the refresh interval passed, or `leaving`): an idle mesh is
    /// quiet, and what each peer receives does not grow with the mesh.
    fn announce(&mut self, leaving: bool) {
        let leaving = leaving || self.leaving;
        let now = now();
        if !leaving
            && self
                .last_announce
                .is_some_and(|t| now.duration_since(t) < ANNOUNCE_DEBOUNCE)
        {
            self.announce_soon = true;
            return;
        }
        self.announce_soon = false;
        let mut content = self.announcement(leaving);
        content.seq = 0;
        let refresh = refresh_interval(self.timing.announce_interval, self.membership.sizes().0);
        // Half an interval of slack: the ticks that call this come every
        // announce interval, give or take a few milliseconds.
        let due = refresh.saturating_sub(self.timing.announce_interval / 2);
        let unchanged = self.last_content.as_ref() == Some(&content)
            && self
                .last_announce
                .is_some_and(|t| now.duration_since(t) < due);
        if unchanged && !leaving {
            return;
        }
        // A change of links alone waits (the announce tick comes back).
        let links_only =
            (self.last_content.as_ref()).is_some_and(|last| links_only(last, &content));
        if links_only
            && !leaving
            && self
                .last_announce
                .is_some_and(|t| now.duration_since(t) < LINKS_EVERY)
        {
            return;
        }
        self.last_announce = Some(now);
        self.seq += 1;
        let mut a = content.clone();
        a.seq = self.seq;
        let Some(data) =
            encode_announcement(a).and_then(|json| crate::mesh::record::seal(&self.keypair, &json))
        else {
            self.seq -= 1;
            return;
        };
        let record: Arc<[u8]> = Arc::from(data.as_slice());
        let published = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), data);
        tracing::debug!(seq = self.seq, ok = published.is_ok(), "announced");
        if published.is_ok() {
            self.last_content = Some(content);
        }
        // Held as the latest whether or not anybody listened yet: a peer
        // that asks gets it.
        self.own_record = Some(record);
        if let Err(e) = published {
            // The number goes to the next announcement: others count gaps
            // in an author's numbers as announcements that never arrived.
            self.seq -= 1;
            match e {
                // Nobody to tell yet: the first peer of a mesh, or all alone.
                gossipsub::PublishError::NoPeersSubscribedToTopic => {}
                e => tracing::warn!("announcement not published: {e}"),
            }
        }
    }

    /// Publishes another member's signed record, as its author would have:
    /// the same bytes, so the same gossip message (a copy that meets the
    /// author's own is dropped as a duplicate).
    fn relay_record(&mut self, author: PeerId, data: Vec<u8>) {
        let published = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(self.topic.clone(), data);
        match published {
            Ok(_) => {
                super::RECORDS_RELAYED.inc();
                tracing::debug!(%author, "passed a newcomer's record on to the gossip mesh");
            }
            // Seen already (it came through gossip meanwhile), or nobody
            // to tell: nothing to do.
            Err(e) => tracing::debug!(%author, "newcomer's record not passed on: {e}"),
        }
    }

    /// This peer's announcement as of now.
    fn announcement(&self, leaving: bool) -> Announce {
        Announce {
            v: ANNOUNCE_VERSION,
            id: self.local.to_string(),
            incarnation: self.incarnation,
            seq: self.seq,
            listen: self.swarm.listeners().map(|a| a.to_string()).collect(),
            http: Some(self.http_addr.to_string()),
            labels: self.labels.to_strings(),
            leaving,
            apps: if leaving {
                Vec::new()
            } else {
                // Bounded like the decisions they answer, so the whole
                // announcement always fits (see behaviour.rs's tests).
                let mut all = self.announced.apps();
                all.truncate(crate::mesh::desired::MAX_DESIRED);
                all
            },
            desired: self.desired.to_vec(),
            bundles: self.announced.bundles(),
            remote_deploy: self.announced.remote_deploy(),
            // The active view: the links this peer keeps (others come and
            // go with jobs and probes).
            links: self
                .membership
                .active()
                .iter()
                .take(MAX_LINKS)
                .map(|p| crate::mesh::membership::short_id(&p.to_string()).to_string())
                .collect(),
        }
    }

    fn publish_view(&mut self) {
        let view = MeshView {
            local: SelfView {
                id: self.local.to_string(),
                listen: self.listen_addrs().iter().map(|a| a.to_string()).collect(),
                http: self.http_addr.to_string(),
                started_ms: self.incarnation,
                private: self.private,
                labels: self.labels.clone(),
            },
            peers: self.membership.views(),
        };
        self.view_tx.send_replace(Arc::new(view));
    }

    /// Records the event in libp2p's metrics, then hands it to its handler.
    fn handle_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record(&event);
        let now = now();
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.on_gossip(e),
            SwarmEvent::Behaviour(BehaviourEvent::Members(e)) => self.on_members(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => self.on_identify(peer_id, info),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(_)) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event { peer, result, .. })) => {
                match result {
                    Ok(rtt) => self.membership.on_rtt(peer, rtt, now),
                    Err(e) => tracing::debug!(%peer, "ping failed: {e}"),
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                tracing::debug!(peer = %peer_id, dialer = endpoint.is_dialer(), "connection established");
                self.on_connected(peer_id, &endpoint, num_established.get(), now)
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, remaining = num_established, "connection closed");
                if num_established == 0 {
                    self.connected_at.remove(&peer_id);
                    self.tell_neighbours();
                }
                let chose_us = num_established == 0
                    && (self.neighbors.as_ref()).is_some_and(|n| n.chose_us(&peer_id));
                if let Some(dial) =
                    self.membership
                        .on_disconnected(peer_id, num_established, chose_us, now)
                {
                    self.dial(dial);
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.on_dial_error(peer_id, &error, now)
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error: libp2p::swarm::ListenError::Denied { cause },
                ..
            } => {
                // Over a connection limit (see `behaviour.rs`); counted in
                // libp2p's swarm metrics, not worth a line each under a flood.
                tracing::debug!(from = %send_back_addr, "incoming connection refused: {cause}");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let reason = error.to_string();
                let hint = handshake_hint(&format!("{reason} {error:?}"), self.private);
                tracing::warn!(from = %send_back_addr, "incoming connection failed: {reason}{hint}");
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
                self.publish_view();
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::info!(%address, "no longer listening");
                self.publish_view();
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!("listener error: {error}"),
            _ => {}
        }
    }

    /// libp2p's own metrics (swarm, gossipsub, identify, ping).
    fn record(&mut self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        self.p2p_metrics.record(event);
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(e)) => self.p2p_metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.p2p_metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => self.p2p_metrics.record(e),
            _ => {}
        }
    }

    /// A peer told us who it is: one of another protocol version is cut
    /// off; the addresses it listens on go to membership.
    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if info.protocol_version != PROTOCOL_VERSION {
            tracing::warn!(
                %peer,
                protocol = %info.protocol_version,
                agent = %info.agent_version,
                "disconnecting: not a disruptor peer of this version (expected {PROTOCOL_VERSION})"
            );
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        self.membership.on_identify(peer, info.listen_addrs);
    }

    /// A connection is up: note which bootstrap address it reached, tell
    /// membership, and ask a newly connected peer for the members it knows.
    fn on_connected(
        &mut self,
        peer: PeerId,
        endpoint: &libp2p::core::ConnectedPoint,
        established: u32,
        now: Instant,
    ) {
        tracing::debug!(%peer, addr = %endpoint.get_remote_address(), "connected");
        let dialed_addr = endpoint
            .is_dialer()
            .then(|| strip_p2p(endpoint.get_remote_address()));
        if let Some(addr) = &dialed_addr {
            for (b, reached) in self.bootstrap.iter().zip(self.bootstrap_reached.iter_mut()) {
                if strip_p2p(b) == *addr {
                    *reached = true;
                    if self.joined_through.len() < self.bootstrap.len() {
                        self.joined_through.insert(peer);
                    }
                }
            }
        }
        self.membership.on_connected(peer, dialed_addr, now);
        if established == 1 {
            self.connected_at.insert(peer, now);
            self.tell_swim(Input::Connected(peer));
            self.tell_neighbours();
            if self.membership.is_active(&peer) {
                self.hold_neighbors();
            }
        }
    }

    /// Asks a connected peer for the records of members SWIM knows and this
    /// peer has no announcement of (a newcomer: the whole mesh at once),
    /// at most once per [`RECORDS_REQUEST_EVERY`], [`MAX_WANT`] at a time.
    fn fetch_missing_records(&mut self) {
        let now = now();
        let missing = self.membership.missing_records();
        super::RECORDS_MISSING.set(missing.len() as i64);
        if missing.is_empty() {
            self.records_missing = false;
            return;
        }
        // Requests come every RECORDS_REQUEST_EVERY while they make
        // progress (a record taken since the last request, or a member
        // missing that was not asked for then: a newcomer), backing off
        // while they do not (a record nobody reachable holds is asked for
        // rarely).
        let progress =
            self.records_taken > 0 || missing.iter().any(|p| !self.records_asked.contains(p));
        let wait = if progress {
            RECORDS_REQUEST_EVERY
        } else {
            (self.records_backoff * 2).clamp(RECORDS_REQUEST_EVERY, RECORDS_BACKOFF_MAX)
        };
        let gap = if progress {
            RECORDS_REQUEST_EVERY
        } else {
            self.records_backoff
        };
        if now < self.records_last_request + gap {
            return;
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        // Who holds the records for sure, asked first: a missing member
        // this peer is connected to (its own record), and the bootstrap
        // peer it joined through, whose member list SWIM's join just
        // copied (so its records cover most of what is missing). A
        // neighbour holds only what reached its part of the mesh: asked
        // alone, a newcomer of a large mesh learns the records of its own
        // corner, picks its active view there, and the mesh grows as
        // islands that never learn each other's records.
        let holders: Vec<PeerId> = connected
            .iter()
            .filter(|p| missing.contains(p) || self.joined_through.contains(p))
            .copied()
            .collect();
        let alive: Vec<PeerId> = match &self.swim {
            Some(s) => {
                let view = s.view.borrow();
                connected
                    .iter()
                    .filter(|p| matches!(view.members.get(p), Some(SwimStatus::Alive)))
                    .copied()
                    .collect()
            }
            None => Vec::new(),
        };
        // One of each: a holder (when there is one) and a random connected
        // neighbour SWIM holds alive (a newcomer's bootstrap peer may be
        // new itself; any member holds what it announced and learned).
        let mut rng = rand::thread_rng();
        let mut ask: Vec<PeerId> = holders.choose(&mut rng).copied().into_iter().collect();
        let pool = if alive.is_empty() { &connected } else { &alive };
        if let Some(p) = pool.choose(&mut rng).copied()
            && !ask.contains(&p)
        {
            ask.push(p);
        }
        if ask.is_empty() {
            return;
        }
        self.records_missing = true;
        self.records_backoff = wait;
        self.records_taken = 0;
        self.records_asked = missing.iter().take(MAX_WANT).copied().collect();
        self.records_last_request = now;
        let want: Vec<String> = missing
            .iter()
            .take(MAX_WANT)
            .map(|id| id.to_string())
            .collect();
        for from in ask {
            tracing::debug!(%from, missing = missing.len(), "asking for members' records");
            self.swarm.behaviour_mut().members.send_request(
                &from,
                MembersRequest {
                    v: 1,
                    want: want.clone(),
                },
            );
        }
    }

    /// After membership changed: the active view is refreshed, its
    /// neighbour streams held, and the address book given the members'
    /// addresses (for dials by peer id: SWIM probes, jobs).
    /// Derives from the table what copies it: the active view and its
    /// neighbour streams, the address book, the published view.
    fn derive_view(&mut self) {
        if self.view_stale {
            self.after_change();
        }
        self.view_stale = false;
        self.view_soft_stale = false;
        self.view_derived = now();
        self.publish_view();
    }

    fn after_change(&mut self) {
        self.membership.refresh_active();
        self.hold_neighbors();
        let book = self.membership.address_book();
        self.swarm.behaviour_mut().reach.set(book);
        // New members of the active view are dialled now: left to the next
        // housekeeping round, a newcomer's first neighbours waited up to a
        // second, and until it has some its own arrival reaches nobody but
        // its bootstrap peer (SWIM talks to connected peers only).
        for dial in self.membership.dial_active(now()) {
            self.dial(dial);
        }
    }

    /// Holds a neighbour stream to each connected member of the active
    /// view (dials for the rest are membership's).
    fn hold_neighbors(&mut self) {
        let Some(neighbors) = &mut self.neighbors else {
            return;
        };
        let connected: Vec<PeerId> = self
            .membership
            .active()
            .iter()
            .filter(|p| self.swarm.is_connected(p))
            .copied()
            .collect();
        neighbors.hold(&connected);
    }

    /// Closes connections nothing uses: not to a member of the active
    /// view, no neighbour stream from the other side (its active view), no
    /// job stream either way, and up for longer than [`CONNECTION_GRACE`]
    /// (a probe's or a record fetch's connection lives that long). This
    /// is what bounds a peer's connections, whatever the size of the mesh.
    fn trim_connections(&mut self, now: Instant) {
        let idle: Vec<PeerId> = self
            .connected_at
            .iter()
            .filter(|(p, since)| {
                now.duration_since(**since) >= CONNECTION_GRACE
                    && !self.membership.is_active(p)
                    && !self.usage.in_use(p)
            })
            .map(|(p, _)| *p)
            .collect();
        for peer in idle {
            tracing::debug!(%peer, "closing an unused connection");
            self.connected_at.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
        }
    }

    /// Tells SWIM whom this peer is connected to: the members it talks to.
    fn tell_neighbours(&self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        self.tell_swim(Input::Neighbours(peers));
    }

    fn tell_swim(&self, input: Input) {
        if let Some(swim) = &self.swim {
            swim.tell(input);
        }
    }

    /// A dial failed: membership learns of it when it made the dial.
    fn on_dial_error(&mut self, peer: Option<PeerId>, error: &DialError, now: Instant) {
        let reason = describe_dial_error(error, self.private);
        match peer {
            // Not a dial membership made (those always carry addresses): a
            // job stream to a peer whose connection just closed. Membership
            // redials it on its own.
            Some(peer) if matches!(error, DialError::NoAddresses) => {
                tracing::debug!(%peer, "no connection to open a stream on: {reason}");
            }
            // This peer's own connection limits: nothing learned about the
            // other peer.
            Some(peer) if matches!(error, DialError::Denied { .. }) => {
                tracing::debug!(%peer, "dial not made: {reason}");
            }
            Some(peer) => {
                let was_up = self.membership.is_up(&peer);
                if is_refusal(error) {
                    self.membership.on_dial_failed(peer, now);
                } else {
                    self.membership.on_dial_inconclusive(peer, now);
                }
                if was_up || is_handshake_failure(&reason) {
                    tracing::warn!(%peer, "cannot connect: {reason}");
                } else {
                    tracing::debug!(%peer, "cannot connect: {reason}");
                }
            }
            None => tracing::warn!("cannot connect to bootstrap peer: {reason}"),
        }
    }

    fn on_gossip(&mut self, event: gossipsub::Event) {
        match event {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                // The author is the one the record names; its signature is
                // checked before anything is taken (`on_announce_bytes`).
                let acceptance = if message.topic != self.topic.hash() {
                    MessageAcceptance::Ignore
                } else {
                    match crate::mesh::membership::record_author(&message.data) {
                        Err(e) => self.refused_announcement(None, propagation_source, &e),
                        Ok(author) if !self.announce_budget.allow(&author, now()) => {
                            tracing::debug!(from = %propagation_source, "dropped an announcement over its author's rate");
                            MessageAcceptance::Ignore
                        }
                        Ok(author) => {
                            match self
                                .membership
                                .on_announce_bytes(author, &message.data, now())
                            {
                                Ok((dial, desired)) => {
                                    if let Some(dial) = dial {
                                        self.dial(dial);
                                    }
                                    self.merge_decisions(desired, propagation_source);
                                    tracing::debug!(%author, from = %propagation_source, "announcement taken");
                                    MessageAcceptance::Accept
                                }
                                Err(e) => {
                                    self.refused_announcement(Some(author), propagation_source, &e)
                                }
                            }
                        }
                    }
                };
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&message_id, &propagation_source, acceptance);
            }
            gossipsub::Event::Subscribed { topic, .. }
                if topic == self.topic.hash() && self.last_content.is_none() =>
            {
                // The first neighbour of a peer that could not publish yet
                // (nobody listened): its announcement goes out now. Others
                // do not announce again for a newcomer: it fetches the
                // records it lacks (see `Self::fetch_missing_records`).
                self.announce(false);
            }
            _ => {}
        }
    }

    /// Merges the decisions an announcement carries, each checked against
    /// this peer's own admins whoever relayed it. Refusals are counted and
    /// logged once per decision (it comes again in every announcement).
    fn merge_decisions(&mut self, decisions: Vec<DesiredApp>, relayed_by: PeerId) {
        let now = unix_ms();
        let mut changed = false;
        for d in decisions
            .into_iter()
            .take(crate::mesh::desired::MAX_DESIRED)
        {
            match self.desired.merge(d.clone(), &self.admins, now) {
                Ok(c) => changed |= c,
                Err(refusal) => {
                    refused(refusal);
                    tracing::warn!(app = %d.app, origin = %d.origin, clock = d.clock, relayed_by = %relayed_by, "refused a decision from the mesh: {refusal}");
                }
            }
        }
        if changed {
            self.desired_tx.send_replace(Arc::new(self.desired.clone()));
        }
    }

    /// What gossipsub is told about an announcement membership refused.
    ///
    /// `Reject` lowers the score of the peer that relayed it (see
    /// `behaviour.rs`), so it is kept for what every honest peer refuses
    /// alike: malformed JSON, another peer's id. A peer must not be
    /// punished for relaying what only this peer's state or policy turns
    /// down (a full table, a format it does not know yet): those are
    /// `Ignore`d, neither forwarded nor held against anyone.
    fn refused_announcement(
        &mut self,
        author: Option<PeerId>,
        relay: PeerId,
        e: &AnnounceError,
    ) -> MessageAcceptance {
        if e.is_invalid() {
            tracing::warn!(?author, %relay, "rejected announcement: {e}");
            MessageAcceptance::Reject
        } else {
            // Counted by membership; summed up in the log by `log_refusals`.
            tracing::debug!(?author, %relay, "ignored announcement: {e}");
            MessageAcceptance::Ignore
        }
    }

    /// Logs what membership refused since the last call (at most every
    /// [`REFUSAL_LOG_EVERY`]): under a flood, one line instead of one per
    /// message.
    fn log_refusals(&mut self, now: Instant) {
        if now < self.next_refusal_log {
            return;
        }
        self.next_refusal_log = now + REFUSAL_LOG_EVERY;
        let totals: Vec<(MemberRefusal, u64)> = self.membership.refusals().collect();
        let new: Vec<String> = totals
            .iter()
            .zip(&self.refusals_logged)
            .filter(|((_, n), before)| n > before)
            .map(|((r, n), before)| format!("{} {}", n - before, r.as_str()))
            .collect();
        if !new.is_empty() {
            let (verified, unverified) = self.membership.sizes();
            tracing::warn!(
                verified,
                unverified,
                "membership refused: {} (peers never connected are bounded; see disruptor_membership_refused_total)",
                new.join(", ")
            );
        }
        for (slot, (_, n)) in self.refusals_logged.iter_mut().zip(totals) {
            *slot = n;
        }
    }

    fn update_table_size(&self) {
        let (verified, unverified) = self.membership.sizes();
        for (kind, n) in [("verified", verified), ("unverified", unverified)] {
            super::TABLE_SIZE
                .get_or_create(&super::KindLabel { kind })
                .set(n as i64);
        }
    }

    /// Logs the connected peers whose gossip score crossed the graylist
    /// threshold, either way: what they send on gossip (their own
    /// announcements included) is dropped unread meanwhile, so they look
    /// silent, and the log says why.
    fn watch_scores(&mut self) {
        let gossip = &self.swarm.behaviour().gossipsub;
        let now: HashSet<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| gossip.peer_score(p).is_some_and(|s| s < GRAYLIST_THRESHOLD))
            .copied()
            .collect();
        for peer in now.difference(&self.graylisted) {
            let score = gossip.peer_score(peer).unwrap_or_default();
            tracing::warn!(%peer, score, "graylisted: this peer sent announcements no honest peer sends, so its gossip is dropped unread until its score recovers");
        }
        for peer in self.graylisted.difference(&now) {
            if self.swarm.is_connected(peer) {
                tracing::info!(%peer, "no longer graylisted: its gossip is read again");
            }
        }
        self.graylisted = now;
    }

    fn on_members(&mut self, event: request_response::Event<MembersRequest, MembersResponse>) {
        match event {
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        channel, request, ..
                    },
                ..
            } => {
                if !request.want.is_empty() {
                    let want: Vec<PeerId> = request
                        .want
                        .iter()
                        .take(MAX_WANT)
                        .filter_map(|id| id.parse().ok())
                        .collect();
                    let mut records = self.membership.records_of(&want, MAX_RECORD_BYTES);
                    if want.contains(&self.local)
                        && let Some(own) = &self.own_record
                    {
                        records.push(own.clone());
                    }
                    let records = records
                        .iter()
                        .map(|r| crate::mesh::record::to_hex(r))
                        .collect();
                    let _ = self.swarm.behaviour_mut().members.send_response(
                        channel,
                        MembersResponse {
                            peers: Vec::new(),
                            records,
                        },
                    );
                    return;
                }
                let peers = self
                    .membership
                    .up_peers()
                    .into_iter()
                    .filter(|(id, _)| *id != peer)
                    .take(MAX_MEMBERS_IN_ANSWER)
                    .map(|(id, addrs)| MemberHint {
                        id: id.to_string(),
                        addrs: addrs.iter().map(|a| a.to_string()).collect(),
                    })
                    .collect();
                let _ = self.swarm.behaviour_mut().members.send_response(
                    channel,
                    MembersResponse {
                        peers,
                        records: Vec::new(),
                    },
                );
            }
            request_response::Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => {
                let now = now();
                tracing::debug!(from = %peer, count = response.peers.len(), records = response.records.len(), "member list received");
                let mut relayed = 0;
                for hex in response.records.iter().take(MAX_WANT) {
                    let Some(data) = crate::mesh::record::from_hex(hex) else {
                        continue;
                    };
                    let author = crate::mesh::membership::record_author(&data).ok();
                    let held = author.and_then(|a| self.membership.held_incarnation(&a));
                    match self.membership.on_record(&data, now) {
                        Ok((dial, desired)) => {
                            self.records_taken += 1;
                            // A newcomer's record, fetched because its own
                            // announcement did not reach this peer: passed
                            // on (see `Membership::relay_fetched`), a few
                            // per answer at most.
                            if let Some(author) = author
                                && relayed < RELAY_PER_ANSWER
                                && self.membership.relay_fetched(
                                    &author,
                                    held,
                                    self.incarnation,
                                    unix_ms(),
                                )
                            {
                                relayed += 1;
                                self.relay_record(author, data);
                            }
                            if let Some(dial) = dial {
                                self.dial(dial);
                            }
                            self.merge_decisions(desired, peer);
                        }
                        Err(e) => tracing::debug!(from = %peer, "record not taken: {e}"),
                    }
                }
                for hint in response.peers.into_iter().take(MAX_MEMBERS_IN_ANSWER) {
                    let Ok(id) = hint.id.parse::<PeerId>() else {
                        continue;
                    };
                    let addrs: Vec<Multiaddr> = hint
                        .addrs
                        .iter()
                        .filter_map(|a| a.parse::<Multiaddr>().ok())
                        .map(|a| strip_p2p(&a))
                        .collect();
                    if let Some(dial) = self.membership.on_hint(id, addrs, now) {
                        self.dial(dial);
                    }
                }
            }
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "member list request failed: {error}");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, "member list answer failed: {error}");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}

/// Whether `next` differs from `last` in its links alone, and `last` had
/// links already: such a change waits for [`LINKS_EVERY`]. A peer's first
/// links (its active view, once picked) go out at once: the announcement
/// that carries them is the one that reaches the mesh widely (the first,
/// at its start, reached its bootstrap peer's corner of the mesh).
fn links_only(last: &Announce, next: &Announce) -> bool {
    !last.links.is_empty()
        && last.links != next.links
        && Announce {
            links: Vec::new(),
            ..last.clone()
        } == Announce {
            links: Vec::new(),
            ..next.clone()
        }
}

/// The announcement's bytes, within one gossip message. Error texts are
/// for people: they are kept short, and dropped altogether if the message
/// would not fit; `None` if even then it does not (logged).
fn encode_announcement(mut a: Announce) -> Option<Vec<u8>> {
    for s in &mut a.apps {
        if let Some(e) = &mut s.error {
            crate::text::truncate(e, 160);
        }
    }
    // The signature goes in front (see `mesh::record`).
    let max = MAX_GOSSIP_BYTES - crate::mesh::record::SIG_LEN;
    let mut data = serde_json::to_vec(&a).expect("announcements serialize");
    if data.len() > max {
        a.apps.iter_mut().for_each(|s| s.error = None);
        data = serde_json::to_vec(&a).expect("announcements serialize");
    }
    if data.len() > max {
        tracing::warn!(
            bytes = data.len(),
            max = MAX_GOSSIP_BYTES,
            apps = a.apps.len(),
            decisions = a.desired.len(),
            "announcement too large to publish; the mesh will not see this peer's apps"
        );
        return None;
    }
    Some(data)
}

/// Counts a refused decision in `/metrics`.
/// How long a connection nothing uses is kept after it came up.
const CONNECTION_GRACE: Duration = Duration::from_secs(10);

/// Records asked for in one member-list request, at most.
const MAX_WANT: usize = 256;
/// Bytes of records in one answer, at most (the rest are asked again).
const MAX_RECORD_BYTES: usize = 1 << 20;
/// Records passed on to the gossip mesh per member-list answer, at most
/// (see [`Membership::relay_fetched`]).
const RELAY_PER_ANSWER: usize = 4;
/// Shortest gap between two requests for missing records.
const RECORDS_REQUEST_EVERY: Duration = Duration::from_millis(250);
/// Longest gap between two requests while records stay missing.
const RECORDS_BACKOFF_MAX: Duration = Duration::from_secs(8);

/// How long an unchanged announcement goes unrepeated: the announce
/// interval per 8 peers of the mesh (at least one), so a peer receives
/// about 8 announcements per announce interval (4 a second by default)
/// from an idle mesh of any size. In a small mesh that keeps peers SWIM
/// does not vouch for yet heard from within `--down-after`; in any, each
/// repeat repairs what gossip lost.
fn refresh_interval(every: Duration, peers: usize) -> Duration {
    every * (peers as u32).div_ceil(8).max(1)
}

/// SWIM's parameters in the peer: memberlist's LAN profile, with the
/// suspicion timeout set by `--down-after`. A peer that stops answering is
/// probed by someone within about a probe interval (each peer probes one
/// member per interval), suspected at the end of that probe's interval,
/// and declared dead when the suspicion expires: so the minimum suspicion
/// is `down_after` less two probe intervals (at least one), times
/// `max(1, log10 N)`: a stopped peer of a small mesh is down about
/// `down_after` after it stopped, as before SWIM.
fn swim_config(timing: &Timing) -> crate::mesh::swim::Config {
    let cfg = crate::mesh::swim::Config::default();
    let mult = (timing.down_after.as_secs_f64() / cfg.probe_interval.as_secs_f64()).round() - 2.0;
    crate::mesh::swim::Config {
        suspicion_mult: (mult.max(1.0) as u32).max(1),
        max_members: MAX_PEERS,
        ..cfg
    }
}

fn refused(refusal: Refusal) {
    crate::obs::metrics::METRICS
        .decisions_refused
        .get_or_create(&crate::obs::metrics::ReasonLabel {
            reason: refusal.as_str(),
        })
        .inc();
}

/// The next multiple of `every` on the wall clock (unix time), as a tokio
/// instant.
///
/// Announcements and housekeeping rounds run on this grid, so every peer
/// announces at the same moments: a peer then takes its neighbours'
/// announcements in a burst, handled in a few wake-ups rather than one
/// each, and its own timers fire in the same wake-up. Clocks a few
/// milliseconds apart only widen the burst; a clock that jumps moves the
/// next tick once.
fn aligned_after(every: Duration) -> tokio::time::Instant {
    let every_ms = (every.as_millis() as u64).max(1);
    let wait = every_ms - unix_ms() % every_ms;
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

fn strip_p2p(addr: &Multiaddr) -> Multiaddr {
    addr.iter()
        .filter(|p| !matches!(p, Protocol::P2p(_)))
        .collect()
}

fn describe_dial_error(error: &DialError, private: bool) -> String {
    let text = match error {
        DialError::Transport(errors) => errors
            .iter()
            .map(|(addr, e)| format!("{addr}: {}", error_chain(e)))
            .collect::<Vec<_>>()
            .join("; "),
        other => error_chain(other),
    };
    let hint = handshake_hint(&text, private);
    format!("{text}{hint}")
}

/// Whether a dial failed because every address was refused (nothing
/// listens there: the kernel of a killed peer answers so at once), the
/// only failure that says the peer is gone. A timeout or a failed
/// handshake may be a live peer under load.
fn is_refusal(error: &DialError) -> bool {
    let DialError::Transport(errors) = error else {
        return false;
    };
    // The transport stack boxes its errors several times over (io errors
    // in `Either`s in io errors), and those wrappers' `source` skips the
    // wrapped error: what is left to read is the text, which carries the
    // innermost error's.
    !errors.is_empty()
        && errors.iter().all(|(_, e)| {
            let text = format!("{} {e:?}", error_chain(e));
            text.contains("ConnectionRefused")
                || text.contains("Connection refused")
                // The in-process meshes' memory transport: nobody listens.
                || text.contains("No listener on the given port")
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    if s.is_empty() {
        s = "connection failed".into();
    }
    let mut cur = e.source();
    while let Some(inner) = cur {
        let t = inner.to_string();
        if !t.is_empty() && !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = inner.source();
    }
    s
}

fn is_handshake_failure(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("timeout")
        || t.contains("timed out")
        || t.contains("handshake")
        || t.contains("negotiat")
}

fn handshake_hint(text: &str, private: bool) -> &'static str {
    if !is_handshake_failure(text) {
        ""
    } else if private {
        " (handshake failed: the other side is probably not in this private mesh, i.e. it uses a different pre-shared key or none)"
    } else {
        " (handshake failed: the other side may be a private mesh that requires a pre-shared key, see --psk-file)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Only a change of links after the first links waits for
    /// `LINKS_EVERY`; anything else that changed goes out at once.
    #[test]
    fn only_a_change_of_links_after_the_first_waits() {
        let base = Announce {
            v: ANNOUNCE_VERSION,
            id: PeerId::random().to_string(),
            incarnation: 1,
            seq: 0,
            listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
            http: Some("127.0.0.1:2".into()),
            labels: Vec::new(),
            leaving: false,
            apps: Vec::new(),
            desired: Vec::new(),
            links: Vec::new(),
            bundles: Vec::new(),
            remote_deploy: true,
        };
        let with = |links: &[&str]| Announce {
            links: links.iter().map(|l| l.to_string()).collect(),
            ..base.clone()
        };
        assert!(
            !links_only(&base, &with(&["aaaaaaaa"])),
            "the first links go out"
        );
        assert!(links_only(&with(&["aaaaaaaa"]), &with(&["bbbbbbbb"])));
        assert!(
            links_only(&with(&["aaaaaaaa"]), &base),
            "links dropped: waits too"
        );
        assert!(
            !links_only(&with(&["aaaaaaaa"]), &with(&["aaaaaaaa"])),
            "no change"
        );
        let moved = Announce {
            http: Some("127.0.0.1:3".into()),
            ..with(&["bbbbbbbb"])
        };
        assert!(
            !links_only(&with(&["aaaaaaaa"]), &moved),
            "and something else: at once"
        );
        let bundle = Announce {
            bundles: vec!["0".repeat(64)],
            ..with(&["aaaaaaaa"])
        };
        assert!(!links_only(&with(&["aaaaaaaa"]), &bundle));
    }

    /// Only a refusal on every address is taken as a death; a timeout, a
    /// failed handshake or a mix are doubts.
    #[test]
    fn only_a_refused_dial_is_conclusive() {
        use libp2p::TransportError;
        use std::io::{Error, ErrorKind};
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let err = |kind: ErrorKind| {
            (
                addr.clone(),
                TransportError::Other(Error::new(kind, "test")),
            )
        };
        let refused = DialError::Transport(vec![err(ErrorKind::ConnectionRefused)]);
        assert!(is_refusal(&refused));
        // Wrapped, as the upgrade layers do.
        let wrapped = DialError::Transport(vec![(
            addr.clone(),
            TransportError::Other(Error::other(Error::new(
                ErrorKind::ConnectionRefused,
                "inner",
            ))),
        )]);
        assert!(is_refusal(&wrapped));
        let timeout = DialError::Transport(vec![err(ErrorKind::TimedOut)]);
        assert!(!is_refusal(&timeout));
        let mixed = DialError::Transport(vec![
            err(ErrorKind::ConnectionRefused),
            err(ErrorKind::TimedOut),
        ]);
        assert!(!is_refusal(&mixed));
        assert!(!is_refusal(&DialError::Transport(vec![])));
        assert!(!is_refusal(&DialError::NoAddresses));
        // The memory transport's "nobody listens", boxed as the transport
        // stack boxes it.
        let memory = DialError::Transport(vec![(
            addr.clone(),
            TransportError::Other(Error::other(
                libp2p::core::transport::memory::MemoryTransportError::Unreachable,
            )),
        )]);
        assert!(is_refusal(&memory));
    }

    /// What a peer receives from an idle mesh stays at 8 announcements
    /// per announce interval, whatever the size.
    #[test]
    fn refreshes_thin_out_with_the_size_of_the_mesh() {
        let every = Duration::from_secs(2);
        assert_eq!(refresh_interval(every, 0), every);
        assert_eq!(refresh_interval(every, 8), every);
        assert_eq!(refresh_interval(every, 9), every * 2);
        assert_eq!(refresh_interval(every, 150), every * 19);
        for n in [1usize, 20, 150, 4096] {
            let per_interval =
                n as f64 * every.as_secs_f64() / refresh_interval(every, n).as_secs_f64();
            assert!(per_interval <= 8.0, "{n}: {per_interval}");
        }
    }

    #[test]
    fn swim_suspicion_follows_down_after() {
        let timing = |s| Timing {
            down_after: Duration::from_secs(s),
            ..Timing::default()
        };
        assert_eq!(swim_config(&timing(4)).suspicion_mult, 2);
        assert_eq!(swim_config(&timing(10)).suspicion_mult, 8);
        assert_eq!(
            swim_config(&timing(1)).suspicion_mult,
            1,
            "at least one interval"
        );
    }
}
