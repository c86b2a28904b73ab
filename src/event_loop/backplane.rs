//! The Redis backplane (cargo feature `redis`): instances share the room
//! through one Redis pub/sub channel. Each chat accepted for relay is
//! published with this instance's id; chats published by other instances are
//! handed to the event loop, which relays them to its own members.
//!
//! Redis I/O runs on two side threads with the `redis` crate's blocking API.
//! The event loop only touches two bounded queues and a `mio::Waker`, so it
//! never waits on Redis: a full queue drops the message and counts it. Each
//! thread reconnects with backoff on its own; the link is up when both are.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::chat::protocol;
use crate::engine::BackplaneProbe;
use crate::engine::stats::BackplaneStats;
use crate::websocket::frame::{self, Role};

/// Messages waiting in each direction before more are dropped.
const QUEUE: usize = 4096;
/// Longest wait to connect to Redis, and for one command.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection backoff: from the first to the last value, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// The loop's handle on the backplane.
pub struct Backplane {
    id: u64,
    waker: Arc<Waker>,
    outgoing: SyncSender<Vec<u8>>,
    incoming: Receiver<Vec<u8>>,
    shared: Arc<Shared>,
}

/// What the threads and the loop share: the link state and the counters.
#[derive(Default)]
struct Shared {
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Set when the subscriber woke the loop and the loop has not drained yet.
    wake_pending: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    lost_outgoing: AtomicU64,
    lost_incoming: AtomicU64,
    malformed: AtomicU64,
}

impl Backplane {
    /// Starts the Redis threads; `waker` wakes the loop when chats arrive.
    pub fn start(url: &str, channel: &str, waker: Waker) -> Result<Self, String> {
        let waker = Arc::new(waker);
        let client = redis::Client::open(url).map_err(|e| format!("--redis {url}: {e}"))?;
        let id = instance_id();
        let shared = Arc::new(Shared::default());
        let (outgoing, to_publish) = mpsc::sync_channel(QUEUE);
        let (to_loop, incoming) = mpsc::sync_channel(QUEUE);
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map(|_| ())
                .map_err(|e| format!("cannot start the Redis thread: {e}"))
        };
        let (c, ch, s) = (client.clone(), channel.to_string(), Arc::clone(&shared));
        spawn(
            "redis-publish",
            Box::new(move || publisher(&c, &ch, &to_publish, &s)),
        )?;
        let subscriber = Subscriber {
            client,
            channel: channel.to_string(),
            own_id: id,
            to_loop,
            waker: Arc::clone(&waker),
            shared: Arc::clone(&shared),
        };
        spawn("redis-subscribe", Box::new(move || subscriber.run()))?;
        Ok(Self {
            id,
            waker,
            outgoing,
            incoming,
            shared,
        })
    }

    /// Queues a relayed chat frame for the other instances; drops it if the queue is full.
    pub fn publish(&self, chat_frame: &[u8]) {
        let Ok(Some((_, header_len))) = frame::parse_header(chat_frame, Role::Client) else {
            return;
        };
        let message = encode(self.id, &chat_frame[header_len..]);
        if self.outgoing.try_send(message).is_err() {
            self.shared.lost_outgoing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands each chat from other instances (its JSON) to `relay`, at most
    /// `QUEUE` per call so one turn stays short; more wakes the loop again.
    pub fn drain(&self, mut relay: impl FnMut(&[u8])) {
        self.shared.wake_pending.store(false, Ordering::Release);
        let mut taken = 0;
        for chat in self.incoming.try_iter().take(QUEUE) {
            relay(&chat);
            taken += 1;
        }
        if taken == QUEUE {
            let _ = self.waker.wake();
        }
    }

    /// The link state and counters, for the engine's `/health` and `/stats`.
    pub fn probe(&self) -> BackplaneProbe {
        let (shared, id) = (Arc::clone(&self.shared), self.id);
        Box::new(move || shared.stats(id))
    }
}

impl Shared {
    /// Whether both threads are connected.
    fn is_up(&self) -> bool {
        self.publisher_up.load(Ordering::Relaxed) && self.subscriber_up.load(Ordering::Relaxed)
    }

    fn stats(&self, id: u64) -> BackplaneStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BackplaneStats {
            state: if self.is_up() { "up" } else { "down" },
            instance_id: format!("{id:016x}"),
            published: get(&self.published),
            received: get(&self.received),
            lost_outgoing: get(&self.lost_outgoing),
            lost_incoming: get(&self.lost_incoming),
            malformed: get(&self.malformed),
        }
    }
}

/// A channel message: the sender's id in 16 hex digits, a space, the chat JSON.
fn encode(id: u64, chat: &[u8]) -> Vec<u8> {
    let mut message = format!("{id:016x} ").into_bytes();
    message.extend_from_slice(chat);
    message
}

/// The chat JSON of a message from another instance; `None` for our own
/// messages and for anything that is not a JSON object from an instance.
fn decode(message: &[u8], own_id: u64) -> Option<&[u8]> {
    let (id, chat) = message.split_at_checked(17)?;
    let id = std::str::from_utf8(id.strip_suffix(b" ")?).ok()?;
    if u64::from_str_radix(id, 16).ok()? == own_id {
        return None;
    }
    // Relayed as is to every client: one JSON object, by the rules relayed chat fields follow.
    let json = std::str::from_utf8(chat).ok()?;
    (json.starts_with('{') && protocol::is_strict_json(json)).then_some(chat)
}

