//! `gpushare-runtime`: stands where runc stood. On `create` and `run` of a
//! GPU container it decides, rewrites the bundle's config.json and reserves
//! the GPU in the ledger, then runs the low-level runtime as its child with
//! the arguments it was given (signals forwarded, stdio and exit status
//! passed through), binds the container's process from the runtime's pid
//! file once it exists, and takes back only its own reservation if the
//! runtime fails. `delete` of a container the ledger holds runs the
//! runtime's delete and releases after it succeeds; an engine's `exec`
//! into one gets the variables gpushare set. Everything else, non-GPU
//! creates included, is a bare exec of the runtime: no hook is involved.
//! A refusal leaves nothing behind: the config.json is as it was and the
//! ledger holds nothing new.
//!
//! A container is its runtime root (runc's `--root`) and its id, so a
//! delete or an exec under another root never touches another's hold.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::time::Duration;

use thiserror::Error;

use crate::bundle::{Bundle, BundleError, Raw};
use crate::config::Config;
use crate::edits::EditsError;
use crate::ledger::{self, Container, Hold, Ledger, LedgerError, Source};
use crate::placement::{place, Placement, PlacementError};
use crate::request::{Request, RequestError};
use crate::runtime_args::{CreateArgs, Invocation};
use crate::sys::Process;

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
    #[error("cannot wait for the low-level runtime: {0}")]
    Wait(#[source] std::io::Error),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Spec(#[from] EditsError),
}

impl ShimError {
    /// What the caller must fix (exit 2) rather than what failed (exit 1).
    pub fn is_refusal(&self) -> bool {
        match self {
            ShimError::NoRuntime { .. } | ShimError::Request(_) => true,
            ShimError::Bundle(e) => e.is_refusal(),
            ShimError::Placement(e) => e.is_refusal(),
            _ => false,
        }
    }
}

/// Finds the low-level runtime: a path as given, or a name on PATH.
pub fn resolve_runtime(cfg: &Config) -> Result<PathBuf, ShimError> {
    let name = &cfg.runtime.path;
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
        .ok_or_else(|| ShimError::NoRuntime {
            name: name.clone(),
            config: cfg.name(),
        })
}

fn is_executable(p: &Path) -> bool {
    nix::unistd::access(p, nix::unistd::AccessFlags::X_OK).is_ok() && p.is_file()
}

/// The container a call names: its runtime root, made absolute as runc
/// makes it, and its id.
pub fn container(root: Option<&Path>, id: &str) -> Container {
    let root = match root {
        None => String::new(),
        Some(r) => std::path::absolute(r)
            .unwrap_or_else(|_| r.to_owned())
            .display()
            .to_string(),
    };
    Container {
        root,
        id: id.to_owned(),
    }
}

/// One `gpushare-runtime` call. Returns the wait status of a runtime run
/// as a child (a GPU container's create or run, a held container's
/// delete); every other call execs the runtime and returns only on failure.
pub fn handle(inv: &Invocation, args: &[OsString], cfg: &Config) -> Result<ExitStatus, ShimError> {
    let runtime = resolve_runtime(cfg)?;
    if inv.version {
        // gpushare's version first, then the runtime's own.
        println!("gpushare-runtime version {}\n", env!("CARGO_PKG_VERSION"));
    }
    if let Some(create) = &inv.create {
        return self::create(create, inv, args, cfg, &runtime);
    }
    if let Some(id) = &inv.delete {
        let c = container(inv.root.as_deref(), id);
        // A ledger that cannot be read never keeps an engine from deleting
        // a container: its hold, if it has one, stops counting once its
        // process is gone.
        let held = Ledger::open_if_exists(&cfg.runtime.state_dir)
            .and_then(|l| l.map(|l| l.holds_of(&c).map(|h| (l, h))).transpose());
        match held {
            Ok(Some((ledger, holds))) if !holds.is_empty() => {
                return delete(ledger, &c, &holds, &runtime, args);
            }
            Ok(_) => {}
            Err(e) => eprintln!(
                "gpushare: warning: cannot read the ledger ({}); deleting the container without releasing a hold it may have",
                crate::text::one_line(&e)
            ),
        }
    } else if let Some((id, process)) = &inv.exec_process {
        // The engine's exec brings its own copy of the container's process
        // (containerd and Docker keep the spec as they made it): it gets
        // the variables gpushare set, so `kubectl exec` of a CUDA program
        // runs on the container's GPU with the container's MPS share.
        let c = container(inv.root.as_deref(), id);
        if let Some(ledger) = Ledger::open_if_exists(&cfg.runtime.state_dir)? {
            if let Some(hold) = ledger.holds_of(&c)?.into_iter().next() {
                if !hold.env.is_empty() {
                    give_env(process, &hold.env).map_err(|why| ShimError::ExecProcess {
                        id: id.clone(),
                        path: process.clone(),
                        why,
                    })?;
                }
            }
        }
    }
    Err(exec_runtime(&runtime, args))
}

