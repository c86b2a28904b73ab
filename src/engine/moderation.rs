//! What operators decided about the room: bans (address blocks refused
//! until a time) and mutes (names whose chats are dropped until a time).
//!
//! Bounded: at most `MAX_BANS` bans and `MAX_MUTES` mutes, each under 400
//! bytes, so all of it stays under 1 MiB whatever is asked. An expired
//! entry no longer counts from the moment it ends, and is forgotten when
//! the next change or listing meets it. With no ban, the check an upgrade
//! makes costs one branch.

use std::net::IpAddr;

use crate::http::proxy::Cidr;

/// Most bans kept at once (more are refused with 409).
pub const MAX_BANS: usize = 1024;
/// Most mutes kept at once.
pub const MAX_MUTES: usize = 1024;

/// An address block refused until `until` (engine ms).
#[derive(Debug, Clone)]
pub struct Ban {
    pub block: Cidr,
    pub until: u64,
    /// The operator's reason ("" if none was given).
    pub reason: Box<str>,
}

/// The bans and mutes in force.
#[derive(Debug, Default)]
pub struct Moderation {
    bans: Vec<Ban>,
    /// Muted names as JSON literals (as members hold them), and until when,
    /// sorted by name (a sorted list: a map's code would cost the binary more).
    mutes: Vec<(Box<str>, u64)>,
}

impl Moderation {
    /// Bans `block` until `until` (a ban of the same block is replaced);
    /// false if `MAX_BANS` others are in force.
    pub fn ban(&mut self, block: Cidr, until: u64, reason: &str, now: u64) -> bool {
        self.expire(now);
        self.bans.retain(|b| b.block != block);
        if self.bans.len() >= MAX_BANS {
            return false;
        }
        self.bans.push(Ban {
            block,
            until,
            reason: reason.into(),
        });
        true
    }

    /// Lifts the ban on exactly `block`; false if there was none in force.
    pub fn unban(&mut self, block: &Cidr, now: u64) -> bool {
        self.expire(now);
        let before = self.bans.len();
        self.bans.retain(|b| b.block != *block);
        self.bans.len() < before
    }

    /// The ban in force on `ip`, if any (an IPv4-mapped address is its IPv4 one).
    pub fn banned(&self, ip: IpAddr, now: u64) -> Option<&Ban> {
        if self.bans.is_empty() {
            return None;
        }
        self.bans
            .iter()
            .find(|b| b.until > now && b.block.contains(ip))
    }

    /// The bans in force, oldest first.
    pub fn bans(&mut self, now: u64) -> &[Ban] {
        self.expire(now);
        &self.bans
    }

    /// Mutes the name `user` (a JSON literal) until `until`; false if
    /// `MAX_MUTES` other names are muted.
    pub fn mute(&mut self, user: &str, until: u64, now: u64) -> bool {
        self.expire(now);
        match self.find(user) {
            Ok(at) => self.mutes[at].1 = until,
            Err(_) if self.mutes.len() >= MAX_MUTES => return false,
            Err(at) => self.mutes.insert(at, (user.into(), until)),
        }
        true
    }

    /// Lifts the mute on `user`; false if it was not muted.
    pub fn unmute(&mut self, user: &str, now: u64) -> bool {
        self.expire(now);
        self.find(user).map(|at| self.mutes.remove(at)).is_ok()
    }

    /// Whether the name `user` (a JSON literal) is muted at `now`.
    pub fn is_muted(&self, user: &str, now: u64) -> bool {
        !self.mutes.is_empty() && self.find(user).is_ok_and(|at| self.mutes[at].1 > now)
    }

    fn find(&self, user: &str) -> Result<usize, usize> {
        self.mutes.binary_search_by(|(name, _)| (**name).cmp(user))
    }

    /// Forgets what ended by `now`.
    fn expire(&mut self, now: u64) {
        self.bans.retain(|b| b.until > now);
        self.mutes.retain(|(_, until)| *until > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_match_blocks_until_they_end_and_are_bounded() {
        let mut m = Moderation::default();
        let block = Cidr::parse("10.0.0.0/8").unwrap();
        assert!(m.ban(block, 1_000, "flood", 0));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(&*m.banned(ip("10.9.8.7"), 999).unwrap().reason, "flood");
        assert!(m.banned(ip("::ffff:10.9.8.7"), 999).is_some());
        assert!(m.banned(ip("11.0.0.1"), 999).is_none());
        assert!(m.banned(ip("10.9.8.7"), 1_000).is_none());
        // The same block again replaces it; lifting takes exactly that block.
        assert!(m.ban(block, 5_000, "", 0));
        assert_eq!(m.bans(0).len(), 1);
        assert!(!m.unban(&Cidr::parse("10.0.0.0/9").unwrap(), 0));
        assert!(m.unban(&block, 0));
        assert!(m.banned(ip("10.9.8.7"), 0).is_none());
        for i in 0..MAX_BANS {
            let block = Cidr::parse(&format!("10.{}.{}.1", i / 256, i % 256)).unwrap();
            assert!(m.ban(block, 100, "", 0));
        }
        assert!(!m.ban(block, 100, "", 0));
        // Expired ones make room.
        assert!(m.ban(block, 200, "", 100));
        assert_eq!(m.bans(100).len(), 1);
    }

    #[test]
    fn mutes_end_and_are_bounded() {
        let mut m = Moderation::default();
        assert!(m.mute("\"bob\"", 1_000, 0));
        assert!(m.is_muted("\"bob\"", 999));
        assert!(!m.is_muted("\"bob\"", 1_000));
        assert!(!m.is_muted("\"alice\"", 0));
        assert!(m.unmute("\"bob\"", 0));
        assert!(!m.unmute("\"bob\"", 0));
        for i in 0..MAX_MUTES {
            assert!(m.mute(&format!("\"u{i}\""), 100, 0));
        }
        assert!(!m.mute("\"bob\"", 100, 0));
        assert!(m.mute("\"u1\"", 300, 0));
        assert!(m.mute("\"bob\"", 100, 100));
    }
}
