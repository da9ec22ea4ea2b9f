//! Placement: the one pipeline from a container's request to what it gets.
//! request (the spec's environment) → inventory → the load every GPU
//! carries (the ledger's holds that still count, which MPS daemons run) →
//! decision → edits (devices, MPS, the driver's files) → the hold to
//! record. The runtime, the hook used alone and `explain` all go through
//! `plan`, so what explain prints is what create does.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::bundle::{Bundle, BundleError};
use crate::config::{Config, Inject};
use crate::decide::{decide, Decision, Refusal};
use crate::driver::{self, Driver};
use crate::edits::{ContainerEdits, EditsError, MpsClient};
use crate::ids::IdError;
use crate::inventory::{Inventory, InventoryError};
use crate::ledger::{
    self, Allocation, Container, Hold, Ledger, LedgerError, Load, Source, Tally, Transaction,
    ALLOCATION_ANNOTATION,
};
use crate::request::{
    Capabilities, DeviceId, Devices, Percentage, Request, RequestError, DRIVER_CAPABILITIES,
    THREAD_PERCENTAGE, VISIBLE_DEVICES,
};
use crate::text::shown;

#[derive(Debug, Error)]
pub enum PlacementError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Id(#[from] IdError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Edits(#[from] EditsError),
    #[error("container {id} {root} already holds GPU {gpus}; delete it first, or give the new container another id")]
    AlreadyHeld {
        id: String,
        /// "under runtime root <root>", or "under the runtime's default root".
        root: String,
        gpus: String,
    },
    #[error("the container's allocation {key} ({ALLOCATION_ANNOTATION}) is not one this node's device plugin recorded: kubelet did not get it from gpushare device-plugin here, or the ledger was cleared since; delete the pod so kubelet allocates again")]
    UnknownAllocation { key: String },
    #[error("this node gives GPUs only through its device plugin ([device_plugin] require_allocation in {config}): ask for {resource} in the pod's resources.limits instead of setting {VISIBLE_DEVICES}")]
    AllocationRequired { resource: String, config: String },
    #[error("the container's allocation gives it {gpu}{share}, but its own {var} says {value:?}, and a hook cannot change a process's environment: take {var} out of the pod, or run it with the gpushare runtime handler, which sets it")]
    AllocationContradicted {
        gpu: String,
        share: String,
        var: &'static str,
        value: String,
    },
}

impl PlacementError {
    /// Whether the request, the node's config or the engine's input is
    /// what must change (exit 2), rather than something that failed.
    pub fn is_refusal(&self) -> bool {
        match self {
            PlacementError::Bundle(e) => e.is_refusal(),
            PlacementError::Inventory(e) => e.is_refusal(),
            PlacementError::Request(_)
            | PlacementError::Id(_)
            | PlacementError::Refused(_)
            | PlacementError::AlreadyHeld { .. }
            | PlacementError::UnknownAllocation { .. }
            | PlacementError::AllocationRequired { .. }
            | PlacementError::AllocationContradicted { .. } => true,
            PlacementError::Ledger(_) | PlacementError::Edits(_) => false,
        }
    }
}

/// What create would do with a request: the decision and its edits.
pub struct Plan {
    pub decision: Decision,
    pub edits: ContainerEdits,
    /// What the container gets of the driver's user-space (GPU containers).
    pub driver: Option<DriverInjection>,
    /// For the user: shown on stderr (and in runc's log by the runtime).
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
/// directory of the image at `rootfs`. `store_driver`: write a fresh
/// driver discovery back to its cache (create does; explain only reads).
pub fn plan(
    req: &Request,
    cfg: &Config,
    inv: &Inventory,
    load: &Load,
    rootfs: Option<&Path>,
    store_driver: bool,
) -> Result<Plan, PlacementError> {
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
    let client = a.gpus.first().map(|g| mps_client(cfg, &g.uuid));
    plan.edits = ContainerEdits::for_assignment(a, &cfg.devices.root, client.as_ref())?;
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
            plan.edits.add_driver(&driver, caps, &dir);
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

/// What makes a container a client of GPU `uuid`'s MPS daemon.
fn mps_client(cfg: &Config, uuid: &str) -> MpsClient {
    let p = crate::mps::paths::paths(cfg, uuid);
    MpsClient {
        pipe_dir: p.pipe,
        shm_dir: p.shm,
        privileged_socket: crate::mps::paths::PRIVILEGED_SOCKET,
        container_pipe_dir: cfg.mps.container_pipe_dir.clone(),
    }
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
        value: shown(&caps.to_string()),
        why: format!(
            "gpushare does not inject the driver's {} files; ask for compute, utility, video or all, or have NVIDIA's runtime bring them (driver.inject = \"none\" in {})",
            other.join(", "),
            cfg.name()
        ),
        accepted: "compute, utility, video, all",
    })
}

