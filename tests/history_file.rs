//! `--history-file` through the real binary: a clean restart keeps the
//! epoch, the ids and the conversation; the file is taken once; every kind
//! of bad file is refused with one line and the server starts fresh.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use serde_json::{Value, json};

fn chat(text: &str) -> Value {
    json!({"type": "chat", "text": text})
}

/// A fresh folder for this test's history file.
fn folder(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("history-file")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a folder");
    dir
}

fn start(file: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--history-file", file.to_str().expect("a UTF-8 path")];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// SIGTERM, then the exit (the file is written at the end of the stop).
fn stop(server: ServerProcess) -> String {
    server.signal(libc::SIGTERM);
    let (status, said) = server.wait_exit_said(PATIENCE);
    assert!(status.success(), "{status}");
    said
}

fn said(server: &ServerProcess) -> String {
    std::fs::read_to_string(&server.log).unwrap_or_default()
}

fn texts(chats: &[Value]) -> Vec<&str> {
    chats.iter().map(|c| c["text"].as_str().unwrap()).collect()
}

#[test]
fn a_clean_restart_keeps_the_epoch_the_ids_and_the_conversation() {
    let dir = folder("restart");
    let file = dir.join("room.json");
    let server = start(&file, &[]);
    let mut alice = Client::joined(&server, "alice");
    let (mut bob, _, joined) = join_with(&server, "bob", json!({"history": 0}));
    let epoch = joined["epoch"].as_str().unwrap().to_string();
    for text in ["one", "two"] {
        alice.send(chat(text));
        assert_eq!(bob.recv()["text"], text);
    }
    // Bob goes away having seen id 2; three more are said while he is away.
    bob.ws.close(None).ok();
    for text in ["three", "four", "five"] {
        alice.send(chat(text));
        alice.sync();
    }
    let log = stop(server);
    assert!(log.contains("5 chats up to id 5 kept in"), "{log}");
    assert!(file.exists());

    let server = start(&file, &[]);
    assert!(!file.exists(), "the file is taken at start");
    assert!(
        said(&server).contains("5 chats up to id 5 of epoch"),
        "{}",
        said(&server)
    );
    // A newcomer sees the conversation from before the restart, same ids.
    let (_, replayed, joined) = join_with(&server, "carol", json!({"history": 10}));
    assert_eq!(texts(&replayed), ["one", "two", "three", "four", "five"]);
    assert_eq!(
        replayed[2],
        json!({"type": "chat", "room": "public", "id": 3, "user": "alice", "text": "three"})
    );
    assert_eq!(
        joined,
        json!({"type": "joined", "room": "public", "epoch": epoch, "last": 5, "recovered": true})
    );
    // Bob, away across the restart, gets exactly what he missed, recovered.
    let (_, replayed, joined) = join_with(&server, "bob", json!({"since": 2, "epoch": epoch}));
    assert_eq!(texts(&replayed), ["three", "four", "five"]);
    assert_eq!(joined["recovered"], true);
    // Alice, who saw everything, misses nothing; the ids carry on.
    let (mut alice, replayed, joined) =
        join_with(&server, "alice", json!({"since": 5, "epoch": epoch}));
    assert!(replayed.is_empty());
    assert_eq!(joined["recovered"], true);
    let (mut dave, _, _) = join_with(&server, "dave", json!({"history": 0}));
    alice.send(chat("six"));
    let six = dave.recv();
    assert_eq!((six["id"].as_u64(), &six["text"]), (Some(6), &json!("six")));

    // A crash (no clean stop) leaves no file: the next start is a new epoch,
    // never the older room under the same one.
    on_purpose("SIGKILL to a server with --history-file");
    server.signal(libc::SIGKILL);
    let _ = server.wait_exit(PATIENCE);
    assert!(!file.exists());
    let server = start(&file, &[]);
    assert!(said(&server).contains("a new epoch"), "{}", said(&server));
    let (_, replayed, joined) = join_with(&server, "bob", json!({"since": 6, "epoch": epoch}));
    assert!(replayed.is_empty());
    assert_ne!(joined["epoch"], json!(epoch));
    assert_eq!(
        (joined["last"].as_u64(), &joined["recovered"]),
        (Some(0), &json!(false))
    );
}

/// A good file of chats 1..=3 by alice, as a clean stop writes it.
fn good_file(dir: &Path) -> String {
    let file = dir.join("good.json");
    let server = start(&file, &[]);
    let mut alice = Client::joined(&server, "alice");
    for text in ["a", "b", "c"] {
        alice.send(json!({"type": "chat", "text": text, "ts": 1}));
        alice.sync();
    }
    stop(server);
    std::fs::read_to_string(&file).expect("the file")
}

#[test]
fn every_kind_of_bad_file_is_refused_and_the_server_starts_fresh() {
    let dir = folder("bad");
    let good = good_file(&dir);
    assert!(
        good.contains(r#""epoch":""#) && good.contains(r#""id":3"#),
        "{good}"
    );
    let epoch = good.split(r#""epoch":""#).nth(1).unwrap()[..16].to_string();
    let big = format!("\"{}\"", "x".repeat(200));
    let cases: Vec<(&str, String, &[&str], &str)> = vec![
        (
            "truncated",
            good[..good.len() / 2].to_string(),
            &[],
            "not a history file",
        ),
        (
            "an id past 2^53",
            format!(
                "{{\"websocket-public-chat-history\":1,\"epoch\":\"{epoch}\",\"last\":18446744073709551615,\"chats\":[]}}"
            ),
            &[],
            "ids",
        ),
        (
            "another version",
            good.replace("history\":1", "history\":9"),
            &[],
            "another version",
        ),
        (
            "a bad epoch",
            good.replace(&epoch, "../../etc/passwd"),
            &[],
            "epoch",
        ),
        (
            "more chats than --history",
            good.clone(),
            &["--history", "2"],
            "do not fit",
        ),
        (
            "a forged name",
            good.replace("\"alice\"", "\"\\u202eevil\""),
            &[],
            "a chat in it",
        ),
        (
            "an oversized text",
            good.replacen("\"a\"", &big, 1),
            &["--max-message-size", "100"],
            "a chat in it",
        ),
        (
            "a text that is not a string",
            good.replacen("\"text\":\"b\"", "\"text\":{}", 1),
            &[],
            "a chat in it",
        ),
        (
            "ids out of order",
            good.replace("\"id\":2", "\"id\":9"),
            &[],
            "ids",
        ),
        (
            "last beyond the chats",
            good.replace("\"last\":3", "\"last\":7"),
            &[],
            "ids",
        ),
        (
            "larger than --history-bytes",
            format!("{good}{}", " ".repeat(10_000)),
            &["--history-bytes", "2048"],
            "larger",
        ),
    ];
    for (what, content, flags, why) in cases {
        let file = dir.join("bad.json");
        std::fs::write(&file, &content).unwrap();
        on_purpose(&format!("a history file with {what}"));
        let server = start(&file, flags);
        let log = said(&server);
        assert!(
            log.contains("refused") && log.contains(why),
            "{what}: {log}"
        );
        assert_eq!(log.lines().count(), 1, "{what}: one line: {log}");
        assert!(!file.exists(), "{what}: a refused file is not kept either");
        let (mut carol, replayed, joined) = join_with(&server, "carol", json!({"history": 10}));
        assert!(replayed.is_empty(), "{what}: nothing of it relayed");
        assert_ne!(joined["epoch"], json!(epoch), "{what}: a new epoch");
        // The room works.
        let mut dave = Client::joined(&server, "dave");
        carol.send(chat("hello"));
        assert_eq!(dave.recv()["id"], 1, "{what}");
        drop(server);
    }
}

#[test]
fn what_is_not_a_history_file_is_left_alone() {
    let dir = folder("not-ours");
    // A file of someone else's (a typo in the path), a folder, a FIFO (which
    // would block a plain open): each left as it is, and not written at the stop.
    let victim = dir.join("notes.txt");
    std::fs::write(&victim, "someone's notes\n").unwrap();
    let a_folder = dir.join("a-folder");
    std::fs::create_dir_all(&a_folder).unwrap();
    let fifo = dir.join("a-fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, says) in [
        (&victim, "is not a history file: left alone"),
        (&a_folder, "is not a regular file: left alone"),
        (&fifo, "is not a regular file: left alone"),
    ] {
        on_purpose(&format!("--history-file {}", path.display()));
        let server = start(path, &[]);
        assert!(said(&server).contains(says), "{}", said(&server));
        let mut alice = Client::joined(&server, "alice");
        alice.send(chat("hello"));
        alice.sync();
        let log = stop(server);
        assert!(!log.contains("kept in"), "{log}");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "someone's notes\n"
    );
    assert!(a_folder.is_dir());
    // A path whose folder does not exist stops the server at start, not at
    // the next deploy.
    let output = std::process::Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--history-file"])
        .arg(dir.join("missing").join("room.json"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot start: --history-file"), "{stderr}");
}

#[test]
fn a_server_that_cannot_start_leaves_the_file_for_the_next_attempt() {
    let dir = folder("busy-port");
    let good = good_file(&dir);
    let file = dir.join("room.json");
    std::fs::write(&file, &good).unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = holder.local_addr().unwrap().port().to_string();
    on_purpose("a server started on a port in use");
    let status = std::process::Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", &port, "--history-file"])
        .arg(&file)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), good);
    drop(holder);
    std::thread::sleep(Duration::from_millis(10));
}
