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
            Error::Config(_) | Error::Request(_) | Error::Refused(_) => EXIT_REFUSED,
            Error::Bundle(crate::bundle::BundleError::TooLarge { .. }) => EXIT_REFUSED,
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
    out.replace(['\n', '\r'], " ")
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

/// Renders a user-supplied value for an error message: quoted, escaped
/// (NULs and newlines become visible) and cut to a readable length.
pub fn shown(value: &str) -> String {
    const MAX: usize = 64;
    let mut cut: String = value.chars().take(MAX).collect();
    let more = value.chars().count() > MAX;
    if more {
        cut.push('…');
    }
    let escaped = format!("{cut:?}");
    if more {
        format!("{escaped} ({} bytes)", value.len())
    } else {
        escaped
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
