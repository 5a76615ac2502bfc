//! App bundles: an app's directory packed as tar + zstd, named by the
//! SHA-256 of the archive, and kept unpacked in the data directory.
//!
//! Layout of `--data-dir`:
//! - `archives/<hash>.tar.zst`: the archive as received (served to peers
//!   that fetch it);
//! - `bundles/<hash>/`: the archive unpacked: the app's directory;
//! - `tmp/`: unpacking happens here, then one rename makes it visible.
//!
//! Everything in the store is content-addressed and written by rename, so
//! peers on one machine may share a data directory.
//!
//! An archive is checked completely before anything is written: every entry
//! must be a plain file, a directory, or a link that stays inside the
//! bundle; no absolute path, no `..`, no device, FIFO or socket; and the
//! sizes must stay within the limits.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::apps::{AppName, AppsDir};

/// Default limit of an archive's (compressed) size.
pub const DEFAULT_MAX_BUNDLE_BYTES: u64 = 256 * 1024 * 1024;
/// Unpacked size allowed per byte of limit (zstd compresses code well).
const UNPACKED_FACTOR: u64 = 8;
const MAX_ENTRIES: usize = 200_000;

/// A deployed version of an app, as carried in the mesh's decisions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BundleRef {
    /// SHA-256 of the archive, lowercase hex.
    pub hash: String,
    /// Size of the archive in bytes.
    pub size: u64,
}

impl BundleRef {
    pub fn is_well_formed(&self) -> bool {
        self.hash.len() == 64
            && self
                .hash
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("the bundle is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("the bundle's SHA-256 is {actual}, not the {expected} it was announced as")]
    HashMismatch { expected: String, actual: String },
    #[error("the bundle is not a tar + zstd archive: {0}")]
    Malformed(String),
    #[error("the bundle is refused: {0}")]
    Unsafe(String),
    #[error("the bundle has no runnable {entry:?}: {reason}")]
    NoEntry { entry: String, reason: String },
    #[error("cannot store the bundle: {0}")]
    Io(#[from] std::io::Error),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let mut s = String::with_capacity(64);
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

/// Checks every entry of `archive` without writing anything.
pub fn check(archive: &[u8], max_bytes: u64) -> Result<(), BundleError> {
    if archive.len() as u64 > max_bytes {
        return Err(BundleError::TooLarge {
            size: archive.len() as u64,
            limit: max_bytes,
        });
    }
    let mut tar = open(archive, max_bytes)?;
    let mut count = 0;
    for entry in tar
        .entries()
        .map_err(|e| BundleError::Malformed(e.to_string()))?
    {
        let entry = entry.map_err(|e| BundleError::Malformed(e.to_string()))?;
        count += 1;
        if count > MAX_ENTRIES {
            return Err(BundleError::Unsafe(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        let path = entry
            .path()
            .map_err(|e| BundleError::Malformed(e.to_string()))?
            .into_owned();
        let rel = safe_relative(&path)?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Continuous => {}
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|e| BundleError::Malformed(e.to_string()))?
                    .ok_or_else(|| {
                        BundleError::Malformed(format!("{} has no link target", path.display()))
                    })?;
                // A symlink is relative to its directory; a hard link to the
                // archive's root. Either way it must stay inside.
                let base = if kind == tar::EntryType::Symlink {
                    rel.parent().unwrap_or(Path::new("")).to_path_buf()
                } else {
                    PathBuf::new()
                };
                if target.is_absolute() || !stays_inside(&base, &target) {
                    return Err(BundleError::Unsafe(format!(
                        "{} links outside the bundle (to {})",
                        path.display(),
                        target.display()
                    )));
                }
            }
            tar::EntryType::XHeader
            | tar::EntryType::XGlobalHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(BundleError::Unsafe(format!(
                    "{} is a {other:?} entry (devices, FIFOs and the like are refused)",
                    path.display()
                )));
            }
        }
    }
    Ok(())
}

/// The decompressed archive, read with a size cap.
fn open(archive: &[u8], max_bytes: u64) -> Result<tar::Archive<impl Read + '_>, BundleError> {
    let limit = max_bytes.saturating_mul(UNPACKED_FACTOR);
    let z =
        zstd::stream::Decoder::new(archive).map_err(|e| BundleError::Malformed(e.to_string()))?;
    Ok(tar::Archive::new(CappedReader {
        inner: z,
        left: limit,
        limit,
    }))
}

struct CappedReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for CappedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(std::io::Error::other(format!(
                "unpacks to more than {} bytes",
                self.limit
            )));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

fn safe_relative(path: &Path) -> Result<PathBuf, BundleError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(BundleError::Unsafe(format!(
                    "{} contains ..",
                    path.display()
                )));
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::Unsafe(format!(
                    "{} is an absolute path",
                    path.display()
                )));
            }
        }
    }
    Ok(out)
}

