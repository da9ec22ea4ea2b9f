//! `gpushare-hook`: run by the low-level runtime as an OCI hook, with the
//! stage as its first argument and the container state on stdin.

use gpushare::hook::{self, Stage};

fn main() {
    let stage = std::env::args().nth(1);
    let result = Stage::parse(stage.as_deref())
        .map_err(gpushare::Error::from)
        .and_then(|stage| {
            let state = hook::read_state(std::io::stdin().lock())?;
            hook::run(stage, &state)
        });
    if let Err(e) = result {
        eprintln!("gpushare-hook: {}", e.one_line());
        std::process::exit(e.exit_code());
    }
}
