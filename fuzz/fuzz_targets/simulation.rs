//! The deterministic simulation of the whole engine (`tests/sim`), with the
//! fuzzer's bytes choosing every event instead of a seeded generator: who
//! connects, what each client says, how each byte stream is split, how fast
//! each reader is, when time moves and when the server shuts down. Every
//! invariant the seeded runs check is checked here; a failure panics with
//! the last events.

#![no_main]

use chat_sim::{FuzzInput, Settings, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = Settings::default();
    if let Err(why) = run(&mut FuzzInput(data), &settings) {
        panic!("{why}");
    }
});
