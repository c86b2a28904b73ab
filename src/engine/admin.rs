//! The admin API (`/admin/...` on the private listener, with
//! `--admin-token-file`) and moderation: who may ask, what each endpoint
//! does, and the same actions arriving from other instances through Redis.
//!
//! Nothing here is on the relay path: a kick or a ban closes connections
//! the way any close does, a mute marks the members it names (their chats
//! are dropped where they are read), a notice is one frame shared by every
//! member like a chat. Listing members and acting on a name or address
//! look at every connection: admin requests are few, authenticated, and at
//! most `PRIVATE_SLOTS` at once.

use std::fmt::Write as _;

use super::*;
use crate::chat::unicode;
use crate::http::admin::{self, AdminHead, Command, Endpoint, Refusal};

impl Engine {
    /// An `/admin/...` request head arrived; `rest` is what followed it.
    /// (`HEAD` is refused, with a head alone.)
    pub(super) fn on_admin_head(
        &mut self,
        key: usize,
        head: &AdminHead,
        head_only: bool,
        rest: &[u8],
        now: u64,
    ) {
        let Some(conn) = self.conns.get(key) else {
            return;
        };
        let peer = match &conn.phase {
            Phase::Handshaking { peer, .. } => *peer,
            _ => return,
        };
        // Only on the private listener, and only with a token: otherwise it does not exist.
        let Some(token) = self.admin_token.filter(|_| conn.private) else {
            return self.reject(key, Reject::NotFound, head_only, now);
        };
        if !head.bearer.is_some_and(|b| admin::same(&b, &token)) {
            self.stats.admin_unauthorized += 1;
            let answer = Refusal::Unauthorized.response().into();
            return self.respond(key, answer, head_only, now);
        }
        self.stats.admin_requests += 1;
        let (endpoint, length) = match &head.asked {
            Ok(asked) => *asked,
            Err(refusal) => return self.refuse(key, refusal, head_only, now),
        };
        if rest.len() >= length {
            // Bytes past the body are ignored: the connection closes after the answer.
            return self.admin_request(key, endpoint, &rest[..length], peer, now);
        }
        let admin = AdminBody {
            endpoint,
            body: rest.to_vec(),
            length,
            peer,
        };
        self.transition(key, |_| Phase::AdminBody(Box::new(admin)));
    }

    /// Bytes of an admin request's body.
    pub(super) fn on_admin_body(&mut self, key: usize, data: &[u8], now: u64) {
        let Some(Phase::AdminBody(admin)) = self.conns.get_mut(key).map(|c| &mut c.phase) else {
            return;
        };
        let take = (admin.length - admin.body.len()).min(data.len());
        admin.body.extend_from_slice(&data[..take]);
        if admin.body.len() == admin.length {
            let (endpoint, peer, body) =
                (admin.endpoint, admin.peer, std::mem::take(&mut admin.body));
            self.admin_request(key, endpoint, &body, peer, now);
        }
    }

    /// How much of an admin request's body is still to come.
    pub(super) fn admin_body_left(&self, key: usize) -> usize {
        match self.conns.get(key).map(|c| &c.phase) {
            Some(Phase::AdminBody(admin)) => admin.length - admin.body.len(),
            _ => 0,
        }
    }

    fn admin_request(
        &mut self,
        key: usize,
        endpoint: Endpoint,
        body: &[u8],
        peer: IpAddr,
        now: u64,
    ) {
        let answer = match endpoint {
            Endpoint::Members => Ok(self.members_json(now)),
            Endpoint::Bans => Ok(self.bans_json(now)),
            _ => admin::command(endpoint, body)
                .and_then(|command| self.moderate(&command, &peer.to_string(), now)),
        };
        match answer {
            Ok(json) => {
                let answer = response::ok("application/json", json.as_bytes());
                self.respond(key, answer.into(), false, now);
            }
            Err(refusal) => self.refuse(key, &refusal, false, now),
        }
    }

    fn refuse(&mut self, key: usize, refusal: &Refusal, head_only: bool, now: u64) {
        self.stats.admin_refused += 1;
        self.respond(key, refusal.response().into(), head_only, now);
    }

    /// Carries out `command`, asked by `by` (a private peer's address, or
    /// another instance): here at once, and with `--redis` published to the
    /// other instances. Logged in one line, counted. The answer is the JSON
    /// the API returns.
    fn moderate(&mut self, command: &Command, by: &str, now: u64) -> Result<String, Refusal> {
        // Redis keeps bans and mutes: a lift it does not hear of would come back from it.
        let lift = matches!(command, Command::Unban { .. } | Command::Unmute { .. });
        if lift && self.cluster.as_ref().is_some_and(|c| !c.publisher_up) {
            return Err(Refusal::RedisDown);
        }
        let here = self.act(command, now)?;
        let published = match &self.cluster {
            None => "",
            Some(cluster) if cluster.publisher_up => {
                self.actions.push_back(Action::Moderate(command.clone()));
                ",\"cluster\":\"queued for every instance\""
            }
            Some(_) => ",\"cluster\":\"not sent: Redis is down; done on this instance only\"",
        };
        self.log(command, by, &here);
        Ok(format!("{{{here}{published}}}\n"))
    }

