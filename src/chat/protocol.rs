//! The chat protocol on the wire: JSON requests from clients, the JSON frames
//! the server sends. See docs/protocol.md.
//!
//! Requests are parsed into borrowed fields (no allocation for the usual
//! chat). `text` and `ts` are kept as raw JSON and relayed byte for byte, so
//! a relay never re-escapes the text.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::chat::unicode;
use crate::websocket::frame::{self, OpCode};

/// The only room.
pub const ROOM: &str = "public";
/// Longest accepted user name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Longest `epoch` a client may send back.
const MAX_EPOCH_BYTES: usize = 64;

/// A request the server acts on.
#[derive(Debug)]
pub enum Request<'a> {
    /// Join the room under `user` (already validated); `presence`: send me
    /// the online count; `catchup`: chats to send before the live ones.
    Join {
        user: Cow<'a, str>,
        presence: bool,
        catchup: Catchup,
    },
    /// Say `text` (a JSON string) to everyone else; `ts` is opaque to the server.
    Chat {
        text: &'a RawValue,
        ts: Option<&'a RawValue>,
    },
    /// Answered with a pong carrying the same `ts`.
    Ping { ts: Option<&'a RawValue> },
    /// A keepalive answer.
    Pong,
    /// Leave the room and close.
    Leave,
}

/// What a joining client asks to be sent before the live chats.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catchup {
    /// `history`: the most recent chats, at most this many.
    pub history: Option<u64>,
    /// `since` and `epoch`: every chat after this id, of that epoch.
    pub since: Option<(u64, Box<str>)>,
}

impl Catchup {
    /// Whether the join asked for anything (and so gets a `joined` answer).
    pub fn asked(&self) -> bool {
        self.history.is_some() || self.since.is_some()
    }
}

/// Why a text message was ignored. Each has its own counter in `/stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// Not JSON, not an object, no string `type`, or a field of the wrong type.
    Malformed,
    /// A `type` the protocol does not have.
    UnknownType,
    /// A `room` other than "public".
    WrongRoom,
    /// A join whose name is empty, too long, has invisible characters or
    /// a blank at either end (`valid_name`).
    InvalidName,
    /// A chat before a join.
    NotJoined,
    /// A join from a connection that already joined.
    AlreadyJoined,
}

#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(default)]
    presence: bool,
    #[serde(default)]
    history: Option<u64>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<Cow<'a, str>>,
}

/// Parses one text message into a request, or says why it is ignored.
pub fn parse(text: &str) -> Result<Request<'_>, Ignored> {
    let wire: Wire<'_> = serde_json::from_str(text).map_err(|_| Ignored::Malformed)?;
    let in_room = wire.room.as_deref().is_none_or(|room| room == ROOM);
    match &*wire.kind {
        "join" | "chat" if !in_room => Err(Ignored::WrongRoom),
        "join" => {
            let user = wire.user.ok_or(Ignored::InvalidName)?;
            if !valid_name(&user) {
                return Err(Ignored::InvalidName);
            }
            let since = match (wire.since, wire.epoch) {
                (None, _) => None,
                (Some(id), Some(epoch)) if epoch.len() <= MAX_EPOCH_BYTES => {
                    Some((id, Box::from(&*epoch)))
                }
                // A recovery names the epoch its ids belong to.
                _ => return Err(Ignored::Malformed),
            };
            Ok(Request::Join {
                user,
                presence: wire.presence,
                catchup: Catchup {
                    history: wire.history,
                    since,
                },
            })
        }
        "chat" => match wire.text {
            Some(text)
                if text.get().starts_with('"')
                    && is_strict(text)
                    && wire.ts.is_none_or(is_strict) =>
            {
                Ok(Request::Chat { text, ts: wire.ts })
            }
            _ => Err(Ignored::Malformed),
        },
        "ping" if wire.ts.is_none_or(is_strict) => Ok(Request::Ping { ts: wire.ts }),
        "ping" => Err(Ignored::Malformed),
        "pong" => Ok(Request::Pong),
        "leave" => Ok(Request::Leave),
        _ => Err(Ignored::UnknownType),
    }
}

