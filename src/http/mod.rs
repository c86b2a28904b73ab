//! The HTTP front end: every connection starts as an HTTP/1.1 request.
//! `request` parses the head and decides (upgrade, page, health, stats, the
//! admin API (`admin`), or a refusal); `response` writes the answers; `proxy` finds the client's
//! address behind a trusted proxy. Pure code, no sockets.

pub mod admin;
pub mod proxy;
pub mod request;
pub mod response;

pub use request::{Head, HeadReader, MAX_HEAD, Origins, Reject, Request, Route};
