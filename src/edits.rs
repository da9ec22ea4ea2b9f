//! `ContainerEdits`: the one value that says what a GPU container gets.
//! The shim applies it to the spec, the hook applies it live, and `explain`
//! prints it, so what `explain` shows is what happens.

use std::path::{Path, PathBuf};

use nix::sys::stat::{major, minor, SFlag};
use oci_spec::runtime::{LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType};
use serde::Serialize;
use serde_json::{json, Map, Value};
use thiserror::Error;

use crate::decide::Assignment;
use crate::driver::{Driver, MOUNT_OPTIONS};
use crate::request::{
    Capabilities, PINNED_MEM_LIMIT, PIPE_DIRECTORY, THREAD_PERCENTAGE, VISIBLE_DEVICES,
};

/// The annotation the shim leaves on specs it rewrote: the assigned UUIDs,
/// for people and engines to see (`ctr c info`, `podman inspect`). Nothing
/// in gpushare trusts it: the ledger says what the shim did.
pub const ANNOTATION_GPUS: &str = "gpushare/gpus";

/// Annotation keys that are gpushare's own.
pub const ANNOTATION_PREFIX: &str = "gpushare/";

#[derive(Debug, Error)]
pub enum EditsError {
    #[error("device node {path} is missing: {source}; load the NVIDIA driver (nvidia-modprobe -u -c=0 creates the uvm nodes) or fix devices.root in the config")]
    MissingNode {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{path} is not a character device; devices.root must point at the real /dev (or `gpushare simulate`'s)")]
    NotCharDevice { path: PathBuf },
    #[error("config.json: {0} has an unexpected type; the bundle's config.json must be an OCI runtime spec")]
    Shape(&'static str),
}

/// What makes a container a client of its GPU's MPS daemon, as data: the
/// host's side (the daemon's pipe directory, the GPU's shared memory) and
/// where CUDA looks for the pipes inside the container.
#[derive(Debug, Clone, PartialEq)]
pub struct MpsClient {
    pub pipe_dir: PathBuf,
    pub shm_dir: PathBuf,
    /// The daemon's root-only socket's name in its pipe directory.
    pub privileged_socket: &'static str,
    pub container_pipe_dir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceEdit {
    /// Path inside the container.
    pub path: String,
    /// The host node it stands for.
    pub host_path: PathBuf,
    pub major: u64,
    pub minor: u64,
    pub file_mode: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MountEdit {
    pub destination: String,
    pub source: PathBuf,
    #[serde(rename = "type")]
    pub typ: String,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct ContainerEdits {
    pub devices: Vec<DeviceEdit>,
    pub mounts: Vec<MountEdit>,
    /// `KEY=VALUE`; each replaces every earlier entry of its key.
    pub env: Vec<String>,
    #[serde(skip)]
    pub annotations: Vec<(String, String)>,
}

/// The host nodes every GPU container needs besides its GPU's own.
const CONTROL_NODES: &[&str] = &["nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"];

impl ContainerEdits {
    /// What an assignment gives: its GPUs' nodes and the control nodes
    /// (found under `dev_root`, with the host's real numbers), the
    /// environment that names them, and, when its GPU's daemon runs, what
    /// makes it an MPS client.
    pub fn for_assignment(
        a: &Assignment,
        dev_root: &Path,
        mps: Option<&MpsClient>,
    ) -> Result<ContainerEdits, EditsError> {
        let mut edits = ContainerEdits::default();
        if a.gpus.is_empty() {
            return Ok(edits);
        }
        let dev = dev_root.join("dev");
        let names = a
            .gpus
            .iter()
            .map(|g| format!("nvidia{}", g.minor))
            .chain(CONTROL_NODES.iter().map(|s| s.to_string()));
        for name in names {
            edits
                .devices
                .push(device_edit(&dev.join(&name), &format!("/dev/{name}"))?);
        }
        let uuids: Vec<&str> = a.gpus.iter().map(|g| g.uuid.as_str()).collect();
        edits
            .env
            .push(format!("{VISIBLE_DEVICES}={}", uuids.join(",")));
        if let Some(p) = &a.thread_percentage {
            edits.env.push(format!("{THREAD_PERCENTAGE}={}", p.text));
        }
        if let Some(l) = &a.pinned_mem_limit {
            edits.env.push(format!("{PINNED_MEM_LIMIT}={l}"));
        }
        if let (true, Some(client)) = (a.mps, mps) {
            edits.mps_client(client);
        }
        edits
            .annotations
            .push((ANNOTATION_GPUS.to_owned(), uuids.join(",")));
        Ok(edits)
    }

    /// The driver's files a container asking for `caps` gets, each
    /// bind-mounted read-only where the image's loader (whose directory is
    /// `library_dir`) or its PATH finds it.
    pub fn add_driver(&mut self, driver: &Driver, caps: &Capabilities, library_dir: &str) {
        self.mounts
            .extend(driver.files_for(caps).map(|f| MountEdit {
                destination: f.destination(library_dir),
                source: f.path.clone(),
                typ: "bind".into(),
                options: MOUNT_OPTIONS.map(String::from).to_vec(),
            }));
    }

    /// Makes the container a client of its GPU's MPS daemon, one that
    /// cannot break it: the daemon's pipe directory where CUDA looks for it
    /// (`mps.container_pipe_dir`), read-only, so nothing there can be
    /// created, renamed or removed (no impostor daemon, no file on the
    /// host's /run); the root-only `control_privileged` socket masked with
    /// /dev/null, so no client can `quit` the daemon; and the GPU's own
    /// shared-memory tmpfs as /dev/shm.
    fn mps_client(&mut self, client: &MpsClient) {
        let pipe_dir = client.container_pipe_dir.display().to_string();
        let opts = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        self.mounts.push(MountEdit {
            destination: pipe_dir.clone(),
            source: client.pipe_dir.clone(),
            typ: "bind".into(),
            options: opts(&["bind", "ro", "nosuid", "nodev", "noexec"]),
        });
        self.mounts.push(MountEdit {
            destination: format!("{pipe_dir}/{}", client.privileged_socket),
            source: "/dev/null".into(),
            typ: "bind".into(),
            options: opts(&["bind", "ro", "nosuid", "nodev", "noexec"]),
        });
        self.mounts.push(MountEdit {
            destination: "/dev/shm".into(),
            source: client.shm_dir.clone(),
            typ: "bind".into(),
            options: opts(&["bind", "nosuid", "nodev", "noexec"]),
        });
        self.env.push(format!("{PIPE_DIRECTORY}={pipe_dir}"));
    }

    pub fn is_empty(&self) -> bool {
        self.devices.is_empty() && self.mounts.is_empty() && self.env.is_empty()
    }

    /// Applies the edits to a spec. Idempotent: every entry gpushare adds
    /// first replaces any equal one, so applying twice equals applying once.
    pub fn apply_to_spec(&self, spec: &mut Value) -> Result<(), EditsError> {
        let root = spec
            .as_object_mut()
            .ok_or(EditsError::Shape("the top level"))?;

        let linux = object_at(root, "linux", "linux")?;
        let devices = array_at(linux, "devices", "linux.devices")?;
        for d in &self.devices {
            devices.retain(|v| v.get("path").and_then(Value::as_str) != Some(&d.path));
            let dev = LinuxDeviceBuilder::default()
                .path(&d.path)
                .typ(LinuxDeviceType::C)
                .major(d.major as i64)
                .minor(d.minor as i64)
                .file_mode(d.file_mode)
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("device fields are set");
            devices.push(serde_json::to_value(dev).expect("device serialises"));
        }
        let resources = object_at(linux, "resources", "linux.resources")?;
        let rules = array_at(resources, "devices", "linux.resources.devices")?;
        for d in &self.devices {
            let rule = serde_json::to_value(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(d.major as i64)
                    .minor(d.minor as i64)
                    .access("rw")
                    .build()
                    .expect("rule fields are set"),
            )
            .expect("rule serialises");
            rules.retain(|v| *v != rule);
            // Ref: runc applies device rules in order, the last match
            // winning, so allows go after the usual leading deny-all.
            rules.push(rule);
        }

        if !self.mounts.is_empty() {
            let mounts = array_at(root, "mounts", "mounts")?;
            for m in &self.mounts {
                mounts.retain(|v| {
                    v.get("destination").and_then(Value::as_str) != Some(&m.destination)
                });
                mounts.push(json!({
                    "destination": m.destination,
                    "type": m.typ,
                    "source": m.source,
                    "options": m.options,
                }));
            }
        }

        let process = object_at(root, "process", "process")?;
        set_env(array_at(process, "env", "process.env")?, &self.env);

        // Keys under `gpushare/` are the shim's alone: any other the spec
        // carries (set by a pod, an image or by hand) goes, so nothing
        // downstream can take it for what the shim wrote.
        if let Some(ann) = root.get_mut("annotations").and_then(Value::as_object_mut) {
            ann.retain(|k, _| !k.starts_with(ANNOTATION_PREFIX));
        }
        if !self.annotations.is_empty() {
            let ann = object_at(root, "annotations", "annotations")?;
            for (k, v) in &self.annotations {
                ann.insert(k.clone(), Value::String(v.clone()));
            }
        }

        Ok(())
    }
}

/// Sets each `KEY=VALUE` of `vars` in a process's `env`, replacing every
/// earlier entry of its key.
pub fn set_env(env: &mut Vec<Value>, vars: &[String]) {
    for kv in vars {
        let key = &kv[..=kv.find('=').unwrap_or(kv.len() - 1)];
        env.retain(|v| !v.as_str().is_some_and(|s| s.starts_with(key)));
        env.push(Value::String(kv.clone()));
    }
}

fn device_edit(host: &Path, container: &str) -> Result<DeviceEdit, EditsError> {
    let st = nix::sys::stat::stat(host).map_err(|source| EditsError::MissingNode {
        path: host.to_owned(),
        source,
    })?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFCHR {
        return Err(EditsError::NotCharDevice {
            path: host.to_owned(),
        });
    }
    Ok(DeviceEdit {
        path: container.to_owned(),
        host_path: host.to_owned(),
        major: major(st.st_rdev),
        minor: minor(st.st_rdev),
        file_mode: st.st_mode & 0o777,
    })
}

fn object_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    what: &'static str,
) -> Result<&'a mut Map<String, Value>, EditsError> {
    let v = parent
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().ok_or(EditsError::Shape(what))
}

fn array_at<'a>(
    parent: &'a mut Map<String, Value>,
    key: &str,
    what: &'static str,
) -> Result<&'a mut Vec<Value>, EditsError> {
    let v = parent
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()));
    if v.is_null() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut().ok_or(EditsError::Shape(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edits() -> ContainerEdits {
        ContainerEdits {
            devices: vec![DeviceEdit {
                path: "/dev/nvidia1".into(),
                host_path: "/sim/dev/nvidia1".into(),
                major: 195,
                minor: 1,
                file_mode: 0o666,
            }],
            mounts: vec![],
            env: vec![
                "NVIDIA_VISIBLE_DEVICES=GPU-1".into(),
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2G".into(),
            ],
            annotations: vec![(ANNOTATION_GPUS.into(), "GPU-1".into())],
        }
    }

    #[test]
    fn unknown_fields_survive_and_applying_twice_equals_once() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/config-unknown-fields.json"
        ))
        .unwrap();
        let original: Value = serde_json::from_str(&text).unwrap();
        let mut once = original.clone();
        edits().apply_to_spec(&mut once).unwrap();
        let mut twice = once.clone();
        edits().apply_to_spec(&mut twice).unwrap();
        assert_eq!(once, twice);

