//! The membership table: which peers exist, which are up, and when to dial.
//!
//! This module is pure bookkeeping, without I/O: the network event loop
//! feeds it events (announcements, connections, dial failures, clock ticks)
//! and carries out the dials it asks for. That keeps the rules below unit
//! testable and in one place.
//!
//! # Rules
//! - A peer is **up** when this peer holds a live connection to it *and* it
//!   was heard from within `down_after` (an announcement, or, once it has
//!   announced itself, an answered ping) *and* its latest announcement was
//!   not a goodbye. An up peer whose connection dropped stays up while the
//!   redial is in flight.
//! - It goes **down** with a reason:
//!   - `left`: it announced that it is leaving (graceful stop);
//!   - `unreachable`: its last connection closed and a redial failed (a
//!     SIGKILLed peer lands here within milliseconds: the kernel closes its
//!     sockets and the redial is refused);
//!   - `silent`: nothing heard (no announcement, no answered ping) for
//!     `down_after` (a hung process, a partition that keeps TCP open).
//! - A peer that is down is redialled with capped exponential backoff, so a
//!   restarted peer is found again without help, and forgotten after
//!   `forget_after`.
//! - Announcements carry `(incarnation, seq)`; older ones are ignored. A
//!   restart starts a new incarnation (its start time), so a peer that left
//!   can come back.
//! - Peers heard of (through another peer's member list, or an announcement
//!   relayed by another peer) but never connected are *unverified*: nobody
//!   vouches for them but the peer that passed them on, and their addresses
//!   are only claims. They are hidden from the API, at most
//!   [`MAX_UNVERIFIED`] are held at once, the first dials of new ones are
//!   rate limited, and each is dialled at most [`UNVERIFIED_DIALS`] times,
//!   then dropped. A peer that connects (an authenticated connection, in
//!   either direction) is *verified* and keeps its entry as described above.
//!
//! # Addresses are claims until a dial confirms them
//! Announcements, member lists and identify all carry addresses the peer
//! (or whoever relays it) chose; an attacker can name a third party's. So
//! only an address at which this peer itself connected to the right peer id
//! is *confirmed*, and redialled without limit (with backoff). Every other
//! address is dialled at most [`CLAIMED_ADDR_DIALS`] times per
//! [`CLAIMED_ADDR_WINDOW`], whichever peer id claims it: a mesh of honest
//! peers cannot be turned into a connection flood at someone else. Of two
//! connected peers at least one dialled the other, so one side always holds
//! a confirmed address and a restarted peer is still found again.
//!
//! # Bounds
//! The table holds at most [`MAX_PEERS`] entries. A peer that connects
//! always gets one: when the table is full, an unverified entry (or else the
//! longest-gone unconnected one) makes room. Refusals are counted
//! ([`Membership::refusals`], and `disruptor_membership_refused_total`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use crate::clock::unix_ms;

use libp2p::{Multiaddr, PeerId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};

use super::view::{DownReason, PeerState, PeerView, yes};
use crate::apps::AppStatus;
use crate::mesh::desired::DesiredApp;
use crate::mesh::labels::Labels;
use crate::mesh::record::{self, RecordError};
use crate::mesh::swim::Status as SwimStatus;
use crate::obs::metrics::ReasonLabel;
use crate::ratelimit::PerKeyBudget;

/// Version of the announcement format. Unknown fields are ignored, so later
/// versions may add fields (apps, load) without breaking older peers.
pub const ANNOUNCE_VERSION: u32 = 1;
/// Addresses kept per peer, at most, in each of its lists (known and
/// confirmed; the oldest goes first): a rogue peer must not be able to
/// grow our memory without bound.
pub const MAX_ADDRS_PER_PEER: usize = 16;
/// Entries in the table, at most (verified and unverified).
pub const MAX_PEERS: usize = 4096;
const MAX_HTTP_LEN: usize = 256;

const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(500);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(4);

/// Unverified entries (peers never connected) held at once. An honest
/// newcomer learns the whole mesh in one member list and dials it at once,
/// so this only needs to cover the peers it has not reached yet; a peer
/// also reaches others by being dialled, which needs no entry beforehand.
pub const MAX_UNVERIFIED: usize = 64;
/// Dials an unverified entry gets (0.5, 1, 2 s apart) before it is dropped.
pub const UNVERIFIED_DIALS: u32 = 3;
/// An unverified entry still not connected after this long is dropped,
/// whatever became of its dials (3 dials of `connect_timeout` fit in it).
pub const UNVERIFIED_TTL: Duration = Duration::from_secs(30);
/// First dials of newly learned (unverified) peers: a burst of this many
/// (a newcomer's member list of a mesh of a few dozen peers), then
/// [`DISCOVERY_DIAL_RATE`] per second.
const DISCOVERY_DIAL_BURST: u32 = 32;
const DISCOVERY_DIAL_RATE: u32 = 4;
/// Redials of down members per second, all of them together, and the
/// burst. A member that went down is redialled (a restarted peer is found
/// again without help), but a peer holding many members down at once (a
/// partition, or false deaths under load) must not answer with a dial to
/// each: on a loaded machine the storm of handshakes times out more probes
/// and makes more deaths. Like Serf's reconnect of failed members, the
/// cost is bounded whatever the number down; a lone down member is
/// redialled on its own backoff as before.
const RECONNECT_DIAL_RATE: u32 = 1;
const RECONNECT_DIAL_BURST: u32 = 4;

/// A peer heard of only through a relayed announcement is first dialled
/// after this long, not at once. In a mesh running SWIM its signed
/// "alive" spreads in a few gossip rounds and makes it a member without
/// any connection (see [`Membership::on_swim`]); dialled at once, every
/// peer that got the newcomer's announcement before SWIM's news (most of
/// a 150-peer mesh) connected to it within a second, and the newcomer,
/// busy with their handshakes and with a full-state exchange for each,
/// fell behind on its probes and was declared dead by everyone. The dial
/// is for what SWIM does not vouch for.
pub const VOUCH_GRACE: Duration = Duration::from_secs(3);
/// When the discovery rate held a first dial back, it is tried again after this.
const DISCOVERY_RETRY: Duration = Duration::from_millis(250);
/// Dials of an address nobody has connected from, per window, whichever
/// peer id claims it (see the module docs).
pub const CLAIMED_ADDR_DIALS: u32 = 3;
/// The window of [`CLAIMED_ADDR_DIALS`]: an address's count starts over
/// this long (5 minutes) after the first dial that opened the window.
pub const CLAIMED_ADDR_WINDOW: Duration = Duration::from_secs(300);
/// Claimed addresses tracked, at most. When every one of them is within
/// its window, no further claimed address is dialled until one expires
/// (fail closed: it takes an attack to get there).
const MAX_TRACKED_ADDRS: usize = 1024;

/// What a peer publishes about itself on the membership topic.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Announce {
    /// Format version, [`ANNOUNCE_VERSION`]; another one is refused
    /// ([`AnnounceError::Version`]).
    pub v: u32,
    /// The announcing peer's id; must equal the (signed) gossipsub source.
    pub id: String,
    /// Unix ms at which this run of the peer started; grows across restarts.
    pub incarnation: u64,
    /// Counter within an incarnation: one more per announcement published,
    /// so a gap is counted as announcements that never arrived.
    pub seq: u64,
    /// Its libp2p listen addresses, as multiaddr text. Claims until a dial
    /// confirms them (see the module docs); unparsable ones are skipped.
    pub listen: Vec<String>,
    /// Its HTTP endpoint as bound (`HOST:PORT`, possibly a loopback
    /// address); dropped if longer than 256 bytes.
    #[serde(default)]
    pub http: Option<String>,
    /// Its labels (`--label`): the valid ones among the first
    /// [`MAX_LABELS`](crate::mesh::labels::MAX_LABELS) are kept.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// A goodbye: the peer is stopping. It goes down as `left` at once,
    /// and its apps are cleared.
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
    /// Whether it installs deployed bundles (false with
    /// `--no-remote-deploy`, and on a peer without `--admin`).
    #[serde(default = "yes")]
    pub remote_deploy: bool,
}

/// Membership timing knobs (see the README for what each one trades).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// How often this peer announces itself.
    pub announce_interval: Duration,
    /// Silence after which a connected peer is down.
    pub down_after: Duration,
    /// How long a down peer is remembered.
    pub forget_after: Duration,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            announce_interval: Duration::from_secs(2),
            down_after: Duration::from_secs(4),
            forget_after: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(4),
        }
    }
}

/// Size of the active view for a mesh of `members` peers (this one
/// included): `ceil(log2 N) + 2`, between 4 and 12 (HyParView's `log N +
/// c`): 7 at 20 peers, 10 at 150, 12 from 1,000.
pub fn active_target(members: usize) -> usize {
    let n = members.max(2) as f64;
    (n.log2().ceil() as usize + 2).clamp(4, 12)
}

/// Bundles listed in an announcement, at most.
pub const MAX_BUNDLES: usize = 64;

/// Peers listed in an announcement's `links`, at most.
pub const MAX_LINKS: usize = 256;
/// Redials of a down member the whole mesh makes per backoff round, about
/// (see [`redial_share`]).
pub const DOWN_REDIALS_PER_ROUND: usize = 3;

/// The share of a down member's redial rounds this peer makes, with `up`
/// members up here: all of them in a mesh of [`DOWN_REDIALS_PER_ROUND`] or
/// fewer, else that many over `up`, so that the mesh redials a down
/// member about [`DOWN_REDIALS_PER_ROUND`] times per round whatever its
/// size. Every peer redialling every down member found a restarted peer
/// of a 150-peer mesh dialled by 125 peers in its first second: 125
/// connections, closed unused 10 s later, and 32 MB of memory kept after
/// them. A peer that sees nobody up (cut off, or alone) redials all.
pub fn redial_share(up: usize) -> f64 {
    if up <= DOWN_REDIALS_PER_ROUND {
        1.0
    } else {
        DOWN_REDIALS_PER_ROUND as f64 / up as f64
    }
}

/// How recently a member must have started for its record, fetched
/// rather than gossiped to this peer, to be passed on to the gossip mesh
/// (see [`Membership::relay_fetched`]).
pub const RELAY_FRESH: Duration = Duration::from_secs(30);

/// The last 8 characters of a peer id: what announcements carry in `links`.
pub fn short_id(id: &str) -> &str {
    &id[id.len().saturating_sub(8)..]
}

/// Where a peer stands in the table (see the module docs' rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Known (connected, or heard of) but not up yet; hidden from the
    /// view, and forgotten after `forget_after` (an unverified one after
    /// [`UNVERIFIED_TTL`]) if it never comes up.
    Joining,
    /// Connected and heard from within `down_after`.
    Up,
    /// Down, and why; redialled with backoff until forgotten.
    Down(DownReason),
}

#[derive(Debug)]
struct Entry {
    /// The peer id in text form, cached: base58 encoding showed up in
    /// profiles of an idle 20-peer mesh.
    id: String,
    /// Every address known for it, claimed or confirmed (newest last).
    addrs: Vec<Multiaddr>,
    /// Addresses at which this peer connected to it (see the module docs).
    confirmed: Vec<Multiaddr>,
    /// This peer held an authenticated connection to it at some point.
    verified: bool,
    /// Dials made while unverified (see [`UNVERIFIED_DIALS`]).
    dials: u32,
    created: Instant,
    http: Option<String>,
    state: State,
    state_since: Instant,
    state_since_ms: u64,
    first_seen_ms: u64,
    last_seen_ms: u64,
    last_heard: Option<Instant>,
    version: Option<(u64, u64)>,
    left_incarnation: Option<u64>,
    /// The run (incarnation) a refused redial found unreachable: this
    /// peer's own evidence, which SWIM's word overrides for a newer run
    /// only (see [`Membership::on_swim`]).
    unreachable_run: Option<u64>,
    rtt: Option<Duration>,
    /// SWIM holds it alive (or suspect): it counts as heard from, whatever
    /// `last_heard` says (see [`Membership::on_swim`]).
    vouched: bool,
    /// A redial after its last connection closed is in flight.
    redialling: bool,
    /// Its latest announcement as it signed it, handed to peers that ask
    /// (see [`Membership::records_of`]).
    record: Option<Arc<[u8]>>,
    connections: u32,
    next_dial: Instant,
    backoff: Duration,
    apps: Vec<AppStatus>,
    links: Vec<String>,
    bundles: Vec<String>,
    remote_deploy: bool,
    labels: Labels,
}

impl Entry {
    fn new(id: PeerId, now: Instant) -> Self {
        let ms = unix_ms();
        Entry {
            id: id.to_string(),
            addrs: Vec::new(),
            confirmed: Vec::new(),
            verified: false,
            dials: 0,
            created: now,
            http: None,
            state: State::Joining,
            state_since: now,
            state_since_ms: ms,
            first_seen_ms: ms,
            last_seen_ms: ms,
            last_heard: None,
            version: None,
            left_incarnation: None,
            unreachable_run: None,
            rtt: None,
            vouched: false,
            redialling: false,
            record: None,
            connections: 0,
            next_dial: now,
            backoff: DIAL_BACKOFF_MIN,
            apps: Vec::new(),
            links: Vec::new(),
            bundles: Vec::new(),
            remote_deploy: true,
            labels: Labels::default(),
        }
    }

    fn merge_addrs(&mut self, addrs: impl IntoIterator<Item = Multiaddr>) {
        for a in addrs {
            push_bounded(&mut self.addrs, a);
        }
    }

    /// `addr` reached this very peer: it may be redialled without limit.
    fn confirm(&mut self, addr: Multiaddr) {
        push_bounded(&mut self.confirmed, addr.clone());
        push_bounded(&mut self.addrs, addr);
    }

    fn heard_recently(&self, now: Instant, down_after: Duration) -> bool {
        self.vouched
            || self
                .last_heard
                .is_some_and(|t| now.saturating_duration_since(t) < down_after)
    }

    /// An unverified entry that may not be dialled again.
    fn spent(&self) -> bool {
        !self.verified && self.dials >= UNVERIFIED_DIALS
    }

    /// Whether a dial could be made once `next_dial` has come.
    fn dialable(&self) -> bool {
        self.connections == 0 && !self.addrs.is_empty() && !self.spent()
    }
}

/// Adds `a` to a list of at most [`MAX_ADDRS_PER_PEER`], dropping the oldest.
fn push_bounded(list: &mut Vec<Multiaddr>, a: Multiaddr) {
    if list.contains(&a) {
        return;
    }
    if list.len() >= MAX_ADDRS_PER_PEER {
        list.remove(0);
    }
    list.push(a);
}

/// Why an announcement was not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnnounceError {
    /// Not JSON of an announcement's shape (the parser's message, made
    /// fit for a log line).
    #[error("announcement is not valid JSON of the expected shape: {0}")]
    Malformed(String),
    /// Its `id` is not the peer that signed it.
    #[error("announcement claims id {claimed} but was signed by {source_id}")]
    WrongId {
        /// The id it claims (made fit for a log line).
        claimed: String,
        /// The author it was taken from (the key that signed it).
        source_id: String,
    },
    /// A format version this peer does not speak.
    #[error("unsupported announcement version {0}")]
    Version(u32),
    /// Not signed by its author (see [`crate::mesh::record`]).
    #[error("{0}")]
    Record(#[from] RecordError),
    /// A peer not in the table while it holds [`MAX_PEERS`] entries (only
    /// a peer that connects may displace another).
    #[error("membership table is full ({MAX_PEERS} peers)")]
    Full,
    /// A new unverified peer while [`MAX_UNVERIFIED`] are being tried and
    /// none of them is spent.
    #[error(
        "{MAX_UNVERIFIED} peers that never connected are already being tried; an announcement from another one waits until one connects or is dropped"
    )]
    UnverifiedFull,
}

impl AnnounceError {
    /// Whether every honest peer would refuse this message too, whoever
    /// relayed it. Only those are reported to gossipsub as invalid, which
    /// lowers the score of the peer that passed it on (see `behaviour.rs`):
    /// a relay must never be punished for our own state (a full table) or
    /// for a format version it may know and we do not.
    pub fn is_invalid(&self) -> bool {
        matches!(
            self,
            AnnounceError::Malformed(_) | AnnounceError::WrongId { .. } | AnnounceError::Record(_)
        )
    }
}

