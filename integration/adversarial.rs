//! Hostile and malformed input through the shim and through the hook used
//! alone, on real runc: each case has its documented outcome and exit code,
//! a one-line message, and leaves no ledger entry, no container and an
//! unchanged config.json. Root; see common/mod.rs.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// GPU `i`'s UUID on the node, from `gpushare inventory`.
fn gpu_uuid(node: &Node, i: usize) -> String {
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["inventory", "--json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["gpus"][i]["uuid"].as_str().unwrap().to_owned()
}

/// (environment, refused?, a piece of the one-line message)
fn cases() -> Vec<(Vec<String>, bool, &'static str)> {
    let d = |v: &str| vec![format!("NVIDIA_VISIBLE_DEVICES={v}")];
    let with = |extra: &str| vec!["NVIDIA_VISIBLE_DEVICES=0".to_owned(), extra.to_owned()];
    vec![
        (d("0\u{0}1"), true, "is not a GPU index"),
        (d("0\n1"), true, "is not a GPU index"),
        (d(&"7".repeat(65536)), true, "65536 bytes"),
        (d("é"), true, "is not a GPU index"),
        (d("../0"), true, "is not a GPU index"),
        (d("GPU-"), true, "is not a GPU UUID"),
        (d("99"), true, "no GPU has index 99"),
        (
            vec![
                "NVIDIA_VISIBLE_DEVICES=0".into(),
                "NVIDIA_VISIBLE_DEVICES=99".into(),
            ],
            true,
            "no GPU has index 99",
        ),
        (d("0,0"), false, ""),
        (d(" 0 "), false, ""),
        (
            with("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=0"),
            true,
            "no GPU threads",
        ),
        (
            with("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=101"),
            true,
            "more than 100 percent",
        ),
        (
            with("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=-1"),
            true,
            "not a plain decimal",
        ),
        (
            with("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=1e3"),
            true,
            "not a plain decimal",
        ),
        (
            with("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=NaN"),
            true,
            "not a plain decimal",
        ),
        (
            with("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50.5"),
            true,
            "gpushare mps start --gpu 0",
        ),
        (
            with("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0="),
            true,
            "needs a unit",
        ),
        (
            with("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT==1G"),
            true,
            "is not a device index",
        ),
        (
            with("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=9=1G"),
            true,
            "names device 9",
        ),
        (
            with("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=1T"),
            true,
            "exceeds GPU 0",
        ),
    ]
}

fn check_refusal(
    node: &Node,
    name: &str,
    out: &std::process::Output,
    needle: &str,
    code: Option<i32>,
) {
    let t = text(out);
    assert!(!out.status.success(), "{name}: accepted: {t}");
    if let Some(c) = code {
        assert_eq!(out.status.code(), Some(c), "{name}: {t}");
    }
    let ours: Vec<&str> = t.lines().filter(|l| l.contains("gpushare")).collect();
    assert!(
        !ours.is_empty() && ours.iter().any(|l| l.contains(needle)),
        "{name}: {needle:?} not in {t}"
    );
    assert!(
        ours.iter().all(|l| l.len() < 2048),
        "{name}: one readable line"
    );
    assert!(node.ledger().is_empty(), "{name}: no ledger entry");
}

#[test]
fn the_shim_refuses_or_accepts_every_case_as_documented() {
    let node = Node::new("adv-shim");
    for (i, (env, refused, needle)) in cases().into_iter().enumerate() {
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let b = node.bundle(&format!("b{i}"), &env, "true");
        let before = std::fs::read(b.join("config.json")).unwrap();
        let id = node.id(i);
        let out = node.create(&b, &id);
        if refused {
            check_refusal(&node, &format!("case {i}"), &out, needle, Some(2));
            assert!(!node.runc_knows(&id), "case {i}: no container");
            assert_eq!(
                std::fs::read(b.join("config.json")).unwrap(),
                before,
                "case {i}: config.json unchanged"
            );
        } else {
            assert!(out.status.success(), "case {i}: {}", text(&out));
            let held = node.ledger();
            assert_eq!(held.len(), 1, "case {i}: one GPU held: {held:?}");
            assert_eq!(held[0]["gpu"], 0);
            node.delete(&id);
            assert!(node.ledger().is_empty());
        }
    }
}

#[test]
fn the_hook_alone_refuses_or_accepts_every_case_as_documented() {
    let node = Node::new("adv-hook");
    for (i, (env, refused, needle)) in cases().into_iter().enumerate() {
        let env: Vec<&str> = env.iter().map(String::as_str).collect();
        let b = node.bundle(&format!("b{i}"), &env, "true");
        node.with_hook(&b);
        let before = std::fs::read(b.join("config.json")).unwrap();
        let id = node.id(i);
        let out = node.runc_run(&b, &id);
        if env.iter().any(|e| e.contains('\0')) {
            // runc itself refuses a NUL in the environment before any hook
            // runs: the documented outcome under the hook alone.
            assert!(
                !out.status.success() && text(&out).contains("can't contain null"),
                "case {i}: {}",
                text(&out)
            );
            assert!(node.ledger().is_empty() && !node.runc_knows(&id));
        } else if refused {
            check_refusal(&node, &format!("case {i}"), &out, needle, None);
            assert!(!node.runc_knows(&id), "case {i}: no container");
        } else {
            assert!(out.status.success(), "case {i}: {}", text(&out));
            assert!(node.ledger().is_empty(), "case {i}: released at poststop");
        }
        assert_eq!(
            std::fs::read(b.join("config.json")).unwrap(),
            before,
            "case {i}: config.json unchanged"
        );
    }
}

#[test]
fn broken_and_hostile_bundles() {
    let node = Node::new("adv-bundle");
    // Missing and malformed config.json: a runtime failure (exit 1), named.
    let b = node.dir.path().join("missing");
    std::fs::create_dir(&b).unwrap();
    check_refusal(
        &node,
        "missing",
        &node.create(&b, &node.id(0)),
        "config.json",
        Some(1),
    );
    std::fs::write(b.join("config.json"), "{\"process\": {\"env\": [").unwrap();
    check_refusal(
        &node,
        "malformed",
        &node.create(&b, &node.id(1)),
        "not valid JSON (line 1",
        Some(1),
    );
    assert_eq!(
        std::fs::read_to_string(b.join("config.json")).unwrap(),
        "{\"process\": {\"env\": ["
    );
    // 50 MB: refused before it is parsed.
    let mut spec: Value = serde_json::from_slice(
        &std::fs::read(
            node.bundle("big", &["NVIDIA_VISIBLE_DEVICES=0"], "true")
                .join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    spec["annotations"] = json!({"padding": "x".repeat(50 << 20)});
    let big = node.dir.path().join("big");
    std::fs::write(big.join("config.json"), spec.to_string()).unwrap();
    check_refusal(
        &node,
        "50 MB",
        &node.create(&big, &node.id(2)),
        "at most 16 MiB",
        Some(2),
    );
    // A config.json that is a symlink out of the bundle: read through, but
    // the rewrite replaces the link inside the bundle; the target is never
    // written.
    let outside = node.dir.path().join("outside.json");
    let b = node.bundle("linked", &["NVIDIA_VISIBLE_DEVICES=1"], "true");
    std::fs::rename(b.join("config.json"), &outside).unwrap();
    std::os::unix::fs::symlink(&outside, b.join("config.json")).unwrap();
    let target_before = std::fs::read(&outside).unwrap();
    let id = node.id(3);
    let out = node.create(&b, &id);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read(&outside).unwrap(),
        target_before,
        "the link's target is untouched"
    );
    assert!(!std::fs::symlink_metadata(b.join("config.json"))
        .unwrap()
        .file_type()
        .is_symlink());
    node.delete(&id);
    // No temp file is left in any bundle.
    for dir in ["missing", "big", "linked"] {
        let left: Vec<String> = std::fs::read_dir(node.dir.path().join(dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("gpushare-tmp"))
            .collect();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

#[test]
fn a_storm_of_200_creates_shim_and_hook_mixed_balances_and_cleans_up() {
    let node = Node::new("storm200");
    let n = 200;
    let bundles: Vec<_> = (0..n)
        .map(|i| {
            let b = node.bundle(
                &format!("s{i}"),
                &["NVIDIA_VISIBLE_DEVICES=all"],
                "sleep 1000",
            );
            if i % 2 == 1 {
                node.with_hook(&b);
            }
            b
        })
        .collect();
    // Creates in parallel: even ones through the shim, odd ones by runc
    // with the hook in their spec. Output goes to files (created containers
    // keep their stdio).
    let children: Vec<_> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let log = std::fs::File::create(b.join("create.log")).unwrap();
            let mut c = if i % 2 == 0 {
                node.runtime()
            } else {
                node.runc()
            };
            c.args(["create", "--bundle"])
                .arg(b)
                .arg(node.id(i))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, mut c) in children.into_iter().enumerate() {
        let ok = c.wait().unwrap().success();
        assert!(
            ok,
            "{i}: {}",
            std::fs::read_to_string(bundles[i].join("create.log")).unwrap()
        );
    }
    let held = node.ledger();
    assert_eq!(held.len(), n, "every container held once");
    let on0 = held.iter().filter(|c| c["gpu"] == 0).count();
    assert!(
        on0.abs_diff(n - on0) <= 1,
        "balanced within one: {on0} / {}",
        n - on0
    );
    assert!(
        held.iter().all(|c| c["state"] == "running"),
        "every pid bound"
    );
    let deletes: Vec<_> = (0..n)
        .map(|i| {
            let mut c = if i % 2 == 0 {
                node.runtime()
            } else {
                node.runc()
            };
            c.args(["delete", "--force", &node.id(i)]).spawn().unwrap()
        })
        .collect();
    for mut d in deletes {
        assert!(d.wait().unwrap().success());
    }
    assert!(node.ledger().is_empty(), "every entry released");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(node.dir.path().to_str().unwrap()),
        "no mount left"
    );
    let state: Vec<String> = std::fs::read_dir(node.dir.path().join("node/state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        state.iter().all(|n| [
            "ledger.db",
            "ledger.db-wal",
            "ledger.db-shm",
            "ledger.lock",
            "driver.json",
            "pid",
        ]
        .contains(&n.as_str())),
        "no temp file: {state:?}"
    );
    assert_eq!(
        std::fs::read_dir(node.dir.path().join("node/state/pid")).map_or(0, |d| d.count()),
        0,
        "every pid file the shims asked for is gone"
    );
}

#[test]
fn the_container_environment_never_reaches_gpushare() {
    let node = Node::new("adv-env");
    let evil = node.dir.path().join("evil.so");
    let planted = [
        format!("LD_PRELOAD={}", evil.display()),
        "PATH=/bin:/nonexistent/evil-bin".to_owned(),
        "GPUSHARE_CONFIG=/nonexistent/evil.toml".to_owned(),
        "NVIDIA_VISIBLE_DEVICES=1".to_owned(),
    ];
    let env: Vec<&str> = planted.iter().map(String::as_str).collect();
    // Through the shim: its own process and the runc it execs keep the
    // engine's environment; the spec's is the container's alone.
    let b = node.bundle("shim", &env, "cat /dev/nvidia1");
    let out = node.run(&b, &node.id(0));
    let t = text(&out);
    assert!(
        t.contains("No such device or address") && !t.contains("cannot be preloaded"),
        "{t}"
    );
    // Through the hook alone: runc gives hooks the hook's env, never the
    // container's; a GPUSHARE_CONFIG in the container changes nothing.
    let b = node.bundle("hook", &env, "cat /dev/nvidia1");
    node.with_hook(&b);
    let t = text(&node.runc_run(&b, &node.id(1)));
    assert!(
        t.contains("No such device or address") && !t.contains("cannot be preloaded"),
        "{t}"
    );
    assert!(node.ledger().is_empty());
}

#[test]
fn a_forged_gpushare_annotation_buys_nothing_under_the_hook_alone() {
    let node = Node::new("adv-forged");
    let forged = json!({"gpushare/gpus": format!(
        "{},{},GPU-junk\u{1b}[2J",
        gpu_uuid(&node, 0),
        gpu_uuid(&node, 1)
    )});
    // Both GPUs asked for: the one-GPU rule refuses it, annotation or not.
    let b = node.bundle("two", &["NVIDIA_VISIBLE_DEVICES=0,1"], "true");
    node.with_hook(&b);
    node.edit_spec(&b, |s| s["annotations"] = forged.clone());
    let id = node.id(0);
    let out = node.runc_run(&b, &id);
    check_refusal(&node, "forged two", &out, "at most 1", None);
    assert!(!node.runc_knows(&id));
    // GPU 1 asked for, the annotation naming GPU 0: the container gets GPU
    // 1 (decided in full) and the ledger holds GPU 1's UUID while it runs.
    let b = node.bundle(
        "one",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        &format!("{GPU1_SCRIPT}; sleep 2"),
    );
    node.with_hook(&b);
    node.edit_spec(&b, |s| s["annotations"] = forged.clone());
    let id = node.id(1);
    let run = {
        let mut c = node.runc();
        c.args(["run", "--bundle"])
            .arg(&b)
            .arg(&id)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let held = loop {
        let held = node.ledger();
        if !held.is_empty() || std::time::Instant::now() > deadline {
            break held;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let out = run.wait_with_output().unwrap();
    assert_sees_only_gpu_1(&text(&out));
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["gpu"], 1, "{held:?}");
    assert!(node.ledger().is_empty(), "released at poststop");
}

#[test]
fn ids_outside_runcs_rule_never_reach_runc_or_the_ledger() {
    let node = Node::new("adv-ids");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"], "true");
    for id in ["\u{1b}[2J", "a\nGPU 9 FAKE", "../x", "a/b", ".."] {
        // Refused before runc runs, so nothing keeps the pipes open.
        let out = node
            .runtime()
            .args(["create", "--bundle"])
            .arg(&b)
            .arg(id)
            .output()
            .unwrap();
        check_refusal(&node, &format!("{id:?}"), &out, "runc's rule", Some(2));
        let t = text(&out);
        assert!(!t.contains('\u{1b}'), "{t:?}");
    }
    assert!(
        std::fs::read_dir(&node.runc_root).map_or(0, |d| d.count()) == 0,
        "runc made nothing"
    );
}

#[test]
fn the_ledger_is_unreadable_to_other_users_and_status_says_why() {
    let node = Node::new("adv-perm");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"], "sleep 30");
    let id = node.id(0);
    assert!(node.create(&b, &id).status.success());
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["status"])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("permission denied") && t.contains("only root may read it"),
        "{t}"
    );
    assert_eq!(t.trim_end().lines().count(), 1, "{t}");
    node.delete(&id);
}
