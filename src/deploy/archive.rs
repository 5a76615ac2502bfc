//! Reading a bundle archive: the rules every entry must pass, checked over
//! the whole archive before anything is written ([`check`]), and the
//! unpacking that follows them ([`unpack`]).
//!
//! Both passes stream: the archive is read from a file through the zstd
//! decoder and never held in memory whole.
//!
//! What is refused, and why:
//! - an unpacked size out of proportion to the archive. A decompression
//!   bomb costs its sender a few hundred bytes and every peer that installs
//!   it gigabytes, so the allowance grows with the archive
//!   ([`unpacked_limit`]);
//! - paths that are absolute or contain `..`, device/FIFO/socket entries;
//! - a symlink whose target leaves the bundle, or passes through another
//!   symlink on the way. `..` after a symlink climbs from wherever the link
//!   points, not from where it sits, so once links may be chained the
//!   lexical check of each link alone proves nothing (`d/y -> ..`, then
//!   `x -> d/y/../../etc` looks inside but is not);
//! - an entry whose path passes through a symlink (or a file): it would be
//!   written wherever that link points;
//! - a hard link to anything but a regular file the archive already wrote;
//! - the same path twice (later entries would silently replace earlier
//!   ones that were checked in another role).
//!
//! Modes are masked on the way out: files keep at most `0755` (no setuid,
//! setgid or sticky bit, nothing writable by group or world), directories
//! get `0755`; the umask narrows both further.

use std::cell::Cell;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use super::BundleError;

/// Bytes of a tar header, and the unit tar stores data in.
const BLOCK: u64 = 512;
/// Entries an archive may have, at most (each costs an inode unpacked).
pub const MAX_ENTRIES: usize = 200_000;
/// Unpacked bytes allowed per archive byte. zstd at the default level
/// packs source code, `node_modules` and binaries 3-10 times; 32 leaves
/// room for unusually repetitive data while a bomb (zstd reaches ratios in
/// the thousands on zeros) is stopped early.
pub const UNPACKED_RATIO: u64 = 32;
/// Allowed on top of the ratio, so that a tiny app with a little padding
/// or an empty-ish data file is never refused for being well compressed.
pub const UNPACKED_FLOOR: u64 = 1024 * 1024;
/// Whatever the archive's size, never more than this many times
/// `--max-bundle-bytes` unpacked.
pub const UNPACKED_MAX_FACTOR: u64 = 8;
/// Largest zstd window accepted, as a power of two (16 MiB). The decoder
/// allocates the window a frame asks for, so without this a 1 KiB archive
/// could make every peer allocate 128 MiB (the library's own ceiling) per
/// fetch. Every standard level up to 19 stays within it; `--long` and
/// `--ultra` archives are refused.
const WINDOW_LOG_MAX: u32 = 24;

/// How many bytes an archive of `archive_len` bytes may unpack to: 32 times
/// its size plus 1 MiB, and never more than 8 times `max_bytes`.
///
/// The unpacked size is measured as tar stores it: a 512-byte header per
/// entry (directories and links included: each costs an inode) plus its
/// data rounded up to 512 bytes. That is exactly the length of the
/// decompressed stream, so the same number bounds the decompression too.
pub fn unpacked_limit(archive_len: u64, max_bytes: u64) -> u64 {
    archive_len
        .saturating_mul(UNPACKED_RATIO)
        .saturating_add(UNPACKED_FLOOR)
        .min(max_bytes.saturating_mul(UNPACKED_MAX_FACTOR))
}

/// What one entry costs unpacked (see [`unpacked_limit`]).
pub fn entry_cost(data_len: u64) -> u64 {
    BLOCK.saturating_add(data_len.div_ceil(BLOCK).saturating_mul(BLOCK))
}

/// What a checked archive will write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Entries in the archive, directories and links included (at most
    /// 200,000: `MAX_ENTRIES`).
    pub entries: usize,
    /// Unpacked size, as [`unpacked_limit`] measures it.
    pub unpacked: u64,
}

