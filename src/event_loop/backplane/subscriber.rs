//! The subscribing thread: the room's chats in Redis's order, read from the
//! stream whenever the channel says there is more, with no gap and no
//! duplicate while the stream holds them; and the admin commands other
//! instances carried out, the same way (their own stream and channel), with
//! the bans and mutes Redis keeps read at each start of the subscription.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::link::{Reporter, connect};
use super::stream::{admin_entries, fresh_epoch, kept, raw_entry_id, stream_entries, valid_epoch};
use super::{BACKOFF, Room, ToLoop};
use crate::engine::cluster::FromCluster;
use crate::engine::moderation::{MAX_BANS, MAX_MUTES};
use crate::http::admin::Command;

/// Stream entries read per `XRANGE` when catching up.
const BACKFILL_BATCH: usize = 512;

/// The room's epoch (set if absent, with a fresh stream) and newest id.
const STATE_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
return {redis.call('HGET', KEYS[1], 'epoch'), redis.call('HGET', KEYS[1], 'offset') or '0'}
";

/// The bans and mutes in force (`ban BLOCK` / `mute NAME` → `END_MS REASON`,
/// on Redis's clock): as (field, ms left, reason), at most `ARGV[1]` of
/// them; ended ones are removed.
const KEPT_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local ends, reason = string.match(all[i + 1], '^(%d+) (.*)$')
  if ends and tonumber(ends) > now then
    if #out < tonumber(ARGV[1]) * 3 then
      table.insert(out, all[i])
      table.insert(out, string.format('%d', tonumber(ends) - now))
      table.insert(out, reason)
    end
  else
    redis.call('HDEL', KEYS[1], all[i])
  end
end
return out
";

/// Kicks and notices from the admin stream older than this (by Redis's
/// clock) are passed over: an instance back from a long outage does not
/// close or tell what no longer matters. Bans and mutes read late last only
/// the time they have left (none: passed over).
const STALE_ADMIN_MS: u64 = 60_000;

/// Receives the room's chats in Redis's order and hands them to the loop,
/// with no gap and no duplicate as long as the stream still holds them.
pub struct Subscriber {
    pub client: redis::Client,
    pub room: Room,
    /// Largest chat JSON queued for the loop; larger ones cannot be a chat
    /// this server would accept.
    pub max_message: usize,
    pub to_loop: ToLoop,
}

/// The epoch the subscriber follows and the id of the last chat it handed on.
pub struct Position {
    epoch: String,
    last: u64,
}

