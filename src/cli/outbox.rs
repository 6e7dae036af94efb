//! The device's outbox options, for every transport: how much it holds, what a full one
//! does, and whether it is spooled to disk (docs/delivery.md §3).

use super::CliError;
use crate::delivery::{Limits, Outbox, StreamId, WhenFull, DEFAULT_BUFFER, DEFAULT_BUFFER_BYTES};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Largest `--buffer`.
const MAX_BUFFER_MESSAGES: u64 = 10_000_000;

/// What a full outbox does, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(super) enum WhenFullArg {
    /// Stop reading the input until acknowledgements make room (nothing is lost).
    Block,
    /// Drop the oldest unacknowledged message, and count it.
    DropOldest,
}

/// Outbox options of `secchan device`.
#[derive(Debug, Clone, Args)]
pub(super) struct OutboxArgs {
    /// Keep every unacknowledged message in DIR (created 0700) as well as in memory: it
    /// survives kill -9 and power loss (fsync before a message is first sent), and the next
    /// run with the same DIR sends it again and continues its stream. One DIR per device
    /// process; DIR also keeps the newest resumption ticket.
    #[arg(long, value_name = "DIR")]
    pub(super) spool: Option<PathBuf>,
    /// Messages kept until the server acknowledges them.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_BUFFER as u64,
          value_parser = clap::value_parser!(u64).range(1..=MAX_BUFFER_MESSAGES))]
    pub(super) buffer: u64,
    /// Bytes of messages kept until the server acknowledges them.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_BUFFER_BYTES as u64,
          value_parser = clap::value_parser!(u64).range(1024..=1 << 40))]
    buffer_bytes: u64,
    /// What a full buffer does with the next message.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = WhenFullArg::Block)]
    when_full: WhenFullArg,
}

impl OutboxArgs {
    /// The outbox: in memory with a new random stream, or the spool's.
    pub(super) fn open(&self) -> Result<Outbox, CliError> {
        let limits = Limits {
            messages: usize::try_from(self.buffer).unwrap_or(usize::MAX),
            bytes: usize::try_from(self.buffer_bytes).unwrap_or(usize::MAX),
            when_full: match self.when_full {
                WhenFullArg::Block => WhenFull::Block,
                WhenFullArg::DropOldest => WhenFull::DropOldest,
            },
        };
        let stream = new_stream()?;
        let Some(dir) = &self.spool else {
            return Ok(Outbox::with_limits(stream, limits));
        };
        let (outbox, discarded) =
            Outbox::open_spool(dir, limits, || stream).map_err(CliError::StateDir)?;
        if discarded > 0 {
            tracing::warn!(spool = %dir.display(), discarded_bytes = discarded, "spool: a torn or damaged tail was discarded (a crash during a write)");
        }
        if !outbox.is_empty() {
            tracing::info!(spool = %dir.display(), unacknowledged = outbox.len(), "spool: sending again what the last run left unacknowledged");
        }
        Ok(outbox)
    }

    /// Where the device keeps its newest resumption ticket: in the spool, if there is one.
    pub(super) fn ticket_file(&self) -> Option<PathBuf> {
        self.spool.as_ref().map(|d| d.join("ticket"))
    }
}

/// A random stream id (protocol.md §11.1).
fn new_stream() -> Result<StreamId, CliError> {
    use crate::crypto::random::{OsRandom, Random};
    let mut id = [0u8; 8];
    OsRandom
        .fill(&mut id)
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e)))?;
    Ok(id)
}
