//! Load generator for websocket-public-chat (and any server speaking its
//! protocol): one mio event loop, by default one thread, so it can be pinned
//! to one core and the server to another. Loopback targets only; every mode
//! ends by itself.

mod churn;
mod connect;
mod fanout;
mod fleet;
mod histogram;
mod ids;
mod procstat;
mod reconnect;
mod restart;
mod rng;
mod scenario;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use fleet::{Fleet, Target};
use histogram::Histogram;
use procstat::Sample;

#[derive(Parser)]
#[command(
    name = "loadgen",
    about = "Load generator for websocket-public-chat",
    override_usage = "loadgen [--url URL]... [OPTIONS] <MODE> [MODE OPTIONS]"
)]
struct Cli {
    /// Server WebSocket URL (loopback only). Repeat it for several instances
    /// sharing one room: connections go to each in turn.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", global = true)]
    url: Vec<String>,
    /// PID of the server, to report its CPU time and memory (repeatable: the figures are summed).
    #[arg(long, global = true)]
    server_pid: Vec<u32>,
    /// Print one JSON object instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// Connect from 127.0.0.1 to .64 in turn: past one address's ports, and fast to allocate.
    #[arg(long, global = true)]
    spread_sources: bool,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N joined connections; S senders × R chats/s; deliveries/s, ratio, latency.
    #[command(override_usage = "loadgen [--url URL]... fanout [OPTIONS]")]
    Fanout {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        senders: usize,
        /// Chats per second per sender.
        #[arg(long, default_value_t = 9.0, value_parser = positive)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0, value_parser = positive)]
        duration: f64,
    },
    /// Open N joined idle connections; handshakes/s, latency, server memory per connection.
    #[command(override_usage = "loadgen [--url URL]... connect [OPTIONS]")]
    Connect {
        #[arg(long, default_value_t = 1000)]
        connections: usize,
        /// Handshakes in flight at once.
        #[arg(long, default_value_t = 256)]
        concurrency: usize,
        /// Each join asks for this many recent chats (`history`), sent before it is in.
        #[arg(long)]
        history: Option<u64>,
        /// Each join recovers this many chats: `since` that far behind the room's newest id.
        #[arg(long)]
        since_back: Option<u64>,
        /// Chats sent before the connections open (10 per filler connection, under the rate limit).
        #[arg(long, default_value_t = 0)]
        fill: usize,
        /// Bytes of JSON in each of those chats.
        #[arg(long, default_value_t = 128)]
        fill_size: usize,
    },
    /// A k6 scenario at full speed: steady, burst, churn, saturation, steady-soak, churn-soak.
    #[command(override_usage = "loadgen [--url URL]... scenario <NAME> [OPTIONS]")]
    Scenario {
        name: String,
        /// Multiplies every duration (0.1: a tenth as long).
        #[arg(long, default_value_t = 1.0)]
        scale: f64,
    },
    /// P people drop and recover (join with since/epoch) at random while S
    /// senders chat; reports chats lost or duplicated (must be 0). With
    /// several --url, the instances must share one order (--redis).
    #[command(override_usage = "loadgen [--url URL]... reconnect [OPTIONS]")]
    Reconnect {
        #[arg(long, default_value_t = 100, value_parser = at_least_one)]
        people: usize,
        #[arg(long, default_value_t = 10, value_parser = at_least_one)]
        senders: usize,
        /// Chats per second per sender (the server allows 10).
        #[arg(long, default_value_t = 9.0, value_parser = positive)]
        rate: f64,
        /// Seconds of sending.
        #[arg(long, default_value_t = 10.0, value_parser = positive)]
        duration: f64,
        /// Longest time away, in seconds (keep it inside the history window:
        /// senders × rate × away below --history).
        #[arg(long, default_value_t = 0.5, value_parser = positive)]
        away: f64,
        /// Mean time connected between drops, in seconds.
        #[arg(long, default_value_t = 1.0, value_parser = positive)]
        stay: f64,
        /// Seed of the drops (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// A deploy: P people on instance A while S senders chat; A gets
    /// SIGTERM and is started again (one --server, e.g. with
    /// --history-file) or its people move to B (two --server and --url,
    /// sharing a room through Redis). Everyone comes back with the page's
    /// backoff; reports the time until all are back, recoveries, chats lost
    /// and duplicated (must be 0) and the storm's server CPU.
    #[command(
        override_usage = "loadgen --url A [--url B] restart --server CMD [--server CMD] [OPTIONS]"
    )]
    Restart {
        /// A server's command line, split at spaces (the generator starts
        /// and stops it); the first is A, listening on the first --url.
        #[arg(long, required = true)]
        server: Vec<String>,
        #[arg(long, default_value_t = 1000, value_parser = at_least_one)]
        people: usize,
        #[arg(long, default_value_t = 5)]
        senders: usize,
        /// Chats per second per sender (the server allows 10).
        #[arg(long, default_value_t = 9.0, value_parser = positive)]
        rate: f64,
        /// Seconds of chat before the stop, and again after everyone is back.
        #[arg(long, default_value_t = 3.0, value_parser = positive)]
        chat: f64,
        /// Seed of the backoff's jitter (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// L loops of connect → join → leave → close at full speed; cycles/s, errors, unclean closes.
    #[command(override_usage = "loadgen [--url URL]... churn [OPTIONS]")]
    Churn {
        #[arg(long, default_value_t = 200)]
        loops: usize,
        /// Seconds.
        #[arg(long, default_value_t = 10.0, value_parser = positive)]
        duration: f64,
    },
}

