//! Admission control for the TCP server (protocol.md §2.3): which connections it keeps, which
//! hellos it answers at full cost, and which sessions it has room for. Sans IO: time is passed
//! in, and each connection's task is named by a handle `H` the caller uses to stop it.
//!
//! Two budgets, never shared: **pending** handshakes (a connection from its accept until its
//! device is authenticated) and **established** sessions. A newcomer is never refused for want
//! of a pending slot: a full budget gives up the pending handshake that has waited longest, of
//! the source holding the most (or of the newcomer's own source, at its per-source limit). An
//! established session is never given up for unauthenticated work; the only session that
//! makes way for another is an older one of the same device identity, at that identity's cap.
//!
//! Under load (too many handshakes answered and waiting for their DeviceFinish, or full
//! handshakes coming faster than the CPU budget), a DeviceHello without a valid cookie is
//! answered with a cookie (protocol.md §6.5), and one with a valid cookie gets a full
//! handshake only within its source's rate.

use super::source::{Prefix, Source};
use crate::handshake::cookie::CookieCheck;
use serde::Serialize;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::IpAddr;
use std::time::Instant;

/// What the server allows. [`Default`] holds the reference server's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Established sessions at most.
    pub max_sessions: usize,
    /// Pending handshakes at most.
    pub max_pending: usize,
    /// Pending handshakes per source at most.
    pub pending_per_source: usize,
    /// Established sessions per source at most.
    pub sessions_per_source: usize,
    /// Established sessions per device identity at most; a newer one replaces the oldest.
    pub sessions_per_device: usize,
    /// Under load from this many answered handshakes on: pending ones whose hello the server
    /// answered with a ServerHello (those that cost it a full handshake's work) and that wait
    /// for their DeviceFinish. Connections that have not delivered a hello cost no CPU and
    /// are bounded by the pending budget alone.
    pub cookie_pending: usize,
    /// Under load while full handshakes come faster than this many a second.
    pub cookie_rate: u32,
    /// Under load: full handshakes a second (and in a burst) per source.
    pub source_rate: u32,
    /// Length of an IPv4 source's prefix.
    pub source_bits_v4: u8,
    /// Length of an IPv6 source's prefix.
    pub source_bits_v6: u8,
    /// Sources exempt from the per-source limits (still within the server's own).
    pub exempt: Vec<Prefix>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            max_pending: 1024,
            pending_per_source: 64,
            sessions_per_source: 1000,
            sessions_per_device: 4,
            cookie_pending: 256,
            cookie_rate: 1000,
            source_rate: 50,
            source_bits_v4: 32,
            source_bits_v6: 64,
            exempt: Vec::new(),
        }
    }
}

/// What an attacker can make the server do, counted. [`tcp_server::run`](super::tcp_server::run)
/// returns it and logs a summary of it at most once per [`WARN_EVERY`](crate::throttle::WARN_EVERY).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AdmissionStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Pending handshakes given up because the pending budget was full.
    pub evicted: u64,
    /// Pending handshakes given up because their source was at its limit.
    pub evicted_source: u64,
    /// Connections whose first frame did not arrive by the hello deadline.
    pub hello_timeouts: u64,
    /// Handshakes not finished within the handshake timeout.
    pub handshake_timeouts: u64,
    /// Handshakes that failed a check, or whose connection broke.
    pub handshake_failures: u64,
    /// Devices refused by the authorizer.
    pub devices_refused: u64,
    /// DeviceHellos answered with a cookie.
    pub cookies_sent: u64,
    /// CookieHellos whose cookie did not verify (another address, another hello, expired).
    pub cookies_refused: u64,
    /// DeviceHellos refused with `busy` under load: their source was out of handshakes.
    pub busy: u64,
    /// DeviceHellos answered with a ServerHello.
    pub full_handshakes: u64,
    /// Other first frames taken to the handshake (resumptions, and frames it refuses).
    pub other_first: u64,
    /// Sessions established.
    pub sessions: u64,
    /// Sessions refused with `busy`: no room for them, or for their source.
    pub sessions_refused: u64,
    /// Sessions closed for a newer one of the same device identity.
    pub sessions_replaced: u64,
    /// Sessions established while the same device identity held one from another source: one
    /// key in two places (a copied or stolen key, or a device that moved networks).
    pub duplicate_keys: u64,
    /// Most pending handshakes at once.
    pub peak_pending: u64,
    /// Most established sessions at once.
    pub peak_sessions: u64,
}

