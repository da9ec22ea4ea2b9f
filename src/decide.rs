//! The decision: which GPU(s) a container gets, or why it gets none. Pure:
//! it reads a request, the inventory, the current load and the policy, and
//! touches nothing, so the shim, the hook and `explain` agree by
//! construction.

use thiserror::Error;

use crate::config::{AllPolicy, Policy, Strictness};
use crate::inventory::{Gpu, Inventory};
use crate::ledger::Load;
use crate::request::{
    DeviceId, Devices, Percentage, Request, PINNED_MEM_LIMIT, THREAD_PERCENTAGE, VISIBLE_DEVICES,
};
use crate::text::shown;

/// The share of an MPS client that asks for none where no default is set.
pub const FULL_SHARE: f64 = 100.0;

/// A policy or resolution refusal: the container must not be created.
#[derive(Debug, Error, Clone, PartialEq)]
#[error("{0}")]
pub struct Refusal(pub String);

impl Refusal {
    /// A policy refusal is always the request's to change.
    pub fn is_refusal(&self) -> bool {
        true
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Empty for `NVIDIA_VISIBLE_DEVICES=none`.
    pub gpus: Vec<Gpu>,
    pub thread_percentage: Option<Percentage>,
    /// Rendered for the container (device indices count its own GPUs).
    pub pinned_mem_limit: Option<String>,
    /// Every assigned GPU has an MPS daemon running: the container is made
    /// one of its clients.
    pub mps: bool,
    /// What the container gets that it may not expect (policy `warn`).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Not a GPU container: its spec is left exactly as it was.
    Untouched,
    Assign(Assignment),
}

pub fn decide(
    req: &Request,
    inv: &Inventory,
    load: &Load,
    policy: &Policy,
    config_name: &str,
) -> Result<Decision, Refusal> {
    let asked = req.thread_percentage.as_ref().map(|p| p.value);
    // The share a container would hold on `g`: only MPS clients hold one
    // (their own, else the policy's default, else the whole GPU), and only
    // their shares count against the budget.
    let share_on = |g: &Gpu| {
        load.mps_on(&g.uuid).then(|| {
            asked
                .or(policy.default_thread_percentage)
                .unwrap_or(FULL_SHARE)
        })
    };
    let fits = |g: &Gpu| match (policy.max_thread_percentage_per_gpu, share_on(g)) {
        (Some(budget), Some(p)) => load.of(&g.uuid).committed_percentage + p <= budget + 1e-9,
        _ => true,
    };
    let gpus: Vec<Gpu> = match &req.devices {
        Devices::NotGpu => return Ok(Decision::Untouched),
        Devices::None => Vec::new(),
        Devices::All => {
            let max = policy.max_gpus_per_container;
            if inv.gpus.is_empty() {
                return Err(Refusal(format!(
                    "{VISIBLE_DEVICES}=all: this node has no GPU ({}); run the container without {VISIBLE_DEVICES}",
                    inv.source
                )));
            }
            if inv.gpus.len() > max && policy.all == AllPolicy::Reject {
                return Err(Refusal(format!(
                    "{VISIBLE_DEVICES}=all would give {} GPUs but at most {max} per container is allowed and policy.all = \"reject\" in {config_name}: name one GPU (index or UUID) instead",
                    inv.gpus.len()
                )));
            }
            let mut candidates: Vec<&Gpu> = inv.gpus.iter().filter(|g| fits(g)).collect();
            // A container asking for a share goes where MPS can give it.
            if asked.is_some() && candidates.iter().any(|g| load.mps_on(&g.uuid)) {
                candidates.retain(|g| load.mps_on(&g.uuid));
            }
            if candidates.len() < inv.gpus.len().min(max) {
                return Err(Refusal(budget_message(
                    inv,
                    load,
                    policy,
                    asked,
                    config_name,
                )));
            }
            // Fewest holders first, then the least committed share, then
            // the lowest index, so placement is balanced and predictable.
            candidates.sort_by(|a, b| {
                let (la, lb) = (load.of(&a.uuid), load.of(&b.uuid));
                la.holders
                    .cmp(&lb.holders)
                    .then(la.committed_percentage.total_cmp(&lb.committed_percentage))
                    .then(a.index.cmp(&b.index))
            });
            candidates.truncate(max);
            candidates.sort_by_key(|g| g.index);
            candidates.into_iter().cloned().collect()
        }
        Devices::List(ids) => {
            let mut gpus: Vec<Gpu> = Vec::new();
            for id in ids {
                let g = resolve(id, inv)?;
                if !gpus.iter().any(|x| x.uuid == g.uuid) {
                    gpus.push(g.clone());
                }
            }
            let max = policy.max_gpus_per_container;
            if gpus.len() > max {
                let names: Vec<String> = gpus.iter().map(|g| g.index.to_string()).collect();
                return Err(Refusal(format!(
                    "{VISIBLE_DEVICES} asks for {} GPUs ({}) but a container may use at most {max} (policy.max_gpus_per_container in {config_name}): ask for one GPU, or raise the limit",
                    gpus.len(),
                    names.join(", ")
                )));
            }
            if !gpus.iter().all(fits) {
                return Err(Refusal(budget_message(
                    inv,
                    load,
                    policy,
                    asked,
                    config_name,
                )));
            }
            gpus
        }
    };
    let pinned_mem_limit = match &req.pinned_mem_limit {
        None => None,
        Some(_) if gpus.is_empty() => None,
        Some(limit) => {
            let mut parts = Vec::new();
            let entries: Vec<(u32, u64, String)> = if limit.bare {
                // A bare size means "on my GPU": every GPU the container has.
                let (_, bytes, text) = limit.entries[0].clone();
                (0..gpus.len() as u32)
                    .map(|d| (d, bytes, text.clone()))
                    .collect()
            } else {
                limit.entries.clone()
            };
            for (dev, bytes, text) in entries {
                let Some(g) = gpus.get(dev as usize) else {
                    return Err(Refusal(format!(
                        "{PINNED_MEM_LIMIT} names device {dev} but the container has {} GPU(s), numbered from 0 inside it: write 0=<size>, or just <size>",
                        gpus.len()
                    )));
                };
                if let Some(mib) = g.memory_mib {
                    if bytes > mib << 20 {
                        return Err(Refusal(format!(
                            "{PINNED_MEM_LIMIT}: {text} for device {dev} exceeds GPU {} ({}) memory of {mib} MiB: ask for less",
                            g.index, g.name
                        )));
                    }
                }
                parts.push(format!("{dev}={text}"));
            }
            Some(parts.join(","))
        }
    };
    let mps = !gpus.is_empty() && gpus.iter().all(|g| load.mps_on(&g.uuid));
    let mut warnings = Vec::new();
    if let (Some(p), false) = (&req.thread_percentage, mps) {
        if let Some(g) = gpus.iter().find(|g| !load.mps_on(&g.uuid)) {
            let what = format!(
                "{THREAD_PERCENTAGE}={} needs MPS on GPU {}, whose daemon is not running",
                p.text, g.index
            );
            match policy.percentage_without_mps {
                Strictness::Reject => {
                    return Err(Refusal(format!(
                        "{what}: run `gpushare mps start --gpu {}`, or drop the variable (policy.percentage_without_mps = \"warn\" in {config_name} lets it pass with a warning)",
                        g.index
                    )))
                }
                Strictness::Warn => warnings.push(format!("{what}: the share has no effect")),
            }
        }
    }
    // An MPS client's share is always explicit, so a default that a client
    // lowered through the daemon's socket changes nobody's share.
    let thread_percentage = if gpus.is_empty() {
        None
    } else if mps {
        let d = policy.default_thread_percentage.unwrap_or(FULL_SHARE);
        Some(req.thread_percentage.clone().unwrap_or(Percentage {
            text: d.to_string(),
            value: d,
        }))
    } else {
        req.thread_percentage.clone()
    };
    Ok(Decision::Assign(Assignment {
        gpus,
        thread_percentage,
        pinned_mem_limit,
        mps,
        warnings,
    }))
}

fn budget_message(
    inv: &Inventory,
    load: &Load,
    policy: &Policy,
    asked: Option<f64>,
    config_name: &str,
) -> String {
    let budget = policy.max_thread_percentage_per_gpu.unwrap_or(100.0);
    let committed: Vec<String> = inv
        .gpus
        .iter()
        .map(|g| format!("GPU {} {}%", g.index, load.of(&g.uuid).committed_percentage))
        .collect();
    let share = match (asked, policy.default_thread_percentage) {
        (Some(p), _) => format!("{THREAD_PERCENTAGE}={p}"),
        (None, Some(d)) => format!("the default share of {d}% (policy.default_thread_percentage)"),
        (None, None) => {
            format!("a whole-GPU share ({FULL_SHARE}%: the container sets no {THREAD_PERCENTAGE})")
        }
    };
    format!(
        "{share} does not fit the {budget}% per-GPU budget (policy.max_thread_percentage_per_gpu in {config_name}); committed now: {}: ask for less, or wait for a container to stop",
        committed.join(", ")
    )
}

/// The one GPU an operator names (index, UUID or its prefix, PCI bus id),
/// as `--gpu` takes it.
pub fn resolve_one<'a>(id: &str, inv: &'a Inventory) -> Result<&'a Gpu, Refusal> {
    match crate::request::parse_devices(id) {
        Ok(Devices::List(ids)) if ids.len() == 1 => resolve(&ids[0], inv),
        _ => Err(Refusal(format!(
            "--gpu {}: give one GPU as an index, UUID or PCI bus id; this node has GPUs {}",
            shown(id),
            inv.describe()
        ))),
    }
}

