//! `gpushare install` on files in a temporary directory: what it writes,
//! what a second run and --dry-run write (nothing), what --uninstall gives
//! back, and that a malformed file is refused and left alone.

mod common;

use std::path::Path;
use std::process::Output;

use common::*;

fn install(node: &Node, args: &[&str]) -> Output {
    node.cli(&[&["install"], args].concat())
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

#[test]
fn docker_install_twice_then_uninstall_gives_the_original_bytes_back() {
    let node = Node::new(1, "");
    let dir = node.path().join("etc");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("daemon.json");
    let original = fixture("install/daemon.json");
    std::fs::write(&file, &original).unwrap();
    let f = file.to_str().unwrap();

    let out = install(&node, &["docker", "--config", f, "--dry-run"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("+    \"gpushare\": {") && stdout(&out).contains("nothing written"),
        "{}",
        stdout(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "--dry-run writes nothing"
    );
    assert_eq!(listing(&dir), ["daemon.json"]);

    let out = install(&node, &["docker", "--config", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The fixture runs NVIDIA's runtime too: said, with the chained set-up.
    assert!(
        stdout(&out).contains("note: NVIDIA's runtime is configured in")
            && stdout(&out).contains("runtimes.nvidia: nvidia-container-runtime")
            && stdout(&out).contains(
                "`[runtime] path = \"nvidia-container-runtime\"` and `[driver] inject = \"none\"`"
            ),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out)
            .trim_end()
            .ends_with("systemctl restart docker"),
        "ends with the restart to run: {}",
        stdout(&out)
    );
    let written = std::fs::read(&file).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&written).unwrap();
    assert_eq!(
        v["runtimes"]["gpushare"]["path"].as_str().unwrap(),
        bin_runtime()
    );
    let backups = listing(&dir);
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(backups[1].starts_with("daemon.json.gpushare-backup-"));
    assert_eq!(
        std::fs::read_to_string(dir.join(&backups[1])).unwrap(),
        original
    );

    let out = install(&node, &["docker", "--config", f]);
    assert!(
        stdout(&out).contains("nothing to change"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read(&file).unwrap(), written);
    assert_eq!(listing(&dir).len(), 2, "no new backup");

    let out = install(&node, &["docker", "--config", f, "--uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        original,
        "the original bytes"
    );
}

#[test]
fn uninstall_after_the_operator_changed_the_file_takes_out_only_gpushare() {
    let node = Node::new(1, "");
    let file = node.path().join("daemon.json");
    std::fs::write(&file, "{\"debug\": true}").unwrap();
    let f = file.to_str().unwrap();
    assert!(install(&node, &["docker", "--config", f, "--set-default"])
        .status
        .success());
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v["default-runtime"], "gpushare");
    v["log-level"] = "warn".into();
    std::fs::write(&file, serde_json::to_vec(&v).unwrap()).unwrap();
    assert!(install(&node, &["docker", "--config", f, "--uninstall"])
        .status
        .success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(v, serde_json::json!({"debug": true, "log-level": "warn"}));
}

#[test]
fn malformed_files_are_refused_and_left_alone() {
    let node = Node::new(1, "");
    for (engine, name, text, needle) in [
        (
            "docker",
            "daemon.json",
            "{\n  \"debug\": true,\n}\n",
            "line 3",
        ),
        (
            "containerd",
            "config.toml",
            "version = 2\n[plugins\n",
            "line 2",
        ),
    ] {
        let file = node.path().join(name);
        std::fs::write(&file, text).unwrap();
        let out = install(&node, &[engine, "--config", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{engine}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(needle) && stderr(&out).contains("will not overwrite"),
            "{}",
            stderr(&out)
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), text);
        assert_eq!(
            listing(node.path())
                .iter()
                .filter(|n| n.contains("backup"))
                .count(),
            0
        );
    }
}

#[test]
fn containerd_v2_install_and_uninstall_round_trip() {
    let node = Node::new(1, "");
    let file = node.path().join("config.toml");
    let original = fixture("install/containerd-v2.toml");
    std::fs::write(&file, &original).unwrap();
    let f = file.to_str().unwrap();
    let out = install(&node, &["containerd", "--config", f]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("gpushare-base-spec.json"),
        "shim mode neither writes nor mentions the base spec: {}",
        stdout(&out)
    );
    assert!(
        !stdout(&out).contains("NVIDIA's runtime"),
        "{}",
        stdout(&out)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("# runc with systemd cgroups, as kubeadm sets it up"),
        "comments kept"
    );
    assert!(
        text.contains(&format!("BinaryName = \"{}\"", bin_runtime())),
        "{text}"
    );
    assert!(stdout(&install(&node, &["containerd", "--config", f])).contains("nothing to change"));
    assert!(
        install(&node, &["containerd", "--config", f, "--uninstall"])
            .status
            .success()
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
}

#[test]
fn the_runtime_class_and_the_node_setup_name_the_same_handler_and_label() {
    let root = env!("CARGO_MANIFEST_DIR");
    let class = std::fs::read_to_string(format!("{root}/install/runtimeclass.yaml")).unwrap();
    let setup = std::fs::read_to_string(format!("{root}/install/node-setup.sh")).unwrap();
    assert!(class.contains("\nhandler: gpushare\n"), "{class}");
    assert!(
        class.contains("scheduling:\n  nodeSelector:\n    gpushare.io/runtime: \"true\"\n"),
        "{class}"
    );
    assert!(
        setup.contains("kubectl label node $(hostname) gpushare.io/runtime=true"),
        "node-setup.sh tells the operator the label the RuntimeClass selects"
    );
}

#[test]
fn a_bare_file_name_works_as_typed_in_its_directory() {
    let node = Node::new(1, "");
    let dir = node.path().join("etc");
    std::fs::create_dir(&dir).unwrap();
    let original = fixture("install/daemon.json");
    std::fs::write(dir.join("daemon.json"), &original).unwrap();
    let run = |args: &[&str]| {
        node.command(bin_cli())
            .current_dir(&dir)
            .args([&["install", "docker", "--config", "daemon.json"], args].concat())
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(std::fs::read_to_string(dir.join("daemon.json"))
        .unwrap()
        .contains("gpushare-runtime"));
    let l = listing(&dir);
    assert!(
        l.len() == 2 && l[1].starts_with("daemon.json.gpushare-backup-"),
        "{l:?}"
    );
    let out = run(&["--uninstall"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(dir.join("daemon.json")).unwrap(),
        original
    );
}
