//! `secchan device`.

use super::keys::{load_secret, server_fingerprint};
use super::outbox::OutboxArgs;
use super::server::shutdown_signal;
use super::sources::TelemetryArgs;
use super::{parse_aead, CliError, DeviceMode, SessionArgs};
use crate::crypto::aead::AeadId;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::{Suite, SuiteId};
use crate::handshake::device::DeviceConfig;
use crate::registry::{EnrollmentToken, RegistryError};
use crate::service::device_end::{DeviceEnd, EndError};
use crate::service::peer::{PeerError, PeerTrust, Peers};
use crate::service::tcp_device::{DeviceError, DeviceOptions, TcpDevice};
use crate::transport::TransportError;
use crate::trust::{KnownServers, Pinned, ServerVerifier};
use clap::Args;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

/// Options of `secchan device`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("transport").required(true)))]
pub struct DeviceArgs {
    /// Server address, e.g. 192.0.2.10:4433.
    #[arg(long, value_name = "ADDR", group = "transport")]
    connect: Option<String>,
    /// The server's key: its fingerprint (SHA256:...) or its .pub file. Without it, the
    /// known-servers file is used with trust on first use.
    #[arg(long, value_name = "FINGERPRINT|FILE")]
    server_key: Option<String>,
    /// Known-servers file [default: $SECCHAN_KNOWN_SERVERS or ~/.config/secchan/known_servers].
    #[arg(long, value_name = "FILE", conflicts_with = "server_key")]
    known_servers: Option<PathBuf>,
    /// The device's secret key file; without it the device connects anonymously.
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// Enroll this device (its --key) during the handshake with a one-time token from
    /// `secchan registry token`. Without --server-key, the server key in the token is pinned.
    #[arg(long, value_name = "TOKEN", conflicts_with = "known_servers")]
    enroll_token: Option<String>,
    /// Like --enroll-token, with the token read from FILE (the line `secchan registry token`
    /// printed), so that it shows neither in the process list nor in the shell's history.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["known_servers", "enroll_token"])]
    enroll_token_file: Option<PathBuf>,
    /// Key exchange: hybrid post-quantum (default) or classical X25519.
    #[arg(long, value_enum, default_value_t = DeviceMode::Hybrid)]
    mode: DeviceMode,
    /// Exact suite to offer (X25519MLKEM768, X25519, or X25519Kyber768R3 in a build with the
    /// kyber-r3 feature); overrides --mode.
    #[arg(long, value_name = "SUITE", value_parser = parse_suite)]
    suite: Option<&'static Suite>,
    /// AEADs to offer, most preferred first [default: AES-256-GCM first if the CPU has AES
    /// instructions, else ChaCha20-Poly1305 first].
    #[arg(long, value_name = "AEAD", value_delimiter = ',', value_parser = parse_aead)]
    aead: Vec<AeadId>,
    /// After this many seconds without sending, send a KeyUpdate record as a keep-alive, so
    /// the server's idle timeout (600 s by default) does not end a quiet session (protocol.md
    /// §7.5), over TCP and over MQTT.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    keepalive: u64,
    /// Over TCP: seconds to wait at the end for the server to answer the close (every message
    /// is acknowledged by then), and after Ctrl-C or SIGTERM for the last acknowledgements.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
    close_timeout: u64,
    /// Seconds a sent message may wait for its acknowledgement before the device takes the
    /// session for lost and starts a new one (sending it again).
    #[arg(long, value_name = "SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    ack_timeout: u64,
    /// Over TCP: end at the first lost session instead of reconnecting.
    #[arg(long)]
    no_reconnect: bool,
    /// Over TCP: give up after this many seconds without progress, no session or no
    /// acknowledgement of what is outstanding (exit 5; with --spool the unacknowledged
    /// messages stay there for the next run); 0 never gives up.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    give_up_after: u64,
    /// Send the input end to end to the device NAME, through the server's relay (needs
    /// --key); without it, the input goes to the server, and messages from peers and the
    /// server are still printed.
    #[arg(long, value_name = "NAME")]
    to: Option<String>,
    /// Stay connected after the input ends, printing what arrives, until Ctrl-C or SIGTERM.
    #[arg(long)]
    listen: bool,
    /// Pin a peer's key: NAME=FINGERPRINT or NAME=FILE.pub (repeatable). An end-to-end
    /// session with NAME is accepted only with this key.
    #[arg(long, value_name = "NAME=KEY", value_parser = parse_peer_key)]
    peer_key: Vec<(String, String)>,
    /// Accept a peer whose key is not pinned if the fleet registry's entries the server sends
    /// for it are signed by this registry authority (FINGERPRINT or FILE.pub of the offline
    /// key that signs the registry; docs/registry.md §10), and name it so and not revoked.
    #[arg(long, value_name = "FINGERPRINT|FILE.pub", value_parser = parse_authority)]
    peer_authority: Option<String>,
    /// Accept a peer whose key is not pinned if the server vouches for it: a compromised
    /// server could then substitute the key. Not recommended outside testing.
    #[arg(long)]
    trust_server_for_peers: bool,
    #[command(flatten)]
    outbox: OutboxArgs,
    /// Read options from FILE (TOML: the long options as keys, e.g. `listen = "0.0.0.0:4433"`);
    /// an option on the command line replaces the file's.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (file, command line and defaults) as TOML and exit.
    #[arg(long)]
    print_config: bool,
    #[command(flatten)]
    session: SessionArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[cfg(feature = "mqtt")]
    #[command(flatten)]
    mqtt: super::mqtt::MqttDeviceArgs,
}

