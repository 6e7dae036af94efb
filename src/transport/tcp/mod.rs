//! secchan over TCP (protocol.md §2.1): each frame is a 2-byte big-endian length and a body.

mod connection;

pub use super::framing::FRAME_PREFIX_LEN;
use super::{Timeouts, TransportError};
use crate::crypto::random::OsRandom;
use crate::handshake::device::{self, DeviceConfig};
use crate::handshake::resume::{self, Ticket};
use crate::handshake::server::{self, FirstReply, PeerDevice, ServerConfig};
use crate::handshake::HandshakeError;
use crate::msgs::AlertCode;
use crate::session::Session;
use crate::trust::ServerVerifier;
use connection::{expect_frame, framed, linger, send_alert, write_frame, Io};
pub use connection::{Connection, WireStats};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

/// Opens a TCP connection to `addr` by `deadline`, running `prepare` (the ephemeral key
/// generation) while the TCP handshake is under way: connect sends its SYN and waits, and the
/// key generation fills that round trip instead of following it.
async fn open<T>(
    addr: impl ToSocketAddrs,
    deadline: tokio::time::Instant,
    timeouts: Timeouts,
    prepare: impl FnOnce() -> Result<T, HandshakeError>,
) -> Result<(Io, SocketAddr, T), TransportError> {
    let (stream, prepared) = tokio::join!(
        biased;
        tokio::time::timeout_at(deadline, TcpStream::connect(addr)),
        async { prepare() },
    );
    let stream = stream.map_err(|_| TransportError::HandshakeTimeout(timeouts.handshake))??;
    let prepared = prepared?;
    stream.set_nodelay(true)?;
    let peer_addr = stream.peer_addr()?;
    Ok((framed(stream), peer_addr, prepared))
}

/// Runs a device's handshake within `deadline`.
async fn within<T>(
    deadline: tokio::time::Instant,
    timeouts: Timeouts,
    handshake: impl std::future::Future<Output = Result<T, TransportError>>,
) -> Result<T, TransportError> {
    tokio::time::timeout_at(deadline, handshake)
        .await
        .map_err(|_| TransportError::HandshakeTimeout(timeouts.handshake))?
}

/// The connection a device's handshake established.
fn device_connection(
    io: Io,
    peer_addr: SocketAddr,
    mut stats: WireStats,
    session: Session,
    timeouts: Timeouts,
) -> Connection {
    stats.handshake_sent = stats.sent;
    stats.handshake_received = stats.received;
    // After a full handshake the server may still refuse the device (protocol.md §6.1 step
    // 4); a resumed device was authorized before the server answered.
    let refusal_window =
        (!session.is_resumed()).then(|| tokio::time::Instant::now() + timeouts.handshake);
    Connection {
        io,
        session,
        timeouts,
        peer_addr,
        stats,
        refusal_window,
        ticket: None,
        answer_close: true,
    }
}

/// The server's first frame. When what came back is no secchan frame, the bytes may say what
/// answered instead (a web server, an SSH server, a TLS server on the port), which helps the
/// user more than "truncated" or "frame too large".
async fn server_reply(
    io: &mut Io,
    stats: &mut WireStats,
) -> Result<bytes::BytesMut, TransportError> {
    match expect_frame(io, stats).await {
        Err(
            e @ (TransportError::FrameTooLarge | TransportError::Truncated | TransportError::Io(_)),
        ) => Err(other_protocol(io.read_buffer()).map_or(e, TransportError::NotSecchan)),
        other => other,
    }
}

/// What kind of server sent `bytes`, if they are recognisably not secchan's.
fn other_protocol(bytes: &[u8]) -> Option<&'static str> {
    match bytes {
        [b'H', b'T', b'T', b'P', b'/', ..] => Some("an HTTP server"),
        [b'S', b'S', b'H', b'-', ..] => Some("an SSH server"),
        [0x15 | 0x16, 0x03, ..] => Some("a TLS server"),
        _ => None,
    }
}

