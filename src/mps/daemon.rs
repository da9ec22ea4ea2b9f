//! NVIDIA's Multi-Process Service: one control daemon per GPU, started,
//! stopped, reported and supervised.
//!
//! Each daemon runs with `CUDA_VISIBLE_DEVICES=<uuid>`, its pipe and log
//! directories under `<mps.root>/<uuid>/`, in a private mount namespace
//! whose `/dev/shm` is that GPU's own tmpfs `<mps.root>/<uuid>/shm`, which
//! its clients get too (MPS servers and clients share memory through
//! `/dev/shm`) and the clients of other GPUs never see. The daemon's pid and
//! start time are kept in `<mps.root>/<uuid>/daemon.pid`, so telling
//! running from dead costs two small reads and no connection.
//!
//! What a client can change through the daemon's ordinary `control` socket
//! (the default share and pinned-memory limit, a running server's share) is
//! read back by `defaults` and put back by `restore`, which the supervisor
//! (`supervise`, behind `gpushare mps run`) does every few seconds.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::Serialize;
use thiserror::Error;

use crate::config::{Config, InventorySource};
use crate::inventory::{Gpu, Inventory};
use crate::sys::{write_atomic, Process};

use super::paths::{daemon, paths, Daemon, Paths};

#[derive(Debug, Error)]
pub enum MpsError {
    #[error(transparent)]
    Io(#[from] crate::sys::IoError),
    #[error("cannot run {control}: {source}; install NVIDIA's MPS (Debian: nvidia-cuda-mps, non-free) or set mps.control")]
    NoControl {
        control: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the MPS control daemon for GPU {index} did not start: {why}; see {log}")]
    Start {
        index: u32,
        why: String,
        log: PathBuf,
    },
    #[error(
        "cannot mount the MPS shared memory tmpfs at {path}: {source}; gpushare mps needs root"
    )]
    Shm {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("nvidia-smi could not {what} of GPU {index}: {why}")]
    ComputeMode {
        what: &'static str,
        index: u32,
        why: String,
    },
    #[error(transparent)]
    Gpu(#[from] crate::decide::Refusal),
    #[error("cannot handle {signal}: {source}; run `gpushare mps run` as root")]
    Signal {
        signal: &'static str,
        #[source]
        source: nix::Error,
    },
}

impl MpsError {
    /// A `--gpu` that names no GPU is the operator's to fix.
    pub fn is_refusal(&self) -> bool {
        matches!(self, MpsError::Gpu(_))
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MpsError + 'a {
    move |source| MpsError::Io(crate::sys::io(action, path)(source))
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    match (path.metadata(), path.join("..").metadata()) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Mounts the GPU's shared-memory tmpfs at `<mps.root>/<uuid>/shm` unless
/// it is there: world-writable and sticky, as /dev/shm is, so clients of any
/// user can make their segments; `mps.shm_size` at most.
fn ensure_shm(cfg: &Config, p: &Paths) -> Result<(), MpsError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&p.shm)
        .map_err(io("create", &p.shm))?;
    if is_mount_point(&p.shm) {
        return Ok(());
    }
    mount(
        Some("gpushare-mps-shm"),
        &p.shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some(format!("mode=1777,size={}", cfg.mps.shm_size).as_str()),
    )
    .map_err(|source| MpsError::Shm {
        path: p.shm.clone(),
        source,
    })
}

/// Unmounts the GPU's shared memory (its files go with the tmpfs) and
/// removes the mount point.
fn release_shm(p: &Paths) -> Result<(), MpsError> {
    if p.shm.exists() && is_mount_point(&p.shm) {
        umount2(&p.shm, MntFlags::MNT_DETACH).map_err(|source| MpsError::Shm {
            path: p.shm.clone(),
            source,
        })?;
    }
    let _ = std::fs::remove_dir(&p.shm);
    Ok(())
}

/// What `start` did for one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Started {
    pub index: u32,
    pub uuid: String,
    pub pid: i32,
    pub already: bool,
    /// The compute mode step: "EXCLUSIVE_PROCESS (was Default)", or why it
    /// was skipped.
    pub compute_mode: String,
}

/// Whether GPUs here are real (driver procfs or NVML) rather than listed in
/// an inventory file, as on a simulated node.
fn real_gpus(cfg: &Config) -> bool {
    !matches!(cfg.devices.inventory, InventorySource::File(_))
}

