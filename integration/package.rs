//! The Debian package and the tarball, as an operator installs them:
//! built by install/package.sh (install/test.sh runs it before the tests
//! and names the files in GPUSHARE_DEB and GPUSHARE_TARBALL), inspected,
//! installed with apt-get on this machine, used to run a container on a
//! simulated node through the installed /usr/bin/gpushare-runtime, then
//! purged. Root; refuses to run where a gpushare package is already
//! installed (it would purge it).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn built(var: &str) -> PathBuf {
    let p = std::env::var_os(var).map(PathBuf::from).unwrap_or_else(|| {
        panic!("{var} is not set: run install/test.sh, which builds the package and the tarball (install/package.sh) before the tests")
    });
    assert!(p.is_file(), "{var}={} is not a file", p.display());
    p
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether an ELF file asks for a dynamic loader (has a PT_INTERP header).
fn is_dynamic(path: &Path) -> bool {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[..4], b"\x7fELF", "{} is ELF", path.display());
    assert_eq!(b[4], 2, "64-bit");
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(b[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
fn the_package_installs_runs_a_container_and_purges_clean() {
    require_prerequisites();
    let deb = built("GPUSHARE_DEB");
    let tarball = built("GPUSHARE_TARBALL");
    let version = env!("CARGO_PKG_VERSION");
    let field = |f: &str| run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f));
    assert_eq!(field("Package").trim(), "gpushare");
    assert_eq!(field("Version").trim(), version);
    assert_eq!(field("Architecture").trim(), "amd64");
    assert!(field("Depends").contains("runc"), "{}", field("Depends"));
    assert!(field("Recommends").contains("nvidia-cuda-mps"));
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for f in [
        "./usr/bin/gpushare",
        "./usr/bin/gpushare-runtime",
        "./usr/bin/gpushare-hook",
        "./lib/systemd/system/gpushare-mps.service",
        "./usr/share/gpushare/oci-gpushare-hook.json",
        "./etc/gpushare/config.toml",
        "./usr/share/doc/gpushare/README.md",
        "./usr/share/doc/gpushare/SECURITY.md",
    ] {
        assert!(contents.contains(&format!(" {f}\n")), "{f} in {contents}");
    }
    let scratch = tempfile::tempdir().unwrap();
    let control = scratch.path().join("control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/gpushare/config.toml\n"
    );
    let tree = scratch.path().join("tree");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree));
    assert!(
        !is_dynamic(&tree.join("usr/bin/gpushare-runtime")),
        "static"
    );
    assert!(!is_dynamic(&tree.join("usr/bin/gpushare-hook")), "static");
    let v = run(Command::new(tree.join("usr/bin/gpushare-hook")).arg("--version"));
    assert_eq!(v, format!("gpushare-hook version {version}\n"));
    let unit =
        std::fs::read_to_string(tree.join("lib/systemd/system/gpushare-mps.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/gpushare mps run"),
        "{unit}"
    );
    let hooks =
        std::fs::read_to_string(tree.join("usr/share/gpushare/oci-gpushare-hook.json")).unwrap();
    assert!(hooks.contains("\"/usr/bin/gpushare-hook\""), "{hooks}");

    // The tarball holds the same binaries, for /usr/local/bin.
    let unpacked = scratch.path().join("tar");
    std::fs::create_dir(&unpacked).unwrap();
    run(Command::new("tar")
        .arg("-C")
        .arg(&unpacked)
        .arg("-xzf")
        .arg(&tarball));
    let top = unpacked.join(format!(
        "gpushare-{version}-{}-linux",
        std::env::consts::ARCH
    ));
    for b in ["gpushare", "gpushare-runtime", "gpushare-hook"] {
        assert_eq!(
            std::fs::read(top.join("bin").join(b)).unwrap(),
            std::fs::read(tree.join("usr/bin").join(b)).unwrap(),
            "{b}: the package's binary"
        );
    }
    assert!(top.join("share/gpushare/gpushare-mps.service").is_file());
    let v = run(Command::new(top.join("bin/gpushare-runtime")).arg("--version"));
    assert!(
        v.starts_with(&format!("gpushare-runtime version {version}\n")),
        "{v}"
    );

    // Installed with apt, as an operator would.
    let installed = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "gpushare"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&installed.stdout).contains("install ok installed"),
        "a gpushare package is installed on this machine; this test installs and purges its own: remove it first (apt-get purge gpushare)"
    );
    let apt = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .arg(&deb)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    assert!(apt.status.success(), "apt-get install: {}", text(&apt));
    let files = run(Command::new("dpkg-query").args(["-L", "gpushare"]));
    let result = std::panic::catch_unwind(|| {
        let v = run(Command::new("/usr/bin/gpushare").arg("--version"));
        assert_eq!(v, format!("gpushare version {version}\n"));
        let v = run(Command::new("/usr/bin/gpushare-runtime").arg("--version"));
        assert!(
            v.starts_with(&format!(
                "gpushare-runtime version {version}\n\nrunc version"
            )),
            "{v}"
        );
        // A simulated node's container through the installed runtime.
        let node = Node::new("package");
        let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=1"], GPU1_SCRIPT);
        let out = Command::new("/usr/bin/gpushare-runtime")
            .env("GPUSHARE_CONFIG", &node.config)
            .arg("--root")
            .arg(&node.runc_root)
            .args(["run", "--bundle"])
            .arg(&b)
            .arg(node.id(0))
            .output()
            .unwrap();
        assert_sees_only_gpu_1(&text(&out));
        assert!(node.ledger().is_empty(), "released when run returned");
        // What `gpushare install` backs up is the operator's: purge keeps it.
        let daemon = node.dir.path().join("daemon.json");
        std::fs::write(&daemon, "{}\n").unwrap();
        run(Command::new("/usr/bin/gpushare")
            .args(["install", "docker", "--config"])
            .arg(&daemon));
        assert!(std::fs::read_to_string(&daemon)
            .unwrap()
            .contains("/usr/bin/gpushare-runtime"));
        node
    });
    let purge = Command::new("apt-get")
        .args(["purge", "-y", "-q", "gpushare"])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap();
    let node = result.unwrap_or_else(|e| std::panic::resume_unwind(e));
    assert!(purge.status.success(), "apt-get purge: {}", text(&purge));
    for f in files.lines().filter(|f| !f.is_empty()) {
        let p = Path::new(f);
        // Shared directories (/usr, /etc…) stay; everything the package
        // alone put there is gone.
        assert!(
            !p.exists() || (p.is_dir() && std::fs::read_dir(p).unwrap().next().is_some()),
            "{f} is left after purge"
        );
    }
    assert!(!Path::new("/etc/gpushare").exists());
    let backups: Vec<_> = std::fs::read_dir(node.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("daemon.json.gpushare-backup-"))
        .collect();
    assert_eq!(backups.len(), 1, "install's backup is kept: {backups:?}");
}

