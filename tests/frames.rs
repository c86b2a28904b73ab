//! RFC 6455 §5 on the wire: what each bad frame gets, fragmentation,
//! control frames between fragments, UTF-8, the size limit, the close handshake.
//! Echo mode makes every accepted message visible.

mod common;

use std::time::Duration;

use common::*;

fn echo_server() -> ServerProcess {
    ServerProcess::start(&["--echo", "--max-message-size", "1000"])
}

#[test]
fn protocol_violations_get_the_right_close_code() {
    let server = echo_server();
    let long_len = header_claiming(1u64 << 63);
    let mut not_minimal = vec![FIN | TEXT, 0x80 | 126, 0, 2];
    not_minimal.extend_from_slice(&MASK);
    not_minimal.extend_from_slice(b"hi");
    let mut started = frame_bytes(TEXT, b"part", true);
    started.extend(frame_bytes(FIN | TEXT, b"new", true));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame_bytes(FIN | TEXT, b"hi", false), 1002),
        ("rsv1", frame_bytes(FIN | 0x40 | TEXT, b"hi", true), 1002),
        ("rsv3", frame_bytes(FIN | 0x10 | BINARY, b"hi", true), 1002),
        ("opcode 3", frame_bytes(FIN | 0x3, b"", true), 1002),
        ("opcode 0xB", frame_bytes(FIN | 0xB, b"", true), 1002),
        ("fragmented ping", frame_bytes(PING, b"x", true), 1002),
        (
            "126-byte ping",
            frame_bytes(FIN | PING, &[0; 126], true),
            1002,
        ),
        (
            "continuation first",
            frame_bytes(FIN | CONTINUATION, b"x", true),
            1002,
        ),
        ("new message inside a fragmented one", started, 1002),
        ("64-bit length, top bit set", long_len, 1002),
        ("length not minimally encoded", not_minimal, 1002),
        (
            "invalid UTF-8",
            frame_bytes(FIN | TEXT, b"ok\xff", true),
            1007,
        ),
        ("1-byte close", frame_bytes(FIN | CLOSE, &[3], true), 1002),
        (
            "close code 1005",
            frame_bytes(FIN | CLOSE, &1005u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close code 999",
            frame_bytes(FIN | CLOSE, &999u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close code 5000",
            frame_bytes(FIN | CLOSE, &5000u16.to_be_bytes(), true),
            1002,
        ),
        (
            "close reason not UTF-8",
            frame_bytes(FIN | CLOSE, &[0x03, 0xE8, 0xC0, 0xAF], true),
            1002,
        ),
    ];
    for (name, bytes, code) in cases {
        let mut raw = RawClient::connect(&server);
        raw.send_raw(&bytes);
        assert_eq!(raw.recv_close(), Some(code), "{name}");
        raw.expect_eof();
    }
    let stats = server.stats();
    assert_eq!(stats["closed_protocol_error"], 16);
    assert_eq!(stats["closed_invalid_utf8"], 1);
}

#[test]
fn size_limit_is_decided_from_the_header() {
    let server = echo_server();
    // A header claiming 2^62 bytes, and not one payload byte behind it.
    let mut raw = RawClient::connect(&server);
    raw.send_raw(&header_claiming(1u64 << 62));
    assert_eq!(raw.recv_close(), Some(1009));
    // Fragments count together: 600 + 600 > 1000.
    let mut raw = RawClient::connect(&server);
    raw.send_frame(BINARY, &[1; 600]);
    raw.send_raw(&frame_bytes(FIN | CONTINUATION, &[2; 600], true)[..8]);
    assert_eq!(raw.recv_close(), Some(1009));
    // Exactly the limit is echoed.
    let mut raw = RawClient::connect(&server);
    raw.send_frame(FIN | BINARY, &[7; 1000]);
    assert_eq!(raw.read_frame(), Some((FIN | BINARY, vec![7; 1000])));
    assert_eq!(server.stats()["closed_message_too_big"], 2);
}

