//! `gpushare-runtime`: put where runc was. This is its front: a program
//! with no C library at all, so it starts about as fast as a static musl
//! one, where a glibc program spends half a millisecond in its start-up
//! alone on the reference VMs (see the README's Performance section).
//!
//! It decides one thing: whether the call needs gpushare. Calls that do not
//! (start, kill, state, exec…, a non-GPU container's create, the delete of
//! a container the ledger never held) exec the configured low-level
//! runtime at once, with the very same arguments. The delete of a container
//! the ledger holds it does itself: the runtime's delete as its child, then,
//! once that succeeded, the release appended to the ledger's journal, and
//! it ends as the runtime ended. Every other call, and every call it cannot
//! be sure about (a config or a spec written in a way its small readers do
//! not take, a missing file, a failed exec), is handed unchanged to the
//! full runtime: `gpushare-hook` beside it, started under the name
//! `gpushare-runtime`, which places GPU containers and reports every error
//! in full. The front itself never refuses anything.
//!
//! The deciding code is `gpushare::front` (the same files, tested with the
//! library); this file is the start-up, the system calls and the plumbing.

#![no_std]
#![no_main]

#[path = "../front/args.rs"]
mod args;
#[path = "../front/config.rs"]
mod config;
#[path = "../front/ids.rs"]
mod ids;
#[path = "../front/spec.rs"]
mod spec;

use core::arch::asm;

// The process entry: the stack pointer holds argc, argv…, 0, envp…, 0.
#[cfg(target_arch = "x86_64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "xor ebp, ebp",
    "mov rdi, rsp",
    "and rsp, -16",
    "call {main}",
    "ud2",
    main = sym front_main,
);

#[cfg(target_arch = "aarch64")]
core::arch::global_asm!(
    ".globl _start",
    "_start:",
    "mov x29, #0",
    "mov x30, #0",
    "mov x0, sp",
    "bl {main}",
    "brk #0",
    main = sym front_main,
);

#[cfg(target_arch = "x86_64")]
mod nr {
    pub const READ: usize = 0;
    pub const WRITE: usize = 1;
    pub const CLOSE: usize = 3;
    pub const MMAP: usize = 9;
    pub const EXECVE: usize = 59;
    pub const EXIT_GROUP: usize = 231;
    pub const OPENAT: usize = 257;
    pub const READLINKAT: usize = 267;
    pub const FACCESSAT: usize = 269;
    pub const STATX: usize = 332;
    pub const VFORK: usize = 58;
    pub const EXIT: usize = 60;
    pub const WAIT4: usize = 61;
    pub const KILL: usize = 62;
    pub const GETPID: usize = 39;
    pub const FLOCK: usize = 73;
    pub const FDATASYNC: usize = 75;
    pub const UNLINKAT: usize = 263;
}

