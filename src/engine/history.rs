//! The room's recent chats, for newcomers and for clients that reconnect.
//!
//! The ring holds the very frames that were relayed (`Rc<[u8]>`, shared with
//! the recipients' queues): a chat is stored once, never copied or
//! serialized again. It keeps at most `--history` chats and
//! `--history-bytes` of them (each counted as its bytes plus what a queued
//! frame costs), whichever is reached first; the oldest go first. Every chat
//! relayed gets the next id (from 1), stored or not, so ids say how many
//! chats the room has seen and a gap can be told from a quiet room.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::engine::outbox::FRAME_COST;

/// The recent chats of the room and the ids they carry.
#[derive(Debug)]
pub struct History {
    chats: VecDeque<Rc<[u8]>>,
    /// The id of the newest chat relayed (0: none yet); the ring ends with it.
    last: u64,
    /// What the chats in the ring cost, as `FRAME_COST` plus their bytes each.
    cost: usize,
    max_chats: usize,
    max_cost: usize,
}

impl History {
    /// An empty history keeping at most `max_chats` chats and `max_bytes` of them.
    pub fn new(max_chats: usize, max_bytes: usize) -> Self {
        Self {
            chats: VecDeque::new(),
            last: 0,
            cost: 0,
            max_chats,
            max_cost: max_bytes,
        }
    }

    /// The id the next chat relayed will carry.
    pub fn next_id(&self) -> u64 {
        self.last + 1
    }

    /// The id of the newest chat relayed (0: none yet).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Records chat `id` (its frame, which carries it), keeping it if the
    /// bounds allow and dropping the oldest to make room. Ids are the room's
    /// (`next_id`, or Redis's, which follow each other the same way); an id
    /// that does not follow the last starts the ring afresh, so what it
    /// holds is always a run without gaps.
    pub fn record(&mut self, id: u64, frame: Rc<[u8]>) {
        if id != self.last + 1 {
            self.restart(id.saturating_sub(1));
        }
        self.last = id;
        let cost = frame.len() + FRAME_COST;
        if self.max_chats == 0 || cost > self.max_cost {
            // It could never be kept: none before it can be served after it either.
            self.chats.clear();
            self.cost = 0;
            return;
        }
        while self.chats.len() >= self.max_chats || self.cost + cost > self.max_cost {
            let Some(oldest) = self.chats.pop_front() else {
                break;
            };
            self.cost -= oldest.len() + FRAME_COST;
        }
        self.cost += cost;
        self.chats.push_back(frame);
    }

    /// Forgets every chat kept; the room's newest id is now `last` (a new
    /// epoch, or the ids of another order).
    pub fn restart(&mut self, last: u64) {
        self.chats.clear();
        self.cost = 0;
        self.last = last;
    }

    /// Starts from a room a clean stop left: `chats` (frames, oldest first)
    /// end with id `last`; the bounds apply as if they were relayed now.
    pub fn restore(&mut self, last: u64, chats: Vec<Rc<[u8]>>) {
        let first = last + 1 - chats.len() as u64;
        self.restart(first - 1);
        for (id, frame) in (first..).zip(chats) {
            self.record(id, frame);
        }
    }

    /// The id of the oldest chat kept (`last` + 1 when none is).
    pub fn first_kept(&self) -> u64 {
        self.last + 1 - self.chats.len() as u64
    }

    /// Chat `id`'s frame, if it is kept.
    pub fn get(&self, id: u64) -> Option<&Rc<[u8]>> {
        let at = id.checked_sub(self.first_kept())?;
        self.chats.get(usize::try_from(at).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(n: u64, len: usize) -> Rc<[u8]> {
        let mut bytes = n.to_be_bytes().to_vec();
        bytes.resize(len.max(8), b'x');
        bytes.into()
    }

    /// The ids of the chats kept, read back through `get` (each frame starts with its id).
    fn kept(h: &History) -> Vec<u64> {
        (h.first_kept()..=h.last())
            .map(|id| {
                let frame = h.get(id).expect("kept");
                u64::from_be_bytes(frame[..8].try_into().unwrap())
            })
            .collect()
    }

    #[test]
    fn keeps_the_newest_within_both_bounds() {
        // The count bound.
        let mut h = History::new(3, usize::MAX);
        for n in 1..=10 {
            assert_eq!(h.next_id(), n);
            h.record(n, chat(n, 100));
        }
        assert_eq!((h.last(), h.first_kept()), (10, 8));
        assert_eq!(kept(&h), [8, 9, 10]);
        assert!(h.get(7).is_none() && h.get(11).is_none() && h.get(0).is_none());
        // The byte bound: five chats of 100 bytes fit; a bigger one pushes out three.
        let mut h = History::new(100, 5 * (100 + FRAME_COST));
        for n in 1..=20 {
            h.record(n, chat(n, 100));
        }
        assert_eq!(kept(&h), [16, 17, 18, 19, 20]);
        h.record(21, chat(21, 3 * (100 + FRAME_COST) - FRAME_COST));
        assert_eq!(kept(&h), [19, 20, 21]);
        assert_eq!(h.cost, 5 * (100 + FRAME_COST));
        // One that could never fit empties the ring: nothing before it can follow it.
        h.record(22, chat(22, 6 * (100 + FRAME_COST)));
        assert_eq!((h.first_kept(), h.last()), (23, 22));
        assert!(kept(&h).is_empty());
    }

    #[test]
    fn no_history_still_counts_ids() {
        let mut h = History::new(0, usize::MAX);
        h.record(1, chat(1, 8));
        h.record(2, chat(2, 8));
        assert_eq!((h.last(), h.first_kept(), h.next_id()), (2, 3, 3));
        assert!(h.get(2).is_none());
    }

    #[test]
    fn an_id_that_does_not_follow_starts_afresh() {
        let mut h = History::new(10, usize::MAX);
        for n in 1..=3 {
            h.record(n, chat(n, 8));
        }
        // Redis's ids, after some this ring never saw: no gap is ever inside it.
        h.record(7, chat(7, 8));
        assert_eq!((h.last(), kept(&h)), (7, vec![7]));
        assert!(h.get(3).is_none());
        h.restart(40);
        assert_eq!((h.last(), h.first_kept(), h.next_id()), (40, 41, 41));
    }
}