/// Whether raw JSON parses under strict rules: no number beyond the range of
/// a double, no lone surrogate. Raw values are relayed as sent, so they must be
/// JSON every client can parse, and serde_json's raw and skip paths accept
/// both. Nothing is built, so nothing is allocated (but for escaped strings).
fn is_strict(raw: &RawValue) -> bool {
    is_strict_json(raw.get())
}

/// Whether `json` is one JSON value under the strict rules of `is_strict`.
pub fn is_strict_json(json: &str) -> bool {
    serde_json::from_str::<StrictAny>(json).is_ok()
}

/// Any JSON value, walked and dropped. Unlike `IgnoredAny`, which skips
/// tokens unparsed, it makes serde_json parse every number and string.
struct StrictAny;

impl<'de> Deserialize<'de> for StrictAny {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Walk;
        impl<'de> Visitor<'de> for Walk {
            type Value = StrictAny;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<StrictAny, E> {
                Ok(StrictAny)
            }
            fn visit_i64<E>(self, _: i64) -> Result<StrictAny, E> {
                Ok(StrictAny)
            }
            fn visit_u64<E>(self, _: u64) -> Result<StrictAny, E> {
                Ok(StrictAny)
            }
            fn visit_f64<E>(self, _: f64) -> Result<StrictAny, E> {
                Ok(StrictAny)
            }
            fn visit_str<E>(self, _: &str) -> Result<StrictAny, E> {
                Ok(StrictAny)
            }
            fn visit_unit<E>(self) -> Result<StrictAny, E> {
                Ok(StrictAny)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrictAny, A::Error> {
                while seq.next_element::<StrictAny>()?.is_some() {}
                Ok(StrictAny)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrictAny, A::Error> {
                while map.next_entry::<StrictAny, StrictAny>()?.is_some() {}
                Ok(StrictAny)
            }
        }
        deserializer.deserialize_any(Walk)
    }
}

/// 1 to 64 characters; none invisible (controls, format characters such as
/// bidi overrides and zero-width spaces, line or paragraph separators, other
/// default-ignorables such as Hangul fillers; see `unicode`); no blank at
/// either end, so not only blanks either; not beginning with `*`, which
/// marks the server's own lines to plain-text clients (`* notice: …`), so
/// no chat line can pass for one.
pub fn valid_name(name: &str) -> bool {
    let mut count = 0;
    for c in name.chars() {
        if unicode::is_invisible_in_name(c) {
            return false;
        }
        count += 1;
    }
    (1..=MAX_NAME_CHARS).contains(&count)
        && !name.starts_with(unicode::is_blank)
        && !name.starts_with('*')
        && !name.ends_with(unicode::is_blank)
}

/// A chat as another instance published it: the relayed chat's JSON object.
#[derive(Deserialize)]
struct Relayed<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    room: Cow<'a, str>,
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow)]
    text: &'a RawValue,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
}

