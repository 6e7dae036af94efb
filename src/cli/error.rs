//! CLI failures: each renders as one line, what went wrong followed by what to do.

use crate::handshake::HandshakeError;
use crate::msgs::AlertCode;
use crate::transport::TransportError;
use std::path::PathBuf;

/// A command-line failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A key file could not be read or parsed.
    #[error("cannot use key file {path}: {reason}{hint}", path = path.display(), hint = key_file_advice(path))]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Session resumption could not be set up: the ticket key file, or the random generator.
    #[error("cannot set up session resumption{file}: {reason}; fix or delete the ticket key file, or start with --ticket-lifetime 0 to issue no tickets", file = path.as_ref().map(|p| format!(" with ticket key file {}", p.display())).unwrap_or_default())]
    Tickets {
        /// The `--ticket-key-file`, if one was given.
        path: Option<PathBuf>,
        /// Why.
        reason: String,
    },
    /// A `--server-key` value is neither a fingerprint nor a readable public key file.
    #[error("--server-key {value}: {reason}; give the server's fingerprint as `secchan fingerprint` prints it on the server (SHA256:...), or a copy of its .pub file")]
    ServerKey {
        /// The value given.
        value: String,
        /// Why it was refused.
        reason: String,
    },
    /// A secret key file is readable by other users.
    #[error(
        "secret key file {path} is readable by other users (mode {mode:o}); run `chmod 600 {path}`"
    )]
    KeyPermissions {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// `keygen --out -`.
    #[error("--out -: a secret key is written to a file (mode 0600, with FILE.pub beside it), never to stdout; give a file name")]
    KeyToStdout,
    /// keygen refused to overwrite a file.
    #[error("{0} already exists; choose another --out or delete it first (secchan never overwrites keys)")]
    Exists(PathBuf),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The authorized-devices file is unusable.
    #[error("authorized-devices file {path}{at}: {reason}; each line is `SHA256:<fingerprint> [name]` or the contents of a device's .pub file", path = path.display(), at = if *line > 0 { format!(":{line}") } else { String::new() })]
    AuthorizedDevices {
        /// The file.
        path: PathBuf,
        /// 1-based line (0 if the file could not be read).
        line: usize,
        /// Why.
        reason: String,
    },
    /// The server was started without saying which devices it accepts.
    #[error("no --authorized-devices FILE given: a server accepts only devices on its list; pass --allow-any-device to accept any device (not recommended outside testing)")]
    NoDevicePolicy,
    /// A device needs to know which server to trust.
    #[error("no --server-key given and no known-servers file could be located (set $HOME or $SECCHAN_KNOWN_SERVERS, or pass --known-servers FILE)")]
    NoTrustAnchor,
    /// Trust on first use through a broker, not allowed.
    #[error("no --server-key, and {file} records no key for {host}: trusting on first use through a broker would trust whichever client answers first; pin the server's key with --server-key (or an enrollment token), or accept the first key once with --mqtt-allow-tofu")]
    FirstUseOverBroker {
        /// The broker and prefix, as the known-servers file names them.
        host: String,
        /// The known-servers file.
        file: String,
    },
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}{hint}", hint = address_advice(addr, "--listen 0.0.0.0", "pick a free address and port"))]
    Bind {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The server could not be reached.
    #[error("cannot connect to {addr}: {source}{hint}", hint = address_advice(addr, "--connect 192.0.2.10", "check the address and that `secchan server` runs there"))]
    Connect {
        /// The address.
        addr: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of input is too long to be one message.
    #[error("input line {line} is {len} bytes; a message is at most {max} bytes: split it", max = crate::record::MAX_PAYLOAD)]
    MessageTooLarge {
        /// 1-based line number.
        line: usize,
        /// Its length.
        len: usize,
    },
    /// The state directory (`--state-dir`) or the device's spool (`--spool`) is unusable.
    #[error("{0}")]
    StateDir(crate::delivery::log::StoreError),
    /// A `--config` file is unusable.
    #[error(transparent)]
    Config(#[from] super::config::ConfigError),
    /// A device stopped before every message was acknowledged.
    #[error("{0}{hint}", hint = device_advice(.0))]
    Device(crate::service::tcp_device::DeviceError),
    /// `secchan chat` could not draw on the terminal.
    #[error("cannot draw on the terminal: {0}; run `secchan chat --line` for line mode")]
    Terminal(std::io::Error),
    /// The server's output failed.
    #[error("{0}; the devices keep every message that was not acknowledged")]
    Output(crate::service::sink::SinkError),
    /// `--sink` is unusable (the URL is never repeated: it may carry a password).
    #[error("--sink: {0}")]
    Sink(String),
    /// The broker password file could not be read.
    #[error("cannot read the MQTT password file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The telemetry source failed.
    #[error(transparent)]
    Telemetry(#[from] crate::telemetry::TelemetryError),
    /// Reading stdin or writing stdout failed.
    #[error("local I/O failed: {0}")]
    LocalIo(#[from] std::io::Error),
    /// The async runtime for a network command could not be started.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// A registry command failed, or a server's registry is unusable.
    #[error("registry {path}: {error}{hint}", path = path.display(), hint = registry_advice(path, error))]
    Registry {
        /// The registry file.
        path: PathBuf,
        /// What went wrong.
        error: crate::registry::RegistryError,
    },
    /// `--peer-authority` is the server's own key, so it would vouch for nothing.
    #[error("--peer-authority names the server's own key: peers would be trusted on the server's word; pin the offline key that signs the registry (docs/registry.md §10)")]
    AuthorityIsServer,
    /// An enrollment token was given without a device key to enroll.
    #[error("--enroll-token needs a device identity: create one with `secchan keygen --out device.key` and pass --key device.key")]
    EnrollWithoutKey,
    /// The --enroll-token value is not a token.
    #[error("{0}; pass the whole line `secchan registry token` printed")]
    EnrollToken(crate::registry::RegistryError),
    /// A benchmark could not run.
    #[error("benchmark failed: {0}")]
    Bench(#[from] crate::bench::BenchError),
    /// A session failed.
    #[error("{error}{caveat}{hint}", caveat = caveat(error), hint = advice(error))]
    Session {
        /// The transport error.
        error: TransportError,
    },
}

/// The documented exit codes (README, "Exit codes").
pub mod exit {
    /// Success: for a device, every message was acknowledged by the server.
    pub const OK: u8 = 0;
    /// Anything not listed below (local I/O, a spool or state directory that fails).
    pub const FAILURE: u8 = 1;
    /// A usage or configuration error (an option, a file the command was given).
    pub const USAGE: u8 = 2;
    /// A key or trust problem: an unusable key file, a server key that does not match.
    pub const TRUST: u8 = 3;
    /// The peer refused: the server refused this device, or a handshake failed its checks.
    pub const REFUSED: u8 = 4;
    /// The network gave up: no session could be had (in time).
    pub const NETWORK: u8 = 5;
    /// Stopped by a signal with messages still unacknowledged (kept with --spool).
    pub const UNDELIVERED: u8 = 6;
    /// The server's output (stdout, --out, the state directory) failed.
    pub const OUTPUT: u8 = 7;
}

/// The exit code of a session failure.
fn session_exit(error: &TransportError) -> u8 {
    match error {
        TransportError::Trust(_) => exit::TRUST,
        TransportError::Refused(_) | TransportError::Handshake(_) => exit::REFUSED,
        TransportError::Session(crate::session::SessionError::PeerAlert(_)) => exit::REFUSED,
        #[cfg(feature = "mqtt")]
        TransportError::Mqtt(crate::transport::mqtt::MqttError::Unacknowledged(_)) => {
            exit::UNDELIVERED
        }
        _ => exit::NETWORK,
    }
}

impl CliError {
    /// The process exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        use crate::service::tcp_device::DeviceError;
        match self {
            Self::KeyFile { .. }
            | Self::ServerKey { .. }
            | Self::KeyPermissions { .. }
            | Self::NoTrustAnchor
            | Self::EnrollWithoutKey
            | Self::AuthorityIsServer
            | Self::EnrollToken(_) => exit::TRUST,
            Self::AuthorizedDevices { .. }
            | Self::NoDevicePolicy
            | Self::Bind { .. }
            | Self::PasswordFile { .. }
            | Self::Sink(_)
            | Self::Config(_)
            | Self::Tickets { .. } => exit::USAGE,
            Self::Connect { .. } => exit::NETWORK,
            Self::Output(_) | Self::Terminal(_) => exit::OUTPUT,
            Self::Session { error } => session_exit(error),
            Self::Device(DeviceError::Session(error)) => session_exit(error),
            Self::Device(DeviceError::GaveUp { .. }) => exit::NETWORK,
            Self::Device(DeviceError::Undelivered { .. }) => exit::UNDELIVERED,
            Self::Device(DeviceError::End(e)) => {
                use crate::service::device_end::EndError;
                match e {
                    EndError::Refused { .. } => exit::REFUSED,
                    EndError::PeerFailed { .. } => exit::TRUST,
                    EndError::Output(_) => exit::OUTPUT,
                    _ => exit::USAGE,
                }
            }
            _ => exit::FAILURE,
        }
    }
}

impl From<TransportError> for CliError {
    fn from(error: TransportError) -> Self {
        Self::Session { error }
    }
}

/// What to do about an address that could not be used: a bare port or host gets an example
/// of HOST:PORT (`example` is the option and an example host), anything else `otherwise`.
fn address_advice(addr: &str, example: &str, otherwise: &str) -> String {
    if !addr.contains(':') {
        let port = if addr.parse::<u16>().is_ok() {
            addr
        } else {
            "4433"
        };
        format!("; give a host and a port, e.g. {example}:{port}")
    } else {
        format!("; {otherwise}")
    }
}

/// What to do after a device stopped early.
fn device_advice(e: &crate::service::tcp_device::DeviceError) -> String {
    use crate::service::tcp_device::DeviceError;
    match e {
        DeviceError::Session(error) => format!("{}{}", caveat(error), advice(error)),
        DeviceError::GaveUp { .. } | DeviceError::Undelivered { .. } => {
            "; run again with the same --spool to send them (without --spool they are lost)".into()
        }
        _ => String::new(),
    }
}

/// What to do about an unusable key file: pass the secret half of a `.pub` file; create a key
/// where none exists; and never suggest writing a key over a file that is something else.
fn key_file_advice(path: &std::path::Path) -> String {
    let stem = path.to_string_lossy();
    if let Some(secret) = stem.strip_suffix(".pub") {
        format!("; a .pub file is the public key `secchan keygen --out FILE` writes as FILE.pub: pass {secret}")
    } else if path.exists() {
        "; pass a secret key file written by `secchan keygen --out FILE`".into()
    } else {
        format!(
            "; create one with `secchan keygen --out {}`",
            path.display()
        )
    }
}

fn alert_advice(code: AlertCode) -> &'static str {
    match code {
        AlertCode::SuiteRefused => {
            "; connect with the --mode the server runs (hybrid unless its operator chose otherwise), or ask its operator to run it with --mode any (X25519Kyber768R3 also needs a server built with --features kyber-r3)"
        }
        AlertCode::UnknownDevice => {
            "; ask the server's operator to enroll this device's fingerprint (`secchan fingerprint KEYFILE`) with `secchan registry enroll`, or add it to the server's authorized-devices file, or ask for an enrollment token (`secchan registry token`)"
        }
        AlertCode::DeviceAuthRequired => {
            "; create a device key with `secchan keygen --out device.key`, pass --key device.key, and have it enrolled or authorized"
        }
        AlertCode::UnsupportedVersion => "; upgrade the older of the two secchan builds",
        AlertCode::Revoked => {
            "; this device's key was revoked by the server's operator: a revoked key never returns, ask for a new enrollment with a new key"
        }
        AlertCode::WrongGroup => {
            "; this server does not serve the device's group: connect to the server for its group, or ask the operator to move the device"
        }
        AlertCode::EnrollmentRefused => {
            "; the token is not one this server issued (check --connect and the token), or the server's registry is signed by an offline authority and takes no tokens: ask the operator for a new token or an enrollment by key"
        }
        AlertCode::TokenUsed | AlertCode::TokenExpired => {
            "; tokens are single-use and short-lived: ask the server's operator for a new one (`secchan registry token`)"
        }
        AlertCode::NoCommonAead => "; allow both AEADs on both sides (the default)",
        _ => "",
    }
}

/// What the reader must know before trusting the message itself.
fn caveat(error: &TransportError) -> &'static str {
    match error {
        // protocol.md §8.1: the refusal is a plaintext alert, which no key authenticates.
        TransportError::Refused(_) => {
            " (an unauthenticated refusal: someone on the network could have forged it, the server's log shows a real one)"
        }
        _ => "",
    }
}

/// What to do about a session failure, as a clause appended to its message.
fn advice(error: &TransportError) -> &'static str {
    match error {
        TransportError::Refused(code)
        | TransportError::Handshake(HandshakeError::PeerAlert(code))
        | TransportError::Session(crate::session::SessionError::PeerAlert(code)) => {
            alert_advice(*code)
        }
        TransportError::Handshake(HandshakeError::ServerAuthFailed) => {
            "; the connection may be intercepted: do not retry over this network until you know why"
        }
        TransportError::Handshake(HandshakeError::Downgrade { .. }) => {
            "; someone on the network is tampering with the handshake"
        }
        TransportError::Trust(crate::trust::TrustError::Mismatch { .. }) => {
            "; if the server's key was replaced on purpose, pin the new fingerprint, otherwise someone may be impersonating the server"
        }
        TransportError::HandshakeTimeout(_) => {
            "; check that the address is a secchan server and the network is not dropping packets"
        }
        TransportError::Truncated => {
            "; the peer or the network cut the connection: messages after the last acknowledged one may be lost"
        }
        _ => "",
    }
}

/// What to do about a registry failure, as a clause appended to its message.
fn registry_advice(path: &std::path::Path, error: &crate::registry::RegistryError) -> String {
    use crate::registry::{file::head_path, RegistryError, VerifyError};
    let file = path.display();
    let refused = format!(
        "no server starts on it and nothing is appended: inspect it with `secchan registry verify {file}`"
    );
    match error {
        RegistryError::Verify(VerifyError::Torn { .. }) => format!(
            "; {refused}; if an append was interrupted, `secchan registry repair --key SERVER_KEY {file}` removes the torn entry, otherwise restore it from a backup"
        ),
        RegistryError::Verify(VerifyError::WrongServer { .. }) => format!(
            "; use the server key that created {file} (--key), or create a registry for this key with `secchan registry init`"
        ),
        RegistryError::Head { path: head, .. } if *head == head_path(path) => format!(
            "; {refused}; {} is part of the registry: copy it together with {file} or restore both from a backup (an interrupted `secchan registry init` completes when run again)",
            head.display()
        ),
        RegistryError::Head { path: anchor, .. } => format!(
            "; {} is the server's anchor file (--registry-anchor): restore it, or delete it to accept {file} as it is",
            anchor.display()
        ),
        RegistryError::BehindAnchor { anchor, .. } => format!(
            "; {refused} and restore its latest copy from a backup; if you restored an older registry on purpose, delete {} to accept it",
            anchor.display()
        ),
        RegistryError::Verify(_) | RegistryError::RolledBack { .. } => format!(
            "; the registry fails verification, so {refused} and restore it from a backup"
        ),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_advice_never_creates_a_pub_file() {
        let secret = CliError::KeyFile {
            path: "dev.key".into(),
            reason: "No such file".into(),
        };
        assert!(secret
            .to_string()
            .ends_with("create one with `secchan keygen --out dev.key`"));
        let public = CliError::KeyFile {
            path: "server.key.pub".into(),
            reason: "No such file".into(),
        }
        .to_string();
        assert!(!public.contains("--out server.key.pub"), "{public}");
    }

    #[test]
    fn suite_refusal_advice_holds_for_either_side_s_mode() {
        let text = CliError::from(TransportError::Handshake(HandshakeError::PeerAlert(
            AlertCode::SuiteRefused,
        )))
        .to_string();
        assert!(
            text.contains("connect with the --mode the server runs"),
            "{text}"
        );
        assert!(!text.contains("use --mode hybrid"), "{text}");
    }

    #[test]
    fn a_plaintext_refusal_is_called_unauthenticated() {
        let refused = CliError::from(TransportError::Refused(AlertCode::Revoked)).to_string();
        assert!(
            refused.starts_with("server refused the session: device identity revoked"),
            "{refused}"
        );
        assert!(refused.contains("unauthenticated refusal"), "{refused}");
        assert!(refused.contains("ask for a new enrollment"), "{refused}");
        // An authenticated error close carries no such caveat.
        let closed = CliError::from(TransportError::Session(
            crate::session::SessionError::PeerAlert(AlertCode::Revoked),
        ))
        .to_string();
        assert!(!closed.contains("unauthenticated"), "{closed}");
    }
}
