//! `gpushare nri`: a resident NRI plugin. containerd (1.7 with NRI on, 2.x
//! by default) and CRI-O show it every container's creation with its
//! environment and annotations; it places GPU containers with the same
//! pipeline as the runtime and the hook (`placement`) and answers with the
//! same edits as NRI adjustments: devices (and so their cgroup rules),
//! mounts, environment. No process starts per container, no runtime is
//! replaced, and, unlike a hook, it can set the environment. It binds a
//! container's hold to its pid when it starts (the hold then counts while
//! that process lives) and deletes it when the container is removed; on
//! Synchronize it drops the holds of containers that no longer exist.
//! Containers the runtime or the hook places (the `gpushare` runtime
//! handler, gpushare-hook in their hooks) are left to them.
//!
//! The runtime waits for each answer, so a start or a removal is answered
//! at once and its ledger write follows (`Write`): within `SETTLE`, and
//! always before the plugin places, binds or forgets anything else. Until
//! then the ledger says what it said before, which only ever counts more
//! (a reservation counts as its process would; a hold not yet deleted
//! counts until its process is seen gone), never less.
//!
//! Ref: github.com/containerd/nri: the plugin connects to the runtime's
//! socket, which carries two logical connections multiplexed as frames of
//! [connection id: u32 BE][length: u32 BE][payload] (pkg/net/multiplex:
//! 1 = the plugin's service, which the runtime calls; 2 = the runtime's
//! service, which the plugin calls), each a ttrpc stream. The plugin
//! registers (name, index), is configured (answering the events it wants,
//! a bit `1 << (event - 1)` each) and synchronized, then receives events.

use std::collections::HashSet;
use std::os::fd::IntoRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::UnixStream;

use crate::bundle::Bundle;
use crate::config::Config;
use crate::edits::ContainerEdits;
use crate::ledger::{Container, Ledger, Source};
use crate::placement::{self, Placement};
use crate::request::Request;

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_mut,
    unused_results,
    unknown_lints
)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/nri/api.rs"));
}

pub mod mux;

#[allow(
    clippy::all,
    clippy::pedantic,
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    unused_imports,
    unused_results,
    unknown_lints
)]
pub mod api_ttrpc {
    include!(concat!(env!("OUT_DIR"), "/nri/api_ttrpc.rs"));
}

use api::{
    ConfigureRequest, ConfigureResponse, ContainerAdjustment, CreateContainerRequest,
    CreateContainerResponse, Empty, Event, KeyValue, LinuxContainerAdjustment, LinuxDevice, Mount,
    OptionalFileMode, PodSandbox, RegisterPluginRequest, RemoveContainerRequest,
    RemoveContainerResponse, StartContainerRequest, StartContainerResponse, StateChangeEvent,
    StopContainerRequest, StopContainerResponse, SynchronizeRequest, SynchronizeResponse,
};

pub const DEFAULT_SOCKET: &str = crate::config::NRI_SOCKET;
/// The name the plugin registers under.
pub const PLUGIN_NAME: &str = "gpushare";
/// Its index: plugins are called in ascending order, and gpushare runs
/// before resource plugins (which commonly take 50 and up).
pub const PLUGIN_INDEX: &str = "10";
/// How long to wait before connecting again to a runtime that went away.
const RECONNECT: Duration = Duration::from_secs(1);
/// How long after its answer a start's or a removal's ledger write waits
/// at most (it goes sooner when another event comes): the runtime's next
/// call for the same container comes tens of milliseconds later at the
/// least (runc's work lies between).
const SETTLE: Duration = Duration::from_millis(1);

