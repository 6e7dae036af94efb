use super::*;
use crate::handshake::cookie::CookieError;
use std::time::Duration;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn limits() -> Limits {
    Limits {
        max_sessions: 3,
        max_pending: 4,
        pending_per_source: 3,
        sessions_per_source: 2,
        sessions_per_device: 2,
        cookie_pending: 100,
        cookie_rate: 100,
        source_rate: 2,
        ..Limits::default()
    }
}

/// Connects from `from` and records the handle as its name.
fn connect(
    a: &mut Admission<&'static str>,
    from: &str,
    name: &'static str,
    now: Instant,
) -> (u64, Option<&'static str>) {
    let (id, evicted) = a.connect(ip(from), now);
    a.set_handle(id, name);
    (id, evicted)
}

#[test]
fn a_full_pending_budget_gives_up_the_longest_waiting_of_the_busiest_source() {
    let t0 = Instant::now();
    let at = |ms| t0 + Duration::from_millis(ms);
    let mut a = Admission::new(limits(), t0);
    connect(&mut a, "192.0.2.9", "honest", at(0));
    connect(&mut a, "192.0.2.1", "a1", at(1));
    connect(&mut a, "192.0.2.1", "a2", at(2));
    connect(&mut a, "192.0.2.1", "a3", at(3));
    assert_eq!(a.pending(), 4);
    // The honest device waited longest, but the attacker's source holds the most.
    let (_, evicted) = connect(&mut a, "192.0.2.7", "new", at(4));
    assert_eq!(evicted, Some("a1"));
    assert_eq!(a.pending(), 4);
    assert_eq!(a.stats().evicted, 1);
    // With every source holding one, the longest waiting goes.
    let mut b = Admission::new(
        Limits {
            max_pending: 2,
            ..limits()
        },
        t0,
    );
    connect(&mut b, "192.0.2.1", "first", at(0));
    connect(&mut b, "192.0.2.2", "second", at(1));
    assert_eq!(
        connect(&mut b, "192.0.2.3", "third", at(2)).1,
        Some("first")
    );
}

#[test]
fn a_source_at_its_limit_gives_up_its_own_longest_waiting_so_a_newcomer_behind_it_gets_in() {
    let t0 = Instant::now();
    let mut a = Admission::new(limits(), t0);
    let (first, _) = connect(&mut a, "192.0.2.1", "idle1", t0);
    connect(&mut a, "192.0.2.1", "idle2", t0);
    connect(&mut a, "192.0.2.1", "idle3", t0);
    // The attacker's budget is spent; an honest device behind the same address still gets a
    // slot, and the attacker's oldest goes.
    let (honest, evicted) = connect(&mut a, "192.0.2.1", "honest", t0 + Duration::from_millis(5));
    assert_eq!(evicted, Some("idle1"));
    assert_eq!(a.stats().evicted_source, 1);
    assert_eq!(a.establish(first, None), Err(Refusal::Evicted), "given up");
    a.release(first, t0);
    assert_eq!(a.pending(), 3);
    assert_eq!(
        a.first(honest, FirstKind::Full(CookieCheck::Absent), t0),
        Verdict::Proceed
    );
    assert_eq!(a.establish(honest, None), Ok(vec![]));
    // Another source is untouched by all this.
    assert_eq!(connect(&mut a, "192.0.2.2", "other", t0).1, None);
}

#[test]
fn exempt_sources_are_not_limited_per_source_but_stay_within_the_server_budget() {
    let t0 = Instant::now();
    let mut a = Admission::new(
        Limits {
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
            ..limits()
        },
        t0,
    );
    for name in ["n1", "n2", "n3", "n4"] {
        assert_eq!(connect(&mut a, "192.0.2.1", name, t0).1, None);
    }
    assert_eq!(
        connect(&mut a, "192.0.2.1", "n5", t0).1,
        Some("n1"),
        "max_pending"
    );
    assert_eq!(a.stats().evicted_source, 0);
    // Sessions too: three from one exempt address, up to the server's three.
    let ids: Vec<u64> = (0..4).map(|_| a.connect(ip("192.0.2.1"), t0).0).collect();
    for (i, id) in ids.iter().enumerate() {
        let device = [i as u8; 32];
        let r = a.establish(*id, Some(device));
        assert_eq!(r.is_ok(), i < 3, "{i}: {r:?}");
    }
    assert_eq!(a.stats().sessions_refused, 1);
}

