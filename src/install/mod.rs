//! `gpushare install`: wiring gpushare into an engine's own configuration,
//! fitting into what is there. Each engine's change is a pure function from
//! the file's text to the new text, so it is tested on fixtures; writing is
//! a timestamped backup, then an atomic replace. A second install changes
//! nothing; uninstall takes out exactly what install put in, and gives back
//! the original bytes when install was the only change. Nothing restarts an
//! engine: the command ends by saying what to restart.

use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::sys::write_atomic;

mod containerd;
mod docker;
mod hooks;

pub use containerd::{
    base_spec, base_spec_path, containerd_install, containerd_uninstall, named_base_spec,
    runc_binary_name, ContainerdMode,
};
pub use docker::{docker_install, docker_uninstall};
pub use hooks::{crio_drop_in, hooks_file};

#[derive(Debug, Error)]
pub enum InstallError {
    #[error("{path} is not valid {format} at line {line}, column {column}: {message}; fix it by hand, gpushare will not overwrite it")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {what}; fix it by hand, gpushare will not overwrite it")]
    Shape { path: PathBuf, what: String },
    #[error(transparent)]
    Io(#[from] crate::sys::IoError),
    #[error("{0} is missing beside the gpushare binary; install gpushare, gpushare-runtime and gpushare-hook in one directory first")]
    NoBinary(PathBuf),
    #[error("--{0} applies to {1} only")]
    Option(&'static str, &'static str),
    #[error("--gpushare-config {0} does not exist; write gpushare's config there first (install/config.toml is the model), or leave the option out to use /etc/gpushare/config.toml")]
    MissingConfig(PathBuf),
    #[error("containerd's runc runs {binary} (BinaryName in {engine_config}) but {config} sets [runtime] path = {path:?}, so containers of runtime `gpushare` would run another runc; make [runtime] path name {binary}, or take BinaryName out, then run install again")]
    RuncConflict {
        binary: String,
        engine_config: PathBuf,
        config: PathBuf,
        path: String,
    },
}

impl InstallError {
    /// An engine config gpushare will not touch, or an option that does
    /// not apply: the operator's to fix.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            InstallError::Malformed { .. }
                | InstallError::Shape { .. }
                | InstallError::Option(..)
                | InstallError::MissingConfig(_)
                | InstallError::RuncConflict { .. }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Docker,
    Containerd,
    Podman,
    Crio,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub engine: Engine,
    /// The engine's config file (or hooks directory for podman and CRI-O).
    pub config: Option<PathBuf>,
    pub set_default: bool,
    pub uninstall: bool,
    /// Where gpushare-runtime and gpushare-hook are installed.
    pub bin_dir: PathBuf,
    /// GPUSHARE_CONFIG for the hook when not the default location.
    pub gpushare_config: Option<PathBuf>,
    /// containerd: bring gpushare in by hooks in a base runtime spec.
    pub hook_mode: bool,
    /// containerd: bring gpushare in by its NRI plugin (NRI turned on, a
    /// systemd unit for `gpushare nri`).
    pub nri_mode: bool,
    /// Where the NRI plugin's systemd unit goes.
    pub unit_dir: PathBuf,
}

impl Options {
    /// The options with every path absolute: a relative `--config` or
    /// `--gpushare-config` is taken from the working directory (engines
    /// and hooks start elsewhere), and each such is said in a line. A
    /// `--gpushare-config` that does not exist is refused.
    pub fn resolved(&self) -> Result<(Options, Vec<String>), InstallError> {
        let mut o = self.clone();
        let mut said = Vec::new();
        let mut absolute = |flag: &str, p: &mut PathBuf| -> Result<(), InstallError> {
            if p.is_relative() {
                let abs = std::path::absolute(&*p)
                    .map_err(|e| InstallError::from(crate::sys::io("resolve", p)(e)))?;
                said.push(format!(
                    "{flag} {} is relative: taken as {} (from the working directory)",
                    p.display(),
                    abs.display()
                ));
                *p = abs;
            }
            Ok(())
        };
        if let Some(p) = o.config.as_mut() {
            absolute("--config", p)?;
        }
        if let Some(p) = o.gpushare_config.as_mut() {
            absolute("--gpushare-config", p)?;
        }
        absolute("--unit-dir", &mut o.unit_dir)?;
        if let Some(c) = o.gpushare_config.as_ref().filter(|_| !o.uninstall) {
            if std::fs::metadata(c).is_err() {
                return Err(InstallError::MissingConfig(c.clone()));
            }
        }
        Ok((o, said))
    }
}

/// One file as it is and as it would be (`None`: absent).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
    /// A file gpushare alone writes (hooks.d file, CRI-O drop-in): no
    /// backup, which in a directory an engine reads could be read as config.
    pub owned: bool,
}

