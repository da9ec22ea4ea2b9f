//! Placement: the one pipeline from a bundle to what a GPU container gets.
//! request (the spec's environment) → inventory → the load every GPU
//! carries (the ledger under its lock, liveness, which MPS daemons run) →
//! decision → edits (devices, MPS, the driver's files). The runtime, the
//! hook used alone and `explain` all go through `prepare`, so what explain
//! prints is what create does.

use std::path::Path;

use serde::Serialize;

use crate::bundle::Bundle;
use crate::config::{Config, Inject};
use crate::decide::{decide, Decision, Load};
use crate::driver::{self, Driver};
use crate::edits::ContainerEdits;
use crate::inventory::Inventory;
use crate::ledger::{self, Entry, Ledger, Locked};
use crate::request::{Capabilities, Request, RequestError, DRIVER_CAPABILITIES};

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
    let decision = decide(req, inv, load, &cfg.policy, &cfg.name())?;
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
            cfg.name()
        ),
        accepted: "compute, utility, video, all",
    })
}

/// A request worked through the pipeline, with the ledger still locked:
/// dropping it changes nothing; `place` turns it into a reservation.
pub struct Prepared {
    pub request: Request,
    pub inventory: Inventory,
    pub plan: Plan,
    pub locked: Locked,
}

/// Runs the pipeline for a bundle: `Ok(None)` when the spec asks for no
/// GPU. `id`, when given, is the container's (checked against runc's rule
/// before anything else, and left out of the load it is counted in).
/// `store_driver`: write a fresh driver discovery back to its cache
/// (create does; explain only reads).
pub fn prepare(
    bundle: &Bundle,
    id: Option<&str>,
    cfg: &Config,
    store_driver: bool,
) -> crate::Result<Option<Prepared>> {
    let request = Request::from_env(bundle.env()?)?;
    if !request.is_gpu() {
        return Ok(None);
    }
    // The id names files (the marker, the runtime's state) and shows in
    // status: refused before anything is held for it.
    if let Some(id) = id {
        crate::request::check_id(id)?;
    }
    let inventory = Inventory::load(cfg)?;
    let mut locked = Ledger::new(&cfg.runtime.state_dir).lock()?;
    let mut load = locked.load(id, cfg.runtime.reservation_timeout_seconds);
    mps_load(cfg, &inventory, &mut load);
    let rootfs = bundle.rootfs();
    let plan = plan(
        &request,
        cfg,
        &inventory,
        &load,
        rootfs.as_deref(),
        store_driver,
    )?;
    Ok(Some(Prepared {
        request,
        inventory,
        plan,
        locked,
    }))
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
        if crate::mps::running(cfg, &g.uuid) {
            load.set_mps(&g.uuid);
        }
    }
}

/// Decides for a bundle as create does and makes the container's ledger
/// entry, under the ledger lock. `Ok(None)`: not a GPU container, or
/// `none`: nothing to do. Shared by the runtime and the hook used alone, so
/// both place containers the same way.
pub fn place(bundle: &Bundle, id: &str, cfg: &Config) -> crate::Result<Option<Placement>> {
    let Some(Prepared { plan, locked, .. }) = prepare(bundle, Some(id), cfg, true)? else {
        return Ok(None);
    };
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
        env: plan.edits.env.clone(),
        created: crate::sys::now(),
    };
    Ok(Some(Placement {
        locked,
        edits: plan.edits,
        entry,
        warnings: plan.warnings,
    }))
}
