//! Turning command-line values into a validated peer configuration:
//! addresses, the key files (identity, pre-shared key, admin keys), the
//! HTTP bearer token, and the bounds of the numeric flags.
//!
//! Every failure here is a [`ConfigError`], which `main` reports in one line
//! and maps to exit code 2 (the user's input is wrong).

use std::fs;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use libp2p::Multiaddr;
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::pnet::{KeyParseError, PreSharedKey};

use crate::cli::PeerArgs;
pub use crate::mesh::membership::Timing;
pub use crate::secret_file::{
    SecretFileError, check_private_file, read_private_file, write_private_file,
};

/// Why the command line does not make a peer configuration: the user's
/// input is wrong (exit code 2). The message names the flag or the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value is not an address (or its host does not resolve).
    #[error("{flag} {value:?} is not an address: {reason}")]
    Address {
        /// The flag, e.g. `--listen`.
        flag: &'static str,
        /// The value as given.
        value: String,
        /// Why it is not an address.
        reason: String,
    },
    /// The `--admins` file cannot be read. (Private key files that cannot
    /// be read are a [`ConfigError::Secret`].)
    #[error("cannot read key file {}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// What reading it said.
        source: std::io::Error,
    },
    /// The `--psk-file` is not in the swarm-key format (see [`parse_psk`]).
    #[error("{} is not a pre-shared key file: {reason}", path.display())]
    BadPsk {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The `--identity` file is not a libp2p private key.
    #[error("{} is not a disruptor identity file: {reason}", path.display())]
    BadIdentity {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A value out of bounds or at odds with another flag; the text is the
    /// whole message, flag included.
    #[error("{0}")]
    Value(String),
    /// A private file (identity, pre-shared key, token) that cannot be
    /// read or written, or that other users may read.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// `--down-after` is not longer than `--announce-interval`: peers
    /// could be marked down between two announcements.
    #[error("--down-after ({down_after:?}) must be longer than --announce-interval ({announce:?})")]
    Timing {
        /// `--down-after`.
        down_after: Duration,
        /// `--announce-interval`.
        announce: Duration,
    },
}

/// Upper bound for `--max-job-bytes` (a job travels in one libp2p message).
pub const MAX_JOB_BYTES_LIMIT: usize = 64 * 1024 * 1024;

/// Everything a peer needs to start, validated.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// `--label`: this peer's labels, for placement (`start --on`).
    pub labels: crate::mesh::labels::Labels,
    /// `--listen`: TCP multiaddrs to listen on for other peers (host
    /// names resolved at start).
    pub listen: Vec<Multiaddr>,
    /// `--bootstrap`: peers to dial at start (host names resolved at
    /// start); empty for the first peer of a mesh.
    pub bootstrap: Vec<Multiaddr>,
    /// Whether the identity comes from a file (so this peer may be one the
    /// mesh already knows, coming back).
    pub persistent_identity: bool,
    /// `--http`: where the HTTP endpoint listens (a loopback address
    /// unless `http_token` is set).
    pub http: SocketAddr,
    /// This peer's identity: loaded from (or created in) `--identity`,
    /// else new at every start.
    pub keypair: Keypair,
    /// `--psk-file`: the private mesh's key; `None` for an open mesh.
    pub psk: Option<PreSharedKey>,
    /// `--announce-interval`, `--down-after` (checked to be longer than
    /// the interval), `--forget-after` and `--connect-timeout`.
    pub timing: Timing,
    /// `--apps`: the directory of the apps this peer can run.
    pub apps_dir: PathBuf,
    /// `--max-job-bytes`: the largest job accepted, in bytes (1 to
    /// [`MAX_JOB_BYTES_LIMIT`]).
    pub max_job_bytes: usize,
    /// Worker processes per app when neither the decision nor the app's
    /// manifest says: `--workers` (1 to
    /// [`MAX_WORKERS_PER_APP`](crate::apps::MAX_WORKERS_PER_APP)), by
    /// default one per core.
    pub default_workers: u32,
    /// `--worker-grace`: time a stopped worker gets between SIGTERM and
    /// SIGKILL.
    pub worker_grace: Duration,
    /// `--retries`: further attempts for a job whose peer was lost or
    /// whose worker died before answering (0 to 10).
    pub retries: u32,
    /// `--drain-grace`: how long a stopping peer keeps running the jobs it
    /// has (taking no new ones).
    pub drain_grace: Duration,
    /// `--data-dir`: where deployed bundles are kept.
    pub data_dir: PathBuf,
    /// Whether this peer installs bundles deployed through the mesh: only
    /// with admin keys, and not with `--no-remote-deploy`. Without it the
    /// peer has no bundle store at all.
    pub remote_deploy: bool,
    /// `--max-bundle-bytes`: the largest bundle accepted (compressed), in
    /// bytes.
    pub max_bundle_bytes: u64,
    /// `--dispatch`: how a job's worker is chosen, unless the request says.
    pub dispatch: crate::dispatch::Policy,
    /// `--http-max-connections`: open HTTP connections at most (1 to
    /// 1,000,000); more are closed as they arrive.
    pub http_max_connections: usize,
    /// `--http-header-timeout`: time a client has to send a request's
    /// headers (also the longest an idle keep-alive connection is kept).
    pub http_header_timeout: Duration,
    /// `--http-body-timeout`: time a client has to send a job's body (in a
    /// stream of jobs, the longest pause between two pieces).
    pub http_body_timeout: Duration,
    /// Admin keys whose signed decisions this peer takes (empty: none).
    pub admins: crate::mesh::trust::Admins,
    /// Names the HTTP endpoint answers to besides its address and loopback.
    pub http_hosts: Vec<String>,
    /// Bearer token every HTTP request must carry (`--http-token-file`).
    pub http_token: Option<String>,
    /// `--max-store-bytes`: most bytes the installed bundles may take,
    /// archives plus unpacked files; `None` for the store's default,
    /// [`default_quota`](crate::deploy::default_quota) of `max_bundle_bytes`.
    pub max_store_bytes: Option<u64>,
}