#[derive(Debug, Error)]
pub enum NriError {
    #[error("cannot start the NRI plugin: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot enter the host's root {root}: {source}; mount the host's / there (a hostPath volume) and give the container CAP_SYS_CHROOT")]
    HostRoot {
        root: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NRI: {0}")]
    Protocol(String),
}

impl NriError {
    pub fn is_refusal(&self) -> bool {
        false
    }
}

/// The events gpushare subscribes to, as ConfigureResponse's mask. Not a
/// container's stop: its hold stops counting when its process exits (the
/// hold is bound to it), so a stop would cost every container on the node
/// a round trip for nothing; the removal deletes the hold.
fn event_mask() -> i32 {
    [
        Event::CREATE_CONTAINER,
        Event::START_CONTAINER,
        Event::REMOVE_CONTAINER,
    ]
    .iter()
    .map(|e| 1i32 << (*e as i32 - 1))
    .fold(0, |a, b| a | b)
}

/// Whether another part of gpushare places this container: the runtime
/// (its pod runs under the `gpushare` runtime handler) or the hook (the
/// container's hooks run gpushare-hook).
fn placed_elsewhere(pod: &PodSandbox, c: &api::Container) -> bool {
    if pod.runtime_handler == crate::config::RUNTIME_HANDLER {
        return true;
    }
    let hooks = c.hooks.as_ref();
    hooks.is_some_and(|h| {
        [
            &h.prestart,
            &h.create_runtime,
            &h.create_container,
            &h.start_container,
            &h.poststart,
            &h.poststop,
        ]
        .iter()
        .flat_map(|l| l.iter())
        .any(|hook| {
            Path::new(&hook.path)
                .file_name()
                .is_some_and(|n| n == "gpushare-hook")
        })
    })
}

/// The spec gpushare decides from, as much of it as NRI shows: the
/// environment, and the annotations with the pod's and the container's
/// names where the runtime's own are missing (for `status`).
fn spec_of(pod: &PodSandbox, c: &api::Container) -> Value {
    let mut annotations: serde_json::Map<String, Value> = c
        .annotations
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    for (k, v) in [
        ("io.kubernetes.cri.sandbox-name", &pod.name),
        ("io.kubernetes.cri.sandbox-namespace", &pod.namespace),
        ("io.kubernetes.cri.container-name", &c.name),
    ] {
        if !v.is_empty() {
            annotations
                .entry(k.to_owned())
                .or_insert_with(|| Value::String(v.clone()));
        }
    }
    json!({"process": {"env": c.env}, "annotations": annotations})
}

/// gpushare's edits as an NRI adjustment.
fn adjustment(edits: &ContainerEdits) -> ContainerAdjustment {
    let mut adj = ContainerAdjustment::new();
    let mut linux = LinuxContainerAdjustment::new();
    for d in &edits.devices {
        let mut dev = LinuxDevice::new();
        dev.path = d.path.clone();
        dev.type_ = "c".into();
        dev.major = d.major as i64;
        dev.minor = d.minor as i64;
        let mut mode = OptionalFileMode::new();
        mode.value = d.file_mode;
        dev.file_mode = protobuf::MessageField::some(mode);
        linux.devices.push(dev);
    }
    adj.linux = protobuf::MessageField::some(linux);
    for m in &edits.mounts {
        let mut mount = Mount::new();
        mount.destination = m.destination.clone();
        mount.type_ = m.typ.clone();
        mount.source = m.source.display().to_string();
        mount.options = m.options.clone();
        adj.mounts.push(mount);
    }
    for e in &edits.env {
        if let Some((k, v)) = e.split_once('=') {
            let mut kv = KeyValue::new();
            kv.key = k.to_owned();
            kv.value = v.to_owned();
            adj.env.push(kv);
        }
    }
    for (k, v) in &edits.annotations {
        adj.annotations.insert(k.clone(), v.clone());
    }
    adj
}

/// The plugin's state: the node's config, and the name of the runtime it
/// serves (a container is `nri:<runtime>` and its id).
struct Plugin {
    cfg: Config,
    runtime: Mutex<String>,
    /// The containers a Synchronize has shown so far (it may come in
    /// parts): their ids and pids.
    synchronized: Mutex<Vec<(String, u32)>>,
    /// The ledger, opened once and kept: a resident plugin pays SQLite's
    /// open once, not at every event.
    ledger: Mutex<Option<Ledger>>,
    /// The holds' processes, watched by descriptor: a decision asks the
    /// kernel whether each has exited instead of reading `/proc`.
    watch: Mutex<crate::sys::Watch>,
    /// Ids of this runtime's containers that hold GPUs in the ledger: those
    /// it placed, and those a Synchronize found held. The start and removal
    /// of every other container (most of a node's) touch no ledger.
    holding: Mutex<HashSet<String>>,
    /// Ledger writes answered but not yet done, in the order of their
    /// events.
    deferred: Mutex<Vec<Write>>,
    say: Arc<dyn Fn(&str) + Send + Sync>,
}

/// A ledger write a start or a removal leaves for after its answer.
enum Write {
    Bind { id: String, pid: u32 },
    Release { id: String },
}

impl Plugin {
    /// Runs `f` on the kept ledger, opening it the first time.
    fn with_ledger<T, E: From<crate::ledger::LedgerError>>(
        &self,
        f: impl FnOnce(&mut Ledger) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut kept = self.ledger.lock().expect("not poisoned");
        if kept.is_none() {
            *kept = Some(Ledger::open(&self.cfg.runtime.state_dir)?);
        }
        let result = f(kept.as_mut().expect("opened"));
        if result.is_err() {
            // Opened afresh next time (the file may have been moved aside).
            *kept = None;
        }
        result
    }

