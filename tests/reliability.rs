//! Reliability under a mesh that changes while it works: chaos (peers and
//! workers killed under steady load), a rolling restart of every peer, and
//! a rogue peer speaking the protocols badly on purpose.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const TOOL: &str = "apps/tool";

/// These tests each load both cores on purpose (steady load, a flood); run
/// side by side they starve each other and measure the machine instead of
/// the mesh. Each holds this lock while it runs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// 5 peers, each with an identity and `tests/apps` (2 workers each).
fn five(dir: &std::path::Path) -> MeshBuilder<'static> {
    Mesh::of(dir, 5).identities().apps(test_apps()).workers(2)
}

/// What a client saw of one request.
#[derive(Debug)]
struct Seen {
    status: u16,
    took: Duration,
    body: String,
    /// Entries that refused it (connection error or 503) before one took it.
    moved: u32,
    /// When the answer came.
    at: Instant,
}

/// Sends one job to the first of `entries` that takes it; a connection
/// error or a 503 sends it to the next entry (at most `entries.len()`
/// tries), as a client of a mesh with several entry points would.
fn send_via(
    c: &reqwest::blocking::Client,
    entries: &[String],
    first: usize,
    body: &str,
    timeout_ms: u64,
    move_on: bool,
) -> Seen {
    let start = Instant::now();
    let mut moved = 0;
    let tries = if move_on { entries.len() } else { 1 };
    let mut last = None;
    for k in 0..tries {
        let entry = &entries[(first + k) % entries.len()];
        let resp = c
            .post(format!("http://{entry}/{TOOL}"))
            .header("content-type", "application/json")
            .header("x-disruptor-timeout-ms", timeout_ms.to_string())
            .body(body.to_string())
            .send();
        match resp {
            Ok(r) => {
                let status = r.status().as_u16();
                let body = r.text().unwrap_or_default();
                if status == 503 && move_on && k + 1 < tries {
                    moved += 1;
                    last = Some((status, body));
                    continue;
                }
                return Seen {
                    status,
                    took: start.elapsed(),
                    body,
                    moved,
                    at: Instant::now(),
                };
            }
            Err(e) => {
                moved += 1;
                last = Some((0, format!("{entry}: {e}")));
            }
        }
    }
    let (status, body) = last.unwrap_or((0, "no entry".into()));
    Seen {
        status,
        took: start.elapsed(),
        body,
        moved,
        at: Instant::now(),
    }
}

/// `threads` clients, each sending a job every `every` through `entries`
/// (client t starts at entry t) until `stop`, at most 10,000 jobs each.
fn steady_load(
    entries: Vec<String>,
    threads: usize,
    every: Duration,
    timeout_ms: u64,
    move_on: bool,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Seen>>> {
    (0..threads)
        .map(|t| {
            let entries = entries.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = http_client();
                let mut seen = Vec::new();
                let mut next = Instant::now();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 10_000 {
                    let body = format!(r#"{{"t":{t},"i":{i},"sleep":0.005}}"#);
                    seen.push(send_via(&c, &entries, t + i, &body, timeout_ms, move_on));
                    i += 1;
                    next += every;
                    std::thread::sleep(next.saturating_duration_since(Instant::now()));
                }
                seen
            })
        })
        .collect()
}

