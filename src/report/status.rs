//! `gpushare status`: who holds which GPU at what share, and what each GPU
//! is doing, as one document; the table and the metrics render it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::config::Config;
use crate::inventory::Inventory;
use crate::ledger::{Hold, Ledger, Standing};
use crate::telemetry::{GpuTelemetry, Telemetry};
use crate::text::visible;

use super::ReportError;

/// The status document (`--json`, a contract: see the README).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub gpus: Vec<GpuStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GpuStatus {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    /// The MPS daemon: running, stopped or dead.
    pub mps: &'static str,
    pub memory_used_mib: Option<u64>,
    pub memory_total_mib: Option<u64>,
    pub utilization_pct: Option<u32>,
    pub memory_utilization_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub compute_mode: Option<String>,
    /// The MPS shares of the GPU's live containers, summed.
    pub committed_thread_percentage: f64,
    /// Why the figures are missing, when they are.
    pub telemetry_error: Option<String>,
    pub processes: Vec<Process>,
    pub containers: Vec<Holder>,
}

/// A process on the GPU, as NVML (or the MPS daemon) lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Process {
    pub pid: u32,
    pub memory_used_mib: Option<u64>,
    pub mps_client: bool,
    /// The container it belongs to (by its cgroup), when known.
    pub container: Option<String>,
}

/// A container holding the GPU.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Holder {
    pub id: String,
    /// The runtime root it lives under (runc's `--root`; `""`: the
    /// runtime's default; `hook:<bundle>` where the hook placed it alone).
    pub root: String,
    pub pid: Option<i32>,
    pub thread_percentage: Option<f64>,
    pub pinned_mem_limit: Option<String>,
    pub names: BTreeMap<String, String>,
    /// running, reserved (no pid yet) or gone.
    pub state: &'static str,
    pub since: String,
    pub age_s: u64,
}

/// The container a GPU process belongs to: the hold whose id is in the
/// process's cgroup path (runtimes name cgroups after the container).
fn owner_of(pid: u32, holds: &[Hold]) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    holds
        .iter()
        .find(|h| h.container.id.len() >= 6 && cgroup.contains(&h.container.id))
        .map(|h| h.container.id.clone())
}

/// The status. `telemetry` is NVML (or a script), or why there is none:
/// then the figures are null and `telemetry_error` says why.
pub fn status(
    cfg: &Config,
    telemetry: Result<&dyn Telemetry, String>,
) -> Result<Status, ReportError> {
    let inv = Inventory::load(cfg)?;
    let timeout = cfg.runtime.reservation_timeout_seconds;
    let holds = match Ledger::open_if_exists(&cfg.runtime.state_dir)? {
        Some(l) => l.holds()?,
        None => Vec::new(),
    };
    let standing: Vec<Standing> = holds.iter().map(|h| h.standing(timeout)).collect();
    let now = crate::sys::now();
    let gpus = inv
        .gpus
        .iter()
        .map(|g| {
            let holders: Vec<(&Hold, Standing)> = holds
                .iter()
                .zip(standing.iter().copied())
                .filter(|(h, _)| h.gpus.iter().any(|u| u.eq_ignore_ascii_case(&g.uuid)))
                .collect();
            let containers = holders
                .iter()
                .map(|(h, standing)| Holder {
                    id: h.container.id.clone(),
                    root: h.container.root.clone(),
                    pid: h.pid,
                    thread_percentage: h.thread_percentage,
                    pinned_mem_limit: h.pinned_mem_limit.clone(),
                    names: h.names.clone(),
                    state: match standing {
                        Standing::Gone => "gone",
                        Standing::Reserved => "reserved",
                        Standing::Running => "running",
                    },
                    since: crate::sys::rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_secs(h.created),
                    ),
                    age_s: now.saturating_sub(h.created),
                })
                .collect();
            let committed = holders
                .iter()
                .filter(|(_, standing)| *standing != Standing::Gone)
                .filter_map(|(h, _)| h.thread_percentage)
                // Not `sum`: a float sum of nothing is -0.0 ("-0%").
                .fold(0.0, |a, b| a + b);
            let (t, telemetry_error) = match &telemetry {
                Ok(t) => match t.gpu(&g.uuid) {
                    Ok(t) => (t, None),
                    Err(e) => (GpuTelemetry::default(), Some(e)),
                },
                Err(why) => (GpuTelemetry::default(), Some(why.clone())),
            };
            let mut processes: Vec<Process> = t
                .processes
                .iter()
                .map(|&(pid, used)| Process {
                    pid,
                    memory_used_mib: used,
                    mps_client: false,
                    container: owner_of(pid, &holds),
                })
                .collect();
            // Behind MPS, NVML may see only the server; the daemon names the
            // clients (newer drivers list them in NVML too: marked, not doubled).
            for pid in crate::mps::daemon::clients(cfg, &g.uuid) {
                match processes.iter_mut().find(|p| p.pid == pid) {
                    Some(p) => p.mps_client = true,
                    None => processes.push(Process {
                        pid,
                        memory_used_mib: None,
                        mps_client: true,
                        container: owner_of(pid, &holds),
                    }),
                }
            }
            GpuStatus {
                index: g.index,
                uuid: g.uuid.clone(),
                name: g.name.clone(),
                mps: crate::mps::paths::daemon(cfg, &g.uuid).name(),
                memory_used_mib: t.memory_used_mib,
                memory_total_mib: t.memory_total_mib.or(g.memory_mib),
                utilization_pct: t.utilization_pct,
                memory_utilization_pct: t.memory_utilization_pct,
                temperature_c: t.temperature_c,
                power_w: t.power_w,
                compute_mode: t.compute_mode,
                committed_thread_percentage: committed,
                telemetry_error,
                processes,
                containers,
            }
        })
        .collect();
    Ok(Status { gpus })
}

