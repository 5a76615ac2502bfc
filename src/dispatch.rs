//! Where a job runs: a random live worker anywhere in the mesh.
//!
//! The candidates are this peer (if it has live workers for the app) and
//! every peer that is up and announced live workers for it, each weighted
//! by its number of live worker processes, so every worker in the mesh is
//! equally likely to get a job. A remote job goes over the network
//! [`Client`]; a local one straight into the app's queue.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::apps::{AppName, MAX_WORKERS_PER_APP};
use crate::error::JobError;
use crate::network::Client;
use crate::worker::{AppState, LocalJob, Workers};

/// Peers tried for one job when the chosen one turns out not to run the
/// app any more (its announcement was stale).
const MAX_STALE_RETRIES: usize = 4;

#[derive(Clone)]
pub struct Dispatcher {
    workers: Workers,
    net: Client,
    local_id: String,
    /// Further attempts after a job's first one failed (peer lost, worker died).
    retries: u32,
}

/// A job's result and where it ran.
pub struct Done {
    pub result: String,
    pub peer: String,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Target {
    Local,
    Remote(libp2p::PeerId),
}

impl Dispatcher {
    pub fn new(workers: Workers, net: Client, local_id: String, retries: u32) -> Self {
        Dispatcher {
            workers,
            net,
            local_id,
            retries,
        }
    }

    pub fn net(&self) -> &Client {
        &self.net
    }

    pub fn workers(&self) -> &Workers {
        &self.workers
    }

    pub fn local_id(&self) -> &str {
        &self.local_id
    }

    /// Runs `payload` (one line of compact JSON) on a worker of `app`.
    ///
    /// At-least-once: when the chosen peer cannot be reached or its
    /// connection drops, or the worker dies before answering, the job is
    /// tried again on another live worker, up to `retries` more times and
    /// never past the deadline. Returns the outcome and the attempts made.
    pub async fn run(
        &self,
        app: &AppName,
        payload: Arc<str>,
        timeout: Duration,
    ) -> (Result<Done, JobError>, u32) {
        let deadline = Instant::now() + timeout;
        let mut excluded: Vec<Target> = Vec::new();
        let mut stale = 0;
        let mut attempts = 0u32;
        let mut failures: Vec<String> = Vec::new();
        loop {
            let (target, peer_id) = match self.pick(app, &excluded) {
                Ok(t) => t,
                // Everything that failed is excluded; a crashed worker's
                // peer may still have others (or restart it): try anyone.
                Err(_) if !failures.is_empty() => match self.pick(app, &[]) {
                    Ok(t) => t,
                    Err(e) => return (Err(e), attempts),
                },
                Err(e) => return (Err(e), attempts),
            };
            attempts += 1;
            let result = match target {
                Target::Local => run_local(&self.workers, app, payload.clone(), deadline).await,
                Target::Remote(peer) => self.net.send_job(peer, app, &payload, deadline).await,
            };
            match result {
                Ok(result) => {
                    return (
                        Ok(Done {
                            result,
                            peer: peer_id,
                        }),
                        attempts,
                    );
                }
                // A stale view: that peer no longer runs it. Not a failure.
                Err(JobError::NotRunning(_)) if stale < MAX_STALE_RETRIES => {
                    stale += 1;
                    attempts -= 1;
                    excluded.push(target);
                }
                Err(e @ (JobError::Unreachable(_) | JobError::WorkerCrashed(_))) => {
                    failures.push(format!("attempt {attempts} on {peer_id}: {e}"));
                    if failures.len() as u32 > self.retries || Instant::now() >= deadline {
                        let msg = if failures.len() == 1 {
                            e.to_string()
                        } else {
                            format!(
                                "the job failed on {} attempts (it may be a poison job): {}",
                                failures.len(),
                                failures.join(" | ")
                            )
                        };
                        return (
                            Err(match e {
                                JobError::Unreachable(_) => JobError::Unreachable(msg),
                                _ => JobError::WorkerCrashed(msg),
                            }),
                            attempts,
                        );
                    }
                    tracing::debug!(app = %app, peer = %peer_id, "retrying a job elsewhere: {e}");
                    excluded.push(target);
                }
                Err(e) => return (Err(e), attempts),
            }
        }
    }

    /// A random target, weighted by capacity, with its peer id as text
    /// (taken from the view: encoding a peer id is not free).
    fn pick(&self, app: &AppName, excluded: &[Target]) -> Result<(Target, String), JobError> {
        let mut candidates: Vec<(Target, &str, u64)> = Vec::new();
        let local = self.workers.capacity(app);
        if local > 0 && !excluded.contains(&Target::Local) {
            candidates.push((Target::Local, self.local_id.as_str(), local as u64));
        }
        let mesh = self.net.mesh();
        for p in mesh.peers.iter().filter(|p| p.state == "up") {
            let Some(peer) = p.peer else { continue };
            if excluded.contains(&Target::Remote(peer)) {
                continue;
            }
            if let Some(a) = p.apps.iter().find(|a| a.app == *app) {
                // Announced by the other peer: capped, never trusted to add up.
                let weight = match a.state {
                    AppState::Running => a.workers.min(MAX_WORKERS_PER_APP),
                    AppState::Starting => 1,
                    _ => 0,
                };
                if weight > 0 {
                    candidates.push((Target::Remote(peer), p.id.as_str(), weight as u64));
                }
            }
        }
        let total: u64 = candidates.iter().map(|(_, _, w)| w).sum();
        if total == 0 {
            return Err(JobError::NotRunning(format!(
                "{app} has no live worker anywhere in the mesh (start it with `disruptor start`)"
            )));
        }
        let mut r = rand::thread_rng().gen_range(0..total);
        for (t, id, w) in candidates {
            if r < w {
                return Ok((t, id.to_string()));
            }
            r -= w;
        }
        unreachable!("r < total")
    }
}

/// Runs a job on one of this peer's own workers.
pub async fn run_local(
    workers: &Workers,
    app: &AppName,
    payload: Arc<str>,
    deadline: Instant,
) -> Result<String, JobError> {
    let (reply, rx) = oneshot::channel();
    workers.submit(
        app,
        LocalJob {
            payload,
            deadline,
            reply,
        },
    )?;
    // The worker enforces the deadline while it runs the job; this covers
    // the wait in the queue and a worker task that went away.
    match tokio::time::timeout_at(deadline + Duration::from_millis(200), rx).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) => Err(JobError::NotRunning(format!(
            "{app} was stopped on this peer"
        ))),
        Err(_) => Err(JobError::Timeout("no result within the timeout".into())),
    }
}

/// Checks that `text` is one JSON value and returns it as one line: as it
/// is when it has no newline, re-encoded compactly otherwise (JSON strings
/// cannot contain a raw newline, so only whitespace between tokens can).
pub fn one_line(text: &str) -> Result<String, serde_json::Error> {
    if text.contains('\n') {
        let v: serde_json::Value = serde_json::from_str(text)?;
        Ok(v.to_string())
    } else {
        let raw: &serde_json::value::RawValue = serde_json::from_str(text)?;
        Ok(raw.get().trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_validates_and_compacts() {
        assert_eq!(one_line(r#"{"a": 1}"#).unwrap(), r#"{"a": 1}"#);
        assert_eq!(
            one_line("{\n \"a\": [1,\n 2]\n}\n").unwrap(),
            r#"{"a":[1,2]}"#
        );
        assert_eq!(one_line(" \"x\" ").unwrap(), r#""x""#);
        assert!(one_line("{").is_err());
        assert!(one_line("1 2").is_err());
        assert!(one_line("").is_err());
    }
}
