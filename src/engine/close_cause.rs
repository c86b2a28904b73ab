//! Why the server closes a connection. The one place where a cause meets its
//! close code, its reason, its counter and what the connection does next.

use crate::engine::stats::Counters;
use crate::websocket::close::{self, ProtocolError};

/// A close the server starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseCause {
    /// The client sent `leave`.
    Leave,
    /// A relayed chat found the client's queue over `--max-backlog`.
    SlowConsumer,
    /// `--duration` ended, or SIGINT/SIGTERM.
    Shutdown,
    /// Nothing heard from the client for `--pong-timeout`.
    KeepaliveTimeout,
    /// The client broke RFC 6455 (RFC 6455 §7.1.7: fail the connection).
    Protocol(ProtocolError),
    /// An operator kicked its name (`POST /admin/kick`).
    Kicked,
    /// An operator banned its address (`POST /admin/ban`).
    Banned,
}

/// Close code of a kick: the application range (4000-4999), which clients
/// take as final (no reconnecting).
pub const KICKED: u16 = 4001;
/// Close code of a ban (the WebSocket form of a 403).
pub const BANNED: u16 = 4003;

/// What a connection does once its close frame is queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Wait (bounded) for the peer's close frame, still answering its pings.
    AwaitPeerClose,
    /// Send what is queued, shut the write side, discard input until the peer's FIN.
    Drain,
    /// The peer is silent: one last flush, then the connection is closed.
    Abandon,
}

impl CloseCause {
    /// The close code sent.
    pub fn code(self) -> u16 {
        match self {
            Self::Leave => close::NORMAL,
            Self::SlowConsumer => close::POLICY_VIOLATION,
            Self::Shutdown | Self::KeepaliveTimeout => close::GOING_AWAY,
            Self::Protocol(error) => error.close_code(),
            Self::Kicked => KICKED,
            Self::Banned => BANNED,
        }
    }

    /// The reason sent with the code.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Leave => "bye",
            Self::SlowConsumer => "slow consumer",
            Self::Shutdown => "server shutting down",
            Self::KeepaliveTimeout => "keepalive timeout",
            Self::Protocol(error) => error.reason(),
            Self::Kicked => "kicked by the operator",
            Self::Banned => "banned by the operator",
        }
    }

    /// What happens after the close frame.
    pub fn after(self) -> After {
        match self {
            Self::Leave | Self::SlowConsumer | Self::Shutdown | Self::Kicked | Self::Banned => {
                After::AwaitPeerClose
            }
            Self::KeepaliveTimeout => After::Abandon,
            Self::Protocol(_) => After::Drain,
        }
    }

    /// The counter this cause adds to.
    pub fn counter(self, stats: &mut Counters) -> &mut u64 {
        match self {
            Self::Leave => &mut stats.closed_by_leave,
            Self::SlowConsumer => &mut stats.slow_consumer_closes,
            Self::Shutdown => &mut stats.closed_by_shutdown,
            Self::KeepaliveTimeout => &mut stats.keepalive_timeouts,
            Self::Kicked => &mut stats.closed_by_kick,
            Self::Banned => &mut stats.closed_by_ban,
            Self::Protocol(error) => match error.close_code() {
                close::INVALID_PAYLOAD => &mut stats.closed_invalid_utf8,
                close::MESSAGE_TOO_BIG => &mut stats.closed_message_too_big,
                _ => &mut stats.closed_protocol_error,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_has_its_code_and_counter() {
        let causes = [
            (CloseCause::Leave, 1000),
            (CloseCause::SlowConsumer, 1008),
            (CloseCause::Shutdown, 1001),
            (CloseCause::KeepaliveTimeout, 1001),
            (CloseCause::Protocol(ProtocolError::Unmasked), 1002),
            (CloseCause::Protocol(ProtocolError::InvalidUtf8), 1007),
            (CloseCause::Protocol(ProtocolError::MessageTooBig), 1009),
            (CloseCause::Kicked, 4001),
            (CloseCause::Banned, 4003),
        ];
        let mut stats = Counters::default();
        for (cause, code) in causes {
            assert_eq!(cause.code(), code, "{cause:?}");
            *cause.counter(&mut stats) += 1;
        }
        assert_eq!(
            (
                stats.closed_by_leave,
                stats.slow_consumer_closes,
                stats.closed_by_shutdown,
                stats.keepalive_timeouts,
                stats.closed_protocol_error,
                stats.closed_invalid_utf8,
                stats.closed_message_too_big,
                stats.closed_by_kick,
                stats.closed_by_ban
            ),
            (1, 1, 1, 1, 1, 1, 1, 1, 1)
        );
    }
}
