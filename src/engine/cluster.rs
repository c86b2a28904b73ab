//! What the Redis backplane tells the engine (with `--redis`), and whose
//! order chats are relayed in.
//!
//! With Redis reachable, Redis orders the room: a chat accepted here is only
//! published; every instance, this one included, relays chats as they come
//! back from Redis, each with the id Redis gave it, so every client of every
//! instance sees one order and one set of ids, and the epoch is Redis's.
//! Without Redis (either connection down), this instance orders its own
//! chats as a single server does, under an epoch of its own, and chats
//! from Redis that still arrive are relayed in arrival order with local ids.

use std::collections::VecDeque;
use std::rc::Rc;

use super::outbox::FRAME_COST;
use super::{Action, Engine};
use crate::chat::protocol::{self, Catchup};

/// How long a join waits for its history from Redis before it is answered
/// from this instance's ring instead (`recovered: false`).
const WAIT_MS: u64 = 3_000;
/// Unpublished chats remembered in case Redis took them after all.
const MAYBE_PUBLISHED: usize = 64;

/// The engine's view of the backplane.
#[derive(Debug)]
pub struct Cluster {
    instance: u64,
    /// Redis's epoch, while the subscription is up.
    redis: Option<Box<str>>,
    /// The id of the newest chat that came from Redis.
    redis_last: u64,
    publisher_up: bool,
    /// Redis orders the room: both connections are up.
    pub ordered: bool,
    /// This instance's own epoch; each outage after the first gets another.
    local_base: Box<str>,
    outages: u64,
    /// Chats published from here so far (`Origin::seq`).
    published: u64,
    /// Chats relayed here as unpublished that Redis may have taken anyway
    /// (the newest few: only those in flight when a connection failed).
    maybe_published: VecDeque<u64>,
}

impl Cluster {
    /// Not linked yet: the instance orders its own chats under `local_epoch`.
    pub fn new(instance: u64, local_epoch: &str) -> Self {
        Self {
            instance,
            redis: None,
            redis_last: 0,
            publisher_up: false,
            ordered: false,
            local_base: local_epoch.into(),
            outages: 0,
            published: 0,
            maybe_published: VecDeque::new(),
        }
    }

    /// "redis" or "local": who orders the room now, for `/stats`.
    pub fn order(&self) -> &'static str {
        if self.ordered { "redis" } else { "local" }
    }
}

/// A join waiting for its history from Redis. Live chats relayed meanwhile
/// are held (shared frames, with their ids) and merged after the replay.
#[derive(Debug)]
pub struct Waiting {
    conn: u32,
    /// When it is answered from the ring instead.
    pub deadline: u64,
    asked: Catchup,
    read: Read,
    held: Vec<(u64, Rc<[u8]>)>,
    /// What the held chats and the answer cost, as a queue would charge them.
    pub held_cost: usize,
    /// The stream's answer, kept until this instance's subscription has
    /// relayed the newest chat it read (else that chat would come again live).
    answer: Option<Answer>,
}

/// A history read turned into the frames the joiner will get.
#[derive(Debug)]
struct Answer {
    /// The newest id in the room when Redis read it.
    last: u64,
    frames: Vec<(u64, Rc<[u8]>)>,
    /// It holds every chat asked for.
    complete: bool,
}

/// Who sent a chat that went through Redis: the instance, the connection on
/// it (its key and connection id), the instance's count of chats it
/// published (so a retried publish runs once), and whether the instance
/// already relayed it to its own members (it was accepted while Redis did
/// not order the room).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    pub instance: u64,
    pub key: u32,
    pub conn: u32,
    pub seq: u64,
    pub relayed_here: bool,
}

impl Origin {
    /// `INSTANCE-KEY-CONN-SEQ-R` (or `-L` if relayed here), in hex: no spaces.
    pub fn encode(&self) -> String {
        let mark = if self.relayed_here { 'L' } else { 'R' };
        format!(
            "{:016x}-{:x}-{:x}-{:x}-{mark}",
            self.instance, self.key, self.conn, self.seq
        )
    }

