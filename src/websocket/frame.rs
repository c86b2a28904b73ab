//! RFC 6455 §5.2 frame headers: parse one from bytes, write one, mask a payload.
//!
//! Pure code over byte slices: a header parse returns `Ok(None)` while the
//! header is incomplete, so callers can feed bytes as they arrive.

use crate::websocket::close::{self, ProtocolError};

/// Frame opcodes (RFC 6455 §5.2); the reserved ones are a protocol error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping and pong: never fragmented, at most 125 payload bytes.
    pub fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Which end of the connection is reading: clients must mask, servers must not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We are the server: incoming frames must be masked.
    Server,
    /// We are a client: incoming frames must not be masked.
    Client,
}

/// Largest payload a control frame may carry.
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest header a server writes (no mask): 2 bytes + 8-byte length.
pub const MAX_SERVER_HEADER: usize = 10;

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
}

/// Parses the frame header at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, else the header and its
/// length in bytes. Errors are reported as soon as the bytes that show them
/// have arrived, before the rest of the header.
pub fn parse_header(buf: &[u8], role: Role) -> Result<Option<(Header, usize)>, ProtocolError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(ProtocolError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::ReservedOpcode)?;
    let fin = b0 & 0x80 != 0;
    if opcode.is_control() && !fin {
        return Err(ProtocolError::FragmentedControl);
    }
    let masked = b1 & 0x80 != 0;
    match (role, masked) {
        (Role::Server, false) => return Err(ProtocolError::Unmasked),
        (Role::Client, true) => return Err(ProtocolError::Masked),
        _ => {}
    }
    let len7 = b1 & 0x7F;
    if opcode.is_control() && usize::from(len7) > MAX_CONTROL_PAYLOAD {
        return Err(ProtocolError::ControlTooLong);
    }
    let len_bytes = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    if buf.len() < 2 + len_bytes {
        return Ok(None);
    }
    let payload_len = match len7 {
        126 => u64::from(u16::from_be_bytes([buf[2], buf[3]])),
        127 => {
            let mut be = [0u8; 8];
            be.copy_from_slice(&buf[2..10]);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(ProtocolError::LengthTopBit);
            }
            len
        }
        short => u64::from(short),
    };
    // §5.2: "the minimal number of bytes MUST be used to encode the length".
    if (len7 == 126 && payload_len < 126) || (len7 == 127 && payload_len <= 0xFFFF) {
        return Err(ProtocolError::NonMinimalLength);
    }
    let header_len = 2 + len_bytes + if masked { 4 } else { 0 };
    if buf.len() < header_len {
        return Ok(None);
    }
    let mask = masked.then(|| {
        let at = 2 + len_bytes;
        [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]
    });
    let header = Header {
        fin,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, header_len)))
}

/// Appends a frame header to `out`, using the shortest length encoding.
pub fn write_header(
    out: &mut Vec<u8>,
    fin: bool,
    opcode: OpCode,
    len: usize,
    mask: Option<[u8; 4]>,
) {
    out.push(if fin { 0x80 } else { 0 } | opcode.bits());
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend_from_slice(&key);
    }
}

/// Builds one unmasked, unfragmented frame whose payload is `parts` joined.
///
/// The length is known up front, so the frame is written in one allocation.
pub fn server_frame(opcode: OpCode, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(MAX_SERVER_HEADER + len);
    write_header(&mut out, true, opcode, len, None);
    for part in parts {
        out.extend_from_slice(part);
    }
    out
}

/// A whole close frame as the server sends it: `code`, then `reason` cut to fit.
pub fn server_close(code: u16, reason: &str) -> Vec<u8> {
    server_frame(OpCode::Close, &[&close::payload(code, reason)])
}

/// Builds one masked, unfragmented frame: what a client sends (RFC 6455 §5.3).
pub fn client_frame(opcode: OpCode, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_SERVER_HEADER + 4 + payload.len());
    write_header(&mut out, true, opcode, payload.len(), Some(mask));
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask, 0);
    out
}

/// XORs `data` with `mask`, where `data` starts at byte `offset` of the payload.
///
/// Works 8 bytes at a time; `offset` lets a payload be unmasked in pieces as it arrives.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = [0u8; 8];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let wide = u64::from_ne_bytes(key);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key is still aligned.
    for (byte, k) in chunks.into_remainder().iter_mut().zip(key) {
        *byte ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_with_the_shortest_encoding() {
        for (len, header_len) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            let frame = server_frame(OpCode::Binary, &[&vec![7u8; len]]);
            let (h, n) = parse_header(&frame, Role::Client).unwrap().unwrap();
            assert_eq!(n, header_len, "len {len}");
            assert_eq!(h.payload_len, len as u64);
            assert!(h.fin);
            assert_eq!(h.opcode, OpCode::Binary);
            assert_eq!(h.mask, None);
            assert_eq!(frame.len(), header_len + len);
        }
    }

    #[test]
    fn masked_header_parses_at_every_split() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let frame = client_frame(OpCode::Text, &vec![b'a'; len], mask);
            let (h, n) = parse_header(&frame, Role::Server).unwrap().unwrap();
            assert_eq!(h.mask, Some(mask));
            assert_eq!(h.payload_len, len as u64);
            for cut in 0..n {
                assert_eq!(
                    parse_header(&frame[..cut], Role::Server),
                    Ok(None),
                    "len {len} cut {cut}"
                );
            }
        }
    }

    #[test]
    fn rfc_example_masked_hello() {
        // RFC 6455 §5.7: a single-frame masked text message "Hello".
        let mut frame = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let (h, n) = parse_header(&frame, Role::Server).unwrap().unwrap();
        assert_eq!((h.opcode, h.payload_len, n), (OpCode::Text, 5, 6));
        let built = client_frame(OpCode::Text, b"Hello", h.mask.unwrap());
        assert_eq!(built, frame);
        apply_mask(&mut frame[n..], h.mask.unwrap(), 0);
        assert_eq!(&frame[n..], b"Hello");
    }

    #[test]
    fn header_errors_map_to_their_cause() {
        let cases: [(&[u8], ProtocolError); 9] = [
            (&[0x82, 0xFE, 0, 125], ProtocolError::NonMinimalLength),
            (
                &[0x82, 0xFF, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF],
                ProtocolError::NonMinimalLength,
            ),
            (&[0xC1, 0x80], ProtocolError::ReservedBits),
            (&[0x83, 0x80], ProtocolError::ReservedOpcode),
            (&[0x8B, 0x80], ProtocolError::ReservedOpcode),
            (&[0x09, 0x80], ProtocolError::FragmentedControl),
            (&[0x89, 0xFE], ProtocolError::ControlTooLong),
            (&[0x81, 0x05], ProtocolError::Unmasked),
            (
                &[0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0],
                ProtocolError::LengthTopBit,
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(parse_header(bytes, Role::Server), Err(want), "{bytes:02x?}");
        }
        assert_eq!(
            parse_header(&[0x81, 0x85], Role::Client),
            Err(ProtocolError::Masked)
        );
    }

    #[test]
    fn mask_in_pieces_equals_mask_at_once() {
        let mask = [1, 2, 3, 4];
        let data: Vec<u8> = (0..=255).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, mask, 0);
        for cut in 0..data.len() {
            let mut pieces = data.clone();
            let (a, b) = pieces.split_at_mut(cut);
            apply_mask(a, mask, 0);
            apply_mask(b, mask, cut);
            assert_eq!(pieces, whole, "cut {cut}");
        }
        // Masking twice restores the payload.
        apply_mask(&mut whole, mask, 0);
        assert_eq!(whole, data);
    }
}
