//! The GPUs a node has. On the create path they come from the driver's
//! procfs or from an inventory file, never from NVML: NVML start-up can take
//! seconds without persistence mode, and every container start would pay it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{Config, InventorySource};
use crate::ids::PciAddress;

#[derive(Debug, Error)]
pub enum InventoryError {
    #[error("no NVIDIA driver on this node ({0} is missing): load the driver, or set devices.inventory = \"file:<path>\" in the config (`gpushare simulate` writes one)")]
    NoDriver(PathBuf),
    #[error(
        "cannot read {path}: {source}; check devices.inventory and devices.root in the config"
    )]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("inventory file {path} is invalid: {message}; see `gpushare inventory --help` for its format")]
    BadFile { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    BadProcfs { path: PathBuf, message: String },
    #[error("{0}")]
    Nvml(String),
    #[error("devices.inventory = \"nvml\" reads the cache {0}, which is missing: run `gpushare inventory --refresh` (NVML is never asked on the create path)")]
    NoNvmlCache(PathBuf),
    #[error("the inventory lists no GPU ({0}); a GPU container cannot be placed")]
    Empty(String),
}

impl InventoryError {
    /// A malformed file or an unusable setting is the operator's input to
    /// fix (exit 2); an unreadable file or a missing driver is a failure.
    pub fn is_refusal(&self) -> bool {
        matches!(self, InventoryError::BadFile { .. })
    }
}

/// One GPU as the node knows it. `minor` names its device node
/// `/dev/nvidia<minor>`; `index` is NVML's (and nvidia-smi's) numbering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub pci_bus_id: String,
    pub minor: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_capability: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    #[serde(default, rename = "gpu")]
    pub gpus: Vec<Gpu>,
    /// Where the list came from, for messages (not part of the file).
    #[serde(skip)]
    pub source: String,
}

impl Inventory {
    /// Loads the inventory named by the config.
    pub fn load(cfg: &Config) -> Result<Inventory, InventoryError> {
        let procfs = cfg.devices.root.join("proc/driver/nvidia/gpus");
        match &cfg.devices.inventory {
            InventorySource::File(p) => Self::from_file(p),
            InventorySource::Procfs => Self::from_procfs(&procfs),
            InventorySource::Nvml => {
                let cache = nvml_cache(cfg);
                if !cache.exists() {
                    return Err(InventoryError::NoNvmlCache(cache));
                }
                Self::from_file(&cache)
            }
            InventorySource::Auto => {
                if procfs.is_dir() {
                    Self::from_procfs(&procfs)
                } else {
                    Err(InventoryError::NoDriver(procfs))
                }
            }
        }
    }

    pub fn from_file(path: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let bad = |message: String| InventoryError::BadFile {
            path: path.to_owned(),
            message,
        };
        let mut inv: Inventory =
            toml::from_str(&text).map_err(|e| bad(e.message().replace('\n', " ")))?;
        inv.source = format!("file {}", path.display());
        inv.gpus.sort_by_key(|g| g.index);
        inv.validate().map_err(bad)?;
        Ok(inv)
    }

