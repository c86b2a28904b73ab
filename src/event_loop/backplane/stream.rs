//! What this server writes into Redis and reads back: the room's epoch,
//! stream entries (`N-0` ids, fields `o` origin and `c` the chat's JSON),
//! admin commands (fields `i` instance, `a` endpoint, `b` body) and the
//! bans and mutes kept. Whatever Redis returns is parsed here as untrusted
//! data: an admin command is read back with the admin API's own checks.

use super::instance_id;
use crate::engine::Kept;
use crate::engine::cluster::Origin;
use crate::http::admin::{self, Command, Endpoint};
use crate::http::proxy::Cidr;

/// An epoch as this server writes them (hex, 1 to 64 characters of
/// `[0-9A-Za-z._-]` accepted): one from Redis is sent to clients.
pub fn valid_epoch(epoch: &str) -> bool {
    (1..=64).contains(&epoch.len())
        && epoch
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An epoch to propose if the room has none in Redis (first start, or Redis
/// lost it): new each time, so a room that was lost never comes back under
/// the epoch it had.
pub fn fresh_epoch() -> String {
    format!("{:016x}", instance_id())
}

/// A stream entry's id as Redis gave it (`[id, fields]`).
pub fn raw_entry_id(entry: &redis::Value) -> Option<String> {
    match entry {
        redis::Value::Array(pair) => match pair.first() {
            Some(redis::Value::BulkString(id)) => String::from_utf8(id.clone()).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// The fields of a stream entry this server wrote.
#[derive(Default)]
pub struct Entry {
    pub origin: Option<Origin>,
    pub chat: Option<Vec<u8>>,
}

/// `XRANGE`'s answer as (id, fields), ids ascending; entries whose id is
/// not `N-0` with N above the previous are skipped.
pub fn stream_entries(value: redis::Value) -> Vec<(u64, Entry)> {
    let items = items(value);
    let mut entries = Vec::with_capacity(items.len());
    let mut last = 0;
    for item in items {
        let Some((id, fields)) = entry_parts(item) else {
            continue;
        };
        let Some(id) = entry_id(&id).filter(|&id| id > last) else {
            continue;
        };
        last = id;
        let mut entry = Entry::default();
        for (name, value) in fields {
            match &name[..] {
                b"o" => entry.origin = Origin::parse(&value),
                b"c" => entry.chat = Some(value),
                _ => {}
            }
        }
        entries.push((id, entry));
    }
    entries
}

/// The items of an array answer (none if it is not one).
fn items(value: redis::Value) -> Vec<redis::Value> {
    match value {
        redis::Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// A stream entry's fields that are strings: (name, value).
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

/// A stream entry (`[id, [name, value, ...]]`) as its id and its fields;
/// `None` if it is not one.
fn entry_parts(item: redis::Value) -> Option<(Vec<u8>, Fields)> {
    let redis::Value::Array(mut pair) = item else {
        return None;
    };
    let (Some(redis::Value::Array(fields)), Some(redis::Value::BulkString(id))) =
        (pair.pop(), pair.pop())
    else {
        return None;
    };
    let mut strings = Vec::with_capacity(fields.len() / 2);
    let mut fields = fields.into_iter();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if let (redis::Value::BulkString(name), redis::Value::BulkString(value)) = (name, value) {
            strings.push((name, value));
        }
    }
    Some((id, strings))
}

/// `N-0` → N: the ids this server's script gives.
pub fn entry_id(id: &[u8]) -> Option<u64> {
    let digits = id.strip_suffix(b"-0")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// An admin stream entry: its id (`MS-SEQ`), and the instance and
/// command it holds if it is one this server writes.
pub struct AdminEntry {
    pub id: String,
    /// The Redis time it was added at (ms).
    pub ms: u64,
    pub command: Option<(u64, Command)>,
}

/// `XRANGE`'s answer on the admin stream; it ends at the first entry whose
/// id is not `MS-SEQ` (none should be: Redis gives them).
pub fn admin_entries(value: redis::Value) -> Vec<AdminEntry> {
    let items = items(value);
    let mut entries = Vec::with_capacity(items.len());
    for item in items {
        let Some(((id, ms), fields)) =
            entry_parts(item).and_then(|(id, fields)| Some((stream_id(&id)?, fields)))
        else {
            break;
        };
        let (mut instance, mut endpoint, mut body) = (None, None, None);
        for (name, value) in fields {
            match &name[..] {
                b"i" => {
                    instance = std::str::from_utf8(&value)
                        .ok()
                        .filter(|v| v.len() == 16)
                        .and_then(|v| u64::from_str_radix(v, 16).ok());
                }
                b"a" => endpoint = Endpoint::from_name(&value),
                b"b" if value.len() <= admin::MAX_BODY => body = Some(value),
                _ => {}
            }
        }
        let command = match (instance, endpoint, body) {
            (Some(i), Some(e), Some(b)) => admin::command(e, &b).ok().map(|c| (i, c)),
            _ => None,
        };
        entries.push(AdminEntry { id, ms, command });
    }
    entries
}

/// A stream id `MS-SEQ`: itself and its milliseconds.
fn stream_id(id: &[u8]) -> Option<(String, u64)> {
    let text = std::str::from_utf8(id).ok()?;
    let (ms, seq) = text.split_once('-')?;
    let digits = |d: &str| !d.is_empty() && d.len() <= 20 && d.bytes().all(|b| b.is_ascii_digit());
    (digits(ms) && digits(seq)).then(|| Some((text.to_string(), ms.parse().ok()?)))?
}

/// The bans and mutes the keeping script returned (field, ms left, reason;
/// fields `ban BLOCK` and `mute NAME`), each checked as a request's would be.
pub fn kept(values: Vec<Vec<u8>>) -> Vec<Kept> {
    values
        .chunks_exact(3)
        .filter_map(|k| {
            let field = std::str::from_utf8(&k[0]).ok()?;
            let left_ms: u64 = std::str::from_utf8(&k[1]).ok()?.parse().ok()?;
            let left_ms = left_ms.min(admin::MAX_SECONDS * 1000);
            match field.split_once(' ')? {
                ("ban", block) => Some(Kept::Ban {
                    block: Cidr::parse(block).ok()?,
                    left_ms,
                    reason: admin::reason(Some(String::from_utf8(k[2].clone()).ok()?)).ok()?,
                }),
                ("mute", user) if crate::chat::protocol::valid_name(user) => Some(Kept::Mute {
                    user: user.to_string(),
                    left_ms,
                }),
                _ => None,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_bans_and_mutes_are_checked() {
        let v = |s: &str| s.as_bytes().to_vec();
        let kept = kept(vec![
            v("ban 10.0.0.0/8"),
            v("5000"),
            v("flood"),
            v("mute bob"),
            v("100"),
            v(""),
            v("ban nonsense"),
            v("5000"),
            v(""),
            v("mute a\u{202e}b"),
            v("5000"),
            v(""),
            v("ban 10.0.0.1"),
            v("x"),
            v(""),
            v("ban 10.0.0.2"),
            v("5"),
            v("a\nb"),
            v("kick bob"),
            v("5"),
            v(""),
        ]);
        assert_eq!(
            kept,
            [
                Kept::Ban {
                    block: Cidr::parse("10.0.0.0/8").unwrap(),
                    left_ms: 5000,
                    reason: "flood".into()
                },
                Kept::Mute {
                    user: "bob".into(),
                    left_ms: 100
                }
            ]
        );
        assert_eq!(
            stream_id(b"1700000000000-3"),
            Some(("1700000000000-3".into(), 1700000000000))
        );
        assert_eq!(stream_id(b"17-x"), None);
    }

    #[test]
    fn entry_ids_are_what_the_script_writes() {
        assert_eq!(entry_id(b"17-0"), Some(17));
        for bad in [&b"17-1"[..], b"-0", b"x-0", b"17"] {
            assert_eq!(entry_id(bad), None);
        }
    }
}
