//! The real engines, configured by `gpushare install` on temporary config
//! files and started by the test with temporary state and sockets; images
//! are imported from the test's busybox rootfs, no registry. Root; needs
//! docker.io, containerd and podman (see common/mod.rs for the rest).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::engine::*;
use common::*;

/// dockerd of `engines` started by the test on `daemon_json`, with state,
/// exec root and socket in `d`, gpushare's config in its environment; the
/// docker client on its socket; stopped on drop.
struct Docker {
    _daemon: Daemon,
    sock: PathBuf,
    engines: Engines,
}

impl Docker {
    fn start(engines: &Engines, node: &Node, d: &Path, daemon_json: &Path) -> Docker {
        engines.need("dockerd", "docker.io");
        let sock = d.join("docker.sock");
        let log = std::fs::File::create(d.join("dockerd.log")).unwrap();
        let child = engines
            .command("dockerd")
            .env("GPUSHARE_CONFIG", &node.config)
            .arg("--config-file")
            .arg(daemon_json)
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("docker.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--iptables=false", "--bridge=none"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let docker = Docker {
            _daemon: Daemon {
                child,
                dir: d.to_owned(),
            },
            sock,
            engines: engines.clone(),
        };
        wait_for("dockerd", || docker.run(&["info"]).status.success());
        docker
    }

    fn run(&self, args: &[&str]) -> Output {
        self.engines
            .command("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn import(&self, tar: &Path, tag: &str) {
        let out = self
            .engines
            .command("docker")
            .arg("-H")
            .arg(format!("unix://{}", self.sock.display()))
            .args(["import", "-", tag])
            .stdin(std::fs::File::open(tar).unwrap())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
    }
}

#[test]
fn docker_configured_by_install_gives_gpu_1_refuses_two_and_releases_on_rm() {
    docker_walk(&Engines::debian12());
}

#[test]
fn docker_26_configured_by_install_gives_gpu_1_refuses_two_and_releases_on_rm() {
    docker_walk(&Engines::debian13());
}

fn docker_walk(engines: &Engines) {
    let node = Node::new("docker");
    require_driver_userspace();
    let d = node.dir.path().join("docker");
    std::fs::create_dir_all(&d).unwrap();
    let daemon_json = d.join("daemon.json");
    std::fs::write(&daemon_json, "{\n  \"log-level\": \"warn\"\n}\n").unwrap();
    install(
        &node,
        &["docker", "--config", daemon_json.to_str().unwrap()],
    );
    let cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&daemon_json).unwrap()).unwrap();
    assert_eq!(cfg["log-level"], "warn", "the operator's key is kept");
    let dk = Docker::start(engines, &node, &d, &daemon_json);
    let docker = |args: &[&str]| dk.run(args);
    let import = |tar: &Path, tag: &str| dk.import(tar, tag);
    import(&rootfs_tar(&node), "gpushare-test:1");
    import(
        &tar_of(&node, &node.probe_rootfs("docker"), "probe.tar"),
        "gpushare-probe:1",
    );

    // CUDA and NVML from the host's driver, in a plain `docker run`.
    let out = docker(&[
        "run",
        "--rm",
        "--runtime",
        "gpushare",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=0",
        "gpushare-probe:1",
        "sh",
        "-c",
        "cuda-probe; nvidia-smi; echo smi-exit $?",
    ]);
    let t = text(&out);
    assert!(
        t.contains("libcuda: cuInit=100 (CUDA_ERROR_NO_DEVICE)")
            && t.contains("nvml: nvmlInit_v2=9 (Driver Not Loaded)")
            && t.contains("couldn't communicate with the NVIDIA driver")
            && t.contains("smi-exit 9"),
        "the driver's libraries and nvidia-smi ran in the container: {t}"
    );
    let out = docker(&[
        "run",
        "--rm",
        "--runtime",
        "gpushare",
        "gpushare-probe:1",
        "cuda-probe",
    ]);
    assert!(
        text(&out).contains("libcuda: dlopen failed"),
        "a non-GPU container gets no driver: {}",
        text(&out)
    );

