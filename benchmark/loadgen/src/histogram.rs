//! Latency histogram: microsecond values in log-linear buckets (128 per
//! power of two, so under 1 % error), fixed memory, any run length.

const SUB: u64 = 128;
const BUCKETS: usize = 7424;

/// Counts of values by bucket, plus the exact maximum.
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    sum: u64,
    max: u64,
}

fn index(value: u64) -> usize {
    if value < SUB {
        return value as usize;
    }
    let exp = 63 - u64::from(value.leading_zeros());
    let mantissa = (value >> (exp - 7)) & (SUB - 1);
    ((exp - 6) * SUB + mantissa) as usize
}

fn lower_bound(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let exp = index / SUB + 6;
    (SUB + index % SUB) << (exp - 7)
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            counts: vec![0; BUCKETS],
            total: 0,
            sum: 0,
            max: 0,
        }
    }

    pub fn record(&mut self, micros: u64) {
        self.counts[index(micros)] += 1;
        self.total += 1;
        self.sum = self.sum.saturating_add(micros);
        self.max = self.max.max(micros);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    /// The exact mean, in microseconds; 0 when empty.
    pub fn mean(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.sum as f64 / self.total as f64
        }
    }

    /// The value at percentile `p` (0-100), in microseconds; 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return lower_bound(i).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_one_percent() {
        for value in [
            0u64,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            12_345,
            1 << 40,
            u64::MAX >> 1,
        ] {
            let low = lower_bound(index(value));
            assert!(
                low <= value && value - low <= value / 100 + 1,
                "{value} -> {low}"
            );
        }
    }

    #[test]
    fn percentiles() {
        let mut h = Histogram::new();
        for v in 1..=1000 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 500);
        assert!((985..=990).contains(&h.percentile(99.0)));
        assert_eq!(h.percentile(100.0), 1000);
        assert_eq!(h.max(), 1000);
        assert_eq!(h.mean(), 500.5);
    }
}
