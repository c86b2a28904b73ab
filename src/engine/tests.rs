//! The engine driven by hand, without sockets: bytes in, bytes and actions
//! out, time passed in. The deterministic simulation (`tests/sim`) drives it
//! with many clients at once; these are the single behaviours.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::cluster::{FromCluster, Origin, Stream};
use super::*;

/// The instance id the engine under test has in its cluster.
const INSTANCE: u64 = 0x1234;
use crate::websocket::frame::client_frame;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The admin API's token in these tests.
const TOKEN: &str = "engine-test-token-0123456789";
const UPGRADE: &[u8] =
    b"GET /ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A driver for tests: flushes every connection fully unless told it is blocked.
struct Driver {
    engine: Engine,
    now: u64,
    /// Bytes written to each connection's socket, not yet looked at.
    written: BTreeMap<usize, Vec<u8>>,
    /// Connections whose socket takes nothing (the peer stopped reading).
    blocked: Vec<usize>,
    shut: Vec<usize>,
    closed: Vec<usize>,
    resumed: Vec<usize>,
    listening: bool,
    /// Chats published: the JSON after the frame header, and the origin.
    published: Vec<(Vec<u8>, Origin)>,
    /// History reads asked for, not answered yet.
    reads: Vec<(usize, u32, Read)>,
}

impl Driver {
    fn new(args: &[&str]) -> Self {
        let config = Config::from_args(std::iter::once("test").chain(args.iter().copied()))
            .expect("valid flags");
        // An instance whose Redis publisher is up and subscription is not:
        // it orders its own chats, and publishes each.
        let mut engine = Engine::new(
            config,
            Options {
                max_conns: 100,
                public_slots: usize::MAX,
                instance: Some(INSTANCE),
                epoch: "test-epoch".into(),
                restored: None,
                admin_token: Some(crate::http::admin::fingerprint(TOKEN.as_bytes())),
            },
            0,
        );
        engine.handle_cluster(FromCluster::Publisher { up: true }, 0);
        Self {
            engine,
            now: 0,
            written: BTreeMap::new(),
            blocked: Vec::new(),
            shut: Vec::new(),
            closed: Vec::new(),
            resumed: Vec::new(),
            listening: true,
            published: Vec::new(),
            reads: Vec::new(),
        }
    }

    /// One turn's end: timers, flush, actions; then the invariants.
    fn turn(&mut self) {
        self.engine.handle_timeout(self.now);
        while let Some(key) = self.engine.next_dirty() {
            while !self.blocked.contains(&key) {
                let mut slices = [IoSlice::new(&[]); 64];
                let count = self.engine.transmit(key, &mut slices);
                if count == 0 {
                    break;
                }
                let out = self.written.entry(key).or_default();
                let n: usize = slices[..count].iter().map(|s| s.len()).sum();
                slices[..count]
                    .iter()
                    .for_each(|s| out.extend_from_slice(s));
                self.engine.handle_written(key, n);
            }
            self.engine.handle_flushed(key, self.now);
        }
        while let Some(action) = self.engine.poll_action() {
            match action {
                Action::ShutdownWrite(key) => self.shut.push(key),
                Action::Close(key) => self.closed.push(key),
                Action::StopListening => self.listening = false,
                Action::Publish { frame, origin } => {
                    let (_, len) = frame::parse_header(&frame, Role::Client)
                        .ok()
                        .flatten()
                        .expect("a published frame");
                    self.published.push((frame[len..].to_vec(), origin));
                }
                Action::ReadHistory { key, conn, read } => self.reads.push((key, conn, read)),
                Action::ResumeReading(key) => self.resumed.push(key),
                Action::ResumeAccepting | Action::Log(_) | Action::Moderate(_) => {}
            }
        }
        if let Err(broken) = self.engine.check_invariants() {
            panic!("invariant broken: {broken}");
        }
    }

    fn feed(&mut self, key: usize, bytes: &[u8]) {
        let mut bytes = bytes.to_vec();
        self.engine.handle_bytes(key, &mut bytes, self.now);
        self.turn();
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.turn();
    }

    /// A connection upgraded to WebSocket, its 101 read.
    fn open(&mut self) -> usize {
        let key = self.engine.handle_accept(LOCAL, self.now);
        self.feed(key, UPGRADE);
        let head = self.written.remove(&key).unwrap_or_default();
        assert!(head.starts_with(b"HTTP/1.1 101 "));
        key
    }

    fn text(&mut self, key: usize, json: &str) {
        self.feed(
            key,
            &client_frame(OpCode::Text, json.as_bytes(), [1, 2, 3, 4]),
        );
    }