impl Change {
    pub fn is_noop(&self) -> bool {
        self.before == self.after
    }
}

pub const DOCKER_CONFIG: &str = "/etc/docker/daemon.json";
pub const CONTAINERD_CONFIG: &str = "/etc/containerd/config.toml";
pub const HOOKS_DIR: &str = "/usr/share/containers/oci/hooks.d";
pub const CRIO_DROP_IN_DIR: &str = "/etc/crio/crio.conf.d";
pub const UNIT_DIR: &str = "/etc/systemd/system";
const NRI_UNIT: &str = "gpushare-nri.service";
const HOOKS_FILE: &str = "oci-gpushare-hook.json";
const CRIO_DROP_IN: &str = "99-gpushare.conf";
pub const RUNTIME_NAME: &str = crate::config::RUNTIME_HANDLER;

pub(crate) fn malformed_json(path: &Path, e: &serde_json::Error) -> InstallError {
    InstallError::Malformed {
        path: path.to_owned(),
        format: "JSON",
        line: e.line(),
        column: e.column(),
        message: crate::text::json_message(e),
    }
}

pub(crate) fn shape(path: &Path, what: &str) -> InstallError {
    InstallError::Shape {
        path: path.to_owned(),
        what: what.to_owned(),
    }
}

fn read(path: &Path) -> Result<Option<Vec<u8>>, InstallError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(crate::sys::io("read", path)(source).into()),
    }
}

fn text_of(path: &Path, bytes: &Option<Vec<u8>>) -> Result<Option<String>, InstallError> {
    bytes
        .as_ref()
        .map(|b| String::from_utf8(b.clone()).map_err(|_| shape(path, "it is not UTF-8 text")))
        .transpose()
}

/// The newest backup install made of `path`, if any.
fn latest_backup(path: &Path) -> Option<PathBuf> {
    let dir = path.parent()?;
    let prefix = format!("{}.gpushare-backup-", path.file_name()?.to_str()?);
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .map(|e| e.path())
        .collect();
    found.sort();
    found.pop()
}

