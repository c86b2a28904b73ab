//! Several instances sharing the room through a real `redis-server` (on a free
//! loopback port, started and stopped here): one order and one set of ids
//! from Redis, recovery on any instance from its stream, what an outage or
//! a Redis that lost its data does, and what a stranger publishing on the
//! channel can and cannot do. Runs with `--features redis` (`tests/redis.sh`
//! installs redis-server and runs it).
#![cfg(feature = "redis")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{
    ADMIN_TOKEN, Client, PATIENCE, ServerProcess, TokenFile, admin_call, admin_ok, http_get,
    join_with, on_purpose, server_binary,
};
use serde_json::{Value, json};

/// A redis-server of our own, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().unwrap().port()
}

/// Waits (bounded) until something listens on `port`.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Redis {
    /// Starts on `port`, or on a free one.
    fn start(port: Option<u16>) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts with extra flags; `port` is the plain-text port, or (with
    /// `--port 0` in `flags`) the one to wait for.
    fn start_with(port: Option<u16>, flags: &[&str]) -> Self {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (tests/redis.sh installs it)");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// Publishes `payload` on the room's channel, as any Redis client could
    /// (RESP written by hand, not the server's `redis` crate); returns how
    /// many subscribers got it.
    fn publish(&self, payload: &[u8]) -> i64 {
        let reply = self.command(&[b"PUBLISH", b"websocket-public-chat:public", payload]);
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{reply:?}"))
    }

    /// Sends one command; returns the first line of the reply.
    fn command(&self, args: &[&[u8]]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut command = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            command.extend_from_slice(arg);
            command.extend_from_slice(b"\r\n");
        }
        stream.write_all(&command).expect("send the command");
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .expect("read the reply");
        reply.trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `n` instances sharing `redis`, each linked to it.
fn instances(redis: &Redis, n: usize) -> Vec<ServerProcess> {
    wait_listening(redis.port);
    linked(&redis.url(), n, &[])
}

/// `n` instances with `--redis url` and `extra` flags, once each is linked.
fn linked(url: &str, n: usize, extra: &[&str]) -> Vec<ServerProcess> {
    let servers: Vec<ServerProcess> = (0..n)
        .map(|_| ServerProcess::start(&[&["--redis", url], extra].concat()))
        .collect();
    for server in &servers {
        wait_backplane(server, "up");
    }
    servers
}

fn wait_backplane(server: &ServerProcess, state: &str) {
    wait_link(server, "state", state);
}

/// Waits (bounded) until `/stats`'s `backplane.what` says `state`.
fn wait_link(server: &ServerProcess, what: &str, state: &str) {
    let deadline = Instant::now() + PATIENCE;
    while server.stats()["backplane"][what] != state {
        assert!(Instant::now() < deadline, "backplane {what} never {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chat(text: &str) -> serde_json::Value {
    json!({"type": "chat", "text": text})
}

/// The next message that is not a `joined`: an instance tells its members
/// the new epoch (`joined`, `recovered: false`) whenever its order changes.
fn next(client: &mut Client) -> Value {
    loop {
        let got = client.recv();
        if got["type"] != "joined" {
            return got;
        }
        assert_eq!(got["recovered"], false, "{got}");
    }
}

/// The next message (a new epoch's `joined` aside) is a chat from `user` saying `text`.
fn expect_chat(client: &mut Client, user: &str, text: &str) {
    let got = next(client);
    assert_eq!(
        (&got["user"], &got["text"]),
        (&json!(user), &json!(text)),
        "{got}"
    );
}

/// Nothing more arrives (a new epoch's `joined` aside): no duplicates,
/// nothing from where it should not.
fn expect_nothing(clients: &mut [&mut Client]) {
    std::thread::sleep(Duration::from_millis(300));
    for client in clients {
        let got: Vec<Value> = client
            .sync()
            .into_iter()
            .filter(|m| m["type"] != "joined")
            .collect();
        assert_eq!(got, Vec::<Value>::new());
    }
}

#[test]
fn instances_share_the_room_and_survive_a_redis_restart() {
    let redis = Redis::start(None);
    let servers = instances(&redis, 3);
    let mut a = Client::joined(&servers[0], "a");
    let mut a2 = Client::joined(&servers[0], "a2");
    let mut b = Client::joined(&servers[1], "b");
    let mut c = Client::joined(&servers[2], "c");

    // Every other client, on every instance, gets each chat exactly once, stamped.
    a.send(chat("from a"));
    for client in [&mut a2, &mut b, &mut c] {
        expect_chat(client, "a", "from a");
    }
    b.send(chat("from b"));
    for client in [&mut a, &mut a2, &mut c] {
        expect_chat(client, "b", "from b");
    }
    // Order from one sender is kept across instances.
    for i in 0..10 {
        c.send(chat(&format!("c{i}")));
    }
    for client in [&mut a, &mut a2, &mut b] {
        for i in 0..10 {
            expect_chat(client, "c", &format!("c{i}"));
        }
    }
    expect_nothing(&mut [&mut a, &mut a2, &mut b, &mut c]);
    // Every chat came through the subscription, its own one too.
    let stats = servers[0].stats()["backplane"].clone();
    assert_eq!(
        (&stats["published"], &stats["received"]),
        (&json!(1), &json!(12))
    );

    // Redis gone: the link shows down, local relay goes on, nothing crosses.
    on_purpose("Redis stopped, then restarted: the instances log it down, then up");
    let port = redis.stop();
    for server in &servers {
        wait_backplane(server, "down");
        let (status, _, body) = http_get(server.addr, "/health");
        assert_eq!(status, 200);
        assert!(body.contains("backplane down"), "{body}");
    }
    // Each member is told its ids are of the instance's own epoch now.
    let told = a2.recv();
    assert_eq!(
        (&told["type"], &told["recovered"]),
        (&json!("joined"), &json!(false)),
        "{told}"
    );
    assert_eq!(servers[0].stats()["epoch"], told["epoch"]);
    a.send(chat("local only"));
    expect_chat(&mut a2, "a", "local only");
    expect_nothing(&mut [&mut b, &mut c]);
    assert_eq!(servers[0].stats()["order"], "local");

    // Redis back on the same port: relay across instances resumes by itself.
    let _redis = Redis::start(Some(port));
    wait_listening(port);
    for server in &servers {
        wait_backplane(server, "up");
    }
    b.send(chat("back"));
    for client in [&mut a, &mut a2, &mut c] {
        expect_chat(client, "b", "back");
    }
    expect_nothing(&mut [&mut a, &mut a2, &mut b, &mut c]);
}

/// The room's newest id in Redis (0 if none yet).
fn offset(redis: &Redis) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"HGET websocket-public-chat:public:meta offset\r\n")
        .unwrap();
    // `$N` and the value on the next line, or `$-1` for none.
    let mut reader = BufReader::new(stream);
    let mut size = String::new();
    reader.read_line(&mut size).unwrap();
    if size.trim() == "$-1" {
        return 0;
    }
    let mut value = String::new();
    reader.read_line(&mut value).unwrap();
    value.trim().parse().expect("an offset")
}

/// Appends `chat` to the room as an instance would, but by hand: someone
/// with write access to the room's keys. Returns the reply's first line.
fn append(redis: &Redis, origin: &str, chat: &str) -> String {
    let script = b"local id = redis.call('HINCRBY', KEYS[1], 'offset', 1) \
        redis.call('XADD', KEYS[2], id .. '-0', 'o', ARGV[1], 'c', ARGV[2]) \
        redis.call('PUBLISH', ARGV[3], redis.call('HGET', KEYS[1], 'epoch') .. ' ' .. id .. ' x x') \
        return id";
    redis.command(&[
        b"EVAL",
        script,
        b"2",
        b"websocket-public-chat:public:meta",
        b"websocket-public-chat:public:stream",
        origin.as_bytes(),
        chat.as_bytes(),
        b"websocket-public-chat:public",
    ])
}

#[test]
fn a_publish_from_outside_injects_nothing_and_the_stream_is_checked_like_a_client() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let server = ServerProcess::start(&["--redis", &redis.url(), "--max-message-size", "1000"]);
    wait_backplane(&server, "up");
    let mut alice = Client::joined(&server, "alice");
    let epoch = server.stats()["epoch"]
        .as_str()
        .expect("an epoch")
        .to_string();
    let origin = "00000000deadbeef-1-1-1-R";
    let valid = r#"{"type":"chat","room":"public","user":"bob","text":"ok"}"#;

    // Anyone who may PUBLISH on the channel: whatever the message says, the
    // chat is read from the stream, where there is none. Not in the format;
    // another epoch Redis does not have; the next id; one from the future.
    let next = offset(&redis) + 1;
    redis.publish(valid.as_bytes());
    redis.publish(format!("other-epoch {next} {origin} {valid}").as_bytes());
    redis.publish(format!("{epoch} {next} {origin} {valid}").as_bytes());
    redis.publish(format!("{epoch} {} {origin} {valid}", next + 5).as_bytes());
    expect_nothing(&mut [&mut alice]);
    let stats = server.stats();
    assert_eq!(stats["backplane"]["malformed"], 1, "{stats}");
    assert_eq!(stats["backplane"]["forged"], 3, "{stats}");
    assert_eq!(stats["backplane"]["received"], 0, "{stats}");

    // Someone who may write the room's keys: each entry is checked like a
    // chat from a client, and what is not one is dropped.
    let refused = [
        // Presence to a client that never asked, and a count that lies.
        r#"{"type":"presence","room":"public","online":-7}"#.to_string(),
        // Fields of the wrong type.
        r#"{"type":"chat","room":"public","user":{"is":"admin"},"text":{"x":1}}"#.into(),
        // A name that would show as another.
        r#"{"type":"chat","room":"public","user":"\u202enimda","text":"hi"}"#.into(),
        // JSON that strict parsers reject.
        r#"{"type":"chat","room":"public","user":"bob","text":"x","ts":1e400}"#.into(),
        // Just over the size limit: the smallest local chat with this text
        // would be 1001 bytes, which a client here could not send either.
        format!(
            r#"{{"type":"chat","room":"public","user":"bob","text":"{}"}}"#,
            "x".repeat(976)
        ),
        // Far over it: not even handed to the engine.
        format!(
            r#"{{"type":"chat","room":"public","user":"bob","text":"{}"}}"#,
            "x".repeat(5_000_000)
        ),
    ];
    for json in &refused {
        append(&redis, origin, json);
    }
    // A well-formed chat passes, rebuilt by this server's serializer.
    append(
        &redis,
        origin,
        r#"{"ts":5,"text":"hi \"all\"","extra":"dropped","user":"bob","room":"public","type":"chat"}"#,
    );
    let got = alice.recv();
    assert_eq!(
        got,
        json!({"type": "chat", "room": "public", "id": next + 6, "user": "bob", "text": "hi \"all\"", "ts": 5})
    );
    // The largest text a local client may send passes from the stream too.
    let largest = "x".repeat(975);
    let json = format!(r#"{{"type":"chat","room":"public","user":"bob","text":"{largest}"}}"#);
    append(&redis, origin, &json);
    assert_eq!(alice.recv()["text"], largest.as_str());
    let mut carol = Client::joined(&server, "carol");
    carol.send(chat(&largest));
    assert_eq!(alice.recv()["text"], largest.as_str());
    expect_nothing(&mut [&mut alice]);
    let stats = server.stats();
    assert_eq!(stats["backplane_rejected"], 5, "{stats}");
    assert_eq!(stats["backplane"]["oversized"], 1, "{stats}");
    // Counted when handed on, before the engine's checks.
    assert_eq!(stats["backplane"]["received"], 8, "{stats}");
    // One byte more from a local client is too big for this server.
    carol.send(chat(&"x".repeat(976)));
    assert_eq!(carol.recv_close(), Some(1009));
}

/// (id, text) of each chat.
fn id_text(chats: &[Value]) -> Vec<(u64, String)> {
    chats
        .iter()
        .map(|c| {
            (
                c["id"].as_u64().expect("an id"),
                c["text"].as_str().expect("text").to_string(),
            )
        })
        .collect()
}

/// The next `n` chats `client` receives.
fn next_chats(client: &mut Client, n: usize) -> Vec<Value> {
    (0..n).map(|_| client.recv()).collect()
}

#[test]
fn hostile_room_keys_neither_stall_the_room_nor_reach_clients() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    // A long stream, so what follows is not trimmed away before it is read.
    let [a, b] = <[ServerProcess; 2]>::try_from(linked(&redis.url(), 2, &["--history", "2000"]))
        .ok()
        .unwrap();
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("one"));
    expect_chat(&mut bob, "alice", "one");
    let stream: &[u8] = b"websocket-public-chat:public:stream";
    // 600 entries with ids that are not `N-0` (more than one backfill batch)
    // after chat 1: skipped, and the subscriber goes on past them.
    let junk = b"for k = 1, 600 do redis.call('XADD', KEYS[1], '1-' .. k, 'o', 'x', 'c', 'y') end";
    redis.command(&[b"EVAL", junk, b"1", stream]);
    alice.send(chat("two"));
    expect_chat(&mut bob, "alice", "two");
    // An entry far past the room's ids: the next chat goes on after it.
    redis.command(&[b"XADD", stream, b"99999999-0", b"o", b"x", b"c", b"y"]);
    alice.send(chat("three"));
    let three = next(&mut bob);
    assert_eq!(
        (three["text"].as_str(), three["id"].as_u64()),
        (Some("three"), Some(100_000_000))
    );
    // An epoch that is not one this server writes is never taken or sent.
    let epoch = b.stats()["epoch"].clone();
    let evil: &[u8] = br#"evil","recovered":true,"x":""#;
    redis.command(&[
        b"HSET",
        b"websocket-public-chat:public:meta",
        b"epoch",
        evil,
    ]);
    let (_, _, joined) = join_with(&b, "dave", json!({"history": 5}));
    assert_eq!(joined["epoch"], epoch, "{joined}");
    assert_eq!(joined.as_object().map(|o| o.len()), Some(5), "{joined}");
    assert_ne!(
        b.stats()["epoch"].as_str(),
        Some(r#"evil","recovered":true,"x":""#)
    );
}

#[test]
fn a_client_recovers_on_another_instance_and_everyone_sees_one_order() {
    let redis = Redis::start(None);
    let servers = instances(&redis, 3);
    let mut people: Vec<Client> = ["a", "b", "c"]
        .iter()
        .zip(&servers)
        .map(|(name, server)| Client::joined(server, name))
        .collect();
    let (mut dave, _, joined) = join_with(&servers[0], "dave", json!({"history": 0}));
    let epoch = joined["epoch"].clone();
    assert_eq!(joined["recovered"], true);

    // Everyone at once, from three instances: Redis gives the order. Each
    // person sees every other person's chats; the ids and order agree.
    let round = |people: &mut Vec<Client>, tag: &str| {
        for (i, person) in people.iter_mut().enumerate() {
            for n in 0..3 {
                person.queue(chat(&format!("{tag}{i}.{n}")));
            }
            person.flush();
        }
    };
    round(&mut people, "r");
    let seen: Vec<Vec<(u64, String)>> = people
        .iter_mut()
        .map(|p| id_text(&next_chats(p, 6)))
        .collect();
    let dave_saw = id_text(&next_chats(&mut dave, 9));
    for (i, saw) in seen.iter().enumerate() {
        let others: Vec<_> = dave_saw
            .iter()
            .filter(|(_, text)| !text.starts_with(&format!("r{i}.")))
            .cloned()
            .collect();
        assert_eq!(saw, &others, "person {i} and dave disagree");
    }
    let ids: Vec<u64> = dave_saw.iter().map(|(id, _)| *id).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    // One sender's chats keep their order.
    for i in 0..3 {
        let mine: Vec<_> = dave_saw
            .iter()
            .filter(|(_, t)| t.starts_with(&format!("r{i}.")))
            .map(|(_, t)| t.clone())
            .collect();
        assert_eq!(
            mine,
            (0..3).map(|n| format!("r{i}.{n}")).collect::<Vec<_>>()
        );
    }

    // Dave drops off A; the room goes on; he comes back on B with since,
    // once B has relayed all nine (a watcher there has them): otherwise he
    // rightly gets what B has, and the rest live.
    let last_seen = *ids.last().unwrap();
    drop(dave);
    let mut watcher = Client::joined(&servers[1], "watcher");
    round(&mut people, "s");
    let missed = id_text(&next_chats(&mut people[0], 6));
    next_chats(&mut watcher, 9);
    let (mut dave, replayed, joined) = join_with(
        &servers[1],
        "dave",
        json!({"since": last_seen, "epoch": epoch}),
    );
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(joined["epoch"], epoch);
    let replayed = id_text(&replayed);
    assert_eq!(replayed.len(), 9, "{replayed:?}");
    assert_eq!(
        replayed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        (last_seen + 1..=last_seen + 9).collect::<Vec<_>>()
    );
    // What a's person saw of them, in the same places.
    let of_others: Vec<_> = replayed
        .iter()
        .filter(|(_, t)| !t.starts_with("s0."))
        .cloned()
        .collect();
    assert_eq!(of_others, missed);
    assert_eq!(joined["last"], last_seen + 9);
    // Live from there, once.
    people[2].send(chat("live"));
    assert_eq!(
        id_text(&[dave.recv()]),
        [(last_seen + 10, "live".to_string())]
    );
    expect_nothing(&mut [&mut dave]);
}

#[test]
fn a_redis_that_lost_the_room_or_is_away_is_told_and_recovery_resumes() {
    let redis = Redis::start(None);
    let [a, b] = <[ServerProcess; 2]>::try_from(instances(&redis, 2))
        .ok()
        .unwrap();
    let mut alice = Client::joined(&a, "alice");
    let mut alice2 = Client::joined(&a, "alice2");
    let (mut dave, _, joined) = join_with(&b, "dave", json!({"history": 0}));
    let epoch = joined["epoch"].clone();
    alice.send(chat("one"));
    let seen = next(&mut dave)["id"].as_u64().unwrap();
    next(&mut alice2);
    drop(dave);

    // Redis restarted without persistence: the room's data is gone, a new
    // epoch comes, and a recovery says so.
    on_purpose(
        "Redis restarted without its data, then stopped: the instances log it down, then up",
    );
    let port = redis.stop();
    let _redis = Redis::start(Some(port));
    wait_listening(port);
    let deadline = Instant::now() + PATIENCE;
    while a.stats()["epoch"] == epoch
        || b.stats()["epoch"] == epoch
        || a.stats()["order"] != "redis"
        || b.stats()["order"] != "redis"
    {
        assert!(Instant::now() < deadline, "no new epoch from Redis");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut dave, _, joined) = join_with(&b, "dave", json!({"since": seen, "epoch": epoch}));
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_ne!(joined["epoch"], epoch);
    let new_epoch = joined["epoch"].clone();
    assert_eq!(a.stats()["epoch"], new_epoch);
    alice.send(chat("two"));
    let two = next(&mut dave);
    assert_eq!(
        (two["text"].as_str(), two["id"].as_u64()),
        (Some("two"), Some(1))
    );
    next(&mut alice2);
    drop(dave);

    // Redis away: local relay goes on, under an epoch of the instance's own;
    // a recovery across the outage says it is incomplete.
    let port = _redis.stop();
    wait_backplane(&a, "down");
    wait_backplane(&b, "down");
    alice.send(chat("alone"));
    assert_eq!(next(&mut alice2)["text"], "alone");
    let (_, _, joined) = join_with(&a, "dave", json!({"since": 1, "epoch": new_epoch}));
    assert_eq!(joined["recovered"], false, "{joined}");
    assert_eq!(a.stats()["order"], "local");

    // Redis back (with the room it had, as from persistence it would not
    // have here: a fresh one): Redis orders again, and recovery works.
    let _redis = Redis::start(Some(port));
    wait_listening(port);
    let deadline = Instant::now() + PATIENCE;
    while a.stats()["order"] != "redis" || b.stats()["order"] != "redis" {
        assert!(
            Instant::now() < deadline,
            "Redis never ordered the room again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (mut dave_b, _, joined) = join_with(&b, "dave", json!({"history": 0}));
    let (epoch, seen) = (joined["epoch"].clone(), joined["last"].as_u64().unwrap());
    alice.send(chat("three"));
    assert_eq!(dave_b.recv()["text"], "three");
    assert_eq!(next(&mut alice2)["text"], "three");
    drop(dave_b);
    alice.send(chat("four"));
    assert_eq!(next(&mut alice2)["text"], "four");
    let (_, replayed, joined) = join_with(&a, "dave", json!({"since": seen, "epoch": epoch}));
    assert_eq!(joined["recovered"], true, "{joined}");
    assert_eq!(
        replayed
            .iter()
            .map(|c| c["text"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["three", "four"]
    );
}

#[test]
fn a_subscription_redis_cuts_off_is_counted_and_comes_back() {
    let redis = Redis::start(None);
    let [a, b] = <[ServerProcess; 2]>::try_from(instances(&redis, 2))
        .ok()
        .unwrap();
    // A 33 MiB publish (anyone with PUBLISH on the channel can) passes Redis's
    // default pub/sub output buffer limit: Redis cuts every subscriber off.
    // Instances cannot send such a chat: --max-message-size is at most 1 MiB
    // with --redis.
    on_purpose("Redis cuts its subscribers off (a 33 MiB message): they log it down, then up");
    assert_eq!(redis.publish(&vec![b'x'; (33 << 20) + 1]), 2);
    for server in [&a, &b] {
        let deadline = Instant::now() + PATIENCE;
        while server.stats()["backplane"]["subscriptions_lost"] != 1 {
            assert!(
                Instant::now() < deadline,
                "the lost subscription was not counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_link(server, "subscriber", "up");
    }
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("after the cut"));
    expect_chat(&mut bob, "alice", "after the cut");

    // And an instance may not allow chats near that size.
    let output = Command::new(server_binary())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--redis",
            &redis.url(),
        ])
        .args(["--max-message-size", "1048577"])
        .output()
        .expect("run the server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at most 1048576 with --redis"), "{stderr}");
}

/// A TCP proxy in front of Redis that can cut the network without closing
/// anything: while cut, nothing is forwarded and nobody sees a FIN or a
/// reset; the connections that were open when it was cut stay dead after it
/// heals (as when a partition loses the path's state), and only new
/// connections work again.
struct FreezingProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Connections made before the last cut are dead for good.
    cuts: Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingProxy {
    fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut2, cuts2) = (Arc::clone(&cut), Arc::clone(&cuts));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let born = cuts2.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let (cut, cuts) = (Arc::clone(&cut2), Arc::clone(&cuts2));
                    std::thread::spawn(move || {
                        pump(from, to, || {
                            cut.load(Ordering::SeqCst) || cuts.load(Ordering::SeqCst) != born
                        })
                    });
                }
            }
        });
        Self { port, cut, cuts }
    }

    /// Cuts the network (`true`) or heals it (`false`).
    fn cut(&self, cut: bool) {
        if cut {
            self.cuts.fetch_add(1, Ordering::SeqCst);
        }
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while not `stalled()`; stalled, it reads nothing, so
/// bytes wait in the socket buffers and nobody sees a FIN or a reset.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: impl Fn() -> bool) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if stalled() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_redis_gone_silent_is_noticed_and_the_link_comes_back() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let proxy = FreezingProxy::start(redis.port);
    let proxied = format!("redis://127.0.0.1:{}/", proxy.port);
    let [a, b] = <[ServerProcess; 2]>::try_from(linked(&proxied, 2, &[]))
        .ok()
        .unwrap();
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("before"));
    expect_chat(&mut bob, "alice", "before");

    // The network path to Redis goes silent: no FIN, no reset. Both
    // connections of both instances notice, the subscriptions included
    // (nothing arrives on them, which looks like a quiet channel).
    on_purpose("the network to Redis goes silent: the instances log it down, then up");
    proxy.cut(true);
    let frozen_at = Instant::now();
    for server in [&a, &b] {
        wait_link(server, "subscriber", "down");
        wait_link(server, "publisher", "down");
        let (_, _, body) = http_get(server.addr, "/health");
        assert!(body.contains("backplane down"), "{body}");
    }
    let noticed = frozen_at.elapsed();
    assert!(
        noticed < Duration::from_secs(6),
        "noticed after {noticed:?}"
    );
    // Local relay goes on meanwhile.
    let mut alice2 = Client::joined(&a, "alice2");
    alice.send(chat("local"));
    expect_chat(&mut alice2, "alice", "local");

    // The network heals, but the old connections are dead: both instances
    // must have noticed, reconnected, and chats cross again.
    proxy.cut(false);
    for server in [&a, &b] {
        wait_backplane(server, "up");
    }
    alice.send(chat("after"));
    expect_chat(&mut bob, "alice", "after");
    expect_chat(&mut alice2, "alice", "after");
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (tests/redis.sh installs it)");
    assert!(status.success(), "openssl {args:?}");
}

