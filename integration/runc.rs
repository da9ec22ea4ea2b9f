//! End to end with the real runc on a simulated node, through
//! gpushare-runtime. Root; see common/mod.rs for what it needs.

mod common;

use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::*;
use serde_json::{json, Value};

#[test]
fn simulate_makes_real_device_nodes_and_is_idempotent() {
    let node = Node::new("sim");
    let dev = node.dir.path().join("node/dev");
    let check = || {
        for (name, maj, min) in [
            ("nvidia0", 195, 0),
            ("nvidia1", 195, 1),
            ("nvidiactl", 195, 255),
        ] {
            let m = std::fs::metadata(dev.join(name)).unwrap();
            assert!(m.file_type().is_char_device(), "{name}");
            let rdev = m.rdev();
            assert_eq!(
                (nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev)),
                (maj, min),
                "{name}"
            );
        }
    };
    check();
    let inventory = std::fs::read(node.dir.path().join("node/inventory.toml")).unwrap();
    // A node with the wrong numbers is put right; a second run changes nothing else.
    std::fs::remove_file(dev.join("nvidia1")).unwrap();
    nix::sys::stat::mknod(
        &dev.join("nvidia1"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::from_bits_truncate(0o666),
        nix::sys::stat::makedev(195, 9),
    )
    .unwrap();
    let out = Command::new(cli())
        .args(["simulate", "--gpus", "2", "--dir"])
        .arg(node.dir.path().join("node"))
        .output()
        .unwrap();
    assert!(out.status.success());
    check();
    assert_eq!(
        std::fs::read(node.dir.path().join("node/inventory.toml")).unwrap(),
        inventory
    );
}

#[test]
fn a_container_given_gpu_1_opens_only_gpu_1() {
    let node = Node::new("gpu1");
    let script = "stat -c 'node %t:%T' /dev/nvidia1; cat /dev/nvidia1; \
                  test -e /dev/nvidia0 && echo has-nvidia0 || echo no-nvidia0; \
                  mknod /tmp/sneaky0 c 195 0 && cat /tmp/sneaky0; echo \"env $NVIDIA_VISIBLE_DEVICES\"";
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=1"], script);
    let out = node.run(&b, &node.id(0));
    let t = text(&out);
    assert!(t.contains("node c3:1"), "/dev/nvidia1 is 195:1: {t}");
    assert!(
        t.contains("can't open '/dev/nvidia1': No such device or address"),
        "the cgroup lets it open its GPU (ENXIO: no driver): {t}"
    );
    assert!(t.contains("no-nvidia0"), "no node for the other GPU: {t}");
    assert!(
        t.contains("can't open '/tmp/sneaky0': Operation not permitted"),
        "a hand-made 195:0 is denied: {t}"
    );
    assert!(
        t.contains("env GPU-4a1c9d21-5a7e-4d00-8000-000000000001"),
        "{t}"
    );
    assert!(node.ledger().is_empty(), "poststop released the GPU");
}

#[test]
fn a_container_without_the_variable_is_untouched() {
    let node = Node::new("plain");
    let b = node.bundle("b", &[], "ls /dev; mknod /tmp/n0 c 195 0 && cat /tmp/n0");
    let before = std::fs::read(b.join("config.json")).unwrap();
    let out = node.run(&b, &node.id(0));
    let t = text(&out);
    assert!(!t.contains("nvidia"), "{t}");
    assert!(
        t.contains("Operation not permitted"),
        "no GPU access at all: {t}"
    );
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        before,
        "spec unchanged"
    );
    assert!(node.ledger().is_empty());
}

#[test]
fn a_refused_container_leaves_nothing_behind() {
    let node = Node::new("refused");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0,1"], "sleep 100");
    let before = std::fs::read(b.join("config.json")).unwrap();
    let id = node.id(0);
    let out = node.create(&b, &id);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("policy.max_gpus_per_container"),
        "{}",
        text(&out)
    );
    assert!(!node.runc_knows(&id), "no container");
    assert!(node.ledger().is_empty(), "no ledger entry");
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        before,
        "config.json unchanged"
    );
}

#[test]
fn twenty_concurrent_creates_with_all_split_ten_ten_and_deletes_empty_the_ledger() {
    let node = Node::new("storm");
    // A created container keeps the stdio it was given, so each create
    // writes to a file: a pipe would never reach EOF.
    let children: Vec<_> = (0..20)
        .map(|i| {
            let b = node.bundle(
                &format!("b{i}"),
                &["NVIDIA_VISIBLE_DEVICES=all"],
                "sleep 1000",
            );
            let log = std::fs::File::create(b.join("create.log")).unwrap();
            let child = node
                .runtime()
                .args(["create", "--bundle"])
                .arg(&b)
                .arg(node.id(i))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            (b, child)
        })
        .collect();
    for (b, mut c) in children {
        let status = c.wait().unwrap();
        let log = std::fs::read_to_string(b.join("create.log")).unwrap();
        assert!(status.success(), "{log}");
    }
    let ledger = node.ledger();
    assert_eq!(ledger.len(), 20, "{ledger:?}");
    let on = |g: u64| ledger.iter().filter(|c| c["gpu"] == g).count();
    assert_eq!((on(0), on(1)), (10, 10));
    assert!(
        ledger
            .iter()
            .all(|c| c["state"] == "running" && c["pid"].as_u64().is_some()),
        "every pid bound by the shim: {ledger:?}"
    );
    for i in 0..20 {
        node.delete(&node.id(i));
    }
    assert!(node.ledger().is_empty(), "each delete released its entry");
}

