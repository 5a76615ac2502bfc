//! App bundles: an app's directory packed as tar + zstd, named by the
//! SHA-256 of the archive, and kept unpacked in the data directory.
//!
//! Layout of `--data-dir`:
//! - `archives/<hash>.tar.zst`: the archive as received (served to peers
//!   that fetch it);
//! - `bundles/<hash>/`: the archive unpacked: the app's directory;
//! - `tmp/`: archives arrive here (streamed, hashed as they come) and are
//!   unpacked here, then one rename makes each visible.
//!
//! Everything in the store is content-addressed and written by rename, so
//! peers on one machine may share a data directory.
//!
//! An archive is checked completely before anything is unpacked
//! ([`check`]): every entry must be a plain file, a
//! directory, or a link that stays inside the bundle without passing
//! through another link; the unpacked size must stay in proportion to the
//! archive's; and the store as a whole has a quota. Unpacked files keep at
//! most mode 0755.

mod archive;
mod store;

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apps::{AppName, AppsDir};

pub use archive::{Plan, check, unpacked_limit};
pub use store::{ArchiveWriter, Received, Store, default_quota};

/// Default limit of an archive's (compressed) size.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;

/// A deployed version of an app, as carried in the mesh's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BundleRef {
    /// SHA-256 of the archive, lowercase hex.
    pub hash: String,
    /// Size of the archive in bytes.
    pub size: u64,
}

impl BundleRef {
    /// Whether its hash is one (see [`is_hash`]): checked before a
    /// decision from another peer is taken, as the hash becomes a file name.
    pub fn is_well_formed(&self) -> bool {
        is_hash(&self.hash)
    }
}

/// Whether `s` is a bundle hash: 64 lowercase hex digits, nothing else (so
/// it is always safe to use as a file name).
pub fn is_hash(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Why a bundle was not installed or cannot be run. `POST /api/deploy`
/// answers most with 400, [`BundleError::TooLarge`] with 413 and
/// [`BundleError::Io`] with 500.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The archive is over `--max-bundle-bytes`.
    #[error("the bundle is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// Its size in bytes (when it arrives in pieces: as far as it got).
        size: u64,
        /// The limit in bytes.
        limit: u64,
    },
    /// The archive unpacks to more than [`unpacked_limit`] allows it.
    #[error(
        "the bundle unpacks to more than {limit} bytes, more than its {archive}-byte archive may \
         (32 times the archive plus 1 MiB, at most 8 times --max-bundle-bytes)"
    )]
    UnpackedTooLarge {
        /// What it may unpack to, in bytes.
        limit: u64,
        /// The archive's size in bytes.
        archive: u64,
    },
    /// Installing it would take the store over its quota.
    #[error(
        "no room for the bundle: it takes {need} bytes (archive and unpacked), and {used} of the \
         store's {quota} are in use (--max-store-bytes; bundles no app refers to are removed \
         after a grace period)"
    )]
    QuotaExceeded {
        /// Bytes it takes, archive plus unpacked.
        need: u64,
        /// Bytes the store holds or has set aside already.
        used: u64,
        /// The store's quota in bytes (`--max-store-bytes`).
        quota: u64,
    },
    /// A hash that is not 64 lowercase hex digits (see [`is_hash`]).
    #[error("{0:?} is not a bundle hash (64 lowercase hex digits)")]
    BadHash(String),
    /// The archive's bytes do not have the hash it came under.
    #[error("the bundle's SHA-256 is {actual}, not the {expected} it was announced as")]
    HashMismatch {
        /// The hash it came under.
        expected: String,
        /// The SHA-256 of the bytes received.
        actual: String,
    },
    /// Not a tar + zstd archive, or a broken one.
    #[error("the bundle is not a tar + zstd archive: {0}")]
    Malformed(String),
    /// An archive that breaks a rule of [`check`] (a path, a link, an entry
    /// kind, more than 200,000 entries; see the [module docs](crate::deploy)).
    #[error("the bundle is refused: {0}")]
    Unsafe(String),
    /// The bundle holds nothing runnable under the app's last name part.
    #[error("the bundle has no runnable {entry:?}: {reason}")]
    NoEntry {
        /// The name looked for: the app name's last part.
        entry: String,
        /// Why it does not resolve (see [`ResolveError`](crate::apps::ResolveError)).
        reason: String,
    },
    /// The disk failed (or the data directory is not writable).
    #[error("cannot store the bundle: {0}")]
    Io(#[from] std::io::Error),
}