#[test]
fn established_sessions_are_never_given_up_for_pending_handshakes() {
    let t0 = Instant::now();
    let mut a = Admission::new(limits(), t0);
    for (i, from) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
        let (id, _) = connect(&mut a, from, "session", t0);
        a.establish(id, Some([i as u8; 32])).unwrap();
    }
    assert_eq!(a.sessions(), 3);
    // The pending budget is its own: a flood of connections never touches the sessions.
    for _ in 0..20 {
        let (_, evicted) = connect(&mut a, "198.51.100.1", "flood", t0);
        assert_ne!(evicted, Some("session"));
    }
    assert_eq!(a.sessions(), 3);
    // No room for a fourth session: refused, the three kept.
    let (late, _) = connect(&mut a, "192.0.2.4", "late", t0);
    assert_eq!(a.establish(late, Some([9; 32])), Err(Refusal::Sessions));
    assert_eq!(a.sessions(), 3);
    assert_eq!(a.stats().sessions_refused, 1);
}

#[test]
fn a_source_and_a_device_identity_have_session_caps_and_a_newer_session_replaces_the_oldest() {
    let t0 = Instant::now();
    let mut a = Admission::new(
        Limits {
            max_sessions: 10,
            ..limits()
        },
        t0,
    );
    let stolen = [7; 32];
    let (s1, _) = connect(&mut a, "192.0.2.1", "thief1", t0);
    let (s2, _) = connect(&mut a, "192.0.2.2", "thief2", t0);
    a.establish(s1, Some(stolen)).unwrap();
    a.establish(s2, Some(stolen)).unwrap();
    // A third session of one identity replaces its oldest, wherever it came from.
    let (s3, _) = connect(&mut a, "192.0.2.3", "device", t0);
    assert_eq!(a.establish(s3, Some(stolen)), Ok(vec!["thief1"]));
    assert_eq!((a.sessions(), a.stats().sessions_replaced), (2, 1));
    a.release(s1, t0);
    assert_eq!(
        a.sessions(),
        2,
        "releasing a replaced session changes nothing"
    );
    // Two sessions per source: the third from 192.0.2.3 is refused; anonymous devices have
    // no identity cap.
    let (x, _) = connect(&mut a, "192.0.2.3", "x", t0);
    a.establish(x, None).unwrap();
    let (y, _) = connect(&mut a, "192.0.2.3", "y", t0);
    assert_eq!(a.establish(y, None), Err(Refusal::SourceSessions));
    // Unless the identity's replacement frees one there: the identity's oldest session is
    // 192.0.2.2's until it ends, then 192.0.2.3's.
    let (z, _) = connect(&mut a, "192.0.2.3", "z", t0);
    assert_eq!(a.establish(z, Some(stolen)), Err(Refusal::SourceSessions));
    a.release(s2, t0);
    let (v, _) = connect(&mut a, "192.0.2.2", "v", t0);
    a.establish(v, Some(stolen)).unwrap();
    assert_eq!(a.establish(z, Some(stolen)), Ok(vec!["device"]));
}