    let out = docker(&[
        "run",
        "--rm",
        "--runtime",
        "gpushare",
        "--cap-add",
        "MKNOD",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=1",
        "gpushare-test:1",
        "sh",
        "-c",
        GPU1_SCRIPT,
    ]);
    assert_sees_only_gpu_1(&text(&out));

    // `-t`: the container's terminal comes through the console socket
    // containerd's shim hands the runtime, which gpushare passes to runc.
    let out = docker(&[
        "run",
        "--rm",
        "-t",
        "--runtime",
        "gpushare",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=1",
        "gpushare-test:1",
        "sh",
        "-c",
        "tty; stat -c 'node %t:%T' /dev/nvidia1",
    ]);
    let t = text(&out);
    assert!(
        out.status.success() && t.contains("/dev/pts/0") && t.contains("node c3:1"),
        "docker run -t: a terminal and GPU 1: {t}"
    );
    assert!(node.ledger().is_empty(), "docker run --rm -t released it");

    let out = docker(&[
        "run",
        "--rm",
        "--runtime",
        "gpushare",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=0,1",
        "gpushare-test:1",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("gpushare: NVIDIA_VISIBLE_DEVICES asks for 2 GPUs"),
        "docker shows gpushare's reason: {}",
        text(&out)
    );

    let name = node.id(0);
    let out = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--runtime",
        "gpushare",
        "-e",
        "NVIDIA_VISIBLE_DEVICES=1",
        "gpushare-test:1",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0]["gpu"].as_u64(), held[0]["state"].as_str()),
        (Some(1), Some("running"))
    );
    let out = docker(&["rm", "-f", &name]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.ledger().is_empty(), "docker rm released it");
}

#[test]
fn podman_with_the_installed_hooks_directory_gives_gpu_1_only() {
    need("podman", "podman");
    let node = Node::new("podman-install");
    let hooks = node.dir.path().join("hooks.d");
    install(
        &node,
        &[
            "podman",
            "--config",
            hooks.to_str().unwrap(),
            "--gpushare-config",
            node.config.to_str().unwrap(),
        ],
    );
    let name = node.id(0);
    let out = podman_run(
        &hooks,
        &node.rootfs,
        &[
            "--name",
            &name,
            "--cap-add",
            "MKNOD",
            "-e",
            "NVIDIA_VISIBLE_DEVICES=1",
        ],
        &["sh", "-c", GPU1_SCRIPT],
    );
    assert_sees_only_gpu_1(&text(&out));
    let out = podman_run(
        &hooks,
        &node.rootfs,
        &["-e", "NVIDIA_VISIBLE_DEVICES=0,1"],
        &["true"],
    );
    assert!(
        !out.status.success() && text(&out).contains("policy.max_gpus_per_container"),
        "{}",
        text(&out)
    );
    assert!(node.ledger().is_empty());
    install(
        &node,
        &["podman", "--config", hooks.to_str().unwrap(), "--uninstall"],
    );
    assert_eq!(
        std::fs::read_dir(&hooks).unwrap().count(),
        0,
        "uninstall took the file out"
    );
}

#[test]
fn containerd_configured_by_install_runs_the_gpu_container_and_shows_refusals() {
    containerd_walk(&Engines::debian12());
}

#[test]
fn containerd_1_7_on_its_full_default_config_runs_the_gpu_container_and_shows_refusals() {
    containerd_walk(&Engines::debian13());
}

/// Debian 12's containerd on a minimal config, Debian 13's on its full
/// default one.
fn containerd_of(engines: &Engines, node: &Node) -> (PathBuf, PathBuf, PathBuf, String) {
    engines.need("containerd", "containerd");
    match engines.name {
        "Debian 12" => containerd_dir(node),
        _ => containerd_default_dir(engines, node),
    }
}

