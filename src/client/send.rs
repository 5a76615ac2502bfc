//! `disruptor send`: one job to an app, its result on stdout.
//!
//! The job is the argument, or stdin with `-`. JSON is sent as it is; any
//! other text as a JSON string, so `disruptor send ADDR apps/x hello`
//! works. The peer picks a worker somewhere in the mesh (`POST /APP`) and
//! answers with its result, printed as it came.
//!
//! With `--all`, the job runs on one worker of every peer that runs the
//! app (`POST /APP?to=all`); the answer maps each peer id to its result or
//! to `{"error": ...}`. It is printed pretty, and the command fails when
//! any peer answered an error, naming those peers.

use std::time::Duration;

use anyhow::Context;
use serde_json::{Map, Value};

use super::app_arg;
use super::http::{PeerApi, with_job_timeout};
use crate::cli::SendArgs;
use crate::text::printable;

/// How much longer than the job's own timeout the CLI waits for the
/// answer (the peer answers a job that timed out with an error).
const ANSWER_MARGIN: Duration = Duration::from_secs(5);

/// `disruptor send`: runs one job and prints its result.
pub async fn send(args: SendArgs) -> anyhow::Result<()> {
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    let app = app_arg(&args.app)?;
    let body = job_body(read_payload(args.payload)?);
    let server_timeout = args.timeout.unwrap_or(crate::api::DEFAULT_JOB_TIMEOUT);
    let then = super::then_query(&args.then)?;
    let query = match (args.all, then.strip_prefix('&')) {
        (true, _) => "?to=all".to_string(),
        (false, Some(then)) => format!("?{then}"),
        (false, None) => String::new(),
    };
    let query = match &args.reduce {
        Some(reducer) => format!("{query}&reduce={}", app_arg(reducer)?),
        None => query,
    };
    let req = peer
        .post(&format!("/{app}{query}"))
        .timeout(server_timeout + ANSWER_MARGIN)
        .header("content-type", "application/json")
        .body(body);
    let resp = peer
        .send(with_job_timeout(req, args.timeout))
        .await?
        .map_err(|refused| anyhow::anyhow!("{app}: {refused}"))?;
    let failed = super::stream::failed_header(&resp);
    let text = resp.text().await.context("reading the result")?;
    if args.reduce.is_some() {
        println!("{text}");
        if failed > 0 {
            anyhow::bail!("{failed} peers failed and were left out of the reduction");
        }
        return Ok(());
    }
    if args.all {
        print_fan_out(&text)
    } else {
        println!("{text}");
        Ok(())
    }
}

/// The job as given: the argument, or stdin for `-`.
fn read_payload(payload: String) -> anyhow::Result<String> {
    if payload != "-" {
        return Ok(payload);
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
        .context("reading the job from stdin")?;
    Ok(text)
}

/// The request body: JSON goes as JSON; anything else as a JSON string.
fn job_body(payload: String) -> String {
    match serde_json::from_str::<Value>(&payload) {
        Ok(_) => payload,
        Err(_) => Value::String(payload).to_string(),
    }
}

/// Prints the answer of `--all`, pretty; fails when a peer answered an
/// error.
fn print_fan_out(text: &str) -> anyhow::Result<()> {
    let all: Map<String, Value> =
        serde_json::from_str(text).context("the fan-out answer is not a JSON object")?;
    println!("{}", serde_json::to_string_pretty(&all)?);
    let failed = failed_peers(&all);
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} peers answered an error: {}",
            failed.len(),
            all.len(),
            printable(&failed.join(", "))
        );
    }
    Ok(())
}

/// The peers of a fan-out answer whose entry is an error: an object with
/// the one key `error` (a result may be any other JSON).
fn failed_peers(all: &Map<String, Value>) -> Vec<&str> {
    all.iter()
        .filter(|(_, v)| {
            v.as_object()
                .is_some_and(|o| o.len() == 1 && o.contains_key("error"))
        })
        .map(|(id, _)| id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_goes_as_json_and_text_as_a_string() {
        assert_eq!(job_body(r#"{"a": 1}"#.into()), r#"{"a": 1}"#);
        assert_eq!(job_body("[1,2]".into()), "[1,2]");
        assert_eq!(job_body("hello \"you\"".into()), r#""hello \"you\"""#);
    }

    #[test]
    fn only_lone_error_objects_are_failures() {
        let all: Map<String, Value> = serde_json::from_str(
            r#"{"p1": {"error": "boom"}, "p2": {"error": "x", "line": 1}, "p3": 7, "p4": {"error": null}}"#,
        )
        .unwrap();
        assert_eq!(failed_peers(&all), ["p1", "p4"]);
    }
}
