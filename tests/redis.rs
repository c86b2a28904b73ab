//! Several instances sharing the room through a real `redis-server` (on a free
//! loopback port, started and stopped here). Runs with `--features redis`
//! (`tests/redis.sh` installs redis-server and runs it).
#![cfg(feature = "redis")]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Client, PATIENCE, ServerProcess, http_get, server_binary};
use serde_json::json;

/// A redis-server of our own, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

fn free_port() -> u16 {
    let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
    probe.local_addr().unwrap().port()
}

/// Waits (bounded) until something listens on `port`.
fn wait_listening(port: u16) {
    let deadline = Instant::now() + PATIENCE;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Redis {
    /// Starts on `port`, or on a free one.
    fn start(port: Option<u16>) -> Self {
        Self::start_with(port, &[])
    }

    /// Starts with extra flags; `port` is the plain-text port, or (with
    /// `--port 0` in `flags`) the one to wait for.
    fn start_with(port: Option<u16>, flags: &[&str]) -> Self {
        let port = port.unwrap_or_else(free_port);
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .args(flags)
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (tests/redis.sh installs it)");
        Self { child, port }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }

    /// Publishes `payload` on the room's channel, as any Redis client could
    /// (RESP written by hand, not the server's `redis` crate); returns how
    /// many subscribers got it.
    fn publish(&self, payload: &[u8]) -> i64 {
        let reply = self.command(&[b"PUBLISH", b"websocket-public-chat:public", payload]);
        reply
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{reply:?}"))
    }

    /// Sends one command; returns the first line of the reply.
    fn command(&self, args: &[&[u8]]) -> String {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut command = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            command.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            command.extend_from_slice(arg);
            command.extend_from_slice(b"\r\n");
        }
        stream.write_all(&command).expect("send the command");
        let mut reply = String::new();
        BufReader::new(stream)
            .read_line(&mut reply)
            .expect("read the reply");
        reply.trim().to_string()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_backplane(server: &ServerProcess, state: &str) {
    wait_link(server, "state", state);
}

/// Waits (bounded) until `/stats`'s `backplane.what` says `state`.
fn wait_link(server: &ServerProcess, what: &str, state: &str) {
    let deadline = Instant::now() + PATIENCE;
    while server.stats()["backplane"][what] != state {
        assert!(Instant::now() < deadline, "backplane {what} never {state}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn chat(text: &str) -> serde_json::Value {
    json!({"type": "chat", "text": text})
}

/// The next message is a chat from `user` saying `text`.
fn expect_chat(client: &mut Client, user: &str, text: &str) {
    let got = client.recv();
    assert_eq!(
        (&got["user"], &got["text"]),
        (&json!(user), &json!(text)),
        "{got}"
    );
}

/// Nothing more arrives: no duplicates, nothing from where it should not.
fn expect_nothing(clients: &mut [&mut Client]) {
    std::thread::sleep(Duration::from_millis(300));
    for client in clients {
        assert_eq!(client.sync(), Vec::<serde_json::Value>::new());
    }
}

#[test]
fn instances_share_the_room_and_survive_a_redis_restart() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let servers: Vec<ServerProcess> = (0..3)
        .map(|_| ServerProcess::start(&["--redis", &redis.url()]))
        .collect();
    for server in &servers {
        wait_backplane(server, "up");
    }
    let mut a = Client::joined(&servers[0], "a");
    let mut a2 = Client::joined(&servers[0], "a2");
    let mut b = Client::joined(&servers[1], "b");
    let mut c = Client::joined(&servers[2], "c");

    // Every other client, on every instance, gets each chat exactly once, stamped.
    a.send(chat("from a"));
    for client in [&mut a2, &mut b, &mut c] {
        expect_chat(client, "a", "from a");
    }
    b.send(chat("from b"));
    for client in [&mut a, &mut a2, &mut c] {
        expect_chat(client, "b", "from b");
    }
    // Order from one sender is kept across instances.
    for i in 0..10 {
        c.send(chat(&format!("c{i}")));
    }
    for client in [&mut a, &mut a2, &mut b] {
        for i in 0..10 {
            expect_chat(client, "c", &format!("c{i}"));
        }
    }
    expect_nothing(&mut [&mut a, &mut a2, &mut b, &mut c]);
    let stats = servers[0].stats()["backplane"].clone();
    assert_eq!(
        (&stats["published"], &stats["received"]),
        (&json!(1), &json!(11))
    );

    // Redis gone: the link shows down, local relay goes on, nothing crosses.
    let port = redis.stop();
    for server in &servers {
        wait_backplane(server, "down");
        let (status, _, body) = http_get(server.addr, "/health");
        assert_eq!(status, 200);
        assert!(body.contains("backplane down"), "{body}");
    }
    a.send(chat("local only"));
    expect_chat(&mut a2, "a", "local only");
    expect_nothing(&mut [&mut b, &mut c]);
    assert!(servers[0].stats()["backplane"]["lost_outgoing"].as_u64() >= Some(1));

    // Redis back on the same port: relay across instances resumes by itself.
    let _redis = Redis::start(Some(port));
    wait_listening(port);
    for server in &servers {
        wait_backplane(server, "up");
    }
    b.send(chat("back"));
    for client in [&mut a, &mut a2, &mut c] {
        expect_chat(client, "b", "back");
    }
    expect_nothing(&mut [&mut a, &mut a2, &mut b, &mut c]);
}

#[test]
fn whatever_is_published_on_the_channel_is_checked_like_a_local_chat() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let server = ServerProcess::start(&["--redis", &redis.url(), "--max-message-size", "1000"]);
    wait_backplane(&server, "up");
    let mut alice = Client::joined(&server, "alice");
    // Another instance's id in front, as instances publish.
    let from_elsewhere = |json: String| format!("00000000deadbeef {json}").into_bytes();
    let refused = [
        // Presence to a client that never asked, and a count that lies.
        from_elsewhere(r#"{"type":"presence","room":"public","online":-7}"#.into()),
        // Fields of the wrong type.
        from_elsewhere(
            r#"{"type":"chat","room":"public","user":{"is":"admin"},"text":{"x":1}}"#.into(),
        ),
        // A name that would show as another.
        from_elsewhere(
            r#"{"type":"chat","room":"public","user":"\u202enimda","text":"hi"}"#.into(),
        ),
        // JSON that strict parsers reject.
        from_elsewhere(
            r#"{"type":"chat","room":"public","user":"bob","text":"x","ts":1e400}"#.into(),
        ),
        // Far over the size limit this server keeps: dropped before it is queued.
        from_elsewhere(format!(
            r#"{{"type":"chat","room":"public","user":"bob","text":"{}"}}"#,
            "x".repeat(5_000_000)
        )),
        // Just over it: the smallest local chat with this text would be
        // 1001 bytes, which a client here could not send either.
        from_elsewhere(format!(
            r#"{{"type":"chat","room":"public","user":"bob","text":"{}"}}"#,
            "x".repeat(976)
        )),
        // No instance id: not from an instance.
        br#"{"type":"chat","room":"public","user":"bob","text":"hi"}"#.to_vec(),
    ];
    for message in &refused {
        assert_eq!(redis.publish(message), 1);
    }
    // A well-formed chat from elsewhere passes, rebuilt by this server's serializer.
    redis.publish(&from_elsewhere(
        r#"{"ts":5,"text":"hi \"all\"","extra":"dropped","user":"bob","room":"public","type":"chat"}"#.into(),
    ));
    assert_eq!(
        alice.recv(),
        json!({"type": "chat", "room": "public", "id": 1, "user": "bob", "text": "hi \"all\"", "ts": 5})
    );
    // The largest text a local client may send passes from the channel too.
    let largest = "x".repeat(975);
    redis.publish(&from_elsewhere(format!(
        r#"{{"type":"chat","room":"public","user":"bob","text":"{largest}"}}"#
    )));
    assert_eq!(alice.recv()["text"], largest.as_str());
    let mut carol = Client::joined(&server, "carol");
    carol.send(chat(&largest));
    assert_eq!(alice.recv()["text"], largest.as_str());
    expect_nothing(&mut [&mut alice]);
    let stats = server.stats();
    assert_eq!(stats["backplane_rejected"], 5, "{stats}");
    assert_eq!(stats["backplane"]["malformed"], 1, "{stats}");
    assert_eq!(stats["backplane"]["oversized"], 1, "{stats}");
    // Counted when queued for the loop, before the engine's checks.
    assert_eq!(stats["backplane"]["received"], 7, "{stats}");
    // One byte more from a local client is too big for this server.
    carol.send(chat(&"x".repeat(976)));
    assert_eq!(carol.recv_close(), Some(1009));
}

#[test]
fn a_subscription_redis_cuts_off_is_counted_and_comes_back() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let a = ServerProcess::start(&["--redis", &redis.url()]);
    let b = ServerProcess::start(&["--redis", &redis.url()]);
    wait_backplane(&a, "up");
    wait_backplane(&b, "up");
    // A 33 MiB publish (anyone with PUBLISH on the channel can) passes Redis's
    // default pub/sub output buffer limit: Redis cuts every subscriber off.
    // Instances cannot send such a chat: --max-message-size is at most 1 MiB
    // with --redis.
    assert_eq!(redis.publish(&vec![b'x'; (33 << 20) + 1]), 2);
    for server in [&a, &b] {
        let deadline = Instant::now() + PATIENCE;
        while server.stats()["backplane"]["subscriptions_lost"] != 1 {
            assert!(
                Instant::now() < deadline,
                "the lost subscription was not counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_link(server, "subscriber", "up");
    }
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("after the cut"));
    expect_chat(&mut bob, "alice", "after the cut");

    // And an instance may not allow chats near that size.
    let output = Command::new(server_binary())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--redis",
            &redis.url(),
        ])
        .args(["--max-message-size", "1048577"])
        .output()
        .expect("run the server");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at most 1048576 with --redis"), "{stderr}");
}

/// A TCP proxy in front of Redis that can cut the network without closing
/// anything: while cut, nothing is forwarded and nobody sees a FIN or a
/// reset; the connections that were open when it was cut stay dead after it
/// heals (as when a partition loses the path's state), and only new
/// connections work again.
struct FreezingProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    /// Connections made before the last cut are dead for good.
    cuts: Arc<std::sync::atomic::AtomicU64>,
}

