//! Full in-memory handshakes per suite, and each primitive alone, so the handshake's distance
//! from the sum of its primitives is visible (docs/benchmarks.md).
//!
//! Run: `cargo bench --features kyber-r3 --bench handshake` (without the feature, the Kyber768
//! round 3 rows are left out); resumption beside the full hybrid handshake alone:
//! `cargo bench --bench handshake -- 'X25519MLKEM768/(full|resumption)'`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use secchan::crypto::identity::IdentityKey;
#[cfg(feature = "kyber-r3")]
use secchan::crypto::kem::Kyber768R3;
use secchan::crypto::kem::{MlKem768, PqKem, Suite, X25519Ephemeral, ALL_SUITES, X25519_MLKEM768};
use secchan::crypto::random::OsRandom;
use secchan::handshake::device::{self, DeviceConfig};
use secchan::handshake::resume::{self, Ticket};
use secchan::handshake::server::FirstReply;
use secchan::handshake::server::{self, ServerConfig};
use secchan::handshake::ticket::{Resumption, DEFAULT_LIFETIME};
use secchan::handshake::{AllowAnyDevice, Mode};
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

fn configs(suite: &'static Suite) -> (DeviceConfig, ServerConfig) {
    let server_key = Arc::new(IdentityKey::from_seed(&[1; 32]));
    let device_key = Arc::new(IdentityKey::from_seed(&[2; 32]));
    let mut server = ServerConfig::new(server_key, Arc::new(AllowAnyDevice));
    server.mode = Mode::Any;
    let device = DeviceConfig::default()
        .with_suite(suite)
        .with_identity(device_key);
    (device, server)
}

/// One complete mutual-auth handshake, both sides, no I/O.
fn handshake(device: &DeviceConfig, server: &ServerConfig) {
    let now = Instant::now();
    let (expect, hello) = device::start(device, &mut OsRandom).unwrap();
    let (expect_finish, reply) = server::accept_hello(server, &hello, &mut OsRandom).unwrap();
    let authed = expect.read_server_hello(&reply).unwrap();
    let (session, finish) = authed.finish(now).unwrap();
    let (peer_session, _) = expect_finish.read_device_finish(&finish, now).unwrap();
    black_box((session, peer_session));
}

