//! The Redis backplane (cargo feature `redis`): instances share one room,
//! ordered by Redis, the way Centrifugo's Redis engine does it.
//!
//! Publishing a chat is one Lua script (loaded once, then called by its
//! SHA): it increments the room's offset, appends the chat under that id to
//! a capped stream (`XADD … MAXLEN ~ --history`) and PUBLISHes it with its
//! id and the room's epoch, atomically. Every instance, the publisher too,
//! relays chats as they come from the subscription, so all see one order
//! and one set of ids. The epoch lives in Redis beside the offset; it is
//! set once and changes only when Redis lost the room (a restart without
//! persistence, a flush). A channel message tells the subscriber that
//! chats were appended; it reads them from the stream (`XRANGE` after the
//! last id it handed on; one read covers every message of a burst), so
//! a PUBLISH from anyone else can inject nothing, and after an outage the
//! same read brings what the instance missed: a chat still in the stream
//! is never lost to an instance. A catch-up that needs chats older than
//! the instance's ring reads them from the stream on a reader thread
//! (`Action::ReadHistory`), one bounded read at a time.
//!
//! What arrives is data, never trusted further than a client: every chat is
//! checked like a local one by the engine, and the scripts take their
//! inputs as arguments, never as code.
//!
//! Redis I/O runs on three side threads (publisher, subscriber, history
//! reader) with the `redis` crate's blocking API. The loop only touches
//! bounded queues and a `mio::Waker`, so it never waits on Redis; the
//! threads wait for the loop instead when their queue to it is full (by
//! count or bytes), which loses nothing: Redis keeps the stream. Every Redis
//! read and write gives up after `REDIS_TIMEOUT`; the publisher pings when
//! idle and the subscriber pings on a quiet subscription, so a Redis that
//! stopped answering (a partition, no FIN) is noticed within about 2 s.
//!
//! The parts: `link` (connecting: TLS, timeouts, backoff, what is said on
//! stderr), `publisher`, `subscriber`, `reader` (the three threads) and
//! `stream` (what this server writes into Redis, and how it is read back).

mod link;
mod publisher;
mod reader;
mod stream;
mod subscriber;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::engine::BackplaneProbe;
use crate::engine::cluster::{FromCluster, Origin, Read, Stream};
use crate::engine::stats::BackplaneStats;
use crate::http::admin::Command;
use crate::websocket::frame::{self, Role};
use link::client;
use publisher::Publisher;
use reader::Reader;
use subscriber::Subscriber;

/// Chats waiting to be published before more are dropped, and history reads waiting.
const QUEUE: usize = 4096;
/// Bytes of chats waiting for the loop before the threads wait for it.
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
    outgoing: SyncSender<Outgoing>,
    reads: SyncSender<(usize, u32, Read, Instant)>,
    incoming: Receiver<FromCluster>,
    shared: Arc<Shared>,
}

/// What the threads and the loop share: the link state and the counters.
#[derive(Default)]
struct Shared {
    publisher_up: AtomicBool,
    subscriber_up: AtomicBool,
    /// Set when a thread woke the loop and the loop has not drained yet.
    wake_pending: AtomicBool,
    /// Bytes of chats waiting in the queue to the loop.
    queued_bytes: AtomicUsize,
    /// The loop is gone: threads stop waiting for it.
    closed: AtomicBool,
    published: AtomicU64,
    received: AtomicU64,
    lost_outgoing: AtomicU64,
    unpublished: AtomicU64,
    malformed: AtomicU64,
    admin_published: AtomicU64,
    admin_unpublished: AtomicU64,
    oversized: AtomicU64,
    forged: AtomicU64,
    trimmed: AtomicU64,
    subscriptions_lost: AtomicU64,
    history_reads: AtomicU64,
    history_read_failures: AtomicU64,
    history_reads_skipped: AtomicU64,
}

/// Where Redis is and how to reach it.
pub struct Target<'a> {
    /// `redis://` or `rediss://` (TLS).
    pub url: &'a str,
    pub channel: &'a str,
    /// PEM certificates to trust for `rediss://` instead of the built-in roots.
    pub ca: Option<&'a [u8]>,
    /// Largest chat (its text and ts) a client may send here: larger ones
    /// from Redis are dropped before they are queued.
    pub max_message: usize,
    /// Chats the stream keeps (`--history`).
    pub history: usize,
    /// Most bytes of chats one history read brings back (half the backlog:
    /// what a replay may take).
    pub read_budget: usize,
}

/// What the publisher sends to Redis.
enum Outgoing {
    /// A chat accepted here (its origin, its JSON).
    Chat(Origin, Vec<u8>),
    /// An admin command carried out here, for the other instances.
    Admin(Command),
}

/// The room's keys and channels in Redis.
#[derive(Clone)]
struct Room {
    channel: String,
    meta: String,
    stream: String,
    /// Admin commands: a capped stream of them, and a channel that says one was added.
    admin_channel: String,
    admin_stream: String,
    /// The bans and mutes in force, with their ends (Redis's clock).
    kept: String,
}

/// The threads' way to the loop: a bounded queue, its byte count, the waker.
#[derive(Clone)]
struct ToLoop {
    queue: SyncSender<FromCluster>,
    waker: Arc<Waker>,
    shared: Arc<Shared>,
}

