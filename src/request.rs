//! What a container asks for, read from its `process.env` alone. Parsing is
//! purely syntactic; which GPU an id names is `decide`'s job, against the
//! inventory.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::ids::{is_mig, is_uuid_or_prefix, PciAddress};
use crate::text::shown;

pub const VISIBLE_DEVICES: &str = "NVIDIA_VISIBLE_DEVICES";
pub const THREAD_PERCENTAGE: &str = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";
pub const PINNED_MEM_LIMIT: &str = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT";
pub const PIPE_DIRECTORY: &str = "CUDA_MPS_PIPE_DIRECTORY";
pub const DRIVER_CAPABILITIES: &str = "NVIDIA_DRIVER_CAPABILITIES";

#[derive(Debug, Error, PartialEq)]
#[error("{var}={value} is refused: {why}; accepted: {accepted}")]
pub struct RequestError {
    pub var: &'static str,
    pub value: String,
    pub why: String,
    pub accepted: &'static str,
}

impl RequestError {
    /// A malformed request is the workload author's to fix.
    pub fn is_refusal(&self) -> bool {
        true
    }
}

const DEVICES_ACCEPTED: &str = "GPU indices, GPU-<uuid> (or a unique prefix) or PCI bus ids, comma-separated, or all, none, void";
const PERCENT_ACCEPTED: &str = "a decimal number greater than 0 and at most 100, like 25 or 12.5";
const CAPABILITIES_ACCEPTED: &str =
    "a comma list of compute, utility, video, graphics, display, compat32, ngx, or all";
const LIMIT_ACCEPTED: &str =
    "<size> or <device>=<size>[,<device>=<size>…] with size a whole number and unit K, M, G or T, like 2G or 0=512M";

/// One id in an `NVIDIA_VISIBLE_DEVICES` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceId {
    Index(u32),
    /// A full UUID or a prefix of one, `GPU-` included, as written.
    Uuid(String),
    /// Normalised to NVML's spelling.
    PciBusId(String),
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Index(i) => write!(f, "{i}"),
            DeviceId::Uuid(u) | DeviceId::PciBusId(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Devices {
    /// Unset, empty or containing `void`: not a GPU container.
    NotGpu,
    /// A GPU container with no GPU.
    None,
    All,
    List(Vec<DeviceId>),
}

impl fmt::Display for Devices {
    /// As `NVIDIA_VISIBLE_DEVICES` would say it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Devices::NotGpu => f.write_str("void"),
            Devices::None => f.write_str("none"),
            Devices::All => f.write_str("all"),
            Devices::List(l) => {
                let ids: Vec<String> = l.iter().map(ToString::to_string).collect();
                f.write_str(&ids.join(","))
            }
        }
    }
}

/// A thread percentage as written (so the spec keeps the user's spelling)
/// with its value.
#[derive(Debug, Clone, PartialEq)]
pub struct Percentage {
    pub text: String,
    pub value: f64,
}

/// A pinned-memory limit: either one size for "my GPU" or per-device sizes,
/// device indices counting the container's own GPUs from 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedLimit {
    pub bare: bool,
    /// (container device index, size in bytes, normalised size text)
    pub entries: Vec<(u32, u64, String)>,
}

/// One of the driver capabilities NVIDIA's container toolkit defines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    Compute,
    Utility,
    Video,
    Graphics,
    Display,
    Compat32,
    Ngx,
}

impl Capability {
    pub const ALL: [Capability; 7] = [
        Capability::Compute,
        Capability::Utility,
        Capability::Video,
        Capability::Graphics,
        Capability::Display,
        Capability::Compat32,
        Capability::Ngx,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Capability::Compute => "compute",
            Capability::Utility => "utility",
            Capability::Video => "video",
            Capability::Graphics => "graphics",
            Capability::Display => "display",
            Capability::Compat32 => "compat32",
            Capability::Ngx => "ngx",
        }
    }
}

/// `NVIDIA_DRIVER_CAPABILITIES` as asked: `all`, or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capabilities {
    /// Every capability the driver's injector provides.
    All,
    List(Vec<Capability>),
}

impl Capabilities {
    /// Ref: NVIDIA container toolkit: unset or empty means `utility,compute`.
    pub fn default_set() -> Capabilities {
        Capabilities::List(vec![Capability::Compute, Capability::Utility])
    }

    pub fn contains(&self, c: Capability) -> bool {
        match self {
            Capabilities::All => true,
            Capabilities::List(l) => l.contains(&c),
        }
    }
}

