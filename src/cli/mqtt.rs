//! `secchan server --mqtt` and `secchan device --mqtt`: the same sessions carried through an
//! MQTT 5 broker (docs/mqtt.md).

use super::CliError;
use crate::delivery::{Outbox, ENVELOPE_LEN};
use crate::handshake::device::DeviceConfig;
use crate::handshake::server::ServerConfig;
use crate::service::device_end::DeviceEnd;
use crate::service::intake::Intake;
use crate::service::mqtt_server;
use crate::service::tcp_device::{DeviceError, Shutdown};
use crate::telemetry::Source;
use crate::transport::mqtt::topics::{DEFAULT_PREFIX, DEFAULT_SHARE_GROUP};
use crate::transport::mqtt::{
    Broker, ClientCert, DeviceOptions, MqttDevice, MqttError, MqttServer, ServerOptions,
    TopicLevel, Topics, DEFAULT_HANDSHAKE_ATTEMPTS,
};
use crate::transport::{Timeouts, TransportError};
use crate::trust::{KnownServers, ServerVerifier};
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Environment variable holding the broker password (instead of --mqtt-password-file).
pub const PASSWORD_ENV: &str = "SECCHAN_MQTT_PASSWORD";

/// Broker options shared by `server` and `device`.
#[derive(Debug, Clone, Args)]
pub(super) struct MqttArgs {
    /// Carry sessions through this MQTT broker, e.g. mqtt://127.0.0.1:1883, or
    /// mqtts://broker.example:8883 for TLS to the broker.
    #[arg(long, value_name = "URL", group = "transport")]
    pub(super) mqtt: Option<String>,
    /// MQTT client id [default: secchan-<random>]. The broker sees it: do not put the
    /// device's identity in it. Give every process its own: a broker disconnects a client
    /// when another connects with the same id.
    #[arg(long, value_name = "ID", requires = "mqtt")]
    mqtt_client_id: Option<String>,
    /// Broker user name.
    #[arg(long, value_name = "USER", requires = "mqtt")]
    mqtt_username: Option<String>,
    /// File holding the broker password (or set $SECCHAN_MQTT_PASSWORD).
    #[arg(long, value_name = "FILE", requires = "mqtt_username")]
    mqtt_password_file: Option<PathBuf>,
    /// With mqtts://: PEM file of the CA that signed the broker's certificate [default: the
    /// system's roots].
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    mqtt_ca: Option<PathBuf>,
    /// With mqtts://: PEM client certificate (chain) for a broker that requires one.
    #[arg(long, value_name = "FILE", requires = "mqtt_client_key")]
    mqtt_client_cert: Option<PathBuf>,
    /// With mqtts://: the PEM private key of --mqtt-client-cert.
    #[arg(long, value_name = "FILE", requires = "mqtt_client_cert")]
    mqtt_client_key: Option<PathBuf>,
    /// Topic prefix shared by the servers and their devices.
    #[arg(long, value_name = "PREFIX", default_value = DEFAULT_PREFIX, requires = "mqtt")]
    mqtt_prefix: String,
}

impl MqttArgs {
    pub(super) fn broker(&self, url: &str) -> Result<Broker, CliError> {
        let mut b = Broker::parse_url(url).map_err(crate::transport::TransportError::from)?;
        b.topics =
            Topics::new(&self.mqtt_prefix).map_err(crate::transport::TransportError::from)?;
        b.client_id = self.mqtt_client_id.clone();
        let tls_files = self.mqtt_ca.is_some() || self.mqtt_client_cert.is_some();
        match &mut b.tls {
            Some(tls) => {
                tls.ca_file = self.mqtt_ca.clone();
                tls.client_cert = self
                    .mqtt_client_cert
                    .clone()
                    .zip(self.mqtt_client_key.clone())
                    .map(|(cert_file, key_file)| ClientCert {
                        cert_file,
                        key_file,
                    });
            }
            None if tls_files => {
                return Err(crate::transport::TransportError::from(MqttError::Url {
                    url: url.to_string(),
                    reason: "--mqtt-ca and --mqtt-client-cert are for TLS: use an mqtts:// URL"
                        .into(),
                })
                .into())
            }
            None => {}
        }
        b.username = self.mqtt_username.clone();
        b.password = match (&self.mqtt_password_file, std::env::var(PASSWORD_ENV)) {
            (Some(path), _) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| CliError::PasswordFile {
                        path: path.clone(),
                        source,
                    })?;
                Some(Zeroizing::new(
                    text.trim_end_matches(['\r', '\n']).to_string(),
                ))
            }
            (None, Ok(p)) => Some(Zeroizing::new(p)),
            (None, Err(_)) => None,
        };
        Ok(b)
    }

    /// The broker name a device records in its known-servers file.
    pub(super) fn known_servers_host(&self, url: &str) -> Result<String, CliError> {
        Ok(self.broker(url)?.display_name())
    }
}

