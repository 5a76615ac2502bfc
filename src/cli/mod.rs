//! Command-line types (clap). Parsing only; validation of the values that
//! need the file system or the network lives in [`crate::config`].
//!
//! Careful with comments here: clap turns the `///` comment of an argument
//! field into its `--help` text, and that of a `ValueEnum` variant into the
//! help of that value (listed under "Possible values:" in `--help`, which
//! then uses its long layout). The comments of the `...Args` structs, of
//! flattened and subcommand fields, and of [`Cli`] (which sets `about`
//! itself) do not reach `--help`: a subcommand's text is its [`Command`]
//! variant's comment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

mod file;
pub use file::{FileError, ParseError, parse_from};

/// `--version`: the package version and the git revision it was built
/// from (`unknown` outside a git checkout; see `build.rs`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DISRUPTOR_GIT_REV"),
    ")"
);

/// The command line of `disruptor`: a subcommand, and the log format of
/// all of them.
#[derive(Debug, Parser)]
#[command(
    name = "disruptor",
    version = VERSION,
    about = "A decentralized realtime computation mesh",
    long_about = "A decentralized realtime computation mesh.\n\n\
        Peers find each other over libp2p from the address of any one other peer; \
        there is no master. Run `disruptor peer` on every machine."
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as text for people, or as JSON objects for machines.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "DISRUPTOR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
}

/// `--log-format`: how log lines on stderr look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Plain lines, coloured when stderr is a terminal.
    Text,
    /// One JSON object per line, with the fields of the current span (a job's id).
    Json,
}

/// The subcommands: `peer` runs a peer ([`crate::peer`]); every other one
/// runs in [`crate::client`], as a short-lived client of a running peer's
/// HTTP endpoint (`keygen` needs no peer).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a peer of the mesh until Ctrl-C or SIGTERM.
    Peer(Box<PeerArgs>),
    /// Print the table of peers that a running peer knows.
    Peers(PeersArgs),
    /// Print the mesh as the dashboard shows it: peers, apps, rates, errors.
    Status(StatusArgs),
    /// Start an app's workers on every peer of the mesh that has the app
    /// (or on N of them: --peers; or on labelled ones: --on).
    Start(StartArgs),
    /// Stop an app's workers on every peer of the mesh.
    Stop(StopArgs),
    /// Send one JSON job to an app and print its result.
    Send(SendArgs),
    /// Stream many jobs (one per line) through the mesh; results on stdout.
    Stream(StreamArgs),
    /// Pack an app's directory and deploy it to every peer of the mesh.
    Deploy(DeployArgs),
    /// Write a new pre-shared key for a private mesh, or an admin key.
    Keygen(KeygenArgs),
    /// Print a shell completion script (e.g. `disruptor completions bash
    /// > /etc/bash_completion.d/disruptor`).
    Completions(CompletionsArgs),
    /// Print the manual page (roff; `disruptor man | man -l -`).
    Man,
}

