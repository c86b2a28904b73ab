//! Counters for `/stats`, `/metrics` and the statistics block printed at exit.
//!
//! Every refusal and close has its own counter, named for what happened.
//! `/stats` and `/metrics` are two renderings of the same figures: the JSON
//! object, and Prometheus's text format (`to_prometheus`).

use serde::Serialize;

use crate::chat::protocol::Ignored;
use crate::http::Reject;

/// Everything the server counts since it started.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    pub connections_total: u64,
    pub peak_connections: u64,
    pub websocket_upgrades: u64,
    pub joins: u64,
    /// Plain-text clients joined (upgrades on `/`).
    pub plain_joins: u64,
    /// Chats accepted for relay ("Total messages").
    pub chats_relayed: u64,
    /// Relayed chats queued to recipients.
    pub deliveries: u64,
    /// Presence messages (the online count) sent to members that asked.
    pub presence_sent: u64,
    pub rate_limited: u64,
    pub slow_consumer_closes: u64,
    pub ignored_malformed: u64,
    pub ignored_unknown_type: u64,
    pub ignored_wrong_room: u64,
    pub ignored_invalid_name: u64,
    pub ignored_not_joined: u64,
    pub ignored_already_joined: u64,
    pub ignored_binary: u64,
    pub closed_protocol_error: u64,
    pub closed_invalid_utf8: u64,
    pub closed_message_too_big: u64,
    pub closed_by_client: u64,
    pub closed_by_leave: u64,
    pub closed_by_shutdown: u64,
    /// Connections closed by a kick (4001) or a ban (4003).
    pub closed_by_kick: u64,
    pub closed_by_ban: u64,
    pub dropped_without_close: u64,
    /// Our close frame was not answered within 2 s.
    pub close_timeouts: u64,
    /// A drained connection (after an HTTP answer or a protocol error) that
    /// never sent its FIN within 2 s.
    pub linger_timeouts: u64,
    pub handshake_timeouts: u64,
    pub keepalive_timeouts: u64,
    pub http_page: u64,
    pub http_health: u64,
    pub http_stats: u64,
    pub http_metrics: u64,
    pub http_bad_request: u64,
    pub http_not_found: u64,
    pub http_method_not_allowed: u64,
    pub http_upgrade_required: u64,
    pub http_forbidden_origin: u64,
    pub http_head_too_large: u64,
    pub refused_max_conns: u64,
    pub refused_per_ip: u64,
    /// A PROXY protocol header from a peer not in `--trusted-proxy`, or a bad one.
    pub refused_proxy_header: u64,
    /// Times reading from a client stopped because our answers to it piled up.
    pub read_pauses: u64,
    pub accept_pauses: u64,
    /// Chats from Redis (the channel, the stream) that were not valid, dropped.
    pub backplane_rejected: u64,
    /// Chats from Redis with an id already relayed here, dropped.
    pub backplane_duplicates: u64,
    /// Joins that asked for `history` or `since`, and the chats sent them.
    pub history_joins: u64,
    pub history_chats_sent: u64,
    /// Joins with `since` that got every chat they missed, or not.
    pub recoveries_complete: u64,
    pub recoveries_incomplete: u64,
    /// With Redis ordering the room: joins answered from its stream, and
    /// those answered from this instance's ring instead (the read failed,
    /// took over 3 s, or the order changed meanwhile).
    pub history_reads: u64,
    pub history_fallbacks: u64,
    /// Admin requests that presented the token, and those that did not (401).
    pub admin_requests: u64,
    pub admin_unauthorized: u64,
    /// Admin requests refused for a mistake (400, 404, 405, 409, 411, 413, 415).
    pub admin_refused: u64,
    /// Actions carried out here, asked here or by another instance through Redis.
    pub admin_kicks: u64,
    pub admin_bans: u64,
    pub admin_unbans: u64,
    pub admin_mutes: u64,
    pub admin_unmutes: u64,
    pub admin_announces: u64,
    /// Actions from other instances (through Redis) among those.
    pub admin_from_cluster: u64,
    /// Requests (pages and upgrades) refused with 403 for a ban.
    pub refused_banned: u64,
    /// Chats from muted members, dropped.
    pub muted_dropped: u64,
    /// Notices queued to members.
    pub notices_sent: u64,
}

