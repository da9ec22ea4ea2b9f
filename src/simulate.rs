//! `gpushare simulate`: a node with N GPUs for demos and tests on machines
//! without one. The device nodes are real character devices (mknod, major
//! 195 as the driver uses), so a container's device cgroup is exercised for
//! real: opening an allowed node fails with ENXIO (no driver behind it), a
//! denied one with EPERM.

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::stat::{fchmodat, makedev, mknod, FchmodatFlags, Mode, SFlag};
use thiserror::Error;

use crate::inventory::{Gpu, Inventory};
use crate::sys::write_atomic;

/// Ref: the NVIDIA driver registers major 195: minor N is GPU N, 255 is
/// nvidiactl.
pub const NVIDIA_MAJOR: u64 = 195;
pub const NVIDIACTL_MINOR: u64 = 255;
/// nvidia-uvm gets a dynamic major on a real host; the simulation uses one
/// that no in-tree driver registers.
pub const SIM_UVM_MAJOR: u64 = 511;
pub const MAX_GPUS: u32 = 16;

#[derive(Debug, Error)]
pub enum SimulateError {
    #[error("--gpus {0} is out of range: give a number from 1 to {MAX_GPUS}")]
    Count(u32),
    #[error(
        "{0}; simulate makes device nodes and needs root (CAP_MKNOD) and a writable directory"
    )]
    Io(#[source] crate::sys::IoError),
    #[error("{0} exists and is not a character device; remove it or choose another --dir")]
    InTheWay(PathBuf),
}

impl SimulateError {
    /// A count out of range is the operator's to fix.
    pub fn is_refusal(&self) -> bool {
        matches!(self, SimulateError::Count(_))
    }
}

/// Memory (MiB) and compute capability of the models the simulation knows;
/// another name is simulated without them.
const MODELS: &[(&str, u64, &str)] = &[
    ("Tesla T4", 15360, "7.5"),
    ("NVIDIA A2", 15356, "8.6"),
    ("NVIDIA L4", 23034, "8.9"),
    ("NVIDIA A100-SXM4-40GB", 40960, "8.0"),
    ("NVIDIA H100 80GB HBM3", 81559, "9.0"),
];

pub struct Simulated {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub inventory: Inventory,
}

/// The GPUs a simulated node has: stable UUIDs and PCI ids, so that running
/// simulate again names the same GPUs.
pub fn simulated_gpus(count: u32, model: &str) -> Vec<Gpu> {
    let known = MODELS.iter().find(|(name, _, _)| *name == model);
    (0..count)
        .map(|i| Gpu {
            index: i,
            uuid: format!("GPU-{:08x}-5a7e-4d00-8000-{:012x}", 0x4a1c_9d20 + i, i),
            name: model.to_owned(),
            pci_bus_id: format!("00000000:{:02X}:00.0", 0x17 + i * 0x10),
            minor: i,
            memory_mib: known.map(|m| m.1),
            compute_capability: known.map(|m| m.2.to_owned()),
        })
        .collect()
}

pub fn simulate(count: u32, model: &str, dir: &Path) -> Result<Simulated, SimulateError> {
    if count == 0 || count > MAX_GPUS {
        return Err(SimulateError::Count(count));
    }
    let fresh = !dir.exists();
    let made = make(count, model, dir);
    if made.is_err() && fresh {
        // A failed first run (no CAP_MKNOD, say) leaves no half-made node.
        let _ = std::fs::remove_dir_all(dir);
    }
    made
}

