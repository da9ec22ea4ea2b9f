//! `gpushare-hook` under the shim: the low-level runtime runs it with the
//! OCI state on stdin. At `createRuntime` (or `prestart`) it binds the
//! container's pid to the ledger entry the shim reserved; at `poststop` it
//! releases the entry. It reads nothing from the container's filesystem and
//! runs nothing from it.
//!
//! Ref: OCI runtime spec, config.md "POSIX-platform Hooks": the state is
//! passed on stdin; createRuntime runs after the namespaces exist, before
//! pivot_root; poststop runs after the container is deleted.

use std::io::Read;

use oci_spec::runtime::State;
use thiserror::Error;

use crate::config::Config;
use crate::edits::ANNOTATION_GPUS;
use crate::ledger::{self, Entry, Ledger, Record};

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
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// createRuntime, or prestart for runtimes that predate it.
    Bind,
    Release,
}

impl Stage {
    pub fn parse(arg: Option<&str>) -> Result<Stage, HookError> {
        match arg {
            Some("createRuntime" | "prestart") => Ok(Stage::Bind),
            Some("poststop") => Ok(Stage::Release),
            other => Err(HookError::Stage(other.unwrap_or("").to_owned())),
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
    /// Not a container the shim placed: nothing to do.
    NotOurs,
    Bound,
    Released,
}

pub fn run(stage: Stage, state: &State) -> crate::Result<Outcome> {
    let empty = Default::default();
    let annotations = state.annotations().as_ref().unwrap_or(&empty);
    let Some(gpus) = annotations.get(ANNOTATION_GPUS) else {
        return Ok(Outcome::NotOurs);
    };
    let cfg = Config::load()?;
    let ledger = Ledger::new(&cfg.runtime.state_dir);
    let id = state.id();
    match stage {
        Stage::Release => {
            ledger.append(&Record::Release { id: id.clone() })?;
            Ok(Outcome::Released)
        }
        Stage::Bind => {
            let pid = state
                .pid()
                .filter(|p| *p > 0)
                .ok_or_else(|| HookError::NoPid {
                    id: id.clone(),
                    stage: stage.name(),
                })?;
            // The whole entry travels with the pid, so a reservation that
            // outlived its timeout is made anew: the container really holds
            // the GPU. The shim's own entry, when there, keeps its share.
            ledger.append(&Record::Bind(Entry {
                id: id.clone(),
                gpus: gpus.split(',').map(str::to_owned).collect(),
                thread_percentage: None,
                pinned_mem_limit: None,
                pid: Some(pid),
                pid_start: ledger::process_start_time(pid),
                names: ledger::names_from_annotations(
                    annotations.iter().map(|(k, v)| (k.as_str(), v.as_str())),
                ),
                created: ledger::now(),
            }))?;
            Ok(Outcome::Bound)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages() {
        assert_eq!(Stage::parse(Some("createRuntime")).unwrap(), Stage::Bind);
        assert_eq!(Stage::parse(Some("prestart")).unwrap(), Stage::Bind);
        assert_eq!(Stage::parse(Some("poststop")).unwrap(), Stage::Release);
        for bad in [None, Some(""), Some("startContainer"), Some("POSTSTOP")] {
            let e = Stage::parse(bad).unwrap_err().to_string();
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
        let s = read_state(
            &br#"{"ociVersion":"1.0.2","id":"c1","status":"creating","pid":42,"bundle":"/b"}"#[..],
        )
        .unwrap();
        // No config is read, so a broken GPUSHARE_CONFIG cannot matter.
        assert_eq!(run(Stage::Bind, &s).unwrap(), Outcome::NotOurs);
        assert_eq!(run(Stage::Release, &s).unwrap(), Outcome::NotOurs);
    }
}
