//! Client-side subcommands: `peers` and `keygen`.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;

use crate::api::{ErrorBody, MeshView};
use crate::cli::{KeygenArgs, PeersArgs};
use crate::config::{self, ConfigError};
use crate::http::ago;
use crate::membership::unix_ms;

/// A user error in a client command's arguments (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Turns `HOST:PORT` or `http://HOST:PORT[/]` into a base URL.
pub fn base_url(addr: &str) -> Result<String, UsageError> {
    let trimmed = addr.trim().trim_end_matches('/');
    let rest = trimmed.strip_prefix("http://").unwrap_or(trimmed);
    if trimmed.starts_with("https://") {
        return Err(UsageError(format!(
            "{addr:?}: peers serve plain HTTP (http://HOST:PORT)"
        )));
    }
    config::parse_socket_addr("HTTP_ADDR", rest)
        .map_err(|e: ConfigError| UsageError(e.to_string()))?;
    Ok(format!("http://{rest}"))
}

fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// GETs `path` from the peer at `base` and decodes JSON, turning an error
/// answer into its message.
async fn get_json<T: serde::de::DeserializeOwned>(base: &str, path: &str) -> anyhow::Result<T> {
    let url = format!("{base}{path}");
    let resp = http_client()?.get(&url).send().await.with_context(|| {
        format!("cannot reach the peer at {base} (is `disruptor peer` running there?)")
    })?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .with_context(|| format!("reading the answer of {url}"))?;
    if !status.is_success() {
        let msg = serde_json::from_slice::<ErrorBody>(&body)
            .map(|e| e.error)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
        anyhow::bail!("{url} answered {status}: {msg}");
    }
    serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not answer with the expected JSON"))
}

pub async fn peers(args: PeersArgs) -> anyhow::Result<()> {
    let base = base_url(&args.http_addr)?;
    if args.json {
        let v: serde_json::Value = get_json(&base, "/api/peers").await?;
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let view: MeshView = get_json(&base, "/api/peers").await?;
    print!("{}", render_peers_table(&view, unix_ms()));
    Ok(())
}

pub fn render_peers_table(view: &MeshView, now: u64) -> String {
    let mut rows = vec![[
        "PEER".to_string(),
        "STATE".into(),
        "SINCE".into(),
        "RTT".into(),
        "HTTP".into(),
        "ADDRESS".into(),
    ]];
    rows.push([
        format!("{} (this peer)", view.local.id),
        "self".into(),
        ago(now, view.local.started_ms),
        "-".into(),
        view.local.http.clone(),
        view.local.listen.first().cloned().unwrap_or_default(),
    ]);
    for p in &view.peers {
        let state = match &p.reason {
            Some(r) => format!("{} ({r})", p.state),
            None => p.state.clone(),
        };
        rows.push([
            p.id.clone(),
            state,
            ago(now, p.since_ms),
            p.rtt_ms
                .map(|r| format!("{r:.2}ms"))
                .unwrap_or_else(|| "-".into()),
            p.http.clone().unwrap_or_else(|| "-".into()),
            p.addrs.first().cloned().unwrap_or_else(|| "-".into()),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let up = view.peers.iter().filter(|p| p.state == "up").count();
    out.push_str(&format!(
        "{} peers known besides this one: {up} up, {} down\n",
        view.peers.len(),
        view.peers.len() - up
    ));
    out
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<()> {
    let key = config::generate_psk();
    let text = key.to_string();
    match args.out {
        Some(path) => {
            config::write_private_file(&path, text.as_bytes(), args.force)?;
            eprintln!(
                "wrote pre-shared key {} (fingerprint {}); give it to every peer with --psk-file",
                path.display(),
                key.fingerprint()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
