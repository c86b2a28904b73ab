//! Close codes (RFC 6455 §7.4): which a peer may send us, and which we send
//! for each thing a peer can get wrong. The frame layer imports these (its
//! errors are `ProtocolError`s); nothing here imports the frame layer.

/// Normal closure: `leave`, or echoing a peer's close.
pub const NORMAL: u16 = 1000;
/// Going away: server shutdown, keepalive timeout.
pub const GOING_AWAY: u16 = 1001;
/// Protocol error.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Text that is not UTF-8.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Policy violation: a client that does not read what we send.
pub const POLICY_VIOLATION: u16 = 1008;
/// Message larger than `--max-message-size`.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// What a peer can get wrong on the wire. Each maps to one close code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without a mask.
    Unmasked,
    /// A server frame with a mask (when we are the client).
    Masked,
    /// RSV1-3 set, but no extension was negotiated.
    ReservedBits,
    /// Opcodes 0x3-0x7 and 0xB-0xF.
    ReservedOpcode,
    /// A close, ping or pong without FIN.
    FragmentedControl,
    /// A control frame with more than 125 payload bytes.
    ControlTooLong,
    /// A 64-bit payload length with the most significant bit set.
    LengthTopBit,
    /// A length in a longer encoding than it needs (§5.2 requires the shortest).
    NonMinimalLength,
    /// A continuation frame with no message started.
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is unfinished.
    ExpectedContinuation,
    /// A close frame with a 1-byte payload.
    CloseTooShort,
    /// A close code that may not be sent (§7.4.1, §7.4.2).
    InvalidCloseCode,
    /// A close reason that is not UTF-8.
    InvalidCloseReason,
    /// A text message that is not UTF-8.
    InvalidUtf8,
    /// A message larger than the configured limit (known from the header).
    MessageTooBig,
}

impl ProtocolError {
    /// The close code we send for this error: the one place errors meet codes.
    pub fn close_code(self) -> u16 {
        match self {
            Self::InvalidUtf8 => INVALID_PAYLOAD,
            Self::MessageTooBig => MESSAGE_TOO_BIG,
            _ => PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame and the logs.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unmasked => "client frames must be masked",
            Self::Masked => "server frames must not be masked",
            Self::ReservedBits => "reserved bits set",
            Self::ReservedOpcode => "reserved opcode",
            Self::FragmentedControl => "fragmented control frame",
            Self::ControlTooLong => "control frame over 125 bytes",
            Self::LengthTopBit => "invalid 64-bit length",
            Self::NonMinimalLength => "length not minimally encoded",
            Self::UnexpectedContinuation => "continuation without a message",
            Self::ExpectedContinuation => "new message inside a fragmented one",
            Self::CloseTooShort => "1-byte close payload",
            Self::InvalidCloseCode => "invalid close code",
            Self::InvalidCloseReason => "close reason is not UTF-8",
            Self::InvalidUtf8 => "text is not UTF-8",
            Self::MessageTooBig => "message too big",
        }
    }
}

/// Whether a peer may put `code` in a close frame.
///
/// 1000-1003 and 1007-1011 are defined for use on the wire; 1004-1006 and
/// 1015 are reserved or must never be sent; 3000-4999 belong to libraries
/// and applications; everything else is unassigned.
pub fn is_valid_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

/// A parsed close frame payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseFrame<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// Validates a close payload: empty (no code), or a valid code and a UTF-8 reason.
pub fn parse_payload(payload: &[u8]) -> Result<Option<CloseFrame<'_>>, ProtocolError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ProtocolError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_code(code) {
                return Err(ProtocolError::InvalidCloseCode);
            }
            let reason =
                std::str::from_utf8(reason).map_err(|_| ProtocolError::InvalidCloseReason)?;
            Ok(Some(CloseFrame { code, reason }))
        }
    }
}

/// Longest reason a close frame carries: a control frame's payload is at
/// most 125 bytes (§5.5), two of them the code.
const MAX_REASON: usize = 123;

/// The payload of a close frame: code, then the reason cut to fit 125 bytes.
pub fn payload(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut out = Vec::with_capacity(2 + cut);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..cut]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_code_table() {
        let valid = [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ];
        let invalid = [
            0, 999, 1004, 1005, 1006, 1012, 1013, 1014, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ];
        for code in valid {
            assert!(is_valid_code(code), "{code}");
        }
        for code in invalid {
            assert!(!is_valid_code(code), "{code}");
        }
    }

    #[test]
    fn payload_parsing() {
        assert_eq!(parse_payload(b""), Ok(None));
        assert_eq!(parse_payload(&[0x03]), Err(ProtocolError::CloseTooShort));
        assert_eq!(
            parse_payload(&[0x03, 0xE8, b'b', b'y', b'e']),
            Ok(Some(CloseFrame {
                code: 1000,
                reason: "bye"
            }))
        );
        assert_eq!(
            parse_payload(&[0x03, 0xED]),
            Err(ProtocolError::InvalidCloseCode)
        );
        assert_eq!(
            parse_payload(&[0x03, 0xE8, 0xFF]),
            Err(ProtocolError::InvalidCloseReason)
        );
    }

    #[test]
    fn error_codes() {
        assert_eq!(ProtocolError::InvalidUtf8.close_code(), 1007);
        assert_eq!(ProtocolError::MessageTooBig.close_code(), 1009);
        assert_eq!(ProtocolError::Unmasked.close_code(), 1002);
        assert_eq!(ProtocolError::InvalidCloseReason.close_code(), 1002);
    }

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let reason = "é".repeat(100);
        let p = payload(1001, &reason);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
        assert_eq!(&p[..2], &1001u16.to_be_bytes());
    }
}
