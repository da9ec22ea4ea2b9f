//! Text for people: errors folded onto one line, values a user gave
//! quoted and cut, and the one sanitiser for whatever reaches a terminal.
//! A leaf: it imports nothing of the crate.

use std::borrow::Cow;

/// Joins an error and its sources with ": " and folds any newline, so the
/// result is always a single line (runc and containerd show only one).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    // One line, and nothing in it a terminal would act on (values quoted
    // with `shown` are already escaped; this catches any other).
    out.chars()
        .map(|c| match c {
            '\n' | '\r' => " ".to_owned(),
            c if hidden(c) => format!("\\u{{{:x}}}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

/// serde_json's message without its " at line N column M" suffix, which
/// callers report in fields of their own.
pub fn json_message(e: &serde_json::Error) -> String {
    e.to_string()
        .split(" at line")
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Renders a user-supplied value for an error message: quoted, made
/// visible (`visible`) and cut to a readable length.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let cut: String = value.chars().take(MAX).collect();
    let more = value.chars().count() > MAX;
    let mut out = format!("\"{}", visible(&cut).replace('"', "\\\""));
    out.push_str(if more { "…\"" } else { "\"" });
    if more {
        out.push_str(&format!(" ({} bytes)", value.len()));
    }
    out
}

/// Whether a character must not reach a terminal as it is: C0 and C1
/// controls and DEL (cursor moves, screen clears, bells, fake newlines),
/// the bidirectional controls that reorder what follows (the "Trojan
/// Source" characters), line and paragraph separators, and the invisible
/// zero-width ones.
///
/// Ref: Unicode TR 9 (explicit directional embeddings, overrides and
/// isolates: U+202A–U+202E, U+2066–U+2069; marks U+200E, U+200F, U+061C);
/// CVE-2021-42574.
pub fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

/// The one sanitiser for text that reaches a terminal (status, explain,
/// inventory, mps status, error lines): every `hidden` character is
/// written as a visible escape (`\n`, `\t`, `\r`, else `\u{1b}`), and a
/// backslash as `\\`, so what is shown cannot be mistaken for an escape
/// the sanitiser wrote. Everything else passes unchanged.
pub fn visible(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| hidden(c) || c == '\\') {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hidden_characters_are_escaped_visibly_and_nothing_else_is_touched() {
        assert_eq!(visible("c1 pod-a é 日本"), "c1 pod-a é 日本");
        assert_eq!(visible("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(visible("a\nGPU 9 FAKE"), "a\\nGPU 9 FAKE");
        assert_eq!(visible("bell\x07"), "bell\\u{7}");
        assert_eq!(visible("x\u{202e}gnp.exe"), "x\\u{202e}gnp.exe");
        assert_eq!(
            visible("\u{2066}\u{2069}\u{200f}\u{61c}\u{85}\u{9b}"),
            "\\u{2066}\\u{2069}\\u{200f}\\u{61c}\\u{85}\\u{9b}"
        );
        assert_eq!(visible("a\\u{1b}"), "a\\\\u{1b}");
        for c in (0..0x20).chain(0x7f..0xa0).filter_map(char::from_u32) {
            assert!(!visible(&c.to_string()).chars().any(hidden), "{c:?}");
        }
    }

    #[test]
    fn shown_values_are_quoted_visible_and_cut() {
        assert_eq!(shown("0,1"), "\"0,1\"");
        assert_eq!(shown("a\"b\u{202e}"), "\"a\\\"b\\u{202e}\"");
        let long = "x".repeat(100);
        assert_eq!(shown(&long), format!("\"{}…\" (100 bytes)", "x".repeat(64)));
    }

    #[test]
    fn one_line_joins_causes_and_folds_newlines() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("cannot read x\nreally")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("gone\x1b[2J"));
        assert_eq!(one_line(&e), "cannot read x really: gone\\u{1b}[2J");
    }
}