impl AdmissionStats {
    /// The counters that grew since `earlier`, named, for one summary line; `None` if none did.
    pub fn summary_since(&self, earlier: &Self) -> Option<String> {
        let grew = [
            ("evicted", self.evicted - earlier.evicted),
            (
                "evicted per source",
                self.evicted_source - earlier.evicted_source,
            ),
            (
                "hello timeouts",
                self.hello_timeouts - earlier.hello_timeouts,
            ),
            (
                "handshake timeouts",
                self.handshake_timeouts - earlier.handshake_timeouts,
            ),
            (
                "handshake failures",
                self.handshake_failures - earlier.handshake_failures,
            ),
            (
                "devices refused",
                self.devices_refused - earlier.devices_refused,
            ),
            ("cookies sent", self.cookies_sent - earlier.cookies_sent),
            (
                "cookies refused",
                self.cookies_refused - earlier.cookies_refused,
            ),
            ("busy", self.busy - earlier.busy),
            (
                "sessions refused",
                self.sessions_refused - earlier.sessions_refused,
            ),
            (
                "sessions replaced",
                self.sessions_replaced - earlier.sessions_replaced,
            ),
        ];
        let parts: Vec<String> = grew
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}

/// How a handshake the transport ran ended, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The first frame did not arrive in time.
    HelloTimeout,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// A check failed or the connection broke.
    Failed,
    /// The authorizer refused the device.
    Refused,
}

/// A device's first frame, by what answering it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FirstKind {
    /// A DeviceHello (alone, or in a CookieHello with the cookie checked).
    Full(CookieCheck),
    /// Anything else: a ResumeHello, or a frame the handshake refuses.
    Other,
}

/// What to do with a first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Run the handshake.
    Proceed,
    /// Answer with a cookie and close.
    Cookie,
    /// Refuse with `busy`.
    Busy,
}

/// Why an authenticated device gets no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The server holds its most sessions.
    #[error("the server holds its most sessions")]
    Sessions,
    /// The device's source holds its most sessions.
    #[error("the device's source address holds its most sessions")]
    SourceSessions,
    /// The handshake was given up meanwhile.
    #[error("the handshake was given up to make room")]
    Evicted,
}

/// A token bucket: `rate` a second, up to `rate` at once.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(rate),
            at: now,
        }
    }

    fn level(&self, rate: u32, now: Instant) -> f64 {
        let rate = f64::from(rate);
        let refill = now.saturating_duration_since(self.at).as_secs_f64() * rate;
        (self.tokens + refill).min(rate)
    }

    /// Takes a token if there is one; `force` takes it anyway (down to zero).
    fn take(&mut self, rate: u32, now: Instant, force: bool) -> bool {
        let level = self.level(rate, now);
        self.at = now;
        let ok = level >= 1.0;
        self.tokens = if ok || force {
            (level - 1.0).max(0.0)
        } else {
            level
        };
        ok
    }
}

struct Pending<H> {
    source: Source,
    since: Instant,
    handle: Option<H>,
    /// Whether its hello got a full handshake (it counts toward `cookie_pending`).
    answered: bool,
}

struct Established<H> {
    source: Source,
    device: Option<[u8; 32]>,
    handle: Option<H>,
}

struct SourceState {
    /// Pending handshakes, longest waiting first.
    pending: BTreeSet<(Instant, u64)>,
    sessions: usize,
    bucket: Bucket,
    exempt: bool,
}

/// The admission state of one server.
pub struct Admission<H> {
    limits: Limits,
    pending: HashMap<u64, Pending<H>>,
    sessions: HashMap<u64, Established<H>>,
    sources: HashMap<Source, SourceState>,
    devices: HashMap<[u8; 32], VecDeque<u64>>,
    load: Bucket,
    /// Pending handshakes with `answered` set.
    answered: usize,
    next_id: u64,
    stats: AdmissionStats,
}