/// The delete of a held container: the runtime's delete as a child, then,
/// once it succeeded, the release of the holds seen before it ran (a
/// create of the same id that came meanwhile keeps its own).
fn delete(
    mut ledger: Ledger,
    c: &Container,
    holds: &[Hold],
    runtime: &Path,
    args: &[OsString],
) -> Result<ExitStatus, ShimError> {
    let status = Runtime::spawn(runtime, args)?.wait()?;
    if status.success() {
        // The container is gone whatever the ledger says: a failed write is
        // the liveness check's to mend, not the engine's.
        let reservations: Vec<i64> = holds.iter().map(|h| h.reservation).collect();
        if let Err(e) = ledger.release(c, &reservations) {
            eprintln!(
                "gpushare: warning: the container is deleted but its release could not be recorded ({}); its hold stops counting now that its process is gone",
                crate::text::one_line(&e)
            );
        }
    }
    Ok(status)
}

/// The create path: a non-GPU container's spec is not even parsed whole
/// (its create is a bare exec); a GPU container is placed, its spec
/// rewritten and its hold reserved, and the runtime run as a child.
fn create(
    args_of: &CreateArgs,
    inv: &Invocation,
    args: &[OsString],
    cfg: &Config,
    runtime: &Path,
) -> Result<ExitStatus, ShimError> {
    let dir = if args_of.bundle.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        args_of.bundle.clone()
    };
    let raw = Raw::read(&dir)?;
    let request = Request::from_env(raw.env()?.iter().map(|e| e.as_ref()))?;
    if !request.is_gpu() {
        return Err(exec_runtime(runtime, args));
    }
    let mut bundle = raw.parse()?;
    // The whole document's request is the one placed.
    let request = Request::from_spec(bundle.env()?, &bundle.cdi_devices())?;
    let c = container(inv.root.as_deref(), &args_of.id);
    let mut ledger = Ledger::open(&cfg.runtime.state_dir)?;
    let Some(Placement {
        mut tx,
        edits,
        hold,
        warnings,
    }) = place(&bundle, &request, c, Source::Runtime, cfg, &mut ledger)?
    else {
        return Err(exec_runtime(runtime, args));
    };
    for w in &warnings {
        eprintln!("gpushare: warning: {w}");
    }
    // The parsed spec is edited in place: from here on the bundle only
    // keeps the bytes it read, to put back if a later step fails.
    let mut spec = std::mem::take(&mut bundle.spec);
    edits.apply_to_spec(&mut spec)?;
    bundle.write(&spec)?;
    let reserved = tx.insert(&hold).and_then(|()| tx.commit());
    if let Err(e) = reserved {
        let _ = bundle.restore();
        return Err(e.into());
    }
    let placed = Placed {
        bundle,
        ledger,
        hold,
    };
    placed.run(runtime, args, args_of, &cfg.runtime.state_dir)
}

/// What `create` left in place: the rewritten bundle and the reserved
/// hold, to bind to the container's process or to undo.
struct Placed {
    bundle: Bundle,
    ledger: Ledger,
    hold: Hold,
}

