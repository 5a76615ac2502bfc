//! SWIM between peers: the membership state machine of
//! [`crate::mesh::swim`] on a libp2p protocol.
//!
//! Files: [`wire`] (the message codec and the signatures that make a
//! member's "alive" unforgeable), [`vouch`] (the signatures this peer holds
//! and passes on, each checked once), [`driver`] (the task that runs the
//! state machine and its sends; the event loop holds its handle),
//! [`link`] (the long-lived streams messages travel on),
//! [`metrics`] (its figures on `/metrics`).

pub mod driver;
pub mod link;
mod metrics;
pub mod vouch;
pub mod wire;

#[cfg(test)]
mod tests;

pub use driver::{Input, SWIM_PROTOCOL, SwimHandle, SwimView};
pub(crate) use metrics::register as register_metrics;