#[cfg(target_arch = "aarch64")]
mod nr {
    pub const READ: usize = 63;
    pub const WRITE: usize = 64;
    pub const CLOSE: usize = 57;
    pub const MMAP: usize = 222;
    pub const EXECVE: usize = 221;
    pub const EXIT_GROUP: usize = 94;
    pub const OPENAT: usize = 56;
    pub const READLINKAT: usize = 78;
    pub const FACCESSAT: usize = 48;
    pub const STATX: usize = 291;
    pub const CLONE: usize = 220;
    pub const EXIT: usize = 93;
    pub const WAIT4: usize = 260;
    pub const KILL: usize = 129;
    pub const GETPID: usize = 172;
    pub const FLOCK: usize = 32;
    pub const FDATASYNC: usize = 83;
    pub const UNLINKAT: usize = 35;
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("gpushare-runtime's front is written for x86_64 and aarch64");

/// One system call; the result is the kernel's (negative: -errno).
///
/// # Safety
/// The arguments must be valid for the call `n`.
#[cfg(target_arch = "x86_64")]
unsafe fn sys(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes arguments valid for the call.
    unsafe {
        asm!("syscall", inlateout("rax") n as isize => r, in("rdi") a, in("rsi") b, in("rdx") c,
             in("r10") d, in("r8") e, in("r9") f, lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    r
}

/// One system call; the result is the kernel's (negative: -errno).
///
/// # Safety
/// The arguments must be valid for the call `n`.
#[cfg(target_arch = "aarch64")]
unsafe fn sys(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let r: isize;
    // SAFETY: the caller passes arguments valid for the call.
    unsafe {
        asm!("svc 0", in("x8") n, inlateout("x0") a as isize => r, in("x1") b, in("x2") c,
             in("x3") d, in("x4") e, in("x5") f, options(nostack));
    }
    r
}

const AT_FDCWD: isize = -100;
const AT_EMPTY_PATH: usize = 0x1000;
const O_RDONLY_CLOEXEC_NONBLOCK_NOCTTY: usize = 0o2000000 | 0o4000 | 0o400;
const O_PATH_CLOEXEC: usize = 0o10000000 | 0o2000000;
const X_OK: usize = 1;
const ENOENT: isize = 2;
const S_IFMT: u16 = 0o170000;
const S_IFREG: u16 = 0o100000;
const PROT_READ_WRITE: usize = 3;
const MAP_PRIVATE_ANONYMOUS: usize = 0x02 | 0x20;
/// The front's path buffers. Smaller than the system's PATH_MAX on
/// purpose: each lives on the stack, and a frame past a page is probed page
/// by page, each page a fault (about 1.5 µs here). A longer path (never
/// seen from an engine: a bundle's config.json, runc, a ledger marker fit
/// in a few hundred bytes) hands the call to the full runtime, which takes
/// any.
const PATH_MAX: usize = 1024;

/// A config.json larger than this is the full runtime's to refuse.
const MAX_SPEC: u64 = 16 << 20;
/// A node config larger than this is the full runtime's.
const MAX_FILE: u64 = 64 << 20;

fn exit(code: i32) -> ! {
    // SAFETY: exit_group takes a status and does not return.
    unsafe { sys(nr::EXIT_GROUP, code as usize, 0, 0, 0, 0, 0) };
    // exit_group does not return; should it, stop here all the same.
    loop {
        core::hint::spin_loop();
    }
}

fn write_stderr(parts: &[&[u8]]) {
    for p in parts {
        // SAFETY: a valid buffer and its length.
        unsafe { sys(nr::WRITE, 2, p.as_ptr() as usize, p.len(), 0, 0, 0) };
    }
}

/// The process's arguments and environment, as the kernel laid them out.
struct Process {
    argc: usize,
    argv: *mut *const u8,
    envp: *const *const u8,
}

static mut PROCESS: Process = Process {
    argc: 0,
    argv: core::ptr::null_mut(),
    envp: core::ptr::null(),
};

/// A NUL-terminated C string as a slice (without the NUL).
///
/// # Safety
/// `p` must point at a NUL-terminated string that outlives the slice.
unsafe fn c_str<'a>(p: *const u8) -> &'a [u8] {
    // SAFETY: the string is NUL-terminated (the kernel laid it out so).
    unsafe { core::slice::from_raw_parts(p, strlen(p)) }
}

fn getenv(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: envp is the kernel's NULL-terminated array of C strings.
    unsafe {
        let mut e = PROCESS.envp;
        while !(*e).is_null() {
            let s = c_str(*e);
            if s.len() > name.len() && s.starts_with(name) && s[name.len()] == b'=' {
                return Some(&s[name.len() + 1..]);
            }
            e = e.add(1);
        }
    }
    None
}

/// A path as a NUL-terminated C string, in `buf`.
fn c_path<'b>(parts: &[&[u8]], buf: &'b mut [u8; PATH_MAX]) -> Option<&'b [u8]> {
    let mut n = 0;
    for p in parts {
        if n + p.len() >= PATH_MAX || p.contains(&0) {
            return None;
        }
        buf[n..n + p.len()].copy_from_slice(p);
        n += p.len();
    }
    buf[n] = 0;
    Some(&buf[..=n])
}

/// statx's type and size, of a path (`fd` < 0) or of an open descriptor.
fn stat(fd: isize, path: &[u8]) -> Option<(u16, u64)> {
    let mut buf = [0u64; 32]; // struct statx is 256 bytes
    let (dirfd, p, flags) = if fd >= 0 {
        (fd, c"".as_ptr() as *const u8, AT_EMPTY_PATH)
    } else {
        (AT_FDCWD, path.as_ptr(), 0)
    };
    // SAFETY: a NUL-terminated path and a 256-byte buffer.
    let r = unsafe {
        sys(
            nr::STATX,
            dirfd as usize,
            p as usize,
            flags,
            0x1 | 0x200,
            buf.as_mut_ptr() as usize,
            0,
        )
    };
    if r < 0 {
        return None;
    }
    // struct statx: stx_mode (u16) at byte 28, stx_size (u64) at byte 40.
    let bytes = buf.as_ptr() as *const u8;
    // SAFETY: both fields lie inside the 256-byte buffer.
    unsafe {
        let mode = u16::from_ne_bytes([*bytes.add(28), *bytes.add(29)]);
        let size = core::ptr::read_unaligned(bytes.add(40) as *const u64);
        Some((mode, size))
    }
}

/// Whether `path` (NUL-terminated) certainly does not exist.
fn exists_not(path: &[u8]) -> bool {
    // SAFETY: a NUL-terminated path; F_OK.
    unsafe {
        sys(
            nr::FACCESSAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            0,
            0,
            0,
            0,
        ) == -ENOENT
    }
}

/// Opens `path` (NUL-terminated) relative to the current directory.
fn open_at(path: &[u8], flags: usize) -> isize {
    // SAFETY: a NUL-terminated path.
    unsafe {
        sys(
            nr::OPENAT,
            AT_FDCWD as usize,
            path.as_ptr() as usize,
            flags,
            0,
            0,
            0,
        )
    }
}

/// Closes one of our descriptors.
fn close(fd: isize) {
    // SAFETY: closes our own descriptor.
    unsafe { sys(nr::CLOSE, fd as usize, 0, 0, 0, 0, 0) };
}

/// A whole regular file, read into a fresh anonymous mapping. A file a
/// container's author controls (`guarded`: its config.json) is first
/// opened as a mere handle (`O_PATH`: no device is opened, no FIFO waited
/// on) and looked at; only a regular file is opened for reading, and
/// through that handle (`/proc/self/fd/N`), so nothing can be swapped in.
/// The node's own config is opened at once (as the full runtime opens it).
/// `Err(true)`: the file does not exist; `Err(false)`: anything else.
fn read_file(path: &[u8], max: u64, guarded: bool) -> Result<&'static [u8], bool> {
    let mut buf = [0u8; PATH_MAX];
    let p = c_path(&[path], &mut buf).ok_or(false)?;
    if !guarded {
        let fd = open_at(p, O_RDONLY_CLOEXEC_NONBLOCK_NOCTTY);
        if fd == -ENOENT {
            return Err(true);
        }
        if fd < 0 {
            return Err(false);
        }
        let result = read_open(fd, max);
        close(fd);
        return result;
    }
    let handle = open_at(p, O_PATH_CLOEXEC);
    if handle == -ENOENT {
        return Err(true);
    }
    if handle < 0 {
        return Err(false);
    }
    let fd = match stat(handle, b"") {
        Some((mode, size)) if mode & S_IFMT == S_IFREG && size <= max => {
            let mut digits = [0u8; 20];
            let mut n = digits.len();
            let mut v = handle as usize;
            loop {
                n -= 1;
                digits[n] = b'0' + (v % 10) as u8;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            let mut again = [0u8; PATH_MAX];
            match c_path(&[b"/proc/self/fd/", &digits[n..]], &mut again) {
                Some(q) => open_at(q, O_RDONLY_CLOEXEC_NONBLOCK_NOCTTY),
                None => -1,
            }
        }
        _ => -1,
    };
    close(handle);
    if fd < 0 {
        return Err(false);
    }
    let result = read_open(fd, max);
    close(fd);
    result
}

/// The whole of the regular file open on `fd` (of at most `max` bytes).
fn read_open(fd: isize, max: u64) -> Result<&'static [u8], bool> {
    let (mode, size) = stat(fd, b"").ok_or(false)?;
    if mode & S_IFMT != S_IFREG || size > max {
        return Err(false);
    }
    if size == 0 {
        return Ok(&[][..]);
    }
    // Room for one byte more than the size, to see a file that grew.
    let cap = size as usize + 1;
    // SAFETY: an anonymous private mapping of `cap` bytes.
    let mem = unsafe {
        sys(
            nr::MMAP,
            0,
            cap,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            usize::MAX,
            0,
        )
    };
    if mem < 0 {
        return Err(false);
    }
    let mut got = 0;
    while got < cap {
        // SAFETY: reads into the mapping, within its length.
        let r = unsafe {
            sys(
                nr::READ,
                fd as usize,
                mem as usize + got,
                cap - got,
                0,
                0,
                0,
            )
        };
        if r < 0 {
            return Err(false);
        }
        if r == 0 {
            break;
        }
        got += r as usize;
    }
    if got == cap {
        return Err(false); // it grew while read
    }
    // SAFETY: the mapping lives to the end of the process.
    Ok(unsafe { core::slice::from_raw_parts(mem as *const u8, got) })
}

