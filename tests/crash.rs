//! Crash safety: the shim and the hook are killed with SIGKILL at random
//! moments during many creates; every file gpushare rewrites must still
//! parse (old or new, never torn), and `gc` must converge to the truth.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

/// A small deterministic generator, so a failure can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

#[test]
fn sigkill_at_random_points_never_tears_a_file_and_gc_converges() {
    let node = Node::new(2, "");
    // Reservations time out after 1 s here, so gc can converge quickly.
    let text = std::fs::read_to_string(&node.config).unwrap().replacen(
        "[runtime]\n",
        "[runtime]\nreservation_timeout_seconds = 1\n",
        1,
    );
    std::fs::write(&node.config, text).unwrap();
    assert!(node.cli(&["status"]).status.success(), "the config loads");
    let mut rng = Lcg(0x5eed);
    // No process has it: above any kernel's pid_max (at most 2^22).
    let gone_pid = i32::MAX;
    let mut killed = 0;
    for i in 0..120 {
        let b = node.bundle(&format!("b{}", i % 8), &["NVIDIA_VISIBLE_DEVICES=all"]);
        let mut shim = node
            .command(bin_runtime())
            .args(["create", "--bundle", b.to_str().unwrap(), &format!("c{i}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.next(3000)));
        if shim.try_wait().unwrap().is_none() {
            killed += 1;
        }
        let _ = shim.kill();
        let _ = shim.wait();
        // A hook, killed too: it binds the shim's reservation where the
        // shim was killed after making one, else decides in full and fails
        // at the container's pid, which no process has (a live one, as
        // root, would get the GPU's devices in its cgroup).
        let state = json!({"ociVersion": "1.0.2", "id": format!("c{i}"), "status": "creating", "pid": gone_pid, "bundle": b});
        let mut hook = node
            .command(bin_hook())
            .arg("createRuntime")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            let _ = hook
                .stdin
                .take()
                .unwrap()
                .write_all(state.to_string().as_bytes());
        }
        std::thread::sleep(Duration::from_micros(rng.next(2000)));
        let _ = hook.kill();
        let _ = hook.wait();
        // Every file parses.
        let snapshot = gpushare::ledger::Ledger::new(&node.path().join("state")).snapshot();
        assert!(snapshot.is_ok(), "iteration {i}: ledger torn: {snapshot:?}");
        let spec = std::fs::read(b.join("config.json")).unwrap();
        assert!(
            serde_json::from_slice::<serde_json::Value>(&spec).is_ok(),
            "iteration {i}: config.json torn"
        );
        if let Ok(cache) = std::fs::read(node.path().join("state/driver.json")) {
            assert!(
                serde_json::from_slice::<gpushare::driver::Driver>(&cache).is_ok(),
                "iteration {i}: driver.json torn"
            );
        }
    }
    assert!(killed > 10, "the kills landed mid-run ({killed})");
    assert!(
        !node.ledger().is_empty(),
        "some creates and bindings went through"
    );
    // Truth: no container exists (the fake runtime made none); the shim's
    // bindings name this test's pid, which is alive, so release them as a
    // poststop would, then let the reservations time out.
    for i in 0..120 {
        let state = json!({"ociVersion": "1.0.2", "id": format!("c{i}"), "status": "stopped", "bundle": "/b"});
        assert!(node.hook("poststop", &state).status.success());
    }
    std::thread::sleep(Duration::from_millis(1100));
    let out = node.cli(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        node.ledger().is_empty(),
        "gc converged: {:?}",
        node.ledger()
    );
    let left: Vec<String> = std::fs::read_dir(node.path().join("state"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    // A shim killed while its runtime ran leaves its pid file; gc takes them.
    for dir in ["pid", "held"] {
        assert_eq!(
            std::fs::read_dir(node.path().join("state").join(dir)).map_or(0, |d| d.count()),
            0,
            "gc removed the pid files of killed shims and the markers of what it dropped ({dir})"
        );
    }
    // A killed writer may leave its temp file; the next writer reuses the
    // name, so at most one per file, and never in place of the real one.
    assert!(
        left.iter().all(|n| [
            "ledger",
            "ledger.lock",
            "ledger.journal",
            ".ledger.gpushare-tmp",
            "driver.json",
            ".driver.json.gpushare-tmp",
            "pid",
            "held"
        ]
        .contains(&n.as_str())),
        "{left:?}"
    );
}
