//! `connect`: open N connections that join and then stay idle. Reports
//! handshakes/s and their latency, then the server's memory per connection.
//! With `--fill`, chats are sent first (the server's history ring fills;
//! its memory is reported); with `--history K`, each join asks for the last
//! K chats, and with `--since-back K` each recovers the K newest chats (a
//! `since` K behind the room's newest id, with its epoch), so the CPU per
//! handshake includes sending them; the join's latency (join sent to
//! `joined` received) is reported too.

use std::time::{Duration, Instant};

use crate::fleet::{Ending, Fleet, Handler};
use crate::histogram::Histogram;
use crate::{Incoming, Report, ServerWatch, Window, classify, sized_chat};

pub struct Settings {
    pub connections: usize,
    /// Handshakes in flight at once.
    pub concurrency: usize,
    /// `history` in each join.
    pub history: Option<u64>,
    /// Each join has `since` this far behind the room's newest id.
    pub since_back: Option<u64>,
    /// Chats sent before the connections open, and their size in bytes.
    pub fill: usize,
    pub fill_size: usize,
}

/// Chats a filler connection sends: within the server's burst of 10.
const PER_FILLER: usize = 10;

struct Connect {
    /// What each join asks for besides its name.
    asks: serde_json::Map<String, serde_json::Value>,
    /// When each connection sent its join, by key.
    join_sent: std::collections::HashMap<usize, Instant>,
    join: Histogram,
    first_failure: Option<&'static str>,
    opened: usize,
    joined: usize,
    failed: u64,
    handshake: Histogram,
}

impl Handler for Connect {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, took: Duration) {
        self.opened += 1;
        self.handshake.record(took.as_micros() as u64);
        let mut join = self.asks.clone();
        join.insert("type".into(), "join".into());
        join.insert("user".into(), format!("idle{key}").into());
        fleet.send_text(key, serde_json::Value::Object(join).to_string().as_bytes());
        if self.asks.is_empty() {
            // The pong says the join was processed.
            fleet.send_text(key, br#"{"type":"ping","ts":0}"#);
        } else {
            // `joined` will say it (with Redis the history comes from there).
            self.join_sent.insert(key, Instant::now());
        }
    }

