//! Opening records (protocol.md §7.2–§7.5): counter reconstruction, the replay window, and
//! the receive key generations.
//!
//! On an ordered transport the generation changes exactly at each KeyUpdate record. On an
//! unordered one every record names its generation by its epoch byte, so a receiver opens it
//! with the right key whatever was lost or reordered before it: it keeps the current
//! generation, a few older ones for late records, and derives later ones when a record
//! names one, never more than [`MAX_GENERATIONS_AHEAD`] ahead.

use super::replay::ReplayWindow;
use super::{header_len, RecordError, TrafficKeys, MAX_PAYLOAD};
use crate::codec::{DecodeError, Reader};
use crate::crypto::aead::{AeadId, INTEGRITY_LIMIT_FAILURES, TAG_LEN};
use crate::crypto::kdf::{expand_secret, Secret};
use crate::msgs::FrameType;
use std::collections::VecDeque;

/// How far past its current key generation a receiver on an unordered transport follows a
/// record's epoch (protocol.md §7.5): the KeyUpdate records that may be lost in a row.
/// Further ones are refused without a key being derived, so a forged epoch costs little.
pub const MAX_GENERATIONS_AHEAD: u64 = 64;
/// Older generations kept at most, for records sealed before a key update that arrive after
/// it (each also goes once the replay window passes its last counter).
const MAX_OLDER: usize = 4;

/// A generation older than the current one, kept for late records.
pub(super) struct Older {
    generation: u64,
    keys: TrafficKeys,
    /// No record of this generation has a higher counter: the counter of the KeyUpdate record
    /// that ended it, or (while that is missing) one below the first record of a later one.
    last: u64,
}

/// Opens incoming records for one direction.
pub struct Opener {
    aead: AeadId,
    /// The current receive generation: the highest one a record authenticated under, or the
    /// one after the highest KeyUpdate accepted.
    keys: TrafficKeys,
    generation: u64,
    /// Unordered transports: older generations, oldest first.
    pub(super) older: VecDeque<Older>,
    /// Unordered transports: the secrets of generations `generation + 1`, `+ 2`, ..., derived
    /// when a record first names one.
    pub(super) ahead: Vec<Secret>,
    window: ReplayWindow,
    ordered: bool,
    pub(super) failures_this_key: u64,
}

/// An opened record: its type and where its plaintext lies in the frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// Record type.
    pub ty: FrameType,
    /// The record's 64-bit counter.
    pub counter: u64,
    /// The key generation it was sealed under.
    pub generation: u64,
    /// Plaintext range within the frame passed to [`Opener::open`].
    pub plaintext: std::ops::Range<usize>,
}

/// Recovers the 64-bit counter closest to `expected` whose low 16 bits are `seq`
/// (protocol.md §7.2, after RFC 9147 §4.2.2).
pub fn reconstruct_counter(expected: u64, seq: u16) -> u64 {
    const SPAN: u64 = 1 << 16;
    const HALF: u64 = 1 << 15;
    let candidate = (expected & !(SPAN - 1)) | u64::from(seq);
    if candidate.saturating_add(HALF) <= expected && candidate <= u64::MAX - SPAN {
        candidate + SPAN
    } else if candidate > expected.saturating_add(HALF) && candidate >= SPAN {
        candidate - SPAN
    } else {
        candidate
    }
}

/// The generation closest to `current` whose low byte is `epoch` (protocol.md §7.5): at most
/// 128 behind or 127 ahead; `None` below generation 0.
pub(super) fn reconstruct_generation(current: u64, epoch: u8) -> Option<u64> {
    let delta = epoch.wrapping_sub(current as u8) as i8;
    current.checked_add_signed(i64::from(delta))
}

/// Which keys open a record.
enum Keys {
    Current,
    Older(usize),
    /// `generation + n`, not yet in use.
    Ahead(u64),
}

impl Opener {
    /// An opener for `aead` with the given traffic secret. `ordered` is true on TCP, where any
    /// gap or repeat is fatal; false on MQTT, where the window absorbs reordering and records
    /// carry their key epoch.
    pub fn new(aead: AeadId, secret: Secret, window: usize, ordered: bool) -> Self {
        Self {
            aead,
            keys: TrafficKeys::new(aead, secret),
            generation: 0,
            older: VecDeque::new(),
            ahead: Vec::new(),
            window: ReplayWindow::new(window),
            ordered,
            failures_this_key: 0,
        }
    }

    /// Whether any gap or repeat is fatal (an in-order transport).
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// The replay window (for inspection and tests).
    pub fn window(&self) -> &ReplayWindow {
        &self.window
    }

