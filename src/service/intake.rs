//! The server half of delivery (protocol.md §11.3), the same for every transport: one task
//! owns the duplicate filter, the sink and the state directory. Sessions submit what their
//! devices sent; the task drops what was written before, writes the rest to the sink in
//! batches, records the new state (fsync), and only then tells each session how far each of
//! its streams is acknowledged.

use super::latency::Latency;
use super::sink::{Sink, SinkError, SinkRecord};
use crate::delivery::state::StateDir;
use crate::delivery::{StreamKey, Streams, Verdict};
use crate::throttle::{warn_dropped, Throttle};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most submissions handled in one batch (one sink write, one fsync).
const MAX_BATCH: usize = 4096;
/// Submissions queued at most before sessions wait (and stop reading their devices).
const QUEUE: usize = 16 * 1024;
/// First pause before a failed batch is written again; it doubles up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// What a session hears back: how many of its submissions were handled, and the new
/// cumulative acknowledgement of each stream they touched.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AckUpdate {
    /// Submissions of this session handled in the batch.
    pub handled: usize,
    /// `(stream, next)`: every message of the stream below `next` is written.
    pub acks: Vec<(StreamKey, u64)>,
}

/// Where a session receives its [`AckUpdate`]s.
pub type AckReceiver = mpsc::UnboundedReceiver<AckUpdate>;

/// A session's side of the intake.
#[derive(Debug)]
pub struct IntakeSession {
    id: u64,
    queue: mpsc::Sender<Submission>,
    acks: mpsc::UnboundedSender<AckUpdate>,
}

#[derive(Debug)]
struct Submission {
    session: u64,
    acks: mpsc::UnboundedSender<AckUpdate>,
    record: SinkRecord,
    /// The device's base: every message below it counts as written.
    base: u64,
    /// When it reached the intake.
    arrived: Instant,
}

/// The intake stopped: the sink failed for good.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server's output failed: messages are no longer written")]
pub struct IntakeClosed;

impl IntakeSession {
    /// Resolves once the intake has stopped (its sink failed for good).
    pub async fn closed(&self) {
        self.queue.closed().await
    }

    /// Submits one message; waits while the intake's queue is full.
    pub async fn submit(&self, record: SinkRecord, base: u64) -> Result<(), IntakeClosed> {
        self.queue
            .send(Submission {
                session: self.id,
                acks: self.acks.clone(),
                record,
                base,
                arrived: Instant::now(),
            })
            .await
            .map_err(|_| IntakeClosed)
    }
}

/// A handle to the intake task: gives each session its [`IntakeSession`].
#[derive(Debug, Clone)]
pub struct Intake {
    queue: mpsc::Sender<Submission>,
    next_id: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stats: std::sync::Arc<std::sync::Mutex<IntakeStats>>,
}

impl Intake {
    /// The counters so far (as of the last batch written), e.g. for metrics.
    pub fn stats(&self) -> IntakeStats {
        *self.stats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session's handle and the receiver of its acknowledgements.
    pub fn session(&self) -> (IntakeSession, AckReceiver) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (acks, rx) = mpsc::unbounded_channel();
        (
            IntakeSession {
                id,
                queue: self.queue.clone(),
                acks,
            },
            rx,
        )
    }
}

/// Counters of the intake.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IntakeStats {
    /// Messages written to the sink.
    pub written: u64,
    /// Messages already written before (resent by a device): dropped and acknowledged.
    pub duplicates: u64,
    /// Messages too far ahead of their stream's acknowledged point: dropped unacknowledged.
    pub too_far_ahead: u64,
}

/// The task's state.
struct Task {
    sink: Box<dyn Sink>,
    streams: Streams,
    state: Option<StateDir>,
    stats: IntakeStats,
    throttle: Throttle,
    /// `stats`, for [`Intake::stats`], after each batch.
    shared: std::sync::Arc<std::sync::Mutex<IntakeStats>>,
    /// Told how long each message written took.
    latency: Option<Arc<dyn Latency>>,
}

/// Counts, at start, the messages the sink held beyond the state's last checkpoint: written
/// just before a crash, before the state recorded them. They count as written, so that they
/// are not written again, and the state records them at once.
pub fn recover(
    sink: &mut dyn Sink,
    streams: &mut Streams,
    state: &mut StateDir,
) -> Result<usize, SinkError> {
    let Some(checkpoint) = state.checkpoint() else {
        return Ok(0);
    };
    let found = sink.recover(checkpoint)?;
    let now = Instant::now();
    for (key, seq) in &found {
        streams.accept(key, *seq, 0, now);
    }
    let keys: Vec<&StreamKey> = found.iter().map(|(k, _)| k).collect();
    state
        .record(streams, keys, sink.checkpoint())
        .and_then(|()| state.sync(streams))
        .map_err(|e| SinkError {
            target: "the state directory".into(),
            source: std::io::Error::other(e.to_string()),
            retryable: false,
        })?;
    Ok(found.len())
}

