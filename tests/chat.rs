//! The chat protocol through the real server: join, relay, stamping, rate
//! limit, ignored messages, ping/pong, leave.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn chat(text: &str, ts: u64) -> serde_json::Value {
    json!({"type": "chat", "room": "public", "user": "whoever", "text": text, "ts": ts})
}

#[test]
fn chat_reaches_every_other_joined_client_stamped_never_the_sender() {
    let server = ServerProcess::start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let mut carol = Client::joined(&server, "carol");
    // Connected but not joined: receives nothing.
    let mut lurker = RawClient::connect(&server);

    // Alice claims to be mallory; the server stamps her joined name.
    alice.send(json!({"type": "chat", "room": "public", "user": "mallory", "text": "hi \"all\" é", "ts": 1700000000123u64}));
    let want = json!({"type": "chat", "room": "public", "id": 1, "user": "alice", "text": "hi \"all\" é", "ts": 1700000000123u64});
    assert_eq!(bob.recv(), want);
    assert_eq!(carol.recv(), want);
    // Never back to the sender: her next message is the pong of this sync.
    assert_eq!(alice.sync(), Vec::<serde_json::Value>::new());
    lurker.expect_silence(Duration::from_millis(200));

    let stats = server.stats();
    assert_eq!(stats["chats_relayed"], 1);
    assert_eq!(stats["deliveries"], 2);
    assert_eq!(stats["joined"], 3);
}

#[test]
fn order_from_one_sender_is_kept() {
    let server = ServerProcess::start(&[]);
    let mut a = Client::joined(&server, "a");
    let mut b = Client::joined(&server, "b");
    for i in 0..10 {
        a.queue(chat(&format!("m{i}"), i));
    }
    a.flush();
    for i in 0..10 {
        assert_eq!(b.recv()["text"], format!("m{i}"));
    }
}

#[test]
fn burst_of_25_delivers_10() {
    let server = ServerProcess::start(&[]);
    let mut sender = Client::joined(&server, "flood");
    let mut receiver = Client::joined(&server, "calm");
    // All 25 in one write, so they arrive within one refill interval.
    for i in 0..25 {
        sender.queue(chat("burst", i));
    }
    sender.flush();
    sender.sync();
    let got = receiver.sync();
    assert_eq!(got.len(), 10, "{got:?}");
    let ts: Vec<u64> = got.iter().map(|m| m["ts"].as_u64().unwrap()).collect();
    assert_eq!(ts, (0..10).collect::<Vec<u64>>());
    let stats = server.stats();
    assert_eq!(stats["rate_limited"], 15);
    assert_eq!(stats["chats_relayed"], 10);
    // The connection stays open and is served once tokens refill.
    std::thread::sleep(Duration::from_millis(250));
    sender.send(chat("later", 99));
    assert_eq!(receiver.recv()["ts"], 99);
}

#[test]
fn ignored_messages_are_counted_and_the_connection_stays() {
    let server = ServerProcess::start(&[]);
    let mut listener = Client::joined(&server, "listener");
    let mut c = Client::connect(&server);
    c.send(chat("before join", 1));
    for text in [
        "not json",
        "[1,2,3]",
        "42",
        r#"{"no":"type"}"#,
        r#"{"type":7}"#,
        r#"{"type":"chat","text":5}"#,
    ] {
        c.send_text(text);
    }
    c.send(json!({"type": "dance"}));
    c.send(json!({"type": "join", "room": "private", "user": "x"}));
    c.send(json!({"type": "join", "user": ""}));
    c.send(json!({"type": "join", "user": "a\u{7}b"}));
    c.send(json!({"type": "join", "user": "x".repeat(65)}));
    c.send(json!({"type": "join", "user": "ok"}));
    c.send(json!({"type": "join", "user": "again"}));
    c.send(json!({"type": "chat", "room": "private", "text": "elsewhere"}));
    c.send(chat("after join", 2));
    assert_eq!(c.sync(), Vec::<serde_json::Value>::new());
    let got = listener.recv();
    assert_eq!(
        (got["user"].as_str(), got["ts"].as_u64()),
        (Some("ok"), Some(2))
    );

    let stats = server.stats();
    assert_eq!(stats["ignored_not_joined"], 1);
    assert_eq!(stats["ignored_malformed"], 6);
    assert_eq!(stats["ignored_unknown_type"], 1);
    assert_eq!(stats["ignored_wrong_room"], 2);
    assert_eq!(stats["ignored_invalid_name"], 3);
    assert_eq!(stats["ignored_already_joined"], 1);
    assert_eq!(stats["ignored_total"], 14);
}

