//! The HTTP/1.1 request that opens every connection: routing and the
//! RFC 6455 §4.2.1 upgrade checks.
//!
//! Pure code: bytes in, `Ok(None)` while the request head is incomplete,
//! else what it asks for and how many bytes the head took (anything after
//! it already belongs to the WebSocket stream).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

/// Largest request head we accept; beyond it the answer is 431.
pub const MAX_HEAD: usize = 8 * 1024;
/// Most header fields we look at; more is answered like an oversized head.
const MAX_HEADERS: usize = 64;
/// RFC 6455 §1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// What a complete, acceptable request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /ws` with a valid upgrade: the `Sec-WebSocket-Accept` value to answer with.
    Upgrade { accept: String },
    /// `GET /`: the browser page.
    Page,
    /// `GET /health`.
    Health,
    /// `GET /stats`.
    Stats,
}

/// Why a request is refused. Each maps to one HTTP status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reject {
    /// Not HTTP, or an upgrade missing a required header.
    BadRequest,
    /// Unknown path.
    NotFound,
    /// A known path with a method other than GET.
    MethodNotAllowed,
    /// `Sec-WebSocket-Version` missing or not 13.
    UpgradeRequired,
    /// A browser upgrade from an Origin not in `--allowed-origin`.
    ForbiddenOrigin,
    /// The head is over `MAX_HEAD` bytes or has too many fields.
    HeadTooLarge,
    /// The server is at `--max-conns`.
    Unavailable,
    /// The client's address is at `--max-conns-per-ip`.
    TooManyFromAddress,
}

impl Reject {
    /// Status code and reason phrase.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Self::BadRequest => (400, "Bad Request"),
            Self::NotFound => (404, "Not Found"),
            Self::MethodNotAllowed => (405, "Method Not Allowed"),
            Self::ForbiddenOrigin => (403, "Forbidden"),
            Self::UpgradeRequired => (426, "Upgrade Required"),
            Self::HeadTooLarge => (431, "Request Header Fields Too Large"),
            Self::Unavailable => (503, "Service Unavailable"),
            Self::TooManyFromAddress => (429, "Too Many Requests"),
        }
    }
}

/// Parses the request head at the start of `buf`. A non-empty `allowed_origins`
/// restricts which browser Origins may upgrade.
pub fn parse(buf: &[u8], allowed_origins: &[String]) -> Result<Option<(Route, usize)>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest);
    };
    let path = target.split('?').next().unwrap_or(target);
    if !matches!(path, "/ws" | "/" | "/health" | "/stats") {
        return Err(Reject::NotFound);
    }
    if method != "GET" {
        return Err(Reject::MethodNotAllowed);
    }
    let route = match path {
        "/" => Route::Page,
        "/health" => Route::Health,
        "/stats" => Route::Stats,
        _ => upgrade(version, req.headers, allowed_origins)?,
    };
    Ok(Some((route, head_len)))
}

