//! The registry on disk: `FILE` (the log) and `FILE.head` (docs/registry.md §2, §6).
//!
//! Every reader holds a shared lock on the log while it reads both files; every writer holds
//! an exclusive lock while it re-reads, verifies, appends and fsyncs the entry, then replaces
//! the head atomically (write a temporary file, fsync, rename, fsync the directory). So
//! concurrent commands never interleave, and a crash leaves either a torn last line (reported
//! by verification, removed by `repair`) or a complete entry the head does not name yet
//! (kept: it is signed; the next writer records it in the head before appending).
//!
//! Both files are read only if they are regular files, and never beyond the size limits, so
//! a FIFO, a device or an endless file put in their place cannot block or exhaust a reader.

use super::entry::{line_hash, Entry, Op};
use super::fleet::Fleet;
use super::verify::{
    verify, verify_extending, Head, Verified, VerifyError, MAX_HEAD_LEN, MAX_LOG_LEN,
};
use super::RegistryError;
use crate::crypto::identity::{IdentityKey, PublicIdentity};
use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// The head file of the registry at `path`: `path` with `.head` appended.
pub fn head_path(path: &Path) -> PathBuf {
    with_suffix(path, ".head")
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

/// Opens `path` with `opts` if it is a regular file (symlinks to one are followed). The
/// check comes before the open so that a FIFO is never opened (opening one blocks), and
/// again on the open file.
fn open_regular(path: &Path, opts: &OpenOptions) -> Result<File, RegistryError> {
    let meta = std::fs::metadata(path).map_err(io("open", path))?;
    if !meta.is_file() {
        return Err(RegistryError::NotRegular(path.to_path_buf()));
    }
    opts.open(path).map_err(io("open", path))
}

/// Reads `file` from its start, at most `limit + 1` bytes: one more than any valid content,
/// so the caller can tell that it is too long.
fn read_at_most(file: &mut File, path: &Path, limit: u64) -> Result<Vec<u8>, RegistryError> {
    let meta = file.metadata().map_err(io("read", path))?;
    if !meta.is_file() {
        return Err(RegistryError::NotRegular(path.to_path_buf()));
    }
    let mut buf = Vec::with_capacity(usize::try_from(meta.len().min(limit)).unwrap_or_default());
    file.rewind()
        .and_then(|()| file.take(limit.saturating_add(1)).read_to_end(&mut buf))
        .map_err(io("read", path))?;
    Ok(buf)
}

fn read_log(file: &mut File, path: &Path) -> Result<Vec<u8>, RegistryError> {
    let log = read_at_most(file, path, MAX_LOG_LEN)?;
    if log.len() as u64 > MAX_LOG_LEN {
        return Err(RegistryError::TooLarge(path.to_path_buf()));
    }
    Ok(log)
}

/// Reads a head file (`FILE.head`, or a server's anchor file); `None` if it does not exist.
/// A head longer than [`MAX_HEAD_LEN`] is read only that far, and then fails to parse.
pub fn read_head_file(path: &Path) -> Result<Option<Vec<u8>>, RegistryError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("read", path)(e)),
        Ok(_) => {}
    }
    let mut file = open_regular(path, OpenOptions::new().read(true))?;
    read_at_most(&mut file, path, MAX_HEAD_LEN as u64).map(Some)
}

/// Parses and verifies the head file at `path` against `server`; `None` if it does not
/// exist.
pub fn load_head_file(path: &Path, server: &PublicIdentity) -> Result<Option<Head>, RegistryError> {
    read_head_file(path)?
        .map(|text| Head::parse(&text, server).map_err(|e| head_error(e, path)))
        .transpose()
}

/// A verification failure, with a head failure naming the head file.
fn head_error(error: VerifyError, head: &Path) -> RegistryError {
    match error {
        VerifyError::Head(reason) => RegistryError::Head {
            path: head.to_path_buf(),
            reason,
        },
        e => RegistryError::Verify(e),
    }
}

/// Reads and verifies both files under `file`'s lock. With `known` (a state verified earlier
/// with the same key), the registry must extend it, and the entries it holds unchanged are
/// not verified again.
fn read_verified(
    file: &mut File,
    path: &Path,
    expected: Option<&PublicIdentity>,
    known: Option<&Verified>,
) -> Result<Verified, RegistryError> {
    let log = read_log(file, path)?;
    let head_file = head_path(path);
    let head = read_head_file(&head_file)?;
    let v = verify_extending(known, &log, head.as_deref(), expected)
        .map_err(|e| head_error(e, &head_file))?;
    match known {
        Some(k) if !v.extends(&k.head()) => Err(RegistryError::RolledBack {
            had: k.entries.len() as u64,
            now: v.entries.len(),
        }),
        _ => Ok(v),
    }
}

