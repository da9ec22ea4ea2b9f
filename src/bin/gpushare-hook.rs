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
static ALLOC: heap::Heap = heap::Heap;

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

// memcpy and memmove for the musl build: musl's copy with `rep movsq`
// after a byte loop and finish with another, a tenth of this program's own
// time in a create (serde's strings, the parsers' buffers). Here: up to 16
// bytes with two overlapping loads and stores, longer with `rep movsb`,
// which x86_64 processors with fast string moves (ERMS, FSRM) run at full
// speed. memmove is replaced too, as musl's jumps into its own memcpy.
#[cfg(gpushare_musl)]
std::arch::global_asm!(
    ".pushsection .text.memcpy,\"ax\",@progbits",
    ".globl memcpy",
    ".type memcpy,@function",
    "memcpy:",
    "mov rax, rdi",
    "cmp rdx, 16",
    "ja 5f",
    "cmp rdx, 8",
    "jb 6f",
    "mov rcx, qword ptr [rsi]",
    "mov r8, qword ptr [rsi + rdx - 8]",
    "mov qword ptr [rdi], rcx",
    "mov qword ptr [rdi + rdx - 8], r8",
    "ret",
    "6:",
    "cmp rdx, 4",
    "jb 7f",
    "mov ecx, dword ptr [rsi]",
    "mov r8d, dword ptr [rsi + rdx - 4]",
    "mov dword ptr [rdi], ecx",
    "mov dword ptr [rdi + rdx - 4], r8d",
    "ret",
    "7:",
    "test rdx, rdx",
    "jz 8f",
    "mov r9, rdx",
    "shr r9, 1",
    "movzx ecx, byte ptr [rsi]",
    "movzx r8d, byte ptr [rsi + rdx - 1]",
    "movzx r10d, byte ptr [rsi + r9]",
    "mov byte ptr [rdi], cl",
    "mov byte ptr [rdi + rdx - 1], r8b",
    "mov byte ptr [rdi + r9], r10b",
    "8:",
    "ret",
    "5:",
    "mov rcx, rdx",
    "rep movsb",
    "ret",
    ".popsection",
    ".pushsection .text.memmove,\"ax\",@progbits",
    ".globl memmove",
    ".type memmove,@function",
    "memmove:",
    "mov rax, rdi",
    "sub rax, rsi",
    "cmp rax, rdx",
    "jae memcpy",
    "mov rax, rdi",
    "lea rsi, [rsi + rdx - 1]",
    "lea rdi, [rdi + rdx - 1]",
    "mov rcx, rdx",
    "std",
    "rep movsb",
    "cld",
    "ret",
    ".popsection",
);

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
