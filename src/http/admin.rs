//! The admin API's requests (`/admin/...`, served on the private listener
//! with `--admin-token-file`): which endpoint, the bearer token's
//! fingerprint, and the command a JSON body gives, validated strictly.
//! Every mistake is a `Refusal`, mapped to its status here. Pure code.

use serde::Deserialize;
use sha1::{Digest, Sha1};

use crate::chat::protocol;
use crate::http::proxy::Cidr;

/// Largest request body; more is refused with 413 before it is read.
pub const MAX_BODY: usize = 4096;
/// Longest reason for a kick or a ban, in bytes (it goes in a close frame,
/// after "kicked by the operator: ": at most 123 in all).
pub const MAX_REASON: usize = 96;
/// Longest notice, in bytes.
pub const MAX_NOTICE: usize = 2000;
/// Longest ban or mute: a year.
pub const MAX_SECONDS: u64 = 366 * 86_400;

/// What an admin request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /admin/members`
    Members,
    /// `GET /admin/bans`
    Bans,
    /// `POST /admin/kick`
    Kick,
    /// `POST /admin/ban`
    Ban,
    /// `DELETE /admin/ban`
    Unban,
    /// `POST /admin/mute`
    Mute,
    /// `DELETE /admin/mute`
    Unmute,
    /// `POST /admin/announce`
    Announce,
}

impl Endpoint {
    /// The endpoint's name in logs and in what instances tell each other through Redis.
    pub fn name(self) -> &'static str {
        match self {
            Self::Members => "members",
            Self::Bans => "bans",
            Self::Kick => "kick",
            Self::Ban => "ban",
            Self::Unban => "unban",
            Self::Mute => "mute",
            Self::Unmute => "unmute",
            Self::Announce => "announce",
        }
    }

    /// The command endpoint named `name` (as `name()` gives it).
    pub fn from_name(name: &[u8]) -> Option<Self> {
        [
            Self::Kick,
            Self::Ban,
            Self::Unban,
            Self::Mute,
            Self::Unmute,
            Self::Announce,
        ]
        .into_iter()
        .find(|e| e.name().as_bytes() == name)
    }

    /// Whether it takes a JSON body (it changes something).
    fn has_body(self) -> bool {
        !matches!(self, Self::Members | Self::Bans)
    }
}

/// A token's fingerprint (SHA-1): tokens are compared by it, in time that
/// does not depend on where they differ, nor on their lengths.
pub type Fingerprint = [u8; 20];

/// The fingerprint of `token`.
pub fn fingerprint(token: &[u8]) -> Fingerprint {
    Sha1::digest(token).into()
}

