//! gpushare-runtime against fixture bundles and a recording fake runtime:
//! what it passes on, what it rewrites, how it runs the runtime as its
//! child (exit status, stdio, signals, the pid bound without any hook), and
//! what a refusal or a failed create leaves behind.

mod common;

use common::*;
use serde_json::{json, Value};

#[test]
fn a_gpu_create_is_rewritten_reserved_and_passed_on_unchanged() {
    let node = Node::new(2, "");
    node.fake_mps(1);
    let b = node.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
    );
    let before = spec(&b);
    let pid_file = node.path().join("c1.pid");
    let args = [
        "--root",
        "/run/x",
        "--log",
        "/dev/null",
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "c1",
    ];
    let me = std::process::id().to_string();
    let out = node
        .command(bin_runtime())
        .env("FAKE_PID", &me)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let argv = node.recorded().expect("the runtime ran");
    assert!(argv[0].ends_with("fake-runc"), "{argv:?}");
    assert_eq!(
        argv[1..],
        args.map(String::from),
        "arguments pass through unchanged"
    );

    let after = spec(&b);
    let env = env_of(&after);
    assert!(
        env.contains(&format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1))),
        "{env:?}"
    );
    assert!(env.contains(&"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30".to_string()));
    let devices: Vec<&str> = after["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        devices,
        [
            "/dev/fuse",
            "/dev/nvidia1",
            "/dev/nvidiactl",
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools"
        ]
    );
    // The symlinked nodes resolve to /dev/null, 1:3.
    assert_eq!(after["linux"]["devices"][1]["major"], 1);
    // No hook: the shim binds the pid itself.
    assert_eq!(after["hooks"], before["hooks"]);
    // Fields gpushare does not know are kept.
    assert_eq!(after["x-vendor-extension"], before["x-vendor-extension"]);
    assert_eq!(
        after["linux"]["x-future-field"],
        before["linux"]["x-future-field"]
    );
    assert_eq!(after["hooks"]["prestart"], before["hooks"]["prestart"]);

    let ledger = node.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0]["id"], "c1");
    assert_eq!(ledger[0]["gpus"][0].as_str().unwrap(), uuid(1));
    assert_eq!(ledger[0]["thread_percentage"], 30.0);
    assert_eq!(
        ledger[0]["pid"].to_string(),
        me,
        "bound from the runtime's pid file"
    );
}

#[test]
fn a_non_gpu_container_is_left_byte_for_byte_alone() {
    let node = Node::new(2, "");
    for (name, env) in [
        ("unset", vec![]),
        ("empty", vec!["NVIDIA_VISIBLE_DEVICES="]),
        (
            "void",
            vec![
                "NVIDIA_VISIBLE_DEVICES=void",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=junk",
            ],
        ),
    ] {
        let _ = std::fs::remove_file(node.argv_file());
        let b = node.bundle(name, &env);
        let bytes = std::fs::read(b.join("config.json")).unwrap();
        let out = node.runtime(&["create", "-b", b.to_str().unwrap(), name]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        assert_eq!(
            std::fs::read(b.join("config.json")).unwrap(),
            bytes,
            "{name}"
        );
        assert!(node.recorded().is_some());
    }
    assert!(node.ledger().is_empty());
}

#[test]
fn none_is_a_gpu_container_without_a_gpu() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=none"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
    assert!(node.ledger().is_empty());
}

fn assert_refused_cleanly(
    node: &Node,
    b: &std::path::Path,
    bytes: &[u8],
    out: &std::process::Output,
    needles: &[&str],
) {
    assert_eq!(out.status.code(), Some(2), "{}", stderr(out));
    let err = stderr(out);
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err}");
    }
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        bytes,
        "config.json unchanged"
    );
    assert!(node.ledger().is_empty(), "no ledger entry");
    assert!(node.recorded().is_none(), "the runtime never ran");
    let names: Vec<String> = std::fs::read_dir(b)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| n == "config.json" || n == "rootfs"),
        "nothing left in the bundle: {names:?}"
    );
}

#[test]
fn two_gpus_are_refused_with_the_rule_and_nothing_is_left() {
    let node = Node::new(2, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0,1"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let log = node.path().join("runc-log.json");
    let out = node.runtime(&[
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "run",
        "-d",
        "--bundle",
        b.to_str().unwrap(),
        "c2",
    ]);
    assert_refused_cleanly(
        &node,
        &b,
        &bytes,
        &out,
        &["at most 1", "policy.max_gpus_per_container"],
    );
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .last()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"]
        .as_str()
        .unwrap()
        .contains("policy.max_gpus_per_container"));
}