#[test]
fn a_create_that_runc_fails_is_released_at_once() {
    let node = Node::new("failed");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"], "true");
    let mut spec: Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["root"]["path"] = json!("/nonexistent/rootfs");
    std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let id = node.id(0);
    let out = node.create(&b, &id);
    assert!(!out.status.success(), "runc refuses a missing rootfs");
    assert!(
        text(&out).contains("nonexistent"),
        "runc's own error reaches the caller: {}",
        text(&out)
    );
    assert!(
        node.ledger().is_empty(),
        "released when runc failed, not at the timeout"
    );
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        bytes,
        "config.json put back"
    );
    // The engine's delete then finds nothing to release.
    let _ = node
        .runtime()
        .args(["delete", "--force"])
        .arg(&id)
        .output()
        .unwrap();
    assert!(node.ledger().is_empty());
}

#[test]
fn a_terminal_container_gets_its_console_through_the_console_socket() {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixListener;

    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};

    let node = Node::new("tty");
    let b = node.bundle(
        "b",
        &["NVIDIA_VISIBLE_DEVICES=1"],
        "tty; stat -c 'node %t:%T' /dev/nvidia1; echo done",
    );
    node.edit_spec(&b, |spec| spec["process"]["terminal"] = json!(true));
    let sock = node.dir.path().join("console.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    // runc sends the pty's master over the socket during create; the
    // container's output is read from it once started, to its end (EIO
    // when the container's side closes).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut buf = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!(std::os::fd::RawFd);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let fd = msg
            .cmsgs()
            .unwrap()
            .find_map(|c| match c {
                ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
                _ => None,
            })
            .expect("runc sent the pty's master");
        // SAFETY: the descriptor just received is this thread's alone.
        let mut master = unsafe { std::fs::File::from_raw_fd(fd) };
        let mut out = Vec::new();
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = master.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        tx.send(String::from_utf8_lossy(&out).into_owned()).unwrap();
    });
    let id = node.id(0);
    let log = std::fs::File::create(b.join("create.log")).unwrap();
    let status = node
        .runtime()
        .args(["create", "--bundle"])
        .arg(&b)
        .arg("--console-socket")
        .arg(&sock)
        .arg(&id)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    let created = std::fs::read_to_string(b.join("create.log")).unwrap();
    assert!(status.success(), "create with a console socket: {created}");
    assert_eq!(created, "", "nothing on the create's own stdio");
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert!(held[0]["pid"].as_u64().is_some(), "bound: {held:?}");
    let out = node.runtime().arg("start").arg(&id).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let t = rx
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the container's terminal reached its end");
    assert!(
        t.contains("/dev/pts/0") && t.contains("node c3:1") && t.contains("done"),
        "its terminal and GPU 1: {t:?}"
    );
    node.delete(&id);
    assert!(node.ledger().is_empty(), "delete released it");
}

#[test]
fn status_with_the_real_nvml_library_and_no_driver_says_why() {
    let node = Node::new("nvml");
    let ld = Command::new("ldconfig").arg("-p").output().unwrap();
    assert!(
        String::from_utf8_lossy(&ld.stdout).contains("libnvidia-ml.so.1 "),
        "libnvidia-ml.so.1 is missing: apt-get install libnvidia-ml1 (Debian non-free)"
    );
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .arg("status")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("GPU figures unavailable: NVML: the NVIDIA driver is not loaded"),
        "{}",
        text(&out)
    );
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["gpus"][0]["utilization_pct"], Value::Null);
    assert_eq!(doc["gpus"][0]["memory_total_mib"], 15360);
}