/// What install or uninstall would do, file by file.
pub fn plan(o: &Options) -> Result<Vec<Change>, InstallError> {
    let runtime = o.bin_dir.join("gpushare-runtime");
    let hook = o.bin_dir.join("gpushare-hook");
    for b in [&runtime, &hook] {
        if !b.is_file() {
            return Err(InstallError::NoBinary(b.clone()));
        }
    }
    if o.set_default && o.engine != Engine::Docker {
        return Err(InstallError::Option("set-default", "docker"));
    }
    if o.hook_mode && o.engine != Engine::Containerd {
        return Err(InstallError::Option(
            "mode hook",
            "containerd (podman and CRI-O always use the hook)",
        ));
    }
    if o.nri_mode && o.engine != Engine::Containerd {
        return Err(InstallError::Option(
            "mode nri",
            "containerd (CRI-O's NRI is its own setting: [crio.nri] enable_nri = true)",
        ));
    }
    match o.engine {
        Engine::Docker | Engine::Containerd => {
            let default = if o.engine == Engine::Docker {
                DOCKER_CONFIG
            } else {
                CONTAINERD_CONFIG
            };
            let path = o.config.clone().unwrap_or_else(|| default.into());
            let before = read(&path)?;
            let text = text_of(&path, &before)?;
            let spec_path = base_spec_path(&path);
            let mode = if o.hook_mode {
                ContainerdMode::Hook(&spec_path)
            } else if o.nri_mode {
                ContainerdMode::Nri
            } else {
                ContainerdMode::Shim(&runtime)
            };
            let install = |t: Option<&str>| match o.engine {
                Engine::Docker => docker_install(&path, t, &runtime, o.set_default),
                _ => containerd_install(&path, t, mode),
            };
            let after = if !o.uninstall {
                let new = install(text.as_deref())?;
                // Unchanged meaning, unchanged bytes: a second install is a no-op.
                if text.as_deref() == Some(new.as_str())
                    || same_meaning(o.engine, text.as_deref(), &new)
                {
                    before.clone()
                } else {
                    Some(new.into_bytes())
                }
            } else {
                // Install the only change since the backup: give its bytes back.
                let original = latest_backup(&path)
                    .map(|b| read(&b))
                    .transpose()?
                    .flatten();
                let original_text = text_of(&path, &original)?;
                if text.is_some()
                    && install(original_text.as_deref()).ok().as_deref() == text.as_deref()
                {
                    original
                } else {
                    let undone = match o.engine {
                        Engine::Docker => docker_uninstall(&path, text.as_deref())?,
                        _ => containerd_uninstall(&path, text.as_deref())?,
                    };
                    if undone.as_deref() == text.as_deref()
                        || same_meaning(o.engine, text.as_deref(), undone.as_deref().unwrap_or(""))
                    {
                        before.clone()
                    } else {
                        undone.map(String::into_bytes)
                    }
                }
            };
            let mut changes = vec![Change {
                path: path.clone(),
                before,
                after,
                owned: false,
            }];
            if o.engine == Engine::Containerd {
                // The base spec this install writes, and the one the config
                // names now if that is another (an older install's, or
                // hook mode's before shim mode): gone, as nothing names it.
                let named = named_base_spec(&path, text.as_deref())?;
                let wanted = (o.hook_mode && !o.uninstall).then_some(spec_path);
                if let Some(spec) = &wanted {
                    changes.push(Change {
                        before: read(spec)?,
                        after: Some(base_spec(&hook, o.gpushare_config.as_deref())?.into_bytes()),
                        path: spec.clone(),
                        owned: true,
                    });
                }
                if let Some(old) = named.filter(|n| Some(n) != wanted.as_ref()) {
                    if let Some(before) = read(&old)? {
                        changes.push(Change {
                            path: old,
                            before: Some(before),
                            after: None,
                            owned: true,
                        });
                    }
                }
                if !o.uninstall && !o.hook_mode && !o.nri_mode {
                    if let Some(binary) = runc_binary_name(&path, text.as_deref())? {
                        changes.extend(keep_runc_binary(o, &path, &binary)?);
                    }
                }
                // The NRI plugin's unit: written in NRI mode, taken out by
                // any uninstall.
                let unit = o.unit_dir.join(NRI_UNIT);
                let unit_before = read(&unit)?;
                let unit_after = (o.nri_mode && !o.uninstall)
                    .then(|| nri_unit(&o.bin_dir, o.gpushare_config.as_deref()).into_bytes());
                if unit_before.is_some() || unit_after.is_some() {
                    changes.push(Change {
                        path: unit,
                        before: unit_before,
                        after: unit_after,
                        owned: true,
                    });
                }
            }
            Ok(changes)
        }
        Engine::Podman | Engine::Crio => {
            let dir = o.config.clone().unwrap_or_else(|| HOOKS_DIR.into());
            let hooks = dir.join(HOOKS_FILE);
            let mut changes = vec![Change {
                before: read(&hooks)?,
                after: (!o.uninstall)
                    .then(|| hooks_file(&hook, o.gpushare_config.as_deref()).into_bytes()),
                path: hooks,
                owned: true,
            }];
            if o.engine == Engine::Crio {
                let drop_in = PathBuf::from(CRIO_DROP_IN_DIR).join(CRIO_DROP_IN);
                changes.push(Change {
                    before: read(&drop_in)?,
                    after: (!o.uninstall).then(|| crio_drop_in(&runtime).into_bytes()),
                    path: drop_in,
                    owned: true,
                });
            }
            Ok(changes)
        }
    }
}

