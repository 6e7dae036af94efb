//! A bounds-checked reader over peer bytes. Every read checks the remaining length first and
//! returns [`DecodeError`] instead of panicking; [`Reader::finish`] rejects trailing bytes.

/// Why a message could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The message ended before a field was complete.
    #[error("message truncated: needed {needed} more bytes while reading {field}")]
    Truncated {
        /// The field being read.
        field: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// Bytes were left over after the last field.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// A field held a value the protocol does not allow.
    #[error("invalid value {value:#04x} for {field}")]
    InvalidValue {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u8,
    },
    /// The message was empty.
    #[error("empty message")]
    Empty,
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {0:#04x} (this build speaks {v:#04x})", v = crate::msgs::VERSION)]
    UnsupportedVersion(u8),
    /// The peer named a key-exchange suite this build does not know.
    #[error("unknown key-exchange suite {0:#04x}")]
    UnknownSuite(u8),
}

/// Reads fields from a byte slice, front to back.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                field,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next byte.
    pub fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        let b = self.take(1, field)?;
        Ok(b.first().copied().unwrap_or_default())
    }

    /// Takes the next big-endian u16.
    pub fn u16(&mut self, field: &'static str) -> Result<u16, DecodeError> {
        let b = self.array::<2>(field)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Takes the next `N` bytes as an array.
    pub fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let b = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Everything not yet read.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_check_lengths_and_trailing_bytes() {
        let mut r = Reader::new(&[1, 0, 2, 3]);
        assert_eq!(r.u8("a").unwrap(), 1);
        assert_eq!(r.u16("b").unwrap(), 2);
        assert_eq!(
            r.array::<2>("c"),
            Err(DecodeError::Truncated {
                field: "c",
                needed: 1
            })
        );
        assert_eq!(r.finish(), Err(DecodeError::TrailingBytes(1)));
        assert_eq!(Reader::new(&[]).finish(), Ok(()));
    }
}
