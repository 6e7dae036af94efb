//! The report of `secchan bench --mqtt`: each transport's figures per payload size, their
//! ratios, and the table docs/mqtt.md shows.

use super::NAGLE_HINT_US;
use crate::bench::system::Percentiles;
use serde::Serialize;
use std::fmt::Write as _;

/// One transport's figures for one payload size.
#[derive(Debug, Clone, Serialize)]
pub struct MqttFigures {
    /// Messages the receiver handed out: warm-up, latency and rate phases.
    pub delivered: u64,
    /// One message in flight: from the sender's call until the receiver hands it out, in µs.
    pub latency_us: Percentiles,
    /// Back to back: messages divided by the time from the first send until the receiver
    /// has the last.
    pub messages_per_s: f64,
    /// MQTT payload bytes per message, sender to receiver.
    pub up_bytes: f64,
    /// MQTT payload bytes per message, receiver to sender, messages sent alone (secchan:
    /// one Ack record each; plaintext: none, its PUBACKs are MQTT headers).
    pub down_bytes: f64,
    /// The same for messages sent back to back (one Ack covers a burst).
    pub down_bytes_burst: f64,
}

/// secchan divided by plaintext.
#[derive(Debug, Clone, Serialize)]
pub struct MqttRatios {
    /// Median latency.
    pub latency: f64,
    /// Messages per second.
    pub messages_per_s: f64,
    /// Payload bytes per message, sender to receiver.
    pub up_bytes: f64,
}

/// Both transports for one payload size.
#[derive(Debug, Clone, Serialize)]
pub struct MqttResult {
    /// Application bytes per message.
    pub payload: usize,
    /// A secchan device and server.
    pub secchan: MqttFigures,
    /// A bare MQTT 5 publisher and subscriber.
    pub plaintext: MqttFigures,
    /// secchan / plaintext.
    pub ratios: MqttRatios,
}

/// The MQTT section of the report.
#[derive(Debug, Clone, Serialize)]
pub struct MqttReport {
    /// Broker and the benchmark's topic prefix (no credentials).
    pub broker: String,
    /// secchan suite.
    pub suite: &'static str,
    /// secchan AEAD.
    pub aead: &'static str,
    /// Untimed messages per transport and payload size.
    pub warmup: u64,
    /// Messages timed one by one per transport and payload size.
    pub latency_messages: u64,
    /// Messages sent back to back per transport and payload size.
    pub rate_messages: u64,
    /// Length of the topic every measured message is published on (both transports).
    pub topic_len: usize,
    /// Messages the secchan server output in all, by its own count.
    pub server_delivered: u64,
    /// Redelivered records and messages the secchan server dropped.
    pub server_duplicates: u64,
    /// Per payload size.
    pub results: Vec<MqttResult>,
}

impl MqttReport {
    /// The section as the terminal shows it.
    pub(in crate::bench) fn write_table(&self, s: &mut String) -> std::fmt::Result {
        writeln!(
            s,
            "MQTT through {} (QoS 1; secchan {} {}; plaintext: bare MQTT 5 client)",
            self.broker, self.suite, self.aead
        )?;
        writeln!(
            s,
            "  latency: send until the receiver outputs it, one in flight ({} timed); rate: {} back to back",
            self.latency_messages, self.rate_messages
        )?;
        writeln!(
            s,
            "  bytes: MQTT payload per message, not on the wire ({}-byte topics, MQTT headers and PUBACKs, the same for both, not counted); down = acks, alone / in bursts",
            self.topic_len
        )?;
        writeln!(
            s,
            "  {:>7}  {:<18} {:>8} {:>8} {:>11} {:>8} {:>12}",
            "payload", "transport", "med µs", "p99 µs", "messages/s", "up B", "down B"
        )?;
        for r in &self.results {
            for (name, f) in [("secchan", &r.secchan), ("plaintext MQTT", &r.plaintext)] {
                writeln!(
                    s,
                    "  {:>7}  {:<18} {:>8.0} {:>8.0} {:>11.0} {:>8.1} {:>5.1} / {:>4.1}",
                    r.payload,
                    name,
                    f.latency_us.median,
                    f.latency_us.p99,
                    f.messages_per_s,
                    f.up_bytes,
                    f.down_bytes,
                    f.down_bytes_burst
                )?;
            }
            writeln!(
                s,
                "  {:>7}  {:<18} {:>7.2}x {:>8} {:>10.2}x {:>7.2}x",
                r.payload,
                "secchan/plaintext",
                r.ratios.latency,
                "",
                r.ratios.messages_per_s,
                r.ratios.up_bytes
            )?;
        }
        writeln!(
            s,
            "  secchan server output {} messages, dropped {} duplicates",
            self.server_delivered, self.server_duplicates
        )?;
        if self
            .results
            .iter()
            .any(|r| r.secchan.latency_us.median >= NAGLE_HINT_US && r.ratios.latency >= 10.0)
        {
            writeln!(
                s,
                "  note: about 40 ms per message is the broker holding writes for delayed TCP ACKs (Nagle);\n        \
                 with Mosquitto set `set_tcp_nodelay true` (docs/mqtt.md, Measuring)"
            )?;
        }
        Ok(())
    }
}
