//! `cargo bench --bench shim` (root): what gpushare costs a container
//! start. Prints figures; asserts nothing about time.
//!
//! 1. The shim alone: `gpushare-runtime create` of a GPU bundle with
//!    `/bin/true` as the low-level runtime, against `/bin/true` run directly.
//!    The difference is all the shim adds: config, inventory, ledger lock,
//!    decision, driver cache, spec rewrite, exec. The GPU create is timed
//!    with the driver's libraries injected and without (`driver.inject =
//!    "none"`), so the injection's own cost shows.
//! 2. A whole create + delete with the real runc, through the shim (with
//!    and without the driver's libraries, which runc then mounts) and
//!    straight, interleaved so all see the same machine.
//! 3. The hook binding a pid in a ledger of 1000 entries, and the hook for a
//!    container the shim did not place.
//!
//! State lives on a tmpfs (/dev/shm) as it does on a node (/run).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use gpushare::ledger::{self, Entry, Ledger};
use serde_json::json;

/// The binaries measured: those in `GPUSHARE_BIN_DIR` when set (the
/// static builds `install/build.sh` makes), else cargo's own.
fn bin(name: &str, built: &'static str) -> String {
    match std::env::var_os("GPUSHARE_BIN_DIR") {
        Some(d) => Path::new(&d).join(name).display().to_string(),
        None => built.to_owned(),
    }
}

/// Wall time (µs), CPU time (µs) and peak RSS (KiB) of one child.
#[derive(Clone, Copy)]
struct Sample {
    wall: f64,
    cpu: f64,
    rss_kib: i64,
}

