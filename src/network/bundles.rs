//! App bundles between peers: a peer with a store serves its bundles
//! ([`serve`]) and fetches those it lacks ([`fetch`]), on
//! `/disruptor/bundle/1`, one stream per fetch, opened with
//! `libp2p-stream` outside the swarm task.
//!
//! The fetcher writes the 64 hex digits of the bundle's SHA-256 and a
//! newline; the holder answers one status byte (0: here it comes, 1: not
//! held, 2: busy), then for 0 the archive's length (`u64` big-endian) and
//! its bytes, and closes. The holder looks up nothing but a well-formed
//! hash. The fetcher runs at most [`MAX_FETCHES`] fetches at once, refuses
//! a length other than the announced one before reading, streams the bytes
//! into the store's `tmp/` hashing them as they come, and deletes what it
//! got if the hash is not the one it asked for (the store checks it again
//! before installing anything).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::{AsyncReadExt, AsyncWriteExt};
use futures::{AsyncRead, AsyncWrite, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::Control;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::deploy::{BundleRef, Received, Store, is_hash};

/// The bundle protocol's name.
pub const BUNDLE_PROTOCOL: StreamProtocol = StreamProtocol::new("/disruptor/bundle/1");
/// Fetches one peer may have running from this one at once.
const MAX_SERVES_PER_PEER: usize = 2;
/// Fetches this peer runs at once: each may hold up to
/// `--max-bundle-bytes` in `tmp/` and a core while it unpacks.
pub const MAX_FETCHES: usize = 2;
/// Bytes read from a stream at a time.
const CHUNK: usize = 64 * 1024;
/// Chunks that may wait for the disk: what one fetch holds in memory.
const CHUNKS_QUEUED: usize = 4;
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
/// system. The store refuses such a hash as well: each layer holds the
/// rule by itself.
fn requested_hash(line: &[u8; 65]) -> Option<&str> {
    let (hash, newline) = line.split_at(64);
    if newline != b"\n" {
        return None;
    }
    std::str::from_utf8(hash).ok().filter(|h| is_hash(h))
}

/// A fetched archive, its hash verified, waiting in the store's `tmp/` to
/// be installed. It holds one of the fetch permits until it is dropped:
/// installing is part of fetching, so at most [`MAX_FETCHES`] archives wait
/// in `tmp/` or unpack at once.
pub struct Fetched {
    archive: Received,
    permit: OwnedSemaphorePermit,
}

impl Fetched {
    /// The archive, and the permit to hold until it is installed.
    pub fn into_parts(self) -> (Received, OwnedSemaphorePermit) {
        (self.archive, self.permit)
    }
}

/// Fetches `bundle` from `peer` into `store`'s `tmp/`, once one of
/// `permits` (this peer's [`MAX_FETCHES`]) is free.
pub async fn fetch(
    control: Control,
    permits: Arc<Semaphore>,
    peer: PeerId,
    bundle: &BundleRef,
    store: &Store,
) -> Result<Fetched, String> {
    let open = move || async move {
        let mut control = control;
        control
            .open_stream(peer, BUNDLE_PROTOCOL)
            .await
            .map_err(|e| format!("cannot open a bundle stream: {e}"))
    };
    fetch_with(permits, bundle, store, open).await
}

/// [`fetch`] over whatever stream `open` opens (in tests: a scripted one).
async fn fetch_with<S, F, Fut>(
    permits: Arc<Semaphore>,
    bundle: &BundleRef,
    store: &Store,
    open: F,
) -> Result<Fetched, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<S, String>>,
{
    if !bundle.is_well_formed() {
        return Err(format!("{:?} is not a bundle hash", bundle.hash));
    }
    if bundle.size > store.max_bytes() {
        return Err(format!(
            "the bundle is {} bytes, over the limit of {}",
            bundle.size,
            store.max_bytes()
        ));
    }
    // The timeout starts once it is this fetch's turn.
    let permit = permits
        .acquire_owned()
        .await
        .map_err(|_| "fetches are closed".to_string())?;
    let archive = tokio::time::timeout(FETCH_TIMEOUT, async {
        let mut s = open().await?;
        let len = request(&mut s, &bundle.hash).await?;
        // Checked before a byte of it is read: at most the announced size,
        // which is at most --max-bundle-bytes.
        if len != bundle.size {
            return Err(format!(
                "it offers {len} bytes, not the {} announced",
                bundle.size
            ));
        }
        receive(&mut s, len, store).await
    })
    .await
    .map_err(|_| format!("no complete bundle within {FETCH_TIMEOUT:?}"))??;
    if archive.hash() != bundle.hash {
        // Dropped here, the file is deleted: nothing is installed.
        return Err(format!(
            "it sent a bundle whose SHA-256 is {}",
            archive.hash()
        ));
    }
    Ok(Fetched { archive, permit })
}

/// Asks for `hash`; returns the archive's length if the other peer has it.
async fn request<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, hash: &str) -> Result<u64, String> {
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
    Ok(u64::from_be_bytes(len))
}

