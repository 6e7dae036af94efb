//! The server side of the registry: an [`Authorizer`] that accepts enrolled devices, enrolls
//! devices presenting a valid token, re-reads the registry when it changes, and closes the
//! sessions of devices that are no longer authorized (docs/registry.md §7).

use super::entry::{valid_label, Op};
use super::file::{self, Stamp};
use super::fleet::{Fleet, Groups};
use super::verify::{Verified, VerifyError};
use super::{unix_now, RegistryError};
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use crate::handshake::Authorizer;
use crate::msgs::AlertCode;
use crate::transport::tcp::Connection;
use crate::transport::TransportError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::watch;

/// How often a server re-reads its registry by default: revocations close live sessions
/// within this interval.
pub const DEFAULT_POLL: Duration = Duration::from_secs(1);

struct Loaded {
    verified: Arc<Verified>,
    /// The files' stamp at the last load attempt, successful or not.
    stamp: Stamp,
}

/// Accepts the devices a registry authorizes; see the module documentation.
pub struct RegistryAuthorizer {
    path: PathBuf,
    key: Arc<IdentityKey>,
    /// The key that signs the registry: the server's own, or an offline authority's.
    signer: PublicIdentity,
    groups: Groups,
    state: RwLock<Loaded>,
    /// Held while the registry is re-read or appended to, so that a slower re-read never
    /// installs a state older than one installed meanwhile, and a handshake waits for a
    /// re-read in progress instead of deciding on the state before it.
    updating: Mutex<()>,
    changed: watch::Sender<u64>,
    /// Where the server records every state it accepts (docs/registry.md §7.1), if anywhere.
    anchor: Option<PathBuf>,
}

impl std::fmt::Debug for RegistryAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuthorizer")
            .field("path", &self.path)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

/// What [`RegistryAuthorizer::recv`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Received {
    /// A message from the device.
    Message(bytes::Bytes),
    /// The device closed the session normally.
    Closed,
    /// The registry stopped authorizing the device: the session was closed with this alert.
    Refused(AlertCode),
}

impl RegistryAuthorizer {
    /// Loads and verifies the registry at `path`, which must belong to `key` (the server's
    /// identity, which also signs token enrollments). A server serves `groups`, which must be
    /// valid group names; a group no device or token of the registry belongs to is served
    /// with a warning (a typo would refuse every device).
    pub fn open(path: &Path, key: Arc<IdentityKey>, groups: Groups) -> Result<Self, RegistryError> {
        let stamp = Stamp::of(path);
        let verified = file::load(path, Some(&key.public()))?;
        Self::serve(path, key, verified, stamp, groups)
    }

    /// Like [`open`](Self::open), for a registry signed by an offline authority whose key
    /// has the fingerprint `authority` (docs/registry.md §10): its entry 1 must name that key,
    /// which verifies every entry. The server cannot append to it, so it refuses token
    /// enrollments with `enrollment_refused`.
    pub fn open_with_authority(
        path: &Path,
        key: Arc<IdentityKey>,
        authority: &str,
        groups: Groups,
    ) -> Result<Self, RegistryError> {
        let stamp = Stamp::of(path);
        let verified = file::load(path, None)?;
        let signer = verified.server();
        if signer.fingerprint() != authority {
            return Err(VerifyError::WrongServer {
                expected: authority.to_string(),
                found: signer.fingerprint(),
            }
            .into());
        }
        let now = unix_now();
        let pending = verified
            .fleet
            .tokens()
            .filter(|(_, t)| t.used_by.is_none() && t.expires >= now)
            .count();
        if pending > 0 {
            tracing::warn!(registry = %path.display(), tokens = pending, "the registry holds unused enrollment tokens, which this server refuses: it cannot sign their enrollment into a registry signed by an offline authority");
        }
        Self::serve(path, key, verified, stamp, groups)
    }

    /// Serves `verified`, read from `path` when its files had `stamp`, signed by the key its
    /// entry 1 names.
    fn serve(
        path: &Path,
        key: Arc<IdentityKey>,
        verified: Verified,
        stamp: Stamp,
        groups: Groups,
    ) -> Result<Self, RegistryError> {
        if let Some(bad) = groups.names().find(|g| !valid_label(g)) {
            return Err(RegistryError::Label {
                what: "group",
                value: bad.to_string(),
            });
        }
        for group in groups.names() {
            let fleet = &verified.fleet;
            let used = fleet.devices().any(|d| d.group == group)
                || fleet.tokens().any(|(_, t)| t.group == group);
            if !used {
                tracing::warn!(registry = %path.display(), group, "no device or token of the registry is in this served group: check the --group spelling");
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            key,
            signer: verified.server(),
            groups,
            state: RwLock::new(Loaded {
                verified: Arc::new(verified),
                stamp,
            }),
            updating: Mutex::new(()),
            changed: watch::Sender::new(0),
            anchor: None,
        })
    }

