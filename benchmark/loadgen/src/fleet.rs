//! The client side of many WebSocket connections on one mio loop: connect
//! (optionally from several loopback source addresses), upgrade, masked
//! frames out, server frames in, the close handshake. The running mode gets
//! `opened`, `text` and `closed` callbacks and decides what to send.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use websocket_public_chat::websocket::frame::{self, OpCode, Role};

/// Where to connect: a ws:// URL on a loopback address.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    host: String,
    path: String,
}

impl Target {
    /// Parses `ws://HOST:PORT/PATH`. Only loopback targets are accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or("the URL must start with ws://")?;
        let (host, path) = rest
            .split_once('/')
            .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
        let addr = host
            .to_socket_addrs()
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or(format!("{host} resolves to nothing"))?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address: the load generator only targets this machine"
            ));
        }
        Ok(Self {
            addr,
            host: host.to_string(),
            path,
        })
    }
}

/// How a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// Close frames both ways, then FIN.
    Clean,
    /// Anything else, and why.
    Unclean(&'static str),
}

/// What the running mode does with connection events.
pub trait Handler {
    /// The upgrade succeeded, `took` after the connect started.
    fn opened(&mut self, fleet: &mut Fleet, key: usize, took: Duration);
    /// A text message arrived.
    fn text(&mut self, fleet: &mut Fleet, key: usize, payload: &[u8]);
    /// The connection is gone.
    fn closed(&mut self, fleet: &mut Fleet, key: usize, ending: Ending);
}

enum State {
    Connecting,
    Handshaking,
    Open,
    /// The server's close arrived and was answered; waiting for its FIN.
    Closing,
}

struct Conn {
    stream: TcpStream,
    state: State,
    out: Vec<u8>,
    written: usize,
    inbuf: Vec<u8>,
    started: Instant,
    dirty: bool,
}

/// Lets `connect` pick the source port instead of `bind` (Linux): without it,
/// binding to port 0 searches every port in use on the address, which grows
/// with the connection count and made the generator its own bottleneck.
fn bind_address_no_port(socket: &socket2::Socket) {
    // Failure only loses the optimization.
    #[cfg(target_os = "linux")]
    let _ = websocket_public_chat::sys::set_int_option(
        socket,
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        1,
    );
}

/// Source addresses taken in turn. With one source the kernel's search for a free
/// ephemeral port grows with the ports in use (it checks each candidate's
/// 4-tuple); rotating connection by connection makes the first candidate fit.
const SOURCES: usize = 64;

/// Many client connections and the poll that drives them.
pub struct Fleet {
    poll: Poll,
    events: Option<Events>,
    conns: Slab<Conn>,
    /// Servers to connect to, in turn (several: instances sharing one room).
    targets: Vec<(Target, Vec<u8>)>,
    spread_sources: bool,
    connects: usize,
    mask_seed: u32,
    dirty: Vec<usize>,
}

