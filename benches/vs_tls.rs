//! secchan beside rustls TLS 1.3 (aws-lc-rs provider), measured in the same run on loopback:
//! handshake latency (new TCP connection each, TCP_NODELAY, until the client/device side is
//! done), server capacity with 8 concurrent clients, and bulk throughput in 16 KiB writes, plus
//! raw TCP as the floor. TLS uses one self-signed ECDSA P-256 certificate, TLS 1.3 only,
//! TLS_AES_256_GCM_SHA384, tickets off and exactly one key-exchange group offered.
//!
//! Run: `cargo bench --bench vs_tls`. docs/benchmarks.md reads the ratios off its output.
//!
//! The in-process secchan server and device are `secchan bench`'s own (src/bench), which is
//! part of the binary, not of the library: this benchmark compiles that module beside the
//! library, whose modules it re-exports at its root so the module's `crate::` paths resolve.

pub use secchan::*;

#[allow(dead_code, unused_imports)]
#[path = "../src/bench/mod.rs"]
mod bench;

use bench::server::ECHO_MARKER;
use bench::{BenchServer, Target};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use rustls::crypto::aws_lc_rs::{self as provider, kx_group};
use rustls::crypto::SupportedKxGroup;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use secchan::crypto::aead::AeadId;
use secchan::crypto::identity::IdentityKey;
use secchan::crypto::kem::{Suite, X25519_MLKEM768, X25519_ONLY};
use secchan::crypto::random::OsRandom;
use secchan::trust::Pinned;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Concurrent clients in the capacity runs.
const DEVICES: usize = 8;
/// Bytes per bulk iteration.
const BULK: usize = 32 << 20;
/// Application write size in the bulk runs.
const CHUNK: usize = 16 * 1024;

fn device_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .enable_all()
        .build()
        .expect("runtime")
}

/// A stream that counts the bytes through it (TLS handshake bytes on the wire).
struct Counting {
    inner: TcpStream,
    read: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read
            .fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A TLS 1.3 server on its own runtime: after the handshake it reads `u64 length || data`
/// requests and answers each with one byte.
struct TlsServer {
    addr: SocketAddr,
    roots: RootCertStore,
    _runtime: tokio::runtime::Runtime,
}

fn tls_provider(groups: Vec<&'static dyn SupportedKxGroup>) -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![provider::cipher_suite::TLS13_AES_256_GCM_SHA384],
        kx_groups: groups,
        ..provider::default_provider()
    })
}

impl TlsServer {
    fn start() -> Self {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        let mut roots = RootCertStore::empty();
        roots.add(cert.cert.der().clone()).expect("root");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
        let mut config = ServerConfig::builder_with_provider(tls_provider(vec![
            kx_group::X25519MLKEM768,
            kx_group::X25519,
        ]))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("TLS 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .expect("server config");
        config.send_tls13_tickets = 0;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let runtime = server_runtime();
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        runtime.spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let _ = stream.set_nodelay(true);
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        let mut len = [0u8; 8];
                        if tls.read_exact(&mut len).await.is_err() {
                            return;
                        }
                        let mut left = u64::from_be_bytes(len) as usize;
                        while left > 0 {
                            let want = left.min(buf.len());
                            match tls.read(&mut buf[..want]).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => left -= n,
                            }
                        }
                        if tls.write_all(&[1]).await.is_err() || tls.flush().await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            roots,
            _runtime: runtime,
        }
    }

    fn client(&self, group: &'static dyn SupportedKxGroup) -> TlsClient {
        let mut config = ClientConfig::builder_with_provider(tls_provider(vec![group]))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        config.resumption = rustls::client::Resumption::disabled();
        TlsClient {
            addr: self.addr,
            connector: TlsConnector::from(Arc::new(config)),
        }
    }
}

struct TlsClient {
    addr: SocketAddr,
    connector: TlsConnector,
}

type TlsStream = tokio_rustls::client::TlsStream<Counting>;

impl TlsClient {
    /// Connects and completes the handshake; returns the stream and the bytes each way.
    async fn connect(&self) -> (TlsStream, u64, u64) {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (read, written) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let counting = Counting {
            inner: stream,
            read: read.clone(),
            written: written.clone(),
        };
        let name = ServerName::try_from("localhost").expect("name");
        let tls = self
            .connector
            .connect(name, counting)
            .await
            .expect("TLS handshake");
        (
            tls,
            written.load(Ordering::Relaxed),
            read.load(Ordering::Relaxed),
        )
    }

    async fn bulk(&self) {
        let (mut tls, _, _) = self.connect().await;
        tls.write_all(&(BULK as u64).to_be_bytes())
            .await
            .expect("write");
        let chunk = vec![b'x'; CHUNK];
        for _ in 0..BULK / CHUNK {
            tls.write_all(&chunk).await.expect("write");
        }
        tls.flush().await.expect("flush");
        let mut ack = [0u8; 1];
        tls.read_exact(&mut ack).await.expect("ack");
    }
}

fn secchan_target(server: &BenchServer) -> Target {
    Target {
        addr: server.addr,
        raw_addr: Some(server.raw_addr),
        pin: Pinned(server.fingerprint.clone()),
        identity: Arc::new(IdentityKey::generate(&mut OsRandom).expect("key")),
        meter: Some(server.meter.clone()),
    }
}

