//! A node for the binaries to work on without root: device "nodes" are
//! symlinks to /dev/null (a real character device, so the shim's stat sees
//! one), an inventory file, a config, and a recording fake runtime.
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::{json, Value};

mod bins;
pub mod kubelet;
pub mod nri_runtime;
pub use bins::{cli as bin_cli, hook as bin_hook, runtime as bin_runtime};

pub struct Node {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

/// A recording fake of runc: writes its argv (one argument a line) to
/// $FAKE_ARGV and its parent's pid to $FAKE_ARGV.ppid, writes the pid file
/// it is given (with $FAKE_PID, else its own pid), prints $FAKE_STDOUT and
/// $FAKE_STDERR, then, as told: sleeps $FAKE_SLEEP seconds recording a
/// SIGUSR1 or SIGTERM it gets in $FAKE_ARGV.signal (and exiting 42), kills
/// itself with $FAKE_DIE_BY, or exits with $FAKE_EXIT. Its ignored and
/// caught signals go to $FAKE_ARGV.sig (not its mask: the shell clears it).
pub const FAKE_RUNTIME: &str = r#"#!/bin/sh
printf '%s\n' "$0" "$@" > "$FAKE_ARGV"
grep -E '^Sig(Ign|Cgt)' /proc/$$/status > "$FAKE_ARGV.sig"
echo "$PPID" > "$FAKE_ARGV.ppid"
prev=""
for a in "$@"; do
  [ "$prev" = "--pid-file" ] && echo "${FAKE_PID:-$$}" > "$a"
  case "$a" in --pid-file=*) echo "${FAKE_PID:-$$}" > "${a#--pid-file=}";; esac
  prev="$a"
done
[ -n "$FAKE_STDOUT" ] && echo "$FAKE_STDOUT"
[ -n "$FAKE_STDERR" ] && echo "$FAKE_STDERR" >&2
if [ -n "$FAKE_SLEEP" ]; then
  trap 'echo USR1 > "$FAKE_ARGV.signal"; exit 42' USR1
  trap 'echo TERM > "$FAKE_ARGV.signal"; exit 42' TERM
  sleep "$FAKE_SLEEP" & wait $!
fi
[ -n "$FAKE_DIE_BY" ] && kill -"$FAKE_DIE_BY" $$
exit "${FAKE_EXIT:-0}"
"#;

pub fn uuid(i: u32) -> String {
    format!("GPU-{:08x}-5a7e-4d00-8000-{:012x}", 0x4a1c_9d20 + i, i)
}

impl Node {
    /// A node with `gpus` GPUs, whose runtime is the recording fake, and
    /// `extra` appended to the config.
    pub fn new(gpus: u32, extra: &str) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("dev")).unwrap();
        let mut names: Vec<String> = (0..gpus).map(|i| format!("nvidia{i}")).collect();
        names.extend(["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"].map(String::from));
        for n in names {
            std::os::unix::fs::symlink("/dev/null", root.join("dev").join(n)).unwrap();
        }
        let mut inv = String::new();
        for i in 0..gpus {
            inv.push_str(&format!(
                "[[gpu]]\nindex = {i}\nuuid = \"{}\"\nname = \"Tesla T4\"\npci_bus_id = \"00000000:{:02X}:00.0\"\nminor = {i}\nmemory_mib = 15360\ncompute_capability = \"7.5\"\n\n",
                uuid(i),
                0x17 + i * 0x10
            ));
        }
        std::fs::write(root.join("inventory.toml"), inv).unwrap();
        let fake = root.join("fake-runc");
        std::fs::write(&fake, FAKE_RUNTIME).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = root.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[runtime]\npath = \"{}\"\nstate_dir = \"{}\"\n[devices]\nroot = \"{}\"\ninventory = \"file:{}\"\n[driver]\ninject = \"none\"\n[mps]\nroot = \"{}\"\n{extra}",
                fake.display(),
                root.join("state").display(),
                root.display(),
                root.join("inventory.toml").display(),
                root.join("mps").display()
            ),
        )
        .unwrap();
        Node { dir, config }
    }

    /// Makes GPU `i`'s MPS daemon look running to gpushare: its pid file
    /// names this test process (alive, with its real start time).
    pub fn fake_mps(&self, i: u32) {
        let dir = self.path().join("mps").join(uuid(i));
        std::fs::create_dir_all(dir.join("pipe")).unwrap();
        let pid = std::process::id() as i32;
        let start = gpushare::sys::Process::find(pid).unwrap().start;
        std::fs::write(dir.join("daemon.pid"), format!("{pid} {start}\n")).unwrap();
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn argv_file(&self) -> PathBuf {
        self.path().join("argv")
    }

    /// The fake runtime's recorded argv, argv[0] first; None if it never ran.
    pub fn recorded(&self) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.argv_file()).ok()?;
        Some(text.lines().map(String::from).collect())
    }

    pub fn command(&self, bin: &str) -> Command {
        let mut c = Command::new(bin);
        // The fake's "container" is this test process: alive while it runs.
        c.env("GPUSHARE_CONFIG", &self.config)
            .env("FAKE_ARGV", self.argv_file())
            .env("FAKE_PID", std::process::id().to_string())
            .stdin(Stdio::null());
        c
    }

    pub fn runtime(&self, args: &[&str]) -> Output {
        self.command(bin_runtime()).args(args).output().unwrap()
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(bin_cli()).args(args).output().unwrap()
    }

    /// Runs the hook with `state` on stdin.
    pub fn hook(&self, stage: &str, state: &Value) -> Output {
        let mut child = self
            .command(bin_hook())
            .arg(stage)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(state.to_string().as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    /// The ledger's holds as JSON (`id`, `root`, `gpus`, `pid`, …), as
    /// readers see them.
    pub fn ledger(&self) -> Vec<Value> {
        let Some(l) = gpushare::ledger::Ledger::open_if_exists(&self.path().join("state")).unwrap()
        else {
            return Vec::new();
        };
        l.holds().unwrap().iter().map(hold_json).collect()
    }

    /// A bundle named `name` whose process has `env`.
    pub fn bundle(&self, name: &str, env: &[&str]) -> PathBuf {
        let b = self.path().join(name);
        std::fs::create_dir_all(b.join("rootfs")).unwrap();
        let mut spec: Value = serde_json::from_str(&fixture("config-unknown-fields.json")).unwrap();
        let mut all_env = vec![json!("PATH=/bin")];
        all_env.extend(env.iter().map(|e| json!(e)));
        spec["process"]["env"] = Value::Array(all_env);
        std::fs::write(
            b.join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        b
    }
}

/// A hold as the tests look at it.
pub fn hold_json(h: &gpushare::ledger::Hold) -> Value {
    json!({
        "id": h.container.id,
        "root": h.container.root,
        "gpus": h.gpus,
        "thread_percentage": h.thread_percentage,
        "pinned_mem_limit": h.pinned_mem_limit,
        "pid": h.pid,
        "pid_start": h.pid_start,
        "names": h.names,
        "env": h.env,
        "created": h.created,
        "source": h.source,
        "bundle": h.bundle,
    })
}

pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn spec(bundle: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap()
}

pub fn env_of(spec: &Value) -> Vec<String> {
    spec["process"]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}
