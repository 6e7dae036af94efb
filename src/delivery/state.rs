//! The server's state directory (`secchan server --state-dir DIR`): what each device stream
//! has had written to the sink, kept on disk so that a server that crashes and restarts
//! still drops what it wrote before (docs/delivery.md §4).
//!
//! `DIR/streams.log` is a [`RecordLog`] of `T` records, one per stream each time its state
//! changes; the last one for a stream wins (integers big-endian):
//!
//! ```text
//! fingerprint_len [1] || fingerprint (UTF-8, empty for an anonymous device) || stream [8] ||
//! next [8] || count [4] || ahead [8 * count]
//! ```
//!
//! With a sink that has a position (an output file's length), a `C` record (`checkpoint [8]`)
//! follows each batch's records: at start the server asks the sink for what it holds beyond
//! the last one, written just before a crash that came before the state recorded it.
//!
//! The server appends the records of a batch after the sink has the batch, and fsyncs them
//! before it acknowledges anything of it. At start, and when superseded records make up most
//! of the log, it is rewritten with the streams the server remembers.

use super::log::{encode, RecordLog, StoreError, RECORD_OVERHEAD};
use super::{StreamKey, Streams, MAX_BUFFER};
use std::path::Path;
use std::time::Instant;

const KIND_STREAM_STATE: u8 = b'T';
const KIND_CHECKPOINT: u8 = b'C';
/// Largest record body: a fingerprint, the fixed fields and a full out-of-order set.
const MAX_BODY: u32 = 1 + 255 + 8 + 8 + 4 + 8 * MAX_BUFFER as u32;
/// The log is rewritten once it is this many times the size of the live records (and at
/// least 1 MiB).
const COMPACT_RATIO: u64 = 4;
const COMPACT_MIN: u64 = 1 << 20;

/// An open state directory, locked against other processes.
#[derive(Debug)]
pub struct StateDir {
    log: RecordLog,
    /// Bytes the live streams' records would take, as of the last rewrite.
    live: u64,
    /// The sink's position after the last recorded batch.
    checkpoint: Option<u64>,
}

fn encode_state(key: &StreamKey, next: u64, ahead: &[u64], out: &mut Vec<u8>) {
    let fp = key.0.as_deref().unwrap_or_default().as_bytes();
    let fp = &fp[..fp.len().min(255)];
    let mut body = Vec::with_capacity(1 + fp.len() + 20 + 8 * ahead.len());
    body.push(fp.len() as u8);
    body.extend_from_slice(fp);
    body.extend_from_slice(&key.1);
    body.extend_from_slice(&next.to_be_bytes());
    body.extend_from_slice(&(ahead.len() as u32).to_be_bytes());
    for a in ahead {
        body.extend_from_slice(&a.to_be_bytes());
    }
    encode(KIND_STREAM_STATE, &[&body], out);
}

/// One stream's recorded state.
type Recorded = (StreamKey, u64, Vec<u64>);

fn decode_state(body: &[u8]) -> Option<Recorded> {
    let mut r = crate::codec::Reader::new(body);
    let n = r.u8("fingerprint length").ok()?;
    let fp = r.take(usize::from(n), "fingerprint").ok()?;
    let fp = (n > 0)
        .then(|| String::from_utf8(fp.to_vec()).ok())
        .flatten();
    let stream = r.array("stream").ok()?;
    let next = u64::from_be_bytes(r.array("next").ok()?);
    let count = u32::from_be_bytes(r.array("count").ok()?) as usize;
    let mut ahead = Vec::with_capacity(count.min(MAX_BUFFER));
    for _ in 0..count {
        ahead.push(u64::from_be_bytes(r.array("ahead").ok()?));
    }
    r.finish().ok()?;
    Some(((fp, stream), next, ahead))
}

impl StateDir {
    /// Opens (or creates) the state directory `dir` and restores what it records into
    /// `streams`. Returns the directory and how many bytes of a torn write were discarded.
    pub fn open(
        dir: &Path,
        streams: &mut Streams,
        now: Instant,
    ) -> Result<(Self, u64), StoreError> {
        let (log, contents) = RecordLog::open(dir, "streams.log", MAX_BODY)?;
        let mut discarded = contents.discarded_bytes;
        let mut checkpoint = None;
        for (kind, body) in contents.records {
            match kind {
                KIND_STREAM_STATE => match decode_state(&body) {
                    Some((key, next, ahead)) => streams.restore(&key, next, &ahead, now),
                    None => discarded += RECORD_OVERHEAD + body.len() as u64,
                },
                KIND_CHECKPOINT => match <[u8; 8]>::try_from(body.as_slice()) {
                    Ok(b) => checkpoint = Some(u64::from_be_bytes(b)),
                    Err(_) => discarded += RECORD_OVERHEAD + body.len() as u64,
                },
                _ => discarded += RECORD_OVERHEAD + body.len() as u64,
            }
        }
        let mut state = Self {
            log,
            live: 0,
            checkpoint,
        };
        state.rewrite(streams)?;
        Ok((state, discarded))
    }

