//! `gpushare-runtime`: stands where runc stood. On `create` and `run` of a
//! GPU container it decides, rewrites the bundle's config.json and reserves
//! the GPU in the ledger, then runs the low-level runtime as its child with
//! the arguments it was given (signals forwarded, stdio and exit status
//! passed through), binds the container's pid from the runtime's pid file
//! once it exists, and releases the reservation at once if the runtime
//! fails. `delete` of a container in the ledger runs the runtime's delete
//! and releases after it succeeds. Everything else, non-GPU creates
//! included, is a bare exec of the runtime: no hook is involved.
//! A refusal leaves nothing behind: the config.json is as it was and the
//! ledger holds no entry.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::bundle::Bundle;
use crate::config::Config;
use crate::ledger::{self, Entry, Ledger, Record};
use crate::placement::{place, Placement};
use crate::runtime_args::{CreateArgs, Invocation};

#[derive(Debug, Error)]
pub enum ShimError {
    #[error("low-level runtime {name:?} (runtime.path in {config}) is not an executable file on PATH or at that path; install runc or fix runtime.path")]
    NoRuntime { name: String, config: String },
    #[error("cannot give the process exec'd into container {id} gpushare's variables ({path}: {why}); it would run without its GPU settings, so it was not started")]
    ExecProcess {
        id: String,
        path: PathBuf,
        why: String,
    },
    #[error("cannot run low-level runtime {path}: {source}; fix runtime.path")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Finds the low-level runtime: a path as given, or a name on PATH.
pub fn resolve_runtime(cfg: &Config) -> Result<PathBuf, ShimError> {
    let name = &cfg.runtime.path;
    let missing = || ShimError::NoRuntime {
        name: name.clone(),
        config: cfg.name(),
    };
    let candidates: Vec<PathBuf> = if name.contains('/') {
        vec![PathBuf::from(name)]
    } else {
        let path =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
        std::env::split_paths(&path).map(|d| d.join(name)).collect()
    };
    candidates
        .into_iter()
        .find(|p| is_executable(p))
        .ok_or_else(missing)
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

/// What `intercept` left in place: the rewritten bundle and the reserved
/// entry, to bind to the container's pid or to undo.
pub struct Placed {
    bundle: Bundle,
    ledger: Ledger,
    entry: Entry,
}

impl Placed {
    /// Puts the config.json back and drops the reservation.
    pub fn undo(self) {
        let _ = self.bundle.restore();
        let _ = self.ledger.append(&Record::Release {
            id: self.entry.id.clone(),
        });
    }

    /// Records the container's init pid with its entry.
    fn bind(&self, pid: i32) -> Result<(), ledger::LedgerError> {
        self.ledger.append(&Record::Bind(Entry {
            pid: Some(pid),
            pid_start: crate::sys::process_start_time(pid),
            ..self.entry.clone()
        }))
    }

    /// Runs the low-level runtime's `create` or `run` as a child and keeps
    /// the ledger true to what it did: the pid bound from the runtime's own
    /// pid file once it is written (as soon as it appears, for a `run` in
    /// the foreground), the reservation released if the runtime fails (and
    /// the config.json put back) or once a foreground `run` has ended.
    pub fn run(
        self,
        runtime: &Path,
        args: &[OsString],
        create: &CreateArgs,
        state_dir: &Path,
    ) -> crate::Result<ExitStatus> {
        // The caller's pid file when it asked for one (containerd and
        // Docker always do), else one of ours, inserted as the
        // subcommand's flag and removed afterwards.
        let own = create.pid_file.is_none().then(|| own_pid_file(state_dir));
        let mut args = args.to_vec();
        if let Some(p) = &own {
            if let Some(dir) = p.parent() {
                use std::os::unix::fs::DirBuilderExt;
                let _ = std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir);
            }
            let _ = std::fs::remove_file(p);
            let at = create.subcommand_at + 1;
            args.splice(at..at, [OsString::from("--pid-file"), p.clone().into()]);
        }
        let pid_file = own
            .clone()
            .or_else(|| create.pid_file.clone())
            .expect("one is set");
        let mut child = match ForwardingChild::spawn(runtime, &args) {
            Ok(c) => c,
            Err(e) => {
                self.undo();
                return Err(e.into());
            }
        };
        let foreground = create.run && !create.detach;
        let mut bound = false;
        let status = if foreground {
            // The container runs until `run` returns: bind as soon as the
            // runtime writes the pid file, polling with a backoff.
            let mut wait = Duration::from_millis(1);
            loop {
                if let Some(st) = child.try_wait()? {
                    break st;
                }
                if !bound {
                    if let Some(pid) = read_pid(&pid_file) {
                        bound = self.bind(pid).is_ok();
                    }
                }
                if bound {
                    break child.wait()?;
                }
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(50));
            }
        } else {
            let st = child.wait()?;
            if st.success() {
                match read_pid(&pid_file) {
                    Some(pid) => bound = self.bind(pid).is_ok(),
                    None => eprintln!(
                        "gpushare: warning: {} gave no pid in {}: the GPU stays reserved until runtime.reservation_timeout_seconds",
                        runtime.display(),
                        pid_file.display()
                    ),
                }
            }
            st
        };
        if let Some(p) = &own {
            let _ = std::fs::remove_file(p);
        }
        if !status.success() {
            // The runtime made no container (it cleans up after a failed
            // create): nothing of gpushare's stays either.
            self.undo();
        } else if foreground {
            // `run` returned: the container has ended.
            let _ = self.ledger.append(&Record::Release {
                id: self.entry.id.clone(),
            });
        }
        let _ = bound;
        Ok(status)
    }
}

