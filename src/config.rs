//! Command-line flags. Times are given in seconds (fractions allowed) and
//! kept in milliseconds. Every flag has a valid range, checked at start:
//! nonsense is refused with one line on stderr and exit status 2.

use std::ffi::OsString;

use clap::Parser;
use clap::error::ErrorKind;

/// A public chat room over WebSocket (one room, "public", at /ws).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "websocket-public-chat",
    version,
    override_usage = "websocket-public-chat [OPTIONS]"
)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on, 0 to 65535 (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value = "8080", value_parser = in_range::<u16>(0, 65_535))]
    pub port: u16,

    /// Stop after this many seconds; 0 runs until SIGINT/SIGTERM.
    #[arg(long = "duration", value_name = "SECS", default_value = "0", value_parser = duration)]
    pub duration_ms: u64,

    /// Ping a client after this many seconds without hearing from it (0.01 to 86400).
    #[arg(long = "ping-interval", value_name = "SECS", default_value = "30", value_parser = timeout)]
    pub ping_interval_ms: u64,

    /// Close a client after this many seconds without hearing from it
    /// (0.01 to 86400, more than --ping-interval).
    #[arg(long = "pong-timeout", value_name = "SECS", default_value = "60", value_parser = timeout)]
    pub pong_timeout_ms: u64,

    /// Close a connection whose HTTP upgrade is not complete after this many seconds (0.01 to 86400).
    #[arg(long = "handshake-timeout", value_name = "SECS", default_value = "10", value_parser = timeout)]
    pub handshake_timeout_ms: u64,

    /// Largest message accepted, in bytes (larger: close 1009); 1 to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value = "65536", value_parser = in_range::<usize>(1, MAX_BYTES))]
    pub max_message_size: usize,

    /// Memory a connection's unsent frames may take, in bytes, before it counts
    /// as a slow consumer (each frame counts its bytes plus 64); 16 KiB to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value = "1048576", value_parser = in_range::<usize>(MIN_BACKLOG, MAX_BYTES))]
    pub max_backlog: usize,

    /// Chats kept for joins that ask for history or recovery, 0 (none) to 1000000.
    #[arg(long, value_name = "N", default_value = "100", value_parser = in_range::<usize>(0, 1_000_000))]
    pub history: usize,

    /// Memory the kept chats may take (each counts its bytes plus 64), 1 KiB to 1 GiB.
    #[arg(long, value_name = "BYTES", default_value = "1048576", value_parser = in_range::<usize>(1024, MAX_BYTES))]
    pub history_bytes: usize,

    /// Keep the room across clean restarts: at a clean stop write its epoch,
    /// newest id and kept chats to FILE; at start take them back from it
    /// (once: the file is removed). Ignored with --redis (Redis keeps the room).
    #[arg(long, value_name = "FILE")]
    pub history_file: Option<std::path::PathBuf>,

    /// Most simultaneous connections, 1 to 16777216 [default: what the open-file limit allows].
    #[arg(long, value_name = "N", value_parser = in_range::<usize>(1, MAX_CONNS))]
    pub max_conns: Option<usize>,

    /// Most simultaneous connections from one IP address (more get 429); 0 = no limit.
    #[arg(long, value_name = "N", default_value = "0", value_parser = in_range::<u32>(0, u32::MAX as usize))]
    pub max_conns_per_ip: u32,

    /// Accept browser upgrades only from this Origin, e.g. https://chat.example.com
    /// (repeatable; others get 403); `*` accepts any. Default: pages of the
    /// host the request was sent to. Requests without an Origin (not browsers) pass.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// The private listener, for operators only (e.g. 10.0.0.5:9100, a private
    /// interface): /metrics and /stats are served there alone (the public port
    /// answers them with 404), and the admin API with --admin-token-file.
    /// (Its first name, --metrics-address, still works.)
    #[arg(long, visible_alias = "metrics-address", value_name = "ADDR:PORT")]
    pub private_address: Option<String>,

    /// Serve the admin API (/admin/...: members, kick, ban, mute, announce) on
    /// --private-address, to requests bearing the token this file holds
    /// (`Authorization: Bearer TOKEN`; 16 to 256 visible ASCII characters).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,

    /// A proxy in front (an address or a CIDR block, e.g. 10.0.0.0/8; repeatable):
    /// connections from it take the client's address from a PROXY protocol
    /// header (v1 or v2), else from the last X-Forwarded-For hop. From any
    /// other peer both are ignored, and a PROXY header is refused.
    #[arg(long = "trusted-proxy", value_name = "ADDR_OR_CIDR", value_parser = crate::http::proxy::Cidr::parse)]
    pub trusted_proxies: Vec<crate::http::proxy::Cidr>,

    /// Conformance mode: echo every message on /ws instead of the chat protocol.
    #[arg(long)]
    pub echo: bool,

    /// Share the room with other instances through Redis pub/sub,
    /// e.g. redis://127.0.0.1:6379/0 (needs a build with `--features redis`).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// PEM certificate(s) of the authority to trust for rediss:// (TLS), instead
    /// of the built-in public roots (a private CA, or a self-signed Redis).
    #[arg(long, value_name = "FILE")]
    pub redis_ca: Option<std::path::PathBuf>,

    /// The Redis channel the instances share.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "websocket-public-chat:public"
    )]
    pub redis_channel: String,
}

