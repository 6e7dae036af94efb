//! Key files, fingerprints and the authorized-devices list.

use super::CliError;
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use crate::crypto::random::OsRandom;
use crate::handshake::AuthorizedDevices;
use crate::registry::entry::valid_fingerprint;
use std::io::Write;
use std::path::{Path, PathBuf};

fn pub_path(secret: &Path) -> PathBuf {
    let mut p = secret.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

fn create_new(path: &Path, mode: u32) -> Result<std::fs::File, CliError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Exists(path.to_path_buf())
        } else {
            CliError::Write {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// Writes `bytes` to a new file at `path`, mode 0600 (never over an existing file).
pub fn write_private_new(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let mut f = create_new(path, 0o600)?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|source| CliError::Write {
            path: path.to_path_buf(),
            source,
        })
}

/// `secchan keygen --out FILE`.
pub fn keygen(out: &Path) -> Result<(), CliError> {
    if out.as_os_str() == "-" {
        return Err(CliError::KeyToStdout);
    }
    let public_path = pub_path(out);
    if public_path.exists() {
        return Err(CliError::Exists(public_path));
    }
    let key = IdentityKey::generate(&mut OsRandom).map_err(|e| CliError::KeyFile {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })?;
    let write = |path: &Path, mode: u32, text: &str| -> Result<(), CliError> {
        let mut f = create_new(path, mode)?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|source| CliError::Write {
                path: path.to_path_buf(),
                source,
            })
    };
    write(out, 0o600, &key.to_file_text())?;
    write(&public_path, 0o644, &key.public().to_file_text())?;
    println!("{}", key.public().fingerprint());
    Ok(())
}

/// Longest key file read: a key file is two short lines; anything longer is not one (and a
/// device file or a FIFO must not be read without end).
const MAX_KEY_FILE: u64 = 4096;

/// Reads a key file's text, at most [`MAX_KEY_FILE`] bytes.
fn read_key_text(path: &Path) -> Result<zeroize::Zeroizing<String>, CliError> {
    use std::io::Read;
    let mut text = zeroize::Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
        .map_err(|e| CliError::KeyFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(text)
}

/// Loads a secret key file, refusing one that other users can read. The format is checked
/// first: a file that is not a secret key (a .pub file, /etc/passwd) is named as such, and
/// only a real secret key that others can read gets the chmod advice.
pub fn load_secret(path: &Path) -> Result<IdentityKey, CliError> {
    let err = |reason: String| CliError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    let text = read_key_text(path)?;
    let key = IdentityKey::from_file_text(&text).map_err(|e| {
        if PublicIdentity::from_file_text(&text).is_ok() {
            err("it is a public key, not a secret key".into())
        } else {
            err(e.to_string())
        }
    })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CliError::KeyPermissions {
                path: path.to_path_buf(),
                mode,
            });
        }
    }
    Ok(key)
}

/// `secchan fingerprint FILE`: works on secret and public key files.
pub fn fingerprint(path: &Path) -> Result<(), CliError> {
    let text = read_key_text(path)?;
    let public = match PublicIdentity::from_file_text(&text) {
        Ok(p) => p,
        Err(_) => load_secret(path)?.public(),
    };
    println!("{}", public.fingerprint());
    Ok(())
}

/// Reads a `--server-key` value: a fingerprint (`SHA256:...`) or a public key file. A value
/// that looks like a fingerprint but is not one is refused here, so a typo is reported as a
/// typo rather than as a server presenting the wrong key.
pub fn server_fingerprint(value: &str) -> Result<String, CliError> {
    let err = |reason: String| CliError::ServerKey {
        value: value.to_string(),
        reason,
    };
    if value.starts_with("SHA256:") {
        return if valid_fingerprint(value) {
            Ok(value.to_string())
        } else {
            Err(err(NOT_A_FINGERPRINT.into()))
        };
    }
    let text = std::fs::read_to_string(value).map_err(|e| err(e.to_string()))?;
    PublicIdentity::from_file_text(&text)
        .map(|p| p.fingerprint())
        .map_err(|e| err(e.to_string()))
}

/// Why a `SHA256:` value was refused.
const NOT_A_FINGERPRINT: &str =
    "not a fingerprint: one is SHA256: and 43 base64 characters (a SHA-256 digest)";

/// Parses an authorized-devices file: one device per line, either
/// `SHA256:<fingerprint> [name]` or `secchan-ed25519-public-v1 <base64> [name]`;
/// `#` starts a comment.
pub fn load_authorized(path: &Path) -> Result<AuthorizedDevices, CliError> {
    let err = |line: usize, reason: String| CliError::AuthorizedDevices {
        path: path.to_path_buf(),
        line,
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(0, e.to_string()))?;
    let mut list = AuthorizedDevices::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let fingerprint = if first.starts_with("SHA256:") {
            if !valid_fingerprint(first) {
                return Err(err(i + 1, format!("{first} is {NOT_A_FINGERPRINT}")));
            }
            first.to_string()
        } else {
            let key = words.next().unwrap_or_default();
            PublicIdentity::from_file_text(&format!("{first} {key}"))
                .map_err(|e| err(i + 1, e.to_string()))?
                .fingerprint()
        };
        let name = words.collect::<Vec<_>>().join(" ");
        let name = if name.is_empty() {
            fingerprint.clone()
        } else {
            name
        };
        list.insert(fingerprint, name);
    }
    if list.is_empty() {
        return Err(err(0, "the list is empty".into()));
    }
    Ok(list)
}