    fn container(&self, id: &str) -> Container {
        Container {
            root: format!("nri:{}", self.runtime.lock().expect("not poisoned")),
            id: id.to_owned(),
        }
    }

    /// Places a container: `None` when it is not gpushare's to place.
    fn place(
        &self,
        pod: &PodSandbox,
        c: &api::Container,
    ) -> Result<Option<ContainerAdjustment>, (bool, String)> {
        let fail = |refusal: bool, e: &(dyn std::error::Error + 'static)| {
            (refusal, crate::text::one_line(e))
        };
        if placed_elsewhere(pod, c) {
            return Ok(None);
        }
        self.settle();
        let bundle = Bundle::in_memory(spec_of(pod, c));
        let env = bundle.env().map_err(|e| fail(true, &e))?;
        let request = Request::from_spec(env, &bundle.cdi_devices()).map_err(|e| fail(true, &e))?;
        if !request.is_gpu() {
            return Ok(None);
        }
        let placed = self.with_ledger(|ledger| {
            let mut watch = self.watch.lock().expect("not poisoned");
            watch.refresh();
            let placed = placement::place_by(
                &bundle,
                &request,
                self.container(&c.id),
                Source::Nri,
                &self.cfg,
                ledger,
                &mut |p| watch.alive(p),
            )?;
            let Some(Placement {
                mut tx,
                edits,
                hold,
                warnings,
            }) = placed
            else {
                return Ok(None);
            };
            tx.insert(&hold)?;
            tx.commit()?;
            Ok::<_, placement::PlacementError>(Some((edits, warnings)))
        });
        let Some((edits, warnings)) = placed.map_err(|e| fail(e.is_refusal(), &e))? else {
            return Ok(None);
        };
        self.holding
            .lock()
            .expect("not poisoned")
            .insert(c.id.clone());
        for w in &warnings {
            (self.say)(&format!("container {}: warning: {w}", c.id));
        }
        Ok(Some(adjustment(&edits)))
    }

    /// Leaves `w` for after the answer, for a container that holds a GPU,
    /// and makes sure it is done within `SETTLE`.
    fn defer(self: &Arc<Self>, w: Write) {
        let (Write::Bind { id, .. } | Write::Release { id }) = &w;
        if !self.holding.lock().expect("not poisoned").contains(id) {
            return;
        }
        let mut deferred = self.deferred.lock().expect("not poisoned");
        if deferred.is_empty() {
            let plugin = self.clone();
            tokio::spawn(async move {
                tokio::time::sleep(SETTLE).await;
                plugin.settle();
            });
        }
        deferred.push(w);
    }

    /// Does the deferred ledger writes.
    fn settle(&self) {
        let deferred = std::mem::take(&mut *self.deferred.lock().expect("not poisoned"));
        self.write(deferred);
    }

    /// Binds started containers' holds to their processes and deletes
    /// removed containers' holds, in order, in one transaction: for the
    /// containers that hold a GPU.
    fn write(&self, writes: Vec<Write>) {
        let writes: Vec<Write> = {
            let mut holding = self.holding.lock().expect("not poisoned");
            writes
                .into_iter()
                .filter(|w| match w {
                    Write::Bind { id, pid } => *pid != 0 && holding.contains(id),
                    Write::Release { id } => holding.remove(id),
                })
                .collect()
        };
        if writes.is_empty() {
            return;
        }
        let result = self.with_ledger(|ledger| {
            let mut tx = ledger.begin()?;
            for w in &writes {
                match w {
                    Write::Bind { id, pid } => tx.bind(&self.container(id), None, *pid as i32)?,
                    Write::Release { id } => tx.remove(&self.container(id), None)? > 0,
                };
            }
            tx.commit()
        });
        if let Err(e) = result {
            let ids: Vec<&str> = writes
                .iter()
                .map(|(Write::Bind { id, .. } | Write::Release { id })| id.as_str())
                .collect();
            (self.say)(&format!(
                "cannot record the start or removal of container {}: {}",
                ids.join(", "),
                crate::text::one_line(&e)
            ));
        }
    }

