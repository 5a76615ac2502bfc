//! The libp2p behaviours a peer runs, combined into one `NetworkBehaviour`.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, gossipsub, identify, ping};
use serde::{Deserialize, Serialize};

/// Identify protocol version: peers that answer with another one are not
/// disruptor peers (or speak an incompatible version) and are disconnected.
pub const PROTOCOL_VERSION: &str = "/disruptor/1.0.0";
/// Gossipsub topic carrying membership announcements.
pub const MEMBERSHIP_TOPIC: &str = "disruptor/membership/1";
/// Request-response protocol: "tell me the peers you know" (sent on every
/// new connection, so a newcomer learns the whole mesh in one round trip).
pub const MEMBERS_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/members/1");
/// Largest gossip message accepted (announcements are a few hundred bytes).
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// Largest member list sent in one answer.
pub const MAX_MEMBERS_IN_ANSWER: usize = 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersRequest {
    pub v: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersResponse {
    pub peers: Vec<MemberHint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemberHint {
    pub id: String,
    pub addrs: Vec<String>,
}

/// How often each connected peer is pinged.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// Longest a job may be given (`X-Disruptor-Timeout-Ms`).
pub const MAX_JOB_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub members: request_response::json::Behaviour<MembersRequest, MembersResponse>,
    /// Long-lived job streams (see `jobs.rs`), opened and accepted outside
    /// the swarm task.
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub fn new(key: &Keypair) -> Result<Self, String> {
        let gossipsub_config = gossipsub::ConfigBuilder::default()
            // Every message is signed by its author; we check that the
            // announced id is the author's before accepting or forwarding.
            .validation_mode(gossipsub::ValidationMode::Strict)
            .validate_messages()
            .max_transmit_size(MAX_GOSSIP_BYTES)
            // Every peer publishes its own announcements straight to all its
            // neighbours (flood publish) and the mesh is fully connected, so
            // the gossip mesh only covers the gaps (a peer not yet connected
            // to everyone), with IHAVE gossip behind it. Each copy a peer
            // receives is verified and each forward sent: with a mesh of
            // one, an idle peer of a 20-peer mesh used ~20% less CPU than
            // with three (two meshes side by side, BENCHMARKS.md).
            .mesh_n(1)
            .mesh_n_low(1)
            .mesh_n_high(2)
            .mesh_outbound_min(0)
            .gossip_lazy(3)
            // Mesh upkeep and IHAVE gossip every 2 s rather than every 1 s:
            // announcements already reach everyone by flood publish, and
            // each heartbeat costs every idle peer a wake-up.
            .heartbeat_interval(Duration::from_secs(2))
            // The default id is the base58 text of the source plus the
            // sequence number, computed for every copy received; raw bytes
            // identify a message just as well for a fraction of the cost.
            .message_id_fn(|m: &gossipsub::Message| {
                let mut id = m.source.map(|p| p.to_bytes()).unwrap_or_default();
                id.extend_from_slice(&m.sequence_number.unwrap_or_default().to_be_bytes());
                gossipsub::MessageId::new(&id)
            })
            .build()
            .map_err(|e| format!("gossipsub config: {e}"))?;
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub_config,
        )?;
        Ok(Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(format!("disruptor/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(
                // An answered ping also counts as hearing from a peer
                // (between its announcements). Pings are not free: each
                // timer firing wakes a thread; every 5 s is enough.
                ping::Config::new()
                    .with_interval(PING_INTERVAL)
                    .with_timeout(Duration::from_secs(10)),
            ),
            gossipsub,
            members: request_response::json::Behaviour::new(
                [(MEMBERS_PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(10)),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
