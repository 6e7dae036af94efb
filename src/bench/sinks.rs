//! `secchan bench --sink URL`: what a sink costs. Messages per second through the whole
//! server path (TCP sessions, the delivery intake, the sink, the acknowledgements back) and the
//! time from a device's send to the acknowledgement that follows the sink's write (for
//! PostgreSQL: the COMMIT), for each sink given beside the default JSON-lines sink (its lines
//! serialized and discarded, as stdout redirected to /dev/null), a JSON-lines file fsync'd
//! after every batch (`--out` with `--state-dir`), and no sink at all, in one run, in
//! interleaved rounds (docs/benchmarks.md).

use super::BenchError;
use crate::crypto::identity::IdentityKey;
use crate::crypto::random::{OsRandom, Random};
use crate::delivery::{Envelope, Streams, DEFAULT_MAX_OUT_OF_ORDER, MAX_IN_FLIGHT};
use crate::handshake::device::DeviceConfig;
use crate::handshake::server::ServerConfig;
use crate::handshake::AllowAnyDevice;
use crate::service::sink::{Discard, JsonLines, Sink, SinkError};
use crate::service::{intake, tcp_server};
use crate::transport::tcp::{self, Connection, Listener};
use crate::transport::Timeouts;
use crate::trust::Pinned;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Opens a fresh sink for one measurement.
pub type OpenSink =
    Box<dyn Fn() -> Pin<Box<dyn Future<Output = Result<Box<dyn Sink>, SinkError>> + Send>> + Send>;

/// What to measure.
pub struct SinkBench {
    /// The sinks given on the command line, by name; the baselines are added.
    pub sinks: Vec<(String, OpenSink)>,
    /// Devices sending at once in the throughput figure.
    pub devices: usize,
    /// Messages each of them sends.
    pub messages: u64,
    /// One-at-a-time messages for the latency figure.
    pub round_trips: usize,
    /// Interleaved rounds; each figure is the median over them.
    pub rounds: usize,
}

/// One sink's figures.
#[derive(Debug, Clone)]
pub struct SinkFigures {
    /// The sink.
    pub name: String,
    /// Messages written and acknowledged per second, `devices` sending at once.
    pub rate: f64,
    /// Send-to-acknowledgement time of one message at a time, median.
    pub p50: Duration,
    /// The same, 99th percentile.
    pub p99: Duration,
}

/// The report: one row per sink, in the order measured.
#[derive(Debug, Clone)]
pub struct SinkReport {
    /// Devices and messages of the throughput figure.
    pub devices: usize,
    /// Messages per device.
    pub messages: u64,
    /// Rounds.
    pub rounds: usize,
    /// The rows.
    pub rows: Vec<SinkFigures>,
}

impl std::fmt::Display for SinkReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "Sinks: {} devices x {} messages at once, then one message at a time; median of {} rounds",
            self.devices, self.messages, self.rounds
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| sink | messages/s | vs JSON lines | send to ack, median | p99 |"
        )?;
        writeln!(f, "|---|---|---|---|---|")?;
        let base = self
            .rows
            .iter()
            .find(|r| r.name == STDOUT)
            .map_or(1.0, |r| r.rate);
        for r in &self.rows {
            writeln!(
                f,
                "| {} | {:.0} | {:.2}x | {:.2} ms | {:.2} ms |",
                r.name,
                r.rate,
                r.rate / base,
                r.p50.as_secs_f64() * 1e3,
                r.p99.as_secs_f64() * 1e3
            )?;
        }
        Ok(())
    }
}

const NONE: &str = "none (discarded)";
const STDOUT: &str = "JSON lines (the default; output discarded)";
const FSYNC: &str = "JSON lines file, fsync per batch";

/// JSON lines written to a writer that discards them (stdout redirected to /dev/null, less
/// the system call), and appended to `file` if given.
fn json_lines(file: Option<&std::path::Path>, durable: bool) -> Result<Box<dyn Sink>, SinkError> {
    Ok(Box::new(JsonLines::open_with(
        Box::pin(tokio::io::sink()),
        file,
        durable,
    )?))
}

/// The baselines, then the sinks asked for; `file` is where the fsync'd baseline appends.
fn all_sinks(bench: SinkBench, file: std::path::PathBuf) -> Vec<(String, OpenSink)> {
    let mut sinks: Vec<(String, OpenSink)> = vec![
        (
            NONE.into(),
            Box::new(|| Box::pin(std::future::ready(Ok(Box::new(Discard) as Box<dyn Sink>)))),
        ),
        (
            STDOUT.into(),
            Box::new(|| Box::pin(std::future::ready(json_lines(None, false)))),
        ),
        (
            FSYNC.into(),
            Box::new(move || Box::pin(std::future::ready(json_lines(Some(&file), true)))),
        ),
    ];
    sinks.extend(bench.sinks);
    sinks
}

