//! Names from the system as text may show them. Any user can name an
//! interface or a namespace `\e]0;pwned\a` or put a newline in it, and a
//! recording carries whatever the host it came from held: printed raw, such
//! a name drives root's terminal (titles, cursor, screen) or forges whole
//! output lines. Like `ls -b`, every non-printable character is written as
//! an escape: `\n`, `\r`, `\t`, and `\xHH` for other C0 bytes and DEL;
//! C1 controls (U+0080..U+009F, which some terminals obey as ESC + letter)
//! as `\u{HH}`. Backslash itself is printable and left alone, so a name
//! holding a literal `\x1b` reads the same as one holding ESC: the text is
//! for people, and JSON keeps every name exact.

use std::borrow::Cow;
use std::fmt::Write as _;

fn is_control(c: char) -> bool {
    c.is_control()
}

/// `s` with every control character escaped.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push(&mut out, c);
    }
    Cow::Owned(out)
}

fn push(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 && is_control(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if is_control(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// Like `escape`, but an SGR sequence (`ESC [ digits/; m`: colour and
/// weight, nothing that moves the cursor or sets a title) passes: a line
/// `Output::paint` coloured. Names in it were escaped when formatted.
pub fn escape_keeping_colour(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(n) = sgr_len(rest) {
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            continue;
        }
        push(&mut out, c);
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// The length of the SGR sequence `s` starts with, if it does.
fn sgr_len(s: &str) -> Option<usize> {
    let body = s.strip_prefix("\x1b[")?;
    let params = body
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (body.as_bytes().get(params) == Some(&b'm')).then_some(2 + params + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_like_ls_b() {
        assert_eq!(escape("eth0"), "eth0");
        assert!(matches!(escape("veth-é"), Cow::Borrowed(_)));
        assert_eq!(escape("e\x1b]0;x\x07"), "e\\x1b]0;x\\x07");
        assert_eq!(escape("a\nb\tc\rd\x7f"), "a\\nb\\tc\\rd\\x7f");
        assert_eq!(escape("c1\u{9b}31m"), "c1\\u{9b}31m");
    }

    #[test]
    fn colour_passes_only_as_sgr() {
        let line = "\x1b[1m\x1b[31mVERDICT\x1b[0m e\x1b]0;x\x07 \x1b[2J";
        assert_eq!(
            escape_keeping_colour(line),
            "\x1b[1m\x1b[31mVERDICT\x1b[0m e\\x1b]0;x\\x07 \\x1b[2J"
        );
        assert_eq!(escape_keeping_colour("\x1b["), "\\x1b[");
    }
}
