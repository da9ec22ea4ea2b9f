//! gpushare-runtime against fixture bundles and a recording fake runtime:
//! what it passes on, what it rewrites, and what a refusal leaves behind.

mod common;

use common::*;
use serde_json::Value;

#[test]
fn a_gpu_create_is_rewritten_reserved_and_passed_on_unchanged() {
    let node = Node::new(2, "");
    node.fake_mps(1);
    let b = node.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
    );
    let before = spec(&b);
    let args = [
        "--root",
        "/run/x",
        "--log",
        "/dev/null",
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        "/p",
        "c1",
    ];
    let out = node.runtime(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let argv = node.recorded().expect("the runtime ran");
    assert!(argv[0].ends_with("fake-runc"), "{argv:?}");
    assert_eq!(
        argv[1..],
        args.map(String::from),
        "arguments pass through unchanged"
    );

    let after = spec(&b);
    let env = env_of(&after);
    assert!(
        env.contains(&format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1))),
        "{env:?}"
    );
    assert!(env.contains(&"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30".to_string()));
    let devices: Vec<&str> = after["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [
            "/dev/fuse",
            "/dev/nvidia1",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    // The symlinked nodes resolve to /dev/null, 1:3.
    assert_eq!(after["linux"]["devices"][1]["major"], 1);
    let hook = &after["hooks"]["createRuntime"][0];
    assert_eq!(hook["path"].as_str().unwrap(), BIN_HOOK);
    assert!(hook["env"]
        .as_array()
        .unwrap()
        .contains(&Value::from(format!(
            "GPUSHARE_CONFIG={}",
            node.config.display()
        ))));
    assert_eq!(
        after["hooks"]["poststop"][0]["path"].as_str().unwrap(),
        BIN_HOOK
    );
    // Fields gpushare does not know are kept.
    assert_eq!(after["x-vendor-extension"], before["x-vendor-extension"]);
    assert_eq!(
        after["linux"]["x-future-field"],
        before["linux"]["x-future-field"]
    );
    assert_eq!(after["hooks"]["prestart"], before["hooks"]["prestart"]);

    let ledger = node.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["id"], "c1");
    assert_eq!(ledger[0]["gpus"][0].as_str().unwrap(), uuid(1));
    assert_eq!(ledger[0]["thread_percentage"], 30.0);
    assert!(ledger[0].get("pid").is_none());
}

#[test]
fn a_non_gpu_container_is_left_byte_for_byte_alone() {
    let node = Node::new(2, "");
    for (name, env) in [
        ("unset", vec![]),
        ("empty", vec!["NVIDIA_VISIBLE_DEVICES="]),
        (
            "void",
            vec![
                "NVIDIA_VISIBLE_DEVICES=void",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=junk",
            ],
        ),
    ] {
        let _ = std::fs::remove_file(node.argv_file());
        let b = node.bundle(name, &env);
        let bytes = std::fs::read(b.join("config.json")).unwrap();
        let out = node.runtime(&["create", "-b", b.to_str().unwrap(), name]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(
            std::fs::read(b.join("config.json")).unwrap(),
            bytes,
            "{name}"
        );
        assert!(node.recorded().is_some());
    }
    assert!(node.ledger().is_empty());
}

#[test]
fn none_is_a_gpu_container_without_a_gpu() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=none"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
    assert!(node.ledger().is_empty());
}

fn assert_refused_cleanly(
    node: &Node,
    b: &std::path::Path,
    bytes: &[u8],
    out: &std::process::Output,
    needles: &[&str],
) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        bytes,
        "config.json unchanged"
    );
    assert!(node.ledger().is_empty(), "no ledger entry");
    assert!(node.recorded().is_none(), "the runtime never ran");
    let names: Vec<String> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n == "config.json" || n == "rootfs"),
        "nothing left in the bundle: {names:?}"
    );
}

#[test]
fn two_gpus_are_refused_with_the_rule_and_nothing_is_left() {
    let node = Node::new(2, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0,1"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let log = node.path().join("runc-log.json");
    let out = node.runtime(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "run",
        "-d",
        "--bundle",
        b.to_str().unwrap(),
        "c2",
    ]);
    assert_refused_cleanly(
        &node,
        &b,
        &bytes,
        &out,
        &["at most 1", "policy.max_gpus_per_container"],
    );
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"]
        .as_str()
        .unwrap()
        .contains("policy.max_gpus_per_container"));
}

#[test]
fn malformed_requests_are_refused_naming_variable_and_value() {
    let node = Node::new(2, "");
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["NVIDIA_VISIBLE_DEVICES=GPU-zz"],
            &["NVIDIA_VISIBLE_DEVICES", "GPU-zz", "accepted"],
        ),
        (
            &["NVIDIA_VISIBLE_DEVICES=7"],
            &["no GPU has index 7", &uuid(0)],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=150",
            ],
            &["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "150"],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=lots",
            ],
            &["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "lots"],
        ),
    ];
    for (i, (env, needles)) in cases.iter().enumerate() {
        let b = node.bundle(&format!("b{i}"), env);
        let bytes = std::fs::read(b.join("config.json")).unwrap();
        let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
        assert_refused_cleanly(&node, &b, &bytes, &out, needles);
    }
}

#[test]
fn text_log_format_gets_a_logrus_line() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=3"]);
    let log = node.path().join("log");
    let out = node.runtime(&[
        "--log",
        log.to_str().unwrap(),
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "c",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("time=\"")
            && text.contains("level=error msg=\"gpushare: NVIDIA_VISIBLE_DEVICES"),
        "{text}"
    );
}

