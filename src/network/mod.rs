//! The libp2p side of a peer: transport, behaviours, the event loop that owns
//! the swarm, and the handle everyone else uses.

mod behaviour;
pub mod bundles;
mod client;
mod event_loop;
mod jobs;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use libp2p::PeerId;
use libp2p::core::Transport;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::transport::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::pnet::PnetConfig;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};

pub use behaviour::{MAX_JOB_TIMEOUT, PROTOCOL_VERSION};
pub use client::Client;
pub use event_loop::EventLoop;
pub use jobs::serve_inbound;

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use crate::config::PeerConfig;
use crate::desired::DesiredApps;
use crate::worker::Workers;

/// `disruptor_membership_entries{kind}`: entries of the membership table,
/// `verified` (peers that connected) and `unverified` (heard of only).
pub(crate) static TABLE_SIZE: LazyLock<Family<KindLabel, Gauge>> = LazyLock::new(Family::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: &'static str,
}

/// Adds membership's metrics to the `/metrics` registry.
fn register_metrics(registry: &mut prometheus_client::registry::Registry) {
    registry.register(
        "disruptor_membership_refused",
        "What membership refused to take or dial, by reason: table_full, unverified_full (peers that never connected are bounded), discovery_rate (first dials of new peers), claimed_address_budget (addresses nobody connected from are dialled a few times per window)",
        crate::membership::REFUSED.clone(),
    );
    registry.register(
        "disruptor_membership_entries",
        "Entries of the membership table: verified (connected at some point) and unverified (heard of only)",
        TABLE_SIZE.clone(),
    );
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
}

/// Builds the swarm, opens every listener (waiting until each reports its
/// address, so port 0 and bind errors are known before we print anything),
/// and returns the handle and the loop to spawn.
pub async fn start(
    config: &PeerConfig,
    http_addr: SocketAddr,
    workers: Workers,
    desired_tx: watch::Sender<Arc<DesiredApps>>,
    registry: &mut prometheus_client::registry::Registry,
) -> Result<(Client, EventLoop), StartError> {
    let mut swarm = build_swarm(config)?;
    let mut pending = Vec::new();
    for addr in &config.listen {
        ensure_port_free(addr)?;
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        pending.push((id, addr.clone()));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !pending.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| StartError::Listen {
                addr: pending[0].1.clone(),
                reason: "no listen address reported within 10 s".into(),
            })?;
        match event {
            SwarmEvent::NewListenAddr { listener_id, .. } => {
                pending.retain(|(id, _)| *id != listener_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some((_, addr)) = pending.iter().find(|(id, _)| *id == listener_id) {
                    return Err(StartError::Listen {
                        addr: addr.clone(),
                        reason: match reason {
                            Ok(()) => "listener closed".into(),
                            Err(e) => e.to_string(),
                        },
                    });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some((_, addr)) = pending.iter().find(|(id, _)| *id == listener_id) {
                    return Err(StartError::Listen {
                        addr: addr.clone(),
                        reason: error.to_string(),
                    });
                }
            }
            other => tracing::debug!(?other, "event before listeners were ready"),
        }
    }
    let p2p_metrics = libp2p::metrics::Metrics::new(registry);
    register_metrics(registry);
    let (client, event_loop) =
        EventLoop::new(swarm, config, http_addr, workers, desired_tx, p2p_metrics);
    Ok((client, event_loop))
}

fn build_swarm(config: &PeerConfig) -> Result<Swarm<behaviour::Behaviour>, StartError> {
    let key = &config.keypair;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    // pnet goes under noise: the pre-shared key encrypts everything,
    // including the noise handshake, so outsiders cannot even start one.
    let transport = match config.psk {
        Some(psk) => secure(
            tcp.and_then(move |socket, _| PnetConfig::new(psk).handshake(socket)),
            key,
            config.timing.connect_timeout,
        ),
        None => secure(tcp, key, config.timing.connect_timeout),
    }
    .map_err(|e| StartError::Transport(e.to_string()))?;
    let behaviour = behaviour::Behaviour::new(key).map_err(StartError::Transport)?;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_other_transport(|_| transport)
        .unwrap_or_else(|never| match never {})
        .with_behaviour(|_| behaviour)
        .unwrap_or_else(|never| match never {})
        .with_swarm_config(|c| {
            // Peers of a mesh stay connected: the connection itself is how a
            // dead peer is noticed within milliseconds.
            c.with_idle_connection_timeout(Duration::from_secs(365 * 24 * 3600))
        })
        .build();
    Ok(swarm)
}

/// noise + yamux over `base`, with the connection timeout (a wrong
/// pre-shared key is only noticed when it runs out).
fn secure<T>(
    base: T,
    key: &Keypair,
    timeout: Duration,
) -> Result<Boxed<(PeerId, StreamMuxerBox)>, noise::Error>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
    T::Error: Send + Sync + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
{
    Ok(base
        .upgrade(Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .timeout(timeout)
        .boxed())
}

/// libp2p's TCP listener sets SO_REUSEPORT, so a second peer on the same
/// port would silently share it (and the kernel would split connections
/// between the two). Probe with a plain socket first so that mistake is a
/// clear error instead.
fn ensure_port_free(addr: &Multiaddr) -> Result<(), StartError> {
    use libp2p::multiaddr::Protocol;
    let mut it = addr.iter();
    let ip: std::net::IpAddr = match it.next() {
        Some(Protocol::Ip4(ip)) => ip.into(),
        Some(Protocol::Ip6(ip)) => ip.into(),
        _ => return Ok(()),
    };
    let Some(Protocol::Tcp(port)) = it.next() else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind(SocketAddr::new(ip, port))
        .map(drop)
        .map_err(|e| StartError::Listen {
            addr: addr.clone(),
            reason: e.to_string(),
        })
}
