//! Client-side subcommands: `peers`, `start`, `stop`, `send` and `keygen`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::api::{AppsView, DecisionsView, ErrorBody, MeshView};
use crate::apps::AppName;
use crate::apps::AppState;
use crate::cli::{
    Access, DeployArgs, KeygenArgs, PeersArgs, SendArgs, Signing, StartArgs, StatusArgs, StopArgs,
    StreamArgs,
};
use crate::clock::unix_ms;
use crate::config::{self, ConfigError};
use crate::mesh::desired::{Change, DesiredApp, next_decision};
use crate::mesh::trust::AdminSecret;
use crate::text::{ago, head, printable, short_id};

/// A user error in a client command's arguments (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Turns `HOST:PORT` or `http://HOST:PORT[/]` into a base URL.
pub fn base_url(addr: &str) -> Result<String, UsageError> {
    let trimmed = addr.trim().trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if trimmed.starts_with("https://") {
        return Err(UsageError(format!(
            "{addr:?}: peers serve plain HTTP (http://HOST:PORT)"
        )));
    }
    config::parse_socket_addr("HTTP_ADDR", rest)
        .map_err(|e: ConfigError| UsageError(e.to_string()))?;
    Ok(format!("http://{rest}"))
}

/// An HTTP client for the peer's API: timeouts, and the bearer token when
/// one is given (`--token-file`, `DISRUPTOR_TOKEN_FILE`).
fn client(access: &Access, timeout: Option<Duration>) -> anyhow::Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(path) = &access.token_file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UsageError(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })?;
        let token = text.lines().next().unwrap_or("").trim();
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| {
                UsageError(format!(
                    "{}: the token is not valid header text",
                    path.display()
                ))
            })?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    let mut builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .default_headers(headers);
    if let Some(t) = timeout {
        builder = builder.timeout(t);
    }
    Ok(builder.build()?)
}

/// The client for short API calls.
fn api_client(access: &Access) -> anyhow::Result<reqwest::Client> {
    client(access, Some(Duration::from_secs(30)))
}

/// GETs `path` from the peer at `base` and decodes JSON, turning an error
/// answer into its message.
async fn get_json<T: serde::de::DeserializeOwned>(
    client: &reqwest::Client,
    base: &str,
    path: &str,
) -> anyhow::Result<T> {
    let url = format!("{base}{path}");
    let resp = client.get(&url).send().await.with_context(|| {
        format!("cannot reach the peer at {base} (is `disruptor peer` running there?)")
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {}", error_text(&body));
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not answer with the expected JSON"))
}

/// Turns an error answer into its message.
async fn error_message(resp: reqwest::Response) -> String {
    let status = resp.status();
    let body = resp.bytes().await.unwrap_or_default();
    format!("{status}: {}", error_text(&body))
}

/// The message of an error answer (`{"error": ...}`, or the body as
/// text), printable: a peer may answer anything, and main prints it.
fn error_text(body: &[u8]) -> String {
    let msg = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    printable(&msg).into_owned()
}

fn app_arg(app: &str) -> Result<AppName, UsageError> {
    AppName::parse(app).map_err(|e| UsageError(e.to_string()))
}

pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let base = base_url(&args.http_addr)?;
    let app = app_arg(&args.app)?;
    let payload = if args.payload == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .context("reading the job from stdin")?;
        text
    } else {
        args.payload
    };
    // JSON goes as JSON; anything else as a JSON string.
    let body = match serde_json::from_str::<serde_json::Value>(&payload) {
        Ok(_) => payload,
        Err(_) => serde_json::Value::String(payload).to_string(),
    };
    let content_type = "application/json";
    let server_timeout = args.timeout.unwrap_or(crate::http::DEFAULT_JOB_TIMEOUT);
    let client = client(&args.access, Some(server_timeout + Duration::from_secs(5)))?;
    let query = if args.all { "?to=all" } else { "" };
    let mut req = client
        .post(format!("{base}/{app}{query}"))
        .header("content-type", content_type)
        .body(body);
    if let Some(t) = args.timeout {
        req = req.header(crate::http::TIMEOUT_HEADER, t.as_millis().to_string());
    }
    let resp = req.send().await.with_context(|| {
        format!("cannot reach the peer at {base} (is `disruptor peer` running there?)")
    })?;
    if !resp.status().is_success() {
        anyhow::bail!("{app}: {}", error_message(resp).await);
    }
    let text = resp.text().await.context("reading the result")?;
    if !args.all {
        println!("{text}");
        return Ok(());
    }
    // One entry per peer: its result, or {"error": ...}.
    let all: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&text).context("the fan-out answer is not a JSON object")?;
    println!("{}", serde_json::to_string_pretty(&all)?);
    let failed: Vec<&String> = all
        .iter()
        .filter(|(_, v)| {
            v.as_object()
                .is_some_and(|o| o.len() == 1 && o.contains_key("error"))
        })
        .map(|(id, _)| id)
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} peers answered an error: {}",
            failed.len(),
            all.len(),
            printable(
                &failed
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        );
    }
    Ok(())
}