/// Whether `base/target`, with `..` resolved lexically, stays inside.
fn stays_inside(base: &Path, target: &Path) -> bool {
    let mut depth: Vec<&std::ffi::OsStr> = base
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p),
            _ => None,
        })
        .collect();
    for c in target.components() {
        match c {
            Component::Normal(p) => depth.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if depth.pop().is_none() {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// The bundles this peer holds, under `--data-dir`.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    max_bytes: u64,
}

impl Store {
    pub fn new(root: &Path, max_bytes: u64) -> Store {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        Store { root, max_bytes }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn dir(&self, hash: &str) -> PathBuf {
        self.root.join("bundles").join(hash)
    }

    fn archive_path(&self, hash: &str) -> PathBuf {
        self.root.join("archives").join(format!("{hash}.tar.zst"))
    }

    /// Hashes of the installed bundles (at most `max`).
    pub fn list(&self, max: usize) -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(self.root.join("bundles")) else {
            return Vec::new();
        };
        let mut out: Vec<String> = dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|h| h.len() == 64 && self.has(h))
            .collect();
        out.sort();
        out.truncate(max);
        out
    }

    /// Whether the bundle is installed (unpacked and its archive kept).
    pub fn has(&self, hash: &str) -> bool {
        self.dir(hash).is_dir() && self.archive_path(hash).is_file()
    }

    /// The archive, to serve to another peer.
    pub fn archive(&self, hash: &str) -> Option<std::fs::File> {
        if !self.has(hash) {
            return None;
        }
        std::fs::File::open(self.archive_path(hash)).ok()
    }

    /// Verifies `archive` against `expected` (when given), checks it, and
    /// installs it: unpacked in a temporary directory, then renamed into
    /// place. Returns its reference. Nothing is written for a refused one.
    pub fn install(
        &self,
        archive: &[u8],
        expected: Option<&str>,
    ) -> Result<BundleRef, BundleError> {
        let hash = sha256_hex(archive);
        if let Some(e) = expected
            && e != hash
        {
            return Err(BundleError::HashMismatch {
                expected: e.to_string(),
                actual: hash,
            });
        }
        let r = BundleRef {
            hash: hash.clone(),
            size: archive.len() as u64,
        };
        if self.has(&hash) {
            return Ok(r);
        }
        check(archive, self.max_bytes)?;
        let tmp_root = self.root.join("tmp");
        std::fs::create_dir_all(&tmp_root)?;
        std::fs::create_dir_all(self.root.join("bundles"))?;
        std::fs::create_dir_all(self.root.join("archives"))?;
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{hash}-"))
            .tempdir_in(&tmp_root)?;
        let unpack_to = tmp.path().join("b");
        std::fs::create_dir(&unpack_to)?;
        let mut tar = open(archive, self.max_bytes)?;
        tar.set_preserve_permissions(true);
        tar.set_overwrite(false);
        tar.unpack(&unpack_to)
            .map_err(|e| BundleError::Malformed(e.to_string()))?;
        let archive_tmp = tmp.path().join("a");
        std::fs::write(&archive_tmp, archive)?;
        std::fs::rename(&archive_tmp, self.archive_path(&hash))?;
        match std::fs::rename(&unpack_to, self.dir(&hash)) {
            Ok(()) => {}
            // Another peer sharing this directory got there first.
            Err(_) if self.dir(&hash).is_dir() => {}
            Err(e) => return Err(e.into()),
        }
        Ok(r)
    }

    /// How `app` resolves inside an installed bundle: the bundle is the
    /// app's directory, and the app's last name part its entry.
    pub fn resolve(&self, hash: &str, app: &AppName) -> Result<crate::apps::AppSpec, BundleError> {
        resolve_in(&self.dir(hash), app)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_zst(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        build(&mut b);
        zstd::stream::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    fn file(b: &mut tar::Builder<Vec<u8>>, path: &str, body: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o755);
        h.set_entry_type(tar::EntryType::Regular);
        // set_path refuses `..` and absolute paths: write the name raw.
        let name = path.as_bytes();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_cksum();
        b.append(&h, body).unwrap();
    }

    fn link(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, target: &str) {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_entry_type(kind);
        h.set_path(path).unwrap();
        let t = target.as_bytes();
        h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
        h.set_cksum();
        b.append(&h, &[][..]).unwrap();
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
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let r = store.install(&archive, None).unwrap();
        assert!(r.is_well_formed());
        assert!(store.has(&r.hash));
        let app = AppName::parse("apps/mine/worker").unwrap();
        let spec = store.resolve(&r.hash, &app).unwrap();
        assert_eq!(spec.name, app);
        assert!(spec.source.starts_with(store.dir(&r.hash)));
        assert_eq!(
            std::fs::read_to_string(store.dir(&r.hash).join("alias")).unwrap(),
            "x"
        );
        // Installing again is a no-op.
        assert_eq!(store.install(&archive, Some(&r.hash)).unwrap(), r);
    }

    #[test]
    fn unsafe_archives_are_refused_and_nothing_is_written() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("absolute", tar_zst(|b| file(b, "/etc/evil", b"x"))),
            ("dotdot", tar_zst(|b| file(b, "../evil", b"x"))),
            ("nested dotdot", tar_zst(|b| file(b, "a/../../evil", b"x"))),
            (
                "symlink out",
                tar_zst(|b| link(b, tar::EntryType::Symlink, "l", "../../etc/passwd")),
            ),
            (
                "absolute symlink",
                tar_zst(|b| link(b, tar::EntryType::Symlink, "l", "/etc/passwd")),
            ),
            (
                "hard link out",
                tar_zst(|b| link(b, tar::EntryType::Link, "l", "../x")),
            ),
            (
                "device",
                tar_zst(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_path("dev").unwrap();
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }),
            ),
            (
                "fifo",
                tar_zst(|b| {
                    let mut h = tar::Header::new_gnu();
                    h.set_path("fifo").unwrap();
                    h.set_size(0);
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_cksum();
                    b.append(&h, &[][..]).unwrap();
                }),
            ),
            ("not zstd", b"plain bytes".to_vec()),
        ];
        for (what, archive) in cases {
            let data = tempfile::tempdir().unwrap();
            let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
            let err = store.install(&archive, None).expect_err(what);
            assert!(
                matches!(err, BundleError::Unsafe(_) | BundleError::Malformed(_)),
                "{what}: {err}"
            );
            let written: Vec<_> = walk(data.path());
            assert!(written.is_empty(), "{what}: wrote {written:?}");
        }
        // A link that stays inside is fine.
        let ok = tar_zst(|b| {
            file(b, "a/f", b"x");
            link(b, tar::EntryType::Symlink, "a/l", "../a/f");
        });
        assert!(check(&ok, DEFAULT_MAX_BUNDLE_BYTES).is_ok());
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
        // Small archive, huge contents: the unpacked cap catches it.
        let tiny = Store::new(data.path(), archive.len() as u64);
        let bomb = tar_zst(|b| file(b, "w", &vec![0u8; 50 * archive.len()]));
        if bomb.len() <= archive.len() {
            assert!(tiny.install(&bomb, None).is_err());
        }
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let wrong = "0".repeat(64);
        assert!(matches!(
            store.install(&archive, Some(&wrong)),
            Err(BundleError::HashMismatch { .. })
        ));
        assert!(walk(data.path()).is_empty());
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                out.extend(walk(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }
}
