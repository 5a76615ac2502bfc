//! Which apps should run: mesh-wide state, not a one-off message.
//!
//! Every `start`/`stop`/`deploy` becomes an entry `(app, run, workers,
//! version)` stamped with a Lamport clock and an origin: the peer that took
//! the request, or the admin key that signed it (see [`crate::mesh::trust`]).
//! Entries are merged last-writer-wins on `(clock, origin)`, so a stop and a
//! start sent to different peers end the same everywhere, whatever order
//! the messages arrive in. Each peer carries the whole map in its
//! announcements (it is small and capped), so a peer that joins or restarts
//! learns it within one announcement and starts what the mesh runs.
//!
//! Every peer checks every entry itself against its own admin keys before
//! merging it; stops are forgotten [`STOP_TTL`] after they were decided.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::apps::{AppName, MAX_WORKERS_PER_APP};
use crate::deploy::BundleRef;
use crate::mesh::labels::Labels;
use crate::mesh::placement::{MAX_PEERS_PLACED, MAX_SELECTORS, Placement};
use crate::mesh::trust::{Admins, Refusal, Signature};

/// Most entries kept, local and merged alike (a rogue peer must not grow
/// this without bound). Sized so that an announcement carrying all of them
/// at their longest, with as many app statuses, always fits in one gossip
/// message (see the test `a_full_announcement_fits_in_one_message`).
pub const MAX_DESIRED: usize = 128;
/// A decision whose clock is this far ahead of everything seen is refused:
/// honest clocks grow by one per decision, and a clock near `u64::MAX`
/// would freeze every later decision.
pub const MAX_CLOCK_JUMP: u64 = 1 << 20;
/// Longest origin accepted: a peer id (52 characters) or an admin key's
/// short name.
pub const MAX_ORIGIN: usize = 64;
/// A stop is remembered this long after it was decided, then forgotten
/// everywhere (its `at_ms` is carried with it, so every peer forgets it at
/// the same time and none brings it back). A peer cut off for longer than
/// this may bring back what it ran before the stop.
pub const STOP_TTL: Duration = Duration::from_secs(3600);
/// Decisions dated further in the future than this are refused (clocks of
/// honest machines agree to within seconds; a far-future stop would never
/// expire).
pub const MAX_FUTURE: Duration = Duration::from_secs(600);
/// Refusals remembered, so a refused decision relayed again in every
/// announcement is neither verified nor counted again.
const MAX_REFUSALS_REMEMBERED: usize = 1024;

/// One decision about one app: whether it runs, on how many workers per
/// peer, which version. The newest per app, by `(clock, origin)`, wins on
/// every peer. Its JSON travels in announcements, in `POST /api/decisions`
/// and in the decision header of `POST /api/deploy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredApp {
    /// The app decided about.
    pub app: AppName,
    /// Run it or not: set by start and stop; a deployment keeps it, or
    /// sets it with `--start`.
    pub run: bool,
    /// Worker processes per peer; `None` means the app's default.
    #[serde(default)]
    pub workers: Option<u32>,
    /// Lamport clock: one more than the highest clock the deciding side
    /// had seen (at most [`MAX_CLOCK_JUMP`] ahead of what a peer holds).
    pub clock: u64,
    /// Who decided: the peer id that took an unsigned decision, or the
    /// signing admin key's [short name](crate::mesh::trust::AdminKey::short);
    /// breaks ties between equal clocks. At most [`MAX_ORIGIN`] bytes.
    pub origin: String,
    /// The deployed version to run (`disruptor deploy`), or none: the app
    /// as found in each peer's `--apps` directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<BundleRef>,
    /// Unix ms at which the decision was made (a stop expires
    /// [`STOP_TTL`] after it).
    #[serde(default)]
    pub at_ms: u64,
    /// The admin's signature over every field above and the placement
    /// below (see [`crate::mesh::trust`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signature>,
    /// `--peers`: run on this many of the peers that can, not all (see
    /// [`crate::mesh::placement`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers: Option<u32>,
    /// `--on`: run only on peers with these labels.
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub on: Labels,
}

