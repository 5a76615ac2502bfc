//! App names and how a name becomes a program to run.
//!
//! An app is named `apps/<path>`, where `<path>` is relative to the apps
//! directory (`--apps`, default `./apps`). A name is validated before
//! anything touches the disk, and the file it resolves to must lie inside
//! the apps directory once symlinks are followed, so no client or peer can
//! make a peer execute anything else.
//!
//! Resolution of `apps/<path>`, first match wins:
//! 1. `<path>.toml`, a manifest (command, args, workers, env, protocol);
//! 2. `<path>`, an executable file: native protocol;
//! 3. `<path>.js`: run with `node`, Node IPC protocol.

mod status;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use status::{
    AppState, AppStatus, LocalApp, MAX_ERROR_CHARS, WorkerDetail, WorkerState, is_sha256_hex,
};

/// Most worker processes one app may have on one peer (from any source:
/// `start --workers`, a manifest, or another peer's announcement).
pub const MAX_WORKERS_PER_APP: u32 = 256;

/// Jobs written to a native worker before its first answer comes back,
/// unless its manifest says otherwise. Node workers get one at a time
/// (an async `process.on('message')` handler may answer out of order).
pub const DEFAULT_NATIVE_PIPELINE: u32 = 8;
/// Largest `pipeline` a manifest may ask for.
pub const MAX_PIPELINE: u32 = 1024;

/// Longest app name accepted.
pub const MAX_APP_NAME: usize = 200;

/// A validated app name such as `apps/wordcount/counter`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct AppName(String);

/// Why a string is not an [`AppName`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppNameError {
    /// The empty string.
    #[error("app name is empty")]
    Empty,
    /// Longer than [`MAX_APP_NAME`] bytes.
    #[error("app name is longer than {MAX_APP_NAME} characters")]
    TooLong,
    /// Does not start with `apps/`.
    #[error("app name {0:?} must start with apps/ (e.g. apps/wordcount/counter)")]
    Prefix(String),
    /// A part after `apps/` is empty, starts with `.` (so no `..`), or has
    /// a character other than ASCII letters, digits, `-`, `_` and `.`.
    #[error(
        "app name {0:?} is not allowed: each part may use only letters, digits, '-', '_' and '.', must not start with '.', and must not be empty"
    )]
    BadPart(String),
}

impl AppName {
    /// Validates `name` (see [`AppNameError`] for the rules); nothing is
    /// looked up on disk.
    pub fn parse(name: &str) -> Result<AppName, AppNameError> {
        if name.is_empty() {
            return Err(AppNameError::Empty);
        }
        if name.len() > MAX_APP_NAME {
            return Err(AppNameError::TooLong);
        }
        let Some(rest) = name.strip_prefix("apps/") else {
            return Err(AppNameError::Prefix(name.to_string()));
        };
        let ok_part = |p: &str| {
            !p.is_empty()
                && !p.starts_with('.')
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        };
        if !rest.split('/').all(ok_part) {
            return Err(AppNameError::BadPart(name.to_string()));
        }
        Ok(AppName(name.to_string()))
    }

    /// The whole name, `apps/...`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after `apps/`.
    pub fn rel_path(&self) -> &str {
        &self.0["apps/".len()..]
    }
}

impl fmt::Display for AppName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AppName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AppName::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How the peer talks to a worker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One compact JSON value per line on stdin; one JSON result per line on stdout.
    Native,
    /// Node's `process.on('message')` / `process.send()` IPC channel.
    Node,
}

/// A resolved app: what to run, how, and with how many processes by default.
#[derive(Debug, Clone, PartialEq)]
pub struct AppSpec {
    /// The app (for a deployed bundle, the name it was deployed as).
    pub name: AppName,
    /// What to execute: the resolved file, `node` for a `.js` app, or a
    /// manifest's command (a file inside the apps directory, or a name
    /// looked up on `PATH`).
    pub program: PathBuf,
    /// Its arguments (for a `.js` app, the script's path).
    pub args: Vec<String>,
    /// Variables set on top of the part of the peer's environment that
    /// workers inherit (a manifest's `env`).
    pub env: BTreeMap<String, String>,
    /// Working directory: the directory of the file the name resolved to.
    pub cwd: PathBuf,
    /// How the peer talks to its processes.
    pub protocol: Protocol,
    /// Worker processes, if the manifest says so.
    pub workers: Option<u32>,
    /// Jobs written to one process before its first answer comes back.
    pub pipeline: u32,
    /// The file the name resolved to (for status and logs).
    pub source: PathBuf,
}

/// `<path>.toml` next to an app.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Program to run: a path relative to the manifest's directory if it
    /// contains a `/`, else a program looked up on PATH (e.g. `python3`).
    pub command: String,
    /// Arguments to `command`.
    #[serde(default)]
    pub args: Vec<String>,
    /// Worker processes per peer (1 to [`MAX_WORKERS_PER_APP`]), unless
    /// `start --workers` says otherwise; without either, the peer's
    /// `--workers`.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Environment variables set for its processes.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// `native` (the default) or `node`.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Jobs a process may hold at once (answers must come back in order):
    /// 1 to [`MAX_PIPELINE`]; default [`DEFAULT_NATIVE_PIPELINE`] for
    /// `native`, 1 for `node`.
    #[serde(default)]
    pub pipeline: Option<u32>,
}

