//! The libp2p behaviours a peer runs, combined into one `NetworkBehaviour`.

use std::time::Duration;

use libp2p::gossipsub::{PeerScoreParams, PeerScoreThresholds, TopicScoreParams};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{StreamProtocol, connection_limits, gossipsub, identify, ping};
use serde::{Deserialize, Serialize};

use crate::mesh::membership::MAX_PEERS;

/// Identify protocol version: peers that answer with another one are not
/// disruptor peers (or speak an incompatible version) and are disconnected.
pub const PROTOCOL_VERSION: &str = "/disruptor/1.1.0";
/// Gossipsub topic carrying membership announcements.
pub const MEMBERSHIP_TOPIC: &str = "disruptor/membership/2";
/// Request-response protocol: "tell me the peers you know" (sent on every
/// new connection, so a newcomer learns the whole mesh in one round trip).
pub const MEMBERS_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/members/1");
/// Largest gossip message accepted (announcements are a few hundred bytes).
pub const MAX_GOSSIP_BYTES: usize = 256 * 1024;
/// Most message ids in one IHAVE or IWANT: with 2 bytes of framing each
/// that is ~88 KB, within [`MAX_GOSSIP_BYTES`].
const MAX_IDS_PER_CONTROL: usize = 4000;
/// Bytes of a gossip message id (see [`message_id`]).
const MESSAGE_ID_BYTES: usize = 20;
/// Largest member list sent in one answer.
pub const MAX_MEMBERS_IN_ANSWER: usize = 1024;

/// A request for the members the answering peer knows: their addresses
/// (`want` empty), or the signed records of the members named in `want`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersRequest {
    pub v: u32,
    #[serde(default)]
    pub want: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MembersResponse {
    pub peers: Vec<MemberHint>,
    /// Signed records ([`crate::mesh::record`]), hex.
    #[serde(default)]
    pub records: Vec<String>,
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

/// Connections to one peer, at most: two peers that dial each other at the
/// same moment each keep the connection they made, so an honest pair may
/// hold two; a third is refused.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Established connections, at most. Membership gives every connected peer
/// a table slot (it drops unconnected entries to make room), which it can
/// only keep doing while connected peers fit the table: one per slot.
pub const MAX_ESTABLISHED: u32 = MAX_PEERS as u32;
/// Established inbound connections, at most: three quarters of the total,
/// so that a flood of inbound connections from throwaway keys cannot take
/// every slot and this peer can still dial the peers it knows.
pub const MAX_ESTABLISHED_INCOMING: u32 = MAX_ESTABLISHED / 4 * 3;
/// Inbound connections still in their handshake, at most. A handshake on
/// a LAN takes milliseconds; a whole mesh of a hundred peers restarting at
/// once fits, and a flood of half-open connections stops here rather than
/// at the file descriptor limit.
pub const MAX_PENDING_INCOMING: u32 = 128;
/// Outbound dials in flight, at most: membership dials at most every
/// entry of its table once at a time.
pub const MAX_PENDING_OUTGOING: u32 = MAX_PEERS as u32;

// What the limits rely on, checked when compiling: connected peers fit
// the table, inbound connections leave room to dial out, and two peers that
// dial each other at once both keep their connection.
const _: () = {
    assert!(MAX_ESTABLISHED as usize <= MAX_PEERS);
    assert!(MAX_ESTABLISHED_INCOMING < MAX_ESTABLISHED);
    assert!(MAX_CONNECTIONS_PER_PEER >= 2);
};

fn connection_limits() -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
            .with_max_established(Some(MAX_ESTABLISHED))
            .with_max_established_incoming(Some(MAX_ESTABLISHED_INCOMING))
            .with_max_established_outgoing(Some(MAX_ESTABLISHED))
            .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
            .with_max_pending_outgoing(Some(MAX_PENDING_OUTGOING)),
    )
}

/// Weight of an invalid message on the membership topic (gossipsub's P4):
/// the score is this times the square of a decaying count of them.
const INVALID_MESSAGE_WEIGHT: f64 = -10.0;
/// The count of invalid messages decays to a tenth in this long.
const INVALID_MESSAGE_MEMORY: Duration = Duration::from_secs(60);
/// Below this score, no IHAVE/IWANT gossip is exchanged with a peer
/// (4 invalid messages in a short while: 4² × -10 = -160).
const GOSSIP_THRESHOLD: f64 = -100.0;
/// Below this, this peer's own announcements are no longer sent to it (5).
const PUBLISH_THRESHOLD: f64 = -200.0;
/// Below this, everything it sends is dropped unread (7: 7² × -10 = -490).
pub const GRAYLIST_THRESHOLD: f64 = -400.0;

