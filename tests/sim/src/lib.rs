//! Deterministic simulation of the server's engine: many clients, no sockets,
//! no sleeping, one seed.
//!
//! The engine (`websocket_public_chat::engine`) runs as in the server, but
//! its driver is this harness: every connection is a pair of in-memory pipes
//! with a capacity, so a client that stops reading fills its pipe and the
//! backpressure and slow-consumer paths run for real. One `Source` of
//! numbers decides everything (who connects, what each client says, how
//! every byte stream is split, how fast each reader is, when time moves and
//! by how much, when the server shuts down); a seeded PRNG in the tests, the
//! fuzzer's input in `fuzz/fuzz_targets/simulation.rs`. There are no
//! threads, no clock and no hash-ordered maps, so a seed replays exactly.
//!
//! Clients are `tungstenite` (an independent WebSocket implementation) over
//! the pipes, plus raw hostile clients sending malformed and oversized
//! frames, floods of control frames and garbage. After every step the
//! engine's own invariants are checked, and the harness checks what clients
//! saw: at the end, every member received every chat relayed while it was a
//! member, exactly once, in order, never its own, unless the server closed
//! it for a counted reason (then a prefix of them); every close the server
//! started ended in a close frame then a FIN, or in a counted timeout.
//! Operators act too, through another instance (kicks, mutes, short bans,
//! notices): a kicked or banned member is out of the room at once, and no
//! chat of a muted name is relayed while the mute lasts.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;

use tungstenite::handshake::client::ClientHandshake;
use tungstenite::handshake::{HandshakeError, MidHandshake};
use tungstenite::{Message, WebSocket};
use websocket_public_chat::config::Config;
use websocket_public_chat::engine::cluster::{FromCluster, Origin, Read as StreamRead, Stream};
use websocket_public_chat::engine::snapshot;
use websocket_public_chat::engine::stats::Counters;
use websocket_public_chat::engine::{Action, Engine, Options};
use websocket_public_chat::http::admin::Command;
use websocket_public_chat::http::proxy::Cidr;
use websocket_public_chat::websocket::frame::{self, OpCode, Role};

/// The epoch the simulated room has (16 hex digits, as the server's own,
/// so `--history-file`'s checks take it).
const EPOCH: &str = "5151e90c5151e90c";
/// The instance id the simulated server has in its cluster.
const INSTANCE: u64 = 0x5151;
/// Events kept for a failure report.
const HISTORY: usize = 60;
/// A valid upgrade request, for the raw clients.
const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

// ---- Randomness ----------------------------------------------------------

/// Where the simulation's choices come from.
pub trait Source {
    /// A number below `n` (n ≥ 1), or `None` when the source is used up.
    fn below(&mut self, n: u64) -> Option<u64>;
}

/// SplitMix64: small, fast and fully determined by its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
}

impl Source for Rng {
    fn below(&mut self, n: u64) -> Option<u64> {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Some((z ^ (z >> 31)) % n.max(1))
    }
}

/// A fuzzer's input as a source: two bytes per choice, then the end.
pub struct FuzzInput<'a>(pub &'a [u8]);

impl Source for FuzzInput<'_> {
    fn below(&mut self, n: u64) -> Option<u64> {
        let [a, b, rest @ ..] = self.0 else {
            return None;
        };
        self.0 = rest;
        Some(u64::from(u16::from_le_bytes([*a, *b])) % n.max(1))
    }
}

// ---- Pipes ---------------------------------------------------------------

/// One direction of a simulated TCP connection.
#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    cap: usize,
    /// The writer shut its side: a reader that has everything sees the end.
    fin: bool,
    /// The connection was reset: a reader sees an error once the bytes run out.
    reset: bool,
}

impl Pipe {
    fn room(&self) -> usize {
        self.cap.saturating_sub(self.bytes.len())
    }
}

/// Both directions: `up` from client to server, `down` from server to client.
#[derive(Default)]
struct Wire {
    up: Pipe,
    down: Pipe,
    /// The server closed its socket: the client's writes fail.
    server_closed: bool,
}

/// The client's end of a connection, for tungstenite.
struct ClientEnd(Rc<RefCell<Wire>>);

impl Read for ClientEnd {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut wire = self.0.borrow_mut();
        let down = &mut wire.down;
        if down.bytes.is_empty() {
            return match (down.reset, down.fin) {
                (true, _) => Err(io::ErrorKind::ConnectionReset.into()),
                (false, true) => Ok(0),
                (false, false) => Err(io::ErrorKind::WouldBlock.into()),
            };
        }
        let n = buf.len().min(down.bytes.len());
        for (slot, byte) in buf.iter_mut().zip(down.bytes.drain(..n)) {
            *slot = byte;
        }
        Ok(n)
    }
}

