//! The server's end of TCP: the listener, and each connection's handshake in steps, so that a
//! server can decide about the device's first frame (answer it, send a cookie, refuse it)
//! before it spends anything on it.
//!
//! Until the device is authenticated nothing here holds more memory than the bytes that
//! arrived (protocol.md §2.1): frames are assembled by [`FrameAssembler`] against the largest
//! legal handshake message, never against [`MAX_FRAME_LEN`](crate::transport::MAX_FRAME_LEN).

use super::super::framing::{FrameAssembler, FRAME_PREFIX_LEN, MAX_FINISH_FRAME, MAX_FIRST_FRAME};
use super::connection::{framed, linger};
use super::{Connection, Timeouts, TransportError, WireStats};
use crate::crypto::random::OsRandom;
use crate::handshake::server::{self, FirstReply, PeerDevice, ServerConfig};
use crate::handshake::HandshakeError;
use crate::msgs::{encode_alert, AlertCode};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};

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

    /// The timeouts every connection gets.
    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Waits for the next TCP connection. Run [`Incoming::handshake`] on it, typically in its
    /// own task, so a slow device never holds up the accept loop.
    pub async fn accept(&self) -> std::io::Result<Incoming> {
        let (stream, peer_addr) = self.tcp.accept().await?;
        Ok(Incoming::new(
            stream,
            peer_addr,
            self.config.clone(),
            self.timeouts,
        ))
    }
}

/// A TCP connection whose handshake has not run yet.
#[derive(Debug)]
pub struct Incoming {
    stream: TcpStream,
    peer_addr: SocketAddr,
    config: Arc<ServerConfig>,
    timeouts: Timeouts,
    accepted: tokio::time::Instant,
    stats: WireStats,
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

impl Incoming {
    fn new(
        stream: TcpStream,
        peer_addr: SocketAddr,
        config: Arc<ServerConfig>,
        timeouts: Timeouts,
    ) -> Self {
        Self {
            stream,
            peer_addr,
            config,
            timeouts,
            accepted: tokio::time::Instant::now(),
            stats: WireStats::default(),
        }
    }

    /// The device's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer_addr
    }

    /// When the connection was accepted: the handshake timeout counts from here.
    pub fn accepted_at(&self) -> tokio::time::Instant {
        self.accepted
    }