    /// A command another instance carried out, through Redis: done here too
    /// (unless it was this instance's own), without publishing it again.
    pub(super) fn moderate_from_cluster(&mut self, instance: u64, command: &Command, now: u64) {
        if self
            .cluster
            .as_ref()
            .is_some_and(|c| c.instance == instance)
        {
            return;
        }
        self.stats.admin_from_cluster += 1;
        // Refusals (full tables, nothing to lift) need no answer here.
        if let Ok(here) = self.act(command, now) {
            self.log(
                command,
                &format!("instance {instance:016x} (through Redis)"),
                &here,
            );
        }
    }

    /// Bans and mutes Redis keeps, at the subscription's start: in force here
    /// too (with the time each has left).
    pub(super) fn restrictions_from_cluster(&mut self, kept: Vec<Kept>, now: u64) {
        // At a reconnection most are in force here already: only what is new
        // looks through the connections (one pass per new ban or mute) and is said.
        let (mut bans, mut mutes) = (0, 0);
        for k in kept {
            match k {
                Kept::Ban {
                    block,
                    left_ms,
                    reason,
                } => {
                    let known = self.moderation.bans(now).iter().any(|b| b.block == block);
                    if self.moderation.ban(block, now + left_ms, &reason, now) && !known {
                        bans += 1;
                        self.close_banned(&block, &reason, now);
                    }
                }
                Kept::Mute { user, left_ms } => {
                    let literal = protocol::name_literal(&user);
                    let known = self.moderation.is_muted(&literal, now);
                    if self.moderation.mute(&literal, now + left_ms, now) && !known {
                        mutes += 1;
                        self.mark_muted(&literal, true);
                    }
                }
            }
        }
        if bans + mutes > 0 {
            self.actions.push_back(Action::Log(format!(
                "admin: {bans} bans and {mutes} mutes kept in Redis are in force here"
            )));
        }
    }

    /// Does `command` on this instance: what it did, as the API's JSON fields.
    fn act(&mut self, command: &Command, now: u64) -> Result<String, Refusal> {
        let seconds = |s: u64| now + s * 1000;
        let done = match command {
            Command::Kick { user, reason } => {
                let literal = protocol::name_literal(user);
                let keys =
                    self.keys_where(|chat| chat.member.as_ref().is_some_and(|m| m.user == literal));
                // With Redis, the name may be joined on another instance.
                if keys.is_empty() && self.cluster.is_none() {
                    return Err(Refusal::NoSuch(format!("no member is named {user:?}")));
                }
                self.stats.admin_kicks += 1;
                let said = operator_says(CloseCause::Kicked, reason);
                for &key in &keys {
                    self.close_saying(key, CloseCause::Kicked, &said, now);
                }
                format!("\"kicked\":{}", keys.len())
            }
            Command::Ban {
                block,
                seconds: s,
                reason,
            } => {
                if !self.moderation.ban(*block, seconds(*s), reason, now) {
                    return Err(Refusal::Full("bans"));
                }
                self.stats.admin_bans += 1;
                let closed = self.close_banned(block, reason, now);
                format!("\"banned\":\"{block}\",\"seconds\":{s},\"closed\":{closed}")
            }
            Command::Unban { block } => {
                if !self.moderation.unban(block, now) {
                    return Err(Refusal::NoSuch(format!("no ban on {block} is in force")));
                }
                self.stats.admin_unbans += 1;
                format!("\"lifted\":\"{block}\"")
            }
            Command::Mute { user, seconds: s } => {
                let literal = protocol::name_literal(user);
                if !self.moderation.mute(&literal, seconds(*s), now) {
                    return Err(Refusal::Full("mutes"));
                }
                self.stats.admin_mutes += 1;
                let members = self.mark_muted(&literal, true);
                format!("\"muted\":{literal},\"seconds\":{s},\"members\":{members}")
            }
            Command::Unmute { user } => {
                let literal = protocol::name_literal(user);
                if !self.moderation.unmute(&literal, now) {
                    return Err(Refusal::NoSuch(format!("{user:?} is not muted")));
                }
                self.stats.admin_unmutes += 1;
                let members = self.mark_muted(&literal, false);
                format!("\"unmuted\":{literal},\"members\":{members}")
            }
            Command::Announce { text } => {
                self.stats.admin_announces += 1;
                let sent = self.announce(text, now);
                format!("\"notified\":{sent}")
            }
        };
        Ok(done)
    }

    /// One line on stderr: what, on whom, asked by whom, what it did.
    fn log(&mut self, command: &Command, by: &str, done: &str) {
        let line = format!(
            "admin: {} {} from {by}: {{{}}}",
            command.endpoint().name(),
            command.body(),
            done
        );
        // An operator's text, shown safely (no bidi override reaches the log).
        self.actions.push_back(Action::Log(unicode::shown(&line)));
    }