/// Whether two fingerprints are equal, looking at every byte whatever the first difference.
pub fn same(a: &Fingerprint, b: &Fingerprint) -> bool {
    a.iter().zip(b).fold(0, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads the token from `--admin-token-file` (one line; a trailing line
/// break is dropped): 16 to 256 visible ASCII characters.
pub fn token_from_file(path: &std::path::Path) -> Result<Fingerprint, String> {
    let what = |e: &str| format!("--admin-token-file {}: {e}", path.display());
    let text = std::fs::read(path).map_err(|e| what(&e.to_string()))?;
    let token = text.strip_suffix(b"\n").unwrap_or(&text);
    let token = token.strip_suffix(b"\r").unwrap_or(token);
    if !(16..=256).contains(&token.len()) || !token.iter().all(u8::is_ascii_graphic) {
        return Err(what(
            "the token must be 16 to 256 visible ASCII characters on one line",
        ));
    }
    Ok(fingerprint(token))
}

/// A complete `/admin/...` request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminHead {
    /// The fingerprint of the `Authorization: Bearer` token, if one was sent.
    pub bearer: Option<Fingerprint>,
    /// The endpoint and its body's length, or what is wrong with the request.
    pub asked: Result<(Endpoint, usize), Refusal>,
}

/// Why an admin request is refused. Each maps to one status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No such endpoint (or no admin API here): 404.
    NotFound,
    /// No token, or the wrong one: 401.
    Unauthorized,
    /// A method the path does not take: 405, with the ones it does.
    MethodNotAllowed(&'static str),
    /// A body without `Content-Length` (chunked, say): 411.
    LengthRequired,
    /// A body over `MAX_BODY`: 413.
    TooLarge,
    /// A body that is not `application/json`: 415.
    UnsupportedMediaType,
    /// A body that is not the endpoint's JSON, or a value out of range: 400.
    Invalid(String),
    /// No member, ban or mute of that name or address: 404.
    NoSuch(String),
    /// More bans or mutes than the server keeps: 409.
    Full(&'static str),
    /// A lift with `--redis` while Redis is down: 503 (done here only, the
    /// ban or mute Redis keeps would come back).
    RedisDown,
}

impl Refusal {
    /// Status code and reason phrase.
    pub fn status(&self) -> (u16, &'static str) {
        match self {
            Self::NotFound | Self::NoSuch(_) => (404, "Not Found"),
            Self::Unauthorized => (401, "Unauthorized"),
            Self::MethodNotAllowed(_) => (405, "Method Not Allowed"),
            Self::LengthRequired => (411, "Length Required"),
            Self::TooLarge => (413, "Content Too Large"),
            Self::UnsupportedMediaType => (415, "Unsupported Media Type"),
            Self::Invalid(_) => (400, "Bad Request"),
            Self::Full(_) => (409, "Conflict"),
            Self::RedisDown => (503, "Service Unavailable"),
        }
    }

    /// The whole response: `{"error": ...}`, `Connection: close`.
    pub fn response(&self) -> Vec<u8> {
        let (code, reason) = self.status();
        let said = match self {
            Self::NotFound => "no such endpoint".into(),
            Self::Unauthorized => "a valid Authorization: Bearer token is required".into(),
            Self::MethodNotAllowed(allow) => format!("this endpoint takes {allow}"),
            Self::LengthRequired => "a body needs Content-Length".into(),
            Self::TooLarge => format!("a body may have at most {MAX_BODY} bytes"),
            Self::UnsupportedMediaType => "the body must be Content-Type: application/json".into(),
            Self::Invalid(why) | Self::NoSuch(why) => why.clone(),
            Self::Full(what) => format!("too many {what}: lift some first"),
            Self::RedisDown => "Redis is down: a lift made now would not reach the other \
                                instances and would come back from Redis; try again"
                .into(),
        };
        let extra = match self {
            Self::Unauthorized => "WWW-Authenticate: Bearer\r\n".to_string(),
            Self::MethodNotAllowed(allow) => format!("Allow: {allow}\r\n"),
            Self::RedisDown => "Retry-After: 1\r\n".into(),
            _ => String::new(),
        };
        let body = format!("{{\"error\":{}}}\n", protocol::name_literal(&said));
        super::response::response(code, reason, "application/json", &extra, body.as_bytes())
    }
}

/// Reads the head of a request for `path` (under `/admin`).
pub fn head(method: &str, path: &str, headers: &[httparse::Header<'_>]) -> AdminHead {
    let bearer = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("Authorization"))
        .and_then(|h| {
            let value = h.value.trim_ascii();
            let (scheme, token) = value.split_at_checked(7)?;
            scheme
                .eq_ignore_ascii_case(b"Bearer ")
                .then(|| fingerprint(token.trim_ascii()))
        });
    AdminHead {
        bearer,
        asked: asked(method, path, headers),
    }
}

fn asked(
    method: &str,
    path: &str,
    headers: &[httparse::Header<'_>],
) -> Result<(Endpoint, usize), Refusal> {
    use Endpoint::*;
    let endpoint = match (path, method) {
        ("/admin/members", "GET") => Members,
        ("/admin/bans", "GET") => Bans,
        ("/admin/kick", "POST") => Kick,
        ("/admin/ban", "POST") => Ban,
        ("/admin/ban", "DELETE") => Unban,
        ("/admin/mute", "POST") => Mute,
        ("/admin/mute", "DELETE") => Unmute,
        ("/admin/announce", "POST") => Announce,
        ("/admin/members" | "/admin/bans", _) => return Err(Refusal::MethodNotAllowed("GET")),
        ("/admin/kick" | "/admin/announce", _) => return Err(Refusal::MethodNotAllowed("POST")),
        ("/admin/ban" | "/admin/mute", _) => {
            return Err(Refusal::MethodNotAllowed("POST, DELETE"));
        }
        _ => return Err(Refusal::NotFound),
    };
    let field = |name: &str| {
        headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.trim_ascii())
    };
    let chunked = field("Transfer-Encoding").is_some();
    let length = match field("Content-Length") {
        None if chunked => return Err(Refusal::LengthRequired),
        None => 0,
        Some(digits) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<usize>().ok())
                .unwrap_or(usize::MAX)
        }
        Some(_) => return Err(Refusal::Invalid("Content-Length is not a number".into())),
    };
    if !endpoint.has_body() {
        return match length {
            0 if !chunked => Ok((endpoint, 0)),
            _ => Err(Refusal::Invalid("this endpoint takes no body".into())),
        };
    }
    if chunked && length > 0 {
        return Err(Refusal::Invalid(
            "Content-Length and Transfer-Encoding together".into(),
        ));
    }
    let json = field("Content-Type").is_some_and(|t| {
        let media = t.split(|&b| b == b';').next().unwrap_or_default();
        media.trim_ascii().eq_ignore_ascii_case(b"application/json")
    });
    if !json {
        return Err(Refusal::UnsupportedMediaType);
    }
    if length > MAX_BODY {
        return Err(Refusal::TooLarge);
    }
    Ok((endpoint, length))
}

/// What an operator asked to be done: the validated body of a command
/// endpoint. Instances pass it to each other through Redis as its
/// endpoint's name and `body()`, read back by `command` like a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Close every connection joined under this name (4001).
    Kick { user: String, reason: String },
    /// Close what matches and refuse it (403) for `seconds`.
    Ban {
        block: Cidr,
        seconds: u64,
        reason: String,
    },
    /// Lift the ban on exactly this block.
    Unban { block: Cidr },
    /// Drop this name's chats for `seconds`, without telling it.
    Mute { user: String, seconds: u64 },
    /// Lift the mute on this name.
    Unmute { user: String },
    /// A notice from the operator to everyone.
    Announce { text: String },
}

