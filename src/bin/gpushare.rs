//! `gpushare`: the operators' command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use gpushare::config::Config;
use gpushare::error::visible;
use gpushare::inventory::Inventory;
use gpushare::ledger::Ledger;
use gpushare::{report, simulate};

#[derive(Parser)]
#[command(
    name = "gpushare",
    version,
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
        /// containerd: shim (gpushare-runtime as runc's binary, the default)
        /// or hook (runc with gpushare's hooks in a base runtime spec).
        #[arg(long, value_enum, default_value = "shim")]
        mode: ModeArg,
    },
    /// NVIDIA MPS control daemons, one per GPU.
    Mps {
        #[command(subcommand)]
        action: MpsAction,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ModeArg {
    Shim,
    Hook,
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

fn print_json(v: &impl serde::Serialize) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON serialises")
    );
}

fn run(command: Command) -> gpushare::Result<i32> {
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
            if refresh {
                let nvml = gpushare::telemetry::open()
                    .map_err(gpushare::inventory::InventoryError::Nvml)?;
                let inv = gpushare::telemetry::nvml_inventory(&nvml)
                    .map_err(gpushare::inventory::InventoryError::Nvml)?;
                let path = gpushare::inventory::nvml_cache(&cfg);
                inv.write_cache(&path)?;
                eprintln!(
                    "wrote {} ({} GPUs from NVML)",
                    path.display(),
                    inv.gpus.len()
                );
            }
            let inv = Inventory::load(&cfg)?;
            let driver = match (cfg.driver.inject, refresh) {
                (gpushare::config::Inject::None, _) => None,
                (_, true) => Some(gpushare::driver::Driver::refresh(&cfg)?),
                (_, false) => Some(gpushare::driver::Driver::load(&cfg, false)),
            };
            if json {
                print_json(&serde_json::json!({ "gpus": inv.gpus, "driver": driver }));
            } else {
                for g in &inv.gpus {
                    let mem = g.memory_mib.map_or("-".into(), |m| format!("{m} MiB"));
                    let line = format!(
                        "{}  {}  {}  {}  /dev/nvidia{}  {mem}",
                        g.index, g.name, g.uuid, g.pci_bus_id, g.minor
                    );
                    println!("{}", visible(&line));
                }
                print!("{}", report::driver_text(driver.as_ref()));
                eprintln!("source: {}", inv.source);
            }
        }
        Command::Explain { bundle, json } => {
            let e = report::explain(&bundle, &Config::load()?)?;
            if json {
                print_json(&e.json);
            } else {
                print!("{}", report::explain_text(&e.json));
            }
            if e.refused {
                eprintln!(
                    "gpushare: {}",
                    e.json["reason"].as_str().unwrap_or("refused")
                );
                return Ok(gpushare::error::EXIT_REFUSED);
            }
        }
        Command::Status { json } => {
            let doc = status_doc()?;
            if json {
                print_json(&doc);
            } else {
                print!("{}", report::status_text(&doc));
            }
        }
        Command::Mps { action } => return mps_command(action),
        Command::Metrics { listen: None } => print!("{}", report::metrics(&status_doc()?)),
        Command::Metrics { listen: Some(addr) } => return serve_metrics(&addr),
        Command::Install {
            engine,
            config,
            dry_run,
            uninstall,
            set_default,
            gpushare_config,
            mode,
        } => {
            use gpushare::install::{self, Engine};
            let engine = match engine {
                EngineArg::Docker => Engine::Docker,
                EngineArg::Containerd => Engine::Containerd,
                EngineArg::Podman => Engine::Podman,
                EngineArg::Crio => Engine::Crio,
            };
            let exe = std::env::current_exe().unwrap_or_default();
            let opts = install::Options {
                engine,
                config,
                set_default,
                uninstall,
                bin_dir: exe.parent().map(PathBuf::from).unwrap_or_default(),
                gpushare_config,
                hook_mode: mode == ModeArg::Hook,
            };
            let changes = install::plan(&opts)?;
            let note = (!uninstall)
                .then(|| install::chaining_note(&opts))
                .flatten();
            if changes.iter().all(install::Change::is_noop) {
                for c in &changes {
                    println!("unchanged: {}", c.path.display());
                }
                println!("nothing to change");
                if let Some(n) = &note {
                    println!("{n}");
                }
                return Ok(0);
            }
            if dry_run {
                for c in changes.iter().filter(|c| !c.is_noop()) {
                    print!("{}", install::diff(c));
                }
                println!("dry run: nothing written");
                if let Some(n) = &note {
                    println!("{n}");
                }
                return Ok(0);
            }
            let backups = install::apply(&changes, uninstall)?;
            for c in &changes {
                let what = match (c.is_noop(), &c.after) {
                    (true, _) => "unchanged",
                    (false, Some(_)) => "wrote",
                    (false, None) => "removed",
                };
                println!("{what}: {}", c.path.display());
            }
            for b in backups {
                println!("backup: {}", b.display());
            }
            if let Some(n) = &note {
                println!("{n}");
            }
            println!("{}", install::restart_hint(engine));
        }
        Command::Gc => {
            let cfg = Config::load()?;
            let ledger = Ledger::new(&cfg.runtime.state_dir);
            let mut locked = ledger.lock()?;
            let gone = locked.drop_stale(cfg.runtime.reservation_timeout_seconds, true);
            locked.commit()?;
            ledger.restrict()?;
            for e in &gone {
                println!(
                    "dropped {}",
                    visible(&format!("{} ({})", e.id, e.gpus.join(",")))
                );
            }
            let pid_files = gpushare::shim::clean_pid_files(&cfg.runtime.state_dir);
            eprintln!(
                "{} entries dropped, {pid_files} pid files of killed runtime calls removed",
                gone.len()
            );
        }
    }
    Ok(0)
}

