//! The real `gpushare nri` driven by a test NRI runtime (the runtime's side
//! of NRI's protocol: its multiplexer, ttrpc both ways): registration,
//! subscription, creation answered with gpushare's edits, refusals in the
//! error, start binding, removal releasing, Synchronize after a reconnect.

mod common;

use std::process::Stdio;

use common::kubelet::Plugin;
use common::nri_runtime::{container, pod, NriRuntime};
use common::*;
use gpushare::nri::api::Event;
use serde_json::json;

#[test]
fn the_plugin_places_gpu_containers_from_nri_events_and_reconciles_after_a_reconnect() {
    let node = Node::new(2, "[policy]\nmax_thread_percentage_per_gpu = 100\n");
    node.fake_mps(0);
    let runtime = NriRuntime::start(node.path());
    let log = std::fs::File::create(node.path().join("nri.log")).unwrap();
    let _plugin = Plugin(
        node.command(bin_cli())
            .args(["nri", "--socket"])
            .arg(&runtime.socket)
            .stderr(log)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (conn, registered) = runtime.accept();
    assert_eq!(
        (
            registered.plugin_name.as_str(),
            registered.plugin_idx.as_str()
        ),
        ("gpushare", "10")
    );
    let mask = runtime.configure(&conn).events;
    for e in [
        Event::CREATE_CONTAINER,
        Event::START_CONTAINER,
        Event::REMOVE_CONTAINER,
    ] {
        assert!(mask & (1 << (e as i32 - 1)) != 0, "{e:?} subscribed");
    }
    assert!(
        mask & (1 << (Event::STOP_CONTAINER as i32 - 1)) == 0,
        "a stop costs every container a round trip; the hold is bound to its process"
    );
    runtime.synchronize(&conn, vec![]);

    // A GPU container: GPU 1's node, the control nodes, its UUID.
    let p = pod("infer-pod", "");
    let pid = std::process::id();
    let c1 = container("c1", &["NVIDIA_VISIBLE_DEVICES=1"], pid);
    let r = runtime.create(&conn, &p, &c1).expect("placed");
    let adj = r.adjust.as_ref().expect("an adjustment");
    let paths: Vec<&str> = adj.linux.devices.iter().map(|d| d.path.as_str()).collect();
    assert!(
        paths.contains(&"/dev/nvidia1")
            && paths.contains(&"/dev/nvidiactl")
            && !paths.contains(&"/dev/nvidia0"),
        "{paths:?}"
    );
    assert!(adj
        .env
        .iter()
        .any(|kv| kv.key == "NVIDIA_VISIBLE_DEVICES" && kv.value == uuid(1)));
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (&held[0]["root"], &held[0]["source"], &held[0]["pid"]),
        (&json!("nri:test-runtime"), &json!("nri"), &json!(null)),
        "reserved at creation"
    );
    assert_eq!(held[0]["names"]["pod"], "infer-pod");
    runtime.event(&conn, Event::START_CONTAINER, &p, &c1);
    settled(
        || node.ledger()[0]["pid"] == json!(pid),
        "bound after its start",
    );

    // An MPS client: its share and pipe directory in its environment.
    let c2 = container(
        "c2",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
        ],
        pid,
    );
    let r = runtime.create(&conn, &p, &c2).expect("placed");
    let env: Vec<String> = r
        .adjust
        .env
        .iter()
        .map(|kv| format!("{}={}", kv.key, kv.value))
        .collect();
    assert!(
        env.contains(&"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25".to_owned())
            && env
                .iter()
                .any(|e| e.starts_with("CUDA_MPS_PIPE_DIRECTORY=")),
        "{env:?}"
    );
    assert!(
        r.adjust
            .mounts
            .iter()
            .any(|m| m.destination == "/tmp/nvidia-mps"),
        "the pipe directory is mounted"
    );

    // Refusals carry gpushare's line; nothing is held for them.
    let e = runtime
        .create(
            &conn,
            &p,
            &container("c3", &["NVIDIA_VISIBLE_DEVICES=0,1"], pid),
        )
        .unwrap_err();
    assert!(
        e.contains("gpushare: NVIDIA_VISIBLE_DEVICES asks for 2 GPUs"),
        "{e}"
    );
    // Not gpushare's to place: no GPU, or the runtime handler's.
    let r = runtime
        .create(&conn, &p, &container("plain", &[], pid))
        .unwrap();
    assert!(r.adjust.is_none());
    let r = runtime
        .create(
            &conn,
            &pod("shim-pod", "gpushare"),
            &container("shim", &["NVIDIA_VISIBLE_DEVICES=1"], pid),
        )
        .unwrap();
    assert!(r.adjust.is_none(), "the runtime handler places it");
    assert_eq!(node.ledger().len(), 2);

    // Removal releases, before anything else is placed: GPU 0's MPS share
    // is free again for a client at 80 % (25 + 80 would be over 100) sent
    // at once after the removal's answer.
    runtime.event(&conn, Event::REMOVE_CONTAINER, &p, &c2);
    let c4 = container(
        "c4",
        &[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=80",
        ],
        pid,
    );
    runtime
        .create(&conn, &p, &c4)
        .expect("c2's share was released first");
    runtime.event(&conn, Event::REMOVE_CONTAINER, &p, &c4);
    settled(|| node.ledger().len() == 1, "c2 and c4 released");

    // c5 is created, and the runtime goes before its start reaches the
    // plugin. It comes back: the plugin connects again, and Synchronize, in
    // two parts, shows c5 running and c1 gone meanwhile: c1's hold goes,
    // c5's stays and is bound to its process.
    let c5 = container("c5", &["NVIDIA_VISIBLE_DEVICES=0"], pid);
    runtime.create(&conn, &p, &c5).expect("placed");
    drop(conn);
    let (conn, _) = runtime.accept();
    runtime.configure(&conn);
    runtime.synchronize_parts(&conn, vec![vec![c5.clone()], vec![]]);
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(
        (&held[0]["id"], &held[0]["pid"]),
        (&json!("c5"), &json!(pid))
    );

    // And once more, with c5 gone too: nothing is left held.
    drop(conn);
    let (conn, _) = runtime.accept();
    runtime.configure(&conn);
    runtime.synchronize(&conn, vec![]);
    assert!(node.ledger().is_empty(), "{:?}", node.ledger());
}

/// Waits (5 s at most) for `cond`: the plugin answers a start or a removal
/// at once and writes the ledger just after.
fn settled(cond: impl Fn() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "not {what} within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
