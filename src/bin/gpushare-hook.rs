//! `gpushare-hook`: run by the low-level runtime as an OCI hook, with the
//! stage as its first argument (or taken from the state's status) and the
//! container state on stdin (`gpushare::hook`).

use gpushare::error::Error;
use gpushare::hook::{self, Stage};

fn main() {
    // Nothing inherited is trusted but the config's location: a hook runs
    // with whatever environment the runtime (or the container's spec) gave.
    for (key, _) in std::env::vars_os() {
        if key != gpushare::config::ENV_VAR {
            std::env::remove_var(key);
        }
    }
    let stage = std::env::args().nth(1);
    if matches!(stage.as_deref(), Some("--version" | "-v")) {
        println!("gpushare-hook version {}", env!("CARGO_PKG_VERSION"));
        return;
    }
    let result = hook::read_state(std::io::stdin().lock())
        .and_then(|state| Ok((Stage::parse(stage.as_deref(), &state)?, state)))
        .and_then(|(stage, state)| hook::run(stage, &state))
        .map_err(Error::from);
    if let Err(e) = result {
        eprintln!("gpushare-hook: {}", e.one_line());
        std::process::exit(e.exit_code());
    }
}
