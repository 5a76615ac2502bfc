//! disruptor-bench: how fast is a JSON job on a remote worker process?
//!
//! One invocation starts everything it needs on 127.0.0.1, runs each
//! scenario for a bounded time at 1 and 64 concurrent clients, stops
//! everything by PID, and prints a table. Rows:
//!
//! - ceiling: `POST /api/echo` of a peer (same body handling, no dispatch);
//! - local: a job to the peer that runs the echo worker;
//! - remote: a job to a peer without the app, so it crosses the mesh;
//! - NATS echo: nats-server with queue-group responders answering in-process;
//! - NATS + worker: the same, each responder passing the job through its own
//!   `cat` child over a pipe, one at a time (the shape of a worker process).
//!
//! The same small JSON job everywhere. CPU is that of the system under test
//! (peers and their workers; nats-server and the responders), not of the
//! load generator, which runs in this process for every row.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const JOB: &str = r#"{"id":12345,"text":"the quick brown fox jumped over the lazy dog"}"#;

#[derive(Parser)]
#[command(about = "Benchmark disruptor's job path against its HTTP ceiling and NATS")]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// (internal) NATS queue-group responders for the NATS rows.
    NatsResponder {
        #[arg(long)]
        url: String,
        /// echo: answer in-process; pipe: through a `cat` child per responder.
        #[arg(long)]
        mode: String,
        #[arg(long, default_value_t = 2)]
        count: usize,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Measured seconds per row (after a short warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Concurrent clients, comma-separated.
    #[arg(long, default_value = "1,64")]
    conns: String,
    /// The disruptor binary (default: next to this one).
    #[arg(long)]
    disruptor: Option<PathBuf>,
    /// Skip the NATS rows.
    #[arg(long)]
    no_nats: bool,
    /// Worker processes (disruptor) and responders (NATS).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Only these disruptor rows, comma-separated (ceiling, local,
    /// remote); all by default. With `perf stat` around two runs of
    /// different lengths, gives instructions per job of one row.
    #[arg(long, value_delimiter = ',')]
    rows: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.cmd {
        Some(Cmd::NatsResponder { url, mode, count }) => {
            rt.block_on(nats_responder(&url, &mode, count))
        }
        None => rt.block_on(run(cli.run)),
    }
}

/// A child process stopped by PID when dropped.
struct Proc {
    child: Child,
    name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so peers stop their workers, then make sure.
        let pid = self.child.id() as i32;
        unsafe_kill(pid, 15);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

struct Peer {
    proc: Proc,
    http: SocketAddr,
    listen: String,
}

fn start_peer(
    bin: &Path,
    name: &str,
    apps: &Path,
    bootstrap: Option<&str>,
    workers: usize,
    dir: &Path,
) -> anyhow::Result<Peer> {
    let mut cmd = Command::new(bin);
    cmd.args([
        "peer",
        "--listen",
        "127.0.0.1:0",
        "--http",
        "127.0.0.1:0",
        "--workers",
        &workers.to_string(),
    ])
    .arg("--apps")
    .arg(apps);
    if let Some(b) = bootstrap {
        cmd.args(["--bootstrap", b]);
    }
    let log = std::fs::File::create(dir.join(format!("{name}.log")))?;
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let out = child.stdout.take().expect("piped");
    let proc = Proc {
        child,
        name: name.into(),
    };
    let (mut http, mut listen) = (None, None);
    for line in BufReader::new(out).lines() {
        let line = line?;
        if let Some(a) = line.strip_prefix("listen: ") {
            let parts: Vec<&str> = a.split('/').collect();
            listen.get_or_insert(format!("{}:{}", parts[2], parts[4]));
        }
        if let Some(u) = line.strip_prefix("http: ") {
            http = Some(
                u.trim_start_matches("http://")
                    .trim_end_matches('/')
                    .parse()?,
            );
            break;
        }
    }
    Ok(Peer {
        proc,
        http: http.context("the peer printed no HTTP address")?,
        listen: listen.context("the peer printed no listen address")?,
    })
}

/// CPU seconds (user + system) of the given processes and all their descendants.
fn cpu_seconds(roots: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    let mut stats: HashMap<u32, (u32, u64)> = HashMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rsplit(')').next() else {
                continue;
            };
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f.len() < 13 {
                continue;
            }
            let ppid = f[1].parse().unwrap_or(0);
            let t = f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
            stats.insert(pid, (ppid, t));
        }
    }
    let mut total = 0u64;
    let mut frontier: Vec<u32> = roots.to_vec();
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = frontier.pop() {
        if !seen.insert(p) {
            continue;
        }
        if let Some((_, t)) = stats.get(&p) {
            total += t;
        }
        frontier.extend(
            stats
                .iter()
                .filter(|(_, (pp, _))| *pp == p)
                .map(|(c, _)| *c),
        );
    }
    total as f64 / tick
}