        // Everything not ours is unchanged, the unknown fields included.
        for key in [
            "ociVersion",
            "root",
            "hostname",
            "mounts",
            "x-vendor-extension",
        ] {
            assert_eq!(once[key], original[key], "{key}");
        }
        assert_eq!(
            once["linux"]["x-future-field"],
            original["linux"]["x-future-field"]
        );
        assert_eq!(once["process"]["args"], original["process"]["args"]);
        assert_eq!(
            once["process"]["x-process-extra"],
            original["process"]["x-process-extra"]
        );
        assert_eq!(once["hooks"]["prestart"], original["hooks"]["prestart"]);
        let env: Vec<&str> = once["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"PATH=/usr/bin:/bin"));
        assert_eq!(
            env.iter()
                .filter(|e| e.starts_with("NVIDIA_VISIBLE_DEVICES="))
                .count(),
            1
        );
        assert!(env.contains(&"NVIDIA_VISIBLE_DEVICES=GPU-1"));
        assert!(env.contains(&"CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=2G"));
        let devs = once["linux"]["devices"].as_array().unwrap();
        assert_eq!(devs.len(), 2, "the fixture's own device plus ours");
        assert_eq!(
            devs[1],
            json!({"path": "/dev/nvidia1", "type": "c", "major": 195, "minor": 1, "fileMode": 438, "uid": 0, "gid": 0})
        );
        let rules = once["linux"]["resources"]["devices"].as_array().unwrap();
        assert_eq!(rules[0], json!({"allow": false, "access": "rwm"}));
        assert_eq!(
            rules.last().unwrap(),
            &json!({"allow": true, "type": "c", "major": 195, "minor": 1, "access": "rw"})
        );
        assert_eq!(once["annotations"][ANNOTATION_GPUS], "GPU-1");
        assert_eq!(once["annotations"]["org.example"], "kept");
        assert_eq!(once["hooks"], original["hooks"], "no hook is added");
    }

