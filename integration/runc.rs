//! End to end with the real runc on a simulated node, through
//! gpushare-runtime. Root; see common/mod.rs for what it needs.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

#[test]
fn simulate_makes_real_device_nodes_and_is_idempotent() {
    let node = Node::new("sim");
    let dev = node.dir.path().join("node/dev");
    let check = || {
        for (name, maj, min) in [
            ("nvidia0", 195, 0),
            ("nvidia1", 195, 1),
            ("nvidiactl", 195, 255),
        ] {
            let m = std::fs::metadata(dev.join(name)).unwrap();
            assert!(m.file_type().is_char_device(), "{name}");
            let rdev = m.rdev();
            assert_eq!(
                (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)),
                (maj, min),
                "{name}"
            );
        }
    };
    check();
    let inventory = std::fs::read(node.dir.path().join("node/inventory.toml")).unwrap();
    // A node with the wrong numbers is put right; a second run changes nothing else.
    std::fs::remove_file(dev.join("nvidia1")).unwrap();
    nix::sys::stat::mknod(
        &dev.join("nvidia1"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(195, 9),
    )
    .unwrap();
    let out = Command::new(CLI)
        .args(["simulate", "--gpus", "2", "--dir"])
        .arg(node.dir.path().join("node"))
        .output()
        .unwrap();
    assert!(out.status.success());
    check();
    assert_eq!(
        std::fs::read(node.dir.path().join("node/inventory.toml")).unwrap(),
        inventory
    );
}

#[test]
fn a_container_given_gpu_1_opens_only_gpu_1() {
    let node = Node::new("gpu1");
    let script = "stat -c 'node %t:%T' /dev/nvidia1; cat /dev/nvidia1; \
                  test -e /dev/nvidia0 && echo has-nvidia0 || echo no-nvidia0; \
                  mknod /tmp/sneaky0 c 195 0 && cat /tmp/sneaky0; echo \"env $NVIDIA_VISIBLE_DEVICES\"";
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=1"], script);
    let out = node.run(&b, &node.id(0));
    let t = text(&out);
    assert!(t.contains("node c3:1"), "/dev/nvidia1 is 195:1: {t}");
    assert!(
        t.contains("can't open '/dev/nvidia1': No such device or address"),
        "the cgroup lets it open its GPU (ENXIO: no driver): {t}"
    );
    assert!(t.contains("no-nvidia0"), "no node for the other GPU: {t}");
    assert!(
        t.contains("can't open '/tmp/sneaky0': Operation not permitted"),
        "a hand-made 195:0 is denied: {t}"
    );
    assert!(
        t.contains("env GPU-4a1c9d21-5a7e-4d00-8000-000000000001"),
        "{t}"
    );
    assert!(node.ledger().is_empty(), "poststop released the GPU");
}

#[test]
fn a_container_without_the_variable_is_untouched() {
    let node = Node::new("plain");
    let b = node.bundle("b", &[], "ls /dev; mknod /tmp/n0 c 195 0 && cat /tmp/n0");
    let before = std::fs::read(b.join("config.json")).unwrap();
    let out = node.run(&b, &node.id(0));
    let t = text(&out);
    assert!(!t.contains("nvidia"), "{t}");
    assert!(
        t.contains("Operation not permitted"),
        "no GPU access at all: {t}"
    );
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        before,
        "spec unchanged"
    );
    assert!(node.ledger().is_empty());
}

#[test]
fn a_refused_container_leaves_nothing_behind() {
    let node = Node::new("refused");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0,1"], "sleep 100");
    let before = std::fs::read(b.join("config.json")).unwrap();
    let id = node.id(0);
    let out = node.create(&b, &id);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("policy.max_gpus_per_container"),
        "{}",
        text(&out)
    );
    assert!(!node.runc_knows(&id), "no container");
    assert!(node.ledger().is_empty(), "no ledger entry");
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        before,
        "config.json unchanged"
    );
}

#[test]
fn twenty_concurrent_creates_with_all_split_ten_ten_and_deletes_empty_the_ledger() {
    let node = Node::new("storm");
    // A created container keeps the stdio it was given, so each create
    // writes to a file: a pipe would never reach EOF.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let b = node.bundle(
                &format!("b{i}"),
                &["NVIDIA_VISIBLE_DEVICES=all"],
                "sleep 1000",
            );
            let log = std::fs::File::create(b.join("create.log")).unwrap();
            let child = node
                .runtime()
                .args(["create", "--bundle"])
                .arg(&b)
                .arg(node.id(i))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            (b, child)
        })
        .collect();
    for (b, mut c) in children {
        let status = c.wait().unwrap();
        let log = std::fs::read_to_string(b.join("create.log")).unwrap();
        assert!(status.success(), "{log}");
    }
    let ledger = node.ledger();
    assert_eq!(ledger.len(), 20, "{ledger:?}");
    let on = |g: u64| ledger.iter().filter(|c| c["gpu"] == g).count();
    assert_eq!((on(0), on(1)), (10, 10));
    assert!(
        ledger
            .iter()
            .all(|c| c["state"] == "running" && c["pid"].as_u64().is_some()),
        "every pid bound by the hook: {ledger:?}"
    );
    for i in 0..20 {
        let out = node
            .runtime()
            .args(["delete", "--force"])
            .arg(node.id(i))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
    assert!(node.ledger().is_empty(), "poststop released every entry");
}

#[test]
fn a_create_that_runc_fails_is_released_by_the_engines_delete() {
    let node = Node::new("failed");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"], "true");
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["root"]["path"] = json!("/nonexistent/rootfs");
    std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let id = node.id(0);
    let out = node.create(&b, &id);
    assert!(!out.status.success(), "runc refuses a missing rootfs");
    assert_eq!(node.ledger().len(), 1, "the shim had reserved the GPU");
    // runc answers that there is no such container; the GPU is free anyway.
    let _ = node
        .runtime()
        .args(["delete", "--force"])
        .arg(&id)
        .output()
        .unwrap();
    assert!(node.ledger().is_empty());
}