#[test]
fn names_that_lie_are_refused_at_join() {
    let server = ServerProcess::start(&[]);
    let mut listener = Client::joined(&server, "listener");
    let liars = [
        "\u{202E}nimda",       // right-to-left override: shows as "admin"
        "alice\u{200B}",       // zero-width space: looks like "alice"
        "\u{2066}bob\u{2069}", // bidi isolates
        "   ",                 // nothing but whitespace
        " alice",              // whitespace at an end
        "alice\u{3000}",
        "a\u{2028}b", // line separator
        "\u{FEFF}eve",
        "\u{3164}",         // Hangul filler: renders as nothing
        "alice\u{3164}",    // ... so this shows as "alice"
        "alice\u{34F}",     // combining grapheme joiner
        "alice\u{FE0F}",    // variation selector
        "alice\u{E0100}",   // variation selector supplement
        "\u{115F}\u{1160}", // Hangul choseong/jungseong fillers
        "bob\u{FFA0}",      // halfwidth Hangul filler
        "bob\u{17B4}",      // Khmer inherent vowel
        "\u{2800}",         // braille blank: shows as a space
        "bob\u{2800}",
    ];
    for name in liars {
        let mut c = Client::connect(&server);
        c.send(json!({"type": "join", "user": name}));
        // Not joined: its chat is ignored as one before a join.
        c.send(chat("as a liar", 1));
        assert_eq!(c.sync(), Vec::<serde_json::Value>::new(), "{name:?}");
    }
    assert_eq!(listener.sync(), Vec::<serde_json::Value>::new());
    let stats = server.stats();
    assert_eq!(stats["ignored_invalid_name"], liars.len() as u64);
    assert_eq!(stats["ignored_not_joined"], liars.len() as u64);
    assert_eq!(stats["joined"], 1);
    // Spaces inside a name, and any script, are fine.
    let _named = Client::joined(&server, "Ana María 李");
    assert_eq!(server.stats()["joined"], 2);
}

#[test]
fn ping_pong_and_names_with_any_unicode() {
    let server = ServerProcess::start(&[]);
    let mut a = Client::joined(&server, "Zoë 🚀 <b>");
    let mut b = Client::joined(&server, "b");
    a.send(json!({"type": "ping", "ts": 1700000000000u64}));
    assert_eq!(a.recv(), json!({"type": "pong", "ts": 1700000000000u64}));
    a.send(json!({"type": "ping"}));
    assert_eq!(a.recv(), json!({"type": "pong"}));
    a.send(json!({"type": "pong", "ts": 5}));
    a.send(chat("x", 1));
    assert_eq!(b.recv()["user"], "Zoë 🚀 <b>");
}

#[test]
fn leave_closes_with_1000_and_removes_from_the_room() {
    let server = ServerProcess::start(&[]);
    let mut a = Client::joined(&server, "a");
    let mut b = Client::joined(&server, "b");
    let mut c = Client::joined(&server, "c");
    b.send(json!({"type": "leave", "user": "b"}));
    assert_eq!(b.recv_close(), Some(1000));
    b.expect_clean_end();
    // The room's remaining members still get everything; b is gone.
    a.send(chat("after leave", 1));
    assert_eq!(c.recv()["text"], "after leave");
    c.send(chat("and back", 2));
    assert_eq!(a.recv()["text"], "and back");
    let stats = server.stats();
    assert_eq!(stats["joined"], 2);
    assert_eq!(stats["closed_by_leave"], 1);
    assert_eq!(stats["deliveries"], 2);
}

#[test]
fn members_leaving_in_any_order_keep_the_room_consistent() {
    let server = ServerProcess::start(&[]);
    let mut clients: Vec<Client> = (0..6)
        .map(|i| Client::joined(&server, &format!("u{i}")))
        .collect();
    // Leave from the middle, the start and the end of the member list.
    for index in [2, 0, 3] {
        let mut gone = clients.remove(index);
        gone.send(json!({"type": "leave"}));
        assert_eq!(gone.recv_close(), Some(1000));
    }
    let (first, rest) = clients.split_first_mut().unwrap();
    first.send(chat("roll call", 7));
    for other in rest.iter_mut() {
        assert_eq!(other.recv()["ts"], 7);
    }
    assert_eq!(first.sync(), Vec::<serde_json::Value>::new());
    assert_eq!(server.stats()["joined"], 3);
}

#[test]
fn presence_goes_only_to_those_who_ask_coalesced() {
    let server = ServerProcess::start(&[]);
    let mut plain = Client::joined(&server, "plain");
    let mut watcher = Client::connect(&server);
    watcher.send(json!({"type": "join", "user": "watcher", "presence": true}));
    let presence = |online: u64| json!({"type": "presence", "room": "public", "online": online});
    // At once on joining: the count including the newcomer.
    assert_eq!(watcher.recv(), presence(2));
    // Three joins and one leave in a burst: one message with the final count.
    let mut others: Vec<Client> = ["a", "b", "c"]
        .iter()
        .map(|name| Client::joined(&server, name))
        .collect();
    drop(others.remove(0));
    assert_eq!(watcher.recv(), presence(4));
    assert_eq!(server.stats()["presence_sent"], 2);
    // Nobody who did not ask ever gets one.
    assert!(plain.sync().is_empty());
    plain.send(json!({"type": "leave"}));
    assert_eq!(plain.recv_close(), Some(1000));
    assert_eq!(watcher.recv(), presence(3));
}
