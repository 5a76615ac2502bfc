//! Test harness: real `disruptor` processes on 127.0.0.1 with ephemeral
//! ports, talked to over HTTP as a user would. Every process started here is
//! stopped by PID when its handle drops.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

mod mesh;
// Not every test file builds a mesh.
#[allow(unused_imports)]
pub use mesh::{Mesh, MeshBuilder};

pub const BIN: &str = env!("CARGO_BIN_EXE_disruptor");

/// Held by the tests that load the whole machine on their own (busy loops
/// on every core; fifty peers on two cores), so that no two of them run
/// at once: each measures the mesh under its own load, not under both.
pub fn whole_machine() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that panicked while holding it leaves nothing to repair.
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs the CLI to completion (deadline 30 s) and returns its output.
pub fn cli(args: &[&str]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Proc::spawn(&format!("disruptor {args:?}"), &mut cmd).output(Duration::from_secs(30))
}

/// A process a test started that is not a peer (the CLI, the rogue, a
/// browser driver, a busy loop): stopped by PID (SIGKILL) and reaped when
/// dropped, so a failing test leaves nothing running.
pub struct Proc {
    child: Option<Child>,
    what: String,
}

impl Proc {
    /// Spawns `cmd`; `what` names it in failures.
    pub fn spawn(what: &str, cmd: &mut Command) -> Proc {
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        Proc {
            child: Some(child),
            what: what.to_string(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// The child itself, to take its piped stdin, stdout or stderr.
    pub fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("running")
    }

    /// Waits until it exits, or kills it and panics after `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> ExitStatus {
        match self.wait_until(deadline) {
            Some(status) => status,
            None => panic!("{} did not exit within {deadline:?}", self.what),
        }
    }

    /// Collects its piped stdout and stderr (the parts not taken) until
    /// it exits; kills it and panics with what it wrote after `deadline`.
    pub fn output(mut self, deadline: Duration) -> Output {
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut buf);
                }
                buf
            })
        };
        let child = self.child();
        let stdout = read(child.stdout.take().map(|p| Box::new(p) as _));
        let stderr = read(child.stderr.take().map(|p| Box::new(p) as _));
        let status = self.wait_until(deadline);
        // Killed or exited: the pipes are closed, the readers end.
        let stdout = stdout.join().expect("stdout reader");
        let stderr = stderr.join().expect("stderr reader");
        match status {
            Some(status) => Output {
                status,
                stdout,
                stderr,
            },
            None => panic!(
                "{} did not exit within {deadline:?}; stdout: {}; stderr: {}",
                self.what,
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            ),
        }
    }

    /// Sends SIGTERM (for a process that reports when asked to stop).
    pub fn sigterm(&self) {
        kill(Pid::from_raw(self.pid()), Signal::SIGTERM).expect("SIGTERM");
    }

    /// The exit status, or `None` after killing it at `deadline`.
    fn wait_until(&mut self, deadline: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + deadline;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > until {
                self.stop();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL by PID, then reap.
    fn stop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            if child.try_wait().ok().flatten().is_none() {
                let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A scratch directory for one test (identity files, keys, logs).
///
/// With `DISRUPTOR_KEEP_SCRATCH=1` in the environment the directory (and the
/// peers' logs in it) stays behind for a post-mortem.
pub fn scratch(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("disruptor-test-{name}-"))
        .disable_cleanup(std::env::var_os("DISRUPTOR_KEEP_SCRATCH").is_some_and(|v| v == "1"))
        .tempdir()
        .expect("temp dir")
}

#[derive(Clone, Debug, Default)]
pub struct PeerOpts {
    pub bootstrap: Vec<String>,
    pub identity: Option<PathBuf>,
    pub psk: Option<PathBuf>,
    /// 0 picks a free port.
    pub listen_port: u16,
    pub http_port: u16,
    /// `--apps`; without it the peer gets a directory that does not exist.
    pub apps: Option<PathBuf>,
    pub extra: Vec<String>,
    /// Start it as the original README did: `peer LISTEN [BOOTSTRAP]...`
    /// instead of `--listen` and `--bootstrap`.
    pub positional: bool,
}

/// The repository's own `apps/` (echo, wordcount).
pub fn repo_apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// `tests/apps/` (tool.py and friends).
pub fn test_apps() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("apps")
}

pub struct Peer {
    child: Option<Child>,
    pub name: String,
    pub id: String,
    /// `127.0.0.1:<port>` of the libp2p listener.
    pub listen: String,
    /// `127.0.0.1:<port>` of the HTTP endpoint.
    pub http: String,
    pub log: PathBuf,
    pub opts: PeerOpts,
}

impl Peer {
    /// Starts a peer and waits until it printed its id, listen address and
    /// HTTP URL (deadline 15 s).
    pub fn start(dir: &Path, name: &str, opts: PeerOpts) -> Peer {
        Peer::start_with(dir, name, opts, |_| {})
    }

    /// [`Peer::start`], with `customize` applied to the command last (an
    /// environment variable, a descriptor to inherit, ...). A restart does
    /// not apply it again.
    pub fn start_with(
        dir: &Path,
        name: &str,
        opts: PeerOpts,
        customize: impl FnOnce(&mut Command),
    ) -> Peer {
        let log = dir.join(format!("{name}.log"));
        let log_file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.arg("peer");
        if opts.positional {
            cmd.arg(format!("127.0.0.1:{}", opts.listen_port));
            cmd.args(&opts.bootstrap);
        } else {
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{}", opts.listen_port));
        }
        // `extra` may bind the HTTP endpoint elsewhere (with a token).
        if !opts.extra.iter().any(|a| a == "--http") {
            cmd.arg("--http")
                .arg(format!("127.0.0.1:{}", opts.http_port));
        }
        for b in opts.bootstrap.iter().filter(|_| !opts.positional) {
            cmd.arg("--bootstrap").arg(b);
        }
        if let Some(id) = &opts.identity {
            cmd.arg("--identity").arg(id);
        }
        if let Some(psk) = &opts.psk {
            cmd.arg("--psk-file").arg(psk);
        }
        match &opts.apps {
            Some(a) => cmd.arg("--apps").arg(a),
            None => cmd.arg("--apps").arg(dir.join("no-apps-here")),
        };
        if !opts.extra.iter().any(|a| a == "--data-dir") {
            cmd.arg("--data-dir").arg(dir.join(format!("{name}.data")));
        }
        cmd.args(&opts.extra)
            .env("RUST_LOG", "info,disruptor=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file));
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("spawn disruptor peer");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut peer = Peer {
            child: Some(child),
            name: name.to_string(),
            id: String::new(),
            listen: String::new(),
            http: String::new(),
            log,
            opts,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut seen = Vec::new();
        while peer.http.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(id) = line.strip_prefix("disruptor peer ") {
                        peer.id = id.trim().to_string();
                    } else if let Some(addr) = line.strip_prefix("listen: ") {
                        if peer.listen.is_empty() {
                            peer.listen = host_port_of_multiaddr(addr.trim());
                        }
                    } else if let Some(url) = line.strip_prefix("http: ") {
                        // A peer bound to 0.0.0.0 is reached on loopback.
                        peer.http = url
                            .trim()
                            .trim_start_matches("http://")
                            .trim_end_matches('/')
                            .replace("0.0.0.0:", "127.0.0.1:");
                    }
                    seen.push(line);
                }
                Err(_) => panic!(
                    "peer {name} did not print its addresses within 15 s; stdout: {seen:?}; log:\n{}",
                    peer.log_text()
                ),
            }
        }
        assert!(
            !peer.id.is_empty() && !peer.listen.is_empty(),
            "stdout: {seen:?}"
        );
        // Remember the ports for a restart at the same address.
        peer.opts.listen_port = port_of(&peer.listen);
        peer.opts.http_port = port_of(&peer.http);
        peer
    }

    /// Starts the same peer again (same identity, same ports).
    pub fn restart(&mut self, dir: &Path) {
        assert!(self.child.is_none(), "restart of a running peer");
        let again = Peer::start(dir, &self.name, self.opts.clone());
        *self = again;
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn sigkill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits (up to 10 s) for the exit status.
    pub fn sigterm(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("peer {} did not exit within 10 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> reqwest::blocking::Response {
        http_client()
            .get(format!("http://{}{path}", self.http))
            .send()
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name))
    }

    /// A counter from `/metrics` (0 when it has no sample yet), e.g.
    /// `disruptor_peer_downs_total{reason="silent"}`.
    pub fn counter(&self, series: &str) -> f64 {
        let text = self.get("/metrics").text().expect("metrics text");
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.trim().parse().expect("a number"))
    }

    /// No live peer was ever marked down here for silence or by the
    /// failure detector (a false down: lost gossip or probes, or a peer too
    /// busy to answer).
    pub fn assert_no_false_downs(&self) {
        self.assert_failure_downs_at_most(0);
    }

    /// At most `n` downs here for silence or by the failure detector (`n`
    /// peers were in fact killed: each may be found `dead` rather than
    /// `unreachable`, when the news of its death comes first).
    pub fn assert_failure_downs_at_most(&self, n: u32) {
        let silent = self.counter(r#"disruptor_peer_downs_total{reason="silent"}"#);
        let dead = self.counter(r#"disruptor_peer_downs_total{reason="dead"}"#);
        let skipped = self.counter("disruptor_announcements_skipped_total");
        assert!(
            silent == 0.0 && dead <= f64::from(n),
            "{}: {silent} silent downs, {dead} dead ({skipped} announcements skipped)\n{}",
            self.name,
            self.log_text()
        );
    }

    /// `/api/peers` as JSON.
    pub fn peers(&self) -> Value {
        let resp = self.get("/api/peers");
        assert_eq!(resp.status(), 200);
        resp.json().expect("JSON from /api/peers")
    }

    /// Map of peer id -> state ("up"/"down") as this peer sees it.
    pub fn states(&self) -> Vec<(String, String)> {
        self.peers()["peers"]
            .as_array()
            .expect("peers array")
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["state"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    pub fn state_of(&self, id: &str) -> Option<Value> {
        self.peers()["peers"]
            .as_array()
            .expect("peers array")
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
    }

    /// POSTs a job; returns (status, X-Disruptor-Peer, body).
    pub fn job(&self, app: &str, body: &str) -> (u16, Option<String>, String) {
        self.job_with(app, body, "application/json", None)
    }

    pub fn job_with(
        &self,
        app: &str,
        body: &str,
        content_type: &str,
        timeout_ms: Option<&str>,
    ) -> (u16, Option<String>, String) {
        let mut req = http_client()
            .post(format!("http://{}/{app}", self.http))
            .header("content-type", content_type)
            .body(body.to_string());
        if let Some(t) = timeout_ms {
            req = req.header("x-disruptor-timeout-ms", t);
        }
        let resp = req
            .send()
            .unwrap_or_else(|e| panic!("POST {app} on {}: {e}", self.name));
        let status = resp.status().as_u16();
        let peer = resp
            .headers()
            .get("x-disruptor-peer")
            .map(|v| v.to_str().unwrap().to_string());
        (status, peer, resp.text().unwrap())
    }

    /// `/api/apps` as JSON.
    pub fn apps(&self) -> Value {
        let resp = self.get("/api/apps");
        assert_eq!(resp.status(), 200);
        resp.json().expect("JSON from /api/apps")
    }

    /// This peer's worker processes of `app`, from `/api/apps`.
    pub fn processes(&self, app: &str) -> Vec<Value> {
        self.apps()["local"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["app"] == app)
            .flat_map(|a| a["processes"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Jobs this peer's current worker processes of `app` have answered.
    pub fn jobs_done(&self, app: &str) -> u64 {
        self.processes(app)
            .iter()
            .filter_map(|p| p["jobs_done"].as_u64())
            .sum()
    }

    /// PIDs of this peer's worker processes of `app`.
    pub fn worker_pids(&self, app: &str) -> Vec<i32> {
        self.processes(app)
            .iter()
            .filter_map(|p| p["pid"].as_i64().map(|p| p as i32))
            .collect()
    }

    /// Sends a raw HTTP request line and headers (no client-side path
    /// normalisation) and returns the status code and body.
    pub fn raw(&self, request_head: &str, body: &str) -> (u16, String) {
        let head = format!(
            "{request_head}\r\nHost: {}\r\nContent-Type: application/json",
            self.http
        );
        let (status, answer) = raw_http(&self.http, &head, body);
        let body = answer
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// Its libp2p listener as a multiaddr without the peer id,
    /// `/ip4/127.0.0.1/tcp/<port>`.
    pub fn tcp_multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", port_of(&self.listen))
    }

    /// Ids this peer lists as up.
    pub fn up_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .states()
            .into_iter()
            .filter(|(_, s)| s == "up")
            .map(|(id, _)| id)
            .collect();
        v.sort();
        v
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Sends exactly `head` (request line and headers, without the blank
/// line) and `body` to `http`, closing the connection after; returns the
/// status and the whole answer, headers included.
pub fn raw_http(http: &str, head: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let msg = format!(
        "{head}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {out:?}"));
    (status, out)
}

pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

fn port_of(host_port: &str) -> u16 {
    host_port
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {host_port}"))
}

/// `/ip4/127.0.0.1/tcp/4001/p2p/...` -> `127.0.0.1:4001`.
pub fn host_port_of_multiaddr(addr: &str) -> String {
    let parts: Vec<&str> = addr.split('/').collect();
    assert!(
        parts.len() >= 5 && parts[1] == "ip4" && parts[3] == "tcp",
        "{addr}"
    );
    format!("{}:{}", parts[2], parts[4])
}

/// Polls `check` every 50 ms until it returns `Ok`, or panics after
/// `deadline` with the last thing it saw.
pub fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Result<T, String>,
) -> T {
    let start = Instant::now();
    let mut last = String::from("(never checked)");
    while start.elapsed() < deadline {
        match check() {
            Ok(v) => return v,
            Err(seen) => last = seen,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {deadline:?} waiting for {what}; last seen: {last}");
}

/// Waits until every one of `peers` lists every other as up; returns how
/// long that took. On timeout it says what each peer saw.
pub fn wait_converged(peers: &[&Peer], deadline: Duration) -> Duration {
    let start = Instant::now();
    let name_of = |id: &str| {
        peers
            .iter()
            .find(|p| p.id == id)
            .map_or_else(|| format!("{id} (not of this mesh)"), |p| p.name.clone())
    };
    wait_for(
        &format!("{} peers to list each other as up", peers.len()),
        deadline,
        || {
            let mut views = Vec::new();
            let mut whole = true;
            for p in peers {
                let states = p.states();
                let missing: Vec<&str> = peers
                    .iter()
                    .filter(|q| q.id != p.id)
                    .filter(|q| !states.iter().any(|(id, s)| *id == q.id && s == "up"))
                    .map(|q| q.name.as_str())
                    .collect();
                whole &= missing.is_empty();
                let seen: Vec<String> = states
                    .iter()
                    .map(|(id, s)| format!("{} {s}", name_of(id)))
                    .collect();
                views.push(format!(
                    "{} lists [{}], lacks up [{}]",
                    p.name,
                    seen.join(", "),
                    missing.join(", ")
                ));
            }
            if whole { Ok(()) } else { Err(views.join("; ")) }
        },
    );
    start.elapsed()
}

/// The rogue peer (`examples/rogue.rs`), its output piped, ready for
/// arguments and [`Proc::spawn`].
pub fn rogue_cmd() -> Command {
    let rogue = Path::new(BIN)
        .parent()
        .unwrap()
        .join("examples")
        .join("rogue");
    assert!(
        rogue.exists(),
        "{} is missing: build it with `cargo build --example rogue` (scripts/test does)",
        rogue.display()
    );
    let mut cmd = Command::new(rogue);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Resident memory of a process, in KiB (0 if it is gone).
pub fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Whether a process with this PID exists (and is not a zombie).
pub fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Runs `disruptor start` and asserts it succeeded; returns its output.
pub fn start_app(peer: &Peer, app: &str, extra: &[&str]) -> String {
    let mut args = vec!["start", peer.http.as_str(), app];
    args.extend_from_slice(extra);
    let out = cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "disruptor start {app} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits until none of `pids` is alive.
pub fn wait_gone(what: &str, pids: &[i32], deadline: Duration) {
    wait_for(what, deadline, || {
        let alive: Vec<_> = pids.iter().filter(|p| pid_alive(**p)).collect();
        if alive.is_empty() {
            Ok(())
        } else {
            Err(format!("still alive: {alive:?}"))
        }
    });
}

/// Waits until `observer` sees `app` running on every one of `on`.
pub fn wait_running(observer: &Peer, app: &str, on: &[&Peer]) {
    let names: Vec<&str> = on.iter().map(|p| p.name.as_str()).collect();
    wait_for(
        &format!("{} to see {app} running on {names:?}", observer.name),
        Duration::from_secs(10),
        || {
            let m = &observer.apps()["mesh"][app];
            if on.iter().all(|p| m[&p.id]["state"] == "running") {
                Ok(())
            } else {
                Err(format!("{m}"))
            }
        },
    );
}

/// POSTs a job; returns (status, X-Disruptor-Attempts or 0, body).
pub fn job_attempts(
    client: &reqwest::blocking::Client,
    http: &str,
    app: &str,
    body: &str,
) -> (u16, u32, String) {
    let resp = client
        .post(format!("http://{http}/{app}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap_or_else(|e| panic!("POST {app}: {e}"));
    let status = resp.status().as_u16();
    let attempts = resp
        .headers()
        .get("x-disruptor-attempts")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (status, attempts, resp.text().unwrap())
}

/// An admin key made by `disruptor keygen --admin`: its file and the
/// public key it printed.
pub struct AdminKey {
    pub file: PathBuf,
    pub public: String,
}

impl AdminKey {
    pub fn new(dir: &Path, name: &str) -> AdminKey {
        let file = dir.join(format!("{name}.admin.key"));
        let out = cli(&["keygen", "--admin", "--out", &file.display().to_string()]);
        assert!(
            out.status.success(),
            "keygen --admin: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let public = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(public.starts_with("ed25519:"), "{public}");
        AdminKey { file, public }
    }

    /// `--admin PUBKEY`, for `PeerOpts::extra`.
    pub fn trust(&self) -> Vec<String> {
        vec!["--admin".into(), self.public.clone()]
    }

    /// `--key FILE`, for a CLI command.
    pub fn sign(&self) -> Vec<String> {
        vec!["--key".into(), self.file.display().to_string()]
    }

    /// The key itself, to sign decisions in a test.
    pub fn secret(&self) -> disruptor::mesh::trust::AdminSecret {
        disruptor::mesh::trust::AdminSecret::load(&self.file).expect("admin key")
    }
}
