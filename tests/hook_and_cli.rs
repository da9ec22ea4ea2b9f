//! gpushare-hook fed OCI states, and the operator commands (explain,
//! status, inventory, gc) on a node without root.

mod common;

use common::*;
use serde_json::{json, Value};

fn state(id: &str, pid: u32, gpus: Option<&str>) -> Value {
    let mut s =
        json!({"ociVersion": "1.0.2", "id": id, "status": "creating", "pid": pid, "bundle": "/b"});
    if let Some(g) = gpus {
        s["annotations"] = json!({"gpushare/gpus": g, "io.kubernetes.cri.container-name": "infer"});
    }
    s
}

fn create(node: &Node, id: &str, env: &[&str]) {
    let b = node.bundle(id, env);
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), id]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Waits until the ledger holds an entry for `id` (a shim's reservation).
fn wait_for_entry(node: &Node, id: &str) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(e) = node.ledger().into_iter().find(|e| e["id"] == id) {
            return e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no reservation for {id}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn under_the_shim_the_hook_binds_the_shims_reservation_then_releases_it() {
    let node = Node::new(2, "");
    let b = node.bundle("c1", &["NVIDIA_VISIBLE_DEVICES=0"]);
    // The shim reserves, then waits for its runtime: a node-wide hook runs
    // in that window, as runc runs createRuntime during create.
    let shim = node
        .command(bin_runtime())
        .env("FAKE_SLEEP", "2")
        .args(["create", "--bundle", b.to_str().unwrap(), "c1"])
        .spawn()
        .unwrap();
    let reserved = wait_for_entry(&node, "c1");
    assert!(reserved["pid"].is_null(), "{reserved}");
    let me = std::process::id();
    let mut s = state("c1", me, None);
    s["bundle"] = json!(b);
    let out = node.hook("createRuntime", &s);
    assert!(out.status.success(), "{}", stderr(&out));
    let l = node.ledger();
    assert_eq!(l[0]["pid"], me);
    assert!(l[0]["pid_start"].as_u64().is_some());
    assert_eq!(l[0]["gpus"], json!([uuid(0)]), "the shim's entry, kept");
    assert!(shim.wait_with_output().unwrap().status.success());

    let status: Value = serde_json::from_str(&stdout(&node.cli(&["status", "--json"]))).unwrap();
    let c = &status["gpus"][0]["containers"][0];
    assert_eq!(
        (c["id"].as_str(), c["pid"].as_u64(), c["state"].as_str()),
        (Some("c1"), Some(me as u64), Some("running"))
    );

    let mut s = state("c1", 0, None);
    s["bundle"] = json!(b);
    let out = node.hook("poststop", &s);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.ledger().is_empty());
    // Releasing twice is harmless.
    assert!(node.hook("poststop", &s).status.success());
}

#[test]
fn a_forged_annotation_is_not_trusted_the_request_is_decided_in_full() {
    let node = Node::new(2, "");
    // Both GPUs asked for (the one-GPU rule refuses it) and the shim's
    // annotation set by hand to both UUIDs, junk and escapes included: with
    // no reservation of the shim's in the ledger, the hook decides.
    let b = node.bundle("forged", &["NVIDIA_VISIBLE_DEVICES=0,1"]);
    let forged = format!("{},{},GPU-junk\u{1b}[2J", uuid(0), uuid(1));
    let mut s = state("forged", std::process::id(), None);
    s["bundle"] = json!(b);
    s["annotations"] = json!({"gpushare/gpus": forged});
    let out = node.hook("createRuntime", &s);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("at most 1") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(node.ledger().is_empty(), "nothing recorded");
    // A bound entry is no reservation either: a second create of a running
    // container's id gets no free bind.
    let b1 = node.bundle("held", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node.runtime(&["create", "--bundle", b1.to_str().unwrap(), "held"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut s = state("held", std::process::id(), None);
    s["bundle"] = json!(b);
    s["annotations"] = json!({"gpushare/gpus": forged});
    let out = node.hook("createRuntime", &s);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(node.ledger().len(), 1);
    assert_eq!(node.ledger()[0]["gpus"], json!([uuid(0)]));
}

#[test]
fn the_hook_ignores_non_gpu_containers_and_refuses_garbage() {
    let node = Node::new(1, "");
    let out = node
        .command(bin_hook())
        .arg("createRuntime")
        .output()
        .unwrap();
    assert!(!out.status.success(), "empty stdin is not a state");
    // A container with no GPU request costs no config read: even a config
    // that would not load does not matter, at either stage.
    let plain = node.bundle("plain", &["NVIDIA_VISIBLE_DEVICES=void"]);
    let mut s = state("plain", 1, None);
    s["bundle"] = json!(plain);
    for stage in ["createRuntime", "poststop"] {
        let out = node
            .command(bin_hook())
            .env("GPUSHARE_CONFIG", "/nonexistent/dir/")
            .arg(stage)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin
                    .take()
                    .unwrap()
                    .write_all(s.to_string().as_bytes())?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(out.status.success(), "{stage}: {}", stderr(&out));
    }
    assert!(node.ledger().is_empty());
    let out = node.hook("bogus", &s);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("createRuntime, prestart or poststop"));
    let out = node.hook("createRuntime", &state("nopid", 0, Some(&uuid(0))));
    assert!(stderr(&out).contains("no pid"), "{}", stderr(&out));
}

#[test]
fn the_hook_alone_refuses_what_the_shim_refuses_and_records_nothing() {
    let node = Node::new(2, "");
    for (name, env, needle) in [
        ("two", &["NVIDIA_VISIBLE_DEVICES=0,1"][..], "at most 1"),
        (
            "pct",
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=0",
            ][..],
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE",
        ),
        (
            "mem",
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=9Q",
            ][..],
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
        ),
    ] {
        let b = node.bundle(name, env);
        let mut s = state(name, std::process::id(), None);
        s["bundle"] = json!(b);
        let out = node.hook("prestart", &s);
        assert_eq!(out.status.code(), Some(2), "{name}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(needle) && err.trim_end().lines().count() == 1,
            "{name}: {err}"
        );
    }
    assert!(node.ledger().is_empty());
}

#[test]
fn explain_says_what_create_would_do_and_does_nothing() {
    let node = Node::new(2, "");
    node.fake_mps(1);
    let b = node.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=GPU-4a1c9d21",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=2G",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
        ],
    );
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.cli(&["explain", "--bundle", b.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["decision"], "assign");
    assert_eq!(
        doc["gpu"],
        json!({"index": 1, "uuid": uuid(1), "name": "Tesla T4"})
    );
    assert_eq!(doc["thread_percentage"], 25.0);
    assert_eq!(doc["pinned_mem_limit"], "0=2G");
    assert_eq!(doc["reason"], Value::Null);
    let env: Vec<&str> = doc["edits"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        env,
        [
            format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1)).as_str(),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2G",
            "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
        ]
    );
    assert_eq!(doc["mps"], true);
    assert_eq!(doc["edits"]["devices"][0]["path"], "/dev/nvidia1");
    // An MPS client gets its GPU's pipe directory (read-only, the root-only
    // socket masked) and its GPU's /dev/shm.
    let mounts = doc["edits"]["mounts"].as_array().unwrap();
    assert_eq!(mounts[0]["destination"], "/tmp/nvidia-mps");
    assert_eq!(
        mounts[0]["source"].as_str().unwrap(),
        node.path()
            .join("mps")
            .join(uuid(1))
            .join("pipe")
            .to_str()
            .unwrap()
    );
    assert_eq!(
        mounts[0]["options"],
        json!(["bind", "ro", "nosuid", "nodev", "noexec"])
    );
    assert_eq!(
        (
            mounts[1]["destination"].as_str(),
            mounts[1]["source"].as_str()
        ),
        (
            Some("/tmp/nvidia-mps/control_privileged"),
            Some("/dev/null")
        )
    );
    assert_eq!(mounts[2]["destination"], "/dev/shm");
    assert_eq!(
        mounts[2]["source"].as_str().unwrap(),
        node.path()
            .join("mps")
            .join(uuid(1))
            .join("shm")
            .to_str()
            .unwrap()
    );
    assert_eq!(
        mounts[2]["options"],
        json!(["bind", "nosuid", "nodev", "noexec"])
    );
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
    assert!(node.ledger().is_empty());

    // What explain said is what create does.
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert!(out.status.success());
    let after = spec(&b);
    for e in env {
        assert!(env_of(&after).iter().any(|x| x == e), "{e}");
    }

    let b = node.bundle("two", &["NVIDIA_VISIBLE_DEVICES=0,1"]);
    let out = node.cli(&["explain", "--bundle", b.to_str().unwrap(), "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(doc["decision"], "reject");
    assert!(doc["reason"].as_str().unwrap().contains("at most 1"));
    assert!(stderr(&out).contains("at most 1"));

    let b = node.bundle("plain", &[]);
    let out = node.cli(&["explain", "--bundle", b.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        stdout(&out).starts_with("decision: untouched"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn explain_counts_the_ledger_as_create_does() {
    let node = Node::new(2, "");
    create(&node, "a", &["NVIDIA_VISIBLE_DEVICES=all"]);
    let b = node.bundle("next", &["NVIDIA_VISIBLE_DEVICES=all"]);
    let doc: Value = serde_json::from_str(&stdout(&node.cli(&[
        "explain",
        "--bundle",
        b.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(doc["gpu"]["index"], 1, "GPU 0 already has a holder");
}

#[test]
fn status_lists_every_gpu_and_its_holders() {
    let node = Node::new(2, "");
    node.fake_mps(0);
    create(
        &node,
        "a",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
    );
    create(&node, "b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node.cli(&["status", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let gpus = doc["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2);
    for key in [
        "index",
        "uuid",
        "name",
        "mps",
        "memory_used_mib",
        "memory_total_mib",
        "utilization_pct",
        "containers",
    ] {
        assert!(gpus[0].get(key).is_some(), "{key}");
    }
    assert_eq!(gpus[0]["memory_total_mib"], 15360);
    assert_eq!(gpus[0]["utilization_pct"], Value::Null);
    assert!(gpus[0]["telemetry_error"].as_str().is_some());
    let ids: Vec<&str> = gpus[0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["a", "b"]);
    assert_eq!(gpus[0]["containers"][0]["thread_percentage"], 30.0);
    assert_eq!(
        gpus[0]["containers"][0]["state"], "running",
        "the shim bound its pid from the runtime's pid file"
    );
    assert!(gpus[1]["containers"].as_array().unwrap().is_empty());

    let text = stdout(&node.cli(&["status"]));
    assert!(
        text.contains("GPU 0  Tesla T4")
            && text.contains("30%")
            && text.contains("(no containers)"),
        "{text}"
    );
}

#[test]
fn gc_drops_entries_whose_container_is_gone() {
    let node = Node::new(1, "");
    let mut child = std::process::Command::new("sleep")
        .arg("1")
        .spawn()
        .unwrap();
    let pid = child.id();
    child.wait().unwrap();
    // The runtime reports the container's pid: a process now gone, and
    // this test (alive).
    create(&node, "alive", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let b = node.bundle("dead", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node
        .command(bin_runtime())
        .env("FAKE_PID", pid.to_string())
        .args(["create", "--bundle", b.to_str().unwrap(), "dead"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let out = node.cli(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("dropped dead"), "{}", stdout(&out));
    let ids: Vec<String> = node
        .ledger()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["alive"]);
}

#[test]
fn inventory_and_errors_of_the_operator_command() {
    let node = Node::new(2, "");
    let doc: Value = serde_json::from_str(&stdout(&node.cli(&["inventory", "--json"]))).unwrap();
    assert_eq!(doc["gpus"][1]["uuid"].as_str().unwrap(), uuid(1));
    assert_eq!(doc["gpus"][1]["compute_capability"], "7.5");

    let out = node.cli(&[
        "simulate",
        "--gpus",
        "0",
        "--dir",
        node.path().join("sim").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--gpus 0"));
    let out = node.cli(&["explain", "--bundle", "/nonexistent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("/nonexistent/config.json"));
    let out = node
        .command(bin_cli())
        .env("GPUSHARE_CONFIG", node.path().join("inventory.toml"))
        .args(["status"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "an inventory is not a config: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("unknown key `gpu`"),
        "{}",
        stderr(&out)
    );
}

/// A bundle whose spec is what an engine makes of CDI devices `gpus` of
/// gpushare's spec (`cdi generate`): each device's hooks added, and the
/// last device's variable, which replaced the earlier ones'.
fn cdi_bundle(node: &Node, name: &str, spec: &Value, devices: &[&str]) -> std::path::PathBuf {
    let mut env = Vec::new();
    let b = node.bundle(name, &[]);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    for d in devices {
        let dev = spec["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == *d)
            .unwrap_or_else(|| panic!("no CDI device {d}"));
        let edits = &dev["containerEdits"];
        env = edits["env"].as_array().unwrap().clone();
        for h in edits["hooks"].as_array().unwrap() {
            let mut h = h.clone();
            let stage = h.as_object_mut().unwrap().remove("hookName").unwrap();
            config["hooks"][stage.as_str().unwrap()]
                .as_array_mut()
                .map(|a| a.push(h.clone()))
                .unwrap_or_else(|| config["hooks"][stage.as_str().unwrap()] = json!([h]));
        }
    }
    config["process"]["env"].as_array_mut().unwrap().extend(env);
    std::fs::write(b.join("config.json"), config.to_string()).unwrap();
    b
}

#[test]
fn cdi_generate_names_each_gpu_by_index_and_uuid_and_refresh_rewrites_it() {
    let out_dir = tempfile::tempdir().unwrap();
    let spec_path = out_dir.path().join("cdi/gpushare.yaml");
    let node = Node::new(
        2,
        &format!("[cdi]\nspec = {:?}\n", spec_path.display().to_string()),
    );
    let out = node.cli(&["cdi", "generate"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("kind gpushare.io/gpu: 2 GPUs"),
        "{}",
        stderr(&out)
    );
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    let names: Vec<&str> = spec["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    let (u0, u1) = (uuid(0), uuid(1));
    assert_eq!(names, ["0", u0.as_str(), "1", u1.as_str(), "all"]);
    let hook = &spec["devices"][0]["containerEdits"]["hooks"][0];
    assert_eq!(hook["path"].as_str(), Some(bin_hook()));
    assert_eq!(
        hook["env"],
        json!([format!("GPUSHARE_CONFIG={}", node.config.display())])
    );
    // --output, relative, is taken from the working directory.
    let out = node
        .command(bin_cli())
        .current_dir(out_dir.path())
        .args(["cdi", "generate", "--output", "other.json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(out_dir.path().join("other.json").is_file());

    // The inventory changes (a GPU goes): --refresh rewrites the spec.
    let inv = node.path().join("inventory.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    let first = text.split("\n\n").next().unwrap().to_owned();
    std::fs::write(&inv, format!("{first}\n")).unwrap();
    let out = node.cli(&["inventory", "--refresh"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rewrote the CDI spec") && stderr(&out).contains("(1 GPUs)"),
        "{}",
        stderr(&out)
    );
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    assert_eq!(spec["devices"].as_array().unwrap().len(), 3, "{spec}");
    let left: Vec<_> = std::fs::read_dir(spec_path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 1, "no temp file left: {left:?}");
}

#[test]
fn two_cdi_devices_are_two_gpus_one_device_twice_is_one() {
    let node = Node::new(2, "");
    let spec_path = node.path().join("gpushare-cdi.json");
    let out = node.cli(&["cdi", "generate", "--output", spec_path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let spec: Value = serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();

    // Through the runtime and through the hook alone: refused, one line.
    let two = cdi_bundle(&node, "two", &spec, &["1", "0"]);
    let out = node.runtime(&["create", "--bundle", two.to_str().unwrap(), "two"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("asks for 2 GPUs"), "{}", stderr(&out));
    assert!(node.recorded().is_none(), "runc never ran");
    let mut s = state("two", std::process::id(), None);
    s["bundle"] = json!(two);
    let out = node.hook("createRuntime", &s);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("asks for 2 GPUs") && stderr(&out).trim_end().lines().count() == 1,
        "{}",
        stderr(&out)
    );
    assert!(node.ledger().is_empty());

    // GPU 1 named twice (index and UUID): GPU 1, whatever the variable said.
    let u1 = uuid(1);
    let once = cdi_bundle(&node, "once", &spec, &["1", u1.as_str()]);
    let out = node.runtime(&["create", "--bundle", once.to_str().unwrap(), "once"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["gpus"], json!([u1]));
}
