//! The engine: every decision the server makes, as a sans-IO state machine.
//!
//! The driver (`event_loop`, or the simulation in `tests/sim`) owns the
//! sockets and the clock. It tells the engine what happened, each time with
//! an explicit `now` in milliseconds: a connection accepted (`handle_accept`),
//! bytes received (`handle_bytes`), the peer's FIN (`handle_eof`), bytes
//! written (`handle_written`, `handle_flushed`), time passing
//! (`handle_timeout`), a shutdown signal, what the Redis backplane reports
//! (`handle_cluster`: chats in Redis's order, history read from its
//! stream, the link's state). It takes back what to do: the bytes to write
//! per connection (`transmit`, as `IoSlice`s for one `writev`, for each key
//! `next_dirty` names), `Action`s (shut a write side, close a socket,
//! resume reading, stop or resume accepting, publish a chat, read history
//! from Redis, send an admin command to the other instances, say a line
//! on stderr), how much to read (`read_limit`) and when to call again
//! (`next_deadline`). No sockets, no clock reads, no threads.
//!
//! Connections are kept in a slab; the driver keeps its socket under the
//! same key. A key is freed only when the driver takes its `Close` action,
//! so it cannot be reused while the driver still holds the old socket.
//!
//! `Engine` is one struct; its methods are grouped by what they are about:
//! here accepting, reading, writing, time and frames; `requests` (the HTTP
//! front: head, routes, upgrade), `relay` (joining, presence, the relay),
//! `catch_up` (history and recovery for a join), `cluster` (what Redis
//! reports), `admin` (the admin API and moderation), `closing`, `timers`,
//! `invariants` (memory bounds and the checks the tests and the simulation
//! make). The other files are the parts it is made of (a connection, its
//! queue, the ring, the wheel, the bans and mutes, ...).

mod admin;
pub mod catch_up;
pub mod close_cause;
mod closing;
pub mod cluster;
pub mod connection;
pub mod history;
mod invariants;
pub mod ip_limit;
pub mod moderation;
pub mod outbox;
mod relay;
mod requests;
pub mod room;
pub mod snapshot;
pub mod stats;
pub mod timer_wheel;
mod timers;

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::net::IpAddr;
use std::rc::Rc;

use slab::Slab;

use crate::chat::protocol::{self, Catchup, Ignored};
use crate::chat::session::{ChatState, Member, Outcome};
use crate::config::Config;
use crate::http::admin::{Command, Fingerprint};
use crate::http::proxy::{self, Cidr, ProxyHeader};
use crate::http::{Head, MAX_HEAD, Origins, Reject, Route, response};
use crate::websocket::frame::{self, OpCode, Role};
use crate::websocket::message::{Event, Limits, MessageReader};
pub use admin::Kept;
use catch_up::CatchUp;
use close_cause::{After, CloseCause};
use cluster::{Cluster, Origin, Read};
use connection::{AdminBody, Connection, Phase};
use history::History;
use ip_limit::IpLimit;
use moderation::Moderation;
use outbox::FRAME_COST;
use room::Room;
use snapshot::Snapshot;
use stats::{BackplaneStats, Counters, Live, ProcessStats};
use timer_wheel::TimerWheel;

