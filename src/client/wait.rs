//! Waiting for the mesh to settle after a decision.
//!
//! A decision (`start`, `stop`, `deploy`) is taken by one peer and spreads
//! to the others with their announcements; each peer then acts on it and
//! announces its app's new state. The CLI cannot watch that happen, only
//! ask: every 200 ms [`until_settled`] reads the peer's view of the mesh
//! (`/api/peers`, `/api/apps`) and hands it to the command's own judge of
//! "done", until the judge finds the mesh settled or the time given
//! (`--wait`) runs out. Either way the last [`Look`] is what the command
//! prints.

use std::time::Duration;

use tokio::time::Instant;

use super::http::PeerApi;
use crate::api::{AppsView, MeshView};

/// How often the mesh is looked at.
const POLL: Duration = Duration::from_millis(200);

/// What one look at the mesh found: whether it has settled, and what the
/// judge made of it (a report to print, counts).
pub(super) struct Look<T> {
    /// Every peer concerned reports what the decision asked for.
    pub(super) settled: bool,
    /// The judge's findings.
    pub(super) seen: T,
}

/// Looks at the mesh through `peer` until `judge` finds it settled or
/// `wait` has passed; returns the last look (check its `settled`).
pub(super) async fn until_settled<T>(
    peer: &PeerApi,
    wait: Duration,
    mut judge: impl FnMut(&MeshView, &AppsView) -> Look<T>,
) -> anyhow::Result<Look<T>> {
    let deadline = Instant::now() + wait;
    loop {
        let view: MeshView = peer.get("/api/peers").await?;
        let apps: AppsView = peer.get("/api/apps").await?;
        let look = judge(&view, &apps);
        if look.settled || Instant::now() >= deadline {
            return Ok(look);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The ids of this peer and of the peers that are up, this one first.
pub(super) fn up_ids(view: &MeshView) -> Vec<&str> {
    let up = view.peers.iter().filter(|p| p.is_up());
    std::iter::once(view.local.id.as_str())
        .chain(up.map(|p| p.id.as_str()))
        .collect()
}

/// One line of a report: a peer's id (marked when it is this peer) and
/// what it says.
pub(super) fn peer_line(view: &MeshView, id: &str, what: &str) -> String {
    let me = if id == view.local.id {
        " (this peer)"
    } else {
        ""
    };
    format!("  {id}{me}  {what}\n")
}