#[test]
fn malformed_requests_are_refused_naming_variable_and_value() {
    let node = Node::new(2, "");
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["NVIDIA_VISIBLE_DEVICES=GPU-zz"],
            &["NVIDIA_VISIBLE_DEVICES", "GPU-zz", "accepted"],
        ),
        (
            &["NVIDIA_VISIBLE_DEVICES=7"],
            &["no GPU has index 7", &uuid(0)],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=150",
            ],
            &["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "150"],
        ),
        (
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=lots",
            ],
            &["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT", "lots"],
        ),
    ];
    for (i, (env, needles)) in cases.iter().enumerate() {
        let b = node.bundle(&format!("b{i}"), env);
        let bytes = std::fs::read(b.join("config.json")).unwrap();
        let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
        assert_refused_cleanly(&node, &b, &bytes, &out, needles);
    }
}

#[test]
fn text_log_format_gets_a_logrus_line() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=3"]);
    let log = node.path().join("log");
    let out = node.runtime(&[
        "--log",
        log.to_str().unwrap(),
        "create",
        "--bundle",
        b.to_str().unwrap(),
        "c",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("time=\"")
            && text.contains("level=error msg=\"gpushare: NVIDIA_VISIBLE_DEVICES"),
        "{text}"
    );
}

#[test]
fn other_subcommands_pass_through_without_reading_any_bundle() {
    let node = Node::new(1, "");
    for args in [
        &["state", "create"][..],
        &["--root", "/r", "delete", "--force", "c1"],
        &["kill", "c1", "KILL"],
        &["--version"],
        &["create", "--help"],
        &[],
    ] {
        let _ = std::fs::remove_file(node.argv_file());
        let out = node.runtime(args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            node.recorded().unwrap()[1..],
            args.iter().map(|s| s.to_string()).collect::<Vec<_>>()[..],
            "{args:?}"
        );
    }
}

#[test]
fn the_bundle_defaults_to_the_working_directory_and_every_flag_form_works() {
    let node = Node::new(2, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node
        .command(bin_runtime())
        .current_dir(&b)
        .args(["create", "create"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        node.ledger()[0]["id"],
        "create",
        "a container may be called create"
    );
    let bs = b.to_str().unwrap().to_owned();
    for (i, args) in [
        vec!["create".to_string(), format!("--bundle={bs}"), "x1".into()],
        vec![
            "run".into(),
            "-d".into(),
            "-b".into(),
            bs.clone(),
            "x2".into(),
        ],
        vec!["create".into(), "x3".into(), "--bundle".into(), bs.clone()],
    ]
    .into_iter()
    .enumerate()
    {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = node.runtime(&a);
        assert!(out.status.success(), "{a:?}: {}", stderr(&out));
        assert_eq!(node.ledger().len(), i + 2, "{a:?}");
    }
}

#[test]
fn a_failing_runtime_exit_code_is_the_shims() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &[]);
    let out = node
        .command(bin_runtime())
        .env("FAKE_EXIT", "7")
        .args(["create", "--bundle", b.to_str().unwrap(), "c"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "exec'd: the runtime's status is the caller's"
    );
}

#[test]
fn a_bad_config_or_missing_runtime_is_refused_before_anything_happens() {
    let node = Node::new(1, "[policy]\nmax_gpus = 2\n");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_refused_cleanly(&node, &b, &bytes, &out, &["policy.max_gpus", "unknown key"]);

    let node = Node::new(1, "");
    let text = std::fs::read_to_string(&node.config).unwrap();
    let fake = node.path().join("fake-runc");
    std::fs::write(
        &node.config,
        text.replace(fake.to_str().unwrap(), "/nonexistent/runc"),
    )
    .unwrap();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_refused_cleanly(
        &node,
        &b,
        &bytes,
        &out,
        &["/nonexistent/runc", "runtime.path"],
    );
}

#[test]
fn a_missing_device_node_fails_and_leaves_nothing() {
    let node = Node::new(2, "");
    std::fs::remove_file(node.path().join("dev/nvidia1")).unwrap();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=1"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("nvidia1"), "{}", stderr(&out));
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), bytes);
    assert!(node.ledger().is_empty());
}

