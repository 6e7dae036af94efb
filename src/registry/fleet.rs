//! The fleet a registry describes: the state after applying its entries in order, and the
//! rules each entry must satisfy against that state (docs/registry.md §3).

use super::entry::{Entry, Op};
use crate::crypto::identity::PublicIdentity;
use crate::msgs::AlertCode;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One enrolled device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    /// Its fingerprint.
    pub fingerprint: String,
    /// Display name.
    pub name: String,
    /// Group.
    pub group: String,
    /// Entry that enrolled it.
    pub enrolled_entry: u64,
    /// Unix time of that entry.
    pub enrolled_at: u64,
    /// Whether it joined with a token.
    pub by_token: bool,
    /// Entry that revoked it, if any.
    pub revoked_entry: Option<u64>,
}

/// One issued enrollment token (only its public key is known).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    /// Group the enrolled device joins.
    pub group: String,
    /// Name the enrolled device gets.
    pub name: String,
    /// Unix time after which it is refused.
    pub expires: u64,
    /// Fingerprint of the device that used it.
    pub used_by: Option<String>,
}

/// Which groups a server serves: all, or a set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Groups(Option<BTreeSet<String>>);

impl Groups {
    /// Every group.
    pub fn all() -> Self {
        Self(None)
    }

    /// Only these groups (all if `names` is empty).
    pub fn only(names: impl IntoIterator<Item = String>) -> Self {
        let set: BTreeSet<String> = names.into_iter().collect();
        Self((!set.is_empty()).then_some(set))
    }

    /// The served groups, if not all.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().flatten().map(String::as_str)
    }

    /// Whether `group` is served.
    pub fn serves(&self, group: &str) -> bool {
        self.0.as_ref().is_none_or(|s| s.contains(group))
    }
}

/// The registry's state.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    server: Option<PublicIdentity>,
    devices: BTreeMap<String, Device>,
    tokens: HashMap<[u8; 32], Token>,
}

impl Fleet {
    /// The server key from entry 1.
    pub fn server(&self) -> Option<&PublicIdentity> {
        self.server.as_ref()
    }

    /// Every device ever enrolled, by fingerprint.
    pub fn devices(&self) -> impl Iterator<Item = &Device> {
        self.devices.values()
    }

    /// A device by fingerprint.
    pub fn device(&self, fingerprint: &str) -> Option<&Device> {
        self.devices.get(fingerprint)
    }

    /// Every issued token with its public key, in no particular order.
    pub fn tokens(&self) -> impl Iterator<Item = (PublicIdentity, &Token)> {
        self.tokens.iter().map(|(id, t)| (PublicIdentity(*id), t))
    }

    /// Whether a device may connect to a server serving `groups`, with its name if so.
    pub fn check(&self, fingerprint: &str, groups: &Groups) -> Result<&Device, AlertCode> {
        let d = self
            .devices
            .get(fingerprint)
            .ok_or(AlertCode::UnknownDevice)?;
        if d.revoked_entry.is_some() {
            return Err(AlertCode::Revoked);
        }
        if !groups.serves(&d.group) {
            return Err(AlertCode::WrongGroup);
        }
        Ok(d)
    }

    /// Whether `id` may enroll a new device at unix time `now` on a server serving `groups`.
    pub fn check_token(
        &self,
        id: &PublicIdentity,
        groups: &Groups,
        now: u64,
    ) -> Result<&Token, AlertCode> {
        let t = self.tokens.get(&id.0).ok_or(AlertCode::EnrollmentRefused)?;
        if t.used_by.is_some() {
            return Err(AlertCode::TokenUsed);
        }
        if now > t.expires {
            return Err(AlertCode::TokenExpired);
        }
        if !groups.serves(&t.group) {
            return Err(AlertCode::WrongGroup);
        }
        Ok(t)
    }

    fn active(&mut self, fingerprint: &str) -> Result<&mut Device, &'static str> {
        match self.devices.get_mut(fingerprint) {
            None => Err("names a device that was never enrolled"),
            Some(d) if d.revoked_entry.is_some() => Err("names a revoked device"),
            Some(d) => Ok(d),
        }
    }

    /// Applies one entry, checking it against the state so far. The error says which rule
    /// the entry breaks.
    pub fn apply(&mut self, e: &Entry) -> Result<(), &'static str> {
        if e.seq == 1 {
            return match &e.op {
                Op::Init { server } => {
                    self.server = Some(*server);
                    Ok(())
                }
                _ => Err("entry 1 must be `init`"),
            };
        }
        match &e.op {
            Op::Init { .. } => return Err("`init` may only be entry 1"),
            Op::Enroll {
                device,
                name,
                group,
                token,
            } => {
                if self.devices.contains_key(device) {
                    return Err("enrolls a device that is already enrolled");
                }
                if let Some(id) = token {
                    let t = self
                        .tokens
                        .get_mut(&id.0)
                        .ok_or("uses a token that was never issued")?;
                    if t.used_by.is_some() {
                        return Err("uses a token that was already used");
                    }
                    if e.time > t.expires {
                        return Err("uses a token after it expired");
                    }
                    if t.group != *group {
                        return Err("enrolls into another group than its token's");
                    }
                    t.used_by = Some(device.clone());
                }
                self.devices.insert(
                    device.clone(),
                    Device {
                        fingerprint: device.clone(),
                        name: name.clone(),
                        group: group.clone(),
                        enrolled_entry: e.seq,
                        enrolled_at: e.time,
                        by_token: token.is_some(),
                        revoked_entry: None,
                    },
                );
            }
            Op::Revoke { device } => self.active(device)?.revoked_entry = Some(e.seq),
            Op::Rename { device, name } => self.active(device)?.name = name.clone(),
            Op::Regroup { device, group } => self.active(device)?.group = group.clone(),
            Op::Token {
                id,
                group,
                name,
                expires,
            } => {
                if self.tokens.contains_key(&id.0) {
                    return Err("issues a token that was already issued");
                }
                self.tokens.insert(
                    id.0,
                    Token {
                        group: group.clone(),
                        name: name.clone(),
                        expires: *expires,
                        used_by: None,
                    },
                );
            }
        }
        Ok(())
    }
}
