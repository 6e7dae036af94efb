//! The relay (protocol.md §11.6–§11.8): the server's hub and three device ends joined as a
//! server's sessions join them, sans IO, with the envelopes between each end and the hub lost,
//! repeated, reordered or mutated, devices reconnecting, time passing, raw Relay envelopes
//! handed to the hub and raw envelopes to the ends, under each relay policy.
//!
//! Devices a and b pin each other's keys and write to each other; c (another group) writes
//! to a, which does not trust its key. Checks: no device ever prints an end-to-end message its
//! peer did not send, none is printed twice, and when nothing was mutated or injected, every
//! message a sent to b is printed by b once the network turns honest (unless the relay refused
//! or a gave up on b, which ends a).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use secchan::crypto::identity::IdentityKey;
use secchan::delivery::Envelope;
use secchan::handshake::device::DeviceConfig;
use secchan::service::device_end::{json_line, DeviceEnd, EndError};
use secchan::service::hub::{FromDevice, Hub, RelayPolicy};
use secchan::service::peer::{PeerTrust, Peers, Phase};
use secchan_fuzz::records::Fate;
use secchan_fuzz::{FuzzRandom, Reach};
use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NAMES: [&str; 3] = ["a", "b", "c"];
const SEEDS: [u8; 3] = [0xa1, 0xb2, 0xc3];
/// Who each device writes to, and whose key it pins.
const TO: [usize; 3] = [1, 0, 0];
const PINS: [&[usize]; 3] = [&[1], &[0], &[0]];

#[derive(Debug, Arbitrary)]
enum Op {
    /// Device `dev` sends a message to its peer.
    Send(u8, Vec<u8>),
    /// The server sends `dev` a downlink message.
    Downlink(u8, Vec<u8>),
    /// Envelopes `dev` has due go on the wire; so do the hub's for `dev`.
    Pump(u8),
    /// The next envelope from `dev` to the hub meets its fate.
    ToHub(u8, Fate),
    /// The next envelope from the hub to `dev` meets its fate.
    ToDevice(u8, Fate),
    /// `dev`'s session with the server ends and a new one starts (what was in flight is lost).
    Reconnect(u8),
    /// `dev` has no session for a while.
    Detach(u8),
    /// Time passes; every end's timers run.
    Wait(u8),
    /// A Relay envelope the fuzzer wrote, as if `dev` had sent it.
    RawRelay {
        dev: u8,
        seq: u8,
        base: u8,
        peer: String,
        initiator: bool,
        frame: Vec<u8>,
    },
    /// Bytes the fuzzer wrote, as if the hub had sent them to `dev`.
    RawToDevice(u8, Vec<u8>),
}

/// A shared buffer standing in for a device's stdout.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);

impl Write for Out {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    fn lines(&self) -> Vec<String> {
        let bytes = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        String::from_utf8(bytes)
            .expect("a device printed a line that is not UTF-8")
            .lines()
            .map(str::to_string)
            .collect()
    }
}

struct Dev {
    end: DeviceEnd,
    out: Out,
    /// Envelopes from the end to the hub, and from the hub to the end.
    up: VecDeque<Vec<u8>>,
    down: VecDeque<Vec<u8>>,
    /// Why the device stopped (it takes no further part).
    stopped: Option<String>,
    session: u64,
}

fn key(i: usize) -> Arc<IdentityKey> {
    Arc::new(IdentityKey::from_seed(&[SEEDS[i]; 32]))
}

fn group(i: usize) -> Option<String> {
    Some(if i == 2 { "office" } else { "greenhouse" }.to_string())
}

struct World {
    hub: Hub,
    devs: Vec<Dev>,
    fingerprints: Vec<String>,
    /// The lines each device may print for an end-to-end message, with how often it did.
    expected: Vec<HashMap<String, usize>>,
    /// Messages a sent to b (their lines in b's output).
    a_to_b: Vec<String>,
    now: Instant,
    counter: u32,
    tampered: bool,
}

