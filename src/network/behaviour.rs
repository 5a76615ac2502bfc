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
/// Most message ids in one IHAVE or IWANT: at the longest (a 44-byte peer
/// id and an 8-byte sequence number, 2 bytes of framing) that is ~216 KB,
/// within [`MAX_GOSSIP_BYTES`].
const MAX_IDS_PER_CONTROL: usize = 4000;
/// Longest id [`message_id`] makes: a peer id (at most 44 bytes: keys of
/// up to 42 bytes are inlined, longer ones hashed), then 8 bytes.
#[cfg(test)]
const MAX_MESSAGE_ID_BYTES: usize = 44 + 8;
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

/// How often each connected peer is pinged: for the round-trip times the
/// status page shows. Liveness comes from announcements (every 2 s by
/// default); pings every 5 s were a quarter of an idle peer's wake-ups in
/// a 20-peer mesh.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);

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

/// A gossip message's id: its author's peer id, then its sequence number.
fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    let mut id = m.source.map(|p| p.to_bytes()).unwrap_or_default();
    id.extend_from_slice(&m.sequence_number.unwrap_or_default().to_be_bytes());
    gossipsub::MessageId::new(&id)
}

/// Gossip settings for the membership topic.
fn gossipsub_config() -> Result<gossipsub::Config, String> {
    gossipsub::ConfigBuilder::default()
        // Every message is signed by its author; we check that the
        // announced id is the author's before accepting or forwarding.
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        .max_transmit_size(MAX_GOSSIP_BYTES)
        // Control messages (IHAVE lists of recent message ids, above
        // all) may fill a whole frame. gossipsub 0.50 sends IHAVEs of up
        // to 5,000 ids but by default refuses more than 16 KB of control
        // data in one frame; a refused frame resets the gossip stream,
        // loses the message behind it and, five resets later, stops
        // gossip on that connection for good. A 20-peer mesh crossed
        // 16 KB (~340 of our 46-byte ids) whenever a few peers restarted
        // at once. What we send must fit what we accept (see the test).
        .max_control_messages_sent(MAX_IDS_PER_CONTROL)
        .max_control_message_size(MAX_GOSSIP_BYTES)
        // Every peer publishes its own announcements straight to all its
        // neighbours (flood publish) and the mesh is fully connected, so
        // the gossip mesh only covers the gaps (a peer not yet connected
        // to everyone), with IHAVE gossip behind it. Each copy a peer
        // receives is verified and each forward sent: with a mesh of
        // one, an idle peer of a 20-peer mesh used ~20% less CPU than
        // with three (two meshes side by side, BENCHMARKS.md). No mesh
        // at all saved another ~13% but slowed a 20-peer chain's
        // convergence from 0.3 s to 7.5 s.
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
        .message_id_fn(message_id)
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))
}

impl Behaviour {
    pub fn new(key: &Keypair) -> Result<Self, String> {
        let gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(key.clone()),
            gossipsub_config()?,
        )?;
        Ok(Behaviour {
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(format!("disruptor/{}", env!("CARGO_PKG_VERSION"))),
            ),
            ping: ping::Behaviour::new(
                // An answered ping also counts as hearing from a peer.
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

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::PeerId;

    #[test]
    fn the_largest_control_message_we_send_is_one_we_accept() {
        let c = gossipsub_config().expect("valid gossip config");
        // Each id is a length-delimited protobuf field: tag, length, bytes.
        let per_id = 1 + 1 + MAX_MESSAGE_ID_BYTES;
        let topic_and_framing = 64 + MEMBERSHIP_TOPIC.len();
        let largest = c.max_control_messages_sent() * per_id + topic_and_framing;
        assert!(
            largest <= c.max_control_message_size(),
            "an IHAVE of {} ids is up to {largest} bytes, but peers accept {} bytes of control data",
            c.max_control_messages_sent(),
            c.max_control_message_size()
        );
        assert!(c.max_control_message_size() <= c.max_transmit_size());
    }

    #[test]
    fn message_ids_are_no_longer_than_assumed() {
        // The longest peer id there is: an inlined 42-byte key.
        let longest = libp2p::multihash::Multihash::<64>::wrap(0x00, &[7u8; 42]).unwrap();
        for source in [
            Keypair::generate_ed25519().public().to_peer_id(),
            PeerId::from_multihash(longest).expect("42-byte identity multihash"),
        ] {
            let message = gossipsub::Message {
                source: Some(source),
                data: Vec::new(),
                sequence_number: Some(u64::MAX),
                topic: gossipsub::IdentTopic::new(MEMBERSHIP_TOPIC).hash(),
            };
            let id = message_id(&message).0;
            assert!(id.len() <= MAX_MESSAGE_ID_BYTES, "{} bytes", id.len());
        }
    }
}
