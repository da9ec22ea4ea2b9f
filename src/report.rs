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
use crate::ledger::{Entry, Ledger};
use crate::telemetry::{GpuTelemetry, Telemetry};
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
    let untouched = Explained {
        json: json!({
            "decision": "untouched", "gpu": null, "thread_percentage": null,
            "pinned_mem_limit": null, "reason": "NVIDIA_VISIBLE_DEVICES is unset, empty or void: not a GPU container",
            "edits": {"devices": [], "mounts": [], "env": []},
        }),
        refused: false,
    };
    // The very pipeline create runs (the ledger locked, read, let go).
    let p = match crate::placement::prepare(&bundle, None, cfg, false) {
        Ok(Some(prepared)) => prepared.plan,
        Ok(None) => return Ok(untouched),
        Err(Error::Request(e)) => return Ok(reject(e.to_string())),
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
            "driver": p.driver,
            "warnings": p.warnings,
            "edits": p.edits,
        }),
        refused: false,
    })
}

/// The document with every string (keys included) made `visible`: what the
/// text renderings work from, so no field reaches a terminal raw.
pub fn visible_strings(doc: &Value) -> Value {
    use crate::error::visible;
    match doc {
        Value::String(s) => Value::String(visible(s).into_owned()),
        Value::Array(items) => Value::Array(items.iter().map(visible_strings).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (visible(k).into_owned(), visible_strings(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

pub fn explain_text(doc: &Value) -> String {
    let doc = &visible_strings(doc);
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
    if let Some(d) = doc["driver"].as_object() {
        let caps = d["capabilities"].as_str().unwrap_or("");
        let line = match d["inject"].as_str() {
            Some("gpushare") => format!(
                "{caps} from driver {} into {}",
                d["version"].as_str().unwrap_or("(version unknown)"),
                d["library_dir"].as_str().unwrap_or("")
            ),
            _ => format!("{caps}, brought by the chained runtime (driver.inject = \"none\")"),
        };
        let _ = writeln!(out, "driver:   {line}");
    }
    for w in doc["warnings"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "warning:  {}", w.as_str().unwrap_or(""));
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

/// The driver part of `gpushare inventory`: what GPU containers get, per
/// capability; `None`: a chained runtime brings it.
pub fn driver_text(driver: Option<&crate::driver::Driver>) -> String {
    let Some(d) = driver else {
        return "driver: brought by the chained runtime (driver.inject = \"none\")\n".into();
    };
    let mut out = String::new();
    if d.files.is_empty() {
        let _ = writeln!(
            out,
            "driver: none found under {} ({}): GPU containers get their devices only",
            d.root.display(),
            d.problem.as_deref().unwrap_or("no files")
        );
        return out;
    }
    let _ = writeln!(
        out,
        "driver {} (from {}), injected read-only into GPU containers:",
        d.version.as_deref().unwrap_or("(version unknown)"),
        d.root.join("etc/ld.so.cache").display()
    );
    let groups = crate::driver::INJECTED
        .iter()
        .map(|c| (c.name(), Some(*c)))
        .chain([("firmware", None)]);
    for (label, cap) in groups {
        let names: Vec<&str> = d
            .files_of(cap)
            .map(|f| f.name.rsplit('/').next().unwrap_or(&f.name))
            .collect();
        let list = if names.is_empty() {
            "-".to_owned()
        } else {
            names.join(" ")
        };
        let _ = writeln!(out, "  {label:<9} {list}");
    }
    out
}

/// 50 → "50%", 12.5 → "12.5%".
fn percent(p: f64) -> String {
    format!("{p}%")
}

/// The container a GPU process belongs to: the ledger entry whose id is in
/// the process's cgroup path (runtimes name cgroups after the container).
fn owner_of(pid: u32, entries: &[Entry]) -> Option<String> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    entries
        .iter()
        .find(|e| e.id.len() >= 6 && cgroup.contains(&e.id))
        .map(|e| e.id.clone())
}

/// The status document. `telemetry` is NVML (or a script), or why there
/// is none: then the figures are null and `telemetry_error` says why.
pub fn status(cfg: &Config, telemetry: Result<&dyn Telemetry, String>) -> crate::Result<Value> {
    let inv = Inventory::load(cfg)?;
    let timeout = cfg.runtime.reservation_timeout_seconds;
    let entries = Ledger::new(&cfg.runtime.state_dir).snapshot()?;
    let now = crate::sys::now();
    let gpus: Vec<Value> = inv
        .gpus
        .iter()
        .map(|g| {
            let holders: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.gpus.iter().any(|u| u.eq_ignore_ascii_case(&g.uuid)))
                .collect();
            let containers: Vec<Value> = holders
                .iter()
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
                        "since": crate::sys::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.created)),
                        "age_s": now.saturating_sub(e.created),
                    })
                })
                .collect();
            let committed: f64 = holders
                .iter()
                .filter(|e| e.is_live(timeout, false))
                .filter_map(|e| e.thread_percentage)
                .fold(0.0, |a, b| a + b);
            let (t, error) = match &telemetry {
                Ok(t) => match t.gpu(&g.uuid) {
                    Ok(t) => (t, None),
                    Err(e) => (GpuTelemetry::default(), Some(e)),
                },
                Err(why) => (GpuTelemetry::default(), Some(why.clone())),
            };
            let mut processes: Vec<Value> = t
                .processes
                .iter()
                .map(|(pid, used)| json!({"pid": pid, "memory_used_mib": used, "mps_client": false, "container": owner_of(*pid, &entries)}))
                .collect();
            // Behind MPS, NVML may see only the server; the daemon names the
            // clients (newer drivers list them in NVML too: marked, not doubled).
            for pid in crate::mps::clients(cfg, &g.uuid) {
                match processes.iter_mut().find(|p| p["pid"] == pid) {
                    Some(p) => p["mps_client"] = true.into(),
                    None => processes.push(json!({"pid": pid, "memory_used_mib": null, "mps_client": true, "container": owner_of(pid, &entries)})),
                }
            }
            json!({
                "index": g.index, "uuid": g.uuid, "name": g.name,
                "mps": crate::mps::daemon(cfg, &g.uuid).name(),
                "memory_used_mib": t.memory_used_mib,
                "memory_total_mib": t.memory_total_mib.or(g.memory_mib),
                "utilization_pct": t.utilization_pct,
                "memory_utilization_pct": t.memory_utilization_pct,
                "temperature_c": t.temperature_c,
                "power_w": t.power_w,
                "compute_mode": t.compute_mode,
                "committed_thread_percentage": committed,
                "telemetry_error": error,
                "processes": processes,
                "containers": containers,
            })
        })
        .collect();
    Ok(json!({ "gpus": gpus }))
}

fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// The status as a table for people, grouped by GPU as nvidia-smi does.
pub fn status_text(doc: &Value) -> String {
    // Ids, names and annotations are the containers' own: nothing of them
    // reaches the terminal raw.
    let raw = doc;
    let doc = &visible_strings(doc);
    let mut out = String::new();
    let opt = |v: &Value, unit: &str| {
        if v.is_null() {
            "-".to_owned()
        } else {
            format!(
                "{}{unit}",
                v.as_f64().map_or(v.to_string(), |f| format!("{f}"))
            )
        }
    };
    let mut reasons: Vec<&str> = Vec::new();
    for (gi, g) in doc["gpus"].as_array().into_iter().flatten().enumerate() {
        let _ = writeln!(
            out,
            "GPU {}  {}  {}  mps {}{}",
            g["index"],
            g["name"].as_str().unwrap_or(""),
            g["uuid"].as_str().unwrap_or(""),
            g["mps"].as_str().unwrap_or(""),
            g["compute_mode"]
                .as_str()
                .map(|m| format!("  compute {m}"))
                .unwrap_or_default(),
        );
        let _ =
            writeln!(
            out,
            "  memory {} / {} MiB   util {}   memory util {}   temp {}   power {}   committed {}",
            opt(&g["memory_used_mib"], ""),
            opt(&g["memory_total_mib"], ""),
            opt(&g["utilization_pct"], "%"),
            opt(&g["memory_utilization_pct"], "%"),
            opt(&g["temperature_c"], " C"),
            opt(&g["power_w"], " W"),
            g["committed_thread_percentage"].as_f64().map_or("-".to_owned(), percent),
        );
        if let Some(why) = g["telemetry_error"].as_str() {
            if !reasons.contains(&why) {
                reasons.push(why);
            }
        }
        let containers = g["containers"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        if containers.is_empty() {
            let _ = writeln!(out, "  (no containers)");
        } else {
            let _ = writeln!(
                out,
                "  {:<14} {:>8} {:>6} {:>8} {:>5} {:<9} NAMES",
                "CONTAINER", "PID", "SHARE", "PINNED", "AGE", "STATE"
            );
            for (ci, c) in containers.iter().enumerate() {
                // Cut before it is escaped, so no escape is cut in half.
                let id: String = raw["gpus"][gi]["containers"][ci]["id"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(14)
                    .collect();
                let id = crate::error::visible(&id);
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
                    "  {:<14} {:>8} {:>6} {:>8} {:>5} {:<9} {}",
                    id,
                    opt(&c["pid"], ""),
                    share,
                    c["pinned_mem_limit"].as_str().unwrap_or("-"),
                    age(c["age_s"].as_u64().unwrap_or(0)),
                    c["state"].as_str().unwrap_or(""),
                    names.join(" ")
                );
            }
        }
        for p in g["processes"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  process {} {} MiB{}{}",
                p["pid"],
                opt(&p["memory_used_mib"], ""),
                if p["mps_client"] == true {
                    " (MPS client)"
                } else {
                    ""
                },
                p["container"]
                    .as_str()
                    .map(|c| format!(" (container {c})"))
                    .unwrap_or_default()
            );
        }
    }
    for why in reasons {
        let _ = writeln!(out, "GPU figures unavailable: {why}");
    }
    out
}