/// The device plugin's image (install/image.sh; install/test.sh names it in
/// GPUSHARE_IMAGE): imported into containerd as a node's image store holds
/// it, run as its DaemonSet runs it (the kubelet directory and the node's
/// files mounted), it registers with a test kubelet and lists the node's
/// GPUs; SIGTERM stops it and takes its socket away.
#[test]
fn the_device_plugin_image_imports_into_containerd_and_serves_kubelet() {
    use common::engine::*;
    use common::kubelet::Kubelet;
    let image = built("GPUSHARE_IMAGE");
    let engines = Engines::debian13();
    let node = Node::new("image");
    let (d, config, sock, _) = containerd_dir(&node);
    let _daemon = start_containerd(&engines, &node, &d, &config, &sock);
    let ctr = |args: &[&str]| ctr_k8s(&engines, &sock, args);
    ctr(&["images", "import", image.to_str().unwrap()]);
    let version = env!("CARGO_PKG_VERSION");
    let name = format!("localhost/gpushare:{version}");
    assert!(
        ctr(&["images", "ls", "-q"]).lines().any(|l| l == name),
        "the archive is tagged {name}"
    );
    // From scratch: the binaries and nothing else.
    let listing = Command::new("tar")
        .arg("-xOf")
        .arg(&image)
        .arg("--wildcards")
        .arg("*/layer.tar")
        .output()
        .unwrap();
    let files = Command::new("tar")
        .arg("-t")
        .stdin({
            let p = node.dir.path().join("layer.tar");
            std::fs::write(&p, &listing.stdout).unwrap();
            std::fs::File::open(p).unwrap()
        })
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&files.stdout).into_owned();
    assert!(
        files.contains("usr/bin/gpushare\n") && !files.contains("lib/"),
        "{files}"
    );

    let kdir = node.dir.path().join("device-plugins");
    std::fs::create_dir_all(&kdir).unwrap();
    let mut kubelet = Kubelet::start(&kdir);
    let dir = node.dir.path().display().to_string();
    let id = node.id(0);
    ctr(&[
        "run",
        "-d",
        "--mount",
        &format!(
            "type=bind,src={},dst=/var/lib/kubelet/device-plugins,options=rbind:rw",
            kdir.display()
        ),
        "--mount",
        &format!("type=bind,src={dir},dst={dir},options=rbind:rw"),
        "--env",
        &format!("GPUSHARE_CONFIG={}", node.config.display()),
        &name,
        &id,
    ]);
    let r = Kubelet::next_registration(&kubelet.rt, &mut kubelet.registered);
    assert_eq!(r.resource_name, "gpushare.io/gpu-percent");
    let mut client = kubelet.plugin();
    let mut stream = kubelet
        .rt
        .block_on(client.list_and_watch(gpushare::device_plugin::api::Empty {}))
        .unwrap()
        .into_inner();
    let first = kubelet
        .rt
        .block_on(stream.message())
        .unwrap()
        .expect("a device list");
    assert!(
        !first.devices.is_empty() && first.devices.len().is_multiple_of(100),
        "{first:?}"
    );
    ctr(&["task", "kill", "--signal", "SIGTERM", &id]);
    wait_for("the plugin to stop", || {
        !kdir.join("gpushare.sock").exists()
    });
    let _ = engines
        .command("ctr")
        .arg("--address")
        .arg(&sock)
        .args(["--namespace", "k8s.io", "task", "delete", &id])
        .output();
    ctr(&["container", "rm", &id]);
}

