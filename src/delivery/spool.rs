//! The device's persistent outbox (`secchan device --spool DIR`): a write-ahead log of every
//! message not yet acknowledged, so that neither `kill -9` nor a power cut loses one, and the
//! next run goes on with the same stream at the next sequence number (docs/delivery.md §3).
//!
//! `DIR/spool.log` is a [`RecordLog`] of these records (integers big-endian):
//!
//! | kind | body | meaning |
//! |---|---|---|
//! | `S` | stream id \[8\] | the stream all later messages belong to (the first record) |
//! | `M` | seq \[8\] \|\| data | a message |
//! | `A` | next \[8\] | every message below `next` was acknowledged, or given up (drop-oldest) |
//!
//! A message is written to the file when it is queued (it survives the process being
//! killed) and the file is fsync'd before the message is first sent (it survives a power
//! cut from the moment a server could have seen it). Acknowledgements are not fsync'd: one
//! lost in a power cut makes the device send a message again, which the server drops as a
//! duplicate. The log is rewritten when acknowledged records make up most of it.

pub use super::log::StoreError as SpoolError;
use super::log::{encode, RecordLog, RECORD_OVERHEAD};
use super::StreamId;
use std::collections::VecDeque;
use std::path::Path;

const KIND_STREAM: u8 = b'S';
const KIND_MESSAGE: u8 = b'M';
const KIND_ACK: u8 = b'A';
/// Largest record body accepted when reading: a message of the largest record payload and
/// its sequence number. Anything longer is damage.
const MAX_BODY: u32 = 8 + crate::record::MAX_PAYLOAD as u32;
/// The log is compacted once acknowledged records take more than this many bytes and more
/// than half of it.
const COMPACT_AFTER: u64 = 1 << 20;

/// What a spool held when it was opened.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The stream the spool's messages belong to.
    pub stream: StreamId,
    /// Every message below this was acknowledged.
    pub acked: u64,
    /// The sequence number the next message gets.
    pub next_seq: u64,
    /// The unacknowledged messages, in sequence order.
    pub messages: Vec<(u64, Vec<u8>)>,
    /// Bytes discarded after a torn or corrupt record.
    pub discarded_bytes: u64,
}

/// An open spool, locked against other processes.
#[derive(Debug)]
pub struct Spool {
    log: RecordLog,
    stream: StreamId,
    /// Bytes of records that only concern acknowledged messages.
    dead: u64,
}

fn seq_of(body: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?))
}

impl Spool {
    /// Opens (or creates, with `new_stream` as its stream) the spool in `dir`, recovering
    /// what it holds. The directory is created with mode 0700.
    pub fn open(
        dir: &Path,
        new_stream: impl FnOnce() -> StreamId,
    ) -> Result<(Self, Recovered), SpoolError> {
        let (log, contents) = RecordLog::open(dir, "spool.log", MAX_BODY)?;
        let mut recovered = Recovered {
            discarded_bytes: contents.discarded_bytes,
            ..Recovered::default()
        };
        let mut messages = VecDeque::new();
        let mut stream = None;
        let mut records = contents.records.into_iter();
        while let Some((kind, body)) = records.next() {
            let ok = match (kind, stream.is_some()) {
                (KIND_STREAM, false) => {
                    stream = body.as_slice().try_into().ok();
                    stream.is_some()
                }
                (KIND_MESSAGE, true) => match seq_of(&body).filter(|s| *s >= recovered.next_seq) {
                    Some(seq) => {
                        recovered.next_seq = seq + 1;
                        messages.push_back((seq, body[8..].to_vec()));
                        true
                    }
                    None => false,
                },
                (KIND_ACK, true) => match seq_of(&body).filter(|n| *n >= recovered.acked) {
                    Some(next) => {
                        // A compacted log has its acknowledgement before any message.
                        recovered.acked = next;
                        recovered.next_seq = recovered.next_seq.max(next);
                        while messages.front().is_some_and(|(s, _)| *s < next) {
                            messages.pop_front();
                        }
                        true
                    }
                    None => false,
                },
                _ => false,
            };
            if !ok {
                if stream.is_none() {
                    return Err(SpoolError::Foreign {
                        path: log.path().to_path_buf(),
                        reason: "it does not start with a stream record",
                    });
                }
                // A record out of order: trust nothing after it.
                let rest: u64 = records.map(|(_, b)| RECORD_OVERHEAD + b.len() as u64).sum();
                recovered.discarded_bytes += RECORD_OVERHEAD + body.len() as u64 + rest;
                break;
            }
        }
        recovered.messages = messages.into();
        let stream = stream.unwrap_or_else(new_stream);
        recovered.stream = stream;
        let mut spool = Self {
            log,
            stream,
            dead: 0,
        };
        // Rewrite at once: a fresh spool gets its stream record, a torn tail goes away, and
        // acknowledged messages leave the file.
        let pending: Vec<(u64, &[u8])> = recovered
            .messages
            .iter()
            .map(|(s, d)| (*s, d.as_slice()))
            .collect();
        spool.compact(recovered.acked, &pending)?;
        Ok((spool, recovered))
    }

    /// The spool's stream.
    pub fn stream(&self) -> StreamId {
        self.stream
    }

    /// Where the log is.
    pub fn path(&self) -> &Path {
        self.log.path()
    }

    /// Appends message `seq` (written at once, fsync'd by the next [`sync`](Self::sync)).
    pub fn append(&mut self, seq: u64, data: &[u8]) -> Result<(), SpoolError> {
        let mut rec = Vec::with_capacity(data.len() + 8 + RECORD_OVERHEAD as usize);
        encode(KIND_MESSAGE, &[&seq.to_be_bytes(), data], &mut rec);
        self.log.append(&rec)
    }

