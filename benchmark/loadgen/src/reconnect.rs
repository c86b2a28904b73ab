//! `reconnect`: history and recovery under load. S senders chat at R chats/s
//! each; C people drop their connection at random (no close frame, as when
//! a train enters a tunnel), stay away up to `away`, then reconnect and
//! rejoin with `since`/`epoch`; one observer never drops and sees the room's
//! newest id. Each person checks its own stream of ids: every id exactly one
//! more than the last (else a chat was lost, or duplicated if not more).
//! Gaps the server owned up to with `recovered: false` (away past the
//! history window) are counted apart; lost and duplicated must be 0.
//!
//! Ids are the room's, one per chat: with several `--url`s, instances must
//! share one id sequence for the check to hold.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::fleet::{Ending, Fleet, Handler};
use crate::ids::{self, Message, Seen};
use crate::rng::Rng;
use crate::{Report, ServerWatch, Window, chat_payload};

pub struct Settings {
    pub people: usize,
    pub senders: usize,
    pub rate: f64,
    pub duration: Duration,
    /// Longest time a person stays away.
    pub away: Duration,
    /// Mean time a person stays connected between drops.
    pub stay: Duration,
    pub seed: u64,
}

/// What a connection is for.
#[derive(Clone, Copy)]
enum Role {
    Sender,
    Observer,
    Person(usize),
}

/// Where a person is in its drop-and-return cycle.
#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Connecting, or joined and waiting for `joined`.
    Joining,
    /// `joined` arrived: live chats flow; drops at `drop_at`.
    Live { drop_at: Instant },
    /// Dropped; reconnects at `back_at`.
    Away { back_at: Instant },
}

struct Person {
    key: Option<usize>,
    phase: Phase,
    seen: Seen,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    drops: u64,
    ids: ids::Tally,
    unexpected_closes: u64,
}

struct Reconnect {
    roles: HashMap<usize, Role>,
    people: Vec<Person>,
    senders: Vec<usize>,
    joined_helpers: usize,
    room_last: u64,
    tally: Tally,
    rng: Rng,
    settings_stay: Duration,
    /// After the sending stops, nobody drops any more.
    dropping: bool,
}

impl Reconnect {
    /// A random duration from 0 to `2 * mean` (so `mean` on average).
    fn around(&mut self, mean: Duration) -> Duration {
        mean.mul_f64((self.rng.next_u64() % 2001) as f64 / 1000.0)
    }

    /// A person's id stream: `id` must be exactly one more than the last seen.
    fn on_chat(&mut self, who: usize, id: u64) {
        let person = &mut self.people[who];
        let joining = person.phase == Phase::Joining;
        person.seen.chat(id, joining, &mut self.tally.ids);
    }

    fn on_joined(&mut self, who: usize, message: &Message) {
        let stay = self.around(self.settings_stay);
        let person = &mut self.people[who];
        person.seen.joined(
            message.epoch.as_deref(),
            message.last.unwrap_or(0),
            message.recovered == Some(true),
            &mut self.tally.ids,
        );
        person.phase = Phase::Live {
            drop_at: Instant::now() + stay,
        };
    }