/// SHA-256 of `bytes` as 64 lowercase hex digits: a bundle's name.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    let mut s = String::with_capacity(2 * digest.len());
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Packs `dir` (its contents, recursively; links as links) as tar + zstd.
pub fn pack(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    tar.mode(tar::HeaderMode::Deterministic);
    add_dir(&mut tar, dir, Path::new(""))?;
    let raw = tar.into_inner()?;
    zstd::stream::encode_all(&raw[..], 3)
}

fn add_dir(tar: &mut tar::Builder<Vec<u8>>, root: &Path, rel: &Path) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(root.join(rel))?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let rel = rel.join(e.file_name());
        let ft = e.file_type()?;
        if ft.is_dir() {
            tar.append_dir(&rel, root.join(&rel))?;
            add_dir(tar, root, &rel)?;
        } else if ft.is_file() || ft.is_symlink() {
            tar.append_path_with_name(root.join(&rel), &rel)?;
        }
        // Sockets, FIFOs and devices are not part of an app.
    }
    Ok(())
}

/// `app`'s entry (its last name part) resolved in `dir`, by the usual
/// rules (manifest, executable, `.js`).
pub fn resolve_in(dir: &Path, app: &AppName) -> Result<crate::apps::AppSpec, BundleError> {
    let entry = app.rel_path().rsplit('/').next().unwrap_or("");
    let inner = AppName::parse(&format!("apps/{entry}")).map_err(|e| BundleError::NoEntry {
        entry: entry.to_string(),
        reason: e.to_string(),
    })?;
    let mut spec = AppsDir::new(dir)
        .resolve(&inner)
        .map_err(|e| BundleError::NoEntry {
            entry: entry.to_string(),
            reason: e.to_string(),
        })?;
    spec.name = app.clone();
    Ok(spec)
}

/// Archives built entry by entry, for the tests of every module here.
#[cfg(test)]
pub(crate) mod testing {
    use std::path::{Path, PathBuf};

    pub fn tar_zst(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        zstd::stream::encode_all(&raw_tar(build)[..], 3).unwrap()
    }

    pub fn raw_tar(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        b.into_inner().unwrap()
    }

