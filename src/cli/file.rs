//! Where `disruptor peer` takes its settings from, highest first: the
//! command line (flags, or the original positional form `peer LISTEN
//! [BOOTSTRAP]...`), `DISRUPTOR_*` environment variables, the TOML file
//! of `--config`, and the defaults.
//!
//! The file holds the same settings as the flags, keyed by their long
//! names (`psk-file` or `psk_file`). Each of its values is checked by the
//! flag's own parser before anything else happens, so a mistake names the
//! file, the line and the key; the values that pass are handed to clap as
//! `--key=value` arguments for every setting that the command line and the
//! environment left at its default. One parser, one set of bounds: a value
//! means the same thing in the file, in the environment and on the command
//! line.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgAction, ArgMatches, CommandFactory, FromArgMatches};

use super::Cli;

/// A config file larger than this is refused (it is a list of flags).
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why the command line (with its config file) does not parse.
#[derive(Debug)]
pub enum ParseError {
    /// clap's own error (usage, `--help`, `--version`): print it with
    /// [`clap::Error::exit`].
    Clap(clap::Error),
    /// The `--config` file is wrong: exit 2 with this message.
    File(FileError),
}

/// What is wrong with a `--config` file: where, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file.
    pub path: PathBuf,
    /// The line (from 1) of the key at fault, when one is.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}, line {line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for FileError {}

impl From<clap::Error> for ParseError {
    fn from(mut e: clap::Error) -> Self {
        // With the positional LISTEN, clap suggests `-- --flag` for an
        // unknown flag, as if it were meant as an address: it never is.
        use clap::error::{ContextKind, ContextValue};
        if let Some(ContextValue::StyledStrs(tips)) = e.remove(ContextKind::Suggested) {
            let kept: Vec<_> = tips
                .into_iter()
                .filter(|t| !t.to_string().contains("as a value, use '"))
                .collect();
            if !kept.is_empty() {
                e.insert(ContextKind::Suggested, ContextValue::StyledStrs(kept));
            }
        }
        ParseError::Clap(e)
    }
}

/// Parses a command line (`argv[0]` first), merging the `--config` file of
/// `disruptor peer` under the flags and the environment.
pub fn parse_from<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut cmd = Cli::command();
    let mut from_file = Vec::new();
    let matches = cmd.try_get_matches_from_mut(argv.clone())?;
    if let Some(("peer", peer)) = matches.subcommand() {
        check_positional(&mut cmd, peer)?;
        if let Some(path) = peer.get_one::<PathBuf>("config") {
            let peer_cmd = cmd
                .find_subcommand("peer")
                .expect("the peer subcommand")
                .clone();
            let (args, lines) = file_args(&peer_cmd, peer, path).map_err(ParseError::File)?;
            argv.extend(args);
            from_file = lines;
        }
    }
    let mut matches = cmd.try_get_matches_from_mut(argv)?;
    let mut cli = Cli::from_arg_matches_mut(&mut matches)?;
    if let super::Command::Peer(args) = &mut cli.command {
        // The positional form is the flags' twin: fold it into them.
        if let Some(listen) = args.listen_at.take() {
            args.listen = vec![listen];
        }
        if !args.join.is_empty() {
            args.bootstrap = std::mem::take(&mut args.join);
        }
        args.from_file = from_file;
    }
    Ok(cli)
}

