//! The driver's user-space in GPU containers, end to end: Debian's real
//! libcuda, NVML and nvidia-smi (they load and answer "no device" / "driver
//! not loaded" without a GPU, which proves the real library ran) reach a
//! container through the shim and through the hook alone; a non-GPU
//! container gets none of them; `utility` gives NVML without libcuda; a
//! node without them still gives the GPU, with one warning; refused
//! capabilities leave nothing behind.
//!
//! Root; needs runc, busybox-static, gcc, libc6-dev and, from Debian's
//! non-free component, libcuda1, libnvidia-ml1 and nvidia-smi.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

/// What the container runs: the probe, nvidia-smi, and the mounts of the
/// driver files as the container sees them.
const PROBE: &str = "cuda-probe; echo probe-exit $?; nvidia-smi; echo smi-exit $?; \
    grep -E ' /usr/(lib/x86_64-linux-gnu|bin)/(libcuda|libnvidia|nvidia-)' /proc/self/mountinfo";

fn driver_node(tag: &str) -> Node {
    let node = Node::new(tag);
    require_driver_userspace();
    node
}

/// The mountinfo lines of the driver files (field 5 is the mount point,
/// field 6 the per-mount options).
fn driver_mounts(t: &str) -> Vec<(String, String)> {
    t.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() > 6 && f[4].starts_with("/usr/")).then(|| (f[4].to_owned(), f[5].to_owned()))
        })
        .collect()
}

/// The real libraries answered, nvidia-smi ran and said why it cannot
/// work, and every driver mount is read-only, nosuid, nodev.
fn assert_driver_answers(t: &str) {
    assert!(
        t.contains("libcuda: cuInit=100 (CUDA_ERROR_NO_DEVICE)"),
        "libcuda loaded and answered: {t}"
    );
    assert!(
        t.contains("nvml: nvmlInit_v2=9 (Driver Not Loaded)"),
        "NVML loaded and answered: {t}"
    );
    assert!(t.contains("probe-exit 0"), "{t}");
    assert!(
        t.contains("couldn't communicate with the NVIDIA driver") && t.contains("smi-exit 9"),
        "nvidia-smi ran: {t}"
    );
    let mounts = driver_mounts(t);
    for want in [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/bin/nvidia-smi",
    ] {
        assert!(
            mounts.iter().any(|(m, _)| m == want),
            "{want} mounted: {mounts:?}"
        );
    }
    for (m, opts) in &mounts {
        let o: Vec<&str> = opts.split(',').collect();
        assert!(
            o.contains(&"ro") && o.contains(&"nosuid") && o.contains(&"nodev"),
            "{m} is mounted {opts}"
        );
    }
}

#[test]
fn the_shim_gives_a_gpu_container_the_drivers_libcuda_nvml_and_nvidia_smi() {
    let node = driver_node("drv-shim");
    let b = node.bundle_on(
        &node.probe_rootfs("gpu"),
        "gpu",
        &["NVIDIA_VISIBLE_DEVICES=0"],
        PROBE,
    );
    let out = node.run(&b, &node.id(0));
    assert_driver_answers(&text(&out));
    // The spec got plain mounts and no hook at all (the shim binds the pid
    // itself; runc spec makes none).
    let spec: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    assert!(
        spec.get("hooks")
            .is_none_or(|h| h.as_object().is_none_or(|o| o.is_empty())),
        "no hook: {}",
        spec["hooks"]
    );
    let driver: Vec<&Value> = spec["mounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| {
            m["destination"].as_str().unwrap().contains("nvidia")
                || m["destination"].as_str().unwrap().contains("libcuda")
        })
        .collect();
    assert!(driver.len() >= 4, "{driver:?}");
    for m in driver {
        assert_eq!(
            m["options"],
            serde_json::json!(["bind", "ro", "nosuid", "nodev"]),
            "{m}"
        );
    }
    assert!(node.ledger().is_empty(), "released");
    // What the operator sees of it.
    let inv = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .arg("inventory")
        .output()
        .unwrap();
    let t = text(&inv);
    assert!(inv.status.success(), "{t}");
    let compute = t
        .lines()
        .find(|l| l.trim_start().starts_with("compute"))
        .unwrap_or("");
    let utility = t
        .lines()
        .find(|l| l.trim_start().starts_with("utility"))
        .unwrap_or("");
    assert!(compute.contains("libcuda.so.1"), "{t}");
    assert!(
        utility.contains("libnvidia-ml.so.1") && utility.contains("nvidia-smi"),
        "{t}"
    );
}

