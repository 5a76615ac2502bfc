//! `POST /apps/<app>`: the job endpoint, the path every job of the mesh
//! enters by (and `POST /api/echo`, the same body handling without the
//! mesh, for the benchmark's ceiling).
//!
//! A job request goes through named steps:
//! 1. `JobRequest::check`: what the request asks for — its query
//!    (`JobParams`), the app its path names and its timeout header. A bad
//!    one is answered `400` and never becomes a job (the job logs and
//!    metrics do not see it).
//! 2. An NDJSON body is handed whole to [`stream`] (`start_stream`).
//! 3. Otherwise `run_job`: the body is read and checked
//!    (`read_job_body`), then run on one worker through the
//!    [`Dispatcher`](crate::dispatch::Dispatcher) (which fails over to
//!    another when a peer or worker is lost), or with `?to=all` once on
//!    every peer running the app ([`fanout`]). [`observe`] sees it whole.
//! 4. `answer`: the result or the error, with the headers that say how
//!    it went: the peer that ran it, the attempts, the job's id, and
//!    `Retry-After` when the mesh is saturated.
//!
//! This is the hot path (the benchmark measures jobs per second through
//! it): no boxing, lock or allocation per job beyond what the job needs.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use tokio::time::Instant;

use super::error::ApiError;
use super::observe::{self, Outcome, Source};
use super::stream::pipeline::{self, MAX_STAGES, Stages};
use super::stream::reduce;
use super::stream::{self, StreamOptions};
use super::{Ctx, HttpConfig};
use crate::apps::AppName;
use crate::dispatch::{Policy, fanout};
use crate::error::JobError;
use crate::json::one_line;
use crate::network::MAX_JOB_TIMEOUT;
use crate::obs::{metrics, stats};

pub use crate::api::{
    ATTEMPTS_HEADER, DEFAULT_JOB_TIMEOUT, JOB_ID_HEADER, PEER_HEADER, TIMEOUT_HEADER,
};

/// `POST /apps/<path>`: one JSON job, answered with the worker's result;
/// with `?to=all`, the job on every peer running the app; with an NDJSON
/// body, a stream of jobs (see [`stream`]).
pub(super) async fn job(
    State(s): State<Ctx>,
    Path(path): Path<String>,
    params: Result<Query<JobParams>, QueryRejection>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let resp = match JobRequest::check(&s, &path, params, raw.as_deref(), &headers) {
        Err(e) => e.into_response(),
        Ok(req) if is_ndjson(&headers) => match start_stream(&s, req, body).await {
            Ok(resp) => resp,
            Err(e) => e.into_response(),
        },
        Ok(req) => run_job(&s, req, &headers, body).await,
    };
    metrics::response(resp.status().as_u16());
    resp
}

/// What a job request asks for, checked.
struct JobRequest {
    app: AppName,
    /// `app`, then each `then=` app; none without a `then` (most jobs:
    /// no allocation for it).
    pipeline: Option<Stages>,
    timeout: Duration,
    query: JobQuery,
}

