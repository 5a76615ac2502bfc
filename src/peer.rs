//! `disruptor peer`: start everything, print where we are, run until a
//! signal, then shut down in order.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::PeerConfig;
use crate::{http, network};

/// How long the tasks get to finish after shutdown was requested.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

pub async fn run(config: PeerConfig) -> anyhow::Result<()> {
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("cannot listen for HTTP on {}", config.http))?;
    let http_addr = http_listener.local_addr()?;
    let (client, event_loop) = network::start(&config, http_addr).await?;

    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "disruptor peer {}", event_loop.local_peer_id())?;
        for addr in event_loop.listen_addrs() {
            writeln!(out, "listen: {addr}")?;
        }
        writeln!(out, "http: http://{http_addr}/")?;
        out.flush()?;
    }
    tracing::info!(
        peer = %event_loop.local_peer_id(),
        private = config.psk.is_some(),
        bootstrap = config.bootstrap.len(),
        "peer started"
    );

    // Cancelled by a signal, or by any task that ends unexpectedly (each
    // holds a drop guard), so the peer never lingers half-alive.
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    tracker.spawn(event_loop.run(shutdown.clone()));
    tracker.spawn(http::serve(http_listener, client, shutdown.clone()));
    tracker.close();

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT received, shutting down"),
        _ = shutdown.cancelled() => tracing::warn!("a core task stopped, shutting down"),
    }
    shutdown.cancel();
    tokio::select! {
        _ = tracker.wait() => {}
        _ = tokio::time::sleep(SHUTDOWN_GRACE) => tracing::warn!("tasks did not finish within {SHUTDOWN_GRACE:?}"),
        _ = sigint.recv() => tracing::warn!("second SIGINT: exiting at once"),
        _ = sigterm.recv() => tracing::warn!("second SIGTERM: exiting at once"),
    }
    tracing::info!("stopped");
    Ok(())
}