/// The Redis backplane's link state and counters (with `--redis`).
#[derive(Debug, Serialize)]
pub struct BackplaneStats {
    /// "up" when both the publishing and the subscribing connection are.
    pub state: &'static str,
    /// The connection chats go out on: "up" or "down".
    pub publisher: &'static str,
    /// The subscription chats come in on: "up" or "down".
    pub subscriber: &'static str,
    pub instance_id: String,
    /// Chats published (appended to the stream and the channel).
    pub published: u64,
    /// Chats read from the stream and handed to the loop (the engine may
    /// still reject them: `backplane_rejected`).
    pub received: u64,
    /// Dropped on the way out: the queue to the publisher was full.
    pub lost_outgoing: u64,
    /// Could not be published (Redis down, even after one retry on a fresh
    /// connection): relayed here only.
    pub unpublished: u64,
    /// Channel messages or stream entries not in this server's format.
    pub malformed: u64,
    /// Larger than any chat this server would accept.
    pub oversized: u64,
    /// Channel messages whose id or epoch the stream and Redis do not back.
    pub forged: u64,
    /// Ids gone from the stream before they could be read (away too long).
    pub trimmed: u64,
    /// Admin commands sent to the other instances, and those Redis did not take.
    pub admin_published: u64,
    pub admin_unpublished: u64,
    /// Subscriptions that failed after being up (Redis gone, or it cut us off).
    pub subscriptions_lost: u64,
    /// History reads for joins, and those that failed.
    pub history_reads: u64,
    pub history_read_failures: u64,
    /// Reads not made: asked over 3 s before (the join was answered from the ring).
    pub history_reads_skipped: u64,
    /// Connections to Redis open now (publisher, subscriber, reader).
    pub connections: usize,
}

/// The process's own figures: CPU and memory read from `/proc` by the
/// driver; open descriptors counted, not listed (a listing costs time in
/// proportion to the connections, on the loop).
#[derive(Debug, Default)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub start_time_seconds: f64,
    /// The driver gives the server's own descriptors (stdio, poll,
    /// listeners, signal pipe, waker: counted once at start); the engine
    /// adds one per connection and per Redis connection.
    pub open_fds: u64,
}

