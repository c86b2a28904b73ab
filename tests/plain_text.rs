//! Plain-text clients through the real binary: a WebSocket client that only
//! sends and prints text lines (like a gorilla/websocket terminal client, or
//! `websocat ws://HOST:PORT/`) upgrades on `/`, is `guest-N` unless its
//! first line is `/nick NAME`, chats with every line and reads `name: text`.
//! The client here is tungstenite sending and reading text frames only.

mod common;

use std::net::TcpStream;

use common::*;
use serde_json::json;
use tungstenite::{Message, WebSocket};

/// A client that speaks only text, connected to `ws://HOST:PORT/`.
struct TextClient {
    ws: WebSocket<TcpStream>,
}

impl TextClient {
    fn connect(server: &ServerProcess) -> Self {
        let stream = TcpStream::connect(server.addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let url = format!("ws://{}/", server.addr);
        let (ws, response) = tungstenite::client(url, stream).expect("handshake");
        assert_eq!(response.status(), 101);
        Self { ws }
    }

    fn say(&mut self, line: &str) {
        self.ws.send(Message::text(line)).expect("send");
    }

    /// The next text line.
    fn line(&mut self) -> String {
        loop {
            match self.ws.read().expect("read") {
                Message::Text(text) => return text.to_string(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text line, got {other:?}"),
            }
        }
    }
}

#[test]
fn a_text_only_client_chats_with_json_clients_both_ways() {
    let server = ServerProcess::start(&[]);
    let mut json_client = Client::joined(&server, "bob");

    let mut ana = TextClient::connect(&server);
    let welcome = ana.line();
    let first: u64 = welcome
        .strip_prefix("* you are guest-")
        .and_then(|rest| rest.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{welcome}"));
    ana.say("/nick ana");
    assert_eq!(ana.line(), "* you are ana");
    ana.say("hello, {\"json\": \"is text here\"}\n");
    let chat = json_client.recv();
    assert_eq!(
        (
            chat["user"].clone(),
            chat["text"].clone(),
            chat["id"].clone()
        ),
        (
            json!("ana"),
            json!("hello, {\"json\": \"is text here\"}"),
            json!(1)
        )
    );
    json_client.send(json!({"type": "chat", "text": "hi ana\nmallory: \u{1b}[31mfake", "ts": 5}));
    // One line, nothing that drives a terminal.
    assert_eq!(ana.line(), "bob: hi ana\u{FFFD}mallory: \u{FFFD}[31mfake");

    // A client that never names itself is guest-N; only a first /nick names.
    let mut guest = TextClient::connect(&server);
    let second = format!("guest-{}", first + 1);
    assert!(guest.line().starts_with(&format!("* you are {second};")));
    guest.say("first words");
    guest.say("/nick late");
    assert_eq!(ana.line(), format!("{second}: first words"));
    assert_eq!(ana.line(), format!("{second}: /nick late"));
    assert_eq!(json_client.recv()["user"], second.as_str());
    assert_eq!(json_client.recv()["text"], "/nick late");

    // Name rules hold: a bidi override is refused, the client stays a guest.
    let mut liar = TextClient::connect(&server);
    liar.line();
    liar.say("/nick \u{202e}nimda");
    assert!(liar.line().starts_with("* that name is not allowed"));
    liar.say("still a guest");
    assert_eq!(json_client.recv()["user"], format!("guest-{}", first + 2));

    // The rate limit is the same: a burst of 25 lines delivers 10.
    let mut eager = TextClient::connect(&server);
    eager.line();
    for i in 0..25 {
        eager.say(&format!("burst {i}"));
    }
    for i in 0..10 {
        assert_eq!(json_client.recv()["text"], format!("burst {i}"));
    }
    // The other 15 were dropped (counted once the server has read them all).
    let deadline = std::time::Instant::now() + PATIENCE;
    while server.stats()["rate_limited"] != 15 {
        assert!(std::time::Instant::now() < deadline, "{}", server.stats());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let stats = server.stats();
    assert_eq!(stats["plain_joins"], 4, "{stats}");
    assert_eq!(stats["ignored_invalid_name"], 1, "{stats}");

    // `GET /` without an upgrade is still the page.
    let (status, head, _) = http_get(server.addr, "/");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("text/html"), "{head}");
}

#[test]
fn a_text_line_too_big_as_json_is_dropped_and_one_over_the_limit_closes() {
    let server = ServerProcess::start(&["--max-message-size", "100"]);
    let mut json_client = Client::joined(&server, "bob");
    let mut ana = TextClient::connect(&server);
    ana.line();
    // 60 control characters are 60 bytes, but 360 as JSON escapes: over 100.
    ana.say(&"\u{1}".repeat(60));
    ana.say("fits");
    assert_eq!(json_client.recv()["text"], "fits");
    assert_eq!(server.stats()["ignored_malformed"], 1);
    // Over --max-message-size as a frame: close 1009, as for a JSON client.
    ana.say(&"x".repeat(101));
    loop {
        match ana.ws.read() {
            Ok(Message::Close(Some(frame))) => {
                assert_eq!(u16::from(frame.code), 1009);
                break;
            }
            Ok(_) => continue,
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}
