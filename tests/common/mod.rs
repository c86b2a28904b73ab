//! Test harness: the real server binary on an ephemeral loopback port, and
//! two independent clients: `tungstenite`, and a raw socket with a tiny
//! frame encoder/decoder of its own (not the server's codec) for bad input.

// Each test file uses a different part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

/// Upper bound for any single wait in a test.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The server binary under test: this build's, or `SERVER_BIN` (to show
/// that a test fails on an older build).
pub fn server_binary() -> std::path::PathBuf {
    std::env::var_os("SERVER_BIN")
        .map(Into::into)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_websocket-public-chat").into())
}

/// A running server process, killed on drop if the test did not stop it.
/// What it says on stderr goes to a log file of its own under `target/tmp`,
/// shown only if the test fails (and removed if it passes).
pub struct ServerProcess {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// Its stderr.
    pub log: std::path::PathBuf,
    pub addr: SocketAddr,
    /// With `--metrics-address`: where `/metrics` is served.
    pub metrics: Option<SocketAddr>,
}

impl ServerProcess {
    /// Starts the server on 127.0.0.1 with a free port and the given extra flags.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(server_binary());
        command.args(args);
        Self::spawn(command)
    }

    /// Starts the server with its open-file limit (soft and hard) set to `fds`.
    pub fn start_with_fd_limit(fds: u32, args: &[&str]) -> Self {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {fds} && exec \"$0\" \"$@\""))
            .arg(server_binary())
            .args(args);
        Self::spawn(command)
    }

    /// Runs `command` on a free port (unless its flags name a `--port`), on
    /// 127.0.0.1 unless they name a `--host`.
    fn spawn(mut command: Command) -> Self {
        if !command.get_args().any(|arg| arg == "--host") {
            command.args(["--host", "127.0.0.1"]);
        }
        static SERVERS: AtomicU64 = AtomicU64::new(0);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("server-logs");
        std::fs::create_dir_all(&dir).expect("a folder for server logs");
        let n = SERVERS.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("{}-{n}.log", std::process::id()));
        let stderr = std::fs::File::create(&log).expect("a server log");
        if !command.get_args().any(|arg| arg == "--port") {
            command.args(["--port", "0"]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start the server");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"));
        let metrics = line
            .split("private listener on ")
            .nth(1)
            .and_then(|rest| rest.trim_end().strip_suffix(')'))
            .and_then(|addr| addr.parse().ok());
        Self {
            child,
            stdout,
            log,
            addr,
            metrics,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends SIGTERM (or another signal) to this server only.
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the PID of a child we spawned and have not reaped.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill failed");
    }

    /// Waits (bounded) for the server to exit; returns its status and the rest of stdout.
    pub fn wait_exit(mut self, within: Duration) -> (ExitStatus, String) {
        self.wait_child(within)
    }

    /// Waits (bounded) for the server to exit; returns its status and
    /// everything it said on stderr.
    pub fn wait_exit_said(mut self, within: Duration) -> (ExitStatus, String) {
        let (status, _) = self.wait_child(within);
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }

    fn wait_child(&mut self, within: Duration) -> (ExitStatus, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit within {within:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest).expect("read stdout");
        (status, rest)
    }

    /// GET /stats, parsed. A 503 (the server at `--max-conns`, say while
    /// closed connections are still on their way out) is retried, as its
    /// `Retry-After` asks.
    /// (From the private listener if there is one: only it serves `/stats` then.)
    pub fn stats(&self) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (status, _, body) = http_get(self.metrics.unwrap_or(self.addr), "/stats");
            if status == 503 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            assert_eq!(status, 200);
            return serde_json::from_str(&body).expect("stats JSON");
        }
    }

    /// Polls /stats until `counter` reaches `at_least` (bounded); returns its value.
    pub fn wait_counter(&self, counter: &str, at_least: u64) -> u64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.stats()[counter]
                .as_u64()
                .unwrap_or_else(|| panic!("no counter {counter}"));
            if value >= at_least || Instant::now() > deadline {
                return value;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// CPU time the server has used (user + system), from /proc/PID/stat.
    pub fn cpu_time(&self) -> Duration {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("read /proc stat");
        // Fields after the command name, which is in parentheses: utime and stime are 14 and 15.
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        let ticks = fields[11] + fields[12];
        // USER_HZ is 100 on Linux.
        Duration::from_millis(ticks * 10)
    }

    /// VmRSS of the server process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            let said = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("server {} said on stderr:\n{said}", self.addr);
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// One line on the test run's own stderr (not captured by the test harness):
/// what a test breaks on purpose, so what the servers log about it (in their
/// logs) is not read as a failure.
pub fn on_purpose(what: &str) {
    let _ = writeln!(std::io::stderr(), "  (on purpose: {what})");
}

/// Sends raw request bytes and reads the whole response (until the server closes).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream.write_all(request).expect("send request");
    let mut response = Vec::new();
    match stream.read_to_end(&mut response) {
        Ok(_) => {}
        Err(e) => panic!(
            "reading the response failed after {} bytes: {e}",
            response.len()
        ),
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// GET `path`: status, head, body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    let response = http_raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    );
    split_response(&response)
}

pub fn split_response(response: &str) -> (u16, String, String) {
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {response:?}"));
    (status, head.to_string(), body.to_string())
}

/// The admin token the tests' servers are given (`TokenFile`).
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A file for `--admin-token-file` (by default holding `ADMIN_TOKEN`),
/// removed on drop.
pub struct TokenFile(pub std::path::PathBuf);

impl TokenFile {
    pub fn new() -> Self {
        Self::holding(&format!("{ADMIN_TOKEN}\n"))
    }

    /// A token file holding `text` (a bad token, say).
    pub fn holding(text: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join(format!("admin-token-{}-{n}", std::process::id()));
        std::fs::write(&path, text).expect("write the token file");
        Self(path)
    }

    /// The flags that serve the admin API with this token on a private listener.
    pub fn flags(&self) -> [&str; 4] {
        let path = self.0.to_str().expect("a UTF-8 path");
        [
            "--private-address",
            "127.0.0.1:0",
            "--admin-token-file",
            path,
        ]
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An admin request: status, head, body (raw HTTP, so any mistake can be sent).
pub fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String, String) {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n");
    if let Some(token) = token {
        request += &format!("Authorization: Bearer {token}\r\n");
    }
    match body {
        Some(body) => {
            request += &format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => request += "\r\n",
    }
    split_response(&http_raw(addr, request.as_bytes()))
}

/// An admin call with `ADMIN_TOKEN` on `server`'s private listener that
/// must answer 200; its JSON.
pub fn admin_ok(server: &ServerProcess, method: &str, path: &str, body: Option<Value>) -> Value {
    let body = body.map(|b| b.to_string());
    let private = server.metrics.expect("a private listener");
    let (status, _, answer) = admin_call(private, method, path, Some(ADMIN_TOKEN), body.as_deref());
    assert_eq!(status, 200, "{method} {path}: {answer}");
    serde_json::from_str(&answer).expect("JSON")
}

/// A valid upgrade request for /ws.
pub fn upgrade_request(extra_headers: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// A tungstenite client.
pub struct Client {
    pub ws: WebSocket<TcpStream>,
}

impl Client {
    pub fn connect(server: &ServerProcess) -> Self {
        Self::upgrade(TcpStream::connect(server.addr).expect("connect"), server)
    }

    fn upgrade(stream: TcpStream, server: &ServerProcess) -> Self {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        let (ws, response) = tungstenite::client(server.url(), stream).expect("handshake");
        assert_eq!(response.status(), 101);
        Self { ws }
    }

    /// Connects and joins as `name`; returns once the server has processed the join.
    pub fn joined(server: &ServerProcess, name: &str) -> Self {
        let stream = TcpStream::connect(server.addr).expect("connect");
        Self::joined_over(stream, server, name)
    }

    /// Upgrades `stream` and joins as `name`.
    pub fn joined_over(stream: TcpStream, server: &ServerProcess, name: &str) -> Self {
        let mut client = Self::upgrade(stream, server);
        client.send(json!({"type": "join", "room": "public", "user": name}));
        client.sync();
        client
    }

    /// Upgrades `stream` and sends `join` (which may ask for history); what
    /// the server answers is left to read.
    pub fn joined_over_with(stream: TcpStream, server: &ServerProcess, join: Value) -> Self {
        let mut client = Self::upgrade(stream, server);
        client.send(join);
        client
    }

    pub fn send(&mut self, value: Value) {
        self.send_text(&value.to_string());
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).expect("send");
    }

    /// Queues a message without flushing (to send a burst in one write).
    pub fn queue(&mut self, value: Value) {
        self.ws
            .write(Message::text(value.to_string()))
            .expect("queue");
    }

    pub fn flush(&mut self) {
        self.ws.flush().expect("flush");
    }

    /// The next text message, as JSON. Pings are answered by tungstenite while reading.
    pub fn recv(&mut self) -> Value {
        loop {
            match self.ws.read() {
                Ok(Message::Text(text)) => {
                    return serde_json::from_str(&text).expect("JSON from server");
                }
                Ok(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text message, got {other:?}"),
            }
        }
    }

    /// A round trip through the server: when it returns, everything sent
    /// before has been processed. Returns the text messages received meanwhile.
    pub fn sync(&mut self) -> Vec<Value> {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        self.send(json!({"type": "ping", "ts": token}));
        let mut before = Vec::new();
        loop {
            let message = self.recv();
            if message == json!({"type": "pong", "ts": token}) {
                return before;
            }
            before.push(message);
        }
    }

    /// Reads until the server's close frame; returns its code.
    pub fn recv_close(&mut self) -> Option<u16> {
        self.recv_close_frame().map(|(code, _)| code)
    }

    /// Reads until the server's close frame; returns its code and reason.
    pub fn recv_close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            match self.ws.read() {
                Ok(Message::Close(frame)) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Ok(_) => continue,
                Err(e) => panic!("expected a close frame, got error {e}"),
            }
        }
    }

    /// After a close handshake, the server must end the TCP stream cleanly (FIN, no reset).
    pub fn expect_clean_end(&mut self) {
        loop {
            match self.ws.read() {
                Err(tungstenite::Error::ConnectionClosed) => return,
                Ok(_) => continue,
                Err(e) => panic!("expected a clean end, got {e}"),
            }
        }
    }
}

/// A raw WebSocket client for malformed input, with its own tiny codec.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
}

/// The mask every raw client frame uses.
pub const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A frame with the given first byte (FIN, RSV, opcode), masked with `MASK` unless `mask` is false.
pub fn frame_bytes(first: u8, payload: &[u8], mask: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if mask { 0x80 } else { 0 };
    if payload.len() < 126 {
        out.push(mask_bit | payload.len() as u8);
    } else if payload.len() <= 0xFFFF {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&(payload.len() as u64).to_be_bytes());
    }
    if mask {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// The header of a masked binary frame claiming `len` payload bytes (none follow).
pub fn header_claiming(len: u64) -> Vec<u8> {
    let mut header = vec![FIN | BINARY, 0x80 | 127];
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&MASK);
    header
}

/// Polls `/health` until the server accepts connections again (bounded).
pub fn wait_until_accepting(server: &ServerProcess) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = http_raw(server.addr, b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n");
        if split_response(&response).0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "the server never accepted again");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub const FIN: u8 = 0x80;
pub const TEXT: u8 = 0x1;
pub const BINARY: u8 = 0x2;
pub const CONTINUATION: u8 = 0x0;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

impl RawClient {
    /// Connects and completes the upgrade; fails the test on anything but 101.
    pub fn connect(server: &ServerProcess) -> Self {
        let mut client = Self::over(TcpStream::connect(server.addr).expect("connect"));
        client.upgrade();
        client
    }

    /// A raw client over a connected stream, before any request.
    pub fn over(stream: TcpStream) -> Self {
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Sends a valid upgrade request; fails the test on anything but 101.
    pub fn upgrade(&mut self) {
        self.send_raw(upgrade_request("").as_bytes());
        let head = self.read_head();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    }

    /// Connects and sends `bytes` as they are (a handshake, perhaps with frames behind it).
    pub fn connect_with(server: &ServerProcess, bytes: &[u8]) -> Self {
        let mut client = Self::over(TcpStream::connect(server.addr).expect("connect"));
        client.send_raw(bytes);
        client
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.send_raw(&frame_bytes(first, payload, true));
    }

    pub fn send_json(&mut self, value: Value) {
        self.send_frame(FIN | TEXT, value.to_string().as_bytes());
    }

    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 1 << 16];
        match self.stream.read(&mut chunk) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            Err(e) => panic!("read failed: {e}"),
        }
    }

    /// Reads the HTTP response head.
    pub fn read_head(&mut self) -> String {
        loop {
            let buf = &self.buf[self.start..];
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = buf[..end + 4].to_vec();
                self.start += end + 4;
                return String::from_utf8_lossy(&head).into_owned();
            }
            assert!(self.fill(), "connection closed before the response head");
        }
    }

    /// Reads one server frame: (first byte, payload). `None` at a clean end of stream.
    pub fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            let buf = &self.buf[self.start..];
            if buf.len() >= 2 {
                assert_eq!(buf[1] & 0x80, 0, "server frames must not be masked");
                let (len, at) = match buf[1] & 0x7F {
                    126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                    127 if buf.len() >= 10 => {
                        let mut be = [0u8; 8];
                        be.copy_from_slice(&buf[2..10]);
                        (u64::from_be_bytes(be) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    short => (usize::from(short), 2),
                };
                if len != usize::MAX && buf.len() >= at + len {
                    let frame = (buf[0], buf[at..at + len].to_vec());
                    // Consumed bytes are dropped in bulk, so many small frames cost O(1) each.
                    self.start += at + len;
                    if self.start > 1 << 16 {
                        self.buf.drain(..self.start);
                        self.start = 0;
                    }
                    return Some(frame);
                }
            }
            if !self.fill() {
                assert_eq!(self.start, self.buf.len(), "stream ended inside a frame");
                return None;
            }
        }
    }

    /// Reads frames until a text frame; returns it as JSON.
    pub fn recv_json(&mut self) -> Value {
        loop {
            let (first, payload) = self.read_frame().expect("a text frame, not the end");
            match first & 0x0F {
                TEXT => return serde_json::from_slice(&payload).expect("JSON"),
                PING | PONG => continue,
                other => panic!("unexpected opcode {other} ({payload:?})"),
            }
        }
    }

    /// Reads frames until the close frame; returns its code (None if it had none).
    pub fn recv_close(&mut self) -> Option<u16> {
        loop {
            let (first, payload) = self.read_frame().expect("a close frame, not the end");
            if first & 0x0F == CLOSE {
                assert_eq!(first & 0x80, 0x80, "close frames are never fragmented");
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }

    /// The server must end the stream with a FIN: read returns 0, not a reset.
    pub fn expect_eof(&mut self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => assert!(Instant::now() < deadline, "no end of stream"),
                Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {
                    panic!("no end of stream within {PATIENCE:?}")
                }
                Err(e) => panic!("stream ended with an error (reset?): {e}"),
            }
        }
    }

    /// The full close handshake from the client side after the server's close: answer, then see FIN.
    pub fn finish_close(&mut self, code: u16) {
        let _ = self
            .stream
            .write_all(&frame_bytes(FIN | CLOSE, &code.to_be_bytes(), true));
        self.expect_eof();
    }

    /// Asserts that nothing arrives within `wait`.
    pub fn expect_silence(&mut self, wait: Duration) {
        let unread = &self.buf[self.start..];
        assert!(unread.is_empty(), "unread bytes: {unread:?}");
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut chunk = [0u8; 64];
        match self.stream.read(&mut chunk) {
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            other => panic!("expected silence, got {other:?} {:?}", &chunk[..]),
        }
        self.stream.set_read_timeout(Some(PATIENCE)).unwrap();
    }
}

