//! `gpushare-runtime`: stands where runc stood. On `create` and `run` it
//! decides, rewrites the bundle's config.json and reserves the GPU in the
//! ledger; then, for every subcommand, it execs the low-level runtime with
//! the arguments it was given. A refusal leaves nothing behind: the
//! config.json is as it was and the ledger holds no entry.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

use crate::bundle::Bundle;
use crate::config::{Config, Inject};
use crate::decide::{decide, Decision, Load};
use crate::driver::{self, Driver};
use crate::edits::{ContainerEdits, HookSpec};
use crate::inventory::Inventory;
use crate::ledger::{self, Entry, Ledger, Locked};
use crate::request::{Capabilities, Request, RequestError, DRIVER_CAPABILITIES};
use crate::runtime_args::CreateArgs;

#[derive(Debug, Error)]
pub enum ShimError {
    #[error("low-level runtime {name:?} (runtime.path in {config}) is not an executable file on PATH or at that path; install runc or fix runtime.path")]
    NoRuntime { name: String, config: String },
    #[error("cannot run low-level runtime {path}: {source}; fix runtime.path")]
    Exec {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("gpushare-hook is not beside gpushare-runtime ({0} is missing); install both binaries in one directory")]
    NoHook(PathBuf),
}

/// What create would do with a request: the decision and its edits.
pub struct Plan {
    pub decision: Decision,
    pub edits: ContainerEdits,
    /// What the container gets of the driver's user-space (GPU containers).
    pub driver: Option<DriverInjection>,
    /// For the user: shown on stderr (and in runc's log by the shim).
    pub warnings: Vec<String>,
}

/// The driver part of a plan, as `explain` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriverInjection {
    /// "gpushare", or "none" when a chained runtime brings the driver.
    pub inject: &'static str,
    pub version: Option<String>,
    pub capabilities: String,
    /// Where the libraries go in this image.
    pub library_dir: Option<String>,
}

/// The config's name as messages show it.
pub fn config_name(cfg: &Config) -> String {
    match &cfg.source {
        Some(p) => p.display().to_string(),
        None => format!("{} (absent: defaults)", Config::path_from_env().display()),
    }
}

/// Decides for a GPU request and works out the edits: its devices, MPS,
/// and the driver's user-space for its capabilities, in the library
/// directory of the image at `rootfs`. The same function serves the shim,
/// the hook and `explain`, so what explain prints is what happens.
/// `store_driver`: write a fresh driver discovery back to its cache (only
/// under the ledger lock).
pub fn plan(
    req: &Request,
    cfg: &Config,
    inv: &Inventory,
    load: &Load,
    rootfs: Option<&Path>,
    store_driver: bool,
) -> crate::Result<Plan> {
    if cfg.driver.inject == Inject::Gpushare && req.is_gpu() {
        refuse_uninjected(&req.capabilities, cfg)?;
    }
    let decision = decide(req, inv, load, &cfg.policy, &config_name(cfg))?;
    let mut plan = Plan {
        decision,
        edits: ContainerEdits::default(),
        driver: None,
        warnings: Vec::new(),
    };
    let Decision::Assign(a) = &plan.decision else {
        return Ok(plan);
    };
    plan.edits = ContainerEdits::for_assignment(a, cfg)?;
    plan.warnings = a.warnings.clone();
    if a.gpus.is_empty() {
        return Ok(plan);
    }
    let caps = &req.capabilities;
    plan.driver = Some(match cfg.driver.inject {
        Inject::None => DriverInjection {
            inject: "none",
            version: None,
            capabilities: caps.to_string(),
            library_dir: None,
        },
        Inject::Gpushare => {
            let driver = Driver::load(cfg, store_driver);
            let dir = driver::library_dir(rootfs);
            plan.edits.mounts.extend(driver.mounts(caps, &dir));
            plan.warnings.extend(driver.warnings(caps));
            DriverInjection {
                inject: "gpushare",
                version: driver.version,
                capabilities: caps.to_string(),
                library_dir: Some(dir),
            }
        }
    });
    Ok(plan)
}

/// Refuses the capabilities gpushare does not inject (graphics, display,
/// compat32, ngx): a container that asked for them would start without
/// them, which must never happen silently.
fn refuse_uninjected(caps: &Capabilities, cfg: &Config) -> Result<(), RequestError> {
    let Capabilities::List(list) = caps else {
        return Ok(());
    };
    let other: Vec<&str> = list
        .iter()
        .filter(|c| !driver::INJECTED.contains(c))
        .map(|c| c.name())
        .collect();
    if other.is_empty() {
        return Ok(());
    }
    Err(RequestError {
        var: DRIVER_CAPABILITIES,
        value: crate::error::shown(&caps.to_string()),
        why: format!(
            "gpushare does not inject the driver's {} files; ask for compute, utility, video or all, or have NVIDIA's runtime bring them (driver.inject = \"none\" in {})",
            other.join(", "),
            config_name(cfg)
        ),
        accepted: "compute, utility, video, all",
    })
}

