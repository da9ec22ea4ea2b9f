//! The driver's user-space: which host files a GPU container gets for each
//! driver capability (`libcuda.so.1` for compute, NVML and `nvidia-smi` for
//! utility, …), so a CUDA program runs unchanged in it.
//!
//! Found once, not per create: the host's dynamic-linker cache
//! (`etc/ld.so.cache` under the driver root, parsed here, no `ldconfig -p`)
//! names each library's SONAME and path; the host's symlinks (Debian's
//! `/etc/alternatives`, `nvidia/current`) are followed to the real files.
//! The result is cached in `<state_dir>/driver.json`, keyed by the identity
//! of `ld.so.cache` and the loaded driver's version line, so the create path
//! costs one stat, one small procfs read and one small file.
//!
//! Each file is then bind-mounted read-only at its SONAME in the directory
//! the image's own loader searches without a cache: what lets the loader
//! find it with no `ldconfig` and no symlink hook in the container (the two
//! mechanisms behind NVIDIA's CVE-2024-0134 and CVE-2025-23267).

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::{fstat, SFlag};
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::request::{Capabilities, Capability};

/// The cache of the discovery, in the state directory.
pub const CACHE_FILE: &str = "driver.json";

/// The capabilities whose files gpushare injects; the others (graphics,
/// display, compat32, ngx) are refused when it injects, never ignored.
pub const INJECTED: [Capability; 3] = [Capability::Compute, Capability::Utility, Capability::Video];

/// Libraries per capability, by the name before `.so`.
/// Ref: NVIDIA libnvidia-container, src/nvc_info.c (utility_libs,
/// compute_libs, video_libs).
const LIBRARIES: &[(Capability, &[&str])] = &[
    (
        Capability::Compute,
        &[
            "libcuda",
            "libcudadebugger",
            "libnvidia-ptxjitcompiler",
            "libnvidia-nvvm",
            "libnvidia-gpucomp",
            "libnvidia-opencl",
        ],
    ),
    (Capability::Utility, &["libnvidia-ml", "libnvidia-cfg"]),
    (
        Capability::Video,
        &["libnvcuvid", "libnvidia-encode", "libnvidia-opticalflow"],
    ),
];

/// Binaries per capability. Ref: nvc_info.c (utility_bins, compute_bins).
const BINARIES: &[(Capability, &[&str])] = &[(
    Capability::Utility,
    &[
        "nvidia-smi",
        "nvidia-debugdump",
        "nvidia-persistenced",
        "nvidia-cuda-mps-control",
        "nvidia-cuda-mps-server",
    ],
)];

/// Where binaries are looked for on the host, in order.
const BIN_DIRS: &[&str] = &["usr/bin", "usr/sbin", "bin", "sbin"];

/// Where binaries go in the container.
const CONTAINER_BIN_DIR: &str = "/usr/bin";

#[cfg(target_arch = "x86_64")]
const MULTIARCH: &str = "x86_64-linux-gnu";
#[cfg(target_arch = "aarch64")]
const MULTIARCH: &str = "aarch64-linux-gnu";

/// The ld.so.cache entry flags of a library this build's processes load.
/// Ref: glibc sysdeps/generic/ldconfig.h: FLAG_ELF_LIBC6 in the type byte,
/// FLAG_X8664_LIB64 / FLAG_AARCH64_LIB64 in the required-arch byte.
const FLAG_TYPE_MASK: i32 = 0x00ff;
const FLAG_ELF_LIBC6: i32 = 0x0003;
const FLAG_ARCH_MASK: i32 = 0xff00;
#[cfg(target_arch = "x86_64")]
const FLAG_ARCH: i32 = 0x0300;
#[cfg(target_arch = "aarch64")]
const FLAG_ARCH: i32 = 0x0a00;

/// The options of every driver file mount: read-only, no set-id, no device
/// nodes; executable, since libraries are mapped PROT_EXEC.
pub const MOUNT_OPTIONS: [&str; 4] = ["bind", "ro", "nosuid", "nodev"];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    Library,
    Binary,
    Firmware,
}

/// One host file of the driver's user-space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DriverFile {
    pub kind: FileKind,
    /// `None`: every GPU container gets it (firmware).
    pub capability: Option<Capability>,
    /// A library's SONAME, a binary's name, a firmware file's absolute path.
    pub name: String,
    /// The real file on the host, symlinks followed.
    pub path: PathBuf,
}