/// The image runs the NRI plugin as install/k8s/nri-plugin.yaml does: in
/// the host's root (mounted at /host, `--host-root`), it connects to the
/// runtime's socket (a test NRI runtime here), registers, and answers a GPU
/// container's creation with the node's GPU.
#[test]
fn the_image_runs_the_nri_plugin_in_the_hosts_root() {
    use common::engine::*;
    use common::nri_runtime::{container, pod, NriRuntime};
    let image = built("GPUSHARE_IMAGE");
    let engines = Engines::debian13();
    let node = Node::new("image-nri");
    let (d, config, sock, _) = containerd_dir(&node);
    let _daemon = start_containerd(&engines, &node, &d, &config, &sock);
    let ctr = |args: &[&str]| ctr_k8s(&engines, &sock, args);
    ctr(&["images", "import", image.to_str().unwrap()]);
    let name = format!("localhost/gpushare:{}", env!("CARGO_PKG_VERSION"));
    let nri_dir = node.dir.path().join("nri");
    std::fs::create_dir_all(&nri_dir).unwrap();
    let runtime = NriRuntime::start(&nri_dir);
    let id = node.id(0);
    ctr(&[
        "run",
        "-d",
        "--mount",
        "type=bind,src=/,dst=/host,options=rbind:rw",
        "--env",
        &format!("GPUSHARE_CONFIG={}", node.config.display()),
        &name,
        &id,
        "/usr/bin/gpushare",
        "nri",
        "--host-root",
        "/host",
        "--socket",
        runtime.socket.to_str().unwrap(),
    ]);
    let (conn, registered) = runtime.accept();
    assert_eq!(registered.plugin_name, "gpushare");
    runtime.configure(&conn);
    runtime.synchronize(&conn, vec![]);
    let r = runtime
        .create(
            &conn,
            &pod("image-pod", ""),
            &container("c1", &["NVIDIA_VISIBLE_DEVICES=1"], std::process::id()),
        )
        .expect("placed");
    let paths: Vec<String> = r
        .adjust
        .linux
        .devices
        .iter()
        .map(|d| d.path.clone())
        .collect();
    assert!(paths.contains(&"/dev/nvidia1".to_owned()), "{paths:?}");
    assert_eq!(node.ledger().len(), 1);
    ctr(&["task", "delete", "--force", &id]);
    ctr(&["container", "rm", &id]);
}
