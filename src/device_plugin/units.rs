//! The device plugin's arithmetic, without gRPC: a GPU advertised as
//! `units_per_gpu` device ids `<uuid>::<n>`, the preferred allocation that
//! keeps a container on one GPU (the best fit), and the allocation kubelet
//! made turned into what gpushare records and tells the container.

use std::collections::BTreeMap;

use crate::ledger::Allocation;

/// The separator between a GPU's UUID and a unit's number in a device id.
const SEP: &str = "::";

/// Unit `n` of GPU `uuid`.
pub fn device_id(uuid: &str, n: u32) -> String {
    format!("{uuid}{SEP}{n}")
}

/// The GPU and unit a device id names; `None` for an id gpushare never
/// made.
pub fn parse_device_id(id: &str) -> Option<(&str, u32)> {
    let (uuid, n) = id.rsplit_once(SEP)?;
    if uuid.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((uuid, n.parse().ok()?))
}

/// The device ids of `ids`, grouped by GPU (in order of the GPU's UUID),
/// ids that name no GPU of gpushare's left out.
fn by_gpu(ids: &[String]) -> BTreeMap<&str, Vec<&String>> {
    let mut m: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for id in ids {
        if let Some((gpu, _)) = parse_device_id(id) {
            m.entry(gpu).or_default().push(id);
        }
    }
    m
}

/// The ids kubelet should allocate for one container: `size` units of one
/// GPU, the GPU whose free units fit best (the fewest that still hold
/// them, so large gaps stay whole for large requests), the `must_include`
/// ids first. Empty when no single GPU holds them (or `must_include` spans
/// GPUs): kubelet then chooses, and Allocate refuses what spans GPUs.
pub fn preferred(available: &[String], must_include: &[String], size: usize) -> Vec<String> {
    let must = by_gpu(must_include);
    if must.len() > 1 || size == 0 {
        return Vec::new();
    }
    let free = by_gpu(available);
    let fits = free
        .iter()
        .filter(|(gpu, ids)| ids.len() >= size && must.keys().next().is_none_or(|m| m == *gpu))
        .min_by_key(|(gpu, ids)| (ids.len(), **gpu));
    let Some((_, ids)) = fits else {
        return Vec::new();
    };
    let mut chosen: Vec<String> = must_include.to_vec();
    for id in ids {
        if chosen.len() >= size {
            break;
        }
        if !chosen.contains(id) {
            chosen.push((*id).clone());
        }
    }
    chosen
}

/// What kubelet allocated for one container, as gpushare records it; or
/// why it breaks the one-GPU-per-module rule (or names ids gpushare never
/// advertised), in one line for kubelet to show on the pod.
pub fn allocation(
    ids: &[String],
    resource: &str,
    units_per_gpu: u32,
    now: u64,
) -> Result<Allocation, String> {
    if ids.is_empty() {
        return Err(format!("kubelet asked to allocate no {resource} units"));
    }
    if let Some(bad) = ids.iter().find(|id| parse_device_id(id).is_none()) {
        return Err(format!(
            "device id {bad:?} is not one gpushare advertises for {resource} (<gpu-uuid>::<n>)"
        ));
    }
    let gpus = by_gpu(ids);
    if gpus.len() > 1 {
        let names: Vec<&str> = gpus.keys().copied().collect();
        return Err(format!(
            "{resource}: {} units were allocated from {} GPUs ({}), but a container may use one GPU (the one-GPU-per-module rule); ask for at most {units_per_gpu} units, or free a GPU with enough units on this node",
            ids.len(),
            gpus.len(),
            names.join(", ")
        ));
    }
    let gpu = gpus.keys().next().expect("one GPU").to_string();
    let mut devices = ids.to_vec();
    devices.sort();
    devices.dedup();
    Ok(Allocation {
        key: devices[0].clone(),
        gpu,
        units: devices.len() as u32,
        units_per_gpu,
        devices,
        created: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(gpu: &str, range: std::ops::Range<u32>) -> Vec<String> {
        range.map(|n| device_id(gpu, n)).collect()
    }

    #[test]
    fn device_ids_round_trip_and_foreign_ids_are_none() {
        assert_eq!(
            parse_device_id(&device_id("GPU-1a", 42)),
            Some(("GPU-1a", 42))
        );
        for bad in ["GPU-1a", "::3", "GPU-1a::x", "GPU-1a::", "nvidia0"] {
            assert_eq!(parse_device_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_best_fitting_gpu_is_preferred() {
        // GPU a has 100 free, GPU b 35: 30 units go to b, 40 to a.
        let mut avail = ids("GPU-a", 0..100);
        avail.extend(ids("GPU-b", 65..100));
        let p = preferred(&avail, &[], 30);
        assert_eq!(p.len(), 30);
        assert!(p.iter().all(|id| id.starts_with("GPU-b::")), "{p:?}");
        let p = preferred(&avail, &[], 40);
        assert!(p.iter().all(|id| id.starts_with("GPU-a::")), "{p:?}");
        // Must-include ids come first and fix the GPU.
        let must = vec![device_id("GPU-a", 7)];
        let p = preferred(&avail, &must, 10);
        assert_eq!(p[0], must[0]);
        assert!(p.iter().all(|id| id.starts_with("GPU-a::")), "{p:?}");
    }

    #[test]
    fn fragmented_units_that_no_gpu_holds_get_no_preference() {
        // 60 free units in all, but 30 + 30: 50 fit on neither.
        let mut avail = ids("GPU-a", 70..100);
        avail.extend(ids("GPU-b", 70..100));
        assert!(preferred(&avail, &[], 50).is_empty());
        assert_eq!(preferred(&avail, &[], 30).len(), 30);
    }

    #[test]
    fn an_allocation_spanning_gpus_is_refused_naming_the_rule() {
        let mut both = ids("GPU-a", 0..20);
        both.extend(ids("GPU-b", 0..20));
        let e = allocation(&both, "gpushare.io/gpu-percent", 100, 1).unwrap_err();
        assert!(
            e.contains("one-GPU-per-module rule") && e.contains("2 GPUs") && !e.contains('\n'),
            "{e}"
        );
        let a = allocation(&ids("GPU-a", 10..40), "r/x", 100, 5).unwrap();
        assert_eq!(
            (a.gpu.as_str(), a.units, a.percentage()),
            ("GPU-a", 30, 30.0)
        );
        assert_eq!(a.key, device_id("GPU-a", 10));
        let a = allocation(&ids("GPU-a", 0..3), "r/x", 20, 5).unwrap();
        assert_eq!(a.percentage(), 15.0);
        assert!(allocation(&["nvidia0".into()], "r/x", 100, 1).is_err());
    }
}