/// Largest read the driver is asked to make (its read buffer's size).
pub const READ_BUF: usize = 64 * 1024;
/// Smallest read offered to a connection close to its backlog limit.
const MIN_READ: usize = 512;
/// The most one received byte can add to its sender's queue in replies:
/// an empty echoed frame is 6 bytes in and 2 + `FRAME_COST` charged out. (In
/// chat mode it is under 4: the shortest JSON ping, 21 bytes, gets an 81-byte
/// pong; pongs to ping frames replace each other.) Reads are sized by it, so
/// one read cannot push a queue far past `--max-backlog`.
const REPLY_COST_PER_BYTE: usize = 11;
/// Bytes a relayed chat's frame may have beyond the message its sender sent:
/// the frame header, the envelope, the id and the name (64 characters of
/// at most 4 bytes, quoted).
pub const MAX_CHAT_OVERHEAD: usize = 512;
/// How long we wait for the peer's close frame after sending ours.
const CLOSE_WAIT_MS: u64 = 2_000;
/// How long a draining connection may wait for the peer's FIN.
const LINGER_MS: u64 = 2_000;
/// Pause before accepting again when the process is out of file descriptors.
const ACCEPT_PAUSE_MS: u64 = 100;
/// Public connections past `--max-conns` held at once while they are
/// refused (`503`). The first half get a graceful close (the answer, a FIN,
/// the client's FIN awaited); past that, descriptors are short and a
/// refused connection is closed as soon as its answer is written. The
/// public listener accepts no more until one is gone, so refusals can
/// never take the descriptors kept for the private listener.
pub const REFUSAL_SLOTS: usize = 16;
/// Connections the private listener (`--metrics-address`) holds at once.
pub const PRIVATE_SLOTS: usize = 8;
/// How long shutdown waits for clients to answer our close frames.
const SHUTDOWN_GRACE_MS: u64 = 2_000;
/// Least time between two presence messages.
const PRESENCE_INTERVAL_MS: u64 = 500;
/// Stale timer entries tolerated beyond two per connection before a sweep.
const STALE_TIMERS_SWEPT_AT: usize = 1024;
/// Timer wheel: 512 slots of 100 ms, 51.2 s per turn.
const WHEEL_SLOTS: usize = 512;
const WHEEL_TICK_MS: u64 = 100;
/// The browser page served at `/`: HTML, CSS and script in one file, built in
/// (build.rs drops its comment lines and indentation).
const PAGE: &str = include_str!(concat!(env!("OUT_DIR"), "/page.html"));

/// Something the driver must do, taken with `poll_action`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Shut the write side of this connection's socket: a FIN after the last byte.
    ShutdownWrite(usize),
    /// Close this connection's socket. The key may be reused from now on.
    Close(usize),
    /// Read from this connection again (reading was paused by backpressure).
    ResumeReading(usize),
    /// Close the listener: shutdown has begun and new clients are refused.
    StopListening,
    /// Accept again (on both listeners): a pause after running out of
    /// descriptors is over, or a slot freed.
    ResumeAccepting,
    /// Publish this chat (its frame; the JSON after the header is its fields)
    /// through Redis, which orders it and hands it to every instance.
    Publish { frame: Rc<[u8]>, origin: Origin },
    /// Read this join's history from the Redis stream; answer with
    /// `FromCluster::History` for this key and connection id.
    ReadHistory { key: usize, conn: u32, read: Read },
    /// Send this admin command to the other instances through Redis.
    Moderate(Command),
    /// Say this line on stderr (an admin action: what, on whom, by whom).
    Log(String),
}

/// Reports the Redis backplane's state for `/health` and `/stats`.
pub type BackplaneProbe = Box<dyn Fn() -> BackplaneStats>;
/// Reads the process's figures for `/metrics` (the driver reads `/proc`).
pub type ProcessProbe = Box<dyn Fn() -> ProcessStats>;

/// What the driver decides for the engine beside the flags.
#[derive(Debug)]
pub struct Options {
    /// The connection limit in force.
    pub max_conns: usize,
    /// Most public connections the descriptors allow at once, whatever
    /// `--max-conns` says: the open-file limit less the server's own and
    /// the private listener's (`PRIVATE_SLOTS`).
    pub public_slots: usize,
    /// With `--redis`: this instance's id among those sharing the room.
    pub instance: Option<u64>,
    /// This room's epoch while it orders its own chats: chosen at random at
    /// start, so clients can tell that the history they knew is gone.
    pub epoch: String,
    /// The room a clean stop left in `--history-file`: its epoch and
    /// chats carry on (single instance only).
    pub restored: Option<Snapshot>,
    /// The fingerprint of `--admin-token-file`'s token: the admin API is
    /// served (on the private listener) only with one.
    pub admin_token: Option<Fingerprint>,
}