/// `disruptor completions SHELL`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `disruptor peer`'s flags, as typed:
/// [`PeerConfig::from_args`](crate::config::PeerConfig::from_args) checks
/// them and reads the files they name.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Address to listen on, as in `disruptor peer LISTEN [BOOTSTRAP]...`:
    /// the same as --listen (give one or the other).
    #[arg(value_name = "LISTEN")]
    pub listen_at: Option<String>,

    /// Peers already in the mesh, after LISTEN: the same as --bootstrap
    /// (give one or the other).
    #[arg(value_name = "BOOTSTRAP")]
    pub join: Vec<String>,

    /// A TOML file of settings: its keys are this command's long flags
    /// (`listen = ["0.0.0.0:4001"]`, `psk-file = "mesh.key"`). Flags and
    /// DISRUPTOR_* environment variables win over it.
    #[arg(long, value_name = "FILE", env = "DISRUPTOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// A label of this peer, `NAME` or `NAME=VALUE` (e.g. gpu, zone=eu),
    /// for `disruptor start --on`. May repeat (at most 16).
    #[arg(long = "label", value_name = "LABEL", env = "DISRUPTOR_LABEL", value_delimiter = ',',
          value_parser = parse_label)]
    pub labels: Vec<String>,

    /// Address to listen on for other peers: HOST:PORT or a multiaddr
    /// (e.g. /ip4/0.0.0.0/tcp/4001). May repeat. Port 0 picks a free port.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "0.0.0.0:4001",
        env = "DISRUPTOR_LISTEN",
        value_delimiter = ','
    )]
    pub listen: Vec<String>,

    /// Address of any peer already in the mesh: HOST:PORT or a multiaddr
    /// (optionally ending in /p2p/PEER_ID). May repeat. The first peer has none.
    #[arg(
        long,
        value_name = "ADDR",
        env = "DISRUPTOR_BOOTSTRAP",
        value_delimiter = ','
    )]
    pub bootstrap: Vec<String>,

    /// Local HTTP endpoint (status page and API). On loopback by default;
    /// any other address needs `--http-token-file`.
    #[arg(
        long,
        value_name = "HOST:PORT",
        default_value = "127.0.0.1:8080",
        env = "DISRUPTOR_HTTP"
    )]
    pub http: String,

    /// File holding this peer's private key; created if missing, so the peer
    /// keeps its peer id across restarts. Without it the id is new every start.
    #[arg(long, value_name = "FILE", env = "DISRUPTOR_IDENTITY")]
    pub identity: Option<PathBuf>,

    /// Pre-shared key file (see `disruptor keygen`): only peers holding the
    /// same key can connect. Without it the mesh is open to any disruptor peer.
    #[arg(long, value_name = "FILE", env = "DISRUPTOR_PSK_FILE")]
    pub psk_file: Option<PathBuf>,

    /// How often this peer announces itself to the mesh (its addresses,
    /// apps, load; changes go out at once). Answered pings (every 15 s)
    /// also count as hearing from a peer.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, env = "DISRUPTOR_ANNOUNCE_INTERVAL")]
    pub announce_interval: Duration,

    /// A peer not heard from for this long (no announcement and no answered
    /// ping) is marked down (a lost connection that cannot be re-established
    /// marks it down sooner).
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = parse_duration, env = "DISRUPTOR_DOWN_AFTER")]
    pub down_after: Duration,

    /// A peer that has been down for this long is forgotten.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration, env = "DISRUPTOR_FORGET_AFTER")]
    pub forget_after: Duration,

    /// Time allowed to open and secure a connection to another peer. A peer
    /// with a different pre-shared key is only noticed when this runs out.
    #[arg(long, value_name = "DURATION", default_value = "4s", value_parser = parse_duration, env = "DISRUPTOR_CONNECT_TIMEOUT")]
    pub connect_timeout: Duration,

    /// Directory of worker apps: `apps/<path>` names `<DIR>/<path>`.
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./apps",
        env = "DISRUPTOR_APPS"
    )]
    pub apps: PathBuf,

    /// Where deployed app bundles are kept (content-addressed: peers on one
    /// machine may share it).
    #[arg(
        long,
        value_name = "DIR",
        default_value = "./disruptor-data",
        env = "DISRUPTOR_DATA_DIR"
    )]
    pub data_dir: PathBuf,

    /// Never install app bundles deployed by others (`disruptor deploy`),
    /// even when signed by an admin: run only what the `--apps` directory
    /// has. (A peer without `--admin` never installs bundles anyway.)
    #[arg(long, env = "DISRUPTOR_NO_REMOTE_DEPLOY")]
    pub no_remote_deploy: bool,

    /// An admin's public key (`ed25519:...`, as `disruptor keygen --admin`
    /// prints it). May repeat. With admins, this peer takes only start,
    /// stop and deploy decisions signed by one of them (`--key`), and
    /// installs deployed bundles; without, it takes unsigned start/stop of
    /// its own `--apps` and never installs a bundle.
    #[arg(
        long = "admin",
        value_name = "PUBKEY",
        env = "DISRUPTOR_ADMIN",
        value_delimiter = ','
    )]
    pub admins: Vec<String>,

    /// File of admin public keys, one per line (`#` starts a comment).
    #[arg(long = "admins", value_name = "FILE", env = "DISRUPTOR_ADMINS")]
    pub admins_file: Option<PathBuf>,

    /// A host name this peer's HTTP endpoint answers to, besides its bound
    /// address and loopback names (requests naming another `Host` are
    /// refused, which defeats DNS rebinding). May repeat.
    #[arg(
        long,
        value_name = "NAME",
        env = "DISRUPTOR_HTTP_HOST",
        value_delimiter = ','
    )]
    pub http_host: Vec<String>,

    /// File holding a bearer token (one line, at least 16 characters) that
    /// every HTTP request except `GET /healthz` must carry. Required when
    /// `--http` listens on an address other than loopback.
    #[arg(long, value_name = "FILE", env = "DISRUPTOR_HTTP_TOKEN_FILE")]
    pub http_token_file: Option<PathBuf>,

    /// Largest app bundle accepted (compressed), in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = crate::deploy::DEFAULT_MAX_BUNDLE_BYTES, env = "DISRUPTOR_MAX_BUNDLE_BYTES")]
    pub max_bundle_bytes: u64,

    /// Largest job accepted, in bytes (larger ones get 413).
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024, env = "DISRUPTOR_MAX_JOB_BYTES")]
    pub max_job_bytes: usize,

    /// Worker processes per app on this peer when neither `start --workers`
    /// nor the app's manifest says [default: one per core].
    #[arg(long, value_name = "N", env = "DISRUPTOR_WORKERS",
          value_parser = clap::value_parser!(u32).range(1..=crate::apps::MAX_WORKERS_PER_APP as i64))]
    pub workers: Option<u32>,

    /// Threads of the peer's own async runtime [default: half the cores,
    /// at least 1]. The rest is left to the worker processes: on a 2-core
    /// machine one thread moved ~25% more jobs/s than two (BENCHMARKS.md),
    /// because the peer's threads stopped waking each other.
    #[arg(long, value_name = "N", env = "DISRUPTOR_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,

    /// Further attempts for a job whose peer was lost or whose worker died
    /// before answering (at-least-once: such a job may run twice).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10), env = "DISRUPTOR_RETRIES")]
    pub retries: u32,

    /// How a job's worker is chosen: random (each live worker equally
    /// likely) or least-loaded (the less busy of two random candidates).
    /// A request may override it with `?dispatch=`.
    #[arg(long, value_enum, default_value_t = crate::dispatch::Policy::Random, env = "DISRUPTOR_DISPATCH")]
    pub dispatch: crate::dispatch::Policy,

    /// On SIGTERM/SIGINT, how long the peer keeps running the jobs it has
    /// (taking no new ones) before it stops its workers.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "DISRUPTOR_DRAIN_GRACE")]
    pub drain_grace: Duration,

    /// Open HTTP connections at most; more are closed as they arrive.
    #[arg(long, value_name = "N", default_value_t = 4096, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1_000_000), env = "DISRUPTOR_HTTP_MAX_CONNECTIONS")]
    pub http_max_connections: usize,

    /// Time a client has to send a request's headers (and the longest an
    /// idle keep-alive connection is kept).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, env = "DISRUPTOR_HTTP_HEADER_TIMEOUT")]
    pub http_header_timeout: Duration,

    /// Time a client has to send a job's body (for a stream of jobs: the
    /// longest pause between two pieces of it).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration, env = "DISRUPTOR_HTTP_BODY_TIMEOUT")]
    pub http_body_timeout: Duration,

    /// How long a worker gets between SIGTERM and SIGKILL when it is stopped.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, env = "DISRUPTOR_WORKER_GRACE")]
    pub worker_grace: Duration,

    /// Most bytes the installed bundles may take together, archives plus
    /// unpacked files [default: 18 times --max-bundle-bytes: room for two
    /// of the largest bundles].
    #[arg(long, value_name = "BYTES", env = "DISRUPTOR_MAX_STORE_BYTES")]
    pub max_store_bytes: Option<u64>,

    /// The flags the `--config` file set, with the line of each (filled
    /// by [`parse_from`], not by clap).
    #[arg(skip)]
    pub from_file: Vec<(String, usize)>,
}