/// Loads and verifies the registry at `path`. With `expected`, the log must belong to that
/// server key.
pub fn load(path: &Path, expected: Option<&PublicIdentity>) -> Result<Verified, RegistryError> {
    load_extending(path, expected, None)
}

/// Like [`load`], for a registry that must extend `known` (verified earlier against
/// `expected`): a registry that does not is refused as [`RegistryError::RolledBack`], and
/// the signatures of the entries `known` holds unchanged are not checked again.
pub fn load_extending(
    path: &Path,
    expected: Option<&PublicIdentity>,
    known: Option<&Verified>,
) -> Result<Verified, RegistryError> {
    let mut file = open_regular(path, OpenOptions::new().read(true))?;
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

/// Creates `path`, which must not exist, with mode 0600. `create_new` never follows a
/// symlink: a link planted under the name makes the call fail instead of writing through it.
fn create_new(path: &Path) -> Result<File, RegistryError> {
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
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

/// Replaces the head file at `dest` (`FILE.head`, or a server's anchor file) with `head`
/// signed by `key`, atomically: a new temporary file beside it, fsync, rename, fsync the
/// directory. A stale temporary file, or anything planted under its name, is removed (a
/// symlink itself, not its target) and never written through.
pub fn write_head_file(dest: &Path, head: &Head, key: &IdentityKey) -> Result<(), RegistryError> {
    let tmp = with_suffix(dest, ".tmp");
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io("remove", &tmp)(e)),
        _ => {}
    }
    let mut f = create_new(&tmp)?;
    f.write_all(head.sign(key).as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("write", &tmp))?;
    std::fs::rename(&tmp, dest).map_err(io("replace", dest))?;
    sync_dir(dest)
}

fn write_head(path: &Path, head: &Head, key: &IdentityKey) -> Result<(), RegistryError> {
    write_head_file(&head_path(path), head, key)
}

/// What an append needs of the log file; a trait so that tests can simulate a full disk.
trait LogFile: Write {
    /// Makes what was written durable.
    fn sync(&mut self) -> std::io::Result<()>;
    /// Cuts the file back to `len` bytes, durably.
    fn cut(&mut self, len: u64) -> std::io::Result<()>;
}

impl LogFile for File {
    fn sync(&mut self) -> std::io::Result<()> {
        self.sync_data()
    }

    fn cut(&mut self, len: u64) -> std::io::Result<()> {
        self.set_len(len).and_then(|()| self.sync_data())
    }
}

/// Appends `line` to a log of `len` bytes with one write and makes it durable. If that fails
/// part-way (a full disk, an I/O error), the log is cut back to `len`: the writer knows the
/// entry did not make it, so it leaves no torn line behind for every later reader to refuse.
fn append_line(log: &mut impl LogFile, len: u64, line: &[u8]) -> std::io::Result<()> {
    let written = log.write_all(line).and_then(|()| log.sync());
    if written.is_err() {
        if let Err(e) = log.cut(len) {
            tracing::error!(error = %e, "cannot remove a failed append from the registry log: it now ends with a torn entry");
        }
    }
    written
}

/// Creates a registry at `path` whose entry 1 records `key`'s public half. An `init` that
/// was interrupted (the log is empty, or holds only its `init` entry, and the head file was
/// never written) is completed instead; any other existing registry is refused.
pub fn init(path: &Path, key: &IdentityKey, now: u64) -> Result<Verified, RegistryError> {
    let head = head_path(path);
    if std::fs::symlink_metadata(&head).is_ok() {
        return Err(RegistryError::Exists(head));
    }
    let (mut file, log) = match create_new(path) {
        Ok(file) => {
            FileExt::lock_exclusive(&file).map_err(io("lock", path))?;
            (file, Vec::new())
        }
        Err(RegistryError::Exists(_)) => {
            let mut file = open_regular(path, OpenOptions::new().read(true).write(true))?;
            FileExt::lock_exclusive(&file).map_err(io("lock", path))?;
            let log = read_at_most(&mut file, path, super::entry::MAX_LINE_LEN as u64)?;
            if !interrupted_init(&log, key) {
                return Err(RegistryError::Exists(path.to_path_buf()));
            }
            (file, log)
        }
        Err(e) => return Err(e),
    };
    let line = if log.is_empty() {
        let entry = Entry {
            seq: 1,
            time: now,
            prev: [0; 32],
            op: Op::Init {
                server: key.public(),
            },
        };
        let line = entry.sign(key).into_bytes();
        append_line(&mut file, 0, &line).map_err(io("write", path))?;
        sync_dir(path)?;
        line
    } else {
        log
    };
    let head = Head {
        count: 1,
        hash: line_hash(&line),
    };
    write_head(path, &head, key)?;
    Ok(verify(
        &line,
        Some(head.sign(key).as_bytes()),
        Some(&key.public()),
    )?)
}

