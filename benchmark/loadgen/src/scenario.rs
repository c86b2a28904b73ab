//! The k6 scenarios at full speed: virtual users (VUs) ramped through stages,
//! each running sessions of connect → join → chat at a rate → leave after a
//! hold, again and again while it is wanted. Prints the statistics block
//! the compared servers print, plus P50/P95/P99 latency, the connection
//! success rate and the drop rate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::fleet::{Ending, Fleet, Handler};
use crate::{Deliveries, Incoming, Report, ServerWatch, Window, classify, join};

/// What a session says while it is joined.
#[derive(Clone, Copy)]
pub enum Chats {
    None,
    /// One chat right after the join.
    Once,
    /// This many chats per second.
    PerSecond(f64),
}

/// A named scenario: how many VUs when, and what each session does.
pub struct Scenario {
    /// (stage length, VUs at its end); VUs ramp linearly within a stage.
    pub stages: Vec<(Duration, usize)>,
    pub start_vus: usize,
    pub chats: Chats,
    /// How long a session stays joined before it leaves.
    pub hold: Duration,
    /// Whether a VU starts a new session after one ends.
    pub repeat: bool,
}

impl Scenario {
    /// The k6 scenarios by name, `scale` shortening every duration (1.0 = as in k6/).
    pub fn named(name: &str, scale: f64) -> Option<Self> {
        let s = |secs: f64| Duration::from_secs_f64(secs * scale);
        let steady = |secs| Scenario {
            stages: vec![(s(secs), 100)],
            start_vus: 100,
            chats: Chats::PerSecond(1.0),
            hold: s(secs),
            repeat: false,
        };
        let churn = |secs| Scenario {
            stages: vec![(s(secs), 200)],
            start_vus: 200,
            chats: Chats::None,
            hold: s(2.0),
            repeat: true,
        };
        Some(match name {
            "steady" => steady(60.0),
            "steady-soak" => steady(300.0),
            "churn" => churn(60.0),
            "churn-soak" => churn(180.0),
            "burst" => Scenario {
                stages: vec![(s(10.0), 1000), (s(5.0), 1000), (s(5.0), 0)],
                start_vus: 0,
                chats: Chats::Once,
                hold: s(15.0),
                repeat: true,
            },
            "saturation" => Scenario {
                stages: vec![
                    (s(20.0), 200),
                    (s(5.0), 500),
                    (s(20.0), 500),
                    (s(5.0), 1000),
                    (s(20.0), 1000),
                ],
                start_vus: 200,
                chats: Chats::PerSecond(5.0),
                hold: s(10.0),
                repeat: true,
            },
            _ => return None,
        })
    }

    fn wanted(&self, elapsed: Duration) -> usize {
        let mut from = self.start_vus as f64;
        let mut at = Duration::ZERO;
        for &(length, to) in &self.stages {
            if elapsed < at + length {
                let share = (elapsed - at).as_secs_f64() / length.as_secs_f64().max(1e-9);
                return (from + (to as f64 - from) * share).round() as usize;
            }
            at += length;
            from = to as f64;
        }
        0
    }

    fn length(&self) -> Duration {
        self.stages.iter().map(|(length, _)| *length).sum()
    }
}

/// One VU's current session.
struct Session {
    joined: bool,
    next_chat: Instant,
    leave_at: Instant,
    left: bool,
}

struct Run {
    chats: Chats,
    traffic: Deliveries,
    hold: Duration,
    /// Sessions by connection key.
    sessions: HashMap<usize, Session>,
    joined: usize,
    attempted: u64,
    opened: u64,
    errors: u64,
    first_error: Option<&'static str>,
    /// Deliveries due: for each chat sent, the other sessions joined then.
    expected: u64,
}

impl Handler for Run {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
        self.opened += 1;
        join(fleet, key, &format!("vu{key}"));
    }

    fn text(&mut self, fleet: &mut Fleet, key: usize, payload: &[u8]) {
        match classify(payload) {
            Incoming::Chat(sent_at) => self.traffic.received(sent_at),
            Incoming::Pong => {
                let hold = self.hold;
                let one_chat = matches!(self.chats, Chats::Once);
                let Some(session) = self.sessions.get_mut(&key) else {
                    return;
                };
                if session.joined {
                    return;
                }
                session.joined = true;
                session.leave_at = Instant::now() + hold;
                self.joined += 1;
                if one_chat {
                    // The others joined so far receive it.
                    self.expected += self.joined as u64 - 1;
                    let chat = self.traffic.next_chat();
                    fleet.send_text(key, &chat);
                }
            }
            Incoming::Other => {}
        }
    }

    fn closed(&mut self, _fleet: &mut Fleet, key: usize, ending: Ending) {
        let Some(session) = self.sessions.remove(&key) else {
            return;
        };
        if session.joined {
            self.joined -= 1;
        }
        // A session ends with our leave answered by close 1000, or with the server's
        // 1001 at its --duration; anything else is an error.
        if let Ending::Unclean(why) = ending {
            self.errors += 1;
            self.first_error.get_or_insert(why);
        }
    }
}