    /// Reads `<dir>/<pci-bus-id>/information` for every GPU the driver
    /// knows. Indices follow PCI bus id order, which is how NVML numbers
    /// GPUs (its default enumeration), so index N here is nvidia-smi's N.
    pub fn from_procfs(dir: &Path) -> Result<Inventory, InventoryError> {
        let read_err = |path: &Path, source| InventoryError::Read {
            path: path.to_owned(),
            source,
        };
        let entries = std::fs::read_dir(dir).map_err(|e| read_err(dir, e))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| read_err(dir, e))?;
            let info = entry.path().join("information");
            let text = std::fs::read_to_string(&info).map_err(|e| read_err(&info, e))?;
            found.push(
                parse_information(&text).map_err(|message| InventoryError::BadProcfs {
                    path: info.clone(),
                    message,
                })?,
            );
        }
        found.sort_by_key(|(bus, _)| *bus);
        let gpus = found
            .into_iter()
            .enumerate()
            .map(|(i, (_, mut g))| {
                g.index = i as u32;
                g
            })
            .collect();
        let inv = Inventory {
            gpus,
            source: format!("procfs {}", dir.display()),
        };
        inv.validate()
            .map_err(|message| InventoryError::BadProcfs {
                path: dir.to_owned(),
                message,
            })?;
        Ok(inv)
    }

    fn validate(&self) -> Result<(), String> {
        for (i, g) in self.gpus.iter().enumerate() {
            if !g.uuid.starts_with("GPU-") || g.uuid.len() < 8 {
                return Err(format!(
                    "gpu {} has uuid {:?}, expected GPU-…",
                    g.index, g.uuid
                ));
            }
            if PciAddress::parse(&g.pci_bus_id).is_none() {
                return Err(format!(
                    "gpu {} has pci_bus_id {:?}, expected DDDDDDDD:BB:DD.F",
                    g.index, g.pci_bus_id
                ));
            }
            for other in &self.gpus[..i] {
                if other.index == g.index {
                    return Err(format!("index {} appears twice", g.index));
                }
                if other.uuid.eq_ignore_ascii_case(&g.uuid) {
                    return Err(format!("uuid {} appears twice", g.uuid));
                }
                if other.minor == g.minor {
                    return Err(format!("minor {} appears twice", g.minor));
                }
            }
        }
        Ok(())
    }

    pub fn by_uuid(&self, uuid: &str) -> Option<&Gpu> {
        self.gpus.iter().find(|g| g.uuid.eq_ignore_ascii_case(uuid))
    }

    /// "0 (GPU-4a1c…), 1 (GPU-…)": the list error messages show.
    pub fn describe(&self) -> String {
        if self.gpus.is_empty() {
            return format!("none ({})", self.source);
        }
        self.gpus
            .iter()
            .map(|g| format!("{} ({} {})", g.index, g.uuid, g.pci_bus_id))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Writes this list as the inventory file at `path`, atomically.
    pub fn write_cache(&self, path: &Path) -> Result<(), InventoryError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| InventoryError::Read {
                path: dir.to_owned(),
                source,
            })?;
        }
        let text = format!(
            "# Written by `gpushare inventory --refresh` from NVML.\n{}",
            self.to_toml()
        );
        crate::sys::write_atomic(path, text.as_bytes(), 0o644).map_err(|source| {
            InventoryError::Read {
                path: path.to_owned(),
                source,
            }
        })
    }

    /// The inventory file text (`[[gpu]]` tables) for this list.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("inventory serialises")
    }
}

/// Where `inventory --refresh` keeps NVML's list for the `nvml` source.
pub fn nvml_cache(cfg: &Config) -> PathBuf {
    cfg.runtime.state_dir.join("inventory.toml")
}