/// One gauge family of the exposition, its samples in the status's order.
#[derive(Debug)]
struct Family {
    name: &'static str,
    help: &'static str,
    rows: Vec<(Vec<(&'static str, String)>, f64)>,
}

/// The status's families as a prometheus-client collector, so the crate's
/// encoder writes (and escapes) them in the order the status lists GPUs
/// and containers.
#[derive(Debug)]
struct Families(Vec<Family>);

impl prometheus_client::collector::Collector for Families {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::{gauge::ConstGauge, MetricType};
        for f in &self.0 {
            let mut metric = encoder.encode_descriptor(f.name, f.help, None, MetricType::Gauge)?;
            for (labels, v) in &f.rows {
                ConstGauge::new(*v).encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The status as Prometheus text: gauges named `gpushare_*`, encoded by
/// prometheus-client (label values escaped per the format; the text ends
/// with OpenMetrics' `# EOF`, a comment to Prometheus' text parser).
pub fn metrics(doc: &Value) -> String {
    let gpus: Vec<&Value> = doc["gpus"].as_array().into_iter().flatten().collect();
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    let gl = |g: &Value| vec![("gpu", g["index"].to_string()), ("uuid", text(&g["uuid"]))];
    let per_gpu = |key: &str, scale: f64| {
        gpus.iter()
            .filter_map(|g| g[key].as_f64().map(|v| (gl(g), v * scale)))
            .collect()
    };
    let each_gpu = |f: &dyn Fn(&Value) -> f64| gpus.iter().map(|g| (gl(g), f(g))).collect();
    let containers: Vec<(Vec<(&'static str, String)>, &Value)> = gpus
        .iter()
        .flat_map(|g| {
            g["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |c| {
                    let mut labels = gl(g);
                    labels.push(("container", text(&c["id"])));
                    labels.push(("state", text(&c["state"])));
                    // `container` is the engine's id; a Kubernetes container
                    // name goes in `container_name`, so no label appears twice.
                    for (k, v) in c["names"].as_object().into_iter().flatten() {
                        let label = match k.as_str() {
                            "pod" => "pod",
                            "namespace" => "namespace",
                            "name" => "name",
                            "container" => "container_name",
                            _ => continue,
                        };
                        labels.push((label, text(v)));
                    }
                    (labels, c)
                })
        })
        .collect();
    let per_container = |key: &str| {
        containers
            .iter()
            .filter_map(|(l, c)| c[key].as_f64().map(|v| (l.clone(), v)))
            .collect()
    };
    let family = |name, help, rows| Family { name, help, rows };
    let families = Families(vec![
        family(
            "gpu_memory_used_bytes",
            "GPU memory in use (NVML)",
            per_gpu("memory_used_mib", 1048576.0),
        ),
        family(
            "gpu_memory_total_bytes",
            "GPU memory installed",
            per_gpu("memory_total_mib", 1048576.0),
        ),
        family(
            "gpu_utilization_ratio",
            "Share of time a kernel ran (NVML), 0 to 1",
            per_gpu("utilization_pct", 0.01),
        ),
        family(
            "gpu_memory_utilization_ratio",
            "Share of time memory was read or written (NVML), 0 to 1",
            per_gpu("memory_utilization_pct", 0.01),
        ),
        family(
            "gpu_temperature_celsius",
            "GPU temperature (NVML)",
            per_gpu("temperature_c", 1.0),
        ),
        family(
            "gpu_power_watts",
            "GPU power draw (NVML)",
            per_gpu("power_w", 1.0),
        ),
        family(
            "gpu_committed_thread_percentage",
            "Sum of the MPS thread shares of the GPU's live containers",
            per_gpu("committed_thread_percentage", 1.0),
        ),
        family(
            "gpu_mps_running",
            "1 when the GPU's MPS control daemon runs",
            each_gpu(&|g| f64::from(u8::from(g["mps"] == "running"))),
        ),
        family(
            "gpu_containers",
            "Containers holding the GPU",
            each_gpu(&|g| g["containers"].as_array().map_or(0, Vec::len) as f64),
        ),
        family(
            "gpu_telemetry_up",
            "1 when NVML answered for the GPU",
            each_gpu(&|g| f64::from(u8::from(g["telemetry_error"].is_null()))),
        ),
        family(
            "container_info",
            "A container holding a GPU; its names as labels",
            containers.iter().map(|(l, _)| (l.clone(), 1.0)).collect(),
        ),
        family(
            "container_thread_percentage",
            "The container's MPS thread share",
            per_container("thread_percentage"),
        ),
        family(
            "container_age_seconds",
            "Seconds since the container was placed",
            per_container("age_s"),
        ),
    ]);
    let mut registry = prometheus_client::registry::Registry::with_prefix("gpushare");
    registry.register_collector(Box::new(families));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::InventorySource;

    /// Scripted figures for GPU 0; GPU 1 "falls off the bus".
    struct Scripted;

    impl Telemetry for Scripted {
        fn gpu(&self, uuid: &str) -> Result<GpuTelemetry, String> {
            if uuid.ends_with('1') {
                return Err("NVML: GPU is lost".into());
            }
            Ok(GpuTelemetry {
                memory_used_mib: Some(5120),
                memory_total_mib: Some(15360),
                utilization_pct: Some(42),
                memory_utilization_pct: Some(7),
                temperature_c: Some(51),
                power_w: Some(27.5),
                compute_mode: Some("ExclusiveProcess".into()),
                processes: vec![(4242, Some(1024))],
            })
        }

        fn inventory(&self) -> Result<Vec<crate::inventory::Gpu>, String> {
            Ok(Vec::new())
        }
    }

    fn node() -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        let inv = Inventory {
            gpus: crate::simulate::simulated_gpus(2, "Tesla T4"),
            source: String::new(),
        };
        std::fs::write(dir.path().join("inv.toml"), inv.to_toml()).unwrap();
        let mut cfg = Config::default();
        cfg.devices.inventory = InventorySource::File(dir.path().join("inv.toml"));
        cfg.runtime.state_dir = dir.path().join("state");
        cfg.mps.root = dir.path().join("mps");
        let mut l = Ledger::new(&cfg.runtime.state_dir).lock().unwrap();
        let mut names = std::collections::BTreeMap::new();
        names.insert("pod".to_owned(), "cam-\"7\"".to_owned());
        names.insert("namespace".to_owned(), "edge".to_owned());
        names.insert("container".to_owned(), "infer".to_owned());
        l.reserve(Entry {
            id: "0123456789abcdef0123".into(),
            gpus: vec![inv.gpus[0].uuid.clone()],
            thread_percentage: Some(30.0),
            pinned_mem_limit: Some("0=2G".into()),
            pid: Some(std::process::id() as i32),
            pid_start: crate::sys::process_start_time(std::process::id() as i32),
            names,
            env: Vec::new(),
            created: crate::sys::now() - 300,
        });
        l.commit().unwrap();
        (dir, cfg)
    }

    #[test]
    fn status_carries_the_figures_and_says_why_some_are_missing() {
        let (_d, cfg) = node();
        let doc = status(&cfg, Ok(&Scripted)).unwrap();
        let g0 = &doc["gpus"][0];
        assert_eq!(g0["memory_used_mib"], 5120);
        assert_eq!(g0["utilization_pct"], 42);
        assert_eq!(g0["temperature_c"], 51);
        assert_eq!(g0["compute_mode"], "ExclusiveProcess");
        assert_eq!(g0["committed_thread_percentage"], 30.0);
        assert_eq!(g0["telemetry_error"], Value::Null);
        assert_eq!(g0["containers"][0]["state"], "running");
        assert!(g0["containers"][0]["age_s"].as_u64().unwrap() >= 300);
        assert_eq!(g0["processes"][0]["pid"], 4242);
        let g1 = &doc["gpus"][1];
        assert_eq!(g1["utilization_pct"], Value::Null);
        assert_eq!(g1["memory_total_mib"], 15360, "from the inventory");
        assert_eq!(g1["telemetry_error"], "NVML: GPU is lost");

        let text = status_text(&doc);
        assert!(text.contains("memory 5120 / 15360 MiB   util 42%   memory util 7%   temp 51 C   power 27.5 W   committed 30%"), "{text}");
        assert!(text.contains("0123456789abcd "), "ids are short: {text}");
        assert!(
            text.contains("5m") && text.contains("pod=cam-\"7\"") && text.contains("0=2G"),
            "{text}"
        );
        assert!(
            text.contains("GPU figures unavailable: NVML: GPU is lost"),
            "{text}"
        );

        let none = status(&cfg, Err("NVML: the NVIDIA driver is not loaded".into())).unwrap();
        assert!(none["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .all(|g| g["telemetry_error"] == "NVML: the NVIDIA driver is not loaded"));
    }

    /// A strict reader of the text exposition format 0.0.4: every sample
    /// line is `name{labels} value`, names and label names are legal, label
    /// values are properly escaped, and every family is TYPEd before use.
    type Sample = (String, Vec<(String, String)>, f64);

    fn parse_exposition(text: &str) -> Vec<Sample> {
        let legal = |s: &str| {
            !s.is_empty()
                && s.chars().enumerate().all(|(i, c)| {
                    c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
                })
        };
        let mut typed = std::collections::HashSet::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap();
                assert!(
                    legal(name) && it.next() == Some("gauge") && it.next().is_none(),
                    "{line}"
                );
                typed.insert(name.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            if line == "# EOF" {
                assert!(text.ends_with("# EOF\n"), "EOF ends the text");
                continue;
            }
            assert!(
                !line.starts_with('#') && !line.is_empty(),
                "stray line {line:?}"
            );
            let brace = line.find('{').expect("labels");
            let name = &line[..brace];
            assert!(legal(name) && typed.contains(name), "{line}");
            let mut labels = Vec::new();
            let mut chars = line[brace + 1..].chars().peekable();
            loop {
                let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
                assert!(legal(&key), "label name in {line}");
                assert_eq!(chars.next(), Some('='));
                assert_eq!(chars.next(), Some('"'));
                let mut value = String::new();
                loop {
                    match chars.next().expect("unterminated value") {
                        '\\' => match chars.next() {
                            Some('\\') => value.push('\\'),
                            Some('"') => value.push('"'),
                            Some('n') => value.push('\n'),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw newline"),
                        c => value.push(c),
                    }
                }
                assert!(
                    labels.iter().all(|(k, _): &(String, String)| *k != key),
                    "label {key} twice in {line}"
                );
                labels.push((key, value));
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("{other:?} in {line}"),
                }
            }
            let rest: String = chars.collect();
            let value: f64 = rest
                .strip_prefix(' ')
                .expect("space before value")
                .parse()
                .expect("a number");
            samples.push((name.to_owned(), labels, value));
        }
        samples
    }

    #[test]
    fn metrics_are_strict_exposition_with_container_labels() {
        let (_d, cfg) = node();
        let text = metrics(&status(&cfg, Ok(&Scripted)).unwrap());
        let samples = parse_exposition(&text);
        let find = |name: &str, gpu: &str| {
            samples
                .iter()
                .find(|(n, l, _)| n == name && l.iter().any(|(k, v)| k == "gpu" && v == gpu))
                .map(|(_, l, v)| (l.clone(), *v))
        };
        assert_eq!(
            find("gpushare_gpu_memory_used_bytes", "0").unwrap().1,
            5120.0 * 1048576.0
        );
        assert_eq!(find("gpushare_gpu_utilization_ratio", "0").unwrap().1, 0.42);
        assert!(
            find("gpushare_gpu_utilization_ratio", "1").is_none(),
            "no figure, no sample"
        );
        assert_eq!(find("gpushare_gpu_telemetry_up", "1").unwrap().1, 0.0);
        assert_eq!(
            find("gpushare_gpu_committed_thread_percentage", "0")
                .unwrap()
                .1,
            30.0
        );
        let (labels, v) = find("gpushare_container_thread_percentage", "0").unwrap();
        assert_eq!(v, 30.0);
        assert!(labels.contains(&("container".into(), "0123456789abcdef0123".into())));
        assert!(
            labels.contains(&("pod".into(), "cam-\"7\"".into())),
            "escaped and read back: {labels:?}"
        );
        assert!(
            labels.contains(&("container_name".into(), "infer".into())),
            "{labels:?}"
        );
    }
}
