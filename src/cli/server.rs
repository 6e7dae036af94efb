//! `secchan server`.

use super::keys::{load_authorized, load_secret};
use super::metrics::Timings;
use super::{CliError, ServerMode, SessionArgs};
use crate::crypto::kem::SuiteId;
use crate::crypto::random::OsRandom;
use crate::delivery::state::StateDir;
use crate::delivery::{Streams, DEFAULT_MAX_OUT_OF_ORDER};
use crate::handshake::server::ServerConfig;
use crate::handshake::ticket::Resumption;
use crate::handshake::ticket_file;
use crate::handshake::{AllowAnyDevice, Authorizer, Mode};
use crate::registry::{Groups, RegistryAuthorizer};
use crate::service::hub::{Hub, RelayPolicy};
use crate::service::latency::Latency;
use crate::service::live::{DevicesFile, Live};
use crate::service::{intake, tcp_server};
use crate::transport::tcp::Listener;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    #[arg(long, value_name = "FILE", required_unless_present = "init_sink")]
    key: Option<PathBuf>,
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
    /// With --registry: the registry is signed by this offline authority key (FINGERPRINT or
    /// FILE.pub; `secchan registry init --key AUTHORITY_KEY`), not by the server's key. The
    /// server verifies it with that key, cannot append to it (token enrollments are refused
    /// with enrollment_refused), and sends each device's signed entries to its relay peers.
    #[arg(long, value_name = "FINGERPRINT|FILE.pub", requires = "registry")]
    registry_authority: Option<String>,
    /// Seconds between checks of the registry or the authorized-devices file for changes
    /// (SIGHUP checks at once); sessions of revoked or removed devices are closed within this
    /// time.
    #[arg(long, value_name = "SECS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=3600))]
    registry_poll: u64,
    /// Serve Prometheus metrics (OpenMetrics text) at http://ADDR/metrics, e.g.
    /// 127.0.0.1:9464: sessions, handshakes by outcome, refusals, evictions, cookies, messages
    /// written and duplicates; totals only, no device names.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// The control socket `secchan status` reads (mode 0600) [default: under systemd,
    /// $RUNTIME_DIRECTORY/secchan-server.sock; otherwise none].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// Most sessions at once (authenticated devices); handshakes in progress have their own
    /// budget (--max-pending), and a device with no room is refused with busy. Each takes a
    /// file descriptor: keep the two together below the open-file limit (`ulimit -n`).
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_SESSIONS))]
    max_sessions: u32,
    /// Accept any device, including anonymous ones. Not recommended outside testing.
    #[arg(long)]
    allow_any_device: bool,
    /// Keep what each device stream has had written in DIR (created 0700), fsync'd before
    /// anything is acknowledged, so that a message written before a crash is not written
    /// again after the restart; DIR also keeps the ticket keys unless --ticket-key-file
    /// says otherwise. One directory per server process.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// On Ctrl-C or SIGTERM: seconds to go on reading what devices still send before every
    /// session is closed (everything read is written and acknowledged first).
    #[arg(long, value_name = "SECS", default_value_t = tcp_server::DEFAULT_DRAIN.as_secs(), value_parser = clap::value_parser!(u64).range(0..=3600))]
    drain_timeout: u64,
    /// Relay device-to-device sessions: `any` between any two authenticated devices,
    /// `group` only within a registry group; `off` refuses every relay (no_relay).
    #[arg(long, value_enum, default_value_t = RelayArg::Off)]
    relay: RelayArg,
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
    tickets: TicketArgs,
    #[command(flatten)]
    sink: super::sink::SinkArgs,
    #[command(flatten)]
    admission: super::admission::AdmissionArgs,
}

/// `--relay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RelayArg {
    Off,
    Any,
    Group,
}

/// Upper bound of `--max-sessions`: far above what one process can hold open, far below what
/// the session semaphore can count.
const MAX_SESSIONS: i64 = 1_000_000;
/// Device streams the duplicate filter remembers at most.
const MAX_STREAMS: usize = 100_000;
/// How long the duplicate filter remembers a stream after its last message. A device that
/// comes back later sends again only what was never acknowledged, so forgetting a stream
/// can at worst repeat the messages in flight when it went away.
const STREAM_TTL: Duration = Duration::from_secs(7 * 86_400);

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
    /// The server's resumption state, or `None` with `--ticket-lifetime 0`. Without
    /// `--ticket-key-file`, the keys are kept in `state_dir` if there is one.
    fn resumption(&self, state_dir: Option<&Path>) -> Result<Option<Arc<Resumption>>, CliError> {
        if self.ticket_lifetime == 0 {
            return Ok(None);
        }
        let lifetime = Duration::from_secs(u64::from(self.ticket_lifetime));
        let now = std::time::SystemTime::now();
        if let (None, Some(dir)) = (&self.ticket_key_file, state_dir) {
            crate::delivery::log::create_private_dir(dir).map_err(CliError::StateDir)?;
        }
        let file = self
            .ticket_key_file
            .clone()
            .or_else(|| state_dir.map(|d| d.join("ticket.key")));
        let resumption = match &file {
            Some(path) => ticket_file::load_or_create(path, lifetime, now, &mut OsRandom)
                .and_then(|keys| Ok(Resumption::new(keys, lifetime)?)),
            None => Resumption::random(lifetime, now, &mut OsRandom),
        }
        .map_err(|e| CliError::Tickets {
            path: file.clone(),
            reason: e.to_string(),
        })?;
        Ok(Some(Arc::new(resumption)))
    }
}

