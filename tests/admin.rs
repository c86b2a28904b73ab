//! The admin API and moderation through the real binary: every endpoint and
//! every mistake, kicks (4001), bans (403 and 4003, IPv4-mapped forms),
//! mutes, notices to JSON and plain-text clients, a burst of admin calls
//! beside the relay. Clients: tungstenite and raw HTTP over TCP.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use tungstenite::Message;

/// A server with the admin API on a private listener; its token file.
fn start(extra: &[&str]) -> (ServerProcess, TokenFile) {
    let token = TokenFile::new();
    let args = [&token.flags()[..], extra].concat();
    (ServerProcess::start(&args), token)
}

fn private(server: &ServerProcess) -> SocketAddr {
    server.metrics.expect("a private listener")
}

/// A start that must fail: its exit status and stderr (`--duration` bounds it if it does not).
fn start_failing(args: &[&str]) -> (std::process::ExitStatus, String) {
    let out = std::process::Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--duration", "5"])
        .args(args)
        .output()
        .expect("run the server");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_mistake_gets_its_status_and_nothing_else() {
    let (server, _token) = start(&[]);
    let at = private(&server);
    let kick = Some(r#"{"user":"alice"}"#);
    // No token, a wrong one, another scheme: 401, counted.
    for auth in [None, Some("wrong-token-0123456789"), Some("")] {
        let (status, head, body) = admin_call(at, "POST", "/admin/kick", auth, kick);
        assert_eq!(status, 401, "{head}");
        assert!(head.contains("WWW-Authenticate: Bearer"), "{head}");
        assert!(body.contains("Bearer"), "{body}");
    }
    let basic = http_raw(
        at,
        b"GET /admin/members HTTP/1.1\r\nAuthorization: Basic eDp5\r\n\r\n",
    );
    assert_eq!(split_response(&basic).0, 401);
    // On the public port the admin API does not exist, token or not.
    assert_eq!(
        admin_call(
            server.addr,
            "GET",
            "/admin/members",
            Some(ADMIN_TOKEN),
            None
        )
        .0,
        404
    );
    let t = Some(ADMIN_TOKEN);
    let cases: &[(&str, &str, Option<&str>, u16)] = &[
        ("GET", "/admin/nothing", None, 404),
        ("GET", "/admin", None, 404),
        ("POST", "/admin/members", Some("{}"), 405),
        ("GET", "/admin/kick", None, 405),
        ("PUT", "/admin/ban", Some("{}"), 405),
        ("POST", "/admin/kick", Some("{"), 400),
        (
            "POST",
            "/admin/kick",
            Some(r#"{"user":"alice","extra":1}"#),
            400,
        ),
        ("POST", "/admin/kick", Some(r#"{"user":""}"#), 400),
        ("POST", "/admin/kick", Some(r#"{"user":"nobody"}"#), 404),
        (
            "POST",
            "/admin/ban",
            Some(r#"{"address":"10.0.0.0/40","seconds":5}"#),
            400,
        ),
        (
            "POST",
            "/admin/ban",
            Some(r#"{"address":"10.0.0.1","seconds":0}"#),
            400,
        ),
        (
            "DELETE",
            "/admin/ban",
            Some(r#"{"address":"10.0.0.1"}"#),
            404,
        ),
        ("POST", "/admin/mute", Some(r#"{"user":"bob"}"#), 400),
        ("DELETE", "/admin/mute", Some(r#"{"user":"bob"}"#), 404),
        ("POST", "/admin/announce", Some(r#"{"text":""}"#), 400),
        (
            "POST",
            "/admin/announce",
            Some(r#"{"text":"a\u0007b"}"#),
            400,
        ),
    ];
    for &(method, path, body, want) in cases {
        let (status, head, answer) = admin_call(at, method, path, t, body);
        assert_eq!(status, want, "{method} {path} {body:?}: {head}\n{answer}");
        let error: Value = serde_json::from_str(&answer).expect("a JSON error");
        assert!(error["error"].is_string(), "{answer}");
        if want == 405 {
            assert!(head.contains("Allow: "), "{head}");
        }
    }
    let raw = |request: String| split_response(&http_raw(at, request.as_bytes())).0;
    let auth = format!("Authorization: Bearer {ADMIN_TOKEN}\r\n");
    // Not JSON (415), too large (413, refused before it is read), no length (411).
    assert_eq!(
        raw(format!(
            "POST /admin/kick HTTP/1.1\r\n{auth}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{{}}"
        )),
        415
    );
    assert_eq!(
        raw(format!(
            "POST /admin/announce HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
        )),
        413
    );
    assert_eq!(
        raw(format!(
            "POST /admin/kick HTTP/1.1\r\n{auth}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )),
        411
    );
    // A body that arrives in pieces, after the head, is read whole.
    let body = r#"{"text":"in pieces"}"#;
    let mut stream = TcpStream::connect(at).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST /admin/announce HTTP/1.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    for piece in body.as_bytes().chunks(3) {
        std::thread::sleep(Duration::from_millis(5));
        stream.write_all(piece).unwrap();
    }
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(split_response(&answer).0, 200, "{answer}");
    let stats = server.stats();
    assert_eq!(stats["admin_unauthorized"], 4);
    assert_eq!(stats["admin_refused"], cases.len() as u64 + 3);
    assert_eq!(stats["admin_announces"], 1);
    // HEAD: the refusal's head alone.
    let (status, _, body) = admin_call(at, "HEAD", "/admin/members", t, None);
    assert_eq!((status, body.as_str()), (405, ""));
    // At most 1,024 bans (409 past that).
    for i in 0..1024 {
        let ban = format!(
            r#"{{"address":"10.9.{}.{}","seconds":60}}"#,
            i / 256,
            i % 256
        );
        assert_eq!(admin_call(at, "POST", "/admin/ban", t, Some(&ban)).0, 200);
    }
    let (status, _, body) = admin_call(
        at,
        "POST",
        "/admin/ban",
        t,
        Some(r#"{"address":"10.8.0.1","seconds":60}"#),
    );
    assert_eq!(status, 409, "{body}");
    // The public port still works, and the server is whole.
    Client::joined(&server, "alice");
}

#[test]
fn without_a_token_file_there_is_no_admin_api() {
    let server = ServerProcess::start(&["--private-address", "127.0.0.1:0"]);
    let (status, _, _) = admin_call(
        private(&server),
        "GET",
        "/admin/members",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(status, 404);
    let bad = TokenFile::holding("short\n");
    let path = bad.0.to_str().unwrap();
    let (status, said) = start_failing(&[
        "--private-address",
        "127.0.0.1:0",
        "--admin-token-file",
        path,
    ]);
    assert!(
        !status.success() && said.contains("16 to 256 visible ASCII characters"),
        "{said}"
    );
    let (status, said) = start_failing(&["--admin-token-file", path]);
    assert!(
        !status.success() && said.contains("needs --private-address"),
        "{said}"
    );
}

#[test]
fn a_kick_closes_every_connection_of_the_name_with_4001_and_its_reason() {
    let (server, _token) = start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let mut bob_again = Client::joined(&server, "bob");
    let members = admin_ok(&server, "GET", "/admin/members", None);
    assert_eq!(members["count"], 3);
    let entry = &members["members"][1];
    assert_eq!(entry["user"], "bob");
    assert_eq!(entry["address"], "127.0.0.1");
    assert_eq!(entry["client"], "json");
    assert_eq!(entry["muted"], false);
    assert!(entry["joined_seconds_ago"].as_u64().is_some());
    let done = admin_ok(
        &server,
        "POST",
        "/admin/kick",
        Some(json!({"user": "bob", "reason": "insults"})),
    );
    assert_eq!(done, json!({"kicked": 2}));
    for bob in [&mut bob, &mut bob_again] {
        assert_eq!(
            bob.recv_close_frame(),
            Some((4001, "kicked by the operator: insults".into()))
        );
    }
    // Nothing of bob's is relayed after (his socket is closed), and the room goes on.
    let mut carol = Client::joined(&server, "carol");
    carol.send(json!({"type": "chat", "text": "hello"}));
    let seen = alice.sync();
    assert!(seen.iter().all(|m| m["user"] != "bob"), "{seen:?}");
    let names: Vec<Value> = admin_ok(&server, "GET", "/admin/members", None)["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["user"].clone())
        .collect();
    assert_eq!(names, [json!("alice"), json!("carol")]);
    let stats = server.stats();
    assert_eq!(
        (
            stats["closed_by_kick"].as_u64(),
            stats["admin_kicks"].as_u64()
        ),
        (Some(2), Some(1))
    );
    server.signal(libc::SIGTERM);
    let (_, said) = server.wait_exit_said(PATIENCE);
    assert!(
        said.contains(
            r#"admin: kick {"user":"bob","reason":"insults"} from 127.0.0.1: {"kicked":2}"#
        ),
        "{said}"
    );
}

#[test]
fn a_ban_refuses_the_address_until_it_ends_and_matches_mapped_forms() {
    // A dual-stack style listener: peers are seen as ::ffff:127.0.0.1.
    let (server, _token) = start(&["--host", "::ffff:127.0.0.1"]);
    let mut alice = Client::joined(&server, "alice");
    let mut lurker = Client::connect(&server); // upgraded, never joined
    let done = admin_ok(
        &server,
        "POST",
        "/admin/ban",
        Some(json!({"address": "127.0.0.0/8", "seconds": 2, "reason": "flooding"})),
    );
    assert_eq!(done["closed"], 2, "{done}");
    for client in [&mut alice, &mut lurker] {
        assert_eq!(
            client.recv_close_frame(),
            Some((4003, "banned by the operator: flooding".into()))
        );
    }
    let bans = admin_ok(&server, "GET", "/admin/bans", None);
    assert_eq!(bans["bans"][0]["address"], "127.0.0.0/8");
    assert!(
        (1..=2).contains(&bans["bans"][0]["seconds_left"].as_u64().unwrap()),
        "{bans}"
    );
    // Upgrades and the page: 403 with the reason, counted.
    let (status, head, body) =
        split_response(&http_raw(server.addr, upgrade_request("").as_bytes()));
    assert_eq!(status, 403, "{head}");
    assert!(
        body.contains("banned from the chat") && body.contains("flooding"),
        "{body}"
    );
    assert_eq!(http_get(server.addr, "/").0, 403);
    assert_eq!(server.stats()["refused_banned"], 2);
    // Until the ban ends.
    let deadline = Instant::now() + PATIENCE;
    while http_get(server.addr, "/").0 == 403 {
        assert!(Instant::now() < deadline, "the ban did not end");
        std::thread::sleep(Duration::from_millis(100));
    }
    Client::joined(&server, "alice");
    assert_eq!(
        admin_ok(&server, "GET", "/admin/bans", None),
        json!({"bans": []})
    );
    // A block given in its IPv4-mapped form is the IPv4 block; lifting it lets them in at once.
    admin_ok(
        &server,
        "POST",
        "/admin/ban",
        Some(json!({"address": "::ffff:127.0.0.1/128", "seconds": 60})),
    );
    assert_eq!(http_get(server.addr, "/").0, 403);
    admin_ok(
        &server,
        "DELETE",
        "/admin/ban",
        Some(json!({"address": "127.0.0.1"})),
    );
    assert_eq!(http_get(server.addr, "/").0, 200);
}

#[test]
fn a_muted_member_stays_but_its_chats_reach_nobody() {
    let (server, _token) = start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let done = admin_ok(
        &server,
        "POST",
        "/admin/mute",
        Some(json!({"user": "bob", "seconds": 60})),
    );
    assert_eq!(done, json!({"muted": "bob", "seconds": 60, "members": 1}));
    for i in 0..3 {
        bob.send(json!({"type": "chat", "text": format!("spam {i}")}));
    }
    bob.sync(); // bob read and was answered: not told anything.
    alice.send(json!({"type": "chat", "text": "hi bob"}));
    assert_eq!(alice.sync(), Vec::<Value>::new());
    let got = bob.sync();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["text"], "hi bob");
    // A muted name that joins again is muted too; the members list says so.
    let mut bob_again = Client::joined(&server, "bob");
    bob_again.send(json!({"type": "chat", "text": "me again"}));
    bob_again.sync();
    assert_eq!(alice.sync(), Vec::<Value>::new());
    assert_eq!(
        admin_ok(&server, "GET", "/admin/members", None)["members"][1]["muted"],
        true
    );
    // So is a plain-text client that takes the name.
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let (mut plain, _) =
        tungstenite::client(format!("ws://{}/", server.addr), stream).expect("plain handshake");
    plain.read().unwrap(); // "* you are guest-N; ..."
    plain.send(Message::text("/nick bob")).unwrap();
    assert_eq!(plain.read().unwrap().to_text().unwrap(), "* you are bob");
    plain.send(Message::text("plain spam")).unwrap();
    bob_again.sync();
    let deadline = Instant::now() + PATIENCE;
    while server.stats()["muted_dropped"] != 5 {
        assert!(
            Instant::now() < deadline,
            "the plain-text bob was not muted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(alice.sync(), Vec::<Value>::new());
    drop(plain);
    // Lifted: relayed again.
    admin_ok(
        &server,
        "DELETE",
        "/admin/mute",
        Some(json!({"user": "bob"})),
    );
    bob.send(json!({"type": "chat", "text": "sorry"}));
    bob.sync();
    let seen = alice.sync();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["text"], "sorry");
    // A mute that ends by itself.
    admin_ok(
        &server,
        "POST",
        "/admin/mute",
        Some(json!({"user": "bob", "seconds": 1})),
    );
    bob.send(json!({"type": "chat", "text": "muted"}));
    bob.sync();
    std::thread::sleep(Duration::from_millis(1100));
    bob.send(json!({"type": "chat", "text": "free"}));
    bob.sync();
    let seen: Vec<Value> = alice
        .sync()
        .into_iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(seen, [json!("free")]);
}

#[test]
fn a_notice_reaches_json_and_plain_text_clients_and_no_client_can_send_one() {
    let (server, _token) = start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let (mut plain, _) =
        tungstenite::client(format!("ws://{}/", server.addr), stream).expect("plain handshake");
    let first = plain.read().unwrap(); // "* you are guest-N; ..."
    assert!(first.to_text().unwrap().starts_with("* you are"));
    // A client's own "notice" is not one: ignored, relayed to nobody.
    let mut mallory = Client::joined(&server, "mallory");
    mallory.send(json!({"type": "notice", "text": "fake"}));
    mallory.sync();
    // Names cannot begin with "*", so no chat line can pass for the server's.
    plain.send(Message::text("/nick *server")).unwrap();
    assert_eq!(
        plain.read().unwrap().to_text().unwrap(),
        "* that name is not allowed (docs/protocol.md, Names)"
    );
    let done = admin_ok(
        &server,
        "POST",
        "/admin/announce",
        Some(json!({"text": "restart at noon"})),
    );
    assert_eq!(done, json!({"notified": 3}));
    assert_eq!(
        alice.sync(),
        [json!({"type": "notice", "room": "public", "text": "restart at noon"})]
    );
    assert_eq!(
        plain.read().unwrap().to_text().unwrap(),
        "* notice: restart at noon"
    );
    // Not kept in the history: a newcomer asking for it gets no notice.
    let mut newcomer = Client::joined_over_with(
        TcpStream::connect(server.addr).unwrap(),
        &server,
        json!({"type": "join", "user": "newcomer", "history": 50}),
    );
    let replay = newcomer.sync();
    assert!(replay.iter().all(|m| m["type"] != "notice"), "{replay:?}");
    let stats = server.stats();
    assert_eq!(
        (
            stats["notices_sent"].as_u64(),
            stats["ignored_unknown_type"].as_u64()
        ),
        (Some(3), Some(1))
    );
}

#[test]
fn a_burst_of_admin_calls_does_not_disturb_the_relay() {
    let (server, _token) = start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = Client::joined(&server, "bob");
    let at = private(&server);
    let calls = std::thread::spawn(move || {
        for i in 0..300 {
            let (status, _, body) = match i % 3 {
                0 => admin_call(at, "GET", "/admin/members", Some(ADMIN_TOKEN), None),
                1 => admin_call(
                    at,
                    "POST",
                    "/admin/mute",
                    Some(ADMIN_TOKEN),
                    Some(r#"{"user":"nobody","seconds":60}"#),
                ),
                _ => admin_call(
                    at,
                    "DELETE",
                    "/admin/mute",
                    Some(ADMIN_TOKEN),
                    Some(r#"{"user":"nobody"}"#),
                ),
            };
            assert_eq!(status, 200, "{body}");
        }
    });
    // Two senders taking turns, each within the rate limit (10/s).
    let mut carol = Client::joined(&server, "carol");
    let started = Instant::now();
    let mut received = 0;
    for round in 0..100 {
        let sender = if round % 2 == 0 {
            &mut alice
        } else {
            &mut carol
        };
        sender.send(json!({"type": "chat", "text": format!("m{round}")}));
        let got = bob.recv();
        assert_eq!(got["text"], format!("m{round}"));
        received += 1;
        std::thread::sleep(Duration::from_millis(55));
    }
    calls.join().expect("the admin calls");
    assert_eq!(received, 100);
    assert!(started.elapsed() < PATIENCE * 3);
    let stats = server.stats();
    assert_eq!(stats["admin_requests"], 300);
    assert_eq!(
        (
            stats["admin_mutes"].as_u64(),
            stats["admin_unmutes"].as_u64()
        ),
        (Some(100), Some(100))
    );
    assert_eq!(
        (
            stats["chats_relayed"].as_u64(),
            stats["deliveries"].as_u64()
        ),
        (Some(100), Some(200))
    );
    assert_eq!(stats["muted_dropped"], 0);
    assert_eq!(stats["rate_limited"], 0);
}