    fn joined(&mut self, name: &str) -> usize {
        let key = self.open();
        self.text(key, &format!(r#"{{"type":"join","user":"{name}"}}"#));
        assert!(self.engine.is_member(key));
        key
    }

    /// The frames written to `key` since last asked: (first byte, payload).
    fn frames(&mut self, key: usize) -> Vec<(u8, Vec<u8>)> {
        let bytes = self.written.remove(&key).unwrap_or_default();
        let mut frames = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let (header, len) = frame::parse_header(&bytes[at..], Role::Client)
                .expect("a valid server frame")
                .expect("a whole frame");
            let end = at + len + header.payload_len as usize;
            frames.push((bytes[at], bytes[at + len..end].to_vec()));
            at = end;
        }
        frames
    }

    fn texts(&mut self, key: usize) -> Vec<serde_json::Value> {
        self.frames(key)
            .into_iter()
            .filter(|(first, _)| *first == 0x81)
            .map(|(_, payload)| serde_json::from_slice(&payload).expect("JSON"))
            .collect()
    }
}

fn close_code(frame: &(u8, Vec<u8>)) -> Option<u16> {
    (frame.0 == 0x88).then(|| u16::from_be_bytes([frame.1[0], frame.1[1]]))
}

#[test]
fn a_chat_reaches_every_other_member_stamped_once() {
    let mut d = Driver::new(&[]);
    let (a, b, c) = (d.joined("a"), d.joined("b"), d.joined("c"));
    let lurker = d.open();
    d.text(a, r#"{"type":"chat","user":"mallory","text":"hi","ts":1}"#);
    for key in [b, c] {
        let got = d.texts(key);
        assert_eq!(
            got,
            [
                serde_json::json!({"type":"chat","room":"public","id":1,"user":"a","text":"hi","ts":1})
            ]
        );
    }
    assert!(d.texts(a).is_empty() && d.texts(lurker).is_empty());
    assert_eq!(
        (d.engine.stats().chats_relayed, d.engine.stats().deliveries),
        (1, 2)
    );
    assert_eq!(d.published.len(), 1);
}

#[test]
fn pongs_to_an_unread_ping_flood_replace_each_other() {
    let mut d = Driver::new(&[]);
    let key = d.open();
    // Pings the socket can take are each answered, in order.
    let pings: Vec<u8> = (0..10u32)
        .flat_map(|i| client_frame(OpCode::Ping, &i.to_be_bytes(), [9; 4]))
        .collect();
    d.feed(key, &pings);
    let pongs: Vec<_> = (0..10u32)
        .map(|i| (0x8A, i.to_be_bytes().to_vec()))
        .collect();
    assert_eq!(d.frames(key), pongs);
    // The peer stops reading: its socket refuses the next pong...
    d.blocked.push(key);
    d.feed(key, &client_frame(OpCode::Ping, b"first", [9; 4]));
    let before = d.engine.memory(key);
    // ...and a flood after it costs nothing more: the latest pong replaces the waiting one.
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        flood.extend(client_frame(OpCode::Ping, &i.to_be_bytes(), [9; 4]));
    }
    for chunk in flood.chunks(1000) {
        d.feed(key, chunk);
    }
    assert!(
        d.engine.memory(key) <= before + 4,
        "{}",
        d.engine.memory(key)
    );
    d.blocked.clear();
    d.engine.handle_writable(key);
    d.turn();
    assert_eq!(d.frames(key), [(0x8A, 9_999u32.to_be_bytes().to_vec())]);
}

#[test]
fn a_json_ping_flood_is_held_off_by_backpressure() {
    let mut d = Driver::new(&["--max-backlog", "16384"]);
    let key = d.open();
    d.blocked.push(key);
    let ping = client_frame(OpCode::Text, br#"{"type":"ping","ts":1}"#, [1, 1, 1, 1]);
    let mut stream = ping.iter().copied().cycle();
    let mut fed = 0;
    let mut rounds = 0;
    while d.engine.read_limit(key) > 0 {
        // The driver reads at most what the engine allows.
        let flood: Vec<u8> = stream.by_ref().take(d.engine.read_limit(key)).collect();
        d.feed(key, &flood);
        fed += flood.len();
        rounds += 1;
        assert!(rounds < 1000, "reading never paused");
    }
    assert!(d.engine.memory(key) <= d.engine.memory_bound());
    assert_eq!(d.engine.stats().read_pauses, 1);
    // Once the replies drain, reading resumes, and every ping got its pong.
    d.blocked.clear();
    d.engine.handle_writable(key);
    d.turn();
    assert_eq!(d.resumed, [key]);
    assert!(d.engine.read_limit(key) > 0);
    let pongs = d.texts(key);
    assert_eq!(pongs.len(), fed / ping.len());
    assert!(
        pongs
            .iter()
            .all(|p| *p == serde_json::json!({"type":"pong","ts":1}))
    );
}

#[test]
fn while_closing_pings_are_answered_and_the_peers_close_ends_it() {
    let mut d = Driver::new(&[]);
    let key = d.joined("leaving");
    d.text(key, r#"{"type":"leave"}"#);
    let frames = d.frames(key);
    assert_eq!(
        frames.iter().filter_map(close_code).collect::<Vec<_>>(),
        [1000]
    );
    assert!(!d.engine.is_member(key));
    d.feed(key, &client_frame(OpCode::Ping, b"still?", [5, 5, 5, 5]));
    assert_eq!(d.frames(key), [(0x8A, b"still?".to_vec())]);
    d.feed(
        key,
        &client_frame(OpCode::Close, &1000u16.to_be_bytes(), [5, 5, 5, 5]),
    );
    // Nothing more is sent; the write side is shut after our last byte.
    assert!(d.frames(key).is_empty());
    assert_eq!(d.shut, [key]);
    d.engine.handle_eof(key);
    d.turn();
    assert_eq!(d.closed, [key]);
}

#[test]
fn a_slow_consumer_is_closed_and_leaves_the_room() {
    let mut d = Driver::new(&["--max-backlog", "16384"]);
    let talker = d.joined("talker");
    let stalled = d.joined("stalled");
    let calm = d.joined("calm");
    d.blocked.push(stalled);
    let text = "x".repeat(3000);
    for i in 0..10 {
        d.now += 100;
        d.text(
            talker,
            &format!(r#"{{"type":"chat","text":"{text}","ts":{i}}}"#),
        );
    }
    assert_eq!(d.texts(calm).len(), 10);
    assert_eq!(d.engine.stats().slow_consumer_closes, 1);
    assert!(!d.engine.is_member(stalled));
    // It never answers: dropped when the close wait ends, and counted.
    d.advance(CLOSE_WAIT_MS);
    assert_eq!(d.closed, [stalled]);
    assert_eq!(d.engine.stats().close_timeouts, 1);
}

#[test]
fn a_silent_client_is_pinged_then_closed_and_dropped() {
    let mut d = Driver::new(&["--ping-interval", "1", "--pong-timeout", "3"]);
    let key = d.joined("mute");
    d.advance(1_000);
    assert_eq!(d.frames(key), [(0x89, vec![])]);
    d.advance(2_000);
    let frames = d.frames(key);
    assert_eq!(
        frames.iter().filter_map(close_code).collect::<Vec<_>>(),
        [1001]
    );
    assert_eq!(d.closed, [key]);
    assert_eq!(d.engine.stats().keepalive_timeouts, 1);
}

#[test]
fn shutdown_stops_listening_closes_everyone_and_ends() {
    let mut d = Driver::new(&[]);
    let a = d.joined("a");
    let b = d.joined("b");
    let half = d.engine.handle_accept(LOCAL, d.now);
    d.engine.handle_shutdown(d.now);
    d.turn();
    assert!(!d.listening && !d.engine.accepting(false) && !d.engine.accepting(true));
    assert_eq!(d.closed, [half]);
    for key in [a, b] {
        let codes: Vec<u16> = d.frames(key).iter().filter_map(close_code).collect();
        assert_eq!(codes, [1001]);
    }
    assert_eq!(d.engine.stats().closed_by_shutdown, 2);
    d.feed(
        a,
        &client_frame(OpCode::Close, &1001u16.to_be_bytes(), [1; 4]),
    );
    d.engine.handle_eof(a);
    d.turn();
    assert!(!d.engine.is_finished(d.now));
    d.advance(SHUTDOWN_GRACE_MS);
    assert!(d.engine.is_finished(d.now));
}

#[test]
fn a_key_is_reused_only_after_the_driver_takes_its_close() {
    let mut d = Driver::new(&[]);
    let key = d.open();
    d.feed(key, &client_frame(OpCode::Binary, &[0; 4], [0; 4])[..2]);
    d.engine.handle_io_error(key);
    // Not yet polled: the slot is still taken.
    let other = d.engine.handle_accept(LOCAL, d.now);
    assert_ne!(other, key);
    assert_eq!(d.engine.poll_action(), Some(Action::Close(key)));
    assert_eq!(d.engine.handle_accept(LOCAL, d.now), key);
}

#[test]
fn a_request_head_is_read_no_further_than_its_limit() {
    let mut d = Driver::new(&[]);
    let key = d.engine.handle_accept(LOCAL, d.now);
    assert_eq!(d.engine.read_limit(key), MAX_HEAD + 1);
    d.feed(key, b"GET /ws HTTP/1.1\r\nX: ");
    let limit = d.engine.read_limit(key);
    d.feed(key, &vec![b'a'; limit]);
    let answer = d.written.remove(&key).unwrap_or_default();
    assert!(answer.starts_with(b"HTTP/1.1 431 "));
    assert_eq!(d.engine.stats().http_head_too_large, 1);
}

#[test]
fn a_close_is_counted_once_under_the_cause_that_sent_it() {
    let mut d = Driver::new(&["--max-backlog", "16384"]);
    let key = d.joined("leaving");
    d.text(key, r#"{"type":"leave"}"#);
    // While we wait for its close, the peer breaks the protocol: nothing more
    // is sent, and nothing more is counted.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&(1u64 << 40).to_be_bytes());
    huge.extend_from_slice(&[1; 4]);
    d.feed(key, &huge);
    let codes: Vec<u16> = d.frames(key).iter().filter_map(close_code).collect();
    assert_eq!(codes, [1000]);
    let stats = d.engine.stats();
    assert_eq!(
        (stats.closed_by_leave, stats.closed_message_too_big),
        (1, 0)
    );
}

#[test]
fn a_slow_consumers_close_is_not_a_read_pause() {
    let mut d = Driver::new(&["--max-backlog", "16384"]);
    let talker = d.joined("talker");
    let stalled = d.joined("stalled");
    d.blocked.push(stalled);
    let text = "x".repeat(3000);
    for i in 0..10 {
        d.text(
            talker,
            &format!(r#"{{"type":"chat","text":"{text}","ts":{i}}}"#),
        );
    }
    let stats = d.engine.stats();
    assert_eq!((stats.slow_consumer_closes, stats.read_pauses), (1, 0));
}

#[test]
fn stale_timer_entries_do_not_pile_up_with_long_timeouts() {
    let mut d = Driver::new(&[
        "--ping-interval",
        "86000",
        "--pong-timeout",
        "86400",
        "--handshake-timeout",
        "86400",
    ]);
    // 20,000 connections come and go; each leaves entries due a day later.
    for _ in 0..20_000 {
        let key = d.open();
        d.engine.handle_eof(key);
        d.turn();
    }
    let live = d.engine.connections();
    assert!(live == 0, "{live} connections left");
    assert!(
        d.engine.timers.len() <= STALE_TIMERS_SWEPT_AT + 2,
        "{}",
        d.engine.timers.len()
    );
}

// ---- With Redis ordering the room ------------------------------------

impl Driver {
    /// Redis orders the room: the subscription is up at `last` in `epoch`.
    fn redis_up(&mut self, epoch: &str, last: u64) {
        let up = FromCluster::Up {
            epoch: epoch.into(),
            last,
        };
        self.engine.handle_cluster(up, self.now);
        self.turn();
    }

    /// The stream's answer to the read `key` asked for: Redis at `last` in
    /// epoch "E", with chats `ids` (from another instance, their text the id
    /// and `pad` spaces); `cut`: the read's budget ended it.
    fn answer_read(&mut self, key: usize, last: u64, ids: &[u64], pad: usize, cut: bool) {
        let at = self.reads.iter().position(|r| r.0 == key).expect("a read");
        let (_, conn, read) = self.reads.remove(at);
        let chat = |id: &u64| {
            let text = format!("{id}{}", " ".repeat(pad));
            let json = format!(r#"{{"type":"chat","room":"public","user":"x","text":"{text}"}}"#);
            (*id, json.into_bytes())
        };
        let stream = Stream {
            epoch: "E".into(),
            last,
            chats: ids.iter().map(chat).collect(),
            cut,
        };
        let answer = FromCluster::History {
            key,
            conn,
            read,
            stream: Some(stream),
        };
        self.engine.handle_cluster(answer, self.now);
        self.turn();
    }

    /// Chat `id` arrives from Redis, from `origin`.
    fn deliver_from_redis(&mut self, id: u64, origin: Origin, user: &str, text: &str) {
        let json = format!(r#"{{"type":"chat","room":"public","user":"{user}","text":"{text}"}}"#);
        let chat = FromCluster::Chat {
            id,
            origin,
            json: json.into_bytes(),
        };
        self.engine.handle_cluster(chat, self.now);
        self.turn();
    }
}

/// Another instance's connection.
const ELSEWHERE: Origin = Origin {
    instance: 0x9999,
    key: 1,
    conn: 1,
    seq: 1,
    relayed_here: false,
};

fn ids_and_types(got: &[serde_json::Value]) -> Vec<String> {
    got.iter()
        .map(|m| match m["type"].as_str() {
            Some("chat") => format!("chat {}", m["id"]),
            Some("joined") => format!("joined {} {}", m["last"], m["recovered"]),
            other => format!("{other:?}"),
        })
        .collect()
}

#[test]
fn with_redis_ordering_a_chat_is_relayed_when_it_comes_back() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 40);
    let (a, b) = (d.joined("a"), d.joined("b"));
    d.text(a, r#"{"type":"chat","text":"hi"}"#);
    // Published, not relayed: Redis gives it its place.
    assert!(d.texts(b).is_empty());
    let (json, origin) = d.published.pop().expect("published");
    assert!(!origin.relayed_here);
    let back = FromCluster::Chat {
        id: 41,
        origin,
        json,
    };
    d.engine.handle_cluster(back, d.now);
    d.turn();
    assert_eq!(
        d.texts(b),
        [serde_json::json!({"type":"chat","room":"public","id":41,"user":"a","text":"hi"})]
    );
    // Not back to its sender; a repeat of an id is dropped.
    assert!(d.texts(a).is_empty());
    d.deliver_from_redis(41, ELSEWHERE, "x", "again");
    assert!(d.texts(b).is_empty());
    assert_eq!(d.engine.stats().backplane_duplicates, 1);
}

#[test]
fn a_recovery_older_than_the_ring_is_read_from_the_stream_and_joined_to_it() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 10);
    let watcher = d.joined("w");
    let key = d.open();
    d.text(
        key,
        r#"{"type":"join","user":"back","since":7,"epoch":"E"}"#,
    );
    // The ring starts at Redis's 10: 8..=10 are read from the stream.
    assert_eq!(
        d.reads.last().map(|r| r.2),
        Some(Read { after: 7, upto: 10 })
    );
    // While the read is out, live chats go into the ring, not to the joiner.
    d.deliver_from_redis(11, ELSEWHERE, "x", "eleven");
    d.deliver_from_redis(12, ELSEWHERE, "x", "twelve");
    assert_eq!(d.texts(watcher).len(), 2);
    assert!(d.texts(key).is_empty());
    d.answer_read(key, 12, &[8, 9, 10], 0, false);
    assert_eq!(
        ids_and_types(&d.texts(key)),
        [
            "chat 8",
            "chat 9",
            "chat 10",
            "chat 11",
            "chat 12",
            "joined 12 true"
        ]
    );
    // A member now: the next chat comes live, once.
    d.deliver_from_redis(13, ELSEWHERE, "x", "thirteen");
    assert_eq!(ids_and_types(&d.texts(key)), ["chat 13"]);
    assert_eq!(d.engine.stats().recoveries_complete, 1);
}

#[test]
fn a_cluster_instance_answers_from_its_ring_when_it_holds_the_range() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 0);
    for id in 1..=5 {
        d.deliver_from_redis(id, ELSEWHERE, "x", "chat");
    }
    let key = d.open();
    d.text(
        key,
        r#"{"type":"join","user":"back","since":2,"epoch":"E"}"#,
    );
    assert!(d.reads.is_empty());
    assert_eq!(
        ids_and_types(&d.texts(key)),
        ["chat 3", "chat 4", "chat 5", "joined 5 true"]
    );
    let newcomer = d.open();
    d.text(newcomer, r#"{"type":"join","user":"new","history":2}"#);
    assert!(d.reads.is_empty());
    assert_eq!(
        ids_and_types(&d.texts(newcomer)),
        ["chat 4", "chat 5", "joined 5 true"]
    );
}

#[test]
fn a_recovery_ahead_of_the_subscription_waits_for_it() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 10);
    let key = d.open();
    // It saw 12 on another instance; this one has relayed up to 10.
    d.text(
        key,
        r#"{"type":"join","user":"back","since":12,"epoch":"E"}"#,
    );
    assert!(d.reads.is_empty());
    d.deliver_from_redis(11, ELSEWHERE, "x", "eleven");
    assert!(d.texts(key).is_empty());
    d.deliver_from_redis(12, ELSEWHERE, "x", "twelve");
    d.deliver_from_redis(13, ELSEWHERE, "x", "thirteen");
    assert_eq!(ids_and_types(&d.texts(key)), ["joined 12 true", "chat 13"]);
    // One whose subscription never gets there ends where the room is, incomplete.
    let late = d.open();
    d.text(
        late,
        r#"{"type":"join","user":"late","since":99,"epoch":"E"}"#,
    );
    d.advance(catch_up::WAIT_MS + 100);
    assert_eq!(ids_and_types(&d.texts(late)), ["joined 13 false"]);
}

#[test]
fn a_read_that_never_answers_is_a_gap_up_to_the_ring() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 5);
    let _a = d.joined("a");
    let key = d.open();
    d.text(
        key,
        r#"{"type":"join","user":"late","since":2,"epoch":"E"}"#,
    );
    assert_eq!(d.reads.len(), 1);
    d.deliver_from_redis(6, ELSEWHERE, "x", "six");
    assert!(d.texts(key).is_empty());
    d.advance(catch_up::WAIT_MS + 100);
    assert_eq!(ids_and_types(&d.texts(key)), ["chat 6", "joined 6 false"]);
    // The answer that comes too late changes nothing.
    d.answer_read(key, 6, &[3, 4, 5], 0, false);
    assert!(d.texts(key).is_empty());
    assert_eq!(d.engine.stats().history_fallbacks, 1);
}

