//! `fanout`: N joined connections; S of them send R chats/s each, spread
//! evenly in time. Every chat carries its send time, so each receiver
//! measures delivery latency; the report has deliveries/s, the delivery ratio
//! and the latency distribution.

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
    let mut keys = Vec::with_capacity(settings.connections);
    for _ in 0..settings.connections {
        keys.push(fleet.connect()?);
    }
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    while state.joined < settings.connections && Instant::now() < setup_deadline {
        fleet.turn(Some(Duration::from_millis(100)), &mut state)?;
    }
    let joined = state.joined;

    // Sends are spread evenly: every `gap`, the next sender in turn sends one chat.
    let senders = settings.senders.min(keys.len());
    let gap = Duration::from_secs_f64(1.0 / (settings.rate * senders.max(1) as f64));
    let window = Window::open(server);
    let started = Instant::now();
    let stop = started + settings.duration;
    let mut next_send = started;
    let mut turn = 0usize;
    while senders > 0 && Instant::now() < stop {
        let now = Instant::now();
        while next_send <= now && next_send < stop {
            let payload = state.chats.next_chat();
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
    // Let the last chats arrive.
    let expected = state.chats.sent * (joined.saturating_sub(1)) as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(2);
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
    report.set("lost_connections", state.lost_connections as f64);
    report.cpu(&window, server, "deliveries", chats.received);
    Ok(report)
}
