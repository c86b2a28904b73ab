//! The HTTP side: routes, upgrade checks and their statuses, requests that
//! arrive in pieces or with frames behind them, slow handshakes, the connection limit.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn upgrade_answers_101_with_the_rfc_accept_key() {
    let server = ServerProcess::start(&[]);
    let mut raw = RawClient::connect_with(&server, upgrade_request("").as_bytes());
    let head = raw.read_head();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("\r\nupgrade: websocket"), "{head}");
    assert!(lower.contains("\r\nconnection: upgrade"), "{head}");
    assert!(
        head.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    // And an independent client library accepts the handshake.
    let mut client = Client::connect(&server);
    client.sync();
}

#[test]
fn health_and_stats() {
    let server = ServerProcess::start(&[]);
    let (status, head, body) = http_get(server.addr, "/health");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(head.contains("Content-Length: 3"));

    let _a = Client::joined(&server, "a");
    let stats = server.stats();
    for key in [
        "active_connections",
        "connections_total",
        "joined",
        "chats_relayed",
        "deliveries",
        "rate_limited",
        "slow_consumer_closes",
        "ignored_total",
        "closed_protocol_error",
        "uptime_seconds",
    ] {
        assert!(stats.get(key).is_some(), "/stats lacks {key}: {stats}");
    }
    assert_eq!(stats["joined"], 1);
    // The joined client and the /stats request itself.
    assert_eq!(stats["active_connections"], 2);
    assert_eq!(stats["http_health"], 1);
}

#[test]
fn the_page_is_served_at_the_root_with_a_strict_policy() {
    let server = ServerProcess::start(&[]);
    let (status, head, body) = http_get(server.addr, "/");
    assert_eq!(status, 200);
    assert!(
        head.contains("Content-Type: text/html; charset=utf-8"),
        "{head}"
    );
    let policy = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Security-Policy: "))
        .unwrap_or_else(|| panic!("no policy in {head}"));
    for directive in [
        "default-src 'none'",
        "script-src 'sha256-",
        "style-src 'sha256-",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'none'",
    ] {
        assert!(policy.contains(directive), "{directive} not in {policy}");
    }
    assert!(!policy.contains("unsafe"), "{policy}");
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    // Self-contained: no external script, style or image.
    assert!(body.starts_with("<!doctype html>") && body.contains("<script>"));
    assert!(!body.contains("src=") && !body.contains("href="));
    assert!(body.len() < 8 * 1024, "{} bytes", body.len());
    assert_eq!(server.stats()["http_page"], 1);
}

#[test]
fn head_answers_like_get_without_a_body() {
    let server = ServerProcess::start(&[]);
    for path in ["/", "/health", "/stats"] {
        let (status, get_head, body) = http_get(server.addr, path);
        assert_eq!(status, 200);
        let response = http_raw(
            server.addr,
            format!("HEAD {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
        );
        let (status, head, rest) = split_response(&response);
        assert_eq!(status, 200, "HEAD {path}: {response:?}");
        assert!(rest.is_empty(), "HEAD {path} sent a body: {rest:?}");
        let length = |head: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .map(str::to_string)
        };
        if path == "/stats" {
            // Its body (counters, uptime), and so its length, changes between calls.
            assert!(length(&head).is_some(), "{head}");
        } else {
            assert_eq!(length(&head), Some(body.len().to_string()), "{head}");
            assert_eq!(head, get_head, "HEAD {path}");
        }
    }
    // A refusal to HEAD has no body either; HEAD is no upgrade.
    let response = http_raw(server.addr, b"HEAD /nope HTTP/1.1\r\nHost: t\r\n\r\n");
    assert!(
        response.ends_with("\r\n\r\n") && response.starts_with("HTTP/1.1 404 "),
        "{response:?}"
    );
    let response = http_raw(
        server.addr,
        upgrade_request("").replacen("GET", "HEAD", 1).as_bytes(),
    );
    assert!(
        response.starts_with("HTTP/1.1 400 ") && response.ends_with("\r\n\r\n"),
        "{response:?}"
    );
}

