//! The delivery envelopes (protocol.md §11.1): what a Data record's plaintext carries between
//! a device and a server that speak the delivery protocol.

use super::StreamId;
use crate::codec::{DecodeError, Reader};

/// Kinds of delivery messages (the first byte of a record's plaintext).
const KIND_MESSAGE: u8 = 0x01;
const KIND_ACK: u8 = 0x02;
/// Bytes before the data of a Message: kind, stream, sequence, base.
pub const ENVELOPE_LEN: usize = 1 + 8 + 8 + 8;
/// Length of an Ack: kind, stream, next.
pub const ACK_LEN: usize = 1 + 8 + 8;

/// A Data record's plaintext in the delivery protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Envelope<'a> {
    /// Device -> server: one telemetry message.
    Message {
        /// The device's stream.
        stream: StreamId,
        /// Position in the stream, from 0.
        seq: u64,
        /// Every message below this sequence was acknowledged to the device (by whichever
        /// server instance), so a server that never saw them need not wait for them.
        base: u64,
        /// The application data.
        data: &'a [u8],
    },
    /// Server -> device: every message of `stream` with a sequence below `next` was output.
    Ack {
        /// The stream acknowledged.
        stream: StreamId,
        /// One past the last contiguously output sequence number.
        next: u64,
    },
}

impl<'a> Envelope<'a> {
    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Self::Message {
                stream,
                seq,
                base,
                data,
            } => {
                out.reserve(ENVELOPE_LEN + data.len());
                out.push(KIND_MESSAGE);
                out.extend_from_slice(stream);
                out.extend_from_slice(&seq.to_be_bytes());
                out.extend_from_slice(&base.to_be_bytes());
                out.extend_from_slice(data);
            }
            Self::Ack { stream, next } => {
                out.push(KIND_ACK);
                out.extend_from_slice(stream);
                out.extend_from_slice(&next.to_be_bytes());
            }
        }
        out
    }

    /// Decodes an envelope. A Message's sequence must be below 2^64 - 1 and its base must not
    /// exceed it; an Ack must have nothing after its counter.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8("delivery kind")?;
        let stream: StreamId = r.array("stream id")?;
        let n = u64::from_be_bytes(r.array("sequence")?);
        match kind {
            KIND_MESSAGE => {
                let base = u64::from_be_bytes(r.array("base")?);
                // 2^64 - 1 is no message's number: `next` one past it would not fit.
                if n == u64::MAX {
                    return Err(DecodeError::InvalidValue {
                        field: "sequence (2^64 - 1)",
                        value: 0xff,
                    });
                }
                if base > n {
                    return Err(DecodeError::InvalidValue {
                        field: "base above sequence",
                        value: 0,
                    });
                }
                Ok(Self::Message {
                    stream,
                    seq: n,
                    base,
                    data: r.rest(),
                })
            }
            KIND_ACK => {
                r.finish()?;
                Ok(Self::Ack { stream, next: n })
            }
            value => Err(DecodeError::InvalidValue {
                field: "delivery kind",
                value,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: StreamId = [1; 8];

    #[test]
    fn envelopes_round_trip_and_reject_malformed() {
        let m = Envelope::Message {
            stream: A,
            seq: 7,
            base: 3,
            data: b"hi",
        };
        assert_eq!(m.encode().len(), ENVELOPE_LEN + 2);
        assert_eq!(Envelope::decode(&m.encode()).unwrap(), m);
        let a = Envelope::Ack { stream: A, next: 9 };
        assert_eq!(a.encode().len(), ACK_LEN);
        assert_eq!(Envelope::decode(&a.encode()).unwrap(), a);
        let mut above = m.encode();
        above[17..25].copy_from_slice(&8u64.to_be_bytes());
        assert!(matches!(
            Envelope::decode(&above),
            Err(DecodeError::InvalidValue { .. })
        ));
        // The last sequence number, whose acknowledgement could not be counted (found by
        // the delivery fuzz target: the stream filter's `next` overflowed).
        let last = Envelope::Message {
            stream: A,
            seq: u64::MAX,
            base: u64::MAX,
            data: b"",
        };
        assert!(matches!(
            Envelope::decode(&last.encode()),
            Err(DecodeError::InvalidValue { .. })
        ));
        let mut long = a.encode();
        long.push(0);
        assert_eq!(Envelope::decode(&long), Err(DecodeError::TrailingBytes(1)));
        assert!(matches!(
            Envelope::decode(&[KIND_MESSAGE, 1, 2]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = a.encode();
        bad[0] = 9;
        assert!(matches!(
            Envelope::decode(&bad),
            Err(DecodeError::InvalidValue { value: 9, .. })
        ));
    }
}
