//! The HTTP endpoint's front door: what a request must look like before any
//! handler sees it.
//!
//! A peer's API starts and stops programs on every machine of the mesh, so
//! a web page open in the operator's browser must not be able to drive it.
//! Browsers let any page send "simple" cross-site requests (a `POST` with
//! `text/plain`, a form encoding or no content type) without asking the
//! server first, and DNS rebinding lets a page read answers by naming the
//! peer's address under the attacker's own host name. The rules:
//!
//! 1. **Host**: a request naming a host (the `Host` header) must name an IP
//!    address, `localhost`, or a name given with `--http-host`. A rebinding
//!    page can only name its own domain, so it is refused.
//! 2. **Origin**: a state-changing request (anything but `GET`/`HEAD`) that
//!    says where it comes from (`Origin`, which browsers send on every
//!    cross-site and same-site `POST`) must come from the peer's own origin
//!    (`http://` + its `Host`). `Sec-Fetch-Site: cross-site` is refused too.
//! 3. **Content type**: a `POST` must carry one of the types the API takes
//!    (`application/json`, `application/x-ndjson`, `application/zstd`),
//!    none of which a browser may send cross-site without a preflight
//!    (which this server never approves).
//! 4. **Token** (`--http-token-file`, required off loopback): every request
//!    but `GET /healthz` carries `Authorization: Bearer <token>`. A browser
//!    opens the dashboard once with `?token=...`; the answer sets a cookie
//!    (`HttpOnly`, `SameSite=Strict`) and redirects to a URL without it.
//!    The cookie is accepted for `GET`s only: changes need the header.
//!
//! The CLI and `curl -H 'content-type: application/json'` pass all four.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};

use crate::http::error_response;

/// Content types a `POST` may carry.
pub const ACCEPTED_TYPES: [&str; 3] = [
    "application/json",
    "application/x-ndjson",
    "application/zstd",
];
/// Name of the dashboard's token cookie.
const TOKEN_COOKIE: &str = "disruptor_token";

/// What the guard checks requests against.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// Host names accepted besides IP literals and `localhost` (lowercase).
    pub hosts: Vec<String>,
    /// The bearer token, if one is required.
    pub token: Option<String>,
}

/// Why a request was refused (also the `reason` label of
/// `disruptor_http_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Host,
    Origin,
    ContentType,
    Token,
}

impl Refused {
    fn reason(self) -> &'static str {
        match self {
            Refused::Host => "host",
            Refused::Origin => "origin",
            Refused::ContentType => "content_type",
            Refused::Token => "token",
        }
    }
}

/// The guard as a tower layer in front of the router.
///
/// Hand-written rather than `axum::middleware::from_fn`: that one boxes
/// every request's future and clones the inner service per call, which
/// showed in the job benchmark's profile (a few percent of a peer's CPU at
/// 64 clients). This one answers a refused request at once and otherwise
/// returns the inner service's own future, unboxed.
#[derive(Clone)]
pub struct GuardLayer(Arc<Guard>);

impl GuardLayer {
    /// The layer that checks requests against `guard`.
    pub fn new(guard: Guard) -> GuardLayer {
        GuardLayer(Arc::new(guard))
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = GuardService<S>;

    fn layer(&self, inner: S) -> GuardService<S> {
        GuardService {
            guard: self.0.clone(),
            inner,
        }
    }
}

/// See [`GuardLayer`].
#[derive(Clone)]
pub struct GuardService<S> {
    guard: Arc<Guard>,
    inner: S,
}

impl<S> tower::Service<Request> for GuardService<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<std::future::Ready<Result<Response, S::Error>>, S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        use futures::future::Either;
        match self.guard.answer(&req) {
            Some(resp) => Either::Left(std::future::ready(Ok(resp))),
            None => Either::Right(self.inner.call(req)),
        }
    }
}

