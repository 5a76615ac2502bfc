//! Observability: Prometheus [`metrics`] and the dashboard's recent
//! [`stats`]. Everything above records here; this imports nothing above it.

pub mod metrics;
pub mod stats;
