//! Client addresses behind a proxy, through the real binary, with raw
//! sockets: from a `--trusted-proxy` peer the PROXY header (v1, v2) or the
//! last X-Forwarded-For hop is the client, and `--max-conns-per-ip` counts
//! that; from anyone else both are ignored and a PROXY header is refused.
//! Also `--metrics-address`: operators' endpoints on their own listener.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::*;

/// An upgrade request, with `before` sent ahead of it and `extra` headers.
fn upgrade_with(server: &ServerProcess, before: &[u8], extra: &str) -> (TcpStream, u16) {
    let mut stream = TcpStream::connect(server.addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let request = [before, upgrade_request(extra).as_bytes()].concat();
    stream.write_all(&request).expect("send");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).expect("status line");
    let status = String::from_utf8_lossy(&head[9..12])
        .parse()
        .expect("status");
    (stream, status)
}

fn v1(client: &str) -> Vec<u8> {
    format!("PROXY TCP4 {client} 127.0.0.1 40000 80\r\n").into_bytes()
}

fn v2(client: [u8; 4]) -> Vec<u8> {
    let mut header = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    header.extend_from_slice(&[0x21, 0x11, 0, 12]);
    header.extend_from_slice(&client);
    header.extend_from_slice(&[127, 0, 0, 1, 0x9c, 0x40, 0, 80]);
    header
}

#[test]
fn behind_a_trusted_proxy_the_cap_counts_each_client() {
    let server =
        ServerProcess::start(&["--trusted-proxy", "127.0.0.0/8", "--max-conns-per-ip", "1"]);
    // PROXY v1: one each for two clients; a second from the first is over.
    let (_a, status) = upgrade_with(&server, &v1("192.0.2.1"), "");
    assert_eq!(status, 101);
    let (_b, status) = upgrade_with(&server, &v1("192.0.2.2"), "");
    assert_eq!(status, 101);
    let (_, status) = upgrade_with(&server, &v1("192.0.2.1"), "");
    assert_eq!(status, 429);
    // PROXY v2 names the same clients.
    let (_, status) = upgrade_with(&server, &v2([192, 0, 2, 2]), "");
    assert_eq!(status, 429);
    let (_c, status) = upgrade_with(&server, &v2([192, 0, 2, 3]), "");
    assert_eq!(status, 101);
    // No PROXY header: the last X-Forwarded-For hop.
    let xff = "X-Forwarded-For: 203.0.113.9, 198.51.100.4\r\n";
    let (_d, status) = upgrade_with(&server, b"", xff);
    assert_eq!(status, 101);
    let (_, status) = upgrade_with(&server, b"", "X-Forwarded-For: 198.51.100.4\r\n");
    assert_eq!(status, 429);
    let (_e, status) = upgrade_with(
        &server,
        b"",
        "X-Forwarded-For: 198.51.100.4, 198.51.100.5\r\n",
    );
    assert_eq!(status, 101);
    // A bad header from a trusted proxy is refused too.
    let (_, status) = upgrade_with(&server, b"PROXY TCP4 nonsense\r\n", "");
    assert_eq!(status, 400);
    let stats = server.stats();
    assert_eq!(stats["refused_per_ip"], 3, "{stats}");
    assert_eq!(stats["refused_proxy_header"], 1, "{stats}");
}

