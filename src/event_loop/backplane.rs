//! The Redis backplane (cargo feature `redis`): instances share the room
//! through one Redis pub/sub channel. Each chat accepted for relay is
//! published with this instance's id, as its fields (the JSON of the chat:
//! the sender's joined name, `text`, `ts`), never as a finished frame; chats
//! published by other instances are handed to the engine, which validates
//! them like a local chat and builds their frame itself
//! (`Engine::handle_remote_chat`). Whoever can publish to the channel is not
//! trusted further than a client.
//!
//! Redis I/O runs on two side threads with the `redis` crate's blocking API.
//! The event loop only touches two bounded queues and a `mio::Waker`, so it
//! never waits on Redis: a full queue drops the message and counts it. Each
//! thread reconnects with backoff on its own; the link is up when both are.
//! Both notice a Redis that stopped answering (a partition, with no FIN or
//! RST) within about two seconds: the publisher pings when idle, the
//! subscriber pings on its subscription when the channel has been quiet.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::config::redacted;
use crate::engine::BackplaneProbe;
use crate::engine::stats::BackplaneStats;
use crate::websocket::frame::{self, Role};

/// Messages waiting in each direction before more are dropped.
const QUEUE: usize = 4096;
/// Bytes of messages from other instances waiting for the loop before more are dropped.
const QUEUE_BYTES: usize = 8 << 20;
/// Longest wait to connect to Redis, and for one command or reply.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection backoff: from the first to the last value, doubling.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));
/// Bytes a message may have beyond the chat's text and ts: the envelope,
/// the field names and the sender's name (64 characters, escaped).
const MESSAGE_OVERHEAD: usize = 1024;

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
    /// Bytes of messages waiting in the incoming queue.
    queued_bytes: AtomicUsize,
    published: AtomicU64,
    received: AtomicU64,
    lost_outgoing: AtomicU64,
    lost_incoming: AtomicU64,
    malformed: AtomicU64,
    oversized: AtomicU64,
    subscriptions_lost: AtomicU64,
}

/// Where Redis is and how to reach it.
pub struct Target<'a> {
    /// `redis://` or `rediss://` (TLS).
    pub url: &'a str,
    pub channel: &'a str,
    /// PEM certificates to trust for `rediss://` instead of the built-in roots.
    pub ca: Option<&'a [u8]>,
    /// Largest chat (its text and ts) a client may send here: larger ones
    /// from the channel are dropped before they are queued.
    pub max_message: usize,
}

