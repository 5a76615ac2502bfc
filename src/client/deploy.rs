//! `disruptor deploy`: new code for an app, on every peer that takes it.
//!
//! 1. **Check here first.** A deployment runs new code on every peer, so
//!    it must be signed with an admin key (`--key`); the directory must
//!    hold the app under its name (it must run here before it runs
//!    anywhere).
//! 2. **Pack.** tar + zstd, deterministic: the same files give the same
//!    archive, and its SHA-256 names the bundle.
//! 3. **Upload with a signed decision** ("apps/x is now bundle H",
//!    `POST /api/deploy`, the decision in a header): the peer checks the
//!    signature before it reads the bundle, stores it, and spreads the
//!    decision; the other peers fetch the bundle from it. The signing is
//!    `start`'s ([`signed_decision`]), with the upload as its delivery.
//! 4. **Wait** (`wait.rs`) until every peer that is up and takes
//!    deployments reports the new version (running, if the app runs), and
//!    print what each says.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use indicatif::ProgressBar;

use super::decide::{signed_decision, signing_key};
use super::http::PeerApi;
use super::term::progress_bar;
use super::wait::{Look, peer_line, until_settled};
use super::{UsageError, app_arg};
use crate::api::{AppsView, MeshView};
use crate::apps::{AppName, AppState, AppStatus};
use crate::cli::DeployArgs;
use crate::deploy::BundleRef;
use crate::mesh::desired::{Change, DesiredApp};
use crate::mesh::trust::AdminSecret;
use crate::text::{head, printable};

/// The time limit of an upload.
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(600);

/// The pieces the upload is sent in (the progress bar moves per piece).
const UPLOAD_CHUNK: usize = 256 * 1024;

/// `disruptor deploy`: checks, packs, uploads, and waits for the mesh.
pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let peer = PeerApi::new(&args.http_addr, &args.access)?;
    let app = app_arg(&args.name)?;
    let key = deploy_key(&args)?;
    let (archive, hash) = pack(&args.dir, &app).await?;
    let decision = upload(&peer, &app, &key, archive, &hash, args.start).await?;
    wait_for_version(&peer, &app, &hash, decision.run, args.wait).await
}

/// The admin key a deployment must be signed with.
fn deploy_key(args: &DeployArgs) -> anyhow::Result<AdminSecret> {
    signing_key(&args.signing)?.ok_or_else(|| {
        UsageError(
            "a deployment runs new code on every peer, so it must be signed by an admin key: \
             --key FILE (or DISRUPTOR_KEY); make one with `disruptor keygen --admin --out FILE` \
             and start the peers with --admin PUBKEY"
                .into(),
        )
        .into()
    })
}

/// Checks that `app` resolves in `dir`, and packs `dir`: the archive and
/// its SHA-256 (hex).
async fn pack(dir: &Path, app: &AppName) -> anyhow::Result<(Vec<u8>, String)> {
    if !dir.is_dir() {
        return Err(UsageError(format!("{} is not a directory", dir.display())).into());
    }
    let spec = crate::deploy::resolve_in(dir, app)
        .map_err(|e| UsageError(format!("{}: {e}", dir.display())))?;
    let owned = dir.to_path_buf();
    let archive = tokio::task::spawn_blocking(move || crate::deploy::pack(&owned))
        .await?
        .with_context(|| format!("packing {}", dir.display()))?;
    let hash = crate::deploy::sha256_hex(&archive);
    eprintln!(
        "deploy: {} packed ({} bytes, tar + zstd), sha256 {}; entry {}",
        dir.display(),
        archive.len(),
        head(&hash, 16),
        spec.source.display()
    );
    Ok((archive, hash))
}

