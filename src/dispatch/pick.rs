//! Choosing a worker for a job: a pure function of what this peer knows
//! (its own live workers, the mesh view, the jobs it has out) and a source
//! of randomness, so every rule here is unit-tested without a network.
//!
//! Each candidate peer is weighted by its live workers, so every worker in
//! the mesh is equally likely to get a job. A remote peer's worker count is
//! its own claim, so it is capped (see [`worker_cap`]).

use rand::Rng;

use crate::apps::{AppName, AppState, MAX_WORKERS_PER_APP};
use crate::mesh::view::PeerView;

/// How a job's worker is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// A random live worker (each peer weighted by its live workers).
    #[default]
    Random,
    /// Power of two choices: two random candidates, the less loaded one
    /// (jobs this peer has outstanding there plus what it announced, per worker).
    LeastLoaded,
}

impl std::str::FromStr for Policy {
    type Err = String;
    /// The names `--dispatch` takes (clap's), for `?dispatch=` too.
    fn from_str(s: &str) -> Result<Self, String> {
        <Policy as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown dispatch policy {s:?} (random or least-loaded)"))
    }
}

/// Where a job may run.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Target {
    /// One of this peer's own workers.
    Local,
    /// A worker of another peer.
    Remote(libp2p::PeerId),
}

/// What a pick is made from: a snapshot, read once per pick.
pub struct Snapshot<'a> {
    /// This peer's id (text) and its live workers for the app.
    pub local: (&'a str, u32),
    /// Every peer this one knows, as the network last published them.
    pub peers: &'a [PeerView],
    /// Most workers a remote peer is believed to have (see [`worker_cap`]).
    pub cap: u32,
}

/// No candidate: nothing in the snapshot runs the app.
#[derive(Debug, PartialEq, Eq)]
pub struct NoWorker;

/// A place a job may run, and how much of the draw it gets.
#[derive(Debug, Clone, PartialEq)]
struct Candidate<'a> {
    target: Target,
    id: &'a str,
    /// Live workers, as far as they are believed (see [`worker_cap`]).
    weight: u64,
    /// Jobs it announced in flight (remote only).
    announced_load: u64,
}

/// Picks a target for a job of `app` outside `excluded`, with its peer id
/// as text (taken from the snapshot: encoding a peer id is not free).
/// `outstanding` gives the jobs this peer has out at a target; it is asked
/// only by [`Policy::LeastLoaded`].
pub fn pick<'a>(
    snap: &Snapshot<'a>,
    app: &AppName,
    excluded: &[Target],
    policy: Policy,
    outstanding: impl Fn(Target) -> u32,
    rng: &mut impl Rng,
) -> Result<(Target, &'a str), NoWorker> {
    let candidates = candidates(snap, app, excluded);
    let total: u64 = candidates.iter().map(|c| c.weight).sum();
    if total == 0 {
        return Err(NoWorker);
    }
    let first = draw(&candidates, total, rng);
    let chosen = match policy {
        Policy::Random => first,
        Policy::LeastLoaded => {
            let second = second_draw(&candidates, total, first, rng);
            // Load per worker, compared without division.
            let load = |i: usize| {
                let c = &candidates[i];
                outstanding(c.target) as u64 + c.announced_load
            };
            let (la, lb) = (load(first), load(second));
            if lb * candidates[first].weight < la * candidates[second].weight {
                second
            } else {
                first
            }
        }
    };
    let c = &candidates[chosen];
    Ok((c.target, c.id))
}

/// Every up peer (this one included) with a live or starting worker of
/// `app`, each once: where a fan-out goes.
pub fn everyone<'a>(snap: &Snapshot<'a>, app: &AppName) -> Vec<(Target, &'a str)> {
    let mut all = Vec::new();
    if snap.local.1 > 0 {
        all.push((Target::Local, snap.local.0));
    }
    for p in snap.peers.iter().filter(|p| p.is_up()) {
        let Some(peer) = p.peer else { continue };
        let live = |a: &&crate::apps::AppStatus| {
            a.app == *app && matches!(a.state, AppState::Running | AppState::Starting)
        };
        if p.apps.iter().any(|a| live(&a)) {
            all.push((Target::Remote(peer), p.id.as_str()));
        }
    }
    all
}

