//! Telemetry options of `secchan device`, the same over TCP and MQTT.

use super::CliError;
use crate::telemetry::{Rate, Source, TelemetrySpec};
use clap::Args;

/// Where the device's messages come from.
#[derive(Debug, Clone, Args)]
pub(super) struct TelemetryArgs {
    /// Message source: `stdin` (each line), `csv:FILE` (each row as a JSON object, e.g.
    /// csv:data/sample.csv) or `sim` (simulated temperature, humidity, heart rate, SpO2).
    #[arg(long, value_name = "SOURCE", default_value = "stdin")]
    telemetry: TelemetrySpec,
    /// Messages per second, e.g. 5/s [default: 1/s for csv and sim; stdin as it comes].
    #[arg(long, value_name = "N/s")]
    rate: Option<Rate>,
    /// Stop after this many messages.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

impl TelemetryArgs {
    /// Opens the source.
    pub(super) fn open(&self) -> Result<Source, CliError> {
        Ok(Source::open(&self.telemetry, self.rate, self.count)?)
    }
}
