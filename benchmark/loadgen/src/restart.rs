//! `restart`: a deploy under load. P people are joined on instance A while
//! S senders chat; A is stopped with SIGTERM, then either started again
//! with the same command (one `--server`: a single instance, which keeps
//! the room with `--history-file`) or left down while its people move to
//! instance B (two `--server`s and two `--url`s sharing the room through
//! Redis; the senders are on B and go on chatting). Everyone comes back
//! with the page's backoff and rejoins with `since`/`epoch`.
//!
//! Reports the time from the SIGTERM until every person is joined again,
//! recoveries complete and incomplete, chats lost and duplicated (the run
//! fails unless both are 0), refused connections and failed handshakes,
//! and the CPU the storm cost the instance that took it. The generator
//! starts and stops the servers itself (commands split at spaces), so it
//! knows their PIDs and stops only what it started.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use websocket_public_chat::client;

use crate::fleet::{Ending, Fleet, Handler};
use crate::ids::{self, Message, Seen};
use crate::procstat::{self, Sample};
use crate::rng::Rng;
use crate::{Report, chat_payload};

pub struct Settings {
    pub people: usize,
    pub senders: usize,
    pub rate: f64,
    /// Chatting before the stop, and after everyone is back.
    pub before: Duration,
    pub after: Duration,
    /// The servers' commands: A (stopped), and B (where A's people move).
    pub servers: Vec<String>,
    pub seed: u64,
}

/// Longest the storm may take before the run gives up waiting.
const STORM_LIMIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq)]
enum Phase {
    /// Connecting, or joined and waiting for `joined`.
    Joining,
    Live,
    /// Gone; connects again at `back_at`.
    Away {
        back_at: Instant,
    },
}

/// A person (whose ids are checked) or a sender (whose own chats never
/// come back to it, so its ids are not).
struct Member {
    sender: bool,
    key: Option<usize>,
    phase: Phase,
    /// Failed attempts since the last success: the backoff's exponent.
    retry: u32,
    seen: Seen,
    /// Joined again since the stop.
    back: bool,
}

#[derive(Default)]
struct Tally {
    sent: u64,
    ids: ids::Tally,
    refused: u64,
    handshakes_failed: u64,
    closed_before_stop: u64,
}

struct Restart {
    members: Vec<Member>,
    by_key: HashMap<usize, usize>,
    /// The target people connect to: A, then B after the stop if there is one.
    people_target: usize,
    senders_target: usize,
    stopped_at: Option<Instant>,
    all_back_at: Option<Instant>,
    backs: usize,
    people: usize,
    /// The room's epoch and newest id as the latest `joined` or chat told
    /// (a restart without the history file starts another epoch's ids).
    room_epoch: Option<String>,
    room_last: u64,
    tally: Tally,
    rng: Rng,
}

impl Restart {
    fn connect(&mut self, fleet: &mut Fleet, who: usize) -> std::io::Result<()> {
        let target = match self.members[who].sender {
            true => self.senders_target,
            false => self.people_target,
        };
        let key = fleet.connect_to(target)?;
        self.by_key.insert(key, who);
        self.members[who].key = Some(key);
        self.members[who].phase = Phase::Joining;
        Ok(())
    }

    /// Brings back those whose backoff is over.
    fn tick(&mut self, fleet: &mut Fleet) -> std::io::Result<()> {
        let now = Instant::now();
        for who in 0..self.members.len() {
            if matches!(self.members[who].phase, Phase::Away { back_at } if back_at <= now) {
                self.connect(fleet, who)?;
            }
        }
        Ok(())
    }

    fn live_senders(&self) -> Vec<usize> {
        self.members
            .iter()
            .filter(|m| m.sender && m.phase == Phase::Live)
            .filter_map(|m| m.key)
            .collect()
    }

    fn all_caught_up(&self) -> bool {
        self.members.iter().all(|m| {
            m.phase == Phase::Live && (m.sender || m.seen.last.is_some_and(|l| l >= self.room_last))
        })
    }
}

impl Handler for Restart {
    fn opened(&mut self, fleet: &mut Fleet, key: usize, _took: Duration) {
        let Some(&who) = self.by_key.get(&key) else {
            return;
        };
        let m = &self.members[who];
        let since = match (&m.seen.epoch, m.seen.last) {
            (Some(epoch), Some(last)) => Some((last, epoch.as_str())),
            _ => None,
        };
        let name = format!("{}{who}", if m.sender { "sender" } else { "person" });
        fleet.send_text(key, client::join_json(&name, 0, since).as_bytes());
    }

