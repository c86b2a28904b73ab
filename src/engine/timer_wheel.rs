//! A hashed timer wheel: O(1) insert, expiry per tick, time passed in.
//!
//! Entries carry their absolute deadline, so a delay longer than one turn of
//! the wheel survives wrap-around: it stays in its slot until a visit finds it
//! due. There is no cancel: callers check a fired entry against the state it
//! refers to and skip stale ones.

/// Timers for values of type `T`, with millisecond deadlines.
#[derive(Debug)]
pub struct TimerWheel<T> {
    slots: Vec<Vec<(u64, T)>>,
    tick_ms: u64,
    /// The next tick to expire; every earlier tick has been processed.
    next_tick: u64,
    len: usize,
}

impl<T: Copy> TimerWheel<T> {
    /// A wheel of `slots` slots of `tick_ms` each, starting at time `now`.
    pub fn new(slots: usize, tick_ms: u64, now: u64) -> Self {
        assert!(slots > 0 && tick_ms > 0, "a wheel needs slots and a tick");
        Self {
            slots: (0..slots).map(|_| Vec::new()).collect(),
            tick_ms,
            next_tick: now / tick_ms,
            len: 0,
        }
    }

    /// Schedules `value` for `deadline` (ms). It fires at the first tick boundary at or after it.
    pub fn insert(&mut self, deadline: u64, value: T) {
        let tick = deadline.div_ceil(self.tick_ms).max(self.next_tick);
        let slot = (tick % self.slots.len() as u64) as usize;
        self.slots[slot].push((deadline, value));
        self.len += 1;
    }

    /// Moves every entry due by `now` into `out` as `(deadline, value)`.
    pub fn expire(&mut self, now: u64, out: &mut Vec<(u64, T)>) {
        let n = self.slots.len() as u64;
        let last = now / self.tick_ms;
        // After a long pause one full turn visits every slot; earlier ticks add nothing.
        let first = self.next_tick.max((last + 1).saturating_sub(n));
        for tick in first..=last {
            let slot = &mut self.slots[(tick % n) as usize];
            let before = out.len();
            let mut i = 0;
            while i < slot.len() {
                if slot[i].0 <= now {
                    out.push(slot.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            self.len -= out.len() - before;
        }
        self.next_tick = self.next_tick.max(last + 1);
    }

    /// Entries in the wheel, stale ones included.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the wheel holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keeps only the entries for which `keep(deadline, value)` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(u64, T) -> bool) {
        for slot in &mut self.slots {
            slot.retain(|&(deadline, value)| keep(deadline, value));
        }
        self.len = self.slots.iter().map(Vec::len).sum();
    }

    /// When `expire` next has work: the start of the earliest non-empty tick.
    ///
    /// May be early for entries a full turn or more away (they are then
    /// skipped until due); never late.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let n = self.slots.len() as u64;
        (self.next_tick..self.next_tick + n)
            .find(|tick| !self.slots[(tick % n) as usize].is_empty())
            .map(|tick| tick * self.tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(wheel: &mut TimerWheel<u32>, now: u64) -> Vec<u32> {
        let mut out = Vec::new();
        wheel.expire(now, &mut out);
        let mut values: Vec<u32> = out.into_iter().map(|(_, v)| v).collect();
        values.sort();
        values
    }

    #[test]
    fn fires_at_the_deadline_not_before() {
        let mut w = TimerWheel::new(8, 100, 0);
        w.insert(250, 1);
        w.insert(300, 2);
        assert_eq!(fire(&mut w, 249), Vec::<u32>::new());
        assert_eq!(w.next_deadline(), Some(300));
        assert_eq!(fire(&mut w, 300), vec![1, 2]);
        assert_eq!(w.len, 0);
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn long_delays_survive_wrap_around() {
        let mut w = TimerWheel::new(4, 100, 0);
        w.insert(1_050, 7); // more than two turns of 400 ms
        let mut fired_at = Vec::new();
        for now in (0..1_300).step_by(50) {
            if fire(&mut w, now) == vec![7] {
                fired_at.push(now);
            }
        }
        // Due at 1050, fired at the next tick boundary, exactly once.
        assert_eq!(fired_at, vec![1_100]);
        assert_eq!(w.len, 0);
    }

    #[test]
    fn a_long_pause_fires_everything_due_once() {
        let mut w = TimerWheel::new(16, 10, 0);
        for i in 0..100 {
            w.insert(i * 7, i as u32);
        }
        w.insert(100_000, 999);
        let fired = fire(&mut w, 50_000);
        assert_eq!(fired, (0..100).collect::<Vec<u32>>());
        assert_eq!(w.len, 1);
        assert_eq!(fire(&mut w, 100_000), vec![999]);
    }

    #[test]
    fn retain_drops_what_it_is_told_to() {
        let mut w = TimerWheel::new(8, 100, 0);
        for i in 0..100u32 {
            w.insert(u64::from(i) * 50, i);
        }
        w.retain(|_, v| v % 10 == 0);
        assert_eq!(w.len(), 10);
        assert_eq!(
            fire(&mut w, 10_000),
            (0..100).step_by(10).collect::<Vec<u32>>()
        );
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadlines_fire_at_the_next_expiry() {
        let mut w = TimerWheel::new(8, 100, 1_000);
        fire(&mut w, 1_000);
        w.insert(500, 3);
        assert_eq!(w.next_deadline(), Some(1_100));
        assert_eq!(fire(&mut w, 1_100), vec![3]);
    }
}
