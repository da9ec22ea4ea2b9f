//! gpushare-hook used alone, as podman and CRI-O `hooks.d` and containerd's
//! base spec use it: no shim, the hook does the whole job on the live
//! container. Root; see common/mod.rs for what it needs (podman too).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::json;

/// GPU1_SCRIPT, and the node's mount flags.
const GPU1_MOUNTS: &str = "grep nvidia1 /proc/self/mountinfo";

fn assert_sees_only_gpu_1_mounted(t: &str) {
    assert_sees_only_gpu_1(t);
    assert!(
        t.contains("nosuid") && t.contains("noexec"),
        "the node is mounted nosuid,noexec: {t}"
    );
}

#[test]
fn runc_with_the_hook_in_the_spec_gives_gpu_1_only() {
    let node = Node::new("alone");
    let b = node.bundle(
        "b",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        &format!("{GPU1_SCRIPT}; {GPU1_MOUNTS}; sleep 2"),
    );
    node.with_hook(&b);
    let id = node.id(0);
    let child = node
        .runc()
        .args(["run", "--bundle"])
        .arg(&b)
        .arg(&id)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // While it runs, the ledger holds it with its pid.
    let mut held = Vec::new();
    for _ in 0..50 {
        held = node.ledger();
        if !held.is_empty() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(40));
    }
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (held[0]["gpu"].as_u64(), held[0]["state"].as_str()),
        (Some(1), Some("running"))
    );
    let out = child.wait_with_output().unwrap();
    assert_sees_only_gpu_1_mounted(&text(&out));
    assert!(node.ledger().is_empty(), "poststop released it");
}

#[test]
fn the_hook_alone_refuses_two_gpus_and_runc_creates_nothing() {
    let node = Node::new("alone-refused");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0,1"], "echo ran");
    node.with_hook(&b);
    let id = node.id(0);
    let out = node.runc_run(&b, &id);
    let t = text(&out);
    assert!(!out.status.success() && !t.contains("\nran"), "{t}");
    assert!(
        t.contains("policy.max_gpus_per_container"),
        "runc shows the hook's line: {t}"
    );
    assert!(!node.runc_knows(&id));
    assert!(node.ledger().is_empty());
}

#[test]
fn a_dev_symlinked_to_a_host_path_is_resolved_inside_the_rootfs() {
    let node = Node::new("hostile-dev");
    let host_target = node.dir.path().join("host-target");
    std::fs::create_dir(&host_target).unwrap();
    std::fs::write(host_target.join("keep"), "host").unwrap();
    // A rootfs of its own whose /dev points at the host directory.
    let rootfs = node.dir.path().join("hostile-rootfs");
    std::fs::create_dir(&rootfs).unwrap();
    for d in ["bin", "proc", "sys", "tmp"] {
        copy_dir(&node.rootfs.join(d), &rootfs.join(d));
    }
    std::os::unix::fs::symlink(&host_target, rootfs.join("dev")).unwrap();
    let b = node.bundle(
        "b",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        &format!("{GPU1_SCRIPT}; {GPU1_MOUNTS}"),
    );
    node.edit_spec(&b, |s| s["root"]["path"] = json!(rootfs));
    node.with_hook(&b);
    let out = node.runc_run(&b, &node.id(0));
    assert_sees_only_gpu_1_mounted(&text(&out));
    // Nothing of gpushare's lands on the host side. (runc 1.1 itself writes
    // its /dev/fd, /dev/stdin, … links through such a /dev link; those are
    // runc's, and not what this test is about.)
    let ours: Vec<String> = std::fs::read_dir(&host_target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("nvidia"))
        .collect();
    assert!(ours.is_empty(), "the host directory got {ours:?}");
    let inside = rootfs.join(host_target.strip_prefix("/").unwrap());
    assert!(
        inside.is_dir(),
        "the link resolved inside the rootfs, at {inside:?}"
    );
    assert_eq!(
        std::fs::read_to_string(host_target.join("keep")).unwrap(),
        "host"
    );
}