fn mps_command(action: MpsAction) -> gpushare::Result<i32> {
    use gpushare::mps;
    let cfg = Config::load()?;
    let inv = Inventory::load(&cfg)?;
    let args = match &action {
        MpsAction::Start(a) | MpsAction::Stop(a) | MpsAction::Status(a) => a,
        MpsAction::Run => return mps_run(&cfg, &inv),
    };
    let gpus: Vec<&gpushare::inventory::Gpu> = match &args.gpu {
        Some(id) => vec![gpushare::decide::resolve_one(id, &inv)?],
        None => inv.gpus.iter().collect(),
    };
    let mut rows = Vec::new();
    for g in gpus {
        let row = match &action {
            MpsAction::Start(_) => {
                let s = mps::start(&cfg, g)?;
                if !args.json {
                    let how = if s.already {
                        "already running"
                    } else {
                        "started"
                    };
                    println!(
                        "GPU {} {}: {how}, pid {}; compute mode {}",
                        g.index, g.uuid, s.pid, s.compute_mode
                    );
                }
                serde_json::to_value(&s).expect("serialises")
            }
            MpsAction::Stop(_) => {
                let s = mps::stop(&cfg, g)?;
                if !args.json {
                    println!(
                        "GPU {} {}: stopped (was {}); compute mode {}",
                        g.index, g.uuid, s.was, s.compute_mode
                    );
                }
                serde_json::to_value(&s).expect("serialises")
            }
            MpsAction::Status(_) => {
                let st = mps::status(&cfg, g);
                if !args.json {
                    println!("{}", visible(&st.line()));
                }
                serde_json::to_value(&st).expect("serialises")
            }
            MpsAction::Run => unreachable!("handled above"),
        };
        rows.push(row);
    }
    if args.json {
        print_json(&serde_json::json!({ "gpus": rows }));
    }
    Ok(0)
}

/// Set by SIGTERM and SIGINT: `mps run` stops its daemons and exits.
static QUIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_quit_signal(_: libc::c_int) {
    QUIT.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn mps_run(cfg: &Config, inv: &Inventory) -> gpushare::Result<i32> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_quit_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| {
            gpushare::Error::Io(format!(
                "cannot handle {sig}: {e}; run `gpushare mps run` as root"
            ))
        })?;
    }
    eprintln!(
        "gpushare mps run: supervising {} GPU daemons (SIGTERM stops them)",
        inv.gpus.len()
    );
    gpushare::mps::supervise(cfg, inv, &QUIT, &mut |line| eprintln!("{line}"));
    eprintln!("gpushare mps run: all daemons stopped");
    Ok(0)
}

/// The status with NVML's figures when NVML answers.
fn status_doc() -> gpushare::Result<serde_json::Value> {
    let cfg = Config::load()?;
    let nvml = gpushare::telemetry::open();
    let telemetry = match &nvml {
        Ok(n) => Ok(n as &dyn gpushare::telemetry::Telemetry),
        Err(why) => Err(why.clone()),
    };
    report::status(&cfg, telemetry)
}

/// Serves the exposition at http://ADDR/metrics, freshly computed at each
/// scrape (`gpushare::serve` bounds what a client can cost). Port 0 takes
/// a free port; the address served is printed either way.
fn serve_metrics(addr: &str) -> gpushare::Result<i32> {
    let listener = std::net::TcpListener::bind(addr).map_err(|e| {
        gpushare::Error::Io(format!(
            "cannot listen on {addr}: {e}; give a free host:port"
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_or_else(|_| addr.to_owned(), |a| a.to_string());
    eprintln!("serving http://{bound}/metrics");
    let render = || {
        status_doc()
            .map(|doc| report::metrics(&doc))
            .map_err(|e| e.one_line())
    };
    gpushare::serve::serve(listener, std::sync::Arc::new(render))
        .map_err(|e| gpushare::Error::Io(format!("the metrics server stopped: {e}")))?;
    Ok(0)
}
