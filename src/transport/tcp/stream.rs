//! The byte interface of a [`Connection`]: `AsyncRead` + `AsyncWrite`, so a session can carry
//! any byte protocol (`tokio_util::codec::Framed`, `tokio::io::copy`) as a TLS stream does,
//! beside the message API ([`Connection::send`], [`Connection::recv`]).
//!
//! Each write is sealed as one record of at most [`MAX_PAYLOAD`] bytes (a longer write takes
//! what fits); reads hand out the peer's messages as one byte stream, message boundaries
//! dropped. `poll_shutdown` sends the authenticated close; a read returns end of stream only
//! at the peer's authenticated close, and a connection cut before it is an
//! [`UnexpectedEof`](io::ErrorKind::UnexpectedEof) error, never a clean end. The
//! [`Timeouts::idle`](super::Timeouts) of the message API does not apply here: wrap reads in
//! `tokio::time::timeout` where a peer may stall. `Connection::shutdown(wait)` (the message
//! API's close) shadows `AsyncWriteExt::shutdown`: call the latter as
//! `AsyncWriteExt::shutdown(&mut conn)`.

use super::connection::{Connection, Received};
use super::TransportError;
use crate::msgs::AlertCode;
use crate::record::MAX_PAYLOAD;
use futures_util::{Sink, Stream};
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Sealed records waiting in the write buffer beyond which a write first waits for the socket.
const WRITE_HIGH_WATER: usize = 4 * (MAX_PAYLOAD + 64);

/// The byte interface's error for `e`: socket errors as they were, a cut connection as
/// end of file, every protocol error wrapped.
fn to_io(e: TransportError) -> io::Error {
    match e {
        TransportError::Io(e) => e,
        e @ TransportError::Truncated => io::Error::new(io::ErrorKind::UnexpectedEof, e),
        e => io::Error::other(e),
    }
}

impl Connection {
    /// Splits the connection into a read half and a write half that can be moved to different
    /// tasks (`tokio::io::split`); [`ReadHalf::unsplit`](tokio::io::ReadHalf::unsplit) joins
    /// them again.
    pub fn split(self) -> (tokio::io::ReadHalf<Self>, tokio::io::WriteHalf<Self>) {
        tokio::io::split(self)
    }

    /// Moves the session's queued frames into the write buffer and writes it to the socket.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.queue_output()?;
        Sink::<&[u8]>::poll_flush(Pin::new(&mut self.io), cx)
    }

    /// After a failure: the session's last words (a Close with the reason) go out if the socket
    /// takes them now; the error is returned either way.
    fn fail(&mut self, cx: &mut Context<'_>, e: TransportError) -> Poll<io::Result<()>> {
        let _ = self.poll_write_out(cx);
        Poll::Ready(Err(to_io(e)))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.unread.is_empty() {
                let n = this.unread.len().min(buf.remaining());
                buf.put_slice(&this.unread.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if let Some(end) = this.session.end() {
                // A close answer still queued goes out before the end is reported.
                ready!(this.poll_write_out(cx)).map_err(to_io)?;
                return Poll::Ready(end.map_err(|e| to_io(e.into())));
            }
            let frame = match ready!(Pin::new(&mut this.io).poll_next(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    this.session.close(AlertCode::DecodeError);
                    return this.fail(cx, e);
                }
                None => return Poll::Ready(Err(to_io(TransportError::Truncated))),
            };
            this.stats.received += (frame.len() + super::FRAME_PREFIX_LEN) as u64;
            match this.on_frame(frame) {
                Ok(Received::Message(message)) => this.unread = message,
                Ok(Received::Nothing) => {
                    // A key update's answer goes out when the socket takes it.
                    if let Poll::Ready(Err(e)) = this.poll_write_out(cx) {
                        return Poll::Ready(Err(to_io(e)));
                    }
                }
                Ok(Received::Closed) => {
                    ready!(this.poll_write_out(cx)).map_err(to_io)?;
                    return Poll::Ready(Ok(()));
                }
                Err(e) => return this.fail(cx, e),
            }
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.io.write_buffer().len() >= WRITE_HIGH_WATER {
            ready!(this.poll_write_out(cx)).map_err(to_io)?;
        }
        let n = buf.len().min(MAX_PAYLOAD);
        if n == 0 {
            return Poll::Ready(Ok(0));
        }
        this.session
            .send(&buf[..n], Instant::now())
            .map_err(|e| to_io(e.into()))?;
        this.queue_output().map_err(to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_write_out(cx).map_err(to_io)
    }

    /// Sends the authenticated close (once) and flushes it; the peer's answer is read by
    /// `poll_read`, which then reports the end of the stream.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.session.can_send() {
            this.session.close(AlertCode::CloseNotify);
        }
        this.poll_write_out(cx).map_err(to_io)
    }
}