    /// After a (complete) Synchronize: the holds of this runtime's
    /// containers that no longer exist go; running ones (of every part)
    /// are bound; the rest are this plugin's to release.
    fn reconcile(&self) {
        self.settle();
        let root = self.container("").root;
        let shown: Vec<(String, u32)> =
            std::mem::take(&mut *self.synchronized.lock().expect("not poisoned"));
        let holds = self.with_ledger(|l| l.holds()).unwrap_or_default();
        let mine: HashSet<String> = holds
            .into_iter()
            .filter(|h| h.container.root == root)
            .map(|h| h.container.id)
            .collect();
        *self.holding.lock().expect("not poisoned") = mine.clone();
        let mut writes = Vec::new();
        for id in mine
            .into_iter()
            .filter(|id| !shown.iter().any(|(s, _)| s == id))
        {
            (self.say)(&format!("container {id} is gone: its hold released"));
            writes.push(Write::Release { id });
        }
        writes.extend(shown.into_iter().map(|(id, pid)| Write::Bind { id, pid }));
        self.write(writes);
    }
}

/// A refusal or failure as the runtime shows it: gpushare's one line.
fn status(refusal: bool, line: String) -> ttrpc::Error {
    let code = if refusal {
        ttrpc::Code::INVALID_ARGUMENT
    } else {
        ttrpc::Code::INTERNAL
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, format!("gpushare: {line}")))
}

struct Service(Arc<Plugin>);

#[async_trait::async_trait]
impl api_ttrpc::Plugin for Service {
    async fn configure(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: ConfigureRequest,
    ) -> ttrpc::Result<ConfigureResponse> {
        *self.0.runtime.lock().expect("not poisoned") = if req.runtime_name.is_empty() {
            "runtime".into()
        } else {
            req.runtime_name.clone()
        };
        (self.0.say)(&format!(
            "configured by {} {}",
            req.runtime_name, req.runtime_version
        ));
        let mut r = ConfigureResponse::new();
        r.events = event_mask();
        Ok(r)
    }

    async fn synchronize(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: SynchronizeRequest,
    ) -> ttrpc::Result<SynchronizeResponse> {
        let plugin = &self.0;
        plugin
            .synchronized
            .lock()
            .expect("not poisoned")
            .extend(req.containers.iter().map(|c| (c.id.clone(), c.pid)));
        if !req.more {
            plugin.reconcile();
        }
        Ok(SynchronizeResponse::new())
    }

    async fn shutdown(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _: Empty,
    ) -> ttrpc::Result<Empty> {
        (self.0.say)("the runtime is shutting down");
        Ok(Empty::new())
    }

    async fn create_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<CreateContainerResponse> {
        let placed = self.0.place(
            req.pod.as_ref().unwrap_or_default(),
            req.container.as_ref().unwrap_or_default(),
        );
        let mut r = CreateContainerResponse::new();
        match placed {
            Ok(Some(adj)) => r.adjust = protobuf::MessageField::some(adj),
            Ok(None) => {}
            Err((refusal, line)) => return Err(status(refusal, line)),
        }
        Ok(r)
    }

    async fn start_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<StartContainerResponse> {
        self.on(Event::START_CONTAINER, req.container.unwrap_or_default());
        Ok(StartContainerResponse::new())
    }

    async fn stop_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        _: StopContainerRequest,
    ) -> ttrpc::Result<StopContainerResponse> {
        // Not subscribed to (see event_mask).
        Ok(StopContainerResponse::new())
    }

    async fn remove_container(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<RemoveContainerResponse> {
        self.on(Event::REMOVE_CONTAINER, req.container.unwrap_or_default());
        Ok(RemoveContainerResponse::new())
    }

    async fn state_change(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: StateChangeEvent,
    ) -> ttrpc::Result<Empty> {
        self.on(
            req.event.enum_value_or_default(),
            req.container.unwrap_or_default(),
        );
        Ok(Empty::new())
    }
}