/// Checks every entry of the archive read from `archive` (`archive_len`
/// bytes) without writing anything.
pub fn check(archive: impl Read, archive_len: u64, max_bytes: u64) -> Result<Plan, BundleError> {
    if archive_len > max_bytes {
        return Err(BundleError::TooLarge {
            size: archive_len,
            limit: max_bytes,
        });
    }
    let limit = unpacked_limit(archive_len, max_bytes);
    let (mut tar, cap) = open(archive, archive_len, limit)?;
    let mut tree = Tree::default();
    let mut plan = Plan {
        entries: 0,
        unpacked: 0,
    };
    for entry in entries(&mut tar, &cap)? {
        let entry = entry?;
        plan.entries += 1;
        if plan.entries > MAX_ENTRIES {
            return Err(BundleError::Unsafe(format!(
                "more than {MAX_ENTRIES} entries"
            )));
        }
        // Counted from the header, before the data is read: an entry that
        // claims a terabyte is refused at once, not after decompressing.
        plan.unpacked = plan.unpacked.saturating_add(entry_cost(entry.size));
        if plan.unpacked > limit {
            return Err(BundleError::UnpackedTooLarge {
                limit,
                archive: archive_len,
            });
        }
        tree.add(&entry)?;
    }
    tree.check_symlinks()?;
    Ok(plan)
}

/// Unpacks an archive that [`check`] accepted into `dest` (an empty
/// directory), with modes masked.
pub fn unpack(
    archive: impl Read,
    archive_len: u64,
    max_bytes: u64,
    dest: &Path,
) -> Result<(), BundleError> {
    let limit = unpacked_limit(archive_len, max_bytes);
    let (mut tar, cap) = open(archive, archive_len, limit)?;
    for entry in entries(&mut tar, &cap)? {
        let mut entry = entry?;
        let to = dest.join(&entry.path);
        match entry.kind {
            Kind::Dir => make_dirs(&to)?,
            Kind::File => {
                make_dirs(to.parent().unwrap_or(dest))?;
                // A checked archive fails here only if the disk does (or
                // the file changed since: then the cap still holds).
                write_file(&to, entry.mode, &mut entry.data).map_err(|e| match cap.error(e) {
                    BundleError::Malformed(m) => BundleError::Io(std::io::Error::other(m)),
                    over => over,
                })?;
            }
            Kind::Symlink => {
                make_dirs(to.parent().unwrap_or(dest))?;
                std::os::unix::fs::symlink(entry.link()?, &to)?;
            }
            Kind::HardLink => {
                make_dirs(to.parent().unwrap_or(dest))?;
                std::fs::hard_link(dest.join(entry.link()?), &to)?;
            }
            Kind::Extension => {}
        }
    }
    Ok(())
}

fn make_dirs(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
}

fn write_file(to: &Path, mode: u32, data: &mut impl Read) -> std::io::Result<()> {
    // `create_new` (O_EXCL) never follows a link at `to`; the mask drops
    // setuid/setgid/sticky and group/world write whatever the archive says.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & 0o755)
        .open(to)?;
    std::io::copy(data, &mut f)?;
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    HardLink,
    /// Pax global headers and the like: metadata, nothing to write.
    Extension,
}

/// One entry, its header already validated.
struct Entry<'a, R: Read> {
    path: PathBuf,
    kind: Kind,
    size: u64,
    mode: u32,
    link: Option<PathBuf>,
    data: tar::Entry<'a, R>,
}

impl<R: Read> Entry<'_, R> {
    fn link(&self) -> Result<&Path, BundleError> {
        self.link.as_deref().ok_or_else(|| {
            BundleError::Malformed(format!("{} has no link target", self.path.display()))
        })
    }
}

/// What the length cap on a decompressed archive was, and whether it was
/// hit: the tar reader wraps the cap's error in its own, so this tells a
/// bomb apart from a malformed archive.
#[derive(Clone)]
struct Cap {
    over: Rc<Cell<bool>>,
    limit: u64,
    archive_len: u64,
}

impl Cap {
    fn error(&self, e: std::io::Error) -> BundleError {
        if self.over.get() {
            BundleError::UnpackedTooLarge {
                limit: self.limit,
                archive: self.archive_len,
            }
        } else {
            malformed(e)
        }
    }
}

