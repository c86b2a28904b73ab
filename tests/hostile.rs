//! Hostile clients. In each test a healthy conversation goes on in the
//! background and must see no disturbance, while another client misbehaves
//! and gets its defined answer, counted in /stats.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

/// Reads until the server ends the stream; fails on a timeout.
fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("no end of stream: {e}"),
        }
    }
}

#[test]
fn handshake_one_byte_per_second_is_closed_at_the_timeout() {
    let server = ServerProcess::start(&["--handshake-timeout", "2"]);
    let chatter = Chatter::start(&server);
    let mut slow = TcpStream::connect(server.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(1_000)))
        .unwrap();
    let started = Instant::now();
    let request = upgrade_request("");
    let mut closed_after = None;
    for byte in request.as_bytes() {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // Each wait is a second; the server ends the stream when the timeout strikes.
        match slow.read(&mut [0u8; 16]) {
            Ok(0) | Err(_) if started.elapsed() >= Duration::from_millis(1_500) => {
                closed_after = Some(started.elapsed());
                break;
            }
            Ok(n) if n > 0 => panic!("the server answered a partial request"),
            _ => {}
        }
    }
    let closed_after = closed_after.expect("never closed");
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );
    chatter.finish();
    assert_eq!(server.stats()["handshake_timeouts"], 1);
}

#[test]
fn huge_headers_get_431_and_garbage_gets_400() {
    let server = ServerProcess::start(&[]);
    let chatter = Chatter::start(&server);
    // 100 KiB of headers.
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut request = b"GET /ws HTTP/1.1\r\nHost: t\r\n".to_vec();
    while request.len() < 100 * 1024 {
        request.extend_from_slice(
            format!("X-Filler-{}: {}\r\n", request.len(), "y".repeat(200)).as_bytes(),
        );
    }
    request.extend_from_slice(b"\r\n");
    // The server answers after 8 KiB and keeps reading (and discarding) the rest.
    stream.write_all(&request).unwrap();
    let response = String::from_utf8_lossy(&read_to_end(&mut stream)).into_owned();
    assert_eq!(split_response(&response).0, 431, "{response}");
    // Bytes that are not HTTP at all.
    let response = http_raw(
        server.addr,
        &[
            0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xFC, 0x03, 0x03,
        ],
    );
    assert_eq!(split_response(&response).0, 400, "{response}");
    let response = http_raw(server.addr, b"\x00\x01\x02\x03\r\n\r\n");
    assert_eq!(split_response(&response).0, 400, "{response}");
    chatter.finish();
    let stats = server.stats();
    assert_eq!(stats["http_head_too_large"], 1);
    assert_eq!(stats["http_bad_request"], 2);
}

#[test]
fn frame_header_claiming_2_pow_62_bytes_gets_1009_and_no_allocation() {
    let server = ServerProcess::start(&[]);
    let chatter = Chatter::start(&server);
    let before = server.rss_kib();
    for _ in 0..20 {
        let mut raw = RawClient::connect(&server);
        raw.send_raw(&header_claiming(1u64 << 62));
        assert_eq!(raw.recv_close(), Some(1009));
        raw.expect_eof();
    }
    let grown = server.rss_kib().saturating_sub(before);
    assert!(grown < 1024, "RSS grew by {grown} KiB");
    chatter.finish();
    assert_eq!(server.stats()["closed_message_too_big"], 20);
}

#[test]
fn ten_thousand_tiny_fragments_make_one_message() {
    let server = ServerProcess::start(&[]);
    let chatter = Chatter::start(&server);
    let mut listener = Client::joined(&server, "watcher");
    let mut raw = RawClient::connect(&server);
    raw.send_json(json!({"type": "join", "user": "fragmenter"}));
    let text = "f".repeat(10_000);
    let message = json!({"type": "chat", "text": text}).to_string();
    let bytes = message.as_bytes();
    // One byte per frame, plus 1,000 empty continuation frames in the middle.
    let mut wire = frame_bytes(TEXT, &bytes[..1], true);
    for (i, byte) in bytes[1..bytes.len() - 1].iter().enumerate() {
        wire.extend(frame_bytes(CONTINUATION, &[*byte], true));
        if i == 5_000 {
            for _ in 0..1_000 {
                wire.extend(frame_bytes(CONTINUATION, b"", true));
            }
        }
    }
    wire.extend(frame_bytes(
        FIN | CONTINUATION,
        &bytes[bytes.len() - 1..],
        true,
    ));
    let cpu_before = server.cpu_time();
    raw.send_raw(&wire);
    let got = loop {
        let m = listener.recv();
        if m["user"] == "fragmenter" {
            break m;
        }
    };
    assert_eq!(got["text"].as_str().map(str::len), Some(10_000));
    // Bounded work: 11,000 frames cost about what 80 KB of any frames cost.
    let cpu = server.cpu_time() - cpu_before;
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU for the fragments"
    );
    chatter.finish();
}