    /// The origin in `text`, if it is one.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(text).ok()?;
        let mut parts = text.split('-');
        fn hex(part: Option<&str>) -> Option<&str> {
            part.filter(|p| (1..=16).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_hexdigit()))
        }
        let instance = u64::from_str_radix(hex(parts.next())?, 16).ok()?;
        let key = u32::from_str_radix(hex(parts.next())?, 16).ok()?;
        let conn = u32::from_str_radix(hex(parts.next())?, 16).ok()?;
        let seq = u64::from_str_radix(hex(parts.next())?, 16).ok()?;
        let relayed_here = match parts.next()? {
            "L" => true,
            "R" => false,
            _ => return None,
        };
        parts.next().is_none().then_some(Self {
            instance,
            key,
            conn,
            seq,
            relayed_here,
        })
    }
}

/// What to read from the stream for a join.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    /// Every chat after this id (at most `--history` of them, the newest).
    Since(u64),
    /// The most recent chats, at most this many.
    Recent(u64),
}

/// A read of the stream: the room's epoch and newest id when it was read,
/// and the chats (id, origin's JSON of the chat), oldest first.
#[derive(Debug, Default)]
pub struct Stream {
    pub epoch: Box<str>,
    pub last: u64,
    pub chats: Vec<(u64, Vec<u8>)>,
}

/// A message from the backplane's threads, in the order they sent it.
#[derive(Debug)]
pub enum FromCluster {
    /// The subscription is up: the room's epoch in Redis and the id of the
    /// newest chat before the ones that follow. Chats after it come next.
    Up { epoch: Box<str>, last: u64 },
    /// The subscriber passed over stream entries up to `last` that were not
    /// chats (malformed, oversized): the engine's place in the stream is there.
    Position { last: u64 },
    /// The subscription is down: nothing arrives from Redis until `Up`.
    Down,
    /// The publishing connection came up or went down.
    Publisher { up: bool },
    /// A chat in Redis's order, with its id; not yet trusted.
    Chat {
        id: u64,
        origin: Origin,
        json: Vec<u8>,
    },
    /// A chat accepted here that could not be published: relayed here
    /// instead. If `maybe_published` (a command failed after it was sent),
    /// it may still come back from Redis, and is then not relayed again.
    Unpublished {
        origin: Origin,
        json: Vec<u8>,
        maybe_published: bool,
    },
    /// The answer to `Action::ReadHistory`; `None` if the read failed.
    History {
        key: usize,
        conn: u32,
        stream: Option<Stream>,
    },
}

impl Waiting {
    /// The id of the connection that waits.
    pub fn conn(&self) -> u32 {
        self.conn
    }
}

impl Engine {
    /// A chat accepted from member `key` (its frame carries the next local
    /// id). Alone, or without Redis, it is relayed here at once; with Redis
    /// ordering the room it is only published, and relayed when it comes
    /// back with Redis's id (to everyone here but its sender).
    pub(super) fn accept_chat(&mut self, key: usize, frame: Rc<[u8]>, now: u64) {
        let id = self.history.next_id();
        let (Some(cluster), Some(conn)) = (self.cluster.as_mut(), self.conns.get(key)) else {
            return self.relay(Some(key), id, frame, now);
        };
        cluster.published += 1;
        let origin = Origin {
            instance: cluster.instance,
            key: key as u32,
            conn: conn.id,
            seq: cluster.published,
            relayed_here: !cluster.ordered,
        };
        let ordered = cluster.ordered;
        if cluster.publisher_up {
            let frame = Rc::clone(&frame);
            self.actions.push_back(Action::Publish { frame, origin });
        }
        if !ordered {
            self.relay(Some(key), id, frame, now);
        }
    }