/// The request a container's device-plugin allocation makes of `request`:
/// the allocated GPU at the allocated share (its pinned-memory limit in
/// proportion when configured), whatever the container's own variables
/// say; its driver capabilities stay its own. A container with no
/// allocation keeps its request, unless the node requires one. Through
/// the hook alone (`keeps_env`), whose container's environment cannot be
/// changed, own variables that contradict the allocation are refused.
fn allocated(
    request: &Request,
    bundle: &Bundle,
    recorded: impl FnOnce(&str) -> Result<Option<Allocation>, LedgerError>,
    cfg: &Config,
    inv: &Inventory,
    keeps_env: bool,
) -> Result<Request, PlacementError> {
    let annotations = bundle.annotations();
    let Some(key) = annotations.get(ALLOCATION_ANNOTATION) else {
        if cfg.device_plugin.require_allocation {
            return Err(PlacementError::AllocationRequired {
                resource: cfg.device_plugin.resource.clone(),
                config: cfg.name(),
            });
        }
        return Ok(request.clone());
    };
    let Some(a) = recorded(key)? else {
        return Err(PlacementError::UnknownAllocation { key: shown(key) });
    };
    let share = a.share_text().map(|text| Percentage {
        text,
        value: a.percentage(),
    });
    let pinned = match (
        share.is_some(),
        cfg.device_plugin.proportional_pinned_memory,
    ) {
        (true, true) => inv
            .gpus
            .iter()
            .find(|g| g.uuid == a.gpu)
            .and_then(|g| g.memory_mib)
            .map(|m| crate::request::parse_limit(&format!("{}M", a.pinned_mib(m))))
            .transpose()?,
        _ => request.pinned_mem_limit.clone(),
    };
    let wanted = Devices::List(vec![DeviceId::Uuid(a.gpu.clone())]);
    if keeps_env {
        let contradicted = |var, value: String| PlacementError::AllocationContradicted {
            gpu: a.gpu.clone(),
            share: share
                .as_ref()
                .map(|s| format!(" at {}%", s.text))
                .unwrap_or_default(),
            var,
            value,
        };
        if request.devices != wanted {
            return Err(contradicted(VISIBLE_DEVICES, request.devices.to_string()));
        }
        let own = request.thread_percentage.as_ref().map(|p| p.value);
        if own != share.as_ref().map(|s| s.value) {
            return Err(contradicted(
                THREAD_PERCENTAGE,
                request
                    .thread_percentage
                    .as_ref()
                    .map(|p| p.text.clone())
                    .unwrap_or_default(),
            ));
        }
    }
    Ok(Request {
        devices: wanted,
        thread_percentage: share,
        pinned_mem_limit: pinned,
        capabilities: request.capabilities.clone(),
    })
}

/// Marks in `load` the GPUs whose MPS daemon runs.
fn mark_mps(cfg: &Config, inv: &Inventory, load: &mut Load) {
    for g in &inv.gpus {
        if crate::mps::paths::running(cfg, &g.uuid) {
            load.set_mps(&g.uuid);
        }
    }
}

/// A GPU container placed inside a ledger transaction: what it gets and
/// its hold, not yet written. Dropping it leaves the ledger as it was.
pub struct Placement<'a> {
    pub tx: Transaction<'a>,
    pub edits: ContainerEdits,
    pub hold: Hold,
    /// For the user: shown on stderr (and in runc's log by the runtime).
    pub warnings: Vec<String>,
}

