//! The Kubernetes node path, driven as kubelet drives it: a CRI client
//! (the `k8s-cri` crate's generated v1 API over tonic) against Debian's
//! containerd, started by the test on a config written by `gpushare install
//! containerd` (the runtime handler "gpushare"), with a pause image and a
//! workload image imported from the test's busybox rootfs (no registry) and
//! pods on the node's network (no CNI). Through the shim (`gpushare-runtime`
//! as the handler's binary) and through the hook alone (`--mode hook`: runc,
//! the hooks in the handler's base spec). Root; needs containerd and ctr.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::engine::*;
use common::*;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use serde_json::{json, Value};
use tonic::transport::Channel;

const PAUSE: &str = "docker.io/library/gpushare-pause:1";
const WORKLOAD: &str = "docker.io/library/gpushare-test:1";

/// A CRI client on containerd's socket, calls made blocking.
struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    fn connect(sock: &Path) -> Cri {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let channel = rt
            .block_on(gpushare::device_plugin::unix_channel(sock))
            .expect("containerd's CRI socket answers");
        Cri {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// A pod on the node's network, as kubelet asks for it with a
    /// RuntimeClass whose handler is `handler` ("": the default runtime).
    fn run_pod(&mut self, name: &str, logs: &Path, handler: &str) -> (String, PodSandboxConfig) {
        self.run_pod_in(name, logs, handler, node_network())
    }

    /// A pod whose namespaces are `namespaces`.
    fn run_pod_in(
        &mut self,
        name: &str,
        logs: &Path,
        handler: &str,
        namespaces: NamespaceOption,
    ) -> (String, PodSandboxConfig) {
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{name}"),
                namespace: "edge".into(),
                attempt: 0,
            }),
            // On the node's network the pod shares the node's UTS namespace:
            // kubelet sets no hostname then.
            hostname: String::new(),
            log_directory: logs.display().to_string(),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(namespaces),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        let id = self
            .rt
            .block_on(self.client.run_pod_sandbox(req))
            .unwrap_or_else(|e| panic!("RunPodSandbox: {e}"))
            .into_inner()
            .pod_sandbox_id;
        (id, config)
    }

    /// CreateContainer then StartContainer: the container id, or the CRI
    /// error's message (what kubelet puts in the pod's events).
    fn start_container(
        &mut self,
        pod: &(String, PodSandboxConfig),
        name: &str,
        env: &[(&str, &str)],
    ) -> Result<String, String> {
        self.start(pod, container_config(name, env))
    }

    fn start(
        &mut self,
        pod: &(String, PodSandboxConfig),
        config: ContainerConfig,
    ) -> Result<String, String> {
        let created = self
            .rt
            .block_on(self.client.create_container(CreateContainerRequest {
                pod_sandbox_id: pod.0.clone(),
                config: Some(config),
                sandbox_config: Some(pod.1.clone()),
            }));
        let id = created
            .map_err(|e| e.message().to_owned())?
            .into_inner()
            .container_id;
        self.rt
            .block_on(self.client.start_container(StartContainerRequest {
                container_id: id.clone(),
            }))
            .map_err(|e| e.message().to_owned())?;
        Ok(id)
    }

    /// ExecSync of `sh -c script`: its stdout and stderr.
    fn exec(&mut self, id: &str, script: &str) -> String {
        let r = self
            .rt
            .block_on(self.client.exec_sync(ExecSyncRequest {
                container_id: id.into(),
                cmd: vec!["sh".into(), "-c".into(), script.into()],
                timeout: 30,
            }))
            .unwrap_or_else(|e| panic!("ExecSync: {e}"))
            .into_inner();
        format!(
            "{}{}",
            String::from_utf8_lossy(&r.stdout),
            String::from_utf8_lossy(&r.stderr)
        )
    }

    fn remove_container(&mut self, id: &str) {
        self.rt
            .block_on(self.client.stop_container(StopContainerRequest {
                container_id: id.into(),
                timeout: 0,
            }))
            .unwrap_or_else(|e| panic!("StopContainer: {e}"));
        self.rt
            .block_on(self.client.remove_container(RemoveContainerRequest {
                container_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("RemoveContainer: {e}"));
    }

    fn remove_pod(&mut self, id: &str) {
        self.rt
            .block_on(self.client.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("StopPodSandbox: {e}"));
        self.rt
            .block_on(self.client.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: id.into(),
            }))
            .unwrap_or_else(|e| panic!("RemovePodSandbox: {e}"));
    }
}

