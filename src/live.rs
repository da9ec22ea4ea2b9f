//! Applying `ContainerEdits` to a live container, for the hook used alone
//! (podman and CRI-O `hooks.d`, containerd's base spec): bind the host's
//! device nodes into the container's rootfs from inside its mount
//! namespace, and open its device cgroup for exactly those nodes.
//!
//! Ref: runc runs prestart/createRuntime hooks after the container's mounts
//! are set up (its /dev tmpfs included) and before pivot_root, in the
//! runtime's namespaces: the rootfs is still at its host path inside the
//! container's mount namespace.
//!
//! The rootfs belongs to the container and is hostile by assumption: every
//! path in it is resolved with `openat2(RESOLVE_IN_ROOT)`, so a symlink
//! (`/dev` → `/etc`, `/tmp` → `/`) resolves inside the rootfs, never out of
//! it; mounts are made with the fd-based mount API (open_tree, move_mount),
//! never through a path that could be swapped between check and use.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sched::{setns, CloneFlags};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};
use thiserror::Error;

use crate::bpf::{self, Allow};
use crate::edits::{ContainerEdits, DeviceEdit};

#[derive(Debug, Error)]
pub enum LiveError {
    #[error("cannot {what} (container pid {pid}): {source}; the hook must run as root from the container runtime")]
    Namespace {
        what: &'static str,
        pid: i32,
        #[source]
        source: Errno,
    },
    #[error("rootfs path {path:?} cannot be used: {why}")]
    Path { path: PathBuf, why: String },
    #[error("cannot {what} {path:?} inside the container's rootfs: {source}")]
    InRoot {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot open host node {path}: {source}")]
    HostNode {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot bind {source_path} onto {target:?} in the container: {source}")]
    Mount {
        source_path: PathBuf,
        target: PathBuf,
        #[source]
        source: Errno,
    },
    #[error("cannot find the container's device cgroup: {0}")]
    NoCgroup(String),
    #[error("cannot allow {rule:?} in {path}: {source}")]
    CgroupWrite {
        rule: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the device cgroup {cgroup}: {source}")]
    Bpf {
        cgroup: PathBuf,
        #[source]
        source: crate::bpf::BpfError,
    },
}

/// The flags every in-root lookup uses: stay inside the root, and refuse
/// /proc-style magic links, which could point anywhere.
fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// A relative path with only normal components (a leading `/` is dropped:
/// container paths are relative to the rootfs).
fn relative(path: &Path) -> Result<PathBuf, LiveError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(LiveError::Path {
                    path: path.to_owned(),
                    why: "it contains ..".into(),
                })
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(LiveError::Path {
            path: path.to_owned(),
            why: "it names the root itself".into(),
        });
    }
    Ok(out)
}

/// Opens `rel` inside `root` (symlinks resolve within it).
pub fn open_in_root(root: BorrowedFd, rel: &Path, flags: OFlag) -> Result<OwnedFd, LiveError> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(in_root());
    openat2(root.as_raw_fd(), rel, how)
        .map(|fd| {
            // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
            unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
        })
        .map_err(|source| LiveError::InRoot {
            what: "open",
            path: rel.to_owned(),
            source,
        })
}

/// The directory `rel` inside `root`, made (0755) where it is missing.
pub fn ensure_dir(root: BorrowedFd, rel: &Path) -> Result<OwnedFd, LiveError> {
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY;
    let mut so_far = PathBuf::new();
    let mut fd = open_in_root(root, Path::new("."), dir_flags)?;
    for c in rel.components() {
        so_far.push(c);
        fd = match open_in_root(root, &so_far, dir_flags) {
            Ok(fd) => fd,
            Err(LiveError::InRoot {
                source: Errno::ENOENT,
                ..
            }) => {
                // `fd` is the parent as resolved inside the root; the new
                // name is one plain component, made relative to it.
                match mkdirat(
                    Some(fd.as_raw_fd()),
                    c.as_os_str(),
                    Mode::from_bits_truncate(0o755),
                ) {
                    Ok(()) => open_in_root(root, &so_far, dir_flags)?,
                    // Something is there yet does not resolve: a symlink
                    // to nothing inside the rootfs. Making its target would
                    // mean following it by hand; refuse instead.
                    Err(Errno::EEXIST) => {
                        open_in_root(root, &so_far, dir_flags).map_err(|_| LiveError::Path {
                            path: so_far.clone(),
                            why: "it is a symlink that leads nowhere inside the rootfs".into(),
                        })?
                    }
                    Err(source) => {
                        return Err(LiveError::InRoot {
                            what: "make directory",
                            path: so_far,
                            source,
                        })
                    }
                }
            }
            Err(e) => return Err(e),
        };
    }
    Ok(fd)
}

