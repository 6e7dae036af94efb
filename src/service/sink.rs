//! Where a server puts what devices send: a [`Sink`]. A message is acknowledged to its
//! device only after the sink reports it written (protocol.md §11.3), so a sink's `write`
//! returns only once the batch is as durable as that sink can make it.
//!
//! [`JsonLines`] is the default: one JSON line per message on stdout, and with `--out FILE`
//! appended to FILE as well (created with mode 0600: telemetry can be private).

use crate::delivery::{StreamId, StreamKey};
use crate::handshake::server::PeerDevice;
use base64::Engine;
use bytes::Bytes;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::io::AsyncWriteExt;

/// Where a session's messages come from, shared by all of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The authorized device.
    pub device: PeerDevice,
    /// Its address (TCP) or session (MQTT).
    pub peer: String,
    /// Suite name.
    pub suite: &'static str,
    /// AEAD name.
    pub aead: &'static str,
}

/// One message for the sink.
#[derive(Debug, Clone)]
pub struct SinkRecord {
    /// The session it arrived in.
    pub origin: Arc<Origin>,
    /// The device's stream.
    pub stream: StreamId,
    /// Its position in the stream.
    pub seq: u64,
    /// The message.
    pub data: Bytes,
    /// When the server received it.
    pub received: SystemTime,
}

/// A sink failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the output to {target}: {source}")]
pub struct SinkError {
    /// What was written to.
    pub target: String,
    /// Why it failed.
    pub source: std::io::Error,
    /// Whether trying the same batch again later may succeed (a database that is down), or
    /// the sink is gone for good (stdout closed).
    pub retryable: bool,
}

/// A future a sink returns.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// A destination for messages. `write` returns once every record of the batch is written
/// as durably as the sink can make it; only then are the records acknowledged.
pub trait Sink: Send {
    /// Writes a batch, in order.
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a>;

    /// After a write: a position in the sink (the length of an output file) the server's
    /// state directory records with the batch, if the sink has one.
    fn checkpoint(&self) -> Option<u64> {
        None
    }

    /// At start, with the last checkpoint the state directory recorded: the messages the sink
    /// holds beyond it, written just before a crash that came before the state recorded
    /// them, so that they are not written again.
    fn recover(&mut self, _checkpoint: u64) -> Result<Vec<(StreamKey, u64)>, SinkError> {
        Ok(Vec::new())
    }
}

/// One message as printed: `data` if it is UTF-8, `data_base64` otherwise.
#[derive(serde::Serialize)]
struct MessageLine<'a> {
    device: &'a str,
    fingerprint: Option<String>,
    peer: &'a str,
    suite: &'static str,
    aead: &'static str,
    stream: String,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// Renders one message as a JSON line (without the newline).
pub fn json_line(record: &SinkRecord) -> String {
    let text = std::str::from_utf8(&record.data).ok();
    let o = &record.origin;
    let line = MessageLine {
        device: &o.device.name,
        fingerprint: o.device.identity.map(|i| i.fingerprint()),
        peer: &o.peer,
        suite: o.suite,
        aead: o.aead,
        stream: hex::encode(record.stream),
        seq: record.seq,
        data: text,
        data_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(&record.data)),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// Where [`JsonLines`] prints: stdout, or another writer (benchmarks).
pub type LineWriter = Pin<Box<dyn tokio::io::AsyncWrite + Send>>;

/// JSON lines on stdout, and appended to a file if one is given.
pub struct JsonLines {
    stdout: LineWriter,
    file: Option<(PathBuf, std::fs::File)>,
    /// The file's length after the last write.
    file_len: u64,
    /// Whether the file is fsync'd after every batch (with a state directory, so that what
    /// the state records as written is on disk).
    durable: bool,
}

impl std::fmt::Debug for JsonLines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLines")
            .field("file", &self.file.as_ref().map(|(p, _)| p))
            .field("durable", &self.durable)
            .finish()
    }
}

impl JsonLines {
    /// Stdout, plus `path` opened for appending (mode 0600 when created). With `durable`,
    /// the file is fsync'd after every batch.
    pub fn open(path: Option<&Path>, durable: bool) -> Result<Self, SinkError> {
        Self::open_with(Box::pin(tokio::io::stdout()), path, durable)
    }

