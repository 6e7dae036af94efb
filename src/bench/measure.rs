//! The measurements, each from the device's side of a real TCP connection.

use super::server::{ServerMeter, ECHO_MARKER};
use super::system::Percentiles;
use super::BenchError;
use crate::crypto::aead::AeadId;
use crate::crypto::identity::IdentityKey;
use crate::crypto::kem::Suite;
use crate::delivery::Envelope;
use crate::handshake::device::DeviceConfig;
use crate::handshake::resume::Ticket;
use crate::transport::tcp::{connect, resume, Connection};
use crate::transport::Timeouts;
use crate::trust::Pinned;
use serde::Serialize;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a clean close may wait for the peer's close.
const CLOSE_WAIT: Duration = Duration::from_secs(30);

/// Where the devices connect.
pub struct Target {
    /// The secchan server.
    pub addr: SocketAddr,
    /// The raw TCP baseline listener, in-process runs only.
    pub raw_addr: Option<SocketAddr>,
    /// The server key's fingerprint.
    pub pin: Pinned,
    /// The device identity presented (every handshake is mutually authenticated).
    pub identity: Arc<IdentityKey>,
    /// The in-process server's counters; `None` against a remote server.
    pub meter: Option<Arc<ServerMeter>>,
}

impl Target {
    fn config(&self, suite: &'static Suite, aead: AeadId) -> DeviceConfig {
        DeviceConfig::default()
            .with_suite(suite)
            .with_aeads(vec![aead])
            .with_identity(self.identity.clone())
    }

    /// One handshake on a new TCP connection (TCP_NODELAY is set on both ends).
    pub async fn connect(
        &self,
        suite: &'static Suite,
        aead: AeadId,
    ) -> Result<Connection, BenchError> {
        Ok(connect(
            self.addr,
            &self.config(suite, aead),
            &self.pin,
            Timeouts::default(),
        )
        .await?)
    }

    /// One resumption with `ticket` on a new TCP connection.
    pub async fn resume(
        &self,
        suite: &'static Suite,
        aead: AeadId,
        ticket: &Ticket,
    ) -> Result<Connection, BenchError> {
        Ok(resume(
            self.addr,
            &self.config(suite, aead),
            ticket,
            &self.pin,
            Timeouts::default(),
        )
        .await?)
    }
}

/// Closes `conn` cleanly; the resumption ticket it received, if any.
async fn close_for_ticket(mut conn: Connection) -> Result<Option<Ticket>, BenchError> {
    conn.shutdown(CLOSE_WAIT).await?;
    Ok(conn.take_ticket())
}

/// Handshake figures for one suite and AEAD.
#[derive(Debug, Clone, Serialize)]
pub struct HandshakeResult {
    /// Suite name.
    pub suite: &'static str,
    /// AEAD name.
    pub aead: &'static str,
    /// Resumptions with a ticket from a session of `suite`, not full handshakes.
    pub resumed: bool,
    /// Timed handshakes (after the warm-up).
    pub count: usize,
    /// From the start of connect() until the device has completed the handshake, in µs.
    pub latency_us: Percentiles,
    /// Frame bytes the device sent during the handshake (TCP/IP headers not counted).
    pub bytes_device_to_server: u64,
    /// Frame bytes the server sent during the handshake.
    pub bytes_server_to_device: u64,
    /// Device thread CPU time per handshake, in µs.
    pub device_cpu_us: f64,
    /// Server CPU time per handshake (all its threads), in µs; in-process runs only.
    pub server_cpu_us: Option<f64>,
    /// Every latency sample, ascending, in µs (for plots).
    #[serde(skip)]
    pub samples_us: Vec<f64>,
}

impl HandshakeResult {
    /// Both directions' handshake bytes.
    pub fn total_bytes(&self) -> u64 {
        self.bytes_device_to_server + self.bytes_server_to_device
    }

    /// The row's name: the suite, and whether it resumed.
    pub fn label(&self) -> String {
        if self.resumed {
            format!("{} resumed", self.suite)
        } else {
            self.suite.to_string()
        }
    }
}

pub(super) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Blocks each suite and AEAD's timed handshakes are split into, taken in turn, so a change
/// in the machine's load during the run affects every suite alike and the ratios stay fair.
const ROUNDS: usize = 10;

