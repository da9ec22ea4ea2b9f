//! podman and CRI-O: the OCI hooks.d file; CRI-O also a drop-in that
//! declares the runtime `gpushare` for a RuntimeClass.

use std::path::Path;

use serde_json::json;

use super::RUNTIME_NAME;

/// The hooks.d file (podman, CRI-O): prestart and poststop, the stage read
/// from the state.
pub fn hooks_file(hook: &Path, gpushare_config: Option<&Path>) -> String {
    let mut h = json!({"path": hook, "args": ["gpushare-hook"]});
    if let Some(c) = gpushare_config {
        h["env"] = json!([format!("{}={}", crate::config::ENV_VAR, c.display())]);
    }
    let doc = json!({
        "version": "1.0.0",
        "hook": h,
        "when": {"always": true},
        "stages": ["prestart", "poststop"],
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("JSON serialises")
    )
}

/// CRI-O's drop-in: the gpushare runtime, for RuntimeClass `gpushare`.
pub fn crio_drop_in(runtime: &Path) -> String {
    format!(
        "# Written by `gpushare install crio`; `gpushare install crio --uninstall` removes it.\n\
         [crio.runtime.runtimes.{RUNTIME_NAME}]\nruntime_path = {:?}\nruntime_type = \"oci\"\n",
        runtime.display().to_string()
    )
}
