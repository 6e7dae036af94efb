//! The `secchan` command line: argument parsing and wiring only. Every failure becomes one
//! line on stderr saying what went wrong and what to do, and a non-zero exit.

mod admission;
mod bench;
mod chat_tui;
mod config;
mod demo;
mod device;
mod downlink;
mod error;
mod keys;
mod metrics;
#[cfg(feature = "mqtt")]
mod metrics_mqtt;
#[cfg(feature = "mqtt")]
mod mqtt;
mod outbox;
mod registry;
mod server;
mod service;
mod sink;
mod sources;
mod status;

use crate::crypto::aead::AeadId;
use crate::crypto::kem::{Suite, X25519_MLKEM768, X25519_ONLY};
use crate::handshake::Mode;
use crate::record::replay::DEFAULT_WINDOW;
use crate::record::KeyUpdatePolicy;
use crate::session::SessionConfig;
use crate::transport::Timeouts;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
pub use error::CliError;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// secchan: a post-quantum secure channel for IoT devices and their servers.
#[derive(Debug, Parser)]
#[command(name = "secchan", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a long-term identity key (server or device): FILE (secret, mode 0600) and FILE.pub.
    Keygen {
        /// Where to write the secret key; the public key goes to FILE.pub.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print the fingerprint of a secret or public key file.
    Fingerprint {
        /// A secret key file or a .pub file.
        file: PathBuf,
    },
    /// Accept devices over TCP or through an MQTT broker; print each message as one JSON line.
    Server(server::ServerArgs),
    /// Connect to a server (TCP or MQTT) and send telemetry: stdin lines, a CSV dataset, or simulated readings.
    Device(device::DeviceArgs),
    /// Talk to other devices end to end through the server: a full-screen terminal UI (the
    /// conversation, `@NAME message` with Tab completion, each session's cryptography), or
    /// line mode with --line or without a terminal (docs/relay.md).
    Chat(device::ChatArgs),
    /// Show the sessions of the server running on this machine (its --control-socket).
    Status(status::StatusArgs),
    /// Run a server and a device in this process on loopback and show what happens.
    Demo,
    /// Manage the fleet registry: who may connect, in which group (docs/registry.md).
    #[command(subcommand)]
    Registry(registry::RegistryCommand),
    /// Measure handshakes, records, throughput and memory (docs/benchmarks.md).
    Bench(bench::BenchArgs),
    /// Print a shell completion script, e.g. `secchan completions bash > /etc/bash_completion.d/secchan`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the secchan(1) man page (roff), e.g. `secchan man > secchan.1`; with
    /// --out-dir, write it and one page per subcommand there.
    Man {
        /// Write secchan.1 and secchan-SUBCOMMAND.1 into DIR.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Suites a device may offer, by mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DeviceMode {
    /// X25519 + ML-KEM-768 (post-quantum hybrid, the default).
    Hybrid,
    /// X25519 alone (not safe against a quantum attacker; for comparison).
    Classical,
}

/// Suites a server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ServerMode {
    /// X25519 + ML-KEM-768 only (the default).
    Hybrid,
    /// X25519 alone.
    Classical,
    /// Every suite this build has: hybrid, classical, and the pre-standard X25519Kyber768R3
    /// (benchmarks; only in a build with the kyber-r3 feature).
    Any,
}

impl From<ServerMode> for Mode {
    fn from(m: ServerMode) -> Self {
        match m {
            ServerMode::Hybrid => Mode::Hybrid,
            ServerMode::Classical => Mode::Classical,
            ServerMode::Any => Mode::Any,
        }
    }
}

impl DeviceMode {
    fn default_suite(self) -> &'static Suite {
        match self {
            Self::Hybrid => &X25519_MLKEM768,
            Self::Classical => &X25519_ONLY,
        }
    }
}

/// Session options shared by `server` and `device`.
#[derive(Debug, Clone, Args)]
struct SessionArgs {
    /// Replay window size in records (rounded up to a multiple of 64, 64..=16384).
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_name = "N")]
    replay_window: usize,
    /// Rotate the sending key after this many records.
    #[arg(long, value_name = "N")]
    rekey_records: Option<u64>,
    /// Rotate the sending key after this many payload bytes.
    #[arg(long, value_name = "BYTES")]
    rekey_bytes: Option<u64>,
    /// Rotate the sending key after this many seconds.
    #[arg(long, value_name = "SECS")]
    rekey_secs: Option<u64>,
    /// Seconds allowed for the whole handshake.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    handshake_timeout: u64,
    /// Seconds of silence after which a session is closed.
    #[arg(long, default_value_t = 600, value_name = "SECS")]
    idle_timeout: u64,
}

