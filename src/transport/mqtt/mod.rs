//! secchan over an MQTT 5 broker (docs/mqtt.md): the same handshake and records as over TCP,
//! one frame per MQTT message, on topics that carry random session identifiers only.
//!
//! - [`topics`]: the topic layout and the opaque identifiers in it.
//! - [`MqttDevice`]: a device that keeps a session up through broker restarts and
//!   re-handshakes, delivering every message exactly once to the server's output.
//! - [`MqttServer`]: a server instance; several share the load through a shared subscription.
//!
//! The broker sees the MQTT client id, credentials and address of each client, the topics,
//! and the frames: ciphertext, ephemeral key shares, and sizes. It never sees a device's
//! identity key or any payload.

mod device;
mod link;
mod server;
mod tls;
pub mod topics;

pub use device::{DeviceOptions, DeviceStats, MqttDevice, DEFAULT_HANDSHAKE_ATTEMPTS};
pub use server::{Counters, Delivery, Incoming, MqttServer, ServerOptions, ServerStats};
pub use tls::{ClientCert, TlsOptions};
pub use topics::Topics;

use crate::msgs::FrameType;
use crate::record::{MAX_UNORDERED_RECORD_LEN, UNORDERED_RECORD_OVERHEAD};
use std::time::Duration;
use zeroize::Zeroizing;

/// Default MQTT port (plain TCP).
pub const DEFAULT_PORT: u16 = 1883;
/// Default MQTT port over TLS.
pub const DEFAULT_TLS_PORT: u16 = 8883;

/// Largest secchan frame in one MQTT message: a full record in the unordered layout.
pub const MAX_FRAME_LEN: usize = MAX_UNORDERED_RECORD_LEN;

/// Largest MQTT packet secchan accepts from the broker, announced in CONNECT so the broker
/// drops bigger messages itself: one full record plus room for the topic and headers.
pub const MAX_PACKET_SIZE: u32 = 32 * 1024;

/// How to reach the broker, and as whom.
#[derive(Clone)]
pub struct Broker {
    /// Broker host name or address.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; `None` draws a random `secchan-<hex>` id.
    pub client_id: Option<String>,
    /// Broker user name.
    pub username: Option<String>,
    /// Broker password (only sent with a user name).
    pub password: Option<Zeroizing<String>>,
    /// Topic prefix.
    pub topics: Topics,
    /// MQTT keep-alive: how quickly a dead broker connection is noticed.
    pub keep_alive: Duration,
    /// Which of the device's broker names is its `{client}` topic level (docs/mqtt.md §2).
    pub topic_level: TopicLevel,
    /// TLS to the broker (`mqtts://`); `None` for plain TCP.
    pub tls: Option<TlsOptions>,
}

