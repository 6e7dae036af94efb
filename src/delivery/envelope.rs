//! The delivery envelopes (protocol.md §11.1): what a Data record's plaintext carries between
//! a device and a server that speak the delivery protocol, both ways, and the relay envelopes
//! (§11.6) that carry device-to-device sessions through the server.

use super::StreamId;
use crate::codec::{DecodeError, Reader};

/// Bytes before the data of a Message (and before the body of every sequenced envelope):
/// kind, stream, sequence, base.
pub const ENVELOPE_LEN: usize = 1 + 8 + 8 + 8;
/// Length of an Ack: kind, stream, next.
pub const ACK_LEN: usize = 1 + 8 + 8;
/// Longest peer name a relay envelope carries (a registry label is at most 64 bytes).
pub const MAX_PEER_NAME: usize = 64;
/// Most registry entries a PeerInfo carries.
pub const MAX_PEER_ENTRIES: usize = 4;
/// Longest registry entry line (docs/registry.md §2.1: at most 1,023 bytes before the newline).
pub const MAX_ENTRY_LINE: usize = 1023;

/// Kinds of delivery envelopes (the first byte of a record's plaintext).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// A message: device -> server (telemetry) or server -> device (downlink).
    Message = 0x01,
    /// A cumulative acknowledgement, either way.
    Ack = 0x02,
    /// A frame of a device-to-device session: to a peer (up) or from one (down).
    Relay = 0x03,
    /// Server -> device: who a peer is, and the registry entries that vouch for its key.
    PeerInfo = 0x04,
    /// Server -> device: the server does not relay to a peer, and why.
    RelayRefused = 0x05,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::Message,
            0x02 => Self::Ack,
            0x03 => Self::Relay,
            0x04 => Self::PeerInfo,
            0x05 => Self::RelayRefused,
            _ => return None,
        })
    }
}

/// Why a server does not relay to a peer (protocol.md §11.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum Refusal {
    /// No device of that name is known to the server.
    UnknownPeer = 0x01,
    /// The server's policy (registry groups) does not let this device reach that peer.
    Forbidden = 0x02,
    /// The peer has no session with this server, and none held for it.
    Offline = 0x03,
    /// The server relays nothing (it was started without relaying).
    NoRelay = 0x04,
}

impl Refusal {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0x01 => Self::UnknownPeer,
            0x02 => Self::Forbidden,
            0x03 => Self::Offline,
            0x04 => Self::NoRelay,
            _ => return None,
        })
    }

    /// The name used in logs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::UnknownPeer => "unknown_peer",
            Self::Forbidden => "forbidden",
            Self::Offline => "offline",
            Self::NoRelay => "no_relay",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::UnknownPeer => "no device of that name is known to the server",
            Self::Forbidden => "the server's policy does not let this device reach that peer",
            Self::Offline => "the peer is not connected to the server",
            Self::NoRelay => "the server relays nothing",
        })
    }
}

/// Who a peer is, as the server says (protocol.md §11.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo<'a> {
    /// The peer's name.
    pub peer: &'a str,
    /// The receiving device's own name, as the server knows it.
    pub you: &'a str,
    /// SHA-256 of the peer's public key (what its fingerprint encodes).
    pub fingerprint: [u8; 32],
    /// Registry entry lines (without their newlines) that establish the peer's name and group,
    /// signed by the registry's key; empty without a registry.
    pub entries: Vec<&'a str>,
}

/// A Data record's plaintext in the delivery protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Envelope<'a> {
    /// One message: device -> server telemetry, or server -> device downlink.
    Message {
        /// The sender's stream.
        stream: StreamId,
        /// Position in the stream, from 0.
        seq: u64,
        /// Every message below this sequence was acknowledged to the sender (by whichever
        /// instance), so a receiver that never saw them need not wait for them.
        base: u64,
        /// The application data.
        data: &'a [u8],
    },
    /// Every envelope of `stream` with a sequence below `next` was taken.
    Ack {
        /// The stream acknowledged.
        stream: StreamId,
        /// One past the last contiguously taken sequence number.
        next: u64,
    },
    /// A frame of a device-to-device session (§11.6).
    Relay {
        /// The sender's stream (the device's relay stream, or the server's downlink stream).
        stream: StreamId,
        /// Position in the stream.
        seq: u64,
        /// As in a Message.
        base: u64,
        /// Up: the peer it is for; down: the peer it comes from.
        peer: &'a str,
        /// Whether the frame comes from the initiator of the inner session.
        initiator: bool,
        /// The inner session's frame.
        frame: &'a [u8],
    },
    /// Server -> device: who `peer` is (§11.6).
    PeerInfo {
        /// The server's downlink stream.
        stream: StreamId,
        /// Position in the stream.
        seq: u64,
        /// As in a Message.
        base: u64,
        /// What the server says of the peer.
        info: PeerInfo<'a>,
    },
    /// Server -> device: frames for `peer` are not relayed (§11.6).
    RelayRefused {
        /// The server's downlink stream.
        stream: StreamId,
        /// Position in the stream.
        seq: u64,
        /// As in a Message.
        base: u64,
        /// The peer.
        peer: &'a str,
        /// Why.
        reason: Refusal,
    },
}