#[test]
fn refusals_get_their_status() {
    let server = ServerProcess::start(&[]);
    let cases = [
        ("GET /nope HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 404),
        (
            "POST /ws HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n".to_string(),
            405,
        ),
        ("DELETE /stats HTTP/1.1\r\nHost: t\r\n\r\n".to_string(), 405),
        (
            upgrade_request("").replace("Version: 13", "Version: 8"),
            426,
        ),
        (
            upgrade_request("").replace("Sec-WebSocket-Version: 13\r\n", ""),
            426,
        ),
        (
            upgrade_request("").replace("Upgrade: websocket\r\n", ""),
            400,
        ),
        (
            upgrade_request("").replace("Connection: Upgrade", "Connection: close"),
            400,
        ),
        (upgrade_request("").replace("Host: test\r\n", ""), 400),
        (
            upgrade_request("").replace("dGhlIHNhbXBsZSBub25jZQ==", "dG9vIHNob3J0"),
            400,
        ),
        (upgrade_request("").replace("HTTP/1.1", "HTTP/1.0"), 400),
        (
            "\x16\x03\x01\x00\x05\x01\x00\x00\x01\x03\x03 TLS hello, not HTTP".to_string(),
            400,
        ),
        (
            format!("GET /ws HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000)),
            431,
        ),
    ];
    for (request, want) in cases {
        let response = http_raw(server.addr, request.as_bytes());
        let (status, head, _) = split_response(&response);
        assert_eq!(status, want, "{request:?} -> {response:?}");
        assert!(head.contains("Connection: close"), "{head}");
        if want == 426 {
            assert!(head.contains("\r\nSec-WebSocket-Version: 13"), "{head}");
        }
        if want == 405 {
            assert!(head.contains("\r\nAllow: GET, HEAD"), "{head}");
        }
    }
    let stats = server.stats();
    assert_eq!(stats["http_not_found"], 1);
    assert_eq!(stats["http_method_not_allowed"], 2);
    assert_eq!(stats["http_upgrade_required"], 2);
    assert_eq!(stats["http_bad_request"], 6);
    assert_eq!(stats["http_head_too_large"], 1);
}

#[test]
fn request_in_many_small_reads_then_frames_in_the_same_read() {
    let server = ServerProcess::start(&[]);
    let mut raw = RawClient::connect_with(&server, b"");
    // The request head one byte per write...
    let request = upgrade_request("");
    let (first, last) = request.as_bytes().split_at(request.len() - 2);
    for byte in first {
        raw.send_raw(&[*byte]);
        sleep(Duration::from_millis(1));
    }
    // ...and its last bytes in the same write as the first frames.
    let mut tail = last.to_vec();
    tail.extend(frame_bytes(
        FIN | TEXT,
        br#"{"type":"join","user":"slow"}"#,
        true,
    ));
    tail.extend(frame_bytes(FIN | TEXT, br#"{"type":"ping","ts":42}"#, true));
    raw.send_raw(&tail);
    let head = raw.read_head();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert_eq!(raw.recv_json(), json!({"type": "pong", "ts": 42}));
    assert_eq!(server.stats()["joins"], 1);
}

#[test]
fn slow_handshake_is_closed_at_the_timeout() {
    let server = ServerProcess::start(&["--handshake-timeout", "0.5"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let started = Instant::now();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    // No answer, just the end of the stream.
    let n = stream.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "got {:?}", &buf[..n]);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(450),
        "closed after {waited:?}"
    );
    assert_eq!(server.stats()["handshake_timeouts"], 1);
}

#[test]
fn connections_over_max_conns_get_503() {
    let server = ServerProcess::start(&["--max-conns", "2"]);
    let mut a = Client::joined(&server, "a");
    let mut b = Client::joined(&server, "b");
    let response = http_raw(server.addr, upgrade_request("").as_bytes());
    let (status, head, _) = split_response(&response);
    assert_eq!(status, 503, "{response}");
    assert!(head.contains("Retry-After:"), "{head}");
    // The existing clients are undisturbed.
    a.send(json!({"type": "chat", "text": "still here"}));
    assert_eq!(b.recv()["text"], "still here");
    drop((a, b));
    // Once the slots are free, connections are accepted again.
    wait_until_accepting(&server);
    assert!(server.stats()["refused_max_conns"].as_u64().unwrap() >= 1);
}