/// Every field a body may have; which ones an endpoint takes is checked
/// after. An unknown field, or one given twice, is a mistake, not something
/// to ignore.
#[derive(Default)]
struct Body {
    user: Option<String>,
    address: Option<String>,
    seconds: Option<u64>,
    reason: Option<String>,
    text: Option<String>,
}

/// Read by hand rather than derived: an object only, no `null`s, and a
/// third of the derived code in the binary.
impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = Body;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Body, A::Error> {
                use serde::de::Error;
                let mut b = Body::default();
                while let Some(name) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let twice = match &*name {
                        "user" => b.user.replace(map.next_value()?).is_some(),
                        "address" => b.address.replace(map.next_value()?).is_some(),
                        "seconds" => b.seconds.replace(map.next_value()?).is_some(),
                        "reason" => b.reason.replace(map.next_value()?).is_some(),
                        "text" => b.text.replace(map.next_value()?).is_some(),
                        _ => return Err(A::Error::custom("unknown field")),
                    };
                    if twice {
                        return Err(A::Error::custom("a field twice"));
                    }
                }
                Ok(b)
            }
        }
        deserializer.deserialize_map(Fields)
    }
}

/// The command `endpoint`'s JSON `body` gives, checked: names by the
/// room's rules, addresses and blocks as `--trusted-proxy` takes them,
/// `seconds` from 1 to a year, reasons and notices of bounded length
/// without control characters.
pub fn command(endpoint: Endpoint, body: &[u8]) -> Result<Command, Refusal> {
    // (serde_json's own message would cost the binary its formatting for this alone.)
    let b: Body = protocol::from_bytes(body).ok_or_else(|| {
        Refusal::Invalid("not a JSON object of the endpoint's fields (README, Moderation)".into())
    })?;
    // (field, given, taken by this endpoint, required by it)
    use Endpoint::*;
    let fields = [
        (
            "user",
            b.user.is_some(),
            matches!(endpoint, Kick | Mute | Unmute),
            true,
        ),
        (
            "address",
            b.address.is_some(),
            matches!(endpoint, Ban | Unban),
            true,
        ),
        (
            "seconds",
            b.seconds.is_some(),
            matches!(endpoint, Ban | Mute),
            true,
        ),
        (
            "reason",
            b.reason.is_some(),
            matches!(endpoint, Kick | Ban),
            false,
        ),
        ("text", b.text.is_some(), endpoint == Announce, true),
    ];
    for (name, given, taken, required) in fields {
        if given && !taken {
            return Err(Refusal::Invalid(format!(
                "\"{name}\" is not taken by {}",
                endpoint.name()
            )));
        }
        if taken && required && !given {
            return Err(Refusal::Invalid(format!("\"{name}\" is required")));
        }
    }
    let user = || match b.user.clone() {
        Some(user) if protocol::valid_name(&user) => Ok(user),
        _ => Err(Refusal::Invalid(
            "\"user\" is not a valid name (docs/protocol.md, Names)".into(),
        )),
    };
    let block = || {
        Cidr::parse(b.address.as_deref().unwrap_or_default())
            .map_err(|e| Refusal::Invalid(format!("\"address\": {e}")))
    };
    Ok(match endpoint {
        Kick => Command::Kick {
            user: user()?,
            reason: reason(b.reason.clone())?,
        },
        Mute => Command::Mute {
            user: user()?,
            seconds: seconds(b.seconds)?,
        },
        Unmute => Command::Unmute { user: user()? },
        Ban => Command::Ban {
            block: block()?,
            seconds: seconds(b.seconds)?,
            reason: reason(b.reason.clone())?,
        },
        Unban => Command::Unban { block: block()? },
        Announce => {
            let text = b.text.unwrap_or_default();
            if text.is_empty() || text.len() > MAX_NOTICE || has_controls(&text) {
                return Err(Refusal::Invalid(format!(
                    "\"text\" must be 1 to {MAX_NOTICE} bytes, without control characters"
                )));
            }
            Command::Announce { text }
        }
        Members | Bans => return Err(Refusal::NotFound),
    })
}