/// Replaces this process with `path` (NUL-terminated), argv[0] set to
/// `arg0` (NUL-terminated), the other arguments and the environment as
/// given. Returns only if the exec failed.
fn exec(path: &[u8], arg0: &[u8]) {
    // SAFETY: argv is the kernel's writable array; its first slot now
    // points at a NUL-terminated string that lives as long as we do.
    unsafe {
        *PROCESS.argv = arg0.as_ptr();
        sys(
            nr::EXECVE,
            path.as_ptr() as usize,
            PROCESS.argv as usize,
            PROCESS.envp as usize,
            0,
            0,
            0,
        );
    }
}

const FULL_NAME: &[u8] = b"gpushare-runtime\0";

/// Hands the call to the full runtime: `gpushare-hook` beside this binary,
/// as `gpushare-runtime`. Never returns.
fn hand_over() -> ! {
    let mut me = [0u8; PATH_MAX];
    // SAFETY: reads the link into a buffer of its length.
    let n = unsafe {
        sys(
            nr::READLINKAT,
            AT_FDCWD as usize,
            c"/proc/self/exe".as_ptr() as usize,
            me.as_mut_ptr() as usize,
            PATH_MAX - 1,
            0,
            0,
        )
    };
    // A link that fills the buffer may have been cut short: argv[0] then.
    let dir: &[u8] = if n > 0 && (n as usize) < PATH_MAX - 1 {
        let exe = &me[..n as usize];
        &exe[..exe.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)]
    } else {
        // SAFETY: argv[0] is a NUL-terminated string (or absent).
        let arg0 = unsafe {
            if PROCESS.argc > 0 {
                c_str(*PROCESS.argv)
            } else {
                b""
            }
        };
        &arg0[..arg0.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)]
    };
    let mut buf = [0u8; PATH_MAX];
    if let Some(full) = c_path(&[dir, b"gpushare-hook"], &mut buf) {
        exec(full, FULL_NAME);
        let shown = &full[..full.len() - 1];
        write_stderr(&[
            b"gpushare: cannot run ",
            shown,
            b": gpushare-runtime hands GPU containers to it; install gpushare-runtime and gpushare-hook in one directory\n",
        ]);
    }
    exit(1)
}