    #[test]
    fn gpushare_annotations_the_shim_did_not_write_are_dropped() {
        let mut spec = json!({"annotations": {
            "gpushare/gpus": "GPU-0,GPU-1\u{1b}[2J",
            "gpushare/thread-percentage": "100",
            "io.kubernetes.cri.sandbox-name": "pod-a",
            "GPUshare/gpus": "not ours: keys are case-sensitive",
        }});
        edits().apply_to_spec(&mut spec).unwrap();
        assert_eq!(
            spec["annotations"],
            json!({
                "gpushare/gpus": "GPU-1",
                "io.kubernetes.cri.sandbox-name": "pod-a",
                "GPUshare/gpus": "not ours: keys are case-sensitive",
            })
        );
    }

    #[test]
    fn a_minimal_spec_gains_the_sections_it_lacks() {
        let mut spec = json!({"ociVersion": "1.0.2", "process": {"args": ["sh"]}, "linux": null});
        edits().apply_to_spec(&mut spec).unwrap();
        assert_eq!(spec["linux"]["devices"].as_array().unwrap().len(), 1);
        assert!(spec.get("hooks").is_none());
    }

    #[test]
    fn a_spec_of_the_wrong_shape_is_an_error_not_a_panic() {
        for mut spec in [
            json!({"linux": []}),
            json!({"process": {"env": "x"}}),
            json!({"linux": {"resources": {"devices": {}}}}),
        ] {
            let e = edits().apply_to_spec(&mut spec).unwrap_err();
            assert!(e.to_string().contains("unexpected type"), "{e}");
        }
    }

    #[test]
    fn a_missing_or_wrong_node_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = device_edit(&dir.path().join("nvidia0"), "/dev/nvidia0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("nvidia0") && e.contains("devices.root"), "{e}");
        std::fs::write(dir.path().join("nvidiactl"), "").unwrap();
        let e = device_edit(&dir.path().join("nvidiactl"), "/dev/nvidiactl").unwrap_err();
        assert!(matches!(e, EditsError::NotCharDevice { .. }));
        let null = device_edit(Path::new("/dev/null"), "/dev/null").unwrap();
        assert_eq!((null.major, null.minor), (1, 3));
    }
}
