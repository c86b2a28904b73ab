//! Arbitrary bytes, fed in arbitrary chunk sizes, through the frame parser and
//! message assembler the way the server feeds them. Checks: no panic; a read
//! never uses more bytes than it was given; what is kept for the next read is
//! at most a header or a control frame; no message is over the limit and no
//! allocation is much beyond it; every header accepted re-encodes to the same bytes.
//!
//! Input: the first 8 bytes choose the chunk sizes, the rest is the stream.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use libfuzzer_sys::fuzz_target;
use websocket_public_chat::frame::{self, Role};
use websocket_public_chat::message::{Event, Limits, MessageReader};

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
    let limits = Limits {
        role: Role::Server,
        max_message: MAX_MESSAGE,
    };

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

    // The incremental reader, fed chunk by chunk like the server feeds it.
    let mut reader = MessageReader::default();
    let mut pending: Vec<u8> = Vec::new();
    let mut offset = 0;
    let mut step = 0;
    'stream: while offset < stream.len() {
        let size = sizes.get(step % sizes.len().max(1)).map_or(stream.len(), |&s| usize::from(s) + 1);
        step += 1;
        let end = (offset + size).min(stream.len());
        pending.extend_from_slice(&stream[offset..end]);
        offset = end;
        let mut pos = 0;
        loop {
            let available = pending.len() - pos;
            LARGEST.store(0, Ordering::Relaxed);
            let (used, got_event) = match reader.read(&mut pending[pos..], limits) {
                // The server fails the connection here and reads no more.
                Err(_) => break 'stream,
                Ok((used, event)) => {
                    if let Some(event) = &event {
                        let limit = match event {
                            Event::Text(_) | Event::Binary(_) => MAX_MESSAGE,
                            _ => frame::MAX_CONTROL_PAYLOAD,
                        };
                        assert!(event_len(event) <= limit, "event over its limit");
                    }
                    (used, event.is_some())
                }
            };
            assert!(used <= available, "used {used} of {available} bytes");
            let largest = LARGEST.load(Ordering::Relaxed);
            assert!(largest <= LARGEST_ALLOWED, "allocated {largest} bytes");
            pos += used;
            if !got_event && (used == 0 || pos == pending.len()) {
                break;
            }
        }
        pending.drain(..pos);
        assert!(pending.len() <= 14 + frame::MAX_CONTROL_PAYLOAD, "kept {} bytes", pending.len());
    }
});
