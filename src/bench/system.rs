//! What a report needs to know about the machine and the build, and the process's memory.

use crate::crypto::aead::cpu_has_aes;
use serde::Serialize;

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model as the OS names it.
    pub cpu: String,
    /// Logical cores available to this process.
    pub cores: usize,
    /// Operating system and architecture.
    pub os: String,
}

/// The build that produced a report.
#[derive(Debug, Clone, Serialize)]
pub struct Build {
    /// secchan version.
    pub version: &'static str,
    /// Whether this is an optimized build (a debug build's figures mean little).
    pub optimized: bool,
    /// Target architecture.
    pub arch: &'static str,
    /// AEAD implementation.
    pub aead_backend: &'static str,
    /// Whether the CPU has AES and carry-less multiply instructions (AES-256-GCM in hardware).
    pub cpu_aes: bool,
    /// ML-KEM-768 implementation and the code path it takes on this CPU.
    pub mlkem_backend: String,
    /// Kyber768 round 3 implementation.
    pub kyber_backend: &'static str,
    /// X25519 and Ed25519 implementation.
    pub ecc_backend: &'static str,
}

impl Machine {
    /// Reads the CPU model from /proc/cpuinfo (Linux) and the core count from the OS.
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|text| {
                text.lines()
                    .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Self {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
        }
    }
}

fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl Build {
    /// Describes this binary and the code paths its crates select on this CPU.
    pub fn detect() -> Self {
        let mlkem_path = if cfg!(target_arch = "x86_64") && has_avx2() {
            "AVX2"
        } else if cfg!(target_arch = "aarch64") {
            "NEON"
        } else {
            "portable"
        };
        Self {
            version: env!("CARGO_PKG_VERSION"),
            optimized: !cfg!(debug_assertions),
            arch: std::env::consts::ARCH,
            aead_backend:
                "aws-lc-rs 1.19 (AWS-LC; hardware AES-GCM or vector ChaCha20 chosen at run time)",
            cpu_aes: cpu_has_aes(),
            mlkem_backend: format!("libcrux-ml-kem 0.0.11, {mlkem_path}"),
            kyber_backend: if !cfg!(feature = "kyber-r3") {
                "not in this build (cargo feature kyber-r3)"
            } else if cfg!(target_arch = "x86_64") {
                "pqcrypto-kyber 0.8 (PQClean, AVX2 build)"
            } else {
                "pqcrypto-kyber 0.8 (PQClean, portable C)"
            },
            ecc_backend:
                "X25519 and Ed25519 signing aws-lc-rs 1.19; Ed25519 verify_strict ed25519-dalek 2",
        }
    }
}

/// A line of /proc/self/status in KiB (`VmRSS`, `VmHWM`); `None` where /proc is missing.
fn status_kib(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident set size now, in KiB.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// Peak resident set size so far, in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Latency percentiles of a sample, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
}

/// Nearest-rank percentile `p` (0..=100) of an ascending sample.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Percentiles {
    /// Sorts `samples` and takes its percentiles.
    pub fn of(samples: &mut [f64]) -> Self {
        samples.sort_by(f64::total_cmp);
        Self {
            p10: percentile(samples, 10.0),
            median: percentile(samples, 50.0),
            p90: percentile(samples, 90.0),
            p99: percentile(samples, 99.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        let p = Percentiles::of(&mut v);
        assert_eq!(
            p,
            Percentiles {
                p10: 10.0,
                median: 50.0,
                p90: 90.0,
                p99: 99.0
            }
        );
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn machine_and_memory_are_read_on_linux() {
        let m = Machine::detect();
        assert!(m.cores >= 1);
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_ne!(m.cpu, "unknown");
        }
        if cfg!(target_os = "linux") {
            let rss = rss_kib().expect("VmRSS");
            assert!(peak_rss_kib().expect("VmHWM") >= rss);
        }
    }
}
