//! `chat-client`: the terminal client. Connects, joins the public room,
//! prints every chat as `[HH:MM:SS] name: text`, sends each line of stdin as
//! a chat, answers pings, and leaves (leave, then close 1000) on `/quit` or at
//! the end of its input. A lost connection or a server that shuts down
//! (1001) is opened again with the page's backoff, and the rejoin asks for
//! what was missed (`since`/`epoch`), printed in place (`--no-reconnect`:
//! exit instead). Three threads: this one reads the socket and reconnects,
//! one reads stdin into a queue, one sends what it queued (paced, waiting
//! for a connection); writers share one lock.

use std::hash::BuildHasher;
use std::io::{self, BufRead, Read, Write};
use std::net::{IpAddr, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use clap::Parser;
use websocket_public_chat::chat::protocol;
use websocket_public_chat::chat::rate_limit::{self, TokenBucket};
use websocket_public_chat::client::{self, Incoming, Refusal, Url};
use websocket_public_chat::sys;
use websocket_public_chat::websocket::close::{self, CloseFrame};
use websocket_public_chat::websocket::frame::{self, OpCode, Role};
use websocket_public_chat::websocket::message::{Event, Limits, MessageReader};

/// Longest wait for the TCP connection, for the 101, and for the server's close.
const TIMEOUT: Duration = Duration::from_secs(5);
/// How often a blocked socket read wakes to check whether we are leaving.
const READ_TICK: Duration = Duration::from_millis(200);
/// Largest message we take from the server (its chats are far smaller).
const MAX_INCOMING: usize = 16 << 20;
/// After this long without a byte from the server, a JSON ping (as the page does).
const SILENT_PING: Duration = Duration::from_secs(15);
/// After this long without a byte, the connection is given up as lost.
const SILENT_LOST: Duration = Duration::from_secs(25);

#[derive(Parser)]
#[command(
    name = "chat-client",
    version,
    override_usage = "chat-client [OPTIONS]",
    about = "Terminal client for the public chat room"
)]
struct Args {
    /// Server URL (ws:// only).
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Name to join under (1-64 characters, no control or format characters,
    /// no whitespace at either end, not beginning with `*`).
    #[arg(long)]
    user: String,
    /// Local address to connect from.
    #[arg(long, value_name = "LOCAL_IP")]
    bind: Option<IpAddr>,
    /// Print the last N chats of the room before the live ones.
    #[arg(long, value_name = "N")]
    history: Option<u64>,
    /// Largest chat the server takes, in bytes of JSON (its --max-message-size).
    #[arg(long, default_value_t = 65536, value_name = "BYTES")]
    max_message_size: usize,
    /// Exit when the connection is lost or the server closes it, instead of
    /// connecting again (status 5).
    #[arg(long)]
    no_reconnect: bool,
}

/// Why the client stopped early. Each kind has its own exit status.
enum Failure {
    /// Bad arguments: 2.
    Usage(String),
    /// No TCP connection: 3.
    Unreachable(String),
    /// The server answered the upgrade with something else: 4.
    Refused(Refusal),
    /// The connection ended without our asking: 5.
    Lost(String),
}

/// How one connection ended, if not by our leave.
enum Ending {
    /// Worth connecting again (a lost connection, 1001, ...), and why.
    Lost(String),
    /// Not worth it (the server said so, or broke the protocol).
    Final(Failure),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Err(failure) = run(&args) else {
        return ExitCode::SUCCESS;
    };
    let (status, message) = match failure {
        Failure::Usage(m) => (2, m),
        Failure::Unreachable(m) => (3, m),
        Failure::Refused(r) => (4, format!("handshake refused: {r}")),
        Failure::Lost(m) => (5, m),
    };
    // Messages carry what the server said (a close reason, a reason phrase).
    eprintln!("chat-client: {}", client::terminal(&message));
    ExitCode::from(status)
}

fn run(args: &Args) -> Result<(), Failure> {
    if !protocol::valid_name(&args.user) {
        return Err(Failure::Usage(
            "--user must be 1-64 characters, without control or format characters, \
             without whitespace at either end, and not beginning with *"
                .into(),
        ));
    }
    let url = client::parse_url(&args.url)
        .map_err(|why| Failure::Usage(format!("--url {}: {why}", args.url)))?;
    // The first connection must work: a wrong address or a refusal is said at once.
    let (mut stream, mut unread) = open(&url, args.bind)?;
    let shared = Arc::new(Shared {
        sink: Mutex::new(Link {
            sink: None,
            generation: 0,
        }),
        connected: Condvar::new(),
        live: Mutex::new(args.history.is_none()),
        left_at: Mutex::new(None),
        last_shown: Mutex::new(0),
        room: Mutex::new(Room::default()),
        input_ended: AtomicBool::new(false),
        unsent: AtomicU64::new(0),
        joins: AtomicU64::new(0),
    });
    let (lines, queue) = mpsc::channel();
    let reader = Arc::clone(&shared);
    std::thread::spawn(move || {
        // Lines are queued as they come, so the end of input is seen even
        // while a line waits for a connection.
        for line in io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if line.trim_end_matches('\r') == "/quit" || lines.send(line).is_err() {
                break;
            }
        }
        reader.input_ended.store(true, Ordering::Relaxed);
    });
    let sender = Arc::clone(&shared);
    let max = args.max_message_size;
    std::thread::spawn(move || sender.pump(&queue, max));
    let mut retry = 0;
    loop {
        let joins = shared.joins.load(Ordering::Relaxed);
        let ending = shared.session(stream, unread, args);
        // The backoff starts again only once a connection got as far as
        // `joined` (a server that accepts, then closes, is not hammered).
        if shared.joins.load(Ordering::Relaxed) != joins {
            retry = 0;
        }
        let why = match ending {
            Ok(()) => return shared.finished(),
            Err(Ending::Final(failure)) => return Err(failure),
            Err(Ending::Lost(why)) if args.no_reconnect => return Err(Failure::Lost(why)),
            Err(Ending::Lost(why)) => why,
        };
        // Coming back, with the page's backoff, until it works or we leave.
        let mut why = why;
        (stream, unread) = loop {
            if shared.left_at().is_some() {
                return shared.finished(); // The input ended while the connection was down.
            }
            let delay = client::backoff(retry, client::jitter(random_u64()));
            retry += 1;
            eprintln!(
                "chat-client: {}; reconnecting in {:.1} s",
                client::terminal(&why),
                delay.as_secs_f64()
            );
            if shared.sleep_unless_leaving(delay) {
                return shared.finished();
            }
            match open(&url, args.bind) {
                Ok(opened) => break opened,
                Err(Failure::Refused(Refusal::Status(status, phrase)))
                    if !matches!(status, 429 | 502 | 503 | 504) =>
                {
                    return Err(Failure::Refused(Refusal::Status(status, phrase)));
                }
                Err(Failure::Unreachable(m) | Failure::Lost(m) | Failure::Usage(m)) => why = m,
                Err(Failure::Refused(r)) => why = format!("handshake refused: {r}"),
            }
        };
    }
}

