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

    /// The `count` most recent chats kept, oldest first.
    pub fn recent(&self, count: usize) -> Vec<&Rc<[u8]>> {
        let skip = self.chats.len().saturating_sub(count);
        self.chats.iter().skip(skip).collect()
    }

    /// The chats after id `seen`, at most the newest `limit` of them, and
    /// whether that is all of them (else a gap: some are gone or left out).
    pub fn since(&self, seen: u64, limit: usize) -> Since<'_> {
        let first_kept = self.last + 1 - self.chats.len() as u64;
        let after = if seen + 1 >= first_kept {
            (seen + 1 - first_kept) as usize
        } else {
            0
        };
        let skip = after.max(self.chats.len().saturating_sub(limit));
        let chats = self.chats.iter().skip(skip).collect();
        if seen + 1 >= first_kept && skip == after {
            Since::All(chats)
        } else {
            Since::Gap(chats)
        }
    }

    /// Chat `id`'s frame, if it is kept.
    pub fn get(&self, id: u64) -> Option<&Rc<[u8]>> {
        let first_kept = self.last + 1 - self.chats.len() as u64;
        let at = id.checked_sub(first_kept)?;
        self.chats.get(usize::try_from(at).ok()?)
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
            h.record(n, chat(n, 100));
        }
        assert_eq!((h.last(), h.len()), (10, 3));
        assert_eq!(ids(&h.recent(2)), [9, 10]);
        assert_eq!(ids(&h.recent(100)), [8, 9, 10]);
        // The byte bound: five chats of 100 bytes fit; a bigger one pushes out three.
        let mut h = History::new(100, 5 * (100 + FRAME_COST));
        for n in 1..=20 {
            h.record(n, chat(n, 100));
        }
        assert_eq!(ids(&h.recent(100)), [16, 17, 18, 19, 20]);
        h.record(21, chat(21, 3 * (100 + FRAME_COST) - FRAME_COST));
        assert_eq!(ids(&h.recent(100)), [19, 20, 21]);
        assert_eq!(h.cost(), 5 * (100 + FRAME_COST));
        // One that could never fit empties the ring: nothing before it can follow it.
        h.record(22, chat(22, 6 * (100 + FRAME_COST)));
        assert_eq!((h.len(), h.last()), (0, 22));
    }

    #[test]
    fn since_tells_a_full_recovery_from_a_gap() {
        let mut h = History::new(4, usize::MAX);
        assert_eq!(h.since(0, usize::MAX), Since::All(vec![]));
        for n in 1..=10 {
            h.record(n, chat(n, 8));
        }
        // Kept: 7..=10.
        let all = |s: Since<'_>| match s {
            Since::All(c) => Ok(ids(&c)),
            Since::Gap(c) => Err(ids(&c)),
        };
        assert_eq!(all(h.since(10, usize::MAX)), Ok(vec![]));
        assert_eq!(all(h.since(8, usize::MAX)), Ok(vec![9, 10]));
        assert_eq!(all(h.since(6, usize::MAX)), Ok(vec![7, 8, 9, 10]));
        assert_eq!(all(h.since(5, usize::MAX)), Err(vec![7, 8, 9, 10]));
        assert_eq!(all(h.since(0, usize::MAX)), Err(vec![7, 8, 9, 10]));
        // A limit keeps the newest, and what it leaves out is a gap.
        assert_eq!(all(h.since(6, 2)), Err(vec![9, 10]));
        assert_eq!(all(h.since(8, 2)), Ok(vec![9, 10]));
    }

    #[test]
    fn no_history_still_counts_ids() {
        let mut h = History::new(0, usize::MAX);
        h.record(1, chat(1, 8));
        h.record(2, chat(2, 8));
        assert_eq!((h.last(), h.len(), h.next_id()), (2, 0, 3));
        assert_eq!(h.since(2, usize::MAX), Since::All(vec![]));
        assert!(matches!(h.since(1, usize::MAX), Since::Gap(c) if c.is_empty()));
    }

    #[test]
    fn an_id_that_does_not_follow_starts_afresh() {
        let mut h = History::new(10, usize::MAX);
        for n in 1..=3 {
            h.record(n, chat(n, 8));
        }
        // Redis's ids, after some this ring never saw: no gap is ever inside it.
        h.record(7, chat(7, 8));
        assert_eq!((h.last(), ids(&h.recent(10))), (7, vec![7]));
        assert!(matches!(h.since(3, usize::MAX), Since::Gap(_)));
        assert_eq!(h.since(6, usize::MAX), Since::All(h.recent(10)));
        h.restart(40);
        assert_eq!((h.last(), h.len(), h.next_id()), (40, 0, 41));
    }
}
