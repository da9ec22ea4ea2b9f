//! `gpushare device-plugin`: the kubelet device plugin (API v1beta1, gRPC
//! on unix sockets) that lets the stock scheduler count GPU shares. Each
//! healthy GPU of the inventory is advertised as `units_per_gpu` devices of
//! the resource (`gpushare.io/gpu-percent`); kubelet's preferred allocation
//! keeps a container on one GPU, and an allocation that spans GPUs is
//! refused. Each allocation is recorded in the ledger and named to the
//! container by an annotation (`gpushare.io/allocation`) that kubelet, not
//! the pod, writes: the runtime and the hook hold the container to what was
//! recorded, whatever its own variables say.
//!
//! Ref: Kubernetes, "Device Plugins" and k8s.io/kubelet
//! pkg/apis/deviceplugin/v1beta1: the plugin serves on a socket in
//! kubelet's device-plugin directory, registers it with `kubelet.sock`
//! (version "v1beta1"), and registers again when kubelet restarts (kubelet
//! then makes a new `kubelet.sock` and removes the plugins' sockets).

pub mod units;

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/v1beta1.rs"));
}

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::inventory::Inventory;
use crate::ledger::{Allocation, Ledger, LedgerError, ALLOCATION_ANNOTATION};
use crate::request::{PINNED_MEM_LIMIT, THREAD_PERCENTAGE, VISIBLE_DEVICES};
use api::device_plugin_server::{DevicePlugin, DevicePluginServer};
use api::registration_client::RegistrationClient;
use api::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationResponse, Device, DevicePluginOptions, Empty, ListAndWatchResponse,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, RegisterRequest,
};

/// The plugin's socket, in kubelet's device-plugin directory.
pub const SOCKET_NAME: &str = "gpushare.sock";
/// kubelet's registration socket there.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
pub const API_VERSION: &str = "v1beta1";
pub const DEFAULT_KUBELET_DIR: &str = "/var/lib/kubelet/device-plugins";
const HEALTHY: &str = "Healthy";
const UNHEALTHY: &str = "Unhealthy";
/// How often the inventory is read again for health, and kubelet's socket
/// looked at.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum DevicePluginError {
    #[error("cannot start the device plugin: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot serve on {path}: {source}; is another device plugin of gpushare running?")]
    Serve {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kubelet refused to register {resource}: {message}; check [device_plugin] resource and that no other plugin registered it")]
    Refused { resource: String, message: String },
}

impl DevicePluginError {
    pub fn is_refusal(&self) -> bool {
        matches!(self, DevicePluginError::Refused { .. })
    }
}

/// The GPUs' health as the plugin tells it: every GPU seen since it
/// started stays listed, unhealthy while the inventory no longer has it or
/// NVML (where the node has it; the image's static build has none)
/// reports it lost.
struct Health {
    cfg: Config,
    nvml: Option<crate::telemetry::Nvml>,
    seen: Vec<String>,
}

impl Health {
    fn list(&mut self, units_per_gpu: u32) -> Vec<Device> {
        let present: Vec<String> = Inventory::load(&self.cfg)
            .map(|i| {
                i.gpus
                    .into_iter()
                    .map(|g| g.uuid)
                    .filter(|u| !self.nvml.as_ref().is_some_and(|n| n.lost(u)))
                    .collect()
            })
            .unwrap_or_default();
        for g in &present {
            if !self.seen.contains(g) {
                self.seen.push(g.clone());
            }
        }
        device_list(&self.seen, &present, units_per_gpu)
    }
}

/// What kubelet is told the node has: every GPU seen since the plugin
/// started, as `units_per_gpu` devices each, healthy while the inventory
/// still has it.
fn device_list(seen: &[String], present: &[String], units_per_gpu: u32) -> Vec<Device> {
    seen.iter()
        .flat_map(|gpu| {
            let health = if present.contains(gpu) {
                HEALTHY
            } else {
                UNHEALTHY
            };
            (0..units_per_gpu).map(move |n| Device {
                id: units::device_id(gpu, n),
                health: health.into(),
                topology: None,
            })
        })
        .collect()
}

/// What a container with allocation `a` is told: its GPU, its share under
/// MPS unless it has the whole GPU, a pinned-memory limit in proportion
/// when configured, and the annotation the runtime and the hook look up.
pub fn container_response(
    a: &Allocation,
    cfg: &Config,
    memory_mib: Option<u64>,
) -> ContainerAllocateResponse {
    let mut envs = std::collections::HashMap::new();
    envs.insert(VISIBLE_DEVICES.to_owned(), a.gpu.clone());
    if let Some(share) = a.share_text() {
        envs.insert(THREAD_PERCENTAGE.to_owned(), share);
        if let (true, Some(m)) = (cfg.device_plugin.proportional_pinned_memory, memory_mib) {
            envs.insert(PINNED_MEM_LIMIT.to_owned(), format!("{}M", a.pinned_mib(m)));
        }
    }
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(ALLOCATION_ANNOTATION.to_owned(), a.key.clone());
    ContainerAllocateResponse {
        envs,
        annotations,
        ..Default::default()
    }
}