#[test]
fn reads_cut_by_their_budget_go_on_as_the_joiner_drains() {
    let mut d = Driver::new(&["--max-backlog", "16384"]);
    d.redis_up("E", 30);
    let key = d.open();
    d.blocked.push(key);
    d.text(key, r#"{"type":"join","user":"new","history":30}"#);
    assert_eq!(
        d.reads.last().map(|r| r.2),
        Some(Read { after: 0, upto: 30 })
    );
    // The first read's budget (half the backlog) ended it at 10: the next
    // waits for the joiner's queue to drain.
    d.answer_read(key, 30, &(1..=10).collect::<Vec<_>>(), 900, true);
    assert!(d.engine.memory(key) <= d.engine.memory_bound());
    assert!(d.reads.is_empty());
    d.blocked.clear();
    d.engine.handle_writable(key);
    d.turn();
    assert_eq!(
        d.reads.last().map(|r| r.2),
        Some(Read {
            after: 10,
            upto: 30
        })
    );
    // The stream lost 11 and 12 (trimmed): a gap, and the rest.
    d.answer_read(key, 30, &(13..=30).collect::<Vec<_>>(), 0, false);
    let got = ids_and_types(&d.texts(key));
    let want: Vec<String> = (1..=10)
        .chain(13..=30)
        .map(|id| format!("chat {id}"))
        .chain(["joined 30 false".to_string()])
        .collect();
    assert_eq!(got, want);
}

#[test]
fn without_redis_the_instance_orders_its_own_chats_under_its_own_epoch() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 5);
    let (a, b) = (d.joined("a"), d.joined("b"));
    d.engine.handle_cluster(FromCluster::Down, d.now);
    d.turn();
    // Members are told: ids from here are of this instance's epoch.
    let told = d.texts(b);
    assert_eq!(ids_and_types(&told), ["joined 5 false"]);
    assert_ne!(told[0]["epoch"], "E");
    assert_eq!(ids_and_types(&d.texts(a)), ["joined 5 false"]);
    // Relayed at once with the next id here, and still published (marked so).
    d.text(a, r#"{"type":"chat","text":"alone"}"#);
    assert_eq!(ids_and_types(&d.texts(b)), ["chat 6"]);
    let (json, origin) = d.published.pop().expect("published");
    assert!(origin.relayed_here);
    // When it comes back through Redis it is not relayed here again.
    let back = FromCluster::Chat {
        id: 6,
        origin,
        json,
    };
    d.engine.handle_cluster(back, d.now);
    d.turn();
    assert!(d.texts(b).is_empty());
    // A join asks the ring, not Redis; the epoch is this instance's own.
    let key = d.open();
    d.text(key, r#"{"type":"join","user":"c","history":5}"#);
    assert!(d.reads.is_empty());
    let got = d.texts(key);
    assert_ne!(got.last().expect("joined")["epoch"], "E");
    // A chat the publisher could not send is relayed here, not to its sender.
    d.engine
        .handle_cluster(FromCluster::Publisher { up: false }, d.now);
    let unpublished = FromCluster::Unpublished {
        origin: Origin {
            instance: INSTANCE,
            key: b as u32,
            conn: 1,
            seq: 1,
            relayed_here: false,
        },
        json: br#"{"type":"chat","room":"public","user":"b","text":"late"}"#.to_vec(),
        maybe_published: false,
    };
    d.engine.handle_cluster(unpublished, d.now);
    d.turn();
    assert_eq!(ids_and_types(&d.texts(a)), ["chat 7"]);
}

#[test]
fn a_replay_past_half_the_backlog_is_fed_as_the_joiner_drains() {
    let mut d = Driver::new(&["--max-backlog", "16384"]);
    let talker = d.joined("talker");
    let say = |d: &mut Driver, i: u32| {
        d.now += 100;
        let text = "x".repeat(1000);
        d.text(
            talker,
            &format!(r#"{{"type":"chat","text":"{text}","ts":{i}}}"#),
        );
    };
    // 40 chats of 1 KB: more than the whole backlog of a client.
    for i in 0..40 {
        say(&mut d, i);
    }
    let key = d.open();
    d.blocked.push(key);
    d.text(
        key,
        r#"{"type":"join","user":"back","since":0,"epoch":"test-epoch"}"#,
    );
    let queued = |d: &Driver| d.engine.memory(key) - std::mem::size_of::<Connection>();
    let most = 16384 / 2 + 1100 + FRAME_COST;
    assert!(queued(&d) <= most, "{}", queued(&d));
    assert!(!d.engine.is_member(key) && d.engine.is_joined(key));
    // The room goes on while it is stalled: into the ring, not its queue.
    for i in 40..45 {
        say(&mut d, i);
    }
    assert!(queued(&d) <= most, "{}", queued(&d));
    assert_eq!(d.engine.stats().slow_consumer_closes, 0);
    // It reads again: everything, each once, then `joined`, then live.
    d.blocked.clear();
    d.engine.handle_writable(key);
    d.turn();
    let want: Vec<String> = (1..=45)
        .map(|id| format!("chat {id}"))
        .chain(["joined 45 true".to_string()])
        .collect();
    assert_eq!(ids_and_types(&d.texts(key)), want);
    say(&mut d, 45);
    assert_eq!(ids_and_types(&d.texts(key)), ["chat 46"]);
    assert_eq!(d.engine.stats().recoveries_complete, 1);
}

#[test]
fn a_member_gone_without_a_close_is_out_of_the_next_relay() {
    for reset in [false, true] {
        let mut d = Driver::new(&[]);
        let (a, gone, c) = (d.joined("a"), d.joined("gone"), d.joined("c"));
        match reset {
            false => d.engine.handle_eof(gone),
            true => d.engine.handle_io_error(gone),
        }
        d.text(a, r#"{"type":"chat","text":"after"}"#);
        assert_eq!(ids_and_types(&d.texts(c)), ["chat 1"]);
        assert!(d.texts(gone).is_empty());
        assert_eq!(d.closed, [gone], "reset {reset}");
        let stats = d.engine.stats();
        assert_eq!((stats.deliveries, stats.dropped_without_close), (1, 1));
        assert!(!d.engine.is_member(gone));
    }
}

#[test]
fn one_read_can_hold_the_upgrade_a_join_and_a_chat() {
    let mut d = Driver::new(&[]);
    let member = d.joined("member");
    let key = d.engine.handle_accept(LOCAL, d.now);
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(client_frame(
        OpCode::Text,
        br#"{"type":"join","user":"eager","history":5}"#,
        [7; 4],
    ));
    bytes.extend(client_frame(
        OpCode::Text,
        br#"{"type":"chat","text":"first"}"#,
        [7; 4],
    ));
    d.feed(key, &bytes);
    let written = d.written.remove(&key).unwrap_or_default();
    let head_end = written
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(written.starts_with(b"HTTP/1.1 101 "));
    d.written.insert(key, written[head_end..].to_vec());
    // Its catch-up (nothing yet), then nothing of its own chat back.
    assert_eq!(ids_and_types(&d.texts(key)), ["joined 0 true"]);
    let got = d.texts(member);
    assert_eq!(ids_and_types(&got), ["chat 1"]);
    assert_eq!(
        (&got[0]["user"], &got[0]["text"]),
        (&"eager".into(), &"first".into())
    );
    assert!(d.engine.is_member(key));
}

#[test]
fn a_since_at_the_end_of_the_ids_waits_and_ends_incomplete() {
    let mut d = Driver::new(&[]);
    d.redis_up("E", 3);
    let key = d.open();
    d.text(
        key,
        r#"{"type":"join","user":"far","since":18446744073709551615,"epoch":"E"}"#,
    );
    assert!(d.reads.is_empty());
    d.advance(catch_up::WAIT_MS + 100);
    assert_eq!(ids_and_types(&d.texts(key)), ["joined 3 false"]);
    assert!(d.engine.is_member(key));
}

#[test]
fn running_out_of_descriptors_pauses_that_listener_only() {
    let mut d = Driver::new(&[]);
    d.engine.handle_accept_error(false, d.now);
    assert!(!d.engine.accepting(false) && d.engine.accepting(true));
    assert_eq!(d.engine.next_deadline(), Some(d.now + ACCEPT_PAUSE_MS));
    d.engine.handle_timeout(d.now + ACCEPT_PAUSE_MS);
    assert_eq!(d.engine.poll_action(), Some(Action::ResumeAccepting));
    assert!(d.engine.accepting(false));
    assert_eq!(d.engine.stats().accept_pauses, 1);
}

#[test]
fn the_private_listener_and_refusals_have_slots_of_their_own() {
    let config = Config::from_args(["test"]).expect("valid flags");
    let mut engine = Engine::new(
        config,
        Options {
            max_conns: 2,
            public_slots: 2 + REFUSAL_SLOTS,
            instance: None,
            epoch: "e".into(),
            restored: None,
            admin_token: None,
        },
        0,
    );
    let public: Vec<usize> = (0..2 + REFUSAL_SLOTS)
        .map(|_| engine.handle_accept(LOCAL, 0))
        .collect();
    // The public listener is out of slots; the private one is not.
    assert!(!engine.accepting(false) && engine.accepting(true));
    let private: Vec<usize> = (0..PRIVATE_SLOTS)
        .map(|_| engine.handle_accept_private(LOCAL, 0))
        .collect();
    assert!(!engine.accepting(true));
    assert_eq!(engine.stats().refused_max_conns, REFUSAL_SLOTS as u64);
    // Past half the refusal slots, a refusal is closed once its answer is written.
    engine.handle_flushed(public[2 + REFUSAL_SLOTS - 1], 0);
    let mut closed = Vec::new();
    while let Some(action) = engine.poll_action() {
        closed.push(action);
    }
    assert_eq!(
        closed,
        [
            Action::Close(public[2 + REFUSAL_SLOTS - 1]),
            Action::ResumeAccepting
        ]
    );
    assert!(engine.accepting(false));
    engine.handle_io_error(private[0]);
    assert_eq!(engine.poll_action(), Some(Action::Close(private[0])));
    assert_eq!(engine.poll_action(), Some(Action::ResumeAccepting));
    assert!(engine.accepting(true));
}

impl Driver {
    /// An admin request on a private connection, fed `piece` bytes at a
    /// time: the whole answer.
    fn admin(&mut self, method: &str, path: &str, token: &str, body: &str, piece: usize) -> String {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let key = self.engine.handle_accept_private(LOCAL, self.now);
        for piece in request.as_bytes().chunks(piece) {
            self.feed(key, piece);
        }
        String::from_utf8(self.written.remove(&key).unwrap_or_default()).expect("an HTTP answer")
    }
}

#[test]
fn an_admin_request_is_read_in_pieces_and_a_kick_closes_with_4001() {
    let mut d = Driver::new(&["--private-address", "127.0.0.1:0"]);
    let (a, b) = (d.joined("a"), d.joined("b"));
    let kick = r#"{"user":"b","reason":"spam"}"#;
    // Not on the public listener; not without the token.
    let key = d.engine.handle_accept(LOCAL, d.now);
    d.feed(
        key,
        format!("GET /admin/members HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").as_bytes(),
    );
    assert!(
        d.written
            .remove(&key)
            .unwrap_or_default()
            .starts_with(b"HTTP/1.1 404 ")
    );
    assert!(
        d.admin("POST", "/admin/kick", "guess-guess-guess", kick, 1000)
            .starts_with("HTTP/1.1 401 ")
    );
    assert!(d.engine.is_member(b));
    for piece in [1, 7, 1000] {
        let answer = d.admin("GET", "/admin/members", TOKEN, "", piece);
        assert!(
            answer.starts_with("HTTP/1.1 200 ") && answer.contains(r#""count":2"#),
            "{answer}"
        );
    }
    let answer = d.admin("POST", "/admin/kick", TOKEN, kick, 5);
    assert!(
        answer.ends_with("{\"kicked\":1,\"cluster\":\"queued for every instance\"}\n"),
        "{answer}"
    );
    let frames = d.frames(b);
    let close = frames.last().expect("a close frame");
    assert_eq!(close_code(close), Some(4001));
    assert_eq!(&close.1[2..], b"kicked by the operator: spam");
    assert!(!d.engine.is_member(b) && d.engine.is_member(a));
    let stats = d.engine.stats();
    assert_eq!(
        (
            stats.admin_unauthorized,
            stats.admin_requests,
            stats.admin_kicks,
            stats.closed_by_kick
        ),
        (1, 4, 1, 1)
    );
}

#[test]
fn a_mute_drops_chats_until_it_ends_and_a_ban_closes_and_refuses() {
    let mut d = Driver::new(&["--private-address", "127.0.0.1:0"]);
    let (a, b) = (d.joined("a"), d.joined("b"));
    let answer = d.admin(
        "POST",
        "/admin/mute",
        TOKEN,
        r#"{"user":"b","seconds":2}"#,
        1000,
    );
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    d.text(b, r#"{"type":"chat","text":"spam"}"#);
    assert!(d.texts(a).is_empty());
    assert!(d.published.is_empty());
    d.advance(2_000);
    d.text(b, r#"{"type":"chat","text":"free"}"#);
    assert_eq!(d.texts(a)[0]["text"], "free");
    assert_eq!(d.engine.stats().muted_dropped, 1);
    let ban = r#"{"address":"127.0.0.0/8","seconds":5,"reason":"flood"}"#;
    assert!(
        d.admin("POST", "/admin/ban", TOKEN, ban, 1000)
            .contains(r#""closed":2"#)
    );
    for key in [a, b] {
        assert_eq!(d.frames(key).last().and_then(close_code), Some(4003));
    }
    let key = d.engine.handle_accept(LOCAL, d.now);
    d.feed(key, UPGRADE);
    let answer = String::from_utf8(d.written.remove(&key).unwrap_or_default()).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 403 ") && answer.ends_with("for 5 more seconds: flood\n"),
        "{answer}"
    );
    d.advance(5_000);
    d.open();
}
/// What every connection costs before any buffer: kept from growing
/// (a client address and a join time took the padding, not new bytes).
#[test]
fn a_connection_is_184_bytes() {
    assert_eq!(std::mem::size_of::<Connection>(), 184);
}
