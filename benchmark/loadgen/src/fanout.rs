//! `fanout`: N joined connections; S of them send R chats/s each, spread
//! evenly in time. Every chat carries its send time, so each receiver
//! measures delivery latency; the report has deliveries/s, the delivery ratio
//! and the latency distribution.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::fleet::{Ending, Fleet, Handler};
use crate::histogram::Histogram;
use crate::{Clock, Report, ServerWatch, chat_payload, json_ts};

pub struct Settings {
    pub connections: usize,
    pub senders: usize,
    pub rate: f64,
    pub duration: Duration,
}

struct Fanout {
    clock: Clock,
    joined: usize,
    sent: u64,
    received: u64,
    latency: Histogram,
    lost_connections: u64,
}

impl Handler for Fanout {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
        fleet.send_text(
            key,
            json!({"type": "join", "user": format!("fan{key}")})
                .to_string()
                .as_bytes(),
        );
        // The pong says the join was processed (same connection, in order).
        fleet.send_text(key, br#"{"type":"ping","ts":0}"#);
    }

    fn text(&mut self, _fleet: &mut Fleet, _key: usize, payload: &[u8]) {
        // `{"type":"chat",...` or `{"type":"pong",...`: the 10th byte tells them apart.
        match payload.get(9) {
            Some(b'c') => {
                self.received += 1;
                if let Some(sent_at) = json_ts(payload) {
                    self.latency
                        .record(self.clock.micros().saturating_sub(sent_at));
                }
            }
            Some(b'p') => self.joined += 1,
            _ => {}
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
        clock: Clock::default(),
        joined: 0,
        sent: 0,
        received: 0,
        latency: Histogram::new(),
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
    let (server_before, own_before) = (server.sample(), crate::own_sample());
    let started = Instant::now();
    let stop = started + settings.duration;
    let mut next_send = started;
    let mut turn = 0usize;
    while senders > 0 && Instant::now() < stop {
        let now = Instant::now();
        while next_send <= now && next_send < stop {
            let payload = chat_payload(state.clock.micros());
            fleet.send_text(keys[turn % senders], &payload);
            state.sent += 1;
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
    let expected = state.sent * (joined.saturating_sub(1)) as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(2);
    while state.received < expected && Instant::now() < drain_deadline {
        fleet.turn(Some(Duration::from_millis(10)), &mut state)?;
    }
    let elapsed = started.elapsed();
    let (server_after, own_after) = (server.sample(), crate::own_sample());

    let mut report = Report::new("fanout", elapsed);
    report.set("connections", joined as f64);
    report.set("senders", senders as f64);
    report.set("chats_sent", state.sent as f64);
    report.set(
        "offered_deliveries_per_sec",
        settings.rate * senders as f64 * joined.saturating_sub(1) as f64,
    );
    report.set("deliveries", state.received as f64);
    report.set(
        "deliveries_per_sec",
        state.received as f64 / sending_time.as_secs_f64(),
    );
    report.set(
        "delivery_ratio",
        if expected == 0 {
            0.0
        } else {
            state.received as f64 / expected as f64
        },
    );
    report.latency(&state.latency);
    report.set("lost_connections", state.lost_connections as f64);
    report.cpu(
        server_before,
        server_after,
        own_before,
        own_after,
        elapsed,
        "deliveries",
        state.received,
    );
    Ok(report)
}