/// Raises this test process's soft open-file limit to `fds` (at most the hard limit).
pub fn raise_fd_limit(fds: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read or write only the struct we pass.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_cur.max(fds.min(limit.rlim_max));
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
    }
}

/// Connects from a chosen loopback source address (e.g. 127.0.0.2).
pub fn connect_from(source: &str, server: &ServerProcess) -> TcpStream {
    connect_with(source, None, server)
}

/// Connects from `source`, optionally with a small receive buffer (so the
/// kernel holds little for a client that stops reading).
pub fn connect_with(
    source: &str,
    receive_buffer: Option<usize>,
    server: &ServerProcess,
) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(size) = receive_buffer {
        socket.set_recv_buffer_size(size).expect("SO_RCVBUF");
    }
    let from: SocketAddr = format!("{source}:0").parse().expect("source address");
    socket.bind(&from.into()).expect("bind the source address");
    socket.connect(&server.addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    stream
}

/// A healthy conversation kept going in the background while a test attacks
/// the server: `talker` sends a numbered chat every 200 ms and `listener`
/// must receive each one, in order.
pub struct Chatter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<ChatterReport>,
}

/// What the healthy conversation saw.
#[derive(Debug)]
pub struct ChatterReport {
    pub sent: u64,
    pub received_in_order: u64,
    pub worst_delay: Duration,
}

