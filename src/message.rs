//! Bytes in, WebSocket messages out: frames, fragmentation, interleaved
//! control frames, UTF-8 and the message size limit (RFC 6455 §5.4-§5.6).
//!
//! The reader is fed whatever bytes have arrived and says how many it used.
//! Bytes it did not use (a partial header or a partial control frame, at most
//! 14 + 125 bytes) must be offered again with more bytes behind them.
//! A whole unfragmented message in the input is returned in place, unmasked,
//! without a copy; only a message that spans reads or frames is assembled in
//! a buffer, which is allocated then and freed when the message is delivered.

use crate::close::{self, CloseFrame, ProtocolError};
use crate::frame::{self, OpCode, Role};
use crate::utf8::Utf8Validator;

/// One thing a peer said.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message (already checked to be UTF-8).
    Text(&'a str),
    /// A complete binary message.
    Binary(&'a [u8]),
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A close frame; `None` when it carried no code.
    Close(Option<CloseFrame<'a>>),
}

/// What a reader accepts. The same for every connection of a server, so it
/// is passed to each read rather than stored per connection.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Which side we are: decides whether incoming frames must be masked.
    pub role: Role,
    /// Largest message, in bytes; more is `MessageTooBig` (close 1009).
    pub max_message: usize,
}

/// The incremental reader of one connection.
#[derive(Debug, Default)]
pub struct MessageReader {
    /// State of a message that spans reads or frames; `None` in the common case.
    partial: Option<Box<Partial>>,
}

#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    utf8: Utf8Validator,
    /// The data frame whose payload is still arriving.
    frame: Option<FrameProgress>,
    /// The message was handed out; drop this state on the next read.
    delivered: bool,
}

#[derive(Debug)]
struct FrameProgress {
    remaining: u64,
    mask: Option<[u8; 4]>,
    mask_offset: usize,
    fin: bool,
}

/// Result of one `read`: bytes used, and the event they completed (if any).
pub type Step<'a> = (usize, Option<Event<'a>>);

