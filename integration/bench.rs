//! `cargo bench --bench shim` (root): what gpushare costs a container.
//! Prints figures; asserts nothing about time. State lives on a tmpfs
//! (/dev/shm) as it does on a node (/run), and the ledger holds 1000
//! containers throughout, as a busy node's would.
//!
//! 1. The floor: what merely starting a process costs on this machine (a
//!    static musl `true`, a static glibc `true`, the system's dynamic
//!    `/bin/true`), against which every runtime call is measured.
//! 2. The shim alone: `gpushare-runtime create` with `/bin/true` as the
//!    low-level runtime, against `/bin/true` run directly: a GPU container
//!    with and without the driver's libraries, a non-GPU one. The
//!    difference is all the shim adds. Its peak RSS.
//! 3. A container's whole life, every call through the runtime as
//!    containerd and Docker make them (create, start, delete): gpushare's
//!    own cost, with a stand-in runtime (a static C program that answers
//!    as runc does: it writes the pid file it is given) against the same
//!    calls to the stand-in directly; then the same lives with the real
//!    runc, against runc alone (whose own spread is larger than gpushare's
//!    cost), for scale.
//! 4. 200 creates at once (shim + `/bin/true`): the median and the 99th
//!    percentile, to show there is no lock convoy.
//! 5. The hook used alone (podman, CRI-O), timed inside runc.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use gpushare::ledger::{Entry, Ledger};
use serde_json::json;

#[path = "../tests/common/bins.rs"]
mod bins;

/// Wall time (µs), CPU time (µs) and peak RSS (KiB) of one child.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_kib: i64,
}

/// Runs `cmd` to completion, measuring it alone with wait4 (its CPU time
/// includes the children it waited for).
#[allow(clippy::zombie_processes)] // wait4 reaps the child.
fn measure(cmd: &mut Command, stdin: Option<&[u8]>) -> Sample {
    use std::io::Write;
    // Every call runs with the few variables an engine gives a runtime
    // (containerd's shim passes its own small environment), not the
    // dozens cargo sets: each exec copies them, and a GPU create execs
    // three times where the runtime alone execs once.
    let set: Vec<(std::ffi::OsString, std::ffi::OsString)> = cmd
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(set);
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
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    Sample {
        wall,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
        rss_kib: ru.ru_maxrss,
    }
}

fn wait4(pid: i32) -> (i32, libc::rusage) {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers to locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4");
    (status, ru)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The median of each round's difference between two lives' totals (of
/// `f`). Each round measured both back to back, so the difference cancels
/// the VM's drift (its speed moves by a fifth over minutes here).
fn paired_median(lives: &[[Sample; 3]], base: &[[Sample; 3]], f: fn(&Sample) -> f64) -> f64 {
    median(
        lives
            .iter()
            .zip(base)
            .map(|(a, b)| a.iter().map(f).sum::<f64>() - b.iter().map(f).sum::<f64>())
            .collect(),
    )
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p).ceil() as usize).clamp(1, v.len()) - 1]
}

struct Summary {
    wall: f64,
    cpu: f64,
    rss_kib: i64,
}

fn summarise(s: &[Sample]) -> Summary {
    Summary {
        wall: median(s.iter().map(|x| x.wall).collect()),
        cpu: median(s.iter().map(|x| x.cpu).collect()),
        rss_kib: s.iter().map(|x| x.rss_kib).max().unwrap(),
    }
}