impl PeerConfig {
    /// What the network layer needs of this configuration.
    pub fn network(&self, http_addr: SocketAddr) -> crate::network::Settings {
        crate::network::Settings {
            keypair: self.keypair.clone(),
            listen: self.listen.clone(),
            bootstrap: self.bootstrap.clone(),
            psk: self.psk,
            timing: self.timing,
            admins: self.admins.clone(),
            http_addr,
            labels: self.labels.clone(),
        }
    }

    /// Validates the arguments of `disruptor peer`: every error names the
    /// flag and what it takes.
    pub fn from_args(args: &PeerArgs) -> Result<Self, ConfigError> {
        let addrs = |flag, list: &[String]| -> Result<Vec<Multiaddr>, ConfigError> {
            list.iter().map(|s| parse_peer_addr(flag, s)).collect()
        };
        let listen = addrs("--listen", &args.listen)?;
        let bootstrap = addrs("--bootstrap", &args.bootstrap)?;
        let http = parse_socket_addr("--http", &args.http)?;
        let labels = crate::mesh::labels::Labels::parse_all(&args.labels)
            .map_err(|e| ConfigError::Value(format!("--label: {e}")))?;
        let keypair = match &args.identity {
            Some(path) => load_or_create_identity(path)?,
            None => Keypair::generate_ed25519(),
        };
        let psk = args.psk_file.as_deref().map(load_psk).transpose()?;
        let timing = timing(args)?;
        check_limits(args)?;
        let admins = load_admins(&args.admins, args.admins_file.as_deref())?;
        let http_token = args
            .http_token_file
            .as_deref()
            .map(load_http_token)
            .transpose()?;
        if !http.ip().is_loopback() && http_token.is_none() {
            return Err(ConfigError::Value(format!(
                "--http {http} is not a loopback address: anyone who can reach it could drive this peer. \
                 Give it a bearer token with --http-token-file FILE (one line of at least {MIN_TOKEN_LEN} characters, mode 0600), \
                 or listen on 127.0.0.1"
            )));
        }
        let http_hosts = args
            .http_host
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        let default_workers = args.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        });
        Ok(PeerConfig {
            labels,
            listen,
            bootstrap,
            persistent_identity: args.identity.is_some(),
            http,
            keypair,
            psk,
            timing,
            apps_dir: args.apps.clone(),
            max_job_bytes: args.max_job_bytes,
            default_workers,
            worker_grace: args.worker_grace,
            retries: args.retries,
            drain_grace: args.drain_grace,
            data_dir: args.data_dir.clone(),
            // Secure by default: bundles from the network only on a peer
            // that knows who may deploy them.
            remote_deploy: !args.no_remote_deploy && !admins.is_empty(),
            max_bundle_bytes: args.max_bundle_bytes,
            dispatch: args.dispatch,
            http_max_connections: args.http_max_connections,
            http_header_timeout: args.http_header_timeout,
            http_body_timeout: args.http_body_timeout,
            admins,
            http_hosts,
            http_token,
            max_store_bytes: args.max_store_bytes,
        })
    }
}