/// The archive read through the zstd decoder, with its length capped.
fn open<R: Read>(
    archive: R,
    archive_len: u64,
    limit: u64,
) -> Result<(tar::Archive<impl Read>, Cap), BundleError> {
    let mut z = zstd::stream::read::Decoder::new(archive).map_err(malformed)?;
    z.window_log_max(WINDOW_LOG_MAX).map_err(malformed)?;
    let cap = Cap {
        over: Rc::new(Cell::new(false)),
        limit,
        archive_len,
    };
    let capped = Capped {
        inner: z,
        // The stream ends with two zero blocks nobody counts as entries.
        left: limit.saturating_add(2 * BLOCK),
        over: cap.over.clone(),
    };
    Ok((tar::Archive::new(capped), cap))
}

/// The archive's entries, each described and its kind and path validated.
fn entries<'a, R: Read>(
    tar: &'a mut tar::Archive<R>,
    cap: &Cap,
) -> Result<impl Iterator<Item = Result<Entry<'a, R>, BundleError>>, BundleError> {
    let cap = cap.clone();
    let all = tar.entries().map_err(|e| cap.error(e))?;
    Ok(all.map(move |e| describe(e.map_err(|e| cap.error(e))?)))
}

fn malformed(e: impl std::fmt::Display) -> BundleError {
    BundleError::Malformed(e.to_string())
}