/// What a bind mount lands on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    File,
    Dir,
}

/// Makes the mount target `rel` inside `root` and returns an O_PATH
/// descriptor of it. A symlink already there is removed (it lives inside
/// the rootfs; following it is what must never happen); a target of the
/// wrong kind is an error.
pub fn ensure_target(root: BorrowedFd, rel: &Path, kind: TargetKind) -> Result<OwnedFd, LiveError> {
    let rel = relative(rel)?;
    let name = rel.file_name().expect("relative() leaves a last component");
    let parent = ensure_dir(root, rel.parent().unwrap_or(Path::new("")))?;
    let err = |what, source| LiveError::InRoot {
        what,
        path: rel.clone(),
        source,
    };
    let open_existing = || {
        openat(
            Some(parent.as_raw_fd()),
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    };
    if let Ok(fd) = open_existing() {
        // SAFETY: openat returned a fresh descriptor that nothing else owns.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let st = fstat(fd.as_raw_fd()).map_err(|e| err("inspect", e))?;
        let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        match (fmt, kind) {
            (SFlag::S_IFLNK, _) => {
                drop(fd);
                unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| err("remove symlink", e))?;
            }
            (SFlag::S_IFDIR, TargetKind::Dir) => return Ok(fd),
            // A socket is where a mask lands (MPS's control_privileged).
            (SFlag::S_IFREG | SFlag::S_IFCHR | SFlag::S_IFSOCK, TargetKind::File) => return Ok(fd),
            _ => {
                return Err(LiveError::Path {
                    path: rel,
                    why: format!(
                        "it exists and is not a {}",
                        if kind == TargetKind::Dir {
                            "directory"
                        } else {
                            "file"
                        }
                    ),
                })
            }
        }
    }
    match kind {
        TargetKind::Dir => match mkdirat(
            Some(parent.as_raw_fd()),
            name,
            Mode::from_bits_truncate(0o755),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(err("make directory", e)),
        },
        TargetKind::File => {
            let fd = openat(
                Some(parent.as_raw_fd()),
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )
            .map_err(|e| err("create", e))?;
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        }
    }
    let fd = open_existing().map_err(|e| err("open", e))?;
    // SAFETY: openat returned a fresh descriptor that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

// The new mount API (Linux 5.2; mount_setattr 5.12). libc has the
// syscall numbers but not these constants. Ref: include/uapi/linux/mount.h.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x04;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// A detached copy of the mount at `path` (a bind of that file or
/// directory alone), with `attrs` set on it. Made in our own namespace, so
/// the host path is resolved on the host; attached later wherever we are.
fn detached_bind(path: &Path, attrs: u64) -> Result<OwnedFd, LiveError> {
    let err = |source| LiveError::HostNode {
        path: path.to_owned(),
        source,
    };
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| err(Errno::EINVAL))?;
    // SAFETY: a valid NUL-terminated path; the result is a new descriptor.
    let fd = Errno::result(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            c.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint,
        )
    })
    .map_err(err)?;
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: fd is ours, "" with AT_EMPTY_PATH names it, attr is a valid
    // struct of the size passed.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map_err(err)?;
    Ok(fd)
}

/// Attaches the detached mount `tree` onto `rel` inside `root`.
fn attach(
    root: BorrowedFd,
    tree: &OwnedFd,
    source_path: &Path,
    rel: &Path,
    kind: TargetKind,
) -> Result<(), LiveError> {
    let target = ensure_target(root, rel, kind)?;
    // SAFETY: both descriptors are ours and named with empty paths.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
    .map_err(|source| LiveError::Mount {
        source_path: source_path.to_owned(),
        target: rel.to_owned(),
        source,
    })
}

