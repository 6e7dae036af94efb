//! A secchan device on MQTT. A background task keeps a session with one server instance,
//! resumes it after a broker reconnect, starts a new one when the server stops
//! acknowledging, and keeps every message in a bounded buffer until it is acknowledged.
//!
//! Anyone who may publish on the broker can publish on the device's down topic, so nothing
//! unauthenticated that arrives there decides anything on its own: the device tries every
//! ServerHello until one verifies and is trusted, and a handshake that fails with nothing
//! authenticated to show for it (no server, an untrusted key, a plaintext refusal) is tried
//! again with backoff, the buffer kept; the device gives up only on a refusal in an
//! authenticated Close record, or after [`DeviceOptions::handshake_attempts`] failed
//! handshakes in a row (docs/mqtt.md §4, §5).
//!
//! - `task`: the background task: the run loop, records and acknowledgements.
//! - `handshake`: starting a handshake, ServerHellos and alerts, retries.

mod handshake;
mod task;

use super::link::{Link, PayloadBytes};
use super::{Broker, MqttError};
use crate::crypto::random::{OsRandom, Random};
use crate::delivery::{Outbox, StreamId, DEFAULT_BUFFER};
use crate::handshake::device::DeviceConfig;
use crate::handshake::HandshakeError;
use crate::record::RecordError;
use crate::service::device_end::DeviceEnd;
use crate::session::SessionError;
use crate::throttle::Throttle;
use crate::transport::{Timeouts, TransportError};
use crate::trust::ServerVerifier;
use std::sync::Arc;
use std::time::{Duration, Instant};
use task::{State, Task, MIN_RETRY};
use tokio::sync::{mpsc, oneshot, watch};

/// Default of [`DeviceOptions::handshake_attempts`].
pub const DEFAULT_HANDSHAKE_ATTEMPTS: u32 = 5;

/// How a device runs.
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// Messages buffered until acknowledged (at most
    /// [`MAX_BUFFER`](crate::delivery::MAX_BUFFER)); when full, [`MqttDevice::send`] waits.
    pub buffer: usize,
    /// A sent message not acknowledged within this time makes the device start a new
    /// session (with any server instance) and send it again.
    pub ack_timeout: Duration,
    /// Handshake timeout (the idle timeout is the server's business).
    pub timeouts: Timeouts,
    /// Failed handshakes in a row after which the device gives up, with the reason of the
    /// last one; 0 never gives up. A failure is a handshake timeout with no trusted server
    /// answering, or a plaintext refusal believed after the ack timeout: both could be a
    /// stranger's doing, so they are retried (0.5 s doubling to 30 s between attempts).
    pub handshake_attempts: u32,
    /// After this long without sending in a session, a KeyUpdate record keeps it alive, so
    /// that the server's idle timeout does not forget a quiet device that waits for downlink
    /// or peers (`--listen`); `None`: no keep-alive.
    pub keepalive: Option<Duration>,
}

impl Default for DeviceOptions {
    fn default() -> Self {
        Self {
            buffer: DEFAULT_BUFFER,
            ack_timeout: Duration::from_secs(5),
            timeouts: Timeouts::default(),
            handshake_attempts: DEFAULT_HANDSHAKE_ATTEMPTS,
            keepalive: None,
        }
    }
}

/// Counters of a device.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Sessions established.
    pub sessions: u64,
    /// Messages accepted from the application.
    pub queued: u64,
    /// Records sent with a message (first sends and resends).
    pub sent: u64,
    /// Messages acknowledged by the server.
    pub acknowledged: u64,
    /// Messages peers acknowledged end to end (a device receiving through a
    /// [`DeviceEnd`]).
    pub acknowledged_end_to_end: u64,
    /// Messages buffered and not yet acknowledged.
    pub buffered: usize,
    /// Times the buffer filled up.
    pub buffer_full: u64,
    /// Repeated records dropped by the replay window.
    pub duplicate_records: u64,
    /// Records that failed authentication or were too old.
    pub rejected_records: u64,
    /// MQTT messages on this device's topics that were not secchan frames.
    pub malformed: u64,
    /// ServerHellos and plaintext alerts on the down topic that were not accepted: not
    /// verifying, from an untrusted server key, or unauthenticated alerts.
    pub rejected_handshake_messages: u64,
    /// Handshakes that failed and were tried again.
    pub handshake_retries: u64,
    /// Publishes dropped because the broker took them more slowly than they came.
    pub dropped_publishes: u64,
    /// Payload bytes moved through the broker.
    pub bytes: PayloadBytes,
}

/// A device connected through a broker. Messages given to [`send`](Self::send) are
/// delivered to the server's output exactly once, in spite of redeliveries, reconnects and
/// re-handshakes, unless the device stops before they are acknowledged.
pub struct MqttDevice {
    input: Option<mpsc::Sender<Vec<u8>>>,
    task: tokio::task::JoinHandle<Result<DeviceStats, TransportError>>,
    stats: watch::Receiver<DeviceStats>,
}

impl std::fmt::Debug for MqttDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttDevice")
            .field("stats", &*self.stats.borrow())
            .finish_non_exhaustive()
    }
}

