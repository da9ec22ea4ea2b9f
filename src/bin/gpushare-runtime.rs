//! `gpushare-runtime`: put where runc was. A GPU container's `create` and
//! `run`, and a placed container's `delete`, run the configured low-level
//! runtime as a child and end as it ended; everything else execs it with
//! its own arguments.

use std::ffi::OsString;

use gpushare::{runtime_args, shim};

fn main() {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let inv = runtime_args::parse(&args);
    match shim::handle(&inv, &args) {
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
