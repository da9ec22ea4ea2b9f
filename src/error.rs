//! The crate-wide error and the exit codes, at the edge: the binaries turn
//! whatever a room returns into one line and a code here. Every room owns
//! its error and says itself whether it is a refusal (`is_refusal`); no
//! room imports this one.

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
    Ledger(#[from] crate::ledger::LedgerError),
    #[error(transparent)]
    Placement(#[from] crate::placement::PlacementError),
    #[error(transparent)]
    Shim(#[from] crate::shim::ShimError),
    #[error(transparent)]
    Hook(#[from] crate::hook::HookError),
    #[error(transparent)]
    Report(#[from] crate::report::ReportError),
    #[error(transparent)]
    Mps(#[from] crate::mps::daemon::MpsError),
    #[error(transparent)]
    Install(#[from] crate::install::InstallError),
    #[error(transparent)]
    Simulate(#[from] crate::simulate::SimulateError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error(transparent)]
    Cdi(#[from] crate::cdi::CdiError),
    #[error(transparent)]
    DevicePlugin(#[from] crate::device_plugin::DevicePluginError),
    #[error(transparent)]
    Nri(#[from] crate::nri::NriError),
}

impl Error {
    /// 2 for what the user can fix in their input, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        let refused = match self {
            Error::Config(e) => e.is_refusal(),
            Error::Inventory(e) => e.is_refusal(),
            Error::Ledger(_) | Error::Serve(_) => false,
            Error::Placement(e) => e.is_refusal(),
            Error::Shim(e) => e.is_refusal(),
            Error::Hook(e) => e.is_refusal(),
            Error::Report(e) => e.is_refusal(),
            Error::Mps(e) => e.is_refusal(),
            Error::Install(e) => e.is_refusal(),
            Error::Simulate(e) => e.is_refusal(),
            Error::Cdi(e) => e.is_refusal(),
            Error::DevicePlugin(e) => e.is_refusal(),
            Error::Nri(e) => e.is_refusal(),
        };
        if refused {
            EXIT_REFUSED
        } else {
            EXIT_FAILURE
        }
    }

    /// The whole cause chain on one line: "what: why".
    pub fn one_line(&self) -> String {
        crate::text::one_line(self)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
