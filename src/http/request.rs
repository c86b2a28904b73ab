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
    /// `GET /ws` with a valid upgrade: the `Sec-WebSocket-Accept` value to
    /// answer with; `plain`: the upgrade was on `/` (plain-text mode).
    Upgrade { accept: String, plain: bool },
    /// `GET /`: the browser page.
    Page,
    /// `GET /health`.
    Health,
    /// `GET /stats`.
    Stats,
    /// `GET /metrics`: Prometheus text format.
    Metrics,
    /// `/admin/...`: the admin API (its body, if any, follows the head).
    Admin(Box<super::admin::AdminHead>),
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

/// Which browser pages may open a WebSocket (`--allowed-origin`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origins {
    /// Pages served by this host only: the `Origin` must name the `Host` the
    /// request was sent to (the default, like gorilla/websocket's and Phoenix's).
    SameAsHost,
    /// Any page (`--allowed-origin '*'`).
    Any,
    /// Pages from these origins, compared ASCII case-insensitively.
    List(Vec<String>),
}

impl Origins {
    /// The policy the `--allowed-origin` flags give: none → same as host, `*` → any.
    pub fn from_flags(flags: &[String]) -> Self {
        match flags {
            [] => Self::SameAsHost,
            _ if flags.iter().any(|f| f == "*") => Self::Any,
            _ => Self::List(flags.to_vec()),
        }
    }

    /// Whether a page from `origin` may upgrade a request sent to `host`.
    fn allow(&self, origin: &[u8], host: &[u8]) -> bool {
        match self {
            Self::Any => true,
            Self::List(list) => list
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin)),
            Self::SameAsHost => same_origin(origin, host),
        }
    }
}

/// Whether `origin` (`scheme://host[:port]`) names the same host and port as
/// the `Host` header (`host[:port]`). An absent port is the scheme's default;
/// a `Host` without one matches the origin's default (a proxy in front
/// that terminates TLS on 443 keeps `Host: chat.example`).
fn same_origin(origin: &[u8], host: &[u8]) -> bool {
    let Some((scheme, authority)) = split_once(origin, b"://") else {
        return false;
    };
    let default = if scheme.eq_ignore_ascii_case(b"https") {
        443
    } else if scheme.eq_ignore_ascii_case(b"http") {
        80
    } else {
        return false;
    };
    match (host_and_port(authority), host_and_port(host)) {
        (Some((origin_host, origin_port)), Some((host, port))) => {
            origin_host.eq_ignore_ascii_case(host)
                && origin_port.unwrap_or(default) == port.unwrap_or(default)
        }
        _ => false,
    }
}

/// `host[:port]`, with IPv6 addresses in brackets; `None` if malformed.
fn host_and_port(authority: &[u8]) -> Option<(&[u8], Option<u16>)> {
    let (host, port) = if authority.starts_with(b"[") {
        let end = authority.iter().position(|&b| b == b']')? + 1;
        match &authority[end..] {
            [] => (&authority[..end], None),
            [b':', digits @ ..] => (&authority[..end], Some(digits)),
            _ => return None,
        }
    } else {
        match authority.iter().rposition(|&b| b == b':') {
            Some(at) => (&authority[..at], Some(&authority[at + 1..])),
            None => (authority, None),
        }
    };
    // Digits only, no leading zero: an origin is serialized so (RFC 6454), and
    // `u16::from_str` would also take `+8080` and `08080`.
    let port = match port {
        Some(digits @ [b'1'..=b'9', ..]) if digits.iter().all(u8::is_ascii_digit) => {
            Some(std::str::from_utf8(digits).ok()?.parse::<u16>().ok()?)
        }
        Some(_) => return None,
        None => None,
    };
    (!host.is_empty()).then_some((host, port))
}

fn split_once<'a>(bytes: &'a [u8], separator: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let at = bytes
        .windows(separator.len())
        .position(|w| w == separator)?;
    Some((&bytes[..at], &bytes[at + separator.len()..]))
}

