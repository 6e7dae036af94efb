//! `secchan server`.

use super::keys::{load_authorized, load_secret};
use super::output::Output;
use super::{CliError, ServerMode, SessionArgs};
use crate::crypto::kem::SuiteId;
use crate::crypto::random::OsRandom;
use crate::handshake::server::{PeerDevice, ServerConfig};
use crate::handshake::ticket::Resumption;
use crate::handshake::ticket_file;
use crate::handshake::{AllowAnyDevice, Authorizer, Mode};
use crate::registry::{Groups, Received, RegistryAuthorizer};
use crate::transport::tcp::{Connection, Listener};
use crate::transport::TransportError;
use base64::Engine;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

/// Options of `secchan server`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("transport").required(true)))]
pub struct ServerArgs {
    /// Address to listen on, e.g. 0.0.0.0:4433.
    #[arg(long, value_name = "ADDR", group = "transport")]
    listen: Option<String>,
    /// Also append each message's JSON line to FILE (created with mode 0600).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[cfg(feature = "mqtt")]
    #[command(flatten)]
    mqtt: super::mqtt::MqttServerArgs,
    /// The server's secret key file (from `secchan keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Which device suites to accept.
    #[arg(long, value_enum, default_value_t = ServerMode::Hybrid)]
    mode: ServerMode,
    /// File listing the devices allowed to connect (fingerprints or .pub contents, with names).
    #[arg(long, value_name = "FILE", conflicts_with = "allow_any_device")]
    authorized_devices: Option<PathBuf>,
    /// Fleet registry deciding which devices may connect (`secchan registry init`); the server
    /// refuses to start if it fails verification.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["authorized_devices", "allow_any_device"])]
    registry: Option<PathBuf>,
    /// With --registry: serve only devices of this group (repeatable) [default: every group].
    #[arg(long = "group", value_name = "GROUP", requires = "registry")]
    groups: Vec<String>,
    /// With --registry: file recording the last registry state the server accepted, kept
    /// outside the registry's directory; the server refuses to start on a registry that does
    /// not extend it (a rollback to an older copy of both files).
    #[arg(long, value_name = "FILE", requires = "registry")]
    registry_anchor: Option<PathBuf>,
    /// With --registry: seconds between checks of the registry for changes; revoked devices'
    /// sessions are closed within this time.
    #[arg(long, value_name = "SECS", default_value_t = 1, requires = "registry", value_parser = clap::value_parser!(u64).range(1..=3600))]
    registry_poll: u64,
    /// Most devices served at once (sessions and handshakes in progress); connections beyond
    /// it are dropped with a warning. Each takes a file descriptor: keep it below the
    /// open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_SESSIONS))]
    max_sessions: u32,
    /// Accept any device, including anonymous ones. Not recommended outside testing.
    #[arg(long)]
    allow_any_device: bool,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    tickets: TicketArgs,
}

/// Session resumption (protocol.md §7.6): the tickets the server issues.
#[derive(Debug, Args)]
struct TicketArgs {
    /// Seconds a resumption ticket stays valid (also the ticket-key period); 0 issues no
    /// tickets and refuses resumption.
    #[arg(long, value_name = "SECS", default_value_t = 86_400, value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::handshake::ticket::MAX_LIFETIME_SECS)))]
    ticket_lifetime: u32,
    /// Keep the ticket keys in FILE (created 0600 if missing) so tickets survive a restart and
    /// servers given copies of it accept each other's tickets [default: random keys in memory].
    #[arg(long, value_name = "FILE")]
    ticket_key_file: Option<PathBuf>,
}

impl TicketArgs {
    /// The server's resumption state, or `None` with `--ticket-lifetime 0`.
    fn resumption(&self) -> Result<Option<Arc<Resumption>>, CliError> {
        if self.ticket_lifetime == 0 {
            return Ok(None);
        }
        let lifetime = Duration::from_secs(u64::from(self.ticket_lifetime));
        let now = std::time::SystemTime::now();
        let resumption = match &self.ticket_key_file {
            Some(path) => ticket_file::load_or_create(path, lifetime, now, &mut OsRandom)
                .and_then(|keys| Ok(Resumption::new(keys, lifetime)?)),
            None => Resumption::random(lifetime, now, &mut OsRandom),
        }
        .map_err(|e| CliError::Tickets {
            path: self.ticket_key_file.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(Arc::new(resumption)))
    }
}

/// One received message as printed on stdout.
#[derive(serde::Serialize)]
struct MessageLine<'a> {
    device: &'a str,
    fingerprint: Option<String>,
    peer: String,
    suite: &'static str,
    aead: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data_base64: Option<String>,
}

/// Where a message came from, for its output line.
pub(super) struct Origin<'a> {
    /// The authorized device.
    pub(super) device: &'a PeerDevice,
    /// Its address (TCP) or session (MQTT).
    pub(super) peer: String,
    /// Suite name.
    pub(super) suite: &'static str,
    /// AEAD name.
    pub(super) aead: &'static str,
    /// Message id on MQTT: the device's stream and the sequence in it.
    pub(super) stream: Option<&'a str>,
    /// See `stream`.
    pub(super) seq: Option<u64>,
}