    /// An entry with any kind, path, mode and link target: `set_path`
    /// refuses `..` and absolute paths, so the names are written raw.
    pub fn raw(
        b: &mut tar::Builder<Vec<u8>>,
        kind: tar::EntryType,
        path: &str,
        mode: u32,
        target: &str,
        body: &[u8],
    ) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(mode);
        h.set_entry_type(kind);
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }

    pub fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
        raw(b, tar::EntryType::Regular, path, 0o755, "", body);
    }

    pub fn dir(b: &mut tar::Builder<Vec<u8>>, path: &str) {
        raw(b, tar::EntryType::Directory, path, 0o755, "", b"");
    }

    pub fn symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        raw(b, tar::EntryType::Symlink, path, 0o777, target, b"");
    }

    pub fn hard_link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
        raw(b, tar::EntryType::Link, path, 0o644, target, b"");
    }

    /// Files (and links) under `dir`, recursively; directories are not
    /// listed but entered.
    pub fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    /// Asserts that nothing under `root` resolves to a place outside it.
    pub fn assert_all_inside(root: &Path) {
        let real_root = std::fs::canonicalize(root).unwrap();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if let Ok(real) = std::fs::canonicalize(e.path()) {
                    assert!(
                        real.starts_with(&real_root),
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
}

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;
    use tar::EntryType;

    fn store(dir: &Path) -> Store {
        Store::new(dir, DEFAULT_MAX_BUNDLE_BYTES)
    }

    #[test]
    fn pack_install_resolve() {
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("worker"), "#!/bin/sh\nexec cat\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            src.path().join("worker"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::create_dir(src.path().join("lib")).unwrap();
        std::fs::write(src.path().join("lib/data.txt"), "x").unwrap();
        std::os::unix::fs::symlink("lib/data.txt", src.path().join("alias")).unwrap();
        let archive = pack(src.path()).unwrap();
        assert_eq!(
            archive,
            pack(src.path()).unwrap(),
            "packing is deterministic"
        );
        let data = tempfile::tempdir().unwrap();
        let store = store(data.path());
        let r = store.install(&archive, None).unwrap();
        assert!(r.is_well_formed());
        assert!(store.has(&r.hash));
        let app = AppName::parse("apps/mine/worker").unwrap();
        let spec = store.resolve(&r.hash, &app).unwrap();
        assert_eq!(spec.name, app);
        let dir = store.dir(&r.hash).unwrap();
        assert!(spec.source.starts_with(&dir));
        assert_eq!(std::fs::read_to_string(dir.join("alias")).unwrap(), "x");
        let mode = std::fs::metadata(dir.join("worker"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o100, 0o100, "the entry stays executable");
        // Installing again is a no-op.
        assert_eq!(store.install(&archive, Some(&r.hash)).unwrap(), r);
        assert!(
            walk(&data.path().join("tmp")).is_empty(),
            "tmp/ is left clean"
        );
    }

    #[test]
    fn unsafe_archives_are_refused_and_nothing_is_written() {
        let device = |kind: EntryType| tar_zst(|b| raw(b, kind, "dev", 0o644, "", b""));
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("absolute", tar_zst(|b| file(b, "/etc/evil", b"x"))),
            ("dotdot", tar_zst(|b| file(b, "../evil", b"x"))),
            ("nested dotdot", tar_zst(|b| file(b, "a/../../evil", b"x"))),
            (
                "symlink out",
                tar_zst(|b| symlink(b, "l", "../../etc/passwd")),
            ),
            (
                "absolute symlink",
                tar_zst(|b| symlink(b, "l", "/etc/passwd")),
            ),
            ("hard link out", tar_zst(|b| hard_link(b, "l", "../x"))),
            ("device", device(EntryType::Char)),
            ("fifo", device(EntryType::Fifo)),
            ("not zstd", b"plain bytes".to_vec()),
        ];
        for (what, archive) in cases {
            let data = tempfile::tempdir().unwrap();
            let err = store(data.path()).install(&archive, None).expect_err(what);
            assert!(
                matches!(err, BundleError::Unsafe(_) | BundleError::Malformed(_)),
                "{what}: {err}"
            );
            let written = walk(data.path());
            assert!(written.is_empty(), "{what}: wrote {written:?}");
        }
    }

    #[test]
    fn limits_and_hashes_are_enforced() {
        let archive = tar_zst(|b| file(b, "w", &vec![b'a'; 100_000]));
        let data = tempfile::tempdir().unwrap();
        let small = Store::new(data.path(), 50);
        assert!(matches!(
            small.install(&archive, None),
            Err(BundleError::TooLarge { .. })
        ));
        let store = store(data.path());
        let wrong = "0".repeat(64);
        assert!(matches!(
            store.install(&archive, Some(&wrong)),
            Err(BundleError::HashMismatch { .. })
        ));
        assert!(matches!(
            store.install(&archive, Some("../../x")),
            Err(BundleError::BadHash(_))
        ));
        assert!(walk(data.path()).is_empty());
    }

    /// The decompression bomb: a few hundred bytes that unpacked to
    /// 8 MB on every peer (the cap was 8 times --max-bundle-bytes, 2 GiB).
    #[test]
    fn a_tiny_archive_cannot_unpack_to_megabytes() {
        let bomb = tar_zst(|b| file(b, "w", &vec![0u8; 8 << 20]));
        assert!(bomb.len() < 2048, "{}", bomb.len());
        let data = tempfile::tempdir().unwrap();
        let err = store(data.path())
            .install(&bomb, None)
            .expect_err("8 MB from a tiny archive");
        assert!(
            matches!(err, BundleError::UnpackedTooLarge { archive, .. } if archive == bomb.len() as u64),
            "{err}"
        );
        assert!(err.to_string().contains("unpacks to more than"), "{err}");
        assert!(walk(data.path()).is_empty());
    }

    #[test]
    fn setuid_setgid_sticky_and_group_or_world_write_are_masked() {
        use std::os::unix::fs::PermissionsExt;
        let archive = tar_zst(|b| {
            raw(b, EntryType::Directory, "d", 0o1777, "", b"");
            raw(b, EntryType::Regular, "d/suid", 0o4777, "", b"x");
            raw(b, EntryType::Regular, "sgid", 0o2777, "", b"x");
            raw(b, EntryType::Regular, "shared", 0o666, "", b"x");
            raw(b, EntryType::Directory, "private", 0o700, "", b"");
        });
        let data = tempfile::tempdir().unwrap();
        let store = store(data.path());
        let r = store.install(&archive, None).unwrap();
        let dir = store.dir(&r.hash).unwrap();
        for p in ["", "d", "d/suid", "sgid", "shared", "private"] {
            let mode = std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode & !0o755, 0, "{p:?} has mode {mode:o}");
        }
        let suid = std::fs::metadata(dir.join("d/suid")).unwrap();
        assert_eq!(
            suid.permissions().mode() & 0o700,
            0o700,
            "the owner's bits stay"
        );
    }

    /// Each link alone stays inside when `..` is resolved lexically, but `y`
    /// is the bundle's root, 16 directories up, so the `..`s after it
    /// climb out of the bundle and the data directory, up to `/`.
    fn chain_to_etc_passwd(y_first: bool) -> Vec<u8> {
        // Names fit in the 100 bytes of a plain header; 16 levels up from
        // the bundle reach `/` from any usual temporary directory.
        let depth = 16;
        let dirs = vec!["d"; depth].join("/");
        let up = |n: usize| "../".repeat(n);
        let y = |b: &mut tar::Builder<Vec<u8>>| symlink(b, &format!("{dirs}/y"), &up(depth));
        let x = |b: &mut tar::Builder<Vec<u8>>| {
            let target = format!("{dirs}/y/{}etc/passwd", up(depth + 1));
            symlink(b, "x", &target)
        };
        tar_zst(|b| {
            dir(b, &dirs);
            if y_first {
                y(b);
                x(b);
            } else {
                x(b);
                y(b);
            }
        })
    }

    #[test]
    fn a_symlink_chain_cannot_reach_etc_passwd() {
        let short = |b: &mut tar::Builder<Vec<u8>>| {
            dir(b, "s");
            symlink(b, "s/y", ".");
            symlink(b, "s/x", "y/../..");
        };
        let cases = [
            ("chain to /etc/passwd", chain_to_etc_passwd(true)),
            (
                "chain, the link used defined last",
                chain_to_etc_passwd(false),
            ),
            ("y -> ., x -> y/../..", tar_zst(short)),
        ];
        for (what, archive) in cases {
            let data = tempfile::tempdir().unwrap();
            let err = store(data.path()).install(&archive, None).expect_err(what);
            assert!(
                matches!(&err, BundleError::Unsafe(m) if m.contains("through another link")),
                "{what}: {err}"
            );
            assert_all_inside(data.path());
            assert!(walk(data.path()).is_empty(), "{what}");
        }
    }
}