impl World {
    fn new(policy: RelayPolicy, seed: u64) -> Self {
        let hub = Hub::new(policy);
        let fingerprints: Vec<String> = (0..3).map(|i| key(i).public().fingerprint()).collect();
        let devs = (0..3)
            .map(|i| {
                let trust = PeerTrust {
                    pins: PINS[i]
                        .iter()
                        .map(|p| (NAMES[*p].to_string(), fingerprints[*p].clone()))
                        .collect(),
                    ..PeerTrust::default()
                };
                let peers = Peers::new(key(i), DeviceConfig::default(), trust);
                let out = Out::default();
                let end = DeviceEnd::new(
                    Some(peers),
                    Some(NAMES[TO[i]].to_string()),
                    Box::new(out.clone()),
                )
                .with_random(Box::new(FuzzRandom::new(seed ^ u64::from(SEEDS[i]))));
                Dev {
                    end,
                    out,
                    up: VecDeque::new(),
                    down: VecDeque::new(),
                    stopped: None,
                    session: 0,
                }
            })
            .collect();
        let mut w = Self {
            hub,
            devs,
            fingerprints,
            expected: vec![HashMap::new(); 3],
            a_to_b: Vec::new(),
            now: Instant::now(),
            counter: 0,
            tampered: false,
        };
        for i in 0..3 {
            w.attach(i);
        }
        w
    }

    fn attach(&mut self, i: usize) {
        let d = &mut self.devs[i];
        d.up.clear();
        d.down.clear();
        d.session = self
            .hub
            .attach(NAMES[i], Some(&key(i).public()), group(i), Vec::new())
            .id;
        d.end.on_session("SHA256:server".into());
    }

    fn stop(&mut self, i: usize, e: EndError, r: &mut Reach) {
        r.hit(match e {
            EndError::Refused { .. } => "refused",
            EndError::PeerFailed { .. } => "peer_failed",
            _ => "stopped",
        });
        self.devs[i].stopped = Some(e.to_string());
    }

    fn send(&mut self, i: usize, data: &[u8], r: &mut Reach) {
        self.counter += 1;
        let mut msg = self.counter.to_be_bytes().to_vec();
        msg.extend_from_slice(data);
        let to = TO[i];
        let line = json_line(NAMES[i], &self.fingerprints[i], true, &msg);
        let now = self.now;
        match self.devs[i].end.send_to_peer(msg, now) {
            Ok(()) => {
                self.expected[to].insert(line.clone(), 0);
                if i == 0 {
                    self.a_to_b.push(line);
                }
            }
            Err(e) => self.stop(i, e, r),
        }
    }

    fn pump(&mut self, i: usize) {
        let now = self.now;
        let d = &mut self.devs[i];
        d.up.extend(d.end.due(now));
        d.down.extend(self.hub.due(NAMES[i], now));
    }

    /// The hub takes one envelope from device `i`, as a server's session hands it over.
    fn hub_receives(&mut self, i: usize, bytes: &[u8], r: &mut Reach) {
        let Ok(envelope) = Envelope::decode(bytes) else {
            return;
        };
        let ack = matches!(envelope, Envelope::Ack { .. });
        match self.hub.from_device(NAMES[i], envelope) {
            FromDevice::Reply(reply) => {
                r.hit("relayed");
                self.devs[i].down.push_back(reply);
            }
            FromDevice::Done if ack => r.hit("ack"),
            _ => {}
        }
    }

    fn device_receives(&mut self, i: usize, bytes: &[u8], r: &mut Reach) {
        let Ok(envelope) = Envelope::decode(bytes) else {
            return;
        };
        let now = self.now;
        if let Err(e) = self.devs[i].end.on_envelope(envelope, now) {
            self.stop(i, e, r);
        }
    }

    fn wait(&mut self, secs: u8, r: &mut Reach) {
        self.now += Duration::from_secs(u64::from(secs));
        for i in 0..3 {
            if self.devs[i].stopped.is_none() {
                let now = self.now;
                if let Err(e) = self.devs[i].end.tick(now) {
                    self.stop(i, e, r);
                }
            }
        }
    }

    /// Every envelope in flight delivered, in order, until nothing moves.
    fn settle(&mut self, r: &mut Reach) {
        for _ in 0..64 {
            let mut moved = false;
            for i in 0..3 {
                if self.devs[i].stopped.is_some() {
                    continue;
                }
                self.pump(i);
                while let Some(b) = self.devs[i].up.pop_front() {
                    moved = true;
                    self.hub_receives(i, &b, r);
                }
                while let Some(b) = self.devs[i].down.pop_front() {
                    moved = true;
                    self.device_receives(i, &b, r);
                }
            }
            if !moved {
                return;
            }
        }
    }

