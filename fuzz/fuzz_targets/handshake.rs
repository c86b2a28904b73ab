//! Arbitrary request bytes into the handshake parser: never a panic; a
//! decision (101 route or an HTTP refusal) that does not depend on how the
//! bytes were split across reads; an Origin list only ever adds 403s.

#![no_main]

use libfuzzer_sys::fuzz_target;
use websocket_public_chat::http::request as handshake;
use websocket_public_chat::http::{MAX_HEAD, Reject};

fuzz_target!(|data: &[u8]| {
    let open = handshake::parse(data, &[]);
    match &open {
        Ok(Some((route, head_len))) => {
            let head_len = *head_len;
            assert!(head_len <= data.len() && head_len <= MAX_HEAD);
            // The head alone gives the same answer as the head with bytes behind it...
            assert_eq!(handshake::parse(&data[..head_len], &[]), Ok(Some((route.clone(), head_len))));
            // ...and every shorter prefix, as the server sees it while bytes arrive, is "incomplete".
            let cuts = [0, head_len / 2, head_len - 1, usize::from(data[0]) % head_len];
            for cut in cuts {
                assert_eq!(handshake::parse(&data[..cut], &[]), Ok(None), "prefix of {cut} bytes");
            }
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(reject) => {
            let response = reject.response();
            assert!(response.starts_with(b"HTTP/1.1 4") || response.starts_with(b"HTTP/1.1 5"));
        }
    }
    let allowed = ["https://chat.example".to_string()];
    let restricted = handshake::parse(data, &allowed);
    assert!(restricted == open || restricted == Err(Reject::ForbiddenOrigin), "{restricted:?} vs {open:?}");
});
