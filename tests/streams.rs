//! Streams of jobs (NDJSON over HTTP and `disruptor stream`) and fan-out
//! (`?to=all`, `disruptor send --all`), through real peers.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ECHO: &str = "apps/echo/echo";
const LINES: usize = 100_000;
/// For a `disruptor stream` of `LINES` lines to finish.
const STREAM_DEADLINE: Duration = Duration::from_secs(120);

/// 3 peers with the repository's apps and echo started on all of them.
fn echo_mesh(dir: &std::path::Path) -> Mesh {
    Mesh::of(dir, 3)
        .apps(repo_apps())
        .workers(2)
        .run(ECHO, &[])
        .start()
}

/// `n` NDJSON jobs, `{"i":k}` for k = 1..=n, as a file in `dir`.
fn jobs_file(dir: &std::path::Path, n: usize) -> (std::path::PathBuf, String) {
    let text: String = (1..=n).map(|k| format!("{{\"i\":{k}}}\n")).collect();
    let path = dir.join("jobs.ndjson");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

/// Runs `disruptor stream` with `args` (deadline 120 s); returns (exit
/// ok, stdout, stderr).
fn stream_cli(args: &[&str]) -> (bool, String, String) {
    let out = Proc::spawn(
        "disruptor stream",
        Command::new(BIN)
            .arg("stream")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .output(STREAM_DEADLINE);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Compares outputs line by line and names the first difference.
fn assert_same_lines(got: &str, want: &str) {
    let (g, w): (Vec<&str>, Vec<&str>) = (got.lines().collect(), want.lines().collect());
    if let Some(i) = (0..g.len().min(w.len())).find(|i| g[*i] != w[*i]) {
        panic!("line {} differs: got {:?}, want {:?}", i + 1, g[i], w[i]);
    }
    assert_eq!(g.len(), w.len(), "number of result lines");
}

#[test]
fn a_stream_of_100k_lines_comes_back_in_order_from_every_peer() {
    let dir = scratch("stream-ordered");
    let peers = echo_mesh(dir.path());
    let before: Vec<u64> = peers.iter().map(|p| p.jobs_done(ECHO)).collect();
    let (path, text) = jobs_file(dir.path(), LINES);
    let started = Instant::now();
    let (ok, stdout, stderr) = stream_cli(&[&peers[0].http, ECHO, path.to_str().unwrap()]);
    let took = started.elapsed();
    assert!(ok, "disruptor stream failed: {stderr}");
    assert_same_lines(&stdout, &text);
    assert!(
        stderr.contains(&format!("stream: {LINES} jobs, 0 errors")),
        "summary line: {stderr}"
    );
    let served: Vec<u64> = peers
        .iter()
        .zip(&before)
        .map(|(p, b)| p.jobs_done(ECHO) - b)
        .collect();
    eprintln!("{LINES} lines in {took:?}; served per peer: {served:?}");
    assert!(
        served.iter().all(|s| *s > 1000),
        "every peer serves part of the stream: {served:?}"
    );
    assert_eq!(served.iter().sum::<u64>(), LINES as u64);
}

#[test]
fn an_unordered_stream_is_complete_and_numbered() {
    let dir = scratch("stream-unordered");
    let peers = echo_mesh(dir.path());
    let (_, text) = jobs_file(dir.path(), LINES);
    let resp = http_client()
        .post(format!("http://{}/{ECHO}?ordered=false", peers[1].http))
        .header("content-type", "application/x-ndjson")
        .body(text)
        .timeout(Duration::from_secs(120))
        .send()
        .expect("POST the stream");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let body = resp.text().unwrap();
    let mut seen = vec![false; LINES + 1];
    let mut in_order = true;
    for (k, line) in body.lines().enumerate() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        let n = v["line"]
            .as_u64()
            .unwrap_or_else(|| panic!("no line: {line}")) as usize;
        assert!((1..=LINES).contains(&n), "line number {n}");
        assert!(!seen[n], "line {n} answered twice");
        seen[n] = true;
        assert_eq!(v["result"], serde_json::json!({ "i": n }), "{line}");
        in_order &= n == k + 1;
    }
    let missing = seen[1..].iter().filter(|s| !**s).count();
    assert_eq!(missing, 0, "{missing} lines were not answered");
    eprintln!("unordered: all {LINES} answered; arrived in input order: {in_order}");
}

#[test]
fn bad_lines_get_inline_errors_and_the_rest_succeed() {
    let dir = scratch("stream-bad");
    let peers = echo_mesh(dir.path());
    let too_long = format!("\"{}\"", "x".repeat(1024 * 1024 + 10));
    let mut lines = Vec::new();
    let mut bad = Vec::new();
    for n in 1..=2000usize {
        let line = match n {
            _ if n % 97 == 0 => "{not json".to_string(),
            500 => String::new(),
            777 => too_long.clone(),
            1500 => "[1, 2".to_string(),
            _ => format!("{{\"n\":{n}}}"),
        };
        if !line.starts_with("{\"n\"") {
            bad.push(n);
        }
        lines.push(line);
    }
    let input = lines.join("\n") + "\n";
    let (ok, stdout, stderr) = {
        let path = dir.path().join("bad.ndjson");
        std::fs::write(&path, &input).unwrap();
        stream_cli(&[&peers[2].http, ECHO, path.to_str().unwrap()])
    };
    assert!(!ok, "a stream with failed lines exits non-zero: {stderr}");
    assert!(
        stderr.contains(&format!("2000 jobs, {} errors", bad.len())),
        "{stderr}"
    );
    let out: Vec<&str> = stdout.lines().collect();
    assert_eq!(out.len(), 2000);
    for (i, line) in out.iter().enumerate() {
        let n = i + 1;
        let v: Value = serde_json::from_str(line).unwrap();
        if bad.contains(&n) {
            assert_eq!(v["line"], n, "{line}");
            assert!(v["error"].is_string(), "line {n}: {line}");
        } else {
            assert_eq!(v, serde_json::json!({ "n": n }), "line {n}");
        }
    }
    let too_long_answer: Value = serde_json::from_str(out[776]).unwrap();
    assert!(
        too_long_answer["error"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{too_long_answer}"
    );
}

/// Runs `disruptor` with `args` (a stream), SIGKILLs `victim` once it has
/// run 2,000 jobs of `app`, and returns the stream's output and stderr
/// once it succeeded (it must).
fn stream_killing(args: &[&str], victim: &mut Peer, app: &str) -> (String, String) {
    let mut child = Proc::spawn(
        "disruptor stream",
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    // Read the output as it comes.
    let mut stdout = child.child().stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        stdout.read_to_string(&mut s).unwrap();
        s
    });
    let mut served = 0;
    wait_for(
        &format!("{} to run part of the stream", victim.name),
        Duration::from_secs(60),
        || {
            served = victim.jobs_done(app);
            if served > 2000 {
                Ok(())
            } else {
                Err(format!("it ran {served} jobs of {app}"))
            }
        },
    );
    victim.sigkill();
    let out = child.output(STREAM_DEADLINE);
    let stdout = reader.join().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "the stream failed: {stderr}");
    (
        stdout,
        format!("killed after it ran {served} jobs of {app}; {stderr}"),
    )
}

#[test]
fn a_peer_killed_mid_stream_loses_no_line() {
    let dir = scratch("stream-kill");
    let mut peers = echo_mesh(dir.path());
    let (path, text) = jobs_file(dir.path(), LINES);
    let entry = peers[0].http.clone();
    let args = ["stream", &entry, ECHO, path.to_str().unwrap()];
    let (stdout, stderr) = stream_killing(&args, &mut peers[2], ECHO);
    eprintln!("{stderr}");
    assert_same_lines(&stdout, &text);
}

/// Offers 300,000 lines (`line(n)`, from 1) as one chunked NDJSON POST to
/// `path` on `sock`, as fast as the peer takes them, from a thread of its
/// own; counts the bytes the peer took. Stops when the socket closes.
fn offer(
    sock: &std::net::TcpStream,
    path: &str,
    line: impl Fn(usize) -> String + Send + 'static,
) -> (
    std::thread::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let mut writer = sock.try_clone().unwrap();
    let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-ndjson\r\n\
         transfer-encoding: chunked\r\n\r\n"
    );
    let counted = written.clone();
    let thread = std::thread::spawn(move || {
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        let mut n = 0;
        while n < 300_000 {
            let mut chunk = String::new();
            for _ in 0..64 {
                n += 1;
                chunk.push_str(&line(n));
            }
            let framed = format!("{:x}\r\n{chunk}\r\n", chunk.len());
            if writer.write_all(framed.as_bytes()).is_err() {
                return; // the test closed the socket
            }
            counted.fetch_add(framed.len(), std::sync::atomic::Ordering::Relaxed);
        }
        let _ = writer.write_all(b"0\r\n\r\n");
    });
    (thread, written)
}