/// What each counter of `Counters` means, for `/metrics`'s `# HELP`: one
/// line each, the field's name then its help (one string: no table of
/// pointers to relocate in the binary).
const HELP: &str = "\
connections_total TCP connections accepted\n\
peak_connections Most connections open at once\n\
websocket_upgrades WebSocket handshakes completed\n\
joins Joins to the room\n\
plain_joins Plain-text clients joined (upgrades on /)\n\
chats_relayed Chats accepted and relayed\n\
deliveries Relayed chats queued to recipients\n\
presence_sent Presence messages sent\n\
rate_limited Chats dropped by the rate limit\n\
slow_consumer_closes Connections closed as slow consumers (1008)\n\
ignored_malformed Messages ignored: malformed\n\
ignored_unknown_type Messages ignored: unknown type\n\
ignored_wrong_room Messages ignored: a room other than public\n\
ignored_invalid_name Joins or nicks ignored: invalid name\n\
ignored_not_joined Messages ignored: chat before join\n\
ignored_already_joined Messages ignored: a second join\n\
ignored_binary Binary messages ignored\n\
closed_protocol_error Connections closed for a protocol error (1002)\n\
closed_invalid_utf8 Connections closed for invalid UTF-8 (1007)\n\
closed_message_too_big Connections closed for a message too big (1009)\n\
closed_by_client Connections the client closed\n\
closed_by_leave Connections closed after leave\n\
closed_by_shutdown Connections closed by shutdown (1001)\n\
closed_by_kick Connections closed by a kick (4001)\n\
closed_by_ban Connections closed by a ban (4003)\n\
admin_requests Admin requests with the token\n\
admin_unauthorized Admin requests without the token (401)\n\
admin_refused Admin requests refused for a mistake\n\
admin_kicks Kicks carried out\n\
admin_bans Bans carried out\n\
admin_unbans Bans lifted\n\
admin_mutes Mutes carried out\n\
admin_unmutes Mutes lifted\n\
admin_announces Notices announced\n\
admin_from_cluster Admin actions from other instances through Redis\n\
refused_banned Pages and upgrades refused with 403 for a ban\n\
muted_dropped Chats from muted members dropped\n\
notices_sent Notices queued to members\n\
dropped_without_close Connections that ended without a close frame\n\
read_pauses Times reading a client paused until its replies drained\n\
accept_pauses Times accepting paused for want of descriptors or memory\n\
backplane_rejected Chats from Redis that were not valid, dropped\n\
backplane_duplicates Chats from Redis with an id already relayed, dropped\n\
history_joins Joins that asked for history or since\n\
history_chats_sent Chats replayed to joins\n\
recoveries_complete Recoveries (since) that got every missed chat\n\
recoveries_incomplete Recoveries (since) with a gap\n\
history_reads Joins answered from the Redis stream\n\
history_fallbacks Joins answered from the ring instead of the Redis stream\n\
close_timeouts Our close frames unanswered within 2 s\n\
linger_timeouts Connections with no FIN 2 s after our last byte\n\
handshake_timeouts Connections that sent no request head in time\n\
keepalive_timeouts Connections closed as silent (1001)\n\
http_page Page requests (GET /)\n\
http_health Health requests\n\
http_stats Stats requests\n\
http_metrics Metrics requests\n\
http_bad_request Requests refused with 400\n\
http_not_found Requests refused with 404\n\
http_method_not_allowed Requests refused with 405\n\
http_forbidden_origin Upgrades refused with 403 (Origin)\n\
http_upgrade_required Upgrades refused with 426 (version)\n\
http_head_too_large Requests refused with 431\n\
refused_max_conns Connections refused over --max-conns\n\
refused_per_ip Connections refused over --max-conns-per-ip\n\
refused_proxy_header Connections refused: a PROXY header from an untrusted peer, or a bad one";

/// The help of counter `field` (its name if it has none).
fn help(field: &str) -> &str {
    HELP.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(' '))
        .unwrap_or(field)
}

/// `/metrics` names counters `websocket_public_chat_NAME_total`; these few are gauges.
const GAUGES: &[&str] = &["peak_connections"];

/// Every `/metrics` name starts so.
const P: &str = "websocket_public_chat_";

/// Writes one metric: `# HELP`, `# TYPE` and its sample (`name` after
/// `prefix`; `labels` is `{k="v",...}` or empty).
fn metric(
    out: &mut String,
    prefix: &str,
    name: &str,
    kind: &str,
    help: &str,
    labels: &str,
    value: &str,
) {
    for part in [
        "# HELP ",
        prefix,
        name,
        " ",
        help,
        "\n# TYPE ",
        prefix,
        name,
        " ",
        kind,
        "\n",
        prefix,
        name,
        labels,
        " ",
        value,
        "\n",
    ] {
        out.push_str(part);
    }
}

/// `numerator / denominator` with `places` decimals, rounded (0 when the
/// denominator is): integer arithmetic, so the binary carries no float
/// formatting for the statistics block alone.
fn fixed(numerator: u128, denominator: u128, places: u32) -> String {
    let scale = 10u128.pow(places);
    let value = match denominator {
        0 => 0,
        d => (numerator * scale * 2 + d) / (d * 2),
    };
    let places = places as usize;
    format!("{}.{:0places$}", value / scale, value % scale)
}

