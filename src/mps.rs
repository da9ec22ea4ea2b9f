//! NVIDIA's Multi-Process Service: one control daemon per GPU.
//!
//! Each daemon runs with `CUDA_VISIBLE_DEVICES=<uuid>`, its pipe and log
//! directories under `<mps.root>/<uuid>/`, in a private mount namespace
//! whose `/dev/shm` is the tmpfs `<mps.root>/shm` that clients get too (MPS
//! servers and clients share memory through `/dev/shm`). The daemon's pid
//! and start time are kept in `<mps.root>/<uuid>/daemon.pid`, so telling
//! running from dead costs two small reads and no connection.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use serde::Serialize;
use thiserror::Error;

use crate::config::{Config, InventorySource};
use crate::inventory::{Gpu, Inventory};
use crate::ledger::{process_matches, process_start_time, write_atomic};

#[derive(Debug, Error)]
pub enum MpsError {
    #[error("cannot {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
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
}

/// A GPU's daemon as seen from its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum Daemon {
    Running {
        pid: i32,
    },
    Stopped,
    /// Its process is gone but its control socket is left: it was killed
    /// or crashed. `gpushare mps start` cleans up and starts it again.
    Dead,
}

impl Daemon {
    pub fn name(self) -> &'static str {
        match self {
            Daemon::Running { .. } => "running",
            Daemon::Stopped => "stopped",
            Daemon::Dead => "dead",
        }
    }
}

/// Where one GPU's daemon keeps its files.
pub struct Paths {
    pub dir: PathBuf,
    pub pipe: PathBuf,
    pub log: PathBuf,
    pid: PathBuf,
    compute_mode: PathBuf,
}

pub fn paths(cfg: &Config, uuid: &str) -> Paths {
    let dir = cfg.mps.root.join(uuid);
    Paths {
        pipe: dir.join("pipe"),
        log: dir.join("log"),
        pid: dir.join("daemon.pid"),
        compute_mode: dir.join("compute-mode"),
        dir,
    }
}

pub fn shm_dir(cfg: &Config) -> PathBuf {
    cfg.mps.root.join("shm")
}

/// The daemon's state, from its pid file and control socket.
pub fn daemon(cfg: &Config, uuid: &str) -> Daemon {
    let p = paths(cfg, uuid);
    if let Ok(text) = std::fs::read_to_string(&p.pid) {
        let mut it = text.split_whitespace().map(str::parse::<u64>);
        if let (Some(Ok(pid)), Some(Ok(start))) = (it.next(), it.next()) {
            if process_matches(pid as i32, Some(start)) {
                return Daemon::Running { pid: pid as i32 };
            }
        }
    }
    if p.pipe.join("control").exists() {
        Daemon::Dead
    } else {
        Daemon::Stopped
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MpsError + 'a {
    move |source| MpsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &Path) -> bool {
    match (path.metadata(), path.join("..").metadata()) {
        (Ok(a), Ok(b)) => a.dev() != b.dev() || a.ino() == b.ino(),
        _ => false,
    }
}

/// Mounts the shared-memory tmpfs at `<mps.root>/shm` unless it is there.
/// World-writable and sticky, as /dev/shm is, so clients of any user can
/// make their segments; half the RAM at most, as /dev/shm's default.
fn ensure_shm(cfg: &Config) -> Result<(), MpsError> {
    let shm = shm_dir(cfg);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(&shm)
        .map_err(io("create", &shm))?;
    if is_mount_point(&shm) {
        return Ok(());
    }
    mount(
        Some("gpushare-mps-shm"),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=50%"),
    )
    .map_err(|source| MpsError::Shm { path: shm, source })
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
/// behind: no pipe directory, no pid file, and no shared-memory mount when
/// no other daemon uses it.
pub fn start(cfg: &Config, inv: &Inventory, gpu: &Gpu) -> Result<Started, MpsError> {
    let result = try_start(cfg, gpu);
    if result.is_err() {
        let p = paths(cfg, &gpu.uuid);
        let _ = std::fs::remove_dir_all(&p.pipe);
        let _ = std::fs::remove_file(&p.pid);
        let _ = restore_compute_mode(gpu, &p);
        release_shm(cfg, inv)?;
    }
    result
}

/// Unmounts the shared memory once no daemon runs.
fn release_shm(cfg: &Config, inv: &Inventory) -> Result<(), MpsError> {
    let any_left = inv
        .gpus
        .iter()
        .any(|g| matches!(daemon(cfg, &g.uuid), Daemon::Running { .. }));
    let shm = shm_dir(cfg);
    if !any_left && shm.exists() && is_mount_point(&shm) {
        umount2(&shm, MntFlags::MNT_DETACH)
            .map_err(|source| MpsError::Shm { path: shm, source })?;
    }
    Ok(())
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
    // A dead daemon's socket and pid file go; its logs stay.
    let _ = std::fs::remove_dir_all(&p.pipe);
    let _ = std::fs::remove_file(&p.pid);
    ensure_shm(cfg)?;
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
    let shm = shm_dir(cfg);
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
            // A mount namespace of the daemon's own, whose /dev/shm is the
            // shared tmpfs; mounts stay out of the host's namespace.
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
    let start = process_start_time(pid).ok_or_else(|| fail(format!("pid {pid} vanished")))?;
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

pub fn stop(cfg: &Config, inv: &Inventory, gpu: &Gpu) -> Result<Stopped, MpsError> {
    let p = paths(cfg, &gpu.uuid);
    let was = daemon(cfg, &gpu.uuid);
    if let Daemon::Running { pid } = was {
        let _ = command(cfg, &gpu.uuid, "quit");
        let start = process_start_time(pid);
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_matches(pid, start) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if process_matches(pid, start) {
            // SAFETY: signals the daemon whose pid and start time we hold.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    let _ = std::fs::remove_dir_all(&p.pipe);
    let _ = std::fs::remove_file(&p.pid);
    let compute_mode = restore_compute_mode(gpu, &p)?;
    // The shared memory goes with the last daemon.
    release_shm(cfg, inv)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ps_answers() {
        assert_eq!(parse_ps("Server not found"), Vec::<u32>::new());
        let answer = "PID\tID\tSERVER\tDEVICE\tNAMESPACE\tCOMMAND\n4242\t1\t4100\tGPU-4a1c\t4026531836\tpython3 infer.py\n5151\t2\t4100\tGPU-4a1c\t4026532201\t./bench\n";
        assert_eq!(parse_ps(answer), vec![4242, 5151]);
    }
}
