//! Which apps should run: mesh-wide state, not a one-off message.
//!
//! Every `start`/`stop` becomes an entry `(app, run, workers)` stamped with a
//! Lamport clock and the id of the peer that took the request. Entries are
//! merged last-writer-wins on `(clock, origin)`, so a stop and a start sent
//! to different peers end the same everywhere, whatever order the messages
//! arrive in. Each peer carries the whole map in its announcements (it is
//! small), so a peer that joins or restarts learns it within one
//! announcement and starts what the mesh runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::apps::{AppName, MAX_WORKERS_PER_APP};
use crate::bundle::BundleRef;

/// Most entries kept (a rogue peer must not grow this without bound).
pub const MAX_DESIRED: usize = 256;
/// A decision whose clock is this far ahead of everything seen is refused:
/// honest clocks grow by one per decision, and a clock near `u64::MAX`
/// would freeze every later decision.
pub const MAX_CLOCK_JUMP: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredApp {
    pub app: AppName,
    pub run: bool,
    /// Worker processes per peer; `None` means the app's default.
    #[serde(default)]
    pub workers: Option<u32>,
    pub clock: u64,
    pub origin: String,
    /// The deployed version to run (`disruptor deploy`), or none: the app
    /// as found in each peer's `--apps` directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRef>,
}

