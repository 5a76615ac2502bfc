//! Where a stream's items are between the request and the response: a
//! pure state machine ([`Flow`]) that takes each line read and each answer
//! of a stage, says what goes to which stage next, and hands back the
//! output lines that are ready; and the writer of those lines ([`Output`]),
//! in the order they are due.
//!
//! Output, one JSON value per line:
//! - ordered (default): the answers of line n come before those of line
//!   n+1. One stage: exactly one output line per input line, the worker's
//!   result or `{"line": n, "error": "..."}`. A pipeline: the items line n
//!   became, in order (none if a stage dropped it);
//! - unordered: as they complete, `{"line": n, "result": ...}` or
//!   `{"line": n, "error": "..."}`.
//!
//! In a pipeline an error also names its stage: `{"line": n, "stage":
//! "apps/...", "error": "..."}`.

use std::collections::{BTreeMap, HashMap, VecDeque};

use axum::body::Bytes;
use tokio::sync::mpsc;

use super::batch::Item;
use super::pipeline::{Passed, Stages, pass_on};
use crate::apps::AppName;
use crate::error::JobError;

/// The output of one input line, when it is due: one line, or those of
/// every item it became (a pipeline).
#[derive(Debug, PartialEq)]
pub(super) enum Group {
    One(Bytes),
    Many(Vec<Bytes>),
}

/// A line's items still on their way, and the outputs of those done (with
/// their place among the line's items).
#[derive(Default)]
struct Open {
    alive: usize,
    outs: Vec<(Vec<u32>, Bytes)>,
}

/// See the module's documentation.
pub(super) struct Flow {
    stages: Stages,
    ordered: bool,
    /// Per stage, items waiting to be sent off in a batch.
    pub forming: Vec<VecDeque<Item>>,
    /// Items in `forming` or in a batch on its way: no line is read while
    /// the window is full of them.
    pub in_flight: usize,
    /// Items in a batch on its way: no batch is sent while the window is
    /// full of them (a stage that passed on arrays may have made more
    /// items than the window holds; they wait in `forming`).
    pub dispatched: usize,
    /// Pipelines, ordered: lines with items still on their way.
    open: HashMap<u64, Open>,
}

impl Flow {
    pub fn new(stages: Stages, ordered: bool) -> Flow {
        Flow {
            forming: (0..stages.len()).map(|_| VecDeque::new()).collect(),
            stages,
            ordered,
            in_flight: 0,
            dispatched: 0,
            open: HashMap::new(),
        }
    }

    /// Input line `n`: its job for the first stage, or why it is none
    /// (answered at once).
    pub fn admit(
        &mut self,
        n: u64,
        line: Result<std::sync::Arc<str>, JobError>,
        ready: &mut Vec<(u64, Group)>,
    ) {
        match line {
            Err(e) => ready.push((n, Group::One(error_line(n, None, &e)))),
            Ok(payload) => {
                if self.stages.is_pipeline() && self.ordered {
                    self.open.insert(
                        n,
                        Open {
                            alive: 1,
                            outs: Vec::new(),
                        },
                    );
                }
                self.forming[0].push_back(Item::new(n, payload));
                self.in_flight += 1;
            }
        }
    }

    /// Stage `k` answered `item`: its output, or its job(s) for stage k+1.
    pub fn answered(
        &mut self,
        k: usize,
        item: Item,
        result: Result<String, JobError>,
        ready: &mut Vec<(u64, Group)>,
    ) {
        self.in_flight -= 1;
        let stage = self
            .stages
            .is_pipeline()
            .then(|| self.stages.get(k).clone());
        let n = item.line;
        let result = match result {
            Ok(r) if !self.stages.is_last(k) => pass_on(&r),
            Ok(r) => {
                let out = if self.ordered {
                    let mut s = r;
                    s.push('\n');
                    Bytes::from(s)
                } else {
                    Bytes::from(format!("{{\"line\":{n},\"result\":{r}}}\n"))
                };
                return self.finish(item, Some(out), ready);
            }
            Err(e) => Err(e),
        };
        match result {
            Err(e) => {
                let out = error_line(n, stage.as_ref(), &e);
                self.finish(item, Some(out), ready);
            }
            Ok(Passed::Dropped) => self.finish(item, None, ready),
            Ok(Passed::One(payload)) => {
                self.forming[k + 1].push_back(Item { payload, ..item });
                self.in_flight += 1;
            }
            Ok(Passed::Many(payloads)) if payloads.is_empty() => self.finish(item, None, ready),
            Ok(Passed::Many(payloads)) => {
                if let Some(open) = self.open.get_mut(&n) {
                    open.alive += payloads.len() - 1;
                }
                self.in_flight += payloads.len();
                for (i, payload) in payloads.into_iter().enumerate() {
                    let mut path = item.path.clone();
                    path.push(i as u32);
                    self.forming[k + 1].push_back(Item {
                        line: n,
                        path,
                        payload,
                    });
                }
            }
        }
    }