/// Where a shim asks the runtime to write the container's pid when its
/// caller gave no `--pid-file`: `<state_dir>/pid/<shim pid>`.
fn own_pid_file(state_dir: &Path) -> PathBuf {
    state_dir
        .join(ledger::PID_DIR)
        .join(std::process::id().to_string())
}

/// The pid a runtime wrote to its pid file, once it is whole.
fn read_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|p: &i32| *p > 0)
}

/// The child runtime the signal handler forwards to (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Signals that came before the child's pid was known, one bit each.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// The signals a runtime's parent passes on to it, as runc itself passes
/// them to a container's process: all but the uncatchable ones, SIGCHLD
/// and the synchronous faults.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGTERM,
    libc::SIGCONT,
    libc::SIGTSTP,
    libc::SIGTTIN,
    libc::SIGTTOU,
    libc::SIGURG,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGWINCH,
    libc::SIGIO,
    libc::SIGPWR,
];

/// Sends every pending signal to the child, once its pid is known.
fn send_pending(pid: i32) {
    let bits = PENDING.swap(0, Ordering::SeqCst);
    for sig in 1..64 {
        if bits & (1 << sig) != 0 {
            // SAFETY: kill is async-signal-safe; pid is our child's.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// Passes a signal on to the child. Before the child exists the signal is
/// kept, and whichever of this handler and the spawner sees both the pid
/// and the bit sends it: the spawner stores the pid then takes the bits,
/// the handler sets its bit then looks at the pid again, so none is lost
/// and none goes twice.
extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe; pid is our child's.
        unsafe { libc::kill(pid, sig) };
        return;
    }
    PENDING.fetch_or(1 << sig, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    if pid > 0 {
        send_pending(pid);
    }
}

/// The low-level runtime running as our child, every forwarded signal we
/// receive passed on to it.
struct ForwardingChild {
    pid: i32,
    status: Option<ExitStatus>,
}

/// What the spawned child needs, prepared by the parent before the clone
/// (the child shares the parent's memory and must not allocate).
struct SpawnPlan {
    path: std::ffi::CString,
    argv: Vec<*const libc::c_char>,
    /// The dispositions the forwarded signals had before our handlers: the
    /// child puts them back, so the runtime starts with what it would have
    /// had, exec'd directly.
    old: Vec<(libc::c_int, libc::sigaction)>,
    /// The signal mask we were started with, the child's too.
    mask: libc::sigset_t,
    /// The child's exec error (errno), written before it exits.
    error: AtomicI32,
}

/// The child's side of the spawn: on its own stack, in the parent's memory,
/// every signal blocked. Only system calls: no allocation, no lock.
extern "C" fn spawned(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the parent passes its plan, alive and unchanged until this
    // child has exec'd or exited (CLONE_VFORK).
    let plan = unsafe { &*(plan as *const SpawnPlan) };
    // SAFETY: sigaction, sigprocmask and execv with the plan's valid
    // pointers; _exit ends the child without running anything of ours.
    unsafe {
        for (sig, act) in &plan.old {
            libc::sigaction(*sig, act, std::ptr::null_mut());
        }
        libc::sigprocmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        libc::execv(plan.path.as_ptr(), plan.argv.as_ptr());
        plan.error
            .store(*libc::__errno_location(), Ordering::SeqCst);
        libc::_exit(127)
    }
}

impl ForwardingChild {
    /// Starts the runtime as our child. One clone that shares our memory
    /// and stops us until the child has exec'd (as posix_spawn does), but
    /// the child resets only the handlers we installed, where posix_spawn
    /// visits all 64 signals: over a hundred fewer system calls on every
    /// GPU create.
    fn spawn(runtime: &Path, args: &[OsString]) -> Result<ForwardingChild, ShimError> {
        use std::os::unix::ffi::OsStrExt;
        let exec_error = |source| ShimError::Exec {
            path: runtime.to_owned(),
            source,
        };
        let c = |s: &std::ffi::OsStr| {
            std::ffi::CString::new(s.as_bytes()).map_err(|_| {
                exec_error(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "an argument holds a NUL byte",
                ))
            })
        };
        let path = c(runtime.as_os_str())?;
        let mut owned = vec![c(runtime.file_name().unwrap_or(runtime.as_os_str()))?];
        for a in args {
            owned.push(c(a)?);
        }
        let mut argv: Vec<*const libc::c_char> = owned.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        // SAFETY: zeroed sigaction/sigset_t are valid values; the calls get
        // pointers to locals. The handler only uses atomics and kill(2).
        let (old, mask) = unsafe {
            let mut handler: libc::sigaction = std::mem::zeroed();
            handler.sa_sigaction = forward_signal as extern "C" fn(libc::c_int) as usize;
            handler.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut handler.sa_mask);
            let mut old = Vec::with_capacity(FORWARDED.len());
            for &sig in FORWARDED {
                let mut was: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &handler, &mut was) == 0 {
                    old.push((sig, was));
                }
            }
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut mask: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::sigprocmask(libc::SIG_SETMASK, &all, &mut mask);
            (old, mask)
        };
        let plan = SpawnPlan {
            path,
            argv,
            old,
            mask,
            error: AtomicI32::new(0),
        };
        // The child's stack: allocated, not written (only the pages it
        // uses are ever touched; zeroing it would cost a page fault each).
        const STACK: usize = 64 << 10;
        let mut stack: Vec<u128> = Vec::with_capacity(STACK / 16);
        // SAFETY: the child runs `spawned` on its own stack (the top of a
        // live, 16-byte aligned allocation) with a pointer to `plan`;
        // CLONE_VFORK keeps us stopped, and both alive, until it has exec'd
        // or exited.
        let pid = unsafe {
            libc::clone(
                spawned,
                stack.as_mut_ptr().add(stack.capacity()) as *mut libc::c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
                &plan as *const SpawnPlan as *mut libc::c_void,
            )
        };
        let clone_error = std::io::Error::last_os_error();
        if pid > 0 {
            CHILD.store(pid, Ordering::SeqCst);
        }
        // SAFETY: puts back the mask we were started with.
        unsafe { libc::sigprocmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut()) };
        drop(stack);
        if pid <= 0 {
            return Err(exec_error(clone_error));
        }
        let errno = plan.error.load(Ordering::SeqCst);
        if errno != 0 {
            CHILD.store(0, Ordering::SeqCst);
            let mut status = 0;
            // SAFETY: reaps our own child, which exited after the failed exec.
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err(exec_error(std::io::Error::from_raw_os_error(errno)));
        }
        send_pending(pid);
        Ok(ForwardingChild { pid, status: None })
    }

    fn reap(&mut self, flags: libc::c_int) -> crate::Result<Option<ExitStatus>> {
        if let Some(st) = self.status {
            return Ok(Some(st));
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child, into a local.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if r == self.pid {
                CHILD.store(0, Ordering::SeqCst);
                let st = ExitStatus::from_raw(status);
                self.status = Some(st);
                return Ok(Some(st));
            }
            if r == 0 {
                return Ok(None);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(crate::Error::Io(format!(
                    "cannot wait for the runtime: {e}"
                )));
            }
        }
    }

    fn try_wait(&mut self) -> crate::Result<Option<ExitStatus>> {
        self.reap(libc::WNOHANG)
    }

    fn wait(&mut self) -> crate::Result<ExitStatus> {
        Ok(self.reap(0)?.expect("a blocking wait returns a status"))
    }
}