pub fn run(
    fleet: &mut Fleet,
    scenario: &Scenario,
    server: &ServerWatch,
) -> std::io::Result<Report> {
    let mut state = Run {
        traffic: Deliveries::default(),
        chats: scenario.chats,
        hold: scenario.hold,
        sessions: HashMap::new(),
        joined: 0,
        attempted: 0,
        opened: 0,
        errors: 0,
        first_error: None,
        expected: 0,
    };
    let window = Window::open(server);
    let started = Instant::now();
    let length = scenario.length();
    let mut vus_started = 0usize;
    loop {
        let now = Instant::now();
        let elapsed = now - started;
        if elapsed < length {
            // Start sessions up to the VUs wanted now. A repeating VU starts a new
            // session when its last one ends; one that does not repeat runs once.
            // Sessions over the count finish their hold (k6's graceful ramp-down).
            let wanted = scenario.wanted(elapsed);
            let running = if scenario.repeat {
                state.sessions.len()
            } else {
                vus_started
            };
            for _ in running..wanted {
                vus_started += 1;
                state.attempted += 1;
                match fleet.connect() {
                    Ok(key) => {
                        let session = Session {
                            joined: false,
                            next_chat: now,
                            leave_at: now + length + Duration::from_secs(3600),
                            left: false,
                        };
                        state.sessions.insert(key, session);
                    }
                    Err(_) => state.errors += 1,
                }
            }
        } else if state.sessions.is_empty() {
            break;
        }
        if elapsed >= length + Duration::from_secs(30) {
            state.errors += fleet.len() as u64;
            state
                .first_error
                .get_or_insert("sessions still open 30 s after the scenario");
            break;
        }
        // Due chats and leaves.
        let mut next = now + Duration::from_millis(50);
        let joined_now = state.joined as u64;
        for (&key, session) in state.sessions.iter_mut() {
            if !session.joined || session.left {
                continue;
            }
            if now >= session.leave_at || (!scenario.repeat && elapsed >= length) {
                session.left = true;
                fleet.send_text(key, br#"{"type":"leave"}"#);
                continue;
            }
            if let Chats::PerSecond(rate) = state.chats {
                let every = Duration::from_secs_f64(1.0 / rate);
                if now >= session.next_chat {
                    session.next_chat += every;
                    state.expected += joined_now.saturating_sub(1);
                    let chat = state.traffic.next_chat();
                    fleet.send_text(key, &chat);
                }
                next = next.min(session.next_chat);
            }
            next = next.min(session.leave_at);
        }
        fleet.turn(
            Some(next.saturating_duration_since(Instant::now())),
            &mut state,
        )?;
    }
    let elapsed = started.elapsed();
    let traffic = &state.traffic;

    let mut report = Report::new("scenario", elapsed);
    let secs = elapsed.as_secs_f64();
    let mean_ms = traffic.latency.mean() / 1000.0;
    let success = if state.attempted == 0 {
        0.0
    } else {
        100.0 * state.opened as f64 / state.attempted as f64
    };
    let dropped = state.expected.saturating_sub(traffic.received);
    let drop_rate = if state.expected == 0 {
        0.0
    } else {
        100.0 * dropped as f64 / state.expected as f64
    };
    report.block(format!(
        "--- Statistics ---\nTotal messages: {}\nProcessing time: {secs:.3}s\nAverage latency: {mean_ms:.3}ms\n\
         Throughput: {:.2} messages/sec\nP95 latency: {:.3}ms\nP99 latency: {:.3}ms\n\
         Connection success rate: {success:.2}%\nMessage drop rate: {drop_rate:.2}%",
        traffic.sent,
        traffic.received as f64 / secs,
        traffic.latency.percentile(95.0) as f64 / 1000.0,
        traffic.latency.percentile(99.0) as f64 / 1000.0,
    ));
    report.set("sessions", state.attempted as f64);
    report.set("connection_success_percent", success);
    report.set("errors", state.errors as f64);
    report.set("chats_sent", traffic.sent as f64);
    report.set("deliveries", traffic.received as f64);
    report.set("deliveries_per_sec", traffic.received as f64 / secs);
    report.set("drop_rate_percent", drop_rate);
    report.set("latency_mean_ms", mean_ms);
    report.latency(&traffic.latency);
    if let Some(why) = state.first_error {
        report.note(format!("first error: {why}"));
    }
    report.note("drop rate: 1 - received / (Σ over chats sent of the other VUs joined at that moment); chats in flight to a VU that leaves count as dropped".into());
    report.cpu(&window, server, "deliveries", traffic.received);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vus_ramp_linearly_through_the_stages() {
        let burst = Scenario::named("burst", 1.0).unwrap();
        let at = |secs: f64| burst.wanted(Duration::from_secs_f64(secs));
        assert_eq!((at(0.0), at(5.0), at(10.0), at(12.0)), (0, 500, 1000, 1000));
        assert_eq!((at(17.5), at(20.0)), (500, 0));
        assert_eq!(burst.length(), Duration::from_secs(20));
        let steady = Scenario::named("steady", 0.5).unwrap();
        assert_eq!(
            (steady.wanted(Duration::ZERO), steady.length()),
            (100, Duration::from_secs(30))
        );
        assert!(Scenario::named("nope", 1.0).is_none());
    }
}
