//! TCP framing (protocol.md §2.1): each frame is a 2-byte big-endian length and a body of at
//! most [`MAX_FRAME_LEN`] bytes, as a tokio-util codec for established sessions, and as a
//! [`FrameAssembler`] for what a server reads before the device is authenticated.

use super::{TransportError, MAX_FRAME_LEN};
use crate::msgs::{CookieHello, ENROLL_FINISH_LEN};
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes the TCP framing adds to each frame: the length prefix.
pub const FRAME_PREFIX_LEN: usize = 2;

/// Longest first frame a server reads (protocol.md §2.1): a CookieHello around the longest
/// DeviceHello, 1,246 bytes. A ResumeHello is at most 305.
pub const MAX_FIRST_FRAME: usize = CookieHello::MAX_LEN;
/// Longest frame a server reads after its ServerHello, before the device is authenticated: a
/// DeviceFinish of the largest kind (enrollment), 210 bytes.
pub const MAX_FINISH_FRAME: usize = ENROLL_FINISH_LEN;
/// Most bytes one read asks the socket for before the device is authenticated: what a
/// connection holds grows with what has arrived, in steps no larger than this. It covers the
/// longest first frame ([`MAX_FIRST_FRAME`]), so a hello that has arrived is read in one call.
pub const READ_STEP: usize = 1280;

/// Read-ahead once a large frame is arriving: room for several full records, so one read
/// system call picks up several records during a bulk transfer instead of half of one (the
/// receive buffer otherwise grows only to the frame in progress). Idle and small-message
/// sessions never reach it and keep their small buffer (docs/benchmarks.md).
const READ_AHEAD: usize = 4 * (FRAME_PREFIX_LEN + MAX_FRAME_LEN);

/// Frames below this size never trigger [`READ_AHEAD`].
const LARGE_FRAME: usize = 1024;

/// The length-prefixed frame codec. Decoding checks the prefix against [`MAX_FRAME_LEN`]
/// before reserving any memory for the body, and reports a stream that ends inside a frame as
/// [`TransportError::Truncated`].
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameCodec;

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = TransportError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        let Some(&[hi, lo]) = src.get(..FRAME_PREFIX_LEN) else {
            return Ok(None);
        };
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        if len > MAX_FRAME_LEN {
            return Err(TransportError::FrameTooLarge);
        }
        let total = FRAME_PREFIX_LEN + len;
        if src.len() < total {
            let missing = total - src.len();
            src.reserve(if len >= LARGE_FRAME {
                missing.max(READ_AHEAD)
            } else {
                missing
            });
            return Ok(None);
        }
        src.advance(FRAME_PREFIX_LEN);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, TransportError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(TransportError::Truncated),
        }
    }
}

impl Encoder<&[u8]> for FrameCodec {
    type Error = TransportError;

    fn encode(&mut self, frame: &[u8], dst: &mut BytesMut) -> Result<(), TransportError> {
        let len = u16::try_from(frame.len())
            .ok()
            .filter(|&n| usize::from(n) <= MAX_FRAME_LEN)
            .ok_or(TransportError::FrameTooLarge)?;
        dst.reserve(FRAME_PREFIX_LEN + frame.len());
        dst.put_u16(len);
        dst.extend_from_slice(frame);
        Ok(())
    }
}

/// One frame read before the peer is authenticated, in memory bounded by what has arrived:
/// the length prefix is checked against the frame's `max` (the largest legal handshake message
/// at this point) before anything is kept, and the body grows by at most [`READ_STEP`] bytes
/// beyond what arrived, for each read. The caller reads into [`buffer`](Self::buffer) once the
/// socket is readable and reports what it got with [`filled`](Self::filled); reads never go
/// past the frame's end (a device sends records right behind its DeviceFinish).
#[derive(Debug)]
pub struct FrameAssembler {
    max: usize,
    prefix: [u8; FRAME_PREFIX_LEN],
    have_prefix: usize,
    len: usize,
    body: Vec<u8>,
    /// Bytes of `body` that arrived (the rest is room for the read under way).
    have_body: usize,
    done: bool,
}

