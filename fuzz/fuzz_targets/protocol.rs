//! Arbitrary text as a chat message: never a panic; whatever the server sends
//! back is one well-formed text frame of JSON, and a relayed chat always
//! carries the sender's joined name. The same text from a plain-text client
//! (a chat or a /nick), the same bytes as a PROXY protocol header, and as
//! the body of each admin command (what instances also read from Redis):
//! never a panic, and a body taken comes back the same from its own JSON.

#![no_main]

use libfuzzer_sys::fuzz_target;
use websocket_public_chat::chat::protocol;
use websocket_public_chat::chat::session::{ChatState, Member, Outcome};
use websocket_public_chat::http::admin::{self, Endpoint};
use websocket_public_chat::http::proxy;
use websocket_public_chat::websocket::frame::{self, OpCode, Role};

const NAME: &str = "fuzz \"er\" ✓";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn json_payload(frame_bytes: &[u8]) -> serde_json::Value {
    let (header, len) = frame::parse_header(frame_bytes, Role::Client)
        .expect("valid frame")
        .expect("complete frame");
    assert_eq!(header.opcode, OpCode::Text);
    assert!(header.fin && header.mask.is_none());
    assert_eq!(header.payload_len as usize, frame_bytes.len() - len);
    serde_json::from_slice(&frame_bytes[len..]).expect("the server sends JSON")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut member = ChatState::new(0, LOOPBACK);
    member.member = Some(Member {
        user: protocol::name_literal(NAME),
        index: 0,
        catching_up: false,
        muted: false,
        joined_at: 0,
        watching: None,
    });
    match member.on_text(text, 0, 1) {
        Outcome::Relay(frame) => {
            let chat = json_payload(&frame);
            assert_eq!(chat["type"], "chat");
            assert_eq!(chat["user"], NAME);
            assert!(chat["text"].is_string());
        }
        Outcome::Reply(frame) => assert_eq!(json_payload(&frame)["type"], "pong"),
        Outcome::Join { .. } => panic!("a joined connection joined again"),
        _ => {}
    }
    // A connection that has not joined never relays; a join gets a valid name.
    match ChatState::new(0, LOOPBACK).on_text(text, 0, 1) {
        Outcome::Relay(_) => panic!("relayed before join"),
        Outcome::Join { user, .. } => {
            let name: String = serde_json::from_str(&user).expect("name literal is a JSON string");
            assert!(protocol::valid_name(&name));
        }
        _ => {}
    }
    // A plain-text client: its message is a chat (JSON out, its text as
    // sent) or a name; never a join, a reply or anything else.
    let mut plain = ChatState::plain(0, LOOPBACK, 4096);
    plain.member = Some(Member {
        user: protocol::name_literal(NAME),
        index: 0,
        catching_up: false,
        muted: false,
        joined_at: 0,
        watching: None,
    });
    match plain.on_text(text, 0, 1) {
        Outcome::Relay(frame) => {
            let chat = json_payload(&frame);
            let sent = text.strip_suffix('\n').unwrap_or(text);
            assert_eq!(chat["text"], sent.strip_suffix('\r').unwrap_or(sent));
            // What plain-text clients are sent: one line, nothing hidden.
            let header = frame::parse_header(&frame, Role::Client).ok().flatten();
            let line = header.and_then(|(_, len)| protocol::plain_line(&frame[len..]));
            if let Some(line) = line {
                let (_, len) = frame::parse_header(&line, Role::Client)
                    .ok()
                    .flatten()
                    .expect("a line is one frame");
                let shown = std::str::from_utf8(&line[len..]).expect("a line is UTF-8");
                assert!(!shown.contains('\n') && !shown.contains('\u{1b}'), "{shown:?}");
            }
        }
        Outcome::Rename(user) => {
            let name: String = serde_json::from_str(&user).expect("name literal is a JSON string");
            assert!(protocol::valid_name(&name));
        }
        Outcome::RateLimited | Outcome::Ignored(_) => {}
        other => panic!("a plain-text message gave {other:?}"),
    }
    // The PROXY protocol reader: never longer than the input, the same answer
    // with more bytes behind a complete header.
    if let proxy::ProxyHeader::Present { len, .. } = proxy::proxy_header(data) {
        assert!(len <= data.len());
        let mut more = data.to_vec();
        more.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert!(matches!(proxy::proxy_header(&more), proxy::ProxyHeader::Present { len: l, .. } if l == len));
    }
    for endpoint in [
        Endpoint::Kick,
        Endpoint::Ban,
        Endpoint::Unban,
        Endpoint::Mute,
        Endpoint::Unmute,
        Endpoint::Announce,
    ] {
        if let Ok(command) = admin::command(endpoint, data) {
            assert_eq!(admin::command(endpoint, command.body().as_bytes()), Ok(command));
        }
    }
});
