//! MPS with NVIDIA's real control daemon (Debian `nvidia-cuda-mps`, which
//! runs without a GPU) on a simulated node. Root; see common/mod.rs.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::*;
use serde_json::{json, Value};

const CONTROL: &str = "/usr/bin/nvidia-cuda-mps-control";

/// A simulated node whose daemons are stopped again whatever happens.
struct MpsNode(Node);

impl MpsNode {
    fn new(tag: &str, extra_config: &str) -> MpsNode {
        assert!(
            Path::new(CONTROL).is_file(),
            "{CONTROL} is missing: apt-get install nvidia-cuda-mps (Debian non-free)"
        );
        let node = Node::new(tag);
        if !extra_config.is_empty() {
            let text = std::fs::read_to_string(&node.config).unwrap();
            std::fs::write(&node.config, format!("{text}\n{extra_config}")).unwrap();
        }
        // The daemon's client runs inside the containers: copy it and the
        // libraries it links into the rootfs.
        copy_with_libraries(CONTROL, &node.rootfs);
        MpsNode(node)
    }

    fn mps(&self, args: &[&str]) -> Output {
        Command::new(CLI)
            .env("GPUSHARE_CONFIG", &self.0.config)
            .env("LD_PRELOAD", "")
            .env("EVIL_MARKER_FROM_THE_SHELL", "1")
            .arg("mps")
            .args(args)
            .output()
            .unwrap()
    }

    fn status(&self) -> Vec<Value> {
        let out = self.mps(&["status", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap()["gpus"]
            .as_array()
            .unwrap()
            .clone()
    }

    fn mps_root(&self) -> PathBuf {
        self.0.dir.path().join("node/mps")
    }

    fn control_log(&self, gpu: u32) -> String {
        let uuid = self.status()[gpu as usize]["uuid"]
            .as_str()
            .unwrap()
            .to_owned();
        std::fs::read_to_string(self.mps_root().join(uuid).join("log/control.log"))
            .unwrap_or_default()
    }
}

impl Drop for MpsNode {
    fn drop(&mut self) {
        let _ = self.mps(&["stop"]);
    }
}

fn copy_with_libraries(binary: &str, rootfs: &Path) {
    let ldd = Command::new("ldd").arg(binary).output().unwrap();
    let mut files = vec![binary.to_owned()];
    for word in String::from_utf8_lossy(&ldd.stdout).split_whitespace() {
        if word.starts_with('/') {
            files.push(word.to_owned());
        }
    }
    for f in files {
        let target = rootfs.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(&f, &target).unwrap();
    }
}

/// The daemons' pids (with start times) as status reports them.
fn daemons(m: &MpsNode) -> Vec<(i32, u64)> {
    m.status()
        .iter()
        .filter_map(|g| g["pid"].as_i64())
        .map(|pid| {
            (
                pid as i32,
                gpushare::ledger::process_start_time(pid as i32).unwrap_or(0),
            )
        })
        .collect()
}

const CLIENT: &str = "env | grep CUDA_MPS; echo get_default_active_thread_percentage | /usr/bin/nvidia-cuda-mps-control; grep ' /dev/shm ' /proc/self/mountinfo";

#[test]
fn a_container_on_gpu_1_is_a_client_of_gpu_1s_daemon_only() {
    let m = MpsNode::new("mps-client", "");
    let out = m.mps(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("compute mode skipped: simulated GPU"),
        "{}",
        text(&out)
    );
    let st = m.status();
    assert!(st.iter().all(|g| g["state"] == "running"), "{st:?}");
    let pids = daemons(&m);
    // The daemons get an environment of gpushare's making, nothing of the
    // operator's shell (the test's LD_PRELOAD and PATH below would show).
    for (pid, _) in &pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            !environ.contains("LD_PRELOAD")
                && !environ.contains("EVIL_MARKER")
                && environ.contains("PATH=/usr/sbin:/usr/bin:/sbin:/bin"),
            "{environ:?}"
        );
        assert!(
            environ.contains("CUDA_MPS_PIPE_DIRECTORY=")
                && environ.contains("CUDA_VISIBLE_DEVICES=GPU-"),
            "{environ:?}"
        );
    }
    assert_eq!(pids.len(), 2);
    assert!(pids
        .iter()
        .all(|(p, s)| gpushare::ledger::process_matches(*p, Some(*s))));
    // Start again: nothing changes.
    let again = m.mps(&["start", "--gpu", "1"]);
    assert!(text(&again).contains("already running"), "{}", text(&again));
    assert_eq!(daemons(&m), pids);