    /// Anchors the registry in the file `anchor`, which must be outside the registry's
    /// directory (docs/registry.md §7.1): the loaded registry must extend the state recorded
    /// there, and every state the server accepts from now on is recorded there. A missing
    /// anchor file is created. This is what detects a rollback of both registry files to an
    /// older copy across restarts.
    pub fn anchored(mut self, anchor: &Path) -> Result<Self, RegistryError> {
        let verified = self.snapshot();
        if let Some(recorded) = file::load_head_file(anchor, &self.key.public())? {
            if !verified.extends(&recorded) {
                return Err(RegistryError::BehindAnchor {
                    anchor: anchor.to_path_buf(),
                    had: recorded.count,
                    now: verified.entries.len(),
                });
            }
        }
        file::write_head_file(anchor, &verified.head(), &self.key)?;
        self.anchor = Some(anchor.to_path_buf());
        Ok(self)
    }

    fn read<T>(&self, f: impl FnOnce(&Fleet) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        f(&state.verified.fleet)
    }

    fn snapshot(&self) -> Arc<Verified> {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .verified
            .clone()
    }

    /// Installs a state that extends the current one (never an older or another history),
    /// records it in the anchor file, and wakes the sessions' checks. Called with `updating`
    /// held. Returns whether it was installed.
    fn install(&self, verified: Verified) -> bool {
        let head = verified.head();
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if !verified.extends(&state.verified.head()) {
                return false;
            }
            state.verified = Arc::new(verified);
        }
        if let Some(anchor) = &self.anchor {
            if let Err(e) = file::write_head_file(anchor, &head, &self.key) {
                tracing::error!(anchor = %anchor.display(), error = %e, "cannot record the registry state in the anchor file");
            }
        }
        self.changed.send_modify(|generation| *generation += 1);
        true
    }

    /// Entries in the loaded registry.
    pub fn len(&self) -> usize {
        self.snapshot().entries.len()
    }

    /// Whether the loaded registry is empty (never: entry 1 is `init`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-reads the registry if its files changed. The new log must verify and extend the
    /// loaded one; otherwise the loaded state stays in force and the error is returned.
    /// Returns whether a new state was installed.
    pub fn reload(&self) -> Result<bool, RegistryError> {
        let _updating = self.updating.lock().unwrap_or_else(|e| e.into_inner());
        let stamp = Stamp::of(&self.path);
        let known = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            if state.stamp == stamp {
                return Ok(false);
            }
            state.stamp = stamp;
            state.verified.clone()
        };
        // Only the new entries' signatures are checked; the old ones must be unchanged.
        let new = file::load_extending(&self.path, Some(&self.signer), Some(&known))?;
        if new.entries.len() == known.entries.len() {
            return Ok(false);
        }
        Ok(self.install(new))
    }

    /// [`reload`](Self::reload), logging a new state (info) or a refused one (error).
    pub fn reload_logged(&self) {
        match self.reload() {
            Ok(true) => {
                tracing::info!(registry = %self.path.display(), entries = self.len(), "registry reloaded")
            }
            Ok(false) => {}
            Err(e) => tracing::error!(
                registry = %self.path.display(),
                error = %e,
                "registry failed verification; the last verified state stays in force: inspect it with `secchan registry verify`"
            ),
        }
    }

    /// Whether `device` is authorized now, with its name.
    pub fn check(&self, device: &PublicIdentity) -> Result<String, AlertCode> {
        self.read(|f| {
            f.check(&device.fingerprint(), &self.groups)
                .map(|d| d.name.clone())
        })
    }

    /// The signed registry lines that vouch for `device` (protocol.md §11.7), for the
    /// PeerInfo its peers receive. They are sent whatever key signs the registry: a device
    /// that pins an authority refuses lines signed by any other key, the server's included.
    pub fn vouching_lines(&self, device: &PublicIdentity) -> Vec<String> {
        self.snapshot().vouching_lines(&device.fingerprint())
    }

    /// The group `device` is enrolled in, if it is.
    pub fn group_of(&self, device: &PublicIdentity) -> Option<String> {
        self.read(|f| f.device(&device.fingerprint()).map(|d| d.group.clone()))
    }

    /// Resolves with the alert once the registry no longer authorizes `device`.
    pub async fn until_refused(&self, device: &PublicIdentity) -> AlertCode {
        let mut changes = self.changed.subscribe();
        loop {
            if let Err(code) = self.check(device) {
                return code;
            }
            // The sender lives as long as `self`: `changed` cannot fail while we borrow it.
            let _ = changes.changed().await;
        }
    }

    /// Receives the next message from `device`'s session, unless the registry stops
    /// authorizing the device first: then the session is closed with the matching alert
    /// ([`AlertCode::Revoked`] or [`AlertCode::WrongGroup`]) and a warning is logged.
    pub async fn recv(
        &self,
        conn: &mut Connection,
        device: &PublicIdentity,
    ) -> Result<Received, TransportError> {
        let refused = tokio::select! {
            message = conn.recv() => {
                return Ok(message?.map_or(Received::Closed, Received::Message));
            }
            code = self.until_refused(device) => code,
        };
        tracing::warn!(
            device = %device.fingerprint(),
            peer = %conn.peer_addr(),
            reason = %refused,
            "closing the session: the registry no longer authorizes the device"
        );
        conn.send_close_with(refused).await?;
        Ok(Received::Refused(refused))
    }
}