impl FrameAssembler {
    /// Assembles one frame of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            prefix: [0; FRAME_PREFIX_LEN],
            have_prefix: 0,
            len: 0,
            body: Vec::new(),
            have_body: 0,
            done: false,
        }
    }

    /// Where the next read goes: what completes the length prefix, then at most
    /// [`READ_STEP`] bytes of the body (made room for now); empty once the frame is complete.
    pub fn buffer(&mut self) -> &mut [u8] {
        if self.done {
            &mut []
        } else if self.have_prefix < FRAME_PREFIX_LEN {
            &mut self.prefix[self.have_prefix..]
        } else {
            let want = (self.len - self.have_body).min(READ_STEP);
            self.body.reserve_exact(want);
            self.body.resize(self.have_body + want, 0);
            &mut self.body[self.have_body..]
        }
    }

    /// Records that the last read put `n` bytes into [`buffer`](Self::buffer) (0: nothing
    /// arrived after all). Returns the frame once complete; a length prefix over the frame's
    /// `max` is [`TransportError::FrameTooLarge`].
    pub fn filled(&mut self, n: usize) -> Result<Option<Vec<u8>>, TransportError> {
        if self.have_prefix < FRAME_PREFIX_LEN {
            self.have_prefix = (self.have_prefix + n).min(FRAME_PREFIX_LEN);
            if self.have_prefix < FRAME_PREFIX_LEN {
                return Ok(None);
            }
            self.len = usize::from(u16::from_be_bytes(self.prefix));
            if self.len > self.max {
                return Err(TransportError::FrameTooLarge);
            }
        } else {
            self.have_body = (self.have_body + n).min(self.body.len());
            self.body.truncate(self.have_body);
        }
        if self.have_body == self.len {
            self.done = true;
            return Ok(Some(std::mem::take(&mut self.body)));
        }
        Ok(None)
    }

    /// Bytes of memory held for the body so far.
    pub fn held(&self) -> usize {
        self.body.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `bytes` to `a` as reads of at most `per_read` bytes; the frame, if complete.
    fn feed(
        a: &mut FrameAssembler,
        bytes: &[u8],
        per_read: usize,
    ) -> Result<Option<Vec<u8>>, TransportError> {
        let mut rest = bytes;
        loop {
            let buf = a.buffer();
            let n = buf.len().min(per_read).min(rest.len());
            buf[..n].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            if let Some(frame) = a.filled(n)? {
                return Ok(Some(frame));
            }
            if rest.is_empty() {
                return Ok(None);
            }
        }
    }

    #[test]
    fn the_assembler_holds_only_what_arrived_and_never_more_than_its_max() {
        // Three bytes (a hello's prefix and its type byte) hold one byte and one step.
        let mut a = FrameAssembler::new(MAX_FIRST_FRAME);
        assert_eq!(a.buffer().len(), 2);
        assert_eq!(feed(&mut a, &[0x04, 0xc5, 0x01], 1).unwrap(), None);
        assert!(a.held() <= 1 + READ_STEP, "{} held", a.held());
        // Nothing more arrives: the room made for a read is not more than a step.
        a.buffer();
        a.filled(0).unwrap();
        assert!(a.held() <= 1 + READ_STEP);
        let frame = feed(&mut a, &[7u8; 1220], 4096).unwrap().unwrap();
        assert_eq!((frame.len(), frame[0]), (1221, 0x01));
        assert!(frame.capacity() <= 1221 + READ_STEP);
        assert!(a.buffer().is_empty(), "nothing of the next frame is read");
        // The step bounds each read, whatever arrived; the frame's end bounds it below that.
        let mut b = FrameAssembler::new(4 * READ_STEP);
        feed(&mut b, &(3 * READ_STEP as u16).to_be_bytes(), 2).unwrap();
        assert_eq!(b.buffer().len(), READ_STEP);
        let mut hello = FrameAssembler::new(MAX_FIRST_FRAME);
        feed(&mut hello, &[0x04, 0xc5], 2).unwrap();
        assert_eq!(hello.buffer().len(), 0x04c5, "a whole hello in one read");
        // A prefix beyond the bound is refused on the prefix alone.
        let mut big = FrameAssembler::new(MAX_FINISH_FRAME);
        assert!(matches!(
            feed(&mut big, &(MAX_FINISH_FRAME as u16 + 1).to_be_bytes(), 2),
            Err(TransportError::FrameTooLarge)
        ));
        assert_eq!(big.held(), 0);
        let mut exact = FrameAssembler::new(3);
        assert_eq!(
            feed(&mut exact, &[0, 3, 4, 2, 0x15, 9, 9], 64).unwrap(),
            Some(vec![4, 2, 0x15]),
            "the bytes after the frame stay unread"
        );
        // An empty frame is complete at once (and a decode error for the handshake).
        assert_eq!(
            feed(&mut FrameAssembler::new(3), &[0, 0], 2).unwrap(),
            Some(vec![])
        );
    }

    fn decode_all(bytes: &[u8]) -> (Vec<Vec<u8>>, Result<(), TransportError>) {
        let mut codec = FrameCodec;
        let mut buf = BytesMut::from(bytes);
        let mut frames = Vec::new();
        loop {
            match codec.decode_eof(&mut buf) {
                Ok(Some(f)) => frames.push(f.to_vec()),
                Ok(None) => return (frames, Ok(())),
                Err(e) => return (frames, Err(e)),
            }
        }
    }

    #[test]
    fn frames_round_trip_back_to_back() {
        let mut codec = FrameCodec;
        let mut wire = BytesMut::new();
        for body in [&b"\x10abc"[..], &[0x11; 300][..], &b""[..]] {
            codec.encode(body, &mut wire).unwrap();
        }
        assert_eq!(&wire[..6], &[0x00, 0x04, 0x10, b'a', b'b', b'c']);
        let (frames, end) = decode_all(&wire);
        assert!(end.is_ok());
        assert_eq!(frames, vec![b"\x10abc".to_vec(), vec![0x11; 300], vec![]]);
    }

    #[test]
    fn largest_frame_passes_and_one_more_byte_is_refused_before_allocation() {
        let mut codec = FrameCodec;
        let mut ok = BytesMut::new();
        codec.encode(&[7; MAX_FRAME_LEN][..], &mut ok).unwrap();
        assert_eq!(decode_all(&ok).0.len(), 1);
        assert!(matches!(
            codec.encode(&[7; MAX_FRAME_LEN + 1][..], &mut BytesMut::new()),
            Err(TransportError::FrameTooLarge)
        ));
        let mut oversize = BytesMut::new();
        oversize.put_u16(MAX_FRAME_LEN as u16 + 1);
        let before = oversize.capacity();
        assert!(matches!(
            codec.decode(&mut oversize),
            Err(TransportError::FrameTooLarge)
        ));
        assert_eq!(oversize.capacity(), before, "nothing reserved for the body");
    }

    #[test]
    fn a_stream_cut_inside_a_frame_is_truncated() {
        // Inside the length prefix, and inside the body.
        for cut in [&[0x00][..], &[0x00, 0x05, 0x10, 0x00][..]] {
            let (frames, end) = decode_all(cut);
            assert!(frames.is_empty());
            assert!(matches!(end, Err(TransportError::Truncated)), "{cut:?}");
        }
        // A cut exactly between frames is a clean end of the byte stream; the session layer
        // decides whether a Close record came first.
        let (frames, end) = decode_all(&[0x00, 0x01, 0x12]);
        assert_eq!(frames, vec![vec![0x12]]);
        assert!(end.is_ok());
    }

    #[test]
    fn read_ahead_only_for_large_frames() {
        let mut codec = FrameCodec;
        let mut small = BytesMut::from(&[0x00, 0x40, 0x10][..]);
        assert!(codec.decode(&mut small).unwrap().is_none());
        assert!(small.capacity() < READ_AHEAD);
        let mut large = BytesMut::from(&[0x40, 0x00, 0x10][..]);
        assert!(codec.decode(&mut large).unwrap().is_none());
        assert!(large.capacity() >= READ_AHEAD);
    }
}
