//! `secchan server --metrics ADDR`: the server's counters and latency histograms as
//! Prometheus text (OpenMetrics) at `http://ADDR/metrics`. Only totals: no device name,
//! fingerprint or address is in them, so a scrape reveals the fleet's activity, not who is in
//! it. Bind it to loopback or a network the scraper is on.

mod timings;

pub use timings::Timings;

use crate::service::admission::AdmissionStats;
use crate::service::intake::Intake;
use crate::service::status::Sessions;
use crate::service::tcp_server::Counters;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Scrapes answered at once; more wait for the listener.
const MAX_SCRAPES: usize = 8;
/// How long a scraper may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of a request read.
const MAX_REQUEST: usize = 4096;

/// What the metrics are read from on each scrape.
#[derive(Debug)]
struct Server {
    intake: Intake,
    counters: Option<Counters>,
    sessions: Option<Sessions>,
}

pub(super) fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: usize) -> std::fmt::Result {
    let g = ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX));
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

/// The gauges of every transport: handshakes pending and sessions established now.
pub(super) fn now(
    e: &mut DescriptorEncoder,
    (pending, sessions): (usize, usize),
) -> std::fmt::Result {
    gauge(e, "secchan_sessions", "Sessions established now.", sessions)?;
    gauge(
        e,
        "secchan_handshakes_pending",
        "Handshakes in progress now.",
        pending,
    )
}

impl Collector for Server {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let d = self.intake.stats();
        counter(
            &mut e,
            "secchan_messages_written",
            "Messages written to the sink (and acknowledged).",
            d.written,
        )?;
        counter(
            &mut e,
            "secchan_messages_duplicate",
            "Messages resent by devices that were written before: acknowledged, not written again.",
            d.duplicates,
        )?;
        counter(
            &mut e,
            "secchan_messages_too_far_ahead",
            "Messages dropped unacknowledged, too far ahead of their stream.",
            d.too_far_ahead,
        )?;
        if let Some(sessions) = &self.sessions {
            let mut family = e.encode_descriptor(
                "secchan_records_rejected",
                "Records dropped in established sessions, by reason: replayed, too_old (for the replay window), out_of_order, forged (failed authentication), unknown_epoch.",
                None,
                MetricType::Counter,
            )?;
            for (reason, n) in sessions.rejected().by_reason() {
                ConstCounter::new(n).encode(family.encode_family(&[("reason", reason)])?)?;
            }
        }
        let Some(counters) = &self.counters else {
            return Ok(());
        };
        now(&mut e, counters.now())?;
        let a: AdmissionStats = counters.stats();
        for (name, help, v) in [
            (
                "secchan_connections_accepted",
                "TCP connections accepted.",
                a.accepted,
            ),
            (
                "secchan_handshakes_full",
                "DeviceHellos answered with a ServerHello.",
                a.full_handshakes,
            ),
            (
                "secchan_sessions_established",
                "Sessions established (full and resumed).",
                a.sessions,
            ),
            (
                "secchan_handshakes_failed",
                "Handshakes that failed a check, or whose connection broke.",
                a.handshake_failures,
            ),
            (
                "secchan_handshakes_timed_out",
                "Handshakes not finished within the handshake timeout.",
                a.handshake_timeouts,
            ),
            (
                "secchan_hellos_timed_out",
                "Connections whose first frame missed the hello deadline.",
                a.hello_timeouts,
            ),
            (
                "secchan_devices_refused",
                "Devices refused by the device list or registry.",
                a.devices_refused,
            ),
            (
                "secchan_handshakes_evicted",
                "Pending handshakes given up for newcomers (budget or source full).",
                a.evicted + a.evicted_source,
            ),
            (
                "secchan_cookies_sent",
                "DeviceHellos answered with a cookie under load.",
                a.cookies_sent,
            ),
            (
                "secchan_cookies_refused",
                "CookieHellos whose cookie did not verify.",
                a.cookies_refused,
            ),
            (
                "secchan_busy",
                "DeviceHellos and sessions refused with busy.",
                a.busy + a.sessions_refused,
            ),
            (
                "secchan_sessions_replaced",
                "Sessions closed for a newer one of the same device identity.",
                a.sessions_replaced,
            ),
            (
                "secchan_duplicate_keys",
                "Sessions of a device identity that already had one from another address.",
                a.duplicate_keys,
            ),
        ] {
            counter(&mut e, name, help, v)?;
        }
        Ok(())
    }
}

/// The registry one scrape encodes.
fn registry(
    intake: Intake,
    counters: Option<Counters>,
    sessions: Option<Sessions>,
    timings: Option<&Timings>,
    transport: Option<Box<dyn Collector>>,
) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Server {
        intake,
        counters,
        sessions,
    }));
    if let Some(t) = timings {
        t.register(&mut registry);
    }
    if let Some(c) = transport {
        registry.register_collector(c);
    }
    registry
}

/// Serves `/metrics` on `listener` until the task is aborted: the intake's counters, the TCP
/// server's admission `counters` and its `sessions`' rejected records, the `timings`, and what
/// `transport` collects (another transport's server).
pub fn serve(
    listener: TcpListener,
    intake: Intake,
    counters: Option<Counters>,
    sessions: Option<Sessions>,
    timings: Option<&Timings>,
    transport: Option<Box<dyn Collector>>,
) -> tokio::task::JoinHandle<()> {
    let registry = Arc::new(registry(intake, counters, sessions, timings, transport));
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(REQUEST_TIMEOUT, answer(stream, &registry)).await;
            });
        }
    })
}

/// Reads one request's head and answers it: the metrics for `GET /metrics`, 404 otherwise.
async fn answer(mut stream: tokio::net::TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let (status, kind, body) =
        if head.starts_with(b"GET /metrics ") || head.starts_with(b"GET /metrics?") {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                Err(_) => ("500 Internal Server Error", "text/plain", String::new()),
            }
        } else {
            (
                "404 Not Found",
                "text/plain",
                "secchan serves /metrics only\n".to_string(),
            )
        };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
