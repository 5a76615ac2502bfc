//! The client side of the CLI: every subcommand except `peer`.
//!
//! A client command is short-lived. It talks to one running peer over that
//! peer's HTTP API (the address given first on the command line; any peer
//! of the mesh will do, since each knows the whole mesh), prints what it
//! learnt, and exits. `main` maps the outcome to an exit code: 0 for
//! success, 2 for a [`UsageError`] (bad arguments, unreadable files), 1
//! for anything else (a peer that cannot be reached, an error answer, a
//! mesh that did not settle in time).
//!
//! | command  | file        | what it does                                            |
//! |----------|-------------|---------------------------------------------------------|
//! | `peers`  | `peers.rs`  | the table of the peers one peer knows                   |
//! | `status` | `status.rs` | peers, apps, rates and latest errors, as the dashboard  |
//! | `start`  | `decide.rs` | decide that an app runs; wait until the mesh reports it |
//! | `stop`   | `decide.rs` | decide that an app stops; wait until the mesh reports it |
//! | `send`   | `send.rs`   | one job (or one per peer, `--all`); the result on stdout |
//! | `stream` | `stream.rs` | many jobs as one NDJSON request; results as they arrive |
//! | `deploy` | `deploy.rs` | pack a directory, upload it signed, wait for the mesh   |
//! | `keygen` | `keygen.rs` | a pre-shared key or an admin key (no peer involved)     |
//!
//! What the commands share lives in files of its own:
//!
//! - `http.rs`: reaching a peer. One `reqwest::Client` per command, built
//!   once with the bearer token (`--token-file`); error answers become
//!   printable messages.
//! - `wait.rs`: after a decision, the one loop that polls the mesh until
//!   every peer reports the new state, or time runs out.
//! - `term.rs`: what a person at a terminal sees: tables with aligned
//!   columns (their cells made printable: they show what other peers
//!   announced), peer ids shortened to one length, progress bars.
//!
//! Text from a peer (ids, addresses, versions, error messages) passes
//! through [`crate::text::printable`] before it reaches the terminal, and
//! is shortened by characters, never by bytes (see [`crate::text`]).

mod decide;
mod deploy;
mod http;
mod keygen;
mod peers;
mod send;
mod status;
mod stream;
mod term;
mod wait;

pub use decide::{start, stop};
pub use deploy::deploy;
pub use http::base_url;
pub use keygen::keygen;
pub use peers::{peers, render_peers_table};
pub use send::send;
pub use status::{render_status, status};
pub use stream::stream;

use crate::apps::AppName;

/// A user error in a client command's arguments (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The app named on the command line, checked (`apps/...`, no `..`).
fn app_arg(app: &str) -> Result<AppName, UsageError> {
    AppName::parse(app).map_err(|e| UsageError(e.to_string()))
}

/// `--then` stages as the query's `then=` parameters (`&then=A&then=B`),
/// each checked; at most 15.
fn then_query(then: &[String]) -> Result<String, UsageError> {
    let most = crate::http::stream::pipeline::MAX_STAGES - 1;
    if then.len() > most {
        return Err(UsageError(format!(
            "at most {most} --then stages (a pipeline has at most {} apps)",
            most + 1
        )));
    }
    let mut q = String::new();
    for app in then {
        let app = AppName::parse(app).map_err(|e| UsageError(format!("--then {app:?}: {e}")))?;
        q.push_str("&then=");
        q.push_str(app.as_str());
    }
    Ok(q)
}
