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
//! is never lost to an instance. Joins asking for history are answered
//! from the stream by a reader thread (`Action::ReadHistory`).
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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use mio::Waker;

use crate::config::redacted;
use crate::engine::BackplaneProbe;
use crate::engine::cluster::{FromCluster, Origin, Read, Stream};
use crate::engine::stats::BackplaneStats;
use crate::websocket::frame::{self, Role};

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
/// Stream entries read per `XRANGE` when catching up.
const BACKFILL_BATCH: usize = 512;

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

/// The room's epoch (set if absent, with a fresh stream) and newest id.
const STATE_SCRIPT: &str = r"
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
return {redis.call('HGET', KEYS[1], 'epoch'), redis.call('HGET', KEYS[1], 'offset') or '0'}
";

/// Stream entries one page of a history read asks for: with the default
/// `--history`, a read is one page (one round trip, no script: a plain
/// `XREVRANGE` costs Redis a quarter of what the same read in Lua did).
const READ_PAGE: usize = 128;
/// A read asked for this long ago is not made: the engine answered the
/// join from its ring after 3 s (`cluster::WAIT_MS`).
const READ_GIVEN_UP: Duration = Duration::from_secs(3);

/// The loop's handle on the backplane.
pub struct Backplane {
    id: u64,
    waker: Arc<Waker>,
    outgoing: SyncSender<(Origin, Vec<u8>)>,
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

/// The room's keys and channel in Redis.
#[derive(Clone)]
struct Room {
    channel: String,
    meta: String,
    stream: String,
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
            history: target.history,
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
        if self.outgoing.try_send((origin, json)).is_err() {
            self.shared.lost_outgoing.fetch_add(1, Ordering::Relaxed);
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

/// An epoch to propose if the room has none in Redis (first start, or Redis
/// lost it): new each time, so a room that was lost never comes back under
/// the epoch it had.
/// An epoch as this server writes them (hex, 1 to 64 characters of
/// `[0-9A-Za-z._-]` accepted): one from Redis is sent to clients.
fn valid_epoch(epoch: &str) -> bool {
    (1..=64).contains(&epoch.len())
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn fresh_epoch() -> String {
    format!("{:016x}", instance_id())
}

/// Bytes of chats in a history read, as counted in the queue to the loop.
fn stream_bytes(stream: &Stream) -> usize {
    stream.chats.iter().map(|(_, json)| json.len()).sum()
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
            oversized: get(&self.oversized),
            forged: get(&self.forged),
            trimmed: get(&self.trimmed),
            subscriptions_lost: get(&self.subscriptions_lost),
            history_reads: get(&self.history_reads),
            history_read_failures: get(&self.history_read_failures),
            history_reads_skipped: get(&self.history_reads_skipped),
        }
    }
}

/// 64 random bits (std's OS-seeded hash keys): unique per process in practice.
fn instance_id() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::process::id())
}

/// Publishes queued chats with `PUBLISH_SCRIPT`. A command that fails
/// (a connection that died while idle fails once) is tried again on a
/// fresh connection: the script runs a sequence once, so that cannot
/// publish twice. A chat that could not be published goes back to the loop
/// as `Unpublished`, to be relayed there; if a command had been sent, it
/// may have run, and the engine then skips it when it comes back. When
/// idle, a PING each `REDIS_TIMEOUT` keeps the link state honest.
struct Publisher {
    client: redis::Client,
    room: Room,
    /// This instance's key for its last published sequence.
    sequence_key: String,
    max_len: usize,
    to_loop: ToLoop,
}

impl Publisher {
    fn run(&self, queue: &Receiver<(Origin, Vec<u8>)>) {
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

/// Why a command did not run: there was no connection (it surely did not),
/// or it failed on one (it may have).
enum Failure {
    NotConnected,
    Failed,
}

/// A connection made on demand, with backoff after failures, that says on
/// stderr when it comes up or goes down.
struct Link<'a> {
    client: &'a redis::Client,
    connection: Option<redis::Connection>,
    reporter: Reporter,
    retry_at: Instant,
    backoff: Duration,
}

impl<'a> Link<'a> {
    fn new(client: &'a redis::Client, what: &'static str) -> Self {
        Self {
            client,
            connection: None,
            reporter: Reporter::new(what),
            retry_at: Instant::now(),
            backoff: BACKOFF.0,
        }
    }

    fn is_up(&self) -> bool {
        self.connection.is_some()
    }

