//! The one way the tests build a mesh: `n` peers started in a chain (each
//! bootstraps from the one before) or a star (all from the first), then
//! waited for until every peer lists every other as up.
//!
//! ```ignore
//! let peers = Mesh::of(dir.path(), 3)
//!     .apps(repo_apps())
//!     .workers(2)
//!     .run("apps/echo/echo", &[])
//!     .start();
//! ```

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{Peer, PeerOpts, start_app, wait_converged, wait_running};

/// How the peers find each other at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Bootstrap {
    /// Each from the one started before it.
    Chain,
    /// Every one from the first.
    Star,
}

/// A change to peer `i`'s options.
type EachPeer<'a> = Box<dyn Fn(usize, &mut PeerOpts) + 'a>;

/// Options of a mesh to start; see [`Mesh::of`].
pub struct MeshBuilder<'a> {
    dir: PathBuf,
    names: Vec<String>,
    bootstrap: Bootstrap,
    /// Options every peer gets (a newcomer too).
    shared: PeerOpts,
    identities: bool,
    apps_on_first: Option<usize>,
    each: Option<EachPeer<'a>>,
    within: Duration,
    run: Option<(String, Vec<String>)>,
}

impl<'a> MeshBuilder<'a> {
    /// All peers bootstrap from the first (the default is a chain).
    pub fn star(mut self) -> Self {
        self.bootstrap = Bootstrap::Star;
        self
    }

    /// Every peer gets an identity file, `<dir>/<name>.key` (so it keeps
    /// its id across a restart).
    pub fn identities(mut self) -> Self {
        self.identities = true;
        self
    }

    /// `--psk-file`: a private mesh.
    pub fn psk(mut self, psk: &Path) -> Self {
        self.shared.psk = Some(psk.to_path_buf());
        self
    }

    /// `--apps` for every peer (without it a peer has no apps directory).
    pub fn apps(mut self, apps: PathBuf) -> Self {
        self.shared.apps = Some(apps);
        self
    }

    /// `--apps` for the first `k` peers only; the others have none and
    /// serve through them.
    pub fn apps_on_first(mut self, k: usize, apps: PathBuf) -> Self {
        self.shared.apps = Some(apps);
        self.apps_on_first = Some(k);
        self
    }

    /// `--workers n` for every peer.
    pub fn workers(self, n: u32) -> Self {
        self.flags(&["--workers", &n.to_string()])
    }

    /// Command-line flags for every peer.
    pub fn flags(mut self, flags: &[&str]) -> Self {
        self.shared
            .extra
            .extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// Every peer trusts these admin keys (`--admin PUBKEY`).
    pub fn admins(mut self, keys: &[&super::AdminKey]) -> Self {
        for k in keys {
            self.shared.extra.extend(k.trust());
        }
        self
    }

    /// Changes peer `i`'s options, after all the others are applied.
    pub fn each(mut self, f: impl Fn(usize, &mut PeerOpts) + 'a) -> Self {
        self.each = Some(Box::new(f));
        self
    }

    /// How long the peers may take to list each other as up (20 s unless
    /// told).
    pub fn within(mut self, deadline: Duration) -> Self {
        self.within = deadline;
        self
    }

    /// Once the mesh is whole: `disruptor start` of `app` (with `args`)
    /// through the first peer, then waits until every peer sees it running
    /// on every peer.
    pub fn run(mut self, app: &str, args: &[&str]) -> Self {
        self.run = Some((app.into(), args.iter().map(|a| a.to_string()).collect()));
        self
    }

    /// Starts the peers, one after the other, and waits for the mesh.
    pub fn start(self) -> Mesh {
        let mut peers: Vec<Peer> = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let from = match self.bootstrap {
                Bootstrap::Chain => peers.last(),
                Bootstrap::Star => peers.first(),
            };
            let mut opts = PeerOpts {
                bootstrap: from.map(|p| vec![p.listen.clone()]).unwrap_or_default(),
                ..self.shared.clone()
            };
            if self.identities {
                opts.identity = Some(self.dir.join(format!("{name}.key")));
            }
            if self.apps_on_first.is_some_and(|k| i >= k) {
                opts.apps = None;
            }
            if let Some(each) = &self.each {
                each(i, &mut opts);
            }
            peers.push(Peer::start(&self.dir, name, opts));
        }
        let refs: Vec<&Peer> = peers.iter().collect();
        let converged_in = wait_converged(&refs, self.within);
        if let Some((app, args)) = &self.run {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            start_app(&peers[0], app, &args);
            for observer in &peers {
                wait_running(observer, app, &refs);
            }
        }
        Mesh {
            peers,
            converged_in,
            dir: self.dir,
            shared: self.shared,
        }
    }
}

/// Peers started together by [`MeshBuilder::start`]; a `Vec<Peer>` for
/// everything else (each peer is stopped by PID when dropped).
pub struct Mesh {
    pub peers: Vec<Peer>,
    /// How long after the last start every peer listed every other as up.
    pub converged_in: Duration,
    dir: PathBuf,
    shared: PeerOpts,
}

impl Mesh {
    /// `n` peers, `p0`, `p1`, ..., in `dir`.
    pub fn of<'a>(dir: &Path, n: usize) -> MeshBuilder<'a> {
        let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
        Mesh::builder(dir, names)
    }

    /// Peers with these names.
    pub fn named<'a>(dir: &Path, names: &[&str]) -> MeshBuilder<'a> {
        Mesh::builder(dir, names.iter().map(|n| n.to_string()).collect())
    }

    fn builder<'a>(dir: &Path, names: Vec<String>) -> MeshBuilder<'a> {
        assert!(!names.is_empty(), "a mesh of no peers");
        MeshBuilder {
            dir: dir.to_path_buf(),
            names,
            bootstrap: Bootstrap::Chain,
            shared: PeerOpts::default(),
            identities: false,
            apps_on_first: None,
            each: None,
            within: Duration::from_secs(20),
            run: None,
        }
    }

    pub fn refs(&self) -> Vec<&Peer> {
        self.peers.iter().collect()
    }

    /// A peer with the options every peer of the mesh got (no identity
    /// file, none of [`MeshBuilder::each`]'s changes), bootstrapped from
    /// `peers[via]`; started, not waited for.
    pub fn newcomer(&self, name: &str, via: usize) -> Peer {
        let opts = PeerOpts {
            bootstrap: vec![self.peers[via].listen.clone()],
            ..self.shared.clone()
        };
        Peer::start(&self.dir, name, opts)
    }

    /// Waits until every peer (all must be running) lists every other as
    /// up; returns how long that took.
    pub fn wait_converged(&self, deadline: Duration) -> Duration {
        wait_converged(&self.refs(), deadline)
    }
}

impl Deref for Mesh {
    type Target = Vec<Peer>;
    fn deref(&self) -> &Vec<Peer> {
        &self.peers
    }
}

impl DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut Vec<Peer> {
        &mut self.peers
    }
}

impl<'a> IntoIterator for &'a Mesh {
    type Item = &'a Peer;
    type IntoIter = std::slice::Iter<'a, Peer>;
    fn into_iter(self) -> Self::IntoIter {
        self.peers.iter()
    }
}

impl<'a> IntoIterator for &'a mut Mesh {
    type Item = &'a mut Peer;
    type IntoIter = std::slice::IterMut<'a, Peer>;
    fn into_iter(self) -> Self::IntoIter {
        self.peers.iter_mut()
    }
}