/// What [`start`] returns: the handle, and the task with its final counters.
pub type Started = (
    Intake,
    tokio::task::JoinHandle<Result<IntakeStats, SinkError>>,
);

/// Starts the intake: `streams` is the duplicate filter (restored from `state` if given).
/// The task ends when every [`Intake`] and [`IntakeSession`] is dropped and the queue is
/// empty, or with the sink's error if it fails for good.
pub fn start(sink: Box<dyn Sink>, streams: Streams, state: Option<StateDir>) -> Started {
    start_observed(sink, streams, state, None)
}

/// [`start`], telling `latency` how long each message took from its submission to its being
/// written and acknowledged.
pub fn start_observed(
    sink: Box<dyn Sink>,
    streams: Streams,
    state: Option<StateDir>,
    latency: Option<Arc<dyn Latency>>,
) -> Started {
    let (queue, rx) = mpsc::channel(QUEUE);
    let task = Task {
        sink,
        streams,
        state,
        stats: IntakeStats::default(),
        throttle: Throttle::default(),
        shared: Default::default(),
        latency,
    };
    let stats = task.shared.clone();
    let handle = tokio::spawn(task.run(rx));
    (
        Intake {
            queue,
            next_id: Default::default(),
            stats,
        },
        handle,
    )
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Submission>) -> Result<IntakeStats, SinkError> {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
            self.handle(&mut batch).await?;
            batch.clear();
            *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = self.stats;
        }
        Ok(self.stats)
    }

    /// Sorts a batch, writes its new messages, records the state, and acknowledges.
    async fn handle(&mut self, batch: &mut [Submission]) -> Result<(), SinkError> {
        let now = Instant::now();
        let mut fresh = Vec::with_capacity(batch.len());
        let mut arrived = Vec::with_capacity(batch.len());
        // Per session: its sender, how many it submitted, and the streams touched.
        let mut touched: HashMap<u64, (mpsc::UnboundedSender<AckUpdate>, usize, Vec<StreamKey>)> =
            HashMap::new();
        for s in batch.iter() {
            let key: StreamKey = (
                s.record.origin.device.identity.map(|i| i.fingerprint()),
                s.record.stream,
            );
            match self.streams.accept(&key, s.record.seq, s.base, now) {
                Verdict::New => {
                    fresh.push(s.record.clone());
                    arrived.push(s.arrived);
                }
                Verdict::Duplicate => self.stats.duplicates += 1,
                Verdict::TooFarAhead => {
                    self.stats.too_far_ahead += 1;
                    warn_dropped!(self.throttle, device = %s.record.origin.device.name, seq = s.record.seq, "message too far ahead of its stream's acknowledged point: dropped, the device sends it again");
                }
            }
            let entry = touched
                .entry(s.session)
                .or_insert_with(|| (s.acks.clone(), 0, Vec::new()));
            entry.1 += 1;
            if !entry.2.contains(&key) {
                entry.2.push(key);
            }
        }
        self.write(&fresh).await?;
        self.stats.written += fresh.len() as u64;
        if let Some(state) = &mut self.state {
            let keys = touched.values().flat_map(|t| t.2.iter());
            let recorded = state
                .record(&self.streams, keys, self.sink.checkpoint())
                .and_then(|()| state.sync(&self.streams));
            if let Err(e) = recorded {
                // Nothing of this batch is acknowledged: devices send it again, and a
                // restarted server writes it again (the state did not record it).
                tracing::error!(error = %e, "cannot record the state directory: stopping");
                return Err(SinkError {
                    target: "the state directory".into(),
                    source: std::io::Error::other(e.to_string()),
                    retryable: false,
                });
            }
        }
        // Timed before the acknowledgements go out: whoever sees one sees its time counted.
        if let Some(latency) = &self.latency {
            let done = Instant::now();
            for a in arrived {
                latency.written(done.saturating_duration_since(a));
            }
        }
        for (tx, handled, keys) in touched.into_values() {
            let acks = keys
                .into_iter()
                .map(|k| {
                    let next = self.streams.ack(&k);
                    (k, next)
                })
                .collect();
            // A session that ended meanwhile no longer listens.
            let _ = tx.send(AckUpdate { handled, acks });
        }
        self.streams.expire(now);
        Ok(())
    }

    /// Writes `records` to the sink, trying again with back-off while it fails in a way
    /// that may pass. Nothing is acknowledged meanwhile: devices keep the messages.
    async fn write(&mut self, records: &[SinkRecord]) -> Result<(), SinkError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut pause = RETRY_FIRST;
        let mut failures = 0u64;
        let started = Instant::now();
        loop {
            match self.sink.write(records).await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(attempts = failures + 1, after = ?started.elapsed(), "output available again: writing and acknowledging");
                    }
                    return Ok(());
                }
                Err(e) if e.retryable => {
                    // One line when the output goes away; every later attempt at debug level.
                    if failures == 0 {
                        tracing::warn!(error = %e, "output unavailable: trying again with back-off (up to every {} s); nothing is acknowledged meanwhile and devices keep their messages", RETRY_MAX.as_secs());
                    } else {
                        tracing::debug!(error = %e, retry_in = ?pause, "output still unavailable");
                    }
                    failures += 1;
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sink::{Origin, SinkFuture};
    use super::*;
    use crate::handshake::server::PeerDevice;
    use bytes::Bytes;
    use std::sync::{Arc, Mutex};

    /// Records every batch; fails the first `fail` writes (retryably).
    #[derive(Clone, Default)]
    struct Memory {
        written: Arc<Mutex<Vec<u64>>>,
        fail: Arc<Mutex<usize>>,
    }

    impl Sink for Memory {
        fn write<'a>(&'a mut self, batch: &'a [SinkRecord]) -> SinkFuture<'a> {
            Box::pin(async move {
                let mut fail = self.fail.lock().unwrap();
                if *fail > 0 {
                    *fail -= 1;
                    return Err(SinkError {
                        target: "memory".into(),
                        source: std::io::Error::other("down"),
                        retryable: true,
                    });
                }
                self.written
                    .lock()
                    .unwrap()
                    .extend(batch.iter().map(|r| r.seq));
                Ok(())
            })
        }
    }

    fn record(seq: u64) -> SinkRecord {
        SinkRecord {
            origin: Arc::new(Origin {
                device: PeerDevice {
                    identity: None,
                    name: "anon".into(),
                },
                peer: "p".into(),
                suite: "X25519",
                aead: "AES-256-GCM",
            }),
            stream: [5; 8],
            seq,
            data: Bytes::from_static(b"x"),
            received: std::time::SystemTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn each_message_is_written_once_and_acknowledged_after_the_write() {
        let sink = Memory::default();
        *sink.fail.lock().unwrap() = 2;
        let streams = Streams::new(10, 100, Duration::from_secs(60));
        let (intake, task) = start(Box::new(sink.clone()), streams, None);
        let (session, mut acks) = intake.session();
        for seq in [0, 1, 1, 2, 0] {
            session.submit(record(seq), 0).await.unwrap();
        }
        let mut handled = 0;
        let mut last = 0;
        while handled < 5 {
            let u = acks.recv().await.unwrap();
            handled += u.handled;
            last = u.acks.last().map_or(last, |a| a.1);
            assert!(u.acks.iter().all(|(k, _)| *k == (None, [5; 8])));
        }
        assert_eq!(last, 3);
        assert_eq!(
            *sink.written.lock().unwrap(),
            [0, 1, 2],
            "failed writes were retried"
        );
        drop((intake, session));
        let stats = task.await.unwrap().unwrap();
        assert_eq!((stats.written, stats.duplicates), (3, 2));
    }

    /// Counts the writes it is told of.
    #[derive(Debug, Default)]
    struct Writes(Mutex<usize>);

    impl Latency for Writes {
        fn handshake(&self, _: bool, _: Duration) {}
        fn written(&self, _: Duration) {
            *self.0.lock().unwrap() += 1;
        }
    }

    #[tokio::test]
    async fn each_message_written_is_timed_once_and_duplicates_are_not() {
        let writes = Arc::new(Writes::default());
        let streams = Streams::new(10, 100, Duration::from_secs(60));
        let (intake, task) = start_observed(
            Box::new(Memory::default()),
            streams,
            None,
            Some(writes.clone()),
        );
        let (session, mut acks) = intake.session();
        for seq in [0, 1, 1, 2] {
            session.submit(record(seq), 0).await.unwrap();
        }
        let mut handled = 0;
        while handled < 4 {
            handled += acks.recv().await.unwrap().handled;
        }
        drop((intake, session));
        task.await.unwrap().unwrap();
        assert_eq!(*writes.0.lock().unwrap(), 3);
    }
}
