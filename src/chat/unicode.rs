//! Characters that do not show as themselves: control characters (Unicode
//! category Cc), format characters (Cf: bidi controls such as U+202E, zero
//! width characters such as U+200B, invisible operators, tag characters),
//! and the line and paragraph separators (Zl, Zp). A name may not contain
//! them, and `chat-client` never prints them as they are.
//!
//! Names are held to more: no default-ignorable code point either (Hangul
//! fillers, variation selectors, the combining grapheme joiner: they render
//! as nothing, so `"alice\u{3164}"` shows as "alice"), and no blank at an end
//! (whitespace or U+2800 BRAILLE PATTERN BLANK, which shows as a space).

/// Whether `c` is a control, a format character or a line or paragraph separator.
pub fn is_hidden(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') || is_format(c)
}

/// Unicode 15.1's General_Category=Cf, all of it.
fn is_format(c: char) -> bool {
    matches!(
        u32::from(c),
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x202A..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

/// Whether `c` may not appear in a name: hidden, or Unicode 15.1's
/// Default_Ignorable_Code_Point (of which Cf is most).
pub fn is_invisible_in_name(c: char) -> bool {
    is_hidden(c)
        || matches!(
            u32::from(c),
            0x34F
                | 0x115F..=0x1160
                | 0x17B4..=0x17B5
                | 0x180B..=0x180F
                | 0x2065
                | 0x3164
                | 0xFE00..=0xFE0F
                | 0xFFA0
                | 0xFFF0..=0xFFF8
                | 0xE0000..=0xE0FFF
        )
}

/// Whether `c` shows as empty space: whitespace or U+2800 BRAILLE PATTERN BLANK.
pub fn is_blank(c: char) -> bool {
    c.is_whitespace() || c == '\u{2800}'
}

/// `text` with every hidden character replaced by U+FFFD, visibly.
pub fn shown(text: &str) -> String {
    text.chars()
        .map(|c| if is_hidden(c) { '\u{FFFD}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_hides_and_what_shows() {
        for c in [
            '\0',
            '\x1b',
            '\x7f',
            '\u{85}',
            '\u{AD}',
            '\u{200B}',
            '\u{200D}',
            '\u{200E}',
            '\u{2028}',
            '\u{2029}',
            '\u{202E}',
            '\u{2066}',
            '\u{2069}',
            '\u{FEFF}',
            '\u{E0041}',
        ] {
            assert!(is_hidden(c), "{:04X}", u32::from(c));
        }
        for c in ['a', 'é', '名', ' ', '\u{A0}', '\u{3000}', '🙂', '\u{FFFD}'] {
            assert!(!is_hidden(c), "{:04X}", u32::from(c));
        }
        assert_eq!(shown("a\u{202E}b\x1b[2J"), "a\u{FFFD}b\u{FFFD}[2J");
    }

    #[test]
    fn what_a_name_may_not_hold() {
        for c in [
            '\u{34F}',
            '\u{115F}',
            '\u{1160}',
            '\u{17B4}',
            '\u{180B}',
            '\u{3164}',
            '\u{FE0F}',
            '\u{FFA0}',
            '\u{E0100}',
            '\u{200B}',
            '\x1b',
        ] {
            assert!(is_invisible_in_name(c), "{:04X}", u32::from(c));
        }
        for c in ['a', '名', ' ', '\u{2800}', '🙂', '\u{FFFD}'] {
            assert!(!is_invisible_in_name(c), "{:04X}", u32::from(c));
        }
        assert!(is_blank('\u{2800}') && is_blank('\u{3000}') && !is_blank('a'));
    }
}
