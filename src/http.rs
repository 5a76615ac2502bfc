//! The local HTTP endpoint (axum): status page and JSON API.
//!
//! It holds a [`Client`] handle, never the swarm. Every error answer is JSON
//! `{"error": "..."}` with a fitting status code.

use std::fmt::Write as _;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{Html, IntoResponse, Json, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{ErrorBody, MeshView};
use crate::membership::unix_ms;
use crate::network::Client;

pub fn router(client: Client) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/api/peers", get(api_peers))
        .fallback(not_found)
        .with_state(client)
}

/// Serves until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, client: Client, shutdown: CancellationToken) {
    let result = axum::serve(listener, router(client))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await;
    if let Err(e) = result {
        tracing::error!("HTTP server failed: {e}");
        shutdown.cancel();
    }
}

pub fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.into(),
        }),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        format!("no such endpoint: {}", uri.path()),
    )
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn api_peers(State(client): State<Client>) -> Json<MeshView> {
    Json((*client.mesh()).clone())
}

async fn status_page(State(client): State<Client>) -> Html<String> {
    Html(render_status(&client.mesh(), unix_ms()))
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// "3m 12s" style age of a unix-ms timestamp.
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        3600..=86399 => format!("{}h {}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

fn render_status(view: &MeshView, now: u64) -> String {
    let up: Vec<_> = view.peers.iter().filter(|p| p.state == "up").collect();
    let down: Vec<_> = view.peers.iter().filter(|p| p.state != "up").collect();
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="2">
<title>disruptor · {short} · {up_n} up</title>
<style>
body{{font:14px/1.4 system-ui,sans-serif;margin:2em;color:#222;background:#fafafa}}
h1{{font-size:1.4em;margin:0 0 .2em}} h2{{font-size:1.1em;margin:1.6em 0 .4em}}
.sub{{color:#666}} code{{font:12px ui-monospace,monospace}}
.counts span{{display:inline-block;margin-right:1.5em;font-size:1.2em}}
.up{{color:#1a7f37;font-weight:600}} .down{{color:#b42318;font-weight:600}}
table{{border-collapse:collapse;background:#fff;min-width:60%}}
th,td{{border-bottom:1px solid #e5e5e5;padding:.35em .8em;text-align:left;vertical-align:top}}
th{{background:#f0f0f0;font-weight:600}}
.muted{{color:#888}}
</style></head><body>
<h1>disruptor peer <code>{id}</code></h1>
<div class="sub">HTTP {http} · up {uptime} · {private}</div>
<div class="sub">listening on {listen}</div>
<h2>Mesh</h2>
<div class="counts"><span class="up">{up_n} up</span><span class="down">{down_n} down</span><span>{total} peers known besides this one</span></div>
"#,
        short = esc(&view.local.id[view.local.id.len().saturating_sub(8)..]),
        id = esc(&view.local.id),
        http = esc(&view.local.http),
        uptime = ago(now, view.local.started_ms),
        private = if view.local.private {
            "private mesh (pre-shared key)"
        } else {
            "open mesh (no pre-shared key)"
        },
        listen = view
            .local
            .listen
            .iter()
            .map(|a| format!("<code>{}</code>", esc(a)))
            .collect::<Vec<_>>()
            .join(", "),
        up_n = up.len(),
        down_n = down.len(),
        total = view.peers.len(),
    );
    h.push_str("<h2>Peers up</h2>");
    if up.is_empty() {
        h.push_str("<p class=\"muted\">none yet</p>");
    } else {
        h.push_str("<table><tr><th>peer</th><th>uptime</th><th>ping</th><th>HTTP</th><th>addresses</th></tr>");
        for p in &up {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&p.id),
                p.started_ms
                    .map(|s| ago(now, s))
                    .unwrap_or_else(|| "?".into()),
                p.rtt_ms
                    .map(|r| format!("{r:.2} ms"))
                    .unwrap_or_else(|| "–".into()),
                p.http.as_deref().map(esc).unwrap_or_default(),
                p.addrs
                    .iter()
                    .map(|a| format!("<code>{}</code>", esc(a)))
                    .collect::<Vec<_>>()
                    .join("<br>"),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>Peers down</h2>");
    if down.is_empty() {
        h.push_str("<p class=\"muted\">none</p>");
    } else {
        h.push_str("<table><tr><th>peer</th><th>why</th><th>last seen</th><th>down for</th></tr>");
        for p in &down {
            let _ = write!(
                h,
                "<tr><td><code>{}</code></td><td>{}</td><td>{} ago</td><td>{}</td></tr>",
                esc(&p.id),
                esc(p.reason.as_deref().unwrap_or("?")),
                ago(now, p.last_seen_ms),
                ago(now, p.since_ms),
            );
        }
        h.push_str("</table>");
    }
    h.push_str("<p class=\"sub\">JSON: <a href=\"/api/peers\">/api/peers</a> · refreshes every 2 s</p></body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{PeerView, SelfView};

    #[test]
    fn status_page_escapes_and_lists_peers() {
        let view = MeshView {
            local: SelfView {
                id: "12D3KooWself".into(),
                listen: vec!["/ip4/127.0.0.1/tcp/1".into()],
                http: "127.0.0.1:8001".into(),
                started_ms: 1_000,
                private: true,
            },
            peers: vec![
                PeerView {
                    id: "12D3KooWup".into(),
                    state: "up".into(),
                    reason: None,
                    addrs: vec!["/ip4/127.0.0.1/tcp/2".into()],
                    http: Some("<script>".into()),
                    first_seen_ms: 1_000,
                    last_seen_ms: 61_000,
                    since_ms: 1_000,
                    started_ms: Some(1_000),
                    rtt_ms: Some(0.25),
                    connected: true,
                },
                PeerView {
                    id: "12D3KooWdown".into(),
                    state: "down".into(),
                    reason: Some("left".into()),
                    addrs: vec![],
                    http: None,
                    first_seen_ms: 1_000,
                    last_seen_ms: 2_000,
                    since_ms: 2_000,
                    started_ms: None,
                    rtt_ms: None,
                    connected: false,
                },
            ],
        };
        let page = render_status(&view, 62_000);
        assert!(page.contains("12D3KooWup") && page.contains("12D3KooWdown"));
        assert!(page.contains("1 up") && page.contains("1 down"));
        assert!(page.contains("&lt;script&gt;") && !page.contains("<script>"));
        assert!(page.contains("1m 1s"), "uptime of the up peer");
        assert!(page.contains("private mesh"));
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(ago(5_000, 0), "5s");
        assert_eq!(ago(3_725_000, 0), "1h 2m");
        assert_eq!(ago(0, 5_000), "0s");
    }
}
