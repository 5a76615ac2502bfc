//! Running peers as an operator does: the original command line, config
//! files and environment variables, shell completions, the manual page.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_original_command_line_forms_a_mesh() {
    let dir = scratch("positional");
    let positional = |bootstrap: Vec<String>| PeerOpts {
        positional: true,
        bootstrap,
        ..Default::default()
    };
    // `disruptor peer LISTEN` and `disruptor peer LISTEN BOOTSTRAP...`.
    let a = Peer::start(dir.path(), "a", positional(vec![]));
    let b = Peer::start(dir.path(), "b", positional(vec![a.listen.clone()]));
    let c = Peer::start(
        dir.path(),
        "c",
        positional(vec![b.listen.clone(), a.listen.clone()]),
    );
    wait_converged(&[&a, &b, &c], Duration::from_secs(20));
}

/// Writes `text` as a config file, private to this user.
fn config(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// The status of a job of `bytes` bytes sent to `peer` (for an app that
/// runs nowhere: what matters is whether the size was refused first).
fn job_status(peer: &Peer, bytes: usize) -> u16 {
    let body = format!("\"{}\"", "x".repeat(bytes - 2));
    http_client()
        .post(format!("http://{}/apps/nowhere", peer.http))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .expect("POST a job")
        .status()
        .as_u16()
}

#[test]
fn a_config_file_and_the_environment_configure_a_peer() {
    let dir = scratch("config");
    let file = config(
        dir.path(),
        "disruptor.toml",
        "# a peer's settings, keyed by its flags\nmax-job-bytes = 200\nlabel = [\"gpu\", \"zone=eu\"]\nretries = 1\n",
    );
    let with_file = |extra: Vec<&str>| PeerOpts {
        extra: ["--config", file.as_str()]
            .into_iter()
            .chain(extra)
            .map(String::from)
            .collect(),
        ..Default::default()
    };
    // The file alone: jobs over 200 bytes are refused, and the labels are
    // the peer's.
    let a = Peer::start(dir.path(), "a", with_file(vec![]));
    assert_eq!(job_status(&a, 150), 404, "under the file's limit");
    assert_eq!(job_status(&a, 250), 413, "over the file's limit");
    assert_eq!(
        a.peers()["self"]["labels"],
        serde_json::json!(["gpu", "zone=eu"]),
        "{}",
        a.peers()
    );
    // The environment wins over the file, and a flag over both.
    let b = Peer::start_with(dir.path(), "b", with_file(vec![]), |cmd| {
        cmd.env("DISRUPTOR_MAX_JOB_BYTES", "1000")
            .env("DISRUPTOR_LABEL", "cpu,zone=us");
    });
    assert_eq!(job_status(&b, 250), 404, "the environment's limit");
    assert_eq!(job_status(&b, 1200), 413);
    assert_eq!(
        b.peers()["self"]["labels"],
        serde_json::json!(["cpu", "zone=us"])
    );
    let c = Peer::start_with(
        dir.path(),
        "c",
        with_file(vec!["--max-job-bytes", "100"]),
        |cmd| {
            cmd.env("DISRUPTOR_MAX_JOB_BYTES", "1000");
        },
    );
    assert_eq!(job_status(&c, 150), 413, "the flag's limit");
}

#[test]
fn a_bad_config_file_names_the_line_and_exits_2() {
    let dir = scratch("bad-config");
    let cases = [
        (
            "listen = [\"127.0.0.1:0\"]\nworkers = 0\n",
            "line 2: `workers`",
        ),
        (
            "\n\nlisen = \"127.0.0.1:0\"\n",
            "line 3: unknown key `lisen` (did you mean `listen`?)",
        ),
        ("listen = [\n", "not TOML"),
        ("label = [\"zone==eu\"]\n", "label"),
        // A check after parsing (two flags' relation) still names the line.
        (
            "\nannounce-interval = \"9s\"\n",
            "must be longer than --announce-interval (9s) (set in",
        ),
    ];
    for (i, (text, needle)) in cases.into_iter().enumerate() {
        let path = config(dir.path(), &format!("bad{i}.toml"), text);
        let out = cli(&["peer", "--config", &path, "--apps", "/nonexistent"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text:?}: {stderr}");
        assert!(
            stderr.contains(needle),
            "{text:?}: stderr lacks {needle:?}: {stderr}"
        );
        assert!(stderr.contains(&path), "names the file: {stderr}");
    }
    // An unknown label syntax on the command line too.
    let out = cli(&["peer", "--label", "a b", "--apps", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // Positional and flag forms of one setting together.
    let out = cli(&["peer", "127.0.0.1:0", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("give one or the other"));
}

#[test]
fn completions_and_the_manual_page_are_generated() {
    for (shell, needle) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef disruptor"),
        ("fish", "complete -c disruptor"),
    ] {
        let out = cli(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(needle), "{shell}: lacks {needle:?}");
        assert!(text.contains("bootstrap"), "{shell}: lacks the peer flags");
    }
    let out = cli(&["man"]);
    assert!(out.status.success(), "{out:?}");
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH disruptor 1") && page.contains("completions"),
        "{page}"
    );
    let out = cli(&["--version"]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("disruptor {} (", env!("CARGO_PKG_VERSION"))),
        "{version}"
    );
    let out = cli(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}

/// The peers (by name) whose `/api/apps` as seen from `from` says `app`
/// is in `state`.
fn peers_in(from: &Peer, all: &[&Peer], app: &str, state: &str) -> Vec<String> {
    let apps: serde_json::Value = from.get("/api/apps").json().expect("apps JSON");
    let mut names: Vec<String> = all
        .iter()
        .filter(|p| apps["mesh"][app][&p.id]["state"] == state)
        .map(|p| p.name.clone())
        .collect();
    names.sort();
    names
}

/// The placement of `app` as `from` computes it, by peer name.
fn placed(from: &Peer, all: &[&Peer], app: &str) -> Vec<String> {
    let apps: serde_json::Value = from.get("/api/apps").json().expect("apps JSON");
    let ids = apps["placement"][app]["placed"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names: Vec<String> = ids
        .iter()
        .filter_map(|id| all.iter().find(|p| p.id == id.as_str().unwrap_or("")))
        .map(|p| p.name.clone())
        .collect();
    names.sort();
    names
}

#[test]
fn placement_on_n_peers_survives_a_death_and_labels_choose_peers() {
    const ECHO: &str = "apps/tool";
    let dir = scratch("placement");
    let mut peers: Vec<Peer> = Vec::new();
    for i in 0..5 {
        let zone = if i < 3 { "zone=eu" } else { "zone=us" };
        let opts = PeerOpts {
            bootstrap: peers
                .first()
                .map(|p: &Peer| vec![p.listen.clone()])
                .unwrap_or_default(),
            apps: Some(test_apps()),
            extra: vec![
                "--label".into(),
                zone.into(),
                "--workers".into(),
                "1".into(),
            ],
            ..Default::default()
        };
        peers.push(Peer::start(dir.path(), &format!("p{i}"), opts));
    }
    let all: Vec<&Peer> = peers.iter().collect();
    wait_converged(&all, Duration::from_secs(20));

    // On 2 of the 5: two run it, three stand by, and every peer agrees.
    let out = cli(&[
        "start",
        &peers[0].http,
        ECHO,
        "--peers",
        "2",
        "--wait",
        "20s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("running on 2 of 5 peers (asked for 2 peers; 5 can run it)"),
        "{text}"
    );
    let running = wait_for(
        "2 peers running and 3 standing by",
        Duration::from_secs(20),
        || {
            let running = peers_in(&peers[0], &all, ECHO, "running");
            let standby = peers_in(&peers[0], &all, ECHO, "standby");
            if running.len() == 2 && standby.len() == 3 {
                Ok(running)
            } else {
                Err(format!("running {running:?}, standby {standby:?}"))
            }
        },
    );
    for p in &peers {
        assert_eq!(
            placed(p, &all, ECHO),
            running,
            "{} places it elsewhere",
            p.name
        );
    }

    // One of the two dies: another takes its place, the other keeps it.
    let victim = peers.iter().position(|p| p.name == running[0]).unwrap();
    let keeper = running[1].clone();
    peers[victim].sigkill();
    let killed = std::time::Instant::now();
    let survivors: Vec<&Peer> = peers.iter().filter(|p| p.is_running()).collect();
    let witness = survivors[0];
    let after = wait_for(
        "another peer to take the dead one's place",
        Duration::from_secs(20),
        || {
            let running = peers_in(witness, &survivors, ECHO, "running");
            if running.len() == 2 {
                Ok(running)
            } else {
                Err(format!("running {running:?}"))
            }
        },
    );
    println!(
        "placement: a new peer runs {ECHO} {:.2} s after the SIGKILL of {}",
        killed.elapsed().as_secs_f64(),
        running[0]
    );
    assert!(
        after.contains(&keeper),
        "{keeper} kept its place: {after:?}"
    );
    assert!(!after.contains(&running[0]));
    // `status` shows the placement.
    let out = cli(&["status", &witness.http]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2 peers, placed on 2 peers (4 can run it)"),
        "{text}"
    );
    // Jobs reach it from any peer.
    for p in &survivors {
        let resp = http_client()
            .post(format!("http://{}/{ECHO}", p.http))
            .header("content-type", "application/json")
            .body(r#"{"hello": 1}"#)
            .send()
            .expect("a job");
        assert_eq!(resp.status(), 200, "from {}", p.name);
    }

    // By label: only the peers in zone=us (p3, p4), whichever survived.
    let out = cli(&[
        "start",
        &witness.http,
        "apps/node/shout",
        "--on",
        "zone=us",
        "--wait",
        "20s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let us: Vec<String> = survivors
        .iter()
        .filter(|p| p.name == "p3" || p.name == "p4")
        .map(|p| p.name.clone())
        .collect();
    wait_for(
        "the counter running only in zone=us",
        Duration::from_secs(20),
        || {
            let running = peers_in(witness, &survivors, "apps/node/shout", "running");
            if running == us {
                Ok(())
            } else {
                Err(format!("running {running:?}, want {us:?}"))
            }
        },
    );

    // More peers than can: all that can, and the CLI says so.
    let out = cli(&[
        "start",
        &witness.http,
        ECHO,
        "--peers",
        "9",
        "--on",
        "zone=eu",
        "--wait",
        "20s",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let eu = survivors
        .iter()
        .filter(|p| ["p0", "p1", "p2"].contains(&p.name.as_str()))
        .count();
    assert!(
        text.contains(&format!(
            "asked for 9 peers labelled zone=eu; only {eu} can run it: all of them"
        )),
        "{text}"
    );
    // Bad placement input: a clear error, exit 2.
    for (args, needle) in [
        (&["--peers", "0"][..], "--peers"),
        (&["--on", "zone=="][..], "not a label"),
    ] {
        let mut full = vec!["start", witness.http.as_str(), ECHO];
        full.extend_from_slice(args);
        let out = cli(&full);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    let resp = http_client()
        .post(format!("http://{}/api/apps/start", witness.http))
        .header("content-type", "application/json")
        .body(r#"{"app": "apps/tool", "peers": 0}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = http_client()
        .post(format!("http://{}/api/apps/start", witness.http))
        .header("content-type", "application/json")
        .body(r#"{"app": "apps/tool", "on": ["a b"]}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}
