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
//! from Redis), how much to read (`read_limit`) and when to call again
//! (`next_deadline`). No sockets, no clock reads, no threads.
//!
//! Connections are kept in a slab; the driver keeps its socket under the
//! same key. A key is freed only when the driver takes its `Close` action,
//! so it cannot be reused while the driver still holds the old socket.

pub mod catch_up;
pub mod close_cause;
pub mod cluster;
pub mod connection;
pub mod history;
pub mod ip_limit;
pub mod outbox;
pub mod room;
pub mod stats;
pub mod timer_wheel;

use std::collections::{BTreeMap, VecDeque};
use std::io::IoSlice;
use std::net::IpAddr;
use std::rc::Rc;

use slab::Slab;

use crate::chat::protocol::{self, Catchup, Ignored};
use crate::chat::session::{ChatState, Member, Outcome};
use crate::config::Config;
use crate::http::proxy::{self, Cidr, ProxyHeader};
use crate::http::{Head, MAX_HEAD, Origins, Reject, Route, response};
use crate::websocket::frame::{self, OpCode, Role};
use crate::websocket::message::{Event, Limits, MessageReader};
use catch_up::CatchUp;
use close_cause::{After, CloseCause};
use cluster::{Cluster, Origin, Read};
use connection::{Connection, Phase};
use history::History;
use ip_limit::IpLimit;
use outbox::FRAME_COST;
use room::Room;
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
}

/// Reports the Redis backplane's state for `/health` and `/stats`.
pub type BackplaneProbe = Box<dyn Fn() -> BackplaneStats>;
/// Reads the process's figures for `/metrics` (the driver reads `/proc`).
pub type ProcessProbe = Box<dyn Fn() -> ProcessStats>;

/// What the driver decides for the engine beside the flags.
#[derive(Clone, Debug)]
pub struct Options {
    /// The connection limit in force.
    pub max_conns: usize,
    /// With `--redis`: this instance's id among those sharing the room.
    pub instance: Option<u64>,
    /// This room's epoch while it orders its own chats: chosen at random at
    /// start, so clients can tell that the history they knew is gone.
    pub epoch: String,
}