/// Milliseconds as seconds, as they were given (`500` → `0.5`), without
/// float formatting (which would cost the binary several KiB for this alone).
fn shown_seconds(ms: u64) -> String {
    let text = format!("{}.{:03}", ms / 1000, ms % 1000);
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Largest `--max-message-size` and `--max-backlog`: 1 GiB.
const MAX_BYTES: usize = 1 << 30;
/// Largest `--max-message-size` with `--redis`: 1 MiB, well inside Redis's
/// default pub/sub output buffer limits and the backplane's 8 MiB queue.
pub const MAX_MESSAGE_WITH_REDIS: usize = 1 << 20;
/// Smallest `--max-backlog`: what one loop turn queues for a reader counts
/// against it, so it must hold a burst of ordinary chats.
const MIN_BACKLOG: usize = 16 << 10;
/// Largest `--max-conns`: far more than any open-file limit, and keys fit in 32 bits.
pub const MAX_CONNS: usize = 1 << 24;

impl Config {
    /// Parses and checks the flags. `Err` is one line for stderr (exit
    /// status 2); `--help` and `--version` print and exit here.
    pub fn from_args<I, T>(args: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let config = match Self::try_parse_from(args) {
            Ok(config) => config,
            Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
                e.exit()
            }
            Err(e) => {
                let text = e.render().to_string();
                let line = text.lines().next().unwrap_or_default();
                return Err(line.strip_prefix("error: ").unwrap_or(line).to_string());
            }
        };
        if let Some(url) = &config.redis {
            check_redis_url(url)?;
            if config.max_message_size > MAX_MESSAGE_WITH_REDIS {
                // One chat goes to every subscriber's output buffer at once,
                // and Redis cuts a subscriber off past 32 MiB (or 8 MiB for
                // 60 s) by default: a larger chat would cut every instance off.
                return Err(format!(
                    "--max-message-size may be at most {MAX_MESSAGE_WITH_REDIS} with --redis"
                ));
            }
        }
        if let Some(path) = &config.redis_ca
            && let Err(e) = std::fs::read(path)
        {
            return Err(format!("--redis-ca {}: {e}", path.display()));
        }
        if config.admin_token_file.is_some() && config.private_address.is_none() {
            return Err(
                "--admin-token-file needs --private-address: the admin API is served on the \
                 private listener only"
                    .into(),
            );
        }
        if config.pong_timeout_ms <= config.ping_interval_ms {
            return Err(format!(
                "--pong-timeout ({} s) must be more than --ping-interval ({} s)",
                shown_seconds(config.pong_timeout_ms),
                shown_seconds(config.ping_interval_ms)
            ));
        }
        Ok(config)
    }
}

/// Whether `--redis` names a Redis this build can reach (it is not contacted here).
fn check_redis_url(url: &str) -> Result<(), String> {
    #[cfg(feature = "redis")]
    return match redis::parse_redis_url(url) {
        Some(parsed) if matches!(parsed.scheme(), "redis" | "rediss") => Ok(()),
        _ => Err(format!(
            "--redis {}: not a redis:// or rediss:// URL",
            redacted(url)
        )),
    };
    #[cfg(not(feature = "redis"))]
    {
        let _ = url;
        Err(
            "--redis needs a build with Redis support: cargo build --release --features redis"
                .into(),
        )
    }
}