impl FreezingProxy {
    fn start(redis_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let cuts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut2, cuts2) = (Arc::clone(&cut), Arc::clone(&cuts));
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", redis_port)) else {
                    continue;
                };
                let born = cuts2.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let (cut, cuts) = (Arc::clone(&cut2), Arc::clone(&cuts2));
                    std::thread::spawn(move || {
                        pump(from, to, || {
                            cut.load(Ordering::SeqCst) || cuts.load(Ordering::SeqCst) != born
                        })
                    });
                }
            }
        });
        Self { port, cut, cuts }
    }

    /// Cuts the network (`true`) or heals it (`false`).
    fn cut(&self, cut: bool) {
        if cut {
            self.cuts.fetch_add(1, Ordering::SeqCst);
        }
        self.cut.store(cut, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` while not `stalled()`; stalled, it reads nothing, so
/// bytes wait in the socket buffers and nobody sees a FIN or a reset.
fn pump(mut from: TcpStream, mut to: TcpStream, stalled: impl Fn() -> bool) {
    from.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if stalled() {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_redis_gone_silent_is_noticed_and_the_link_comes_back() {
    let redis = Redis::start(None);
    wait_listening(redis.port);
    let proxy = FreezingProxy::start(redis.port);
    let proxied = format!("redis://127.0.0.1:{}/", proxy.port);
    let a = ServerProcess::start(&["--redis", &proxied]);
    let b = ServerProcess::start(&["--redis", &proxied]);
    wait_backplane(&a, "up");
    wait_backplane(&b, "up");
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("before"));
    expect_chat(&mut bob, "alice", "before");

    // The network path to Redis goes silent: no FIN, no reset. Both
    // connections of both instances notice, the subscriptions included
    // (nothing arrives on them, which looks like a quiet channel).
    proxy.cut(true);
    let frozen_at = Instant::now();
    for server in [&a, &b] {
        wait_link(server, "subscriber", "down");
        wait_link(server, "publisher", "down");
        let (_, _, body) = http_get(server.addr, "/health");
        assert!(body.contains("backplane down"), "{body}");
    }
    let noticed = frozen_at.elapsed();
    assert!(
        noticed < Duration::from_secs(6),
        "noticed after {noticed:?}"
    );
    // Local relay goes on meanwhile.
    let mut alice2 = Client::joined(&a, "alice2");
    alice.send(chat("local"));
    expect_chat(&mut alice2, "alice", "local");

    // The network heals, but the old connections are dead: both instances
    // must have noticed, reconnected, and chats cross again.
    proxy.cut(false);
    for server in [&a, &b] {
        wait_backplane(server, "up");
    }
    alice.send(chat("after"));
    expect_chat(&mut bob, "alice", "after");
    expect_chat(&mut alice2, "alice", "after");
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (tests/redis.sh installs it)");
    assert!(status.success(), "openssl {args:?}");
}

#[test]
fn rediss_with_a_private_authority_and_a_password_never_shown() {
    // A certificate authority and a certificate for 127.0.0.1 signed by it.
    let dir = std::env::temp_dir().join(format!("wpc-redis-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=test authority",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "redis.key",
            "-out",
            "redis.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "redis.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "redis.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let tls_port = free_port();
    let path = |name: &str| dir.join(name).display().to_string();
    let redis = Redis::start_with(
        None,
        &[
            "--port",
            "0",
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path("redis.pem"),
            "--tls-key-file",
            &path("redis.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            "sekret-pass",
        ],
    );
    wait_listening(tls_port);
    let url = format!("rediss://:sekret-pass@127.0.0.1:{tls_port}/");

    // Two instances over TLS, trusting the test's authority: the room is shared.
    let ca = path("ca.pem");
    let a = ServerProcess::start(&["--redis", &url, "--redis-ca", &ca]);
    let b = ServerProcess::start(&["--redis", &url, "--redis-ca", &ca]);
    wait_backplane(&a, "up");
    wait_backplane(&b, "up");
    let mut alice = Client::joined(&a, "alice");
    let mut bob = Client::joined(&b, "bob");
    alice.send(chat("over tls"));
    expect_chat(&mut bob, "alice", "over tls");
    let stats = a.stats().to_string();
    assert!(!stats.contains("sekret"), "{stats}");

    // Without the authority, the certificate is not trusted: never up.
    let untrusting = ServerProcess::start(&["--redis", &url]);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(untrusting.stats()["backplane"]["state"], "down");

    // A wrong password is said on stderr, once, with Redis's reason.
    let output = Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--duration", "3"])
        .args([
            "--redis",
            &url.replace("sekret-pass", "wrong-pass"),
            "--redis-ca",
            &ca,
        ])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    for what in ["publisher", "subscriber"] {
        let said = format!("Redis {what}: down: ");
        assert_eq!(stderr.matches(&said).count(), 1, "{stderr}");
    }
    assert!(stderr.contains("authentication failed"), "{stderr}");
    assert!(!stderr.contains("wrong-pass"), "{stderr}");

    // A --redis-ca file that holds no certificate stops the server at once.
    let garbage = path("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let output = Command::new(server_binary())
        .args(["--host", "127.0.0.1", "--port", "0", "--duration", "5"])
        .args(["--redis", &url, "--redis-ca", &garbage])
        .output()
        .expect("run the server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("--redis-ca"), "{stderr}");
    assert!(output.stdout.is_empty(), "it listened: {stderr}");

    // Whatever goes wrong, the password is not printed: not in a mistyped
    // URL, nor one whose password holds '/', '#' or '?'.
    let mut mistyped: Vec<Vec<String>> = [
        "redis://:sekret/pass@127.0.0.1:1/",
        "redis://:sekret#pass@127.0.0.1:1/",
        "redis://:sekret?pass@127.0.0.1:1/",
        "redis:/:sekret-pass@127.0.0.1:1/",
        "redis:sekret-pass@127.0.0.1",
        "unix:///tmp/x.sock?pass=sekret-pass",
    ]
    .iter()
    .map(|url| vec!["--redis".to_string(), url.to_string()])
    .collect();
    mistyped.push(vec![
        "--redis".to_string(),
        url.clone(),
        "--redis-ca".to_string(),
        garbage.clone(),
    ]);
    for args in mistyped.into_iter().chain([
        vec![
            "--redis".to_string(),
            format!("rediss://:sekret-pass@127.0.0.1:{tls_port}/not-a-db"),
        ],
        vec![
            "--redis".to_string(),
            "redis://:sekret-pass@[bad".to_string(),
        ],
        vec![
            "--redis".to_string(),
            url.clone(),
            "--redis-ca".to_string(),
            "/no/such/file".to_string(),
        ],
    ]) {
        let output = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", "0", "--duration", "1"])
            .args(&args)
            .output()
            .expect("run the server");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(!printed.contains("sekret"), "{args:?} printed {printed:?}");
    }
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}