/// A peer name fits a relay envelope: 1 to 64 bytes of UTF-8 without control characters.
pub fn valid_peer_name(name: &str) -> bool {
    (1..=MAX_PEER_NAME).contains(&name.len()) && !name.chars().any(char::is_control)
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    debug_assert!(
        valid_peer_name(name),
        "peer names are checked before encoding"
    );
    let name = &name.as_bytes()[..name.len().min(MAX_PEER_NAME)];
    out.push(name.len() as u8);
    out.extend_from_slice(name);
}

fn read_name<'a>(r: &mut Reader<'a>, field: &'static str) -> Result<&'a str, DecodeError> {
    let len = r.u8(field)?;
    let bytes = r.take(usize::from(len), field)?;
    std::str::from_utf8(bytes)
        .ok()
        .filter(|n| valid_peer_name(n))
        .ok_or(DecodeError::InvalidValue { field, value: len })
}

/// The body of a Relay envelope: flags, peer name, frame.
pub fn relay_body(peer: &str, initiator: bool, frame: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + peer.len() + frame.len());
    out.push(u8::from(initiator));
    push_name(&mut out, peer);
    out.extend_from_slice(frame);
    out
}

/// The body of a PeerInfo envelope.
pub fn peer_info_body(info: &PeerInfo<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    push_name(&mut out, info.peer);
    push_name(&mut out, info.you);
    out.extend_from_slice(&info.fingerprint);
    let entries = &info.entries[..info.entries.len().min(MAX_PEER_ENTRIES)];
    out.push(entries.len() as u8);
    for e in entries {
        let e = &e.as_bytes()[..e.len().min(MAX_ENTRY_LINE)];
        out.extend_from_slice(&(e.len() as u16).to_be_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// The body of a RelayRefused envelope.
pub fn refusal_body(peer: &str, reason: Refusal) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + peer.len());
    push_name(&mut out, peer);
    out.push(reason as u8);
    out
}

/// A sequenced envelope (every kind but Ack) from its header and already-encoded body.
pub fn sequenced(kind: Kind, stream: StreamId, seq: u64, base: u64, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENVELOPE_LEN + body.len());
    out.push(kind as u8);
    out.extend_from_slice(&stream);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&base.to_be_bytes());
    out.extend_from_slice(body);
    out
}

