//! The libp2p side of a peer: the transport (TCP with an optional
//! pre-shared key, noise, yamux), the behaviours, the [`EventLoop`] task
//! that owns the swarm, and the [`Client`] handle everyone else uses.
//!
//! - `behaviour`: gossipsub (announcements), identify, ping, the members
//!   exchange for newcomers, connection limits;
//! - `event_loop`: the swarm task: membership, announcements, the mesh's
//!   decisions, the published views;
//! - `client`: the handle: views, decisions, jobs to other peers, bundle
//!   fetches;
//! - `jobs`: jobs between peers on long-lived streams outside the swarm
//!   task (the inbound side is [`serve_inbound`]);
//! - [`bundles`]: serving bundles to other peers and fetching them;
//! - [`wire`]: the protocol names and frames, for tools.
//!
//! The layers above are reached only through what [`start`] and
//! [`serve_inbound`] are handed: [`Announced`] (what this peer says about
//! itself), a `watch` sender for the [`DesiredApps`] and a [`RunJob`] (how
//! an inbound job runs here).

mod behaviour;
pub mod bundles;
mod client;
mod event_loop;
mod jobs;
mod neighbors;
mod reach;
mod slots;
pub mod swim;
pub mod usage;

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

pub use behaviour::{MAX_JOB_TIMEOUT, PROTOCOL_VERSION, message_id as gossip_message_id};
pub use client::Client;
pub use event_loop::EventLoop;
pub use jobs::{MAX_BATCH_BYTES, serve_inbound};

/// The names and frames other peers must speak, in one place (for tools
/// that talk to a mesh without being a peer, like `examples/rogue`).
pub mod wire {
    pub use super::behaviour::{MEMBERS_PROTOCOL, MEMBERSHIP_TOPIC, PROTOCOL_VERSION};
    pub use super::bundles::BUNDLE_PROTOCOL;
    pub use super::jobs::JOBS_STREAM_PROTOCOL;
    pub use super::jobs::frame::{
        Request, decode_answer, decode_request, encode_answer, encode_request,
    };
}

use std::sync::{Arc, LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;

use libp2p::pnet::PreSharedKey;
use tokio::time::Instant;

use crate::apps::{AppName, AppStatus};
use crate::error::JobError;
use crate::mesh::desired::DesiredApps;
use crate::mesh::membership::Timing;
use crate::mesh::trust::Admins;

/// What the network layer needs to know to start (built from the peer's
/// validated configuration).
#[derive(Clone)]
pub struct Settings {
    /// This peer's identity.
    pub keypair: Keypair,
    /// Where it listens for other peers.
    pub listen: Vec<Multiaddr>,
    /// Peers to join through.
    pub bootstrap: Vec<Multiaddr>,
    /// The private mesh's pre-shared key, if any.
    pub psk: Option<PreSharedKey>,
    /// Membership timing.
    pub timing: Timing,
    /// Whose signed decisions this peer takes.
    pub admins: Admins,
    /// This peer's HTTP address, told to others in announcements.
    pub http_addr: SocketAddr,
    /// This peer's labels (`--label`), told to others in announcements.
    pub labels: crate::mesh::labels::Labels,
}

/// Runs a job another peer sent here (app, one line of JSON, deadline) on
/// this peer's workers. The network calls it for every inbound job; it
/// never reaches into the layers above for them.
///
/// A trait rather than a boxed closure: [`serve_inbound`] is generic over
/// it, so an inbound job's future is built in place, with no allocation
/// and no dynamic call per job.
pub trait RunJob: Clone + Send + Sync + 'static {
    /// Runs one job and returns its JSON result.
    fn run(
        &self,
        app: AppName,
        payload: Arc<str>,
        deadline: Instant,
    ) -> impl Future<Output = Result<String, JobError>> + Send;

    /// Runs a batch of jobs of one app (a stream's lines) and returns one
    /// result per payload, in their order. By default each runs as a job
    /// of its own, all at once.
    fn run_batch(
        &self,
        app: AppName,
        payloads: Vec<Arc<str>>,
        deadline: Instant,
    ) -> impl Future<Output = Vec<Result<String, JobError>>> + Send {
        async move {
            let jobs = payloads
                .into_iter()
                .map(|p| self.run(app.clone(), p, deadline));
            futures::future::join_all(jobs).await
        }
    }
}

/// What this peer tells the mesh about itself besides membership: asked
/// for at every announcement (so it must be cheap and must not block).
pub trait Announced: Send + 'static {
    /// Its apps and how they are doing.
    fn apps(&self) -> Vec<AppStatus>;
    /// Hashes of the bundles it holds and serves.
    fn bundles(&self) -> Vec<String>;
    /// Whether it installs deployed bundles.
    fn remote_deploy(&self) -> bool;
}

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
        crate::mesh::membership::REFUSED.clone(),
    );
    registry.register(
        "disruptor_membership_entries",
        "Entries of the membership table: verified (connected at some point) and unverified (heard of only)",
        TABLE_SIZE.clone(),
    );
    registry.register(
        "disruptor_membership_records_missing",
        "Members the failure detector holds alive whose signed announcement this peer lacks (fetched from a neighbour; they are not up until it arrives)",
        RECORDS_MISSING.clone(),
    );
    registry.register(
        "disruptor_membership_records_relayed",
        "Newcomers' signed announcements this peer fetched from a member list and passed on to the gossip mesh (their own had not reached it)",
        RECORDS_RELAYED.clone(),
    );
    swim::register_metrics(registry);
}

/// `disruptor_membership_records_relayed`: see [`register_metrics`].
pub(crate) static RECORDS_RELAYED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// `disruptor_membership_records_missing`: see [`register_metrics`].
pub(crate) static RECORDS_MISSING: LazyLock<Gauge> = LazyLock::new(Gauge::default);

/// Why the network could not start (the peer exits with code 1).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The transport or the behaviours could not be built.
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    /// A `--listen` address cannot be listened on (in use, not local, or
    /// no address reported within 10 s).
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// What the system or libp2p said.
        reason: String,
    },
}

/// Builds the swarm, opens every listener (waiting until each reports its
/// address, so port 0 and bind errors are known before we print anything),
/// and returns the handle and the loop to spawn.
pub async fn start(
    config: &Settings,
    announced: Box<dyn Announced>,
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
    let (client, event_loop) = EventLoop::new(swarm, config, announced, desired_tx, p2p_metrics);
    Ok((client, event_loop))
}

fn build_swarm(config: &Settings) -> Result<Swarm<behaviour::Behaviour>, StartError> {
    let key = &config.keypair;
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    // pnet goes under noise: the pre-shared key encrypts everything,
    // including the noise handshake, so outsiders cannot even start one.
    let transport = match config.psk {
        // In-process meshes (tests): libp2p's memory transport, selected by
        // `/memory/N` listen addresses; the same noise and yamux on top.
        _ if in_memory(config) => secure(
            libp2p::core::transport::MemoryTransport::default(),
            key,
            config.timing.connect_timeout,
        ),
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

/// Whether the peer lives in this process only (`/memory/N` addresses).
fn in_memory(config: &Settings) -> bool {
    use libp2p::multiaddr::Protocol;
    (config.listen.iter())
        .chain(&config.bootstrap)
        .any(|a| a.iter().any(|p| matches!(p, Protocol::Memory(_))))
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