/// Server-only MQTT options.
#[derive(Debug, Clone, Args)]
pub(super) struct MqttServerArgs {
    #[command(flatten)]
    pub(super) broker: MqttArgs,
    /// Shared-subscription group: servers in the same group share the devices.
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SHARE_GROUP, requires = "mqtt")]
    mqtt_share_group: String,
}

/// Device-only MQTT options.
#[derive(Debug, Clone, Args)]
pub(super) struct MqttDeviceArgs {
    #[command(flatten)]
    pub(super) broker: MqttArgs,
    /// Seconds to wait at the end for the last acknowledgements.
    #[arg(long, value_name = "SECS", default_value_t = 30, requires = "mqtt",
          value_parser = clap::value_parser!(u64).range(0..=86_400))]
    drain_timeout: u64,
    /// Failed handshakes in a row (no trusted server answering, or a plaintext refusal that
    /// nothing authenticated confirms) after which the device gives up; 0: never.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_HANDSHAKE_ATTEMPTS, requires = "mqtt")]
    handshake_attempts: u32,
    /// Which broker name the device's topics carry, for the broker's ACL: `client-id`
    /// (Mosquitto's %c) or `username` (%u).
    #[arg(long, value_enum, value_name = "NAME", default_value_t = LevelArg::ClientId, requires = "mqtt")]
    mqtt_topic_level: LevelArg,
    /// Without --server-key: accept the key of the first server that answers and record it
    /// in the known-servers file. Over a broker that is whichever client answers first, so
    /// it is refused unless this is given.
    #[arg(long, requires = "mqtt")]
    pub(super) mqtt_allow_tofu: bool,
}

/// `--mqtt-topic-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LevelArg {
    /// The MQTT client id.
    ClientId,
    /// The broker user name.
    Username,
}

/// Refuses trust on first use through a broker (docs/mqtt.md §1) unless --mqtt-allow-tofu:
/// succeeds if `file` already records a key for `host`.
pub(super) fn check_first_use(
    args: &MqttDeviceArgs,
    file: PathBuf,
    host: &str,
) -> Result<(), CliError> {
    let known = KnownServers::new(file.clone(), host);
    if known
        .knows_host()
        .map_err(crate::transport::TransportError::from)?
    {
        return Ok(());
    }
    if !args.mqtt_allow_tofu {
        return Err(CliError::FirstUseOverBroker {
            host: host.to_string(),
            file: file.display().to_string(),
        });
    }
    tracing::warn!(server = %host, "--mqtt-allow-tofu: trusting the first server key that answers, which over a broker is whichever client answers first (docs/mqtt.md §1)");
    Ok(())
}

/// Starts a server instance on the broker.
pub(super) async fn start(
    args: &MqttServerArgs,
    url: &str,
    config: Arc<ServerConfig>,
    (timeouts, max_sessions): (Timeouts, usize),
) -> Result<MqttServer, CliError> {
    let broker = args.broker.broker(url)?;
    let options = ServerOptions {
        share_group: args.mqtt_share_group.clone(),
        max_sessions,
        timeouts,
        ..ServerOptions::default()
    };
    let server = MqttServer::start(&broker, config.clone(), options).await?;
    tracing::info!(
        broker = %broker.display_name(),
        group = %args.mqtt_share_group,
        instance = server.instance(),
        mode = %config.mode,
        fingerprint = %config.identity.public().fingerprint(),
        "serving through the MQTT broker"
    );
    Ok(server)
}