#[test]
fn other_subcommands_pass_through_without_reading_any_bundle() {
    let node = Node::new(1, "");
    for args in [
        &["state", "create"][..],
        &["--root", "/r", "delete", "--force", "c1"],
        &["kill", "c1", "KILL"],
        &["--version"],
        &["create", "--help"],
        &[],
    ] {
        let _ = std::fs::remove_file(node.argv_file());
        let out = node.runtime(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            node.recorded().unwrap()[1..],
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..],
            "{args:?}"
        );
    }
}

#[test]
fn the_bundle_defaults_to_the_working_directory_and_every_flag_form_works() {
    let node = Node::new(2, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node
        .command(BIN_RUNTIME)
        .current_dir(&b)
        .args(["create", "create"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        node.ledger()[0]["id"],
        "create",
        "a container may be called create"
    );
    let bs = b.to_str().unwrap().to_owned();
    for (i, args) in [
        vec!["create".to_string(), format!("--bundle={bs}"), "x1".into()],
        vec![
            "run".into(),
            "-d".into(),
            "-b".into(),
            bs.clone(),
            "x2".into(),
        ],
        vec!["create".into(), "x3".into(), "--bundle".into(), bs.clone()],
    ]
    .into_iter()
    .enumerate()
    {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.runtime(&a);
        assert!(out.status.success(), "{a:?}: {}", stderr(&out));
        assert_eq!(node.ledger().len(), i + 2, "{a:?}");
    }
}

#[test]
fn a_failing_runtime_exit_code_is_the_shims() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &[]);
    let out = node
        .command(BIN_RUNTIME)
        .env("FAKE_EXIT", "7")
        .args(["create", "--bundle", b.to_str().unwrap(), "c"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec'd: the runtime's status is the caller's"
    );
}

#[test]
fn a_bad_config_or_missing_runtime_is_refused_before_anything_happens() {
    let node = Node::new(1, "[policy]\nmax_gpus = 2\n");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_refused_cleanly(&node, &b, &bytes, &out, &["policy.max_gpus", "unknown key"]);

    let node = Node::new(1, "");
    let text = std::fs::read_to_string(&node.config).unwrap();
    let fake = node.path().join("fake-runc");
    std::fs::write(
        &node.config,
        text.replace(fake.to_str().unwrap(), "/nonexistent/runc"),
    )
    .unwrap();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_refused_cleanly(
        &node,
        &b,
        &bytes,
        &out,
        &["/nonexistent/runc", "runtime.path"],
    );
}

#[test]
fn a_missing_device_node_fails_and_leaves_nothing() {
    let node = Node::new(2, "");
    std::fs::remove_file(node.path().join("dev/nvidia1")).unwrap();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=1"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nvidia1"), "{}", stderr(&out));
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
    assert!(node.ledger().is_empty());
}

#[test]
fn concurrent_creates_with_all_balance_and_never_double_book() {
    let node = Node::new(2, "");
    let children: Vec<_> = (0..20)
        .map(|i| {
            let b = node.bundle(&format!("b{i}"), &["NVIDIA_VISIBLE_DEVICES=all"]);
            node.command(BIN_RUNTIME)
                .env("FAKE_ARGV", node.path().join(format!("argv{i}")))
                .args(["create", "--bundle", b.to_str().unwrap(), &format!("c{i}")])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let ledger = node.ledger();
    assert_eq!(ledger.len(), 20, "no entry lost");
    let on = |i: u32| {
        ledger
            .iter()
            .filter(|e| e["gpus"][0].as_str().unwrap() == uuid(i))
            .count()
    };
    assert_eq!((on(0), on(1)), (10, 10));
}

#[test]
fn a_percentage_budget_is_enforced_across_creates() {
    let node = Node::new(1, "[policy]\nmax_thread_percentage_per_gpu = 100\n");
    node.fake_mps(0);
    for (i, pct, ok) in [(0, "60", true), (1, "40", true), (2, "1", false)] {
        let b = node.bundle(
            &format!("b{i}"),
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={pct}"),
            ],
        );
        let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), &format!("c{i}")]);
        assert_eq!(out.status.success(), ok, "{pct}: {}", stderr(&out));
    }
    assert!(stderr(&node.runtime(&[
        "create",
        "--bundle",
        node.path().join("b2").to_str().unwrap(),
        "c2"
    ]))
    .contains("budget"));
    assert_eq!(node.ledger().len(), 2);
}

#[test]
fn delete_releases_a_reservation_no_hook_bound_but_leaves_bound_ones_to_poststop() {
    let node = Node::new(2, "");
    for id in ["failed", "running"] {
        let b = node.bundle(id, &["NVIDIA_VISIBLE_DEVICES=0"]);
        assert!(node
            .runtime(&["create", "--bundle", b.to_str().unwrap(), id])
            .status
            .success());
    }
    // Bind "running" as the createRuntime hook would.
    let state = serde_json::json!({"ociVersion": "1.0.2", "id": "running", "status": "creating", "pid": std::process::id(), "bundle": "/b", "annotations": {"gpushare/gpus": uuid(0)}});
    assert!(node.hook("createRuntime", &state).status.success());
    for id in ["failed", "running"] {
        let out = node.runtime(&["delete", "--force", id]);
        assert!(out.status.success(), "{}", stderr(&out));
        assert_eq!(node.recorded().unwrap()[1..], ["delete", "--force", id]);
    }
    let ids: Vec<String> = node
        .ledger()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["running"]);
}