/// `disruptor stream`: sends the input as one NDJSON request, chunked as
/// it is read, and prints the result lines as they arrive.
pub async fn stream(args: StreamArgs) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let base = base_url(&args.http_addr)?;
    let app = app_arg(&args.app)?;
    let input: Box<dyn BufRead + Send> = if args.input == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let f = std::fs::File::open(&args.input)
            .map_err(|e| UsageError(format!("cannot read {}: {e}", args.input)))?;
        Box::new(std::io::BufReader::with_capacity(256 * 1024, f))
    };
    // The total, for the progress bar's ETA: only for a file, only when
    // someone watches.
    let show_progress = std::io::stderr().is_terminal();
    let total = if show_progress && args.input != "-" {
        count_lines(&args.input).ok()
    } else {
        None
    };

    // A thread reads the input (blocking I/O) and hands the body ~64 KiB
    // chunks; the channel's few places are the backpressure from the peer.
    let sent = Arc::new(AtomicU64::new(0));
    let (chunks_tx, mut chunks_rx) = tokio::sync::mpsc::channel::<std::io::Result<Vec<u8>>>(4);
    let reader = {
        let sent = sent.clone();
        let as_text = args.lines;
        std::thread::spawn(move || {
            let mut input = input;
            let mut chunk = Vec::with_capacity(64 * 1024);
            let mut line = String::new();
            loop {
                line.clear();
                match input.read_line(&mut line) {
                    Ok(0) => break,
                    Ok(_) => {
                        let text = line.strip_suffix('\n').unwrap_or(&line);
                        let text = text.strip_suffix('\r').unwrap_or(text);
                        if as_text {
                            chunk.extend_from_slice(
                                serde_json::Value::String(text.to_string())
                                    .to_string()
                                    .as_bytes(),
                            );
                        } else {
                            chunk.extend_from_slice(text.as_bytes());
                        }
                        chunk.push(b'\n');
                        sent.fetch_add(1, Ordering::Relaxed);
                        if chunk.len() >= 64 * 1024
                            && chunks_tx
                                .blocking_send(Ok(std::mem::take(&mut chunk)))
                                .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = chunks_tx.blocking_send(Err(e));
                        return;
                    }
                }
            }
            if !chunk.is_empty() {
                let _ = chunks_tx.blocking_send(Ok(chunk));
            }
        })
    };
    let body =
        reqwest::Body::wrap_stream(futures::stream::poll_fn(move |cx| chunks_rx.poll_recv(cx)));
    let mut url = format!("{base}/{app}?window={}", args.window);
    if args.unordered {
        url.push_str("&ordered=false");
    }
    let client = client(&args.access, None)?;
    let mut req = client
        .post(&url)
        .header("content-type", crate::http::stream::NDJSON)
        .body(body);
    if let Some(t) = args.timeout {
        req = req.header(crate::http::TIMEOUT_HEADER, t.as_millis().to_string());
    }
    let started = std::time::Instant::now();
    let mut resp = req.send().await.with_context(|| {
        format!("cannot reach the peer at {base} (is `disruptor peer` running there?)")
    })?;
    if !resp.status().is_success() {
        anyhow::bail!("{app}: {}", error_message(resp).await);
    }

    let progress = if show_progress {
        let pb = match total {
            Some(n) => indicatif::ProgressBar::new(n),
            None => indicatif::ProgressBar::new_spinner(),
        };
        let template = if total.is_some() {
            "{bar:30} {pos}/{len} jobs, {per_sec}, ETA {eta}"
        } else {
            "{spinner} {pos} jobs, {per_sec}"
        };
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            pb.set_style(style);
        }
        Some(pb)
    } else {
        None
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut tally = Tally::default();
    let mut partial: Vec<u8> = Vec::new();
    let mut broken = None;
    loop {
        let chunk = match resp.chunk().await {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                broken = Some(format!("the answer stream broke off: {e}"));
                break;
            }
        };
        partial.extend_from_slice(&chunk);
        let Some(last_nl) = partial.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let rest = partial.split_off(last_nl + 1);
        for line in partial.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(why) = tally.add(line, !args.unordered) {
                broken = Some(why);
                continue;
            }
            out.write_all(line)?;
            out.write_all(b"\n")?;
        }
        partial = rest;
        out.flush()?;
        if let Some(pb) = &progress {
            pb.set_position(tally.results);
        }
    }
    out.flush()?;
    drop(out);
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let _ = reader.join();
    let lines = sent.load(Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "stream: {} jobs, {} errors, {:.0} jobs/s ({secs:.1} s)",
        tally.results,
        tally.errors,
        tally.results as f64 / secs.max(1e-9)
    );
    if let Some(why) = broken {
        anyhow::bail!("{why}");
    }
    if tally.results != lines {
        anyhow::bail!("{lines} lines were sent but {} answered", tally.results);
    }
    if tally.errors > 0 {
        anyhow::bail!("{} of {lines} jobs failed", tally.errors);
    }
    Ok(())
}