/// Ends this process as the child runtime ended: its exit code, or the
/// same signal (so a caller's wait sees what it would have seen of runc).
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // SAFETY: restores the default action and raises the signal at
    // ourselves; plain syscalls.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// The full runtime: what `gpushare-runtime`'s front hands over to (by
/// starting `gpushare-hook` under the name `gpushare-runtime`). Ends the
/// process: as the child runtime ended, by exec'ing the runtime, or with a
/// refusal's one line (also in runc's `--log`) and exit code.
pub fn runtime_main() -> ! {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let inv = crate::runtime_args::parse(&args);
    // Every call but a `run` in the foreground (which lasts as long as its
    // container) ends as soon as the runtime's call has.
    if !inv.create.as_ref().is_some_and(|c| c.run && !c.detach) {
        ledger::leave_mappings_to_exit();
    }
    match handle(&inv, &args) {
        Ok(status) => exit_like(status),
        Err(e) => {
            let msg = format!("gpushare: {}", e.one_line());
            eprintln!("{msg}");
            if let Some(log) = &inv.log {
                // Best effort: stderr already carries the message.
                let _ = write_runtime_log(log, inv.log_format_json, &msg);
            }
            std::process::exit(e.exit_code());
        }
    }
}

/// One `gpushare-runtime` invocation. Returns the wait status of a runtime
/// run as a child (a GPU container's create or run, a placed container's
/// delete); every other call execs the runtime and returns only on failure.
pub fn handle(inv: &Invocation, args: &[OsString]) -> crate::Result<ExitStatus> {
    let cfg = Config::load()?;
    let runtime = resolve_runtime(&cfg)?;
    if inv.version {
        // gpushare's version first, then the runtime's own.
        println!("gpushare-runtime version {}\n", env!("CARGO_PKG_VERSION"));
    }
    if let Some(create) = &inv.create {
        if let Some(placed) = intercept(create, &cfg)? {
            return placed.run(&runtime, args, create, &cfg.runtime.state_dir);
        }
    } else if let Some(id) = &inv.delete {
        let ledger = Ledger::new(&cfg.runtime.state_dir);
        if ledger.mentions(id) {
            let status = ForwardingChild::spawn(&runtime, args)?.wait()?;
            if status.success() {
                // The container is gone whatever the ledger says: a failed
                // write is the liveness check's to mend, not the engine's.
                if let Err(e) = ledger.append(&Record::Release { id: id.clone() }) {
                    eprintln!(
                        "gpushare: warning: the container is deleted but its release could not be recorded ({}); the ledger drops it once it sees its process gone",
                        e
                    );
                }
            }
            return Ok(status);
        }
    } else if let Some((id, process)) = &inv.exec_process {
        // The engine's exec brings its own copy of the container's process
        // (containerd and Docker keep the spec as they made it): it gets
        // the variables gpushare set, so `kubectl exec` of a CUDA program
        // runs on the container's GPU with the container's MPS share.
        if let Some(entry) = Ledger::new(&cfg.runtime.state_dir).entry(id)? {
            if !entry.env.is_empty() {
                give_env(process, &entry.env).map_err(|why| ShimError::ExecProcess {
                    id: id.clone(),
                    path: process.clone(),
                    why,
                })?;
            }
        }
    }
    Err(exec_runtime(&runtime, args).into())
}

