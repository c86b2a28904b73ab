//! The WebSocket codec (RFC 6455), shared by the server and `chat-client`:
//! pure code over byte slices, no sockets.
//!
//! `close` (close codes and the protocol-error enum that maps to them) ←
//! `frame` (headers, masking) ← `message` (frames to messages: fragments,
//! interleaved control frames, incremental UTF-8 via `utf8`, the size limit
//! decided from the header). Imports run that one way.

pub mod close;
pub mod frame;
pub mod message;
pub mod utf8;
