//! The publishing thread: each chat accepted here goes into Redis with one
//! script (next id, stream entry, PUBLISH).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use super::link::{Failure, Link};
use super::stream::fresh_epoch;
use super::{REDIS_TIMEOUT, Room, ToLoop};
use crate::engine::cluster::{FromCluster, Origin};

/// Appends a chat to the room: next id, stream entry, PUBLISH, in one step.
/// KEYS: meta hash, stream, this instance's last published sequence. ARGV:
/// a new epoch (used only if the room has none), the stream's length, the
/// channel, the origin, the chat's JSON, the chat's sequence. A sequence
/// already published does nothing, so a retry after a lost answer cannot
/// publish a chat twice. If someone else wrote an entry with an id past
/// ours into the stream, ids go on after it (the skipped ids are a gap);
/// an `XADD` Redis still refuses leaves the offset and the sequence as they
/// were and fails the call.
const PUBLISH_SCRIPT: &str = r"
if tonumber(ARGV[6]) <= tonumber(redis.call('GET', KEYS[3]) or '0') then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local id = redis.call('HINCRBY', KEYS[1], 'offset', 1)
local function add()
  return redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], id .. '-0', 'o', ARGV[4], 'c', ARGV[5])
end
local added = add()
if type(added) == 'table' and added.err then
  -- Someone else wrote an entry past our ids: go on after it (a gap).
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
  local ms = top and tonumber(string.match(top[1], '^(%d+)-'))
  if ms and ms >= id and ms < 9007199254740991 then
    id = ms + 1
    redis.call('HSET', KEYS[1], 'offset', id)
    added = add()
  end
end
if type(added) == 'table' and added.err then
  -- Scripts do not roll back: the offset back, nothing marked published.
  redis.call('HSET', KEYS[1], 'offset', id - 1)
  return added
end
redis.call('SET', KEYS[3], ARGV[6], 'EX', 86400)
redis.call('PUBLISH', ARGV[3], epoch .. ' ' .. id .. ' ' .. ARGV[4] .. ' ' .. ARGV[5])
return id
";

/// Publishes queued chats with `PUBLISH_SCRIPT`. A command that fails
/// (a connection that died while idle fails once) is tried again on a
/// fresh connection: the script runs a sequence once, so that cannot
/// publish twice. A chat that could not be published goes back to the loop
/// as `Unpublished`, to be relayed there; if a command had been sent, it
/// may have run, and the engine then skips it when it comes back. When
/// idle, a PING each `REDIS_TIMEOUT` keeps the link state honest.
pub struct Publisher {
    pub client: redis::Client,
    pub room: Room,
    /// This instance's key for its last published sequence.
    pub sequence_key: String,
    pub max_len: usize,
    pub to_loop: ToLoop,
}

impl Publisher {
    pub fn run(&self, queue: &Receiver<(Origin, Vec<u8>)>) {
        let s = &self.to_loop.shared;
        let script = redis::Script::new(PUBLISH_SCRIPT);
        let mut link = Link::new(&self.client, "publisher");
        let mut said: Option<bool> = None;
        // Connected at once, so the first chats are already in Redis's order.
        let _ = link.run(|c| redis::cmd("PING").query::<String>(c).map(drop));
        loop {
            let up = link.is_up();
            s.publisher_up.store(up, Ordering::Relaxed);
            if said != Some(up) {
                said = Some(up);
                if !self.to_loop.send(FromCluster::Publisher { up }, 0) {
                    return;
                }
            }
            match queue.recv_timeout(REDIS_TIMEOUT) {
                Ok((origin, json)) => {
                    let publish = |c: &mut redis::Connection| {
                        script
                            .key(&self.room.meta)
                            .key(&self.room.stream)
                            .key(&self.sequence_key)
                            .arg(fresh_epoch())
                            .arg(self.max_len)
                            .arg(&self.room.channel)
                            .arg(origin.encode())
                            .arg(&json)
                            .arg(origin.seq)
                            .invoke::<u64>(c)
                            .map(drop)
                    };
                    let sent = match link.run(publish) {
                        Err(Failure::Failed) => link.run(publish).map_err(|_| true),
                        other => other.map_err(|_| false),
                    };
                    match sent {
                        Ok(()) => {
                            s.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(maybe_published) => {
                            s.unpublished.fetch_add(1, Ordering::Relaxed);
                            let bytes = json.len();
                            let back = FromCluster::Unpublished {
                                origin,
                                json,
                                maybe_published,
                            };
                            self.to_loop.send(back, bytes);
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    let _ = link.run(|c| redis::cmd("PING").query::<String>(c).map(drop));
                }
                // The server dropped its sender: it is exiting.
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }
}
