//! One registry entry: its text line, canonical encoding and signature (docs/registry.md §2).
//!
//! A line is `SEQ TIME PREV OP FIELD=VALUE... sig=SIGNATURE\n`. The signature covers
//! `"secchan v1 registry entry\0" || everything before " sig="`, and PREV is the hex SHA-256
//! of the previous line (its newline included), so each entry commits to the whole log
//! before it.

use crate::crypto::identity::{IdentityKey, PublicIdentity, SIGNATURE_LEN};
use crate::crypto::kdf::{sha256, HASH_LEN};
use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine;

/// Signature context for registry entries.
pub const ENTRY_SIGNATURE_CONTEXT: &[u8] = b"secchan v1 registry entry\0";
/// Longest entry line accepted, newline included: the longest legal entry (an enrollment by
/// token with 64-byte name and group) is under 400 bytes.
pub const MAX_LINE_LEN: usize = 1024;
/// Longest device name or group name, in bytes.
pub const MAX_LABEL_LEN: usize = 64;

/// Why one line is not a well-formed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// The line is longer than [`MAX_LINE_LEN`].
    #[error("line longer than {MAX_LINE_LEN} bytes")]
    TooLong,
    /// A field is missing, misnamed, out of order or not in its canonical form.
    #[error("malformed {0}")]
    Field(&'static str),
    /// The operation name is not one this build knows.
    #[error("unknown operation")]
    UnknownOp,
}

/// A device or group name: 1 to 64 printable ASCII characters, no space or `=`.
pub fn valid_label(s: &str) -> bool {
    (1..=MAX_LABEL_LEN).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic() && b != b'=')
}

/// A device fingerprint as entries record it: `SHA256:` and 43 base64 characters.
pub fn valid_fingerprint(s: &str) -> bool {
    s.strip_prefix("SHA256:")
        .and_then(|b| STANDARD_NO_PAD.decode(b).ok())
        .is_some_and(|d| d.len() == HASH_LEN)
}

/// What an entry records.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Op {
    /// First entry only: the server key that signs the log.
    Init {
        /// The server's public key.
        server: PublicIdentity,
    },
    /// A device joins, by key or fingerprint (`token: None`) or by an enrollment token.
    Enroll {
        /// Device fingerprint.
        device: String,
        /// Display name.
        name: String,
        /// Group.
        group: String,
        /// The token it used (its public key), which this entry marks used.
        token: Option<PublicIdentity>,
    },
    /// A device is revoked for good.
    Revoke {
        /// Device fingerprint.
        device: String,
    },
    /// A device gets a new name.
    Rename {
        /// Device fingerprint.
        device: String,
        /// New name.
        name: String,
    },
    /// A device moves to another group.
    Regroup {
        /// Device fingerprint.
        device: String,
        /// New group.
        group: String,
    },
    /// An enrollment token was issued. Only its public key is recorded.
    Token {
        /// The token's public key.
        id: PublicIdentity,
        /// Group the enrolled device joins.
        group: String,
        /// Name the enrolled device gets.
        name: String,
        /// Unix time (seconds) after which the token is refused.
        expires: u64,
    },
}

/// One entry of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Position in the log, from 1 (equal to its line number).
    pub seq: u64,
    /// Unix time (seconds) when it was appended.
    pub time: u64,
    /// SHA-256 of the previous line; zeros for entry 1.
    pub prev: [u8; HASH_LEN],
    /// What it records.
    pub op: Op,
}

fn b64_key(k: &PublicIdentity) -> String {
    STANDARD_NO_PAD.encode(k.0)
}

impl Entry {
    /// The signed part of the line: everything before ` sig=`.
    pub fn body(&self) -> String {
        let fields = match &self.op {
            Op::Init { server } => format!("init server={}", b64_key(server)),
            Op::Enroll {
                device,
                name,
                group,
                token,
            } => {
                let mut s = format!("enroll device={device} name={name} group={group}");
                if let Some(t) = token {
                    s.push_str(&format!(" token={}", b64_key(t)));
                }
                s
            }
            Op::Revoke { device } => format!("revoke device={device}"),
            Op::Rename { device, name } => format!("rename device={device} name={name}"),
            Op::Regroup { device, group } => format!("regroup device={device} group={group}"),
            Op::Token {
                id,
                group,
                name,
                expires,
            } => format!(
                "token id={} group={group} name={name} expires={expires}",
                b64_key(id)
            ),
        };
        format!(
            "{} {} {} {fields}",
            self.seq,
            self.time,
            hex::encode(self.prev)
        )
    }

