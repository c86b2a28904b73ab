//! Each connection's timer (one live entry in the wheel): handshake,
//! keepalive, close and linger deadlines, and a catch-up's wait for Redis.

use super::*;

impl Engine {
    /// Brings `key`'s timer forward to `at` if it is due later (the
    /// keepalive check sets it again from there).
    pub(super) fn wake_at(&mut self, key: usize, at: u64) {
        if self.conns.get(key).is_some_and(|c| at < c.timer_at) {
            self.set_timer(key, at);
        }
    }

    pub(super) fn set_timer(&mut self, key: usize, at: u64) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.timer_at = at;
            // Keys fit: `--max-conns` is capped far below u32::MAX.
            self.timers.insert(at, (key as u32, conn.id));
        }
        // The wheel has no cancel: entries of past deadlines and gone
        // connections wait in it until due, which with long timeouts and
        // churn would be without bound. Each connection has one live entry,
        // so once stale ones are most of the wheel they are swept out (the
        // sweep costs no more than the inserts that made them).
        if self.timers.len() > 2 * self.conns.len() + STALE_TIMERS_SWEPT_AT {
            let conns = &self.conns;
            self.timers.retain(|deadline, (key, id)| {
                conns
                    .get(key as usize)
                    .is_some_and(|c| c.id == id && c.timer_at == deadline)
            });
        }
    }

    /// Acts on due timers. An entry is live only if its connection still has
    /// the same id (keys are reused) and still waits for that deadline.
    pub(super) fn expire_timers(&mut self, now: u64) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for &(deadline, (key, id)) in &fired {
            let key = key as usize;
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.id != id || conn.timer_at != deadline {
                continue;
            }
            match conn.phase {
                Phase::Handshaking { .. } | Phase::AdminBody(_) => {
                    self.stats.handshake_timeouts += 1;
                    self.drop_conn(key);
                }
                Phase::Open { .. } => self.keepalive(key, now),
                Phase::Closing { .. } => {
                    self.stats.close_timeouts += 1;
                    self.drop_conn(key);
                }
                Phase::Draining { .. } => {
                    self.stats.linger_timeouts += 1;
                    self.drop_conn(key);
                }
                Phase::Abandoned | Phase::Closed => {}
            }
        }
        fired.clear();
        self.fired = fired;
    }

    /// Pings a connection we have not heard from in `--ping-interval`; closes
    /// one silent for `--pong-timeout`. Also frees an idle connection's queue.
    pub(super) fn keepalive(&mut self, key: usize, now: u64) {
        // The same timer serves a catch-up waiting too long for Redis.
        self.catch_up_timeout(key, now);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.outbox.release_if_empty();
        let silent = now.saturating_sub(conn.last_heard);
        let last_heard = conn.last_heard;
        if silent >= self.config.pong_timeout_ms {
            return self.close(key, CloseCause::KeepaliveTimeout, now);
        }
        let next = if silent >= self.config.ping_interval_ms {
            self.queue(key, Rc::clone(&self.ping));
            last_heard + self.config.pong_timeout_ms
        } else {
            last_heard + self.config.ping_interval_ms
        };
        let catch_up = self.catching_up.get(&key).and_then(|c| c.deadline);
        self.set_timer(key, next.min(catch_up.unwrap_or(u64::MAX)));
    }
}