/// Uploads the archive with a signed deployment decision; the decision as
/// the peer took it. A person watching (stderr is a terminal) sees a
/// progress bar for an archive over 1 MiB.
async fn upload(
    peer: &PeerApi,
    app: &AppName,
    key: &AdminSecret,
    archive: Vec<u8>,
    hash: &str,
    start: bool,
) -> anyhow::Result<DesiredApp> {
    use std::io::IsTerminal;
    let total = archive.len() as u64;
    let progress = (std::io::stderr().is_terminal() && total > 1024 * 1024).then(|| {
        progress_bar(
            Some(total),
            "uploading {bar:30} {bytes}/{total_bytes} {bytes_per_sec}, ETA {eta}",
        )
    });
    let bundle = BundleRef {
        hash: hash.to_string(),
        size: total,
    };
    let change = Change::Deploy { bundle, start };
    let decision = signed_decision(peer, "deploy", app, change, key, async |d: &DesiredApp| {
        let req = peer
            .post(&format!("/api/deploy?name={app}"))
            .timeout(UPLOAD_TIMEOUT)
            .header("content-type", "application/zstd")
            .header(crate::api::BUNDLE_HASH_HEADER, hash)
            .header(crate::api::DECISION_HEADER, serde_json::to_string(d)?)
            .header("content-length", total)
            .body(chunked(&archive, progress.clone()));
        peer.send_for_json(req).await
    })
    .await;
    if let Some(pb) = progress {
        pb.finish_and_clear();
    }
    decision
}

/// The archive as a streamed body, moving `progress` as it goes out.
fn chunked(archive: &[u8], progress: Option<ProgressBar>) -> reqwest::Body {
    let chunks: Vec<bytes::Bytes> = archive
        .chunks(UPLOAD_CHUNK)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks.into_iter().map(move |c| {
        if let Some(pb) = &progress {
            pb.inc(c.len() as u64);
        }
        Ok::<_, std::io::Error>(c)
    })))
}

/// Waits until every peer that is up and takes deployments reports
/// version `hash` of `app` (running, if `run`), and prints what each says.
async fn wait_for_version(
    peer: &PeerApi,
    app: &AppName,
    hash: &str,
    run: bool,
    wait: Duration,
) -> anyhow::Result<()> {
    let look = until_settled(peer, wait, |view, apps| {
        version_report(view, apps, app, hash, run)
    })
    .await?;
    let VersionReport { done, of, lines } = look.seen;
    let version = head(hash, 12);
    if look.settled {
        let does = if run { "runs" } else { "is installed" };
        println!("{app} version {version} {does} on {done} of {of} peers:");
        print!("{lines}");
        return Ok(());
    }
    print!("{lines}");
    anyhow::bail!("only {done} of {of} peers report {app} version {version} after {wait:?}")
}

/// How far a deployment has got.
struct VersionReport {
    /// Peers that report the new version (running, if the app runs).
    done: usize,
    /// Peers that should: this one and those up that take deployments.
    of: usize,
    /// A line per peer: those that take no deployments, then the others.
    lines: String,
}

/// One look at the mesh for [`wait_for_version`].
fn version_report(
    view: &MeshView,
    apps: &AppsView,
    app: &AppName,
    hash: &str,
    run: bool,
) -> Look<VersionReport> {
    let per_peer = apps.mesh.get(app.as_str());
    let mut ids: Vec<&str> = vec![view.local.id.as_str()];
    let mut lines = String::new();
    for p in view.peers.iter().filter(|p| p.is_up()) {
        if p.remote_deploy {
            ids.push(p.id.as_str());
        } else {
            let what =
                "takes no deployments (it trusts no admin key, or runs with --no-remote-deploy)";
            lines.push_str(&peer_line(view, &p.id, what));
        }
    }
    let mut done = 0;
    for id in &ids {
        let st = per_peer.and_then(|m| m.get(*id));
        let on_version = st.is_some_and(|s| s.version.as_deref() == Some(hash));
        if on_version && (!run || st.is_some_and(|s| s.state == AppState::Running)) {
            done += 1;
        }
        let what = st.map_or_else(|| "waiting".to_string(), version_text);
        lines.push_str(&peer_line(view, id, &what));
    }
    Look {
        settled: done == ids.len(),
        seen: VersionReport {
            done,
            of: ids.len(),
            lines,
        },
    }
}

/// A peer's state and version for the report: `running version
/// 0123456789ab`, `missing (from its apps directory) (why)`.
fn version_text(s: &AppStatus) -> String {
    let version = s
        .version
        .as_deref()
        .map(|v| format!("version {}", printable(head(v, 12))))
        .unwrap_or_else(|| "(from its apps directory)".into());
    let error = s
        .error
        .as_deref()
        .map(|e| format!(" ({})", printable(e)))
        .unwrap_or_default();
    format!("{} {version}{error}", s.state)
}
