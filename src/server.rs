//! The event loop: one mio `Poll` owns every socket, all readiness and all timers.
//!
//! One turn: poll (the timer wheel sets the timeout) → accept until
//! WouldBlock → read each ready connection until WouldBlock and act on every
//! complete frame (a relay only queues the shared frame on each recipient)
//! → expire timers → flush each connection with queued output, many frames
//! per `writev`. The flush is last, so nothing a turn queues waits for the
//! next poll. What a request means is decided by the sans-IO modules
//! (`handshake`, `message`, `chat`); this file moves bytes and carries it out.

use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, UnixStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};
use slab::Slab;

use crate::backplane::Backplane;
use crate::chat::{ChatState, Member, Outcome};
use crate::close::{self, ProtocolError};
use crate::config::Config;
use crate::connection::{Connection, Phase};
use crate::frame::{self, OpCode, Role};
use crate::handshake::{self, Reject, Route};
use crate::ip_limit::IpLimit;
use crate::message::{Event, Limits, MessageReader};
use crate::outbox::Flushed;
use crate::protocol;
use crate::room::Room;
use crate::stats::Counters;
use crate::timer_wheel::TimerWheel;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const BACKPLANE: Token = Token(usize::MAX - 2);

/// The read buffer shared by every connection.
const READ_BUF: usize = 64 * 1024;
/// Room in front of a read for the incomplete frame kept from the last one (at most 14 + 125 bytes).
const UNREAD_MAX: usize = 256;
/// Reads from one connection per turn before the others get theirs.
const READS_PER_TURN: usize = 16;
/// How long we wait for the peer's close frame after sending ours.
const CLOSE_WAIT_MS: u64 = 2_000;
/// How long a connection may linger once its last output is queued.
const LINGER_MS: u64 = 2_000;
/// Pause before accepting again when the process is out of file descriptors.
const ACCEPT_PAUSE_MS: u64 = 100;
/// How long shutdown waits for clients to answer our close frames.
const SHUTDOWN_GRACE_MS: u64 = 2_000;
/// The browser page served at `/`: HTML, CSS and script in one file, built in.
const PAGE: &str = include_str!("page.html");
/// Least time between two presence messages.
const PRESENCE_INTERVAL_MS: u64 = 500;
/// File descriptors kept out of the default `--max-conns` (stdio, poll, listener, signal pipe, refusals).
const RESERVED_FDS: u64 = 32;
/// Timer wheel: 512 slots of 100 ms, 51.2 s per turn.
const WHEEL_SLOTS: usize = 512;
const WHEEL_TICK_MS: u64 = 100;

/// The chat server: `bind`, then `run` until `--duration` ends or a signal arrives.
pub struct Server {
    config: Config,
    max_conns: usize,
    poll: Poll,
    listener: TcpListener,
    /// Read end of the pipe the signal handler writes to.
    signals: UnixStream,
    conns: Slab<Connection>,
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
    /// With `--redis`: the link to the other instances.
    backplane: Option<Backplane>,
    /// Entries are (slab key, connection id); see `expire_timers` for stale ones.
    timers: TimerWheel<(u32, u32)>,
    stats: Counters,
    started: Instant,
    next_id: u32,
    /// Connections with output queued this turn, flushed once at its end.
    dirty: Vec<usize>,
    /// Connections that may have more to read: read budget used up, or reading resumed.
    read_again: Vec<usize>,
    /// Relay recipients over the backlog limit, closed after the fan-out.
    slow: Vec<usize>,
    /// Timers fired this turn (kept to reuse the allocation).
    fired: Vec<(u64, (u32, u32))>,
    read_buf: Vec<u8>,
    /// The keepalive ping frame, shared like a relayed chat.
    ping: Rc<[u8]>,
    accept_paused_until: Option<u64>,
    state: State,
}

enum State {
    Running,
    ShuttingDown { until: u64 },
}

