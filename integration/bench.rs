//! `cargo bench --bench shim` (root; `install/bench.sh`): what gpushare
//! costs a container, beside plain runc, in one run on this machine.
//! Prints figures; asserts nothing about time. State lives on a tmpfs
//! (/dev/shm) as it does on a node (/run), and the ledger holds
//! `BENCH_HELD` containers (100 unless set) throughout, as a busy node's
//! would.
//!
//! 1. The floor: what merely starting a process costs here (a static glibc
//!    `true`, the system's dynamic `/bin/true`, a static musl `true` where
//!    musl-gcc is), against which every runtime call is measured.
//! 2. gpushare's own cost, with a stand-in runtime (a static C program that
//!    answers as runc does: it writes the pid file it is given): every call
//!    of a life (create, start, delete) through `gpushare-runtime` against
//!    the same call to the stand-in, round by round; a GPU create as more
//!    containers are held; the peak RSS of a GPU create.
//! 3. Two container lives with the real runc, each as a share of plain
//!    runc's own: a long-running container (create, start, delete --force
//!    of a running `sleep`) and a short-lived one (create, start, delete of
//!    an exited `true`). Each GPU life is split into runc's own extra work
//!    for the devices and mounts gpushare adds (runc running the very spec
//!    gpushare writes), what runc costs run as a child (a parent that only
//!    forks, execs and waits for it, as any runtime that acts after runc's
//!    create must), and gpushare's own. A life's CPU includes the
//!    container's process, where runc's init sets up its mounts and
//!    devices: this program is the containers' subreaper, as an engine's
//!    shim is, and reaps them.
//! 4. 200 GPU creates at once (shim + stand-in): no lock convoy.
//! 5. The hook used alone (podman, CRI-O), timed inside runc.
//! 6. The NRI plugin (`gpushare nri`), driven by a test NRI runtime as
//!    containerd drives it: a GPU container's life (CreateContainer, its
//!    start and its removal) as round trips to the resident plugin, and the
//!    plugin's CPU per life, beside plain runc's long-running life. The
//!    lives run back to back, with none of runc's work between the calls,
//!    so the ledger writes the plugin does just after answering a start or
//!    a removal land in the next creation's answer: counted, not hidden.
//! 7. With `GPUSHARE_BENCH_BASELINE=DIR` (another build's three binaries):
//!    that build beside this one, each on a node of its own with nothing
//!    held, so earlier designs are measured in the same run.
//!
//! Two helper modes serve install/gpu-check.sh on a machine with no
//! compiler and no kubelet: `--stage-helpers DIR` (the C helpers, built
//! beforehand) and `--kubelet-allocate DIR UNITS` (kubelet's side of one
//! device-plugin allocation).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use gpushare::ledger::{Container, Hold, Ledger, Source};
use serde_json::json;

#[path = "../tests/common/bins.rs"]
mod bins;
#[path = "../tests/common/kubelet.rs"]
#[allow(dead_code)]
mod kubelet;
#[path = "../tests/common/nri_runtime.rs"]
#[allow(dead_code)]
mod nri_runtime;

/// Wall time (µs), CPU time (µs) and peak RSS (KiB) of one child.
#[derive(Clone, Copy, Default)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_kib: i64,
}

fn tv(t: libc::timeval) -> f64 {
    t.tv_sec as f64 * 1e6 + t.tv_usec as f64
}

/// Every call runs with the few variables an engine gives a runtime
/// (containerd's shim passes its own small environment), not the dozens
/// cargo sets: those `cmd` was given, and PATH.
fn engine_env(cmd: &mut Command) {
    let set: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(set);
}

/// Runs `cmd` to completion, measuring it alone with wait4 (its CPU time
/// includes the children it waited for).
#[allow(clippy::zombie_processes)] // wait4 reaps the child.
fn measure(cmd: &mut Command, stdin: Option<&[u8]>) -> Sample {
    use std::io::Write;
    engine_env(cmd);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    });
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let (status, ru) = wait4(child.id() as i32);
    let wall = t.elapsed().as_secs_f64() * 1e6;
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed"
    );
    Sample {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kib: ru.ru_maxrss,
    }
}

/// Runs `cmd` (a delete that kills the container `container`) to
/// completion as `measure` does, reaping the container as soon as it dies,
/// as an engine's shim does: runc's delete waits until its process is gone,
/// and a zombie is not gone. Also returns the container's CPU time.
fn measure_reaping(cmd: &mut Command, container: i32) -> (Sample, f64) {
    engine_env(cmd);
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null());
    let t = Instant::now();
    let child = cmd.spawn().expect("spawn").id() as i32;
    let mut container_cpu = None;
    loop {
        if container_cpu.is_none() {
            if let Some((_, ru)) = try_wait4(container) {
                container_cpu = Some(tv(ru.ru_utime) + tv(ru.ru_stime));
            }
        }
        if let Some((status, ru)) = try_wait4(child) {
            let wall = t.elapsed().as_secs_f64() * 1e6;
            assert!(
                libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
                "{cmd:?} failed"
            );
            let container_cpu = container_cpu.unwrap_or_else(|| {
                let (_, ru) = wait4(container);
                tv(ru.ru_utime) + tv(ru.ru_stime)
            });
            let sample = Sample {
                wall,
                cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
                rss_kib: ru.ru_maxrss,
            };
            return (sample, container_cpu);
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
}

fn try_wait4(pid: i32) -> Option<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: asks about our own child (or orphan), with valid pointers.
    let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
    (r == pid).then_some((status, ru))
}