    /// Reads the device's first frame (at most [`MAX_FIRST_FRAME`] bytes) by `deadline`, in
    /// memory bounded by what has arrived. On [`TransportError::HandshakeTimeout`] the caller
    /// may still [`refuse`](Self::refuse) with [`AlertCode::Timeout`].
    pub async fn first_frame(
        &mut self,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<u8>, TransportError> {
        self.stream.set_nodelay(true)?;
        let read = read_bounded(&mut self.stream, MAX_FIRST_FRAME, &mut self.stats);
        tokio::time::timeout_at(deadline, read)
            .await
            .map_err(|_| TransportError::HandshakeTimeout(self.timeouts.handshake))?
    }

    /// Sends `frame` (a CookieReply) as the server's last word and closes the connection.
    pub async fn reply_and_close(mut self, frame: &[u8]) {
        let _ = write_frame(&mut self.stream, &mut self.stats, frame).await;
        let _ = self.stream.shutdown().await;
    }

    /// Refuses the device with a plaintext alert (protocol.md §4.4) and closes the connection.
    pub async fn refuse(self, code: AlertCode) {
        self.reply_and_close(&encode_alert(code)).await;
    }

    /// Runs the server side of the handshake: [`first_frame`](Self::first_frame), then
    /// [`handshake_from`](Self::handshake_from), all within the handshake timeout.
    pub async fn handshake(mut self) -> Result<(Connection, PeerDevice), TransportError> {
        let deadline = self.accepted + self.timeouts.handshake;
        let first = match self.first_frame(deadline).await {
            Ok(f) => f,
            Err(e @ TransportError::HandshakeTimeout(_)) => {
                self.refuse(AlertCode::Timeout).await;
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        self.handshake_from(&first).await
    }

    /// Runs the rest of the handshake from the device's first frame (a DeviceHello or a
    /// ResumeHello, protocol.md §6.2, §6.4), within the handshake timeout counted from
    /// [`accepted_at`](Self::accepted_at). On failure the device gets a plaintext alert saying
    /// why; nothing is logged above debug level (the caller decides what a failure is worth).
    pub async fn handshake_from(
        mut self,
        first: &[u8],
    ) -> Result<(Connection, PeerDevice), TransportError> {
        let deadline = self.accepted + self.timeouts.handshake;
        let (config, stream, stats) = (&*self.config, &mut self.stream, &mut self.stats);
        let handshake = async {
            let wall_now = SystemTime::now();
            match server::accept_first(config, first, &mut OsRandom, Instant::now(), wall_now)? {
                FirstReply::Full(expect, reply) => {
                    write_frame(stream, stats, &reply).await?;
                    let finish = read_bounded(stream, MAX_FINISH_FRAME, stats).await?;
                    Ok::<_, Failure>(expect.read_device_finish(&finish, Instant::now())?)
                }
                FirstReply::Resumed(established, reply) => {
                    write_frame(stream, stats, &reply).await?;
                    Ok(*established)
                }
            }
        };
        let peer_addr = self.peer_addr;
        let (session, peer) = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(v)) => v,
            Err(_) => {
                tracing::debug!(peer = %peer_addr, "handshake timed out");
                let limit = self.timeouts.handshake;
                self.refuse(AlertCode::Timeout).await;
                return Err(TransportError::HandshakeTimeout(limit));
            }
            Ok(Err(Failure::Transport(e))) => {
                tracing::debug!(peer = %peer_addr, error = %e, "handshake failed");
                return Err(e);
            }
            Ok(Err(Failure::Handshake(e))) => {
                tracing::debug!(peer = %peer_addr, error = %e, "handshake failed");
                if let Some(code) = e.alert() {
                    let _ =
                        write_frame(&mut self.stream, &mut self.stats, &encode_alert(code)).await;
                    linger(&mut self.stream).await;
                }
                return Err(e.into());
            }
        };
        let mut stats = self.stats;
        stats.handshake_sent = stats.sent;
        stats.handshake_received = stats.received;
        // Only now, with the device authenticated, does the connection get a session's buffers.
        let mut conn = Connection {
            io: framed(self.stream),
            session,
            timeouts: self.timeouts,
            peer_addr,
            stats,
            refusal_window: None,
            ticket: None,
            answer_close: true,
            unread: bytes::Bytes::new(),
        };
        // protocol.md §7.6: a fresh ticket right after every established session.
        if let Some(resumption) = &self.config.resumption {
            conn.session.issue_ticket(resumption, SystemTime::now())?;
            conn.write_out().await?;
        }
        Ok((conn, peer))
    }
}

/// Runs the server side of the handshake on an accepted stream. On failure the device gets
/// a plaintext alert saying why.
pub async fn accept(
    stream: TcpStream,
    config: &ServerConfig,
    timeouts: Timeouts,
) -> Result<(Connection, PeerDevice), TransportError> {
    let peer_addr = stream.peer_addr()?;
    Incoming::new(stream, peer_addr, Arc::new(config.clone()), timeouts)
        .handshake()
        .await
}

/// Reads one frame of at most `max` bytes without holding more than what has arrived: the
/// length prefix first, then the body, each read made room for only once the socket is
/// readable and at most [`READ_STEP`](super::super::framing::READ_STEP) bytes long, never
/// past the frame's end.
async fn read_bounded(
    stream: &mut TcpStream,
    max: usize,
    stats: &mut WireStats,
) -> Result<Vec<u8>, TransportError> {
    let mut frame = FrameAssembler::new(max);
    loop {
        stream.readable().await?;
        let got = match stream.try_read(frame.buffer()) {
            Ok(0) => return Err(TransportError::Truncated),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e.into()),
        };
        if let Some(frame) = frame.filled(got)? {
            stats.received += (frame.len() + FRAME_PREFIX_LEN) as u64;
            return Ok(frame);
        }
    }
}

/// Writes one frame straight to the socket (handshake messages, before a session's buffers
/// exist).
async fn write_frame(
    stream: &mut TcpStream,
    stats: &mut WireStats,
    frame: &[u8],
) -> Result<(), TransportError> {
    let len = u16::try_from(frame.len()).map_err(|_| TransportError::FrameTooLarge)?;
    let mut out = Vec::with_capacity(FRAME_PREFIX_LEN + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    stream.write_all(&out).await?;
    stats.sent += out.len() as u64;
    Ok(())
}
