//! websocket-public-chat: a public chat room over WebSocket, served by one
//! mio event loop with a hand-written RFC 6455 implementation.
//!
//! The tree is the architecture:
//! - `websocket`: the RFC 6455 codec (frames, messages, UTF-8, close codes);
//! - `http`: the HTTP front end (the request head, routes, responses);
//! - `chat`: the chat protocol (JSON wire format, a connection's chat rules, rate limit);
//! - `engine`: the server as a sans-IO state machine: connections, the room,
//!   relay, keepalive, backpressure, closing, statistics; no sockets, no clock;
//! - `event_loop`: the thin mio driver that owns sockets and readiness and
//!   carries out what the engine decides (and the Redis backplane's threads);
//! - `client`: the terminal client's side of the protocol (`src/bin/chat-client.rs`).

pub mod chat;
pub mod client;
pub mod config;
pub mod engine;
pub mod event_loop;
pub mod http;
pub mod sys;
pub mod websocket;