#[test]
fn a_non_gpu_container_gets_none_of_it_and_utility_gets_nvml_alone() {
    let node = driver_node("drv-caps");
    let b = node.bundle_on(&node.probe_rootfs("plain"), "plain", &[], PROBE);
    let before = std::fs::read(b.join("config.json")).unwrap();
    let t = text(&node.run(&b, &node.id(0)));
    assert!(t.contains("libcuda: dlopen failed"), "{t}");
    assert!(t.contains("nvml: dlopen failed"), "{t}");
    assert!(t.contains("smi-exit 127"), "no nvidia-smi: {t}");
    assert!(driver_mounts(&t).is_empty(), "{t}");
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        before,
        "spec untouched"
    );

    let b = node.bundle_on(
        &node.probe_rootfs("utility"),
        "utility",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "NVIDIA_DRIVER_CAPABILITIES=utility",
        ],
        PROBE,
    );
    let t = text(&node.run(&b, &node.id(1)));
    assert!(t.contains("libcuda: dlopen failed"), "no libcuda: {t}");
    assert!(t.contains("nvml: nvmlInit_v2=9 (Driver Not Loaded)"), "{t}");
    assert!(
        t.contains("couldn't communicate with the NVIDIA driver"),
        "{t}"
    );

    let b = node.bundle_on(
        &node.probe_rootfs("compute"),
        "compute",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "NVIDIA_DRIVER_CAPABILITIES=compute",
        ],
        PROBE,
    );
    let t = text(&node.run(&b, &node.id(2)));
    assert!(t.contains("libcuda: cuInit=100"), "{t}");
    assert!(t.contains("nvml: dlopen failed"), "no NVML: {t}");
    assert!(t.contains("smi-exit 127"), "no nvidia-smi: {t}");
}

#[test]
fn the_hook_alone_gives_the_same_driver_files() {
    let node = driver_node("drv-hook");
    let b = node.bundle_on(
        &node.probe_rootfs("gpu"),
        "gpu",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        PROBE,
    );
    node.with_hook(&b);
    let out = node.runc_run(&b, &node.id(0));
    assert_driver_answers(&text(&out));
    assert!(node.ledger().is_empty(), "released at poststop");
}

#[test]
fn a_node_without_the_drivers_user_space_still_gives_the_gpu_and_warns_once() {
    let node = Node::new("drv-none");
    let empty = node.dir.path().join("no-driver");
    std::fs::create_dir_all(&empty).unwrap();
    let text_cfg = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text_cfg.replace(
            "[driver]\nroot = \"/\"",
            &format!("[driver]\nroot = {:?}", empty.display().to_string()),
        ),
    )
    .unwrap();
    let b = node.bundle("gpu1", &["NVIDIA_VISIBLE_DEVICES=1"], GPU1_SCRIPT);
    let explain = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["explain", "--bundle"])
        .arg(&b)
        .output()
        .unwrap();
    let e = text(&explain);
    assert!(explain.status.success(), "{e}");
    assert_eq!(
        e.matches("no NVIDIA driver libraries found").count(),
        1,
        "{e}"
    );
    let out = node.run(&b, &node.id(0));
    let t = text(&out);
    assert_sees_only_gpu_1(&t);
    assert_eq!(
        t.matches("gpushare: warning: no NVIDIA driver libraries found")
            .count(),
        1,
        "one warning: {t}"
    );
}

#[test]
fn refused_capabilities_leave_nothing_and_inject_none_leaves_the_driver_to_a_chained_runtime() {
    let node = driver_node("drv-refuse");
    for (caps, needle) in [
        (
            "graphics,compute",
            "does not inject the driver's graphics files",
        ),
        ("compute,gpu", "\"gpu\" is not a driver capability"),
    ] {
        let b = node.bundle(
            &format!("b-{}", caps.len()),
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("NVIDIA_DRIVER_CAPABILITIES={caps}"),
            ],
            "true",
        );
        let before = std::fs::read(b.join("config.json")).unwrap();
        let out = node.create(&b, &node.id(caps.len()));
        let t = text(&out);
        assert_eq!(out.status.code(), Some(2), "{t}");
        assert!(
            t.contains("NVIDIA_DRIVER_CAPABILITIES=") && t.contains(needle),
            "{t}"
        );
        assert_eq!(t.trim().lines().count(), 1, "one line: {t}");
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), before);
        assert!(!node.runc_knows(&node.id(caps.len())));
        assert!(node.ledger().is_empty());
    }
    // Chained: the driver is another runtime's job; graphics passes.
    let text_cfg = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text_cfg.replace(
            "[driver]\nroot = \"/\"",
            "[driver]\nroot = \"/\"\ninject = \"none\"",
        ),
    )
    .unwrap();
    let b = node.bundle_on(
        &node.probe_rootfs("chained"),
        "chained",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "NVIDIA_DRIVER_CAPABILITIES=graphics,compute",
        ],
        PROBE,
    );
    let t = text(&node.run(&b, &node.id(9)));
    assert!(t.contains("libcuda: dlopen failed"), "{t}");
    assert!(driver_mounts(&t).is_empty(), "{t}");
    assert!(Path::new(&b).join("config.json").exists());
}
