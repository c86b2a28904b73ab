//! The terminal client (`chat-client`) as a person or a script uses it:
//! the real binary, stdin and stdout piped, against the real server.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use common::{Client, PATIENCE, ServerProcess, connect_from};
use serde_json::json;

/// A running `chat-client` with its stdin held open and its stdout read by a thread.
struct ChatClient {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl ChatClient {
    fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Starts it with `env` set too.
    fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-client"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chat-client");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let stdin = child.stdin.take();
        Self {
            child,
            stdin,
            lines,
        }
    }

    fn joined(server: &ServerProcess, user: &str) -> Self {
        let joins = server.stats()["joins"].as_u64().unwrap();
        let client = Self::start(&["--url", &server.url(), "--user", user]);
        assert!(
            server.wait_counter("joins", joins + 1) > joins,
            "{user} did not join"
        );
        client
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{line}").expect("write to chat-client");
        stdin.flush().expect("flush");
    }

    /// The next line printed, checked to be `[HH:MM:SS] ` and then `rest`.
    fn expect_chat(&self, rest: &str) {
        let line = self
            .lines
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("no line printed, wanted {rest:?}"));
        let (stamp, text) = line.split_at(11.min(line.len()));
        let b = stamp.as_bytes();
        let digits = [1, 2, 4, 5, 7, 8].iter().all(|&i| b[i].is_ascii_digit());
        assert!(
            b.len() == 11 && b[0] == b'[' && b[3] == b':' && b[6] == b':' && b[9] == b']' && digits,
            "bad time stamp in {line:?}"
        );
        assert_eq!(text, rest, "in {line:?}");
    }

    /// Closes stdin (end of input) and waits for the exit; returns status and stderr.
    fn finish(mut self) -> (ExitStatus, String) {
        self.stdin = None;
        self.wait_exit()
    }

    /// Waits for the exit with stdin still open; returns status and stderr.
    fn wait_exit(mut self) -> (ExitStatus, String) {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("chat-client did not exit");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            pipe.read_to_string(&mut stderr).expect("read stderr");
        }
        (status, stderr)
    }
}

/// Runs `chat-client` to the end with `input` on stdin.
fn run(args: &[&str], input: &str) -> (ExitStatus, String) {
    let mut client = ChatClient::start(args);
    if let Some(stdin) = client.stdin.as_mut() {
        // The client may already have exited (a refused handshake): ignore EPIPE.
        let _ = stdin.write_all(input.as_bytes());
    }
    client.finish()
}

#[test]
fn two_clients_talk_both_ways_and_leave_cleanly() {
    let server = ServerProcess::start(&[]);
    let mut alice = ChatClient::joined(&server, "alice");
    let mut bob = ChatClient::joined(&server, "bob");
    alice.type_line("hello bob");
    bob.expect_chat("alice: hello bob");
    // Padding is trimmed; escape sequences cannot reach the terminal.
    bob.type_line("hi alice \u{1b}[31mred   ");
    alice.expect_chat("bob: hi alice \u{FFFD}[31mred");
    alice.type_line("/quit");
    let (status, stderr) = alice.finish();
    assert!(status.success(), "alice: {status} {stderr}");
    let (status, stderr) = bob.finish();
    assert!(status.success(), "bob: {status} {stderr}");
    let stats = server.stats();
    assert_eq!(stats["closed_by_leave"], 2, "{stats}");
    assert_eq!(stats["dropped_without_close"], 0, "{stats}");
}

#[test]
fn piped_lines_are_sent_in_order_within_the_rate_limit() {
    let server = ServerProcess::start(&[]);
    let mut listener = Client::joined(&server, "listener");
    // More lines than the rate limit's burst: the client paces them, none is dropped.
    let lines: Vec<String> = (1..=15).map(|i| format!("line {i}")).collect();
    let (status, stderr) = run(
        &["--url", &server.url(), "--user", "bot"],
        &(lines.join("\n") + "\n"),
    );
    assert!(status.success(), "{status} {stderr}");
    for line in &lines {
        let chat = listener.recv();
        assert_eq!(
            (&chat["user"], &chat["text"]),
            (&json!("bot"), &json!(line))
        );
    }
    let stats = server.stats();
    assert_eq!(stats["rate_limited"], 0);
    assert_eq!(stats["closed_by_leave"], 1);
}

