//! Engines started by the tests (containerd, dockerd) with temporary
//! state, sockets and images imported from the test's busybox rootfs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use super::*;

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
    let out = Command::new(cli())
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

/// containerd started on `config`, with gpushare's config in its (and so its
/// shims') environment, once it answers; stopped on drop.
pub fn start_containerd(node: &Node, d: &Path, config: &Path, sock: &Path) -> Daemon {
    let log = std::fs::File::create(d.join("containerd.log")).unwrap();
    let child = Command::new("containerd")
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
        Command::new("ctr")
            .arg("--address")
            .arg(sock)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    daemon
}