/// Counts a stream's answers and which of them are errors.
#[derive(Default)]
struct Tally {
    results: u64,
    errors: u64,
}

impl Tally {
    /// Takes one answer line; returns the stream's own final error, if the
    /// line is one (`{"error": ...}` with no line number).
    fn add(&mut self, line: &[u8], ordered: bool) -> Option<String> {
        // Errors (and, unordered, every answer) start with {"line":n; the
        // stream's own last word with {"stream_error":.
        if line.starts_with(b"{\"stream_error\":")
            && let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(line)
            && o.len() == 1
        {
            // The peer's words, printed by main: printable.
            return Some(printable(o["stream_error"].as_str().unwrap_or("")).into_owned());
        }
        if line.starts_with(b"{\"line\":")
            && let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(line)
        {
            let n = o.get("line").and_then(|n| n.as_u64());
            // Ordered, a worker's result may look like anything: an error
            // object is the one with exactly our two keys and the expected
            // line number.
            let ours = !ordered || (o.len() == 2 && n == Some(self.results + 1));
            if o.contains_key("error") && ours {
                self.errors += 1;
            }
        }
        self.results += 1;
        None
    }
}

fn count_lines(path: &str) -> std::io::Result<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    let mut last = b'\n';
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|b| **b == b'\n').count() as u64;
        last = buf[k - 1];
    }
    Ok(n + u64::from(last != b'\n'))
}

pub async fn start(args: StartArgs) -> anyhow::Result<()> {
    if args.workers == Some(0) {
        return Err(UsageError("--workers must be at least 1".into()).into());
    }
    let change = Change::Start {
        workers: args.workers,
    };
    let target = Target::new(&args.http_addr, &args.access)?;
    start_stop(&target, &args.app, change, &args.signing, args.wait).await
}

pub async fn stop(args: StopArgs) -> anyhow::Result<()> {
    let target = Target::new(&args.http_addr, &args.access)?;
    start_stop(&target, &args.app, Change::Stop, &args.signing, args.wait).await
}

/// A peer's API: its base URL and a client that carries the token.
struct Target {
    base: String,
    api: reqwest::Client,
}