impl DesiredApp {
    fn stamp(&self) -> (u64, &str) {
        (self.clock, &self.origin)
    }

    /// Where it runs: on every peer that can, or as `--peers`/`--on` say.
    pub fn placement(&self) -> Placement {
        Placement {
            peers: self.peers,
            on: self.on.clone(),
        }
    }

    /// Whether a stop has been remembered long enough to forget.
    fn expired(&self, now_ms: u64) -> bool {
        !self.run && now_ms.saturating_sub(self.at_ms) >= STOP_TTL.as_millis() as u64
    }

    /// Bounds every field that another peer chooses.
    fn in_bounds(&self, clock: u64, now_ms: u64) -> bool {
        !self
            .workers
            .is_some_and(|w| w == 0 || w > MAX_WORKERS_PER_APP)
            && !self.peers.is_some_and(|p| p == 0 || p > MAX_PEERS_PLACED)
            && self.on.len() <= MAX_SELECTORS
            && self.clock <= clock.saturating_add(MAX_CLOCK_JUMP)
            && self.origin.len() <= MAX_ORIGIN
            && self.at_ms <= now_ms.saturating_add(MAX_FUTURE.as_millis() as u64)
            && self.bundle.as_ref().is_none_or(|b| b.is_well_formed())
            && self
                .signed
                .as_ref()
                .is_none_or(|s| s.key.len() + s.sig.len() <= Signature::MAX_TEXT)
    }
}

/// The mesh's decisions as this peer holds them: one [`DesiredApp`] per
/// app, at most [`MAX_DESIRED`], merged last-writer-wins. The network event
/// loop owns the map and publishes a copy on a `watch` channel at each
/// change; the reconciler (which hands it to the workers) and the
/// dispatcher read that.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredApps {
    apps: BTreeMap<AppName, DesiredApp>,
    clock: u64,
    /// Decisions refused already, by [`fingerprint`]: see
    /// [`MAX_REFUSALS_REMEMBERED`].
    refused: HashSet<[u8; 32]>,
}

/// A digest of everything a decision says, its signature included: two
/// decisions with one fingerprint are the same decision. (Keyed by less,
/// say the stamp and signature, a forger could copy a real decision's
/// signature onto altered contents, have that refused first, and so get
/// the real decision skipped as "refused before".)
fn fingerprint(d: &DesiredApp) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(crate::mesh::trust::signed_bytes(d));
    if let Some(s) = &d.signed {
        h.update(s.key.as_bytes());
        h.update(b"\n");
        h.update(s.sig.as_bytes());
    }
    h.finalize().into()
}

impl DesiredApps {
    /// Records a local, unsigned decision; returns the stamped entry.
    pub fn set(
        &mut self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
        origin: &str,
        now_ms: u64,
    ) -> Result<DesiredApp, Refusal> {
        self.set_placed(app, run, workers, Placement::default(), origin, now_ms)
    }

    /// [`DesiredApps::set`], for a start placed by `--peers`/`--on` (a
    /// stop takes no placement).
    pub fn set_placed(
        &mut self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
        placement: Placement,
        origin: &str,
        now_ms: u64,
    ) -> Result<DesiredApp, Refusal> {
        // Starting and stopping keep the deployed version, if any.
        let bundle = self.apps.get(&app).and_then(|e| e.bundle.clone());
        self.stamp(app, run, workers, placement, bundle, origin, now_ms)
    }