impl<'a> Envelope<'a> {
    /// Encodes the envelope.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Message {
                stream,
                seq,
                base,
                data,
            } => sequenced(Kind::Message, *stream, *seq, *base, data),
            Self::Ack { stream, next } => {
                let mut out = Vec::with_capacity(ACK_LEN);
                out.push(Kind::Ack as u8);
                out.extend_from_slice(stream);
                out.extend_from_slice(&next.to_be_bytes());
                out
            }
            Self::Relay {
                stream,
                seq,
                base,
                peer,
                initiator,
                frame,
            } => sequenced(
                Kind::Relay,
                *stream,
                *seq,
                *base,
                &relay_body(peer, *initiator, frame),
            ),
            Self::PeerInfo {
                stream,
                seq,
                base,
                info,
            } => sequenced(Kind::PeerInfo, *stream, *seq, *base, &peer_info_body(info)),
            Self::RelayRefused {
                stream,
                seq,
                base,
                peer,
                reason,
            } => sequenced(
                Kind::RelayRefused,
                *stream,
                *seq,
                *base,
                &refusal_body(peer, *reason),
            ),
        }
    }

    /// The stream, sequence number and base of a sequenced envelope (every kind but Ack).
    pub fn sequence(&self) -> Option<(StreamId, u64, u64)> {
        match *self {
            Self::Ack { .. } => None,
            Self::Message {
                stream, seq, base, ..
            }
            | Self::Relay {
                stream, seq, base, ..
            }
            | Self::PeerInfo {
                stream, seq, base, ..
            }
            | Self::RelayRefused {
                stream, seq, base, ..
            } => Some((stream, seq, base)),
        }
    }

    /// Decodes an envelope. A sequenced envelope's sequence must be below 2^64 - 1 and its base
    /// must not exceed it; an Ack, a PeerInfo and a RelayRefused must have nothing after their
    /// last field; a Relay's flags must be 0 or 1 and its frame not empty.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let kind = r.u8("delivery kind")?;
        let kind = Kind::from_u8(kind).ok_or(DecodeError::InvalidValue {
            field: "delivery kind",
            value: kind,
        })?;
        let stream: StreamId = r.array("stream id")?;
        let n = u64::from_be_bytes(r.array("sequence")?);
        if kind == Kind::Ack {
            r.finish()?;
            return Ok(Self::Ack { stream, next: n });
        }
        let base = u64::from_be_bytes(r.array("base")?);
        // 2^64 - 1 is no sequenced envelope's number: `next` one past it would not fit.
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
        let seq = n;
        Ok(match kind {
            Kind::Ack => unreachable!("handled above"),
            Kind::Message => Self::Message {
                stream,
                seq,
                base,
                data: r.rest(),
            },
            Kind::Relay => {
                let flags = r.u8("relay flags")?;
                if flags > 1 {
                    return Err(DecodeError::InvalidValue {
                        field: "relay flags",
                        value: flags,
                    });
                }
                let peer = read_name(&mut r, "peer name")?;
                let frame = r.rest();
                if frame.is_empty() {
                    return Err(DecodeError::Truncated {
                        field: "relayed frame",
                        needed: 1,
                    });
                }
                Self::Relay {
                    stream,
                    seq,
                    base,
                    peer,
                    initiator: flags == 1,
                    frame,
                }
            }
            Kind::PeerInfo => {
                let peer = read_name(&mut r, "peer name")?;
                let you = read_name(&mut r, "own name")?;
                let fingerprint = r.array("peer fingerprint")?;
                let count = r.u8("entry count")?;
                if usize::from(count) > MAX_PEER_ENTRIES {
                    return Err(DecodeError::InvalidValue {
                        field: "entry count",
                        value: count,
                    });
                }
                let mut entries = Vec::with_capacity(usize::from(count));
                for _ in 0..count {
                    let len = usize::from(r.u16("entry length")?);
                    let line = r.take(len, "registry entry")?;
                    let line = std::str::from_utf8(line)
                        .ok()
                        .filter(|l| (1..=MAX_ENTRY_LINE).contains(&l.len()) && l.is_ascii())
                        .ok_or(DecodeError::InvalidValue {
                            field: "registry entry",
                            value: 0,
                        })?;
                    entries.push(line);
                }
                r.finish()?;
                Self::PeerInfo {
                    stream,
                    seq,
                    base,
                    info: PeerInfo {
                        peer,
                        you,
                        fingerprint,
                        entries,
                    },
                }
            }
            Kind::RelayRefused => {
                let peer = read_name(&mut r, "peer name")?;
                let code = r.u8("refusal reason")?;
                let reason = Refusal::from_u8(code).ok_or(DecodeError::InvalidValue {
                    field: "refusal reason",
                    value: code,
                })?;
                r.finish()?;
                Self::RelayRefused {
                    stream,
                    seq,
                    base,
                    peer,
                    reason,
                }
            }
        })
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
            Envelope::decode(&[Kind::Message as u8, 1, 2]),
            Err(DecodeError::Truncated { .. })
        ));
        let mut bad = a.encode();
        bad[0] = 9;
        assert!(matches!(
            Envelope::decode(&bad),
            Err(DecodeError::InvalidValue { value: 9, .. })
        ));
    }

    #[test]
    fn relay_envelopes_round_trip_and_reject_malformed() {
        let relay = Envelope::Relay {
            stream: A,
            seq: 2,
            base: 1,
            peer: "sensor-2",
            initiator: true,
            frame: &[0x01, 0x02],
        };
        let bytes = relay.encode();
        assert_eq!(bytes.len(), ENVELOPE_LEN + 2 + 8 + 2);
        assert_eq!(Envelope::decode(&bytes).unwrap(), relay);
        let mut flags = bytes.clone();
        flags[ENVELOPE_LEN] = 2;
        assert!(Envelope::decode(&flags).is_err(), "unknown flag");
        let empty = sequenced(Kind::Relay, A, 2, 1, &relay_body("x", false, &[]));
        assert!(Envelope::decode(&empty).is_err(), "empty frame");
        let nameless = sequenced(Kind::Relay, A, 2, 1, &[0, 0, 1]);
        assert!(Envelope::decode(&nameless).is_err(), "empty name");
        let control = sequenced(Kind::Relay, A, 2, 1, &[0, 1, b'\n', 1]);
        assert!(Envelope::decode(&control).is_err(), "control character");

        let info = Envelope::PeerInfo {
            stream: A,
            seq: 0,
            base: 0,
            info: PeerInfo {
                peer: "b",
                you: "a",
                fingerprint: [7; 32],
                entries: vec!["1 2 3", "4 5 6"],
            },
        };
        let bytes = info.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap(), info);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(Envelope::decode(&trailing).is_err());
        let mut many = bytes[..ENVELOPE_LEN + 4 + 32].to_vec();
        many.push(5);
        assert!(Envelope::decode(&many).is_err(), "more than 4 entries");

        let refused = Envelope::RelayRefused {
            stream: A,
            seq: 1,
            base: 0,
            peer: "b",
            reason: Refusal::Forbidden,
        };
        let bytes = refused.encode();
        assert_eq!(Envelope::decode(&bytes).unwrap(), refused);
        let mut unknown = bytes.clone();
        *unknown.last_mut().unwrap() = 9;
        assert!(Envelope::decode(&unknown).is_err());
    }
}