/// Connects and upgrades; returns the stream and the bytes after the 101.
fn open(url: &Url, bind: Option<IpAddr>) -> Result<(TcpStream, Vec<u8>), Failure> {
    let mut stream = connect(url, bind)?;
    let _ = stream.set_nodelay(true);
    let unread = handshake(&mut stream, url)?;
    Ok((stream, unread))
}

/// Resolves the URL's host and connects, from `bind` if given.
fn connect(url: &Url, bind: Option<IpAddr>) -> Result<TcpStream, Failure> {
    let addrs = (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| Failure::Unreachable(format!("cannot resolve {}: {e}", url.host)))?;
    let mut last = format!("no address of {} in the family of --bind", url.host);
    for addr in addrs.filter(|a| bind.is_none_or(|b| b.is_ipv4() == a.is_ipv4())) {
        let attempt = match bind {
            Some(local) => sys::connect_from(local, addr),
            None => TcpStream::connect_timeout(&addr, TIMEOUT),
        };
        match attempt {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(Failure::Unreachable(last))
}

/// Sends the opening request and checks the answer; returns the bytes after it.
fn handshake(stream: &mut TcpStream, url: &Url) -> Result<Vec<u8>, Failure> {
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(&random_u64().to_ne_bytes());
    nonce[8..].copy_from_slice(&random_u64().to_ne_bytes());
    let key = BASE64.encode(nonce);
    let during = |e: io::Error| Failure::Lost(format!("connection lost during the handshake: {e}"));
    stream
        .write_all(&client::opening_request(url, &key))
        .map_err(during)?;
    stream.set_read_timeout(Some(TIMEOUT)).map_err(during)?;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).map_err(during)?;
        if n == 0 {
            return Err(Failure::Refused(Refusal::Invalid(
                "the server closed the connection without answering",
            )));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(len) = client::check_response(&head, &key).map_err(Failure::Refused)? {
            head.drain(..len);
            return Ok(head);
        }
    }
}

/// What both threads share.
struct Shared {
    sink: Mutex<Link>,
    /// Signalled when a connection is joined (a new generation).
    connected: Condvar,
    /// Chats are live (not the history the join asked for).
    live: Mutex<bool>,
    /// When we sent leave and close (or the input ended while away), if we did.
    left_at: Mutex<Option<Instant>>,
    /// The time printed last (ms since 1970): printed times never go back.
    last_shown: Mutex<u64>,
    /// What a rejoin asks for.
    room: Mutex<Room>,
    /// Standard input has ended (or said `/quit`).
    input_ended: AtomicBool,
    /// Lines given up on: the input ended while the connection was down.
    unsent: AtomicU64,
    /// `joined` messages so far (the backoff restarts after one).
    joins: AtomicU64,
}

/// The connection frames go out on, if one is up.
struct Link {
    sink: Option<Sink>,
    /// Counts connections: a send that failed on one waits for the next.
    generation: u64,
}

/// The writing half of the socket, and the seed of the masks.
struct Sink {
    stream: TcpStream,
    seed: u64,
}

/// The room as this client has seen it: its epoch and the newest chat id.
#[derive(Default)]
struct Room {
    epoch: Option<String>,
    last: u64,
    /// A `joined` came on some connection: the next one is a rejoin.
    joined_before: bool,
}

/// Locks, whatever a panicking holder left (nothing here is left half-done).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// Sends one masked frame, whole.
    fn send(&self, opcode: OpCode, payload: &[u8]) -> io::Result<()> {
        self.send_all(&[(opcode, payload)])
    }

    /// Sends frames in one write, under one hold of the lock: nothing goes
    /// between them, and once the first has gone out, so have the others.
    fn send_all(&self, frames: &[(OpCode, &[u8])]) -> io::Result<()> {
        let mut link = lock(&self.sink);
        write_frames(&mut link, frames)
    }

    fn live(&self) -> bool {
        *lock(&self.live)
    }

    fn left_at(&self) -> Option<Instant> {
        *lock(&self.left_at)
    }

    /// Waits `delay`; true if we are leaving meanwhile.
    fn sleep_unless_leaving(&self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        while Instant::now() < until {
            if self.left_at().is_some() {
                return true;
            }
            std::thread::sleep(READ_TICK.min(until.saturating_duration_since(Instant::now())));
        }
        self.left_at().is_some()
    }

    /// Sends a chat, waiting for a connection if none is up: a line typed
    /// while the connection is down goes out once it is back. False: the
    /// input has ended and no connection came within `TIMEOUT`: given up.
    fn send_chat(&self, json: &[u8]) -> bool {
        let mut after = 0;
        let waiting = Instant::now();
        let mut link = lock(&self.sink);
        loop {
            while link.sink.is_none() || link.generation <= after {
                if self.input_ended.load(Ordering::Relaxed) && waiting.elapsed() > TIMEOUT {
                    return false;
                }
                link = self
                    .connected
                    .wait_timeout(link, READ_TICK)
                    .map_or_else(|e| e.into_inner().0, |(link, _)| link);
            }
            if write_frames(&mut link, &[(OpCode::Text, json)]).is_ok() {
                return true;
            }
            // Not sent: the socket side sees the loss and connects again.
            after = link.generation;
        }
    }

    /// The end: an error if lines were given up on.
    fn finished(&self) -> Result<(), Failure> {
        match self.unsent.load(Ordering::Relaxed) {
            0 => Ok(()),
            n => Err(Failure::Lost(format!(
                "the input ended while the connection was down: {n} lines not sent"
            ))),
        }
    }

    /// Sends each queued line as a chat; leaves once the input ends.
    fn pump(&self, queue: &Receiver<String>, max_message: usize) {
        let started = Instant::now();
        let mut bucket = TokenBucket::full(0);
        while let Ok(text) = queue.recv() {
            let text = text.trim_end_matches('\r');
            if text.trim().is_empty() {
                continue;
            }
            let json = client::chat_json(text, unix_ms());
            if json.len() > max_message {
                eprintln!(
                    "chat-client: message not sent: {} bytes as JSON, the server takes at most {max_message}",
                    json.len()
                );
                continue;
            }
            // Keep to the server's rate limit, so piped lines are delayed, not dropped.
            while !bucket.try_take(started.elapsed().as_millis() as u64) {
                std::thread::sleep(Duration::from_millis(rate_limit::REFILL_MS / 10));
            }
            if !self.send_chat(json.as_bytes()) {
                let unsent = 1 + queue.try_iter().count() as u64;
                self.unsent.store(unsent, Ordering::Relaxed);
                break;
            }
        }
        // Leave and close in one write: the server's answer to the leave ends
        // the socket side (and the process), so the close must already be out.
        // With no connection up, there is nothing to leave: the socket side
        // sees `left_at` and ends.
        let mut link = lock(&self.sink);
        *lock(&self.left_at) = Some(Instant::now());
        let close = close::payload(close::NORMAL, "");
        let _ = write_frames(
            &mut link,
            &[
                (OpCode::Text, br#"{"type":"leave"}"#),
                (OpCode::Close, &close),
            ],
        );
    }

    /// One connection: joins (a rejoin asks for what was missed), then
    /// reads frames until the close handshake ends; `unread` came with the 101.
    fn session(&self, stream: TcpStream, mut unread: Vec<u8>, args: &Args) -> Result<(), Ending> {
        let lost = |e: io::Error| Ending::Lost(format!("connection lost: {e}"));
        let join = {
            let room = lock(&self.room);
            let since = room.epoch.as_deref().map(|epoch| (room.last, epoch));
            let history = match room.joined_before {
                false => args.history.unwrap_or(0),
                true => 0,
            };
            client::join_json(&args.user, history, since)
        };
        {
            let mut link = lock(&self.sink);
            if self.left_at().is_some() {
                return Ok(()); // The input ended while we were connecting.
            }
            link.sink = Some(Sink {
                stream: stream.try_clone().map_err(lost)?,
                seed: random_u64() | 1,
            });
            link.generation += 1;
            write_frames(&mut link, &[(OpCode::Text, join.as_bytes())]).map_err(lost)?;
        }
        self.connected.notify_all();
        let ended = self.read_socket(stream, &mut unread);
        lock(&self.sink).sink = None;
        *lock(&self.live) = false;
        ended
    }

    /// Reads frames until the close handshake ends. A server silent for
    /// `SILENT_PING` is pinged; silent for `SILENT_LOST`, it is given up
    /// (a connection that died without a FIN), as the page does.
    fn read_socket(&self, mut stream: TcpStream, unread: &mut [u8]) -> Result<(), Ending> {
        let lost = |e: io::Error| Ending::Lost(format!("connection lost: {e}"));
        stream.set_read_timeout(Some(READ_TICK)).map_err(lost)?;
        let mut reader = MessageReader::default();
        if let Some(end) = self.on_bytes(&mut reader, unread) {
            return end;
        }
        let mut chunk = vec![0u8; 64 * 1024];
        let mut heard = Instant::now();
        let mut pinged = false;
        loop {
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(Ending::Lost(
                        "connection lost: the server closed it without a close frame".into(),
                    ));
                }
                Ok(n) => {
                    (heard, pinged) = (Instant::now(), false);
                    if let Some(end) = self.on_bytes(&mut reader, &mut chunk[..n]) {
                        return end;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    if self.left_at().is_some_and(|at| at.elapsed() > TIMEOUT) {
                        return Err(Ending::Final(Failure::Lost(
                            "the server did not answer our close".into(),
                        )));
                    }
                    let silent = heard.elapsed();
                    if silent > SILENT_LOST {
                        return Err(Ending::Lost(format!(
                            "connection lost: nothing from the server for {} s",
                            silent.as_secs()
                        )));
                    }
                    if silent > SILENT_PING && !pinged {
                        pinged = true;
                        let _ = self.send(OpCode::Text, br#"{"type":"ping","ts":0}"#);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(lost(e)),
            }
        }
    }

    /// Acts on every message the bytes complete (the reader keeps the rest);
    /// `Some` when the connection is over.
    fn on_bytes(&self, reader: &mut MessageReader, bytes: &mut [u8]) -> Option<Result<(), Ending>> {
        let limits = Limits {
            role: Role::Client,
            max_message: MAX_INCOMING,
        };
        let mut pos = 0;
        while pos < bytes.len() {
            let (used, event) = match reader.read(&mut bytes[pos..], limits) {
                Ok(step) => step,
                Err(error) => {
                    let _ = self.send(
                        OpCode::Close,
                        &close::payload(error.close_code(), error.reason()),
                    );
                    return Some(Err(Ending::Final(Failure::Lost(format!(
                        "the server broke the protocol: {}",
                        error.reason()
                    )))));
                }
            };
            pos += used;
            if let Some(event) = event
                && let Some(end) = self.on_event(event)
            {
                return Some(end);
            }
        }
        None
    }

    /// Acts on one message; `Some` when the connection is over.
    fn on_event(&self, event: Event<'_>) -> Option<Result<(), Ending>> {
        match event {
            Event::Text(text) => match client::classify(text) {
                Incoming::Chat {
                    id,
                    user,
                    text,
                    sent_ms,
                } => {
                    if let Some(id) = id {
                        let mut room = lock(&self.room);
                        room.last = room.last.max(id);
                    }
                    let live = self.live();
                    let mut last = lock(&self.last_shown);
                    let ms = client::shown_time(live, sent_ms, unix_ms(), &mut last);
                    let hms = ms.map(|ms| sys::local_hms((ms / 1000) as i64));
                    let line = client::chat_line(hms, &user, &text);
                    print_line(&line);
                }
                Incoming::Joined {
                    epoch,
                    last,
                    recovered,
                } => self.on_joined(epoch, last, recovered),
                Incoming::Ping => {
                    let _ = self.send(OpCode::Text, br#"{"type":"pong"}"#);
                }
                Incoming::Notice(text) => {
                    let hms = sys::local_hms((unix_ms() / 1000) as i64);
                    // `* notice`: no name begins with `*`, so no chat looks like it.
                    print_line(&client::chat_line(Some(hms), "* notice", &text));
                }
                Incoming::Presence(_) | Incoming::Other => {}
            },
            Event::Ping(payload) => {
                let _ = self.send(OpCode::Pong, payload);
            }
            Event::Binary(_) | Event::Pong(_) => {}
            Event::Close(frame) => {
                if self.left_at().is_some() {
                    return Some(Ok(())); // The answer to our leave and close.
                }
                let code = frame.as_ref().map_or(close::NORMAL, |f| f.code);
                let _ = self.send(OpCode::Close, &close::payload(code, ""));
                let why = match frame {
                    Some(CloseFrame { code, reason }) if !reason.is_empty() => {
                        format!("the server closed the connection: {code} {reason}")
                    }
                    Some(CloseFrame { code, .. }) => {
                        format!("the server closed the connection: {code}")
                    }
                    None => "the server closed the connection (no code)".into(),
                };
                return Some(Err(match client::worth_reconnecting(code) {
                    true => Ending::Lost(why),
                    false => Ending::Final(Failure::Lost(why)),
                }));
            }
        }
        None
    }

    /// `joined`: live chats follow. The first says where the history the
    /// join asked for ends; a rejoin says it is back, and whether chats
    /// may be missing (away past the history window, or a server restarted
    /// without its history).
    fn on_joined(&self, epoch: String, last: u64, recovered: bool) {
        self.joins.fetch_add(1, Ordering::Relaxed);
        let asked_history = !self.live();
        *lock(&self.live) = true;
        let mut room = lock(&self.room);
        if room.epoch.as_deref() != Some(&epoch) {
            // Another epoch: its ids start again.
            room.last = last;
        }
        room.last = room.last.max(last);
        room.epoch = Some(epoch);
        let line = match (room.joined_before, recovered) {
            (false, _) if asked_history => Some("-- earlier messages above, live from here --"),
            (false, _) => None,
            (true, true) => Some("-- reconnected --"),
            (true, false) => Some("-- reconnected; some messages may be missing --"),
        };
        room.joined_before = true;
        drop(room);
        if let Some(line) = line {
            print_line(line);
        }
    }
}

/// Writes frames to the link's connection in one write.
fn write_frames(link: &mut Link, frames: &[(OpCode, &[u8])]) -> io::Result<()> {
    let Some(sink) = link.sink.as_mut() else {
        return Err(io::ErrorKind::NotConnected.into());
    };
    let mut bytes = Vec::new();
    for (opcode, payload) in frames {
        // xorshift64: masks must be unpredictable to proxies, not secret.
        sink.seed ^= sink.seed << 13;
        sink.seed ^= sink.seed >> 7;
        sink.seed ^= sink.seed << 17;
        let mask = (sink.seed as u32).to_ne_bytes();
        bytes.extend(frame::client_frame(*opcode, payload, mask));
    }
    sink.stream.write_all(&bytes)
}

/// Prints a line already made safe for a terminal (`client::chat_line`).
fn print_line(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 64 bits seeded by the OS (std's hash keys), enough for keys and masks.
fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}
