//! Node configuration: `/etc/gpushare/config.toml` or the file named by
//! `GPUSHARE_CONFIG`. A missing file means defaults; an unknown key or a bad
//! value is refused with the key's dotted name, so a typo never silently
//! falls back to a default.

use std::path::{Path, PathBuf};

use thiserror::Error;
use toml::{Table, Value};

pub const DEFAULT_PATH: &str = "/etc/gpushare/config.toml";
pub const ENV_VAR: &str = "GPUSHARE_CONFIG";

/// The name engines know gpushare's runtime by (containerd's and CRI-O's
/// runtime handler, Docker's runtime, the RuntimeClass's handler).
pub const RUNTIME_HANDLER: &str = "gpushare";

/// Where containerd and CRI-O serve NRI by default.
pub const NRI_SOCKET: &str = "/var/run/nri/nri.sock";

/// Every table and key the node config knows.
pub const SECTIONS: &[(&str, &[&str])] = &[
    (
        "runtime",
        &["path", "state_dir", "reservation_timeout_seconds"],
    ),
    ("devices", &["root", "inventory"]),
    (
        "policy",
        &[
            "max_gpus_per_container",
            "all",
            "max_thread_percentage_per_gpu",
            "default_thread_percentage",
            "percentage_without_mps",
        ],
    ),
    ("driver", &["inject", "root"]),
    (
        "mps",
        &[
            "root",
            "container_pipe_dir",
            "control",
            "compute_mode",
            "shm_size",
        ],
    ),
    ("cdi", &["spec"]),
    (
        "device_plugin",
        &[
            "resource",
            "units_per_gpu",
            "require_allocation",
            "pinned_memory",
        ],
    ),
];

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}; fix the file or point {ENV_VAR} at another")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{ENV_VAR} names {path}, which does not exist; create it, or unset {ENV_VAR} to use {DEFAULT_PATH}")]
    Missing { path: PathBuf },
    #[error("{ENV_VAR} is {path}, not an absolute path (it would be read from whatever directory a runtime or hook starts in); set it to the file's absolute path")]
    Relative { path: PathBuf },
    #[error("config {path} is not valid TOML at line {line}, column {column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config {path}: unknown key `{key}`; known keys in [{section}]: {known}")]
    UnknownKey {
        path: PathBuf,
        key: String,
        section: String,
        known: String,
    },
    #[error("config {path}: `{key}` = {value} is invalid: {expected}")]
    BadValue {
        path: PathBuf,
        key: String,
        value: String,
        expected: String,
    },
}

impl ConfigError {
    /// Every config error is the operator's input to fix.
    pub fn is_refusal(&self) -> bool {
        true
    }
}

/// Where GPU identities come from on the create path (never NVML there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InventorySource {
    /// procfs when the driver is loaded, otherwise a clear error.
    Auto,
    Procfs,
    Nvml,
    File(PathBuf),
}

/// Whether a request the node cannot honour is refused or let through with
/// a warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    Reject,
    Warn,
}

/// What `NVIDIA_VISIBLE_DEVICES=all` means under a per-container GPU limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllPolicy {
    LeastLoaded,
    Reject,
}

#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Low-level runtime to exec: a name looked up on PATH, or a path.
    pub path: String,
    pub state_dir: PathBuf,
    /// A reservation that was never bound to a pid within this many
    /// seconds is taken to be a create that failed after the shim ran.
    pub reservation_timeout_seconds: u64,
}

#[derive(Debug, Clone)]
pub struct DevicesConfig {
    pub root: PathBuf,
    pub inventory: InventorySource,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub max_gpus_per_container: usize,
    pub all: AllPolicy,
    pub max_thread_percentage_per_gpu: Option<f64>,
    pub default_thread_percentage: Option<f64>,
    /// A thread percentage asked for on a GPU without a running MPS daemon.
    pub percentage_without_mps: Strictness,
}

#[derive(Debug, Clone)]
pub struct MpsConfig {
    pub root: PathBuf,
    pub container_pipe_dir: PathBuf,
    pub control: String,
    /// Put real GPUs in EXCLUSIVE_PROCESS mode while their daemon runs
    /// (NVIDIA's advice: only the MPS server then opens the GPU), or leave
    /// the compute mode alone.
    pub exclusive: bool,
    /// The size of each GPU's shared-memory tmpfs, as tmpfs takes it
    /// (`1G`, `512M`, `10%`).
    pub shm_size: String,
}

