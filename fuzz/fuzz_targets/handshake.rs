//! Arbitrary request bytes into the HTTP front end: never a panic; a decision
//! (an upgrade, a page, or an HTTP refusal) that does not depend on how the
//! bytes were split across reads, whether the whole head is parsed at once
//! or read piece by piece by the head reader the server uses; an Origin list
//! only ever adds 403s to what `*` allows.
//!
//! Input: the first byte chooses the size of the pieces, the rest is the stream.

#![no_main]

use libfuzzer_sys::fuzz_target;
use websocket_public_chat::http::request::{self, Head, HeadReader, Origins};
use websocket_public_chat::http::{MAX_HEAD, Reject, Request};

/// What the head reader makes of `data` in pieces of `piece` bytes.
fn read_in_pieces(data: &[u8], piece: usize) -> Result<Option<Request>, Reject> {
    let mut reader = HeadReader::default();
    for chunk in data.chunks(piece) {
        let mut chunk = chunk.to_vec();
        match reader.read(&mut chunk, &Origins::SameAsHost)? {
            Head::Incomplete => {}
            Head::Complete { request, .. } => return Ok(Some(request)),
        }
    }
    Ok(None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let open = request::parse(data, &Origins::SameAsHost);
    match &open {
        Ok(Some(request)) => {
            let len = request.len;
            assert!(len <= data.len() && len <= MAX_HEAD);
            // The head alone gives the same answer as the head with bytes behind it...
            assert_eq!(request::parse(&data[..len], &Origins::SameAsHost).as_ref(), Ok(&Some(request.clone())));
            // ...and every shorter prefix, as the server sees it while bytes arrive, is "incomplete".
            for cut in 0..len {
                assert_eq!(request::parse(&data[..cut], &Origins::SameAsHost), Ok(None), "prefix of {cut} bytes");
            }
            // The head reader, fed in pieces, comes to the same answer.
            assert_eq!(read_in_pieces(data, usize::from(first) + 1).as_ref(), Ok(&Some(request.clone())));
        }
        Ok(None) => assert!(data.len() <= MAX_HEAD),
        Err(reject) => {
            let response = reject.response();
            assert!(response.starts_with(b"HTTP/1.1 4") || response.starts_with(b"HTTP/1.1 5"));
        }
    }
    // An Origin list only ever adds 403s to what any origin gets.
    let any = request::parse(data, &Origins::Any);
    let listed = request::parse(data, &Origins::List(vec!["https://chat.example".to_string()]));
    match (&any, &listed) {
        (Ok(Some(a)), Ok(Some(l))) => {
            assert!(l.answer == a.answer || l.answer == Err(Reject::ForbiddenOrigin), "{l:?} vs {a:?}");
        }
        _ => assert_eq!(any, listed),
    }
});