/// The low-level runtime named in the config, found the way the full
/// runtime finds it (a path as given, else the first executable regular
/// file of that name on PATH), as a NUL-terminated path in `buf` and the
/// offset of its file name; `None` when there is none (the full runtime
/// then reports it).
fn find_runtime(name: &[u8], buf: &mut [u8; PATH_MAX]) -> Option<usize> {
    let executable = |p: &[u8]| {
        // SAFETY: a NUL-terminated path.
        let ok = unsafe {
            sys(
                nr::FACCESSAT,
                AT_FDCWD as usize,
                p.as_ptr() as usize,
                X_OK,
                0,
                0,
                0,
            )
        } == 0;
        ok && stat(-1, p).is_some_and(|(mode, _)| mode & S_IFMT == S_IFREG)
    };
    if name.contains(&b'/') {
        let p = c_path(&[name], buf)?;
        let base = p.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1);
        return executable(p).then_some(base);
    }
    let path = getenv(b"PATH").unwrap_or(b"/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(|&b| b == b':') {
        // An empty entry is the current directory, as std's PATH search has it.
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let Some(p) = c_path(&[dir, b"/", name], buf) else {
            continue;
        };
        if executable(p) {
            return Some(p.len() - 1 - name.len());
        }
    }
    None
}

/// The found runtime as (path, file name), both NUL-terminated.
fn runtime_of(buf: &[u8; PATH_MAX], base: usize) -> (&[u8], &[u8]) {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(PATH_MAX - 1);
    (&buf[..=end], &buf[base..=end])
}

