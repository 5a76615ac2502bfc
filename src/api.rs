//! JSON shapes of the HTTP API, shared by the server and the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::membership::PeerView;

/// `GET /api/peers`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MeshView {
    #[serde(rename = "self")]
    pub local: SelfView,
    /// Every peer this one knows, excluding itself, sorted by id.
    pub peers: Vec<PeerView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SelfView {
    pub id: String,
    pub listen: Vec<String>,
    pub http: String,
    pub started_ms: u64,
    /// Whether this peer is in a private mesh (pre-shared key).
    #[serde(default)]
    pub private: bool,
}

/// `GET /api/decisions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionsView {
    /// The highest Lamport clock this peer has seen: a new decision is
    /// stamped above it.
    pub clock: u64,
    /// Whether this peer takes only decisions signed by an admin key.
    pub admins: bool,
    pub decisions: Vec<crate::desired::DesiredApp>,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `GET /api/apps`: this peer's apps in detail, and which peer runs which app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppsView {
    #[serde(rename = "self")]
    pub local_id: String,
    /// This peer's apps, with every worker process.
    pub local: Vec<crate::worker::LocalApp>,
    /// Per app, per peer (this one included, peers that are up only): the
    /// app's state as that peer last announced it.
    pub mesh: BTreeMap<String, BTreeMap<String, crate::worker::AppStatus>>,
    /// Whether this peer installs deployed bundles (false with
    /// `--no-remote-deploy`).
    #[serde(default = "crate::membership::yes")]
    pub remote_deploy: bool,
}

impl AppsView {
    pub fn build(local_id: &str, local: Vec<crate::worker::LocalApp>, mesh: &MeshView) -> AppsView {
        let mut by_app: BTreeMap<String, BTreeMap<String, crate::worker::AppStatus>> =
            BTreeMap::new();
        for a in &local {
            by_app
                .entry(a.status.app.to_string())
                .or_default()
                .insert(local_id.to_string(), a.status.clone());
        }
        for p in mesh.peers.iter().filter(|p| p.state == "up") {
            for a in &p.apps {
                by_app
                    .entry(a.app.to_string())
                    .or_default()
                    .insert(p.id.clone(), a.clone());
            }
        }
        AppsView {
            local_id: local_id.to_string(),
            local,
            mesh: by_app,
            remote_deploy: true,
        }
    }
}