/// The mount attributes a mount edit's options ask for (`ro`, `nosuid`,
/// `nodev`, `noexec`; `bind` is how every live mount is made).
pub fn mount_attrs(options: &[String]) -> u64 {
    options.iter().fold(0, |acc, o| {
        acc | match o.as_str() {
            "ro" => MOUNT_ATTR_RDONLY,
            "nosuid" => MOUNT_ATTR_NOSUID,
            "nodev" => MOUNT_ATTR_NODEV,
            "noexec" => MOUNT_ATTR_NOEXEC,
            _ => 0,
        }
    })
}

/// The cgroup v1 `devices.allow` file of a process, from its
/// `/proc/<pid>/cgroup` text and the mount table.
pub fn devices_allow_path(proc_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == "devices")
            .then(|| path.to_owned())
    })?;
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS ... - FSTYPE SOURCE SUPEROPTS
    let mountpoint = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let mut r = right.split(' ');
        let (fstype, _, superopts) = (r.next()?, r.next()?, r.next()?);
        if fstype != "cgroup" || !superopts.split(',').any(|o| o == "devices") {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let root = fields.get(3)?;
        let mp = fields.get(4)?;
        // A hierarchy mounted from a sub-cgroup shows paths relative to it.
        let sub = rel.strip_prefix(root.trim_end_matches('/')).unwrap_or(&rel);
        Some(PathBuf::from(mp).join(sub.trim_start_matches('/')))
    })?;
    Some(mountpoint.join("devices.allow"))
}

/// The cgroup v2 directory of a process, from its `/proc/<pid>/cgroup`
/// text and the mount table.
pub fn unified_path(proc_cgroup: &str, mountinfo: &str) -> Option<PathBuf> {
    let rel = proc_cgroup.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mountpoint = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let fields: Vec<&str> = left.split(' ').collect();
        let root = fields.get(3)?;
        let sub = rel.strip_prefix(root.trim_end_matches('/')).unwrap_or(rel);
        Some(PathBuf::from(fields.get(4)?).join(sub.trim_start_matches('/')))
    })?;
    Some(mountpoint)
}

/// Opens the device cgroup of `pid` for each device. Under cgroup v1 (the
/// devices controller, which runtimes use where it is mounted) a
/// `c MAJ:MIN rw` rule each; under v2 a device program (`bpf`).
pub fn allow_devices(pid: i32, devices: &[DeviceEdit]) -> Result<(), LiveError> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| LiveError::NoCgroup(e.to_string()))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| LiveError::NoCgroup(e.to_string()))?;
    if let Some(path) = devices_allow_path(&cgroup, &mountinfo) {
        return allow_devices_v1(&path, devices);
    }
    match unified_path(&cgroup, &mountinfo) {
        Some(dir) => allow_devices_v2(&dir, devices),
        None => Err(LiveError::NoCgroup(format!(
            "no devices or cgroup2 hierarchy holds pid {pid}"
        ))),
    }
}

pub fn allow_devices_v1(allow_file: &Path, devices: &[DeviceEdit]) -> Result<(), LiveError> {
    for d in devices {
        let rule = format!("c {}:{} rw", d.major, d.minor);
        // The kernel takes one rule per write.
        let written = std::fs::OpenOptions::new()
            .write(true)
            .open(allow_file)
            .and_then(|mut f: File| f.write_all(rule.as_bytes()));
        written.map_err(|source| LiveError::CgroupWrite {
            rule: rule.clone(),
            path: allow_file.to_owned(),
            source,
        })?;
    }
    Ok(())
}

pub fn allow_devices_v2(cgroup_dir: &Path, devices: &[DeviceEdit]) -> Result<(), LiveError> {
    let dir = File::open(cgroup_dir)
        .map_err(|e| LiveError::NoCgroup(format!("{}: {e}", cgroup_dir.display())))?;
    let allow: Vec<Allow> = devices
        .iter()
        .map(|d| Allow {
            major: d.major as u32,
            minor: d.minor as u32,
        })
        .collect();
    bpf::extend(dir.as_fd(), &allow).map_err(|source| LiveError::Bpf {
        cgroup: cgroup_dir.to_owned(),
        source,
    })
}