/// 64 random bits (std's OS-seeded hash keys): unique per process in practice.
fn instance_id() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Publishes queued chats. A failed command drops the connection; the message
/// is retried once on a fresh one (a connection that died while idle fails
/// once), else lost. While Redis is down, connects are retried with backoff and
/// messages in between are counted lost, not kept to arrive stale. When idle, a
/// PING each `REDIS_TIMEOUT` keeps the link state honest.
fn publisher(client: &redis::Client, channel: &str, queue: &Receiver<Vec<u8>>, s: &Shared) {
    let mut link = Link::new(client);
    loop {
        let message = match queue.recv_timeout(REDIS_TIMEOUT) {
            Ok(message) => message,
            Err(RecvTimeoutError::Timeout) => {
                link.run(|c| redis::cmd("PING").query::<String>(c).map(drop));
                s.publisher_up.store(link.is_up(), Ordering::Relaxed);
                continue;
            }
            // The server dropped its sender: it is exiting.
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let publish = |c: &mut redis::Connection| {
            redis::cmd("PUBLISH")
                .arg(channel)
                .arg(&message)
                .query::<i64>(c)
                .map(drop)
        };
        let sent = link.run(publish) || link.run(publish);
        s.publisher_up.store(link.is_up(), Ordering::Relaxed);
        let counter = if sent { &s.published } else { &s.lost_outgoing };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// The publisher's connection, made on demand, with backoff after failures.
struct Link<'a> {
    client: &'a redis::Client,
    connection: Option<redis::Connection>,
    retry_at: Instant,
    backoff: Duration,
}

impl<'a> Link<'a> {
    fn new(client: &'a redis::Client) -> Self {
        Self {
            client,
            connection: None,
            retry_at: Instant::now(),
            backoff: BACKOFF.0,
        }
    }

    fn is_up(&self) -> bool {
        self.connection.is_some()
    }

    /// Runs `command` on the connection (connecting first if it is time to);
    /// false if there is none or the command failed, which drops it.
    fn run(
        &mut self,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>,
    ) -> bool {
        if self.connection.is_none() && Instant::now() >= self.retry_at {
            match self.client.get_connection_with_timeout(REDIS_TIMEOUT) {
                Ok(connection) => {
                    let _ = connection.set_read_timeout(Some(REDIS_TIMEOUT));
                    let _ = connection.set_write_timeout(Some(REDIS_TIMEOUT));
                    self.connection = Some(connection);
                    self.backoff = BACKOFF.0;
                }
                Err(_) => {
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF.1);
                }
            }
        }
        let Some(connection) = self.connection.as_mut() else {
            return false;
        };
        let ok = command(connection).is_ok();
        if !ok {
            self.connection = None;
        }
        ok
    }
}

/// Receives the channel's messages and hands other instances' chats to the loop.
struct Subscriber {
    client: redis::Client,
    channel: String,
    own_id: u64,
    to_loop: SyncSender<Vec<u8>>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
}

impl Subscriber {
    /// Subscribes, and again with backoff whenever Redis fails, until the loop is gone.
    fn run(&self) {
        let mut backoff = BACKOFF.0;
        loop {
            let ended = self.subscribe(&mut backoff);
            self.shared.subscriber_up.store(false, Ordering::Relaxed);
            if ended.is_ok() {
                return;
            }
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(BACKOFF.1);
        }
    }

    /// One subscription, until Redis fails (`Err`) or the loop is gone (`Ok`).
    fn subscribe(&self, backoff: &mut Duration) -> redis::RedisResult<()> {
        let s = &self.shared;
        let mut connection = self.client.get_connection_with_timeout(REDIS_TIMEOUT)?;
        let mut pubsub = connection.as_pubsub();
        pubsub.subscribe(&self.channel)?;
        // Wakes now and then so that a dead server side is noticed.
        pubsub.set_read_timeout(Some(REDIS_TIMEOUT))?;
        s.subscriber_up.store(true, Ordering::Relaxed);
        *backoff = BACKOFF.0;
        let own_prefix = format!("{:016x} ", self.own_id);
        loop {
            let message = match pubsub.get_message() {
                Ok(message) => message,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(e),
            };
            let payload: Vec<u8> = message.get_payload()?;
            let Some(chat) = decode(&payload, self.own_id) else {
                if !payload.starts_with(own_prefix.as_bytes()) {
                    s.malformed.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            };
            match self.to_loop.try_send(chat.to_vec()) {
                Ok(()) => {
                    s.received.fetch_add(1, Ordering::Relaxed);
                    // One wake per batch: the loop drains everything queued at once.
                    if !s.wake_pending.swap(true, Ordering::AcqRel) {
                        let _ = self.waker.wake();
                    }
                }
                Err(TrySendError::Full(_)) => {
                    s.lost_incoming.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return Ok(()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_the_sender_and_our_own_are_skipped() {
        let chat = br#"{"type":"chat","room":"public","user":"a","text":"hi"}"#;
        let message = encode(0xabc, chat);
        assert_eq!(&message[..17], b"0000000000000abc ");
        assert_eq!(decode(&message, 0xdef), Some(&chat[..]));
        assert_eq!(decode(&message, 0xabc), None);
        for bad in [
            &b"short"[..],
            b"0000000000000abc not json",
            b"0000000000000abc [1,2]",
            b"zzzzzzzzzzzzzzzz {}",
            b"0000000000000abc{}",
            br#"0000000000000abc {"type":"chat","ts":1e400}"#,
        ] {
            assert_eq!(decode(bad, 1), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
