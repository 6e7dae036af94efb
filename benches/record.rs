//! Record sealing and opening per AEAD at 64 B, 1 KiB and 16 KiB, beside the bare
//! `aws-lc-rs` AEAD call they wrap (and the same call in `ring`, the backend it replaced), and
//! the replay window's operations.
//!
//! Run: `cargo bench --bench record`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use secchan::crypto::aead::AeadId;
use secchan::msgs::FrameType;
use secchan::record::replay::{ReplayWindow, DEFAULT_WINDOW};
use secchan::record::{KeyUpdatePolicy, Opener, Sealer};
use std::hint::black_box;
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

const SIZES: [usize; 3] = [64, 1024, 16 * 1024];

fn pair(aead: AeadId) -> (Sealer, Opener) {
    let secret = Zeroizing::new([42u8; 32]);
    (
        Sealer::new(
            aead,
            secret.clone(),
            KeyUpdatePolicy::default(),
            false,
            Instant::now(),
        ),
        // Unordered, so the opener accepts the same counter sealed again below.
        Opener::new(aead, secret, DEFAULT_WINDOW, false),
    )
}

/// The bare AEAD seal of `$krate` (aws-lc-rs and ring share ring's API).
macro_rules! bare_seal {
    ($g:expr, $krate:ident, $name:literal, $aead:expr, $size:expr, $payload:expr) => {{
        use $krate::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
        let algorithm = match $aead {
            AeadId::Aes256Gcm => &AES_256_GCM,
            AeadId::ChaCha20Poly1305 => &CHACHA20_POLY1305,
            other => panic!("no {other:?} in this benchmark"),
        };
        let key = LessSafeKey::new(UnboundKey::new(algorithm, &[9u8; 32]).unwrap());
        let mut buf = $payload.to_vec();
        $g.bench_function(format!("bare {} seal {} B", $name, $size), |b| {
            b.iter(|| {
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key([0; 12]),
                        Aad::from([0u8; 3]),
                        &mut buf,
                    )
                    .unwrap();
                black_box(tag.as_ref());
            })
        });
    }};
}

fn records(c: &mut Criterion) {
    for aead in [AeadId::Aes256Gcm, AeadId::ChaCha20Poly1305] {
        let mut g = c.benchmark_group(format!("record {aead}"));
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            let payload = vec![7u8; size];
            let (mut sealer, mut opener) = pair(aead);
            let mut out = Vec::with_capacity(size + 64);
            g.bench_function(format!("seal {size} B"), |b| {
                b.iter(|| {
                    out.clear();
                    sealer.seal(FrameType::Data, &payload, &mut out).unwrap();
                    black_box(&out);
                })
            });
            // Each open needs a fresh record (the window refuses a repeat): seal in setup.
            let (mut sealer, _) = pair(aead);
            g.bench_function(format!("open {size} B"), |b| {
                b.iter_batched_ref(
                    || {
                        let mut rec = Vec::with_capacity(size + 64);
                        sealer.seal(FrameType::Data, &payload, &mut rec).unwrap();
                        rec
                    },
                    |rec| black_box(opener.open(rec).unwrap()),
                    BatchSize::SmallInput,
                )
            });
            bare_seal!(g, aws_lc_rs, "aws-lc-rs", aead, size, &payload);
            bare_seal!(g, ring, "ring", aead, size, &payload);
        }
        g.finish();
    }
}

fn replay_window(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay window");
    g.throughput(Throughput::Elements(1));
    let mut w = ReplayWindow::new(DEFAULT_WINDOW);
    let mut next = 0u64;
    g.bench_function("check + commit, in order", |b| {
        b.iter(|| {
            w.check(next).unwrap();
            w.commit(next);
            next += 1;
        })
    });
    let mut w = ReplayWindow::new(DEFAULT_WINDOW);
    for i in 0..(DEFAULT_WINDOW as u64 * 2) {
        w.commit(i);
    }
    let old = DEFAULT_WINDOW as u64 + 5;
    g.bench_function("check, duplicate inside the window", |b| {
        b.iter(|| black_box(w.check(black_box(old)).is_err()))
    });
    g.bench_function("commit, jump of 10,000", |b| {
        b.iter_batched_ref(
            || {
                let mut w = ReplayWindow::new(DEFAULT_WINDOW);
                w.commit(0);
                w
            },
            |w| w.commit(10_000),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));
    targets = records, replay_window
);
criterion_main!(benches);
