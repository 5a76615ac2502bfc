//! A rogue peer, for tests: joins a mesh as a libp2p peer that speaks
//! disruptor's protocols badly on purpose, and attacks one target peer
//! until a deadline.
//!
//! It is written against libp2p directly (not disruptor's own network
//! code), so it can send what an honest peer never would:
//! - gossip: non-JSON, wrong shapes, deep nesting, another peer's id,
//!   too many addresses, a message over the size limit, and a flood of
//!   well-formed announcements far above the honest rate;
//! - job streams: a length prefix of 4 GiB, unknown frame kinds, bad UTF-8,
//!   unknown apps, many streams at once, and a flood of real jobs whose
//!   answers it never reads;
//! - the member-list and bundle protocols: junk bytes, an endless length,
//!   paths instead of hashes, unknown hashes.
//!
//! Usage: `rogue TARGET_MULTIADDR SECONDS`. Prints one JSON line of what it
//! did, so a test can check that the attacks really ran.
//!
//! With any of the flags below it runs the membership attacks instead (see
//! `rogue/hostile.rs`), all with well-formed, validly signed messages, so that
//! nothing it sends is invalid and only the bounds can stop it:
//! - `--members ADDR` (`HOST:PORT`): fills the target's membership and
//!   aims its dials at `ADDR`, a third party: member-list answers with
//!   1024 made-up peers, announcements from throwaway keys relayed as if
//!   from others, and throwaway keys that connect, claim `ADDR`, and leave;
//! - `--inflate APP`: announces 256 live workers of `APP` and answers its
//!   jobs (echoing them), to draw the mesh's jobs;
//! - `--junk N`: first sends N malformed announcements of its own, then
//!   valid ones (peer scoring should have stopped listening by then);
//! - `--connections N`: opens N connections to the target with its one key.
//!
//! In that mode it also ends early on SIGTERM, printing its report.
//!
//! `rogue decide ...` is the attack on who decides what runs (see
//! `rogue/decide.rs`): it announces start decisions for a bundle it serves
//! itself.

/// The attack on decisions (beside this file, like the membership attacks).
#[path = "rogue/decide.rs"]
mod decide;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::identity::Keypair;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, identify, noise, ping, tcp, yamux};
use tokio::sync::mpsc;

// The protocol names, from the library: the rogue speaks what peers speak.
use disruptor::network::wire::{
    BUNDLE_PROTOCOL as BUNDLES, JOBS_STREAM_PROTOCOL as JOBS, MEMBERS_PROTOCOL as MEMBERS,
    MEMBERSHIP_TOPIC as TOPIC, PROTOCOL_VERSION,
};

#[derive(NetworkBehaviour)]
struct Rogue {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
}

#[derive(Default, Debug)]
struct Tally {
    gossip_sent: u64,
    gossip_failed: u64,
    streams_opened: u64,
    streams_refused: u64,
    garbage_frames: u64,
    jobs_written: u64,
    answers_read: u64,
    members_garbage: u64,
}