impl Guard {
    /// The answer for a request the guard stops (a refusal, or the token
    /// login's redirect); `None` lets it through.
    fn answer(&self, req: &Request) -> Option<Response> {
        if let Err((why, message)) = self.verdict(req.method(), req.uri(), req.headers()) {
            crate::obs::metrics::METRICS
                .http_refused
                .get_or_create(&crate::obs::metrics::ReasonLabel {
                    reason: why.reason(),
                })
                .inc();
            tracing::debug!(method = %req.method(), path = %req.uri().path(), reason = why.reason(), "HTTP request refused");
            let status = match why {
                Refused::Token => StatusCode::UNAUTHORIZED,
                Refused::ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                Refused::Host | Refused::Origin => StatusCode::FORBIDDEN,
            };
            let mut resp = error_response(status, message);
            if why == Refused::Token {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"disruptor\""),
                );
            }
            return Some(resp);
        }
        self.token_login(req)
    }
}

impl Guard {
    fn verdict(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), (Refused, String)> {
        let path = uri.path();
        let host = header_str(headers, header::HOST.as_str());
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Err((
                Refused::Host,
                format!(
                    "this peer does not answer to the host name {:?} (start it with --http-host NAME to allow one)",
                    printable(host)
                ),
            ));
        }
        let safe = matches!(*method, Method::GET | Method::HEAD);
        if !safe {
            self.check_origin(headers, host)?;
        }
        if *method == Method::POST && !post_type_ok(headers) {
            return Err((
                Refused::ContentType,
                format!(
                    "a POST must say what it carries: content-type {} (a browser form or text/plain is refused)",
                    ACCEPTED_TYPES.join(", ")
                ),
            ));
        }
        if let Some(token) = &self.token
            && !(path == "/healthz" && safe)
            && !token_presented(token, headers, safe, uri)
        {
            return Err((
                Refused::Token,
                "this peer requires its HTTP token: send `Authorization: Bearer <token>` (the CLI: --token-file FILE)".into(),
            ));
        }
        Ok(())
    }

    /// Rule 1: IP literals, `localhost` and the names given.
    fn host_allowed(&self, host: &str) -> bool {
        let name = strip_port(host).to_ascii_lowercase();
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok() || name == "localhost" || self.hosts.contains(&name)
    }

    /// Rule 2: a change comes from this peer's own origin, or says nothing.
    fn check_origin(
        &self,
        headers: &HeaderMap,
        host: Option<&str>,
    ) -> Result<(), (Refused, String)> {
        if header_str(headers, "sec-fetch-site")
            .is_some_and(|s| s.eq_ignore_ascii_case("cross-site"))
        {
            return Err((
                Refused::Origin,
                "cross-site requests may not change anything here".into(),
            ));
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        let own = host.map(|h| format!("http://{}", h.to_ascii_lowercase()));
        let same = origin
            .to_str()
            .ok()
            .is_some_and(|o| Some(o.to_ascii_lowercase()) == own);
        if same {
            Ok(())
        } else {
            Err((
                Refused::Origin,
                format!(
                    "requests from the web origin {:?} may not change anything here",
                    printable(&String::from_utf8_lossy(origin.as_bytes()))
                ),
            ))
        }
    }

    /// `GET /?token=...` with the right token (the verdict checked it):
    /// set the cookie and send the browser to `/`, so the token leaves the
    /// address bar and the history.
    fn token_login(&self, req: &Request) -> Option<Response> {
        let token = self.token.as_ref()?;
        if req.uri().path() != "/" || query_token(req.uri()).is_none() {
            return None;
        }
        // Percent-encoded: a token may hold `;` or `,`, which end a cookie.
        let value = utf8_percent_encode(token, COOKIE_VALUE);
        let cookie = format!("{TOKEN_COOKIE}={value}; HttpOnly; SameSite=Strict; Path=/");
        let mut resp = (StatusCode::SEE_OTHER, [(header::LOCATION, "/")]).into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            resp.headers_mut().insert(header::SET_COOKIE, v);
        }
        Some(resp)
    }
}

/// Rule 4: the bearer header, or for a `GET` the cookie or, on the
/// dashboard's page, `?token=`.
fn token_presented(token: &str, headers: &HeaderMap, safe: bool, uri: &Uri) -> bool {
    let bearer = header_str(headers, header::AUTHORIZATION.as_str())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same_secret(t.trim(), token));
    let cookie_ok = || {
        cookie(headers, TOKEN_COOKIE)
            .and_then(decoded)
            .is_some_and(|t| same_secret(&t, token))
    };
    let query_ok = || uri.path() == "/" && query_token(uri).is_some_and(|t| same_secret(&t, token));
    bearer || (safe && (cookie_ok() || query_ok()))
}

