//! Observability: Prometheus [`metrics`] and the dashboard's recent
//! [`stats`]. Everything above records here; this imports nothing above it.

pub mod metrics;
pub mod stats;

use std::time::Duration;

/// Job latencies are counted in buckets whose upper bounds double from
/// this one: `LATENCY_FIRST_BOUND * 2^k` for `k < LATENCY_BOUNDS`, then
/// everything above (about 26 s). Prometheus's histogram and the
/// dashboard's series share the layout, so their quantiles agree.
pub const LATENCY_FIRST_BOUND: Duration = Duration::from_micros(100);
/// How many doubling bounds (see [`LATENCY_FIRST_BOUND`]).
pub const LATENCY_BOUNDS: usize = 19;