/// The membership timing flags, checked against each other.
fn timing(args: &PeerArgs) -> Result<Timing, ConfigError> {
    let timing = Timing {
        announce_interval: args.announce_interval,
        down_after: args.down_after,
        forget_after: args.forget_after,
        connect_timeout: args.connect_timeout,
    };
    if timing.down_after <= timing.announce_interval {
        return Err(ConfigError::Timing {
            down_after: timing.down_after,
            announce: timing.announce_interval,
        });
    }
    Ok(timing)
}

/// The numeric flags with bounds: `--max-job-bytes`, `--workers`.
fn check_limits(args: &PeerArgs) -> Result<(), ConfigError> {
    if args.max_job_bytes == 0 || args.max_job_bytes > MAX_JOB_BYTES_LIMIT {
        return Err(ConfigError::Value(format!(
            "--max-job-bytes must be between 1 and {MAX_JOB_BYTES_LIMIT}"
        )));
    }
    if args
        .workers
        .is_some_and(|w| w == 0 || w > crate::apps::MAX_WORKERS_PER_APP)
    {
        return Err(ConfigError::Value(format!(
            "--workers must be between 1 and {}",
            crate::apps::MAX_WORKERS_PER_APP
        )));
    }
    Ok(())
}

/// Shortest HTTP bearer token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin keys of `--admin` and `--admins FILE`, together.
fn load_admins(
    keys: &[String],
    file: Option<&Path>,
) -> Result<crate::mesh::trust::Admins, ConfigError> {
    use crate::mesh::trust::{AdminKey, Admins, MAX_ADMINS};
    let mut all = keys
        .iter()
        .filter(|k| !k.trim().is_empty())
        .map(|k| AdminKey::parse(k).map_err(|e| ConfigError::Value(format!("--admin: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(path) = file {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::ReadKey {
            path: path.to_path_buf(),
            source,
        })?;
        let listed = Admins::parse_file(&text)
            .map_err(|e| ConfigError::Value(format!("--admins {}: {e}", path.display())))?;
        all.extend(listed);
    }
    if all.len() > MAX_ADMINS {
        return Err(ConfigError::Value(format!(
            "at most {MAX_ADMINS} admin keys are accepted"
        )));
    }
    Ok(Admins::new(all))
}

/// Reads the HTTP bearer token: the file's first line, trimmed.
fn load_http_token(path: &Path) -> Result<String, ConfigError> {
    let text = String::from_utf8_lossy(&read_private_file(path)?).into_owned();
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::Value(format!(
            "--http-token-file {}: the token must be one line of at least {MIN_TOKEN_LEN} printable characters without spaces",
            path.display()
        )));
    }
    Ok(token)
}

/// Parses `HOST:PORT` (IPv4, `[IPv6]` or a host name, resolved now) or a
/// multiaddr starting with `/` into a TCP multiaddr.
pub fn parse_peer_addr(flag: &'static str, value: &str) -> Result<Multiaddr, ConfigError> {
    let err = |reason: String| ConfigError::Address {
        flag,
        value: value.to_string(),
        reason,
    };
    let value = value.trim();
    if value.starts_with('/') {
        let addr: Multiaddr = value.parse().map_err(|e| err(format!("{e}")))?;
        let mut iter = addr.iter();
        let ip_ok = matches!(
            iter.next(),
            Some(
                Protocol::Ip4(_)
                    | Protocol::Ip6(_)
                    | Protocol::Dns(_)
                    | Protocol::Dns4(_)
                    | Protocol::Dns6(_)
            )
        );
        let tcp_ok = matches!(iter.next(), Some(Protocol::Tcp(_)));
        if !ip_ok || !tcp_ok {
            return Err(err(
                "expected a TCP multiaddr such as /ip4/10.0.0.1/tcp/4001".into(),
            ));
        }
        if addr
            .iter()
            .any(|p| matches!(p, Protocol::Dns(_) | Protocol::Dns4(_) | Protocol::Dns6(_)))
        {
            return resolve_dns_multiaddr(&addr).map_err(err);
        }
        return Ok(addr);
    }
    let sa = parse_socket_addr_inner(value).map_err(err)?;
    Ok(socket_to_multiaddr(sa))
}