impl Fleet {
    pub fn new(targets: Vec<Target>, spread_sources: bool) -> io::Result<Self> {
        let targets = targets
            .into_iter()
            .map(|target| {
                let request = format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    target.path, target.host
                );
                (target, request.into_bytes())
            })
            .collect();
        Ok(Self {
            poll: Poll::new()?,
            events: Some(Events::with_capacity(4096)),
            conns: Slab::new(),
            targets,
            spread_sources,
            connects: 0,
            mask_seed: 0x9E37_79B9,
            dirty: Vec::new(),
        })
    }

    /// How many `--url`s there are.
    pub fn targets(&self) -> usize {
        self.targets.len()
    }

    /// The address of target `index`.
    pub fn target_addr(&self, index: usize) -> SocketAddr {
        self.targets[index % self.targets.len()].0.addr
    }

    /// Connections not yet closed.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Starts a connection to the next target in turn; `opened` follows once it is upgraded.
    pub fn connect(&mut self) -> io::Result<usize> {
        self.connect_to(self.connects % self.targets.len())
    }

    /// Starts a connection to target `index` (of the `--url`s).
    pub fn connect_to(&mut self, index: usize) -> io::Result<usize> {
        let (target, request) = &self.targets[index % self.targets.len()];
        let (addr, request) = (target.addr, request.clone());
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if self.spread_sources && addr.is_ipv4() {
            // 127.0.0.1, .2, ... in turn: each source address has its own ephemeral ports.
            let n = (self.connects % SOURCES) as u8;
            let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + n)), 0);
            bind_address_no_port(&socket);
            socket.bind(&source.into())?;
        }
        self.connects += 1;
        match socket.connect(&addr.into()) {
            Ok(()) => {}
            Err(e)
                if e.raw_os_error() == Some(libc::EINPROGRESS)
                    || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let mut stream = TcpStream::from_std(socket.into());
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        self.poll.registry().register(
            &mut stream,
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        entry.insert(Conn {
            stream,
            state: State::Connecting,
            out: request,
            written: 0,
            inbuf: Vec::new(),
            started: Instant::now(),
            dirty: false,
        });
        Ok(key)
    }

    fn next_mask(&mut self) -> [u8; 4] {
        // xorshift32: masks need only be unpredictable to proxies, not secret.
        let mut x = self.mask_seed;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_seed = x;
        x.to_ne_bytes()
    }

    fn queue_frame(&mut self, key: usize, opcode: OpCode, payload: &[u8]) {
        let mask = self.next_mask();
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        frame::write_header(&mut conn.out, true, opcode, payload.len(), Some(mask));
        let start = conn.out.len();
        conn.out.extend_from_slice(payload);
        frame::apply_mask(&mut conn.out[start..], mask, 0);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Queues a text message (sent at the end of the turn, or now with `flush`).
    /// Drops a connection at once, without a close frame (a client that
    /// vanished); the handler hears nothing of it.
    pub fn abandon(&mut self, key: usize) {
        self.conns.try_remove(key);
    }

    pub fn send_text(&mut self, key: usize, payload: &[u8]) {
        self.queue_frame(key, OpCode::Text, payload);
    }

    /// One poll and everything it brings, then a flush of what was queued.
    pub fn turn(
        &mut self,
        timeout: Option<Duration>,
        handler: &mut impl Handler,
    ) -> io::Result<()> {
        self.flush_dirty(handler);
        let mut events = self
            .events
            .take()
            .unwrap_or_else(|| Events::with_capacity(4096));
        let polled = self.poll.poll(&mut events, timeout);
        if let Err(e) = polled
            && e.kind() != io::ErrorKind::Interrupted
        {
            self.events = Some(events);
            return Err(e);
        }
        for event in events.iter() {
            let key = event.token().0;
            if event.is_writable() {
                self.on_writable(key, handler);
            }
            if event.is_readable() || event.is_read_closed() || event.is_error() {
                // Unless the peer closed, a short read means the socket is drained:
                // edge-triggered epoll reports data that arrives later as a new event.
                let until_eof = event.is_read_closed() || event.is_error();
                self.on_readable(key, until_eof, handler);
            }
        }
        self.events = Some(events);
        self.flush_dirty(handler);
        Ok(())
    }

    fn flush_dirty(&mut self, handler: &mut impl Handler) {
        while let Some(key) = self.dirty.pop() {
            if let Some(conn) = self.conns.get_mut(key) {
                conn.dirty = false;
                if !matches!(conn.state, State::Connecting) {
                    self.flush(key, handler);
                }
            }
        }
    }

    fn flush(&mut self, key: usize, handler: &mut impl Handler) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        while conn.written < conn.out.len() {
            match conn.stream.write(&conn.out[conn.written..]) {
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return self.end(key, Ending::Unclean("write failed"), handler),
            }
        }
        conn.out.clear();
        conn.written = 0;
    }

    fn on_writable(&mut self, key: usize, handler: &mut impl Handler) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.state, State::Connecting) {
            if conn.stream.take_error().ok().flatten().is_some() || conn.stream.peer_addr().is_err()
            {
                return self.end(key, Ending::Unclean("connect failed"), handler);
            }
            conn.state = State::Handshaking;
        }
        self.flush(key, handler);
    }

    fn on_readable(&mut self, key: usize, until_eof: bool, handler: &mut impl Handler) {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let Some(conn) = self.conns.get_mut(key) else {
                return;
            };
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    let ending = match conn.state {
                        State::Closing => Ending::Clean,
                        _ => Ending::Unclean("end of stream without a close frame"),
                    };
                    self.process(key, handler);
                    return self.end(key, ending, handler);
                }
                Ok(n) => {
                    conn.inbuf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() && !until_eof {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                    return self.end(key, Ending::Unclean("connection reset"), handler);
                }
                Err(_) => return self.end(key, Ending::Unclean("read failed"), handler),
            }
        }
        self.process(key, handler);
    }

    /// Acts on every complete response head or frame in the connection's input.
    fn process(&mut self, key: usize, handler: &mut impl Handler) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Taken out so callbacks can use the fleet while we read from it.
        let mut input = std::mem::take(&mut conn.inbuf);
        let mut pos = 0;
        while let Some(conn) = self.conns.get_mut(key) {
            let rest = &input[pos..];
            match conn.state {
                State::Connecting => break,
                State::Handshaking => {
                    let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
                        break;
                    };
                    if !rest.starts_with(b"HTTP/1.1 101") {
                        return self.end(key, Ending::Unclean("upgrade refused"), handler);
                    }
                    pos += end + 4;
                    conn.state = State::Open;
                    let took = conn.started.elapsed();
                    handler.opened(self, key, took);
                }
                State::Open | State::Closing => {
                    let (header, len) = match frame::parse_header(rest, Role::Client) {
                        Ok(Some(parsed)) => parsed,
                        Ok(None) => break,
                        Err(_) => {
                            return self.end(
                                key,
                                Ending::Unclean("bad frame from the server"),
                                handler,
                            );
                        }
                    };
                    let end = len + header.payload_len as usize;
                    if rest.len() < end {
                        break;
                    }
                    let payload = &input[pos + len..pos + end];
                    pos += end;
                    match header.opcode {
                        OpCode::Text if header.fin => handler.text(self, key, payload),
                        OpCode::Ping => {
                            let payload = payload.to_vec();
                            self.queue_frame(key, OpCode::Pong, &payload);
                        }
                        OpCode::Close => {
                            let answer = matches!(conn.state, State::Open);
                            conn.state = State::Closing;
                            if answer {
                                let code = payload.get(..2).map_or(Vec::new(), <[u8]>::to_vec);
                                self.queue_frame(key, OpCode::Close, &code);
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
        input.drain(..pos);
        if let Some(conn) = self.conns.get_mut(key) {
            conn.inbuf = input;
        }
    }

    fn end(&mut self, key: usize, ending: Ending, handler: &mut impl Handler) {
        if self.conns.try_remove(key).is_some() {
            handler.closed(self, key, ending);
        }
    }
}
