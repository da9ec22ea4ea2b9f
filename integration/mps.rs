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
        Command::new(cli())
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

/// Whether the process `pid` that started at `start` still runs.
fn alive(pid: i32, start: u64) -> bool {
    gpushare::sys::Process { pid, start }.is_alive()
}

/// The daemons' pids (with start times) as status reports them.
fn daemons(m: &MpsNode) -> Vec<(i32, u64)> {
    m.status()
        .iter()
        .filter_map(|g| g["pid"].as_i64())
        .map(|pid| {
            (
                pid as i32,
                gpushare::sys::Process::find(pid as i32).map_or(0, |p| p.start),
            )
        })
        .collect()
}

/// A client: its MPS variables, the daemon's answer, a command only a
/// container sends (the daemon logs it as unknown), and its /dev/shm.
const CLIENT: &str = "env | grep CUDA_MPS; echo get_default_active_thread_percentage | /usr/bin/nvidia-cuda-mps-control; \
    echo from-a-container | /usr/bin/nvidia-cuda-mps-control; grep ' /dev/shm ' /proc/self/mountinfo";
const CLIENT_MARK: &str = "Cmd:from-a-container";

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
    assert!(pids.iter().all(|(p, s)| alive(*p, *s)));
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
        m.control_log(1).contains(CLIENT_MARK),
        "GPU 1's daemon saw it"
    );
    assert!(!m.control_log(0).contains(CLIENT_MARK), "GPU 0's did not");

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
    assert_eq!(m.control_log(1).matches(CLIENT_MARK).count(), 2);

    // A container user who is not root reaches the daemon as well.
    let b = m.0.bundle("user", &["NVIDIA_VISIBLE_DEVICES=1"], CLIENT);
    m.0.edit_spec(&b, |s| {
        s["process"]["user"] = json!({"uid": 1000, "gid": 1000})
    });
    let t = text(&m.0.run(&b, &m.0.id(2)));
    assert!(t.contains("100.0"), "uid 1000: {t}");
    assert_eq!(m.control_log(1).matches(CLIENT_MARK).count(), 3);

    let out = m.mps(&["stop"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(pids.iter().all(|(p, s)| !alive(*p, *s)), "no daemon left");
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
    let out = Command::new(cli())
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
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=10",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=1=2G",
        ],
        "0=<size>",
    );
    // A client that asks for no share holds the whole GPU: over the budget.
    refused(
        "whole",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        "a whole-GPU share (100%: the container sets no CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)",
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
        Command::new(cli())
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

/// What a hostile root client on GPU 0 tries against the daemon its
/// neighbours depend on (the control utility is in its image).
const ATTACK: &str = "echo quit | nvidia-cuda-mps-control; \
    touch /tmp/nvidia-mps/x && echo CREATED; \
    dd if=/dev/zero of=/tmp/nvidia-mps/big bs=1M count=20 2>/dev/null && echo FILLED; \
    mv /tmp/nvidia-mps/control /tmp/nvidia-mps/c2 && echo RENAMED; \
    rm /tmp/nvidia-mps/control_lock && echo REMOVED; \
    CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps nvidia-cuda-mps-control -d && echo IMPOSTOR; \
    echo get_default_active_thread_percentage | nvidia-cuda-mps-control; \
    echo set_default_active_thread_percentage 5 | nvidia-cuda-mps-control; \
    echo set_default_device_pinned_mem_limit 0 1M | nvidia-cuda-mps-control; \
    grep ' /tmp/nvidia-mps' /proc/self/mountinfo";

/// `default`: the daemon's default share as the attacker first finds it.
fn assert_attack_failed(t: &str, default: &str) {
    assert!(
        t.contains("Not enough privilege to execute quit command"),
        "quit refused: {t}"
    );
    for done in ["CREATED", "FILLED", "RENAMED", "REMOVED", "IMPOSTOR"] {
        assert!(!t.contains(done), "{done}: {t}");
    }
    assert!(t.contains("Read-only file system"), "{t}");
    assert!(
        t.lines().any(|l| l == default),
        "a client still gets its answer ({default}): {t}"
    );
    let pipe = t
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/tmp/nvidia-mps"))
        .unwrap_or_else(|| panic!("the pipe directory is mounted: {t}"));
    let opts: Vec<&str> = pipe.split(' ').nth(5).unwrap().split(',').collect();
    assert!(
        ["ro", "nosuid", "nodev", "noexec"]
            .iter()
            .all(|o| opts.contains(o)),
        "{pipe}"
    );
    assert!(
        t.lines()
            .any(|l| l.split(' ').nth(4) == Some("/tmp/nvidia-mps/control_privileged")),
        "control_privileged is masked: {t}"
    );
}

#[test]
fn a_tenant_cannot_stop_rename_fill_or_impersonate_the_daemon_nor_lower_a_neighbours_share() {
    let m = MpsNode::new("mps-tenant", "");
    assert!(m.mps(&["start"]).status.success());
    let before = m.status()[0]["pid"].as_i64().unwrap();
    let pipe = m
        .mps_root()
        .join(m.status()[0]["uuid"].as_str().unwrap())
        .join("pipe");
    let listing = || {
        let mut v: Vec<String> = std::fs::read_dir(&pipe)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    let files = listing();

    // Through the shim.
    let b =
        m.0.bundle("attacker", &["NVIDIA_VISIBLE_DEVICES=0"], ATTACK);
    assert_attack_failed(&text(&m.0.run(&b, &m.0.id(0))), "100.0");
    let st = m.status();
    assert_eq!(st[0]["state"], "running", "{st:?}");
    assert_eq!(st[0]["pid"].as_i64(), Some(before), "the same daemon");
    assert_eq!(listing(), files, "nothing made, renamed or removed there");
    // The defaults it lowered show as drift.
    assert_eq!(st[0]["default_active_thread_percentage"], json!(5.0));
    assert_eq!(st[0]["default_pinned_mem_limit"], json!("1M"));
    assert_eq!(st[0]["drift"], json!(true));
    assert_eq!(st[1]["drift"], json!(false));
    let line = text(&m.mps(&["status", "--gpu", "0"]));
    assert!(
        line.contains("default share 5%") && line.contains("drifted"),
        "{line}"
    );

    // The next client, asking for no share, still has its whole share,
    // explicitly; one with a share keeps it.
    let b =
        m.0.bundle("next", &["NVIDIA_VISIBLE_DEVICES=0"], "env | grep CUDA_MPS");
    let t = text(&m.0.run(&b, &m.0.id(1)));
    assert!(t.contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100"), "{t}");

    // The hook alone gives the same mounts.
    let b =
        m.0.bundle("attacker-alone", &["NVIDIA_VISIBLE_DEVICES=0"], ATTACK);
    m.0.with_hook(&b);
    assert_attack_failed(&text(&m.0.runc_run(&b, &m.0.id(2))), "5.0");
    assert_eq!(m.status()[0]["pid"].as_i64(), Some(before));
    assert_eq!(listing(), files);
    // Under the hook alone the environment is the container's own, so a
    // client asking for no share is not given one explicitly there: the
    // daemon's default (put back by `mps run`) applies.
    assert!(m.0.ledger().is_empty());
}

#[test]
fn each_gpus_shared_memory_is_its_own_and_goes_with_its_daemon() {
    let m = MpsNode::new("mps-shm", "");
    let cfg = std::fs::read_to_string(&m.0.config).unwrap();
    std::fs::write(
        &m.0.config,
        cfg.replace("[mps]\n", "[mps]\nshm_size = \"64M\"\n"),
    )
    .unwrap();
    let out = m.mps(&["start"]);
    assert!(out.status.success(), "{}", text(&out));
    let write = m.0.bundle(
        "writer",
        &["NVIDIA_VISIBLE_DEVICES=0"],
        "echo secret-of-gpu-0 > /dev/shm/left-behind && chmod 600 /dev/shm/left-behind; grep ' /dev/shm ' /proc/self/mountinfo",
    );
    let t = text(&m.0.run(&write, &m.0.id(0)));
    assert!(t.contains("size=65536k"), "mps.shm_size: {t}");
    let read = |name: &str, gpu: u32, n: usize| {
        let b = m.0.bundle(
            name,
            &[&format!("NVIDIA_VISIBLE_DEVICES={gpu}")],
            "cat /dev/shm/left-behind || echo NOT-THERE",
        );
        text(&m.0.run(&b, &m.0.id(n)))
    };
    let t = read("other-gpu", 1, 1);
    assert!(
        t.contains("NOT-THERE") && !t.contains("secret-of-gpu-0"),
        "{t}"
    );
    // Clients of one GPU do share it: that is how MPS works (SECURITY.md).
    assert!(read("same-gpu", 0, 2).contains("secret-of-gpu-0"));
    let shm0 = m
        .mps_root()
        .join(m.status()[0]["uuid"].as_str().unwrap())
        .join("shm");
    assert!(shm0.join("left-behind").exists());
    assert!(m.mps(&["stop", "--gpu", "0"]).status.success());
    assert!(
        !shm0.exists(),
        "emptied, unmounted and removed with its daemon"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(shm0.to_str().unwrap()));
    assert!(
        mounts.contains(m.mps_root().to_str().unwrap()),
        "GPU 1's stays"
    );
}

#[test]
fn mps_run_restarts_a_killed_daemon_puts_back_drifted_defaults_and_stops_all_on_sigterm() {
    let m = MpsNode::new("mps-run", "");
    let log = m.0.dir.path().join("mps-run.log");
    let mut run = Command::new(cli())
        .env("GPUSHARE_CONFIG", &m.0.config)
        .args(["mps", "run"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let wait_for = |what: &str, secs: u64, ok: &dyn Fn(&[Value]) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let st = m.status();
            if ok(&st) {
                return st;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what} within {secs} s: {st:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    let st = wait_for("both daemons running", 10, &|st| {
        st.iter().all(|g| g["state"] == "running")
    });
    let first: Vec<i64> = st.iter().map(|g| g["pid"].as_i64().unwrap()).collect();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first[0] as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let st = wait_for("GPU 0's daemon running again", 10, &|st| {
        st[0]["state"] == "running" && st[0]["pid"].as_i64() != Some(first[0])
    });
    let second = st[0]["pid"].as_i64().unwrap();
    let second_start = gpushare::sys::Process::find(second as i32).map_or(0, |p| p.start);
    let first_start = gpushare::sys::Process::find(first[1] as i32).map_or(0, |p| p.start);
    assert_eq!(st[1]["pid"].as_i64(), Some(first[1]), "GPU 1's untouched");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains(&format!("daemon pid {} is dead", first[0])) && said.contains("restarting"),
        "{said}"
    );

    // A client lowers GPU 1's defaults; the supervisor puts them back.
    let b = m.0.bundle(
        "lower",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        "echo set_default_active_thread_percentage 5 | nvidia-cuda-mps-control; \
         echo set_default_device_pinned_mem_limit 0 1M | nvidia-cuda-mps-control",
    );
    assert!(m.0.run(&b, &m.0.id(0)).status.success());
    wait_for("GPU 1's defaults put back", 10, &|st| {
        st[1]["default_active_thread_percentage"] == json!(100.0) && st[1]["drift"] == json!(false)
    });
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("restored default active thread percentage 5 -> 100")
            && said.contains("restored default pinned memory limit 1M -> none"),
        "{said}"
    );

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = run.wait().unwrap();
    assert!(status.success(), "{status:?}");
    for (pid, start) in [(second, second_start), (first[1], first_start)] {
        assert!(
            !alive(pid as i32, start),
            "daemon {pid} is gone: {}",
            std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default()
        );
    }
    assert!(m.status().iter().all(|g| g["state"] == "stopped"));
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !mounts.contains(m.mps_root().to_str().unwrap()),
        "no mount left"
    );
}