    #[allow(clippy::too_many_arguments)]
    fn stamp(
        &mut self,
        app: AppName,
        run: bool,
        workers: Option<u32>,
        placement: Placement,
        bundle: Option<BundleRef>,
        origin: &str,
        now_ms: u64,
    ) -> Result<DesiredApp, Refusal> {
        self.expire(now_ms);
        if !self.apps.contains_key(&app) && self.apps.len() >= MAX_DESIRED {
            return Err(Refusal::Full);
        }
        let entry = DesiredApp {
            app: app.clone(),
            run,
            workers,
            clock: self.clock.saturating_add(1),
            origin: origin.to_string(),
            bundle,
            at_ms: now_ms,
            signed: None,
            peers: placement.peers,
            on: placement.on,
        };
        if !entry.in_bounds(self.clock, now_ms) {
            return Err(Refusal::Invalid);
        }
        self.clock = entry.clock;
        self.apps.insert(app, entry.clone());
        Ok(entry)
    }

    /// Merges a decision heard from another peer, or signed in the CLI:
    /// `Ok(true)` if it changed anything, `Ok(false)` if it is not newer
    /// than what is held (or was refused before), `Err` the first time a
    /// decision is refused. Signatures are checked only for decisions that
    /// would win, so the copies every announcement repeats cost a
    /// comparison, not a verification.
    pub fn merge(
        &mut self,
        incoming: DesiredApp,
        admins: &Admins,
        now_ms: u64,
    ) -> Result<bool, Refusal> {
        if incoming.expired(now_ms) {
            return Ok(false);
        }
        if let Some(cur) = self.apps.get(&incoming.app)
            && cur.stamp() >= incoming.stamp()
        {
            return Ok(false);
        }
        let memo = fingerprint(&incoming);
        if self.refused.contains(&memo) {
            return Ok(false);
        }
        let verdict = if !incoming.in_bounds(self.clock, now_ms) {
            Err(Refusal::Invalid)
        } else if !self.apps.contains_key(&incoming.app) && self.apps.len() >= MAX_DESIRED {
            self.expire(now_ms);
            if self.apps.len() >= MAX_DESIRED {
                Err(Refusal::Full)
            } else {
                crate::mesh::trust::check(&incoming, admins)
            }
        } else {
            crate::mesh::trust::check(&incoming, admins)
        };
        if let Err(refusal) = verdict {
            if self.refused.len() >= MAX_REFUSALS_REMEMBERED {
                self.refused.clear();
            }
            self.refused.insert(memo);
            return Err(refusal);
        }
        self.clock = self.clock.max(incoming.clock);
        self.apps.insert(incoming.app.clone(), incoming);
        Ok(true)
    }

    /// Forgets stops older than [`STOP_TTL`]; true if any was forgotten.
    pub fn expire(&mut self, now_ms: u64) -> bool {
        let before = self.apps.len();
        self.apps.retain(|_, d| !d.expired(now_ms));
        self.apps.len() != before
    }

    /// The highest clock seen: a new decision must be stamped above it.
    pub fn clock(&self) -> u64 {
        self.clock
    }

    /// The decision held for `app`, if any.
    pub fn get(&self, app: &AppName) -> Option<&DesiredApp> {
        self.apps.get(app)
    }

    /// Every decision held, by app name.
    pub fn entries(&self) -> impl Iterator<Item = &DesiredApp> {
        self.apps.values()
    }

    /// Every decision held, by app name: what an announcement carries.
    pub fn to_vec(&self) -> Vec<DesiredApp> {
        self.apps.values().cloned().collect()
    }

    /// Decisions held (at most [`MAX_DESIRED`]).
    pub fn len(&self) -> usize {
        self.apps.len()
    }

    /// Whether no decision is held.
    pub fn is_empty(&self) -> bool {
        self.apps.is_empty()
    }
}