fn resolve<'a>(id: &DeviceId, inv: &'a Inventory) -> Result<&'a Gpu, Refusal> {
    let unknown = |what: String| {
        Refusal(format!(
            "{VISIBLE_DEVICES}: {what}; this node has GPUs {}",
            inv.describe()
        ))
    };
    match id {
        DeviceId::Index(i) => inv
            .gpus
            .iter()
            .find(|g| g.index == *i)
            .ok_or_else(|| unknown(format!("no GPU has index {i}"))),
        DeviceId::PciBusId(p) => inv
            .gpus
            .iter()
            .find(|g| g.pci_bus_id.eq_ignore_ascii_case(p))
            .ok_or_else(|| unknown(format!("no GPU has PCI bus id {p}"))),
        DeviceId::Uuid(u) => {
            if let Some(g) = inv.by_uuid(u) {
                return Ok(g);
            }
            let lower = u.to_ascii_lowercase();
            let hits: Vec<&Gpu> = inv
                .gpus
                .iter()
                .filter(|g| g.uuid.to_ascii_lowercase().starts_with(&lower))
                .collect();
            match hits.as_slice() {
                [one] => Ok(one),
                [] => Err(unknown(format!("no GPU has a UUID starting {}", shown(u)))),
                many => Err(Refusal(format!(
                    "{VISIBLE_DEVICES}: {} is a prefix of {} GPUs' UUIDs ({}); give more of the UUID",
                    shown(u),
                    many.len(),
                    many.iter().map(|g| g.uuid.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Strictness};

    fn inv(n: u32) -> Inventory {
        Inventory {
            gpus: (0..n)
                .map(|i| Gpu {
                    index: i,
                    uuid: format!("GPU-{i}a1c9d2e-0000-4000-8000-00000000000{i}"),
                    name: "Tesla T4".into(),
                    pci_bus_id: format!("00000000:00:{:02X}.0", 0x1e + i),
                    minor: i,
                    memory_mib: Some(15360),
                    compute_capability: Some("7.5".into()),
                })
                .collect(),
            source: "test".into(),
        }
    }

    fn run(env: &[&str], load: &Load, policy: &Policy) -> Result<Decision, Refusal> {
        let req = Request::from_env(env.iter().copied()).unwrap();
        decide(&req, &inv(2), load, policy, "/etc/gpushare/config.toml")
    }

    fn assigned(d: Decision) -> Vec<u32> {
        match d {
            Decision::Assign(a) => a.gpus.iter().map(|g| g.index).collect(),
            Decision::Untouched => panic!("untouched"),
        }
    }

    fn policy() -> Policy {
        Config::default().policy
    }

    #[test]
    fn ids_resolve_to_one_gpu() {
        let l = Load::default();
        let p = policy();
        for v in [
            "1",
            "GPU-1a1c9d2e-0000-4000-8000-000000000001",
            "gpu-1A1C",
            "0000:00:1f.0",
            "1,1",
            "1, GPU-1a1c",
        ] {
            let env = format!("NVIDIA_VISIBLE_DEVICES={v}");
            assert_eq!(assigned(run(&[&env], &l, &p).unwrap()), vec![1], "{v}");
        }
        assert_eq!(run(&["PATH=/bin"], &l, &p).unwrap(), Decision::Untouched);
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=none"], &l, &p).unwrap()),
            Vec::<u32>::new()
        );
    }

    #[test]
    fn unknown_and_ambiguous_ids_are_refused_with_the_gpu_list() {
        let l = Load::default();
        let p = policy();
        let e = run(&["NVIDIA_VISIBLE_DEVICES=9"], &l, &p).unwrap_err().0;
        assert!(
            e.contains("no GPU has index 9") && e.contains("GPU-0a1c") && e.contains("GPU-1a1c"),
            "{e}"
        );
        let e = run(&["NVIDIA_VISIBLE_DEVICES=GPU-ffff"], &l, &p)
            .unwrap_err()
            .0;
        assert!(e.contains("GPU-ffff"), "{e}");
        // Both UUIDs end "…000000000000X"; "GPU-" plus nothing distinctive
        // cannot be told apart only if more than one matches.
        let mut i = inv(2);
        i.gpus[1].uuid = "GPU-0a1c9d2e-ffff-4000-8000-000000000001".into();
        let req = Request::from_env(["NVIDIA_VISIBLE_DEVICES=GPU-0a1c"]).unwrap();
        let e = decide(&req, &i, &l, &p, "c").unwrap_err().0;
        assert!(e.contains("prefix of 2 GPUs"), "{e}");
        let e = run(&["NVIDIA_VISIBLE_DEVICES=00:05.0"], &l, &p)
            .unwrap_err()
            .0;
        assert!(e.contains("PCI bus id 00000000:00:05.0"), "{e}");
    }

    #[test]
    fn the_one_gpu_rule() {
        let l = Load::default();
        let mut p = policy();
        let e = run(&["NVIDIA_VISIBLE_DEVICES=0,1"], &l, &p).unwrap_err().0;
        assert!(
            e.contains("at most 1") && e.contains("policy.max_gpus_per_container"),
            "{e}"
        );
        p.max_gpus_per_container = 2;
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=1,0"], &l, &p).unwrap()),
            vec![1, 0]
        );
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=all"], &l, &p).unwrap()),
            vec![0, 1]
        );
    }

    #[test]
    fn all_goes_to_the_least_loaded() {
        let p = policy();
        let mut l = Load::default();
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=all"], &l, &p).unwrap()),
            vec![0]
        );
        l.add("GPU-0a1c9d2e-0000-4000-8000-000000000000", None);
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=all"], &l, &p).unwrap()),
            vec![1]
        );
        l.add("GPU-1a1c9d2e-0000-4000-8000-000000000001", Some(30.0));
        // Equal holders: the lower committed share wins.
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=all"], &l, &p).unwrap()),
            vec![0]
        );
        let mut reject = policy();
        reject.all = AllPolicy::Reject;
        let e = run(&["NVIDIA_VISIBLE_DEVICES=all"], &l, &reject)
            .unwrap_err()
            .0;
        assert!(e.contains("policy.all"), "{e}");
        let e = decide(
            &Request::from_env(["NVIDIA_VISIBLE_DEVICES=all"]).unwrap(),
            &inv(0),
            &l,
            &p,
            "c",
        )
        .unwrap_err();
        assert!(e.0.contains("no GPU"), "{e}");
    }

    #[test]
    fn the_percentage_budget() {
        let mut p = policy();
        p.max_thread_percentage_per_gpu = Some(100.0);
        let mut l = Load::default();
        l.set_mps("GPU-0a1c9d2e-0000-4000-8000-000000000000");
        l.set_mps("GPU-1a1c9d2e-0000-4000-8000-000000000001");
        l.add("GPU-0a1c9d2e-0000-4000-8000-000000000000", Some(80.0));
        let env = [
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20",
        ];
        assert_eq!(assigned(run(&env, &l, &p).unwrap()), vec![0]);
        let env = [
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20.5",
        ];
        let e = run(&env, &l, &p).unwrap_err().0;
        assert!(e.contains("budget") && e.contains("GPU 0 80%"), "{e}");
        // all skips a GPU the share does not fit on, whatever its holders.
        l.add("GPU-1a1c9d2e-0000-4000-8000-000000000001", Some(10.0));
        l.add("GPU-1a1c9d2e-0000-4000-8000-000000000001", Some(10.0));
        let env = [
            "NVIDIA_VISIBLE_DEVICES=all",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
        ];
        assert_eq!(assigned(run(&env, &l, &p).unwrap()), vec![1]);
        let env = [
            "NVIDIA_VISIBLE_DEVICES=all",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90",
        ];
        assert!(run(&env, &l, &p).is_err());
        // No budget configured: anything goes.
        let env = [
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90",
        ];
        assert!(run(&env, &l, &policy()).is_ok());
    }

    fn assignment(d: Decision) -> Assignment {
        match d {
            Decision::Assign(a) => a,
            Decision::Untouched => panic!("untouched"),
        }
    }

    #[test]
    fn a_share_needs_mps_on_the_gpu() {
        let mut l = Load::default();
        let mut p = policy();
        let env = [
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ];
        let e = run(&env, &l, &p).unwrap_err().0;
        assert!(
            e.contains("gpushare mps start --gpu 1") && e.contains("percentage_without_mps"),
            "{e}"
        );
        p.percentage_without_mps = Strictness::Warn;
        let a = assignment(run(&env, &l, &p).unwrap());
        assert!(!a.mps && a.warnings[0].contains("no effect"), "{a:?}");
        // A GPU without MPS is not an MPS client even without a share.
        let a = assignment(run(&["NVIDIA_VISIBLE_DEVICES=1"], &l, &policy()).unwrap());
        assert!(!a.mps && a.warnings.is_empty());
        l.set_mps("GPU-1a1c9d2e-0000-4000-8000-000000000001");
        let a = assignment(run(&env, &l, &policy()).unwrap());
        assert!(a.mps && a.warnings.is_empty());
        assert_eq!(a.thread_percentage.unwrap().value, 30.0);
    }

    #[test]
    fn the_default_share_applies_to_mps_clients_only() {
        let mut l = Load::default();
        let mut p = policy();
        p.default_thread_percentage = Some(25.0);
        let a = assignment(run(&["NVIDIA_VISIBLE_DEVICES=0"], &l, &p).unwrap());
        assert_eq!(a.thread_percentage, None, "no MPS on GPU 0");
        l.set_mps("GPU-0a1c9d2e-0000-4000-8000-000000000000");
        let a = assignment(run(&["NVIDIA_VISIBLE_DEVICES=0"], &l, &p).unwrap());
        assert_eq!(a.thread_percentage.unwrap().text, "25");
        let a = assignment(
            run(
                &[
                    "NVIDIA_VISIBLE_DEVICES=0",
                    "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=40",
                ],
                &l,
                &p,
            )
            .unwrap(),
        );
        assert_eq!(
            a.thread_percentage.unwrap().value,
            40.0,
            "its own share wins"
        );
    }

    #[test]
    fn all_with_a_share_goes_where_mps_runs() {
        let mut l = Load::default();
        l.set_mps("GPU-1a1c9d2e-0000-4000-8000-000000000001");
        l.add("GPU-1a1c9d2e-0000-4000-8000-000000000001", Some(10.0));
        let env = [
            "NVIDIA_VISIBLE_DEVICES=all",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ];
        assert_eq!(
            assigned(run(&env, &l, &policy()).unwrap()),
            vec![1],
            "GPU 0 is emptier but has no MPS"
        );
        assert_eq!(
            assigned(run(&["NVIDIA_VISIBLE_DEVICES=all"], &l, &policy()).unwrap()),
            vec![0]
        );
    }

    #[test]
    fn the_budget_counts_only_mps_clients() {
        let mut p = policy();
        p.max_thread_percentage_per_gpu = Some(50.0);
        p.percentage_without_mps = Strictness::Warn;
        let mut l = Load::default();
        // Without MPS a share is not held, so it is not held against the budget.
        let env = [
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=80",
        ];
        assert!(run(&env, &l, &p).is_ok());
        l.set_mps("GPU-0a1c9d2e-0000-4000-8000-000000000000");
        assert!(run(&env, &l, &p).unwrap_err().0.contains("budget"));
    }

    #[test]
    fn pinned_limits_are_checked_against_the_assignment() {
        let l = Load::default();
        let p = policy();
        let lim = |v: &str| {
            let env = [
                "NVIDIA_VISIBLE_DEVICES=1".to_string(),
                format!("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT={v}"),
            ];
            run(&[&env[0], &env[1]], &l, &p)
        };
        match lim("2G").unwrap() {
            Decision::Assign(a) => assert_eq!(a.pinned_mem_limit.as_deref(), Some("0=2G")),
            d => panic!("{d:?}"),
        }
        let e = lim("1=2G").unwrap_err().0;
        assert!(e.contains("device 1") && e.contains("0=<size>"), "{e}");
        let e = lim("9=1G").unwrap_err().0;
        assert!(e.contains("device 9"), "{e}");
        let e = lim("1T").unwrap_err().0;
        assert!(e.contains("15360 MiB"), "{e}");
    }
}
