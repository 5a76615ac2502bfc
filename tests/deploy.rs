//! App bundles: `disruptor deploy` packs an app once and every peer runs
//! it, newcomers too; new versions replace old ones under load; unsafe,
//! oversized and mismatched bundles are refused.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

const APP: &str = "apps/myapp/worker";

/// A native worker app in `<dir>/<name>/worker` answering
/// `{"v": version, "pid": ..., "echo": job}`.
fn write_app(dir: &Path, name: &str, version: u32) -> PathBuf {
    let app = dir.join(name);
    std::fs::create_dir_all(app.join("lib")).unwrap();
    std::fs::write(app.join("lib/version.txt"), version.to_string()).unwrap();
    let script = app.join("worker");
    std::fs::write(
        &script,
        "#!/usr/bin/env python3\n\
         import json, os, sys\n\
         here = os.path.dirname(os.path.abspath(__file__))\n\
         v = int(open(os.path.join(here, 'lib', 'version.txt')).read())\n\
         for line in sys.stdin:\n\
         \x20   print(json.dumps({'v': v, 'pid': os.getpid(), 'echo': json.loads(line)}), flush=True)\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    app
}

/// The admin key of a test's mesh: peers trust it, deployments are signed
/// with it.
fn admin(dir: &Path) -> AdminKey {
    AdminKey::new(dir, "mesh")
}

fn deploy(peer: &Peer, key: &AdminKey, dir: &Path, start: bool) -> (bool, String, String) {
    let mut args = vec![
        "deploy".to_string(),
        peer.http.clone(),
        dir.display().to_string(),
        "--name".into(),
        APP.into(),
        "--wait".into(),
        "40s".into(),
    ];
    args.extend(key.sign());
    if start {
        args.push("--start".into());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = cli(&args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn version_of(answer: &str) -> u64 {
    let v: Value = serde_json::from_str(answer).unwrap_or_else(|e| panic!("{answer}: {e}"));
    v["v"]
        .as_u64()
        .unwrap_or_else(|| panic!("no version in {answer}"))
}

/// Files under `dir` (recursively).
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
    }
    out
}

/// `n` peers that trust `key`, 2 workers an app, and no `--apps`
/// directory at all: whatever runs, came by deployment.
fn bare_mesh(dir: &Path, n: usize, key: &AdminKey) -> Mesh {
    Mesh::of(dir, n)
        .identities()
        .workers(2)
        .admins(&[key])
        .start()
}

#[test]
fn a_deployed_app_runs_on_every_peer_and_on_a_newcomer() {
    let dir = scratch("deploy");
    let key = admin(dir.path());
    let peers = bare_mesh(dir.path(), 3, &key);
    let src = write_app(&dir.path().join("src"), "myapp", 1);
    let (ok, stdout, stderr) = deploy(&peers[0], &key, &src, true);
    assert!(ok, "deploy failed: {stdout}{stderr}");
    assert!(stdout.contains("runs on 3 of 3 peers"), "{stdout}");
    let before: Vec<u64> = peers.iter().map(|p| p.jobs_done(APP)).collect();
    for p in &peers {
        for i in 0..30 {
            let (status, _, answer) = p.job(APP, &format!("{{\"i\":{i}}}"));
            assert_eq!(status, 200, "through {}: {answer}", p.name);
            assert_eq!(version_of(&answer), 1);
        }
    }
    for (p, b) in peers.iter().zip(&before) {
        assert!(
            p.jobs_done(APP) > *b,
            "{}'s workers ran none of the jobs",
            p.name
        );
        let v = &p.apps()["mesh"][APP][&p.id]["version"];
        assert_eq!(v.as_str().map(str::len), Some(64), "{}: {v}", p.name);
    }

    // A newcomer with nothing: it fetches the bundle and runs it by itself.
    let late = peers.newcomer("late", 2);
    wait_running(&late, APP, &[&late]);
    let mut ran_here = 0;
    for i in 0..60 {
        let (status, peer, answer) = late.job(APP, &format!("{{\"late\":{i}}}"));
        assert_eq!(status, 200, "{answer}");
        assert_eq!(version_of(&answer), 1);
        ran_here += usize::from(peer.as_deref() == Some(late.id.as_str()));
    }
    assert!(
        ran_here > 0,
        "the newcomer's own workers ran none of 60 jobs"
    );
    assert!(
        late.log_text().contains("installed a deployed version"),
        "the newcomer fetched it"
    );
}

#[test]
fn a_redeploy_under_load_fails_no_job_and_then_only_the_new_version_answers() {
    let dir = scratch("redeploy");
    let key = admin(dir.path());
    let peers = bare_mesh(dir.path(), 3, &key);
    let v1 = write_app(&dir.path().join("v1"), "myapp", 1);
    let (ok, stdout, stderr) = deploy(&peers[0], &key, &v1, true);
    assert!(ok, "{stdout}{stderr}");
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..3)
        .map(|t| {
            let http = peers[t].http.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let c = http_client();
                let mut seen = Vec::new();
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) && i < 20_000 {
                    seen.push(job_attempts(
                        &c,
                        &http,
                        APP,
                        &format!("{{\"t\":{t},\"i\":{i}}}"),
                    ));
                    i += 1;
                }
                seen
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let v2 = write_app(&dir.path().join("v2"), "myapp", 2);
    let (ok, stdout, stderr) = deploy(&peers[1], &key, &v2, false);
    assert!(ok, "{stdout}{stderr}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    let mut versions = [0usize; 3];
    for c in clients {
        for (status, attempts, body) in c.join().unwrap() {
            total += 1;
            assert_eq!(
                status, 200,
                "a job failed during the redeploy (attempts {attempts}): {body}"
            );
            versions[version_of(&body) as usize] += 1;
        }
    }
    eprintln!(
        "redeploy under load: {total} jobs, all 200; v1: {}, v2: {}",
        versions[1], versions[2]
    );
    assert!(versions[1] > 0 && versions[2] > 0, "{versions:?}");
    for p in &peers {
        for i in 0..20 {
            let (status, _, answer) = p.job(APP, &format!("[{i}]"));
            assert_eq!(status, 200);
            assert_eq!(
                version_of(&answer),
                2,
                "an old version answered through {}",
                p.name
            );
        }
    }
}

fn tar_zst(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    zstd::stream::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
}

fn raw_entry(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    body: &[u8],
) {
    raw_entry_mode(b, kind, name, link, body, 0o755);
}

fn raw_entry_mode(
    b: &mut tar::Builder<Vec<u8>>,
    kind: tar::EntryType,
    name: &str,
    link: &str,
    body: &[u8],
    mode: u32,
) {
    let mut h = tar::Header::new_gnu();
    h.set_size(body.len() as u64);
    h.set_mode(mode);
    h.set_entry_type(kind);
    let n = name.as_bytes();
    h.as_old_mut().name[..n.len()].copy_from_slice(n);
    let l = link.as_bytes();
    h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
    h.set_cksum();
    b.append(&h, body).unwrap();
}

/// POSTs `archive` as a deployment of `APP` signed by `key`, its decision
/// naming `hash` (the archive's own by default).
fn post_bundle(peer: &Peer, key: &AdminKey, archive: Vec<u8>, hash: Option<&str>) -> (u16, String) {
    let hash = hash.map_or_else(|| disruptor::deploy::sha256_hex(&archive), str::to_string);
    let bundle = disruptor::deploy::BundleRef {
        hash,
        size: archive.len() as u64,
    };
    let decision = signed(
        peer,
        key,
        disruptor::mesh::desired::Change::Deploy {
            bundle,
            start: true,
        },
    );
    let resp = http_client()
        .post(format!("http://{}/api/deploy?name={APP}", peer.http))
        .header("content-type", "application/zstd")
        .header(
            "x-disruptor-decision",
            serde_json::to_string(&decision).unwrap(),
        )
        .body(archive)
        .send()
        .unwrap();
    (resp.status().as_u16(), resp.text().unwrap())
}

/// The next decision for `APP` on `peer`, signed by `key`.
fn signed(
    peer: &Peer,
    key: &AdminKey,
    change: disruptor::mesh::desired::Change,
) -> disruptor::mesh::desired::DesiredApp {
    let held: disruptor::api::DecisionsView = http_client()
        .get(format!("http://{}/api/decisions", peer.http))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let app = disruptor::apps::AppName::parse(APP).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut d =
        disruptor::mesh::desired::next_decision(&held.decisions, held.clock, &app, change, now);
    key.secret().sign(&mut d);
    d
}

#[test]
fn unsafe_oversized_and_mismatched_bundles_are_refused() {
    let dir = scratch("deploy-safety");
    let key = admin(dir.path());
    let peers = Mesh::of(dir.path(), 2)
        .admins(&[&key])
        .each(|i, opts| {
            let flags = if i == 1 {
                vec!["--no-remote-deploy"]
            } else {
                vec!["--max-bundle-bytes", "200000"]
            };
            opts.extra.extend(flags.into_iter().map(String::from));
        })
        .start();
    let data0 = dir.path().join("p0.data");
    let data1 = dir.path().join("p1.data");
    let script = "#!/bin/sh\nexec cat\n";
    // Each with the reason it must be refused for (a malformed archive
    // would be refused too, but would not show the check works).
    let evil: Vec<(&str, Vec<u8>)> = vec![
        (
            "/tmp/evil is an absolute path",
            tar_zst(|b| raw_entry(b, tar::EntryType::Regular, "/tmp/evil", "", b"x")),
        ),
        (
            "../evil contains ..",
            tar_zst(|b| raw_entry(b, tar::EntryType::Regular, "../evil", "", b"x")),
        ),
        (
            "dev is a Block entry",
            tar_zst(|b| raw_entry(b, tar::EntryType::Block, "dev", "", b"")),
        ),
        (
            "passwd links outside the bundle",
            tar_zst(|b| {
                raw_entry(b, tar::EntryType::Regular, "worker", "", script.as_bytes());
                raw_entry(
                    b,
                    tar::EntryType::Symlink,
                    "passwd",
                    "../../../etc/passwd",
                    b"",
                );
            }),
        ),
    ];
    for (what, archive) in evil {
        let (status, body) = post_bundle(&peers[0], &key, archive, None);
        assert_eq!(status, 400, "{what}: {body}");
        assert!(
            body.contains(&format!("the bundle is refused: {what}")),
            "{what}: {body}"
        );
        assert!(
            files(&data0.join("bundles")).is_empty() && files(&data0.join("archives")).is_empty(),
            "{what}: something was written: {:?}",
            files(&data0)
        );
    }
    assert!(!Path::new("/tmp/evil").exists());

    // Over the size limit: refused, by the CLI's upload too.
    let big = dir.path().join("big/myapp");
    write_app(&dir.path().join("big"), "myapp", 1);
    // Incompressible: xorshift bytes.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..400_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(big.join("lib/noise.bin"), noise).unwrap();
    let (ok, stdout, stderr) = deploy(&peers[0], &key, &big, true);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("413") && stderr.contains("limit"),
        "{stderr}"
    );
    assert!(files(&data0.join("bundles")).is_empty());

    // v1 deployed and running on p0; p1 (--no-remote-deploy) installs nothing.
    let v1 = write_app(&dir.path().join("v1"), "myapp", 1);
    let (ok, stdout, stderr) = deploy(&peers[0], &key, &v1, true);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains("runs on 1 of 1 peers"), "{stdout}");
    assert!(stdout.contains("takes no deployments"), "{stdout}");
    let (status, _, answer) = peers[0].job(APP, "[1]");
    assert_eq!((status, version_of(&answer)), (200, 1));
    let p1_apps = peers[1].apps();
    assert_eq!(p1_apps["remote_deploy"], false, "{p1_apps}");
    assert!(files(&data1).is_empty(), "p1 installed {:?}", files(&data1));
    let page = peers[1].get("/").text().unwrap();
    assert!(page.contains("remote deploy off"));

    // v2 with a wrong hash: refused, and v1 keeps running.
    let v2 = write_app(&dir.path().join("v2"), "myapp", 2);
    let archive = disruptor::deploy::pack(&v2).unwrap();
    let (status, body) = post_bundle(&peers[0], &key, archive.clone(), Some(&"ab".repeat(32)));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("SHA-256"), "{body}");
    let (status, _, answer) = peers[0].job(APP, "[2]");
    assert_eq!((status, version_of(&answer)), (200, 1), "v1 keeps running");
    // The same bundle with its real hash is taken.
    let hash = disruptor::deploy::sha256_hex(&archive);
    let (status, body) = post_bundle(&peers[0], &key, archive, Some(&hash));
    assert_eq!(status, 202, "{body}");
    wait_for("v2 to answer", Duration::from_secs(10), || {
        let (status, _, answer) = peers[0].job(APP, "[3]");
        assert_eq!(status, 200, "a job failed while v2 replaced v1: {answer}");
        if version_of(&answer) == 2 {
            Ok(())
        } else {
            Err(answer)
        }
    });
}