impl Subscriber {
    /// Subscribes, and again with backoff whenever Redis fails, until the loop is gone.
    pub fn run(&self) {
        let s = &self.to_loop.shared;
        let mut backoff = BACKOFF.0;
        let mut reporter = Reporter::new("subscriber");
        let mut position: Option<Position> = None;
        let mut admin: Option<String> = None;
        loop {
            let ended = self.subscribe(&mut position, &mut admin, &mut backoff, &mut reporter);
            if s.subscriber_up.swap(false, Ordering::Relaxed) {
                s.subscriptions_lost.fetch_add(1, Ordering::Relaxed);
                if !self.to_loop.send(FromCluster::Down, 0) {
                    return;
                }
            }
            match ended {
                Ok(()) => return,
                Err(e) => reporter.down(&e),
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One subscription, until Redis fails (`Err`) or the loop is gone (`Ok`).
    pub fn subscribe(
        &self,
        position: &mut Option<Position>,
        admin: &mut Option<String>,
        backoff: &mut Duration,
        reporter: &mut Reporter,
    ) -> redis::RedisResult<()> {
        let s = &self.to_loop.shared;
        let mut data = connect(&self.client)?;
        let mut connection = connect(&self.client)?;
        let mut pubsub = connection.as_pubsub();
        // Subscribed first, then the offset read: nothing falls between.
        pubsub.subscribe(&self.room.channel)?;
        pubsub.subscribe(&self.room.admin_channel)?;
        let (epoch, offset) = self.state(&mut data)?;
        // The bans and mutes in force; then admin commands from where this
        // subscription left off (at the first start: from now).
        let restrictions: Vec<Vec<u8>> = redis::Script::new(KEPT_SCRIPT)
            .key(&self.room.kept)
            .arg(MAX_BANS + MAX_MUTES)
            .invoke(&mut data)?;
        let admin = match admin {
            Some(after) => after,
            None => admin.insert(self.newest_admin(&mut data)?),
        };
        let last = match position.take() {
            // Back after an outage: catch up from where we were.
            Some(p) if p.epoch == epoch => p.last,
            // Redis lost the room: its new chats are all to be had.
            Some(_) => 0,
            // First start: live from now (joins read older ones from the stream).
            None => offset,
        };
        let position = position.insert(Position { epoch, last });
        s.subscriber_up.store(true, Ordering::Relaxed);
        reporter.up();
        *backoff = BACKOFF.0;
        let up = FromCluster::Up {
            epoch: position.epoch.as_str().into(),
            last,
        };
        // Entries not in the forms this server writes are counted, not acted on.
        let entries = restrictions.len() / 3;
        let restrictions = kept(restrictions);
        s.malformed
            .fetch_add((entries - restrictions.len()) as u64, Ordering::Relaxed);
        if !self.to_loop.send(FromCluster::Kept(restrictions), 0)
            || !self.to_loop.send(up, 0)
            || !self.backfill(&mut data, position)?
            || !self.backfill_admin(&mut data, admin)?
        {
            return Ok(());
        }
        loop {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                // Quiet for a while: is Redis still there? (A PING is allowed
                // on a subscription; no answer within the timeout fails it.)
                Err(e) if e.is_timeout() => {
                    pubsub.ping::<redis::Value>()?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if message.get_channel_name() == self.room.admin_channel {
                if !self.backfill_admin(&mut data, admin)? {
                    return Ok(());
                }
                continue;
            }
            let payload: Vec<u8> = message.get_payload()?;
            // The message says a chat was appended; the stream says which.
            let Some((epoch, id)) = decode(&payload) else {
                s.malformed.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            if epoch != position.epoch {
                // Redis lost the room, or someone published a lie: ask Redis.
                let (now, _) = self.state(&mut data)?;
                if now == position.epoch {
                    s.forged.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                *position = Position {
                    epoch: now,
                    last: 0,
                };
                let up = FromCluster::Up {
                    epoch: position.epoch.as_str().into(),
                    last: 0,
                };
                if !self.to_loop.send(up, 0) {
                    return Ok(());
                }
            } else if id <= position.last {
                // Already read with an earlier one: messages come in batches.
                continue;
            }
            if !self.backfill(&mut data, position)? {
                return Ok(());
            }
            if id > position.last {
                // The stream has no such chat: not published by an instance.
                s.forged.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The room's epoch in Redis (set now if it had none) and its newest id.
    pub fn state(&self, data: &mut redis::Connection) -> redis::RedisResult<(String, u64)> {
        let (epoch, offset): (String, String) = redis::Script::new(STATE_SCRIPT)
            .key(&self.room.meta)
            .key(&self.room.stream)
            .arg(fresh_epoch())
            .invoke(data)?;
        match (valid_epoch(&epoch), offset.parse()) {
            (true, Ok(offset)) => Ok((epoch, offset)),
            _ => Err(redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the room's epoch or offset in Redis is not one this server writes",
            ))),
        }
    }

    /// The id of the newest admin command (`0-0` if none).
    fn newest_admin(&self, data: &mut redis::Connection) -> redis::RedisResult<String> {
        let newest: redis::Value = redis::cmd("XREVRANGE")
            .arg(&self.room.admin_stream)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(data)?;
        Ok(admin_entries(newest)
            .pop()
            .map_or_else(|| "0-0".into(), |e| e.id))
    }

    /// Hands on the admin commands added after `after` (other instances'
    /// and this one's own, which the engine skips), checked like requests;
    /// others are counted as malformed. False once the loop is gone.
    fn backfill_admin(
        &self,
        data: &mut redis::Connection,
        after: &mut String,
    ) -> redis::RedisResult<bool> {
        let s = &self.to_loop.shared;
        loop {
            let entries: redis::Value = redis::cmd("XRANGE")
                .arg(&self.room.admin_stream)
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(BACKFILL_BATCH)
                .query(data)?;
            let entries = admin_entries(entries);
            let count = entries.len();
            // Entries' ids are Redis's time when they were added: their age on its clock.
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(data)?;
            let now = secs * 1000 + micros / 1000;
            for entry in entries {
                *after = entry.id;
                let Some((instance, mut command)) = entry.command else {
                    s.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let age = now.saturating_sub(entry.ms);
                let current = match &mut command {
                    Command::Ban { seconds, .. } | Command::Mute { seconds, .. } => {
                        // What is left of it (read late, after an outage, it lasts no longer).
                        let left = (*seconds * 1000).saturating_sub(age);
                        *seconds = left.div_ceil(1000);
                        left > 0
                    }
                    Command::Kick { .. } | Command::Announce { .. } => age <= STALE_ADMIN_MS,
                    Command::Unban { .. } | Command::Unmute { .. } => true,
                };
                if !current {
                    continue;
                }
                if !self
                    .to_loop
                    .send(FromCluster::Moderation { instance, command }, 0)
                {
                    return Ok(false);
                }
            }
            if count < BACKFILL_BATCH {
                return Ok(true);
            }
        }
    }

    /// Hands on every chat the stream holds after `position.last`, in
    /// order: after each channel message, and after an outage (then it is
    /// what the instance missed). Ids the stream no longer has are counted
    /// as trimmed. False once the loop is gone.
    pub fn backfill(
        &self,
        data: &mut redis::Connection,
        position: &mut Position,
    ) -> redis::RedisResult<bool> {
        let s = &self.to_loop.shared;
        let mut after = format!("({}-0", position.last);
        let handed = position.last;
        loop {
            let entries: redis::Value = redis::cmd("XRANGE")
                .arg(&self.room.stream)
                .arg(&after)
                .arg("+")
                .arg("COUNT")
                .arg(BACKFILL_BATCH)
                .query(data)?;
            // The next batch starts after the last entry, whatever its id
            // (entries not `N-0` are skipped, not read again and again).
            let count = match &entries {
                redis::Value::Array(items) => {
                    if let Some(raw) = items.last().and_then(raw_entry_id) {
                        after = format!("({raw}");
                    }
                    items.len()
                }
                _ => 0,
            };
            let entries = stream_entries(entries);
            for (id, fields) in entries {
                // Ids between are gone from the stream (trimmed before we came back).
                s.trimmed
                    .fetch_add(id.saturating_sub(position.last + 1), Ordering::Relaxed);
                position.last = id;
                let (Some(origin), Some(json)) = (fields.origin, fields.chat) else {
                    s.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                if json.len() > self.max_message {
                    s.oversized.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                s.received.fetch_add(1, Ordering::Relaxed);
                let bytes = json.len();
                if !self
                    .to_loop
                    .send(FromCluster::Chat { id, origin, json }, bytes)
                {
                    return Ok(false);
                }
            }
            if count < BACKFILL_BATCH {
                break;
            }
        }
        // Entries passed over without a chat handed on: the engine's place in
        // the stream moves on too (a join's read that saw them waits for it).
        if position.last > handed {
            let skipped = FromCluster::Position {
                last: position.last,
            };
            return Ok(self.to_loop.send(skipped, 0));
        }
        Ok(true)
    }
}

/// A channel message, `EPOCH ID ORIGIN JSON`: its epoch and id (the rest
/// is for other consumers; instances read the chat from the stream).
pub fn decode(message: &[u8]) -> Option<(&str, u64)> {
    let mut parts = message.splitn(3, |&b| b == b' ');
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let id = parts.next()?;
    parts.next()?;
    let id = (!id.is_empty() && id.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(id).ok()?.parse().ok())??;
    valid_epoch(epoch).then_some((epoch, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::cluster::Origin;

    #[test]
    fn channel_messages_carry_epoch_id_and_origin() {
        let origin = Origin {
            instance: 0xabc,
            key: 1,
            conn: 2,
            seq: 1,
            relayed_here: false,
        };
        let chat = br#"{"type":"chat","room":"public","user":"a","text":"hi there"}"#;
        let message = [b"e1 42 ", origin.encode().as_bytes(), b" ", &chat[..]].concat();
        assert_eq!(decode(&message), Some(("e1", 42)));
        for bad in [
            &b"e1 42"[..],
            b"e1 x 0000000000000abc-1-2-R {}",
            b"e1 +4 0000000000000abc-1-2-R {}",
            b" 4 0000000000000abc-1-2-R {}",
            b"e1  0000000000000abc-1-2-R {}",
        ] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
