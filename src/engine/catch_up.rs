//! Catch-up: a join that asked for `history` or `since` gets the chats it
//! asked for, oldest first, then `joined`, before any live chat.
//!
//! The chats are fed as the joiner's socket drains, not queued at once:
//! the ring already holds the relayed frames in order, so a cursor (the id
//! of the next chat to send) is all a catch-up keeps. At most half of
//! `--max-backlog` waits in the joiner's queue at a time; each flush that
//! empties it brings the next chats. So a client that comes back within the
//! window gets every chat it missed however large they are, and its own
//! replay never makes it a slow consumer. The joiner is outside the room
//! meanwhile: chats relayed while it catches up go into the ring and reach
//! it through the cursor, so none comes twice or falls between the replay
//! and the live stream. Once the cursor passes the newest chat, `joined`
//! goes out and the joiner is in the room, in one step.
//!
//! With Redis ordering the room, the ring holds what this instance relayed,
//! under Redis's ids: a range it holds is sent from it, exactly as on a
//! single server. Chats older than the ring are read from Redis's stream
//! (`Action::ReadHistory`), one read at a time, each bounded by the same
//! half of the backlog. A chat that is in neither (gone from the ring
//! without Redis, trimmed from the stream, a read that failed or took over
//! `WAIT_MS`) is a gap: the catch-up goes on after it, and `joined` says
//! `recovered: false`.

use std::rc::Rc;

use super::{Action, Engine};
use crate::chat::protocol::{self, Catchup};
use crate::engine::cluster::{Read, Stream};

/// How long a read of Redis's stream, or the subscription reaching the id a
/// client saw on another instance, may take before the catch-up goes on
/// without it (`recovered: false`).
pub const WAIT_MS: u64 = 3_000;

/// A member being sent the chats its join asked for.
#[derive(Debug)]
pub struct CatchUp {
    /// The connection's id (keys are reused; a late Redis answer is checked).
    conn: u32,
    /// The id of the next chat to send.
    next: u64,
    /// With Redis: the id the client saw last on another instance; the
    /// catch-up ends no earlier than it, once this instance has relayed it.
    until: u64,
    /// Nothing asked for is missing so far.
    complete: bool,
    /// A `since` join (counted as a recovery).
    recovery: bool,
    /// The read of Redis's stream in flight, if any.
    reading: Option<Read>,
    /// When the read or the wait for `until` is given up.
    pub deadline: Option<u64>,
}

impl CatchUp {
    /// The id of the connection catching up.
    pub fn conn(&self) -> u32 {
        self.conn
    }

    /// It waits for the subscription to relay the id its client saw.
    pub fn awaits(&self) -> bool {
        self.until > 0
    }
}

