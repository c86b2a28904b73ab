//! Arbitrary text as a chat message: never a panic; whatever the server sends
//! back is one well-formed text frame of JSON, and a relayed chat always
//! carries the sender's joined name.

#![no_main]

use libfuzzer_sys::fuzz_target;
use websocket_public_chat::chat::protocol;
use websocket_public_chat::chat::session::{ChatState, Member, Outcome};
use websocket_public_chat::websocket::frame::{self, OpCode, Role};

const NAME: &str = "fuzz \"er\" ✓";

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
    let mut member = ChatState::new(0);
    member.member = Some(Member {
        user: protocol::name_literal(NAME),
        index: 0,
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
    match ChatState::new(0).on_text(text, 0, 1) {
        Outcome::Relay(_) => panic!("relayed before join"),
        Outcome::Join { user, .. } => {
            let name: String = serde_json::from_str(&user).expect("name literal is a JSON string");
            assert!(protocol::valid_name(&name));
        }
        _ => {}
    }
});
