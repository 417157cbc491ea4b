//! Text as it may be shown on a terminal. Names, paths and log lines come from app files,
//! archives and apps; a raw ESC or a bidi override in them could rewrite the terminal or
//! disguise what is shown, so every render path escapes them the same way.

use std::borrow::Cow;

/// Characters that reorder the text around them (Unicode bidi embeddings, overrides,
/// isolates and marks): shown raw, `abc\u{202e}txt.exe` reads as `abcexe.txt`.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Whether [`escape`] rewrites `c`: control characters (but newline and tab) and bidi
/// controls.
pub fn needs_escape(c: char) -> bool {
    (c.is_control() && c != '\n' && c != '\t') || is_bidi_control(c)
}

/// How one character is shown: itself, or its escape (`\x1b`, `\r`, `\u{202e}`).
pub fn escape_char(c: char) -> Cow<'static, str> {
    match c {
        '\r' => Cow::Borrowed("\\r"),
        c if needs_escape(c) && (c as u32) < 0x100 => Cow::Owned(format!("\\x{:02x}", c as u32)),
        c if needs_escape(c) => Cow::Owned(format!("\\u{{{:x}}}", c as u32)),
        c => Cow::Owned(c.to_string()),
    }
}

/// Text as it may reach a terminal: see [`needs_escape`]; everything else as is.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.contains(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if needs_escape(c) {
            out.push_str(&escape_char(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn controls_and_bidi_are_escaped() {
        assert_eq!(escape("plain `x`\n\tok"), "plain `x`\n\tok");
        assert_eq!(
            escape("a\x1b[2Jb\r\u{202e}c\u{7f}\u{9b}\0"),
            "a\\x1b[2Jb\\r\\u{202e}c\\x7f\\x9b\\x00"
        );
        assert_eq!(escape("žluť 日本"), "žluť 日本");
    }
}