    /// The open connections whose chat state passes `test`.
    fn keys_where(&self, test: impl Fn(&ChatState) -> bool) -> Vec<usize> {
        self.conns
            .iter()
            .filter_map(|(key, conn)| match &conn.phase {
                Phase::Open { chat, .. } if test(chat) => Some(key),
                _ => None,
            })
            .collect()
    }

    /// Closes every open connection from `block` (4003); how many.
    fn close_banned(&mut self, block: &Cidr, reason: &str, now: u64) -> usize {
        let said = operator_says(CloseCause::Banned, reason);
        let keys = self.keys_where(|chat| block.contains(chat.peer()));
        for &key in &keys {
            self.close_saying(key, CloseCause::Banned, &said, now);
        }
        keys.len()
    }

    /// Marks (or unmarks) every member named `literal` as muted; how many.
    fn mark_muted(&mut self, literal: &str, muted: bool) -> usize {
        let keys =
            self.keys_where(|chat| chat.member.as_ref().is_some_and(|m| *m.user == *literal));
        for &key in &keys {
            if let Some(member) = self.member_mut(key) {
                member.muted = muted;
            }
        }
        keys.len()
    }

    /// A muted member's chat: dropped while the mute lasts; once it has
    /// ended, the member is unmarked and the chat goes on.
    pub(super) fn muted_chat(&mut self, key: usize, frame: Vec<u8>, now: u64) {
        let still = self
            .member(key)
            .is_some_and(|m| self.moderation.is_muted(&m.user, now));
        if still {
            self.stats.muted_dropped += 1;
            return;
        }
        if let Some(member) = self.member_mut(key) {
            member.muted = false;
        }
        self.accept_chat(key, frame.into(), now);
    }

    /// Sends the operator's notice to every member (not kept in the
    /// history: see docs/protocol.md); how many it was queued to. One frame
    /// for JSON clients and one line for plain-text ones, each built once.
    fn announce(&mut self, text: &str, now: u64) -> usize {
        let frame: Rc<[u8]> = protocol::notice_frame(text).into();
        let line: Rc<[u8]> = protocol::notice_line(text).into();
        let limit = self.config.max_backlog;
        let keys = self.keys_where(|chat| chat.member.is_some());
        let mut sent = 0;
        for key in keys {
            let Some(conn) = self.conns.get(key) else {
                continue;
            };
            if conn.outbox.cost() >= limit {
                self.slow.push(key);
                continue;
            }
            let notice = if conn.plain { &line } else { &frame };
            self.queue(key, Rc::clone(notice));
            sent += 1;
        }
        self.stats.notices_sent += sent as u64;
        while let Some(key) = self.slow.pop() {
            self.close(key, CloseCause::SlowConsumer, now);
        }
        sent
    }

    /// `GET /admin/members`: every member of this instance.
    fn members_json(&self, now: u64) -> String {
        let instance = match &self.cluster {
            Some(c) => format!(",\"instance\":\"{:016x}\"", c.instance),
            None => String::new(),
        };
        let mut out = String::from("{\"members\":[");
        let mut count = 0;
        for (_, conn) in &self.conns {
            let Phase::Open { chat, .. } = &conn.phase else {
                continue;
            };
            let Some(member) = &chat.member else {
                continue;
            };
            if count > 0 {
                out.push(',');
            }
            count += 1;
            let _ = write!(
                out,
                "{{\"user\":{},\"address\":\"{}\",\"joined_seconds_ago\":{},\"client\":\"{}\",\"muted\":{}{instance}}}",
                member.user,
                chat.peer(),
                (now / 1000).saturating_sub(u64::from(member.joined_at)),
                if conn.plain { "plain" } else { "json" },
                member.muted && self.moderation.is_muted(&member.user, now),
            );
        }
        let _ = writeln!(out, "],\"count\":{count}{instance}}}");
        out
    }

    /// `GET /admin/bans`: the bans in force, with the seconds each has left.
    fn bans_json(&mut self, now: u64) -> String {
        let bans: Vec<String> = self
            .moderation
            .bans(now)
            .iter()
            .map(|b| {
                format!(
                    "{{\"address\":\"{}\",\"seconds_left\":{},\"reason\":{}}}",
                    b.block,
                    (b.until - now).div_ceil(1000),
                    protocol::name_literal(&b.reason)
                )
            })
            .collect();
        format!("{{\"bans\":[{}]}}\n", bans.join(","))
    }
}

/// A ban or a mute Redis keeps (`FromCluster::Kept`), with the time it has left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kept {
    Ban {
        block: Cidr,
        left_ms: u64,
        reason: String,
    },
    Mute {
        user: String,
        left_ms: u64,
    },
}

/// The close reason a kick or ban sends: the cause's own, then the operator's if given.
fn operator_says(cause: CloseCause, reason: &str) -> String {
    match reason.is_empty() {
        true => cause.reason().into(),
        false => format!("{}: {reason}", cause.reason()),
    }
}