/// Runs the benchmark.
pub fn run(bench: SinkBench) -> Result<SinkReport, BenchError> {
    let (devices, messages, round_trips, rounds) = (
        bench.devices,
        bench.messages,
        bench.round_trips,
        bench.rounds.max(1),
    );
    let file =
        std::env::temp_dir().join(format!("secchan-bench-sinks-{}.jsonl", std::process::id()));
    let sinks = all_sinks(bench, file.clone());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench-sinks")
        .build()?;
    let mut samples: Vec<Vec<(f64, Duration, Duration)>> = vec![Vec::new(); sinks.len()];
    for _ in 0..rounds {
        for (i, (_, open)) in sinks.iter().enumerate() {
            let sink = runtime
                .block_on(open())
                .map_err(|e| BenchError::Io(std::io::Error::other(e.to_string())))?;
            samples[i].push(runtime.block_on(measure(sink, devices, messages, round_trips))?);
        }
    }
    let _ = std::fs::remove_file(&file);
    let rows = sinks
        .iter()
        .zip(samples)
        .map(|((name, _), mut s)| {
            let mid = s.len() / 2;
            s.sort_by(|a, b| a.0.total_cmp(&b.0));
            let rate = s[mid].0;
            s.sort_by_key(|x| x.1);
            let p50 = s[mid].1;
            s.sort_by_key(|x| x.2);
            SinkFigures {
                name: name.clone(),
                rate,
                p50,
                p99: s[mid].2,
            }
        })
        .collect();
    Ok(SinkReport {
        devices,
        messages,
        rounds,
        rows,
    })
}

/// One measurement with `sink` behind a fresh in-process server: (messages/s, p50, p99).
async fn measure(
    sink: Box<dyn Sink>,
    devices: usize,
    messages: u64,
    round_trips: usize,
) -> Result<(f64, Duration, Duration), BenchError> {
    let identity = Arc::new(IdentityKey::generate(&mut OsRandom)?);
    let pin = Arc::new(Pinned(identity.public().fingerprint()));
    let config = Arc::new(ServerConfig::new(identity, Arc::new(AllowAnyDevice)));
    let listener = Listener::bind("127.0.0.1:0", config, Timeouts::default()).await?;
    let addr = listener.local_addr()?;
    let streams = Streams::new(1024, DEFAULT_MAX_OUT_OF_ORDER, Duration::from_secs(3600));
    let (intake, written) = intake::start(sink, streams, None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = tcp_server::ServerOptions {
        limits: crate::service::admission::Limits {
            max_sessions: 1024,
            ..Default::default()
        },
        hello_timeout: tcp_server::DEFAULT_HELLO_TIMEOUT,
        drain_timeout: Duration::from_secs(1),
        live: None,
        hub: Arc::new(crate::service::hub::Hub::new(
            crate::service::hub::RelayPolicy::Off,
        )),
        latency: None,
    };
    let server = tokio::spawn(tcp_server::run(listener, intake, options, async {
        let _ = stopped.await;
    }));
    let mut conns = Vec::with_capacity(devices);
    for _ in 0..devices {
        conns.push(
            tcp::connect(
                addr,
                &DeviceConfig::default(),
                pin.as_ref(),
                Timeouts::default(),
            )
            .await?,
        );
    }
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(stream(c, messages)))
        .collect();
    let mut conns = Vec::with_capacity(devices);
    for t in tasks {
        conns.push(t.await.map_err(std::io::Error::other)??);
    }
    let rate = (devices as u64 * messages) as f64 / started.elapsed().as_secs_f64();
    let mut times = one_at_a_time(&mut conns[0], round_trips).await?;
    times.sort();
    let pick = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let (p50, p99) = (pick(0.5), pick(0.99));
    for c in conns {
        let _ = c.close(Duration::from_secs(1)).await;
    }
    let _ = stop.send(());
    let _ = server.await;
    let _ = written.await;
    Ok((rate, p50, p99))
}

fn random_stream() -> Result<[u8; 8], BenchError> {
    let mut id = [0u8; 8];
    OsRandom.fill(&mut id)?;
    Ok(id)
}

fn message(stream: [u8; 8], seq: u64) -> Vec<u8> {
    let data = format!("{{\"temperature_c\":21.5,\"humidity\":40.2,\"n\":{seq}}}");
    Envelope::Message {
        stream,
        seq,
        base: 0,
        data: data.as_bytes(),
    }
    .encode()
}

/// The acknowledged point of `stream` in an envelope from the server, if it is its Ack.
fn ack_of(stream: [u8; 8], bytes: &[u8]) -> Result<Option<u64>, BenchError> {
    match Envelope::decode(bytes) {
        Ok(Envelope::Ack { stream: s, next }) if s == stream => Ok(Some(next)),
        Ok(_) => Ok(None),
        Err(_) => Err(BenchError::Protocol("a malformed envelope from the server")),
    }
}

/// Sends `messages` on a new stream, at most [`MAX_IN_FLIGHT`] unacknowledged, until every
/// one is acknowledged.
async fn stream(mut conn: Connection, messages: u64) -> Result<Connection, BenchError> {
    let stream = random_stream()?;
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < messages {
        while sent < messages && sent - acked < MAX_IN_FLIGHT as u64 {
            conn.queue(&message(stream, sent))?;
            sent += 1;
        }
        conn.flush().await?;
        let reply = conn
            .recv()
            .await?
            .ok_or(BenchError::Protocol("the server closed the session"))?;
        if let Some(next) = ack_of(stream, &reply)? {
            acked = acked.max(next);
        }
    }
    Ok(conn)
}

/// Sends one message at a time on a new stream; each one's time from send to its Ack.
async fn one_at_a_time(conn: &mut Connection, n: usize) -> Result<Vec<Duration>, BenchError> {
    let stream = random_stream()?;
    let mut times = Vec::with_capacity(n);
    for seq in 0..n.max(1) as u64 {
        let start = Instant::now();
        conn.send(&message(stream, seq)).await?;
        loop {
            let reply = conn
                .recv()
                .await?
                .ok_or(BenchError::Protocol("the server closed the session"))?;
            if ack_of(stream, &reply)? > Some(seq) {
                break;
            }
        }
        times.push(start.elapsed());
    }
    Ok(times)
}