impl Placed {
    /// Puts the config.json back and removes this call's reservation (and
    /// nothing else of the container's).
    fn undo(mut self) {
        let _ = self.bundle.restore();
        self.release();
    }

    fn release(&mut self) {
        let _ = self
            .ledger
            .release(&self.hold.container, &[self.hold.reservation]);
    }

    /// Records the container's init process with this call's reservation
    /// (written anew if something dropped it meanwhile: the container
    /// really holds the GPU).
    fn bind(&mut self, pid: i32) -> Result<(), LedgerError> {
        let mut tx = self.ledger.begin()?;
        let (c, r) = (&self.hold.container, self.hold.reservation);
        if !tx.bind(c, Some(r), pid)? {
            tx.insert(&Hold {
                pid: Some(pid),
                pid_start: Process::find(pid).map(|p| p.start),
                ..self.hold.clone()
            })?;
        }
        tx.commit()
    }

    /// Runs the low-level runtime's `create` or `run` as a child and keeps
    /// the ledger true to what it did: the process bound from the runtime's
    /// own pid file once it is written (as soon as it appears, for a `run`
    /// in the foreground), the reservation released if the runtime fails
    /// (and the config.json put back) or once a foreground `run` has ended.
    fn run(
        mut self,
        runtime: &Path,
        args: &[OsString],
        create: &CreateArgs,
        state_dir: &Path,
    ) -> Result<ExitStatus, ShimError> {
        // The caller's pid file when it asked for one (containerd and
        // Docker always do), else one of ours, inserted as the
        // subcommand's flag and removed afterwards.
        let own = create.pid_file.is_none().then(|| own_pid_file(state_dir));
        let mut args = args.to_vec();
        if let Some(p) = &own {
            let at = create.subcommand_at + 1;
            args.splice(at..at, [OsString::from("--pid-file"), p.clone().into()]);
        }
        let pid_file = own
            .clone()
            .or_else(|| create.pid_file.clone())
            .expect("one is set");
        let mut child = match Runtime::spawn(runtime, &args) {
            Ok(c) => c,
            Err(e) => {
                self.undo();
                return Err(e);
            }
        };
        let foreground = create.run && !create.detach;
        let status = if foreground {
            // The container runs until `run` returns: bind as soon as the
            // runtime writes the pid file, polling with a backoff.
            let mut wait = Duration::from_millis(1);
            let mut bound = false;
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
                    Some(pid) => {
                        if let Err(e) = self.bind(pid) {
                            eprintln!(
                                "gpushare: warning: the container's pid could not be recorded ({}): its GPU stays reserved until runtime.reservation_timeout_seconds",
                                crate::text::one_line(&e)
                            );
                        }
                    }
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
            self.release();
        }
        Ok(status)
    }
}

/// Where the runtime is asked for a container's pid when its caller gave
/// no `--pid-file`: `<state_dir>/pid/<our pid>.<our start time>` (so `gc`
/// tells a live call's file from one a killed call left).
fn own_pid_file(state_dir: &Path) -> PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let dir = state_dir.join(ledger::PID_DIR);
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir);
    let me = std::process::id();
    let start = Process::find(me as i32).map_or(0, |p| p.start);
    let p = dir.join(format!("{me}.{start}"));
    let _ = std::fs::remove_file(&p);
    p
}

/// The pid a runtime wrote to its pid file, once it is whole.
fn read_pid(path: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(path).ok()?;
    text.trim().parse().ok().filter(|p: &i32| *p > 0)
}

/// The child runtime the signal handlers forward to (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Signals that came before the child's pid was known, one bit each.
static PENDING: AtomicU64 = AtomicU64::new(0);

/// The signals a runtime's parent passes on to it, as runc itself passes
/// them to a container's process: all but the uncatchable ones, SIGCHLD,
/// SIGPIPE and the synchronous faults.
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
fn forward(sig: libc::c_int) {
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

/// Whether `sig` is ignored in this process (as its caller left it).
fn ignored(sig: libc::c_int) -> bool {
    // SAFETY: a zeroed sigaction is a valid value; sigaction with a null
    // new action only reads the current one into ours.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(sig, std::ptr::null(), &mut old) == 0 && old.sa_sigaction == libc::SIG_IGN
    }
}

