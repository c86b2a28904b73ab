//! The client's side of the protocol, for `chat-client`: the `ws://` URL, the
//! opening request and the check of the server's answer (RFC 6455 §4.1), and
//! what a server message means to a person. Pure code, like the server's core.

use serde::Deserialize;

use crate::chat::unicode;
use crate::http::request::{MAX_HEAD, accept_key, has_token};

/// Where to connect, from a `ws://host[:port][/path]` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    /// Host name or address, without IPv6 brackets: what to resolve.
    pub host: String,
    pub port: u16,
    /// `host[:port]` as written: the `Host` header.
    pub authority: String,
    /// Path and query, `/` when absent.
    pub path: String,
}

/// Parses a `ws://` URL; the error says what is wrong with it.
pub fn parse_url(url: &str) -> Result<Url, &'static str> {
    let Some(rest) = url.strip_prefix("ws://") else {
        return Err(if url.starts_with("wss://") {
            "wss:// (TLS) is not supported: use ws://, with a TLS proxy in front if needed"
        } else {
            "the URL must start with ws://"
        });
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
            (host, after.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(port) => port.parse().map_err(|_| "the port is not a number")?,
        None => 80,
    };
    if host.is_empty() || authority.contains('@') {
        return Err("the URL has no usable host");
    }
    let path = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    Ok(Url {
        host: host.to_string(),
        port,
        authority: authority.to_string(),
        path,
    })
}

/// The opening request; `key` is 16 random bytes in base64.
pub fn opening_request(url: &Url, key: &str) -> Vec<u8> {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n",
        url.path, url.authority
    )
    .into_bytes()
}

/// Why the server's answer is not a WebSocket upgrade.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Any status but 101, with its reason phrase.
    Status(u16, String),
    /// A 101 that fails RFC 6455 §4.1's checks, or not HTTP at all.
    Invalid(&'static str),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Status(code, reason) => write!(f, "HTTP {code} {reason}"),
            Self::Invalid(why) => f.write_str(why),
        }
    }
}

/// Checks the answer at the start of `buf` against the `key` we sent.
/// `Ok(None)` while the head is incomplete, else its length in bytes.
pub fn check_response(buf: &[u8], key: &str) -> Result<Option<usize>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut res = httparse::Response::new(&mut headers);
    let head_len = match res.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        _ => return Err(Refusal::Invalid("the answer is not an HTTP response")),
    };
    let code = res.code.unwrap_or(0);
    if code != 101 {
        // The body's last line, when it says more than the status (why a ban refuses us, say).
        let phrase = res.reason.unwrap_or("");
        let said = std::str::from_utf8(&buf[head_len..])
            .ok()
            .and_then(|body| body.lines().rfind(|l| !l.trim().is_empty()))
            .filter(|l| l.trim() != format!("{code} {phrase}") && l.len() <= 200);
        let phrase = match said {
            Some(said) => format!("{phrase}: {}", said.trim()),
            None => phrase.to_string(),
        };
        return Err(Refusal::Status(code, phrase));
    }
    let header = |name: &str| {
        res.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
    };
    if !has_token(res.headers, "Upgrade", "websocket")
        || !has_token(res.headers, "Connection", "upgrade")
    {
        return Err(Refusal::Invalid("101 without Upgrade: websocket"));
    }
    if header("Sec-WebSocket-Accept") != Some(accept_key(key.as_bytes()).as_bytes()) {
        return Err(Refusal::Invalid("wrong Sec-WebSocket-Accept"));
    }
    Ok(Some(head_len))
}

/// A server message, as far as a person cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A chat; `sent_ms`: its `ts`, when that is a time in ms since 1970
    /// (what this client and the page put there).
    Chat {
        id: Option<u64>,
        user: String,
        text: String,
        sent_ms: Option<u64>,
    },
    /// The end of the history the join asked for: live chats follow. The
    /// room's epoch and newest id, and whether nothing asked for is missing.
    Joined {
        epoch: String,
        last: u64,
        recovered: bool,
    },
    /// The server's JSON keepalive; answer with a JSON pong.
    Ping,
    /// How many people are in the room.
    Presence(u64),
    /// A notice from the server's operator (no client can send one).
    Notice(String),
    /// Anything else (pongs, unknown types, malformed JSON).
    Other,
}

