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
    let class = std::fs::read_to_string(format!("{root}/install/k8s/runtimeclass.yaml")).unwrap();
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
fn the_device_plugins_daemonset_runs_this_versions_image_as_the_plugin() {
    let root = env!("CARGO_MANIFEST_DIR");
    let ds = std::fs::read_to_string(format!("{root}/install/k8s/device-plugin.yaml")).unwrap();
    let image = std::fs::read_to_string(format!("{root}/install/image.sh")).unwrap();
    assert!(
        ds.contains(&format!(
            "image: localhost/gpushare:{}\n",
            env!("CARGO_PKG_VERSION")
        )) && image.contains("tag=\"localhost/gpushare:$version\""),
        "the DaemonSet names the image install/image.sh tags"
    );
    for path in [
        "/var/lib/kubelet/device-plugins",
        "/etc/gpushare",
        "/run/gpushare",
    ] {
        assert!(ds.contains(&format!("path: {path},")), "{path} mounted");
    }
    assert!(ds.contains("gpushare.io/runtime: \"true\""));
    assert!(ds.contains("drop: [\"ALL\"]") && !ds.contains("privileged: true"));
    let nri = std::fs::read_to_string(format!("{root}/install/k8s/nri-plugin.yaml")).unwrap();
    assert!(
        nri.contains(&format!(
            "image: localhost/gpushare:{}\n",
            env!("CARGO_PKG_VERSION")
        )) && nri.contains("\"--host-root\", \"/host\"")
            && nri.contains("hostPID: true")
            && nri.contains("add: [\"SYS_CHROOT\"]"),
        "the NRI DaemonSet runs this version's image in the host's root"
    );
    let example =
        std::fs::read_to_string(format!("{root}/install/k8s/gpu-percent-example.yaml")).unwrap();
    assert!(example.contains("gpushare.io/gpu-percent: 30"));
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

fn need_ctr() {
    assert!(
        std::process::Command::new("ctr")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "ctr is not installed (containerd --mode hook writes `ctr oci spec`): apt-get install containerd"
    );
}

/// The `gpushare` runtime's table in a containerd v2 config.
fn gpushare_runtime(file: &Path) -> toml::Table {
    let doc: toml::Table = std::fs::read_to_string(file).unwrap().parse().unwrap();
    doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gpushare"]
        .as_table()
        .unwrap()
        .clone()
}

#[test]
fn relative_paths_are_written_absolute_and_said() {
    need_ctr();
    let node = Node::new(1, "");
    let dir = node.path().join("etc");
    std::fs::create_dir_all(dir.join("node")).unwrap();
    std::fs::copy(&node.config, dir.join("node/config.toml")).unwrap();
    let out = node
        .command(bin_cli())
        .current_dir(&dir)
        .args([
            "install",
            "containerd",
            "--config",
            "c.toml",
            "--mode",
            "hook",
            "--gpushare-config",
            "node/config.toml",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = dir.canonicalize().unwrap();
    assert!(
        stdout(&out).contains(&format!(
            "--config c.toml is relative: taken as {}",
            dir.join("c.toml").display()
        )) && stdout(&out).contains(&format!(
            "--gpushare-config node/config.toml is relative: taken as {}",
            dir.join("node/config.toml").display()
        )),
        "{}",
        stdout(&out)
    );
    let rt = gpushare_runtime(&dir.join("c.toml"));
    let spec = rt["base_runtime_spec"].as_str().unwrap();
    assert_eq!(
        spec,
        dir.join("c.toml.gpushare-base-spec.json").to_str().unwrap()
    );
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(spec).unwrap()).unwrap();
    let hook = &spec["hooks"]["prestart"][0];
    assert!(
        Path::new(hook["path"].as_str().unwrap()).is_absolute(),
        "{hook}"
    );
    assert_eq!(
        hook["env"][0].as_str().unwrap(),
        format!("GPUSHARE_CONFIG={}", dir.join("node/config.toml").display())
    );
}

#[test]
fn two_configs_in_one_directory_keep_their_own_base_specs() {
    need_ctr();
    let node = Node::new(1, "");
    let c = node.config.to_str().unwrap();
    let (a, b) = (node.path().join("a.toml"), node.path().join("b.toml"));
    for f in [&a, &b] {
        let out = install(
            &node,
            &[
                "containerd",
                "--config",
                f.to_str().unwrap(),
                "--mode",
                "hook",
                "--gpushare-config",
                c,
            ],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let spec_a = node.path().join("a.toml.gpushare-base-spec.json");
    let spec_b = node.path().join("b.toml.gpushare-base-spec.json");
    assert_eq!(
        gpushare_runtime(&a)["base_runtime_spec"].as_str(),
        spec_a.to_str()
    );
    assert_eq!(
        gpushare_runtime(&b)["base_runtime_spec"].as_str(),
        spec_b.to_str()
    );
    let b_spec = std::fs::read(&spec_b).unwrap();
    let out = install(
        &node,
        &["containerd", "--config", a.to_str().unwrap(), "--uninstall"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!spec_a.exists(), "a's base spec went with a's runtime");
    assert_eq!(
        std::fs::read(&spec_b).unwrap(),
        b_spec,
        "b's base spec is untouched"
    );
    // Shim mode over hook mode: the base spec nothing names any more goes.
    let out = install(&node, &["containerd", "--config", b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!spec_b.exists(), "{}", stdout(&out));
    assert!(gpushare_runtime(&b).get("base_runtime_spec").is_none());
}

#[test]
fn a_custom_runc_binary_is_kept_as_gpushares_runtime_path() {
    let runc = "/opt/runc/bin/runc";
    let with_binary = fixture("install/containerd-v2.toml").replace(
        "SystemdCgroup = true",
        &format!("SystemdCgroup = true\n          BinaryName = {runc:?}"),
    );
    // gpushare's config names no runtime path: install writes the binary in.
    let node = Node::new(1, "");
    let plain = node.path().join("plain.toml");
    std::fs::write(&plain, "[runtime]\nstate_dir = \"/tmp/x\"\n").unwrap();
    let file = node.path().join("config.toml.d");
    std::fs::create_dir(&file).unwrap();
    let file = file.join("containerd.toml");
    std::fs::write(&file, &with_binary).unwrap();
    let args = [
        "containerd",
        "--config",
        file.to_str().unwrap(),
        "--gpushare-config",
        plain.to_str().unwrap(),
    ];
    let out = install(&node, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg: toml::Table = std::fs::read_to_string(&plain).unwrap().parse().unwrap();
    assert_eq!(cfg["runtime"]["path"].as_str(), Some(runc), "{cfg}");
    assert_eq!(cfg["runtime"]["state_dir"].as_str(), Some("/tmp/x"));
    let rt = gpushare_runtime(&file);
    assert!(rt["options"]["BinaryName"]
        .as_str()
        .unwrap()
        .ends_with("gpushare-runtime"));
    assert!(stdout(&install(&node, &args)).contains("nothing to change"));

    // gpushare's config names another runc: refused, nothing written.
    std::fs::write(&file, &with_binary).unwrap();
    let other = node.path().join("other.toml");
    std::fs::write(&other, "[runtime]\npath = \"/usr/sbin/runc\"\n").unwrap();
    let out = install(
        &node,
        &[
            "containerd",
            "--config",
            file.to_str().unwrap(),
            "--gpushare-config",
            other.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("containerd's runc runs {runc}"))
            && stderr(&out).contains("[runtime] path = \"/usr/sbin/runc\""),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), with_binary);
    assert_eq!(
        std::fs::read_to_string(&other).unwrap(),
        "[runtime]\npath = \"/usr/sbin/runc\"\n"
    );
}

#[test]
fn a_gpushare_config_that_is_missing_is_an_error_everywhere() {
    let node = Node::new(1, "");
    let missing = node.path().join("nope.toml");
    let out = node
        .command(bin_cli())
        .env("GPUSHARE_CONFIG", &missing)
        .arg("inventory")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("GPUSHARE_CONFIG names") && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    let out = node
        .command(bin_cli())
        .env("GPUSHARE_CONFIG", "node/config.toml")
        .arg("status")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not an absolute path"),
        "{}",
        stderr(&out)
    );
    let hooks = node.path().join("hooks.d");
    let out = install(
        &node,
        &[
            "podman",
            "--config",
            hooks.to_str().unwrap(),
            "--gpushare-config",
            missing.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--gpushare-config") && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    assert!(!hooks.exists(), "nothing written");
}

#[test]
fn containerd_mode_nri_turns_nri_on_writes_the_unit_and_uninstall_takes_both_out() {
    let node = Node::new(1, "");
    let file = node.path().join("config.toml");
    let original = fixture("install/containerd-v2.toml");
    std::fs::write(&file, &original).unwrap();
    let units = node.path().join("units");
    let args = [
        "containerd",
        "--config",
        file.to_str().unwrap(),
        "--mode",
        "nri",
        "--unit-dir",
        units.to_str().unwrap(),
        "--gpushare-config",
        node.config.to_str().unwrap(),
    ];
    let out = install(&node, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("systemctl enable --now gpushare-nri.service"),
        "{}",
        stdout(&out)
    );
    let doc: toml::Table = std::fs::read_to_string(&file).unwrap().parse().unwrap();
    let nri = &doc["plugins"]["io.containerd.nri.v1.nri"];
    assert_eq!(nri["disable"].as_bool(), Some(false), "{doc}");
    assert_eq!(nri["socket_path"].as_str(), Some("/var/run/nri/nri.sock"));
    assert!(
        doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]
            .get("gpushare")
            .is_none(),
        "no runtime is replaced or added"
    );
    let unit = std::fs::read_to_string(units.join("gpushare-nri.service")).unwrap();
    assert!(
        unit.contains(&format!("ExecStart={} nri\n", bin_cli()))
            && unit.contains(&format!(
                "Environment=GPUSHARE_CONFIG={}",
                node.config.display()
            ))
            && unit.contains("After=containerd.service"),
        "{unit}"
    );
    assert!(stdout(&install(&node, &args)).contains("nothing to change"));
    let out = install(
        &node,
        &[
            "containerd",
            "--config",
            file.to_str().unwrap(),
            "--unit-dir",
            units.to_str().unwrap(),
            "--uninstall",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), original);
    assert!(!units.join("gpushare-nri.service").exists());
}
