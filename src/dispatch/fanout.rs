//! Fan-out (`?to=all`, `disruptor send --all`): one job on every peer
//! running the app, all at once.
//!
//! Where [`Dispatcher::run`] picks one worker and fails over to another,
//! fan-out asks each peer in particular, once ([`Dispatcher::run_on`]): a
//! peer that fails or stays silent past the timeout has its error in the
//! answers, next to the others' results. Built on the [`Dispatcher`]'s
//! public API only.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::Dispatcher;
use crate::apps::AppName;
use crate::error::JobError;

/// One peer's answer to a fanned-out job.
#[derive(Debug)]
pub struct Answer {
    /// The peer's id.
    pub peer: String,
    /// Its worker's result, or why there is none.
    pub result: Result<String, JobError>,
}

/// Runs `payload` once on every peer running `app` (this one included),
/// all at once, and returns each peer's answer, in the order
/// [`Dispatcher::everyone_running`] lists them, when all answered or
/// `timeout` passed. Fails as a job would when no peer runs the app.
pub async fn everywhere(
    d: &Dispatcher,
    app: &AppName,
    payload: Arc<str>,
    timeout: Duration,
    job: u64,
) -> Result<Vec<Answer>, JobError> {
    let deadline = Instant::now() + timeout;
    let targets = d.everyone_running(app, deadline).await?;
    let runs = targets.into_iter().map(|(target, peer)| {
        let run = d.run_on(target, app, payload.clone(), deadline, job);
        async move {
            let result = tokio::time::timeout_at(deadline, run)
                .await
                .unwrap_or_else(|_| {
                    Err(JobError::Timeout(format!("no answer within {timeout:?}")))
                });
            Answer { peer, result }
        }
    });
    Ok(futures::future::join_all(runs).await)
}
