//! The membership table: which peers exist, which are up, and when to dial.
//!
//! This module is pure bookkeeping, without I/O: the network event loop
//! feeds it events (announcements, connections, dial failures, clock ticks)
//! and carries out the dials it asks for. That keeps the rules below unit
//! testable and in one place.
//!
//! # Rules
//! - A peer is **up** when this peer holds a live connection to it *and* it
//!   announced itself within `down_after` *and* its latest announcement was
//!   not a goodbye.
//! - It goes **down** with a reason:
//!   - `left`: it announced that it is leaving (graceful stop);
//!   - `unreachable`: its last connection closed and a redial failed (a
//!     SIGKILLed peer lands here within milliseconds: the kernel closes its
//!     sockets and the redial is refused);
//!   - `silent`: no announcement for `down_after` (a hung process, a
//!     partition that keeps TCP open).
//! - A peer that is down is redialled with capped exponential backoff, so a
//!   restarted peer is found again without help, and forgotten after
//!   `forget_after`.
//! - Announcements carry `(incarnation, seq)`; older ones are ignored. A
//!   restart starts a new incarnation (its start time), so a peer that left
//!   can come back.
//! - Peers heard of (through another peer's table) but never connected are
//!   `joining` and hidden from the API until they are up or a dial failed.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::config::Timing;
use crate::desired::DesiredApp;
use crate::worker::AppStatus;

/// Version of the announcement format. Unknown fields are ignored, so later
/// versions may add fields (apps, load) without breaking older peers.
pub const ANNOUNCE_VERSION: u32 = 1;
/// Limits on what a peer accepts from others (a rogue peer must not be able
/// to grow our memory without bound).
pub const MAX_ADDRS_PER_PEER: usize = 16;
pub const MAX_PEERS: usize = 4096;
const MAX_HTTP_LEN: usize = 256;

const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(500);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// What a peer publishes about itself on the membership topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Announce {
    pub v: u32,
    /// The announcing peer's id; must equal the (signed) gossipsub source.
    pub id: String,
    /// Unix ms at which this run of the peer started; grows across restarts.
    pub incarnation: u64,
    /// Counter within an incarnation.
    pub seq: u64,
    pub listen: Vec<String>,
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub leaving: bool,
    /// The apps this peer has been asked to run, and how they are doing.
    #[serde(default)]
    pub apps: Vec<AppStatus>,
    /// The mesh's start/stop decisions as this peer knows them.
    #[serde(default)]
    pub desired: Vec<DesiredApp>,
    /// The peers it is connected to, by [`short_id`] (for the dashboard's
    /// picture of the mesh; short, since every announcement carries them).
    #[serde(default)]
    pub links: Vec<String>,
    /// Hashes of the app bundles it holds and serves to others.
    #[serde(default)]
    pub bundles: Vec<String>,
    /// Whether it installs deployed bundles (false: `--no-remote-deploy`).
    #[serde(default = "yes")]
    pub remote_deploy: bool,
}

/// serde default for flags that are on unless said otherwise.
pub(crate) fn yes() -> bool {
    true
}

/// Bundles listed in an announcement, at most.
pub const MAX_BUNDLES: usize = 64;

/// Peers listed in an announcement's `links`, at most.
pub const MAX_LINKS: usize = 256;

/// The last 8 characters of a peer id: what announcements carry in `links`.
pub fn short_id(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownReason {
    Left,
    Unreachable,
    Silent,
}

impl DownReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::Left => "left",
            DownReason::Unreachable => "unreachable",
            DownReason::Silent => "silent",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Joining,
    Up,
    Down(DownReason),
}