/// Everything under `dir` resolves inside `dir`.
fn assert_all_inside(dir: &Path) {
    let root = std::fs::canonicalize(dir).unwrap();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if let Ok(real) = std::fs::canonicalize(e.path()) {
                assert!(
                    real.starts_with(&root),
                    "{} resolves to {}",
                    e.path().display(),
                    real.display()
                );
            }
            if e.file_type().unwrap().is_dir() {
                todo.push(e.path());
            }
        }
    }
}

/// The bundle attacks of issue 14 against one running peer, through its
/// upload signed by its admin (peers that fetch a bundle install it by the
/// same code): a decompression bomb, a symlink chain to /etc/passwd, setuid
/// modes, a full store. The peer refuses each with a clear error and keeps
/// running.
#[test]
fn bundle_attacks_are_refused_and_the_peer_keeps_running() {
    use tar::EntryType::{Directory, Regular, Symlink};
    let dir = scratch("deploy-attacks");
    let key = admin(dir.path());
    let peer = Peer::start(
        dir.path(),
        "p0",
        PeerOpts {
            extra: [
                vec!["--max-store-bytes".into(), "40000".into()],
                key.trust(),
            ]
            .concat(),
            ..Default::default()
        },
    );
    let data = dir.path().join("p0.data");

    // 321 bytes that unpacked to 8 MB.
    let bomb = tar_zst(|b| raw_entry(b, Regular, "worker", "", &vec![0u8; 8 << 20]));
    let (status, body) = post_bundle(&peer, &key, bomb, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("unpacks to more than"), "{body}");

    // `y` is the bundle's root 16 directories down; `x` climbs out from it.
    let dirs = vec!["d"; 16].join("/");
    let chain = tar_zst(|b| {
        raw_entry(b, Directory, &dirs, "", b"");
        raw_entry(b, Symlink, &format!("{dirs}/y"), &"../".repeat(16), b"");
        let target = format!("{dirs}/y/{}etc/passwd", "../".repeat(17));
        raw_entry(b, Symlink, "x", &target, b"");
    });
    let (status, body) = post_bundle(&peer, &key, chain, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("through another link"), "{body}");
    assert!(files(&data.join("bundles")).is_empty());
    assert_all_inside(&data);

    // Setuid, setgid and world-writable: installed without those bits, and
    // it still runs.
    let suid = tar_zst(|b| {
        raw_entry_mode(b, Regular, "worker", "", b"#!/bin/sh\nexec cat\n", 0o4777);
        raw_entry_mode(b, Directory, "lib", "", b"", 0o1777);
        raw_entry_mode(b, Regular, "lib/data", "", b"x", 0o2666);
    });
    let (status, body) = post_bundle(&peer, &key, suid, None);
    assert_eq!(status, 202, "{body}");
    for f in files(&data.join("bundles")) {
        let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode & !0o755, 0, "{} has mode {mode:o}", f.display());
    }
    let lib = files(&data.join("bundles"))[0]
        .parent()
        .unwrap()
        .join("lib");
    let mode = std::fs::metadata(&lib).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode & !0o755, 0, "lib/ has mode {mode:o}");
    wait_for(
        "the masked worker to answer",
        Duration::from_secs(15),
        || match peer.job(APP, "[7]") {
            (200, _, answer) if answer == "[7]" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );

    // 50 kB that do not compress, in a store of 40 kB.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    let big = tar_zst(|b| raw_entry(b, Regular, "worker", "", &noise));
    let (status, body) = post_bundle(&peer, &key, big, None);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("--max-store-bytes"), "{body}");
    let (status, _, answer) = peer.job(APP, "[8]");
    assert_eq!(
        (status, answer.as_str()),
        (200, "[8]"),
        "the peer keeps running"
    );
}