/// A number as JSON writes it (the formatter `/stats` already uses).
fn number(x: f64) -> String {
    serde_json::to_string(&x).unwrap_or_else(|_| "0".into())
}

/// A Prometheus label value: backslash, double quote and line feed escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The figures of the moment that `/stats` shows beside the counters.
pub struct Live<'a> {
    pub connections: usize,
    pub joined: usize,
    pub uptime_seconds: f64,
    pub epoch: &'a str,
    pub order: Option<&'static str>,
}

/// What `/stats` returns: live figures plus every counter.
#[derive(Serialize)]
struct Snapshot<'a> {
    active_connections: usize,
    joined: usize,
    uptime_seconds: f64,
    ignored_total: u64,
    /// The epoch the room's ids belong to now.
    epoch: &'a str,
    /// With `--redis`: who orders the room now, "redis" or "local".
    #[serde(skip_serializing_if = "Option::is_none")]
    order: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    backplane: Option<BackplaneStats>,
    #[serde(flatten)]
    counters: &'a Counters,
}

impl Counters {
    /// Counts an ignored text message.
    pub fn ignored(&mut self, why: Ignored) {
        *match why {
            Ignored::Malformed => &mut self.ignored_malformed,
            Ignored::UnknownType => &mut self.ignored_unknown_type,
            Ignored::WrongRoom => &mut self.ignored_wrong_room,
            Ignored::InvalidName => &mut self.ignored_invalid_name,
            Ignored::NotJoined => &mut self.ignored_not_joined,
            Ignored::AlreadyJoined => &mut self.ignored_already_joined,
        } += 1;
    }

    /// Counts a refused HTTP request, by status.
    pub fn rejected(&mut self, reject: Reject) {
        *match reject {
            Reject::BadRequest => &mut self.http_bad_request,
            Reject::NotFound => &mut self.http_not_found,
            Reject::MethodNotAllowed => &mut self.http_method_not_allowed,
            Reject::UpgradeRequired => &mut self.http_upgrade_required,
            Reject::ForbiddenOrigin => &mut self.http_forbidden_origin,
            Reject::HeadTooLarge => &mut self.http_head_too_large,
            Reject::Unavailable => &mut self.refused_max_conns,
            Reject::TooManyFromAddress => &mut self.refused_per_ip,
        } += 1;
    }

    fn ignored_total(&self) -> u64 {
        self.ignored_malformed
            + self.ignored_unknown_type
            + self.ignored_wrong_room
            + self.ignored_invalid_name
            + self.ignored_not_joined
            + self.ignored_already_joined
            + self.ignored_binary
    }

    /// The `/stats` body.
    pub fn to_json(&self, live: Live<'_>, backplane: Option<BackplaneStats>) -> Vec<u8> {
        let snapshot = Snapshot {
            active_connections: live.connections,
            joined: live.joined,
            uptime_seconds: live.uptime_seconds,
            ignored_total: self.ignored_total(),
            epoch: live.epoch,
            order: live.order,
            backplane,
            counters: self,
        };
        // Plain numbers and strings: serializing cannot fail.
        serde_json::to_vec(&snapshot).unwrap_or_default()
    }