    /// What the backplane reports, in the order its threads sent it.
    pub fn handle_cluster(&mut self, message: FromCluster, now: u64) {
        let Some(cluster) = self.cluster.as_mut() else {
            return;
        };
        match message {
            FromCluster::Up { epoch, last } => {
                let changed = cluster.redis.as_deref() != Some(&*epoch);
                cluster.redis = Some(epoch);
                cluster.redis_last = last;
                self.reorder(changed);
            }
            FromCluster::Down => {
                cluster.redis = None;
                self.reorder(false);
            }
            FromCluster::Publisher { up } => {
                cluster.publisher_up = up;
                self.reorder(false);
            }
            FromCluster::Chat { id, origin, json } => {
                self.remote_chat(id, origin, &json, now);
                self.finish_caught_up();
            }
            FromCluster::Position { last } => {
                cluster.redis_last = cluster.redis_last.max(last);
                self.finish_caught_up();
            }
            FromCluster::Unpublished {
                origin,
                json,
                maybe_published,
            } => {
                if maybe_published {
                    if cluster.maybe_published.len() == MAYBE_PUBLISHED {
                        cluster.maybe_published.pop_front();
                    }
                    cluster.maybe_published.push_back(origin.seq);
                }
                // The publisher lost Redis: this instance orders its chats again.
                cluster.publisher_up = false;
                self.reorder(false);
                if origin.relayed_here {
                    return;
                }
                let sender = self.origin_key(origin);
                let id = self.history.next_id();
                match protocol::relayed_chat_frame(&json, self.config.max_message_size, id) {
                    Some(frame) => self.relay(sender, id, frame.into(), now),
                    None => self.stats.backplane_rejected += 1,
                }
            }
            FromCluster::History { key, conn, stream } => self.answered(key, conn, stream),
        }
    }