/// The membership attacks (beside this file, so `examples/` holds one example).
#[path = "rogue/hostile.rs"]
mod hostile;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("decide") {
        return decide::run(&args[2..]).await;
    }
    if args.len() < 3 {
        eprintln!(
            "usage: rogue TARGET_MULTIADDR SECONDS [--members HOST:PORT] [--inflate APP] [--junk N] [--connections N] | rogue decide ..."
        );
        std::process::exit(2);
    }
    let target: Multiaddr = args[1].parse()?;
    let seconds: f64 = args[2].parse()?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    if args.len() > 3 {
        let opts = hostile::Options::parse(&args[3..])?;
        return hostile::run(target, deadline, opts).await;
    }

    let key = libp2p::identity::Keypair::generate_ed25519();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let gossipsub = gossipsub::Behaviour::new(
                // The honest peers' wire: anonymous messages named by the
                // hash of their content (their authors sign the records).
                MessageAuthenticity::Anonymous,
                gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    .message_id_fn(disruptor::network::gossip_message_id)
                    .max_transmit_size(4 * 1024 * 1024)
                    .build()
                    .expect("gossipsub config"),
            )
            .expect("gossipsub");
            Rogue {
                identify: identify::Behaviour::new(identify::Config::new(
                    PROTOCOL_VERSION.into(),
                    key.public(),
                )),
                ping: ping::Behaviour::default(),
                gossipsub,
                stream: libp2p_stream::Behaviour::new(),
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let topic = IdentTopic::new(TOPIC);
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    swarm.dial(target.clone())?;
    let control = swarm.behaviour().stream.new_control();

    // Wait until the target is connected and subscribed (gossip can go out).
    let target_id = loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, swarm.select_next_some()).await {
            Err(_) => return Err("the target never connected and subscribed".into()),
            Ok(SwarmEvent::Behaviour(RogueEvent::Gossipsub(gossipsub::Event::Subscribed {
                peer_id,
                ..
            }))) => break peer_id,
            Ok(SwarmEvent::OutgoingConnectionError { error, .. }) => {
                return Err(format!("cannot reach the target: {error}").into());
            }
            Ok(_) => {}
        }
    };

    // The swarm task publishes what the gossip attacker hands it.
    let (publish_tx, mut publish_rx) = mpsc::channel::<Vec<u8>>(64);
    let (tally_tx, mut tally_rx) = mpsc::unbounded_channel::<Tally>();
    let gossip = tokio::spawn(gossip_attacks(key.clone(), publish_tx, deadline));
    let streams = tokio::spawn(stream_attacks(control, target_id, deadline, tally_tx));

    let mut tally = Tally::default();
    let mut publishing = true;
    while publishing {
        tokio::select! {
            msg = publish_rx.recv() => match msg {
                Some(data) => match swarm.behaviour_mut().gossipsub.publish(topic.clone(), data) {
                    Ok(_) => tally.gossip_sent += 1,
                    Err(_) => tally.gossip_failed += 1,
                },
                None => publishing = false,
            },
            _ = swarm.select_next_some() => {}
        }
    }
    let _ = gossip.await;
    // Keep the swarm polled while the stream attacks finish.
    let mut streams = streams;
    loop {
        tokio::select! {
            _ = &mut streams => break,
            _ = swarm.select_next_some() => {}
        }
    }
    while let Ok(t) = tally_rx.try_recv() {
        tally.streams_opened += t.streams_opened;
        tally.streams_refused += t.streams_refused;
        tally.garbage_frames += t.garbage_frames;
        tally.jobs_written += t.jobs_written;
        tally.answers_read += t.answers_read;
        tally.members_garbage += t.members_garbage;
    }
    println!(
        "{{\"gossip_sent\":{},\"gossip_failed\":{},\"streams_opened\":{},\"streams_refused\":{},\"garbage_frames\":{},\"jobs_written\":{},\"answers_read\":{},\"members_garbage\":{}}}",
        tally.gossip_sent,
        tally.gossip_failed,
        tally.streams_opened,
        tally.streams_refused,
        tally.garbage_frames,
        tally.jobs_written,
        tally.answers_read,
        tally.members_garbage
    );
    Ok(())
}

/// An announcement signed as a record by `key` (see `mesh::record`): well
/// formed whatever it says.
fn announce(key: &Keypair, id: &str, seq: u64, addrs: usize) -> Vec<u8> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let listen: Vec<String> = (0..addrs)
        .map(|i| format!("/ip4/127.0.0.1/tcp/{}", 1 + i % 60000))
        .collect();
    let json = serde_json::to_vec(&serde_json::json!({
        "v": 1, "id": id, "incarnation": now, "seq": seq, "listen": listen,
        "http": "127.0.0.1:1", "leaving": false, "apps": [], "desired": [],
    }))
    .unwrap();
    disruptor::mesh::record::seal(key, &json).expect("signs")
}