/// Places `container` as its spec asks, inside one transaction of
/// `ledger`: the id checked against runc's rule, the holds that no longer
/// count dropped, a container that already holds a GPU refused, the
/// decision made and the hold to record worked out. `Ok(None)`: the spec
/// asks for no GPU (or for `none`): nothing to hold.
pub fn place<'a>(
    bundle: &Bundle,
    request: &Request,
    container: Container,
    source: Source,
    cfg: &Config,
    ledger: &'a mut Ledger,
) -> Result<Option<Placement<'a>>, PlacementError> {
    place_by(bundle, request, container, source, cfg, ledger, &mut |p| {
        p.is_alive()
    })
}

/// `place`, with whether a hold's process lives asked of `alive` (the
/// resident NRI plugin keeps a descriptor of each process it has seen).
pub fn place_by<'a>(
    bundle: &Bundle,
    request: &Request,
    container: Container,
    source: Source,
    cfg: &Config,
    ledger: &'a mut Ledger,
    alive: &mut dyn FnMut(crate::sys::Process) -> bool,
) -> Result<Option<Placement<'a>>, PlacementError> {
    if !request.is_gpu() {
        return Ok(None);
    }
    // The id names the runtime's state and shows in status: refused before
    // anything is held for it.
    crate::ids::check_id(&container.id, shown)?;
    let inventory = Inventory::load(cfg)?;
    let mut tx = ledger.begin()?;
    let request = &allocated(
        request,
        bundle,
        |k| tx.allocation(k),
        cfg,
        &inventory,
        source == Source::Hook,
    )?;
    let Tally { mut load, held } =
        tx.tally_by(cfg.runtime.reservation_timeout_seconds, &container, alive)?;
    if !held.is_empty() {
        return Err(PlacementError::AlreadyHeld {
            id: shown(&container.id),
            root: match container.root.as_str() {
                "" => "under the runtime's default root".into(),
                r => format!("under runtime root {}", shown(r)),
            },
            gpus: held.join(","),
        });
    }
    mark_mps(cfg, &inventory, &mut load);
    let plan = plan(
        request,
        cfg,
        &inventory,
        &load,
        bundle.rootfs().as_deref(),
        true,
    )?;
    let Decision::Assign(a) = &plan.decision else {
        return Ok(None);
    };
    if a.gpus.is_empty() {
        return Ok(None);
    }
    let hold = Hold {
        container,
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
        source,
        // As runc records it (its working directory in the bundle), so a
        // hook that runs under the runtime finds this reservation by it.
        bundle: std::fs::canonicalize(&bundle.dir)
            .unwrap_or_else(|_| bundle.dir.clone())
            .display()
            .to_string(),
        reservation: ledger::new_reservation(),
    };
    Ok(Some(Placement {
        tx,
        edits: plan.edits,
        hold,
        warnings: plan.warnings,
    }))
}

/// What create would do with `bundle` now, for `explain`: the same
/// pipeline, from the holds that count, with nothing written. `Ok(None)`:
/// not a GPU container.
pub fn preview(bundle: &Bundle, cfg: &Config) -> Result<Option<Plan>, PlacementError> {
    let request = Request::from_spec(bundle.env()?, &bundle.cdi_devices())?;
    if !request.is_gpu() {
        return Ok(None);
    }
    let inventory = Inventory::load(cfg)?;
    let timeout = cfg.runtime.reservation_timeout_seconds;
    let ledger = Ledger::open_if_exists(&cfg.runtime.state_dir)?;
    let holds: Vec<Hold> = match &ledger {
        Some(l) => l
            .holds()?
            .into_iter()
            .filter(|h| h.standing(timeout) != ledger::Standing::Gone)
            .collect(),
        None => Vec::new(),
    };
    let recorded = |k: &str| match &ledger {
        Some(l) => l.allocation(k),
        None => Ok(None),
    };
    let request = allocated(&request, bundle, recorded, cfg, &inventory, false)?;
    let mut load = Load::of_holds(&holds);
    mark_mps(cfg, &inventory, &mut load);
    plan(
        &request,
        cfg,
        &inventory,
        &load,
        bundle.rootfs().as_deref(),
        false,
    )
    .map(Some)
}
