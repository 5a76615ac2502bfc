//! This peer's worker processes: the long-lived programs that run jobs.
//!
//! Three layers, each in its own module:
//!
//! - [`Workers`] (`supervisor`) is the registry of this peer's apps. The
//!   reconciler brings it in line with what the mesh wants running
//!   ([`Workers::apply`]); jobs come in through [`Workers::run`] (from the
//!   dispatcher for jobs that entered here, from the network for jobs other
//!   peers send); the status pages and announcements read it.
//! - A runner (`runner`) is one app's running workers: a bounded job queue
//!   shared by one task per worker process. Each task starts its process,
//!   feeds it jobs, matches answers to jobs by order, and restarts it when
//!   it exits.
//! - [`protocol`] is one worker process: how it is started and confined,
//!   and the line-delimited JSON spoken with it (native stdin/stdout, or
//!   Node's IPC channel).
//!
//! A job's way: `Workers::run` → `Workers::submit` (a lookup under the
//! apps lock, a push onto the app's queue) → a process's task takes it,
//! writes it, and sends the answer back through the job's oneshot.
//!
//! Jobs in progress are counted with RAII guards (`gauge`), so a replaced
//! version knows when it has finished its jobs and the peer's drain knows
//! when its workers are idle ([`Workers::until_idle`]), both woken by the
//! last job rather than by polling.

mod gauge;
pub mod protocol;
mod runner;
mod supervisor;

pub use runner::{LocalBatch, LocalJob};
pub use supervisor::Workers;
