//! Several instances sharing the room through a real `redis-server` (on a free
//! loopback port, started and stopped here). Runs with `--features redis`
//! (`tests/redis.sh` installs redis-server and runs it).
#![cfg(feature = "redis")]

mod common;

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Client, PATIENCE, ServerProcess, http_get};
use serde_json::json;

/// A redis-server of our own, killed on drop.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    /// Starts on `port`, or on a free one.
    fn start(port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(|| {
            let probe = TcpListener::bind("127.0.0.1:0").expect("a free port");
            probe.local_addr().unwrap().port()
        });
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server (tests/redis.sh installs it)");
        let deadline = Instant::now() + PATIENCE;
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
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
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_backplane(server: &ServerProcess, state: &str) {
    let deadline = Instant::now() + PATIENCE;
    while server.stats()["backplane"]["state"] != state {
        assert!(Instant::now() < deadline, "backplane never {state}");
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
    for server in &servers {
        wait_backplane(server, "up");
    }
    b.send(chat("back"));
    for client in [&mut a, &mut a2, &mut c] {
        expect_chat(client, "b", "back");
    }
    expect_nothing(&mut [&mut a, &mut a2, &mut b, &mut c]);
}