impl JobRequest {
    /// Step 1: the query, then the app the path names and the timeout
    /// header.
    fn check(
        s: &Ctx,
        path: &str,
        params: Result<Query<JobParams>, QueryRejection>,
        raw: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<JobRequest, ApiError> {
        let query = match params {
            Ok(Query(p)) => p.resolve(s.dispatcher.policy()),
            // Only a repeated parameter gets here: bad values are kept
            // (see `JobParams`).
            Err(rejection) => Err(rejection.body_text()),
        }
        .map_err(ApiError::bad_request)?;
        let app = AppName::parse(&format!("apps/{path}"))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let pipeline = pipeline_of(&app, raw).map_err(ApiError::bad_request)?;
        if pipeline.is_some() && query.to_all {
            return Err(ApiError::bad_request(
                "to=all runs one job on every peer; it does not take `then` stages",
            ));
        }
        let timeout = job_timeout(headers)?;
        Ok(JobRequest {
            app,
            pipeline,
            timeout,
            query,
        })
    }
}

impl JobRequest {
    /// Its stages: the app alone, or the pipeline.
    fn stages(&self) -> Stages {
        self.pipeline
            .clone()
            .unwrap_or_else(|| Stages::new(self.app.clone(), vec![]).expect("one stage"))
    }
}

/// The pipeline a request names, if it names one: its app, then each
/// `then=APP` of its query in order (repeated, which the typed query cannot
/// hold).
fn pipeline_of(app: &AppName, raw: Option<&str>) -> Result<Option<Stages>, String> {
    // Most jobs: no query, or none that can name a stage.
    let Some(raw) = raw.filter(|r| r.contains("then") || r.contains('%')) else {
        return Ok(None);
    };
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    let mut then = Vec::new();
    for pair in raw.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if decode(key) != "then" {
            continue;
        }
        if then.len() == MAX_STAGES {
            break; // one too many already: Stages::new says so
        }
        let value = decode(value);
        then.push(AppName::parse(&value).map_err(|e| format!("then={value:?}: {e}"))?);
    }
    if then.is_empty() {
        return Ok(None);
    }
    Stages::new(app.clone(), then).map(Some)
}

/// Every stage of `stages` runs somewhere (waiting like a job for one
/// that is expected), or the first that does not, named.
async fn every_stage_runs(s: &Ctx, stages: &Stages, deadline: Instant) -> Result<(), JobError> {
    for (k, app) in stages.iter().enumerate() {
        if let Err(e) = s.dispatcher.everyone_running(app, deadline).await {
            if !stages.is_pipeline() {
                return Err(e);
            }
            return Err(pipeline::at_stage(k, app, e));
        }
    }
    Ok(())
}

/// The job's timeout: [`TIMEOUT_HEADER`], or [`DEFAULT_JOB_TIMEOUT`].
fn job_timeout(headers: &HeaderMap) -> Result<Duration, ApiError> {
    let Some(v) = headers.get(TIMEOUT_HEADER) else {
        return Ok(DEFAULT_JOB_TIMEOUT);
    };
    let max = MAX_JOB_TIMEOUT.as_millis() as u64;
    v.to_str()
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| (1..=max).contains(ms))
        .map(Duration::from_millis)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{TIMEOUT_HEADER} must be a whole number of milliseconds from 1 to {max}"
            ))
        })
}

/// Step 2: an NDJSON body, handed whole to [`stream`] once some peer is
/// known to run the app (an app that runs nowhere is refused at once
/// rather than line by line).
async fn start_stream(s: &Ctx, req: JobRequest, body: Body) -> Result<Response, ApiError> {
    if req.query.to_all {
        return Err(ApiError::bad_request(
            "to=all sends one job to every peer; it does not take an NDJSON stream",
        ));
    }
    let deadline = Instant::now() + req.timeout;
    let stages = req.stages();
    every_stage_runs(s, &stages, deadline).await?;
    if let Some(reducer) = &req.query.reduce {
        s.dispatcher
            .everyone_running(reducer, deadline)
            .await
            .map_err(|e| reduce::reducer_error(reducer, e))?;
    }
    let opts = StreamOptions {
        ordered: req.query.ordered,
        window: req.query.window,
        timeout: req.timeout,
        policy: req.query.policy,
        max_line: s.config.max_job_bytes,
        idle_timeout: s.config.body_timeout,
    };
    let Some(reducer) = req.query.reduce else {
        return Ok(stream::respond(s.dispatcher.clone(), stages, body, opts).await);
    };
    let r = stream::reduced(s.dispatcher.clone(), stages, reducer, body, opts).await?;
    Ok(reduced_answer(r.answer, r.count, r.failed))
}

/// The answer of a reduced stream or fan-out: the reducer's, with how many
/// results it reduced and how many failed and were left out.
fn reduced_answer(answer: String, count: u64, failed: u64) -> Response {
    let mut resp = Response::new(Body::from(answer));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(crate::api::REDUCED_HEADER, HeaderValue::from(count));
    h.insert(crate::api::FAILED_HEADER, HeaderValue::from(failed));
    resp
}