    /// The `/metrics` body: Prometheus text format 0.0.4. Every counter of
    /// `/stats` (`websocket_public_chat_NAME_total`), the live figures as
    /// gauges, the backplane's, and the process's (`process_*`).
    pub fn to_prometheus(
        &self,
        live: Live<'_>,
        backplane: Option<BackplaneStats>,
        process: &ProcessStats,
    ) -> Vec<u8> {
        let mut out = String::with_capacity(8 << 10);
        let gauge = |out: &mut String, name: &str, help: &str, value: &str| {
            metric(out, P, name, "gauge", help, "", value);
        };
        gauge(
            &mut out,
            "open_connections",
            "Connections open now",
            &live.connections.to_string(),
        );
        gauge(
            &mut out,
            "joined",
            "Members of the room now",
            &live.joined.to_string(),
        );
        gauge(
            &mut out,
            "uptime_seconds",
            "Seconds since the server started",
            &number(live.uptime_seconds),
        );
        let room = format!(
            "{{epoch=\"{}\",order=\"{}\"}}",
            label(live.epoch),
            live.order.unwrap_or("local")
        );
        metric(
            &mut out,
            P,
            "room_info",
            "gauge",
            "The room's epoch and who orders it",
            &room,
            "1",
        );
        metric(
            &mut out,
            P,
            "ignored_total",
            "counter",
            "Messages ignored, for any reason (the sum of the ignored_* counters)",
            "",
            &self.ignored_total().to_string(),
        );
        // The counters as `/stats` writes them: a flat object of whole numbers.
        let json = serde_json::to_string(self).unwrap_or_default();
        for pair in json.trim_matches(|c| c == '{' || c == '}').split(',') {
            let Some((field, value)) = pair.split_once(':') else {
                continue;
            };
            let field = field.trim_matches('"');
            let help = help(field);
            match GAUGES.contains(&field) {
                true => gauge(&mut out, field, help, value),
                false => {
                    let name = field.strip_suffix("_total").unwrap_or(field);
                    metric(
                        &mut out,
                        P,
                        &format!("{name}_total"),
                        "counter",
                        help,
                        "",
                        value,
                    );
                }
            }
        }
        if let Some(b) = backplane {
            let up = |state: &str| if state == "up" { "1" } else { "0" };
            let instance = format!("{{instance_id=\"{}\"}}", label(&b.instance_id));
            metric(
                &mut out,
                P,
                "backplane_info",
                "gauge",
                "This instance's id on the Redis backplane",
                &instance,
                "1",
            );
            gauge(
                &mut out,
                "backplane_up",
                "Both Redis connections are up",
                up(b.state),
            );
            gauge(
                &mut out,
                "backplane_publisher_up",
                "The publishing connection is up",
                up(b.publisher),
            );
            gauge(
                &mut out,
                "backplane_subscriber_up",
                "The subscription is up",
                up(b.subscriber),
            );
            gauge(
                &mut out,
                "backplane_connections",
                "Connections to Redis open now",
                &b.connections.to_string(),
            );
            for (name, value, help) in [
                ("published", b.published, "Chats published to Redis"),
                ("received", b.received, "Chats read from the stream"),
                (
                    "lost_outgoing",
                    b.lost_outgoing,
                    "Chats dropped: the publish queue was full",
                ),
                (
                    "unpublished",
                    b.unpublished,
                    "Chats Redis did not take, relayed here only",
                ),
                (
                    "malformed",
                    b.malformed,
                    "Entries or messages not in this server's format",
                ),
                ("oversized", b.oversized, "Entries larger than any chat"),
                (
                    "admin_published",
                    b.admin_published,
                    "Admin commands sent to the other instances",
                ),
                (
                    "admin_unpublished",
                    b.admin_unpublished,
                    "Admin commands Redis did not take (done here only)",
                ),
                (
                    "forged",
                    b.forged,
                    "Channel messages the stream does not back",
                ),
                (
                    "trimmed",
                    b.trimmed,
                    "Ids gone from the stream before they were read",
                ),
                (
                    "subscriptions_lost",
                    b.subscriptions_lost,
                    "Subscriptions lost after being up",
                ),
                (
                    "history_reads",
                    b.history_reads,
                    "History reads from the stream",
                ),
                (
                    "history_read_failures",
                    b.history_read_failures,
                    "History reads that failed",
                ),
                (
                    "history_reads_skipped",
                    b.history_reads_skipped,
                    "History reads not made: asked over 3 s before",
                ),
            ] {
                let name = format!("backplane_{name}_total");
                metric(&mut out, P, &name, "counter", help, "", &value.to_string());
            }
        }
        for (name, kind, help, value) in [
            (
                "cpu_seconds_total",
                "counter",
                "User and system CPU time spent in seconds",
                number(process.cpu_seconds),
            ),
            (
                "resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes",
                process.resident_bytes.to_string(),
            ),
            (
                "start_time_seconds",
                "gauge",
                "Start time of the process since unix epoch in seconds",
                number(process.start_time_seconds),
            ),
            (
                "open_fds",
                "gauge",
                "Number of open file descriptors",
                process.open_fds.to_string(),
            ),
        ] {
            metric(&mut out, "process_", name, kind, help, "", &value);
        }
        out.into_bytes()
    }

