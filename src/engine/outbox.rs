//! A connection's outbound queue: whole frames waiting for the socket.
//!
//! Frames are `Rc<[u8]>`, so a relayed chat is one allocation shared by every
//! recipient's queue. The driver takes the queue as `IoSlice`s for one
//! `writev` and reports how much the kernel took.
//!
//! The queue is charged what it costs in memory, not only its bytes: each
//! frame adds `FRAME_COST` for its allocation header, the allocator's rounding
//! and its queue slot. While the socket refuses bytes (the peer is not
//! reading), at most one pong waits among the frames queued since: a new
//! pong replaces it where it stands (RFC 6455 §5.5.3 allows answering only
//! the latest ping), so a flood of pings costs one pong however many chats
//! come between them. While the socket takes everything, every ping gets
//! its own pong, in order (what clients and Autobahn's 2.10 expect).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;

/// What a queued frame costs beyond its bytes: the `Rc` header (16 bytes), the
/// allocator's header and rounding (up to 32) and the queue slot (16).
pub const FRAME_COST: usize = 64;

/// Queue slots an empty outbox keeps allocated (16 bytes each).
const KEPT_QUEUE: usize = 8;

/// The first byte of a pong frame we send (FIN + opcode 0xA). HTTP answers
/// start with `H` and every other frame with another opcode, so it tells
/// pongs apart.
const PONG: u8 = 0x8A;

/// Frames queued for one connection, and how much of the first one went out.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The frame going out. Usually the only one (a reply, or one chat per
    /// turn), so it is kept here and the queue below is not allocated.
    front: Option<Rc<[u8]>>,
    /// Frames behind it, allocated only when more than one waits.
    rest: VecDeque<Rc<[u8]>>,
    /// What everything queued costs: unwritten bytes plus `FRAME_COST` per frame.
    cost: usize,
    /// Bytes of `front` already written (a frame is under 4 GiB: a message
    /// is at most 1 GiB).
    front_written: u32,
    /// Frames ever queued (wrapping): with the queue's length, where each
    /// queued frame stands.
    pushed: u32,
    /// While blocked, the number (`pushed` before it) of the pong waiting.
    /// (These fit where the struct had padding: an idle connection is no larger.)
    pong: u32,
    has_pong: bool,
    /// The last flush left bytes the socket did not take.
    blocked: bool,
}