    /// `item` is done, with `out` (none: dropped).
    fn finish(&mut self, item: Item, out: Option<Bytes>, ready: &mut Vec<(u64, Group)>) {
        let n = item.line;
        let Some(open) = self.open.get_mut(&n) else {
            // One stage, or unordered: out as it comes.
            if let Some(out) = out {
                ready.push((n, Group::One(out)));
            }
            return;
        };
        if let Some(out) = out {
            open.outs.push((item.path, out));
        }
        open.alive -= 1;
        if open.alive == 0 {
            let mut outs = self.open.remove(&n).expect("open above").outs;
            outs.sort_by(|a, b| a.0.cmp(&b.0));
            ready.push((n, Group::Many(outs.into_iter().map(|(_, o)| o).collect())));
        }
    }
}

/// `{"line": n, "error": ...}`, with `"stage"` in a pipeline.
pub(super) fn error_line(n: u64, stage: Option<&AppName>, e: &JobError) -> Bytes {
    let error = serde_json::Value::String(e.to_string());
    let s = match stage {
        None => format!("{{\"line\":{n},\"error\":{error}}}\n"),
        Some(app) => {
            let app = serde_json::Value::String(app.to_string());
            format!("{{\"line\":{n},\"stage\":{app},\"error\":{error}}}\n")
        }
    };
    Bytes::from(s)
}

/// The response side of a stream: output lines written in the order they
/// are due, through the channel to the response body.
pub(super) struct Output {
    tx: mpsc::Sender<Bytes>,
    ordered: bool,
    /// Ordered mode: lines done before an earlier line.
    pub waiting: BTreeMap<u64, Group>,
    /// Ordered mode: the line whose output is due.
    next: u64,
}

/// The client went away.
pub(super) struct Gone;

impl Output {
    pub fn new(tx: mpsc::Sender<Bytes>, ordered: bool) -> Output {
        Output {
            tx,
            ordered,
            waiting: BTreeMap::new(),
            next: 1,
        }
    }

    /// Line `n`'s output: written now, or when the lines before it are
    /// (ordered mode).
    pub async fn send(&mut self, n: u64, group: Group) -> Result<(), Gone> {
        if !self.ordered {
            return self.write(group).await;
        }
        self.waiting.insert(n, group);
        while let Some(group) = self.waiting.remove(&self.next) {
            self.write(group).await?;
            self.next += 1;
        }
        Ok(())
    }

    async fn write(&self, group: Group) -> Result<(), Gone> {
        match group {
            Group::One(b) => self.tx.send(b).await.map_err(|_| Gone),
            Group::Many(bs) => {
                for b in bs {
                    self.tx.send(b).await.map_err(|_| Gone)?;
                }
                Ok(())
            }
        }
    }