/// What a new decision for `app` looks like before it is signed: the next
/// clock, the deployed version kept (or replaced by `bundle`), and for a
/// deployment the running state kept unless `start`. Used by the CLI,
/// which signs decisions before any peer sees them.
pub fn next_decision(
    held: &[DesiredApp],
    clock: u64,
    app: &AppName,
    change: Change,
    now_ms: u64,
) -> DesiredApp {
    let cur = held.iter().find(|d| &d.app == app);
    let kept = || cur.map(DesiredApp::placement).unwrap_or_default();
    let (run, workers, bundle, placement) = match change {
        Change::Start { workers, placement } => {
            (true, workers, cur.and_then(|c| c.bundle.clone()), placement)
        }
        Change::Stop => (
            false,
            None,
            cur.and_then(|c| c.bundle.clone()),
            Placement::default(),
        ),
        Change::Deploy { bundle, start } => (
            start || cur.is_some_and(|c| c.run),
            cur.and_then(|c| c.workers),
            Some(bundle),
            kept(),
        ),
    };
    DesiredApp {
        app: app.clone(),
        run,
        workers,
        clock: clock.saturating_add(1),
        origin: String::new(),
        bundle,
        at_ms: now_ms,
        signed: None,
        peers: placement.peers,
        on: placement.on,
    }
}

