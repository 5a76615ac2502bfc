//! JSON shapes of the HTTP API, shared by the server and the CLI.

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

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}
