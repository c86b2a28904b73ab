//! Bytes in, WebSocket messages out: frames, fragmentation, interleaved
//! control frames, UTF-8 and the message size limit (RFC 6455 §5.4-§5.6).
//!
//! The reader is fed whatever bytes have arrived and takes all of them. A
//! whole unfragmented message in the input is returned in place, unmasked,
//! without a copy. What cannot be used yet stays in the reader: the payload
//! of a message that spans reads or frames is assembled in a buffer
//! allocated then and freed when the message is delivered, and the start of
//! a frame header or of a control frame (at most `MAX_HELD` bytes) is held
//! until the rest arrives. Nothing else is kept, so what a reader holds is
//! bounded by the message limit plus `MAX_HELD`.

use crate::websocket::close::{self, CloseFrame, ProtocolError};
use crate::websocket::frame::{self, Header, MAX_CONTROL_PAYLOAD, OpCode, Role};
use crate::websocket::utf8::Utf8Validator;

/// Most bytes a reader holds between reads: a whole control frame (the
/// longest client header, 14 bytes, and 125 bytes of payload).
pub const MAX_HELD: usize = 14 + MAX_CONTROL_PAYLOAD;

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

/// The incremental reader of one connection: one pointer while idle.
#[derive(Debug, Default)]
pub struct MessageReader {
    /// Allocated only while something is kept between reads.
    state: Option<Box<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// A message that spans reads or frames.
    partial: Option<Partial>,
    /// The start of a frame whose header, or whose control payload, is incomplete.
    held: Held,
}

#[derive(Debug)]
struct Held {
    len: usize,
    bytes: [u8; MAX_HELD],
}