/// Why an app name does not resolve to a program on this peer.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// No `<path>.toml`, `<path>` or `<path>.js` in the apps directory
    /// (also what a missing apps directory gives).
    #[error("{0} is not in this peer's apps directory")]
    NotFound(AppName),
    /// The file, or a manifest's command, lies outside the apps directory
    /// once symlinks are followed.
    #[error("{name}: {path} resolves outside the apps directory")]
    Outside {
        /// The app.
        name: AppName,
        /// Where it resolved to (canonical).
        path: PathBuf,
    },
    /// The manifest does not parse, or says something out of bounds (an
    /// empty command, workers or pipeline out of range, a command file
    /// that does not exist).
    #[error("{name}: manifest {path} is invalid: {reason}")]
    Manifest {
        /// The app.
        name: AppName,
        /// The manifest file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file, or a manifest's command file, has no execute bit.
    #[error("{name}: {path} exists but is not executable (chmod +x, or add a manifest)")]
    NotExecutable {
        /// The app.
        name: AppName,
        /// The file (canonical).
        path: PathBuf,
    },
    /// The apps directory cannot be read. (Nothing returns this today: a
    /// missing or unreadable directory resolves to [`ResolveError::NotFound`].)
    #[error("apps directory {0} cannot be read: {1}")]
    AppsDir(PathBuf, std::io::Error),
}

/// The apps directory (`--apps`): where this peer finds the apps it can
/// run without a deployment.
#[derive(Debug, Clone)]
pub struct AppsDir {
    root: PathBuf,
}

impl AppsDir {
    /// The apps directory at `path` (`--apps`). A missing directory is
    /// not an error: it resolves nothing until it is created.
    pub fn new(path: &Path) -> AppsDir {
        // A missing directory is not an error: the peer can still route
        // jobs to others, and the directory may be created later. Keep an
        // absolute path; it is canonicalized at each resolution.
        let root = path
            .canonicalize()
            .or_else(|_| std::path::absolute(path))
            .unwrap_or_else(|_| path.to_path_buf());
        AppsDir { root }
    }

    /// Its path: canonical if it existed at [`AppsDir::new`], else absolute.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Checks that `p` exists and lies inside the apps directory after
    /// following symlinks; returns its canonical path.
    fn inside(&self, name: &AppName, p: &Path) -> Result<Option<PathBuf>, ResolveError> {
        let root = self
            .root
            .canonicalize()
            .unwrap_or_else(|_| self.root.clone());
        match p.canonicalize() {
            Ok(c) if c.starts_with(&root) => Ok(Some(c)),
            Ok(c) => Err(ResolveError::Outside {
                name: name.clone(),
                path: c,
            }),
            Err(_) => Ok(None),
        }
    }

    /// Resolves `name` by the rules of the module docs (manifest,
    /// executable, `.js`), refusing any file outside the directory. Reads
    /// the disk at every call, so a changed app is seen at its next start.
    pub fn resolve(&self, name: &AppName) -> Result<AppSpec, ResolveError> {
        let base = self.root.join(name.rel_path());
        let with_ext = |ext: &str| {
            let mut s = base.clone().into_os_string();
            s.push(ext);
            PathBuf::from(s)
        };
        let manifest = with_ext(".toml");
        if let Some(path) = self.inside(name, &manifest)?.filter(|p| p.is_file()) {
            return self.load_manifest(name, &path);
        }
        if let Some(path) = self.inside(name, &base)?.filter(|p| p.is_file()) {
            if !is_executable(&path) {
                return Err(ResolveError::NotExecutable {
                    name: name.clone(),
                    path,
                });
            }
            return Ok(AppSpec {
                name: name.clone(),
                program: path.clone(),
                args: Vec::new(),
                env: BTreeMap::new(),
                cwd: path.parent().unwrap_or(&self.root).to_path_buf(),
                protocol: Protocol::Native,
                workers: None,
                pipeline: DEFAULT_NATIVE_PIPELINE,
                source: path,
            });
        }
        let js = with_ext(".js");
        if let Some(path) = self.inside(name, &js)?.filter(|p| p.is_file()) {
            return Ok(AppSpec {
                name: name.clone(),
                program: PathBuf::from("node"),
                args: vec![path.to_string_lossy().into_owned()],
                env: BTreeMap::new(),
                cwd: path.parent().unwrap_or(&self.root).to_path_buf(),
                protocol: Protocol::Node,
                workers: None,
                pipeline: 1,
                source: path,
            });
        }
        Err(ResolveError::NotFound(name.clone()))
    }

