//! `gpushare`: the operators' command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gpushare::config::Config;
use gpushare::error::{Error, EXIT_REFUSED};
use gpushare::install::{self, Engine};
use gpushare::inventory::Inventory;
use gpushare::mps::daemon as mps;
use gpushare::text::visible;
use gpushare::{report, simulate};

#[derive(Parser)]
#[command(
    name = "gpushare",
    version = concat!("version ", env!("CARGO_PKG_VERSION")),
    about = "Share a node's NVIDIA GPUs between containers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make a simulated GPU node (device nodes, inventory, config) for demos and tests.
    Simulate {
        /// How many GPUs.
        #[arg(long)]
        gpus: u32,
        /// The GPU model name.
        #[arg(long, default_value = "Tesla T4")]
        model: String,
        /// Where to make the node.
        #[arg(long)]
        dir: PathBuf,
    },
    /// The GPUs this node has, from the configured source.
    Inventory {
        #[arg(long)]
        json: bool,
        /// Write the inventory cache (<state_dir>/inventory.toml) from NVML,
        /// for nodes that use devices.inventory = "nvml", and find the
        /// driver's files again (<state_dir>/driver.json).
        #[arg(long)]
        refresh: bool,
    },
    /// What create would do with a bundle, without doing it.
    Explain {
        /// The bundle directory (holding config.json).
        #[arg(long, short)]
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Which container holds which GPU.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Drop ledger entries whose container is gone.
    Gc,
    /// The status as Prometheus text exposition.
    Metrics {
        /// Serve it at http://ADDR/metrics instead (e.g. 127.0.0.1:9400).
        #[arg(long)]
        listen: Option<String>,
    },
    /// Wire gpushare into an engine's configuration (never restarts it).
    Install {
        #[arg(value_enum)]
        engine: EngineArg,
        /// The engine's config file (docker, containerd) or hooks directory
        /// (podman, crio), instead of the default.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print the change and write nothing.
        #[arg(long)]
        dry_run: bool,
        /// Take out what install put in.
        #[arg(long)]
        uninstall: bool,
        /// Docker: make gpushare the default runtime.
        #[arg(long)]
        set_default: bool,
        /// The node config the hook reads (podman, crio, containerd --mode
        /// hook), when not the default.
        #[arg(long)]
        gpushare_config: Option<PathBuf>,
        /// containerd: shim (gpushare-runtime as runc's binary, the default),
        /// hook (runc with gpushare's hooks in a base runtime spec) or nri
        /// (NRI turned on, and a systemd unit for `gpushare nri`).
        #[arg(long, value_enum, default_value = "shim")]
        mode: ModeArg,
        /// Where `--mode nri` writes its systemd unit.
        #[arg(long, default_value = gpushare::install::UNIT_DIR)]
        unit_dir: PathBuf,
    },
    /// Kubernetes: the kubelet device plugin that lets the scheduler count
    /// GPU shares (gpushare.io/gpu-percent); runs in the foreground.
    DevicePlugin {
        /// kubelet's device-plugin directory (its kubelet.sock).
        #[arg(long, default_value = gpushare::device_plugin::DEFAULT_KUBELET_DIR)]
        kubelet_dir: PathBuf,
    },
    /// containerd and CRI-O: the NRI plugin that places GPU containers with
    /// no process started per container; runs in the foreground.
    Nri {
        /// The runtime's NRI socket.
        #[arg(long, default_value = gpushare::nri::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Run in the host's root, mounted here (the plugin in a container).
        #[arg(long)]
        host_root: Option<PathBuf>,
    },
    /// CDI: name GPUs as devices (`--device gpushare.io/gpu=0`).
    Cdi {
        #[command(subcommand)]
        action: CdiAction,
    },
    /// NVIDIA MPS control daemons, one per GPU.
    Mps {
        #[command(subcommand)]
        action: MpsAction,
    },
}

#[derive(Subcommand)]
enum CdiAction {
    /// Write the CDI spec (kind gpushare.io/gpu: a device per GPU index and
    /// UUID, and `all`), whose edits carry gpushare-hook; atomically.
    Generate {
        /// Where to write it, instead of [cdi] spec (/etc/cdi/gpushare.yaml).
        #[arg(long)]
        output: Option<PathBuf>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Shim,
    Hook,
    Nri,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum EngineArg {
    Docker,
    Containerd,
    Podman,
    Crio,
}

#[derive(Subcommand)]
enum MpsAction {
    /// Start the daemon of every GPU (or one); a running one is left as it is.
    Start(MpsArgs),
    /// Stop the daemon of every GPU (or one) and clean up after it.
    Stop(MpsArgs),
    /// Running, stopped or dead, per GPU, with the daemon's defaults.
    Status(MpsArgs),
    /// Supervise every GPU's daemon in the foreground (systemd Type=simple):
    /// start them, restart one that dies, put back defaults a client
    /// changed, stop them all on SIGTERM.
    Run,
}

#[derive(clap::Args)]
struct MpsArgs {
    /// One GPU: index, UUID (or a unique prefix) or PCI bus id.
    #[arg(long)]
    gpu: Option<String>,
    #[arg(long)]
    json: bool,
}

fn main() {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("gpushare: {}", e.one_line());
            std::process::exit(e.exit_code());
        }
    }
}

/// A program installed beside this one.
fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| name.into())
}

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON serialises")
    );
}

