//! The chat protocol's core (docs/protocol.md: join, chats stamped with the
//! joined name and relayed to everyone else, JSON ping/pong, leave, 10 chats/s
//! per connection, `/health`, close 1001 at SIGTERM) on tokio and
//! tokio-tungstenite, shaped like tokio-tungstenite's own chat example
//! (`examples/server.rs`): a task per connection, a map of peers behind a
//! mutex, and a channel per peer that a forwarding half drains into its
//! socket. The chat is serialized once and the same bytes (`Utf8Bytes`,
//! reference-counted) go to every peer.
//!
//! Like the example, the forwarding half sends everything queued, then
//! flushes once (what `rx.forward(outgoing)` does). Differences from the
//! example: `/health` is answered before the handshake (tungstenite serves
//! upgrades only), the per-peer channel is bounded (a peer whose 4,096
//! queued messages are not drained is closed with 1008, as a slow
//! consumer, through a control channel of its own that the forwarding half
//! watches first), every upgraded connection, joined or not, gets 1001 at
//! SIGTERM, and the statistics block the compared servers print is printed
//! at exit.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Messages queued for one peer before it counts as a slow consumer.
const QUEUE: usize = 4096;

type Tx = mpsc::Sender<Message>;

/// An upgraded connection: its queue, the close that ends it early (a
/// slow consumer, shutdown), and whether it joined (only those get chats).
struct Peer {
    tx: Tx,
    close: mpsc::Sender<CloseFrame>,
    joined: bool,
}

/// Upgraded connections, by their socket address.
type PeerMap = Arc<Mutex<HashMap<SocketAddr, Peer>>>;

#[derive(Default)]
struct Stats {
    relayed: AtomicU64,
    rate_limited: AtomicU64,
    connections: AtomicU64,
    open: AtomicU64,
    peak: AtomicU64,
}

#[derive(Deserialize)]
struct Incoming<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(borrow)]
    user: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    ts: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct Chat<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    room: &'static str,
    user: &'a str,
    text: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<&'a RawValue>,
}

/// 10 tokens, one more every 100 ms.
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * 10.0).min(10.0);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

fn valid_name(name: &str) -> bool {
    let chars = name.chars().count();
    (1..=64).contains(&chars) && !name.chars().any(char::is_control) && name.trim() == name
}

#[tokio::main]
async fn main() {
    let port = std::env::args()
        .skip_while(|a| a != "--port")
        .nth(1)
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(8080);
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("cannot listen");
    println!(
        "listening on {}",
        listener.local_addr().expect("an address")
    );
    let peers = PeerMap::default();
    let stats = Arc::new(Stats::default());
    let started = Instant::now();
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signals");
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, addr)) = accepted {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(handle_connection(peers.clone(), stats.clone(), stream, addr));
                }
            }
            _ = terminate.recv() => break,
        }
    }
    // Close 1001 to everyone, then give them a moment to answer.
    drop(listener);
    for peer in peers.lock().expect("peers").values() {
        let _ = peer.close.try_send(CloseFrame {
            code: CloseCode::Away,
            reason: "server shutting down".into(),
        });
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while stats.open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    print_stats(&stats, started.elapsed());
}