impl MqttDevice {
    /// Connects to the broker and completes a first handshake, checking the server's key
    /// with `verifier`. Fails if the broker does not answer, if the server refuses the device
    /// in an authenticated close, or if [`DeviceOptions::handshake_attempts`] handshakes in a
    /// row fail: then with the reason of the last (an untrusted key, a plaintext refusal, no
    /// server).
    pub async fn start(
        broker: &Broker,
        config: DeviceConfig,
        verifier: Arc<dyn ServerVerifier>,
        options: DeviceOptions,
    ) -> Result<Self, TransportError> {
        let mut stream: StreamId = [0; 8];
        OsRandom.fill(&mut stream).map_err(HandshakeError::from)?;
        let outbox = Outbox::new(stream, options.buffer);
        Self::start_with_outbox(broker, config, verifier, options, outbox).await
    }

    /// [`start`](Self::start) with an outbox of the caller's (e.g. a spooled one, whose
    /// unacknowledged messages are sent first); `options.buffer` is then unused.
    pub async fn start_with_outbox(
        broker: &Broker,
        config: DeviceConfig,
        verifier: Arc<dyn ServerVerifier>,
        options: DeviceOptions,
        outbox: Outbox,
    ) -> Result<Self, TransportError> {
        Self::start_receiving(broker, (config, verifier), options, outbox, None).await
    }

    /// [`start_with_outbox`](Self::start_with_outbox), receiving through `end` if given, as
    /// a TCP device does: downlink and peers' messages are printed and acknowledged, and
    /// when `end` has a `--to` peer (or chats) what [`send`](Self::send) is given goes end
    /// to end rather than to the server. The device then also waits, at the end, until its
    /// peers acknowledged everything; a refusal or a failed end-to-end session ends it with
    /// [`MqttError::End`].
    pub async fn start_receiving(
        broker: &Broker,
        (mut config, verifier): (DeviceConfig, Arc<dyn ServerVerifier>),
        options: DeviceOptions,
        outbox: Outbox,
        end: Option<DeviceEnd>,
    ) -> Result<Self, TransportError> {
        config.session.ordered = false;
        let link = Link::connect(broker).await?;
        let client = broker.device_level(link.client_id())?;
        let (input_tx, input_rx) = mpsc::channel(1);
        let (stats_tx, stats_rx) = watch::channel(DeviceStats::default());
        let (ready_tx, ready_rx) = oneshot::channel();
        let task = Task {
            outbox,
            link,
            topics: broker.topics.clone(),
            client,
            config,
            verifier,
            options,
            state: State::Waiting {
                until: Instant::now(),
            },
            input: input_rx,
            input_open: true,
            stats: DeviceStats::default(),
            stats_tx,
            ready: Some(ready_tx),
            retry: MIN_RETRY,
            failed_attempts: 0,
            subscribed: None,
            full_logged: false,
            throttle: Throttle::default(),
            end,
            sent_at: Instant::now(),
        };
        let mut task = tokio::spawn(task.run());
        tokio::select! {
            ready = ready_rx => {
                if ready.is_err() {
                    return Err(join(task).await.err().unwrap_or(MqttError::Stopped.into()));
                }
            }
            result = &mut task => {
                return Err(flatten(result).err().unwrap_or(MqttError::Stopped.into()));
            }
        }
        Ok(Self {
            input: Some(input_tx),
            task,
            stats: stats_rx,
        })
    }

    /// Queues a message (at most [`MAX_PAYLOAD`](crate::record::MAX_PAYLOAD) less the
    /// [`ENVELOPE_LEN`](crate::delivery::ENVELOPE_LEN)-byte envelope); waits while the
    /// buffer is full. Fails if the device stopped, with the reason.
    pub async fn send(&mut self, message: Vec<u8>) -> Result<(), TransportError> {
        let limit = crate::record::MAX_PAYLOAD - crate::delivery::ENVELOPE_LEN;
        if message.len() > limit {
            return Err(SessionError::Record(RecordError::PayloadTooLarge(message.len())).into());
        }
        let input = self.input.as_ref().ok_or(MqttError::Stopped)?;
        if input.send(message).await.is_err() {
            self.input = None;
            return Err(join(&mut self.task)
                .await
                .err()
                .unwrap_or(MqttError::Stopped.into()));
        }
        Ok(())
    }

    /// Counters so far.
    pub fn stats(&self) -> DeviceStats {
        *self.stats.borrow()
    }

    /// Resolves once the device stopped on its own (refused in an authenticated close,
    /// handshakes that kept failing), while it waits for messages to send:
    /// [`finish`](Self::finish) then returns why. Cancel-safe.
    pub async fn stopped(&mut self) {
        // The task holds the sender until it ends.
        while self.stats.changed().await.is_ok() {}
    }

    /// Waits up to `wait` until every message is acknowledged, then closes the session.
    pub async fn finish(mut self, wait: Duration) -> Result<DeviceStats, TransportError> {
        self.input = None;
        match tokio::time::timeout(wait, &mut self.task).await {
            Ok(result) => flatten(result),
            Err(_) => {
                self.task.abort();
                Err(MqttError::Unacknowledged(self.stats().buffered).into())
            }
        }
    }
}

impl Drop for MqttDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TaskResult = Result<Result<DeviceStats, TransportError>, tokio::task::JoinError>;

fn flatten(result: TaskResult) -> Result<DeviceStats, TransportError> {
    result.map_err(|_| TransportError::from(MqttError::Stopped))?
}

async fn join(
    task: impl std::future::Future<Output = TaskResult>,
) -> Result<DeviceStats, TransportError> {
    flatten(task.await)
}