/// This peer (when it has live workers and is not excluded), then the
/// remote candidates.
fn candidates<'a>(snap: &Snapshot<'a>, app: &AppName, excluded: &[Target]) -> Vec<Candidate<'a>> {
    let mut out = Vec::new();
    let (local_id, local) = snap.local;
    if local > 0 && !excluded.contains(&Target::Local) {
        out.push(Candidate {
            target: Target::Local,
            id: local_id,
            weight: local as u64,
            announced_load: 0,
        });
    }
    out.extend(remote_candidates(snap.peers, app, excluded, snap.cap));
    out
}

/// A second candidate, distinct from `first` when there are several (the
/// same one twice would compare nothing).
fn second_draw(candidates: &[Candidate], total: u64, first: usize, rng: &mut impl Rng) -> usize {
    let mut second = draw(candidates, total, rng);
    if candidates.len() > 1 {
        for _ in 0..8 {
            if second != first {
                return second;
            }
            second = draw(candidates, total, rng);
        }
        if second == first {
            second = (first + 1) % candidates.len();
        }
    }
    second
}

/// When the decision does not say how many workers each peer runs, a
/// remote peer is weighted by at most this many, or twice this machine's
/// cores if more (see [`worker_cap`]).
pub const UNSET_CAP_MIN: u32 = 8;

/// Most live workers a remote peer is believed to have for an app.
///
/// A peer's worker count is its own claim, and jobs are drawn in
/// proportion to it: a peer announcing 256 would draw nearly every job,
/// and see (and answer) them all. So it is capped by what the mesh's
/// decision allows:
/// - the decision's `workers`, when it sets one: every honest peer runs
///   exactly that many (the supervisor applies it as is);
/// - otherwise each peer runs its manifest's count or one per core, which
///   this peer cannot check. `unset_cap` is then twice this machine's
///   cores, at least [`UNSET_CAP_MIN`] (machines of one mesh are usually
///   alike; twice leaves room for a bigger one), and never less than what
///   this peer runs itself (a manifest may ask for more than the cores).
///   A peer claiming more gets no more jobs for it.
pub fn worker_cap(decided: Option<u32>, local: u32, unset_cap: u32) -> u32 {
    let cap = match decided {
        Some(w) => w,
        None => unset_cap.max(local),
    };
    cap.min(MAX_WORKERS_PER_APP)
}

/// [`worker_cap`]'s bound when the decision leaves the count open.
pub fn unset_cap() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    cores.saturating_mul(2).max(UNSET_CAP_MIN)
}

/// The up peers that announced live workers of `app`, weighted by their
/// workers capped at `cap` (a starting app counts as one).
fn remote_candidates<'a>(
    peers: &'a [PeerView],
    app: &AppName,
    excluded: &[Target],
    cap: u32,
) -> impl Iterator<Item = Candidate<'a>> {
    peers.iter().filter(|p| p.is_up()).filter_map(move |p| {
        let target = Target::Remote(p.peer?);
        if excluded.contains(&target) {
            return None;
        }
        let a = p.apps.iter().find(|a| a.app == *app)?;
        let weight = match a.state {
            AppState::Running => a.workers.min(cap),
            AppState::Starting => 1,
            _ => 0,
        };
        (weight > 0).then(|| Candidate {
            target,
            id: p.id.as_str(),
            weight: weight as u64,
            announced_load: a.in_flight.min(1 << 20) as u64,
        })
    })
}

