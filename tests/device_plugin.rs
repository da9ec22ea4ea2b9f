//! A test kubelet drives the real `gpushare device-plugin`: its
//! registration service on `kubelet.sock` in a temporary device-plugin
//! directory, and a client of the plugin's own socket, as kubelet's device
//! manager is (API v1beta1). Then the allocation is applied to a bundle as
//! kubelet and containerd's CRI apply it (the plugin's variables first,
//! then the pod's own, its annotations) and created through
//! gpushare-runtime.

mod common;

use std::path::Path;

use common::kubelet::{Kubelet, Plugin};
use common::*;
use gpushare::device_plugin::api::device_plugin_client::DevicePluginClient;
use gpushare::device_plugin::api::*;
use serde_json::{json, Value};
use tonic::transport::Channel;

fn units(gpu: u32, range: std::ops::Range<u32>) -> Vec<String> {
    range.map(|n| format!("{}::{n}", uuid(gpu))).collect()
}

#[test]
fn kubelet_registers_lists_prefers_one_gpu_allocates_and_sees_health_and_restarts() {
    let node = Node::new(2, "");
    node.fake_mps(1);
    let dir = node.path().join("device-plugins");
    std::fs::create_dir(&dir).unwrap();
    let mut kubelet = Kubelet::start(&dir);
    let _plugin = Plugin::start(
        node.command(bin_cli()),
        &dir,
        &node.path().join("device-plugin.log"),
    );

    // Registration.
    let r = Kubelet::next_registration(&kubelet.rt, &mut kubelet.registered);
    assert_eq!(
        (
            r.version.as_str(),
            r.endpoint.as_str(),
            r.resource_name.as_str()
        ),
        ("v1beta1", "gpushare.sock", "gpushare.io/gpu-percent")
    );
    assert!(r.options.unwrap().get_preferred_allocation_available);

    // The device list: 100 healthy units per GPU.
    let mut client = kubelet.plugin();
    let mut stream = kubelet
        .rt
        .block_on(client.list_and_watch(Empty {}))
        .unwrap()
        .into_inner();
    let devices = Kubelet::list_until(&kubelet.rt, &mut stream, "200 devices", |d| d.len() == 200);
    assert!(devices.iter().all(|d| d.health == "Healthy"));
    assert_eq!(devices[0].id, format!("{}::0", uuid(0)));
    assert_eq!(devices[199].id, format!("{}::99", uuid(1)));

    // Preferred allocation: one GPU, the best fit, also when fragmented.
    let prefer = |client: &mut DevicePluginClient<Channel>, available: Vec<String>, size: i32| {
        let r = kubelet
            .rt
            .block_on(client.get_preferred_allocation(PreferredAllocationRequest {
                container_requests: vec![ContainerPreferredAllocationRequest {
                    available_device_i_ds: available,
                    must_include_device_i_ds: vec![],
                    allocation_size: size,
                }],
            }))
            .unwrap()
            .into_inner();
        r.container_responses[0].device_i_ds.clone()
    };
    let all: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
    let p = prefer(&mut client, all, 30);
    assert_eq!(p.len(), 30);
    let gpu_of = |id: &String| id.rsplit_once("::").unwrap().0.to_owned();
    assert!(p.iter().all(|id| gpu_of(id) == gpu_of(&p[0])), "{p:?}");
    // 40 units free on GPU 0, 35 on GPU 1: 30 fit best on GPU 1, 38 only
    // on GPU 0, 50 on neither though 75 are free.
    let mut fragmented = units(0, 60..100);
    fragmented.extend(units(1, 65..100));
    let p = prefer(&mut client, fragmented.clone(), 30);
    assert!(p.iter().all(|id| gpu_of(id) == uuid(1)), "{p:?}");
    let p = prefer(&mut client, fragmented.clone(), 38);
    assert!(
        p.len() == 38 && p.iter().all(|id| gpu_of(id) == uuid(0)),
        "{p:?}"
    );
    assert!(prefer(&mut client, fragmented, 50).is_empty());

    // Allocate: units of two GPUs are refused naming the rule.
    let allocate = |client: &mut DevicePluginClient<Channel>, ids: Vec<String>| {
        kubelet.rt.block_on(client.allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: ids }],
        }))
    };
    let mut spanning = units(0, 0..20);
    spanning.extend(units(1, 0..20));
    let e = allocate(&mut client, spanning).unwrap_err();
    assert!(
        e.message().contains("one-GPU-per-module rule") && !e.message().contains('\n'),
        "{}",
        e.message()
    );
    // 30 units of GPU 1.
    let answer = allocate(&mut client, units(1, 40..70))
        .unwrap()
        .into_inner();
    let c = &answer.container_responses[0];
    assert_eq!(c.envs["NVIDIA_VISIBLE_DEVICES"], uuid(1));
    assert_eq!(c.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "30");
    let key = c.annotations["gpushare.io/allocation"].clone();

    // Applied as kubelet and containerd do: the plugin's variables, then
    // the pod's own (which win in the spec), the plugin's annotation. The
    // container gets exactly the allocation: GPU 1 at 30 %.
    let b = node.bundle(
        "alloc",
        &[
            &format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1)),
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ],
    );
    let mut spec = spec(&b);
    spec["process"]["env"] = json!([
        "PATH=/bin",
        "NVIDIA_VISIBLE_DEVICES=0",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=80"
    ]);
    spec["annotations"] = json!({"gpushare.io/allocation": key});
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "alloc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let held = node.ledger();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0]["gpus"], json!([uuid(1)]));
    assert_eq!(held[0]["thread_percentage"], json!(30.0));
    let env = env_of(&common::spec(&b));
    assert!(
        env.contains(&format!("NVIDIA_VISIBLE_DEVICES={}", uuid(1)))
            && env.contains(&"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30".to_owned())
            && !env
                .iter()
                .any(|e| e.ends_with("=80") || e == "NVIDIA_VISIBLE_DEVICES=0"),
        "the process sees the allocation's values: {env:?}"
    );
    // The container restarts in its pod (kubelet gives the new one the
    // same annotation): the same allocation, again.
    let out = node.runtime(&["delete", "alloc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(node.ledger().is_empty(), "released with the container");
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "alloc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let held = node.ledger();
    assert_eq!(
        (&held[0]["gpus"], &held[0]["thread_percentage"]),
        (&json!([uuid(1)]), &json!(30.0)),
        "{held:?}"
    );
    // The hook alone cannot change them: refused, one line, nothing held.
    let hb = node.bundle("alloc-hook", &[]);
    let mut hspec = common::spec(&hb);
    hspec["process"]["env"] = json!(["PATH=/bin", "NVIDIA_VISIBLE_DEVICES=0"]);
    hspec["annotations"] = json!({"gpushare.io/allocation": key});
    std::fs::write(hb.join("config.json"), hspec.to_string()).unwrap();
    let state = json!({"ociVersion": "1.0.2", "id": "alloc-hook", "status": "creating",
                       "pid": std::process::id(), "bundle": hb});
    let out = node.hook("createRuntime", &state);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("a hook cannot change a process's environment")
            && stderr(&out).trim_end().lines().count() == 1,
        "{}",
        stderr(&out)
    );
    // An allocation the plugin never made is refused.
    let fb = node.bundle("forged", &["NVIDIA_VISIBLE_DEVICES=1"]);
    let mut fspec = common::spec(&fb);
    fspec["annotations"] = json!({"gpushare.io/allocation": format!("{}::0", uuid(0))});
    std::fs::write(fb.join("config.json"), fspec.to_string()).unwrap();
    let out = node.runtime(&["create", "--bundle", fb.to_str().unwrap(), "forged"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("is not one this node's device plugin recorded"),
        "{}",
        stderr(&out)
    );
    assert_eq!(node.ledger().len(), 1);

    // Health: GPU 0 leaves the inventory, then comes back.
    let inv = node.path().join("inventory.toml");
    let text = std::fs::read_to_string(&inv).unwrap();
    let gpu1_only: String = text.split("\n\n").skip(1).collect::<Vec<_>>().join("\n\n");
    std::fs::write(&inv, &gpu1_only).unwrap();
    let d = Kubelet::list_until(&kubelet.rt, &mut stream, "GPU 0 unhealthy", |d| {
        d.iter().any(|x| x.health == "Unhealthy")
    });
    assert!(d.len() == 200 && d[..100].iter().all(|x| x.health == "Unhealthy"));
    assert!(d[100..].iter().all(|x| x.health == "Healthy"));
    std::fs::write(&inv, &text).unwrap();
    Kubelet::list_until(&kubelet.rt, &mut stream, "GPU 0 back", |d| {
        d.iter().all(|x| x.health == "Healthy")
    });

    // kubelet restarts: the plugin registers again by itself.
    let mut again = kubelet.restart();
    let r = Kubelet::next_registration(&kubelet.rt, &mut again);
    assert_eq!(r.resource_name, "gpushare.io/gpu-percent");
    let mut client = kubelet.plugin();
    let opts = kubelet
        .rt
        .block_on(client.get_device_plugin_options(Empty {}))
        .unwrap()
        .into_inner();
    assert!(opts.get_preferred_allocation_available);
}

#[test]
fn require_allocation_refuses_gpu_containers_without_one_and_leaves_others() {
    let node = Node::new(2, "[device_plugin]\nrequire_allocation = true\n");
    let b = node.bundle("env-only", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "env-only"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("require_allocation")
            && stderr(&out).contains("gpushare.io/gpu-percent")
            && stderr(&out).trim_end().lines().count() == 1,
        "{}",
        stderr(&out)
    );
    assert!(node.recorded().is_none(), "runc never ran");
    assert!(node.ledger().is_empty());
    let b = node.bundle("plain", &[]);
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "plain"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        node.recorded().is_some(),
        "a non-GPU container is untouched"
    );
}

#[test]
fn bad_device_plugin_config_is_one_line_naming_the_key() {
    for (extra, key) in [
        (
            "[device_plugin]\nunits_per_gpu = 0\n",
            "device_plugin.units_per_gpu",
        ),
        (
            "[device_plugin]\nresource = \"gpu\"\n",
            "device_plugin.resource",
        ),
        (
            "[device_plugin]\nrequire_allocation = \"yes\"\n",
            "device_plugin.require_allocation",
        ),
        (
            "[device_plugin]\npinned_memory = \"half\"\n",
            "device_plugin.pinned_memory",
        ),
        ("[device_plugin]\nunits = 5\n", "device_plugin.units"),
    ] {
        let node = Node::new(1, extra);
        let dir = node.path().join("kubelet");
        std::fs::create_dir(&dir).unwrap();
        let out = node.cli(&["device-plugin", "--kubelet-dir", dir.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{extra}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(key) && stderr(&out).trim_end().lines().count() == 1,
            "{extra}: {}",
            stderr(&out)
        );
        assert!(!dir.join("gpushare.sock").exists(), "nothing left behind");
    }
}

fn spec(b: &Path) -> Value {
    common::spec(b)
}