/// A chat from the backplane, checked exactly like a local one (the name
/// rules, `text` a string, strict JSON in `text` and `ts`, no larger than
/// the smallest local message with that `text` and `ts` may be), as a frame with this room's `id`, built by
/// the same serializer; `None` for anything else. Whoever can publish to the
/// channel gets no further than a client.
pub fn relayed_chat_frame(json: &[u8], max_message: usize, id: u64) -> Option<Vec<u8>> {
    let chat: Relayed<'_> = from_bytes(json)?;
    // The smallest message a local client could carry these fields in:
    // `{"type":"chat","text":T}`, or `{"type":"chat","text":T,"ts":S}`.
    let size = r#"{"type":"chat","text":}"#.len()
        + chat.text.get().len()
        + chat.ts.map_or(0, |ts| r#","ts":"#.len() + ts.get().len());
    let valid = chat.kind == "chat"
        && chat.room == ROOM
        && valid_name(&chat.user)
        && chat.text.get().starts_with('"')
        && is_strict(chat.text)
        && chat.ts.is_none_or(is_strict)
        && size <= max_message;
    valid.then(|| chat_frame(id, &name_literal(&chat.user), chat.text, chat.ts))
}

/// A plain-text client's message as the JSON string a chat carries.
pub fn text_literal(text: &str) -> Box<RawValue> {
    // A string always serializes, and always to valid JSON.
    let literal = serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into());
    RawValue::from_string(literal).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

/// JSON in `bytes`, read as text: serde_json's reader of `str`s is the one
/// the server uses everywhere, so its reader of bytes (as large again) stays
/// out of the binary.
pub fn from_bytes<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Option<T> {
    serde_json::from_str(std::str::from_utf8(bytes).ok()?).ok()
}

/// `name: text`, what a plain-text client receives for a chat (the relayed
/// JSON frame's payload, read once per chat), on one line; None if it is
/// not a chat.
pub fn plain_line(chat_payload: &[u8]) -> Option<Vec<u8>> {
    // The relayed chat's own reader, then its text as a string.
    let chat: Relayed<'_> = from_bytes(chat_payload)?;
    let text: Cow<'_, str> = serde_json::from_str(chat.text.get()).ok()?;
    // One line, nothing that drives a terminal: control and format
    // characters (line breaks, escapes, bidi overrides) shown as U+FFFD, as
    // chat-client does (names cannot hold them).
    let text = unicode::shown(&text);
    Some(frame::server_frame(
        OpCode::Text,
        &[chat.user.as_bytes(), b": ", text.as_bytes()],
    ))
}

/// The name as a JSON string literal, escaped once at join and reused for every relay.
pub fn name_literal(name: &str) -> Box<str> {
    // Sized for the quotes and no escapes, so the usual name is allocated
    // once, exactly: it lives as long as the connection.
    let mut literal = Vec::with_capacity(name.len() + 2);
    // Writing a &str into a Vec cannot fail, and the output is UTF-8.
    let _ = serde_json::to_writer(&mut literal, name);
    String::from_utf8(literal)
        .unwrap_or_default()
        .into_boxed_str()
}

/// `{"type":"presence","room":"public","online":N}`: how many have joined.
pub fn presence_frame(online: usize) -> Vec<u8> {
    frame::server_frame(
        OpCode::Text,
        &[
            b"{\"type\":\"presence\",\"room\":\"public\",\"online\":",
            online.to_string().as_bytes(),
            b"}",
        ],
    )
}

/// An operator's notice (`POST /admin/announce`), a type no client can
/// send: `{"type":"notice","room":"public","text":…}`. Built once and
/// shared by every member, like a chat.
pub fn notice_frame(text: &str) -> Vec<u8> {
    let literal = serde_json::to_string(text).unwrap_or_default();
    frame::server_frame(
        OpCode::Text,
        &[
            b"{\"type\":\"notice\",\"room\":\"public\",\"text\":",
            literal.as_bytes(),
            b"}",
        ],
    )
}

/// The notice as plain-text clients get it: `* notice: TEXT` (a name
/// cannot begin with `*`, so no chat line looks like it).
pub fn notice_line(text: &str) -> Vec<u8> {
    let text = unicode::shown(text);
    frame::server_frame(OpCode::Text, &[b"* notice: ", text.as_bytes()])
}

/// The relayed chat frame:
/// `{"type":"chat","room":"public","id":N,"user":…,"text":…,"ts":…}`.
///
/// `id` is the chat's place in the room; `user` is the JSON literal from
/// `name_literal`; `text` and `ts` are the sender's raw JSON. Built once per
/// chat and shared by every recipient (and by the history).
pub fn chat_frame(id: u64, user: &str, text: &RawValue, ts: Option<&RawValue>) -> Vec<u8> {
    let ts_parts: [&[u8]; 2] = match ts {
        Some(ts) => [b",\"ts\":", ts.get().as_bytes()],
        None => [b"", b""],
    };
    let mut digits = [0u8; 20];
    frame::server_frame(
        OpCode::Text,
        &[
            b"{\"type\":\"chat\",\"room\":\"public\",\"id\":",
            decimal(id, &mut digits),
            b",\"user\":",
            user.as_bytes(),
            b",\"text\":",
            text.get().as_bytes(),
            ts_parts[0],
            ts_parts[1],
            b"}",
        ],
    )
}

/// `{"type":"joined","room":"public","epoch":"E","last":M,"recovered":…}`:
/// after the chats a join asked for, before the live ones.
pub fn joined_frame(epoch: &str, last: u64, recovered: bool) -> Vec<u8> {
    let mut digits = [0u8; 20];
    frame::server_frame(
        OpCode::Text,
        &[
            b"{\"type\":\"joined\",\"room\":\"public\",\"epoch\":\"",
            epoch.as_bytes(),
            b"\",\"last\":",
            decimal(last, &mut digits),
            if recovered {
                b",\"recovered\":true}"
            } else {
                b",\"recovered\":false}"
            },
        ],
    )
}

/// `n` in decimal, written into `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The answer to a JSON ping: `{"type":"pong","ts":…}` (no `ts` if the ping had none).
pub fn pong_frame(ts: Option<&RawValue>) -> Vec<u8> {
    match ts {
        Some(ts) => frame::server_frame(
            OpCode::Text,
            &[b"{\"type\":\"pong\",\"ts\":", ts.get().as_bytes(), b"}"],
        ),
        None => frame::server_frame(OpCode::Text, &[b"{\"type\":\"pong\"}"]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::frame::{Role, parse_header};

    fn payload(frame: &[u8]) -> serde_json::Value {
        let (h, n) = parse_header(frame, Role::Client).unwrap().unwrap();
        assert_eq!(h.opcode, OpCode::Text);
        assert_eq!(h.payload_len as usize, frame.len() - n);
        serde_json::from_slice(&frame[n..]).unwrap()
    }

    #[test]
    fn requests() {
        assert!(
            matches!(parse(r#"{"type":"join","room":"public","user":"alice"}"#),
            Ok(Request::Join { user, presence: false, catchup }) if user == "alice" && !catchup.asked())
        );
        assert!(matches!(parse(r#"{"type":"join","user":"b\u00e9a"}"#),
            Ok(Request::Join { user, .. }) if user == "béa"));
        assert!(matches!(parse(r#"{"type":"chat","text":"hi","ts":5}"#),
            Ok(Request::Chat { text, ts: Some(ts) }) if text.get() == r#""hi""# && ts.get() == "5"));
        assert!(matches!(
            parse(r#"{"type":"ping","ts":1700000000000}"#),
            Ok(Request::Ping { ts: Some(_) })
        ));
        let nested = r#"{"type":"chat","text":"hi","ts":{"a":1,"b":[true,null,"x",-2.5e10,18446744073709551616]}}"#;
        assert!(matches!(parse(nested), Ok(Request::Chat { .. })));
        assert!(matches!(
            parse(r#"{"type":"pong","ts":1}"#),
            Ok(Request::Pong)
        ));
        assert!(matches!(
            parse(r#"{"type":"leave","user":"x"}"#),
            Ok(Request::Leave)
        ));
    }

    #[test]
    fn ignored_messages_say_why() {
        let cases = [
            ("not json", Ignored::Malformed),
            ("[1,2]", Ignored::Malformed),
            ("\"chat\"", Ignored::Malformed),
            (r#"{"text":"no type"}"#, Ignored::Malformed),
            (r#"{"type":7}"#, Ignored::Malformed),
            (r#"{"type":"chat","text":42}"#, Ignored::Malformed),
            (r#"{"type":"chat"}"#, Ignored::Malformed),
            (r#"{"type":"dance"}"#, Ignored::UnknownType),
            (
                r#"{"type":"chat","room":"private","text":"x"}"#,
                Ignored::WrongRoom,
            ),
            (
                r#"{"type":"join","room":"private","user":"a"}"#,
                Ignored::WrongRoom,
            ),
            (r#"{"type":"join"}"#, Ignored::InvalidName),
            // Relayed as sent, so it must be JSON that strict parsers accept.
            (
                r#"{"type":"chat","text":"x","ts":17e0200000000}"#,
                Ignored::Malformed,
            ),
            (
                r#"{"type":"chat","text":"lone \ud800 surrogate"}"#,
                Ignored::Malformed,
            ),
            (
                r#"{"type":"chat","text":"x","ts":"\udc00"}"#,
                Ignored::Malformed,
            ),
            (r#"{"type":"ping","ts":-1e400}"#, Ignored::Malformed),
            (
                r#"{"type":"chat","text":"x","ts":{"deep":[1,{"n":1e999}]}}"#,
                Ignored::Malformed,
            ),
            (
                r#"{"type":"chat","text":"x","ts":["\ud800"]}"#,
                Ignored::Malformed,
            ),
            (r#"{"type":"join","user":""}"#, Ignored::InvalidName),
            (r#"{"type":"join","user":"a\nb"}"#, Ignored::InvalidName),
            (
                r#"{"type":"join","user":"\u202enimda"}"#,
                Ignored::InvalidName,
            ),
            (
                r#"{"type":"join","user":"alice\u200b"}"#,
                Ignored::InvalidName,
            ),
            (
                r#"{"type":"join","user":"\u2066bob\u2069"}"#,
                Ignored::InvalidName,
            ),
            (r#"{"type":"join","user":"   "}"#, Ignored::InvalidName),
            (r#"{"type":"join","user":" alice"}"#, Ignored::InvalidName),
            (
                r#"{"type":"join","user":"alice\u3000"}"#,
                Ignored::InvalidName,
            ),
            (r#"{"type":"join","user":"a\u2028b"}"#, Ignored::InvalidName),
        ];
        for (text, want) in cases {
            assert_eq!(parse(text).err(), Some(want), "{text}");
        }
        let long = format!(r#"{{"type":"join","user":"{}"}}"#, "é".repeat(65));
        assert_eq!(parse(&long).err(), Some(Ignored::InvalidName));
        let max = format!(r#"{{"type":"join","user":"{}"}}"#, "é".repeat(64));
        assert!(parse(&max).is_ok());
    }

    #[test]
    fn relayed_chat_is_stamped_and_keeps_text_and_ts() {
        let Ok(Request::Chat { text, ts }) =
            parse(r#"{"type":"chat","user":"mallory","text":"a \"q\" \u00e9","ts":17}"#)
        else {
            panic!("not a chat");
        };
        let frame = chat_frame(42, &name_literal("al\"ice"), text, ts);
        let v = payload(&frame);
        assert_eq!(v["id"], 42);
        assert_eq!(v["type"], "chat");
        assert_eq!(v["room"], "public");
        assert_eq!(v["user"], "al\"ice");
        assert_eq!(v["text"], "a \"q\" é");
        assert_eq!(v["ts"], 17);
        // Raw text is relayed exactly as the sender escaped it.
        assert!(
            frame
                .windows(text.get().len())
                .any(|w| w == text.get().as_bytes())
        );
    }

    #[test]
    fn chats_from_the_backplane_are_checked_like_local_ones() {
        let good =
            br#"{"type":"chat","room":"public","user":"al\"ice","text":"hi","ts":3,"extra":1}"#;
        let frame = relayed_chat_frame(good, 100, 9).expect("a valid chat");
        assert_eq!(
            payload(&frame),
            serde_json::json!({"type":"chat","room":"public","id":9,"user":"al\"ice","text":"hi","ts":3})
        );
        for bad in [
            &br#"{"type":"presence","room":"public","online":-7}"#[..],
            br#"{"type":"chat","room":"public","user":{"a":1},"text":"x"}"#,
            br#"{"type":"chat","room":"public","user":"a","text":{"b":2}}"#,
            br#"{"type":"chat","room":"public","user":"\u202eadmin","text":"x"}"#,
            br#"{"type":"chat","room":"public","user":" admin","text":"x"}"#,
            br#"{"type":"chat","room":"private","user":"a","text":"x"}"#,
            br#"{"type":"chat","room":"public","user":"a","text":"x","ts":1e400}"#,
            br#"{"type":"chat","room":"public","user":"a","text":"\ud800"}"#,
            br#"{"type":"chat","room":"public","user":"a"}"#,
            b"not json",
            b"\xff\xfe",
        ] {
            assert!(
                relayed_chat_frame(bad, 100, 1).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!(
            r#"{{"type":"chat","room":"public","user":"a","text":"{}"}}"#,
            "x".repeat(99)
        );
        // A local client needs 124 bytes for this text: `{"type":"chat","text":"x…x"}`.
        assert!(relayed_chat_frame(long.as_bytes(), 123, 1).is_none());
        assert!(relayed_chat_frame(long.as_bytes(), 124, 1).is_some());
        let with_ts = r#"{"type":"chat","room":"public","user":"a","text":"x","ts":12}"#;
        assert!(relayed_chat_frame(with_ts.as_bytes(), 33, 1).is_none());
        assert!(relayed_chat_frame(with_ts.as_bytes(), 34, 1).is_some());
    }

    #[test]
    fn a_join_may_ask_for_history_and_recovery() {
        let catchup = |json: &str| match parse(json) {
            Ok(Request::Join { catchup, .. }) => Ok(catchup),
            Err(why) => Err(why),
            Ok(other) => panic!("{other:?}"),
        };
        assert_eq!(
            catchup(r#"{"type":"join","user":"a","history":50}"#),
            Ok(Catchup {
                history: Some(50),
                since: None
            })
        );
        assert_eq!(
            catchup(r#"{"type":"join","user":"a","since":7,"epoch":"e1","history":3}"#),
            Ok(Catchup {
                history: Some(3),
                since: Some((7, "e1".into()))
            })
        );
        for bad in [
            r#"{"type":"join","user":"a","since":7}"#,
            r#"{"type":"join","user":"a","history":-1}"#,
            r#"{"type":"join","user":"a","history":"10"}"#,
            r#"{"type":"join","user":"a","since":1.5,"epoch":"e"}"#,
            r#"{"type":"join","user":"a","since":1,"epoch":7}"#,
        ] {
            assert_eq!(catchup(bad), Err(Ignored::Malformed), "{bad}");
        }
        let long = format!(
            r#"{{"type":"join","user":"a","since":1,"epoch":"{}"}}"#,
            "e".repeat(65)
        );
        assert_eq!(catchup(&long), Err(Ignored::Malformed));
    }

    #[test]
    fn joined_says_the_epoch_the_newest_id_and_the_outcome() {
        assert_eq!(
            payload(&joined_frame("3f2a", 1234567890123, true)),
            serde_json::json!({"type":"joined","room":"public","epoch":"3f2a","last":1234567890123u64,"recovered":true})
        );
        assert_eq!(payload(&joined_frame("e", 0, false))["recovered"], false);
        assert_eq!(
            payload(&chat_frame(
                u64::MAX,
                "\"a\"",
                RawValue::from_string("\"x\"".into()).unwrap().as_ref(),
                None
            ))["id"],
            u64::MAX
        );
    }

    #[test]
    fn pong_echoes_ts() {
        let Ok(Request::Ping { ts }) = parse(r#"{"type":"ping","ts":1700000000000}"#) else {
            panic!("not a ping");
        };
        assert_eq!(
            payload(&pong_frame(ts)),
            serde_json::json!({"type":"pong","ts":1700000000000u64})
        );
        assert_eq!(
            payload(&pong_frame(None)),
            serde_json::json!({"type":"pong"})
        );
    }
}