/// Renders one message as a JSON line: `data` if it is UTF-8, `data_base64` otherwise.
pub(super) fn message_line(origin: &Origin<'_>, message: &[u8]) -> String {
    let text = std::str::from_utf8(message).ok();
    let line = MessageLine {
        device: &origin.device.name,
        fingerprint: origin.device.identity.map(|i| i.fingerprint()),
        peer: origin.peer.clone(),
        suite: origin.suite,
        aead: origin.aead,
        stream: origin.stream,
        seq: origin.seq,
        data: text,
        data_base64: text
            .is_none()
            .then(|| base64::engine::general_purpose::STANDARD.encode(message)),
    };
    serde_json::to_string(&line).unwrap_or_default()
}

/// How long a shutting-down server waits for devices to answer its close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Upper bound of `--max-sessions`: far above what one process can hold open, far below what
/// the session semaphore can count.
const MAX_SESSIONS: i64 = 1_000_000;

/// Pause after an accept error that is about the process or the system rather than one
/// connection (no file descriptor left, no buffer memory): it repeats until one frees up, so
/// retrying at once would spin and flood the log.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How long to wait before the next accept after `e`.
fn accept_backoff(e: &std::io::Error) -> Option<Duration> {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset, Interrupted};
    match e.kind() {
        // The connection being accepted went away: the next one is unaffected.
        ConnectionAborted | ConnectionRefused | ConnectionReset | Interrupted => None,
        // EMFILE, ENFILE, ENOBUFS, ENOMEM and anything unknown.
        _ => Some(ACCEPT_BACKOFF),
    }
}

/// Serves one device until it closes; forwards its messages to `out`. With a registry, the
/// session is closed as soon as the registry stops authorizing the device. When `shutdown`
/// turns true the session is closed with an authenticated close.
async fn serve(
    mut conn: Connection,
    peer: PeerDevice,
    out: mpsc::Sender<(String, oneshot::Sender<()>)>,
    registry: Option<Arc<RegistryAuthorizer>>,
    mut shutdown: watch::Receiver<bool>,
) {
    tracing::info!(
        device = %peer.name,
        peer = %conn.peer_addr(),
        suite = conn.session().suite().name,
        aead = conn.session().aead().name(),
        "session established"
    );
    loop {
        let receive = async {
            match (&registry, &peer.identity) {
                (Some(registry), Some(id)) => registry.recv(&mut conn, id).await,
                _ => conn
                    .recv()
                    .await
                    .map(|m| m.map_or(Received::Closed, Received::Message)),
            }
        };
        let next = tokio::select! {
            next = receive => next,
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                tracing::info!(device = %peer.name, peer = %conn.peer_addr(), "server shutting down: closing the session");
                if let Err(e) = conn.close(SHUTDOWN_GRACE).await {
                    tracing::debug!(device = %peer.name, error = %e, "device did not confirm the close");
                }
                return;
            }
        };
        match next {
            // The registry closed the session: the device reads that Close, not a reset.
            Ok(Received::Refused(_)) => return conn.linger().await,
            Ok(Received::Message(message)) => {
                let origin = Origin {
                    device: &peer,
                    peer: conn.peer_addr().to_string(),
                    suite: conn.session().suite().name,
                    aead: conn.session().aead().name(),
                    stream: None,
                    seq: None,
                };
                // Wait until the line is written before reading on: the device's close is only
                // answered (inside the next receive) once all its messages are recorded, so a
                // device that exits 0 knows the server has them.
                let (written, confirmed) = oneshot::channel();
                if out
                    .send((message_line(&origin, &message), written))
                    .await
                    .is_err()
                    || confirmed.await.is_err()
                {
                    tracing::error!(device = %peer.name, "output failed: closing the session unanswered");
                    return;
                }
            }
            Ok(Received::Closed) => {
                tracing::info!(device = %peer.name, peer = %conn.peer_addr(), "session closed");
                return;
            }
            Err(e) => {
                tracing::warn!(device = %peer.name, peer = %conn.peer_addr(), error = %e, "session ended with an error");
                return conn.linger().await;
            }
        }
    }
}