    /// The last line of a stream whose input broke off: why.
    pub async fn stream_error(self, why: String) {
        let mut s = serde_json::json!({ "stream_error": why }).to_string();
        s.push('\n');
        let _ = self.tx.send(Bytes::from(s)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn stages(names: &[&str]) -> Stages {
        let mut apps = names.iter().map(|n| AppName::parse(n).unwrap());
        Stages::new(apps.next().unwrap(), apps.collect()).unwrap()
    }

    fn text(group: &Group) -> Vec<String> {
        let one = |b: &Bytes| String::from_utf8(b.to_vec()).unwrap();
        match group {
            Group::One(b) => vec![one(b)],
            Group::Many(bs) => bs.iter().map(one).collect(),
        }
    }

    /// Runs every item through `f` (stage, payload) -> result, stage by
    /// stage, answering the items of each stage in reverse order (so
    /// completion order differs from input order); returns what is ready.
    fn run(
        flow: &mut Flow,
        lines: &[&str],
        f: impl Fn(usize, &str) -> Result<String, JobError>,
    ) -> Vec<(u64, Vec<String>)> {
        let mut ready = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            flow.admit(i as u64 + 1, Ok(Arc::from(*l)), &mut ready);
        }
        for k in 0..flow.forming.len() {
            let mut items: Vec<Item> = flow.forming[k].drain(..).collect();
            items.reverse();
            for item in items {
                let r = f(k, &item.payload);
                flow.answered(k, item, r, &mut ready);
            }
        }
        assert_eq!(flow.in_flight, 0);
        ready.iter().map(|(n, g)| (*n, text(g))).collect()
    }

    #[test]
    fn one_stage_answers_each_line_with_one_line() {
        let mut flow = Flow::new(stages(&["apps/a"]), true);
        let got = run(&mut flow, &["1", "[2]", "null"], |_, p| match p {
            "null" => Err(JobError::Timeout("slow".into())),
            p => Ok(p.to_string()),
        });
        // Arrays and null are answers of the last stage, not flattened.
        assert_eq!(
            got,
            vec![
                (3, vec!["{\"line\":3,\"error\":\"slow\"}\n".into()]),
                (2, vec!["[2]\n".into()]),
                (1, vec!["1\n".into()]),
            ]
        );
    }

    #[test]
    fn a_pipeline_flattens_filters_and_keeps_each_lines_items_in_order() {
        let mut flow = Flow::new(stages(&["apps/split", "apps/double"]), true);
        // Stage 0: "a b" -> ["a","b"]; "-" -> null (dropped); "x" -> "x".
        let got = run(
            &mut flow,
            &[r#""a b c""#, r#""-""#, r#""x""#, r#""""#],
            |k, p| {
                if k == 0 {
                    let words: Vec<&str> = p.trim_matches('"').split_whitespace().collect();
                    return Ok(match words.as_slice() {
                        ["-"] => "null".into(),
                        [one] => format!("\"{one}\""),
                        many => serde_json::to_string(many).unwrap(),
                    });
                }
                if p == r#""b""# {
                    return Err(JobError::WorkerCrashed("b is poison".into()));
                }
                Ok(format!("\"{0}{0}\"", p.trim_matches('"')))
            },
        );
        let mut got = got;
        got.sort();
        assert_eq!(
            got,
            vec![
                (
                    1,
                    vec![
                        "\"aa\"\n".into(),
                        "{\"line\":1,\"stage\":\"apps/double\",\"error\":\"b is poison\"}\n".into(),
                        "\"cc\"\n".into()
                    ]
                ),
                (2, vec![]),
                (3, vec!["\"xx\"\n".into()]),
                (4, vec![]),
            ]
        );
    }

    #[test]
    fn unordered_pipelines_answer_each_item_as_it_comes() {
        let mut flow = Flow::new(stages(&["apps/a", "apps/b"]), false);
        let got = run(&mut flow, &["[1,2]", "null"], |_, p| Ok(p.to_string()));
        assert_eq!(
            got,
            vec![
                (1, vec!["{\"line\":1,\"result\":2}\n".into()]),
                (1, vec!["{\"line\":1,\"result\":1}\n".into()]),
            ]
        );
    }

    #[test]
    fn a_bad_line_is_answered_at_once_without_a_stage() {
        let mut flow = Flow::new(stages(&["apps/a", "apps/b"]), true);
        let mut ready = Vec::new();
        flow.admit(
            1,
            Err(JobError::BadRequest("empty line".into())),
            &mut ready,
        );
        assert_eq!(flow.in_flight, 0);
        assert_eq!(
            text(&ready[0].1),
            vec!["{\"line\":1,\"error\":\"empty line\"}\n".to_string()]
        );
    }

    #[tokio::test]
    async fn ordered_output_waits_for_earlier_lines() {
        let (tx, mut rx) = mpsc::channel(16);
        let mut out = Output::new(tx, true);
        let one = |s: &str| Group::One(Bytes::from(s.to_string()));
        out.send(2, one("b")).await.ok().unwrap();
        out.send(3, Group::Many(vec![])).await.ok().unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(out.waiting.len(), 2);
        out.send(1, Group::Many(vec![Bytes::from("a1"), Bytes::from("a2")]))
            .await
            .ok()
            .unwrap();
        let mut got = Vec::new();
        while let Ok(b) = rx.try_recv() {
            got.push(String::from_utf8(b.to_vec()).unwrap());
        }
        assert_eq!(got, vec!["a1", "a2", "b"]);
        assert!(out.waiting.is_empty());
    }
}
