//! Latency summaries, a tiny deterministic PRNG, and facts about the machine and processes
//! (load average, `/proc/PID/stat` CPU ticks, `/proc/PID/status` RSS).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// Percentiles of a set of latency samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Largest sample.
    pub max: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
}

impl Summary {
    /// Sorts `samples` and summarizes them (all zero when empty).
    pub fn of(samples: &mut [Duration]) -> Summary {
        samples.sort_unstable();
        let n = samples.len();
        if n == 0 {
            return Summary {
                n,
                p50: Duration::ZERO,
                p99: Duration::ZERO,
                max: Duration::ZERO,
                mean: Duration::ZERO,
            };
        }
        let total: Duration = samples.iter().sum();
        let mean = total / u32::try_from(n).unwrap_or(u32::MAX);
        Summary {
            n,
            p50: percentile(samples, 0.50),
            p99: percentile(samples, 0.99),
            max: samples[n - 1],
            mean,
        }
    }

    /// `p50 1.23 ms p99 4.56 ms`.
    pub fn human(&self) -> String {
        format!("p50 {} p99 {}", ms(self.p50), ms(self.p99))
    }

    /// The summary as JSON, in milliseconds.
    pub fn json(&self) -> Value {
        json!({
            "samples": self.n,
            "p50_ms": as_ms(self.p50),
            "p99_ms": as_ms(self.p99),
            "max_ms": as_ms(self.max),
            "mean_ms": as_ms(self.mean),
        })
    }
}

/// The nearest-rank percentile of sorted, non-empty `sorted`.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let n = sorted.len();
    // Nearest rank: ceil(p * n), 1-based.
    let rank = (p * n as f64).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// A duration in milliseconds as a float with µs precision.
pub fn as_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// `1.234 ms`.
pub fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// Operations per second over `elapsed`.
pub fn rate(ops: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 { ops as f64 / s } else { 0.0 }
}

/// `12,345`: a rate rounded to an integer with thousands separators.
pub fn thousands(x: f64) -> String {
    let n = x.round().max(0.0) as u64;
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// SplitMix64: a stateless mix of `x`, good enough to pick random keys without a dependency.
pub fn mix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed that differs between runs.
pub fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    mix64(nanos ^ u64::from(std::process::id()))
}

/// The 1-minute load average from `/proc/loadavg`.
pub fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|f| f.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Clock ticks per second for `/proc/PID/stat` times: `getconf CLK_TCK`, or 100 (the Linux
/// value on every common architecture) when `getconf` is unavailable.
pub fn clock_ticks() -> (u64, &'static str) {
    let out = std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output();
    match out {
        Ok(o) if o.status.success() => match String::from_utf8_lossy(&o.stdout).trim().parse() {
            Ok(t) if t > 0 => (t, "getconf CLK_TCK"),
            _ => (100, "assumed 100 (getconf output unparsable)"),
        },
        _ => (100, "assumed 100 (getconf unavailable)"),
    }
}

/// utime + stime of a process, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let Some(close) = stat.rfind(')') else {
        bail!("{path}: no command name");
    };
    // After ")": field 3 (state) is index 0, so field N is index N - 3.
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        fields
            .get(n - 3)
            .with_context(|| format!("{path}: field {n} missing"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {n} is not a number"))
    };
    Ok(field(14)? + field(15)?)
}

/// A `kB` line of `/proc/PID/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn status_kib(pid: u32, name: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in status.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && let Some(rest) = rest.strip_prefix(':')
        {
            let kib = rest.trim().trim_end_matches("kB").trim();
            return kib
                .parse()
                .with_context(|| format!("{path}: {name} is not a number"));
        }
    }
    bail!("{path}: no {name} line")
}

/// A counter of `/proc/PID/io` (`write_bytes`: bytes the process caused to be sent to the
/// storage layer, in whole pages).
pub fn io_counter(pid: u32, name: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/io");
    let io = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    for line in io.lines() {
        if let Some(rest) = line.strip_prefix(name)
            && let Some(rest) = rest.strip_prefix(':')
        {
            return rest
                .trim()
                .parse()
                .with_context(|| format!("{path}: {name} is not a number"));
        }
    }
    bail!("{path}: no {name} line")
}

/// Total size in bytes of the regular files under `dir`.
pub fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::of(&mut v);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        let one = Summary::of(&mut [Duration::from_millis(7)]);
        assert_eq!(one.p99, Duration::from_millis(7));
        assert_eq!(Summary::of(&mut []).n, 0);
    }

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
    }

    #[test]
    fn reads_own_proc_files() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_ok());
        assert!(status_kib(me, "VmRSS").is_ok_and(|k| k > 0));
        assert!(io_counter(me, "write_bytes").is_ok());
    }
}