fn make(count: u32, model: &str, dir: &Path) -> Result<Simulated, SimulateError> {
    let io = |action, path: &Path| {
        let path = path.to_owned();
        move |source| SimulateError::Io(crate::sys::io(action, &path)(source))
    };
    std::fs::create_dir_all(dir).map_err(io("create", dir))?;
    let dir = dir.canonicalize().map_err(io("resolve", dir))?;
    let dev = dir.join("dev");
    std::fs::create_dir_all(&dev).map_err(io("create", &dev))?;

    let mut nodes: Vec<(String, u64, u64)> = (0..count)
        .map(|i| (format!("nvidia{i}"), NVIDIA_MAJOR, u64::from(i)))
        .collect();
    nodes.push(("nvidiactl".into(), NVIDIA_MAJOR, NVIDIACTL_MINOR));
    nodes.push(("nvidia-uvm".into(), SIM_UVM_MAJOR, 0));
    nodes.push(("nvidia-uvm-tools".into(), SIM_UVM_MAJOR, 1));
    for (name, maj, min) in &nodes {
        ensure_node(&dev.join(name), *maj, *min)?;
    }
    // GPUs from an earlier, larger simulation are taken away again.
    for i in count..MAX_GPUS {
        let p = dev.join(format!("nvidia{i}"));
        if p.symlink_metadata()
            .is_ok_and(|m| m.file_type().is_char_device())
        {
            std::fs::remove_file(&p).map_err(io("remove", &p))?;
        }
    }

    let inventory = Inventory {
        gpus: simulated_gpus(count, model),
        source: String::new(),
    };
    let inv_path = dir.join("inventory.toml");
    let inv_text = format!(
        "# A simulated node written by `gpushare simulate`.\n{}",
        inventory.to_toml()
    );
    write_atomic(&inv_path, inv_text.as_bytes(), 0o644).map_err(io("write", &inv_path))?;

    let config = dir.join("config.toml");
    let text = format!(
        "# A simulated node written by `gpushare simulate`.\n\
         [runtime]\nstate_dir = {state:?}\n\n\
         [devices]\nroot = {root:?}\ninventory = {inv:?}\n\n\
         # The GPUs are simulated; the driver's user-space is the host's own\n\
         # (Debian: libcuda1, libnvidia-ml1, nvidia-smi), where installed.\n\
         [driver]\nroot = \"/\"\n\n\
         [mps]\nroot = {mps:?}\n",
        state = dir.join("state").display().to_string(),
        root = dir.display().to_string(),
        inv = format!("file:{}", inv_path.display()),
        mps = dir.join("mps").display().to_string(),
    );
    write_atomic(&config, text.as_bytes(), 0o644).map_err(io("write", &config))?;
    Ok(Simulated {
        dir,
        config,
        inventory,
    })
}

/// Makes `path` the character device `maj:min`, keeping a node that is
/// already right and replacing one with other numbers.
fn ensure_node(path: &Path, maj: u64, min: u64) -> Result<(), SimulateError> {
    let want = makedev(maj, min);
    if let Ok(meta) = path.symlink_metadata() {
        if !meta.file_type().is_char_device() {
            return Err(SimulateError::InTheWay(path.to_owned()));
        }
        if meta.rdev() == want && meta.mode() & 0o777 == 0o666 {
            return Ok(());
        }
        std::fs::remove_file(path)
            .map_err(|source| SimulateError::Io(crate::sys::io("replace", path)(source)))?;
    }
    // mknod's mode passes through the umask; the chmod makes it 0666 as
    // the driver's own nodes are.
    let mode = Mode::from_bits_truncate(0o666);
    mknod(path, SFlag::S_IFCHR, mode, want)
        .and_then(|()| fchmodat(None, path, mode, FchmodatFlags::FollowSymlink))
        .map_err(|e| SimulateError::Io(crate::sys::io("make device node", path)(e.into())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_gpus_are_stable_distinct_and_valid() {
        let a = simulated_gpus(4, "Tesla T4");
        assert_eq!(a, simulated_gpus(4, "Tesla T4"));
        let inv = Inventory {
            gpus: a.clone(),
            source: String::new(),
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("inv.toml");
        std::fs::write(&p, inv.to_toml()).unwrap();
        assert_eq!(Inventory::from_file(&p).unwrap().gpus, a);
        assert_eq!(a[0].memory_mib, Some(15360));
        assert_eq!(a[0].compute_capability.as_deref(), Some("7.5"));
        // Each UUID differs from the others in its first group, so a short
        // prefix names one GPU.
        assert_ne!(a[0].uuid[..12], a[1].uuid[..12]);
        assert_eq!(simulated_gpus(1, "Other")[0].memory_mib, None);
    }

    #[test]
    fn a_count_out_of_range_is_refused_before_anything_is_made() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("node");
        for n in [0, MAX_GPUS + 1] {
            let e = simulate(n, "Tesla T4", &target).err().unwrap();
            assert!(e.to_string().contains("--gpus"), "{e}");
        }
        assert!(!target.exists());
    }
}
