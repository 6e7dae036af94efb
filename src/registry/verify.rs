//! Verification of a registry log and its head (docs/registry.md §4), on bytes: no file
//! access here. Each failure names the first bad entry.

use super::entry::{
    terminated_line_hash, Entry, EntryError, Op, ENTRY_SIGNATURE_CONTEXT, MAX_LINE_LEN,
};
use super::fleet::Fleet;
use crate::crypto::identity::{IdentityKey, PublicIdentity, SIGNATURE_LEN};
use crate::crypto::kdf::HASH_LEN;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// Signature context for the head file.
pub const HEAD_SIGNATURE_CONTEXT: &[u8] = b"secchan v1 registry head\0";
const HEAD_MAGIC: &str = "secchan-registry-head-v1";

/// Why a registry failed verification. Entries are numbered from 1, as lines are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The log has no entry at all.
    #[error("the log is empty")]
    Empty,
    /// A complete line is not a well-formed entry.
    #[error("entry {entry} is malformed ({reason}): it was edited")]
    Malformed {
        /// Line number.
        entry: u64,
        /// What is wrong.
        reason: EntryError,
    },
    /// An entry's signature does not verify with the server key.
    #[error(
        "entry {entry} does not carry a valid signature by the server key: it was edited or forged"
    )]
    BadSignature {
        /// Line number.
        entry: u64,
    },
    /// An entry is missing from its place and appears nowhere later.
    #[error("entry {entry} is missing: it was deleted (line {entry} holds entry {found})")]
    Deleted {
        /// The missing entry.
        entry: u64,
        /// What its line holds instead.
        found: u64,
    },
    /// An entry appears after a later one.
    #[error("entry {entry} is out of order: line {entry} holds entry {found}, entry {entry} is further down (entries were reordered)")]
    Reordered {
        /// The displaced entry.
        entry: u64,
        /// What its line holds instead.
        found: u64,
    },
    /// A line holds a copy of an earlier entry, or an entry from another log.
    #[error("line {entry} does not belong here: it holds entry {found} (an entry was injected)")]
    Injected {
        /// Line number.
        entry: u64,
        /// The sequence number it carries.
        found: u64,
    },
    /// An entry's PREV is not the hash of the line before it.
    #[error("entry {entry} does not chain to entry {prev}: an entry was replaced or injected", prev = entry - 1)]
    ChainBroken {
        /// Line number.
        entry: u64,
    },
    /// A correctly signed entry breaks a registry rule.
    #[error("entry {entry} is invalid: it {reason}")]
    Invalid {
        /// Line number.
        entry: u64,
        /// The rule.
        reason: &'static str,
    },
    /// The last line is incomplete: an append was interrupted (crash or power loss).
    #[error("entry {entry} is torn: its line is incomplete ({bytes} bytes, no end of line) because an append was interrupted; `secchan registry repair` removes it")]
    Torn {
        /// Line number.
        entry: u64,
        /// Bytes of the incomplete line.
        bytes: usize,
    },
    /// The log ends before the entry the head records.
    #[error("entry {entry} is missing: the log was truncated (the head file records {recorded} entries, the log holds {present})", present = entry - 1)]
    Truncated {
        /// First missing entry.
        entry: u64,
        /// Entries the head records.
        recorded: u64,
    },
    /// The head file is missing or unreadable.
    #[error("the head file is {0}: truncation of the log cannot be ruled out")]
    Head(&'static str),
    /// The entry the head names is not the one in the log.
    #[error("entry {entry} is not the entry the head file records: the log was rewritten or rolled back")]
    HeadMismatch {
        /// Line number.
        entry: u64,
    },
    /// The log is signed by another key than the expected server key.
    #[error("the log belongs to server {found}, not to {expected}")]
    WrongServer {
        /// The expected fingerprint.
        expected: String,
        /// The fingerprint in entry 1.
        found: String,
    },
}