    /// Every end-to-end line each device printed is one its peer sent, printed once.
    fn check_lines(&mut self, r: &mut Reach) {
        for (name, (dev, expected)) in NAMES.iter().zip(self.devs.iter().zip(&mut self.expected)) {
            for line in dev.out.lines() {
                if line.contains("\"from\":\"server\"") {
                    r.hit("downlink");
                    continue;
                }
                let Some(seen) = expected.get_mut(&line) else {
                    panic!("{name} printed an end-to-end message nobody sent: {line}");
                };
                *seen += 1;
                assert_eq!(*seen, 1, "{name} printed twice: {line}");
                r.hit("e2e_message");
            }
        }
        if self.devs.iter().any(|d| {
            d.end
                .stats()
                .iter()
                .any(|s| s.phase == Phase::Open && s.records_received > 0)
        }) {
            r.hit("e2e_established");
        }
    }
}

fuzz_target!(|input: (u8, u64, Vec<Op>)| {
    let (policy, seed, ops) = input;
    let mut r = Reach::new("relay");
    let policy = match policy % 4 {
        0 => RelayPolicy::Off,
        1 => RelayPolicy::SameGroup,
        _ => RelayPolicy::Any,
    };
    let mut w = World::new(policy, seed);
    let dev = |d: &u8| usize::from(*d) % 3;
    for op in ops.iter().take(256) {
        match op {
            Op::Send(d, data) if w.devs[dev(d)].stopped.is_none() => {
                w.send(dev(d), &data[..data.len().min(256)], &mut r)
            }
            Op::Downlink(d, data) => {
                let _ = w.hub.downlink(NAMES[dev(d)], data.clone());
            }
            Op::Pump(d) => w.pump(dev(d)),
            Op::ToHub(d, fate) => {
                let i = dev(d);
                for b in fate.take(&mut w.devs[i].up, &mut w.tampered) {
                    w.hub_receives(i, &b, &mut r);
                }
            }
            Op::ToDevice(d, fate) if w.devs[dev(d)].stopped.is_none() => {
                let i = dev(d);
                for b in fate.take(&mut w.devs[i].down, &mut w.tampered) {
                    w.device_receives(i, &b, &mut r);
                }
            }
            Op::Reconnect(d) => w.attach(dev(d)),
            Op::Detach(d) => {
                let i = dev(d);
                w.hub.detach(NAMES[i], w.devs[i].session);
                w.devs[i].up.clear();
                w.devs[i].down.clear();
            }
            Op::Wait(secs) => w.wait(*secs, &mut r),
            Op::RawRelay {
                dev: d,
                seq,
                base,
                peer,
                initiator,
                frame,
            } => {
                w.tampered = true;
                let stream = [0x5a; 8];
                let _ = w.hub.relay(
                    NAMES[dev(d)],
                    (stream, u64::from(*seq), u64::from(*base)),
                    peer,
                    *initiator,
                    frame,
                );
            }
            Op::RawToDevice(d, bytes) if w.devs[dev(d)].stopped.is_none() => {
                w.tampered = true;
                w.device_receives(dev(d), bytes, &mut r);
            }
            Op::Send(..) | Op::ToDevice(..) | Op::RawToDevice(..) => {}
        }
        w.check_lines(&mut r);
        for d in &w.devs {
            d.out.0.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
    }
    // The network turns honest: every device has a session, everything in flight arrives,
    // and the ends' timers run until nothing is left to deliver.
    for i in 0..3 {
        w.attach(i);
    }
    for _ in 0..12 {
        w.settle(&mut r);
        w.wait(10, &mut r);
    }
    w.settle(&mut r);
    w.check_lines(&mut r);
    let clean = !w.tampered && policy != RelayPolicy::Off;
    if clean && w.devs[0].stopped.is_none() && w.devs[1].stopped.is_none() {
        for line in &w.a_to_b {
            assert_eq!(
                w.expected[1].get(line),
                Some(&1),
                "b never printed a message a sent it (a: {:?}): {line}",
                w.devs[0].end.stats()
            );
        }
        if !w.a_to_b.is_empty() {
            r.hit("all_delivered");
        }
    }
});