impl Backplane {
    /// Starts the Redis threads; `waker` wakes the loop when chats arrive.
    pub fn start(target: &Target<'_>, waker: Waker) -> Result<Self, String> {
        let waker = Arc::new(waker);
        let client = client(target)?;
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
        let (c, ch, s) = (
            client.clone(),
            target.channel.to_string(),
            Arc::clone(&shared),
        );
        spawn(
            "redis-publish",
            Box::new(move || publisher(&c, &ch, &to_publish, &s)),
        )?;
        let subscriber = Subscriber {
            client,
            channel: target.channel.to_string(),
            own_id: id,
            max_message: target.max_message + MESSAGE_OVERHEAD,
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

    /// Queues a relayed chat for the other instances (its JSON, not its frame
    /// header); drops it if the queue is full.
    pub fn publish(&self, chat_frame: &[u8]) {
        let Ok(Some((_, header_len))) = frame::parse_header(chat_frame, Role::Client) else {
            return;
        };
        let message = encode(self.id, &chat_frame[header_len..]);
        if self.outgoing.try_send(message).is_err() {
            self.shared.lost_outgoing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands each chat from other instances (its JSON, unchecked) to `relay`,
    /// at most `QUEUE` per call so one turn stays short; more wakes the loop again.
    pub fn drain(&self, mut relay: impl FnMut(&[u8])) {
        self.shared.wake_pending.store(false, Ordering::Release);
        let mut taken = 0;
        for chat in self.incoming.try_iter().take(QUEUE) {
            self.shared
                .queued_bytes
                .fetch_sub(chat.len(), Ordering::AcqRel);
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

/// The `redis` client for `target`: TLS for `rediss://`, trusting `ca` if given.
fn client(target: &Target<'_>) -> Result<redis::Client, String> {
    let url = target.url;
    let fail = |e: redis::RedisError| format!("--redis {}: {e}", redacted(url));
    if url.starts_with("rediss://") {
        // One crypto provider for rustls, chosen here rather than by feature unification.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    match target.ca {
        Some(pem) => {
            check_certificates(pem)?;
            let certificates = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            };
            redis::Client::build_with_tls(url, certificates).map_err(fail)
        }
        None => redis::Client::open(url).map_err(fail),
    }
}

/// Whether `pem` holds certificates and nothing unreadable, so a wrong
/// `--redis-ca` file stops the server at once instead of leaving it down.
fn check_certificates(pem: &[u8]) -> Result<(), String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let found: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem).collect();
    let found = found.map_err(|e| format!("--redis-ca: not PEM certificates: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    match roots.add_parsable_certificates(found) {
        (0, _) => Err("--redis-ca: no certificate in the file".into()),
        (_, 0) => Ok(()),
        (_, bad) => Err(format!(
            "--redis-ca: {bad} certificate(s) could not be read"
        )),
    }
}

/// Says on stderr when a connection to Redis comes up or goes down, and why:
/// once per change, so a wrong password or an untrusted certificate is
/// visible without flooding the log while it retries.
struct Reporter {
    what: &'static str,
    last: Option<bool>,
}

impl Reporter {
    fn new(what: &'static str) -> Self {
        Self { what, last: None }
    }

    fn up(&mut self) {
        if self.last != Some(true) {
            eprintln!("websocket-public-chat: Redis {}: up", self.what);
        }
        self.last = Some(true);
    }

    fn down(&mut self, why: &redis::RedisError) {
        if self.last != Some(false) {
            eprintln!("websocket-public-chat: Redis {}: down: {why}", self.what);
        }
        self.last = Some(false);
    }
}

impl Shared {
    /// Whether both threads are connected.
    fn is_up(&self) -> bool {
        self.publisher_up.load(Ordering::Relaxed) && self.subscriber_up.load(Ordering::Relaxed)
    }

    fn stats(&self, id: u64) -> BackplaneStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let word = |up: bool| if up { "up" } else { "down" };
        BackplaneStats {
            state: word(self.is_up()),
            publisher: word(self.publisher_up.load(Ordering::Relaxed)),
            subscriber: word(self.subscriber_up.load(Ordering::Relaxed)),
            instance_id: format!("{id:016x}"),
            published: get(&self.published),
            received: get(&self.received),
            lost_outgoing: get(&self.lost_outgoing),
            lost_incoming: get(&self.lost_incoming),
            malformed: get(&self.malformed),
            oversized: get(&self.oversized),
            subscriptions_lost: get(&self.subscriptions_lost),
        }
    }
}

/// A channel message: the sender's id in 16 hex digits, a space, the chat JSON.
fn encode(id: u64, chat: &[u8]) -> Vec<u8> {
    let mut message = format!("{id:016x} ").into_bytes();
    message.extend_from_slice(chat);
    message
}

/// Whose message it is, and its chat JSON (checked later, by the engine);
/// `None` if it has no instance id in front.
fn decode(message: &[u8]) -> Option<(u64, &[u8])> {
    let (id, chat) = message.split_at_checked(17)?;
    let id = std::str::from_utf8(id.strip_suffix(b" ")?).ok()?;
    Some((u64::from_str_radix(id, 16).ok()?, chat))
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
    reporter: Reporter,
    retry_at: Instant,
    backoff: Duration,
}

impl<'a> Link<'a> {
    fn new(client: &'a redis::Client) -> Self {
        Self {
            client,
            connection: None,
            reporter: Reporter::new("publisher"),
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
            match connect(self.client) {
                Ok(connection) => {
                    self.connection = Some(connection);
                    self.reporter.up();
                    self.backoff = BACKOFF.0;
                }
                Err(e) => {
                    self.reporter.down(&e);
                    self.retry_at = Instant::now() + self.backoff;
                    self.backoff = (self.backoff * 2).min(BACKOFF.1);
                }
            }
        }
        let Some(connection) = self.connection.as_mut() else {
            return false;
        };
        match command(connection) {
            Ok(()) => true,
            Err(e) => {
                self.reporter.down(&e);
                self.connection = None;
                false
            }
        }
    }
}

/// A connection whose every read and write gives up after `REDIS_TIMEOUT`,
/// so a Redis that stopped answering is noticed instead of waited for.
fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let connection = client.get_connection_with_timeout(REDIS_TIMEOUT)?;
    connection.set_read_timeout(Some(REDIS_TIMEOUT))?;
    connection.set_write_timeout(Some(REDIS_TIMEOUT))?;
    Ok(connection)
}

/// Receives the channel's messages and hands other instances' chats to the loop.
struct Subscriber {
    client: redis::Client,
    channel: String,
    own_id: u64,
    /// Largest message queued for the loop; larger ones cannot be a chat
    /// this server would accept.
    max_message: usize,
    to_loop: SyncSender<Vec<u8>>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
}

impl Subscriber {
    /// Subscribes, and again with backoff whenever Redis fails, until the loop is gone.
    fn run(&self) {
        let mut backoff = BACKOFF.0;
        let mut reporter = Reporter::new("subscriber");
        loop {
            let ended = self.subscribe(&mut backoff, &mut reporter);
            // Chats published until the next subscription never reach this instance.
            if self.shared.subscriber_up.swap(false, Ordering::Relaxed) {
                self.shared
                    .subscriptions_lost
                    .fetch_add(1, Ordering::Relaxed);
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
    fn subscribe(&self, backoff: &mut Duration, reporter: &mut Reporter) -> redis::RedisResult<()> {
        let s = &self.shared;
        let mut connection = connect(&self.client)?;
        let mut pubsub = connection.as_pubsub();
        pubsub.subscribe(&self.channel)?;
        s.subscriber_up.store(true, Ordering::Relaxed);
        reporter.up();
        *backoff = BACKOFF.0;
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
            let payload: Vec<u8> = message.get_payload()?;
            let chat = match decode(&payload) {
                Some((id, _)) if id == self.own_id => continue,
                Some((_, chat)) if chat.len() <= self.max_message => chat,
                Some(_) => {
                    s.oversized.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                None => {
                    s.malformed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
            };
            // Counted before it is queued, so the loop never takes off more than was added.
            if s.queued_bytes.fetch_add(chat.len(), Ordering::AcqRel) + chat.len() > QUEUE_BYTES {
                s.queued_bytes.fetch_sub(chat.len(), Ordering::AcqRel);
                s.lost_incoming.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.to_loop.try_send(chat.to_vec()) {
                Ok(()) => {
                    s.received.fetch_add(1, Ordering::Relaxed);
                    // One wake per batch: the loop drains everything queued at once.
                    if !s.wake_pending.swap(true, Ordering::AcqRel) {
                        let _ = self.waker.wake();
                    }
                }
                Err(TrySendError::Full(_)) => {
                    s.queued_bytes.fetch_sub(chat.len(), Ordering::AcqRel);
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
    fn messages_carry_the_sender() {
        let chat = br#"{"type":"chat","room":"public","user":"a","text":"hi"}"#;
        let message = encode(0xabc, chat);
        assert_eq!(&message[..17], b"0000000000000abc ");
        assert_eq!(decode(&message), Some((0xabc, &chat[..])));
        for bad in [&b"short"[..], b"zzzzzzzzzzzzzzzz {}", b"0000000000000abc{}"] {
            assert_eq!(decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