fn seconds(seconds: Option<u64>) -> Result<u64, Refusal> {
    seconds
        .filter(|s| (1..=MAX_SECONDS).contains(s))
        .ok_or_else(|| Refusal::Invalid(format!("\"seconds\" must be 1 to {MAX_SECONDS}")))
}

/// A given reason, checked (also one kept in Redis), or "" (the close
/// code's own reason then).
pub fn reason(reason: Option<String>) -> Result<String, Refusal> {
    let reason = reason.unwrap_or_default();
    match reason.len() > MAX_REASON || has_controls(&reason) {
        true => Err(Refusal::Invalid(format!(
            "\"reason\" may have at most {MAX_REASON} bytes, without control characters"
        ))),
        false => Ok(reason),
    }
}

fn has_controls(text: &str) -> bool {
    text.chars().any(char::is_control)
}

impl Command {
    /// The endpoint that gives this command.
    pub fn endpoint(&self) -> Endpoint {
        match self {
            Self::Kick { .. } => Endpoint::Kick,
            Self::Ban { .. } => Endpoint::Ban,
            Self::Unban { .. } => Endpoint::Unban,
            Self::Mute { .. } => Endpoint::Mute,
            Self::Unmute { .. } => Endpoint::Unmute,
            Self::Announce { .. } => Endpoint::Announce,
        }
    }

    /// Its body as JSON: `command(self.endpoint(), body)` gives it back.
    pub fn body(&self) -> String {
        let mut fields: Vec<(&str, String)> = Vec::new();
        let mut text =
            |name, value: &str| fields.push((name, protocol::name_literal(value).into()));
        match self {
            Self::Kick { user, reason } => {
                text("user", user);
                if !reason.is_empty() {
                    text("reason", reason);
                }
            }
            Self::Mute { user, .. } | Self::Unmute { user } => text("user", user),
            Self::Ban { block, reason, .. } => {
                text("address", &block.to_string());
                if !reason.is_empty() {
                    text("reason", reason);
                }
            }
            Self::Unban { block } => text("address", &block.to_string()),
            Self::Announce { text: notice } => text("text", notice),
        }
        if let Self::Mute { seconds, .. } | Self::Ban { seconds, .. } = self {
            fields.push(("seconds", seconds.to_string()));
        }
        let fields: Vec<String> = fields
            .iter()
            .map(|(name, value)| format!("\"{name}\":{value}"))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(name: &'static str, value: &'static str) -> httparse::Header<'static> {
        httparse::Header {
            name,
            value: value.as_bytes(),
        }
    }

