//! A bundle's `config.json`, held as JSON rather than as `oci_spec::Spec`:
//! every field gpushare does not touch must survive the rewrite byte for
//! byte in meaning, including fields newer than the `oci-spec` crate, which
//! a typed round-trip would drop.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::sys::{open_regular, replace, Irregular};

/// The hook argument before the GPU a CDI device of gpushare's spec names.
pub const CDI_DEVICE_ARG: &str = "--cdi-device";

#[derive(Debug, Error)]
pub enum BundleError {
    #[error("cannot read {path}: {source}; check the bundle path (--bundle)")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON (line {line}, column {column}): {message}; the bundle's config.json must be an OCI runtime spec")]
    Json {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {what}; the bundle's config.json must be an OCI runtime spec")]
    Shape { path: PathBuf, what: String },
    #[error("{path} is {bytes} bytes; gpushare reads runtime specs of at most 16 MiB: shrink it")]
    TooLarge { path: PathBuf, bytes: u64 },
    #[error(
        "{path} is {kind}, not a regular file; the bundle's config.json must be a regular file"
    )]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("cannot rewrite {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A runtime spec is a few KiB; one this large is not worth parsing on the
/// path of every container start.
pub const MAX_CONFIG_BYTES: u64 = 16 << 20;

impl BundleError {
    /// What the engine or the image's author must fix (exit 2): a spec that
    /// is not a regular file, or too large to read.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            BundleError::TooLarge { .. } | BundleError::NotRegular { .. }
        )
    }
}

/// A bundle's config.json as read, not yet parsed: enough to tell whether
/// the container asks for a GPU (`env`) without building the whole
/// document.
pub struct Raw {
    pub dir: PathBuf,
    bytes: Vec<u8>,
    mode: u32,
}

/// Of a spec, only what tells whether a container asks for a GPU: its
/// process's environment, borrowed from the bytes read.
#[derive(serde::Deserialize)]
struct PartialSpec<'a> {
    #[serde(borrow, default)]
    process: Option<PartialProcess<'a>>,
}

#[derive(serde::Deserialize)]
struct PartialProcess<'a> {
    #[serde(borrow, default)]
    env: Option<Vec<std::borrow::Cow<'a, str>>>,
}

impl Raw {
    /// Reads `<dir>/config.json` (`read_capped`).
    pub fn read(dir: &Path) -> Result<Raw, BundleError> {
        let path = Bundle::config_path(dir);
        match read_capped(&path) {
            Ok((bytes, mode)) => Ok(Raw {
                dir: dir.to_owned(),
                bytes,
                mode,
            }),
            Err(Irregular::Io(source)) => Err(BundleError::Read { path, source }),
            Err(Irregular::NotRegular(kind)) => Err(BundleError::NotRegular { path, kind }),
            Err(Irregular::TooLarge(bytes)) => Err(BundleError::TooLarge { path, bytes }),
        }
    }

    /// `process.env`, read through a partial spec (the rest of the document
    /// is checked to be JSON, not built). A document that reading does not
    /// take, a key given twice say (which Go's reader, runc's, takes the
    /// last of), is read whole instead, so both readings agree.
    ///
    /// Only a filter: a spec this reading finds asking for a GPU is read
    /// whole before anything is done with it (`parse`), and the whole
    /// reading's request is the one placed.
    pub fn env(&self) -> Result<Vec<std::borrow::Cow<'_, str>>, BundleError> {
        // serde's derived reader also takes a struct written as an array;
        // a spec is an object.
        let object = self.bytes.trim_ascii_start().first() == Some(&b'{');
        match serde_json::from_slice::<PartialSpec>(&self.bytes) {
            Ok(spec) if object => Ok(spec.process.and_then(|p| p.env).unwrap_or_default()),
            _ => {
                let spec = self.value()?;
                let env = env_of(&spec).map_err(|what| BundleError::Shape {
                    path: Bundle::config_path(&self.dir),
                    what,
                })?;
                Ok(env.into_iter().map(|e| e.to_owned().into()).collect())
            }
        }
    }

    fn value(&self) -> Result<Value, BundleError> {
        let path = Bundle::config_path(&self.dir);
        let spec: Value = serde_json::from_slice(&self.bytes).map_err(|e| BundleError::Json {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: crate::text::json_message(&e),
        })?;
        if !spec.is_object() {
            return Err(BundleError::Shape {
                path,
                what: "the top level is not an object".into(),
            });
        }
        Ok(spec)
    }

    /// The whole document, to read or rewrite.
    pub fn parse(self) -> Result<Bundle, BundleError> {
        let spec = self.value()?;
        Ok(Bundle {
            dir: self.dir,
            spec,
            original: self.bytes,
            mode: self.mode,
        })
    }
}

pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Value,
    original: Vec<u8>,
    mode: u32,
}

impl Bundle {
    pub fn config_path(dir: &Path) -> PathBuf {
        dir.join("config.json")
    }

    /// A spec that is no bundle's (what an NRI plugin is shown of a
    /// container): no directory, no rootfs to look into, never written.
    pub fn in_memory(spec: Value) -> Bundle {
        Bundle {
            dir: PathBuf::new(),
            spec,
            original: Vec::new(),
            mode: 0o644,
        }
    }

    /// Reads and parses `<dir>/config.json` (`read_capped`).
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        Raw::read(dir)?.parse()
    }

    /// The GPUs that CDI devices of gpushare's spec name in this spec: the
    /// argument after `--cdi-device` of each hook, once each, in order.
    /// Hooks are the engine's to write (from CDI specs, hooks.d, a base
    /// spec), never the workload's.
    pub fn cdi_devices(&self) -> Vec<&str> {
        let mut found: Vec<&str> = Vec::new();
        let stages = self.spec.get("hooks").and_then(Value::as_object);
        for hook in stages.into_iter().flat_map(|s| s.values()) {
            for h in hook.as_array().into_iter().flatten() {
                let args: Vec<&str> = h
                    .get("args")
                    .and_then(Value::as_array)
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for w in args.windows(2) {
                    if w[0] == CDI_DEVICE_ARG && !found.contains(&w[1]) {
                        found.push(w[1]);
                    }
                }
            }
        }
        found
    }

    /// `process.env`, the entries that are strings.
    pub fn env(&self) -> Result<Vec<&str>, BundleError> {
        env_of(&self.spec).map_err(|what| BundleError::Shape {
            path: Self::config_path(&self.dir),
            what,
        })
    }

    pub fn annotations(&self) -> BTreeMap<&str, &str> {
        annotations_of(&self.spec)
    }

    /// The rootfs as the spec names it (`root.path`: absolute, or relative
    /// to the bundle); `None` when the spec names none.
    pub fn rootfs(&self) -> Option<PathBuf> {
        self.spec
            .pointer("/root/path")
            .and_then(Value::as_str)
            .filter(|p| !p.is_empty())
            .map(|p| self.dir.join(p))
    }

    /// Replaces config.json with `spec`, atomically, keeping its mode. The
    /// temp file is made in the bundle directory and renamed over the name,
    /// so a symlinked config.json is replaced, never written through. It is
    /// not forced to disk: a bundle does not outlive a crash of the node
    /// (the engine makes it anew).
    pub fn write(&self, spec: &Value) -> Result<(), BundleError> {
        let bytes = serde_json::to_vec(spec).expect("a JSON value serialises");
        self.write_bytes(&bytes)
    }

    /// Puts back the bytes that were read, after a later step failed.
    pub fn restore(&self) -> Result<(), BundleError> {
        self.write_bytes(&self.original)
    }

    fn write_bytes(&self, bytes: &[u8]) -> Result<(), BundleError> {
        let path = Self::config_path(&self.dir);
        replace(&path, bytes, self.mode).map_err(|source| BundleError::Write { path, source })
    }
}

