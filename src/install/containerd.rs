//! containerd: a CRI runtime `gpushare` in `/etc/containerd/config.toml`
//! (config version 2 or 3), runc's shim with gpushare-runtime as its
//! binary, or runc with gpushare's hooks in a base runtime spec.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use toml_edit::{DocumentMut, Item, Table};

use super::{malformed_json, shape, InstallError, RUNTIME_NAME};

/// The CRI plugin's table of runtimes for a containerd config version.
pub(super) fn cri_runtimes_path(version: i64) -> Option<[&'static str; 4]> {
    match version {
        2 => Some([
            "plugins",
            "io.containerd.grpc.v1.cri",
            "containerd",
            "runtimes",
        ]),
        3 => Some([
            "plugins",
            "io.containerd.cri.v1.runtime",
            "containerd",
            "runtimes",
        ]),
        _ => None,
    }
}

/// A TOML file as toml_edit keeps it (comments, order), or the line and
/// column where it is broken.
pub(super) fn parse_toml(path: &Path, text: &str) -> Result<DocumentMut, InstallError> {
    text.parse().map_err(|e: toml_edit::TomlError| {
        let (line, column) = e
            .span()
            .map(|s| {
                let before = &text[..s.start.min(text.len())];
                (
                    before.matches('\n').count() + 1,
                    before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1,
                )
            })
            .unwrap_or((1, 1));
        InstallError::Malformed {
            path: path.to_owned(),
            format: "TOML",
            line,
            column,
            message: e.message().replace('\n', " "),
        }
    })
}

fn containerd_parse(path: &Path, text: Option<&str>) -> Result<(DocumentMut, i64), InstallError> {
    let text = text.unwrap_or("");
    let mut doc = parse_toml(path, text)?;
    let version = match doc.get("version") {
        Some(v) => v
            .as_integer()
            .ok_or_else(|| shape(path, "`version` is not a number"))?,
        None if text.trim().is_empty() => {
            doc["version"] = toml_edit::value(2);
            2
        }
        // Ref: containerd reads a config without `version` as version 1.
        None => 1,
    };
    if cri_runtimes_path(version).is_none() {
        return Err(shape(
            path,
            &format!("config version {version} is not supported (2 and 3 are); migrate it with `containerd config migrate`"),
        ));
    }
    Ok((doc, version))
}

