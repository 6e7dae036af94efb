//! An established secchan session over TCP: the message API on top of the framed stream.

use super::super::framing::{FrameCodec, FRAME_PREFIX_LEN};
use super::super::{Timeouts, TransportError};
use crate::handshake::resume::Ticket;
use crate::handshake::HandshakeError;
use crate::msgs::{encode_alert, AlertCode, FrameType};
use crate::record::HEADER_LEN;
use crate::session::{Event, Session};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::{Encoder, Framed};

pub(super) const INITIAL_BUFFER: usize = 2048;

pub(super) type Io = Framed<TcpStream, FrameCodec>;

pub(super) fn framed(stream: TcpStream) -> Io {
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
    pub(super) io: Io,
    pub(super) session: Session,
    pub(super) timeouts: Timeouts,
    pub(super) peer_addr: SocketAddr,
    pub(super) stats: WireStats,
    /// On a device, until the first frame arrives: the end of the window in which a plaintext
    /// alert is honoured as the server's refusal (protocol.md §6.1 step 4). Unauthenticated,
    /// so it is believed only as the first frame and only within the handshake timeout after
    /// DeviceFinish; later it is an unexpected frame.
    pub(super) refusal_window: Option<tokio::time::Instant>,
    /// On a device, the newest resumption ticket received.
    pub(super) ticket: Option<Ticket>,
    /// Whether a peer's close is answered inside [`Connection::recv`] (the default) or left to
    /// the caller ([`Connection::defer_close_answer`]).
    pub(super) answer_close: bool,
    /// The byte interface (`AsyncRead`): what is left of the message being read.
    pub(super) unread: Bytes,
}

/// What a frame from the peer was.
pub(super) enum Received {
    /// An application message.
    Message(Bytes),
    /// Nothing for the application (a key update, a ticket).
    Nothing,
    /// The peer's authenticated close (answered, unless the answer is deferred).
    Closed,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer_addr", &self.peer_addr)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

pub(super) async fn read_frame(
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

pub(super) async fn write_frame(
    io: &mut Io,
    stats: &mut WireStats,
    frame: &[u8],
) -> Result<(), TransportError> {
    stats.sent += (frame.len() + FRAME_PREFIX_LEN) as u64;
    io.send(frame).await?;
    Ok(())
}

/// Best effort: tell the peer why the handshake failed, then give up.
pub(super) async fn send_alert(io: &mut Io, code: AlertCode) {
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
pub(super) async fn linger(stream: &mut TcpStream) {
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

pub(super) async fn expect_frame(
    io: &mut Io,
    stats: &mut WireStats,
) -> Result<BytesMut, TransportError> {
    read_frame(io, stats)
        .await?
        .ok_or(TransportError::Truncated)
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
    /// user can read) for [`resume()`](super::resume()) after this connection ends.
    pub fn take_ticket(&mut self) -> Option<Ticket> {
        self.ticket.take()
    }

    /// Moves the frames the session queued into the write buffer.
    pub(super) fn queue_output(&mut self) -> Result<(), TransportError> {
        while let Some(frame) = self.session.poll_transmit() {
            self.stats.sent += (frame.len() + FRAME_PREFIX_LEN) as u64;
            FrameCodec.encode(&frame[..], self.io.write_buffer_mut())?;
        }
        Ok(())
    }

    /// Writes the frames the session queued to the socket.
    pub(super) async fn write_out(&mut self) -> Result<(), TransportError> {
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

    /// Seals one message as one record into the write buffer, without writing to the socket:
    /// [`flush`](Self::flush) writes everything queued with one system call where it fits.
    pub fn queue(&mut self, message: &[u8]) -> Result<(), TransportError> {
        self.session.send(message, Instant::now())?;
        self.queue_output()
    }

    /// Writes what [`queue`](Self::queue) (or anything else) left in the write buffer.
    pub async fn flush(&mut self) -> Result<(), TransportError> {
        self.write_out().await
    }

    /// Leaves the answer to the peer's close to the caller: [`recv`](Self::recv) reports the
    /// peer's close with `Ok(None)` and this side may still send (a server acknowledging the
    /// last messages it writes) until it calls [`send_close`](Self::send_close).
    pub fn defer_close_answer(&mut self) {
        self.answer_close = false;
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
                // A call cancelled while writing the session's last frames (a close answer)
                // left them queued: they go out now.
                let _ = self.write_out().await;
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
            match self.on_frame(frame) {
                Ok(Received::Message(message)) => return Ok(Some(message)),
                Ok(Received::Nothing) => {}
                Ok(Received::Closed) => {
                    self.write_out().await?;
                    return Ok(None);
                }
                Err(e) => {
                    self.write_last().await;
                    return Err(e);
                }
            }
        }
    }

    /// What one frame from the peer is, for [`recv`](Self::recv) and the byte interface
    /// (`AsyncRead`): the frames it makes the session send (a key update's, a close answer)
    /// are left queued for the caller to write.
    pub(super) fn on_frame(&mut self, mut frame: BytesMut) -> Result<Received, TransportError> {
        let refusal_window = self.refusal_window.take();
        if FrameType::of(&frame).ok() == Some(FrameType::Alert)
            && refusal_window.is_some_and(|end| tokio::time::Instant::now() <= end)
        {
            let code = crate::msgs::decode_alert(&frame).map_err(HandshakeError::from)?;
            return Err(TransportError::Refused(code));
        }
        match self.session.handle_frame(&mut frame, Instant::now())? {
            Event::Message(m) => {
                let len = m.len();
                // The plaintext was opened in place, right behind the record header
                // (protocol.md §7.1): hand it out without a copy.
                frame.advance(HEADER_LEN);
                frame.truncate(len);
                Ok(Received::Message(frame.freeze()))
            }
            Event::KeyUpdated => Ok(Received::Nothing),
            Event::Ticket => {
                self.ticket = self.session.take_ticket(SystemTime::now());
                Ok(Received::Nothing)
            }
            Event::Closed => {
                if self.answer_close {
                    self.session.close(AlertCode::CloseNotify);
                }
                Ok(Received::Closed)
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