fn run(command: Command) -> Result<i32, Error> {
    match command {
        Command::Simulate { gpus, model, dir } => {
            let s = simulate::simulate(gpus, &model, &dir)?;
            eprintln!(
                "simulated node with {} × {model} in {}",
                s.inventory.gpus.len(),
                s.dir.display()
            );
            println!(
                "export {}={}",
                gpushare::config::ENV_VAR,
                s.config.display()
            );
        }
        Command::Inventory { json, refresh } => {
            let cfg = Config::load()?;
            let (inv, driver, wrote) = report::inventory(&cfg, refresh, &sibling("gpushare-hook"))?;
            for w in wrote {
                eprintln!("{w}");
            }
            if json {
                print_json(&serde_json::json!({ "gpus": inv.gpus, "driver": driver }));
            } else {
                print!("{}", report::inventory_text(&inv, driver.as_ref()));
                eprintln!("source: {}", inv.source);
            }
        }
        Command::Explain { bundle, json } => {
            let e = report::explain(&bundle, &Config::load()?)?;
            if json {
                print_json(&e);
            } else {
                print!("{}", report::explain_text(&e));
            }
            if e.refused() {
                let reason = e.reason.as_deref().unwrap_or("refused");
                eprintln!("gpushare: {}", visible(reason));
                return Ok(EXIT_REFUSED);
            }
        }
        Command::Cdi {
            action: CdiAction::Generate { output },
        } => {
            let cfg = Config::load()?;
            let inv = Inventory::load(&cfg)?;
            let path = match output {
                Some(p) => std::path::absolute(&p).unwrap_or(p),
                None => cfg.cdi_spec.clone(),
            };
            let hook = sibling("gpushare-hook");
            gpushare::cdi::write(&path, &inv, &hook, gpushare::cdi::config_for_hook(&cfg))?;
            eprintln!(
                "wrote {} (kind {}: {} GPUs by index and UUID, and all)",
                path.display(),
                gpushare::cdi::KIND,
                inv.gpus.len()
            );
        }
        Command::DevicePlugin { kubelet_dir } => {
            let cfg = Config::load()?;
            gpushare::device_plugin::run(&cfg, &kubelet_dir, &mut |line| {
                eprintln!("gpushare device-plugin: {}", visible(line))
            })?;
        }
        Command::Nri { socket, host_root } => {
            if let Some(root) = &host_root {
                gpushare::nri::enter_host_root(root)?;
            }
            let cfg = Config::load()?;
            gpushare::nri::run(
                &cfg,
                &socket,
                std::sync::Arc::new(|line: &str| eprintln!("gpushare nri: {}", visible(line))),
            )?;
        }
        Command::Status { json } => {
            let s = report::status_now()?;
            if json {
                print_json(&s);
            } else {
                print!("{}", report::status_text(&s));
            }
        }
        Command::Mps { action } => {
            let cfg = Config::load()?;
            let inv = Inventory::load(&cfg)?;
            let (args, action) = match action {
                MpsAction::Start(a) => (a, mps::Action::Start),
                MpsAction::Stop(a) => (a, mps::Action::Stop),
                MpsAction::Status(a) => (a, mps::Action::Status),
                MpsAction::Run => {
                    mps::run(&cfg, &inv, &mut |line| eprintln!("{line}"))?;
                    return Ok(0);
                }
            };
            let rows = mps::act(&cfg, &inv, args.gpu.as_deref(), action)?;
            if args.json {
                let rows: Vec<_> = rows.into_iter().map(|r| r.json).collect();
                print_json(&serde_json::json!({ "gpus": rows }));
            } else {
                for r in rows {
                    println!("{}", visible(&r.line));
                }
            }
        }
        Command::Metrics { listen: None } => {
            print!("{}", report::metrics(&report::status_now()?))
        }
        Command::Metrics { listen: Some(addr) } => gpushare::serve::metrics(&addr)?,
        Command::Install {
            engine,
            config,
            dry_run,
            uninstall,
            set_default,
            gpushare_config,
            mode,
            unit_dir,
        } => {
            let exe = std::env::current_exe().unwrap_or_default();
            let opts = install::Options {
                engine: match engine {
                    EngineArg::Docker => Engine::Docker,
                    EngineArg::Containerd => Engine::Containerd,
                    EngineArg::Podman => Engine::Podman,
                    EngineArg::Crio => Engine::Crio,
                },
                config,
                set_default,
                uninstall,
                bin_dir: exe.parent().map(PathBuf::from).unwrap_or_default(),
                gpushare_config,
                hook_mode: mode == ModeArg::Hook,
                nri_mode: mode == ModeArg::Nri,
                unit_dir,
            };
            for line in install::run(&opts, dry_run)? {
                // A diff ends with its own newline.
                match line.strip_suffix('\n') {
                    Some(l) => println!("{l}"),
                    None => println!("{line}"),
                }
            }
        }
        Command::Gc => {
            let cfg = Config::load()?;
            let c = gpushare::ledger::gc(
                &cfg.runtime.state_dir,
                cfg.runtime.reservation_timeout_seconds,
            )?;
            for h in &c.dropped {
                let line = format!("dropped {} ({})", h.container.id, h.gpus.join(","));
                println!("{}", visible(&line));
            }
            eprintln!(
                "{} holds dropped, {} files of killed calls removed",
                c.dropped.len(),
                c.pid_files
            );
        }
    }
    Ok(0)
}
