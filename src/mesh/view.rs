//! The mesh as this peer sees it: the typed snapshot the network event loop
//! publishes (through a `watch` channel) and everything above reads. It is
//! also the JSON of `GET /api/peers`; the state enums become strings only
//! there.

use std::fmt;

use libp2p::PeerId;
use serde::{Deserialize, Serialize};

use crate::apps::AppStatus;
use crate::mesh::labels::Labels;

/// `GET /api/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshView {
    /// This peer.
    #[serde(rename = "self")]
    pub local: SelfView,
    /// Every peer this one knows, excluding itself, sorted by id.
    pub peers: Vec<PeerView>,
}

impl MeshView {
    /// The peers that are up.
    pub fn up(&self) -> impl Iterator<Item = &PeerView> {
        self.peers.iter().filter(|p| p.is_up())
    }
}

/// This peer, as `/api/peers` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SelfView {
    /// Its peer id.
    pub id: String,
    /// Its libp2p listen addresses.
    pub listen: Vec<String>,
    /// Its HTTP address.
    pub http: String,
    /// Unix ms at which it started.
    pub started_ms: u64,
    /// Whether this peer is in a private mesh (pre-shared key).
    #[serde(default)]
    pub private: bool,
    /// Its labels (`--label`).
    #[serde(default)]
    pub labels: Labels,
}

/// Whether a peer is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Connected and heard from within `--down-after` (or being redialled
    /// after its connection dropped): jobs may go there.
    Up,
    /// Left, unreachable or silent (see [`DownReason`]).
    Down,
}

impl PeerState {
    /// The name the JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Up => "up",
            PeerState::Down => "down",
        }
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// Why a peer is down.
pub enum DownReason {
    /// It said it was leaving.
    Left,
    /// Its last connection closed and a redial failed.
    Unreachable,
    /// Nothing heard from it (no announcement, no answered ping) for
    /// `--down-after`, though it may still be connected; only for a peer
    /// the failure detector does not vouch for yet.
    Silent,
    /// The mesh's failure detector (SWIM) declared it dead: its probes went
    /// unanswered, through other peers too, for the suspicion timeout, or
    /// a peer connected to it found it unreachable.
    Dead,
}

impl DownReason {
    /// The name the JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            DownReason::Left => "left",
            DownReason::Unreachable => "unreachable",
            DownReason::Silent => "silent",
            DownReason::Dead => "dead",
        }
    }
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One row of `/api/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerView {
    /// Its peer id (base58).
    pub id: String,
    /// The parsed id (not part of the JSON).
    #[serde(skip)]
    pub peer: Option<PeerId>,
    /// Up or down (`"up"`, `"down"` in the JSON).
    pub state: PeerState,
    /// Why it is down; null when up.
    pub reason: Option<DownReason>,
    /// Every libp2p address known for it, claimed or confirmed (at most
    /// [`MAX_ADDRS_PER_PEER`](crate::mesh::membership::MAX_ADDRS_PER_PEER), newest last).
    pub addrs: Vec<String>,
    /// Its HTTP endpoint as it announced it (`HOST:PORT` as bound there,
    /// so possibly a loopback address).
    pub http: Option<String>,
    /// Unix ms at which this peer first learned of it.
    pub first_seen_ms: u64,
    /// Unix ms of its last announcement or new connection.
    pub last_seen_ms: u64,
    /// Unix ms at which it entered its current state.
    pub since_ms: u64,
    /// Unix ms at which the peer's current run started (its incarnation).
    pub started_ms: Option<u64>,
    /// Round-trip time of its last answered ping, in ms (to the µs);
    /// null while not connected or not pinged yet.
    pub rtt_ms: Option<f64>,
    /// Whether this peer holds a connection to it now.
    pub connected: bool,
    /// Apps as the peer last announced them.
    #[serde(default)]
    pub apps: Vec<AppStatus>,
    /// Full ids of the peers it announced it is connected to (those this
    /// peer knows, itself included).
    #[serde(default)]
    pub links: std::sync::Arc<[String]>,
    /// Hashes of the app bundles it holds.
    #[serde(default)]
    pub bundles: Vec<String>,
    /// Whether it installs deployed bundles.
    #[serde(default = "yes")]
    pub remote_deploy: bool,
    /// Its labels, as it announced them (invalid ones dropped).
    #[serde(default)]
    pub labels: Labels,
}

impl PeerView {
    /// Whether it is up.
    pub fn is_up(&self) -> bool {
        self.state == PeerState::Up
    }
}

/// serde default for flags that are on unless said otherwise.
pub(crate) fn yes() -> bool {
    true
}
