//! JSON shapes of the HTTP API, shared by the server ([`crate::http`]) and
//! the CLI ([`crate::client`]): what one serializes, the other reads.

use std::collections::BTreeMap;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::mesh::view::{DownReason, MeshView, PeerState, PeerView, SelfView};

/// Request header: the job's timeout, in milliseconds.
pub const TIMEOUT_HEADER: &str = "x-disruptor-timeout-ms";
/// Response header: how many workers the job was tried on (failover).
pub const ATTEMPTS_HEADER: &str = "x-disruptor-attempts";
/// Response header: the job's id, as it appears in the logs of the peer
/// that received it and of the peer that ran it.
pub const JOB_ID_HEADER: &str = "x-disruptor-job-id";
/// Response header of a reduced stream or fan-out (`?reduce=`): how many
/// of its results it reduced, and how many lines (or peers) failed and
/// were left out.
pub const REDUCED_HEADER: &str = "x-disruptor-reduced";
/// See [`REDUCED_HEADER`].
pub const FAILED_HEADER: &str = "x-disruptor-failed";
/// Response header naming the peer whose worker ran the job.
pub const PEER_HEADER: &str = "x-disruptor-peer";
/// A job's timeout when the request sets none ([`TIMEOUT_HEADER`]).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30);
/// Request header of `POST /api/deploy`: the bundle's SHA-256 (hex).
pub const BUNDLE_HASH_HEADER: &str = "x-disruptor-bundle-sha256";
/// Request header of `POST /api/deploy`: the signed deployment decision
/// (JSON).
pub const DECISION_HEADER: &str = "x-disruptor-decision";
/// The content type of a stream of jobs, and of its answer.
pub const NDJSON: &str = "application/x-ndjson";

/// `GET /api/decisions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecisionsView {
    /// The highest Lamport clock this peer has seen: a new decision is
    /// stamped above it.
    pub clock: u64,
    /// Whether this peer takes only decisions signed by an admin key.
    pub admins: bool,
    /// Every decision this peer holds, one per app.
    pub decisions: Vec<crate::mesh::desired::DesiredApp>,
}

/// Body of every error response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a human.
    pub error: String,
}

/// `GET /api/apps`: this peer's apps in detail, and which peer runs which app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppsView {
    /// This peer's id (`self` in the JSON).
    #[serde(rename = "self")]
    pub local_id: String,
    /// This peer's apps, with every worker process.
    pub local: Vec<crate::apps::LocalApp>,
    /// Per app, per peer (this one included, peers that are up only): the
    /// app's state as that peer last announced it.
    pub mesh: BTreeMap<String, BTreeMap<String, crate::apps::AppStatus>>,
    /// Whether this peer installs deployed bundles (false with
    /// `--no-remote-deploy`, and on a peer without `--admin`).
    #[serde(default = "crate::mesh::view::yes")]
    pub remote_deploy: bool,
    /// Per app started with `--peers` or `--on`: where it goes, as this
    /// peer computes it (every peer computes the same from the same view).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub placement: BTreeMap<String, PlacementView>,
}

/// An app's placement in `/api/apps`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlacementView {
    /// `--peers`, if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<u32>,
    /// `--on`.
    #[serde(default)]
    pub on: crate::mesh::labels::Labels,
    /// How many peers that are up could run it.
    pub eligible: usize,
    /// The peers it is placed on, by id.
    pub placed: Vec<String>,
}

impl PlacementView {
    /// For people: `placed on 2 peers labelled zone=eu (5 can run it)`.
    pub fn summary(&self) -> String {
        let mut out = match self.peers {
            Some(n) => format!("placed on {n} peer{}", if n == 1 { "" } else { "s" }),
            None => "placed on every peer".to_string(),
        };
        if !self.on.is_empty() {
            out.push_str(&format!(" labelled {}", self.on));
        }
        out.push_str(&format!(" ({} can run it)", self.eligible));
        out
    }
}

impl AppsView {
    /// Adds the placement of every app that `desired` runs with `--peers`
    /// or `--on`, computed over the peers of `mesh` that are up.
    pub fn with_placement(
        mut self,
        desired: &crate::mesh::desired::DesiredApps,
        mesh: &MeshView,
    ) -> AppsView {
        use crate::mesh::placement::{Candidate, Hold, place};
        for d in desired
            .entries()
            .filter(|d| d.run && !d.placement().is_everywhere())
        {
            let statuses = self.mesh.get(d.app.as_str());
            let of = |id: &str| Hold::of(statuses.and_then(|m| m.get(id)));
            let mut candidates = vec![Candidate {
                id: &mesh.local.id,
                labels: &mesh.local.labels,
                hold: of(&mesh.local.id),
            }];
            candidates.extend(mesh.up().map(|p| Candidate {
                id: &p.id,
                labels: &p.labels,
                hold: of(&p.id),
            }));
            let placed = place(&d.app, d.peers, &d.on, &candidates);
            self.placement.insert(
                d.app.to_string(),
                PlacementView {
                    peers: d.peers,
                    on: d.on.clone(),
                    eligible: placed.eligible,
                    placed: placed.chosen,
                },
            );
        }
        self
    }

    /// The view from this peer's apps (`local`, with their workers) and
    /// the apps the peers that are up announced in `mesh`.
    /// `remote_deploy` is true: the endpoint sets it.
    pub fn build(local_id: &str, local: Vec<crate::apps::LocalApp>, mesh: &MeshView) -> AppsView {
        let mut by_app: BTreeMap<String, BTreeMap<String, crate::apps::AppStatus>> =
            BTreeMap::new();
        for a in &local {
            by_app
                .entry(a.status.app.to_string())
                .or_default()
                .insert(local_id.to_string(), a.status.clone());
        }
        for p in mesh.up() {
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
            placement: BTreeMap::new(),
        }
    }
}