    let b = m.0.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
        CLIENT,
    );
    let out = m.0.run(&b, &m.0.id(0));
    let t = text(&out);
    assert!(
        t.contains("\n100.0") || t.starts_with("100.0") || t.contains("100.0\n"),
        "the daemon answered inside the container: {t}"
    );
    assert!(
        t.contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30")
            && t.contains("CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"),
        "{t}"
    );
    assert!(
        t.contains("gpushare-mps-shm"),
        "its /dev/shm is the daemons' tmpfs: {t}"
    );
    assert!(
        m.control_log(1)
            .contains("Cmd:get_default_active_thread_percentage"),
        "GPU 1's daemon saw it"
    );
    assert!(
        !m.control_log(0)
            .contains("Cmd:get_default_active_thread_percentage"),
        "GPU 0's did not"
    );

    // The hook used alone makes the same client, mounting live.
    let b = m.0.bundle(
        "alone",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=20",
        ],
        CLIENT,
    );
    m.0.with_hook(&b);
    let out = m.0.runc_run(&b, &m.0.id(1));
    let t = text(&out);
    assert!(t.contains("100.0") && t.contains("gpushare-mps-shm"), "{t}");
    assert_eq!(
        m.control_log(1)
            .matches("Cmd:get_default_active_thread_percentage")
            .count(),
        2
    );

    // A container user who is not root reaches the daemon as well.
    let b = m.0.bundle("user", &["NVIDIA_VISIBLE_DEVICES=1"], CLIENT);
    m.0.edit_spec(&b, |s| {
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000})
    });
    let t = text(&m.0.run(&b, &m.0.id(2)));
    assert!(t.contains("100.0"), "uid 1000: {t}");
    assert_eq!(
        m.control_log(1)
            .matches("Cmd:get_default_active_thread_percentage")
            .count(),
        3
    );

    let out = m.mps(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        pids.iter()
            .all(|(p, s)| !gpushare::ledger::process_matches(*p, Some(*s))),
        "no daemon left"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(m.mps_root().to_str().unwrap()),
        "no mount left"
    );
    assert!(m.status().iter().all(|g| g["state"] == "stopped"));
}

#[test]
fn a_killed_daemon_shows_dead_and_start_recovers_it() {
    let m = MpsNode::new("mps-dead", "");
    // A start that cannot run the daemon leaves no mount and no pipe behind.
    let bad = m.0.dir.path().join("bad.toml");
    let text_cfg = std::fs::read_to_string(&m.0.config).unwrap();
    std::fs::write(
        &bad,
        text_cfg.replace("[mps]\n", "[mps]\ncontrol = \"/nonexistent/mps-control\"\n"),
    )
    .unwrap();
    let out = Command::new(CLI)
        .env("GPUSHARE_CONFIG", &bad)
        .args(["mps", "start"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("/nonexistent/mps-control") && text(&out).contains("nvidia-cuda-mps"),
        "{}",
        text(&out)
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(m.mps_root().to_str().unwrap()),
        "no mount left"
    );
    assert!(m.status().iter().all(|g| g["state"] == "stopped"));
    assert!(m.mps(&["start"]).status.success());
    let pid = m.status()[0]["pid"].as_i64().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let mut st = m.status();
    for _ in 0..50 {
        if st[0]["state"] == "dead" {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        st = m.status();
    }
    assert_eq!(st[0]["state"], "dead", "{st:?}");
    assert_eq!(st[1]["state"], "running");

    // On a dead daemon's GPU a share is refused; a plain container runs
    // there, but not as an MPS client.
    let b = m.0.bundle(
        "share",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
        "true",
    );
    let out = m.0.create(&b, &m.0.id(0));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("gpushare mps start --gpu 0"),
        "{}",
        text(&out)
    );
    let b = m.0.bundle(
        "plain",
        &["NVIDIA_VISIBLE_DEVICES=0"],
        "env | grep CUDA_MPS || echo no-mps",
    );
    let t = text(&m.0.run(&b, &m.0.id(1)));
    assert!(t.contains("no-mps"), "{t}");

    let out = m.mps(&["start"]);
    assert!(
        text(&out).contains("GPU 0") && text(&out).contains("started"),
        "{}",
        text(&out)
    );
    assert!(m.status().iter().all(|g| g["state"] == "running"));
}

#[test]
fn refusals_share_without_mps_over_the_budget_and_malformed_limits() {
    let m = MpsNode::new(
        "mps-refuse",
        "[policy]\nmax_thread_percentage_per_gpu = 100\n",
    );
    let refused = |name: &str, env: &[&str], needle: &str| {
        let b = m.0.bundle(name, env, "true");
        let before = std::fs::read(b.join("config.json")).unwrap();
        let out = m.0.create(&b, &format!("{}-{name}", m.0.tag));
        assert_eq!(out.status.code(), Some(2), "{name}: {}", text(&out));
        assert!(text(&out).contains(needle), "{name}: {}", text(&out));
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), before);
    };
    refused(
        "nomps",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=10",
        ],
        "gpushare mps start --gpu 1",
    );
    assert!(m.mps(&["start", "--gpu", "1"]).status.success());
    let b = m.0.bundle(
        "big",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=70",
        ],
        "sleep 100",
    );
    let out = m.0.create(&b, &m.0.id(0));
    assert!(out.status.success(), "{}", text(&out));
    refused(
        "over",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=40",
        ],
        "budget",
    );
    refused(
        "limit",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=2X",
        ],
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT",
    );
    refused(
        "limit-dev",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=1=2G",
        ],
        "0=<size>",
    );
    let ledger = m.0.ledger();
    assert_eq!(ledger.len(), 1, "only the container that fit: {ledger:?}");
    assert_eq!(ledger[0]["thread_percentage"], json!(70.0));
}

