//! `secchan server --mqtt URL --metrics ADDR`: the MQTT server instance's counters, beside the
//! intake's (src/cli/metrics.rs). A metric TCP also has keeps its name where it means the same;
//! the rest are named `secchan_mqtt_*`.

use super::metrics::{counter, now};
use crate::transport::mqtt::Counters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

/// What the metrics read of an MQTT server instance on each scrape.
#[derive(Debug)]
pub(super) struct Mqtt(pub(super) Counters);

impl Collector for Mqtt {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        now(&mut e, self.0.now())?;
        let s = self.0.stats();
        for (name, help, v) in [
            (
                "secchan_handshakes_full",
                "DeviceHellos answered with a ServerHello.",
                s.hellos_answered,
            ),
            (
                "secchan_sessions_established",
                "Sessions established.",
                s.sessions_established,
            ),
            (
                "secchan_handshakes_failed",
                "Handshakes that failed: hellos refused with an alert, devices refused.",
                s.handshake_failures,
            ),
            (
                "secchan_handshakes_timed_out",
                "Handshakes not finished within the handshake timeout.",
                s.handshake_timeouts,
            ),
            (
                "secchan_devices_refused",
                "Devices refused by the device list or registry.",
                s.devices_refused,
            ),
            (
                "secchan_handshakes_evicted",
                "Pending handshakes given up for newer hellos (budget full).",
                s.evicted_handshakes,
            ),
            (
                "secchan_mqtt_hellos_refused",
                "Hellos dropped unanswered because the sessions reached --max-sessions.",
                s.refused_hellos,
            ),
            (
                "secchan_mqtt_hellos_shed",
                "Hellos dropped unanswered under a flood: a client's queue full, or older than the handshake timeout.",
                s.shed_hellos,
            ),
            (
                "secchan_mqtt_handshake_messages_rejected",
                "DeviceFinish frames that did not verify and plaintext alerts for a pending handshake (dropped; anyone may publish them).",
                s.rejected_handshake_messages,
            ),
            (
                "secchan_mqtt_messages_received",
                "Device messages received, before duplicates are dropped.",
                s.delivered,
            ),
            (
                "secchan_mqtt_records_duplicate",
                "Repeated MQTT deliveries dropped by the replay window.",
                s.duplicate_records,
            ),
            (
                "secchan_mqtt_records_rejected",
                "Records that failed authentication or were older than the replay window.",
                s.rejected_records,
            ),
            (
                "secchan_mqtt_malformed",
                "Messages on secchan's topics that were not well-formed secchan frames or topics.",
                s.malformed,
            ),
            (
                "secchan_mqtt_unknown_session",
                "Messages for sessions this instance does not hold.",
                s.unknown_session,
            ),
            (
                "secchan_mqtt_publishes_dropped",
                "Publishes dropped because the broker took them more slowly than they came.",
                s.dropped_publishes,
            ),
            (
                "secchan_mqtt_payload_bytes_sent",
                "MQTT payload bytes published.",
                s.bytes.sent,
            ),
            (
                "secchan_mqtt_payload_bytes_received",
                "MQTT payload bytes received.",
                s.bytes.received,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        Ok(())
    }
}
