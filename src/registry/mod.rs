//! The fleet registry (docs/registry.md): which devices may connect, in which group, as a
//! signed, hash-chained, append-only log that shows any tampering.
//!
//! | module | job |
//! |---|---|
//! | [`entry`] | one entry: its line, canonical encoding, signature |
//! | [`fleet`] | the state the entries build, and the rules each entry obeys |
//! | [`verify`] | verification of a log and its head, naming the first bad entry |
//! | [`file`](mod@file) | the files: locking, durable appends, the head, repair |
//! | [`token`] | enrollment tokens |
//! | [`authorizer`] | the server side: [`authorizer::RegistryAuthorizer`] accepts, enrolls and
//!   watches devices, and closes sessions of revoked ones |

pub mod authorizer;
pub mod entry;
pub mod file;
pub mod fleet;
pub mod token;
pub mod verify;

pub use authorizer::{Received, RegistryAuthorizer};
pub use fleet::Groups;
pub use token::EnrollmentToken;
pub use verify::VerifyError;

use crate::msgs::AlertCode;
use std::path::PathBuf;

/// Registry failures.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// A file operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `init` refused to overwrite.
    #[error("{0} already exists; a registry is never overwritten")]
    Exists(PathBuf),
    /// The log is larger than any registry secchan writes.
    #[error("{0} is too large to be a secchan registry")]
    TooLarge(PathBuf),
    /// The registry failed verification.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A server saw the registry shrink or change history since it last loaded it.
    #[error("the registry was rolled back: it held {had} entries, it now holds {now} or its history changed")]
    RolledBack {
        /// Entries the server had loaded.
        had: usize,
        /// Entries the file holds now.
        now: usize,
    },
    /// No device matches.
    #[error("no device {0} in the registry")]
    NoSuchDevice(String),
    /// A name matches several devices.
    #[error("{0} names several devices; use the fingerprint")]
    Ambiguous(String),
    /// The device is already enrolled.
    #[error("device {0} is already enrolled")]
    AlreadyEnrolled(String),
    /// The device was revoked; revocation is permanent.
    #[error("device {0} is revoked; revocation is permanent, give the device a new key (`secchan keygen`) and enroll that")]
    Revoked(String),
    /// A name or group is not a valid label.
    #[error("invalid {what} {value:?}: use 1 to 64 printable characters without spaces or '='")]
    Label {
        /// Which label.
        what: &'static str,
        /// The value given.
        value: String,
    },
    /// A device's enrollment was refused.
    #[error("enrollment refused: {0}")]
    Refused(AlertCode),
    /// An enrollment token could not be read.
    #[error("invalid enrollment token: {0}")]
    TokenFormat(&'static str),
}

impl RegistryError {
    /// The first bad entry, for a verification failure that names one.
    pub fn entry(&self) -> Option<u64> {
        match self {
            Self::Verify(v) => v.entry(),
            _ => None,
        }
    }
}

/// Checks a name or group before it is written.
pub fn label(what: &'static str, value: &str) -> Result<String, RegistryError> {
    if entry::valid_label(value) {
        Ok(value.to_string())
    } else {
        Err(RegistryError::Label {
            what,
            value: value.to_string(),
        })
    }
}

/// Seconds since the Unix epoch, as entries record time.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
