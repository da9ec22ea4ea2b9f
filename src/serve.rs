//! `gpushare metrics --listen`: the exposition over HTTP for Prometheus,
//! served by hyper. Whoever can reach the port is a stranger, so every
//! connection is bounded: its request head must arrive whole within
//! `HEAD_TIMEOUT` and fit in `MAX_HEAD` bytes (hyper answers 431 and closes
//! past that), the whole exchange ends within `CONNECTION_TIMEOUT`, no
//! request body is ever read, and at most `MAX_CONNECTIONS` are open at
//! once. Every connection is accepted at once; when one more would pass
//! the cap, the oldest open connection is closed to make room, so clients
//! that connect and say nothing (however many, however often they come
//! back) can never keep a scrape waiting: a scrape is always among the
//! newest. Connections are served concurrently; one exposition is
//! computed at a time, off the thread that accepts and reads.
//!
//! This is the operators' binary only: nothing here is on a container's
//! create path.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

/// How long a client has to send its whole request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one connection may last, answer included.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(15);
/// The most bytes of request head read (hyper's buffer cap).
pub const MAX_HEAD: usize = 16 << 10;
/// Connections open at once (each an idle task and a descriptor: a few
/// KiB); past it the oldest is closed.
pub const MAX_CONNECTIONS: usize = 512;

/// Prometheus' classic text format, which the exposition keeps to.
const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Computes the page: the exposition, or why there is none (a 500).
pub type Render = dyn Fn() -> Result<String, String> + Send + Sync;

/// Serves `GET /metrics` on `listener` until the process ends.
pub fn serve(listener: std::net::TcpListener, render: Arc<Render>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    runtime.block_on(accept_loop(listener, render))
}

async fn accept_loop(listener: std::net::TcpListener, render: Arc<Render>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    // One exposition at a time: a flood of scrapes costs one computation
    // after another, not all at once.
    let one_render = Arc::new(tokio::sync::Mutex::new(()));
    // The open connections, oldest first.
    let mut open: std::collections::VecDeque<tokio::task::JoinHandle<()>> =
        std::collections::VecDeque::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors or a connection reset before it was
                // taken: wait a little rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        open.retain(|c| !c.is_finished());
        while open.len() >= MAX_CONNECTIONS {
            if let Some(oldest) = open.pop_front() {
                oldest.abort();
            }
        }
        let render = Arc::clone(&render);
        let one_render = Arc::clone(&one_render);
        open.push_back(tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                respond(req, Arc::clone(&render), Arc::clone(&one_render))
            });
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .keep_alive(false);
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
        }));
    }
}

async fn respond(
    req: Request<Incoming>,
    render: Arc<Render>,
    one_render: Arc<tokio::sync::Mutex<()>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = page(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET /metrics is served\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(r);
    }
    if req.uri().path() != "/metrics" {
        return Ok(page(
            StatusCode::NOT_FOUND,
            "only /metrics is served\n".into(),
        ));
    }
    let _one = one_render.lock().await;
    let answer = tokio::task::spawn_blocking(move || render()).await;
    Ok(match answer {
        Ok(Ok(text)) => page(StatusCode::OK, text),
        Ok(Err(why)) => page(StatusCode::INTERNAL_SERVER_ERROR, format!("{why}\n")),
        Err(_) => page(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the exposition could not be computed\n".into(),
        ),
    })
}

fn page(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE_TEXT));
    r
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr}: {source}; give a free host:port")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the metrics server stopped: {0}")]
    Stopped(#[source] std::io::Error),
}

/// `gpushare metrics --listen ADDR`: binds (port 0 takes a free port),
/// says where it serves on stderr, and serves the status's exposition,
/// computed afresh at each scrape, until the process ends.
pub fn metrics(addr: &str) -> Result<(), ServeError> {
    let listener = std::net::TcpListener::bind(addr).map_err(|source| ServeError::Listen {
        addr: addr.to_owned(),
        source,
    })?;
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.to_owned(), |a| a.to_string());
    eprintln!("serving http://{bound}/metrics");
    let render = || {
        crate::report::status_now()
            .map(|s| crate::report::metrics(&s))
            .map_err(|e| crate::text::one_line(&e))
    };
    serve(listener, Arc::new(render)).map_err(ServeError::Stopped)
}
