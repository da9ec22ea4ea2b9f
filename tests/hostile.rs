//! Hostile input, round two, end to end on a node without root: forged
//! `gpushare/*` annotations, container ids outside runc's rule, a
//! config.json that is a FIFO or a link to `/dev/zero`, control and bidi
//! characters on their way to a terminal, the ledger's permissions, and
//! slow and flooding clients of the live metrics server. Each attack has its
//! documented outcome: refused (exit 2, one line, nothing reserved) or
//! neutralised (what the user sees instead).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// Runs the runtime, killed (and the test failed) if it takes longer than
/// `limit`: a hang is the failure these tests look for.
fn runtime_within(node: &Node, args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = node
        .command(bin_runtime())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("gpushare-runtime {args:?} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

fn assert_refused(node: &Node, what: &str, out: &std::process::Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "{what}: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{what}: one line: {err}");
    assert!(err.contains(needle), "{what}: {needle:?} not in {err}");
    assert!(
        !err.trim_end().chars().any(gpushare::text::hidden),
        "{what}: nothing raw reaches the terminal: {err:?}"
    );
    assert!(node.ledger().is_empty(), "{what}: nothing reserved");
    assert_eq!(
        std::fs::read_dir(node.path().join("state/held")).map_or(0, |d| d.count()),
        0,
        "{what}: no marker"
    );
    assert!(node.recorded().is_none(), "{what}: the runtime never ran");
}

#[test]
fn container_ids_outside_runcs_rule_are_refused_before_anything_is_reserved() {
    let node = Node::new(2, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let before = std::fs::read(b.join("config.json")).unwrap();
    let long = "x".repeat(256);
    for id in [
        "\u{1b}[2J\u{1b}[Hfake",
        "a\nGPU 9 FAKE",
        "../x",
        "a/b",
        ".",
        "..",
        "pod\u{202e}gnp.exe",
        long.as_str(),
    ] {
        let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), id]);
        assert_refused(&node, &format!("id {id:?}"), &out, "container id");
        assert_eq!(std::fs::read(b.join("config.json")).unwrap(), before);
    }
    // The same through `run`, and a well-formed id still goes through.
    let out = node.runtime(&["run", "-d", "--bundle", b.to_str().unwrap(), "a/b"]);
    assert_refused(&node, "run a/b", &out, "runc's rule");
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "ok.1+x_y-z"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(node.ledger().len(), 1);
}