/// The `token` parameter of a query, percent-decoded: a token may hold
/// `&`, `%`, `#` or `+`, which a browser's address bar or a script encodes.
/// (`+` stays `+`: tokens have no spaces.)
fn query_token(uri: &Uri) -> Option<String> {
    uri.query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .and_then(decoded)
}

/// `s` percent-decoded, if that is UTF-8.
fn decoded(s: &str) -> Option<String> {
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// What the token cookie's value encodes: all but letters, digits and
/// `-._~`.
const COOKIE_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The value of `name`, if it is valid text.
fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host
            .split_once("]:")
            .map_or(host, |(h, _)| &host[..h.len() + 1]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn post_type_ok(headers: &HeaderMap) -> bool {
    header_str(headers, header::CONTENT_TYPE.as_str()).is_some_and(|ct| {
        let mime = ct.split(';').next().unwrap_or("").trim();
        ACCEPTED_TYPES.iter().any(|t| mime.eq_ignore_ascii_case(t))
    })
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Compares two secrets in time that does not depend on where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// At most 100 characters of `s`, without control characters: text from
/// a request, safe to echo into an error or a log.
fn printable(s: &str) -> String {
    crate::text::head(&crate::text::printable(s), 100).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn verdict(g: &Guard, method: Method, uri: &str, pairs: &[(&str, &str)]) -> Option<Refused> {
        g.verdict(&method, &uri.parse().unwrap(), &headers(pairs))
            .err()
            .map(|(why, _)| why)
    }

    const JSON: (&str, &str) = ("content-type", "application/json");

    #[test]
    fn hosts_are_ip_literals_localhost_or_named() {
        let g = Guard {
            hosts: vec!["mesh.internal".into()],
            token: None,
        };
        for ok in [
            "127.0.0.1:8080",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:8080",
            "[::1]",
            "localhost:8080",
            "LOCALHOST",
            "mesh.internal:8080",
        ] {
            assert_eq!(verdict(&g, Method::GET, "/", &[("host", ok)]), None, "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert_eq!(
                verdict(&g, Method::GET, "/api/peers", &[("host", bad)]),
                Some(Refused::Host),
                "{bad}"
            );
        }
        // No Host at all (HTTP/1.0 tools) is not what a browser sends.
        assert_eq!(verdict(&g, Method::GET, "/", &[]), None);
    }

    #[test]
    fn changes_come_from_the_own_origin_with_the_apis_content_types() {
        let g = Guard::default();
        let host = ("host", "127.0.0.1:8080");
        let post = |pairs: &[(&str, &str)]| verdict(&g, Method::POST, "/api/apps/start", pairs);
        assert_eq!(post(&[host, JSON]), None);
        assert_eq!(
            post(&[host, JSON, ("origin", "http://127.0.0.1:8080")]),
            None
        );
        assert_eq!(
            post(&[
                host,
                ("content-type", "application/x-ndjson; charset=utf-8")
            ]),
            None
        );
        assert_eq!(post(&[host, ("content-type", "Application/ZSTD")]), None);
        assert_eq!(
            post(&[host, JSON, ("origin", "http://evil.example")]),
            Some(Refused::Origin)
        );
        assert_eq!(
            post(&[host, JSON, ("origin", "null")]),
            Some(Refused::Origin)
        );
        assert_eq!(
            post(&[host, JSON, ("origin", "http://127.0.0.1:9999")]),
            Some(Refused::Origin)
        );
        assert_eq!(
            post(&[host, JSON, ("sec-fetch-site", "cross-site")]),
            Some(Refused::Origin)
        );
        assert_eq!(post(&[host, JSON, ("sec-fetch-site", "same-origin")]), None);
        for ct in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonx",
        ] {
            assert_eq!(
                post(&[host, ("content-type", ct)]),
                Some(Refused::ContentType),
                "{ct}"
            );
        }
        assert_eq!(post(&[host]), Some(Refused::ContentType), "no content type");
        // Reads need neither; an Origin on a GET changes nothing.
        assert_eq!(
            verdict(
                &g,
                Method::GET,
                "/api/peers",
                &[host, ("origin", "http://evil.example")]
            ),
            None
        );
    }

    #[test]
    fn a_token_with_url_and_cookie_delimiters_works_in_the_address_bar() {
        // Printable, no spaces: every character a token file may hold.
        let token = "a&b%c;d+e#f=g,h/0123456789";
        let g = Guard {
            hosts: Vec::new(),
            token: Some(token.into()),
        };
        let host = ("host", "10.0.0.5:8080");
        let encoded = utf8_percent_encode(token, NON_ALPHANUMERIC).to_string();
        let login = format!("/?token={encoded}");
        assert_eq!(verdict(&g, Method::GET, &login, &[host]), None);
        assert_eq!(
            verdict(&g, Method::GET, "/?token=a&b", &[host]),
            Some(Refused::Token)
        );
        // The login sets a cookie that opens the pages afterwards.
        let req = Request::builder()
            .uri(login.as_str())
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = g.token_login(&req).expect("a login answer");
        let set = resp.headers()[header::SET_COOKIE].to_str().unwrap();
        let pair = set.split(';').next().unwrap();
        assert!(
            !pair.contains(',') && pair.matches('=').count() == 1,
            "{set}"
        );
        let cookie = ("cookie", pair);
        assert_eq!(
            verdict(&g, Method::GET, "/api/peers", &[host, cookie]),
            None
        );
        let bearer = format!("Bearer {token}");
        assert_eq!(
            verdict(
                &g,
                Method::GET,
                "/api/peers",
                &[host, ("authorization", &bearer)]
            ),
            None
        );
    }

    #[test]
    fn a_token_opens_everything_a_cookie_only_reads() {
        let g = Guard {
            hosts: Vec::new(),
            token: Some("s3cret-token-0123".into()),
        };
        let host = ("host", "10.0.0.5:8080");
        let bearer = ("authorization", "Bearer s3cret-token-0123");
        let cookie = ("cookie", "a=b; disruptor_token=s3cret-token-0123");
        assert_eq!(verdict(&g, Method::GET, "/healthz", &[host]), None);
        assert_eq!(
            verdict(&g, Method::POST, "/healthz", &[host, JSON]),
            Some(Refused::Token)
        );
        assert_eq!(
            verdict(&g, Method::GET, "/api/peers", &[host]),
            Some(Refused::Token)
        );
        assert_eq!(
            verdict(&g, Method::GET, "/api/peers", &[host, bearer]),
            None
        );
        assert_eq!(
            verdict(
                &g,
                Method::GET,
                "/api/peers",
                &[host, ("authorization", "Bearer s3cret-token-0124")]
            ),
            Some(Refused::Token)
        );
        assert_eq!(
            verdict(
                &g,
                Method::GET,
                "/api/peers",
                &[host, ("authorization", "s3cret-token-0123")]
            ),
            Some(Refused::Token),
            "not a bearer header"
        );
        assert_eq!(
            verdict(&g, Method::GET, "/api/peers", &[host, cookie]),
            None
        );
        assert_eq!(
            verdict(&g, Method::POST, "/api/apps/start", &[host, JSON, cookie]),
            Some(Refused::Token)
        );
        assert_eq!(
            verdict(&g, Method::POST, "/api/apps/start", &[host, JSON, bearer]),
            None
        );
        assert_eq!(
            verdict(&g, Method::GET, "/?token=s3cret-token-0123", &[host]),
            None
        );
        assert_eq!(
            verdict(&g, Method::GET, "/?token=wrong", &[host]),
            Some(Refused::Token)
        );
        assert_eq!(
            verdict(
                &g,
                Method::GET,
                "/api/peers?token=s3cret-token-0123",
                &[host]
            ),
            Some(Refused::Token),
            "the query opens the dashboard's page only"
        );
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
        assert_eq!(strip_port("a.b:8080"), "a.b");
    }
}
