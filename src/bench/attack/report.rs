//! `secchan bench --attack`'s report: the Markdown table of docs/benchmarks.md and the chart.

use super::AttackReport;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

impl AttackReport {
    /// The report as Markdown (docs/benchmarks.md, "Under attack").
    pub fn markdown(&self) -> String {
        let mut s = String::from(
            "| attack | defences | honest ok (with a cookie) | handshake p50 (ms) | p95 (ms) | p95 / baseline | server CPU (s) | attacker CPU (s) | server RSS start → peak (bound), MiB | log lines (KB) | the server counted |\n|---|---|---|---|---|---|---|---|---|---|---|\n",
        );
        let mib = |k: u64| k as f64 / 1024.0;
        for r in &self.rounds {
            let counted: Vec<String> = [
                "accepted",
                "cookies_sent",
                "busy",
                "evicted",
                "hello_timeouts",
                "handshake_timeouts",
                "handshake_failures",
                "full_handshakes",
            ]
            .iter()
            .filter_map(|k| {
                r.server
                    .get(*k)
                    .filter(|v| **v > 0)
                    .map(|v| format!("{} {v}", k.replace('_', " ")))
            })
            .collect();
            let bound = if r.rss_bound_kib > 0 {
                format!("{:.1}", mib(r.rss_bound_kib))
            } else {
                "none".into()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {}/{} ({}) | {:.2} | {:.2} | {:.1} | {:.2} | {:.2} | {:.1} → {:.1} ({}) | {} ({:.1}) | {} |",
                r.attack,
                if r.defences { "on" } else { "off" },
                r.honest_ok,
                r.tries,
                r.with_cookie,
                r.handshake_ms.median,
                r.p95_ms,
                r.p95_vs_baseline,
                r.server_cpu_s,
                r.attacker_cpu_s,
                mib(r.rss_start_kib),
                mib(r.rss_peak_kib),
                bound,
                r.log_lines,
                r.log_bytes as f64 / 1000.0,
                counted.join(", ")
            );
        }
        let c = &self.cookie;
        let _ = writeln!(
            s,
            "\nCookie cost ({}, {} hellos/s, {}): {} hellos answered with a cookie in {:.2} s of server CPU: {:.1} µs each with the TCP connection's own cost, against {:.1} µs per connection for a raw TCP server doing the same I/O ({} connections): {:.1} µs beyond TCP (pairs: {}), of which the cookie itself (in memory) is {:.2} µs.",
            match c.pairs_beyond_tcp.len() {
                1 => "one pair of rounds".to_string(),
                n => format!("{n} alternating pairs of rounds, medians"),
            },
            c.rate,
            if c.pinned {
                "server and attacker on a CPU each"
            } else {
                "unpinned"
            },
            c.cookies,
            c.server_cpu_s,
            c.us_per_hello,
            c.raw_us_per_connection,
            c.raw_connections,
            c.us_beyond_tcp,
            c.pairs_beyond_tcp
                .iter()
                .map(|d| format!("{d:.1}"))
                .collect::<Vec<_>>()
                .join(", "),
            c.us_per_cookie_in_memory
        );
        s
    }

    /// The chart's curves: per round, the share of honest tries with a handshake within x ms.
    pub fn curves(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.rounds
            .iter()
            .map(|r| {
                let pts = crate::bench::plot::cumulative(&r.curve, r.tries);
                let name = if r.defences {
                    r.attack.to_string()
                } else {
                    format!("{} (defences off)", r.attack)
                };
                (name, pts)
            })
            .collect()
    }

    /// Writes `attack.svg` into `dir`.
    pub fn write_plot(&self, dir: &Path) -> std::io::Result<PathBuf> {
        crate::bench::plot::write_attack(self, dir)
    }
}
