//! `secchan server --mqtt`: an [`MqttServer`] instance feeding the same delivery
//! [`intake`](super::intake) as TCP sessions do, and sending the acknowledgements it decides;
//! each of its sessions attached to the [`Hub`] as a TCP session is, sending its device what
//! the hub has due and handing the hub the device's Acks and Relay envelopes.

use super::hub::{Attached, FromDevice, Hub, RelayPolicy};
use super::intake::Intake;
use super::live::Live;
use super::sink::{Origin, SinkRecord};
use crate::delivery::Envelope;
use crate::transport::mqtt::{Delivery, Incoming, MqttServer, ServerStats};
use crate::transport::TransportError;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Sessions whose hub wake-up waits to be served; beyond it their wake-ups wait in the hub.
const WAKE_QUEUE: usize = 256;
/// What a device has not acknowledged this long after it was sent is sent again: the broker
/// may have lost it, and the device drops what arrives after a gap (the devices' default ack
/// timeout).
const RESEND_AFTER: Duration = Duration::from_secs(5);
/// How often the sessions are looked at for [`RESEND_AFTER`].
const RESEND_EVERY: Duration = Duration::from_secs(1);

/// On shutdown, how long the instance waits for the intake to write (and acknowledge) what
/// it handed over before it closes its sessions: devices keep what is not acknowledged.
const WRITE_GRACE: Duration = Duration::from_secs(5);

/// Where a delivery comes from, for the sink.
fn record(d: Delivery) -> (SinkRecord, u64) {
    let origin = Origin {
        device: d.device,
        peer: crate::transport::mqtt::peer(&d.client, &d.session),
        suite: d.suite,
        aead: d.aead.name(),
    };
    let record = SinkRecord {
        origin: Arc::new(origin),
        stream: d.stream,
        seq: d.seq,
        data: d.data.into(),
        received: std::time::SystemTime::now(),
    };
    (record, d.base)
}

/// [`serve_relaying`] with a hub of its own that relays nothing (the instance sends its
/// devices only the acknowledgements).
pub async fn serve(
    server: MqttServer,
    intake: Intake,
    shutdown: impl Future<Output = ()>,
) -> Result<ServerStats, TransportError> {
    let relaying = Relaying {
        hub: Arc::new(Hub::new(RelayPolicy::Off)),
        live: None,
    };
    serve_relaying(server, intake, relaying, shutdown).await
}

/// What an instance sends its devices besides acknowledgements.
#[derive(Debug, Clone)]
pub struct Relaying {
    /// Downlink and relayed frames, shared with every other session of the server.
    pub hub: Arc<Hub>,
    /// The device list, for the registry group of each device (`--relay group`).
    pub live: Option<Arc<dyn Live>>,
}

/// A session attached to the hub.
struct Session {
    name: String,
    attached: Attached,
    /// Forwards the hub's wake-ups for the session; aborted when it ends.
    waker: tokio::task::JoinHandle<()>,
}

/// The instance's sessions in the hub.
struct Sessions {
    relaying: Relaying,
    attached: HashMap<String, Session>,
    wake: mpsc::Sender<String>,
}

impl Sessions {
    fn on_incoming(&mut self, server: &mut MqttServer, incoming: Incoming) -> Option<Delivery> {
        let hub = &self.relaying.hub;
        match incoming {
            Incoming::Delivery(d) => return Some(d),
            Incoming::Opened { session, device } => {
                let attached = hub.attach_peer(&device, self.relaying.live.as_ref());
                let (wake, key) = (attached.wake.clone(), session.clone());
                let tx = self.wake.clone();
                let waker = tokio::spawn(async move {
                    loop {
                        wake.notified().await;
                        if tx.send(key.clone()).await.is_err() {
                            return;
                        }
                    }
                });
                let s = Session {
                    name: device.name,
                    attached,
                    waker,
                };
                if let Some(old) = self.attached.insert(session, s) {
                    self.end(old);
                }
            }
            Incoming::Envelope { session, envelope } => {
                let s = self.attached.get(&session)?;
                let decoded = Envelope::decode(&envelope).ok()?;
                match hub.from_device(&s.name, decoded) {
                    FromDevice::Done => {}
                    FromDevice::Reply(ack) => server.send(&session, &ack),
                    FromDevice::Unexpected => {
                        tracing::warn!(session = %session, device = %s.name, "the device sent an envelope only a server sends: dropped");
                    }
                }
            }
            Incoming::Closed { session } => {
                if let Some(s) = self.attached.remove(&session) {
                    self.end(s);
                }
            }
        }
        None
    }