#[test]
fn concurrent_creates_with_all_balance_and_never_double_book() {
    let node = Node::new(2, "");
    let children: Vec<_> = (0..20)
        .map(|i| {
            let b = node.bundle(&format!("b{i}"), &["NVIDIA_VISIBLE_DEVICES=all"]);
            node.command(bin_runtime())
                .env("FAKE_ARGV", node.path().join(format!("argv{i}")))
                .args(["create", "--bundle", b.to_str().unwrap(), &format!("c{i}")])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let ledger = node.ledger();
    assert_eq!(ledger.len(), 20, "no entry lost");
    let on = |i: u32| {
        ledger
            .iter()
            .filter(|e| e["gpus"][0].as_str().unwrap() == uuid(i))
            .count()
    };
    assert_eq!((on(0), on(1)), (10, 10));
}

#[test]
fn a_percentage_budget_is_enforced_across_creates() {
    let node = Node::new(1, "[policy]\nmax_thread_percentage_per_gpu = 100\n");
    node.fake_mps(0);
    for (i, pct, ok) in [(0, "60", true), (1, "40", true), (2, "1", false)] {
        let b = node.bundle(
            &format!("b{i}"),
            &[
                "NVIDIA_VISIBLE_DEVICES=0",
                &format!("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE={pct}"),
            ],
        );
        let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), &format!("c{i}")]);
        assert_eq!(out.status.success(), ok, "{pct}: {}", stderr(&out));
    }
    assert!(stderr(&node.runtime(&[
        "create",
        "--bundle",
        node.path().join("b2").to_str().unwrap(),
        "c2"
    ]))
    .contains("budget"));
    assert_eq!(node.ledger().len(), 2);
}

