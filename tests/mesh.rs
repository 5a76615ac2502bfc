//! The mesh, end to end: real peers on 127.0.0.1 finding each other,
//! noticing the dead, healing, and keeping outsiders out.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Detection bound for a SIGKILLed peer (the issue's target, p99).
const DETECT: Duration = Duration::from_secs(3);

#[test]
fn chain_of_five_converges_and_is_visible_everywhere() {
    let dir = scratch("chain5");
    let peers = Mesh::of(dir.path(), 5)
        .identities()
        .within(Duration::from_secs(15))
        .start();
    eprintln!(
        "5-peer chain converged {:?} after the last start",
        peers.converged_in
    );

    // The JSON shape the README documents.
    let v = peers[4].peers();
    assert_eq!(v["self"]["id"], peers[4].id);
    assert_eq!(v["self"]["http"], peers[4].http);
    assert!(
        v["self"]["listen"][0]
            .as_str()
            .unwrap()
            .starts_with("/ip4/127.0.0.1/tcp/")
    );
    let list = v["peers"].as_array().unwrap();
    assert_eq!(list.len(), 4, "self is excluded: {v}");
    for p in list {
        assert!(p["addrs"].as_array().is_some_and(|a| !a.is_empty()), "{p}");
        assert!(
            p["first_seen_ms"].as_u64().unwrap() > 1_600_000_000_000,
            "{p}"
        );
        assert!(
            p["last_seen_ms"].as_u64().unwrap() >= p["first_seen_ms"].as_u64().unwrap(),
            "{p}"
        );
        assert!(p.get("rtt_ms").is_some(), "{p}");
    }
    // Ping times arrive within a few seconds.
    wait_for("rtt_ms for every peer", Duration::from_secs(10), || {
        let v = peers[0].peers();
        let missing: Vec<_> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !p["rtt_ms"].is_number())
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("{missing:?}"))
        }
    });

    // Status page and health check.
    let page = peers[0].get("/");
    assert_eq!(page.status(), 200);
    let html = page.text().unwrap();
    for p in &peers {
        assert!(html.contains(&p.id), "status page lacks {}", p.id);
    }
    assert!(html.contains("4 up"), "{html}");
    assert_eq!(peers[0].get("/healthz").status(), 200);
    let missing = peers[0].get("/no/such/thing");
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().unwrap();
    assert!(body["error"].as_str().unwrap().contains("/no/such/thing"));

    // The CLI table.
    let out = cli(&["peers", &peers[2].http]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for p in &peers {
        assert!(text.contains(&p.id), "table lacks {}:\n{text}", p.id);
    }
    assert_eq!(
        text.lines().filter(|l| l.contains("  up  ")).count(),
        4,
        "{text}"
    );
    assert!(text.contains("4 up, 0 down"), "{text}");
    let out = cli(&["peers", &format!("http://{}/", peers[2].http), "--json"]);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["self"]["id"], peers[2].id);
}

#[test]
fn sigkilled_peer_is_down_everywhere_fast_and_rejoins_after_restart() {
    let dir = scratch("kill");
    let mut peers = Mesh::of(dir.path(), 4)
        .identities()
        .within(Duration::from_secs(15))
        .start();
    let victim_id = peers[1].id.clone();
    let killed_at = Instant::now();
    peers[1].sigkill();
    wait_down_everywhere(&peers, &victim_id, "");
    eprintln!(
        "SIGKILL detected by all survivors in {:?}",
        killed_at.elapsed()
    );

    // Same identity, same address, no manual step: up everywhere again.
    peers[1].restart(dir.path());
    assert_eq!(peers[1].id, victim_id, "identity file keeps the peer id");
    let took = peers.wait_converged(Duration::from_secs(10));
    eprintln!("restarted peer up everywhere after {took:?}");
    // The kill cost the survivors no false downs: the victim's one down
    // may be `dead` (the news came before the survivor's own redial was
    // refused), nothing else.
    for p in peers.iter().filter(|p| p.name != peers[1].name) {
        p.assert_failure_downs_at_most(1);
    }
}

