//! Per-connection token bucket for chats: 10 tokens, one more every 100 ms.
//!
//! Integer milliseconds, passed in: the refill clock only advances by whole
//! tokens, so no fraction of a token is lost to rounding (no drift).

/// Most chats a connection may send in a burst.
pub const CAPACITY: u32 = 10;
/// One token is added per interval: 10 per second.
pub const REFILL_MS: u64 = 100;

/// Tokens left and when the last whole token was added.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    tokens: u32,
    refilled_at: u64,
}

impl TokenBucket {
    /// A full bucket at time `now` (ms).
    pub fn full(now: u64) -> Self {
        Self {
            tokens: CAPACITY,
            refilled_at: now,
        }
    }

    /// Takes a token if there is one at time `now` (ms).
    pub fn try_take(&mut self, now: u64) -> bool {
        let earned = now.saturating_sub(self.refilled_at) / REFILL_MS;
        if earned > 0 {
            self.tokens = CAPACITY.min(
                self.tokens
                    .saturating_add(earned.min(u64::from(CAPACITY)) as u32),
            );
            // A full bucket banks nothing; otherwise keep the part of an interval already elapsed.
            self.refilled_at = if self.tokens == CAPACITY {
                now
            } else {
                self.refilled_at + earned * REFILL_MS
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(bucket: &mut TokenBucket, now: u64, tries: u32) -> u32 {
        (0..tries).filter(|_| bucket.try_take(now)).count() as u32
    }

    #[test]
    fn burst_of_25_passes_10() {
        let mut b = TokenBucket::full(0);
        assert_eq!(taken(&mut b, 5, 25), 10);
    }

    #[test]
    fn refills_one_token_per_100ms_without_drift() {
        let mut b = TokenBucket::full(1_000);
        assert_eq!(taken(&mut b, 1_000, 10), 10);
        assert_eq!(taken(&mut b, 1_099, 5), 0);
        assert_eq!(taken(&mut b, 1_100, 5), 1);
        // 150 ms later: one token, and the 50 ms left over count toward the next.
        assert_eq!(taken(&mut b, 1_250, 5), 1);
        assert_eq!(taken(&mut b, 1_300, 5), 1);
        // A steady 10/s over 100 s always finds a token.
        let mut b = TokenBucket::full(0);
        assert_eq!(taken(&mut b, 0, 10), 10);
        let passed = (1..=1000).filter(|i| b.try_take(i * 100)).count();
        assert_eq!(passed, 1000);
    }

    #[test]
    fn idle_time_caps_at_capacity() {
        let mut b = TokenBucket::full(0);
        assert_eq!(taken(&mut b, 0, 10), 10);
        assert_eq!(taken(&mut b, 3_600_000, 50), 10);
    }

    #[test]
    fn clock_going_backwards_grants_nothing() {
        let mut b = TokenBucket::full(10_000);
        assert_eq!(taken(&mut b, 10_000, 10), 10);
        assert_eq!(taken(&mut b, 5_000, 3), 0);
    }
}
