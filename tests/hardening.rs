//! Hardening of a single peer against what others send it and what it was
//! started with: made-up app names must not grow `/metrics`, workers see
//! neither the peer's secrets nor its inherited descriptors, and key files
//! that other users may read stop the peer before it starts.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::Value;

const ECHO: &str = "apps/echo/echo";

#[test]
fn made_up_app_names_do_not_grow_metrics() {
    let dir = scratch("labels");
    let p = Peer::start(
        dir.path(),
        "p",
        PeerOpts {
            apps: Some(repo_apps()),
            extra: vec!["--workers".into(), "1".into()],
            ..Default::default()
        },
    );
    start_app(&p, ECHO, &[]);
    wait_running(&p, ECHO, &[&p]);
    assert_eq!(p.job(ECHO, r#"{"a":1}"#).0, 200);
    let before = p.get("/metrics").text().unwrap();

    // Anyone who can reach the HTTP port can choose app names.
    let client = http_client();
    for i in 0..3000 {
        let resp = client
            .post(format!("http://{}/apps/made-up-{i}", p.http))
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .expect("POST to a made-up app");
        assert_eq!(resp.status(), 404, "apps/made-up-{i}");
    }

    let after = p.get("/metrics").text().unwrap();
    assert!(
        !after.contains("apps/made-up-"),
        "a made-up app got its own label set"
    );
    assert!(
        after.contains(r#"disruptor_jobs_total{app="(other)",outcome="not_running"} 3000"#),
        "{after}"
    );
    assert!(after.contains(r#"disruptor_jobs_total{app="apps/echo/echo",outcome="ok"} 1"#));
    // One label set for all of them: a few dozen lines (it was 72,000
    // lines, 15 MB, for 3,000 names).
    let grown = after.lines().count().saturating_sub(before.lines().count());
    assert!(
        grown < 100 && after.len() < before.len() + 8 * 1024,
        "/metrics grew by {grown} lines, from {} to {} bytes",
        before.len(),
        after.len()
    );
    // The dashboard's series: the app the mesh runs, and "(other)".
    let stats: Value = p.get("/api/stats").json().unwrap();
    let apps: BTreeSet<&str> = stats["apps"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(apps, BTreeSet::from([ECHO, "(other)"]));
    // And the peer is fine.
    assert_eq!(p.job(ECHO, r#"{"a":2}"#).0, 200);
}

/// An app that answers every job with its environment and its open
/// descriptors (number -> what it points to), in Python (native protocol)
/// and in Node (IPC channel on fd 3).
fn introspection_apps(dir: &Path) -> std::path::PathBuf {
    let apps = dir.join("apps");
    std::fs::create_dir_all(&apps).unwrap();
    std::fs::write(
        apps.join("envpy.py"),
        r#"import json, os, sys
for line in sys.stdin:
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            pass  # the descriptor listdir itself used, closed since
    print(json.dumps({"env": dict(os.environ), "fds": fds}), flush=True)
"#,
    )
    .unwrap();
    std::fs::write(
        apps.join("envpy.toml"),
        "command = \"python3\"\nargs = [\"-u\", \"envpy.py\"]\nworkers = 1\n[env]\nFROM_MANIFEST = \"yes\"\n",
    )
    .unwrap();
    std::fs::write(
        apps.join("envnode.js"),
        r#"const fs = require('fs');
process.on('message', () => {
  const fds = {};
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { fds[fd] = fs.readlinkSync('/proc/self/fd/' + fd); } catch (e) {}
  }
  process.send({ env: process.env, fds });
});
"#,
    )
    .unwrap();
    apps
}

#[test]
fn workers_get_an_allowlisted_environment_and_no_inherited_descriptors() {
    let dir = scratch("workerenv");
    let marker = dir.path().join("inherited-secret.txt");
    std::fs::write(&marker, "not for workers").unwrap();
    let file = std::fs::File::open(&marker).unwrap();
    let peer = Peer::start_with(
        dir.path(),
        "p",
        PeerOpts {
            apps: Some(introspection_apps(dir.path())),
            ..Default::default()
        },
        |cmd| {
            use std::os::fd::AsRawFd;
            use std::os::unix::process::CommandExt;
            cmd.env("DISRUPTOR_KEY", "admin-key-secret")
                .env("AWS_SECRET_ACCESS_KEY", "cloud-secret")
                .env("TZ", "Europe/Paris")
                .env("LC_TIME", "C");
            // As a careless parent would leave them: descriptors without
            // close-on-exec (dup2 clears it), a low one and a high one.
            let fd = file.as_raw_fd();
            // SAFETY: fcntl, dup2 and close only, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    // From a copy above both targets: when the file itself
                    // was opened as fd 9 (other tests run alongside),
                    // dup2(9, 9) did nothing, fd 9 kept its close-on-exec
                    // and the peer had reused it for a socket (seen once).
                    let src = libc::fcntl(fd, libc::F_DUPFD, 300);
                    if src < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    for target in [9, 200] {
                        if libc::dup2(src, target) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    libc::close(src);
                    Ok(())
                });
            }
        },
    );
    // The peer did inherit them (or this test proves nothing).
    for fd in [9, 200] {
        let link = std::fs::read_link(format!("/proc/{}/fd/{fd}", peer.pid())).unwrap();
        assert_eq!(link, marker, "the peer's fd {fd}");
    }
    for app in ["apps/envpy", "apps/envnode"] {
        start_app(&peer, app, &[]);
    }
    wait_running(&peer, "apps/envpy", &[&peer]);
    wait_running(&peer, "apps/envnode", &[&peer]);
    let report = |app: &str| -> Value {
        let (status, _, body) = peer.job(app, "{}");
        assert_eq!(status, 200, "{app}: {body}");
        serde_json::from_str(&body).unwrap()
    };

    let py = report("apps/envpy");
    let env = py["env"].as_object().unwrap();
    for secret in ["DISRUPTOR_KEY", "AWS_SECRET_ACCESS_KEY", "RUST_LOG"] {
        assert!(
            !env.contains_key(secret),
            "the worker sees {secret}: {env:?}"
        );
    }
    assert!(
        !env.keys().any(|k| k.starts_with("CARGO")),
        "the worker sees the peer's CARGO_* variables: {env:?}"
    );
    assert_eq!(env["TZ"], "Europe/Paris");
    assert_eq!(env["LC_TIME"], "C");
    assert_eq!(env["FROM_MANIFEST"], "yes");
    assert!(
        env.contains_key("PATH") && env.contains_key("HOME"),
        "{env:?}"
    );
    let fds: BTreeSet<&str> = py["fds"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(fds, BTreeSet::from(["0", "1", "2"]), "{}", py["fds"]);

    // Node opens descriptors of its own; it must have its channel on 3 and
    // nothing of the peer's.
    let node = report("apps/envnode");
    let env = node["env"].as_object().unwrap();
    assert!(!env.contains_key("DISRUPTOR_KEY") && !env.contains_key("AWS_SECRET_ACCESS_KEY"));
    // (Node deletes NODE_CHANNEL_FD from its environment once it has the
    // channel; that the answer came back proves the channel works.)
    let fds = node["fds"].as_object().unwrap();
    assert!(fds["3"].as_str().unwrap().starts_with("socket:"), "{fds:?}");
    let marker = marker.to_str().unwrap();
    assert!(
        !fds.values().any(|v| v == marker),
        "the node worker inherited the peer's descriptor: {fds:?}"
    );
}

/// Runs `disruptor peer ARGS`; its exit status and stderr, or a failure
/// if it is still running after 15 s (it started on the key).
fn peer_refusal(args: &[&str]) -> (Option<i32>, String) {
    let dir = scratch("refusal");
    let out = Proc::spawn(
        &format!("disruptor peer {args:?} (it should refuse its key file, not start)"),
        Command::new(BIN)
            .arg("peer")
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    )
    .output(Duration::from_secs(15));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn key_files_other_users_can_read_stop_the_peer_with_exit_2() {
    let dir = scratch("keys");
    // Valid keys, made as a user would: keygen, and a first start.
    let psk = dir.path().join("mesh.psk");
    assert!(
        cli(&["keygen", "--out", psk.to_str().unwrap()])
            .status
            .success()
    );
    let id = dir.path().join("id.key");
    let mut first = Peer::start(
        dir.path(),
        "first",
        PeerOpts {
            identity: Some(id.clone()),
            psk: Some(psk.clone()),
            ..Default::default()
        },
    );
    first.sigterm();

    for (flag, path, mode) in [
        ("--identity", &id, 0o644),
        ("--identity", &id, 0o640),
        ("--psk-file", &psk, 0o604),
        ("--psk-file", &psk, 0o660),
    ] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        let (code, stderr) = peer_refusal(&[flag, path.to_str().unwrap()]);
        assert_eq!(code, Some(2), "{flag} at {mode:o}: {stderr}");
        assert!(
            stderr.contains(&format!("chmod 600 {}", path.display())),
            "{flag} at {mode:o}: {stderr}"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Private again, both are taken.
    let again = Peer::start(
        dir.path(),
        "again",
        PeerOpts {
            identity: Some(id.clone()),
            psk: Some(psk.clone()),
            ..Default::default()
        },
    );
    assert_eq!(again.peers()["self"]["private"], true);
}