/// The whole server's state, without I/O.
pub struct Engine {
    config: Config,
    /// Which browser pages may upgrade (from `--allowed-origin`).
    origins: Origins,
    max_conns: usize,
    /// See `Options::public_slots`.
    public_slots: usize,
    /// With `--redis`: the backplane's state, and who orders the room.
    cluster: Option<Cluster>,
    /// Members being sent the chats their join asked for, by key (not in
    /// `room` until their `joined`). Ordered, so a run replays exactly.
    catching_up: BTreeMap<usize, CatchUp>,
    /// Catch-ups waiting for the subscription to relay the id their client
    /// saw on another instance (fed after each relay while any wait).
    awaiting: usize,
    /// Members that are plain-text clients (relay makes their line only if any).
    plain_members: usize,
    /// The last `guest-N` given to a plain-text client.
    next_guest: u64,
    /// The room's recent chats, and the ids chats get.
    history: History,
    /// The epoch the room's ids belong to now (Redis's, or this instance's own).
    epoch: Box<str>,
    conns: Slab<Connection>,
    next_id: u32,
    /// `Some` when `--max-conns-per-ip` is set.
    ip_limit: Option<IpLimit>,
    room: Room,
    /// Members that asked for the online count (`"presence":true` in their join).
    watchers: Room,
    /// The room's size changed since the last presence message.
    presence_pending: bool,
    /// When presence messages last went out.
    presence_sent_at: u64,
    /// The browser page's whole HTTP response, built once.
    page: Rc<[u8]>,
    /// The keepalive ping frame, shared like a relayed chat.
    ping: Rc<[u8]>,
    /// Entries are (key, connection id); see `expire_timers` for stale ones.
    timers: TimerWheel<(u32, u32)>,
    /// Timers fired this turn (kept to reuse the allocation).
    fired: Vec<(u64, (u32, u32))>,
    /// Connections with output queued, flushed once at the end of the turn.
    dirty: Vec<usize>,
    /// Relay recipients over the backlog limit, closed after the fan-out.
    slow: Vec<usize>,
    actions: VecDeque<Action>,
    /// Accepting pauses after EMFILE/ENFILE: the public listener's, the private one's.
    accept_paused_until: [Option<u64>; 2],
    /// Connections that came in on the private listener.
    private_conns: usize,
    state: RunState,
    backplane: Option<BackplaneProbe>,
    process: Option<ProcessProbe>,
    /// `--trusted-proxy` blocks.
    trusted: Vec<Cidr>,
    /// Bans and mutes in force.
    moderation: Moderation,
    /// See `Options::admin_token`.
    admin_token: Option<Fingerprint>,
    stats: Counters,
    started: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RunState {
    Running,
    ShuttingDown { until: u64 },
}

/// What one event from an open or closing connection means. Owned, so the
/// borrow of the input ends before it is carried out.
enum Reaction {
    Nothing,
    /// Send this frame to the connection itself.
    Reply(Vec<u8>),
    /// Answer a ping with this pong (one waits at a time).
    Pong(Vec<u8>),
    Chat(Outcome),
    /// A binary message in chat mode.
    IgnoredBinary,
    /// The peer's close frame: answer it (unless we sent ours first) and finish.
    PeerClosed {
        reply: Option<Vec<u8>>,
    },
}

impl Engine {
    /// An engine for `config` and `options`, started at `now`.
    pub fn new(config: Config, options: Options, now: u64) -> Self {
        let trusted = config.trusted_proxies.clone();
        let ip_limit = (config.max_conns_per_ip > 0).then(|| IpLimit::new(config.max_conns_per_ip));
        let mut history = History::new(config.history, config.history_bytes);
        // The driver gives a restored room only without Redis (which keeps it).
        let epoch = match options.restored {
            Some(restored) => {
                history.restore(restored.last, restored.chats);
                restored.epoch
            }
            None => options.epoch.as_str().into(),
        };
        Self {
            origins: Origins::from_flags(&config.allowed_origins),
            history,
            cluster: options
                .instance
                .map(|instance| Cluster::new(instance, &options.epoch)),
            catching_up: BTreeMap::new(),
            awaiting: 0,
            plain_members: 0,
            // Guest numbers start at a random thousand (this start's own
            // epoch, not a restored one), so instances sharing a room, or
            // one started again, rarely give the same name.
            next_guest: u64::from_str_radix(options.epoch.get(..3).unwrap_or("0"), 16).unwrap_or(0)
                * 1000,
            epoch,
            config,
            max_conns: options.max_conns,
            public_slots: options.public_slots,
            conns: Slab::new(),
            next_id: 0,
            ip_limit,
            room: Room::default(),
            watchers: Room::default(),
            presence_pending: false,
            presence_sent_at: 0,
            page: response::page(PAGE).into(),
            ping: frame::server_frame(OpCode::Ping, &[]).into(),
            timers: TimerWheel::new(WHEEL_SLOTS, WHEEL_TICK_MS, now),
            fired: Vec::new(),
            dirty: Vec::new(),
            slow: Vec::new(),
            actions: VecDeque::new(),
            accept_paused_until: [None, None],
            private_conns: 0,
            state: RunState::Running,
            backplane: None,
            process: None,
            trusted,
            moderation: Moderation::default(),
            admin_token: options.admin_token,
            stats: Counters::default(),
            started: now,
        }
    }