/// Four clients flood the server for three seconds and never read: two with
/// empty ping frames, two with JSON pings. The server may hold no more than
/// `--max-backlog` plus a small constant for each, counting what queued
/// frames cost in memory (a JSON pong of 24 bytes costs about 80).
#[test]
fn ping_floods_from_clients_that_never_read_cannot_grow_memory() {
    const BACKLOG_KIB: u64 = 256;
    let server = ServerProcess::start(&["--max-backlog", &(BACKLOG_KIB * 1024).to_string()]);
    let chatter = Chatter::start(&server);
    let before = server.rss_kib();
    let flooders: Vec<_> = (0..4)
        .map(|i| {
            // A small receive buffer: the kernel holds little of what the server sends.
            let stream = connect_with("127.0.0.1", Some(4096), &server);
            let mut raw = RawClient::over(stream);
            raw.upgrade();
            let mut writer = raw.stream.try_clone().unwrap();
            writer
                .set_write_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            let json = i % 2 == 1;
            let flood = std::thread::spawn(move || {
                let batch: Vec<u8> = (0..1000)
                    .flat_map(|_| match json {
                        true => frame_bytes(FIN | TEXT, br#"{"type":"ping","ts":1}"#, true),
                        false => frame_bytes(FIN | PING, b"", true),
                    })
                    .collect();
                let until = Instant::now() + Duration::from_secs(3);
                let mut sent = 0u64;
                while Instant::now() < until {
                    match writer.write_all(&batch) {
                        Ok(()) => sent += 1000,
                        // The server stopped reading us (backpressure): keep trying until the end.
                        Err(e)
                            if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                        Err(e) => panic!("flood {i}: {e}"),
                    }
                }
                sent
            });
            (raw, flood)
        })
        .collect();
    let mut sent = Vec::new();
    let mut _keep = Vec::new();
    for (raw, flood) in flooders {
        sent.push(flood.join().expect("flooder"));
        _keep.push(raw);
    }
    let grown = server.rss_kib().saturating_sub(before);
    // Each may hold its backlog and one reply past it (64 KiB at most here),
    // counted as they cost in memory; 64 KiB more each for the allocator.
    assert!(
        grown < 4 * (BACKLOG_KIB + 128),
        "RSS grew by {grown} KiB for four floods ({sent:?} pings sent)"
    );
    chatter.finish();
    assert!(sent.iter().all(|&n| n > 0), "{sent:?}");
    assert!(server.stats()["read_pauses"].as_u64().unwrap() >= 1);
}

/// A client that pings without reading gets, once the server's socket to it
/// is full, an answer to the latest ping rather than one per ping (RFC 6455
/// §5.5.3), in order; while the socket takes them, every ping is answered.
#[test]
fn once_the_socket_is_full_only_the_latest_ping_is_answered() {
    const PINGS: u32 = 120_000;
    let server = ServerProcess::start(&[]);
    // A small receive buffer: the server's socket fills after a few MB of pongs.
    let mut raw = RawClient::over(connect_with("127.0.0.1", Some(4096), &server));
    raw.upgrade();
    let mut writer = raw.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        for batch in (0..PINGS).collect::<Vec<u32>>().chunks(1000) {
            let bytes: Vec<u8> = batch
                .iter()
                .flat_map(|i| {
                    let mut payload = i.to_be_bytes().to_vec();
                    payload.resize(125, b'p');
                    frame_bytes(FIN | PING, &payload, true)
                })
                .collect();
            writer.write_all(&bytes).expect("send pings");
        }
    });
    // Not reading while the pings go out (a server that answers each one
    // stops reading us at its backlog limit: then we read after 3 s).
    let started = Instant::now();
    while !flood.is_finished() && started.elapsed() < Duration::from_secs(3) {
        sleep(Duration::from_millis(20));
    }
    let mut answered = Vec::new();
    while answered.last() != Some(&(PINGS - 1)) {
        let (first, payload) = raw.read_frame().expect("a pong");
        assert_eq!(first, FIN | PONG);
        answered.push(u32::from_be_bytes(payload[..4].try_into().unwrap()));
    }
    flood.join().expect("the flood was sent");
    assert!(
        answered.windows(2).all(|w| w[0] < w[1]),
        "pongs out of order"
    );
    assert!(
        answered.len() < PINGS as usize / 2,
        "{} pongs for {PINGS} pings",
        answered.len()
    );
}