#[test]
fn a_config_json_that_is_a_fifo_or_a_link_to_dev_zero_is_refused_at_once() {
    let node = Node::new(1, "");
    let b = node.path().join("fifo");
    std::fs::create_dir(&b).unwrap();
    // A FIFO no one writes: an ordinary open or read would wait forever.
    nix::unistd::mkfifo(
        &b.join("config.json"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    let out = runtime_within(
        &node,
        &["create", "--bundle", b.to_str().unwrap(), "c1"],
        Duration::from_secs(5),
    );
    assert_refused(&node, "fifo", &out, "is a FIFO, not a regular file");

    let b = node.path().join("zero");
    std::fs::create_dir(&b).unwrap();
    std::os::unix::fs::symlink("/dev/zero", b.join("config.json")).unwrap();
    let out = runtime_within(
        &node,
        &["create", "--bundle", b.to_str().unwrap(), "c2"],
        Duration::from_secs(5),
    );
    assert_refused(
        &node,
        "/dev/zero",
        &out,
        "is a character device, not a regular file",
    );
    // The hook reads bundles the same way.
    let mut s = json!({"ociVersion": "1.0.2", "id": "c3", "status": "creating", "pid": std::process::id(), "bundle": b});
    let out = node.hook("createRuntime", &s);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not a regular file"),
        "{}",
        stderr(&out)
    );
    s["bundle"] = json!(node.path().join("fifo"));
    let out = node.hook("createRuntime", &s);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(node.ledger().is_empty());
}

#[test]
fn gpushare_annotations_in_a_spec_are_replaced_by_the_shims_own() {
    let node = Node::new(2, "");
    let b = node.bundle("forged", &["NVIDIA_VISIBLE_DEVICES=1"]);
    let mut spec = spec(&b);
    spec["annotations"] = json!({
        "gpushare/gpus": format!("{},GPU-junk\u{1b}[2J", uuid(0)),
        "gpushare/thread-percentage": "100",
        "org.example": "kept",
    });
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ann = &common::spec(&b)["annotations"];
    assert_eq!(
        *ann,
        json!({"gpushare/gpus": uuid(1), "org.example": "kept"}),
        "only the shim's own gpushare/ annotation is left"
    );
    assert_eq!(node.ledger()[0]["gpus"], json!([uuid(1)]));
}

/// Writes a hold into the node's ledger as an earlier gpushare (or a
/// person with `sqlite3`) could have left it.
fn plant(node: &Node, id: &str, names: &[(&str, &str)]) {
    use gpushare::ledger::{Container, Hold, Ledger, Source};
    let mut ledger = Ledger::open(&node.path().join("state")).unwrap();
    let mut tx = ledger.begin().unwrap();
    tx.insert(&Hold {
        container: Container {
            root: String::new(),
            id: id.into(),
        },
        gpus: vec![uuid(0)],
        thread_percentage: None,
        pinned_mem_limit: None,
        pid: Some(std::process::id() as i32),
        pid_start: gpushare::sys::Process::find(std::process::id() as i32).map(|p| p.start),
        names: names
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        env: Vec::new(),
        created: gpushare::sys::now(),
        source: Source::Imported,
        bundle: String::new(),
        reservation: 7,
    })
    .unwrap();
    tx.commit().unwrap();
}

#[test]
fn status_shows_control_and_bidi_characters_escaped_never_raw() {
    let node = Node::new(1, "");
    // Names reach the ledger from the engine's annotations, as given.
    let b = node.bundle("named", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let mut sp = spec(&b);
    sp["annotations"] = json!({
        "io.kubernetes.cri.sandbox-name": "cam\u{202e}gnp.exe",
        "io.kubernetes.cri.sandbox-namespace": "edge\u{1b}[2J\u{7}",
        "nerdctl/name": "x\u{2066}y\u{2069}\u{200f}",
    });
    std::fs::write(b.join("config.json"), sp.to_string()).unwrap();
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "named"]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Ids the runtime now refuses may still be in a ledger an earlier
    // version wrote.
    plant(&node, "a\nGPU 9  Tesla T4  GPU-FAKE", &[]);
    plant(&node, "\u{1b}[2J\u{1b}[31mred", &[("pod", "p\u{85}q")]);

    let out = node.cli(&["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        !text.chars().any(|c| c != '\n' && gpushare::text::hidden(c)),
        "nothing raw: {text:?}"
    );
    assert!(
        !text.lines().any(|l| l.starts_with("GPU 9")),
        "no fake GPU line: {text}"
    );
    for shown in [
        "cam\\u{202e}gnp.exe",
        "edge\\u{1b}[2J\\u{7}",
        "x\\u{2066}y\\u{2069}\\u{200f}",
        "p\\u{85}q",
    ] {
        assert!(text.contains(shown), "{shown} in {text}");
    }
    // Ids are cut to 14 characters in the table, then escaped.
    assert!(text.contains("  a\\nGPU 9  Tesla "), "{text}");
    assert!(text.contains("  \\u{1b}[2J\\u{1b}[31mred "), "{text}");

    // JSON keeps the values, escaped as JSON escapes them.
    let out = node.cli(&["status", "--json"]);
    let raw = stdout(&out);
    assert!(!raw.contains('\u{1b}') && raw.contains("\\u001b"), "{raw}");
    let doc: Value = serde_json::from_str(&raw).unwrap();
    let ids: Vec<&str> = doc["gpus"][0]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"a\nGPU 9  Tesla T4  GPU-FAKE"), "{ids:?}");

    // Metrics: one sample per line, label values escaped per the format.
    let out = node.cli(&["metrics"]);
    let m = stdout(&out);
    assert!(
        m.contains("container=\"a\\nGPU 9  Tesla T4  GPU-FAKE\""),
        "{m}"
    );
    assert!(
        m.lines()
            .all(|l| l.starts_with('#') || l.starts_with("gpushare_")),
        "no line but a sample or a comment: {m}"
    );
}