/// A job's result and the peer that ran it (`None`: fan-out, every peer
/// running the app).
type Answered = (String, Option<String>);

/// Step 3: the job read, run and observed, then answered.
async fn run_job(s: &Ctx, req: JobRequest, headers: &HeaderMap, body: Body) -> Response {
    let job_id = stats::new_job_id();
    // A reduced fan-out: results reduced, peers failed.
    let mut counts = None;
    let work = async {
        tracing::debug!("job received");
        let payload: Arc<str> = match read_job_body(&s.config, headers, body).await {
            Ok(p) => p.into(),
            Err(e) => return Outcome::refused(e),
        };
        if req.query.to_all {
            let answers = fanout::everywhere(&s.dispatcher, &req.app, payload, req.timeout, job_id);
            let answers = match answers.await {
                Ok(a) => a,
                Err(e) => return Outcome::refused(e),
            };
            let Some(reducer) = &req.query.reduce else {
                return Outcome::unrouted(Ok((fan_out_json(&answers), None)));
            };
            let policy = req.query.policy;
            let mut r = reduce::Reducer::new(&s.dispatcher, reducer.clone(), policy, req.timeout);
            for a in &answers {
                if let Ok(result) = &a.result
                    && let Err(e) = r.add(result).await
                {
                    return Outcome::refused(e);
                }
            }
            let failed = answers.iter().filter(|a| a.result.is_err()).count() as u64;
            counts = Some((r.count, failed));
            return Outcome::unrouted(r.finish().await.map(|answer| (answer, None)));
        }
        if req.query.reduce.is_some() {
            return Outcome::refused(JobError::BadRequest(
                "reduce takes the results of a stream (an NDJSON body) or of a fan-out (to=all), not of one job".into(),
            ));
        }
        let (app, policy) = (&req.app, req.query.policy);
        if let Some(stages) = &req.pipeline {
            if let Err(e) = every_stage_runs(s, stages, Instant::now() + req.timeout).await {
                return Outcome::refused(e);
            }
            let run =
                pipeline::run_job(&s.dispatcher, stages, payload, req.timeout, policy, job_id);
            let result = run
                .await
                .map_err(|(k, e)| pipeline::at_stage(k, stages.get(k), e));
            return Outcome::unrouted(result.map(|r| (r, None)));
        }
        let out = s.dispatcher.run(app, payload, req.timeout, policy, job_id);
        Outcome::from(out.await).map(|done| (done.result, Some(done.peer)))
    };
    let outcome = observe::job(&req.app, job_id, Source::Request, work).await;
    let mut resp = answer(outcome, job_id);
    if let Some((count, failed)) = counts
        && resp.status() == StatusCode::OK
    {
        let h = resp.headers_mut();
        h.insert(crate::api::REDUCED_HEADER, HeaderValue::from(count));
        h.insert(crate::api::FAILED_HEADER, HeaderValue::from(failed));
    }
    resp
}

/// Step 4: the response to a job.
fn answer(outcome: Outcome<Answered>, job_id: u64) -> Response {
    let mut resp = match outcome.result {
        Ok((result, peer)) => {
            let mut resp = Response::new(Body::from(result));
            let h = resp.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            if let Some(v) = peer.and_then(|p| HeaderValue::from_str(&p).ok()) {
                h.insert(PEER_HEADER, v);
            }
            resp
        }
        Err(e) => ApiError::from(e).into_response(),
    };
    let saturated = resp.status() == StatusCode::SERVICE_UNAVAILABLE;
    let h = resp.headers_mut();
    if outcome.attempts > 0 {
        h.insert(ATTEMPTS_HEADER, HeaderValue::from(outcome.attempts));
    }
    if saturated {
        // Tell the client when to come back instead of queueing it.
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if let Ok(v) = HeaderValue::from_str(&stats::job_id_text(job_id)) {
        h.insert(JOB_ID_HEADER, v);
    }
    resp
}

/// The answer to a fanned-out job: one JSON object, each peer's result or
/// `{"error": ...}` under its id, in the order the peers were asked.
fn fan_out_json(answers: &[fanout::Answer]) -> String {
    let mut out = String::from("{");
    for (i, a) in answers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::Value::String(a.peer.clone()).to_string());
        out.push(':');
        match &a.result {
            Ok(result) => out.push_str(result),
            Err(e) => out.push_str(&serde_json::json!({ "error": e.to_string() }).to_string()),
        }
    }
    out.push('}');
    out
}