#[test]
fn invalid_close_codes_get_1002() {
    let server = ServerProcess::start(&[]);
    let chatter = Chatter::start(&server);
    for code in [0u16, 999, 1004, 1005, 1006, 1015, 2000, 2999, 5000, 65535] {
        let mut raw = RawClient::connect(&server);
        raw.send_frame(FIN | CLOSE, &code.to_be_bytes());
        assert_eq!(raw.recv_close(), Some(1002), "code {code}");
        raw.expect_eof();
    }
    chatter.finish();
    assert_eq!(server.stats()["closed_protocol_error"], 10);
}

#[test]
fn a_client_that_stops_reading_cannot_grow_server_memory() {
    let server = ServerProcess::start(&["--max-backlog", "262144"]);
    let chatter = Chatter::start(&server);
    // A 4 KB receive buffer: the kernel holds little for it, so the backlog limit is what bounds it.
    let small = connect_with("127.0.0.1", Some(4096), &server);
    let _stalled = Client::joined_over(small, &server, "stalled");
    let mut loud = Client::joined(&server, "loud");
    let text = "L".repeat(60_000);
    let mut rss = Vec::new();
    // 6 s of 10 chats/s of 60 KB: 3.6 MB offered to a client that reads nothing.
    let started = Instant::now();
    for i in 0..60u64 {
        loud.send(json!({"type": "chat", "text": text, "ts": i}));
        if i % 10 == 9 {
            rss.push(server.rss_kib());
        }
        sleep(
            Duration::from_millis(100)
                .saturating_sub(started.elapsed() - Duration::from_millis(100 * i)),
        );
    }
    assert_eq!(server.wait_counter("slow_consumer_closes", 1), 1);
    // Flat: after the first seconds, memory does not grow with what is offered.
    let (early, late) = (rss[1], *rss.last().unwrap());
    assert!(
        late <= early + 1024,
        "RSS went from {early} KiB to {late} KiB: {rss:?}"
    );
    chatter.finish();
}

#[test]
fn a_client_that_vanishes_is_dropped_by_keepalive() {
    let server = ServerProcess::start(&["--ping-interval", "0.3", "--pong-timeout", "1"]);
    let chatter = Chatter::start(&server);
    // Joins, then never reads, writes or closes again: to the server, gone.
    let mut ghost = RawClient::connect(&server);
    ghost.send_json(json!({"type": "join", "user": "ghost"}));
    assert_eq!(server.wait_counter("keepalive_timeouts", 1), 1);
    let stats = server.stats();
    assert_eq!(stats["joined"], 2, "{stats}");
    chatter.finish();
}

#[test]
fn max_conns_per_ip_refuses_the_excess_with_429() {
    let server = ServerProcess::start(&["--max-conns-per-ip", "3"]);
    // The chatter holds two connections from 127.0.0.1.
    let chatter = Chatter::start(&server);
    let third = RawClient::connect(&server);
    let response = http_raw(server.addr, upgrade_request("").as_bytes());
    let (status, head, _) = split_response(&response);
    assert_eq!(status, 429, "{response}");
    assert!(head.contains("Retry-After:"), "{head}");
    // Another address has its own allowance.
    let mut other = connect_from("127.0.0.2", &server);
    other.write_all(upgrade_request("").as_bytes()).unwrap();
    let mut head = [0u8; 12];
    other.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // A slot freed on 127.0.0.1 is usable again (once the server has seen it
    // go: until then, each try is refused and counted).
    drop(third);
    let mut refused = 1;
    let deadline = Instant::now() + PATIENCE;
    while split_response(&http_raw(server.addr, b"GET /health HTTP/1.1\r\n\r\n")).0 == 429 {
        refused += 1;
        assert!(Instant::now() < deadline, "the slot was never freed");
        sleep(Duration::from_millis(20));
    }
    chatter.finish();
    assert_eq!(server.stats()["refused_per_ip"], refused);
}