#[test]
fn status_metrics_and_gc_follow_real_containers() {
    let node = Node::new("view");
    let cli = |args: &[&str]| {
        Command::new(common::cli())
            .env("GPUSHARE_CONFIG", &node.config)
            .args(args)
            .output()
            .unwrap()
    };
    let ids: Vec<String> = (0..2).map(|i| node.id(i)).collect();
    for (i, id) in ids.iter().enumerate() {
        let b = node.bundle(
            &format!("b{i}"),
            &[&format!("NVIDIA_VISIBLE_DEVICES={i}")],
            "sleep 1000",
        );
        let out = node.create(&b, id);
        assert!(out.status.success(), "{}", text(&out));
        assert!(node.runc().args(["start", id]).status().unwrap().success());
    }
    let status = text(&cli(&["status"]));
    for id in &ids {
        assert!(status.contains(&id[..14]), "{status}");
    }
    let metrics = String::from_utf8(cli(&["metrics"]).stdout).unwrap();
    for id in &ids {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gpushare_container_info{gpu=")
                    && l.contains(&format!("container=\"{id}\","))
                    && l.contains(&format!("root=\"{}\"", node.runc_root.display()))
                    && l.contains("state=\"running\"")),
            "{metrics}"
        );
    }
    assert!(
        metrics.contains("gpushare_gpu_containers{gpu=\"0\",") && metrics.contains("} 1.0\n"),
        "{metrics}"
    );

    // The same over HTTP.
    let port = 20000 + (std::process::id() % 20000) as u16;
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(common::cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["metrics", "--listen", &addr])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| -> Option<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&addr).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut body = String::new();
        s.read_to_string(&mut body).ok()?;
        Some(body)
    };
    let mut page = None;
    for _ in 0..100 {
        page = get("/metrics");
        if page.is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let page = page.expect("the metrics server answers");
    assert!(
        page.starts_with("HTTP/1.1 200 OK")
            && page.contains("text/plain; version=0.0.4")
            && page.contains(&ids[0]),
        "{page}"
    );
    assert!(get("/").unwrap().starts_with("HTTP/1.1 404"));
    let _ = server.kill();
    let _ = server.wait();

    // A container whose process is killed outright (no delete, so no
    // poststop): gc drops its entry, the other stays.
    let held = node.ledger();
    let pid = held.iter().find(|c| c["id"] == ids[0].as_str()).unwrap()["pid"]
        .as_i64()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for _ in 0..100 {
        if gpushare::sys::Process::find(pid as i32).is_none() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = cli(&["gc"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("dropped {}", ids[0])),
        "{}",
        text(&out)
    );
    let left: Vec<String> = node
        .ledger()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left, [ids[1].clone()]);
}

/// Runs `runtime` for `args` under the runc root `root`, its output
/// through a file (a created container keeps the stdio it was given).
fn under_root(
    node: &Node,
    root: &std::path::Path,
    args: &[&str],
    log: &str,
) -> std::process::Output {
    let log = node.dir.path().join(log);
    let file = std::fs::File::create(&log).unwrap();
    let status = Command::new(runtime())
        .env("GPUSHARE_CONFIG", &node.config)
        .arg("--root")
        .arg(root)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .status()
        .unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(&log).unwrap(),
    }
}

/// (root, id, pid) of every hold, sorted.
fn holds(node: &Node) -> Vec<(String, String, i64)> {
    let mut v: Vec<_> = node
        .ledger()
        .iter()
        .map(|c| {
            (
                c["root"].as_str().unwrap().to_owned(),
                c["id"].as_str().unwrap().to_owned(),
                c["pid"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_second_create_of_a_running_containers_id_is_refused_and_its_hold_stays() {
    let node = Node::new("dup-same");
    let id = node.id(0);
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=1"], "sleep 1000");
    let out = node.create(&b, &id);
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.runc().args(["start", &id]).status().unwrap().success());
    let before = holds(&node);
    assert_eq!(before.len(), 1);
    assert!(before[0].2 > 0, "bound: {before:?}");
    let spec = std::fs::read(b.join("config.json")).unwrap();

    // The same id again, as a new user might: refused before runc runs.
    let b2 = node.bundle("b2", &["NVIDIA_VISIBLE_DEVICES=1"], "sleep 1000");
    let out = node.create(&b2, &id);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("already holds GPU"), "{}", text(&out));
    assert_eq!(
        holds(&node),
        before,
        "the running container is held as it was"
    );
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), spec);
    let status: Value =
        serde_json::from_slice(&node.runc().args(["state", &id]).output().unwrap().stdout).unwrap();
    assert_eq!(status["status"], "running");
    assert_eq!(status["pid"].as_i64().unwrap(), before[0].2);
    node.delete(&id);
    assert!(holds(&node).is_empty());
}

#[test]
fn the_same_id_under_another_runc_root_is_another_container() {
    let node = Node::new("dup-root");
    let id = node.id(0);
    let other_root = node.dir.path().join("other-root");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"], "sleep 1000");
    let out = node.create(&b, &id);
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.runc().args(["start", &id]).status().unwrap().success());
    let first = holds(&node);
    assert_eq!(first.len(), 1);

    // A delete of that id under another root, where runc has no such
    // container (runc's --force calls that a success): the first
    // container keeps its hold.
    let out = under_root(&node, &other_root, &["delete", "--force", &id], "del0.log");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(holds(&node), first);
    assert!(node.runc_knows(&id));

    // The same id created under the other root: its own hold, beside.
    let b2 = node.bundle("b2", &["NVIDIA_VISIBLE_DEVICES=1"], "sleep 1000");
    let out = under_root(
        &node,
        &other_root,
        &["create", "--bundle", b2.to_str().unwrap(), &id],
        "create2.log",
    );
    assert!(out.status.success(), "{}", text(&out));
    let both = holds(&node);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(both.contains(&first[0]));
    // Its delete releases only its own.
    let out = under_root(&node, &other_root, &["delete", "--force", &id], "del1.log");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(holds(&node), first, "only the other root's hold went");
    node.delete(&id);
    assert!(holds(&node).is_empty());
}
