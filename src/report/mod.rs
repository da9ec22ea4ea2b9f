//! What operators read, one document each, built as typed values (serde
//! gives the JSON) and rendered for people by reading their fields:
//! `explain` (what create would do with a bundle), `status` (who holds which
//! GPU, and what each GPU is doing) and its Prometheus rendering
//! (`metrics`), and the driver's files `inventory` shows.

use std::fmt::Write as _;

use thiserror::Error;

use crate::config::{Config, ConfigError, Inject, InventorySource};
use crate::driver::Driver;
use crate::inventory::{Inventory, InventoryError};
use crate::ledger::LedgerError;
use crate::sys::IoError;

mod explain;
mod metrics;
mod status;

pub use explain::{explain, explain_text, Assigned, Explain, GpuRef, Verdict};
pub use metrics::metrics;
pub use status::{status, status_now, status_text, GpuStatus, Holder, Process, Status};

#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0}; check that the state directory is writable by root")]
    Driver(#[from] IoError),
    #[error(transparent)]
    Cdi(#[from] crate::cdi::CdiError),
}

impl ReportError {
    /// What the operator must fix in the node's config or inventory.
    pub fn is_refusal(&self) -> bool {
        match self {
            ReportError::Config(e) => e.is_refusal(),
            ReportError::Inventory(e) => e.is_refusal(),
            ReportError::Cdi(e) => e.is_refusal(),
            _ => false,
        }
    }
}

/// `gpushare inventory`: the GPUs and the driver's files GPU containers
/// get (`None` when a chained runtime brings them). With `refresh`, NVML's
/// list is written to the inventory cache (for the `nvml` and `auto`
/// sources), the driver found again, and the CDI spec rewritten if there
/// is one (`hook` is the gpushare-hook it names); the third value says
/// what was written.
pub fn inventory(
    cfg: &Config,
    refresh: bool,
    hook: &std::path::Path,
) -> Result<(Inventory, Option<Driver>, Vec<String>), ReportError> {
    let mut wrote = Vec::new();
    let from_nvml = matches!(
        cfg.devices.inventory,
        InventorySource::Nvml | InventorySource::Auto
    );
    if refresh && from_nvml {
        let nvml = crate::telemetry::open().map_err(InventoryError::Nvml)?;
        let inv = crate::telemetry::nvml_inventory(&nvml).map_err(InventoryError::Nvml)?;
        let path = crate::inventory::nvml_cache(cfg);
        inv.write_cache(&path)?;
        wrote.push(format!(
            "wrote {} ({} GPUs from NVML)",
            path.display(),
            inv.gpus.len()
        ));
    }
    let inv = Inventory::load(cfg)?;
    let driver = match (cfg.driver.inject, refresh) {
        (Inject::None, _) => None,
        (_, true) => Some(Driver::refresh(cfg)?),
        (_, false) => Some(Driver::load(cfg, false)),
    };
    // The CDI spec, once written, follows the inventory.
    if refresh && cfg.cdi_spec.exists() {
        crate::cdi::write(&cfg.cdi_spec, &inv, hook, crate::cdi::config_for_hook(cfg))?;
        wrote.push(format!(
            "rewrote the CDI spec {} ({} GPUs)",
            cfg.cdi_spec.display(),
            inv.gpus.len()
        ));
    }
    Ok((inv, driver, wrote))
}

/// 50 → "50%", 12.5 → "12.5%".
fn percent(p: f64) -> String {
    format!("{p}%")
}

/// `gpushare inventory` for people: a line per GPU, then the driver's
/// files GPU containers get.
pub fn inventory_text(
    inv: &crate::inventory::Inventory,
    driver: Option<&crate::driver::Driver>,
) -> String {
    let mut out = String::new();
    for g in &inv.gpus {
        let mem = g.memory_mib.map_or("-".into(), |m| format!("{m} MiB"));
        let line = format!(
            "{}  {}  {}  {}  /dev/nvidia{}  {mem}",
            g.index, g.name, g.uuid, g.pci_bus_id, g.minor
        );
        let _ = writeln!(out, "{}", crate::text::visible(&line));
    }
    out.push_str(&driver_text(driver));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, InventorySource};
    use crate::inventory::Inventory;
    use crate::ledger::{Container, Hold, Ledger, Source};
    use crate::telemetry::{GpuTelemetry, Telemetry};
    use serde_json::Value;

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
        let mut l = Ledger::open(&cfg.runtime.state_dir).unwrap();
        let mut names = std::collections::BTreeMap::new();
        names.insert("pod".to_owned(), "cam-\"7\"".to_owned());
        names.insert("namespace".to_owned(), "edge".to_owned());
        names.insert("container".to_owned(), "infer".to_owned());
        let mut tx = l.begin().unwrap();
        tx.insert(&Hold {
            container: Container {
                root: "/run/containerd/runc/k8s.io".into(),
                id: "0123456789abcdef0123".into(),
            },
            gpus: vec![inv.gpus[0].uuid.clone()],
            thread_percentage: Some(30.0),
            pinned_mem_limit: Some("0=2G".into()),
            pid: Some(std::process::id() as i32),
            pid_start: crate::sys::Process::find(std::process::id() as i32).map(|p| p.start),
            names,
            env: Vec::new(),
            created: crate::sys::now() - 300,
            source: Source::Runtime,
            bundle: "/b".into(),
            reservation: 1,
        })
        .unwrap();
        tx.commit().unwrap();
        (dir, cfg)
    }

    #[test]
    fn status_carries_the_figures_and_says_why_some_are_missing() {
        let (_d, cfg) = node();
        let typed = status(&cfg, Ok(&Scripted)).unwrap();
        let doc = serde_json::to_value(&typed).unwrap();
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

        let text = status_text(&typed);
        assert!(text.contains("memory 5120 / 15360 MiB   util 42%   memory util 7%   temp 51 C   power 27.5 W   committed 30%"), "{text}");
        assert!(text.contains("0123456789abcd "), "ids are short: {text}");
        assert!(
            text.contains("committed 0%") && !text.contains("-0%"),
            "an idle GPU commits 0%: {text}"
        );
        assert!(
            text.contains("5m") && text.contains("pod=cam-\"7\"") && text.contains("0=2G"),
            "{text}"
        );
        assert!(
            text.contains("GPU figures unavailable: NVML: GPU is lost"),
            "{text}"
        );

        let none = status(&cfg, Err("NVML: the NVIDIA driver is not loaded".into())).unwrap();
        assert!(
            none.gpus
                .iter()
                .all(|g| g.telemetry_error.as_deref()
                    == Some("NVML: the NVIDIA driver is not loaded"))
        );
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