#[test]
fn by_default_only_the_servers_own_pages_may_upgrade() {
    let server = ServerProcess::start(&[]);
    let chatter = Chatter::start(&server);
    let own = format!("http://{}", server.addr);
    let host = format!("Host: {}\r\n", server.addr);
    let cases = [
        (format!("Origin: {own}\r\n"), 101),
        (format!("Origin: {}\r\n", own.to_uppercase()), 101),
        // Cross-site WebSocket hijacking: a foreign page in the user's browser.
        ("Origin: https://evil.example\r\n".to_string(), 403),
        (
            format!("Origin: http://{}.evil.example\r\n", server.addr.ip()),
            403,
        ),
        ("Origin: null\r\n".to_string(), 403),
        // Not a browser.
        (String::new(), 101),
    ];
    for (origin, want) in &cases {
        let request = upgrade_request(origin).replace("Host: test\r\n", &host);
        let mut raw = RawClient::connect_with(&server, request.as_bytes());
        let head = raw.read_head();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want} ")),
            "{origin:?}: {head}"
        );
    }
    chatter.finish();
    assert_eq!(server.stats()["http_forbidden_origin"], 3);
    // `*` lets any page in.
    let any = ServerProcess::start(&["--allowed-origin", "*"]);
    let request = upgrade_request("Origin: https://evil.example\r\n");
    let mut raw = RawClient::connect_with(&any, request.as_bytes());
    assert!(raw.read_head().starts_with("HTTP/1.1 101 "));
}

#[test]
fn upgrades_from_origins_not_allowed_get_403() {
    let server = ServerProcess::start(&[
        "--allowed-origin",
        "https://chat.example",
        "--allowed-origin",
        "http://localhost:8080",
    ]);
    let chatter = Chatter::start(&server);
    let cases = [
        ("Origin: https://evil.example\r\n", 403),
        ("Origin: https://chat.example.evil.example\r\n", 403),
        ("Origin: null\r\n", 403),
        ("Origin: https://chat.example\r\n", 101),
        ("Origin: http://localhost:8080\r\n", 101),
        ("", 101),
    ];
    for (origin, want) in cases {
        let mut raw = RawClient::connect_with(&server, upgrade_request(origin).as_bytes());
        let head = raw.read_head();
        assert!(
            head.starts_with(&format!("HTTP/1.1 {want} ")),
            "{origin:?}: {head}"
        );
    }
    chatter.finish();
    assert_eq!(server.stats()["http_forbidden_origin"], 3);
}

#[test]
fn a_connection_limit_above_the_descriptors_stops_at_them_without_spinning() {
    // 64 descriptors, and a connection limit above what they allow: said at
    // start, and accepting stops where the descriptors end (before the
    // server's own and the private listener's), so it never runs out.
    let server = ServerProcess::start_with_fd_limit(64, &["--max-conns", "1000"]);
    let said = std::fs::read_to_string(&server.log).expect("the server's log");
    assert!(
        said.contains("--max-conns 1000 is more than the open-file limit (64) allows"),
        "{said}"
    );
    let chatter = Chatter::start(&server);
    // More connections than free descriptors: the kernel queues the rest in the listen backlog.
    let hogs: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(server.addr).expect("connect"))
        .collect();
    // The conversation goes on, and the loop does not spin retrying accept.
    let before = server.cpu_time();
    sleep(Duration::from_secs(1));
    let used = server.cpu_time() - before;
    assert!(
        used < Duration::from_millis(300),
        "{used:?} of CPU in 1 s while out of descriptors"
    );
    // Once descriptors free up, new clients are accepted again.
    drop(hogs);
    let mut late = Client::joined(&server, "late");
    late.sync();
    chatter.finish();
    assert_eq!(server.stats()["accept_pauses"], 0);
}

#[test]
fn the_private_listener_answers_while_the_public_port_is_full() {
    // 256 descriptors: every public slot is taken, then refused connections
    // keep arriving (200/s, each left open by its client), and operators
    // must still reach /metrics on the private listener.
    private_listener_answers_under_a_flood(&[], None);
    // The same with a --max-conns the descriptors cannot hold: connections
    // past the descriptors wait in the kernel instead of taking the reserve.
    private_listener_answers_under_a_flood(&["--max-conns", "1000"], Some(220));
}

