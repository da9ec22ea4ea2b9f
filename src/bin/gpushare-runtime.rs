//! `gpushare-runtime`: put where runc was. Intercepts `create` and `run`,
//! passes everything else straight through, and always ends by exec'ing the
//! configured low-level runtime with its own arguments.

use std::ffi::OsString;

use gpushare::config::Config;
use gpushare::{runtime_args, shim};

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let inv = runtime_args::parse(&args);
    let code = match run(&inv, &args) {
        Ok(never) => match never {},
        Err(e) => {
            let msg = format!("gpushare: {}", e.one_line());
            eprintln!("{msg}");
            if let Some(log) = &inv.log {
                // Best effort: stderr already carries the message.
                let _ = shim::write_runtime_log(log, inv.log_format_json, &msg);
            }
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn run(
    inv: &runtime_args::Invocation,
    args: &[OsString],
) -> gpushare::Result<std::convert::Infallible> {
    let cfg = Config::load()?;
    let runtime = shim::resolve_runtime(&cfg)?;
    let placed = match &inv.create {
        Some(create) => shim::intercept(create, &cfg, &shim::hook_path()?)?,
        None => None,
    };
    if let Some(id) = &inv.delete {
        shim::release_unbound(id, &cfg)?;
    }
    let err = shim::exec_runtime(&runtime, args);
    if let Some(p) = placed {
        p.undo();
    }
    Err(err.into())
}
