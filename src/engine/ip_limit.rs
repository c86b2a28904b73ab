//! Live connections per client address, for `--max-conns-per-ip`.
//!
//! Only exists when the limit is set, so connections pay nothing for it by default.

use std::collections::HashMap;
use std::net::IpAddr;

/// Counts live connections per address and refuses those over the limit.
#[derive(Debug)]
pub struct IpLimit {
    max: u32,
    counts: HashMap<IpAddr, u32>,
    /// The address each admitted connection (by slab key) is counted under.
    owners: HashMap<usize, IpAddr>,
}

impl IpLimit {
    /// A limit of `max` (at least 1) live connections per address.
    pub fn new(max: u32) -> Self {
        Self {
            max,
            counts: HashMap::new(),
            owners: HashMap::new(),
        }
    }

    /// Counts connection `key` from `ip`; `false`, counting nothing, if `ip`
    /// is at the limit. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, how a
    /// dual-stack listener sees IPv4 peers) counts as its IPv4 address.
    pub fn admit(&mut self, key: usize, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        let count = self.counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return false;
        }
        *count += 1;
        self.owners.insert(key, ip);
        true
    }

    /// Forgets connection `key` (a no-op if it was never admitted).
    pub fn release(&mut self, key: usize) {
        let Some(ip) = self.owners.remove(&key) else {
            return;
        };
        if let Some(count) = self.counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.counts.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_and_frees_on_release() {
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let mut limit = IpLimit::new(2);
        assert!(limit.admit(1, a));
        assert!(limit.admit(2, a));
        assert!(!limit.admit(3, a));
        assert!(limit.admit(3, b));
        // The IPv4-mapped form of `a` is `a`.
        assert!(!limit.admit(5, "::ffff:127.0.0.1".parse().unwrap()));
        limit.release(3); // b's, not a refused one
        limit.release(9); // never admitted
        assert!(!limit.admit(4, a));
        limit.release(1);
        assert!(limit.admit(4, a));
        for key in [2, 4] {
            limit.release(key);
        }
        assert!(limit.counts.is_empty() && limit.owners.is_empty());
    }
}