impl Target {
    fn new(addr: &str, access: &Access) -> anyhow::Result<Target> {
        Ok(Target {
            base: base_url(addr)?,
            api: api_client(access)?,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        get_json(&self.api, &self.base, path).await
    }

    /// POSTs JSON; the answer decoded, or its error message.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Result<T, (reqwest::StatusCode, String)>> {
        let resp = self
            .api
            .post(format!("{}{path}", self.base))
            .json(body)
            .send()
            .await
            .with_context(|| {
                format!(
                    "cannot reach the peer at {} (is `disruptor peer` running there?)",
                    self.base
                )
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Ok(Err((status, error_message(resp).await)));
        }
        Ok(Ok(resp.json().await.context("reading the answer")?))
    }
}

/// Loads the admin key of `--key` / `DISRUPTOR_KEY`, if one is given.
fn signing_key(signing: &Signing) -> anyhow::Result<Option<AdminSecret>> {
    signing
        .key
        .as_deref()
        .map(|p| AdminSecret::load(p).map_err(|e| UsageError(e).into()))
        .transpose()
}

/// Makes a decision signed by `key` and hands it to the peer: reads the
/// peer's decisions and clock, stamps the change above them, signs it, and
/// sends it; if another decision got in between (409), does it again.
async fn signed_decision(
    target: &Target,
    app: &AppName,
    change: Change,
    key: &AdminSecret,
    deliver: impl AsyncFn(
        &DesiredApp,
    ) -> anyhow::Result<Result<DesiredApp, (reqwest::StatusCode, String)>>,
) -> anyhow::Result<DesiredApp> {
    for _ in 0..5 {
        let held: DecisionsView = target.get("/api/decisions").await?;
        let mut d = next_decision(&held.decisions, held.clock, app, change.clone(), unix_ms());
        key.sign(&mut d);
        match deliver(&d).await? {
            Ok(taken) => return Ok(taken),
            Err((reqwest::StatusCode::CONFLICT, msg)) if msg.contains("newer decision") => continue,
            Err((status, msg)) => anyhow::bail!("{app}: {status}: {msg}"),
        }
    }
    anyhow::bail!("{app}: other decisions kept getting in first; try again")
}

async fn start_stop(
    target: &Target,
    app: &str,
    change: Change,
    signing: &Signing,
    wait: Duration,
) -> anyhow::Result<()> {
    let app = app_arg(app)?;
    let run = !matches!(change, Change::Stop);
    let verb = if run { "start" } else { "stop" };
    let decision: DesiredApp = match signing_key(signing)? {
        Some(key) => {
            signed_decision(target, &app, change, &key, async |d: &DesiredApp| {
                target.post("/api/decisions", d).await
            })
            .await?
        }
        None => {
            let mut body = serde_json::json!({ "app": app });
            if let Change::Start { workers: Some(w) } = change {
                body["workers"] = w.into();
            }
            target
                .post(&format!("/api/apps/{verb}"), &body)
                .await?
                .map_err(|(_, msg)| anyhow::anyhow!("{verb} {app}: {msg}"))?
        }
    };
    let base = &target.base;
    let api = &target.api;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let view: MeshView = get_json(api, base, "/api/peers").await?;
        let apps: AppsView = get_json(api, base, "/api/apps").await?;
        let (settled, report) = settle_report(&view, &apps, &decision);
        if settled {
            print!("{report}");
            let running = apps
                .mesh
                .get(app.as_str())
                .map(|m| m.values().filter(|s| s.state == AppState::Running).count())
                .unwrap_or(0);
            if run && running == 0 {
                anyhow::bail!("{app} runs on no peer of the mesh");
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            print!("{report}");
            let state = if run { "started" } else { "stopped" };
            anyhow::bail!("the mesh did not report {app} as {state} everywhere within {wait:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether every peer that is up reports a state for `decision` (or a
/// later one), and a report of what each says.
fn settle_report(view: &MeshView, apps: &AppsView, decision: &DesiredApp) -> (bool, String) {
    let mut ids: Vec<&str> = vec![view.local.id.as_str()];
    ids.extend(
        view.peers
            .iter()
            .filter(|p| p.is_up())
            .map(|p| p.id.as_str()),
    );
    let per_peer = apps.mesh.get(decision.app.as_str());
    let mut settled = true;
    let mut lines = Vec::new();
    let mut running = 0;
    for id in &ids {
        let st = per_peer
            .and_then(|m| m.get(*id))
            .filter(|s| s.clock >= decision.clock);
        let line = match st {
            None => {
                settled = false;
                "waiting".to_string()
            }
            Some(s) => {
                let done = if decision.run {
                    matches!(
                        s.state,
                        AppState::Running | AppState::Missing | AppState::Failing
                    )
                } else {
                    s.state == AppState::Stopped
                };
                settled &= done;
                if s.state == AppState::Running {
                    running += 1;
                }
                let mut l = s.state.to_string();
                if s.state == AppState::Running || s.state == AppState::Starting {
                    l.push_str(&format!(", {} workers", s.workers));
                }
                if let Some(e) = &s.error {
                    l.push_str(&format!(" ({})", printable(e)));
                }
                l
            }
        };
        let me = if *id == view.local.id {
            " (this peer)"
        } else {
            ""
        };
        lines.push(format!("  {id}{me}  {line}\n"));
    }
    let head = if decision.run {
        format!(
            "{} is running on {running} of {} peers:\n",
            decision.app,
            ids.len()
        )
    } else {
        format!("{} is stopped ({} peers):\n", decision.app, ids.len())
    };
    (settled, head + &lines.concat())
}

pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let base = base_url(&args.http_addr)?;
    let api = api_client(&args.access)?;
    if args.json {
        let v: serde_json::Value = get_json(&api, &base, "/api/peers").await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let view: MeshView = get_json(&api, &base, "/api/peers").await?;
    print!("{}", render_peers_table(&view, unix_ms()));
    Ok(())
}

pub fn render_peers_table(view: &MeshView, now: u64) -> String {
    let mut rows = vec![[
        "PEER".to_string(),
        "STATE".into(),
        "SINCE".into(),
        "RTT".into(),
        "HTTP".into(),
        "ADDRESS".into(),
    ]];
    rows.push([
        format!("{} (this peer)", view.local.id),
        "self".into(),
        ago(now, view.local.started_ms),
        "-".into(),
        view.local.http.clone(),
        view.local.listen.first().cloned().unwrap_or_default(),
    ]);
    for p in &view.peers {
        let state = match &p.reason {
            Some(r) => format!("{} ({r})", p.state),
            None => p.state.to_string(),
        };
        rows.push([
            p.id.clone(),
            state,
            ago(now, p.since_ms),
            p.rtt_ms
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            p.http.clone().unwrap_or_else(|| "-".into()),
            p.addrs.first().cloned().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = table(&rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), "");
    let up = view.peers.iter().filter(|p| p.is_up()).count();
    out.push_str(&format!(
        "{} peers known besides this one: {up} up, {} down\n",
        view.peers.len(),
        view.peers.len() - up
    ));
    out
}

/// `disruptor deploy`: checks, packs, uploads, and waits for the mesh.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let target = Target::new(&args.http_addr, &args.access)?;
    let base = target.base.clone();
    let api = target.api.clone();
    let app = app_arg(&args.name)?;
    let Some(key) = signing_key(&args.signing)? else {
        return Err(UsageError(
            "a deployment runs new code on every peer, so it must be signed by an admin key: \
             --key FILE (or DISRUPTOR_KEY); make one with `disruptor keygen --admin --out FILE` \
             and start the peers with --admin PUBKEY"
                .into(),
        )
        .into());
    };
    if !args.dir.is_dir() {
        return Err(UsageError(format!("{} is not a directory", args.dir.display())).into());
    }
    // It must run here before it runs anywhere.
    let spec = crate::deploy::resolve_in(&args.dir, &app)
        .map_err(|e| UsageError(format!("{}: {e}", args.dir.display())))?;
    let dir = args.dir.clone();
    let archive = tokio::task::spawn_blocking(move || crate::deploy::pack(&dir))
        .await?
        .with_context(|| format!("packing {}", args.dir.display()))?;
    let hash = crate::deploy::sha256_hex(&archive);
    eprintln!(
        "deploy: {} packed ({} bytes, tar + zstd), sha256 {}; entry {}",
        args.dir.display(),
        archive.len(),
        &hash[..16],
        spec.source.display()
    );
    // The upload, in chunks, with a progress bar for a person watching.
    let total = archive.len() as u64;
    let progress = (std::io::stderr().is_terminal() && total > 1024 * 1024).then(|| {
        let pb = indicatif::ProgressBar::new(total);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    });
    let upload = client(&args.access, Some(Duration::from_secs(600)))?;
    let bundle = crate::deploy::BundleRef {
        hash: hash.clone(),
        size: total,
    };
    let change = Change::Deploy {
        bundle,
        start: args.start,
    };
    let decision = signed_decision(&target, &app, change, &key, async |d: &DesiredApp| {
        let pb = progress.clone();
        let chunks: Vec<bytes::Bytes> = archive
            .chunks(256 * 1024)
            .map(bytes::Bytes::copy_from_slice)
            .collect();
        let body =
            reqwest::Body::wrap_stream(futures::stream::iter(chunks.into_iter().map(move |c| {
                if let Some(pb) = &pb {
                    pb.inc(c.len() as u64);
                }
                Ok::<_, std::io::Error>(c)
            })));
        let resp = upload
            .post(format!("{base}/api/deploy?name={app}"))
            .header("content-type", "application/zstd")
            .header(crate::http::BUNDLE_HASH_HEADER, &hash)
            .header(crate::http::DECISION_HEADER, serde_json::to_string(d)?)
            .header("content-length", total)
            .body(body)
            .send()
            .await
            .with_context(|| {
                format!("cannot reach the peer at {base} (is `disruptor peer` running there?)")
            })?;
        if !resp.status().is_success() {
            let status = resp.status();
            return Ok(Err((status, error_message(resp).await)));
        }
        Ok(Ok(resp.json().await.context("reading the answer")?))
    })
    .await;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    let decision = decision.map_err(|e| anyhow::anyhow!("deploy {e:#}"))?;
    // Wait until every peer that is up (and takes deployments) reports the
    // new version (running, if the app runs).
    let deadline = tokio::time::Instant::now() + args.wait;
    loop {
        let view: MeshView = get_json(&api, &base, "/api/peers").await?;
        let apps: AppsView = get_json(&api, &base, "/api/apps").await?;
        let per_peer = apps.mesh.get(app.as_str());
        let mut ids: Vec<&str> = vec![view.local.id.as_str()];
        let mut lines = Vec::new();
        for p in view.peers.iter().filter(|p| p.is_up()) {
            if p.remote_deploy {
                ids.push(p.id.as_str());
            } else {
                lines.push(format!(
                    "  {}  takes no deployments (it trusts no admin key, or runs with --no-remote-deploy)\n",
                    p.id
                ));
            }
        }
        let mut done = 0;
        for id in &ids {
            let st = per_peer.and_then(|m| m.get(*id));
            let on_version = st.is_some_and(|s| s.version.as_deref() == Some(hash.as_str()));
            let ok =
                on_version && (!decision.run || st.is_some_and(|s| s.state == AppState::Running));
            if ok {
                done += 1;
            }
            let what = match st {
                None => "waiting".to_string(),
                Some(s) => format!(
                    "{} {}{}",
                    s.state,
                    s.version
                        .as_deref()
                        .map(|v| format!("version {}", printable(head(v, 12))))
                        .unwrap_or_else(|| "(from its apps directory)".into()),
                    s.error
                        .as_deref()
                        .map(|e| format!(" ({})", printable(e)))
                        .unwrap_or_default()
                ),
            };
            let me = if *id == view.local.id {
                " (this peer)"
            } else {
                ""
            };
            lines.push(format!("  {id}{me}  {what}\n"));
        }
        if done == ids.len() {
            println!(
                "{app} version {} {} on {done} of {} peers:",
                &hash[..12],
                if decision.run { "runs" } else { "is installed" },
                ids.len()
            );
            print!("{}", lines.concat());
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            print!("{}", lines.concat());
            anyhow::bail!(
                "only {done} of {} peers report {app} version {} after {:?}",
                ids.len(),
                &hash[..12],
                args.wait
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows as aligned columns, each line starting with `indent`. Cells are
/// made [`printable`] here, before their widths are measured: tables show
/// what other peers announced (addresses, app names, versions, errors).
fn table(rows: &[Vec<String>], indent: &str) -> String {
    let rows: Vec<Vec<std::borrow::Cow<str>>> = rows
        .iter()
        .map(|r| r.iter().map(|c| printable(c)).collect())
        .collect();
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(indent);
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `disruptor status`: the dashboard's picture as text.
pub async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let base = base_url(&args.http_addr)?;
    let api = api_client(&args.access)?;
    let view: MeshView = get_json(&api, &base, "/api/peers").await?;
    let apps: AppsView = get_json(&api, &base, "/api/apps").await?;
    let stats: crate::obs::stats::StatsView = get_json(&api, &base, "/api/stats").await?;
    print!("{}", render_status(&view, &apps, &stats, unix_ms()));
    Ok(())
}

pub fn render_status(
    view: &MeshView,
    apps: &AppsView,
    stats: &crate::obs::stats::StatsView,
    now: u64,
) -> String {
    let short = |id: &str| short_id(id, 10);
    let up = view.peers.iter().filter(|p| p.is_up()).count();
    let mut out = format!(
        "disruptor peer {} · HTTP {} · up {} · {}{}\n\nPEERS: {} up (this one included), {} down\n",
        printable(&view.local.id),
        printable(&view.local.http),
        ago(now, view.local.started_ms),
        if view.local.private {
            "private mesh"
        } else {
            "open mesh"
        },
        if apps.remote_deploy {
            ""
        } else {
            " · remote deploy off"
        },
        up + 1,
        view.peers.len() - up
    );
    let apps_of = |id: &str| -> String {
        let list: Vec<String> = apps
            .mesh
            .iter()
            .filter_map(|(app, m)| m.get(id).map(|st| (app, st)))
            .map(|(app, st)| {
                format!(
                    "{app} {} ({}w, {} in flight{})",
                    st.state,
                    st.workers,
                    st.in_flight,
                    st.version
                        .as_deref()
                        .map(|v| format!(", v:{}", head(v, 8)))
                        .unwrap_or_default()
                )
            })
            .collect();
        if list.is_empty() {
            "-".into()
        } else {
            list.join(", ")
        }
    };
    let mut rows = vec![vec![
        "PEER".to_string(),
        "STATE".into(),
        "FOR".into(),
        "PING".into(),
        "APPS".into(),
    ]];
    rows.push(vec![
        format!("{} (this peer)", short(&view.local.id)),
        "self".into(),
        ago(now, view.local.started_ms),
        "-".into(),
        apps_of(&view.local.id),
    ]);
    let mut peers: Vec<_> = view.peers.iter().collect();
    peers.sort_by_key(|p| (!p.is_up(), p.id.clone()));
    for p in peers {
        let is_up = p.is_up();
        rows.push(vec![
            short(&p.id),
            match &p.reason {
                Some(r) => format!("down ({r})"),
                None => p.state.to_string(),
            },
            if is_up {
                p.started_ms
                    .map(|t| ago(now, t))
                    .unwrap_or_else(|| "?".into())
            } else {
                format!("seen {} ago", ago(now, p.last_seen_ms))
            },
            p.rtt_ms
                .filter(|_| is_up)
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            if is_up { apps_of(&p.id) } else { "-".into() },
        ]);
    }
    out.push_str(&table(&rows, "  "));
    out.push_str("\nAPPS (jobs entering at this peer; rate over the last minute, p99 of the last complete 5 s)\n");
    let names: std::collections::BTreeSet<&String> =
        apps.mesh.keys().chain(stats.apps.keys()).collect();
    if names.is_empty() {
        out.push_str("  none started\n");
    } else {
        let mut rows = vec![vec![
            "APP".to_string(),
            "RUNNING ON".into(),
            "WORKERS".into(),
            "JOBS/S".into(),
            "P99".into(),
            "JOBS (5 MIN)".into(),
            "FAILED".into(),
        ]];
        for app in names {
            let m = apps.mesh.get(app);
            let running = m
                .map(|m| m.values().filter(|s| s.state == AppState::Running).count())
                .unwrap_or(0);
            let workers: u32 = m.map(|m| m.values().map(|s| s.workers).sum()).unwrap_or(0);
            let pts = stats.apps.get(app).map(Vec::as_slice).unwrap_or(&[]);
            let done = &pts[..pts.len().saturating_sub(1)];
            let minute = &done[done.len().saturating_sub(12)..];
            let rate = minute.iter().map(|p| p.jobs).sum::<u64>() as f64
                / (minute.len().max(1) as u64 * stats.bucket_secs) as f64;
            let p99 = done
                .last()
                .and_then(|p| p.p99_ms)
                .map(|v| format!("{v:.1}ms"))
                .unwrap_or_else(|| "-".into());
            rows.push(vec![
                app.clone(),
                format!("{running} peers"),
                workers.to_string(),
                format!("{rate:.1}"),
                p99,
                done.iter().map(|p| p.jobs).sum::<u64>().to_string(),
                done.iter().map(|p| p.failed).sum::<u64>().to_string(),
            ]);
        }
        out.push_str(&table(&rows, "  "));
    }
    out.push_str("\nLATEST ERRORS\n");
    if stats.errors.is_empty() {
        out.push_str("  none\n");
    }
    for e in stats.errors.iter().take(10) {
        out.push_str(&format!(
            "  {} ago  {}  {}  {}  {}\n",
            ago(now, e.at_ms),
            if e.kind == "worker" {
                "worker exited"
            } else {
                "job failed"
            },
            printable(&e.app),
            printable(&short(e.peer.as_deref().unwrap_or(&view.local.id))),
            printable(&e.message)
        ));
    }
    out
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    if args.admin {
        return keygen_admin(&args);
    }
    let key = config::generate_psk();
    let text = key.to_string();
    match args.out {
        Some(path) => {
            config::write_private_file(&path, text.as_bytes(), args.force)?;
            eprintln!(
                "wrote pre-shared key {} (fingerprint {}); give it to every peer with --psk-file",
                path.display(),
                key.fingerprint()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

/// `keygen --admin --out FILE`: the private key to FILE (0600), the public
/// key, one line, to stdout (for `peer --admin`).
fn keygen_admin(args: &KeygenArgs) -> anyhow::Result<()> {
    let Some(path) = &args.out else {
        return Err(UsageError(
            "an admin key is a secret: name its file with --out FILE (the public key is printed)"
                .into(),
        )
        .into());
    };
    let key = AdminSecret::generate();
    config::write_private_file(path, key.to_file_text().as_bytes(), args.force)?;
    let public = key.public();
    eprintln!(
        "wrote admin key {} (keep it private); start peers with --admin {public}, and sign with --key {}",
        path.display(),
        path.display()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{public}")?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PeerView, SelfView};
    use crate::apps::AppStatus;
    use crate::obs::stats::{ErrorEvent, StatsView};

    /// A mesh of this peer and one other, which announced `http` as its
    /// address and runs `apps/x` at `version` with `error`.
    fn mesh_with(http: &str, version: &str, error: &str) -> (MeshView, AppsView) {
        let other = "12D3KooWother0000";
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself0000".into(),
                listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: false,
            },
            peers: vec![PeerView {
                id: other.into(),
                peer: None,
                apps: vec![],
                state: crate::mesh::view::PeerState::Up,
                reason: None,
                addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
                http: Some(http.into()),
                first_seen_ms: 1_000,
                last_seen_ms: 61_000,
                since_ms: 2_000,
                started_ms: Some(1_000),
                rtt_ms: Some(0.42),
                connected: true,
                links: vec![],
                bundles: vec![],
                remote_deploy: true,
            }],
        };
        let mut apps = AppsView::build(&view.local.id, vec![], &view);
        let status = AppStatus {
            app: AppName::parse("apps/x").unwrap(),
            state: AppState::Running,
            workers: 1,
            in_flight: 0,
            clock: 1,
            error: Some(error.into()),
            version: Some(version.into()),
        };
        apps.mesh
            .entry("apps/x".into())
            .or_default()
            .insert(other.into(), status);
        (view, apps)
    }

    fn stats_with_error(message: &str) -> StatsView {
        StatsView {
            bucket_secs: 5,
            apps: Default::default(),
            errors: vec![ErrorEvent {
                at_ms: 60_000,
                kind: "job".into(),
                app: "apps/x".into(),
                peer: Some("12D3KooWother0000".into()),
                message: message.into(),
            }],
        }
    }

    #[test]
    fn status_shortens_a_multi_byte_version_without_panicking() {
        // Byte 8 falls inside the é: `&v[..8]` panicked `disruptor status`.
        let (view, apps) = mesh_with("127.0.0.1:8002", &"1234567é".repeat(8), "");
        let out = render_status(&view, &apps, &stats_with_error("boom"), 62_000);
        assert!(out.contains("v:1234567é)"), "{out}");
    }

    #[test]
    fn peer_strings_reach_the_terminal_without_control_characters() {
        let evil = "\x1b]0;owned\x07\x1b[2J\x1b[31m";
        let (view, apps) = mesh_with(
            &format!("{evil}10.0.0.1:80"),
            &format!("{evil}abc"),
            &format!("{evil}bad\nnews"),
        );
        let stats = stats_with_error(&format!("{evil}boom\r\u{9b}1Afake line"));
        for out in [
            render_peers_table(&view, 62_000),
            render_status(&view, &apps, &stats, 62_000),
        ] {
            assert!(!out.chars().any(|c| c.is_control() && c != '\n'), "{out:?}");
        }
        let table = render_peers_table(&view, 62_000);
        assert!(table.contains(" 10.0.0.1:80 "), "{table}");
        let status = render_status(&view, &apps, &stats, 62_000);
        assert!(status.contains("boom fake line"), "{status}");
        assert!(!status.contains("owned"), "{status}");
    }

    #[test]
    fn error_answers_are_printable() {
        assert_eq!(error_text(br#"{"error":"no \u001b[31mway\n"}"#), "no way ");
        assert_eq!(error_text(b"plain \x1b[1mtext"), "plain text");
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:8001").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(
            base_url("http://127.0.0.1:8001/").unwrap(),
            "http://127.0.0.1:8001"
        );
        assert!(base_url("nonsense").is_err());
        assert!(base_url("https://127.0.0.1:1").is_err());
    }
}
