//! Verification of a registry log and its head (docs/registry.md §4), on bytes: no file
//! access here. Each failure names the first bad entry.

use super::entry::{line_hash, Entry, EntryError, Op, ENTRY_SIGNATURE_CONTEXT, MAX_LINE_LEN};
use super::fleet::Fleet;
use crate::crypto::identity::{IdentityKey, PublicIdentity, SIGNATURE_LEN};
use crate::crypto::kdf::HASH_LEN;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// Signature context for the head file.
pub const HEAD_SIGNATURE_CONTEXT: &[u8] = b"secchan v1 registry head\0";
const HEAD_MAGIC: &str = "secchan-registry-head-v1";
/// Longest head file accepted: the magic (24 bytes), a count of up to 20 digits, the hash
/// (64), the signature (86) and the separators come to 201 bytes.
pub const MAX_HEAD_LEN: usize = 256;

/// Why a registry failed verification. Entries are numbered from 1, as lines are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
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
    /// The last line, which the head does not record, is incomplete or unreadable: an
    /// append was interrupted (crash or power loss), or someone cut the log there.
    #[error("entry {entry} is torn: its last {bytes} bytes are not a complete entry, as an interrupted append leaves it")]
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
    /// More than one complete entry follows the last entry the head records. A writer
    /// records every entry in the head before it appends the next, so the head is an older
    /// copy put back, which would hide entries cut off the end.
    #[error("entry {entry} and later ones are not recorded in the head file, which records {recorded} of {present} entries: a writer leaves at most one entry unrecorded, so an older head file was put back (entries may have been cut off the end of the log)")]
    StaleHead {
        /// The first entry the head does not record.
        entry: u64,
        /// Entries the head records.
        recorded: u64,
        /// Complete entries in the log.
        present: u64,
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
            | Self::StaleHead { entry, .. }
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
        if text.len() > MAX_HEAD_LEN {
            return Err(bad);
        }
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
    /// Each entry's signature, in order.
    pub sigs: Vec<[u8; SIGNATURE_LEN]>,
    /// Entries the head file records; the rest (at most one) was appended by a writer that
    /// stopped before updating the head (it is signed, so it is kept).
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

    /// Whether this log extends the state `earlier` describes: it holds `earlier`'s last
    /// entry, unchanged, at the same place. The chain makes every entry before it the same
    /// too.
    pub fn extends(&self, earlier: &Head) -> bool {
        match earlier.count.checked_sub(1) {
            None => true,
            Some(i) => usize::try_from(i)
                .ok()
                .and_then(|i| self.hashes.get(i))
                .is_some_and(|h| *h == earlier.hash),
        }
    }

    /// The signed lines (without their newline) that vouch for the device `fingerprint`
    /// (protocol.md §11.7): entry 1 (`init`, naming the signing key), its enrollment, and its
    /// last rename and last regroup, if any; nothing if it is not enrolled or is revoked.
    /// At most four lines, each shorter than [`MAX_LINE_LEN`].
    pub fn vouching_lines(&self, fingerprint: &str) -> Vec<String> {
        let (mut enrolled, mut renamed, mut regrouped) = (None, None, None);
        for (i, e) in self.entries.iter().enumerate() {
            match &e.op {
                Op::Enroll { device, .. } if device == fingerprint => enrolled = Some(i),
                Op::Rename { device, .. } if device == fingerprint => renamed = Some(i),
                Op::Regroup { device, .. } if device == fingerprint => regrouped = Some(i),
                Op::Revoke { device } if device == fingerprint => return Vec::new(),
                _ => {}
            }
        }
        if enrolled.is_none() {
            return Vec::new();
        }
        [Some(0), enrolled, renamed, regrouped]
            .into_iter()
            .flatten()
            .filter_map(|i| Some(self.entries.get(i)?.line(self.sigs.get(i)?)))
            .collect()
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

/// Decodes one line of the log, without its `\n`.
fn parse_line(line: &[u8]) -> Result<(Entry, [u8; SIGNATURE_LEN]), EntryError> {
    if line.len() >= MAX_LINE_LEN {
        return Err(EntryError::TooLong);
    }
    let text = std::str::from_utf8(line).map_err(|_| EntryError::Field("text"))?;
    Entry::parse(text)
}

/// Classifies a correctly signed line carrying sequence number `found` where `expected`
/// belongs; `later` is the rest of the log.
fn misplaced(expected: u64, found: u64, later: &[u8]) -> VerifyError {
    if found < expected {
        return VerifyError::Injected {
            entry: expected,
            found,
        };
    }
    let appears_later = later
        .split(|&b| b == b'\n')
        .any(|l| parse_line(l).is_ok_and(|(e, _)| e.seq == expected));
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

/// The length of the first `known.hashes.len()` lines of `body` if they are exactly the
/// lines `known` verified (each line's hash matches).
fn known_prefix(known: &Verified, body: &[u8]) -> Option<usize> {
    let mut offset = 0;
    for hash in &known.hashes {
        let rest = body.get(offset..)?;
        let len = rest.iter().position(|&b| b == b'\n')? + 1;
        if line_hash(rest.get(..len)?) != *hash {
            return None;
        }
        offset += len;
    }
    Some(offset)
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
/// each of their lines is compared. Otherwise the whole log is verified. Whether the log
/// extends `known` is for the caller to check ([`Verified::extends`]).
///
/// Lines are verified one at a time as they are found, so memory use grows with the entries
/// that verify, never with what a hostile file claims.
pub fn verify_extending(
    known: Option<&Verified>,
    log: &[u8],
    head: Option<&[u8]>,
    expected: Option<&PublicIdentity>,
) -> Result<Verified, VerifyError> {
    // §4 step 1: complete lines, and the unterminated tail (a torn write, or truncation).
    let (body, tail) = match log.iter().rposition(|&b| b == b'\n') {
        Some(end) => log.split_at(end + 1),
        None => (&[][..], log),
    };
    let mut fleet = Fleet::default();
    let mut entries = Vec::new();
    let mut hashes: Vec<[u8; HASH_LEN]> = Vec::new();
    let mut sigs = Vec::new();
    let mut server = expected.copied();
    let mut offset = 0;
    let unchanged = known
        .filter(|k| expected == Some(&k.server()))
        .and_then(|k| Some((k, known_prefix(k, body)?)));
    if let Some((k, len)) = unchanged {
        fleet = k.fleet.clone();
        entries.clone_from(&k.entries);
        hashes.clone_from(&k.hashes);
        sigs.clone_from(&k.sigs);
        offset = len;
    }
    // A malformed last line that the head may not record: possibly an append whose line
    // reached the disk out of order (its end before its start), decided once the head is read.
    let mut unreadable_last = None;
    let mut rest = body.get(offset..).unwrap_or_default();
    while let Some(len) = rest.iter().position(|&b| b == b'\n') {
        let (line, after) = rest.split_at(len + 1);
        rest = after;
        let seq = entries.len() as u64 + 1;
        let text = line.get(..len).unwrap_or_default();
        // Step 2.1: decode.
        let (entry, sig) = match parse_line(text) {
            Ok(parsed) => parsed,
            Err(reason) if rest.is_empty() && tail.is_empty() => {
                unreadable_last = Some((seq, line.len(), reason));
                break;
            }
            Err(reason) => return Err(VerifyError::Malformed { entry: seq, reason }),
        };
        // Step 2.2: entry 1 names the server key.
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
        let Some(key) = server else {
            // No key to check line 1 with: it is not `init`, and none was expected.
            return Err(match entry.seq {
                1 => VerifyError::Invalid {
                    entry: 1,
                    reason: "is not `init`",
                },
                found => misplaced(seq, found, rest),
            });
        };
        // Step 2.3: the signature first, so that an edited line is reported as edited, not
        // as misplaced.
        key.verify(ENTRY_SIGNATURE_CONTEXT, entry.body().as_bytes(), &sig)
            .map_err(|_| VerifyError::BadSignature { entry: seq })?;
        // Step 2.4: a genuine entry in the wrong place.
        if entry.seq != seq {
            return Err(misplaced(seq, entry.seq, rest));
        }
        // Step 2.5: the chain.
        let prev = hashes.last().copied().unwrap_or([0; HASH_LEN]);
        if entry.prev != prev {
            return Err(VerifyError::ChainBroken { entry: seq });
        }
        // Step 2.6: the rules.
        fleet
            .apply(&entry)
            .map_err(|reason| VerifyError::Invalid { entry: seq, reason })?;
        hashes.push(line_hash(line));
        sigs.push(sig);
        entries.push(entry);
    }
    let present = entries.len() as u64;
    let server = server.ok_or(VerifyError::Empty)?;
    // Step 4: the head.
    let head = Head::parse(head.ok_or(VerifyError::Head("missing"))?, &server)?;
    // Step 5: a malformed last line the head records was edited, not torn.
    let torn = match unreadable_last {
        Some((entry, _, reason)) if entry <= head.count => {
            return Err(VerifyError::Malformed { entry, reason })
        }
        Some((entry, bytes, _)) => Some((entry, bytes)),
        None => (!tail.is_empty()).then_some((present + 1, tail.len())),
    };
    // Step 6: the head is rewritten only after the entry it names is durable: an entry it
    // records that is not complete in the log was cut off after the fact.
    if head.count > present {
        return Err(VerifyError::Truncated {
            entry: present + 1,
            recorded: head.count,
        });
    }
    // Step 7: a writer records every entry in the head before it appends the next one, so
    // at most one complete entry can follow the head's count.
    if present > head.count + 1 {
        return Err(VerifyError::StaleHead {
            entry: head.count + 1,
            recorded: head.count,
            present,
        });
    }
    // Step 8: an interrupted append.
    if let Some((entry, bytes)) = torn {
        return Err(VerifyError::Torn { entry, bytes });
    }
    // Step 9: the entry the head names.
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
        sigs,
        head_count: head.count,
    })
}

/// Largest log accepted, in bytes: the limit keeps a corrupt or hostile file from exhausting
/// memory (80,000 maximum-length entries).
pub const MAX_LOG_LEN: u64 = 80_000 * MAX_LINE_LEN as u64;
