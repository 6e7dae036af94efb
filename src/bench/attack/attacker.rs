//! One attacker process of `secchan bench --attack` (`secchan bench --attacker KIND`, started
//! by the benchmark): many connections from its source addresses, each doing one thing the
//! server must survive, reopened whenever the server gives it up. Prints `ready` once its
//! connections are up, runs until a line (or the end) arrives on stdin, then prints its
//! counts as one JSON line. It spends nothing on cryptography after start: its hellos are
//! computed once and replayed.

use crate::bench::BenchError;
use crate::crypto::random::OsRandom;
use crate::handshake::cookie;
use crate::handshake::device::{self, DeviceConfig};
use crate::msgs::FrameType;
use crate::transport::framing::MAX_FIRST_FRAME;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// What an attacker does on each of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Kind {
    /// Sends a hello's length and then one byte a second (slowloris).
    Slowloris,
    /// Opens the connection and sends nothing.
    Idle,
    /// Sends a hello, reads the answer, follows a cookie, closes; again at once.
    Flood,
    /// Like `flood`, but never follows a cookie (what a cookie costs the server).
    CookieOnly,
    /// Sends a hello (following a cookie), reads the ServerHello, then holds the connection.
    HelloHold,
    /// Sends the length prefix of the longest first frame and one byte, then holds (what
    /// three bytes pin in the server's memory).
    Pin,
    /// Sends a malformed hello, waits for the close, again at once (what a reconnect loop
    /// makes the server log).
    Garbage,
}

/// What one attacker process did.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    /// Connections opened.
    pub connections: u64,
    /// Connections the server closed (given up, timed out, or answered and closed).
    pub closed_by_server: u64,
    /// DeviceHellos and CookieHellos sent.
    pub hellos: u64,
    /// CookieReplies received.
    pub cookies: u64,
    /// ServerHellos received (each one a full handshake's cost to the server).
    pub server_hellos: u64,
    /// Alerts received (busy, timeout, ...).
    pub alerts: u64,
    /// Connection attempts that failed.
    pub errors: u64,
}

impl Counts {
    /// The sum of two processes' counts.
    pub fn add(&mut self, o: &Self) {
        self.connections += o.connections;
        self.closed_by_server += o.closed_by_server;
        self.hellos += o.hellos;
        self.cookies += o.cookies;
        self.server_hellos += o.server_hellos;
        self.alerts += o.alerts;
        self.errors += o.errors;
    }
}

#[derive(Default)]
struct Shared {
    connections: AtomicU64,
    closed_by_server: AtomicU64,
    hellos: AtomicU64,
    cookies: AtomicU64,
    server_hellos: AtomicU64,
    alerts: AtomicU64,
    errors: AtomicU64,
    stop: AtomicBool,
}

impl Shared {
    fn counts(&self) -> Counts {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Counts {
            connections: get(&self.connections),
            closed_by_server: get(&self.closed_by_server),
            hellos: get(&self.hellos),
            cookies: get(&self.cookies),
            server_hellos: get(&self.server_hellos),
            alerts: get(&self.alerts),
            errors: get(&self.errors),
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Hellos computed once, replayed by every connection.
const HELLOS: usize = 64;

/// Runs the attacker: `conns` connections to `target` spread over `sources`; a flood's hellos
/// paced to `rate` a second in all (0: as fast as they are answered). Blocking; call from a
/// plain thread (the process's main one).
pub fn run(
    kind: Kind,
    target: SocketAddr,
    sources: &[IpAddr],
    conns: usize,
    rate: u32,
) -> Result<Counts, BenchError> {
    let hellos: Vec<Vec<u8>> = (0..HELLOS)
        .map(|_| device::start(&DeviceConfig::default(), &mut OsRandom).map(|(_, h)| h))
        .collect::<Result<_, _>>()?;
    let hellos = Arc::new(hellos);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let shared = Arc::new(Shared::default());
    rt.block_on(async {
        let (up_tx, mut up_rx) = tokio::sync::mpsc::channel::<()>(conns.max(1));
        let mut tasks = Vec::with_capacity(conns);
        // Each connection's share of the rate: one hello every `conns / rate` seconds.
        let period = (rate > 0).then(|| Duration::from_secs_f64(conns as f64 / f64::from(rate)));
        for i in 0..conns {
            let source = sources[i % sources.len().max(1)];
            let (shared, hellos, up) = (shared.clone(), hellos.clone(), up_tx.clone());
            let pace = period.map(|p| {
                let start = tokio::time::Instant::now() + p.mul_f64(i as f64 / conns as f64);
                let mut pace = tokio::time::interval_at(start, p);
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                pace
            });
            tasks.push(tokio::spawn(async move {
                let at = Target {
                    addr: target,
                    source,
                    pace,
                };
                connection(kind, at, i, &shared, &hellos, up).await
            }));
        }
        drop(up_tx);
        // Ready once every connection is up (or failed to come up).
        for _ in 0..conns {
            if up_rx.recv().await.is_none() {
                break;
            }
        }
        println!("ready");
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)
        })
        .await;
        shared.stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.abort();
        }
    });
    Ok(shared.counts())
}