impl PeerArgs {
    /// Where the flag that `message` names first was set, if the config
    /// file set it: `FILE, line N`. For errors found after parsing (a
    /// relation between two flags, a key file that cannot be read).
    pub fn where_set(&self, message: &str) -> Option<String> {
        let config = self.config.as_ref()?;
        let (_, line) = self
            .from_file
            .iter()
            .filter_map(|(flag, line)| {
                let at = message.find(&format!("--{flag}"))?;
                // Not a prefix of a longer flag (--http of --http-host).
                let next = message[at + 2 + flag.len()..].chars().next();
                (!next.is_some_and(|c| c.is_ascii_alphanumeric() || c == '-')).then_some((at, line))
            })
            .min()?;
        Some(format!("{}, line {line}", config.display()))
    }
}

/// What a client command needs to reach a peer's HTTP endpoint.
#[derive(Debug, Clone, Args)]
pub struct Access {
    /// File holding the peer's HTTP bearer token (`--http-token-file` of the
    /// peer), for a peer that listens on a non-loopback address.
    #[arg(long, value_name = "FILE", env = "DISRUPTOR_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// The admin key a decision is signed with.
#[derive(Debug, Clone, Args)]
pub struct Signing {
    /// Admin key file (`disruptor keygen --admin`): the decision is signed
    /// here, before any peer sees it. Peers started with `--admin` take
    /// only signed decisions.
    #[arg(long, value_name = "FILE", env = "DISRUPTOR_KEY")]
    pub key: Option<PathBuf>,
}

/// `disruptor start HTTP_ADDR APP`.
#[derive(Debug, Args)]
pub struct StartArgs {
    /// HTTP address of any running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// The app, e.g. apps/wordcount/counter.
    pub app: String,
    /// Worker processes per peer (default: the app's manifest, else one per core).
    #[arg(long, value_name = "N")]
    pub workers: Option<u32>,
    /// Run it on this many peers only (of those that have the app and
    /// match --on), not on all; when one of them goes down another takes
    /// its place.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub peers: Option<u32>,
    /// Run it only on peers with this label (`NAME`: any value, or
    /// `NAME=VALUE`; see `peer --label`). May repeat: all must match.
    #[arg(long = "on", value_name = "LABEL", value_parser = parse_label)]
    pub on: Vec<String>,
    /// The admin key to sign the decision with.
    #[command(flatten)]
    pub signing: Signing,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
    /// How long to wait for the mesh to report the new state.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
}

/// `disruptor stop HTTP_ADDR APP`.
#[derive(Debug, Args)]
pub struct StopArgs {
    /// HTTP address of any running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// The app, e.g. apps/wordcount/counter.
    pub app: String,
    /// How long to wait for the mesh to report the new state.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub wait: Duration,
    /// The admin key to sign the decision with.
    #[command(flatten)]
    pub signing: Signing,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
}

/// `disruptor send HTTP_ADDR APP PAYLOAD`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// HTTP address of any running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// The app, e.g. apps/wordcount/counter.
    pub app: String,
    /// The job: JSON, or any other text (sent as a JSON string); `-` reads it from stdin.
    pub payload: String,
    /// Give up after this long (sent as X-Disruptor-Timeout-Ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Run the job on one worker of every peer running the app; print each
    /// peer's result (or error) by peer id.
    #[arg(long, conflicts_with = "then")]
    pub all: bool,
    /// A further stage: the result of the app before is this app's job
    /// (an array passes on each item, null nothing). May repeat, at most 15.
    #[arg(long, value_name = "APP")]
    pub then: Vec<String>,
    /// With --all: give every peer's result to one worker of this app as
    /// {"results": [...]} and print its answer instead.
    #[arg(long, value_name = "APP", requires = "all")]
    pub reduce: Option<String>,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
}