    fn text(&mut self, _fleet: &mut Fleet, key: usize, payload: &[u8]) {
        let Some(&who) = self.by_key.get(&key) else {
            return;
        };
        let Ok(message) = serde_json::from_slice::<Message>(payload) else {
            return;
        };
        let m = &mut self.members[who];
        match (message.kind.as_str(), message.id) {
            ("chat", Some(id)) => {
                self.room_last = self.room_last.max(id);
                if !m.sender {
                    let joining = m.phase == Phase::Joining;
                    m.seen.chat(id, joining, &mut self.tally.ids);
                }
            }
            ("joined", _) => {
                let last = message.last.unwrap_or(0);
                if message.epoch != self.room_epoch {
                    self.room_epoch = message.epoch.clone();
                    self.room_last = last;
                }
                self.room_last = self.room_last.max(last);
                if !m.sender {
                    let recovered = message.recovered == Some(true);
                    let epoch = message.epoch.as_deref();
                    m.seen.joined(epoch, last, recovered, &mut self.tally.ids);
                }
                m.phase = Phase::Live;
                m.retry = 0;
                if self.stopped_at.is_some() && !m.back && !m.sender {
                    m.back = true;
                    self.backs += 1;
                    if self.backs == self.people {
                        self.all_back_at = Some(Instant::now());
                    }
                }
            }
            _ => {}
        }
    }

    fn closed(&mut self, _fleet: &mut Fleet, key: usize, ending: Ending) {
        let Some(who) = self.by_key.remove(&key) else {
            return;
        };
        match ending {
            Ending::Unclean("connect failed") => self.tally.refused += 1,
            Ending::Unclean("upgrade refused") => self.tally.handshakes_failed += 1,
            _ if self.stopped_at.is_none() => self.tally.closed_before_stop += 1,
            _ => {}
        }
        // As the page does: 0.5 s, 1 s, 2 s ... up to 10 s, jittered.
        let jitter = client::jitter(self.rng.next_u64());
        let delay = client::backoff(self.members[who].retry, jitter);
        let m = &mut self.members[who];
        m.retry += 1;
        m.key = None;
        m.phase = Phase::Away {
            back_at: Instant::now() + delay,
        };
    }
}

/// Starts a server command (split at spaces); its stdout is dropped, its
/// stderr is ours.
fn spawn(command: &str) -> std::io::Result<Child> {
    let mut words = command.split_whitespace();
    let program = words.next().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "an empty --server")
    })?;
    Command::new(program)
        .args(words)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
}

