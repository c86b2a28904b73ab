//! Incremental UTF-8 validation: a text message checked piece by piece as
//! its bytes arrive, so invalid text is refused before the message ends.

/// Validation state carried between pieces: the start of a code point cut off
/// at the end of the previous piece.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    pending: [u8; 4],
    pending_len: u8,
}

/// The bytes are not UTF-8 (whatever follows them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidUtf8;

impl Utf8Validator {
    /// Checks the next piece of the text.
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), InvalidUtf8> {
        // Finish the code point cut at the previous boundary, one byte at a time.
        while self.pending_len > 0 {
            let Some((&byte, rest)) = data.split_first() else {
                return Ok(());
            };
            self.pending[usize::from(self.pending_len)] = byte;
            self.pending_len += 1;
            data = rest;
            match std::str::from_utf8(&self.pending[..usize::from(self.pending_len)]) {
                Ok(_) => self.pending_len = 0,
                Err(e) if e.error_len().is_some() => return Err(InvalidUtf8),
                Err(_) => {}
            }
        }
        match std::str::from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(InvalidUtf8),
            Err(e) => {
                // A truncated code point at the end: keep it for the next piece.
                let tail = &data[e.valid_up_to()..];
                self.pending[..tail.len()].copy_from_slice(tail);
                self.pending_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Checks that the text does not end inside a code point.
    pub fn finish(&self) -> Result<(), InvalidUtf8> {
        if self.pending_len == 0 {
            Ok(())
        } else {
            Err(InvalidUtf8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(bytes: &[u8]) -> Vec<Result<(), InvalidUtf8>> {
        (0..=bytes.len())
            .flat_map(|a| (a..=bytes.len()).map(move |b| (a, b)))
            .map(|(a, b)| {
                let mut v = Utf8Validator::default();
                v.feed(&bytes[..a])?;
                v.feed(&bytes[a..b])?;
                v.feed(&bytes[b..])?;
                v.finish()
            })
            .collect()
    }

    #[test]
    fn valid_text_passes_at_every_split() {
        let text = "κόσμε ascii 𝄞 €".as_bytes();
        assert!(split_everywhere(text).iter().all(Result::is_ok));
    }

    #[test]
    fn invalid_text_fails_at_every_split() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"abc\xff",
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"ok\xe2\x82",
        ] {
            assert!(
                split_everywhere(bad).iter().all(Result::is_err),
                "{bad:02x?}"
            );
        }
    }

    #[test]
    fn fails_fast_on_an_invalid_prefix() {
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"hello \xf4\x90"), Err(InvalidUtf8));
        let mut v = Utf8Validator::default();
        assert_eq!(v.feed(b"hello \xe2"), Ok(()));
        assert_eq!(v.feed(b"\x28"), Err(InvalidUtf8));
    }
}