/// Who brings the driver's user-space into GPU containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inject {
    /// gpushare mounts the host's driver files itself.
    Gpushare,
    /// A runtime gpushare chains to (NVIDIA's) does it.
    None,
}

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub inject: Inject,
    /// The host root under which the driver's user-space is found (its
    /// `etc/ld.so.cache`, libraries, binaries, firmware,
    /// `proc/driver/nvidia/version`); `None`: `devices.root`.
    pub root: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was read from; `None` when no file exists (defaults).
    pub source: Option<PathBuf>,
    pub runtime: RuntimeConfig,
    pub devices: DevicesConfig,
    pub policy: Policy,
    pub driver: DriverConfig,
    pub mps: MpsConfig,
    /// The CDI spec gpushare keeps (`gpushare cdi generate`), rewritten
    /// when the inventory is refreshed.
    pub cdi_spec: PathBuf,
    pub device_plugin: DevicePluginConfig,
}

/// `gpushare device-plugin`: what kubelet is told, and what the runtime and
/// the hook then enforce.
#[derive(Debug, Clone)]
pub struct DevicePluginConfig {
    /// The extended resource pods ask for (`gpushare.io/gpu-percent`).
    pub resource: String,
    /// Units each healthy GPU is advertised as (100: a unit is 1 %).
    pub units_per_gpu: u32,
    /// Refuse GPU containers that hold no allocation of the plugin's.
    pub require_allocation: bool,
    /// Give an allocation a pinned-memory limit in proportion to its units
    /// (under MPS).
    pub proportional_pinned_memory: bool,
}

impl Config {
    /// Where the driver's user-space is looked for.
    pub fn driver_root(&self) -> &Path {
        self.driver.root.as_deref().unwrap_or(&self.devices.root)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            source: None,
            runtime: RuntimeConfig {
                path: "runc".into(),
                state_dir: "/run/gpushare".into(),
                reservation_timeout_seconds: 120,
            },
            devices: DevicesConfig {
                root: "/".into(),
                inventory: InventorySource::Auto,
            },
            policy: Policy {
                max_gpus_per_container: 1,
                all: AllPolicy::LeastLoaded,
                max_thread_percentage_per_gpu: None,
                default_thread_percentage: None,
                percentage_without_mps: Strictness::Reject,
            },
            driver: DriverConfig {
                inject: Inject::Gpushare,
                root: None,
            },
            mps: MpsConfig {
                root: "/run/gpushare/mps".into(),
                container_pipe_dir: "/tmp/nvidia-mps".into(),
                control: "nvidia-cuda-mps-control".into(),
                exclusive: true,
                // MPS itself needs a few MiB per client; the rest is for the
                // clients' own /dev/shm use (data loaders, IPC), shared by
                // the clients of one GPU. A T4 node has 16-64 GiB of RAM.
                shm_size: "1G".into(),
            },
            cdi_spec: "/etc/cdi/gpushare.yaml".into(),
            device_plugin: DevicePluginConfig {
                resource: "gpushare.io/gpu-percent".into(),
                units_per_gpu: 100,
                require_allocation: false,
                proportional_pinned_memory: false,
            },
        }
    }
}

impl Config {
    /// The config's name as messages show it.
    pub fn name(&self) -> String {
        match &self.source {
            Some(p) => p.display().to_string(),
            None => format!("{} (absent: defaults)", Config::path_from_env().display()),
        }
    }