/// `url` with any password replaced by `***`, for messages: a Redis URL
/// with its password is never printed.
pub fn redacted(url: &str) -> String {
    let scheme = ["redis://", "rediss://"].into_iter().find(|scheme| {
        url.get(..scheme.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
    });
    let Some(scheme) = scheme else {
        // A mistyped scheme may still hold a password anywhere.
        return "(URL not shown)".into();
    };
    let (scheme, rest) = url.split_at(scheme.len());
    // A password may hold any character, '/', '?', '#' and '@' included, so
    // everything up to the last '@' is taken for userinfo.
    let (hidden, after) = match rest.rsplit_once('@') {
        // A user name stays; a password, or userinfo that may be one, does not.
        Some((userinfo, after)) => match userinfo.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), after),
            None => ("***@".into(), after),
        },
        None => (String::new(), rest),
    };
    // A query may carry a password too (`?password=`).
    let after = match after.split_once('?') {
        Some((before, _)) => format!("{before}?***"),
        None => after.into(),
    };
    format!("{scheme}{hidden}{after}")
}

/// A whole number from `min` to `max`.
fn in_range<T: TryFrom<usize>>(
    min: usize,
    max: usize,
) -> impl Fn(&str) -> Result<T, String> + Clone {
    move |text| {
        text.parse::<usize>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
    }
}

/// Seconds, fractions allowed, from `min_ms` to `max_ms` (`range` says
/// them as text), kept as milliseconds.
fn seconds(text: &str, min_ms: u64, max_ms: u64, range: &str) -> Result<u64, String> {
    match parse_ms(text) {
        Some((ms, _)) if (min_ms..=max_ms).contains(&ms) => Ok(ms),
        _ => Err(format!("must be a number of seconds from {range}")),
    }
}

/// Seconds written in decimal (`30`, `0.5`, `.25`, `+2`) as milliseconds,
/// rounded to the nearest (a half up), and whether they are more than zero;
/// `None` for anything else (a sign, an exponent, `inf`, words). Exact
/// decimal arithmetic: parsing a float would bring its tables into the
/// binary (about 14 KB) for this alone.
fn parse_ms(text: &str) -> Option<(u64, bool)> {
    let text = text.strip_prefix('+').unwrap_or(text);
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    let digits = whole.bytes().chain(fraction.bytes());
    if (whole.is_empty() && fraction.is_empty()) || !digits.clone().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole_ms = match whole {
        "" => 0,
        digits => digits.parse::<u64>().ok()?.checked_mul(1000)?,
    };
    let place = |i: usize| {
        fraction
            .as_bytes()
            .get(i)
            .map_or(0, |d| u64::from(d - b'0'))
    };
    let fraction_ms = place(0) * 100 + place(1) * 10 + place(2) + u64::from(place(3) >= 5);
    let above_zero = digits.clone().any(|b| b != b'0');
    Some((whole_ms.checked_add(fraction_ms)?, above_zero))
}

/// `--duration`: 0 (no end), or 0.001 to 10^9 seconds.
fn duration(text: &str) -> Result<u64, String> {
    match seconds(text, 0, 1_000_000_000_000, "0 to 1000000000")? {
        // A time too short to count must not turn into "no end".
        0 if parse_ms(text).is_some_and(|(_, above_zero)| above_zero) => {
            Err("must be 0 (no end) or from 0.001 to 1000000000 seconds".into())
        }
        ms => Ok(ms),
    }
}