    /// The current receive key generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Verifies and decrypts one record in place (protocol.md §7.3 lists the checks in order).
    /// On error nothing changes, except the count of failed authentications.
    pub fn open(&mut self, frame: &mut [u8]) -> Result<Opened, RecordError> {
        let header_len = header_len(self.ordered);
        let (ty, epoch, seq) = {
            let mut r = Reader::new(frame);
            let ty = FrameType::of(r.take(1, "record type")?)?;
            if !ty.is_record() {
                return Err(DecodeError::InvalidValue {
                    field: "record type",
                    value: ty as u8,
                }
                .into());
            }
            let epoch = if self.ordered {
                None
            } else {
                Some(r.u8("record epoch")?)
            };
            let seq = r.u16("record sequence")?;
            if r.rest().len() < TAG_LEN {
                return Err(DecodeError::Truncated {
                    field: "record tag",
                    needed: TAG_LEN,
                }
                .into());
            }
            (ty, epoch, seq)
        };
        let expected = self.window.next_expected();
        let counter = reconstruct_counter(expected, seq);
        self.window.check(counter)?;
        if self.ordered && counter != expected {
            return Err(RecordError::OutOfOrder {
                expected,
                got: counter,
            });
        }
        let (generation, which) = self.choose(counter, epoch)?;
        let (header, body) = frame
            .split_at_mut_checked(header_len)
            .ok_or(DecodeError::Empty)?;
        let derived;
        let keys = match which {
            Keys::Current => &self.keys,
            Keys::Older(i) => &self.older[i].keys,
            Keys::Ahead(n) => {
                derived = TrafficKeys::new(self.aead, self.ahead_secret(n));
                &derived
            }
        };
        let Ok(len) = keys.key.open_in_place(keys.nonce(counter), header, body) else {
            self.failures_this_key += 1;
            if self.failures_this_key >= INTEGRITY_LIMIT_FAILURES {
                return Err(RecordError::IntegrityLimit);
            }
            return Err(RecordError::BadTag(counter));
        };
        if len > MAX_PAYLOAD {
            return Err(RecordError::PayloadTooLarge(len));
        }
        self.window.commit(counter);
        if let Keys::Ahead(n) = which {
            // A record of a later generation authenticated: its KeyUpdate records were lost
            // or are late. Every record of the generations before has a lower counter.
            self.advance(n, counter.saturating_sub(1));
        }
        if ty == FrameType::KeyUpdate {
            if generation == self.generation {
                self.advance(1, counter);
            } else if let Some(o) = self.older.iter_mut().find(|o| o.generation == generation) {
                o.last = o.last.min(counter);
            }
        }
        let floor = self.window.floor();
        self.older.retain(|o| o.last >= floor);
        Ok(Opened {
            ty,
            counter,
            generation,
            plaintext: header_len..header_len + len,
        })
    }

    /// The generation a record at `counter` with `epoch` names, and where its keys are.
    fn choose(&self, counter: u64, epoch: Option<u8>) -> Result<(u64, Keys), RecordError> {
        let Some(epoch) = epoch else {
            return Ok((self.generation, Keys::Current));
        };
        let unknown = RecordError::UnknownGeneration {
            counter,
            epoch,
            current: self.generation,
        };
        let generation = reconstruct_generation(self.generation, epoch).ok_or(unknown)?;
        if generation == self.generation {
            return Ok((generation, Keys::Current));
        }
        if generation < self.generation {
            return self
                .older
                .iter()
                .position(|o| o.generation == generation)
                .map(|i| (generation, Keys::Older(i)))
                .ok_or(unknown);
        }
        let ahead = generation - self.generation;
        if ahead > MAX_GENERATIONS_AHEAD {
            return Err(unknown);
        }
        Ok((generation, Keys::Ahead(ahead)))
    }

    /// The secret of generation `generation + n` (n >= 1), derived once.
    fn ahead_secret(&mut self, n: u64) -> Secret {
        let n = n as usize;
        while self.ahead.len() < n {
            let from = self.ahead.last().unwrap_or(&self.keys.secret);
            let next = expand_secret(from, "key update");
            self.ahead.push(next);
        }
        self.ahead[n - 1].clone()
    }

    /// Moves the current generation `n` (>= 1) ahead. On an unordered transport the
    /// generations left behind are kept, with no record above `last`, for late records.
    fn advance(&mut self, n: u64, last: u64) {
        let target = self.generation + n;
        if self.ordered {
            self.keys = self.keys.next();
        } else {
            let secrets: Vec<Secret> = (1..=n).map(|i| self.ahead_secret(i)).collect();
            self.ahead.drain(..secrets.len());
            let mut behind = secrets;
            let newest = match behind.pop() {
                Some(secret) => TrafficKeys::new(self.aead, secret),
                None => self.keys.next(),
            };
            let old = std::mem::replace(&mut self.keys, newest);
            // The generation left and the ones skipped, oldest first; only the newest few are
            // kept.
            let kept = |g: u64| target - g <= MAX_OLDER as u64;
            if kept(self.generation) {
                self.older.push_back(Older {
                    generation: self.generation,
                    keys: old,
                    last,
                });
            }
            for (i, secret) in behind.into_iter().enumerate() {
                let generation = self.generation + 1 + i as u64;
                if kept(generation) {
                    self.older.push_back(Older {
                        generation,
                        keys: TrafficKeys::new(self.aead, secret),
                        last,
                    });
                }
            }
            while self.older.len() > MAX_OLDER {
                self.older.pop_front();
            }
        }
        self.generation = target;
        self.failures_this_key = 0;
    }
}
