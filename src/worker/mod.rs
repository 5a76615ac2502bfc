//! Worker processes: spawning and talking to them ([`protocol`]) and keeping
//! them alive ([`supervisor`]).

pub mod protocol;
mod supervisor;

pub use supervisor::{LocalJob, Workers};
