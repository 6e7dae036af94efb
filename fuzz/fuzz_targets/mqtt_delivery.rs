//! The MQTT delivery layer (docs/mqtt.md §3, §6): sessions in the unordered record layout
//! (epochs, key updates that may be lost or overtaken) carrying the delivery envelopes between
//! a device's outbox and a server's stream filter, through a "broker" that loses, repeats,
//! reorders and alters frames; and the topic layout's parser on topics the fuzzer writes,
//! with a round trip of the topics secchan builds. The MQTT server's event loop itself needs a
//! broker connection; this target drives the sans-IO pieces it composes.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::X25519_ONLY;
use secchan::delivery::Envelope;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::{AllowAnyDevice, Mode};
use secchan::transport::mqtt::topics::{self, Route, Topics};
use secchan_fuzz::delivery::Ends;
use secchan_fuzz::records::{Pair, Side, Step};
use secchan_fuzz::{FuzzRandom, Reach};
use std::time::{Duration, Instant};

#[derive(Debug, Arbitrary)]
enum Op {
    Record(Step),
    Push(Vec<u8>),
    SendDue,
    ResendAll,
    Wait(u16),
    Topic(String),
    BuildTopics {
        client: String,
        session: [u8; 16],
        instance: [u8; 8],
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    seed: u64,
    ops: Vec<Op>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn topic_round_trip(t: &Topics, client: &str, session: &[u8], instance: &[u8], r: &mut Reach) {
    if !topics::is_client_level(client) {
        return;
    }
    let (session, instance) = (hex(session), hex(instance));
    let up = t.up(client, &instance, &session);
    let want = Route::Up {
        client,
        instance: &instance,
        session: &session,
    };
    assert_eq!(t.parse(&up), Some(want));
    let down = t.down(client, &session, &instance);
    assert!(matches!(t.parse(&down), Some(Route::Down { .. })));
    let hello = t.hello(client, &session);
    assert!(matches!(t.parse(&hello), Some(Route::Hello { .. })));
    r.hit("topic_round_trip");
}

fuzz_target!(|input: Input| {
    let mut r = Reach::new("mqtt_delivery");
    let t = Topics::default();
    let mut scfg = ServerConfig::new(
        std::sync::Arc::new(IdentityKey::from_seed(&[0x5e; 32])),
        std::sync::Arc::new(AllowAnyDevice),
    );
    scfg.mode = Mode::Classical;
    scfg.session.ordered = false;
    let mut dcfg = DeviceConfig::default().with_suite(&X25519_ONLY);
    dcfg.session.ordered = false;
    let mut now = Instant::now();
    let mut rng = FuzzRandom::new(input.seed);
    let Ok((expect, hello)) = device::start(&dcfg, &mut rng) else {
        return;
    };
    let Ok((ef, sh)) = server::accept_hello(&scfg, &hello, &mut rng) else {
        return;
    };
    let Ok(Ok((dsession, finish))) = expect.read_server_hello(&sh).map(|a| a.finish(now)) else {
        return;
    };
    let Ok((ssession, _)) = ef.read_device_finish(&finish, now) else {
        return;
    };
    r.hit("established");
    let mut pair = Pair::new(dsession, ssession);
    let mut ends = Ends::default();
    for op in input.ops.iter().take(512) {
        match op {
            Op::Record(step) => {
                // An application message that is a valid envelope is an authenticated lie
                // (an Ack for messages never written, say): nothing is promised after one.
                if let Step::Send(_, data) = step {
                    ends.tampered |= Envelope::decode(data).is_ok();
                }
                pair.step(step, now, &mut r, &mut deliver(&mut ends, now));
            }
            Op::Push(data) => ends.push(data),
            Op::SendDue => send_due(&mut pair, &mut ends, now),
            Op::ResendAll => ends.outbox.resend_all(),
            Op::Wait(secs) => {
                now += Duration::from_secs(u64::from(*secs));
                ends.expire(now, &mut r);
            }
            Op::Topic(topic) => {
                let _ = t.parse(topic);
            }
            Op::BuildTopics {
                client,
                session,
                instance,
            } => topic_round_trip(&t, client, session, instance, &mut r),
        }
    }
    // The broker turns honest: what is held is sent again until every message is written.
    for _ in 0..4 {
        ends.outbox.resend_all();
        send_due(&mut pair, &mut ends, now);
        pair.drain(now, &mut r, &mut deliver(&mut ends, now));
    }
    ends.tampered |= pair.tampered;
    if pair.device.can_send() && pair.server.can_send() {
        ends.check_all_delivered(&mut r);
    }
});

/// The delivery layer on both ends of the session: the server writes and acknowledges, the
/// device takes acknowledgements.
fn deliver(
    ends: &mut Ends,
    now: Instant,
) -> impl FnMut(Side, &[u8], &mut Reach) -> Option<Vec<u8>> + '_ {
    move |side, message, r| match side {
        Side::Server => ends.server_receives(message, now, r),
        Side::Device => {
            ends.device_receives(message, r);
            None
        }
    }
}

/// The device sends what its outbox says is due, one envelope per Data record.
fn send_due(pair: &mut Pair, ends: &mut Ends, now: Instant) {
    for envelope in ends.outbox.due(now).unwrap_or_default() {
        let _ = pair.device.send(&envelope, now);
    }
    pair.collect();
}
