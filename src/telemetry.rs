//! What a GPU is doing, from NVML: memory, utilisation, temperature, power,
//! compute mode and the processes on it. For operators' commands only: NVML
//! start-up can take seconds without persistence mode, so nothing on the
//! create path calls it. NVML is loaded at run time (`libnvidia-ml.so.1`);
//! without it, or without a driver, every command still works and says why
//! the figures are missing.

use serde::Serialize;

use crate::ids::PciAddress;
use crate::inventory::{Gpu, Inventory};

/// One GPU's figures; a field NVML cannot give stays `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GpuTelemetry {
    pub memory_used_mib: Option<u64>,
    pub memory_total_mib: Option<u64>,
    pub utilization_pct: Option<u32>,
    pub memory_utilization_pct: Option<u32>,
    pub temperature_c: Option<u32>,
    pub power_w: Option<f64>,
    pub compute_mode: Option<String>,
    /// Compute processes on the GPU: pid and memory used (MiB).
    pub processes: Vec<(u32, Option<u64>)>,
}

/// Where GPU figures come from: NVML, or a script in tests.
pub trait Telemetry {
    /// The figures for the GPU with this UUID.
    fn gpu(&self, uuid: &str) -> Result<GpuTelemetry, String>;
    /// The GPUs as NVML enumerates them (index order).
    fn inventory(&self) -> Result<Vec<Gpu>, String>;
}

pub struct Nvml(nvml_wrapper::Nvml);

/// Opens NVML, or says in one line why it cannot be used.
pub fn open() -> Result<Nvml, String> {
    nvml_wrapper::Nvml::init().map(Nvml).map_err(|e| match e {
        nvml_wrapper::error::NvmlError::LibloadingError(_) => {
            "NVML is not installed (libnvidia-ml.so.1 not found): install the NVIDIA driver's NVML library".to_owned()
        }
        nvml_wrapper::error::NvmlError::DriverNotLoaded => "NVML: the NVIDIA driver is not loaded".to_owned(),
        other => format!("NVML could not start: {other}"),
    })
}

impl Nvml {
    /// Whether NVML reports GPU `uuid` lost (fallen off the bus, say): it
    /// may still be listed, but nothing can use it.
    pub fn lost(&self, uuid: &str) -> bool {
        use nvml_wrapper::error::NvmlError;
        match self.0.device_by_uuid(uuid) {
            Err(NvmlError::GpuLost) => true,
            Err(_) => false,
            Ok(d) => matches!(d.memory_info(), Err(NvmlError::GpuLost)),
        }
    }
}

fn mib(bytes: u64) -> u64 {
    bytes >> 20
}

impl Telemetry for Nvml {
    fn gpu(&self, uuid: &str) -> Result<GpuTelemetry, String> {
        let d = self
            .0
            .device_by_uuid(uuid)
            .map_err(|e| format!("NVML has no GPU {uuid}: {e}"))?;
        let mem = d.memory_info().ok();
        let util = d.utilization_rates().ok();
        let processes = d
            .running_compute_processes()
            .unwrap_or_default()
            .into_iter()
            .map(|p| {
                let used = match p.used_gpu_memory {
                    nvml_wrapper::enums::device::UsedGpuMemory::Used(b) => Some(mib(b)),
                    nvml_wrapper::enums::device::UsedGpuMemory::Unavailable => None,
                };
                (p.pid, used)
            })
            .collect();
        Ok(GpuTelemetry {
            memory_used_mib: mem.as_ref().map(|m| mib(m.used)),
            memory_total_mib: mem.as_ref().map(|m| mib(m.total)),
            utilization_pct: util.as_ref().map(|u| u.gpu),
            memory_utilization_pct: util.as_ref().map(|u| u.memory),
            temperature_c: d
                .temperature(nvml_wrapper::enum_wrappers::device::TemperatureSensor::Gpu)
                .ok(),
            power_w: d.power_usage().ok().map(|mw| f64::from(mw) / 1000.0),
            compute_mode: d.compute_mode().ok().map(|m| format!("{m:?}")),
            processes,
        })
    }

    fn inventory(&self) -> Result<Vec<Gpu>, String> {
        let n = self.0.device_count().map_err(|e| format!("NVML: {e}"))?;
        (0..n)
            .map(|i| {
                let d = self
                    .0
                    .device_by_index(i)
                    .map_err(|e| format!("NVML GPU {i}: {e}"))?;
                let pci = d.pci_info().map_err(|e| format!("NVML GPU {i}: {e}"))?;
                let bus = PciAddress::parse(&pci.bus_id).map_or(pci.bus_id, |a| a.to_string());
                Ok(Gpu {
                    index: i,
                    uuid: d.uuid().map_err(|e| format!("NVML GPU {i}: {e}"))?,
                    name: d.name().unwrap_or_default(),
                    pci_bus_id: bus,
                    minor: d.minor_number().map_err(|e| format!("NVML GPU {i}: {e}"))?,
                    memory_mib: d.memory_info().ok().map(|m| mib(m.total)),
                    compute_capability: d
                        .cuda_compute_capability()
                        .ok()
                        .map(|c| format!("{}.{}", c.major, c.minor)),
                })
            })
            .collect()
    }
}

/// NVML's list as an inventory (for `inventory --refresh`).
pub fn nvml_inventory(t: &dyn Telemetry) -> Result<Inventory, String> {
    Ok(Inventory {
        gpus: t.inventory()?,
        source: "NVML".into(),
    })
}
