//! What the engine promises about memory and its own structures, checked:
//! what one connection holds, the bound on it, and the invariants the tests
//! and the simulation check after every step.

use super::*;

impl Engine {
    /// What the engine holds in memory for one connection: the struct, its
    /// queue as charged, its reader's buffers and any request head.
    pub fn memory(&self, key: usize) -> usize {
        let Some(conn) = self.conns.get(key) else {
            return 0;
        };
        let buffered = match &conn.phase {
            Phase::Handshaking { head, .. } => head.capacity(),
            Phase::AdminBody(admin) => std::mem::size_of::<AdminBody>() + admin.body.capacity(),
            Phase::Open { reader, .. } | Phase::Closing { reader } => reader.buffered(),
            _ => 0,
        };
        std::mem::size_of::<Connection>() + conn.outbox.cost() + buffered
    }

    /// The most `memory` may ever say for one connection: `--max-backlog`,
    /// the replies one read can add past it, and a message being assembled
    /// (its buffer grows by doubling, so up to twice `--max-message-size`).
    /// One read adds at most: the replies to the frames that came behind the
    /// request head (that read takes up to `MAX_HEAD` + 1 bytes), or to the
    /// `MIN_READ` bytes read close to the limit, or the reply to a message
    /// that read completed (at most `--max-message-size`). A catch-up
    /// queues chats while its queue is under half the backlog (so one chat
    /// past it), and a read from Redis adds at most the other half (or one
    /// chat, if a single one is larger): one chat past the limit.
    pub fn memory_bound(&self) -> usize {
        let max_message = self.config.max_message_size;
        let one_reply = (max_message + frame::MAX_SERVER_HEADER + FRAME_COST)
            .max((MAX_HEAD + 1).max(MIN_READ) * REPLY_COST_PER_BYTE);
        let one_chat = max_message + MAX_CHAT_OVERHEAD + FRAME_COST;
        std::mem::size_of::<Connection>()
            + self.config.max_backlog
            + one_reply
            + 2 * max_message
            + one_chat
            + 1024
    }

    /// Checks what the engine's structures promise each other; `Err` says
    /// what is broken. For tests and the simulation, after every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (index, &key) in self.room.members().iter().enumerate() {
            let member = self
                .member(key)
                .ok_or(format!("room lists {key}, not a member"))?;
            if member.index as usize != index {
                return Err(format!(
                    "{key} is at {index} in the room, thinks {}",
                    member.index
                ));
            }
        }
        for (index, &key) in self.watchers.members().iter().enumerate() {
            let watching = self.member(key).and_then(|m| m.watching);
            if watching.map(|(i, _)| i as usize) != Some(index) {
                return Err(format!("{key} is watcher {index}, thinks {watching:?}"));
            }
        }
        let mut members = 0;
        for (key, conn) in &self.conns {
            if let Phase::Open { chat, .. } = &conn.phase
                && let Some(member) = &chat.member
            {
                if member.catching_up {
                    if self
                        .catching_up
                        .get(&key)
                        .is_none_or(|c| c.conn() != conn.id)
                    {
                        return Err(format!("member {key} catches up, but is not listed"));
                    }
                    continue;
                }
                members += 1;
                if self.room.members().get(member.index as usize) != Some(&key) {
                    return Err(format!("member {key} is not at its index in the room"));
                }
            }
            if conn.dirty && !self.dirty.contains(&key) {
                return Err(format!("{key} is dirty but not in the flush list"));
            }
            if self.memory(key) > self.memory_bound() {
                return Err(format!(
                    "{key} holds {} bytes, over the bound of {}",
                    self.memory(key),
                    self.memory_bound()
                ));
            }
        }
        if members != self.room.len() {
            return Err(format!(
                "{members} members, {} in the room",
                self.room.len()
            ));
        }
        for &key in self.catching_up.keys() {
            if !self.member(key).is_some_and(|m| m.catching_up) {
                return Err(format!("{key} is listed as catching up, but is not"));
            }
        }
        let awaiting = self.catching_up.values().filter(|c| c.awaits()).count();
        if awaiting != self.awaiting {
            return Err(format!(
                "{awaiting} catch-ups await, {} counted",
                self.awaiting
            ));
        }
        let refused = self.stats.refused_max_conns + self.stats.refused_per_ip;
        if self.stats.websocket_upgrades + refused > self.stats.connections_total {
            return Err("more upgrades and refusals than connections".into());
        }
        if self.stats.joins < self.online() as u64 {
            return Err("fewer joins than members".into());
        }
        Ok(())
    }
}