/// Whether `log` is what an `init` by `key` interrupted before it wrote the head leaves:
/// nothing, or exactly one complete, valid `init` entry signed by `key`.
fn interrupted_init(log: &[u8], key: &IdentityKey) -> bool {
    let head = Head {
        count: 1,
        hash: line_hash(log),
    };
    log.is_empty()
        || verify(log, Some(head.sign(key).as_bytes()), Some(&key.public()))
            .is_ok_and(|v| v.entries.len() == 1)
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

/// Like [`append`], to a registry that must extend `known` (a server's current state): one
/// that does not is refused as [`RegistryError::RolledBack`] and nothing is written. The
/// signatures of the entries `known` holds unchanged are not checked again.
pub fn append_extending(
    path: &Path,
    key: &IdentityKey,
    now: u64,
    known: Option<&Verified>,
    make: impl FnOnce(&Fleet) -> Result<Op, RegistryError>,
) -> Result<Verified, RegistryError> {
    let mut file = open_regular(path, OpenOptions::new().read(true).append(true))?;
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
    // An entry an interrupted writer left unrecorded is recorded first, so that the head
    // never lags the log by more than one entry (docs/registry.md §6).
    if v.head_count < v.entries.len() as u64 {
        write_head(path, &v.head(), key)?;
    }
    let len = file.metadata().map_err(io("read", path))?.len();
    let line = entry.sign(key);
    append_line(&mut file, len, line.as_bytes()).map_err(io("append to", path))?;
    v.hashes.push(line_hash(line.as_bytes()));
    v.entries.push(entry);
    write_head(path, &v.head(), key)?;
    v.head_count = v.entries.len() as u64;
    Ok(v)
}

/// Removes a torn last line (an interrupted append), and nothing else. Returns the entry
/// number and byte count removed, or `None` if the log was not torn. Any other verification
/// failure is returned unchanged: `repair` never hides tampering.
pub fn repair(path: &Path, key: &IdentityKey) -> Result<Option<(u64, usize)>, RegistryError> {
    let mut file = open_regular(path, OpenOptions::new().read(true).write(true))?;
    FileExt::lock_exclusive(&file).map_err(io("lock", path))?;
    match read_verified(&mut file, path, Some(&key.public()), None) {
        Ok(_) => Ok(None),
        Err(RegistryError::Verify(VerifyError::Torn { entry, bytes })) => {
            let len = file.metadata().map_err(io("read", path))?.len();
            file.cut(len.saturating_sub(bytes as u64))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk with room for `room` more bytes.
    struct Full {
        data: Vec<u8>,
        room: usize,
    }

    impl Write for Full {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(std::io::ErrorKind::StorageFull.into());
            }
            self.data.extend_from_slice(&buf[..n]);
            self.room -= n;
            Ok(n)
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl LogFile for Full {
        fn sync(&mut self) -> std::io::Result<()> {
            Ok(())
        }

        fn cut(&mut self, len: u64) -> std::io::Result<()> {
            self.data.truncate(len as usize);
            Ok(())
        }
    }

    #[test]
    fn an_append_that_fails_part_way_leaves_no_torn_line() {
        let mut log = Full {
            data: b"1 entry\n".to_vec(),
            room: 5,
        };
        let err = append_line(&mut log, 8, b"2 a longer entry\n").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(log.data, b"1 entry\n");
        let mut log = Full {
            data: Vec::new(),
            room: 100,
        };
        append_line(&mut log, 0, b"1 entry\n").unwrap();
        assert_eq!(log.data, b"1 entry\n");
    }
}