/// Starts the GPU's daemon unless it runs. A failed start leaves nothing
/// behind: no pipe directory, no pid file, no shared-memory mount.
pub fn start(cfg: &Config, gpu: &Gpu) -> Result<Started, MpsError> {
    let result = try_start(cfg, gpu);
    if result.is_err() {
        let p = paths(cfg, &gpu.uuid);
        let _ = std::fs::remove_dir_all(&p.pipe);
        let _ = std::fs::remove_file(&p.pid);
        let _ = restore_compute_mode(gpu, &p);
        release_shm(&p)?;
    }
    result
}

fn try_start(cfg: &Config, gpu: &Gpu) -> Result<Started, MpsError> {
    let p = paths(cfg, &gpu.uuid);
    let mut started = Started {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        pid: 0,
        already: false,
        compute_mode: String::new(),
    };
    if let Daemon::Running { pid } = daemon(cfg, &gpu.uuid) {
        started.pid = pid;
        started.already = true;
        started.compute_mode = "unchanged".into();
        return Ok(started);
    }
    // A dead daemon's sockets and pid file go, and its shared memory with
    // what its clients left there; its logs stay.
    let _ = std::fs::remove_dir_all(&p.pipe);
    let _ = std::fs::remove_file(&p.pid);
    release_shm(&p)?;
    ensure_shm(cfg, &p)?;
    for d in [&p.pipe, &p.log] {
        // 0755: clients of any user reach the sockets (which the daemon
        // makes 0666); only root changes the directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(d)
            .map_err(io("create", d))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod", d))?;
    }
    started.compute_mode = if !real_gpus(cfg) {
        "skipped: simulated GPU (no driver)".into()
    } else if !cfg.mps.exclusive {
        "left as it is (mps.compute_mode = \"leave\")".into()
    } else {
        set_exclusive(gpu, &p)?
    };
    let shm = p.shm.clone();
    let mut cmd = Command::new(&cfg.mps.control);
    cmd.arg("-d")
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CUDA_VISIBLE_DEVICES", &gpu.uuid)
        .env("CUDA_MPS_PIPE_DIRECTORY", &p.pipe)
        .env("CUDA_MPS_LOG_DIRECTORY", &p.log)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: the closure runs in the forked child of this single-threaded
    // program and only makes syscalls before exec.
    unsafe {
        cmd.pre_exec(move || {
            // A mount namespace of the daemon's own, whose /dev/shm is its
            // GPU's tmpfs; mounts stay out of the host's namespace.
            unshare(CloneFlags::CLONE_NEWNS)?;
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_SLAVE,
                None::<&str>,
            )?;
            mount(
                Some(&shm),
                "/dev/shm",
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        });
    }
    let status = cmd.status().map_err(|source| MpsError::NoControl {
        control: cfg.mps.control.clone(),
        source,
    })?;
    let fail = |why: String| MpsError::Start {
        index: gpu.index,
        why,
        log: p.log.join("control.log"),
    };
    if !status.success() {
        return Err(fail(format!("{} -d exited with {status}", cfg.mps.control)));
    }
    // The daemon forked away from the process we ran; its pid comes from
    // its control socket's credentials.
    let control = p.pipe.join("control");
    let deadline = Instant::now() + Duration::from_secs(5);
    let pid = loop {
        if let Some(pid) = peer_pid(&control) {
            break pid;
        }
        if Instant::now() > deadline {
            return Err(fail(format!(
                "no control socket at {} after 5 s",
                control.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let start = Process::find(pid)
        .ok_or_else(|| fail(format!("pid {pid} vanished")))?
        .start;
    write_atomic(&p.pid, format!("{pid} {start}\n").as_bytes(), 0o644)
        .map_err(io("write", &p.pid))?;
    started.pid = pid;
    Ok(started)
}

/// The pid of the process listening on an MPS control socket (a
/// SOCK_SEQPACKET socket), from the connection's peer credentials.
fn peer_pid(path: &Path) -> Option<i32> {
    use nix::sys::socket::{
        connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, UnixAddr,
    };
    let fd = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path).ok()?).ok()?;
    getsockopt(&fd, sockopt::PeerCredentials)
        .ok()
        .map(|c| c.pid())
}

/// Sends one command to a daemon through its control client, returning
/// what it answered.
pub fn command(cfg: &Config, uuid: &str, line: &str) -> Result<String, MpsError> {
    let p = paths(cfg, uuid);
    let mut child = Command::new(&cfg.mps.control)
        .env_clear()
        .env("CUDA_MPS_PIPE_DIRECTORY", &p.pipe)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|source| MpsError::NoControl {
            control: cfg.mps.control.clone(),
            source,
        })?;
    let _ = child
        .stdin
        .take()
        .expect("piped")
        .write_all(format!("{line}\n").as_bytes());
    let out = child
        .wait_with_output()
        .map_err(io("run", Path::new(&cfg.mps.control)))?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The client pids in the control daemon's `ps` answer (rows that start
/// with a pid: `PID ID SERVER DEVICE NAMESPACE COMMAND`); "Server not
/// found" and headers give none.
pub fn parse_ps(answer: &str) -> Vec<u32> {
    answer
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

/// The MPS clients of a GPU's daemon, by pid.
pub fn clients(cfg: &Config, uuid: &str) -> Vec<u32> {
    match daemon(cfg, uuid) {
        Daemon::Running { .. } => command(cfg, uuid, "ps")
            .map(|a| parse_ps(&a))
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stopped {
    pub index: u32,
    pub uuid: String,
    /// What was there: running, dead or stopped.
    pub was: &'static str,
    pub compute_mode: String,
}

pub fn stop(cfg: &Config, gpu: &Gpu) -> Result<Stopped, MpsError> {
    let p = paths(cfg, &gpu.uuid);
    let was = daemon(cfg, &gpu.uuid);
    if let Daemon::Running { pid } = was {
        let _ = command(cfg, &gpu.uuid, "quit");
        let process = Process::find(pid);
        let alive = || process.is_some_and(|p| p.is_alive());
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive() {
            // SAFETY: signals the daemon whose pid and start time we hold.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(&p.pipe);
    let _ = std::fs::remove_file(&p.pid);
    let compute_mode = restore_compute_mode(gpu, &p)?;
    // The GPU's shared memory goes with its daemon, emptied.
    release_shm(&p)?;
    Ok(Stopped {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        was: was.name(),
        compute_mode,
    })
}

fn nvidia_smi(args: &[&str], what: &'static str, gpu: &Gpu) -> Result<String, MpsError> {
    let out = Command::new("nvidia-smi")
        .args(args)
        .output()
        .map_err(|e| MpsError::ComputeMode {
            what,
            index: gpu.index,
            why: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(MpsError::ComputeMode {
            what,
            index: gpu.index,
            why: String::from_utf8_lossy(&out.stdout)
                .trim()
                .replace('\n', " "),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Puts the GPU in EXCLUSIVE_PROCESS mode (only the MPS server then opens
/// it), keeping the mode it had for `stop`.
fn set_exclusive(gpu: &Gpu, p: &Paths) -> Result<String, MpsError> {
    let was = nvidia_smi(
        &[
            "-i",
            &gpu.uuid,
            "--query-gpu=compute_mode",
            "--format=csv,noheader",
        ],
        "read the compute mode",
        gpu,
    )?;
    if !p.compute_mode.exists() {
        write_atomic(&p.compute_mode, format!("{was}\n").as_bytes(), 0o644)
            .map_err(io("write", &p.compute_mode))?;
    }
    nvidia_smi(
        &["-i", &gpu.uuid, "-c", "EXCLUSIVE_PROCESS"],
        "set the compute mode",
        gpu,
    )?;
    Ok(format!("EXCLUSIVE_PROCESS (was {was})"))
}

fn restore_compute_mode(gpu: &Gpu, p: &Paths) -> Result<String, MpsError> {
    let Ok(saved) = std::fs::read_to_string(&p.compute_mode) else {
        return Ok("unchanged".into());
    };
    let mode = match saved.trim() {
        "Exclusive_Process" => "EXCLUSIVE_PROCESS",
        "Prohibited" => "PROHIBITED",
        _ => "DEFAULT",
    };
    nvidia_smi(
        &["-i", &gpu.uuid, "-c", mode],
        "restore the compute mode",
        gpu,
    )?;
    let _ = std::fs::remove_file(&p.compute_mode);
    Ok(format!("{mode} restored"))
}

/// What clients can change of a daemon through its ordinary socket.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Defaults {
    /// The share servers it starts give their clients: 100 unless changed.
    pub active_thread_percentage: Option<f64>,
    /// The pinned-memory limit of its GPU (device 0 to the daemon) for
    /// clients that set none: none unless changed.
    pub pinned_mem_limit: Option<String>,
}

impl Defaults {
    /// Whether they differ from what gpushare keeps: a 100 % share and no
    /// pinned-memory limit.
    pub fn drifted(&self) -> bool {
        self.active_thread_percentage
            .is_some_and(|p| (p - 100.0).abs() > 1e-9)
            || self.pinned_mem_limit.is_some()
    }
}

/// A running daemon's defaults, as it answers them.
pub fn defaults(cfg: &Config, uuid: &str) -> Result<Defaults, MpsError> {
    let pct = command(cfg, uuid, "get_default_active_thread_percentage")?;
    let pinned = command(cfg, uuid, "get_default_device_pinned_mem_limit 0")?;
    Ok(Defaults {
        active_thread_percentage: pct.trim().parse().ok(),
        pinned_mem_limit: Some(pinned.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
    })
}

/// Puts back what a client may have changed through the daemon's ordinary
/// socket: its default share (100), its default pinned-memory limit (none:
/// `0` clears it) and each running server's share. Says what it restored.
pub fn restore(cfg: &Config, uuid: &str) -> Result<Vec<String>, MpsError> {
    let mut done = Vec::new();
    let d = defaults(cfg, uuid)?;
    if let Some(p) = d
        .active_thread_percentage
        .filter(|p| (p - 100.0).abs() > 1e-9)
    {
        command(cfg, uuid, "set_default_active_thread_percentage 100")?;
        done.push(format!("default active thread percentage {p} -> 100"));
    }
    if let Some(l) = &d.pinned_mem_limit {
        command(cfg, uuid, "set_default_device_pinned_mem_limit 0 0")?;
        done.push(format!("default pinned memory limit {l} -> none"));
    }
    for pid in parse_ps(&command(cfg, uuid, "get_server_list")?) {
        let pct = command(cfg, uuid, &format!("get_active_thread_percentage {pid}"))?;
        if let Ok(p) = pct.trim().parse::<f64>() {
            if (p - 100.0).abs() > 1e-9 {
                command(
                    cfg,
                    uuid,
                    &format!("set_active_thread_percentage {pid} 100"),
                )?;
                done.push(format!(
                    "server {pid}'s active thread percentage {p} -> 100"
                ));
            }
        }
    }
    Ok(done)
}

/// One GPU's daemon as `gpushare mps status` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DaemonStatus {
    pub index: u32,
    pub uuid: String,
    #[serde(flatten)]
    pub daemon: Daemon,
    pub pipe_directory: PathBuf,
    pub log_directory: PathBuf,
    pub shm_directory: PathBuf,
    /// A running daemon's defaults (null otherwise, or when it did not answer).
    pub default_active_thread_percentage: Option<f64>,
    pub default_pinned_mem_limit: Option<String>,
    /// The defaults differ from a 100 % share and no pinned-memory limit.
    pub drift: bool,
}

pub fn status(cfg: &Config, gpu: &Gpu) -> DaemonStatus {
    let d = daemon(cfg, &gpu.uuid);
    let p = paths(cfg, &gpu.uuid);
    let defaults = match d {
        Daemon::Running { .. } => defaults(cfg, &gpu.uuid).ok(),
        _ => None,
    };
    DaemonStatus {
        index: gpu.index,
        uuid: gpu.uuid.clone(),
        daemon: d,
        pipe_directory: p.pipe,
        log_directory: p.log,
        shm_directory: p.shm,
        drift: defaults.as_ref().is_some_and(Defaults::drifted),
        default_active_thread_percentage: defaults
            .as_ref()
            .and_then(|d| d.active_thread_percentage),
        default_pinned_mem_limit: defaults.and_then(|d| d.pinned_mem_limit),
    }
}

impl DaemonStatus {
    /// One line: state, pid, defaults (and their drift), pipe directory.
    pub fn line(&self) -> String {
        let mut out = format!("GPU {} {}: {}", self.index, self.uuid, self.daemon.name());
        if let Daemon::Running { pid } = self.daemon {
            out.push_str(&format!(", pid {pid}"));
            if let Some(p) = self.default_active_thread_percentage {
                out.push_str(&format!(", default share {p}%"));
            }
            if let Some(l) = &self.default_pinned_mem_limit {
                out.push_str(&format!(", default pinned limit {l}"));
            }
            if self.drift {
                out.push_str(" (drifted from 100% and no pinned limit: a client changed it; `gpushare mps run` puts it back)");
            }
        }
        out.push_str(&format!("; pipe {}", self.pipe_directory.display()));
        out
    }
}

/// The last line of a daemon's control log: often why it stopped.
fn last_log_line(p: &Paths) -> Option<String> {
    let text = std::fs::read_to_string(p.log.join("control.log")).ok()?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

/// How often the supervisor looks at the daemons, and at their defaults.
const TICK: Duration = Duration::from_millis(250);
const DRIFT_EVERY: Duration = Duration::from_secs(2);
/// A daemon that ran this long is healthy again: the backoff starts over.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One GPU as the supervisor follows it.
struct Watch<'a> {
    gpu: &'a Gpu,
    /// The daemon's pid once it runs.
    pid: Option<i32>,
    since: Instant,
    /// Starts that failed, or daemons that died young, in a row.
    failures: u32,
    next_start: Instant,
    next_drift: Instant,
}

/// `gpushare mps run`: starts every GPU's daemon, restarts one that dies
/// (at once, then with a backoff doubling to 30 s while it keeps dying
/// young), puts back drifted defaults, and once `quit` is set stops them
/// all (daemons quit, compute modes restored, shared memory unmounted).
/// Every event is one line to `log`.
pub fn supervise(cfg: &Config, inv: &Inventory, quit: &AtomicBool, log: &mut dyn FnMut(String)) {
    let now = Instant::now();
    let mut watches: Vec<Watch> = inv
        .gpus
        .iter()
        .map(|gpu| Watch {
            gpu,
            pid: None,
            since: now,
            failures: 0,
            next_start: now,
            next_drift: now,
        })
        .collect();
    while !quit.load(Ordering::SeqCst) {
        for w in &mut watches {
            supervise_one(cfg, w, log);
        }
        std::thread::sleep(TICK);
    }
    for w in &watches {
        let name = format!("GPU {} {}", w.gpu.index, w.gpu.uuid);
        match stop(cfg, w.gpu) {
            Ok(s) => log(format!(
                "{name}: stopped (was {}); compute mode {}",
                s.was, s.compute_mode
            )),
            Err(e) => log(format!(
                "{name}: cannot stop: {}",
                crate::text::one_line(&e)
            )),
        }
    }
}

fn supervise_one(cfg: &Config, w: &mut Watch, log: &mut dyn FnMut(String)) {
    let name = format!("GPU {} {}", w.gpu.index, w.gpu.uuid);
    let now = Instant::now();
    match daemon(cfg, &w.gpu.uuid) {
        Daemon::Running { pid } => {
            if w.pid != Some(pid) {
                log(format!("{name}: daemon running, pid {pid}"));
                w.pid = Some(pid);
                w.since = now;
            }
            if w.failures > 0 && now.duration_since(w.since) > HEALTHY_AFTER {
                w.failures = 0;
            }
            if now >= w.next_drift {
                w.next_drift = now + DRIFT_EVERY;
                match restore(cfg, &w.gpu.uuid) {
                    Ok(done) => {
                        for d in done {
                            log(format!("{name}: restored {d} (a client changed it)"));
                        }
                    }
                    Err(e) => log(format!(
                        "{name}: cannot read the daemon's defaults: {}",
                        crate::text::one_line(&e)
                    )),
                }
            }
        }
        gone => {
            if let Some(pid) = w.pid.take() {
                let why = last_log_line(&paths(cfg, &w.gpu.uuid))
                    .map_or("no log line".into(), |l| format!("its log ends: {l}"));
                let ran = now.duration_since(w.since);
                if ran < HEALTHY_AFTER {
                    w.failures += 1;
                }
                let wait = backoff(w.failures);
                w.next_start = now + wait;
                log(format!(
                    "{name}: daemon pid {pid} is {} after {:.0} s (killed or crashed; {why}); restarting in {:.0} s",
                    gone.name(),
                    ran.as_secs_f64(),
                    wait.as_secs_f64()
                ));
            }
            if now < w.next_start {
                return;
            }
            match start(cfg, w.gpu) {
                Ok(s) => {
                    log(format!(
                        "{name}: started, pid {}; compute mode {}",
                        s.pid, s.compute_mode
                    ));
                    w.pid = Some(s.pid);
                    w.since = Instant::now();
                    w.next_drift = w.since;
                }
                Err(e) => {
                    // A start that fails waits at least a second.
                    w.failures += 1;
                    let wait = backoff(w.failures + 1);
                    w.next_start = now + wait;
                    log(format!(
                        "{name}: cannot start the daemon: {}; next try in {:.0} s",
                        crate::text::one_line(&e),
                        wait.as_secs_f64()
                    ));
                }
            }
        }
    }
}

/// The wait before restarting a daemon after `failures` young deaths in a
/// row: none after the first, then 1, 2, 4 … s, at most 30 s.
fn backoff(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    Duration::from_secs(1u64 << (failures - 2).min(5)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_half_a_minute() {
        let secs: Vec<u64> = (1..=9).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn drift_is_any_change_from_100_and_no_limit() {
        let d = |p: Option<f64>, l: Option<&str>| Defaults {
            active_thread_percentage: p,
            pinned_mem_limit: l.map(str::to_owned),
        };
        assert!(!d(Some(100.0), None).drifted());
        assert!(d(Some(5.0), None).drifted());
        assert!(d(Some(100.0), Some("1M")).drifted());
        assert!(
            !d(None, None).drifted(),
            "an unreadable answer is not drift"
        );
    }

    #[test]
    fn ps_answers() {
        assert_eq!(parse_ps("Server not found"), Vec::<u32>::new());
        let answer = "PID\tID\tSERVER\tDEVICE\tNAMESPACE\tCOMMAND\n4242\t1\t4100\tGPU-4a1c\t4026531836\tpython3 infer.py\n5151\t2\t4100\tGPU-4a1c\t4026532201\t./bench\n";
        assert_eq!(parse_ps(answer), vec![4242, 5151]);
    }
}

impl Started {
    pub fn line(&self) -> String {
        let how = if self.already {
            "already running"
        } else {
            "started"
        };
        format!(
            "GPU {} {}: {how}, pid {}; compute mode {}",
            self.index, self.uuid, self.pid, self.compute_mode
        )
    }
}

impl Stopped {
    pub fn line(&self) -> String {
        format!(
            "GPU {} {}: stopped (was {}); compute mode {}",
            self.index, self.uuid, self.was, self.compute_mode
        )
    }
}

/// What `gpushare mps start|stop|status` does to each GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Stop,
    Status,
}

/// One GPU's outcome: its line for people and its JSON object.
pub struct Outcome {
    pub line: String,
    pub json: serde_json::Value,
}

/// Starts, stops or reports the daemon of every GPU, or of the one `gpu`
/// names (index, UUID or a unique prefix, PCI bus id).
pub fn act(
    cfg: &Config,
    inv: &Inventory,
    gpu: Option<&str>,
    action: Action,
) -> Result<Vec<Outcome>, MpsError> {
    let gpus: Vec<&Gpu> = match gpu {
        Some(id) => vec![crate::decide::resolve_one(id, inv)?],
        None => inv.gpus.iter().collect(),
    };
    let json = |v: serde_json::Result<serde_json::Value>| v.expect("an outcome serialises");
    let mut out = Vec::new();
    for g in gpus {
        out.push(match action {
            Action::Start => {
                let s = start(cfg, g)?;
                Outcome {
                    line: s.line(),
                    json: json(serde_json::to_value(&s)),
                }
            }
            Action::Stop => {
                let s = stop(cfg, g)?;
                Outcome {
                    line: s.line(),
                    json: json(serde_json::to_value(&s)),
                }
            }
            Action::Status => {
                let s = status(cfg, g);
                Outcome {
                    line: s.line(),
                    json: json(serde_json::to_value(&s)),
                }
            }
        });
    }
    Ok(out)
}

/// Set by SIGTERM and SIGINT: `run` stops its daemons and returns.
static QUIT: AtomicBool = AtomicBool::new(false);

extern "C" fn on_quit_signal(_: libc::c_int) {
    QUIT.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// `gpushare mps run`: supervises every GPU's daemon in the foreground
/// until SIGTERM or SIGINT, then stops them all. `log` gets each line.
pub fn run(cfg: &Config, inv: &Inventory, log: &mut dyn FnMut(String)) -> Result<(), MpsError> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_quit_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|source| MpsError::Signal {
            signal: sig.as_str(),
            source,
        })?;
    }
    log(format!(
        "gpushare mps run: supervising {} GPU daemons (SIGTERM stops them)",
        inv.gpus.len()
    ));
    supervise(cfg, inv, &QUIT, log);
    log("gpushare mps run: all daemons stopped".into());
    Ok(())
}