    /// [`open`](Self::open), printing to `stdout` instead of the process's stdout.
    pub fn open_with(
        stdout: LineWriter,
        path: Option<&Path>,
        durable: bool,
    ) -> Result<Self, SinkError> {
        let file = match path {
            None => None,
            Some(path) => {
                let mut options = std::fs::OpenOptions::new();
                options.create(true).append(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                let f = options.open(path).map_err(|source| SinkError {
                    target: path.display().to_string(),
                    source,
                    retryable: false,
                })?;
                Some((path.to_path_buf(), f))
            }
        };
        let file_len = match &file {
            Some((path, f)) => f.metadata().map(|m| m.len()).map_err(|source| SinkError {
                target: path.display().to_string(),
                source,
                retryable: false,
            })?,
            None => 0,
        };
        Ok(Self {
            stdout,
            file,
            file_len,
            durable,
        })
    }

    async fn write_batch(&mut self, batch: &[SinkRecord]) -> Result<(), SinkError> {
        let mut bytes = Vec::with_capacity(batch.len() * 128);
        for record in batch {
            bytes.extend_from_slice(json_line(record).as_bytes());
            bytes.push(b'\n');
        }
        let stdout_failed = |source| SinkError {
            target: "stdout".into(),
            source,
            retryable: false,
        };
        self.stdout.write_all(&bytes).await.map_err(stdout_failed)?;
        self.stdout.flush().await.map_err(stdout_failed)?;
        if let Some((path, f)) = &mut self.file {
            let durable = self.durable;
            // A batch is small: a blocking append is shorter than a hand-off to a thread.
            f.write_all(&bytes)
                .and_then(|()| f.flush())
                .and_then(|()| if durable { f.sync_data() } else { Ok(()) })
                .map_err(|source| SinkError {
                    target: path.display().to_string(),
                    source,
                    retryable: false,
                })?;
            self.file_len += bytes.len() as u64;
        }
        Ok(())
    }

    /// The messages of the file's lines after `checkpoint`. A last line cut short (a crash
    /// inside a write) is removed from the file: its message was not acknowledged, and is
    /// written again when its device sends it again.
    fn recover_file(&mut self, checkpoint: u64) -> std::io::Result<Vec<(StreamKey, u64)>> {
        use std::io::{BufRead, Seek};
        let Some((path, f)) = &mut self.file else {
            return Ok(Vec::new());
        };
        let mut reader = std::io::BufReader::new(std::fs::File::open(&*path)?);
        reader.seek(std::io::SeekFrom::Start(checkpoint.min(self.file_len)))?;
        let mut found = Vec::new();
        let mut pos = checkpoint.min(self.file_len);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                tracing::warn!(file = %path.display(), bytes = n, "removing a line cut short by a crash");
                f.set_len(pos)?;
                self.file_len = pos;
                break;
            }
            pos += n as u64;
            if let Some(key) = written_message(&line) {
                found.push(key);
            }
        }
        Ok(found)
    }
}

/// The stream key and sequence number of one of our JSON lines.
fn written_message(line: &[u8]) -> Option<(StreamKey, u64)> {
    #[derive(serde::Deserialize)]
    struct Written {
        fingerprint: Option<String>,
        stream: String,
        seq: u64,
    }
    let w: Written = serde_json::from_slice(line).ok()?;
    let stream = hex::decode(&w.stream).ok()?.try_into().ok()?;
    Some(((w.fingerprint, stream), w.seq))
}

impl Sink for JsonLines {
    fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        Box::pin(self.write_batch(batch))
    }

    fn checkpoint(&self) -> Option<u64> {
        self.file.as_ref().map(|_| self.file_len)
    }

    fn recover(&mut self, checkpoint: u64) -> Result<Vec<(StreamKey, u64)>, SinkError> {
        self.recover_file(checkpoint).map_err(|source| SinkError {
            target: self
                .file
                .as_ref()
                .map_or_else(String::new, |(p, _)| p.display().to_string()),
            source,
            retryable: false,
        })
    }
}

/// A sink that keeps nothing: for benchmarks that measure the transport.
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl Sink for Discard {
    fn write<'a>(&'a mut self, _batch: &'a [SinkRecord]) -> SinkFuture<'a> {
        Box::pin(std::future::ready(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::identity::IdentityKey;

    fn record(data: &'static [u8]) -> SinkRecord {
        SinkRecord {
            origin: Arc::new(Origin {
                device: PeerDevice {
                    identity: Some(IdentityKey::from_seed(&[3; 32]).public()),
                    name: "sensor-1".into(),
                },
                peer: "192.0.2.1:5000".into(),
                suite: "X25519MLKEM768",
                aead: "AES-256-GCM",
            }),
            stream: [0xab; 8],
            seq: 7,
            data: Bytes::from_static(data),
            received: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn every_line_names_the_device_stream_and_sequence() {
        let v: serde_json::Value = serde_json::from_str(&json_line(&record(b"{\"t\":1}"))).unwrap();
        assert_eq!(v["device"], "sensor-1");
        assert_eq!(v["stream"], "abababababababab");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["data"], "{\"t\":1}");
        assert!(v["fingerprint"].as_str().unwrap().starts_with("SHA256:"));
        let v: serde_json::Value = serde_json::from_str(&json_line(&record(b"\xff\x00"))).unwrap();
        assert_eq!(v["data_base64"], "/wA=");
        assert!(v.get("data").is_none());
    }

    #[test]
    fn lines_beyond_a_checkpoint_are_recovered_and_a_torn_one_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let a = json_line(&record(b"a"));
        let b = json_line(&SinkRecord {
            seq: 8,
            ..record(b"b")
        });
        std::fs::write(&path, format!("{a}\n{b}\n{{\"device\":\"tor")).unwrap();
        let mut sink = JsonLines::open(Some(&path), true).unwrap();
        let checkpoint = a.len() as u64 + 1;
        let found = sink.recover(checkpoint).unwrap();
        let fp = IdentityKey::from_seed(&[3; 32]).public().fingerprint();
        assert_eq!(found, vec![((Some(fp), [0xab; 8]), 8)]);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.ends_with(&format!("{b}\n")),
            "the torn line is gone: {text:?}"
        );
        assert_eq!(sink.checkpoint(), Some(text.len() as u64));
    }
}