/// Sets `env` in the process file of an exec, in place: the very file the
/// engine wrote (opened without following a link, regular, at most
/// `MAX_CONFIG_BYTES`), so no file is made in the engine's directory.
fn give_env(process: &Path, env: &[String]) -> Result<(), String> {
    use std::io::{Read, Seek};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |path: &Path, read_write: bool, flags: libc::c_int| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(read_write)
            .custom_flags(flags | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| e.to_string())
    };
    let handle = open(process, false, libc::O_PATH | libc::O_NOFOLLOW)?;
    let meta = handle.metadata().map_err(|e| e.to_string())?;
    if !meta.file_type().is_file() || meta.len() > crate::bundle::MAX_CONFIG_BYTES {
        return Err("not a regular file of at most 16 MiB".into());
    }
    let mut file = open(
        Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())),
        true,
        libc::O_NONBLOCK | libc::O_NOCTTY,
    )?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(crate::bundle::MAX_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not JSON: {}", crate::error::json_message(&e)))?;
    let obj = doc.as_object_mut().ok_or("not a JSON object")?;
    let list = obj
        .entry("env")
        .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    if list.is_null() {
        *list = serde_json::Value::Array(Vec::new());
    }
    let list = list.as_array_mut().ok_or("its env is not an array")?;
    crate::edits::set_env(list, env);
    let out = serde_json::to_vec(&doc).expect("a JSON value serialises");
    file.rewind()
        .and_then(|()| file.write_all(&out))
        .and_then(|()| file.set_len(out.len() as u64))
        .map_err(|e| e.to_string())
}