    /// The block printed at exit, in the format the compared servers print, then our own lines.
    ///
    /// As those servers define it, processing time is the time the server ran,
    /// average latency is processing time / total messages, and throughput is
    /// total messages / processing time.
    pub fn summary(&self, processing_ms: u64) -> String {
        let total = self.chats_relayed;
        let processing_secs = fixed(u128::from(processing_ms), 1000, 3);
        let per_message_ms = fixed(u128::from(processing_ms), u128::from(total), 3);
        let throughput = fixed(u128::from(total) * 1000, u128::from(processing_ms), 2);
        let offered = total + self.rate_limited;
        let drop_rate = fixed(u128::from(self.rate_limited) * 100, u128::from(offered), 2);
        let protocol_errors =
            self.closed_protocol_error + self.closed_invalid_utf8 + self.closed_message_too_big;
        format!(
            "--- Statistics ---\n\
             Total messages: {total}\n\
             Processing time: {processing_secs}s\n\
             Average latency: {per_message_ms}ms\n\
             Throughput: {throughput} messages/sec\n\
             Total connections: {}\n\
             Message drop rate: {drop_rate}%\n\
             Deliveries: {}\n\
             Peak connections: {}\n\
             Rate-limited chats: {}\n\
             Slow-consumer closes: {}\n\
             Protocol errors: {protocol_errors}\n\
             Ignored messages: {}\n",
            self.connections_total,
            self.deliveries,
            self.peak_connections,
            self.rate_limited,
            self.slow_consumer_closes,
            self.ignored_total(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_help() {
        let Ok(serde_json::Value::Object(counters)) = serde_json::to_value(Counters::default())
        else {
            panic!("counters are an object");
        };
        for field in counters.keys() {
            assert_ne!(help(field), field, "no help for {field}");
        }
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn summary_keeps_the_compared_servers_format() {
        let c = Counters {
            chats_relayed: 300,
            rate_limited: 100,
            connections_total: 7,
            ..Counters::default()
        };
        let s = c.summary(60_000);
        let lines: Vec<&str> = s.lines().take(7).collect();
        assert_eq!(
            lines,
            [
                "--- Statistics ---",
                "Total messages: 300",
                "Processing time: 60.000s",
                "Average latency: 200.000ms",
                "Throughput: 5.00 messages/sec",
                "Total connections: 7",
                "Message drop rate: 25.00%",
            ]
        );
        assert_eq!(fixed(2, 3, 3), "0.667");
        assert_eq!(fixed(1, 0, 2), "0.00");
        assert_eq!(fixed(u128::from(u64::MAX), 1, 3).len(), 24);
    }

    #[test]
    fn json_has_live_figures_and_counters() {
        let mut c = Counters::default();
        c.ignored(Ignored::Malformed);
        c.closed_invalid_utf8 += 1;
        let live = Live {
            connections: 3,
            joined: 2,
            uptime_seconds: 1.5,
            epoch: "e",
            order: None,
        };
        let v: serde_json::Value = serde_json::from_slice(&c.to_json(live, None)).unwrap();
        assert_eq!(v["active_connections"], 3);
        assert_eq!(v["epoch"], "e");
        assert!(v.get("order").is_none());
        assert_eq!(v["joined"], 2);
        assert_eq!(v["ignored_malformed"], 1);
        assert_eq!(v["ignored_total"], 1);
        assert_eq!(v["closed_invalid_utf8"], 1);
    }
}
