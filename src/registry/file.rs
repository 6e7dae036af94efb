//! The registry on disk: `FILE` (the log) and `FILE.head` (docs/registry.md §2, §6).
//!
//! Every reader holds a shared lock on the log while it reads both files; every writer holds
//! an exclusive lock while it re-reads, verifies, appends and fsyncs the entry, then replaces
//! the head atomically (write a temporary file, fsync, rename, fsync the directory). So
//! concurrent commands never interleave, and a crash leaves either a torn last line (reported
//! by verification, removed by `repair`) or a complete entry the head does not name yet
//! (kept: it is signed).

use super::entry::{Entry, Op};
use super::fleet::Fleet;
use super::verify::{too_large, verify, verify_extending, Head, Verified, VerifyError};
use super::RegistryError;
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The head file of the registry at `path`: `path` with `.head` appended.
pub fn head_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".head");
    PathBuf::from(p)
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> RegistryError + 'a {
    move |source| RegistryError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

fn read_all(file: &mut File, path: &Path) -> Result<Vec<u8>, RegistryError> {
    let len = file.metadata().map_err(io("read", path))?.len();
    if too_large(len) {
        return Err(RegistryError::TooLarge(path.to_path_buf()));
    }
    let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or_default());
    file.rewind()
        .and_then(|()| file.read_to_end(&mut buf))
        .map_err(io("read", path))?;
    Ok(buf)
}

fn read_head(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    let head = head_path(path);
    match std::fs::read(&head) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("read", &head)(e)),
    }
}

/// Reads and verifies both files under `file`'s lock; entries that `known` already holds,
/// byte for byte, are not verified again.
fn read_verified(
    file: &mut File,
    path: &Path,
    expected: Option<&PublicIdentity>,
    known: Option<&Verified>,
) -> Result<Verified, RegistryError> {
    let log = read_all(file, path)?;
    let head = read_head(path)?;
    Ok(verify_extending(known, &log, head.as_deref(), expected)?)
}

/// Loads and verifies the registry at `path`. With `expected`, the log must belong to that
/// server key.
pub fn load(path: &Path, expected: Option<&PublicIdentity>) -> Result<Verified, RegistryError> {
    load_extending(path, expected, None)
}

/// Like [`load`], skipping the signature checks of the entries `known` (verified earlier
/// against `expected`) already holds unchanged.
pub fn load_extending(
    path: &Path,
    expected: Option<&PublicIdentity>,
    known: Option<&Verified>,
) -> Result<Verified, RegistryError> {
    let mut file = File::open(path).map_err(io("open", path))?;
    FileExt::lock_shared(&file).map_err(io("lock", path))?;
    read_verified(&mut file, path, expected, known)
}

fn sync_dir(path: &Path) -> Result<(), RegistryError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync the directory of", path))
}

fn write_head(path: &Path, head: &Head, key: &IdentityKey) -> Result<(), RegistryError> {
    let final_path = head_path(path);
    let mut tmp = final_path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = create_file(&tmp, true)?;
    f.write_all(head.sign(key).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, &final_path).map_err(io("replace", &final_path))?;
    sync_dir(path)
}

fn create_file(path: &Path, truncate: bool) -> Result<File, RegistryError> {
    let mut opts = OpenOptions::new();
    opts.write(true);
    if truncate {
        opts.create(true).truncate(true);
    } else {
        opts.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::AlreadyExists {
            RegistryError::Exists(path.to_path_buf())
        } else {
            io("create", path)(source)
        }
    })
}

/// Creates a registry at `path` whose entry 1 records `key`'s public half.
pub fn init(path: &Path, key: &IdentityKey, now: u64) -> Result<Verified, RegistryError> {
    if head_path(path).exists() {
        return Err(RegistryError::Exists(head_path(path)));
    }
    let mut file = create_file(path, false)?;
    FileExt::lock_exclusive(&file).map_err(io("lock", path))?;
    let entry = Entry {
        seq: 1,
        time: now,
        prev: [0; 32],
        op: Op::Init {
            server: key.public(),
        },
    };
    let line = entry.sign(key);
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io("write", path))?;
    sync_dir(path)?;
    let head = Head {
        count: 1,
        hash: super::entry::line_hash(line.as_bytes()),
    };
    write_head(path, &head, key)?;
    Ok(verify(
        line.as_bytes(),
        Some(head.sign(key).as_bytes()),
        Some(&key.public()),
    )?)
}

/// Appends one entry signed by `key`: under the exclusive lock, verifies the log, asks
/// `make` for the operation given the current fleet (it refuses with an error if the
/// operation does not apply), writes and fsyncs the line, then updates the head.
pub fn append(
    path: &Path,
    key: &IdentityKey,
    now: u64,
    make: impl FnOnce(&Fleet) -> Result<Op, RegistryError>,
) -> Result<Verified, RegistryError> {
    append_extending(path, key, now, None, make)
}

/// Like [`append`], skipping the signature checks of the entries `known` already holds
/// unchanged.
pub fn append_extending(
    path: &Path,
    key: &IdentityKey,
    now: u64,
    known: Option<&Verified>,
    make: impl FnOnce(&Fleet) -> Result<Op, RegistryError>,
) -> Result<Verified, RegistryError> {
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io("open", path))?;
    FileExt::lock_exclusive(&file).map_err(io("lock", path))?;
    let mut v = read_verified(&mut file, path, Some(&key.public()), known)?;
    let entry = Entry {
        seq: v.entries.len() as u64 + 1,
        time: now,
        prev: v.last_hash(),
        op: make(&v.fleet)?,
    };
    v.fleet
        .apply(&entry)
        .map_err(|reason| VerifyError::Invalid {
            entry: entry.seq,
            reason,
        })?;
    let line = entry.sign(key);
    file.write_all(line.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(io("append to", path))?;
    v.hashes.push(super::entry::line_hash(line.as_bytes()));
    v.entries.push(entry);
    write_head(path, &v.head(), key)?;
    v.head_count = v.entries.len() as u64;
    Ok(v)
}

/// Removes a torn last line (an interrupted append), and nothing else. Returns the entry
/// number and byte count removed, or `None` if the log was not torn. Any other verification
/// failure is returned unchanged: `repair` never hides tampering.
pub fn repair(path: &Path, key: &IdentityKey) -> Result<Option<(u64, usize)>, RegistryError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io("open", path))?;
    FileExt::lock_exclusive(&file).map_err(io("lock", path))?;
    match read_verified(&mut file, path, Some(&key.public()), None) {
        Ok(_) => Ok(None),
        Err(RegistryError::Verify(VerifyError::Torn { entry, bytes })) => {
            let len = file.metadata().map_err(io("read", path))?.len();
            file.set_len(len.saturating_sub(bytes as u64))
                .and_then(|()| file.sync_all())
                .map_err(io("truncate", path))?;
            read_verified(&mut file, path, Some(&key.public()), None)?;
            Ok(Some((entry, bytes)))
        }
        Err(e) => Err(e),
    }
}

/// What the watcher compares to notice a change: length, modification time and inode of
/// the log and the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp([(u64, Option<std::time::SystemTime>, u64); 2]);

impl Stamp {
    /// The current stamp of the registry at `path` (a missing file reads as zeros).
    pub fn of(path: &Path) -> Self {
        let one = |p: &Path| {
            std::fs::metadata(p).map_or((0, None, 0), |m| {
                #[cfg(unix)]
                let ino = std::os::unix::fs::MetadataExt::ino(&m);
                #[cfg(not(unix))]
                let ino = 0;
                (m.len(), m.modified().ok(), ino)
            })
        };
        Self([one(path), one(&head_path(path))])
    }
}