/// Starts the runtime (`path`, with our argv under `arg0`) as a child that
/// shares our memory until it has exec'd, as vfork does: no copy of our
/// page tables, no copy-on-write faults after. The child runs no code of
/// ours: the clone, the exec and, if the exec fails, storing its error
/// and exiting are one block of instructions that touch no stack. Returns
/// the child's pid (negative: the clone failed) and the exec's errno (0:
/// it exec'd).
fn spawn(path: &[u8], arg0: &[u8]) -> (isize, i32) {
    let mut error: i32 = 0;
    // SAFETY: argv is the kernel's writable array; its first slot now
    // points at a NUL-terminated string that lives as long as we do.
    let (argv, envp) = unsafe {
        *PROCESS.argv = arg0.as_ptr();
        (PROCESS.argv as usize, PROCESS.envp as usize)
    };
    let errp = &mut error as *mut i32 as usize;
    let pid: isize;
    // SAFETY: see above; the child only execs or stores into `error` (alive:
    // we are stopped until the child has exec'd or exited) and exits.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov eax, {execve}",
            "syscall",
            "mov dword ptr [r8], eax",
            "mov edi, 127",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            "2:",
            execve = const nr::EXECVE,
            exit = const nr::EXIT,
            inlateout("rax") nr::VFORK as isize => pid,
            inout("rdi") path.as_ptr() as usize => _,
            in("rsi") argv,
            in("rdx") envp,
            in("r8") errp,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    // aarch64 has no vfork call: clone with CLONE_VM | CLONE_VFORK and no
    // new stack is the same.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        asm!(
            "svc 0",
            "cbnz x0, 2f",
            "mov x0, x9",
            "mov x1, x10",
            "mov x2, x11",
            "mov x8, #{execve}",
            "svc 0",
            "str w0, [x12]",
            "mov x0, #127",
            "mov x8, #{exit}",
            "svc 0",
            "brk #0",
            "2:",
            execve = const nr::EXECVE,
            exit = const nr::EXIT,
            inlateout("x0") 0x4111isize => pid, // CLONE_VM | CLONE_VFORK | SIGCHLD
            inlateout("x1") 0usize => _,
            inlateout("x2") 0usize => _,
            inlateout("x3") 0usize => _,
            inlateout("x4") 0usize => _,
            inlateout("x8") nr::CLONE => _,
            in("x9") path.as_ptr() as usize,
            in("x10") argv,
            in("x11") envp,
            in("x12") errp,
            options(nostack),
        );
    }
    (pid, -error)
}