impl Authorizer for RegistryAuthorizer {
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        let device = device.ok_or(AlertCode::DeviceAuthRequired)?;
        // Revocations and enrollments made since the last poll apply to this handshake.
        self.reload_logged();
        self.check(device)
    }

    fn still_authorized(&self, device: &PublicIdentity) -> Result<(), AlertCode> {
        // The state the watch task keeps current; no re-read here.
        self.check(device).map(|_| ())
    }

    fn enroll(&self, device: &PublicIdentity, token: &PublicIdentity) -> Result<String, AlertCode> {
        // A device already enrolled connects by its key: the token is neither needed nor used.
        match self.authorize(Some(device)) {
            Err(AlertCode::UnknownDevice) => {}
            known => return known,
        }
        let fingerprint = device.fingerprint();
        if self.signer != self.key.public() {
            tracing::warn!(device = %fingerprint, "token enrollment refused: the registry is signed by an offline authority, so the server cannot record an enrollment; enroll the device with `secchan registry enroll --key AUTHORITY_KEY`");
            return Err(AlertCode::EnrollmentRefused);
        }
        let now = unix_now();
        // Checks 6-9 of docs/registry.md §5.4 on the state in memory first: anyone can make a
        // valid proof with a token key of its own, and such a stranger must not make the
        // server lock and re-read the registry. `authorize` above re-read it if it changed.
        self.read(|fleet| fleet.check_token(token, &self.groups, now).map(|_| ()))?;
        // The token is checked again under the registry's exclusive lock, so two devices
        // racing for one token cannot both win, even across processes.
        let enrolled = {
            let _updating = self.updating.lock().unwrap_or_else(|e| e.into_inner());
            let known = self.snapshot();
            file::append_extending(&self.path, &self.key, now, Some(&known), |fleet| {
                if fleet.device(&fingerprint).is_some() {
                    return Err(RegistryError::AlreadyEnrolled(fingerprint.clone()));
                }
                let t = fleet
                    .check_token(token, &self.groups, now)
                    .map_err(RegistryError::Refused)?;
                Ok(Op::Enroll {
                    device: fingerprint.clone(),
                    name: t.name.clone(),
                    group: t.group.clone(),
                    token: Some(*token),
                })
            })
            .map(|verified| {
                let device = verified.fleet.device(&fingerprint).cloned();
                self.install(verified);
                device
            })
        };
        match enrolled {
            Ok(Some(d)) => {
                tracing::info!(device = %fingerprint, name = %d.name, group = %d.group, "device enrolled with a token");
                Ok(d.name)
            }
            Ok(None) => Err(AlertCode::InternalError),
            Err(RegistryError::Refused(code)) => Err(code),
            // Enrolled by someone else a moment ago: decide on the registry as it is now.
            Err(RegistryError::AlreadyEnrolled(_)) => self.authorize(Some(device)),
            Err(e) => {
                tracing::error!(registry = %self.path.display(), error = %e, "cannot record an enrollment");
                Err(AlertCode::InternalError)
            }
        }
    }
}
