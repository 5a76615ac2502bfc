//! `disruptor peers`: the peers one peer knows, as a table (or, with
//! `--json`, the raw `GET /api/peers`).
//!
//! The table shows whole peer ids (they are what other commands and the
//! logs name), each peer's state and since when, its ping, its HTTP
//! address and its first libp2p address.

use super::http::PeerApi;
use super::term::{header, table};
use crate::api::MeshView;
use crate::cli::PeersArgs;
use crate::clock::unix_ms;
use crate::text::ago;

/// `disruptor peers`: prints the table of the peers the peer at
/// `http_addr` knows.
pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    if args.json {
        let v: serde_json::Value = peer.get("/api/peers").await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let view: MeshView = peer.get("/api/peers").await?;
    print!("{}", render_peers_table(&view, unix_ms()));
    Ok(())
}

/// The table `disruptor peers` prints, as of `now` (unix ms): this peer
/// first, then the others as the view lists them, then a count.
pub fn render_peers_table(view: &MeshView, now: u64) -> String {
    let mut rows = vec![header(&[
        "PEER", "STATE", "SINCE", "RTT", "HTTP", "ADDRESS",
    ])];
    rows.push(vec![
        format!("{} (this peer)", view.local.id),
        "self".into(),
        ago(now, view.local.started_ms),
        "-".into(),
        view.local.http.clone(),
        view.local.listen.first().cloned().unwrap_or_default(),
    ]);
    for p in &view.peers {
        let state = match &p.reason {
            Some(r) => format!("{} ({r})", p.state),
            None => p.state.to_string(),
        };
        rows.push(vec![
            p.id.clone(),
            state,
            ago(now, p.since_ms),
            p.rtt_ms
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            p.http.clone().unwrap_or_else(|| "-".into()),
            p.addrs.first().cloned().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = table(&rows, "");
    let up = view.peers.iter().filter(|p| p.is_up()).count();
    out.push_str(&format!(
        "{} peers known besides this one: {up} up, {} down\n",
        view.peers.len(),
        view.peers.len() - up
    ));
    out
}