#[test]
fn on_a_real_driver_the_compute_mode_is_exclusive_while_mps_runs_and_restored() {
    // A node whose GPUs come from the driver's procfs, and an nvidia-smi
    // that records what it is asked and says the GPU's mode is Default.
    let m = MpsNode::new("mps-mode", "");
    let root = m.0.dir.path().join("driver-root");
    let info = root.join("proc/driver/nvidia/gpus/0000:17:00.0");
    std::fs::create_dir_all(&info).unwrap();
    std::fs::write(
        info.join("information"),
        "Model: \t\t Tesla T4\nGPU UUID: \t GPU-5b2d0c11-0000-4000-8000-000000000000\nBus Location: \t 0000:17:00.0\nDevice Minor: \t 0\n",
    )
    .unwrap();
    std::fs::write(
        &m.0.config,
        format!(
            "[runtime]\nstate_dir = {:?}\n[devices]\nroot = {:?}\ninventory = \"procfs\"\n[mps]\nroot = {:?}\n",
            m.0.dir.path().join("state").display().to_string(),
            root.display().to_string(),
            m.mps_root().display().to_string(),
        ),
    )
    .unwrap();
    let bin = m.0.dir.path().join("fake-bin");
    std::fs::create_dir(&bin).unwrap();
    let calls = m.0.dir.path().join("nvidia-smi.calls");
    std::fs::write(
        bin.join("nvidia-smi"),
        format!("#!/bin/sh\necho \"$*\" >> {}\ncase \"$*\" in *--query-gpu=compute_mode*) echo Default;; esac\n", calls.display()),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(bin.join("nvidia-smi"))
            .unwrap()
            .permissions(),
        0o755,
    );
    Command::new("chmod")
        .arg("755")
        .arg(bin.join("nvidia-smi"))
        .status()
        .unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let mps = |args: &[&str]| {
        Command::new(CLI)
            .env("GPUSHARE_CONFIG", &m.0.config)
            .env("PATH", &path)
            .arg("mps")
            .args(args)
            .output()
            .unwrap()
    };
    let out = mps(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("EXCLUSIVE_PROCESS (was Default)"),
        "{}",
        text(&out)
    );
    let out = mps(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("DEFAULT restored"), "{}", text(&out));
    let log = std::fs::read_to_string(&calls).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines,
        [
            "-i GPU-5b2d0c11-0000-4000-8000-000000000000 --query-gpu=compute_mode --format=csv,noheader",
            "-i GPU-5b2d0c11-0000-4000-8000-000000000000 -c EXCLUSIVE_PROCESS",
            "-i GPU-5b2d0c11-0000-4000-8000-000000000000 -c DEFAULT",
        ]
    );
}