/// The delete of a container the ledger holds: the runtime's delete as our
/// child, then, if it succeeded, the release appended to the journal under
/// the ledger's lock. Ends as the child ended. (Signals to this process
/// during the short delete are not passed on: one that ends us leaves the
/// release to the ledger's liveness check, which finds the pid gone.)
fn delete_and_release(path: &[u8], arg0: &[u8], id: &[u8], state_dir: &[u8]) -> ! {
    let (pid, exec_error) = spawn(path, arg0);
    if pid < 0 {
        hand_over();
    }
    let mut status: i32 = 0;
    if exec_error != 0 {
        // SAFETY: reaps our child, which exited after its failed exec.
        unsafe {
            sys(
                nr::WAIT4,
                pid as usize,
                &mut status as *mut i32 as usize,
                0,
                0,
                0,
                0,
            )
        };
        write_stderr(&[
            b"gpushare: cannot run low-level runtime ",
            &path[..path.len() - 1],
            b"; fix runtime.path\n",
        ]);
        exit(1);
    }
    loop {
        // SAFETY: waits for our child, with a pointer to a local.
        let r = unsafe {
            sys(
                nr::WAIT4,
                pid as usize,
                &mut status as *mut i32 as usize,
                0,
                0,
                0,
                0,
            )
        };
        if r != -4 {
            break; // not EINTR
        }
    }
    let (exited, code, signal) = (status & 0x7f == 0, (status >> 8) & 0xff, status & 0x7f);
    if exited && code == 0 && !release(id, state_dir) {
        write_stderr(&[
            b"gpushare: warning: the container is deleted but its release could not be written in ",
            state_dir,
            b"; the ledger drops it once it sees its process gone\n",
        ]);
    }
    if exited {
        exit(code);
    }
    // SAFETY: getpid and kill take plain numbers; no handler was installed,
    // so the signal acts as it did on the child.
    unsafe {
        sys(
            nr::KILL,
            sys(nr::GETPID, 0, 0, 0, 0, 0, 0) as usize,
            signal as usize,
            0,
            0,
            0,
            0,
        )
    };
    exit(128 + signal)
}

/// Appends `X <id> $` to the journal, under the ledger's lock, synced.
fn release(id: &[u8], state_dir: &[u8]) -> bool {
    const O_LOCK: usize = 0o2 | 0o100 | 0o2000000 | 0o400000; // RDWR|CREAT|CLOEXEC|NOFOLLOW
    const O_JOURNAL: usize = 0o1 | 0o100 | 0o2000 | 0o2000000 | 0o400000; // WRONLY|CREAT|APPEND|CLOEXEC|NOFOLLOW
    const LOCK_EX: usize = 2;
    let open = |name: &[u8], flags: usize, mode: usize| -> isize {
        let mut buf = [0u8; PATH_MAX];
        match c_path(&[state_dir, name], &mut buf) {
            // SAFETY: a NUL-terminated path.
            Some(p) => unsafe {
                sys(
                    nr::OPENAT,
                    AT_FDCWD as usize,
                    p.as_ptr() as usize,
                    flags,
                    mode,
                    0,
                    0,
                )
            },
            None => -1,
        }
    };
    let lock = open(b"/ledger.lock", O_LOCK, 0o600);
    if lock < 0 {
        return false;
    }
    // SAFETY: flock on our own descriptor.
    let mut ok = unsafe { sys(nr::FLOCK, lock as usize, LOCK_EX, 0, 0, 0, 0) } == 0;
    if ok {
        let journal = open(b"/ledger.journal", O_JOURNAL, 0o600);
        ok = journal >= 0;
        if ok {
            let mut line = [0u8; PATH_MAX];
            let n = 3 + id.len() + 3;
            ok = n <= PATH_MAX;
            if ok {
                line[..3].copy_from_slice(b"\nX ");
                line[3..3 + id.len()].copy_from_slice(id);
                line[3 + id.len()..n].copy_from_slice(b" $\n");
                // SAFETY: writes our buffer to our descriptor, then syncs it.
                ok = unsafe {
                    sys(
                        nr::WRITE,
                        journal as usize,
                        line.as_ptr() as usize,
                        n,
                        0,
                        0,
                        0,
                    )
                } == n as isize
                    && unsafe { sys(nr::FDATASYNC, journal as usize, 0, 0, 0, 0, 0) } == 0;
            }
            // SAFETY: closes our own descriptor.
            unsafe { sys(nr::CLOSE, journal as usize, 0, 0, 0, 0, 0) };
        }
    }
    if ok {
        // The release is written: the marker goes.
        let mut buf = [0u8; PATH_MAX];
        if let Some(p) = c_path(&[state_dir, b"/held/", id], &mut buf) {
            // SAFETY: a NUL-terminated path.
            unsafe {
                sys(
                    nr::UNLINKAT,
                    AT_FDCWD as usize,
                    p.as_ptr() as usize,
                    0,
                    0,
                    0,
                    0,
                )
            };
        }
    }
    // SAFETY: closing releases the lock.
    unsafe { sys(nr::CLOSE, lock as usize, 0, 0, 0, 0, 0) };
    ok
}

