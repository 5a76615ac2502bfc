//! Placement: on which peers an app runs, when a decision says `--peers
//! N` or `--on LABEL` (`disruptor start APP --peers 2 --on zone=eu`).
//!
//! There is no coordinator: every peer computes the placement of every app
//! itself, from the same inputs (the decision, and the peers it sees up
//! with their labels and app states), with this pure function, and runs
//! the app if it placed it on itself. Views of the mesh agree within a
//! detection interval, so the answers do too.
//!
//! The rules, in order:
//! 1. *Eligible* peers match every selector of `--on` and can run the app
//!    (a peer that reports it missing cannot; one not heard on it yet is
//!    assumed able, and says otherwise soon).
//! 2. Without `--peers`, every eligible peer runs it.
//! 3. With `--peers N`, the peers that already run it (running, starting
//!    or failing) keep it, so that a growing mesh moves nothing; free
//!    places go to the eligible peers ranked highest by rendezvous hashing
//!    of (app, peer id), so that every peer picks the same ones without
//!    talking; when more than N run it (two halves of a healed partition
//!    each placed it), the N ranked highest among them keep it.
//!
//! A peer that has just started takes no place until it has heard the
//! mesh for a while (see `crate::peer`), or it would take a place that
//! another peer, which it has not heard of yet, already holds.

use sha2::{Digest, Sha256};

use crate::apps::{AppName, AppState, AppStatus};
use crate::mesh::labels::Labels;

/// Most selectors of a decision (`--on`): every announcement carries every
/// decision, so they must stay short.
pub const MAX_SELECTORS: usize = 4;

/// Most peers a decision may ask for (`--peers`).
pub const MAX_PEERS_PLACED: u32 = 4096;

/// A start decision's placement: `--peers N` (all eligible peers when
/// none) and `--on LABEL...` (every peer when empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// `--peers`: on how many peers, at most.
    pub peers: Option<u32>,
    /// `--on`: only on peers whose labels match all of these.
    pub on: Labels,
}

impl Placement {
    /// Whether it says nothing: every peer that has the app runs it.
    pub fn is_everywhere(&self) -> bool {
        self.peers.is_none() && self.on.is_empty()
    }
}

/// What a peer is to an app's placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// It runs the app (running, starting, or failing and retrying).
    Runs,
    /// It could run it, or has not said yet.
    Able,
    /// It lacks the app (or cannot start it).
    Unable,
}

impl Hold {
    /// What a peer's status for an app (none if it said nothing of it)
    /// says about placing the app there.
    pub fn of(status: Option<&AppStatus>) -> Hold {
        match status.map(|s| s.state) {
            Some(AppState::Running | AppState::Starting | AppState::Failing) => Hold::Runs,
            Some(AppState::Missing) => Hold::Unable,
            Some(AppState::Stopped | AppState::Standby) | None => Hold::Able,
        }
    }
}

/// One peer, as placement sees it.
#[derive(Debug, Clone)]
pub struct Candidate<'a> {
    /// Its peer id (base58): the rendezvous hash's input.
    pub id: &'a str,
    /// Its labels.
    pub labels: &'a Labels,
    /// Whether it runs the app.
    pub hold: Hold,
}

/// Where an app goes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Placed {
    /// The ids of the peers placed on, highest rank first.
    pub chosen: Vec<String>,
    /// How many peers could run it (for "asked for 5, 3 can").
    pub eligible: usize,
}