/// A complete request head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// What it asks for, or why it is refused.
    pub answer: Result<Route, Reject>,
    /// `HEAD`: the answer goes without its body.
    pub head_only: bool,
    /// Bytes the head took; anything after it belongs to the WebSocket stream.
    pub len: usize,
    /// The last `X-Forwarded-For` hop (used only if the peer is a trusted proxy).
    pub forwarded_for: Option<std::net::IpAddr>,
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete; `Err` for bytes that are not an HTTP request head (or one over
/// `MAX_HEAD`), answered before the method is known.
pub fn parse(buf: &[u8], origins: &Origins) -> Result<Option<Request>, Reject> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_HEAD => return Ok(None),
        Ok(_) | Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(_) => return Err(Reject::BadRequest),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Reject::BadRequest);
    };
    let head_only = method == "HEAD";
    let path = target.split('?').next().unwrap_or(target);
    let answer = match path {
        "/ws" | "/" | "/health" | "/stats" | "/metrics" if !matches!(method, "GET" | "HEAD") => {
            Err(Reject::MethodNotAllowed)
        }
        // An upgrade on `/` is a plain-text client (`websocat ws://host/`).
        "/" if !head_only
            && has_token(req.headers, "Upgrade", "websocket")
            && has_token(req.headers, "Connection", "upgrade") =>
        {
            upgrade(version, req.headers, origins, true)
        }
        "/" => Ok(Route::Page),
        "/health" => Ok(Route::Health),
        "/stats" => Ok(Route::Stats),
        "/metrics" => Ok(Route::Metrics),
        // An opening handshake is a GET (RFC 6455 §4.1).
        "/ws" if head_only => Err(Reject::BadRequest),
        "/ws" => upgrade(version, req.headers, origins, false),
        _ if path == "/admin" || path.starts_with("/admin/") => Ok(Route::Admin(Box::new(
            super::admin::head(method, path, req.headers),
        ))),
        _ => Err(Reject::NotFound),
    };
    Ok(Some(Request {
        answer,
        head_only,
        len,
        forwarded_for: super::proxy::forwarded_for(req.headers),
    }))
}

/// The request head of a connection, read as it arrives.
///
/// The first read is parsed where it lies (the whole request usually comes
/// in it). After that, bytes are kept, and the end of the head (an empty
/// line) is looked for in the new bytes only, with the two before them;
/// the head is parsed again only once its end is there, so a head trickled
/// one byte per read costs linear, not quadratic, work.
#[derive(Debug, Default)]
pub struct HeadReader {
    buf: Vec<u8>,
    /// Where the request starts: httparse skips empty lines before it, so an
    /// empty line counts as the end only after this.
    start: Option<usize>,
    /// How many times the head was handed to httparse (for the tests).
    parses: u32,
}

/// What a read of the head gave.
#[derive(Debug)]
pub enum Head<'a> {
    /// The end of the head has not arrived.
    Incomplete,
    /// The head is complete; `rest` are the bytes after it.
    Complete {
        request: Request,
        rest: &'a mut [u8],
    },
}

impl HeadReader {
    /// Takes the next bytes of the connection.
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
        origins: &Origins,
    ) -> Result<Head<'a>, Reject> {
        if self.buf.is_empty() {
            self.parses += 1;
            return match parse(input, origins)? {
                Some(request) => {
                    let rest = &mut input[request.len..];
                    Ok(Head::Complete { request, rest })
                }
                None => {
                    self.buf.extend_from_slice(input);
                    self.find_start(0);
                    Ok(Head::Incomplete)
                }
            };
        }
        let old = self.buf.len();
        self.buf.extend_from_slice(input);
        self.find_start(old);
        let from = old.saturating_sub(2).max(self.start.unwrap_or(usize::MAX));
        let ended = self.buf.get(from..).is_some_and(|new| {
            new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n")
        });
        if !ended {
            return match self.buf.len() > MAX_HEAD {
                true => Err(Reject::HeadTooLarge),
                false => Ok(Head::Incomplete),
            };
        }
        self.parses += 1;
        match parse(&self.buf, origins)? {
            Some(request) => {
                let rest = &mut self.buf[request.len..];
                Ok(Head::Complete { request, rest })
            }
            None => Ok(Head::Incomplete),
        }
    }

    /// Looks for the start of the request in the bytes from `from` on.
    fn find_start(&mut self, from: usize) {
        if self.start.is_none() {
            let skipped = self.buf[from..]
                .iter()
                .position(|&b| b != b'\r' && b != b'\n');
            self.start = skipped.map(|at| from + at);
        }
    }

    /// Bytes kept.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Bytes of the head so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no byte of the head has been kept.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Whether `key` is base64 of exactly 16 bytes (RFC 6455 §4.1): 22 symbols,
