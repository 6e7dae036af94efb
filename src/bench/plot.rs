//! SVG charts of a report (`secchan bench --plot DIR`): plain SVG text, no plotting crate.

use super::Report;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

const W: f64 = 780.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;
const COLORS: [&str; 6] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
];

/// A line chart; x may be logarithmic (base 2).
struct Chart<'a> {
    title: &'a str,
    x_label: &'a str,
    y_label: &'a str,
    log_x: bool,
    series: Vec<(String, Vec<(f64, f64)>)>,
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// About five round tick values covering 0..=max.
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    (0..=((max / step).ceil() as usize))
        .map(|i| i as f64 * step)
        .collect()
}

impl Chart<'_> {
    fn x(&self, v: f64) -> f64 {
        if self.log_x {
            v.max(1.0).log2()
        } else {
            v
        }
    }

    fn to_svg(&self) -> String {
        let points = self.series.iter().flat_map(|(_, p)| p.iter());
        let (mut x0, mut x1, mut y1) = (f64::MAX, f64::MIN, 0f64);
        for &(x, y) in points {
            x0 = x0.min(self.x(x));
            x1 = x1.max(self.x(x));
            y1 = y1.max(y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let y_ticks = ticks(y1);
        let y_max = y_ticks
            .last()
            .copied()
            .unwrap_or(1.0)
            .max(f64::MIN_POSITIVE);
        let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
        let px = |x: f64| LEFT + (self.x(x) - x0) / (x1 - x0) * pw;
        let py = |y: f64| TOP + ph - y / y_max * ph;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            escape(self.title)
        );
        for t in &y_ticks {
            let y = py(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                fmt_num(*t)
            );
        }
        let x_ticks: Vec<f64> = if self.log_x {
            let mut v = Vec::new();
            let mut t = 2f64.powf(x0.floor());
            while t.log2() <= x1 + 1e-9 {
                v.push(t);
                t *= 4.0;
            }
            v
        } else {
            ticks(x1)
                .into_iter()
                .filter(|t| (x0..=x1).contains(t))
                .collect()
        };
        for t in &x_ticks {
            let x = px(*t);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#eee"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 16.0,
                fmt_num(*t)
            );
        }
        let _ = writeln!(
            s,
            r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            H - 10.0,
            escape(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(16 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(self.y_label)
        );
        for (i, (name, pts)) in self.series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let path: Vec<String> = pts
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            if pts.len() <= 12 {
                for &(x, y) in pts {
                    let _ = writeln!(
                        s,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                        px(x),
                        py(y)
                    );
                }
            }
            let ly = TOP + 10.0 + i as f64 * 20.0;
            let lx = W - RIGHT + 12.0;
            let _ = writeln!(
                s,
                r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="3"/><text x="{}" y="{}">{}</text>"#,
                lx + 18.0,
                lx + 24.0,
                ly + 4.0,
                escape(name)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 1024.0 && v.log2().fract() == 0.0 {
        format!("{}K", v / 1024.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

/// The share of handshakes each latency curve shows: the slowest 1% (a descheduled thread on a
/// shared machine can take milliseconds) would stretch the axis until the curves are unreadable.
const LATENCY_CHART_SHARE: f64 = 99.0;

/// The cumulative distribution of sorted `samples` as (value, % at or below), up to `share` %.
fn cdf(samples: &[f64], share: f64) -> Vec<(f64, f64)> {
    let n = samples.len().max(1) as f64;
    samples
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, 100.0 * (i + 1) as f64 / n))
        .take_while(|&(_, pct)| pct <= share)
        .collect()
}

fn latency_chart(report: &Report) -> Chart<'_> {
    let series = report
        .handshakes
        .iter()
        .map(|h| {
            (
                format!("{} {}", h.label(), short(h.aead)),
                cdf(&h.samples_us, LATENCY_CHART_SHARE),
            )
        })
        .collect();
    Chart {
        title: "Handshake latency (connect() to device done), fastest 99%",
        x_label: "latency (µs)",
        y_label: "handshakes completed (%)",
        log_x: false,
        series,
    }
}

fn short(aead: &str) -> &str {
    match aead {
        "AES-256-GCM" => "AES",
        "ChaCha20-Poly1305" => "ChaCha",
        other => other,
    }
}

fn per_aead(
    report: &Report,
    value: impl Fn(&super::measure::RecordResult) -> f64,
) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for r in &report.records {
        let point = (r.payload as f64, value(r));
        match series.iter_mut().find(|(name, _)| name == r.aead) {
            Some((_, pts)) => pts.push(point),
            None => series.push((r.aead.to_string(), vec![point])),
        }
    }
    series
}

/// TLS 1.3's record overhead on TCP: a 5-byte header, 1 byte of content type and a 16-byte
/// tag (RFC 8446 §5.2), against secchan's 21.
const TLS13_RECORD_OVERHEAD: f64 = 22.0;

/// The overhead curves: secchan's per AEAD, drawn once with both names when they are the same
/// (both AEADs add a 16-byte tag, so they always are), and TLS 1.3's beside it.
fn overhead_series(report: &Report) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series: Vec<(String, Vec<(f64, f64)>)> = Vec::new();
    for (name, pts) in per_aead(report, |r| r.overhead_pct) {
        match series.iter_mut().find(|(_, p)| *p == pts) {
            Some((n, _)) => *n = format!("{n}, {}", short(&name)),
            None => series.push((format!("secchan {}", short(&name)), pts)),
        }
    }
    let tls: Vec<(f64, f64)> = series
        .first()
        .map(|(_, pts)| {
            pts.iter()
                .map(|&(x, _)| (x, 100.0 * TLS13_RECORD_OVERHEAD / x))
                .collect()
        })
        .unwrap_or_default();
    if !tls.is_empty() {
        series.push(("TLS 1.3 (22 B/record)".into(), tls));
    }
    series
}

/// Writes the MQTT flood chart (`secchan bench --mqtt-flood`) into `dir`.
#[cfg(feature = "mqtt")]
pub fn write_flood(report: &super::flood::FloodReport, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let chart = Chart {
        title: "Honest devices during a hello flood: sessions up within x seconds",
        x_label: "seconds from start to session up",
        y_label: "honest devices (%)",
        log_x: false,
        series: report.curves(),
    };
    let path = dir.join("mqtt-flood.svg");
    std::fs::write(&path, chart.to_svg())?;
    Ok(path)
}

/// Writes the reconnect-storm chart (`secchan bench --storm`) into `dir`.
pub fn write_storm(report: &super::storm::StormReport, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let chart = Chart {
        title: "Devices back after a server restart",
        x_label: "seconds from the restart",
        y_label: "devices with a session again (%)",
        log_x: false,
        series: report.curves(),
    };
    let path = dir.join("reconnect-storm.svg");
    std::fs::write(&path, chart.to_svg())?;
    Ok(path)
}

/// One row of `scripts/aarch64.sh count`'s handshake table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PiCount {
    /// QEMU CPU model (cortex-a72: Pi 4, cortex-a76: Pi 5).
    pub cpu: String,
    /// Suite.
    pub suite: String,
    /// AEAD.
    pub aead: String,
    /// Instructions on the device's side of one handshake.
    pub device: u64,
    /// Instructions on the server's side.
    pub server: u64,
}

