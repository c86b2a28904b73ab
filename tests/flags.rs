//! Flags through the real binary: nonsense is refused at start with one
//! line on stderr and exit status 2, before anything listens.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

#[test]
fn nonsense_flags_are_refused_with_one_line_and_status_2() {
    let cases: &[&[&str]] = &[
        &["--max-backlog", "0"],
        &["--max-message-size", "0"],
        &["--max-conns", "0"],
        &["--max-conns", "1000000000000"],
        &["--ping-interval", "30", "--pong-timeout", "30"],
        &["--ping-interval", "90"],
        &["--pong-timeout", "-1"],
        &["--handshake-timeout", "0"],
        &["--duration", "soon"],
        &["--port", "70000"],
        &["--no-such-flag"],
        &["--duration", "0.0004"],
        #[cfg(not(feature = "redis"))]
        &["--redis", "redis://127.0.0.1:6379/"],
    ];
    for args in cases {
        let mut child = Command::new(server_binary())
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(*args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run the server");
        // A server that took the flags would run on: give it 5 s, then stop it.
        let deadline = Instant::now() + Duration::from_secs(5);
        while child.try_wait().expect("try_wait").is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let output = child.wait_with_output().expect("collect the output");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?} was accepted: {stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(stderr.starts_with("websocket-public-chat: "), "{stderr:?}");
        assert!(output.stdout.is_empty(), "{args:?} listened");
    }
}

#[test]
fn the_edges_of_each_range_are_accepted() {
    let server = ServerProcess::start(&[
        "--max-backlog",
        "16384",
        "--max-message-size",
        "1",
        "--max-conns",
        "16777216",
        "--ping-interval",
        "0.01",
        "--pong-timeout",
        "0.02",
    ]);
    // The smallest backlog still serves a connection (with 0 it never read again).
    let mut raw = RawClient::connect(&server);
    raw.send_frame(FIN | PING, b"x");
    assert_eq!(raw.read_frame(), Some((FIN | PONG, b"x".to_vec())));
}

#[test]
fn an_address_that_cannot_be_bound_is_named() {
    // A port that is taken, for the public listener and for --metrics-address.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let busy = taken.local_addr().expect("its address").to_string();
    let port = busy.rsplit(':').next().expect("a port").to_string();
    let cases: [(&[&str], String); 2] = [
        (
            &["--port", "0", "--metrics-address", &busy],
            format!("cannot start on {busy} (--private-address): "),
        ),
        (
            &["--port", &port],
            format!("cannot start on 127.0.0.1:{port}: "),
        ),
    ];
    for (args, said) in cases {
        let output = Command::new(server_binary())
            .args(["--host", "127.0.0.1"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run the server");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
        assert!(
            stderr.starts_with(&format!("websocket-public-chat: {said}")),
            "{args:?}: {stderr:?}"
        );
        assert!(output.stdout.is_empty(), "{args:?} listened");
    }
}
