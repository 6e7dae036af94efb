//! A crash-safe record log in a private directory: what the device's spool and the server's
//! state directory are made of (docs/delivery.md §3, §4).
//!
//! The log is a sequence of records, each `kind [1] || length [4] || body || crc32 [4]` (the
//! CRC-32 of kind, length and body; integers big-endian). Records are appended; reading stops
//! at the first record that is cut short or fails its CRC (a write torn by a crash), and what
//! follows is discarded and counted. [`RecordLog::replace`] rewrites the whole log atomically
//! (temporary file, fsync, rename, fsync of the directory). The directory is created with
//! mode 0700, the log with 0600, and an advisory lock keeps a second process out.

use fs4::fs_std::FileExt;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes around a record's body: kind, length, CRC.
pub const RECORD_OVERHEAD: u64 = 1 + 4 + 4;

/// Why a log could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: cannot {action}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process has the directory open.
    #[error("{0} is in use by another secchan process; give each process its own directory")]
    Locked(PathBuf),
    /// The file was not written by secchan, or by another kind of secchan store.
    #[error(
        "{path}: {reason}; it was not written by this secchan store (move it away to start afresh)"
    )]
    Foreign {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Maps an I/O error to a [`StoreError`] naming the action and the file.
pub fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Appends one record of `kind` whose body is the concatenation of `parts` to `out`.
pub fn encode(kind: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
    let start = out.len();
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.push(kind);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// Reads the next record; `None` at the end or at a torn or corrupt record, or one whose
/// body is longer than `max_body`.
fn read_record(r: &mut impl Read, max_body: u32) -> Option<(u8, Vec<u8>)> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).ok()?;
    let len = u32::from_be_bytes(head[1..5].try_into().ok()?);
    if len > max_body {
        return None;
    }
    // Never allocate for bytes that are not in the file: read through `take`.
    let mut body = Vec::new();
    r.take(u64::from(len)).read_to_end(&mut body).ok()?;
    let mut crc = [0u8; 4];
    if body.len() != len as usize || r.read_exact(&mut crc).is_err() {
        return None;
    }
    let mut h = crc32fast::Hasher::new();
    h.update(&head);
    h.update(&body);
    (h.finalize() == u32::from_be_bytes(crc)).then_some((head[0], body))
}

/// Creates `dir` (mode 0700 on Unix) if it does not exist.
pub fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(io("create", dir))
}

/// An open log, locked against other processes.
#[derive(Debug)]
pub struct RecordLog {
    path: PathBuf,
    file: File,
    /// Holds the advisory lock on `DIR/lock` while the log is open.
    _lock: File,
    /// Bytes in the log.
    len: u64,
    /// Whether anything was appended since the last fsync.
    unsynced: bool,
}

/// What [`RecordLog::open`] read.
#[derive(Debug)]
pub struct Contents {
    /// The intact records, in order.
    pub records: Vec<(u8, Vec<u8>)>,
    /// Bytes after the last intact record (a torn write, or damage), not read.
    pub discarded_bytes: u64,
}

impl RecordLog {
    /// Opens (creating it and `dir` if needed) the log `dir/name`, locks `dir`, and reads its
    /// intact records. Records with a body over `max_body` bytes count as damage.
    pub fn open(dir: &Path, name: &str, max_body: u32) -> Result<(Self, Contents), StoreError> {
        create_private_dir(dir)?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        if !FileExt::try_lock_exclusive(&lock).map_err(io("lock", &lock_path))? {
            return Err(StoreError::Locked(dir.to_path_buf()));
        }
        let path = dir.join(name);
        let file = Self::open_append(&path)?;
        let size = file.metadata().map_err(io("read", &path))?.len();
        let mut records = Vec::new();
        let mut good = 0u64;
        let mut reader = BufReader::new(&file);
        while let Some((kind, body)) = read_record(&mut reader, max_body) {
            good += RECORD_OVERHEAD + body.len() as u64;
            records.push((kind, body));
        }
        let log = Self {
            path,
            file,
            _lock: lock,
            len: good,
            unsynced: false,
        };
        Ok((
            log,
            Contents {
                records,
                discarded_bytes: size - good,
            },
        ))
    }

    fn open_append(path: &Path) -> Result<File, StoreError> {
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options.open(path).map_err(io("open", path))
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes in the log.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends encoded records (written at once; durable after [`sync`](Self::sync)).
    pub fn append(&mut self, records: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(records)
            .map_err(io("write", &self.path))?;
        self.len += records.len() as u64;
        self.unsynced = true;
        Ok(())
    }

    /// Makes every appended record durable (fsync), if anything was appended since the last
    /// call.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        if self.unsynced {
            self.file.sync_data().map_err(io("fsync", &self.path))?;
            self.unsynced = false;
        }
        Ok(())
    }

    /// Replaces the whole log with `records` (encoded), atomically and durably.
    pub fn replace(&mut self, records: &[u8]) -> Result<(), StoreError> {
        let tmp = self.path.with_extension("tmp");
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut f = options.open(&tmp).map_err(io("create", &tmp))?;
        f.write_all(records).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        std::fs::rename(&tmp, &self.path).map_err(io("rename", &tmp))?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("fsync", dir))?;
        }
        self.file = Self::open_append(&self.path)?;
        self.len = records.len() as u64;
        self.unsynced = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_a_reopen_and_a_torn_tail_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode(b'x', &[b"one"], &mut bytes);
        encode(b'y', &[b"tw", b"o"], &mut bytes);
        {
            let (mut log, c) = RecordLog::open(dir.path(), "t.log", 64).unwrap();
            assert!(c.records.is_empty() && log.is_empty());
            log.append(&bytes).unwrap();
            log.sync().unwrap();
            log.append(&bytes[..5]).unwrap();
        }
        let (log, c) = RecordLog::open(dir.path(), "t.log", 64).unwrap();
        assert_eq!(
            c.records,
            vec![(b'x', b"one".to_vec()), (b'y', b"two".to_vec())]
        );
        assert_eq!((c.discarded_bytes, log.len()), (5, bytes.len() as u64));
    }

    #[test]
    fn a_second_process_is_locked_out_and_oversize_bodies_are_damage() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = RecordLog::open(dir.path(), "t.log", 2).unwrap();
        assert!(matches!(
            RecordLog::open(dir.path(), "t.log", 2),
            Err(StoreError::Locked(_))
        ));
        let mut bytes = Vec::new();
        encode(b'x', &[b"long"], &mut bytes);
        log.append(&bytes).unwrap();
        drop(log);
        let (_, c) = RecordLog::open(dir.path(), "t.log", 2).unwrap();
        assert_eq!(
            (c.records.len(), c.discarded_bytes),
            (0, bytes.len() as u64)
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_directory_and_the_log_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("store");
        let (mut log, _) = RecordLog::open(&dir, "t.log", 8).unwrap();
        log.replace(b"").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(log.path()), 0o600);
    }
}