impl Chatter {
    pub fn start(server: &ServerProcess) -> Self {
        let mut talker = Client::joined(server, "talker");
        let mut listener = Client::joined(server, "listener");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut report = ChatterReport {
                sent: 0,
                received_in_order: 0,
                worst_delay: Duration::ZERO,
            };
            // At least three exchanges, so the conversation spans the attack.
            while report.sent < 3 || !stopping.load(Ordering::Relaxed) {
                let sent_at = Instant::now();
                talker.send(json!({"type": "chat", "text": "healthy", "ts": report.sent}));
                report.sent += 1;
                // Skip chats from others (an attack may chat too); ours must come next, in order.
                loop {
                    let message = listener.recv();
                    if message["user"] == "talker" {
                        if message["ts"] == report.received_in_order {
                            report.received_in_order += 1;
                        }
                        break;
                    }
                }
                report.worst_delay = report.worst_delay.max(sent_at.elapsed());
                std::thread::sleep(Duration::from_millis(200).saturating_sub(sent_at.elapsed()));
            }
            report
        });
        Self { stop, thread }
    }

    /// Stops the conversation and checks it was undisturbed.
    pub fn finish(self) -> ChatterReport {
        self.stop.store(true, Ordering::Relaxed);
        let report = self.thread.join().expect("the healthy conversation failed");
        assert_eq!(report.received_in_order, report.sent, "{report:?}");
        // A stalled loop shows up as seconds; a busy shared machine as milliseconds.
        assert!(report.worst_delay < Duration::from_secs(2), "{report:?}");
        report
    }
}

/// Joins with `fields` added to the join; returns the chats replayed and the `joined` answer.
pub fn join_with(server: &ServerProcess, name: &str, fields: Value) -> (Client, Vec<Value>, Value) {
    let mut client = Client::connect(server);
    let mut join = json!({"type": "join", "user": name});
    join.as_object_mut()
        .unwrap()
        .extend(fields.as_object().unwrap().clone());
    client.send(join);
    let mut replayed = Vec::new();
    loop {
        let message = client.recv();
        if message["type"] == "joined" {
            return (client, replayed, message);
        }
        assert_eq!(message["type"], "chat", "{message}");
        replayed.push(message);
    }
}