/// Whether the request's body is a stream of jobs.
fn is_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            let mime = ct.split(';').next().unwrap_or("").trim();
            mime.eq_ignore_ascii_case(stream::NDJSON)
        })
}

/// A single job's body, size-checked, as one line of JSON.
async fn read_job_body(
    config: &HttpConfig,
    headers: &HeaderMap,
    body: Body,
) -> Result<String, JobError> {
    let max = config.max_job_bytes;
    let too_large = || {
        JobError::TooLarge(format!(
            "the job is larger than the limit of {max} bytes (--max-job-bytes)"
        ))
    };
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(too_large());
    }
    let body_timeout = config.body_timeout;
    let bytes = tokio::time::timeout(body_timeout, axum::body::to_bytes(body, max))
        .await
        .map_err(|_| {
            JobError::BadRequest(format!(
                "the request body did not arrive within {body_timeout:?}"
            ))
        })?
        .map_err(|e| {
            if std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                too_large()
            } else {
                JobError::BadRequest(format!("could not read the request body: {e}"))
            }
        })?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| JobError::BadRequest("the body is not UTF-8".into()))?;
    one_line(text).map_err(|e| {
        JobError::BadRequest(format!(
            "the body is not valid JSON ({e}); send text as a JSON string (\"like this\")"
        ))
    })
}

/// `POST /api/echo`: answers a JSON body with itself, through the same body
/// handling as a job ([`read_job_body`]: the size limit, the body deadline,
/// the JSON check) but without dispatch. The benchmark's ceiling.
pub(super) async fn echo(State(s): State<Ctx>, headers: HeaderMap, body: Body) -> Response {
    echo_body(&s.config, &headers, body).await
}

