//! The event loop: one mio `Poll` owns every socket, all readiness, the
//! signal pipe and the backplane's `Waker`; the `Engine` decides everything.
//!
//! One turn: poll (the engine's next deadline sets the timeout) → accept
//! until WouldBlock → read each ready connection and hand the bytes to the
//! engine (a relay only queues the shared frame on each recipient) → the
//! engine's timers → flush each connection with queued output, many frames
//! per `writev` → carry out the engine's actions. The flush is last, so
//! nothing a turn queues waits for the next poll.

#[cfg_attr(not(feature = "redis"), path = "backplane_off.rs")]
pub mod backplane;
mod history_file;
mod process;

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr, ToSocketAddrs};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream, UnixStream};
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::Config;
use crate::engine::cluster::FromCluster;
use crate::engine::{Action, Engine, Options, PRIVATE_SLOTS, READ_BUF, REFUSAL_SLOTS};
use crate::http::admin;
use backplane::{Backplane, Target};
use history_file::Taken;

const LISTENER: Token = Token(usize::MAX);
const SIGNALS: Token = Token(usize::MAX - 1);
const BACKPLANE: Token = Token(usize::MAX - 2);
const METRICS: Token = Token(usize::MAX - 3);

/// Reads from one connection per turn before the others get theirs.
const READS_PER_TURN: usize = 16;
/// Most slices handed to one `writev` (well under IOV_MAX = 1024).
const MAX_IOV: usize = 64;
/// The server's own file descriptors, at most: stdio, poll, listeners,
/// signal pipe, waker, Redis.
const OWN_FDS: u64 = 16;
/// File descriptors kept out of the default `--max-conns`: the server's own,
/// public connections being refused, and the private listener's.
const RESERVED_FDS: u64 = OWN_FDS + (REFUSAL_SLOTS + PRIVATE_SLOTS) as u64;
/// Connections the kernel may hold for us before we accept them (capped by somaxconn).
const LISTEN_BACKLOG: libc::c_int = 4096;

/// The server process: `bind`, then `run` until `--duration` ends or a signal arrives.
pub struct Server {
    engine: Engine,
    poll: Poll,
    /// `None` once shutdown has begun: new clients are refused by the kernel.
    listener: Option<TcpListener>,
    /// `--private-address`: `/metrics`, `/stats` and the admin API, for operators only.
    metrics: Option<TcpListener>,
    /// Read end of the pipe the signal handler writes to.
    signals: UnixStream,
    /// Each connection's socket, under the engine's key for it.
    sockets: Vec<Option<TcpStream>>,
    /// With `--redis`: the link to the other instances.
    backplane: Option<Backplane>,
    /// Connections that may have more to read: read budget used up, or reading resumed.
    read_again: Vec<usize>,
    read_buf: Vec<u8>,
    started: Instant,
    /// `--history-file`, unless Redis keeps the room: written at a clean stop.
    history_file: Option<PathBuf>,
}

impl Server {
    /// Binds the listeners and the signal handlers. `fd_limit` sets the
    /// default `--max-conns`. The error is one line naming what could not
    /// start (`cannot start on ADDR: …`).
    pub fn bind(config: Config, fd_limit: u64) -> Result<Self, String> {
        let public = format!("{}:{}", config.host, config.port);
        fn on(what: &str) -> impl Fn(io::Error) -> String + '_ {
            move |e| format!("cannot start on {what}: {e}")
        }
        let mut listener = listen(&public).map_err(on(&public))?;
        let poll = Poll::new().map_err(on(&public))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(on(&public))?;
        let metrics = match &config.private_address {
            Some(addr) => {
                let what = format!("{addr} (--private-address)");
                let mut metrics = listen(addr).map_err(on(&what))?;
                poll.registry()
                    .register(&mut metrics, METRICS, Interest::READABLE)
                    .map_err(on(&what))?;
                Some(metrics)
            }
            None => None,
        };
        let signals = signal_pipe(&poll).map_err(|e| format!("cannot start: signals: {e}"))?;

