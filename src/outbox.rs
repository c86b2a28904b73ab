//! A connection's outbound queue: whole frames waiting for the socket.
//!
//! Frames are `Rc<[u8]>` so a relayed chat is one allocation shared by every
//! recipient's queue. A flush hands the kernel many frames in one `writev`.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;

/// Most frames handed to one `writev` (well under IOV_MAX = 1024).
const MAX_IOV: usize = 64;

/// Frames queued for one connection, and how much of the first one went out.
#[derive(Debug, Default)]
pub struct Outbox {
    /// The oldest frame. Usually the only one (a reply, or one chat per turn),
    /// so it is kept here and the queue below is not allocated.
    front: Option<Rc<[u8]>>,
    /// Frames behind `front`, allocated only when more than one waits.
    rest: VecDeque<Rc<[u8]>>,
    /// Bytes of `front` already written.
    front_written: usize,
    /// Unwritten bytes in total: the backlog the slow-consumer limit checks.
    bytes: usize,
}

/// How far a flush got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything queued was written.
    All,
    /// The socket is full; wait for it to become writable.
    Blocked,
}

impl Outbox {
    /// Queues a frame behind the others.
    pub fn push(&mut self, frame: Rc<[u8]>) {
        self.bytes += frame.len();
        if self.front.is_none() {
            self.front = Some(frame);
        } else {
            self.rest.push_back(frame);
        }
    }

    /// Unwritten bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Frees the queue's memory if it is empty (for idle connections).
    pub fn release_if_empty(&mut self) {
        if self.rest.is_empty() {
            self.rest = VecDeque::new();
        }
    }

    /// Writes as much as `out` takes, up to `MAX_IOV` frames per call.
    pub fn flush<W: Write>(&mut self, out: &mut W) -> io::Result<Flushed> {
        while let Some(front) = &self.front {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            slices[0] = IoSlice::new(&front[self.front_written..]);
            let mut count = 1;
            for (slot, frame) in slices[1..].iter_mut().zip(&self.rest) {
                *slot = IoSlice::new(frame);
                count += 1;
            }
            let written = match out.write_vectored(&slices[..count]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Flushed::Blocked),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.advance(written);
        }
        Ok(Flushed::All)
    }

    fn advance(&mut self, mut written: usize) {
        self.bytes -= written;
        while let Some(front) = &self.front {
            let left = front.len() - self.front_written;
            if written < left {
                self.front_written += written;
                return;
            }
            written -= left;
            self.front_written = 0;
            self.front = self.rest.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket that takes at most `cap` bytes per call, then blocks after `budget` bytes.
    struct Trickle {
        got: Vec<u8>,
        cap: usize,
        budget: usize,
        calls: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.write_vectored(&[IoSlice::new(buf)])
        }
        fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            self.calls += 1;
            let room = self.cap.min(self.budget);
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(room - n);
                self.got.extend_from_slice(&b[..take]);
                n += take;
            }
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn frames() -> Vec<Rc<[u8]>> {
        (0..200u8)
            .map(|i| Rc::from(vec![i; 1 + usize::from(i % 7)]))
            .collect()
    }

    #[test]
    fn partial_writes_keep_order_and_count_bytes() {
        let all: Vec<u8> = frames().iter().flat_map(|f| f.iter().copied()).collect();
        for cap in [1, 3, 64, 10_000] {
            let mut out = Outbox::default();
            for f in frames() {
                out.push(f);
            }
            assert_eq!(out.bytes(), all.len());
            let mut sock = Trickle {
                got: Vec::new(),
                cap,
                budget: all.len() / 2,
                calls: 0,
            };
            assert_eq!(out.flush(&mut sock).unwrap(), Flushed::Blocked);
            assert_eq!(out.bytes(), all.len() - sock.got.len());
            sock.budget = usize::MAX;
            assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
            assert_eq!(sock.got, all, "cap {cap}");
            assert_eq!(out.bytes(), 0);
            assert!(out.front.is_none() && out.rest.is_empty());
        }
    }

    #[test]
    fn a_single_frame_needs_no_queue_allocation() {
        let mut out = Outbox::default();
        out.push(Rc::from(&b"one"[..]));
        assert_eq!(out.rest.capacity(), 0);
        let mut sock = Trickle {
            got: Vec::new(),
            cap: 2,
            budget: usize::MAX,
            calls: 0,
        };
        assert_eq!(out.flush(&mut sock).unwrap(), Flushed::All);
        assert_eq!(sock.got, b"one");
    }

    #[test]
    fn many_frames_go_out_in_few_calls() {
        let mut out = Outbox::default();
        for f in frames() {
            out.push(f);
        }
        let mut sock = Trickle {
            got: Vec::new(),
            cap: usize::MAX,
            budget: usize::MAX,
            calls: 0,
        };
        out.flush(&mut sock).unwrap();
        assert_eq!(sock.calls, 200usize.div_ceil(MAX_IOV));
    }
}
