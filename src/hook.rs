//! `gpushare-hook`: the low-level runtime runs it with the OCI state on
//! stdin. Used alone (podman and CRI-O `hooks.d`, containerd's base spec)
//! it does the whole job at `createRuntime`/`prestart`: decides as the shim
//! would, applies the same edits to the live container (`live`), and
//! records the entry; at `poststop` it releases it. Where the shim already
//! reserved the container (the ledger holds its entry, with no pid yet) it
//! only binds the pid to that entry. Annotations are never trusted: the
//! ledger alone says what the shim did. It runs nothing from the container
//! and resolves no host path through it.
//!
//! Ref: OCI runtime spec, config.md "POSIX-platform Hooks": the state is
//! passed on stdin; createRuntime runs after the namespaces exist, before
//! pivot_root; poststop runs after the container is deleted.

use std::io::Read;
use std::path::PathBuf;

use oci_spec::runtime::{ContainerState, State};
use thiserror::Error;

use crate::bundle::{Bundle, BundleError, Raw};
use crate::config::{Config, ConfigError};
use crate::ledger::{Container, Ledger, LedgerError, Source, Standing};
use crate::live::{self, LiveError};
use crate::placement::{self, Placement, PlacementError};
use crate::request::Request;
use crate::sys::Process;

/// The state runc writes is a few hundred bytes; anything near this is not
/// an OCI state.
const MAX_STATE_BYTES: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum HookError {
    #[error("unknown hook stage {0:?}: the hook's first argument must be createRuntime, prestart or poststop (check the hook's args in config.json)")]
    Stage(String),
    #[error("cannot read the OCI state on stdin: {0}; gpushare-hook is run by the container runtime, not by hand")]
    Stdin(#[source] std::io::Error),
    #[error("the OCI state on stdin is not valid: {0}; gpushare-hook is run by the container runtime, not by hand")]
    State(String),
    #[error("container {id}: the runtime gave no pid at {stage}; the ledger cannot bind it")]
    NoPid { id: String, stage: &'static str },
    #[error("cannot drop capabilities: {0}; the hook must run as root from the container runtime")]
    Caps(String),
    #[error("{0}: root.path is missing; the bundle's config.json must be an OCI runtime spec")]
    NoRoot(PathBuf),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Placement(#[from] PlacementError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Live(#[from] LiveError),
}

impl HookError {
    /// What the engine, the node's config or the request must change
    /// (exit 2) rather than what failed (exit 1).
    pub fn is_refusal(&self) -> bool {
        match self {
            HookError::Config(e) => e.is_refusal(),
            HookError::Bundle(e) => e.is_refusal(),
            HookError::Placement(e) => e.is_refusal(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// createRuntime, or prestart for runtimes that predate it.
    Bind,
    Release,
}

impl Stage {
    /// The stage from the hook's first argument, or, without one, from the
    /// state's status (creating/created: bind; stopped: release).
    pub fn parse(arg: Option<&str>, state: &State) -> Result<Stage, HookError> {
        match arg {
            Some("createRuntime" | "prestart") => Ok(Stage::Bind),
            Some("poststop") => Ok(Stage::Release),
            None => match state.status() {
                ContainerState::Creating | ContainerState::Created => Ok(Stage::Bind),
                ContainerState::Stopped => Ok(Stage::Release),
                ContainerState::Running => Err(HookError::Stage("(none, status running)".into())),
            },
            Some(other) => Err(HookError::Stage(other.to_owned())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Stage::Bind => "createRuntime",
            Stage::Release => "poststop",
        }
    }
}

pub fn read_state(input: impl Read) -> Result<State, HookError> {
    let mut bytes = Vec::new();
    input
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut bytes)
        .map_err(HookError::Stdin)?;
    let state: State =
        serde_json::from_slice(&bytes).map_err(|e| HookError::State(e.to_string()))?;
    if state.id().is_empty() {
        return Err(HookError::State("it has no container id".into()));
    }
    Ok(state)
}

/// What the hook did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not a GPU container: nothing to do.
    NotOurs,
    /// Under the runtime: the process is bound to the runtime's reservation.
    Bound,
    /// Alone: devices given to the live container and the hold recorded.
    Placed,
    Released,
}

/// The container a hook used alone holds a GPU as: it is not told the
/// runtime's root, but the bundle directory is the container's own.
fn alone(state: &State) -> Container {
    Container {
        root: format!("hook:{}", state.bundle().display()),
        id: state.id().clone(),
    }
}

pub fn run(stage: Stage, state: &State) -> Result<Outcome, HookError> {
    let raw = Raw::read(state.bundle());
    // The common case, a container with no GPU, reads no config at all.
    if !asks_for_gpu(&raw) {
        return Ok(Outcome::NotOurs);
    }
    let cfg = Config::load()?;
    match stage {
        Stage::Release => {
            // The container is stopped: its holds go, whoever made them
            // (the bundle directory is this container's own).
            if let Some(mut ledger) = Ledger::open_if_exists(&cfg.runtime.state_dir)? {
                let mut tx = ledger.begin()?;
                tx.remove_in_bundle(state.id(), &state.bundle().display().to_string())?;
                tx.commit()?;
            }
            Ok(Outcome::Released)
        }
        Stage::Bind => {
            let pid = pid_of(state, stage)?;
            let mut ledger = Ledger::open(&cfg.runtime.state_dir)?;
            if bind_reserved(&mut ledger, state, pid, &cfg)? {
                return Ok(Outcome::Bound);
            }
            // A second gpushare hook of this container (a CDI device's and
            // hooks.d's, or two CDI devices of one GPU): placed already.
            if ledger
                .holds_of(&alone(state))?
                .iter()
                .any(|h| h.pid == Some(pid) && h.bundle == state.bundle().display().to_string())
            {
                return Ok(Outcome::Bound);
            }
            place_alone(raw?.parse()?, state, pid, &cfg, &mut ledger)
        }
    }
}

fn pid_of(state: &State, stage: Stage) -> Result<i32, HookError> {
    state
        .pid()
        .filter(|p| *p > 0)
        .ok_or_else(|| HookError::NoPid {
            id: state.id().clone(),
            stage: stage.name(),
        })
}

/// Under the runtime: it reserved the container at its create and binds
/// its process once the runtime's create returns; a hook that runs too (a
/// node-wide hook) binds it now. Only a reservation the runtime made for
/// this id and this very bundle, not yet bound and within the reservation
/// timeout, counts: nothing the container's spec says (no annotation) is
/// taken on trust. Whether it bound.
fn bind_reserved(
    ledger: &mut Ledger,
    state: &State,
    pid: i32,
    cfg: &Config,
) -> Result<bool, HookError> {
    let mut tx = ledger.begin()?;
    let bundle = state.bundle().display().to_string();
    let timeout = cfg.runtime.reservation_timeout_seconds;
    let Some(hold) = tx
        .unbound_in(state.id(), &bundle)?
        .into_iter()
        .find(|h| h.source == Source::Runtime && h.standing(timeout) == Standing::Reserved)
    else {
        return Ok(false);
    };
    tx.bind(&hold.container, Some(hold.reservation), pid)?;
    tx.commit()?;
    Ok(true)
}

/// Whether the bundle's spec asks for a GPU; a spec that cannot be read or
/// parsed counts as asking (the caller then decides or releases for real).
fn asks_for_gpu(raw: &Result<Raw, BundleError>) -> bool {
    let Ok(raw) = raw else {
        return true;
    };
    match raw.env() {
        Ok(env) => Request::from_env(env.iter().map(|e| e.as_ref())).map_or(true, |r| r.is_gpu()),
        Err(_) => true,
    }
}

/// The hook alone: decides as the runtime would, gives the live container
/// its devices, and records the hold with its process.
fn place_alone(
    bundle: Bundle,
    state: &State,
    pid: i32,
    cfg: &Config,
    ledger: &mut Ledger,
) -> Result<Outcome, HookError> {
    let request =
        Request::from_spec(bundle.env()?, &bundle.cdi_devices()).map_err(PlacementError::from)?;
    let Some(Placement {
        mut tx,
        edits,
        mut hold,
        warnings,
    }) = placement::place(&bundle, &request, alone(state), Source::Hook, cfg, ledger)?
    else {
        return Ok(Outcome::NotOurs);
    };
    for w in &warnings {
        eprintln!("gpushare-hook: warning: {w}");
    }
    let rootfs = bundle
        .rootfs()
        .ok_or_else(|| HookError::NoRoot(Bundle::config_path(&bundle.dir)))?;
    drop_capabilities()?;
    // Inside the transaction: the hold is written only once the container
    // really has its devices.
    live::apply(&mut live::System, &edits, pid, &rootfs)?;
    hold.pid = Some(pid);
    hold.pid_start = Process::find(pid).map(|p| p.start);
    hold.bundle = state.bundle().display().to_string();
    tx.insert(&hold)?;
    tx.commit()?;
    Ok(Outcome::Placed)
}

/// Keeps only what the live edits need: entering the container's mount
/// namespace (SYS_ADMIN, SYS_CHROOT, SYS_PTRACE for a non-dumpable init),
/// mounting (SYS_ADMIN), writing root-owned cgroup and state files
/// (DAC_OVERRIDE, DAC_READ_SEARCH), and under cgroup v2 loading a device
/// program (BPF, SYS_RESOURCE for the memlock limit of older kernels),
/// and making mount targets as a user-namespaced container's root
/// (SETUID, SETGID: the filesystem ids alone).
/// Everything else goes before the rootfs is touched.
fn drop_capabilities() -> Result<(), HookError> {
    use caps::{CapSet, Capability};
    let keep: caps::CapsHashSet = [
        Capability::CAP_SYS_ADMIN,
        Capability::CAP_SYS_CHROOT,
        Capability::CAP_SYS_PTRACE,
        Capability::CAP_DAC_OVERRIDE,
        Capability::CAP_DAC_READ_SEARCH,
        Capability::CAP_BPF,
        Capability::CAP_SYS_RESOURCE,
        Capability::CAP_SETUID,
        Capability::CAP_SETGID,
    ]
    .into_iter()
    .collect();
    // What we hold of those (a kernel or sandbox may not grant CAP_BPF; its
    // work then falls to SYS_ADMIN).
    let held = caps::read(None, CapSet::Permitted).map_err(|e| HookError::Caps(e.to_string()))?;
    let keep: caps::CapsHashSet = keep.intersection(&held).copied().collect();
    let none = caps::CapsHashSet::new();
    let set = |set, caps: &caps::CapsHashSet| {
        caps::set(None, set, caps).map_err(|e| HookError::Caps(e.to_string()))
    };
    set(CapSet::Ambient, &none)?;
    set(CapSet::Inheritable, &none)?;
    set(CapSet::Effective, &keep)?;
    set(CapSet::Permitted, &keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: &str) -> State {
        let json = format!(
            r#"{{"ociVersion":"1.0.2","id":"c1","status":"{status}","pid":42,"bundle":"/nonexistent"}}"#
        );
        read_state(json.as_bytes()).unwrap()
    }

    #[test]
    fn stages() {
        let s = state("creating");
        assert_eq!(
            Stage::parse(Some("createRuntime"), &s).unwrap(),
            Stage::Bind
        );
        assert_eq!(Stage::parse(Some("prestart"), &s).unwrap(), Stage::Bind);
        assert_eq!(Stage::parse(Some("poststop"), &s).unwrap(), Stage::Release);
        assert_eq!(Stage::parse(None, &s).unwrap(), Stage::Bind);
        assert_eq!(Stage::parse(None, &state("created")).unwrap(), Stage::Bind);
        assert_eq!(
            Stage::parse(None, &state("stopped")).unwrap(),
            Stage::Release
        );
        assert!(Stage::parse(None, &state("running")).is_err());
        for bad in ["", "startContainer", "POSTSTOP"] {
            let e = Stage::parse(Some(bad), &s).unwrap_err().to_string();
            assert!(e.contains("createRuntime, prestart or poststop"), "{e}");
        }
    }

    #[test]
    fn state_parsing() {
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b","annotations":{"gpushare/gpus":"GPU-1"}}"#[..],
        )
        .unwrap();
        assert_eq!(s.id(), "c1");
        assert_eq!(*s.pid(), Some(42));
        for bad in [&b""[..], b"{", b"[]", b"{\"id\":\"\"}", b"{\"id\": 3}"] {
            assert!(read_state(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_container_the_shim_did_not_place_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"process": {"env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=void"]}, "root": {"path": "rootfs"}}"#,
        )
        .unwrap();
        let json = format!(
            r#"{{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"{}"}}"#,
            dir.path().display()
        );
        let s = read_state(json.as_bytes()).unwrap();
        // No config is read, so a broken GPUSHARE_CONFIG cannot matter.
        assert_eq!(run(Stage::Bind, &s).unwrap(), Outcome::NotOurs);
        assert_eq!(run(Stage::Release, &s).unwrap(), Outcome::NotOurs);
    }
}