/// What the front does with a call.
#[derive(Debug, PartialEq)]
enum Route<'a> {
    /// Exec the runtime: gpushare has nothing to do with this call.
    Runtime,
    /// The delete of a container the ledger holds (a plain id).
    DeletePlaced(&'a [u8]),
    /// The full runtime's: a GPU create, or anything not certain.
    Full,
}

fn route_of<'a>(line: &args::Line<'a>, runtime: &config::Runtime) -> Route<'a> {
    if let Some(create) = &line.create {
        let dir: &[u8] = if create.bundle.is_empty() {
            b"."
        } else {
            create.bundle
        };
        let mut buf = [0u8; PATH_MAX];
        let Some(p) = c_path(&[dir, b"/config.json"], &mut buf) else {
            return Route::Full;
        };
        return match read_file(&p[..p.len() - 1], MAX_SPEC, true)
            .ok()
            .and_then(spec::ask)
        {
            Some(spec::Ask::NotGpu) => Route::Runtime,
            _ => Route::Full,
        };
    }
    if let Some(id) = line.delete {
        return match held(id, runtime) {
            Some(true) => Route::DeletePlaced(id),
            Some(false) => Route::Runtime,
            None => Route::Full,
        };
    }
    if let Some(exec) = line.exec {
        // An engine's exec brings its own copy of the process: the full
        // runtime gives it the variables gpushare set for the container.
        // (Without --process runc takes the rewritten config.json's.)
        if exec.process.is_some() && held(exec.id, runtime) != Some(false) {
            return Route::Full;
        }
    }
    Route::Runtime
}

/// Whether gpushare holds container `id`: its marker, named by the id, is
/// there. `None` when that cannot be told here (an id outside runc's rule,
/// a failed stat): the full runtime's to judge.
fn held(id: &[u8], runtime: &config::Runtime) -> Option<bool> {
    if ids::id_fault(id).is_some() {
        return None;
    }
    let mut buf = [0u8; PATH_MAX];
    let p = c_path(&[runtime.state_dir, b"/held/", id], &mut buf)?;
    match stat(-1, p) {
        Some(_) => Some(true),
        None if exists_not(p) => Some(false),
        None => None,
    }
}

/// The most arguments the front reads; a longer line is handed over.
const MAX_ARGS: usize = 512;