    /// The sink's position after the last batch recorded, if the sink has positions.
    pub fn checkpoint(&self) -> Option<u64> {
        self.checkpoint
    }

    /// Appends the current state of each of `keys`, and the sink's position after the batch
    /// (not yet durable).
    pub fn record<'a>(
        &mut self,
        streams: &Streams,
        keys: impl IntoIterator<Item = &'a StreamKey>,
        checkpoint: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        for key in keys {
            if let Some((next, ahead)) = streams.state(key) {
                encode_state(key, next, &ahead, &mut bytes);
            }
        }
        if let Some(c) = checkpoint {
            encode(KIND_CHECKPOINT, &[&c.to_be_bytes()], &mut bytes);
            self.checkpoint = Some(c);
        }
        self.log.append(&bytes)
    }

    /// Makes every recorded state durable (fsync), and rewrites the log if it has grown far
    /// beyond what `streams` holds.
    pub fn sync(&mut self, streams: &Streams) -> Result<(), StoreError> {
        self.log.sync()?;
        if self.log.len() > COMPACT_MIN.max(self.live * COMPACT_RATIO) {
            self.rewrite(streams)?;
        }
        Ok(())
    }

    fn rewrite(&mut self, streams: &Streams) -> Result<(), StoreError> {
        let mut bytes = Vec::new();
        for (key, next, ahead) in streams.states() {
            encode_state(key, next, &ahead, &mut bytes);
        }
        if let Some(c) = self.checkpoint {
            encode(KIND_CHECKPOINT, &[&c.to_be_bytes()], &mut bytes);
        }
        self.log.replace(&bytes)?;
        self.live = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::Verdict;
    use std::time::Duration;

    fn streams() -> Streams {
        Streams::new(100, 1 << 20, Duration::from_secs(3600))
    }

    #[test]
    fn what_was_written_is_still_a_duplicate_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let dev = (Some("SHA256:dev".to_string()), [1; 8]);
        let anon = (None, [2; 8]);
        {
            let mut s = streams();
            let (mut state, _) = StateDir::open(dir.path(), &mut s, now).unwrap();
            for seq in [0, 1, 2, 5] {
                assert_eq!(s.accept(&dev, seq, 0, now), Verdict::New);
            }
            assert_eq!(s.accept(&anon, 0, 0, now), Verdict::New);
            state.record(&s, [&dev, &anon], Some(77)).unwrap();
            state.sync(&s).unwrap();
            // Dropped as by a crash.
        }
        let mut s = streams();
        let (state, discarded) = StateDir::open(dir.path(), &mut s, now).unwrap();
        assert_eq!((discarded, state.checkpoint()), (0, Some(77)));
        for seq in [0, 1, 2, 5] {
            assert_eq!(s.accept(&dev, seq, 0, now), Verdict::Duplicate, "{seq}");
        }
        assert_eq!(s.accept(&dev, 3, 0, now), Verdict::New);
        assert_eq!(s.accept(&anon, 0, 0, now), Verdict::Duplicate);
        assert_eq!(s.ack(&dev), 4);
    }

    #[test]
    fn the_last_record_of_a_stream_wins_and_the_log_is_compacted() {
        let dir = tempfile::tempdir().unwrap();
        let now = Instant::now();
        let key = (Some("SHA256:k".to_string()), [3; 8]);
        let mut s = streams();
        let (mut state, _) = StateDir::open(dir.path(), &mut s, now).unwrap();
        for seq in 0..50_000 {
            s.accept(&key, seq, 0, now);
            state.record(&s, [&key], None).unwrap();
        }
        state.sync(&s).unwrap();
        assert!(
            state.log.len() < COMPACT_MIN,
            "rewritten: {}",
            state.log.len()
        );
        drop(state);
        let mut s = streams();
        StateDir::open(dir.path(), &mut s, now).unwrap();
        assert_eq!(s.ack(&key), 50_000);
    }

    #[test]
    fn malformed_records_are_discarded_and_counted() {
        let mut bytes = Vec::new();
        encode(KIND_STREAM_STATE, &[b"\x05short"], &mut bytes);
        assert!(decode_state(b"\x05short").is_none());
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path()).unwrap();
        std::fs::write(dir.path().join("streams.log"), &bytes).unwrap();
        let mut s = streams();
        let (_, discarded) = StateDir::open(dir.path(), &mut s, Instant::now()).unwrap();
        assert_eq!((discarded, s.len()), (bytes.len() as u64, 0));
    }
}