async fn secchan_bulk(target: &Target) {
    let mut conn = target
        .connect(&X25519_MLKEM768, AeadId::Aes256Gcm)
        .await
        .expect("connect");
    let chunk = vec![b'x'; CHUNK];
    for _ in 0..BULK / CHUNK {
        conn.send(&chunk).await.expect("send");
    }
    conn.send(&[ECHO_MARKER]).await.expect("send");
    conn.recv().await.expect("echo");
}

async fn raw_connect_echo(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).expect("nodelay");
    stream.write_all(&[1]).await.expect("write");
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await.expect("echo");
    stream
}

async fn raw_bulk(addr: SocketAddr) {
    let mut stream = raw_connect_echo(addr).await;
    let chunk = vec![b'x'; CHUNK];
    for _ in 0..BULK / CHUNK {
        stream.write_all(&chunk).await.expect("write");
    }
    stream.shutdown().await.expect("shutdown");
    let mut b = [0u8; 1];
    stream.read_exact(&mut b).await.expect("ack");
}

/// Times `iters` runs of `f`, each timed alone (set-up and tear-down outside the timing).
async fn timed<F, Fut, T>(iters: u64, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = (Duration, T)>,
{
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (d, keep) = f().await;
        total += d;
        drop(keep);
    }
    total
}

/// `iters` handshakes by `DEVICES` concurrent clients; returns the wall time.
async fn concurrent<F, Fut>(iters: u64, f: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let workers = (0..DEVICES).map(|_| async {
        while next.fetch_add(1, Ordering::Relaxed) < iters {
            f().await;
        }
    });
    futures_util::future::join_all(workers).await;
    start.elapsed()
}

const SUITES: [(&str, &Suite, &str); 2] = [
    ("X25519MLKEM768", &X25519_MLKEM768, "hybrid"),
    ("X25519", &X25519_ONLY, "classical"),
];

fn tls_group(name: &str) -> &'static dyn SupportedKxGroup {
    if name == "X25519MLKEM768" {
        kx_group::X25519MLKEM768
    } else {
        kx_group::X25519
    }
}

fn handshake_bytes(rt: &tokio::runtime::Runtime, tls: &TlsServer, target: &Target) {
    for (name, suite, _) in SUITES {
        let (_, sent, received) = rt.block_on(tls.client(tls_group(name)).connect());
        let conn = rt
            .block_on(target.connect(suite, AeadId::Aes256Gcm))
            .expect("connect");
        let s = conn.stats();
        println!(
            "handshake bytes {name}: secchan (mutual auth) {} ({} -> server, {} <- server); TLS 1.3 (server cert only) {} ({sent} / {received})",
            s.handshake_sent + s.handshake_received, s.handshake_sent, s.handshake_received, sent + received
        );
    }
}

fn compare(c: &mut Criterion) {
    let rt = device_runtime();
    let server = BenchServer::start(std::thread::available_parallelism().map_or(1, |n| n.get()))
        .expect("server");
    let target = secchan_target(&server);
    let tls = TlsServer::start();
    handshake_bytes(&rt, &tls, &target);

    let mut g = c.benchmark_group("loopback handshake");
    g.sample_size(30).measurement_time(Duration::from_secs(3));
    for (name, suite, _) in SUITES {
        g.bench_function(format!("secchan {name}"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let target = &target;
                timed(iters, move || async move {
                    let start = Instant::now();
                    let conn = target
                        .connect(suite, AeadId::Aes256Gcm)
                        .await
                        .expect("connect");
                    (start.elapsed(), conn)
                })
            })
        });
        let client = tls.client(tls_group(name));
        g.bench_function(format!("TLS 1.3 {name}"), |b| {
            let client = &client;
            b.to_async(&rt).iter_custom(|iters| {
                timed(iters, move || async move {
                    let start = Instant::now();
                    let conn = client.connect().await;
                    (start.elapsed(), conn)
                })
            })
        });
    }
    g.bench_function("raw TCP connect + 1-byte echo", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            timed(iters, move || async move {
                let start = Instant::now();
                let s = raw_connect_echo(server.raw_addr).await;
                (start.elapsed(), s)
            })
        })
    });
    g.finish();

    let mut g = c.benchmark_group("server capacity, 8 concurrent clients");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    for (name, suite, _) in SUITES {
        g.bench_function(format!("secchan {name}"), |b| {
            let target = &target;
            b.to_async(&rt).iter_custom(|iters| {
                concurrent(iters, move || async move {
                    drop(
                        target
                            .connect(suite, AeadId::Aes256Gcm)
                            .await
                            .expect("connect"),
                    );
                })
            })
        });
        let client = tls.client(tls_group(name));
        g.bench_function(format!("TLS 1.3 {name}"), |b| {
            let client = &client;
            b.to_async(&rt).iter_custom(|iters| {
                concurrent(iters, move || async move { drop(client.connect().await) })
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("bulk 16 KiB writes");
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Bytes(BULK as u64));
    g.bench_function("secchan AES-256-GCM", |b| {
        b.to_async(&rt).iter(|| secchan_bulk(&target))
    });
    let client = tls.client(kx_group::X25519MLKEM768);
    g.bench_function("TLS 1.3 AES-256-GCM", |b| {
        b.to_async(&rt).iter(|| client.bulk())
    });
    g.bench_function("raw TCP", |b| {
        b.to_async(&rt).iter(|| raw_bulk(server.raw_addr))
    });
    g.finish();
}

criterion_group!(benches, compare);
criterion_main!(benches);
