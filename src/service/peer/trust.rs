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
    #[error("nothing vouches for peer {peer}'s key {got}: pin it (--peer-key {peer}=FINGERPRINT), or pin the registry authority that enrolled it (--peer-authority)")]
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
    /// The fingerprint of the registry authority's key, whose signed entries vouch for
    /// peers (the key itself comes in entry 1, which the server sends with them).
    pub authority: Option<String>,
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

/// The group `fingerprint` is in under the name `peer`, if the entries, each signed by the
/// registry authority whose key has the fingerprint `authority` (entry 1, `init`, among them
/// names that key), enroll it and leave it so named (renames and regroups applied in order,
/// no revocation among them).
fn vouch(
    authority: &str,
    peer: &str,
    fingerprint: &str,
    lines: &[&str],
) -> Result<String, &'static str> {
    let mut parsed = Vec::with_capacity(lines.len());
    for line in lines {
        parsed.push(Entry::parse(line).map_err(|_| "an entry is malformed")?);
    }
    let key = parsed
        .iter()
        .find_map(|(e, _)| match &e.op {
            Op::Init { server } if e.seq == 1 => Some(*server),
            _ => None,
        })
        .ok_or("entry 1 of the registry, naming its signing key, is missing")?;
    if key.fingerprint() != authority {
        return Err(
            "they come from a registry signed by another key than the pinned registry authority",
        );
    }
    let mut entries = Vec::with_capacity(parsed.len());
    for (entry, sig) in parsed {
        key.verify(ENTRY_SIGNATURE_CONTEXT, entry.body().as_bytes(), &sig)
            .map_err(|_| "an entry is not signed by the registry authority")?;
        entries.push(entry);
    }
    entries.sort_by_key(|e| e.seq);
    let mut state: Option<(String, String)> = None;
    for e in &entries {
        match &e.op {
            Op::Init { .. } if e.seq == 1 => {}
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

    use crate::registry::entry::test_line as line;

    fn init(key: &IdentityKey) -> String {
        line(
            1,
            key,
            Op::Init {
                server: key.public(),
            },
        )
    }

    fn enroll(seq: u64, key: &IdentityKey, fp: &str, name: &str) -> String {
        let op = Op::Enroll {
            device: fp.into(),
            name: name.into(),
            group: "g".into(),
            token: None,
        };
        line(seq, key, op)
    }

    fn info<'a>(b: &PublicIdentity, lines: &'a [String]) -> PeerInfo<'a> {
        PeerInfo {
            peer: "b",
            you: "a",
            fingerprint: sha256(&b.0),
            entries: lines.iter().map(String::as_str).collect(),
        }
    }

    fn refused(result: Result<Vouched, PeerTrustError>) -> &'static str {
        match result {
            Err(PeerTrustError::Registry { why, .. }) => why,
            other => panic!("not refused by the registry check: {other:?}"),
        }
    }

    struct Fleet {
        authority: IdentityKey,
        b: PublicIdentity,
        trust: PeerTrust,
    }

    fn fleet() -> Fleet {
        let authority = IdentityKey::from_seed(&[1; 32]);
        let trust = PeerTrust {
            authority: Some(authority.public().fingerprint()),
            ..PeerTrust::default()
        };
        Fleet {
            authority,
            b: IdentityKey::from_seed(&[3; 32]).public(),
            trust,
        }
    }

    #[test]
    fn authority_signed_entries_vouch_for_the_key_under_its_last_name_and_group() {
        let f = fleet();
        let fp = f.b.fingerprint();
        let lines = [
            init(&f.authority),
            enroll(2, &f.authority, &fp, "old"),
            line(
                5,
                &f.authority,
                Op::Rename {
                    device: fp.clone(),
                    name: "b".into(),
                },
            ),
            line(
                7,
                &f.authority,
                Op::Regroup {
                    device: fp.clone(),
                    group: "office".into(),
                },
            ),
        ];
        assert_eq!(
            f.trust.check("b", &f.b, Some(&info(&f.b, &lines))),
            Ok(Vouched::Registry {
                group: "office".into()
            })
        );
        // The old name no longer names it; the entries may come in any order.
        assert_eq!(
            refused(f.trust.check("old", &f.b, Some(&info(&f.b, &lines)))),
            "the entries name the key differently"
        );
        let reversed: Vec<String> = lines.iter().rev().cloned().collect();
        assert!(f
            .trust
            .check("b", &f.b, Some(&info(&f.b, &reversed)))
            .is_ok());
    }

    #[test]
    fn entries_signed_by_the_server_or_another_key_are_refused() {
        let f = fleet();
        let server = IdentityKey::from_seed(&[2; 32]);
        let fp = f.b.fingerprint();
        // A registry signed by the server's own key, as today's servers keep it.
        let minted = [init(&server), enroll(2, &server, &fp, "b")];
        assert_eq!(
            refused(f.trust.check("b", &f.b, Some(&info(&f.b, &minted)))),
            "they come from a registry signed by another key than the pinned registry authority"
        );
        // The authority's genuine entry 1 beside an enrollment the server signed.
        let mixed = [init(&f.authority), enroll(2, &server, &fp, "b")];
        assert_eq!(
            refused(f.trust.check("b", &f.b, Some(&info(&f.b, &mixed)))),
            "an entry is not signed by the registry authority"
        );
        // Without entry 1 the device does not know the authority's key.
        let bare = [enroll(2, &f.authority, &fp, "b")];
        assert_eq!(
            refused(f.trust.check("b", &f.b, Some(&info(&f.b, &bare)))),
            "entry 1 of the registry, naming its signing key, is missing"
        );
        assert_eq!(
            refused(f.trust.check("b", &f.b, None)),
            "entry 1 of the registry, naming its signing key, is missing"
        );
        let edited = [
            init(&f.authority),
            enroll(2, &f.authority, &fp, "b").replace("group=g", "group=h"),
        ];
        assert_eq!(
            refused(f.trust.check("b", &f.b, Some(&info(&f.b, &edited)))),
            "an entry is not signed by the registry authority"
        );
    }

    #[test]
    fn a_revoked_peer_is_refused() {
        let f = fleet();
        let fp = f.b.fingerprint();
        let lines = [
            init(&f.authority),
            enroll(2, &f.authority, &fp, "b"),
            line(3, &f.authority, Op::Revoke { device: fp.clone() }),
        ];
        assert_eq!(
            refused(f.trust.check("b", &f.b, Some(&info(&f.b, &lines)))),
            "the key is revoked"
        );
    }

    #[test]
    fn a_substituted_key_is_refused() {
        let f = fleet();
        let lines = [
            init(&f.authority),
            enroll(2, &f.authority, &f.b.fingerprint(), "b"),
        ];
        // The server relays another key's handshake under b's name, with b's genuine
        // entries...
        let other = IdentityKey::from_seed(&[4; 32]).public();
        assert_eq!(
            refused(f.trust.check("b", &other, Some(&info(&other, &lines)))),
            "an entry concerns another key"
        );
        // ...or with no entry of its own.
        let only_init = [init(&f.authority)];
        assert_eq!(
            refused(f.trust.check("b", &other, Some(&info(&other, &only_init)))),
            "no entry enrolls the key"
        );
    }

    #[test]
    fn a_pin_decides_before_the_authority_and_the_server_word_needs_consent() {
        let f = fleet();
        let other = IdentityKey::from_seed(&[4; 32]).public();
        let lines = [
            init(&f.authority),
            enroll(2, &f.authority, &other.fingerprint(), "b"),
        ];
        let mut trust = f.trust.clone();
        trust.pins.insert("b".into(), f.b.fingerprint());
        assert_eq!(trust.check("b", &f.b, None), Ok(Vouched::Pinned));
        // Entries vouching for another key do not override the pin.
        assert!(matches!(
            trust.check("b", &other, Some(&info(&other, &lines))),
            Err(PeerTrustError::Mismatch { .. })
        ));
        let mut trust = PeerTrust::default();
        let server_word = PeerInfo {
            peer: "c",
            you: "a",
            fingerprint: sha256(&other.0),
            entries: vec![],
        };
        assert!(matches!(
            trust.check("c", &other, Some(&server_word)),
            Err(PeerTrustError::NoAnchor { .. })
        ));
        trust.accept_server_word = true;
        assert_eq!(
            trust.check("c", &other, Some(&server_word)),
            Ok(Vouched::Server)
        );
        assert!(trust.check("c", &f.b, Some(&server_word)).is_err());
    }
}
