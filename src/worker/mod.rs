//! Worker processes: spawning and talking to them ([`protocol`]) and keeping
//! them alive ([`supervisor`]).

pub mod protocol;
mod supervisor;

use serde::{Deserialize, Serialize};

use crate::apps::AppName;

pub use supervisor::{LocalJob, Workers};

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
    Stopped,
}

/// One app on one peer: what every peer announces about its apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppStatus {
    pub app: AppName,
    pub state: AppState,
    /// Worker processes up and taking jobs.
    pub workers: u32,
    /// Jobs at this peer's workers or queued for them.
    pub in_flight: u32,
    /// Clock of the start/stop decision this status answers.
    pub clock: u64,
    #[serde(default)]
    pub error: Option<String>,
    /// The deployed version (bundle SHA-256) its workers run; none for an
    /// app from the `--apps` directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// Per-process detail for this peer's own `/api/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerDetail {
    pub index: u32,
    pub pid: Option<i32>,
    pub state: WorkerState,
    pub restarts: u32,
    pub jobs_done: u64,
    pub in_flight: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Starting,
    Running,
    /// Waiting out a restart backoff after an exit.
    Restarting,
    /// Crashed several times in a row; restarts are backed off up to the cap.
    Failing,
    Stopped,
}

/// This peer's view of one of its apps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalApp {
    #[serde(flatten)]
    pub status: AppStatus,
    pub source: Option<String>,
    pub protocol: Option<crate::apps::Protocol>,
    pub queued: u32,
    pub processes: Vec<WorkerDetail>,
}
