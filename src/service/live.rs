//! Device lists that change while the server runs: an authorized-devices file re-read on
//! SIGHUP and when it changes, and the fleet registry. A session ends, with an authenticated
//! close carrying the reason, as soon as its device is no longer accepted; every other session
//! goes on untouched. A file that no longer parses leaves the last good list in force.

use crate::crypto::identity::PublicIdentity;
use crate::handshake::{AuthorizedDevices, Authorizer};
use crate::msgs::AlertCode;
use crate::registry::RegistryAuthorizer;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
use tokio::sync::watch;

/// An authorizer whose decisions change while sessions run.
pub trait Live: Authorizer + std::fmt::Debug {
    /// Resolves, with the alert to close with, once `device` is no longer accepted.
    fn until_refused<'a>(
        &'a self,
        device: &'a PublicIdentity,
    ) -> Pin<Box<dyn Future<Output = AlertCode> + Send + 'a>>;

    /// Re-reads the list now (SIGHUP) if its file changed; logs what happened.
    fn reload(&self);

    /// The registry group `device` belongs to, where the list has groups.
    fn group_of(&self, device: &PublicIdentity) -> Option<String> {
        let _ = device;
        None
    }

    /// The signed registry lines that vouch for `device`, for its peers (protocol.md §11.7).
    fn vouching_lines(&self, device: &PublicIdentity) -> Vec<String> {
        let _ = device;
        Vec::new()
    }
}

impl Live for RegistryAuthorizer {
    fn until_refused<'a>(
        &'a self,
        device: &'a PublicIdentity,
    ) -> Pin<Box<dyn Future<Output = AlertCode> + Send + 'a>> {
        Box::pin(RegistryAuthorizer::until_refused(self, device))
    }

    fn reload(&self) {
        self.reload_logged();
    }

    fn vouching_lines(&self, device: &PublicIdentity) -> Vec<String> {
        RegistryAuthorizer::vouching_lines(self, device)
    }

    fn group_of(&self, device: &PublicIdentity) -> Option<String> {
        RegistryAuthorizer::group_of(self, device)
    }
}

/// Reads an authorized-devices file (the binary's parser, with its line-numbered errors).
pub type Loader = Box<dyn Fn(&Path) -> Result<AuthorizedDevices, String> + Send + Sync>;

/// What identifies a version of the file: its length, modification time and inode.
type FileStamp = (u64, Option<SystemTime>, u64);

fn stamp(path: &Path) -> FileStamp {
    std::fs::metadata(path).map_or((0, None, 0), |m| {
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&m);
        #[cfg(not(unix))]
        let ino = 0;
        (m.len(), m.modified().ok(), ino)
    })
}

/// An authorized-devices file, reloaded on [`Live::reload`] and by [`watch()`].
pub struct DevicesFile {
    path: PathBuf,
    load: Loader,
    current: RwLock<Arc<AuthorizedDevices>>,
    /// The file's stamp at the last load attempt, good or bad; held while loading.
    stamp: Mutex<FileStamp>,
    changed: watch::Sender<u64>,
}

impl std::fmt::Debug for DevicesFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevicesFile")
            .field("path", &self.path)
            .field("devices", &self.len())
            .finish_non_exhaustive()
    }
}

impl DevicesFile {
    /// Loads `path` with `load`; an error here stops the start.
    pub fn open(path: &Path, load: Loader) -> Result<Self, String> {
        let stamp = stamp(path);
        let devices = load(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            load,
            current: RwLock::new(Arc::new(devices)),
            stamp: Mutex::new(stamp),
            changed: watch::channel(0).0,
        })
    }

    /// Devices on the list in force.
    pub fn len(&self) -> usize {
        self.devices().len()
    }

    /// Whether the list in force is empty (never, after a successful load).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn devices(&self) -> Arc<AuthorizedDevices> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Re-reads the file if it changed since the last attempt. `Ok(true)`: a new list is in
    /// force; `Err`: the file does not parse and the last good list stays.
    pub fn reload_now(&self) -> Result<bool, String> {
        let mut last = self.stamp.lock().unwrap_or_else(|e| e.into_inner());
        let now = stamp(&self.path);
        if *last == now {
            return Ok(false);
        }
        *last = now;
        let devices = (self.load)(&self.path)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(devices);
        self.changed.send_modify(|n| *n += 1);
        Ok(true)
    }
}

