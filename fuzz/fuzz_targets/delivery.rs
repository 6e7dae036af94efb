//! The delivery layer (protocol.md §11): a device's outbox and the server's stream filter,
//! with envelopes (Message, Ack) between them lost, repeated, reordered or mutated, plus
//! `Envelope::decode` on raw bytes. Checks exactly-once: no (stream, seq) is written twice
//! while the server remembers its stream, and when nothing was mutated every message pushed is
//! written and acknowledged once the channel turns honest.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::delivery::Envelope;
use secchan_fuzz::delivery::Ends;
use secchan_fuzz::records::Fate;
use secchan_fuzz::Reach;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

#[derive(Debug, Arbitrary)]
enum Op {
    Push(Vec<u8>),
    SendDue,
    ResendAll,
    ToServer(Fate),
    ToDevice(Fate),
    Wait(u16),
    Raw(Vec<u8>),
}

fuzz_target!(|ops: Vec<Op>| {
    let mut r = Reach::new("delivery");
    let mut now = Instant::now();
    let mut ends = Ends::default();
    let (mut to_server, mut to_device) = (VecDeque::new(), VecDeque::<Vec<u8>>::new());
    for op in ops.iter().take(512) {
        match op {
            Op::Push(data) => ends.push(data),
            Op::SendDue => to_server.extend(ends.outbox.due(now).unwrap_or_default()),
            Op::ResendAll => ends.outbox.resend_all(),
            Op::ToServer(fate) => {
                for f in fate.take(&mut to_server, &mut ends.tampered) {
                    to_device.extend(ends.server_receives(&f, now, &mut r));
                }
            }
            Op::ToDevice(fate) => {
                for f in fate.take(&mut to_device, &mut ends.tampered) {
                    ends.device_receives(&f, &mut r);
                }
            }
            Op::Wait(secs) => {
                now += Duration::from_secs(u64::from(*secs));
                ends.expire(now, &mut r);
            }
            Op::Raw(bytes) => {
                let _ = Envelope::decode(bytes);
            }
        }
    }
    // The channel turns honest: a new session sends everything held again.
    for _ in 0..4 {
        ends.outbox.resend_all();
        for f in ends.outbox.due(now).unwrap_or_default() {
            if let Some(ack) = ends.server_receives(&f, now, &mut r) {
                ends.device_receives(&ack, &mut r);
            }
        }
    }
    ends.check_all_delivered(&mut r);
});