/// Microseconds since the generator started: the time embedded in chats.
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock {
    pub fn micros(&self) -> u64 {
        self.0.elapsed().as_micros() as u64
    }
}

/// A chat padded to exactly 128 bytes of JSON, carrying its send time.
pub fn chat_payload(ts: u64) -> Vec<u8> {
    sized_chat(ts, 128)
}

/// A chat padded to `size` bytes of JSON (or as short as it can be), carrying `ts`.
pub fn sized_chat(ts: u64, size: usize) -> Vec<u8> {
    let head = br#"{"type":"chat","text":""#;
    let tail = format!(r#"","ts":{ts}}}"#);
    let pad = size.saturating_sub(head.len() + tail.len());
    let mut payload = Vec::with_capacity(size);
    payload.extend_from_slice(head);
    payload.resize(head.len() + pad, b' ');
    payload.extend_from_slice(tail.as_bytes());
    payload
}

/// The `ts` number at the end of a relayed chat (`..."ts":123}`).
pub fn json_ts(payload: &[u8]) -> Option<u64> {
    let colon = payload.iter().rposition(|&b| b == b':')?;
    let digits = payload.get(colon + 1..payload.len().checked_sub(1)?)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Joins as `user`, then pings: the pong says the join was processed (same connection, in order).
pub fn join(fleet: &mut Fleet, key: usize, user: &str) {
    fleet.send_text(
        key,
        serde_json::json!({"type": "join", "user": user})
            .to_string()
            .as_bytes(),
    );
    fleet.send_text(key, br#"{"type":"ping","ts":0}"#);
}

/// A seed from the clock, for runs not given one.
fn clock_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// A count of at least one.
fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("must be a whole number of at least 1".into()),
    }
}

/// A finite number above 0 (a rate or a time in seconds).
fn positive(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 && x < 1e6 => Ok(x),
        _ => Err("must be a number above 0 (and below a million)".into()),
    }
}

pub enum Incoming {
    Chat(Option<u64>),
    Pong,
    Other,
}

/// Tells `{"type":"chat",...` from `{"type":"pong",...` by the 10th byte, without parsing.
pub fn classify(payload: &[u8]) -> Incoming {
    match payload.get(9) {
        Some(b'c') => Incoming::Chat(json_ts(payload)),
        Some(b'p') => Incoming::Pong,
        _ => Incoming::Other,
    }
}

/// Chats sent and delivered, and their delivery latency from the embedded send time.
pub struct Deliveries {
    clock: Clock,
    pub sent: u64,
    pub received: u64,
    pub latency: Histogram,
}

impl Default for Deliveries {
    fn default() -> Self {
        Self {
            clock: Clock::default(),
            sent: 0,
            received: 0,
            latency: Histogram::new(),
        }
    }
}

impl Deliveries {
    /// A chat stamped with the time now, counted as sent.
    pub fn next_chat(&mut self) -> Vec<u8> {
        self.sent += 1;
        chat_payload(self.clock.micros())
    }

    /// A chat stamped with the time it was scheduled for (`at`), counted as
    /// sent: a send the generator made late still counts its latency from
    /// when it should have gone (no coordinated omission).
    pub fn scheduled_chat(&mut self, at: Instant) -> Vec<u8> {
        self.sent += 1;
        chat_payload(at.saturating_duration_since(self.clock.0).as_micros() as u64)
    }