/// `disruptor stream HTTP_ADDR APP [INPUT]`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// HTTP address of any running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// The app, e.g. apps/wordcount/counter.
    pub app: String,
    /// NDJSON input, one job per line; `-` (the default) reads stdin.
    #[arg(default_value = "-")]
    pub input: String,
    /// Each line of text is one job, sent as a JSON string.
    #[arg(long)]
    pub lines: bool,
    /// Print results as they complete, each as {"line": n, "result": ...},
    /// instead of in input order.
    #[arg(long)]
    pub unordered: bool,
    /// A further stage: each line's result from the app before is this
    /// app's job (an array passes on each item, null nothing). May repeat,
    /// at most 15.
    #[arg(long, value_name = "APP")]
    pub then: Vec<String>,
    /// Give every result to this app ({"results": [...], "partial": ...},
    /// in parts of up to 1000) and print its answer instead of the results.
    #[arg(long, value_name = "APP")]
    pub reduce: Option<String>,
    /// Jobs in flight at once for this stream (1 to 4096).
    #[arg(long, value_name = "N", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub window: u32,
    /// Give up on a job after this long (sent as X-Disruptor-Timeout-Ms).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
}

/// `disruptor peers HTTP_ADDR`.
#[derive(Debug, Args)]
pub struct PeersArgs {
    /// HTTP address of a running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// Print the raw JSON of /api/peers instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
}

/// `disruptor deploy HTTP_ADDR DIR --name APP`.
#[derive(Debug, Args)]
pub struct DeployArgs {
    /// HTTP address of any running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// The app's directory: it becomes the directory of the app's name,
    /// so for `--name apps/myapp/worker` it holds `worker` (or
    /// `worker.js`, or `worker.toml`), and whatever else it needs
    /// (`node_modules`, binaries, data).
    pub dir: PathBuf,
    /// The app's name in the mesh, e.g. apps/myapp/worker.
    #[arg(long)]
    pub name: String,
    /// Start it on every peer once deployed (else a running app moves to
    /// the new version, and a stopped one stays stopped).
    #[arg(long)]
    pub start: bool,
    /// How long to wait for every peer to report the new version.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub wait: Duration,
    /// The admin key to sign the deployment with.
    #[command(flatten)]
    pub signing: Signing,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
}

/// `disruptor status HTTP_ADDR`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// HTTP address of a running peer (HOST:PORT or http://HOST:PORT).
    pub http_addr: String,
    /// How to reach the peer.
    #[command(flatten)]
    pub access: Access,
}

/// `disruptor keygen`: a pre-shared key, or with `--admin` an admin key.
#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Write the key to this file (mode 0600) instead of standard output.
    /// Required with `--admin`.
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Make an admin key (Ed25519) instead of a pre-shared key: the
    /// private key goes to `--out`, its public key (for `peer --admin`)
    /// to standard output.
    #[arg(long)]
    pub admin: bool,
    /// Overwrite FILE if it exists.
    #[arg(long)]
    pub force: bool,
}

fn parse_label(s: &str) -> Result<String, String> {
    crate::mesh::labels::Label::parse(s).map(|l| l.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected a duration such as 500ms, 4s or 5m)"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_reject_garbage() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
