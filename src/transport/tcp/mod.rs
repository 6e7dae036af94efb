//! secchan over TCP (protocol.md §2.1): each frame is a 2-byte big-endian length and a body.

mod connection;
mod server;
mod stream;

pub use super::framing::FRAME_PREFIX_LEN;
use super::{Timeouts, TransportError};
use crate::crypto::random::OsRandom;
use crate::handshake::cookie;
use crate::handshake::device::{self, DeviceConfig};
use crate::handshake::resume::{self, Ticket};
use crate::handshake::HandshakeError;
use crate::msgs::AlertCode;
use crate::session::Session;
use crate::trust::ServerVerifier;
use connection::{expect_frame, framed, send_alert, write_frame, Io};
pub use connection::{Connection, WireStats};
pub use server::{accept, Incoming, Listener};
use std::net::SocketAddr;
use std::time::{Instant, SystemTime};
use tokio::net::{TcpStream, ToSocketAddrs};

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

/// A new connection to the server that answered with a cookie.
async fn reconnect(peer_addr: SocketAddr) -> Result<Io, TransportError> {
    let stream = TcpStream::connect(peer_addr).await?;
    stream.set_nodelay(true)?;
    Ok(framed(stream))
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
        unread: bytes::Bytes::new(),
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
/// together must finish within `timeouts.handshake`. A server under load may answer with a
/// cookie (protocol.md §6.5): the same hello then goes again with the cookie on a new
/// connection, once; a second cookie reads as the server's `busy`
/// ([`HandshakeError::PeerAlert`]).
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
        let mut reply = server_reply(&mut io, &mut stats).await?;
        // A server under load answers with a cookie and closes (protocol.md §6.5): the same
        // hello goes again, with the cookie, on a new connection to the same address.
        if let Some(again) = cookie::retry(&reply, &hello)? {
            io = reconnect(peer_addr).await?;
            write_frame(&mut io, &mut stats, &again).await?;
            reply = server_reply(&mut io, &mut stats).await?;
            if cookie::retry(&reply, &hello)?.is_some() {
                // Still busy: one cookie per attempt.
                return Err(HandshakeError::PeerAlert(AlertCode::Busy).into());
            }
        }
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