struct Row {
    name: String,
    conns: usize,
    jobs: u64,
    errors: u64,
    secs: f64,
    hist: Histogram<u64>,
    cpu: f64,
}

impl Row {
    fn rate(&self) -> f64 {
        self.jobs as f64 / self.secs
    }
}

async fn http_worker(
    addr: SocketAddr,
    path: String,
    until: Instant,
    warm_until: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut hist = new_hist()?;
    let (mut ok, mut bad) = (0u64, 0u64);
    let body = Bytes::from_static(JOB.as_bytes());
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let req = Request::post(&path)
            .header("host", addr.to_string())
            .header("content-type", "application/json")
            .body(Full::new(body.clone()))?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let _ = resp.into_body().collect().await?;
        if now >= warm_until {
            let us = now.elapsed().as_micros() as u64;
            hist.record(us.max(1))?;
            if status.is_success() {
                ok += 1
            } else {
                bad += 1
            }
        }
    }
    Ok((hist, ok, bad))
}

async fn measure<F, Fut>(
    name: &str,
    conns: usize,
    secs: f64,
    cpu_roots: &[u32],
    worker: F,
) -> anyhow::Result<Row>
where
    F: Fn(Instant, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Histogram<u64>, u64, u64)>> + Send + 'static,
{
    let warm = Duration::from_millis(700);
    let start = Instant::now();
    let warm_until = start + warm;
    let until = warm_until + Duration::from_secs_f64(secs);
    let tasks: Vec<_> = (0..conns)
        .map(|_| tokio::spawn(worker(until, warm_until)))
        .collect();
    tokio::time::sleep_until(warm_until.into()).await;
    let cpu0 = cpu_seconds(cpu_roots);
    let t0 = Instant::now();
    let mut hist = new_hist()?;
    let (mut jobs, mut errors) = (0, 0);
    for t in tasks {
        let (h, ok, bad) = t.await??;
        hist.add(h)?;
        jobs += ok;
        errors += bad;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(cpu_roots) - cpu0;
    Ok(Row {
        name: name.into(),
        conns,
        jobs,
        errors,
        secs: elapsed,
        hist,
        cpu,
    })
}

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
fn new_hist() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let conns: Vec<usize> = args
        .conns
        .split(',')
        .map(|c| c.trim().parse().context("--conns takes numbers like 1,64"))
        .collect::<Result<_, _>>()?;
    if let Some(bad) = args
        .rows
        .iter()
        .find(|r| !["ceiling", "local", "remote"].contains(&r.as_str()))
    {
        bail!("unknown row {bad:?}: --rows takes ceiling, local, remote");
    }
    let bin = match args.disruptor {
        Some(b) => b,
        None => std::env::current_exe()?.with_file_name("disruptor"),
    };
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release` (or pass --disruptor)",
            bin.display()
        );
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf();
    let apps = root.join("apps");
    let dir = std::env::temp_dir().join(format!("disruptor-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let no_apps = dir.join("no-apps");

    println!(
        "disruptor-bench: {} s per row after 0.7 s warm-up; job {} bytes; {} echo workers / responders",
        args.seconds,
        JOB.len(),
        args.workers
    );
    let worker_peer = start_peer(&bin, "worker", &apps, None, args.workers, &dir)?;
    let front = start_peer(
        &bin,
        "front",
        &no_apps,
        Some(&worker_peer.listen),
        args.workers,
        &dir,
    )?;
    let status = Command::new(&bin)
        .args([
            "start",
            &worker_peer.http.to_string(),
            "apps/echo/echo",
            "--wait",
            "15s",
        ])
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("could not start apps/echo/echo");
    }
    // Wait until the front peer routes jobs to the worker peer.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = http_worker(
            front.http,
            "/apps/echo/echo".into(),
            Instant::now() + Duration::from_millis(50),
            Instant::now(),
        )
        .await;
        if matches!(r, Ok((_, ok, 0)) if ok > 0) {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the front peer does not route jobs to the worker peer: {:?}",
                r.map(|(_, ok, bad)| (ok, bad))
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let peers = [worker_peer.proc.child.id(), front.proc.child.id()];

    let mut rows = Vec::new();
    for &c in &conns {
        for (name, addr, path) in [
            ("ceiling: POST /api/echo", worker_peer.http, "/api/echo"),
            (
                "local: job to the worker's peer",
                worker_peer.http,
                "/apps/echo/echo",
            ),
            ("remote: job across the mesh", front.http, "/apps/echo/echo"),
        ] {
            let short = name.split(':').next().unwrap_or(name);
            if !args.rows.is_empty() && !args.rows.iter().any(|r| r == short) {
                continue;
            }
            let path = path.to_string();
            let row = measure(name, c, args.seconds, &peers, move |until, warm| {
                http_worker(addr, path.clone(), until, warm)
            })
            .await?;
            print_row(&row, None);
            rows.push(row);
        }
    }
    drop(front);
    drop(worker_peer);

    if args.no_nats {
        println!("NATS rows skipped (--no-nats)");
    } else {
        match which("nats-server") {
            None => println!(
                "NATS rows skipped: nats-server is not installed (Debian package nats-server)"
            ),
            Some(server) => {
                for (mode, name) in [
                    ("echo", "NATS: responders echo in-process"),
                    ("pipe", "NATS: responders pipe to a cat worker"),
                ] {
                    let port = free_port()?;
                    let srv = Proc {
                        child: Command::new(&server)
                            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                            .stdout(Stdio::null())
                            .stderr(Stdio::from(std::fs::File::create(dir.join("nats.log"))?))
                            .spawn()?,
                        name: "nats-server".into(),
                    };
                    let url = format!("nats://127.0.0.1:{port}");
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while tokio::net::TcpStream::connect(("127.0.0.1", port))
                        .await
                        .is_err()
                    {
                        if Instant::now() > deadline {
                            bail!("nats-server did not start");
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let mut resp_child = Command::new(std::env::current_exe()?)
                        .args([
                            "nats-responder",
                            "--url",
                            &url,
                            "--mode",
                            mode,
                            "--count",
                            &args.workers.to_string(),
                        ])
                        .stdout(Stdio::piped())
                        .spawn()?;
                    let out = resp_child.stdout.take().expect("piped");
                    let responder = Proc {
                        child: resp_child,
                        name: "responder".into(),
                    };
                    let mut line = String::new();
                    BufReader::new(out).read_line(&mut line)?;
                    if line.trim() != "ready" {
                        bail!("the NATS responder did not start: {line:?}");
                    }
                    let client = async_nats::connect(&url).await?;
                    let roots = [srv.child.id(), responder.child.id()];
                    for &c in &conns {
                        let client = client.clone();
                        let row = measure(name, c, args.seconds, &roots, move |until, warm| {
                            nats_worker(client.clone(), until, warm)
                        })
                        .await?;
                        print_row(&row, None);
                        rows.push(row);
                    }
                    drop(responder);
                    drop(srv);
                }
            }
        }
    }

    println!();
    println!(
        "{:<40} {:>5} {:>10} {:>9} {:>9} {:>12} {:>8} {:>7}",
        "scenario", "conns", "jobs/s", "p50", "p99", "cpu s/1k", "ceiling", "errors"
    );
    for r in &rows {
        let ceiling = rows
            .iter()
            .find(|x| x.conns == r.conns && x.name.starts_with("ceiling"))
            .map(|x| x.rate());
        print_row(r, ceiling);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn fmt_us(us: u64) -> String {
    if us >= 1000 {
        format!("{:.2}ms", us as f64 / 1000.0)
    } else {
        format!("{us}us")
    }
}

fn print_row(r: &Row, ceiling: Option<f64>) {
    let cpu_per_k = if r.jobs > 0 {
        r.cpu / r.jobs as f64 * 1000.0
    } else {
        f64::NAN
    };
    let ratio = ceiling
        .map(|c| format!("{:.0}%", r.rate() / c * 100.0))
        .unwrap_or_else(|| "-".into());
    println!(
        "{:<40} {:>5} {:>10.0} {:>9} {:>9} {:>12.3} {:>8} {:>7}",
        r.name,
        r.conns,
        r.rate(),
        fmt_us(r.hist.value_at_quantile(0.5)),
        fmt_us(r.hist.value_at_quantile(0.99)),
        cpu_per_k,
        ratio,
        r.errors
    );
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

async fn nats_worker(
    client: async_nats::Client,
    until: Instant,
    warm_until: Instant,
) -> anyhow::Result<(Histogram<u64>, u64, u64)> {
    let mut hist = new_hist()?;
    let (mut ok, mut bad) = (0u64, 0u64);
    let body = Bytes::from_static(JOB.as_bytes());
    loop {
        let now = Instant::now();
        if now >= until {
            break;
        }
        let r = client.request("jobs", body.clone()).await;
        if now >= warm_until {
            hist.record((now.elapsed().as_micros() as u64).max(1))?;
            match r {
                Ok(m) if m.payload.as_ref() == JOB.as_bytes() => ok += 1,
                _ => bad += 1,
            }
        }
    }
    Ok((hist, ok, bad))
}

/// Queue-group responders on subject `jobs`: each answers with the request
/// itself, in-process (`echo`) or through its own `cat` child (`pipe`).
async fn nats_responder(url: &str, mode: &str, count: usize) -> anyhow::Result<()> {
    let client = async_nats::connect(url).await?;
    let mut tasks = Vec::new();
    for _ in 0..count {
        let mut sub = client.queue_subscribe("jobs", "workers".into()).await?;
        let client = client.clone();
        let pipe = mode == "pipe";
        tasks.push(tokio::spawn(async move {
            let mut cat = if pipe {
                let mut c = tokio::process::Command::new("cat")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()?;
                let stdin = c.stdin.take().expect("piped");
                let stdout = tokio::io::BufReader::new(c.stdout.take().expect("piped"));
                Some((c, stdin, stdout))
            } else {
                None
            };
            while let Some(msg) = sub.next().await {
                let Some(reply) = msg.reply else { continue };
                let answer = match &mut cat {
                    None => msg.payload,
                    Some((_, stdin, stdout)) => {
                        let mut line = Vec::with_capacity(msg.payload.len() + 1);
                        line.extend_from_slice(&msg.payload);
                        line.push(b'\n');
                        stdin.write_all(&line).await?;
                        let mut out = String::new();
                        stdout.read_line(&mut out).await?;
                        Bytes::from(out.trim_end().to_string())
                    }
                };
                client.publish(reply, answer).await?;
            }
            anyhow::Ok(())
        }));
    }
    client.flush().await?;
    println!("ready");
    for t in tasks {
        t.await??;
    }
    Ok(())
}
