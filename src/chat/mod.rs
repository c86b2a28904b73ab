//! The chat protocol: the JSON wire format (`protocol`), what one
//! connection's messages do (`session`) and its chat rate limit (`rate_limit`).
//! Pure decisions; the engine carries them out.

pub mod protocol;
pub mod rate_limit;
pub mod session;