/// The rendezvous rank of `peer` for `app`: the first 8 bytes of
/// SHA-256(app, 0, peer id). Highest wins.
pub fn rank(app: &AppName, peer: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(app.as_str().as_bytes());
    h.update([0]);
    h.update(peer.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// Places `app` over `candidates` (see the module docs): `peers` is the
/// decision's `--peers`, `on` its `--on`.
pub fn place(app: &AppName, peers: Option<u32>, on: &Labels, candidates: &[Candidate]) -> Placed {
    let mut eligible: Vec<(u64, &Candidate)> = candidates
        .iter()
        .filter(|c| c.hold != Hold::Unable && c.labels.satisfy(on))
        .map(|c| (rank(app, c.id), c))
        .collect();
    // Highest rank first; ties (a hash collision) broken by id.
    eligible.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.id.cmp(b.1.id)));
    let n = eligible.len();
    let chosen: Vec<String> = match peers {
        None => eligible.iter().map(|(_, c)| c.id.to_string()).collect(),
        Some(want) => {
            let want = want as usize;
            let (runs, able): (Vec<_>, Vec<_>) =
                eligible.iter().partition(|(_, c)| c.hold == Hold::Runs);
            runs.iter()
                .chain(able.iter())
                .take(want)
                .map(|(_, c)| c.id.to_string())
                .collect()
        }
    };
    Placed {
        chosen,
        eligible: n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> AppName {
        AppName::parse("apps/x").unwrap()
    }

    struct Mesh {
        ids: Vec<String>,
        labels: Vec<Labels>,
        holds: Vec<Hold>,
    }

    impl Mesh {
        fn new(n: usize) -> Mesh {
            Mesh {
                ids: (0..n).map(|i| format!("peer-{i}")).collect(),
                labels: vec![Labels::default(); n],
                holds: vec![Hold::Able; n],
            }
        }
        fn candidates(&self) -> Vec<Candidate<'_>> {
            (0..self.ids.len())
                .map(|i| Candidate {
                    id: &self.ids[i],
                    labels: &self.labels[i],
                    hold: self.holds[i],
                })
                .collect()
        }
        fn place(&self, peers: Option<u32>, on: &[&str]) -> Placed {
            place(
                &app(),
                peers,
                &Labels::parse_all(on).unwrap(),
                &self.candidates(),
            )
        }
        /// Marks the chosen ones as running it, the rest as able.
        fn run(&mut self, placed: &Placed) {
            for (i, id) in self.ids.iter().enumerate() {
                if self.holds[i] != Hold::Unable {
                    self.holds[i] = if placed.chosen.contains(id) {
                        Hold::Runs
                    } else {
                        Hold::Able
                    };
                }
            }
        }
        fn remove(&mut self, id: &str) {
            let i = self.ids.iter().position(|x| x == id).unwrap();
            self.ids.remove(i);
            self.labels.remove(i);
            self.holds.remove(i);
        }
    }

    #[test]
    fn without_a_count_every_eligible_peer_runs_it() {
        let mut m = Mesh::new(4);
        m.holds[1] = Hold::Unable;
        m.labels[2] = Labels::parse_all(&["gpu"]).unwrap();
        let p = m.place(None, &[]);
        assert_eq!((p.chosen.len(), p.eligible), (3, 3));
        assert!(!p.chosen.contains(&"peer-1".to_string()));
        let p = m.place(None, &["gpu"]);
        assert_eq!(p.chosen, ["peer-2"]);
        assert_eq!(m.place(None, &["tpu"]), Placed::default());
    }

    #[test]
    fn a_count_takes_the_highest_ranked_and_every_peer_agrees() {
        let m = Mesh::new(10);
        let p = m.place(Some(3), &[]);
        assert_eq!((p.chosen.len(), p.eligible), (3, 10));
        let mut by_rank: Vec<&String> = m.ids.iter().collect();
        by_rank.sort_by_key(|id| std::cmp::Reverse(rank(&app(), id)));
        assert_eq!(p.chosen.iter().collect::<Vec<_>>(), by_rank[..3]);
        // The order peers are listed in changes nothing.
        let mut shuffled = Mesh::new(10);
        shuffled.ids.reverse();
        assert_eq!(shuffled.place(Some(3), &[]), p);
        // Asking for more than can: all that can.
        let p = m.place(Some(50), &[]);
        assert_eq!((p.chosen.len(), p.eligible), (10, 10));
    }

    #[test]
    fn a_dead_peer_is_replaced_and_the_others_stay() {
        let mut m = Mesh::new(6);
        let first = m.place(Some(2), &[]);
        m.run(&first);
        // The highest-ranked dies: the other keeps its place, one more is picked.
        m.remove(&first.chosen[0].clone());
        let next = m.place(Some(2), &[]);
        assert_eq!(next.chosen.len(), 2);
        assert!(next.chosen.contains(&first.chosen[1]));
        assert!(!next.chosen.contains(&first.chosen[0]));
    }

    #[test]
    fn a_growing_mesh_moves_nothing() {
        let mut m = Mesh::new(3);
        let first = m.place(Some(2), &[]);
        m.run(&first);
        // Newcomers, whatever their rank, take no place that is held.
        for i in 0..20 {
            m.ids.push(format!("new-{i}"));
            m.labels.push(Labels::default());
            m.holds.push(Hold::Able);
        }
        let mut after = m.place(Some(2), &[]).chosen;
        let mut before = first.chosen.clone();
        after.sort();
        before.sort();
        assert_eq!(after, before);
    }

    #[test]
    fn too_many_running_shrinks_to_the_highest_ranked() {
        let mut m = Mesh::new(5);
        m.holds = vec![Hold::Runs; 5];
        let p = m.place(Some(2), &[]);
        let fresh = Mesh::new(5).place(Some(2), &[]);
        assert_eq!(p.chosen, fresh.chosen, "the same two as from scratch");
    }

    #[test]
    fn labels_and_missing_apps_limit_the_choice() {
        let mut m = Mesh::new(5);
        for i in [0, 2, 4] {
            m.labels[i] = Labels::parse_all(&["zone=eu"]).unwrap();
        }
        m.holds[2] = Hold::Unable;
        let p = m.place(Some(5), &["zone=eu"]);
        assert_eq!(p.eligible, 2);
        let mut chosen = p.chosen.clone();
        chosen.sort();
        assert_eq!(chosen, ["peer-0", "peer-4"]);
        let p = m.place(Some(1), &["zone"]);
        assert_eq!((p.chosen.len(), p.eligible), (1, 2));
    }

    #[test]
    fn only_a_placement_that_says_nothing_is_everywhere() {
        assert!(Placement::default().is_everywhere());
        let counted = Placement {
            peers: Some(2),
            on: Labels::default(),
        };
        let labelled = Placement {
            peers: None,
            on: Labels::parse_all(&["gpu"]).unwrap(),
        };
        assert!(!counted.is_everywhere() && !labelled.is_everywhere());
    }

    #[test]
    fn ranks_differ_by_app_and_peer() {
        let a = AppName::parse("apps/a").unwrap();
        let b = AppName::parse("apps/b").unwrap();
        assert_ne!(rank(&a, "p"), rank(&b, "p"));
        assert_ne!(rank(&a, "p"), rank(&a, "q"));
        assert_eq!(rank(&a, "p"), rank(&a, "p"));
    }
}