    #[test]
    fn heads_give_the_endpoint_or_the_status() {
        let json = [
            h("Content-Type", "application/json; charset=utf-8"),
            h("Content-Length", "20"),
        ];
        let status = |method, path, headers: &[httparse::Header<'_>]| match head(
            method, path, headers,
        )
        .asked
        {
            Ok((e, n)) => Ok((e, n)),
            Err(r) => Err(r.status().0),
        };
        assert_eq!(
            status("GET", "/admin/members", &[]),
            Ok((Endpoint::Members, 0))
        );
        assert_eq!(
            status("POST", "/admin/kick", &json),
            Ok((Endpoint::Kick, 20))
        );
        assert_eq!(
            status("DELETE", "/admin/ban", &json),
            Ok((Endpoint::Unban, 20))
        );
        assert_eq!(status("POST", "/admin/members", &json), Err(405));
        assert_eq!(status("GET", "/admin/kick", &[]), Err(405));
        assert_eq!(status("GET", "/admin/nope", &[]), Err(404));
        assert_eq!(
            status("POST", "/admin/kick", &[h("Content-Length", "2")]),
            Err(415)
        );
        assert_eq!(
            status(
                "POST",
                "/admin/kick",
                &[
                    h("Content-Type", "application/json"),
                    h("Content-Length", "4097")
                ]
            ),
            Err(413)
        );
        assert_eq!(
            status(
                "POST",
                "/admin/kick",
                &[
                    h("Content-Type", "application/json"),
                    h("Transfer-Encoding", "chunked")
                ]
            ),
            Err(411)
        );
        assert_eq!(
            status(
                "POST",
                "/admin/kick",
                &[
                    h("Content-Type", "application/json"),
                    h("Content-Length", "+3")
                ]
            ),
            Err(400)
        );
        assert_eq!(
            status("GET", "/admin/bans", &[h("Content-Length", "3")]),
            Err(400)
        );
        let with = |auth| head("GET", "/admin/bans", &[h("Authorization", auth)]).bearer;
        assert_eq!(with("Bearer abc"), Some(fingerprint(b"abc")));
        assert_eq!(with("bearer  abc "), Some(fingerprint(b"abc")));
        assert_eq!(with("Basic abc"), None);
        assert!(same(&fingerprint(b"abc"), &fingerprint(b"abc")));
        assert!(!same(&fingerprint(b"abc"), &fingerprint(b"abd")));
    }

    #[test]
    fn bodies_are_checked_and_come_back_from_their_json() {
        let ok = |e, body: &str| command(e, body.as_bytes()).expect(body);
        let refused = |e, body: &str| {
            assert!(
                matches!(command(e, body.as_bytes()), Err(Refusal::Invalid(_))),
                "{body}"
            );
        };
        for (e, body) in [
            (Endpoint::Kick, r#"{"user":"alice"}"#),
            (Endpoint::Kick, r#"{"user":"alice","reason":"spam"}"#),
            (
                Endpoint::Ban,
                r#"{"address":"::ffff:10.1.2.3/104","seconds":60,"reason":"flood"}"#,
            ),
            (Endpoint::Unban, r#"{"address":"10.0.0.0/8"}"#),
            (Endpoint::Mute, r#"{"user":"bob","seconds":5}"#),
            (Endpoint::Unmute, r#"{"user":"bob"}"#),
            (Endpoint::Announce, r#"{"text":"back in 5 minutes"}"#),
        ] {
            let c = ok(e, body);
            assert_eq!(c.endpoint(), e);
            assert_eq!(command(e, c.body().as_bytes()), Ok(c), "{body}");
        }
        let Command::Ban { block, .. } = ok(
            Endpoint::Ban,
            r#"{"address":"::ffff:10.1.2.3/104","seconds":1}"#,
        ) else {
            panic!("not a ban");
        };
        assert_eq!(block.to_string(), "10.0.0.0/8");
        for (e, body) in [
            (Endpoint::Kick, "{"),
            (Endpoint::Kick, r#"{"user":"a","extra":1}"#),
            (Endpoint::Kick, r#"{"user":" a"}"#),
            (Endpoint::Kick, r#"{"user":"*server"}"#),
            (Endpoint::Kick, r#"{"user":"alice","seconds":3}"#),
            (Endpoint::Kick, r#"{"name":"alice"}"#),
            (Endpoint::Mute, r#"{"user":"alice"}"#),
            (Endpoint::Mute, r#"{"user":"alice","seconds":0}"#),
            (Endpoint::Mute, r#"{"user":"alice","seconds":-1}"#),
            (Endpoint::Mute, r#"{"user":"alice","seconds":99999999999}"#),
            (Endpoint::Ban, r#"{"address":"10.0.0.0/33","seconds":5}"#),
            (Endpoint::Ban, r#"{"address":"example.com","seconds":5}"#),
            (Endpoint::Ban, r#"{"address":"10.0.0.1"}"#),
            (Endpoint::Unban, r#"{"address":"10.0.0.1","reason":"x"}"#),
            (Endpoint::Announce, r#"{"text":""}"#),
            (Endpoint::Announce, r#"{"text":"a\nb"}"#),
            (Endpoint::Announce, r#"[]"#),
        ] {
            refused(e, body);
        }
        let long = format!(
            r#"{{"user":"a","reason":"{}"}}"#,
            "x".repeat(MAX_REASON + 1)
        );
        refused(Endpoint::Kick, &long);
    }
}
