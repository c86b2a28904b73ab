//! What one connection's chat messages do: join, chat, ping, pong, leave.
//!
//! Pure decisions over the connection's chat state and the time passed in;
//! the event loop carries them out (room membership, fan-out, closing).

use crate::chat::protocol::{self, Catchup, Ignored, Request};
use std::net::{IpAddr, Ipv6Addr};

use crate::chat::rate_limit::TokenBucket;

/// A joined connection's identity in the room.
#[derive(Debug)]
pub struct Member {
    /// The joined name as a JSON string literal, stamped on every chat it sends.
    pub user: Box<str>,
    /// Its position in `Room::members` (unless `catching_up`). (Indices and
    /// counts are `u32`, so that `joined_at` and `muted` cost no memory.)
    pub index: u32,
    /// Being sent the chats its join asked for (`engine::catch_up`): not in
    /// the room until `joined` goes out.
    pub catching_up: bool,
    /// An operator muted its name: its chats are dropped (`POST /admin/mute`).
    pub muted: bool,
    /// When it joined: seconds since the engine started.
    pub joined_at: u32,
    /// If it asked for the online count: its position in the list of those
    /// who did, and the count it was last sent.
    pub watching: Option<(u32, u32)>,
}

/// Chat state of one open connection.
#[derive(Debug)]
pub struct ChatState {
    /// `Some` once the connection has joined.
    pub member: Option<Member>,
    /// The client's address (as `--trusted-proxy` resolves it), for bans
    /// and `/admin/members`; IPv4 as IPv4-mapped IPv6 (no tag: with it,
    /// every connection would be 8 bytes larger).
    peer: Ipv6Addr,
    bucket: TokenBucket,
    /// A plain-text client (upgraded on `/`): each text message is a chat.
    plain: Option<Plain>,
}

/// What a plain-text connection's messages are read with.
#[derive(Debug)]
struct Plain {
    /// It has sent a message: `/nick` counts only as the first.
    spoke: bool,
    /// `--max-message-size`: the chat's JSON form must fit it, as a JSON client's would.
    max_message: u32,
}

/// What the event loop must do about one text message.
#[derive(Debug)]
pub enum Outcome {
    /// Join the room under this name (a JSON literal); `presence`: it wants
    /// the online count; `catchup`: the chats to send it first.
    Join {
        user: Box<str>,
        presence: bool,
        catchup: Catchup,
    },
    /// Relay this frame (it carries the id it was given) to every other joined connection.
    Relay(Vec<u8>),
    /// A chat from a member an operator muted: dropped while the mute lasts
    /// (the engine checks it has not ended; then it is relayed after all).
    Muted(Vec<u8>),
    /// Send this frame back to the sender.
    Reply(Vec<u8>),
    /// Leave the room and close with 1000.
    Leave,
    /// A plain-text client's first message was `/nick NAME`: its name now (a JSON literal).
    Rename(Box<str>),
    /// A JSON pong: nothing to do (hearing from the client is what counts).
    Keepalive,
    /// A chat over the rate limit, dropped.
    RateLimited,
    /// Ignored, for this reason.
    Ignored(Ignored),
}

impl ChatState {
    /// A connection from `peer` that has not joined, with a full token bucket at `now` (ms).
    pub fn new(now: u64, peer: IpAddr) -> Self {
        Self {
            member: None,
            peer: match peer {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            },
            bucket: TokenBucket::full(now),
            plain: None,
        }
    }

    /// A plain-text connection (joined by the engine at once, as `guest-N`).
    pub fn plain(now: u64, peer: IpAddr, max_message: usize) -> Self {
        let plain = Plain {
            spoke: false,
            max_message: max_message.try_into().unwrap_or(u32::MAX),
        };
        Self {
            plain: Some(plain),
            ..Self::new(now, peer)
        }
    }

    /// The client's address.
    pub fn peer(&self) -> IpAddr {
        self.peer.to_canonical()
    }

    /// A plain-text message: `/nick NAME` if it is the first, else a chat
    /// (one trailing line break dropped), under the same rate limit, size
    /// limit and name rules as JSON clients.
    fn on_plain_text(&mut self, text: &str, now: u64, next_id: u64) -> Outcome {
        let Some(plain) = &mut self.plain else {
            return Outcome::Ignored(Ignored::Malformed);
        };
        let first = !std::mem::replace(&mut plain.spoke, true);
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        if first && let Some(name) = line.strip_prefix("/nick ") {
            return match protocol::valid_name(name) {
                true => Outcome::Rename(protocol::name_literal(name)),
                false => Outcome::Ignored(Ignored::InvalidName),
            };
        }
        let literal = protocol::text_literal(line);
        let too_big =
            r#"{"type":"chat","text":}"#.len() + literal.get().len() > plain.max_message as usize;
        match &self.member {
            None => Outcome::Ignored(Ignored::NotJoined),
            Some(_) if too_big => Outcome::Ignored(Ignored::Malformed),
            Some(_) if !self.bucket.try_take(now) => Outcome::RateLimited,
            Some(member) => {
                let frame = protocol::chat_frame(next_id, &member.user, &literal, None);
                match member.muted {
                    true => Outcome::Muted(frame),
                    false => Outcome::Relay(frame),
                }
            }
        }
    }

