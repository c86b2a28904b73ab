//! The history reader thread: chats a catch-up needs that are older than
//! the instance's ring, read from the stream one bounded read at a time.
//!
//! A read is one script: the room's epoch and offset, then the stream's
//! entries of the range, oldest first, for as long as they fit the read's
//! byte budget (half of `--max-backlog`, each entry counted as its field
//! values plus what its frame adds and costs queued). The budget is applied
//! inside Redis, so one read makes Redis send, and this instance hold, at
//! most that (or one entry, if a single one is larger), however large the
//! chats in the stream are; the catch-up asks for the next read only once
//! its queue has drained.

use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use super::link::Link;
use super::stream::{stream_entries, valid_epoch};
use super::{Room, ToLoop, stream_bytes};
use crate::engine::catch_up::WAIT_MS;
use crate::engine::cluster::{FromCluster, Read, Stream};
use crate::engine::outbox::FRAME_COST;

/// Reads the range (ARGV[1], ARGV[2]] of the stream, oldest first, while
/// the entries fit ARGV[3] bytes (each counted as its field values plus
/// ARGV[4]; the first is returned whatever its size), in pages of ARGV[5].
/// KEYS: meta hash, stream. Returns the epoch, the offset, the entries and
/// 1 if the budget ended the read; nothing if the room has no epoch.
const READ_SCRIPT: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  return false
end
local offset = redis.call('HGET', KEYS[1], 'offset') or '0'
local budget, extra, page = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local from, upto = '(' .. ARGV[1] .. '-0', ARGV[2] .. '-0'
local out, spent = {}, 0
while true do
  local entries = redis.call('XRANGE', KEYS[2], from, upto, 'COUNT', page)
  for _, entry in ipairs(entries) do
    local cost = extra
    local fields = entry[2]
    for i = 2, #fields, 2 do
      cost = cost + #fields[i]
    end
    if #out > 0 and spent + cost > budget then
      return {epoch, offset, out, 1}
    end
    spent = spent + cost
    out[#out + 1] = entry
  end
  if #entries < page then
    return {epoch, offset, out, 0}
  end
  from = '(' .. entries[#entries][1]
end
";

/// Entries the script takes from the stream at a time.
const READ_PAGE: usize = 64;
/// What an entry costs beyond its field values once it is a queued frame:
/// the header, envelope, id and name its frame adds, and a queue slot.
const ENTRY_COST: usize = crate::engine::MAX_CHAT_OVERHEAD + FRAME_COST;
/// A read asked for this long ago is not made: the catch-up has given it
/// up and gone on (`catch_up::WAIT_MS`).
const READ_GIVEN_UP: Duration = Duration::from_millis(WAIT_MS);

/// Answers catch-ups' reads of the stream, one at a time, on a connection
/// of its own.
pub struct Reader {
    pub client: redis::Client,
    pub room: Room,
    /// Most bytes one read returns (half of `--max-backlog`).
    pub budget: usize,
    pub to_loop: ToLoop,
}

impl Reader {
    /// Reads until the loop drops its sender.
    pub fn run(&self, requests: &Receiver<(usize, u32, Read, Instant)>) {
        let s = &self.to_loop.shared;
        let script = redis::Script::new(READ_SCRIPT);
        let mut link = Link::new(&self.client, "history reader");
        for (key, conn, read, asked) in requests {
            // A backlog of reads after a storm is not worked through.
            if asked.elapsed() >= READ_GIVEN_UP {
                s.history_reads_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            s.history_reads.fetch_add(1, Ordering::Relaxed);
            let stream = link.run(|c| self.read(&script, c, read)).ok().flatten();
            if stream.is_none() {
                s.history_read_failures.fetch_add(1, Ordering::Relaxed);
            }
            let bytes = stream.as_ref().map_or(0, stream_bytes);
            let answer = FromCluster::History {
                key,
                conn,
                read,
                stream,
            };
            if !self.to_loop.send(answer, bytes) {
                return;
            }
        }
    }

    /// One read; `None` if what Redis answered is not what the script returns.
    fn read(
        &self,
        script: &redis::Script,
        c: &mut redis::Connection,
        read: Read,
    ) -> redis::RedisResult<Option<Stream>> {
        let answer: redis::Value = script
            .key(&self.room.meta)
            .key(&self.room.stream)
            .arg(read.after)
            .arg(read.upto)
            .arg(self.budget)
            .arg(ENTRY_COST)
            .arg(READ_PAGE)
            .invoke(c)?;
        // Anything but what the script returns (no epoch yet: nil) is a failed read.
        let redis::Value::Array(parts) = answer else {
            return Ok(None);
        };
        let Ok([epoch, offset, entries, cut]) = <[redis::Value; 4]>::try_from(parts) else {
            return Ok(None);
        };
        let (Ok(epoch), Ok(offset)) = (
            redis::from_redis_value::<String>(epoch),
            redis::from_redis_value::<String>(offset),
        ) else {
            return Ok(None);
        };
        let (true, Ok(last)) = (valid_epoch(&epoch), offset.parse::<u64>()) else {
            return Ok(None);
        };
        let chats = stream_entries(entries)
            .into_iter()
            .filter(|(id, _)| *id > read.after && *id <= read.upto)
            .filter_map(|(id, entry)| Some((id, entry.chat?)))
            .collect();
        Ok(Some(Stream {
            epoch: epoch.into(),
            last,
            chats,
            cut: matches!(cut, redis::Value::Int(1)),
        }))
    }
}
