//! What the end-to-end tests share: a simulated node, a busybox rootfs,
//! bundles made with `runc spec`, and the ledger as `gpushare status` shows
//! it.
//!
//! Needs root (mknod, runc, device cgroups), `runc` on PATH and a static
//! busybox at /bin/busybox (Debian: `apt-get install runc busybox-static`).
//! A missing prerequisite fails the test with what to install: these tests
//! never skip.
#![allow(dead_code)]

pub mod engine;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

#[path = "../../tests/common/bins.rs"]
mod bins;
#[path = "../../tests/common/kubelet.rs"]
pub mod kubelet;
#[path = "../../tests/common/nri_runtime.rs"]
pub mod nri_runtime;
pub use bins::{cli, hook, runtime};
pub const BUSYBOX: &str = "/bin/busybox";

pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub runc_root: PathBuf,
    pub rootfs: PathBuf,
    pub tag: String,
}

pub fn require_prerequisites() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "integration tests need root (mknod, runc, device cgroups): run them as root, as CI does"
    );
    let runc = Command::new("runc").arg("--version").output();
    assert!(
        runc.is_ok_and(|o| o.status.success()),
        "runc is not on PATH: apt-get install runc"
    );
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} is missing: apt-get install busybox-static"
    );
}

impl Node {
    pub fn new(tag: &str) -> Node {
        require_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("gpushare-it-")
            .tempdir()
            .unwrap();
        let out = Command::new(cli())
            .args(["simulate", "--gpus", "2", "--dir"])
            .arg(dir.path().join("node"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8(out.stdout).unwrap();
        let config = PathBuf::from(
            stdout
                .trim()
                .strip_prefix("export GPUSHARE_CONFIG=")
                .unwrap(),
        );
        let rootfs = dir.path().join("rootfs");
        for d in ["bin", "tmp", "dev", "proc", "sys"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "cat", "ls", "mknod", "sleep", "stat", "test", "echo"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        Node {
            runc_root: dir.path().join("runc-root"),
            config,
            rootfs,
            tag: format!("gs-{tag}-{}", std::process::id()),
            dir,
        }
    }

    pub fn id(&self, n: usize) -> String {
        format!("{}-{n}", self.tag)
    }

    /// A bundle whose process runs `script` with `env` added.
    pub fn bundle(&self, name: &str, env: &[&str], script: &str) -> PathBuf {
        self.bundle_on(&self.rootfs, name, env, script)
    }

    /// A Debian-shaped image rootfs with glibc and `/usr/bin/cuda-probe`
    /// (integration/probe/rootfs.sh), made once per name. Containers that
    /// must not see each other's mount points (runc leaves empty files for
    /// them in the rootfs, as an engine's per-container layer would hold
    /// them) get rootfs of their own.
    pub fn probe_rootfs(&self, name: &str) -> PathBuf {
        let dir = self.dir.path().join(format!("probe-rootfs-{name}"));
        if !dir.join("usr/bin/cuda-probe").exists() {
            let out = Command::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/integration/probe/rootfs.sh"
            ))
            .arg(&dir)
            .output()
            .unwrap();
            assert!(
                out.status.success(),
                "integration/probe/rootfs.sh (needs gcc, libc6-dev): {}",
                text(&out)
            );
        }
        dir
    }

    /// A bundle on `rootfs` whose process runs `script` with `env` added.
    pub fn bundle_on(&self, rootfs: &Path, name: &str, env: &[&str], script: &str) -> PathBuf {
        let b = self.dir.path().join(name);
        std::fs::create_dir_all(&b).unwrap();
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(&b)
            .output()
            .unwrap();
        assert!(out.status.success());
        let mut spec: Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        spec["root"] = json!({"path": rootfs, "readonly": false});
        spec["process"]["terminal"] = json!(false);
        spec["process"]["args"] = json!(["sh", "-c", script]);
        let e = spec["process"]["env"].as_array_mut().unwrap();
        e.extend(env.iter().map(|v| json!(v)));
        for set in spec["process"]["capabilities"]
            .as_object_mut()
            .unwrap()
            .values_mut()
        {
            set.as_array_mut().unwrap().push(json!("CAP_MKNOD"));
        }
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        b
    }

    pub fn runtime(&self) -> Command {
        let mut c = Command::new(runtime());
        c.env("GPUSHARE_CONFIG", &self.config)
            .arg("--root")
            .arg(&self.runc_root)
            .stdin(Stdio::null());
        c
    }

    /// Plain runc on this node's runc root: no shim.
    pub fn runc(&self) -> Command {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&self.runc_root).stdin(Stdio::null());
        c
    }

