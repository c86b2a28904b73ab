//! Counters for `/stats` and the statistics block printed at exit.
//!
//! Every refusal and close has its own counter, named for what happened.

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
    pub http_bad_request: u64,
    pub http_not_found: u64,
    pub http_method_not_allowed: u64,
    pub http_upgrade_required: u64,
    pub http_forbidden_origin: u64,
    pub http_head_too_large: u64,
    pub refused_max_conns: u64,
    pub refused_per_ip: u64,
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
    /// Subscriptions that failed after being up (Redis gone, or it cut us off).
    pub subscriptions_lost: u64,
    /// History reads for joins, and those that failed.
    pub history_reads: u64,
    pub history_read_failures: u64,
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

    /// The block printed at exit, in the format the compared servers print, then our own lines.
    ///
    /// As those servers define it, processing time is the time the server ran,
    /// average latency is processing time / total messages, and throughput is
    /// total messages / processing time.
    pub fn summary(&self, processing_secs: f64) -> String {
        let total = self.chats_relayed;
        let per_message_ms = if total == 0 {
            0.0
        } else {
            processing_secs * 1000.0 / total as f64
        };
        let throughput = if processing_secs > 0.0 {
            total as f64 / processing_secs
        } else {
            0.0
        };
        let offered = total + self.rate_limited;
        let drop_rate = if offered == 0 {
            0.0
        } else {
            100.0 * self.rate_limited as f64 / offered as f64
        };
        let protocol_errors =
            self.closed_protocol_error + self.closed_invalid_utf8 + self.closed_message_too_big;
        format!(
            "--- Statistics ---\n\
             Total messages: {total}\n\
             Processing time: {processing_secs:.3}s\n\
             Average latency: {per_message_ms:.3}ms\n\
             Throughput: {throughput:.2} messages/sec\n\
             Total connections: {}\n\
             Message drop rate: {drop_rate:.2}%\n\
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
    fn summary_keeps_the_compared_servers_format() {
        let c = Counters {
            chats_relayed: 300,
            rate_limited: 100,
            connections_total: 7,
            ..Counters::default()
        };
        let s = c.summary(60.0);
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
