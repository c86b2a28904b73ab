//! History and recovery through the real binary: ids on every chat, the last
//! chats for a newcomer, exactly the missed chats for a client that comes
//! back, and an honest `recovered: false` when that is not possible.

mod common;

use common::*;
use serde_json::{Value, json};

fn chat(text: &str) -> Value {
    json!({"type": "chat", "text": text})
}

/// Sends `texts` from `sender` in order (each answered before the next, so
/// none is rate-limited); returns their ids as another member saw them.
fn say(sender: &mut Client, witness: &mut Client, texts: &[&str]) -> Vec<u64> {
    texts
        .iter()
        .map(|text| {
            sender.send(chat(text));
            let got = witness.recv();
            assert_eq!(got["text"], *text);
            sender.sync();
            got["id"].as_u64().expect("an id")
        })
        .collect()
}

fn texts(chats: &[Value]) -> Vec<&str> {
    chats.iter().map(|c| c["text"].as_str().unwrap()).collect()
}

#[test]
fn every_chat_carries_the_next_id_and_a_newcomer_gets_the_last_ones() {
    let server = ServerProcess::start(&["--history", "5"]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let ids = say(
        &mut alice,
        &mut bob,
        &["c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8"],
    );
    assert_eq!(ids, (1..=8).collect::<Vec<u64>>());

    // The last 3, oldest first, stamped and numbered as they were relayed, then `joined`.
    let (_, replayed, joined) = join_with(&server, "carol", json!({"history": 3}));
    assert_eq!(texts(&replayed), ["c6", "c7", "c8"]);
    assert_eq!(
        replayed[0],
        json!({"type": "chat", "room": "public", "id": 6, "user": "alice", "text": "c6"})
    );
    let epoch = joined["epoch"].as_str().expect("an epoch").to_string();
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "public", "epoch": epoch, "last": 8, "recovered": true})
    );

    // More than --history: capped at 5, so the 5 kept are all it asked for.
    let (_, replayed, joined) = join_with(&server, "dave", json!({"history": 50}));
    assert_eq!(texts(&replayed), ["c4", "c5", "c6", "c7", "c8"]);
    assert_eq!(joined["recovered"], true);

    // A join that asks for nothing gets nothing extra: the next message is live.
    let mut erin = Client::joined(&server, "erin");
    let ids = say(&mut alice, &mut erin, &["c9"]);
    assert_eq!(ids, [9]);
    assert_eq!(erin.sync(), Vec::<Value>::new());

    let stats = server.stats();
    assert_eq!(
        (
            stats["history_joins"].as_u64(),
            stats["history_chats_sent"].as_u64()
        ),
        (Some(2), Some(8))
    );
}