#[test]
fn a_slow_reader_holds_the_stream_back_and_memory_stays_bounded() {
    let dir = scratch("stream-slow");
    let peers = echo_mesh(dir.path());
    let pid = peers[0].pid().as_raw();
    let rss_before = rss_kib(pid);
    // A plain socket, so that nothing buffers for us: one thread offers
    // 300 MB of 1 KiB jobs (chunked), as fast as the peer takes them; the
    // test reads the answers at about 1 MB/s.
    let mut sock = std::net::TcpStream::connect(&peers[0].http).unwrap();
    let (offered, written) = offer(&sock, &format!("/{ECHO}"), |n| {
        format!("{{\"i\":{n},\"pad\":\"{}\"}}\n", "x".repeat(1000))
    });
    let started = Instant::now();
    let mut got = 0usize;
    let mut max_rss = rss_before;
    let mut buf = vec![0u8; 16 * 1024];
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    while started.elapsed() < Duration::from_secs(8) {
        let n = sock.read(&mut buf).expect("read the answers");
        assert!(n > 0, "the stream ended early after {got} bytes");
        if got == 0 {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        got += n;
        std::thread::sleep(Duration::from_millis(15));
        max_rss = max_rss.max(rss_kib(pid));
    }
    let taken = written.load(std::sync::atomic::Ordering::Relaxed);
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    offered.join().unwrap();
    eprintln!(
        "slow reader: read {} KiB of answers in 8 s; the peer took {} KiB of the 300 MB offered; \
         peer RSS {rss_before} KiB before, at most {max_rss} KiB",
        got / 1024,
        taken / 1024
    );
    assert!(got > 1_000_000, "the answers barely moved: {got} bytes");
    assert!(
        taken < 100 * 1024 * 1024,
        "the peer read {taken} bytes of the request: it does not hold back"
    );
    assert!(
        max_rss < rss_before + 64 * 1024,
        "the peer buffered the stream: RSS {rss_before} -> {max_rss} KiB"
    );
    // The peer lets go of the abandoned stream and keeps serving.
    let (status, _, answer) = peers[0].job(ECHO, r#"{"after":1}"#);
    assert_eq!((status, answer.as_str()), (200, r#"{"after":1}"#));
}

#[test]
fn fan_out_runs_the_job_on_every_peer_and_names_the_silent_one() {
    let dir = scratch("fanout");
    // p2's copy of the tool answers after 5 s: it misses a 2 s deadline.
    let slow_apps = dir.path().join("slow-apps");
    std::fs::create_dir_all(&slow_apps).unwrap();
    std::fs::copy(test_apps().join("tool.py"), slow_apps.join("tool.py")).unwrap();
    std::fs::write(
        slow_apps.join("tool.toml"),
        "command = \"python3\"\nargs = [\"-u\", \"tool.py\"]\nworkers = 1\n[env]\nTOOL_DELAY = \"5\"\n",
    )
    .unwrap();
    let peers = Mesh::of(dir.path(), 3)
        .apps(test_apps())
        .each(|i, opts| {
            if i == 2 {
                opts.apps = Some(slow_apps.clone());
            }
        })
        .start();
    start_app(&peers[0], "apps/tool", &[]);
    let refs: Vec<&Peer> = peers.iter().collect();
    wait_running(&peers[1], "apps/tool", &refs);

    let out = cli(&[
        "send",
        &peers[1].http,
        "apps/tool",
        "--all",
        "--timeout",
        "2s",
        r#"{"hello":1}"#,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a peer failed, so the exit code is not 0"
    );
    assert!(stderr.contains(&peers[2].id), "{stderr}");
    let all: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{stdout}: {e}"));
    let all = all.as_object().unwrap();
    assert_eq!(all.len(), 3, "one answer per peer: {stdout}");
    for p in &peers[..2] {
        assert_eq!(
            all[&p.id]["echo"],
            serde_json::json!({"hello": 1}),
            "{stdout}"
        );
    }
    assert!(
        all[&peers[2].id]["error"].as_str().is_some(),
        "the slow peer is listed as an error: {stdout}"
    );
    // Every answering peer ran it on its own worker.
    let pids: Vec<i64> = peers[..2]
        .iter()
        .map(|p| all[&p.id]["pid"].as_i64().unwrap())
        .collect();
    for (p, pid) in peers[..2].iter().zip(&pids) {
        assert!(
            p.worker_pids("apps/tool").contains(&(*pid as i32)),
            "{}'s answer came from its own worker",
            p.name
        );
    }

    // Over HTTP, with time enough for all: 3 results, 200.
    let resp = http_client()
        .post(format!("http://{}/apps/tool?to=all", peers[0].http))
        .header("content-type", "application/json")
        .header("x-disruptor-timeout-ms", "15000")
        .body(r#"{"n":2}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let all: Value = resp.json().unwrap();
    for p in &peers {
        assert_eq!(all[&p.id]["echo"], serde_json::json!({"n": 2}), "{all}");
    }
}

#[test]
fn a_stalled_stream_is_answered_so_far_then_says_why() {
    let dir = scratch("stream-stall");
    let peer = Peer::start(
        dir.path(),
        "solo",
        PeerOpts {
            apps: Some(repo_apps()),
            extra: vec!["--http-body-timeout".into(), "1s".into()],
            ..Default::default()
        },
    );
    start_app(&peer, ECHO, &[]);
    let mut sock = std::net::TcpStream::connect(&peer.http).unwrap();
    let lines = "[1]\n[2]\n[3]\n";
    write!(
        sock,
        "POST /{ECHO} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-ndjson\r\n\
         transfer-encoding: chunked\r\n\r\n{:x}\r\n{lines}\r\n",
        lines.len()
    )
    .unwrap();
    // ...and nothing more: the peer answers the three, then gives up.
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    while !answer.contains("stream_error") && started.elapsed() < Duration::from_secs(10) {
        let n = sock.read(&mut buf).expect("read");
        assert!(n > 0, "closed without a word: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    for want in ["[1]\n", "[2]\n", "[3]\n", "stalled for 1s after 3 lines"] {
        assert!(answer.contains(want), "{want:?} in {answer}");
    }
    assert!(started.elapsed() >= Duration::from_millis(900));
}

/// curl sends `Expect: 100-continue` with any body over 1 MiB and waits
/// for `100 Continue` (up to a second) before it sends the body. The
/// stream's response head used to go out first, so every large `curl
/// --data-binary @file` stream waited a second before its first line
/// (most of the time of a 100,000-line stream). The peer must ask for the
/// body before it answers.
#[test]
fn a_stream_asks_for_its_body_before_it_answers() {
    let dir = scratch("stream-expect");
    let peer = Peer::start(
        dir.path(),
        "solo",
        PeerOpts {
            apps: Some(repo_apps()),
            ..Default::default()
        },
    );
    start_app(&peer, ECHO, &[]);
    let mut sock = std::net::TcpStream::connect(&peer.http).unwrap();
    let lines = "[1]\n[2]\n";
    write!(
        sock,
        "POST /{ECHO} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/x-ndjson\r\n\
         content-length: {}\r\nexpect: 100-continue\r\n\r\n",
        lines.len()
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            sock.read(&mut byte).expect("an answer within 10 s"),
            1,
            "closed: {head:?}"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 100 Continue\r\n"),
        "the first answer: {head:?}"
    );
    // Then the body, and the stream's answers.
    sock.write_all(lines.as_bytes()).unwrap();
    let mut answer = String::new();
    let mut buf = [0u8; 4096];
    while !answer.contains("[2]\n") {
        let n = sock.read(&mut buf).expect("the stream's answers");
        assert!(n > 0, "closed: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(answer.contains("[1]\n"), "{answer}");
}

const WORDS: &str = "apps/words";
const SHOUT: &str = "apps/shout";
const TOOL: &str = "apps/tool";
const TOTAL: &str = "apps/total";

/// 3 peers with the test apps; words, shout and tool started on all.
fn pipeline_mesh(dir: &std::path::Path) -> Mesh {
    let peers = Mesh::of(dir, 3).apps(test_apps()).run(WORDS, &[]).start();
    for app in [SHOUT, TOOL, TOTAL] {
        start_app(&peers[0], app, &[]);
        let all: Vec<&Peer> = peers.iter().collect();
        for p in &peers[..] {
            wait_running(p, app, &all);
        }
    }
    peers
}

/// `n` lines of two words each, `"l{i}a l{i}b"`, but every 97th line is
/// `"-"` (which words drops); and what words, then tool (with shout
/// between them when `upper`) must answer for them, in order: the words
/// each tool echoes.
fn pipeline_input(n: usize, upper: bool) -> (String, Vec<String>) {
    let mut input = String::new();
    let mut want = Vec::new();
    for i in 1..=n {
        if i % 97 == 0 {
            input.push_str("\"-\"\n");
            continue;
        }
        input.push_str(&format!("\"l{i}a l{i}b\"\n"));
        for w in [format!("l{i}a"), format!("l{i}b")] {
            want.push(if upper { w.to_uppercase() } else { w });
        }
    }
    (input, want)
}

/// Each output line's `echo` (tool's answer), or the whole line.
fn echoes(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .map(|l| match serde_json::from_str::<Value>(l) {
            Ok(v) if v.get("echo").is_some() => v["echo"].as_str().unwrap_or_default().to_string(),
            _ => l.to_string(),
        })
        .collect()
}

/// Stages across three peers (words flattens each line into its words and
/// drops "-", then `then`: tool echoes, shout before it capitalises), with
/// a peer SIGKILLed mid-stream: every item comes out once, in input order.
fn a_pipeline_survives_a_kill(name: &str, then: &[&str]) {
    let dir = scratch(name);
    let mut peers = pipeline_mesh(dir.path());
    let (input, want) = pipeline_input(30_000, then.contains(&SHOUT));
    let path = dir.path().join("lines.ndjson");
    std::fs::write(&path, &input).unwrap();
    let entry = peers[0].http.clone();
    let mut args = vec!["stream", &entry, WORDS, path.to_str().unwrap()];
    for app in then {
        args.extend(["--then", app]);
    }
    let (stdout, stderr) = stream_killing(&args, &mut peers[2], TOOL);
    eprintln!("{stderr}");
    let got = echoes(&stdout);
    if let Some(i) = (0..got.len().min(want.len())).find(|i| got[*i] != want[*i]) {
        panic!(
            "item {} differs: got {:?}, want {:?}",
            i + 1,
            got[i],
            want[i]
        );
    }
    assert_eq!(got.len(), want.len(), "items out");
    assert!(stderr.contains("lines in"), "{stderr}");
}

#[test]
fn a_pipeline_through_two_stages_keeps_order_when_a_peer_is_killed() {
    a_pipeline_survives_a_kill("pipeline-kill-2", &[TOOL]);
}

#[test]
fn a_pipeline_through_three_stages_keeps_order_when_a_peer_is_killed() {
    a_pipeline_survives_a_kill("pipeline-kill-3", &[SHOUT, TOOL]);
}

/// A stage that fails on one item answers that item with its stage and
/// error, and the line's other items and the stream go on; bad stages are
/// refused before the stream starts; a single job goes through the stages
/// too.
#[test]
fn a_failing_middle_stage_answers_its_item_and_the_rest_go_on() {
    let dir = scratch("pipeline-errors");
    let peers = pipeline_mesh(dir.path());
    let http = http_client();
    let post = |query: &str, body: &str, ct: &str| {
        let r = http
            .post(format!("http://{}/{WORDS}{query}", peers[1].http))
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let ndjson = "application/x-ndjson";
    let (status, out) = post(
        "?then=apps/shout&then=apps/tool",
        "\"a poison b\"\n\"-\"\n\"c\"\n",
        ndjson,
    );
    assert_eq!(status, 200, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0]["echo"], "A", "{out}");
    assert_eq!(lines[1]["line"], 1, "{out}");
    assert_eq!(lines[1]["stage"], SHOUT, "{out}");
    assert!(
        lines[1]["error"].as_str().unwrap().contains("exit"),
        "{out}"
    );
    assert_eq!(lines[2]["echo"], "B", "{out}");
    assert_eq!(lines[3]["echo"], "C", "{out}");
    // A stage that answers something that is not JSON: that line's error.
    let (status, out) = http
        .post(format!("http://{}/{TOOL}?then={SHOUT}", peers[1].http))
        .header("content-type", ndjson)
        .body("{\"bad\":true}\n\"fine\"\n")
        .send()
        .map(|r| (r.status().as_u16(), r.text().unwrap()))
        .unwrap();
    assert_eq!(status, 200, "{out}");
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        (lines[0]["line"].as_u64(), lines[0]["stage"].as_str()),
        (Some(1), Some(TOOL)),
        "{out}"
    );
    assert!(
        lines[0]["error"].as_str().unwrap().contains("not JSON"),
        "{out}"
    );
    assert_eq!(lines.len(), 2, "{out}");
    // Unordered: each item with its line.
    let (status, out) = post("?then=apps/shout&ordered=false", "\"x y\"\n\"z\"\n", ndjson);
    assert_eq!(status, 200, "{out}");
    let mut got: Vec<String> = out.lines().map(str::to_string).collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            r#"{"line":1,"result":"X"}"#,
            r#"{"line":1,"result":"Y"}"#,
            r#"{"line":2,"result":"Z"}"#
        ]
    );
    // Bad stages: refused before anything runs, the peer keeps serving.
    let (status, out) = post("?then=apps/nowhere", "\"a\"\n", ndjson);
    assert_eq!(status, 404, "{out}");
    assert!(out.contains("stage 2 (apps/nowhere)"), "{out}");
    let (status, out) = post("?then=..%2Fetc", "\"a\"\n", ndjson);
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("then="), "{out}");
    let seventeen = "&then=apps/shout".repeat(16);
    let (status, out) = post(&format!("?x=1{seventeen}"), "\"a\"\n", ndjson);
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("at most 16 stages"), "{out}");
    let (status, out) = post("?to=all&then=apps/shout", "\"a\"", "application/json");
    assert_eq!(status, 400, "{out}");
    // A single job: the answer has the shape of the data.
    let (status, out) = post("?then=apps/shout", "\"one two\"", "application/json");
    assert_eq!((status, out.as_str()), (200, r#"["ONE","TWO"]"#));
    let (status, out) = post("?then=apps/shout", "\"-\"", "application/json");
    assert_eq!((status, out.as_str()), (200, "null"));
    let (status, out) = post("?then=apps/shout", "\"poison\"", "application/json");
    assert_eq!(status, 502, "{out}");
    assert!(out.contains("stage 2 (apps/shout)"), "{out}");
    // The same through the command line.
    let out = cli(&[
        "send",
        &peers[0].http,
        WORDS,
        "\"hello mesh\"",
        "--then",
        SHOUT,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"["HELLO","MESH"]"#
    );
    let out = cli(&[
        "send",
        &peers[0].http,
        WORDS,
        "\"a\"",
        "--then",
        "not an app",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let (status, out) = post("", "\"still here\"", "application/json");
    assert_eq!((status, out.as_str()), (200, r#"["still", "here"]"#));
}

/// `?reduce=`: a stream's results (through stages too) and a fan-out's go
/// to one reducer worker, in parts with the partial answer, and the answer
/// is the reducer's; a reducer that crashes is a clear error and the peer
/// keeps serving.
#[test]
fn a_reducer_collates_a_stream_and_a_fan_out() {
    let dir = scratch("reduce");
    let peers = pipeline_mesh(dir.path());
    let http = http_client();
    let post = |query: &str, body: &str, ct: &str| {
        let r = http
            .post(format!("http://{}/{WORDS}{query}", peers[0].http))
            .header("content-type", ct)
            .body(body.to_string())
            .send()
            .unwrap();
        let h = |name: &str| {
            r.headers()
                .get(name)
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default()
        };
        let counts = (h("x-disruptor-reduced"), h("x-disruptor-failed"));
        (r.status().as_u16(), counts, r.text().unwrap())
    };
    let ndjson = "application/x-ndjson";
    // 2,500 lines "k k", one a bad line: 2,499 results (one list of two
    // numbers each) in three parts of at most 1,000.
    let mut input: String = (1..=2500).map(|k| format!("\"{k} {k}\"\n")).collect();
    input = input.replacen("\"7 7\"", "not json", 1);
    let (status, counts, out) = post(&format!("?reduce={TOTAL}"), &input, ndjson);
    assert_eq!(status, 200, "{out}");
    assert_eq!(counts, ("2499".to_string(), "1".to_string()));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["count"], 2499, "{out}");
    assert_eq!(v["sum"].as_f64(), Some((2500.0 * 2501.0) - 14.0), "{out}");
    assert_eq!(v["parts"], 3, "{out}");
    // Through a second stage: each word is a result of its own.
    let input: String = (1..=300).map(|k| format!("\"{k} {k}\"\n")).collect();
    let (status, _, out) = post(&format!("?then={SHOUT}&reduce={TOTAL}"), &input, ndjson);
    assert_eq!(status, 200, "{out}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["count"].as_u64(), v["sum"].as_f64()),
        (Some(600), Some(300.0 * 301.0)),
        "{out}"
    );
    // A fan-out: every peer's answer, reduced.
    let (status, counts, out) = post(
        &format!("?to=all&reduce={TOTAL}"),
        "\"4 5\"",
        "application/json",
    );
    assert_eq!(status, 200, "{out}");
    assert_eq!(counts, ("3".to_string(), "0".to_string()));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["count"].as_u64(), v["sum"].as_f64()),
        (Some(3), Some(27.0)),
        "{out}"
    );
    // The command line: the reducer's answer, and the summary.
    let path = dir.path().join("numbers.txt");
    std::fs::write(&path, "1 2\n3\n").unwrap();
    let (ok, stdout, stderr) = stream_cli(&[
        &peers[1].http,
        WORDS,
        path.to_str().unwrap(),
        "--lines",
        "--reduce",
        TOTAL,
    ]);
    assert!(ok, "{stderr}");
    let v: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(
        (v["count"].as_u64(), v["sum"].as_f64()),
        (Some(2), Some(6.0)),
        "{stdout}"
    );
    assert!(stderr.contains("2 results reduced, 0 failed"), "{stderr}");
    // A reducer that crashes on its job: 502 naming it.
    let (status, _, out) = post(&format!("?reduce={TOTAL}"), "\"1 crash\"\n", ndjson);
    assert_eq!(status, 502, "{out}");
    assert!(out.contains("reduce (apps/total)"), "{out}");
    // Refused before anything runs.
    let (status, _, out) = post("?reduce=apps/nowhere", "\"1\"\n", ndjson);
    assert_eq!(status, 404, "{out}");
    assert!(out.contains("reduce (apps/nowhere)"), "{out}");
    let (status, _, out) = post(&format!("?reduce={TOTAL}"), "\"1\"", "application/json");
    assert_eq!(status, 400, "{out}");
    assert!(out.contains("not of one job"), "{out}");
    let (status, _, out) = post("?reduce=..", "\"1\"\n", ndjson);
    assert_eq!(status, 400, "{out}");
    // And the peer keeps serving.
    let (status, _, out) = post("", "\"still here\"", "application/json");
    assert_eq!((status, out.as_str()), (200, r#"["still", "here"]"#));
}

/// A pipeline whose last stage is slow (10 ms a job) takes its input only
/// as fast as that stage answers: the window counts the items of every
/// stage, so the peer reads a little of what is offered and its memory
/// stays bounded, while the answers keep coming.
#[test]
fn a_slow_last_stage_holds_a_pipeline_back_and_memory_stays_bounded() {
    let dir = scratch("pipeline-slow");
    let apps = dir.path().join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    for f in ["words.py", "words.toml", "tool.py"] {
        std::fs::copy(test_apps().join(f), apps.join(f)).unwrap();
    }
    std::fs::write(
        apps.join("slow.toml"),
        "command = \"python3\"\nargs = [\"-u\", \"tool.py\"]\nworkers = 2\n\n[env]\nTOOL_DELAY = \"0.01\"\n",
    )
    .unwrap();
    let peers = Mesh::of(dir.path(), 3).apps(apps).run(WORDS, &[]).start();
    start_app(&peers[0], "apps/slow", &[]);
    let all: Vec<&Peer> = peers.iter().collect();
    wait_running(&peers[0], "apps/slow", &all);
    let pid = peers[0].pid().as_raw();
    let rss_before = rss_kib(pid);
    let mut sock = std::net::TcpStream::connect(&peers[0].http).unwrap();
    // 8 KiB lines of two words each.
    let (offered, written) = offer(&sock, &format!("/{WORDS}?then=apps/slow"), |n| {
        format!("\"{n} {}\"\n", "x".repeat(8000))
    });
    // The jobs this peer has out, at every stage, in one reading (the
    // workers' own counts, read peer after peer, add up items that moved
    // between the readings).
    let out_now = || peers[0].counter("disruptor_jobs_in_flight") as u64;
    let started = Instant::now();
    let (mut got, mut max_rss, mut most_held) = (0usize, rss_before, 0);
    let mut buf = vec![0u8; 64 * 1024];
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut looked = Instant::now();
    while started.elapsed() < Duration::from_secs(8) {
        let n = sock.read(&mut buf).expect("read the answers");
        assert!(n > 0, "the stream ended early after {got} bytes");
        got += n;
        max_rss = max_rss.max(rss_kib(pid));
        if looked.elapsed() > Duration::from_millis(200) {
            most_held = most_held.max(out_now());
            looked = Instant::now();
        }
    }
    // The dashboard's figures list the running pipeline, then forget it.
    let pipelines =
        || -> Value { peers[0].get("/api/stats").json::<Value>().unwrap()["pipelines"].clone() };
    let listed = pipelines();
    assert_eq!(
        listed[0]["stages"],
        serde_json::json!([WORDS, "apps/slow"]),
        "{listed}"
    );
    let page = peers[0].get("/dashboard/live").text().unwrap();
    assert!(page.contains("<h2>Pipelines</h2>"), "{page}");
    let taken = written.load(std::sync::atomic::Ordering::Relaxed);
    sock.shutdown(std::net::Shutdown::Both).unwrap();
    offered.join().unwrap();
    wait_for(
        "the ended pipeline to leave the list",
        Duration::from_secs(30),
        || {
            let listed = pipelines();
            if listed.as_array().is_some_and(|a| a.is_empty()) {
                Ok(())
            } else {
                Err(listed.to_string())
            }
        },
    );
    eprintln!(
        "slow last stage: read {} KiB of answers in 8 s; the peer took {} KiB of the 300 MB offered; \
         peer RSS {rss_before} KiB before, at most {max_rss} KiB; at most {most_held} jobs out",
        got / 1024,
        taken / 1024
    );
    assert!(got > 100_000, "the answers barely moved: {got} bytes");
    // The window (256, the default) counts the items of every stage.
    assert!(
        most_held <= 256,
        "{most_held} jobs out at once: more than the stream's window"
    );
    assert!(
        taken < 30 * 1024 * 1024,
        "the peer read {taken} bytes of the request: the slow stage does not hold it back"
    );
    assert!(
        max_rss < rss_before + 64 * 1024,
        "the peer buffered the stream: RSS {rss_before} -> {max_rss} KiB"
    );
}