    fn load_manifest(&self, name: &AppName, path: &Path) -> Result<AppSpec, ResolveError> {
        let err = |reason: String| ResolveError::Manifest {
            name: name.clone(),
            path: path.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        if m.command.trim().is_empty() {
            return Err(err("command is empty".into()));
        }
        if m.workers.is_some_and(|w| w == 0 || w > MAX_WORKERS_PER_APP) {
            return Err(err(format!(
                "workers must be between 1 and {MAX_WORKERS_PER_APP}"
            )));
        }
        if m.pipeline.is_some_and(|p| p == 0 || p > MAX_PIPELINE) {
            return Err(err(format!(
                "pipeline must be between 1 and {MAX_PIPELINE}"
            )));
        }
        let protocol = m.protocol.unwrap_or(Protocol::Native);
        let dir = path.parent().unwrap_or(&self.root).to_path_buf();
        let program = if m.command.contains('/') {
            let p = dir.join(&m.command);
            let c = self
                .inside(name, &p)?
                .ok_or_else(|| err(format!("command {} does not exist", p.display())))?;
            if !is_executable(&c) {
                return Err(ResolveError::NotExecutable {
                    name: name.clone(),
                    path: c,
                });
            }
            c
        } else {
            PathBuf::from(&m.command)
        };
        Ok(AppSpec {
            name: name.clone(),
            program,
            args: m.args,
            env: m.env,
            cwd: dir,
            protocol,
            workers: m.workers,
            pipeline: m.pipeline.unwrap_or(match protocol {
                Protocol::Native => DEFAULT_NATIVE_PIPELINE,
                Protocol::Node => 1,
            }),
            source: path.to_path_buf(),
        })
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_are_validated_before_touching_the_disk() {
        for ok in ["apps/wordcount/counter", "apps/echo", "apps/a-b_c.d/e1"] {
            assert!(AppName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "wordcount/counter",
            "apps/",
            "apps//x",
            "apps/../etc/passwd",
            "apps/x/../../y",
            "apps/./x",
            "apps/.hidden",
            "apps/x/",
            "/apps/x",
            "apps/%2e%2e/x",
            "apps/x y",
            "apps/x\0y",
            "apps/x\\..\\y",
        ] {
            assert!(AppName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            AppName::parse(&format!("apps/{}", "a".repeat(300))),
            Err(AppNameError::TooLong)
        );
    }

    fn write_exec(path: &Path, text: &str) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn resolution_order_and_confinement() {
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("apps");
        write_exec(&apps.join("native/echo"), "#!/bin/sh\nexec cat\n");
        std::fs::write(apps.join("native/plain"), "not executable").unwrap();
        std::fs::write(
            apps.join("wc.js"),
            "process.on('message', m => process.send(m))",
        )
        .unwrap();
        std::fs::write(
            apps.join("py.toml"),
            "command = \"python3\"\nargs = [\"w.py\"]\nworkers = 2\n[env]\nA = \"1\"\n",
        )
        .unwrap();
        std::fs::write(apps.join("bad.toml"), "command = 3").unwrap();
        std::fs::write(apps.join("zero.toml"), "command = \"x\"\nworkers = 0").unwrap();
        // A symlink that leads out of the apps directory.
        write_exec(&dir.path().join("outside"), "#!/bin/sh\necho pwned\n");
        std::os::unix::fs::symlink(dir.path().join("outside"), apps.join("escape")).unwrap();
        std::fs::write(apps.join("escape2.toml"), "command = \"../outside\"").unwrap();

        let a = AppsDir::new(&apps);
        let n = |s: &str| AppName::parse(s).unwrap();
        let s = a.resolve(&n("apps/native/echo")).unwrap();
        assert_eq!(s.protocol, Protocol::Native);
        assert!(s.program.ends_with("native/echo"));
        let s = a.resolve(&n("apps/wc")).unwrap();
        assert_eq!(s.protocol, Protocol::Node);
        assert_eq!(s.program, PathBuf::from("node"));
        let s = a.resolve(&n("apps/py")).unwrap();
        assert_eq!(
            (s.program.to_str().unwrap(), s.workers, s.env["A"].as_str()),
            ("python3", Some(2), "1")
        );
        assert!(matches!(
            a.resolve(&n("apps/native/plain")),
            Err(ResolveError::NotExecutable { .. })
        ));
        assert!(matches!(
            a.resolve(&n("apps/bad")),
            Err(ResolveError::Manifest { .. })
        ));
        assert!(matches!(
            a.resolve(&n("apps/zero")),
            Err(ResolveError::Manifest { .. })
        ));
        assert!(matches!(
            a.resolve(&n("apps/nothing")),
            Err(ResolveError::NotFound(_))
        ));
        assert!(matches!(
            a.resolve(&n("apps/escape")),
            Err(ResolveError::Outside { .. })
        ));
        assert!(matches!(
            a.resolve(&n("apps/escape2")),
            Err(ResolveError::Outside { .. })
        ));
    }
}
