//! Fetching app bundles from other peers: `/disruptor/bundle/1`, one
//! stream per fetch, opened with `libp2p-stream` outside the swarm task.
//!
//! The fetcher writes the 64 hex digits of the bundle's SHA-256 and a
//! newline; the holder answers one status byte (0: here it comes, 1: not
//! held, 2: busy), then for 0 the archive's length (`u64` big-endian) and
//! its bytes, and closes. The fetcher refuses a length over its limit
//! before reading, and checks the hash of what it read (the store checks
//! it again before installing anything).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::Control;
use tokio_util::sync::CancellationToken;

use crate::bundle::{Store, is_hash, sha256_hex};

pub const BUNDLE_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/bundle/1");
/// Fetches one peer may have running from this one at once.
const MAX_SERVES_PER_PEER: usize = 2;
/// Longest a fetch may take, end to end (256 MiB at ~1 MB/s would need
/// more; the fetcher retries elsewhere after this).
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// Serves bundle fetches from this peer's store until shutdown.
pub async fn serve(mut control: Control, store: Store, shutdown: CancellationToken) {
    let mut incoming = match control.accept(BUNDLE_PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::error!("cannot accept bundle fetches: {e}");
            return;
        }
    };
    let busy: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    loop {
        let (peer, mut stream) = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = incoming.next() => match next {
                Some(s) => s,
                None => return,
            },
        };
        let store = store.clone();
        let busy = busy.clone();
        tokio::spawn(async move {
            let over = {
                let mut b = busy.lock().expect("busy lock");
                let n = b.entry(peer).or_insert(0);
                *n += 1;
                *n > MAX_SERVES_PER_PEER
            };
            let r = tokio::time::timeout(FETCH_TIMEOUT, serve_one(&mut stream, &store, over)).await;
            if let Ok(Err(e)) = r {
                tracing::debug!(%peer, "bundle fetch by another peer failed: {e}");
            }
            let mut b = busy.lock().expect("busy lock");
            if let Some(n) = b.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    b.remove(&peer);
                }
            }
        });
    }
}

/// Answers one fetch: reads the request, then the archive from disk with
/// `tokio::fs` (a slow disk stalls this stream, not the runtime's threads,
/// which carry every job).
async fn serve_one(stream: &mut Stream, store: &Store, over: bool) -> std::io::Result<()> {
    let mut line = [0u8; 65];
    stream.read_exact(&mut line).await?;
    let held = match requested_hash(&line) {
        Some(hash) if !over => {
            let (store, hash) = (store.clone(), hash.to_string());
            tokio::task::spawn_blocking(move || store.archive(&hash))
                .await
                .map_err(std::io::Error::other)?
        }
        _ => None,
    };
    match held {
        _ if over => stream.write_all(&[2]).await?,
        None => stream.write_all(&[1]).await?,
        Some((file, len)) => {
            stream.write_all(&[0]).await?;
            stream.write_all(&len.to_be_bytes()).await?;
            copy_file(tokio::fs::File::from_std(file), stream).await?;
        }
    }
    stream.close().await
}

async fn copy_file(mut file: tokio::fs::File, stream: &mut Stream) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut file, &mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        stream.write_all(&buf[..n]).await?;
    }
}

/// The hash a fetch asks for: exactly 64 lowercase hex digits and a
/// newline. Anything else is answered "not held" without touching the file
/// system (the store refuses it too: this keeps junk out of the logs).
fn requested_hash(line: &[u8; 65]) -> Option<&str> {
    let (hash, newline) = line.split_at(64);
    if newline != b"\n" {
        return None;
    }
    std::str::from_utf8(hash).ok().filter(|h| is_hash(h))
}

/// Fetches the archive with SHA-256 `hash` from `peer`, at most `max` bytes.
pub async fn fetch(
    mut control: Control,
    peer: PeerId,
    hash: &str,
    max: u64,
) -> Result<Vec<u8>, String> {
    tokio::time::timeout(FETCH_TIMEOUT, async {
        let mut s = control
            .open_stream(peer, BUNDLE_PROTOCOL)
            .await
            .map_err(|e| format!("cannot open a bundle stream: {e}"))?;
        s.write_all(format!("{hash}\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        let mut status = [0u8; 1];
        s.read_exact(&mut status).await.map_err(|e| e.to_string())?;
        match status[0] {
            0 => {}
            1 => return Err("it does not hold that bundle".into()),
            2 => return Err("it is busy serving this peer".into()),
            other => return Err(format!("unknown answer {other}")),
        }
        let mut len = [0u8; 8];
        s.read_exact(&mut len).await.map_err(|e| e.to_string())?;
        let len = u64::from_be_bytes(len);
        if len > max {
            return Err(format!(
                "the bundle is {len} bytes, over the limit of {max}"
            ));
        }
        let mut data = vec![0u8; len as usize];
        s.read_exact(&mut data).await.map_err(|e| e.to_string())?;
        // Hashing tens of MB takes a while: not on the runtime's thread(s),
        // which also carry every job and the mesh.
        let (data, actual) = tokio::task::spawn_blocking(move || {
            let actual = sha256_hex(&data);
            (data, actual)
        })
        .await
        .map_err(|e| e.to_string())?;
        if actual != hash {
            return Err(format!("it sent a bundle whose SHA-256 is {actual}"));
        }
        Ok(data)
    })
    .await
    .map_err(|_| format!("no complete bundle within {FETCH_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &[u8]) -> [u8; 65] {
        let mut l = [b'\n'; 65];
        l[..s.len().min(65)].copy_from_slice(&s[..s.len().min(65)]);
        l
    }

    #[test]
    fn only_a_lowercase_hex_hash_is_looked_up() {
        let good = "0123456789abcdef".repeat(4);
        assert_eq!(requested_hash(&line(good.as_bytes())), Some(good.as_str()));
        let mut no_newline = line(good.as_bytes());
        no_newline[64] = b'x';
        let absolute = format!("/tmp/{}", "x".repeat(59));
        let dotdot = format!("../../../../etc/passwd{}", "/".repeat(42));
        for bad in [
            no_newline,
            line(good.to_uppercase().as_bytes()),
            line(absolute.as_bytes()),
            line(dotdot.as_bytes()),
            line(&[b'g'; 64]),
            line(&[0xff; 64]),
            line(&[b'a'; 63]),
        ] {
            assert_eq!(
                requested_hash(&bad),
                None,
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }
}