/// How containerd's `gpushare` runtime brings gpushare in.
#[derive(Debug, Clone, Copy)]
pub enum ContainerdMode<'a> {
    /// runc's shim with `BinaryName` = gpushare-runtime.
    Shim(&'a Path),
    /// runc itself, with a base runtime spec that carries gpushare's hooks.
    Hook(&'a Path),
    /// No runtime of gpushare's: NRI turned on for `gpushare nri`.
    Nri,
}

/// containerd's NRI plugin, the same id in config versions 2 and 3.
const NRI_PLUGIN: &str = "io.containerd.nri.v1.nri";
/// The mark on an NRI table install wrote, so uninstall takes it out.
const NRI_MARK: &str =
    "# Added by gpushare install --mode nri: containerd's NRI, for gpushare nri.\n";

/// containerd's config with NRI turned on (`disable = false`), its other
/// settings kept; a table install makes is marked for uninstall.
fn enable_nri(path: &Path, doc: &mut DocumentMut) -> Result<(), InstallError> {
    let plugins = doc
        .entry("plugins")
        .or_insert_with(|| {
            // Written only as the header of the tables under it.
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        })
        .as_table_mut()
        .ok_or_else(|| shape(path, "`plugins` is not a table"))?;
    let nri = plugins.entry(NRI_PLUGIN).or_insert_with(|| {
        let mut t = Table::new();
        t.decor_mut().set_prefix(format!("\n{NRI_MARK}"));
        t.insert("socket_path", toml_edit::value(crate::config::NRI_SOCKET));
        Item::Table(t)
    });
    let nri = nri
        .as_table_mut()
        .ok_or_else(|| shape(path, &format!("`plugins.\"{NRI_PLUGIN}\"` is not a table")))?;
    // Assigned in place: the key keeps its place and indentation.
    nri["disable"] = toml_edit::value(false);
    Ok(())
}

/// containerd's config with a `gpushare` CRI runtime: runc's shim v2 with
/// `BinaryName` set to gpushare-runtime, and runc's other options copied.
/// Comments, order and unknown tables are kept.
pub fn containerd_install(
    path: &Path,
    text: Option<&str>,
    mode: ContainerdMode,
) -> Result<String, InstallError> {
    let (mut doc, version) = containerd_parse(path, text)?;
    if let ContainerdMode::Nri = mode {
        enable_nri(path, &mut doc)?;
        return Ok(doc.to_string());
    }
    let keys = cri_runtimes_path(version).expect("checked");
    let mut table = doc.as_table_mut();
    let mut default_runtime = "runc".to_owned();
    for k in keys {
        if k == "runtimes" {
            if let Some(name) = table.get("default_runtime_name").and_then(Item::as_str) {
                default_runtime = name.to_owned();
            }
        }
        let entry = table.entry(k).or_insert_with(|| {
            let mut t = Table::new();
            t.set_implicit(true);
            Item::Table(t)
        });
        table = entry
            .as_table_mut()
            .ok_or_else(|| shape(path, &format!("`{k}` is not a table")))?;
    }
    // A runtimes table replaces containerd's built-in one, so once it has
    // an entry it must also name the default runtime, or the CRI plugin
    // does not load ("no corresponding runtime configured"). A config that
    // relied on the built-in runc gets it written out, marked as ours.
    if default_runtime == "runc" && !table.contains_key("runc") {
        table.insert("runc", Item::Table(default_runc()));
    }
    let runc_options = table
        .get("runc")
        .and_then(|r| r.get("options"))
        .and_then(Item::as_table_like)
        .map(|t| {
            t.iter()
                .map(|(k, v)| (k.to_owned(), v.clone()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut options = Table::new();
    let mut ours = Table::new();
    ours.insert("runtime_type", toml_edit::value("io.containerd.runc.v2"));
    match mode {
        ContainerdMode::Shim(runtime) => {
            for (k, v) in runc_options.into_iter().filter(|(k, _)| k != "BinaryName") {
                options.insert(&k, v);
            }
            options.insert(
                "BinaryName",
                toml_edit::value(runtime.display().to_string()),
            );
        }
        ContainerdMode::Hook(spec) => {
            for (k, v) in runc_options {
                options.insert(&k, v);
            }
            ours.insert(
                "base_runtime_spec",
                toml_edit::value(spec.display().to_string()),
            );
        }
        ContainerdMode::Nri => unreachable!("returned above"),
    }
    // The device plugin's allocation reaches the container as an
    // annotation kubelet writes; containerd passes a container's CRI
    // annotations to its spec only where the runtime lists them.
    let mut passed = toml_edit::Array::new();
    passed.push(crate::ledger::ALLOCATION_ANNOTATION);
    ours.insert("container_annotations", toml_edit::value(passed));
    ours.insert("options", Item::Table(options));
    table.insert(RUNTIME_NAME, Item::Table(ours));
    Ok(doc.to_string())
}

pub fn containerd_uninstall(
    path: &Path,
    text: Option<&str>,
) -> Result<Option<String>, InstallError> {
    let Some(text) = text else { return Ok(None) };
    let (mut doc, version) = containerd_parse(path, Some(text))?;
    let keys = cri_runtimes_path(version).expect("checked");
    let ours_nri = doc
        .get("plugins")
        .and_then(|p| p.get(NRI_PLUGIN))
        .and_then(Item::as_table)
        .is_some_and(|t| {
            t.decor()
                .prefix()
                .and_then(|p| p.as_str())
                .is_some_and(|p| p.contains(NRI_MARK))
        });
    if ours_nri {
        if let Some(p) = doc.get_mut("plugins").and_then(Item::as_table_mut) {
            p.remove(NRI_PLUGIN);
        }
    }
    let mut table = Some(doc.as_table_mut());
    for k in keys {
        table = table
            .and_then(|t| t.get_mut(k))
            .and_then(Item::as_table_mut);
    }
    if let Some(t) = table {
        t.remove(RUNTIME_NAME);
        let added_by_us = t
            .get("runc")
            .and_then(Item::as_table)
            .is_some_and(|r| r.to_string() == default_runc().to_string());
        if added_by_us {
            t.remove("runc");
        }
    }
    Ok(Some(doc.to_string()))
}

/// containerd's built-in default runtime (runc through its shim v2), as
/// install writes it where a config had left it implicit; the comment marks
/// it so uninstall takes it out again.
fn default_runc() -> Table {
    let mut t = Table::new();
    t.decor_mut().set_prefix(
        "\n# Added by gpushare install: containerd's built-in default runtime, which a\n# runtimes table must name once it has entries of its own.\n",
    );
    t.insert("runtime_type", toml_edit::value("io.containerd.runc.v2"));
    t
}

/// containerd's default spec (`ctr oci spec`, from the containerd that will
/// read it) with gpushare's hooks added: the base runtime spec of `--mode
/// hook`.
pub fn base_spec(hook: &Path, gpushare_config: Option<&Path>) -> Result<String, InstallError> {
    let out = std::process::Command::new("ctr")
        .args(["oci", "spec"])
        .output()
        .map_err(|source| {
            crate::sys::io(
                "run `ctr oci spec` for",
                Path::new("containerd's default spec"),
            )(source)
        })?;
    let p = Path::new("`ctr oci spec`");
    let mut spec: Value = serde_json::from_slice(&out.stdout).map_err(|e| malformed_json(p, &e))?;
    let mut h = json!({"path": hook});
    if let Some(c) = gpushare_config {
        h["env"] = json!([format!("{}={}", crate::config::ENV_VAR, c.display())]);
    }
    let hooks = spec
        .as_object_mut()
        .ok_or_else(|| shape(p, "not an object"))?
        .entry("hooks")
        .or_insert_with(|| json!({}));
    for stage in ["prestart", "poststop"] {
        let mut one = h.clone();
        one["args"] = json!(["gpushare-hook", stage]);
        let list = hooks
            .as_object_mut()
            .ok_or_else(|| shape(p, "hooks is not an object"))?
            .entry(stage)
            .or_insert_with(|| json!([]));
        list.as_array_mut()
            .ok_or_else(|| shape(p, "a hook stage is not a list"))?
            .push(one);
    }
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&spec).expect("JSON serialises")
    ))
}

/// The ending of every base spec file install writes.
const BASE_SPEC_SUFFIX: &str = "gpushare-base-spec.json";

/// Where `--mode hook` keeps containerd's base runtime spec: beside its
/// config, named after it, so two configs in one directory never share one.
pub fn base_spec_path(config: &Path) -> PathBuf {
    let name = config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    config.with_file_name(format!("{name}.{BASE_SPEC_SUFFIX}"))
}

/// The table of the CRI runtime `name` in a containerd config, if any.
fn runtime_table<'a>(doc: &'a DocumentMut, version: i64, name: &str) -> Option<&'a Table> {
    let keys = cri_runtimes_path(version)?;
    let mut table = doc.as_table();
    for k in keys {
        table = table.get(k)?.as_table()?;
    }
    table.get(name)?.as_table()
}