/// The handshake rows of `scripts/aarch64.sh count`'s output (`cpu suite aead device server`).
pub fn parse_pi_counts(text: &str) -> Vec<PiCount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [cpu, suite, aead, device, server] = f[..] else {
                return None;
            };
            Some(PiCount {
                cpu: cpu.to_string(),
                suite: suite.to_string(),
                aead: aead.to_string(),
                device: device.parse().ok()?,
                server: server.parse().ok()?,
            })
        })
        .collect()
}

/// The Pi each emulated CPU stands for, and the clock the time estimate assumes.
fn pi_of(cpu: &str) -> Option<(&'static str, f64)> {
    match cpu {
        "cortex-a72" => Some(("Pi 4", 1.5e9)),
        "cortex-a76" => Some(("Pi 5", 2.4e9)),
        _ => None,
    }
}

/// Writes `pi-handshake.svg` into `dir`: the device's instructions per handshake, hybrid
/// beside classical, for each Pi (with the AEAD that Pi prefers: ChaCha20-Poly1305 on a Pi 4,
/// which lacks AES instructions, AES-256-GCM on a Pi 5), labelled with the time at one
/// instruction per cycle.
pub fn write_pi(counts: &[PiCount], dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut bars: Vec<(String, f64)> = Vec::new();
    for (cpu, aead) in [
        ("cortex-a72", "ChaCha20-Poly1305"),
        ("cortex-a76", "AES-256-GCM"),
    ] {
        let Some((pi, hz)) = pi_of(cpu) else { continue };
        for suite in ["X25519MLKEM768", "X25519"] {
            if let Some(c) = counts
                .iter()
                .find(|c| c.cpu == cpu && c.aead == aead && c.suite == suite)
            {
                let kind = if suite == "X25519" {
                    "classical"
                } else {
                    "hybrid"
                };
                let ms = c.device as f64 / hz * 1e3;
                bars.push((
                    format!("{pi} {kind}: {:.2} M, ≈ {ms:.2} ms", c.device as f64 / 1e6),
                    c.device as f64,
                ));
            }
        }
    }
    let max = bars.iter().map(|b| b.1).fold(1.0, f64::max);
    let (bar_h, gap, left, width) = (26.0, 10.0, 260.0, 460.0);
    let height = TOP + BOTTOM + bars.len() as f64 * (bar_h + gap);
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">
<rect width="{W}" height="{height}" fill="white"/>
<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>
"#,
        W / 2.0,
        escape("Device instructions per handshake (emulated; time at 1 instruction/cycle)")
    );
    for (i, (label, v)) in bars.iter().enumerate() {
        let y = TOP + i as f64 * (bar_h + gap);
        let w = v / max * width;
        let color = COLORS[i % 2];
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect x="{left}" y="{y:.1}" width="{w:.1}" height="{bar_h}" fill="{color}"/>"#,
            left - 8.0,
            y + bar_h / 2.0 + 4.0,
            escape(label)
        );
    }
    svg.push_str("</svg>\n");
    let path = dir.join("pi-handshake.svg");
    std::fs::write(&path, svg)?;
    Ok(path)
}
/// A cumulative curve: for each of the `sorted` values, the share (%) of `n` at or below it.
pub fn cumulative(sorted: &[f64], n: usize) -> Vec<(f64, f64)> {
    let n = n.max(1) as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, 100.0 * (i + 1) as f64 / n))
        .collect()
}

