//! Closing a connection: the one way it changes phase, our close frame and
//! what follows it, and shutdown.

use super::*;

impl Engine {
    /// The one way a connection changes phase. Leaving `Open` takes it out of
    /// the room, so membership cannot outlive the phase that holds it.
    pub(super) fn transition(&mut self, key: usize, next: impl FnOnce(Phase) -> Phase) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let mut old = std::mem::replace(&mut conn.phase, Phase::Closed);
        let member = match &mut old {
            Phase::Open { chat, .. } => chat.member.take(),
            _ => None,
        };
        conn.phase = next(old);
        if let Some(member) = member {
            self.leave_room(&member, key);
        }
    }

    /// Starts a close from our side: the close frame with the cause's code,
    /// counted under the cause, then what the cause says comes next.
    pub(super) fn close(&mut self, key: usize, cause: CloseCause, now: u64) {
        self.close_saying(key, cause, cause.reason(), now);
    }

    /// `close`, with `reason` in the close frame instead of the cause's own
    /// (an operator's, for a kick or a ban: at most 123 bytes).
    pub(super) fn close_saying(&mut self, key: usize, cause: CloseCause, reason: &str, now: u64) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        // Only one close frame per connection: after ours (or theirs) nothing
        // more is sent, and nothing more is counted.
        let open = matches!(conn.phase, Phase::Open { .. });
        if open {
            *cause.counter(&mut self.stats) += 1;
            self.queue(key, frame::server_close(cause.code(), reason).into());
        }
        match cause.after() {
            After::AwaitPeerClose if open => {
                self.transition(key, |phase| match phase {
                    Phase::Open { reader, .. } => Phase::Closing { reader },
                    other => other,
                });
                self.set_timer(key, now + CLOSE_WAIT_MS);
            }
            After::AwaitPeerClose => {}
            After::Drain => self.drain(key, now),
            After::Abandon => self.abandon(key),
        }
    }

    /// The last output goes out, then the write side is shut; input is discarded until EOF.
    pub(super) fn drain(&mut self, key: usize, now: u64) {
        self.transition(key, |_| Phase::Draining { write_shut: false });
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        // Reading now only discards, so it can resume; we need it to see the peer's FIN.
        if conn.read_paused {
            conn.read_paused = false;
            self.actions.push_back(Action::ResumeReading(key));
        }
        self.set_timer(key, now + LINGER_MS);
        self.mark_dirty(key);
    }

    /// One last flush, then the socket is closed, without waiting for the peer.
    pub(super) fn abandon(&mut self, key: usize) {
        self.transition(key, |_| Phase::Abandoned);
        self.mark_dirty(key);
    }

    /// Takes the connection out of the engine and tells the driver to close it.
    pub(super) fn drop_conn(&mut self, key: usize) {
        if self
            .conns
            .get(key)
            .is_none_or(|c| matches!(c.phase, Phase::Closed))
        {
            return;
        }
        self.transition(key, |_| Phase::Closed);
        if let Some(limit) = &mut self.ip_limit {
            limit.release(key);
        }
        self.actions.push_back(Action::Close(key));
    }

    /// Stops accepting and sends close 1001 to every open connection.
    pub(super) fn begin_shutdown(&mut self, now: u64) {
        self.state = RunState::ShuttingDown {
            until: now + SHUTDOWN_GRACE_MS,
        };
        self.actions.push_back(Action::StopListening);
        let keys: Vec<usize> = self.conns.iter().map(|(key, _)| key).collect();
        for key in keys {
            match self.conns.get(key).map(|c| &c.phase) {
                Some(Phase::Handshaking { .. } | Phase::AdminBody(_)) => self.drop_conn(key),
                Some(Phase::Open { .. }) => self.close(key, CloseCause::Shutdown, now),
                _ => {}
            }
        }
    }
}
