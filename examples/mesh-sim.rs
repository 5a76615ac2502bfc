//! mesh-sim: the real SWIM membership state machine, thousands of peers in
//! one process on virtual time (see `disruptor::mesh::sim`).
//!
//!     scripts/mesh-sim --peers 100,1000,10000 --loss 0.01
//!
//! For each size: the time from the last start of a chain of peers until
//! every peer sees every other, the time from the start of one more peer
//! (joining the formed mesh) until every peer sees it and it sees them all,
//! the time from a SIGKILL-like stop of one
//! peer until the first and then every survivor holds it dead, false downs
//! (downs of peers that were not stopped), and the idle traffic per peer.

use std::time::{Duration, Instant};

use clap::Parser;
use disruptor::mesh::sim::{SimConfig, scenario};

#[derive(Parser)]
#[command(about = "Simulate disruptor's SWIM membership at scale")]
struct Args {
    /// Mesh sizes to run, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100,1000,10000")]
    peers: Vec<usize>,
    /// Probability that a message is lost.
    #[arg(long, default_value_t = 0.01)]
    loss: f64,
    /// Seeds everything (a seed reproduces a run exactly).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Virtual seconds of idling measured for the traffic figures.
    #[arg(long, default_value_t = 30)]
    idle_seconds: u64,
    /// Milliseconds between the starts of consecutive peers (each joins
    /// through the one before it).
    #[arg(long, default_value_t = 1)]
    start_gap_ms: u64,
    /// Give up on a step after this many virtual seconds.
    #[arg(long, default_value_t = 300)]
    limit_seconds: u64,
}

fn main() {
    let args = Args::parse();
    if !(0.0..1.0).contains(&args.loss) {
        eprintln!("mesh-sim: --loss takes a probability in [0, 1)");
        std::process::exit(2);
    }
    // Every size is checked before anything is printed or run.
    if let Some(n) = args.peers.iter().find(|&&n| n < 3) {
        eprintln!("mesh-sim: --peers {n}: a mesh needs at least 3 peers to kill one and watch");
        std::process::exit(2);
    }
    println!(
        "mesh-sim: chain start {} ms apart, latency 1-5 ms, loss {}, seed {}, probe 1 s, gossip 200 ms x 3, ids of 38 bytes",
        args.start_gap_ms, args.loss, args.seed
    );
    println!(
        "{:>7} {:>10} {:>7} {:>9} {:>10} {:>10} {:>7} {:>6} {:>10} {:>10} {:>9} {:>8}",
        "peers",
        "converge",
        "rounds",
        "join1",
        "detect1st",
        "detectall",
        "rounds",
        "false",
        "msgs/p/s",
        "bytes/p/s",
        "largest",
        "wall"
    );
    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.2}s", d.as_secs_f64()));
    let rounds =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64()));
    for &n in &args.peers {
        let wall = Instant::now();
        let mut cfg = SimConfig::new(n, args.loss, args.seed);
        cfg.start_gap = Duration::from_millis(args.start_gap_ms);
        let r = scenario(
            cfg,
            Duration::from_secs(args.idle_seconds),
            Duration::from_secs(args.limit_seconds),
        );
        println!(
            "{:>7} {:>10} {:>7} {:>9} {:>10} {:>10} {:>7} {:>6} {:>10.1} {:>10.0} {:>9} {:>7.1}s",
            n,
            secs(r.converged),
            rounds(r.converged),
            secs(r.joined),
            secs(r.detected_first),
            secs(r.detected_all),
            rounds(r.detected_all),
            r.false_downs,
            r.idle_per_peer.0,
            r.idle_per_peer.1,
            r.largest_idle,
            wall.elapsed().as_secs_f64()
        );
    }
    println!(
        "(converge: a mesh-wide start, one join per start gap; join1: one more peer joining the formed mesh; rounds: probe intervals of 1 s; msgs and bytes per peer per second while idle)"
    );
}