async fn echo_body(config: &HttpConfig, headers: &HeaderMap, body: Body) -> Response {
    match read_job_body(config, headers, body).await {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// The query of a job request, checked.
#[derive(Debug, PartialEq)]
struct JobQuery {
    /// `dispatch=random|least-loaded` overrides the peer's `--dispatch`.
    policy: Policy,
    /// `to=all`: fan-out.
    to_all: bool,
    /// Streams: `ordered=true|false`.
    ordered: bool,
    /// Streams: `window=N`, lines in flight at most.
    window: usize,
    /// Streams and fan-out: `reduce=APP`, the app their results go to.
    reduce: Option<AppName>,
}

/// A parameter's value: parsed, or why it is refused.
type Param<T> = Option<Result<T, String>>;

/// The query of a job request as axum's [`Query`] reads it (decoded, and
/// unknown parameters ignored).
///
/// A bad value is kept with its message rather than failing the
/// extraction, so the answer is this endpoint's JSON `400` with a message
/// naming the parameter (axum's own rejection is plain text).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct JobParams {
    #[serde(deserialize_with = "dispatch")]
    dispatch: Param<Policy>,
    #[serde(deserialize_with = "to")]
    to: Param<()>,
    #[serde(deserialize_with = "ordered")]
    ordered: Param<bool>,
    #[serde(deserialize_with = "window")]
    window: Param<usize>,
    #[serde(deserialize_with = "reduce")]
    reduce: Param<AppName>,
}

impl JobParams {
    /// The query, with `default` as the policy when it names none; the
    /// first bad value's message otherwise.
    fn resolve(self, default: Policy) -> Result<JobQuery, String> {
        Ok(JobQuery {
            policy: self.dispatch.transpose()?.unwrap_or(default),
            to_all: self.to.transpose()?.is_some(),
            ordered: self.ordered.transpose()?.unwrap_or(true),
            window: (self.window.transpose()?).unwrap_or(stream::DEFAULT_WINDOW),
            reduce: self.reduce.transpose()?,
        })
    }
}

fn reduce<'de, D: Deserializer<'de>>(d: D) -> Result<Param<AppName>, D::Error> {
    param(d, |v| {
        AppName::parse(v).map_err(|e| format!("reduce={v:?}: {e}"))
    })
}

fn dispatch<'de, D: Deserializer<'de>>(d: D) -> Result<Param<Policy>, D::Error> {
    param(d, str::parse)
}

fn to<'de, D: Deserializer<'de>>(d: D) -> Result<Param<()>, D::Error> {
    param(d, |v| match v {
        "all" => Ok(()),
        v => Err(format!("to={v:?}: the only target is \"all\"")),
    })
}

fn ordered<'de, D: Deserializer<'de>>(d: D) -> Result<Param<bool>, D::Error> {
    param(d, |v| {
        v.parse()
            .map_err(|_| format!("ordered={v:?}: expected true or false"))
    })
}

fn window<'de, D: Deserializer<'de>>(d: D) -> Result<Param<usize>, D::Error> {
    param(d, |v| {
        v.parse()
            .ok()
            .filter(|w| (1..=stream::MAX_WINDOW).contains(w))
            .ok_or_else(|| format!("window={v:?}: expected 1 to {}", stream::MAX_WINDOW))
    })
}

/// A parameter's value through `parse`, borrowed from the query (no
/// allocation unless it is refused).
fn param<'de, D, T>(d: D, parse: fn(&str) -> Result<T, String>) -> Result<Param<T>, D::Error>
where
    D: Deserializer<'de>,
{
    struct Parse<T>(fn(&str) -> Result<T, String>);
    impl<T> Visitor<'_> for Parse<T> {
        type Value = Result<T, String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a query parameter")
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok((self.0)(v))
        }
    }
    d.deserialize_str(Parse(parse)).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;

    fn query(q: &str) -> Result<JobQuery, String> {
        let uri: axum::http::Uri = format!("/apps/x{q}").parse().unwrap();
        match Query::<JobParams>::try_from_uri(&uri) {
            Ok(Query(p)) => p.resolve(Policy::Random),
            Err(rejection) => Err(rejection.body_text()),
        }
    }

    #[test]
    fn a_pipeline_is_named_by_repeated_then_parameters() {
        let app = AppName::parse("apps/a").unwrap();
        let names = |raw: Option<&str>| {
            pipeline_of(&app, raw)
                .map(|p| p.map(|s| s.iter().map(|a| a.to_string()).collect::<Vec<_>>()))
        };
        assert_eq!(names(None), Ok(None));
        assert_eq!(names(Some("window=4&ordered=false")), Ok(None));
        assert_eq!(
            names(Some("then=apps/b&window=4&then=apps%2Fc")),
            Ok(Some(vec![
                "apps/a".into(),
                "apps/b".into(),
                "apps/c".into()
            ]))
        );
        // An encoded key is a key.
        assert_eq!(
            names(Some("t%68en=apps/b")),
            Ok(Some(vec!["apps/a".into(), "apps/b".into()]))
        );
        let e = names(Some("then=../etc")).unwrap_err();
        assert!(e.starts_with("then=\"../etc\""), "{e}");
        let most = "&then=apps/b".repeat(MAX_STAGES - 1);
        assert_eq!(names(Some(&most)).unwrap().unwrap().len(), MAX_STAGES);
        let more = "&then=apps/b".repeat(MAX_STAGES);
        assert!(
            names(Some(&more))
                .unwrap_err()
                .contains("at most 16 stages")
        );
    }

    #[test]
    fn the_query_is_typed_and_bad_values_say_which() {
        let defaults = JobQuery {
            policy: Policy::Random,
            to_all: false,
            ordered: true,
            window: stream::DEFAULT_WINDOW,
            reduce: None,
        };
        assert_eq!(query(""), Ok(defaults));
        assert_eq!(query("?unknown=1&"), query(""));
        assert_eq!(
            query("?dispatch=least-loaded&to=all&ordered=false&window=7"),
            Ok(JobQuery {
                policy: Policy::LeastLoaded,
                to_all: true,
                ordered: false,
                window: 7,
                reduce: None,
            })
        );
        // Values are decoded as a query's values are.
        assert_eq!(
            query("?dispatch=least%2Dloaded").map(|q| q.policy),
            Ok(Policy::LeastLoaded)
        );
        assert_eq!(
            query("?dispatch=fastest"),
            Err("unknown dispatch policy \"fastest\" (random or least-loaded)".into())
        );
        assert_eq!(
            query("?to=some"),
            Err("to=\"some\": the only target is \"all\"".into())
        );
        assert_eq!(
            query("?to"),
            Err("to=\"\": the only target is \"all\"".into())
        );
        assert_eq!(
            query("?ordered=yes"),
            Err("ordered=\"yes\": expected true or false".into())
        );
        for w in ["0", "4097", "x", ""] {
            assert_eq!(
                query(&format!("?window={w}")),
                Err(format!("window={w:?}: expected 1 to 4096")),
            );
        }
        assert!(query("?window=2&window=3").is_err(), "repeated");
    }

    #[test]
    fn the_timeout_header_is_bounded() {
        let mut h = HeaderMap::new();
        assert_eq!(job_timeout(&h), Ok(DEFAULT_JOB_TIMEOUT));
        h.insert(TIMEOUT_HEADER, HeaderValue::from_static(" 250 "));
        assert_eq!(job_timeout(&h), Ok(Duration::from_millis(250)));
        for bad in ["0", "-1", "1.5", "99999999999"] {
            h.insert(TIMEOUT_HEADER, HeaderValue::from_static(bad));
            let e = job_timeout(&h).unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    fn config(body_timeout: Duration) -> HttpConfig {
        HttpConfig {
            max_job_bytes: 16,
            max_connections: 1,
            header_timeout: Duration::from_secs(1),
            body_timeout,
        }
    }

    async fn echo(headers: &HeaderMap, body: Body) -> (StatusCode, String) {
        let resp = echo_body(&config(Duration::from_millis(50)), headers, body).await;
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// The ceiling's body handling is the job's: before, a body that never
    /// completed held `/api/echo` (and its connection) forever.
    #[tokio::test]
    async fn echo_reads_its_body_as_a_job_does() {
        let h = HeaderMap::new();
        assert_eq!(
            echo(&h, Body::from(r#"{"a": [1, 2]}"#)).await,
            (StatusCode::OK, r#"{"a": [1, 2]}"#.into())
        );
        let (status, text) = echo(&h, Body::from("[1,")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        let (status, text) = echo(&h, Body::from("[".repeat(17))).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{text}");
        let stalled =
            Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>());
        let answer = tokio::time::timeout(Duration::from_secs(5), echo(&h, stalled)).await;
        let (status, text) = answer.expect("a stalled body is answered at its deadline");
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(text.contains("did not arrive within 50ms"), "{text}");
    }

    #[test]
    fn fan_out_answers_are_one_object_in_order() {
        let answers = [
            fanout::Answer {
                peer: "b\"".into(),
                result: Ok("[1]".into()),
            },
            fanout::Answer {
                peer: "a".into(),
                result: Err(JobError::Timeout("late".into())),
            },
        ];
        assert_eq!(
            fan_out_json(&answers),
            r#"{"b\"":[1],"a":{"error":"late"}}"#
        );
        assert_eq!(fan_out_json(&[]), "{}");
    }
}
