//! Command-line flags. Times are given in seconds (fractions allowed) and
//! kept in milliseconds.

use clap::Parser;

/// A public chat room over WebSocket (one room, "public", at /ws).
#[derive(Parser, Debug, Clone)]
#[command(name = "websocket-public-chat", version)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    pub host: String,

    /// Port to listen on (0 picks a free one; the chosen address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Stop after this many seconds; 0 runs until SIGINT/SIGTERM.
    #[arg(long = "duration", value_name = "SECS", default_value = "0", value_parser = seconds_or_zero)]
    pub duration_ms: u64,

    /// Ping a client after this many seconds without hearing from it.
    #[arg(long = "ping-interval", value_name = "SECS", default_value = "30", value_parser = seconds)]
    pub ping_interval_ms: u64,

    /// Close a client after this many seconds without hearing from it.
    #[arg(long = "pong-timeout", value_name = "SECS", default_value = "60", value_parser = seconds)]
    pub pong_timeout_ms: u64,

    /// Close a connection whose HTTP upgrade is not complete after this many seconds.
    #[arg(long = "handshake-timeout", value_name = "SECS", default_value = "10", value_parser = seconds)]
    pub handshake_timeout_ms: u64,

    /// Largest message accepted, in bytes (larger: close 1009).
    #[arg(long, value_name = "BYTES", default_value_t = 65536)]
    pub max_message_size: usize,

    /// Unsent bytes a connection may have queued before it counts as a slow consumer.
    #[arg(long, value_name = "BYTES", default_value_t = 1 << 20)]
    pub max_backlog: usize,

    /// Most simultaneous connections [default: what the open-file limit allows].
    #[arg(long, value_name = "N")]
    pub max_conns: Option<usize>,

    /// Most simultaneous connections from one IP address (more get 429); 0 = no limit.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_conns_per_ip: u32,

    /// Accept browser upgrades only from this Origin, e.g. https://chat.example.com
    /// (repeatable; others get 403; requests without an Origin header are not browsers and pass).
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origins: Vec<String>,

    /// Conformance mode: echo every message on /ws instead of the chat protocol.
    #[arg(long)]
    pub echo: bool,

    /// Share the room with other instances through Redis pub/sub,
    /// e.g. redis://127.0.0.1:6379/0 (needs a build with `--features redis`).
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,

    /// The Redis channel the instances share.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "websocket-public-chat:public"
    )]
    pub redis_channel: String,
}

fn seconds_or_zero(text: &str) -> Result<u64, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("`{text}` is not a number of seconds"))?;
    if !(0.0..=1e9).contains(&secs) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok((secs * 1000.0).round() as u64)
}

fn seconds(text: &str) -> Result<u64, String> {
    match seconds_or_zero(text)? {
        0 => Err("must be at least 0.001".into()),
        ms => Ok(ms),
    }
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
    }
}