    /// The config path in force: `GPUSHARE_CONFIG` when set and non-empty,
    /// otherwise the default path.
    pub fn path_from_env() -> PathBuf {
        match std::env::var_os(ENV_VAR) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => PathBuf::from(DEFAULT_PATH),
        }
    }

    /// Loads the config in force. Only the default file's absence means
    /// defaults: a `GPUSHARE_CONFIG` that names a missing file or a relative
    /// path is an error, as is any other read error, never papered over.
    pub fn load() -> Result<Config, ConfigError> {
        Self::load_named(
            std::env::var_os(ENV_VAR)
                .filter(|p| !p.is_empty())
                .map(PathBuf::from),
        )
    }

    /// Loads the config a `GPUSHARE_CONFIG` value names (`None`: the
    /// default path, whose absence means defaults).
    pub fn load_named(named: Option<PathBuf>) -> Result<Config, ConfigError> {
        let Some(path) = named else {
            return Self::load_path(Path::new(DEFAULT_PATH));
        };
        if !path.is_absolute() {
            return Err(ConfigError::Relative { path });
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::parse(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ConfigError::Missing { path })
            }
            Err(source) => Err(ConfigError::Read { path, source }),
        }
    }

    pub fn load_path(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_owned(),
                source,
            }),
        }
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let table: Table = text.parse().map_err(|e: toml::de::Error| {
            let (line, column) = e.span().map(|s| line_col(text, s.start)).unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: e.message().replace('\n', " "),
            }
        })?;
        let mut cfg = Config {
            source: Some(path.to_owned()),
            ..Config::default()
        };
        let v = Validator { path };
        for (section, value) in &table {
            let Some((_, known)) = SECTIONS.iter().find(|(s, _)| s == section) else {
                return Err(ConfigError::UnknownKey {
                    path: path.to_owned(),
                    key: section.clone(),
                    section: "top level".into(),
                    known: SECTIONS
                        .iter()
                        .map(|(s, _)| *s)
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let Value::Table(items) = value else {
                return Err(v.bad(section, value, "a table, written [section]"));
            };
            for (key, value) in items {
                let dotted = format!("{section}.{key}");
                if !known.contains(&key.as_str()) {
                    return Err(ConfigError::UnknownKey {
                        path: path.to_owned(),
                        key: dotted,
                        section: section.clone(),
                        known: known.join(", "),
                    });
                }
                v.apply(&mut cfg, &dotted, value)?;
            }
        }
        Ok(cfg)
    }
}

struct Validator<'a> {
    path: &'a Path,
}

