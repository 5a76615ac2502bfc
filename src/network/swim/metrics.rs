//! SWIM's figures on `/metrics`: what this peer's failure detector holds
//! and how its messages fare. Label values are fixed names from the code,
//! never taken from input.
//!
//! - `disruptor_swim_members{status}`: members held, by status (`alive`,
//!   `suspect`, `dead`, `left`); this peer not counted. In a healthy mesh
//!   `alive` is N-1 on every peer.
//! - `disruptor_swim_health`: Lifeguard's local health score (0 is
//!   healthy; higher means this peer has been slow to answer or to hear
//!   answers, and stretches its own timeouts).
//! - `disruptor_swim_messages_total{outcome}`: `sent`, `send_failed` (the
//!   link could not be opened or written in time), `send_dropped` (its
//!   link's queue full, or too many links), `received`, `over_budget` (a
//!   sender over its rate), `malformed`, `inbox_full`, and `link_refused`
//!   (an inbound link reset unread: too many open, or from its peer).

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::mesh::swim::Status;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StatusLabel {
    pub status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct OutcomeLabel {
    pub outcome: &'static str,
}

pub(crate) static MEMBERS: LazyLock<Family<StatusLabel, Gauge>> = LazyLock::new(Family::default);
pub(crate) static HEALTH: LazyLock<Gauge> = LazyLock::new(Gauge::default);
pub(crate) static MESSAGES: LazyLock<Family<OutcomeLabel, Counter>> =
    LazyLock::new(Family::default);

/// Counts one message by outcome.
pub(crate) fn count(outcome: &'static str) {
    MESSAGES.get_or_create(&OutcomeLabel { outcome }).inc();
}

/// Sets the member gauges from a view of the member table.
pub(crate) fn set_members(statuses: impl Iterator<Item = Status>, health: u32) {
    let mut n = [0i64; 4];
    for s in statuses {
        n[index(s)] += 1;
    }
    for s in [Status::Alive, Status::Suspect, Status::Dead, Status::Left] {
        MEMBERS
            .get_or_create(&StatusLabel { status: name(s) })
            .set(n[index(s)]);
    }
    HEALTH.set(i64::from(health));
}

fn index(s: Status) -> usize {
    match s {
        Status::Alive => 0,
        Status::Suspect => 1,
        Status::Dead => 2,
        Status::Left => 3,
    }
}

fn name(s: Status) -> &'static str {
    match s {
        Status::Alive => "alive",
        Status::Suspect => "suspect",
        Status::Dead => "dead",
        Status::Left => "left",
    }
}

/// Adds SWIM's metrics to the `/metrics` registry.
pub(crate) fn register(r: &mut Registry) {
    r.register(
        "disruptor_swim_members",
        "Members this peer's failure detector (SWIM) holds, by status: alive, suspect, dead, left (this peer not counted)",
        MEMBERS.clone(),
    );
    r.register(
        "disruptor_swim_health",
        "Lifeguard's local health score of this peer's failure detector: 0 is healthy; higher stretches its timeouts (it has been slow)",
        HEALTH.clone(),
    );
    r.register(
        "disruptor_swim_messages",
        "SWIM messages by outcome: sent, send_failed, send_dropped (too many in flight), received, over_budget (sender over its rate), malformed, inbox_full",
        MESSAGES.clone(),
    );
}