impl DriverFile {
    /// Where the file goes in a container whose loader searches
    /// `library_dir` (see `library_dir`).
    pub fn destination(&self, library_dir: &str) -> String {
        match self.kind {
            FileKind::Library => format!("{library_dir}/{}", self.name),
            FileKind::Binary => format!("{CONTAINER_BIN_DIR}/{}", self.name),
            FileKind::Firmware => self.name.clone(),
        }
    }
}

/// What discovery found on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Driver {
    /// What it was found from; the cached value is used while this holds.
    pub key: String,
    /// The driver root it was found under.
    pub root: PathBuf,
    /// From `proc/driver/nvidia/version` where the driver is loaded, else
    /// the version suffix of the file `libcuda.so.1` resolves to.
    pub version: Option<String>,
    pub files: Vec<DriverFile>,
    /// Why nothing was found, when nothing was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One library entry of an ld.so.cache: the name the loader looks up (a
/// SONAME, or a linker name like `libcuda.so`) and the path it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheEntry {
    pub name: String,
    pub path: String,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The NUL-terminated string at `base + offset`.
fn str_at(b: &[u8], base: usize, offset: u32) -> Option<String> {
    let start = base.checked_add(offset as usize)?;
    let rest = b.get(start..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Parses an ld.so.cache, keeping the libc6 libraries of this build's
/// architecture. Reads glibc's three layouts: the new format alone (glibc
/// ≥ 2.32's default), the old one alone, and old followed by new (compat).
///
/// Ref: glibc sysdeps/generic/dl-cache.h and elf/dl-cache.c
/// (`_dl_load_cache_lookup`): old format `"ld.so-1.7.0"`, nlibs at 12,
/// 12-byte entries from 16, string offsets relative to the end of the
/// entries; new format `"glibc-ld.so.cache1.1"`, nlibs at 20, 24-byte
/// entries from 48, string offsets relative to the new header, which in
/// the compat layout follows the old entries at an 8-byte boundary.
pub fn parse_ld_cache(b: &[u8]) -> Result<Vec<CacheEntry>, String> {
    const OLD_MAGIC: &[u8] = b"ld.so-1.7.0";
    const NEW_MAGIC: &[u8] = b"glibc-ld.so.cache1.1";
    let new_at = if b.starts_with(NEW_MAGIC) {
        Some(0)
    } else if b.starts_with(OLD_MAGIC) {
        let nlibs = u32_at(b, 12).ok_or("truncated header")? as usize;
        let end = nlibs
            .checked_mul(12)
            .and_then(|n| n.checked_add(16))
            .filter(|&n| n <= b.len())
            .ok_or("the entry count runs past the end")?;
        let aligned = (end + 7) & !7;
        if b.get(aligned..).is_some_and(|r| r.starts_with(NEW_MAGIC)) {
            Some(aligned)
        } else {
            // Old format alone.
            return (0..nlibs)
                .filter_map(|i| entry(b, 16 + i * 12, end))
                .collect::<Result<Vec<_>, _>>()
                .map(dedup);
        }
    } else {
        return Err("it starts with neither glibc cache magic".into());
    };
    let base = new_at.expect("set above");
    let nlibs = u32_at(b, base + 20).ok_or("truncated header")? as usize;
    let first = base + 48;
    nlibs
        .checked_mul(24)
        .and_then(|n| n.checked_add(first))
        .filter(|&n| n <= b.len())
        .ok_or("the entry count runs past the end")?;
    (0..nlibs)
        .filter_map(|i| entry(b, first + i * 24, base))
        .collect::<Result<Vec<_>, _>>()
        .map(dedup)
}

/// The entry at `at` (flags, key, value) with strings relative to `base`;
/// `None` for another architecture's or kind's library.
fn entry(b: &[u8], at: usize, base: usize) -> Option<Result<CacheEntry, String>> {
    let flags = u32_at(b, at)? as i32;
    if flags & FLAG_TYPE_MASK != FLAG_ELF_LIBC6 || flags & FLAG_ARCH_MASK != FLAG_ARCH {
        return None;
    }
    let (key, value) = (u32_at(b, at + 4)?, u32_at(b, at + 8)?);
    Some(match (str_at(b, base, key), str_at(b, base, value)) {
        (Some(name), Some(path)) => Ok(CacheEntry { name, path }),
        _ => Err(format!("entry at byte {at} points outside the strings")),
    })
}

/// The first entry of each name wins, as in the loader's lookup.
fn dedup(mut entries: Vec<CacheEntry>) -> Vec<CacheEntry> {
    let mut seen = std::collections::HashSet::new();
    entries.retain(|e| seen.insert(e.name.clone()));
    entries
}

/// The capability a library name belongs to: `libcuda.so.1` → compute.
/// Only the linker name (`.so`) and SONAMEs (`.so.<n>…`) count.
fn library_capability(name: &str) -> Option<Capability> {
    let (base, rest) = name.split_once(".so")?;
    if !(rest.is_empty() || rest.starts_with('.')) {
        return None;
    }
    LIBRARIES
        .iter()
        .find(|(_, names)| names.contains(&base))
        .map(|(c, _)| *c)
}

/// The version in a driver file's name: `libcuda.so.535.261.03` → `535.261.03`.
fn version_suffix(name: &str) -> Option<&str> {
    let (_, v) = name.split_once(".so.")?;
    (v.split('.').count() >= 2 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')).then_some(v)
}

/// The version on procfs's `NVRM version:` line: the first token that is
/// digits and dots with at least one dot.
/// Ref: "NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  …" and
/// "… Open Kernel Module for x86_64  580.159.04  Release Build …".
fn procfs_version(text: &str) -> Option<String> {
    let line = text.lines().find(|l| l.starts_with("NVRM version:"))?;
    line.split_whitespace()
        .find(|t| t.contains('.') && t.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
        .map(str::to_owned)
}

/// The identity of what discovery reads: the ld.so.cache file (device,
/// inode, size, mtime) and the loaded driver's version line. Any ldconfig
/// run (every driver package install triggers one) or driver reload
/// changes it.
pub fn key(root: &Path) -> String {
    let cache = match std::fs::metadata(root.join("etc/ld.so.cache")) {
        Ok(m) => format!(
            "{}:{}:{}:{}.{}",
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ),
        Err(_) => "no-ld-cache".into(),
    };
    let version = std::fs::read_to_string(root.join("proc/driver/nvidia/version"))
        .ok()
        .and_then(|t| t.lines().next().map(str::to_owned))
        .unwrap_or_default();
    format!("{};{cache};{version}", root.display())
}

/// Opens the driver root for in-root lookups.
fn open_root(root: &Path) -> Result<OwnedFd, String> {
    crate::sys::open_root(root).map_err(|e| format!("cannot open {}: {e}", root.display()))
}

/// The real host file behind `path` (absolute, as the host sees it),
/// following symlinks inside the driver root; `None` unless it is a
/// regular file.
fn resolve(root: &OwnedFd, path: &str) -> Option<PathBuf> {
    let fd = crate::sys::open_in_root(root.as_fd(), Path::new(path), OFlag::O_PATH).ok()?;
    let st = fstat(fd.as_raw_fd()).ok()?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return None;
    }
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
}

/// Finds the driver's files under `root`. Never fails: what could not be
/// read is said in `problem`, and a GPU container then gets its devices
/// with a warning.
pub fn discover(root: &Path, key: String) -> Driver {
    let mut driver = Driver {
        key,
        root: root.to_owned(),
        version: None,
        files: Vec::new(),
        problem: None,
    };
    let root_fd = match open_root(root) {
        Ok(fd) => fd,
        Err(why) => {
            driver.problem = Some(why);
            return driver;
        }
    };
    let cache_path = root.join("etc/ld.so.cache");
    let entries = match std::fs::read(&cache_path) {
        Ok(bytes) => parse_ld_cache(&bytes).map_err(|why| {
            format!(
                "{} is not a dynamic-linker cache: {why}",
                cache_path.display()
            )
        }),
        Err(e) => Err(format!("cannot read {}: {e}", cache_path.display())),
    };
    let entries = match entries {
        Ok(e) => e,
        Err(why) => {
            driver.problem = Some(why);
            return driver;
        }
    };
    driver.version = std::fs::read_to_string(root.join("proc/driver/nvidia/version"))
        .ok()
        .and_then(|t| procfs_version(&t));
    let mut libs = Vec::new();
    for e in &entries {
        let Some(cap) = library_capability(&e.name) else {
            continue;
        };
        if let Some(path) = resolve(&root_fd, &e.path) {
            libs.push((cap, e.name.clone(), path));
        }
    }
    if driver.version.is_none() {
        driver.version = libs
            .iter()
            .find(|(_, n, _)| n == "libcuda.so.1")
            .and_then(|(_, _, p)| {
                version_suffix(&p.file_name()?.to_string_lossy()).map(str::to_owned)
            });
    }
    for (cap, name, path) in libs {
        // A leftover of another driver version (a SONAME with the version
        // in it, like libnvidia-gpucomp.so.<version>) is not this driver's.
        if let (Some(v), Some(want)) = (version_suffix(&name), &driver.version) {
            if v != want {
                continue;
            }
        }
        driver.files.push(DriverFile {
            kind: FileKind::Library,
            capability: Some(cap),
            name,
            path,
        });
    }
    // Programs that dlopen("libcuda.so") find it too (NVIDIA's toolkit
    // makes that link by a hook; here it is one more read-only mount).
    if !driver.files.iter().any(|f| f.name == "libcuda.so") {
        if let Some(f) = driver
            .files
            .iter()
            .find(|f| f.name == "libcuda.so.1")
            .cloned()
        {
            driver.files.push(DriverFile {
                name: "libcuda.so".into(),
                ..f
            });
        }
    }
    for (cap, names) in BINARIES {
        for name in *names {
            let found = BIN_DIRS
                .iter()
                .find_map(|d| resolve(&root_fd, &format!("/{d}/{name}")));
            if let Some(path) = found {
                driver.files.push(DriverFile {
                    kind: FileKind::Binary,
                    capability: Some(*cap),
                    name: (*name).to_owned(),
                    path,
                });
            }
        }
    }
    if let Some(v) = &driver.version {
        let dir = format!("/lib/firmware/nvidia/{v}");
        if let Ok(list) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) {
            let mut names: Vec<String> = list
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.ends_with(".bin"))
                .collect();
            names.sort();
            for n in names {
                let name = format!("{dir}/{n}");
                if let Some(path) = resolve(&root_fd, &name) {
                    driver.files.push(DriverFile {
                        kind: FileKind::Firmware,
                        capability: None,
                        name,
                        path,
                    });
                }
            }
        }
    }
    if driver.files.is_empty() {
        driver.problem = Some(format!(
            "{} lists no NVIDIA driver library",
            cache_path.display()
        ));
    }
    driver
}

impl Driver {
    /// The driver as the config names it: the cached discovery while its
    /// key holds, else a fresh one, written back when `store` (each writer
    /// under a temp name of its own, so concurrent ones never tear it).
    pub fn load(cfg: &Config, store: bool) -> Driver {
        let root = cfg.driver_root();
        let key = key(root);
        if let Ok(bytes) = std::fs::read(cfg.runtime.state_dir.join(CACHE_FILE)) {
            if let Ok(d) = serde_json::from_slice::<Driver>(&bytes) {
                if d.key == key {
                    return d;
                }
            }
        }
        let d = discover(root, key);
        if store {
            // Best effort: without the cache the next create discovers again.
            let _ = d.store(cfg);
        }
        d
    }

    /// Discovers again whatever the cache holds, and stores the result
    /// (`gpushare inventory --refresh`).
    pub fn refresh(cfg: &Config) -> Result<Driver, crate::sys::IoError> {
        let root = cfg.driver_root();
        let d = discover(root, key(root));
        let path = cfg.runtime.state_dir.join(CACHE_FILE);
        d.store(cfg).map_err(crate::sys::io("write", &path))?;
        Ok(d)
    }

    fn store(&self, cfg: &Config) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(self).expect("driver serialises");
        crate::sys::write_atomic(&cfg.runtime.state_dir.join(CACHE_FILE), &bytes, 0o644)
    }

    /// The files of one capability (`None`: firmware).
    pub fn files_of(&self, cap: Option<Capability>) -> impl Iterator<Item = &DriverFile> {
        self.files.iter().filter(move |f| f.capability == cap)
    }

    /// Whether a container asking for `caps` gets file `f`.
    fn wanted(f: &DriverFile, caps: &Capabilities) -> bool {
        match f.capability {
            None => true,
            Some(c) => caps.contains(c),
        }
    }

    /// The files a container asking for `caps` gets.
    pub fn files_for<'a>(&'a self, caps: &'a Capabilities) -> impl Iterator<Item = &'a DriverFile> {
        self.files.iter().filter(move |f| Self::wanted(f, caps))
    }

    /// What a container asking for `caps` should be told: nothing found at
    /// all, or nothing for a capability it named.
    pub fn warnings(&self, caps: &Capabilities) -> Vec<String> {
        if self.files.is_empty() {
            return vec![format!(
                "no NVIDIA driver libraries found ({}): the container gets its GPU's devices but no libcuda or NVML; install the driver's user-space on the host (Debian: libcuda1, libnvidia-ml1, nvidia-smi) or set driver.inject = \"none\" if a chained runtime brings it",
                self.problem.as_deref().unwrap_or("none listed")
            )];
        }
        let Capabilities::List(list) = caps else {
            return Vec::new();
        };
        let missing: Vec<&str> = list
            .iter()
            .filter(|c| !self.files.iter().any(|f| f.capability == Some(**c)))
            .map(|c| c.name())
            .collect();
        if missing.is_empty() {
            return Vec::new();
        }
        vec![format!(
            "NVIDIA_DRIVER_CAPABILITIES asks for {} but the host's driver has none of its files: install them on the host, or drop the capability",
            missing.join(", ")
        )]
    }
}