#[test]
fn fragments_with_control_frames_between_and_utf8_split_inside_a_code_point() {
    let server = echo_server();
    let mut raw = RawClient::connect(&server);
    let text = "κόσμε €".as_bytes();
    raw.send_frame(TEXT, &text[..3]);
    raw.send_frame(FIN | PING, b"between");
    raw.send_frame(CONTINUATION, &text[3..8]);
    raw.send_frame(FIN | PONG, b"unsolicited");
    raw.send_frame(FIN | CONTINUATION, &text[8..]);
    assert_eq!(raw.read_frame(), Some((FIN | PONG, b"between".to_vec())));
    assert_eq!(raw.read_frame(), Some((FIN | TEXT, text.to_vec())));
}

#[test]
fn invalid_utf8_across_fragments_is_refused() {
    let server = echo_server();
    let mut raw = RawClient::connect(&server);
    // A 3-byte sequence cut in two, with a bad continuation byte after the cut.
    raw.send_frame(TEXT, b"ok \xe2\x82");
    raw.send_frame(FIN | CONTINUATION, b"\x28");
    assert_eq!(raw.recv_close(), Some(1007));
    // Text that ends inside a code point.
    let mut raw = RawClient::connect(&server);
    raw.send_frame(TEXT, b"ok \xe2");
    raw.send_frame(FIN | CONTINUATION, b"");
    assert_eq!(raw.recv_close(), Some(1007));
}

#[test]
fn many_frames_in_one_write_and_a_frame_split_at_every_byte() {
    let server = echo_server();
    let mut raw = RawClient::connect(&server);
    let mut burst = Vec::new();
    for i in 0..50u8 {
        burst.extend(frame_bytes(FIN | BINARY, &[i; 3], true));
    }
    raw.send_raw(&burst);
    for i in 0..50u8 {
        assert_eq!(raw.read_frame(), Some((FIN | BINARY, vec![i; 3])));
    }
    let frame = frame_bytes(FIN | TEXT, &[b'z'; 300], true);
    for byte in &frame {
        raw.send_raw(&[*byte]);
        std::thread::sleep(Duration::from_micros(200));
    }
    assert_eq!(raw.read_frame(), Some((FIN | TEXT, vec![b'z'; 300])));
}

#[test]
fn ping_gets_pong_with_the_same_payload() {
    let server = ServerProcess::start(&[]);
    let mut raw = RawClient::connect(&server);
    for payload in [&b""[..], b"hello", &[0xFF; 125]] {
        raw.send_frame(FIN | PING, payload);
        assert_eq!(raw.read_frame(), Some((FIN | PONG, payload.to_vec())));
    }
}

#[test]
fn close_handshake_echoes_valid_codes_then_ends_with_fin() {
    let server = ServerProcess::start(&[]);
    for code in [1000u16, 1001, 1003, 1007, 1011, 3000, 4999] {
        let mut raw = RawClient::connect(&server);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice("fin ✓".as_bytes());
        raw.send_frame(FIN | CLOSE, &payload);
        assert_eq!(raw.recv_close(), Some(code));
        raw.expect_eof();
    }
    // A close without a code is answered without one.
    let mut raw = RawClient::connect(&server);
    raw.send_frame(FIN | CLOSE, b"");
    assert_eq!(raw.recv_close(), None);
    raw.expect_eof();
    assert_eq!(server.stats()["closed_by_client"], 8);
}

#[test]
fn binary_messages_are_ignored_in_chat_mode() {
    let server = ServerProcess::start(&[]);
    let mut raw = RawClient::connect(&server);
    raw.send_frame(FIN | BINARY, b"\x00\x01");
    raw.send_frame(FIN | PING, b"still open");
    assert_eq!(raw.read_frame(), Some((FIN | PONG, b"still open".to_vec())));
    assert_eq!(server.stats()["ignored_binary"], 1);
}

#[test]
fn peer_that_vanishes_mid_frame_is_dropped_and_others_are_fine() {
    let server = echo_server();
    let mut raw = RawClient::connect(&server);
    raw.send_raw(&frame_bytes(FIN | TEXT, b"never finished", true)[..7]);
    drop(raw);
    let mut other = RawClient::connect(&server);
    other.send_frame(FIN | TEXT, b"fine");
    assert_eq!(other.read_frame(), Some((FIN | TEXT, b"fine".to_vec())));
    assert_eq!(server.wait_counter("dropped_without_close", 1), 1);
}