/// Connects to a server, runs the handshake, and checks the server's identity with
/// `verifier` before revealing the device's own identity. The TCP connect and the handshake
/// together must finish within `timeouts.handshake`.
pub async fn connect(
    addr: impl ToSocketAddrs,
    config: &DeviceConfig,
    verifier: &dyn ServerVerifier,
    timeouts: Timeouts,
) -> Result<Connection, TransportError> {
    let deadline = tokio::time::Instant::now() + timeouts.handshake;
    let (mut io, peer_addr, (expect, hello)) = open(addr, deadline, timeouts, || {
        device::start(config, &mut OsRandom)
    })
    .await?;
    let mut stats = WireStats::default();
    let handshake = async {
        write_frame(&mut io, &mut stats, &hello).await?;
        let reply = server_reply(&mut io, &mut stats).await?;
        let authed = match expect.read_server_hello(&reply) {
            Ok(a) => a,
            Err(e) => {
                if let Some(code) = e.alert() {
                    send_alert(&mut io, code).await;
                }
                return Err(e.into());
            }
        };
        if let Err(e) = verifier.verify(authed.server_identity()) {
            send_alert(&mut io, AlertCode::ServerRejected).await;
            return Err(e.into());
        }
        let (session, finish) = authed.finish(Instant::now())?;
        write_frame(&mut io, &mut stats, &finish).await?;
        Ok(session)
    };
    let session = within(deadline, timeouts, handshake).await?;
    Ok(device_connection(io, peer_addr, stats, session, timeouts))
}

/// Resumes a session with `ticket` (protocol.md §6.3): one round trip, a fresh X25519, no
/// signature. The ticket's server identity is checked with `verifier` first, as
/// [`connect`] checks the server's. A refusal by the server is
/// [`TransportError::TicketRefused`]; an expired ticket, or one that does not fit `config`, is
/// [`HandshakeError::TicketUnusable`] before anything is sent. Either way, fall back to
/// [`connect`]. The connection's [`take_ticket`](Connection::take_ticket) then holds the
/// next ticket, once [`recv`](Connection::recv) has read it.
pub async fn resume(
    addr: impl ToSocketAddrs,
    config: &DeviceConfig,
    ticket: &Ticket,
    verifier: &dyn ServerVerifier,
    timeouts: Timeouts,
) -> Result<Connection, TransportError> {
    if !ticket.is_valid_at(SystemTime::now()) {
        return Err(HandshakeError::TicketUnusable("it has expired").into());
    }
    verifier.verify(ticket.server_identity())?;
    let deadline = tokio::time::Instant::now() + timeouts.handshake;
    let (mut io, peer_addr, (expect, hello)) = open(addr, deadline, timeouts, || {
        resume::start(config, ticket, &mut OsRandom)
    })
    .await?;
    let mut stats = WireStats::default();
    let handshake = async {
        write_frame(&mut io, &mut stats, &hello).await?;
        let reply = server_reply(&mut io, &mut stats).await?;
        match expect.read_reply(&reply, Instant::now()) {
            Ok(session) => Ok(session),
            Err(HandshakeError::PeerAlert(code)) => Err(TransportError::TicketRefused(code)),
            Err(e) => {
                if let Some(code) = e.alert() {
                    send_alert(&mut io, code).await;
                }
                Err(e.into())
            }
        }
    };
    let session = within(deadline, timeouts, handshake).await?;
    Ok(device_connection(io, peer_addr, stats, session, timeouts))
}

/// A TCP listener for secchan servers.
#[derive(Debug)]
pub struct Listener {
    tcp: TcpListener,
    config: Arc<ServerConfig>,
    timeouts: Timeouts,
}