        let waker = match &config.redis {
            Some(_) => Some(
                mio::Waker::new(poll.registry(), BACKPLANE)
                    .map_err(|e| format!("cannot start: {e}"))?,
            ),
            None => None,
        };
        // Our own descriptors, before any connection: counted once, here.
        let own_fds = process::open_fds();
        let backplane = match (&config.redis, waker) {
            (Some(url), Some(waker)) => {
                let ca = match &config.redis_ca {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        format!("cannot start: --redis-ca {}: {e}", path.display())
                    })?),
                    None => None,
                };
                let target = Target {
                    url,
                    channel: &config.redis_channel,
                    ca: ca.as_deref(),
                    max_message: config.max_message_size,
                    history: config.history,
                    read_budget: config.max_backlog / 2,
                };
                Some(Backplane::start(&target, waker).map_err(|e| format!("cannot start: {e}"))?)
            }
            _ => None,
        };
        let default_max = fd_limit
            .saturating_sub(RESERVED_FDS)
            .clamp(1, crate::config::MAX_CONNS as u64) as usize;
        let max_conns = config.max_conns.unwrap_or(default_max);
        // Whatever --max-conns says, public connections never take the
        // descriptors kept for the server and the private listener.
        let public_slots = fd_limit.saturating_sub(OWN_FDS + PRIVATE_SLOTS as u64) as usize;
        if max_conns + REFUSAL_SLOTS > public_slots {
            eprintln!(
                "websocket-public-chat: --max-conns {max_conns} is more than the open-file limit \
                 ({fd_limit}) allows: past {public_slots} connections, new ones wait in the \
                 kernel's accept queue"
            );
        }
        // Taken only once everything else started: a server that cannot
        // start leaves the file for the next attempt.
        let mut history_file = match (&config.history_file, &config.redis) {
            (Some(_), Some(_)) => {
                eprintln!(
                    "websocket-public-chat: --history-file is ignored with --redis (Redis keeps \
                     the room)"
                );
                None
            }
            (path, _) => path.clone(),
        };
        if let Some(path) = &history_file {
            history_file::check_folder(path)
                .map_err(|e| format!("cannot start: --history-file {}: {e}", path.display()))?;
        }
        let restored = match history_file
            .as_deref()
            .map(|p| history_file::take(p, &config))
        {
            Some(Taken::Room(room)) => Some(room),
            Some(Taken::LeftAlone) => {
                history_file = None;
                None
            }
            Some(Taken::Fresh) | None => None,
        };
        let admin_token = match &config.admin_token_file {
            Some(path) => {
                Some(admin::token_from_file(path).map_err(|e| format!("cannot start: {e}"))?)
            }
            None => None,
        };
        let options = Options {
            max_conns,
            public_slots,
            instance: backplane.as_ref().map(Backplane::instance),
            epoch: random_epoch(),
            restored,
            admin_token,
        };
        let mut engine = Engine::new(config, options, 0);
        if let Some(backplane) = &backplane {
            engine.set_backplane_probe(backplane.probe());
        }
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        engine.set_process_probe(Box::new(move || process::sample(started, own_fds)));
        Ok(Self {
            engine,
            poll,
            listener: Some(listener),
            metrics,
            signals,
            sockets: Vec::new(),
            backplane,
            read_again: Vec::new(),
            read_buf: vec![0; READ_BUF],
            started: Instant::now(),
            history_file,
        })
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.listener {
            Some(listener) => listener.local_addr(),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Where `/metrics` is served apart (`--metrics-address`), if it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// The connection limit in force.
    pub fn max_conns(&self) -> usize {
        self.engine.max_conns()
    }

    /// Runs the loop until shutdown completes; returns the statistics block.
    pub fn run(mut self) -> io::Result<String> {
        let mut events = Events::with_capacity(1024);
        loop {
            let now = self.now();
            match self.poll.poll(&mut events, self.poll_timeout(now)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let now = self.now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(now),
                    METRICS => self.accept_from(true, now),
                    SIGNALS => self.on_signal(now),
                    BACKPLANE => self.relay_remote(now),
                    Token(key) => {
                        if event.is_writable() || event.is_write_closed() {
                            self.engine.handle_writable(key);
                        }
                        let peer_closed = event.is_read_closed() || event.is_error();
                        if event.is_readable() || peer_closed {
                            self.read(key, now, peer_closed);
                        }
                    }
                }
                self.carry_out_actions(now);
            }
            for key in std::mem::take(&mut self.read_again) {
                self.read(key, now, true);
            }
            self.engine.handle_timeout(now);
            self.carry_out_actions(now);
            // Last in the turn: whatever the turn queued goes out before the next poll.
            while let Some(key) = self.engine.next_dirty() {
                self.flush(key, now);
            }
            self.carry_out_actions(now);
            if self.engine.is_finished(now) {
                break;
            }
        }
        self.keep_history();
        Ok(self.engine.summary(self.now()))
    }

    /// A clean stop, the last close frames sent: the room goes to
    /// `--history-file` for the next start.
    fn keep_history(&self) {
        let Some(path) = &self.history_file else {
            return;
        };
        let (chats, last) = self.engine.history_span();
        match history_file::keep(path, &self.engine.snapshot()) {
            Ok(()) => eprintln!(
                "websocket-public-chat: history: {chats} chats up to id {last} kept in {}",
                path.display()
            ),
            Err(e) => eprintln!(
                "websocket-public-chat: history: cannot write {}: {e}; the next start begins a \
                 new epoch",
                path.display()
            ),
        }
    }

    /// Milliseconds since the server started: the only clock read; the engine gets `now`.
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn poll_timeout(&self, now: u64) -> Option<Duration> {
        if !self.read_again.is_empty() {
            return Some(Duration::ZERO);
        }
        self.engine
            .next_deadline()
            .map(|at| Duration::from_millis(at.saturating_sub(now)))
    }

    fn carry_out_actions(&mut self, now: u64) {
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::ShutdownWrite(key) => {
                    if let Some(socket) = self.socket(key) {
                        let _ = socket.shutdown(Shutdown::Write);
                    }
                }
                // Closing the socket also takes it out of the poll set.
                Action::Close(key) => drop(self.sockets.get_mut(key).and_then(Option::take)),
                Action::ResumeReading(key) => self.read_again.push(key),
                Action::StopListening => {
                    for mut listener in [self.listener.take(), self.metrics.take()]
                        .into_iter()
                        .flatten()
                    {
                        let _ = self.poll.registry().deregister(&mut listener);
                    }
                }
                Action::ResumeAccepting => {
                    self.accept(now);
                    self.accept_from(true, now);
                }
                Action::Publish { frame, origin } => {
                    if let Some(backplane) = &self.backplane {
                        backplane.publish(&frame, origin);
                    }
                }
                Action::Moderate(command) => {
                    if let Some(backplane) = &self.backplane {
                        backplane.moderate(&command);
                    }
                }
                Action::Log(line) => eprintln!("websocket-public-chat: {line}"),
                Action::ReadHistory { key, conn, read } => {
                    let asked = self
                        .backplane
                        .as_ref()
                        .is_some_and(|b| b.read_history(key, conn, read));
                    if !asked {
                        // The reader is swamped: answered from the ring at once.
                        let failed = FromCluster::History {
                            key,
                            conn,
                            read,
                            stream: None,
                        };
                        self.engine.handle_cluster(failed, now);
                    }
                }
            }
        }
    }

    fn socket(&mut self, key: usize) -> Option<&mut TcpStream> {
        self.sockets.get_mut(key).and_then(Option::as_mut)
    }

    fn accept(&mut self, now: u64) {
        self.accept_from(false, now);
    }

    /// Accepts what waits on the public listener, or on the private one (`private`).
    fn accept_from(&mut self, private: bool, now: u64) {
        while self.engine.accepting(private) {
            let listener = match private {
                false => &self.listener,
                true => &self.metrics,
            };
            let Some(listener) = listener else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
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
                    // Out of file descriptors (EMFILE/ENFILE) or memory.
                    self.engine.handle_accept_error(private, now);
                    return;
                }
            };
            #[cfg(not(target_os = "linux"))]
            let _ = stream.set_nodelay(true);
            let key = match private {
                false => self.engine.handle_accept(peer.ip(), now),
                true => self.engine.handle_accept_private(peer.ip(), now),
            };
            // Edge-triggered, registered once for both directions: no reregister per write.
            let interest = Interest::READABLE | Interest::WRITABLE;
            if self
                .poll
                .registry()
                .register(&mut stream, Token(key), interest)
                .is_err()
            {
                self.engine.handle_io_error(key);
                continue;
            }
            if self.sockets.len() <= key {
                self.sockets.resize_with(key + 1, || None);
            }
            self.sockets[key] = Some(stream);
            self.carry_out_actions(now);
        }
    }

    fn on_signal(&mut self, now: u64) {
        let mut buf = [0u8; 64];
        while matches!(self.signals.read(&mut buf), Ok(n) if n > 0) {}
        self.engine.handle_shutdown(now);
    }

    /// Reads what the engine allows, until WouldBlock or the per-turn budget,
    /// handing the bytes to the engine as they come.
    ///
    /// `until_eof` is false only for a fresh edge without a FIN. On Linux a
    /// short read then means the socket is empty, and bytes arriving later
    /// raise a new edge (epoll edge-triggered semantics, which mio documents
    /// as the platform's behaviour but does not promise), so the WouldBlock
    /// read (one syscall per message) is skipped there. Elsewhere the loop
    /// reads until WouldBlock, as mio asks.
    fn read(&mut self, key: usize, now: u64, until_eof: bool) {
        let skip_wouldblock_read = cfg!(target_os = "linux") && !until_eof;
        for _ in 0..READS_PER_TURN {
            let limit = self.engine.read_limit(key);
            let Some(socket) = self.sockets.get_mut(key).and_then(Option::as_mut) else {
                return;
            };
            if limit == 0 {
                return;
            }
            let buf = &mut self.read_buf[..limit.min(READ_BUF)];
            match socket.read(buf) {
                Ok(0) => return self.engine.handle_eof(key),
                Ok(n) => {
                    let short = n < buf.len();
                    self.engine.handle_bytes(key, &mut buf[..n], now);
                    if short && skip_wouldblock_read {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => return self.engine.handle_io_error(key),
            }
        }
        // Budget used up: the others get their turn; this one reads again next turn.
        self.read_again.push(key);
    }

    /// Writes what the connection has queued: one `writev` for many frames.
    fn flush(&mut self, key: usize, now: u64) {
        while let Some(socket) = self.sockets.get_mut(key).and_then(Option::as_mut) {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let count = self.engine.transmit(key, &mut slices);
            if count == 0 {
                break;
            }
            match socket.write_vectored(&slices[..count]) {
                Ok(0) => return self.engine.handle_io_error(key),
                Ok(n) => self.engine.handle_written(key, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.engine.handle_io_error(key),
            }
        }
        self.engine.handle_flushed(key, now);
    }

    /// Hands the engine what the backplane's threads sent: chats in Redis's
    /// order (each becomes a frame once, then takes the same hot path as a
    /// local chat), history reads, the link's state.
    fn relay_remote(&mut self, now: u64) {
        if let Some(backplane) = &self.backplane {
            backplane.drain(|message| self.engine.handle_cluster(message, now));
        }
    }
}

/// A non-blocking listener on `addr` (`host:port`, the first address it
/// resolves to), with our accept queue and TCP_NODELAY for what it accepts.
fn listen(addr: &str) -> io::Result<TcpListener> {
    let addr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "resolves to no address"))?;
    let listener = TcpListener::bind(addr)?;
    crate::sys::set_backlog(&listener, LISTEN_BACKLOG)?;
    // We coalesce writes ourselves; Nagle would only delay small frames.
    // Linux passes the option on to accepted sockets: one call instead of one per accept.
    #[cfg(target_os = "linux")]
    crate::sys::set_listener_nodelay(&listener)?;
    Ok(listener)
}

/// SIGINT and SIGTERM as a readable pipe in `poll`: the handler only writes a byte.
fn signal_pipe(poll: &Poll) -> io::Result<UnixStream> {
    let (read_end, write_end) = StdUnixStream::pair()?;
    read_end.set_nonblocking(true)?;
    write_end.set_nonblocking(true)?;
    for signal in [SIGINT, SIGTERM] {
        signal_hook::low_level::pipe::register(signal, write_end.try_clone()?)?;
    }
    let mut signals = UnixStream::from_std(read_end);
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    Ok(signals)
}

/// 64 random bits in hex, new at each start (std's OS-seeded hash keys, and
/// the time): the room's epoch.
fn random_epoch() -> String {
    use std::hash::BuildHasher;
    let state = std::collections::hash_map::RandomState::new();
    format!(
        "{:016x}",
        state.hash_one((std::process::id(), std::time::SystemTime::now()))
    )
}