    /// The full line, newline included, signed by `key`.
    pub fn sign(&self, key: &IdentityKey) -> String {
        let sig = key.sign(ENTRY_SIGNATURE_CONTEXT, self.body().as_bytes());
        format!("{}\n", self.line(&sig))
    }

    /// The line carrying `sig`, without its newline.
    pub fn line(&self, sig: &[u8; SIGNATURE_LEN]) -> String {
        format!("{} sig={}", self.body(), STANDARD_NO_PAD.encode(sig))
    }

    /// Parses one line (without its newline) into the entry and its signature. Only the
    /// canonical encoding is accepted: the line must re-encode to the same bytes.
    pub fn parse(line: &str) -> Result<(Self, [u8; SIGNATURE_LEN]), EntryError> {
        if line.len() >= MAX_LINE_LEN {
            return Err(EntryError::TooLong);
        }
        let (body, sig) = line
            .rsplit_once(" sig=")
            .ok_or(EntryError::Field("signature"))?;
        let sig: [u8; SIGNATURE_LEN] = STANDARD_NO_PAD
            .decode(sig)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(EntryError::Field("signature"))?;
        let mut words = body.split(' ');
        let mut next = |what: &'static str| words.next().ok_or(EntryError::Field(what));
        let seq = next("sequence number")?
            .parse()
            .map_err(|_| EntryError::Field("sequence number"))?;
        let time = next("time")?
            .parse()
            .map_err(|_| EntryError::Field("time"))?;
        let prev = hex::decode(next("previous hash")?)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(EntryError::Field("previous hash"))?;
        let op_name = next("operation")?;
        let fields: Vec<&str> = words.collect();
        let op = parse_op(op_name, &fields)?;
        let entry = Self {
            seq,
            time,
            prev,
            op,
        };
        if entry.body() != body {
            return Err(EntryError::Field("encoding (not canonical)"));
        }
        Ok((entry, sig))
    }
}

/// Entry `seq` (time 1, no chain) recording `op`, signed by `key`, as a line without its
/// newline: what the device-side checks of PeerInfo lines are tested with.
#[cfg(test)]
pub(crate) fn test_line(seq: u64, key: &IdentityKey, op: Op) -> String {
    let entry = Entry {
        seq,
        time: 1,
        prev: [0; HASH_LEN],
        op,
    };
    entry.sign(key).trim_end().to_string()
}

/// SHA-256 of a full line, newline included: the next entry's PREV.
pub fn line_hash(line_with_newline: &[u8]) -> [u8; HASH_LEN] {
    sha256(line_with_newline)
}

/// Reads `key=value` fields in a fixed order.
struct Fields<'a> {
    fields: std::slice::Iter<'a, &'a str>,
}

