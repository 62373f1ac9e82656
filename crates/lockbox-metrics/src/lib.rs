//! Prometheus metrics for the lockbox daemons.
//!
//! Three pieces, shared so that lockboxd and lockbox-controller expose the same names the same
//! way: the `[metrics]` config section and its check ([`MetricsConfig`]), the `/metrics` HTTP
//! endpoint ([`serve`]), and per-method gRPC request counts and latencies ([`RpcMetrics`]).
//!
//! The endpoint is plain HTTP without authentication: it is meant for loopback (a local
//! Prometheus or node-exporter textfile scraper) and [`MetricsConfig::check`] refuses anything
//! else unless the operator says so. Metrics carry counts and latencies only, never key ids,
//! caller identities or any other request content.

mod config;
mod endpoint;
mod rpc;

pub use prometheus_client;

pub use config::{ConfigError, MetricsConfig};
pub use endpoint::{Endpoint, serve};
pub use rpc::{RpcMetered, RpcMetrics, RpcMetricsLayer, latency_buckets};

/// Registers `process_start_time_seconds` (the standard name) set to now: a daemon that
/// restarts in a loop (e.g. after a store failure, exit 75) stays "up" between scrapes, but
/// its start time keeps changing, which an alert can see.
pub fn register_start_time(registry: &mut prometheus_client::registry::Registry) {
    let gauge = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    gauge.set(i64::try_from(now).unwrap_or(i64::MAX));
    registry.register(
        "process_start_time_seconds",
        "When this process started (unix seconds)",
        gauge,
    );
}

/// Registers `metric` under `name` and hands it back, so a daemon keeps its handle in one
/// statement: `let sealed = add(&mut r, "lockbox_sealed", "…", Gauge::default());`.
pub fn add<M>(
    registry: &mut prometheus_client::registry::Registry,
    name: &str,
    help: &str,
    metric: M,
) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

/// Registers `<name>{version="…"} 1` (a gauge, the classic form, which `promtool check
/// metrics` and every scraper read; OpenMetrics' `info` type is not understood by all).
pub fn register_build_info(
    registry: &mut prometheus_client::registry::Registry,
    name: &str,
    help: &str,
    version: &'static str,
) {
    let family = prometheus_client::metrics::family::Family::<
        [(&'static str, &'static str); 1],
        prometheus_client::metrics::gauge::Gauge,
    >::default();
    family.get_or_create(&[("version", version)]).set(1);
    registry.register(name, help, family);
}