fn route() -> ! {
    // SAFETY: PROCESS was set from the kernel's layout before we got here.
    let (argc, argv) = unsafe { (PROCESS.argc, PROCESS.argv) };
    if argc == 0 || argc > MAX_ARGS {
        hand_over();
    }
    let mut slots: [&[u8]; MAX_ARGS] = [b""; MAX_ARGS];
    for (i, slot) in slots.iter_mut().enumerate().take(argc).skip(1) {
        // SAFETY: argv holds argc NUL-terminated strings.
        *slot = unsafe { c_str(*argv.add(i)) };
    }
    let args = &slots[1..argc];
    let config_path = getenv(b"GPUSHARE_CONFIG")
        .filter(|p| !p.is_empty())
        .unwrap_or(b"/etc/gpushare/config.toml");
    let runtime = match read_file(config_path, MAX_FILE, false) {
        Ok(text) => config::runtime(text),
        Err(true) => Some(config::DEFAULT),
        Err(false) => None,
    };
    let Some(runtime) = runtime else {
        hand_over();
    };
    let line = args::parse(args);
    let route = route_of(&line, &runtime);
    if route == Route::Full {
        hand_over();
    }
    let mut buf = [0u8; PATH_MAX];
    let Some(base) = find_runtime(runtime.path, &mut buf) else {
        hand_over();
    };
    let (path, arg0) = runtime_of(&buf, base);
    match route {
        Route::DeletePlaced(id) => delete_and_release(path, arg0, id, runtime.state_dir),
        _ => {
            if line.version {
                // gpushare's version first, then the runtime's own (as
                // NVIDIA's runtime does).
                write_stdout(VERSION_LINE);
            }
            exec(path, arg0);
            hand_over()
        }
    }
}

/// What `--version` prints before the low-level runtime's version.
const VERSION_LINE: &[u8] = concat!(
    "gpushare-runtime version ",
    env!("CARGO_PKG_VERSION"),
    "\n\n"
)
.as_bytes();

fn write_stdout(bytes: &[u8]) {
    // SAFETY: a valid buffer and its length.
    unsafe { sys(nr::WRITE, 1, bytes.as_ptr() as usize, bytes.len(), 0, 0, 0) };
}

#[no_mangle]
unsafe extern "C" fn front_main(sp: *const usize) -> ! {
    // SAFETY: the kernel's initial stack: argc, argv[argc], NULL, envp…, NULL.
    unsafe {
        let argc = *sp;
        let argv = sp.add(1) as *mut *const u8;
        PROCESS = Process {
            argc,
            argv,
            envp: argv.add(argc + 1),
        };
    }
    route()
}

/// A bug in the front is no reason to fail a container: the full runtime
/// takes the call.
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    hand_over()
}

/// Never called (nothing unwinds: a panic hands over), but the prebuilt
/// `core` of debug builds names it.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

// What the compiler calls for copies and comparisons, which a C library
// would provide. Volatile accesses keep the optimiser from turning these
// loops back into calls to themselves.

/// # Safety
/// As C's memcpy.
#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: as memcpy's contract.
    unsafe {
        for i in 0..n {
            core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
        }
    }
    dst
}

/// # Safety
/// As C's memmove.
#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: as memmove's contract: copy backwards when dst is after src.
    unsafe {
        if (dst as usize) <= (src as usize) {
            for i in 0..n {
                core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
            }
        } else {
            for i in (0..n).rev() {
                core::ptr::write_volatile(dst.add(i), core::ptr::read_volatile(src.add(i)));
            }
        }
    }
    dst
}

/// # Safety
/// As C's memset.
#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: as memset's contract.
    unsafe {
        for i in 0..n {
            core::ptr::write_volatile(dst.add(i), c as u8);
        }
    }
    dst
}

/// # Safety
/// As C's memcmp.
#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: as memcmp's contract.
    unsafe {
        for i in 0..n {
            let (x, y) = (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            );
            if x != y {
                return i32::from(x) - i32::from(y);
            }
        }
    }
    0
}

/// # Safety
/// As C's strlen.
#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    // SAFETY: as strlen's contract: a NUL-terminated string.
    unsafe {
        while core::ptr::read_volatile(s.add(n)) != 0 {
            n += 1;
        }
    }
    n
}

/// # Safety
/// As C's bcmp.
#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: as bcmp's contract.
    unsafe { memcmp(a, b, n) }
}
