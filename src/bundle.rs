//! A bundle's `config.json`, held as JSON rather than as `oci_spec::Spec`:
//! every field gpushare does not touch must survive the rewrite byte for
//! byte in meaning, including fields newer than the `oci-spec` crate, which
//! a typed round-trip would drop.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde_json::Value;
use thiserror::Error;

use crate::ledger::write_atomic;

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

    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let path = Self::config_path(dir);
        let read = |source| BundleError::Read {
            path: path.clone(),
            source,
        };
        let meta = std::fs::metadata(&path).map_err(read)?;
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(BundleError::TooLarge {
                path,
                bytes: meta.len(),
            });
        }
        let mode = meta.mode() & 0o7777;
        let original = std::fs::read(&path).map_err(read)?;
        let spec: Value = serde_json::from_slice(&original).map_err(|e| BundleError::Json {
            path: path.clone(),
            line: e.line(),
            column: e.column(),
            message: crate::error::json_message(&e),
        })?;
        if !spec.is_object() {
            return Err(BundleError::Shape {
                path,
                what: "the top level is not an object".into(),
            });
        }
        Ok(Bundle {
            dir: dir.to_owned(),
            spec,
            original,
            mode,
        })
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
    /// so a symlinked config.json is replaced, never written through.
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
        write_atomic(&path, bytes, self.mode).map_err(|source| BundleError::Write { path, source })
    }
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
