//! The stages of a pipeline and what passes from one to the next.
//!
//! `POST /apps/tokenize?then=apps/count&then=apps/store`: each item's
//! result from one stage is the job of the next. Between stages a result
//! that is an array passes on each of its items (flat-map: `flatten`), and
//! `null` passes on nothing (filter); any other value passes on as it is.
//! The last stage's results are the answers.
//!
//! [`pass_on`] is that rule (pure, unit-tested); the stream task applies it
//! item by item ([`super::flow`]), and [`run_job`] applies it to a single
//! job.

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::time::Instant;

use crate::apps::AppName;
use crate::dispatch::{Dispatcher, Policy};
use crate::error::JobError;

/// Most stages in one pipeline (the first app and 15 `then`s).
pub const MAX_STAGES: usize = 16;
/// Most items one result passes on (an array's length).
pub const MAX_FLATTEN: usize = 4096;
/// Most items a single job's pipeline may hold at one stage.
pub const MAX_JOB_ITEMS: usize = 4096;

/// The apps a stream's lines (or a job) go through, in order: at least one.
#[derive(Clone, Debug, PartialEq)]
pub struct Stages(Arc<[AppName]>);

impl Stages {
    /// `first`, then each of `then`; refused past [`MAX_STAGES`].
    pub fn new(first: AppName, then: Vec<AppName>) -> Result<Stages, String> {
        if then.len() >= MAX_STAGES {
            return Err(format!(
                "a pipeline has at most {MAX_STAGES} stages (the app and {} `then`s); this one has {}",
                MAX_STAGES - 1,
                then.len() + 1
            ));
        }
        let mut all = Vec::with_capacity(then.len() + 1);
        all.push(first);
        all.extend(then);
        Ok(Stages(all.into()))
    }

    /// Stage `k` (from 0).
    pub fn get(&self, k: usize) -> &AppName {
        &self.0[k]
    }

    /// How many stages (never none).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there is more than one.
    pub fn is_pipeline(&self) -> bool {
        self.0.len() > 1
    }

    /// Whether stage `k` is the last.
    pub fn is_last(&self, k: usize) -> bool {
        k + 1 == self.0.len()
    }

    /// The stages in order.
    pub fn iter(&self) -> impl Iterator<Item = &AppName> {
        self.0.iter()
    }
}

/// What a result passes on to the next stage.
#[derive(Debug, PartialEq)]
pub enum Passed {
    /// The result itself.
    One(Arc<str>),
    /// An array's items, in order (none: nothing passes on).
    Many(Vec<Arc<str>>),
    /// `null`: the item is dropped.
    Dropped,
}

/// What `result` (a JSON value, as a worker answered it) passes on to the
/// next stage. An array of more than [`MAX_FLATTEN`] items is an error
/// (of the stage that answered it).
pub fn pass_on(result: &str) -> Result<Passed, JobError> {
    let text = result.trim();
    if text == "null" {
        return Ok(Passed::Dropped);
    }
    if !text.starts_with('[') {
        return Ok(Passed::One(one_line(text)?));
    }
    let items: Vec<&RawValue> = serde_json::from_str(text)
        .map_err(|e| JobError::BadOutput(format!("the stage's result is not JSON: {e}")))?;
    if items.len() > MAX_FLATTEN {
        return Err(JobError::TooLarge(format!(
            "the stage answered an array of {} items; at most {MAX_FLATTEN} pass on to the next stage",
            items.len()
        )));
    }
    let items = items.into_iter().map(|i| one_line(i.get()));
    Ok(Passed::Many(items.collect::<Result<_, _>>()?))
}

/// A value as one line (a worker reads one job per line). A worker's own
/// answer is one line already; another peer's may not be.
fn one_line(text: &str) -> Result<Arc<str>, JobError> {
    if !text.contains(['\n', '\r']) {
        return Ok(text.into());
    }
    crate::json::one_line(text)
        .map(Arc::from)
        .map_err(|e| JobError::BadOutput(format!("the stage's result is not JSON: {e}")))
}

/// A single job through `stages`: each stage's items all at once (each
/// with the usual failover), the next stage's items from their results by
/// [`pass_on`]. The answer has the shape of the data: the last stage's
/// result when no stage passed on an array, else the array of the last
/// stage's results in order; `null` when a stage dropped the job. The
/// first failure ends the job, naming its stage.
pub async fn run_job(
    d: &Dispatcher,
    stages: &Stages,
    payload: Arc<str>,
    timeout: Duration,
    policy: Policy,
    job: u64,
) -> Result<String, (usize, JobError)> {
    let deadline = Instant::now() + timeout;
    let mut items = vec![payload];
    let mut fanned = false;
    for (k, app) in stages.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let runs = items
            .iter()
            .map(|p| d.run(app, p.clone(), left, policy, job));
        let mut results = Vec::with_capacity(items.len());
        for out in futures::future::join_all(runs).await {
            results.push(out.result.map_err(|e| (k, e))?.result);
        }
        if stages.is_last(k) {
            items = results.into_iter().map(Arc::from).collect();
            break;
        }
        let (next, many) = next_items(&results).map_err(|e| (k, e))?;
        fanned |= many;
        items = next;
        if items.is_empty() {
            break;
        }
    }
    Ok(match (fanned, items.as_slice()) {
        (false, []) => "null".to_string(),
        (false, [one]) => one.to_string(),
        _ => format!("[{}]", items.join(",")),
    })
}

