//! What ships under `dist/` for running peers for real, checked against the
//! binary it is for: the systemd unit passes `systemd-analyze verify` and
//! stops the peer gracefully; the example config file is TOML, names every
//! setting of `disruptor peer` once with its default, and is read by a
//! real peer; the `DISRUPTOR_*` variables of the container image and of
//! the unit's environment file are ones the peer reads.
//!
//! The checks that need `--config` and the `DISRUPTOR_*` variables are
//! skipped, with a line saying so, for a binary that has no `--config`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{BIN, Peer, PeerOpts, cli, scratch};

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    (path, text)
}

/// The settings of `disruptor peer`, from its `--help`: long flag name ->
/// the text of its entry (help, `[default: ...]`, `[env: ...]`).
fn peer_flags() -> BTreeMap<String, String> {
    let out = cli(&["peer", "--help"]);
    assert!(out.status.success(), "peer --help: {out:?}");
    let help = String::from_utf8(out.stdout).expect("UTF-8 help");
    let mut flags = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in help.lines() {
        let t = line.trim_start();
        // "--listen <ADDR>" or "-h, --help", indented less than the
        // help text under it.
        let indent = line.len() - t.len();
        let flag = t.strip_prefix("--").or_else(|| {
            t.get(4..)
                .filter(|_| t.starts_with('-'))
                .and_then(|r| r.strip_prefix("--"))
        });
        if let Some(rest) = flag.filter(|_| (2..=6).contains(&indent)) {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            flags.insert(name.clone(), String::new());
            current = Some(name);
        } else if let Some(name) = &current {
            let entry = flags.get_mut(name).expect("current flag");
            entry.push_str(t);
            entry.push('\n');
        }
    }
    assert!(
        flags.contains_key("listen") && flags.contains_key("psk-file"),
        "no flags found in peer --help:\n{help}"
    );
    flags
}

/// Whether this binary reads a config file (and so `DISRUPTOR_*`
/// variables); says so when it does not.
fn has_config(flags: &BTreeMap<String, String>, test: &str) -> bool {
    let has = flags.contains_key("config");
    if !has {
        say(&format!(
            "{test}: skipped: this disruptor has no `peer --config`"
        ));
    }
    has
}

/// A line on the test's stderr past libtest's capture: a skipped check
/// shows in the log of every run, not only of a failing one.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Flags of `peer --help` that are no key of the config file.
const NOT_SETTINGS: [&str; 4] = ["help", "version", "config", "log-format"];

/// `[default: X]` of a flag's help entry, when X is one literal value
/// (not prose such as "one per core").
fn literal_default(entry: &str) -> Option<&str> {
    let from = entry.find("[default: ")? + "[default: ".len();
    let value = &entry[from..from + entry[from..].find(']')?];
    (!value.contains(' ')).then_some(value)
}

// ---------------------------------------------------------------- systemd

const UNIT: &str = "dist/systemd/disruptor.service";
const INSTALLED_BIN: &str = "/usr/local/bin/disruptor";

/// `[Service]` settings of the unit, continuation lines joined.
fn service_settings(unit: &str) -> BTreeMap<String, String> {
    let mut section = "";
    let mut out = BTreeMap::new();
    let mut pending = String::new();
    for raw in unit.lines() {
        let line = raw.trim();
        if pending.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        if pending.is_empty() && line.starts_with('[') {
            section = if line == "[Service]" {
                "service"
            } else {
                "other"
            };
            continue;
        }
        pending.push_str(line.trim_end_matches('\\').trim_end());
        if line.ends_with('\\') {
            pending.push(' ');
            continue;
        }
        let full = std::mem::take(&mut pending);
        if section == "service" {
            let (k, v) = full.split_once('=').expect("KEY=VALUE");
            out.insert(k.to_string(), v.to_string());
        }
    }
    out
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let Some(analyze) = on_path("systemd-analyze") else {
        say("systemd unit: skipped: systemd-analyze is not on PATH");
        return;
    };
    let (_, unit) = repo_file(UNIT);
    // verify checks that ExecStart's program exists: point it at the
    // binary under test instead of the installed path.
    assert!(
        unit.contains(&format!("ExecStart={INSTALLED_BIN} ")),
        "{UNIT}: ExecStart does not start {INSTALLED_BIN}"
    );
    assert!(
        !BIN.contains(char::is_whitespace),
        "a binary path with spaces: {BIN}"
    );
    let dir = scratch("packaging-unit");
    let path = dir.path().join("disruptor.service");
    std::fs::write(&path, unit.replace(INSTALLED_BIN, BIN)).expect("write the unit");

    let help = Command::new(&analyze)
        .arg("--help")
        .output()
        .expect("systemd-analyze --help");
    let mut cmd = Command::new(&analyze);
    cmd.args(["verify", "--man=no"]);
    // Only this unit's complaints, not those of the targets it names.
    if String::from_utf8_lossy(&help.stdout).contains("--recursive-errors") {
        cmd.arg("--recursive-errors=no");
    }
    let out = cmd.arg(&path).output().expect("run systemd-analyze verify");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("systemd-analyze verify says:\n{text}");
    // Unknown keys and bad values are only warnings (exit 0): any line
    // about this file fails the test.
    let about_it: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(path.to_str().unwrap()) || l.starts_with("disruptor.service"))
        .collect();
    assert!(
        about_it.is_empty(),
        "systemd-analyze verify complains about {UNIT}:\n{}",
        about_it.join("\n")
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
}