impl Engine {
    /// Starts the catch-up of member `key` (already created, outside the
    /// room): where its cursor begins, then the first chats.
    pub(super) fn start_catch_up(&mut self, key: usize, catchup: &Catchup, now: u64) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let last = self.history.last();
        let most = self.config.history as u64;
        let recent = last + 1 - catchup.history.map_or(most, |k| k.min(most)).min(last);
        let ordered = self.cluster.as_ref().is_some_and(|c| c.ordered);
        let (next, until, complete) = match &catchup.since {
            Some((seen, epoch)) if **epoch == *self.epoch => match *seen {
                seen if seen <= last => (seen + 1, 0, true),
                // Seen on another instance, not relayed here yet: wait for
                // it (an id no room reaches just waits out `WAIT_MS`).
                seen if ordered => (seen.saturating_add(1), seen, true),
                // An id this epoch never gave: nothing is after it.
                _ => (last + 1, 0, false),
            },
            // Another epoch (a restart, Redis lost the room): the most recent
            // chats are all there is to offer.
            Some(_) => (recent, 0, false),
            None => (recent, 0, true),
        };
        let catch_up = CatchUp {
            conn: conn.id,
            next,
            until,
            complete,
            recovery: catchup.since.is_some(),
            reading: None,
            deadline: None,
        };
        self.awaiting += usize::from(catch_up.awaits());
        self.catching_up.insert(key, catch_up);
        self.stats.history_joins += 1;
        self.feed(key, now);
    }

    /// Queues the next chats of `key`'s catch-up while its queue is under
    /// half of `--max-backlog`; finishes it once the cursor passes the
    /// newest chat. Called at the join, after each flush of the joiner, when
    /// a read from Redis answers, and (for one waiting for `until`) after a
    /// relay.
    pub(super) fn feed(&mut self, key: usize, now: u64) {
        let half = self.config.max_backlog / 2;
        loop {
            let (Some(c), Some(conn)) = (self.catching_up.get_mut(&key), self.conns.get(key))
            else {
                return;
            };
            if c.reading.is_some() || conn.outbox.cost() >= half {
                return;
            }
            let last = self.history.last();
            if c.next > last {
                if last < c.until {
                    // The subscription has not relayed what the client saw.
                    if c.deadline.is_none() {
                        c.deadline = Some(now + WAIT_MS);
                        self.wake_at(key, now + WAIT_MS);
                    }
                    return;
                }
                return self.finish_catch_up(key);
            }
            if let Some(frame) = self.history.get(c.next) {
                c.next += 1;
                let frame = Rc::clone(frame);
                self.stats.history_chats_sent += 1;
                self.queue(key, frame);
                continue;
            }
            // Older than the ring.
            let first = self.history.first_kept();
            if !self.cluster.as_ref().is_some_and(|c| c.ordered) {
                c.complete = false;
                c.next = first;
                continue;
            }
            let read = Read {
                after: c.next - 1,
                upto: first - 1,
            };
            c.reading = Some(read);
            c.deadline = Some(now + WAIT_MS);
            let conn = c.conn;
            self.stats.history_reads += 1;
            self.actions
                .push_back(Action::ReadHistory { key, conn, read });
            return self.wake_at(key, now + WAIT_MS);
        }
    }

    /// Forgets `key`'s catch-up (the member left); returns it.
    pub(super) fn drop_catch_up(&mut self, key: usize) -> Option<CatchUp> {
        let c = self.catching_up.remove(&key)?;
        self.awaiting -= usize::from(c.awaits());
        Some(c)
    }

    /// `joined` with the epoch, the newest id and whether the catch-up was
    /// complete; the member is in the room from this moment.
    fn finish_catch_up(&mut self, key: usize) {
        let Some(c) = self.drop_catch_up(key) else {
            return;
        };
        if c.recovery {
            *match c.complete {
                true => &mut self.stats.recoveries_complete,
                false => &mut self.stats.recoveries_incomplete,
            } += 1;
        }
        let joined = protocol::joined_frame(&self.epoch, self.history.last(), c.complete);
        self.queue(key, joined.into());
        let index = self.room.join(key);
        if let Some(member) = self.member_mut(key) {
            member.index = index as u32;
            member.catching_up = false;
        }
    }

    /// Feeds the catch-ups that wait for the subscription to reach the id
    /// their client saw (after a relay: the ring has grown).
    pub(super) fn feed_awaiting(&mut self, now: u64) {
        let keys: Vec<usize> = self
            .catching_up
            .iter()
            .filter(|(_, c)| c.awaits())
            .map(|(&key, _)| key)
            .collect();
        for key in keys {
            self.feed(key, now);
        }
    }

    /// `key`'s catch-up waited past its deadline: the read is given up (a
    /// gap up to the ring), or the wait for `until` (it ends where the room is).
    pub(super) fn catch_up_timeout(&mut self, key: usize, now: u64) {
        let Some(c) = self.catching_up.get_mut(&key) else {
            return;
        };
        if c.deadline.is_none_or(|at| now < at) {
            return;
        }
        c.deadline = None;
        c.complete = false;
        if c.reading.take().is_some() {
            self.stats.history_fallbacks += 1;
            c.next = c.next.max(self.history.first_kept());
        }
        if c.awaits() {
            c.until = 0;
            self.awaiting -= 1;
        }
        self.feed(key, now);
    }

    /// Every catch-up ends now, incomplete: the room's order changed (its
    /// ids are another epoch's from here on).
    pub(super) fn end_catch_ups(&mut self) {
        let keys: Vec<usize> = self.catching_up.keys().copied().collect();
        for key in keys {
            if let Some(c) = self.catching_up.get_mut(&key) {
                c.complete = false;
            }
            self.finish_catch_up(key);
        }
    }

    /// Redis's answer to the read of `key`'s catch-up: its chats are queued
    /// (checked like any chat from Redis), then the cursor goes on. A read
    /// that failed, or is of another epoch, is a gap up to the ring.
    pub(super) fn catch_up_read(
        &mut self,
        key: usize,
        conn: u32,
        read: Read,
        stream: Option<Stream>,
        now: u64,
    ) {
        let Some(c) = self
            .catching_up
            .get_mut(&key)
            .filter(|c| c.conn == conn && c.reading == Some(read))
        else {
            // The connection is gone, or the read was given up.
            return;
        };
        c.reading = None;
        c.deadline = None;
        let Some(stream) = stream.filter(|s| *s.epoch == *self.epoch) else {
            c.complete = false;
            c.next = c.next.max(self.history.first_kept());
            self.stats.history_fallbacks += 1;
            return self.feed(key, now);
        };
        let mut frames = Vec::with_capacity(stream.chats.len());
        let mut next = c.next;
        let mut complete = c.complete;
        for (id, json) in &stream.chats {
            if *id < next || *id > read.upto {
                continue;
            }
            complete &= *id == next;
            next = id + 1;
            match protocol::relayed_chat_frame(json, self.config.max_message_size, *id) {
                Some(frame) => frames.push(Rc::<[u8]>::from(frame)),
                None => {
                    self.stats.backplane_rejected += 1;
                    complete = false;
                }
            }
        }
        // Not cut short by the read's budget: what it did not return is gone.
        if !stream.cut || stream.chats.is_empty() {
            complete &= next > read.upto;
            next = next.max(read.upto + 1);
        }
        if let Some(c) = self.catching_up.get_mut(&key) {
            c.next = next;
            c.complete = complete;
        }
        self.stats.history_chats_sent += frames.len() as u64;
        for frame in frames {
            self.queue(key, frame);
        }
        self.feed(key, now);
    }
}
