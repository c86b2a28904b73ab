//! Latency distribution: an HDR histogram (the `hdrhistogram` crate) of
//! microseconds with 3 significant figures (0.1 % error), from 1 µs to an
//! hour, fixed memory for any run length.

/// Microseconds, recorded and read back as percentiles.
pub struct Histogram(hdrhistogram::Histogram<u64>);

/// The longest latency recorded as itself; longer ones are recorded as it.
const HIGHEST_MICROS: u64 = 3_600_000_000;

impl Histogram {
    pub fn new() -> Self {
        Self(
            hdrhistogram::Histogram::new_with_bounds(1, HIGHEST_MICROS, 3)
                .expect("valid histogram bounds"),
        )
    }

    pub fn record(&mut self, micros: u64) {
        self.0.saturating_record(micros.clamp(1, HIGHEST_MICROS));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn max(&self) -> u64 {
        self.0.max()
    }

    /// The mean, in microseconds; 0 when empty.
    pub fn mean(&self) -> f64 {
        self.0.mean()
    }

    /// The value at percentile `p` (0-100), in microseconds; 0 when empty.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.0.is_empty() {
            return 0;
        }
        self.0.value_at_quantile(p / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_a_tenth_of_a_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000 {
            h.record(v);
        }
        for (p, want) in [(50.0, 50_000.0), (99.0, 99_000.0), (99.9, 99_900.0)] {
            let got = h.percentile(p) as f64;
            assert!((got - want).abs() <= want / 1000.0, "p{p}: {got}");
        }
        assert_eq!(h.count(), 100_000);
        assert!((h.max() as f64 - 100_000.0).abs() <= 100.0);
        assert!((h.mean() - 50_000.5).abs() < 50.0);
        assert_eq!(Histogram::new().percentile(99.0), 0);
    }
}