/// Applies `edits` to the running container `pid` whose rootfs is at
/// `rootfs` (a host path, as in its spec). Device cgroup first, so the
/// nodes are never visible before they work; then the binds, from inside
/// the container's mount namespace; then back to our own.
pub fn apply(edits: &ContainerEdits, pid: i32, rootfs: &Path) -> Result<(), LiveError> {
    allow_devices(pid, &edits.devices)?;
    let ns_err = |what, source| LiveError::Namespace { what, pid, source };
    let open = |p: &str| {
        File::open(p).map_err(|e| {
            ns_err(
                "open mount namespace",
                Errno::from_raw(e.raw_os_error().unwrap_or(0)),
            )
        })
    };
    let ours = open("/proc/self/ns/mnt")?;
    let theirs = open(&format!("/proc/{pid}/ns/mnt"))?;
    // Host nodes and files are cloned here, in our namespace: nothing about
    // them is looked up through the container's filesystem. Device nodes
    // need dev; they get neither suid nor exec. Other mounts get what their
    // options say (driver files: read-only, nosuid, nodev).
    let mut trees = Vec::new();
    for d in &edits.devices {
        trees.push(detached_bind(
            &d.host_path,
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC,
        )?);
    }
    let mut mount_trees = Vec::new();
    for m in &edits.mounts {
        let tree = detached_bind(&m.source, mount_attrs(&m.options))?;
        let st = fstat(tree.as_raw_fd()).map_err(|source| LiveError::HostNode {
            path: m.source.clone(),
            source,
        })?;
        let kind = if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            TargetKind::Dir
        } else {
            TargetKind::File
        };
        mount_trees.push((tree, kind));
    }
    setns(theirs.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| ns_err("enter the mount namespace of", e))?;
    let result = (|| {
        let root = nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|source| LiveError::InRoot {
            what: "open rootfs",
            path: rootfs.to_owned(),
            source,
        })?;
        // SAFETY: open returned a fresh descriptor that nothing else owns.
        let root = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(root) };
        for (d, tree) in edits.devices.iter().zip(&trees) {
            attach(
                root.as_fd(),
                tree,
                &d.host_path,
                Path::new(&d.path),
                TargetKind::File,
            )?;
        }
        for (m, (tree, kind)) in edits.mounts.iter().zip(&mount_trees) {
            attach(
                root.as_fd(),
                tree,
                &m.source,
                Path::new(&m.destination),
                *kind,
            )?;
        }
        Ok(())
    })();
    setns(ours.as_fd(), CloneFlags::CLONE_NEWNS)
        .map_err(|e| ns_err("return to the hook's own mount namespace from", e))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn root(dir: &Path) -> OwnedFd {
        let fd = nix::fcntl::open(dir, OFlag::O_PATH | OFlag::O_DIRECTORY, Mode::empty()).unwrap();
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }
    }

    /// A host directory the hostile rootfs points at, and the rootfs.
    fn hostile() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host-target");
        let rootfs = t.path().join("rootfs");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::create_dir_all(rootfs.join("real")).unwrap();
        std::fs::write(host.join("passwd"), "host file").unwrap();
        (t, host, rootfs)
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn an_absolute_symlinked_dev_resolves_inside_the_rootfs() {
        let (_t, host, rootfs) = hostile();
        symlink(&host, rootfs.join("dev")).unwrap();
        let r = root(&rootfs);
        // Nothing at that path inside the rootfs: refused, not followed out.
        let e = ensure_target(r.as_fd(), Path::new("/dev/nvidia1"), TargetKind::File).unwrap_err();
        assert!(
            e.to_string().contains("leads nowhere inside the rootfs"),
            "{e}"
        );
        assert_eq!(listing(&host), ["passwd"], "the host side is untouched");
        // Once the runtime has made it (as runc does, mounting /dev's tmpfs
        // at the link's target inside the rootfs), the node lands there.
        let inside = rootfs.join(host.strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        ensure_target(r.as_fd(), Path::new("/dev/nvidia1"), TargetKind::File).unwrap();
        assert!(inside.join("nvidia1").is_file());
        assert_eq!(listing(&host), ["passwd"], "the host side is untouched");
    }

    #[test]
    fn a_preexisting_symlinked_node_is_replaced_not_followed() {
        let (_t, host, rootfs) = hostile();
        std::fs::create_dir(rootfs.join("dev")).unwrap();
        symlink(host.join("passwd"), rootfs.join("dev/nvidia0")).unwrap();
        let r = root(&rootfs);
        let fd = ensure_target(r.as_fd(), Path::new("dev/nvidia0"), TargetKind::File).unwrap();
        let st = fstat(fd.as_raw_fd()).unwrap();
        assert_eq!(
            SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
            SFlag::S_IFREG
        );
        assert!(!rootfs.join("dev/nvidia0").is_symlink());
        assert_eq!(
            std::fs::read_to_string(host.join("passwd")).unwrap(),
            "host file"
        );
    }

    #[test]
    fn escaping_links_stay_inside() {
        let (_t, host, rootfs) = hostile();
        symlink("/", rootfs.join("tmp")).unwrap();
        symlink("../../../../../../", rootfs.join("real/up")).unwrap();
        let r = root(&rootfs);
        ensure_target(r.as_fd(), Path::new("/tmp/nvidia-mps"), TargetKind::Dir).unwrap();
        assert!(
            rootfs.join("nvidia-mps").is_dir(),
            "/tmp → / is the rootfs's own root"
        );
        // A real /tmp whose nvidia-mps climbs out: the link is removed
        // (inside the rootfs) and a directory made in its place.
        std::fs::remove_file(rootfs.join("tmp")).unwrap();
        std::fs::create_dir(rootfs.join("tmp")).unwrap();
        symlink("../../../etc", rootfs.join("tmp/nvidia-mps")).unwrap();
        ensure_target(r.as_fd(), Path::new("/tmp/nvidia-mps"), TargetKind::Dir).unwrap();
        assert!(
            rootfs.join("tmp/nvidia-mps").is_dir() && !rootfs.join("tmp/nvidia-mps").is_symlink()
        );
        ensure_target(
            r.as_fd(),
            Path::new("real/up/dev/nvidia9"),
            TargetKind::File,
        )
        .unwrap();
        assert!(rootfs.join("dev/nvidia9").is_file());
        assert_eq!(listing(&host), ["passwd"]);
    }

    #[test]
    fn dotdot_and_wrong_kinds_are_refused() {
        let (_t, _host, rootfs) = hostile();
        let r = root(&rootfs);
        assert!(ensure_target(r.as_fd(), Path::new("dev/../../x"), TargetKind::File).is_err());
        assert!(ensure_target(r.as_fd(), Path::new("/"), TargetKind::Dir).is_err());
        let e = ensure_target(r.as_fd(), Path::new("real"), TargetKind::File).unwrap_err();
        assert!(e.to_string().contains("not a file"), "{e}");
    }

    #[test]
    fn mount_options_become_attributes() {
        let o = |v: &[&str]| mount_attrs(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            o(&["bind", "ro", "nosuid", "nodev"]),
            MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV
        );
        assert_eq!(
            o(&["bind", "nosuid", "nodev", "noexec"]),
            MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
        );
        assert_eq!(o(&["rbind"]), 0);
    }

    #[test]
    fn the_devices_allow_file_is_found_from_proc() {
        let cgroup = "12:pids:/c1\n5:devices:/docker/abc\n0::/\n";
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n\
                         31 25 0:27 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices\n";
        assert_eq!(
            devices_allow_path(cgroup, mountinfo),
            Some(PathBuf::from(
                "/sys/fs/cgroup/devices/docker/abc/devices.allow"
            ))
        );
        // A hierarchy mounted from a sub-cgroup (inside a container).
        let nested = "31 25 0:27 /docker /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n";
        assert_eq!(
            devices_allow_path(cgroup, nested),
            Some(PathBuf::from("/sys/fs/cgroup/devices/abc/devices.allow"))
        );
        assert_eq!(
            devices_allow_path("0::/user.slice\n", mountinfo),
            None,
            "pure v2"
        );
        assert_eq!(
            devices_allow_path(
                cgroup,
                "40 25 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
            ),
            None
        );
    }
}