/// The directory the image's loader searches without a cache, decided from
/// the rootfs: the multiarch directory where it exists (Debian, Ubuntu),
/// else `/usr/lib64` (RHEL, Fedora, SUSE), else `/usr/lib`. The rootfs is
/// the container's and looked at only through in-root lookups.
/// Ref: glibc's system search path (`ld.so --help`): slibdir and libdir,
/// `/lib/x86_64-linux-gnu` and `/usr/lib/x86_64-linux-gnu` on Debian,
/// `/lib64` and `/usr/lib64` on RHEL.
pub fn library_dir(rootfs: Option<&Path>) -> String {
    let multiarch = format!("/usr/lib/{MULTIARCH}");
    let Some(rootfs) = rootfs else {
        return multiarch;
    };
    let Ok(root) = open_root(rootfs) else {
        return multiarch;
    };
    let is_dir = |p: &str| {
        crate::sys::open_in_root(
            root.as_fd(),
            Path::new(p),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
        )
        .is_ok()
    };
    if is_dir(&multiarch) {
        multiarch
    } else if is_dir("/usr/lib64") {
        "/usr/lib64".into()
    } else {
        "/usr/lib".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!(
            "{}/tests/fixtures/ldcache/{name}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap()
    }

    /// Builds a `*.tree` layout (see tests/fixtures/ldcache) under `root`
    /// with empty files, and puts the ld.so.cache `cache` in place.
    fn build(tree: &str, cache: &str, root: &Path) {
        let text = String::from_utf8(fixture(tree)).unwrap();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let mut it = line.split_whitespace();
            let (kind, path) = (it.next().unwrap(), it.next().unwrap());
            let at = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(at.parent().unwrap()).unwrap();
            match kind {
                "L" => symlink(it.next().unwrap(), &at).unwrap(),
                _ => std::fs::write(&at, "").unwrap(),
            }
        }
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/ld.so.cache"), fixture(cache)).unwrap();
    }

    fn names(d: &Driver, kind: FileKind) -> Vec<String> {
        let mut v: Vec<String> = d
            .files
            .iter()
            .filter(|f| f.kind == kind)
            .map(|f| f.name.clone())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_three_cache_formats_read_alike() {
        let new = parse_ld_cache(&fixture("debian-new.cache")).unwrap();
        let compat = parse_ld_cache(&fixture("debian-compat.cache")).unwrap();
        assert_eq!(new, compat);
        assert!(new.contains(&CacheEntry {
            name: "libcuda.so.1".into(),
            path: "/lib/x86_64-linux-gnu/libcuda.so.1".into()
        }));
        assert!(new.iter().any(|e| e.name == "libz.so.1"));
        assert_eq!(new.len(), 6);
        let old = parse_ld_cache(&fixture("installer-old.cache")).unwrap();
        let new = parse_ld_cache(&fixture("installer-new.cache")).unwrap();
        assert_eq!(old, new);
        assert!(old
            .iter()
            .any(|e| e.name == "libnvidia-gpucomp.so.550.54.14"));
        // The host's own cache reads too.
        if let Ok(bytes) = std::fs::read("/etc/ld.so.cache") {
            let host = parse_ld_cache(&bytes).unwrap();
            assert!(host.iter().any(|e| e.name == "libc.so.6"), "{host:?}");
        }
    }

    /// A cache in the new format with the given (flags, name, path) rows.
    fn new_cache(rows: &[(i32, &str, &str)]) -> Vec<u8> {
        let mut strings = Vec::new();
        let mut entries = Vec::new();
        let strings_at = 48 + rows.len() * 24;
        for (flags, name, path) in rows {
            let key = strings_at + strings.len();
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            let value = strings_at + strings.len();
            strings.extend_from_slice(path.as_bytes());
            strings.push(0);
            entries.extend_from_slice(&flags.to_le_bytes());
            entries.extend_from_slice(&(key as u32).to_le_bytes());
            entries.extend_from_slice(&(value as u32).to_le_bytes());
            entries.extend_from_slice(&[0; 12]);
        }
        let mut b = b"glibc-ld.so.cache1.1".to_vec();
        b.extend_from_slice(&(rows.len() as u32).to_le_bytes());
        b.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        b.extend_from_slice(&[0; 20]);
        b.extend(entries);
        b.extend(strings);
        b
    }

    #[test]
    fn other_architectures_and_bad_caches() {
        let b = new_cache(&[
            (
                0x0003,
                "libcuda.so.1",
                "/usr/lib/i386-linux-gnu/libcuda.so.1",
            ),
            (
                FLAG_ELF_LIBC6 | FLAG_ARCH,
                "libcuda.so.1",
                "/usr/lib64/libcuda.so.1",
            ),
            (0x0001, "libold.so.1", "/lib/libold.so.1"),
        ]);
        assert_eq!(
            parse_ld_cache(&b).unwrap(),
            vec![CacheEntry {
                name: "libcuda.so.1".into(),
                path: "/usr/lib64/libcuda.so.1".into()
            }]
        );
        for bad in [
            &b""[..],
            b"ELF",
            b"glibc-ld.so.cache1.1",
            b"ld.so-1.7.0\0\xff\xff\xff\x7f",
        ] {
            assert!(parse_ld_cache(bad).is_err(), "{bad:?}");
        }
        // A string offset past the end is an error, not a panic.
        let mut b = new_cache(&[(FLAG_ELF_LIBC6 | FLAG_ARCH, "libcuda.so.1", "/x")]);
        b[48 + 4..48 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_ld_cache(&b).is_err());
        // Every truncation of a real cache is refused or read, never a panic.
        let real = fixture("debian-compat.cache");
        for n in 0..real.len() {
            let _ = parse_ld_cache(&real[..n]);
        }
    }

    #[test]
    fn capabilities_of_library_names() {
        assert_eq!(
            library_capability("libcuda.so.1"),
            Some(Capability::Compute)
        );
        assert_eq!(library_capability("libcuda.so"), Some(Capability::Compute));
        assert_eq!(
            library_capability("libnvidia-ml.so.1"),
            Some(Capability::Utility)
        );
        assert_eq!(
            library_capability("libnvcuvid.so.1"),
            Some(Capability::Video)
        );
        assert_eq!(
            library_capability("libnvidia-gpucomp.so.550.54.14"),
            Some(Capability::Compute)
        );
        assert_eq!(library_capability("libcudart.so.12"), None);
        assert_eq!(library_capability("libcudanope.so.1"), None);
        assert_eq!(library_capability("libcuda.sox"), None);
        assert_eq!(library_capability("libGLX_nvidia.so.0"), None);
        assert_eq!(version_suffix("libcuda.so.535.261.03"), Some("535.261.03"));
        assert_eq!(version_suffix("libcuda.so.1"), None);
        assert_eq!(
            procfs_version("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.261.03  Wed Jun 11 2025\nGCC version: gcc 12\n"),
            Some("535.261.03".into())
        );
        assert_eq!(
            procfs_version("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release Build  (dvs-builder@U22)  Thu\n"),
            Some("580.159.04".into())
        );
    }

    #[test]
    fn debian_alternatives_are_followed_to_the_real_files() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        build("debian.tree", "debian-new.cache", &root);
        let d = discover(&root, key(&root));
        assert_eq!(d.problem, None);
        assert_eq!(
            d.version.as_deref(),
            Some("535.261.03"),
            "from libcuda's file name"
        );
        assert_eq!(
            names(&d, FileKind::Library),
            [
                "libcuda.so",
                "libcuda.so.1",
                "libnvcuvid.so.1",
                "libnvidia-ml.so.1",
                "libnvidia-ptxjitcompiler.so.1"
            ]
        );
        let cuda = d.files.iter().find(|f| f.name == "libcuda.so.1").unwrap();
        assert_eq!(
            cuda.path,
            root.join("usr/lib/x86_64-linux-gnu/nvidia/current/libcuda.so.535.261.03"),
            "through /lib → usr/lib, /etc/alternatives and nvidia/current"
        );
        assert_eq!(
            names(&d, FileKind::Binary),
            [
                "nvidia-cuda-mps-control",
                "nvidia-cuda-mps-server",
                "nvidia-smi"
            ]
        );
        let smi = d.files.iter().find(|f| f.name == "nvidia-smi").unwrap();
        assert_eq!(smi.path, root.join("usr/lib/nvidia/current/nvidia-smi"));
        assert!(names(&d, FileKind::Firmware).is_empty());
    }

    #[test]
    fn the_installer_layout_with_firmware_and_a_loaded_driver() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        build("installer.tree", "installer-old.cache", &root);
        std::fs::create_dir_all(root.join("proc/driver/nvidia")).unwrap();
        std::fs::write(
            root.join("proc/driver/nvidia/version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n",
        )
        .unwrap();
        let d = discover(&root, key(&root));
        assert_eq!(d.version.as_deref(), Some("550.54.14"));
        assert_eq!(
            names(&d, FileKind::Library),
            [
                "libcuda.so",
                "libcuda.so.1",
                "libnvidia-cfg.so.1",
                "libnvidia-encode.so.1",
                "libnvidia-gpucomp.so.550.54.14",
                "libnvidia-ml.so.1",
                "libnvidia-nvvm.so.4",
            ],
            "libGLX_nvidia (graphics) is not injected"
        );
        assert_eq!(
            names(&d, FileKind::Firmware),
            [
                "/lib/firmware/nvidia/550.54.14/gsp_ga10x.bin",
                "/lib/firmware/nvidia/550.54.14/gsp_tu10x.bin"
            ]
        );
        // Another loaded version: the versioned SONAME and the firmware of
        // 550.54.14 are not this driver's.
        std::fs::write(
            root.join("proc/driver/nvidia/version"),
            "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.90.07  x\n",
        )
        .unwrap();
        let d = discover(&root, key(&root));
        assert!(!names(&d, FileKind::Library).contains(&"libnvidia-gpucomp.so.550.54.14".into()));
        assert!(names(&d, FileKind::Firmware).is_empty());
    }

    #[test]
    fn mounts_per_capability() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().canonicalize().unwrap();
        build("installer.tree", "installer-new.cache", &root);
        let d = discover(&root, key(&root));
        let dests = |caps: &str| -> Vec<String> {
            let caps = crate::request::parse_capabilities(caps).unwrap();
            let mut v: Vec<String> = d
                .files_for(&caps)
                .map(|f| f.destination("/usr/lib64"))
                .filter(|m| !m.starts_with("/lib/firmware"))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            dests("utility"),
            [
                "/usr/bin/nvidia-debugdump",
                "/usr/bin/nvidia-persistenced",
                "/usr/bin/nvidia-smi",
                "/usr/lib64/libnvidia-cfg.so.1",
                "/usr/lib64/libnvidia-ml.so.1"
            ]
        );
        let default = dests("");
        assert!(default.contains(&"/usr/lib64/libcuda.so.1".into()));
        assert!(default.contains(&"/usr/lib64/libnvidia-ml.so.1".into()));
        assert!(!default.contains(&"/usr/lib64/libnvidia-encode.so.1".into()));
        assert!(dests("video").contains(&"/usr/lib64/libnvidia-encode.so.1".into()));
        assert_eq!(dests("all").len(), 10, "7 libraries and 3 binaries");
        // Firmware goes with every capability set.
        let caps = crate::request::parse_capabilities("video").unwrap();
        assert_eq!(
            d.files_for(&caps)
                .filter(|f| f
                    .destination("/usr/lib")
                    .starts_with("/lib/firmware/nvidia/550.54.14/"))
                .count(),
            2
        );
        assert!(d.warnings(&caps).is_empty());
    }

    #[test]
    fn nothing_found_is_said_once() {
        let t = tempfile::tempdir().unwrap();
        let d = discover(t.path(), key(t.path()));
        assert!(d.files.is_empty());
        let caps = Capabilities::default_set();
        let w = d.warnings(&caps);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("no NVIDIA driver libraries found") && w[0].contains("ld.so.cache"),
            "{w:?}"
        );
        assert_eq!(d.files_for(&caps).count(), 0);
        // Files for one capability but not another: that one is named.
        let root = t.path().canonicalize().unwrap();
        build("debian.tree", "debian-new.cache", &root);
        let d = discover(&root, key(&root));
        let caps = crate::request::parse_capabilities("utility,video,compute").unwrap();
        assert!(d.warnings(&caps).is_empty());
        std::fs::remove_file(
            root.join("usr/lib/x86_64-linux-gnu/nvidia/current/libnvcuvid.so.535.261.03"),
        )
        .unwrap();
        let d = discover(&root, key(&root));
        let w = d.warnings(&caps);
        assert!(w.len() == 1 && w[0].contains("asks for video"), "{w:?}");
        assert!(d.warnings(&Capabilities::All).is_empty());
    }

    #[test]
    fn the_cache_is_used_while_its_key_holds() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("host");
        std::fs::create_dir_all(&root).unwrap();
        let root = root.canonicalize().unwrap();
        build("debian.tree", "debian-new.cache", &root);
        let mut cfg = Config::default();
        cfg.runtime.state_dir = t.path().join("state");
        std::fs::create_dir_all(&cfg.runtime.state_dir).unwrap();
        cfg.driver.root = Some(root.clone());
        let first = Driver::load(&cfg, true);
        assert_eq!(first.files.len(), 8);
        let cache = cfg.runtime.state_dir.join(CACHE_FILE);
        // The cached value is what is read (a hand-marked copy proves it).
        let mut marked = first.clone();
        marked.version = Some("from-cache".into());
        std::fs::write(&cache, serde_json::to_vec(&marked).unwrap()).unwrap();
        assert_eq!(
            Driver::load(&cfg, true).version.as_deref(),
            Some("from-cache")
        );
        // ldconfig ran (a new ld.so.cache): discovered again and stored.
        let ld = root.join("etc/ld.so.cache");
        std::fs::remove_file(&ld).unwrap();
        std::fs::write(&ld, fixture("debian-compat.cache")).unwrap();
        let again = Driver::load(&cfg, true);
        assert_eq!(again.version.as_deref(), Some("535.261.03"));
        let stored: Driver = serde_json::from_slice(&std::fs::read(&cache).unwrap()).unwrap();
        assert_eq!(stored, again);
        // Without `store`, nothing is written.
        std::fs::remove_file(&cache).unwrap();
        Driver::load(&cfg, false);
        assert!(!cache.exists());
    }

    #[test]
    fn the_library_directory_follows_the_image() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        assert_eq!(library_dir(Some(r)), "/usr/lib");
        std::fs::create_dir_all(r.join("usr/lib64")).unwrap();
        assert_eq!(library_dir(Some(r)), "/usr/lib64", "RHEL family");
        std::fs::create_dir_all(r.join(format!("usr/lib/{MULTIARCH}"))).unwrap();
        assert_eq!(
            library_dir(Some(r)),
            format!("/usr/lib/{MULTIARCH}"),
            "Debian family"
        );
        assert_eq!(library_dir(None), format!("/usr/lib/{MULTIARCH}"));
        // A hostile image's link out of its rootfs is resolved inside it.
        let h = tempfile::tempdir().unwrap();
        let host = h.path().join("host");
        std::fs::create_dir_all(host.join("usr/lib64")).unwrap();
        let rootfs = h.path().join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        symlink(&host, rootfs.join("usr")).unwrap();
        assert_eq!(library_dir(Some(&rootfs)), "/usr/lib");
    }
}