    /// `runc run` in the foreground with no shim: the container's output.
    pub fn runc_run(&self, bundle: &Path, id: &str) -> Output {
        self.runc()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .output()
            .unwrap()
    }

    /// Edits the bundle's spec in place.
    pub fn edit_spec(&self, bundle: &Path, edit: impl FnOnce(&mut Value)) {
        let path = bundle.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        edit(&mut spec);
        std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    }

    /// Writes gpushare-hook into the spec as a podman or CRI-O hooks.d
    /// file would have it: prestart and poststop, stage from the argument.
    pub fn with_hook(&self, bundle: &Path) {
        let config = self.config.clone();
        self.edit_spec(bundle, |spec| {
            let hook = |stage: &str| json!([{"path": hook(), "args": ["gpushare-hook", stage], "env": [format!("GPUSHARE_CONFIG={}", config.display())]}]);
            spec["hooks"] = json!({"prestart": hook("prestart"), "poststop": hook("poststop")});
        });
    }

    /// `create`, waited for: the runtime's output and exit status. The
    /// output goes through a file: a created container keeps the stdio it
    /// was given, so a pipe would not reach its end.
    pub fn create(&self, bundle: &Path, id: &str) -> Output {
        let log = bundle.join(format!("create-{id}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let status = self
            .runtime()
            .args(["create", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .status()
            .unwrap();
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(&log).unwrap(),
        }
    }

    /// `delete --force` through gpushare-runtime, which must succeed.
    pub fn delete(&self, id: &str) {
        let out = self
            .runtime()
            .args(["delete", "--force", id])
            .output()
            .unwrap();
        assert!(out.status.success(), "delete {id}: {}", text(&out));
    }

    /// `run` in the foreground: the container's output and exit status.
    pub fn run(&self, bundle: &Path, id: &str) -> Output {
        self.runtime()
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .output()
            .unwrap()
    }

    pub fn ledger(&self) -> Vec<Value> {
        let out = Command::new(cli())
            .env("GPUSHARE_CONFIG", &self.config)
            .args(["status", "--json"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| {
                g["containers"].as_array().unwrap().iter().map(move |c| {
                    let mut c = c.clone();
                    c["gpu"] = g["index"].clone();
                    c
                })
            })
            .collect()
    }

    pub fn runc_knows(&self, id: &str) -> bool {
        Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["state", id])
            .output()
            .unwrap()
            .status
            .success()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Leave no container behind, whatever the test did.
        if let Ok(entries) = std::fs::read_dir(&self.runc_root) {
            for e in entries.flatten() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&self.runc_root)
                    .args(["delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// podman as these tests run it here: runc (crun fails on this host's
/// hybrid cgroups), cgroupfs, rlimits runc accepts, and a hooks directory;
/// `args` go after `run --rm`, then `--rootfs <rootfs>` and the command.
pub fn podman_run(hooks: &Path, rootfs: &Path, args: &[&str], command: &[&str]) -> Output {
    Podman::debian12().run(hooks, rootfs, args, command)
}

/// `gpushare ARGS` on the node, which must succeed: its output.
pub fn gpushare(node: &Node, args: &[&str]) -> String {
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "gpushare {args:?}: {}", text(&out));
    text(&out)
}

/// Which podman a test runs: Debian 12's 4.3, installed, or Debian 13's
/// 5.4, which install/test.sh extracts with Debian 13's C library beside it
/// (named by `GPUSHARE_TRIXIE_PODMAN`) and which keeps its storage, state
/// and configuration in a directory of the test's own. Both run Debian
/// 12's runc (cgroupfs) and conmon.
pub struct Podman {
    pub name: &'static str,
    binary: PathBuf,
    /// Podman 5's own directory: storage, run root, tmp, containers.conf.
    own: Option<PathBuf>,
}

impl Podman {
    pub fn debian12() -> Podman {
        assert!(
            Command::new("podman")
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "podman is not installed: apt-get install podman"
        );
        Podman {
            name: "podman 4 (Debian 12)",
            binary: "podman".into(),
            own: None,
        }
    }

    /// Podman 5 with its state in `dir`.
    pub fn debian13(dir: &Path) -> Podman {
        let root = std::env::var_os("GPUSHARE_TRIXIE_PODMAN")
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .expect("GPUSHARE_TRIXIE_PODMAN is not set: run the tests with install/test.sh, which fetches Debian 13's podman");
        let binary = root.join("usr/bin/podman");
        let helpers = root.join("usr/lib/podman");
        let own = dir.join("podman5");
        std::fs::create_dir_all(&own).unwrap();
        std::fs::write(
            own.join("containers.conf"),
            format!(
                "[engine]\nhelper_binaries_dir = [{:?}]\n",
                helpers.display().to_string()
            ),
        )
        .unwrap();
        let p = Podman {
            name: "podman 5 (Debian 13)",
            binary,
            own: Some(own),
        };
        let out = p.command().arg("--version").output();
        assert!(
            out.as_ref().is_ok_and(|o| o.status.success()),
            "{} does not run: {out:?}; install/test.sh extracts it",
            p.binary.display()
        );
        p
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"]);
        if let Some(own) = &self.own {
            c.env("CONTAINERS_CONF", own.join("containers.conf"))
                .env("PODMAN_IGNORE_CGROUPSV1_WARNING", "1")
                .arg("--root")
                .arg(own.join("storage"))
                .arg("--runroot")
                .arg(own.join("run"))
                .arg("--tmpdir")
                .arg(own.join("tmp"))
                .args(["--conmon", "/usr/bin/conmon", "--events-backend", "file"]);
        }
        c
    }

    /// `podman run --rm` on `rootfs` with the hooks directory `hooks`;
    /// `args` go after `run --rm`, then `--rootfs <rootfs>` and the command.
    /// Podman 5 runs it on the host's network (its own would need
    /// netavark's firewall).
    pub fn run(&self, hooks: &Path, rootfs: &Path, args: &[&str], command: &[&str]) -> Output {
        let mut c = self.command();
        c.arg("--hooks-dir").arg(hooks).args([
            "run",
            "--rm",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        if self.own.is_some() {
            c.args(["--network", "host"]);
        }
        c.args(args)
            .arg("--rootfs")
            .arg(rootfs)
            .args(command)
            .output()
            .unwrap()
    }
}

/// The host's driver user-space the driver tests need: Debian's real
/// libraries and nvidia-smi, which load and answer without a GPU.
pub fn require_driver_userspace() {
    let ld = Command::new("ldconfig").arg("-p").output().unwrap();
    let listed = String::from_utf8_lossy(&ld.stdout).into_owned();
    for (lib, package) in [
        ("libcuda.so.1 ", "libcuda1"),
        ("libnvidia-ml.so.1 ", "libnvidia-ml1"),
    ] {
        assert!(
            listed.contains(lib),
            "{} is not installed: apt-get install {package} (Debian non-free)",
            lib.trim()
        );
    }
    assert!(
        Path::new("/usr/bin/nvidia-smi").exists(),
        "nvidia-smi is not installed: apt-get install nvidia-smi (Debian non-free)"
    );
}

/// What a container given GPU 1 runs to show what it can reach.
pub const GPU1_SCRIPT: &str = "stat -c 'node %t:%T' /dev/nvidia1; cat /dev/nvidia1; \
    test -e /dev/nvidia0 && echo has-nvidia0 || echo no-nvidia0; \
    mknod /tmp/sneaky0 c 195 0 && cat /tmp/sneaky0";

/// What a container in a user namespace (container uid 0 = host uid
/// 100000) runs to show what it got of GPU 1; `assert_user_namespaced_gpu_1`
/// reads it.
pub const USERNS_GPU1_SCRIPT: &str = "cat /proc/self/uid_map; stat -c 'node %t:%T' /dev/nvidia1; \
    cat /dev/nvidia1; test -e /dev/nvidia0 && echo has-nvidia0 || echo no-nvidia0";

/// In its own user namespace, GPU 1's node is there and opens (ENXIO: the
/// cgroup allows it, no driver behind it); GPU 0's is absent. (No
/// hand-made node: mknod is never allowed in a user namespace.)
pub fn assert_user_namespaced_gpu_1(t: &str) {
    assert!(
        t.contains("0     100000      65536"),
        "a user namespace: {t}"
    );
    assert!(
        t.contains("node c3:1")
            && t.contains("can't open '/dev/nvidia1': No such device or address")
            && t.contains("no-nvidia0"),
        "GPU 1's node, which the cgroup lets it open, and no other: {t}"
    );
}

/// GPU 1's node is 195:1 and opens (ENXIO: no driver behind it); GPU 0's
/// is absent, and a hand-made one is denied by the device cgroup.
pub fn assert_sees_only_gpu_1(t: &str) {
    assert!(t.contains("node c3:1"), "/dev/nvidia1 is 195:1: {t}");
    assert!(
        t.contains("can't open '/dev/nvidia1': No such device or address"),
        "the cgroup lets it open its GPU: {t}"
    );
    assert!(t.contains("no-nvidia0"), "no node for the other GPU: {t}");
    assert!(
        t.contains("can't open '/tmp/sneaky0': Operation not permitted"),
        "a hand-made 195:0 is denied: {t}"
    );
}
