//! The room: joining, leaving, presence, and the relay (the hot path).

use super::*;

impl Engine {
    pub(super) fn join(
        &mut self,
        key: usize,
        user: Box<str>,
        presence: bool,
        catchup: &Catchup,
        now: u64,
    ) {
        if !matches!(
            self.conns.get(key).map(|c| &c.phase),
            Some(Phase::Open { .. })
        ) {
            return;
        }
        // A join that asked for chats catches up outside the room first
        // (`catch_up`): nothing live comes between its replay and `joined`.
        let catching_up = catchup.asked();
        let index = if catching_up {
            0
        } else {
            self.room.join(key) as u32
        };
        let online = self.online() + usize::from(catching_up);
        let plain = self.conns.get(key).is_some_and(|c| c.plain);
        let muted = self.moderation.is_muted(&user, now);
        let Some(chat) = self.conns.get_mut(key).and_then(Connection::chat_mut) else {
            return;
        };
        let watching = presence.then(|| (self.watchers.join(key) as u32, online as u32));
        chat.member = Some(Member {
            user,
            index,
            catching_up,
            muted,
            joined_at: (now / 1000) as u32,
            watching,
        });
        self.stats.joins += 1;
        self.plain_members += usize::from(plain);
        self.presence_pending = !self.watchers.is_empty();
        if catching_up {
            self.start_catch_up(key, catchup, now);
        }
        if presence {
            // The newcomer learns the count at once; the others at the next presence tick.
            self.stats.presence_sent += 1;
            self.queue(key, protocol::presence_frame(online).into());
        }
    }

    /// Members: those in the room and those catching up.
    pub(super) fn online(&self) -> usize {
        self.room.len() + self.catching_up.len()
    }

    /// Takes a member out of the room and the watchers; only `transition` calls it.
    pub(super) fn leave_room(&mut self, member: &Member, key: usize) {
        if self.conns.get(key).is_some_and(|c| c.plain) {
            self.plain_members -= 1;
        }
        if member.catching_up {
            self.drop_catch_up(key);
        } else if let Some(moved) = self.room.leave(key, member.index as usize)
            && let Some(m) = self.member_mut(moved)
        {
            m.index = member.index;
        }
        if let Some((index, _)) = member.watching
            && let Some(moved) = self.watchers.leave(key, index as usize)
            && let Some((moved_index, _)) = self.member_mut(moved).and_then(|m| m.watching.as_mut())
        {
            *moved_index = index;
        }
        self.presence_pending = !self.watchers.is_empty();
    }

    pub(super) fn member(&self, key: usize) -> Option<&Member> {
        match &self.conns.get(key)?.phase {
            Phase::Open { chat, .. } => chat.member.as_ref(),
            _ => None,
        }
    }

    pub(super) fn member_mut(&mut self, key: usize) -> Option<&mut Member> {
        self.conns
            .get_mut(key)
            .and_then(Connection::chat_mut)
            .and_then(|c| c.member.as_mut())
    }

    /// Tells each watcher the room's size if it changed since they last heard,
    /// at most once per `PRESENCE_INTERVAL_MS`, so a churning room costs them
    /// little. Nobody watching (the load tools) costs nothing. One frame,
    /// built once and shared, like a chat.
    pub(super) fn send_presence(&mut self, now: u64) {
        if !self.presence_pending || now < self.presence_sent_at + PRESENCE_INTERVAL_MS {
            return;
        }
        self.presence_pending = false;
        self.presence_sent_at = now;
        let count = self.online();
        let mut frame: Option<Rc<[u8]>> = None;
        for i in 0..self.watchers.len() {
            let key = self.watchers.members()[i];
            let Some((_, seen)) = self.member_mut(key).and_then(|m| m.watching.as_mut()) else {
                continue;
            };
            if *seen == count as u32 {
                continue;
            }
            *seen = count as u32;
            let frame = frame.get_or_insert_with(|| protocol::presence_frame(count).into());
            let frame = Rc::clone(frame);
            self.stats.presence_sent += 1;
            self.queue(key, frame);
        }
    }

    /// The hot path. The chat was serialized once into `frame`; each recipient
    /// gets a reference-count bump and a queue slot: no per-recipient
    /// allocation, copy or JSON work. Nothing is written here: the driver
    /// flushes each recipient once at the end of the turn, however many
    /// chats it got, in one `writev`.
    /// `id` is the one written in `frame`.
    pub(super) fn relay(&mut self, sender: Option<usize>, id: u64, frame: Rc<[u8]>, now: u64) {
        self.stats.chats_relayed += 1;
        // Kept for joins that ask for it: the same frame, one more reference.
        self.history.record(id, Rc::clone(&frame));
        let limit = self.config.max_backlog;
        let mut delivered = 0;
        // Plain-text members get `name: text`: made once too, if any is here.
        let line: Option<Rc<[u8]>> = match self.plain_members {
            0 => None,
            _ => frame::parse_header(&frame, Role::Client)
                .ok()
                .flatten()
                .and_then(|(_, header)| protocol::plain_line(&frame[header..]))
                .map(Rc::from),
        };
        for &key in self.room.members() {
            if Some(key) == sender {
                continue;
            }
            let Some(conn) = self.conns.get_mut(key) else {
                continue;
            };
            if conn.outbox.cost() >= limit {
                self.slow.push(key);
                continue;
            }
            let frame = match (conn.plain, &line) {
                (false, _) => &frame,
                (true, Some(line)) => line,
                (true, None) => continue,
            };
            conn.outbox.push(Rc::clone(frame));
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
            delivered += 1;
        }
        self.stats.deliveries += delivered;
        // A catch-up waiting for the id its client saw elsewhere may finish now.
        if self.awaiting > 0 {
            self.feed_awaiting(now);
        }
        while let Some(key) = self.slow.pop() {
            self.close(key, CloseCause::SlowConsumer, now);
        }
    }
}