/// The status now: the node config, NVML's figures where NVML answers.
pub fn status_now() -> Result<Status, ReportError> {
    let cfg = Config::load()?;
    let nvml = crate::telemetry::open();
    let telemetry = match &nvml {
        Ok(n) => Ok(n as &dyn Telemetry),
        Err(why) => Err(why.clone()),
    };
    status(&cfg, telemetry)
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// A figure with its unit, or `-`.
fn opt<T: std::fmt::Display>(v: Option<T>, unit: &str) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v}{unit}"))
}

/// The status as a table for people, grouped by GPU as nvidia-smi does.
/// Ids, names and annotations are the containers' own: every string is
/// made `visible`, so nothing of them reaches the terminal raw.
pub fn status_text(doc: &Status) -> String {
    let mut out = String::new();
    let mut reasons: Vec<&str> = Vec::new();
    for g in &doc.gpus {
        let _ = writeln!(
            out,
            "GPU {}  {}  {}  mps {}{}",
            g.index,
            visible(&g.name),
            visible(&g.uuid),
            g.mps,
            g.compute_mode
                .as_deref()
                .map(|m| format!("  compute {}", visible(m)))
                .unwrap_or_default(),
        );
        let _ = writeln!(
            out,
            "  memory {} / {} MiB   util {}   memory util {}   temp {}   power {}   committed {}",
            opt(g.memory_used_mib, ""),
            opt(g.memory_total_mib, ""),
            opt(g.utilization_pct, "%"),
            opt(g.memory_utilization_pct, "%"),
            opt(g.temperature_c, " C"),
            opt(g.power_w, " W"),
            super::percent(g.committed_thread_percentage),
        );
        if let Some(why) = &g.telemetry_error {
            if !reasons.contains(&why.as_str()) {
                reasons.push(why);
            }
        }
        if g.containers.is_empty() {
            let _ = writeln!(out, "  (no containers)");
        } else {
            let _ = writeln!(
                out,
                "  {:<14} {:>8} {:>6} {:>8} {:>5} {:<9} NAMES",
                "CONTAINER", "PID", "SHARE", "PINNED", "AGE", "STATE"
            );
            for c in &g.containers {
                // Cut before it is escaped, so no escape is cut in half.
                let id: String = c.id.chars().take(14).collect();
                let names: Vec<String> = c
                    .names
                    .iter()
                    .map(|(k, v)| format!("{}={}", visible(k), visible(v)))
                    .collect();
                let _ = writeln!(
                    out,
                    "  {:<14} {:>8} {:>6} {:>8} {:>5} {:<9} {}",
                    visible(&id),
                    opt(c.pid, ""),
                    c.thread_percentage
                        .map_or_else(|| "-".to_owned(), super::percent),
                    c.pinned_mem_limit
                        .as_deref()
                        .map_or_else(|| "-".into(), visible),
                    age(c.age_s),
                    c.state,
                    names.join(" ")
                );
            }
        }
        for p in &g.processes {
            let _ = writeln!(
                out,
                "  process {} {} MiB{}{}",
                p.pid,
                opt(p.memory_used_mib, ""),
                if p.mps_client { " (MPS client)" } else { "" },
                p.container
                    .as_deref()
                    .map(|c| format!(" (container {})", visible(c)))
                    .unwrap_or_default()
            );
        }
    }
    for why in reasons {
        let _ = writeln!(out, "GPU figures unavailable: {}", visible(why));
    }
    out
}