/// Index of a candidate drawn with probability weight / `total`.
fn draw(candidates: &[Candidate], total: u64, rng: &mut impl Rng) -> usize {
    let mut r = rng.gen_range(0..total);
    for (i, c) in candidates.iter().enumerate() {
        if r < c.weight {
            return i;
        }
        r -= c.weight;
    }
    unreachable!("r < total")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::AppStatus;
    use crate::mesh::view::{DownReason, PeerState};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn app() -> AppName {
        AppName::parse("apps/echo/echo").unwrap()
    }

    fn peer(apps: Vec<AppStatus>) -> PeerView {
        let id = libp2p::PeerId::random();
        PeerView {
            id: id.to_string(),
            peer: Some(id),
            state: PeerState::Up,
            reason: None,
            addrs: Vec::new(),
            http: None,
            first_seen_ms: 0,
            last_seen_ms: 0,
            since_ms: 0,
            started_ms: None,
            rtt_ms: None,
            connected: true,
            apps,
            links: Default::default(),
            bundles: Vec::new(),
            remote_deploy: true,
            labels: Default::default(),
        }
    }

    fn status(state: AppState, workers: u32, in_flight: u32) -> AppStatus {
        AppStatus {
            app: app(),
            state,
            workers,
            in_flight,
            clock: 1,
            error: None,
            version: None,
        }
    }

    fn running(workers: u32) -> AppStatus {
        status(AppState::Running, workers, 0)
    }

    fn snap(peers: &[PeerView], local: u32, cap: u32) -> Snapshot<'_> {
        Snapshot {
            local: ("me", local),
            peers,
            cap,
        }
    }

    /// How often each target is picked in `draws` picks.
    fn counts(
        s: &Snapshot,
        excluded: &[Target],
        policy: Policy,
        outstanding: impl Fn(Target) -> u32 + Copy,
        draws: u32,
    ) -> std::collections::HashMap<Target, u32> {
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = std::collections::HashMap::new();
        for _ in 0..draws {
            let (t, _) = pick(s, &app(), excluded, policy, outstanding, &mut rng).unwrap();
            *out.entry(t).or_default() += 1;
        }
        out
    }

    fn remote(p: &PeerView) -> Target {
        Target::Remote(p.peer.unwrap())
    }

    #[test]
    fn a_peer_announcing_256_workers_draws_no_more_than_the_decision_allows() {
        let peers = vec![
            peer(vec![running(2)]),
            peer(vec![running(2)]),
            peer(vec![running(256)]),
        ];
        // The decision asks for 2 workers per peer: everyone weighs 2.
        let cap = worker_cap(Some(2), 0, unset_cap());
        assert_eq!(cap, 2);
        let c = counts(&snap(&peers, 0, cap), &[], Policy::Random, |_| 0, 30_000);
        let rogue = c[&remote(&peers[2])] as f64 / 30_000.0;
        assert!(
            (rogue - 1.0 / 3.0).abs() < 0.02,
            "the rogue drew {rogue:.3}"
        );
        // Uncapped, it would draw 256 of every 260 jobs.
        let c = counts(
            &snap(&peers, 0, MAX_WORKERS_PER_APP),
            &[],
            Policy::Random,
            |_| 0,
            30_000,
        );
        let uncapped = c[&remote(&peers[2])] as f64 / 30_000.0;
        assert!(uncapped > 0.97, "{uncapped:.3}");
    }

    #[test]
    fn without_a_decided_count_the_cap_is_a_bound_a_real_default_stays_under() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let unset = unset_cap();
        assert!(unset >= UNSET_CAP_MIN && unset >= 2 * cores);
        assert_eq!(worker_cap(None, 0, unset), unset);
        // This peer's own count raises it (a manifest may ask for more).
        assert_eq!(worker_cap(None, unset + 5, unset), unset + 5);
        // Never above the hard limit, whatever is decided.
        assert_eq!(worker_cap(Some(10_000), 0, unset), MAX_WORKERS_PER_APP);
        assert_eq!(worker_cap(None, 10_000, unset), MAX_WORKERS_PER_APP);
        // A starting app counts one, failing or missing nothing.
        let peers = vec![
            peer(vec![status(AppState::Starting, 256, 0)]),
            peer(vec![status(AppState::Failing, 256, 0)]),
        ];
        let weights: Vec<u64> = remote_candidates(&peers, &app(), &[], unset)
            .map(|c| c.weight)
            .collect();
        assert_eq!(weights, vec![1]);
    }

    #[test]
    fn every_worker_is_equally_likely_local_and_remote() {
        // Local 1 worker, a peer with 3: a quarter of jobs stay here.
        let peers = vec![peer(vec![running(3)])];
        let c = counts(&snap(&peers, 1, 8), &[], Policy::Random, |_| 0, 20_000);
        let local = c[&Target::Local] as f64 / 20_000.0;
        assert!((local - 0.25).abs() < 0.02, "local drew {local:.3}");
    }

    #[test]
    fn down_peers_excluded_targets_and_other_apps_are_never_picked() {
        let mut down = peer(vec![running(4)]);
        down.state = PeerState::Down;
        down.reason = Some(DownReason::Unreachable);
        let mut other = peer(vec![running(4)]);
        other.apps[0].app = AppName::parse("apps/other/x").unwrap();
        let excluded = peer(vec![running(4)]);
        let ok = peer(vec![running(1)]);
        let peers = vec![down, other, excluded, ok];
        let c = counts(
            &snap(&peers, 0, 8),
            &[remote(&peers[2])],
            Policy::Random,
            |_| 0,
            2_000,
        );
        assert_eq!(c.len(), 1, "{c:?}");
        assert_eq!(c[&remote(&peers[3])], 2_000);
        // Excluding this peer too leaves nothing.
        let s = snap(&peers, 2, 8);
        let mut rng = StdRng::seed_from_u64(1);
        let all = [Target::Local, remote(&peers[2]), remote(&peers[3])];
        assert_eq!(
            pick(&s, &app(), &all, Policy::Random, |_| 0, &mut rng),
            Err(NoWorker)
        );
        // A peer id the view could not parse is no candidate.
        let mut unparsed = peer(vec![running(4)]);
        unparsed.peer = None;
        let only = [unparsed];
        assert_eq!(
            pick(
                &snap(&only, 0, 8),
                &app(),
                &[],
                Policy::Random,
                |_| 0,
                &mut rng
            ),
            Err(NoWorker)
        );
    }

    #[test]
    fn least_loaded_takes_the_emptier_of_two() {
        let peers = vec![peer(vec![running(1)]), peer(vec![running(1)])];
        let busy = remote(&peers[0]);
        // Outstanding jobs from here count...
        let c = counts(
            &snap(&peers, 0, 8),
            &[],
            Policy::LeastLoaded,
            |t| u32::from(t == busy) * 5,
            1_000,
        );
        assert_eq!(c.get(&busy), None, "{c:?}");
        // ...and so does what a peer announced in flight.
        let peers = vec![
            peer(vec![status(AppState::Running, 1, 9)]),
            peer(vec![running(1)]),
        ];
        let c = counts(&snap(&peers, 0, 8), &[], Policy::LeastLoaded, |_| 0, 1_000);
        assert_eq!(c.get(&remote(&peers[0])), None, "{c:?}");
        // Per worker: 4 jobs on 4 workers is lighter than 2 on 1.
        let peers = vec![
            peer(vec![status(AppState::Running, 4, 4)]),
            peer(vec![status(AppState::Running, 1, 2)]),
        ];
        let c = counts(&snap(&peers, 0, 8), &[], Policy::LeastLoaded, |_| 0, 1_000);
        assert_eq!(c.get(&remote(&peers[1])), None, "{c:?}");
        // Random ignores load.
        let peers = vec![peer(vec![running(1)]), peer(vec![running(1)])];
        let c = counts(
            &snap(&peers, 0, 8),
            &[],
            Policy::Random,
            |t| u32::from(t == remote(&peers[0])) * 5,
            1_000,
        );
        assert!(c[&remote(&peers[0])] > 400, "{c:?}");
    }

    #[test]
    fn a_second_draw_differs_from_the_first_when_it_can() {
        let peers = vec![peer(vec![running(1000)]), peer(vec![running(1)])];
        let cands = candidates(&snap(&peers, 0, 1000), &app(), &[]);
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..100 {
            assert_eq!(second_draw(&cands, 1001, 0, &mut rng), 1);
        }
        let one = &cands[..1];
        assert_eq!(second_draw(one, 1000, 0, &mut rng), 0);
    }

    #[test]
    fn everyone_lists_each_peer_running_the_app_once() {
        let mut down = peer(vec![running(1)]);
        down.state = PeerState::Down;
        let peers = vec![
            peer(vec![running(2)]),
            peer(vec![status(AppState::Starting, 0, 0)]),
            peer(vec![status(AppState::Failing, 2, 0)]),
            down,
        ];
        let all = everyone(&snap(&peers, 1, 8), &app());
        let targets: Vec<Target> = all.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            targets,
            vec![Target::Local, remote(&peers[0]), remote(&peers[1])]
        );
        assert_eq!(all[0].1, "me");
        assert!(everyone(&snap(&peers[2..], 0, 8), &app()).is_empty());
    }

    #[test]
    fn policies_parse_as_the_flag_spells_them() {
        assert_eq!("random".parse::<Policy>(), Ok(Policy::Random));
        assert_eq!("least-loaded".parse::<Policy>(), Ok(Policy::LeastLoaded));
        let e = "fastest".parse::<Policy>().unwrap_err();
        assert!(e.contains("random or least-loaded"), "{e}");
    }
}