/// Builds the server configuration from the command line, and the registry if one is used.
fn config(args: &ServerArgs) -> Result<(ServerConfig, Option<Arc<dyn Live>>), CliError> {
    let identity = Arc::new(load_secret(args.key.as_deref().unwrap_or(Path::new("")))?);
    let mut live: Option<Arc<dyn Live>> = None;
    let authorizer: Arc<dyn Authorizer> = match (&args.authorized_devices, args.allow_any_device) {
        _ if args.registry.is_some() => {
            let path = args.registry.clone().unwrap_or_default();
            let groups = Groups::only(args.groups.iter().cloned());
            let r = match &args.registry_authority {
                Some(authority) => {
                    let authority = super::keys::server_fingerprint(authority)?;
                    RegistryAuthorizer::open_with_authority(
                        &path,
                        identity.clone(),
                        &authority,
                        groups,
                    )
                }
                None => RegistryAuthorizer::open(&path, identity.clone(), groups),
            }
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
            live = Some(r.clone());
            r
        }
        (Some(path), _) => {
            // Parsed now, so a bad file stops the start with the CLI's error; later reloads
            // log the same message and keep the list in force.
            load_authorized(path)?;
            let loader = Box::new(|p: &Path| load_authorized(p).map_err(|e| e.to_string()));
            let file = Arc::new(DevicesFile::open(path, loader).map_err(|reason| {
                CliError::AuthorizedDevices {
                    path: path.clone(),
                    line: 0,
                    reason,
                }
            })?);
            live = Some(file.clone());
            file
        }
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
    config.resumption = args.tickets.resumption(args.state_dir.as_deref())?;
    Ok((config, live))
}

/// The duplicate filter, restored from `--state-dir` if given.
fn streams(args: &ServerArgs) -> Result<(Streams, Option<StateDir>), CliError> {
    let mut streams = Streams::new(MAX_STREAMS, DEFAULT_MAX_OUT_OF_ORDER, STREAM_TTL);
    let Some(dir) = &args.state_dir else {
        return Ok((streams, None));
    };
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| CliError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let (state, discarded) =
        StateDir::open(dir, &mut streams, Instant::now()).map_err(CliError::StateDir)?;
    if discarded > 0 {
        tracing::warn!(dir = %dir.display(), discarded_bytes = discarded, "state directory: a torn or damaged tail was discarded; messages written just before it may be written again");
    }
    tracing::info!(dir = %dir.display(), streams = streams.len(), "state directory loaded");
    Ok((streams, Some(state)))
}

/// Serves devices over the transport the arguments name until `stop` resolves, timing them
/// in `timings` (with --metrics).
async fn serve(
    args: &ServerArgs,
    (config, live): (Arc<ServerConfig>, Option<Arc<dyn Live>>),
    (intake, timings): (intake::Intake, Option<Arc<Timings>>),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), CliError> {
    #[cfg(feature = "mqtt")]
    if let Some(url) = &args.mqtt.broker.mqtt {
        let limits = (args.session.timeouts(), args.max_sessions as usize);
        let server = super::mqtt::start(&args.mqtt, url, config, limits).await?;
        let counters = super::status::Counters::Mqtt(server.counters());
        let listed = (server.listed(), counters);
        let _operations = operations(args, &intake, listed, timings.as_deref()).await?;
        let relaying = crate::service::mqtt_server::Relaying {
            hub: hub(args),
            live,
        };
        return super::mqtt::serve(server, intake, relaying, stop).await;
    }
    let fingerprint = config.identity.public().fingerprint();
    let addr = args.listen.clone().unwrap_or_default();
    let listener = Listener::bind(&addr, config.clone(), args.session.timeouts())
        .await
        .map_err(|source| CliError::Bind { addr, source })?;
    tracing::info!(
        addr = %listener.local_addr()?,
        mode = %config.mode,
        fingerprint = %fingerprint,
        "listening"
    );
    let _watchdog = super::service::notify_ready();
    let hub = hub(args);
    let options = tcp_server::ServerOptions {
        limits: args.admission.limits(args.max_sessions as usize),
        hello_timeout: args.admission.hello_timeout(),
        drain_timeout: Duration::from_secs(args.drain_timeout),
        live,
        hub,
        latency: timings.clone().map(|t| t as Arc<dyn Latency>),
    };
    let server = tcp_server::TcpServer::new(options)
        .map_err(|e| CliError::LocalIo(std::io::Error::other(e.to_string())))?;
    let counters = super::status::Counters::Tcp(server.counters());
    let listed = (server.sessions(), counters);
    let _operations = operations(args, &intake, listed, timings.as_deref()).await?;
    server.run(listener, intake, stop).await;
    Ok(())
}

/// The hub of `--relay`'s policy, taking downlink from stdin.
fn hub(args: &ServerArgs) -> Arc<Hub> {
    let hub = Arc::new(Hub::new(match args.relay {
        RelayArg::Off => RelayPolicy::Off,
        RelayArg::Any => RelayPolicy::Any,
        RelayArg::Group => RelayPolicy::SameGroup,
    }));
    tokio::spawn(super::downlink::read(tokio::io::stdin(), hub.clone()));
    hub
}

/// Starts `--metrics` and the control socket, if asked for, on the server's sessions and
/// counters (and the `timings`); the tasks end when the returned guards are dropped.
async fn operations(
    args: &ServerArgs,
    intake: &intake::Intake,
    (sessions, counters): (crate::service::status::Sessions, super::status::Counters),
    timings: Option<&Timings>,
) -> Result<[Option<AbortOnDrop>; 2], CliError> {
    let metrics = metrics(args, intake, (&sessions, &counters), timings).await?;
    let control = match args
        .control_socket
        .clone()
        .or_else(super::status::default_path)
    {
        Some(path) => Some(AbortOnDrop(super::status::serve(
            &path, sessions, counters,
        )?)),
        None => None,
    };
    Ok([metrics, control])
}

/// Starts `--metrics`, if asked for, with the server's counters (and, over TCP, its sessions'
/// rejected records) and the `timings`; the task ends when the returned guard is dropped.
async fn metrics(
    args: &ServerArgs,
    intake: &intake::Intake,
    (sessions, counters): (&crate::service::status::Sessions, &super::status::Counters),
    timings: Option<&Timings>,
) -> Result<Option<AbortOnDrop>, CliError> {
    let Some(addr) = &args.metrics else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| CliError::Bind {
            addr: addr.clone(),
            source,
        })?;
    tracing::info!(addr = %listener.local_addr()?, "metrics at /metrics");
    // The TCP sessions' rejected records; an MQTT instance counts its own.
    let (tcp, tcp_sessions, transport): (
        _,
        _,
        Option<Box<dyn prometheus_client::collector::Collector>>,
    ) = match counters {
        super::status::Counters::Tcp(c) => (Some(c.clone()), Some(sessions.clone()), None),
        #[cfg(feature = "mqtt")]
        super::status::Counters::Mqtt(c) => (
            None,
            None,
            Some(Box::new(super::metrics_mqtt::Mqtt(c.clone()))),
        ),
    };
    Ok(Some(AbortOnDrop(super::metrics::serve(
        listener,
        intake.clone(),
        tcp,
        tcp_sessions,
        timings,
        transport,
    ))))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Accepts devices until interrupted, printing one JSON line per message.
pub async fn run(args: ServerArgs) -> Result<(), CliError> {
    if args.sink.init_sink {
        return args.sink.init().await;
    }
    let (config, live) = config(&args)?;
    let config = Arc::new(config);
    let _watch = match live.clone() {
        Some(l) => crate::service::live::watch(l, Duration::from_secs(args.registry_poll)),
        None => tokio::spawn(async {
            // SIGHUP must not end the server (its default action): nothing to reload.
            #[cfg(unix)]
            if let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP: no device list to reload (--allow-any-device)");
                }
            }
        }),
    };
    let (mut streams, mut state) = streams(&args)?;
    let mut sink = args.sink.open(args.out.as_deref(), state.is_some()).await?;
    if let Some(state) = &mut state {
        let found = intake::recover(&mut *sink, &mut streams, state).map_err(CliError::Output)?;
        if found > 0 {
            tracing::info!(
                messages = found,
                "output file: messages written just before a crash are counted as written"
            );
        }
    }
    let timings = args.metrics.is_some().then(|| Arc::new(Timings::new()));
    let latency = timings.clone().map(|t| t as Arc<dyn Latency>);
    let (intake, written) = intake::start_observed(sink, streams, state, latency);
    // The output's failure stops the server too: nothing could be acknowledged any more.
    let output_failed = async {
        let _ = intake.session().0.closed().await;
    };
    let stop = async {
        tokio::select! {
            () = shutdown_signal() => {}
            () = output_failed => {}
        }
        super::service::notify_stopping();
    };
    let served = serve(&args, (config, live), (intake.clone(), timings), stop).await;
    drop(intake);
    let written = written.await;
    served?;
    match written {
        Ok(Ok(stats)) => {
            tracing::info!(
                written = stats.written,
                duplicates = stats.duplicates,
                "server stopped"
            );
            Ok(())
        }
        Ok(Err(e)) => Err(CliError::Output(e)),
        Err(e) => Err(CliError::LocalIo(std::io::Error::other(e))),
    }
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