/// Streams `len` bytes from `s` into the store's `tmp/`. The file is written
/// and hashed on a blocking thread fed through a short queue: neither the
/// disk nor the hashing runs on the runtime's threads (which carry every
/// job), and a fetch holds a few chunks in memory, not the archive.
async fn receive<S: AsyncRead + Unpin>(
    s: &mut S,
    len: u64,
    store: &Store,
) -> Result<Received, String> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHUNKS_QUEUED);
    let store = store.clone();
    let writer = tokio::task::spawn_blocking(move || {
        let mut w = store.receive(len)?;
        while let Some(chunk) = rx.blocking_recv() {
            w.append(&chunk)?;
        }
        w.finish()
    });
    let read = read_into(s, len, tx).await;
    let written = writer.await.map_err(|e| e.to_string())?;
    // A stream error wins (the writer saw only part of the archive); if
    // the writer stopped first, its error says why.
    read?;
    written.map_err(|e| e.to_string())
}

/// Sends `len` bytes of `s` to `tx` in chunks; stops early, without error,
/// if the receiving end is gone (it failed and reports why itself).
async fn read_into<S: AsyncRead + Unpin>(
    s: &mut S,
    len: u64,
    tx: mpsc::Sender<Vec<u8>>,
) -> Result<(), String> {
    let mut left = len;
    while left > 0 {
        let mut chunk = vec![0u8; CHUNK.min(usize::try_from(left).unwrap_or(CHUNK))];
        let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err(format!(
                "the stream ended after {} of {len} bytes",
                len - left
            ));
        }
        chunk.truncate(n);
        left -= n as u64;
        if tx.send(chunk).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
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

    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};
    use std::time::Instant;

    use crate::deploy::testing::{file, tar_zst, walk};

    /// A bundle stream whose answer is written in advance (or fed as the
    /// test goes).
    struct Scripted {
        answer: Box<dyn AsyncRead + Unpin + Send>,
        asked: Arc<Mutex<Vec<u8>>>,
    }

    impl AsyncRead for Scripted {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<std::io::Result<usize>> {
            Pin::new(&mut self.get_mut().answer).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Scripted {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.asked.lock().unwrap().extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// What a holder sends: status 0, the length, the bytes.
    fn offer(len: u64, bytes: &[u8]) -> Vec<u8> {
        let mut a = vec![0u8];
        a.extend_from_slice(&len.to_be_bytes());
        a.extend_from_slice(bytes);
        a
    }

    fn scripted(answer: Vec<u8>) -> (Scripted, Arc<Mutex<Vec<u8>>>) {
        let asked = Arc::new(Mutex::new(Vec::new()));
        let s = Scripted {
            answer: Box::new(futures::io::Cursor::new(answer)),
            asked: asked.clone(),
        };
        (s, asked)
    }

    fn bundle_of(archive: &[u8]) -> BundleRef {
        BundleRef {
            hash: crate::deploy::sha256_hex(archive),
            size: archive.len() as u64,
        }
    }

    fn permits() -> Arc<Semaphore> {
        Arc::new(Semaphore::new(MAX_FETCHES))
    }

    /// An app of `n` incompressible bytes (so the archive is as large).
    fn big_app(n: usize) -> Vec<u8> {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        let noise: Vec<u8> = (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        tar_zst(|b| {
            file(b, "worker", b"#!/bin/sh\nexec cat\n");
            file(b, "data", &noise);
        })
    }

    #[tokio::test]
    async fn a_fetch_streams_to_tmp_and_installs_from_there() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), crate::deploy::DEFAULT_MAX_BUNDLE_BYTES);
        let archive = big_app(1 << 20);
        let b = bundle_of(&archive);
        let (stream, asked) = scripted(offer(b.size, &archive));
        let fetched = fetch_with(permits(), &b, &store, || async { Ok(stream) })
            .await
            .unwrap();
        assert_eq!(*asked.lock().unwrap(), format!("{}\n", b.hash).into_bytes());
        let tmp = walk(&data.path().join("tmp"));
        assert_eq!(tmp.len(), 1, "{tmp:?}");
        assert_eq!(std::fs::read(&tmp[0]).unwrap(), archive);
        let (archive, _permit) = fetched.into_parts();
        store.install_received(archive, Some(&b.hash)).unwrap();
        assert!(store.has(&b.hash));
        assert!(walk(&data.path().join("tmp")).is_empty());
    }

    #[tokio::test]
    async fn a_wrong_answer_installs_nothing_and_leaves_nothing() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), 1 << 20);
        let archive = big_app(100_000);
        let b = bundle_of(&archive);
        let mut other = archive.clone();
        *other.last_mut().unwrap() ^= 1;
        let cases: Vec<(&str, BundleRef, Vec<u8>, &str)> = vec![
            ("other bytes", b.clone(), offer(b.size, &other), "SHA-256"),
            (
                "cut short",
                b.clone(),
                offer(b.size, &archive[..5000]),
                "ended after 5000",
            ),
            (
                "another length",
                b.clone(),
                offer(b.size + 1, &archive),
                "not the",
            ),
            ("not held", b.clone(), vec![1], "does not hold"),
            ("busy", b.clone(), vec![2], "busy"),
            (
                "over the limit",
                BundleRef {
                    size: 2 << 20,
                    ..b.clone()
                },
                offer(2 << 20, &[]),
                "over the limit",
            ),
            (
                "not a hash",
                BundleRef {
                    hash: "../x".into(),
                    ..b.clone()
                },
                offer(b.size, &archive),
                "not a bundle hash",
            ),
        ];
        for (what, bundle, answer, expect) in cases {
            let (stream, _) = scripted(answer);
            let r = fetch_with(permits(), &bundle, &store, || async { Ok(stream) }).await;
            let err = r.err().unwrap_or_else(|| panic!("{what}: fetched"));
            assert!(err.contains(expect), "{what}: {err}");
            assert!(
                walk(data.path()).is_empty(),
                "{what}: {:?}",
                walk(data.path())
            );
            assert!(!store.has(&b.hash));
        }
    }

    #[tokio::test]
    async fn at_most_two_fetches_run_at_once_each_until_installed() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), crate::deploy::DEFAULT_MAX_BUNDLE_BYTES);
        let archive = big_app(10_000);
        let b = bundle_of(&archive);
        let permits = permits();
        let opened = Arc::new(AtomicUsize::new(0));
        // Holds each opened stream until the test lets one through.
        let gate = Arc::new(Semaphore::new(0));
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        for _ in 0..3 {
            let (permits, store, b) = (permits.clone(), store.clone(), b.clone());
            let (opened, gate, done) = (opened.clone(), gate.clone(), done_tx.clone());
            let (stream, _) = scripted(offer(b.size, &archive));
            tokio::spawn(async move {
                let open = || async move {
                    opened.fetch_add(1, Ordering::SeqCst);
                    gate.acquire().await.unwrap().forget();
                    Ok(stream)
                };
                let _ = done.send(fetch_with(permits, &b, &store, open).await);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while opened.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline, "two fetches did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Both permits are taken, so the third cannot have opened a stream.
        assert_eq!(permits.available_permits(), 0);
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        gate.add_permits(1);
        let first = done_rx.recv().await.unwrap().unwrap();
        // Fetched but not yet installed: it still holds its permit.
        assert_eq!(permits.available_permits(), 0);
        assert_eq!(opened.load(Ordering::SeqCst), 2);
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(10);
        while opened.load(Ordering::SeqCst) < 3 {
            assert!(Instant::now() < deadline, "the third fetch did not start");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        gate.add_permits(2);
        for _ in 0..2 {
            assert!(done_rx.recv().await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn a_fetch_writes_to_disk_as_the_bytes_arrive() {
        use futures::TryStreamExt;
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), crate::deploy::DEFAULT_MAX_BUNDLE_BYTES);
        let archive = big_app(1 << 20);
        let b = bundle_of(&archive);
        let (tx, rx) = futures::channel::mpsc::unbounded::<std::io::Result<Vec<u8>>>();
        let stream = Scripted {
            answer: Box::new(rx.into_async_read()),
            asked: Arc::default(),
        };
        let half = 600_000;
        tx.unbounded_send(Ok(offer(b.size, &archive[..half])))
            .unwrap();
        let fetch = {
            let (store, b) = (store.clone(), b.clone());
            tokio::spawn(
                async move { fetch_with(permits(), &b, &store, || async { Ok(stream) }).await },
            )
        };
        // The first part is on disk while the rest has not been sent.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let on_disk: u64 = walk(&data.path().join("tmp"))
                .iter()
                .map(|p| std::fs::metadata(p).map_or(0, |m| m.len()))
                .sum();
            if on_disk == half as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{on_disk} bytes on disk, not {half}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(!fetch.is_finished());
        tx.unbounded_send(Ok(archive[half..].to_vec())).unwrap();
        let fetched = fetch.await.unwrap().unwrap();
        let (archive_file, _permit) = fetched.into_parts();
        assert_eq!(archive_file.hash(), b.hash);
    }
}