    /// Gives `/health` and `/stats` the Redis backplane's state.
    pub fn set_backplane_probe(&mut self, probe: BackplaneProbe) {
        self.backplane = Some(probe);
    }

    /// How `/metrics` reads the process's figures.
    pub fn set_process_probe(&mut self, probe: ProcessProbe) {
        self.process = Some(probe);
    }

    // ---- Accepting -------------------------------------------------------

    /// Whether the driver should accept connections now, on the public or
    /// the `private` listener. Each has its slots: the public one up to
    /// `--max-conns` and `REFUSAL_SLOTS` being refused (and never more than
    /// the descriptors allow), the private one `PRIVATE_SLOTS`; so a full
    /// public port never starves the private one of descriptors.
    pub fn accepting(&self, private: bool) -> bool {
        let room = match private {
            true => self.private_conns < PRIVATE_SLOTS,
            false => {
                let most = (self.max_conns + REFUSAL_SLOTS).min(self.public_slots);
                self.public_conns() < most
            }
        };
        self.state == RunState::Running
            && self.accept_paused_until[usize::from(private)].is_none()
            && room
    }

    fn public_conns(&self) -> usize {
        self.conns.len() - self.private_conns
    }

    /// A connection from `peer` was accepted; returns its key. Over
    /// `--max-conns` or `--max-conns-per-ip` it is answered with a refusal.
    /// From a `--trusted-proxy`, the per-address count waits for the
    /// client's address (`client_address`).
    pub fn handle_accept(&mut self, peer: IpAddr, now: u64) -> usize {
        self.accept_conn(peer, false, now)
    }

    /// A connection on `--metrics-address`: it may ask for `/metrics`,
    /// `/stats` and `/health` only, and is not counted against the caps,
    /// so operators see the server when the public port is full.
    pub fn handle_accept_private(&mut self, peer: IpAddr, now: u64) -> usize {
        self.accept_conn(peer, true, now)
    }