#[test]
fn rediss_with_a_private_authority_and_a_password_never_shown() {
    // A certificate authority and a certificate for 127.0.0.1 signed by it.
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test authority",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let tls_port = free_port();
    let path = |name: &str| dir.join(name).display().to_string();
    let redis = Redis::start_with(
        None,
        &[
            "--port",
            "0",
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path("redis.pem"),
            "--tls-key-file",
            &path("redis.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "sekret-pass",
        ],
    );
    wait_listening(tls_port);
    let url = format!("rediss://:sekret-pass@127.0.0.1:{tls_port}/");

    // Two instances over TLS, trusting the test's authority: the room is shared.
    let ca = path("ca.pem");
    let a = ServerProcess::start(&["--redis", &url, "--redis-ca", &ca]);
    let b = ServerProcess::start(&["--redis", &url, "--redis-ca", &ca]);
    wait_backplane(&a, "up");
    wait_backplane(&b, "up");
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("over tls"));
    expect_chat(&mut bob, "alice", "over tls");
    let stats = a.stats().to_string();
    assert!(!stats.contains("sekret"), "{stats}");

    // Without the authority, the certificate is not trusted: never up.
    let untrusting = ServerProcess::start(&["--redis", &url]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(untrusting.stats()["backplane"]["state"], "down");

    // A wrong password is said on stderr, once, with Redis's reason.
    let output = Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--duration", "3"])
        .args([
            "--redis",
            &url.replace("sekret-pass", "wrong-pass"),
            "--redis-ca",
            &ca,
        ])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for what in ["publisher", "subscriber"] {
        let said = format!("Redis {what}: down: ");
        assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    }
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(!stderr.contains("wrong-pass"), "{stderr}");

    // A --redis-ca file that holds no certificate stops the server at once.
    let garbage = path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let output = Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--duration", "5"])
        .args(["--redis", &url, "--redis-ca", &garbage])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--redis-ca"), "{stderr}");
    assert!(output.stdout.is_empty(), "it listened: {stderr}");

    // Whatever goes wrong, the password is not printed: not in a mistyped
    // URL, nor one whose password holds '/', '#' or '?'.
    let mut mistyped: Vec<Vec<String>> = [
        "redis://:sekret/pass@127.0.0.1:1/",
        "redis://:sekret#pass@127.0.0.1:1/",
        "redis://:sekret?pass@127.0.0.1:1/",
        "redis:/:sekret-pass@127.0.0.1:1/",
        "redis:sekret-pass@127.0.0.1",
        "unix:///tmp/x.sock?pass=sekret-pass",
    ]
    .iter()
    .map(|url| vec!["--redis".to_string(), url.to_string()])
    .collect();
    mistyped.push(vec![
        "--redis".to_string(),
        url.clone(),
        "--redis-ca".to_string(),
        garbage.clone(),
    ]);
    for args in mistyped.into_iter().chain([
        vec![
            "--redis".to_string(),
            format!("rediss://:sekret-pass@127.0.0.1:{tls_port}/not-a-db"),
        ],
        vec![
            "--redis".to_string(),
            "redis://:sekret-pass@[bad".to_string(),
        ],
        vec![
            "--redis".to_string(),
            url.clone(),
            "--redis-ca".to_string(),
            "/no/such/file".to_string(),
        ],
    ]) {
        let output = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", "0", "--duration", "1"])
            .args(&args)
            .output()
            .expect("run the server");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!printed.contains("sekret"), "{args:?} printed {printed:?}");
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A field of Redis's `INFO stats` (RESP read by hand).
fn info_stat(redis: &Redis, field: &str) -> u64 {
    let mut stream = TcpStream::connect(("127.0.0.1", redis.port)).expect("connect to redis");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
        .write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        .expect("send INFO");
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("the length");
    let len: usize = line
        .trim()
        .trim_start_matches('$')
        .parse()
        .expect("a bulk reply");
    let mut body = vec![0; len];
    reader.read_exact(&mut body).expect("the body");
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO stats"))
}

#[test]
fn a_history_join_reads_no_more_from_redis_than_it_replays_and_memory_stays_bounded() {
    // Chats of about 1 MB (allowed with --redis): the build before this one
    // read the whole stream for one join (Redis sent ~100 MB, the instance
    // grew by ~100 MiB and kept it) and replayed none of it.
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let big = ["--max-message-size", "1048576"];
    let servers = linked(&redis.url(), 2, &big);
    let text = "y".repeat(1_000_000);
    // Senders one after another on A (nobody else joined: no fan-out).
    for s in 0..4 {
        let mut sender = Client::joined(&servers[0], &format!("s{s}"));
        for i in 0..10 {
            sender.queue(chat(&format!("{s}.{i} {text}")));
        }
        sender.flush();
        sender.sync();
        drop(sender);
        // The next sender joins once A has relayed these back from Redis
        // (else they reach it: 10 MB, over its backlog, a slow consumer).
        let deadline = Instant::now() + PATIENCE;
        while servers[0].stats()["chats_relayed"].as_u64() < Some(10 * (s + 1)) {
            assert!(
                Instant::now() < deadline,
                "A never relayed sender {s}'s chats"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let deadline = Instant::now() + PATIENCE;
    while servers[1].stats()["chats_relayed"].as_u64() < Some(40) {
        assert!(Instant::now() < deadline, "B never relayed the 40 chats");
        std::thread::sleep(Duration::from_millis(20));
    }
    // B's ring holds one of them (--history-bytes 1 MiB): the rest come
    // from Redis, a read at a time as the joiner drains its queue.
    let b = &servers[1];
    let before_rss = b.rss_kib();
    let before_sent = info_stat(&redis, "total_net_output_bytes");
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before_rss));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling, pid) = (peak.clone(), sampling.clone(), b.pid());
        std::thread::spawn(move || {
            while sampling.load(Ordering::Relaxed) {
                if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                    && let Some(kib) = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let (_, replayed, joined) = join_with(b, "newcomer", json!({"history": 100}));
    sampling.store(false, Ordering::Relaxed);
    sampler.join().expect("the sampler");
    let sent = info_stat(&redis, "total_net_output_bytes") - before_sent;
    assert_eq!(replayed.len(), 40);
    assert_eq!(joined["recovered"], true, "{joined}");
    let received: u64 = replayed.iter().map(|c| c.to_string().len() as u64).sum();
    assert!(
        sent <= received + received / 10,
        "Redis sent {sent} bytes for {received} replayed"
    );
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before_rss);
    assert!(
        grew < 16 << 10,
        "the instance grew by {grew} KiB during the join"
    );
    let reads = b.stats()["backplane"]["history_reads"]
        .as_u64()
        .unwrap_or(0);
    assert!(reads >= 39 / 2, "{reads} reads for 39 chats of 1 MB");
    // Memory is given back once the burst is over.
    std::thread::sleep(Duration::from_millis(300));
    let after = b.rss_kib();
    assert!(
        after < before_rss + (8 << 10),
        "{before_rss} KiB before the join, {after} KiB after"
    );
    // Its descriptors are counted, not listed: Redis's connections included
    // (and the scrape's own).
    let open = std::fs::read_dir(format!("/proc/{}/fd", b.pid()))
        .expect("its descriptors")
        .count();
    let (_, _, metrics) = http_get(b.addr, "/metrics");
    let counted = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name}"))
    };
    assert_eq!(counted("process_open_fds"), open as u64 + 1, "{metrics}");
    assert_eq!(counted("websocket_public_chat_backplane_connections"), 4);
}

#[test]
fn a_recovery_from_the_ring_equals_the_one_from_the_stream_until_the_subscription_is_cut() {
    let redis = Redis::start(None);
    let [a, b] = <[ServerProcess; 2]>::try_from(instances(&redis, 2))
        .ok()
        .unwrap();
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    let (_, _, joined) = join_with(&b, "dave", json!({"history": 0}));
    let (epoch, since) = (joined["epoch"].clone(), joined["last"].clone());
    // Ten: the rate limit's burst.
    for n in 0..10 {
        alice.send(json!({"type": "chat", "text": format!("c{n}"), "ts": n}));
        // Bob is on B: once he has it, B has relayed it (and its ring holds it).
        expect_chat(&mut bob, "alice", &format!("c{n}"));
    }
    let recover = |server: &ServerProcess, name: &str| {
        let reads = server.stats()["backplane"]["history_reads"]
            .as_u64()
            .unwrap();
        let (_, chats, joined) = join_with(server, name, json!({"since": since, "epoch": epoch}));
        let read = server.stats()["backplane"]["history_reads"]
            .as_u64()
            .unwrap()
            - reads;
        (chats, joined, read)
    };
    // B relayed all ten: its ring answers, no read of the stream.
    let (from_ring, joined_ring, reads) = recover(&b, "eve");
    assert_eq!(reads, 0, "B read the stream for chats its ring holds");
    assert_eq!(from_ring.len(), 10);
    assert_eq!(joined_ring["recovered"], true, "{joined_ring}");
    // An instance started after them has them only in the stream. (Its
    // --history-file is ignored: Redis keeps the room; the file stays.)
    let file = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("redis-history-{}.json", std::process::id()));
    std::fs::write(&file, "not read").unwrap();
    let c = linked(&redis.url(), 1, &["--history-file", file.to_str().unwrap()])
        .pop()
        .unwrap();
    let said = std::fs::read_to_string(&c.log).unwrap_or_default();
    assert!(
        said.contains("--history-file is ignored with --redis"),
        "{said}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not read");
    let _ = std::fs::remove_file(&file);
    let (from_stream, joined_stream, reads) = recover(&c, "eve");
    assert!(reads >= 1, "C cannot have them in its ring");
    assert_eq!(from_ring, from_stream, "ids, order, every field");
    assert_eq!(joined_ring, joined_stream);

    // B's subscription is cut: what it relayed since may have gaps, so
    // its ring starts again and the same recovery reads the stream.
    on_purpose("Redis cuts its subscribers off (a 33 MiB message): they log it down, then up");
    assert_eq!(redis.publish(&vec![b'x'; (33 << 20) + 1]), 3);
    let deadline = Instant::now() + PATIENCE;
    while b.stats()["backplane"]["subscriptions_lost"] != 1 {
        assert!(Instant::now() < deadline, "the cut was not counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    wait_link(&b, "subscriber", "up");
    while b.stats()["order"] != "redis" {
        assert!(
            Instant::now() < deadline,
            "Redis never ordered B's room again"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (after_cut, joined_after, reads) = recover(&b, "frank");
    assert!(
        reads >= 1,
        "B answered from a ring that a cut may have holed"
    );
    assert_eq!(after_cut, from_stream);
    assert_eq!(joined_after, joined_stream);
}

#[test]
fn kicks_bans_mutes_and_notices_reach_every_instance_and_a_ban_one_started_later() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let token = TokenFile::new();
    let flags = token.flags();
    let servers = linked(&redis.url(), 2, &flags);
    let (a, b) = (&servers[0], &servers[1]);
    let mut bob = Client::joined(b, "bob");
    let mut carol = Client::joined(b, "carol");
    // Each instance lists its own members, naming itself.
    let members = admin_ok(b, "GET", "/admin/members", None);
    assert_eq!(members["count"], 2, "{members}");
    let instance = &b.stats()["backplane"]["instance_id"];
    assert_eq!(&members["members"][0]["instance"], instance, "{members}");
    assert_eq!(admin_ok(a, "GET", "/admin/members", None)["count"], 0);
    // A notice asked of A reaches B's members.
    let sent = admin_ok(
        a,
        "POST",
        "/admin/announce",
        Some(json!({"text": "hello from A"})),
    );
    assert_eq!(sent["cluster"], "queued for every instance", "{sent}");
    assert_eq!(
        carol.recv(),
        json!({"type": "notice", "room": "public", "text": "hello from A"})
    );
    assert_eq!(bob.recv()["type"], "notice");
    // A kick asked of A closes bob on B.
    let kicked = admin_ok(
        a,
        "POST",
        "/admin/kick",
        Some(json!({"user": "bob", "reason": "rude"})),
    );
    assert_eq!(kicked["kicked"], 0, "{kicked}");
    assert_eq!(
        bob.recv_close_frame(),
        Some((4001, "kicked by the operator: rude".into()))
    );
    // A mute asked of B holds on A: dave's chats from A reach nobody on B.
    let from_cluster = a.stats()["admin_from_cluster"].as_u64().unwrap();
    admin_ok(
        b,
        "POST",
        "/admin/mute",
        Some(json!({"user": "dave", "seconds": 60})),
    );
    a.wait_counter("admin_from_cluster", from_cluster + 1);
    let mut dave = Client::joined(a, "dave");
    dave.send(chat("muted"));
    dave.sync();
    let mut erin = Client::joined(a, "erin");
    erin.send(chat("heard"));
    expect_chat(&mut carol, "erin", "heard");
    assert_eq!(a.stats()["muted_dropped"], 1);
    // A ban asked of A closes carol on B and B refuses her address.
    admin_ok(
        a,
        "POST",
        "/admin/ban",
        Some(json!({"address": "127.0.0.0/8", "seconds": 60, "reason": "spam"})),
    );
    assert_eq!(
        carol.recv_close_frame(),
        Some((4003, "banned by the operator: spam".into()))
    );
    assert_eq!(http_get(b.addr, "/").0, 403);
    // An instance started after the ban refuses it too (Redis keeps it).
    let later = linked(&redis.url(), 1, &flags);
    let c = &later[0];
    assert_eq!(http_get(c.addr, "/").0, 403);
    let bans = admin_ok(c, "GET", "/admin/bans", None);
    assert_eq!(bans["bans"][0]["address"], "127.0.0.0/8", "{bans}");
    assert_eq!(bans["bans"][0]["reason"], "spam");
    // An instance cut off from Redis while a ban begins and ends does not
    // apply it, late, when it is back: a ban lasts until its end, not longer.
    let proxy = FreezingProxy::start(redis.port);
    let proxied = format!("redis://127.0.0.1:{}/", proxy.port);
    let mut cut_off = linked(&proxied, 1, &flags);
    let d = &mut cut_off[0];
    on_purpose("one instance's path to Redis goes silent while a 1 s ban begins and ends");
    proxy.cut(true);
    wait_link(d, "subscriber", "down");
    wait_link(d, "publisher", "down");
    // Meanwhile a lift there is refused: Redis keeps the ban, it would come back.
    let lift = Some(r#"{"address":"127.0.0.0/8"}"#);
    let private = d.metrics.unwrap();
    let (status, _, answer) = admin_call(private, "DELETE", "/admin/ban", Some(ADMIN_TOKEN), lift);
    assert_eq!(status, 503, "{answer}");
    admin_ok(
        a,
        "POST",
        "/admin/ban",
        Some(json!({"address": "192.0.2.0/24", "seconds": 1})),
    );
    std::thread::sleep(Duration::from_millis(1500));
    proxy.cut(false);
    wait_backplane(d, "up");
    let seen = d.stats()["admin_from_cluster"].as_u64().unwrap();
    admin_ok(
        a,
        "POST",
        "/admin/announce",
        Some(json!({"text": "after the outage"})),
    );
    d.wait_counter("admin_from_cluster", seen + 1);
    let bans = admin_ok(d, "GET", "/admin/bans", None);
    assert!(
        bans["bans"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["address"] != "192.0.2.0/24"),
        "an ended ban came back: {bans}"
    );
    // Lifted on C: every instance lets the address in again.
    admin_ok(
        c,
        "DELETE",
        "/admin/ban",
        Some(json!({"address": "127.0.0.0/8"})),
    );
    for server in [a, b, c] {
        let deadline = Instant::now() + PATIENCE;
        while http_get(server.addr, "/").0 != 200 {
            assert!(Instant::now() < deadline, "the lifted ban still holds");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