/// Accumulates one suite and AEAD's samples across rounds.
struct Tally {
    suite: &'static Suite,
    aead: AeadId,
    /// Resumptions; `tickets` holds the tickets they use, each from an earlier session.
    resumed: bool,
    tickets: Vec<Ticket>,
    samples: Vec<f64>,
    device_cpu: Duration,
    server_cpu: Duration,
    stats: crate::transport::tcp::WireStats,
}

impl Tally {
    /// Makes sure `n` tickets are at hand (full handshakes, untimed); false if the server
    /// issues none.
    async fn stock_tickets(&mut self, target: &Target, n: usize) -> Result<bool, BenchError> {
        while self.tickets.len() < n {
            let conn = target.connect(self.suite, self.aead).await?;
            match close_for_ticket(conn).await? {
                Some(t) => self.tickets.push(t),
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// One handshake of this tally's kind.
    async fn connect(&mut self, target: &Target) -> Result<Connection, BenchError> {
        match self.tickets.pop() {
            Some(t) if self.resumed => target.resume(self.suite, self.aead, &t).await,
            _ => target.connect(self.suite, self.aead).await,
        }
    }

    /// Closes `conn` cleanly, keeping the ticket it brought for the next resumption.
    async fn close(&mut self, conn: Connection) -> Result<(), BenchError> {
        if let Some(t) = close_for_ticket(conn).await?.filter(|_| self.resumed) {
            self.tickets.push(t);
        }
        Ok(())
    }
}

/// `count` timed handshakes per suite and AEAD, after `warmup` untimed ones each, taken in
/// interleaved blocks; with `resumption`, also `count` resumptions with tickets from
/// sessions of that suite and AEAD (skipped if the server issues no tickets). Within a block
/// sessions stay open until all are timed, so the server's CPU meter sees handshakes only;
/// then they close cleanly.
pub async fn handshakes(
    target: &Target,
    combos: &[(&'static Suite, AeadId)],
    resumption: Option<(&'static Suite, AeadId)>,
    warmup: usize,
    count: usize,
    mut tick: impl FnMut(),
) -> Result<Vec<HandshakeResult>, BenchError> {
    let kinds = combos
        .iter()
        .map(|&c| (c, false))
        .chain(resumption.map(|c| (c, true)));
    let mut tallies: Vec<Tally> = kinds
        .map(|((suite, aead), resumed)| Tally {
            suite,
            aead,
            resumed,
            tickets: Vec::new(),
            samples: Vec::with_capacity(count),
            device_cpu: Duration::ZERO,
            server_cpu: Duration::ZERO,
            stats: Default::default(),
        })
        .collect();
    let max_block = count.div_ceil(ROUNDS).max(warmup);
    for t in &mut tallies {
        if t.resumed && !t.stock_tickets(target, max_block).await? {
            continue;
        }
        for _ in 0..warmup {
            let conn = t.connect(target).await?;
            t.close(conn).await?;
        }
    }
    // A server that issues no tickets: no resumption row.
    tallies.retain(|t| !t.resumed || !t.tickets.is_empty());
    for round in 0..ROUNDS {
        let block = count / ROUNDS + usize::from(round < count % ROUNDS);
        for t in &mut tallies {
            if t.resumed {
                t.stock_tickets(target, block).await?;
            }
            let base = target.meter.as_ref().map(|m| (m.handshakes(), m.cpu()));
            let mut open = Vec::with_capacity(block);
            for _ in 0..block {
                let cpu = cpu_time::ThreadTime::now();
                let start = Instant::now();
                let conn = t.connect(target).await?;
                t.samples.push(micros(start.elapsed()));
                t.device_cpu += cpu.elapsed();
                open.push(conn);
                tick();
            }
            if let (Some(meter), Some((n0, cpu0))) = (&target.meter, base) {
                meter
                    .settle(n0 + block as u64, Duration::from_secs(10))
                    .await;
                t.server_cpu += meter.cpu().saturating_sub(cpu0);
            }
            if let Some(c) = open.first() {
                t.stats = c.stats();
            }
            for conn in open {
                t.close(conn).await?;
            }
        }
    }
    let n = count.max(1) as f64;
    Ok(tallies
        .into_iter()
        .map(|mut t| HandshakeResult {
            suite: t.suite.name,
            aead: t.aead.name(),
            resumed: t.resumed,
            count,
            latency_us: Percentiles::of(&mut t.samples),
            bytes_device_to_server: t.stats.handshake_sent,
            bytes_server_to_device: t.stats.handshake_received,
            device_cpu_us: micros(t.device_cpu) / n,
            server_cpu_us: target.meter.as_ref().map(|_| micros(t.server_cpu) / n),
            samples_us: t.samples,
        })
        .collect())
}

/// Server capacity for one suite.
#[derive(Debug, Clone, Serialize)]
pub struct CapacityResult {
    /// Suite name.
    pub suite: &'static str,
    /// Devices handshaking at once.
    pub devices: usize,
    /// Handshakes completed per second.
    pub handshakes_per_s: f64,
}

/// `devices` concurrent devices handshake in a loop for `duration`; counts completions.
pub async fn capacity(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    devices: usize,
    duration: Duration,
) -> Result<CapacityResult, BenchError> {
    let start = Instant::now();
    let deadline = start + duration;
    let runs = (0..devices).map(|_| async {
        let mut done = 0u64;
        while Instant::now() < deadline {
            // Dropping the session right away keeps the server's work to the handshake.
            drop(target.connect(suite, aead).await?);
            done += 1;
        }
        Ok::<_, BenchError>(done)
    });
    let mut total = 0;
    for done in futures_util::future::join_all(runs).await {
        total += done?;
    }
    Ok(CapacityResult {
        suite: suite.name,
        devices,
        handshakes_per_s: total as f64 / start.elapsed().as_secs_f64(),
    })
}

/// Record figures for one AEAD and payload size.
#[derive(Debug, Clone, Serialize)]
pub struct RecordResult {
    /// AEAD name.
    pub aead: &'static str,
    /// Application payload per message.
    pub payload: usize,
    /// Bytes on the wire per message, TCP framing included.
    pub wire_bytes: u64,
    /// `wire_bytes - payload`.
    pub overhead_bytes: u64,
    /// Overhead relative to the payload, in percent.
    pub overhead_pct: f64,
    /// Messages sent one way, back to back.
    pub messages: u64,
    /// Messages per second, until the server's close confirmed it read them all.
    pub messages_per_s: f64,
    /// Payload megabytes (10^6 bytes) per second.
    pub mb_per_s: f64,
}

/// Sends `messages` payloads of `payload` bytes one way on a new session, then closes and
/// waits for the server's close, which it sends only after reading every record. A remote
/// `secchan server` speaks the delivery protocol (protocol.md §11), so against one each
/// payload travels in a delivery envelope (25 bytes more per record, counted as overhead);
/// the in-process server takes bare records.
pub async fn stream(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    payload: usize,
    messages: u64,
) -> Result<RecordResult, BenchError> {
    let mut conn = target.connect(suite, aead).await?;
    // Printable filler, so a remote `secchan server` prints it as text.
    let filler = match target.meter {
        Some(_) => vec![b'x'; payload],
        None => vec![b'x'; payload.min(crate::record::MAX_PAYLOAD - crate::delivery::ENVELOPE_LEN)],
    };
    let stream_id = rand_stream()?;
    let message = |seq: u64| match target.meter {
        Some(_) => filler.clone(),
        None => Envelope::Message {
            stream: stream_id,
            seq,
            base: seq,
            data: &filler,
        }
        .encode(),
    };
    let before = conn.stats().sent;
    conn.send(&message(0)).await?;
    let wire_bytes = conn.stats().sent - before;
    let start = Instant::now();
    for seq in 1..messages {
        conn.send(&message(seq)).await?;
    }
    conn.close(CLOSE_WAIT).await?;
    let secs = start.elapsed().as_secs_f64();
    let payload = filler.len();
    let overhead_bytes = wire_bytes - payload as u64;
    Ok(RecordResult {
        aead: aead.name(),
        payload,
        wire_bytes,
        overhead_bytes,
        overhead_pct: 100.0 * overhead_bytes as f64 / payload as f64,
        messages,
        messages_per_s: messages as f64 / secs,
        mb_per_s: (messages * payload as u64) as f64 / secs / 1e6,
    })
}

/// A random delivery stream id.
fn rand_stream() -> Result<crate::delivery::StreamId, BenchError> {
    use crate::crypto::random::{OsRandom, Random};
    let mut id = [0u8; 8];
    OsRandom.fill(&mut id)?;
    Ok(id)
}

/// Round-trip latency of small messages.
#[derive(Debug, Clone, Serialize)]
pub struct EchoResult {
    /// AEAD name.
    pub aead: &'static str,
    /// Payload per message.
    pub payload: usize,
    /// Round trips timed.
    pub count: usize,
    /// Send to echo received, in µs.
    pub round_trip_us: Percentiles,
}

/// `count` request/echo round trips of `payload`-byte messages (in-process server only).
pub async fn echo(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    payload: usize,
    count: usize,
) -> Result<EchoResult, BenchError> {
    let mut conn = target.connect(suite, aead).await?;
    let mut data = vec![b'x'; payload];
    if let Some(first) = data.first_mut() {
        *first = ECHO_MARKER;
    }
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        conn.send(&data).await?;
        if conn.recv().await?.as_deref() != Some(&data[..]) {
            return Err(BenchError::Protocol("the server's echo did not match"));
        }
        samples.push(micros(start.elapsed()));
    }
    conn.close(CLOSE_WAIT).await?;
    Ok(EchoResult {
        aead: aead.name(),
        payload,
        count,
        round_trip_us: Percentiles::of(&mut samples),
    })
}

/// Loopback TCP without secchan: the floor under every figure.
#[derive(Debug, Clone, Serialize)]
pub struct RawTcpResult {
    /// connect() plus a 1-byte echo, in µs.
    pub connect_echo_us: Percentiles,
    /// Bytes moved one way in 16 KiB writes.
    pub bulk_bytes: u64,
    /// Megabytes (10^6 bytes) per second.
    pub bulk_mb_per_s: f64,
}

async fn raw_connect_echo(addr: SocketAddr) -> Result<TcpStream, BenchError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&[1]).await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(stream)
}

async fn raw_finish(mut stream: TcpStream) -> Result<(), BenchError> {
    stream.shutdown().await?;
    let mut byte = [0u8; 1];
    stream.read_exact(&mut byte).await?;
    Ok(())
}

/// Raw TCP connect + echo latency and 16 KiB-write bulk throughput.
pub async fn raw_tcp(
    addr: SocketAddr,
    count: usize,
    bulk: u64,
) -> Result<RawTcpResult, BenchError> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        let stream = raw_connect_echo(addr).await?;
        samples.push(micros(start.elapsed()));
        raw_finish(stream).await?;
    }
    let mut stream = raw_connect_echo(addr).await?;
    let chunk = vec![b'x'; crate::record::MAX_PAYLOAD];
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < bulk {
        stream.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    raw_finish(stream).await?;
    let secs = start.elapsed().as_secs_f64();
    Ok(RawTcpResult {
        connect_echo_us: Percentiles::of(&mut samples),
        bulk_bytes: sent,
        bulk_mb_per_s: sent as f64 / secs / 1e6,
    })
}

/// Memory of idle established sessions.
#[derive(Debug, Clone, Serialize)]
pub struct MemoryResult {
    /// Sessions held open.
    pub sessions: usize,
    /// Whose memory was measured: "server" (devices in a child process) or "device".
    pub side: &'static str,
    /// Resident memory added per idle established session, in KiB.
    pub rss_per_session_kib: f64,
}

/// Opens `n` sessions in this process and holds them until `hold` resolves.
pub async fn hold_sessions(
    target: &Target,
    suite: &'static Suite,
    aead: AeadId,
    n: usize,
    hold: impl std::future::Future<Output = ()>,
) -> Result<(), BenchError> {
    let mut open = Vec::with_capacity(n);
    for _ in 0..n {
        open.push(target.connect(suite, aead).await?);
    }
    hold.await;
    for conn in open {
        conn.close(CLOSE_WAIT).await?;
    }
    Ok(())
}