#[test]
fn chaos_peers_and_workers_killed_under_steady_load() {
    let _serial = one_at_a_time();
    let dir = scratch("chaos");
    let mut peers = five(dir.path()).run(TOOL, &[]).start();
    let entries = vec![peers[0].http.clone(), peers[1].http.clone()];
    let timeout_ms = 5000;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients = steady_load(
        entries,
        4,
        Duration::from_millis(20),
        timeout_ms,
        false,
        stop.clone(),
    );

    // Kill a random worker every 600 ms, on any peer still alive; SIGKILL
    // the two non-entry peers p3 and p4 at 5 s and 10 s.
    let mut workers_killed = 0;
    let mut killed_peers = Vec::new();
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut rand = move |n: usize| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        (rng_state % n as u64) as usize
    };
    while started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(600));
        let t = started.elapsed();
        if t > Duration::from_secs(5) && killed_peers.is_empty() {
            peers[3].sigkill();
            killed_peers.push(3);
        }
        if t > Duration::from_secs(10) && killed_peers.len() == 1 {
            peers[4].sigkill();
            killed_peers.push(4);
        }
        let alive: Vec<usize> = (0..5).filter(|i| !killed_peers.contains(i)).collect();
        let victim = &peers[alive[rand(alive.len())]];
        let pids = victim.worker_pids(TOOL);
        if !pids.is_empty() {
            let pid = pids[rand(pids.len())];
            if kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
                workers_killed += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();

    let total = seen.len();
    let ok = seen.iter().filter(|s| s.status == 200).count();
    let busy = seen.iter().filter(|s| s.status == 503).count();
    let max = seen.iter().map(|s| s.took).max().unwrap_or_default();
    let failures: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    eprintln!(
        "chaos: {total} requests in 20 s, {ok} x 200, {busy} x 503, {} other; max latency {max:?}; \
         {workers_killed} workers and 2 peers SIGKILLed",
        total - ok - busy
    );
    assert!(total > 1000, "only {total} requests were sent");
    assert!(
        seen.iter().all(|s| s.status != 0),
        "a request got no response: {:?}",
        failures.iter().find(|s| s.status == 0)
    );
    assert!(
        ok * 1000 >= total * 995,
        "{ok} of {total} were 200 (need 99.5%); failures: {:?}",
        failures
            .iter()
            .take(10)
            .map(|s| (s.status, &s.body))
            .collect::<Vec<_>>()
    );
    assert!(
        max < Duration::from_millis(timeout_ms + 1000),
        "a request took {max:?}, longer than its timeout of {timeout_ms} ms"
    );
    assert!(workers_killed >= 10, "only {workers_killed} workers killed");

    // The survivors agree: each other up, the killed two down.
    let survivors = &peers[..3];
    let dead: Vec<String> = killed_peers.iter().map(|i| peers[*i].id.clone()).collect();
    wait_for(
        "the survivors to agree on membership",
        Duration::from_secs(10),
        || {
            for p in survivors {
                let up = p.up_ids();
                for q in survivors {
                    if q.id != p.id && !up.contains(&q.id) {
                        return Err(format!("{} does not see {} up: {up:?}", p.name, q.name));
                    }
                }
                if let Some(d) = dead.iter().find(|d| up.contains(d)) {
                    return Err(format!("{} still sees {d} up", p.name));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn a_rolling_restart_of_every_peer_under_load_fails_no_job() {
    let _serial = one_at_a_time();
    let dir = scratch("rolling");
    let mut peers = five(dir.path()).start();
    start_app(&peers[0], TOOL, &[]);
    let all_ids: Vec<String> = peers.iter().map(|p| p.id.clone()).collect();
    let running_everywhere = |observer: &Peer| -> Result<(), String> {
        let m = observer.apps()["mesh"][TOOL].clone();
        if all_ids.iter().all(|id| m[id]["state"] == "running") {
            Ok(())
        } else {
            Err(format!("{m}"))
        }
    };
    wait_for("the app on all 5 peers", Duration::from_secs(15), || {
        running_everywhere(&peers[0])
    });

    // Clients use every peer as an entry: when the one they try is
    // stopping or down, they go to the next (and count it).
    let entries: Vec<String> = peers.iter().map(|p| p.http.clone()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let clients = steady_load(
        entries,
        4,
        Duration::from_millis(10),
        10_000,
        true,
        stop.clone(),
    );
    // Each peer's restart window: from its SIGTERM until the mesh runs
    // the app on it again.
    let mut windows = Vec::new();
    for i in 0..peers.len() {
        std::thread::sleep(Duration::from_millis(700));
        let from = Instant::now();
        let status = peers[i].sigterm();
        assert!(status.success(), "p{i} exits 0 after SIGTERM: {status:?}");
        let log = peers[i].log_text();
        assert!(
            log.contains("announcing that this peer is leaving") && log.contains("drained in"),
            "p{i} did not drain: {log}"
        );
        peers[i].restart(dir.path());
        let observer = &peers[(i + 1) % peers.len()];
        wait_for(
            "the restarted peer to run the app again",
            Duration::from_secs(15),
            || running_everywhere(observer),
        );
        windows.push((i, from, Instant::now()));
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients
        .into_iter()
        .flat_map(|c| c.join().expect("client thread"))
        .collect();
    let moved: u32 = seen.iter().map(|s| s.moved).sum();
    let failed: Vec<&Seen> = seen.iter().filter(|s| s.status != 200).collect();
    eprintln!(
        "rolling restart of 5 peers: {} jobs, {} failed; {moved} times a client moved to another entry",
        seen.len(),
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} jobs failed during the rolling restart: {:?}",
        failed.len(),
        failed
            .iter()
            .take(10)
            .map(|s| (s.status, &s.body))
            .collect::<Vec<_>>()
    );
    // The load really ran through every restart, however fast the machine.
    for (i, from, to) in windows {
        let during = seen.iter().filter(|s| s.at >= from && s.at <= to).count();
        assert!(
            during >= 5,
            "only {during} jobs were answered while p{i} restarted ({:?})",
            to - from
        );
    }
}

#[test]
fn a_rogue_peer_cannot_crash_stall_or_poison_the_others() {
    let _serial = one_at_a_time();
    let dir = scratch("rogue");
    let mut peers = Mesh::of(dir.path(), 3)
        .apps(repo_apps())
        .run("apps/echo/echo", &[])
        .start();
    let target_pid = peers[0].pid().as_raw();
    let rss_before = rss_kib(target_pid);

    // The rogue attacks p0 for 8 s; meanwhile jobs go through every peer.
    let rogue = Proc::spawn(
        "the rogue",
        rogue_cmd().arg(peers[0].tcp_multiaddr()).arg("8"),
    );
    let rogue_pid = rogue.pid();
    let started = Instant::now();
    let mut jobs = 0;
    let mut max_rss = rss_before;
    while started.elapsed() < Duration::from_secs(8) && jobs < 2000 {
        for p in &peers {
            let body = format!(r#"{{"n":{jobs}}}"#);
            let (status, _, answer) = p.job("apps/echo/echo", &body);
            assert_eq!(
                status, 200,
                "a job through {} failed under attack: {answer}",
                p.name
            );
            assert_eq!(answer, body, "a wrong answer through {}", p.name);
            assert_eq!(p.get("/healthz").status(), 200);
            jobs += 1;
        }
        max_rss = max_rss.max(rss_kib(target_pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = rogue.output(Duration::from_secs(30));
    assert!(!pid_alive(rogue_pid));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the rogue failed: {report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_str(report.trim()).expect("rogue's JSON line");
    eprintln!(
        "rogue: {report}; {jobs} honest jobs all 200; target RSS {rss_before} KiB before, at most {max_rss} KiB during"
    );
    // The attacks really ran.
    for (key, at_least) in [
        ("gossip_sent", 1000),
        ("streams_opened", 20),
        ("streams_refused", 1),
        ("garbage_frames", 6),
        ("jobs_written", 100),
        ("members_garbage", 3),
    ] {
        assert!(
            r[key].as_u64().unwrap_or(0) >= at_least,
            "the rogue's {key} is below {at_least}: {report}"
        );
    }
    assert!(jobs >= 30, "only {jobs} honest jobs ran during the attack");
    for p in &mut peers {
        assert!(p.is_running(), "{} died under attack", p.name);
    }
    assert!(
        max_rss < rss_before + 150 * 1024,
        "the target's memory grew from {rss_before} KiB to {max_rss} KiB under attack"
    );
    // Membership among the honest peers is intact, and the flood of
    // announcements was cut to the per-author rate.
    peers.wait_converged(Duration::from_secs(10));
    assert!(
        peers[0].log_text().contains("refused a job stream"),
        "the per-peer stream cap never triggered"
    );
}