/// containerd's runc runs `binary` (its options' `BinaryName`): gpushare's
/// runtime must run that one too, so it goes into gpushare's config as
/// `[runtime] path` (unless already there); a config that names another
/// runc is the operator's to settle.
fn keep_runc_binary(
    o: &Options,
    engine_config: &Path,
    binary: &str,
) -> Result<Option<Change>, InstallError> {
    let path = o
        .gpushare_config
        .clone()
        .unwrap_or_else(crate::config::Config::path_from_env);
    let before = read(&path)?;
    let text = text_of(&path, &before)?.unwrap_or_default();
    let mut doc = containerd::parse_toml(&path, &text)?;
    let runtime = doc
        .entry("runtime")
        .or_insert_with(|| toml_edit::Item::Table(toml_edit::Table::new()))
        .as_table_mut()
        .ok_or_else(|| shape(&path, "`runtime` is not a table"))?;
    match runtime.get("path").map(|p| p.as_str()) {
        Some(Some(p)) if p == binary => return Ok(None),
        Some(Some(p)) => {
            return Err(InstallError::RuncConflict {
                binary: binary.to_owned(),
                engine_config: engine_config.to_owned(),
                config: path,
                path: p.to_owned(),
            })
        }
        Some(None) => return Err(shape(&path, "`runtime.path` is not a string")),
        None => {}
    }
    runtime.insert("path", toml_edit::value(binary));
    Ok(Some(Change {
        path,
        before,
        after: Some(doc.to_string().into_bytes()),
        owned: false,
    }))
}

/// NVIDIA's runtimes an engine's config declares: (where, binary).
/// Docker: `runtimes.<name>.path`; containerd: a CRI runtime's
/// `options.BinaryName`; either named `nvidia` or running
/// `nvidia-container-runtime`.
pub fn nvidia_runtimes(engine: Engine, text: &str) -> Vec<(String, String)> {
    let is_nvidia =
        |name: &str, binary: &str| name == "nvidia" || binary.contains("nvidia-container-runtime");
    let mut found = Vec::new();
    match engine {
        Engine::Docker => {
            let doc: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            for (name, rt) in doc["runtimes"].as_object().into_iter().flatten() {
                let binary = rt["path"].as_str().unwrap_or("");
                if is_nvidia(name, binary) {
                    found.push((format!("runtimes.{name}"), binary.to_owned()));
                }
            }
        }
        Engine::Containerd => {
            let Ok(doc) = text.parse::<toml::Table>() else {
                return found;
            };
            let version = doc
                .get("version")
                .and_then(toml::Value::as_integer)
                .unwrap_or(1);
            let Some(keys) = containerd::cri_runtimes_path(version) else {
                return found;
            };
            let mut table = Some(&doc);
            for k in keys {
                table = table.and_then(|t| t.get(k)).and_then(toml::Value::as_table);
            }
            for (name, rt) in table.into_iter().flatten() {
                let binary = rt
                    .get("options")
                    .and_then(|o| o.get("BinaryName"))
                    .and_then(toml::Value::as_str)
                    .unwrap_or("");
                if is_nvidia(name, binary) {
                    found.push((format!("runtime {name:?}"), binary.to_owned()));
                }
            }
        }
        Engine::Podman | Engine::Crio => {}
    }
    found
}

/// What to tell an operator whose engine already runs NVIDIA's runtime:
/// gpushare needs none of it, and how to chain it if they want it.
pub fn chaining_note(o: &Options) -> Option<String> {
    let default = match o.engine {
        Engine::Docker => DOCKER_CONFIG,
        Engine::Containerd => CONTAINERD_CONFIG,
        Engine::Podman | Engine::Crio => return None,
    };
    let path = o.config.clone().unwrap_or_else(|| default.into());
    let text = std::fs::read_to_string(&path).ok()?;
    let found = nvidia_runtimes(o.engine, &text);
    let (at, binary) = found.first()?;
    let binary = if binary.is_empty() {
        "nvidia-container-runtime"
    } else {
        binary
    };
    let config = o
        .gpushare_config
        .clone()
        .unwrap_or_else(crate::config::Config::path_from_env);
    Some(format!(
        "note: NVIDIA's runtime is configured in {} too ({at}: {binary}). gpushare injects the driver itself, so containers of runtime `gpushare` need nothing of it. To chain NVIDIA's runtime behind gpushare instead (for its CDI devices or graphics), put `[runtime] path = {binary:?}` and `[driver] inject = \"none\"` in {}",
        path.display(),
        config.display()
    ))
}

