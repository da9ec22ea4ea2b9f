//! CDI (the Container Device Interface): a spec of kind `gpushare.io/gpu`
//! with one device per GPU by index and by UUID, and `all`, for engines
//! that name devices (`docker run --device gpushare.io/gpu=0`, podman
//! `--device`, containerd's CRI). Each device's edits are the variable that
//! names the GPU and gpushare's hook, which does the rest on the live
//! container as in hook mode, so no runtime is replaced and the workload
//! sets no variable. The hook's arguments name the device, so a container
//! given two of them is seen asking for both (the engine keeps only the last
//! device's variable) and refused like two GPUs in `NVIDIA_VISIBLE_DEVICES`.
//!
//! Ref: CDI spec (github.com/cncf-tags/container-device-interface,
//! SPEC.md): `cdiVersion`, `kind`, `devices[].name`,
//! `devices[].containerEdits.{env,hooks}`; a hook is `{hookName, path,
//! args, env}`; spec files are read from `/etc/cdi` and `/var/run/cdi`, as
//! JSON or YAML (a JSON document is YAML).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use thiserror::Error;

use crate::bundle::CDI_DEVICE_ARG;
use crate::inventory::Inventory;
use crate::request::VISIBLE_DEVICES;

/// The kind every device of gpushare's spec has.
pub const KIND: &str = "gpushare.io/gpu";

/// The CDI version whose features the spec uses (env and hooks), the one
/// the engines of Debian 12 and 13 all read.
const CDI_VERSION: &str = "0.5.0";

#[derive(Debug, Error)]
pub enum CdiError {
    #[error(transparent)]
    Io(#[from] crate::sys::IoError),
    #[error("{0} is missing beside the gpushare binary; install gpushare and gpushare-hook in one directory first")]
    NoHook(PathBuf),
}

impl CdiError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, CdiError::NoHook(_))
    }
}

/// The spec: a device per GPU index and per UUID, and `all`, each with the
/// variable and the hook (at createRuntime to place, at poststop to
/// release) that carries `GPUSHARE_CONFIG` when `config` is given.
pub fn spec(inv: &Inventory, hook: &Path, config: Option<&Path>) -> Value {
    let edits = |gpu: &str| {
        let mut place = json!({
            "hookName": "createRuntime",
            "path": hook,
            "args": ["gpushare-hook", "createRuntime", CDI_DEVICE_ARG, gpu],
        });
        let mut release = json!({
            "hookName": "poststop",
            "path": hook,
            "args": ["gpushare-hook", "poststop"],
        });
        if let Some(c) = config {
            let env = json!([format!("{}={}", crate::config::ENV_VAR, c.display())]);
            place["env"] = env.clone();
            release["env"] = env;
        }
        json!({
            "env": [format!("{VISIBLE_DEVICES}={gpu}")],
            "hooks": [place, release],
        })
    };
    let mut devices = Vec::new();
    for g in &inv.gpus {
        devices.push(json!({"name": g.index.to_string(), "containerEdits": edits(&g.uuid)}));
        devices.push(json!({"name": g.uuid, "containerEdits": edits(&g.uuid)}));
    }
    devices.push(json!({"name": "all", "containerEdits": edits("all")}));
    json!({
        "cdiVersion": CDI_VERSION,
        "kind": KIND,
        "devices": devices,
    })
}

/// The config the hook must be told of: the one in force, unless it is
/// the default the hook reads anyway.
pub fn config_for_hook(cfg: &crate::config::Config) -> Option<&Path> {
    cfg.source
        .as_deref()
        .filter(|p| *p != Path::new(crate::config::DEFAULT_PATH))
}

/// Writes the spec for `inv` to `path` atomically (a reader sees the old
/// spec or the new one, never half of one), 0644, making its directory.
pub fn write(
    path: &Path,
    inv: &Inventory,
    hook: &Path,
    config: Option<&Path>,
) -> Result<(), CdiError> {
    if !hook.is_file() {
        return Err(CdiError::NoHook(hook.to_owned()));
    }
    let mut text = serde_json::to_string_pretty(&spec(inv, hook, config)).expect("serialises");
    text.push('\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(crate::sys::io("create the directory of", path))?;
    }
    crate::sys::write_atomic(path, text.as_bytes(), 0o644)
        .map_err(crate::sys::io("write", path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::Gpu;

    fn inv() -> Inventory {
        Inventory {
            gpus: (0..2)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{i}a"),
                    name: "Tesla T4".into(),
                    pci_bus_id: format!("00000000:{i:02X}:00.0"),
                    minor: i,
                    memory_mib: None,
                    compute_capability: None,
                })
                .collect(),
            ..Inventory::default()
        }
    }

    #[test]
    fn a_device_per_index_and_uuid_and_all_each_with_the_hook() {
        let s = spec(
            &inv(),
            Path::new("/usr/bin/gpushare-hook"),
            Some(Path::new("/etc/g.toml")),
        );
        assert_eq!(s["kind"], KIND);
        let names: Vec<&str> = s["devices"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["0", "GPU-0a", "1", "GPU-1a", "all"]);
        let one = &s["devices"][2]["containerEdits"];
        assert_eq!(one["env"], json!(["NVIDIA_VISIBLE_DEVICES=GPU-1a"]));
        assert_eq!(
            one["hooks"][0],
            json!({"hookName": "createRuntime", "path": "/usr/bin/gpushare-hook",
                   "args": ["gpushare-hook", "createRuntime", "--cdi-device", "GPU-1a"],
                   "env": ["GPUSHARE_CONFIG=/etc/g.toml"]})
        );
        assert_eq!(one["hooks"][1]["hookName"], "poststop");
        assert_eq!(
            s["devices"][4]["containerEdits"]["env"],
            json!(["NVIDIA_VISIBLE_DEVICES=all"])
        );
    }

    #[test]
    fn written_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("gpushare-hook");
        let path = dir.path().join("cdi/gpushare.yaml");
        let e = write(&path, &inv(), &hook, None).unwrap_err();
        assert!(e.is_refusal(), "{e}");
        assert!(!path.exists());
        std::fs::write(&hook, "").unwrap();
        write(&path, &inv(), &hook, None).unwrap();
        let back: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, spec(&inv(), &hook, None));
        assert!(back["devices"][0]["containerEdits"]["hooks"][0]
            .get("env")
            .is_none());
    }
}