fn wait4(pid: i32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child (or, as subreaper, an orphan of
    // ours), with valid pointers to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4 {pid}");
    (status, ru)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

/// One life: its calls' samples, and the CPU of the container's own
/// process (0 for the stand-in, which makes none).
#[derive(Clone, Default)]
struct Life {
    calls: [Sample; 3],
    container_cpu: f64,
}

impl Life {
    fn wall(&self) -> f64 {
        self.calls.iter().map(|s| s.wall).sum()
    }

    fn cpu(&self) -> f64 {
        self.calls.iter().map(|s| s.cpu).sum::<f64>() + self.container_cpu
    }
}

/// The median of each round's difference between two kinds of life (of
/// `f`). Each round measured both back to back, so the difference cancels
/// the VM's drift (its speed moves by a fifth over minutes here).
fn paired(lives: &[Life], base: &[Life], f: fn(&Life) -> f64) -> f64 {
    median(lives.iter().zip(base).map(|(a, b)| f(a) - f(b)).collect())
}

fn simulate(cli: &str, dir: &Path) -> PathBuf {
    let out = Command::new(cli)
        .args(["simulate", "--gpus", "2", "--dir"])
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "simulate needs root: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("config.toml")
}

/// A bundle whose process runs `args` on `rootfs`.
fn bundle(dir: &Path, rootfs: &Path, env: &str, args: &[&str]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
            "args": args, "env": ["PATH=/bin", env]},
        "root": {"path": rootfs, "readonly": true},
        "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"},
                   {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]}],
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]},
                  "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]}
    });
    std::fs::write(dir.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    dir.to_owned()
}

/// A config like `config` with `insert` after its `[section]` line.
fn config_with(config: &Path, w: &Path, name: &str, section: &str, insert: &str) -> PathBuf {
    let p = w.join(name);
    let t = std::fs::read_to_string(config).unwrap();
    let header = format!("[{section}]\n");
    std::fs::write(&p, t.replace(&header, &format!("{header}{insert}\n"))).unwrap();
    p
}

/// A stand-in low-level runtime: writes pid 1 (always alive) to the file
/// after `--pid-file`, and exits 0, as runc does for a call that succeeds.
const STAND_IN: &[u8] = b"#include <stdio.h>\n#include <string.h>\n\
int main(int c, char **v) { for (int i = 1; i + 1 < c; i++) if (!strcmp(v[i], \"--pid-file\")) { FILE *f = fopen(v[i + 1], \"w\"); if (!f) return 1; fputs(\"1\", f); fclose(f); } return 0; }\n";

/// A small static program that runs its arguments and prints their peak
/// RSS (KiB): measured from this small a parent, the figure is the
/// child's own, not the bench's pages it was forked with.
const PEAK_RSS: &[u8] = b"#include <stdio.h>\n#include <unistd.h>\n#include <sys/wait.h>\n#include <sys/resource.h>\n\
int main(int c, char **v) { pid_t p = fork(); if (!p) { execv(v[1], v + 1); _exit(127); }\n\
int s; struct rusage r; wait4(p, &s, 0, &r); printf(\"%ld\\n\", r.ru_maxrss); return !(WIFEXITED(s) && !WEXITSTATUS(s)); }\n";

/// Where helpers compiled beforehand are (`--stage-helpers`), for a
/// machine with no C compiler: install/gpu-check.sh stages them.
const PREBUILT: &str = "GPUSHARE_BENCH_PREBUILT";

fn build_c(compiler: &str, flags: &[&str], source: &[u8], out: &Path) -> Option<PathBuf> {
    use std::io::Write;
    if let Some(dir) = std::env::var_os(PREBUILT) {
        let staged = Path::new(&dir).join(out.file_name()?);
        return std::fs::copy(staged, out).ok().map(|_| out.to_owned());
    }
    let mut c = Command::new(compiler)
        .args(flags)
        .args(["-O2", "-x", "c", "-", "-o"])
        .arg(out)
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    c.stdin.take().unwrap().write_all(source).ok()?;
    c.wait().ok()?.success().then(|| out.to_owned())
}

const TRUE: &[u8] = b"int main(void) { return 0; }\n";

/// A parent that does nothing but run runc with its arguments as its
/// child and end as runc ended: what any runtime that must act after
/// runc's create (bind the pid, undo a failure) puts between the engine
/// and runc.
const PARENT: &[u8] = b"#include <unistd.h>\n#include <sys/wait.h>\n\
int main(int c, char **v) { v[0] = \"runc\"; pid_t p = fork(); if (!p) { execvp(\"runc\", v); _exit(127); }\n\
int s; waitpid(p, &s, 0); return WIFEXITED(s) ? WEXITSTATUS(s) : 1; }\n";

/// Run by runc as the hook: runs the real hook on the same state and
/// arguments, measured alone, and appends `stage wall cpu rss` to a file.
fn wrap_hook(hook: &str) -> ! {
    use std::io::{Read, Write};
    let mut state = Vec::new();
    std::io::stdin().read_to_end(&mut state).unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The hook gets what runc gave this wrapper (the spec's hook env).
    let s = measure(
        Command::new(hook).args(&args).envs(std::env::vars_os()),
        Some(&state),
    );
    let out = std::env::var("GPUSHARE_BENCH_OUT").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out)
        .unwrap();
    writeln!(f, "{} {} {} {}", args.join(" "), s.wall, s.cpu, s.rss_kib).unwrap();
    std::process::exit(0)
}