/// The whole server's state, without I/O.
pub struct Engine {
    config: Config,
    /// Which browser pages may upgrade (from `--allowed-origin`).
    origins: Origins,
    max_conns: usize,
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
        Self {
            origins: Origins::from_flags(&config.allowed_origins),
            history: History::new(config.history, config.history_bytes),
            cluster: options
                .instance
                .map(|instance| Cluster::new(instance, &options.epoch)),
            catching_up: BTreeMap::new(),
            awaiting: 0,
            plain_members: 0,
            // Guest numbers start at a random thousand, so instances sharing
            // a room through Redis rarely give the same name.
            next_guest: u64::from_str_radix(options.epoch.get(..3).unwrap_or("0"), 16).unwrap_or(0)
                * 1000,
            epoch: options.epoch.into(),
            config,
            max_conns: options.max_conns,
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
    /// `--max-conns` and `REFUSAL_SLOTS` being refused, the private one
    /// `PRIVATE_SLOTS`; so a full public port never starves the private one
    /// of descriptors.
    pub fn accepting(&self, private: bool) -> bool {
        let room = match private {
            true => self.private_conns < PRIVATE_SLOTS,
            false => self.public_conns() < self.max_conns + REFUSAL_SLOTS,
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
        let key = self.conns.insert(Connection::new(self.next_id, now));
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

    /// The client's address is known: counted for `--max-conns-per-ip`
    /// (refused with 429 over it).
    fn client_address(&mut self, key: usize, client: IpAddr, now: u64) {
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

    /// The statistics block printed at exit.
    pub fn summary(&self, now: u64) -> String {
        self.stats
            .summary(now.saturating_sub(self.started) as f64 / 1000.0)
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

    /// What the engine holds in memory for one connection: the struct, its
    /// queue as charged, its reader's buffers and any request head.
    pub fn memory(&self, key: usize) -> usize {
        let Some(conn) = self.conns.get(key) else {
            return 0;
        };
        let buffered = match &conn.phase {
            Phase::Handshaking { head, .. } => head.capacity(),
            Phase::Open { reader, .. } | Phase::Closing { reader } => reader.buffered(),
            _ => 0,
        };
        std::mem::size_of::<Connection>() + conn.outbox.cost() + buffered
    }

    /// The most `memory` may ever say for one connection: `--max-backlog`,
    /// the replies one read can add past it, and a message being assembled
    /// (its buffer grows by doubling, so up to twice `--max-message-size`).
    /// One read adds at most: the replies to the frames that came behind the
    /// request head (that read takes up to `MAX_HEAD` + 1 bytes), or to the
    /// `MIN_READ` bytes read close to the limit, or the reply to a message
    /// that read completed (at most `--max-message-size`). A catch-up
    /// queues chats while its queue is under half the backlog (so one chat
    /// past it), and a read from Redis adds at most the other half (or one
    /// chat, if a single one is larger): one chat past the limit.
    pub fn memory_bound(&self) -> usize {
        let max_message = self.config.max_message_size;
        let one_reply = (max_message + frame::MAX_SERVER_HEADER + FRAME_COST)
            .max((MAX_HEAD + 1).max(MIN_READ) * REPLY_COST_PER_BYTE);
        let one_chat = max_message + MAX_CHAT_OVERHEAD + FRAME_COST;
        std::mem::size_of::<Connection>()
            + self.config.max_backlog
            + one_reply
            + 2 * max_message
            + one_chat
            + 1024
    }

    /// Checks what the engine's structures promise each other; `Err` says
    /// what is broken. For tests and the simulation, after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (index, &key) in self.room.members().iter().enumerate() {
            let member = self
                .member(key)
                .ok_or(format!("room lists {key}, not a member"))?;
            if member.index != index {
                return Err(format!(
                    "{key} is at {index} in the room, thinks {}",
                    member.index
                ));
            }
        }
        for (index, &key) in self.watchers.members().iter().enumerate() {
            let watching = self.member(key).and_then(|m| m.watching);
            if watching.map(|(i, _)| i) != Some(index) {
                return Err(format!("{key} is watcher {index}, thinks {watching:?}"));
            }
        }
        let mut members = 0;
        for (key, conn) in &self.conns {
            if let Phase::Open { chat, .. } = &conn.phase
                && let Some(member) = &chat.member
            {
                if member.catching_up {
                    if self
                        .catching_up
                        .get(&key)
                        .is_none_or(|c| c.conn() != conn.id)
                    {
                        return Err(format!("member {key} catches up, but is not listed"));
                    }
                    continue;
                }
                members += 1;
                if self.room.members().get(member.index) != Some(&key) {
                    return Err(format!("member {key} is not at its index in the room"));
                }
            }
            if conn.dirty && !self.dirty.contains(&key) {
                return Err(format!("{key} is dirty but not in the flush list"));
            }
            if self.memory(key) > self.memory_bound() {
                return Err(format!(
                    "{key} holds {} bytes, over the bound of {}",
                    self.memory(key),
                    self.memory_bound()
                ));
            }
        }
        if members != self.room.len() {
            return Err(format!(
                "{members} members, {} in the room",
                self.room.len()
            ));
        }
        for &key in self.catching_up.keys() {
            if !self.member(key).is_some_and(|m| m.catching_up) {
                return Err(format!("{key} is listed as catching up, but is not"));
            }
        }
        let awaiting = self.catching_up.values().filter(|c| c.awaits()).count();
        if awaiting != self.awaiting {
            return Err(format!(
                "{awaiting} catch-ups await, {} counted",
                self.awaiting
            ));
        }
        let refused = self.stats.refused_max_conns + self.stats.refused_per_ip;
        if self.stats.websocket_upgrades + refused > self.stats.connections_total {
            return Err("more upgrades and refusals than connections".into());
        }
        if self.stats.joins < self.online() as u64 {
            return Err("fewer joins than members".into());
        }
        Ok(())
    }

    // ---- Requests --------------------------------------------------------

    /// Bytes of the request head (see `HeadReader`: usually the whole
    /// request comes in one read and is parsed where it lies).
    fn on_head(&mut self, key: usize, data: &mut [u8], now: u64) {
        let Some(Phase::Handshaking { head, via_proxy }) =
            self.conns.get_mut(key).map(|c| &mut c.phase)
        else {
            return;
        };
        // A PROXY header comes before any byte of the request, in one piece.
        let mut data = data;
        if head.is_empty() {
            match (proxy::proxy_header(data), *via_proxy) {
                (ProxyHeader::Absent, _) => {}
                (ProxyHeader::Present { client, len }, true) => {
                    *via_proxy = false;
                    // LOCAL or UNKNOWN: the proxy's own connection (a health check).
                    let peer = client.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                    self.client_address(key, peer, now);
                    data = &mut data[len..];
                    if data.is_empty() {
                        return;
                    }
                }
                // From an untrusted peer: anyone could claim any address. (A
                // short read that only may be one, "P", is left to the HTTP parser.)
                (ProxyHeader::Bad, false) if !proxy::is_header_start(data) => {}
                (_, _) => {
                    self.stats.refused_proxy_header += 1;
                    return self.reject(key, Reject::BadRequest, false, now);
                }
            }
        }
        let Some(Phase::Handshaking { head, via_proxy }) =
            self.conns.get_mut(key).map(|c| &mut c.phase)
        else {
            return;
        };
        let via_proxy = *via_proxy;
        // Out of the connection while the route is acted on, back if incomplete.
        let mut reader = std::mem::take(head);
        match reader.read(data, &self.origins) {
            Ok(Head::Incomplete) => {
                if let Some(Phase::Handshaking { head, .. }) =
                    self.conns.get_mut(key).map(|c| &mut c.phase)
                {
                    *head = reader;
                }
            }
            Err(reject) => self.reject(key, reject, false, now),
            Ok(Head::Complete { request, rest }) => {
                let head_only = request.head_only;
                if via_proxy {
                    // No PROXY header: the proxy's last X-Forwarded-For hop
                    // (or the proxy's own address if it sent none).
                    let client = request
                        .forwarded_for
                        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
                    self.client_address(key, client, now);
                    if !matches!(
                        self.conns.get(key).map(|c| &c.phase),
                        Some(Phase::Handshaking { .. })
                    ) {
                        return;
                    }
                }
                match request.answer {
                    Err(reject) => self.reject(key, reject, head_only, now),
                    Ok(route) => self.route(key, route, head_only, now),
                }
                // Frames sent right behind the request head belong to the new connection.
                if !rest.is_empty() {
                    self.on_frames(key, rest, now);
                }
            }
        }
    }

    fn route(&mut self, key: usize, route: Route, head_only: bool, now: u64) {
        // With --metrics-address, /metrics and /stats live there only, and it serves nothing else.
        if self.config.metrics_address.is_some() {
            let private = self.conns.get(key).is_some_and(|c| c.private);
            let for_operators = matches!(route, Route::Metrics | Route::Stats | Route::Health);
            if private != for_operators && !matches!(route, Route::Health) {
                return self.reject(key, Reject::NotFound, head_only, now);
            }
        }
        match route {
            Route::Upgrade { accept, plain } => self.open(key, &accept, plain, now),
            Route::Page => {
                self.stats.http_page += 1;
                self.respond(key, Rc::clone(&self.page), head_only, now);
            }
            Route::Health => {
                self.stats.http_health += 1;
                let body: &[u8] = match &self.backplane {
                    Some(probe) if probe().state != "up" => {
                        b"ok; backplane down: chats reach this instance's clients only\n"
                    }
                    _ => b"ok\n",
                };
                let answer = response::ok("text/plain; charset=utf-8", body);
                self.respond(key, answer.into(), head_only, now);
            }
            Route::Stats => {
                self.stats.http_stats += 1;
                let backplane = self.backplane.as_ref().map(|probe| probe());
                let body = self.stats.to_json(self.live(now), backplane);
                let answer = response::ok("application/json", &body);
                self.respond(key, answer.into(), head_only, now);
            }
            Route::Metrics => {
                self.stats.http_metrics += 1;
                let backplane = self.backplane.as_ref().map(|probe| probe());
                let mut process = self
                    .process
                    .as_ref()
                    .map(|probe| probe())
                    .unwrap_or_default();
                // One socket per connection and per Redis connection: counted, not listed.
                let redis = backplane.as_ref().map_or(0, |b| b.connections);
                process.open_fds += (self.conns.len() + redis) as u64;
                let body = self
                    .stats
                    .to_prometheus(self.live(now), backplane, &process);
                let answer = response::ok("text/plain; version=0.0.4; charset=utf-8", &body);
                self.respond(key, answer.into(), head_only, now);
            }
        }
    }

    /// The figures of the moment, for `/stats` and `/metrics`.
    fn live(&self, now: u64) -> Live<'_> {
        Live {
            connections: self.conns.len(),
            joined: self.online(),
            uptime_seconds: now.saturating_sub(self.started) as f64 / 1000.0,
            epoch: &self.epoch,
            order: self.cluster.as_ref().map(Cluster::order),
        }
    }

    fn open(&mut self, key: usize, accept: &str, plain: bool, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let chat = match plain {
            true => ChatState::plain(now, self.config.max_message_size),
            false => ChatState::new(now),
        };
        conn.phase = Phase::Open {
            reader: MessageReader::default(),
            chat,
        };
        conn.plain = plain;
        self.stats.websocket_upgrades += 1;
        self.queue(key, response::switching_protocols(accept).into());
        self.set_timer(key, now + self.config.ping_interval_ms);
        if plain {
            // In the room at once, so a client that only reads gets the chats.
            self.next_guest += 1;
            let name = format!("guest-{}", self.next_guest);
            self.stats.plain_joins += 1;
            self.notice(
                key,
                &format!("* you are {name}; a first line \"/nick NAME\" picks a name"),
            );
            self.join(
                key,
                protocol::name_literal(&name),
                false,
                &Catchup::default(),
                now,
            );
        }
    }

    /// A line of the server's own to a plain-text client.
    fn notice(&mut self, key: usize, text: &str) {
        let frame = frame::server_frame(OpCode::Text, &[text.as_bytes()]);
        self.queue(key, frame.into());
    }

    fn reject(&mut self, key: usize, reject: Reject, head_only: bool, now: u64) {
        self.stats.rejected(reject);
        self.respond(key, reject.response().into(), head_only, now);
    }

    /// Sends a whole HTTP response (its head alone for `HEAD`), then closes.
    fn respond(&mut self, key: usize, response: Rc<[u8]>, head_only: bool, now: u64) {
        let response = match head_only {
            true => response::without_body(&response).into(),
            false => response,
        };
        self.queue(key, response);
        self.drain(key, now);
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
            Reaction::Chat(Outcome::Reply(frame)) => self.reply(key, frame.into()),
            Reaction::Chat(Outcome::Leave) => self.close(key, CloseCause::Leave, now),
            Reaction::Chat(Outcome::Rename(user)) => {
                let said = format!(
                    "* you are {}",
                    serde_json::from_str::<String>(&user).unwrap_or_default()
                );
                if let Some(member) = self.member_mut(key) {
                    member.user = user;
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

    // ---- The room --------------------------------------------------------

    fn join(&mut self, key: usize, user: Box<str>, presence: bool, catchup: &Catchup, now: u64) {
        if !matches!(
            self.conns.get(key).map(|c| &c.phase),
            Some(Phase::Open { .. })
        ) {
            return;
        }
        // A join that asked for chats catches up outside the room first
        // (`catch_up`): nothing live comes between its replay and `joined`.
        let catching_up = catchup.asked();
        let index = if catching_up { 0 } else { self.room.join(key) };
        let online = self.online() + usize::from(catching_up);
        let plain = self.conns.get(key).is_some_and(|c| c.plain);
        let Some(chat) = self.conns.get_mut(key).and_then(Connection::chat_mut) else {
            return;
        };
        let watching = presence.then(|| (self.watchers.join(key), online));
        chat.member = Some(Member {
            user,
            index,
            catching_up,
            watching,
        });
        self.stats.joins += 1;
        self.plain_members += usize::from(plain);
        self.presence_pending = !self.watchers.is_empty();
        if catching_up {
            self.start_catch_up(key, catchup, now);
        }
        if presence {
            // The newcomer learns the count at once; the others at the next presence tick.
            self.stats.presence_sent += 1;
            self.queue(key, protocol::presence_frame(online).into());
        }
    }

    /// Members: those in the room and those catching up.
    fn online(&self) -> usize {
        self.room.len() + self.catching_up.len()
    }

    /// Takes a member out of the room and the watchers; only `transition` calls it.
    fn leave_room(&mut self, member: &Member, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.plain) {
            self.plain_members -= 1;
        }
        if member.catching_up {
            self.drop_catch_up(key);
        } else if let Some(moved) = self.room.leave(key, member.index)
            && let Some(m) = self.member_mut(moved)
        {
            m.index = member.index;
        }
        if let Some((index, _)) = member.watching
            && let Some(moved) = self.watchers.leave(key, index)
            && let Some((moved_index, _)) = self.member_mut(moved).and_then(|m| m.watching.as_mut())
        {
            *moved_index = index;
        }
        self.presence_pending = !self.watchers.is_empty();
    }

    fn member(&self, key: usize) -> Option<&Member> {
        match &self.conns.get(key)?.phase {
            Phase::Open { chat, .. } => chat.member.as_ref(),
            _ => None,
        }
    }

    fn member_mut(&mut self, key: usize) -> Option<&mut Member> {
        self.conns
            .get_mut(key)
            .and_then(Connection::chat_mut)
            .and_then(|c| c.member.as_mut())
    }

    /// Tells each watcher the room's size if it changed since they last heard,
    /// at most once per `PRESENCE_INTERVAL_MS`, so a churning room costs them
    /// little. Nobody watching (the load tools) costs nothing. One frame,
    /// built once and shared, like a chat.
    fn send_presence(&mut self, now: u64) {
        if !self.presence_pending || now < self.presence_sent_at + PRESENCE_INTERVAL_MS {
            return;
        }
        self.presence_pending = false;
        self.presence_sent_at = now;
        let count = self.online();
        let mut frame: Option<Rc<[u8]>> = None;
        for i in 0..self.watchers.len() {
            let key = self.watchers.members()[i];
            let Some((_, seen)) = self.member_mut(key).and_then(|m| m.watching.as_mut()) else {
                continue;
            };
            if *seen == count {
                continue;
            }
            *seen = count;
            let frame = frame.get_or_insert_with(|| protocol::presence_frame(count).into());
            let frame = Rc::clone(frame);
            self.stats.presence_sent += 1;
            self.queue(key, frame);
        }
    }

    /// The hot path. The chat was serialized once into `frame`; each recipient
    /// gets a reference-count bump and a queue slot: no per-recipient
    /// allocation, copy or JSON work. Nothing is written here: the driver
    /// flushes each recipient once at the end of the turn, however many
    /// chats it got, in one `writev`.
    /// `id` is the one written in `frame`.
    fn relay(&mut self, sender: Option<usize>, id: u64, frame: Rc<[u8]>, now: u64) {
        self.stats.chats_relayed += 1;
        // Kept for joins that ask for it: the same frame, one more reference.
        self.history.record(id, Rc::clone(&frame));
        let limit = self.config.max_backlog;
        let mut delivered = 0;
        // Plain-text members get `name: text`: made once too, if any is here.
        let line: Option<Rc<[u8]>> = match self.plain_members {
            0 => None,
            _ => frame::parse_header(&frame, Role::Client)
                .ok()
                .flatten()
                .and_then(|(_, header)| protocol::plain_line(&frame[header..]))
                .map(Rc::from),
        };
        for &key in self.room.members() {
            if Some(key) == sender {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.outbox.cost() >= limit {
                self.slow.push(key);
                continue;
            }
            let frame = match (conn.plain, &line) {
                (false, _) => &frame,
                (true, Some(line)) => line,
                (true, None) => continue,
            };
            conn.outbox.push(Rc::clone(frame));
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            delivered += 1;
        }
        self.stats.deliveries += delivered;
        // A catch-up waiting for the id its client saw elsewhere may finish now.
        if self.awaiting > 0 {
            self.feed_awaiting(now);
        }
        while let Some(key) = self.slow.pop() {
            self.close(key, CloseCause::SlowConsumer, now);
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

    // ---- Closing ---------------------------------------------------------

    /// The one way a connection changes phase. Leaving `Open` takes it out of
    /// the room, so membership cannot outlive the phase that holds it.
    fn transition(&mut self, key: usize, next: impl FnOnce(Phase) -> Phase) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut old = std::mem::replace(&mut conn.phase, Phase::Closed);
        let member = match &mut old {
            Phase::Open { chat, .. } => chat.member.take(),
            _ => None,
        };
        conn.phase = next(old);
        if let Some(member) = member {
            self.leave_room(&member, key);
        }
    }

    /// Starts a close from our side: the close frame with the cause's code,
    /// counted under the cause, then what the cause says comes next.
    fn close(&mut self, key: usize, cause: CloseCause, now: u64) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        // Only one close frame per connection: after ours (or theirs) nothing
        // more is sent, and nothing more is counted.
        let open = matches!(conn.phase, Phase::Open { .. });
        if open {
            *cause.counter(&mut self.stats) += 1;
            self.queue(
                key,
                frame::server_close(cause.code(), cause.reason()).into(),
            );
        }
        match cause.after() {
            After::AwaitPeerClose if open => {
                self.transition(key, |phase| match phase {
                    Phase::Open { reader, .. } => Phase::Closing { reader },
                    other => other,
                });
                self.set_timer(key, now + CLOSE_WAIT_MS);
            }
            After::AwaitPeerClose => {}
            After::Drain => self.drain(key, now),
            After::Abandon => self.abandon(key),
        }
    }

    /// The last output goes out, then the write side is shut; input is discarded until EOF.
    fn drain(&mut self, key: usize, now: u64) {
        self.transition(key, |_| Phase::Draining { write_shut: false });
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Reading now only discards, so it can resume; we need it to see the peer's FIN.
        if conn.read_paused {
            conn.read_paused = false;
            self.actions.push_back(Action::ResumeReading(key));
        }
        self.set_timer(key, now + LINGER_MS);
        self.mark_dirty(key);
    }

    /// One last flush, then the socket is closed, without waiting for the peer.
    fn abandon(&mut self, key: usize) {
        self.transition(key, |_| Phase::Abandoned);
        self.mark_dirty(key);
    }

    /// Takes the connection out of the engine and tells the driver to close it.
    fn drop_conn(&mut self, key: usize) {
        if self
            .conns
            .get(key)
            .is_none_or(|c| matches!(c.phase, Phase::Closed))
        {
            return;
        }
        self.transition(key, |_| Phase::Closed);
        if let Some(limit) = &mut self.ip_limit {
            limit.release(key);
        }
        self.actions.push_back(Action::Close(key));
    }

    /// Stops accepting and sends close 1001 to every open connection.
    fn begin_shutdown(&mut self, now: u64) {
        self.state = RunState::ShuttingDown {
            until: now + SHUTDOWN_GRACE_MS,
        };
        self.actions.push_back(Action::StopListening);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Handshaking { .. }) => self.drop_conn(key),
                Some(Phase::Open { .. }) => self.close(key, CloseCause::Shutdown, now),
                _ => {}
            }
        }
    }

    // ---- Timers ----------------------------------------------------------

    /// Brings `key`'s timer forward to `at` if it is due later (the
    /// keepalive check sets it again from there).
    fn wake_at(&mut self, key: usize, at: u64) {
        if self.conns.get(key).is_some_and(|c| at < c.timer_at) {
            self.set_timer(key, at);
        }
    }

    fn set_timer(&mut self, key: usize, at: u64) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.timer_at = at;
            // Keys fit: `--max-conns` is capped far below u32::MAX.
            self.timers.insert(at, (key as u32, conn.id));
        }
        // The wheel has no cancel: entries of past deadlines and gone
        // connections wait in it until due, which with long timeouts and
        // churn would be without bound. Each connection has one live entry,
        // so once stale ones are most of the wheel they are swept out (the
        // sweep costs no more than the inserts that made them).
        if self.timers.len() > 2 * self.conns.len() + STALE_TIMERS_SWEPT_AT {
            let conns = &self.conns;
            self.timers.retain(|deadline, (key, id)| {
                conns
                    .get(key as usize)
                    .is_some_and(|c| c.id == id && c.timer_at == deadline)
            });
        }
    }

