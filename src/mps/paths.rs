//! Where each GPU's MPS control daemon keeps its files, and whether it
//! runs: what a placement needs to make a container one of its clients.
//! Starting, stopping and supervising the daemons is `mps::daemon`'s.

use std::path::PathBuf;

use serde::Serialize;

use crate::config::Config;
use crate::sys::Process;

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
    /// The GPU's shared-memory tmpfs: its daemon's and its clients' /dev/shm.
    pub shm: PathBuf,
    pub(crate) pid: PathBuf,
    pub(crate) compute_mode: PathBuf,
}

pub fn paths(cfg: &Config, uuid: &str) -> Paths {
    let dir = cfg.mps.root.join(uuid);
    Paths {
        pipe: dir.join("pipe"),
        log: dir.join("log"),
        shm: dir.join("shm"),
        pid: dir.join("daemon.pid"),
        compute_mode: dir.join("compute-mode"),
        dir,
    }
}

/// The daemon's socket that only root may use (`quit` and the other
/// privileged commands): masked in every client.
pub const PRIVILEGED_SOCKET: &str = "control_privileged";

/// The daemon's state, from its pid file and control socket.
pub fn daemon(cfg: &Config, uuid: &str) -> Daemon {
    let p = paths(cfg, uuid);
    if let Some(pid) = running_pid(&p) {
        return Daemon::Running { pid };
    }
    if p.pipe.join("control").exists() {
        Daemon::Dead
    } else {
        Daemon::Stopped
    }
}

/// Whether the GPU's daemon runs: its pid file alone (what a decision
/// needs; `daemon` also tells a dead one from a stopped one).
pub fn running(cfg: &Config, uuid: &str) -> bool {
    running_pid(&paths(cfg, uuid)).is_some()
}

/// The daemon's pid, when the process its pid file names is still it.
fn running_pid(p: &Paths) -> Option<i32> {
    let text = std::fs::read_to_string(&p.pid).ok()?;
    let mut it = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(pid)), Some(Ok(start))) = (it.next(), it.next()) else {
        return None;
    };
    let daemon = Process {
        pid: i32::try_from(pid).ok()?,
        start,
    };
    daemon.is_alive().then_some(daemon.pid)
}
