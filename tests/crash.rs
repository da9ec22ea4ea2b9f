//! Crash safety: the runtime, the hook and `gc` are killed with SIGKILL at
//! random moments during many creates, beside containers that hold their
//! GPUs throughout. The ledger must stay whole (SQLite's own check), never
//! lose a hold that counts, every file gpushare rewrites must still parse
//! (old or new, never torn), and `gc` must converge to the truth.

mod common;

use std::process::{Child, Command, Stdio};
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

/// Starts `cmd` and kills it after a random moment (or lets it finish);
/// whether the kill landed while it ran.
fn run_and_kill(mut cmd: Command, stdin: Option<&[u8]>, rng: &mut Lcg, up_to_us: u64) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        use std::io::Write;
        let _ = child.stdin.take().unwrap().write_all(bytes);
    }
    std::thread::sleep(Duration::from_micros(rng.next(up_to_us)));
    let landed = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    landed
}

fn sleeper() -> Child {
    Command::new("sleep").arg("600").spawn().unwrap()
}

/// The ledger's own consistency check.
fn integrity(node: &Node) -> String {
    let db = rusqlite::Connection::open(node.path().join("state/ledger.db")).unwrap();
    db.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn sigkill_at_random_points_never_loses_or_tears_a_hold_and_gc_converges() {
    let node = Node::new(2, "");
    // Reservations time out after 1 s here, so gc can converge quickly.
    let text = std::fs::read_to_string(&node.config).unwrap().replacen(
        "[runtime]\n",
        "[runtime]\nreservation_timeout_seconds = 1\n",
        1,
    );
    std::fs::write(&node.config, text).unwrap();
    // Three containers that hold their GPUs throughout: their processes
    // live until the end.
    let mut held: Vec<(String, Child)> = Vec::new();
    for i in 0..3 {
        let s = sleeper();
        let b = node.bundle(&format!("held{i}"), &["NVIDIA_VISIBLE_DEVICES=all"]);
        let id = format!("held{i}");
        let out = node
            .command(bin_runtime())
            .env("FAKE_PID", s.id().to_string())
            .args(["create", "--bundle", b.to_str().unwrap(), &id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        held.push((id, s));
    }
    let holds_of_held = |node: &Node| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = node
            .ledger()
            .into_iter()
            .filter(|h| h["id"].as_str().unwrap().starts_with("held"))
            .map(|h| {
                (
                    h["id"].as_str().unwrap().to_owned(),
                    h["pid"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let want: Vec<(String, u64)> = held
        .iter()
        .map(|(id, c)| (id.clone(), u64::from(c.id())))
        .collect();
    assert_eq!(holds_of_held(&node), want);

    let mut rng = Lcg(0x5eed);
    // No process has it: above any kernel's pid_max (at most 2^22).
    let gone_pid = i32::MAX;
    let mut killed = 0;
    for i in 0..120 {
        let b = node.bundle(&format!("b{}", i % 8), &["NVIDIA_VISIBLE_DEVICES=all"]);
        let mut create = node.command(bin_runtime());
        create.env("FAKE_PID", gone_pid.to_string()).args([
            "create",
            "--bundle",
            b.to_str().unwrap(),
            &format!("c{i}"),
        ]);
        killed += usize::from(run_and_kill(create, None, &mut rng, 6000));
        // A hook, killed too: it binds the runtime's reservation where the
        // runtime was killed after making one, else decides in full and
        // fails at the container's pid, which no process has.
        let state = json!({"ociVersion": "1.0.2", "id": format!("c{i}"), "status": "creating", "pid": gone_pid, "bundle": b.canonicalize().unwrap()});
        let mut hook = node.command(bin_hook());
        hook.arg("createRuntime");
        killed += usize::from(run_and_kill(
            hook,
            Some(state.to_string().as_bytes()),
            &mut rng,
            4000,
        ));
        if i % 10 == 9 {
            let mut gc = node.command(bin_cli());
            gc.arg("gc");
            killed += usize::from(run_and_kill(gc, None, &mut rng, 6000));
        }
        // Whole, and nothing that counts is lost.
        assert_eq!(integrity(&node), "ok", "iteration {i}");
        assert_eq!(holds_of_held(&node), want, "iteration {i}: a hold was lost");
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
    // Truth: only the three held containers exist; every other create was
    // killed or bound a process that does not exist. Once reservations
    // time out, gc leaves exactly the three.
    std::thread::sleep(Duration::from_millis(1100));
    let out = node.cli(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left: Vec<String> = node
        .ledger()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left.len(), 3, "gc converged: {left:?}");
    assert_eq!(holds_of_held(&node), want);
    // Their processes end: they no longer count, and gc drops them.
    for (_, mut s) in held {
        let _ = s.kill();
        let _ = s.wait();
    }
    let out = node.cli(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.ledger().is_empty(), "{:?}", node.ledger());
    // gc took the pid files of killed runtime calls, and the temp files of
    // killed writers.
    let state = node.path().join("state");
    assert_eq!(
        std::fs::read_dir(state.join("pid")).map_or(0, |d| d.count()),
        0
    );
    let files: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        files.iter().all(|n| [
            "ledger.db",
            "ledger.db-wal",
            "ledger.db-shm",
            "ledger.lock",
            "driver.json",
            "pid"
        ]
        .contains(&n.as_str())),
        "{files:?}"
    );
}