/// Parses one procfs `information` file into (bus sort key, GPU).
fn parse_information(text: &str) -> Result<(PciAddress, Gpu), String> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim_start().strip_prefix(':'))
            .map(|v| v.trim().to_owned())
    };
    let model = field("Model").ok_or("no Model line")?;
    let uuid = field("GPU UUID").ok_or("no GPU UUID line")?;
    let bus = field("Bus Location").ok_or("no Bus Location line")?;
    let minor = field("Device Minor").ok_or("no Device Minor line")?;
    if !uuid.starts_with("GPU-") || uuid.contains('?') {
        // Ref: the driver prints question marks until the GPU has been
        // initialised once; persistence mode keeps it initialised.
        return Err(format!(
            "GPU at {bus} shows no UUID yet ({uuid:?}): enable persistence mode (nvidia-smi -pm 1) or use devices.inventory = \"file:<path>\""
        ));
    }
    let key = PciAddress::parse(&bus).ok_or_else(|| format!("bad Bus Location {bus:?}"))?;
    let minor: u32 = minor
        .parse()
        .map_err(|_| format!("bad Device Minor {minor:?}"))?;
    Ok((
        key,
        Gpu {
            index: 0,
            uuid,
            name: model,
            pci_bus_id: key.to_string(),
            minor,
            memory_mib: None,
            compute_capability: None,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T4_INFO: &str = "Model: \t\t Tesla T4\nIRQ:   \t\t 40\nGPU UUID: \t GPU-8f6f2e7a-1b2c-3d4e-5f60-718293a4b5c6\nVideo BIOS: \t 90.04.38.00.03\nBus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\nBus Location: \t 0000:00:1e.0\nDevice Minor: \t 3\nGPU Excluded:\t No\n";

    #[test]
    fn procfs_information_is_parsed() {
        let (key, g) = parse_information(T4_INFO).unwrap();
        assert_eq!(key.to_string(), "00000000:00:1E.0");
        assert_eq!(g.name, "Tesla T4");
        assert_eq!(g.uuid, "GPU-8f6f2e7a-1b2c-3d4e-5f60-718293a4b5c6");
        assert_eq!(g.pci_bus_id, "00000000:00:1E.0");
        assert_eq!(g.minor, 3);
    }

    #[test]
    fn procfs_indices_follow_pci_order_not_minor_or_readdir() {
        let dir = tempfile::tempdir().unwrap();
        // Minors deliberately disagree with bus order.
        for (bus, minor, n) in [("0000:af:00.0", 0, 'a'), ("0000:3b:00.0", 1, 'b')] {
            let d = dir.path().join(bus);
            std::fs::create_dir(&d).unwrap();
            let text = T4_INFO
                .replace("0000:00:1e.0", bus)
                .replace("Device Minor: \t 3", &format!("Device Minor: \t {minor}"))
                .replace("GPU-8f6f2e7a", &format!("GPU-8f6f2e7{n}"));
            std::fs::write(d.join("information"), text).unwrap();
        }
        let inv = Inventory::from_procfs(dir.path()).unwrap();
        assert_eq!(inv.gpus.len(), 2);
        assert_eq!(inv.gpus[0].pci_bus_id, "00000000:3B:00.0");
        assert_eq!(inv.gpus[0].index, 0);
        assert_eq!(inv.gpus[0].minor, 1);
        assert_eq!(inv.gpus[1].minor, 0);
    }

    #[test]
    fn uninitialised_uuid_is_a_clear_error() {
        let text = T4_INFO.replace(
            "GPU-8f6f2e7a-1b2c-3d4e-5f60-718293a4b5c6",
            "GPU-????????-????-????-????-????????????",
        );
        let err = parse_information(&text).unwrap_err();
        assert!(err.contains("persistence mode"), "{err}");
    }

    #[test]
    fn inventory_file_round_trips_and_is_strict() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.toml");
        let inv = Inventory {
            gpus: vec![Gpu {
                index: 0,
                uuid: "GPU-4a1c9d2e-0000-4000-8000-000000000000".into(),
                name: "Tesla T4".into(),
                pci_bus_id: "00000000:00:1E.0".into(),
                minor: 0,
                memory_mib: Some(15360),
                compute_capability: Some("7.5".into()),
            }],
            source: String::new(),
        };
        std::fs::write(&p, inv.to_toml()).unwrap();
        let back = Inventory::from_file(&p).unwrap();
        assert_eq!(back.gpus, inv.gpus);

        std::fs::write(&p, inv.to_toml().replace("minor", "minr")).unwrap();
        let err = Inventory::from_file(&p).unwrap_err();
        assert!(err.is_refusal());
        assert!(err.to_string().contains("minr"), "{err}");

        let twice = format!(
            "{}{}",
            inv.to_toml(),
            inv.to_toml().replace("GPU-4a1c", "GPU-5a1c")
        );
        std::fs::write(&p, twice).unwrap();
        let err = Inventory::from_file(&p).unwrap_err().to_string();
        assert!(err.contains("index 0 appears twice"), "{err}");
    }

    #[test]
    fn auto_without_driver_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = Config::default();
        cfg.devices.root = dir.path().to_owned();
        let err = Inventory::load(&cfg).unwrap_err().to_string();
        assert!(
            err.contains("file:<path>") && err.contains("gpushare simulate"),
            "{err}"
        );
    }
}
