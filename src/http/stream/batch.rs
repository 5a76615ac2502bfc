//! A stream's items in batches: how they are cut, and one batch's way
//! through the mesh (one target, one frame each way), with failover per
//! item for what the batch could not answer.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;

use super::StreamOptions;
use super::pipeline::Stages;
use crate::apps::AppName;
use crate::dispatch::{Dispatcher, Failover, Policy, Target};
use crate::error::JobError;
use crate::http::observe::{self, Outcome, Source};
use crate::network::MAX_BATCH_BYTES;
use crate::obs::{metrics, stats};

/// One item on its way through the stages: from input line `line`, at
/// `path` among the items that flattening stages made of it (empty until
/// one does), with the job for its next stage.
#[derive(Debug)]
pub(super) struct Item {
    pub line: u64,
    pub path: Vec<u32>,
    pub payload: Arc<str>,
}

impl Item {
    /// Input line `line`'s job.
    pub fn new(line: u64, payload: Arc<str>) -> Item {
        Item {
            line,
            path: Vec::new(),
            payload,
        }
    }
}

/// Most items in one batch for a stream of `window` items in flight: an
/// eighth of it (so that several batches, on several peers, are in flight
/// at once), at most 128 and at least 1.
pub(super) fn batch_lines(window: usize) -> usize {
    (window / 8).clamp(1, 128)
}

/// The next batch of `forming`'s items, from the front: at most `most`
/// items and [`MAX_BATCH_BYTES`] of them (a longer item goes alone); empty
/// only when `forming` is.
pub(super) fn next_batch(forming: &mut VecDeque<Item>, most: usize) -> Vec<Item> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(item) = forming.front() {
        let size = item.payload.len() + 4;
        if !batch.is_empty() && (batch.len() >= most || bytes + size > MAX_BATCH_BYTES) {
            break;
        }
        bytes += size;
        batch.push(forming.pop_front().expect("front above"));
    }
    batch
}

/// A batch of items for stage `stage` as one piece of work: sent to one
/// target (chosen like a single job's), and each item whose answer is a
/// failure that failover retries (its worker died, the peer went away)
/// tried again on its own, as a job of its own would be. Returns the stage
/// and every item with its result.
pub(super) async fn one_batch(
    d: &Dispatcher,
    stages: &Stages,
    stage: usize,
    items: Vec<Item>,
    opts: StreamOptions,
) -> (usize, Vec<(Item, Result<String, JobError>)>) {
    let app = stages.get(stage);
    let job = stats::new_job_id();
    let started = std::time::Instant::now();
    let deadline = Instant::now() + opts.timeout;
    let payloads: Vec<Arc<str>> = items.iter().map(|i| i.payload.clone()).collect();
    let first = first_attempt(d, app, &payloads, deadline, opts.policy, job).await;
    // Each item: its result, or its failover state to go on with.
    let mut settled: Vec<Result<Result<String, JobError>, Failover>> =
        Vec::with_capacity(items.len());
    let mut peer = None;
    // Whether the items to try again may go all at once: yes when the batch
    // as a whole got no answer (its peer went away); not when a worker
    // died on one of them: retried together, they would land behind that
    // one in one worker again and die with it, every attempt.
    let mut all_at_once = true;
    match first {
        Err(e) => settled.extend(items.iter().map(|_| Ok(Err(e.clone())))),
        Ok((target, id, answers)) => {
            let mut answers = match answers {
                Ok(rs) => {
                    all_at_once = false;
                    rs.into_iter()
                }
                // The batch as a whole got no answer: each item failed so.
                Err(e) => vec![Err(e); items.len()].into_iter(),
            };
            for _ in &items {
                let answer = answers.next().unwrap_or_else(|| {
                    Err(JobError::WorkerCrashed("the batch lost this line".into()))
                });
                settled.push(match answer {
                    Ok(r) => Ok(Ok(r)),
                    Err(e) => d
                        .first_failure(app, opts.policy, target, &id, e, deadline)
                        .map_or_else(|e| Ok(Err(e)), Err),
                });
            }
            peer = Some(id);
        }
    }
    let ok = settled.iter().filter(|s| matches!(s, Ok(Ok(_)))).count() as u64;
    let errors: Vec<&JobError> = settled
        .iter()
        .filter_map(|s| s.as_ref().ok()?.as_ref().err())
        .collect();
    metrics::batch_done(
        app,
        ok,
        errors.into_iter(),
        started.elapsed(),
        peer.as_deref(),
    );
    // The items to try again, each on its own.
    let again = items
        .iter()
        .zip(settled.iter_mut())
        .enumerate()
        .filter_map(|(i, (item, s))| {
            let f = std::mem::take(s.as_mut().err()?);
            let (n, payload) = (item.line, item.payload.clone());
            Some(async move {
                let job = stats::new_job_id();
                let work = run_line_from(d, app, payload, deadline, opts.policy, job, f);
                (
                    i,
                    observe::job(app, job, Source::Line(n), work).await.result,
                )
            })
        });
    let mut retried: BTreeMap<usize, Result<String, JobError>> = if all_at_once {
        futures::future::join_all(again).await.into_iter().collect()
    } else {
        futures::stream::iter(again)
            .then(|retry| retry)
            .collect()
            .await
    };
    let answered = items
        .into_iter()
        .zip(settled)
        .enumerate()
        .map(|(i, (item, s))| {
            let result = match s {
                Ok(r) => r,
                Err(_) => retried.remove(&i).expect("retried above"),
            };
            (item, result)
        })
        .collect();
    (stage, answered)
}