    /// Makes every appended message durable (fsync), if any was appended since the last call.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        self.log.sync()
    }

    /// Records that every message below `next` is done with (acknowledged or given up),
    /// which frees `freed` bytes of the log. Not fsync'd (see the module documentation).
    pub fn ack(&mut self, next: u64, freed: u64) -> Result<(), SpoolError> {
        let mut rec = Vec::with_capacity(8 + RECORD_OVERHEAD as usize);
        encode(KIND_ACK, &[&next.to_be_bytes()], &mut rec);
        self.dead += freed + rec.len() as u64;
        self.log.append(&rec)
    }

    /// Whether records about acknowledged messages make up most of the log.
    pub fn wants_compaction(&self) -> bool {
        self.dead > COMPACT_AFTER && self.dead * 2 > self.log.len()
    }

    /// Rewrites the log to hold only `pending`, the messages still unacknowledged at `acked`.
    pub fn compact(&mut self, acked: u64, pending: &[(u64, &[u8])]) -> Result<(), SpoolError> {
        let mut bytes = Vec::new();
        encode(KIND_STREAM, &[&self.stream], &mut bytes);
        encode(KIND_ACK, &[&acked.to_be_bytes()], &mut bytes);
        for (seq, data) in pending {
            encode(KIND_MESSAGE, &[&seq.to_be_bytes(), data], &mut bytes);
        }
        self.log.replace(&bytes)?;
        self.dead = 0;
        Ok(())
    }

    /// Bytes a message of `data_len` bytes takes in the log.
    pub fn record_len(data_len: usize) -> u64 {
        RECORD_OVERHEAD + 8 + data_len as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: StreamId = [7; 8];

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    #[test]
    fn messages_survive_a_reopen_and_acks_remove_them() {
        let d = dir();
        {
            let (mut s, r) = Spool::open(d.path(), || S).unwrap();
            assert_eq!(
                r,
                Recovered {
                    stream: S,
                    ..Recovered::default()
                }
            );
            for seq in 0..5u64 {
                s.append(seq, format!("m{seq}").as_bytes()).unwrap();
            }
            s.sync().unwrap();
            s.ack(2, 0).unwrap();
        }
        let (_s, r) = Spool::open(d.path(), || [9; 8]).unwrap();
        assert_eq!(r.stream, S, "the stream is kept, not drawn again");
        assert_eq!((r.acked, r.next_seq, r.discarded_bytes), (2, 5, 0));
        let seqs: Vec<u64> = r.messages.iter().map(|m| m.0).collect();
        assert_eq!(seqs, [2, 3, 4]);
        assert_eq!(r.messages[0].1, b"m2");
    }

    #[test]
    fn a_torn_tail_is_discarded_and_counted() {
        let d = dir();
        {
            let (mut s, _) = Spool::open(d.path(), || S).unwrap();
            s.append(0, b"whole").unwrap();
            s.append(1, b"torn").unwrap();
        }
        let log = d.path().join("spool.log");
        let len = std::fs::metadata(&log).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(len - 3).unwrap();
        drop(f);
        let (_s, r) = Spool::open(d.path(), || S).unwrap();
        assert_eq!(r.messages, vec![(0, b"whole".to_vec())]);
        assert_eq!(r.discarded_bytes, Spool::record_len(4) - 3);
        assert_eq!(r.next_seq, 1, "the torn message's number is given again");
    }

    #[test]
    fn a_flipped_byte_ends_what_is_trusted() {
        let d = dir();
        {
            let (mut s, _) = Spool::open(d.path(), || S).unwrap();
            for seq in 0..3u64 {
                s.append(seq, b"data").unwrap();
            }
        }
        let log = d.path().join("spool.log");
        let mut bytes = std::fs::read(&log).unwrap();
        let second = bytes.len() - 2 * Spool::record_len(4) as usize;
        bytes[second + 10] ^= 1;
        std::fs::write(&log, &bytes).unwrap();
        let (_s, r) = Spool::open(d.path(), || S).unwrap();
        assert_eq!(r.messages.len(), 1);
        assert_eq!(r.discarded_bytes, 2 * Spool::record_len(4));
    }

    #[test]
    fn a_second_process_cannot_open_it() {
        let d = dir();
        let _first = Spool::open(d.path(), || S).unwrap();
        assert!(matches!(
            Spool::open(d.path(), || S),
            Err(SpoolError::Locked(_))
        ));
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let d = dir();
        std::fs::create_dir_all(d.path()).unwrap();
        let mut rec = Vec::new();
        encode(KIND_MESSAGE, &[&0u64.to_be_bytes(), b"x"], &mut rec);
        std::fs::write(d.path().join("spool.log"), &rec).unwrap();
        assert!(matches!(
            Spool::open(d.path(), || S),
            Err(SpoolError::Foreign { .. })
        ));
    }

    #[test]
    fn compaction_keeps_only_pending_messages() {
        let d = dir();
        let big = vec![0u8; 16 * 1024];
        let (mut s, _) = Spool::open(d.path(), || S).unwrap();
        let n = (COMPACT_AFTER / big.len() as u64) + 4;
        for seq in 0..n {
            s.append(seq, &big).unwrap();
        }
        s.ack(n - 1, (n - 1) * Spool::record_len(big.len()))
            .unwrap();
        assert!(s.wants_compaction());
        s.compact(n - 1, &[(n - 1, big.as_slice())]).unwrap();
        let len = std::fs::metadata(d.path().join("spool.log")).unwrap().len();
        assert!(
            len < 2 * Spool::record_len(big.len()),
            "compacted to {len} bytes"
        );
        drop(s);
        let (_s, r) = Spool::open(d.path(), || S).unwrap();
        assert_eq!((r.acked, r.next_seq, r.messages.len()), (n - 1, n, 1));
    }
}
