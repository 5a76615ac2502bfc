//! Collation: `?reduce=APP` gives every result of a stream (or of a
//! fan-out) to one worker of a reducer app, and answers with what it
//! makes of them.
//!
//! The reducer's job is `{"results": [...]}`. A long stream's results go
//! in parts of at most [`REDUCE_BATCH`] results and [`REDUCE_BYTES`]
//! bytes, each part's job carrying the reducer's answer to the parts
//! before as `"partial"` (`{"results": [...], "partial": ...}`); its
//! answer to the last part is the answer. So memory holds one part,
//! whatever the length of the stream, and a reducer is a fold: it must
//! give the same answer however the results are cut into parts. Results
//! come in the order they complete.
//!
//! A stream's output is read here (see [`super::flow`]'s unordered
//! format) instead of being written to the client.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;

use super::pipeline::at_stage;
use crate::apps::AppName;
use crate::dispatch::{Dispatcher, Policy};
use crate::error::JobError;
use crate::obs::stats;

/// Most results in one reducer job.
pub const REDUCE_BATCH: usize = 1000;
/// Most bytes of results in one reducer job (a larger result goes alone).
pub const REDUCE_BYTES: usize = 256 * 1024;

/// The reducer's jobs, made and run part by part.
pub struct Reducer<'a> {
    d: &'a Dispatcher,
    app: AppName,
    policy: Policy,
    timeout: Duration,
    /// The reducer's answer to the parts so far.
    partial: Option<String>,
    /// The part being gathered: results joined by commas.
    part: String,
    in_part: usize,
    /// Results reduced or in the part.
    pub count: u64,
}

impl<'a> Reducer<'a> {
    /// A reducer running `app` through `d`, each of its jobs with
    /// `timeout`.
    pub fn new(d: &'a Dispatcher, app: AppName, policy: Policy, timeout: Duration) -> Self {
        Reducer {
            d,
            app,
            policy,
            timeout,
            partial: None,
            part: String::new(),
            in_part: 0,
            count: 0,
        }
    }

    /// One more result (a JSON value); runs the reducer on the part when
    /// the part is full.
    pub async fn add(&mut self, result: &str) -> Result<(), JobError> {
        if self.in_part > 0 && self.part.len() + result.len() > REDUCE_BYTES {
            self.reduce().await?;
        }
        if self.in_part > 0 {
            self.part.push(',');
        }
        self.part.push_str(result);
        self.in_part += 1;
        self.count += 1;
        if self.in_part >= REDUCE_BATCH || self.part.len() >= REDUCE_BYTES {
            self.reduce().await?;
        }
        Ok(())
    }

    /// The reducer's answer to every result added (its answer to an empty
    /// list when there were none).
    pub async fn finish(mut self) -> Result<String, JobError> {
        if self.in_part > 0 || self.partial.is_none() {
            self.reduce().await?;
        }
        Ok(self.partial.expect("reduced above"))
    }

    /// Runs the reducer on the part (and the partial answer before it).
    async fn reduce(&mut self) -> Result<(), JobError> {
        let job = reducer_job(&self.part, self.partial.as_deref());
        self.part.clear();
        self.in_part = 0;
        let id = stats::new_job_id();
        let out = self
            .d
            .run(&self.app, Arc::from(job), self.timeout, self.policy, id)
            .await;
        let done = out.result.map_err(|e| reducer_error(&self.app, e))?;
        self.partial = Some(done.result);
        Ok(())
    }
}

/// `{"results": [PART]}`, with `"partial"` when there is one.
fn reducer_job(part: &str, partial: Option<&str>) -> String {
    match partial {
        None => format!("{{\"results\":[{part}]}}"),
        Some(p) => format!("{{\"results\":[{part}],\"partial\":{p}}}"),
    }
}

/// `e` of the reducer, its message naming it.
pub fn reducer_error(app: &AppName, e: JobError) -> JobError {
    // The same wording as a stage's, for "reduce" instead of a number.
    let e = at_stage(0, app, e);
    let rename = |m: String| m.replacen("stage 1 (", "reduce (", 1);
    match e {
        JobError::BadRequest(m) => JobError::BadRequest(rename(m)),
        JobError::NotRunning(m) => JobError::NotRunning(rename(m)),
        JobError::TooLarge(m) => JobError::TooLarge(rename(m)),
        JobError::WorkerCrashed(m) => JobError::WorkerCrashed(rename(m)),
        JobError::BadOutput(m) => JobError::BadOutput(rename(m)),
        JobError::Timeout(m) => JobError::Timeout(rename(m)),
        JobError::Busy(m) => JobError::Busy(rename(m)),
        JobError::Unreachable(m) => JobError::Unreachable(rename(m)),
    }
}

/// One line of a stream's unordered output (the format [`super::flow`]
/// writes), as the reducer sees it.
#[derive(Debug, PartialEq)]
pub enum Seen<'a> {
    /// `{"line":n,"result":R}`: R.
    Result(&'a str),
    /// `{"line":n,...,"error":...}`: a line (or item) that failed.
    Failed,
    /// `{"stream_error":...}`: why the input broke off.
    Broken(String),
}

/// Reads one output line (with its `\n`).
pub fn seen(line: &Bytes) -> Seen<'_> {
    let text = std::str::from_utf8(line).unwrap_or("").trim_end();
    if let Some(rest) = text.strip_prefix("{\"line\":") {
        let rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        if let Some(r) = rest
            .strip_prefix(",\"result\":")
            .and_then(|r| r.strip_suffix('}'))
        {
            return Seen::Result(r);
        }
        return Seen::Failed;
    }
    let why = serde_json::from_str::<serde_json::Value>(text)
        .ok()
        .and_then(|v| {
            v.get("stream_error")
                .and_then(|w| w.as_str().map(str::to_string))
        })
        .unwrap_or_else(|| "the stream broke off".into());
    Seen::Broken(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reducers_job_carries_the_part_and_the_partial() {
        assert_eq!(reducer_job("", None), r#"{"results":[]}"#);
        assert_eq!(reducer_job("1,[2]", None), r#"{"results":[1,[2]]}"#);
        assert_eq!(
            reducer_job("3", Some(r#"{"sum":3}"#)),
            r#"{"results":[3],"partial":{"sum":3}}"#
        );
        let e = reducer_error(
            &AppName::parse("apps/sum").unwrap(),
            JobError::Timeout("slow".into()),
        );
        assert_eq!(e, JobError::Timeout("reduce (apps/sum): slow".into()));
    }

    #[test]
    fn output_lines_are_read_back_exactly() {
        let b = |s: &str| Bytes::from(s.to_string());
        assert_eq!(
            seen(&b("{\"line\":12,\"result\":{\"a\":[1,\"}\"]}}\n")),
            Seen::Result("{\"a\":[1,\"}\"]}")
        );
        assert_eq!(
            seen(&b("{\"line\":1,\"result\":null}\n")),
            Seen::Result("null")
        );
        assert_eq!(seen(&b("{\"line\":3,\"error\":\"x\"}\n")), Seen::Failed);
        assert_eq!(
            seen(&b("{\"line\":3,\"stage\":\"apps/a\",\"error\":\"x\"}\n")),
            Seen::Failed
        );
        assert_eq!(
            seen(&b("{\"stream_error\":\"stalled\"}\n")),
            Seen::Broken("stalled".into())
        );
    }
}
