//! Observability: the live dashboard in a real browser, `/metrics`, job
//! ids in the logs of both peers a job touches, JSON logs, and
//! `disruptor status`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const ECHO: &str = "apps/echo/echo";

/// Where test artifacts (screenshots) go: `target/test-artifacts/`.
fn artifacts() -> std::path::PathBuf {
    let dir = std::path::Path::new(BIN)
        .parent()
        .and_then(|p| p.parent())
        .unwrap()
        .join("test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_dashboard_shows_the_mesh_and_a_dead_peer_turns_down_without_a_reload() {
    let browser_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists()
            && browser_dir.join("node_modules/playwright-core").exists(),
        "the browser test needs Chromium at {chromium} (apt-get install chromium) and \
         `npm ci` in tests/browser (scripts/test does both when it can)"
    );
    let dir = scratch("dashboard");
    let mut peers = Mesh::of(dir.path(), 3)
        .apps(repo_apps())
        .workers(1)
        .run(ECHO, &[])
        .start();
    // Some traffic, so the charts have something to show.
    for i in 0..50 {
        let (status, _, _) = peers[0].job(ECHO, &format!("{{\"i\":{i}}}"));
        assert_eq!(status, 200);
    }
    let shot = artifacts().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let mut driver = Proc::spawn(
        "node tests/browser/dashboard.mjs",
        Command::new("node")
            .arg(browser_dir.join("dashboard.mjs"))
            .arg(format!("http://{}/", peers[0].http))
            .arg("3")
            .arg(&peers[2].id)
            .arg(&shot)
            .env("CHROMIUM", &chromium)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let mut stdin = driver.child().stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = driver.child().stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = |what: &str| -> String {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(l)
                    if l.starts_with("READY")
                        || l == "OK"
                        || l == "RELOADED"
                        || l.starts_with("FAILED") =>
                {
                    seen.push(l.clone());
                    if l.starts_with("FAILED") {
                        // The rest of the page text follows.
                        while let Ok(more) = rx.recv_timeout(Duration::from_secs(2)) {
                            seen.push(more);
                        }
                        panic!(
                            "the browser driver failed waiting for {what}:\n{}",
                            seen.join("\n")
                        );
                    }
                    return l;
                }
                Ok(l) => seen.push(l),
                Err(_) => panic!("no answer from the browser driver waiting for {what}: {seen:?}"),
            }
        }
    };
    let ready = next_line("the page to show 3 peers");
    let seen: serde_json::Value = ready
        .strip_prefix("READY ")
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_else(|| panic!("not READY and JSON: {ready}"));
    assert_eq!(
        seen["nodes"],
        serde_json::json!(["self", "up", "up"]),
        "this peer first, then the two others up: {ready}"
    );
    assert!(
        seen["apps"]
            .as_array()
            .is_some_and(|a| a.contains(&ECHO.into())),
        "the app is listed: {ready}"
    );
    peers[2].sigkill();
    writeln!(stdin, "killed").unwrap();
    let done = next_line("the killed peer to turn down");
    assert_eq!(done, "OK", "the page must update without a reload");
    let status = driver.wait(Duration::from_secs(30));
    assert!(status.success(), "the browser driver: {status}");
    let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    eprintln!("screenshot: {}", shot.display());
}

/// Parses Prometheus/OpenMetrics text strictly enough to catch a broken
/// exposition: every line is a comment (`# HELP|TYPE|UNIT|EOF`) or
/// `name{label="value",...} number`; returns the samples.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.last(),
        Some(&"# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c == '_' || c == ':' || c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in lines {
        if let Some(rest) = line.strip_prefix("# ") {
            let kind = rest.split(' ').next().unwrap_or("");
            assert!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "unknown comment: {line}"
            );
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name in {line}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels in {line}"));
            // label="value" pairs; values here never contain `",`.
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label {pair:?} in {line}"));
                assert!(name_ok(k), "bad label name in {line}");
                assert!(
                    !v.trim_end_matches('"').contains('"'),
                    "unescaped quote in {line}"
                );
            }
        }
        samples.insert(series.to_string(), value);
    }
    samples
}