/// A batch's first attempt: the target chosen (and its peer's id) and
/// what it answered, or why no target could be chosen. Waits while the
/// mesh is merely saturated (a stream waits rather than failing lines).
async fn first_attempt(
    d: &Dispatcher,
    app: &AppName,
    payloads: &[Arc<str>],
    deadline: Instant,
    policy: Policy,
    job: u64,
) -> Result<
    (
        Target,
        String,
        Result<Vec<Result<String, JobError>>, JobError>,
    ),
    JobError,
> {
    let mut pause = Duration::from_millis(5);
    loop {
        match d.choose(app, policy, deadline).await {
            Ok((target, id)) => {
                let answers = d.run_batch_on(target, app, payloads, deadline, job).await;
                return Ok((target, id, answers));
            }
            Err(JobError::Busy(_)) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// One item's job after its batch failed it: run with failover from `f`,
/// and retried while the mesh is merely saturated.
async fn run_line_from(
    d: &Dispatcher,
    app: &AppName,
    payload: Arc<str>,
    deadline: Instant,
    policy: Policy,
    job: u64,
    mut f: Failover,
) -> Outcome<String> {
    let mut pause = Duration::from_millis(5);
    loop {
        let out = d
            .run_from(
                app,
                payload.clone(),
                deadline,
                policy,
                job,
                std::mem::take(&mut f),
            )
            .await;
        match out.result {
            Err(JobError::Busy(_)) if Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(200));
            }
            _ => return Outcome::from(out).map(|done| done.result),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch `forming` makes, in order.
    fn all_batches(forming: Vec<Item>, most: usize) -> Vec<Vec<Item>> {
        let mut forming = VecDeque::from(forming);
        let mut batches = Vec::new();
        loop {
            let b = next_batch(&mut forming, most);
            if b.is_empty() {
                return batches;
            }
            batches.push(b);
        }
    }

    #[test]
    fn lines_are_cut_into_batches_in_order() {
        let line = |n: u64| Item::new(n, Arc::<str>::from(n.to_string()));
        let batches = all_batches((1..=10).map(line).collect(), 4);
        let numbers: Vec<Vec<u64>> = batches
            .iter()
            .map(|b| b.iter().map(|i| i.line).collect())
            .collect();
        assert_eq!(
            numbers,
            vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10]]
        );
        assert!(all_batches(Vec::new(), 4).is_empty());
        assert_eq!(all_batches((1..=4).map(line).collect(), 4).len(), 1);
        // Bytes bound a batch too: a long line goes alone.
        let long = |n: u64, len: usize| Item::new(n, Arc::<str>::from("7".repeat(len)));
        let half = MAX_BATCH_BYTES / 2 - 4;
        let big = vec![
            long(1, half),
            long(2, half),
            long(3, half),
            long(4, MAX_BATCH_BYTES),
            long(5, 1),
        ];
        let sizes: Vec<usize> = all_batches(big, 100).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
        // An eighth of the window, within 1 and 128.
        assert_eq!(
            [1, 8, 16, 256, 1024, 1032, 4096].map(batch_lines),
            [1, 1, 2, 32, 128, 128, 128]
        );
    }
}
