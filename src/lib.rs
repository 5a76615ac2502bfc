//! disruptor: a decentralized realtime computation mesh.
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
pub mod bundle;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dashboard;
pub mod desired;
pub mod dispatch;
pub mod error;
#[cfg(test)]
mod fuzz;
pub mod guard;
pub mod http;
pub mod membership;
pub mod metrics;
pub mod network;
pub mod peer;
pub mod ratelimit;
pub mod stats;
pub mod stream;
pub mod text;
pub mod trust;
pub mod worker;
