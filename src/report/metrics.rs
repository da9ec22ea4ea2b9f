//! `gpushare metrics`: the status as Prometheus gauges, encoded by
//! prometheus-client.

use super::status::{GpuStatus, Holder, Status};

type Labels = Vec<(&'static str, String)>;

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
pub fn metrics(doc: &Status) -> String {
    let gl =
        |g: &GpuStatus| -> Labels { vec![("gpu", g.index.to_string()), ("uuid", g.uuid.clone())] };
    let per_gpu = |figure: &dyn Fn(&GpuStatus) -> Option<f64>| -> Vec<(Labels, f64)> {
        doc.gpus
            .iter()
            .filter_map(|g| figure(g).map(|v| (gl(g), v)))
            .collect()
    };
    let containers: Vec<(Labels, &Holder)> = doc
        .gpus
        .iter()
        .flat_map(|g| {
            g.containers.iter().map(move |c| {
                let mut labels = gl(g);
                labels.push(("container", c.id.clone()));
                // One id under two runtime roots is two containers.
                labels.push(("root", c.root.clone()));
                labels.push(("state", c.state.to_owned()));
                // `container` is the engine's id; a Kubernetes container
                // name goes in `container_name`, so no label appears twice.
                for (k, v) in &c.names {
                    let label = match k.as_str() {
                        "pod" => "pod",
                        "namespace" => "namespace",
                        "name" => "name",
                        "container" => "container_name",
                        _ => continue,
                    };
                    labels.push((label, v.clone()));
                }
                (labels, c)
            })
        })
        .collect();
    let per_container = |figure: &dyn Fn(&Holder) -> Option<f64>| -> Vec<(Labels, f64)> {
        containers
            .iter()
            .filter_map(|(l, c)| figure(c).map(|v| (l.clone(), v)))
            .collect()
    };
    const MIB: f64 = 1048576.0;
    let family = |name, help, rows| Family { name, help, rows };
    let families = Families(vec![
        family(
            "gpu_memory_used_bytes",
            "GPU memory in use (NVML)",
            per_gpu(&|g| g.memory_used_mib.map(|m| m as f64 * MIB)),
        ),
        family(
            "gpu_memory_total_bytes",
            "GPU memory installed",
            per_gpu(&|g| g.memory_total_mib.map(|m| m as f64 * MIB)),
        ),
        family(
            "gpu_utilization_ratio",
            "Share of time a kernel ran (NVML), 0 to 1",
            per_gpu(&|g| g.utilization_pct.map(|p| f64::from(p) * 0.01)),
        ),
        family(
            "gpu_memory_utilization_ratio",
            "Share of time memory was read or written (NVML), 0 to 1",
            per_gpu(&|g| g.memory_utilization_pct.map(|p| f64::from(p) * 0.01)),
        ),
        family(
            "gpu_temperature_celsius",
            "GPU temperature (NVML)",
            per_gpu(&|g| g.temperature_c.map(f64::from)),
        ),
        family(
            "gpu_power_watts",
            "GPU power draw (NVML)",
            per_gpu(&|g| g.power_w),
        ),
        family(
            "gpu_committed_thread_percentage",
            "Sum of the MPS thread shares of the GPU's live containers",
            per_gpu(&|g| Some(g.committed_thread_percentage)),
        ),
        family(
            "gpu_mps_running",
            "1 when the GPU's MPS control daemon runs",
            per_gpu(&|g| Some(f64::from(u8::from(g.mps == "running")))),
        ),
        family(
            "gpu_containers",
            "Containers holding the GPU",
            per_gpu(&|g| Some(g.containers.len() as f64)),
        ),
        family(
            "gpu_telemetry_up",
            "1 when NVML answered for the GPU",
            per_gpu(&|g| Some(f64::from(u8::from(g.telemetry_error.is_none())))),
        ),
        family(
            "container_info",
            "A container holding a GPU; its names as labels",
            per_container(&|_| Some(1.0)),
        ),
        family(
            "container_thread_percentage",
            "The container's MPS thread share",
            per_container(&|c| c.thread_percentage),
        ),
        family(
            "container_age_seconds",
            "Seconds since the container was placed",
            per_container(&|c| Some(c.age_s as f64)),
        ),
    ]);
    let mut registry = prometheus_client::registry::Registry::with_prefix("gpushare");
    registry.register_collector(Box::new(families));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}