/// Runs `cmd` to completion, measuring it alone with wait4.
#[allow(clippy::zombie_processes)] // wait4 reaps the child.
fn measure(cmd: &mut Command, stdin: Option<&[u8]>) -> Sample {
    use std::io::Write;
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
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill in.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, with valid pointers to locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    let wall = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(r, child.id() as i32, "wait4");
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

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
        "{label:<48} wall {:>8.0} µs   cpu {:>8.0} µs   peak rss {:>6.1} MiB",
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

/// Run by runc as the hook: runs the real hook on the same state and
/// arguments, measured alone, and appends `stage wall cpu rss` to a file.
fn wrap_hook(hook: &str) -> ! {
    use std::io::{Read, Write};
    let mut state = Vec::new();
    std::io::stdin().read_to_end(&mut state).unwrap();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let s = measure(Command::new(hook).args(&args), Some(&state));
    let out = std::env::var("GPUSHARE_BENCH_OUT").unwrap();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(out)
        .unwrap();
    writeln!(f, "{} {} {} {}", args.join(" "), s.wall, s.cpu, s.rss_kib).unwrap();
    std::process::exit(0)
}

fn main() {
    if let Ok(hook) = std::env::var("GPUSHARE_BENCH_WRAP") {
        wrap_hook(&hook);
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the bench makes device nodes and runs runc: run it as root"
    );
    let runtime = bin("gpushare-runtime", env!("CARGO_BIN_EXE_gpushare-runtime"));
    let hook_bin = bin("gpushare-hook", env!("CARGO_BIN_EXE_gpushare-hook"));
    let cli = bin("gpushare", env!("CARGO_BIN_EXE_gpushare"));
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
    let config = simulate(&cli, &w.join("node"));
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);

    // 1. The shim alone, exec'ing /bin/true.
    let true_cfg = w.join("true.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &true_cfg,
        text.replace("[runtime]\n", "[runtime]\npath = \"/bin/true\"\n"),
    )
    .unwrap();
    // The same node with the driver left to a chained runtime: no libraries.
    let no_driver = |cfg: &Path, name: &str| -> PathBuf {
        let p = w.join(name);
        let t = std::fs::read_to_string(cfg).unwrap();
        std::fs::write(&p, t.replace("[driver]\n", "[driver]\ninject = \"none\"\n")).unwrap();
        p
    };
    let true_nolib_cfg = no_driver(&true_cfg, "true-nolib.toml");
    let nolib_config = no_driver(&config, "nolib.toml");
    let driver_files = gpushare::driver::Driver::load(
        &gpushare::config::Config::load_path(&config).unwrap(),
        false,
    )
    .files
    .len();
    let rootfs = w.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).expect("needs busybox-static");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sleep")).unwrap();
    let gpu = bundle(&w.join("gpu"), &rootfs, "NVIDIA_VISIBLE_DEVICES=all");
    let plain = bundle(&w.join("plain"), &rootfs, "X=1");
    let shim = |b: &Path, cfg: &Path, id: &str| {
        let mut c = Command::new(&runtime);
        c.env("GPUSHARE_CONFIG", cfg)
            .args([
                "--root",
                w.join("runc").to_str().unwrap(),
                "create",
                "--bundle",
            ])
            .arg(b)
            .arg(id);
        c
    };
    let mut direct = Vec::new();
    let mut via_gpu = Vec::new();
    let mut via_gpu_nolib = Vec::new();
    let mut via_plain = Vec::new();
    for _ in 0..n {
        direct.push(measure(
            Command::new("/bin/true").args(["create", "--bundle", "x", "id"]),
            None,
        ));
        via_gpu.push(measure(&mut shim(&gpu, &true_cfg, "bench-gpu"), None));
        via_gpu_nolib.push(measure(
            &mut shim(&gpu, &true_nolib_cfg, "bench-gpu-nolib"),
            None,
        ));
        via_plain.push(measure(&mut shim(&plain, &true_cfg, "bench-plain"), None));
    }
    let (d, g, gn, p) = (
        summarise(&direct),
        summarise(&via_gpu),
        summarise(&via_gpu_nolib),
        summarise(&via_plain),
    );
    println!("gpushare bench, {n} runs each, medians; state on {base}; the host's driver user-space: {driver_files} files");
    println!();
    line("/bin/true alone", &d);
    line("shim + /bin/true, GPU container (all)", &g);
    line("shim + /bin/true, GPU container, no libraries", &gn);
    line("shim + /bin/true, non-GPU container", &p);
    println!(
        "=> the shim adds, per GPU create: wall {:.0} µs, cpu {:.0} µs (of which the driver's libraries: wall {:.0} µs, cpu {:.0} µs); per non-GPU create: wall {:.0} µs, cpu {:.0} µs",
        g.wall - d.wall,
        g.cpu - d.cpu,
        g.wall - gn.wall,
        g.cpu - gn.cpu,
        p.wall - d.wall,
        p.cpu - d.cpu
    );

    // 2. A whole create + delete with runc, straight and through the shim.
    let runc_root = w.join("runc");
    // Straight runc gets a bundle the shim never touched: the difference is
    // everything gpushare adds, the hook's two runs included.
    let pristine = bundle(&w.join("pristine"), &rootfs, "NVIDIA_VISIBLE_DEVICES=all");
    // Through the shim with this config, or straight runc (None).
    let cycle = |via: Option<&Path>, i: usize| -> f64 {
        let id = format!(
            "bench-{}-{i}",
            via.map_or("runc".into(), |c| c
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned())
        );
        let t = Instant::now();
        let mut create = if let Some(cfg) = via {
            shim(&gpu, cfg, &id)
        } else {
            let mut c = Command::new("runc");
            c.arg("--root")
                .arg(&runc_root)
                .args(["create", "--bundle"])
                .arg(&pristine)
                .arg(&id);
            c
        };
        let s1 = create
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        let s2 = Command::new("runc")
            .arg("--root")
            .arg(&runc_root)
            .args(["delete", "--force", &id])
            .status()
            .unwrap();
        assert!(s1.success() && s2.success(), "{id}");
        t.elapsed().as_secs_f64() * 1e6
    };
    let (mut straight, mut through, mut through_nolib) = (Vec::new(), Vec::new(), Vec::new());
    let m = n.min(30);
    for i in 0..m {
        through.push(cycle(Some(&config), i));
        through_nolib.push(cycle(Some(&nolib_config), i));
        straight.push(cycle(None, i));
    }
    let (s, t, tn) = (median(straight), median(through), median(through_nolib));
    println!();
    println!("{:<48} wall {:>8.0} µs", "runc create + delete", s);
    println!(
        "{:<48} wall {:>8.0} µs",
        "gpushare-runtime create + delete", t
    );
    println!(
        "{:<48} wall {:>8.0} µs",
        "gpushare-runtime create + delete, no libraries", tn
    );
    println!(
        "=> difference per cycle: {:.0} µs, of which runc mounting the driver's files {:.0} µs ({m} cycles each; runc's own spread is of this order)",
        t - s,
        t - tn
    );

    // 3. The hook with 1000 ledger entries.
    let cfg = gpushare::config::Config::load_path(&config).unwrap();
    let l = Ledger::new(&cfg.runtime.state_dir);
    let mut locked = l.lock().unwrap();
    locked.entries.clear();
    for i in 0..1000 {
        locked.reserve(Entry {
            id: format!("{:064x}", i),
            gpus: vec![format!(
                "GPU-4a1c9d2{}-5a7e-4d00-8000-00000000000{}",
                i % 2,
                i % 2
            )],
            thread_percentage: Some(5.0),
            pinned_mem_limit: Some("0=1G".into()),
            pid: Some(1),
            pid_start: ledger::process_start_time(1),
            names: [("pod".to_owned(), format!("module-{i}"))].into(),
            created: ledger::now(),
        });
    }
    locked.commit().unwrap();
    let state = |ours: bool| -> Vec<u8> {
        let mut s = json!({"ociVersion": "1.0.2", "id": format!("{:064x}", 500), "status": "creating", "pid": std::process::id(), "bundle": plain});
        if ours {
            s["annotations"] = json!({"gpushare/gpus": "GPU-4a1c9d20-5a7e-4d00-8000-000000000000"});
        }
        serde_json::to_vec(&s).unwrap()
    };
    let (bind_state, plain_state) = (state(true), state(false));
    let hook = |stage: &str| {
        let mut c = Command::new(&hook_bin);
        c.env_clear().env("GPUSHARE_CONFIG", &config).arg(stage);
        c
    };
    let bind: Vec<Sample> = (0..n)
        .map(|_| measure(&mut hook("createRuntime"), Some(&bind_state)))
        .collect();
    let other: Vec<Sample> = (0..n)
        .map(|_| measure(&mut hook("createRuntime"), Some(&plain_state)))
        .collect();
    let entries = l.snapshot().unwrap().len();
    println!();
    line(
        &format!("hook createRuntime, bind, {entries} entries"),
        &summarise(&bind),
    );
    line("hook createRuntime, container not ours", &summarise(&other));
    assert_eq!(entries, 1000);

    // 4. The hook used alone, as runc runs it from a hooks.d-style spec:
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
    // A node's ledger holds its running containers; the 1000 entries above
    // measured the pid binding's worst case, and are cleared here.
    let mut locked = l.lock().unwrap();
    locked.entries.clear();
    locked.commit().unwrap();
    let gpu_alone = alone("gpu-alone", "NVIDIA_VISIBLE_DEVICES=all");
    let plain_alone = alone("plain-alone", "X=1");
    for i in 0..n.min(30) {
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
    let (g, p) = (
        summarise(&pick("prestart", true)),
        summarise(&pick("prestart", false)),
    );
    println!(
        "=> beyond a bare process start (/bin/true): GPU prestart wall {:.0} µs, cpu {:.0} µs; non-GPU wall {:.0} µs, cpu {:.0} µs",
        g.wall - d.wall,
        g.cpu - d.cpu,
        p.wall - d.wall,
        p.cpu - d.cpu
    );
}
