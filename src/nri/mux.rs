//! NRI's connection multiplexer (github.com/containerd/nri
//! pkg/net/multiplex): logical connections carried over one socket as
//! frames of [connection id: u32 BE][length: u32 BE][payload]; a logical
//! connection is a byte stream (ttrpc's), cut into frames as it is written.
//! Here each logical connection is bridged to a local socket, so that ttrpc
//! (which speaks to sockets) runs over it unchanged.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::task::JoinHandle;

/// The connection the plugin serves and the runtime calls.
pub const PLUGIN_CONN: u32 = 1;
/// The connection the runtime serves and the plugin calls.
pub const RUNTIME_CONN: u32 = 2;
/// NRI's largest frame: a ttrpc header and message.
pub const MAX_FRAME: usize = 10 + (4 << 20);

/// A running multiplexer: ends when the trunk closes (or sends a frame
/// over the limit), and stops its copying tasks when dropped.
pub struct Mux {
    pub demux: JoinHandle<std::io::Result<()>>,
    pumps: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Drop for Mux {
    fn drop(&mut self) {
        self.demux.abort();
        for p in &self.pumps {
            p.abort();
        }
    }
}

/// Carries connection `id` of `trunk` to and from the local stream of each
/// `(id, stream)`: what the trunk brings for `id` is written to its stream,
/// what the stream writes goes out in frames of `id`.
pub fn start(trunk: UnixStream, conns: Vec<(u32, UnixStream)>) -> Mux {
    let (mut trunk_in, trunk_out) = trunk.into_split();
    let trunk_out = Arc::new(tokio::sync::Mutex::new(trunk_out));
    let mut outs: Vec<(u32, OwnedWriteHalf)> = Vec::new();
    let mut pumps = Vec::new();
    for (id, stream) in conns {
        let (r, w) = stream.into_split();
        outs.push((id, w));
        pumps.push(tokio::spawn(pump(r, trunk_out.clone(), id)));
    }
    let demux = tokio::spawn(async move {
        let mut header = [0u8; 8];
        loop {
            match trunk_in.read_exact(&mut header).await {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
            let id = u32::from_be_bytes(header[..4].try_into().expect("4 bytes"));
            let len = u32::from_be_bytes(header[4..].try_into().expect("4 bytes")) as usize;
            if len > MAX_FRAME {
                return Err(std::io::Error::other(format!(
                    "a frame of {len} bytes, over NRI's {MAX_FRAME}"
                )));
            }
            let mut payload = vec![0u8; len];
            trunk_in.read_exact(&mut payload).await?;
            if let Some((_, w)) = outs.iter_mut().find(|(i, _)| *i == id) {
                w.write_all(&payload).await?;
            }
        }
    });
    Mux { demux, pumps }
}

/// Copies what a local stream writes into frames of connection `id`.
async fn pump(
    mut from: OwnedReadHalf,
    trunk: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    id: u32,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        let mut frame = Vec::with_capacity(8 + n);
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&(n as u32).to_be_bytes());
        frame.extend_from_slice(&buf[..n]);
        trunk.lock().await.write_all(&frame).await?;
    }
}

/// A connected pair of local streams: one for the multiplexer, the other
/// (a std stream, to be handed to ttrpc's client as a descriptor) for the
/// client.
pub fn pair() -> std::io::Result<(UnixStream, std::os::unix::net::UnixStream)> {
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()?;
    ours.set_nonblocking(true)?;
    Ok((UnixStream::from_std(ours)?, theirs))
}

/// A ttrpc server of `services` on a listening socket at `path` (a path in
/// a private directory: ttrpc serves only listeners), and the local stream
/// connected to it, for the multiplexer. The socket file is removed once
/// connected.
pub async fn serve(
    path: &std::path::Path,
    services: std::collections::HashMap<String, ttrpc::r#async::Service>,
) -> Result<(ttrpc::r#async::Server, UnixStream), String> {
    use std::os::fd::IntoRawFd;
    let _ = std::fs::remove_file(path);
    let listener = std::os::unix::net::UnixListener::bind(path)
        .map_err(|e| format!("serve on {}: {e}", path.display()))?;
    let mut server = ttrpc::r#async::Server::new()
        .set_domain_unix()
        .add_listener(listener.into_raw_fd())
        .map_err(|e| e.to_string())?
        .register_service(services);
    server.start().await.map_err(|e| e.to_string())?;
    let stream = UnixStream::connect(path)
        .await
        .map_err(|e| format!("connect to {}: {e}", path.display()))?;
    let _ = std::fs::remove_file(path);
    Ok((server, stream))
}