impl fmt::Display for Capabilities {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Capabilities::All => f.write_str("all"),
            Capabilities::List(l) => {
                let names: Vec<&str> = l.iter().map(|c| c.name()).collect();
                f.write_str(&names.join(","))
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub devices: Devices,
    pub thread_percentage: Option<Percentage>,
    pub pinned_mem_limit: Option<PinnedLimit>,
    /// Which parts of the driver's user-space the container gets.
    pub capabilities: Capabilities,
}

impl Request {
    pub fn is_gpu(&self) -> bool {
        self.devices != Devices::NotGpu
    }

    /// Reads a request from `KEY=VALUE` entries; a later entry wins, as in a
    /// shell. A non-GPU container's MPS variables are its own business and
    /// are not checked: its spec is left exactly as it was.
    pub fn from_env<'a, I>(env: I) -> Result<Request, RequestError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        let (mut devices, mut percent, mut limit, mut caps) = (None, None, None, None);
        for entry in env {
            let Some((key, value)) = entry.split_once('=') else {
                continue;
            };
            match key {
                VISIBLE_DEVICES => devices = Some(value),
                THREAD_PERCENTAGE => percent = Some(value),
                PINNED_MEM_LIMIT => limit = Some(value),
                DRIVER_CAPABILITIES => caps = Some(value),
                _ => {}
            }
        }
        let devices = parse_devices(devices.unwrap_or(""))?;
        if devices == Devices::NotGpu {
            return Ok(Request {
                devices,
                thread_percentage: None,
                pinned_mem_limit: None,
                capabilities: Capabilities::default_set(),
            });
        }
        Ok(Request {
            devices,
            thread_percentage: percent.map(parse_percentage).transpose()?,
            pinned_mem_limit: limit.map(parse_limit).transpose()?,
            capabilities: parse_capabilities(caps.unwrap_or(""))?,
        })
    }
}

impl Request {
    /// As `from_env`, with the GPUs that CDI devices name (`cdi`, from the
    /// spec's hooks): they are the request, since an engine that applies two
    /// devices keeps only the last one's variable, and two of them must be
    /// seen as two GPUs.
    pub fn from_spec<'a, I>(env: I, cdi: &[&str]) -> Result<Request, RequestError>
    where
        I: IntoIterator<Item = &'a str>,
    {
        if cdi.is_empty() {
            return Request::from_env(env);
        }
        let named = format!("{VISIBLE_DEVICES}={}", cdi.join(","));
        let env: Vec<&str> = env.into_iter().collect();
        Request::from_env(env.into_iter().chain([named.as_str()]))
    }
}

fn devices_err(value: &str, why: String) -> RequestError {
    RequestError {
        var: VISIBLE_DEVICES,
        value: shown(value),
        why,
        accepted: DEVICES_ACCEPTED,
    }
}

pub fn parse_devices(value: &str) -> Result<Devices, RequestError> {
    let trimmed = value.trim();
    // Ref: NVIDIA container toolkit: empty or "void" means "not a GPU
    // container", so those containers are left alone entirely.
    if trimmed.is_empty() || trimmed.split(',').any(|t| t.trim() == "void") {
        return Ok(Devices::NotGpu);
    }
    if trimmed == "none" {
        return Ok(Devices::None);
    }
    if trimmed == "all" {
        return Ok(Devices::All);
    }
    let mut ids = Vec::new();
    for token in trimmed.split(',') {
        let t = token.trim();
        let id = if t.is_empty() {
            return Err(devices_err(value, "the list has an empty entry".into()));
        } else if t == "all" || t == "none" {
            return Err(devices_err(
                value,
                format!("{t} cannot be combined with other ids"),
            ));
        } else if t.bytes().all(|b| b.is_ascii_digit()) {
            match t.parse() {
                Ok(i) => DeviceId::Index(i),
                Err(_) => {
                    return Err(devices_err(
                        value,
                        format!("index {} is out of range", shown(t)),
                    ))
                }
            }
        } else if t.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("GPU-")) {
            if !is_uuid_or_prefix(t) {
                return Err(devices_err(
                    value,
                    format!("{} is not a GPU UUID or a prefix of one", shown(t)),
                ));
            }
            DeviceId::Uuid(t.to_owned())
        } else if is_mig(t) {
            return Err(devices_err(value, "MIG devices are not supported".into()));
        } else if let Some(address) = PciAddress::parse(t) {
            DeviceId::PciBusId(address.to_string())
        } else {
            return Err(devices_err(
                value,
                format!("{} is not a GPU index, UUID or PCI bus id", shown(t)),
            ));
        };
        ids.push(id);
    }
    Ok(Devices::List(ids))
}