/// the last carrying 2 bits (so its low 4 are zero), then `==`.
fn is_key(key: &[u8]) -> bool {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22].iter().all(|&c| value(c).is_some())
        && value(key[21]).is_some_and(|v| v & 0x0f == 0)
}

/// RFC 6455 §4.2.1: the checks a WebSocket opening handshake must pass.
fn upgrade(
    version: u8,
    headers: &[httparse::Header<'_>],
    origins: &Origins,
    plain: bool,
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
    let host = single("Host")?;
    if !has_token(headers, "Upgrade", "websocket") || !has_token(headers, "Connection", "upgrade") {
        return Err(Reject::BadRequest);
    }
    let key = single("Sec-WebSocket-Key")?;
    if !is_key(key) {
        return Err(Reject::BadRequest);
    }
    // Browsers always send Origin, and a cross-site page cannot forge it. A
    // client that sends none is not a browser, so the check does not apply.
    // Two Origin headers are refused rather than guessed at.
    let mut origin = headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("Origin"));
    if let Some(first) = origin.next()
        && (origin.next().is_some() || !origins.allow(first.value.trim_ascii(), host))
    {
        return Err(Reject::ForbiddenOrigin);
    }
    if single("Sec-WebSocket-Version") != Ok(b"13") {
        return Err(Reject::UpgradeRequired);
    }
    Ok(Route::Upgrade {
        accept: accept_key(key),
        plain,
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

    /// What a complete request asks for, with the default origin policy.
    fn answer(request: &str) -> Result<Route, u16> {
        answer_with(request, &Origins::SameAsHost)
    }

    fn answer_with(request: &str, origins: &Origins) -> Result<Route, u16> {
        match parse(request.as_bytes(), origins) {
            Ok(Some(r)) => r.answer.map_err(|reject| reject.status().0),
            Ok(None) => panic!("incomplete: {request:?}"),
            Err(reject) => Err(reject.status().0),
        }
    }

    #[test]
    fn rfc_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn an_upgrade_on_the_root_is_plain_text_and_a_get_the_page() {
        let plain = GOOD.replacen("GET /ws ", "GET / ", 1);
        let request = parse(plain.as_bytes(), &Origins::SameAsHost)
            .unwrap()
            .unwrap();
        assert!(matches!(
            request.answer,
            Ok(Route::Upgrade { plain: true, .. })
        ));
        let page = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let request = parse(page.as_bytes(), &Origins::SameAsHost)
            .unwrap()
            .unwrap();
        assert_eq!(request.answer, Ok(Route::Page));
        // Checked like any upgrade: a bad key is refused.
        let bad = plain.replace("dGhlIHNhbXBsZSBub25jZQ==", "short");
        let request = parse(bad.as_bytes(), &Origins::SameAsHost)
            .unwrap()
            .unwrap();
        assert_eq!(request.answer, Err(Reject::BadRequest));
    }

    #[test]
    fn a_key_is_base64_of_16_bytes_exactly() {
        use base64::Engine;
        for n in 0..40 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            let key = BASE64.encode(&bytes);
            assert_eq!(is_key(key.as_bytes()), n == 16, "{key}");
        }
        // Non-zero trailing bits, a symbol outside the alphabet, padding inside.
        for bad in [
            "dGhlIHNhbXBsZSBub25jZR==",
            "dGhlIHNhbXBsZSBub25jZ-==",
            "dGhlIHNhbXBsZSBub2=jZQ==",
        ] {
            assert!(!is_key(bad.as_bytes()), "{bad}");
        }
        assert!(is_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
    }

    #[test]
    fn valid_upgrade_and_the_bytes_after_it() {
        let mut bytes = GOOD.as_bytes().to_vec();
        bytes.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let request = parse(&bytes, &Origins::SameAsHost).unwrap().unwrap();
        assert_eq!(
            request.answer,
            Ok(Route::Upgrade {
                accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=".into(),
                plain: false,
            })
        );
        assert_eq!((request.len, request.head_only), (GOOD.len(), false));
    }

    #[test]
    fn incomplete_at_every_split() {
        for cut in 0..GOOD.len() {
            let prefix = &GOOD.as_bytes()[..cut];
            assert_eq!(parse(prefix, &Origins::SameAsHost), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn header_names_and_tokens_are_case_insensitive() {
        let req = with("Upgrade: websocket", "upGRADE: WebSocket")
            .replace("Connection: Upgrade", "connection: keep-alive, UPGRADE");
        assert!(matches!(answer(&req), Ok(Route::Upgrade { .. })));
    }

    #[test]
    fn refusals_map_to_statuses() {
        let cases = [
            (with("GET /ws", "GET /nope"), 404),
            (with("GET /ws", "POST /ws"), 405),
            (with("GET /ws", "HEAD /ws"), 400),
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
            assert_eq!(answer(&req), Err(code), "{req:?}");
        }
    }

    #[test]
    fn head_asks_for_the_answer_without_its_body() {
        for path in ["/", "/health", "/stats"] {
            let request = format!("HEAD {path} HTTP/1.1\r\nHost: x\r\n\r\n");
            let parsed = parse(request.as_bytes(), &Origins::SameAsHost)
                .unwrap()
                .unwrap();
            assert!(parsed.head_only && parsed.answer.is_ok(), "{path}");
        }
        let put = parse(b"PUT / HTTP/1.1\r\n\r\n", &Origins::SameAsHost)
            .unwrap()
            .unwrap();
        assert_eq!(put.answer, Err(Reject::MethodNotAllowed));
    }

    #[test]
    fn a_page_from_another_host_may_not_upgrade_by_default() {
        let from = |host: &str, origin: &str| {
            answer(&with(
                "Host: example.com\r\n",
                &format!("Host: {host}\r\nOrigin: {origin}\r\n"),
            ))
        };
        let upgrades = |result: Result<Route, u16>| matches!(result, Ok(Route::Upgrade { .. }));
        assert!(upgrades(from("example.com", "https://example.com")));
        assert!(upgrades(from("example.com", "http://EXAMPLE.com")));
        assert!(upgrades(from(
            "example.com:8080",
            "http://example.com:8080"
        )));
        assert!(upgrades(from("example.com:443", "https://example.com")));
        assert!(upgrades(from("[::1]:9000", "http://[::1]:9000")));
        assert!(upgrades(from("127.0.0.1:41000", "http://127.0.0.1:41000")));
        for (host, origin) in [
            ("example.com", "https://evil.example"),
            ("example.com", "https://example.com.evil.example"),
            ("example.com:8080", "http://example.com:8081"),
            ("example.com:8080", "http://example.com"),
            ("example.com", "null"),
            ("example.com", "file://example.com"),
            ("example.com", "http://example.com:notaport"),
            ("example.com:8080", "http://example.com:+8080"),
            ("example.com:8080", "http://example.com:08080"),
            ("example.com", "http://example.com:"),
            ("example.com:70000", "http://example.com:70000"),
        ] {
            assert_eq!(from(host, origin), Err(403), "{origin} to {host}");
        }
        // No Origin: not a browser.
        assert!(upgrades(answer(GOOD)));
    }

    #[test]
    fn an_origin_list_or_a_star_replaces_the_host_check() {
        let allowed = Origins::from_flags(&[
            "https://chat.example".to_string(),
            "http://localhost:8080".to_string(),
        ]);
        let from = |origins: &Origins, origin: &str| {
            answer_with(
                &with(
                    "Host: example.com\r\n",
                    &format!("Host: example.com\r\nOrigin: {origin}\r\n"),
                ),
                origins,
            )
        };
        assert!(matches!(
            from(&allowed, "https://chat.example"),
            Ok(Route::Upgrade { .. })
        ));
        assert!(matches!(
            from(&allowed, "HTTP://LOCALHOST:8080"),
            Ok(Route::Upgrade { .. })
        ));
        assert_eq!(from(&allowed, "https://evil.example"), Err(403));
        assert_eq!(from(&allowed, "null"), Err(403));
        assert_eq!(from(&allowed, "https://example.com"), Err(403));
        let any = Origins::from_flags(&["*".to_string()]);
        assert_eq!(any, Origins::Any);
        assert!(matches!(
            from(&any, "https://evil.example"),
            Ok(Route::Upgrade { .. })
        ));
        // Two Origin headers are refused rather than guessed at.
        let two = with(
            "Host: example.com\r\n",
            "Host: example.com\r\nOrigin: https://chat.example\r\nOrigin: https://evil.example\r\n",
        );
        assert_eq!(answer_with(&two, &allowed), Err(403));
        assert_eq!(answer_with(&two, &any), Err(403));
    }

    #[test]
    fn oversized_heads_get_431() {
        let big = format!("GET /ws HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(
            parse(big.as_bytes(), &Origins::Any),
            Err(Reject::HeadTooLarge)
        );
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let req = format!("GET /ws HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse(req.as_bytes(), &Origins::Any),
            Err(Reject::HeadTooLarge)
        );
    }

    #[test]
    fn other_routes_and_query_strings() {
        assert_eq!(
            answer("GET /health HTTP/1.1\r\nHost: x\r\n\r\n"),
            Ok(Route::Health)
        );
        assert_eq!(
            answer("GET /stats?pretty HTTP/1.0\r\n\r\n"),
            Ok(Route::Stats)
        );
    }

    /// Feeds `request` to a head reader in pieces of `piece` bytes.
    fn trickle(request: &[u8], piece: usize) -> (Result<Option<Request>, Reject>, u32) {
        let mut reader = HeadReader::default();
        for chunk in request.chunks(piece) {
            let mut chunk = chunk.to_vec();
            match reader.read(&mut chunk, &Origins::SameAsHost) {
                Ok(Head::Incomplete) => {}
                Ok(Head::Complete { request, .. }) => return (Ok(Some(request)), reader.parses),
                Err(reject) => return (Err(reject), reader.parses),
            }
        }
        (Ok(None), reader.parses)
    }

    #[test]
    fn a_head_trickled_byte_by_byte_is_parsed_twice_not_per_byte() {
        // A 7 KB head, one byte per read: httparse sees it on the first read
        // (to refuse garbage at once) and when its end has arrived.
        let filler: String = (0..50)
            .map(|i| format!("X-Filler-{i}: {}\r\n", "y".repeat(125)))
            .collect();
        let request = with(
            "Host: example.com\r\n",
            &format!("Host: example.com\r\n{filler}"),
        );
        assert!(request.len() > 7000 && request.len() < MAX_HEAD);
        let (result, parses) = trickle(request.as_bytes(), 1);
        assert!(matches!(
            result,
            Ok(Some(Request {
                answer: Ok(Route::Upgrade { .. }),
                ..
            }))
        ));
        assert_eq!(parses, 2);
        // Every split gives the answer the whole head gives.
        let whole = parse(request.as_bytes(), &Origins::SameAsHost);
        for piece in [1, 2, 3, 7, 100, 4096] {
            assert_eq!(
                trickle(request.as_bytes(), piece).0,
                whole,
                "pieces of {piece}"
            );
        }
        // Empty lines before the request line do not end it (httparse skips them).
        let leading = format!("\r\n\n\r\n{GOOD}");
        assert!(matches!(trickle(leading.as_bytes(), 1).0, Ok(Some(_))));
        // A head without an end is refused at the limit, not re-parsed on the way.
        let endless = format!("GET /ws HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        let (result, parses) = trickle(endless.as_bytes(), 1);
        assert_eq!((result, parses), (Err(Reject::HeadTooLarge), 1));
    }
}
