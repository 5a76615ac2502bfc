//! Errors of the job path, and their one mapping to HTTP status codes.

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

/// Why a job did not produce a result. Crosses the wire between peers
/// (a remote peer's failure is reported to the caller as it happened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum JobError {
    /// The request itself is wrong (bad JSON, bad app name, bad header).
    #[error("{0}")]
    BadRequest(String),
    /// No live worker for the app anywhere in the mesh (or on the chosen peer).
    #[error("{0}")]
    NotRunning(String),
    /// The job (or a line of a stream) is over `--max-job-bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// The worker died while it held the job (message includes its stderr tail).
    #[error("{0}")]
    WorkerCrashed(String),
    /// The worker answered something that is not a JSON value.
    #[error("{0}")]
    BadOutput(String),
    /// No answer within the job's timeout (`X-Disruptor-Timeout-Ms`, by
    /// default [`DEFAULT_JOB_TIMEOUT`](crate::api::DEFAULT_JOB_TIMEOUT)).
    #[error("{0}")]
    Timeout(String),
    /// Every queue for the app is full, or the peer is stopping.
    #[error("{0}")]
    Busy(String),
    /// The peer chosen for the job could not be reached.
    #[error("{0}")]
    Unreachable(String),
}

impl JobError {
    /// The kind, as on the wire and in metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::BadRequest(_) => "bad_request",
            JobError::NotRunning(_) => "not_running",
            JobError::TooLarge(_) => "too_large",
            JobError::WorkerCrashed(_) => "worker_crashed",
            JobError::BadOutput(_) => "bad_output",
            JobError::Timeout(_) => "timeout",
            JobError::Busy(_) => "busy",
            JobError::Unreachable(_) => "unreachable",
        }
    }

    /// The HTTP status of an answer with this error: 400, 404, 413, 502
    /// (crashed, bad output, unreachable), 504 or 503.
    pub fn status(&self) -> StatusCode {
        match self {
            JobError::BadRequest(_) => StatusCode::BAD_REQUEST,
            JobError::NotRunning(_) => StatusCode::NOT_FOUND,
            JobError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            JobError::WorkerCrashed(_) | JobError::BadOutput(_) | JobError::Unreachable(_) => {
                StatusCode::BAD_GATEWAY
            }
            JobError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            JobError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_and_statuses() {
        let e = JobError::WorkerCrashed("worker exited with status 3".into());
        let s = serde_json::to_string(&e).unwrap();
        assert_eq!(
            s,
            r#"{"kind":"worker_crashed","message":"worker exited with status 3"}"#
        );
        assert_eq!(serde_json::from_str::<JobError>(&s).unwrap(), e);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            JobError::NotRunning(String::new()).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            JobError::Timeout(String::new()).status(),
            StatusCode::GATEWAY_TIMEOUT
        );
        assert_eq!(
            JobError::TooLarge(String::new()).status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