    /// Sends the device of `session` what the hub has due for it.
    fn on_wake(&self, server: &mut MqttServer, session: &str) {
        let Some(s) = self.attached.get(session) else {
            return;
        };
        for envelope in self.relaying.hub.due(&s.name, std::time::Instant::now()) {
            server.send(session, &envelope);
        }
    }

    /// Has the hub send again what each session's device left unacknowledged too long.
    fn resend_stale(&self) {
        let now = std::time::Instant::now();
        for s in self.attached.values() {
            if self.relaying.hub.resend_stale(&s.name, now, RESEND_AFTER) {
                tracing::debug!(device = %s.name, "unacknowledged envelopes sent again");
            }
        }
    }

    fn end(&self, s: Session) {
        s.waker.abort();
        self.relaying.hub.detach(&s.name, s.attached.id);
    }
}

impl Drop for Sessions {
    fn drop(&mut self) {
        for (_, s) in std::mem::take(&mut self.attached) {
            self.end(s);
        }
    }
}

/// Hands every message of `server` to `intake` and acknowledges what it wrote, and serves
/// each session's device from `relaying`'s hub, until `shutdown` resolves; then waits
/// (briefly) for the last acknowledgements and closes every session with `going_away`.
/// Returns the instance's counters.
pub async fn serve_relaying(
    mut server: MqttServer,
    intake: Intake,
    relaying: Relaying,
    shutdown: impl Future<Output = ()>,
) -> Result<ServerStats, TransportError> {
    let (submit, mut acks) = intake.session();
    drop(intake);
    let (wake, mut woken) = mpsc::channel(WAKE_QUEUE);
    let mut sessions = Sessions {
        relaying,
        attached: HashMap::new(),
        wake,
    };
    let mut outstanding = 0usize;
    let mut resend = tokio::time::interval(RESEND_EVERY);
    resend.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    let failed = loop {
        tokio::select! {
            biased;
            update = acks.recv() => {
                let Some(update) = update else { break None };
                outstanding = outstanding.saturating_sub(update.handled);
                for (stream, next) in update.acks {
                    server.acknowledge(&stream, next);
                }
            }
            Some(session) = woken.recv() => sessions.on_wake(&mut server, &session),
            _ = resend.tick() => sessions.resend_stale(),
            incoming = server.next_incoming() => {
                let Some(delivery) = sessions.on_incoming(&mut server, incoming?) else {
                    continue;
                };
                let (record, base) = record(delivery);
                if submit.submit(record, base).await.is_err() {
                    break Some(());
                }
                outstanding += 1;
            }
            () = submit.closed() => break Some(()),
            () = &mut shutdown => {
                tracing::info!("shutting down: writing what was received, then closing every session");
                break None;
            }
        }
    };
    if failed.is_none() {
        let drained = tokio::time::timeout(WRITE_GRACE, async {
            while outstanding > 0 {
                let Some(update) = acks.recv().await else {
                    return;
                };
                outstanding = outstanding.saturating_sub(update.handled);
                for (stream, next) in update.acks {
                    server.acknowledge(&stream, next);
                }
            }
        });
        if drained.await.is_err() {
            tracing::warn!(
                unacknowledged = outstanding,
                "the output did not take the last messages in time: devices keep them"
            );
        }
    }
    drop(sessions);
    Ok(server.shutdown().await)
}