fn parse_peer_key(s: &str) -> Result<(String, String), String> {
    let (name, key) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: give NAME=FINGERPRINT or NAME=FILE.pub"))?;
    if !crate::delivery::valid_peer_name(name) {
        return Err(format!("{name:?} is not a device name"));
    }
    let fingerprint = server_fingerprint(key).map_err(|e| e.to_string())?;
    Ok((name.to_string(), fingerprint))
}

fn parse_authority(s: &str) -> Result<String, String> {
    server_fingerprint(s).map_err(|e| e.to_string())
}

/// How the device shows what arrives: `secchan device`'s JSON lines, or `secchan chat`'s
/// text lines or full-screen terminal UI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chat {
    /// `secchan device`.
    Off,
    /// `secchan chat --line`, or without a terminal.
    Line,
    /// `secchan chat` on a terminal.
    Screen,
}

/// Options of `secchan chat`.
#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Line mode, for scripts and screen readers: type `@NAME message`, one event printed per
    /// line. Without a terminal on stdin and stdout, line mode is the default.
    #[arg(long)]
    line: bool,
    /// A copy of the fleet registry (docs/registry.md): the names of its devices that are
    /// not revoked complete after `@` in the terminal UI. Only names are taken from it: a
    /// peer's key is still checked by --peer-key or --peer-authority.
    #[arg(long, value_name = "FILE")]
    registry: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

impl ChatArgs {
    /// How this chat shows itself: the terminal UI only on a terminal.
    pub fn mode(&self) -> Chat {
        use std::io::IsTerminal;
        if self.line || !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
            Chat::Line
        } else {
            Chat::Screen
        }
    }

    /// Runs the chat.
    pub async fn run(self) -> Result<(), CliError> {
        let mode = self.mode();
        run_with(self.device, mode, self.registry).await
    }
}

/// The device's receiving side: its end-to-end sessions if it has a key.
fn device_end(args: &DeviceArgs, config: &DeviceConfig, chat: bool) -> Result<DeviceEnd, CliError> {
    if let (Some(authority), Some(server)) = (&args.peer_authority, &args.server_key) {
        if server_fingerprint(server)? == *authority {
            return Err(CliError::AuthorityIsServer);
        }
    }
    let peers = config.identity.clone().map(|identity| {
        let trust = PeerTrust {
            pins: args.peer_key.iter().cloned().collect(),
            authority: args.peer_authority.clone(),
            accept_server_word: args.trust_server_for_peers,
        };
        Peers::new(identity, config.clone(), trust)
    });
    if (args.to.is_some() || chat) && peers.is_none() {
        return Err(CliError::Device(DeviceError::End(EndError::Peer(
            PeerError::Anonymous,
        ))));
    }
    let end = DeviceEnd::new(peers, args.to.clone(), Box::new(std::io::stdout()));
    Ok(if chat { end.chat() } else { end })
}

