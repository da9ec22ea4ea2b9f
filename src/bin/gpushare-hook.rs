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

// Linked against musl, allocation is dlmalloc's: musl's own returns freed
// memory to the kernel at once, an mmap and munmap pair for many of the
// parser's buffers (some 60 system calls per create, more than glibc's
// start-up saved).
#[cfg(gpushare_musl)]
#[global_allocator]
static ALLOC: heap::Heap = heap::Heap;

// The rest of the glue: see the file.
#[cfg(gpushare_musl)]
std::arch::global_asm!(include_str!("musl-glue.s"));

#[cfg(gpushare_musl)]
mod heap {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// dlmalloc behind a spin lock: this program allocates from one thread
    /// (its signal handler only reads atomics and calls kill), so the lock
    /// is never contended, and musl's pthread mutex, which dlmalloc's own
    /// global allocator takes, costs a call and its checks each time.
    pub struct Heap;

    static mut DLMALLOC: dlmalloc::Dlmalloc = dlmalloc::Dlmalloc::new();
    static LOCKED: AtomicBool = AtomicBool::new(false);

    fn with<T>(f: impl FnOnce(&mut dlmalloc::Dlmalloc) -> T) -> T {
        while LOCKED
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        // SAFETY: the lock makes this the only reference while it lives.
        let out = f(unsafe { &mut *std::ptr::addr_of_mut!(DLMALLOC) });
        LOCKED.store(false, Ordering::Release);
        out
    }

    // SAFETY: dlmalloc's calls under the lock, with the layouts given.
    unsafe impl GlobalAlloc for Heap {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            with(|d| unsafe { d.malloc(layout.size(), layout.align()) })
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            with(|d| unsafe { d.free(ptr, layout.size(), layout.align()) })
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            with(|d| unsafe { d.calloc(layout.size(), layout.align()) })
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            with(|d| unsafe { d.realloc(ptr, layout.size(), layout.align(), new_size) })
        }
    }
}

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