/// gossipsub peer scoring (v1.1): how a peer that sends or relays invalid
/// announcements is turned away.
///
/// One thing only counts, against a peer; an honest one sits at 0:
/// - P4, invalid messages on the membership topic: what the event loop
///   reports as `Reject` (announcements every honest peer refuses alike:
///   malformed, or claiming another peer's id) and what gossipsub itself
///   refuses (bad signatures). One is a glitch (-10); a handful within a
///   minute cross [`GOSSIP_THRESHOLD`], [`PUBLISH_THRESHOLD`] and then
///   [`GRAYLIST_THRESHOLD`], where gossipsub drops whatever the peer sends
///   before it costs any work. The count decays to a tenth in a minute, so
///   a peer that stops is heard again (after ~10 s for 10 invalid
///   messages, ~1 min for 50).
///
/// Turned off, with the reason:
/// - P7 (IHAVE promises not kept, GRAFT during a backoff) and the slow-peer
///   penalty: both punish honest peers whose send queues overflow, which
///   is what a flood does to them. Seen in a test: under a rogue's flood
///   of valid announcements, honest peers answered IWANTs late (40 "broken
///   promises" at once, 40² × -10) and graylisted each other, splitting
///   the mesh: an attacker could set honest peers against each other.
///   Gossip is a backup here (the mesh does the work), gossipsub caps
///   what it asks for per IHAVE whatever the score, and it enforces GRAFT
///   backoffs on its own.
/// - P1/P2/P3/P3b (time in mesh, first and mesh deliveries): announcements
///   are rare (sent on change, see [`gossipsub_config`]), so delivery counts
///   would mostly measure chance, and P3 would punish honest mesh peers
///   whose messages arrive first by another path.
/// - P6 (peers sharing an IP): peers of one mesh often share a host or a
///   NAT (containers, tests, a LAN behind one address). Throwaway keys are
///   bounded by the connection limits and membership's bounds instead.
/// - P5 (application score): not used.
///
/// A disconnected peer's score is kept for 5 minutes (gossipsub's default
/// is an hour): long enough that reconnecting does not wash it, short
/// enough that throwaway keys do not pile up.
fn peer_score() -> (PeerScoreParams, PeerScoreThresholds) {
    let topic = TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.0,
        time_in_mesh_quantum: Duration::from_secs(1),
        first_message_deliveries_weight: 0.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: INVALID_MESSAGE_WEIGHT,
        invalid_message_deliveries_decay: gossipsub::score_parameter_decay(INVALID_MESSAGE_MEMORY),
        ..TopicScoreParams::default()
    };
    let mut params = PeerScoreParams {
        app_specific_weight: 0.0,
        ip_colocation_factor_weight: 0.0,
        behaviour_penalty_weight: 0.0,
        slow_peer_weight: 0.0,
        retain_score: Duration::from_secs(300),
        ..PeerScoreParams::default()
    };
    params
        .topics
        .insert(gossipsub::IdentTopic::new(MEMBERSHIP_TOPIC).hash(), topic);
    let thresholds = PeerScoreThresholds {
        gossip_threshold: GOSSIP_THRESHOLD,
        publish_threshold: PUBLISH_THRESHOLD,
        graylist_threshold: GRAYLIST_THRESHOLD,
        // Peer exchange is off (gossipsub's `prune_peers` is 0): peers are
        // learned from member lists only.
        accept_px_threshold: 0.0,
        // Off: announcements are too rare for scores to tell good mesh
        // peers apart, and peers with a negative score are pruned anyway.
        opportunistic_graft_threshold: 0.0,
    };
    (params, thresholds)
}

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that a connection over a limit is refused before any
    /// other behaviour spends anything on it.
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub gossipsub: gossipsub::Behaviour,
    pub members: request_response::json::Behaviour<MembersRequest, MembersResponse>,
    /// Long-lived job streams (see `jobs.rs`), opened and accepted outside
    /// the swarm task.
    pub stream: libp2p_stream::Behaviour,
    /// Addresses of members this peer is not connected to (see `reach.rs`).
    pub reach: super::reach::Behaviour,
}

