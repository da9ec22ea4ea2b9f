//! A test kubelet for the device plugin (shared by tests/ and
//! integration/): kubelet's registration service on `kubelet.sock` in a
//! device-plugin directory, and a client of the plugin's socket, as
//! kubelet's device manager (API v1beta1).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use gpushare::device_plugin::api::device_plugin_client::DevicePluginClient;
use gpushare::device_plugin::api::registration_server::{Registration, RegistrationServer};
use gpushare::device_plugin::api::*;
use tokio::sync::mpsc;
use tonic::transport::Channel;

/// kubelet's side: the registration service, and what it was sent.
pub struct Kubelet {
    pub rt: tokio::runtime::Runtime,
    pub dir: PathBuf,
    pub registered: mpsc::UnboundedReceiver<RegisterRequest>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

struct Registrar(mpsc::UnboundedSender<RegisterRequest>);

#[tonic::async_trait]
impl Registration for Registrar {
    async fn register(
        &self,
        request: tonic::Request<RegisterRequest>,
    ) -> Result<tonic::Response<Empty>, tonic::Status> {
        let _ = self.0.send(request.into_inner());
        Ok(tonic::Response::new(Empty {}))
    }
}

impl Kubelet {
    pub fn start(dir: &Path) -> Kubelet {
        // One thread: the registration service runs while the test waits on
        // this runtime (every wait here is a block_on).
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (tx, registered) = mpsc::unbounded_channel();
        let mut k = Kubelet {
            rt,
            dir: dir.to_owned(),
            registered,
            stop: None,
        };
        k.serve(tx);
        k
    }

    fn serve(&mut self, tx: mpsc::UnboundedSender<RegisterRequest>) {
        let sock = self.dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&sock);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let _guard = self.rt.enter();
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        self.rt.spawn(
            tonic::transport::Server::builder()
                .add_service(RegistrationServer::new(Registrar(tx)))
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::UnixListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        self.stop = Some(stop);
    }

    /// As a restarting kubelet does: its socket and the plugins' sockets
    /// go, a new kubelet.sock comes.
    pub fn restart(&mut self) -> mpsc::UnboundedReceiver<RegisterRequest> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        for e in std::fs::read_dir(&self.dir).unwrap() {
            let _ = std::fs::remove_file(e.unwrap().path());
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.serve(tx);
        rx
    }

    pub fn next_registration(
        rt: &tokio::runtime::Runtime,
        rx: &mut mpsc::UnboundedReceiver<RegisterRequest>,
    ) -> RegisterRequest {
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), rx.recv()).await })
            .expect("the plugin registered within 20 s")
            .unwrap()
    }

    /// The next device list the plugin sends that `ok` accepts (20 s at most).
    pub fn list_until(
        rt: &tokio::runtime::Runtime,
        stream: &mut tonic::Streaming<ListAndWatchResponse>,
        what: &str,
        ok: impl Fn(&[Device]) -> bool,
    ) -> Vec<Device> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let msg = rt
                .block_on(async { tokio::time::timeout(left, stream.message()).await })
                .unwrap_or_else(|_| panic!("no device list with {what} within 20 s"))
                .unwrap()
                .expect("the stream stays open");
            if ok(&msg.devices) {
                return msg.devices;
            }
        }
    }

    /// A client of the plugin's socket, as kubelet's device manager.
    pub fn plugin(&self) -> DevicePluginClient<Channel> {
        let channel = self
            .rt
            .block_on(gpushare::device_plugin::unix_channel(
                &self.dir.join("gpushare.sock"),
            ))
            .expect("the plugin's socket answers");
        DevicePluginClient::new(channel)
    }
}

/// A plugin's process (the device plugin's, the NRI plugin's), killed on
/// drop.
pub struct Plugin(pub Child);

impl Plugin {
    /// `gpushare device-plugin --kubelet-dir dir`, `command` being the
    /// operators' binary with the node's environment; its log lines go to
    /// `log`.
    pub fn start(mut command: Command, dir: &Path, log: &Path) -> Plugin {
        let log = std::fs::File::create(log).unwrap();
        Plugin(
            command
                .args(["device-plugin", "--kubelet-dir"])
                .arg(dir)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = self.0.wait();
    }
}