#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    user: Option<String>,
    text: Option<String>,
    online: Option<u64>,
    ts: Option<serde_json::Value>,
    id: Option<u64>,
    epoch: Option<String>,
    last: Option<u64>,
    recovered: Option<bool>,
}

/// Reads one text message from the server.
pub fn classify(text: &str) -> Incoming {
    let Ok(msg) = serde_json::from_str::<Wire>(text) else {
        return Incoming::Other;
    };
    match (msg.kind.as_str(), msg.user, msg.text, msg.online) {
        ("chat", Some(user), Some(text), _) => Incoming::Chat {
            id: msg.id,
            user,
            text,
            sent_ms: msg.ts.as_ref().and_then(serde_json::Value::as_u64),
        },
        ("joined", ..) => Incoming::Joined {
            epoch: msg.epoch.unwrap_or_default(),
            last: msg.last.unwrap_or(0),
            recovered: msg.recovered.unwrap_or(false),
        },
        ("ping", ..) => Incoming::Ping,
        ("presence", _, _, Some(online)) => Incoming::Presence(online),
        ("notice", _, Some(text), _) => Incoming::Notice(text),
        _ => Incoming::Other,
    }
}

/// The time a chat is shown at, in ms since 1970, or `None` (shown as
/// `--:--:--`). A live chat: when it arrived (`now`). A replayed one (the
/// history a join asked for): the sender's `ts`, when it is a time no
/// earlier than the chat printed before it and not in the future; anything
/// else a sender put there is not shown as a time, so printed times never
/// go backwards. `last` is the time printed last, kept up to date.
pub fn shown_time(live: bool, sent_ms: Option<u64>, now: u64, last: &mut u64) -> Option<u64> {
    let at = match live {
        true => Some(now),
        false => sent_ms.filter(|ts| (*last..=now).contains(ts)),
    }?;
    *last = (*last).max(at);
    Some(at)
}

/// `[HH:MM:SS] name: text` for a terminal (`[--:--:--]` without a time),
/// trailing padding trimmed and shown safely (`terminal`); in the name,
/// whatever the server's name rule refuses as invisible (a Hangul filler,
/// say) shows as `�` too.
pub fn chat_line(hms: Option<(u8, u8, u8)>, user: &str, text: &str) -> String {
    let time = match hms {
        Some((h, m, s)) => format!("{h:02}:{m:02}:{s:02}"),
        None => "--:--:--".into(),
    };
    let user: String = user
        .chars()
        .map(|c| match unicode::is_invisible_in_name(c) {
            true => '\u{FFFD}',
            false => c,
        })
        .collect();
    terminal(&format!("[{time}] {user}: {}", text.trim_end()))
}

/// The one sanitizer for what `chat-client` prints: anything that came from
/// the network (chats, close reasons, HTTP reason phrases) passes through
/// here, and every control or format character (escape sequences, bells, bidi
/// overrides, zero-width characters, line separators) becomes a visible `�`,
/// so a server or a peer can neither drive the terminal nor disguise text.
pub fn terminal(text: &str) -> String {
    unicode::shown(text)
}

/// The JSON of a chat, `ts` being the send time in ms since the Unix epoch.
pub fn chat_json(text: &str, ts: u64) -> String {
    serde_json::json!({"type": "chat", "text": text, "ts": ts}).to_string()
}

/// The JSON of a join: the last `history` chats, or (coming back) the
/// chats after id `since` of the room's epoch (`since` = (id, epoch)).
pub fn join_json(user: &str, history: u64, since: Option<(u64, &str)>) -> String {
    let mut join = serde_json::json!({"type": "join", "user": user, "history": history});
    if let Some((id, epoch)) = since {
        join["since"] = id.into();
        join["epoch"] = epoch.into();
    }
    join.to_string()
}