pub(super) fn parse_suite(s: &str) -> Result<&'static Suite, String> {
    let id = SuiteId::from_name(s).ok_or_else(|| {
        format!("unknown suite {s:?}: use X25519MLKEM768, X25519Kyber768R3 or X25519")
    })?;
    id.suite().ok_or_else(|| {
        format!(
            "suite {} is not in this build of secchan: it is for benchmarks only; build with \
             `cargo build --release --features {}` to use it",
            id.name(),
            id.feature().unwrap_or_default()
        )
    })
}

/// The server trust anchor: `--server-key`, else the server key inside an enrollment token,
/// else the known-servers file, where `host` names the server.
fn verifier(
    args: &DeviceArgs,
    token: Option<&Pinned>,
    host: &str,
) -> Result<Box<dyn ServerVerifier>, CliError> {
    if let Some(value) = &args.server_key {
        return Ok(Box::new(Pinned(server_fingerprint(value)?)));
    }
    if let Some(pin) = token {
        return Ok(Box::new(pin.clone()));
    }
    let file = args
        .known_servers
        .clone()
        .or_else(KnownServers::default_path)
        .ok_or(CliError::NoTrustAnchor)?;
    Ok(Box::new(KnownServers::new(file, host)))
}

/// Longest --enroll-token-file read: a token line is 103 bytes.
const MAX_TOKEN_FILE: u64 = 1024;

/// The token text from --enroll-token or --enroll-token-file.
fn token_text(args: &DeviceArgs) -> Result<Option<Zeroizing<String>>, CliError> {
    if let Some(text) = &args.enroll_token {
        return Ok(Some(Zeroizing::new(text.clone())));
    }
    let Some(path) = &args.enroll_token_file else {
        return Ok(None);
    };
    let mut text = Zeroizing::new(String::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_FILE).read_to_string(&mut text))
        .map_err(|source| {
            CliError::EnrollToken(RegistryError::Io {
                action: "read",
                path: path.clone(),
                source,
            })
        })?;
    Ok(Some(text))
}

/// Connects, sends stdin line by line, prints what the server sends, closes cleanly at EOF.
pub async fn run(args: DeviceArgs) -> Result<(), CliError> {
    run_with(args, Chat::Off, None).await
}

/// The names the terminal UI completes after `@`: the `--peer-key` pins, and the devices of
/// the `registry` copy (its signatures checked) that are not revoked and not this device.
fn known_names(
    args: &DeviceArgs,
    registry: Option<&Path>,
    me: Option<&IdentityKey>,
) -> Result<Vec<String>, CliError> {
    let mut names: Vec<String> = args.peer_key.iter().map(|(n, _)| n.clone()).collect();
    if let Some(path) = registry {
        let verified =
            crate::registry::file::load(path, None).map_err(|error| CliError::Registry {
                path: path.to_path_buf(),
                error,
            })?;
        let me = me.map(|k| k.public().fingerprint());
        names.extend(
            verified
                .fleet
                .devices()
                .filter(|d| d.revoked_entry.is_none() && Some(&d.fingerprint) != me.as_ref())
                .map(|d| d.name.clone()),
        );
    }
    Ok(names)
}