/// Ref: NVIDIA container toolkit: a comma list; `all` anywhere in it means
/// every capability; unset or empty means `utility,compute`. An unknown
/// name is refused rather than ignored, so a typo never leaves a container
/// without the driver it asked for.
pub fn parse_capabilities(value: &str) -> Result<Capabilities, RequestError> {
    let err = |why: String| RequestError {
        var: DRIVER_CAPABILITIES,
        value: shown(value),
        why,
        accepted: CAPABILITIES_ACCEPTED,
    };
    if value.trim().is_empty() {
        return Ok(Capabilities::default_set());
    }
    let mut list = Vec::new();
    let mut all = false;
    for token in value.split(',') {
        let t = token.trim();
        if t.is_empty() {
            return Err(err("the list has an empty entry".into()));
        }
        if t == "all" {
            all = true;
            continue;
        }
        match Capability::ALL.iter().find(|c| c.name() == t) {
            Some(c) if !list.contains(c) => list.push(*c),
            Some(_) => {}
            None => return Err(err(format!("{} is not a driver capability", shown(t)))),
        }
    }
    if all {
        return Ok(Capabilities::All);
    }
    list.sort();
    Ok(Capabilities::List(list))
}

pub fn parse_percentage(value: &str) -> Result<Percentage, RequestError> {
    let err = |why: &str| RequestError {
        var: THREAD_PERCENTAGE,
        value: shown(value),
        why: why.to_owned(),
        accepted: PERCENT_ACCEPTED,
    };
    // Plain decimals only: Rust's float parser would also take "NaN",
    // "inf" and "1e3", none of which is a percentage anyone means.
    let (int, frac) = value.split_once('.').unwrap_or((value, "0"));
    let digits = |s: &str| !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) {
        return Err(err("not a plain decimal number"));
    }
    let n: f64 = value
        .parse()
        .map_err(|_| err("not a plain decimal number"))?;
    if n <= 0.0 {
        return Err(err("a share of 0 would give the container no GPU threads"));
    }
    if n > 100.0 {
        return Err(err("more than 100 percent"));
    }
    Ok(Percentage {
        text: value.to_owned(),
        value: n,
    })
}

pub fn parse_limit(value: &str) -> Result<PinnedLimit, RequestError> {
    let err = |why: String| RequestError {
        var: PINNED_MEM_LIMIT,
        value: shown(value),
        why,
        accepted: LIMIT_ACCEPTED,
    };
    if !value.contains('=') {
        let (bytes, text) = parse_size(value).map_err(err)?;
        return Ok(PinnedLimit {
            bare: true,
            entries: vec![(0, bytes, text)],
        });
    }
    let mut entries: Vec<(u32, u64, String)> = Vec::new();
    for part in value.split(',') {
        let (dev, size) = part
            .split_once('=')
            .ok_or_else(|| err(format!("{} is not <device>=<size>", shown(part))))?;
        let dev = dev.trim();
        if dev.is_empty() || dev.len() > 3 || !dev.bytes().all(|b| b.is_ascii_digit()) {
            return Err(err(format!("{} is not a device index", shown(dev))));
        }
        let dev: u32 = dev.parse().expect("three digits fit");
        let (bytes, text) = parse_size(size.trim()).map_err(err)?;
        if entries.iter().any(|(d, _, _)| *d == dev) {
            return Err(err(format!("device {dev} is given twice")));
        }
        entries.push((dev, bytes, text));
    }
    Ok(PinnedLimit {
        bare: false,
        entries,
    })
}

/// "2G", "512m", "512MB" → bytes and the normalised text ("2G", "512M").
fn parse_size(s: &str) -> Result<(u64, String), String> {
    let s = s.trim();
    let upper = s.to_ascii_uppercase();
    let body = upper.strip_suffix('B').unwrap_or(&upper);
    let unit = body.chars().last().filter(|c| "KMGT".contains(*c));
    let Some(unit) = unit else {
        return Err(format!("size {} needs a unit K, M, G or T", shown(s)));
    };
    let num = &body[..body.len() - 1];
    if num.is_empty() || num.len() > 9 || !num.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "size {} is not a whole number with a unit",
            shown(s)
        ));
    }
    let n: u64 = num.parse().expect("nine digits fit");
    if n == 0 {
        return Err("a limit of 0 would leave no pinned memory".into());
    }
    let shift = match unit {
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => 40,
    };
    Ok((n << shift, format!("{n}{unit}")))
}