    /// Runs `command` on the connection (connecting first if it is time to);
    /// a failed command drops the connection.
    fn run<T>(
        &mut self,
        command: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, Failure> {
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
        let connection = self.connection.as_mut().ok_or(Failure::NotConnected)?;
        command(connection).map_err(|e| {
            self.reporter.down(&e);
            self.connection = None;
            Failure::Failed
        })
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

/// Receives the room's chats in Redis's order and hands them to the loop,
/// with no gap and no duplicate as long as the stream still holds them.
struct Subscriber {
    client: redis::Client,
    room: Room,
    /// Largest chat JSON queued for the loop; larger ones cannot be a chat
    /// this server would accept.
    max_message: usize,
    to_loop: ToLoop,
}

/// The epoch the subscriber follows and the id of the last chat it handed on.
struct Position {
    epoch: String,
    last: u64,
}

impl Subscriber {
    /// Subscribes, and again with backoff whenever Redis fails, until the loop is gone.
    fn run(&self) {
        let s = &self.to_loop.shared;
        let mut backoff = BACKOFF.0;
        let mut reporter = Reporter::new("subscriber");
        let mut position: Option<Position> = None;
        loop {
            let ended = self.subscribe(&mut position, &mut backoff, &mut reporter);
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
    fn subscribe(
        &self,
        position: &mut Option<Position>,
        backoff: &mut Duration,
        reporter: &mut Reporter,
    ) -> redis::RedisResult<()> {
        let s = &self.to_loop.shared;
        let mut data = connect(&self.client)?;
        let mut connection = connect(&self.client)?;
        let mut pubsub = connection.as_pubsub();
        // Subscribed first, then the offset read: nothing falls between.
        pubsub.subscribe(&self.room.channel)?;
        let (epoch, offset) = self.state(&mut data)?;
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
        if !self.to_loop.send(up, 0) || !self.backfill(&mut data, position)? {
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
    fn state(&self, data: &mut redis::Connection) -> redis::RedisResult<(String, u64)> {
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

    /// Hands on every chat the stream holds after `position.last`, in
    /// order: after each channel message, and after an outage (then it is
    /// what the instance missed). Ids the stream no longer has are counted
    /// as trimmed. False once the loop is gone.
    fn backfill(
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

/// A stream entry's id as Redis gave it (`[id, fields]`).
fn raw_entry_id(entry: &redis::Value) -> Option<String> {
    match entry {
        redis::Value::Array(pair) => match pair.first() {
            Some(redis::Value::BulkString(id)) => String::from_utf8(id.clone()).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The fields of a stream entry this server wrote.
#[derive(Default)]
struct Entry {
    origin: Option<Origin>,
    chat: Option<Vec<u8>>,
}

/// `XRANGE`'s answer as (id, fields), ids ascending; entries whose id is
/// not `N-0` with N above the previous are skipped.
fn stream_entries(value: redis::Value) -> Vec<(u64, Entry)> {
    let redis::Value::Array(items) = value else {
        return Vec::new();
    };
    let mut entries = Vec::with_capacity(items.len());
    let mut last = 0;
    for item in items {
        let redis::Value::Array(mut pair) = item else {
            continue;
        };
        let (Some(redis::Value::Array(fields)), Some(redis::Value::BulkString(id))) =
            (pair.pop(), pair.pop())
        else {
            continue;
        };
        let Some(id) = entry_id(&id).filter(|&id| id > last) else {
            continue;
        };
        last = id;
        let mut entry = Entry::default();
        let mut fields = fields.into_iter();
        while let (Some(name), Some(redis::Value::BulkString(value))) =
            (fields.next(), fields.next())
        {
            match name {
                redis::Value::BulkString(name) if name == b"o" => {
                    entry.origin = Origin::parse(&value)
                }
                redis::Value::BulkString(name) if name == b"c" => entry.chat = Some(value),
                _ => {}
            }
        }
        entries.push((id, entry));
    }
    entries
}

/// `N-0` → N: the ids this server's script gives.
fn entry_id(id: &[u8]) -> Option<u64> {
    let digits = id.strip_suffix(b"-0")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A channel message, `EPOCH ID ORIGIN JSON`: its epoch and id (the rest
/// is for other consumers; instances read the chat from the stream).
fn decode(message: &[u8]) -> Option<(&str, u64)> {
    let mut parts = message.splitn(3, |&b| b == b' ');
    let epoch = std::str::from_utf8(parts.next()?).ok()?;
    let id = parts.next()?;
    parts.next()?;
    let id = (!id.is_empty() && id.iter().all(u8::is_ascii_digit))
        .then(|| std::str::from_utf8(id).ok()?.parse().ok())??;
    valid_epoch(epoch).then_some((epoch, id))
}

/// Answers joins' history reads from the stream, one at
/// a time, on a connection of its own.
struct Reader {
    client: redis::Client,
    room: Room,
    /// `--history`: the most chats a read returns.
    history: usize,
    budget: usize,
    to_loop: ToLoop,
}

impl Reader {
    fn run(&self, requests: &Receiver<(usize, u32, Read, Instant)>) {
        let s = &self.to_loop.shared;
        let mut link = Link::new(&self.client, "history reader");
        // Ends when the loop drops its sender.
        for (key, conn, read, asked) in requests {
            // The join stopped waiting (after 3 s it is answered from the
            // ring): a backlog of reads after a storm is not worked through.
            if asked.elapsed() >= READ_GIVEN_UP {
                s.history_reads_skipped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            s.history_reads.fetch_add(1, Ordering::Relaxed);
            let stream = link.run(|c| self.read(c, read)).ok().flatten();
            if stream.is_none() {
                s.history_read_failures.fetch_add(1, Ordering::Relaxed);
            }
            let bytes = stream.as_ref().map_or(0, stream_bytes);
            if !self
                .to_loop
                .send(FromCluster::History { key, conn, stream }, bytes)
            {
                return;
            }
        }
    }

    /// One history read: pages of `READ_PAGE` entries, newest first, each
    /// read with the room's epoch and newest id in one `MULTI`, until the
    /// count, the stream or the byte budget ends (each chat counts 64 bytes
    /// more). None if the room's epoch changed between pages.
    fn read(&self, c: &mut redis::Connection, read: Read) -> redis::RedisResult<Option<Stream>> {
        let (count, low) = match read {
            Read::Since(seen) => (self.history, format!("({seen}-0")),
            Read::Recent(count) => (count as usize, "-".to_string()),
        };
        let mut high = "+".to_string();
        let mut room: Option<(String, u64)> = None;
        let mut chats = Vec::new();
        let mut spent = 0;
        loop {
            let page = (count - chats.len()).min(READ_PAGE);
            let mut pipe = redis::pipe();
            pipe.atomic()
                .cmd("HGET")
                .arg(&self.room.meta)
                .arg("epoch")
                .cmd("HGET")
                .arg(&self.room.meta)
                .arg("offset");
            if page > 0 {
                pipe.cmd("XREVRANGE")
                    .arg(&self.room.stream)
                    .arg(&high)
                    .arg(&low)
                    .arg("COUNT")
                    .arg(page);
            }
            let mut replies = pipe.query::<Vec<redis::Value>>(c)?.into_iter();
            let (Some(epoch), Some(offset)) = (replies.next(), replies.next()) else {
                return Ok(None);
            };
            let epoch: Option<String> = redis::from_redis_value(epoch).ok();
            let offset: Option<String> = redis::from_redis_value(offset).ok();
            let entries = replies.next().unwrap_or(redis::Value::Nil);
            // No offset yet: no chat yet.
            let (Some(epoch), Ok(offset)) = (epoch, offset.map_or(Ok(0), |o| o.parse())) else {
                return Ok(None);
            };
            if !valid_epoch(&epoch) {
                return Ok(None);
            }
            let state = (epoch, offset);
            match &room {
                Some((epoch, _)) if *epoch != state.0 => return Ok(None),
                Some(_) => {}
                None => room = Some(state),
            }
            // `stream_entries` wants ids ascending.
            let entries = match entries {
                redis::Value::Array(mut items) => {
                    items.reverse();
                    stream_entries(redis::Value::Array(items))
                }
                _ => Vec::new(),
            };
            let mut full = entries.len() < page;
            for (id, entry) in entries.into_iter().rev() {
                high = format!("({id}-0");
                // An entry without a chat is left out: the read is then short.
                let Some(json) = entry.chat else { continue };
                spent += json.len() + 64;
                if spent > self.budget {
                    full = true;
                    break;
                }
                chats.push((id, json));
            }
            if full || chats.len() >= count {
                break;
            }
        }
        let Some((epoch, last)) = room else {
            return Ok(None);
        };
        chats.reverse();
        Ok(Some(Stream {
            epoch: epoch.into(),
            last,
            chats,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(entry_id(b"17-0"), Some(17));
        for bad in [&b"17-1"[..], b"-0", b"x-0", b"17"] {
            assert_eq!(entry_id(bad), None);
        }
    }
}
