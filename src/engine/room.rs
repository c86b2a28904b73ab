//! The public room's membership: a dense list of joined connections, so the
//! relay is a tight loop over members, not a scan over every connection.

/// Joined connections, by slab key, in no particular order.
#[derive(Debug, Default)]
pub struct Room {
    members: Vec<usize>,
}

impl Room {
    /// Adds `key`; returns its index, which the connection keeps for `leave`.
    pub fn join(&mut self, key: usize) -> usize {
        self.members.push(key);
        self.members.len() - 1
    }

    /// Removes `key`, found at `index`, by swapping the last member into its place.
    ///
    /// Returns the key that moved to `index`, whose stored index the caller
    /// must update. A stale index (a bug) removes nothing rather than
    /// another member; the engine's invariant check reports it.
    pub fn leave(&mut self, key: usize, index: usize) -> Option<usize> {
        if self.members.get(index) != Some(&key) {
            return None;
        }
        self.members.swap_remove(index);
        self.members.get(index).copied()
    }

    /// Keys of every joined connection.
    pub fn members(&self) -> &[usize] {
        &self.members
    }

    /// Number of joined connections.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether nobody has joined.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_moves_the_last_member_into_the_gap() {
        let mut room = Room::default();
        let a = room.join(10);
        let _b = room.join(11);
        let c = room.join(12);
        assert_eq!(room.leave(10, a), Some(12));
        assert_eq!(room.members(), &[12, 11]);
        // 12 now lives at index `a`; a stale index removes nobody.
        assert_eq!(c, 2);
        assert_eq!(room.leave(12, c), None);
        assert_eq!(room.members(), &[12, 11]);
        // Leaving the last slot moves nobody.
        assert_eq!(room.leave(11, 1), None);
        assert_eq!(room.leave(12, a), None);
        assert!(room.is_empty());
    }
}