impl Service {
    /// A container's start binds its hold; its removal deletes it, each
    /// after the answer. Newer runtimes send these as calls of their own,
    /// older ones as a StateChangeEvent.
    fn on(&self, event: Event, c: api::Container) {
        match event {
            Event::START_CONTAINER => self.0.defer(Write::Bind {
                id: c.id,
                pid: c.pid,
            }),
            Event::REMOVE_CONTAINER => self.0.defer(Write::Release { id: c.id }),
            _ => {}
        }
    }
}

/// For the plugin run in a container (install/k8s/nri-plugin.yaml): makes
/// the host's root, mounted at `root`, this process's root, so that every
/// path it reads or names in an adjustment (the runtime's socket, the
/// config, the ledger, `/dev`, the driver's files, MPS's directories) is
/// the host's, as when it runs on the host.
pub fn enter_host_root(root: &Path) -> Result<(), NriError> {
    let err = |source| NriError::HostRoot {
        root: root.to_owned(),
        source,
    };
    std::os::unix::fs::chroot(root).map_err(err)?;
    std::env::set_current_dir("/").map_err(err)
}

/// Runs the plugin in the foreground until SIGTERM or SIGINT: connects to
/// the runtime's NRI socket, registers and serves; when the runtime goes
/// (a restart), connects again every second.
pub fn run(
    cfg: &Config,
    socket: &Path,
    say: Arc<dyn Fn(&str) + Send + Sync>,
) -> Result<(), NriError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(NriError::Runtime)?;
    rt.block_on(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(NriError::Runtime)?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(NriError::Runtime)?;
        let plugin = Arc::new(Plugin {
            cfg: cfg.clone(),
            runtime: Mutex::new(String::new()),
            synchronized: Mutex::new(Vec::new()),
            ledger: Mutex::new(None),
            watch: Mutex::new(crate::sys::Watch::default()),
            holding: Mutex::new(HashSet::new()),
            deferred: Mutex::new(Vec::new()),
            say: say.clone(),
        });
        let mut waiting_said = false;
        loop {
            let session = session(plugin.clone(), socket);
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                ended = session => {
                    match ended {
                        Ok(()) => {
                            say("the runtime closed the connection: connecting again");
                            waiting_said = false;
                        }
                        Err(e) if !waiting_said => {
                            say(&format!("waiting for the runtime at {}: {e}", socket.display()));
                            waiting_said = true;
                        }
                        Err(_) => {}
                    }
                    plugin.settle();
                    plugin.synchronized.lock().expect("not poisoned").clear();
                    tokio::select! {
                        _ = term.recv() => break,
                        _ = int.recv() => break,
                        _ = tokio::time::sleep(RECONNECT) => {}
                    }
                }
            }
        }
        plugin.settle();
        say("stopped");
        Ok(())
    })
}