/// Runs a server instance, with downlink and the relay, until `stop` resolves (Ctrl-C or
/// SIGTERM).
pub(super) async fn serve(
    server: MqttServer,
    intake: Intake,
    relaying: mqtt_server::Relaying,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    let _watchdog = super::service::notify_ready();
    let s = mqtt_server::serve_relaying(server, intake, relaying, stop).await?;
    tracing::info!(
        sessions = s.sessions_established,
        received = s.delivered,
        duplicate_records = s.duplicate_records,
        rejected_records = s.rejected_records,
        malformed = s.malformed,
        rejected_handshake_messages = s.rejected_handshake_messages,
        devices_refused = s.devices_refused,
        timed_out_handshakes = s.handshake_timeouts,
        evicted_handshakes = s.evicted_handshakes,
        refused_hellos = s.refused_hellos,
        dropped_publishes = s.dropped_publishes,
        "MQTT instance stopped"
    );
    Ok(())
}

/// Sends every message of `source` through the broker (to the server, or end to end through
/// `end`) and waits until all are acknowledged; with `listen`, stays up printing what `end`
/// receives until a stop signal.
pub(super) async fn run_device(
    args: &MqttDeviceArgs,
    url: &str,
    (config, verifier): (DeviceConfig, Box<dyn ServerVerifier>),
    timing: (Timeouts, Duration, Duration),
    (outbox, end, listen): (Outbox, DeviceEnd, bool),
    (source, stop): (Source, Shutdown),
) -> Result<(), CliError> {
    deliver(
        args,
        url,
        (config, verifier),
        timing,
        (outbox, end, listen),
        (source, stop),
    )
    .await
    .map_err(|e| match e {
        CliError::Session {
            error: TransportError::Mqtt(MqttError::End(e)),
        } => CliError::Device(DeviceError::End(e)),
        e => e,
    })
}

async fn deliver(
    args: &MqttDeviceArgs,
    url: &str,
    (config, verifier): (DeviceConfig, Box<dyn ServerVerifier>),
    (timeouts, ack_timeout, keepalive): (Timeouts, Duration, Duration),
    (outbox, end, listen): (Outbox, DeviceEnd, bool),
    (mut source, mut shutdown): (Source, Shutdown),
) -> Result<(), CliError> {
    let mut broker = args.broker.broker(url)?;
    broker.topic_level = match args.mqtt_topic_level {
        LevelArg::ClientId => TopicLevel::ClientId,
        LevelArg::Username => TopicLevel::Username,
    };
    let options = DeviceOptions {
        buffer: outbox.capacity(),
        ack_timeout,
        timeouts,
        handshake_attempts: args.handshake_attempts,
        keepalive: Some(keepalive),
    };
    let verifier: Arc<dyn ServerVerifier> = Arc::from(verifier);
    let mut device =
        MqttDevice::start_receiving(&broker, (config, verifier), options, outbox, Some(end))
            .await?;
    tracing::info!(broker = %broker.display_name(), "connected through the MQTT broker");
    let limit = crate::record::MAX_PAYLOAD - ENVELOPE_LEN;
    let stopping = || {
        tracing::info!(
            drain = args.drain_timeout,
            "interrupted: delivering what is buffered, then stopping"
        );
    };
    let mut stopped = false;
    loop {
        let line = tokio::select! {
            line = source.next() => match line? {
                Some(line) => line,
                None => break,
            },
            () = &mut shutdown => {
                stopping();
                stopped = true;
                break;
            }
            // A refusal ends the device even while its source is quiet.
            () = device.stopped() => break,
        };
        if line.len() > limit {
            return Err(CliError::MessageTooLarge {
                line: source.produced() as usize,
                len: line.len(),
            });
        }
        // `send` waits while the buffer is full (the broker may be away for long).
        tokio::select! {
            sent = device.send(line) => sent?,
            () = &mut shutdown => {
                stopping();
                stopped = true;
                break;
            }
        }
    }
    if listen && !stopped {
        tracing::info!("input ended: receiving until Ctrl-C or SIGTERM");
        tokio::select! {
            () = &mut shutdown => stopping(),
            () = device.stopped() => {}
        }
    }
    let stats = device
        .finish(Duration::from_secs(args.drain_timeout))
        .await?;
    tracing::info!(
        messages = stats.queued,
        acknowledged = stats.acknowledged,
        acknowledged_end_to_end = stats.acknowledged_end_to_end,
        sessions = stats.sessions,
        "all messages delivered and acknowledged"
    );
    Ok(())
}