/// One row of `/api/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    pub id: String,
    /// The parsed id (not part of the JSON).
    #[serde(skip)]
    pub peer: Option<PeerId>,
    /// "up" or "down".
    pub state: String,
    /// Why it is down: "left", "unreachable" or "silent"; null when up.
    pub reason: Option<String>,
    pub addrs: Vec<String>,
    pub http: Option<String>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Unix ms at which it entered its current state.
    pub since_ms: u64,
    /// Unix ms at which the peer's current run started (its incarnation).
    pub started_ms: Option<u64>,
    pub rtt_ms: Option<f64>,
    pub connected: bool,
    /// Apps as the peer last announced them.
    #[serde(default)]
    pub apps: Vec<AppStatus>,
    /// Full ids of the peers it announced it is connected to (those this
    /// peer knows, itself included).
    #[serde(default)]
    pub links: Vec<String>,
    /// Hashes of the app bundles it holds.
    #[serde(default)]
    pub bundles: Vec<String>,
    /// Whether it installs deployed bundles.
    #[serde(default = "yes")]
    pub remote_deploy: bool,
}

#[derive(Debug)]
struct Entry {
    /// The peer id in text form, cached: base58 encoding showed up in
    /// profiles of an idle 20-peer mesh.
    id: String,
    addrs: Vec<Multiaddr>,
    http: Option<String>,
    state: State,
    state_since: Instant,
    state_since_ms: u64,
    first_seen_ms: u64,
    last_seen_ms: u64,
    last_heard: Option<Instant>,
    version: Option<(u64, u64)>,
    left_incarnation: Option<u64>,
    rtt: Option<Duration>,
    connections: u32,
    next_dial: Instant,
    backoff: Duration,
    apps: Vec<AppStatus>,
    links: Vec<String>,
    bundles: Vec<String>,
    remote_deploy: bool,
}

impl Entry {
    fn new(id: PeerId, now: Instant) -> Self {
        let ms = unix_ms();
        Entry {
            id: id.to_string(),
            addrs: Vec::new(),
            http: None,
            state: State::Joining,
            state_since: now,
            state_since_ms: ms,
            first_seen_ms: ms,
            last_seen_ms: ms,
            last_heard: None,
            version: None,
            left_incarnation: None,
            rtt: None,
            connections: 0,
            next_dial: now,
            backoff: DIAL_BACKOFF_MIN,
            apps: Vec::new(),
            links: Vec::new(),
            bundles: Vec::new(),
            remote_deploy: true,
        }
    }

    fn merge_addrs(&mut self, addrs: impl IntoIterator<Item = Multiaddr>) {
        for a in addrs {
            if !self.addrs.contains(&a) {
                if self.addrs.len() >= MAX_ADDRS_PER_PEER {
                    self.addrs.remove(0);
                }
                self.addrs.push(a);
            }
        }
    }

    fn heard_recently(&self, now: Instant, down_after: Duration) -> bool {
        self.last_heard
            .is_some_and(|t| now.saturating_duration_since(t) < down_after)
    }
}

/// Why an announcement was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    #[error("announcement is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    #[error("announcement claims id {claimed} but was signed by {source_id}")]
    WrongId { claimed: String, source_id: String },
    #[error("unsupported announcement version {0}")]
    Version(u32),
    #[error("membership table is full ({MAX_PEERS} peers)")]
    Full,
}

/// A dial the event loop should make.
#[derive(Debug, Clone, PartialEq)]
pub struct Dial {
    pub peer: PeerId,
    pub addrs: Vec<Multiaddr>,
}

