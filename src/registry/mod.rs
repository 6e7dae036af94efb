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
#[non_exhaustive]
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
    /// A registry file is a directory, a FIFO, a device or another special file.
    #[error("{0} is not a regular file")]
    NotRegular(PathBuf),
    /// The registry failed verification.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A head file (`FILE.head`, or a server's anchor file) is missing, malformed or not
    /// signed by the server key.
    #[error("the head file {path} is {reason}: truncation of the log cannot be ruled out", path = path.display())]
    Head {
        /// The head file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The registry does not extend a state seen earlier: a running server's, or one an
    /// operator kept (`registry verify --expect`).
    #[error("the registry was rolled back or rewritten: entry {had}, as seen before, is not in it (it holds {now} entries)")]
    RolledBack {
        /// Entries of the state seen before.
        had: u64,
        /// Entries the file holds now.
        now: usize,
    },
    /// The registry does not extend the state a server recorded in its anchor file.
    #[error("the registry was rolled back or rewritten: it does not extend the {had} entries the server accepted before, as recorded in {anchor} (it holds {now} entries)", anchor = anchor.display())]
    BehindAnchor {
        /// The anchor file.
        anchor: PathBuf,
        /// Entries the anchor records.
        had: u64,
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
