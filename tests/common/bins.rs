//! The binaries under test or measured: cargo's own build, or the ones in
//! `$GPUSHARE_BIN_DIR` (install/test.sh and install/bench.sh name the node
//! build there, so tests and bench run what a node installs: the runtime
//! and the hook static). Shared by the tests, the end-to-end tests and
//! the bench, each of which includes this file.
#![allow(dead_code)]

use std::path::Path;
use std::sync::OnceLock;

fn bin(name: &str, built: &'static str) -> &'static str {
    match std::env::var_os("GPUSHARE_BIN_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => {
            let path = Path::new(&dir).join(name);
            assert!(path.is_file(), "GPUSHARE_BIN_DIR has no {}", path.display());
            Box::leak(path.to_string_lossy().into_owned().into_boxed_str())
        }
        None => built,
    }
}

pub fn runtime() -> &'static str {
    static B: OnceLock<&str> = OnceLock::new();
    B.get_or_init(|| bin("gpushare-runtime", env!("CARGO_BIN_EXE_gpushare-runtime")))
}

pub fn hook() -> &'static str {
    static B: OnceLock<&str> = OnceLock::new();
    B.get_or_init(|| bin("gpushare-hook", env!("CARGO_BIN_EXE_gpushare-hook")))
}

pub fn cli() -> &'static str {
    static B: OnceLock<&str> = OnceLock::new();
    B.get_or_init(|| bin("gpushare", env!("CARGO_BIN_EXE_gpushare")))
}