    fn accept_conn(&mut self, peer: IpAddr, private: bool, now: u64) -> usize {
        let key = self.conns.insert(Connection::new(self.next_id, peer, now));
        self.next_id = self.next_id.wrapping_add(1);
        self.stats.connections_total += 1;
        self.stats.peak_connections = self.stats.peak_connections.max(self.conns.len() as u64);
        self.set_timer(key, now + self.config.handshake_timeout_ms);
        let via_proxy = self.trusted.iter().any(|block| block.contains(peer));
        if let Some(conn) = self.conns.get_mut(key) {
            conn.private = private;
            if let Phase::Handshaking { via_proxy: v, .. } = &mut conn.phase {
                *v = via_proxy && !private;
            }
        }
        self.private_conns += usize::from(private);
        let over = self.public_conns().saturating_sub(self.max_conns);
        if !private && over > REFUSAL_SLOTS / 2 {
            // Descriptors are short: the answer goes out, then the socket closes.
            self.stats.rejected(Reject::Unavailable);
            self.queue(key, Reject::Unavailable.response().into());
            self.abandon(key);
        } else if !private && over > 0 {
            self.reject(key, Reject::Unavailable, false, now);
        } else if !private && !via_proxy {
            self.client_address(key, peer, now);
        }
        key
    }

    /// The client's address is known: kept, and counted for
    /// `--max-conns-per-ip` (refused with 429 over it).
    fn client_address(&mut self, key: usize, client: IpAddr, now: u64) {
        if let Some(Phase::Handshaking { peer, .. }) = self.conns.get_mut(key).map(|c| &mut c.phase)
        {
            *peer = client;
        }
        if let Some(limit) = &mut self.ip_limit
            && !limit.admit(key, client)
        {
            self.reject(key, Reject::TooManyFromAddress, false, now);
        }
    }

    /// Accepting on the public or `private` listener failed for want of
    /// descriptors (EMFILE/ENFILE) or memory: accepting there again at once
    /// would fail again and spin, so it pauses.
    pub fn handle_accept_error(&mut self, private: bool, now: u64) {
        self.stats.accept_pauses += 1;
        self.accept_paused_until[usize::from(private)] = Some(now + ACCEPT_PAUSE_MS);
    }

    // ---- Reading ---------------------------------------------------------

    /// How many bytes the driver may read from this connection now; 0: none.
    ///
    /// A request head is read no further than the limit that refuses it. An
    /// open connection is read less as its queue of replies grows, so that
    /// one read cannot push it far past `--max-backlog`, and not at all once
    /// it is over (backpressure, resumed by `Action::ResumeReading`).
    pub fn read_limit(&self, key: usize) -> usize {
        let Some(conn) = self.conns.get(key) else {
            return 0;
        };
        match &conn.phase {
            Phase::Handshaking { head, .. } => (MAX_HEAD + 1).saturating_sub(head.len()).max(1),
            Phase::AdminBody(_) => self.admin_body_left(key),
            Phase::Open { .. } | Phase::Closing { .. } if conn.read_paused => 0,
            Phase::Open { .. } | Phase::Closing { .. } => {
                let room = self.config.max_backlog.saturating_sub(conn.outbox.cost());
                (room / REPLY_COST_PER_BYTE).clamp(MIN_READ, READ_BUF)
            }
            Phase::Draining { .. } => READ_BUF,
            Phase::Abandoned | Phase::Closed => 0,
        }
    }

    /// Bytes arrived from the peer. They are unmasked in place; nothing of
    /// them is kept but an incomplete frame or request head.
    pub fn handle_bytes(&mut self, key: usize, data: &mut [u8], now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.last_heard = now;
        match &conn.phase {
            Phase::Handshaking { .. } => self.on_head(key, data, now),
            Phase::AdminBody(_) => self.on_admin_body(key, data, now),
            Phase::Open { .. } | Phase::Closing { .. } => self.on_frames(key, data, now),
            // Draining: read only to see the peer's FIN.
            _ => {}
        }
    }

