//! disruptor: a decentralized realtime computation mesh.
//!
//! Every machine runs a peer (`disruptor peer`). Peers find each other over
//! libp2p, with no master; they agree on which apps the mesh runs, and run
//! JSON jobs on long-lived worker processes anywhere in the mesh. Each peer
//! serves a local HTTP endpoint (jobs, decisions, its view of the mesh),
//! which the other subcommands of the CLI talk to.
//!
//! # Layout
//!
//! The modules form layers, lowest first. A module imports modules of lower
//! layers only, never one of its own layer or above (`tests/architecture.rs`
//! checks it), so dependencies point one way and no cycle can form.
//!
//! 1. Helpers: text, time, JSON lines, rate limits, secret files.
//!    - [`text`]: shortening and cleaning text that other peers or apps wrote.
//!    - [`clock`]: wall-clock time as the mesh exchanges it, Unix ms.
//!    - [`json`]: a job as workers read it, one JSON value per line.
//!    - [`ratelimit`]: per-key token buckets.
//!    - [`secret_file`]: secret files: read only when private, written 0600.
//! 2. Values: apps and their states, job errors.
//!    - [`apps`]: app names, how a name resolves to a program, app states.
//!    - [`error`]: why a job failed, and the HTTP status of each reason.
//! 3. Observability.
//!    - [`obs`]: Prometheus metrics and the dashboard's recent stats.
//! 4. Bundles on disk.
//!    - [`deploy`]: app directories packed, checked, installed and collected.
//! 5. What the mesh agrees on.
//!    - [`mesh`]: membership, the apps the mesh runs, who may decide, the view.
//! 6. This peer's workers; the libp2p side.
//!    - [`worker`]: worker processes: spawning, talking to, supervising.
//!    - [`network`]: the libp2p swarm task and its [`network::Client`] handle.
//! 7. Where a job runs; the JSON shapes.
//!    - [`dispatch`]: the worker a job runs on, and failover to another.
//!    - [`api`]: the JSON bodies and headers of the HTTP API.
//! 8. The HTTP endpoint.
//!    - [`http`]: axum: the API, the job endpoint, the status page.
//! 9. Command-line arguments.
//!    - [`cli`]: the clap types, parsing only.
//! 10. Validated settings.
//!     - [`config`]: the peer's arguments checked, its key files read.
//! 11. The wiring of a peer; the CLI client.
//!     - [`peer`]: builds every part, runs until a signal, stops in order.
//!     - [`client`]: every other subcommand, a short-lived client of a peer.
//!
//! `main.rs` (the binary) parses a [`cli::Cli`] and runs [`peer::run`] or
//! one of the [`client`] commands.

#![warn(missing_docs)]

pub mod api;
pub mod apps;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod deploy;
pub mod dispatch;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod http;
pub mod json;
pub mod mesh;
pub mod network;
pub mod obs;
pub mod peer;
pub mod ratelimit;
pub mod secret_file;
pub mod text;
pub mod worker;