/// The change a new decision makes (see [`next_decision`]).
#[derive(Debug, Clone)]
pub enum Change {
    /// `disruptor start`: run the app, keeping its deployed version.
    Start {
        /// `--workers`: per peer; `None` for the app's default.
        workers: Option<u32>,
        /// `--peers` and `--on`.
        placement: Placement,
    },
    /// `disruptor stop`: stop the app, keeping its deployed version.
    Stop,
    /// `disruptor deploy`: run `bundle` from now on, keeping the worker
    /// count.
    Deploy {
        /// The uploaded bundle.
        bundle: BundleRef,
        /// `--start`: run it even if the app is stopped (else a running
        /// app moves to the new version and a stopped one stays stopped).
        start: bool,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decided_app_gets_metric_labels_of_its_own() {
        assert_eq!(MAX_DESIRED, crate::obs::metrics::MAX_LABELLED_APPS);
    }
    use crate::mesh::trust::AdminSecret;

    const NOW: u64 = 1_800_000_000_000;

    fn app() -> AppName {
        AppName::parse("apps/x").unwrap()
    }

    fn none() -> Admins {
        Admins::default()
    }

    fn entry(clock: u64) -> DesiredApp {
        DesiredApp {
            app: app(),
            run: true,
            workers: None,
            clock,
            origin: "p".into(),
            bundle: None,
            at_ms: NOW,
            signed: None,
            peers: None,
            on: Labels::default(),
        }
    }

    #[test]
    fn last_writer_wins_whatever_the_order() {
        let mut a = DesiredApps::default();
        let mut b = DesiredApps::default();
        let start = a.set(app(), true, None, "peerA", NOW).unwrap();
        b.merge(start.clone(), &none(), NOW).unwrap();
        let stop = b.set(app(), false, None, "peerB", NOW).unwrap(); // later: clock 2
        // Deliver in both orders to a third peer.
        let mut c1 = DesiredApps::default();
        c1.merge(start.clone(), &none(), NOW).unwrap();
        c1.merge(stop.clone(), &none(), NOW).unwrap();
        let mut c2 = DesiredApps::default();
        c2.merge(stop.clone(), &none(), NOW).unwrap();
        c2.merge(start.clone(), &none(), NOW).unwrap();
        assert_eq!(c1.get(&app()), c2.get(&app()));
        assert!(!c1.get(&app()).unwrap().run);
        // Concurrent decisions with equal clocks: the origin breaks the tie.
        let mut x = DesiredApps::default();
        let mut y = DesiredApps::default();
        let sx = x.set(app(), true, None, "peerA", NOW).unwrap();
        let sy = y.set(app(), false, None, "peerB", NOW).unwrap();
        x.merge(sy.clone(), &none(), NOW).unwrap();
        y.merge(sx.clone(), &none(), NOW).unwrap();
        assert_eq!(x.get(&app()), y.get(&app()));
        // After merging, a new local decision outranks everything seen.
        let next = x.set(app(), true, Some(3), "peerA", NOW).unwrap();
        assert!(next.clock > sy.clock);
    }

    #[test]
    fn rogue_workers_clocks_origins_and_dates_are_refused() {
        let mut a = DesiredApps::default();
        let mut huge = entry(1);
        huge.workers = Some(u32::MAX);
        assert_eq!(a.merge(huge, &none(), NOW), Err(Refusal::Invalid));
        let mut zero = entry(1);
        zero.workers = Some(0);
        assert_eq!(a.merge(zero, &none(), NOW), Err(Refusal::Invalid));
        assert_eq!(
            a.merge(entry(u64::MAX), &none(), NOW),
            Err(Refusal::Invalid)
        );
        let mut long = entry(1);
        long.origin = "o".repeat(MAX_ORIGIN + 1);
        assert_eq!(a.merge(long, &none(), NOW), Err(Refusal::Invalid));
        let mut crowd = entry(1);
        crowd.peers = Some(MAX_PEERS_PLACED + 1);
        assert_eq!(a.merge(crowd, &none(), NOW), Err(Refusal::Invalid));
        let mut nobody = entry(1);
        nobody.peers = Some(0);
        assert_eq!(a.merge(nobody, &none(), NOW), Err(Refusal::Invalid));
        let mut picky = entry(1);
        let five: Vec<String> = (0..=MAX_SELECTORS).map(|i| format!("l{i}")).collect();
        picky.on = Labels::parse_all(&five).unwrap();
        assert_eq!(a.merge(picky, &none(), NOW), Err(Refusal::Invalid));
        let mut future = entry(1);
        future.run = false;
        future.at_ms = NOW + MAX_FUTURE.as_millis() as u64 + 1;
        assert_eq!(a.merge(future, &none(), NOW), Err(Refusal::Invalid));
        // The local clock still works after such messages.
        let e = a.set(app(), true, None, "me", NOW).unwrap();
        assert_eq!(e.clock, 1);
        // The bounds are inclusive: the largest allowed values are taken.
        let mut b = DesiredApps::default();
        let mut edge = entry(MAX_CLOCK_JUMP);
        edge.workers = Some(MAX_WORKERS_PER_APP);
        edge.origin = "o".repeat(MAX_ORIGIN);
        edge.at_ms = NOW + MAX_FUTURE.as_millis() as u64;
        edge.peers = Some(MAX_PEERS_PLACED);
        edge.on = Labels::parse_all(&five[..MAX_SELECTORS]).unwrap();
        assert_eq!(b.merge(edge, &none(), NOW), Ok(true));
        assert!(b.set(app(), false, None, "me", NOW).unwrap().clock > MAX_CLOCK_JUMP);
    }

    #[test]
    fn a_refused_decision_is_reported_once_and_a_valid_one_with_its_stamp_still_wins() {
        let k = AdminSecret::generate();
        let admins = Admins::new([k.public()]);
        let mut a = DesiredApps::default();
        let mut good = entry(5);
        k.sign(&mut good);
        // A forgery with the same stamp arrives first.
        let mut forged = good.clone();
        forged.run = false;
        assert_eq!(
            a.merge(forged.clone(), &admins, NOW),
            Err(Refusal::BadSignature)
        );
        assert_eq!(a.merge(forged, &admins, NOW), Ok(false), "counted once");
        assert_eq!(a.merge(good.clone(), &admins, NOW), Ok(true));
        // Unsigned is refused by a peer with admins.
        let mut later = entry(6);
        later.origin = good.origin.clone();
        assert_eq!(a.merge(later, &admins, NOW), Err(Refusal::Unsigned));
        assert!(a.get(&app()).unwrap().run);
    }

    #[test]
    fn the_table_is_capped_for_local_and_merged_decisions_alike() {
        let name = |i: usize| AppName::parse(&format!("apps/junk{i}")).unwrap();
        let mut a = DesiredApps::default();
        for i in 0..MAX_DESIRED {
            let mut e = entry(1);
            e.app = name(i);
            assert_eq!(a.merge(e, &none(), NOW), Ok(true), "{i}");
        }
        let mut over = entry(1);
        over.app = name(MAX_DESIRED);
        assert_eq!(a.merge(over, &none(), NOW), Err(Refusal::Full));
        assert_eq!(
            a.set(name(MAX_DESIRED + 1), true, None, "me", NOW),
            Err(Refusal::Full)
        );
        assert_eq!(a.len(), MAX_DESIRED);
        // Apps already held can still be decided on.
        assert!(a.set(name(0), false, None, "me", NOW).is_ok());
        // Once that stop has expired, there is room again.
        let later = NOW + STOP_TTL.as_millis() as u64;
        assert!(
            a.set(name(MAX_DESIRED + 1), true, None, "me", later)
                .is_ok()
        );
        assert_eq!(a.len(), MAX_DESIRED);
    }

    #[test]
    fn stops_expire_everywhere_and_do_not_come_back() {
        let mut a = DesiredApps::default();
        let stop = a.set(app(), false, None, "me", NOW).unwrap();
        let ttl = STOP_TTL.as_millis() as u64;
        assert!(!a.expire(NOW + ttl - 1));
        assert!(a.get(&app()).is_some());
        assert!(a.expire(NOW + ttl));
        assert!(a.get(&app()).is_none());
        // A peer that still announces it cannot bring it back.
        assert_eq!(a.merge(stop, &none(), NOW + ttl), Ok(false));
        assert!(a.is_empty());
        // Starts do not expire.
        let mut b = DesiredApps::default();
        b.set(app(), true, None, "me", NOW).unwrap();
        assert!(!b.expire(NOW + 10 * ttl));
    }

    #[test]
    fn next_decisions_keep_versions_running_state_and_workers() {
        let v1 = BundleRef {
            hash: "a".repeat(64),
            size: 10,
        };
        let v2 = BundleRef {
            hash: "b".repeat(64),
            size: 20,
        };
        let mut held = entry(4);
        held.workers = Some(3);
        held.bundle = Some(v1.clone());
        let held = vec![held];
        let s = next_decision(&held, 9, &app(), Change::Stop, NOW);
        assert_eq!((s.run, s.clock, s.bundle.as_ref()), (false, 10, Some(&v1)));
        let s = next_decision(
            &held,
            9,
            &app(),
            Change::Start {
                workers: Some(2),
                placement: Placement::default(),
            },
            NOW,
        );
        assert_eq!(
            (s.run, s.workers, s.bundle.as_ref()),
            (true, Some(2), Some(&v1))
        );
        let d = next_decision(
            &held,
            9,
            &app(),
            Change::Deploy {
                bundle: v2.clone(),
                start: false,
            },
            NOW,
        );
        assert_eq!(
            (d.run, d.workers, d.bundle.as_ref()),
            (true, Some(3), Some(&v2))
        );
        let fresh = next_decision(
            &[],
            0,
            &app(),
            Change::Deploy {
                bundle: v2.clone(),
                start: false,
            },
            NOW,
        );
        assert!(
            !fresh.run,
            "deployed without --start: installed, not running"
        );
    }

    #[test]
    fn bad_entries_are_refused() {
        let mut a = DesiredApps::default();
        let mut bad = entry(1);
        bad.bundle = Some(BundleRef {
            hash: "../x".into(),
            size: 1,
        });
        assert_eq!(a.merge(bad, &none(), NOW), Err(Refusal::Invalid));
        assert!(
            serde_json::from_str::<DesiredApp>(
                r#"{"app":"apps/../x","run":true,"clock":1,"origin":"p"}"#
            )
            .is_err()
        );
    }
}