    /// The peer closed its side of the TCP connection.
    pub fn handle_eof(&mut self, key: usize) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Open { .. } | Phase::Closing { .. }) {
            self.stats.dropped_without_close += 1;
        }
        // A peer that half-closed may still read: give it what is queued (an HTTP answer, say).
        self.abandon(key);
    }

    /// Reading or writing failed (a reset, say): the connection is gone.
    pub fn handle_io_error(&mut self, key: usize) {
        if self
            .conns
            .get(key)
            .is_some_and(|c| !matches!(c.phase, Phase::Closed))
        {
            self.stats.dropped_without_close += 1;
            self.drop_conn(key);
        }
    }

    // ---- Writing ---------------------------------------------------------

    /// The socket can take more bytes: flush the connection this turn.
    pub fn handle_writable(&mut self, key: usize) {
        self.mark_dirty(key);
    }

    /// The next connection with output to flush this turn.
    pub fn next_dirty(&mut self) -> Option<usize> {
        while let Some(key) = self.dirty.pop() {
            if let Some(conn) = self.conns.get_mut(key)
                && conn.dirty
            {
                conn.dirty = false;
                return Some(key);
            }
        }
        None
    }

    /// Fills `out` with the connection's unwritten bytes, oldest first (for
    /// one `writev`); returns how many slices it used, 0 when nothing waits.
    pub fn transmit<'a>(&'a self, key: usize, out: &mut [IoSlice<'a>]) -> usize {
        self.conns
            .get(key)
            .map_or(0, |conn| conn.outbox.transmit(out))
    }

    /// The socket took the first `n` bytes `transmit` offered.
    pub fn handle_written(&mut self, key: usize, n: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.outbox.advance(n);
        }
    }

    /// A flush ended at `now`: everything was written, or the socket is full.
    /// A member catching up gets its next chats once its queue drains.
    pub fn handle_flushed(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.outbox.set_blocked(!conn.outbox.is_empty());
        if conn.read_paused && conn.outbox.cost() < self.config.max_backlog {
            conn.read_paused = false;
            self.actions.push_back(Action::ResumeReading(key));
        }
        match &mut conn.phase {
            Phase::Draining { write_shut } if !*write_shut && conn.outbox.is_empty() => {
                // FIN after our last byte. We keep reading until the peer's FIN, so
                // unread input never turns our close into a reset.
                *write_shut = true;
                self.actions.push_back(Action::ShutdownWrite(key));
            }
            Phase::Abandoned => self.drop_conn(key),
            _ => {}
        }
        if self.catching_up.contains_key(&key) {
            self.feed(key, now);
        }
    }

    // ---- Time, shutdown, the backplane ----------------------------------

    /// Called every turn: ends `--duration`, resumes accepting, expires
    /// timers and sends presence messages due by `now`.
    pub fn handle_timeout(&mut self, now: u64) {
        let end = (self.config.duration_ms > 0).then_some(self.started + self.config.duration_ms);
        if self.state == RunState::Running && end.is_some_and(|end| now >= end) {
            self.begin_shutdown(now);
        }
        for paused in &mut self.accept_paused_until {
            if paused.is_some_and(|until| now >= until) {
                *paused = None;
                self.actions.push_back(Action::ResumeAccepting);
            }
        }
        self.expire_timers(now);
        self.send_presence(now);
    }

    /// When `handle_timeout` next has work; `None`: only I/O can bring any.
    pub fn next_deadline(&self) -> Option<u64> {
        let stop = match self.state {
            RunState::Running => {
                (self.config.duration_ms > 0).then_some(self.started + self.config.duration_ms)
            }
            RunState::ShuttingDown { until } => Some(until),
        };
        let presence = self
            .presence_pending
            .then_some(self.presence_sent_at + PRESENCE_INTERVAL_MS);
        [
            self.timers.next_deadline(),
            self.accept_paused_until[0],
            self.accept_paused_until[1],
            stop,
            presence,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// SIGINT or SIGTERM: the first begins shutdown, a second ends the wait.
    pub fn handle_shutdown(&mut self, now: u64) {
        match self.state {
            RunState::Running => self.begin_shutdown(now),
            RunState::ShuttingDown { .. } => self.state = RunState::ShuttingDown { until: now },
        }
    }

    /// Whether shutdown is complete: every client gone, or the grace period over.
    pub fn is_finished(&self, now: u64) -> bool {
        match self.state {
            RunState::Running => false,
            RunState::ShuttingDown { until } => self.conns.is_empty() || now >= until,
        }
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        let action = self.actions.pop_front()?;
        if let Action::Close(key) = action {
            // The driver closes the socket now, so the key is free, and a
            // listener that was out of slots may accept again.
            let full = [!self.accepting(false), !self.accepting(true)];
            if let Some(conn) = self.conns.try_remove(key) {
                self.private_conns -= usize::from(conn.private);
                if full[usize::from(conn.private)] && self.state == RunState::Running {
                    self.actions.push_back(Action::ResumeAccepting);
                }
            }
        }
        Some(action)
    }

    // ---- Figures ---------------------------------------------------------

    /// The counters so far.
    pub fn stats(&self) -> &Counters {
        &self.stats
    }

    /// What `--history-file` keeps at a clean stop: the room's epoch, newest
    /// id and ring (`snapshot`). The driver keeps it only without Redis,
    /// which keeps the room itself.
    pub fn snapshot(&self) -> Vec<u8> {
        snapshot::encode(&self.epoch, &self.history)
    }

    /// The chats the ring keeps and the newest id, for the line said at a stop.
    pub fn history_span(&self) -> (usize, u64) {
        let h = &self.history;
        ((h.last() + 1 - h.first_kept()) as usize, h.last())
    }

    /// The statistics block printed at exit.
    pub fn summary(&self, now: u64) -> String {
        self.stats.summary(now.saturating_sub(self.started))
    }

    /// What `key`'s queue is charged against `--max-backlog`.
    pub fn backlog(&self, key: usize) -> usize {
        self.conns.get(key).map_or(0, |c| c.outbox.cost())
    }

    /// Connections the engine holds.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The connection limit in force.
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// Whether the connection is in the room (joined, and not catching up).
    pub fn is_member(&self, key: usize) -> bool {
        self.member(key).is_some_and(|m| !m.catching_up)
    }

    /// Whether the connection has joined (in the room, or catching up):
    /// what presence counts.
    pub fn is_joined(&self, key: usize) -> bool {
        self.member(key).is_some()
    }

    // ---- Frames and messages --------------------------------------------

    /// Acts on every complete frame in `data`; the reader keeps the rest.
    fn on_frames(&mut self, key: usize, data: &mut [u8], now: u64) {
        let echo = self.config.echo;
        let limits = Limits {
            role: Role::Server,
            max_message: self.config.max_message_size,
        };
        let mut pos = 0;
        while pos < data.len() {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            let (reader, chat) = match &mut conn.phase {
                Phase::Open { reader, chat } => (reader, Some(chat)),
                Phase::Closing { reader } => (reader, None),
                // A close or an error ended the stream: the rest is discarded.
                _ => return,
            };
            let (used, event) = match reader.read(&mut data[pos..], limits) {
                Ok(step) => step,
                Err(error) => return self.close(key, CloseCause::Protocol(error), now),
            };
            pos += used;
            if let Some(event) = event {
                // Each chat relayed takes the next id: ask anew for every event.
                let reaction = react(event, chat, echo, now, self.history.next_id());
                self.apply(key, reaction, now);
            }
        }
    }

    fn apply(&mut self, key: usize, reaction: Reaction, now: u64) {
        match reaction {
            Reaction::Nothing => {}
            Reaction::Reply(frame) => self.reply(key, frame.into()),
            Reaction::Pong(frame) => self.reply_pong(key, frame.into()),
            Reaction::IgnoredBinary => self.stats.ignored_binary += 1,
            Reaction::PeerClosed { reply } => {
                if let Some(reply) = reply {
                    self.stats.closed_by_client += 1;
                    self.queue(key, reply.into());
                }
                self.drain(key, now);
            }
            Reaction::Chat(Outcome::Join {
                user,
                presence,
                catchup,
            }) => self.join(key, user, presence, &catchup, now),
            Reaction::Chat(Outcome::Relay(frame)) => self.accept_chat(key, frame.into(), now),
            Reaction::Chat(Outcome::Muted(frame)) => self.muted_chat(key, frame, now),
            Reaction::Chat(Outcome::Reply(frame)) => self.reply(key, frame.into()),
            Reaction::Chat(Outcome::Leave) => self.close(key, CloseCause::Leave, now),
            Reaction::Chat(Outcome::Rename(user)) => {
                let said = format!(
                    "* you are {}",
                    serde_json::from_str::<String>(&user).unwrap_or_default()
                );
                // A name an operator muted stays muted under whoever takes it.
                let muted = self.moderation.is_muted(&user, now);
                if let Some(member) = self.member_mut(key) {
                    member.user = user;
                    member.muted = muted;
                }
                self.notice(key, &said);
            }
            Reaction::Chat(Outcome::Ignored(Ignored::InvalidName))
                if self.conns.get(key).is_some_and(|c| c.plain) =>
            {
                self.stats.ignored(Ignored::InvalidName);
                self.notice(key, "* that name is not allowed (docs/protocol.md, Names)");
            }
            Reaction::Chat(Outcome::Keepalive) => {}
            Reaction::Chat(Outcome::RateLimited) => self.stats.rate_limited += 1,
            Reaction::Chat(Outcome::Ignored(why)) => self.stats.ignored(why),
        }
    }

    // ---- Output ----------------------------------------------------------

    /// Queues a frame the server sends on its own (a chat, a presence
    /// count, a ping, a close frame, an HTTP answer).
    fn queue(&mut self, key: usize, frame: Rc<[u8]>) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.outbox.push(frame);
            self.mark_dirty(key);
        }
    }

    /// Queues an answer to something the peer asked (a JSON pong, an echo).
    fn reply(&mut self, key: usize, frame: Rc<[u8]>) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.outbox.push(frame);
            self.after_reply(key);
        }
    }

    /// Queues the answer to a ping frame (it may replace one still waiting).
    fn reply_pong(&mut self, key: usize, frame: Rc<[u8]>) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.outbox.push_pong(frame);
            self.after_reply(key);
        }
    }

    /// Our answers to this peer pile up (a flood of JSON pings, say): stop
    /// reading it until they drain.
    fn after_reply(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && conn.outbox.cost() >= self.config.max_backlog
            && !conn.read_paused
        {
            conn.read_paused = true;
            self.stats.read_pauses += 1;
        }
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
            && !matches!(conn.phase, Phase::Closed)
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }
}