#[derive(Clone)]
struct Plugin {
    cfg: Config,
    devices: watch::Receiver<Vec<Device>>,
}

type DeviceStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for Plugin {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(DevicePluginOptions {
            pre_start_required: false,
            get_preferred_allocation_available: true,
        }))
    }

    type ListAndWatchStream = DeviceStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let stream = tokio_stream::wrappers::WatchStream::new(self.devices.clone())
            .map(|devices| Ok(ListAndWatchResponse { devices }));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|c| ContainerPreferredAllocationResponse {
                device_i_ds: units::preferred(
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let cfg = self.cfg.clone();
        let requests = request.into_inner().container_requests;
        // SQLite and the inventory are read blocking, off the server's thread.
        tokio::task::spawn_blocking(move || allocate(&cfg, &requests))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map(Response::new)
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

/// kubelet's Allocate: each container's units checked (one GPU, ids
/// gpushare advertised), recorded, and answered; nothing is recorded for
/// any container of a request that is refused.
fn allocate(
    cfg: &Config,
    requests: &[api::ContainerAllocateRequest],
) -> Result<AllocateResponse, Status> {
    let dp = &cfg.device_plugin;
    let now = crate::sys::now();
    let allocations = requests
        .iter()
        .map(|c| units::allocation(&c.devices_ids, &dp.resource, dp.units_per_gpu, now))
        .collect::<Result<Vec<_>, String>>()
        .map_err(Status::failed_precondition)?;
    let inventory = Inventory::load(cfg).map_err(|e| Status::unavailable(e.to_string()))?;
    let mut ledger = Ledger::open(&cfg.runtime.state_dir)
        .map_err(|e: LedgerError| Status::unavailable(crate::text::one_line(&e)))?;
    let mut container_responses = Vec::new();
    for a in &allocations {
        let Some(gpu) = inventory.gpus.iter().find(|g| g.uuid == a.gpu) else {
            return Err(Status::failed_precondition(format!(
                "{}: GPU {} is not in this node's inventory any more; kubelet will see it unhealthy and place the pod elsewhere",
                dp.resource, a.gpu
            )));
        };
        ledger
            .record_allocation(a)
            .map_err(|e| Status::unavailable(crate::text::one_line(&e)))?;
        container_responses.push(container_response(a, cfg, gpu.memory_mib));
    }
    Ok(AllocateResponse {
        container_responses,
    })
}

/// Runs the plugin in the foreground until SIGTERM or SIGINT: serves on
/// `kubelet_dir/gpushare.sock`, registers with kubelet, keeps the device
/// list's health current, and registers again whenever kubelet restarts.
/// `say` gets a line for each thing worth a log line.
pub fn run(
    cfg: &Config,
    kubelet_dir: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(), DevicePluginError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DevicePluginError::Runtime)?;
    rt.block_on(serve(cfg.clone(), kubelet_dir.to_owned(), say))
}

/// The inode of kubelet's socket (a restarted kubelet makes a new one).
fn kubelet_socket_id(dir: &Path) -> Option<u64> {
    std::fs::metadata(dir.join(KUBELET_SOCKET))
        .ok()
        .map(|m| m.ino())
}

async fn serve(
    cfg: Config,
    dir: PathBuf,
    say: &mut dyn FnMut(&str),
) -> Result<(), DevicePluginError> {
    let units = cfg.device_plugin.units_per_gpu;
    // The first list is read before kubelet can ask; then every POLL.
    let mut health = Health {
        cfg: cfg.clone(),
        nvml: crate::telemetry::open().ok(),
        seen: Vec::new(),
    };
    let (tx, rx) = watch::channel(health.list(units));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let Ok((h, list)) = tokio::task::spawn_blocking(move || {
                let list = health.list(units);
                (health, list)
            })
            .await
            else {
                return;
            };
            health = h;
            tx.send_if_modified(|now| {
                let changed = *now != list;
                *now = list;
                changed
            });
        }
    });
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(DevicePluginError::Runtime)?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(DevicePluginError::Runtime)?;
    let socket = dir.join(SOCKET_NAME);
    loop {
        // Our socket, made anew (a stale one from a killed plugin goes).
        let _ = std::fs::remove_file(&socket);
        let listener =
            tokio::net::UnixListener::bind(&socket).map_err(|source| DevicePluginError::Serve {
                path: socket.clone(),
                source,
            })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let plugin = Plugin {
            cfg: cfg.clone(),
            devices: rx.clone(),
        };
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(DevicePluginServer::new(plugin))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        // Register once kubelet answers.
        let mut waiting_said = false;
        let kubelet = loop {
            let id = kubelet_socket_id(&dir);
            match register(&dir, &cfg).await {
                Ok(()) => break id,
                Err(Registration::Refused(message)) => {
                    let _ = stop.send(());
                    let _ = std::fs::remove_file(&socket);
                    return Err(DevicePluginError::Refused {
                        resource: cfg.device_plugin.resource.clone(),
                        message,
                    });
                }
                Err(Registration::NoKubelet(why)) => {
                    if !waiting_said {
                        say(&format!(
                            "waiting for kubelet at {}: {why}",
                            dir.join(KUBELET_SOCKET).display()
                        ));
                        waiting_said = true;
                    }
                }
            }
            if stop_asked(&mut term, &mut int).await {
                let _ = stop.send(());
                let _ = std::fs::remove_file(&socket);
                return Ok(());
            }
        };
        say(&format!(
            "registered {} ({units} units per GPU) with kubelet, serving on {}",
            cfg.device_plugin.resource,
            socket.display()
        ));
        // Watch for kubelet's restart (a new kubelet.sock, our socket
        // removed) or the end.
        loop {
            if stop_asked(&mut term, &mut int).await {
                let _ = stop.send(());
                server.abort();
                let _ = std::fs::remove_file(&socket);
                say("stopped");
                return Ok(());
            }
            if !socket.exists() || kubelet_socket_id(&dir) != kubelet {
                say("kubelet restarted: serving and registering again");
                break;
            }
        }
        // The old kubelet's connections (a ListAndWatch stream never ends
        // by itself) are cut, not waited for.
        let _ = stop.send(());
        server.abort();
    }
}