impl DesiredApp {
    fn stamp(&self) -> (u64, &str) {
        (self.clock, &self.origin)
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredApps {
    apps: BTreeMap<AppName, DesiredApp>,
    clock: u64,
}

impl DesiredApps {
    /// Records a local decision; returns the stamped entry.
    pub fn set(
        &mut self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
        origin: &str,
    ) -> DesiredApp {
        // Starting and stopping keep the deployed version, if any.
        let bundle = self.apps.get(&app).and_then(|e| e.bundle.clone());
        self.stamp(app, run, workers, bundle, origin)
    }

    /// Records a deployment: `bundle` becomes the app's version; it runs if
    /// `start`, or if it ran already (keeping its number of workers).
    pub fn deploy(
        &mut self,
        app: AppName,
        bundle: BundleRef,
        start: bool,
        origin: &str,
    ) -> DesiredApp {
        let (run, workers) = match self.apps.get(&app) {
            Some(e) => (start || e.run, e.workers),
            None => (start, None),
        };
        self.stamp(app, run, workers, Some(bundle), origin)
    }

    fn stamp(
        &mut self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
        bundle: Option<BundleRef>,
        origin: &str,
    ) -> DesiredApp {
        self.clock = self.clock.saturating_add(1);
        let entry = DesiredApp {
            app: app.clone(),
            run,
            workers,
            clock: self.clock,
            origin: origin.to_string(),
            bundle,
        };
        self.apps.insert(app, entry.clone());
        entry
    }

    /// Merges an entry heard from another peer; true if it changed anything.
    pub fn merge(&mut self, incoming: DesiredApp) -> bool {
        if incoming
            .workers
            .is_some_and(|w| w == 0 || w > MAX_WORKERS_PER_APP)
            || incoming.clock > self.clock.saturating_add(MAX_CLOCK_JUMP)
            || incoming
                .bundle
                .as_ref()
                .is_some_and(|b| !b.is_well_formed())
        {
            return false;
        }
        self.clock = self.clock.max(incoming.clock);
        match self.apps.get(&incoming.app) {
            Some(cur) if cur.stamp() >= incoming.stamp() => false,
            None if self.apps.len() >= MAX_DESIRED => false,
            _ => {
                self.apps.insert(incoming.app.clone(), incoming);
                true
            }
        }
    }

    pub fn get(&self, app: &AppName) -> Option<&DesiredApp> {
        self.apps.get(app)
    }

    pub fn entries(&self) -> impl Iterator<Item = &DesiredApp> {
        self.apps.values()
    }

    pub fn to_vec(&self) -> Vec<DesiredApp> {
        self.apps.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        AppName::parse("apps/x").unwrap()
    }

    #[test]
    fn last_writer_wins_whatever_the_order() {
        let mut a = DesiredApps::default();
        let mut b = DesiredApps::default();
        let start = a.set(app(), true, None, "peerA");
        b.merge(start.clone());
        let stop = b.set(app(), false, None, "peerB"); // later: clock 2
        // Deliver in both orders to a third peer.
        let mut c1 = DesiredApps::default();
        c1.merge(start.clone());
        c1.merge(stop.clone());
        let mut c2 = DesiredApps::default();
        c2.merge(stop.clone());
        c2.merge(start.clone());
        assert_eq!(c1.get(&app()), c2.get(&app()));
        assert!(!c1.get(&app()).unwrap().run);
        // Concurrent decisions with equal clocks: the origin breaks the tie.
        let mut x = DesiredApps::default();
        let mut y = DesiredApps::default();
        let sx = x.set(app(), true, None, "peerA");
        let sy = y.set(app(), false, None, "peerB");
        x.merge(sy.clone());
        y.merge(sx.clone());
        assert_eq!(x.get(&app()), y.get(&app()));
        // After merging, a new local decision outranks everything seen.
        let next = x.set(app(), true, Some(3), "peerA");
        assert!(next.clock > sy.clock);
    }

    #[test]
    fn rogue_workers_and_clocks_are_refused() {
        let mut a = DesiredApps::default();
        let huge = DesiredApp {
            app: app(),
            run: true,
            workers: Some(u32::MAX),
            clock: 1,
            origin: "p".into(),
            bundle: None,
        };
        assert!(!a.merge(huge));
        let far = DesiredApp {
            app: app(),
            run: true,
            workers: None,
            clock: u64::MAX,
            origin: "p".into(),
            bundle: None,
        };
        assert!(!a.merge(far));
        // The local clock still works after such messages.
        let e = a.set(app(), true, None, "me");
        assert_eq!(e.clock, 1);
        let mut b = DesiredApps::default();
        b.merge(DesiredApp {
            app: app(),
            run: true,
            workers: None,
            clock: MAX_CLOCK_JUMP,
            origin: "p".into(),
            bundle: None,
        });
        assert!(b.set(app(), false, None, "me").clock > MAX_CLOCK_JUMP);
    }

    #[test]
    fn deploying_keeps_run_and_workers_and_start_stop_keep_the_version() {
        let mut a = DesiredApps::default();
        let v1 = BundleRef {
            hash: "a".repeat(64),
            size: 10,
        };
        let v2 = BundleRef {
            hash: "b".repeat(64),
            size: 20,
        };
        // Deployed without --start: installed, not running.
        let d = a.deploy(app(), v1.clone(), false, "me");
        assert!(!d.run);
        // Start keeps the version.
        let s = a.set(app(), true, Some(3), "me");
        assert_eq!((s.run, s.bundle.as_ref()), (true, Some(&v1)));
        // A new version keeps it running with its workers.
        let d = a.deploy(app(), v2.clone(), false, "me");
        assert_eq!(
            (d.run, d.workers, d.bundle.as_ref()),
            (true, Some(3), Some(&v2))
        );
        // A malformed version from another peer is refused.
        let mut bad = d.clone();
        bad.clock += 10;
        bad.bundle = Some(BundleRef {
            hash: "../x".into(),
            size: 1,
        });
        assert!(!a.merge(bad));
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut a = DesiredApps::default();
        let e = DesiredApp {
            app: app(),
            run: true,
            workers: Some(0),
            clock: 1,
            origin: "p".into(),
            bundle: None,
        };
        assert!(!a.merge(e));
        assert!(
            serde_json::from_str::<DesiredApp>(
                r#"{"app":"apps/../x","run":true,"clock":1,"origin":"p"}"#
            )
            .is_err()
        );
    }
}
