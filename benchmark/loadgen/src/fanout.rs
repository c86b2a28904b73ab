//! `fanout`: N joined connections; S of them send R chats/s each, spread
//! evenly in time on a fixed schedule (open loop). Every chat carries the
//! time it was scheduled for, so each receiver measures delivery latency from
//! then: a send the generator made late is not hidden (no coordinated
//! omission), and late sends are counted. The report has deliveries/s, the
//! delivery ratio, the latency distribution (an HDR histogram) and the
//! server's memory per connection.

use std::time::{Duration, Instant};

use crate::fleet::{Ending, Fleet, Handler};
use crate::{Deliveries, Incoming, Report, ServerWatch, Window, classify, join};

pub struct Settings {
    pub connections: usize,
    pub senders: usize,
    pub rate: f64,
    pub duration: Duration,
}

struct Fanout {
    joined: usize,
    chats: Deliveries,
    lost_connections: u64,
}

impl Handler for Fanout {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
        join(fleet, key, &format!("fan{key}"));
    }

    fn text(&mut self, _fleet: &mut Fleet, _key: usize, payload: &[u8]) {
        match classify(payload) {
            Incoming::Chat(sent_at) => self.chats.received(sent_at),
            Incoming::Pong => self.joined += 1,
            Incoming::Other => {}
        }
    }

    fn closed(&mut self, _fleet: &mut Fleet, _key: usize, _ending: Ending) {
        self.lost_connections += 1;
    }
}

pub fn run(
    fleet: &mut Fleet,
    settings: &Settings,
    server: &ServerWatch,
) -> std::io::Result<Report> {
    let mut state = Fanout {
        joined: 0,
        chats: Deliveries::default(),
        lost_connections: 0,
    };
    let before = server.sample();
    let mut keys = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections {
        keys.push(fleet.connect()?);
    }
    // Slow servers take a while to let 19,000 in: up to 5 ms each, at least 30 s.
    let setup = Duration::from_millis((settings.connections as u64 * 5).max(30_000));
    let setup_deadline = Instant::now() + setup;
    while state.joined < settings.connections && Instant::now() < setup_deadline {
        fleet.turn(Some(Duration::from_millis(100)), &mut state)?;
    }
    let joined = state.joined;
    let memory = match (before, server.sample()) {
        (Some(before), Some(after)) if joined > 0 => {
            Some(after.rss_kib.saturating_sub(before.rss_kib) as f64 * 1024.0 / joined as f64)
        }
        _ => None,
    };

    // Sends are spread evenly: every `gap`, the next sender in turn sends one chat.
    let senders = settings.senders.min(keys.len());
    let gap = Duration::from_secs_f64(1.0 / (settings.rate * senders.max(1) as f64));
    let window = Window::open(server);
    let started = Instant::now();
    let stop = started + settings.duration;
    let mut next_send = started;
    let mut turn = 0usize;
    let (mut late, mut most_late) = (0u64, Duration::ZERO);
    while senders > 0 && Instant::now() < stop {
        let now = Instant::now();
        while next_send <= now && next_send < stop {
            let lag = now.saturating_duration_since(next_send);
            if lag > Duration::from_millis(1) {
                late += 1;
                most_late = most_late.max(lag);
            }
            let payload = state.chats.scheduled_chat(next_send);
            fleet.send_text(keys[turn % senders], &payload);
            turn += 1;
            next_send += gap;
        }
        fleet.turn(
            Some(next_send.saturating_duration_since(Instant::now())),
            &mut state,
        )?;
    }
    let sending_time = started.elapsed();
    // Let the last chats arrive (a slow server's latency is seconds).
    let expected = state.chats.sent * (joined.saturating_sub(1)) as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while state.chats.received < expected && Instant::now() < drain_deadline {
        fleet.turn(Some(Duration::from_millis(10)), &mut state)?;
    }

    let chats = &state.chats;
    let mut report = Report::new("fanout", window.elapsed());
    report.set("connections", joined as f64);
    report.set("senders", senders as f64);
    report.set("chats_sent", chats.sent as f64);
    report.set(
        "offered_deliveries_per_sec",
        settings.rate * senders as f64 * joined.saturating_sub(1) as f64,
    );
    report.set("deliveries", chats.received as f64);
    report.set(
        "deliveries_per_sec",
        chats.received as f64 / sending_time.as_secs_f64(),
    );
    let ratio = if expected == 0 {
        0.0
    } else {
        chats.received as f64 / expected as f64
    };
    report.set("delivery_ratio", ratio);
    report.latency(&chats.latency);
    report.set("late_sends", late as f64);
    report.set("send_lag_max_ms", most_late.as_secs_f64() * 1000.0);
    report.set("lost_connections", state.lost_connections as f64);
    if let Some(bytes) = memory {
        report.set("server_bytes_per_connection", bytes);
    }
    report.cpu(&window, server, "deliveries", chats.received);
    Ok(report)
}