/// The TCP multiaddr of a socket address: `/ip4/<ip>/tcp/<port>` or
/// `/ip6/<ip>/tcp/<port>`.
pub fn socket_to_multiaddr(sa: SocketAddr) -> Multiaddr {
    let ip = match sa.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(sa.port()))
}

fn resolve_dns_multiaddr(addr: &Multiaddr) -> Result<Multiaddr, String> {
    let mut out = Multiaddr::empty();
    let mut iter = addr.iter().peekable();
    let host = match iter.next() {
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h.to_string(),
        _ => unreachable!("checked by the caller"),
    };
    let port = match iter.next() {
        Some(Protocol::Tcp(p)) => p,
        _ => return Err("expected /tcp/<port> after the host name".into()),
    };
    let sa = parse_socket_addr_inner(&format!("{host}:{port}"))?;
    out = out.with(match sa.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    });
    out = out.with(Protocol::Tcp(port));
    for p in iter {
        out = out.with(p);
    }
    Ok(out)
}

/// Parses `HOST:PORT`: an IP address (`[IPv6]:PORT` for IPv6) or a host
/// name, resolved now (its first address). The error names `flag`.
pub fn parse_socket_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    parse_socket_addr_inner(value.trim()).map_err(|reason| ConfigError::Address {
        flag,
        value: value.to_string(),
        reason,
    })
}

fn parse_socket_addr_inner(value: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = value.parse::<SocketAddr>() {
        return Ok(sa);
    }
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err("expected HOST:PORT (e.g. 127.0.0.1:4001) or a multiaddr".into());
    };
    if host.is_empty() {
        return Err("the host is missing (expected HOST:PORT)".into());
    }
    port.parse::<u16>()
        .map_err(|_| format!("{port:?} is not a port number (0-65535)"))?;
    match (host, port.parse::<u16>().unwrap_or(0)).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("host {host:?} has no address")),
        Err(e) => Err(format!("cannot resolve host {host:?}: {e}")),
    }
}

