//! Workers and jobs, end to end: real peers, real worker processes.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

const COUNTER: &str = "apps/wordcount/counter";
const SENTENCE_1: &str = "The First World War was to be the war to end all wars.";
const RESULT_1: &str =
    r#"{"message":"The First World War was to be the war to end all wars.","total":13,"unique":9}"#;
const SENTENCE_2: &str = "the quick brown fox jumped over the lazy dog";
const RESULT_2: &str =
    r#"{"message":"the quick brown fox jumped over the lazy dog","total":9,"unique":8}"#;

/// One peer with `tests/apps`.
fn solo(dir: &std::path::Path, extra: &[&str]) -> Peer {
    let opts = PeerOpts {
        apps: Some(test_apps()),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    Peer::start(dir, "solo", opts)
}

/// Waits (5 s at most) for `needle` to appear in the peer's log.
fn wait_log(p: &Peer, needle: &str) {
    wait_for(
        &format!("{needle:?} in the log of {}", p.name),
        Duration::from_secs(5),
        || {
            let log = p.log_text();
            if log.contains(needle) {
                Ok(())
            } else {
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                Err(format!("its last lines, newest first: {tail:?}"))
            }
        },
    );
}

/// 3 peers, 2 workers each; the first `with_apps` have `apps`.
fn mesh(dir: &std::path::Path, apps: std::path::PathBuf, with_apps: usize) -> Mesh {
    Mesh::of(dir, 3)
        .apps_on_first(with_apps, apps)
        .workers(2)
        .start()
}

#[test]
fn the_original_story_wordcount_across_the_mesh() {
    let dir = scratch("story");
    // Peer 3 has no apps directory at all: it serves through the others.
    let peers = mesh(dir.path(), repo_apps(), 2);
    let out = start_app(&peers[0], COUNTER, &[]);
    assert!(out.contains("running on 2 of 3 peers"), "{out}");
    assert!(
        out.contains("missing"),
        "the peer without the app says so: {out}"
    );

    // curl-like HTTP through the peer without the app.
    let (status, peer, body) = peers[2].job(COUNTER, &serde_json::to_string(SENTENCE_1).unwrap());
    assert_eq!((status, body.as_str()), (200, RESULT_1));
    let ran_on = peer.expect("X-Disruptor-Peer");
    assert!(
        ran_on == peers[0].id || ran_on == peers[1].id,
        "ran on {ran_on}"
    );
    // text/plain is what a web page may send cross-site: refused, with
    // the way to send text (as a JSON string).
    let (status, _, body) = peers[2].job_with(COUNTER, SENTENCE_2, "text/plain", None);
    assert_eq!(status, 415, "{body}");
    assert!(body.contains("application/json"), "{body}");
    let as_json = serde_json::to_string(SENTENCE_2).unwrap();
    let (status, _, body) = peers[2].job(COUNTER, &as_json);
    assert_eq!((status, body.as_str()), (200, RESULT_2));

    // The CLI, with a payload that is not JSON (sent as a string), and from stdin.
    let out = cli(&["send", &peers[2].http, COUNTER, SENTENCE_1]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), RESULT_1);
    let mut send = Proc::spawn(
        "disruptor send from stdin",
        std::process::Command::new(BIN)
            .args(["send", &peers[2].http, COUNTER, "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped()),
    );
    use std::io::Write;
    send.child()
        .stdin
        .take()
        .unwrap()
        .write_all(SENTENCE_2.as_bytes())
        .unwrap();
    let out = send.output(Duration::from_secs(30));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), RESULT_2);

    // Errors from the CLI: the server's message, non-zero exit.
    let out = cli(&["send", &peers[2].http, "apps/nope", "1"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no live worker anywhere in the mesh"),
        "{out:?}"
    );
    let out = cli(&["send", &peers[2].http, "apps/../x", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // /api/apps tells where it runs; the status page shows it too. What
    // peer 2 holds of the others comes from their announcements, so it
    // may still read "starting" for one of them: waited for, not assumed
    // (read at once, it failed in CI with 2 tests at a time).
    wait_running(&peers[2], COUNTER, &[&peers[0], &peers[1]]);
    let apps = peers[2].apps();
    let per_peer = &apps["mesh"][COUNTER];
    assert_eq!(per_peer[&peers[2].id]["state"], "missing", "{apps}");
    let page = peers[0].get("/").text().unwrap();
    assert!(page.contains(COUNTER), "status page lists the app");
}

#[test]
fn jobs_spread_over_every_peer_and_stop_leaves_no_worker() {
    let dir = scratch("spread");
    let peers = mesh(dir.path(), repo_apps(), 3);
    start_app(&peers[1], "apps/echo/echo", &[]);
    let mut seen: HashMap<String, usize> = HashMap::new();
    for i in 0..300 {
        let body = format!(r#"{{"n":{i},"text":"hello"}}"#);
        let (status, peer, answer) = peers[0].job("apps/echo/echo", &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer, body, "echo answers the job itself");
        *seen.entry(peer.unwrap()).or_default() += 1;
    }
    for p in &peers {
        assert!(
            seen.get(&p.id).copied().unwrap_or(0) > 0,
            "{} ran no job: {seen:?}",
            p.name
        );
    }
    eprintln!("300 jobs spread as {:?}", seen.values().collect::<Vec<_>>());

    let pids: Vec<i32> = peers
        .iter()
        .flat_map(|p| p.worker_pids("apps/echo/echo"))
        .collect();
    assert_eq!(pids.len(), 6, "2 workers on each of 3 peers: {pids:?}");
    assert!(pids.iter().all(|p| pid_alive(*p)));
    let out = cli(&["stop", &peers[2].http, "apps/echo/echo"]);
    assert!(out.status.success(), "{out:?}");
    let t = Instant::now();
    for p in &peers {
        wait_for("404 after stop", Duration::from_secs(5), || {
            let (status, _, body) = p.job("apps/echo/echo", "1");
            if status == 404 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        });
    }
    wait_gone(
        "every worker process to be gone",
        &pids,
        Duration::from_secs(10),
    );
    eprintln!("stopped everywhere within {:?}", t.elapsed());
}

#[test]
fn a_peer_that_joins_later_runs_what_the_mesh_runs() {
    let dir = scratch("late");
    let mesh = Mesh::named(dir.path(), &["first"])
        .apps(test_apps())
        .start();
    let first = &mesh[0];
    start_app(first, "apps/tool", &[]);
    let late = mesh.newcomer("late", 0);
    wait_for(
        "the late peer to run apps/tool by itself",
        Duration::from_secs(10),
        || {
            let pids = late.worker_pids("apps/tool");
            if pids.len() == 2 {
                Ok(())
            } else {
                Err(format!("{}", late.apps()))
            }
        },
    );
    // And the mesh routes jobs to it.
    wait_for(
        "a job to run on the late peer",
        Duration::from_secs(10),
        || {
            let (status, peer, body) = first.job("apps/tool", r#"{"x":1}"#);
            if status == 200 && peer.as_deref() == Some(late.id.as_str()) {
                Ok(())
            } else {
                Err(format!("{status} {peer:?} {body}"))
            }
        },
    );
}

#[test]
fn start_and_stop_sent_to_different_peers_end_the_same_everywhere() {
    let dir = scratch("lww");
    let peers = mesh(dir.path(), test_apps(), 3);
    start_app(&peers[0], "apps/tool", &[]);
    let out = cli(&["stop", &peers[2].http, "apps/tool"]);
    assert!(out.status.success(), "{out:?}");
    start_app(&peers[1], "apps/tool", &["--workers", "1"]);
    for p in &peers {
        wait_for(
            "one worker of apps/tool on every peer",
            Duration::from_secs(10),
            || {
                let pids = p.worker_pids("apps/tool");
                let st = &p.apps()["mesh"]["apps/tool"];
                let all_running = peers.iter().all(|q| st[&q.id]["state"] == "running");
                if pids.len() == 1 && all_running {
                    Ok(())
                } else {
                    Err(format!("{pids:?} {st}"))
                }
            },
        );
    }
}

#[test]
fn worker_failures_are_reported_and_the_peer_recovers() {
    let dir = scratch("fail");
    let p = solo(dir.path(), &[]);
    start_app(&p, "apps/tool", &["--workers", "1"]);
    let (status, _, body) = p.job("apps/tool", r#"{"x":1}"#);
    assert_eq!(status, 200, "{body}");
    let first_pid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
        .as_i64()
        .unwrap();

    // A crash: 502 with the exit status and the worker's stderr.
    let (status, _, body) = p.job("apps/tool", r#"{"crash":true}"#);
    assert_eq!(status, 502, "{body}");
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.contains("exited with status 3") && msg.contains("boom: asked to crash"),
        "{msg}"
    );
    // The next job succeeds on the restarted worker.
    let (status, _, body) = wait_for("the restarted worker", Duration::from_secs(10), || {
        let r = p.job("apps/tool", r#"{"x":2}"#);
        if r.0 == 200 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let second_pid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
        .as_i64()
        .unwrap();
    assert_eq!(status, 200);
    assert_ne!(first_pid, second_pid, "a new process");
    assert!(!pid_alive(first_pid as i32));

    // A line that is not JSON: 502, and the worker is replaced (its answers
    // can no longer be matched to jobs); the next job is served at once by
    // the restarted worker (it waits in the queue, no 404).
    let (status, _, body) = p.job("apps/tool", r#"{"bad":true}"#);
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("not JSON") && body.contains("this is not json"),
        "{body}"
    );
    let (status, _, body) = p.job("apps/tool", r#"{"x":3}"#);
    assert_eq!(status, 200, "{body}");
    let third_pid = serde_json::from_str::<serde_json::Value>(&body).unwrap()["pid"]
        .as_i64()
        .unwrap();
    assert_ne!(third_pid, second_pid);
    wait_gone(
        "the worker that broke the protocol",
        &[second_pid as i32],
        Duration::from_secs(5),
    );

    // A hanging worker: 504 at the requested timeout, then it is recycled.
    let t = Instant::now();
    let (status, _, body) = p.job_with(
        "apps/tool",
        r#"{"hang":true}"#,
        "application/json",
        Some("700"),
    );
    let took = t.elapsed();
    assert_eq!(status, 504, "{body}");
    assert!(
        took >= Duration::from_millis(650) && took < Duration::from_secs(5),
        "{took:?}"
    );
    wait_gone(
        "the hung worker",
        &[third_pid as i32],
        Duration::from_secs(5),
    );
    let (status, _, body) = wait_for(
        "a fresh worker after the hang",
        Duration::from_secs(10),
        || {
            let r = p.job("apps/tool", r#"{"x":4}"#);
            if r.0 == 200 {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    assert_eq!(status, 200, "{body}");

    // A worker that cannot start at all shows as failing, without a tight
    // restart loop.
    start_app_allow_fail(&p, "apps/crashloop");
    let detail = wait_for(
        "crashloop to show as failing",
        Duration::from_secs(10),
        || {
            let apps = p.apps();
            let a = apps["local"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["app"] == "apps/crashloop")
                .cloned();
            match a {
                Some(a) if a["state"] == "failing" => Ok(a),
                other => Err(format!("{other:?}")),
            }
        },
    );
    assert!(
        detail["error"]
            .as_str()
            .unwrap_or("")
            .contains("exited with status 7"),
        "{detail}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let restarts = p.apps()["local"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "apps/crashloop")
        .unwrap()["processes"][0]["restarts"]
        .as_u64()
        .unwrap();
    assert!(restarts <= 8, "backoff keeps restarts few, saw {restarts}");
    assert_eq!(p.get("/healthz").status(), 200);
}

/// `disruptor start` for an app that will not run exits non-zero; that is
/// expected here.
fn start_app_allow_fail(peer: &Peer, app: &str) {
    let out = cli(&["start", &peer.http, app, "--wait", "3s"]);
    assert!(
        !out.status.success(),
        "an app that never runs is not reported as started: {out:?}"
    );
}

#[test]
fn bad_input_gets_clear_errors_and_the_peer_keeps_serving() {
    let dir = scratch("bad");
    let p = solo(dir.path(), &["--max-job-bytes", "1000"]);
    start_app(&p, "apps/tool", &["--workers", "1"]);
    let expect = |(status, _, body): (u16, Option<String>, String), want: u16, needle: &str| {
        assert_eq!(status, want, "{body}");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
        let msg = v["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error field: {body}"));
        assert!(msg.contains(needle), "{msg:?} lacks {needle:?}");
    };
    expect(p.job("apps/tool", "{not json"), 400, "not valid JSON");
    expect(p.job("apps/tool", ""), 400, "not valid JSON");
    expect(
        p.job("apps/nothing/here", "1"),
        404,
        "no live worker anywhere",
    );
    expect(
        p.job("apps/tool", &format!("\"{}\"", "x".repeat(2000))),
        413,
        "larger than the limit",
    );
    expect(
        p.job_with("apps/tool", "1", "application/json", Some("soon")),
        400,
        "x-disruptor-timeout-ms",
    );
    expect(
        p.job_with("apps/tool", "1", "application/json", Some("0")),
        400,
        "x-disruptor-timeout-ms",
    );

    // Traversal, plain and percent-encoded, sent raw (no client normalises it).
    for path in [
        "/apps/../../etc/passwd",
        "/apps/..%2f..%2fetc%2fpasswd",
        "/apps/%2e%2e/%2e%2e/bin/sh",
        "/apps/tool/..",
        "/apps/.hidden",
        "/apps/%252e%252e/x",
        "/apps//bin/sh",
    ] {
        let (status, body) = p.raw(&format!("POST {path} HTTP/1.1"), "1");
        // Refused by name, not looked up (a 404 would mean it was taken
        // for an app name).
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("is not allowed"), "{path}: {body}");
        assert!(!body.contains("root:"), "{path}: {body}");
    }
    let (status, body) = p.raw("GET /apps/tool HTTP/1.1", "");
    assert_eq!(status, 405, "{body}");
    // Start/stop API validation.
    let c = http_client();
    let r = c
        .post(format!("http://{}/api/apps/start", p.http))
        .body(r#"{"app":"apps/tool"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 415, "no content type");
    let r = c
        .post(format!("http://{}/api/apps/start", p.http))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(format!("http://{}/api/apps/start", p.http))
        .header("content-type", "application/json")
        .body(r#"{"app":"apps/../../bin/sh"}"#)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("not allowed"));

    // Still serving.
    let (status, _, body) = p.job("apps/tool", r#"{"still":"here"}"#);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn an_unmodified_node_worker_in_the_original_style_runs() {
    let dir = scratch("node");
    let p = solo(dir.path(), &[]);
    start_app(&p, "apps/node/shout", &["--workers", "1"]);
    for i in 1..=3 {
        let (status, _, body) = p.job("apps/node/shout", &format!("\"hello {i}\""));
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["shouted"], format!("HELLO {i}"));
        assert_eq!(v["count"], i, "one long-lived process");
    }
    // console.log went to the peer's log, not into a result.
    wait_log(&p, "shouting job 3");
}

#[test]
fn stop_escalates_to_sigkill_after_the_grace_period() {
    let dir = scratch("grace");
    let p = solo(dir.path(), &["--worker-grace", "1s"]);
    start_app(&p, "apps/stubborn", &[]);
    let pids = p.worker_pids("apps/stubborn");
    assert_eq!(pids.len(), 1);
    wait_for(
        "the worker to ignore SIGTERM",
        Duration::from_secs(5),
        || {
            let status =
                std::fs::read_to_string(format!("/proc/{}/status", pids[0])).unwrap_or_default();
            let ign = status
                .lines()
                .find_map(|l| l.strip_prefix("SigIgn:"))
                .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
                .unwrap_or(0);
            if ign & (1 << (15 - 1)) != 0 {
                Ok(())
            } else {
                Err(status)
            }
        },
    );
    let t = Instant::now();
    let out = cli(&["stop", &p.http, "apps/stubborn"]);
    assert!(out.status.success(), "{out:?}");
    wait_for(
        "the stubborn worker to be killed",
        Duration::from_secs(5),
        || {
            if pid_alive(pids[0]) {
                Err("alive".into())
            } else {
                Ok(())
            }
        },
    );
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "SIGTERM was ignored, so it took the grace period: {took:?}"
    );
    wait_log(&p, "ignored SIGTERM");
}

#[test]
fn workers_do_not_outlive_a_killed_peer() {
    let dir = scratch("orphans");
    let mut p = solo(dir.path(), &[]);
    start_app(&p, "apps/tool", &[]);
    start_app(&p, "apps/node/shout", &["--workers", "2"]);
    start_app(&p, "apps/stubborn", &[]);
    let mut pids = p.worker_pids("apps/tool");
    pids.extend(p.worker_pids("apps/node/shout"));
    pids.extend(p.worker_pids("apps/stubborn"));
    assert_eq!(pids.len(), 5, "{pids:?}");
    p.sigkill();
    wait_gone(
        "every worker to die with its peer",
        &pids,
        Duration::from_secs(5),
    );
}

#[test]
fn concurrent_jobs_each_get_their_own_result() {
    let dir = scratch("corr");
    let peers = mesh(dir.path(), test_apps(), 2);
    concurrent_jobs_are_correlated(&peers);
}

/// The same with runtimes of 4 threads: the default on a 2-core machine is
/// one thread, which would leave the multi-threaded paths (a job's answer
/// arriving on another thread than its request) untested there.
#[test]
fn concurrent_jobs_are_correlated_on_multi_threaded_runtimes() {
    let dir = scratch("corr-mt");
    let peers = Mesh::of(dir.path(), 3)
        .apps_on_first(2, test_apps())
        .workers(2)
        .flags(&["--threads", "4"])
        .start();
    for p in &peers {
        let pid = p.pid().as_raw();
        let runtime_threads = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .filter(|name| name.starts_with("tokio-r"))
            .count();
        assert!(
            runtime_threads >= 4,
            "{}: --threads 4 gave {runtime_threads} runtime threads",
            p.name
        );
    }
    concurrent_jobs_are_correlated(&peers);
}

fn concurrent_jobs_are_correlated(peers: &[Peer]) {
    start_app(&peers[0], "apps/tool", &[]);
    // 4 worker processes in the mesh, 200 jobs from 16 threads at once, each
    // job sleeping a random few milliseconds so answers interleave.
    let handles: Vec<_> = (0..16)
        .map(|t| {
            let http = peers[2].http.clone();
            std::thread::spawn(move || {
                let client = http_client();
                for i in 0..13 {
                    let id = format!("{t}-{i}");
                    let sleep = ((t * 7 + i * 3) % 5) as f64 / 1000.0;
                    let body = format!(r#"{{"id":"{id}","sleep":{sleep}}}"#);
                    let resp = client
                        .post(format!("http://{http}/apps/tool"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .unwrap();
                    assert_eq!(resp.status(), 200);
                    let v: serde_json::Value = resp.json().unwrap();
                    assert_eq!(
                        v["echo"]["id"],
                        id.as_str(),
                        "a result reached the wrong job"
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a client thread failed");
    }
}

#[test]
fn a_job_at_the_size_limit_crosses_the_mesh() {
    let dir = scratch("big");
    let peers = mesh(dir.path(), repo_apps(), 1);
    start_app(&peers[0], "apps/echo/echo", &["--workers", "1"]);
    // Just under the default 1 MiB limit, sent to a peer without the app.
    let big = format!("\"{}\"", "y".repeat(1024 * 1024 - 2));
    let (status, peer, body) = peers[2].job("apps/echo/echo", &big);
    assert_eq!(status, 200, "{}", &body[..body.len().min(300)]);
    assert_eq!(peer.as_deref(), Some(peers[0].id.as_str()));
    assert_eq!(body.len(), big.len());
    assert!(body == big);
    // One byte over: 413, and the mesh is fine afterwards.
    let (status, _, _) = peers[2].job(
        "apps/echo/echo",
        &format!("\"{}\"", "y".repeat(1024 * 1024 - 1)),
    );
    assert_eq!(status, 413);
    let (status, _, body) = peers[2].job("apps/echo/echo", "[1,2,3]");
    assert_eq!((status, body.as_str()), (200, "[1,2,3]"));
}

#[test]
fn output_a_worker_writes_between_jobs_is_not_taken_for_an_answer() {
    let dir = scratch("chatty");
    let p = solo(dir.path(), &[]);
    start_app(&p, "apps/chatty", &[]);
    // Let the worker print its start-up line before the first job.
    wait_log(&p, "loading model");
    for i in 0..5 {
        let (status, _, body) = p.job("apps/chatty", &i.to_string());
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v, serde_json::json!({ "echo": i }));
    }
}

#[test]
fn an_apps_directory_created_after_start_is_picked_up() {
    let dir = scratch("latedir");
    let apps = dir.path().join("later-apps");
    let p = Peer::start(
        dir.path(),
        "solo",
        PeerOpts {
            apps: Some(apps.clone()),
            ..Default::default()
        },
    );
    let out = cli(&["start", &p.http, "apps/echo/echo", "--wait", "5s"]);
    assert!(!out.status.success(), "nothing runs yet: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("missing"),
        "{out:?}"
    );
    std::fs::create_dir_all(apps.join("echo")).unwrap();
    std::fs::copy(repo_apps().join("echo/echo"), apps.join("echo/echo")).unwrap();
    wait_for(
        "the app to start once it exists",
        Duration::from_secs(15),
        || {
            let (status, _, body) = p.job("apps/echo/echo", "[7]");
            if status == 200 && body == "[7]" {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    );
}

/// POSTs a job and returns (status, X-Disruptor-Attempts, body).
#[test]
fn a_poison_job_is_tried_within_the_budget_then_reported() {
    let dir = scratch("poison");
    let peers = mesh(dir.path(), test_apps(), 2);
    start_app(&peers[0], "apps/tool", &[]);
    wait_running(&peers[2], "apps/tool", &[&peers[0], &peers[1]]);
    let c = http_client();
    let (status, attempts, body) =
        job_attempts(&c, &peers[2].http, "apps/tool", r#"{"crash":true}"#);
    assert_eq!(status, 502, "{body}");
    assert_eq!(attempts, 3, "first try plus the default 2 retries: {body}");
    assert!(
        body.contains("3 attempts") && body.contains("boom: asked to crash"),
        "{body}"
    );
    // The mesh's workers come back, and ordinary jobs go through.
    wait_for(
        "ordinary jobs to succeed again",
        Duration::from_secs(15),
        || {
            let (status, attempts, body) =
                job_attempts(&c, &peers[2].http, "apps/tool", r#"{"ok":1}"#);
            if status == 200 && attempts == 1 {
                Ok(())
            } else {
                Err(format!("{status} {attempts} {body}"))
            }
        },
    );
}

#[test]
fn jobs_fail_over_when_a_worker_peer_is_killed_under_load() {
    let dir = scratch("failover");
    let mut peers = mesh(dir.path(), test_apps(), 2);
    start_app(&peers[0], "apps/tool", &[]);
    wait_running(&peers[2], "apps/tool", &[&peers[0], &peers[1]]);
    let entry = peers[2].http.clone();
    let stop_at = Instant::now() + Duration::from_secs(5);
    let clients: Vec<_> = (0..6)
        .map(|t| {
            let entry = entry.clone();
            std::thread::spawn(move || {
                let c = http_client();
                let mut seen = Vec::new();
                let mut i = 0;
                while Instant::now() < stop_at && i < 2000 {
                    let body = format!(r#"{{"t":{t},"i":{i},"sleep":0.005}}"#);
                    seen.push(job_attempts(&c, &entry, "apps/tool", &body));
                    i += 1;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    peers[1].sigkill();
    let mut total = 0;
    let mut retried = 0;
    for c in clients {
        for (status, attempts, body) in c.join().expect("client thread") {
            total += 1;
            assert_eq!(status, 200, "a job was lost when a peer died: {body}");
            if attempts > 1 {
                retried += 1;
            }
        }
    }
    eprintln!("{total} jobs, all 200; {retried} needed a second attempt");
    assert!(total > 100, "only {total} jobs ran");
}

#[test]
fn a_saturated_peer_answers_503_with_retry_after_and_keeps_serving() {
    let dir = scratch("overload");
    let peers = mesh(dir.path(), test_apps(), 1);
    start_app(&peers[0], "apps/tool", &["--workers", "1"]);
    wait_for(
        "the entry peer to route to the worker",
        Duration::from_secs(10),
        || {
            let (s, _, b) = peers[2].job("apps/tool", "1");
            if s == 200 {
                Ok(())
            } else {
                Err(format!("{s} {b}"))
            }
        },
    );
    // 512 clients at once against one peer; the only worker process takes
    // 10 ms a job, so most of them must be turned away.
    let stop_at = Instant::now() + Duration::from_secs(3);
    let entry = peers[2].http.clone();
    // One client (one I/O thread, a pool of up to 512 connections) shared by
    // the 512 threads: a client each meant ~1,000 test threads fighting the
    // peer for the 2 cores, and /healthz then measured the harness.
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(20))
        .pool_max_idle_per_host(512)
        .build()
        .unwrap();
    let clients: Vec<_> = (0..512)
        .map(|i| {
            let entry = entry.clone();
            let c = client.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                while Instant::now() < stop_at {
                    let resp = c
                        .post(format!("http://{entry}/apps/tool"))
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"i":{i},"sleep":0.01}}"#))
                        .send();
                    match resp {
                        Ok(r) => {
                            let retry = r.headers().get("retry-after").is_some();
                            seen.push((r.status().as_u16(), retry, String::new()));
                        }
                        Err(e) => seen.push((0, false, e.to_string())),
                    }
                }
                seen
            })
        })
        .collect();
    // Meanwhile the peer answers its health check promptly.
    let health = http_client();
    let mut health_checks = 0;
    let mut slowest_health = Duration::ZERO;
    while Instant::now() < stop_at {
        let t = Instant::now();
        let r = health
            .get(format!("http://{entry}/healthz"))
            .timeout(Duration::from_secs(2))
            .send()
            .unwrap_or_else(|e| {
                panic!(
                    "/healthz not answered within 2 s under load (check {}, the slowest before took {slowest_health:?}): {e}",
                    health_checks + 1
                )
            });
        assert_eq!(r.status(), 200);
        slowest_health = slowest_health.max(t.elapsed());
        assert!(t.elapsed() < Duration::from_secs(2));
        health_checks += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut ok, mut busy) = (0, 0);
    for c in clients {
        for (status, retry_after, err) in c.join().expect("client thread") {
            match status {
                200 => ok += 1,
                503 => {
                    assert!(retry_after, "503 without Retry-After");
                    busy += 1
                }
                other => panic!("unexpected answer {other} under overload: {err}"),
            }
        }
    }
    eprintln!(
        "overload: {ok} x 200, {busy} x 503, {health_checks} health checks (slowest {slowest_health:?})"
    );
    assert!(ok > 50 && busy > 0, "{ok} ok, {busy} busy");
}

#[test]
fn slow_and_idle_clients_cannot_exhaust_the_http_endpoint() {
    use std::io::{Read, Write};
    let dir = scratch("slowloris");
    let p = solo(
        dir.path(),
        &[
            "--http-header-timeout",
            "1s",
            "--http-body-timeout",
            "1s",
            "--http-max-connections",
            "64",
        ],
    );
    start_app(&p, "apps/tool", &["--workers", "1"]);
    // 100 clients that start a request and never finish its headers.
    let mut slow: Vec<std::net::TcpStream> = (0..100)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(&p.http).expect("connect");
            let _ = s.write_all(b"POST /apps/tool HTTP/1.1\r\nHost: 127.0.0.1\r\n");
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        })
        .collect();
    // Every one of them is closed by the peer: the ones over the connection
    // limit at once, the others when the header deadline passes.
    let t = Instant::now();
    for s in &mut slow {
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            Ok(_) => {} // closed (0) or an error answer followed by close
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a slow client was kept open: {e}"),
        }
    }
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "closing slow clients took {:?}",
        t.elapsed()
    );
    // The endpoint serves again.
    assert_eq!(p.get("/healthz").status(), 200);
    let (status, _, body) = p.job("apps/tool", "[1]");
    assert_eq!(status, 200, "{body}");
    // A body that never completes: 400 after the body deadline.
    let mut s = std::net::TcpStream::connect(&p.http).unwrap();
    s.write_all(b"POST /apps/tool HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n[1,").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive within"), "{answer}");
}

/// Runs `n` jobs from `threads` clients through `http` with `?dispatch=`
/// and returns (latencies, peer that ran each).
fn load_with_policy(
    http: &str,
    policy: &str,
    threads: usize,
    n: usize,
) -> (Vec<Duration>, Vec<String>) {
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let url = format!("http://{http}/apps/work?dispatch={policy}");
            std::thread::spawn(move || {
                let c = http_client();
                let mut out = Vec::new();
                for i in 0..n {
                    let t0 = Instant::now();
                    let r = c
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(format!(r#"{{"t":{t},"i":{i}}}"#))
                        .send()
                        .unwrap();
                    assert_eq!(r.status(), 200);
                    let peer = r.headers()["x-disruptor-peer"]
                        .to_str()
                        .unwrap()
                        .to_string();
                    out.push((t0.elapsed(), peer));
                }
                out
            })
        })
        .collect();
    let mut lat = Vec::new();
    let mut peers = Vec::new();
    for h in handles {
        for (l, p) in h.join().unwrap() {
            lat.push(l);
            peers.push(p);
        }
    }
    lat.sort();
    (lat, peers)
}

#[test]
fn least_loaded_dispatch_avoids_a_slow_peer() {
    let dir = scratch("policy");
    // The same app on two peers; one answers 40 ms slower.
    let mk = |name: &str, delay: &str| {
        let apps = dir.path().join(name);
        std::fs::create_dir_all(&apps).unwrap();
        std::fs::copy(test_apps().join("tool.py"), apps.join("tool.py")).unwrap();
        std::fs::write(
            apps.join("work.toml"),
            format!("command = \"python3\"\nargs = [\"-u\", \"tool.py\"]\nworkers = 1\npipeline = 4\n[env]\nTOOL_DELAY = \"{delay}\"\n"),
        )
        .unwrap();
        apps
    };
    let slow_apps = mk("slow-apps", "0.04");
    let fast_apps = mk("fast-apps", "0");
    // The entry peer has no apps: it only dispatches.
    let apps = [Some(slow_apps), Some(fast_apps), None];
    let peers = Mesh::named(dir.path(), &["slow", "fast", "entry"])
        .star()
        .each(|i, opts| opts.apps = apps[i].clone())
        .within(Duration::from_secs(10))
        .start();
    let (slow, fast, entry) = (&peers[0], &peers[1], &peers[2]);
    start_app(entry, "apps/work", &[]);
    wait_running(entry, "apps/work", &[slow, fast]);
    let (r_lat, r_peers) = load_with_policy(&entry.http, "random", 6, 25);
    let (l_lat, l_peers) = load_with_policy(&entry.http, "least-loaded", 6, 25);
    let share = |peers: &[String]| {
        peers.iter().filter(|p| **p == slow.id).count() as f64 / peers.len() as f64
    };
    let p99 = |l: &[Duration]| l[(l.len() * 99 / 100).min(l.len() - 1)];
    let p90 = |l: &[Duration]| l[l.len() * 90 / 100];
    eprintln!(
        "random: slow peer got {:.0}%, p90 {:?}, p99 {:?}; least-loaded: slow peer got {:.0}%, p90 {:?}, p99 {:?}",
        share(&r_peers) * 100.0,
        p90(&r_lat),
        p99(&r_lat),
        share(&l_peers) * 100.0,
        p90(&l_lat),
        p99(&l_lat)
    );
    assert!(
        share(&l_peers) < share(&r_peers),
        "least-loaded should send less to the slow peer"
    );
    assert!(
        p90(&l_lat) < p90(&r_lat),
        "least-loaded should cut the tail"
    );
    // The p99 of 150 jobs is their second-slowest: printed above, not
    // compared (on a shared machine it is noise). The in-process test
    // `least_loaded_sends_little_to_a_slow_peer` compares the policies in
    // virtual time, where latencies are exact.
    // A bad policy name is a clear 400.
    let r = http_client()
        .post(format!("http://{}/apps/work?dispatch=fastest", entry.http))
        .header("content-type", "application/json")
        .body("1")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("random or least-loaded"));
}