impl VerifyError {
    /// The first bad entry this error names, if it names one.
    pub fn entry(&self) -> Option<u64> {
        match self {
            Self::Malformed { entry, .. }
            | Self::BadSignature { entry }
            | Self::Deleted { entry, .. }
            | Self::Reordered { entry, .. }
            | Self::Injected { entry, .. }
            | Self::ChainBroken { entry }
            | Self::Invalid { entry, .. }
            | Self::Torn { entry, .. }
            | Self::Truncated { entry, .. }
            | Self::HeadMismatch { entry } => Some(*entry),
            Self::Empty | Self::Head(_) | Self::WrongServer { .. } => None,
        }
    }
}

/// The head file: how many entries the log holds and the hash of the last one, signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Number of entries.
    pub count: u64,
    /// Hash of the last entry's line.
    pub hash: [u8; HASH_LEN],
}

impl Head {
    fn body(&self) -> String {
        format!("{HEAD_MAGIC} {} {}", self.count, hex::encode(self.hash))
    }

    /// The head file's text, signed by `key`.
    pub fn sign(&self, key: &IdentityKey) -> String {
        let body = self.body();
        let sig = key.sign(HEAD_SIGNATURE_CONTEXT, body.as_bytes());
        format!("{body} sig={}\n", STANDARD_NO_PAD.encode(sig))
    }

    /// Parses and verifies a head file against the server key.
    pub fn parse(text: &[u8], server: &PublicIdentity) -> Result<Self, VerifyError> {
        let bad = VerifyError::Head("malformed");
        let text = std::str::from_utf8(text).map_err(|_| bad.clone())?;
        let (body, sig) = text
            .strip_suffix('\n')
            .and_then(|t| t.rsplit_once(" sig="))
            .ok_or(bad.clone())?;
        let sig: [u8; SIGNATURE_LEN] = STANDARD_NO_PAD
            .decode(sig)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(bad.clone())?;
        server
            .verify(HEAD_SIGNATURE_CONTEXT, body.as_bytes(), &sig)
            .map_err(|_| VerifyError::Head("not signed by the server key"))?;
        let mut w = body.split(' ');
        let head = (|| {
            (w.next()? == HEAD_MAGIC).then_some(())?;
            let count = w.next()?.parse().ok()?;
            let hash = hex::decode(w.next()?).ok()?.try_into().ok()?;
            w.next().is_none().then_some(Self { count, hash })
        })()
        .ok_or(bad)?;
        Ok(head)
    }
}

/// A registry that passed verification.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The fleet it describes.
    pub fleet: Fleet,
    /// Every entry, in order.
    pub entries: Vec<Entry>,
    /// The hash of each entry's line, in order.
    pub hashes: Vec<[u8; HASH_LEN]>,
    /// Entries the head file records; the rest were appended by a writer that stopped
    /// before updating the head (they are signed, so they are kept).
    pub head_count: u64,
}

impl Verified {
    /// Hash of the last entry.
    pub fn last_hash(&self) -> [u8; HASH_LEN] {
        self.hashes.last().copied().unwrap_or_default()
    }

    /// The head describing this log.
    pub fn head(&self) -> Head {
        Head {
            count: self.entries.len() as u64,
            hash: self.last_hash(),
        }
    }

    /// The server key that signs it.
    pub fn server(&self) -> PublicIdentity {
        // Entry 1 is `init` in every verified log.
        self.fleet
            .server()
            .copied()
            .unwrap_or(PublicIdentity([0; 32]))
    }
}

/// Classifies a line carrying sequence number `found` where `expected` belongs.
fn misplaced(expected: u64, found: u64, later: &[&[u8]]) -> VerifyError {
    if found < expected {
        return VerifyError::Injected {
            entry: expected,
            found,
        };
    }
    let appears_later = later.iter().any(|l| {
        std::str::from_utf8(l)
            .ok()
            .and_then(|l| Entry::parse(l).ok())
            .is_some_and(|(e, _)| e.seq == expected)
    });
    if appears_later {
        VerifyError::Reordered {
            entry: expected,
            found,
        }
    } else {
        VerifyError::Deleted {
            entry: expected,
            found,
        }
    }
}

/// Verifies a log and its head. `expected` is the server key the log must belong to (a
/// server checks its own key); without it the key in entry 1 is used and reported.
pub fn verify(
    log: &[u8],
    head: Option<&[u8]>,
    expected: Option<&PublicIdentity>,
) -> Result<Verified, VerifyError> {
    verify_extending(None, log, head, expected)
}