impl Validator<'_> {
    fn bad(&self, key: &str, value: &Value, expected: &str) -> ConfigError {
        ConfigError::BadValue {
            path: self.path.to_owned(),
            key: key.to_owned(),
            value: value.to_string(),
            expected: expected.to_owned(),
        }
    }

    fn string(&self, key: &str, value: &Value) -> Result<String, ConfigError> {
        match value {
            Value::String(s) if !s.is_empty() && !s.contains('\0') => Ok(s.clone()),
            _ => Err(self.bad(key, value, "a non-empty string")),
        }
    }

    fn abs_path(&self, key: &str, value: &Value) -> Result<PathBuf, ConfigError> {
        let s = self.string(key, value)?;
        if !s.starts_with('/') {
            return Err(self.bad(key, value, "an absolute path"));
        }
        Ok(PathBuf::from(s))
    }

    fn percentage(&self, key: &str, value: &Value) -> Result<f64, ConfigError> {
        let n = match value {
            Value::Integer(i) => *i as f64,
            Value::Float(f) => *f,
            _ => f64::NAN,
        };
        if n.is_finite() && n > 0.0 && n <= 100.0 {
            Ok(n)
        } else {
            Err(self.bad(key, value, "a number in (0, 100]"))
        }
    }

    fn apply(&self, cfg: &mut Config, key: &str, value: &Value) -> Result<(), ConfigError> {
        match key {
            "runtime.path" => cfg.runtime.path = self.string(key, value)?,
            "runtime.state_dir" => cfg.runtime.state_dir = self.abs_path(key, value)?,
            "runtime.reservation_timeout_seconds" => {
                cfg.runtime.reservation_timeout_seconds = match value {
                    Value::Integer(i) if *i >= 1 => *i as u64,
                    _ => return Err(self.bad(key, value, "a whole number of seconds, at least 1")),
                }
            }
            "devices.root" => cfg.devices.root = self.abs_path(key, value)?,
            "devices.inventory" => {
                let s = self.string(key, value)?;
                cfg.devices.inventory =
                    match s.as_str() {
                        "auto" => InventorySource::Auto,
                        "procfs" => InventorySource::Procfs,
                        "nvml" => InventorySource::Nvml,
                        other => match other.strip_prefix("file:") {
                            Some(p) if p.starts_with('/') => InventorySource::File(p.into()),
                            _ => return Err(self.bad(
                                key,
                                value,
                                "one of \"auto\", \"procfs\", \"nvml\", \"file:/absolute/path\"",
                            )),
                        },
                    }
            }
            "policy.max_gpus_per_container" => {
                cfg.policy.max_gpus_per_container = match value {
                    Value::Integer(i) if *i >= 1 && *i <= 64 => *i as usize,
                    _ => return Err(self.bad(key, value, "a whole number from 1 to 64")),
                }
            }
            "policy.all" => {
                cfg.policy.all = match value.as_str() {
                    Some("least-loaded") => AllPolicy::LeastLoaded,
                    Some("reject") => AllPolicy::Reject,
                    _ => return Err(self.bad(key, value, "\"least-loaded\" or \"reject\"")),
                }
            }
            "policy.max_thread_percentage_per_gpu" => {
                cfg.policy.max_thread_percentage_per_gpu = Some(self.percentage(key, value)?)
            }
            "policy.percentage_without_mps" => {
                cfg.policy.percentage_without_mps = match value.as_str() {
                    Some("reject") => Strictness::Reject,
                    Some("warn") => Strictness::Warn,
                    _ => return Err(self.bad(key, value, "\"reject\" or \"warn\"")),
                }
            }
            "policy.default_thread_percentage" => {
                cfg.policy.default_thread_percentage = Some(self.percentage(key, value)?)
            }
            "driver.inject" => {
                cfg.driver.inject = match value.as_str() {
                    Some("gpushare") => Inject::Gpushare,
                    Some("none") => Inject::None,
                    _ => return Err(self.bad(key, value, "\"gpushare\" or \"none\"")),
                }
            }
            "driver.root" => cfg.driver.root = Some(self.abs_path(key, value)?),
            "mps.root" => cfg.mps.root = self.abs_path(key, value)?,
            "mps.container_pipe_dir" => cfg.mps.container_pipe_dir = self.abs_path(key, value)?,
            "mps.control" => cfg.mps.control = self.string(key, value)?,
            "mps.compute_mode" => {
                cfg.mps.exclusive = match value.as_str() {
                    Some("exclusive") => true,
                    Some("leave") => false,
                    _ => return Err(self.bad(key, value, "\"exclusive\" or \"leave\"")),
                }
            }
            "cdi.spec" => cfg.cdi_spec = self.abs_path(key, value)?,
            "device_plugin.resource" => {
                let r = self.string(key, value)?;
                // kubelet's rule for an extended resource: a domain, '/',
                // a name of letters, digits, '-', '_', '.'.
                let ok = r.split_once('/').is_some_and(|(domain, name)| {
                    domain.contains('.')
                        && !name.is_empty()
                        && name.len() <= 63
                        && domain
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                });
                if !ok {
                    return Err(self.bad(
                        key,
                        value,
                        "an extended resource name, domain/name (e.g. \"gpushare.io/gpu-percent\")",
                    ));
                }
                cfg.device_plugin.resource = r;
            }
            "device_plugin.units_per_gpu" => {
                cfg.device_plugin.units_per_gpu = match value {
                    Value::Integer(i) if (1..=100).contains(i) => *i as u32,
                    _ => {
                        return Err(self.bad(
                            key,
                            value,
                            "a whole number from 1 to 100 (100: 1 % units; 20: 5 % steps)",
                        ))
                    }
                }
            }
            "device_plugin.require_allocation" => {
                cfg.device_plugin.require_allocation = match value {
                    Value::Boolean(b) => *b,
                    _ => return Err(self.bad(key, value, "true or false")),
                }
            }
            "device_plugin.pinned_memory" => {
                cfg.device_plugin.proportional_pinned_memory = match value.as_str() {
                    Some("proportional") => true,
                    Some("none") => false,
                    _ => return Err(self.bad(key, value, "\"proportional\" or \"none\"")),
                }
            }
            "mps.shm_size" => {
                let s = self.string(key, value)?;
                // The last character is the unit (a char boundary, whatever
                // the text holds).
                let at = s.char_indices().last().map_or(0, |(i, _)| i);
                let (num, unit) = s.split_at(at);
                let ok = !num.is_empty()
                    && num.len() <= 9
                    && num.bytes().all(|b| b.is_ascii_digit())
                    && num.bytes().any(|b| b != b'0')
                    && (matches!(unit, "K" | "M" | "G")
                        || (unit == "%" && num.parse::<u32>().is_ok_and(|n| n <= 100)));
                if !ok {
                    return Err(self.bad(
                        key,
                        value,
                        "a size with unit K, M or G (like \"1G\"), or a percentage of RAM (like \"10%\")",
                    ));
                }
                cfg.mps.shm_size = s;
            }
            _ => unreachable!("key {key} is listed in SECTIONS but not handled"),
        }
        Ok(())
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/t/config.toml"))
    }

    #[test]
    fn empty_file_is_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.runtime.path, "runc");
        assert_eq!(c.policy.max_gpus_per_container, 1);
        assert_eq!(c.devices.inventory, InventorySource::Auto);
        assert_eq!(c.policy.all, AllPolicy::LeastLoaded);
    }

    #[test]
    fn full_file_is_read() {
        let c = parse(
            r#"
[runtime]
path = "/usr/sbin/runc"
state_dir = "/tmp/s"
reservation_timeout_seconds = 5
[devices]
root = "/sim"
inventory = "file:/sim/inventory.toml"
[policy]
max_gpus_per_container = 2
all = "reject"
max_thread_percentage_per_gpu = 100
default_thread_percentage = 12.5
[driver]
inject = "none"
root = "/host"
[mps]
root = "/m"
container_pipe_dir = "/tmp/mps"
control = "/usr/bin/nvidia-cuda-mps-control"
shm_size = "512M"
"#,
        )
        .unwrap();
        assert_eq!(c.runtime.path, "/usr/sbin/runc");
        assert_eq!(c.runtime.reservation_timeout_seconds, 5);
        assert_eq!(
            c.devices.inventory,
            InventorySource::File("/sim/inventory.toml".into())
        );
        assert_eq!(c.policy.max_gpus_per_container, 2);
        assert_eq!(c.policy.all, AllPolicy::Reject);
        assert_eq!(c.policy.max_thread_percentage_per_gpu, Some(100.0));
        assert_eq!(c.policy.default_thread_percentage, Some(12.5));
        assert_eq!(c.mps.container_pipe_dir, PathBuf::from("/tmp/mps"));
        assert_eq!(c.mps.shm_size, "512M");
        assert_eq!(c.driver.inject, Inject::None);
        assert_eq!(c.driver_root(), Path::new("/host"));
        let d = parse("[devices]\nroot = \"/sim\"").unwrap();
        assert_eq!(d.driver.inject, Inject::Gpushare);
        assert_eq!(
            d.driver_root(),
            Path::new("/sim"),
            "devices.root by default"
        );
    }

    #[test]
    fn refusals_name_the_key() {
        let cases = [
            ("[policy]\nmax_gpu = 1", "`policy.max_gpu`"),
            ("[polcy]\nall = \"reject\"", "`polcy`"),
            ("[policy]\nall = \"most\"", "`policy.all`"),
            (
                "[policy]\nmax_gpus_per_container = 0",
                "`policy.max_gpus_per_container`",
            ),
            (
                "[policy]\nmax_gpus_per_container = \"1\"",
                "`policy.max_gpus_per_container`",
            ),
            (
                "[policy]\nmax_thread_percentage_per_gpu = 101",
                "max_thread_percentage_per_gpu",
            ),
            (
                "[policy]\ndefault_thread_percentage = 0",
                "default_thread_percentage",
            ),
            ("[devices]\ninventory = \"file:rel\"", "`devices.inventory`"),
            ("[devices]\nroot = \"relative\"", "`devices.root`"),
            ("[runtime]\npath = \"\"", "`runtime.path`"),
            ("[runtime]\nstate_dir = 3", "`runtime.state_dir`"),
            ("runtime = 1", "`runtime`"),
            ("[driver]\ninject = \"nvidia\"", "`driver.inject`"),
            ("[mps]\nshm_size = \"1X\"", "`mps.shm_size`"),
            ("[mps]\nshm_size = \"0G\"", "`mps.shm_size`"),
            ("[mps]\nshm_size = \"150%\"", "`mps.shm_size`"),
            ("[mps]\nshm_size = \"1G,nr_inodes=1\"", "`mps.shm_size`"),
            ("[mps]\nshm_size = 1", "`mps.shm_size`"),
            ("[mps]\nshm_size = \"1€\"", "`mps.shm_size`"),
            ("[driver]\nroot = \"rel\"", "`driver.root`"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text:?} gave {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let err = parse("[runtime]\npath = \"runc\"\nstate_dir = /x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn missing_file_is_defaults_other_errors_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let c = Config::load_path(&dir.path().join("nope.toml")).unwrap();
        assert!(c.source.is_none());
        // A directory where the file should be is an error, not defaults.
        assert!(matches!(
            Config::load_path(dir.path()),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn a_named_config_must_exist_and_be_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = Config::load_named(Some(missing.clone())).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
        assert!(e.to_string().contains("GPUSHARE_CONFIG names"), "{e}");
        let e = Config::load_named(Some("node/config.toml".into())).unwrap_err();
        assert!(matches!(e, ConfigError::Relative { .. }), "{e}");
        std::fs::write(&missing, "[runtime]\npath = \"/x/runc\"\n").unwrap();
        let c = Config::load_named(Some(missing)).unwrap();
        assert_eq!(c.runtime.path, "/x/runc");
    }
}