// tungstenite's handshake callback returns its large error type by value.
#[allow(clippy::result_large_err)]
async fn handle_connection(
    peers: PeerMap,
    stats: Arc<Stats>,
    mut stream: TcpStream,
    addr: SocketAddr,
) {
    // GET /health is answered here: tungstenite's handshake serves upgrades only.
    let mut start = [0u8; 12];
    if matches!(stream.peek(&mut start).await, Ok(n) if start[..n].starts_with(b"GET /health ")) {
        let mut head = Vec::new();
        let mut chunk = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&chunk[..n]),
            }
        }
        let answer = "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n";
        let _ = stream.write_all(answer.as_bytes()).await;
        return;
    }
    let check = |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
        match request.uri().path() {
            "/ws" => Ok(response),
            _ => {
                let mut refusal = ErrorResponse::new(Some("not found\n".into()));
                *refusal.status_mut() = 404u16.try_into().expect("a status");
                Err(refusal)
            }
        }
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, check).await else {
        return;
    };
    stats.connections.fetch_add(1, Ordering::Relaxed);
    let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
    stats.peak.fetch_max(open, Ordering::Relaxed);

    let (mut outgoing, mut incoming) = ws.split();
    let (tx, mut rx) = mpsc::channel::<Message>(QUEUE);
    let (close, mut close_rx) = mpsc::channel::<CloseFrame>(1);
    peers.lock().expect("peers").insert(
        addr,
        Peer {
            tx: tx.clone(),
            close,
            joined: false,
        },
    );
    // The forwarding half: whatever is queued for this peer goes to its
    // socket, all of it before one flush (as `forward` does in the example);
    // a close from the control channel goes first.
    let forward = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                Some(frame) = close_rx.recv() => {
                    let _ = outgoing.send(Message::Close(Some(frame))).await;
                    break;
                }
                message = rx.recv() => {
                    let Some(mut message) = message else { break };
                    loop {
                        let closing = matches!(message, Message::Close(_));
                        if outgoing.feed(message).await.is_err() || closing {
                            let _ = outgoing.flush().await;
                            return;
                        }
                        match rx.try_recv() {
                            Ok(more) => message = more,
                            Err(_) => break,
                        }
                    }
                    if outgoing.flush().await.is_err() {
                        break;
                    }
                }
            }
        }
    });

    let mut name: Option<String> = None;
    let mut bucket = Bucket {
        tokens: 10.0,
        at: Instant::now(),
    };
    while let Some(Ok(message)) = incoming.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        let Ok(request) = serde_json::from_str::<Incoming>(&text) else {
            continue;
        };
        match (request.kind, &name) {
            ("join", None) => {
                if let Some(user) = request.user.filter(|u| valid_name(u)) {
                    name = Some(user.into_owned());
                    if let Some(peer) = peers.lock().expect("peers").get_mut(&addr) {
                        peer.joined = true;
                    }
                }
            }
            ("chat", Some(user)) => {
                let Some(text) = request.text.filter(|t| t.get().starts_with('"')) else {
                    continue;
                };
                if !bucket.take() {
                    stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let chat = Chat {
                    kind: "chat",
                    room: "public",
                    user,
                    text,
                    ts: request.ts,
                };
                // Serialized once; every peer gets the same reference-counted bytes.
                let frame =
                    Message::Text(Utf8Bytes::from(serde_json::to_string(&chat).expect("JSON")));
                stats.relayed.fetch_add(1, Ordering::Relaxed);
                let mut map = peers.lock().expect("peers");
                map.retain(|other, peer| {
                    if *other == addr || !peer.joined || peer.tx.try_send(frame.clone()).is_ok() {
                        return true;
                    }
                    // Its queue is full: a slow consumer, closed and out of the room.
                    let _ = peer.close.try_send(CloseFrame {
                        code: CloseCode::Policy,
                        reason: "slow consumer".into(),
                    });
                    false
                });
            }
            ("ping", _) => {
                let pong = match request.ts {
                    Some(ts) => format!(r#"{{"type":"pong","ts":{}}}"#, ts.get()),
                    None => r#"{"type":"pong"}"#.to_string(),
                };
                let _ = tx.send(Message::Text(pong.into())).await;
            }
            ("leave", _) => {
                // Out of the room; the close handshake ends the stream (the
                // client's close frame is the last thing read).
                if let Some(peer) = peers.lock().expect("peers").get_mut(&addr) {
                    peer.joined = false;
                }
                let _ = tx
                    .send(Message::Close(Some(CloseFrame {
                        code: CloseCode::Normal,
                        reason: "bye".into(),
                    })))
                    .await;
            }
            _ => {}
        }
    }
    peers.lock().expect("peers").remove(&addr);
    drop(tx);
    let _ = forward.await;
    stats.open.fetch_sub(1, Ordering::Relaxed);
}

/// The statistics block the compared servers print at exit.
fn print_stats(stats: &Stats, ran: Duration) {
    let total = stats.relayed.load(Ordering::Relaxed);
    let limited = stats.rate_limited.load(Ordering::Relaxed);
    let secs = ran.as_secs_f64();
    let offered = total + limited;
    println!(
        "--- Statistics ---\nTotal messages: {total}\nProcessing time: {secs:.3}s\n\
         Average latency: {:.3}ms\nThroughput: {:.2} messages/sec\nTotal connections: {}\n\
         Message drop rate: {:.2}%\nPeak connections: {}",
        if total == 0 {
            0.0
        } else {
            secs * 1000.0 / total as f64
        },
        if secs > 0.0 { total as f64 / secs } else { 0.0 },
        stats.connections.load(Ordering::Relaxed),
        if offered == 0 {
            0.0
        } else {
            100.0 * limited as f64 / offered as f64
        },
        stats.peak.load(Ordering::Relaxed),
    );
}