/// Something membership did not take or do, counted by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A peer not in the table while it held [`MAX_PEERS`] entries of which
    /// none could make room.
    TableFull,
    /// A new unverified peer while [`MAX_UNVERIFIED`] were being tried.
    UnverifiedFull,
    /// A first dial of a new unverified peer, held back by the discovery rate
    /// (it is tried again shortly).
    DiscoveryRate,
    /// A claimed address left out of a dial: it was dialled
    /// [`CLAIMED_ADDR_DIALS`] times in its window already.
    ClaimedAddress,
}

impl Refusal {
    /// Every kind, in the order of the counts of [`Membership::refusals`].
    pub const ALL: [Refusal; 4] = [
        Refusal::TableFull,
        Refusal::UnverifiedFull,
        Refusal::DiscoveryRate,
        Refusal::ClaimedAddress,
    ];

    /// The `reason` label of `disruptor_membership_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::TableFull => "table_full",
            Refusal::UnverifiedFull => "unverified_full",
            Refusal::DiscoveryRate => "discovery_rate",
            Refusal::ClaimedAddress => "claimed_address_budget",
        }
    }
}

/// `disruptor_membership_refused_total{reason}`: [`Refusal`]s, registered
/// by the network layer in the `/metrics` registry.
pub static REFUSED: LazyLock<Family<ReasonLabel, Counter>> = LazyLock::new(Family::default);

/// How often each claimed (never confirmed) address was dialled in its
/// current window, whichever peer claimed it.
#[derive(Debug, Default)]
struct ClaimedAddrs {
    dials: HashMap<Multiaddr, (u32, Instant)>,
}

impl ClaimedAddrs {
    /// Takes one dial of `a` if its budget allows.
    fn take(&mut self, a: &Multiaddr, now: Instant) -> bool {
        let fresh = |since: Instant| now.saturating_duration_since(since) < CLAIMED_ADDR_WINDOW;
        if !self.dials.contains_key(a) && self.dials.len() >= MAX_TRACKED_ADDRS {
            self.dials.retain(|_, (_, since)| fresh(*since));
            if self.dials.len() >= MAX_TRACKED_ADDRS {
                return false;
            }
        }
        let (n, since) = self.dials.entry(a.clone()).or_insert((0, now));
        if !fresh(*since) {
            (*n, *since) = (0, now);
        }
        if *n >= CLAIMED_ADDR_DIALS {
            return false;
        }
        *n += 1;
        true
    }

    /// `a` was confirmed: it is no longer a claim.
    fn forget(&mut self, a: &Multiaddr) {
        self.dials.remove(a);
    }
}

/// A dial the event loop should make.
#[derive(Debug, Clone, PartialEq)]
pub struct Dial {
    /// The peer to dial (the connection must prove this id).
    pub peer: PeerId,
    /// Its confirmed addresses, then the claimed ones whose budget
    /// allowed; never empty.
    pub addrs: Vec<Multiaddr>,
}

/// This peer's table of the others, under the rules of the module docs.
/// Owned by the network event loop, which feeds it events, makes the
/// dials it returns, and publishes its [`Membership::views`].
pub struct Membership {
    local: PeerId,
    timing: Timing,
    peers: HashMap<PeerId, Entry>,
    /// The unverified entries of `peers`, oldest first (at most
    /// [`MAX_UNVERIFIED`]; a list, not a count, so eviction never scans
    /// the whole table).
    unverified: Vec<PeerId>,
    /// Dials of claimed addresses, per address.
    claimed: ClaimedAddrs,
    /// First dials of newly learned unverified peers.
    discovery: PerKeyBudget<()>,
    /// Redials of members that are down, mesh-wide (see
    /// [`RECONNECT_DIAL_RATE`]).
    reconnect: PerKeyBudget<()>,
    /// Counts by [`Refusal`] (in the order of [`Refusal::ALL`]).
    refused: [u64; Refusal::ALL.len()],
    /// The view must be republished now (a state, address or app changed).
    dirty: bool,
    /// The view should be republished soon (times changed).
    soft_dirty: bool,
    /// Peers that went silent while connected since the last
    /// [`Membership::take_silenced`]: their connections are to be closed.
    silenced: Vec<PeerId>,
    /// Peers that became unreachable since [`Membership::take_unreachable`].
    unreachable: Vec<PeerId>,
    /// Up members a dial failed to reach without a refusal (see
    /// [`Membership::on_dial_inconclusive`]); bounded by [`MAX_PEERS`].
    doubted: Vec<PeerId>,
    /// Members SWIM holds alive or suspect (as of the last
    /// [`Membership::on_swim`]; bounded by SWIM's member table).
    swim_live: HashSet<PeerId>,
    /// Members SWIM holds dead (see [`Self::on_dial_inconclusive`]).
    swim_dead: HashSet<PeerId>,
    /// The active view: the up peers this peer keeps connections to (see
    /// [`Membership::active`]).
    active: Vec<PeerId>,
    /// Picks the active view's members.
    rng: rand::rngs::StdRng,
    /// Announcements of others never taken (gaps in their numbers); also
    /// counted in `/metrics`.
    skipped: u64,
    /// Bumped whenever an entry is added, and removed: what the links
    /// [`Self::views`] expands depend on besides the links themselves.
    added: u64,
    removed: u64,
    /// Per peer, its links expanded to full ids by [`Self::views`], with
    /// the short ids and the table changes it was expanded after. A view is
    /// derived up to 4 times a second while the table changes, and
    /// expanding every peer's links afresh each time (a string per link)
    /// was most of a forming 150-peer mesh's time spent on views.
    links_cache: std::cell::RefCell<HashMap<PeerId, LinksCache>>,
}

/// Links of one peer as [`Membership::views`] last expanded them.
struct LinksCache {
    /// [`Membership::added`] and [`Membership::removed`] when expanded.
    added: u64,
    removed: u64,
    short: Vec<String>,
    full: Arc<[String]>,
}

impl LinksCache {
    /// Whether the expansion still holds for `short` links: the same
    /// links, no entry removed since, and no entry added since unless all
    /// of them were found (an entry added then cannot change them).
    fn holds(&self, short: &[String], added: u64, removed: u64) -> bool {
        self.short == short
            && self.removed == removed
            && (self.added == added || self.full.len() == self.short.len())
    }
}

/// What applying an announcement's fields changed in the view.
struct Change {
    /// Something the view shows at once (addresses, apps, bundles, ...).
    hard: bool,
    /// Only what may be shown lazily (links).
    soft: bool,
}

impl Membership {
    /// An empty table for the peer `local` (which never gets an entry of
    /// its own), with the timing of `--announce-interval`, `--down-after`,
    /// `--forget-after` and `--connect-timeout`.
    pub fn new(local: PeerId, timing: Timing) -> Self {
        Membership {
            local,
            timing,
            peers: HashMap::new(),
            unverified: Vec::new(),
            claimed: ClaimedAddrs::default(),
            discovery: PerKeyBudget::new(DISCOVERY_DIAL_BURST, DISCOVERY_DIAL_RATE, 1),
            reconnect: PerKeyBudget::new(RECONNECT_DIAL_BURST, RECONNECT_DIAL_RATE, 1),
            refused: [0; Refusal::ALL.len()],
            dirty: true,
            soft_dirty: false,
            silenced: Vec::new(),
            unreachable: Vec::new(),
            doubted: Vec::new(),
            swim_live: HashSet::new(),
            swim_dead: HashSet::new(),
            active: Vec::new(),
            rng: {
                use rand::SeedableRng;
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                local.hash(&mut h);
                rand::rngs::StdRng::seed_from_u64(h.finish())
            },
            skipped: 0,
            added: 0,
            removed: 0,
            links_cache: Default::default(),
        }
    }

    /// Parses and applies an announcement published by `source` (checking
    /// its version and that it names `source`). Returns a dial to make, if
    /// the peer is not connected, and the decisions the announcement
    /// carries, for the caller to merge into its
    /// [`DesiredApps`](crate::mesh::desired::DesiredApps).
    ///
    /// `data` is a signed record ([`crate::mesh::record`]): the signature
    /// is checked for announcements newer than the one held (a copy of one
    /// already taken costs no check, and is not taken again). A peer not in
    /// the table gets an entry when SWIM vouches for it (a member of the
    /// mesh, never connected here: most of them, in a large mesh), or else
    /// an unverified one, within [`MAX_UNVERIFIED`].
    pub fn on_announce_bytes(
        &mut self,
        source: PeerId,
        data: &[u8],
        now: Instant,
    ) -> Result<(Option<Dial>, Vec<DesiredApp>), AnnounceError> {
        let (sig, json) = record::split(data)?;
        let a: Announce = serde_json::from_slice(json).map_err(|e| parse_error(json, &e))?;
        if a.v != ANNOUNCE_VERSION {
            return Err(AnnounceError::Version(a.v));
        }
        let same_id = match self.peers.get(&source) {
            Some(e) => e.id == a.id,
            None => a.id == source.to_string(),
        };
        if !same_id {
            return Err(AnnounceError::WrongId {
                claimed: printable(&a.id),
                source_id: source.to_string(),
            });
        }
        if let Some(e) = self.peers.get(&source)
            && e.version.is_some_and(|v| v >= (a.incarnation, a.seq))
        {
            return Ok((None, Vec::new())); // stale or duplicate: nothing new
        }
        record::check(&source, sig, json)?;
        if !self.peers.contains_key(&source) && self.swim_live.contains(&source) {
            self.admit_vouched(source, now)?;
        }
        let dial = self.on_announce(source, &a, now)?;
        if let Some(e) = self.peers.get_mut(&source)
            && e.version == Some((a.incarnation, a.seq))
        {
            e.record = Some(Arc::from(data));
        }
        Ok((dial, a.desired))
    }

    /// A signed record handed over by another peer (a member list): taken
    /// as its author's own announcement, if the signature checks and SWIM
    /// vouches for the author (records of peers this peer did not ask
    /// about are not taken).
    pub fn on_record(
        &mut self,
        data: &[u8],
        now: Instant,
    ) -> Result<(Option<Dial>, Vec<DesiredApp>), AnnounceError> {
        let id = record_author(data)?;
        if !self.swim_live.contains(&id) && !self.peers.contains_key(&id) {
            return Err(AnnounceError::UnverifiedFull);
        }
        self.on_announce_bytes(id, data, now)
    }

    /// Members SWIM holds alive whose announcement this peer lacks, or
    /// holds only as down: their records are to be fetched from a peer
    /// that has them. A restarted member's first announcements may miss
    /// this peer (see [`Self::relay_fetched`]), and the record of its old
    /// incarnation does not bring it up: seen in a 40-peer mesh-bench run,
    /// a restarted peer up everywhere but at one peer, for 10 s, until its
    /// next announcement.
    pub fn missing_records(&self) -> Vec<PeerId> {
        self.swim_live
            .iter()
            .filter(|id| {
                self.peers
                    .get(id)
                    .is_none_or(|e| e.version.is_none() || matches!(e.state, State::Down(_)))
            })
            .copied()
            .collect()
    }

    /// The signed records held of `ids` (those held), for a peer that
    /// asked, within `max_bytes` in all.
    pub fn records_of(&self, ids: &[PeerId], max_bytes: usize) -> Vec<Arc<[u8]>> {
        let mut total = 0;
        ids.iter()
            .filter_map(|id| self.peers.get(id)?.record.clone())
            .take_while(|r| {
                total += r.len();
                total <= max_bytes
            })
            .collect()
    }

    /// An entry for a member SWIM vouches for (its signed "alive" came
    /// through SWIM, its signed announcement with this call): a member like
    /// any other, shown and counted, whose addresses stay claims until a
    /// dial confirms them. Bounded by the table ([`MAX_PEERS`]) like
    /// SWIM's own member table.
    fn admit_vouched(&mut self, peer: PeerId, now: Instant) -> Result<(), AnnounceError> {
        if self.peers.len() >= MAX_PEERS {
            // Room is made only by an unverified entry (a claim nobody
            // vouches for).
            let Some(victim) = self.unverified.first().copied() else {
                self.refuse(Refusal::TableFull);
                return Err(AnnounceError::Full);
            };
            self.remove(victim);
        }
        let mut e = Entry::new(peer, now);
        e.verified = true;
        e.vouched = true;
        self.insert(peer, e);
        self.dirty = true;
        Ok(())
    }

    /// Applies a parsed announcement from `source`, whose version and id
    /// the caller checked (as [`Membership::on_announce_bytes`] does). One
    /// not newer than the last taken `(incarnation, seq)` is ignored; an
    /// unknown peer gets an unverified entry, if there is room. Returns a
    /// dial to make, if the peer is not connected.
    pub fn on_announce(
        &mut self,
        source: PeerId,
        a: &Announce,
        now: Instant,
    ) -> Result<Option<Dial>, AnnounceError> {
        if source == self.local {
            return Ok(None);
        }
        if !self.peers.contains_key(&source) {
            // Not connected (a connection makes an entry first): a peer
            // known only from what others relay. SWIM may vouch for it
            // first (see [`VOUCH_GRACE`]).
            self.admit_unverified(source, now)?;
            if let Some(e) = self.peers.get_mut(&source) {
                e.next_dial = now + VOUCH_GRACE;
            }
        }
        let down_after = self.timing.down_after;
        let e = self.peers.get_mut(&source).expect("admitted above");
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
            crate::obs::metrics::METRICS
                .announcements_skipped
                .inc_by(a.seq - seq - 1);
        }
        if e.left_incarnation == Some(a.incarnation) && !a.leaving {
            return Ok(None); // a delayed message from a run that already said goodbye
        }
        e.version = Some(version);
        e.last_heard = Some(now);
        e.last_seen_ms = unix_ms();
        let change = apply_fields(e, a);
        self.dirty |= change.hard;
        self.soft_dirty |= change.soft;