/// One connection to the runtime, until it closes: the multiplexer, the
/// plugin's ttrpc service on connection 1 (served on a private socket the
/// multiplexer feeds), the runtime's on connection 2, registration.
async fn session(plugin: Arc<Plugin>, socket: &Path) -> Result<(), NriError> {
    let io = |what: &str, e: std::io::Error| NriError::Protocol(format!("{what}: {e}"));
    let trunk = UnixStream::connect(socket)
        .await
        .map_err(|e| io("connect", e))?;
    // Connection 1: the plugin's service, served by ttrpc on a socket of
    // the plugin's own (0700 directory in the state directory).
    let dir = private_dir(&plugin.cfg.runtime.state_dir).map_err(|e| io("state directory", e))?;
    let services = api_ttrpc::create_plugin(Arc::new(Service(plugin.clone())));
    let (mut server, plugin_side) = mux::serve(
        &dir.join(format!("plugin-{}.sock", std::process::id())),
        services,
    )
    .await
    .map_err(NriError::Protocol)?;
    // Connection 2: the runtime's service, a ttrpc client on one end of a
    // socket pair the multiplexer feeds from the other.
    let (runtime_side, client_end) = mux::pair().map_err(|e| io("socketpair", e))?;
    let client =
        api_ttrpc::RuntimeClient::new(ttrpc::r#async::Client::new(client_end.into_raw_fd()));
    let mut m = mux::start(
        trunk,
        vec![
            (mux::PLUGIN_CONN, plugin_side),
            (mux::RUNTIME_CONN, runtime_side),
        ],
    );

    let mut req = RegisterPluginRequest::new();
    req.plugin_name = PLUGIN_NAME.into();
    req.plugin_idx = PLUGIN_INDEX.into();
    let registered = client
        .register_plugin(ttrpc::context::with_timeout(5_000_000_000), &req)
        .await;
    let result = match registered {
        Ok(_) => {
            (plugin.say)(&format!(
                "registered with the runtime at {} as {PLUGIN_INDEX}-{PLUGIN_NAME}",
                socket.display()
            ));
            // Served until the runtime closes the connection.
            let _ = (&mut m.demux).await;
            Ok(())
        }
        Err(e) => Err(NriError::Protocol(format!("registration failed: {e}"))),
    };
    drop(m);
    let _ = server.shutdown().await;
    result
}

/// `<state_dir>/nri`, root's alone.
fn private_dir(state_dir: &Path) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let dir = state_dir.join("nri");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The mask as a list of events.
    fn subscribed() -> HashMap<&'static str, bool> {
        let m = event_mask();
        [
            ("CREATE_CONTAINER", Event::CREATE_CONTAINER),
            ("START_CONTAINER", Event::START_CONTAINER),
            ("STOP_CONTAINER", Event::STOP_CONTAINER),
            ("REMOVE_CONTAINER", Event::REMOVE_CONTAINER),
            ("RUN_POD_SANDBOX", Event::RUN_POD_SANDBOX),
        ]
        .into_iter()
        .map(|(n, e)| (n, m & (1 << (e as i32 - 1)) != 0))
        .collect()
    }

    #[test]
    fn it_subscribes_to_creation_start_and_removal_alone() {
        let s = subscribed();
        assert!(s["CREATE_CONTAINER"] && s["START_CONTAINER"]);
        assert!(s["REMOVE_CONTAINER"]);
        assert!(!s["STOP_CONTAINER"] && !s["RUN_POD_SANDBOX"]);
        assert_eq!(event_mask(), (1 << 3) | (1 << 5) | (1 << 10));
    }

    #[test]
    fn containers_the_runtime_or_the_hook_places_are_left_to_them() {
        let mut pod = PodSandbox::new();
        let c = api::Container::new();
        assert!(!placed_elsewhere(&pod, &c));
        pod.runtime_handler = "gpushare".into();
        assert!(placed_elsewhere(&pod, &c));
        let pod = PodSandbox::new();
        let mut c = api::Container::new();
        let mut hooks = api::Hooks::new();
        let mut h = api::Hook::new();
        h.path = "/usr/bin/gpushare-hook".into();
        hooks.prestart.push(h);
        c.hooks = protobuf::MessageField::some(hooks);
        assert!(placed_elsewhere(&pod, &c));
    }

    #[test]
    fn edits_become_an_adjustment() {
        let edits = ContainerEdits {
            devices: vec![crate::edits::DeviceEdit {
                path: "/dev/nvidia1".into(),
                host_path: "/dev/nvidia1".into(),
                major: 195,
                minor: 1,
                file_mode: 0o666,
            }],
            mounts: vec![crate::edits::MountEdit {
                destination: "/tmp/nvidia-mps".into(),
                source: "/run/gpushare/mps/GPU-1/pipe".into(),
                typ: "bind".into(),
                options: vec!["bind".into(), "ro".into()],
            }],
            env: vec!["NVIDIA_VISIBLE_DEVICES=GPU-1".into()],
            annotations: vec![("gpushare/gpus".into(), "GPU-1".into())],
        };
        let a = adjustment(&edits);
        let d = &a.linux.devices[0];
        assert_eq!(
            (d.path.as_str(), d.type_.as_str(), d.major, d.minor),
            ("/dev/nvidia1", "c", 195, 1)
        );
        assert_eq!(d.file_mode.value, 0o666);
        assert_eq!(a.mounts[0].source, "/run/gpushare/mps/GPU-1/pipe");
        assert_eq!(
            (a.env[0].key.as_str(), a.env[0].value.as_str()),
            ("NVIDIA_VISIBLE_DEVICES", "GPU-1")
        );
        assert_eq!(a.annotations["gpushare/gpus"], "GPU-1");
    }
}