#[test]
fn a_message_over_the_limit_is_refused_locally() {
    let server = ServerProcess::start(&["--max-message-size", "1000"]);
    let mut listener = Client::joined(&server, "listener");
    let long = "x".repeat(2000);
    let (status, stderr) = run(
        &[
            "--url",
            &server.url(),
            "--user",
            "bot",
            "--max-message-size",
            "1000",
        ],
        &format!("{long}\nafter\n"),
    );
    assert!(status.success(), "{status} {stderr}");
    assert!(stderr.contains("message not sent"), "{stderr}");
    assert_eq!(listener.recv()["text"], "after");
    assert_eq!(server.stats()["closed_message_too_big"], 0);
}

#[test]
fn failures_are_one_line_with_their_own_exit_status() {
    let server = ServerProcess::start(&[]);
    let free = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cases = [
        (format!("ws://{free}/ws"), "bob", 3, "cannot connect"),
        (format!("ws://{}/nope", server.addr), "bob", 4, "HTTP 404"),
        (
            format!("wss://{}/ws", server.addr),
            "bob",
            2,
            "not supported",
        ),
        (server.url(), "", 2, "--user"),
    ];
    for (url, user, code, says) in cases {
        let (status, stderr) = run(&["--url", &url, "--user", user], "hi\n");
        assert_eq!(status.code(), Some(code), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{url}: {stderr}");
    }
}

#[test]
fn a_lost_connection_reports_the_close_code_with_no_reconnect() {
    let server = ServerProcess::start(&[]);
    let joins = server.stats()["joins"].as_u64().unwrap();
    let client = ChatClient::start(&["--url", &server.url(), "--user", "alice", "--no-reconnect"]);
    server.wait_counter("joins", joins + 1);
    server.signal(libc::SIGTERM);
    let (status, stderr) = client.wait_exit();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("1001 server shutting down"), "{stderr}");
}

#[test]
fn bind_sets_the_source_address() {
    // One connection per address: 127.0.0.1 is taken, so only --bind gets in.
    let server = ServerProcess::start(&["--max-conns-per-ip", "1"]);
    let mut listener = Client::joined_over(connect_from("127.0.0.1", &server), &server, "listener");
    let (status, stderr) = run(&["--url", &server.url(), "--user", "bot"], "hi\n");
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("HTTP 429"), "{stderr}");
    let (status, stderr) = run(
        &[
            "--url",
            &server.url(),
            "--user",
            "bot",
            "--bind",
            "127.0.0.2",
        ],
        "hi\n",
    );
    assert!(status.success(), "{status} {stderr}");
    assert_eq!(listener.recv()["text"], "hi");
}

/// A fake server on a free loopback port: `serve` gets the first connection.
fn fake_server(serve: impl FnOnce(TcpStream) + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((stream, _)) = listener.accept() {
            serve(stream);
        }
    });
    addr
}

/// What a terminal must never be handed: escape sequences (colours, titles,
/// screen clearing), bells, bidi overrides and isolates, zero-width characters.
fn assert_harmless(what: &str, text: &str) {
    for c in [
        '\x1b', '\x07', '\u{9b}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{2028}',
    ] {
        assert!(
            !text.contains(c),
            "{what} passed U+{:04X} through: {text:?}",
            u32::from(c)
        );
    }
}