/// RFC 6455 §4.2.1: the checks a WebSocket opening handshake must pass.
fn upgrade(
    version: u8,
    headers: &[httparse::Header<'_>],
    allowed_origins: &[String],
) -> Result<Route, Reject> {
    if version != 1 {
        return Err(Reject::BadRequest);
    }
    let single = |name: &str| -> Result<&[u8], Reject> {
        let mut values = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
        match (values.next(), values.next()) {
            (Some(h), None) => Ok(h.value.trim_ascii()),
            _ => Err(Reject::BadRequest),
        }
    };
    single("Host")?;
    if !has_token(headers, "Upgrade", "websocket") || !has_token(headers, "Connection", "upgrade") {
        return Err(Reject::BadRequest);
    }
    let key = single("Sec-WebSocket-Key")?;
    if BASE64.decode(key).map_or(true, |k| k.len() != 16) {
        return Err(Reject::BadRequest);
    }
    // Browsers always send Origin, and a cross-site page cannot forge it. A
    // client that sends none is not a browser, so the check does not apply.
    let mut origins = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Origin"));
    if let Some(origin) = origins.next()
        && !allowed_origins.is_empty()
        && (origins.next().is_some()
            || !allowed_origins.iter().any(|allowed| {
                allowed
                    .as_bytes()
                    .eq_ignore_ascii_case(origin.value.trim_ascii())
            }))
    {
        return Err(Reject::ForbiddenOrigin);
    }
    if single("Sec-WebSocket-Version") != Ok(b"13") {
        return Err(Reject::UpgradeRequired);
    }
    Ok(Route::Upgrade {
        accept: accept_key(key),
    })
}

/// Whether a comma-separated header `name` (any of its fields) lists `token`,
/// both compared case-insensitively, as `Upgrade` and `Connection` are.
pub fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(ACCEPT_GUID);
    BASE64.encode(sha.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /ws HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn with(find: &str, replace: &str) -> String {
        assert!(GOOD.contains(find));
        GOOD.replacen(find, replace, 1)
    }

    #[test]
    fn rfc_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn valid_upgrade_and_the_bytes_after_it() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let (route, n) = parse(&bytes, &[]).unwrap().unwrap();
        assert_eq!(
            route,
            Route::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into()
            }
        );
        assert_eq!(n, GOOD.len());
    }

    #[test]
    fn incomplete_at_every_split() {
        for cut in 0..GOOD.len() {
            assert_eq!(parse(&GOOD.as_bytes()[..cut], &[]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = with("Upgrade: websocket", "upGRADE: WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE");
        assert!(matches!(
            parse(req.as_bytes(), &[]),
            Ok(Some((Route::Upgrade { .. }, _)))
        ));
    }

    #[test]
    fn refusals_map_to_statuses() {
        let cases = [
            (with("GET /ws", "GET /nope"), 404),
            (with("GET /ws", "POST /ws"), 405),
            (
                with("Sec-WebSocket-Version: 13", "Sec-WebSocket-Version: 8"),
                426,
            ),
            (with("Sec-WebSocket-Version: 13\r\n", ""), 426),
            (with("Upgrade: websocket\r\n", ""), 400),
            (with("Connection: Upgrade", "Connection: keep-alive"), 400),
            (with("Host: example.com\r\n", ""), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "c2hvcnQ="), 400),
            (with("dGhlIHNhbXBsZSBub25jZQ==", "not base64!"), 400),
            (with("HTTP/1.1", "HTTP/1.0"), 400),
            ("\x16\x03\x01\x02\x00garbage\r\n\r\n".to_string(), 400),
        ];
        for (req, code) in cases {
            let got = parse(req.as_bytes(), &[]).map_err(|r| r.status().0);
            assert_eq!(got, Err(code), "{req:?}");
        }
    }

    #[test]
    fn origins_outside_the_allowed_list_get_403() {
        let allowed = [
            "https://chat.example".to_string(),
            "http://localhost:8080".to_string(),
        ];
        let with_origin = |origin: &str| {
            with(
                "Host: example.com\r\n",
                &format!("Host: example.com\r\nOrigin: {origin}\r\n"),
            )
        };
        let from = |origin: &str| parse(with_origin(origin).as_bytes(), &allowed);
        assert!(matches!(
            from("https://chat.example"),
            Ok(Some((Route::Upgrade { .. }, _)))
        ));
        assert!(matches!(
            from("HTTP://LOCALHOST:8080"),
            Ok(Some((Route::Upgrade { .. }, _)))
        ));
        assert_eq!(from("https://evil.example"), Err(Reject::ForbiddenOrigin));
        assert_eq!(from("null"), Err(Reject::ForbiddenOrigin));
        // No Origin: not a browser. No list: every Origin passes.
        assert!(matches!(
            parse(GOOD.as_bytes(), &allowed),
            Ok(Some((Route::Upgrade { .. }, _)))
        ));
        let evil = with_origin("https://evil.example");
        assert!(matches!(
            parse(evil.as_bytes(), &[]),
            Ok(Some((Route::Upgrade { .. }, _)))
        ));
        // Two Origin headers are refused rather than guessed at.
        let two = with_origin("https://chat.example\r\nOrigin: https://evil.example");
        assert_eq!(
            parse(two.as_bytes(), &allowed),
            Err(Reject::ForbiddenOrigin)
        );
    }

    #[test]
    fn oversized_heads_get_431() {
        let big = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(parse(big.as_bytes(), &[]), Err(Reject::HeadTooLarge));
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET /ws HTTP/1.1\r\n{many}\r\n");
        assert_eq!(parse(req.as_bytes(), &[]), Err(Reject::HeadTooLarge));
    }

    #[test]
    fn other_routes_and_query_strings() {
        let health = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(parse(health, &[]), Ok(Some((Route::Health, health.len()))));
        let stats = b"GET /stats?pretty HTTP/1.0\r\n\r\n";
        assert_eq!(parse(stats, &[]), Ok(Some((Route::Stats, stats.len()))));
    }
}
