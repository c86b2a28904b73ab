//! Arbitrary bytes, fed in arbitrary chunk sizes, through the frame parser and
//! message assembler the way the server feeds them. Checks: no panic; a read
//! never uses more bytes than it was given and always makes progress; what
//! the reader keeps between reads is bounded (a header or a control frame,
//! plus the message being assembled); no message is over the limit and no
//! allocation is much beyond it; the messages do not depend on how the stream
//! was split; every header accepted re-encodes to the same bytes.
//!
//! Input: the first 8 bytes choose the chunk sizes, the rest is the stream.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use websocket_public_chat::websocket::frame::{self, Role};
use websocket_public_chat::websocket::message::{Event, Limits, MessageReader};

/// Small, so fuzzing reaches the limit often.
const MAX_MESSAGE: usize = 1024;
/// A message buffer may double past the limit while growing; nothing else is large.
const LARGEST_ALLOWED: usize = 2 * MAX_MESSAGE + 64;

/// Records the largest allocation requested since the last reset.
struct Tracking;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call forwards unchanged to the system allocator; the only
// addition is recording a size in an atomic.
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Tracking = Tracking;

fn event_len(event: &Event<'_>) -> usize {
    match event {
        Event::Text(t) => t.len(),
        Event::Binary(b) | Event::Ping(b) | Event::Pong(b) => b.len(),
        Event::Close(c) => c.map_or(0, |c| c.reason.len()),
    }
}

fuzz_target!(|data: &[u8]| {
    let (sizes, stream) = data.split_at(data.len().min(8));

    // Every header the parser accepts is the shortest encoding of itself.
    let mut at = 0;
    while let Ok(Some((header, len))) = frame::parse_header(&stream[at..], Role::Server) {
        let mut again = Vec::new();
        frame::write_header(&mut again, header.fin, header.opcode, header.payload_len as usize, header.mask);
        assert_eq!(again, &stream[at..at + len], "header does not re-encode to itself");
        match (at + len).checked_add(header.payload_len as usize) {
            Some(next) if next <= stream.len() => at = next,
            _ => break,
        }
    }

    // The incremental reader, fed chunk by chunk like the server feeds it,
    // gives the same messages as when it gets the stream in one piece.
    let chunked = read_all(stream, |step| sizes.get(step % sizes.len().max(1)).map_or(stream.len(), |&s| usize::from(s) + 1));
    let whole = read_all(stream, |_| stream.len());
    assert_eq!(chunked, whole, "the messages depend on how the stream was split");
});

/// An event, owned; `Err` for the error that ended the stream.
type Got = Result<(u8, Vec<u8>), ()>;

/// Feeds `stream` in chunks of `size(step)` bytes; what the reader made of it.
fn read_all(stream: &[u8], size: impl Fn(usize) -> usize) -> Vec<Got> {
    let limits = Limits {
        role: Role::Server,
        max_message: MAX_MESSAGE,
    };
    let mut reader = MessageReader::default();
    let mut got = Vec::new();
    let mut offset = 0;
    let mut step = 0;
    while offset < stream.len() {
        let end = (offset + size(step)).min(stream.len());
        step += 1;
        let mut chunk = stream[offset..end].to_vec();
        offset = end;
        let mut pos = 0;
        while pos < chunk.len() {
            let available = chunk.len() - pos;
            LARGEST.store(0, Ordering::Relaxed);
            let (used, event) = match reader.read(&mut chunk[pos..], limits) {
                // The server fails the connection here and reads no more.
                Err(_) => {
                    got.push(Err(()));
                    return got;
                }
                Ok(step) => step,
            };
            // Only what the read itself allocated; the harness's own come after.
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(largest <= LARGEST_ALLOWED, "allocated {largest} bytes");
            assert!(used <= available, "used {used} of {available} bytes");
            assert!(used > 0 || event.is_some(), "no progress");
            if let Some(event) = &event {
                let limit = match event {
                    Event::Text(_) | Event::Binary(_) => MAX_MESSAGE,
                    _ => frame::MAX_CONTROL_PAYLOAD,
                };
                assert!(event_len(event) <= limit, "event over its limit");
                got.push(Ok(own(event)));
            }
            pos += used;
        }
        assert!(reader.buffered() <= LARGEST_ALLOWED + 512, "kept {} bytes", reader.buffered());
    }
    got
}

fn own(event: &Event<'_>) -> (u8, Vec<u8>) {
    match event {
        Event::Text(t) => (1, t.as_bytes().to_vec()),
        Event::Binary(b) => (2, b.to_vec()),
        Event::Ping(p) => (9, p.to_vec()),
        Event::Pong(p) => (10, p.to_vec()),
        Event::Close(c) => (8, c.map_or(Vec::new(), |c| [&c.code.to_be_bytes()[..], c.reason.as_bytes()].concat())),
    }
}
