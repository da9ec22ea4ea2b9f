//! What operators read: `explain` (what create would do with a bundle) and
//! `status` (who holds which GPU). Both are built as JSON values first; the
//! tables are renderings of the same values, so the two never disagree.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::{json, Value};

use crate::bundle::Bundle;
use crate::config::Config;
use crate::decide::Decision;
use crate::inventory::Inventory;
use crate::ledger::{self, Entry, Ledger};
use crate::request::Request;
use crate::shim::plan;
use crate::Error;

/// The explain document and whether it is a refusal (exit 2).
pub struct Explained {
    pub json: Value,
    pub refused: bool,
}

pub fn explain(bundle_dir: &Path, cfg: &Config) -> crate::Result<Explained> {
    let bundle = Bundle::open(bundle_dir)?;
    let reject = |reason: String| Explained {
        json: json!({
            "decision": "reject", "gpu": null, "thread_percentage": null,
            "pinned_mem_limit": null, "reason": reason,
            "edits": {"devices": [], "mounts": [], "env": []},
        }),
        refused: true,
    };
    let req = match Request::from_env(bundle.env()?) {
        Ok(r) => r,
        Err(e) => return Ok(reject(e.to_string())),
    };
    let untouched = Explained {
        json: json!({
            "decision": "untouched", "gpu": null, "thread_percentage": null,
            "pinned_mem_limit": null, "reason": "NVIDIA_VISIBLE_DEVICES is unset, empty or void: not a GPU container",
            "edits": {"devices": [], "mounts": [], "env": []},
        }),
        refused: false,
    };
    if !req.is_gpu() {
        return Ok(untouched);
    }
    let inv = Inventory::load(cfg)?;
    let entries = live_entries(cfg)?;
    let mut load = ledger::load_of(&entries, None);
    crate::shim::mps_load(cfg, &inv, &mut load);
    let p = match plan(&req, cfg, &inv, &load) {
        Ok(p) => p,
        Err(Error::Refused(r)) => return Ok(reject(r.0)),
        Err(e) => return Err(e),
    };
    let Decision::Assign(a) = &p.decision else {
        return Ok(untouched);
    };
    let gpu = a
        .gpus
        .first()
        .map(|g| json!({"index": g.index, "uuid": g.uuid, "name": g.name}));
    let reason = if a.gpus.is_empty() {
        Some("NVIDIA_VISIBLE_DEVICES=none: a GPU container with no GPU")
    } else {
        None
    };
    Ok(Explained {
        json: json!({
            "decision": "assign",
            "gpu": gpu,
            "thread_percentage": a.thread_percentage.as_ref().map(|t| t.value),
            "pinned_mem_limit": a.pinned_mem_limit,
            "reason": reason,
            "mps": a.mps,
            "warnings": a.warnings,
            "edits": p.edits,
        }),
        refused: false,
    })
}

/// The ledger as the shim would count it: stale entries left out.
fn live_entries(cfg: &Config) -> crate::Result<Vec<Entry>> {
    let timeout = cfg.runtime.reservation_timeout_seconds;
    let mut entries = Ledger::new(&cfg.runtime.state_dir).snapshot()?;
    entries.retain(|e| e.is_live(timeout, false));
    Ok(entries)
}

pub fn explain_text(doc: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "decision: {}", doc["decision"].as_str().unwrap_or(""));
    if let Some(g) = doc["gpu"].as_object() {
        let _ = writeln!(
            out,
            "gpu:      {} {} ({})",
            g["index"],
            g["uuid"].as_str().unwrap_or(""),
            g["name"].as_str().unwrap_or("")
        );
    }
    if let Some(p) = doc["thread_percentage"].as_f64() {
        let _ = writeln!(out, "share:    {}", percent(p));
    }
    for (key, label) in [("pinned_mem_limit", "pinned:   "), ("reason", "reason:   ")] {
        if let Some(s) = doc[key].as_str() {
            let _ = writeln!(out, "{label}{s}");
        }
    }
    for d in doc["edits"]["devices"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "device:   {} c {}:{} (host {})",
            d["path"].as_str().unwrap_or(""),
            d["major"],
            d["minor"],
            d["host_path"].as_str().unwrap_or("")
        );
    }
    for m in doc["edits"]["mounts"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "mount:    {} -> {}",
            m["source"].as_str().unwrap_or(""),
            m["destination"].as_str().unwrap_or("")
        );
    }
    for e in doc["edits"]["env"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "env:      {}", e.as_str().unwrap_or(""));
    }
    out
}