/// The create path. `Ok(None)`: not a GPU container (or no GPU), the spec
/// is untouched. `Ok(Some(_))`: spec rewritten and GPU reserved.
pub fn intercept(args: &CreateArgs, cfg: &Config) -> crate::Result<Option<Placed>> {
    let dir = if args.bundle.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        args.bundle.clone()
    };
    let mut bundle = Bundle::open(&dir)?;
    let Some(Placement {
        mut locked,
        edits,
        entry,
        warnings,
    }) = place(&bundle, &args.id, cfg)?
    else {
        return Ok(None);
    };
    for w in &warnings {
        eprintln!("gpushare: warning: {w}");
    }
    // The parsed spec is edited in place: from here on the bundle only
    // keeps the bytes it read, to put back if a later step fails.
    let mut spec = std::mem::take(&mut bundle.spec);
    edits.apply_to_spec(&mut spec)?;
    bundle.write(&spec)?;
    locked.reserve(entry.clone());
    if let Err(e) = locked.commit() {
        let _ = bundle.restore();
        return Err(e.into());
    }
    Ok(Some(Placed {
        bundle,
        ledger: Ledger::new(&cfg.runtime.state_dir),
        entry,
    }))
}

/// Replaces this process with the low-level runtime, argv[0] as runc's own.
/// Returns only on failure.
pub fn exec_runtime(runtime: &Path, args: &[OsString]) -> ShimError {
    let source = std::process::Command::new(runtime)
        .arg0(runtime.file_name().unwrap_or(runtime.as_os_str()))
        .args(args)
        .exec();
    ShimError::Exec {
        path: runtime.to_owned(),
        source,
    }
}

/// Appends a refusal to runc's `--log` file in runc's own format, so
/// containerd and Docker show it where they show runc's errors.
///
/// Ref: runc logs through logrus: `--log-format json` writes
/// `{"level":"error","msg":…,"time":…}` lines, text writes
/// `time="…" level=error msg="…"`.
pub fn write_runtime_log(path: &Path, json: bool, msg: &str) -> std::io::Result<()> {
    let time = crate::sys::rfc3339(std::time::SystemTime::now());
    let line = if json {
        let mut v = serde_json::Map::new();
        v.insert("level".into(), "error".into());
        v.insert("msg".into(), msg.into());
        v.insert("time".into(), time.into());
        serde_json::Value::Object(v).to_string()
    } else {
        format!("time={time:?} level=error msg={:?}", msg)
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{line}\n").as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_log_lines_in_both_formats() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.json");
        write_runtime_log(&p, true, "refused: \"x\"").unwrap();
        write_runtime_log(&p, false, "two\"quotes").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "error");
        assert_eq!(v["msg"], "refused: \"x\"");
        assert!(
            lines[1].starts_with("time=\"")
                && lines[1].ends_with("level=error msg=\"two\\\"quotes\""),
            "{}",
            lines[1]
        );
    }

    #[test]
    fn the_runtime_is_found_on_path_or_refused_by_name() {
        let mut cfg = Config::default();
        cfg.runtime.path = "sh".into();
        assert!(resolve_runtime(&cfg).unwrap().ends_with("sh"));
        cfg.runtime.path = "/nonexistent/runc".into();
        let e = resolve_runtime(&cfg).unwrap_err().to_string();
        assert!(
            e.contains("/nonexistent/runc") && e.contains("runtime.path"),
            "{e}"
        );
        cfg.runtime.path = "definitely-not-a-runtime".into();
        assert!(resolve_runtime(&cfg).is_err());
    }
}