/// Finds the low-level runtime: a path as given, or a name on PATH.
pub fn resolve_runtime(cfg: &Config) -> Result<PathBuf, ShimError> {
    let name = &cfg.runtime.path;
    let missing = || ShimError::NoRuntime {
        name: name.clone(),
        config: config_name(cfg),
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

/// The hook binary the shim writes into specs: the one installed beside
/// the running shim, by absolute path (the runtime runs hooks with no PATH
/// lookup we could rely on).
pub fn hook_path() -> Result<PathBuf, ShimError> {
    let exe = std::env::current_exe().unwrap_or_default();
    let hook = exe.with_file_name("gpushare-hook");
    if is_executable(&hook) {
        Ok(hook)
    } else {
        Err(ShimError::NoHook(hook))
    }
}

/// What `intercept` left in place, to undo if the runtime cannot be run.
pub struct Placed {
    bundle: Bundle,
    ledger: Ledger,
    id: String,
}

impl Placed {
    /// Puts the config.json back and drops the reservation.
    pub fn undo(self) {
        let _ = self.bundle.restore();
        if let Ok(mut locked) = self.ledger.lock() {
            if locked.release(&self.id).is_some() {
                let _ = locked.commit();
            }
        }
    }
}

/// A GPU container placed under the ledger lock: what it gets and its
/// ledger entry, not yet reserved. Dropping it leaves the ledger as it was.
pub struct Placement {
    pub locked: Locked,
    pub edits: ContainerEdits,
    pub entry: Entry,
    /// For the user: shown on stderr (and in runc's log by the shim).
    pub warnings: Vec<String>,
}

/// Marks the GPUs whose MPS daemon runs (two small reads per GPU).
pub fn mps_load(cfg: &Config, inv: &Inventory, load: &mut Load) {
    for g in &inv.gpus {
        if matches!(
            crate::mps::daemon(cfg, &g.uuid),
            crate::mps::Daemon::Running { .. }
        ) {
            load.set_mps(&g.uuid);
        }
    }
}

/// Decides for a bundle as create does, under the ledger lock (stale
/// entries dropped first). `Ok(None)`: not a GPU container, or `none`:
/// nothing to do. Shared by the shim and the hook used alone, so both
/// place containers the same way.
pub fn place(bundle: &Bundle, id: &str, cfg: &Config) -> crate::Result<Option<Placement>> {
    let req = Request::from_env(bundle.env()?)?;
    if !req.is_gpu() {
        return Ok(None);
    }
    let inv = Inventory::load(cfg)?;
    let mut locked = Ledger::new(&cfg.runtime.state_dir).lock()?;
    locked.drop_stale(cfg.runtime.reservation_timeout_seconds, false);
    let mut load = locked.load(Some(id));
    mps_load(cfg, &inv, &mut load);
    let rootfs = bundle.rootfs();
    let plan = plan(&req, cfg, &inv, &load, rootfs.as_deref(), true)?;
    let Decision::Assign(a) = &plan.decision else {
        return Ok(None);
    };
    if a.gpus.is_empty() {
        return Ok(None);
    }
    let entry = Entry {
        id: id.to_owned(),
        gpus: a.gpus.iter().map(|g| g.uuid.clone()).collect(),
        // Only MPS clients hold a share (and count against the budget).
        thread_percentage: a
            .thread_percentage
            .as_ref()
            .filter(|_| a.mps)
            .map(|p| p.value),
        pinned_mem_limit: a.pinned_mem_limit.clone(),
        pid: None,
        pid_start: None,
        names: ledger::names_from_annotations(bundle.annotations()),
        created: ledger::now(),
    };
    Ok(Some(Placement {
        locked,
        edits: plan.edits,
        entry,
        warnings: plan.warnings,
    }))
}

/// The create path. `Ok(None)`: not a GPU container (or no GPU), the spec
/// is untouched. `Ok(Some(_))`: spec rewritten and GPU reserved.
pub fn intercept(args: &CreateArgs, cfg: &Config, hook: &Path) -> crate::Result<Option<Placed>> {
    let dir = if args.bundle.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        args.bundle.clone()
    };
    let bundle = Bundle::open(&dir)?;
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
    let mut spec = bundle.spec.clone();
    edits.apply_to_spec(&mut spec, Some(&HookSpec::for_config(hook.to_owned(), cfg)))?;
    bundle.write(&spec)?;
    locked.reserve(entry);
    if let Err(e) = locked.commit() {
        let _ = bundle.restore();
        return Err(e.into());
    }
    Ok(Some(Placed {
        bundle,
        ledger: Ledger::new(&cfg.runtime.state_dir),
        id: args.id.clone(),
    }))
}

/// Before a `delete` is passed on: a reservation that no hook ever bound
/// belongs to a create that failed after the shim ran (runc never made the
/// container, so no poststop hook will release it). Engines delete such a
/// container to clean up, and so the GPU is released here at once instead
/// of at the reservation timeout. A bound entry is left to poststop.
pub fn release_unbound(id: &str, cfg: &Config) -> crate::Result<()> {
    let ledger = Ledger::new(&cfg.runtime.state_dir);
    if !ledger.exists() {
        return Ok(());
    }
    let mut locked = ledger.lock()?;
    if locked.get(id).is_some_and(|e| e.pid.is_none()) {
        locked.release(id);
        locked.commit()?;
    }
    Ok(())
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
    let time = rfc3339(std::time::SystemTime::now());
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

/// UTC time as RFC 3339 with seconds, e.g. `2026-11-25T13:34:40Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Ref: Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms",
    // civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_613_680)),
            "2026-11-25T13:34:40Z"
        );
    }

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