fn full_handshakes(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    for suite in ALL_SUITES {
        let (device, server) = configs(suite);
        g.bench_function(format!("{}/both sides", suite.name), |b| {
            b.iter(|| handshake(&device, &server))
        });
        // Each step alone, its inputs prepared outside the timing: the device-side latency's
        // critical path is start + accept_hello + read_server_hello/finish.
        g.bench_function(format!("{}/1 device start", suite.name), |b| {
            b.iter(|| black_box(device::start(&device, &mut OsRandom).unwrap()))
        });
        g.bench_function(format!("{}/2 server accept_hello", suite.name), |b| {
            b.iter_batched(
                || device::start(&device, &mut OsRandom).unwrap().1,
                |hello| black_box(server::accept_hello(&server, &hello, &mut OsRandom).unwrap()),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(
            format!("{}/3 device read_server_hello + finish", suite.name),
            |b| {
                b.iter_batched(
                    || {
                        let (expect, hello) = device::start(&device, &mut OsRandom).unwrap();
                        let (_, reply) =
                            server::accept_hello(&server, &hello, &mut OsRandom).unwrap();
                        (expect, reply)
                    },
                    |(expect, reply)| {
                        let authed = expect.read_server_hello(&reply).unwrap();
                        black_box(authed.finish(Instant::now()).unwrap())
                    },
                    BatchSize::SmallInput,
                )
            },
        );
        g.bench_function(format!("{}/4 server read_device_finish", suite.name), |b| {
            b.iter_batched(
                || {
                    let (expect, hello) = device::start(&device, &mut OsRandom).unwrap();
                    let (finish_state, reply) =
                        server::accept_hello(&server, &hello, &mut OsRandom).unwrap();
                    let authed = expect.read_server_hello(&reply).unwrap();
                    (finish_state, authed.finish(Instant::now()).unwrap().1)
                },
                |(finish_state, finish)| {
                    black_box(
                        finish_state
                            .read_device_finish(&finish, Instant::now())
                            .unwrap(),
                    )
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

/// A full handshake (untimed) whose server issues a ticket the device takes.
fn ticket(device: &DeviceConfig, server: &ServerConfig) -> Ticket {
    let now = Instant::now();
    let (expect, hello) = device::start(device, &mut OsRandom).unwrap();
    let (expect_finish, reply) = server::accept_hello(server, &hello, &mut OsRandom).unwrap();
    let (mut session, finish) = expect
        .read_server_hello(&reply)
        .unwrap()
        .finish(now)
        .unwrap();
    let (mut peer, _) = expect_finish.read_device_finish(&finish, now).unwrap();
    let resumption = server.resumption.as_deref().unwrap();
    peer.issue_ticket(resumption, SystemTime::now()).unwrap();
    let mut record = peer.poll_transmit().unwrap();
    session.handle_frame(&mut record, now).unwrap();
    session.take_ticket(SystemTime::now()).unwrap()
}

/// One resumption, both sides, no I/O (protocol.md §6.3, §6.4).
fn resumption(device: &DeviceConfig, server: &ServerConfig, ticket: &Ticket) {
    let now = Instant::now();
    let (expect, hello) = resume::start(device, ticket, &mut OsRandom).unwrap();
    let first = server::accept_first(server, &hello, &mut OsRandom, now, SystemTime::now());
    let Ok(FirstReply::Resumed(established, reply)) = first else {
        panic!("the ticket resumes");
    };
    black_box((expect.read_reply(&reply, now).unwrap(), established));
}

/// Resumption beside the full hybrid handshake it replaces: each iteration uses a fresh
/// ticket (a ticket is accepted once), made outside the timing.
fn resumptions(c: &mut Criterion) {
    let mut g = c.benchmark_group("handshake");
    let (device, mut server) = configs(&X25519_MLKEM768);
    let r = Resumption::random(DEFAULT_LIFETIME, SystemTime::now(), &mut OsRandom).unwrap();
    server.resumption = Some(Arc::new(r.with_replay_capacity(usize::MAX)));
    g.bench_function("X25519MLKEM768/full both sides", |b| {
        b.iter(|| handshake(&device, &server))
    });
    g.bench_function("X25519MLKEM768/resumption both sides", |b| {
        b.iter_batched(
            || ticket(&device, &server),
            |t| resumption(&device, &server, &t),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn kem_primitives(c: &mut Criterion) {
    let mut g = c.benchmark_group("primitive");
    let kems: &[(&str, &dyn PqKem)] = &[
        ("ML-KEM-768", &MlKem768),
        #[cfg(feature = "kyber-r3")]
        ("Kyber768r3", &Kyber768R3),
    ];
    for &(name, kem) in kems {
        g.bench_function(format!("{name} keygen"), |b| {
            b.iter(|| black_box(kem.generate(&mut OsRandom).unwrap()))
        });
        let (dk, ek) = kem.generate(&mut OsRandom).unwrap();
        g.bench_function(format!("{name} encaps"), |b| {
            b.iter(|| black_box(kem.encapsulate(&ek, &mut OsRandom).unwrap()))
        });
        let (ct, _) = kem.encapsulate(&ek, &mut OsRandom).unwrap();
        g.bench_function(format!("{name} decaps"), |b| {
            b.iter(|| black_box(dk.decapsulate(&ct).unwrap()))
        });
    }
    g.bench_function("X25519 keygen", |b| {
        b.iter(|| black_box(X25519Ephemeral::generate(&mut OsRandom).unwrap()))
    });
    let a = X25519Ephemeral::generate(&mut OsRandom).unwrap();
    let peer = *X25519Ephemeral::generate(&mut OsRandom).unwrap().public();
    g.bench_function("X25519 DH", |b| {
        b.iter(|| black_box(a.agree(&peer).unwrap()))
    });
    let id = IdentityKey::from_seed(&[3; 32]);
    let msg = [7u8; 32];
    g.bench_function("Ed25519 sign", |b| {
        b.iter(|| black_box(id.sign(b"ctx", &msg)))
    });
    let sig = id.sign(b"ctx", &msg);
    let public = id.public();
    g.bench_function("Ed25519 verify", |b| {
        b.iter(|| public.verify(b"ctx", &msg, &sig).unwrap())
    });
    let mut buf = [0u8; 64];
    g.bench_function("OS random 64 B", |b| {
        b.iter(|| {
            secchan::crypto::random::Random::fill(&mut OsRandom, &mut buf).unwrap();
            black_box(&buf);
        })
    });
    g.finish();
}

/// The same primitives from aws-lc-rs (the provider the rustls comparison uses), to show
/// what faster implementations would save (docs/benchmarks.md).
fn reference_primitives(c: &mut Criterion) {
    use aws_lc_rs::{agreement, kem, signature};
    use signature::KeyPair as _;
    let mut g = c.benchmark_group("reference aws-lc-rs");
    let dk = kem::DecapsulationKey::generate(&kem::ML_KEM_768).unwrap();
    let ek = dk.encapsulation_key().unwrap();
    let (ct, _) = ek.encapsulate().unwrap();
    g.bench_function("ML-KEM-768 keygen", |b| {
        b.iter(|| black_box(kem::DecapsulationKey::generate(&kem::ML_KEM_768).unwrap()))
    });
    g.bench_function("ML-KEM-768 encaps", |b| {
        b.iter(|| black_box(ek.encapsulate().unwrap()))
    });
    g.bench_function("ML-KEM-768 decaps", |b| {
        b.iter(|| black_box(dk.decapsulate(ct.as_ref().into()).unwrap()))
    });
    g.bench_function("X25519 keygen", |b| {
        b.iter(|| {
            let k = agreement::PrivateKey::generate(&agreement::X25519).unwrap();
            black_box(k.compute_public_key().unwrap())
        })
    });
    let ours = agreement::PrivateKey::generate(&agreement::X25519).unwrap();
    let peer = agreement::PrivateKey::generate(&agreement::X25519)
        .unwrap()
        .compute_public_key()
        .unwrap();
    g.bench_function("X25519 DH", |b| {
        b.iter(|| {
            agreement::agree(
                &ours,
                agreement::UnparsedPublicKey::new(&agreement::X25519, peer.as_ref()),
                (),
                |k| Ok(black_box(k.len())),
            )
            .unwrap()
        })
    });
    let pair = signature::Ed25519KeyPair::from_seed_unchecked(&[3; 32]).unwrap();
    let msg = [7u8; 60];
    g.bench_function("Ed25519 sign", |b| b.iter(|| black_box(pair.sign(&msg))));
    let sig = pair.sign(&msg);
    let public =
        signature::UnparsedPublicKey::new(&signature::ED25519, pair.public_key().as_ref().to_vec());
    g.bench_function("Ed25519 verify", |b| {
        b.iter(|| public.verify(&msg, sig.as_ref()).unwrap())
    });
    g.finish();
}

criterion_group!(
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(300))
        .measurement_time(std::time::Duration::from_secs(1))
        .sample_size(30);
    targets = kem_primitives, reference_primitives, full_handshakes, resumptions
);
criterion_main!(benches);