async fn open(target: SocketAddr, source: IpAddr) -> std::io::Result<TcpStream> {
    let socket = match source {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.bind(SocketAddr::new(source, 0))?;
    let s = socket.connect(target).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn write_frame(s: &mut TcpStream, frame: &[u8]) -> std::io::Result<()> {
    let mut out = (frame.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    s.write_all(&out).await
}

async fn read_frame(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.ok()?;
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    s.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// Sends `hello` on a new connection and reads the answer; follows one cookie if `follow`.
/// Returns the connection (still open) if the answer was a ServerHello.
async fn hello_round(
    target: SocketAddr,
    source: IpAddr,
    hello: &[u8],
    follow: bool,
    shared: &Shared,
) -> Option<TcpStream> {
    let mut frame = hello.to_vec();
    for _ in 0..2 {
        let mut s = match open(target, source).await {
            Ok(s) => s,
            Err(_) => {
                bump(&shared.errors);
                tokio::time::sleep(Duration::from_millis(10)).await;
                return None;
            }
        };
        bump(&shared.connections);
        bump(&shared.hellos);
        if write_frame(&mut s, &frame).await.is_err() {
            bump(&shared.closed_by_server);
            return None;
        }
        let Some(reply) = read_frame(&mut s).await else {
            bump(&shared.closed_by_server);
            return None;
        };
        match FrameType::of(&reply) {
            Ok(FrameType::ServerHello) => {
                bump(&shared.server_hellos);
                return Some(s);
            }
            Ok(FrameType::CookieReply) => {
                bump(&shared.cookies);
                bump(&shared.closed_by_server);
                match cookie::retry(&reply, hello) {
                    Ok(Some(again)) if follow => frame = again,
                    _ => return None,
                }
            }
            _ => {
                bump(&shared.alerts);
                bump(&shared.closed_by_server);
                return None;
            }
        }
    }
    None
}

/// Waits until the server closes `s`.
async fn until_closed(s: &mut TcpStream, shared: &Shared) {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    bump(&shared.closed_by_server);
}

/// Where a connection goes, from where, and at what pace (a flood's hellos).
struct Target {
    addr: SocketAddr,
    source: IpAddr,
    pace: Option<tokio::time::Interval>,
}

async fn connection(
    kind: Kind,
    mut at: Target,
    index: usize,
    shared: &Shared,
    hellos: &[Vec<u8>],
    up: tokio::sync::mpsc::Sender<()>,
) {
    let mut up = Some(up);
    let (target, source) = (at.addr, at.source);
    let mut n = index;
    while !shared.stop.load(Ordering::Relaxed) {
        n += 1;
        let hello = &hellos[n % hellos.len()];
        match kind {
            Kind::Flood | Kind::CookieOnly => {
                up.take();
                if let Some(pace) = &mut at.pace {
                    pace.tick().await;
                }
                let _ = hello_round(target, source, hello, kind == Kind::Flood, shared).await;
            }
            Kind::HelloHold => {
                let held = hello_round(target, source, hello, true, shared).await;
                up.take();
                if let Some(mut s) = held {
                    until_closed(&mut s, shared).await;
                }
            }
            Kind::Idle | Kind::Slowloris | Kind::Pin | Kind::Garbage => {
                let Ok(mut s) = open(target, source).await else {
                    bump(&shared.errors);
                    up.take();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                bump(&shared.connections);
                up.take();
                match kind {
                    Kind::Slowloris => dribble(&mut s, hello, shared).await,
                    Kind::Pin => {
                        let mut three = (MAX_FIRST_FRAME as u16).to_be_bytes().to_vec();
                        three.push(hello[0]);
                        if s.write_all(&three).await.is_ok() {
                            until_closed(&mut s, shared).await;
                        }
                    }
                    Kind::Garbage => {
                        bump(&shared.hellos);
                        if write_frame(&mut s, &[0xff; 8]).await.is_ok() {
                            until_closed(&mut s, shared).await;
                        }
                    }
                    _ => until_closed(&mut s, shared).await,
                }
            }
        }
    }
}

/// Slowloris: the hello's length, then one of its bytes a second, until the server closes.
async fn dribble(s: &mut TcpStream, hello: &[u8], shared: &Shared) {
    let (mut reader, mut writer) = s.split();
    let drip = async {
        if writer
            .write_all(&(hello.len() as u16).to_be_bytes())
            .await
            .is_err()
        {
            return;
        }
        for byte in hello {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    let mut buf = [0u8; 64];
    let closed = async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::select! {
        () = drip => {}
        () = closed => {}
    }
    bump(&shared.closed_by_server);
}