impl<'a> Fields<'a> {
    fn get(&mut self, key: &'static str) -> Result<&'a str, EntryError> {
        self.fields
            .next()
            .and_then(|f| f.strip_prefix(key))
            .and_then(|f| f.strip_prefix('='))
            .ok_or(EntryError::Field(key))
    }

    fn label(&mut self, key: &'static str) -> Result<String, EntryError> {
        let v = self.get(key)?;
        valid_label(v)
            .then(|| v.to_string())
            .ok_or(EntryError::Field(key))
    }

    fn fingerprint(&mut self, key: &'static str) -> Result<String, EntryError> {
        let v = self.get(key)?;
        valid_fingerprint(v)
            .then(|| v.to_string())
            .ok_or(EntryError::Field(key))
    }

    fn key(&mut self, key: &'static str) -> Result<PublicIdentity, EntryError> {
        STANDARD_NO_PAD
            .decode(self.get(key)?)
            .ok()
            .and_then(|v| v.try_into().ok())
            .map(PublicIdentity)
            .ok_or(EntryError::Field(key))
    }

    fn done(mut self) -> Result<(), EntryError> {
        match self.fields.next() {
            None => Ok(()),
            Some(_) => Err(EntryError::Field("trailing field")),
        }
    }
}

fn parse_op(name: &str, fields: &[&str]) -> Result<Op, EntryError> {
    let mut f = Fields {
        fields: fields.iter(),
    };
    let op = match name {
        "init" => Op::Init {
            server: f.key("server")?,
        },
        "enroll" => Op::Enroll {
            device: f.fingerprint("device")?,
            name: f.label("name")?,
            group: f.label("group")?,
            token: match fields.len() {
                4 => Some(f.key("token")?),
                _ => None,
            },
        },
        "revoke" => Op::Revoke {
            device: f.fingerprint("device")?,
        },
        "rename" => Op::Rename {
            device: f.fingerprint("device")?,
            name: f.label("name")?,
        },
        "regroup" => Op::Regroup {
            device: f.fingerprint("device")?,
            group: f.label("group")?,
        },
        "token" => Op::Token {
            id: f.key("id")?,
            group: f.label("group")?,
            name: f.label("name")?,
            expires: f
                .get("expires")?
                .parse()
                .map_err(|_| EntryError::Field("expires"))?,
        },
        _ => return Err(EntryError::UnknownOp),
    };
    f.done()?;
    Ok(op)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> IdentityKey {
        IdentityKey::from_seed(&[7; 32])
    }

    fn all_ops() -> Vec<Op> {
        let dev = IdentityKey::from_seed(&[8; 32]).public().fingerprint();
        let token = IdentityKey::from_seed(&[9; 32]).public();
        vec![
            Op::Init {
                server: key().public(),
            },
            Op::Enroll {
                device: dev.clone(),
                name: "sensor-1".into(),
                group: "greenhouse".into(),
                token: None,
            },
            Op::Enroll {
                device: dev.clone(),
                name: "sensor-1".into(),
                group: "greenhouse".into(),
                token: Some(token),
            },
            Op::Revoke {
                device: dev.clone(),
            },
            Op::Rename {
                device: dev.clone(),
                name: "n".into(),
            },
            Op::Regroup {
                device: dev,
                group: "g".into(),
            },
            Op::Token {
                id: token,
                group: "g".into(),
                name: "n".into(),
                expires: 1_700_000_000,
            },
        ]
    }

    #[test]
    fn every_op_round_trips_through_its_signed_line() {
        for (i, op) in all_ops().into_iter().enumerate() {
            let entry = Entry {
                seq: i as u64 + 1,
                time: 1_700_000_000,
                prev: [i as u8; 32],
                op,
            };
            let line = entry.sign(&key());
            let (back, sig) = Entry::parse(line.trim_end_matches('\n')).unwrap();
            assert_eq!(back, entry);
            key()
                .public()
                .verify(ENTRY_SIGNATURE_CONTEXT, entry.body().as_bytes(), &sig)
                .unwrap();
        }
    }

    #[test]
    fn non_canonical_and_malformed_lines_are_rejected() {
        let entry = Entry {
            seq: 1,
            time: 5,
            prev: [0; 32],
            op: all_ops().remove(1),
        };
        let line = entry.sign(&key());
        let line = line.trim_end_matches('\n');
        let leading_zero = line.replacen("1 5 ", "01 5 ", 1);
        assert_eq!(
            Entry::parse(&leading_zero),
            Err(EntryError::Field("encoding (not canonical)"))
        );
        let bad_op = line.replacen("enroll", "enrol", 1);
        assert_eq!(Entry::parse(&bad_op), Err(EntryError::UnknownOp));
        let swapped = line.replacen(
            "name=sensor-1 group=greenhouse",
            "group=greenhouse name=sensor-1",
            1,
        );
        assert_eq!(Entry::parse(&swapped), Err(EntryError::Field("name")));
        assert_eq!(
            Entry::parse("1 5 00 init"),
            Err(EntryError::Field("signature"))
        );
        assert_eq!(Entry::parse(&"x".repeat(2000)), Err(EntryError::TooLong));
        assert!(!valid_label("has space") && !valid_label("a=b") && !valid_label(""));
        assert!(!valid_fingerprint("SHA256:short"));
    }
}