/// What a single job's items at one stage (their `results`, in order)
/// pass on to the next stage, at most [`MAX_JOB_ITEMS`], and whether a
/// result passed on an array.
fn next_items(results: &[String]) -> Result<(Vec<Arc<str>>, bool), JobError> {
    let (mut next, mut fanned) = (Vec::new(), false);
    for result in results {
        match pass_on(result)? {
            Passed::One(p) => next.push(p),
            Passed::Many(ps) => {
                fanned = true;
                next.extend(ps);
            }
            Passed::Dropped => {}
        }
        if next.len() > MAX_JOB_ITEMS {
            return Err(JobError::TooLarge(format!(
                "the job became more than {MAX_JOB_ITEMS} items at this stage"
            )));
        }
    }
    Ok((next, fanned))
}

/// `e`, of stage `k` (from 0) running `app`: the same kind of error, its
/// message naming the stage.
pub fn at_stage(k: usize, app: &AppName, e: JobError) -> JobError {
    let name = |m: String| format!("stage {} ({app}): {m}", k + 1);
    match e {
        JobError::BadRequest(m) => JobError::BadRequest(name(m)),
        JobError::NotRunning(m) => JobError::NotRunning(name(m)),
        JobError::TooLarge(m) => JobError::TooLarge(name(m)),
        JobError::WorkerCrashed(m) => JobError::WorkerCrashed(name(m)),
        JobError::BadOutput(m) => JobError::BadOutput(name(m)),
        JobError::Timeout(m) => JobError::Timeout(name(m)),
        JobError::Busy(m) => JobError::Busy(name(m)),
        JobError::Unreachable(m) => JobError::Unreachable(name(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(n: &str) -> AppName {
        AppName::parse(n).unwrap()
    }

    #[test]
    fn arrays_flatten_null_drops_the_rest_passes_as_is() {
        assert_eq!(pass_on("null").unwrap(), Passed::Dropped);
        assert_eq!(pass_on(" null ").unwrap(), Passed::Dropped);
        assert_eq!(
            pass_on(r#"{"a":null}"#).unwrap(),
            Passed::One(r#"{"a":null}"#.into())
        );
        assert_eq!(pass_on("7").unwrap(), Passed::One("7".into()));
        assert_eq!(
            pass_on(r#"[1, "two", [3], {"f": [4]}]"#).unwrap(),
            Passed::Many(vec![
                "1".into(),
                r#""two""#.into(),
                "[3]".into(),
                r#"{"f": [4]}"#.into()
            ])
        );
        assert_eq!(pass_on("[]").unwrap(), Passed::Many(vec![]));
        // Another peer's answer may span lines: each item becomes one.
        assert_eq!(
            pass_on("[{\"a\":\n1},\r\n2]").unwrap(),
            Passed::Many(vec![r#"{"a":1}"#.into(), "2".into()])
        );
        assert_eq!(
            pass_on("{\"a\":\n1}").unwrap(),
            Passed::One(r#"{"a":1}"#.into())
        );
    }

    #[test]
    fn flattening_is_bounded() {
        let most = format!("[{}]", vec!["0"; MAX_FLATTEN].join(","));
        assert!(matches!(pass_on(&most).unwrap(), Passed::Many(v) if v.len() == MAX_FLATTEN));
        let more = format!("[{}]", vec!["0"; MAX_FLATTEN + 1].join(","));
        let e = pass_on(&more).unwrap_err();
        assert!(
            matches!(&e, JobError::TooLarge(m) if m.contains("4097 items")),
            "{e}"
        );
    }

    #[test]
    fn a_single_jobs_items_are_bounded_at_every_stage() {
        let array = |n: usize| format!("[{}]", vec!["1"; n].join(","));
        let (items, fanned) = next_items(&["7".into(), "null".into(), array(2)]).unwrap();
        assert_eq!((items.len(), fanned), (3, true));
        let (items, fanned) = next_items(&["7".into(), "null".into()]).unwrap();
        assert_eq!((items.len(), fanned), (1, false));
        // Each result within MAX_FLATTEN, together over MAX_JOB_ITEMS.
        let (items, _) = next_items(&[array(MAX_JOB_ITEMS)]).unwrap();
        assert_eq!(items.len(), MAX_JOB_ITEMS);
        let e = next_items(&[array(MAX_JOB_ITEMS), "1".into()]).unwrap_err();
        assert!(
            matches!(&e, JobError::TooLarge(m) if m.contains("more than 4096 items")),
            "{e}"
        );
    }

    #[test]
    fn a_stage_is_named_in_its_error_of_the_same_kind() {
        let e = at_stage(1, &app("apps/count"), JobError::Busy("full".into()));
        assert_eq!(e, JobError::Busy("stage 2 (apps/count): full".into()));
    }

    #[test]
    fn a_pipeline_has_at_most_sixteen_stages() {
        let then = |n: usize| {
            (0..n)
                .map(|i| app(&format!("apps/s{i}")))
                .collect::<Vec<_>>()
        };
        let most = Stages::new(app("apps/a"), then(MAX_STAGES - 1)).unwrap();
        assert_eq!(most.len(), MAX_STAGES);
        assert!(most.is_pipeline() && most.is_last(MAX_STAGES - 1) && !most.is_last(0));
        let e = Stages::new(app("apps/a"), then(MAX_STAGES)).unwrap_err();
        assert!(
            e.contains("at most 16 stages") && e.contains("has 17"),
            "{e}"
        );
        let one = Stages::new(app("apps/a"), vec![]).unwrap();
        assert!(!one.is_pipeline() && one.is_last(0));
        assert_eq!(one.get(0), &app("apps/a"));
    }
}