/// A container of the workload image running `sleep`, with `env`, as
/// kubelet configures one.
fn container_config(name: &str, env: &[(&str, &str)]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: WORKLOAD.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "1000".into()],
        envs: env
            .iter()
            .map(|(k, v)| KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            })
            .collect(),
        log_path: format!("{name}.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(node_network()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// kubelet's namespaces for a `hostNetwork` pod without
/// `shareProcessNamespace`: the node's network, a PID namespace per
/// container, the pod's IPC.
fn node_network() -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: NamespaceMode::Container as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// containerd with its CRI plugin as a node would have it, but on this VM:
/// the pause image imported, no CNI configured (pods use the node's
/// network), `restrict_oom_score_adj` (runc here cannot set the pause
/// container's score), `cri` settings added (CDI's). Debian 12's containerd
/// on a minimal config, Debian 13's on its full default one. Then `gpushare
/// install containerd` with `install_args` on that config, if any.
/// (daemon, socket, containerd's dir)
fn cri_node(
    engines: &Engines,
    node: &Node,
    install_args: Option<&[&str]>,
    cri: &[(&str, toml_edit::Item)],
) -> (Daemon, PathBuf, PathBuf) {
    cri_node_with(engines, node, install_args, cri, &|_| {})
}

/// `cri_node`, with `tweak` applied to containerd's config last.
fn cri_node_with(
    engines: &Engines,
    node: &Node,
    install_args: Option<&[&str]>,
    cri: &[(&str, toml_edit::Item)],
    tweak: &dyn Fn(&mut toml_edit::DocumentMut),
) -> (Daemon, PathBuf, PathBuf) {
    engines.need("containerd", "containerd");
    let (d, config, sock, text) = match engines.name {
        "Debian 12" => containerd_dir(node),
        _ => containerd_default_dir(engines, node),
    };
    std::fs::create_dir_all(d.join("cni/bin")).unwrap();
    std::fs::create_dir_all(d.join("cni/conf")).unwrap();
    let mut doc: toml_edit::DocumentMut = text.parse().unwrap();
    // Tables written as tables, as containerd's own configs have them.
    fn table<'a>(t: &'a mut toml_edit::Table, key: &str) -> &'a mut toml_edit::Table {
        t.entry(key)
            .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
            .as_table_mut()
            .unwrap()
    }
    let plugin = table(
        table(doc.as_table_mut(), "plugins"),
        "io.containerd.grpc.v1.cri",
    );
    plugin["sandbox_image"] = toml_edit::value(PAUSE);
    plugin["restrict_oom_score_adj"] = toml_edit::value(true);
    let cni = table(plugin, "cni");
    cni["bin_dir"] = toml_edit::value(d.join("cni/bin").display().to_string());
    cni["conf_dir"] = toml_edit::value(d.join("cni/conf").display().to_string());
    for (k, v) in cri {
        plugin[*k] = v.clone();
    }
    tweak(&mut doc);
    std::fs::write(&config, doc.to_string()).unwrap();
    if let Some(install_args) = install_args {
        let mut args = vec!["containerd", "--config", config.to_str().unwrap()];
        args.extend_from_slice(install_args);
        install_on(engines, node, &args);
    }
    let daemon = start_containerd(engines, node, &d, &config, &sock);
    let ctr = |args: &[&str]| ctr_k8s(engines, &sock, args);
    let pause = image_archive_of(
        node,
        PAUSE,
        json!({"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sleep", "2000000"]}),
    );
    ctr(&["image", "import", pause.to_str().unwrap()]);
    ctr(&["image", "import", image_archive(node).to_str().unwrap()]);
    (daemon, sock, d)
}