/// `--stage-helpers DIR`: compiles the bench's C helpers (and copies the
/// static busybox) into DIR, for a run where no compiler is.
fn stage_helpers(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let static_c = |src: &[u8], name: &str| {
        build_c("cc", &["-static"], src, &dir.join(name))
            .unwrap_or_else(|| panic!("a C compiler (cc -static) for {name}"))
    };
    static_c(STAND_IN, "stand-in");
    static_c(PEAK_RSS, "peak-rss");
    static_c(TRUE, "true-glibc");
    let _ = build_c("musl-gcc", &["-static"], TRUE, &dir.join("true-musl"));
    build_c("musl-gcc", &["-static"], PARENT, &dir.join("parent"))
        .unwrap_or_else(|| static_c(PARENT, "parent"));
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("needs busybox-static");
    println!("staged the bench's helpers in {}", dir.display());
}

/// `count` holds on pid 1 (alive), spread over both GPUs, with 64-character
/// ids as engines make them.
fn hold(state_dir: &Path, from: usize, count: usize) {
    let mut l = Ledger::open(state_dir).unwrap();
    let mut tx = l.begin().unwrap();
    let init = gpushare::sys::Process::find(1).expect("pid 1");
    let gpus = gpushare::simulate::simulated_gpus(2, "Tesla T4");
    for i in from..from + count {
        tx.insert(&Hold {
            container: Container {
                root: "/run/containerd/runc/k8s.io".into(),
                id: format!("{i:064x}"),
            },
            gpus: vec![gpus[i % 2].uuid.clone()],
            thread_percentage: Some(5.0),
            pinned_mem_limit: Some("0=1G".into()),
            pid: Some(1),
            pid_start: Some(init.start),
            names: [("pod".to_owned(), format!("module-{i}"))].into(),
            env: vec![format!("NVIDIA_VISIBLE_DEVICES={}", gpus[i % 2].uuid)],
            created: gpushare::sys::now(),
            source: Source::Runtime,
            bundle: format!("/run/containerd/io.containerd.runtime.v2.task/k8s.io/{i:064x}"),
            reservation: i as i64,
        })
        .unwrap();
    }
    tx.commit().unwrap();
}

fn held(state_dir: &Path) -> usize {
    Ledger::open(state_dir).unwrap().holds().unwrap().len()
}

