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

use super::{Action, Engine, Kept};
use crate::chat::protocol;
use crate::http::admin::Command;

/// Unpublished chats remembered in case Redis took them after all.
const MAYBE_PUBLISHED: usize = 64;

/// The engine's view of the backplane.
#[derive(Debug)]
pub struct Cluster {
    pub(super) instance: u64,
    /// Redis's epoch, while the subscription is up.
    redis: Option<Box<str>>,
    /// The id of the newest chat that came from Redis.
    redis_last: u64,
    pub(super) publisher_up: bool,
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

/// What a catch-up reads from the stream: the chats with ids after `after`
/// and up to `upto`, oldest first, as many as half of `--max-backlog` holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Read {
    pub after: u64,
    pub upto: u64,
}

/// A read of the stream: the room's epoch and newest id when it was read,
/// and the chats (id, the publisher's JSON of the chat), oldest first.
#[derive(Debug, Default)]
pub struct Stream {
    pub epoch: Box<str>,
    pub last: u64,
    pub chats: Vec<(u64, Vec<u8>)>,
    /// The read's byte budget ended it: chats of the range may follow.
    pub cut: bool,
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
    /// An admin command an instance carried out (this one's own come back
    /// too, and are skipped), read from Redis and validated like a request.
    Moderation { instance: u64, command: Command },
    /// The bans and mutes Redis keeps, read when the subscription starts.
    Kept(Vec<Kept>),
    /// The answer to `Action::ReadHistory`; `None` if the read failed.
    History {
        key: usize,
        conn: u32,
        read: Read,
        stream: Option<Stream>,
    },
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
            FromCluster::Chat { id, origin, json } => self.remote_chat(id, origin, &json, now),
            FromCluster::Moderation { instance, command } => {
                self.moderate_from_cluster(instance, &command, now);
            }
            FromCluster::Kept(kept) => self.restrictions_from_cluster(kept, now),
            FromCluster::Position { last } => {
                cluster.redis_last = cluster.redis_last.max(last);
                if cluster.ordered {
                    self.passed_over(last);
                }
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
            FromCluster::History {
                key,
                conn,
                read,
                stream,
            } => self.catch_up_read(key, conn, read, stream, now),
        }
    }

    /// Who orders the room, after a change in the link. Redis: its epoch,
    /// the ring restarted at its newest id. This instance: an epoch of its
    /// own for this outage, ids going on from the last. Every member is told
    /// the new epoch (a `joined`, `recovered: false`), so a recovery never
    /// mixes the ids of two orders; a catch-up under way ends with that
    /// `joined` (what it was sent belongs to the old order).
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
            self.end_catch_ups();
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
            None => {
                self.stats.backplane_rejected += 1;
                if self.cluster.as_ref().is_some_and(|c| c.ordered) {
                    self.passed_over(id);
                }
            }
        }
    }

    /// Redis's ids up to `id` were passed over without a chat (not valid,
    /// or not chats): the ring starts again after them, so what it holds is
    /// always every chat of a run of ids, and a catch-up across them reads
    /// the stream (which says what is missing).
    fn passed_over(&mut self, id: u64) {
        if id > self.history.last() {
            self.history.restart(id);
        }
    }

    /// The connection here that sent a chat, if it is still the same one.
    fn origin_key(&self, origin: Origin) -> Option<usize> {
        let key = origin.key as usize;
        let here = self.cluster.as_ref()?.instance == origin.instance;
        (here && self.conns.get(key)?.id == origin.conn).then_some(key)
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
