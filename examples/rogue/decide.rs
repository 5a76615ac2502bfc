//! The rogue's attack on the mesh's decisions: make every peer fetch and
//! run code of its choosing.
//!
//! It joins the mesh, serves an archive of its own over the bundle protocol
//! (to anyone who asks, counting who does), and announces start decisions
//! that name that archive as the app's version: one unsigned, one signed
//! by an admin key of its own (which nobody trusts), with clocks far ahead
//! so they would win last-writer-wins. An honest peer re-announces what it
//! takes, so one peer taking them would spread them everywhere.
//!
//! With `ROGUE_JUNK=N` in its environment it also poisons the mesh's state:
//! each announcement carries N unsigned start decisions for made-up apps
//! with 200-character names (N = 500 once made an honest peer's own
//! announcement too large to publish, so the others marked it silent).
//!
//! Usage: `rogue decide TARGET_MULTIADDR SECONDS ARCHIVE APP [KEY_FILE]`;
//! prints `{"announcements": n, "bundle_requests": n}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use disruptor::apps::AppName;
use disruptor::deploy::{BundleRef, sha256_hex};
use disruptor::mesh::desired::DesiredApp;
use disruptor::mesh::trust::AdminSecret;
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAuthenticity};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, identify, noise, ping, tcp, yamux};

use super::{BUNDLES, PROTOCOL_VERSION, TOPIC};

#[derive(NetworkBehaviour)]
struct Decider {
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    gossipsub: gossipsub::Behaviour,
    stream: libp2p_stream::Behaviour,
}

pub async fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    if args.len() < 4 {
        eprintln!("usage: rogue decide TARGET_MULTIADDR SECONDS ARCHIVE APP [KEY_FILE]");
        std::process::exit(2);
    }
    let target: Multiaddr = args[0].parse()?;
    let deadline = Instant::now() + Duration::from_secs_f64(args[1].parse()?);
    let archive = Arc::new(std::fs::read(&args[2])?);
    let app = AppName::parse(&args[3])?;
    let own_key = match args.get(4) {
        Some(path) => AdminSecret::load(std::path::Path::new(path))?,
        None => AdminSecret::generate(),
    };

    let key = libp2p::identity::Keypair::generate_ed25519();
    let local = key.public().to_peer_id();
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| Decider {
            identify: identify::Behaviour::new(identify::Config::new(
                PROTOCOL_VERSION.into(),
                key.public(),
            )),
            ping: ping::Behaviour::default(),
            gossipsub: gossipsub::Behaviour::new(
                MessageAuthenticity::Anonymous,
                // Room for the junk: honest peers take up to 256 KiB.
                gossipsub::ConfigBuilder::default()
                    .validation_mode(gossipsub::ValidationMode::Anonymous)
                    .message_id_fn(disruptor::network::gossip_message_id)
                    .max_transmit_size(256 * 1024)
                    .build()
                    .expect("gossipsub config"),
            )
            .expect("gossipsub"),
            stream: libp2p_stream::Behaviour::new(),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    let topic = IdentTopic::new(TOPIC);
    swarm.behaviour_mut().gossipsub.subscribe(&topic)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    swarm.dial(target)?;

    // Serve the archive to whoever asks, and count the asks.
    let requests = Arc::new(AtomicU64::new(0));
    let mut incoming = swarm.behaviour().stream.new_control().accept(BUNDLES)?;
    {
        let (archive, requests) = (archive.clone(), requests.clone());
        tokio::spawn(async move {
            while let Some((_, mut s)) = incoming.next().await {
                requests.fetch_add(1, Ordering::Relaxed);
                let archive = archive.clone();
                tokio::spawn(async move {
                    let mut line = [0u8; 65];
                    if s.read_exact(&mut line).await.is_ok() {
                        let _ = s.write_all(&[0]).await;
                        let _ = s.write_all(&(archive.len() as u64).to_be_bytes()).await;
                        let _ = s.write_all(&archive).await;
                        let _ = s.close().await;
                    }
                });
            }
        });
    }

    let bundle = BundleRef {
        hash: sha256_hex(&archive),
        size: archive.len() as u64,
    };
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let decision = |clock: u64, origin: String| DesiredApp {
        app: app.clone(),
        run: true,
        workers: Some(1),
        clock,
        origin,
        bundle: Some(bundle.clone()),
        at_ms: now_ms,
        signed: None,
        peers: None,
        on: Default::default(),
    };
    // Clocks far ahead of any honest one (but within the jump bound), so
    // each would win last-writer-wins if it were taken.
    let unsigned = decision(100_000, local.to_string());
    let mut signed = decision(100_001, String::new());
    own_key.sign(&mut signed);

    let junk: Vec<DesiredApp> = (0..std::env::var("ROGUE_JUNK")
        .ok()
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0))
        .map(|i| {
            let name = format!("apps/junk{i:04}");
            let padded = format!("{name}{}", "j".repeat(200 - name.len()));
            let mut d = decision(100_000 + i as u64, local.to_string());
            d.app = AppName::parse(&padded).expect("a 200-character name");
            d.bundle = None;
            d
        })
        .collect();
    let mut seq = 0u64;
    let mut next = Instant::now();
    while Instant::now() < deadline {
        let wait = next.saturating_duration_since(Instant::now());
        tokio::select! {
            _ = tokio::time::sleep(wait) => {
                seq += 1;
                let desired: Vec<&DesiredApp> = [&unsigned, &signed].into_iter().chain(&junk).collect();
                let announcement = serde_json::json!({
                    "v": 1, "id": local.to_string(), "incarnation": now_ms, "seq": seq,
                    "listen": swarm.listeners().map(|a| a.to_string()).collect::<Vec<_>>(),
                    "http": "127.0.0.1:1", "leaving": false,
                    "apps": [{"app": app, "state": "running", "workers": 1, "in_flight": 0,
                              "clock": 100_001, "version": bundle.hash}],
                    "desired": desired,
                    "bundles": [bundle.hash],
                });
                let _ = swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(
                        topic.clone(),
                        disruptor::mesh::record::seal(&key, &serde_json::to_vec(&announcement)?)
                            .expect("signs"),
                    );
                next = Instant::now() + Duration::from_millis(500);
            }
            event = swarm.select_next_some() => {
                if let SwarmEvent::OutgoingConnectionError { error, .. } = event {
                    return Err(format!("cannot reach the target: {error}").into());
                }
            }
        }
    }
    println!(
        "{{\"announcements\":{seq},\"bundle_requests\":{}}}",
        requests.load(Ordering::Relaxed)
    );
    Ok(())
}