fn drop_holds(state_dir: &Path, from: usize, count: usize) {
    let mut l = Ledger::open(state_dir).unwrap();
    let mut tx = l.begin().unwrap();
    for i in from..from + count {
        tx.remove(
            &Container {
                root: "/run/containerd/runc/k8s.io".into(),
                id: format!("{i:064x}"),
            },
            None,
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// The machine the bench runs on, and what it runs with.
struct Bench {
    w: PathBuf,
    rootfs: PathBuf,
    stand_in: PathBuf,
    n: usize,
    rounds: usize,
}

/// A runtime to run lives with: `gpushare-runtime` under a config, or a
/// low-level runtime itself.
#[derive(Clone)]
struct Runtime {
    bin: PathBuf,
    config: Option<PathBuf>,
    root: PathBuf,
}

impl Runtime {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        if let Some(cfg) = &self.config {
            c.env("GPUSHARE_CONFIG", cfg);
        }
        c.arg("--root").arg(&self.root).args(args);
        c
    }

    /// create (with a pid file, as engines give one), start, then, for a
    /// short-lived container, its exit waited for, then delete (--force
    /// for one still running). The container's process is reaped here,
    /// its CPU counted with the life.
    fn life(&self, b: &Path, id: &str, short: bool, pid_dir: &Path) -> Life {
        let pid_file = pid_dir.join(format!("{id}.pid"));
        let b = b.to_str().unwrap();
        let p = pid_file.to_str().unwrap();
        let create = measure(
            &mut self.command(&["create", "--pid-file", p, "--bundle", b, id]),
            None,
        );
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let start = measure(&mut self.command(&["start", id]), None);
        let real = pid != 1;
        let mut container_cpu = 0.0;
        if real && short {
            let (_, ru) = wait4(pid);
            container_cpu = tv(ru.ru_utime) + tv(ru.ru_stime);
        }
        let delete = if short {
            measure(&mut self.command(&["delete", id]), None)
        } else if real {
            let (delete, cpu) = measure_reaping(&mut self.command(&["delete", "--force", id]), pid);
            container_cpu = cpu;
            delete
        } else {
            measure(&mut self.command(&["delete", "--force", id]), None)
        };
        let _ = std::fs::remove_file(&pid_file);
        Life {
            calls: [create, start, delete],
            container_cpu,
        }
    }
}

fn row(label: &str, lives: &[Life]) {
    let per_call = |c: usize| median(lives.iter().map(|l| l.calls[c].wall).collect());
    println!(
        "{label:<40} create {:>7.0}  start {:>6.0}  delete {:>7.0}  life: wall {:>7.0} µs  cpu {:>7.0} µs",
        per_call(0),
        per_call(1),
        per_call(2),
        median(lives.iter().map(Life::wall).collect()),
        median(lives.iter().map(Life::cpu).collect()),
    );
}

/// "+1234 µs (0.9 %)": a difference and its share of `base`.
fn share(d: f64, base: f64) -> String {
    format!("{:>+6.0} µs ({:>4.1} %)", d, 100.0 * d / base)
}

impl Bench {
    /// Lives of each runtime in turn, round by round.
    fn lives(
        &self,
        kinds: &[(&Runtime, &Path)],
        short: bool,
        rounds: usize,
        tag: &str,
    ) -> Vec<Vec<Life>> {
        let pid_dir = self.w.join("pids");
        std::fs::create_dir_all(&pid_dir).unwrap();
        let mut all = vec![Vec::new(); kinds.len()];
        for r in 0..rounds {
            for (k, (rt, b)) in kinds.iter().enumerate() {
                all[k].push(rt.life(b, &format!("{tag}-{k}-{r}"), short, &pid_dir));
            }
        }
        all
    }
}

/// `--kubelet-allocate DIR UNITS` (install/gpu-check.sh, on a node with no
/// kubelet): does what kubelet does for a container asking for UNITS of
/// the device plugin's resource. It serves kubelet's registration on
/// `DIR/kubelet.sock`, waits for `gpushare device-plugin --kubelet-dir DIR`
/// to register, takes the first UNITS devices of the first GPU in its list,
/// asks Allocate, and prints the answer: `annotation K=V` and `env K=V`
/// lines.
fn kubelet_allocate(dir: &Path, units: usize) {
    use gpushare::device_plugin::api::{AllocateRequest, ContainerAllocateRequest, Empty};
    let mut k = kubelet::Kubelet::start(dir);
    let r = kubelet::Kubelet::next_registration(&k.rt, &mut k.registered);
    println!("registered: {} at {}", r.resource_name, r.endpoint);
    let mut client = k.plugin();
    let mut stream =
        k.rt.block_on(client.list_and_watch(Empty {}))
            .expect("ListAndWatch")
            .into_inner();
    let devices = kubelet::Kubelet::list_until(&k.rt, &mut stream, "devices", |d| !d.is_empty());
    let gpu = devices[0].id.rsplit_once("::").expect("<uuid>::<n>").0;
    let ids: Vec<String> = devices
        .iter()
        .filter(|d| d.id.rsplit_once("::").is_some_and(|(g, _)| g == gpu))
        .take(units)
        .map(|d| d.id.clone())
        .collect();
    assert_eq!(ids.len(), units, "GPU {gpu} lists fewer than {units} units");
    let answer =
        k.rt.block_on(client.allocate(AllocateRequest {
            container_requests: vec![ContainerAllocateRequest { devices_ids: ids }],
        }))
        .unwrap_or_else(|e| panic!("Allocate: {}", e.message()))
        .into_inner();
    let c = &answer.container_responses[0];
    for (key, v) in &c.annotations {
        println!("annotation {key}={v}");
    }
    for (key, v) in &c.envs {
        println!("env {key}={v}");
    }
}

fn main() {
    if let Ok(hook) = std::env::var("GPUSHARE_BENCH_WRAP") {
        wrap_hook(&hook);
    }
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--stage-helpers") {
        stage_helpers(Path::new(args.get(i + 1).expect("--stage-helpers DIR")));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--kubelet-allocate") {
        let units = args.get(i + 2).and_then(|u| u.parse().ok());
        kubelet_allocate(
            Path::new(args.get(i + 1).expect("--kubelet-allocate DIR UNITS")),
            units.expect("--kubelet-allocate DIR UNITS"),
        );
        return;
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the bench makes device nodes and runs runc: run it as root"
    );
    // The containers' processes are ours to reap, as they are an engine
    // shim's: their CPU is counted with their lives.
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let (runtime, hook_bin, cli) = (bins::runtime(), bins::hook(), bins::cli());
    println!("binaries: {runtime}, {hook_bin}");
    let base = if Path::new("/dev/shm").is_dir() {
        "/dev/shm"
    } else {
        "/tmp"
    };
    let work = tempfile::Builder::new()
        .prefix("gpushare-bench-")
        .tempdir_in(base)
        .unwrap();
    let w = work.path().to_owned();
    let env_n = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let n = env_n("BENCH_N", 200);
    let rounds = env_n("BENCH_ROUNDS", 30);
    let n_held = env_n("BENCH_HELD", 100);
    let config = simulate(cli, &w.join("node"));
    let cfg = gpushare::config::Config::load_path(&config).unwrap();
    let state = cfg.runtime.state_dir.clone();
    let driver_files = gpushare::driver::Driver::load(&cfg, false).files.len();
    hold(&state, 0, n_held);

    let rootfs = w.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = std::env::var_os(PREBUILT).map_or_else(
        || PathBuf::from("/bin/busybox"),
        |d| Path::new(&d).join("busybox"),
    );
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).expect("needs busybox-static");
    for applet in ["sleep", "true"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let static_c = |src: &[u8], name: &str| build_c("cc", &["-static"], src, &w.join(name));
    let bench = Bench {
        stand_in: static_c(STAND_IN, "stand-in")
            .expect("a C compiler (cc -static) for the stand-in runtime"),
        w: w.clone(),
        rootfs: rootfs.clone(),
        n,
        rounds,
    };
    println!(
        "gpushare bench: medians of {n} runs ({rounds} rounds of real runc lives); state on {base}; \
         {} containers held; the host's driver user-space: {driver_files} files",
        held(&state)
    );

    // 1. The floor.
    println!();
    let floors: Vec<(&str, PathBuf)> = [
        ("static glibc true", static_c(TRUE, "true-glibc")),
        (
            "static musl true",
            build_c("musl-gcc", &["-static"], TRUE, &w.join("true-musl")),
        ),
        (
            "/bin/true (dynamic glibc)",
            Some(PathBuf::from("/bin/true")),
        ),
    ]
    .into_iter()
    .filter_map(|(l, p)| Some((l, p?)))
    .collect();
    let mut floor_samples: Vec<Vec<Sample>> = vec![Vec::new(); floors.len()];
    for _ in 0..n {
        for (k, (_, p)) in floors.iter().enumerate() {
            floor_samples[k].push(measure(&mut Command::new(p), None));
        }
    }
    for (k, (label, _)) in floors.iter().enumerate() {
        println!(
            "{:<40} wall {:>7.0} µs   cpu {:>7.0} µs",
            format!("start: {label}"),
            median(floor_samples[k].iter().map(|s| s.wall).collect()),
            median(floor_samples[k].iter().map(|s| s.cpu).collect()),
        );
    }

    // 2. gpushare's own cost, with the stand-in runtime.
    let stand_cfg = config_with(
        &config,
        &w,
        "stand-in.toml",
        "runtime",
        &format!("path = {:?}", bench.stand_in.display().to_string()),
    );
    let runc_root = w.join("runc");
    let stand = Runtime {
        bin: bench.stand_in.clone(),
        config: None,
        root: runc_root.clone(),
    };
    let shim_stand = Runtime {
        bin: runtime.into(),
        config: Some(stand_cfg.clone()),
        root: runc_root.clone(),
    };
    let gpu_sleep = bundle(
        &w.join("gpu-sleep"),
        &rootfs,
        "NVIDIA_VISIBLE_DEVICES=0",
        &["sleep", "1000"],
    );
    let plain_sleep = bundle(&w.join("plain-sleep"), &rootfs, "X=1", &["sleep", "1000"]);
    let gpu_true = bundle(
        &w.join("gpu-true"),
        &rootfs,
        "NVIDIA_VISIBLE_DEVICES=0",
        &["true"],
    );
    let plain_true = bundle(&w.join("plain-true"), &rootfs, "X=1", &["true"]);
    let own = bench.lives(
        &[
            (&stand, &gpu_sleep),
            (&shim_stand, &gpu_sleep),
            (&shim_stand, &plain_sleep),
        ],
        false,
        n,
        "own",
    );
    assert_eq!(held(&state), n_held, "every life released its GPU");
    println!();
    row("stand-in runtime alone", &own[0]);
    row("gpushare-runtime, GPU container", &own[1]);
    row("gpushare-runtime, non-GPU container", &own[2]);
    println!(
        "=> gpushare's own cost per container life (create + start + delete, {n_held} held; median of the rounds' differences): GPU wall {:.0} µs, cpu {:.0} µs; non-GPU wall {:.0} µs, cpu {:.0} µs",
        paired(&own[1], &own[0], Life::wall),
        paired(&own[1], &own[0], Life::cpu),
        paired(&own[2], &own[0], Life::wall),
        paired(&own[2], &own[0], Life::cpu),
    );
    // A GPU create as the ledger grows: each decision looks at every
    // hold's process.
    let mut per_held = Vec::new();
    for extra in [0usize, 900] {
        hold(&state, 1_000_000, extra);
        let count = held(&state);
        let mut creates = Vec::new();
        let mut base_creates = Vec::new();
        for i in 0..n {
            let id = format!("grow-{count}-{i}");
            let p = w.join("grow.pid");
            let p = p.to_str().unwrap();
            let b = gpu_sleep.to_str().unwrap();
            base_creates.push(measure(
                &mut stand.command(&["create", "--pid-file", p, "--bundle", b, &id]),
                None,
            ));
            creates.push(measure(
                &mut shim_stand.command(&["create", "--pid-file", p, "--bundle", b, &id]),
                None,
            ));
            measure(&mut shim_stand.command(&["delete", &id]), None);
        }
        let d = |f: fn(&Sample) -> f64| {
            median(
                creates
                    .iter()
                    .zip(&base_creates)
                    .map(|(a, b)| f(a) - f(b))
                    .collect(),
            )
        };
        per_held.push((count, d(|s| s.wall), d(|s| s.cpu)));
        drop_holds(&state, 1_000_000, extra);
    }
    let peak_rss = static_c(PEAK_RSS, "peak-rss").map(|helper| {
        (0..20)
            .map(|i| {
                let id = format!("rss-{i}");
                let out = Command::new(&helper)
                    .arg(runtime)
                    .args(["--root", runc_root.to_str().unwrap(), "create", "--bundle"])
                    .arg(&gpu_sleep)
                    .arg(&id)
                    .env("GPUSHARE_CONFIG", &stand_cfg)
                    .stderr(Stdio::null())
                    .output()
                    .unwrap();
                measure(&mut shim_stand.command(&["delete", &id]), None);
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<i64>()
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    });
    println!(
        "=> a GPU create (shim over the stand-in's own create): {}; peak RSS of a GPU create {}",
        per_held
            .iter()
            .map(|(c, wall, cpu)| format!("{c} held: wall {wall:.0} µs, cpu {cpu:.0} µs"))
            .collect::<Vec<_>>()
            .join("; "),
        peak_rss.map_or("not measured (no C compiler)".into(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        ))
    );

    // 3. Real runc: a long-running and a short-lived container.
    let runc = Runtime {
        bin: "runc".into(),
        config: None,
        root: runc_root.clone(),
    };
    let shim = Runtime {
        bin: runtime.into(),
        config: Some(config.clone()),
        root: runc_root.clone(),
    };
    // The spec gpushare writes, for runc to run as it is: made by a
    // create through the shim (over the stand-in), then released.
    let written = |b: &Path, name: &str| -> PathBuf {
        let made = w.join(format!("made-{name}"));
        std::fs::create_dir_all(&made).unwrap();
        std::fs::copy(b.join("config.json"), made.join("config.json")).unwrap();
        let p = w.join("made.pid");
        measure(
            &mut shim_stand.command(&[
                "create",
                "--pid-file",
                p.to_str().unwrap(),
                "--bundle",
                made.to_str().unwrap(),
                name,
            ]),
            None,
        );
        measure(&mut shim_stand.command(&["delete", name]), None);
        made
    };
    let gpu_sleep_spec = written(&gpu_sleep, "spec-sleep");
    let gpu_true_spec = written(&gpu_true, "spec-true");
    let parent = Runtime {
        bin: build_c("musl-gcc", &["-static"], PARENT, &w.join("parent"))
            .or_else(|| static_c(PARENT, "parent"))
            .expect("a C compiler for the parent"),
        config: None,
        root: runc_root.clone(),
    };
    println!();
    let mut shares = Vec::new();
    for (short, label, gpu_b, gpu_spec, plain_b) in [
        (
            false,
            "long-running (create, start, delete --force of a running sleep)",
            &gpu_sleep,
            &gpu_sleep_spec,
            &plain_sleep,
        ),
        (
            true,
            "short-lived (create, start, delete of an exited true)",
            &gpu_true,
            &gpu_true_spec,
            &plain_true,
        ),
    ] {
        let lives = bench.lives(
            &[
                (&runc, plain_b),
                (&runc, gpu_spec),
                (&parent, gpu_spec),
                (&shim, gpu_b),
                (&shim, plain_b),
            ],
            short,
            bench.rounds,
            if short { "short" } else { "long" },
        );
        assert_eq!(held(&state), n_held, "every life released its GPU");
        println!("{label}:");
        row("  runc, plain spec", &lives[0]);
        row("  runc, the GPU spec gpushare writes", &lives[1]);
        row("  runc, that spec, run by a parent", &lives[2]);
        row("  gpushare-runtime, GPU container", &lives[3]);
        row("  gpushare-runtime, non-GPU container", &lives[4]);
        let base_wall = median(lives[0].iter().map(Life::wall).collect());
        let base_cpu = median(lives[0].iter().map(Life::cpu).collect());
        let d = |a: usize, b: usize| {
            (
                paired(&lives[a], &lives[b], Life::wall),
                paired(&lives[a], &lives[b], Life::cpu),
            )
        };
        shares.push((
            label,
            base_wall,
            base_cpu,
            [d(3, 0), d(1, 0), d(2, 1), d(3, 2), d(4, 0)],
        ));
    }
    println!();
    println!("=> what gpushare adds beside plain runc, per life (median of the rounds' differences), as a share of runc's own life:");
    for (label, base_wall, base_cpu, [gpu, runc_work, as_child, own_gpu, non_gpu]) in &shares {
        println!(
            "  {label}: runc's life {:.1} ms wall, {:.1} ms cpu",
            base_wall / 1000.0,
            base_cpu / 1000.0
        );
        for (what, (dw, dc)) in [
            ("GPU container, in all", gpu),
            ("  of which runc's work for gpushare's edits", runc_work),
            ("  of which runc run as a child", as_child),
            ("  of which gpushare's own", own_gpu),
            ("non-GPU container", non_gpu),
        ] {
            println!(
                "    {what:<46} wall {}   cpu {}",
                share(*dw, *base_wall),
                share(*dc, *base_cpu)
            );
        }
    }

    // 6. The NRI plugin: no process per container, one round trip per
    // event of a GPU container's life.
    {
        use gpushare::nri::api::Event;
        let nri_dir = w.join("nri");
        std::fs::create_dir_all(&nri_dir).unwrap();
        let runtime_side = nri_runtime::NriRuntime::start(&nri_dir);
        let mut plugin = Command::new(cli)
            .env("GPUSHARE_CONFIG", &config)
            .args(["nri", "--socket"])
            .arg(&runtime_side.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let (conn, _) = runtime_side.accept();
        runtime_side.configure(&conn);
        runtime_side.synchronize(&conn, vec![]);
        let cpu_of = |pid: u32| -> f64 {
            // utime + stime, in clock ticks (fields 14 and 15 of stat).
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split(' ').collect();
            let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
            ticks * 1e6
                / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
                    .unwrap()
                    .unwrap() as f64
        };
        let pod = nri_runtime::pod("bench-pod", "");
        let me = std::process::id();
        let lives = n.max(200);
        let cpu_before = cpu_of(plugin.id());
        let mut walls = Vec::new();
        let mut creates = Vec::new();
        for i in 0..lives {
            let c =
                nri_runtime::container(&format!("nri-{i}"), &["NVIDIA_VISIBLE_DEVICES=all"], me);
            let t = Instant::now();
            let r = runtime_side.create(&conn, &pod, &c).expect("placed");
            creates.push(t.elapsed().as_secs_f64() * 1e6);
            assert!(r.adjust.is_some());
            runtime_side.event(&conn, Event::START_CONTAINER, &pod, &c);
            runtime_side.event(&conn, Event::REMOVE_CONTAINER, &pod, &c);
            walls.push(t.elapsed().as_secs_f64() * 1e6);
        }
        // The last removal's ledger write follows its answer.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while held(&state) != n_held && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let cpu_per_life = (cpu_of(plugin.id()) - cpu_before) / lives as f64;
        assert_eq!(held(&state), n_held, "every NRI life released its GPU");
        // A round trip's own cost: an event the plugin does nothing for
        // (a non-GPU container's start).
        let plain = nri_runtime::container("nri-plain", &[], me);
        let floor = median(
            (0..lives)
                .map(|_| {
                    let t = Instant::now();
                    runtime_side.event(&conn, Event::START_CONTAINER, &pod, &plain);
                    t.elapsed().as_secs_f64() * 1e6
                })
                .collect(),
        );
        let (label, base_wall, base_cpu, _) = &shares[0];
        let life = median(walls);
        println!();
        println!("the NRI plugin ({lives} GPU lives: CreateContainer, start, removal, as round trips to the resident plugin):");
        println!(
            "  per life: wall {life:.0} µs (CreateContainer {:.0} µs), the plugin's cpu {cpu_per_life:.0} µs; a round trip it does nothing for: {floor:.0} µs",
            median(creates)
        );
        println!(
            "  as a share of runc's {label}: wall {}   cpu {}",
            share(life, *base_wall),
            share(cpu_per_life, *base_cpu)
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(plugin.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = plugin.wait();
    }

    // 4. 200 creates at once.
    let many = 200;
    let many_b = bundle(
        &w.join("many"),
        &rootfs,
        "NVIDIA_VISIBLE_DEVICES=all",
        &["true"],
    );
    let started: Vec<(u32, Instant)> = (0..many)
        .map(|i| {
            let mut c = shim_stand.command(&[
                "create",
                "--bundle",
                many_b.to_str().unwrap(),
                &format!("many-{i}"),
            ]);
            c.stdout(Stdio::null())
                .stderr(Stdio::null())
                .stdin(Stdio::null());
            let t = Instant::now();
            (c.spawn().unwrap().id(), t)
        })
        .collect();
    let mut walls = Vec::new();
    for _ in 0..many {
        let mut status = 0;
        // SAFETY: reaps any of our children; a valid pointer to a local.
        let pid = unsafe { libc::waitpid(-1, &mut status, 0) };
        let Some(t) = started.iter().find(|(p, _)| *p as i32 == pid).map(|s| s.1) else {
            continue;
        };
        walls.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    let (p50, p99) = (median(walls.clone()), percentile(walls, 0.99));
    println!();
    println!(
        "200 GPU creates at once (shim + stand-in, {} held before): p50 {p50:.0} µs, p99 {p99:.0} µs, p99/p50 {:.1}",
        n_held,
        p99 / p50
    );
    for i in 0..many {
        measure(
            &mut shim_stand.command(&["delete", &format!("many-{i}")]),
            None,
        );
    }

    // 5. The hook used alone, as runc runs it from a hooks.d-style spec.
    let samples = w.join("hook-alone.txt");
    let me = std::env::current_exe().unwrap();
    let alone = |name: &str, env: &str| -> PathBuf {
        let b = bundle(&w.join(name), &rootfs, env, &["true"]);
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        let hook = |stage: &str| {
            json!([{"path": me, "args": ["gpushare-hook", stage], "env": [
                format!("GPUSHARE_CONFIG={}", config.display()),
                format!("GPUSHARE_BENCH_WRAP={hook_bin}"),
                format!("GPUSHARE_BENCH_OUT={}", samples.display()),
            ]}])
        };
        spec["hooks"] = json!({"prestart": hook("prestart"), "poststop": hook("poststop")});
        std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
        b
    };
    let gpu_alone = alone("gpu-alone", "NVIDIA_VISIBLE_DEVICES=all");
    let plain_alone = alone("plain-alone", "X=1");
    for i in 0..bench.rounds {
        for (b, kind) in [(&gpu_alone, "gpu"), (&plain_alone, "plain")] {
            let id = format!("bench-alone-{kind}-{i}");
            let status = runc
                .command(&["run", "--bundle", b.to_str().unwrap(), &id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{id}");
        }
    }
    let text = std::fs::read_to_string(&samples).unwrap();
    let rows: Vec<(&str, Sample)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (
                f[0],
                Sample {
                    wall: f[1].parse().unwrap(),
                    cpu: f[2].parse().unwrap(),
                    rss_kib: f[3].parse().unwrap(),
                },
            )
        })
        .collect();
    // The rows alternate GPU and plain runs, each prestart then poststop.
    let pick = |stage: &str, gpu: bool| -> Vec<Sample> {
        rows.iter()
            .filter(|(s, _)| *s == stage)
            .enumerate()
            .filter(|(k, _)| (k % 2 == 0) == gpu)
            .map(|(_, (_, s))| *s)
            .collect()
    };
    println!();
    for (label, stage, gpu) in [
        ("hook alone, prestart, GPU container", "prestart", true),
        ("hook alone, prestart, non-GPU container", "prestart", false),
        ("hook alone, poststop, GPU container", "poststop", true),
    ] {
        let s = pick(stage, gpu);
        println!(
            "{label:<40} wall {:>7.0} µs   cpu {:>7.0} µs   peak rss {:>5.1} MiB",
            median(s.iter().map(|x| x.wall).collect()),
            median(s.iter().map(|x| x.cpu).collect()),
            s.iter().map(|x| x.rss_kib).max().unwrap_or(0) as f64 / 1024.0
        );
    }

    // 7. Another build beside this one.
    if let Some(dir) = std::env::var_os("GPUSHARE_BENCH_BASELINE").filter(|d| !d.is_empty()) {
        baseline(&bench, Path::new(&dir), runtime, cli);
    }
}

/// This build and the one in `dir`, each on a node of its own with
/// nothing held: lives with the stand-in, and short lives with runc.
fn baseline(bench: &Bench, dir: &Path, runtime: &str, cli: &str) {
    let w = &bench.w;
    let old_runtime = dir.join("gpushare-runtime");
    assert!(
        old_runtime.is_file(),
        "{} has no gpushare-runtime",
        dir.display()
    );
    let mut rows: Vec<(String, Runtime, Runtime)> = Vec::new();
    for (name, bin, cli) in [
        ("this build", PathBuf::from(runtime), PathBuf::from(cli)),
        ("baseline", old_runtime, dir.join("gpushare")),
    ] {
        let node = w.join(format!("node-{}", name.replace(' ', "-")));
        let config = simulate(cli.to_str().unwrap(), &node);
        let stand_cfg = config_with(
            &config,
            w,
            &format!("stand-in-{}.toml", name.replace(' ', "-")),
            "runtime",
            &format!("path = {:?}", bench.stand_in.display().to_string()),
        );
        let root = w.join(format!("runc-{}", name.replace(' ', "-")));
        rows.push((
            name.to_owned(),
            Runtime {
                bin: bin.clone(),
                config: Some(stand_cfg),
                root: root.clone(),
            },
            Runtime {
                bin,
                config: Some(config),
                root,
            },
        ));
    }
    let stand = Runtime {
        bin: bench.stand_in.clone(),
        config: None,
        root: w.join("runc-stand"),
    };
    let runc = Runtime {
        bin: "runc".into(),
        config: None,
        root: w.join("runc-base"),
    };
    let gpu = bundle(
        &w.join("base-gpu"),
        &bench.rootfs,
        "NVIDIA_VISIBLE_DEVICES=0",
        &["true"],
    );
    let plain = bundle(&w.join("base-plain"), &bench.rootfs, "X=1", &["true"]);
    println!();
    println!(
        "this build beside {} (each on a node of its own, nothing held):",
        dir.display()
    );
    let own = bench.lives(
        &[
            (&stand, &gpu),
            (&rows[0].1, &gpu),
            (&rows[0].1, &plain),
            (&rows[1].1, &gpu),
            (&rows[1].1, &plain),
        ],
        true,
        bench.n,
        "base-own",
    );
    row("  stand-in runtime alone", &own[0]);
    for (k, (name, _, _)) in rows.iter().enumerate() {
        row(&format!("  {name}, GPU container"), &own[1 + 2 * k]);
        row(&format!("  {name}, non-GPU container"), &own[2 + 2 * k]);
        println!(
            "  => {name}'s own cost per life: GPU wall {:.0} µs, cpu {:.0} µs; non-GPU wall {:.0} µs, cpu {:.0} µs",
            paired(&own[1 + 2 * k], &own[0], Life::wall),
            paired(&own[1 + 2 * k], &own[0], Life::cpu),
            paired(&own[2 + 2 * k], &own[0], Life::wall),
            paired(&own[2 + 2 * k], &own[0], Life::cpu),
        );
    }
    let lives = bench.lives(
        &[
            (&runc, &plain),
            (&rows[0].2, &gpu),
            (&rows[0].2, &plain),
            (&rows[1].2, &gpu),
            (&rows[1].2, &plain),
        ],
        true,
        bench.rounds,
        "base-short",
    );
    row("  runc, plain spec (short-lived)", &lives[0]);
    let base_wall = median(lives[0].iter().map(Life::wall).collect());
    let base_cpu = median(lives[0].iter().map(Life::cpu).collect());
    for (k, (name, _, _)) in rows.iter().enumerate() {
        row(&format!("  {name}, GPU container"), &lives[1 + 2 * k]);
        row(&format!("  {name}, non-GPU container"), &lives[2 + 2 * k]);
        println!(
            "  => {name} beside plain runc, short-lived: GPU wall {} cpu {}; non-GPU wall {} cpu {}",
            share(paired(&lives[1 + 2 * k], &lives[0], Life::wall), base_wall),
            share(paired(&lives[1 + 2 * k], &lives[0], Life::cpu), base_cpu),
            share(paired(&lives[2 + 2 * k], &lives[0], Life::wall), base_wall),
            share(paired(&lives[2 + 2 * k], &lives[0], Life::cpu), base_cpu),
        );
    }
}