/// Whether two texts say the same to the engine (so re-formatting alone is
/// not a change worth a write).
fn same_meaning(engine: Engine, a: Option<&str>, b: &str) -> bool {
    let Some(a) = a else { return false };
    match engine {
        Engine::Docker => {
            serde_json::from_str::<Value>(a).ok() == serde_json::from_str::<Value>(b).ok()
                && !a.trim().is_empty()
        }
        _ => false,
    }
}

/// Writes the changes: a timestamped backup of each file that existed, then
/// an atomic replace (or removal). Uninstall's backups have a name of their
/// own, so that the newest install backup stays the file as it was before
/// gpushare. If a step fails, what was written is put back and the backups
/// go: a failed install leaves nothing.
pub fn apply(changes: &[Change], uninstall: bool) -> Result<Vec<PathBuf>, InstallError> {
    let mut backups = Vec::new();
    let mut done: Vec<&Change> = Vec::new();
    let stamp = crate::sys::rfc3339(std::time::SystemTime::now()).replace(':', "");
    let kind = if uninstall {
        "gpushare-uninstall-backup"
    } else {
        "gpushare-backup"
    };
    for c in changes.iter().filter(|c| !c.is_noop()) {
        if let Err(e) = apply_one(c, kind, &stamp, &mut backups) {
            for c in done.iter().rev() {
                let _ = match &c.before {
                    Some(before) => write_atomic(&c.path, before, 0o644),
                    None => std::fs::remove_file(&c.path),
                };
            }
            for b in &backups {
                let _ = std::fs::remove_file(b);
            }
            return Err(e);
        }
        done.push(c);
    }
    Ok(backups)
}

fn apply_one(
    c: &Change,
    kind: &str,
    stamp: &str,
    backups: &mut Vec<PathBuf>,
) -> Result<(), InstallError> {
    let io = |action, source| InstallError::from(crate::sys::io(action, &c.path)(source));
    if let Some(before) = c.before.as_ref().filter(|_| !c.owned) {
        let backup = PathBuf::from(format!("{}.{kind}-{stamp}", c.path.display()));
        write_atomic(&backup, before, 0o644).map_err(|e| io("back up", e))?;
        backups.push(backup);
    }
    match &c.after {
        Some(after) => {
            if let Some(dir) = c.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
            }
            write_atomic(&c.path, after, 0o644).map_err(|e| io("write", e))
        }
        None => std::fs::remove_file(&c.path).map_err(|e| io("remove", e)),
    }
}

/// `gpushare install`: plans the change, and prints it (`dry_run`) or
/// writes it; the lines to show, in order.
pub fn run(o: &Options, dry_run: bool) -> Result<Vec<String>, InstallError> {
    let (o, said) = o.resolved()?;
    let o = &o;
    let changes = plan(o)?;
    let note = (!o.uninstall).then(|| chaining_note(o)).flatten();
    let mut out = said;
    if changes.iter().all(Change::is_noop) {
        out.extend(
            changes
                .iter()
                .map(|c| format!("unchanged: {}", c.path.display())),
        );
        out.push("nothing to change".into());
        out.extend(note);
        return Ok(out);
    }
    if dry_run {
        out.extend(changes.iter().filter(|c| !c.is_noop()).map(diff));
        out.push("dry run: nothing written".into());
        out.extend(note);
        return Ok(out);
    }
    let backups = apply(&changes, o.uninstall)?;
    for c in &changes {
        let what = match (c.is_noop(), &c.after) {
            (true, _) => "unchanged",
            (false, Some(_)) => "wrote",
            (false, None) => "removed",
        };
        out.push(format!("{what}: {}", c.path.display()));
    }
    out.extend(backups.iter().map(|b| format!("backup: {}", b.display())));
    out.extend(note);
    out.push(restart_hint(o.engine).into());
    if o.nri_mode && !o.uninstall {
        out.push(format!(
            "then start the NRI plugin: systemctl daemon-reload && systemctl enable --now {NRI_UNIT}"
        ));
    }
    Ok(out)
}