/// 50 → "50%", 12.5 → "12.5%".
fn percent(p: f64) -> String {
    format!("{p}%")
}

/// Why the utilisation and memory figures are null.
const NO_TELEMETRY: &str = "not measured: gpushare does not query NVML yet";

pub fn status(cfg: &Config) -> crate::Result<Value> {
    let inv = Inventory::load(cfg)?;
    let timeout = cfg.runtime.reservation_timeout_seconds;
    let entries = Ledger::new(&cfg.runtime.state_dir).snapshot()?;
    let gpus: Vec<Value> = inv
        .gpus
        .iter()
        .map(|g| {
            let containers: Vec<Value> = entries
                .iter()
                .filter(|e| e.gpus.iter().any(|u| u.eq_ignore_ascii_case(&g.uuid)))
                .map(|e| {
                    let state = match (e.pid, e.is_live(timeout, true)) {
                        (_, false) => "gone",
                        (None, true) => "reserved",
                        (Some(_), true) => "running",
                    };
                    json!({
                        "id": e.id, "pid": e.pid, "thread_percentage": e.thread_percentage,
                        "pinned_mem_limit": e.pinned_mem_limit, "names": e.names,
                        "state": state,
                        "since": crate::shim::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.created)),
                    })
                })
                .collect();
            let mps = crate::mps::daemon(cfg, &g.uuid).name();
            json!({
                "index": g.index, "uuid": g.uuid, "name": g.name,
                "mps": mps,
                "memory_used_mib": null, "memory_total_mib": g.memory_mib,
                "utilization_pct": null, "telemetry_error": NO_TELEMETRY,
                "containers": containers,
            })
        })
        .collect();
    Ok(json!({ "gpus": gpus }))
}

pub fn status_text(doc: &Value) -> String {
    let mut out = String::new();
    let opt = |v: &Value| {
        if v.is_null() {
            "-".to_owned()
        } else {
            v.to_string()
        }
    };
    for g in doc["gpus"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "GPU {}  {}  {}  memory {}/{} MiB  util {}  mps {}",
            g["index"],
            g["name"].as_str().unwrap_or(""),
            g["uuid"].as_str().unwrap_or(""),
            opt(&g["memory_used_mib"]),
            opt(&g["memory_total_mib"]),
            g["utilization_pct"]
                .as_f64()
                .map_or("-".to_owned(), percent),
            g["mps"].as_str().unwrap_or("")
        );
        let containers = g["containers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if containers.is_empty() {
            let _ = writeln!(out, "  (no containers)");
            continue;
        }
        let _ = writeln!(
            out,
            "  {:<24} {:>8} {:>6} {:>8} {:<9} NAMES",
            "CONTAINER", "PID", "SHARE", "PINNED", "STATE"
        );
        for c in containers {
            let id = c["id"].as_str().unwrap_or("");
            let id: String = if id.chars().count() > 24 {
                id.chars().take(23).chain(['…']).collect()
            } else {
                id.to_owned()
            };
            let share = c["thread_percentage"]
                .as_f64()
                .map_or("-".to_owned(), percent);
            let names: Vec<String> = c["names"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect();
            let _ = writeln!(
                out,
                "  {:<24} {:>8} {:>6} {:>8} {:<9} {}",
                id,
                opt(&c["pid"]),
                share,
                c["pinned_mem_limit"].as_str().unwrap_or("-"),
                c["state"].as_str().unwrap_or(""),
                names.join(" ")
            );
        }
    }
    if let Some(why) = doc["gpus"][0]["telemetry_error"].as_str() {
        let _ = writeln!(out, "memory use and utilisation: {why}");
    }
    out
}