    /// Decides what a text message from this connection does at `now` (ms);
    /// a chat relayed gets the room's next id, `next_id`.
    pub fn on_text(&mut self, text: &str, now: u64, next_id: u64) -> Outcome {
        if self.plain.is_some() {
            return self.on_plain_text(text, now, next_id);
        }
        let request = match protocol::parse(text) {
            Ok(request) => request,
            Err(why) => return Outcome::Ignored(why),
        };
        match request {
            Request::Join { .. } if self.member.is_some() => {
                Outcome::Ignored(Ignored::AlreadyJoined)
            }
            Request::Join {
                user,
                presence,
                catchup,
            } => Outcome::Join {
                user: protocol::name_literal(&user),
                presence,
                catchup,
            },
            Request::Chat { text, ts } => match &self.member {
                None => Outcome::Ignored(Ignored::NotJoined),
                Some(_) if !self.bucket.try_take(now) => Outcome::RateLimited,
                Some(member) => {
                    let frame = protocol::chat_frame(next_id, &member.user, text, ts);
                    match member.muted {
                        true => Outcome::Muted(frame),
                        false => Outcome::Relay(frame),
                    }
                }
            },
            Request::Ping { ts } => Outcome::Reply(protocol::pong_frame(ts)),
            Request::Pong => Outcome::Keepalive,
            Request::Leave => Outcome::Leave,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn joined(now: u64) -> ChatState {
        let mut chat = ChatState::new(now, LOOPBACK);
        let Outcome::Join { user, presence, .. } = chat.on_text(
            r#"{"type":"join","room":"public","user":"alice","presence":true}"#,
            now,
            7,
        ) else {
            panic!("join refused");
        };
        assert_eq!((&*user, presence), ("\"alice\"", true));
        chat.member = Some(Member {
            user,
            index: 0,
            catching_up: false,
            muted: false,
            joined_at: 0,
            watching: None,
        });
        chat
    }

    #[test]
    fn chat_before_join_is_ignored_and_a_second_join_too() {
        let mut chat = ChatState::new(0, LOOPBACK);
        assert!(matches!(
            chat.on_text(r#"{"type":"chat","text":"hi"}"#, 0, 7),
            Outcome::Ignored(Ignored::NotJoined)
        ));
        let mut chat = joined(0);
        assert!(matches!(
            chat.on_text(r#"{"type":"join","user":"bob"}"#, 0, 7),
            Outcome::Ignored(Ignored::AlreadyJoined)
        ));
    }

    #[test]
    fn chats_are_stamped_with_the_joined_name() {
        let mut chat = joined(0);
        let Outcome::Relay(frame) = chat.on_text(
            r#"{"type":"chat","user":"mallory","text":"hi","ts":3}"#,
            0,
            7,
        ) else {
            panic!("not relayed");
        };
        let text = String::from_utf8_lossy(&frame[2..]);
        assert_eq!(
            text,
            r#"{"type":"chat","room":"public","id":7,"user":"alice","text":"hi","ts":3}"#
        );
    }

    #[test]
    fn a_burst_of_25_relays_10() {
        let mut chat = joined(1_000);
        let relayed = (0..25)
            .filter(|_| {
                matches!(
                    chat.on_text(r#"{"type":"chat","text":"x"}"#, 1_000, 7),
                    Outcome::Relay(_)
                )
            })
            .count();
        assert_eq!(relayed, 10);
        assert!(matches!(
            chat.on_text(r#"{"type":"chat","text":"x"}"#, 1_000, 7),
            Outcome::RateLimited
        ));
        assert!(matches!(
            chat.on_text(r#"{"type":"chat","text":"x"}"#, 1_100, 7),
            Outcome::Relay(_)
        ));
    }

    #[test]
    fn plain_text_is_a_chat_and_a_first_nick_a_name() {
        let mut chat = ChatState::plain(0, LOOPBACK, 100);
        let Outcome::Rename(name) = chat.on_text("/nick ana\n", 0, 7) else {
            panic!("no rename");
        };
        assert_eq!(&*name, "\"ana\"");
        chat.member = Some(Member {
            user: name,
            index: 0,
            catching_up: false,
            muted: false,
            joined_at: 0,
            watching: None,
        });
        // Only the first message names: later, `/nick` is said in the room.
        let Outcome::Relay(frame) = chat.on_text("/nick bob", 0, 7) else {
            panic!("not relayed");
        };
        assert_eq!(
            String::from_utf8_lossy(&frame[2..]),
            r#"{"type":"chat","room":"public","id":7,"user":"ana","text":"/nick bob"}"#
        );
        // JSON in the text is text; its JSON form must fit the size limit.
        let Outcome::Relay(frame) = chat.on_text(r#"{"type":"join"}"#, 0, 8) else {
            panic!("not relayed");
        };
        assert!(String::from_utf8_lossy(&frame).contains(r#""text":"{\"type\":\"join\"}""#));
        assert!(matches!(
            chat.on_text(&"\u{1}".repeat(20), 0, 9),
            Outcome::Ignored(Ignored::Malformed)
        ));
        let mut chat = ChatState::plain(0, LOOPBACK, 100);
        assert!(matches!(
            chat.on_text("/nick \u{202e}nimda", 0, 7),
            Outcome::Ignored(Ignored::InvalidName)
        ));
    }

    #[test]
    fn ping_pong_leave() {
        let mut chat = ChatState::new(0, LOOPBACK);
        assert!(matches!(
            chat.on_text(r#"{"type":"ping","ts":9}"#, 0, 7),
            Outcome::Reply(_)
        ));
        assert!(matches!(
            chat.on_text(r#"{"type":"pong"}"#, 0, 7),
            Outcome::Keepalive
        ));
        assert!(matches!(
            chat.on_text(r#"{"type":"leave"}"#, 0, 7),
            Outcome::Leave
        ));
        assert!(matches!(
            chat.on_text("{oops", 0, 7),
            Outcome::Ignored(Ignored::Malformed)
        ));
    }
}
