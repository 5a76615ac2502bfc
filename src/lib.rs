//! disruptor: a decentralized realtime computation mesh.

#![warn(missing_docs)]
//!
//! Layout: [`cli`] (argument types) → [`config`] (validated settings) →
//! [`peer`] (wires the pieces together and runs until a signal) with
//! [`network`] (the task owning the libp2p swarm, and its [`network::Client`]
//! handle), [`membership`] (the peer table's rules), [`desired`] (which
//! apps the mesh runs), [`worker`] (worker processes and their
//! supervision), [`dispatch`] (where a job runs) and [`http`] (axum).
//! [`commands`] holds the client-side subcommands.

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