#[test]
fn a_client_that_comes_back_gets_exactly_what_it_missed() {
    let server = ServerProcess::start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let (mut bob, _, joined) = join_with(&server, "bob", json!({"history": 10}));
    let epoch = joined["epoch"].clone();
    say(&mut alice, &mut bob, &["before 1", "before 2"]);
    // Bob's connection drops (no close: a train tunnel).
    drop(bob);
    let mut witness = Client::joined(&server, "witness");
    let missed = say(
        &mut alice,
        &mut witness,
        &["missed 1", "missed 2", "missed 3"],
    );
    assert_eq!(missed, [3, 4, 5]);

    let (mut bob, replayed, joined) =
        join_with(&server, "bob", json!({"since": 2, "epoch": epoch}));
    assert_eq!(texts(&replayed), ["missed 1", "missed 2", "missed 3"]);
    let ids: Vec<u64> = replayed.iter().map(|c| c["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [3, 4, 5]);
    assert_eq!(joined["recovered"], true);
    assert_eq!(joined["last"], 5);
    // Live again, with the next id: nothing twice, nothing skipped.
    let next = say(&mut alice, &mut bob, &["after"]);
    assert_eq!(next, [6]);
    assert_eq!(bob.sync(), Vec::<Value>::new());

    // Up to date already: nothing to replay, and that is a full recovery.
    let (_, replayed, joined) = join_with(&server, "carol", json!({"since": 6, "epoch": epoch}));
    assert!(replayed.is_empty());
    assert_eq!(joined["recovered"], true);
    let stats = server.stats();
    assert_eq!(
        (
            stats["recoveries_complete"].as_u64(),
            stats["recoveries_incomplete"].as_u64()
        ),
        (Some(2), Some(0))
    );
}

#[test]
fn a_gap_wider_than_the_window_or_a_restart_is_not_a_recovery() {
    let server = ServerProcess::start(&["--history", "3"]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let (_, _, joined) = join_with(&server, "probe", json!({"history": 0}));
    let epoch = joined["epoch"].clone();
    say(&mut alice, &mut bob, &["1", "2", "3", "4", "5", "6"]);

    // Missed 2..=6 but only 4..=6 are kept: those come, and the gap is said.
    let (_, replayed, joined) = join_with(&server, "late", json!({"since": 1, "epoch": epoch}));
    assert_eq!(texts(&replayed), ["4", "5", "6"]);
    assert_eq!(joined["recovered"], false);
    // An epoch this server never had: the ids mean nothing here.
    let (_, replayed, joined) = join_with(
        &server,
        "stranger",
        json!({"since": 5, "epoch": "not-this-one", "history": 2}),
    );
    assert_eq!(texts(&replayed), ["5", "6"]);
    assert_eq!(
        (joined["recovered"].clone(), joined["epoch"].clone()),
        (json!(false), epoch.clone())
    );

    // An id above the newest this epoch gave: nothing is after it.
    let (_, replayed, joined) = join_with(&server, "ahead", json!({"since": 7, "epoch": epoch}));
    assert!(replayed.is_empty(), "{replayed:?}");
    assert_eq!(
        (joined["recovered"].clone(), joined["last"].clone()),
        (json!(false), json!(6))
    );
    // Asking for more than --history keeps: capped, so all of it is complete.
    let (_, replayed, joined) = join_with(&server, "greedy", json!({"history": 50}));
    assert_eq!(texts(&replayed), ["4", "5", "6"]);
    assert_eq!(joined["recovered"], true);

    // A restarted server has a new epoch: the old one is not recovered.
    let restarted = ServerProcess::start(&["--history", "3"]);
    let (_, replayed, joined) = join_with(&restarted, "back", json!({"since": 6, "epoch": epoch}));
    assert!(replayed.is_empty());
    assert_eq!(joined["recovered"], false);
    assert_ne!(joined["epoch"], epoch);
    assert_eq!(joined["last"], 0);
    assert_eq!(server.stats()["recoveries_incomplete"], 3);
}

#[test]
fn the_ring_keeps_within_its_byte_bound_and_history_0_turns_it_off() {
    // About three chats of 1,000 bytes fit in 4 KiB.
    let server = ServerProcess::start(&["--history", "100", "--history-bytes", "4096"]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let big: Vec<String> = (1..=8)
        .map(|i| format!("{i}{}", "x".repeat(1000)))
        .collect();
    let refs: Vec<&str> = big.iter().map(String::as_str).collect();
    say(&mut alice, &mut bob, &refs);
    let (_, replayed, _) = join_with(&server, "carol", json!({"history": 100}));
    assert_eq!(replayed.len(), 3);
    assert_eq!(replayed.last().unwrap()["id"], 8);

    let off = ServerProcess::start(&["--history", "0"]);
    let mut alice = Client::joined(&off, "alice");
    let mut bob = Client::joined(&off, "bob");
    assert_eq!(say(&mut alice, &mut bob, &["one", "two"]), [1, 2]);
    // History off: `history` is capped at 0; a recovery cannot be complete.
    let (_, replayed, joined) = join_with(&off, "carol", json!({"history": 10}));
    assert!(replayed.is_empty());
    assert_eq!(joined["last"], 2);
    let epoch = joined["epoch"].clone();
    let (_, replayed, joined) = join_with(&off, "dave", json!({"since": 1, "epoch": epoch}));
    assert!(replayed.is_empty());
    assert_eq!(
        (joined["last"].clone(), joined["recovered"].clone()),
        (json!(2), json!(false))
    );
}

#[test]
fn a_recovery_within_the_window_is_complete_at_default_flags_however_large_the_chats() {
    // 60 chats of 10 KB: 606 KB, inside --history 100 and --history-bytes
    // 1 MiB, more than half of --max-backlog (1 MiB) that a catch-up may
    // queue at once. The build before this one sent 51 and `recovered: false`.
    let server = ServerProcess::start(&[]);
    let (probe, _, joined) = join_with(&server, "probe", json!({"history": 0}));
    drop(probe);
    let epoch = joined["epoch"].clone();
    let mut witness = Client::joined(&server, "witness");
    let big = "x".repeat(10_000);
    // Six senders, ten chats each: within every one's burst of 10.
    for s in 0..6 {
        let mut sender = Client::joined(&server, &format!("sender{s}"));
        for i in 0..10 {
            sender.queue(json!({"type": "chat", "text": format!("{s}-{i} {big}")}));
        }
        sender.flush();
        for _ in 0..10 {
            witness.recv();
        }
    }
    // It comes back with a small receive buffer and reads slowly: the replay
    // is fed as it drains, and it is never taken for a slow consumer.
    let stream = connect_with("127.0.0.1", Some(4096), &server);
    let mut back = Client::joined_over_with(
        stream,
        &server,
        json!({"type": "join", "user": "back", "since": 0, "epoch": epoch}),
    );
    let mut replayed = Vec::new();
    let joined = loop {
        std::thread::sleep(std::time::Duration::from_millis(2));
        let message = back.recv();
        if message["type"] == "joined" {
            break message;
        }
        replayed.push(message["id"].as_u64().expect("an id"));
    };
    assert_eq!(replayed, (1..=60).collect::<Vec<u64>>());
    assert_eq!(
        (&joined["last"], &joined["recovered"]),
        (&json!(60), &json!(true))
    );
    let stats = server.stats();
    assert_eq!(stats["slow_consumer_closes"], 0, "{stats}");
    assert_eq!(stats["recoveries_complete"], 1, "{stats}");
}