#[test]
fn under_load_hellos_get_cookies_and_cookies_get_handshakes_within_their_source_rate() {
    let t0 = Instant::now();
    let mut a = Admission::new(
        Limits {
            cookie_pending: 2,
            ..limits()
        },
        t0,
    );
    let full = |c| FirstKind::Full(c);
    // Idle connections put no load on the server, nor does one answered handshake: one round
    // trip, cookie or not.
    let (h, _) = connect(&mut a, "192.0.2.1", "h", t0);
    connect(&mut a, "192.0.2.3", "idle", t0);
    connect(&mut a, "192.0.2.4", "idle", t0);
    assert!(!a.under_load(t0));
    assert_eq!(a.first(h, full(CookieCheck::Absent), t0), Verdict::Proceed);
    assert!(!a.under_load(t0));
    let refused = CookieCheck::Refused(CookieError::Invalid);
    let (flood, _) = connect(&mut a, "192.0.2.1", "f", t0);
    assert_eq!(a.first(flood, full(refused), t0), Verdict::Proceed);
    assert!(
        a.under_load(t0),
        "two answered handshakes wait for their DeviceFinish"
    );
    assert_eq!(
        a.first(flood, full(CookieCheck::Absent), t0),
        Verdict::Cookie
    );
    assert_eq!(a.first(flood, full(refused), t0), Verdict::Cookie);
    // Valid cookies: two handshakes a second for the source, then busy; another source has
    // its own rate; resumptions never need a cookie.
    assert_eq!(
        a.first(flood, full(CookieCheck::Valid), t0),
        Verdict::Proceed
    );
    assert_eq!(
        a.first(flood, full(CookieCheck::Valid), t0),
        Verdict::Proceed
    );
    assert_eq!(a.first(flood, full(CookieCheck::Valid), t0), Verdict::Busy);
    assert_eq!(a.first(flood, FirstKind::Other, t0), Verdict::Proceed);
    let (other, _) = connect(&mut a, "192.0.2.2", "o", t0);
    assert_eq!(
        a.first(other, full(CookieCheck::Valid), t0),
        Verdict::Proceed
    );
    let later = t0 + Duration::from_millis(500);
    assert_eq!(
        a.first(flood, full(CookieCheck::Valid), later),
        Verdict::Proceed,
        "refilled"
    );
    let s = a.stats();
    assert_eq!(
        (
            s.cookies_sent,
            s.cookies_refused,
            s.busy,
            s.full_handshakes,
            s.other_first
        ),
        (2, 2, 1, 6, 1)
    );
    // Answered handshakes that end (established, or given up) no longer count.
    a.release(h, later);
    a.release(other, later);
    assert!(!a.under_load(later));
}

#[test]
fn full_handshakes_faster_than_the_cpu_budget_put_the_server_under_load() {
    let t0 = Instant::now();
    let mut a = Admission::new(
        Limits {
            cookie_rate: 3,
            ..limits()
        },
        t0,
    );
    let (id, _) = connect(&mut a, "192.0.2.1", "x", t0);
    for _ in 0..3 {
        assert_eq!(
            a.first(id, FirstKind::Full(CookieCheck::Absent), t0),
            Verdict::Proceed
        );
    }
    assert!(a.under_load(t0));
    assert_eq!(
        a.first(id, FirstKind::Full(CookieCheck::Absent), t0),
        Verdict::Cookie
    );
    // A second later the budget has refilled.
    let later = t0 + Duration::from_secs(1);
    assert!(!a.under_load(later));
    assert_eq!(
        a.first(id, FirstKind::Full(CookieCheck::Absent), later),
        Verdict::Proceed
    );
}

#[test]
fn idle_sources_are_forgotten_and_the_summary_names_what_grew() {
    let t0 = Instant::now();
    let mut a = Admission::new(
        Limits {
            cookie_pending: 0,
            ..limits()
        },
        t0,
    );
    let before = a.stats();
    assert_eq!(before.summary_since(&before), None);
    let (id, _) = connect(&mut a, "192.0.2.1", "x", t0);
    assert_eq!(
        a.first(id, FirstKind::Full(CookieCheck::Absent), t0),
        Verdict::Cookie
    );
    assert_eq!(
        a.first(id, FirstKind::Full(CookieCheck::Valid), t0),
        Verdict::Proceed
    );
    a.record(Outcome::HelloTimeout);
    a.release(id, t0);
    assert_eq!(a.sources.len(), 1, "its rate bucket is refilling");
    a.sweep(t0 + Duration::from_secs(1));
    assert!(a.sources.is_empty());
    assert_eq!(
        a.stats().summary_since(&before).as_deref(),
        Some("1 hello timeouts, 1 cookies sent")
    );
}
