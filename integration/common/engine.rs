//! Engines started by the tests (containerd, dockerd) with temporary
//! state, sockets and images imported from the test's busybox rootfs.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::*;

/// Whose engines a test runs: Debian 12's, installed on this machine, or
/// Debian 13's (containerd 1.7, Docker 26), which install/test.sh fetches
/// and extracts into a directory of the tests' own and names in
/// `GPUSHARE_TRIXIE_ENGINES`. Debian 12's runc runs under both.
#[derive(Clone, Debug)]
pub struct Engines {
    pub name: &'static str,
    root: Option<PathBuf>,
}

impl Engines {
    pub fn debian12() -> Engines {
        Engines {
            name: "Debian 12",
            root: None,
        }
    }

    pub fn debian13() -> Engines {
        let root = std::env::var_os("GPUSHARE_TRIXIE_ENGINES")
            .filter(|r| !r.is_empty())
            .map(PathBuf::from)
            .expect("GPUSHARE_TRIXIE_ENGINES is not set: run the tests with install/test.sh, which fetches Debian 13's containerd and docker.io");
        for b in [
            "usr/bin/containerd",
            "usr/bin/ctr",
            "usr/sbin/dockerd",
            "usr/bin/docker",
        ] {
            assert!(
                root.join(b).is_file(),
                "{} is missing: install/test.sh extracts Debian 13's containerd, docker.io and docker-cli there",
                root.join(b).display()
            );
        }
        Engines {
            name: "Debian 13",
            root: Some(root),
        }
    }

    /// PATH with this release's binaries first (dockerd starts containerd,
    /// containerd its shim, by name).
    pub fn path_env(&self) -> OsString {
        let system = std::env::var_os("PATH").unwrap_or_default();
        let Some(root) = &self.root else {
            return system;
        };
        let mut dirs = vec![root.join("usr/bin"), root.join("usr/sbin")];
        dirs.extend(std::env::split_paths(&system));
        std::env::join_paths(dirs).unwrap()
    }

    /// The program `name` of this release.
    pub fn binary(&self, name: &str) -> PathBuf {
        if let Some(root) = &self.root {
            for dir in ["usr/bin", "usr/sbin"] {
                let p = root.join(dir).join(name);
                if p.is_file() {
                    return p;
                }
            }
        }
        PathBuf::from(name)
    }

    pub fn command(&self, name: &str) -> Command {
        let mut c = Command::new(self.binary(name));
        c.env("PATH", self.path_env());
        c
    }

    /// Fails loudly when this release's `name` does not run.
    pub fn need(&self, name: &str, package: &str) {
        assert!(
            self.command(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success()),
            "{name} of {} does not run: apt-get install {package}",
            self.name
        );
    }
}

pub fn need(binary: &str, package: &str) {
    assert!(
        Command::new(binary)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "{binary} is not installed: apt-get install {package}"
    );
}

pub fn install(node: &Node, args: &[&str]) -> Output {
    install_on(&Engines::debian12(), node, args)
}

/// `gpushare install` with `engines`' binaries first on PATH (`--mode
/// hook` asks that containerd's `ctr` for its default spec).
pub fn install_on(engines: &Engines, node: &Node, args: &[&str]) -> Output {
    let out = Command::new(cli())
        .env("PATH", engines.path_env())
        .env("GPUSHARE_CONFIG", &node.config)
        .arg("install")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// A daemon the test started; stopped (and its mounts undone) on drop.
pub struct Daemon {
    pub child: Child,
    pub dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever the daemon left mounted under its directories goes.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = self.dir.display().to_string();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&dir))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not come up in 60 s");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The node's rootfs as a tar stream, for `docker import`.
pub fn rootfs_tar(node: &Node) -> PathBuf {
    tar_of(node, &node.rootfs, "rootfs.tar")
}

pub fn tar_of(node: &Node, rootfs: &Path, name: &str) -> PathBuf {
    let tar = node.dir.path().join(name);
    let ok = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .status()
        .unwrap();
    assert!(ok.success());
    tar
}