pub struct Membership {
    local: PeerId,
    timing: Timing,
    peers: HashMap<PeerId, Entry>,
    /// The view must be republished now (a state, address or app changed).
    dirty: bool,
    /// The view should be republished soon (times changed).
    soft_dirty: bool,
    /// Peers that went silent while connected since the last
    /// [`Membership::take_silenced`]: their connections are to be closed.
    silenced: Vec<PeerId>,
    /// Announcements of others never taken (gaps in their numbers); also
    /// counted in `/metrics`.
    skipped: u64,
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Membership {
    pub fn new(local: PeerId, timing: Timing) -> Self {
        Membership {
            local,
            timing,
            peers: HashMap::new(),
            dirty: true,
            soft_dirty: false,
            silenced: Vec::new(),
            skipped: 0,
        }
    }

    /// Parses and applies an announcement published by `source`.
    /// Returns a dial to make, if the peer is not connected.
    pub fn on_announce_bytes(
        &mut self,
        source: PeerId,
        data: &[u8],
        now: Instant,
    ) -> Result<(Option<Dial>, Vec<DesiredApp>), AnnounceError> {
        let a: Announce =
            serde_json::from_slice(data).map_err(|e| AnnounceError::Malformed(e.to_string()))?;
        if a.v != ANNOUNCE_VERSION {
            return Err(AnnounceError::Version(a.v));
        }
        let same_id = match self.peers.get(&source) {
            Some(e) => e.id == a.id,
            None => a.id == source.to_string(),
        };
        if !same_id {
            return Err(AnnounceError::WrongId {
                claimed: a.id,
                source_id: source.to_string(),
            });
        }
        let dial = self.on_announce(source, &a, now)?;
        Ok((dial, a.desired))
    }

    pub fn on_announce(
        &mut self,
        source: PeerId,
        a: &Announce,
        now: Instant,
    ) -> Result<Option<Dial>, AnnounceError> {
        if source == self.local {
            return Ok(None);
        }
        if !self.peers.contains_key(&source) && self.peers.len() >= MAX_PEERS {
            return Err(AnnounceError::Full);
        }
        let down_after = self.timing.down_after;
        let e = self
            .peers
            .entry(source)
            .or_insert_with(|| Entry::new(source, now));
        let version = (a.incarnation, a.seq);
        if e.version.is_some_and(|v| v >= version) {
            return Ok(None); // stale or duplicate
        }
        if let Some((incarnation, seq)) = e.version
            && incarnation == a.incarnation
            && a.seq > seq + 1
        {
            // Authors number the announcements they publish without gaps.
            tracing::debug!(peer = %source, after = seq, got = a.seq, "announcements skipped");
            self.skipped += a.seq - seq - 1;
            crate::metrics::METRICS
                .announcements_skipped
                .inc_by(a.seq - seq - 1);
        }
        if e.left_incarnation == Some(a.incarnation) && !a.leaving {
            return Ok(None); // a delayed message from a run that already said goodbye
        }
        e.version = Some(version);
        e.last_heard = Some(now);
        e.last_seen_ms = unix_ms();
        let addrs_before = e.addrs.len();
        e.merge_addrs(a.listen.iter().filter_map(|s| s.parse::<Multiaddr>().ok()));
        let http = a.http.as_ref().filter(|h| h.len() <= MAX_HTTP_LEN).cloned();
        let apps: Vec<AppStatus> = if a.leaving {
            Vec::new()
        } else {
            a.apps
                .iter()
                .take(crate::desired::MAX_DESIRED)
                .cloned()
                .collect()
        };
        // Most announcements only say "still here": those refresh the view
        // lazily; anything that may change what the view shows, at once.
        let routine = !a.leaving
            && e.state == State::Up
            && e.connections > 0
            && e.addrs.len() == addrs_before
            && e.http == http
            && e.apps == apps;
        e.http = http;
        e.apps = apps;
        let links: Vec<String> = a
            .links
            .iter()
            .take(MAX_LINKS)
            .filter(|l| l.len() <= 8)
            .cloned()
            .collect();
        if e.links != links {
            e.links = links;
            self.soft_dirty = true;
        }
        let bundles: Vec<String> = a
            .bundles
            .iter()
            .take(MAX_BUNDLES)
            .filter(|h| h.len() == 64)
            .cloned()
            .collect();
        if e.bundles != bundles || e.remote_deploy != a.remote_deploy {
            e.bundles = bundles;
            e.remote_deploy = a.remote_deploy;
            self.dirty = true;
        }
        if routine {
            self.soft_dirty = true;
        } else {
            self.dirty = true;
        }

        if a.leaving {
            e.left_incarnation = Some(a.incarnation);
            set_state(source, e, State::Down(DownReason::Left), now);
            return Ok(None);
        }
        if e.connections > 0 {
            if e.heard_recently(now, down_after) {
                set_state(source, e, State::Up, now);
            }
            return Ok(None);
        }
        match e.state {
            // Connection lost, redial in flight: keep it up until that fails.
            State::Up => Ok(None),
            // A new incarnation of a peer that left: try it right away.
            State::Down(DownReason::Left) | State::Joining => {
                e.next_dial = now;
                Ok(self.take_dial_if_due(source, now))
            }
            State::Down(_) => Ok(self.take_dial_if_due(source, now)),
        }
    }

    /// Addresses of a peer learned second-hand (another peer's table, identify).
    /// Creates a `joining` entry for an unknown peer and asks for a dial.
    pub fn on_hint(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) -> Option<Dial> {
        if peer == self.local || addrs.is_empty() {
            return None;
        }
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEERS {
            return None;
        }
        let e = self
            .peers
            .entry(peer)
            .or_insert_with(|| Entry::new(peer, now));
        e.merge_addrs(addrs.into_iter().take(MAX_ADDRS_PER_PEER));
        if e.connections == 0 && e.state == State::Joining {
            return self.take_dial_if_due(peer, now);
        }
        None
    }

    /// Adds addresses for a peer we already know (identify); unknown peers
    /// wait for their announcement.
    pub fn on_identify(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if let Some(e) = self.peers.get_mut(&peer) {
            e.merge_addrs(addrs.into_iter().take(MAX_ADDRS_PER_PEER));
        }
    }

    pub fn on_connected(&mut self, peer: PeerId, addr: Option<Multiaddr>, now: Instant) {
        if peer == self.local {
            return;
        }
        let down_after = self.timing.down_after;
        let Some(e) = self.peers.get_mut(&peer) else {
            // Not known yet: its announcement will follow (we announce on every
            // new subscription). Remember the connection count only.
            if self.peers.len() < MAX_PEERS {
                let mut e = Entry::new(peer, now);
                e.connections = 1;
                e.merge_addrs(addr);
                self.peers.insert(peer, e);
            }
            return;
        };
        e.connections += 1;
        e.backoff = DIAL_BACKOFF_MIN;
        e.last_seen_ms = unix_ms();
        e.merge_addrs(addr);
        let left = e.left_incarnation.is_some() && e.left_incarnation == e.version.map(|v| v.0);
        if !left && e.heard_recently(now, down_after) {
            set_state(peer, e, State::Up, now);
        }
        self.dirty = true;
    }

    /// The last-but-`remaining` connection to `peer` closed. Returns a dial
    /// when the peer was up: a quick redial tells a dead peer (refused) from
    /// a dropped connection (succeeds).
    pub fn on_disconnected(&mut self, peer: PeerId, remaining: u32, now: Instant) -> Option<Dial> {
        let e = self.peers.get_mut(&peer)?;
        e.connections = remaining;
        e.rtt = if remaining == 0 { None } else { e.rtt };
        self.dirty = true;
        if remaining == 0 && e.version.is_none() && e.addrs.is_empty() {
            // A connection that never announced anything and left no way to
            // reach it back: nothing worth a table slot.
            self.peers.remove(&peer);
            return None;
        }
        if remaining == 0 && matches!(e.state, State::Up | State::Joining) {
            e.next_dial = now;
            return self.take_dial_if_due(peer, now);
        }
        None
    }

    /// A dial to `peer` failed (refused, timed out, handshake failed).
    pub fn on_dial_failed(&mut self, peer: PeerId, now: Instant) {
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        if e.connections == 0 && matches!(e.state, State::Up | State::Joining) {
            set_state(peer, e, State::Down(DownReason::Unreachable), now);
            self.dirty = true;
        }
    }

    /// A ping answered: the peer is alive and reachable, which counts as
    /// hearing from it (once it has announced itself at all). Pings are
    /// cheap and point to point; announcements are signed and gossiped to
    /// everyone, so they can be rarer while pings keep detection fast.
    pub fn on_rtt(&mut self, peer: PeerId, rtt: Duration, now: Instant) {
        if let Some(e) = self.peers.get_mut(&peer) {
            e.rtt = Some(rtt);
            if e.version.is_some() && e.state == State::Up {
                e.last_heard = Some(now);
            }
            self.soft_dirty = true;
        }
    }

    /// Periodic housekeeping: silent peers go down, long-down peers are
    /// forgotten, due redials are returned.
    pub fn tick(&mut self, now: Instant) -> Vec<Dial> {
        let Timing {
            down_after,
            forget_after,
            ..
        } = self.timing;
        let mut forget = Vec::new();
        for (id, e) in self.peers.iter_mut() {
            match e.state {
                State::Up if !e.heard_recently(now, down_after) => {
                    set_state(*id, e, State::Down(DownReason::Silent), now);
                    self.dirty = true;
                    if e.connections > 0 {
                        self.silenced.push(*id);
                    }
                }
                State::Down(_) if now.saturating_duration_since(e.state_since) >= forget_after => {
                    forget.push(*id);
                }
                // A connection that never produced an announcement.
                State::Joining if now.saturating_duration_since(e.state_since) >= forget_after => {
                    forget.push(*id);
                }
                _ => {}
            }
        }
        for id in forget {
            tracing::info!(peer = %id, "forgetting peer that has been down for {:?}", forget_after);
            self.peers.remove(&id);
            self.dirty = true;
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.connections == 0 && !e.addrs.is_empty() && e.next_dial <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.take_dial_if_due(id, now))
            .collect()
    }

    /// When [`Membership::tick`] next has something to do: a peer's
    /// silence reaching `down_after`, a down peer to forget, a redial due.
    /// O(peers); the caller asks once per round, not per event.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let Timing {
            down_after,
            forget_after,
            ..
        } = self.timing;
        self.peers
            .values()
            .flat_map(|e| {
                let state = match e.state {
                    State::Up => e.last_heard.map_or(now, |t| t + down_after),
                    State::Down(_) | State::Joining => e.state_since + forget_after,
                };
                let dial = (e.connections == 0 && !e.addrs.is_empty()).then_some(e.next_dial);
                std::iter::once(state).chain(dial)
            })
            .min()
    }

    /// Peers that went silent with a connection still open. The caller
    /// closes those connections: a link that carries nothing must not hold
    /// jobs (closing it fails them over at once), and a peer behind a cut
    /// cable is then redialled afresh instead of waiting on TCP's
    /// retransmission backoff of the old connection, which grows with the
    /// length of the cut.
    pub fn take_silenced(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.silenced)
    }

    fn take_dial_if_due(&mut self, peer: PeerId, now: Instant) -> Option<Dial> {
        let e = self.peers.get_mut(&peer)?;
        if e.connections > 0 || e.addrs.is_empty() || e.next_dial > now {
            return None;
        }
        e.next_dial = now + e.backoff;
        e.backoff = (e.backoff * 2).min(DIAL_BACKOFF_MAX);
        Some(Dial {
            peer,
            addrs: e.addrs.clone(),
        })
    }

    /// Peers that are up, with their addresses: what we tell a newcomer.
    pub fn up_peers(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.peers
            .iter()
            .filter(|(_, e)| e.state == State::Up)
            .map(|(id, e)| (*id, e.addrs.clone()))
            .collect()
    }

    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|e| e.state == State::Up)
    }

    pub fn connected_count(&self) -> usize {
        self.peers.values().filter(|e| e.connections > 0).count()
    }

    /// Returns true once after any change since the last call.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// True once after changes that need not be shown at once (last seen
    /// times, ping times), or any change at all.
    pub fn take_any_dirty(&mut self) -> bool {
        let any = self.dirty || self.soft_dirty;
        self.dirty = false;
        self.soft_dirty = false;
        any
    }

    pub fn views(&self) -> Vec<PeerView> {
        let local = self.local.to_string();
        let mut by_short: HashMap<&str, &str> = self
            .peers
            .values()
            .map(|e| (short_id(&e.id), e.id.as_str()))
            .collect();
        by_short.insert(short_id(&local), &local);
        let mut v: Vec<PeerView> = self
            .peers
            .iter()
            .filter(|(_, e)| e.state != State::Joining)
            .map(|(peer, e)| {
                let (state, reason) = match e.state {
                    State::Up => ("up", None),
                    State::Down(r) => ("down", Some(r)),
                    State::Joining => unreachable!("filtered above"),
                };
                PeerView {
                    id: e.id.clone(),
                    peer: Some(*peer),
                    state: state.to_string(),
                    reason: reason.map(|r| {
                        serde_json::to_value(r)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default()
                    }),
                    addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                    http: e.http.clone(),
                    first_seen_ms: e.first_seen_ms,
                    last_seen_ms: e.last_seen_ms,
                    since_ms: e.state_since_ms,
                    started_ms: e.version.map(|(inc, _)| inc),
                    rtt_ms: e.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                    connected: e.connections > 0,
                    apps: e.apps.clone(),
                    links: e
                        .links
                        .iter()
                        .filter_map(|l| by_short.get(l.as_str()).map(|id| id.to_string()))
                        .collect(),
                    bundles: e.bundles.clone(),
                    remote_deploy: e.remote_deploy,
                }
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

fn set_state(id: PeerId, e: &mut Entry, state: State, now: Instant) {
    if e.state == state {
        return;
    }
    match state {
        State::Up => tracing::info!(peer = %id, "peer is up"),
        State::Down(reason) => {
            tracing::info!(peer = %id, ?reason, "peer is down");
            if e.state == State::Up {
                crate::metrics::METRICS
                    .peer_downs
                    .get_or_create(&crate::metrics::ReasonLabel {
                        reason: reason.as_str(),
                    })
                    .inc();
            }
        }
        State::Joining => {}
    }
    e.state = state;
    e.state_since = now;
    e.state_since_ms = unix_ms();
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn timing() -> Timing {
        Timing {
            announce_interval: Duration::from_secs(1),
            down_after: Duration::from_secs(4),
            forget_after: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(4),
        }
    }

    fn announce(id: PeerId, inc: u64, seq: u64, leaving: bool) -> Announce {
        Announce {
            v: ANNOUNCE_VERSION,
            id: id.to_string(),
            incarnation: inc,
            seq,
            listen: vec!["/ip4/127.0.0.1/tcp/4001".into()],
            http: Some("127.0.0.1:8001".into()),
            leaving,
            apps: Vec::new(),
            links: Vec::new(),
            bundles: Vec::new(),
            remote_deploy: true,
            desired: Vec::new(),
        }
    }

    fn state_of(m: &Membership, p: PeerId) -> Option<(String, Option<String>)> {
        m.views()
            .into_iter()
            .find(|v| v.id == p.to_string())
            .map(|v| (v.state, v.reason))
    }

    fn up() -> Option<(String, Option<String>)> {
        Some(("up".into(), None))
    }
    fn down(r: &str) -> Option<(String, Option<String>)> {
        Some(("down".into(), Some(r.into())))
    }

    #[test]
    fn announce_then_connect_is_up_and_kill_is_unreachable() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        let dial = m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        assert_eq!(dial.unwrap().peer, p, "an unconnected announcer is dialled");
        assert_eq!(state_of(&m, p), None, "joining peers are hidden");
        m.on_connected(p, None, t0);
        assert_eq!(state_of(&m, p), up());
        // Its connection closes: redial at once, still up meanwhile.
        let redial = m.on_disconnected(p, 0, t0);
        assert!(redial.is_some());
        assert_eq!(state_of(&m, p), up());
        m.on_dial_failed(p, t0);
        assert_eq!(state_of(&m, p), down("unreachable"));
    }

    #[test]
    fn connect_then_announce_is_up() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        m.on_connected(p, None, t0);
        assert_eq!(state_of(&m, p), None);
        assert_eq!(
            m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap(),
            None
        );
        assert_eq!(state_of(&m, p), up());
    }

    #[test]
    fn gaps_in_an_authors_numbers_are_counted_once() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        m.on_connected(p, None, t0);
        for seq in [1, 2, 5] {
            m.on_announce(p, &announce(p, 1, seq, false), t0).unwrap();
        }
        assert_eq!(m.skipped, 2, "3 and 4 never came");
        // A late 4 is stale: not taken, not counted again.
        m.on_announce(p, &announce(p, 1, 4, false), t0).unwrap();
        assert_eq!(m.skipped, 2);
        // A new incarnation starts its own numbering.
        m.on_announce(p, &announce(p, 2, 1, false), t0).unwrap();
        m.on_announce(p, &announce(p, 2, 2, false), t0).unwrap();
        assert_eq!(m.skipped, 2);
    }

    #[test]
    fn next_deadline_is_when_tick_has_work() {
        let me = PeerId::random();
        let p = PeerId::random();
        let q = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        assert_eq!(m.next_deadline(t0), None, "nothing known, nothing due");
        m.on_connected(p, None, t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        let silent_at = t0 + timing().down_after;
        assert_eq!(m.next_deadline(t0), Some(silent_at));
        // Nothing happens just before; at the deadline the peer goes down.
        m.tick(silent_at - Duration::from_millis(1));
        assert_eq!(state_of(&m, p), up());
        m.tick(silent_at);
        assert_eq!(state_of(&m, p), down("silent"));
        // A known address with no connection: the redial is due next.
        let t1 = silent_at + Duration::from_secs(1);
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().unwrap();
        m.on_hint(q, vec![addr], t1);
        let due = m.next_deadline(t1).unwrap();
        assert!(
            due <= t1 + DIAL_BACKOFF_MIN,
            "redial due {:?} after",
            due - t1
        );
        // A later announcement pushes the silence deadline back.
        let t2 = t1 + Duration::from_secs(1);
        m.on_announce(p, &announce(p, 1, 2, false), t2).unwrap();
        assert!(m.next_deadline(t2).unwrap() <= t2 + timing().down_after);
    }

    #[test]
    fn silence_marks_down_and_new_announce_brings_back() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        m.on_connected(p, None, t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        m.tick(t0 + Duration::from_secs(3));
        assert_eq!(state_of(&m, p), up());
        assert!(m.take_silenced().is_empty());
        m.tick(t0 + Duration::from_secs(5));
        assert_eq!(state_of(&m, p), down("silent"));
        // Its connection is to be closed, once.
        assert_eq!(m.take_silenced(), vec![p]);
        assert!(m.take_silenced().is_empty());
        m.on_announce(p, &announce(p, 1, 2, false), t0 + Duration::from_secs(6))
            .unwrap();
        assert_eq!(state_of(&m, p), up());
    }

    #[test]
    fn leaving_is_immediate_and_only_a_new_incarnation_returns() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        m.on_connected(p, None, t0);
        m.on_announce(p, &announce(p, 1, 5, false), t0).unwrap();
        m.on_announce(p, &announce(p, 1, 6, true), t0).unwrap();
        assert_eq!(state_of(&m, p), down("left"));
        // Its connection closing does not trigger a redial of a leaver.
        assert_eq!(m.on_disconnected(p, 0, t0), None);
        // Stale and same-incarnation messages do not resurrect it.
        m.on_announce(p, &announce(p, 1, 4, false), t0).unwrap();
        m.on_announce(p, &announce(p, 1, 7, false), t0).unwrap();
        assert_eq!(state_of(&m, p), down("left"));
        // A restart (new incarnation) is dialled at once and comes back.
        let dial = m.on_announce(p, &announce(p, 2, 1, false), t0).unwrap();
        assert!(dial.is_some());
        m.on_connected(p, None, t0);
        assert_eq!(state_of(&m, p), up());
    }

    #[test]
    fn down_peers_are_redialled_with_backoff_then_forgotten() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        m.on_dial_failed(p, t0);
        assert_eq!(state_of(&m, p), down("unreachable"));
        let mut dial_times = Vec::new();
        let mut t = t0;
        while t < t0 + Duration::from_secs(20) {
            if !m.tick(t).is_empty() {
                dial_times.push(t.duration_since(t0).as_millis());
                m.on_dial_failed(p, t);
            }
            t += Duration::from_millis(100);
        }
        // Gaps grow then cap at DIAL_BACKOFF_MAX.
        let gaps: Vec<u128> = dial_times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps.windows(2).all(|g| g[1] >= g[0]), "{gaps:?}");
        assert!(
            gaps.iter()
                .all(|g| *g <= DIAL_BACKOFF_MAX.as_millis() + 100),
            "{gaps:?}"
        );
        assert!(dial_times.len() >= 5, "{dial_times:?}");
        m.tick(t0 + Duration::from_secs(61));
        assert_eq!(state_of(&m, p), None, "forgotten after forget_after");
        assert!(m.views().is_empty());
    }

    #[test]
    fn spoofed_malformed_and_foreign_versions_are_rejected() {
        let me = PeerId::random();
        let p = PeerId::random();
        let other = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        let bytes = serde_json::to_vec(&announce(other, 1, 1, false)).unwrap();
        assert!(matches!(
            m.on_announce_bytes(p, &bytes, t0),
            Err(AnnounceError::WrongId { .. })
        ));
        assert!(matches!(
            m.on_announce_bytes(p, b"{not json", t0),
            Err(AnnounceError::Malformed(_))
        ));
        let mut a = announce(p, 1, 1, false);
        a.v = 99;
        let bytes = serde_json::to_vec(&a).unwrap();
        assert_eq!(
            m.on_announce_bytes(p, &bytes, t0),
            Err(AnnounceError::Version(99))
        );
        // Unknown extra fields are fine (forward compatibility).
        let mut v = serde_json::to_value(announce(p, 1, 1, false)).unwrap();
        v["some_future_field"] = serde_json::json!([{"name": "x"}]);
        assert!(
            m.on_announce_bytes(p, &serde_json::to_vec(&v).unwrap(), t0)
                .is_ok()
        );
        // Garbage addresses are dropped, the rest kept.
        let mut a = announce(p, 1, 2, false);
        a.listen = vec!["not an addr".into(), "/ip4/127.0.0.1/tcp/9".into()];
        m.on_announce(p, &a, t0).unwrap();
        m.on_connected(p, None, t0);
        let view = m.views().pop().unwrap();
        assert!(
            view.addrs.iter().all(|a| a.starts_with('/')),
            "{:?}",
            view.addrs
        );
    }

    #[test]
    fn address_lists_are_bounded() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        let mut a = announce(p, 1, 1, false);
        a.listen = (0..1000)
            .map(|i| format!("/ip4/127.0.0.1/tcp/{}", i + 1))
            .collect();
        m.on_announce(p, &a, t0).unwrap();
        m.on_connected(p, None, t0);
        assert!(m.views()[0].addrs.len() <= MAX_ADDRS_PER_PEER);
    }
}
