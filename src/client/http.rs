//! Reaching a peer's HTTP API.
//!
//! Every client command makes one [`PeerApi`] from the address on its
//! command line: the peer's base URL (`http://HOST:PORT`) and one
//! `reqwest::Client`, built once, that carries the bearer token of
//! `--token-file` (or `DISRUPTOR_TOKEN_FILE`) on every request. The client
//! itself has only a connect timeout; each request sets the time limit
//! that fits it: [`API_TIMEOUT`] for the small JSON calls of the API, the
//! job's own timeout and a margin for `send`, ten minutes for a bundle's
//! upload, none for a stream (it may run for hours).
//!
//! An error answer is `{"error": "..."}` by the API's convention, but a
//! peer may answer anything: [`Refused`] holds its status and its message,
//! made printable, since `main` prints it.

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use super::UsageError;
use crate::api::ErrorBody;
use crate::cli::Access;
use crate::config;
use crate::text::printable;

/// How long opening a connection to the peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The time limit of one call to the API (`/api/...`).
pub(super) const API_TIMEOUT: Duration = Duration::from_secs(30);

/// Turns `HOST:PORT` or `http://HOST:PORT[/]` into a base URL. Peers serve
/// plain HTTP, so `https://` is refused (exit code 2, as for any address
/// that is not one).
pub fn base_url(addr: &str) -> Result<String, UsageError> {
    let trimmed = addr.trim().trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if trimmed.starts_with("https://") {
        return Err(UsageError(format!(
            "{addr:?}: peers serve plain HTTP (http://HOST:PORT)"
        )));
    }
    config::parse_socket_addr("HTTP_ADDR", rest).map_err(|e| UsageError(e.to_string()))?;
    Ok(format!("http://{rest}"))
}

/// A running peer's HTTP API: where it is, and the one client that talks
/// to it.
pub(super) struct PeerApi {
    base: String,
    http: reqwest::Client,
}

impl PeerApi {
    /// The peer at `addr` (`HOST:PORT` or `http://HOST:PORT`), reached
    /// with the token of `access`, if it names one.
    pub(super) fn new(addr: &str, access: &Access) -> anyhow::Result<PeerApi> {
        let base = base_url(addr)?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .default_headers(auth_headers(access)?)
            .build()?;
        Ok(PeerApi { base, http })
    }

    /// A POST to `path` (it starts with `/`), with no time limit yet.
    pub(super) fn post(&self, path: &str) -> RequestBuilder {
        self.http.post(format!("{}{path}", self.base))
    }

    /// Sends `req`: the answer when it is a success, else the refusal.
    pub(super) async fn send(
        &self,
        req: RequestBuilder,
    ) -> anyhow::Result<Result<Response, Refused>> {
        let resp = req.send().await.with_context(|| {
            format!(
                "cannot reach the peer at {} (is `disruptor peer` running there?)",
                self.base
            )
        })?;
        if resp.status().is_success() {
            Ok(Ok(resp))
        } else {
            Ok(Err(Refused::read(resp).await))
        }
    }

    /// GETs `path` from the API and decodes its JSON; an error answer is an
    /// error (`URL answered STATUS: MESSAGE`).
    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let url = format!("{}{path}", self.base);
        let req = self.http.get(&url).timeout(API_TIMEOUT);
        let resp = match self.send(req).await? {
            Ok(resp) => resp,
            Err(refused) => anyhow::bail!("{url} answered {refused}"),
        };
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{url} did not answer with the expected JSON"))
    }

    /// Sends `req`: its JSON answer decoded, or the refusal.
    pub(super) async fn send_for_json<T: DeserializeOwned>(
        &self,
        req: RequestBuilder,
    ) -> anyhow::Result<Result<T, Refused>> {
        match self.send(req).await? {
            Ok(resp) => Ok(Ok(resp.json().await.context("reading the answer")?)),
            Err(refused) => Ok(Err(refused)),
        }
    }

    /// POSTs `body` as JSON to `path` of the API: the answer decoded, or
    /// the refusal.
    pub(super) async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl serde::Serialize,
    ) -> anyhow::Result<Result<T, Refused>> {
        let req = self.post(path).timeout(API_TIMEOUT).json(body);
        self.send_for_json(req).await
    }
}

/// `req` with the job timeout of `--timeout`, if given, for the peer
/// (which otherwise applies its default).
pub(super) fn with_job_timeout(req: RequestBuilder, timeout: Option<Duration>) -> RequestBuilder {
    match timeout {
        Some(t) => req.header(crate::api::TIMEOUT_HEADER, t.as_millis().to_string()),
        None => req,
    }
}

/// The `Authorization` header for the token in `--token-file`, if one is
/// named: the file's first line, as a bearer token, marked sensitive (so
/// that no debug output shows it).
fn auth_headers(access: &Access) -> Result<HeaderMap, UsageError> {
    let mut headers = HeaderMap::new();
    let Some(path) = &access.token_file else {
        return Ok(headers);
    };
    let text = std::fs::read_to_string(path).map_err(|e| {
        UsageError(format!(
            "cannot read the token file {}: {e}",
            path.display()
        ))
    })?;
    let token = text.lines().next().unwrap_or("").trim();
    let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
        UsageError(format!(
            "{}: the token is not valid header text",
            path.display()
        ))
    })?;
    value.set_sensitive(true);
    headers.insert(AUTHORIZATION, value);
    Ok(headers)
}

/// An error answer from the peer: its status and its message. Shown as
/// `STATUS: MESSAGE`.
#[derive(Debug)]
pub(super) struct Refused {
    /// The answer's status (never a success).
    pub(super) status: StatusCode,
    /// What the peer said, printable.
    pub(super) message: String,
}

impl Refused {
    /// Reads the refusal out of an error answer. A body that cannot be read
    /// counts as empty: the status says enough.
    async fn read(resp: Response) -> Refused {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        Refused {
            status,
            message: error_text(&body),
        }
    }
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

/// The message of an error answer (`{"error": ...}`, or the body as
/// text), printable: a peer may answer anything, and main prints it.
fn error_text(body: &[u8]) -> String {
    let msg = serde_json::from_slice::<ErrorBody>(body)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned());
    printable(&msg).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_are_printable() {
        assert_eq!(error_text(br#"{"error":"no \u001b[31mway\n"}"#), "no way ");
        assert_eq!(error_text(b"plain \x1b[1mtext"), "plain text");
    }

    #[test]
    fn base_urls() {
        assert_eq!(base_url("127.0.0.1:8001").unwrap(), "http://127.0.0.1:8001");
        assert_eq!(
            base_url("http://127.0.0.1:8001/").unwrap(),
            "http://127.0.0.1:8001"
        );
        assert!(base_url("nonsense").is_err());
        assert!(base_url("https://127.0.0.1:1").is_err());
    }
}