#[test]
fn delete_releases_after_the_runtimes_delete_succeeds_and_keeps_it_when_that_fails() {
    let node = Node::new(2, "");
    let me = std::process::id().to_string();
    for id in ["a", "b"] {
        let b = node.bundle(id, &["NVIDIA_VISIBLE_DEVICES=0"]);
        let out = node
            .command(bin_runtime())
            .env("FAKE_PID", &me)
            .args(["create", "--bundle", b.to_str().unwrap(), id])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = node
        .command(bin_runtime())
        .env("FAKE_EXIT", "1")
        .env("FAKE_STDERR", "container a is running")
        .args(["delete", "a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("container a is running"));
    assert_eq!(node.ledger().len(), 2, "a failed delete releases nothing");
    // Another runtime root's container "a" is another container: its
    // delete (a bare exec of the runtime) releases nothing here.
    let out = node.runtime(&["--root", "/r", "delete", "--force", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        node.recorded().unwrap()[1..],
        ["--root", "/r", "delete", "--force", "a"]
    );
    assert_eq!(parent_of_runtime(&node), std::process::id(), "exec'd");
    assert_eq!(node.ledger().len(), 2, "a delete under another root");
    let out = node.runtime(&["delete", "--force", "a"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ids: Vec<String> = node
        .ledger()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["b"]);
}

/// The fake runtime's parent: the shim when it ran the runtime as a
/// child, the test itself when the shim exec'd it.
fn parent_of_runtime(node: &Node) -> u32 {
    std::fs::read_to_string(node.path().join("argv.ppid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn without_a_pid_file_the_shim_asks_for_its_own_and_removes_it() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let me = std::process::id().to_string();
    let child = node
        .command(bin_runtime())
        .env("FAKE_PID", &me)
        .args([
            "--root",
            "/r",
            "create",
            "--bundle",
            b.to_str().unwrap(),
            "c",
        ])
        .spawn()
        .unwrap();
    let shim_pid = child.id();
    assert!(child.wait_with_output().unwrap().status.success());
    let argv = node.recorded().unwrap();
    assert_eq!(argv[1..4], ["--root", "/r", "create"]);
    assert_eq!(argv[4], "--pid-file", "{argv:?}");
    let own = node.path().join("state/pid").join(format!("{shim_pid}."));
    assert!(argv[5].starts_with(own.to_str().unwrap()), "{argv:?}");
    assert_eq!(argv[6..], ["--bundle", b.to_str().unwrap(), "c"]);
    assert!(!std::path::Path::new(&argv[5]).exists(), "removed");
    assert_eq!(node.ledger()[0]["pid"].to_string(), me);
    assert_eq!(
        parent_of_runtime(&node),
        shim_pid,
        "run as the shim's child"
    );
}

#[test]
fn a_failed_create_passes_its_status_and_output_through_and_leaves_nothing() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let bytes = std::fs::read(b.join("config.json")).unwrap();
    let out = node
        .command(bin_runtime())
        .env("FAKE_EXIT", "3")
        .env("FAKE_STDOUT", "to stdout")
        .env(
            "FAKE_STDERR",
            "runc: container_linux.go: starting container process caused: boom",
        )
        .args(["create", "--bundle", b.to_str().unwrap(), "c"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(stdout(&out), "to stdout\n");
    assert!(stderr(&out).contains("caused: boom"), "{}", stderr(&out));
    assert!(
        node.ledger().is_empty(),
        "released at once, not at the timeout"
    );
    assert_eq!(
        std::fs::read(b.join("config.json")).unwrap(),
        bytes,
        "put back"
    );
    // Death by a signal is passed on as death by that signal.
    let out = node
        .command(bin_runtime())
        .env("FAKE_DIE_BY", "TERM")
        .args(["create", "--bundle", b.to_str().unwrap(), "c"])
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGTERM), "{:?}", out.status);
    assert!(node.ledger().is_empty());
}

#[test]
fn the_runtime_starts_with_the_signals_the_shim_was_given() {
    // The shim installs handlers to forward signals and blocks all of them
    // around its spawn; the runtime must start as if exec'd directly: the
    // same signals ignored (SIGHUP here; posix_spawn would have reset it to
    // the default, the shim having caught it). The mask, SIGUSR2 blocked
    // here, is not seen: the fake's shell clears it as it starts.
    use std::os::unix::process::CommandExt;
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let started = |mut c: std::process::Command, id: &str| -> String {
        c.args(["create", "--bundle", b.to_str().unwrap(), id]);
        // SAFETY: signal and sigprocmask only, in the child before exec.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR2);
                libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                Ok(())
            });
        }
        let out = c.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(node.path().join("argv.sig")).unwrap()
    };
    let direct = started(
        node.command(node.path().join("fake-runc").to_str().unwrap()),
        "d",
    );
    let via_shim = started(node.command(bin_runtime()), "c");
    // glibc's posix_spawn (which the standard library's spawn uses) leaves
    // the C library's own two internal signals (32 and 33, which nothing
    // outside the process sends) ignored in the child: those two aside,
    // the runtime starts with what it would have had, exec'd directly.
    let internal = !((1u64 << 31) | (1u64 << 32));
    let masks = |text: &str| -> Vec<u64> {
        text.lines()
            .map(|l| {
                u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap() & internal
            })
            .collect()
    };
    assert_eq!(masks(&via_shim), masks(&direct), "{via_shim} vs {direct}");
    let mask = |name: &str| {
        let line = direct.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_ne!(mask("SigIgn:") & (1 << (libc::SIGHUP - 1)), 0, "{direct}");
}

#[test]
fn signals_to_the_shim_reach_the_runtime() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    for sig in [libc::SIGUSR1, libc::SIGTERM] {
        let _ = std::fs::remove_file(node.path().join("argv.signal"));
        let _ = std::fs::remove_file(node.argv_file());
        let child = node
            .command(bin_runtime())
            .env("FAKE_SLEEP", "20")
            .args(["create", "--bundle", b.to_str().unwrap(), "c"])
            .spawn()
            .unwrap();
        // Once the runtime runs (its argv is written), signal the shim.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while node.recorded().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the runtime never ran"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        unsafe { libc::kill(child.id() as i32, sig) };
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(42), "the runtime trapped it");
        let got = std::fs::read_to_string(node.path().join("argv.signal")).unwrap();
        assert_eq!(
            got.trim(),
            if sig == libc::SIGUSR1 { "USR1" } else { "TERM" }
        );
        assert!(node.ledger().is_empty(), "its create failed: released");
    }
}

#[test]
fn a_foreground_run_holds_the_gpu_while_it_runs_and_a_detached_one_keeps_it() {
    let node = Node::new(1, "");
    let me = std::process::id().to_string();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let child = node
        .command(bin_runtime())
        .env("FAKE_PID", &me)
        .env("FAKE_SLEEP", "1")
        .args(["run", "--bundle", b.to_str().unwrap(), "fg"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let l = node.ledger();
        if l.len() == 1 && l[0]["pid"].as_u64() == Some(u64::from(std::process::id())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bound while running: {l:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(child.wait_with_output().unwrap().status.success());
    assert!(node.ledger().is_empty(), "released when run returned");

    let out = node
        .command(bin_runtime())
        .env("FAKE_PID", &me)
        .args(["run", "-d", "--bundle", b.to_str().unwrap(), "bg"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let l = node.ledger();
    assert_eq!((l.len(), l[0]["pid"].to_string()), (1, me));
}

#[test]
fn non_gpu_creates_and_other_calls_are_a_bare_exec() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &[]);
    for args in [
        vec!["create", "--bundle", b.to_str().unwrap(), "plain"],
        vec!["start", "plain"],
        vec!["delete", "plain"],
    ] {
        let out = node.runtime(&args);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        assert_eq!(
            parent_of_runtime(&node),
            std::process::id(),
            "{args:?}: the shim exec'd the runtime"
        );
    }
}

#[test]
fn a_config_in_any_toml_form_is_read_and_a_typo_is_named() {
    let node = Node::new(1, "");
    let fake = node.path().join("fake-runc");
    let text = std::fs::read_to_string(&node.config).unwrap();
    // Valid TOML written another way: a quoted key.
    std::fs::write(
        &node.config,
        text.replace("[runtime]\npath =", "[runtime]\n\"path\" ="),
    )
    .unwrap();
    let b = node.bundle("b", &[]);
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.recorded().unwrap()[0].ends_with("fake-runc"));
    // A typo in a key: refused by name, even for a non-GPU container.
    std::fs::write(
        &node.config,
        text.replace("[runtime]\npath =", "[runtime]\npth ="),
    )
    .unwrap();
    let _ = std::fs::remove_file(node.argv_file());
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("`runtime.pth`"), "{}", stderr(&out));
    assert!(node.recorded().is_none());
    assert!(fake.exists());
}

#[test]
fn a_placed_containers_delete_ends_as_the_runtime_ended() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    assert!(node
        .runtime(&["create", "--bundle", b.to_str().unwrap(), "c"])
        .status
        .success());
    let out = node
        .command(bin_runtime())
        .env("FAKE_DIE_BY", "TERM")
        .args(["delete", "c"])
        .output()
        .unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(out.status.signal(), Some(libc::SIGTERM));
    assert_eq!(node.ledger().len(), 1, "not deleted: still held");
    let out = node.runtime(&["delete", "c"]);
    assert!(out.status.success());
    assert!(node.ledger().is_empty());
}

#[test]
fn the_runtime_is_one_program_that_needs_nothing_beside_it() {
    let node = Node::new(1, "");
    let alone = node.path().join("alone");
    std::fs::create_dir(&alone).unwrap();
    std::fs::copy(bin_runtime(), alone.join("gpushare-runtime")).unwrap();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node
        .command(alone.join("gpushare-runtime").to_str().unwrap())
        .args(["create", "--bundle", b.to_str().unwrap(), "c"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.ledger().len(), 1);
}

#[test]
fn an_engines_exec_into_a_placed_container_gets_gpushares_variables() {
    let node = Node::new(2, "");
    node.fake_mps(1);
    let b = node.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=1",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
    );
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The process as containerd and Docker write it: the engine's copy of
    // the spec's process, without what gpushare set; a variable the image
    // sets that gpushare also sets is replaced, the others are kept.
    let process = node.path().join("runc-process123");
    let original = json!({"args": ["nvidia-smi"], "env": ["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=1", "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100", "A=1"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "x-future": true});
    std::fs::write(&process, original.to_string()).unwrap();
    // Under another runtime root, "c1" is another container: its exec's
    // process is not touched.
    let elsewhere = [
        "--root",
        "/run/x",
        "exec",
        "--process",
        process.to_str().unwrap(),
        "c1",
    ];
    let out = node.runtime(&elsewhere);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&process).unwrap(),
        original.to_string().as_bytes()
    );
    let args = [
        "exec",
        "--process",
        process.to_str().unwrap(),
        "--detach",
        "--pid-file",
        "/run/x.pid",
        "c1",
    ];
    let out = node.runtime(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let mut passed = node.recorded().unwrap();
    passed.remove(0);
    assert_eq!(passed, args, "the arguments are passed on unchanged");
    let got: Value = serde_json::from_slice(&std::fs::read(&process).unwrap()).unwrap();
    let env = env_of(&json!({"process": got.clone()}));
    assert_eq!(
        env,
        [
            "PATH=/bin",
            "A=1",
            &format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1)),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
            "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
        ]
    );
    assert_eq!(got["args"], original["args"]);
    assert_eq!(
        got["x-future"], true,
        "fields gpushare does not set are kept"
    );
    // The same exec as the main process sees it: the rewritten spec.
    let main = env_of(&spec(&b));
    for kv in &env[2..] {
        assert!(main.contains(kv), "{kv} in {main:?}");
    }

    // A container gpushare does not hold: the file is not touched.
    let other = node.path().join("runc-process456");
    std::fs::write(&other, original.to_string()).unwrap();
    let out = node.runtime(&["exec", "-p", other.to_str().unwrap(), "plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(&other).unwrap(),
        original.to_string().as_bytes()
    );

    // A process "file" that is a FIFO or a link is refused, runc not run.
    std::fs::remove_file(node.argv_file()).unwrap();
    let fifo = node.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let link = node.path().join("link");
    std::os::unix::fs::symlink(&process, &link).unwrap();
    for bad in [&fifo, &link] {
        let out = node.runtime(&["exec", "--process", bad.to_str().unwrap(), "c1"]);
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("was not started") && err.trim_end().lines().count() == 1,
            "{err}"
        );
        assert!(node.recorded().is_none(), "runc never ran");
    }
}

#[test]
fn version_prints_gpushares_then_the_runtimes() {
    let node = Node::new(1, "");
    let version = env!("CARGO_PKG_VERSION");
    let ours = format!("gpushare-runtime version {version}\n\n");
    let run = |node: &Node| {
        node.command(bin_runtime())
            .env("FAKE_STDOUT", "runc version 1.1.5")
            .args(["--version"])
            .output()
            .unwrap()
    };
    let out = run(&node);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{ours}runc version 1.1.5\n"));
    assert_eq!(node.recorded().unwrap()[1..], ["--version"]);
    // A config written another way: the same.
    let text = std::fs::read_to_string(&node.config).unwrap();
    std::fs::write(
        &node.config,
        text.replace("[runtime]\npath =", "[runtime]\n\"path\" ="),
    )
    .unwrap();
    let out = run(&node);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), format!("{ours}runc version 1.1.5\n"));
    // The other two binaries.
    for (bin, name) in [(bin_hook(), "gpushare-hook"), (bin_cli(), "gpushare")] {
        let out = node.command(bin).arg("--version").output().unwrap();
        assert!(out.status.success());
        assert_eq!(stdout(&out), format!("{name} version {version}\n"));
    }
}

