//! `gpushare-hook`: run by the low-level runtime as an OCI hook, with the
//! stage as its first argument (or taken from the state's status) and the
//! container state on stdin. Started under the name `gpushare-runtime` (by
//! the runtime's front, src/bin/gpushare-runtime.rs), it is the full
//! runtime instead: one static program for both, so the front has a single
//! sibling to hand calls to.
//!
//! It starts at C's `main`, not Rust's: Rust's runtime set-up (a guard
//! page for the main thread found through /proc/self/maps, an alternate
//! signal stack, SIGPIPE ignored) is work on every container start that
//! this short-lived program does not need, and a child runtime should
//! inherit the signal dispositions its caller gave, as it would from runc.

#![no_main]

use std::os::unix::ffi::OsStrExt;

use gpushare::hook::{self, Stage};

/// Makes sure descriptors 0, 1 and 2 are open (on /dev/null if not), as
/// Rust's runtime would: a file opened later must never land on one and
/// receive what is meant for stderr.
fn ensure_std_fds() {
    for fd in 0..3 {
        // SAFETY: fcntl(F_GETFD) only asks whether the descriptor is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } == -1 {
            // SAFETY: a NUL-terminated path; the lowest free descriptor,
            // this one, is what open returns.
            unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) };
        }
    }
}

#[no_mangle]
pub extern "C" fn main(_argc: libc::c_int, _argv: *const *const libc::c_char) -> libc::c_int {
    ensure_std_fds();
    run();
    0
}

fn run() {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&arg0)
        .file_name()
        .map(|n| n.as_bytes())
        == Some(b"gpushare-runtime")
    {
        gpushare::shim::runtime_main();
    }
    // A hook's call ends within moments.
    gpushare::ledger::leave_mappings_to_exit();
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
        .map_err(gpushare::Error::from)
        .and_then(|(stage, state)| hook::run(stage, &state));
    if let Err(e) = result {
        eprintln!("gpushare-hook: {}", e.one_line());
        std::process::exit(e.exit_code());
    }
}
