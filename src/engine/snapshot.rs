//! The room as `--history-file` keeps it across a clean restart: the
//! epoch, the newest id and the chats of the ring.
//!
//! One JSON document, written at a clean stop and taken once at start:
//! `{"websocket-public-chat-history":1,"epoch":E,"last":N,"chats":[…]}`,
//! each chat exactly as it was relayed (its frame's payload), oldest first.
//! What is read back is trusted no more than a client: every chat goes
//! through the same check as one from Redis and is rebuilt by the same
//! serializer (`protocol::relayed_chat_frame`); the ids must run without a
//! gap up to `last`; the whole must fit `--history` and `--history-bytes`.
//! Anything else is refused whole, and the server starts a new epoch.

use std::fmt;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::chat::protocol;
use crate::engine::history::History;
use crate::engine::outbox::FRAME_COST;
use crate::websocket::frame::{self, Role};

/// The format's version: a file of another is refused.
pub const VERSION: u64 = 1;
/// What the file may hold beyond the chats' bytes (the head, commas): a
/// larger file cannot fit `--history-bytes` and is not read further.
pub const SLACK: usize = 4096;
/// How every file this server writes begins: a file that does not is not
/// one (the server leaves it alone rather than take it).
pub const MAGIC: &[u8] = b"{\"websocket-public-chat-history\":";
/// The largest id a file may carry: 2^53 - 1, the largest a browser's
/// numbers hold exactly (the room would need 285,000 years at 1,000 chats/s).
pub const MAX_ID: u64 = (1 << 53) - 1;

/// The room's state as a file brought it back.
#[derive(Debug)]
pub struct Snapshot {
    /// The epoch the ids belong to.
    pub epoch: Box<str>,
    /// The newest id relayed before the stop.
    pub last: u64,
    /// The kept chats' frames, oldest first, the newest carrying `last`.
    pub chats: Vec<Rc<[u8]>>,
}