/// Which name of a device's broker connection its topics carry, so that the broker's ACL can
/// confine it to them: Mosquitto's `%c` (client id) or `%u` (user name) pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicLevel {
    /// The MQTT client id (`--mqtt-client-id`, or the random `secchan-<hex>`).
    #[default]
    ClientId,
    /// The broker user name (`--mqtt-username`, or the name a client certificate maps to).
    Username,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("topics", &self.topics)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Broker {
    /// Parses `mqtt://HOST[:PORT]` (or `tcp://`), or `mqtts://HOST[:PORT]` (or `ssl://`) for
    /// TLS with the system's roots; credentials and certificates are set separately, so
    /// that no secret appears on a command line.
    pub fn parse_url(url: &str) -> Result<Self, MqttError> {
        let bad = |reason: &str| MqttError::Url {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (rest, tls, default_port) = match url.split_once("://") {
            Some(("mqtt" | "tcp", rest)) => (rest, None, DEFAULT_PORT),
            Some(("mqtts" | "ssl", rest)) => (rest, Some(TlsOptions::default()), DEFAULT_TLS_PORT),
            Some(("ws" | "wss", _)) => {
                return Err(bad(
                    "MQTT over WebSockets is not built in: use mqtt:// or mqtts://",
                ))
            }
            _ => return Err(bad("expected mqtt://HOST:PORT or mqtts://HOST:PORT")),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('@') {
            return Err(bad("put the user name in --mqtt-username and the password in a file (--mqtt-password-file), not in the URL"));
        }
        if authority.contains('/') || authority.contains('?') {
            return Err(bad(
                "the URL names only the broker: set the topic prefix with --mqtt-prefix",
            ));
        }
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| bad("invalid port"))
        };
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => match bracketed.split_once(']') {
                Some((h, "")) => (h, default_port),
                Some((h, after)) => (h, port(after.strip_prefix(':').unwrap_or(after))?),
                None => return Err(bad("unclosed [ in the host")),
            },
            None => match authority.split_once(':') {
                Some((h, p)) => (h, port(p)?),
                None => (authority, default_port),
            },
        };
        if host.is_empty() {
            return Err(bad("missing host"));
        }
        Ok(Self {
            host: host.to_string(),
            port,
            client_id: None,
            username: None,
            password: None,
            topics: Topics::default(),
            keep_alive: Duration::from_secs(15),
            topic_level: TopicLevel::default(),
            tls,
        })
    }

    /// `mqtt://host:port/prefix`, naming this broker and topic space (e.g. in a
    /// known-servers file).
    pub fn display_name(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let scheme = if self.tls.is_some() { "mqtts" } else { "mqtt" };
        format!("{scheme}://{host}:{}/{}", self.port, self.topics.prefix())
    }

    /// The rumqttc options secchan's own connections use (client id, credentials,
    /// keep-alive, clean start, packet size), for a bare MQTT client beside them.
    pub fn client_options(&self) -> Result<rumqttc::v5::MqttOptions, MqttError> {
        link::options(self, &self.client_id()?)
    }

    /// The client id to connect with: the one set, or a fresh random `secchan-<hex>`.
    pub fn client_id(&self) -> Result<String, MqttError> {
        match &self.client_id {
            Some(id) => Ok(id.clone()),
            None => Ok(format!(
                "secchan-{}",
                random_hex::<8>().map_err(|e| MqttError::Unreachable {
                    broker: self.address(),
                    reason: e.to_string(),
                })?
            )),
        }
    }

    /// `host:port`, as error messages name the broker.
    pub(crate) fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// A device's `{client}` topic level for a connection made with `client_id`.
    pub(crate) fn device_level(&self, client_id: &str) -> Result<String, MqttError> {
        let (what, level) = match self.topic_level {
            TopicLevel::ClientId => ("MQTT client id", client_id),
            TopicLevel::Username => (
                "MQTT user name",
                self.username.as_deref().ok_or(MqttError::Topic {
                    what: "topic level",
                    value: "username".into(),
                    reason:
                        "the topics carry the broker user name, but none is set (--mqtt-username)",
                })?,
            ),
        };
        topics::check_client_level(what, level)?;
        Ok(level.to_string())
    }
}

