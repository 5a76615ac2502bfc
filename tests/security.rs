//! Who may make the mesh run what: admin keys, signed decisions, the
//! secure defaults, and the HTTP guard against web pages, all tried as an
//! attacker would against real peers on 127.0.0.1.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

const ECHO: &str = "apps/echo/echo";

/// Runs the CLI with `args` and then `more`.
fn cli_with(args: &[&str], more: &[String]) -> (bool, String) {
    let all: Vec<&str> = args
        .iter()
        .copied()
        .chain(more.iter().map(String::as_str))
        .collect();
    cli_out(&all)
}

fn cli_out(args: &[&str]) -> (bool, String) {
    let out = cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn state_of_app(p: &Peer, app: &str) -> Value {
    p.apps()["mesh"][app][&p.id]["state"].clone()
}

#[test]
fn requests_a_browser_can_send_cross_site_change_nothing() {
    let dir = scratch("browser");
    let p = Peer::start(
        dir.path(),
        "p",
        PeerOpts {
            apps: Some(repo_apps()),
            ..Default::default()
        },
    );
    let http = &p.http;
    let start = r#"{"app": "apps/echo/echo"}"#;
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "no-cors text/plain start",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nOrigin: http://evil.example\r\nContent-Type: text/plain"
            ),
            start,
        ),
        (
            "text/plain start, no Origin",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nContent-Type: text/plain;charset=UTF-8"
            ),
            start,
        ),
        (
            "start without a content type",
            format!("POST /api/apps/start HTTP/1.1\r\nHost: {http}"),
            start,
        ),
        (
            "form-encoded start",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/x-www-form-urlencoded"
            ),
            start,
        ),
        (
            "multipart start",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nContent-Type: multipart/form-data; boundary=x"
            ),
            start,
        ),
        (
            "JSON start from a foreign Origin",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nOrigin: http://evil.example\r\nContent-Type: application/json"
            ),
            start,
        ),
        (
            "JSON start from Origin null",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nOrigin: null\r\nContent-Type: application/json"
            ),
            start,
        ),
        (
            "JSON start marked cross-site",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nSec-Fetch-Site: cross-site\r\nContent-Type: application/json"
            ),
            start,
        ),
        (
            "DNS rebinding: a foreign Host",
            format!(
                "POST /api/apps/start HTTP/1.1\r\nHost: evil.example:{}\r\nContent-Type: application/json",
                p.opts.http_port
            ),
            start,
        ),
        (
            "deploy without a content type from a foreign Origin",
            format!(
                "POST /api/deploy?name=apps/x&start=true HTTP/1.1\r\nHost: {http}\r\nOrigin: http://evil.example"
            ),
            "junk",
        ),
        (
            "text/plain job",
            format!("POST /apps/echo/echo HTTP/1.1\r\nHost: {http}\r\nContent-Type: text/plain"),
            "{}",
        ),
        (
            "form-encoded job",
            format!(
                "POST /apps/echo/echo HTTP/1.1\r\nHost: {http}\r\nContent-Type: application/x-www-form-urlencoded"
            ),
            "a=1",
        ),
    ];
    for (what, head, body) in &cases {
        let (status, answer) = raw_http(http, head, body);
        assert!(
            !(200..300).contains(&status),
            "{what}: answered {status}: {answer}"
        );
        assert!(answer.contains("\"error\""), "{what}: {answer}");
    }
    // DNS rebinding reads nothing either.
    for path in ["/api/peers", "/api/apps", "/metrics", "/"] {
        let (status, answer) = raw_http(
            http,
            &format!("GET {path} HTTP/1.1\r\nHost: attacker.example"),
            "",
        );
        assert_eq!(status, 403, "GET {path} with a foreign Host: {answer}");
    }
    assert_eq!(
        state_of_app(&p, ECHO),
        Value::Null,
        "nothing started: {}",
        p.apps()
    );
    let refused: f64 = ["host", "origin", "content_type"]
        .iter()
        .map(|r| p.counter(&format!("disruptor_http_refused_total{{reason=\"{r}\"}}")))
        .sum();
    assert!(refused >= cases.len() as f64, "{refused} counted");

    // What the CLI, curl and the dashboard send still works.
    let (status, answer) = raw_http(
        http,
        &format!(
            "GET /api/peers HTTP/1.1\r\nHost: localhost:{}",
            p.opts.http_port
        ),
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = raw_http(
        http,
        &format!(
            "POST /api/apps/start HTTP/1.1\r\nHost: {http}\r\nOrigin: http://{http}\r\nContent-Type: application/json"
        ),
        start,
    );
    assert_eq!(status, 202, "same-origin JSON: {answer}");
    wait_running(&p, ECHO, &[&p]);
    let (status, _, answer) = p.job(ECHO, r#"{"hello": 1}"#);
    assert_eq!((status, answer.as_str()), (200, r#"{"hello": 1}"#));
}

#[test]
fn a_peer_off_loopback_needs_a_token_and_the_token_is_enough() {
    let dir = scratch("token");
    // No token: refused at start, with the way out.
    let (ok, text) = cli_out(&["peer", "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"]);
    assert!(!ok && text.contains("--http-token-file"), "{text}");
    let token_file = dir.path().join("http.token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, text) = cli_out(&[
        "peer",
        "--http",
        "0.0.0.0:0",
        "--http-token-file",
        &token_file.display().to_string(),
    ]);
    assert!(
        !ok && text.contains("chmod 600"),
        "a token others may read: {text}"
    );
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let p = Peer::start(
        dir.path(),
        "p",
        PeerOpts {
            extra: vec![
                "--http".into(),
                "0.0.0.0:0".into(),
                "--http-token-file".into(),
                token_file.display().to_string(),
            ],
            ..Default::default()
        },
    );
    let c = http_client();
    let url = |path: &str| format!("http://{}{path}", p.http);
    assert_eq!(c.get(url("/healthz")).send().unwrap().status(), 200);
    for path in ["/api/peers", "/metrics", "/"] {
        let r = c.get(url(path)).send().unwrap();
        assert_eq!(r.status(), 401, "{path} without the token");
        let r = c
            .get(url(path))
            .header("authorization", "Bearer wrong-token-0123456789")
            .send()
            .unwrap();
        assert_eq!(r.status(), 401, "{path} with a wrong token");
        let r = c
            .get(url(path))
            .header("authorization", "Bearer s3cret-token-0123456789")
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{path} with the token");
    }
    // The CLI carries it.
    let tf = token_file.display().to_string();
    let (ok, text) = cli_out(&["peers", &p.http]);
    assert!(!ok && text.contains("401"), "{text}");
    let (ok, text) = cli_out(&["peers", &p.http, "--token-file", &tf]);
    assert!(ok, "{text}");
    // A browser: ?token= once sets a cookie and leaves the URL.
    let no_redirects = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = no_redirects
        .get(url("/?token=s3cret-token-0123456789"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(r.headers()["location"], "/");
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let r = c.get(url("/")).header("cookie", &pair).send().unwrap();
    assert_eq!(r.status(), 200, "the dashboard with its cookie");
    let r = c
        .get(url("/dashboard/live"))
        .header("cookie", &pair)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    // The cookie alone changes nothing: that needs the header.
    let r = c
        .post(url("/api/apps/start"))
        .header("cookie", &pair)
        .header("content-type", "application/json")
        .body(r#"{"app": "apps/echo/echo"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    let r = no_redirects
        .get(url("/?token=wrong-token-0123456789"))
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[test]
fn only_decisions_signed_by_a_trusted_admin_run() {
    let dir = scratch("admins");
    let k1 = AdminKey::new(dir.path(), "k1");
    let k2 = AdminKey::new(dir.path(), "k2");
    let peers = Mesh::of(dir.path(), 3)
        .apps(repo_apps())
        .admins(&[&k1])
        .workers(1)
        .start();
    let http = peers[0].http.as_str();
    // Unsigned: 401 from the API, and the CLI says what to do.
    let (ok, text) = cli_out(&["start", http, ECHO]);
    assert!(
        !ok && text.contains("401") && text.contains("--key"),
        "{text}"
    );
    // Signed by a key nobody trusts: 403.
    let (ok, text) = cli_with(&["start", http, ECHO], &k2.sign());
    assert!(!ok && text.contains("403"), "{text}");
    // A deployment signed by K2: refused before its bundle is read, and
    // installed nowhere; an unsigned one does not leave the CLI.
    let app_dir = dir.path().join("src").join("evil");
    std::fs::create_dir_all(&app_dir).unwrap();
    std::fs::write(app_dir.join("worker"), "#!/bin/sh\nexec cat\n").unwrap();
    std::fs::set_permissions(
        app_dir.join("worker"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let dir_arg = app_dir.display().to_string();
    let deploy = [
        "deploy",
        http,
        &dir_arg,
        "--name",
        "apps/evil/worker",
        "--start",
    ];
    let (ok, text) = cli_with(&deploy, &k2.sign());
    assert!(!ok && text.contains("403"), "{text}");
    let (ok, text) = cli_out(&deploy);
    assert!(!ok && text.contains("--key"), "an unsigned deploy: {text}");
    nothing_installed(dir.path(), &peers);
    for p in &peers {
        for app in [ECHO, "apps/evil/worker"] {
            assert_eq!(
                state_of_app(p, app),
                Value::Null,
                "{}: {}",
                p.name,
                p.apps()
            );
        }
    }
    // Signed by K1: runs everywhere.
    let (ok, text) = cli_with(&["start", http, ECHO], &k1.sign());
    assert!(ok, "{text}");
    let all: Vec<&Peer> = peers.iter().collect();
    wait_running(&peers[2], ECHO, &all);
    // A decision altered after signing is refused at the API.
    let held: Value = peers[1].get("/api/decisions").json().unwrap();
    let mut altered = held["decisions"][0].clone();
    assert!(altered["signed"].is_object(), "{held}");
    altered["run"] = false.into();
    altered["clock"] = (altered["clock"].as_u64().unwrap() + 1).into();
    let r = http_client()
        .post(format!("http://{}/api/decisions", peers[1].http))
        .header("content-type", "application/json")
        .body(altered.to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 401);
    // Stop, signed by K1, reaches everyone.
    let (ok, text) = cli_with(&["stop", http, ECHO], &k1.sign());
    assert!(ok, "{text}");
    for p in &peers {
        wait_for("the stop everywhere", Duration::from_secs(10), || {
            let s = state_of_app(p, ECHO);
            if s == "stopped" {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
    }
}

/// An archive whose worker, if anything ever ran it, would leave `marker`.
fn evil_archive(dir: &Path, marker: &Path) -> std::path::PathBuf {
    let src = dir.join("evil");
    std::fs::create_dir_all(&src).unwrap();
    let worker = src.join("worker");
    std::fs::write(
        &worker,
        format!("#!/bin/sh\ntouch '{}'\nexec cat\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&worker, std::fs::Permissions::from_mode(0o755)).unwrap();
    let archive = disruptor::deploy::pack(&src).unwrap();
    let path = dir.join("evil.tar.zst");
    std::fs::write(&path, archive).unwrap();
    path
}

/// Data directories of `peers` hold no bundle.
fn nothing_installed(dir: &Path, peers: &[Peer]) {
    for p in peers {
        let bundles = dir.join(format!("{}.data", p.name)).join("bundles");
        let n = std::fs::read_dir(&bundles).map(|d| d.count()).unwrap_or(0);
        assert_eq!(n, 0, "{} installed a bundle", p.name);
    }
}

#[test]
fn a_rogue_member_cannot_make_any_peer_run_its_bundle() {
    let dir = scratch("rogue-decide");
    let k1 = AdminKey::new(dir.path(), "k1");
    let marker = dir.path().join("PWNED");
    let archive = evil_archive(dir.path(), &marker);
    // A mesh with admins, and one without.
    let guarded = Mesh::of(dir.path(), 2)
        .identities()
        .apps(repo_apps())
        .admins(&[&k1])
        .workers(1)
        .start();
    let open_dir = dir.path().join("open");
    std::fs::create_dir_all(&open_dir).unwrap();
    let open = Mesh::of(&open_dir, 2).apps(repo_apps()).workers(1).start();
    // The rogue attacks both meshes at once, for 5 s each, signing with a
    // key of its own.
    let rogue_key = AdminKey::new(dir.path(), "rogue");
    let runs: Vec<Proc> = [&guarded[0], &open[0]]
        .iter()
        .map(|target| {
            Proc::spawn(
                &format!("the rogue against {}", target.name),
                rogue_cmd()
                    // State poisoning too: 500 made-up apps with 200-character
                    // names in every announcement.
                    .env("ROGUE_JUNK", "500")
                    .args([
                        "decide",
                        &target.tcp_multiaddr(),
                        "5",
                        &archive.display().to_string(),
                        ECHO,
                        &rogue_key.file.display().to_string(),
                    ]),
            )
        })
        .collect();
    for run in runs {
        let out = run.output(Duration::from_secs(30));
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "rogue: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tally: Value = serde_json::from_str(text.trim()).unwrap();
        assert!(tally["announcements"].as_u64().unwrap() >= 5, "{tally}");
        assert_eq!(
            tally["bundle_requests"], 0,
            "a peer fetched the rogue's bundle"
        );
    }
    assert!(!marker.exists(), "the rogue's worker ran");
    nothing_installed(dir.path(), &guarded);
    nothing_installed(&open_dir, &open);
    for p in &guarded {
        assert!(
            p.counter("disruptor_decisions_refused_total{reason=\"unsigned\"}") >= 1.0
                && p.counter("disruptor_decisions_refused_total{reason=\"untrusted_key\"}") >= 1.0,
            "{}: {}",
            p.name,
            p.get("/metrics").text().unwrap()
        );
        let held: Value = p.get("/api/decisions").json().unwrap();
        assert_eq!(
            held["decisions"],
            serde_json::json!([]),
            "{}: {held}",
            p.name
        );
        assert!(
            p.log_text().contains("refused a decision from the mesh"),
            "{}: logged",
            p.name
        );
    }
    // The open mesh took the decisions (its members may start its own
    // apps), but ran its own apps/echo, never the rogue's bundle.
    for p in &open {
        wait_for("the open mesh's own echo", Duration::from_secs(10), || {
            let s = state_of_app(p, ECHO);
            if s == "running" {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
        let (status, _, answer) = p.job(ECHO, r#"{"mine": true}"#);
        assert_eq!((status, answer.as_str()), (200, r#"{"mine": true}"#));
        let version = &p.apps()["mesh"][ECHO][&p.id]["version"];
        assert!(version.is_null(), "{}: runs version {version}", p.name);
    }
    assert!(!marker.exists(), "the rogue's worker ran");
    // The poisoning is bounded: the open mesh holds at most MAX_DESIRED
    // decisions, its peers still announce (none went silent), and a
    // newcomer inherits no more than that.
    let max = disruptor::mesh::desired::MAX_DESIRED;
    for p in &open {
        let held: Value = p.get("/api/decisions").json().unwrap();
        let n = held["decisions"].as_array().unwrap().len();
        // The junk did arrive (the attack ran), up to the cap and no further.
        assert!(n > 100 && n <= max, "{}: {n} decisions", p.name);
        p.assert_no_false_downs();
    }
    let newcomer = Peer::start(
        &open_dir,
        "late",
        PeerOpts {
            bootstrap: vec![open[1].listen.clone()],
            ..Default::default()
        },
    );
    wait_for(
        "the newcomer to learn the decisions",
        Duration::from_secs(10),
        || {
            let held: Value = newcomer.get("/api/decisions").json().unwrap();
            let n = held["decisions"].as_array().unwrap().len();
            if n > 0 && n <= max {
                Ok(())
            } else {
                Err(n.to_string())
            }
        },
    );
    // Honest decisions still converge in the guarded mesh.
    let (ok, text) = cli_with(&["start", guarded[0].http.as_str(), ECHO], &k1.sign());
    assert!(ok, "{text}");
    let all: Vec<&Peer> = guarded.iter().collect();
    wait_running(&guarded[1], ECHO, &all);
}

#[test]
fn starts_past_the_cap_are_refused_and_the_peer_keeps_announcing() {
    let dir = scratch("poison-local");
    let peers = Mesh::of(dir.path(), 2).start();
    let c = http_client();
    let (mut accepted, mut refused) = (0, 0);
    for i in 0..500 {
        let name = format!("apps/junk{i:04}");
        let name = format!("{name}{}", "j".repeat(200 - name.len()));
        let r = c
            .post(format!("http://{}/api/apps/start", peers[0].http))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "app": name }).to_string())
            .send()
            .unwrap();
        match r.status().as_u16() {
            202 => accepted += 1,
            409 => {
                refused += 1;
                assert!(r.text().unwrap().contains("most decisions"));
            }
            other => panic!("start {i}: {other} {}", r.text().unwrap()),
        }
    }
    let max = disruptor::mesh::desired::MAX_DESIRED;
    assert_eq!((accepted, refused), (max, 500 - max));
    // p0 keeps announcing: p1 sees it up for longer than --down-after
    // (4 s), and never marked it down.
    let watched = std::time::Instant::now();
    while watched.elapsed() < Duration::from_secs(6) {
        let state = peers[1].state_of(&peers[0].id).map(|v| v["state"].clone());
        assert_eq!(state, Some("up".into()), "p1's view of p0");
        std::thread::sleep(Duration::from_millis(250));
    }
    peers[1].assert_no_false_downs();
    let held: Value = peers[1].get("/api/decisions").json().unwrap();
    assert_eq!(held["decisions"].as_array().unwrap().len(), max);
}
