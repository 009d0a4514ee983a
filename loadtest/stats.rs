//! Measurement helpers: an HDR-like log-linear latency histogram that merges across
//! processes, error counters, wall-clock time and /proc readings.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// Sub-buckets per power of two (64 → worst-case relative error 1/64 ≈ 1.6 %).
const SUB_BITS: u32 = 6;
const SUB: u64 = 1 << SUB_BITS;
/// Values below this are recorded exactly.
const EXACT: u64 = SUB * 2;
/// Largest recorded value (µs); bigger values are clamped (≈ 12.7 days).
const MAX_VALUE: u64 = (1 << 40) - 1;
const BUCKETS: usize = (EXACT + (40 - SUB_BITS as u64 - 1) * SUB) as usize;

fn index_of(v: u64) -> usize {
    let v = v.min(MAX_VALUE);
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - SUB_BITS; // >= 1
    let mant = v >> shift; // in [SUB, 2*SUB)
    (EXACT + u64::from(shift - 1) * SUB + (mant - SUB)) as usize
}

/// Highest value that maps to bucket `i`.
fn upper_of(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = (i - EXACT) / SUB + 1;
    let mant = (i - EXACT) % SUB + SUB;
    ((mant + 1) << shift) - 1
}

/// Latency histogram in microseconds. Recording is O(1); percentiles are read from the
/// bucket upper bounds (clamped to the exact max), so they over-report by at most ~1.6 %.
#[derive(Debug, Clone)]
pub struct Hist {
    counts: Vec<u64>,
    /// Samples.
    pub n: u64,
    sum: u64,
    min: u64,
    max: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    /// Empty histogram.
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            n: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    /// Record one value (µs).
    pub fn record(&mut self, v: u64) {
        let i = index_of(v);
        if let Some(c) = self.counts.get_mut(i) {
            *c += 1;
        }
        self.n += 1;
        self.sum = self.sum.saturating_add(v);
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Add another histogram.
    pub fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a += *b;
        }
        self.n += o.n;
        self.sum = self.sum.saturating_add(o.sum);
        self.min = self.min.min(o.min);
        self.max = self.max.max(o.max);
    }

    /// Value at quantile `q` in [0, 1] (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += *c;
            if seen >= rank {
                return upper_of(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    /// Serialized form for the child → parent hand-off (sparse buckets).
    pub fn to_json(&self) -> Value {
        let b: Vec<Value> = self
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, c)| json!([i, c]))
            .collect();
        json!({"n": self.n, "sum": self.sum, "min": if self.n == 0 { 0 } else { self.min }, "max": self.max, "b": b})
    }

    /// Parse `to_json` output; malformed input yields an empty histogram.
    pub fn from_json(v: &Value) -> Hist {
        let mut h = Hist::new();
        h.n = v["n"].as_u64().unwrap_or(0);
        h.sum = v["sum"].as_u64().unwrap_or(0);
        h.min = if h.n == 0 {
            u64::MAX
        } else {
            v["min"].as_u64().unwrap_or(0)
        };
        h.max = v["max"].as_u64().unwrap_or(0);
        if let Some(arr) = v["b"].as_array() {
            for pair in arr {
                let (Some(i), Some(c)) = (pair[0].as_u64(), pair[1].as_u64()) else {
                    continue;
                };
                if let Some(slot) = h.counts.get_mut(i as usize) {
                    *slot += c;
                }
            }
        }
        h
    }

    /// Human summary in milliseconds (p50/p90/p99/p99.9/max/mean).
    pub fn summary_ms(&self) -> Value {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        json!({
            "count": self.n,
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "p999_ms": ms(self.quantile(0.999)),
            "max_ms": ms(self.max),
            "mean_ms": self.sum.checked_div(self.n).map(ms).unwrap_or(0.0),
        })
    }
}

/// Error counts by kind.
#[derive(Debug, Clone, Default)]
pub struct Errors(pub BTreeMap<String, u64>);

impl Errors {
    /// Count one error.
    pub fn add(&mut self, kind: impl Into<String>) {
        *self.0.entry(kind.into()).or_insert(0) += 1;
    }
    /// Total.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
    /// Merge a JSON object of counts.
    pub fn merge_json(&mut self, v: &Value) {
        if let Some(m) = v.as_object() {
            for (k, c) in m {
                *self.0.entry(k.clone()).or_insert(0) += c.as_u64().unwrap_or(0);
            }
        }
    }
    /// As a JSON object.
    pub fn to_json(&self) -> Value {
        json!(self.0)
    }
}

/// Wall-clock microseconds since the Unix epoch (the fan-out clock: publisher and
/// subscribers run on the same host).
pub fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `(VmRSS, VmHWM)` in KiB of a process, from /proc/PID/status.
pub fn proc_mem(pid: u32) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// User + system CPU seconds consumed so far by a process (all threads), from
/// /proc/PID/stat (assumes the usual USER_HZ of 100).
pub fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// This process's own CPU seconds.
pub fn self_cpu_secs() -> f64 {
    proc_cpu_secs(std::process::id()).unwrap_or(0.0)
}

/// This process's own VmRSS (KiB).
pub fn self_rss_kb() -> u64 {
    proc_mem(std::process::id()).map(|m| m.0).unwrap_or(0)
}

/// Share `i` of `total` split over `parts` (the first `total % parts` get one more).
pub fn share(total: usize, parts: usize, i: usize) -> usize {
    let parts = parts.max(1);
    total / parts + usize::from(i < total % parts)
}

/// Small fast PRNG (xorshift64*) for masks and handshake keys; not for secrets.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded from the OS plus a salt.
    pub fn new(salt: u64) -> Self {
        let mut b = [0u8; 8];
        let _ = getrandom::getrandom(&mut b);
        let s = u64::from_le_bytes(b) ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }
    /// Seeded deterministically (no syscall); for per-connection streams derived from a
    /// parent generator.
    pub fn seeded(seed: u64) -> Self {
        let s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
        Self(if s == 0 { 0x2545_F491_4F6C_DD1D } else { s })
    }
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// A frame mask.
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_le_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut prev = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            65_535,
            1 << 30,
            MAX_VALUE,
        ] {
            let i = index_of(v);
            assert!(i >= prev);
            prev = i;
            let up = upper_of(i);
            assert!(up >= v, "v={v} up={up}");
            assert!((up - v) as f64 <= v as f64 / 60.0 + 1.0, "v={v} up={up}");
            assert!(i < BUCKETS);
        }
    }

    #[test]
    fn quantiles_and_roundtrip() {
        let mut h = Hist::new();
        for v in 1..=1000u64 {
            h.record(v);
        }
        let p50 = h.quantile(0.5);
        assert!((500..=510).contains(&p50), "{p50}");
        assert_eq!(h.quantile(1.0), 1000);
        let back = Hist::from_json(&h.to_json());
        assert_eq!(back.quantile(0.99), h.quantile(0.99));
        assert_eq!(back.n, 1000);
    }
}