impl MessageReader {
    /// Consumes bytes from the front of `input` (unmasking them in place).
    ///
    /// Returns `(0, None)` when `input` holds no complete unit of work; call
    /// again with more bytes appended. Call repeatedly on the rest of the
    /// input until it returns `(0, None)` or the input is used up.
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: Limits,
    ) -> Result<Step<'a>, ProtocolError> {
        if self.partial.as_ref().is_some_and(|p| p.delivered) {
            self.partial = None;
        }
        if self.partial.as_ref().is_some_and(|p| p.frame.is_some()) {
            return self.stream_payload(input);
        }
        let Some((header, header_len)) = frame::parse_header(input, limits.role)? else {
            return Ok((0, None));
        };
        // Fits in usize: control frames are at most 125 bytes, data frames are checked below.
        if header.opcode.is_control() {
            let end = header_len + header.payload_len as usize;
            if input.len() < end {
                return Ok((0, None));
            }
            let payload = &mut input[header_len..end];
            if let Some(mask) = header.mask {
                frame::apply_mask(payload, mask, 0);
            }
            let event = match header.opcode {
                OpCode::Ping => Event::Ping(payload),
                OpCode::Pong => Event::Pong(payload),
                _ => Event::Close(close::parse_payload(payload)?),
            };
            return Ok((end, Some(event)));
        }

        let so_far = match (&self.partial, header.opcode) {
            (None, OpCode::Continuation) => return Err(ProtocolError::UnexpectedContinuation),
            (Some(_), OpCode::Text | OpCode::Binary) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            (Some(p), _) => p.data.len(),
            (None, _) => 0,
        };
        // The limit is decided from the header, before any payload is buffered.
        if header.payload_len > limits.max_message.saturating_sub(so_far) as u64 {
            return Err(ProtocolError::MessageTooBig);
        }
        let len = header.payload_len as usize;

        // Fast path: a whole single-frame message is here; hand it out in place.
        if header.fin && self.partial.is_none() && input.len() - header_len >= len {
            let end = header_len + len;
            let payload = &mut input[header_len..end];
            if let Some(mask) = header.mask {
                frame::apply_mask(payload, mask, 0);
            }
            let event = if header.opcode == OpCode::Text {
                Event::Text(std::str::from_utf8(payload).map_err(|_| ProtocolError::InvalidUtf8)?)
            } else {
                Event::Binary(payload)
            };
            return Ok((end, Some(event)));
        }

        let partial = self.partial.get_or_insert_with(|| {
            Box::new(Partial {
                text: header.opcode == OpCode::Text,
                data: Vec::new(),
                utf8: Utf8Validator::default(),
                frame: None,
                delivered: false,
            })
        });
        partial.frame = Some(FrameProgress {
            remaining: header.payload_len,
            mask: header.mask,
            mask_offset: 0,
            fin: header.fin,
        });
        // Continue in the same call, so a frame with an empty payload completes now.
        let (used, event) = self.stream_payload(&mut input[header_len..])?;
        Ok((header_len + used, event))
    }

    /// Moves payload bytes of the current data frame into the message buffer.
    fn stream_payload<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Step<'a>, ProtocolError> {
        let Some(partial) = self.partial.as_deref_mut() else {
            return Ok((0, None));
        };
        let Some(progress) = partial.frame.as_mut() else {
            return Ok((0, None));
        };
        let take = progress.remaining.min(input.len() as u64) as usize;
        let chunk = &mut input[..take];
        if let Some(mask) = progress.mask {
            frame::apply_mask(chunk, mask, progress.mask_offset);
            progress.mask_offset = (progress.mask_offset + take) % 4;
        }
        if partial.text {
            // Checked as it arrives: invalid text fails before the message ends.
            partial
                .utf8
                .feed(chunk)
                .map_err(|_| ProtocolError::InvalidUtf8)?;
        }
        partial.data.extend_from_slice(chunk);
        progress.remaining -= take as u64;
        if progress.remaining > 0 {
            return Ok((take, None));
        }
        let fin = progress.fin;
        partial.frame = None;
        if !fin {
            return Ok((take, None));
        }
        partial.delivered = true;
        let event = if partial.text {
            partial
                .utf8
                .finish()
                .map_err(|_| ProtocolError::InvalidUtf8)?;
            Event::Text(std::str::from_utf8(&partial.data).map_err(|_| ProtocolError::InvalidUtf8)?)
        } else {
            Event::Binary(&partial.data)
        };
        Ok((take, Some(event)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::write_header;

    const MASK: [u8; 4] = [0xA1, 0xB2, 0xC3, 0xD4];

    fn masked(fin: bool, opcode: OpCode, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_header(&mut out, fin, opcode, payload.len(), Some(MASK));
        let start = out.len();
        out.extend_from_slice(payload);
        frame::apply_mask(&mut out[start..], MASK, 0);
        out
    }

    /// Owned copy of an event, so tests can collect them.
    #[derive(Debug, PartialEq, Eq)]
    enum Got {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<(u16, String)>),
    }

    fn own(event: Event<'_>) -> Got {
        match event {
            Event::Text(t) => Got::Text(t.to_owned()),
            Event::Binary(b) => Got::Binary(b.to_vec()),
            Event::Ping(p) => Got::Ping(p.to_vec()),
            Event::Pong(p) => Got::Pong(p.to_vec()),
            Event::Close(c) => Got::Close(c.map(|c| (c.code, c.reason.to_owned()))),
        }
    }

    /// Feeds `wire` in chunks of the given sizes the way the server does:
    /// unused bytes are kept and offered again in front of the next chunk.
    const LIMITS: Limits = Limits {
        role: Role::Server,
        max_message: 1 << 20,
    };

    fn limit(max_message: usize) -> Limits {
        Limits {
            role: Role::Server,
            max_message,
        }
    }

    fn feed(
        reader: &mut MessageReader,
        limits: Limits,
        wire: &[u8],
        chunk: usize,
    ) -> Result<Vec<Got>, ProtocolError> {
        let mut got = Vec::new();
        let mut pending: Vec<u8> = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            pending.extend_from_slice(piece);
            let mut pos = 0;
            loop {
                let (used, event) = reader.read(&mut pending[pos..], limits)?;
                pos += used;
                if let Some(e) = event {
                    got.push(own(e));
                } else if used == 0 || pos == pending.len() {
                    break;
                }
            }
            pending.drain(..pos);
            assert!(pending.len() <= 14 + 125, "kept {} bytes", pending.len());
        }
        Ok(got)
    }

    fn reader() -> MessageReader {
        MessageReader::default()
    }

    #[test]
    fn single_frames_of_every_length_class() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let wire = masked(true, OpCode::Text, &payload);
            let got = feed(&mut reader(), LIMITS, &wire, wire.len()).unwrap();
            assert_eq!(
                got,
                vec![Got::Text(String::from_utf8(payload).unwrap())],
                "len {len}"
            );
        }
    }

    #[test]
    fn fragmented_message_with_control_frames_between_split_at_every_offset() {
        let mut wire = masked(false, OpCode::Text, "héllo ".as_bytes());
        wire.extend(masked(true, OpCode::Ping, b"p1"));
        wire.extend(masked(
            false,
            OpCode::Continuation,
            &"wörld".as_bytes()[..3],
        ));
        wire.extend(masked(true, OpCode::Pong, b""));
        wire.extend(masked(true, OpCode::Continuation, &"wörld".as_bytes()[3..]));
        wire.extend(masked(true, OpCode::Binary, &[0, 1, 2]));
        wire.extend(masked(true, OpCode::Close, &close::payload(1000, "bye")));
        let want = vec![
            Got::Ping(b"p1".to_vec()),
            Got::Pong(vec![]),
            Got::Text("héllo wörld".into()),
            Got::Binary(vec![0, 1, 2]),
            Got::Close(Some((1000, "bye".into()))),
        ];
        for chunk in 1..=wire.len() {
            assert_eq!(
                feed(&mut reader(), LIMITS, &wire, chunk).unwrap(),
                want,
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn utf8_split_across_fragments_inside_a_code_point() {
        let euro = "€".as_bytes();
        let mut wire = masked(false, OpCode::Text, &euro[..1]);
        wire.extend(masked(false, OpCode::Continuation, &euro[1..2]));
        wire.extend(masked(true, OpCode::Continuation, &euro[2..]));
        assert_eq!(
            feed(&mut reader(), LIMITS, &wire, 64).unwrap(),
            vec![Got::Text("€".into())]
        );
    }

    #[test]
    fn invalid_utf8_fails_before_the_frame_ends() {
        // Only part of the frame has arrived, but its first bytes are invalid.
        let wire = masked(true, OpCode::Text, b"\xff\xfeabcdefgh");
        let mut r = reader();
        let mut part = wire[..wire.len() - 4].to_vec();
        let mut pos = 0;
        let result = loop {
            match r.read(&mut part[pos..], LIMITS) {
                Ok((0, None)) => break Ok(()),
                Ok((n, _)) => pos += n,
                Err(e) => break Err(e),
            }
        };
        assert_eq!(result, Err(ProtocolError::InvalidUtf8));
    }

    #[test]
    fn text_ending_inside_a_code_point_is_invalid() {
        let mut wire = masked(false, OpCode::Text, b"ok\xe2");
        wire.extend(masked(true, OpCode::Continuation, b""));
        assert_eq!(
            feed(&mut reader(), LIMITS, &wire, 3),
            Err(ProtocolError::InvalidUtf8)
        );
    }

    #[test]
    fn size_limit_is_decided_from_the_header() {
        let mut r = MessageReader::default();
        // Header only: claims 2^62 bytes, no payload follows.
        let mut wire = vec![0x82, 0xFF];
        wire.extend_from_slice(&(1u64 << 62).to_be_bytes());
        wire.extend_from_slice(&MASK);
        assert_eq!(
            r.read(&mut wire, limit(100)).map(|(n, _)| n),
            Err(ProtocolError::MessageTooBig)
        );
        // Fragments add up: 60 + 60 > 100.
        let mut wire = masked(false, OpCode::Binary, &[0; 60]);
        wire.extend(masked(true, OpCode::Continuation, &[0; 60]));
        let mut r = MessageReader::default();
        assert_eq!(
            feed(&mut r, limit(100), &wire, 200),
            Err(ProtocolError::MessageTooBig)
        );
        // Exactly at the limit is fine.
        let wire = masked(true, OpCode::Binary, &[0; 100]);
        let mut r = MessageReader::default();
        assert_eq!(
            feed(&mut r, limit(100), &wire, 7).unwrap(),
            vec![Got::Binary(vec![0; 100])]
        );
    }

    #[test]
    fn sequencing_errors() {
        let wire = masked(true, OpCode::Continuation, b"x");
        assert_eq!(
            feed(&mut reader(), LIMITS, &wire, 99),
            Err(ProtocolError::UnexpectedContinuation)
        );
        let mut wire = masked(false, OpCode::Text, b"a");
        wire.extend(masked(true, OpCode::Text, b"b"));
        assert_eq!(
            feed(&mut reader(), LIMITS, &wire, 99),
            Err(ProtocolError::ExpectedContinuation)
        );
        let wire = masked(true, OpCode::Close, &[0x03]);
        assert_eq!(
            feed(&mut reader(), LIMITS, &wire, 99),
            Err(ProtocolError::CloseTooShort)
        );
        let wire = masked(true, OpCode::Close, &[0x03, 0xED]);
        assert_eq!(
            feed(&mut reader(), LIMITS, &wire, 99),
            Err(ProtocolError::InvalidCloseCode)
        );
    }

    #[test]
    fn partial_state_is_released_after_delivery() {
        let mut wire = masked(false, OpCode::Binary, b"ab");
        wire.extend(masked(true, OpCode::Continuation, b"cd"));
        let mut r = reader();
        assert_eq!(
            feed(&mut r, LIMITS, &wire, 3).unwrap(),
            vec![Got::Binary(b"abcd".to_vec())]
        );
        let mut empty = [];
        assert_eq!(r.read(&mut empty, LIMITS).unwrap(), (0, None));
        assert!(r.partial.is_none());
    }
}