/// A file someone else wrote (a bundle's config.json), read whole with its
/// mode: a regular file (a FIFO put there would hang a read forever, a link
/// to `/dev/zero` never ends; `sys::open_regular`), read up to
/// `MAX_CONFIG_BYTES` and no further, whatever its size says.
pub fn read_capped(path: &Path) -> Result<(Vec<u8>, u32), Irregular> {
    use std::io::Read;
    let (file, meta) = open_regular(path, true, false, MAX_CONFIG_BYTES)?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(Irregular::Io)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Irregular::TooLarge(bytes.len() as u64));
    }
    Ok((bytes, meta.mode() & 0o7777))
}

pub fn env_of(spec: &Value) -> Result<Vec<&str>, String> {
    match spec.pointer("/process/env") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| "process.env holds a non-string".to_owned())
            })
            .collect(),
        Some(_) => Err("process.env is not an array".into()),
    }
}

pub fn annotations_of(spec: &Value) -> BTreeMap<&str, &str> {
    spec.get("annotations")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(dir: &Path) -> String {
        let e = Bundle::open(dir).err().expect("refused");
        assert!(e.is_refusal(), "{e}");
        crate::text::one_line(&e)
    }

    #[test]
    fn a_fifo_or_a_device_is_refused_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let config = Bundle::config_path(dir.path());
        // A FIFO with no writer: an ordinary open would wait forever.
        nix::unistd::mkfifo(&config, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = refusal(dir.path());
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        std::fs::remove_file(&config).unwrap();
        // A link to a device that never ends.
        std::os::unix::fs::symlink("/dev/zero", &config).unwrap();
        let e = refusal(dir.path());
        assert!(
            e.contains("is a character device, not a regular file"),
            "{e}"
        );
        std::fs::remove_file(&config).unwrap();
        std::fs::create_dir(&config).unwrap();
        assert!(refusal(dir.path()).contains("a directory"));
    }

    #[test]
    fn a_link_to_a_regular_file_is_read_as_runc_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("real.json"),
            r#"{"process": {"env": ["A=1"]}}"#,
        )
        .unwrap();
        std::os::unix::fs::symlink("real.json", Bundle::config_path(dir.path())).unwrap();
        let b = Bundle::open(dir.path()).unwrap();
        assert_eq!(b.env().unwrap(), ["A=1"]);
    }

    #[test]
    fn the_partial_reading_agrees_with_the_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let write = |text: &str| {
            std::fs::write(Bundle::config_path(dir.path()), text).unwrap();
            Raw::read(dir.path()).unwrap()
        };
        for (doc, want) in [
            (
                r#"{"process": {"env": ["A=1", "B=\u0032"]}, "x": [1e3, null]}"#,
                Some(vec!["A=1", "B=2"]),
            ),
            (r#"{"process": {"env": null}}"#, Some(vec![])),
            (r#"{"process": null}"#, Some(vec![])),
            (r#"{}"#, Some(vec![])),
            // Go's reader takes the last of a key given twice; so does this.
            (
                r#"{"process": {"env": ["A=1"]}, "process": {"env": ["A=2"]}}"#,
                Some(vec!["A=2"]),
            ),
            (r#"{"process": {"env": ["A=1", 3]}}"#, None),
            (r#"{"process": {"env": "A=1"}}"#, None),
            (r#"{"process": {"env": []}} trailing"#, None),
            (r#"[]"#, None),
        ] {
            let raw = write(doc);
            let got = raw
                .env()
                .ok()
                .map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            let whole = raw
                .parse()
                .and_then(|b| {
                    b.env()
                        .map(|e| e.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                })
                .ok();
            assert_eq!(got, whole, "{doc}");
            assert_eq!(
                got,
                want.map(|w| w.iter().map(|s| s.to_string()).collect()),
                "{doc}"
            );
        }
    }

    #[test]
    fn a_config_over_the_cap_is_refused_by_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::create(Bundle::config_path(dir.path())).unwrap();
        f.set_len(MAX_CONFIG_BYTES + 1).unwrap();
        assert!(refusal(dir.path()).contains("at most 16 MiB"));
    }
}