#[test]
fn a_node_that_is_a_symlink_to_a_host_file_is_replaced_inside_the_rootfs() {
    let node = Node::new("hostile-node");
    let host_file = node.dir.path().join("host-file");
    std::fs::write(&host_file, "host secret").unwrap();
    // No /dev tmpfs: the rootfs's own /dev is used, with a planted link.
    std::fs::create_dir_all(node.rootfs.join("dev")).unwrap();
    std::os::unix::fs::symlink(&host_file, node.rootfs.join("dev/nvidia1")).unwrap();
    let b = node.bundle(
        "b",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        "cat /dev/nvidia1; grep nvidia1 /proc/self/mountinfo",
    );
    node.edit_spec(&b, |s| {
        let mounts = s["mounts"].as_array_mut().unwrap();
        mounts.retain(|m| !m["destination"].as_str().unwrap().starts_with("/dev"));
    });
    node.with_hook(&b);
    let out = node.runc_run(&b, &node.id(0));
    let t = text(&out);
    assert!(
        t.contains("can't open '/dev/nvidia1': No such device or address"),
        "{t}"
    );
    assert!(!t.contains("host secret"), "{t}");
    assert_eq!(
        std::fs::read_to_string(&host_file).unwrap(),
        "host secret",
        "the host file is untouched"
    );
    assert!(std::fs::symlink_metadata(&host_file).unwrap().is_file());
}

#[test]
fn podman_with_the_hooks_dir_gives_gpu_1_only() {
    let node = Node::new("podman");
    hooks_dir_gives_gpu_1(&node, &Podman::debian12());
}

#[test]
fn podman_5_with_the_hooks_dir_gives_gpu_1_only() {
    let node = Node::new("podman5");
    hooks_dir_gives_gpu_1(&node, &Podman::debian13(node.dir.path()));
}

fn hooks_dir_gives_gpu_1(node: &Node, podman: &Podman) {
    let hooks = podman_hooks(node);
    let name = node.id(0);
    let out = podman.run(
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
        &["sh", "-c", &format!("{GPU1_SCRIPT}; {GPU1_MOUNTS}")],
    );
    assert_sees_only_gpu_1_mounted(&text(&out));
    assert!(node.ledger().is_empty(), "poststop released it");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        let ft = e.file_type().unwrap();
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path()).unwrap(), target).unwrap();
        } else if ft.is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Removes the test cgroup once its processes are gone.
struct Cgroup(std::path::PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            if std::fs::remove_dir(&self.0).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[test]
fn cgroup_v2_a_runtimes_deny_all_program_is_extended_by_exactly_the_gpu() {
    use gpushare::bpf::{self, Allow};
    use std::os::fd::AsFd;
    let node = Node::new("bpf");
    let unified = Path::new("/sys/fs/cgroup/unified");
    let unified = if unified.join("cgroup.procs").exists() {
        unified
    } else {
        Path::new("/sys/fs/cgroup")
    };
    let fs = nix::sys::statfs::statfs(unified).unwrap();
    assert_eq!(
        fs.filesystem_type(),
        nix::sys::statfs::CGROUP2_SUPER_MAGIC,
        "no cgroup2 hierarchy at {unified:?}"
    );
    let cg = Cgroup(unified.join(node.id(0)));
    std::fs::create_dir(&cg.0).unwrap();
    let dir = std::fs::File::open(&cg.0).unwrap();
    // As a runtime does: /dev/null allowed, everything else denied,
    // attached with BPF_F_ALLOW_MULTI.
    let runtime = bpf::load(&bpf::program(&[Allow { major: 1, minor: 3 }], None)).unwrap();
    bpf::attach(dir.as_fd(), runtime.as_fd(), bpf::BPF_F_ALLOW_MULTI, None).unwrap();
    let dev = node.dir.path().join("node/dev");
    let nvidia1 = gpushare::edits::DeviceEdit {
        path: "/dev/nvidia1".into(),
        host_path: dev.join("nvidia1"),
        major: 195,
        minor: 1,
        file_mode: 0o666,
    };
    let script = format!(
        "echo $$ > {}/cgroup.procs && cat {}/nvidia1; cat {}/nvidia0; cat /dev/null && echo null-ok",
        cg.0.display(),
        dev.display(),
        dev.display()
    );
    let before = text(&Command::new("sh").args(["-c", &script]).output().unwrap());
    assert!(
        before.contains("nvidia1: Operation not permitted") && before.contains("null-ok"),
        "the runtime's program is in force: {before}"
    );
    {
        use gpushare::live::Host;
        let allow = [bpf::Allow {
            major: nvidia1.major as u32,
            minor: nvidia1.minor as u32,
        }];
        gpushare::live::System
            .allow_device_program(&cg.0, &allow)
            .unwrap();
    }
    let (ids, _) = bpf::attached(dir.as_fd()).unwrap();
    assert_eq!(
        ids.len(),
        1,
        "the runtime's program was replaced, not joined: {ids:?}"
    );
    let out = Command::new("sh").args(["-c", &script]).output().unwrap();
    let t = text(&out);
    assert!(
        t.contains("nvidia1: No such device or address"),
        "the GPU opens (ENXIO: no driver): {t}"
    );
    assert!(
        t.contains("nvidia0: Operation not permitted"),
        "another GPU is denied: {t}"
    );
    assert!(
        t.contains("null-ok"),
        "what the runtime allowed still is: {t}"
    );
}

/// The hooks directory podman reads in these tests: the shipped hooks.d
/// file, pointed at this build and this node.
fn podman_hooks(node: &Node) -> std::path::PathBuf {
    let hooks = node.dir.path().join("hooks.d");
    std::fs::create_dir_all(&hooks).unwrap();
    let mut file: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("hooks/oci-gpushare-hook.json"),
        )
        .unwrap(),
    )
    .unwrap();
    file["hook"]["path"] = json!(hook());
    file["hook"]["env"] = json!([format!("GPUSHARE_CONFIG={}", node.config.display())]);
    std::fs::write(hooks.join("gpushare.json"), file.to_string()).unwrap();
    hooks
}