/// SIGTERM to a server we started.
fn terminate(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a PID we spawned and still hold (not reaped).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// Stops a server we started: SIGTERM, then SIGKILL after 10 s.
fn stop(mut child: Child) {
    terminate(&child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn sample(child: &Child) -> Option<Sample> {
    procstat::sample(&child.id().to_string())
}

/// Waits until the server at `addr` answers `/stats`, and (with `--redis`)
/// until Redis orders its room: clients joined before that would be told
/// a new epoch when it does.
fn wait_ready(addr: std::net::SocketAddr, redis: bool) -> std::io::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut answer = String::new();
        if let Ok(mut stream) = TcpStream::connect(addr) {
            let request = "GET /stats HTTP/1.1\r\nHost: loadgen\r\nConnection: close\r\n\r\n";
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_string(&mut answer);
            }
        }
        if answer.starts_with("HTTP/1.1 200") && (!redis || answer.contains(r#""order":"redis""#)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!(
                "the server on {addr} is not ready"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run(fleet: &mut Fleet, settings: &Settings) -> std::io::Result<Report> {
    let moving = settings.servers.len() == 2;
    if !(1..=2).contains(&settings.servers.len()) || fleet.targets() != settings.servers.len() {
        return Err(std::io::Error::other(
            "restart takes one --server (restarted) or two (A stopped, its people move to B), \
             and a --url for each",
        ));
    }
    let mut children: Vec<Option<Child>> = Vec::new();
    for (n, command) in settings.servers.iter().enumerate() {
        children.push(Some(spawn(command)?));
        wait_ready(fleet.target_addr(n), command.contains("--redis"))?;
    }
    let result = storm(fleet, settings, moving, &mut children);
    for child in children.into_iter().flatten() {
        stop(child);
    }
    result
}

fn storm(
    fleet: &mut Fleet,
    settings: &Settings,
    moving: bool,
    children: &mut [Option<Child>],
) -> std::io::Result<Report> {
    let mut state = Restart {
        members: Vec::new(),
        by_key: HashMap::new(),
        people_target: 0,
        senders_target: usize::from(moving),
        stopped_at: None,
        all_back_at: None,
        backs: 0,
        people: settings.people,
        room_epoch: None,
        room_last: 0,
        tally: Tally::default(),
        rng: Rng::new(settings.seed),
    };
    for who in 0..settings.senders + settings.people {
        state.members.push(Member {
            sender: who < settings.senders,
            key: None,
            phase: Phase::Joining,
            retry: 0,
            seen: Seen::default(),
            back: false,
        });
        state.connect(fleet, who)?;
    }
    let setup = Duration::from_secs(30).max(Duration::from_millis(5) * settings.people as u32);
    let deadline = Instant::now() + setup;
    while !state.all_caught_up() && Instant::now() < deadline {
        state.tick(fleet)?;
        fleet.turn(Some(Duration::from_millis(20)), &mut state)?;
    }
    if !state.all_caught_up() {
        return Err(std::io::Error::other(
            "not everyone joined within the setup time",
        ));
    }

    let gap = Duration::from_secs_f64(1.0 / (settings.rate * settings.senders.max(1) as f64));
    let mut next_send = Instant::now();
    let mut turn = 0usize;
    let mut chat =
        |state: &mut Restart, fleet: &mut Fleet, until: Instant| -> std::io::Result<()> {
            let now = Instant::now();
            while settings.senders > 0 && next_send <= now && next_send < until {
                let live = state.live_senders();
                if !live.is_empty() {
                    fleet.send_text(live[turn % live.len()], &chat_payload(0));
                    state.tally.sent += 1;
                    turn += 1;
                }
                next_send += gap;
            }
            state.tick(fleet)?;
            let wait = next_send.min(now + Duration::from_millis(5));
            fleet.turn(Some(wait.saturating_duration_since(Instant::now())), state)
        };

    let until = Instant::now() + settings.before;
    while Instant::now() < until {
        chat(&mut state, fleet, until)?;
    }

    // The stop. CPU of the instance that takes the storm: B's from now, or
    // A's new process over its whole life (it starts, loads, takes everyone).
    let storm_before = children.get(1).and_then(Option::as_ref).and_then(sample);
    let stopped_at = Instant::now();
    state.stopped_at = Some(stopped_at);
    if let Some(a) = &children[0] {
        terminate(a);
    }
    if moving {
        state.people_target = 1;
    }
    let mut restarted_at = None;
    let limit = stopped_at + STORM_LIMIT;
    while (state.all_back_at.is_none() || !state.all_caught_up()) && Instant::now() < limit {
        if restarted_at.is_none()
            && let Some(a) = children[0].as_mut()
            && !matches!(a.try_wait(), Ok(None))
        {
            children[0] = None;
            if !moving {
                children[0] = Some(spawn(&settings.servers[0])?);
                restarted_at = Some(Instant::now());
            }
        }
        chat(&mut state, fleet, limit)?;
    }
    let caught_up_at = Instant::now();
    let storm_child = children[usize::from(moving)].as_ref();
    let storm_cpu = match (storm_child.and_then(sample), storm_before) {
        (Some(after), Some(before)) => Some(after.cpu.saturating_sub(before.cpu)),
        (Some(after), None) => Some(after.cpu),
        _ => None,
    };

    let until = Instant::now() + settings.after;
    while Instant::now() < until {
        chat(&mut state, fleet, until)?;
    }
    let settle = Instant::now() + Duration::from_secs(10);
    while !state.all_caught_up() && Instant::now() < settle {
        state.tick(fleet)?;
        fleet.turn(Some(Duration::from_millis(5)), &mut state)?;
    }
    // Whoever has not caught up by now lost the rest.
    let room_last = state.room_last;
    let behind: u64 = state
        .members
        .iter()
        .filter(|m| !m.sender)
        .map(|m| room_last.saturating_sub(m.seen.last.unwrap_or(0)))
        .sum();
    state.tally.ids.lost += behind;

    let t = &state.tally;
    let mode = if moving {
        "restart (move to B)"
    } else {
        "restart (same instance)"
    };
    let mut report = Report::new("restart", stopped_at.elapsed());
    report.note(mode.into());
    report.set("people", settings.people as f64);
    report.set("senders", settings.senders as f64);
    report.set("chats_sent", t.sent as f64);
    report.set("room_last_id", room_last as f64);
    if let Some(at) = restarted_at {
        report.set("down_s", (at - stopped_at).as_secs_f64());
    }
    let seconds = |at: Option<Instant>| at.map_or(f64::NAN, |at| (at - stopped_at).as_secs_f64());
    report.set("all_back_s", seconds(state.all_back_at));
    report.set("all_caught_up_s", (caught_up_at - stopped_at).as_secs_f64());
    report.ids(&t.ids);
    report.set("connects_refused", t.refused as f64);
    report.set("handshakes_failed", t.handshakes_failed as f64);
    report.set("closed_before_stop", t.closed_before_stop as f64);
    if let Some(cpu) = storm_cpu {
        report.set("storm_server_cpu_s", cpu.as_secs_f64());
        report.set(
            "storm_server_cpu_us_per_rejoin",
            cpu.as_secs_f64() * 1e6 / settings.people.max(1) as f64,
        );
    }
    if state.all_back_at.is_none() {
        report.fail(format!(
            "not everyone came back within {} s",
            STORM_LIMIT.as_secs()
        ));
    }
    // Where the room is kept (Redis, or --history-file), everyone must come
    // back whole.
    let keeps_room = moving || settings.servers[0].contains("--history-file");
    if keeps_room && t.ids.incomplete > 0 {
        report.fail(format!(
            "{} recoveries incomplete, though the room was kept",
            t.ids.incomplete
        ));
    }
    if t.ids.recoveries < settings.people as u64 {
        report.fail(format!(
            "{} of {} people recovered",
            t.ids.recoveries, settings.people
        ));
    }
    Ok(report)
}