impl Default for Held {
    fn default() -> Self {
        Self {
            len: 0,
            bytes: [0; MAX_HELD],
        }
    }
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
    /// Uses at least one byte of a non-empty input, or completes an event;
    /// call again on the rest until the input is used up. Bytes that do not
    /// complete anything yet are kept, so the next call continues where this
    /// one stopped.
    pub fn read<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: Limits,
    ) -> Result<Step<'a>, ProtocolError> {
        if let Some(state) = &mut self.state
            && state.partial.as_ref().is_some_and(|p| p.delivered)
        {
            state.partial = None;
        }
        if self.state.as_ref().is_some_and(|s| s.held.len > 0) {
            return self.read_held(input, limits);
        }
        if self.streaming() {
            return self.stream_payload(input);
        }
        if self.state.as_ref().is_some_and(|s| s.partial.is_none()) {
            self.state = None;
        }
        if input.is_empty() {
            return Ok((0, None));
        }
        let Some((header, header_len)) = frame::parse_header(input, limits.role)? else {
            return self.hold(input);
        };
        if header.opcode.is_control() {
            // Fits in usize: control frames are at most 125 bytes.
            let end = header_len + header.payload_len as usize;
            if input.len() < end {
                return self.hold(input);
            }
            let event = control_event(header, &mut input[header_len..end])?;
            return Ok((end, Some(event)));
        }
        self.begin_data_frame(header, limits)?;
        let len = header.payload_len as usize;
        // Fast path: a whole single-frame message is here; hand it out in place.
        if header.fin && self.state.is_none() && input.len() - header_len >= len {
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
        self.start_frame(header);
        // Continue in the same call, so a frame with an empty payload completes now.
        let (used, event) = self.stream_payload(&mut input[header_len..])?;
        Ok((header_len + used, event))
    }

    /// Bytes this reader keeps between reads (held frame start and assembly buffer).
    pub fn buffered(&self) -> usize {
        self.state.as_ref().map_or(0, |s| {
            std::mem::size_of::<State>() + s.partial.as_ref().map_or(0, |p| p.data.capacity())
        })
    }

    fn streaming(&self) -> bool {
        self.state
            .as_ref()
            .and_then(|s| s.partial.as_ref())
            .is_some_and(|p| p.frame.is_some())
    }

    /// Keeps all of `input`, the start of a frame too short to parse.
    fn hold<'a>(&'a mut self, input: &[u8]) -> Result<Step<'a>, ProtocolError> {
        // Shorter than a header, or than a control frame: at most MAX_HELD bytes.
        let held = &mut self.state.get_or_insert_with(Box::default).held;
        held.bytes[..input.len()].copy_from_slice(input);
        held.len = input.len();
        Ok((input.len(), None))
    }

    /// Continues the frame whose start is held, taking bytes from `input`.
    fn read_held<'a>(
        &'a mut self,
        input: &'a mut [u8],
        limits: Limits,
    ) -> Result<Step<'a>, ProtocolError> {
        let Some(state) = self.state.as_deref_mut() else {
            return Ok((0, None));
        };
        let held = &mut state.held;
        let old = held.len;
        let take = input.len().min(MAX_HELD - old);
        held.bytes[old..old + take].copy_from_slice(&input[..take]);
        let avail = old + take;
        let Some((header, header_len)) = frame::parse_header(&held.bytes[..avail], limits.role)?
        else {
            held.len = avail;
            return Ok((take, None));
        };
        let control_end = header_len + header.payload_len as usize;
        if header.opcode.is_control() && avail < control_end {
            held.len = avail;
            return Ok((take, None));
        }
        held.len = 0;
        if header.opcode.is_control() {
            return self.held_control(header, header_len..control_end, old);
        }
        // A data frame: its header was incomplete before, so it ends in `input`.
        let used = header_len - old;
        self.begin_data_frame(header, limits)?;
        self.start_frame(header);
        let (more, event) = self.stream_payload(&mut input[used..])?;
        Ok((used + more, event))
    }

    /// The control frame now complete in the held bytes (its payload at `payload`),
    /// of which the first `old` were held before this read.
    fn held_control(
        &mut self,
        header: Header,
        payload: std::ops::Range<usize>,
        old: usize,
    ) -> Result<Step<'_>, ProtocolError> {
        let Some(state) = self.state.as_deref_mut() else {
            return Ok((0, None));
        };
        let end = payload.end;
        let event = control_event(header, &mut state.held.bytes[payload])?;
        Ok((end - old, Some(event)))
    }

    /// Checks a data frame against the message in progress and the size limit,
    /// which is decided from the header, before any payload is buffered.
    fn begin_data_frame(&mut self, header: Header, limits: Limits) -> Result<(), ProtocolError> {
        let partial = self.state.as_ref().and_then(|s| s.partial.as_ref());
        let so_far = match (partial, header.opcode) {
            (None, OpCode::Continuation) => return Err(ProtocolError::UnexpectedContinuation),
            (Some(_), OpCode::Text | OpCode::Binary) => {
                return Err(ProtocolError::ExpectedContinuation);
            }
            (Some(p), _) => p.data.len(),
            (None, _) => 0,
        };
        if header.payload_len > limits.max_message.saturating_sub(so_far) as u64 {
            return Err(ProtocolError::MessageTooBig);
        }
        Ok(())
    }

    /// Sets up the assembly of a data frame's payload.
    fn start_frame(&mut self, header: Header) {
        let state = self.state.get_or_insert_with(Box::default);
        let partial = state.partial.get_or_insert_with(|| Partial {
            text: header.opcode == OpCode::Text,
            data: Vec::new(),
            utf8: Utf8Validator::default(),
            frame: None,
            delivered: false,
        });
        partial.frame = Some(FrameProgress {
            remaining: header.payload_len,
            mask: header.mask,
            mask_offset: 0,
            fin: header.fin,
        });
    }

    /// Moves payload bytes of the current data frame into the message buffer.
    fn stream_payload<'a>(&'a mut self, input: &'a mut [u8]) -> Result<Step<'a>, ProtocolError> {
        let Some(partial) = self.state.as_deref_mut().and_then(|s| s.partial.as_mut()) else {
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

/// Unmasks a complete control frame's payload and says what it is.
fn control_event(header: Header, payload: &mut [u8]) -> Result<Event<'_>, ProtocolError> {
    if let Some(mask) = header.mask {
        frame::apply_mask(payload, mask, 0);
    }
    Ok(match header.opcode {
        OpCode::Ping => Event::Ping(payload),
        OpCode::Pong => Event::Pong(payload),
        _ => Event::Close(close::parse_payload(payload)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::websocket::frame::write_header;

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

    /// Feeds `wire` in chunks of the given size the way the server does: each
    /// chunk once, the reader keeping whatever it cannot use yet.
    fn feed(
        reader: &mut MessageReader,
        limits: Limits,
        wire: &[u8],
        chunk: usize,
    ) -> Result<Vec<Got>, ProtocolError> {
        let mut got = Vec::new();
        for piece in wire.chunks(chunk.max(1)) {
            let mut piece = piece.to_vec();
            let mut pos = 0;
            while pos < piece.len() {
                let (used, event) = reader.read(&mut piece[pos..], limits)?;
                pos += used;
                match event {
                    Some(e) => got.push(own(e)),
                    None => assert!(used > 0, "no progress"),
                }
            }
            let bound = std::mem::size_of::<State>() + 2 * limits.max_message;
            assert!(reader.buffered() <= bound, "kept {}", reader.buffered());
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
        assert!(r.state.is_none());
    }
}
