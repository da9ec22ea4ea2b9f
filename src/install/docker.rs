//! Docker: `runtimes.gpushare` in `/etc/docker/daemon.json`.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::{malformed_json, shape, InstallError, RUNTIME_NAME};

/// Docker's daemon.json with `runtimes.gpushare.path` (and, with
/// `set_default`, `default-runtime`). Every other key stays, in its order.
pub fn docker_install(
    path: &Path,
    text: Option<&str>,
    runtime: &Path,
    set_default: bool,
) -> Result<String, InstallError> {
    let mut doc = docker_parse(path, text)?;
    let root = doc.as_object_mut().expect("checked in docker_parse");
    let runtimes = root
        .entry("runtimes")
        .or_insert_with(|| Value::Object(Map::new()));
    let runtimes = runtimes
        .as_object_mut()
        .ok_or_else(|| shape(path, "\"runtimes\" is not an object"))?;
    runtimes.insert(RUNTIME_NAME.into(), json!({ "path": runtime }));
    if set_default {
        root.insert("default-runtime".into(), RUNTIME_NAME.into());
    }
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("JSON serialises")
    ))
}

/// Takes out what `docker_install` put in.
pub fn docker_uninstall(path: &Path, text: Option<&str>) -> Result<Option<String>, InstallError> {
    let Some(text) = text else { return Ok(None) };
    let mut doc = docker_parse(path, Some(text))?;
    let root = doc.as_object_mut().expect("checked in docker_parse");
    if let Some(Value::Object(runtimes)) = root.get_mut("runtimes") {
        runtimes.remove(RUNTIME_NAME);
        if runtimes.is_empty() {
            root.remove("runtimes");
        }
    }
    if root.get("default-runtime").and_then(Value::as_str) == Some(RUNTIME_NAME) {
        root.remove("default-runtime");
    }
    Ok(Some(format!(
        "{}\n",
        serde_json::to_string_pretty(&doc).expect("JSON serialises")
    )))
}

fn docker_parse(path: &Path, text: Option<&str>) -> Result<Value, InstallError> {
    let text = text.unwrap_or("").trim();
    if text.is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| malformed_json(path, &e))?;
    if !doc.is_object() {
        return Err(shape(path, "the top level is not an object"));
    }
    Ok(doc)
}
