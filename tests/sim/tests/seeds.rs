//! The engine under deterministic simulation, seed after seed. A failing seed
//! prints itself; rerun it alone with `SIM_SEED=N cargo test --release -p chat-sim`.
//! `SIM_SEEDS=N` sets how many run (default: 4,000 in release builds, 200 in debug).

use chat_sim::{Report, Rng, Settings, run};

fn seed_count() -> u64 {
    let default = if cfg!(debug_assertions) { 200 } else { 4_000 };
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Runs `seeds` (or only `SIM_SEED` if set); panics with the first failure.
/// Even seeds run a server that orders its own chats, odd seeds one whose
/// room Redis orders (the harness plays Redis).
fn run_seeds(seeds: impl Iterator<Item = u64>) -> Vec<Report> {
    let only: Option<u64> = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok());
    let mut reports = Vec::new();
    for seed in seeds.filter(|seed| only.is_none_or(|only| only == *seed)) {
        let settings = Settings {
            ordered: seed % 2 == 1,
            ..Settings::default()
        };
        match run(&mut Rng::new(seed), &settings) {
            Ok(report) => reports.push(report),
            Err(why) => panic!(
                "seed {seed} failed; rerun it alone with SIM_SEED={seed} cargo test --release -p chat-sim\n{why}"
            ),
        }
    }
    reports
}

/// What the runs went through, so a change that stops reaching a path shows.
fn summary(reports: &[Report]) -> String {
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    format!(
        "{} runs ({} with a shutdown): {} chats relayed, {} deliveries; members checked: {} exactly, \
         {} as a prefix; closes: {} slow consumer, {} keepalive, {} protocol, {} by leave, {} by client, \
         {} close waits and {} lingers timed out; {} read pauses, {} refusals; {} joins asked \
         for history or recovery, {} recoveries complete, {} incomplete; {} reads of the \
         stream, {} given up",
        reports.len(),
        sum(|r| u64::from(r.shutdown)),
        sum(|r| r.chats as u64),
        sum(|r| r.counters.deliveries),
        sum(|r| r.checked_exactly as u64),
        sum(|r| r.checked_prefix as u64),
        sum(|r| r.counters.slow_consumer_closes),
        sum(|r| r.counters.keepalive_timeouts),
        sum(|r| r.counters.closed_protocol_error
            + r.counters.closed_invalid_utf8
            + r.counters.closed_message_too_big),
        sum(|r| r.counters.closed_by_leave),
        sum(|r| r.counters.closed_by_client),
        sum(|r| r.counters.close_timeouts),
        sum(|r| r.counters.linger_timeouts),
        sum(|r| r.counters.read_pauses),
        sum(|r| r.counters.http_not_found + r.counters.http_bad_request),
        sum(|r| r.counters.history_joins),
        sum(|r| r.counters.recoveries_complete),
        sum(|r| r.counters.recoveries_incomplete),
        sum(|r| r.counters.history_reads),
        sum(|r| r.counters.history_fallbacks),
    )
}

// Two halves, so the test harness runs them on both cores.
#[test]
fn even_seeds_keep_every_invariant() {
    let reports = run_seeds((0..seed_count()).filter(|s| s % 2 == 0));
    println!("{}", summary(&reports));
}

/// Redis orders the room: catch-ups read older chats from the stream.
#[test]
fn odd_seeds_keep_every_invariant() {
    let reports = run_seeds((0..seed_count()).filter(|s| s % 2 == 1));
    println!("{}", summary(&reports));
}

#[test]
fn a_seed_replays_exactly() {
    let settings = Settings::default();
    let first = run(&mut Rng::new(42), &settings).expect("seed 42");
    let again = run(&mut Rng::new(42), &settings).expect("seed 42 again");
    assert_eq!(format!("{first:?}"), format!("{again:?}"));
    assert_ne!(
        format!("{first:?}"),
        format!("{:?}", run(&mut Rng::new(43), &settings).expect("seed 43"))
    );
    // And the runs do real work: chats relayed and members checked.
    assert!(first.chats > 0 && first.checked_exactly > 0, "{first:?}");
}

/// Inputs that once broke an invariant (found by the fuzz target, kept under
/// the name of what they exposed), replayed as the fuzzer ran them.
#[test]
fn past_findings_stay_fixed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/regressions");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/sim/regressions")
        .map(|entry| entry.expect("a file").path())
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let input = std::fs::read(&file).expect("read the input");
        if let Err(why) = run(&mut chat_sim::FuzzInput(&input), &Settings::default()) {
            panic!("{} fails again:\n{why}", file.display());
        }
    }
}