/// [`run`], shown as `mode`; the terminal UI also completes the names of `registry`.
async fn run_with(args: DeviceArgs, mode: Chat, registry: Option<PathBuf>) -> Result<(), CliError> {
    let chat = mode != Chat::Off;
    let token = match token_text(&args)? {
        Some(_) if args.key.is_none() => return Err(CliError::EnrollWithoutKey),
        Some(text) => Some(EnrollmentToken::parse(&text).map_err(CliError::EnrollToken)?),
        None => None,
    };
    let server_from_token = token.as_ref().map(|t| Pinned(t.server().fingerprint()));
    let identity = args
        .key
        .as_deref()
        .map(load_secret)
        .transpose()?
        .map(Arc::new);
    let mut config = DeviceConfig::default()
        .with_suite(args.suite.unwrap_or_else(|| args.mode.default_suite()))
        .with_identity(identity)
        .with_enrollment(token.map(|t| Arc::new(t.into_key())))
        .with_session(args.session.session_config());
    if !args.aead.is_empty() {
        config = config.with_aeads(args.aead.clone());
    }
    let mut source = args.telemetry.open()?;
    let mut end = device_end(&args, &config, chat)?;
    let mut stop: crate::service::tcp_device::Shutdown = Box::pin(shutdown_signal());
    let mut finish = None;
    if mode == Chat::Screen {
        let names = known_names(&args, registry.as_deref(), config.identity.as_deref())?;
        let ui = super::chat_tui::start(names);
        source = ui.source;
        end = end.chat_log(ui.log);
        let quit = ui.stop;
        stop = Box::pin(async move {
            tokio::select! {
                () = shutdown_signal() => {}
                _ = quit => {}
            }
        });
        finish = Some(ui.finish);
    }
    #[cfg(feature = "mqtt")]
    if let Some(url) = &args.mqtt.broker.mqtt {
        let host = args.mqtt.broker.known_servers_host(url)?;
        let verifier = verifier(&args, server_from_token.as_ref(), &host)?;
        if args.server_key.is_none() && server_from_token.is_none() {
            let file = args
                .known_servers
                .clone()
                .or_else(KnownServers::default_path);
            super::mqtt::check_first_use(&args.mqtt, file.ok_or(CliError::NoTrustAnchor)?, &host)?;
        }
        let timeouts = args.session.timeouts();
        let outbox = args.outbox.open()?;
        let ack_timeout = Duration::from_secs(args.ack_timeout);
        let result = super::mqtt::run_device(
            &args.mqtt,
            url,
            (config, verifier),
            (timeouts, ack_timeout, Duration::from_secs(args.keepalive)),
            (outbox, end, args.listen),
            (source, stop),
        )
        .await;
        let drawn = match finish {
            Some(f) => f.wait().await,
            None => Ok(()),
        };
        return result.and(drawn.map_err(CliError::Terminal));
    }
    let addr = args.connect.clone().unwrap_or_default();
    let verifier = verifier(&args, server_from_token.as_ref(), &addr)?;
    let outbox = args.outbox.open()?;
    let options = DeviceOptions {
        timeouts: args.session.timeouts(),
        keepalive: Duration::from_secs(args.keepalive),
        close_timeout: Duration::from_secs(args.close_timeout),
        ack_timeout: Duration::from_secs(args.ack_timeout),
        reconnect: !args.no_reconnect,
        give_up_after: (args.give_up_after > 0).then(|| Duration::from_secs(args.give_up_after)),
        ticket_file: args.outbox.ticket_file(),
    };
    let device =
        TcpDevice::new(addr.clone(), config, verifier, options, outbox).receiving(end, args.listen);
    let result = device.run(&mut source, stop).await;
    let drawn = match finish {
        Some(f) => f.wait().await,
        None => Ok(()),
    };
    match result {
        Ok(report) => {
            tracing::info!(
                messages = report.queued,
                acknowledged = report.acknowledged,
                acknowledged_end_to_end = report.peer_acknowledged,
                sessions = report.sessions,
                resumed = report.resumed,
                "every message delivered and acknowledged"
            );
            drawn.map_err(CliError::Terminal)
        }
        Err((e, report)) => {
            tracing::debug!(?report, "device stopped");
            Err(match e {
                DeviceError::Session(TransportError::Io(source)) => {
                    CliError::Connect { addr, source }
                }
                e => CliError::Device(e),
            })
        }
    }
}