/// Reads the identity key at `path`, or creates a new Ed25519 key there
/// (mode 0600, written to a temporary file and renamed into place). An
/// existing file that other users may read is refused.
pub fn load_or_create_identity(path: &Path) -> Result<Keypair, ConfigError> {
    match read_private_file(path) {
        Ok(bytes) => {
            Keypair::from_protobuf_encoding(&bytes).map_err(|e| ConfigError::BadIdentity {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
        Err(SecretFileError::Read { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            let keypair = Keypair::generate_ed25519();
            let bytes = keypair
                .to_protobuf_encoding()
                .expect("ed25519 keys always encode");
            write_private_file(path, &bytes, false)?;
            Ok(keypair)
        }
        Err(e) => Err(e.into()),
    }
}

/// Reads the pre-shared key at `path`; a file other users may read is
/// refused.
pub fn load_psk(path: &Path) -> Result<PreSharedKey, ConfigError> {
    let bytes = read_private_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| ConfigError::BadPsk {
        path: path.to_path_buf(),
        reason: "it is not text".into(),
    })?;
    parse_psk(&text).map_err(|reason| ConfigError::BadPsk {
        path: path.to_path_buf(),
        reason,
    })
}

/// Parses the swarm-key text format, with a readable reason on failure.
pub fn parse_psk(text: &str) -> Result<PreSharedKey, String> {
    let normalized: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .take(3)
        .collect::<Vec<_>>()
        .join("\n");
    normalized.parse::<PreSharedKey>().map_err(|e| match e {
        KeyParseError::InvalidKeyFile => {
            "expected three lines: /key/swarm/psk/1.0.0/, /base16/, and 64 hex digits".into()
        }
        KeyParseError::InvalidKeyType => "the first line must be /key/swarm/psk/1.0.0/".into(),
        KeyParseError::InvalidKeyEncoding => "the second line must be /base16/".into(),
        KeyParseError::InvalidKeyLength => "the key must be exactly 64 hex digits".into(),
        KeyParseError::InvalidKeyChar(_) => "the key contains a character that is not hex".into(),
    })
}

/// A new random pre-shared key (`disruptor keygen`). Its `Display` is the
/// swarm-key text that [`parse_psk`] reads.
pub fn generate_psk() -> PreSharedKey {
    PreSharedKey::new(rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_becomes_tcp_multiaddr() {
        let a = parse_peer_addr("--listen", "127.0.0.1:4001").unwrap();
        assert_eq!(a.to_string(), "/ip4/127.0.0.1/tcp/4001");
        let a = parse_peer_addr("--listen", "[::1]:4001").unwrap();
        assert_eq!(a.to_string(), "/ip6/::1/tcp/4001");
        let a = parse_peer_addr("--bootstrap", "localhost:4001").unwrap();
        assert!(a.to_string().ends_with("/tcp/4001"), "{a}");
    }

    #[test]
    fn multiaddrs_pass_through() {
        let s = "/ip4/10.1.2.3/tcp/9/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA";
        assert_eq!(parse_peer_addr("--bootstrap", s).unwrap().to_string(), s);
    }

    #[test]
    fn garbage_addresses_are_rejected_with_a_reason() {
        for bad in [
            "garbage",
            "127.0.0.1",
            "127.0.0.1:99999",
            ":4001",
            "/ip4/1.2.3.4",
            "/udp/4",
            "/ip4/999.1.1.1/tcp/1",
        ] {
            let e = parse_peer_addr("--listen", bad).unwrap_err().to_string();
            assert!(
                e.contains("--listen") && e.contains("is not an address"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn psk_round_trips_and_bad_files_are_explained() {
        let k = generate_psk();
        let text = k.to_string();
        assert_eq!(
            parse_psk(&text).unwrap().fingerprint().to_string(),
            k.fingerprint().to_string()
        );
        assert_eq!(
            parse_psk(&format!("\n{text}\n\n"))
                .unwrap()
                .fingerprint()
                .to_string(),
            k.fingerprint().to_string()
        );
        assert!(parse_psk("hello").unwrap_err().contains("three lines"));
        assert!(
            parse_psk("/key/swarm/psk/1.0.0/\n/base16/\nabcd")
                .unwrap_err()
                .contains("64 hex")
        );
        let bad_char = format!("/key/swarm/psk/1.0.0/\n/base16/\n{}", "z".repeat(64));
        assert!(parse_psk(&bad_char).unwrap_err().contains("not hex"));
        assert!(
            parse_psk("/key/x/\n/base16/\nab")
                .unwrap_err()
                .contains("first line")
        );
    }

    #[test]
    fn key_files_others_may_read_or_change_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let psk = dir.path().join("my psk");
        fs::write(&psk, generate_psk().to_string()).unwrap();
        let id = dir.path().join("id.key");
        load_or_create_identity(&id).unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602] {
            for path in [&psk, &id] {
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
                let e = check_private_file(path).unwrap_err().to_string();
                assert!(
                    e.contains(&format!("chmod 600 '{}'", path.display()))
                        || e.contains(&format!("chmod 600 {}", path.display())),
                    "{mode:o}: {e}"
                );
            }
            assert!(
                load_psk(&psk)
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
            assert!(
                load_or_create_identity(&id)
                    .unwrap_err()
                    .to_string()
                    .contains("chmod 600")
            );
        }
        for mode in [0o600, 0o400] {
            fs::set_permissions(&psk, fs::Permissions::from_mode(mode)).unwrap();
            fs::set_permissions(&id, fs::Permissions::from_mode(mode)).unwrap();
            assert!(load_psk(&psk).is_ok() && load_or_create_identity(&id).is_ok());
        }
        assert_eq!(crate::secret_file::shell_quote("/a/b.key"), "/a/b.key");
        assert_eq!(
            crate::secret_file::shell_quote("/a/it's key"),
            r"'/a/it'\''s key'"
        );
    }

    #[test]
    fn identity_is_created_once_and_reloaded() {
        let dir = std::env::temp_dir().join(format!("disruptor-id-test-{}", std::process::id()));
        let path = dir.join("id.key");
        let _ = fs::remove_dir_all(&dir);
        let a = load_or_create_identity(&path).unwrap();
        let b = load_or_create_identity(&path).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            load_or_create_identity(&path),
            Err(ConfigError::BadIdentity { .. })
        ));
        let _ = fs::remove_dir_all(&dir);
    }
}