#[test]
fn nothing_a_server_sends_reaches_the_terminal_raw() {
    let nasty = "\x1b]0;pwned\x07\x1b[2J\u{9b}31m\u{202E}nimda\u{2066}x\u{2069}\u{200B}\u{2028}";
    // A WebSocket server (tungstenite's) that sends a chat with hostile user
    // and text, then closes with a hostile reason.
    let addr = fake_server(move |stream| {
        let mut ws = tungstenite::accept(stream).expect("upgrade");
        let chat = json!({"type": "chat", "room": "public", "user": nasty, "text": nasty});
        ws.send(tungstenite::Message::text(chat.to_string()))
            .unwrap();
        let frame = tungstenite::protocol::CloseFrame {
            code: tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: nasty.into(),
        };
        let _ = ws.close(Some(frame));
        while ws.read().is_ok() {}
    });
    let client = ChatClient::start(&["--url", &format!("ws://{addr}/ws"), "--user", "me"]);
    let line = client.lines.recv_timeout(PATIENCE).expect("the chat line");
    assert_harmless("a chat line", &line);
    assert!(line.contains("\u{FFFD}nimda"), "{line:?}");
    // Stdin stays open: the server ends the connection, not us.
    let (status, stderr) = client.wait_exit();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert_harmless("a close reason", &stderr);
    assert!(stderr.contains("1000 \u{FFFD}]0;pwned"), "{stderr:?}");

    // An HTTP refusal whose reason phrase carries the one control character
    // HTTP allows there (a tab).
    let addr = fake_server(|mut stream| {
        let mut request = [0u8; 1024];
        let _ = stream.read(&mut request);
        let answer = "HTTP/1.1 403 Forbidden\tby\tadmin\r\nContent-Length: 0\r\n\r\n";
        let _ = stream.write_all(answer.as_bytes());
    });
    let (status, stderr) = run(&["--url", &format!("ws://{addr}/ws"), "--user", "me"], "");
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(!stderr.contains('\t'), "{stderr:?}");
    assert!(
        stderr.contains("HTTP 403 Forbidden\u{FFFD}by\u{FFFD}admin"),
        "{stderr:?}"
    );
}

#[test]
fn history_prints_the_last_chats_before_the_live_ones() {
    let server = ServerProcess::start(&[]);
    let mut alice = Client::joined(&server, "alice");
    for i in 1..=5 {
        alice.send(
            json!({"type": "chat", "text": format!("earlier {i}"), "ts": 1_700_000_000_000u64}),
        );
        alice.sync();
    }
    let mut bob = ChatClient::start(&["--url", &server.url(), "--user", "bob", "--history", "3"]);
    for i in 3..=5 {
        bob.expect_chat(&format!("alice: earlier {i}"));
    }
    let divider = bob.lines.recv_timeout(PATIENCE).expect("the divider");
    assert_eq!(divider, "-- earlier messages above, live from here --");
    alice.send(json!({"type": "chat", "text": "now"}));
    bob.expect_chat("alice: now");
    bob.type_line("/quit");
    let (status, stderr) = bob.finish();
    assert!(status.success(), "{status} {stderr}");
}

#[test]
fn replayed_chats_show_their_senders_time_and_times_never_go_back() {
    let server = ServerProcess::start(&[]);
    let mut alice = Client::joined(&server, "alice");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;
    let hour = 3_600_000;
    let sent = [
        ("two hours ago", Some(now - 2 * hour)),
        ("no time", None),
        ("before the one above", Some(now - 3 * hour)),
        ("an hour ago", Some(now - hour)),
        ("from the future", Some(now + hour)),
    ];
    for (text, ts) in sent {
        let mut chat = json!({"type": "chat", "text": text});
        if let Some(ts) = ts {
            chat["ts"] = ts.into();
        }
        alice.send(chat);
        alice.sync();
    }
    // In UTC, so the expected clock time is plain arithmetic.
    let hms = |ms: u64| {
        let s = ms / 1000 % 86_400;
        format!("[{:02}:{:02}:{:02}]", s / 3600, s / 60 % 60, s % 60)
    };
    let mut bob = ChatClient::start_with_env(
        &["--url", &server.url(), "--user", "bob", "--history", "5"],
        &[("TZ", "UTC")],
    );
    let next = || bob.lines.recv_timeout(PATIENCE).expect("a line");
    assert_eq!(
        next(),
        format!("{} alice: two hours ago", hms(now - 2 * hour))
    );
    assert_eq!(next(), "[--:--:--] alice: no time");
    assert_eq!(next(), "[--:--:--] alice: before the one above");
    assert_eq!(next(), format!("{} alice: an hour ago", hms(now - hour)));
    assert_eq!(next(), "[--:--:--] alice: from the future");
    assert_eq!(next(), "-- earlier messages above, live from here --");
    bob.type_line("/quit");
    let (status, stderr) = bob.finish();
    assert!(status.success(), "{status} {stderr}");
}

