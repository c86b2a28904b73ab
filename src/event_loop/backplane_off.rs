//! `backplane` in a build without the `redis` feature: the same interface,
//! but no value of it can exist, so the server's backplane paths compile to
//! nothing and `--redis` is refused at start.

use mio::Waker;

use crate::engine::BackplaneProbe;

/// Never constructed in this build.
pub enum Backplane {}

impl Backplane {
    /// Refuses: this build has no Redis support.
    pub fn start(_url: &str, _channel: &str, _waker: Waker) -> Result<Self, String> {
        Err(
            "--redis needs a build with Redis support: cargo build --release --features redis"
                .into(),
        )
    }

    pub fn publish(&self, _chat_frame: &[u8]) {
        match *self {}
    }

    pub fn drain(&self, _relay: impl FnMut(&[u8])) {
        match *self {}
    }

    pub fn probe(&self) -> BackplaneProbe {
        match *self {}
    }
}
