//! What this server writes into Redis and reads back: the room's epoch,
//! stream entries (`N-0` ids, fields `o` origin and `c` the chat's JSON).
//! Whatever Redis returns is parsed here as untrusted data.

use super::instance_id;
use crate::engine::cluster::Origin;

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
    let redis::Value::Array(items) = value else {
        return Vec::new();
    };
    let mut entries = Vec::with_capacity(items.len());
    let mut last = 0;
    for item in items {
        let redis::Value::Array(mut pair) = item else {
            continue;
        };
        let (Some(redis::Value::Array(fields)), Some(redis::Value::BulkString(id))) =
            (pair.pop(), pair.pop())
        else {
            continue;
        };
        let Some(id) = entry_id(&id).filter(|&id| id > last) else {
            continue;
        };
        last = id;
        let mut entry = Entry::default();
        let mut fields = fields.into_iter();
        while let (Some(name), Some(redis::Value::BulkString(value))) =
            (fields.next(), fields.next())
        {
            match name {
                redis::Value::BulkString(name) if name == b"o" => {
                    entry.origin = Origin::parse(&value)
                }
                redis::Value::BulkString(name) if name == b"c" => entry.chat = Some(value),
                _ => {}
            }
        }
        entries.push((id, entry));
    }
    entries
}

/// `N-0` → N: the ids this server's script gives.
pub fn entry_id(id: &[u8]) -> Option<u64> {
    let digits = id.strip_suffix(b"-0")?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_what_the_script_writes() {
        assert_eq!(entry_id(b"17-0"), Some(17));
        for bad in [&b"17-1"[..], b"-0", b"x-0", b"17"] {
            assert_eq!(entry_id(bad), None);
        }
    }
}
