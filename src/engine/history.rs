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

/// What a client that knew the room up to some chat can be given.
#[derive(Debug, PartialEq, Eq)]
pub enum Since<'a> {
    /// Every chat after it, oldest first (perhaps none).
    All(Vec<&'a Rc<[u8]>>),
    /// Some chats after it are gone; these are what is kept after it.
    Gap(Vec<&'a Rc<[u8]>>),
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

    /// Records the next chat (its frame, which carries `next_id`), keeping it
    /// if the bounds allow and dropping the oldest to make room.
    pub fn push(&mut self, frame: Rc<[u8]>) {
        self.last += 1;
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

    /// The `count` most recent chats kept, oldest first.
    pub fn recent(&self, count: usize) -> Vec<&Rc<[u8]>> {
        let skip = self.chats.len().saturating_sub(count);
        self.chats.iter().skip(skip).collect()
    }

    /// The chats after id `seen`, and whether that is all of them.
    pub fn since(&self, seen: u64) -> Since<'_> {
        let first_kept = self.last + 1 - self.chats.len() as u64;
        if seen + 1 >= first_kept {
            let skip = (seen + 1 - first_kept) as usize;
            Since::All(self.chats.iter().skip(skip).collect())
        } else {
            Since::Gap(self.chats.iter().collect())
        }
    }

    /// Chats kept.
    pub fn len(&self) -> usize {
        self.chats.len()
    }

    /// Whether no chat is kept.
    pub fn is_empty(&self) -> bool {
        self.chats.is_empty()
    }

    /// What the chats kept cost in memory, by the `--history-bytes` count.
    pub fn cost(&self) -> usize {
        self.cost
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

    fn ids(chats: &[&Rc<[u8]>]) -> Vec<u64> {
        chats
            .iter()
            .map(|c| u64::from_be_bytes(c[..8].try_into().unwrap()))
            .collect()
    }

    #[test]
    fn keeps_the_newest_within_both_bounds() {
        // The count bound.
        let mut h = History::new(3, usize::MAX);
        for n in 1..=10 {
            assert_eq!(h.next_id(), n);
            h.push(chat(n, 100));
        }
        assert_eq!((h.last(), h.len()), (10, 3));
        assert_eq!(ids(&h.recent(2)), [9, 10]);
        assert_eq!(ids(&h.recent(100)), [8, 9, 10]);
        // The byte bound: five chats of 100 bytes fit; a bigger one pushes out three.
        let mut h = History::new(100, 5 * (100 + FRAME_COST));
        for n in 1..=20 {
            h.push(chat(n, 100));
        }
        assert_eq!(ids(&h.recent(100)), [16, 17, 18, 19, 20]);
        h.push(chat(21, 3 * (100 + FRAME_COST) - FRAME_COST));
        assert_eq!(ids(&h.recent(100)), [19, 20, 21]);
        assert_eq!(h.cost(), 5 * (100 + FRAME_COST));
        // One that could never fit empties the ring: nothing before it can follow it.
        h.push(chat(22, 6 * (100 + FRAME_COST)));
        assert_eq!((h.len(), h.last()), (0, 22));
    }

    #[test]
    fn since_tells_a_full_recovery_from_a_gap() {
        let mut h = History::new(4, usize::MAX);
        assert_eq!(h.since(0), Since::All(vec![]));
        for n in 1..=10 {
            h.push(chat(n, 8));
        }
        // Kept: 7..=10.
        let all = |s: Since<'_>| match s {
            Since::All(c) => Ok(ids(&c)),
            Since::Gap(c) => Err(ids(&c)),
        };
        assert_eq!(all(h.since(10)), Ok(vec![]));
        assert_eq!(all(h.since(8)), Ok(vec![9, 10]));
        assert_eq!(all(h.since(6)), Ok(vec![7, 8, 9, 10]));
        assert_eq!(all(h.since(5)), Err(vec![7, 8, 9, 10]));
        assert_eq!(all(h.since(0)), Err(vec![7, 8, 9, 10]));
    }

    #[test]
    fn no_history_still_counts_ids() {
        let mut h = History::new(0, usize::MAX);
        h.push(chat(1, 8));
        h.push(chat(2, 8));
        assert_eq!((h.last(), h.len(), h.next_id()), (2, 0, 3));
        assert_eq!(h.since(2), Since::All(vec![]));
        assert!(matches!(h.since(1), Since::Gap(c) if c.is_empty()));
    }
}