/// The base runtime spec a config's `gpushare` runtime names, when it is a
/// file install wrote (its name says so): the one uninstall removes.
pub fn named_base_spec(path: &Path, text: Option<&str>) -> Result<Option<PathBuf>, InstallError> {
    if text.is_none_or(|t| t.trim().is_empty()) {
        return Ok(None);
    }
    let (doc, version) = containerd_parse(path, text)?;
    Ok(runtime_table(&doc, version, RUNTIME_NAME)
        .and_then(|t| t.get("base_runtime_spec"))
        .and_then(Item::as_str)
        .map(PathBuf::from)
        .filter(|p| {
            p.is_absolute()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(BASE_SPEC_SUFFIX))
        }))
}

/// The binary containerd's runc runtime (whose options gpushare's runtime
/// copies) runs, when its options name one (`BinaryName`) other than
/// gpushare-runtime.
pub fn runc_binary_name(path: &Path, text: Option<&str>) -> Result<Option<String>, InstallError> {
    if text.is_none_or(|t| t.trim().is_empty()) {
        return Ok(None);
    }
    let (doc, version) = containerd_parse(path, text)?;
    Ok(runtime_table(&doc, version, "runc")
        .and_then(|t| t.get("options"))
        .and_then(Item::as_table_like)
        .and_then(|o| o.get("BinaryName"))
        .and_then(Item::as_str)
        .filter(|b| !b.is_empty() && !b.ends_with("gpushare-runtime"))
        .map(str::to_owned))
}