#[test]
fn the_ledger_is_roots_alone_and_gc_tightens_what_an_earlier_version_left() {
    let node = Node::new(1, "");
    let b = node.bundle("b", &["NVIDIA_VISIBLE_DEVICES=0"]);
    let out = node.runtime(&["create", "--bundle", b.to_str().unwrap(), "c1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let state = node.path().join("state");
    let mode = |p: &str| {
        std::fs::metadata(state.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(""), 0o700);
    for f in ["ledger.db", "ledger.lock"] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
    // An earlier gpushare made them readable to all.
    for (f, m) in [("", 0o755), ("ledger.db", 0o644), ("ledger.lock", 0o644)] {
        std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(m)).unwrap();
    }
    let out = node.cli(&["gc"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        (mode(""), mode("ledger.db"), mode("ledger.lock")),
        (0o700, 0o600, 0o600)
    );
    assert_eq!(node.ledger().len(), 1, "gc kept the live entry");
}

/// A `gpushare metrics --listen 127.0.0.1:0` server and the port it took.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    fn start(node: &Node) -> Server {
        let mut child = node
            .command(bin_cli())
            .args(["metrics", "--listen", "127.0.0.1:0"])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = child.stderr.take().unwrap();
        let mut line = Vec::new();
        let mut byte = [0u8];
        while err.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0]);
        }
        let line = String::from_utf8(line).unwrap();
        let port = line
            .strip_prefix("serving http://127.0.0.1:")
            .and_then(|r| r.strip_suffix("/metrics"))
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .parse()
            .unwrap();
        Server { child, port }
    }

    fn connect(&self) -> TcpStream {
        TcpStream::connect(("127.0.0.1", self.port)).unwrap()
    }

    /// A scrape, bounded in time: (status line, body, seconds taken).
    fn scrape(&self, limit: Duration) -> (String, String, f64) {
        let start = Instant::now();
        let mut s = self.connect();
        s.set_read_timeout(Some(limit)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: node\r\n\r\n")
            .unwrap();
        let mut page = Vec::new();
        s.read_to_end(&mut page)
            .unwrap_or_else(|e| panic!("no answer within {limit:?}: {e}"));
        let page = String::from_utf8(page).unwrap();
        let (head, body) = page.split_once("\r\n\r\n").unwrap_or((&page, ""));
        let status = head.lines().next().unwrap_or("").to_owned();
        (status, body.to_owned(), start.elapsed().as_secs_f64())
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn slow_and_idle_clients_delay_no_scrape() {
    let node = Node::new(2, "");
    let server = Server::start(&node);
    // Idle connections that never send a byte, and one that sends its
    // request a byte every 200 ms.
    let idle: Vec<TcpStream> = (0..8).map(|_| server.connect()).collect();
    let mut slow = server.connect();
    let dribble = std::thread::spawn(move || {
        for b in b"GET /metrics HTTP/1.1\r\nHost: x\r\n" {
            if slow.write_all(&[*b]).is_err() {
                return "closed by the server";
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        "sent it all"
    });
    for _ in 0..3 {
        let (status, body, secs) = server.scrape(Duration::from_secs(3));
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(body.contains("gpushare_gpu_containers{gpu=\"1\""), "{body}");
        assert!(secs < 2.0, "a scrape beside idle clients took {secs} s");
    }
    // The slow client is cut off once its head is overdue (5 s).
    assert_eq!(dribble.join().unwrap(), "closed by the server");
    // So are the idle ones: none is still open 10 s later.
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 256];
        let r = c.read(&mut buf);
        assert!(
            r.is_ok()
                || r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "an idle connection still open: {r:?}"
        );
    }
    let (status, _, _) = server.scrape(Duration::from_secs(3));
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[test]
fn a_flood_of_bytes_with_no_newline_neither_grows_the_server_nor_stops_scrapes() {
    let node = Node::new(2, "");
    let server = Server::start(&node);
    let before = server.rss_kib();
    let port = server.port;
    let until = Instant::now() + Duration::from_secs(3);
    let floods: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let chunk = vec![b'A'; 1 << 20];
                let mut sent = 0usize;
                let mut cut_off = 0;
                while Instant::now() < until {
                    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                        continue;
                    };
                    let _ = s.write_all(b"GET /");
                    while Instant::now() < until {
                        match s.write(&chunk) {
                            Ok(n) => sent += n,
                            Err(_) => {
                                cut_off += 1;
                                break;
                            }
                        }
                    }
                }
                (sent, cut_off)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body, secs) = server.scrape(Duration::from_secs(3));
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    assert!(secs < 2.0, "a scrape during the flood took {secs} s");
    let during = server.rss_kib();
    let mut cut_offs = 0;
    for f in floods {
        let (_, c) = f.join().unwrap();
        cut_offs += c;
    }
    let after = server.rss_kib();
    assert!(cut_offs > 0, "the server cut the flooding connections off");
    assert!(
        during < before + (32 << 10) && after < before + (32 << 10),
        "the server's memory stays bounded: {before} KiB before, {during} during, {after} after"
    );
    let (status, _, _) = server.scrape(Duration::from_secs(3));
    assert_eq!(status, "HTTP/1.1 200 OK");
}

#[test]
fn the_metrics_server_answers_only_get_metrics() {
    let node = Node::new(1, "");
    let server = Server::start(&node);
    for (request, status) in [
        (
            "GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 404 Not Found",
        ),
        (
            "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n",
            "HTTP/1.1 405 Method Not Allowed",
        ),
        ("NONSENSE\r\n\r\n", "HTTP/1.1 400 Bad Request"),
    ] {
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut page = Vec::new();
        let _ = s.read_to_end(&mut page);
        let page = String::from_utf8_lossy(&page);
        assert!(page.starts_with(status), "{request:?}: {page}");
    }
    // A head over the cap: refused, not buffered.
    let mut s = server.connect();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let big = format!(
        "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
        "a".repeat(64 << 10)
    );
    let _ = s.write_all(big.as_bytes());
    let mut page = Vec::new();
    let _ = s.read_to_end(&mut page);
    let page = String::from_utf8_lossy(&page);
    assert!(
        page.is_empty() || page.starts_with("HTTP/1.1 431"),
        "{page}"
    );
}

#[test]
fn a_scrape_is_answered_while_250_idle_clients_keep_reconnecting() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let node = Node::new(2, "");
    let server = Server::start(&node);
    let port = server.port;
    let stop = Arc::new(AtomicBool::new(false));
    // Each client connects, says nothing until the server cuts it off, and
    // comes straight back.
    let clients: Vec<_> = (0..250u64)
        .map(|i| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut rounds = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                        rounds += 1;
                        // Awake now and then, to see whether the test is over.
                        let _ = s.set_read_timeout(Some(Duration::from_millis(500 + i)));
                        let mut buf = [0u8; 64];
                        while !stop.load(Ordering::Relaxed) {
                            match (&s).read(&mut buf) {
                                Ok(0) => break,
                                Err(e)
                                    if e.kind() == std::io::ErrorKind::WouldBlock
                                        || e.kind() == std::io::ErrorKind::TimedOut =>
                                {
                                    continue
                                }
                                _ => break,
                            }
                        }
                    }
                }
                rounds
            })
        })
        .collect();
    // Past the first round of cut-offs (5 s), while they come back.
    std::thread::sleep(Duration::from_secs(6));
    for _ in 0..5 {
        let (status, body, secs) = server.scrape(Duration::from_secs(5));
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        assert!(
            secs < 2.0,
            "a scrape beside 250 reconnecting idle clients took {secs} s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let rounds: u32 = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(
        rounds > 250,
        "the clients kept reconnecting ({rounds} connections)"
    );
}