/// Why a file was refused (the server then starts a new epoch).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Larger than `--history-bytes` allows, read no further.
    TooLarge,
    /// Not the format, or cut short.
    Malformed,
    /// Another version of the format.
    Version(u64),
    /// The epoch is not one this server gives (16 hexadecimal digits).
    Epoch,
    /// More chats than `--history`, or more bytes than `--history-bytes`.
    OverBounds { chats: usize, bytes: usize },
    /// Chat number `at` (from 0) is not a chat a client could have sent
    /// (a forged name, an oversized or malformed text).
    Chat { at: usize },
    /// The ids do not run one by one up to `last`.
    Ids,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Plain words, few numbers: every formatted argument costs binary size.
        match self {
            Refusal::TooLarge => f.write_str("larger than --history-bytes allows"),
            Refusal::Malformed => f.write_str("not a history file, or cut short"),
            Refusal::Version(_) => f.write_str("another version of the format"),
            Refusal::Epoch => f.write_str("its epoch is not 16 hexadecimal digits"),
            Refusal::OverBounds { .. } => {
                f.write_str("its chats do not fit --history and --history-bytes")
            }
            Refusal::Chat { .. } => {
                f.write_str("a chat in it is not one a client could have sent (name, text, size)")
            }
            Refusal::Ids => f.write_str("its ids do not run one by one up to \"last\""),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File<'a> {
    #[serde(rename = "websocket-public-chat-history")]
    version: u64,
    epoch: &'a str,
    last: u64,
    #[serde(borrow)]
    chats: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct Id {
    id: u64,
}

/// The file's bytes for the room now: its epoch and what `history` keeps.
pub fn encode(epoch: &str, history: &History) -> Vec<u8> {
    let mut out = format!(
        "{{\"websocket-public-chat-history\":{VERSION},\"epoch\":{},\"last\":{},\"chats\":[",
        protocol::name_literal(epoch),
        history.last()
    )
    .into_bytes();
    for (n, chat) in (history.first_kept()..=history.last())
        .filter_map(|id| history.get(id))
        .enumerate()
    {
        // Our own frames: the header always parses.
        let Ok(Some((_, header))) = frame::parse_header(chat, Role::Client) else {
            continue;
        };
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(&chat[header..]);
    }
    out.extend_from_slice(b"]}\n");
    out
}

/// The room in `bytes`, checked against the bounds in force: at most
/// `max_chats` chats costing `max_bytes` (as the ring counts them), each
/// no larger than `max_message` allows a client.
pub fn decode(
    bytes: &[u8],
    max_chats: usize,
    max_bytes: usize,
    max_message: usize,
) -> Result<Snapshot, Refusal> {
    if bytes.len() > max_bytes + SLACK {
        return Err(Refusal::TooLarge);
    }
    let file: File<'_> = protocol::from_bytes(bytes).ok_or(Refusal::Malformed)?;
    if file.version != VERSION {
        return Err(Refusal::Version(file.version));
    }
    let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    if file.epoch.len() != 16 || !file.epoch.bytes().all(hex) {
        return Err(Refusal::Epoch);
    }
    let count = file.chats.len();
    let first = (file.last <= MAX_ID)
        .then(|| (file.last + 1).checked_sub(count as u64))
        .flatten()
        .filter(|&first| first >= 1)
        .ok_or(Refusal::Ids)?;
    let mut chats = Vec::with_capacity(count);
    let mut cost = 0;
    for (at, raw) in file.chats.iter().enumerate() {
        let id = serde_json::from_str::<Id>(raw.get()).map_err(|_| Refusal::Chat { at })?;
        if id.id != first + at as u64 {
            return Err(Refusal::Ids);
        }
        let frame = protocol::relayed_chat_frame(raw.get().as_bytes(), max_message, id.id)
            .ok_or(Refusal::Chat { at })?;
        cost += frame.len() + FRAME_COST;
        chats.push(Rc::<[u8]>::from(frame));
    }
    if count > max_chats || cost > max_bytes {
        return Err(Refusal::OverBounds {
            chats: count,
            bytes: cost,
        });
    }
    Ok(Snapshot {
        epoch: file.epoch.into(),
        last: file.last,
        chats,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    const MAX: usize = 65_536;

    fn ring(texts: &[&str], from: u64) -> History {
        let mut h = History::new(100, 1 << 20);
        h.restart(from - 1);
        for (n, text) in texts.iter().enumerate() {
            let text = protocol::text_literal(text);
            let ts = RawValue::from_string("123".into()).unwrap();
            let id = from + n as u64;
            let frame = protocol::chat_frame(id, &protocol::name_literal("ann"), &text, Some(&ts));
            h.record(id, frame.into());
        }
        h
    }

    #[test]
    fn a_ring_comes_back_as_it_was() {
        let h = ring(&["hello", "line\nbreak \u{202e}", "\"quoted\""], 41);
        let bytes = encode("0123456789abcdef", &h);
        assert!(bytes.starts_with(MAGIC));
        let s = decode(&bytes, 100, 1 << 20, MAX).unwrap();
        assert_eq!(
            (&*s.epoch, s.last, s.chats.len()),
            ("0123456789abcdef", 43, 3)
        );
        for (n, id) in (41..=43).enumerate() {
            assert_eq!(s.chats[n], *h.get(id).unwrap(), "the very same frame");
        }
        // An empty ring keeps its newest id; a room that never chatted too.
        let mut empty = History::new(0, 1 << 20);
        empty.restart(9);
        let s = decode(&encode("0123456789abcdef", &empty), 100, 1 << 20, MAX).unwrap();
        assert_eq!((s.last, s.chats.len()), (9, 0));
    }

    #[test]
    fn anything_a_client_could_not_have_sent_is_refused() {
        let h = ring(&["a", "b"], 1);
        let good = String::from_utf8(encode("0123456789abcdef", &h)).unwrap();
        let refused = |text: &str| decode(text.as_bytes(), 100, 1 << 20, MAX).unwrap_err();
        assert_eq!(refused(&good[..good.len() - 5]), Refusal::Malformed);
        assert_eq!(refused(""), Refusal::Malformed);
        let v2 = good.replace("history\":1", "history\":2");
        assert_eq!(refused(&v2), Refusal::Version(2));
        assert_eq!(
            refused(&good.replace("0123456789abcdef", "x")),
            Refusal::Epoch
        );
        let upper = good.replace("0123456789abcdef", "0123456789ABCDEF");
        assert_eq!(refused(&upper), Refusal::Epoch);
        let unknown = good.replace("\"last\":2", "\"last\":2,\"x\":1");
        assert_eq!(refused(&unknown), Refusal::Malformed);
        let empty = |last: u64| {
            format!(
                "{{\"websocket-public-chat-history\":1,\"epoch\":\"0123456789abcdef\",\"last\":{last},\"chats\":[]}}"
            )
        };
        for last in [MAX_ID + 1, u64::MAX - 1, u64::MAX] {
            assert_eq!(refused(&empty(last)), Refusal::Ids, "{last}");
        }
        let at_max = decode(empty(MAX_ID).as_bytes(), 100, 1 << 20, MAX);
        assert_eq!(at_max.map(|s| s.last), Ok(MAX_ID));
        let forged = good.replace("\"ann\"", "\"a\\u0000b\"");
        assert_eq!(refused(&forged), Refusal::Chat { at: 0 });
        let not_text = good.replacen("\"text\":\"a\"", "\"text\":7", 1);
        assert_eq!(refused(&not_text), Refusal::Chat { at: 0 });
        assert_eq!(refused(&good.replace("\"id\":2", "\"id\":3")), Refusal::Ids);
        assert_eq!(
            refused(&good.replace("\"last\":2", "\"last\":3")),
            Refusal::Ids
        );
        assert_eq!(
            refused(&good.replace("\"last\":2", "\"last\":1")),
            Refusal::Ids
        );
        // Bounds: chats, bytes, a text larger than a client may send, the file's size.
        assert!(matches!(
            decode(good.as_bytes(), 1, 1 << 20, MAX),
            Err(Refusal::OverBounds { chats: 2, .. })
        ));
        assert!(matches!(
            decode(good.as_bytes(), 100, 100, MAX),
            Err(Refusal::OverBounds { .. })
        ));
        assert_eq!(
            decode(good.as_bytes(), 100, 1 << 20, 20).unwrap_err(),
            Refusal::Chat { at: 0 }
        );
        let huge = vec![b' '; 1024 + SLACK + 1];
        assert_eq!(
            decode(&huge, 100, 1024, MAX).unwrap_err(),
            Refusal::TooLarge
        );
    }
}