fn line(label: &str, s: &Summary) {
    println!(
        "{label:<52} wall {:>7.0} µs   cpu {:>7.0} µs   peak rss {:>5.1} MiB",
        s.wall,
        s.cpu,
        s.rss_kib as f64 / 1024.0
    );
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

fn bundle(dir: &Path, rootfs: &Path, env: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let spec = json!({
        "ociVersion": "1.0.2-dev",
        "process": {"terminal": false, "user": {"uid": 0, "gid": 0}, "cwd": "/",
            "args": ["sleep", "1000"], "env": ["PATH=/bin", env]},
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

/// Builds a `true` from C with `compiler` and `flags` into `out`, if the
/// compiler is there.
fn build_true(compiler: &str, flags: &[&str], out: &Path) -> Option<PathBuf> {
    build_c(compiler, flags, b"int main(void) { return 0; }\n", out)
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
    let musl_or_cc = |src: &[u8], name: &str| {
        build_c("musl-gcc", &["-static"], src, &dir.join(name))
            .or_else(|| build_c("cc", &["-static"], src, &dir.join(name)))
            .unwrap_or_else(|| panic!("a C compiler (musl-gcc or cc) for {name}"))
    };
    musl_or_cc(b"int main(void) { return 0; }\n", "true-musl");
    musl_or_cc(STAND_IN, "stand-in");
    musl_or_cc(PEAK_RSS, "peak-rss");
    build_true("cc", &["-static"], &dir.join("true-glibc")).expect("cc -static for true-glibc");
    std::fs::copy("/bin/busybox", dir.join("busybox")).expect("needs busybox-static");
    println!("staged the bench's helpers in {}", dir.display());
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
    assert!(
        nix::unistd::geteuid().is_root(),
        "the bench makes device nodes and runs runc: run it as root"
    );
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
    let w = work.path();
    let config = simulate(cli, &w.join("node"));
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let cycles = n.min(30);
    let cfg = gpushare::config::Config::load_path(&config).unwrap();
    let driver_files = gpushare::driver::Driver::load(&cfg, false).files.len();

    // 1000 containers held, on pid 1 (alive), both GPUs.
    let held = 1000;
    let l = Ledger::new(&cfg.runtime.state_dir);
    let mut locked = l.lock().unwrap();
    for i in 0..held {
        locked.reserve(Entry {
            id: format!("{:064x}", i),
            gpus: vec![gpushare::simulate::simulated_gpus(2, "Tesla T4")[i % 2]
                .uuid
                .clone()],
            thread_percentage: Some(5.0),
            pinned_mem_limit: Some("0=1G".into()),
            pid: Some(1),
            pid_start: gpushare::sys::process_start_time(1),
            names: [("pod".to_owned(), format!("module-{i}"))].into(),
            env: vec![format!("NVIDIA_VISIBLE_DEVICES=GPU-{i}")],
            created: gpushare::sys::now(),
        });
    }
    locked.commit().unwrap();
    println!(
        "gpushare bench: medians of {n} runs ({cycles} for runc lives); state on {base}; \
         {} containers held; the host's driver user-space: {driver_files} files",
        l.snapshot().unwrap().len()
    );

    // 1. The floor.
    println!();
    let floors: Vec<(String, PathBuf)> = [
        (
            "static musl true",
            build_true("musl-gcc", &["-static"], &w.join("true-musl")),
        ),
        (
            "static glibc true",
            build_true("cc", &["-static"], &w.join("true-glibc")),
        ),
        (
            "/bin/true (dynamic glibc)",
            Some(PathBuf::from("/bin/true")),
        ),
    ]
    .into_iter()
    .filter_map(|(l, p)| Some((l.to_owned(), p?)))
    .collect();
    let mut floor_samples: Vec<Vec<Sample>> = vec![Vec::new(); floors.len()];
    for _ in 0..n {
        for (k, (_, p)) in floors.iter().enumerate() {
            floor_samples[k].push(measure(&mut Command::new(p), None));
        }
    }
    for (k, (label, _)) in floors.iter().enumerate() {
        let s = summarise(&floor_samples[k]);
        println!(
            "{:<52} wall {:>7.0} µs   cpu {:>7.0} µs",
            format!("start: {label}"),
            s.wall,
            s.cpu
        );
    }

    // 2. The shim alone, running /bin/true as the runtime.
    let true_cfg = config_with(&config, w, "true.toml", "runtime", "path = \"/bin/true\"");
    let true_nolib = config_with(
        &true_cfg,
        w,
        "true-nolib.toml",
        "driver",
        "inject = \"none\"",
    );
    let rootfs = w.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox = std::env::var_os(PREBUILT).map_or_else(
        || PathBuf::from("/bin/busybox"),
        |d| Path::new(&d).join("busybox"),
    );
    std::fs::copy(&busybox, rootfs.join("bin/busybox")).expect("needs busybox-static");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    let gpu_all = bundle(&w.join("gpu-all"), &rootfs, "NVIDIA_VISIBLE_DEVICES=all");
    let plain = bundle(&w.join("plain"), &rootfs, "X=1");
    let shim = |b: &Path, cfg: &Path, args: &[&str]| {
        let mut c = Command::new(runtime);
        c.env("GPUSHARE_CONFIG", cfg)
            .arg("--root")
            .arg(w.join("runc"));
        if args.first() == Some(&"create") {
            c.args(["create", "--bundle"]).arg(b).args(&args[1..]);
        } else {
            c.args(args);
        }
        c
    };
    let (mut direct, mut gpu, mut gpu_nolib, mut non_gpu) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        direct.push(measure(
            Command::new("/bin/true").args(["create", "--bundle", "x", "id"]),
            None,
        ));
        gpu.push(measure(
            &mut shim(&gpu_all, &true_cfg, &["create", "bench-gpu"]),
            None,
        ));
        gpu_nolib.push(measure(
            &mut shim(&gpu_all, &true_nolib, &["create", "bench-gpu-nolib"]),
            None,
        ));
        non_gpu.push(measure(
            &mut shim(&plain, &true_cfg, &["create", "bench-plain"]),
            None,
        ));
    }
    let (d, g, gn, p) = (
        summarise(&direct),
        summarise(&gpu),
        summarise(&gpu_nolib),
        summarise(&non_gpu),
    );
    // Peak RSS of a GPU create, as its own process tree had it.
    let peak_rss = build_c("musl-gcc", &["-static"], PEAK_RSS, &w.join("peak-rss"))
        .or_else(|| build_c("cc", &["-static"], PEAK_RSS, &w.join("peak-rss")))
        .map(|helper| {
            (0..20)
                .map(|_| {
                    let out = Command::new(&helper)
                        .arg(runtime)
                        .args([
                            "--root",
                            w.join("runc").to_str().unwrap(),
                            "create",
                            "--bundle",
                        ])
                        .arg(&gpu_all)
                        .arg("bench-rss")
                        .env("GPUSHARE_CONFIG", &true_cfg)
                        .stderr(Stdio::null())
                        .output()
                        .unwrap();
                    String::from_utf8_lossy(&out.stdout)
                        .trim()
                        .parse::<i64>()
                        .unwrap_or(0)
                })
                .max()
                .unwrap_or(0)
        });
    println!();
    let timed = |label: &str, s: &Summary| {
        println!(
            "{label:<52} wall {:>7.0} µs   cpu {:>7.0} µs",
            s.wall, s.cpu
        )
    };
    timed("/bin/true alone", &d);
    timed("shim + /bin/true, GPU create (all)", &g);
    timed("shim + /bin/true, GPU create (all), no libraries", &gn);
    timed("shim + /bin/true, non-GPU create", &p);
    println!(
        "=> the shim adds per GPU create: wall {:.0} µs, cpu {:.0} µs (the driver's libraries: wall {:.0} µs, cpu {:.0} µs); per non-GPU create: wall {:.0} µs, cpu {:.0} µs; peak RSS of a GPU create {}",
        g.wall - d.wall,
        g.cpu - d.cpu,
        g.wall - gn.wall,
        g.cpu - gn.cpu,
        p.wall - d.wall,
        p.cpu - d.cpu,
        peak_rss.map_or("not measured (no C compiler)".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
    );

    // 3. gpushare's own cost per life, with the stand-in runtime.
    let stand_in = build_c("musl-gcc", &["-static"], STAND_IN, &w.join("stand-in"))
        .or_else(|| build_c("cc", &["-static"], STAND_IN, &w.join("stand-in")))
        .expect("a C compiler (musl-gcc or cc) for the stand-in runtime");
    let stand_cfg = config_with(
        &config,
        w,
        "stand-in.toml",
        "runtime",
        &format!("path = {:?}", stand_in.display().to_string()),
    );
    let gpu_life = bundle(&w.join("gpu-life"), &rootfs, "NVIDIA_VISIBLE_DEVICES=0");
    let calls = |direct: bool, b: &Path, id: &str| -> [Sample; 3] {
        let mk = |args: &[&str]| {
            let mut c = if direct {
                let mut c = Command::new(&stand_in);
                c.arg("--root").arg(w.join("runc"));
                c
            } else {
                let mut c = Command::new(runtime);
                c.env("GPUSHARE_CONFIG", &stand_cfg)
                    .arg("--root")
                    .arg(w.join("runc"));
                c
            };
            if args[0] == "create" {
                c.args(["create", "--pid-file"])
                    .arg(w.join(format!("{id}.pid")))
                    .arg("--bundle")
                    .arg(b)
                    .arg(id);
            } else {
                c.args(args);
            }
            c
        };
        [
            measure(&mut mk(&["create"]), None),
            measure(&mut mk(&["start", id]), None),
            measure(&mut mk(&["delete", "--force", id]), None),
        ]
    };
    let held_now = l.snapshot().unwrap().len();
    let mut own: [Vec<[Sample; 3]>; 3] = Default::default();
    for i in 0..n {
        own[0].push(calls(true, &gpu_life, &format!("stand-{i}")));
        own[1].push(calls(false, &gpu_life, &format!("own-gpu-{i}")));
        own[2].push(calls(false, &plain, &format!("own-plain-{i}")));
    }
    assert_eq!(
        l.snapshot().unwrap().len(),
        held_now,
        "every life released its GPU"
    );
    println!();
    for (k, label) in [
        "stand-in runtime alone",
        "gpushare-runtime, GPU container",
        "gpushare-runtime, non-GPU container",
    ]
    .iter()
    .enumerate()
    {
        let per_call: Vec<Summary> = (0..3)
            .map(|c| summarise(&own[k].iter().map(|l| l[c]).collect::<Vec<_>>()))
            .collect();
        let total =
            |f: fn(&Sample) -> f64| median(own[k].iter().map(|l| l.iter().map(f).sum()).collect());
        let (tw, tc) = (total(|s| s.wall), total(|s| s.cpu));
        println!(
            "{label:<36} create {:>5.0}  start {:>4.0}  delete {:>4.0}  life: wall {:>5.0} µs  cpu {:>5.0} µs",
            per_call[0].wall, per_call[1].wall, per_call[2].wall, tw, tc
        );
    }
    let paired = |k: usize, f: fn(&Sample) -> f64| paired_median(&own[k], &own[0], f);
    println!(
        "=> gpushare's own cost per container life (create + start + delete, {} held; median of the rounds' differences): GPU wall {:.0} µs, cpu {:.0} µs; non-GPU wall {:.0} µs, cpu {:.0} µs",
        held_now,
        paired(1, |s| s.wall),
        paired(1, |s| s.cpu),
        paired(2, |s| s.wall),
        paired(2, |s| s.cpu)
    );

    // The same lives with the real runc, for scale. The GPU life is
    // compared with runc running the very spec gpushare writes (its devices
    // and driver mounts are what any GPU runtime gives a container).
    let runc_root = w.join("runc");
    let gpu0 = bundle(&w.join("gpu0"), &rootfs, "NVIDIA_VISIBLE_DEVICES=0");
    let pristine = bundle(&w.join("pristine"), &rootfs, "NVIDIA_VISIBLE_DEVICES=0");
    let runc = |args: &[&str], b: &Path| {
        let mut c = Command::new("runc");
        c.arg("--root").arg(&runc_root);
        if args[0] == "create" {
            c.args(["create", "--bundle"]).arg(b).args(&args[1..]);
        } else {
            c.args(args);
        }
        c
    };
    let via_shim = |args: &[&str], b: &Path| shim(b, &config, args);
    let gpu_spec = w.join("gpu-spec");
    {
        let made = bundle(&w.join("spec-maker"), &rootfs, "NVIDIA_VISIBLE_DEVICES=0");
        assert!(measure(&mut via_shim(&["create", "spec-maker"], &made), None).wall > 0.0);
        assert!(
            measure(
                &mut via_shim(&["delete", "--force", "spec-maker"], &made),
                None
            )
            .wall
                > 0.0
        );
        std::fs::create_dir_all(&gpu_spec).unwrap();
        std::fs::copy(made.join("config.json"), gpu_spec.join("config.json")).unwrap();
    }
    // One life: create, start, delete --force; each call measured.
    type Maker<'a> = &'a dyn Fn(&[&str], &Path) -> Command;
    let life = |make: Maker, b: &Path, id: &str| -> [Sample; 3] {
        [
            measure(&mut make(&["create", id], b), None),
            measure(&mut make(&["start", id], b), None),
            measure(&mut make(&["delete", "--force", id], b), None),
        ]
    };
    let before = l.snapshot().unwrap().len();
    let mut lives: [Vec<[Sample; 3]>; 4] = Default::default();
    for i in 0..cycles {
        lives[0].push(life(&runc, &pristine, &format!("runc-{i}")));
        lives[1].push(life(&runc, &gpu_spec, &format!("runc-gpu-{i}")));
        lives[2].push(life(&via_shim, &gpu0, &format!("gs-gpu-{i}")));
        lives[3].push(life(&via_shim, &plain, &format!("gs-plain-{i}")));
    }
    assert_eq!(
        l.snapshot().unwrap().len(),
        before,
        "every life released its GPU"
    );
    println!();
    let labels = [
        "runc, plain spec",
        "runc, the GPU spec gpushare writes",
        "gpushare-runtime, GPU container",
        "gpushare-runtime, non-GPU container",
    ];
    for (k, label) in labels.iter().enumerate() {
        let per_call: Vec<Summary> = (0..3)
            .map(|c| summarise(&lives[k].iter().map(|l| l[c]).collect::<Vec<_>>()))
            .collect();
        let total = |f: fn(&Sample) -> f64| {
            median(lives[k].iter().map(|l| l.iter().map(f).sum()).collect())
        };
        let (tw, tc) = (total(|s| s.wall), total(|s| s.cpu));
        println!(
            "{label:<36} create {:>6.0}  start {:>5.0}  delete {:>6.0}  life: wall {:>6.0} µs  cpu {:>6.0} µs",
            per_call[0].wall, per_call[1].wall, per_call[2].wall, tw, tc
        );
    }
    let paired =
        |k: usize, base: usize, f: fn(&Sample) -> f64| paired_median(&lives[k], &lives[base], f);
    println!(
        "=> gpushare adds per container life (create + start + delete; median of the rounds' differences): GPU wall {:.0} µs, cpu {:.0} µs; non-GPU wall {:.0} µs, cpu {:.0} µs",
        paired(2, 1, |s| s.wall),
        paired(2, 1, |s| s.cpu),
        paired(3, 0, |s| s.wall),
        paired(3, 0, |s| s.cpu)
    );

    // 4. 200 creates at once.
    let many = 200;
    let bundles: Vec<PathBuf> = (0..many)
        .map(|i| {
            bundle(
                &w.join(format!("many-{i}")),
                &rootfs,
                "NVIDIA_VISIBLE_DEVICES=all",
            )
        })
        .collect();
    let started: Vec<(u32, Instant)> = bundles
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut c = shim(b, &true_cfg, &["create", &format!("many-{i}")]);
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
        let t = started.iter().find(|(p, _)| *p as i32 == pid).unwrap().1;
        walls.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
    let (p50, p99) = (median(walls.clone()), percentile(walls, 0.99));
    println!();
    println!(
        "200 GPU creates at once (shim + /bin/true, {} held): p50 {p50:.0} µs, p99 {p99:.0} µs, p99/p50 {:.1}",
        held,
        p99 / p50
    );

    // 5. The hook used alone, as runc runs it from a hooks.d-style spec:
    // decide, ledger, namespace entry, mounts, cgroup. This program wraps
    // the hook to time it inside runc.
    let samples = w.join("hook-alone.txt");
    let me = std::env::current_exe().unwrap();
    let alone = |name: &str, env: &str| -> PathBuf {
        let b = bundle(&w.join(name), &rootfs, env);
        let mut spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
        spec["process"]["args"] = json!(["sleep", "0"]);
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
    for i in 0..cycles {
        for (b, kind) in [(&gpu_alone, "gpu"), (&plain_alone, "plain")] {
            let id = format!("bench-alone-{kind}-{i}");
            let status = Command::new("runc")
                .arg("--root")
                .arg(&runc_root)
                .args(["run", "--bundle"])
                .arg(b)
                .arg(&id)
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
    // The file's rows alternate GPU and plain runs, each prestart then poststop.
    let pick = |stage: &str, gpu: bool| -> Vec<Sample> {
        rows.iter()
            .filter(|(s, _)| *s == stage)
            .enumerate()
            .filter(|(k, _)| (k % 2 == 0) == gpu)
            .map(|(_, (_, s))| *s)
            .collect()
    };
    println!();
    line(
        "hook alone, prestart, GPU container",
        &summarise(&pick("prestart", true)),
    );
    line(
        "hook alone, prestart, non-GPU container",
        &summarise(&pick("prestart", false)),
    );
    line(
        "hook alone, poststop, GPU container",
        &summarise(&pick("poststop", true)),
    );
}
