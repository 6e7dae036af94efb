//! How a device decides that a peer's key, proven in a device-to-device handshake, belongs to
//! the peer it meant (protocol.md §11.7): a pinned fingerprint, or registry entries signed by
//! a registry authority the device pins, or, only if allowed, the server's word.

use crate::crypto::identity::PublicIdentity;
use crate::crypto::kdf::sha256;
use crate::delivery::PeerInfo;
use crate::registry::entry::{Entry, Op, ENTRY_SIGNATURE_CONTEXT};
use std::collections::HashMap;

/// What vouched for a peer's key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Vouched {
    /// Its fingerprint was pinned for its name on this device.
    Pinned,
    /// Registry entries signed by the pinned authority name it, in this group.
    Registry {
        /// The peer's group.
        group: String,
    },
    /// Only the server said so (a compromised server could substitute the key).
    Server,
}

impl std::fmt::Display for Vouched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Pinned => f.write_str("pinned fingerprint"),
            Self::Registry { group } => write!(f, "registry authority (group {group})"),
            Self::Server => f.write_str("the server's word only"),
        }
    }
}

/// Why a peer's key is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerTrustError {
    /// The key is not the one pinned for the name.
    #[error("peer {peer} presented key {got}, but {expected} is pinned for it: the relay substituted the key, or the pin is stale")]
    Mismatch {
        /// The peer's name.
        peer: String,
        /// The pinned fingerprint.
        expected: String,
        /// What it presented.
        got: String,
    },
    /// The registry entries do not vouch for the key under that name.
    #[error(
        "the registry entries the server gave for peer {peer} do not vouch for key {got}: {why}"
    )]
    Registry {
        /// The peer's name.
        peer: String,
        /// What it presented.
        got: String,
        /// What is wrong.
        why: &'static str,
    },
    /// The server's own description of the peer names another key.
    #[error("peer {peer} presented key {got}, but the server described another key for it")]
    ServerMismatch {
        /// The peer's name.
        peer: String,
        /// What it presented.
        got: String,
    },
    /// Nothing this device trusts vouches for the peer.
    #[error("nothing vouches for peer {peer}'s key {got}: pin it (--peer-key {peer}=FINGERPRINT)")]
    NoAnchor {
        /// The peer's name.
        peer: String,
        /// What it presented.
        got: String,
    },
}

/// What a device trusts for its peers' keys.
#[derive(Debug, Clone, Default)]
pub struct PeerTrust {
    /// Fingerprints pinned by peer name.
    pub pins: HashMap<String, String>,
    /// The registry authority's key, whose signed entries vouch for peers.
    pub authority: Option<PublicIdentity>,
    /// Whether the server's word is enough for a peer that neither a pin nor the authority
    /// covers.
    pub accept_server_word: bool,
}

impl PeerTrust {
    /// Whether `key` is `peer`'s, given what the server said of it (`info`).
    pub fn check(
        &self,
        peer: &str,
        key: &PublicIdentity,
        info: Option<&PeerInfo<'_>>,
    ) -> Result<Vouched, PeerTrustError> {
        let got = key.fingerprint();
        if let Some(expected) = self.pins.get(peer) {
            return if *expected == got {
                Ok(Vouched::Pinned)
            } else {
                Err(PeerTrustError::Mismatch {
                    peer: peer.into(),
                    expected: expected.clone(),
                    got,
                })
            };
        }
        if let Some(authority) = &self.authority {
            let entries = info.map_or(&[][..], |i| i.entries.as_slice());
            return vouch(authority, peer, &got, entries)
                .map(|group| Vouched::Registry { group })
                .map_err(|why| PeerTrustError::Registry {
                    peer: peer.into(),
                    got,
                    why,
                });
        }
        match info {
            Some(info) if self.accept_server_word => {
                if info.fingerprint == sha256(&key.0) {
                    Ok(Vouched::Server)
                } else {
                    Err(PeerTrustError::ServerMismatch {
                        peer: peer.into(),
                        got,
                    })
                }
            }
            _ => Err(PeerTrustError::NoAnchor {
                peer: peer.into(),
                got,
            }),
        }
    }
}