/// Waits a poll interval for SIGTERM or SIGINT: whether one came.
async fn stop_asked(
    term: &mut tokio::signal::unix::Signal,
    int: &mut tokio::signal::unix::Signal,
) -> bool {
    let either = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    };
    tokio::time::timeout(POLL, either).await.is_ok()
}

enum Registration {
    /// kubelet is not there (yet): try again.
    NoKubelet(String),
    /// kubelet answered no.
    Refused(String),
}

/// A gRPC channel to the unix socket at `path` (the URI is a placeholder
/// that gRPC needs; the connector goes to the socket).
pub async fn unix_channel(
    path: &Path,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    let path = path.to_owned();
    tonic::transport::Endpoint::from_static("http://[::]:50051")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
}

async fn register(dir: &Path, cfg: &Config) -> Result<(), Registration> {
    let channel = unix_channel(&dir.join(KUBELET_SOCKET))
        .await
        .map_err(|e| Registration::NoKubelet(crate::text::one_line(&e)))?;
    RegistrationClient::new(channel)
        .register(RegisterRequest {
            version: API_VERSION.into(),
            endpoint: SOCKET_NAME.into(),
            resource_name: cfg.device_plugin.resource.clone(),
            options: Some(DevicePluginOptions {
                pre_start_required: false,
                get_preferred_allocation_available: true,
            }),
        })
        .await
        .map(|_| ())
        .map_err(|s| match s.code() {
            tonic::Code::Unavailable | tonic::Code::Unknown if s.message().contains("connect") => {
                Registration::NoKubelet(s.message().to_owned())
            }
            _ => Registration::Refused(s.message().to_owned()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_gone_from_the_inventory_is_listed_unhealthy() {
        let seen = vec!["GPU-a".to_owned(), "GPU-b".to_owned()];
        let list = device_list(&seen, &["GPU-b".to_owned()], 3);
        assert_eq!(list.len(), 6);
        assert!(list[..3].iter().all(|d| d.health == UNHEALTHY));
        assert!(list[3..].iter().all(|d| d.health == HEALTHY));
        assert_eq!(list[4].id, "GPU-b::1");
    }

    #[test]
    fn the_answer_names_the_gpu_the_share_and_the_allocation() {
        let mut cfg = Config::default();
        let a = units::allocation(
            &(0..30)
                .map(|n| units::device_id("GPU-a", n))
                .collect::<Vec<_>>(),
            "gpushare.io/gpu-percent",
            100,
            1,
        )
        .unwrap();
        let r = container_response(&a, &cfg, Some(15360));
        assert_eq!(r.envs["NVIDIA_VISIBLE_DEVICES"], "GPU-a");
        assert_eq!(r.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], "30");
        assert!(!r.envs.contains_key("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"));
        assert_eq!(r.annotations[ALLOCATION_ANNOTATION], "GPU-a::0");
        cfg.device_plugin.proportional_pinned_memory = true;
        let r = container_response(&a, &cfg, Some(15360));
        assert_eq!(r.envs["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"], "4608M");
        // The whole GPU: no share.
        let whole = units::allocation(
            &(0..100)
                .map(|n| units::device_id("GPU-a", n))
                .collect::<Vec<_>>(),
            "r/x",
            100,
            1,
        )
        .unwrap();
        assert!(!container_response(&whole, &cfg, None)
            .envs
            .contains_key("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"));
    }
}
