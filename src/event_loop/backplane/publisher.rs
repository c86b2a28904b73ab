//! The publishing thread: each chat accepted here goes into Redis with one
//! script (next id, stream entry, PUBLISH).

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};

use super::link::{Failure, Link};
use super::stream::fresh_epoch;
use super::{Outgoing, REDIS_TIMEOUT, Room, Shared, ToLoop};
use crate::engine::cluster::FromCluster;
use crate::http::admin::Command;

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

/// Sends an admin command to the other instances: the bans and mutes in
/// force are kept in a hash with their ends on Redis's own clock (so an
/// instance that starts later applies them, whatever its clock says), the
/// command is appended to a capped stream, and the admin channel says so.
/// KEYS: the hash, the stream. ARGV: the channel, the instance, the
/// endpoint's name, the body, the hash field ('' for none), how long it
/// lasts in ms (0 lifts it), its reason.
const ADMIN_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[5] ~= '' then
  if tonumber(ARGV[6]) > 0 then
    redis.call('HSET', KEYS[1], ARGV[5], (now + tonumber(ARGV[6])) .. ' ' .. ARGV[7])
  else
    redis.call('HDEL', KEYS[1], ARGV[5])
  end
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', 1000, '*', 'i', ARGV[2], 'a', ARGV[3], 'b', ARGV[4])
redis.call('PUBLISH', ARGV[1], id)
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
    /// This instance's id, on the admin commands it sends.
    pub instance: u64,
    pub max_len: usize,
    pub to_loop: ToLoop,
}

impl Publisher {
    pub fn run(&self, queue: &Receiver<Outgoing>) {
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
                Ok(Outgoing::Admin(command)) => self.send_admin(&mut link, &command),
                Ok(Outgoing::Chat(origin, json)) => {
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

    /// Sends `command` with `ADMIN_SCRIPT` (tried again once on a fresh
    /// connection: sending it twice is harmless, each instance acts on it
    /// the same way). Not sent: counted, and done on this instance only.
    fn send_admin(&self, link: &mut Link, command: &Command) {
        let s = &self.to_loop.shared;
        let (field, ms, reason) = match command {
            Command::Ban {
                block,
                seconds,
                reason,
            } => (format!("ban {block}"), seconds * 1000, reason.as_str()),
            Command::Unban { block } => (format!("ban {block}"), 0, ""),
            Command::Mute { user, seconds } => (format!("mute {user}"), seconds * 1000, ""),
            Command::Unmute { user } => (format!("mute {user}"), 0, ""),
            Command::Kick { .. } | Command::Announce { .. } => (String::new(), 0, ""),
        };
        let script = redis::Script::new(ADMIN_SCRIPT);
        let send = |c: &mut redis::Connection| {
            script
                .key(&self.room.kept)
                .key(&self.room.admin_stream)
                .arg(&self.room.admin_channel)
                .arg(format!("{:016x}", self.instance))
                .arg(command.endpoint().name())
                .arg(command.body())
                .arg(&field)
                .arg(ms)
                .arg(reason)
                .invoke::<String>(c)
                .map(drop)
        };
        let sent = match link.run(send) {
            Err(Failure::Failed) => link.run(send),
            other => other,
        };
        match sent {
            Ok(()) => {
                s.admin_published.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => not_sent(s, command, "Redis did not take it"),
        }
    }
}

/// An admin command that did not reach Redis: done on this instance only
/// (counted as `admin_unpublished` and said on stderr, so the operator can
/// ask the other instances).
pub fn not_sent(shared: &Shared, command: &Command, why: &str) {
    shared.admin_unpublished.fetch_add(1, Ordering::Relaxed);
    eprintln!(
        "websocket-public-chat: admin: {} {} not sent to the other instances ({why}): done on \
         this instance only",
        command.endpoint().name(),
        command.body()
    );
}
