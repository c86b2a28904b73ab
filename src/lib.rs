//! websocket-public-chat: a public chat room over WebSocket, served by one
//! mio event loop with a hand-written RFC 6455 implementation.
//!
//! The sans-IO core (no sockets, no clock reads) is `frame`, `message`,
//! `utf8`, `close`, `handshake`, `protocol`, `chat`, `rate_limit`, `room`,
//! `timer_wheel` and `ip_limit`; `server` is the event loop that owns the sockets.
//! `client` is the terminal client's side of the protocol (`src/bin/chat-client.rs`).

/// With `--features redis`: the Redis pub/sub backplane; without: a stub that refuses `--redis`.
#[cfg_attr(not(feature = "redis"), path = "backplane_off.rs")]
pub mod backplane;
pub mod chat;
pub mod client;
pub mod close;
pub mod config;
mod connection;
pub mod frame;
pub mod handshake;
pub mod ip_limit;
pub mod message;
mod outbox;
pub mod protocol;
pub mod rate_limit;
pub mod room;
pub mod server;
pub mod stats;
pub mod sys;
pub mod timer_wheel;
pub mod utf8;
