//! Connection lifetimes: keepalive pings and timeouts, slow consumers,
//! shutdown at `--duration` and on SIGTERM.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

#[test]
fn silent_client_is_pinged_then_closed() {
    let server = ServerProcess::start(&["--ping-interval", "0.3", "--pong-timeout", "1"]);
    let mut raw = RawClient::connect(&server);
    let started = Instant::now();
    raw.send_json(json!({"type": "join", "user": "mute"}));
    let (first, payload) = raw.read_frame().expect("a ping");
    assert_eq!((first, payload), (FIN | PING, vec![]));
    let pinged = started.elapsed();
    assert!(
        pinged >= Duration::from_millis(250),
        "pinged after {pinged:?}"
    );
    // It never answers: closed with 1001 around the pong timeout.
    assert_eq!(raw.recv_close(), Some(1001));
    let closed = started.elapsed();
    assert!(
        closed >= Duration::from_millis(950),
        "closed after {closed:?}"
    );
    raw.expect_eof();
    let stats = server.stats();
    assert_eq!(stats["keepalive_timeouts"], 1);
    assert_eq!(stats["joined"], 0);
}

#[test]
fn any_frame_counts_as_life() {
    let server = ServerProcess::start(&["--ping-interval", "0.2", "--pong-timeout", "0.6"]);
    // Answers pings with pong frames (tungstenite does it while reading).
    let mut answering = Client::joined(&server, "answers");
    // Never answers pings, but sends a JSON pong now and then.
    let mut chatty = RawClient::connect(&server);
    chatty.send_json(json!({"type": "join", "user": "chatty"}));
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        chatty.send_json(json!({"type": "pong"}));
        answering
            .ws
            .get_mut()
            .set_read_timeout(Some(Duration::from_millis(150)))
            .unwrap();
        match answering.ws.read() {
            Ok(tungstenite::Message::Ping(_)) => {}
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    answering
        .ws
        .get_mut()
        .set_read_timeout(Some(PATIENCE))
        .unwrap();
    answering.sync();
    chatty.send_json(json!({"type": "chat", "text": "still here"}));
    assert_eq!(answering.recv()["text"], "still here");
    assert_eq!(server.stats()["keepalive_timeouts"], 0);
}

#[test]
fn slow_consumer_is_closed_and_others_get_everything() {
    let server =
        ServerProcess::start(&["--max-message-size", "1000000", "--max-backlog", "4000000"]);
    let mut stalled = Client::joined(&server, "stalled");
    let mut healthy = RawClient::connect(&server);
    healthy.send_json(json!({"type": "join", "user": "healthy"}));
    healthy.send_json(json!({"type": "ping", "ts": 0}));
    assert_eq!(healthy.recv_json(), json!({"type": "pong", "ts": 0}));
    // The healthy client reads as fast as it can, in its own thread.
    let reader = std::thread::spawn(move || {
        let chats = (0..20)
            .map(|_| healthy.read_frame().map(|(first, payload)| (first, payload.len())))
            .filter(|frame| matches!(frame, Some((first, len)) if *first == FIN | TEXT && *len > 950_000))
            .count();
        (chats, healthy)
    });
    // The only sender, so it receives nothing and need not read.
    let mut sender = Client::joined(&server, "sender");
    let text = "x".repeat(950_000);
    // Two bursts of 10 chats (the rate limit's burst), 19 MB in all: far
    // more than the kernel buffers plus the backlog limit hold for `stalled`.
    for burst in 0..2 {
        if burst > 0 {
            std::thread::sleep(Duration::from_millis(1_100));
        }
        for i in 0..10 {
            sender.queue(json!({"type": "chat", "text": text, "ts": burst * 10 + i}));
        }
        sender.flush();
    }
    let (chats, _healthy) = reader.join().expect("reader thread");
    assert_eq!(chats, 20);
    assert_eq!(server.wait_counter("slow_consumer_closes", 1), 1);
    assert_eq!(server.stats()["joined"], 2);
    // The stalled client's stream ends (it is dropped at the close wait) instead of growing.
    let stream = stalled.ws.get_mut();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let mut received = 0usize;
    loop {
        match stream.read(&mut sink) {
            Ok(0) => break,
            Ok(n) => received += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("stalled client: {e} after {received} bytes"),
        }
    }
    assert!(
        received < 20 * 950_000,
        "the stalled client got everything ({received} bytes)"
    );
}

#[test]
fn duration_end_sends_1001_to_everyone_and_prints_statistics() {
    let server = ServerProcess::start(&["--duration", "1"]);
    let mut a = Client::joined(&server, "a");
    let mut b = Client::joined(&server, "b");
    let mut raw = RawClient::connect(&server);
    raw.send_json(json!({"type": "join", "user": "raw"}));
    a.send(json!({"type": "chat", "text": "before the end"}));
    assert_eq!(b.recv()["text"], "before the end");
    for client in [&mut a, &mut b] {
        assert_eq!(client.recv_close(), Some(1001));
        client.expect_clean_end();
    }
    assert_eq!(raw.recv_close(), Some(1001));
    raw.finish_close(1001);
    let (status, stdout) = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first(), Some(&"--- Statistics ---"), "{stdout}");
    for prefix in [
        "Total messages: 1",
        "Processing time: ",
        "Average latency: ",
        "Throughput: ",
        "Total connections: 3",
        "Message drop rate: 0.00%",
        "Deliveries: 2",
    ] {
        assert!(
            lines.iter().any(|l| l.starts_with(prefix)),
            "no {prefix:?} in {stdout}"
        );
    }
}