/// Reads the header of one entry and refuses the kinds and paths that are
/// never acceptable, whatever else the archive holds.
fn describe<R: Read>(data: tar::Entry<'_, R>) -> Result<Entry<'_, R>, BundleError> {
    let raw_path = data.path().map_err(malformed)?.into_owned();
    let kind = match data.header().entry_type() {
        tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Symlink => Kind::Symlink,
        tar::EntryType::Link => Kind::HardLink,
        tar::EntryType::XHeader
        | tar::EntryType::XGlobalHeader
        | tar::EntryType::GNULongName
        | tar::EntryType::GNULongLink => Kind::Extension,
        other => {
            return Err(BundleError::Unsafe(format!(
                "{} is a {other:?} entry (devices, FIFOs and the like are refused)",
                raw_path.display()
            )));
        }
    };
    // A metadata header's name is whatever its writer made up (GNU tar's
    // are absolute): it names nothing that gets written.
    let path = match kind {
        Kind::Extension => PathBuf::new(),
        _ => safe_relative(&raw_path)?,
    };
    if path.as_os_str().is_empty() && !matches!(kind, Kind::Dir | Kind::Extension) {
        return Err(BundleError::Unsafe(
            "an entry names the bundle's own directory".into(),
        ));
    }
    let link = match kind {
        Kind::Symlink | Kind::HardLink => {
            data.link_name().map_err(malformed)?.map(|l| l.into_owned())
        }
        _ => None,
    };
    // Only a file's mode is used: directories get 0755, links have none.
    let mode = match kind {
        Kind::File => data.header().mode().map_err(malformed)?,
        _ => 0,
    };
    Ok(Entry {
        path,
        kind,
        size: data.size(),
        mode,
        link,
        data,
    })
}

/// The paths the archive creates, as it creates them, for the rules that
/// depend on other entries.
#[derive(Default)]
struct Tree {
    kinds: HashMap<PathBuf, Kind>,
    /// Symlinks and their targets, checked once every entry is known (a
    /// link may go through a link defined after it).
    symlinks: Vec<(PathBuf, PathBuf)>,
}

impl Tree {
    fn add<R: Read>(&mut self, e: &Entry<'_, R>) -> Result<(), BundleError> {
        match e.kind {
            Kind::Extension => return Ok(()),
            Kind::Dir if e.path.as_os_str().is_empty() => return Ok(()),
            Kind::Symlink => {
                let target = e.link()?;
                symlink_stays_inside(&e.path, target)?;
                self.symlinks.push((e.path.clone(), target.to_path_buf()));
            }
            Kind::HardLink => self.check_hard_link(&e.path, e.link()?)?,
            Kind::Dir | Kind::File => {}
        }
        self.place(&e.path, e.kind)
    }

    /// Records `path`, refusing it if a parent is not a plain directory or
    /// if it is there already (a directory may be named twice).
    fn place(&mut self, path: &Path, kind: Kind) -> Result<(), BundleError> {
        for parent in path.ancestors().skip(1) {
            if parent.as_os_str().is_empty() {
                break;
            }
            match self.kinds.get(parent) {
                // Its own parents were checked when it was recorded.
                Some(Kind::Dir) => break,
                Some(other) => {
                    return Err(BundleError::Unsafe(format!(
                        "{} lies under {}, which is a {}",
                        path.display(),
                        parent.display(),
                        other.noun()
                    )));
                }
                None => {
                    self.kinds.insert(parent.to_path_buf(), Kind::Dir);
                }
            }
        }
        // A hard link is a regular file once written.
        let kind = if kind == Kind::HardLink {
            Kind::File
        } else {
            kind
        };
        match self.kinds.get(path) {
            None => {
                self.kinds.insert(path.to_path_buf(), kind);
                Ok(())
            }
            Some(Kind::Dir) if kind == Kind::Dir => Ok(()),
            Some(_) => Err(BundleError::Unsafe(format!(
                "{} appears twice",
                path.display()
            ))),
        }
    }

    fn check_hard_link(&self, path: &Path, target: &Path) -> Result<(), BundleError> {
        let target = safe_relative(target)?;
        if self.kinds.get(&target) == Some(&Kind::File) {
            return Ok(());
        }
        Err(BundleError::Unsafe(format!(
            "{} is a hard link to {}, which is not a regular file earlier in the archive",
            path.display(),
            target.display()
        )))
    }

    /// No symlink's target may pass through another symlink: only its last
    /// component may be one (that link is checked in its own right).
    fn check_symlinks(&self) -> Result<(), BundleError> {
        for (link, target) in &self.symlinks {
            let mut at = link.parent().unwrap_or(Path::new("")).to_path_buf();
            let mut parts = target.components().peekable();
            while let Some(c) = parts.next() {
                match c {
                    Component::Normal(p) => at.push(p),
                    Component::ParentDir => {
                        at.pop();
                    }
                    _ => {}
                }
                if parts.peek().is_some() && self.kinds.get(&at) == Some(&Kind::Symlink) {
                    return Err(BundleError::Unsafe(format!(
                        "{} links through another link ({}) to {}",
                        link.display(),
                        at.display(),
                        target.display()
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Dir => "directory",
            Kind::File | Kind::HardLink => "file",
            Kind::Symlink => "symlink",
            Kind::Extension => "header",
        }
    }
}

/// A symlink is relative to its directory, and must stay inside the
/// bundle when `..` is resolved lexically (which [`Tree::check_symlinks`]
/// makes the real resolution, by refusing links through links).
fn symlink_stays_inside(link: &Path, target: &Path) -> Result<(), BundleError> {
    let outside = || {
        Err(BundleError::Unsafe(format!(
            "{} links outside the bundle (to {})",
            link.display(),
            target.display()
        )))
    };
    if target.as_os_str().is_empty() {
        return Err(BundleError::Malformed(format!(
            "{} has an empty link target",
            link.display()
        )));
    }
    let mut depth = link.parent().map_or(0, |p| p.components().count());
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth > 0 => depth -= 1,
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return outside(),
        }
    }
    Ok(())
}

/// `path` as a relative path with no `.`, `..` or root.
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

/// A reader that fails once more than its allowance has been read.
struct Capped<R> {
    inner: R,
    left: u64,
    over: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over.set(true);
            return Err(std::io::Error::other("the archive unpacks to too much"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::testing::*;

    const MAX: u64 = crate::deploy::DEFAULT_MAX_BUNDLE_BYTES;

    fn check_bytes(archive: &[u8], max: u64) -> Result<Plan, BundleError> {
        check(archive, archive.len() as u64, max)
    }

    #[test]
    fn the_allowance_grows_with_the_archive_up_to_a_cap() {
        assert_eq!(unpacked_limit(0, MAX), 1 << 20);
        assert_eq!(unpacked_limit(365, MAX), 365 * 32 + (1 << 20));
        assert_eq!(unpacked_limit(10 << 20, MAX), (320 << 20) + (1 << 20));
        // 64 MiB and more: the absolute cap, 8 times the limit.
        assert_eq!(unpacked_limit(MAX, MAX), 8 * MAX);
        assert_eq!(unpacked_limit(100, 1000), 8000);
        assert_eq!(unpacked_limit(u64::MAX, u64::MAX), u64::MAX);
    }

    #[test]
    fn the_unpacked_size_is_the_length_of_the_tar_stream() {
        let build = |b: &mut tar::Builder<Vec<u8>>| {
            dir(b, "a");
            file(b, "a/one", b"1");
            file(b, "a/big", &[7u8; 1500]);
            symlink(b, "a/l", "one");
        };
        let tar = raw_tar(build);
        let plan = check_bytes(&tar_zst(build), MAX).unwrap();
        // The stream ends with two zero blocks that are no entry.
        assert_eq!(plan.unpacked, tar.len() as u64 - 1024);
        assert_eq!(plan.entries, 4);
        assert_eq!(plan.unpacked, 512 + (512 + 512) + (512 + 1536) + 512);
    }

    #[test]
    fn a_bomb_is_stopped_at_the_floor_and_at_the_cap() {
        let zeros = |n: usize| tar_zst(|b| file(b, "w", &vec![0u8; n]));
        // Well-compressed, just under the 1 MiB floor: fine.
        let under = zeros((1 << 20) - 4096);
        assert!(check_bytes(&under, MAX).is_ok());
        // 64 KiB over the floor, from an archive of < 2000 bytes (whose
        // ratio adds < 64000): refused.
        let over = zeros((1 << 20) + (64 << 10));
        assert!(over.len() < 2000, "{}", over.len());
        let err = check_bytes(&over, MAX).unwrap_err();
        assert!(matches!(err, BundleError::UnpackedTooLarge { .. }), "{err}");
        // Incompressible data far beyond the floor is what apps are made
        // of: its allowance is 32 times its size.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..3 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        assert!(check_bytes(&tar_zst(|b| file(b, "n", &noise)), MAX).is_ok());
        // The absolute cap: with a 100 kB limit, never more than 800 kB,
        // whatever the floor says.
        let err = check_bytes(&zeros(900_000), 100_000).unwrap_err();
        assert!(
            matches!(err, BundleError::UnpackedTooLarge { limit: 800_000, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_header_claiming_a_terabyte_is_refused_before_its_data_is_read() {
        let mut h = tar::Header::new_gnu();
        h.set_path("huge").unwrap();
        h.set_mode(0o644);
        h.set_size(1 << 40);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[0u8; 4096]);
        let archive = zstd::stream::encode_all(&raw[..], 3).unwrap();
        let err = check_bytes(&archive, MAX).unwrap_err();
        assert!(matches!(err, BundleError::UnpackedTooLarge { .. }), "{err}");
    }

    #[test]
    fn hidden_bytes_in_extension_headers_count_too() {
        // A pax header's data is read into memory by the tar reader: the
        // cap on the decompressed stream bounds it though no entry counts it.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_path("pax").unwrap();
        h.set_entry_type(tar::EntryType::XHeader);
        let record = format!("{} comment={}\n", 10 + (4 << 20), "c".repeat((4 << 20) - 1));
        h.set_size(record.len() as u64);
        h.set_cksum();
        b.append(&h, record.as_bytes()).unwrap();
        file(&mut b, "w", b"x");
        let archive = zstd::stream::encode_all(&b.into_inner().unwrap()[..], 3).unwrap();
        let err = check_bytes(&archive, MAX).unwrap_err();
        assert!(matches!(err, BundleError::UnpackedTooLarge { .. }), "{err}");
    }

    #[test]
    fn a_frame_asking_for_a_huge_window_is_refused() {
        let tar = raw_tar(|b| file(b, "w", b"x"));
        let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        enc.window_log(27).unwrap();
        enc.long_distance_matching(true).unwrap();
        std::io::Write::write_all(&mut enc, &tar).unwrap();
        let archive = enc.finish().unwrap();
        let err = check_bytes(&archive, MAX).unwrap_err();
        assert!(matches!(err, BundleError::Malformed(_)), "{err}");
        // The same archive at the default window is fine.
        assert!(check_bytes(&tar_zst(|b| file(b, "w", b"x")), MAX).is_ok());
    }

    #[test]
    fn links_through_links_and_paths_through_links_are_refused() {
        type Build = fn(&mut tar::Builder<Vec<u8>>);
        let refused: Vec<(&str, Build)> = vec![
            ("symlink through a symlink", |b| {
                dir(b, "s");
                symlink(b, "s/y", ".");
                symlink(b, "s/x", "y/../..");
            }),
            ("symlink through a symlink defined later", |b| {
                dir(b, "s");
                symlink(b, "s/x", "y/../..");
                symlink(b, "s/y", ".");
            }),
            ("symlink into a symlinked directory", |b| {
                dir(b, "sub");
                file(b, "sub/f", b"x");
                symlink(b, "l", "sub");
                symlink(b, "m", "l/f");
            }),
            ("file through a symlink", |b| {
                dir(b, "sub");
                symlink(b, "l", "sub");
                file(b, "l/f", b"x");
            }),
            ("directory through a symlink", |b| {
                symlink(b, "l", ".");
                dir(b, "l/d");
            }),
            ("file under a file", |b| {
                file(b, "f", b"x");
                file(b, "f/g", b"x");
            }),
            ("symlink over an implied directory", |b| {
                file(b, "l/f", b"x");
                symlink(b, "l", ".");
            }),
            ("a path twice", |b| {
                file(b, "f", b"x");
                file(b, "f", b"y");
            }),
            ("hard link to a later file", |b| {
                hard_link(b, "h", "f");
                file(b, "f", b"x");
            }),
            ("hard link to a symlink", |b| {
                file(b, "f", b"x");
                symlink(b, "s", "f");
                hard_link(b, "h", "s");
            }),
            ("hard link to a directory", |b| {
                dir(b, "d");
                hard_link(b, "h", "d");
            }),
            ("hard link with ..", |b| {
                file(b, "f", b"x");
                dir(b, "d");
                hard_link(b, "h", "d/../f");
            }),
            ("hard link to nothing", |b| hard_link(b, "h", "nowhere")),
            ("empty symlink", |b| symlink(b, "l", "")),
            ("file named like the root", |b| file(b, "./", b"x")),
        ];
        for (what, build) in refused {
            let err = check_bytes(&tar_zst(build), MAX).expect_err(what);
            assert!(
                matches!(err, BundleError::Unsafe(_) | BundleError::Malformed(_)),
                "{what}: {err}"
            );
        }
        let accepted: Vec<(&str, Build)> = vec![
            ("a link inside", |b| {
                file(b, "a/f", b"x");
                symlink(b, "a/l", "../a/f");
            }),
            ("a link to the root", |b| symlink(b, "y", ".")),
            ("a link to a link", |b| {
                file(b, "f", b"x");
                symlink(b, "a", "b");
                symlink(b, "b", "f");
            }),
            ("a dangling link", |b| symlink(b, "l", "not/there")),
            ("a hard link to an earlier file", |b| {
                file(b, "d/f", b"x");
                hard_link(b, "h", "d/f");
                hard_link(b, "h2", "h");
            }),
            ("a directory named twice", |b| {
                dir(b, "d");
                file(b, "d/f", b"x");
                dir(b, "d");
            }),
            ("the root named", |b| {
                dir(b, "./");
                file(b, "./f", b"x");
            }),
        ];
        for (what, build) in accepted {
            check_bytes(&tar_zst(build), MAX).unwrap_or_else(|e| panic!("{what}: {e}"));
        }
    }

    #[test]
    fn unpacking_writes_what_was_checked() {
        let archive = tar_zst(|b| {
            dir(b, "./");
            file(b, "d/f", b"hello");
            hard_link(b, "h", "d/f");
            symlink(b, "d/l", "f");
        });
        let plan = check_bytes(&archive, MAX).unwrap();
        assert_eq!(plan.entries, 4);
        let dest = tempfile::tempdir().unwrap();
        unpack(&archive[..], archive.len() as u64, MAX, dest.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dest.path().join(p)).unwrap();
        assert_eq!(
            (read("d/f"), read("h"), read("d/l")),
            ("hello".into(), "hello".into(), "hello".into())
        );
        assert!(
            dest.path()
                .join("d/l")
                .symlink_metadata()
                .unwrap()
                .is_symlink()
        );
    }
}
