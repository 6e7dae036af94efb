//! secchan over TCP (protocol.md §2.1): each frame is a 2-byte big-endian length and a body.

use super::framing::FrameCodec;
pub use super::framing::FRAME_PREFIX_LEN;
use super::{Timeouts, TransportError};
use crate::crypto::random::OsRandom;
use crate::handshake::device::{self, DeviceConfig};
use crate::handshake::resume::{self, Ticket};
use crate::handshake::server::{self, FirstReply, PeerDevice, ServerConfig};
use crate::handshake::HandshakeError;
use crate::msgs::{encode_alert, AlertCode, FrameType};
use crate::record::HEADER_LEN;
use crate::session::{Event, Session};
use crate::trust::ServerVerifier;
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio_util::codec::{Encoder, Framed};

/// Initial capacity of a connection's read and write buffers: room for either handshake
/// message; they grow to a full record when one arrives. tokio-util's default (8 KiB each) was
/// most of an idle session's memory (docs/benchmarks.md).
const INITIAL_BUFFER: usize = 2048;

type Io = Framed<TcpStream, FrameCodec>;

fn framed(stream: TcpStream) -> Io {
    Framed::with_capacity(stream, FrameCodec, INITIAL_BUFFER)
}

/// Bytes on the wire, counted at the frame level (length prefixes included, TCP/IP headers
/// not).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WireStats {
    /// Bytes sent.
    pub sent: u64,
    /// Bytes received.
    pub received: u64,
    /// Bytes sent during the handshake.
    pub handshake_sent: u64,
    /// Bytes received during the handshake.
    pub handshake_received: u64,
}

/// An established secchan session over TCP.
pub struct Connection {
    io: Io,
    session: Session,
    timeouts: Timeouts,
    peer_addr: SocketAddr,
    stats: WireStats,
    /// On a device, until the first frame arrives: the end of the window in which a plaintext
    /// alert is honoured as the server's refusal (protocol.md §6.1 step 4). Unauthenticated,
    /// so it is believed only as the first frame and only within the handshake timeout after
    /// DeviceFinish; later it is an unexpected frame.
    refusal_window: Option<tokio::time::Instant>,
    /// On a device, the newest resumption ticket received.
    ticket: Option<Ticket>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer_addr", &self.peer_addr)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

async fn read_frame(
    io: &mut Io,
    stats: &mut WireStats,
) -> Result<Option<BytesMut>, TransportError> {
    match io.next().await {
        Some(Ok(frame)) => {
            stats.received += (frame.len() + FRAME_PREFIX_LEN) as u64;
            Ok(Some(frame))
        }
        Some(Err(e)) => Err(e),
        None => Ok(None),
    }
}

async fn write_frame(
    io: &mut Io,
    stats: &mut WireStats,
    frame: &[u8],
) -> Result<(), TransportError> {
    stats.sent += (frame.len() + FRAME_PREFIX_LEN) as u64;
    io.send(frame).await?;
    Ok(())
}

/// Best effort: tell the peer why the handshake failed, then give up.
async fn send_alert(io: &mut Io, code: AlertCode) {
    let _ = io.send(&encode_alert(code)[..]).await;
}

/// How long a lingering close reads on before it drops the connection.
const LINGER_TIME: Duration = Duration::from_secs(1);
/// How much a lingering close reads before it drops the connection.
const LINGER_BYTES: usize = 64 * 1024;

/// A lingering close (RFC 9112 §9.6), after our last frame (a refusal alert or an error Close)
/// is flushed. The peer may still be sending: a device sends records right behind its
/// DeviceFinish. Closing a socket with unread input makes the kernel send RST, and an RST can
/// make the peer's TCP discard our last frame before it is read, or fail its next write first.
/// So shut down our side (FIN after the last frame), then read and discard until the peer
/// closes, for at most [`LINGER_TIME`] and [`LINGER_BYTES`].
async fn linger(stream: &mut TcpStream) {
    let drain = async {
        if stream.shutdown().await.is_err() {
            return;
        }
        let mut buf = [0u8; 4096];
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER_TIME, drain).await;
}

async fn expect_frame(io: &mut Io, stats: &mut WireStats) -> Result<BytesMut, TransportError> {
    read_frame(io, stats)
        .await?
        .ok_or(TransportError::Truncated)
}

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
        let reply = expect_frame(&mut io, &mut stats).await?;
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
        let reply = expect_frame(&mut io, &mut stats).await?;
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
    };
    // protocol.md §7.6: a fresh ticket right after every established session.
    if let Some(resumption) = &config.resumption {
        conn.session.issue_ticket(resumption, SystemTime::now())?;
        conn.write_out().await?;
    }
    Ok((conn, peer))
}

impl Connection {
    /// The sans-IO session (suite, AEAD, peer identity, counters).
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The peer's socket address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// Bytes moved so far.
    pub fn stats(&self) -> WireStats {
        self.stats
    }

    /// Whether the session was resumed with a ticket rather than a full handshake.
    pub fn is_resumed(&self) -> bool {
        self.session.is_resumed()
    }

    /// Device: the newest resumption ticket the server sent, if [`recv`](Self::recv) has read
    /// one since the last call. Keep it (e.g. [`Ticket::to_bytes`] in a file only the device's
    /// user can read) for [`resume`] after this connection ends.
    pub fn take_ticket(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }

    /// Moves the frames the session queued into the write buffer.
    fn queue_output(&mut self) -> Result<(), TransportError> {
        while let Some(frame) = self.session.poll_transmit() {
            self.stats.sent += (frame.len() + FRAME_PREFIX_LEN) as u64;
            FrameCodec.encode(&frame[..], self.io.write_buffer_mut())?;
        }
        Ok(())
    }

    /// Writes the frames the session queued to the socket.
    async fn write_out(&mut self) -> Result<(), TransportError> {
        self.queue_output()?;
        SinkExt::<&[u8]>::flush(&mut self.io).await
    }

    /// Best effort after a failure: hand the peer the session's last words (a Close record
    /// with the reason), without waiting longer than the handshake timeout for a peer that
    /// does not read.
    async fn write_last(&mut self) {
        let _ = tokio::time::timeout(self.timeouts.handshake, self.write_out()).await;
    }

    /// Sends one message (at most 16,384 bytes) as one record, written to the socket before
    /// this returns.
    pub async fn send(&mut self, message: &[u8]) -> Result<(), TransportError> {
        self.session.send(message, Instant::now())?;
        self.write_out().await
    }

    /// Rotates the sending key now (it also rotates by itself, per the key-update policy).
    pub async fn update_keys(&mut self) -> Result<(), TransportError> {
        self.session.update_keys(Instant::now())?;
        self.write_out().await
    }

    /// Receives the next message. Returns `Ok(None)` once the peer closed the session with
    /// an authenticated close; answers that close with its own. A stream that ends without
    /// one is [`TransportError::Truncated`]. After the session failed, every call returns an
    /// error again, never `Ok(None)`.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, TransportError> {
        loop {
            if let Some(end) = self.session.end() {
                return end.map(|()| None).map_err(TransportError::from);
            }
            let idle = self.timeouts.idle;
            let frame =
                match tokio::time::timeout(idle, read_frame(&mut self.io, &mut self.stats)).await {
                    Err(_) => {
                        self.session.close(AlertCode::Timeout);
                        self.write_last().await;
                        return Err(TransportError::IdleTimeout(idle));
                    }
                    Ok(Err(e)) => {
                        self.session.close(AlertCode::DecodeError);
                        self.write_last().await;
                        return Err(e);
                    }
                    Ok(Ok(None)) => return Err(TransportError::Truncated),
                    Ok(Ok(Some(frame))) => frame,
                };
            let mut frame = frame;
            let refusal_window = self.refusal_window.take();
            if FrameType::of(&frame).ok() == Some(FrameType::Alert)
                && refusal_window.is_some_and(|end| tokio::time::Instant::now() <= end)
            {
                let code = crate::msgs::decode_alert(&frame).map_err(HandshakeError::from)?;
                return Err(TransportError::Refused(code));
            }
            let result = self.session.handle_frame(&mut frame, Instant::now());
            let event = match result {
                Ok(Event::Message(m)) => Some(m.len()),
                Ok(Event::KeyUpdated) => None,
                Ok(Event::Ticket) => {
                    self.ticket = self.session.take_ticket(SystemTime::now());
                    None
                }
                Ok(Event::Closed) => {
                    self.session.close(AlertCode::CloseNotify);
                    self.write_out().await?;
                    return Ok(None);
                }
                Err(e) => {
                    self.write_last().await;
                    return Err(e.into());
                }
            };
            if let Some(len) = event {
                // The plaintext was opened in place, right behind the record header
                // (protocol.md §7.1): hand it out without a copy.
                frame.advance(HEADER_LEN);
                frame.truncate(len);
                return Ok(Some(frame.freeze()));
            }
        }
    }

    /// Sends an authenticated close and stops sending. Keep calling [`recv`](Self::recv)
    /// until it returns `Ok(None)` (the peer's close) to be sure everything was delivered.
    pub async fn send_close(&mut self) -> Result<(), TransportError> {
        self.send_close_with(AlertCode::CloseNotify).await
    }

    /// Sends an authenticated close carrying `code`; any code but `CloseNotify` ends the
    /// session at once (e.g. [`AlertCode::Revoked`] when the device's identity is revoked).
    pub async fn send_close_with(&mut self, code: AlertCode) -> Result<(), TransportError> {
        self.session.close(code);
        self.write_out().await
    }

    /// Ends the connection after an error: flushes any queued Close record, then closes with
    /// a lingering close (at most 1 s and 64 KiB of input read and discarded), so the peer
    /// reads that Close rather than a connection reset.
    pub async fn linger(mut self) {
        let _ = self.write_out().await;
        linger(self.io.get_mut()).await;
    }

    /// Closes cleanly: sends close, then waits (up to `wait`) for the peer's close, discarding
    /// any messages that arrive meanwhile.
    pub async fn close(mut self, wait: Duration) -> Result<WireStats, TransportError> {
        self.shutdown(wait).await
    }

    /// [`close`](Self::close) that keeps the connection, so that the ticket read while waiting
    /// for the peer's close can still be taken with [`take_ticket`](Self::take_ticket).
    pub async fn shutdown(&mut self, wait: Duration) -> Result<WireStats, TransportError> {
        self.send_close().await?;
        tokio::time::timeout(wait, async {
            while self.recv().await?.is_some() {}
            Ok::<_, TransportError>(())
        })
        .await
        .map_err(|_| TransportError::IdleTimeout(wait))??;
        Ok(self.stats)
    }
}