/// Like [`verify`], but if the log starts with exactly the lines of `known` (a log verified
/// earlier against the same key), those entries are not verified again: only the hash of
/// each of their lines is compared. Otherwise the whole log is verified.
pub fn verify_extending(
    known: Option<&Verified>,
    log: &[u8],
    head: Option<&[u8]>,
    expected: Option<&PublicIdentity>,
) -> Result<Verified, VerifyError> {
    // Split into complete lines and an unterminated tail (a torn write, or truncation).
    let mut lines: Vec<&[u8]> = log.split(|&b| b == b'\n').collect();
    let tail = lines.pop().unwrap_or_default();
    let mut fleet = Fleet::default();
    let mut entries = Vec::with_capacity(lines.len());
    let mut hashes: Vec<[u8; HASH_LEN]> = Vec::with_capacity(lines.len());
    let mut server = expected.copied();
    let unchanged = known.filter(|k| {
        expected == Some(&k.server())
            && lines.len() >= k.hashes.len()
            && lines
                .iter()
                .zip(&k.hashes)
                .all(|(line, hash)| terminated_line_hash(line) == *hash)
    });
    if let Some(k) = unchanged {
        fleet = k.fleet.clone();
        entries.clone_from(&k.entries);
        hashes.clone_from(&k.hashes);
    }
    for (i, line) in lines.iter().enumerate().skip(entries.len()) {
        let seq = i as u64 + 1;
        let malformed = |reason| VerifyError::Malformed { entry: seq, reason };
        let text = std::str::from_utf8(line).map_err(|_| malformed(EntryError::Field("text")))?;
        let (entry, sig) = Entry::parse(text).map_err(malformed)?;
        if entry.seq != seq {
            return Err(misplaced(
                seq,
                entry.seq,
                lines.get(i + 1..).unwrap_or_default(),
            ));
        }
        if let (1, Op::Init { server: s }) = (seq, &entry.op) {
            match server {
                Some(expected) if expected != *s => {
                    return Err(VerifyError::WrongServer {
                        expected: expected.fingerprint(),
                        found: s.fingerprint(),
                    })
                }
                _ => server = Some(*s),
            }
        }
        let key = server.ok_or(VerifyError::Invalid {
            entry: 1,
            reason: "is not `init`",
        })?;
        key.verify(ENTRY_SIGNATURE_CONTEXT, entry.body().as_bytes(), &sig)
            .map_err(|_| VerifyError::BadSignature { entry: seq })?;
        let prev = hashes.last().copied().unwrap_or([0; HASH_LEN]);
        if entry.prev != prev {
            return Err(VerifyError::ChainBroken { entry: seq });
        }
        fleet
            .apply(&entry)
            .map_err(|reason| VerifyError::Invalid { entry: seq, reason })?;
        hashes.push(terminated_line_hash(line));
        entries.push(entry);
    }
    let present = entries.len() as u64;
    let server = server.ok_or(VerifyError::Empty)?;
    let head = Head::parse(head.ok_or(VerifyError::Head("missing"))?, &server)?;
    // The head is rewritten only after the entry it names is durable: an entry it records
    // that is not complete in the log was cut off after the fact.
    if head.count > present {
        return Err(VerifyError::Truncated {
            entry: present + 1,
            recorded: head.count,
        });
    }
    if !tail.is_empty() {
        return Err(VerifyError::Torn {
            entry: present + 1,
            bytes: tail.len(),
        });
    }
    let recorded = usize::try_from(head.count)
        .ok()
        .and_then(|n| n.checked_sub(1))
        .and_then(|i| hashes.get(i));
    if recorded != Some(&head.hash) {
        return Err(VerifyError::HeadMismatch {
            entry: head.count.max(1),
        });
    }
    Ok(Verified {
        fleet,
        entries,
        hashes,
        head_count: head.count,
    })
}

/// Whether a registry file of `len` bytes is too large to load: the limit keeps a corrupt
/// or hostile file from exhausting memory (about 80,000 entries).
pub fn too_large(len: u64) -> bool {
    len > 80_000 * MAX_LINE_LEN as u64
}
