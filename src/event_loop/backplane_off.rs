//! `backplane` in a build without the `redis` feature: the same interface,
//! but no value of it can exist, so the server's backplane paths compile to
//! nothing. `--redis` is refused with the other flags at start (config.rs).

use mio::Waker;

use crate::engine::BackplaneProbe;
use crate::engine::cluster::{FromCluster, Origin, Read};
use crate::http::admin::Command;

/// Never constructed in this build.
pub enum Backplane {}

/// Where Redis is and how to reach it (unused in this build).
pub struct Target<'a> {
    pub url: &'a str,
    pub channel: &'a str,
    pub ca: Option<&'a [u8]>,
    pub max_message: usize,
    pub history: usize,
    pub read_budget: usize,
}

impl Backplane {
    /// Refuses: this build has no Redis support.
    pub fn start(_target: &Target<'_>, _waker: Waker) -> Result<Self, String> {
        Err(
            "--redis needs a build with Redis support: cargo build --release --features redis"
                .into(),
        )
    }

    pub fn instance(&self) -> u64 {
        match *self {}
    }

    pub fn publish(&self, _chat_frame: &[u8], _origin: Origin) {
        match *self {}
    }

    pub fn moderate(&self, _command: &Command) {
        match *self {}
    }

    pub fn read_history(&self, _key: usize, _conn: u32, _read: Read) -> bool {
        match *self {}
    }

    pub fn drain(&self, _handle: impl FnMut(FromCluster)) {
        match *self {}
    }

    pub fn probe(&self) -> BackplaneProbe {
        match *self {}
    }
}