impl Write for ClientEnd {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut wire = self.0.borrow_mut();
        if wire.server_closed || wire.up.fin || wire.up.reset {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let n = buf.len().min(wire.up.room());
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        wire.up.bytes.extend(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

// ---- What the server wrote -------------------------------------------------

/// Follows the bytes the server wrote to one connection: the HTTP answer,
/// then frames, with the library's frame parser in client role.
#[derive(Default)]
struct Tap {
    bytes: Vec<u8>,
    /// The head is read; `true` if it was a 101 (frames follow).
    upgraded: Option<bool>,
    /// The server's close frame code (0 when it carried none).
    close: Option<u16>,
    /// The highest 4-byte payload of a pong the server sent.
    max_pong: Option<u32>,
}

impl Tap {
    fn feed(&mut self, data: &[u8]) -> Result<(), String> {
        self.bytes.extend_from_slice(data);
        if self.upgraded.is_none() {
            let Some(end) = self.bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                return Ok(());
            };
            self.upgraded = Some(self.bytes.starts_with(b"HTTP/1.1 101 "));
            self.bytes.drain(..end + 4);
        }
        if self.upgraded != Some(true) {
            self.bytes.clear();
            return Ok(());
        }
        loop {
            let parsed = frame::parse_header(&self.bytes, Role::Client)
                .map_err(|e| format!("the server sent a bad frame: {e:?}"))?;
            let Some((header, len)) = parsed else {
                return Ok(());
            };
            let end = len + header.payload_len as usize;
            if self.bytes.len() < end {
                return Ok(());
            }
            // After its close frame the server may still answer pings (RFC 6455
            // §5.5.2), but sends no data and no second close (§5.5.1).
            if self.close.is_some() && header.opcode != OpCode::Pong {
                return Err(format!(
                    "the server sent {:?} after its close frame",
                    header.opcode
                ));
            }
            if header.opcode == OpCode::Close {
                let code = self
                    .bytes
                    .get(len..len + 2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                self.close = Some(code.unwrap_or(0));
            }
            if header.opcode == OpCode::Pong
                && let Ok(id) = <[u8; 4]>::try_from(&self.bytes[len..end])
            {
                self.max_pong = self.max_pong.max(Some(u32::from_be_bytes(id)));
            }
            self.bytes.drain(..end);
        }
    }
}

// ---- Clients -------------------------------------------------------------

enum Peer {
    /// tungstenite's opening handshake, waiting for the pipes.
    Connecting(MidHandshake<ClientHandshake<ClientEnd>>),
    Ws(Box<WebSocket<ClientEnd>>),
    /// A hostile client writing bytes of its own.
    Raw,
    /// A raw client that pings with numbered payloads, leaves, keeps pinging
    /// while the server waits for its close, then answers the close.
    Pinger(Pinger),
    /// Disconnected, closed or failed: does nothing more.
    Gone,
}

#[derive(Default)]
struct Pinger {
    /// The last ping id written whole into the pipe.
    sent: Option<u32>,
    left: bool,
    /// The last ping id written before our close frame, once it is written.
    closed_after: Option<Option<u32>>,
}

struct Client {
    name: String,
    /// The address it connects from.
    ip: IpAddr,
    /// The person behind it: a client that reconnects is a new `Client` of the same person.
    person: usize,
    key: usize,
    wire: Rc<RefCell<Wire>>,
    peer: Peer,
    tap: Tap,
    join_sent: bool,
    joins_sent: u32,
    /// For a reconnection: the newest id the person had seen (its join asks `since`).
    since: Option<u64>,
    /// The join sent asked for `history` (this many) or `since`: chats come before `joined`.
    asked: Option<Option<u64>>,
    /// Ids of the chats sent before `joined`.
    replayed: Vec<u64>,
    /// `joined`: the newest id then, and whether the catch-up was complete.
    joined: Option<(u64, bool)>,
    /// Index into the log where membership began and ended.
    member_since: Option<usize>,
    member_until: Option<usize>,
    /// Ids of the chats received, in order.
    received: Vec<String>,
    /// The close code tungstenite reported from the server.
    saw_close: Option<u16>,
    /// How many messages it reads when it reads.
    reader_speed: u64,
    /// Reads what it is sent (a client may stop for a while).
    reading: bool,
    /// Read everything from the start: what it got is checked for completeness.
    attentive: bool,
    /// What it received is checked (tungstenite clients; raw ones discard).
    checked: bool,
    /// The engine closed the socket (`Action::Close`).
    closed: bool,
    /// The engine shut the write side before closing.
    shut: bool,
    /// The last flush left bytes the pipe did not take.
    blocked: bool,
    /// While `blocked`: how many frames were queued when it blocked (frames
    /// queued since come after them).
    queued_when_blocked: usize,
    /// The engine had output queued for it after the last call.
    output_queued: bool,
    /// When the server last read bytes from it (or accepted it).
    heard_at: u64,
    /// When each of its chats was relayed, for the rate limit.
    chat_times: Vec<u64>,
    eof_delivered: bool,
}

/// A chat the room accepted, in the order the engine relayed them (its id
/// is its place in this log, from 1).
struct Relayed {
    /// The connection (client index) it came from; `None`: the backplane.
    sender: Option<usize>,
    /// `name:seq`, the start of its text.
    id: String,
}

/// Someone using the room, over one connection after another.
struct Person {
    name: String,
    /// Chats are numbered per person: the text starts with `name:seq`.
    seq: u32,
    /// The newest chat id this person has received.
    last_seen: u64,
}

/// A chat's id: its text up to the padding.
fn chat_id(text: &str) -> String {
    text.split(' ').next().unwrap_or_default().to_string()
}

/// The simulation's knobs.
pub struct Settings {
    /// Server flags, as on the command line.
    pub flags: Vec<String>,
    /// Most clients at once.
    pub max_clients: usize,
    /// Random steps before the drain.
    pub steps: usize,
    /// Redis orders the room (the harness plays Redis: the stream, the
    /// subscription, the history reader); else the instance orders it.
    pub ordered: bool,
}

impl Default for Settings {
    fn default() -> Self {
        let flags = [
            "--max-message-size",
            "4096",
            "--max-backlog",
            "16384",
            "--ping-interval",
            "5",
            "--pong-timeout",
            "10",
            "--handshake-timeout",
            "3",
            // A short history, so clients that come back often find a gap.
            "--history",
            &HISTORY_KEPT.to_string(),
        ];
        Self {
            flags: flags.iter().map(|f| f.to_string()).collect(),
            max_clients: 24,
            steps: 800,
            ordered: false,
        }
    }
}

/// The server's `--history` in the simulation: short, so clients that come
/// back often find a gap.
const HISTORY_KEPT: u64 = 40;

/// What a run did, for the test's summary.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub clients: usize,
    /// Chats relayed (local and from the backplane).
    pub chats: usize,
    /// Members whose chats were checked to be complete.
    pub checked_exactly: usize,
    /// Members checked to have a gapless start of them (closed or not reading).
    pub checked_prefix: usize,
    /// Whether the server was shut down during the run.
    pub shutdown: bool,
    /// The engine's counters at the end.
    pub counters: Counters,
}

/// Runs one simulation; `Err` says what broke, with the last events.
pub fn run(source: &mut impl Source, settings: &Settings) -> Result<Report, String> {
    let args = std::iter::once("sim".to_string()).chain(settings.flags.iter().cloned());
    let config = Config::from_args(args).map_err(|e| format!("bad flags: {e}"))?;
    let kept = config.clone();
    // One instance of a cluster whose publisher is up but whose subscription
    // is not: it orders its own chats and publishes each (the actions are
    // the log of what it relayed), and chats of other instances arrive.
    let mut engine = Engine::new(
        config,
        Options {
            max_conns: settings.max_clients * 2,
            public_slots: usize::MAX,
            instance: Some(INSTANCE),
            epoch: EPOCH.into(),
            restored: None,
            admin_token: None,
        },
        0,
    );
    engine.handle_cluster(FromCluster::Publisher { up: true }, 0);
    if settings.ordered {
        let up = FromCluster::Up {
            epoch: EPOCH.into(),
            last: 0,
        };
        engine.handle_cluster(up, 0);
    }
    let mut sim = Sim {
        engine,
        config: kept,
        now: 0,
        clients: Vec::new(),
        by_key: BTreeMap::new(),
        log: Vec::new(),
        history: VecDeque::new(),
        listening: true,
        remote_seq: 0,
        unexplained_closes: 0,
        finished: false,
        max_clients: settings.max_clients,
        shutdown_requested: false,
        persons: Vec::new(),
        reading_from: None,
        away: Vec::new(),
        joined: 0,
        presence_seen: Vec::new(),
        pong_timeout: flag(settings, "--pong-timeout").map_or(60_000, |s| (s * 1000.0) as u64),
        backlog: flag(settings, "--max-backlog").map_or(1 << 20, |b| b as usize),
        max_message: flag(settings, "--max-message-size").map_or(1 << 16, |b| b as usize),
        redis: settings.ordered.then(Redis::default),
        times: vec![0],
        mutes: BTreeMap::new(),
        moderations: 0,
    };
    let outcome = sim
        .steps(source, settings.steps)
        .and_then(|()| sim.drain())
        .and_then(|()| sim.verify());
    outcome.map_err(|why| {
        let events: Vec<&str> = sim.history.iter().map(String::as_str).collect();
        format!(
            "{why}\nlast events (oldest first):\n  {}",
            events.join("\n  ")
        )
    })
}

/// The value of `name` in the settings' flags, as seconds.
fn flag(settings: &Settings, name: &str) -> Option<f64> {
    let at = settings.flags.iter().position(|f| f == name)?;
    settings.flags.get(at + 1)?.parse().ok()
}

/// How many frames the engine has queued for `key`.
fn queued_frames(engine: &Engine, key: usize) -> usize {
    let mut few = [IoSlice::new(&[]); 32];
    match engine.transmit(key, &mut few) {
        count if count < few.len() => count,
        _ => engine.transmit(key, &mut vec![IoSlice::new(&[]); 1 << 12]),
    }
}

/// A whole pong frame as the server writes them.
fn is_pong(frame: &[u8]) -> bool {
    matches!(frame, [0x8A, len, ..] if usize::from(*len) + 2 == frame.len())
}

/// The payload of a whole text frame the server wrote (empty if it is not one).
fn payload(frame: &[u8]) -> &[u8] {
    match frame::parse_header(frame, Role::Client) {
        Ok(Some((header, len))) if header.opcode == OpCode::Text => &frame[len..],
        _ => &[],
    }
}

/// The count in a whole presence frame, if `frame` is one.
fn presence_count(frame: &[u8]) -> Option<u64> {
    let payload = payload(frame);
    if !payload.starts_with(br#"{"type":"presence""#) {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(payload).ok()?;
    json["online"].as_u64()
}

struct Sim {
    engine: Engine,
    /// The flags the engine runs with.
    config: Config,
    now: u64,
    clients: Vec<Client>,
    /// Live engine keys → index in `clients`.
    by_key: BTreeMap<usize, usize>,
    log: Vec<Relayed>,
    history: VecDeque<String>,
    listening: bool,
    remote_seq: u32,
    /// Closes after a server close frame without a FIN, to be explained by counters.
    unexplained_closes: u64,
    finished: bool,
    max_clients: usize,
    shutdown_requested: bool,
    persons: Vec<Person>,
    /// The client whose bytes the engine is reading now: the sender of what it publishes.
    reading_from: Option<usize>,
    /// People whose connection dropped, who will come back.
    away: Vec<usize>,
    /// Connections the engine counted as joined after the last call.
    joined: usize,
    /// The presence frames seen queued after the last call (by address).
    presence_seen: Vec<usize>,
    /// `--pong-timeout` in ms.
    pong_timeout: u64,
    /// `--max-backlog` and `--max-message-size`.
    backlog: usize,
    max_message: usize,
    /// When Redis orders the room: what the harness plays of it.
    redis: Option<Redis>,
    /// Every time `now` took, in order (when the engine was first called
    /// after a deadline).
    times: Vec<u64>,
    /// Names an operator muted, and until when.
    mutes: BTreeMap<String, u64>,
    /// Operator actions so far (notices are numbered by it).
    moderations: u32,
}

/// Redis as the harness plays it: the stream (every chat published, in
/// order, its id its place from 1, trimmed to the newest `STREAM_KEPT`),
/// how much of it the subscription has delivered, and history reads not
/// answered yet.
#[derive(Default)]
struct Redis {
    stream: Vec<Published>,
    delivered: usize,
    reads: VecDeque<(usize, u32, StreamRead)>,
}

/// A chat in the stream: who sent it (for the log), its text's id, its JSON.
struct Published {
    sender: Option<usize>,
    id: String,
    origin: Origin,
    json: Vec<u8>,
}

/// Entries the played stream keeps (`MAXLEN ~ --history`, and a little more).
const STREAM_KEPT: usize = HISTORY_KEPT as usize + 10;
/// What the read script counts per entry beyond its fields, and the budget.
const ENTRY_COST: usize = 512 + 64;

/// Counters that account for a connection closed without a clean end.
fn unclean_budget(c: &Counters) -> u64 {
    c.close_timeouts + c.keepalive_timeouts + c.linger_timeouts + c.dropped_without_close
}

impl Sim {
    fn note(&mut self, event: String) {
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(format!("t={} {event}", self.now));
    }

    fn steps(&mut self, source: &mut impl Source, steps: usize) -> Result<(), String> {
        for _ in 0..steps {
            let Some(choice) = source.below(100) else {
                return Ok(());
            };
            match choice {
                0..=5 => self.connect(source),
                6..=35 => self.act(source),
                36..=55 => self.pump(source)?,
                56..=65 => self.deliver(source),
                66..=73 => self.client_read(source),
                74..=80 => {
                    self.turn(source)?;
                    self.note("turn".into());
                }
                81..=90 => {
                    let ms = match source.below(10) {
                        Some(0) => source.below(4_000).unwrap_or(0),
                        _ => source.below(150).unwrap_or(0),
                    };
                    self.now += ms;
                    self.times.push(self.now);
                    self.note(format!("time +{ms} ms"));
                }
                91..=94 => self.remote_chat(source),
                95 => self.disconnect(source),
                96 => self.come_back(source),
                97 => self.moderate(source)?,
                _ => {
                    if source.below(100) == Some(0) {
                        self.note("shutdown".into());
                        self.shutdown_requested = true;
                        self.engine.handle_shutdown(self.now);
                    }
                }
            }
            self.after_call()?;
            if self.engine.is_finished(self.now) {
                self.finished = true;
                return Ok(());
            }
        }
        Ok(())
    }

    /// After every engine call: actions, membership, invariants.
    fn after_call(&mut self) -> Result<(), String> {
        // Whether output waits, seen before a `Close` takes the connection away.
        for &index in self.by_key.values() {
            let client = &mut self.clients[index];
            let mut slot = [IoSlice::new(&[])];
            client.output_queued = self.engine.transmit(client.key, &mut slot) > 0;
        }
        while let Some(action) = self.engine.poll_action() {
            self.carry_out(action)?;
        }
        self.check_queued_frames()?;
        for client in &mut self.clients {
            let member = !client.closed && self.engine.is_member(client.key);
            match (client.member_since, client.member_until, member) {
                (None, _, true) => client.member_since = Some(self.log.len()),
                (Some(_), None, false) => client.member_until = Some(self.log.len()),
                (Some(_), Some(_), true) => {
                    return Err(format!("{} joined twice on one connection", client.name));
                }
                _ => {}
            }
        }
        self.engine
            .check_invariants()
            .map_err(|e| format!("engine invariant: {e}"))?;
        let stats = self.engine.stats();
        if stats.chats_relayed != self.log.len() as u64 {
            return Err(format!(
                "{} chats relayed by the counters, {} seen",
                stats.chats_relayed,
                self.log.len()
            ));
        }
        if self.shutdown_requested && self.listening {
            return Err("shutdown began, but the listener is still open".into());
        }
        if self.unexplained_closes > unclean_budget(stats) {
            return Err(format!(
                "{} closes after a close frame without a FIN, but the timeouts and drops counted are {}",
                self.unexplained_closes,
                unclean_budget(stats)
            ));
        }
        Ok(())
    }

    fn carry_out(&mut self, action: Action) -> Result<(), String> {
        match action {
            Action::ReadHistory { key, conn, read } => {
                let Some(redis) = &mut self.redis else {
                    return Err("read history while ordering its own chats".into());
                };
                let last = redis.delivered as u64;
                if read.after >= read.upto || read.upto > last {
                    return Err(format!("read {read:?} with {last} relayed"));
                }
                redis.reads.push_back((key, conn, read));
            }
            Action::Publish { frame, origin } => {
                let (header, len) = frame::parse_header(&frame, Role::Client)
                    .ok()
                    .flatten()
                    .ok_or("published a bad frame")?;
                let json: serde_json::Value = serde_json::from_slice(&frame[len..])
                    .map_err(|e| format!("published bad JSON: {e}"))?;
                let (Some(_), Some(text)) = (json["user"].as_str(), json["text"].as_str()) else {
                    return Err(format!("published {json} ({header:?})"));
                };
                if let Some(redis) = &mut self.redis {
                    // Into the stream; relayed when the subscription delivers it.
                    let json = serde_json::json!({
                        "type": "chat", "room": "public", "user": json["user"], "text": text,
                        "ts": json["ts"],
                    });
                    redis.stream.push(Published {
                        sender: self.reading_from,
                        id: chat_id(text),
                        origin,
                        json: json.to_string().into_bytes(),
                    });
                } else {
                    if json["id"].as_u64() != Some(self.log.len() as u64 + 1) {
                        return Err(format!("chat {} relayed as {json}", self.log.len() + 1));
                    }
                    self.log.push(Relayed {
                        sender: self.reading_from,
                        id: chat_id(text),
                    });
                }
                if let Some(index) = self.reading_from {
                    self.check_rate(index)?;
                    let name = &self.clients[index].name;
                    if let Some(until) = self.mutes.get(name).filter(|&&until| until > self.now) {
                        return Err(format!(
                            "{name}'s chat {} went out while muted until {until} (now {})",
                            chat_id(text),
                            self.now
                        ));
                    }
                }
            }
            Action::ShutdownWrite(key) => {
                let index = self.client_of(key)?;
                self.check_close_frame_before_fin(index, "shut its write side")?;
                let client = &mut self.clients[index];
                client.shut = true;
                client.wire.borrow_mut().down.fin = true;
            }
            Action::Close(key) => {
                let index = self.client_of(key)?;
                self.check_close_frame_before_fin(index, "closed the socket")?;
                self.by_key.remove(&key);
                let client = &mut self.clients[index];
                client.closed = true;
                // The server's close must end in a FIN after it, unless the
                // client left first or a timeout or drop was counted.
                let client_left = client.eof_delivered || client.wire.borrow().up.reset;
                if client.tap.close.is_some() && !client.shut && !client_left {
                    self.unexplained_closes += 1;
                }
                let mut wire = client.wire.borrow_mut();
                wire.server_closed = true;
                // Unread input turns a close into a reset, as in TCP.
                if wire.up.bytes.is_empty() {
                    wire.down.fin = true;
                } else {
                    wire.down.reset = true;
                }
                drop(wire);
                let name = client.name.clone();
                self.note(format!("server closed {name}"));
            }
            Action::StopListening => self.listening = false,
            Action::ResumeReading(_) | Action::ResumeAccepting | Action::Log(_) => {}
            Action::Moderate(command) => {
                return Err(format!("another instance's {command:?} was sent on again"));
            }
        }
        Ok(())
    }

    /// What every connection's queue holds, frame by frame, after each call:
    /// the engine charges at least what the frames really cost (their bytes
    /// and 64 each); on a connection whose socket is full, at most one pong
    /// waits among the frames queued since it filled (a newer one replaces
    /// the one waiting); and a presence count queued by the call
    /// is the number of members joined around it (one more for a join and
    /// a leave read in one piece).
    fn check_queued_frames(&mut self) -> Result<(), String> {
        let joined = self
            .by_key
            .keys()
            .filter(|&&key| self.engine.is_joined(key))
            .count();
        let around = self.joined.min(joined)..=self.joined.max(joined) + 1;
        self.joined = joined;
        let mut presence = Vec::new();
        let mut many = Vec::new();
        for (&key, &index) in &self.by_key {
            // Most queues are short: a small array first, a large one if it fills.
            let mut few = [IoSlice::new(&[]); 32];
            let mut count = self.engine.transmit(key, &mut few);
            let slices: &[IoSlice] = if count < few.len() {
                &few
            } else {
                many.resize(1 << 12, IoSlice::new(&[]));
                count = self.engine.transmit(key, &mut many);
                &many
            };
            let frames = &slices[..count];
            let client = &self.clients[index];
            let name = &client.name;
            let real: usize = frames.iter().map(|f| f.len() + 64).sum();
            let charged = self.engine.backlog(key);
            if count < slices.len() && charged < real {
                return Err(format!(
                    "{name}: {count} frames queued cost {real} bytes, {charged} charged"
                ));
            }
            // A catch-up is fed as its client reads: at most half the backlog
            // of replayed chats waits (with Redis, a read may add the other
            // half), and one chat past it. Replayed: every chat queued while
            // it catches up, or before the `joined` that ended it.
            let catching_up = self.engine.is_joined(key) && !self.engine.is_member(key);
            let ended = frames
                .iter()
                .position(|f| payload(f).starts_with(br#"{"type":"joined""#));
            if catching_up || ended.is_some() {
                let replay: usize = frames[..ended.unwrap_or(frames.len())]
                    .iter()
                    .filter(|f| payload(f).starts_with(br#"{"type":"chat""#))
                    .map(|f| f.len() + 64)
                    .sum();
                let paced = match self.redis {
                    Some(_) => self.backlog,
                    None => self.backlog / 2,
                };
                if replay > paced + self.max_message + 512 + 64 {
                    return Err(format!(
                        "{name}: {replay} bytes of replay queued at once (paced to {paced})"
                    ));
                }
            }
            let since_full = frames.get(client.queued_when_blocked..).unwrap_or_default();
            let pongs = since_full.iter().filter(|f| is_pong(f)).count();
            if client.blocked && pongs > 1 {
                return Err(format!(
                    "{name}: {pongs} pongs wait on a full socket since it filled"
                ));
            }
            for frame in frames {
                let Some(online) = presence_count(frame) else {
                    continue;
                };
                let at = frame.as_ptr() as usize;
                presence.push(at);
                if !self.presence_seen.contains(&at) && !around.contains(&(online as usize)) {
                    return Err(format!(
                        "{name} was told {online} online, with {around:?} joined"
                    ));
                }
            }
        }
        self.presence_seen = presence;
        Ok(())
    }

    /// No connection relays more than its token bucket allows: within any
    /// span of W ms, 10 chats and one per 100 ms begun.
    fn check_rate(&mut self, index: usize) -> Result<(), String> {
        let now = self.now;
        let client = &mut self.clients[index];
        client.chat_times.push(now);
        let times = &client.chat_times;
        for (at, &start) in times.iter().enumerate() {
            let (span, count) = (now - start, (times.len() - at) as u64);
            if count > 10 + span.div_ceil(100) {
                return Err(format!(
                    "{} had {count} chats relayed within {span} ms",
                    client.name
                ));
            }
        }
        Ok(())
    }

    /// The server ends an upgraded connection (a FIN, or closing its socket)
    /// only after its close frame went out, unless the client left first or
    /// output was still queued (a client that stopped reading: the close
    /// then ends in a counted timeout).
    fn check_close_frame_before_fin(&self, index: usize, what: &str) -> Result<(), String> {
        let client = &self.clients[index];
        let client_left = client.eof_delivered || client.wire.borrow().up.reset;
        if client.tap.upgraded == Some(true)
            && client.tap.close.is_none()
            && !client_left
            && !client.output_queued
        {
            return Err(format!(
                "the server {what} of {} without sending its close frame",
                client.name
            ));
        }
        Ok(())
    }

    /// Once everything has settled, no connection is left that the server
    /// has not heard from for longer than `--pong-timeout`: keepalive closed
    /// every silent one. The engine acts at its first call at or after that
    /// deadline (time may have jumped past it), and another close may come
    /// first in that call, then waits up to 2 s for the peer's close; a
    /// timer tick to spare.
    fn check_silence(&self) -> Result<(), String> {
        if self.finished {
            return Ok(());
        }
        for &index in self.by_key.values() {
            let client = &self.clients[index];
            let deadline = client.heard_at + self.pong_timeout;
            let first_call = self.times[self.times.partition_point(|&t| t < deadline)..]
                .first()
                .copied()
                .unwrap_or(deadline);
            if self.now > first_call + 2_000 + 200 {
                let silent = self.now - client.heard_at;
                return Err(format!("{} is open, silent for {silent} ms", client.name));
            }
        }
        Ok(())
    }

    fn client_of(&self, key: usize) -> Result<usize, String> {
        self.by_key
            .get(&key)
            .copied()
            .ok_or_else(|| format!("an action for key {key}, which no client holds"))
    }

    fn live(&self) -> Vec<usize> {
        self.by_key.values().copied().collect()
    }

    fn pick_live(&self, source: &mut impl Source) -> Option<usize> {
        let live = self.live();
        let at = source.below(live.len().max(1) as u64)? as usize;
        live.get(at).copied()
    }

    // ---- Steps -----------------------------------------------------------

    fn connect(&mut self, source: &mut impl Source) {
        // Now and then someone who dropped earlier comes back (perhaps after
        // more chats than the history keeps).
        let returning = match self.away.is_empty() {
            false if source.below(2) == Some(0) => Some(self.away.remove(0)),
            _ => None,
        };
        self.open_client(source, returning);
    }

    /// A new connection: of a new person, or of `person` coming back (its
    /// join then asks for what it missed since the newest id it saw).
    fn open_client(&mut self, source: &mut impl Source, returning: Option<usize>) {
        if !self.listening || self.by_key.len() >= self.max_clients {
            return;
        }
        let ip = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + source.below(3).unwrap_or(0) as u8,
        ));
        let key = self.engine.handle_accept(ip, self.now);
        let person = returning.unwrap_or_else(|| {
            self.persons.push(Person {
                name: format!("c{}", self.clients.len()),
                seq: 0,
                last_seen: 0,
            });
            self.persons.len() - 1
        });
        let name = self.persons[person].name.clone();
        let mut since = returning.map(|p| self.persons[p].last_seen);
        // With Redis: now and then someone comes back having seen, on another
        // instance, chats this one has not relayed yet (all the stream has).
        if let (Some(redis), Some(seen)) = (&self.redis, since.as_mut())
            && source.below(4) == Some(0)
        {
            *seen = (*seen).max(redis.stream.len() as u64);
        }
        let wire = Rc::new(RefCell::new(Wire::default()));
        {
            let mut w = wire.borrow_mut();
            w.up.cap = 64 + source.below(16_384).unwrap_or(0) as usize;
            w.down.cap = 64 + source.below(4_096).unwrap_or(0) as usize;
        }
        let raw = returning.is_none() && source.below(5) == Some(0);
        let pinger = returning.is_none() && source.below(6) == Some(0);
        let peer = if pinger {
            wire.borrow_mut().up.bytes.extend(UPGRADE);
            Peer::Pinger(Pinger::default())
        } else if raw {
            let request: &[u8] = match source.below(6) {
                Some(0) => b"GET /stats HTTP/1.1\r\nHost: s\r\n\r\n",
                Some(1) => b"GET /nope HTTP/1.1\r\n\r\n",
                Some(2) => b"\x16\x03\x01garbage\r\n\r\n",
                _ => UPGRADE,
            };
            wire.borrow_mut().up.bytes.extend(request);
            Peer::Raw
        } else {
            match tungstenite::client("ws://sim/ws", ClientEnd(Rc::clone(&wire))) {
                Ok((ws, _)) => Peer::Ws(Box::new(ws)),
                Err(HandshakeError::Interrupted(mid)) => Peer::Connecting(mid),
                Err(HandshakeError::Failure(_)) => Peer::Gone,
            }
        };
        self.by_key.insert(key, self.clients.len());
        self.clients.push(Client {
            name: name.clone(),
            key,
            ip,
            wire,
            peer,
            tap: Tap::default(),
            person,
            join_sent: false,
            joins_sent: 0,
            since,
            asked: None,
            replayed: Vec::new(),
            joined: None,
            member_since: None,
            member_until: None,
            received: Vec::new(),
            saw_close: None,
            reader_speed: 1 + source.below(20).unwrap_or(0),
            reading: true,
            attentive: true,
            checked: !raw && !pinger,
            closed: false,
            shut: false,
            blocked: false,
            queued_when_blocked: 0,
            output_queued: false,
            heard_at: self.now,
            chat_times: Vec::new(),
            eof_delivered: false,
        });
        self.note(format!(
            "{name} connects as key {key} from {ip}{}",
            if raw { " (raw)" } else { "" }
        ));
    }

    /// A client says something.
    fn act(&mut self, source: &mut impl Source) {
        let Some(index) = self.pick_live(source) else {
            return;
        };
        if matches!(self.clients[index].peer, Peer::Connecting(_)) {
            return self.read_client(index, None);
        }
        let mut choice = source.below(100).unwrap_or(0);
        let client = &mut self.clients[index];
        // Most clients join before anything else.
        if !client.join_sent && source.below(10).is_some_and(|n| n < 9) {
            choice = 0;
        }
        client.join_sent |= choice < 15;
        // A join may ask for history; a returning client's asks for what it missed.
        let catchup = match client.since {
            Some(seen) => Some(serde_json::json!({"since": seen, "epoch": EPOCH})),
            None => source
                .below(3)
                .filter(|n| *n == 0)
                .map(|_| serde_json::json!({"history": source.below(120).unwrap_or(0)})),
        };
        let person = &mut self.persons[client.person];
        let note = match &mut client.peer {
            Peer::Ws(ws) => {
                let note = ws_act(
                    ws,
                    &person.name,
                    &mut person.seq,
                    choice,
                    catchup.as_ref(),
                    source,
                );
                // Only the first join counts: later ones are ignored.
                if note.starts_with("joins") {
                    client.joins_sent += 1;
                    if client.joins_sent == 1 {
                        client.asked = catchup.map(|c| c["history"].as_u64());
                    }
                }
                note
            }
            Peer::Raw => raw_act(&client.wire, &client.name, choice, source),
            Peer::Pinger(pinger) => {
                pinger_act(pinger, &client.wire, &client.tap, &client.name, choice)
            }
            Peer::Connecting(_) | Peer::Gone => return,
        };
        match note.as_str() {
            "stops reading" => {
                client.reading = false;
                client.attentive = false;
            }
            "resumes reading" => client.reading = true,
            "goes silent" => {
                client.reading = false;
                client.attentive = false;
                client.peer = Peer::Gone;
            }
            _ => {}
        }
        let name = client.name.clone();
        self.note(format!("{name} {note}"));
    }

    /// One loop turn for everyone: the server reads what each client sent
    /// (in a random split), flushes, and each client reads at its speed.
    fn pump(&mut self, source: &mut impl Source) -> Result<(), String> {
        if self.redis.is_some() {
            let chats = source.below(4).unwrap_or(0) as usize;
            let reads = source.below(3).unwrap_or(0) as usize;
            self.play_redis(chats, reads, source)?;
        }
        for index in self.live() {
            self.deliver_to(index, source);
            self.after_call()?;
        }
        self.turn(source)?;
        for index in 0..self.clients.len() {
            self.read_client(index, None);
        }
        self.note("pump".into());
        Ok(())
    }

    /// The server reads what a random client sent, in a random split.
    fn deliver(&mut self, source: &mut impl Source) {
        if let Some(index) = self.pick_live(source) {
            self.deliver_to(index, source);
        }
    }

    /// The server reads what a client sent, in a random split.
    fn deliver_to(&mut self, index: usize, source: &mut impl Source) {
        let key = self.clients[index].key;
        let limit = self.engine.read_limit(key);
        let mut wire = self.clients[index].wire.borrow_mut();
        if wire.up.reset {
            drop(wire);
            self.engine.handle_io_error(key);
            let name = self.clients[index].name.clone();
            self.note(format!("{name}: reset read"));
            return;
        }
        if wire.up.bytes.is_empty() {
            let eof = wire.up.fin && !self.clients[index].eof_delivered;
            drop(wire);
            if eof {
                self.clients[index].eof_delivered = true;
                self.engine.handle_eof(key);
                let name = self.clients[index].name.clone();
                self.note(format!("{name}: FIN read"));
            }
            return;
        }
        if limit == 0 {
            return;
        }
        let most = wire.up.bytes.len().min(limit) as u64;
        let n = 1 + source.below(most).unwrap_or(most - 1) as usize;
        let mut bytes: Vec<u8> = wire.up.bytes.drain(..n).collect();
        drop(wire);
        self.reading_from = Some(index);
        self.clients[index].heard_at = self.now;
        self.engine.handle_bytes(key, &mut bytes, self.now);
        let name = self.clients[index].name.clone();
        self.note(format!("{name}: server read {n} bytes"));
    }

    /// The end of a loop turn: timers, then every dirty connection flushed
    /// as far as its pipe takes.
    fn turn(&mut self, source: &mut impl Source) -> Result<(), String> {
        self.engine.handle_timeout(self.now);
        self.after_call()?;
        // A socket that refused bytes and has room again is writable: the
        // edge the event loop passes on as `handle_writable`.
        for &index in self.by_key.values() {
            let client = &mut self.clients[index];
            if client.blocked && client.wire.borrow().down.room() > 0 {
                client.blocked = false;
                self.engine.handle_writable(client.key);
            }
        }
        while let Some(key) = self.engine.next_dirty() {
            let index = self.client_of(key)?;
            let wire = Rc::clone(&self.clients[index].wire);
            // Sometimes the kernel takes less than there is room for.
            let mut budget = match source.below(4) {
                Some(0) => source.below(4096).unwrap_or(0) as usize,
                _ => usize::MAX,
            };
            loop {
                let room = wire.borrow().down.room().min(budget);
                let mut slices = [IoSlice::new(&[]); 64];
                let count = self.engine.transmit(key, &mut slices);
                if count == 0 || room == 0 {
                    break;
                }
                let mut taken = Vec::new();
                for slice in &slices[..count] {
                    let take = slice.len().min(room - taken.len());
                    taken.extend_from_slice(&slice[..take]);
                }
                self.engine.handle_written(key, taken.len());
                budget -= taken.len();
                self.clients[index]
                    .tap
                    .feed(&taken)
                    .map_err(|e| format!("{}: {e}", self.clients[index].name))?;
                wire.borrow_mut().down.bytes.extend(taken);
            }
            let queued = queued_frames(&self.engine, key);
            let client = &mut self.clients[index];
            client.blocked = queued > 0;
            client.queued_when_blocked = queued;
            self.engine.handle_flushed(key, self.now);
        }
        self.check_queues()?;
        self.after_call()
    }

    /// What each connection's queue really holds, counted from the frames
    /// the engine offers (not from what it charges), against its bound.
    fn check_queues(&self) -> Result<(), String> {
        for (&key, &index) in &self.by_key {
            let mut few = [IoSlice::new(&[]); 64];
            let mut count = self.engine.transmit(key, &mut few);
            let mut bytes: usize = few[..count].iter().map(|s| s.len()).sum();
            if count == few.len() {
                let mut many = vec![IoSlice::new(&[]); 1 << 14];
                count = self.engine.transmit(key, &mut many);
                bytes = many[..count].iter().map(|s| s.len()).sum();
            }
            let real = bytes + count * 64;
            if real > self.engine.memory_bound() {
                return Err(format!(
                    "{}: {count} frames, {bytes} bytes queued, over the bound of {}",
                    self.clients[index].name,
                    self.engine.memory_bound()
                ));
            }
        }
        Ok(())
    }

    /// A client reads what arrived, up to its speed.
    fn client_read(&mut self, source: &mut impl Source) {
        let Some(index) = self.pick_any(source) else {
            return;
        };
        self.read_client(index, None);
    }

    fn pick_any(&self, source: &mut impl Source) -> Option<usize> {
        let at = source.below(self.clients.len().max(1) as u64)? as usize;
        (at < self.clients.len()).then_some(at)
    }

    /// Reads up to the client's speed, or everything with `all`.
    fn read_client(&mut self, index: usize, all: Option<()>) {
        let client = &mut self.clients[index];
        if !client.reading {
            return;
        }
        let speed = if all.is_some() {
            u64::MAX
        } else {
            client.reader_speed
        };
        let mut events = Vec::new();
        match &mut client.peer {
            Peer::Connecting(_) => {
                let Peer::Connecting(mid) = std::mem::replace(&mut client.peer, Peer::Gone) else {
                    return;
                };
                client.peer = match mid.handshake() {
                    Ok((ws, _)) => Peer::Ws(Box::new(ws)),
                    Err(HandshakeError::Interrupted(mid)) => Peer::Connecting(mid),
                    Err(HandshakeError::Failure(e)) => {
                        events.push(format!("handshake failed: {e}"));
                        Peer::Gone
                    }
                };
            }
            Peer::Ws(ws) => {
                for _ in 0..speed {
                    match ws.read() {
                        Ok(Message::Text(text)) => {
                            let Ok(json) = serde_json::from_str::<serde_json::Value>(&text) else {
                                events.push(format!("non-JSON text {text}"));
                                continue;
                            };
                            let id = json["id"].as_u64().unwrap_or(0);
                            match json["type"].as_str() {
                                Some("chat")
                                    if client.asked.is_some() && client.joined.is_none() =>
                                {
                                    client.replayed.push(id);
                                }
                                Some("chat") => {
                                    if let Some(text) = json["text"].as_str() {
                                        client.received.push(chat_id(text));
                                    }
                                }
                                Some("joined") => {
                                    if json["epoch"] != EPOCH {
                                        events
                                            .push(format!("a joined with the wrong epoch: {json}"));
                                    }
                                    let last = json["last"].as_u64().unwrap_or(u64::MAX);
                                    client.joined = Some((last, json["recovered"] == true));
                                }
                                _ => {}
                            }
                            if json["type"] == "chat" {
                                let person = &mut self.persons[client.person];
                                person.last_seen = person.last_seen.max(id);
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            client.saw_close = Some(frame.map_or(0, |f| u16::from(f.code)));
                        }
                        Ok(_) => {}
                        Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                            let _ = ws.flush();
                            break;
                        }
                        Err(e) => {
                            // Done with the connection: the client closes its socket.
                            events.push(format!("ends: {e}"));
                            client.peer = Peer::Gone;
                            client.wire.borrow_mut().up.fin = true;
                            break;
                        }
                    }
                }
            }
            Peer::Raw | Peer::Pinger(_) => {
                // Raw clients read and discard (the tap has checked the bytes).
                client.wire.borrow_mut().down.bytes.clear();
            }
            Peer::Gone => {}
        }
        let name = client.name.clone();
        for event in events {
            self.note(format!("{name} {event}"));
        }
    }

    /// Redis's part: the subscription delivers up to `chats` chats of the
    /// stream, in order, and up to `reads` history reads are answered (from
    /// what the stream still keeps, within the read's budget, as the read
    /// script does), fail, or are never answered (the engine gives up).
    fn play_redis(
        &mut self,
        chats: usize,
        reads: usize,
        source: &mut impl Source,
    ) -> Result<(), String> {
        for _ in 0..chats {
            let Some(redis) = &mut self.redis else {
                return Ok(());
            };
            let Some(chat) = redis.stream.get(redis.delivered) else {
                break;
            };
            redis.delivered += 1;
            let id = redis.delivered as u64;
            self.log.push(Relayed {
                sender: chat.sender,
                id: chat.id.clone(),
            });
            let message = FromCluster::Chat {
                id,
                origin: chat.origin,
                json: chat.json.clone(),
            };
            self.engine.handle_cluster(message, self.now);
            self.note(format!("Redis delivers chat {id}"));
            self.after_call()?;
        }
        for _ in 0..reads {
            let Some(redis) = &mut self.redis else {
                return Ok(());
            };
            let Some((key, conn, read)) = redis.reads.pop_front() else {
                break;
            };
            let stream = match source.below(10) {
                Some(0) => None,
                Some(1) => {
                    self.note(format!("Redis never answers {read:?}"));
                    continue;
                }
                _ => Some(self.read_stream(read)),
            };
            self.note(format!(
                "Redis answers {read:?}: {:?}",
                stream.as_ref().map(|s| (s.chats.len(), s.cut))
            ));
            let answer = FromCluster::History {
                key,
                conn,
                read,
                stream,
            };
            self.engine.handle_cluster(answer, self.now);
            self.after_call()?;
        }
        Ok(())
    }

    /// What the read script returns for `read` from the played stream.
    fn read_stream(&self, read: StreamRead) -> Stream {
        let Some(redis) = &self.redis else {
            return Stream::default();
        };
        let budget = self.backlog / 2;
        let first_kept = redis.stream.len().saturating_sub(STREAM_KEPT) as u64 + 1;
        let mut chats = Vec::new();
        let mut spent = 0;
        let mut cut = false;
        for id in (read.after + 1).max(first_kept)..=read.upto {
            let json = &redis.stream[id as usize - 1].json;
            let cost = json.len() + ENTRY_COST;
            if !chats.is_empty() && spent + cost > budget {
                cut = true;
                break;
            }
            spent += cost;
            chats.push((id, json.clone()));
        }
        Stream {
            epoch: EPOCH.into(),
            last: redis.stream.len() as u64,
            chats,
            cut,
        }
    }

    /// A chat from another instance arrives through the backplane.
    fn remote_chat(&mut self, source: &mut impl Source) {
        self.remote_seq += 1;
        let text = format!("remote:{}", self.remote_seq);
        let pad = "r".repeat(source.below(300).unwrap_or(0) as usize);
        let json =
            format!(r#"{{"type":"chat","room":"public","user":"remote","text":"{text} {pad}"}}"#);
        let origin = Origin {
            instance: INSTANCE + 1,
            key: 0,
            conn: 0,
            seq: 1,
            relayed_here: false,
        };
        if let Some(redis) = &mut self.redis {
            redis.stream.push(Published {
                sender: None,
                id: text.clone(),
                origin,
                json: json.into_bytes(),
            });
            self.note(format!("remote chat {text} into the stream"));
            return;
        }
        self.log.push(Relayed {
            sender: None,
            id: text.clone(),
        });
        let chat = FromCluster::Chat {
            id: self.remote_seq.into(),
            origin,
            json: json.into_bytes(),
        };
        self.engine.handle_cluster(chat, self.now);
        self.note(format!("remote chat {text}"));
    }

    /// An operator acts, through another instance: mutes a name (for up to
    /// 5 s) or lifts a mute, kicks a name, bans one of the three client
    /// addresses for 1 s, or sends a notice. Kicked and banned members are
    /// out of the room when the call returns.
    fn moderate(&mut self, source: &mut impl Source) -> Result<(), String> {
        if self.persons.is_empty() {
            return Ok(());
        }
        let Some(person) = source.below(self.persons.len() as u64) else {
            return Ok(());
        };
        let user = self.persons[person as usize].name.clone();
        self.moderations += 1;
        let command = match source.below(10).unwrap_or(0) {
            0..=2 => Command::Mute {
                user: user.clone(),
                seconds: 1 + source.below(5).unwrap_or(0),
            },
            3 => Command::Unmute { user: user.clone() },
            4 | 5 => Command::Kick {
                user: user.clone(),
                reason: String::new(),
            },
            6 => {
                let address = format!("127.0.0.{}", 1 + source.below(3).unwrap_or(0));
                Command::Ban {
                    block: Cidr::parse(&address).map_err(|e| e.to_string())?,
                    seconds: 1,
                    reason: "sim".into(),
                }
            }
            _ => Command::Announce {
                text: format!("notice {}", self.moderations),
            },
        };
        match &command {
            Command::Mute { seconds, .. } => {
                self.mutes.insert(user.clone(), self.now + seconds * 1000);
            }
            Command::Unmute { .. } => {
                self.mutes.remove(&user);
            }
            _ => {}
        }
        self.note(format!("operator: {command:?}"));
        let message = FromCluster::Moderation {
            instance: INSTANCE + 1,
            command: command.clone(),
        };
        self.engine.handle_cluster(message, self.now);
        for client in self.clients.iter().filter(|c| !c.closed) {
            let out = match &command {
                Command::Kick { .. } => client.name == user,
                Command::Ban { block, .. } => block.contains(client.ip),
                _ => false,
            };
            if out && self.engine.is_joined(client.key) {
                return Err(format!(
                    "{} is still in the room after {command:?}",
                    client.name
                ));
            }
        }
        Ok(())
    }

    /// A client vanishes: a FIN or a reset, without a close frame.
    fn disconnect(&mut self, source: &mut impl Source) {
        if let Some(index) = self.pick_live(source) {
            self.drop_client(index, source);
        }
    }

    /// A member's connection drops (a train tunnel) and it comes back on a
    /// new one, asking for what it missed since the newest id it saw.
    fn come_back(&mut self, source: &mut impl Source) {
        let Some(index) = self.pick_live(source) else {
            return;
        };
        let client = &self.clients[index];
        if !matches!(client.peer, Peer::Ws(_)) || client.member_since.is_none() {
            return;
        }
        let person = client.person;
        self.drop_client(index, source);
        match source.below(2) {
            // Back at once, or some time later (see `connect`).
            Some(0) => self.open_client(source, Some(person)),
            _ => self.away.push(person),
        }
    }

    /// The client vanishes without a close frame: a FIN or a reset.
    fn drop_client(&mut self, index: usize, source: &mut impl Source) {
        let reset = source.below(2) == Some(0);
        let client = &mut self.clients[index];
        client.reading = false;
        client.attentive = false;
        client.peer = Peer::Gone;
        {
            let mut wire = client.wire.borrow_mut();
            if reset {
                wire.up.reset = true;
            } else {
                wire.up.fin = true;
            }
        }
        let name = client.name.clone();
        self.note(format!(
            "{name} disconnects ({})",
            if reset { "reset" } else { "FIN" }
        ));
    }

    // ---- The end ---------------------------------------------------------

    /// Everyone still attentive reads and answers, every byte is delivered,
    /// and time moves on until every close has ended.
    fn drain(&mut self) -> Result<(), String> {
        self.note("drain: everyone reads, every byte is delivered, time moves on".into());
        for _ in 0..200 {
            if self.finished {
                return Ok(());
            }
            if self.redis.is_some() {
                self.play_redis(usize::MAX, usize::MAX, &mut Rng::new(1))?;
            }
            for index in 0..self.clients.len() {
                self.read_client(index, Some(()));
            }
            for (key, index) in self.by_key.clone() {
                let wire = Rc::clone(&self.clients[index].wire);
                loop {
                    let limit = self.engine.read_limit(key);
                    let mut w = wire.borrow_mut();
                    if w.up.reset {
                        drop(w);
                        self.engine.handle_io_error(key);
                        break;
                    }
                    if w.up.bytes.is_empty() || limit == 0 {
                        let eof = w.up.fin && w.up.bytes.is_empty();
                        drop(w);
                        if eof && !self.clients[index].eof_delivered {
                            self.clients[index].eof_delivered = true;
                            self.engine.handle_eof(key);
                        }
                        break;
                    }
                    let n = w.up.bytes.len().min(limit);
                    let mut bytes: Vec<u8> = w.up.bytes.drain(..n).collect();
                    drop(w);
                    self.reading_from = Some(index);
                    self.clients[index].heard_at = self.now;
                    self.engine.handle_bytes(key, &mut bytes, self.now);
                    self.after_call()?;
                }
                self.after_call()?;
            }
            self.turn(&mut Rng::new(0))?;
            if self.settled() {
                return self.check_silence();
            }
            self.now += 100;
            self.times.push(self.now);
            if self.engine.is_finished(self.now) {
                self.finished = true;
            }
        }
        Ok(())
    }

    /// Nothing left to move: every close the server started has ended, the
    /// server has read what it may, and every reading client what it was sent.
    fn settled(&self) -> bool {
        self.clients.iter().all(|client| {
            let wire = client.wire.borrow();
            let live = !client.closed;
            let closing = client.tap.close.is_some() && live;
            let unread_up =
                live && !wire.up.bytes.is_empty() && self.engine.read_limit(client.key) > 0;
            let mut slot = [IoSlice::new(&[])];
            let queued = self.engine.transmit(client.key, &mut slot) > 0;
            let unread_down = live && client.reading && (queued || !wire.down.bytes.is_empty());
            !closing && !unread_up && !unread_down
        })
    }

    /// What a join that asked for history or recovery got: chats before
    /// `joined`, each once and in order, after the id it asked `since`, up to
    /// the `last` it was told; with `recovered`, every chat of that range
    /// (after `since`, or the newest it asked for).
    fn verify_catchup(&self, index: usize) -> Result<(), String> {
        let client = &self.clients[index];
        let name = &client.name;
        let (Some(asked), Some((last, recovered))) = (client.asked, client.joined) else {
            // Everything before the server's close frame, or all of an open
            // connection, was read: then `joined` must have come.
            let read_all = client.attentive
                && client.wire.borrow().down.bytes.is_empty()
                && (client.saw_close.is_some() || (!client.closed && !self.finished));
            if client.asked.is_some()
                && client.member_since.is_some()
                && read_all
                && !client.replayed.is_empty()
            {
                return Err(format!(
                    "{name} got chats {:?} before a `joined` that never came (member from {:?}, \
                     close seen {:?}, socket closed {})",
                    client.replayed, client.member_since, client.saw_close, client.closed
                ));
            }
            return Ok(());
        };
        // Membership shows here after the call that joined; chats the client
        // itself sent in that call may come between. (A join and a leave read
        // in one piece never show as membership at all.)
        if let Some(member_since) = client.member_since {
            let between = self
                .log
                .get(last as usize..member_since)
                .unwrap_or_default();
            if (member_since as u64) < last || between.iter().any(|c| c.sender != Some(index)) {
                return Err(format!(
                    "{name} was told the newest id is {last}, but joined after chat {member_since}"
                ));
            }
        }
        let replayed = &client.replayed;
        // Told it recovered, it was told of a room at least where it had been.
        if recovered && client.since.is_some_and(|seen| last < seen) {
            return Err(format!(
                "{name} had seen {:?}, was told it recovered at {last}",
                client.since
            ));
        }
        let first = client.since.map_or(1, |seen| seen + 1);
        if replayed.windows(2).any(|w| w[0] >= w[1])
            || replayed.iter().any(|&id| id < first || id > last)
        {
            return Err(format!(
                "{name} since {:?} got {replayed:?} before `joined` (last {last})",
                client.since
            ));
        }
        if recovered {
            // `since`: every chat after it. `history`: the K newest when the
            // join was read (K capped at `--history`), and every chat relayed
            // while they were sent: a run of at least K ending at `last`.
            let from = match (client.since, asked) {
                (Some(_), _) => first,
                (None, k) => {
                    let count = k.unwrap_or(HISTORY_KEPT).min(HISTORY_KEPT).min(last);
                    replayed
                        .first()
                        .copied()
                        .unwrap_or(last + 1)
                        .min(last + 1 - count)
                }
            };
            let want: Vec<u64> = (from..=last).collect();
            if *replayed != want {
                return Err(format!(
                    "{name} was told it recovered, got {replayed:?}, missed {want:?}"
                ));
            }
        }
        Ok(())
    }

    /// What every client saw, against the log of relayed chats.
    fn verify(&self) -> Result<Report, String> {
        let mut report = Report {
            clients: self.clients.len(),
            chats: self.log.len(),
            ..Report::default()
        };
        let stats = self.engine.stats();
        let mut slow = 0;
        for (index, client) in self.clients.iter().enumerate() {
            if client.tap.close.is_some() && !client.closed && !self.finished {
                return Err(format!("{}: the server's close never ended", client.name));
            }
            // Pings are answered while the server waits for the client's close:
            // once it has shut its side after its last byte, the pong to the
            // last ping before the client's close must have come.
            if let Peer::Pinger(pinger) = &client.peer
                && let Some(Some(last)) = pinger.closed_after
                && client.shut
                && client.tap.max_pong != Some(last)
            {
                return Err(format!(
                    "{}: last ping {last} before its close, last pong {:?}",
                    client.name, client.tap.max_pong
                ));
            }
            self.verify_catchup(index)?;
            let Some(since) = client.member_since else {
                if !client.received.is_empty() {
                    return Err(format!("{} got chats without joining", client.name));
                }
                continue;
            };
            let until = client.member_until.unwrap_or(self.log.len());
            let expected: Vec<&str> = self.log[since..until]
                .iter()
                .filter(|chat| chat.sender != Some(index))
                .map(|chat| chat.id.as_str())
                .collect();
            let got: Vec<&str> = client.received.iter().map(String::as_str).collect();
            if got.len() > expected.len() || got != expected[..got.len()] {
                return Err(format!(
                    "{} got {got:?}, which is not the start of {expected:?}",
                    client.name
                ));
            }
            if client.saw_close == Some(1008) {
                slow += 1;
            }
            // Everything before the server's close frame arrived before it, so a
            // client that read up to it, or is still connected, has them all; a
            // slow consumer's membership ended inside the call that relayed.
            let drained = client.wire.borrow().down.bytes.is_empty();
            let still_open = !client.closed && !self.finished && client.member_until.is_none();
            let must_have_all = client.checked
                && client.attentive
                && drained
                && (matches!(client.saw_close, Some(code) if code != 1008) || still_open);
            if must_have_all {
                if got.len() != expected.len() {
                    return Err(format!(
                        "{} got {} of {} chats: missing {:?} (member from log entry {since} to \
                         {:?}, close seen {:?}, socket closed {}, write side shut {}, {} bytes \
                         unread, output queued: {})",
                        client.name,
                        got.len(),
                        expected.len(),
                        &expected[got.len()..],
                        client.member_until,
                        client.saw_close,
                        client.closed,
                        client.shut,
                        client.wire.borrow().down.bytes.len(),
                        self.engine.transmit(client.key, &mut [IoSlice::new(&[])]) > 0,
                    ));
                }
                report.checked_exactly += 1;
            } else {
                report.checked_prefix += 1;
            }
        }
        if slow > stats.slow_consumer_closes {
            return Err(format!(
                "{slow} clients saw 1008, {} slow consumers counted",
                stats.slow_consumer_closes
            ));
        }
        self.verify_history_file()?;
        report.counters = stats.clone();
        report.shutdown = !self.listening;
        Ok(report)
    }

    /// What `--history-file` would keep of the room now passes the file's
    /// own checks (every chat the ring kept is one a client could have
    /// sent), and the room it brings back writes the very same file.
    fn verify_history_file(&self) -> Result<(), String> {
        let file = self.engine.snapshot();
        let c = &self.config;
        let room = snapshot::decode(&file, c.history, c.history_bytes, c.max_message_size)
            .map_err(|why| format!("the room's own history file is refused: {why}"))?;
        let options = Options {
            max_conns: 1,
            public_slots: 1,
            instance: None,
            epoch: "not this one".into(),
            restored: Some(room),
            admin_token: None,
        };
        let restored = Engine::new(self.config.clone(), options, self.now);
        if restored.snapshot() != file {
            return Err("the room brought back from its history file is not the one kept".into());
        }
        Ok(())
    }
}

/// What a tungstenite client does; returns what it did.
fn ws_act(
    ws: &mut WebSocket<ClientEnd>,
    name: &str,
    seq: &mut u32,
    choice: u64,
    catchup: Option<&serde_json::Value>,
    source: &mut impl Source,
) -> String {
    let chat = |ws: &mut WebSocket<ClientEnd>, seq: &mut u32, pad: usize| {
        *seq += 1;
        let text = format!("{name}:{seq} {}", "x".repeat(pad));
        let json = serde_json::json!({"type": "chat", "text": text, "ts": *seq});
        send(ws, Message::text(json.to_string()))
    };
    match choice {
        0..=14 => {
            let mut json = serde_json::json!({"type": "join", "user": name, "presence": choice.is_multiple_of(2)});
            if let (Some(object), Some(fields)) =
                (json.as_object_mut(), catchup.and_then(|c| c.as_object()))
            {
                object.extend(fields.clone());
            }
            send(ws, Message::text(json.to_string()));
            format!(
                "joins {}",
                catchup.map(|c| c.to_string()).unwrap_or_default()
            )
        }
        15..=57 => {
            let pad = source.below(1200).unwrap_or(0) as usize;
            chat(ws, seq, pad);
            format!("chats #{seq}")
        }
        58..=62 => {
            // Over the rate limit: the excess is dropped and counted.
            for _ in 0..15 {
                chat(ws, seq, 0);
            }
            format!("bursts to #{seq}")
        }
        63..=70 => {
            send(ws, Message::text(r#"{"type":"ping","ts":1}"#));
            "pings (JSON)".into()
        }
        71..=77 => {
            send(ws, Message::Ping(vec![1, 2, 3].into()));
            "pings".into()
        }
        78..=80 => {
            send(ws, Message::text(r#"{"type":"leave"}"#));
            "leaves".into()
        }
        81..=82 => {
            let _ = ws.close(None);
            let _ = ws.flush();
            "closes".into()
        }
        83..=84 => {
            send(ws, Message::text("x".repeat(5000)));
            "sends a message over the limit".into()
        }
        85..=90 => "stops reading".into(),
        91..=92 => "resumes reading".into(),
        93 => "goes silent".into(),
        _ => {
            send(ws, Message::text("{not json"));
            "sends malformed JSON".into()
        }
    }
}

fn send(ws: &mut WebSocket<ClientEnd>, message: Message) {
    // WouldBlock leaves the frame in tungstenite's buffer, sent by a later flush.
    let _ = ws.send(message);
}

/// What a hostile client sends; returns what it did.
fn raw_act(wire: &Rc<RefCell<Wire>>, name: &str, choice: u64, source: &mut impl Source) -> String {
    let mask = [0x11, 0x22, 0x33, 0x44];
    let (bytes, what): (Vec<u8>, &str) = match choice {
        0..=19 => {
            let join = format!(r#"{{"type":"join","user":"{name}"}}"#);
            (
                frame::client_frame(OpCode::Text, join.as_bytes(), mask),
                "joins",
            )
        }
        20..=39 => {
            let flood: Vec<u8> = (0..200u8)
                .flat_map(|i| frame::client_frame(OpCode::Ping, &[i], mask))
                .collect();
            (flood, "floods pings")
        }
        40..=49 => {
            // Unmasked: a protocol error.
            (
                frame::server_frame(OpCode::Text, &[b"hi"]),
                "sends an unmasked frame",
            )
        }
        50..=59 => (vec![0x81 | 0x40, 0x80, 0, 0, 0, 0], "sets RSV1"),
        60..=69 => (
            frame::client_frame(OpCode::Text, b"\xff\xfe", mask),
            "sends invalid UTF-8",
        ),
        70..=73 => {
            let mut header = vec![0x82, 0xFF];
            header.extend_from_slice(&(1u64 << 40).to_be_bytes());
            header.extend_from_slice(&mask);
            (header, "claims a huge frame")
        }
        74..=75 => (Vec::new(), "stops reading"),
        // (Raw clients resume reading at random too: see `read_client`.)
        76..=79 => {
            let flood: Vec<u8> = (0..200)
                .flat_map(|_| frame::client_frame(OpCode::Text, br#"{"type":"ping","ts":1}"#, mask))
                .collect();
            (flood, "floods JSON pings")
        }
        80..=89 => {
            let frame = frame::client_frame(OpCode::Text, b"{\"type\":\"ping\"}", mask);
            let cut = 1 + source.below(frame.len() as u64 - 1).unwrap_or(0) as usize;
            (frame[..cut].to_vec(), "sends half a frame")
        }
        _ => {
            let garbage: Vec<u8> = (0..source.below(200).unwrap_or(0))
                .map(|i| (i * 37 % 251) as u8)
                .collect();
            (garbage, "sends garbage")
        }
    };
    let mut wire = wire.borrow_mut();
    if !wire.up.fin && !wire.up.reset && !wire.server_closed {
        let n = bytes.len().min(wire.up.room());
        wire.up.bytes.extend(&bytes[..n]);
    }
    what.to_string()
}

/// What the pinger does; returns what it did.
fn pinger_act(
    pinger: &mut Pinger,
    wire: &Rc<RefCell<Wire>>,
    tap: &Tap,
    name: &str,
    choice: u64,
) -> String {
    if pinger.closed_after.is_some() {
        return "waits".into();
    }
    let mask = [0x21, 0x43, 0x65, 0x07];
    let (frame, what) = match choice {
        0..=14 => {
            let join = format!(r#"{{"type":"join","user":"{name}"}}"#);
            (
                frame::client_frame(OpCode::Text, join.as_bytes(), mask),
                "joins",
            )
        }
        15..=69 => {
            let id = pinger.sent.map_or(0, |n| n + 1);
            (
                frame::client_frame(OpCode::Ping, &id.to_be_bytes(), mask),
                "pings",
            )
        }
        70..=79 if !pinger.left => (
            frame::client_frame(OpCode::Text, br#"{"type":"leave"}"#, mask),
            "leaves",
        ),
        _ if tap.close.is_some() => (
            frame::client_frame(OpCode::Close, &1000u16.to_be_bytes(), mask),
            "answers the close",
        ),
        _ => return "waits".into(),
    };
    if !write_whole(wire, &frame) {
        return format!("cannot write ({what})");
    }
    match what {
        "pings" => pinger.sent = Some(pinger.sent.map_or(0, |n| n + 1)),
        "leaves" => pinger.left = true,
        "answers the close" => pinger.closed_after = Some(pinger.sent),
        _ => {}
    }
    format!("{what} ({:?})", pinger.sent)
}

/// Writes `bytes` into the client's pipe if all of them fit.
fn write_whole(wire: &Rc<RefCell<Wire>>, bytes: &[u8]) -> bool {
    let mut wire = wire.borrow_mut();
    let open = !wire.up.fin && !wire.up.reset && !wire.server_closed;
    if !open || wire.up.room() < bytes.len() {
        return false;
    }
    wire.up.bytes.extend(bytes);
    true
}
