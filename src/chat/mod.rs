//! The chat protocol: the JSON wire format (`protocol`), what one
//! connection's messages do (`session`), its chat rate limit (`rate_limit`)
//! and which characters may show (`unicode`). Pure decisions; the engine
//! carries them out.

pub mod protocol;
pub mod rate_limit;
pub mod session;
pub mod unicode;