/// Malformed, oversized and flooding gossip, in rounds until the deadline.
async fn gossip_attacks(key: Keypair, tx: mpsc::Sender<Vec<u8>>, deadline: Instant) {
    let local = key.public().to_peer_id();
    let mut seq = 0u64;
    let other = PeerId::random().to_string();
    while Instant::now() < deadline {
        let mut batch: Vec<Vec<u8>> = vec![
            b"not json at all".to_vec(),
            (0..1024).map(|_| rand::random::<u8>()).collect(),
            br#"{"v":1}"#.to_vec(),
            br#"{"v":99,"id":"x"}"#.to_vec(),
            [vec![b'['; 100_000], vec![b']'; 100_000]].concat(),
            announce(&key, &other, 1, 1),
            announce(&key, &local.to_string(), 1, 100_000),
            vec![b'x'; 200 * 1024],
            vec![b'{'; 1024 * 1024],
        ];
        // The flood: well-formed announcements, far above the honest rate.
        for _ in 0..500 {
            seq += 1;
            batch.push(announce(&key, &local.to_string(), seq, 1));
        }
        for m in batch {
            if Instant::now() >= deadline || tx.send(m).await.is_err() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Bad frames on job streams, too many streams, a job flood nobody reads
/// the answers of, and junk on the member-list protocol.
async fn stream_attacks(
    control: libp2p_stream::Control,
    target: PeerId,
    deadline: Instant,
    tally: mpsc::UnboundedSender<Tally>,
) {
    let mut t = Tally::default();
    // A flood of real jobs on one stream, answers never read: the target
    // must stop reading (bounded memory), not buffer without end. Held
    // open for the whole attack.
    let mut flood_control = control.clone();
    // The other attacks wait until the flood holds its stream: they open
    // more than the target's per-peer cap of streams, and the flood's must
    // not be the one refused.
    let (flooding_tx, flooding_rx) = tokio::sync::oneshot::channel::<()>();
    let flood = tokio::spawn(async move {
        let mut t = Tally::default();
        let Ok(mut s) = flood_control.open_stream(target, JOBS).await else {
            t.streams_refused += 1;
            let _ = flooding_tx.send(());
            return t;
        };
        t.streams_opened += 1;
        let mut flooding_tx = Some(flooding_tx);
        let payload = format!("\"{}\"", "x".repeat(1000));
        let mut id = 0u64;
        while Instant::now() < deadline {
            id += 1;
            let frame = request_frame(id, "apps/echo/echo", &payload);
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, s.write_all(&frame)).await {
                Ok(Ok(())) => t.jobs_written += 1,
                _ => break,
            }
            if t.jobs_written == 100 {
                // The target has taken the stream and its first jobs.
                let _ = s.flush().await;
                if let Some(tx) = flooding_tx.take() {
                    let _ = tx.send(());
                }
            }
        }
        if let Some(tx) = flooding_tx.take() {
            let _ = tx.send(());
        }
        // Hold the stream until the deadline, never reading answers.
        tokio::time::sleep(deadline.saturating_duration_since(Instant::now())).await;
        drop(s);
        t
    });

    let _ = tokio::time::timeout(
        deadline.saturating_duration_since(Instant::now()),
        flooding_rx,
    )
    .await;
    let mut control = control;
    while Instant::now() < deadline {
        let garbage: Vec<Vec<u8>> = vec![
            vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            [&5u32.to_be_bytes()[..], &[9, 9, 9, 9, 9]].concat(),
            bad_utf8_frame(),
            request_frame(1, "../../bin/sh", "1"),
            request_frame(2, "apps/nope/nope", "{\"a\":1}"),
            request_frame(3, "apps/echo/echo", "{not json"),
        ];
        for g in garbage {
            match control.open_stream(target, JOBS).await {
                Ok(mut s) => {
                    t.streams_opened += 1;
                    if s.write_all(&g).await.is_ok() {
                        t.garbage_frames += 1;
                    }
                    let _ = s.flush().await;
                    let mut buf = [0u8; 256];
                    if let Ok(Ok(n)) =
                        tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await
                        && n > 0
                    {
                        t.answers_read += 1;
                    }
                }
                Err(_) => t.streams_refused += 1,
            }
        }
        // Many streams at once: past the per-peer cap they are closed.
        let mut held = Vec::new();
        for _ in 0..16 {
            match control.open_stream(target, JOBS).await {
                Ok(s) => {
                    t.streams_opened += 1;
                    held.push(s);
                }
                Err(_) => t.streams_refused += 1,
            }
        }
        for s in &mut held {
            let _ = s.write_all(&request_frame(7, "apps/echo/echo", "1")).await;
            let _ = s.flush().await;
        }
        let mut refused_by_close = 0;
        for s in &mut held {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => refused_by_close += 1,
                _ => {}
            }
        }
        t.streams_refused += refused_by_close;
        drop(held);
        // Junk and unknown hashes on the bundle protocol.
        for junk in [
            b"../../../../etc/passwd\n".to_vec(),
            format!("{}\n", "f".repeat(64)).into_bytes(),
            vec![0xff; 65],
        ] {
            if let Ok(mut s) = control.open_stream(target, BUNDLES).await {
                if s.write_all(&junk).await.is_ok() {
                    t.members_garbage += 1;
                }
                let mut buf = [0u8; 16];
                let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
            }
        }
        // Junk on the member-list protocol.
        for junk in [
            b"\xff\xff\xff\xff\xff\xff\xff\xff\x0f".to_vec(),
            b"\x05hello".to_vec(),
            vec![0x80; 64],
        ] {
            if let Ok(mut s) = control.open_stream(target, MEMBERS).await {
                if s.write_all(&junk).await.is_ok() {
                    t.members_garbage += 1;
                }
                let _ = s.close().await;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Ok(f) = flood.await {
        t.streams_opened += f.streams_opened;
        t.streams_refused += f.streams_refused;
        t.jobs_written += f.jobs_written;
    }
    let _ = tally.send(t);
}

fn request_frame(id: u64, app: &str, payload: &str) -> Vec<u8> {
    let len = 1 + 8 + 8 + 4 + 2 + app.len() + payload.len();
    let mut f = Vec::with_capacity(4 + len);
    f.extend_from_slice(&(len as u32).to_be_bytes());
    f.push(1);
    f.extend_from_slice(&id.to_be_bytes());
    f.extend_from_slice(&id.to_be_bytes()); // job id
    f.extend_from_slice(&5000u32.to_be_bytes());
    f.extend_from_slice(&(app.len() as u16).to_be_bytes());
    f.extend_from_slice(app.as_bytes());
    f.extend_from_slice(payload.as_bytes());
    f
}

fn bad_utf8_frame() -> Vec<u8> {
    let mut f = request_frame(4, "apps/echo/echo", "\"ok\"");
    let n = f.len();
    f[n - 2] = 0xff;
    f
}