/// A gossip message's id: the first [`MESSAGE_ID_BYTES`] bytes of the
/// SHA-256 of its data. The data is a record signed by its author (see
/// `mesh::record`), and the author numbers its records, so two
/// announcements never share an id; an id that binds the whole content
/// also means a forgery can never be taken for (and so shadow) the genuine
/// message it imitates.
pub fn message_id(m: &gossipsub::Message) -> gossipsub::MessageId {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(&m.data);
    gossipsub::MessageId::new(&digest[..MESSAGE_ID_BYTES])
}

/// Gossip settings for the membership topic.
fn gossipsub_config() -> Result<gossipsub::Config, String> {
    gossipsub::ConfigBuilder::default()
        // No gossipsub signatures: gossipsub checks one on every copy of a
        // message it receives, duplicates included (its decoder runs before
        // its duplicate filter), and a peer gets each announcement from
        // every peer of its gossip mesh: a fifth of a forming 150-peer
        // mesh's CPU went there. The announcement is a record signed by its
        // author anyway (`mesh::record`), checked once, for the first copy,
        // before it is accepted or forwarded (`validate_messages`). A
        // message with an author or a signature field is invalid here.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
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
        // Announcements go out when they change (and as a rare refresh),
        // to the gossip mesh only: no flood publish, so what a peer sends
        // and receives does not grow with the mesh. A mesh of 4 (3 to 8)
        // reaches every peer of a mesh of thousands in a few hops, with
        // IHAVE gossip behind it for what a hop lost.
        .flood_publish(false)
        .mesh_n(4)
        .mesh_n_low(3)
        .mesh_n_high(8)
        .mesh_outbound_min(1)
        .gossip_lazy(3)
        // Mesh upkeep and IHAVE gossip every 2 s rather than every 1 s:
        // each heartbeat costs every idle peer a wake-up.
        .heartbeat_interval(Duration::from_secs(2))
        // The first heartbeat one interval after the start, not 5 s more
        // (gossipsub's default): until then a newcomer's gossip mesh is
        // whoever subscribed first (its bootstrap peer and the newcomers
        // that bootstrap from it), and its first IHAVE gossip, which tells
        // peers outside that corner about the messages it holds, waits
        // for that heartbeat.
        .heartbeat_initial_delay(Duration::ZERO)
        // Anonymous messages have no author or number to name them by.
        .message_id_fn(message_id)
        .build()
        .map_err(|e| format!("gossipsub config: {e}"))
}

