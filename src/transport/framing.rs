//! TCP framing (protocol.md §2.1): each frame is a 2-byte big-endian length and a body of at
//! most [`MAX_FRAME_LEN`] bytes, as a tokio-util codec.

use super::{TransportError, MAX_FRAME_LEN};
use bytes::{Buf, BufMut, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

/// Bytes the TCP framing adds to each frame: the length prefix.
pub const FRAME_PREFIX_LEN: usize = 2;

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

#[cfg(test)]
mod tests {
    use super::*;

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