#[test]
fn metrics_parse_and_job_counters_move_by_exactly_the_jobs_sent() {
    let dir = scratch("metrics");
    let peers = Mesh::of(dir.path(), 2)
        .apps(repo_apps())
        .workers(1)
        .run(ECHO, &[])
        .start();
    let scrape = || {
        let resp = peers[0].get("/metrics");
        assert_eq!(resp.status(), 200);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        parse_metrics(&resp.text().unwrap())
    };
    let ok = format!("disruptor_jobs_total{{app=\"{ECHO}\",outcome=\"ok\"}}");
    let bad = format!("disruptor_jobs_total{{app=\"{ECHO}\",outcome=\"bad_request\"}}");
    let count = format!("disruptor_job_seconds_count{{app=\"{ECHO}\"}}");
    let before = scrape();
    let get = |m: &HashMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    for i in 0..37 {
        let (status, _, _) = peers[0].job(ECHO, &format!("[{i}]"));
        assert_eq!(status, 200);
    }
    for _ in 0..5 {
        let (status, _, _) = peers[0].job(ECHO, "{not json");
        assert_eq!(status, 400);
    }
    let lines: String = (0..100).map(|i| format!("{{\"s\":{i}}}\n")).collect();
    let resp = http_client()
        .post(format!("http://{}/{ECHO}", peers[0].http))
        .header("content-type", "application/x-ndjson")
        .body(lines)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().unwrap().lines().count(), 100);
    let after = scrape();
    assert_eq!(get(&after, &ok) - get(&before, &ok), 137.0, "ok jobs");
    assert_eq!(get(&after, &bad) - get(&before, &bad), 5.0, "bad requests");
    assert_eq!(
        get(&after, &count) - get(&before, &count),
        142.0,
        "latency observations"
    );
    let code = |c: &str| format!("disruptor_http_job_responses_total{{code=\"{c}\"}}");
    assert_eq!(get(&after, &code("200")) - get(&before, &code("200")), 38.0);
    assert_eq!(get(&after, &code("400")) - get(&before, &code("400")), 5.0);
    assert_eq!(after.get("disruptor_jobs_in_flight"), Some(&0.0));
    assert_eq!(get(&after, "disruptor_peers{state=\"up\"}"), 1.0);
    assert_eq!(
        get(
            &after,
            &format!("disruptor_workers{{app=\"{ECHO}\",state=\"running\"}}")
        ),
        1.0
    );
    assert!(
        after.keys().any(|k| k.starts_with("libp2p_")),
        "libp2p's own metrics are there"
    );
}

#[test]
fn a_job_id_appears_in_the_logs_of_the_peer_that_took_it_and_the_one_that_ran_it() {
    let dir = scratch("job-ids");
    // p0 runs the app; p1 has none, so its jobs run on p0.
    let peers = Mesh::of(dir.path(), 2)
        .apps_on_first(1, repo_apps())
        .start();
    start_app(&peers[0], ECHO, &[]);
    wait_running(&peers[1], ECHO, &[&peers[0]]);
    let resp = http_client()
        .post(format!("http://{}/{ECHO}", peers[1].http))
        .header("content-type", "application/json")
        .body("{\"traced\":true}")
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let id = resp.headers()["x-disruptor-job-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(id.len(), 16, "{id}");
    for p in &peers {
        wait_for(
            &format!("job {id} in the log of {}", p.name),
            Duration::from_secs(5),
            || {
                let log = p.log_text();
                let with_id: Vec<&str> = log.lines().filter(|l| l.contains(&id)).collect();
                if with_id.iter().any(|l| l.contains(ECHO)) {
                    Ok(())
                } else {
                    Err(format!("lines with the id: {with_id:?}"))
                }
            },
        );
    }
}

#[test]
fn json_logs_and_the_status_command() {
    let dir = scratch("json-logs");
    let peer = Peer::start(
        dir.path(),
        "solo",
        PeerOpts {
            apps: Some(repo_apps()),
            extra: vec!["--log-format".into(), "json".into()],
            ..Default::default()
        },
    );
    start_app(&peer, ECHO, &[]);
    let (status, _, _) = peer.job(ECHO, "[1]");
    assert_eq!(status, 200);
    let log = peer.log_text();
    let mut lines = 0;
    let mut in_job_span = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        lines += 1;
        // The job's span, with its app and its 16-digit id, as a field.
        let span = &v["span"];
        if span["name"] == "job"
            && span["app"] == ECHO
            && span["id"].as_str().is_some_and(|id| id.len() == 16)
        {
            in_job_span += 1;
        }
    }
    assert!(lines >= 3, "{log}");
    assert!(
        in_job_span >= 1,
        "no line in the job's span (name, app, id): {log}"
    );

    let out = cli(&["status", &peer.http]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        peer.id.as_str(),
        "PEERS: 1 up",
        "(this peer)",
        ECHO,
        "RUNNING ON",
        "LATEST ERRORS",
    ] {
        assert!(text.contains(want), "{want:?} in:\n{text}");
    }
    let out = cli(&["status", "127.0.0.1:1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}
