//! The server's latency histograms: how long handshakes take, and how long a message waits
//! from its arrival at the intake to its being written and acknowledged.

use crate::service::latency::Latency;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::time::Duration;

/// A histogram's label set: one label.
type Label = [(&'static str, &'static str); 1];

/// Handshakes, in seconds: 0.2 ms (a resumption on loopback) to 1 s (a full one over a slow
/// link, or on a small board), in steps of 1, 2, 5.
const HANDSHAKE_BUCKETS: [f64; 12] = [
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
];

/// Writes, in seconds: 10 µs (a batch on stdout) to 1 s (a database under load, an fsync on a
/// slow disk), in steps of 1, 2, 5.
const WRITE_BUCKETS: [f64; 16] = [
    0.00001, 0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1,
    0.2, 0.5, 1.0,
];

fn handshake_buckets() -> Histogram {
    Histogram::new(HANDSHAKE_BUCKETS)
}

/// Handshake and write histograms, fed by the server (it holds them as its [`Latency`]) and
/// registered for every scrape.
#[derive(Debug)]
pub struct Timings {
    handshake: Family<Label, Histogram, fn() -> Histogram>,
    written: Histogram,
}

impl Timings {
    /// Empty histograms; both handshake kinds are shown from the start.
    pub fn new() -> Self {
        let handshake = Family::new_with_constructor(handshake_buckets as fn() -> Histogram);
        for kind in ["full", "resumed"] {
            let _ = handshake.get_or_create(&[("kind", kind)]);
        }
        Self {
            handshake,
            written: Histogram::new(WRITE_BUCKETS),
        }
    }

    /// Adds both histograms to `registry` (they stay shared with `self`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "secchan_handshake_duration_seconds",
            "Time from a connection's first frame to its session being established, by kind (full or resumed)",
            self.handshake.clone(),
        );
        registry.register(
            "secchan_delivery_write_seconds",
            "Time from a message's arrival at the intake to its being written to the sink and acknowledged",
            self.written.clone(),
        );
    }
}

impl Default for Timings {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency for Timings {
    fn handshake(&self, resumed: bool, took: Duration) {
        let kind = if resumed { "resumed" } else { "full" };
        self.handshake
            .get_or_create(&[("kind", kind)])
            .observe(took.as_secs_f64());
    }

    fn written(&self, took: Duration) {
        self.written.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_show_as_buckets_counts_and_sums_by_kind() {
        let t = Timings::new();
        let mut registry = Registry::default();
        t.register(&mut registry);
        t.handshake(false, Duration::from_millis(3));
        t.handshake(true, Duration::from_micros(300));
        t.handshake(true, Duration::from_micros(400));
        t.written(Duration::from_micros(50));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "secchan_handshake_duration_seconds_count{kind=\"full\"} 1",
            "secchan_handshake_duration_seconds_count{kind=\"resumed\"} 2",
            "secchan_delivery_write_seconds_count 1",
            "secchan_delivery_write_seconds_bucket{le=\"0.00005\"} 1",
            "secchan_delivery_write_seconds_bucket{le=\"0.00002\"} 0",
            "secchan_handshake_duration_seconds_bucket{le=\"0.0005\",kind=\"resumed\"} 2",
            "# HELP secchan_delivery_write_seconds Time from a message's arrival at the intake to its being written to the sink and acknowledged.",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line} in {text}");
        }
    }
}