/// A jitter factor from 0.75 to 1.25 for `backoff`, from random bits.
pub fn jitter(random: u64) -> f64 {
    0.75 + (random % 1001) as f64 / 2000.0
}

/// How long to wait before reconnection attempt `retry` (from 0), as the
/// page does: 0.5 s, 1 s, 2 s ... up to 10 s, times `jitter` (0.75 to 1.25:
/// a restarted server is not hit by everyone at once).
pub fn backoff(retry: u32, jitter: f64) -> std::time::Duration {
    let ms = (500u64 << retry.min(5)).min(10_000);
    std::time::Duration::from_millis(ms).mul_f64(jitter.clamp(0.75, 1.25))
}

/// Whether a connection the server closed with `code` is worth opening
/// again: yes after a shutdown, a restart or an overload (1001, 1011-1014)
/// or a slow-consumer close (1008); not after a protocol error (trying
/// again would repeat it), a normal close or the application's codes.
pub fn worth_reconnecting(code: u16) -> bool {
    matches!(code, 1001 | 1006 | 1008 | 1011..=1014)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = parse_url("ws://127.0.0.1:8080/ws").unwrap();
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.authority.as_str(),
                u.path.as_str()
            ),
            ("127.0.0.1", 8080, "127.0.0.1:8080", "/ws")
        );
        let u = parse_url("ws://[::1]:9000/ws?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 9000, "/ws?x=1")
        );
        let u = parse_url("ws://chat.example").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("chat.example", 80, "/")
        );
        assert_eq!(parse_url("ws://h?q").unwrap().path, "/?q");
        for bad in [
            "http://x/ws",
            "wss://x/ws",
            "ws://",
            "ws://x:port/",
            "ws://[::1/",
            "ws://u@x/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_servers_answer_is_checked() {
        let url = parse_url("ws://127.0.0.1:1/ws").unwrap();
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let request = String::from_utf8(opening_request(&url, key)).unwrap();
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(request.as_bytes()).unwrap().is_complete());
        // Our own server's parser accepts it, and its answer passes our check.
        let parsed = crate::http::request::parse(request.as_bytes(), &crate::http::Origins::Any);
        let accept = match parsed.map(|r| r.map(|r| r.answer)) {
            Ok(Some(Ok(crate::http::Route::Upgrade { accept, .. }))) => accept,
            other => panic!("{other:?}"),
        };
        let answer = crate::http::response::switching_protocols(&accept);
        assert_eq!(check_response(&answer, key), Ok(Some(answer.len())));
        for cut in 0..answer.len() {
            assert_eq!(check_response(&answer[..cut], key), Ok(None));
        }
        let wrong = crate::http::response::switching_protocols("AAAAAAAAAAAAAAAAAAAAAAAAAAA=");
        assert_eq!(
            check_response(&wrong, key),
            Err(Refusal::Invalid("wrong Sec-WebSocket-Accept"))
        );
        let refused = crate::http::Reject::NotFound.response();
        assert_eq!(
            check_response(&refused, key),
            Err(Refusal::Status(404, "Not Found".into()))
        );
        let banned = crate::http::response::banned(9, "spam");
        assert_eq!(
            check_response(&banned, key),
            Err(Refusal::Status(
                403,
                "Forbidden: This address is banned from the chat for 9 more seconds: spam".into()
            ))
        );
        assert!(check_response(b"SSH-2.0-OpenSSH\r\n\r\n", key).is_err());
        // The answer printed in RFC 6455 §1.3, not one of ours.
        let rfc = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                    Connection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check_response(rfc, key), Ok(Some(rfc.len())));
    }

    #[test]
    fn printed_times_never_go_backwards() {
        let mut last = 0;
        // Replayed: the sender's ts while it is a time between the last and now.
        assert_eq!(
            shown_time(false, Some(1_000), 5_000, &mut last),
            Some(1_000)
        );
        assert_eq!(shown_time(false, Some(900), 5_000, &mut last), None);
        assert_eq!(shown_time(false, None, 5_000, &mut last), None);
        assert_eq!(shown_time(false, Some(9_000), 5_000, &mut last), None);
        assert_eq!(
            shown_time(false, Some(2_000), 5_000, &mut last),
            Some(2_000)
        );
        // Live: the time of arrival.
        assert_eq!(shown_time(true, Some(1), 6_000, &mut last), Some(6_000));
        assert_eq!(last, 6_000);
    }

    #[test]
    fn reconnection_backs_off_like_the_page() {
        let ms = |retry, jitter| backoff(retry, jitter).as_millis();
        assert_eq!(
            [ms(0, 1.0), ms(1, 1.0), ms(4, 1.0), ms(5, 1.0), ms(60, 1.0)],
            [500, 1000, 8000, 10_000, 10_000]
        );
        assert_eq!([ms(0, 0.0), ms(0, 9.0)], [375, 625]);
        assert!(worth_reconnecting(1001) && worth_reconnecting(1008) && worth_reconnecting(1012));
        assert!(
            !worth_reconnecting(1000) && !worth_reconnecting(1002) && !worth_reconnecting(4001)
        );
    }

    #[test]
    fn messages_and_lines() {
        let chat = r#"{"type":"chat","room":"public","user":"bob","text":"hi...   ","ts":1}"#;
        let Incoming::Chat {
            id: None,
            user,
            text,
            sent_ms,
        } = classify(chat)
        else {
            panic!()
        };
        assert_eq!(sent_ms, Some(1));
        assert_eq!(
            chat_line(Some((9, 5, 7)), &user, &text),
            "[09:05:07] bob: hi..."
        );
        assert_eq!(chat_line(None, "bob", "old"), "[--:--:--] bob: old");
        assert_eq!(
            chat_line(Some((23, 59, 0)), "eve", "\u{1b}[2Jgone\nline"),
            "[23:59:00] eve: \u{FFFD}[2Jgone\u{FFFD}line"
        );
        assert_eq!(
            chat_line(Some((1, 2, 3)), "\u{202E}nimda", "a\u{200B}b"),
            "[01:02:03] \u{FFFD}nimda: a\u{FFFD}b"
        );
        assert_eq!(terminal("close \x1b]0;t\x07"), "close \u{FFFD}]0;t\u{FFFD}");
        assert_eq!(
            chat_line(Some((1, 2, 3)), "alice\u{3164}", "a\u{FE0F}"),
            "[01:02:03] alice\u{FFFD}: a\u{FE0F}"
        );
        assert_eq!(classify(r#"{"type":"ping"}"#), Incoming::Ping);
        assert_eq!(
            classify(r#"{"type":"notice","room":"public","text":"hi"}"#),
            Incoming::Notice("hi".into())
        );
        assert_eq!(
            classify(r#"{"type":"presence","online":3}"#),
            Incoming::Presence(3)
        );
        assert_eq!(classify(r#"{"type":"pong","ts":1}"#), Incoming::Other);
        assert_eq!(classify("not json"), Incoming::Other);
        assert_eq!(
            classify(r#"{"type":"joined","room":"public","epoch":"e1","last":7,"recovered":true}"#),
            Incoming::Joined {
                epoch: "e1".into(),
                last: 7,
                recovered: true
            }
        );
        let again = join_json("bob", 0, Some((41, "e1")));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&again).unwrap(),
            serde_json::json!({"type": "join", "user": "bob", "history": 0, "since": 41, "epoch": "e1"})
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&chat_json("a\"b", 5)).unwrap(),
            serde_json::json!({"type": "chat", "text": "a\"b", "ts": 5})
        );
    }
}
