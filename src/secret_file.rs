//! Files that hold secrets (identity, pre-shared key, admin key, HTTP
//! token): read only when no other user may read or change them, written
//! with mode 0600 and never half-written.

use std::io::Write;
use std::path::{Path, PathBuf};

/// What went wrong with a secret file.
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// It cannot be read.
    #[error("cannot read key file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Others may read or change it.
    #[error(
        "key file {} can be read or changed by other users (mode {mode:04o}); make it private to its owner: chmod 600 {}",
        path.display(),
        shell_quote(&path.to_string_lossy())
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// It cannot be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// It exists and overwriting was not asked for.
    #[error("{} exists; pass --force to overwrite it", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
}

/// Refuses a secret file (identity, pre-shared key, admin key) that users
/// other than its owner may read or change: mode bits for group or others
/// (`mode & 0o077`), as ssh does for private keys. A key others can read
/// is no longer a secret, and one others can write can be replaced; either
/// way the peer must not start on it as if nothing were wrong. The error
/// says what to run (`chmod 600 FILE`); `main` exits with code 2. Symlinks
/// are followed: the file's own mode is what counts.
pub fn check_private_file(path: &Path) -> Result<(), SecretFileError> {
    let meta = std::fs::metadata(path).map_err(|source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    check_private_mode(path, &meta)
}

/// Reads a secret file after [`check_private_file`]'s check, made on the
/// open file itself, so the bytes read are those of the file checked.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, SecretFileError> {
    use std::io::Read;
    let read_err = |source| SecretFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    check_private_mode(path, &f.metadata().map_err(read_err)?)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(read_err)?;
    Ok(bytes)
}

fn check_private_mode(path: &Path, meta: &std::fs::Metadata) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    Err(SecretFileError::Exposed {
        path: path.to_path_buf(),
        mode,
    })
}

/// `s` as one shell word, so the printed command can be pasted as it is.
pub(crate) fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+:,@%=".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Writes `bytes` to `path` with mode 0600 via a temporary file and rename.
pub fn write_private_file(path: &Path, bytes: &[u8], force: bool) -> Result<(), SecretFileError> {
    let werr = |source| SecretFileError::Write {
        path: path.to_path_buf(),
        source,
    };
    if !force && path.exists() {
        return Err(SecretFileError::Exists {
            path: path.to_path_buf(),
        });
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(werr)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(werr)
}