/// Keepalive and handshake times: 10 ms to a day.
fn timeout(text: &str) -> Result<u64, String> {
    seconds(text, 10, 86_400_000, "0.01 to 86400")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::parse_from(["websocket-public-chat"]);
        assert_eq!(
            (c.host.as_str(), c.port, c.duration_ms),
            ("0.0.0.0", 8080, 0)
        );
        assert_eq!(
            (
                c.ping_interval_ms,
                c.pong_timeout_ms,
                c.handshake_timeout_ms
            ),
            (30_000, 60_000, 10_000)
        );
        assert_eq!(
            (c.max_message_size, c.max_backlog, c.max_conns, c.echo),
            (65536, 1 << 20, None, false)
        );
        assert_eq!((c.max_conns_per_ip, c.allowed_origins.len()), (0, 0));
        let c = Config::parse_from([
            "x",
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "http://b",
        ]);
        assert_eq!(c.allowed_origins, ["https://a.example", "http://b"]);
    }

    #[test]
    fn seconds_accept_fractions_and_refuse_nonsense() {
        let c = Config::parse_from([
            "x",
            "--port",
            "0",
            "--duration",
            "1.5",
            "--ping-interval",
            "0.2",
        ]);
        assert_eq!((c.duration_ms, c.ping_interval_ms), (1_500, 200));
        assert!(Config::try_parse_from(["x", "--ping-interval", "0"]).is_err());
        assert!(Config::try_parse_from(["x", "--duration", "-1"]).is_err());
        assert!(Config::try_parse_from(["x", "--duration", "soon"]).is_err());
        for (text, ms) in [
            ("30", Some((30_000, true))),
            ("0.5", Some((500, true))),
            (".25", Some((250, true))),
            ("+2.", Some((2_000, true))),
            ("0.0004", Some((0, true))),
            ("0.0005", Some((1, true))),
            ("1.2345", Some((1_235, true))),
            ("0.000", Some((0, false))),
        ] {
            assert_eq!(parse_ms(text), ms, "{text}");
        }
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "inf",
            "NaN",
            "1.2.3",
            "99999999999999999999",
            " 1",
        ] {
            assert_eq!(parse_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn passwords_in_redis_urls_are_never_shown() {
        for (url, shown) in [
            ("redis://:sekret@host:6379/0", "redis://:***@host:6379/0"),
            ("rediss://user:sekret@host/", "rediss://user:***@host/"),
            ("redis://sekret@host", "redis://***@host"),
            ("redis://host:6379/", "redis://host:6379/"),
            ("redis://:p@ss:w@rd@host/#x", "redis://:***@host/#x"),
            ("redis://:pa/ss@127.0.0.1:1/", "redis://:***@127.0.0.1:1/"),
            ("redis://:ab#cd@h", "redis://:***@h"),
            ("redis://:ab?cd@h", "redis://:***@h"),
            ("REDIS://:sekret@h", "REDIS://:***@h"),
            ("redis://h/0?password=sekret", "redis://h/0?***"),
            ("redis:/:sekret@127.0.0.1:1/", "(URL not shown)"),
            ("redis:sekret@127.0.0.1", "(URL not shown)"),
            ("unix:///tmp/x.sock?pass=sekret", "(URL not shown)"),
            ("not a url", "(URL not shown)"),
        ] {
            assert_eq!(redacted(url), shown);
        }
    }

    #[test]
    fn nonsense_is_refused_in_one_line() {
        for args in [
            &["--max-backlog", "0"][..],
            &["--max-backlog", "16383"],
            &["--max-message-size", "0"],
            &["--max-message-size", "2000000000"],
            &["--max-conns", "0"],
            &["--max-conns", "99999999999"],
            &["--ping-interval", "0.001"],
            &["--ping-interval", "30", "--pong-timeout", "30"],
            &["--ping-interval", "70"],
            &["--handshake-timeout", "1e6"],
            &["--duration", "0.0004"],
            &["--port", "65536"],
            &["--max-conns-per-ip", "-1"],
        ] {
            let all = std::iter::once("x").chain(args.iter().copied());
            let error = Config::from_args(all).expect_err(&format!("{args:?} accepted"));
            assert!(!error.contains('\n') && !error.is_empty(), "{error:?}");
        }
        let ok = Config::from_args(["x", "--max-backlog", "16384", "--max-conns", "1"]).unwrap();
        assert_eq!((ok.max_backlog, ok.max_conns), (16384, Some(1)));
        #[cfg(not(feature = "redis"))]
        assert!(Config::from_args(["x", "--redis", "redis://127.0.0.1/"]).is_err());
    }
}
