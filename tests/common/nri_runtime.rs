//! A test NRI runtime (shared by tests/ and the bench): the runtime's side
//! of NRI as containerd speaks it: a socket the plugin connects to, NRI's
//! multiplexer on it, the Runtime service (RegisterPlugin) on connection 2
//! and a client of the plugin's service on connection 1.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gpushare::nri::api::*;
use gpushare::nri::api_ttrpc::{create_runtime, PluginClient, Runtime};
use gpushare::nri::mux;
use tokio::sync::mpsc;

struct Registrar(mpsc::UnboundedSender<RegisterPluginRequest>);

#[async_trait::async_trait]
impl Runtime for Registrar {
    async fn register_plugin(
        &self,
        _ctx: &ttrpc::r#async::TtrpcContext,
        req: RegisterPluginRequest,
    ) -> ttrpc::Result<Empty> {
        let _ = self.0.send(req);
        Ok(Empty::new())
    }
}

/// One plugin's connection.
pub struct Connection {
    pub plugin: PluginClient,
    _mux: mux::Mux,
    _server: ttrpc::r#async::Server,
}

pub struct NriRuntime {
    pub rt: tokio::runtime::Runtime,
    pub socket: PathBuf,
    dir: PathBuf,
    listener: tokio::net::UnixListener,
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(10_000_000_000)
}

impl NriRuntime {
    /// Listens on `dir/nri.sock`.
    pub fn start(dir: &Path) -> NriRuntime {
        // One thread: its tasks (the multiplexer, the Runtime service) run
        // while a call waits on it.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let socket = dir.join("nri.sock");
        let listener = {
            let _g = rt.enter();
            tokio::net::UnixListener::bind(&socket).unwrap()
        };
        NriRuntime {
            rt,
            socket,
            dir: dir.to_owned(),
            listener,
        }
    }

    /// Accepts the plugin's connection and its registration (20 s at most).
    pub fn accept(&self) -> (Connection, RegisterPluginRequest) {
        self.rt.block_on(async {
            let (trunk, _) = tokio::time::timeout(Duration::from_secs(20), self.listener.accept())
                .await
                .expect("the plugin connected within 20 s")
                .unwrap();
            let (tx, mut rx) = mpsc::unbounded_channel();
            let (server, runtime_side) = mux::serve(
                &self.dir.join("runtime-service.sock"),
                create_runtime(Arc::new(Registrar(tx))),
            )
            .await
            .unwrap();
            let (plugin_side, client_end) = mux::pair().unwrap();
            use std::os::fd::IntoRawFd;
            let plugin = PluginClient::new(ttrpc::r#async::Client::new(client_end.into_raw_fd()));
            let m = mux::start(
                trunk,
                vec![
                    (mux::PLUGIN_CONN, plugin_side),
                    (mux::RUNTIME_CONN, runtime_side),
                ],
            );
            let registered = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .expect("the plugin registered within 20 s")
                .unwrap();
            (
                Connection {
                    plugin,
                    _mux: m,
                    _server: server,
                },
                registered,
            )
        })
    }

    pub fn configure(&self, c: &Connection) -> ConfigureResponse {
        let mut req = ConfigureRequest::new();
        req.runtime_name = "test-runtime".into();
        req.runtime_version = "1".into();
        self.rt
            .block_on(c.plugin.configure(ctx(), &req))
            .expect("Configure")
    }

    pub fn synchronize(&self, c: &Connection, containers: Vec<Container>) {
        self.synchronize_parts(c, vec![containers]);
    }

    /// Synchronize in parts, as a runtime with many containers sends it
    /// (`more` on every part but the last).
    pub fn synchronize_parts(&self, c: &Connection, parts: Vec<Vec<Container>>) {
        let last = parts.len().saturating_sub(1);
        for (i, containers) in parts.into_iter().enumerate() {
            let mut req = SynchronizeRequest::new();
            req.containers = containers;
            req.more = i < last;
            self.rt
                .block_on(c.plugin.synchronize(ctx(), &req))
                .expect("Synchronize");
        }
    }

    /// CreateContainer: the adjustment, or the error's message.
    pub fn create(
        &self,
        c: &Connection,
        pod: &PodSandbox,
        container: &Container,
    ) -> Result<CreateContainerResponse, String> {
        let mut req = CreateContainerRequest::new();
        req.pod = protobuf::MessageField::some(pod.clone());
        req.container = protobuf::MessageField::some(container.clone());
        self.rt
            .block_on(c.plugin.create_container(ctx(), &req))
            .map_err(|e| match e {
                ttrpc::Error::RpcStatus(s) => s.message,
                other => other.to_string(),
            })
    }

    /// The event NRI sends for a container's start, stop or removal.
    pub fn event(&self, c: &Connection, event: Event, pod: &PodSandbox, container: &Container) {
        let mut req = StateChangeEvent::new();
        req.event = event.into();
        req.pod = protobuf::MessageField::some(pod.clone());
        req.container = protobuf::MessageField::some(container.clone());
        self.rt
            .block_on(c.plugin.state_change(ctx(), &req))
            .expect("StateChange");
    }
}

/// A pod and a container as NRI shows them.
pub fn pod(name: &str, handler: &str) -> PodSandbox {
    let mut p = PodSandbox::new();
    p.id = format!("pod-{name}");
    p.name = name.into();
    p.namespace = "edge".into();
    p.runtime_handler = handler.into();
    p
}

pub fn container(id: &str, env: &[&str], pid: u32) -> Container {
    let mut c = Container::new();
    c.id = id.into();
    c.name = format!("{id}-name");
    c.env = std::iter::once("PATH=/bin")
        .chain(env.iter().copied())
        .map(String::from)
        .collect();
    c.pid = pid;
    c
}