/// Decides what one event from an open or closing connection means; a chat
/// relayed gets the room's next id, `next_id`.
fn react(
    event: Event<'_>,
    chat: Option<&mut ChatState>,
    echo: bool,
    now: u64,
    next_id: u64,
) -> Reaction {
    let pong = |payload: &[u8]| Reaction::Pong(frame::server_frame(OpCode::Pong, &[payload]));
    let Some(chat) = chat else {
        // Closing: we sent our close. Pings are still answered (RFC 6455 §5.5.2)
        // and the peer's close ends it; anything else is dropped.
        return match event {
            Event::Ping(payload) => pong(payload),
            Event::Close(_) => Reaction::PeerClosed { reply: None },
            _ => Reaction::Nothing,
        };
    };
    match event {
        Event::Text(text) if echo => {
            Reaction::Reply(frame::server_frame(OpCode::Text, &[text.as_bytes()]))
        }
        Event::Binary(data) if echo => {
            Reaction::Reply(frame::server_frame(OpCode::Binary, &[data]))
        }
        Event::Text(text) => Reaction::Chat(chat.on_text(text, now, next_id)),
        Event::Binary(_) => Reaction::IgnoredBinary,
        Event::Ping(payload) => pong(payload),
        Event::Pong(_) => Reaction::Nothing,
        // Echo the peer's code (RFC 6455 §5.5.1); a close without one is answered without one.
        Event::Close(peer) => Reaction::PeerClosed {
            reply: Some(match peer {
                Some(peer) => frame::server_close(peer.code, ""),
                None => frame::server_frame(OpCode::Close, &[]),
            }),
        },
    }
}

#[cfg(test)]
mod tests;