/// Builds the server configuration from the command line, and the registry if one is used.
fn config(args: &ServerArgs) -> Result<(ServerConfig, Option<Arc<RegistryAuthorizer>>), CliError> {
    let identity = Arc::new(load_secret(&args.key)?);
    let mut registry = None;
    let authorizer: Arc<dyn Authorizer> = match (&args.authorized_devices, args.allow_any_device) {
        _ if args.registry.is_some() => {
            let path = args.registry.clone().unwrap_or_default();
            let groups = Groups::only(args.groups.iter().cloned());
            let r = RegistryAuthorizer::open(&path, identity.clone(), groups)
                .and_then(|r| match &args.registry_anchor {
                    Some(anchor) => r.anchored(anchor),
                    None => Ok(r),
                })
                .map_err(|error| CliError::Registry {
                    path: path.clone(),
                    error,
                })?;
            tracing::info!(registry = %path.display(), entries = r.len(), "registry verified");
            let r = Arc::new(r);
            registry = Some(r.clone());
            r
        }
        (Some(path), _) => Arc::new(load_authorized(path)?),
        (None, true) => {
            tracing::warn!("--allow-any-device: every device, even anonymous ones, is accepted");
            Arc::new(AllowAnyDevice)
        }
        (None, false) => return Err(CliError::NoDevicePolicy),
    };
    let mut config = ServerConfig::new(identity, authorizer);
    config.mode = args.mode.into();
    if config.mode == Mode::Any {
        for id in SuiteId::ALL.into_iter().filter(|id| id.suite().is_none()) {
            tracing::warn!(
                "--mode any: suite {} is not in this build (cargo feature {}): devices offering it are refused with suite_refused",
                id.name(),
                id.feature().unwrap_or_default()
            );
        }
    }
    config.session = args.session.session_config();
    config.resumption = args.tickets.resumption()?;
    Ok((config, registry))
}

/// Accepts devices until interrupted, printing one JSON line per message.
pub async fn run(args: ServerArgs) -> Result<(), CliError> {
    let (config, registry) = config(&args)?;
    let config = Arc::new(config);
    let _watch = registry
        .as_ref()
        .map(|r| r.watch(Duration::from_secs(args.registry_poll)));
    #[cfg(feature = "mqtt")]
    if let Some(url) = &args.mqtt.broker.mqtt {
        let timeouts = args.session.timeouts();
        let out = args.out.as_deref();
        return super::mqtt::serve(
            &args.mqtt,
            url,
            config,
            timeouts,
            args.max_sessions as usize,
            out,
        )
        .await;
    }
    let fingerprint = config.identity.public().fingerprint();
    let addr = args.listen.clone().unwrap_or_default();
    let listener = Listener::bind(&addr, config.clone(), args.session.timeouts())
        .await
        .map_err(|source| CliError::Bind { addr, source })?;
    let mut output = Output::open(args.out.as_deref()).await?;
    tracing::info!(
        addr = %listener.local_addr()?,
        mode = %config.mode,
        fingerprint = %fingerprint,
        "listening"
    );
    // One writer owns stdout so lines from concurrent sessions never interleave.
    let (tx, mut rx) = mpsc::channel::<(String, oneshot::Sender<()>)>(1024);
    let writer = tokio::spawn(async move {
        while let Some((line, written)) = rx.recv().await {
            if let Err(e) = output.write_line(&line).await {
                tracing::error!(error = %e, "cannot write the output: messages are no longer recorded");
                break;
            }
            let _ = written.send(());
        }
    });
    let (stop, stopped) = watch::channel(false);
    let max = args.max_sessions;
    let slots = Arc::new(Semaphore::new(max as usize));
    loop {
        tokio::select! {
            incoming = listener.accept() => {
                let incoming = match incoming {
                    Ok(i) => i,
                    Err(e) => {
                        let pause = accept_backoff(&e);
                        tracing::warn!(error = %e, pause = ?pause, "accept failed");
                        if let Some(pause) = pause {
                            tokio::time::sleep(pause).await;
                        }
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(peer = %incoming.peer_addr(), limit = args.max_sessions, "session limit reached: connection dropped");
                    continue;
                };
                let tx = tx.clone();
                let registry = registry.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    match incoming.handshake().await {
                        Ok((conn, peer)) => serve(conn, peer, tx, registry, stopped).await,
                        // Handshake failures were logged with the peer's address.
                        Err(TransportError::Handshake(_) | TransportError::HandshakeTimeout(_)) => {}
                        Err(e) => tracing::debug!(error = %e, "connection dropped during handshake"),
                    }
                    drop(slot);
                });
            }
            _ = shutdown_signal() => {
                tracing::info!("shutting down: closing every session");
                break;
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    // Every session holds a slot until it ends; wait for them (handshakes in progress finish
    // or time out, then close at once).
    let grace = args.session.timeouts().handshake + SHUTDOWN_GRACE;
    if tokio::time::timeout(grace, slots.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("some sessions did not close in time");
    }
    drop(tx);
    let _ = writer.await;
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix (what service managers send).
pub(super) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backs_off_when_descriptors_run_out() {
        // EMFILE and ENFILE on Linux: every accept fails until a descriptor frees up.
        for errno in [24, 23] {
            let e = std::io::Error::from_raw_os_error(errno);
            assert_eq!(accept_backoff(&e), Some(ACCEPT_BACKOFF), "{e}");
        }
        let aborted = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(accept_backoff(&aborted), None);
    }
}