/// A docker-archive image of the node's rootfs, for `ctr image import`:
/// `docker.io/library/gpushare-test:1`, running `sh` by default.
pub fn image_archive(node: &Node) -> PathBuf {
    image_archive_of(
        node,
        "docker.io/library/gpushare-test:1",
        serde_json::json!({"Env": ["PATH=/bin"], "Cmd": ["sh"]}),
    )
}

/// A docker-archive image of the node's rootfs tagged `tag`, its runtime
/// settings (`Env`, `Cmd`, `Entrypoint`…) `settings`.
pub fn image_archive_of(node: &Node, tag: &str, settings: serde_json::Value) -> PathBuf {
    let name: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = node.dir.path().join(format!("image-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let layer = rootfs_tar(node);
    std::fs::copy(&layer, dir.join("layer.tar")).unwrap();
    let sum = Command::new("sha256sum")
        .arg(dir.join("layer.tar"))
        .output()
        .unwrap();
    let sum = String::from_utf8(sum.stdout)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_owned();
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": settings, "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{sum}")]}});
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let manifest =
        serde_json::json!([{"Config": "config.json", "RepoTags": [tag], "Layers": ["layer.tar"]}]);
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let archive = node.dir.path().join(format!("{name}.tar"));
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&dir)
        .arg("-cf")
        .arg(&archive)
        .args(["manifest.json", "config.json", "layer.tar"])
        .status()
        .unwrap();
    assert!(ok.success());
    archive
}

/// A containerd directory with a minimal version-2 config of its own
/// (root, state, socket inside it): (dir, config, socket, config text).
pub fn containerd_dir(node: &Node) -> (PathBuf, PathBuf, PathBuf, String) {
    let d = node.dir.path().join("containerd");
    std::fs::create_dir_all(&d).unwrap();
    let config = d.join("config.toml");
    let sock = d.join("containerd.sock");
    let text = format!(
        "version = 2\nroot = {:?}\nstate = {:?}\n\n[grpc]\n  address = {:?}\n",
        d.join("root").display().to_string(),
        d.join("state").display().to_string(),
        sock.display().to_string()
    );
    std::fs::write(&config, &text).unwrap();
    (d, config, sock, text)
}

/// `ctr` of `engines` on containerd's socket `sock`, in Kubernetes'
/// namespace `k8s.io`, which must succeed: its standard output.
pub fn ctr_k8s(engines: &Engines, sock: &Path, args: &[&str]) -> String {
    let out = engines
        .command("ctr")
        .arg("--address")
        .arg(sock)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ctr {args:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A containerd directory whose config is this release's full default
/// (`containerd config default`, every plugin's table written out) with
/// root, state and socket moved inside it: (dir, config, socket, text).
pub fn containerd_default_dir(
    engines: &Engines,
    node: &Node,
) -> (PathBuf, PathBuf, PathBuf, String) {
    let d = node.dir.path().join("containerd");
    std::fs::create_dir_all(&d).unwrap();
    let out = engines
        .command("containerd")
        .args(["config", "default"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "containerd config default: {}",
        text(&out)
    );
    let mut doc: toml_edit::DocumentMut = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    let config = d.join("config.toml");
    let sock = d.join("containerd.sock");
    let at = |p: &Path| toml_edit::value(p.display().to_string());
    doc["root"] = at(&d.join("root"));
    doc["state"] = at(&d.join("state"));
    doc["grpc"]["address"] = at(&sock);
    let text = doc.to_string();
    std::fs::write(&config, &text).unwrap();
    (d, config, sock, text)
}

/// containerd started on `config`, with gpushare's config in its (and so its
/// shims') environment, once it answers; stopped on drop.
pub fn start_containerd(
    engines: &Engines,
    node: &Node,
    d: &Path,
    config: &Path,
    sock: &Path,
) -> Daemon {
    let log = std::fs::File::create(d.join("containerd.log")).unwrap();
    let child = engines
        .command("containerd")
        .env("GPUSHARE_CONFIG", &node.config)
        .arg("--config")
        .arg(config)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let daemon = Daemon {
        child,
        dir: d.to_owned(),
    };
    wait_for("containerd", || {
        engines
            .command("ctr")
            .arg("--address")
            .arg(sock)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    daemon
}
