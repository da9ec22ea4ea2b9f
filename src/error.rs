//! The crate error: one variant per module, gathered here so binaries map
//! every failure to an exit code and a one-line message in one place.

use thiserror::Error;

/// Exit code for a refused input: bad request, bad config, policy rejection.
pub const EXIT_REFUSED: i32 = 2;
/// Exit code for a runtime failure.
pub const EXIT_FAILURE: i32 = 1;

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    #[error(transparent)]
    Request(#[from] crate::request::RequestError),
    #[error(transparent)]
    Id(#[from] crate::request::IdError),
    #[error(transparent)]
    Refused(#[from] crate::decide::Refusal),
    #[error(transparent)]
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Bundle(#[from] crate::bundle::BundleError),
    #[error(transparent)]
    Edits(#[from] crate::edits::EditsError),
    #[error(transparent)]
    Simulate(#[from] crate::simulate::SimulateError),
    #[error(transparent)]
    Hook(#[from] crate::hook::HookError),
    #[error(transparent)]
    Shim(#[from] crate::shim::ShimError),
    #[error(transparent)]
    Live(#[from] crate::live::LiveError),
    #[error(transparent)]
    Mps(#[from] crate::mps::MpsError),
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// 2 for what the user can fix in their input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::Request(_) | Error::Id(_) | Error::Refused(_) => EXIT_REFUSED,
            Error::Bundle(
                crate::bundle::BundleError::TooLarge { .. }
                | crate::bundle::BundleError::NotRegular { .. },
            ) => EXIT_REFUSED,
            Error::Shim(crate::shim::ShimError::NoRuntime { .. }) => EXIT_REFUSED,
            Error::Simulate(crate::simulate::SimulateError::Count(_)) => EXIT_REFUSED,
            Error::Install(
                crate::install::InstallError::Malformed { .. }
                | crate::install::InstallError::Shape { .. }
                | crate::install::InstallError::Option(..),
            ) => EXIT_REFUSED,
            Error::Inventory(e) if e.is_refusal() => EXIT_REFUSED,
            _ => EXIT_FAILURE,
        }
    }

    /// The whole cause chain on one line: "what: why".
    pub fn one_line(&self) -> String {
        one_line(self)
    }
}

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
pub fn visible(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(|c| hidden(c) || c == '\\') {
        return std::borrow::Cow::Borrowed(text);
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
    std::borrow::Cow::Owned(out)
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

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
}