/// The systemd unit of `gpushare nri`: started after containerd, restarted
/// whenever it stops.
pub fn nri_unit(bin_dir: &Path, gpushare_config: Option<&Path>) -> String {
    let env = gpushare_config
        .map(|c| format!("Environment={}={}\n", crate::config::ENV_VAR, c.display()))
        .unwrap_or_default();
    format!(
        "# Written by `gpushare install containerd --mode nri`; `--uninstall` removes it.\n\
         [Unit]\n\
         Description=gpushare NRI plugin: GPU containers placed as containerd creates them\n\
         After=containerd.service\n\
         Wants=containerd.service\n\
         \n\
         [Service]\n\
         {env}ExecStart={} nri\n\
         Restart=always\n\
         RestartSec=1\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        bin_dir.join("gpushare").display()
    )
}

/// What to run so the engine reads its new configuration.
pub fn restart_hint(engine: Engine) -> &'static str {
    match engine {
        Engine::Docker => "restart Docker to use it: systemctl restart docker",
        Engine::Containerd => "restart containerd to use it: systemctl restart containerd",
        Engine::Podman => "nothing to restart: podman reads its hooks directory at every run",
        Engine::Crio => "restart CRI-O to use it: systemctl restart crio",
    }
}

/// A unified diff for `--dry-run`: `-` lines go, `+` lines come, three
/// lines of context around each change.
pub fn diff(c: &Change) -> String {
    let text = |b: &Option<Vec<u8>>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let (a, b) = (text(&c.before), text(&c.after));
    let old = format!(
        "{}{}",
        c.path.display(),
        if c.before.is_none() { " (absent)" } else { "" }
    );
    let new = format!(
        "{}{}",
        c.path.display(),
        if c.after.is_none() { " (removed)" } else { "" }
    );
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header(&old, &new)
        .missing_newline_hint(false)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const RT: &str = "/usr/local/bin/gpushare-runtime";

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!(
            "{}/tests/fixtures/install/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    fn p() -> PathBuf {
        PathBuf::from("/etc/x")
    }

    #[test]
    fn nvidia_runtimes_are_found_in_both_engines() {
        assert_eq!(
            nvidia_runtimes(Engine::Docker, &fixture("daemon.json")),
            [(
                "runtimes.nvidia".to_owned(),
                "nvidia-container-runtime".to_owned()
            )]
        );
        assert!(nvidia_runtimes(Engine::Docker, "{}").is_empty());
        assert!(nvidia_runtimes(Engine::Docker, "not json").is_empty());
        let v2 = format!(
            "{}\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gpu]\n  runtime_type = \"io.containerd.runc.v2\"\n  [plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gpu.options]\n    BinaryName = \"/usr/bin/nvidia-container-runtime\"\n",
            fixture("containerd-v2.toml")
        );
        assert_eq!(
            nvidia_runtimes(Engine::Containerd, &v2),
            [(
                "runtime \"gpu\"".to_owned(),
                "/usr/bin/nvidia-container-runtime".to_owned()
            )]
        );
        assert!(nvidia_runtimes(Engine::Containerd, &fixture("containerd-v2.toml")).is_empty());
        assert!(nvidia_runtimes(Engine::Containerd, &fixture("containerd-v3.toml")).is_empty());
    }

    #[test]
    fn docker_keeps_everything_else_and_is_idempotent() {
        let original = fixture("daemon.json");
        let once = docker_install(&p(), Some(&original), Path::new(RT), false).unwrap();
        let twice = docker_install(&p(), Some(&once), Path::new(RT), false).unwrap();
        assert_eq!(once, twice);
        let v: Value = serde_json::from_str(&once).unwrap();
        let o: Value = serde_json::from_str(&original).unwrap();
        assert_eq!(v["runtimes"]["gpushare"]["path"], RT);
        assert_eq!(v["runtimes"]["nvidia"], o["runtimes"]["nvidia"]);
        assert_eq!(v["log-driver"], o["log-driver"]);
        assert_eq!(v["data-root"], o["data-root"]);
        assert!(v.get("default-runtime").is_none());
        // Key order is kept: the first key is still the first.
        assert!(
            once.trim_start().starts_with("{\n  \"data-root\""),
            "{once}"
        );
        let d = docker_install(&p(), Some(&original), Path::new(RT), true).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&d).unwrap()["default-runtime"],
            "gpushare"
        );
        let undone = docker_uninstall(&p(), Some(&d)).unwrap().unwrap();
        assert_eq!(serde_json::from_str::<Value>(&undone).unwrap(), o);
        // From nothing.
        let fresh = docker_install(&p(), None, Path::new(RT), false).unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&fresh).unwrap(),
            json!({"runtimes": {"gpushare": {"path": RT}}})
        );
        assert_eq!(
            serde_json::from_str::<Value>(&docker_uninstall(&p(), Some(&fresh)).unwrap().unwrap())
                .unwrap(),
            json!({})
        );
    }

    #[test]
    fn malformed_files_are_refused_with_line_and_column() {
        let e = docker_install(
            &p(),
            Some("{\n  \"a\": 1,\n  oops\n}"),
            Path::new(RT),
            false,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("line 3") && e.contains("will not overwrite"),
            "{e}"
        );
        let e = docker_install(&p(), Some("[1]"), Path::new(RT), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not an object"), "{e}");
        let e = containerd_install(
            &p(),
            Some("version = 2\n[plugins\nx = 1\n"),
            ContainerdMode::Shim(Path::new(RT)),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("line 2") && e.contains("TOML"), "{e}");
        let e = containerd_install(
            &p(),
            Some("[plugins.cri]\nx = 1\n"),
            ContainerdMode::Shim(Path::new(RT)),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("version 1 is not supported"), "{e}");
    }

    #[test]
    fn containerd_v2_keeps_comments_and_copies_runc_options() {
        let original = fixture("containerd-v2.toml");
        let once =
            containerd_install(&p(), Some(&original), ContainerdMode::Shim(Path::new(RT))).unwrap();
        assert_eq!(
            containerd_install(&p(), Some(&once), ContainerdMode::Shim(Path::new(RT))).unwrap(),
            once,
            "idempotent"
        );
        for line in original.lines() {
            assert!(once.contains(line), "kept: {line:?}");
        }
        let doc: toml::Table = once.parse().unwrap();
        let rt = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gpushare"];
        assert_eq!(rt["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
        assert_eq!(rt["options"]["BinaryName"].as_str(), Some(RT));
        assert_eq!(
            rt["options"]["SystemdCgroup"].as_bool(),
            Some(true),
            "copied from runc"
        );
        let undone = containerd_uninstall(&p(), Some(&once)).unwrap().unwrap();
        assert_eq!(undone, original);
    }

    #[test]
    fn nri_is_turned_on_in_both_config_versions_and_a_table_install_made_goes_again() {
        for name in ["containerd-v2.toml", "containerd-v3.toml"] {
            let text = fixture(name);
            let on = containerd_install(&p(), Some(&text), ContainerdMode::Nri).unwrap();
            let doc: toml::Table = on.parse().unwrap();
            let nri = &doc["plugins"]["io.containerd.nri.v1.nri"];
            assert_eq!(nri["disable"].as_bool(), Some(false), "{name}: {on}");
            assert!(!on.contains("BinaryName"), "{name}: no runtime added");
            let off = containerd_uninstall(&p(), Some(&on)).unwrap().unwrap();
            assert!(!off.contains("io.containerd.nri.v1.nri"), "{name}: {off}");
        }
        // NRI's own table (containerd's default config) is kept, turned on.
        let own = "version = 2\n[plugins.\"io.containerd.nri.v1.nri\"]\n  disable = true\n  socket_path = \"/x/nri.sock\"\n";
        let on = containerd_install(&p(), Some(own), ContainerdMode::Nri).unwrap();
        assert!(on.contains("socket_path = \"/x/nri.sock\""), "{on}");
        assert!(on.contains("disable = false"), "{on}");
        let off = containerd_uninstall(&p(), Some(&on)).unwrap().unwrap();
        assert!(
            off.contains("io.containerd.nri.v1.nri"),
            "not ours to take out: {off}"
        );
    }

    #[test]
    fn containerd_v3_and_empty() {
        let original = fixture("containerd-v3.toml");
        let once =
            containerd_install(&p(), Some(&original), ContainerdMode::Shim(Path::new(RT))).unwrap();
        let doc: toml::Table = once.parse().unwrap();
        assert!(
            doc["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["gpushare"]
                .is_table()
        );
        assert!(doc["plugins"].get("io.containerd.grpc.v1.cri").is_none());
        let empty = containerd_install(&p(), None, ContainerdMode::Shim(Path::new(RT))).unwrap();
        let doc: toml::Table = empty.parse().unwrap();
        assert_eq!(doc["version"].as_integer(), Some(2));
        assert_eq!(
            doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["gpushare"]
                ["options"]["BinaryName"]
                .as_str(),
            Some(RT)
        );
        assert!(
            !empty.contains("[plugins]\n"),
            "parents stay implicit: {empty}"
        );
    }

    #[test]
    fn a_config_without_runtimes_keeps_its_default_runc_and_gets_it_back_out() {
        // containerd's built-in runtimes table is replaced by the first
        // entry written: runc must be named too, or CRI does not load.
        let minimal =
            "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\"]\n  sandbox_image = \"pause:3\"\n";
        let once =
            containerd_install(&p(), Some(minimal), ContainerdMode::Shim(Path::new(RT))).unwrap();
        let doc: toml::Table = once.parse().unwrap();
        let runtimes = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        assert_eq!(
            runtimes["runc"]["runtime_type"].as_str(),
            Some("io.containerd.runc.v2")
        );
        assert!(runtimes["gpushare"].is_table());
        let twice =
            containerd_install(&p(), Some(&once), ContainerdMode::Shim(Path::new(RT))).unwrap();
        assert_eq!(twice, once, "idempotent");
        let back = containerd_uninstall(&p(), Some(&once)).unwrap().unwrap();
        assert_eq!(back, minimal, "the runc it added goes with it");
        // Another default runtime, or a runc of the operator's: untouched.
        let crun = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"crun\"\n";
        let once =
            containerd_install(&p(), Some(crun), ContainerdMode::Shim(Path::new(RT))).unwrap();
        assert!(!once.contains("runtimes.runc]"), "{once}");
        let own = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]\n  runtime_type = \"io.containerd.runc.v2\"\n";
        let once =
            containerd_install(&p(), Some(own), ContainerdMode::Shim(Path::new(RT))).unwrap();
        let back = containerd_uninstall(&p(), Some(&once)).unwrap().unwrap();
        assert_eq!(back, own, "the operator's runc stays");
    }

    #[test]
    fn a_failed_apply_puts_back_what_it_wrote_and_leaves_no_backup() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("daemon.json");
        std::fs::write(&first, "{}").unwrap();
        let changes = [
            Change {
                path: first.clone(),
                before: Some(b"{}".to_vec()),
                after: Some(b"{\"runtimes\": {}}".to_vec()),
                owned: false,
            },
            // Nothing can be written under /proc/1: the second step fails.
            Change {
                path: PathBuf::from("/proc/1/gpushare-test"),
                before: None,
                after: Some(b"x".to_vec()),
                owned: true,
            },
        ];
        let e = apply(&changes, false).unwrap_err().to_string();
        assert!(e.contains("/proc/1/gpushare-test"), "{e}");
        assert_eq!(std::fs::read(&first).unwrap(), b"{}", "put back");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["daemon.json"], "no backup, no temp file");
    }

    #[test]
    fn the_diff_shows_what_comes_and_goes() {
        let c = Change {
            path: p(),
            before: Some(b"a\nb\nc\n".to_vec()),
            after: Some(b"a\nB\nc\nd\n".to_vec()),
            owned: false,
        };
        let d = diff(&c);
        assert!(
            d.contains("-b\n+B\n") && d.contains("+d\n") && !d.contains("-a"),
            "{d}"
        );
        // A change deep in a long file: a hunk with three lines of
        // context each side, the rest left out.
        let long: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        let c = Change {
            path: p(),
            before: Some(long.clone().into_bytes()),
            after: Some(long.replace("line 15\n", "line 15\nadded\n").into_bytes()),
            owned: false,
        };
        let d = diff(&c);
        assert!(
            d.starts_with(&format!(
                "--- {}\n+++ {}\n@@ -13,6 +13,7 @@\n",
                p().display(),
                p().display()
            )),
            "{d}"
        );
        assert!(
            d.contains(" line 13\n") && d.contains(" line 15\n+added\n line 16\n"),
            "{d}"
        );
        assert!(!d.contains("line 12\n") && !d.contains("line 19\n"), "{d}");
        let new = Change {
            before: None,
            ..c.clone()
        };
        assert!(diff(&new).starts_with(&format!("--- {} (absent)\n", p().display())));
    }
}