        if a.leaving {
            e.left_incarnation = Some(a.incarnation);
            set_state(source, e, State::Down(DownReason::Left), now);
            return Ok(None);
        }
        if e.connections > 0 || e.vouched {
            // Connected, or vouched for by SWIM (most members of a large
            // mesh are never connected here).
            if e.heard_recently(now, down_after) && e.state != State::Up {
                set_state(source, e, State::Up, now);
                self.dirty = true;
            }
            if e.connections > 0 {
                return Ok(None);
            }
        }
        match e.state {
            // Connection lost, redial in flight: keep it up until that fails.
            State::Up => Ok(None),
            // A new incarnation of a peer that left: try it right away.
            State::Down(DownReason::Left) => {
                e.next_dial = now;
                Ok(self.take_dial_if_due(source, now))
            }
            State::Joining | State::Down(_) => Ok(self.take_dial_if_due(source, now)),
        }
    }

    /// Addresses of a peer learned second-hand (a connected peer's member
    /// list). Creates an unverified entry for an unknown peer and asks for a
    /// dial. Peers that ever connected are not touched: they announce their
    /// addresses themselves, signed, and nobody else may add to them.
    pub fn on_hint(&mut self, peer: PeerId, addrs: Vec<Multiaddr>, now: Instant) -> Option<Dial> {
        if peer == self.local || addrs.is_empty() {
            return None;
        }
        if !self.peers.contains_key(&peer) {
            self.admit_unverified(peer, now).ok()?;
        }
        let e = self.peers.get_mut(&peer)?;
        if e.verified {
            return None;
        }
        e.merge_addrs(addrs.into_iter().take(MAX_ADDRS_PER_PEER));
        self.take_dial_if_due(peer, now)
    }

    /// Adds addresses for a peer we already know (identify); unknown peers
    /// wait for their announcement.
    pub fn on_identify(&mut self, peer: PeerId, addrs: Vec<Multiaddr>) {
        if let Some(e) = self.peers.get_mut(&peer) {
            e.merge_addrs(addrs.into_iter().take(MAX_ADDRS_PER_PEER));
        }
    }

    /// A connection to `peer` is established; `addr` is the address this
    /// peer dialled, if it dialled (that address is then confirmed).
    pub fn on_connected(&mut self, peer: PeerId, addr: Option<Multiaddr>, now: Instant) {
        if peer == self.local {
            return;
        }
        if !self.peers.contains_key(&peer) && !self.admit_connected() {
            tracing::warn!(%peer, "membership table full of connected peers ({MAX_PEERS}); not tracking a new one");
            return;
        }
        let down_after = self.timing.down_after;
        let vouched = self.swim_live.contains(&peer);
        if !self.peers.contains_key(&peer) {
            self.insert(peer, Entry::new(peer, now));
        }
        let e = self.peers.get_mut(&peer).expect("inserted above");
        // SWIM may have heard of it before this entry existed.
        e.vouched |= vouched;
        e.redialling = false;
        if !e.verified {
            e.verified = true;
            self.unverified.retain(|p| *p != peer);
        }
        e.connections += 1;
        e.backoff = DIAL_BACKOFF_MIN;
        e.last_seen_ms = unix_ms();
        if let Some(a) = addr {
            self.claimed.forget(&a);
            e.confirm(a);
        }
        let left = e.left_incarnation.is_some() && e.left_incarnation == e.version.map(|v| v.0);
        if !left && e.version.is_some() && e.heard_recently(now, down_after) {
            set_state(peer, e, State::Up, now);
        }
        self.dirty = true;
    }

    /// The last-but-`remaining` connection to `peer` closed; `chose_us`:
    /// `peer` held a neighbour stream on it (this peer is in its active
    /// view). Returns a dial when the peer was up and the link one that
    /// either end keeps: a quick redial tells a dead peer (refused) from
    /// a dropped connection (succeeds). With no address it may redial, the
    /// peer is unreachable from here at once (it may still dial back).
    pub fn on_disconnected(
        &mut self,
        peer: PeerId,
        remaining: u32,
        chose_us: bool,
        now: Instant,
    ) -> Option<Dial> {
        let e = self.peers.get_mut(&peer)?;
        e.connections = remaining;
        e.rtt = if remaining == 0 { None } else { e.rtt };
        self.dirty = true;
        if remaining > 0 {
            return None;
        }
        if e.version.is_none() {
            // Connected, never announced: not a member, nothing to redial.
            self.remove(peer);
            return None;
        }
        if !matches!(e.state, State::Up | State::Joining) {
            return None;
        }
        if !chose_us && !self.in_active_view(&peer) {
            // Not a link either end keeps (a job's, a probe's, a record
            // fetch's): its closing says nothing about the peer. A link
            // the other peer chose (`chose_us`: it held a neighbour stream
            // on it) is kept by both ends: a peer just restarted is in no
            // one's active view yet (theirs are full), SWIM probes only
            // connected members, and if the peers it chose ignored its
            // connections closing, nobody would ever find it dead.
            return None;
        }
        if let Some(e) = self.peers.get_mut(&peer) {
            e.next_dial = now;
        }
        let dial = self.take_dial(peer, chose_us, now);
        if dial.is_none() {
            self.on_dial_failed(peer, now);
        } else if let Some(e) = self.peers.get_mut(&peer) {
            e.redialling = true;
        }
        dial
    }

    /// A dial to `peer` failed (refused, timed out, handshake failed).
    pub fn on_dial_failed(&mut self, peer: PeerId, now: Instant) {
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        e.redialling = false;
        if !e.verified {
            // Its last dial failed: nobody ever reached it, drop it.
            if e.spent() {
                tracing::debug!(%peer, "dropping a peer that never connected: its dials failed");
                self.remove(peer);
            }
            return;
        }
        if e.connections == 0 && matches!(e.state, State::Up | State::Joining) {
            set_state(peer, e, State::Down(DownReason::Unreachable), now);
            e.unreachable_run = e.version.map(|v| v.0);
            self.dirty = true;
            if self.unreachable.len() < MAX_PEERS {
                self.unreachable.push(peer);
            }
        }
    }

    /// A dial to `peer` failed without a refusal (it timed out, or its
    /// handshake failed): under load a live peer looks like this too, so
    /// it is no death sentence. An up member stays up here and SWIM is told
    /// to *suspect* it ([`Self::take_doubted`]): the mesh's probes decide,
    /// and a live member refutes. Anyone else: as [`Self::on_dial_failed`].
    pub fn on_dial_inconclusive(&mut self, peer: PeerId, now: Instant) {
        let Some(e) = self.peers.get_mut(&peer) else {
            return;
        };
        if !e.verified || !matches!(e.state, State::Up) {
            self.on_dial_failed(peer, now);
            return;
        }
        e.redialling = false;
        if self.swim_dead.contains(&peer) {
            // SWIM's news of its death came while the redial was deciding
            // (see `on_swim`), and the redial proved nothing either way (a
            // kill mid-handshake resets it): SWIM's word stands. Doubting
            // it instead would change nothing (SWIM does not suspect the
            // dead) and leave it up until the silence rule, 4 s later:
            // seen in a 40-peer mesh-bench run, the one survivor of 39
            // that was redialling at the kill.
            e.last_heard = None;
            set_state(peer, e, State::Down(DownReason::Dead), now);
            self.dirty = true;
            if e.connections > 0 {
                self.silenced.push(peer);
            }
            return;
        }
        if self.doubted.len() < MAX_PEERS {
            self.doubted.push(peer);
        }
    }

    /// Members a dial of this peer's failed to reach without a refusal
    /// since the last call: for SWIM to suspect.
    pub fn take_doubted(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.doubted)
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

    /// What SWIM holds about every member (`members`: its whole view). A
    /// member it holds alive or suspect is *vouched*: it counts as heard
    /// from for as long as SWIM says so (SWIM's probes, indirect probes and
    /// suspicion decide, at a cost per peer that does not grow with the
    /// mesh), and may come up as soon as it is connected and announced. A
    /// member SWIM declared dead goes down as `dead` at once (its open
    /// connections are closed, see [`Self::take_silenced`]) unless a redial
    /// of this peer's own is deciding already; it comes back
    /// by refuting (SWIM alive again) or by being heard from. Members SWIM
    /// does not hold (or holds as left) follow the rules of the module docs.
    pub fn on_swim(&mut self, members: &HashMap<PeerId, SwimStatus>, now: Instant) {
        let down_after = self.timing.down_after;
        self.swim_live = members
            .iter()
            .filter(|(_, s)| matches!(s, SwimStatus::Alive | SwimStatus::Suspect))
            .map(|(id, _)| *id)
            .collect();
        self.swim_dead = members
            .iter()
            .filter(|(_, s)| matches!(s, SwimStatus::Dead))
            .map(|(id, _)| *id)
            .collect();
        let mut promoted = false;
        for (id, e) in self.peers.iter_mut() {
            let status = members.get(id).copied();
            let vouched = matches!(status, Some(SwimStatus::Alive | SwimStatus::Suspect));
            if !e.verified {
                if !vouched {
                    continue;
                }
                // Heard of through its announcement before SWIM vouched
                // for it (in a large mesh, gossipsub often outruns SWIM):
                // its own signed "alive" makes it a member like any other.
                e.verified = true;
                // Dialled now if the active view wants it (its first dial
                // as an unverified peer was put off, see VOUCH_GRACE).
                e.next_dial = e.next_dial.min(now);
                promoted = true;
            }
            if vouched != e.vouched {
                e.vouched = vouched;
                if !vouched {
                    // Heard from until now: the usual silence rule starts
                    // from here, unless SWIM says dead.
                    e.last_heard = Some(now);
                }
            }
            let left = e.left_incarnation.is_some() && e.left_incarnation == e.version.map(|v| v.0);
            match (status, e.state) {
                // A neighbour whose connection closed, redial in flight:
                // what the redial finds (refused: unreachable) is this
                // peer's own evidence, and comes within milliseconds of a
                // kill.
                (Some(SwimStatus::Dead), State::Up) if e.redialling => {}
                (Some(SwimStatus::Dead), State::Up) => {
                    e.last_heard = None;
                    set_state(*id, e, State::Down(DownReason::Dead), now);
                    self.dirty = true;
                    if e.connections > 0 {
                        self.silenced.push(*id);
                    }
                }
                // SWIM's word brings a member up, unless what made it down
                // here is this peer's own evidence about the run it holds
                // a record of: a goodbye (`left`), or a refused redial
                // (`unreachable`, see `unreachable_run`). A newer run's
                // record (gossip often outruns SWIM's news of a restart)
                // is judged afresh. Without this, a restarted peer held
                // unreachable waited for a redial of this peer's own
                // (about DOWN_REDIALS_PER_ROUND a round in the whole mesh,
                // see `redial_share`) or its next announcement, every 38 s
                // in an idle 150-peer mesh: one observer of 150 missed a
                // restarted peer for 38.5 s that way.
                (_, State::Joining | State::Down(_))
                    if vouched
                        && e.version.is_some()
                        && !left
                        && (e.state != State::Down(DownReason::Unreachable)
                            || e.version.map(|v| v.0) > e.unreachable_run)
                        && e.heard_recently(now, down_after) =>
                {
                    set_state(*id, e, State::Up, now);
                    self.dirty = true;
                }
                _ => {}
            }
        }
        if promoted {
            let peers = &self.peers;
            self.unverified
                .retain(|p| peers.get(p).is_some_and(|e| !e.verified));
        }
    }

    /// The active view: the up members this peer keeps connections to, at
    /// most [`active_target`] of the mesh's size, picked at random (a
    /// random graph of a few links per peer is connected and has a small
    /// diameter, so gossip crosses it in a few hops) with members already
    /// connected first (no new dial). Members that go down leave it and
    /// are replaced at the next tick. In a mesh smaller than the target,
    /// every member is in it: the full mesh of old.
    pub fn active(&self) -> &[PeerId] {
        &self.active
    }

    /// Whether `peer` is in the active view.
    pub fn is_active(&self, peer: &PeerId) -> bool {
        self.active.contains(peer)
    }

    /// Whether `peer` is in the active view, filling the view first if it
    /// has room (cheap when full: the steady state).
    fn in_active_view(&mut self, peer: &PeerId) -> bool {
        if !self.active.contains(peer) && self.active.len() < active_target(self.peers.len() + 1) {
            self.refresh_active();
        }
        self.active.contains(peer)
    }

    /// Brings the active view up to date (members gone down leave it, new
    /// ones fill it): at every tick, and by the caller after changes.
    pub fn refresh_active(&mut self) {
        use rand::seq::SliceRandom;
        let peers = &self.peers;
        // The steady state, checked cheaply: full, and every member up.
        if self.active.len() >= active_target(peers.len() + 1)
            && self
                .active
                .iter()
                .all(|p| peers.get(p).is_some_and(|e| e.state == State::Up))
        {
            return;
        }
        let before = self.active.len();
        self.active
            .retain(|p| peers.get(p).is_some_and(|e| e.state == State::Up));
        let up = peers.values().filter(|e| e.state == State::Up).count();
        let target = active_target(up + 1);
        if self.active.len() < target {
            let mut candidates: Vec<PeerId> = peers
                .iter()
                .filter(|(id, e)| {
                    e.state == State::Up
                        && (e.connections > 0 || !e.addrs.is_empty())
                        && !self.active.contains(id)
                })
                .map(|(id, _)| *id)
                .collect();
            candidates.sort_unstable();
            candidates.shuffle(&mut self.rng);
            candidates.sort_by_key(|id| peers[id].connections == 0);
            let need = target - self.active.len();
            self.active.extend(candidates.into_iter().take(need));
        }
        if self.active.len() != before {
            self.soft_dirty = true;
        }
    }

    /// The dials due to members of the active view without a connection
    /// (see [`Membership::tick`], which makes these and every other dial).
    pub fn dial_active(&mut self, now: Instant) -> Vec<Dial> {
        let due: Vec<PeerId> = self
            .active
            .iter()
            .filter(|id| self.peers.get(id).is_some_and(|e| e.connections == 0))
            .copied()
            .collect();
        due.into_iter()
            .filter_map(|id| self.take_dial_if_due(id, now))
            .collect()
    }

    /// Peers that became unreachable (last connection closed, redial
    /// failed) since the last call: the caller tells SWIM they are dead.
    pub fn take_unreachable(&mut self) -> Vec<PeerId> {
        std::mem::take(&mut self.unreachable)
    }

    /// Periodic housekeeping: silent peers go down, long-down peers are
    /// forgotten, unverified ones dropped when spent, due redials returned.
    pub fn tick(&mut self, now: Instant) -> Vec<Dial> {
        let Timing {
            down_after,
            forget_after,
            ..
        } = self.timing;
        let mut forget = Vec::new();
        for (id, e) in self.peers.iter_mut() {
            if !e.verified {
                let expired = now.saturating_duration_since(e.created) >= UNVERIFIED_TTL;
                if expired || (e.spent() && e.next_dial <= now) {
                    tracing::debug!(peer = %id, "dropping a peer that never connected");
                    forget.push(*id);
                }
                continue;
            }
            match e.state {
                State::Up if !e.heard_recently(now, down_after) => {
                    set_state(*id, e, State::Down(DownReason::Silent), now);
                    self.dirty = true;
                    if e.connections > 0 {
                        self.silenced.push(*id);
                    }
                }
                State::Down(_) | State::Joining
                    if now.saturating_duration_since(e.state_since) >= forget_after =>
                {
                    // Long down, or a connection that never produced an
                    // announcement.
                    tracing::info!(peer = %id, "forgetting peer that has been down for {:?}", forget_after);
                    forget.push(*id);
                }
                _ => {}
            }
        }
        for id in forget {
            self.remove(id);
            self.dirty = true;
        }
        self.refresh_active();
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, e)| e.dialable() && e.next_dial <= now)
            .map(|(id, _)| *id)
            .collect();
        due.into_iter()
            .filter_map(|id| self.take_dial_if_due(id, now))
            .collect()
    }

    /// Whether this peer makes this round's redial of `peer`, a member
    /// the whole mesh holds down (see [`Self::take_dial`]): with
    /// probability `share` (see [`redial_share`]); a round skipped waits
    /// like one made (the backoff grows).
    fn redials_down(&mut self, peer: &PeerId, share: f64, now: Instant) -> bool {
        use rand::Rng;
        let Some(e) = self.peers.get_mut(peer) else {
            return false;
        };
        if self.rng.gen_bool(share) {
            return true;
        }
        e.next_dial = now + e.backoff;
        e.backoff = (e.backoff * 2).min(DIAL_BACKOFF_MAX);
        false
    }

    /// When [`Membership::tick`] next has something to do: a peer's
    /// silence reaching `down_after`, a down peer to forget, an unverified
    /// one to drop, a redial due. O(peers); the caller asks once per round,
    /// not per event.
    pub fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let Timing {
            down_after,
            forget_after,
            ..
        } = self.timing;
        self.peers
            .iter()
            .flat_map(|(id, e)| {
                let state = match e.state {
                    _ if !e.verified => Some(e.created + UNVERIFIED_TTL),
                    // SWIM decides when a vouched peer is down.
                    State::Up if e.vouched => None,
                    State::Up => Some(e.last_heard.map_or(now, |t| t + down_after)),
                    State::Down(_) | State::Joining => Some(e.state_since + forget_after),
                };
                // Members up outside the active view are not dialled (see
                // `take_dial_if_due`): their dial is never due, whatever
                // `next_dial` says.
                let idle = e.verified && e.state == State::Up && !self.active.contains(id);
                let dial = ((e.dialable() || e.spent()) && !idle).then_some(e.next_dial);
                state.into_iter().chain(dial)
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

    /// Counts of what was refused, by kind, since the start.
    pub fn refusals(&self) -> impl Iterator<Item = (Refusal, u64)> + '_ {
        Refusal::ALL.into_iter().zip(self.refused.iter().copied())
    }

    /// Entries in the table: (verified, unverified).
    pub fn sizes(&self) -> (usize, usize) {
        let unverified = self.unverified.len();
        (self.peers.len() - unverified, unverified)
    }

    fn refuse(&mut self, r: Refusal) {
        let i = Refusal::ALL.iter().position(|x| *x == r).expect("listed");
        self.refused[i] += 1;
        REFUSED
            .get_or_create(&ReasonLabel { reason: r.as_str() })
            .inc();
    }

    /// Makes room for a new unverified entry, or says why there is none.
    fn admit_unverified(&mut self, peer: PeerId, now: Instant) -> Result<(), AnnounceError> {
        if self.unverified.len() >= MAX_UNVERIFIED && !self.evict_spent_unverified() {
            self.refuse(Refusal::UnverifiedFull);
            return Err(AnnounceError::UnverifiedFull);
        }
        if self.peers.len() >= MAX_PEERS {
            self.refuse(Refusal::TableFull);
            return Err(AnnounceError::Full);
        }
        self.insert(peer, Entry::new(peer, now));
        self.unverified.push(peer);
        Ok(())
    }

    /// Drops the oldest unverified entry that may not be dialled again.
    fn evict_spent_unverified(&mut self) -> bool {
        let spent = self
            .unverified
            .iter()
            .copied()
            .find(|p| self.peers.get(p).is_some_and(|e| e.spent()));
        spent.inspect(|p| self.remove(*p)).is_some()
    }

    /// Makes room for a peer that connected: when the table is full, an
    /// unverified entry goes first, else the unconnected entry that
    /// matters least (never announced, then the longest gone). False only
    /// when every entry is connected.
    fn admit_connected(&mut self) -> bool {
        if self.peers.len() < MAX_PEERS {
            return true;
        }
        let victim = self.unverified.first().copied().or_else(|| {
            self.peers
                .iter()
                .filter(|(_, e)| e.connections == 0)
                .min_by_key(|(_, e)| (e.version.is_some(), e.state == State::Up, e.state_since))
                .map(|(id, _)| *id)
        });
        let Some(victim) = victim else {
            self.refuse(Refusal::TableFull);
            return false;
        };
        tracing::debug!(peer = %victim, "table full: dropping an unconnected peer for one that connected");
        self.remove(victim);
        true
    }

    /// Every entry enters the table here (see [`Self::added`]).
    fn insert(&mut self, peer: PeerId, e: Entry) {
        self.added += 1;
        self.peers.insert(peer, e);
    }

    /// Every entry leaves the table here (see [`Self::removed`]).
    fn remove(&mut self, peer: PeerId) {
        self.removed += 1;
        self.links_cache.get_mut().remove(&peer);
        if let Some(e) = self.peers.remove(&peer)
            && !e.verified
        {
            self.unverified.retain(|p| *p != peer);
        }
    }

    /// The dial `peer` is due, if any: its confirmed addresses and the
    /// claimed ones whose budget allows. Moves its next dial on (with
    /// backoff) whenever one was due, dialled or not.
    fn take_dial_if_due(&mut self, peer: PeerId, now: Instant) -> Option<Dial> {
        self.take_dial(peer, false, now)
    }

    /// [`Self::take_dial_if_due`], for a link the other peer chose too
    /// (`chose_us`, see [`Self::on_disconnected`]) if so.
    fn take_dial(&mut self, peer: PeerId, chose_us: bool, now: Instant) -> Option<Dial> {
        let e = self.peers.get(&peer)?;
        if !e.dialable() || e.next_dial > now {
            return None;
        }
        let held_down = e.verified && matches!(e.state, State::Down(_)) && !e.vouched;
        // Members up are dialled to keep the active view (this peer's, or
        // a link another peer chose) only; the rest are reached on demand
        // (a job, a probe), by whatever needs them. Down ones are
        // redialled with backoff as ever (a restarted peer is found again
        // without help).
        if !chose_us && e.verified && e.state == State::Up && !self.in_active_view(&peer) {
            return None;
        }
        // A member the whole mesh holds down: this peer makes its share of
        // the mesh's redials, whatever asked for this one (a round come
        // due, or its announcement: a restarted peer's first one reaches
        // the whole mesh within 0.1 s, and with every peer whose round
        // had come due dialling it then, one restarted peer of 150 took 34
        // connections in its first 0.2 s, another 113). Anything else is
        // dialled as it comes due: a member unreachable from here that
        // SWIM holds alive is this peer's own problem (a route, a
        // firewall), and nobody else will redial it for this peer.
        if !chose_us && held_down {
            let up = self.peers.values().filter(|e| e.state == State::Up).count();
            if !self.redials_down(&peer, redial_share(up), now) {
                return None;
            }
        }
        let Membership {
            peers,
            claimed,
            discovery,
            reconnect,
            ..
        } = self;
        let e = peers.get_mut(&peer)?;
        if !e.verified && e.dials == 0 && !discovery.allow(&(), now) {
            e.next_dial = now + DISCOVERY_RETRY;
            self.refuse(Refusal::DiscoveryRate);
            return None;
        }
        if e.verified && matches!(e.state, State::Down(_)) && !reconnect.allow(&(), now) {
            // Its turn comes when the budget refills (no refusal counted:
            // nobody asked for anything).
            e.next_dial = now + DISCOVERY_RETRY;
            return None;
        }
        e.next_dial = now + e.backoff;
        e.backoff = (e.backoff * 2).min(DIAL_BACKOFF_MAX);
        let mut addrs = e.confirmed.clone();
        let mut held_back = 0;
        for a in e.addrs.iter().filter(|a| !e.confirmed.contains(a)) {
            if claimed.take(a, now) {
                addrs.push(a.clone());
            } else {
                held_back += 1;
            }
        }
        if !e.verified {
            // Counted whether or not an address was left: an unverified
            // entry with nothing to dial is as spent as a dialled one.
            e.dials = if addrs.is_empty() {
                UNVERIFIED_DIALS
            } else {
                e.dials + 1
            };
        }
        tracing::debug!(%peer, state = ?e.state, vouched = e.vouched, verified = e.verified, chose_us, addrs = addrs.len(), "dial");
        let dial = (!addrs.is_empty()).then_some(Dial { peer, addrs });
        for _ in 0..held_back {
            self.refuse(Refusal::ClaimedAddress);
        }
        dial
    }

    /// Peers that are up, with their addresses: what we tell a newcomer.
    pub fn up_peers(&self) -> Vec<(PeerId, Vec<Multiaddr>)> {
        self.peers
            .iter()
            .filter(|(_, e)| e.state == State::Up)
            .map(|(id, e)| (*id, e.addrs.clone()))
            .collect()
    }

    /// Where to reach the members this peer knows, for dials by peer id
    /// (jobs, SWIM messages), which no claimed-address budget limits: the
    /// addresses this peer confirmed by connecting, and those a member
    /// SWIM vouches for announced in its own signed record. Addresses of
    /// anyone else are claims, dialled by membership within their budget
    /// only (see the module docs).
    pub fn address_book(&self) -> HashMap<PeerId, Vec<Multiaddr>> {
        self.peers
            .iter()
            .filter_map(|(id, e)| {
                let mut addrs = e.confirmed.clone();
                if e.vouched {
                    addrs.extend(e.addrs.iter().filter(|a| !e.confirmed.contains(a)).cloned());
                }
                (!addrs.is_empty()).then_some((*id, addrs))
            })
            .collect()
    }

    /// The incarnation of the announcement this peer holds of `id`, if any.
    pub fn held_incarnation(&self, id: &PeerId) -> Option<u64> {
        self.peers
            .get(id)?
            .version
            .map(|(incarnation, _)| incarnation)
    }

    /// Whether the record of `id` just taken from a member list is to be
    /// passed on to the gossip mesh: it is the first this peer holds of
    /// `id`'s incarnation (`held` is the incarnation held before it was
    /// taken), and `id` started after this peer
    /// (`own_incarnation`) and less than [`RELAY_FRESH`] ago, by the
    /// incarnation (start time, unix ms) its record carries.
    ///
    /// A newcomer publishes its announcement while it knows only its
    /// bootstrap peer and the peers that bootstrap from it: newcomers
    /// themselves, whose gossip meshes hold nobody but each other yet
    /// (gossipsub builds a peer's mesh from the first peers that subscribe,
    /// and first mends it at its first heartbeat). Seen in a 150-peer
    /// chain: a newcomer's announcement reached two peers in its first 6 s,
    /// while the peers it dialled had fetched its record from it within
    /// half a second. Passed on by the first of them, it is a gossip
    /// message like the author's (the same bytes, so the same message id):
    /// every peer takes it once, and copies that meet are dropped as
    /// duplicates. Records of members that started before this peer are not
    /// passed on: a newcomer fetches the whole mesh's, which everyone
    /// holds (passing on the freshest of them cost a forming 150-peer mesh
    /// 600 needless gossip messages).
    pub fn relay_fetched(
        &self,
        id: &PeerId,
        held: Option<u64>,
        own_incarnation: u64,
        now_unix_ms: u64,
    ) -> bool {
        self.peers
            .get(id)
            .and_then(|e| e.version)
            .is_some_and(|(incarnation, _)| {
                held != Some(incarnation)
                    && incarnation > own_incarnation
                    && incarnation.saturating_add(RELAY_FRESH.as_millis() as u64) >= now_unix_ms
            })
    }

    /// Whether `peer` is up (an unknown peer is not).
    pub fn is_up(&self, peer: &PeerId) -> bool {
        self.peers.get(peer).is_some_and(|e| e.state == State::Up)
    }

    /// Peers with at least one open connection now.
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

    /// The table as `/api/peers` shows it: every entry but those still
    /// joining (so no unverified one), sorted by id, with `links`
    /// turned from short ids into the full ids this peer knows.
    pub fn views(&self) -> Vec<PeerView> {
        let local = self.local.to_string();
        let mut cache = self.links_cache.borrow_mut();
        // Short ids to full ones, built only if some links must be expanded.
        let mut by_short: Option<HashMap<&str, &str>> = None;
        let mut v: Vec<PeerView> = self
            .peers
            .iter()
            .filter(|(_, e)| e.state != State::Joining)
            .map(|(peer, e)| {
                let (state, reason) = match e.state {
                    State::Up => (PeerState::Up, None),
                    State::Down(r) => (PeerState::Down, Some(r)),
                    State::Joining => unreachable!("filtered above"),
                };
                let links = match cache.get(peer) {
                    Some(c) if c.holds(&e.links, self.added, self.removed) => c.full.clone(),
                    _ => {
                        let by_short = by_short.get_or_insert_with(|| {
                            let mut m: HashMap<&str, &str> = (self.peers.values())
                                .map(|e| (short_id(&e.id), e.id.as_str()))
                                .collect();
                            m.insert(short_id(&local), &local);
                            m
                        });
                        let full: Arc<[String]> = (e.links.iter())
                            .filter_map(|l| by_short.get(l.as_str()).map(|id| id.to_string()))
                            .collect();
                        cache.insert(
                            *peer,
                            LinksCache {
                                added: self.added,
                                removed: self.removed,
                                short: e.links.clone(),
                                full: full.clone(),
                            },
                        );
                        full
                    }
                };
                PeerView {
                    id: e.id.clone(),
                    peer: Some(*peer),
                    state,
                    reason,
                    addrs: e.addrs.iter().map(|a| a.to_string()).collect(),
                    http: e.http.clone(),
                    first_seen_ms: e.first_seen_ms,
                    last_seen_ms: e.last_seen_ms,
                    since_ms: e.state_since_ms,
                    started_ms: e.version.map(|(inc, _)| inc),
                    rtt_ms: e.rtt.map(|d| (d.as_secs_f64() * 1e6).round() / 1e3),
                    connected: e.connections > 0,
                    apps: e.apps.clone(),
                    links,
                    bundles: e.bundles.clone(),
                    remote_deploy: e.remote_deploy,
                    labels: e.labels.clone(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }
}

/// The peer a record names as its author, unchecked: the signature that
/// proves it is checked by [`Membership::on_announce_bytes`].
pub fn record_author(data: &[u8]) -> Result<PeerId, AnnounceError> {
    #[derive(Deserialize)]
    struct Author {
        id: String,
    }
    let (_, json) = record::split(data)?;
    let author: Author = serde_json::from_slice(json).map_err(|e| parse_error(json, &e))?;
    author
        .id
        .parse()
        .map_err(|_| AnnounceError::Malformed(format!("bad id {}", printable(&author.id))))
}

/// Copies an announcement's fields into its entry, bounded; says what changed.
fn apply_fields(e: &mut Entry, a: &Announce) -> Change {
    let addrs_before = e.addrs.len();
    e.merge_addrs(a.listen.iter().filter_map(|s| s.parse::<Multiaddr>().ok()));
    let http = a.http.as_ref().filter(|h| h.len() <= MAX_HTTP_LEN).cloned();
    let apps: Vec<AppStatus> = if a.leaving {
        Vec::new()
    } else {
        a.apps
            .iter()
            .take(crate::mesh::desired::MAX_DESIRED)
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
    let mut change = Change {
        hard: !routine,
        soft: routine,
    };
    let links: Vec<String> = a
        .links
        .iter()
        .take(MAX_LINKS)
        .filter(|l| l.len() <= 8)
        .cloned()
        .collect();
    if e.links != links {
        e.links = links;
        change.soft = true;
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
        change.hard = true;
    }
    let labels = Labels::parse_lenient(&a.labels);
    if e.labels != labels {
        e.labels = labels;
        change.hard = true;
    }
    change
}

/// Why `data` did not parse: a version this peer does not speak (a later
/// format may change any field), or a malformed v1 announcement.
fn parse_error(data: &[u8], e: &serde_json::Error) -> AnnounceError {
    #[derive(Deserialize)]
    struct Head {
        v: u32,
    }
    match serde_json::from_slice::<Head>(data) {
        Ok(h) if h.v != ANNOUNCE_VERSION => AnnounceError::Version(h.v),
        _ => AnnounceError::Malformed(printable(&e.to_string())),
    }
}

/// Text from another peer made fit for a log line: at most 200 characters,
/// control characters replaced (serde's messages quote the input).
fn printable(s: &str) -> String {
    s.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
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
                crate::obs::metrics::METRICS
                    .peer_downs
                    .get_or_create(&crate::obs::metrics::ReasonLabel {
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
    use libp2p::identity::Keypair;

    /// A 64-byte signature that checks for nobody, in front of `json`: for
    /// what is refused before any signature is checked.
    fn unsigned(json: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; record::SIG_LEN];
        b.extend_from_slice(json);
        b
    }

    /// A peer with a real key, whose records can be signed.
    fn keyed() -> (Keypair, PeerId) {
        let k = Keypair::generate_ed25519();
        let id = k.public().to_peer_id();
        (k, id)
    }

    fn sealed(k: &Keypair, a: &impl Serialize) -> Vec<u8> {
        record::seal(k, &serde_json::to_vec(a).unwrap()).unwrap()
    }

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
            labels: Vec::new(),
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
            .map(|v| (v.state.to_string(), v.reason.map(|r| r.to_string())))
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
        assert!(dial.is_none(), "SWIM may vouch for it first");
        assert!(
            m.tick(t0 + VOUCH_GRACE - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(m.next_deadline(t0), Some(t0 + VOUCH_GRACE));
        let dials = m.tick(t0 + VOUCH_GRACE);
        assert_eq!(dials.len(), 1);
        assert_eq!(dials[0].peer, p, "an unconnected announcer is dialled");
        assert_eq!(state_of(&m, p), None, "joining peers are hidden");
        m.on_connected(p, None, t0);
        assert_eq!(state_of(&m, p), up());
        // Its connection closes: redial at once, still up meanwhile.
        let redial = m.on_disconnected(p, 0, false, t0);
        assert!(redial.is_some());
        assert_eq!(state_of(&m, p), up());
        m.on_dial_failed(p, t0);
        assert_eq!(state_of(&m, p), down("unreachable"));
    }

    /// A membership with one member, connected at a confirmed address,
    /// alive in SWIM, in the active view.
    fn with_a_neighbour(t0: Instant) -> (Membership, PeerId) {
        let mut m = Membership::new(PeerId::random(), timing());
        let p = connected(&mut m, t0);
        m.on_connected(p, Some(addr(4001)), t0);
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        m.refresh_active();
        (m, p)
    }

    #[test]
    fn a_redial_that_times_out_is_a_doubt_for_swim_not_a_death() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        assert!(m.on_disconnected(p, 1, false, t0).is_none());
        assert!(m.on_disconnected(p, 0, false, t0).is_some(), "redialled");
        // The redial times out (a live peer under load looks the same):
        // still up here, nothing declared dead, SWIM asked to suspect it.
        m.on_dial_inconclusive(p, t0);
        assert_eq!(state_of(&m, p), up());
        assert!(m.take_unreachable().is_empty());
        assert_eq!(m.take_doubted(), vec![p]);
        assert!(m.take_doubted().is_empty());
        // SWIM's verdict decides: the redial no longer holds it back.
        m.on_swim(&swim_view(&[(p, SwimStatus::Dead)]), t0);
        assert_eq!(state_of(&m, p), Some(("down".into(), Some("dead".into()))));
        // A peer never reached: dropped as after any failed dial.
        let stranger = PeerId::random();
        m.on_hint(stranger, vec![addr(9)], t0);
        for _ in 0..UNVERIFIED_DIALS {
            m.on_dial_inconclusive(stranger, t0);
        }
        assert!(m.take_doubted().is_empty());
    }

    #[test]
    fn redials_of_many_down_members_are_bounded_and_a_lone_one_is_not_held_back() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let down: Vec<PeerId> = (0..100)
            .map(|i| {
                let p = PeerId::random();
                m.on_connected(p, Some(addr(5000 + i)), t0);
                m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
                m.on_disconnected(p, 0, false, t0);
                m.on_dial_failed(p, t0);
                p
            })
            .collect();
        assert!(down.iter().all(|p| !m.is_up(p)));
        let mut dials = 0;
        let mut t = t0;
        for _ in 0..40 {
            t += Duration::from_millis(250);
            dials += m.tick(t).len();
        }
        // 10 s: the burst and one a second, not 100 every few seconds.
        let most = (RECONNECT_DIAL_BURST + 10 * RECONNECT_DIAL_RATE) as usize;
        assert!(dials > 0, "down members are still redialled");
        assert!(dials <= most, "{dials} redials in 10 s, at most {most}");
        // Those the budget put off are due later, not at once (housekeeping
        // would spin on them).
        assert!(m.next_deadline(t).is_some_and(|d| d > t));
        // One member down alone: redialled on its own backoff.
        let mut m = Membership::new(PeerId::random(), timing());
        let p = PeerId::random();
        m.on_connected(p, Some(addr(4001)), t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        m.on_disconnected(p, 0, false, t0);
        m.on_dial_failed(p, t0);
        let mut t = t0;
        let mut dials = 0;
        for _ in 0..40 {
            t += Duration::from_millis(250);
            dials += m.tick(t).len();
        }
        assert!(
            dials >= 3,
            "a lone down member redialled {dials} times in 10 s"
        );
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
        assert_eq!(m.on_disconnected(p, 0, false, t0), None);
        // Stale and same-incarnation messages do not resurrect it, nor
        // have it dialled.
        assert_eq!(m.on_announce(p, &announce(p, 1, 4, false), t0), Ok(None));
        assert_eq!(m.on_announce(p, &announce(p, 1, 7, false), t0), Ok(None));
        assert_eq!(state_of(&m, p), down("left"));
        // A connection from it (before its goodbye is old) does not either.
        m.on_connected(p, None, t0);
        assert_eq!(state_of(&m, p), down("left"));
        m.on_disconnected(p, 0, false, t0);
        // A restart (new incarnation) is dialled at once and comes back.
        let dial = m.on_announce(p, &announce(p, 2, 1, false), t0).unwrap();
        assert!(dial.is_some());
        m.on_connected(p, None, t0);
        assert_eq!(state_of(&m, p), up());
    }

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn down_peers_are_redialled_with_backoff_then_forgotten() {
        let me = PeerId::random();
        let p = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        // Dialled and reached at its address once: that address is
        // confirmed, so it is redialled for as long as the peer is known.
        m.on_connected(p, Some(addr(4001)), t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
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
        // Gaps grow from DIAL_BACKOFF_MIN, then cap at DIAL_BACKOFF_MAX.
        let gaps: Vec<u128> = dial_times.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= DIAL_BACKOFF_MIN.as_millis(), "{gaps:?}");
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
        let (k, p) = keyed();
        let (ko, other) = keyed();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        // Signed by its author, but relayed by another as its own.
        let bytes = sealed(&ko, &announce(other, 1, 1, false));
        assert!(matches!(
            m.on_announce_bytes(p, &bytes, t0),
            Err(AnnounceError::WrongId { .. })
        ));
        assert!(matches!(
            m.on_announce_bytes(p, &unsigned(b"{not json"), t0),
            Err(AnnounceError::Malformed(_))
        ));
        let mut a = announce(p, 1, 1, false);
        a.v = 99;
        assert_eq!(
            m.on_announce_bytes(p, &sealed(&k, &a), t0),
            Err(AnnounceError::Version(99))
        );
        // Not signed, signed by another key, too short to be signed:
        // refused, and invalid whoever relayed it.
        let good = announce(p, 1, 1, false);
        for bytes in [
            unsigned(&serde_json::to_vec(&good).unwrap()),
            sealed(&ko, &good),
            b"{}".to_vec(),
        ] {
            let err = m.on_announce_bytes(p, &bytes, t0).unwrap_err();
            assert!(
                matches!(err, AnnounceError::Record(_)) && err.is_invalid(),
                "{err}"
            );
        }
        assert!(m.views().is_empty(), "nothing was taken");
        // Unknown extra fields are fine (forward compatibility).
        let mut v = serde_json::to_value(announce(p, 1, 1, false)).unwrap();
        v["some_future_field"] = serde_json::json!([{"name": "x"}]);
        assert!(m.on_announce_bytes(p, &sealed(&k, &v), t0).is_ok());
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
    fn a_gossiped_record_is_taken_as_its_named_author_only_if_that_author_signed_it() {
        // Gossip carries no author of its own: the record names one, and
        // only that author's signature makes it count.
        let me = PeerId::random();
        let (k, p) = keyed();
        let (ko, other) = keyed();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        let genuine = sealed(&k, &announce(p, 1, 1, false));
        assert_eq!(record_author(&genuine), Ok(p));
        // Another key signs a record naming p: named p, refused as p's.
        let forged = sealed(&ko, &announce(p, 1, 2, false));
        assert_eq!(record_author(&forged), Ok(p));
        let err = m.on_announce_bytes(p, &forged, t0).unwrap_err();
        assert!(
            matches!(err, AnnounceError::Record(_)) && err.is_invalid(),
            "{err}"
        );
        assert!(m.views().is_empty(), "the forgery was not taken");
        assert!(m.on_announce_bytes(p, &genuine, t0).is_ok());
        assert_ne!(record_author(&genuine), Ok(other));
        // No author to name: too short, not JSON, an id that is no id.
        for bytes in [
            b"{}".to_vec(),
            unsigned(b"{not json"),
            sealed(&k, &serde_json::json!({"id": "nobody"})),
        ] {
            let err = record_author(&bytes).unwrap_err();
            assert!(err.is_invalid(), "{err}");
        }
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

    fn dials_to(dials: &[Dial], a: &Multiaddr) -> usize {
        dials.iter().filter(|d| d.addrs.contains(a)).count()
    }

    /// Ticks every 100 ms from `from` for `span`, failing every dial;
    /// returns the dials made.
    fn run_failing(m: &mut Membership, from: Instant, span: Duration) -> Vec<Dial> {
        let mut all = Vec::new();
        let mut t = from;
        while t < from + span {
            for d in m.tick(t) {
                m.on_dial_failed(d.peer, t);
                all.push(d);
            }
            t += Duration::from_millis(100);
        }
        all
    }

    #[test]
    fn unverified_peers_are_hidden_dialled_a_few_times_then_dropped() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        // A hint whose dials all fail: dropped after its last one.
        let p = PeerId::random();
        let first = m.on_hint(p, vec![addr(5000)], t0).expect("dialled at once");
        m.on_dial_failed(p, t0);
        assert_eq!(state_of(&m, p), None, "never shown");
        let later = run_failing(&mut m, t0, Duration::from_secs(20));
        assert_eq!(
            1 + later.len(),
            UNVERIFIED_DIALS as usize,
            "{first:?} {later:?}"
        );
        assert_eq!(m.sizes(), (0, 0), "dropped after its last dial failed");
        // One whose dials never report back: dropped all the same.
        let q = PeerId::random();
        assert!(
            m.on_announce(q, &announce(q, 1, 1, false), t0)
                .unwrap()
                .is_none()
        );
        let mut dials = 0;
        let mut t = t0;
        while t < t0 + UNVERIFIED_TTL {
            dials += m.tick(t).len();
            t += Duration::from_millis(100);
        }
        assert!(dials <= UNVERIFIED_DIALS as usize, "{dials} dials");
        assert_eq!(m.sizes(), (0, 0));
        assert!(m.views().is_empty());
        // A later announcement of the same peer is not a reason to flood:
        // its claimed address has spent its budget.
        m.on_announce(q, &announce(q, 1, 2, false), t).unwrap();
        assert!(m.tick(t).is_empty());
    }

    #[test]
    fn a_claimed_address_is_dialled_a_few_times_whoever_claims_it() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let victim = addr(9);
        let mut dials = Vec::new();
        // Throwaway ids, a few a second, all naming the same third party.
        let mut t = t0;
        for _ in 0..200 {
            let p = PeerId::random();
            dials.extend(m.on_hint(p, vec![victim.clone(), addr(9999)], t));
            dials.extend(run_failing(&mut m, t, Duration::from_millis(300)));
            t += Duration::from_millis(300);
        }
        assert_eq!(
            dials_to(&dials, &victim),
            CLAIMED_ADDR_DIALS as usize,
            "in {:?}",
            t - t0
        );
        assert!(
            m.refusals()
                .any(|(r, n)| r == Refusal::ClaimedAddress && n > 0)
        );
        assert!(m.sizes().1 <= MAX_UNVERIFIED);
        // A new window, a few more.
        let t = t0 + CLAIMED_ADDR_WINDOW + Duration::from_secs(1);
        let mut again = Vec::new();
        for i in 0..10 {
            let at = t + Duration::from_secs(i);
            again.extend(m.on_hint(PeerId::random(), vec![victim.clone()], at));
            again.extend(run_failing(&mut m, at, Duration::from_secs(1)));
        }
        assert_eq!(dials_to(&again, &victim), CLAIMED_ADDR_DIALS as usize);
    }

    #[test]
    fn unverified_entries_are_bounded_and_spent_ones_make_room() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let mut refused = 0;
        for i in 0..(MAX_UNVERIFIED + 50) {
            let (k, p) = keyed();
            let mut a = announce(p, 1, 1, false);
            a.listen = vec![addr(6000 + i as u16).to_string()];
            let a = sealed(&k, &a);
            match m.on_announce_bytes(p, &a, t0) {
                Ok(_) => {}
                Err(e) => {
                    assert_eq!(e, AnnounceError::UnverifiedFull);
                    assert!(
                        !e.is_invalid(),
                        "a full table is ours, not the relay's fault"
                    );
                    refused += 1;
                }
            }
        }
        assert_eq!(m.sizes(), (0, MAX_UNVERIFIED));
        assert_eq!(refused, 50);
        let counted = m.refusals().find(|(r, _)| *r == Refusal::UnverifiedFull);
        assert_eq!(counted, Some((Refusal::UnverifiedFull, 50)));
        // Every one has spent its dials (or had nothing left to dial):
        // newcomers may take their places.
        run_failing(&mut m, t0, Duration::from_secs(10));
        let p = PeerId::random();
        assert!(
            m.on_announce(p, &announce(p, 1, 1, false), t0 + Duration::from_secs(10))
                .is_ok()
        );
    }

    #[test]
    fn a_spent_unverified_entry_is_evicted_for_a_new_one() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let first = PeerId::random();
        m.on_hint(first, vec![addr(1)], t0);
        for i in 0..(MAX_UNVERIFIED - 1) {
            m.on_hint(PeerId::random(), vec![addr(100 + i as u16)], t0);
        }
        assert!(m.on_hint(PeerId::random(), vec![addr(99)], t0).is_none());
        assert_eq!(m.sizes().1, MAX_UNVERIFIED);
        // `first` dials its last time (its failure not reported yet).
        for t in [500, 1500].map(|ms| t0 + Duration::from_millis(ms)) {
            m.tick(t);
        }
        assert!(m.peers[&first].spent());
        let p = PeerId::random();
        m.on_hint(p, vec![addr(2)], t0 + Duration::from_millis(1600));
        assert_eq!(m.sizes().1, MAX_UNVERIFIED);
        assert!(
            !m.peers.contains_key(&first),
            "the oldest spent one made room"
        );
        assert!(m.peers.contains_key(&p));
    }

    #[test]
    fn first_dials_of_new_peers_are_rate_limited() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let dialled = (0..MAX_UNVERIFIED)
            .filter_map(|i| m.on_hint(PeerId::random(), vec![addr(2000 + i as u16)], t0))
            .count();
        assert_eq!(dialled, DISCOVERY_DIAL_BURST as usize);
        assert_eq!(m.sizes().1, MAX_UNVERIFIED, "held back, not refused");
        let counted = m.refusals().find(|(r, _)| *r == Refusal::DiscoveryRate);
        assert_eq!(counted.map(|(_, n)| n), Some(32));
        assert_eq!(
            m.next_deadline(t0),
            Some(t0 + DISCOVERY_RETRY),
            "tried again soon"
        );
        // Then DISCOVERY_DIAL_RATE a second (dialled entries excluded).
        let later = m.tick(t0 + Duration::from_secs(1));
        let fresh = later.iter().filter(|d| m.peers[&d.peer].dials == 1).count();
        assert_eq!(fresh, DISCOVERY_DIAL_RATE as usize, "{later:?}");
    }

    /// A peer that connected to us (inbound) and announced.
    fn swim_view(entries: &[(PeerId, SwimStatus)]) -> HashMap<PeerId, SwimStatus> {
        entries.iter().copied().collect()
    }

    #[test]
    fn swim_decides_liveness_of_the_members_it_vouches_for() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        let q = connected(&mut m, t0);
        assert_eq!(state_of(&m, p), up());
        m.on_swim(
            &swim_view(&[(p, SwimStatus::Alive), (q, SwimStatus::Suspect)]),
            t0,
        );
        // Vouched for: up long after anything was heard, no deadline.
        let later = t0 + timing().down_after * 10;
        m.tick(later);
        assert_eq!(state_of(&m, p), up());
        assert_eq!(state_of(&m, q), up());
        // Declared dead: down at once, as `dead`, connections to close.
        m.on_swim(
            &swim_view(&[(p, SwimStatus::Dead), (q, SwimStatus::Alive)]),
            later,
        );
        assert_eq!(state_of(&m, p), Some(("down".into(), Some("dead".into()))));
        assert_eq!(m.take_silenced(), vec![p]);
        assert_eq!(state_of(&m, q), up());
        // Alive again (it refuted): up again.
        m.on_swim(
            &swim_view(&[(p, SwimStatus::Alive), (q, SwimStatus::Alive)]),
            later,
        );
        assert_eq!(state_of(&m, p), up());
        // No longer in SWIM's view: the silence rule applies again, from now.
        m.on_swim(&swim_view(&[]), later);
        assert_eq!(state_of(&m, p), up());
        m.tick(later + timing().down_after);
        assert_eq!(
            state_of(&m, p),
            Some(("down".into(), Some("silent".into())))
        );
    }

    #[test]
    fn a_member_swim_knew_before_it_connected_is_vouched_for() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = PeerId::random();
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        m.on_connected(p, None, t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        assert_eq!(state_of(&m, p), up());
        m.tick(t0 + timing().down_after * 10);
        assert_eq!(state_of(&m, p), up(), "no announcement needed to stay up");
    }

    #[test]
    fn a_member_announced_before_swim_vouched_for_it_is_up_once_swim_does() {
        // In a large mesh a newcomer's announcement (gossipsub) often
        // arrives before its signed "alive" (SWIM): the entry starts
        // unverified, and SWIM's word must make it a member like any other.
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let (k, p) = keyed();
        m.on_announce_bytes(p, &sealed(&k, &announce(p, 1, 1, false)), t0)
            .unwrap();
        assert_eq!(m.sizes(), (0, 1), "unverified until SWIM vouches");
        let t1 = t0 + Duration::from_millis(300);
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t1);
        assert_eq!(state_of(&m, p), up());
        assert_eq!(m.sizes(), (1, 0), "no longer counted as unverified");
        m.tick(t1 + timing().down_after * 10);
        assert_eq!(state_of(&m, p), up(), "vouched: no announcement needed");
    }

    #[test]
    fn a_relayed_announcement_is_dialled_after_a_grace_unless_swim_vouches_first() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let (k, p) = keyed();
        let mut a = announce(p, 1, 1, false);
        a.listen = vec![addr(7100).to_string()];
        let dial = m.on_announce_bytes(p, &sealed(&k, &a), t0).unwrap().0;
        assert!(dial.is_none(), "not dialled at once");
        let t1 = t0 + VOUCH_GRACE / 2;
        assert!(m.tick(t1).is_empty(), "nor before the grace");
        // SWIM vouches meanwhile: a member like any other, dialled now
        // because a mesh this small keeps everyone in its active view.
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t1);
        m.refresh_active();
        assert!(m.is_active(&p));
        let dials = m.tick(t1);
        assert_eq!(dials.len(), 1, "{dials:?}");
        assert_eq!(dials[0].peer, p);
    }

    /// `n` members vouched for by SWIM, announced by signed records, never
    /// connected here.
    fn vouched_members(m: &mut Membership, n: usize, t: Instant) -> Vec<PeerId> {
        let keys: Vec<(Keypair, PeerId)> = (0..n).map(|_| keyed()).collect();
        let view: Vec<(PeerId, SwimStatus)> =
            keys.iter().map(|(_, p)| (*p, SwimStatus::Alive)).collect();
        m.on_swim(&swim_view(&view), t);
        for (i, (k, p)) in keys.iter().enumerate() {
            let mut a = announce(*p, 1, 1, false);
            a.listen = vec![addr(7000 + i as u16).to_string()];
            m.on_record(&sealed(k, &a), t).unwrap();
        }
        keys.into_iter().map(|(_, p)| p).collect()
    }

    #[test]
    fn a_member_down_here_that_swim_holds_alive_has_its_record_fetched() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        assert_eq!(state_of(&m, p), up());
        assert!(m.missing_records().is_empty());
        // Killed: its connection closes and the redial is refused.
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        m.on_dial_failed(p, t0);
        let unreachable = Some(("down".into(), Some("unreachable".into())));
        assert_eq!(state_of(&m, p), unreachable);
        m.on_swim(&swim_view(&[(p, SwimStatus::Dead)]), t0);
        assert!(m.missing_records().is_empty(), "dead: nothing to fetch");
        // Restarted: SWIM holds its new incarnation alive, but the record
        // held here is its old one, which does not bring it up. Fetched.
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        assert_eq!(state_of(&m, p), unreachable);
        assert_eq!(m.missing_records(), vec![p]);
    }

    #[test]
    fn a_member_found_unreachable_is_up_on_swims_word_for_a_newer_run_only() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        let inc = m.peers[&p].version.expect("announced").0;
        // Killed: its connection closes, the redial is refused, and SWIM
        // declares it dead.
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        m.on_dial_failed(p, t0);
        m.on_swim(&swim_view(&[(p, SwimStatus::Dead)]), t0);
        let unreachable = Some(("down".into(), Some("unreachable".into())));
        assert_eq!(state_of(&m, p), unreachable);
        // SWIM calling the run found unreachable here alive (a rogue's or
        // a stale word) does not override this peer's own evidence.
        let t1 = t0 + Duration::from_millis(300);
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t1);
        assert_eq!(state_of(&m, p), unreachable);
        m.on_swim(&swim_view(&[(p, SwimStatus::Dead)]), t1);
        // Restarted: its new record arrives first (gossip outruns SWIM's
        // news of it), then SWIM's word for it.
        m.on_announce(p, &announce(p, inc + 1, 1, false), t1)
            .unwrap();
        assert_eq!(state_of(&m, p), unreachable);
        let t2 = t1 + Duration::from_secs(1);
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t2);
        assert_eq!(state_of(&m, p), up());
    }

    /// A member this peer was connected to (its address confirmed, so
    /// every dial has an address to go to), among 60 others SWIM holds
    /// alive: its connection just closed (redial out), and SWIM says
    /// `swim` of it.
    fn neighbour_lost_among_60(t0: Instant, swim: SwimStatus) -> (Membership, PeerId) {
        let (mut m, p) = with_a_neighbour(t0);
        let members = vouched_members(&mut m, 60, t0);
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        let mut view: Vec<(PeerId, SwimStatus)> =
            members.iter().map(|q| (*q, SwimStatus::Alive)).collect();
        view.push((p, swim));
        m.on_swim(&swim_view(&view), t0);
        (m, p)
    }

    #[test]
    fn a_down_members_announcement_makes_only_this_peers_share_of_the_redials() {
        let t0 = Instant::now();
        let (mut m, gone) = neighbour_lost_among_60(t0, SwimStatus::Dead);
        m.on_dial_inconclusive(gone, t0);
        assert_eq!(state_of(&m, gone), down("dead"));
        // Its restarts' first announcements, each when its round is due
        // (every peer of the mesh takes each one within 0.1 s).
        let rounds = 400u32;
        let dials = (1..=rounds)
            .filter(|i| {
                let t = t0 + DIAL_BACKOFF_MAX * 2 * *i;
                let a = announce(gone, 1 + u64::from(*i), 1, false);
                m.on_announce(gone, &a, t).unwrap().is_some()
            })
            .count();
        // Expected 20 (3 in 60); with every announcement dialled, 400.
        assert!((5..=60).contains(&dials), "{dials} dials of {rounds}");
        // A goodbye and a restart: the same share.
        let mut dials = 0;
        for i in 0..rounds {
            let t = t0 + DIAL_BACKOFF_MAX * 2 * (rounds + 2 * i);
            let inc = 1000 + 2 * u64::from(i);
            m.on_announce(gone, &announce(gone, inc, 1, true), t)
                .unwrap();
            assert_eq!(state_of(&m, gone), down("left"));
            let t = t + DIAL_BACKOFF_MAX * 2;
            dials += usize::from(
                m.on_announce(gone, &announce(gone, inc + 1, 1, false), t)
                    .unwrap()
                    .is_some(),
            );
        }
        assert!(
            (5..=60).contains(&dials),
            "{dials} dials of {rounds} after goodbyes"
        );
    }

    #[test]
    fn a_member_unreachable_from_here_only_is_redialled_at_every_round() {
        let t0 = Instant::now();
        // Its redial refused: unreachable from here, while SWIM (the mesh)
        // holds the same run alive.
        let (mut m, p) = neighbour_lost_among_60(t0, SwimStatus::Alive);
        m.on_dial_failed(p, t0);
        assert_eq!(state_of(&m, p), down("unreachable"));
        // Nobody else redials it for this peer: every round is made (the
        // mesh's share, 3 in 60, would make about 1 of 12), until it is
        // forgotten.
        let rounds = 12u32;
        let step = DIAL_BACKOFF_MAX + Duration::from_millis(100);
        assert!(step * rounds < timing().forget_after);
        let made = (1..=rounds)
            .filter(|i| {
                let t = t0 + step * *i;
                m.tick(t).iter().any(|d| d.peer == p)
            })
            .count();
        assert_eq!(made, rounds as usize);
    }

    #[test]
    fn a_neighbours_closed_connection_is_redialled_at_once_in_a_large_mesh() {
        let t0 = Instant::now();
        let mut m = Membership::new(PeerId::random(), timing());
        // A neighbour SWIM does not vouch for (yet), among 60 members it
        // does: its redial decides whether it is down, so it is always
        // made, whatever the redial share of members held down says.
        let p = connected(&mut m, t0);
        m.on_connected(p, Some(addr(4001)), t0);
        vouched_members(&mut m, 60, t0);
        m.refresh_active();
        assert!(m.is_active(&p));
        for i in 0..40u32 {
            let t = t0 + Duration::from_millis(100) * i;
            assert!(m.on_disconnected(p, 0, false, t).is_some(), "round {i}");
            assert_eq!(state_of(&m, p), up());
            m.on_connected(p, Some(addr(4001)), t);
        }
    }

    #[test]
    fn a_member_that_left_is_up_on_swims_word_for_a_newer_run_only() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        let inc = m.peers[&p].version.expect("announced").0;
        m.on_announce(p, &announce(p, inc, 2, true), t0).unwrap();
        assert_eq!(state_of(&m, p), down("left"));
        assert!(m.on_disconnected(p, 0, false, t0).is_none());
        // SWIM's word for the run that said goodbye changes nothing.
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        assert_eq!(state_of(&m, p), down("left"));
        // Restarted: its record, then SWIM's news of the new run.
        m.on_swim(&swim_view(&[(p, SwimStatus::Left)]), t0);
        let t1 = t0 + Duration::from_secs(1);
        m.on_announce(p, &announce(p, inc + 1, 1, false), t1)
            .unwrap();
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t1);
        assert_eq!(state_of(&m, p), up());
    }

    #[test]
    fn a_down_member_is_redialled_by_a_few_peers_of_a_large_mesh_not_by_all() {
        assert_eq!(redial_share(0), 1.0, "alone or cut off: redial everyone");
        assert_eq!(redial_share(DOWN_REDIALS_PER_ROUND), 1.0);
        assert_eq!(redial_share(150), DOWN_REDIALS_PER_ROUND as f64 / 150.0);
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let mut members = vouched_members(&mut m, 61, t0);
        let down = members.pop().unwrap();
        let mut view: Vec<(PeerId, SwimStatus)> =
            members.iter().map(|p| (*p, SwimStatus::Alive)).collect();
        view.push((down, SwimStatus::Dead));
        m.on_swim(&swim_view(&view), t0);
        assert_eq!(
            state_of(&m, down),
            Some(("down".into(), Some("dead".into())))
        );
        let share = redial_share(60);
        let trials = 6000;
        let made = (0..trials)
            .filter(|_| m.redials_down(&down, share, t0))
            .count();
        // Expected 300 (3 in 60); far from both 0 and every round.
        assert!(
            (150..=600).contains(&made),
            "{made} redial rounds of {trials}"
        );
        // A skipped round waits like a made one.
        assert!(m.peers[&down].next_dial > t0);
        // In a small mesh every peer redials every down member.
        let mut small = Membership::new(PeerId::random(), timing());
        let mut two = vouched_members(&mut small, 3, t0);
        let gone = two.pop().unwrap();
        let mut view: Vec<(PeerId, SwimStatus)> =
            two.iter().map(|p| (*p, SwimStatus::Alive)).collect();
        view.push((gone, SwimStatus::Dead));
        small.on_swim(&swim_view(&view), t0);
        let share = redial_share(2);
        assert!((0..100).all(|_| small.redials_down(&gone, share, t0)));
    }

    #[test]
    fn members_outside_the_active_view_set_no_deadline() {
        // They are not dialled while they stay outside it: a dial "due"
        // in the past would wake the event loop at once, forever (it ran
        // every 10 ms in an idle 60-peer mesh, at 1% CPU per peer).
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        vouched_members(&mut m, 60, t0);
        let dials = m.tick(t0);
        assert_eq!(dials.len(), active_target(61));
        let next = m.next_deadline(t0).expect("the active view's redials");
        assert!(
            next > t0 + Duration::from_millis(100),
            "next deadline {:?} after now",
            next.checked_duration_since(t0)
        );
    }

    #[test]
    fn the_active_view_is_bounded_and_only_it_is_dialled() {
        assert_eq!(
            [2, 5, 20, 150, 1000, 10_000].map(active_target),
            [4, 5, 7, 10, 12, 12]
        );
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let members = vouched_members(&mut m, 149, t0);
        // Up without any connection: SWIM vouches for them.
        let up = m
            .views()
            .iter()
            .filter(|v| v.state.to_string() == "up")
            .count();
        assert_eq!(up, 149);
        let dials = m.tick(t0);
        assert_eq!(m.active().len(), active_target(150));
        assert_eq!(
            dials.len(),
            active_target(150),
            "only the active view is dialled"
        );
        assert!(dials.iter().all(|d| m.is_active(&d.peer)));
        // A connected member goes first when the view has room again.
        let gone = m.active()[0];
        let connected = *members.iter().find(|p| !m.is_active(p)).unwrap();
        m.on_connected(connected, None, t0);
        m.on_swim(
            &swim_view(
                &members
                    .iter()
                    .map(|p| {
                        (
                            *p,
                            if *p == gone {
                                SwimStatus::Dead
                            } else {
                                SwimStatus::Alive
                            },
                        )
                    })
                    .collect::<Vec<_>>(),
            ),
            t0,
        );
        m.refresh_active();
        assert!(!m.is_active(&gone), "a dead member leaves the view");
        assert!(
            m.is_active(&connected),
            "the connected member took its place"
        );
        assert_eq!(m.active().len(), active_target(150));
    }

    #[test]
    fn the_active_view_is_dialled_as_soon_as_it_is_picked_and_once() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let members = vouched_members(&mut m, 40, t0);
        m.refresh_active();
        let dials = m.dial_active(t0);
        assert_eq!(dials.len(), active_target(41), "{dials:?}");
        assert!(dials.iter().all(|d| m.is_active(&d.peer)));
        // In flight: not dialled again, by this or by the regular round.
        assert!(m.dial_active(t0).is_empty());
        assert!(m.tick(t0).is_empty());
        // A connected member of the view is not dialled; one outside it
        // never is.
        let active: Vec<PeerId> = m.active().to_vec();
        m.on_connected(active[0], None, t0);
        let later = t0 + Duration::from_secs(60);
        let again = m.dial_active(later);
        assert!(
            again
                .iter()
                .all(|d| d.peer != active[0] && m.is_active(&d.peer))
        );
        assert!(members.iter().filter(|p| !m.is_active(p)).count() > 0);
    }

    #[test]
    fn a_member_off_the_active_view_goes_down_on_swims_word_and_is_not_redialled() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let members = vouched_members(&mut m, 40, t0);
        m.refresh_active();
        let p = *members.iter().find(|p| !m.is_active(p)).unwrap();
        // A job's connection to it comes and goes: nothing to redial, it
        // stays up (SWIM vouches for it).
        m.on_connected(p, None, t0);
        assert_eq!(m.on_disconnected(p, 0, false, t0), None);
        assert_eq!(state_of(&m, p), up());
        assert!(m.take_unreachable().is_empty());
        // SWIM says dead: down at once, `dead`.
        let view: Vec<(PeerId, SwimStatus)> = members
            .iter()
            .map(|q| {
                (
                    *q,
                    if *q == p {
                        SwimStatus::Dead
                    } else {
                        SwimStatus::Alive
                    },
                )
            })
            .collect();
        m.on_swim(&swim_view(&view), t0);
        assert_eq!(state_of(&m, p), Some(("down".into(), Some("dead".into()))));
    }

    #[test]
    fn the_address_book_holds_confirmed_addresses_and_those_of_vouched_members_only() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        // Connected from elsewhere, announcing a third party's address:
        // a claim, not in the book.
        let claimer = connected(&mut m, t0);
        // Dialled and reached at an address: confirmed.
        let dialled = PeerId::random();
        m.on_connected(dialled, Some(addr(5)), t0);
        // Vouched for by SWIM, its own signed record: its addresses.
        let members = vouched_members(&mut m, 1, t0);
        let book = m.address_book();
        assert!(!book.contains_key(&claimer), "{book:?}");
        assert_eq!(book[&dialled], vec![addr(5)]);
        assert_eq!(book[&members[0]], vec![addr(7000)]);
    }

    #[test]
    fn a_redial_in_flight_decides_before_the_news_of_a_death() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        assert!(m.is_active(&p), "a mesh of two: everyone is a neighbour");
        // Both connections close: a redial goes out, the peer stays up.
        assert!(m.on_disconnected(p, 1, false, t0).is_none());
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        assert_eq!(state_of(&m, p), up());
        // The news that it died comes first: the redial still decides.
        m.on_swim(&swim_view(&[(p, SwimStatus::Dead)]), t0);
        assert_eq!(state_of(&m, p), up());
        m.on_dial_failed(p, t0);
        assert_eq!(
            state_of(&m, p),
            Some(("down".into(), Some("unreachable".into())))
        );
        // The death this peer saw is told to SWIM.
        assert_eq!(m.take_unreachable(), vec![p]);
        assert!(m.take_unreachable().is_empty());
    }

    #[test]
    fn a_redial_that_proves_nothing_leaves_the_news_of_a_death_standing() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        assert!(m.on_disconnected(p, 1, false, t0).is_none());
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        // The news that it died comes while the redial is out.
        m.on_swim(&swim_view(&[(p, SwimStatus::Dead)]), t0);
        assert_eq!(state_of(&m, p), up());
        // The redial fails without a refusal (a handshake reset): no
        // evidence either way, so SWIM's death stands, at once.
        m.on_dial_inconclusive(p, t0);
        assert_eq!(state_of(&m, p), Some(("down".into(), Some("dead".into()))));
        assert!(m.take_doubted().is_empty(), "nothing for SWIM to suspect");
        // Whereas a member SWIM holds alive is only doubted.
        let (mut m, p) = with_a_neighbour(t0);
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        m.on_dial_inconclusive(p, t0);
        assert_eq!(state_of(&m, p), up());
        assert_eq!(m.take_doubted(), vec![p]);
    }

    #[test]
    fn records_are_taken_for_members_swim_vouches_for_and_passed_on() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let (k, p) = keyed();
        let (ks, stranger) = keyed();
        let rec = sealed(&k, &announce(p, 1, 3, false));
        // Not vouched for: not taken (nobody asked for it).
        assert_eq!(
            m.on_record(&rec, t0).unwrap_err(),
            AnnounceError::UnverifiedFull
        );
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        assert_eq!(m.missing_records(), vec![p]);
        m.on_record(&rec, t0).unwrap();
        assert!(m.missing_records().is_empty());
        // A member like any other (not one of the bounded unverified), up
        // without a connection (SWIM vouches for it), dialled as a
        // neighbour (a mesh of two: everyone is one).
        assert_eq!(m.sizes(), (1, 0));
        assert_eq!(state_of(&m, p), up());
        assert_eq!(m.tick(t0).pop().map(|d| d.peer), Some(p));
        // Held as signed, and handed on as is.
        assert_eq!(
            m.records_of(&[p, stranger], 1 << 20),
            vec![Arc::from(rec.as_slice())]
        );
        assert!(
            m.records_of(&[p], rec.len() - 1).is_empty(),
            "the byte bound holds"
        );
        // An older record is not taken back; a forged one not at all.
        let old = sealed(&k, &announce(p, 1, 2, false));
        m.on_record(&old, t0).unwrap();
        assert_eq!(m.records_of(&[p], 1 << 20), vec![Arc::from(rec.as_slice())]);
        let forged = sealed(&ks, &announce(p, 1, 9, false));
        assert!(matches!(
            m.on_record(&forged, t0),
            Err(AnnounceError::Record(_))
        ));
        assert_eq!(m.records_of(&[p], 1 << 20), vec![Arc::from(rec.as_slice())]);
    }

    #[test]
    fn a_fetched_record_is_passed_on_when_it_is_the_first_of_a_member_that_just_started() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let now_ms: u64 = 1_800_000_000_000;
        let fresh = RELAY_FRESH.as_millis() as u64;
        // This peer started a minute ago.
        let me = now_ms - 60_000;
        let (k, p) = keyed();
        m.on_swim(&swim_view(&[(p, SwimStatus::Alive)]), t0);
        assert_eq!(m.held_incarnation(&p), None);
        assert!(
            !m.relay_fetched(&p, None, me, now_ms),
            "no record held: nothing to pass on"
        );
        // Started a second ago: its first record here is passed on.
        m.on_record(&sealed(&k, &announce(p, now_ms - 1_000, 1, false)), t0)
            .unwrap();
        assert_eq!(m.held_incarnation(&p), Some(now_ms - 1_000));
        assert!(m.relay_fetched(&p, None, me, now_ms));
        // Up to the bound, and not after it.
        assert!(m.relay_fetched(&p, None, me, now_ms - 1_000 + fresh));
        assert!(!m.relay_fetched(&p, None, me, now_ms - 1_000 + fresh + 1));
        // A later record of an incarnation already held is not (the
        // author's own announcements reach the mesh; this peer's copy came
        // from it); the first of a new incarnation (a restart) is.
        assert!(!m.relay_fetched(&p, Some(now_ms - 1_000), me, now_ms));
        assert!(m.relay_fetched(&p, Some(now_ms - 5_000), me, now_ms));
        // Started before this peer: the newcomer this peer is fetches the
        // whole mesh's records, which everyone holds.
        assert!(!m.relay_fetched(&p, None, now_ms - 999, now_ms));
        assert!(
            !m.relay_fetched(&p, None, now_ms - 1_000, now_ms),
            "started together"
        );
        assert!(m.relay_fetched(&p, None, now_ms - 1_001, now_ms));
        // A member that started long ago: everyone holds its record.
        let (k2, old) = keyed();
        m.on_swim(
            &swim_view(&[(p, SwimStatus::Alive), (old, SwimStatus::Alive)]),
            t0,
        );
        m.on_record(
            &sealed(&k2, &announce(old, now_ms - fresh - 1, 7, false)),
            t0,
        )
        .unwrap();
        assert!(!m.relay_fetched(&old, None, me, now_ms));
        // An incarnation from the future (a skewed clock, or a lie) counts
        // as fresh: passed on once, with the first record this peer takes
        // of it, like any newcomer's; never again (`held`).
        let (k3, ahead) = keyed();
        m.on_swim(&swim_view(&[(ahead, SwimStatus::Alive)]), t0);
        m.on_record(
            &sealed(&k3, &announce(ahead, now_ms + 3_600_000, 1, false)),
            t0,
        )
        .unwrap();
        assert!(m.relay_fetched(&ahead, None, me, now_ms));
        assert!(!m.relay_fetched(&ahead, Some(now_ms + 3_600_000), me, now_ms));
        // Not a member at all: nothing.
        assert!(!m.relay_fetched(&PeerId::random(), None, me, now_ms));
    }

    fn connected(m: &mut Membership, t: Instant) -> PeerId {
        let p = PeerId::random();
        m.on_connected(p, None, t);
        m.on_announce(p, &announce(p, 1, 1, false), t).unwrap();
        p
    }

    #[test]
    fn the_table_never_exceeds_max_peers_and_a_connected_newcomer_gets_a_slot() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let mut peers: Vec<PeerId> = (0..MAX_PEERS - 10).map(|_| connected(&mut m, t0)).collect();
        let hinted: Vec<PeerId> = (0..10).map(|_| PeerId::random()).collect();
        for (i, p) in hinted.iter().enumerate() {
            m.on_hint(*p, vec![addr(3000 + i as u16)], t0);
        }
        assert_eq!(m.sizes(), (MAX_PEERS - 10, 10));
        // Full: nobody new from hearsay...
        let stranger = PeerId::random();
        assert!(m.on_hint(stranger, vec![addr(3999)], t0).is_none());
        let a = announce(stranger, 1, 1, false);
        assert_eq!(m.on_announce(stranger, &a, t0), Err(AnnounceError::Full));
        assert_eq!(m.peers.len(), MAX_PEERS);
        // ...but a peer that connects takes the oldest unverified slot.
        peers.push(connected(&mut m, t0));
        assert_eq!(m.sizes(), (MAX_PEERS - 9, 9));
        assert!(!m.peers.contains_key(&hinted[0]));
        for _ in 0..9 {
            peers.push(connected(&mut m, t0));
        }
        assert_eq!(m.sizes(), (MAX_PEERS, 0));
        // Every entry connected: the next one is refused, and counted.
        let extra = PeerId::random();
        m.on_connected(extra, None, t0);
        assert_eq!(m.peers.len(), MAX_PEERS);
        assert!(!m.peers.contains_key(&extra));
        assert_eq!(m.on_disconnected(extra, 0, false, t0), None);
        assert!(m.refusals().any(|(r, n)| r == Refusal::TableFull && n >= 2));
        // One goes away: its slot goes to the next that connects.
        let gone = peers[7];
        m.on_disconnected(gone, 0, false, t0);
        m.on_dial_failed(gone, t0);
        let newcomer = connected(&mut m, t0);
        assert!(m.is_up(&newcomer));
        assert!(!m.peers.contains_key(&gone));
        assert_eq!(m.peers.len(), MAX_PEERS);
    }

    #[test]
    fn a_known_peer_cannot_announce_under_another_id() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let (k, p) = keyed();
        m.on_connected(p, None, t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        let other = PeerId::random();
        let mut a = announce(other, 1, 2, false);
        a.listen = vec!["/ip4/10.9.9.9/tcp/1".into()];
        let err = m.on_announce_bytes(p, &sealed(&k, &a), t0).unwrap_err();
        assert!(matches!(err, AnnounceError::WrongId { .. }), "{err}");
        assert!(err.is_invalid());
        let view = m.views().pop().unwrap();
        assert!(
            !view.addrs.iter().any(|a| a.contains("10.9.9.9")),
            "{view:?}"
        );
        // Its own id, next number: taken.
        let a = sealed(&k, &announce(p, 1, 2, false));
        assert!(m.on_announce_bytes(p, &a, t0).is_ok());
    }

    #[test]
    fn a_later_format_is_ignored_not_called_invalid() {
        let mut m = Membership::new(PeerId::random(), timing());
        let p = PeerId::random();
        let t0 = Instant::now();
        let err = m
            .on_announce_bytes(p, &unsigned(br#"{"v":2,"id":7,"listen":"elsewhere"}"#), t0)
            .unwrap_err();
        assert_eq!(err, AnnounceError::Version(2));
        assert!(!err.is_invalid());
        let err = m
            .on_announce_bytes(p, &unsigned(br#"{"v":1,"id":7}"#), t0)
            .unwrap_err();
        assert!(matches!(err, AnnounceError::Malformed(_)) && err.is_invalid());
    }

    #[test]
    fn an_app_version_that_is_not_a_hash_makes_the_announcement_invalid() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        let mut a = serde_json::to_value(announce(p, 1, 2, false)).unwrap();
        a["apps"] = serde_json::json!([{"app": "apps/echo/echo", "state": "running",
            "workers": 2, "in_flight": 0, "clock": 1, "version": "é".repeat(40)}]);
        let err = m
            .on_announce_bytes(p, &unsigned(&serde_json::to_vec(&a).unwrap()), t0)
            .unwrap_err();
        assert!(err.is_invalid(), "{err}");
        assert!(err.to_string().contains("64 lowercase hex"), "{err}");
        assert!(m.views()[0].apps.is_empty(), "nothing of it was taken");
    }

    #[test]
    fn changes_are_republished_at_once_and_routine_ones_lazily() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        m.take_any_dirty();
        // "Still here": only the lazy refresh.
        m.on_announce(p, &announce(p, 1, 2, false), t0).unwrap();
        assert!(!m.take_dirty());
        assert!(m.take_any_dirty());
        // A new HTTP address: at once.
        let mut a = announce(p, 1, 3, false);
        a.http = Some("127.0.0.1:9999".into());
        m.on_announce(p, &a, t0).unwrap();
        assert!(m.take_dirty());
    }

    #[test]
    fn what_changes_the_view_is_shown_at_once_the_rest_lazily() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        let mut seq = 1;
        // Applies `a` (numbered next) and says (at once, lazily).
        let mut dirt = |m: &mut Membership, mut a: Announce| {
            seq += 1;
            a.seq = seq;
            m.take_any_dirty();
            m.on_announce(p, &a, t0).unwrap();
            let hard = m.take_dirty();
            assert!(!m.take_dirty(), "true once");
            (hard, hard || m.take_any_dirty())
        };
        let same = || announce(p, 1, 0, false);
        assert_eq!(dirt(&mut m, same()), (false, true), "still here");
        let mut a = same();
        a.links = vec![short_id(&p.to_string()).to_string()];
        assert_eq!(dirt(&mut m, a.clone()), (false, true), "links: lazily");
        type Change = fn(&mut Announce);
        let changes: [(&str, Change); 5] = [
            ("address", |a| {
                a.listen.push("/ip4/127.0.0.1/tcp/4002".into())
            }),
            ("http", |a| a.http = Some("127.0.0.1:1".into())),
            ("apps", |a| {
                a.apps = vec![status("apps/x/y", "0".repeat(64))]
            }),
            ("bundles", |a| a.bundles = vec!["b".repeat(64)]),
            ("remote deploy", |a| a.remote_deploy = false),
        ];
        for (what, change) in changes {
            dirt(&mut m, a.clone()); // back to the baseline
            let mut changed = a.clone();
            change(&mut changed);
            assert_eq!(dirt(&mut m, changed), (true, true), "{what}");
        }
        // Up but not connected (a redial in flight): shown at once.
        let q = connected(&mut m, t0);
        m.on_disconnected(q, 0, false, t0);
        m.take_any_dirty();
        m.on_announce(q, &announce(q, 1, 2, false), t0).unwrap();
        assert!(m.take_dirty());
        assert_eq!(m.connected_count(), 1);
    }

    fn status(app: &str, version: String) -> AppStatus {
        serde_json::from_value(serde_json::json!({"app": app, "state": "running",
            "workers": 1, "in_flight": 0, "clock": 1, "version": version}))
        .unwrap()
    }

    #[test]
    fn the_view_shows_what_a_peer_announced_within_bounds() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        let q = connected(&mut m, t0);
        let mut a = announce(p, 7, 2, false);
        a.http = Some("h".repeat(MAX_HTTP_LEN + 1));
        a.links = vec![short_id(&q.to_string()).to_string(), "123456789".into()];
        a.bundles = vec!["a".repeat(64), "b".repeat(63)];
        m.on_announce(p, &a, t0).unwrap();
        m.on_rtt(p, Duration::from_micros(1234), t0);
        let v = m.views().into_iter().find(|v| v.peer == Some(p)).unwrap();
        assert_eq!(v.http, None, "too long");
        assert_eq!(*v.links, [q.to_string()]);
        assert_eq!(v.bundles, vec!["a".repeat(64)]);
        assert_eq!(v.rtt_ms, Some(1.234));
        assert_eq!(v.started_ms, Some(7));
        assert!(v.connected);
        let mut a = announce(p, 7, 3, false);
        a.http = Some("h".repeat(MAX_HTTP_LEN));
        m.on_announce(p, &a, t0).unwrap();
        let v = m.views().into_iter().find(|v| v.peer == Some(p)).unwrap();
        assert_eq!(v.http.map(|h| h.len()), Some(MAX_HTTP_LEN));
        assert!(v.links.is_empty(), "links are replaced, not merged");
    }

    #[test]
    fn hints_about_ourselves_or_without_addresses_are_ignored() {
        let me = PeerId::random();
        let mut m = Membership::new(me, timing());
        let t0 = Instant::now();
        assert_eq!(m.on_hint(me, vec![addr(1)], t0), None);
        assert_eq!(m.on_hint(PeerId::random(), Vec::new(), t0), None);
        assert_eq!(m.sizes(), (0, 0));
    }

    #[test]
    fn identify_adds_addresses_of_known_peers_only() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        m.on_identify(p, vec![addr(4444)]);
        m.on_identify(PeerId::random(), vec![addr(5555)]);
        assert_eq!(m.sizes(), (1, 0));
        let view = m.views().pop().unwrap();
        assert!(view.addrs.contains(&addr(4444).to_string()), "{view:?}");
    }

    #[test]
    fn a_hint_heard_again_waits_for_the_backoff() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = PeerId::random();
        assert!(m.on_hint(p, vec![addr(1)], t0).is_some());
        let soon = t0 + Duration::from_millis(100);
        assert_eq!(m.on_hint(p, vec![addr(1)], soon), None);
        assert!(m.on_hint(p, vec![addr(1)], t0 + DIAL_BACKOFF_MIN).is_some());
    }

    #[test]
    fn newcomers_learn_the_peers_that_are_up_with_their_addresses() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        let q = connected(&mut m, t0);
        m.on_announce(q, &announce(q, 1, 2, true), t0).unwrap();
        m.on_hint(PeerId::random(), vec![addr(1)], t0);
        assert_eq!(m.up_peers(), vec![(p, vec![addr(4001)])]);
        assert!(m.is_up(&p));
        assert!(!m.is_up(&q), "left");
        assert!(!m.is_up(&PeerId::random()));
    }

    #[test]
    fn a_full_table_drops_a_down_peer_before_one_being_redialled() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        // A neighbour (in the active view: it is redialled when its
        // connection closes), then many more, then one that is down.
        let redialling = connected(&mut m, t0);
        m.refresh_active();
        assert!(m.is_active(&redialling));
        for _ in 0..MAX_PEERS - 2 {
            connected(&mut m, t0);
        }
        let down = PeerId::random();
        m.on_connected(down, Some(addr(1)), t0);
        m.on_announce(down, &announce(down, 1, 1, false), t0)
            .unwrap();
        m.on_disconnected(down, 0, false, t0);
        m.on_dial_failed(down, t0);
        let t1 = t0 + Duration::from_secs(1);
        assert!(m.on_disconnected(redialling, 0, false, t1).is_some());
        assert_eq!(state_of(&m, redialling), up());
        connected(&mut m, t1);
        assert!(!m.peers.contains_key(&down));
        assert!(m.peers.contains_key(&redialling));
        assert_eq!(m.peers.len(), MAX_PEERS);
    }

    #[test]
    fn a_second_connection_closing_changes_nothing() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        // Two connections (a simultaneous dial), before any announcement.
        let p = PeerId::random();
        m.on_connected(p, None, t0);
        m.on_connected(p, None, t0);
        assert_eq!(m.on_disconnected(p, 1, false, t0), None);
        assert_eq!(m.sizes(), (1, 0), "still connected: kept");
        // An announced peer keeps its ping time until its last one closes.
        let q = connected(&mut m, t0);
        m.on_connected(q, None, t0);
        m.on_rtt(q, Duration::from_millis(3), t0);
        assert_eq!(m.on_disconnected(q, 1, false, t0), None);
        let rtt = |m: &Membership| {
            m.views()
                .into_iter()
                .find(|v| v.peer == Some(q))
                .unwrap()
                .rtt_ms
        };
        assert_eq!(rtt(&m), Some(3.0));
        assert!(m.on_disconnected(q, 0, false, t0).is_some());
        assert_eq!(rtt(&m), None);
        // A dial failing while it is connected (a duplicate dial) is no news.
        let r = connected(&mut m, t0);
        m.on_dial_failed(r, t0);
        assert_eq!(state_of(&m, r), up());
    }

    #[test]
    fn answered_pings_keep_an_up_peer_up_but_do_not_revive_a_down_one() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        let t3 = t0 + Duration::from_secs(3);
        m.on_rtt(p, Duration::from_millis(1), t3);
        m.tick(t0 + Duration::from_secs(5));
        assert_eq!(state_of(&m, p), up(), "heard at 3 s by ping");
        let t8 = t0 + Duration::from_secs(8);
        m.tick(t8);
        assert_eq!(state_of(&m, p), down("silent"));
        // Silent: a ping answered (its event loop may be stuck while its
        // network still answers) and a new connection do not bring it back.
        m.on_rtt(p, Duration::from_millis(1), t8);
        m.on_connected(p, None, t8);
        assert_eq!(state_of(&m, p), down("silent"));
    }

    #[test]
    fn a_peer_silent_without_a_connection_has_none_to_close() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = PeerId::random();
        m.on_connected(p, Some(addr(4001)), t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        // Its connection closed; the redial's outcome never comes.
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        m.tick(t0 + Duration::from_secs(5));
        assert_eq!(state_of(&m, p), down("silent"));
        assert!(m.take_silenced().is_empty());
    }

    #[test]
    fn a_member_swim_declares_dead_has_its_connections_closed_if_it_has_any() {
        let t0 = Instant::now();
        let (mut m, p) = with_a_neighbour(t0);
        let q = vouched_members(&mut m, 1, t0)[0];
        let view = [(p, SwimStatus::Alive), (q, SwimStatus::Alive)];
        m.on_swim(&swim_view(&view), t0);
        assert_eq!(state_of(&m, q), up());
        // q was never connected here: nothing to close.
        let view = [(p, SwimStatus::Alive), (q, SwimStatus::Dead)];
        m.on_swim(&swim_view(&view), t0);
        assert_eq!(state_of(&m, q), down("dead"));
        assert!(m.take_silenced().is_empty());
        // p is (a hung process behind an open connection): closed.
        let view = [(p, SwimStatus::Dead), (q, SwimStatus::Dead)];
        m.on_swim(&swim_view(&view), t0);
        assert_eq!(state_of(&m, p), down("dead"));
        assert_eq!(m.take_silenced(), vec![p]);
    }

    #[test]
    fn a_member_swim_stops_vouching_for_counts_as_heard_from_until_then() {
        let t0 = Instant::now();
        let mut m = Membership::new(PeerId::random(), timing());
        let q = vouched_members(&mut m, 1, t0)[0];
        let down_after = timing().down_after;
        // Long after its announcement, SWIM stops vouching for it (it
        // left SWIM's view without a death: forgotten there).
        let t1 = t0 + down_after * 10;
        m.tick(t1);
        assert_eq!(state_of(&m, q), up(), "vouched: no silence rule");
        m.on_swim(&HashMap::new(), t1);
        // The silence rule starts from then, not from its announcement.
        m.tick(t1 + down_after / 2);
        assert_eq!(state_of(&m, q), up());
        m.tick(t1 + down_after);
        assert_eq!(state_of(&m, q), down("silent"));
    }

    #[test]
    fn a_spent_unverified_entry_waits_for_its_last_dial() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = PeerId::random();
        m.on_hint(p, vec![addr(1)], t0);
        let last = t0 + Duration::from_millis(1500);
        for t in [t0 + Duration::from_millis(500), last] {
            assert_eq!(m.tick(t).len(), 1);
        }
        assert!(m.peers[&p].spent());
        let next = m.peers[&p].next_dial;
        m.tick(next - Duration::from_millis(1));
        assert_eq!(m.sizes(), (0, 1), "its last dial may still connect");
        m.tick(next);
        assert_eq!(m.sizes(), (0, 0));
    }

    #[test]
    fn deadlines_of_entries_with_no_dial_to_make() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        // Heard of, with no address to dial: dropped after UNVERIFIED_TTL.
        let p = PeerId::random();
        let mut a = announce(p, 1, 1, false);
        a.listen.clear();
        m.on_announce(p, &a, t0).unwrap();
        assert_eq!(m.next_deadline(t0), Some(t0 + UNVERIFIED_TTL));
        m.tick(t0 + UNVERIFIED_TTL);
        assert_eq!(m.sizes(), (0, 0));
        // Left, with no address: forgotten after forget_after.
        let q = PeerId::random();
        m.on_connected(q, None, t0);
        let mut a = announce(q, 1, 1, false);
        a.listen.clear();
        m.on_announce(q, &a, t0).unwrap();
        let mut bye = announce(q, 1, 2, true);
        bye.listen.clear();
        m.on_announce(q, &bye, t0).unwrap();
        m.on_disconnected(q, 0, false, t0);
        assert_eq!(m.next_deadline(t0), Some(t0 + timing().forget_after));
    }

    #[test]
    fn a_claimed_address_gets_its_dials_back_when_its_window_ends() {
        let mut c = ClaimedAddrs::default();
        let (a, t0) = (addr(9), Instant::now());
        for _ in 0..CLAIMED_ADDR_DIALS {
            assert!(c.take(&a, t0));
        }
        assert!(!c.take(&a, t0));
        assert!(!c.take(&a, t0 + CLAIMED_ADDR_WINDOW - Duration::from_millis(1)));
        assert!(c.take(&a, t0 + CLAIMED_ADDR_WINDOW), "a new window");
    }

    #[test]
    fn claimed_addresses_tracked_are_bounded_and_expire() {
        let mut c = ClaimedAddrs::default();
        let t0 = Instant::now();
        let many = |i: usize| -> Multiaddr {
            format!("/ip4/10.0.{}.{}/tcp/1", i / 256, i % 256)
                .parse()
                .unwrap()
        };
        for i in 0..MAX_TRACKED_ADDRS {
            assert!(c.take(&many(i), t0));
        }
        // Full, every one within its window: no new address is dialled...
        assert!(!c.take(&many(MAX_TRACKED_ADDRS), t0));
        assert_eq!(c.dials.len(), MAX_TRACKED_ADDRS);
        // ...but the ones tracked keep their budgets.
        assert!(c.take(&many(0), t0));
        // Once their windows are over, they make room.
        let later = t0 + CLAIMED_ADDR_WINDOW;
        assert!(c.take(&many(MAX_TRACKED_ADDRS), later));
        assert_eq!(c.dials.len(), 1);
    }

    #[test]
    fn an_address_that_reached_its_peer_is_no_longer_a_claim() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let a = addr(7000);
        let mut dials = Vec::new();
        for i in 0..5 {
            let t = t0 + Duration::from_secs(i);
            dials.extend(m.on_hint(PeerId::random(), vec![a.clone()], t));
        }
        assert_eq!(dials_to(&dials, &a), CLAIMED_ADDR_DIALS as usize);
        // A peer is reached at it: its budget for others starts afresh.
        let t = t0 + Duration::from_secs(5);
        m.on_connected(PeerId::random(), Some(a.clone()), t);
        assert!(m.on_hint(PeerId::random(), vec![a.clone()], t).is_some());
    }

    #[test]
    fn refusals_are_labelled_as_documented() {
        let labels: Vec<&str> = Refusal::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            labels,
            [
                "table_full",
                "unverified_full",
                "discovery_rate",
                "claimed_address_budget"
            ]
        );
    }

    #[test]
    fn times_shown_are_unix_milliseconds() {
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let mut m = Membership::new(PeerId::random(), timing());
        connected(&mut m, Instant::now());
        let v = m.views().pop().unwrap();
        assert!(
            v.first_seen_ms >= before && v.last_seen_ms >= before,
            "{v:?}"
        );
        assert!(v.since_ms >= before);
    }

    #[test]
    fn links_name_peers_by_the_end_of_their_ids() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let (p, q) = (connected(&mut m, t0), connected(&mut m, t0));
        let q_id = q.to_string();
        assert_eq!(short_id(&q_id), &q_id[q_id.len() - 8..]);
        assert_eq!(short_id("abc"), "abc");
        let mut a = announce(p, 1, 2, false);
        a.links = vec![short_id(&q_id).to_string(), "unknown!".into()];
        m.on_announce(p, &a, t0).unwrap();
        let view = m.views().into_iter().find(|v| v.peer == Some(p)).unwrap();
        assert_eq!(*view.links, [q_id], "known short ids are expanded");
    }

    #[test]
    fn expanded_links_follow_the_table_as_peers_join_and_are_forgotten() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let (p, q) = (connected(&mut m, t0), connected(&mut m, t0));
        let r = PeerId::random();
        let (q_id, r_id) = (q.to_string(), r.to_string());
        let mut a = announce(p, 1, 2, false);
        a.links = vec![short_id(&q_id).to_string(), short_id(&r_id).to_string()];
        m.on_announce(p, &a, t0).unwrap();
        let links = |m: &Membership| {
            m.views()
                .into_iter()
                .find(|v| v.peer == Some(p))
                .unwrap()
                .links
        };
        assert_eq!(
            *links(&m),
            *std::slice::from_ref(&q_id),
            "r is not known yet"
        );
        assert_eq!(
            *links(&m),
            *std::slice::from_ref(&q_id),
            "the same, from the cache"
        );
        // r joins: p's links (unchanged) now name it.
        m.on_connected(r, None, t0);
        m.on_announce(r, &announce(r, 1, 1, false), t0).unwrap();
        assert_eq!(*links(&m), [q_id.clone(), r_id.clone()], "r was added");
        // q leaves and is forgotten: p's links no longer name it.
        m.on_announce(q, &announce(q, 1, 2, true), t0).unwrap();
        m.on_disconnected(q, 0, false, t0);
        m.tick(t0 + timing().forget_after + Duration::from_secs(1));
        assert!(
            m.views().iter().all(|v| v.peer != Some(q)),
            "q is forgotten"
        );
        assert_eq!(*links(&m), [r_id], "q was removed");
    }

    #[test]
    fn down_reasons_read_as_in_the_api() {
        for r in [
            DownReason::Left,
            DownReason::Unreachable,
            DownReason::Silent,
        ] {
            assert_eq!(serde_json::to_value(r).unwrap(), r.as_str());
        }
        // Flags that are on unless said otherwise: an announcement from a
        // peer that predates `remote_deploy` says yes.
        let mut v = serde_json::to_value(announce(PeerId::random(), 1, 1, false)).unwrap();
        v.as_object_mut().unwrap().remove("remote_deploy");
        let a: Announce = serde_json::from_value(v).unwrap();
        assert!(a.remote_deploy);
    }

    #[test]
    fn a_link_the_other_peer_chose_is_redialled_when_it_closes() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let peers: Vec<PeerId> = (0..40).map(|_| connected(&mut m, t0)).collect();
        m.refresh_active();
        let outside: Vec<PeerId> = peers.iter().filter(|p| !m.is_active(p)).copied().collect();
        assert!(outside.len() >= 2, "40 peers overflow the active view");
        // A connection of no view closing says nothing: no redial.
        assert_eq!(m.on_disconnected(outside[0], 0, false, t0), None);
        assert_eq!(state_of(&m, outside[0]), up());
        // One whose peer held a neighbour stream on it (this peer is in
        // its active view): redialled, and unreachable when that fails.
        m.on_identify(outside[1], vec![addr(9)]);
        assert!(m.on_disconnected(outside[1], 0, true, t0).is_some());
        m.on_dial_failed(outside[1], t0);
        assert_eq!(state_of(&m, outside[1]), down("unreachable"));
    }

    #[test]
    fn a_connection_that_never_announced_leaves_nothing_to_redial() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = PeerId::random();
        m.on_connected(p, None, t0);
        m.on_identify(p, vec![addr(9)]);
        assert_eq!(m.on_disconnected(p, 0, false, t0), None);
        assert_eq!(m.sizes(), (0, 0));
        assert!(m.tick(t0 + Duration::from_secs(1)).is_empty());
    }

    #[test]
    fn an_inbound_peer_is_redialled_within_the_claimed_budget_only() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = connected(&mut m, t0);
        // Its connection closes: a quick redial at its claimed address.
        assert!(m.on_disconnected(p, 0, false, t0).is_some());
        m.on_dial_failed(p, t0);
        assert_eq!(state_of(&m, p), down("unreachable"));
        let later = run_failing(&mut m, t0, Duration::from_secs(30));
        assert_eq!(1 + later.len(), CLAIMED_ADDR_DIALS as usize, "{later:?}");
        // It dials back and leaves again: no address left to try, so it is
        // unreachable at once rather than up until it falls silent.
        let t = t0 + Duration::from_secs(30);
        m.on_connected(p, None, t);
        m.on_announce(p, &announce(p, 1, 2, false), t).unwrap();
        assert_eq!(state_of(&m, p), up());
        assert_eq!(m.on_disconnected(p, 0, false, t), None);
        assert_eq!(state_of(&m, p), down("unreachable"));
    }

    #[test]
    fn hints_do_not_touch_a_peer_that_connected() {
        let mut m = Membership::new(PeerId::random(), timing());
        let t0 = Instant::now();
        let p = PeerId::random();
        m.on_connected(p, Some(addr(4001)), t0);
        m.on_announce(p, &announce(p, 1, 1, false), t0).unwrap();
        assert_eq!(m.on_hint(p, vec![addr(9)], t0), None);
        assert_eq!(m.views()[0].addrs, vec![addr(4001).to_string()]);
    }
}
