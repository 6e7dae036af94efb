//! How a device decides whether a server's verified identity is the right one: a pinned
//! fingerprint, or a known-servers file with trust on first use (like OpenSSH's
//! `StrictHostKeyChecking=accept-new`).

use crate::crypto::identity::PublicIdentity;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why a server's identity was not trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// The server's key is not the pinned one.
    #[error("server key mismatch: expected {expected}, the server presented {got}")]
    Mismatch {
        /// The pinned fingerprint.
        expected: String,
        /// What the server presented.
        got: String,
    },
    /// The known-servers file has a different key for this server.
    #[error("the key of server {host} changed: {file}:{line} records {expected}, the server presented {got}. If the change is expected, delete line {line} of {file}; otherwise someone may be impersonating the server")]
    Changed {
        /// The server address as recorded.
        host: String,
        /// The known-servers file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The recorded fingerprint.
        expected: String,
        /// What the server presented.
        got: String,
    },
    /// The known-servers file could not be read or written.
    #[error("known-servers file {file}: {source}")]
    Io {
        /// The file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the known-servers file is malformed.
    #[error("known-servers file {file}:{line} is malformed: expected `HOST:PORT SHA256:...`")]
    Malformed {
        /// The file.
        file: PathBuf,
        /// 1-based line number.
        line: usize,
    },
}

/// Decides whether a server identity is trusted.
pub trait ServerVerifier: Send + Sync {
    /// Succeeds if `server` may be trusted.
    fn verify(&self, server: &PublicIdentity) -> Result<(), TrustError>;
}

/// Trusts exactly one server key, by fingerprint.
#[derive(Debug, Clone)]
pub struct Pinned(pub String);

impl ServerVerifier for Pinned {
    fn verify(&self, server: &PublicIdentity) -> Result<(), TrustError> {
        let got = server.fingerprint();
        // Fingerprints are public; the comparison needs no constant time.
        if got == self.0 {
            Ok(())
        } else {
            Err(TrustError::Mismatch {
                expected: self.0.clone(),
                got,
            })
        }
    }
}

/// A known-servers file: one `HOST:PORT SHA256:...` per line, `#` comments allowed. An
/// unknown host is added on first use; a changed key is an error naming the line.
#[derive(Debug, Clone)]
pub struct KnownServers {
    file: PathBuf,
    host: String,
}

impl KnownServers {
    /// Checks `host` (as the user typed it, e.g. `10.0.0.5:4433`) against `file`.
    pub fn new(file: impl Into<PathBuf>, host: impl Into<String>) -> Self {
        Self {
            file: file.into(),
            host: host.into(),
        }
    }

    /// The default file: `$SECCHAN_KNOWN_SERVERS`, else `$HOME/.config/secchan/known_servers`.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("SECCHAN_KNOWN_SERVERS") {
            return Some(PathBuf::from(p));
        }
        std::env::var_os("HOME").map(|h| {
            Path::new(&h)
                .join(".config")
                .join("secchan")
                .join("known_servers")
        })
    }

    /// Whether the file records a key for this host, so that no first use is trusted.
    pub fn knows_host(&self) -> Result<bool, TrustError> {
        Ok(self.lookup()?.1.is_some())
    }

    /// The file's text, and the line number and fingerprint it records for this host.
    fn lookup(&self) -> Result<(String, Option<(usize, String)>), TrustError> {
        let text = match std::fs::read_to_string(&self.file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(self.io(e)),
        };
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(host), Some(fp), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TrustError::Malformed {
                    file: self.file.clone(),
                    line: line_no,
                });
            };
            if host == self.host {
                let found = Some((line_no, fp.to_string()));
                return Ok((text, found));
            }
        }
        Ok((text, None))
    }

    fn io(&self, source: std::io::Error) -> TrustError {
        TrustError::Io {
            file: self.file.clone(),
            source,
        }
    }
}

impl ServerVerifier for KnownServers {
    fn verify(&self, server: &PublicIdentity) -> Result<(), TrustError> {
        let got = server.fingerprint();
        let (text, recorded) = self.lookup()?;
        if let Some((line, expected)) = recorded {
            return if expected == got {
                Ok(())
            } else {
                Err(TrustError::Changed {
                    host: self.host.clone(),
                    file: self.file.clone(),
                    line,
                    expected,
                    got,
                })
            };
        }
        if let Some(dir) = self.file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| self.io(e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)
            .map_err(|e| self.io(e))?;
        // A hand-edited file may lack its final newline: never glue the entry onto that line.
        let separator = if text.is_empty() || text.ends_with('\n') {
            ""
        } else {
            "\n"
        };
        writeln!(f, "{separator}{} {}", self.host, got).map_err(|e| self.io(e))?;
        tracing::warn!(
            server = %self.host,
            fingerprint = %got,
            file = %self.file.display(),
            "first connection to this server: its key was added to the known-servers file"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::IdentityKey;

    #[test]
    fn pinned_accepts_only_its_key() {
        let a = IdentityKey::from_seed(&[1; 32]).public();
        let b = IdentityKey::from_seed(&[2; 32]).public();
        let pin = Pinned(a.fingerprint());
        pin.verify(&a).unwrap();
        assert!(matches!(pin.verify(&b), Err(TrustError::Mismatch { .. })));
    }

    #[test]
    fn known_servers_trusts_on_first_use_then_detects_change() {
        let dir = std::env::temp_dir().join(format!("secchan-ks-{}", std::process::id()));
        let file = dir.join("known_servers");
        let _ = std::fs::remove_file(&file);
        let a = IdentityKey::from_seed(&[1; 32]).public();
        let b = IdentityKey::from_seed(&[2; 32]).public();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(&file, "# comment\nother:1 SHA256:xyz\n").unwrap();
        let ks = KnownServers::new(&file, "host:4433");
        ks.verify(&a).unwrap();
        ks.verify(&a).unwrap();
        match ks.verify(&b) {
            Err(TrustError::Changed { line, .. }) => assert_eq!(line, 3),
            other => panic!("expected Changed, got {other:?}"),
        }
        KnownServers::new(&file, "other:1").verify(&a).unwrap_err();
        std::fs::write(&file, "broken\n").unwrap();
        assert!(matches!(
            ks.verify(&a),
            Err(TrustError::Malformed { line: 1, .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn first_use_entry_starts_on_its_own_line() {
        let dir = std::env::temp_dir().join(format!("secchan-ks-nl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("known_servers");
        let a = IdentityKey::from_seed(&[1; 32]).public();
        let b = IdentityKey::from_seed(&[2; 32]).public();
        std::fs::write(&file, format!("other:1 {}", b.fingerprint())).unwrap();
        KnownServers::new(&file, "host:4433").verify(&a).unwrap();
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            format!(
                "other:1 {}\nhost:4433 {}\n",
                b.fingerprint(),
                a.fingerprint()
            )
        );
        // Both pins still hold.
        KnownServers::new(&file, "host:4433").verify(&a).unwrap();
        KnownServers::new(&file, "other:1").verify(&b).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