    fn text(&mut self, _fleet: &mut Fleet, key: usize, payload: &[u8]) {
        let done = match classify(payload) {
            Incoming::Pong => true,
            Incoming::Other => payload.starts_with(br#"{"type":"joined""#),
            Incoming::Chat(_) => false,
        };
        if done {
            self.joined += 1;
            if let Some(sent) = self.join_sent.remove(&key) {
                self.join.record(sent.elapsed().as_micros() as u64);
            }
        }
    }

    fn closed(&mut self, _fleet: &mut Fleet, _key: usize, ending: Ending) {
        self.failed += 1;
        if let Ending::Unclean(why) = ending {
            self.first_failure.get_or_insert(why);
        }
    }
}

pub fn run(
    fleet: &mut Fleet,
    settings: &Settings,
    server: &ServerWatch,
) -> std::io::Result<Report> {
    let fill_rss = fill(fleet, settings, server)?;
    let mut state = Connect::new();
    if let Some(k) = settings.history {
        state.asks.insert("history".into(), k.into());
    }
    if let Some(back) = settings.since_back {
        let (epoch, last) = room_position(fleet)?;
        state
            .asks
            .insert("since".into(), last.saturating_sub(back).into());
        state.asks.insert("epoch".into(), epoch.into());
    }
    let window = Window::open(server);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(120);
    let mut started_connects = 0;
    while (state.joined as u64 + state.failed) < settings.connections as u64
        && Instant::now() < deadline
    {
        // Keep `concurrency` handshakes in flight (joins too, when they ask
        // for history: one at a time then measures one join's latency).
        let done = |s: &Connect| {
            if s.asks.is_empty() {
                s.opened
            } else {
                s.joined
            }
        };
        while started_connects < settings.connections
            && started_connects - done(&state) - (state.failed as usize) < settings.concurrency
        {
            if fleet.connect().is_err() {
                state.failed += 1;
            }
            started_connects += 1;
        }
        fleet.turn(Some(Duration::from_millis(50)), &mut state)?;
    }
    let elapsed = started.elapsed();
    let mut report = Report::new("connect", elapsed);
    report.cpu(&window, server, "handshakes", state.opened as u64);
    // Let the server settle before reading its memory.
    let settle = Instant::now() + Duration::from_millis(500);
    while Instant::now() < settle {
        fleet.turn(Some(Duration::from_millis(50)), &mut state)?;
    }
    let server_after = server.sample();

    if let Some((before, after)) = fill_rss {
        report.set("fill_chats", settings.fill as f64);
        report.set(
            "server_rss_fill_kib",
            after.rss_kib.saturating_sub(before.rss_kib) as f64,
        );
    }
    if let Some(why) = state.first_failure {
        report.note(format!("first failure: {why}"));
    }
    report.set("connections", state.joined as f64);
    report.set("failed", state.failed as f64);
    report.set(
        "handshakes_per_sec",
        state.opened as f64 / elapsed.as_secs_f64(),
    );
    report.set(
        "handshake_p50_ms",
        state.handshake.percentile(50.0) as f64 / 1000.0,
    );
    report.set(
        "handshake_p99_ms",
        state.handshake.percentile(99.0) as f64 / 1000.0,
    );

    if state.join.count() > 0 {
        report.set("join_p50_ms", state.join.percentile(50.0) as f64 / 1000.0);
        report.set("join_p99_ms", state.join.percentile(99.0) as f64 / 1000.0);
    }

    if let (Some(before), Some(after)) = (window.server_sample(), server_after)
        && state.joined > 0
    {
        report.set("server_rss_before_kib", before.rss_kib as f64);
        report.set("server_rss_after_kib", after.rss_kib as f64);
        report.set(
            "server_bytes_per_connection",
            (after.rss_kib.saturating_sub(before.rss_kib) * 1024) as f64 / state.joined as f64,
        );
    }
    Ok(report)
}

impl Connect {
    fn new() -> Self {
        Self {
            asks: serde_json::Map::new(),
            join_sent: Default::default(),
            join: Histogram::new(),
            first_failure: None,
            opened: 0,
            joined: 0,
            failed: 0,
            handshake: Histogram::new(),
        }
    }
}

/// The room's epoch and newest id, from a probe's join with `history: 0`.
fn room_position(fleet: &mut Fleet) -> std::io::Result<(String, u64)> {
    struct Probe(Option<(String, u64)>);
    impl Handler for Probe {
        fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
            fleet.send_text(key, br#"{"type":"join","user":"probe","history":0}"#);
        }
        fn text(&mut self, _fleet: &mut Fleet, _key: usize, payload: &[u8]) {
            #[derive(serde::Deserialize)]
            struct Joined {
                epoch: String,
                last: u64,
            }
            if payload.starts_with(br#"{"type":"joined""#)
                && let Ok(j) = serde_json::from_slice::<Joined>(payload)
            {
                self.0 = Some((j.epoch, j.last));
            }
        }
        fn closed(&mut self, _fleet: &mut Fleet, _key: usize, _ending: Ending) {}
    }
    let mut probe = Probe(None);
    fleet.connect()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probe.0.is_none() && Instant::now() < deadline {
        fleet.turn(Some(Duration::from_millis(20)), &mut probe)?;
    }
    probe
        .0
        .ok_or_else(|| std::io::Error::other("no `joined` answered the probe's join"))
}

/// Fillers that join and send `settings.fill` chats; the server's memory
/// before and after (the fillers stay, idle, so their own cost is
/// measured apart: one idle connection each, a few hundred bytes).
fn fill(
    fleet: &mut Fleet,
    settings: &Settings,
    server: &ServerWatch,
) -> std::io::Result<Option<(crate::procstat::Sample, crate::procstat::Sample)>> {
    if settings.fill == 0 {
        return Ok(None);
    }
    let fillers = settings.fill.div_ceil(PER_FILLER);
    let mut state = Connect::new();
    let mut keys = Vec::new();
    for _ in 0..fillers {
        keys.push(fleet.connect()?);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while state.joined < fillers && Instant::now() < deadline {
        fleet.turn(Some(Duration::from_millis(20)), &mut state)?;
    }
    let settle = |fleet: &mut Fleet, state: &mut Connect| -> std::io::Result<()> {
        let until = Instant::now() + Duration::from_millis(500);
        while Instant::now() < until {
            fleet.turn(Some(Duration::from_millis(50)), state)?;
        }
        Ok(())
    };
    settle(fleet, &mut state)?;
    let before = server.sample();
    for n in 0..settings.fill {
        fleet.send_text(
            keys[n / PER_FILLER],
            &sized_chat(n as u64, settings.fill_size),
        );
    }
    settle(fleet, &mut state)?;
    Ok(before.zip(server.sample()))
}