/// The positional form and the flag form of one setting, both typed on
/// the command line, are a usage error (which one was meant?).
fn check_positional(cmd: &mut clap::Command, peer: &ArgMatches) -> Result<(), clap::Error> {
    for (positional, flag, name) in [
        ("listen_at", "listen", "LISTEN"),
        ("join", "bootstrap", "BOOTSTRAP"),
    ] {
        if typed(peer, positional) && typed(peer, flag) {
            return Err(cmd.error(
                clap::error::ErrorKind::ArgumentConflict,
                format!(
                    "the {name} argument and --{flag} say the same thing: give one or the other"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `id` was typed on the command line.
fn typed(m: &ArgMatches, id: &str) -> bool {
    m.value_source(id) == Some(ValueSource::CommandLine)
}

/// Flags (long names) and the line of the config file that set each.
type FlagLines = Vec<(String, usize)>;

/// The `--key=value` arguments that the file at `path` adds to `peer`'s
/// command line: one per value of every key that neither the command line
/// nor the environment set, and the line of each flag so set. Every value
/// is checked by its flag's parser here, so that an error names the line.
fn file_args(
    peer_cmd: &clap::Command,
    peer: &ArgMatches,
    path: &Path,
) -> Result<(Vec<OsString>, FlagLines), FileError> {
    let err = |line: Option<usize>, message: String| FileError {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = read_small(path).map_err(|m| err(None, m))?;
    // Two views of one parse: spans for the line numbers, values to use.
    let spans = toml::de::DeTable::parse(&text).map_err(|e| err(None, one_line(&e.to_string())))?;
    let values: toml::Table =
        toml::from_str(&text).map_err(|e| err(None, one_line(&e.to_string())))?;
    let mut args = Vec::new();
    let mut lines = Vec::new();
    for key in spans.get_ref().keys() {
        let at_line = line_of(&text, key.span().start);
        let line = Some(at_line);
        let name: &str = key.get_ref();
        let Some(arg) = setting(peer_cmd, name) else {
            return Err(err(line, unknown_key(peer_cmd, name)));
        };
        let id = arg.get_id().as_str();
        let long = arg.get_long().expect("settings have a long flag");
        let value = &values[name];
        let overridden = matches!(
            peer.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) || (id == "listen" && typed(peer, "listen_at"))
            || (id == "bootstrap" && typed(peer, "join"));
        let texts = scalars(value).map_err(|m| err(line, format!("`{name}`: {m}")))?;
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            let toml::Value::Boolean(on) = value else {
                return Err(err(line, format!("`{name}` is a switch: true or false")));
            };
            if *on && !overridden {
                args.push(OsString::from(format!("--{long}")));
                lines.push((long.to_string(), at_line));
            }
            continue;
        }
        let many = matches!(arg.get_action(), ArgAction::Append);
        if texts.len() != 1 && !many {
            return Err(err(line, format!("`{name}` takes one value, not a list")));
        }
        let these: Vec<OsString> = texts
            .iter()
            .map(|t| OsString::from(format!("--{long}={t}")))
            .collect();
        // The flag's own parser, on a command line of this setting alone:
        // the same bounds as typed.
        peer_cmd
            .clone()
            .try_get_matches_from(std::iter::once(OsString::from("peer")).chain(these.clone()))
            .map_err(|e| err(line, format!("`{name}`: {}", clap_message(&e))))?;
        if !overridden {
            args.extend(these);
            lines.push((long.to_string(), at_line));
        }
    }
    Ok((args, lines))
}

/// Reads the file, refusing one larger than [`MAX_CONFIG_BYTES`].
fn read_small(path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(format!(
            "{} bytes is too large for a config file (at most {MAX_CONFIG_BYTES})",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read it: {e}"))?;
    String::from_utf8(bytes).map_err(|_| "it is not UTF-8 text".to_string())
}

/// The peer flag a file key names (`psk-file` or `psk_file`), if it is a
/// setting: not `config` itself, `help`, `version`, nor a positional.
fn setting<'c>(peer_cmd: &'c clap::Command, key: &str) -> Option<&'c clap::Arg> {
    let long = key.replace('_', "-");
    peer_cmd.get_arguments().find(|a| {
        a.get_long() == Some(long.as_str())
            && !matches!(a.get_id().as_str(), "config" | "help" | "version")
    })
}

/// The message for a key that is no setting, with the nearest one.
fn unknown_key(peer_cmd: &clap::Command, key: &str) -> String {
    let nearest = peer_cmd
        .get_arguments()
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "config" | "help" | "version"))
        .min_by_key(|l| edit_distance(l, &key.replace('_', "-")));
    let hint = match nearest {
        Some(l) if edit_distance(l, &key.replace('_', "-")) <= 3 => {
            format!(" (did you mean `{l}`?)")
        }
        _ => String::new(),
    };
    format!(
        "unknown key `{key}`{hint}: the keys are the long flags of `disruptor peer` (see `disruptor peer --help`)"
    )
}

/// A value as the texts a flag takes: a string, number or boolean is one;
/// an array is one per element. Tables and dates are no flag's value.
fn scalars(v: &toml::Value) -> Result<Vec<String>, String> {
    let one = |v: &toml::Value| match v {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(_) => Err("a list may not hold lists".to_string()),
        toml::Value::Table(_) => Err("a table is no flag's value".to_string()),
        toml::Value::Datetime(_) => {
            Err("a date is no flag's value (durations are strings such as \"4s\")".to_string())
        }
    };
    match v {
        toml::Value::Array(items) => items.iter().map(one).collect(),
        v => one(v).map(|s| vec![s]),
    }
}

/// The line (from 1) of byte offset `at` in `text`.
fn line_of(text: &str, at: usize) -> usize {
    text.as_bytes()[..at.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A TOML parse error on one line (its own text spans several, with the
/// line number in the first).
fn one_line(e: &str) -> String {
    let mut lines = e.lines().filter(|l| !l.trim().is_empty());
    let head = lines.next().unwrap_or("not TOML").trim();
    let last = e
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    if last == head {
        format!("not TOML: {head}")
    } else {
        format!("not TOML: {head}: {last}")
    }
}

/// clap's error text without its `error:` prefix and usage lines.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or("").trim();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// Levenshtein distance, for the "did you mean" of an unknown key.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;

    fn peer(argv: &[&str]) -> Result<crate::cli::PeerArgs, ParseError> {
        let mut full = vec!["disruptor", "peer"];
        full.extend_from_slice(argv);
        match parse_from(full)?.command {
            Command::Peer(args) => Ok(*args),
            other => panic!("not a peer: {other:?}"),
        }
    }

    fn with_file(text: &str, argv: &[&str]) -> (Result<crate::cli::PeerArgs, ParseError>, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disruptor.toml");
        std::fs::write(&path, text).unwrap();
        let p = path.to_str().unwrap().to_string();
        let mut full = vec!["--config", p.as_str()];
        full.extend_from_slice(argv);
        let r = peer(&full);
        (r, path)
    }

    fn file_error(r: Result<crate::cli::PeerArgs, ParseError>) -> FileError {
        match r {
            Err(ParseError::File(e)) => e,
            Err(ParseError::Clap(e)) => panic!("clap error, not a file error: {e}"),
            Ok(a) => panic!("parsed: {a:?}"),
        }
    }

    #[test]
    fn the_positional_form_is_the_flags() {
        let a = peer(&["127.0.0.1:4001", "10.0.0.1:4001", "10.0.0.2:4001"]).unwrap();
        assert_eq!(a.listen, ["127.0.0.1:4001"]);
        assert_eq!(a.bootstrap, ["10.0.0.1:4001", "10.0.0.2:4001"]);
        let a = peer(&["127.0.0.1:4001"]).unwrap();
        assert_eq!(a.listen, ["127.0.0.1:4001"]);
        assert!(a.bootstrap.is_empty());
        let a = peer(&["--listen", "127.0.0.1:5", "--bootstrap", "h:1"]).unwrap();
        assert_eq!(
            (a.listen, a.bootstrap),
            (vec!["127.0.0.1:5".to_string()], vec!["h:1".to_string()])
        );
    }

    #[test]
    fn positional_and_flag_together_are_a_usage_error() {
        for argv in [
            &["127.0.0.1:4001", "--listen", "127.0.0.1:4002"][..],
            &["127.0.0.1:4001", "h:1", "--bootstrap", "h:2"][..],
        ] {
            match peer(argv) {
                Err(ParseError::Clap(e)) => {
                    assert_eq!(e.kind(), clap::error::ErrorKind::ArgumentConflict);
                    assert_eq!(e.exit_code(), 2);
                }
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        // Each form alone for one setting, the other for the other: fine.
        let a = peer(&["127.0.0.1:4001", "--bootstrap", "h:2"]).unwrap();
        assert_eq!(a.bootstrap, ["h:2"]);
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let text = "listen = [\"127.0.0.1:7001\"]\nbootstrap = [\"h:1\", \"h:2\"]\nhttp = \"127.0.0.1:9\"\n\
                    psk_file = \"mesh.key\"\nworkers = 3\ndown-after = \"9s\"\nno-remote-deploy = true\nlabel = [\"gpu\", \"zone=eu\"]\n";
        let (a, _) = with_file(text, &["--http", "127.0.0.1:10"]);
        let a = a.unwrap();
        assert_eq!(a.listen, ["127.0.0.1:7001"]);
        assert_eq!(a.bootstrap, ["h:1", "h:2"]);
        assert_eq!(a.http, "127.0.0.1:10", "the flag wins");
        assert_eq!(a.psk_file.as_deref(), Some(Path::new("mesh.key")));
        assert_eq!(a.workers, Some(3));
        assert_eq!(a.down_after, std::time::Duration::from_secs(9));
        assert!(a.no_remote_deploy);
        assert_eq!(a.labels, ["gpu", "zone=eu"]);
        // The positional form wins over the file too.
        let (a, _) = with_file(text, &["127.0.0.1:1", "x:2"]);
        let a = a.unwrap();
        assert_eq!(
            (a.listen, a.bootstrap),
            (vec!["127.0.0.1:1".to_string()], vec!["x:2".to_string()])
        );
    }

    #[test]
    fn a_bad_file_names_the_line_and_the_key() {
        let (r, path) = with_file("http = \"127.0.0.1:9\"\n\nlsiten = [\"a:1\"]\n", &[]);
        let e = file_error(r);
        assert_eq!((e.path.clone(), e.line), (path, Some(3)));
        assert!(
            e.message.contains("unknown key `lsiten`")
                && e.message.contains("did you mean `listen`"),
            "{e}"
        );

        let e = file_error(with_file("# settings\nworkers = \"many\"\n", &[]).0);
        assert_eq!(e.line, Some(2));
        assert!(
            e.message.contains("`workers`") && e.message.contains("many"),
            "{e}"
        );

        let e = file_error(with_file("down-after = \"0s\"\n", &[]).0);
        assert!(e.message.contains("greater than zero"), "{e}");

        let e = file_error(with_file("http = [\"a:1\", \"b:2\"]\n", &[]).0);
        assert!(e.message.contains("takes one value"), "{e}");

        let e = file_error(with_file("no-remote-deploy = \"yes\"\n", &[]).0);
        assert!(e.message.contains("true or false"), "{e}");

        let e = file_error(with_file("[peer]\nlisten = \"a:1\"\n", &[]).0);
        assert!(e.message.contains("unknown key `peer`"), "{e}");

        let e = file_error(with_file("config = \"other.toml\"\n", &[]).0);
        assert!(e.message.contains("unknown key `config`"), "{e}");

        let e = file_error(with_file("listen = \n", &[]).0);
        assert_eq!(e.line, None);
        assert!(
            e.message.starts_with("not TOML") && e.message.contains("line 1"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = file_error(peer(&["--config", missing.to_str().unwrap()]));
        assert!(e.message.contains("cannot read"), "{e}");
    }

    #[test]
    fn flags_set_by_the_file_remember_their_line() {
        let (a, path) = with_file(
            "# x\nhttp = \"127.0.0.1:9\"\ndown-after = \"1s\"\n",
            &["--workers", "2"],
        );
        let a = a.unwrap();
        // In key order.
        assert_eq!(
            a.from_file,
            [("down-after".to_string(), 3), ("http".to_string(), 2)]
        );
        let msg = "--down-after (1s) must be longer than --announce-interval (2s)";
        assert_eq!(
            a.where_set(msg).as_deref(),
            Some(format!("{}, line 3", path.display()).as_str())
        );
        assert_eq!(a.where_set("--workers must be between 1 and 256"), None);
    }

    #[test]
    fn a_large_file_is_refused_before_it_is_read() {
        let big = format!("# {}\n", "x".repeat(MAX_CONFIG_BYTES as usize));
        let e = file_error(with_file(&big, &[]).0);
        assert!(e.message.contains("too large"), "{e}");
    }

    #[test]
    fn every_peer_flag_has_an_environment_variable() {
        let cmd = Cli::command();
        let peer = cmd.find_subcommand("peer").unwrap();
        for a in peer.get_arguments().filter(|a| !a.is_positional()) {
            let Some(long) = a.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let want = match long {
                // Older names, kept: --admin takes a list.
                "admin" => "DISRUPTOR_ADMIN".to_string(),
                l => format!("DISRUPTOR_{}", l.to_uppercase().replace('-', "_")),
            };
            assert_eq!(
                a.get_env().and_then(|e| e.to_str()),
                Some(want.as_str()),
                "--{long}"
            );
        }
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("listen", "lsiten"), 2);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("http", "http"), 0);
        assert_eq!(line_of("a\nb\nc", 4), 3);
        assert_eq!(line_of("a\nb\nc", 0), 1);
    }
}
