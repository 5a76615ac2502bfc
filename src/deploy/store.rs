//! The bundles a peer holds, under `--data-dir`: installing (from a file
//! streamed into `tmp/`), the quota on what they take, and the collection
//! of those nothing refers to any more.
//!
//! The disk is the truth, but the list of installed bundles that a peer
//! announces every few seconds comes from memory ([`Store::list`] touches
//! no file): the store reads it from the disk once, when it is opened,
//! adds each bundle it installs, and compares it with the disk again at
//! every collection ([`Store::gc`], which reads the directories anyway, off
//! the runtime). That last step also catches what another peer sharing the
//! data directory installed or removed.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::archive::{self, UNPACKED_MAX_FACTOR, entry_cost};
use super::{BundleError, BundleRef, is_hash, resolve_in};
use crate::apps::{AppName, AppSpec};

/// Leftovers in `tmp/` untouched for this long are removed when the store
/// is collected: what a crash left behind. A live fetch is never this old
/// (fetches time out after two minutes).
const TMP_STALE: Duration = Duration::from_secs(3600);

/// The default quota: room for two bundles of the largest size, archive
/// and unpacked, so that a redeploy of the biggest app fits next to the
/// version it replaces (4.5 GiB with the default `--max-bundle-bytes`).
pub fn default_quota(max_bytes: u64) -> u64 {
    max_bytes.saturating_mul(2 * (1 + UNPACKED_MAX_FACTOR))
}

/// The bundles this peer holds. Cloning is cheap and clones share their
/// bookkeeping (quota reservations, collection timers).
///
/// Every method that takes a hash refuses anything but 64 lowercase hex
/// digits before it touches the file system: a hash comes from other
/// peers, and joined onto a path an absolute one would replace the store's
/// directory, a `..` leave it.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
    max_bytes: u64,
    quota: u64,
    state: Arc<Mutex<State>>,
    /// The complete bundles (unpacked, archive kept), sorted: what
    /// [`Store::list`] answers. Apart from `state`, whose lock is held
    /// while files are read and moved: this one never is.
    installed: Arc<Mutex<BTreeSet<String>>>,
}

#[derive(Debug, Default)]
struct State {
    next_claim: u64,
    /// Installs under way, by claim: the bundle's hash (never collected)
    /// and the bytes set aside for it against the quota.
    installing: HashMap<u64, (String, u64)>,
    /// What each installed bundle takes (archive and unpacked), measured
    /// once: bundles are immutable.
    sizes: HashMap<String, u64>,
    /// Since when each held bundle has been unreferenced.
    unreferenced_since: HashMap<String, Instant>,
}

/// An archive being written into the store's `tmp/`, hashed as it goes, so
/// that nobody needs the whole archive in memory.
pub struct ArchiveWriter {
    file: tempfile::NamedTempFile,
    hasher: Sha256,
    size: u64,
    limit: u64,
}

impl ArchiveWriter {
    /// Writes the next bytes of the archive; refused past the writer's
    /// limit (what was written stays, and goes with the writer).
    pub fn append(&mut self, chunk: &[u8]) -> Result<(), BundleError> {
        let size = self.size + chunk.len() as u64;
        if size > self.limit {
            return Err(BundleError::TooLarge {
                size,
                limit: self.limit,
            });
        }
        self.file.write_all(chunk)?;
        self.hasher.update(chunk);
        self.size = size;
        Ok(())
    }

    /// The archive is complete: flushed, and named by its hash.
    pub fn finish(mut self) -> Result<Received, BundleError> {
        self.file.flush()?;
        Ok(Received {
            hash: super::hex(&self.hasher.finalize()),
            size: self.size,
            file: self.file,
        })
    }
}

/// A complete archive in `tmp/`, with the hash of its bytes. Dropped
/// without being installed, it is deleted.
pub struct Received {
    file: tempfile::NamedTempFile,
    hash: String,
    size: u64,
}