#[test]
fn podman_in_a_user_namespace_gets_its_gpu_driver_files_and_mps() {
    let node = Node::new("podman-userns");
    user_namespace_walk(&node, &Podman::debian12());
}

#[test]
fn podman_5_in_a_user_namespace_gets_its_gpu_driver_files_and_mps() {
    let node = Node::new("podman5-userns");
    user_namespace_walk(&node, &Podman::debian13(node.dir.path()));
}

fn user_namespace_walk(node: &Node, podman_of: &Podman) {
    require_driver_userspace();
    let hooks = podman_hooks(node);
    // The image's files belong to the container's root, host uid 100000,
    // as podman's storage makes them for a --uidmap container.
    let rootfs = node.probe_rootfs("userns");
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    let ok = Command::new("chown")
        .args(["-R", "100000:100000"])
        .arg(&rootfs)
        .status()
        .unwrap();
    assert!(ok.success());
    std::fs::set_permissions(node.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    gpushare(node, &["mps", "start", "--gpu", "1"]);
    let name = node.id(0);
    let out = podman_of.run(
        &hooks,
        &rootfs,
        &[
            "-d",
            "--name",
            &name,
            "--uidmap",
            "0:100000:65536",
            "--gidmap",
            "0:100000:65536",
            "-e",
            "NVIDIA_VISIBLE_DEVICES=1",
            "-e",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
        ],
        &["sleep", "300"],
    );
    assert!(out.status.success(), "{}", text(&out));
    let podman = |args: &[&str]| podman_of.command().args(args).output().unwrap();
    let exec = |script: &str| text(&podman(&["exec", &name, "sh", "-c", script]));
    let t = exec(&format!(
        "{USERNS_GPU1_SCRIPT}; CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps cuda-probe; ls /tmp/nvidia-mps"
    ));
    assert_user_namespaced_gpu_1(&t);
    assert!(
        t.contains("libcuda: cuInit=805 (CUDA_ERROR_MPS_CONNECTION_FAILED)")
            && t.contains("nvml: nvmlInit_v2=9 (Driver Not Loaded)"),
        "the driver's libraries load, and libcuda reaches for GPU 1's MPS daemon: {t}"
    );
    assert!(t.contains("control"), "the MPS pipe directory: {t}");
    // The device cgroup, seen from the host: GPU 1 and the control nodes,
    // never GPU 0.
    let pid = text(&podman(&["inspect", "--format", "{{.State.Pid}}", &name]));
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", pid.trim())).unwrap();
    if let Some(path) = cgroup
        .lines()
        .find_map(|l| l.split_once(":devices:").map(|(_, p)| p.to_owned()))
    {
        let list =
            std::fs::read_to_string(format!("/sys/fs/cgroup/devices{path}/devices.list")).unwrap();
        assert!(
            list.contains("c 195:1 rw") && !list.contains("c 195:0 "),
            "{list}"
        );
    }
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["gpu"].as_u64(), Some(1));
    assert!(podman(&["rm", "-f", &name]).status.success());
    assert!(node.ledger().is_empty(), "poststop released it");
    gpushare(node, &["mps", "stop"]);
}