/// The low-level runtime running as our child, every forwarded signal we
/// receive passed on to it.
struct Runtime {
    child: Child,
}

impl Runtime {
    /// Starts the runtime (argv[0] its file name, as runc's own) with our
    /// stdio. The forwarding handlers go in first; a signal our caller had
    /// ignored keeps no handler, so the runtime starts with it ignored, as
    /// it would have exec'd directly (a caught signal is reset by exec).
    fn spawn(runtime: &Path, args: &[OsString]) -> Result<Runtime, ShimError> {
        for &sig in FORWARDED {
            if ignored(sig) {
                continue;
            }
            // SAFETY: the action only touches atomics and calls kill(2),
            // both async-signal-safe.
            let _ = unsafe { signal_hook::low_level::register(sig, move || forward(sig)) };
        }
        let child = Command::new(runtime)
            .arg0(runtime.file_name().unwrap_or(runtime.as_os_str()))
            .args(args)
            .spawn()
            .map_err(|source| ShimError::Exec {
                path: runtime.to_owned(),
                source,
            })?;
        let pid = child.id() as i32;
        CHILD.store(pid, Ordering::SeqCst);
        send_pending(pid);
        Ok(Runtime { child })
    }

    fn try_wait(&mut self) -> Result<Option<ExitStatus>, ShimError> {
        self.child.try_wait().map_err(ShimError::Wait)
    }

    fn wait(&mut self) -> Result<ExitStatus, ShimError> {
        let status = self.child.wait().map_err(ShimError::Wait)?;
        CHILD.store(0, Ordering::SeqCst);
        Ok(status)
    }
}

/// Ends this process as the child runtime ended: its exit code, or the
/// same signal (so a caller's wait sees what it would have seen of runc).
pub fn exit_like(status: ExitStatus) -> ! {
    if let Some(code) = status.code() {
        std::process::exit(code);
    }
    let sig = status.signal().unwrap_or(libc::SIGKILL);
    // SAFETY: restores the default action, unblocks the signal and raises
    // it at ourselves; plain system calls.
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

/// Replaces this process with the low-level runtime, argv[0] as runc's own.
/// Returns only on failure.
pub fn exec_runtime(runtime: &Path, args: &[OsString]) -> ShimError {
    let source = Command::new(runtime)
        .arg0(runtime.file_name().unwrap_or(runtime.as_os_str()))
        .args(args)
        .exec();
    ShimError::Exec {
        path: runtime.to_owned(),
        source,
    }
}

/// Sets `env` in the process file of an exec, in place: the very file the
/// engine wrote (opened without following a link, regular, at most
/// `MAX_CONFIG_BYTES`), so no file is made in the engine's directory.
fn give_env(process: &Path, env: &[String]) -> Result<(), String> {
    use std::io::{Read, Seek};
    let (mut file, _) =
        crate::sys::open_regular(process, false, true, crate::bundle::MAX_CONFIG_BYTES).map_err(
            |e| match e {
                crate::sys::Irregular::Io(e) => e.to_string(),
                crate::sys::Irregular::NotRegular(kind) => format!("{kind}, not a regular file"),
                crate::sys::Irregular::TooLarge(_) => "larger than 16 MiB".to_owned(),
            },
        )?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(crate::bundle::MAX_CONFIG_BYTES)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    let mut doc: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("not JSON: {}", crate::text::json_message(&e)))?;
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

    #[test]
    fn a_container_is_its_absolute_root_and_its_id() {
        assert_eq!(container(None, "c1").root, "");
        assert_eq!(container(Some(Path::new("/run/x")), "c1").root, "/run/x");
        let rel = container(Some(Path::new("state")), "c1").root;
        assert!(rel.starts_with('/') && rel.ends_with("/state"), "{rel}");
    }
}
