//! Property tests over everything that parses untrusted bytes: app names
//! and job bodies from HTTP clients, announcements from other peers. (Job
//! frames and worker output lines have theirs beside their private
//! parsers, in `network/jobs.rs` and `worker/protocol.rs`.)
//!
//! Each property runs [`cases`] generated inputs (`PROPTEST_CASES`,
//! default 1000; `scripts/fuzz` runs many more). A failing input is
//! shrunk and printed by proptest; it then belongs in a regression test
//! here.

use std::path::{Component, Path};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::apps::AppName;
use crate::json::one_line;
use crate::mesh::membership::Membership;
use crate::mesh::membership::tests::timing;

/// Generated inputs per property.
pub fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

pub fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Any JSON value: nested arrays and objects, odd strings, big numbers.
pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (-1e300f64..1e300).prop_map(|f| json!(f)),
        any::<String>().prop_map(Value::String),
        "[\\\\\"\n\r\t\u{2028}a-z]{0,8}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\"\\\\ ]{0,6}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON value as a client might send it: compact, pretty (multi-line),
/// or with CRLF line ends and padding.
pub fn json_text() -> impl Strategy<Value = String> {
    (json_value(), 0..3u8).prop_map(|(v, style)| match style {
        0 => v.to_string(),
        1 => serde_json::to_string_pretty(&v).unwrap(),
        _ => format!(
            " \r\n{}\r\n ",
            serde_json::to_string_pretty(&v)
                .unwrap()
                .replace('\n', "\r\n")
        ),
    })
}

/// Announcements that are nearly right: every field present with a value
/// of any type, or a plausible one with odd contents.
fn announcement_like(id: String) -> impl Strategy<Value = Value> {
    (
        prop_oneof![Just(json!(1)), json_value()],
        prop_oneof![Just(json!(id)), json_value()],
        prop_oneof![any::<u64>().prop_map(|n| json!(n)), json_value()],
        prop_oneof![any::<u64>().prop_map(|n| json!(n)), json_value()],
        prop_oneof![
            prop::collection::vec("/ip4/[0-9.]{1,15}/tcp/[0-9]{1,6}|[ -~]{0,30}", 0..40)
                .prop_map(|v| json!(v)),
            json_value()
        ],
        json_value(),
        prop_oneof![
            prop::collection::vec(
                (
                    "apps/[a-z./]{0,12}",
                    "running|starting|failing|x",
                    any::<u32>()
                )
                    .prop_map(
                        |(app, state, n)| json!({"app": app, "state": state, "workers": n,
                        "in_flight": n, "clock": n})
                    ),
                0..5
            )
            .prop_map(|v| json!(v)),
            json_value()
        ],
        prop_oneof![
            prop::collection::vec(
                (
                    "apps/[a-z./]{0,12}",
                    any::<bool>(),
                    any::<u64>(),
                    any::<u32>()
                )
                    .prop_map(
                        |(app, run, clock, w)| json!({"app": app, "run": run, "clock": clock,
                        "workers": w, "origin": "x"})
                    ),
                0..5
            )
            .prop_map(|v| json!(v)),
            json_value()
        ],
    )
        .prop_map(|(v, id, inc, seq, listen, http, apps, desired)| {
            json!({"v": v, "id": id, "incarnation": inc, "seq": seq, "listen": listen,
                "http": http, "leaving": false, "apps": apps, "desired": desired})
        })
}

proptest! {
    #![proptest_config(config())]

    /// No name, however odd, panics; an accepted one is a relative path
    /// of plain parts that cannot leave the apps directory.
    #[test]
    fn app_names(name in prop_oneof![
        any::<String>(),
        "(apps/)?([a-z.\\\\~-]{0,3}/){0,4}[a-z.\\\\~\u{0}-]{0,3}",
    ]) {
        if let Ok(app) = AppName::parse(&name) {
            prop_assert!(app.as_str().starts_with("apps/"));
            let rel = Path::new(app.rel_path());
            prop_assert!(rel.components().all(|c| matches!(c, Component::Normal(_))), "{name:?}");
            prop_assert!(!app.as_str().contains(['\0', '\\']), "{name:?}");
        }
    }

    /// Any text as a job body: no panic; an accepted body is one line (no
    /// CR or LF) of the same JSON.
    #[test]
    fn job_bodies_any_text(text in prop_oneof![any::<String>(), "[\\[\\]{}\" :,0-9a-z\r\n\\\\]{0,24}"]) {
        if let Ok(line) = one_line(&text) {
            prop_assert!(!line.contains(['\n', '\r']), "{text:?} -> {line:?}");
            let a: Value = serde_json::from_str(&text).unwrap();
            let b: Value = serde_json::from_str(&line).unwrap();
            prop_assert_eq!(a, b);
        }
    }

    /// Any JSON value, however formatted, is accepted as a job and stays
    /// the same value on one line.
    #[test]
    fn job_bodies_json(text in json_text()) {
        let line = one_line(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert!(!line.contains(['\n', '\r']));
        let a: Value = serde_json::from_str(&text).unwrap();
        let b: Value = serde_json::from_str(&line).unwrap();
        prop_assert_eq!(a, b);
    }

    /// Announcements of any bytes or any shape never panic, and the table
    /// stays bounded.
    #[test]
    fn announcements(
        raw in prop::collection::vec(any::<u8>(), 0..512),
        shaped in prop::collection::vec(announcement_like("SOURCE".into()), 1..4),
    ) {
        let local = libp2p::PeerId::random();
        let key = libp2p::identity::Keypair::generate_ed25519();
        let source = key.public().to_peer_id();
        let mut m = Membership::new(local, timing());
        let now = Instant::now();
        let _ = m.on_announce_bytes(source, &raw, now);
        for a in shaped {
            let text = a.to_string().replace("\"SOURCE\"", &format!("\"{source}\""));
            // Signed by its author, so that all of it is looked at.
            let record = crate::mesh::record::seal(&key, text.as_bytes()).unwrap();
            let _ = m.on_announce_bytes(source, &record, now);
            m.tick(now + Duration::from_secs(1));
        }
        prop_assert!(m.views().len() <= 1);
        for v in m.views() {
            prop_assert!(v.addrs.len() <= crate::mesh::membership::MAX_ADDRS_PER_PEER);
        }
    }
}