#[test]
fn a_held_container_is_one_root_and_one_id_and_a_second_create_of_it_changes_nothing() {
    let node = Node::new(2, "");
    let me = std::process::id().to_string();
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let create = |root: Option<&str>, extra: &[(&str, &str)]| {
        let mut c = node.command(bin_runtime());
        c.env("FAKE_PID", &me);
        for (k, v) in extra {
            c.env(k, v);
        }
        if let Some(r) = root {
            c.args(["--root", r]);
        }
        c.args(["create", "--bundle", b.to_str().unwrap(), "c1"])
            .output()
            .unwrap()
    };
    let holds = || -> Vec<(String, String, u64)> {
        let mut v: Vec<_> = node
            .ledger()
            .iter()
            .map(|h| {
                (
                    h["root"].as_str().unwrap().to_owned(),
                    h["id"].as_str().unwrap().to_owned(),
                    h["pid"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        v.sort();
        v
    };
    let running = (
        String::new(),
        "c1".to_owned(),
        u64::from(std::process::id()),
    );
    let out = create(None, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(holds(), std::slice::from_ref(&running));
    let spec_after = std::fs::read(b.join("config.json")).unwrap();

    // The same root and id again, as a confused engine or a person might:
    // refused before the runtime runs, and nothing changes.
    std::fs::remove_file(node.argv_file()).unwrap();
    let out = create(None, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("already holds GPU") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    assert!(node.recorded().is_none(), "the runtime never ran");
    assert_eq!(std::fs::read(b.join("config.json")).unwrap(), spec_after);
    assert_eq!(holds(), std::slice::from_ref(&running));

    // The same id under another root is another container. Its failed
    // create takes back its own reservation only.
    let out = create(Some("/run/other"), &[("FAKE_EXIT", "1")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(holds(), std::slice::from_ref(&running));
    let out = create(Some("/run/other"), &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(holds().len(), 2);
    // Its delete releases it, and only it.
    let out = node.runtime(&["--root", "/run/other", "delete", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(holds(), std::slice::from_ref(&running));
    // An exec or a delete under a third root touches nothing.
    let out = node.runtime(&["--root", "/run/third", "delete", "--force", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(holds(), [running]);
}

#[test]
fn a_hold_whose_pid_another_process_now_has_is_not_counted() {
    let node = Node::new(1, "[policy]\nmax_thread_percentage_per_gpu = 100\n");
    node.fake_mps(0);
    // A container that held 80 % and is gone; its pid now names this test
    // (another process: another start time).
    {
        use gpushare::ledger::{Container, Hold, Ledger, Source};
        let mut l = Ledger::open(&node.path().join("state")).unwrap();
        let mut tx = l.begin().unwrap();
        let me = gpushare::sys::Process::find(std::process::id() as i32).unwrap();
        tx.insert(&Hold {
            container: Container {
                root: String::new(),
                id: "gone".into(),
            },
            gpus: vec![uuid(0)],
            thread_percentage: Some(80.0),
            pinned_mem_limit: None,
            pid: Some(me.pid),
            pid_start: Some(me.start - 1),
            names: Default::default(),
            env: Vec::new(),
            created: gpushare::sys::now() - 600,
            source: Source::Runtime,
            bundle: "/gone".into(),
            reservation: 1,
        })
        .unwrap();
        tx.commit().unwrap();
    }
    let status: Value = serde_json::from_str(&stdout(&node.cli(&["status", "--json"]))).unwrap();
    let g0 = &status["gpus"][0];
    assert_eq!(g0["containers"][0]["state"], "gone");
    assert_eq!(g0["committed_thread_percentage"], 0.0);
    let b = node.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=50",
        ],
    );
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(
        out.status.success(),
        "the gone share is not counted: {}",
        stderr(&out)
    );
    let ids: Vec<String> = node
        .ledger()
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["c1"], "the decision dropped it");
}

#[test]
fn two_hundred_creates_at_once_never_double_book_a_budget() {
    let node = Node::new(1, "[policy]\nmax_thread_percentage_per_gpu = 100\n");
    node.fake_mps(0);
    let b = node.bundle(
        "b",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=1",
        ],
    );
    let children: Vec<_> = (0..200)
        .map(|i| {
            node.command(bin_runtime())
                .env("FAKE_ARGV", node.path().join(format!("argv{i}")))
                .args(["create", "--bundle", b.to_str().unwrap(), &format!("c{i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut placed = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        match out.status.code() {
            Some(0) => placed += 1,
            Some(2) => assert!(stderr(&out).contains("budget"), "{}", stderr(&out)),
            other => panic!("{other:?}: {}", stderr(&out)),
        }
    }
    assert_eq!(placed, 100, "exactly the budget");
    let ledger = node.ledger();
    assert_eq!(ledger.len(), 100);
    let sum: f64 = ledger
        .iter()
        .map(|h| h["thread_percentage"].as_f64().unwrap())
        .sum();
    assert_eq!(sum, 100.0);
}

#[test]
fn an_unreadable_ledger_never_keeps_an_engine_from_deleting_a_container() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let db = node.path().join("state/ledger.db");
    std::fs::write(
        &db,
        b"not a database at all, but long enough to look like a header....",
    )
    .unwrap();
    for f in ["ledger.db-wal", "ledger.db-shm"] {
        let _ = std::fs::remove_file(node.path().join("state").join(f));
    }
    let out = node.runtime(&["delete", "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.recorded().unwrap()[1..], ["delete", "c1"]);
    let err = stderr(&out);
    assert!(
        err.contains("warning: cannot read the ledger") && err.trim_end().lines().count() == 1,
        "{err}"
    );
    // A create says what is wrong, in one line, and runs nothing.
    std::fs::remove_file(node.argv_file()).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c2"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("ledger.db"), "{}", stderr(&out));
    assert!(node.recorded().is_none());
}