impl ToLoop {
    /// Hands `message` (carrying `bytes` of chats) to the loop, waiting while
    /// the queue is full; false once the loop is gone.
    fn send(&self, message: FromCluster, bytes: usize) -> bool {
        let s = &self.shared;
        // Wait for room by bytes (a single message larger than the budget passes alone).
        while bytes > 0
            && s.queued_bytes.load(Ordering::Acquire) > 0
            && s.queued_bytes.load(Ordering::Acquire) + bytes > QUEUE_BYTES
        {
            if s.closed.load(Ordering::Relaxed) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        s.queued_bytes.fetch_add(bytes, Ordering::AcqRel);
        let mut message = message;
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(back)) => {
                    message = back;
                    if s.closed.load(Ordering::Relaxed) {
                        return false;
                    }
                    let _ = self.waker.wake();
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        // One wake per batch: the loop drains everything queued at once.
        if !s.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.waker.wake();
        }
        true
    }
}

impl Backplane {
    /// Starts the Redis threads; `waker` wakes the loop when something arrives.
    pub fn start(target: &Target<'_>, waker: Waker) -> Result<Self, String> {
        let waker = Arc::new(waker);
        let client = client(target)?;
        let id = instance_id();
        let shared = Arc::new(Shared::default());
        let (outgoing, to_publish) = mpsc::sync_channel(QUEUE);
        let (reads, to_read) = mpsc::sync_channel(QUEUE);
        let (to_loop, incoming) = mpsc::sync_channel(QUEUE);
        let to_loop = ToLoop {
            queue: to_loop,
            waker: Arc::clone(&waker),
            shared: Arc::clone(&shared),
        };
        let room = Room {
            channel: target.channel.to_string(),
            meta: format!("{}:meta", target.channel),
            stream: format!("{}:stream", target.channel),
            admin_channel: format!("{}:admin", target.channel),
            admin_stream: format!("{}:admin-stream", target.channel),
            kept: format!("{}:restrictions", target.channel),
        };
        let spawn = |name: &str, run: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new()
                .name(name.into())
                .spawn(run)
                .map(|_| ())
                .map_err(|e| format!("cannot start the Redis thread: {e}"))
        };
        let publisher = Publisher {
            client: client.clone(),
            sequence_key: format!("{}:published:{id:016x}", target.channel),
            instance: id,
            room: room.clone(),
            max_len: target.history.max(1),
            to_loop: to_loop.clone(),
        };
        spawn(
            "redis-publish",
            Box::new(move || publisher.run(&to_publish)),
        )?;
        let subscriber = Subscriber {
            client: client.clone(),
            room: room.clone(),
            max_message: target.max_message + MESSAGE_OVERHEAD,
            to_loop: to_loop.clone(),
        };
        spawn("redis-subscribe", Box::new(move || subscriber.run()))?;
        let reader = Reader {
            client,
            room,
            budget: target.read_budget,
            to_loop,
        };
        spawn("redis-history", Box::new(move || reader.run(&to_read)))?;
        Ok(Self {
            id,
            waker,
            outgoing,
            reads,
            incoming,
            shared,
        })
    }

    /// This instance's id among those sharing the room.
    pub fn instance(&self) -> u64 {
        self.id
    }

    /// Queues a chat accepted here for publishing (its JSON, not its frame
    /// header); if the queue is full it is dropped and counted.
    pub fn publish(&self, chat_frame: &[u8], origin: Origin) {
        let Ok(Some((_, header_len))) = frame::parse_header(chat_frame, Role::Client) else {
            return;
        };
        let json = chat_frame[header_len..].to_vec();
        if self
            .outgoing
            .try_send(Outgoing::Chat(origin, json))
            .is_err()
        {
            self.shared.lost_outgoing.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Queues an admin command carried out here, for the other instances;
    /// if the queue is full it is not sent: counted and said on stderr.
    pub fn moderate(&self, command: &Command) {
        if self
            .outgoing
            .try_send(Outgoing::Admin(command.clone()))
            .is_err()
        {
            publisher::not_sent(&self.shared, command, "the queue to Redis is full");
        }
    }

    /// Asks for a join's history; false if the reader's queue is full (the
    /// engine then answers from its ring).
    pub fn read_history(&self, key: usize, conn: u32, read: Read) -> bool {
        self.reads
            .try_send((key, conn, read, Instant::now()))
            .is_ok()
    }

    /// Hands what the threads sent to `handle`, at most `QUEUE` per call so
    /// one turn stays short; more wakes the loop again.
    pub fn drain(&self, mut handle: impl FnMut(FromCluster)) {
        self.shared.wake_pending.store(false, Ordering::Release);
        let mut taken = 0;
        for message in self.incoming.try_iter().take(QUEUE) {
            let bytes = match &message {
                FromCluster::Chat { json, .. } | FromCluster::Unpublished { json, .. } => {
                    json.len()
                }
                FromCluster::History { stream, .. } => stream.as_ref().map_or(0, stream_bytes),
                _ => 0,
            };
            self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
            handle(message);
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

impl Drop for Backplane {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Relaxed);
    }
}

impl Shared {
    /// Whether both the publisher and the subscriber are connected.
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
            unpublished: get(&self.unpublished),
            malformed: get(&self.malformed),
            admin_published: get(&self.admin_published),
            admin_unpublished: get(&self.admin_unpublished),
            oversized: get(&self.oversized),
            forged: get(&self.forged),
            trimmed: get(&self.trimmed),
            subscriptions_lost: get(&self.subscriptions_lost),
            history_reads: get(&self.history_reads),
            history_read_failures: get(&self.history_read_failures),
            history_reads_skipped: get(&self.history_reads_skipped),
            connections: link::open_connections(),
        }
    }
}

/// 64 random bits (std's OS-seeded hash keys): unique per process in practice.
fn instance_id() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Bytes of chats in a history read, as counted in the queue to the loop.
fn stream_bytes(stream: &Stream) -> usize {
    stream.chats.iter().map(|(_, json)| json.len()).sum()
}
