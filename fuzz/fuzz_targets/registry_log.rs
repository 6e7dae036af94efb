//! The fleet registry (docs/registry.md) from the inside: the fuzzer picks a sequence of
//! operations (enroll, revoke, rename, regroup, tokens, in any order and with any devices),
//! each becomes a correctly numbered, chained and signed line, and one line or the head file
//! may then be mutated. So verification gets past the signatures into the rules each entry
//! must keep against the fleet so far; a fleet that verifies is then asked about every device
//! and token, and a revoked device must never be accepted.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::registry::entry::{line_hash, Entry, Op};
use secchan::registry::fleet::Groups;
use secchan::registry::verify::{verify, Head};
use secchan_fuzz::{Mutation, Reach};

#[derive(Debug, Arbitrary)]
enum Action {
    Enroll {
        device: u8,
        group: bool,
        token: Option<u8>,
    },
    Revoke(u8),
    Rename(u8),
    Regroup(u8, bool),
    Token {
        token: u8,
        group: bool,
        expires: u16,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    actions: Vec<Action>,
    /// Which line to mutate (after signing) and how.
    line: Option<(u8, Mutation)>,
    head: Option<Mutation>,
    now: u16,
}

fn key(kind: u8, i: u8) -> IdentityKey {
    IdentityKey::from_seed(&[kind ^ (i % 4); 32])
}

fn group(other: bool) -> String {
    if other { "barn" } else { "greenhouse" }.into()
}

fuzz_target!(|input: Input| {
    let mut r = Reach::new("registry_log");
    let server = IdentityKey::from_seed(&[0x51; 32]);
    let fp = |i: u8| key(0x10, i).public().fingerprint();
    let mut ops = vec![Op::Init {
        server: server.public(),
    }];
    for a in input.actions.iter().take(64) {
        ops.push(match a {
            Action::Enroll {
                device,
                group: g,
                token,
            } => Op::Enroll {
                device: fp(*device),
                name: format!("d{}", device % 4),
                group: group(*g),
                token: token.map(|t| key(0x20, t).public()),
            },
            Action::Revoke(d) => Op::Revoke { device: fp(*d) },
            Action::Rename(d) => Op::Rename {
                device: fp(*d),
                name: "renamed".into(),
            },
            Action::Regroup(d, g) => Op::Regroup {
                device: fp(*d),
                group: group(*g),
            },
            Action::Token {
                token,
                group: g,
                expires,
            } => Op::Token {
                id: key(0x20, *token).public(),
                group: group(*g),
                name: "t".into(),
                expires: 1_000 + u64::from(*expires),
            },
        });
    }
    let mut lines = Vec::new();
    let mut hashes = Vec::new();
    let mut prev = [0u8; 32];
    for (i, op) in ops.into_iter().enumerate() {
        let line = Entry {
            seq: i as u64 + 1,
            time: 1_000 + i as u64,
            prev,
            op,
        }
        .sign(&server);
        prev = line_hash(line.as_bytes());
        hashes.push(prev);
        lines.push(line.into_bytes());
    }
    if let Some((at, m)) = &input.line {
        let i = usize::from(*at) % lines.len();
        m.apply(&mut lines[i]);
    }
    // The log's first `n` lines with the head file recording them (possibly mutated).
    let files = |n: usize| {
        let mut head = Head {
            count: n as u64,
            hash: hashes[n - 1],
        }
        .sign(&server)
        .into_bytes();
        if let Some(m) = &input.head {
            m.apply(&mut head);
        }
        (lines[..n].concat(), head)
    };
    let (log, head) = files(lines.len());
    let verified = match verify(&log, Some(&head), Some(&server.public())) {
        Ok(v) => v,
        // An entry broke a rule: the log up to the entry before it is a fleet to ask about.
        Err(e) => {
            r.hit("refused");
            let Some(n) = e
                .entry()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|&n| n > 1 && n <= lines.len() + 1)
            else {
                return;
            };
            let (log, head) = files(n - 1);
            let Ok(v) = verify(&log, Some(&head), Some(&server.public())) else {
                return;
            };
            v
        }
    };
    r.hit("verified");
    let fleet = &verified.fleet;
    let groups = [Groups::all(), Groups::only(["greenhouse".to_string()])];
    for i in 0..4 {
        for g in &groups {
            if let Ok(device) = fleet.check(&fp(i), g) {
                r.hit("device_accepted");
                assert!(
                    device.revoked_entry.is_none(),
                    "a revoked device was accepted"
                );
            }
            let _ = fleet.check_token(&key(0x20, i).public(), g, 1_000 + u64::from(input.now));
        }
    }
});
