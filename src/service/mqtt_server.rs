//! `secchan server --mqtt`: an [`MqttServer`] instance feeding the same delivery
//! [`intake`](super::intake) as TCP sessions do, and sending the acknowledgements it decides.

use super::intake::Intake;
use super::sink::{Origin, SinkRecord};
use crate::transport::mqtt::{Delivery, MqttServer, ServerStats};
use crate::transport::TransportError;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

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

/// Hands every message of `server` to `intake` and acknowledges what it wrote, until
/// `shutdown` resolves; then waits (briefly) for the last acknowledgements and closes every
/// session with `going_away`. Returns the instance's counters.
pub async fn serve(
    mut server: MqttServer,
    intake: Intake,
    shutdown: impl Future<Output = ()>,
) -> Result<ServerStats, TransportError> {
    let (submit, mut acks) = intake.session();
    drop(intake);
    let mut outstanding = 0usize;
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
            delivery = server.next() => {
                let (record, base) = record(delivery?);
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
    Ok(server.shutdown().await)
}