impl Outbox {
    /// Queues a frame behind the others.
    pub fn push(&mut self, frame: Rc<[u8]>) {
        self.pushed = self.pushed.wrapping_add(1);
        self.cost += frame.len() + FRAME_COST;
        if self.front.is_none() {
            self.front = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Queues a pong. While the socket is blocked, it replaces the pong
    /// waiting (unstarted) among the frames queued since it blocked, or a
    /// pong waiting unstarted at the end of the queue.
    pub fn push_pong(&mut self, pong: Rc<[u8]>) {
        if !self.blocked {
            return self.push(pong);
        }
        let len = self.len();
        let first = self.pushed.wrapping_sub(len as u32);
        let unstarted = |at: usize| at > 0 || self.front_written == 0;
        let tracked = Some(self.pong.wrapping_sub(first) as usize)
            .filter(|&at| self.has_pong && at < len && unstarted(at));
        let last = len
            .checked_sub(1)
            .filter(|&at| unstarted(at) && self.get(at).first() == Some(&PONG));
        match tracked.or(last) {
            Some(at) => {
                let slot = match at {
                    0 => self.front.as_mut(),
                    at => self.rest.get_mut(at - 1),
                };
                if let Some(slot) = slot {
                    self.cost = self.cost - slot.len() + pong.len();
                    *slot = pong;
                }
                self.pong = first.wrapping_add(at as u32);
            }
            None => {
                self.push(pong);
                self.pong = self.pushed.wrapping_sub(1);
            }
        }
        self.has_pong = true;
    }

    /// Frames queued.
    fn len(&self) -> usize {
        self.rest.len() + usize::from(self.front.is_some())
    }

    /// The frame at `at` in the queue (0: the one going out); empty if none.
    fn get(&self, at: usize) -> &[u8] {
        let frame = match at {
            0 => self.front.as_ref(),
            at => self.rest.get(at - 1),
        };
        frame.map_or(&[], |f| &f[..])
    }

    /// Records how a flush ended: `blocked` if the socket left bytes queued.
    pub fn set_blocked(&mut self, blocked: bool) {
        self.blocked = blocked;
        self.has_pong &= blocked;
    }

    /// What the queue costs in memory (its backlog for `--max-backlog`).
    pub fn cost(&self) -> usize {
        self.cost
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.front.is_none()
    }

    /// Frees the queue's memory if it is empty (for idle connections).
    pub fn release_if_empty(&mut self) {
        if self.rest.is_empty() {
            self.rest = VecDeque::new();
        }
    }

    /// Fills `out` with the unwritten bytes in order; returns how many slices it used.
    pub fn transmit<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let Some(front) = &self.front else {
            return 0;
        };
        let queued = [&front[self.front_written as usize..]]
            .into_iter()
            .chain(self.rest.iter().map(|f| &f[..]));
        let mut count = 0;
        for (slot, bytes) in out.iter_mut().zip(queued) {
            *slot = IoSlice::new(bytes);
            count += 1;
        }
        count
    }

    /// Drops the first `written` bytes, which the socket took.
    pub fn advance(&mut self, mut written: usize) {
        while let Some(front) = &self.front {
            let left = front.len() - self.front_written as usize;
            if written < left {
                self.front_written += written as u32;
                self.cost -= written;
                return;
            }
            written -= left;
            self.cost -= left + FRAME_COST;
            self.front_written = 0;
            self.front = self.rest.pop_front();
        }
        // All out: a queue grown by a burst (a history replay, a slow spell)
        // is freed now rather than at the next keepalive, so a reconnect storm
        // leaves idle connections as small as before. Small ones are kept:
        // fan-out refills them every turn.
        if self.rest.capacity() > KEPT_QUEUE {
            self.rest = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes everything `outbox` offers, at most `cap` bytes per call, into `got`.
    fn drain(outbox: &mut Outbox, cap: usize, got: &mut Vec<u8>) -> usize {
        let mut calls = 0;
        loop {
            let mut slices = [IoSlice::new(&[]); 64];
            let count = outbox.transmit(&mut slices);
            if count == 0 {
                return calls;
            }
            calls += 1;
            let mut n = 0;
            for slice in &slices[..count] {
                let take = slice.len().min(cap - n);
                got.extend_from_slice(&slice[..take]);
                n += take;
            }
            outbox.advance(n);
        }
    }

    fn frames() -> Vec<Rc<[u8]>> {
        (0..200u8)
            .map(|i| Rc::from(vec![i; 1 + usize::from(i % 7)]))
            .collect()
    }

    #[test]
    fn partial_writes_keep_order_and_charge_every_frame() {
        let all: Vec<u8> = frames().iter().flat_map(|f| f.iter().copied()).collect();
        for cap in [1, 3, 64, 10_000] {
            let mut out = Outbox::default();
            for f in frames() {
                out.push(f);
            }
            assert_eq!(out.cost(), all.len() + 200 * FRAME_COST);
            let mut got = Vec::new();
            drain(&mut out, cap, &mut got);
            assert_eq!(got, all, "cap {cap}");
            assert_eq!(out.cost(), 0);
            assert!(out.is_empty() && out.rest.is_empty());
            // The burst's queue is freed once it is all out.
            assert_eq!(out.rest.capacity(), 0);
        }
    }

    #[test]
    fn a_single_frame_needs_no_queue_allocation() {
        let mut out = Outbox::default();
        out.push(Rc::from(&b"one"[..]));
        assert_eq!(out.rest.capacity(), 0);
        let mut got = Vec::new();
        drain(&mut out, 2, &mut got);
        assert_eq!(got, b"one");
    }

    #[test]
    fn pongs_replace_each_other_only_while_the_socket_is_blocked() {
        let pong = |n: u8| -> Rc<[u8]> { Rc::from(vec![PONG, 1, n]) };
        let mut out = Outbox::default();
        // The socket takes everything: each ping gets its own pong.
        out.push_pong(pong(1));
        out.push_pong(pong(2));
        assert_eq!(out.cost(), 2 * (3 + FRAME_COST));
        // Blocked: a new pong replaces the one waiting at the end, even the first.
        out.set_blocked(true);
        out.push_pong(pong(3));
        assert_eq!(out.cost(), 2 * (3 + FRAME_COST));
        out.push(Rc::from(&b"chat"[..]));
        for n in 4..100 {
            out.push_pong(pong(n));
        }
        // One pong waits however many chats come between the pings: the
        // latest, where the first stood.
        for n in 100..200 {
            out.push(Rc::from(&b"chat"[..]));
            out.push_pong(pong(n));
        }
        assert_eq!(out.cost(), 3 + 3 + 101 * 4 + 103 * FRAME_COST);
        let mut got = Vec::new();
        drain(&mut out, 1, &mut got);
        let chats = b"chat".repeat(101);
        assert_eq!(got, [&[PONG, 1, 1][..], &[PONG, 1, 199], &chats].concat());
        // A pong that started going out is never replaced.
        let mut out = Outbox::default();
        out.set_blocked(true);
        out.push_pong(pong(1));
        out.advance(1);
        out.push_pong(pong(2));
        let mut got = Vec::new();
        drain(&mut out, 64, &mut got);
        assert_eq!(got, [&[1, 1][..], &[PONG, 1, 2]].concat());
    }

    #[test]
    fn the_pong_bookkeeping_costs_no_memory() {
        // It fits where the struct had padding (a usize `front_written`, a bool).
        assert_eq!(std::mem::size_of::<Outbox>(), 72);
    }

    #[test]
    fn many_frames_go_out_in_few_calls() {
        let mut out = Outbox::default();
        for f in frames() {
            out.push(f);
        }
        let calls = drain(&mut out, usize::MAX, &mut Vec::new());
        assert_eq!(calls, 200usize.div_ceil(64));
    }
}