    pub fn received(&mut self, sent_at: Option<u64>) {
        self.received += 1;
        if let Some(sent_at) = sent_at {
            self.latency
                .record(self.clock.micros().saturating_sub(sent_at));
        }
    }
}

/// A measured stretch of time: CPU of the server and of the generator across it.
pub struct Window {
    started: Instant,
    server: Option<Sample>,
    own: Option<Sample>,
}

impl Window {
    pub fn open(server: &ServerWatch) -> Self {
        Self {
            started: Instant::now(),
            server: server.sample(),
            own: own_sample(),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The server as it was when the window opened.
    pub fn server_sample(&self) -> Option<Sample> {
        self.server
    }
}

/// Where the server's figures come from: one process, or the sum of several.
pub struct ServerWatch(Vec<String>);

impl ServerWatch {
    pub fn sample(&self) -> Option<Sample> {
        let mut samples = self.0.iter().map(|pid| procstat::sample(pid));
        let first = samples.next()??;
        samples.try_fold(first, |sum, s| {
            let s = s?;
            Some(Sample {
                cpu: sum.cpu + s.cpu,
                rss_kib: sum.rss_kib + s.rss_kib,
            })
        })
    }
}

pub fn own_sample() -> Option<Sample> {
    procstat::sample("self")
}

/// Named figures in a fixed order, printed as text or one JSON object.
pub struct Report {
    mode: &'static str,
    figures: Vec<(String, f64)>,
    notes: Vec<String>,
    /// Text printed as it is before the figures (the statistics block).
    block: Option<String>,
    /// A check the mode makes failed: the generator exits with status 1.
    failed: bool,
}

impl Report {
    pub fn new(mode: &'static str, elapsed: Duration) -> Self {
        let mut report = Self {
            mode,
            figures: Vec::new(),
            notes: Vec::new(),
            block: None,
            failed: false,
        };
        report.set("elapsed_s", elapsed.as_secs_f64());
        report
    }

    pub fn set(&mut self, name: &str, value: f64) {
        self.figures.push((name.to_string(), value));
    }

    pub fn block(&mut self, text: String) {
        self.block = Some(text);
    }

    pub fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    /// Notes a failed check: the report is printed, then the exit status is 1.
    pub fn fail(&mut self, note: String) {
        self.failed = true;
        self.note(note);
    }

    /// Recoveries and the id checks of `ids`; fails the run if any chat
    /// was lost or duplicated within the history window.
    pub fn ids(&mut self, t: &ids::Tally) {
        self.set("recoveries", t.recoveries as f64);
        self.set("recoveries_incomplete", t.incomplete as f64);
        self.set("chats_received", t.received as f64);
        self.set("lost", t.lost as f64);
        self.set("duplicated", t.duplicated as f64);
        self.set("missed_beyond_window", t.beyond_window as f64);
        if t.lost + t.duplicated > 0 {
            self.fail("chats were lost or duplicated within the history window".into());
        }
    }

    pub fn latency(&mut self, h: &Histogram) {
        self.set("latency_samples", h.count() as f64);
        for (name, p) in [("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99_9", 99.9)] {
            self.set(
                &format!("latency_{name}_ms"),
                h.percentile(p) as f64 / 1000.0,
            );
        }
        self.set("latency_max_ms", h.max() as f64 / 1000.0);
    }

    /// CPU over `window` of the server (per `unit` done) and of the generator itself.
    pub fn cpu(&mut self, window: &Window, server: &ServerWatch, unit: &str, done: u64) {
        let elapsed = window.elapsed();
        if let (Some(before), Some(after)) = (window.server, server.sample()) {
            let cpu = after.cpu.saturating_sub(before.cpu);
            self.set("server_cpu_s", cpu.as_secs_f64());
            self.set(
                "server_cpu_percent",
                100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64(),
            );
            if done > 0 {
                let per = cpu.as_secs_f64() * 1e6 / done as f64;
                if unit == "deliveries" {
                    self.set("server_cpu_ms_per_1000_deliveries", per);
                } else {
                    self.set(
                        &format!("server_cpu_us_per_{}", unit.trim_end_matches('s')),
                        per,
                    );
                }
            }
            self.set("server_rss_kib", after.rss_kib as f64);
        }
        if let (Some(before), Some(after)) = (window.own, own_sample()) {
            let share = after.cpu.saturating_sub(before.cpu).as_secs_f64() / elapsed.as_secs_f64();
            self.set("loadgen_cpu_percent", 100.0 * share);
            if share > 0.9 {
                self.note("the load generator used over 90 % of its core: it, not the server, may be the bottleneck".into());
            }
        }
    }

    fn print(&self, json: bool) {
        if json {
            let mut object = serde_json::Map::new();
            object.insert("mode".into(), self.mode.into());
            for (name, value) in &self.figures {
                object.insert(name.clone(), serde_json::json!(value));
            }
            object.insert("notes".into(), self.notes.clone().into());
            if let Some(block) = &self.block {
                object.insert("statistics".into(), block.clone().into());
            }
            println!("{}", serde_json::Value::Object(object));
        } else {
            if let Some(block) = &self.block {
                println!("{block}");
            }
            println!("--- loadgen {} ---", self.mode);
            for (name, value) in &self.figures {
                if value.fract() == 0.0 && value.abs() < 1e15 {
                    println!("{name}: {value:.0}");
                } else {
                    println!("{name}: {value:.3}");
                }
            }
            for note in &self.notes {
                println!("note: {note}");
            }
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let targets = match cli.url.iter().map(|url| Target::parse(url)).collect() {
        Ok(targets) => targets,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    websocket_public_chat::sys::raise_fd_limit();
    let server = ServerWatch(cli.server_pid.iter().map(u32::to_string).collect());
    let mut fleet = match Fleet::new(targets, cli.spread_sources) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("loadgen: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match cli.mode {
        Mode::Fanout {
            connections,
            senders,
            rate,
            duration,
        } => fanout::run(
            &mut fleet,
            &fanout::Settings {
                connections,
                senders,
                rate,
                duration: Duration::from_secs_f64(duration),
            },
            &server,
        ),
        Mode::Connect {
            connections,
            concurrency,
            history,
            since_back,
            fill,
            fill_size,
        } => connect::run(
            &mut fleet,
            &connect::Settings {
                connections,
                concurrency,
                history,
                since_back,
                fill,
                fill_size,
            },
            &server,
        ),
        Mode::Scenario { name, scale } => match scenario::Scenario::named(&name, scale) {
            Some(scenario) => scenario::run(&mut fleet, &scenario, &server),
            None => {
                eprintln!(
                    "loadgen: no scenario {name:?} (steady, burst, churn, saturation, steady-soak, churn-soak)"
                );
                return ExitCode::FAILURE;
            }
        },
        Mode::Reconnect {
            people,
            senders,
            rate,
            duration,
            away,
            stay,
            seed,
        } => {
            let seed = seed.unwrap_or_else(clock_seed);
            eprintln!("loadgen reconnect: --seed {seed}");
            reconnect::run(
                &mut fleet,
                &reconnect::Settings {
                    people,
                    senders,
                    rate,
                    duration: Duration::from_secs_f64(duration),
                    away: Duration::from_secs_f64(away),
                    stay: Duration::from_secs_f64(stay),
                    seed,
                },
                &server,
            )
        }
        Mode::Restart {
            server: servers,
            people,
            senders,
            rate,
            chat,
            seed,
        } => {
            let seed = seed.unwrap_or_else(clock_seed);
            eprintln!("loadgen restart: --seed {seed}");
            restart::run(
                &mut fleet,
                &restart::Settings {
                    people,
                    senders,
                    rate,
                    before: Duration::from_secs_f64(chat),
                    after: Duration::from_secs_f64(chat),
                    servers,
                    seed,
                },
            )
        }
        Mode::Churn { loops, duration } => churn::run(
            &mut fleet,
            &churn::Settings {
                loops,
                duration: Duration::from_secs_f64(duration),
            },
            &server,
        ),
    };
    match report {
        Ok(report) => {
            report.print(cli.json);
            if report.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chats_are_128_bytes_and_carry_their_time() {
        for ts in [0, 7, 1_700_000_000_000_000] {
            let payload = chat_payload(ts);
            assert_eq!(payload.len(), 128);
            let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
            assert_eq!(v["ts"], ts);
            let relayed =
                format!(r#"{{"type":"chat","room":"public","user":"u","text":"x","ts":{ts}}}"#);
            assert_eq!(json_ts(relayed.as_bytes()), Some(ts));
        }
    }
}