impl Listener {
    /// Binds `addr`.
    pub async fn bind(
        addr: impl ToSocketAddrs,
        config: Arc<ServerConfig>,
        timeouts: Timeouts,
    ) -> std::io::Result<Self> {
        Ok(Self {
            tcp: TcpListener::bind(addr).await?,
            config,
            timeouts,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }

    /// Waits for the next TCP connection. Run [`Incoming::handshake`] on it, typically in its
    /// own task, so a slow device never holds up the accept loop.
    pub async fn accept(&self) -> std::io::Result<Incoming> {
        let (stream, peer_addr) = self.tcp.accept().await?;
        Ok(Incoming {
            stream,
            peer_addr,
            config: self.config.clone(),
            timeouts: self.timeouts,
        })
    }
}

/// A TCP connection whose handshake has not run yet.
#[derive(Debug)]
pub struct Incoming {
    stream: TcpStream,
    peer_addr: SocketAddr,
    config: Arc<ServerConfig>,
    timeouts: Timeouts,
}

impl Incoming {
    /// The device's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Runs the server side of the handshake.
    pub async fn handshake(self) -> Result<(Connection, PeerDevice), TransportError> {
        accept(self.stream, &self.config, self.timeouts).await
    }
}

/// Why a server-side handshake stopped: the socket, or the protocol (which earns an alert).
enum Failure {
    Transport(TransportError),
    Handshake(HandshakeError),
}

impl From<TransportError> for Failure {
    fn from(e: TransportError) -> Self {
        Self::Transport(e)
    }
}

impl From<HandshakeError> for Failure {
    fn from(e: HandshakeError) -> Self {
        Self::Handshake(e)
    }
}

/// Runs the server side of the handshake on an accepted stream. On failure the device gets
/// a plaintext alert saying why, and the server logs a warning naming the peer.
pub async fn accept(
    stream: TcpStream,
    config: &ServerConfig,
    timeouts: Timeouts,
) -> Result<(Connection, PeerDevice), TransportError> {
    stream.set_nodelay(true)?;
    let peer_addr = stream.peer_addr()?;
    let mut io = framed(stream);
    let mut stats = WireStats::default();
    let handshake = async {
        let first = expect_frame(&mut io, &mut stats).await?;
        let wall_now = SystemTime::now();
        match server::accept_first(config, &first, &mut OsRandom, Instant::now(), wall_now)? {
            FirstReply::Full(expect, reply) => {
                write_frame(&mut io, &mut stats, &reply).await?;
                let finish = expect_frame(&mut io, &mut stats).await?;
                Ok::<_, Failure>(expect.read_device_finish(&finish, Instant::now())?)
            }
            FirstReply::Resumed(established, reply) => {
                write_frame(&mut io, &mut stats, &reply).await?;
                Ok(*established)
            }
        }
    };
    let (session, peer) = match tokio::time::timeout(timeouts.handshake, handshake).await {
        Ok(Ok(v)) => v,
        Err(_) => {
            tracing::warn!(peer = %peer_addr, "handshake timed out");
            send_alert(&mut io, AlertCode::Timeout).await;
            return Err(TransportError::HandshakeTimeout(timeouts.handshake));
        }
        Ok(Err(Failure::Transport(e))) => {
            tracing::warn!(peer = %peer_addr, error = %e, "handshake failed");
            return Err(e);
        }
        Ok(Err(Failure::Handshake(e))) => {
            if let Some(code) = e.alert() {
                send_alert(&mut io, code).await;
                linger(io.get_mut()).await;
            }
            match &e {
                HandshakeError::DeviceRefused { device, code } => tracing::warn!(
                    peer = %peer_addr, device = %device, reason = %code, "device refused"
                ),
                HandshakeError::TicketRejected(reason) => tracing::info!(
                    peer = %peer_addr, %reason, "resumption refused: the device falls back to a full handshake"
                ),
                _ => tracing::warn!(peer = %peer_addr, error = %e, "handshake failed"),
            }
            return Err(e.into());
        }
    };
    stats.handshake_sent = stats.sent;
    stats.handshake_received = stats.received;
    let mut conn = Connection {
        io,
        session,
        timeouts,
        peer_addr,
        stats,
        refusal_window: None,
        ticket: None,
        answer_close: true,
    };
    // protocol.md §7.6: a fresh ticket right after every established session.
    if let Some(resumption) = &config.resumption {
        conn.session.issue_ticket(resumption, SystemTime::now())?;
        conn.write_out().await?;
    }
    Ok((conn, peer))
}

#[cfg(test)]
mod tests {
    use super::other_protocol;

    #[test]
    fn other_servers_are_recognised_by_their_first_bytes() {
        assert_eq!(
            other_protocol(b"HTTP/1.1 400 Bad Request"),
            Some("an HTTP server")
        );
        assert_eq!(
            other_protocol(b"SSH-2.0-OpenSSH_9.2"),
            Some("an SSH server")
        );
        assert_eq!(
            other_protocol(&[0x15, 0x03, 0x03, 0, 2, 2, 50]),
            Some("a TLS server")
        );
        assert_eq!(other_protocol(&[0x04, 0xd4, 0x02]), None);
    }
}