impl<H> Admission<H> {
    /// Admission under `limits` (each at least 1 where 0 would refuse everything).
    pub fn new(mut limits: Limits, now: Instant) -> Self {
        for n in [
            &mut limits.max_sessions,
            &mut limits.max_pending,
            &mut limits.pending_per_source,
            &mut limits.sessions_per_source,
            &mut limits.sessions_per_device,
        ] {
            *n = (*n).max(1);
        }
        Self {
            load: Bucket::full(limits.cookie_rate, now),
            limits,
            pending: HashMap::new(),
            sessions: HashMap::new(),
            sources: HashMap::new(),
            devices: HashMap::new(),
            answered: 0,
            next_id: 0,
            stats: AdmissionStats::default(),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> AdmissionStats {
        self.stats
    }

    /// Pending handshakes now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Established sessions now.
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Counts how a handshake ended.
    pub fn record(&mut self, outcome: Outcome) {
        let n = match outcome {
            Outcome::HelloTimeout => &mut self.stats.hello_timeouts,
            Outcome::HandshakeTimeout => &mut self.stats.handshake_timeouts,
            Outcome::Failed => &mut self.stats.handshake_failures,
            Outcome::Refused => &mut self.stats.devices_refused,
        };
        *n += 1;
    }

    /// Whether the server is under load at `now`: cookies are asked for (protocol.md §6.5).
    pub fn under_load(&self, now: Instant) -> bool {
        self.answered >= self.limits.cookie_pending
            || self.load.level(self.limits.cookie_rate, now) < 1.0
    }

    fn source_mut(&mut self, source: Source, ip: IpAddr, now: Instant) -> &mut SourceState {
        let (rate, exempt) = (self.limits.source_rate, &self.limits.exempt);
        self.sources.entry(source).or_insert_with(|| SourceState {
            pending: BTreeSet::new(),
            sessions: 0,
            bucket: Bucket::full(rate, now),
            exempt: exempt.iter().any(|p| p.contains(ip)),
        })
    }

    /// A new connection from `ip`: always taken as a pending handshake, named by the returned
    /// id. If that leaves its source or the server over its pending limit, the handshake given
    /// up for it is removed and its handle returned, for the caller to stop.
    pub fn connect(&mut self, ip: IpAddr, now: Instant) -> (u64, Option<H>) {
        let id = self.next_id;
        self.next_id += 1;
        let source = Source::of(ip, self.limits.source_bits_v4, self.limits.source_bits_v6);
        let per_source = self.limits.pending_per_source;
        let state = self.source_mut(source, ip, now);
        state.pending.insert((now, id));
        let over_source = !state.exempt && state.pending.len() > per_source;
        self.pending.insert(
            id,
            Pending {
                source,
                since: now,
                handle: None,
                answered: false,
            },
        );
        self.stats.accepted += 1;
        let victim = if over_source {
            self.stats.evicted_source += 1;
            self.longest_waiting(source)
        } else if self.pending.len() > self.limits.max_pending {
            self.stats.evicted += 1;
            self.busiest_source().and_then(|s| self.longest_waiting(s))
        } else {
            None
        };
        let evicted = victim
            .and_then(|v| self.remove_pending(v))
            .and_then(|p| p.handle);
        self.stats.peak_pending = self.stats.peak_pending.max(self.pending.len() as u64);
        (id, evicted)
    }

    /// The source holding the most pending handshakes; of those, the one whose oldest has
    /// waited longest.
    fn busiest_source(&self) -> Option<Source> {
        self.sources
            .iter()
            .filter_map(|(s, st)| {
                Some((
                    st.pending.len(),
                    std::cmp::Reverse(*st.pending.first()?),
                    *s,
                ))
            })
            .max()
            .map(|(_, _, s)| s)
    }

    fn longest_waiting(&self, source: Source) -> Option<u64> {
        self.sources
            .get(&source)?
            .pending
            .first()
            .map(|(_, id)| *id)
    }

    fn remove_pending(&mut self, id: u64) -> Option<Pending<H>> {
        let p = self.pending.remove(&id)?;
        self.answered -= usize::from(p.answered);
        if let Some(s) = self.sources.get_mut(&p.source) {
            s.pending.remove(&(p.since, id));
        }
        Some(p)
    }

    /// Takes the handles of every task that holds a place, pending or established (for the
    /// caller to stop them once it no longer holds this state).
    pub fn take_handles(&mut self) -> Vec<H> {
        let pending = self.pending.values_mut().filter_map(|p| p.handle.take());
        let sessions = self.sessions.values_mut().filter_map(|s| s.handle.take());
        pending.chain(sessions).collect()
    }

    /// The handle of the task serving `id` (set once it is spawned).
    pub fn set_handle(&mut self, id: u64, handle: H) {
        if let Some(p) = self.pending.get_mut(&id) {
            p.handle = Some(handle);
        } else if let Some(s) = self.sessions.get_mut(&id) {
            s.handle = Some(handle);
        }
    }

    /// What to do with the first frame of pending handshake `id` at `now`.
    pub fn first(&mut self, id: u64, kind: FirstKind, now: Instant) -> Verdict {
        let Some(source) = self.pending.get(&id).map(|p| p.source) else {
            return Verdict::Busy;
        };
        let cookie = match kind {
            FirstKind::Other => {
                self.stats.other_first += 1;
                return Verdict::Proceed;
            }
            FirstKind::Full(c) => c,
        };
        if matches!(cookie, CookieCheck::Refused(_)) {
            self.stats.cookies_refused += 1;
        }
        let proceed = if !self.under_load(now) {
            true
        } else if cookie != CookieCheck::Valid {
            self.stats.cookies_sent += 1;
            return Verdict::Cookie;
        } else {
            let rate = self.limits.source_rate;
            self.sources
                .get_mut(&source)
                .is_some_and(|s| s.exempt || s.bucket.take(rate, now, false))
        };
        if !proceed {
            self.stats.busy += 1;
            return Verdict::Busy;
        }
        self.load.take(self.limits.cookie_rate, now, true);
        self.stats.full_handshakes += 1;
        if let Some(p) = self.pending.get_mut(&id).filter(|p| !p.answered) {
            p.answered = true;
            self.answered += 1;
        }
        Verdict::Proceed
    }

    /// Pending handshake `id` authenticated `device` (`None`: anonymous): it becomes a
    /// session if there is room, and the handles of the sessions it replaces (the same
    /// identity's oldest, beyond its cap) are returned for the caller to stop. On refusal the
    /// handshake stays pending until [`release`](Self::release).
    pub fn establish(&mut self, id: u64, device: Option<[u8; 32]>) -> Result<Vec<H>, Refusal> {
        let source = self.pending.get(&id).ok_or(Refusal::Evicted)?.source;
        let elsewhere = device.is_some_and(|d| self.held_elsewhere(&d, &source));
        let replace: Vec<u64> = match device.and_then(|d| self.devices.get(&d)) {
            Some(held) => {
                let over = (held.len() + 1).saturating_sub(self.limits.sessions_per_device);
                held.iter().take(over).copied().collect()
            }
            None => Vec::new(),
        };
        let freed_here = replace
            .iter()
            .filter(|r| self.sessions.get(r).is_some_and(|s| s.source == source))
            .count();
        let state = self.sources.get(&source);
        let refusal = if self.sessions.len() - replace.len() >= self.limits.max_sessions {
            Some(Refusal::Sessions)
        } else if state.is_some_and(|s| {
            !s.exempt && s.sessions - freed_here >= self.limits.sessions_per_source
        }) {
            Some(Refusal::SourceSessions)
        } else {
            None
        };
        if let Some(r) = refusal {
            self.stats.sessions_refused += 1;
            return Err(r);
        }
        let replaced: Vec<H> = replace
            .into_iter()
            .filter_map(|r| self.remove_session(r))
            .filter_map(|s| s.handle)
            .collect();
        self.stats.sessions_replaced += replaced.len() as u64;
        let handle = self.remove_pending(id).and_then(|p| p.handle);
        if let Some(s) = self.sources.get_mut(&source) {
            s.sessions += 1;
        }
        if let Some(d) = device {
            self.devices.entry(d).or_default().push_back(id);
        }
        self.sessions.insert(
            id,
            Established {
                source,
                device,
                handle,
            },
        );
        self.stats.sessions += 1;
        self.stats.duplicate_keys += u64::from(elsewhere);
        self.stats.peak_sessions = self.stats.peak_sessions.max(self.sessions.len() as u64);
        Ok(replaced)
    }

    /// Whether `device` holds a session from a source other than `source`.
    pub fn held_elsewhere(&self, device: &[u8; 32], source: &Source) -> bool {
        self.devices.get(device).is_some_and(|held| {
            held.iter()
                .any(|s| self.sessions.get(s).is_some_and(|e| e.source != *source))
        })
    }

    fn remove_session(&mut self, id: u64) -> Option<Established<H>> {
        let s = self.sessions.remove(&id)?;
        if let Some(state) = self.sources.get_mut(&s.source) {
            state.sessions = state.sessions.saturating_sub(1);
        }
        if let Some(d) = s.device {
            if let Some(held) = self.devices.get_mut(&d) {
                held.retain(|x| *x != id);
                if held.is_empty() {
                    self.devices.remove(&d);
                }
            }
        }
        Some(s)
    }

    /// `id`'s task ended: whatever it held is free.
    pub fn release(&mut self, id: u64, now: Instant) {
        let source = match self.remove_pending(id) {
            Some(p) => Some(p.source),
            None => self.remove_session(id).map(|s| s.source),
        };
        if let Some(source) = source {
            self.forget_if_idle(source, now);
        }
        // Sources whose rate buckets were refilling when they went idle are forgotten once
        // there are many.
        if self.sources.len() > 2 * (self.limits.max_pending + self.limits.max_sessions) {
            let rate = self.limits.source_rate;
            self.sources.retain(|_, s| {
                !s.pending.is_empty()
                    || s.sessions > 0
                    || s.bucket.level(rate, now) < f64::from(rate)
            });
        }
    }

    fn forget_if_idle(&mut self, source: Source, now: Instant) {
        let rate = self.limits.source_rate;
        if self.sources.get(&source).is_some_and(|s| {
            s.pending.is_empty() && s.sessions == 0 && s.bucket.level(rate, now) >= f64::from(rate)
        }) {
            self.sources.remove(&source);
        }
    }

    /// Forgets idle sources whose rate buckets have refilled (call now and then).
    pub fn sweep(&mut self, now: Instant) {
        let idle: Vec<Source> = self.sources.keys().copied().collect();
        for s in idle {
            self.forget_if_idle(s, now);
        }
    }
}

#[cfg(test)]
#[path = "admission_tests.rs"]
mod tests;