/// The group `fingerprint` is in under the name `peer`, if the entries, each signed by
/// `authority`, enroll it and leave it so named (renames and regroups applied in order, no
/// revocation among them).
fn vouch(
    authority: &PublicIdentity,
    peer: &str,
    fingerprint: &str,
    lines: &[&str],
) -> Result<String, &'static str> {
    let mut entries = Vec::with_capacity(lines.len());
    for line in lines {
        let (entry, sig) = Entry::parse(line).map_err(|_| "an entry is malformed")?;
        authority
            .verify(ENTRY_SIGNATURE_CONTEXT, entry.body().as_bytes(), &sig)
            .map_err(|_| "an entry is not signed by the registry authority")?;
        entries.push(entry);
    }
    entries.sort_by_key(|e| e.seq);
    let mut state: Option<(String, String)> = None;
    for e in &entries {
        match &e.op {
            Op::Enroll {
                device,
                name,
                group,
                ..
            } if device == fingerprint => state = Some((name.clone(), group.clone())),
            Op::Rename { device, name } if device == fingerprint => {
                state.as_mut().ok_or("a rename precedes the enrollment")?.0 = name.clone();
            }
            Op::Regroup { device, group } if device == fingerprint => {
                state.as_mut().ok_or("a regroup precedes the enrollment")?.1 = group.clone();
            }
            Op::Revoke { device } if device == fingerprint => return Err("the key is revoked"),
            _ => return Err("an entry concerns another key"),
        }
    }
    let (name, group) = state.ok_or("no entry enrolls the key")?;
    if name != peer {
        return Err("the entries name the key differently");
    }
    Ok(group)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::IdentityKey;

    fn enroll(seq: u64, key: &IdentityKey, fp: &str, name: &str) -> String {
        let line = Entry {
            seq,
            time: 1,
            prev: [0; 32],
            op: Op::Enroll {
                device: fp.into(),
                name: name.into(),
                group: "g".into(),
                token: None,
            },
        }
        .sign(key);
        line.trim_end().to_string()
    }

    #[test]
    fn registry_entries_vouch_only_when_signed_by_the_authority_for_that_name() {
        let authority = IdentityKey::from_seed(&[1; 32]);
        let server = IdentityKey::from_seed(&[2; 32]);
        let b = IdentityKey::from_seed(&[3; 32]).public();
        let trust = PeerTrust {
            authority: Some(authority.public()),
            ..PeerTrust::default()
        };
        fn info<'a>(b: &PublicIdentity, lines: Vec<&'a str>) -> PeerInfo<'a> {
            PeerInfo {
                peer: "b",
                you: "a",
                fingerprint: sha256(&b.0),
                entries: lines,
            }
        }
        let good = enroll(2, &authority, &b.fingerprint(), "b");
        assert_eq!(
            trust.check("b", &b, Some(&info(&b, vec![&good]))),
            Ok(Vouched::Registry { group: "g".into() })
        );
        let minted = enroll(2, &server, &b.fingerprint(), "b");
        assert!(matches!(
            trust.check("b", &b, Some(&info(&b, vec![&minted]))),
            Err(PeerTrustError::Registry { .. })
        ));
        assert!(trust.check("c", &b, Some(&info(&b, vec![&good]))).is_err());
        let other = IdentityKey::from_seed(&[4; 32]).public();
        assert!(trust
            .check("b", &other, Some(&info(&b, vec![&good])))
            .is_err());
        assert!(trust.check("b", &b, None).is_err());
    }

    #[test]
    fn a_pin_decides_and_the_server_word_needs_consent() {
        let b = IdentityKey::from_seed(&[3; 32]).public();
        let other = IdentityKey::from_seed(&[4; 32]).public();
        let mut trust = PeerTrust::default();
        trust.pins.insert("b".into(), b.fingerprint());
        assert_eq!(trust.check("b", &b, None), Ok(Vouched::Pinned));
        assert!(matches!(
            trust.check("b", &other, None),
            Err(PeerTrustError::Mismatch { .. })
        ));
        let info = PeerInfo {
            peer: "c",
            you: "a",
            fingerprint: sha256(&other.0),
            entries: vec![],
        };
        assert!(matches!(
            trust.check("c", &other, Some(&info)),
            Err(PeerTrustError::NoAnchor { .. })
        ));
        trust.accept_server_word = true;
        assert_eq!(trust.check("c", &other, Some(&info)), Ok(Vouched::Server));
        assert!(trust.check("c", &b, Some(&info)).is_err());
    }
}