    /// Drops the people whose time has come and brings back those whose away time is over.
    fn tick(&mut self, fleet: &mut Fleet, away: Duration) -> std::io::Result<()> {
        let now = Instant::now();
        for who in 0..self.people.len() {
            match self.people[who].phase {
                Phase::Live { drop_at } if self.dropping && drop_at <= now => {
                    if let Some(key) = self.people[who].key.take() {
                        self.roles.remove(&key);
                        fleet.abandon(key);
                    }
                    let back_at = now + self.around(away / 2);
                    self.people[who].phase = Phase::Away { back_at };
                    self.tally.drops += 1;
                }
                Phase::Away { back_at } if back_at <= now => {
                    let key = fleet.connect()?;
                    self.roles.insert(key, Role::Person(who));
                    self.people[who].key = Some(key);
                    self.people[who].phase = Phase::Joining;
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn all_caught_up(&self) -> bool {
        self.people.iter().all(|p| {
            matches!(p.phase, Phase::Live { .. })
                && p.seen.last.is_some_and(|l| l >= self.room_last)
        })
    }
}

impl Handler for Reconnect {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
        let join = match self.roles.get(&key) {
            Some(Role::Person(who)) => {
                let seen = &self.people[*who].seen;
                match (&seen.epoch, seen.last) {
                    (Some(epoch), Some(since)) => serde_json::json!(
                        {"type": "join", "user": format!("away{who}"), "since": since, "epoch": epoch}
                    ),
                    _ => {
                        serde_json::json!({"type": "join", "user": format!("away{who}"), "history": 0})
                    }
                }
            }
            // A `history: 0` join answers with `joined`: the helper is in.
            Some(Role::Sender) => {
                serde_json::json!({"type": "join", "user": "sender", "history": 0})
            }
            Some(Role::Observer) => {
                serde_json::json!({"type": "join", "user": "observer", "history": 0})
            }
            None => return,
        };
        fleet.send_text(key, join.to_string().as_bytes());
    }

    fn text(&mut self, _fleet: &mut Fleet, key: usize, payload: &[u8]) {
        let Some(&role) = self.roles.get(&key) else {
            return;
        };
        let Ok(message) = serde_json::from_slice::<Message>(payload) else {
            return;
        };
        match (role, message.kind.as_str(), message.id) {
            (Role::Person(who), "chat", Some(id)) => self.on_chat(who, id),
            (Role::Person(who), "joined", _) => self.on_joined(who, &message),
            (Role::Observer, "chat", Some(id)) => self.room_last = self.room_last.max(id),
            (Role::Observer | Role::Sender, "joined", _) => {
                self.joined_helpers += 1;
                self.room_last = self.room_last.max(message.last.unwrap_or(0));
            }
            _ => {}
        }
    }

    fn closed(&mut self, _fleet: &mut Fleet, key: usize, _ending: Ending) {
        // Only the server closes here unasked: a person it closed comes back.
        self.tally.unexpected_closes += 1;
        if let Some(Role::Person(who)) = self.roles.remove(&key) {
            self.people[who].key = None;
            self.people[who].phase = Phase::Away {
                back_at: Instant::now(),
            };
        }
    }
}

pub fn run(
    fleet: &mut Fleet,
    settings: &Settings,
    server: &ServerWatch,
) -> std::io::Result<Report> {
    let mut state = Reconnect {
        roles: HashMap::new(),
        people: Vec::new(),
        senders: Vec::new(),
        joined_helpers: 0,
        room_last: 0,
        tally: Tally::default(),
        rng: Rng::new(settings.seed),
        settings_stay: settings.stay,
        dropping: true,
    };
    let observer = fleet.connect()?;
    state.roles.insert(observer, Role::Observer);
    for _ in 0..settings.senders {
        let key = fleet.connect()?;
        state.roles.insert(key, Role::Sender);
        state.senders.push(key);
    }
    let setup_deadline = Instant::now() + Duration::from_secs(30);
    while state.joined_helpers < 1 + settings.senders && Instant::now() < setup_deadline {
        fleet.turn(Some(Duration::from_millis(20)), &mut state)?;
    }
    for who in 0..settings.people {
        let key = fleet.connect()?;
        state.roles.insert(key, Role::Person(who));
        state.people.push(Person {
            key: Some(key),
            phase: Phase::Joining,
            seen: Seen::default(),
        });
    }
    while !state.all_caught_up() && Instant::now() < setup_deadline {
        fleet.turn(Some(Duration::from_millis(20)), &mut state)?;
    }

    let senders = state.senders.clone();
    let gap = Duration::from_secs_f64(1.0 / (settings.rate * senders.len().max(1) as f64));
    let window = Window::open(server);
    let started = Instant::now();
    let stop = started + settings.duration;
    let mut next_send = started;
    let mut turn = 0usize;
    while Instant::now() < stop {
        let now = Instant::now();
        while !senders.is_empty() && next_send <= now && next_send < stop {
            fleet.send_text(senders[turn % senders.len()], &chat_payload(0));
            state.tally.sent += 1;
            turn += 1;
            next_send += gap;
        }
        state.tick(fleet, settings.away)?;
        let wait = next_send.min(now + Duration::from_millis(5));
        fleet.turn(
            Some(wait.saturating_duration_since(Instant::now())),
            &mut state,
        )?;
    }
    // Everyone comes back and catches up with the room (bounded).
    state.dropping = false;
    let settle_deadline = Instant::now() + settings.away + Duration::from_secs(10);
    while !state.all_caught_up() && Instant::now() < settle_deadline {
        state.tick(fleet, settings.away)?;
        fleet.turn(Some(Duration::from_millis(5)), &mut state)?;
    }
    // Whoever has not caught up by now lost the rest.
    let room_last = state.room_last;
    let behind: u64 = state
        .people
        .iter()
        .map(|p| room_last.saturating_sub(p.seen.last.unwrap_or(0)))
        .sum();
    state.tally.ids.lost += behind;

    let t = &state.tally;
    let mut report = Report::new("reconnect", window.elapsed());
    report.set("people", settings.people as f64);
    report.set("senders", senders.len() as f64);
    report.set("chats_sent", t.sent as f64);
    report.set("room_last_id", room_last as f64);
    report.set("drops", t.drops as f64);
    report.ids(&t.ids);
    report.set("unexpected_closes", t.unexpected_closes as f64);
    if t.ids.recoveries == 0 {
        report.fail("nobody recovered: no drops, or the server sent no `joined`".into());
    }
    report.cpu(&window, server, "chats", t.sent);
    Ok(report)
}