    /// Acts on due timers. An entry is live only if its connection still has
    /// the same id (keys are reused) and still waits for that deadline.
    fn expire_timers(&mut self, now: u64) {
        let mut fired = std::mem::take(&mut self.fired);
        self.timers.expire(now, &mut fired);
        for &(deadline, (key, id)) in &fired {
            let key = key as usize;
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.id != id || conn.timer_at != deadline {
                continue;
            }
            match conn.phase {
                Phase::Handshaking { .. } => {
                    self.stats.handshake_timeouts += 1;
                    self.drop_conn(key);
                }
                Phase::Open { .. } => self.keepalive(key, now),
                Phase::Closing { .. } => {
                    self.stats.close_timeouts += 1;
                    self.drop_conn(key);
                }
                Phase::Draining { .. } => {
                    self.stats.linger_timeouts += 1;
                    self.drop_conn(key);
                }
                Phase::Abandoned | Phase::Closed => {}
            }
        }
        fired.clear();
        self.fired = fired;
    }

    /// Pings a connection we have not heard from in `--ping-interval`; closes
    /// one silent for `--pong-timeout`. Also frees an idle connection's queue.
    fn keepalive(&mut self, key: usize, now: u64) {
        // The same timer serves a catch-up waiting too long for Redis.
        self.catch_up_timeout(key, now);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.outbox.release_if_empty();
        let silent = now.saturating_sub(conn.last_heard);
        let last_heard = conn.last_heard;
        if silent >= self.config.pong_timeout_ms {
            return self.close(key, CloseCause::KeepaliveTimeout, now);
        }
        let next = if silent >= self.config.ping_interval_ms {
            self.queue(key, Rc::clone(&self.ping));
            last_heard + self.config.pong_timeout_ms
        } else {
            last_heard + self.config.ping_interval_ms
        };
        let catch_up = self.catching_up.get(&key).and_then(|c| c.deadline);
        self.set_timer(key, next.min(catch_up.unwrap_or(u64::MAX)));
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