impl Received {
    /// The SHA-256 of the archive's bytes, lowercase hex.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The archive's length in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }
}

/// An install under way; dropping it releases what it reserved.
struct Claim<'a> {
    store: &'a Store,
    id: u64,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.store.lock().installing.remove(&self.id);
    }
}

impl Store {
    /// Opens the store under `root` (its directories are created when the
    /// first bundle arrives), with the default quota for archives of at
    /// most `max_bytes`. Reads which bundles are installed: once, here.
    pub fn new(root: &Path, max_bytes: u64) -> Store {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let store = Store {
            root,
            max_bytes,
            quota: default_quota(max_bytes),
            state: Arc::default(),
            installed: Arc::default(),
        };
        *store.installed() = store.complete(&store.held());
        store
    }

    /// Caps the bytes all installed bundles may take together (archives
    /// plus unpacked, measured as [`archive::unpacked_limit`] does).
    pub fn with_quota(mut self, quota: u64) -> Store {
        self.quota = quota;
        self
    }

    /// The largest archive this store takes (`--max-bundle-bytes`).
    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    /// The bytes all installed bundles may take together.
    pub fn quota(&self) -> u64 {
        self.quota
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("store lock")
    }

    fn installed(&self) -> MutexGuard<'_, BTreeSet<String>> {
        self.installed.lock().expect("installed lock")
    }

    /// The bundle's directory (None for anything but a hash).
    pub fn dir(&self, hash: &str) -> Option<PathBuf> {
        is_hash(hash).then(|| self.root.join("bundles").join(hash))
    }

    fn archive_path(&self, hash: &str) -> Option<PathBuf> {
        is_hash(hash).then(|| self.root.join("archives").join(format!("{hash}.tar.zst")))
    }

    fn tmp_dir(&self) -> std::io::Result<PathBuf> {
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp)?;
        Ok(tmp)
    }

    /// Hashes of the installed bundles, sorted, at most `max`: from memory,
    /// without touching the disk (see the module's documentation), so
    /// cheap enough for every announcement.
    pub fn list(&self, max: usize) -> Vec<String> {
        self.installed().iter().take(max).cloned().collect()
    }

    /// Those of `held` that are complete on disk.
    fn complete(&self, held: &HashSet<String>) -> BTreeSet<String> {
        held.iter().filter(|h| self.has(h)).cloned().collect()
    }

    /// Sets the list of installed bundles to what the disk holds. Called
    /// with the state lock held, so `installing` (the hashes claimed) says
    /// which installs are under way: one of those may have listed its
    /// bundle after the disk was read, and stays listed.
    fn relist(&self, installing: &HashSet<String>) {
        let mut complete = self.complete(&self.held());
        let mut listed = self.installed();
        complete.extend(listed.iter().filter(|h| installing.contains(*h)).cloned());
        *listed = complete;
    }

    /// Whether the bundle is installed (unpacked and its archive kept).
    pub fn has(&self, hash: &str) -> bool {
        match (self.dir(hash), self.archive_path(hash)) {
            (Some(dir), Some(archive)) => dir.is_dir() && archive.is_file(),
            _ => false,
        }
    }

    /// The archive and its length, to serve to another peer. Blocking.
    pub fn archive(&self, hash: &str) -> Option<(std::fs::File, u64)> {
        if !self.has(hash) {
            return None;
        }
        let file = std::fs::File::open(self.archive_path(hash)?).ok()?;
        let len = file.metadata().ok()?.len();
        Some((file, len))
    }

    /// Starts receiving an archive of at most `limit` bytes (and never more
    /// than `--max-bundle-bytes`) into `tmp/`.
    pub fn receive(&self, limit: u64) -> Result<ArchiveWriter, BundleError> {
        let file = tempfile::Builder::new()
            .prefix("in-")
            .tempfile_in(self.tmp_dir()?)?;
        Ok(ArchiveWriter {
            file,
            hasher: Sha256::new(),
            size: 0,
            limit: limit.min(self.max_bytes),
        })
    }

    /// [`Store::install_received`] for an archive in memory.
    pub fn install(
        &self,
        archive: &[u8],
        expected: Option<&str>,
    ) -> Result<BundleRef, BundleError> {
        let mut w = self.receive(self.max_bytes)?;
        w.append(archive)?;
        self.install_received(w.finish()?, expected)
    }

    /// Verifies the archive against `expected` (when given), checks it
    /// completely, and installs it: unpacked in `tmp/`, then renamed into
    /// place. Nothing outside `tmp/` is written for a refused one.
    pub fn install_received(
        &self,
        incoming: Received,
        expected: Option<&str>,
    ) -> Result<BundleRef, BundleError> {
        if let Some(e) = expected {
            if !is_hash(e) {
                return Err(BundleError::BadHash(e.to_string()));
            }
            if e != incoming.hash {
                return Err(BundleError::HashMismatch {
                    expected: e.to_string(),
                    actual: incoming.hash,
                });
            }
        }
        let r = BundleRef {
            hash: incoming.hash.clone(),
            size: incoming.size,
        };
        // Claimed before looking: the collector leaves a claimed bundle
        // alone, so it cannot vanish between "it is here" and Ok.
        let claim = self.claim(&r.hash);
        if self.has(&r.hash) {
            self.installed().insert(r.hash.clone());
            return Ok(r);
        }
        let plan = archive::check(incoming.file.reopen()?, r.size, self.max_bytes)?;
        let cost = r.size + plan.unpacked;
        self.reserve(&claim, cost)?;
        self.place(incoming, &r)?;
        self.lock().sizes.insert(r.hash.clone(), cost);
        self.installed().insert(r.hash.clone());
        Ok(r)
    }

    fn claim(&self, hash: &str) -> Claim<'_> {
        let mut st = self.lock();
        st.next_claim += 1;
        let id = st.next_claim;
        st.installing.insert(id, (hash.to_string(), 0));
        Claim { store: self, id }
    }

    /// Sets `need` bytes aside for `claim`, if the quota has room.
    fn reserve(&self, claim: &Claim<'_>, need: u64) -> Result<(), BundleError> {
        // Measuring a bundle walks its files: done once per bundle, and
        // mostly here, before the lock.
        self.measure_unmeasured();
        let mut st = self.lock();
        let used = self.used(&st);
        if used.saturating_add(need) > self.quota {
            return Err(BundleError::QuotaExceeded {
                need,
                used,
                quota: self.quota,
            });
        }
        if let Some(entry) = st.installing.get_mut(&claim.id) {
            entry.1 = need;
        }
        Ok(())
    }

    /// Bytes taken by what is held plus what installs under way reserved.
    fn used(&self, st: &State) -> u64 {
        let mut used: u64 = st.installing.values().map(|(_, n)| n).sum();
        for h in self.held() {
            let n = match st.sizes.get(&h) {
                Some(n) => *n,
                None => self.measure(&h),
            };
            used = used.saturating_add(n);
        }
        used
    }

    /// What the store holds and takes, in bytes (see [`Store::with_quota`]).
    pub fn usage(&self) -> u64 {
        self.measure_unmeasured();
        let st = self.lock();
        self.used(&st)
    }

    fn measure_unmeasured(&self) {
        let todo: Vec<String> = {
            let st = self.lock();
            self.held()
                .into_iter()
                .filter(|h| !st.sizes.contains_key(h) && self.has(h))
                .collect()
        };
        for h in todo {
            let n = self.measure(&h);
            self.lock().sizes.insert(h, n);
        }
    }

    /// A bundle's archive plus its unpacked files, counted as the unpacked
    /// limit counts them (a 512-byte header per entry, data in 512s).
    fn measure(&self, hash: &str) -> u64 {
        let archive = self
            .archive_path(hash)
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len());
        let mut total = archive;
        let mut dirs: Vec<PathBuf> = self.dir(hash).into_iter().collect();
        while let Some(dir) = dirs.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(meta) = e.path().symlink_metadata() else {
                    continue;
                };
                if meta.is_dir() {
                    dirs.push(e.path());
                }
                let data = if meta.is_file() { meta.len() } else { 0 };
                total = total.saturating_add(entry_cost(data));
            }
        }
        total
    }

    /// Unpacks a checked archive and renames it and its directory into place.
    fn place(&self, incoming: Received, r: &BundleRef) -> Result<(), BundleError> {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("{}-", r.hash))
            .tempdir_in(self.tmp_dir()?)?;
        let unpack_to = tmp.path().join("b");
        std::fs::DirBuilder::new().mode(0o755).create(&unpack_to)?;
        archive::unpack(incoming.file.reopen()?, r.size, self.max_bytes, &unpack_to)?;
        let (dir, archive_path) = match (self.dir(&r.hash), self.archive_path(&r.hash)) {
            (Some(d), Some(a)) => (d, a),
            _ => return Err(BundleError::BadHash(r.hash.clone())),
        };
        std::fs::create_dir_all(self.root.join("bundles"))?;
        std::fs::create_dir_all(self.root.join("archives"))?;
        incoming
            .file
            .persist(&archive_path)
            .map_err(|e| BundleError::Io(e.error))?;
        match std::fs::rename(&unpack_to, &dir) {
            Ok(()) => Ok(()),
            // Another peer sharing this directory got there first.
            Err(_) if dir.is_dir() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// How `app` resolves inside an installed bundle: the bundle is the
    /// app's directory, and the app's last name part its entry.
    pub fn resolve(&self, hash: &str, app: &AppName) -> Result<AppSpec, BundleError> {
        let dir = self
            .dir(hash)
            .ok_or_else(|| BundleError::BadHash(hash.to_string()))?;
        resolve_in(&dir, app)
    }

    /// Hashes with anything in `bundles/` or `archives/`, complete or not.
    fn held(&self) -> HashSet<String> {
        let names = |sub: &str| -> Vec<String> {
            std::fs::read_dir(self.root.join(sub))
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        };
        let archives = names("archives");
        let from_archives = archives.iter().filter_map(|n| n.strip_suffix(".tar.zst"));
        names("bundles")
            .iter()
            .map(String::as_str)
            .chain(from_archives)
            .filter(|h| is_hash(h))
            .map(str::to_string)
            .collect()
    }

    /// Removes the bundles not in `keep` that have been unreferenced for
    /// `grace` (a replaced version's workers finish their jobs from its
    /// directory for a while; a rollback within the grace costs no fetch),
    /// never one being installed; and leftovers of crashes in `tmp/`. Then
    /// sets the list of installed bundles to what the disk holds.
    /// Returns the hashes removed. Blocking (it deletes files).
    pub fn gc(&self, keep: &HashSet<String>, grace: Duration) -> Vec<String> {
        self.gc_at(keep, grace, Instant::now())
    }

    fn gc_at(&self, keep: &HashSet<String>, grace: Duration, now: Instant) -> Vec<String> {
        let mut removed = Vec::new();
        let mut hidden = Vec::new();
        {
            let mut st = self.lock();
            let held = self.held();
            let busy: HashSet<String> = st.installing.values().map(|(h, _)| h.clone()).collect();
            st.unreferenced_since
                .retain(|h, _| held.contains(h) && !keep.contains(h) && !busy.contains(h));
            for h in held {
                if keep.contains(&h) || busy.contains(&h) {
                    continue;
                }
                let since = *st.unreferenced_since.entry(h.clone()).or_insert(now);
                if now.saturating_duration_since(since) < grace {
                    continue;
                }
                // Out of sight while the lock is held: an install that
                // claims it after this finds nothing and installs afresh.
                match self.hide(&h) {
                    Ok(dir) => hidden.extend(dir),
                    Err(e) => {
                        tracing::warn!(bundle = &h[..12], "cannot remove an unused bundle: {e}");
                        continue;
                    }
                }
                st.unreferenced_since.remove(&h);
                st.sizes.remove(&h);
                removed.push(h);
            }
            self.relist(&busy);
        }
        // Deleting a big tree takes a while: not under the lock.
        drop(hidden);
        self.sweep_tmp();
        removed
    }

    /// Takes a bundle out of `bundles/` and `archives/` at once; returns its
    /// directory, moved into `tmp/` and deleted when dropped.
    fn hide(&self, hash: &str) -> std::io::Result<Option<tempfile::TempDir>> {
        let (Some(dir), Some(archive)) = (self.dir(hash), self.archive_path(hash)) else {
            return Ok(None);
        };
        match std::fs::remove_file(&archive) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        if !dir.is_dir() {
            return Ok(None);
        }
        let grave = tempfile::Builder::new()
            .prefix("gc-")
            .tempdir_in(self.tmp_dir()?)?;
        std::fs::rename(&dir, grave.path().join("b"))?;
        Ok(Some(grave))
    }

    fn sweep_tmp(&self) {
        let Ok(entries) = std::fs::read_dir(self.root.join("tmp")) else {
            return;
        };
        let now = SystemTime::now();
        for e in entries.flatten() {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            let age = meta
                .modified()
                .ok()
                .and_then(|m| now.duration_since(m).ok());
            if age.is_none_or(|a| a < TMP_STALE) {
                continue;
            }
            let gone = if meta.is_dir() {
                std::fs::remove_dir_all(e.path())
            } else {
                std::fs::remove_file(e.path())
            };
            if let Err(err) = gone {
                tracing::warn!(path = %e.path().display(), "cannot remove a stale temporary file: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::DEFAULT_MAX_BUNDLE_BYTES;
    use crate::deploy::testing::*;

    fn app(body: &[u8]) -> Vec<u8> {
        tar_zst(|b| file(b, "worker", body))
    }

    #[test]
    fn a_malformed_hash_never_reaches_the_file_system() {
        // A "hash" that is an absolute path of 64 characters, naming a
        // bundle-like pair outside the store: joined onto the store's
        // directory it would replace it.
        let outside = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
        let base = outside.path().to_str().unwrap();
        let evil = format!("{base}/{}", "x".repeat(63 - base.len()));
        assert_eq!(evil.len(), 64);
        std::fs::create_dir(&evil).unwrap();
        std::fs::write(format!("{evil}/worker"), "#!/bin/sh\n").unwrap();
        std::fs::write(format!("{evil}.tar.zst"), b"secret").unwrap();
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let good = "ab".repeat(32);
        let dotdot = format!("../../../../../../../../../../../../../..{}", &evil[..24]);
        for bad in [
            evil.as_str(),
            &dotdot,
            &good.to_uppercase(),
            &good[..63],
            "",
            ".",
        ] {
            assert!(!store.has(bad), "{bad}");
            assert!(store.archive(bad).is_none(), "served {bad}");
            assert!(store.dir(bad).is_none(), "{bad}");
            let app = AppName::parse("apps/x/worker").unwrap();
            assert!(
                matches!(store.resolve(bad, &app), Err(BundleError::BadHash(_))),
                "{bad}"
            );
            assert!(
                matches!(
                    store.install(&app_bytes(), Some(bad)),
                    Err(BundleError::BadHash(_))
                ),
                "{bad}"
            );
        }
        assert!(store.dir(&good).is_some());
    }

    fn app_bytes() -> Vec<u8> {
        app(b"#!/bin/sh\n")
    }

    #[test]
    fn the_writer_stops_at_its_limit_and_a_dropped_archive_is_deleted() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), 1000);
        let mut w = store.receive(10).unwrap();
        w.append(&[1; 10]).unwrap();
        assert!(matches!(
            w.append(&[1]),
            Err(BundleError::TooLarge {
                size: 11,
                limit: 10
            })
        ));
        let r = w.finish().unwrap();
        assert_eq!(
            (r.size(), r.hash()),
            (10, crate::deploy::sha256_hex(&[1; 10]).as_str())
        );
        assert_eq!(walk(data.path()).len(), 1);
        drop(r);
        assert!(walk(data.path()).is_empty());
        // Never beyond --max-bundle-bytes, whatever is asked.
        let mut w = store.receive(u64::MAX).unwrap();
        assert!(w.append(&[0; 1001]).is_err());
    }

    #[test]
    fn the_quota_holds_across_installs_and_restarts() {
        let (a, b) = (app(b"#!/bin/sh\n# a\n"), app(b"#!/bin/sh\n# b\n"));
        let data = tempfile::tempdir().unwrap();
        let probe = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let ra = probe.install(&a, None).unwrap();
        let one = probe.usage();
        // The archive, plus its one file unpacked: a header and a block.
        assert_eq!(one, ra.size + 1024);
        // Room for one bundle and a bit, not for two.
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES).with_quota(one + one / 2);
        assert_eq!(store.usage(), one, "measured from the disk after a restart");
        let err = store.install(&b, None).unwrap_err();
        assert!(
            matches!(err, BundleError::QuotaExceeded { used, .. } if used == one),
            "{err}"
        );
        assert!(err.to_string().contains("--max-store-bytes"), "{err}");
        assert_eq!(
            walk(&data.path().join("bundles")).len(),
            1,
            "nothing of b was written"
        );
        assert!(walk(&data.path().join("tmp")).is_empty());
        // What is installed already is taken again without counting twice.
        assert!(store.install(&a, None).is_ok());
    }

    fn keep(hashes: &[&BundleRef]) -> HashSet<String> {
        hashes.iter().map(|r| r.hash.clone()).collect()
    }

    #[test]
    fn unreferenced_bundles_go_after_the_grace_and_not_before() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let a = store.install(&app(b"#!/bin/sh\n# a\n"), None).unwrap();
        let b = store.install(&app(b"#!/bin/sh\n# b\n"), None).unwrap();
        let only_a = store.usage() / 2;
        let (grace, t0) = (Duration::from_secs(600), Instant::now());
        let secs = |s: u64| t0 + Duration::from_secs(s);
        let none = HashSet::new();
        assert!(store.gc_at(&keep(&[&a]), grace, t0).is_empty());
        assert!(store.gc_at(&keep(&[&a]), grace, secs(599)).is_empty());
        assert!(store.has(&b.hash));
        assert_eq!(
            store.gc_at(&keep(&[&a]), grace, secs(600)),
            vec![b.hash.clone()]
        );
        assert!(!store.has(&b.hash) && store.has(&a.hash));
        let b_files = walk(data.path())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains(&b.hash))
            .collect::<Vec<_>>();
        assert!(b_files.is_empty(), "{b_files:?}");
        assert!(walk(&data.path().join("tmp")).is_empty());
        assert_eq!(store.usage(), only_a);
        // Referenced again within its grace: the clock starts over.
        assert!(store.gc_at(&none, grace, secs(700)).is_empty());
        assert!(store.gc_at(&keep(&[&a]), grace, secs(1000)).is_empty());
        assert!(store.gc_at(&none, grace, secs(1400)).is_empty());
        assert!(store.gc_at(&none, grace, secs(1999)).is_empty());
        assert!(store.has(&a.hash));
        assert_eq!(store.gc_at(&none, grace, secs(2000)), vec![a.hash.clone()]);
        assert_eq!(store.usage(), 0);
        // And it can come back.
        assert!(store.install(&app(b"#!/bin/sh\n# a\n"), None).is_ok());
    }

    #[test]
    fn the_list_of_installed_bundles_comes_from_memory() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        assert!(store.list(10).is_empty());
        let a = store.install(&app(b"#!/bin/sh\n# a\n"), None).unwrap();
        let b = store.install(&app(b"#!/bin/sh\n# b\n"), None).unwrap();
        let mut both = vec![a.hash.clone(), b.hash.clone()];
        both.sort();
        assert_eq!(store.list(10), both);
        assert_eq!(store.list(1), both[..1]);
        // Read from the disk when a store is opened; an archive without
        // its directory is not a bundle.
        let orphan = data
            .path()
            .join(format!("archives/{}.tar.zst", "cd".repeat(32)));
        std::fs::write(&orphan, b"x").unwrap();
        assert_eq!(
            Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES).list(10),
            both
        );
        std::fs::remove_file(&orphan).unwrap();
        // Listing reads no file: with the bundles moved away behind its
        // back, the list is unchanged...
        let bundles = data.path().join("bundles");
        let away = data.path().join("away");
        std::fs::rename(&bundles, &away).unwrap();
        assert_eq!(store.list(10), both);
        // ...until a collection compares it with the disk.
        let all = keep(&[&a, &b]);
        let grace = Duration::from_secs(600);
        assert!(store.gc(&all, grace).is_empty());
        assert!(store.list(10).is_empty());
        std::fs::rename(&away, &bundles).unwrap();
        assert!(store.gc(&all, grace).is_empty());
        assert_eq!(store.list(10), both);
        // What another peer sharing the directory installs is listed after
        // the next collection too.
        let other = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let c = other.install(&app(b"#!/bin/sh\n# c\n"), None).unwrap();
        assert_eq!(store.list(10), both);
        let all = keep(&[&a, &b, &c]);
        assert!(store.gc(&all, grace).is_empty());
        assert!(store.list(10).contains(&c.hash));
        // What a collection removes leaves the list at once.
        let removed = store.gc(&keep(&[&a, &c]), Duration::ZERO);
        assert_eq!(removed, vec![b.hash.clone()]);
        assert!(!store.list(10).contains(&b.hash));
        assert_eq!(store.list(10).len(), 2);
    }

    #[test]
    fn a_bundle_being_installed_is_never_collected() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let a = store.install(&app_bytes(), None).unwrap();
        let claim = store.claim(&a.hash);
        let later = Instant::now() + Duration::from_secs(3600);
        assert!(
            store
                .gc_at(&HashSet::new(), Duration::ZERO, later)
                .is_empty()
        );
        assert!(store.has(&a.hash));
        drop(claim);
        assert_eq!(
            store.gc_at(&HashSet::new(), Duration::ZERO, later),
            vec![a.hash]
        );
    }

    #[test]
    fn what_a_crash_left_is_collected_too() {
        let data = tempfile::tempdir().unwrap();
        let store = Store::new(data.path(), DEFAULT_MAX_BUNDLE_BYTES);
        let tmp = store.tmp_dir().unwrap();
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        std::fs::write(tmp.join("in-old"), b"x").unwrap();
        std::fs::create_dir_all(tmp.join("unpack-old/b")).unwrap();
        std::fs::write(tmp.join("unpack-old/b/f"), b"x").unwrap();
        for old in ["in-old", "unpack-old"] {
            let f = std::fs::File::open(tmp.join(old)).unwrap();
            f.set_modified(two_hours_ago).unwrap();
        }
        std::fs::write(tmp.join("in-new"), b"x").unwrap();
        // An archive without its directory (a crash between the renames).
        let orphan = "cd".repeat(32);
        std::fs::create_dir_all(data.path().join("archives")).unwrap();
        let orphan_path = data.path().join(format!("archives/{orphan}.tar.zst"));
        std::fs::write(&orphan_path, b"x").unwrap();
        let removed = store.gc(&HashSet::new(), Duration::ZERO);
        assert_eq!(removed, vec![orphan]);
        assert!(!orphan_path.exists());
        assert_eq!(walk(&tmp), vec![tmp.join("in-new")]);
    }
}
