//! One client connection as the engine sees it: the phase it is in and its
//! outbound queue. No socket: the driver keeps that, under the same key.
//!
//! Kept small, because an idle joined connection is this struct, its name
//! and one timer entry: buffers are allocated only while bytes wait in them.

use std::net::IpAddr;

use crate::chat::session::ChatState;
use crate::engine::outbox::Outbox;
use crate::http::HeadReader;
use crate::http::admin::Endpoint;
use crate::websocket::message::MessageReader;

/// The phases of a connection, in order. Each but the last two has a timer deadline.
#[derive(Debug)]
pub enum Phase {
    /// Reading the HTTP request head (deadline: `--handshake-timeout`).
    /// `via_proxy`: the peer is a trusted proxy and the client's address is
    /// not known yet (a PROXY header or `X-Forwarded-For` will tell);
    /// `peer`: the client's address as far as it is known.
    Handshaking {
        head: HeadReader,
        via_proxy: bool,
        peer: IpAddr,
    },
    /// An admin request's body is arriving (deadline: `--handshake-timeout`
    /// still): `length` bytes in all, from the private peer `peer`.
    AdminBody(Box<AdminBody>),
    /// Upgraded: frames both ways (deadline: the next keepalive check).
    Open {
        reader: MessageReader,
        chat: ChatState,
    },
    /// We sent a close frame and wait for the peer's, still answering its
    /// pings (deadline: how long we wait).
    Closing { reader: MessageReader },
    /// The last output goes out, then the write side is shut; input is read
    /// and discarded until the peer's FIN (deadline: linger).
    Draining { write_shut: bool },
    /// The peer is gone or silent: one last flush, then the socket is closed.
    Abandoned,
    /// Out of the engine: the driver closes the socket when it takes the
    /// `Close` action, and only then is the key free for another connection.
    Closed,
}

/// An admin request whose body is arriving (boxed: rare, and kept out of
/// the size of every connection).
#[derive(Debug)]
pub struct AdminBody {
    pub endpoint: Endpoint,
    pub body: Vec<u8>,
    /// The body's whole length (`Content-Length`).
    pub length: usize,
    /// The private peer that sent it.
    pub peer: IpAddr,
}

/// A client connection.
#[derive(Debug)]
pub struct Connection {
    /// Tells this connection from later ones that reuse its key.
    pub id: u32,
    /// In this turn's flush list.
    pub dirty: bool,
    /// Reading stopped until our replies to this peer drain (backpressure).
    pub read_paused: bool,
    /// A plain-text client: it is sent chats as `name: text` lines.
    pub plain: bool,
    /// Came in on `--private-address`: only `/metrics`, `/stats`, `/health` and `/admin/...`.
    pub private: bool,
    pub phase: Phase,
    pub outbox: Outbox,
    /// When we last heard from the peer (ms).
    pub last_heard: u64,
    /// Deadline of this connection's live timer entry; entries with another deadline are stale.
    pub timer_at: u64,
}

impl Connection {
    /// A connection from `peer` just accepted at `now` (ms), waiting for its request head.
    pub fn new(id: u32, peer: IpAddr, now: u64) -> Self {
        Self {
            id,
            dirty: false,
            read_paused: false,
            plain: false,
            private: false,
            phase: Phase::Handshaking {
                head: HeadReader::default(),
                via_proxy: false,
                peer,
            },
            outbox: Outbox::default(),
            last_heard: now,
            timer_at: 0,
        }
    }

    /// The chat state, if the connection is open.
    pub fn chat_mut(&mut self) -> Option<&mut ChatState> {
        match &mut self.phase {
            Phase::Open { chat, .. } => Some(chat),
            _ => None,
        }
    }
}