impl SessionArgs {
    fn session_config(&self) -> SessionConfig {
        let d = KeyUpdatePolicy::default();
        SessionConfig {
            replay_window: self.replay_window,
            ordered: true,
            key_update: KeyUpdatePolicy {
                max_records: self.rekey_records.unwrap_or(d.max_records),
                max_bytes: self.rekey_bytes.unwrap_or(d.max_bytes),
                max_age: self.rekey_secs.map(Duration::from_secs).or(d.max_age),
            },
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts {
            handshake: Duration::from_secs(self.handshake_timeout),
            idle: Duration::from_secs(self.idle_timeout),
        }
    }
}

fn parse_aead(s: &str) -> Result<AeadId, String> {
    AeadId::from_name(s)
        .ok_or_else(|| format!("unknown AEAD {s:?}: use AES-256-GCM or ChaCha20-Poly1305"))
}

/// Logs go to stderr, but not onto the screen of `secchan chat`'s terminal UI (`screen`),
/// which shows what happens itself: there only a redirected stderr gets them.
fn init_logging(screen: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,secchan=info"));
    // The PostgreSQL driver logs every statement's parameters (the devices' messages) at
    // debug level, so it is kept at warnings whatever RUST_LOG says; its pool's warnings
    // about broken connections repeat what the server's own line about the sink says.
    #[cfg(feature = "postgres")]
    let filter = ["tokio_postgres=warn", "deadpool=error"]
        .into_iter()
        .filter_map(|d| d.parse().ok())
        .fold(filter, |f, d| f.add_directive(d));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(
            if screen && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::sink)
            } else {
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr)
            },
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// A clap usage error as one line: its first paragraph (what is wrong, with the arguments it
/// names), and where to look.
fn usage_error_line(rendered: &str) -> String {
    let first = rendered.split("\n\n").next().unwrap_or_default();
    let words: Vec<&str> = first.split_whitespace().collect();
    let text = words.join(" ");
    let text = text.strip_prefix("error: ").unwrap_or(&text);
    // clap's suggestions ("tip: a similar argument exists: '--connect'") are kept.
    let tips: Vec<String> = rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
        .map(|t| t.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    if tips.is_empty() {
        format!("{text}; run with --help to see the options")
    } else {
        format!(
            "{text}; {}; run with --help to see the options",
            tips.join("; ")
        )
    }
}

/// Runs `command` to completion on a multi-thread runtime.
fn on_runtime(
    command: impl std::future::Future<Output = Result<(), CliError>>,
) -> Result<(), CliError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)?;
    let result = runtime.block_on(command);
    // A blocking stdin read may still be pending (a device whose server closed first); do not
    // wait for it.
    runtime.shutdown_background();
    result
}

/// Parses the command line, runs the command, and returns the process exit code.
pub fn run() -> ExitCode {
    let args = match config::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("secchan: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    let parsed = Cli::command()
        .try_get_matches_from(args)
        .and_then(|m| Ok((Cli::from_arg_matches(&m)?, m)));
    let cli = match parsed {
        Ok((cli, matches)) => {
            if let Some((sub, m)) = matches.subcommand() {
                if m.try_get_one::<bool>("print_config").ok().flatten() == Some(&true) {
                    config::print(sub, m);
                    return ExitCode::SUCCESS;
                }
            }
            cli
        }
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // A bare `secchan` or `secchan registry`: the help is the answer.
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("secchan: {}", usage_error_line(&e.to_string()));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    init_logging(matches!(&cli.command, Command::Chat(a) if a.mode() == device::Chat::Screen));
    // Commands that only touch files or memory run on this thread alone and start no other:
    // a key is made, or an instruction count taken, the same way on any machine (and under
    // emulation, scripts/aarch64.sh). Network commands run on the multi-thread runtime.
    let result = match cli.command {
        Command::Keygen { out } => keys::keygen(&out),
        Command::Fingerprint { file } => keys::fingerprint(&file),
        Command::Registry(command) => registry::run(command),
        Command::Bench(args) => match args.ops() {
            Some(op) => bench::run_ops(&args, op),
            None => on_runtime(bench::run(args)),
        },
        Command::Server(args) => on_runtime(server::run(args)),
        Command::Device(args) => on_runtime(device::run(args)),
        Command::Chat(args) => on_runtime(args.run()),
        Command::Status(args) => status::run(args),
        Command::Demo => on_runtime(demo::run()),
        Command::Completions { shell } => service::completions(shell),
        Command::Man { out_dir } => service::man(out_dir.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::from(error::exit::OK),
        Err(e) => {
            eprintln!("secchan: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn usage_error(args: &[&str]) -> String {
        let e = Cli::try_parse_from(args).unwrap_err();
        assert!(e.use_stderr());
        usage_error_line(&e.to_string())
    }

    #[test]
    fn usage_errors_are_one_line_naming_the_argument() {
        let missing = usage_error(&["secchan", "server", "--listen", "127.0.0.1:0"]);
        assert!(!missing.contains('\n'), "{missing}");
        assert!(missing.contains("--key <FILE>"), "{missing}");
        let range = usage_error(&[
            "secchan",
            "server",
            "--listen",
            "127.0.0.1:0",
            "--key",
            "k",
            "--max-sessions",
            "0",
        ]);
        assert!(!range.contains('\n'), "{range}");
        assert!(range.contains("--max-sessions"), "{range}");
        assert!(
            range.ends_with("run with --help to see the options"),
            "{range}"
        );
        let typo = usage_error(&["secchan", "device", "--conect", "h:1"]);
        assert!(!typo.contains('\n'), "{typo}");
        assert!(
            typo.contains("similar argument exists: '--connect'"),
            "{typo}"
        );
    }
}