    /// Who orders the room, after a change in the link. Redis: its epoch,
    /// the ring restarted at its newest id. This instance: an epoch of its
    /// own for this outage, ids going on from the last. Every member is told
    /// the new epoch (a `joined`, `recovered: false`), so a recovery never
    /// mixes the ids of two orders. A join still waiting for the stream
    /// across a change is answered from the ring now (its read belongs to
    /// the old order).
    fn reorder(&mut self, epoch_changed: bool) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let ordered = c.redis.is_some() && c.publisher_up;
        let changed = ordered != c.ordered || (ordered && epoch_changed);
        if ordered && changed {
            self.epoch = c.redis.clone().unwrap_or_default();
            self.history.restart(c.redis_last);
        } else if changed {
            c.outages += 1;
            self.epoch = format!("{}.{}", c.local_base, c.outages).into();
        }
        c.ordered = ordered;
        if changed {
            // Members already in: their ids are of another epoch from now on.
            // One `joined` (built once, shared) says which, and that chats
            // may be missing (during an outage, other instances' are).
            let joined: Rc<[u8]> =
                protocol::joined_frame(&self.epoch, self.history.last(), false).into();
            let members: Vec<usize> = self.room.members().to_vec();
            for key in members {
                if self.conns.get(key).is_some_and(|c| !c.plain) {
                    self.queue(key, Rc::clone(&joined));
                }
            }
            let keys: Vec<usize> = self.waiting.keys().copied().collect();
            for key in keys {
                self.finish_waiting(key, false);
            }
        }
    }

    /// A chat from Redis (any instance's, this one's too), in Redis's order.
    fn remote_chat(&mut self, id: u64, origin: Origin, json: &[u8], now: u64) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if id <= c.redis_last {
            self.stats.backplane_duplicates += 1;
            return;
        }
        c.redis_last = id;
        let mine = origin.instance == c.instance;
        if mine && origin.relayed_here {
            // Relayed here when it was accepted (Redis did not order the room then).
            return;
        }
        if let Some(at) = c
            .maybe_published
            .iter()
            .position(|&seq| mine && seq == origin.seq)
        {
            // Relayed here when its publishing seemed to fail.
            c.maybe_published.remove(at);
            return;
        }
        let id = if c.ordered {
            id
        } else {
            self.history.next_id()
        };
        let sender = self.origin_key(origin);
        match protocol::relayed_chat_frame(json, self.config.max_message_size, id) {
            Some(frame) => self.relay(sender, id, frame.into(), now),
            None => self.stats.backplane_rejected += 1,
        }
    }

    /// The connection here that sent a chat, if it is still the same one.
    fn origin_key(&self, origin: Origin) -> Option<usize> {
        let key = origin.key as usize;
        let here = self.cluster.as_ref()?.instance == origin.instance;
        (here && self.conns.get(key)?.id == origin.conn).then_some(key)
    }

    /// A join asking for history while Redis orders the room: asks the
    /// backplane to read the stream and holds the member's live chats until
    /// the answer (or `WAIT_MS`).
    pub(super) fn start_waiting(&mut self, key: usize, catchup: &Catchup, now: u64) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let most = self.config.history as u64;
        let read = match &catchup.since {
            // Ids another instance gave are ids here too: the stream decides.
            Some((seen, epoch)) if **epoch == *self.epoch => Read::Since(*seen),
            // Another epoch: the history is gone; the most recent instead.
            _ => Read::Recent(catchup.history.map_or(most, |k| k.min(most))),
        };
        let (conn, deadline) = (conn.id, now + WAIT_MS);
        self.waiting.insert(
            key,
            Waiting {
                conn,
                deadline,
                asked: catchup.clone(),
                read,
                held: Vec::new(),
                held_cost: 0,
                answer: None,
            },
        );
        self.stats.history_reads += 1;
        self.actions
            .push_back(Action::ReadHistory { key, conn, read });
        if self.conns.get(key).is_some_and(|c| deadline < c.timer_at) {
            self.set_timer(key, deadline);
        }
    }

    /// Holds a relayed chat for every join waiting for the stream (after the
    /// room got it). A join whose held chats and answer pass half of
    /// `--max-backlog` stops waiting: it is answered with what it has.
    pub(super) fn hold(&mut self, sender: Option<usize>, id: u64, frame: &Rc<[u8]>) {
        let limit = self.config.max_backlog / 2;
        let mut over = Vec::new();
        for (&key, waiting) in &mut self.waiting {
            if Some(key) == sender {
                continue;
            }
            waiting.held_cost += frame.len() + FRAME_COST;
            waiting.held.push((id, Rc::clone(frame)));
            if waiting.held_cost > limit {
                over.push(key);
            }
        }
        for key in over {
            self.finish_waiting(key, true);
        }
    }

    /// The backplane's answer to a history read: the join gets it once this
    /// instance has relayed the newest chat the read saw (at once, mostly:
    /// the subscription is rarely behind a read).
    fn answered(&mut self, key: usize, conn: u32, stream: Option<Stream>) {
        let Some(waiting) = self.waiting.get(&key).filter(|w| w.conn == conn) else {
            return;
        };
        let (read, recovery) = (waiting.read, waiting.asked.since.is_some());
        let answer = stream
            .filter(|s| *s.epoch == *self.epoch)
            .map(|s| self.answer(s, read, recovery));
        let here = self.cluster.as_ref().map_or(0, |c| c.redis_last);
        let Some(waiting) = self.waiting.get_mut(&key) else {
            return;
        };
        let mut wait = answer.as_ref().is_some_and(|a| a.last > here);
        if let Some(answer) = &answer {
            waiting.held_cost += answer
                .frames
                .iter()
                .map(|(_, f)| f.len() + FRAME_COST)
                .sum::<usize>();
        }
        waiting.answer = answer;
        wait &= waiting.held_cost <= self.config.max_backlog / 2;
        if !wait {
            self.finish_waiting(key, true);
        }
    }

    /// The stream's chats as frames, the newest that fit in half the backlog
    /// (as a replay from the ring), and whether they are all that was asked.
    fn answer(&mut self, stream: Stream, read: Read, recovery: bool) -> Answer {
        let count = stream.chats.len() as u64;
        let mut complete = match read {
            Read::Since(seen) => seen <= stream.last && count == stream.last - seen,
            // Asked for `since` but read the most recent: the epoch was another.
            Read::Recent(k) => !recovery && count >= k.min(stream.last),
        };
        let budget = self.config.max_backlog / 2;
        let mut spent = 0;
        let mut frames = Vec::with_capacity(stream.chats.len());
        for (id, json) in stream.chats.iter().rev() {
            // The ring holds what this instance relayed in Redis's order: the
            // same chats, made into frames and checked once already.
            let frame = match self.history.get(*id) {
                Some(kept) => Rc::clone(kept),
                None => match protocol::relayed_chat_frame(json, self.config.max_message_size, *id)
                {
                    Some(frame) => Rc::from(frame),
                    None => {
                        self.stats.backplane_rejected += 1;
                        complete = false;
                        continue;
                    }
                },
            };
            spent += frame.len() + FRAME_COST;
            if spent > budget {
                complete = false;
                break;
            }
            frames.push((*id, frame));
        }
        frames.reverse();
        Answer {
            last: stream.last,
            frames,
            complete,
        }
    }

    /// Answers the waiting joins whose read this instance has caught up with.
    fn finish_caught_up(&mut self) {
        if self.waiting.is_empty() {
            return;
        }
        let here = self.cluster.as_ref().map_or(0, |c| c.redis_last);
        let ready: Vec<usize> = self
            .waiting
            .iter()
            .filter(|(_, w)| w.answer.as_ref().is_some_and(|a| a.last <= here))
            .map(|(&key, _)| key)
            .collect();
        for key in ready {
            self.finish_waiting(key, true);
        }
    }

    /// Answers a waiting join, with the stream's answer if it came and
    /// `use_answer`: the chats it read that were relayed here, `joined`,
    /// then the held chats newer than those (none twice, none missing;
    /// newer ones the read saw come live). Else from this instance's ring,
    /// `recovered: false`. Then it is in the room.
    pub(super) fn finish_waiting(&mut self, key: usize, use_answer: bool) {
        let Some(mut waiting) = self.waiting.remove(&key) else {
            return;
        };
        let recovery = waiting.asked.since.is_some();
        match waiting.answer.take().filter(|_| use_answer) {
            Some(answer) => {
                let here = self.cluster.as_ref().map_or(0, |c| c.redis_last);
                let upto = answer.last.min(here);
                let frames: Vec<Rc<[u8]>> = answer
                    .frames
                    .into_iter()
                    .filter(|(id, _)| *id <= upto)
                    .map(|(_, frame)| frame)
                    .collect();
                self.replay(key, &frames, answer.complete, upto, recovery);
                for (id, frame) in waiting.held {
                    if id > upto {
                        self.queue(key, frame);
                    }
                }
            }
            None => {
                self.stats.history_fallbacks += 1;
                // The ring has every chat relayed here, the held ones too.
                let (chats, _) = self.local_history(&waiting.asked);
                self.replay(key, &chats, false, self.history.last(), recovery);
            }
        }
        let index = self.room.join(key);
        if let Some(member) = self.member_mut(key) {
            member.index = index;
            member.waiting = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_go_through_text_and_nothing_else_parses() {
        let origin = Origin {
            instance: 0xabc,
            key: 7,
            conn: 0xffff_ffff,
            seq: 0x10,
            relayed_here: true,
        };
        let text = origin.encode();
        assert_eq!(text, "0000000000000abc-7-ffffffff-10-L");
        assert_eq!(Origin::parse(text.as_bytes()), Some(origin));
        for bad in [
            "",
            "abc",
            "abc-1-2-3",
            "abc-1-2-3-X",
            "abc-1-2-3-R-",
            "abc--2-3-R",
            "g-1-2-3-R",
            "abc-100000000-2-3-R",
            "+abc-1-2-3-R",
            "abc-1-2-R",
        ] {
            assert_eq!(Origin::parse(bad.as_bytes()), None, "{bad}");
        }
    }
}