fn containerd_walk(engines: &Engines) {
    let node = Node::new("containerd");
    let (d, config, sock, _) = containerd_of(engines, &node);
    install(&node, &["containerd", "--config", config.to_str().unwrap()]);
    let doc: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    let binary = doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gpushare"]
        ["options"]["BinaryName"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(Path::new(&binary).is_absolute() && binary.ends_with("gpushare-runtime"));
    let _daemon = start_containerd(engines, &node, &d, &config, &sock);
    let ctr = |args: &[&str]| -> Output {
        engines
            .command("ctr")
            .arg("--address")
            .arg(&sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let archive = image_archive(&node);
    let out = ctr(&["image", "import", archive.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // ctr takes the runtime binary the installed config names.
    let run = |id: &str, env: &str, script: &str| -> Output {
        ctr(&[
            "run",
            "--rm",
            "--runc-binary",
            &binary,
            "--env",
            env,
            "docker.io/library/gpushare-test:1",
            id,
            "sh",
            "-c",
            script,
        ])
    };
    let out = run(
        &node.id(0),
        "NVIDIA_VISIBLE_DEVICES=1",
        "ls /dev; cat /dev/nvidia1; test -e /dev/nvidia0 && echo has-nvidia0 || echo no-nvidia0",
    );
    let t = text(&out);
    assert!(
        t.contains("nvidia1")
            && t.contains("No such device or address")
            && t.contains("no-nvidia0"),
        "{t}"
    );
    let out = run(&node.id(1), "NVIDIA_VISIBLE_DEVICES=0,1", "true");
    assert!(!out.status.success());
    assert!(
        text(&out).contains("gpushare: NVIDIA_VISIBLE_DEVICES asks for 2 GPUs"),
        "ctr shows gpushare's reason: {}",
        text(&out)
    );
    assert!(node.ledger().is_empty());
}

#[test]
fn containerd_mode_hook_config_loads_and_its_base_spec_gives_the_gpu() {
    containerd_hook_walk(&Engines::debian12());
}

#[test]
fn containerd_1_7_mode_hook_on_its_full_default_config_loads_and_its_base_spec_gives_the_gpu() {
    containerd_hook_walk(&Engines::debian13());
}

fn containerd_hook_walk(engines: &Engines) {
    let node = Node::new("containerd-hook");
    let (d, config, sock, original) = containerd_of(engines, &node);
    install_on(
        engines,
        &node,
        &[
            "containerd",
            "--config",
            config.to_str().unwrap(),
            "--mode",
            "hook",
            "--gpushare-config",
            node.config.to_str().unwrap(),
        ],
    );
    let doc: toml::Table = std::fs::read_to_string(&config).unwrap().parse().unwrap();
    let rt = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gpushare"];
    let spec_path = PathBuf::from(rt["base_runtime_spec"].as_str().unwrap());
    // runc's options are copied: 1.7's default names no binary ("").
    assert!(
        rt.get("options")
            .and_then(|o| o.get("BinaryName"))
            .and_then(|b| b.as_str())
            .is_none_or(|b| b.is_empty()),
        "runc itself runs it: {rt}"
    );
    // containerd accepts the configuration.
    let _daemon = start_containerd(engines, &node, &d, &config, &sock);
    // The base spec, as CRI would start from it: the hooks give GPU 1.
    let b = node.dir.path().join("from-base-spec");
    std::fs::create_dir_all(&b).unwrap();
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["root"] = serde_json::json!({"path": node.rootfs, "readonly": false});
    spec["process"]["args"] = serde_json::json!([
        "sh",
        "-c",
        "ls /dev; cat /dev/nvidia1; test -e /dev/nvidia0 && echo has-nvidia0 || echo no-nvidia0"
    ]);
    // containerd's default spec has no env: CRI adds the image's and the pod's.
    spec["process"]["env"] = serde_json::json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=1"]);
    spec["process"]["terminal"] = false.into();
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let t = text(&node.runc_run(&b, &node.id(0)));
    assert!(
        t.contains("nvidia1")
            && t.contains("No such device or address")
            && t.contains("no-nvidia0"),
        "{t}"
    );
    assert!(node.ledger().is_empty());
    // Uninstall takes out both the runtime and the base spec.
    install(
        &node,
        &[
            "containerd",
            "--config",
            config.to_str().unwrap(),
            "--uninstall",
        ],
    );
    assert!(!spec_path.exists());
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        original,
        "the original bytes"
    );
}

/// `gpushare cdi generate --output path` on the node.
fn cdi_generate(node: &Node, path: &Path) {
    let out = std::process::Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["cdi", "generate", "--output"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn docker_26_cdi_device_gpushare_io_gpu_1_places_lists_and_releases() {
    let engines = Engines::debian13();
    let node = Node::new("docker-cdi");
    let d = node.dir.path().join("docker");
    let cdi = node.dir.path().join("cdi");
    std::fs::create_dir_all(&d).unwrap();
    cdi_generate(&node, &cdi.join("gpushare.yaml"));
    // CDI on, and no runtime of gpushare's: runc runs every container.
    let daemon_json = d.join("daemon.json");
    std::fs::write(
        &daemon_json,
        serde_json::json!({"features": {"cdi": true}, "cdi-spec-dirs": [cdi]}).to_string(),
    )
    .unwrap();
    let dk = Docker::start(&engines, &node, &d, &daemon_json);
    dk.import(&rootfs_tar(&node), "gpushare-test:1");
    let name = node.id(0);
    let out = dk.run(&[
        "run",
        "-d",
        "--name",
        &name,
        "--cap-add",
        "MKNOD",
        "--device",
        "gpushare.io/gpu=1",
        "gpushare-test:1",
        "sleep",
        "300",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let id = text(&out).trim().to_owned();
    assert_sees_only_gpu_1(&text(&dk.run(&["exec", &name, "sh", "-c", GPU1_SCRIPT])));
    let out = std::process::Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let held = &status["gpus"][1]["containers"];
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{status}");
    assert_eq!(held[0]["id"], id.as_str(), "{status}");
    assert!(dk.run(&["rm", "-f", &name]).status.success());
    assert!(node.ledger().is_empty(), "docker rm released it");

    // Two of its devices: two GPUs, refused with gpushare's reason.
    let out = dk.run(&[
        "run",
        "--rm",
        "--device",
        "gpushare.io/gpu=0",
        "--device",
        "gpushare.io/gpu=1",
        "gpushare-test:1",
        "true",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("asks for 2 GPUs"),
        "docker shows gpushare's reason: {}",
        text(&out)
    );
    assert!(node.ledger().is_empty());
}

/// A CDI spec file in a directory podman reads (it reads only /etc/cdi and
/// /var/run/cdi), removed on drop.
struct SystemCdiSpec(PathBuf);

impl Drop for SystemCdiSpec {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn podman_cdi_device_gives_gpu_1_and_two_devices_are_refused() {
    let node = Node::new("podman-cdi");
    cdi_walk(&node, &Podman::debian12());
}

#[test]
fn podman_5_cdi_device_gives_gpu_1_and_two_devices_are_refused() {
    let node = Node::new("podman5-cdi");
    cdi_walk(&node, &Podman::debian13(node.dir.path()));
}

/// podman reads every spec in /var/run/cdi, and two specs of one kind
/// naming the same devices conflict: one CDI walk at a time.
static SYSTEM_CDI_DIR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn cdi_walk(node: &Node, podman: &Podman) {
    let _only_spec = SYSTEM_CDI_DIR.lock().unwrap_or_else(|e| e.into_inner());
    let spec = SystemCdiSpec(PathBuf::from(format!(
        "/var/run/cdi/gpushare-test-{}.yaml",
        std::process::id()
    )));
    cdi_generate(node, &spec.0);
    // No hooks directory of gpushare's: the CDI device brings the hook.
    let empty = node.dir.path().join("no-hooks.d");
    std::fs::create_dir_all(&empty).unwrap();
    let out = podman.run(
        &empty,
        &node.rootfs,
        &["--cap-add", "MKNOD", "--device", "gpushare.io/gpu=1"],
        &["sh", "-c", GPU1_SCRIPT],
    );
    assert_sees_only_gpu_1(&text(&out));
    assert!(node.ledger().is_empty(), "released at poststop");
    let out = podman.run(
        &empty,
        &node.rootfs,
        &[
            "--device",
            "gpushare.io/gpu=1",
            "--device",
            "gpushare.io/gpu=0",
        ],
        &["true"],
    );
    assert!(
        !out.status.success() && text(&out).contains("asks for 2 GPUs"),
        "{}",
        text(&out)
    );
    assert!(node.ledger().is_empty());
}
