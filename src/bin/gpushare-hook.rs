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

// Linked against musl, allocation is dlmalloc's: musl's own returns freed
// memory to the kernel at once, an mmap and munmap pair for many of the
// parser's buffers (some 60 system calls per create, more than glibc's
// start-up saved).
#[cfg(gpushare_musl)]
#[global_allocator]
static ALLOC: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

// Linked against musl (build.rs, cfg `gpushare_musl`), two things glibc's
// start-up gave the standard library are supplied here.
//
// The arguments: the standard library built for glibc takes argc, argv and
// envp as the arguments of its `.init_array.00099` entry, which glibc
// passes to every such function and musl does not. This entry runs just
// before it and returns with argc, argv and envp in the argument registers,
// which musl's loop over the array (add, compare, call through the next
// slot) leaves as they are. They are found from `__environ`, which musl
// has set by then: on the initial stack argv's NULL ends just below envp,
// and argc sits below argv's pointers. The package test runs a container
// through this build, so a musl that breaks this fails there.
//
// `_dl_find_object`: gcc's unwinder asks glibc for a pc's unwind tables
// through it. Panics abort here; a "not found" leaves only a backtrace
// without frames.
#[cfg(gpushare_musl)]
std::arch::global_asm!(
    ".pushsection .init_array.00098,\"aw\"",
    ".p2align 3",
    ".quad gpushare_musl_args",
    ".popsection",
    ".pushsection .text.gpushare_musl_args,\"ax\",@progbits",
    "gpushare_musl_args:",
    "mov rdx, qword ptr [rip + __environ]",
    "lea rsi, [rdx - 8]",
    "xor edi, edi",
    "2:",
    "sub rsi, 8",
    "cmp qword ptr [rsi], rdi",
    "je 3f",
    "inc rdi",
    "jmp 2b",
    "3:",
    "add rsi, 8",
    "ret",
    ".popsection",
    ".pushsection .text._dl_find_object,\"ax\",@progbits",
    ".globl _dl_find_object",
    ".type _dl_find_object,@function",
    "_dl_find_object:",
    "mov eax, -1",
    "ret",
    ".popsection",
);

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