impl PinnedLimit {
    /// The MPS spelling for the container: `0=2G,1=512M`.
    pub fn render(&self) -> String {
        self.entries
            .iter()
            .map(|(d, _, t)| format!("{d}={t}"))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(env: &[&str]) -> Result<Request, RequestError> {
        Request::from_env(env.iter().copied())
    }

    #[test]
    fn device_forms() {
        let list = |v: &str| match parse_devices(v).unwrap() {
            Devices::List(l) => l,
            other => panic!("{v}: {other:?}"),
        };
        assert_eq!(parse_devices("").unwrap(), Devices::NotGpu);
        assert_eq!(parse_devices("  ").unwrap(), Devices::NotGpu);
        assert_eq!(parse_devices("void").unwrap(), Devices::NotGpu);
        assert_eq!(parse_devices("0,void").unwrap(), Devices::NotGpu);
        assert_eq!(parse_devices("none").unwrap(), Devices::None);
        assert_eq!(parse_devices("all").unwrap(), Devices::All);
        assert_eq!(parse_devices(" all ").unwrap(), Devices::All);
        assert_eq!(list("1"), vec![DeviceId::Index(1)]);
        assert_eq!(
            list(" 0 , 1 "),
            vec![DeviceId::Index(0), DeviceId::Index(1)]
        );
        assert_eq!(
            list("GPU-4a1c9d2e-0000-4000-8000-000000000000"),
            vec![DeviceId::Uuid(
                "GPU-4a1c9d2e-0000-4000-8000-000000000000".into()
            )]
        );
        assert_eq!(list("gpu-4A1C"), vec![DeviceId::Uuid("gpu-4A1C".into())]);
        assert_eq!(
            list("0000:00:1e.0"),
            vec![DeviceId::PciBusId("00000000:00:1E.0".into())]
        );
        assert_eq!(
            list("0, GPU-4a1c,00000000:00:1F.0"),
            vec![
                DeviceId::Index(0),
                DeviceId::Uuid("GPU-4a1c".into()),
                DeviceId::PciBusId("00000000:00:1F.0".into())
            ]
        );
    }

    #[test]
    fn malformed_devices_name_variable_value_and_what_is_accepted() {
        for v in [
            "GPU-",
            "GPU-xyz",
            "0,,1",
            "0,",
            "all,0",
            "none,1",
            "-1",
            "1.5",
            "abc",
            "99999999999",
            "MIG-1234",
            "0\n1",
            "0\u{0}",
            "../0",
            "GP€",
            "é",
            "GPU-é",
        ] {
            let e = parse_devices(v).unwrap_err();
            assert_eq!(e.var, VISIBLE_DEVICES);
            let msg = e.to_string();
            assert!(msg.starts_with("NVIDIA_VISIBLE_DEVICES="), "{msg}");
            assert!(msg.contains("accepted:"), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\0'), "{msg:?}");
        }
    }

    #[test]
    fn percentages() {
        for (v, n) in [
            ("50", 50.0),
            ("100", 100.0),
            ("0.5", 0.5),
            ("12.5", 12.5),
            ("050", 50.0),
        ] {
            assert_eq!(parse_percentage(v).unwrap().value, n, "{v}");
        }
        for v in [
            "0", "0.0", "101", "100.1", "-1", "1e3", "NaN", "inf", "", " 5", "5%", ".5", "5.",
            "1,5",
        ] {
            let e = parse_percentage(v).unwrap_err();
            assert_eq!(e.var, THREAD_PERCENTAGE, "{v}");
        }
    }

    #[test]
    fn limits() {
        let l = parse_limit("2G").unwrap();
        assert!(l.bare);
        assert_eq!(l.render(), "0=2G");
        assert_eq!(l.entries[0].1, 2 << 30);
        assert_eq!(parse_limit("0=512MB").unwrap().render(), "0=512M");
        assert_eq!(parse_limit("0=1g,1=256m").unwrap().render(), "0=1G,1=256M");
        assert_eq!(parse_limit("1T").unwrap().entries[0].1, 1 << 40);
        for v in [
            "0=",
            "=1G",
            "2",
            "0=2",
            "0=0G",
            "G",
            "0=1.5G",
            "0=2X",
            "a=1G",
            "0=1G,0=2G",
            "",
            "0=-1G",
            "0=1G,",
        ] {
            let e = parse_limit(v).unwrap_err();
            assert_eq!(e.var, PINNED_MEM_LIMIT, "{v}");
        }
    }

    #[test]
    fn cdi_devices_are_the_request_whatever_the_variable_says() {
        let env = [
            "NVIDIA_VISIBLE_DEVICES=GPU-b",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
        ];
        let r = Request::from_spec(env, &["GPU-a", "GPU-b"]).unwrap();
        assert_eq!(
            r.devices,
            Devices::List(vec![
                DeviceId::Uuid("GPU-a".into()),
                DeviceId::Uuid("GPU-b".into())
            ])
        );
        assert_eq!(r.thread_percentage.unwrap().value, 30.0);
        let r = Request::from_spec(["PATH=/bin"], &["GPU-a"]).unwrap();
        assert_eq!(
            r.devices,
            Devices::List(vec![DeviceId::Uuid("GPU-a".into())])
        );
        let r = Request::from_spec(["NVIDIA_VISIBLE_DEVICES=1"], &[]).unwrap();
        assert_eq!(r.devices, Devices::List(vec![DeviceId::Index(1)]));
    }

    #[test]
    fn later_entries_win_and_non_gpu_ignores_mps_vars() {
        let r = req(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES=1"]).unwrap();
        assert_eq!(r.devices, Devices::List(vec![DeviceId::Index(1)]));
        let r = req(&["NVIDIA_VISIBLE_DEVICES=1", "NVIDIA_VISIBLE_DEVICES="]).unwrap();
        assert!(!r.is_gpu());
        let r = req(&["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=nonsense", "PATH=/bin"]).unwrap();
        assert!(!r.is_gpu());
        let r = req(&[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=30",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=1G",
        ])
        .unwrap();
        assert_eq!(r.thread_percentage.unwrap().value, 30.0);
        assert_eq!(r.pinned_mem_limit.unwrap().render(), "0=1G");
        let e = req(&[
            "NVIDIA_VISIBLE_DEVICES=0",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=0",
        ])
        .unwrap_err();
        assert_eq!(e.var, THREAD_PERCENTAGE);
        // An entry without '=' is not a variable and changes nothing.
        let r = req(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_VISIBLE_DEVICES"]).unwrap();
        assert!(r.is_gpu());
    }

    #[test]
    fn capabilities() {
        use Capability::*;
        let list = |v: &str| match parse_capabilities(v).unwrap() {
            Capabilities::List(l) => l,
            Capabilities::All => panic!("{v}: all"),
        };
        assert_eq!(list(""), vec![Compute, Utility]);
        assert_eq!(list("  "), vec![Compute, Utility]);
        assert_eq!(list("utility"), vec![Utility]);
        assert_eq!(list("video, compute,compute"), vec![Compute, Video]);
        assert_eq!(list("graphics"), vec![Graphics]);
        assert_eq!(parse_capabilities("all").unwrap(), Capabilities::All);
        assert_eq!(
            parse_capabilities("compute,all").unwrap(),
            Capabilities::All
        );
        for v in [
            "gpu",
            "compute,",
            "Compute",
            "compute;utility",
            "all,bogus",
            "\u{202e}",
        ] {
            let e = parse_capabilities(v).unwrap_err();
            assert_eq!(e.var, DRIVER_CAPABILITIES, "{v}");
            assert!(e.to_string().contains("accepted:"), "{e}");
        }
        // Not checked for a container that asks for no GPU.
        let r = req(&["NVIDIA_DRIVER_CAPABILITIES=nonsense"]).unwrap();
        assert!(!r.is_gpu());
        let e = req(&["NVIDIA_VISIBLE_DEVICES=0", "NVIDIA_DRIVER_CAPABILITIES=gpu"]).unwrap_err();
        assert_eq!(e.var, DRIVER_CAPABILITIES);
        let r = req(&["NVIDIA_VISIBLE_DEVICES=0"]).unwrap();
        assert_eq!(r.capabilities, Capabilities::default_set());
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let v = "x".repeat(65536);
        let msg = parse_devices(&v).unwrap_err().to_string();
        assert!(msg.len() < 600, "{}", msg.len());
        assert!(msg.contains("65536 bytes"));
    }
}
