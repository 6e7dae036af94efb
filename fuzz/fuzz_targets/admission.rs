//! TCP admission control (protocol.md §2.3, §6.5): connections, first frames with and
//! without cookies, authenticated devices, releases and time, from a handful of sources, under
//! small limits, against a model of what is pending and established. Checks the budgets
//! (pending, sessions, sessions per device identity), that a newcomer is never the handshake
//! given up for itself, and that every handle the admission returns (given up or replaced) is
//! one it held.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::handshake::cookie::{CookieCheck, CookieError};
use secchan::service::admission::{Admission, FirstKind, Limits, Verdict};
use secchan_fuzz::Reach;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

#[derive(Debug, Arbitrary)]
enum Op {
    Connect(u8),
    First { pick: u8, kind: u8 },
    Establish { pick: u8, device: Option<u8> },
    Release(u8),
    Sweep,
    Wait(u16),
}

#[derive(Debug, Arbitrary)]
struct Input {
    limits: [u8; 7],
    ops: Vec<Op>,
}

fn source(i: u8) -> IpAddr {
    match i % 6 {
        // Two IPv6 addresses in one /64: one source.
        4 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        5 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2)),
        n => IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
    }
}

fuzz_target!(|input: Input| {
    let mut r = Reach::new("admission");
    let small = |i: usize| usize::from(input.limits[i] % 8) + 1;
    let limits = Limits {
        max_sessions: small(0),
        max_pending: small(1),
        pending_per_source: small(2),
        sessions_per_source: small(3),
        sessions_per_device: small(4),
        cookie_pending: small(5) - 1,
        cookie_rate: u32::from(input.limits[6] % 4) + 1,
        source_rate: 2,
        ..Limits::default()
    };
    let max = limits.clone();
    let mut now = Instant::now();
    let mut adm: Admission<u64> = Admission::new(limits, now);
    let mut pending = BTreeSet::new();
    let mut sessions: BTreeMap<u64, Option<u8>> = BTreeMap::new();
    let live = |pending: &BTreeSet<u64>, sessions: &BTreeMap<u64, Option<u8>>, pick: u8| {
        let all: Vec<u64> = pending.iter().chain(sessions.keys()).copied().collect();
        (!all.is_empty()).then(|| all[usize::from(pick) % all.len()])
    };
    for op in input.ops.iter().take(256) {
        match op {
            Op::Connect(ip) => {
                let (id, evicted) = adm.connect(source(*ip), now);
                adm.set_handle(id, id);
                pending.insert(id);
                if let Some(v) = evicted {
                    r.hit("evicted");
                    assert_ne!(v, id, "a newcomer was given up for itself");
                    assert!(pending.remove(&v), "gave up {v}, which was not pending");
                }
            }
            Op::First { pick, kind } => {
                let Some(id) = live(&pending, &sessions, *pick) else {
                    continue;
                };
                let kind = match kind % 4 {
                    0 => FirstKind::Other,
                    1 => FirstKind::Full(CookieCheck::Absent),
                    2 => FirstKind::Full(CookieCheck::Valid),
                    _ => FirstKind::Full(CookieCheck::Refused(CookieError::Invalid)),
                };
                match adm.first(id, kind, now) {
                    Verdict::Proceed => r.hit("proceed"),
                    Verdict::Cookie => {
                        r.hit("cookie");
                        assert!(
                            !matches!(kind, FirstKind::Other | FirstKind::Full(CookieCheck::Valid)),
                            "a cookie asked of a frame that needs none"
                        );
                    }
                    Verdict::Busy => r.hit("busy"),
                    _ => r.hit("other_verdict"),
                }
            }
            Op::Establish { pick, device } => {
                let Some(id) = live(&pending, &sessions, *pick) else {
                    continue;
                };
                let key = device.map(|d| [d % 4; 32]);
                match adm.establish(id, key) {
                    Ok(replaced) => {
                        r.hit("established");
                        assert!(pending.remove(&id), "{id} established without pending");
                        for old in replaced {
                            r.hit("replaced");
                            assert!(
                                sessions.remove(&old).is_some(),
                                "replaced {old}, not a session"
                            );
                        }
                        sessions.insert(id, device.map(|d| d % 4));
                    }
                    Err(_) => r.hit("refused"),
                }
            }
            Op::Release(pick) => {
                if let Some(id) = live(&pending, &sessions, *pick) {
                    adm.release(id, now);
                    pending.remove(&id);
                    sessions.remove(&id);
                }
            }
            Op::Sweep => adm.sweep(now),
            Op::Wait(ms) => now += Duration::from_millis(u64::from(*ms)),
        }
        assert_eq!(adm.pending(), pending.len());
        assert_eq!(adm.sessions(), sessions.len());
        assert!(pending.len() <= max.max_pending, "pending budget exceeded");
        assert!(
            sessions.len() <= max.max_sessions,
            "session budget exceeded"
        );
        for d in 0..4 {
            let held = sessions.values().filter(|v| **v == Some(d)).count();
            assert!(
                held <= max.sessions_per_device,
                "device {d} holds {held} sessions"
            );
        }
    }
});
