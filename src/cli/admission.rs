//! `secchan server`'s admission options over TCP (protocol.md §2.3): the pending-handshake
//! budget beside `--max-sessions`, per-source and per-device limits, and when cookies are
//! asked for.

use crate::service::admission::Limits;
use crate::service::source::Prefix;
use crate::service::tcp_server::DEFAULT_HELLO_TIMEOUT;
use clap::builder::RangedU64ValueParser;
use clap::Args;
use std::time::Duration;

/// Options of `secchan server` that bound what strangers can hold (TCP).
#[derive(Debug, Args)]
#[command(next_help_heading = "Admission over TCP (protocol.md §2.3)")]
pub struct AdmissionArgs {
    /// Most handshakes in progress at once (connections whose device is not yet
    /// authenticated), apart from --max-sessions. When full, the one that has waited longest
    /// of the source holding the most is given up for the newcomer. Each takes a file
    /// descriptor, as a session does.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_pending, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_pending: usize,
    /// Seconds a connection has to deliver its whole first frame (the hello).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_HELLO_TIMEOUT.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    hello_timeout: u64,
    /// Most handshakes in progress per source address (see --source-prefix-v4/-v6); a
    /// further one gives up that source's longest waiting.
    #[arg(long, value_name = "N", default_value_t = Limits::default().pending_per_source, value_parser = RangedU64ValueParser::<usize>::new().range(1..=65_536))]
    max_pending_per_source: usize,
    /// Most sessions per source address; a further device from it is refused with busy.
    #[arg(long, value_name = "N", default_value_t = Limits::default().sessions_per_source, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_sessions_per_source: usize,
    /// Most sessions per device identity: a newer session replaces that identity's oldest
    /// (a device that reconnected before the server noticed its old session was gone).
    #[arg(long, value_name = "N", default_value_t = Limits::default().sessions_per_device, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    max_sessions_per_device: usize,
    /// Prefix length of an IPv4 source for the per-source limits.
    #[arg(long, value_name = "BITS", default_value_t = Limits::default().source_bits_v4, value_parser = clap::value_parser!(u8).range(1..=32))]
    source_prefix_v4: u8,
    /// Prefix length of an IPv6 source for the per-source limits.
    #[arg(long, value_name = "BITS", default_value_t = Limits::default().source_bits_v6, value_parser = clap::value_parser!(u8).range(1..=128))]
    source_prefix_v6: u8,
    /// Addresses exempt from the per-source limits, e.g. a fleet behind one NAT: an address
    /// or a range (192.0.2.0/24, 2001:db8::/48); repeatable.
    #[arg(long = "source-allow", value_name = "CIDR")]
    source_allow: Vec<Prefix>,
    /// Under load from this many answered handshakes on (a ServerHello sent, the DeviceFinish
    /// awaited): hellos are answered with a cookie (one HMAC) and only hellos that come back
    /// with it get a full handshake. 0: always.
    #[arg(long, value_name = "N", default_value_t = Limits::default().cookie_pending, value_parser = RangedU64ValueParser::<usize>::new().range(0..=65_536))]
    cookie_pending: usize,
    /// Under load, too, while full handshakes come faster than this many a second (the CPU
    /// budget for unauthenticated work).
    #[arg(long, value_name = "N", default_value_t = Limits::default().cookie_rate, value_parser = clap::value_parser!(u32).range(1..))]
    cookie_rate: u32,
    /// Under load: full handshakes a second per source address; more are refused with busy.
    #[arg(long, value_name = "N", default_value_t = Limits::default().source_rate, value_parser = clap::value_parser!(u32).range(1..))]
    source_handshake_rate: u32,
}

impl AdmissionArgs {
    /// The limits, with `max_sessions` from `--max-sessions`.
    pub fn limits(&self, max_sessions: usize) -> Limits {
        Limits {
            max_sessions,
            max_pending: self.max_pending,
            pending_per_source: self.max_pending_per_source,
            sessions_per_source: self.max_sessions_per_source,
            sessions_per_device: self.max_sessions_per_device,
            cookie_pending: self.cookie_pending,
            cookie_rate: self.cookie_rate,
            source_rate: self.source_handshake_rate,
            source_bits_v4: self.source_prefix_v4,
            source_bits_v6: self.source_prefix_v6,
            exempt: self.source_allow.clone(),
        }
    }

    /// `--hello-timeout`.
    pub fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.hello_timeout)
    }
}
