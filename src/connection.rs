//! One client connection: its socket, the phase it is in, and its queues.
//!
//! Kept small, because an idle joined connection is this struct, its name
//! and one timer entry: buffers are allocated only while bytes wait in them.

use mio::net::TcpStream;

use crate::chat::ChatState;
use crate::message::MessageReader;
use crate::outbox::Outbox;

/// The phases of a connection, in order. Each has a timer deadline.
#[derive(Debug)]
pub enum Phase {
    /// Reading the HTTP request head (deadline: `--handshake-timeout`).
    Handshaking { head: Vec<u8> },
    /// Upgraded: frames both ways (deadline: the next keepalive check).
    Open {
        reader: MessageReader,
        chat: ChatState,
    },
    /// We sent a close frame; frames are read only to find the peer's close
    /// (deadline: how long we wait for it).
    Closing { reader: MessageReader },
    /// Last output goes out, then the write side is shut; input is read and
    /// discarded until the peer closes (deadline: linger).
    Draining { write_shut: bool },
}

/// A client connection.
#[derive(Debug)]
pub struct Connection {
    pub stream: TcpStream,
    /// Tells this connection from later ones that reuse its slab key.
    pub id: u32,
    pub phase: Phase,
    pub outbox: Outbox,
    /// Bytes of an incomplete frame, offered again in front of the next read.
    pub unread: Option<Box<[u8]>>,
    /// When we last heard from the peer (ms).
    pub last_heard: u64,
    /// Deadline of this connection's live timer entry; entries with another deadline are stale.
    pub timer_at: u64,
    /// In this turn's flush list.
    pub dirty: bool,
    /// Reading stopped until our replies to this peer drain (backpressure).
    pub read_paused: bool,
}

impl Connection {
    /// A connection just accepted at `now` (ms), waiting for its request head.
    pub fn new(stream: TcpStream, id: u32, now: u64) -> Self {
        Self {
            stream,
            id,
            phase: Phase::Handshaking { head: Vec::new() },
            outbox: Outbox::default(),
            unread: None,
            last_heard: now,
            timer_at: 0,
            dirty: false,
            read_paused: false,
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