/// Holds the public port full (until a `503`, or `hold` connections), floods
/// it with connections left open, and scrapes `/metrics` on the private
/// listener four times, each within 2.5 s.
fn private_listener_answers_under_a_flood(args: &[&str], hold: Option<usize>) {
    let args = [&["--metrics-address", "127.0.0.1:0"], args].concat();
    let server = ServerProcess::start_with_fd_limit(256, &args);
    let metrics = server.metrics.expect("a metrics address");
    let mut held = Vec::new();
    while hold.is_none_or(|n| held.len() < n) {
        let mut raw = RawClient::connect_with(&server, upgrade_request("").as_bytes());
        let head = raw.read_head();
        if head.starts_with("HTTP/1.1 503 ") {
            break;
        }
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        held.push(raw);
        assert!(held.len() < 256, "never full");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let storm = {
        let (stop, addr) = (stop.clone(), server.addr);
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && kept.len() < 2000 {
                if let Ok(mut s) = TcpStream::connect(addr) {
                    let _ = s.write_all(upgrade_request("").as_bytes());
                    kept.push(s);
                }
                sleep(Duration::from_millis(5));
            }
            kept.len()
        })
    };
    sleep(Duration::from_millis(500));
    for attempt in 0..4 {
        let mut stream = TcpStream::connect(metrics).expect("connect to the metrics address");
        stream
            .set_read_timeout(Some(Duration::from_millis(2500)))
            .unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: ops\r\n\r\n")
            .expect("send");
        let mut head = [0u8; 12];
        let answered = stream.read_exact(&mut head);
        assert!(
            answered.is_ok() && head.starts_with(b"HTTP/1.1 200"),
            "try {attempt}: /metrics did not answer within 2.5 s ({answered:?})"
        );
        sleep(Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(storm.join().expect("the storm") > 100);
    // The members were not disturbed.
    let raw = &mut held[0];
    raw.send_frame(FIN | PING, b"ok?");
    assert_eq!(raw.read_frame(), Some((FIN | PONG, b"ok?".to_vec())));
}

#[test]
fn a_scrape_costs_the_loop_the_same_whatever_the_number_of_connections() {
    // /metrics is on the public port by default: anyone may scrape it. The
    // build before this one listed /proc/self/fd on every scrape, about
    // 0.35 ms of loop time per 1,000 connections.
    raise_fd_limit(12_000);
    let server = ServerProcess::start(&[]);
    let scrapes = |n: usize| {
        let before = server.cpu_time();
        for _ in 0..n {
            assert_eq!(http_get(server.addr, "/metrics").0, 200);
        }
        server.cpu_time() - before
    };
    let alone = scrapes(1000);
    let held: Vec<RawClient> = (0..5000).map(|_| RawClient::connect(&server)).collect();
    let crowded = scrapes(1000);
    // A ratio with room for a noisy machine (CPU time counts in 10 ms ticks);
    // the listing made it about 20.
    assert!(
        crowded < alone * 3 + Duration::from_millis(50),
        "1,000 scrapes: {alone:?} of server CPU alone, {crowded:?} with {} connections",
        held.len()
    );
}

#[test]
fn one_pong_waits_for_a_client_that_stopped_reading_whatever_comes_between() {
    let server =
        ServerProcess::start(&["--max-backlog", "16777216", "--max-message-size", "1048576"]);
    let stream = connect_with("127.0.0.1", Some(4096), &server);
    let mut stalled = RawClient::over(stream);
    stalled.upgrade();
    stalled.send_json(json!({"type": "join", "user": "stalled"}));
    let mut big = Client::joined(&server, "big");
    let mut small = [Client::joined(&server, "s0"), Client::joined(&server, "s1")];
    // 8 MB the stalled client does not read: its socket is full.
    let text = "z".repeat(1_000_000);
    for _ in 0..8 {
        big.queue(json!({"type": "chat", "text": text}));
    }
    big.flush();
    big.sync();
    // A ping, a chat, a ping, a chat...: the pongs replace each other.
    for i in 0..20 {
        stalled.send_frame(FIN | PING, &[i]);
        sleep(Duration::from_millis(20));
        small[i as usize % 2].send(json!({"type": "chat", "text": format!("c{i}")}));
        small[i as usize % 2].sync();
    }
    sleep(Duration::from_millis(100));
    let (mut pongs, mut chats) = (Vec::new(), 0);
    while chats < 28 {
        let (first, payload) = stalled.read_frame().expect("a frame");
        match first & 0x0F {
            PONG => pongs.push(payload),
            TEXT if payload.starts_with(br#"{"type":"chat""#) => chats += 1,
            _ => {}
        }
    }
    // The first ping may be answered before the socket filled; the rest is one pong, the latest.
    assert!(pongs.len() <= 2, "{} pongs: {pongs:?}", pongs.len());
    assert_eq!(pongs.last(), Some(&vec![19]));
}