impl Behaviour {
    pub fn new(key: &Keypair) -> Result<Self, String> {
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Anonymous,
            gossipsub_config()?,
        )?;
        let (params, thresholds) = peer_score();
        gossipsub.with_peer_score(params, thresholds)?;
        Ok(Behaviour {
            limits: connection_limits(),
            identify: identify::Behaviour::new(
                identify::Config::new(PROTOCOL_VERSION.to_string(), key.public())
                    .with_agent_version(format!("disruptor/{}", env!("CARGO_PKG_VERSION")))
                    // No address cache: identify would add the addresses a
                    // peer claims for itself to any dial of that peer made
                    // without addresses (job streams), bypassing
                    // membership's budget for claimed addresses.
                    .with_cache_size(0),
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
            reach: super::reach::Behaviour::default(),
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
        let per_id = 1 + 1 + MESSAGE_ID_BYTES;
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
    fn peer_scoring_is_valid_and_its_thresholds_are_as_documented() {
        let (params, thresholds) = peer_score();
        params.validate().expect("valid score parameters");
        thresholds.validate().expect("valid thresholds");
        let topic = &params.topics[&gossipsub::IdentTopic::new(MEMBERSHIP_TOPIC).hash()];
        let p4 = |n: f64| n * n * topic.invalid_message_deliveries_weight * topic.topic_weight;
        // A glitch or three is forgiven; a handful is not.
        assert!(p4(3.0) > thresholds.gossip_threshold);
        assert!(p4(4.0) < thresholds.gossip_threshold);
        assert!(p4(5.0) < thresholds.publish_threshold);
        assert!(p4(6.0) > thresholds.graylist_threshold);
        assert!(p4(7.0) < thresholds.graylist_threshold);
        // The count falls to a tenth in a minute.
        let left = topic.invalid_message_deliveries_decay.powi(60);
        assert!((left - 0.1).abs() < 1e-6, "{left}");
        // Nothing else counts against an honest peer.
        assert_eq!(params.ip_colocation_factor_weight, 0.0);
        assert_eq!(params.behaviour_penalty_weight, 0.0);
        assert_eq!(params.slow_peer_weight, 0.0);
        assert_eq!(topic.mesh_message_deliveries_weight, 0.0);
        assert_eq!(topic.mesh_failure_penalty_weight, 0.0);
    }

    #[test]
    fn message_ids_bind_the_whole_message_and_have_the_assumed_length() {
        let message = |data: &[u8]| gossipsub::Message {
            source: None,
            data: data.to_vec(),
            sequence_number: None,
            topic: gossipsub::IdentTopic::new(MEMBERSHIP_TOPIC).hash(),
        };
        let id = message_id(&message(b"a record"));
        assert_eq!(id.0.len(), MESSAGE_ID_BYTES);
        assert_eq!(id, message_id(&message(b"a record")));
        // One bit anywhere (a forgery keeping the signature, say) is
        // another message.
        assert_ne!(id, message_id(&message(b"a recorc")));
        assert_ne!(id, message_id(&message(b"b record")));
    }

    /// `n` labels, each a name and a value of the longest length.
    fn longest_labels(n: usize) -> crate::mesh::labels::Labels {
        use crate::mesh::labels::{Labels, MAX_PART};
        let items: Vec<String> = (0..n)
            .map(|i| format!("{i:0>w$}={}", "v".repeat(MAX_PART), w = MAX_PART))
            .collect();
        let labels = Labels::parse_all(&items).unwrap();
        assert_eq!(labels.len(), n);
        labels
    }

    #[test]
    fn a_full_announcement_fits_in_one_message() {
        use crate::apps::{AppName, MAX_APP_NAME};
        use crate::apps::{AppState, AppStatus};
        use crate::mesh::desired::{DesiredApp, MAX_DESIRED, MAX_ORIGIN};
        use crate::mesh::membership::{ANNOUNCE_VERSION, Announce, MAX_BUNDLES, MAX_LINKS};
        // Every field at its longest: what the event loop may publish when
        // it has dropped the error texts (it does when they do not fit).
        let name = |i: usize| {
            let n = format!("apps/{i:03}");
            AppName::parse(&format!("{n}{}", "x".repeat(MAX_APP_NAME - n.len()))).unwrap()
        };
        let key = crate::mesh::trust::AdminSecret::generate();
        let desired: Vec<DesiredApp> = (0..MAX_DESIRED)
            .map(|i| {
                let mut d = DesiredApp {
                    app: name(i),
                    run: true,
                    workers: Some(crate::apps::MAX_WORKERS_PER_APP),
                    clock: u64::MAX,
                    origin: String::new(),
                    bundle: Some(crate::deploy::BundleRef {
                        hash: "f".repeat(64),
                        size: u64::MAX,
                    }),
                    at_ms: u64::MAX,
                    signed: None,
                    peers: Some(crate::mesh::placement::MAX_PEERS_PLACED),
                    on: longest_labels(crate::mesh::placement::MAX_SELECTORS),
                };
                key.sign(&mut d);
                d.origin = "o".repeat(MAX_ORIGIN);
                d
            })
            .collect();
        let apps: Vec<AppStatus> = (0..MAX_DESIRED)
            .map(|i| AppStatus {
                app: name(i),
                state: AppState::Starting,
                workers: u32::MAX,
                in_flight: u32::MAX,
                clock: u64::MAX,
                error: None,
                version: Some("f".repeat(64)),
            })
            .collect();
        let a = Announce {
            v: ANNOUNCE_VERSION,
            id: PeerId::random().to_string(),
            incarnation: u64::MAX,
            seq: u64::MAX,
            listen: (0..8)
                .map(|i| format!("/ip6/ffff:ffff:ffff:ffff:ffff:ffff:ffff:fff{i}/tcp/65535"))
                .collect(),
            http: Some("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".into()),
            labels: longest_labels(crate::mesh::labels::MAX_LABELS).to_strings(),
            leaving: false,
            apps,
            desired,
            links: vec!["12345678".into(); MAX_LINKS],
            bundles: vec!["f".repeat(64); MAX_BUNDLES],
            remote_deploy: true,
        };
        let bytes = serde_json::to_vec(&a).unwrap().len();
        assert!(
            bytes <= MAX_GOSSIP_BYTES,
            "the largest announcement is {bytes} bytes, over {MAX_GOSSIP_BYTES}"
        );
    }
}
