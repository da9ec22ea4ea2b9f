//! `gpushare-runtime`: put where runc was. Reads runc's arguments and the
//! node config, and hands the call to the shim (`gpushare::shim`): a GPU
//! container's create is placed, a held container's delete released,
//! everything else becomes runc itself. A refusal is one line on stderr,
//! also written to runc's `--log` in runc's format, and exit 2.

use std::ffi::OsString;

use gpushare::config::Config;
use gpushare::error::Error;
use gpushare::{runtime_args, shim};

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let inv = runtime_args::parse(&args);
    let result = Config::load()
        .map_err(Error::from)
        .and_then(|cfg| shim::handle(&inv, &args, &cfg).map_err(Error::from));
    match result {
        Ok(status) => shim::exit_like(status),
        Err(e) => {
            let msg = format!("gpushare: {}", e.one_line());
            eprintln!("{msg}");
            if let Some(log) = &inv.log {
                // Best effort: stderr already carries the message.
                let _ = shim::write_runtime_log(log, inv.log_format_json, &msg);
            }
            std::process::exit(e.exit_code());
        }
    }
}