/// A peer killed again right after its restart is in no survivor's active
/// view (theirs filled up while it was down) and SWIM probes only
/// connected members: only the peers it chose itself, at the other ends
/// of its neighbour streams, can tell. They found nothing for as long as
/// anyone waited, until a link the other peer chose was kept by both ends.
#[test]
fn a_peer_killed_right_after_its_restart_is_down_everywhere() {
    let dir = scratch("rekill");
    // 10 peers: an active view of 6, so not everyone is everyone's.
    let mut peers = Mesh::of(dir.path(), 10)
        .identities()
        .within(Duration::from_secs(20))
        .start();
    let victim = 3;
    let victim_id = peers[victim].id.clone();
    peers[victim].sigkill();
    wait_down_everywhere(&peers, &victim_id, " after its first death");
    peers[victim].restart(dir.path());
    peers.wait_converged(Duration::from_secs(15));
    let killed_at = Instant::now();
    peers[victim].sigkill();
    wait_down_everywhere(
        &peers,
        &victim_id,
        " after its second death, right after its restart",
    );
    eprintln!(
        "second SIGKILL detected by all survivors in {:?}",
        killed_at.elapsed()
    );
}

/// Waits until every running peer lists `victim` as down (within [`DETECT`]).
fn wait_down_everywhere(peers: &[Peer], victim: &str, when: &str) {
    for p in peers.iter().filter(|p| p.is_running()) {
        wait_for(
            &format!("{} to see the victim down{when}", p.name),
            DETECT,
            || match p.state_of(victim) {
                Some(s) if s["state"] == "down" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
}

#[test]
fn sigterm_says_goodbye_and_is_marked_left_at_once() {
    let dir = scratch("term");
    let mut peers = Mesh::of(dir.path(), 3)
        .identities()
        .within(Duration::from_secs(15))
        .start();
    let leaver = peers[2].id.clone();
    let t = Instant::now();
    let status = peers[2].sigterm();
    assert!(status.success(), "a graceful stop exits 0: {status:?}");
    for p in &peers[..2] {
        wait_for(
            "the leaver to be marked left",
            Duration::from_millis(1000),
            || match p.state_of(&leaver) {
                Some(s) if s["state"] == "down" && s["reason"] == "left" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    eprintln!(
        "SIGTERM: marked left everywhere {:?} after the signal",
        t.elapsed()
    );
    let log = peers[2].log_text();
    assert!(log.contains("leaving the mesh"), "{log}");
    // The down counter the no-false-down checks read (as 0 when it has no
    // sample) is there under this name, by reason.
    for p in &peers[..2] {
        assert_eq!(
            p.counter(r#"disruptor_peer_downs_total{reason="left"}"#),
            1.0,
            "{}",
            p.name
        );
    }
}

#[test]
fn bootstrap_peer_dies_and_the_rest_stay_together_then_it_rejoins_alone() {
    let dir = scratch("boot");
    // Only the seed has an identity file (it comes back with its id).
    let seed_key = dir.path().join("seed.key");
    let mut peers = Mesh::named(dir.path(), &["seed", "p1", "p2", "p3"])
        .star()
        .each(|i, opts| opts.identity = (i == 0).then(|| seed_key.clone()))
        .within(Duration::from_secs(15))
        .start();
    let seed_id = peers[0].id.clone();
    peers[0].sigkill();
    // For several seconds (longer than the silence timeout), the others keep
    // listing each other as up, and the seed as down.
    let until = Instant::now() + Duration::from_secs(6);
    let mut checks = 0;
    while Instant::now() < until {
        for p in &peers[1..] {
            let up = p.up_ids();
            for q in &peers[1..] {
                if q.id != p.id {
                    assert!(
                        up.contains(&q.id),
                        "{} lost {} after the seed died: {up:?}",
                        p.name,
                        q.name
                    );
                }
            }
        }
        checks += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(checks >= 10, "only {checks} rounds of checks ran");
    for p in &peers[1..] {
        let s = p.state_of(&seed_id).expect("seed still known");
        assert_eq!(s["state"], "down", "{s}");
    }
    // The seed comes back with no --bootstrap at all: the others redial it.
    peers[0].restart(dir.path());
    assert_eq!(peers[0].id, seed_id);
    let took = peers.wait_converged(Duration::from_secs(10));
    eprintln!("seed rejoined by being redialled, {took:?} after its restart");
}

#[test]
fn private_mesh_keeps_outsiders_out() {
    let dir = scratch("psk");
    let key_a = dir.path().join("a.key");
    let key_b = dir.path().join("b.key");
    for k in [&key_a, &key_b] {
        let out = cli(&["keygen", "--out", k.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }
    let text = std::fs::read_to_string(&key_a).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[..2], ["/key/swarm/psk/1.0.0/", "/base16/"]);
    assert!(lines[2].len() == 64 && lines[2].chars().all(|c| c.is_ascii_hexdigit()));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key_a).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let private = Mesh::of(dir.path(), 3)
        .identities()
        .psk(&key_a)
        .within(Duration::from_secs(15))
        .start();
    let other_key = Peer::start(
        dir.path(),
        "other-key",
        PeerOpts {
            bootstrap: vec![private[0].listen.clone()],
            psk: Some(key_b.clone()),
            ..Default::default()
        },
    );
    let no_key = Peer::start(
        dir.path(),
        "no-key",
        PeerOpts {
            bootstrap: vec![private[1].listen.clone()],
            ..Default::default()
        },
    );
    let outsiders = [&other_key, &no_key];
    // Until both sides have logged why the handshake failed, and for a while
    // after, no outsider shows up anywhere and the private mesh stays whole.
    let assert_separate = || {
        for p in &private {
            let ids: Vec<String> = p.states().into_iter().map(|(id, _)| id).collect();
            for o in outsiders {
                assert!(
                    !ids.contains(&o.id),
                    "{} lists outsider {}: {ids:?}",
                    p.name,
                    o.name
                );
            }
            assert_eq!(p.up_ids().len(), 2, "{} lost private peers", p.name);
        }
        for o in outsiders {
            assert!(
                o.states().is_empty(),
                "{} lists peers: {:?}",
                o.name,
                o.states()
            );
        }
    };
    wait_for(
        "handshake failures to be logged on both sides",
        Duration::from_secs(20),
        || {
            assert_separate();
            let mut missing = Vec::new();
            for o in outsiders {
                if !o.log_text().contains("handshake failed") {
                    missing.push(o.name.clone());
                }
            }
            if !private
                .iter()
                .any(|p| p.log_text().contains("not in this private mesh"))
            {
                missing.push("private side".into());
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("no clear reason logged by {missing:?}"))
            }
        },
    );
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        assert_separate();
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn no_false_down_under_full_cpu_load() {
    let _machine = whole_machine();
    let dir = scratch("load");
    let peers = Mesh::of(dir.path(), 4)
        .identities()
        .within(Duration::from_secs(15))
        .start();
    // One busy loop per core, each stopped by PID when the test ends.
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let _burn: Vec<Proc> = (0..cores)
        .map(|_| {
            Proc::spawn(
                "a busy loop",
                Command::new("sh").args(["-c", "while :; do :; done"]),
            )
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while Instant::now() < until {
        for p in &peers {
            for (id, state) in p.states() {
                if state != "up" {
                    panic!(
                        "{} marked {id} {state} under CPU load: {}",
                        p.name,
                        p.state_of(&id).unwrap_or_default()
                    );
                }
            }
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(rounds >= 8, "only {rounds} rounds ran");
    // Between polls too: nobody was marked down even for a moment.
    for p in &peers {
        p.assert_no_false_downs();
        assert_eq!(
            p.counter(r#"disruptor_peer_downs_total{reason="unreachable"}"#),
            0.0,
            "{}",
            p.name
        );
    }
}

fn assert_usage_error(args: &[&str], needle: &str) {
    let out = cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?} should exit 2; stderr: {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{args:?}: stderr lacks {needle:?}: {stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
    assert!(
        stderr.trim().lines().count() <= 6,
        "a short message, not a dump: {stderr}"
    );
}

#[test]
fn malformed_cli_input_is_a_clear_error_with_exit_code_2() {
    let dir = scratch("cli");
    let bad_key = dir.path().join("bad.key");
    std::fs::write(&bad_key, "/key/swarm/psk/1.0.0/\n/base16/\n1234\n").unwrap();
    let bad_id = dir.path().join("bad.id");
    std::fs::write(&bad_id, "not a key").unwrap();
    // Key files must be private to their owner (or the peer refuses them
    // before it looks inside).
    make_private(&bad_key);
    make_private(&bad_id);
    let missing = dir.path().join("missing.key");
    let missing = missing.to_str().unwrap();

    assert_usage_error(
        &["peer", "--listen", "nonsense"],
        "--listen \"nonsense\" is not an address",
    );
    assert_usage_error(&["peer", "--listen", "127.0.0.1:70000"], "not a port");
    assert_usage_error(&["peer", "--bootstrap", "/ip4/1.2.3.4"], "--bootstrap");
    assert_usage_error(&["peer", "--http", "localhost"], "--http");
    assert_usage_error(&["peer", "--psk-file", missing], "cannot read key file");
    assert_usage_error(
        &["peer", "--psk-file", bad_key.to_str().unwrap()],
        "64 hex digits",
    );
    assert_usage_error(
        &["peer", "--identity", bad_id.to_str().unwrap()],
        "not a disruptor identity file",
    );
    assert_usage_error(&["peer", "--down-after", "soon"], "--down-after");
    assert_usage_error(&["peer", "--threads", "0"], "--threads");
    assert_usage_error(&["peer", "--threads", "many"], "--threads");
    assert_usage_error(&["peer", "--no-such-flag"], "--no-such-flag");
    assert_usage_error(&["peers", "not an address"], "is not an address");
    assert_usage_error(&["frobnicate"], "frobnicate");
    let existing = dir.path().join("exists.key");
    std::fs::write(&existing, "x").unwrap();
    assert_usage_error(&["keygen", "--out", existing.to_str().unwrap()], "--force");

    // A peer that is not there: a runtime failure (exit 1), still one clear line.
    let out = cli(&["peers", "127.0.0.1:1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot reach the peer at http://127.0.0.1:1"),
        "{stderr}"
    );

    // keygen to stdout is a valid key file.
    let out = cli(&["keygen"]);
    assert!(out.status.success());
    let path = dir.path().join("stdout.key");
    std::fs::write(&path, &out.stdout).unwrap();
    make_private(&path);
    let p = Peer::start(
        dir.path(),
        "keyed",
        PeerOpts {
            psk: Some(path),
            ..Default::default()
        },
    );
    assert_eq!(p.peers()["self"]["private"], true);
}

fn make_private(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn a_port_in_use_is_reported_not_panicked() {
    let dir = scratch("inuse");
    let p = Peer::start(dir.path(), "first", PeerOpts::default());
    let out = cli(&["peer", "--listen", "127.0.0.1:0", "--http", &p.http]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen for HTTP on {}", p.http)),
        "{stderr}"
    );
    let out = cli(&["peer", "--listen", &p.listen, "--http", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn peers_may_start_in_any_order() {
    let dir = scratch("order");
    // A port for the first peer, which will start last.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let seed_addr = format!("127.0.0.1:{port}");
    let b = Peer::start(
        dir.path(),
        "b",
        PeerOpts {
            bootstrap: vec![seed_addr.clone()],
            ..Default::default()
        },
    );
    let c = Peer::start(
        dir.path(),
        "c",
        PeerOpts {
            bootstrap: vec![b.listen.clone()],
            ..Default::default()
        },
    );
    // b and c find each other; b keeps trying its bootstrap address although
    // it is no longer alone.
    wait_converged(&[&b, &c], Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(1500));
    let a = Peer::start(
        dir.path(),
        "a",
        PeerOpts {
            listen_port: port,
            ..Default::default()
        },
    );
    let took = wait_converged(&[&a, &b, &c], Duration::from_secs(15));
    eprintln!("late seed joined after {took:?}");
}

#[test]
fn a_dead_peer_is_forgotten_after_the_configured_time() {
    let dir = scratch("forget");
    let mut peers = Mesh::named(dir.path(), &["a", "b", "c"])
        .star()
        .flags(&["--forget-after", "2s"])
        .within(Duration::from_secs(10))
        .start();
    let gone = peers[2].id.clone();
    peers[2].sigkill();
    let (a, b) = (&peers[0], &peers[1]);
    for p in [a, b] {
        wait_for(
            "the dead peer to be listed as down",
            Duration::from_secs(3),
            || match p.state_of(&gone) {
                Some(s) if s["state"] == "down" => Ok(()),
                other => Err(format!("{other:?}")),
            },
        );
    }
    let t = Instant::now();
    for p in [a, b] {
        wait_for(
            "the dead peer to be forgotten",
            Duration::from_secs(6),
            || match p.state_of(&gone) {
                None => Ok(()),
                Some(s) => Err(format!("{s}")),
            },
        );
    }
    assert!(
        t.elapsed() >= Duration::from_millis(1500),
        "forgotten too early: {:?}",
        t.elapsed()
    );
    // And the survivors are still whole.
    wait_converged(&[a, b], Duration::from_secs(5));
}

/// Issue 16 with real processes: 50 peers in a chain (each knows only the
/// one started before it) become one mesh without each holding a
/// connection to every other, see a SIGKILLed peer down within the
/// detection bound, and jobs sent to a peer without the app reach every
/// peer that runs it (job links are opened on demand, to peers the sender
/// need not be a neighbour of).
#[test]
fn fifty_peers_converge_detect_a_kill_and_jobs_reach_every_peer_with_the_app() {
    const N: usize = 50;
    let _machine = whole_machine();
    let dir = scratch("fifty");
    let mut peers = Mesh::of(dir.path(), N)
        .apps(test_apps())
        .workers(1)
        // Every fifth peer runs the app, the others serve through them.
        .each(|i, opts| {
            if i % 5 != 0 {
                opts.apps = None;
            }
        })
        .within(Duration::from_secs(60))
        .start();
    eprintln!(
        "{N} peers whole {:?} after the last start",
        peers.converged_in
    );

    // Bounded connections: a peer holds its active view (8 at 50 peers),
    // the peers that chose it, and what probes and jobs opened lately;
    // not one connection per peer.
    let mut connected: Vec<usize> = peers
        .iter()
        .map(|p| {
            p.peers()["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|q| q["connected"] == true)
                .count()
        })
        .collect();
    connected.sort_unstable();
    eprintln!("connections per peer, sorted: {connected:?}");
    assert!(
        connected[N / 2] <= N / 2,
        "the median peer is connected to {} of {} others: {connected:?}",
        connected[N / 2],
        N - 1
    );

    let with_app: Vec<&Peer> = peers.iter().step_by(5).collect();
    start_app(&peers[0], "apps/words", &[]);
    let sender = &peers[N - 1];
    wait_running(sender, "apps/words", &with_app);
    // Random dispatch over 10 peers: each has served within a few dozen
    // jobs; 400 bounds the loop (a peer missed that long is unreachable).
    let mut served: std::collections::BTreeMap<String, u32> = Default::default();
    for i in 0..400 {
        let (status, ran_on, body) = sender.job("apps/words", &format!("\"job {i}\""));
        let words: serde_json::Value = serde_json::from_str(&body).expect("JSON result");
        assert_eq!(
            (status, words),
            (200, serde_json::json!(["job", i.to_string()]))
        );
        *served.entry(ran_on.expect("X-Disruptor-Peer")).or_default() += 1;
        if with_app.iter().all(|p| served.contains_key(&p.id)) {
            break;
        }
    }
    let missed: Vec<&str> = with_app
        .iter()
        .filter(|p| !served.contains_key(&p.id))
        .map(|p| p.name.as_str())
        .collect();
    assert!(
        missed.is_empty(),
        "no job reached {missed:?}; served: {served:?}"
    );
    assert!(
        served.keys().all(|id| with_app.iter().any(|p| p.id == *id)),
        "a job ran on a peer without the app: {served:?}"
    );

    let victim = N / 2 + 1;
    let victim_id = peers[victim].id.clone();
    let killed_at = Instant::now();
    peers[victim].sigkill();
    let survivors: Vec<&Peer> = peers.iter().filter(|p| p.is_running()).collect();
    let mut pending = survivors.clone();
    wait_for(
        &format!("{} survivors to see the victim down", survivors.len()),
        DETECT,
        || {
            pending.retain(|p| !matches!(p.state_of(&victim_id), Some(s) if s["state"] == "down"));
            match pending.len() {
                0 => Ok(()),
                _ => Err(format!(
                    "still up on {:?}",
                    pending.iter().map(|p| p.name.as_str()).collect::<Vec<_>>()
                )),
            }
        },
    );
    eprintln!(
        "SIGKILL detected by all {} survivors in {:?}",
        survivors.len(),
        killed_at.elapsed()
    );
    for p in &survivors {
        p.assert_failure_downs_at_most(1);
    }
}