#[test]
fn from_an_untrusted_peer_proxy_headers_are_refused_and_forwarded_for_ignored() {
    let server =
        ServerProcess::start(&["--trusted-proxy", "10.0.0.0/8", "--max-conns-per-ip", "2"]);
    let (_, status) = upgrade_with(&server, &v1("192.0.2.1"), "");
    assert_eq!(status, 400);
    let (_, status) = upgrade_with(&server, &v2([192, 0, 2, 1]), "");
    assert_eq!(status, 400);
    // X-Forwarded-For from an untrusted peer changes nothing: all are 127.0.0.1.
    let (_a, status) = upgrade_with(&server, b"", "X-Forwarded-For: 192.0.2.1\r\n");
    assert_eq!(status, 101);
    let (b, status) = upgrade_with(&server, b"", "X-Forwarded-For: 192.0.2.2\r\n");
    assert_eq!(status, 101);
    let (_, status) = upgrade_with(&server, b"", "X-Forwarded-For: 192.0.2.3\r\n");
    assert_eq!(status, 429);
    drop(b);
    // Our own /stats request is from 127.0.0.1 too: once the server saw `b` go.
    let deadline = std::time::Instant::now() + PATIENCE;
    let stats = loop {
        let (status, _, body) = http_get(server.addr, "/stats");
        if status == 200 {
            break serde_json::from_str::<serde_json::Value>(&body).expect("JSON");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the cap was never freed"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    assert_eq!(stats["refused_proxy_header"], 2, "{stats}");
    assert!(stats["refused_per_ip"].as_u64() >= Some(1), "{stats}");
}

#[test]
fn a_metrics_address_serves_the_operators_and_the_public_port_does_not() {
    let server = ServerProcess::start(&["--metrics-address", "127.0.0.1:0"]);
    let private = server.metrics.expect("a metrics address in the first line");
    let (status, head, body) = http_get(private, "/metrics");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    assert!(
        body.contains("# TYPE websocket_public_chat_connections_total counter"),
        "{body}"
    );
    assert_eq!(http_get(private, "/stats").0, 200);
    assert_eq!(http_get(private, "/health").0, 200);
    assert_eq!(
        http_get(private, "/").0,
        404,
        "the page on the metrics address"
    );
    let upgrade = http_raw(private, upgrade_request("").as_bytes());
    assert!(upgrade.starts_with("HTTP/1.1 404"), "{upgrade}");
    for path in ["/metrics", "/stats"] {
        assert_eq!(
            http_get(server.addr, path).0,
            404,
            "{path} on the public port"
        );
    }
    assert_eq!(http_get(server.addr, "/").0, 200);
    assert_eq!(http_get(server.addr, "/health").0, 200);
    // Not counted against the caps: with the public port full, it still answers.
    let full = ServerProcess::start(&[
        "--metrics-address",
        "127.0.0.1:0",
        "--max-conns",
        "1",
        "--max-conns-per-ip",
        "1",
    ]);
    let (_hold, status) = upgrade_with(&full, b"", "");
    assert_eq!(status, 101);
    assert_eq!(http_get(full.addr, "/health").0, 503);
    assert_eq!(http_get(full.metrics.expect("metrics"), "/metrics").0, 200);
    // Without the flag, the public port serves /metrics.
    let plain = ServerProcess::start(&[]);
    assert_eq!(http_get(plain.addr, "/metrics").0, 200);
}

#[test]
fn an_ipv4_mapped_peer_counts_as_its_ipv4_address() {
    // A listener on an IPv4-mapped address sees IPv4 peers as ::ffff:a.b.c.d.
    let server = ServerProcess::start(&[
        "--host",
        "::ffff:127.0.0.1",
        "--trusted-proxy",
        "127.0.0.2",
        "--max-conns-per-ip",
        "2",
    ]);
    let port = server.addr.port();
    let target = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let upgrade = |from: &str, extra: &str| {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let source: std::net::SocketAddr = format!("{from}:0").parse().expect("source");
        socket.bind(&source.into()).expect("bind");
        socket.connect(&target.into()).expect("connect");
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream
            .write_all(upgrade_request(extra).as_bytes())
            .expect("send");
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).expect("status line");
        let status: u16 = String::from_utf8_lossy(&head[9..12])
            .parse()
            .expect("status");
        (stream, status)
    };
    // Two direct connections from 127.0.0.1 (seen as ::ffff:127.0.0.1)...
    let (_a, status) = upgrade("127.0.0.1", "");
    assert_eq!(status, 101);
    let (_b, status) = upgrade("127.0.0.1", "");
    assert_eq!(status, 101);
    // ...are the same address as 127.0.0.1 named by the proxy: it is full.
    let (_, status) = upgrade("127.0.0.2", "X-Forwarded-For: 127.0.0.1\r\n");
    assert_eq!(status, 429);
    let (_, status) = upgrade("127.0.0.2", "X-Forwarded-For: ::ffff:127.0.0.1\r\n");
    assert_eq!(status, 429);
    // Another client behind the proxy is counted apart.
    let (_c, status) = upgrade("127.0.0.2", "X-Forwarded-For: 127.0.0.3\r\n");
    assert_eq!(status, 101);
}