/// What the loop does about one event. Owned, so the borrow of the read buffer ends first.
enum Reaction {
    Nothing,
    /// Send this frame to the connection itself.
    Reply(Vec<u8>),
    Chat(Outcome),
    /// A binary message in chat mode.
    IgnoredBinary,
    /// The peer's close frame: answer it (unless we sent ours first) and finish.
    PeerClosed {
        reply: Option<Vec<u8>>,
    },
}

impl Server {
    /// Binds the listener and the signal handlers. `fd_limit` sets the default `--max-conns`.
    pub fn bind(config: Config, fd_limit: u64) -> io::Result<Self> {
        let addr = (config.host.as_str(), config.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the host resolves to no address",
                )
            })?;
        let mut listener = TcpListener::bind(addr)?;
        // We coalesce writes ourselves; Nagle would only delay small frames.
        // Linux passes the option on to accepted sockets: one call instead of one per accept.
        #[cfg(target_os = "linux")]
        crate::sys::set_listener_nodelay(&listener)?;
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;

        // The handler only writes a byte to this pipe; the loop sees it as readable.
        let (read_end, write_end) = StdUnixStream::pair()?;
        read_end.set_nonblocking(true)?;
        write_end.set_nonblocking(true)?;
        for signal in [SIGINT, SIGTERM] {
            signal_hook::low_level::pipe::register(signal, write_end.try_clone()?)?;
        }
        let mut signals = UnixStream::from_std(read_end);
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)?;

        let backplane = match &config.redis {
            Some(url) => {
                let waker = mio::Waker::new(poll.registry(), BACKPLANE)?;
                let started = Backplane::start(url, &config.redis_channel, waker);
                Some(started.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?)
            }
            None => None,
        };
        let ip_limit = (config.max_conns_per_ip > 0).then(|| IpLimit::new(config.max_conns_per_ip));
        let default_max = fd_limit.saturating_sub(RESERVED_FDS).clamp(1, 1 << 24) as usize;
        Ok(Self {
            max_conns: config.max_conns.unwrap_or(default_max),
            config,
            poll,
            listener,
            signals,
            conns: Slab::new(),
            ip_limit,

            room: Room::default(),
            watchers: Room::default(),
            presence_pending: false,
            presence_sent_at: 0,
            page: handshake::page(PAGE).into(),
            backplane,
            timers: TimerWheel::new(WHEEL_SLOTS, WHEEL_TICK_MS, 0),
            stats: Counters::default(),
            started: Instant::now(),
            next_id: 0,
            dirty: Vec::new(),
            read_again: Vec::new(),
            slow: Vec::new(),
            fired: Vec::new(),
            read_buf: vec![0; UNREAD_MAX + READ_BUF],
            ping: frame::server_frame(OpCode::Ping, &[]).into(),
            accept_paused_until: None,
            state: State::Running,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The connection limit in force.
    pub fn max_conns(&self) -> usize {
        self.max_conns
    }

    /// Runs the loop until shutdown completes; returns the statistics block.
    pub fn run(mut self) -> io::Result<String> {
        let mut events = Events::with_capacity(1024);
        let end = (self.config.duration_ms > 0).then_some(self.config.duration_ms);
        loop {
            let now = self.now();
            match self.poll.poll(&mut events, self.poll_timeout(now, end)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = self.now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    SIGNALS => self.on_signal(now),
                    BACKPLANE => self.relay_remote(now),
                    Token(key) => {
                        if event.is_writable() || event.is_write_closed() {
                            self.mark_dirty(key);
                        }
                        let peer_closed = event.is_read_closed() || event.is_error();
                        if event.is_readable() || peer_closed {
                            self.read(key, now, peer_closed);
                        }
                    }
                }
            }
            for key in std::mem::take(&mut self.read_again) {
                self.read(key, now, true);
            }
            if self.accept_paused_until.is_some_and(|until| now >= until) {
                self.accept_paused_until = None;
                self.accept(now);
            }
            if matches!(self.state, State::Running) && end.is_some_and(|end| now >= end) {
                self.begin_shutdown(now);
            }
            self.expire_timers(now);
            self.send_presence(now);
            // Last in the turn: whatever the turn queued goes out before the next poll.
            self.flush_dirty();
            if let State::ShuttingDown { until } = self.state
                && (self.conns.is_empty() || now >= until)
            {
                break;
            }
        }
        Ok(self.stats.summary(self.started.elapsed().as_secs_f64()))
    }

    /// Milliseconds since the server started: the only clock read; everything below gets `now`.
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn poll_timeout(&self, now: u64, end: Option<u64>) -> Option<Duration> {
        if !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        let stop = match self.state {
            State::Running => end,
            State::ShuttingDown { until } => Some(until),
        };
        let presence = self
            .presence_pending
            .then_some(self.presence_sent_at + PRESENCE_INTERVAL_MS);
        [
            self.timers.next_deadline(),
            self.accept_paused_until,
            stop,
            presence,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    fn accept(&mut self, now: u64) {
        if self.accept_paused_until.is_some() || !matches!(self.state, State::Running) {
            return;
        }
        loop {
            let (mut stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(_) => {
                    // Out of file descriptors (EMFILE/ENFILE) or memory: accepting again
                    // at once would fail again and spin, so pause and retry from the loop.
                    self.stats.accept_pauses += 1;
                    self.accept_paused_until = Some(now + ACCEPT_PAUSE_MS);
                    return;
                }
            };
            #[cfg(not(target_os = "linux"))]
            let _ = stream.set_nodelay(true);
            let entry = self.conns.vacant_entry();
            let key = entry.key();
            // Edge-triggered, registered once for both directions: no reregister per write.
            if self
                .poll
                .registry()
                .register(
                    &mut stream,
                    Token(key),
                    Interest::READABLE | Interest::WRITABLE,
                )
                .is_err()
            {
                continue;
            }
            entry.insert(Connection::new(stream, self.next_id, now));
            self.next_id = self.next_id.wrapping_add(1);
            self.stats.connections_total += 1;
            self.stats.peak_connections = self.stats.peak_connections.max(self.conns.len() as u64);
            self.set_timer(key, now + self.config.handshake_timeout_ms);
            if self.conns.len() > self.max_conns {
                self.reject(key, Reject::Unavailable, now);
            } else if let Some(limit) = &mut self.ip_limit
                && !limit.admit(key, peer.ip())
            {
                self.reject(key, Reject::TooManyFromAddress, now);
            }
        }
    }

    fn on_signal(&mut self, now: u64) {
        let mut buf = [0u8; 64];
        while matches!(self.signals.read(&mut buf), Ok(n) if n > 0) {}
        match self.state {
            State::Running => self.begin_shutdown(now),
            // A second signal: stop waiting for clients.
            State::ShuttingDown { .. } => self.state = State::ShuttingDown { until: now },
        }
    }

    /// Stops accepting and sends close 1001 to every open connection.
    fn begin_shutdown(&mut self, now: u64) {
        self.state = State::ShuttingDown {
            until: now + SHUTDOWN_GRACE_MS,
        };
        let _ = self.poll.registry().deregister(&mut self.listener);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Handshaking { .. }) => self.drop_conn(key),
                Some(Phase::Open { .. }) => {
                    self.close(key, close::GOING_AWAY, "server shutting down", now)
                }
                _ => {}
            }
        }
    }

    /// Reads until WouldBlock (or the per-turn budget), acting on the bytes as they come.
    /// `until_eof` is false only for a fresh edge without a FIN: then a short read
    /// has emptied the socket and anything later raises a new edge, so the
    /// WouldBlock read (one syscall per message) is skipped.
    fn read(&mut self, key: usize, now: u64, until_eof: bool) {
        let mut buf = std::mem::take(&mut self.read_buf);
        let mut budget_used = true;
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.conns.get_mut(key) else {
                budget_used = false;
                break;
            };
            if conn.read_paused {
                budget_used = false;
                break;
            }
            // An incomplete frame from the last read goes in front of the new bytes.
            let kept = conn.unread.as_deref().map_or(0, |unread| {
                buf[..unread.len()].copy_from_slice(unread);
                unread.len()
            });
            match conn.stream.read(&mut buf[kept..]) {
                Ok(0) => {
                    self.on_eof(key);
                    budget_used = false;
                    break;
                }
                Ok(n) => {
                    conn.unread = None;
                    conn.last_heard = now;
                    let short = kept + n < buf.len();
                    self.on_bytes(key, &mut buf[..kept + n], now);
                    if short && !until_eof {
                        budget_used = false;
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    if e.kind() != io::ErrorKind::WouldBlock {
                        self.stats.dropped_without_close += 1;
                        self.drop_conn(key);
                    }
                    budget_used = false;
                    break;
                }
            }
        }
        if budget_used {
            self.read_again.push(key);
        }
        self.read_buf = buf;
    }

    fn on_eof(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Open { .. } | Phase::Closing { .. }) {
            self.stats.dropped_without_close += 1;
        }
        // A peer that half-closed may still read: give it what is queued (an HTTP answer, say).
        let _ = conn.outbox.flush(&mut conn.stream);
        self.drop_conn(key);
    }

    fn on_bytes(&mut self, key: usize, data: &mut [u8], now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match &mut conn.phase {
            Phase::Handshaking { head } => {
                // Usually the whole request comes in one read: parse it where it
                // lies and keep a copy only while it is incomplete.
                let first_read = head.is_empty();
                if !first_read {
                    head.extend_from_slice(data);
                }
                let parsed = handshake::parse(
                    if first_read { data } else { head },
                    &self.config.allowed_origins,
                );
                match parsed {
                    Ok(None) if first_read => head.extend_from_slice(data),
                    Ok(None) => {}
                    Err(reject) => self.reject(key, reject, now),
                    Ok(Some((route, head_len))) => {
                        let mut head = std::mem::take(head);
                        self.route(key, route, now);
                        // Frames sent right behind the request head belong to the new connection.
                        let rest = if first_read {
                            &mut data[head_len..]
                        } else {
                            &mut head[head_len..]
                        };
                        if !rest.is_empty() {
                            self.on_frames(key, rest, now);
                        }
                    }
                }
            }
            Phase::Open { .. } | Phase::Closing { .. } => self.on_frames(key, data, now),
            Phase::Draining { .. } => {}
        }
    }

    fn route(&mut self, key: usize, route: Route, now: u64) {
        match route {
            Route::Upgrade { accept } => self.open(key, &accept, now),
            Route::Page => {
                self.stats.http_page += 1;
                self.respond(key, Rc::clone(&self.page), now);
            }
            Route::Health => {
                self.stats.http_health += 1;
                let body: &[u8] = match &self.backplane {
                    Some(backplane) if !backplane.is_up() => {
                        b"ok; backplane down: chats reach this instance's clients only\n"
                    }
                    _ => b"ok\n",
                };
                self.respond(
                    key,
                    handshake::ok("text/plain; charset=utf-8", body).into(),
                    now,
                );
            }
            Route::Stats => {
                self.stats.http_stats += 1;
                let uptime = self.started.elapsed().as_secs_f64();
                let backplane = self.backplane.as_ref().map(Backplane::stats);
                let body = self
                    .stats
                    .to_json(self.conns.len(), self.room.len(), uptime, backplane);
                self.respond(key, handshake::ok("application/json", &body).into(), now);
            }
        }
    }

    fn open(&mut self, key: usize, accept: &str, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Open {
            reader: MessageReader::default(),
            chat: ChatState::new(now),
        };
        self.stats.websocket_upgrades += 1;
        self.send(key, handshake::switching_protocols(accept).into());
        self.set_timer(key, now + self.config.ping_interval_ms);
    }

    fn reject(&mut self, key: usize, reject: Reject, now: u64) {
        self.stats.rejected(reject);
        self.respond(key, reject.response().into(), now);
    }

    /// Sends a whole HTTP response, then closes.
    fn respond(&mut self, key: usize, response: Rc<[u8]>, now: u64) {
        self.send(key, response);
        self.drain(key, now);
    }

    /// Acts on every complete frame in `data`; keeps an incomplete one for the next read.
    fn on_frames(&mut self, key: usize, data: &mut [u8], now: u64) {
        let echo = self.config.echo;
        let limits = Limits {
            role: Role::Server,
            max_message: self.config.max_message_size,
        };
        let len = data.len();
        let mut pos = 0;
        while let Some(conn) = self.conns.get_mut(key) {
            let (reader, chat) = match &mut conn.phase {
                Phase::Open { reader, chat } => (reader, Some(chat)),
                Phase::Closing { reader } => (reader, None),
                // A close or an error ended the stream: the rest is discarded.
                _ => return,
            };
            let (used, event) = match reader.read(&mut data[pos..], limits) {
                Ok(step) => step,
                Err(error) => return self.fail(key, error, now),
            };
            pos += used;
            match event {
                Some(event) => {
                    let reaction = react(event, chat, echo, now);
                    self.apply(key, reaction, now);
                }
                None if used == 0 || pos == len => break,
                None => {}
            }
        }
        if let Some(conn) = self.conns.get_mut(key)
            && matches!(conn.phase, Phase::Open { .. } | Phase::Closing { .. })
            && pos < len
        {
            // At most a frame header or a control frame: the reader takes data payloads as they come.
            debug_assert!(len - pos <= UNREAD_MAX);
            conn.unread = Some(data[pos..].into());
        }
    }

    fn apply(&mut self, key: usize, reaction: Reaction, now: u64) {
        match reaction {
            Reaction::Nothing => {}
            Reaction::Reply(frame) => self.send(key, frame.into()),
            Reaction::IgnoredBinary => self.stats.ignored_binary += 1,
            Reaction::PeerClosed { reply } => {
                self.leave_room(key);
                if let Some(reply) = reply {
                    self.stats.closed_by_client += 1;
                    self.send(key, reply.into());
                }
                self.drain(key, now);
            }
            Reaction::Chat(Outcome::Join { user, presence }) => self.join(key, user, presence),
            Reaction::Chat(Outcome::Relay(frame)) => {
                if let Some(backplane) = &self.backplane {
                    backplane.publish(&frame);
                }
                self.relay(Some(key), frame.into(), now);
            }
            Reaction::Chat(Outcome::Reply(frame)) => self.send(key, frame.into()),
            Reaction::Chat(Outcome::Leave) => {
                self.stats.closed_by_leave += 1;
                self.close(key, close::NORMAL, "bye", now);
            }
            Reaction::Chat(Outcome::Keepalive) => {}
            Reaction::Chat(Outcome::RateLimited) => self.stats.rate_limited += 1,
            Reaction::Chat(Outcome::Ignored(why)) => self.stats.ignored(why),
        }
    }

    fn join(&mut self, key: usize, user: Box<str>, presence: bool) {
        let Some(chat) = self.conns.get_mut(key).and_then(Connection::chat_mut) else {
            return;
        };
        let index = self.room.join(key);
        let watching = presence.then(|| (self.watchers.join(key), self.room.len()));
        chat.member = Some(Member {
            user,
            index,
            watching,
        });
        self.stats.joins += 1;
        self.presence_pending = !self.watchers.is_empty();
        if presence {
            // The newcomer learns the count at once; the others at the next presence tick.
            self.stats.presence_sent += 1;
            self.send(key, protocol::presence_frame(self.room.len()).into());
        }
    }

    fn leave_room(&mut self, key: usize) {
        let Some(member) = self
            .conns
            .get_mut(key)
            .and_then(Connection::chat_mut)
            .and_then(|c| c.member.take())
        else {
            return;
        };
        if let Some(moved) = self.room.leave(member.index)
            && let Some(m) = self.member_mut(moved)
        {
            m.index = member.index;
        }
        if let Some((index, _)) = member.watching
            && let Some(moved) = self.watchers.leave(index)
            && let Some((moved_index, _)) = self.member_mut(moved).and_then(|m| m.watching.as_mut())
        {
            *moved_index = index;
        }
        self.presence_pending = !self.watchers.is_empty();
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
        let count = self.room.len();
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
            self.send(key, frame);
        }
    }

    /// The hot path. The chat was serialized once into `frame`; each recipient
    /// gets a reference-count bump and a queue slot: no per-recipient
    /// allocation, copy or JSON work. Nothing is written here: the flush at
    /// the end of the turn writes each recipient's socket once.
    fn relay(&mut self, sender: Option<usize>, frame: Rc<[u8]>, now: u64) {
        self.stats.chats_relayed += 1;
        let limit = self.config.max_backlog;
        let mut delivered = 0;
        for &key in self.room.members() {
            if Some(key) == sender {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.outbox.bytes() >= limit {
                self.slow.push(key);
                continue;
            }
            conn.outbox.push(Rc::clone(&frame));
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            delivered += 1;
        }
        self.stats.deliveries += delivered;
        while let Some(key) = self.slow.pop() {
            self.stats.slow_consumer_closes += 1;
            self.close(key, close::POLICY_VIOLATION, "slow consumer", now);
        }
    }

    /// Relays the chats other instances published: each serialized into a
    /// frame once, then the same hot path as a local chat.
    fn relay_remote(&mut self, now: u64) {
        let Some(backplane) = self.backplane.take() else {
            return;
        };
        backplane.drain(|chat| {
            let frame = frame::server_frame(OpCode::Text, &[chat]);
            self.relay(None, frame.into(), now);
        });
        self.backplane = Some(backplane);
    }

    /// Queues a frame for one connection.
    fn send(&mut self, key: usize, frame: Rc<[u8]>) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.outbox.push(frame);
        // Our answers to this peer pile up (a ping flood, say): stop reading it until they drain.
        if conn.outbox.bytes() >= self.config.max_backlog && !conn.read_paused {
            conn.read_paused = true;
            self.stats.read_pauses += 1;
        }
        self.mark_dirty(key);
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key)
            && !conn.dirty
        {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Starts the close handshake from our side: send a close frame, wait for the peer's.
    fn close(&mut self, key: usize, code: u16, reason: &str, now: u64) {
        self.leave_room(key);
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        match std::mem::replace(&mut conn.phase, Phase::Draining { write_shut: false }) {
            Phase::Open { reader, .. } => conn.phase = Phase::Closing { reader },
            other => {
                // Already closing: nothing more to send.
                conn.phase = other;
                return;
            }
        }
        self.send(key, close::frame(code, reason).into());
        self.set_timer(key, now + CLOSE_WAIT_MS);
    }

    /// Fails the connection (RFC 6455 §7.1.7): close frame with the error's code, then drain.
    fn fail(&mut self, key: usize, error: ProtocolError, now: u64) {
        self.stats.protocol_error(error);
        self.leave_room(key);
        if matches!(
            self.conns.get(key).map(|c| &c.phase),
            Some(Phase::Open { .. })
        ) {
            self.send(key, close::frame(error.close_code(), error.reason()).into());
        }
        self.drain(key, now);
    }

    /// Last output goes out, then the write side is shut; input is discarded until EOF.
    fn drain(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.phase = Phase::Draining { write_shut: false };
        conn.unread = None;
        // Reading now only discards, so it can resume; we need it to see the peer's FIN.
        if conn.read_paused {
            conn.read_paused = false;
            self.read_again.push(key);
        }
        self.mark_dirty(key);
        self.set_timer(key, now + LINGER_MS);
    }

    fn flush_dirty(&mut self) {
        let mut i = 0;
        while let Some(&key) = self.dirty.get(i) {
            self.flush(key);
            i += 1;
        }
        self.dirty.clear();
    }

    /// Writes what the connection has queued: one `writev` for many frames.
    fn flush(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.dirty = false;
        let flushed = match conn.outbox.flush(&mut conn.stream) {
            Ok(flushed) => flushed,
            Err(_) => {
                self.stats.dropped_without_close += 1;
                self.drop_conn(key);
                return;
            }
        };
        if conn.read_paused && conn.outbox.bytes() < self.config.max_backlog {
            conn.read_paused = false;
            self.read_again.push(key);
        }
        if flushed == Flushed::All
            && let Phase::Draining { write_shut } = &mut conn.phase
            && !*write_shut
        {
            // FIN after our last byte. We keep reading until the peer's FIN, so
            // unread input never turns our close into a reset.
            *write_shut = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
    }

    fn drop_conn(&mut self, key: usize) {
        self.leave_room(key);
        if let Some(limit) = &mut self.ip_limit {
            limit.release(key);
        }
        // Closing the socket also takes it out of the poll set.
        self.conns.try_remove(key);
    }

    fn set_timer(&mut self, key: usize, at: u64) {
        if let Some(conn) = self.conns.get_mut(key) {
            conn.timer_at = at;
            // Keys fit: `max_conns` is capped far below u32::MAX.
            self.timers.insert(at, (key as u32, conn.id));
        }
    }

    /// Acts on due timers. An entry is live only if its connection still has
    /// the same id (slab keys are reused) and still waits for that deadline.
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
                Phase::Draining { .. } => self.drop_conn(key),
            }
        }
        fired.clear();
        self.fired = fired;
    }

    /// Pings a connection we have not heard from in `--ping-interval`; closes
    /// one silent for `--pong-timeout`. Also frees an idle connection's queue.
    fn keepalive(&mut self, key: usize, now: u64) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        conn.outbox.release_if_empty();
        let silent = now.saturating_sub(conn.last_heard);
        let last_heard = conn.last_heard;
        if silent >= self.config.pong_timeout_ms {
            self.stats.keepalive_timeouts += 1;
            // The peer is silent, so waiting for its close is pointless: send ours and go.
            self.send(
                key,
                close::frame(close::GOING_AWAY, "keepalive timeout").into(),
            );
            self.flush(key);
            self.drop_conn(key);
            return;
        }
        let next = if silent >= self.config.ping_interval_ms {
            self.send(key, Rc::clone(&self.ping));
            last_heard + self.config.pong_timeout_ms
        } else {
            last_heard + self.config.ping_interval_ms
        };
        self.set_timer(key, next);
    }
}

/// Decides what one event from an open or closing connection means.
fn react(event: Event<'_>, chat: Option<&mut ChatState>, echo: bool, now: u64) -> Reaction {
    let Some(chat) = chat else {
        // Closing: we already sent our close; only the peer's close matters now.
        return match event {
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
        Event::Text(text) => Reaction::Chat(chat.on_text(text, now)),
        Event::Binary(_) => Reaction::IgnoredBinary,
        Event::Ping(payload) => Reaction::Reply(frame::server_frame(OpCode::Pong, &[payload])),
        Event::Pong(_) => Reaction::Nothing,
        // Echo the peer's code (RFC 6455 §5.5.1); a close without one is answered without one.
        Event::Close(peer) => Reaction::PeerClosed {
            reply: Some(match peer {
                Some(peer) => close::frame(peer.code, ""),
                None => frame::server_frame(OpCode::Close, &[]),
            }),
        },
    }
}