/// The spec containerd handed the runtime for container `id`.
fn bundle_spec(containerd: &Path, id: &str) -> Value {
    let path = containerd
        .join("state/io.containerd.runtime.v2.task/k8s.io")
        .join(id)
        .join("config.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap()
}

fn status_json(node: &Node) -> Value {
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["status", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// GPU 0's MPS daemon started and a client of it at 25 % in `pod`: its id,
/// and what it sees (its share and pipe directory variables, the pipe
/// directory's files).
fn mps_client(node: &Node, cri: &mut Cri, pod: &(String, PodSandboxConfig)) -> (String, String) {
    gpushare(node, &["mps", "start", "--gpu", "0"]);
    let id = cri
        .start_container(
            pod,
            "mps-client",
            &[
                ("NVIDIA_VISIBLE_DEVICES", "0"),
                ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "25"),
            ],
        )
        .expect("the MPS client starts");
    let t = cri.exec(
        &id,
        "echo share=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE pipe=$CUDA_MPS_PIPE_DIRECTORY; ls /tmp/nvidia-mps",
    );
    (id, t)
}

/// What both modes must show, kubelet's way.
fn the_node_path(node: &Node, sock: &Path, containerd: &Path, shim: bool) {
    let mut cri = Cri::connect(sock);
    let logs = node.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = cri.run_pod("infer-pod", &logs, "gpushare");

    // The sandbox (pause) container is left alone.
    let sandbox = bundle_spec(containerd, &pod.0);
    assert!(
        !sandbox.to_string().contains("nvidia"),
        "no GPU device or variable in the pause container: {sandbox}"
    );
    assert!(
        node.ledger().is_empty(),
        "the pause container holds nothing"
    );

    // GPU 1 only: its node opens (ENXIO: the cgroup allows it), GPU 0's is
    // absent and a hand-made one is denied.
    let id = cri
        .start_container(&pod, "infer", &[("NVIDIA_VISIBLE_DEVICES", "1")])
        .expect("the GPU container starts");
    let t = cri.exec(&id, GPU1_SCRIPT);
    assert_sees_only_gpu_1(&t);

    // Status names the pod, namespace and container from the CRI
    // annotations.
    let doc = status_json(node);
    let c = &doc["gpus"][1]["containers"][0];
    assert_eq!(c["id"], id.as_str(), "{doc}");
    assert_eq!(
        c["names"],
        json!({"pod": "infer-pod", "namespace": "edge", "container": "infer"}),
        "{doc}"
    );
    assert_eq!(c["state"], "running");

    // What an exec'd process sees of gpushare's variables.
    let main_env = cri.exec(
        &id,
        "tr '\\0' '\\n' < /proc/1/environ | grep NVIDIA_VISIBLE_DEVICES",
    );
    let exec_env = cri.exec(&id, "echo NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES");
    let uuid = doc["gpus"][1]["uuid"].as_str().unwrap();
    if shim {
        assert_eq!(main_env.trim(), format!("NVIDIA_VISIBLE_DEVICES={uuid}"));
    } else {
        // A hook cannot change a process's environment: main and exec'd
        // processes see the request as written (the README says so).
        assert_eq!(main_env.trim(), "NVIDIA_VISIBLE_DEVICES=1");
    }
    assert_eq!(
        exec_env.trim(),
        main_env.trim(),
        "exec agrees with the main process"
    );

    // NVIDIA's device plugin names the GPU by its UUID in its Allocate
    // answer: taken as it is.
    let plugin = cri
        .start_container(&pod, "from-plugin", &[("NVIDIA_VISIBLE_DEVICES", uuid)])
        .expect("a UUID request starts");
    assert_sees_only_gpu_1(&cri.exec(&plugin, GPU1_SCRIPT));
    assert_eq!(node.ledger().len(), 2);

    // Two GPUs: StartContainer fails with gpushare's one-line reason.
    let err = cri
        .start_container(&pod, "greedy", &[("NVIDIA_VISIBLE_DEVICES", "0,1")])
        .expect_err("two GPUs are refused");
    assert!(
        err.contains("NVIDIA_VISIBLE_DEVICES asks for 2 GPUs") && !err.contains('\n'),
        "the CRI error carries the reason: {err}"
    );
    assert_eq!(node.ledger().len(), 2, "the refusal holds nothing");

    // An MPS client: GPU 0's daemon runs; the container gets its pipe
    // directory and (through the shim) its share and the pipe variable.
    let (mps, t) = mps_client(node, &mut cri, &pod);
    let pipe = if shim { "/tmp/nvidia-mps" } else { "" };
    assert!(
        t.contains(&format!("share=25 pipe={pipe}\n")) && t.contains("control"),
        "{t}"
    );
    let main = cri.exec(&mps, "tr '\\0' '\\n' < /proc/1/environ");
    assert!(
        main.contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25"),
        "{main}"
    );
    if shim {
        assert!(
            main.contains("CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps"),
            "{main}"
        );
    }

    // Removing the pod empties the ledger.
    cri.remove_pod(&pod.0);
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["mps", "stop"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(node.ledger().is_empty(), "{:?}", node.ledger());
}

fn through_the_handler(engines: &Engines) {
    let node = Node::new("cri-shim");
    let (_daemon, sock, d) = cri_node(engines, &node, Some(&[]), &[]);
    the_node_path(&node, &sock, &d, true);
}

fn through_the_base_spec(engines: &Engines) {
    let node = Node::new("cri-hook");
    let config = node.config.to_str().unwrap().to_owned();
    let (_daemon, sock, d) = cri_node(
        engines,
        &node,
        Some(&["--mode", "hook", "--gpushare-config", &config]),
        &[],
    );
    the_node_path(&node, &sock, &d, false);
}

#[test]
fn a_pod_through_cri_with_the_gpushare_runtime_handler() {
    through_the_handler(&Engines::debian12());
}

#[test]
fn a_pod_through_cri_with_the_hooks_in_the_handlers_base_spec() {
    through_the_base_spec(&Engines::debian12());
}

#[test]
fn containerd_1_7_full_default_config_a_pod_through_the_gpushare_runtime_handler() {
    through_the_handler(&Engines::debian13());
}

#[test]
fn containerd_1_7_full_default_config_a_pod_through_the_hooks_in_the_base_spec() {
    through_the_base_spec(&Engines::debian13());
}

#[test]
fn containerd_1_7_cri_cdi_devices_share_gpus_with_no_runtime_replaced() {
    let engines = Engines::debian13();
    let node = Node::new("cri-cdi");
    let cdi = node.dir.path().join("cdi");
    let out = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["cdi", "generate", "--output"])
        .arg(cdi.join("gpushare.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut dirs = toml_edit::Array::new();
    dirs.push(cdi.display().to_string());
    let (_daemon, sock, _d) = cri_node(
        &engines,
        &node,
        None,
        &[
            ("enable_cdi", toml_edit::value(true)),
            ("cdi_spec_dirs", toml_edit::value(dirs)),
        ],
    );
    let mut cri = Cri::connect(&sock);
    let logs = node.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    // runc, containerd's default handler: no RuntimeClass, no variable.
    let pod = cri.run_pod("cdi-pod", &logs, "");
    let with_devices = |name: &str, devices: &[&str]| {
        let mut c = container_config(name, &[]);
        c.cdi_devices = devices
            .iter()
            .map(|d| CdiDevice {
                name: d.to_string(),
            })
            .collect();
        c
    };
    let id = cri
        .start(&pod, with_devices("infer", &["gpushare.io/gpu=1"]))
        .expect("the CDI GPU container starts");
    assert_sees_only_gpu_1(&cri.exec(&id, GPU1_SCRIPT));
    let doc = status_json(&node);
    let c = &doc["gpus"][1]["containers"][0];
    assert_eq!(c["id"], id.as_str(), "{doc}");
    assert_eq!(c["names"]["pod"], "cdi-pod", "{doc}");
    let err = cri
        .start(
            &pod,
            with_devices("greedy", &["gpushare.io/gpu=0", "gpushare.io/gpu=1"]),
        )
        .expect_err("two CDI devices are refused");
    assert!(
        err.contains("asks for 2 GPUs"),
        "the CRI error carries the reason: {err}"
    );
    assert_eq!(node.ledger().len(), 1, "the refusal holds nothing");
    cri.remove_pod(&pod.0);
    assert!(node.ledger().is_empty(), "{:?}", node.ledger());
}

/// The namespaces of a pod with `hostUsers: false`: its own user namespace,
/// container uid 0 being host uid 100000 (65536 ids), as kubelet maps it,
/// and so its own network (kubelet allows no host network with it: the
/// pod could not mount /sys).
fn user_namespaced() -> NamespaceOption {
    let map = vec![IdMapping {
        host_id: 100000,
        container_id: 0,
        length: 65536,
    }];
    NamespaceOption {
        userns_options: Some(UserNamespace {
            mode: NamespaceMode::Pod as i32,
            uids: map.clone(),
            gids: map,
        }),
        network: NamespaceMode::Pod as i32,
        ..node_network()
    }
}

/// A pod network for this test alone: Debian's CNI plugins (bridge and
/// host-local, from containernetworking-plugins), no masquerade, no route
/// out; the bridge goes on drop.
struct PodNetwork(&'static str);

impl PodNetwork {
    fn setup(d: &Path) -> (PodNetwork, Vec<(&'static str, toml_edit::Item)>) {
        assert!(
            Path::new("/usr/lib/cni/bridge").is_file(),
            "/usr/lib/cni/bridge is missing: apt-get install containernetworking-plugins"
        );
        let conf = d.join("cni-userns");
        std::fs::create_dir_all(&conf).unwrap();
        let bridge = "gpst0";
        std::fs::write(
            conf.join("10-gpushare-test.conflist"),
            json!({"cniVersion": "1.0.0", "name": "gpushare-test", "plugins": [{
                "type": "bridge", "bridge": bridge, "isGateway": false, "ipMasq": false,
                "ipam": {"type": "host-local", "dataDir": d.join("cni-ipam"),
                         "ranges": [[{"subnet": "10.233.71.0/24"}]]}}]})
            .to_string(),
        )
        .unwrap();
        let mut cni = toml_edit::Table::new();
        cni["bin_dir"] = toml_edit::value("/usr/lib/cni");
        cni["conf_dir"] = toml_edit::value(conf.display().to_string());
        (
            PodNetwork(bridge),
            vec![("cni", toml_edit::Item::Table(cni))],
        )
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "delete", self.0]).output();
    }
}

#[test]
fn containerd_1_7_cri_a_pod_in_a_user_namespace_gets_its_gpu_through_the_hook() {
    let engines = Engines::debian13();
    let node = Node::new("cri-userns");
    let config = node.config.to_str().unwrap().to_owned();
    let (_network, cni) = PodNetwork::setup(node.dir.path());
    let (_daemon, sock, _d) = cri_node(
        &engines,
        &node,
        Some(&["--mode", "hook", "--gpushare-config", &config]),
        &cni,
    );
    let mut cri = Cri::connect(&sock);
    let logs = node.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = cri.run_pod_in("userns-pod", &logs, "gpushare", user_namespaced());
    let mut c = container_config("infer", &[("NVIDIA_VISIBLE_DEVICES", "1")]);
    c.linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .namespace_options = Some(user_namespaced());
    let id = cri
        .start(&pod, c)
        .expect("the user-namespaced GPU container starts");
    assert_user_namespaced_gpu_1(&cri.exec(&id, USERNS_GPU1_SCRIPT));
    assert_eq!(node.ledger().len(), 1);
    cri.remove_pod(&pod.0);
    assert!(node.ledger().is_empty(), "{:?}", node.ledger());
}

#[test]
fn a_pod_with_a_gpu_percent_allocation_holds_exactly_it_through_cri_under_mps() {
    use common::kubelet::{Kubelet, Plugin};
    use gpushare::device_plugin::api::*;
    let engines = Engines::debian13();
    let node = Node::new("cri-dp");
    let (_daemon, sock, _d) = cri_node(&engines, &node, Some(&[]), &[]);
    gpushare(&node, &["mps", "start", "--gpu", "1"]);
    let uuid1 = status_json(&node)["gpus"][1]["uuid"]
        .as_str()
        .unwrap()
        .to_owned();

    // kubelet's device manager and the plugin.
    let kdir = node.dir.path().join("device-plugins");
    std::fs::create_dir_all(&kdir).unwrap();
    let mut kubelet = Kubelet::start(&kdir);
    let mut plugin_cmd = Command::new(cli());
    plugin_cmd.env("GPUSHARE_CONFIG", &node.config);
    let _plugin = Plugin::start(
        plugin_cmd,
        &kdir,
        &node.dir.path().join("device-plugin.log"),
    );
    let r = Kubelet::next_registration(&kubelet.rt, &mut kubelet.registered);
    assert_eq!(r.resource_name, "gpushare.io/gpu-percent");
    let mut client = kubelet.plugin();
    // The scheduler counted 30 units; kubelet asks where, then allocates.
    let free: Vec<String> = (0..100).map(|n| format!("{uuid1}::{n}")).collect();
    let preferred = kubelet
        .rt
        .block_on(client.get_preferred_allocation(PreferredAllocationRequest {
            container_requests: vec![ContainerPreferredAllocationRequest {
                available_device_i_ds: free,
                must_include_device_i_ds: vec![],
                allocation_size: 30,
            }],
        }))
        .unwrap()
        .into_inner()
        .container_responses[0]
        .device_i_ds
        .clone();
    let answer = kubelet
        .rt
        .block_on(client.allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest {
                devices_ids: preferred,
            }],
        }))
        .unwrap()
        .into_inner()
        .container_responses
        .remove(0);

    // kubelet's CreateContainer: the plugin's variables first, then the
    // pod's own, which try to take GPU 0 at 80 %; the plugin's annotation.
    let mut plugin_env: Vec<(String, String)> = answer.envs.into_iter().collect();
    plugin_env.sort();
    let mut env: Vec<(&str, &str)> = plugin_env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    env.extend([
        ("NVIDIA_VISIBLE_DEVICES", "0"),
        ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE", "80"),
    ]);
    let mut config = container_config("infer", &env);
    config.annotations = answer.annotations;
    let mut cri = Cri::connect(&sock);
    let logs = node.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    let pod = cri.run_pod("dp-pod", &logs, "gpushare");
    let id = cri
        .start(&pod, config)
        .expect("the allocated container starts");
    let t = cri.exec(
        &id,
        "tr '\\0' '\\n' < /proc/1/environ | grep -E '^(NVIDIA_VISIBLE_DEVICES|CUDA_MPS_ACTIVE_THREAD_PERCENTAGE)='; ls /tmp/nvidia-mps; ls /dev",
    );
    assert!(
        t.contains(&format!("NVIDIA_VISIBLE_DEVICES={uuid1}\n"))
            && t.contains("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30\n")
            && !t.contains("=80")
            && t.contains("control")
            && t.contains("nvidia1")
            && !t.contains("nvidia0"),
        "the process sees its allocation, GPU 1 at 30 %, as an MPS client: {t}"
    );
    let doc = status_json(&node);
    let held = &doc["gpus"][1]["containers"];
    assert_eq!(held.as_array().map(Vec::len), Some(1), "{doc}");
    assert_eq!(held[0]["thread_percentage"], json!(30.0), "{doc}");
    assert_eq!(held[0]["names"]["pod"], "dp-pod", "{doc}");
    cri.remove_pod(&pod.0);
    gpushare(&node, &["mps", "stop"]);
    assert!(node.ledger().is_empty(), "{:?}", node.ledger());
}

#[test]
fn containerd_1_7_nri_plugin_places_gpu_pods_with_no_runtime_replaced() {
    let engines = Engines::debian13();
    let node = Node::new("cri-nri");
    require_driver_userspace();
    let nri = node.dir.path().join("nri");
    for d in ["plugins", "conf"] {
        std::fs::create_dir_all(nri.join(d)).unwrap();
    }
    let socket = nri.join("nri.sock");
    // containerd 1.7's own NRI table (off by default), on private paths;
    // `gpushare install containerd --mode nri` turns it on.
    let units = node.dir.path().join("units");
    let (mut daemon, sock, containerd) = cri_node_with(
        &engines,
        &node,
        Some(&["--mode", "nri", "--unit-dir", units.to_str().unwrap()]),
        &[],
        &|doc| {
            let t = doc["plugins"]["io.containerd.nri.v1.nri"]
                .as_table_mut()
                .expect("containerd 1.7's default config has an NRI table");
            assert_eq!(t["disable"].as_bool(), Some(true), "off by default");
            t["socket_path"] = toml_edit::value(socket.display().to_string());
            t["plugin_path"] = toml_edit::value(nri.join("plugins").display().to_string());
            t["plugin_config_path"] = toml_edit::value(nri.join("conf").display().to_string());
        },
    );
    assert!(units.join("gpushare-nri.service").is_file());
    let log = node.dir.path().join("nri-plugin.log");
    let mut plugin = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["nri", "--socket"])
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the NRI plugin to register", || {
        std::fs::read_to_string(&log).is_ok_and(|l| l.contains("registered"))
    });

    let mut cri = Cri::connect(&sock);
    let logs = node.dir.path().join("pod-logs");
    std::fs::create_dir_all(&logs).unwrap();
    // runc, containerd's default handler: no RuntimeClass, no hook.
    let pod = cri.run_pod("nri-pod", &logs, "");
    let id = cri
        .start_container(&pod, "infer", &[("NVIDIA_VISIBLE_DEVICES", "1")])
        .expect("the GPU container starts");
    assert_sees_only_gpu_1(&cri.exec(&id, GPU1_SCRIPT));
    let doc = status_json(&node);
    let uuid1 = doc["gpus"][1]["uuid"].as_str().unwrap().to_owned();
    let env = cri.exec(
        &id,
        "tr '\\0' '\\n' < /proc/1/environ | grep NVIDIA_VISIBLE_DEVICES",
    );
    assert_eq!(
        env.trim(),
        format!("NVIDIA_VISIBLE_DEVICES={uuid1}"),
        "the plugin sets the environment, as a hook cannot"
    );
    let libs = cri.exec(
        &id,
        "test -e /usr/lib/x86_64-linux-gnu/libcuda.so.1 && echo has-libcuda; grep libnvidia-ml /proc/self/mountinfo",
    );
    assert!(
        libs.contains("has-libcuda") && libs.contains(" ro,"),
        "the driver's files, read-only: {libs}"
    );
    let c = &doc["gpus"][1]["containers"][0];
    assert_eq!(c["id"], id.as_str(), "{doc}");
    assert_eq!(c["names"]["pod"], "nri-pod", "{doc}");
    assert_eq!(
        c["state"], "running",
        "bound to its process at start: {doc}"
    );

    // The plugin restarts (killed, started again): the hold is kept, and a
    // container that came and went while it was away is not left held.
    let kill = |p: &std::process::Child, signal| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.id() as i32), signal);
    };
    let short = cri
        .start_container(&pod, "short", &[("NVIDIA_VISIBLE_DEVICES", "0")])
        .expect("a second GPU container starts");
    assert_eq!(node.ledger().len(), 2);
    kill(&plugin, nix::sys::signal::Signal::SIGKILL);
    let _ = plugin.wait();
    cri.remove_container(&short);
    assert_eq!(node.ledger().len(), 2, "no plugin saw it go");
    let log = node.dir.path().join("nri-plugin-2.log");
    let registered = |n: usize| {
        let log = log.clone();
        move || std::fs::read_to_string(&log).is_ok_and(|l| l.matches("registered").count() >= n)
    };
    let mut plugin = Command::new(cli())
        .env("GPUSHARE_CONFIG", &node.config)
        .args(["nri", "--socket"])
        .arg(&socket)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for("the restarted NRI plugin to register", registered(1));
    wait_for("Synchronize to drop the gone container's hold", || {
        node.ledger().len() == 1
    });
    let held = node.ledger();
    assert_eq!(held[0]["id"], id.as_str());
    assert!(held[0]["pid"].as_i64().is_some(), "still bound: {held:?}");

    // containerd restarts: the plugin connects again by itself, and its
    // containers (still running under their shims) keep their holds.
    kill(&daemon.child, nix::sys::signal::Signal::SIGTERM);
    let _ = daemon.child.wait();
    let again = start_containerd(
        &engines,
        &node,
        &containerd,
        &containerd.join("config.toml"),
        &sock,
    );
    // The old daemon's process is gone; only the new one is stopped (and
    // its mounts undone) at the end.
    std::mem::forget(std::mem::replace(&mut daemon, again));
    wait_for("the NRI plugin to register again", registered(2));
    let mut cri = Cri::connect(&sock);
    assert_eq!(node.ledger().len(), 1, "{:?}", node.ledger());

    // An MPS client: its share and pipe directory in its environment.
    let (_, t) = mps_client(&node, &mut cri, &pod);
    assert!(
        t.contains("share=25 pipe=/tmp/nvidia-mps\n") && t.contains("control"),
        "{t}"
    );

    // Two GPUs: the CRI error carries gpushare's line.
    let err = cri
        .start_container(&pod, "greedy", &[("NVIDIA_VISIBLE_DEVICES", "0,1")])
        .expect_err("two GPUs are refused");
    assert!(err.contains("asks for 2 GPUs"), "{err}");
    assert_eq!(node.ledger().len(), 2, "the refusal holds nothing");

    // Removal: the plugin answers at once and deletes the holds just after.
    cri.remove_pod(&pod.0);
    wait_for("the pod's removal to release its holds", || {
        node.ledger().is_empty()
    });
    gpushare(&node, &["mps", "stop"]);
    kill(&plugin, nix::sys::signal::Signal::SIGTERM);
    let _ = plugin.wait();
}