/// MQTT-specific failures.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MqttError {
    /// The broker URL is unusable.
    #[error("invalid MQTT broker URL {url:?}: {reason}")]
    Url {
        /// The URL as given.
        url: String,
        /// Why.
        reason: String,
    },
    /// A topic prefix or share group is unusable.
    #[error("invalid {what} {value:?}: {reason}")]
    Topic {
        /// Which setting.
        what: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: &'static str,
    },
    /// The broker could not be reached.
    #[error("cannot reach the MQTT broker at {broker}: {reason}; check the URL and that the broker runs")]
    Unreachable {
        /// host:port.
        broker: String,
        /// The connection error.
        reason: String,
    },
    /// The broker refused the connection.
    #[error("the MQTT broker at {broker} refused the connection ({code}): {hint}")]
    Refused {
        /// host:port.
        broker: String,
        /// The CONNACK reason.
        code: String,
        /// What to check.
        hint: &'static str,
    },
    /// The TLS handshake with the broker failed.
    #[error("TLS to the MQTT broker at {broker} failed: {reason}; check --mqtt-ca (the CA that signed the broker's certificate), that the certificate names the host in the URL, and --mqtt-client-cert if the broker requires one")]
    TlsHandshake {
        /// host:port.
        broker: String,
        /// rustls' reason.
        reason: String,
    },
    /// A TLS file could not be used.
    #[error("cannot use {file} as the {what}: {reason}")]
    TlsFile {
        /// Which file.
        what: &'static str,
        /// Its path.
        file: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// No CA certificate for `mqtts://` without `--mqtt-ca`.
    #[error("no CA certificates found on this system for mqtts://: pass the CA that signed the broker's certificate with --mqtt-ca FILE")]
    NoSystemRoots,
    /// The TLS configuration could not be built.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The broker refused to subscribe secchan to its topics.
    #[error("the MQTT broker refused a subscription ({reason}); allow this client to subscribe to the secchan topics in the broker's ACL")]
    SubscribeRefused {
        /// The SUBACK reason.
        reason: String,
    },
    /// The server's replay window cannot cover the records a device keeps in flight, so
    /// reordered records would be refused as too old.
    #[error("a replay window of {window} records is smaller than the {min} messages a device keeps in flight over MQTT: set --replay-window to at least {min}")]
    ReplayWindow {
        /// The window, as rounded by the record layer.
        window: u64,
        /// The smallest window that covers a device's in-flight messages.
        min: usize,
    },
    /// No server answered the handshake.
    #[error("no secchan server answered on {topic} within {after:?}; check that `secchan server --mqtt` runs against the same broker and --mqtt-prefix")]
    NoServer {
        /// Where the hello was published.
        topic: String,
        /// How long the device waited.
        after: Duration,
    },
    /// Messages were still unacknowledged when the device had to stop.
    #[error("{0} messages were not acknowledged by the server before the deadline; they may not have been delivered")]
    Unacknowledged(usize),
    /// The device's spool could not be written.
    #[error(transparent)]
    Spool(#[from] crate::delivery::spool::SpoolError),
    /// The device's receiving side or an end-to-end session failed.
    #[error(transparent)]
    End(crate::service::device_end::EndError),
    /// The background task ended unexpectedly.
    #[error("the MQTT connection task stopped")]
    Stopped,
}

impl MqttError {
    /// Why a first connection to `broker` (host:port) failed.
    pub fn connecting(broker: String, e: rumqttc::v5::ConnectionError) -> Self {
        use rumqttc::v5::mqttbytes::v5::ConnectReturnCode as Code;
        match e {
            rumqttc::v5::ConnectionError::ConnectionRefused(code) => Self::Refused {
                broker,
                code: format!("{code:?}"),
                hint: match code {
                    Code::BadUserNamePassword => "wrong user name or password: check --mqtt-username and --mqtt-password-file (or $SECCHAN_MQTT_PASSWORD)",
                    // Mosquitto answers a wrong password with this code too.
                    Code::NotAuthorized => "the broker did not accept this client's credentials: check --mqtt-username and --mqtt-password-file (or $SECCHAN_MQTT_PASSWORD), or the client certificate, and the broker's accounts",
                    Code::ClientIdentifierNotValid => "the broker does not accept this client id: check --mqtt-client-id",
                    _ => "check --mqtt-username and the password, and the broker's configuration",
                },
            },
            rumqttc::v5::ConnectionError::Tls(e) => Self::TlsHandshake {
                broker,
                reason: e.to_string(),
            },
            e => Self::Unreachable {
                broker,
                reason: e.to_string(),
            },
        }
    }
}

/// What names a device's session where a TCP session has the device's address (the output's
/// `peer`, `secchan status`): `mqtt:{client}/{session}`.
pub fn peer(client: &str, session: &str) -> String {
    format!("mqtt:{client}/{session}")
}

/// Whether unauthenticated bytes can be a record at all. Anything else is dropped before it
/// reaches the session, so a stranger on the broker cannot close it with garbage.
fn may_be_record(frame: &[u8]) -> bool {
    frame.len() >= UNORDERED_RECORD_OVERHEAD && FrameType::of(frame).is_ok_and(FrameType::is_record)
}

/// A random identifier of `N` bytes as lowercase hex.
pub fn random_hex<const N: usize>() -> Result<String, crate::crypto::CryptoError> {
    use crate::crypto::random::{OsRandom, Random};
    let mut b = [0u8; N];
    OsRandom.fill(&mut b)?;
    Ok(hex::encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls() {
        let b = Broker::parse_url("mqtt://127.0.0.1:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", 1884));
        let b = Broker::parse_url("tcp://broker.local/").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("broker.local", DEFAULT_PORT));
        let b = Broker::parse_url("mqtt://[::1]:1999").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("::1", 1999));
        assert_eq!(b.display_name(), "mqtt://[::1]:1999/secchan");
        let b = Broker::parse_url("mqtts://broker.local").unwrap();
        assert_eq!((b.port, b.tls.is_some()), (DEFAULT_TLS_PORT, true));
        assert_eq!(b.display_name(), "mqtts://broker.local:8883/secchan");
        for bad in [
            "127.0.0.1:1883",
            "wss://h:8883",
            "mqtt://user:pw@h:1883",
            "mqtt://h:0",
            "mqtt://h:99999",
            "mqtt://h:1883/topic",
            "mqtt://:1883",
        ] {
            assert!(
                matches!(Broker::parse_url(bad), Err(MqttError::Url { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn only_plausible_records_reach_a_session() {
        assert!(!may_be_record(&[]));
        assert!(!may_be_record(&[0x10; UNORDERED_RECORD_OVERHEAD - 1]));
        assert!(may_be_record(&[0x10; UNORDERED_RECORD_OVERHEAD]));
        assert!(!may_be_record(&[FrameType::DeviceFinish as u8; 64]));
        assert!(!may_be_record(&[0xff; 64]));
    }

    #[test]
    fn debug_hides_the_password() {
        let mut b = Broker::parse_url("mqtt://h").unwrap();
        b.password = Some(Zeroizing::new("hunter2".into()));
        assert!(!format!("{b:?}").contains("hunter2"));
    }
}