#[test]
fn the_client_comes_back_after_a_restart_and_prints_what_it_missed() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("client-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("room.json");
    let _ = std::fs::remove_file(&file);
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let args = ["--port", &port, "--history-file", file.to_str().unwrap()];
    let server = ServerProcess::start(&args);
    let mut alice = Client::joined(&server, "alice");
    let mut bob = ChatClient::joined(&server, "bob");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    alice.send(json!({"type": "chat", "text": "before", "ts": now_ms()}));
    bob.expect_chat("alice: before");

    // A deploy: SIGTERM (1001), the same server again on the same port. Bob's
    // first attempt comes 0.375-0.625 s after the close; Alice says
    // something before it.
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(PATIENCE);
    let server = ServerProcess::start(&args);
    let mut alice = Client::joined(&server, "alice");
    alice.send(json!({"type": "chat", "text": "while you were away", "ts": now_ms()}));
    alice.sync();
    let mut lines = Vec::new();
    while lines.len() < 2 {
        lines.push(bob.lines.recv_timeout(PATIENCE).expect("bob came back"));
    }
    assert!(
        lines.contains(&"-- reconnected --".to_string()),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("] alice: while you were away")),
        "{lines:?}"
    );
    // Back for good: live chats flow both ways, nothing twice.
    alice.send(json!({"type": "chat", "text": "live", "ts": now_ms()}));
    bob.expect_chat("alice: live");
    bob.type_line("hello again");
    assert_eq!(alice.recv()["text"], "hello again");
    lines.extend(bob.lines.try_iter());
    assert!(lines.iter().all(|l| !l.contains("before")), "{lines:?}");
    bob.type_line("/quit");
    let (status, stderr) = bob.finish();
    assert!(status.success(), "{status} {stderr}");
    assert!(
        stderr.contains("1001 server shutting down; reconnecting in"),
        "{stderr}"
    );
}

#[test]
fn input_that_ends_while_the_connection_is_down_is_said_and_ends() {
    let server = ServerProcess::start(&[]);
    let mut bob = ChatClient::joined(&server, "bob");
    server.signal(libc::SIGTERM);
    let _ = server.wait_exit(PATIENCE);
    // A line that can no longer be sent, then the end of the input: it
    // waits a while for a connection, then says so and exits 5.
    bob.type_line("typed while down");
    let started = Instant::now();
    let (status, stderr) = bob.finish();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("the input ended while the connection was down: 1 lines not sent"),
        "{stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_server_gone_silent_is_given_up_after_25_seconds() {
    let server = ServerProcess::start(&[]);
    let bob = ChatClient::joined(&server, "bob");
    // Stopped, not closed: no FIN, no reset, nothing (a dead path).
    server.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_secs(27));
    server.signal(libc::SIGKILL);
    let (status, stderr) = bob.finish();
    assert!(status.success(), "{status} {stderr}");
    assert!(
        stderr.contains("nothing from the server for 25 s; reconnecting in"),
        "{stderr}"
    );
}

#[test]
fn a_notice_is_set_apart_and_a_kick_or_a_ban_is_final() {
    let token = common::TokenFile::new();
    let server = ServerProcess::start(&token.flags());
    let admin = |method, path, body| common::admin_ok(&server, method, path, Some(body));
    let bob = ChatClient::joined(&server, "bob");
    admin(
        "POST",
        "/admin/announce",
        json!({"text": "maintenance at noon"}),
    );
    bob.expect_chat("* notice: maintenance at noon");
    admin(
        "POST",
        "/admin/kick",
        json!({"user": "bob", "reason": "rude"}),
    );
    let (status, stderr) = bob.wait_exit();
    assert_eq!(status.code(), Some(5), "{stderr}");
    assert!(
        stderr.contains("4001 kicked by the operator: rude"),
        "{stderr}"
    );
    assert!(!stderr.contains("reconnecting"), "{stderr}");
    let ban = json!({"address": "127.0.0.1", "seconds": 60, "reason": "spam"});
    admin("POST", "/admin/ban", ban);
    let (status, stderr) = run(&["--url", &server.url(), "--user", "bob"], "");
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("HTTP 403 Forbidden: This address is banned from the chat for")
            && stderr.contains("spam"),
        "{stderr}"
    );
}