#[test]
fn sigterm_closes_clients_cleanly_and_exits_zero() {
    let server = ServerProcess::start(&[]);
    let mut a = Client::joined(&server, "a");
    // One client that never answers our close: shutdown must not wait forever for it.
    let mut mute = RawClient::connect(&server);
    mute.send_json(json!({"type": "join", "user": "mute"}));
    a.sync();
    let started = Instant::now();
    server.signal(libc::SIGTERM);
    assert_eq!(a.recv_close(), Some(1001));
    a.expect_clean_end();
    assert_eq!(mute.recv_close(), Some(1001));
    let (status, stdout) = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
    assert!(
        stdout.starts_with("--- Statistics ---\nTotal messages: 0\n"),
        "{stdout}"
    );
    // The grace period for unanswered closes is 2 s.
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn new_clients_are_refused_at_once_while_shutdown_waits() {
    let server = ServerProcess::start(&[]);
    // A client that never answers our close keeps the 2 s grace period going.
    let mut mute = RawClient::connect(&server);
    mute.send_json(json!({"type": "join", "user": "mute"}));
    mute.send_json(json!({"type": "ping", "ts": 1}));
    assert_eq!(mute.recv_json(), json!({"type": "pong", "ts": 1}));
    server.signal(libc::SIGTERM);
    assert_eq!(mute.recv_close(), Some(1001));
    // Shutdown has begun: the listener is closed, so the kernel refuses at once.
    let started = Instant::now();
    match std::net::TcpStream::connect(server.addr) {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}"),
        Ok(_) => panic!("a new client was let in during shutdown"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _) = server.wait_exit(PATIENCE);
    assert!(status.success(), "{status:?}");
}

#[test]
fn pings_are_answered_while_we_wait_for_the_peers_close() {
    let server = ServerProcess::start(&[]);
    let mut raw = RawClient::connect(&server);
    raw.send_json(json!({"type": "join", "user": "leaving"}));
    raw.send_json(json!({"type": "leave"}));
    assert_eq!(raw.recv_close(), Some(1000));
    // Our close is not sent yet; the server still answers pings (RFC 6455 §5.5.2).
    raw.send_frame(FIN | PING, b"still here?");
    let (first, payload) = raw.read_frame().expect("a pong");
    assert_eq!(
        (first, payload.as_slice()),
        (FIN | PONG, &b"still here?"[..])
    );
    raw.finish_close(1000);
    assert_eq!(server.stats()["closed_by_leave"], 1);
}

#[test]
fn a_burst_of_connections_waits_in_the_kernel_while_the_loop_is_busy() {
    // Everyone reconnecting at once (a restart behind a load balancer) while
    // the loop is busy: the kernel holds them for us; with the default
    // backlog of 128 the rest would have their SYNs dropped and retry a
    // second later.
    let server = ServerProcess::start(&[]);
    server.signal(libc::SIGSTOP);
    let waiting: Vec<_> = (0..400)
        .map(|i| {
            TcpStream::connect_timeout(&server.addr, Duration::from_millis(300))
                .unwrap_or_else(|e| panic!("connection {i} was not held: {e}"))
        })
        .collect();
    server.signal(libc::SIGCONT);
    assert_eq!(waiting.len(), 400);
}