#[test]
fn the_systemd_unit_drains_before_it_kills() {
    let (_, unit) = repo_file(UNIT);
    let s = service_settings(&unit);
    let get = |k: &str| s.get(k).map(String::as_str);
    // SIGTERM to the peer alone, which drains and stops its workers
    // itself; SIGKILL to what is left.
    assert_eq!(get("KillMode"), Some("mixed"));
    assert_eq!(get("KillSignal"), Some("SIGTERM"));
    assert_eq!(get("Restart"), Some("on-failure"));
    // ...after longer than the drain and the workers' grace together.
    let flags = peer_flags();
    let default_of = |flag: &str| {
        let d = literal_default(&flags[flag]).unwrap_or_else(|| panic!("--{flag} has no default"));
        humantime::parse_duration(d).expect("a duration")
    };
    let needed = default_of("drain-grace") + default_of("worker-grace");
    let stop = humantime::parse_duration(get("TimeoutStopSec").expect("TimeoutStopSec"))
        .expect("TimeoutStopSec is a duration");
    assert!(
        stop >= needed + Duration::from_secs(5),
        "TimeoutStopSec={stop:?} leaves no room after --drain-grace + --worker-grace ({needed:?})"
    );
    // Node's JIT needs writable executable memory.
    assert!(!s.contains_key("MemoryDenyWriteExecute"));
    // The peer id survives restarts: the identity is under the state
    // directory, as are the bundles.
    let exec = get("ExecStart").expect("ExecStart");
    assert!(
        get("StateDirectory")
            .unwrap_or("")
            .split(' ')
            .any(|d| d == "disruptor")
    );
    for want in [
        "--identity /var/lib/disruptor/",
        "--data-dir /var/lib/disruptor/",
        "--apps /var/lib/disruptor/",
    ] {
        assert!(exec.contains(want), "ExecStart lacks {want:?}: {exec}");
    }
    // Every flag the unit passes is one the peer takes.
    let has_config = has_config(&flags, "the unit's --config");
    for name in exec.split_whitespace().filter_map(|w| w.strip_prefix("--")) {
        if name == "config" && !has_config {
            continue;
        }
        assert!(
            flags.contains_key(name),
            "ExecStart passes --{name}, which `disruptor peer` does not take"
        );
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

// ---------------------------------------------------------- example config

const EXAMPLE: &str = "dist/disruptor.toml";

/// The key of a commented-out setting, `# key = value`.
fn commented_key(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("# ")?;
    let (key, _) = rest.split_once(" = ")?;
    (!key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    .then_some(key)
}

/// The example with every commented-out setting switched on.
fn uncommented(text: &str) -> String {
    text.lines()
        .map(|l| {
            if commented_key(l).is_some() {
                &l[2..]
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn as_flag_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        toml::Value::Array(items) => items.iter().map(as_flag_text).collect::<Vec<_>>().join(" "),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Table(_) | toml::Value::Datetime(_) => format!("{v:?}"),
    }
}

#[test]
fn the_example_config_is_toml_and_names_every_setting_once_with_its_default() {
    let (_, text) = repo_file(EXAMPLE);
    let shipped: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{EXAMPLE}: {e}"));
    assert!(
        shipped.contains_key("listen") && shipped.contains_key("psk-file"),
        "{EXAMPLE} sets {:?}",
        shipped.keys().collect::<Vec<_>>()
    );
    // With every "# key = value" switched on it is still TOML: no key
    // twice, every example value well-formed.
    let all: toml::Table = toml::from_str(&uncommented(&text))
        .unwrap_or_else(|e| panic!("{EXAMPLE} with every setting uncommented: {e}"));
    assert!(all.len() > shipped.len(), "no commented-out settings found");

    let flags = peer_flags();
    if !has_config(&flags, "example config keys") {
        return;
    }
    let keys: BTreeSet<&str> = all.keys().map(String::as_str).collect();
    let settings: BTreeSet<&str> = flags
        .keys()
        .map(String::as_str)
        .filter(|f| !NOT_SETTINGS.contains(f))
        .collect();
    let unknown: Vec<_> = keys.difference(&settings).collect();
    let missing: Vec<_> = settings.difference(&keys).collect();
    assert!(
        unknown.is_empty(),
        "{EXAMPLE} has keys `disruptor peer` lacks: {unknown:?}"
    );
    assert!(
        missing.is_empty(),
        "{EXAMPLE} lacks settings of `disruptor peer`: {missing:?}"
    );
    for (key, value) in &all {
        if let Some(default) = literal_default(&flags[key.as_str()]) {
            assert_eq!(
                as_flag_text(value),
                default,
                "{EXAMPLE}: `{key}` shows another value than its default"
            );
        }
    }
}

#[test]
fn a_peer_reads_the_example_config() {
    if !has_config(&peer_flags(), "a peer reading the example config") {
        return;
    }
    let (example, _) = repo_file(EXAMPLE);
    let dir = scratch("packaging-config");
    let example = example.to_str().unwrap();

    // The file's psk-file (/etc/disruptor/mesh.key) is what the peer
    // looks for when no flag overrides it.
    let shipped_psk = Path::new("/etc/disruptor/mesh.key");
    if shipped_psk.exists() {
        say(&format!(
            "a peer reading the example config: {} exists here, so the start without a key is skipped",
            shipped_psk.display()
        ));
    } else {
        let out = cli(&[
            "peer",
            "--config",
            example,
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--identity",
            dir.path().join("never.key").to_str().unwrap(),
            "--apps",
            dir.path().join("apps").to_str().unwrap(),
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains("/etc/disruptor/mesh.key"),
            "a peer with the example config and no key file: {out:?}"
        );
    }

    // With the paths a machine would have given by flags, as the unit
    // does, it runs and stops gracefully.
    let key = dir.path().join("mesh.key");
    let out = cli(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(out.status.success(), "keygen: {out:?}");
    let mut peer = Peer::start(
        dir.path(),
        "example",
        PeerOpts {
            psk: Some(key),
            identity: Some(dir.path().join("identity.key")),
            extra: vec!["--config".into(), example.into()],
            ..Default::default()
        },
    );
    assert_eq!(peer.get("/healthz").status(), 200);
    let status = peer.sigterm();
    assert!(
        status.success(),
        "exit after SIGTERM: {status:?}\n{}",
        peer.log_text()
    );
}

// ------------------------------------------------------- DISRUPTOR_* names

#[test]
fn the_images_and_the_units_variables_are_the_peers() {
    let flags = peer_flags();
    if !has_config(&flags, "DISRUPTOR_* variables") {
        return;
    }
    for file in ["Dockerfile", "dist/systemd/disruptor.env"] {
        let (_, text) = repo_file(file);
        let mut seen = 0;
        for (at, _) in text.match_indices("DISRUPTOR_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            // "DISRUPTOR_*" in prose; the build's own DISRUPTOR_GIT_REV
            // (what `disruptor --version` names).
            if name == "DISRUPTOR_" || name == "DISRUPTOR_GIT_REV" {
                continue;
            }
            seen += 1;
            let flag = name["DISRUPTOR_".len()..].to_lowercase().replace('_', "-");
            let entry = flags.get(&flag).unwrap_or_else(|| {
                panic!("{file}: {name} names no flag of `disruptor peer` (--{flag})")
            });
            assert!(
                entry.contains(&format!("[env: {name}=")),
                "{file}: --{flag} is not read from {name}"
            );
        }
        assert!(seen > 0, "{file} names no DISRUPTOR_* variable");
    }
}