/// Writes the attack chart (`secchan bench --attack`) into `dir`.
pub fn write_attack(report: &super::attack::AttackReport, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let chart = Chart {
        title: "An honest device's handshakes under each attack (TCP, loopback)",
        x_label: "handshake time (ms)",
        y_label: "tries with a session within x (%)",
        log_x: false,
        series: report.curves(),
    };
    let path = dir.join("tcp-attacks.svg");
    std::fs::write(&path, chart.to_svg())?;
    Ok(path)
}

/// Writes the charts into `dir` (created if missing); returns the files written.
pub fn write(report: &Report, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let charts = [
        ("handshake-latency.svg", latency_chart(report)),
        (
            "throughput.svg",
            Chart {
                title: "Throughput against payload size (one way)",
                x_label: "payload per message (bytes, log scale)",
                y_label: "payload MB/s (10^6 bytes)",
                log_x: true,
                series: per_aead(report, |r| r.mb_per_s),
            },
        ),
        (
            "overhead.svg",
            Chart {
                title: "Record overhead against payload size",
                x_label: "payload per message (bytes, log scale)",
                y_label: "overhead (% of payload)",
                log_x: true,
                series: overhead_series(report),
            },
        ),
    ];
    let mut written = Vec::new();
    for (name, chart) in charts {
        let path = dir.join(name);
        std::fs::write(&path, chart.to_svg())?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pi_counts_are_read_from_the_script_s_table_and_charted() {
        let table = "cpu         suite            aead                     device       server\n\
cortex-a72  X25519MLKEM768   ChaCha20-Poly1305       1793646      1527405\n\
cortex-a72  X25519           ChaCha20-Poly1305       1111548      1110020\n\
cortex-a76  X25519MLKEM768   AES-256-GCM             1795443      1529085\n\
cortex-a76  X25519           AES-256-GCM             1114531      1112473\n\
\ncpu         aead                 seal 1 KiB   open 1 KiB\n";
        let counts = parse_pi_counts(table);
        assert_eq!(counts.len(), 4);
        assert_eq!(counts[0].device, 1_793_646);
        let dir = tempfile::tempdir().unwrap();
        let svg = std::fs::read_to_string(write_pi(&counts, dir.path()).unwrap()).unwrap();
        assert_eq!(svg.matches("<rect x=").count(), 4);
        assert!(svg.contains("Pi 4 hybrid: 1.79 M, ≈ 1.20 ms"), "{svg}");
        assert!(svg.contains("Pi 5 classical"), "{svg}");
    }

    #[test]
    fn a_cumulative_curve_counts_against_every_try_not_only_the_successes() {
        // Two successes of four tries: the curve ends at 50 %, not 100 %.
        assert_eq!(cumulative(&[1.0, 3.0], 4), vec![(1.0, 25.0), (3.0, 50.0)]);
        assert!(cumulative(&[], 0).is_empty());
    }

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(9.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(ticks(0.0), vec![0.0, 1.0]);
        assert!(ticks(1234.0).last().copied().unwrap() >= 1234.0);
    }

    #[test]
    fn latency_curve_leaves_out_the_slowest_percent() {
        let mut samples: Vec<f64> = (1..=200).map(f64::from).collect();
        samples[199] = 7500.0;
        let curve = cdf(&samples, LATENCY_CHART_SHARE);
        assert_eq!(curve.len(), 198);
        assert_eq!(curve.last(), Some(&(198.0, 99.0)));
    }

    #[test]
    fn linear_x_ticks_stay_inside_the_plot() {
        let chart = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            log_x: false,
            series: vec![("s".into(), vec![(150.0, 1.0), (910.0, 2.0)])],
        };
        let svg = chart.to_svg();
        for label in ["200", "400", "600", "800"] {
            assert!(svg.contains(&format!(">{label}</text>")), "{svg}");
        }
        assert!(
            !svg.contains(">1000</text>"),
            "a tick beyond the data: {svg}"
        );
    }

    #[test]
    fn chart_is_well_formed_svg_with_escaped_labels() {
        let chart = Chart {
            title: "a <b> & c",
            x_label: "x",
            y_label: "y",
            log_x: true,
            series: vec![("s".into(), vec![(16.0, 1.0), (16384.0, 3.0)])],
        };
        let svg = chart.to_svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("a &lt;b&gt; &amp; c"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        assert!(
            svg.contains(">16K<"),
            "log axis labels powers of two: {svg}"
        );
    }
}
