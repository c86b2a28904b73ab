//! The HTTP responses the server writes: the 101 upgrade, the page, `200`s
//! and the refusals, each complete and `Connection: close` but the 101.

use crate::http::request::Reject;

impl Reject {
    /// The complete response, `Connection: close`.
    pub fn response(self) -> Vec<u8> {
        let (code, reason) = self.status();
        let extra = match self {
            Self::MethodNotAllowed => "Allow: GET, HEAD\r\n",
            Self::UpgradeRequired => "Sec-WebSocket-Version: 13\r\n",
            Self::Unavailable | Self::TooManyFromAddress => "Retry-After: 1\r\n",
            _ => "",
        };
        response(
            code,
            reason,
            "text/plain; charset=utf-8",
            extra,
            format!("{code} {reason}\n").as_bytes(),
        )
    }
}

/// The answer to a page or an upgrade from a banned address: `403`, the
/// time left and the operator's reason, readable in a browser.
pub fn banned(seconds_left: u64, reason: &str) -> Vec<u8> {
    let why = match reason.is_empty() {
        true => String::new(),
        false => format!(": {reason}"),
    };
    let body = format!(
        "403 Forbidden\nThis address is banned from the chat for {seconds_left} more seconds{why}\n"
    );
    response(
        403,
        "Forbidden",
        "text/plain; charset=utf-8",
        &format!("Retry-After: {seconds_left}\r\n"),
        body.as_bytes(),
    )
}

/// The `101 Switching Protocols` answer to an upgrade.
pub fn switching_protocols(accept: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// A `200 OK` with a body, `Connection: close`.
pub fn ok(content_type: &str, body: &[u8]) -> Vec<u8> {
    response(200, "OK", content_type, "Cache-Control: no-store\r\n", body)
}

/// The browser page's response. The policy lets the page run only its own
/// inline script and style, allowed by their SHA-256 (computed by build.rs
/// from the page), connect only to this server, and be framed by nobody, so
/// no injected markup could run, load or send anything.
pub fn page(html: &str) -> Vec<u8> {
    let policy = format!(
        "Content-Security-Policy: default-src 'none'; script-src 'sha256-{}'; \
         style-src 'sha256-{}'; connect-src 'self'; img-src data:; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'\r\n",
        env!("PAGE_SCRIPT_SHA256"),
        env!("PAGE_STYLE_SHA256"),
    );
    response(
        200,
        "OK",
        "text/html; charset=utf-8",
        &format!("Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\n{policy}"),
        html.as_bytes(),
    )
}

/// The answer to a `HEAD` request: the same head, no body.
pub fn without_body(response: &[u8]) -> Vec<u8> {
    let end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(response.len(), |at| at + 4);
    response[..end].to_vec()
}

/// A complete response with `extra` header lines, `Connection: close`.
pub fn response(code: u16, reason: &str, content_type: &str, extra: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_are_well_formed() {
        let r = String::from_utf8(Reject::UpgradeRequired.response()).unwrap();
        assert!(r.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(r.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let body = "426 Upgrade Required\n";
        assert!(r.contains(&format!("Content-Length: {}\r\n", body.len())));
        assert!(r.ends_with(&format!("\r\n\r\n{body}")));
        let head = without_body(r.as_bytes());
        assert_eq!(head, r.as_bytes()[..r.len() - body.len()].to_vec());
    }
}