impl Authorizer for DevicesFile {
    fn authorize(&self, device: Option<&PublicIdentity>) -> Result<String, AlertCode> {
        self.devices().authorize(device)
    }

    fn still_authorized(&self, device: &PublicIdentity) -> Result<(), AlertCode> {
        // Taken off the list: to the device, as to a registry's, it is revoked.
        self.devices()
            .authorize(Some(device))
            .map(|_| ())
            .map_err(|_| AlertCode::Revoked)
    }
}

impl Live for DevicesFile {
    fn until_refused<'a>(
        &'a self,
        device: &'a PublicIdentity,
    ) -> Pin<Box<dyn Future<Output = AlertCode> + Send + 'a>> {
        Box::pin(async move {
            let mut changes = self.changed.subscribe();
            loop {
                if let Err(code) = self.still_authorized(device) {
                    return code;
                }
                // The sender lives as long as `self`.
                let _ = changes.changed().await;
            }
        })
    }

    fn reload(&self) {
        match self.reload_now() {
            Ok(true) => {
                tracing::info!(file = %self.path.display(), devices = self.len(), "authorized devices reloaded")
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "authorized devices not reloaded: the file does not parse; the last good list stays in force")
            }
        }
    }
}

/// Re-reads `live` every `every` and at each SIGHUP, until the returned task is aborted.
pub fn watch(live: Arc<dyn Live>, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        loop {
            #[cfg(unix)]
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async {
                    match &mut hup {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => tracing::info!("SIGHUP: checking the device list"),
            }
            #[cfg(not(unix))]
            tick.tick().await;
            let l = live.clone();
            let _ = tokio::task::spawn_blocking(move || l.reload()).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::IdentityKey;

    fn loader() -> Loader {
        Box::new(|p: &Path| {
            let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
            let mut d = AuthorizedDevices::new();
            for line in text.lines() {
                let (fp, name) = line.split_once(' ').ok_or("bad line")?;
                d.insert(fp.into(), name.into());
            }
            Ok(d)
        })
    }

    #[tokio::test]
    async fn a_reload_admits_added_devices_refuses_removed_ones_and_keeps_the_list_on_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("devices");
        let (a, b) = (
            IdentityKey::from_seed(&[1; 32]),
            IdentityKey::from_seed(&[2; 32]),
        );
        let (a, b) = (a.public(), b.public());
        std::fs::write(&path, format!("{} a\n", a.fingerprint())).unwrap();
        let file = DevicesFile::open(&path, loader()).unwrap();
        assert_eq!(file.authorize(Some(&a)).unwrap(), "a");
        assert_eq!(file.authorize(Some(&b)), Err(AlertCode::UnknownDevice));
        let a_refused = file.until_refused(&a);
        tokio::pin!(a_refused);
        // b added, a removed: a's session ends with revoked.
        std::fs::write(&path, format!("{} b\n", b.fingerprint())).unwrap();
        assert_eq!(file.reload_now(), Ok(true));
        assert_eq!(file.authorize(Some(&b)).unwrap(), "b");
        assert_eq!((&mut a_refused).await, AlertCode::Revoked);
        assert_eq!(file.still_authorized(&a), Err(AlertCode::Revoked));
        assert_eq!(file.still_authorized(&b), Ok(()));
        // A file that does not parse: b stays admitted.
        std::fs::write(&path, "garbage-without-a-name\n").unwrap();
        assert!(file.reload_now().is_err());
        assert_eq!(file.authorize(Some(&b)).unwrap(), "b");
        // Unchanged since the last attempt: nothing re-read.
        assert_eq!(file.reload_now(), Ok(false));
    }
}
