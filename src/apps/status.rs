//! What a peer says about its apps: the status every peer announces, and
//! the detail of this peer's own worker processes.

use serde::{Deserialize, Serialize};

use super::AppName;

/// An app's state on one peer, as announced to the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppState {
    /// At least one worker process is up and taking jobs.
    Running,
    /// Workers are being started (or restarted after a crash).
    Starting,
    /// Every worker keeps crashing; restarts are backed off.
    Failing,
    /// This peer does not have the app (or cannot run it).
    Missing,
    /// Stopped by a decision.
    Stopped,
    /// This peer has the app, but the decision placed it on other peers
    /// (`start --peers N` or `--on LABEL`).
    Standby,
}

impl AppState {
    /// The name the JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AppState::Running => "running",
            AppState::Starting => "starting",
            AppState::Failing => "failing",
            AppState::Missing => "missing",
            AppState::Stopped => "stopped",
            AppState::Standby => "standby",
        }
    }
}

impl std::fmt::Display for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One app on one peer: what every peer announces about its apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    /// The app.
    pub app: AppName,
    /// How it is doing on that peer.
    pub state: AppState,
    /// Worker processes up and taking jobs.
    pub workers: u32,
    /// Jobs at this peer's workers or queued for them.
    pub in_flight: u32,
    /// Clock of the start/stop decision this status answers.
    pub clock: u64,
    /// Why the app is not running, for people. Other peers' texts are cut
    /// to [`MAX_ERROR_CHARS`] characters when parsed.
    #[serde(default, deserialize_with = "bounded_error")]
    pub error: Option<String>,
    /// The deployed version (bundle SHA-256) its workers run; none for an
    /// app from the `--apps` directory. Parsed only as 64 lowercase hex
    /// digits: anything else is refused with the whole status (code that
    /// shows a prefix of it may slice it by bytes).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "version_hash"
    )]
    pub version: Option<String>,
}

/// Longest error text kept from a parsed [`AppStatus`], in characters.
/// Peers send at most 160 (and drop them when an announcement is full).
pub const MAX_ERROR_CHARS: usize = 512;

/// Whether `s` is a SHA-256 in the form bundles are named by.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn version_hash<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v: Option<String> = Option::deserialize(d)?;
    match v {
        Some(h) if !is_sha256_hex(&h) => Err(serde::de::Error::custom(format!(
            "an app version must be 64 lowercase hex digits (a bundle's SHA-256), not {} bytes of something else",
            h.len()
        ))),
        v => Ok(v),
    }
}

fn bounded_error<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let mut e: Option<String> = Option::deserialize(d)?;
    if let Some(text) = &mut e {
        crate::text::truncate(text, MAX_ERROR_CHARS);
    }
    Ok(e)
}

/// Per-process detail for this peer's own `/api/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDetail {
    /// Its slot among the app's workers, from 0; kept across restarts.
    pub index: u32,
    /// The process id while a process runs; none between restarts.
    pub pid: Option<i32>,
    /// How the slot is doing.
    pub state: WorkerState,
    /// Times its process ended and was started again.
    pub restarts: u32,
    /// Jobs it answered with a result.
    pub jobs_done: u64,
    /// Jobs written to its process and not answered yet (at most the
    /// app's pipeline).
    pub in_flight: u32,
    /// Why its process last ended, for people.
    pub last_error: Option<String>,
}

/// How one worker slot of an app is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    /// Its process is being spawned, or has not yet stayed up a moment
    /// (300 ms) nor answered a job: one that dies on start-up is never
    /// shown running.
    Starting,
    /// Up and taking jobs.
    Running,
    /// Waiting out a restart backoff after an exit.
    Restarting,
    /// Crashed several times in a row; restarts are backed off up to the cap.
    Failing,
    /// Not running, and not to be restarted.
    Stopped,
}

impl WorkerState {
    /// The name the JSON and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Running => "running",
            WorkerState::Restarting => "restarting",
            WorkerState::Failing => "failing",
            WorkerState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for WorkerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// This peer's view of one of its apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalApp {
    /// What this peer announces about it (flattened into the JSON).
    #[serde(flatten)]
    pub status: AppStatus,
    /// The file its name resolved to; none unless this peer started it.
    pub source: Option<String>,
    /// How its workers are talked to; none unless this peer started it.
    pub protocol: Option<crate::apps::Protocol>,
    /// Jobs waiting for a free worker (also counted in `in_flight`).
    pub queued: u32,
    /// Its worker slots, by index; empty unless this peer started it.
    pub processes: Vec<WorkerDetail>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(version: serde_json::Value, error: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "app": "apps/echo/echo", "state": "running", "workers": 2,
            "in_flight": 0, "clock": 3, "version": version, "error": error,
        })
    }

    #[test]
    fn a_version_is_a_hash_or_the_status_is_refused() {
        let hash = "0123456789abcdef".repeat(4);
        let ok: AppStatus =
            serde_json::from_value(status(hash.clone().into(), "x".into())).unwrap();
        assert_eq!(ok.version.as_deref(), Some(hash.as_str()));
        let none: AppStatus =
            serde_json::from_value(status(serde_json::Value::Null, "x".into())).unwrap();
        assert_eq!(none.version, None);
        for bad in [
            "é".repeat(32),
            hash.to_uppercase(),
            format!("{hash}0"),
            hash[1..].to_string(),
            "../../etc/passwd".into(),
            String::new(),
        ] {
            let r = serde_json::from_value::<AppStatus>(status(bad.clone().into(), "x".into()));
            let e = r.expect_err(&bad).to_string();
            assert!(e.contains("64 lowercase hex"), "{e}");
        }
    }

    #[test]
    fn an_error_text_is_bounded_at_parse() {
        let long = "ü".repeat(10_000);
        let s: AppStatus =
            serde_json::from_value(status(serde_json::Value::Null, long.into())).unwrap();
        let e = s.error.unwrap();
        assert_eq!(e.chars().count(), MAX_ERROR_CHARS + 1);
        assert!(e.ends_with('…'));
        let s: AppStatus =
            serde_json::from_value(status(serde_json::Value::Null, "short".into())).unwrap();
        assert_eq!(s.error.as_deref(), Some("short"));
    }
}
