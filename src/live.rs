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
use nix::fcntl::{openat, OFlag};
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
fn open_in_root(root: BorrowedFd, rel: &Path, flags: OFlag) -> Result<OwnedFd, LiveError> {
    crate::sys::open_in_root(root, rel, flags).map_err(|source| LiveError::InRoot {
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

// Mount attributes (Linux 5.12; include/uapi/linux/mount.h).
const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const MOUNT_ATTR_NOEXEC: u64 = 0x8;

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

/// What the live path does to the system, one call each: the seam between
/// the order of the steps (`apply`, tested with `Recorder` without root) and
/// the system calls themselves (`System`).
pub trait Host {
    /// An open handle: a namespace, a detached mount, the rootfs, a mount
    /// target.
    type Handle;
    /// Reads a procfs file (`/proc/<pid>/cgroup`, `/proc/self/mountinfo`).
    fn read_proc(&mut self, path: &Path) -> std::io::Result<String>;
    /// cgroup v1: one `c MAJ:MIN rw` rule written to `devices.allow`.
    fn allow_device_rule(&mut self, allow_file: &Path, rule: &str) -> std::io::Result<()>;
    /// cgroup v2: the cgroup's device program extended with `allow`.
    fn allow_device_program(&mut self, cgroup_dir: &Path, allow: &[Allow])
        -> Result<(), LiveError>;
    /// Opens a mount namespace file (`/proc/<pid>/ns/mnt`).
    fn open_namespace(&mut self, path: &Path) -> Result<Self::Handle, Errno>;
    /// Enters the mount namespace `ns`.
    fn enter_namespace(&mut self, ns: &Self::Handle) -> Result<(), Errno>;
    /// A detached copy of the mount at host path `path` with mount
    /// attributes `attrs`, and whether it is a directory.
    fn clone_mount(&mut self, path: &Path, attrs: u64) -> Result<(Self::Handle, bool), Errno>;
    /// Opens the container's rootfs (a host path, seen from inside its
    /// mount namespace).
    fn open_root(&mut self, rootfs: &Path) -> Result<Self::Handle, Errno>;
    /// The mount target `rel` inside `root`, made if missing (`ensure_target`).
    fn mount_target(
        &mut self,
        root: &Self::Handle,
        rel: &Path,
        kind: TargetKind,
    ) -> Result<Self::Handle, LiveError>;
    /// Attaches the detached mount `tree` onto `target`.
    fn move_mount(&mut self, tree: &Self::Handle, target: &Self::Handle) -> Result<(), Errno>;
    /// Makes files as host `uid`:`gid` from now on (the filesystem ids of
    /// this thread; 0:0 puts root back).
    fn make_files_as(&mut self, uid: u32, gid: u32) -> Result<(), Errno>;
}

/// The host id that id 0 inside a user namespace maps to, from its
/// `uid_map` or `gid_map` (`inside outside count` lines); `None` when the
/// namespace maps no root.
pub fn mapped_root(map: &str) -> Option<u32> {
    map.lines().find_map(|l| {
        let mut f = l.split_whitespace().map(str::parse::<u64>);
        let (inside, outside, count) = (f.next()?.ok()?, f.next()?.ok()?, f.next()?.ok()?);
        (inside == 0 && count > 0)
            .then(|| u32::try_from(outside).ok())
            .flatten()
    })
}

/// The real system: rustix's wrappers of the mount API and setns, nix's of
/// the rest; mount_setattr by hand (neither crate has it).
pub struct System;

impl Host for System {
    type Handle = OwnedFd;

    fn read_proc(&mut self, path: &Path) -> std::io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn allow_device_rule(&mut self, allow_file: &Path, rule: &str) -> std::io::Result<()> {
        // The kernel takes one rule per write.
        std::fs::OpenOptions::new()
            .write(true)
            .open(allow_file)
            .and_then(|mut f: File| f.write_all(rule.as_bytes()))
    }

    fn allow_device_program(
        &mut self,
        cgroup_dir: &Path,
        allow: &[Allow],
    ) -> Result<(), LiveError> {
        let dir = File::open(cgroup_dir)
            .map_err(|e| LiveError::NoCgroup(format!("{}: {e}", cgroup_dir.display())))?;
        bpf::extend(dir.as_fd(), allow).map_err(|source| LiveError::Bpf {
            cgroup: cgroup_dir.to_owned(),
            source,
        })
    }

    fn open_namespace(&mut self, path: &Path) -> Result<OwnedFd, Errno> {
        File::open(path)
            .map(OwnedFd::from)
            .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(0)))
    }

    fn enter_namespace(&mut self, ns: &OwnedFd) -> Result<(), Errno> {
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Mount),
        )
        .map_err(errno)
    }

    fn clone_mount(&mut self, path: &Path, attrs: u64) -> Result<(OwnedFd, bool), Errno> {
        use rustix::mount::OpenTreeFlags;
        let tree = rustix::mount::open_tree(
            rustix::fs::CWD,
            path,
            OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
        )
        .map_err(errno)?;
        mount_setattr(&tree, attrs)?;
        let st = fstat(tree.as_raw_fd())?;
        let dir = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR;
        Ok((tree, dir))
    }

    fn open_root(&mut self, rootfs: &Path) -> Result<OwnedFd, Errno> {
        crate::sys::open_root(rootfs)
    }

    fn mount_target(
        &mut self,
        root: &OwnedFd,
        rel: &Path,
        kind: TargetKind,
    ) -> Result<OwnedFd, LiveError> {
        ensure_target(root.as_fd(), rel, kind)
    }

    fn move_mount(&mut self, tree: &OwnedFd, target: &OwnedFd) -> Result<(), Errno> {
        use rustix::mount::MoveMountFlags;
        rustix::mount::move_mount(
            tree.as_fd(),
            c"",
            target.as_fd(),
            c"",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(errno)
    }

    fn make_files_as(&mut self, uid: u32, gid: u32) -> Result<(), Errno> {
        use nix::unistd::{setfsgid, setfsuid, Gid, Uid};
        // Per thread, and this thread alone makes the targets. The calls
        // report no error: an invalid id (-1) changes nothing and answers
        // the id in force, which must be the one asked for.
        setfsgid(Gid::from_raw(gid));
        setfsuid(Uid::from_raw(uid));
        let now = (
            setfsuid(Uid::from_raw(u32::MAX)).as_raw(),
            setfsgid(Gid::from_raw(u32::MAX)).as_raw(),
        );
        if now == (uid, gid) {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno::from_raw(e.raw_os_error())
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets `attrs` on the detached mount `tree` (mount_setattr, Linux 5.12;
/// neither rustix nor nix wraps it).
fn mount_setattr(tree: &OwnedFd, attrs: u64) -> Result<(), Errno> {
    let attr = MountAttr {
        attr_set: attrs,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: the descriptor is ours, "" with AT_EMPTY_PATH names it, and
    // attr is a valid struct of the size passed.
    Errno::result(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

/// Opens the device cgroup of `pid` for each device. Under cgroup v1 (the
/// devices controller, which runtimes use where it is mounted) a
/// `c MAJ:MIN rw` rule each; under v2 a device program (`bpf`).
pub fn allow_devices<H: Host>(
    host: &mut H,
    pid: i32,
    devices: &[DeviceEdit],
) -> Result<(), LiveError> {
    let cgroup = host
        .read_proc(Path::new(&format!("/proc/{pid}/cgroup")))
        .map_err(|e| LiveError::NoCgroup(e.to_string()))?;
    let mountinfo = host
        .read_proc(Path::new("/proc/self/mountinfo"))
        .map_err(|e| LiveError::NoCgroup(e.to_string()))?;
    if let Some(allow_file) = devices_allow_path(&cgroup, &mountinfo) {
        for d in devices {
            let rule = format!("c {}:{} rw", d.major, d.minor);
            host.allow_device_rule(&allow_file, &rule)
                .map_err(|source| LiveError::CgroupWrite {
                    rule: rule.clone(),
                    path: allow_file.clone(),
                    source,
                })?;
        }
        return Ok(());
    }
    match unified_path(&cgroup, &mountinfo) {
        Some(dir) => {
            let allow: Vec<Allow> = devices
                .iter()
                .map(|d| Allow {
                    major: d.major as u32,
                    minor: d.minor as u32,
                })
                .collect();
            host.allow_device_program(&dir, &allow)
        }
        None => Err(LiveError::NoCgroup(format!(
            "no devices or cgroup2 hierarchy holds pid {pid}"
        ))),
    }
}

/// Applies `edits` to the running container `pid` whose rootfs is at
/// `rootfs` (a host path, as in its spec), in this order: the device
/// cgroup first, so the nodes are never visible before they work; the host
/// nodes and files cloned here, in our own namespace, so nothing about them
/// is looked up through the container's filesystem (device nodes get
/// neither suid nor exec; other mounts what their options say); then,
/// inside the container's mount namespace, each clone attached at its
/// target in the rootfs; then back to our own namespace, whatever happened.
pub fn apply<H: Host>(
    host: &mut H,
    edits: &ContainerEdits,
    pid: i32,
    rootfs: &Path,
) -> Result<(), LiveError> {
    allow_devices(host, pid, &edits.devices)?;
    let ns_err = |what, source| LiveError::Namespace { what, pid, source };
    let ours = host
        .open_namespace(Path::new("/proc/self/ns/mnt"))
        .map_err(|e| ns_err("open mount namespace", e))?;
    let theirs = host
        .open_namespace(Path::new(&format!("/proc/{pid}/ns/mnt")))
        .map_err(|e| ns_err("open mount namespace", e))?;
    let mut trees = Vec::new();
    for d in &edits.devices {
        let (tree, _) = host
            .clone_mount(&d.host_path, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NOEXEC)
            .map_err(|source| LiveError::HostNode {
                path: d.host_path.clone(),
                source,
            })?;
        trees.push((tree, &d.host_path, Path::new(&d.path), TargetKind::File));
    }
    for m in &edits.mounts {
        let (tree, dir) = host
            .clone_mount(&m.source, mount_attrs(&m.options))
            .map_err(|source| LiveError::HostNode {
                path: m.source.clone(),
                source,
            })?;
        let kind = if dir {
            TargetKind::Dir
        } else {
            TargetKind::File
        };
        trees.push((tree, &m.source, Path::new(&m.destination), kind));
    }
    // In a user namespace the container's own filesystems (its /dev, a
    // tmpfs) belong to that namespace: a file made there by host root,
    // whom it does not map, fails (EOVERFLOW). Targets are made as the
    // container's root, as its runtime made the rest of its rootfs.
    let mut owner = |map: &str| {
        host.read_proc(Path::new(&format!("/proc/{pid}/{map}")))
            .ok()
            .and_then(|m| mapped_root(&m))
            .unwrap_or(0)
    };
    let (uid, gid) = (owner("uid_map"), owner("gid_map"));
    host.enter_namespace(&theirs)
        .map_err(|e| ns_err("enter the mount namespace of", e))?;
    let result = (|| {
        let root = host.open_root(rootfs).map_err(|source| LiveError::InRoot {
            what: "open rootfs",
            path: rootfs.to_owned(),
            source,
        })?;
        for (tree, source_path, target, kind) in &trees {
            let at = if (uid, gid) == (0, 0) {
                host.mount_target(&root, target, *kind)?
            } else {
                let owner_err = |source| LiveError::Namespace {
                    what: "make files as the container's root (uid 0 of its user namespace)",
                    pid,
                    source,
                };
                host.make_files_as(uid, gid).map_err(owner_err)?;
                let at = host.mount_target(&root, target, *kind);
                host.make_files_as(0, 0).map_err(owner_err)?;
                at?
            };
            host.move_mount(tree, &at)
                .map_err(|source| LiveError::Mount {
                    source_path: source_path.to_path_buf(),
                    target: target.to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    })();
    host.enter_namespace(&ours)
        .map_err(|e| ns_err("return to the hook's own mount namespace from", e))?;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A host that records every call, in order, with its arguments, and
    /// fails the first call whose record starts with `fail`.
    struct Recorder {
        calls: Vec<String>,
        cgroup: &'static str,
        mountinfo: &'static str,
        id_map: &'static str,
        fail: Option<&'static str>,
    }

    impl Recorder {
        fn new(cgroup: &'static str, mountinfo: &'static str) -> Recorder {
            Recorder {
                calls: Vec::new(),
                cgroup,
                mountinfo,
                id_map: "         0          0 4294967295\n",
                fail: None,
            }
        }

        /// Records a call; `Err` when it is the one to fail.
        fn call(&mut self, record: String) -> Result<(), Errno> {
            let failing = self.fail.is_some_and(|f| record.starts_with(f));
            self.calls.push(record);
            if failing {
                self.fail = None;
                return Err(Errno::EPERM);
            }
            Ok(())
        }
    }

    impl Host for Recorder {
        type Handle = String;

        fn read_proc(&mut self, path: &Path) -> std::io::Result<String> {
            self.call(format!("read {}", path.display()))?;
            Ok(if path.ends_with("cgroup") {
                self.cgroup
            } else if path.ends_with("uid_map") || path.ends_with("gid_map") {
                self.id_map
            } else {
                self.mountinfo
            }
            .to_owned())
        }

        fn allow_device_rule(&mut self, allow_file: &Path, rule: &str) -> std::io::Result<()> {
            Ok(self.call(format!("rule {rule} > {}", allow_file.display()))?)
        }

        fn allow_device_program(
            &mut self,
            cgroup_dir: &Path,
            allow: &[Allow],
        ) -> Result<(), LiveError> {
            let list: Vec<String> = allow
                .iter()
                .map(|a| format!("{}:{}", a.major, a.minor))
                .collect();
            self.call(format!(
                "program {} {}",
                cgroup_dir.display(),
                list.join(",")
            ))
            .map_err(|e| LiveError::NoCgroup(e.to_string()))
        }

        fn open_namespace(&mut self, path: &Path) -> Result<String, Errno> {
            self.call(format!("open {}", path.display()))?;
            Ok(path.display().to_string())
        }

        fn enter_namespace(&mut self, ns: &String) -> Result<(), Errno> {
            self.call(format!("enter {ns}"))
        }

        fn clone_mount(&mut self, path: &Path, attrs: u64) -> Result<(String, bool), Errno> {
            self.call(format!("clone {} {attrs:#x}", path.display()))?;
            Ok((format!("tree {}", path.display()), path.ends_with("pipe")))
        }

        fn open_root(&mut self, rootfs: &Path) -> Result<String, Errno> {
            self.call(format!("root {}", rootfs.display()))?;
            Ok("root".into())
        }

        fn mount_target(
            &mut self,
            root: &String,
            rel: &Path,
            kind: TargetKind,
        ) -> Result<String, LiveError> {
            self.call(format!("target {root}/{} {kind:?}", rel.display()))
                .map_err(|source| LiveError::InRoot {
                    what: "make",
                    path: rel.to_owned(),
                    source,
                })?;
            Ok(format!("at {}", rel.display()))
        }

        fn move_mount(&mut self, tree: &String, target: &String) -> Result<(), Errno> {
            self.call(format!("move {tree} -> {target}"))
        }

        fn make_files_as(&mut self, uid: u32, gid: u32) -> Result<(), Errno> {
            self.call(format!("files as {uid}:{gid}"))
        }
    }

    const V1_CGROUP: &str = "5:devices:/c1\n";
    const V1_MOUNTS: &str = "31 25 0:27 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n";

    fn gpu1() -> ContainerEdits {
        let dev = |path: &str, minor: u64| DeviceEdit {
            path: path.into(),
            host_path: format!("/node{path}").into(),
            major: 195,
            minor,
            file_mode: 0o666,
        };
        ContainerEdits {
            devices: vec![dev("/dev/nvidia1", 1), dev("/dev/nvidiactl", 255)],
            mounts: vec![crate::edits::MountEdit {
                destination: "/tmp/nvidia-mps".into(),
                source: "/run/mps/GPU-1/pipe".into(),
                typ: "bind".into(),
                options: vec![
                    "bind".into(),
                    "ro".into(),
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                ],
            }],
            env: Vec::new(),
            annotations: Vec::new(),
        }
    }

    #[test]
    fn in_a_user_namespace_targets_are_made_as_the_containers_root() {
        let mut host = Recorder::new(V1_CGROUP, V1_MOUNTS);
        host.id_map = "         0     100000      65536\n";
        apply(&mut host, &gpu1(), 42, Path::new("/b/rootfs")).unwrap();
        let inside: Vec<&str> = host
            .calls
            .iter()
            .skip_while(|c| !c.starts_with("root "))
            .map(String::as_str)
            .collect();
        assert_eq!(
            inside,
            [
                "root /b/rootfs",
                "files as 100000:100000",
                "target root//dev/nvidia1 File",
                "files as 0:0",
                "move tree /node/dev/nvidia1 -> at /dev/nvidia1",
                "files as 100000:100000",
                "target root//dev/nvidiactl File",
                "files as 0:0",
                "move tree /node/dev/nvidiactl -> at /dev/nvidiactl",
                "files as 100000:100000",
                "target root//tmp/nvidia-mps Dir",
                "files as 0:0",
                "move tree /run/mps/GPU-1/pipe -> at /tmp/nvidia-mps",
                "enter /proc/self/ns/mnt",
            ]
        );
        assert_eq!(mapped_root("0 100000 65536\n"), Some(100000));
        assert_eq!(mapped_root("1 100000 65536\n"), None, "no root mapped");
        assert_eq!(mapped_root("0 0 4294967295"), Some(0));
    }

    #[test]
    fn the_live_path_opens_the_cgroup_first_clones_on_the_host_and_attaches_inside() {
        let mut host = Recorder::new(V1_CGROUP, V1_MOUNTS);
        apply(&mut host, &gpu1(), 42, Path::new("/b/rootfs")).unwrap();
        assert_eq!(
            host.calls,
            [
                "read /proc/42/cgroup",
                "read /proc/self/mountinfo",
                "rule c 195:1 rw > /sys/fs/cgroup/devices/c1/devices.allow",
                "rule c 195:255 rw > /sys/fs/cgroup/devices/c1/devices.allow",
                "open /proc/self/ns/mnt",
                "open /proc/42/ns/mnt",
                // nosuid|noexec for nodes; ro|nosuid|nodev|noexec as asked.
                "clone /node/dev/nvidia1 0xa",
                "clone /node/dev/nvidiactl 0xa",
                "clone /run/mps/GPU-1/pipe 0xf",
                "read /proc/42/uid_map",
                "read /proc/42/gid_map",
                "enter /proc/42/ns/mnt",
                "root /b/rootfs",
                "target root//dev/nvidia1 File",
                "move tree /node/dev/nvidia1 -> at /dev/nvidia1",
                "target root//dev/nvidiactl File",
                "move tree /node/dev/nvidiactl -> at /dev/nvidiactl",
                "target root//tmp/nvidia-mps Dir",
                "move tree /run/mps/GPU-1/pipe -> at /tmp/nvidia-mps",
                "enter /proc/self/ns/mnt",
            ]
        );
    }

    #[test]
    fn under_cgroup_v2_the_device_program_is_extended_with_exactly_the_nodes() {
        let mut host = Recorder::new(
            "0::/system.slice/c1\n",
            "40 25 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
        );
        apply(&mut host, &gpu1(), 7, Path::new("/r")).unwrap();
        assert_eq!(
            host.calls[2],
            "program /sys/fs/cgroup/system.slice/c1 195:1,195:255"
        );
        assert_eq!(
            host.calls.iter().filter(|c| c.starts_with("rule")).count(),
            0
        );
    }

    #[test]
    fn a_failed_step_stops_the_rest_and_the_hook_always_returns_to_its_namespace() {
        // A failed attach: the rest is not attached, our namespace is
        // entered again, the error names both ends.
        let mut host = Recorder::new(V1_CGROUP, V1_MOUNTS);
        host.fail = Some("move tree /node/dev/nvidiactl");
        let e = apply(&mut host, &gpu1(), 42, Path::new("/b/rootfs")).unwrap_err();
        assert!(
            e.to_string()
                .contains("/node/dev/nvidiactl onto \"/dev/nvidiactl\""),
            "{e}"
        );
        assert_eq!(host.calls.last().unwrap(), "enter /proc/self/ns/mnt");
        assert!(!host.calls.iter().any(|c| c.contains("nvidia-mps")));
        // A refused cgroup rule: nothing is cloned or entered.
        let mut host = Recorder::new(V1_CGROUP, V1_MOUNTS);
        host.fail = Some("rule c 195:255");
        assert!(apply(&mut host, &gpu1(), 42, Path::new("/r")).is_err());
        assert!(!host
            .calls
            .iter()
            .any(|c| c.starts_with("clone") || c.starts_with("enter")));
        // A host node that cannot be cloned: the container's namespace is
        // never entered.
        let mut host = Recorder::new(V1_CGROUP, V1_MOUNTS);
        host.fail = Some("clone /run/mps");
        let e = apply(&mut host, &gpu1(), 42, Path::new("/r")).unwrap_err();
        assert!(e.to_string().contains("/run/mps/GPU-1/pipe"), "{e}");
        assert!(!host.calls.iter().any(|c| c.starts_with("enter")));
        // No cgroup at all: an error that says so, and nothing else done.
        let mut host = Recorder::new("1:name=systemd:/x\n", "");
        let e = apply(&mut host, &gpu1(), 42, Path::new("/r")).unwrap_err();
        assert!(
            e.to_string()
                .contains("no devices or cgroup2 hierarchy holds pid 42"),
            "{e}"
        );
        assert_eq!(host.calls.len(), 2);
    }

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
