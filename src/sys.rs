//! Host utilities every room uses: a file replaced atomically under a
//! temporary name of its own, whether a process is still the one that was
//! seen (its pid and start time), the clock, paths resolved inside a root
//! (`openat2` with `RESOLVE_IN_ROOT`), and the one shape of an I/O error
//! ("cannot <action> <path>: <why>"). A leaf: it imports nothing of the
//! crate.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use thiserror::Error;

/// An I/O step that failed on a path: what was being done, where, and why.
/// Rooms wrap it with the hint their users need.
#[derive(Debug, Error)]
#[error("cannot {action} {path}: {source}")]
pub struct IoError {
    pub action: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    pub fn kind(&self) -> std::io::ErrorKind {
        self.source.kind()
    }
}

/// A `map_err` for an I/O step: `io("write", &path)`.
pub fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> IoError + 'a {
    move |source| IoError {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically and durably: a temp file beside it,
/// fsync, rename over, fsync of the directory. Readers see old or new,
/// never torn, and after a crash the new bytes are there.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_via_temp(path, bytes, mode, true)
}

/// Replaces `path` with `bytes` atomically for readers (a temp file beside
/// it renamed over), without forcing them to disk: for files that do not
/// outlive a crash of the node anyway, such as a container's bundle.
pub fn replace(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write_via_temp(path, bytes, mode, false)
}

/// Tells apart the temp files one process makes.
static TEMP_SERIAL: AtomicU64 = AtomicU64::new(0);

/// Makes a temp file beside `path` under a name no other writer uses
/// (`.<name>.<pid>.<serial>.tmp`, created exclusively, never through a
/// link): two writers of one path never write into each other's temp.
fn create_temp(dir: &Path, name: &str, mode: u32) -> std::io::Result<(PathBuf, File)> {
    loop {
        let serial = TEMP_SERIAL.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{name}.{}.{serial}.tmp", std::process::id()));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)
        {
            // A temp a killed process of the same pid left behind: another name.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            other => return other.map(|f| (tmp, f)),
        }
    }
}

/// Removes from `dir` the temp files (`create_temp`'s) of writers that
/// were killed before they renamed them: those whose process is gone. Says
/// how many went.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(list) = std::fs::read_dir(dir) else {
        return 0;
    };
    list.flatten()
        .filter(|e| {
            let name = e.file_name();
            let Some(rest) = name.to_str().and_then(|n| n.strip_suffix(".tmp")) else {
                return false;
            };
            // .<name>.<pid>.<serial>.tmp
            let mut parts = rest.rsplitn(3, '.');
            let (Some(serial), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next())
            else {
                return false;
            };
            let (Ok(_), Ok(pid)) = (serial.parse::<u64>(), pid.parse::<i32>()) else {
                return false;
            };
            // SAFETY: kill with signal 0 sends nothing; it only asks.
            pid > 0 && unsafe { libc::kill(pid, 0) } == -1 && Errno::last() == Errno::ESRCH
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

fn write_via_temp(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    // A bare file name's parent is "": the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let (tmp, mut f) = create_temp(dir, name, mode)?;
    let result = (|| {
        // The mode asked for, whatever the umask took from it.
        std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        f.write_all(bytes)?;
        if durable {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durable {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// An exclusive lock held while it lives: `flock` on a file of its own
/// (made 0600 if missing). The kernel queues the waiters and lets the lock
/// go when its holder dies, however it dies.
pub struct Lock {
    _held: nix::fcntl::Flock<File>,
}

impl Lock {
    pub fn exclusive(path: &Path) -> std::io::Result<Lock> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)?;
        let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| std::io::Error::from(e))?;
        Ok(Lock { _held: held })
    }
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// UTC time as RFC 3339 with seconds, e.g. `2026-11-25T13:34:40Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    // Ref: Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms",
    // civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A process as it was seen: its pid and its start time (clock ticks after
/// boot), which together name it for as long as the node runs; a pid
/// alone may be given to another process once this one is gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    pub pid: i32,
    pub start: u64,
}

impl Process {
    /// The process `pid` as it is now, if it exists and is not a zombie.
    pub fn find(pid: i32) -> Option<Process> {
        let (state, start) = process_stat(pid)?;
        (state != 'Z' && state != 'X').then_some(Process { pid, start })
    }

    /// Whether this very process is still alive (not exited, not a zombie,
    /// its pid not since given to another).
    pub fn is_alive(&self) -> bool {
        Process::find(self.pid).is_some_and(|p| p.start == self.start)
    }
}

/// State (field 3) and start time (field 22, clock ticks after boot) from
/// `/proc/<pid>/stat`.
fn process_stat(pid: i32) -> Option<(char, u64)> {
    if pid <= 0 {
        return None;
    }
    // One read: the line is a few hundred bytes, and procfs makes it anew
    // at each read.
    let mut buf = [0u8; 1024];
    let mut f = File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = f.read(&mut buf).ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after the last ')' are plain.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// Processes watched through pidfds, for a long-lived caller (the NRI
/// plugin): once a process is seen alive, its exit is learnt from a
/// descriptor of it (readable once it has exited), not by reading `/proc`
/// again. A decision is a round of questions: `refresh` polls every
/// descriptor at once (one system call however many holds there are), and
/// `alive` answers from that. Entries not asked about in a round go at the
/// next refresh.
#[derive(Default)]
pub struct Watch {
    fds: std::collections::HashMap<(i32, u64), (OwnedFd, bool)>,
}

impl Watch {
    /// Starts a round: forgets the processes not asked about since the
    /// last refresh, and learns which of the rest have exited.
    pub fn refresh(&mut self) {
        self.fds.retain(|_, (_, asked)| std::mem::take(asked));
        let (keys, mut polled): (Vec<(i32, u64)>, Vec<libc::pollfd>) = self
            .fds
            .iter()
            .map(|(k, (fd, _))| {
                let p = libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                (*k, p)
            })
            .unzip();
        // SAFETY: a valid array of `polled.len()` pollfds, no wait.
        let n = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, 0) };
        if n <= 0 {
            return;
        }
        for (k, p) in keys.iter().zip(&polled) {
            if p.revents != 0 {
                self.fds.remove(k);
            }
        }
    }

    /// Whether `p` lives (as `Process::is_alive` says): for a process
    /// watched, as of the last refresh.
    pub fn alive(&mut self, p: Process) -> bool {
        if let Some((_, asked)) = self.fds.get_mut(&(p.pid, p.start)) {
            *asked = true;
            return true;
        }
        if !p.is_alive() {
            return false;
        }
        // SAFETY: pidfd_open takes a pid and flags and returns a new
        // descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p.pid, 0) };
        if fd < 0 {
            // Alive by /proc; just not watched (an older kernel).
            return true;
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        // The pid may have changed hands between the look and the open:
        // the descriptor names this process only if the pid still has its
        // start time now.
        if !p.is_alive() {
            return false;
        }
        self.fds.insert((p.pid, p.start), (fd, true));
        true
    }
}

/// Why `open_regular` opened nothing.
#[derive(Debug)]
pub enum Irregular {
    Io(std::io::Error),
    /// What it is instead: "a FIFO", "a character device"…
    NotRegular(&'static str),
    /// Its size, over the most allowed.
    TooLarge(u64),
}

/// Opens a regular file someone else controls (a bundle's config.json, an
/// exec's process file) without being led astray by what stands at its
/// path: first as a mere handle (`O_PATH`: no device is opened, no FIFO
/// waited on) that is looked at, and only a regular file of at most `max`
/// bytes is then opened, through that very handle, so nothing can be
/// swapped in between. `follow`: whether a symlink at `path` is followed;
/// `write`: opened for writing too. Non-blocking, no controlling terminal.
pub fn open_regular(
    path: &Path,
    follow: bool,
    write: bool,
    max: u64,
) -> Result<(File, std::fs::Metadata), Irregular> {
    let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
    if !follow {
        flags |= OFlag::O_NOFOLLOW;
    }
    // By the system call itself: the standard library's OpenOptions masks
    // O_PATH out where the C library counts it in O_ACCMODE (musl's does).
    let fd = nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())
        .map_err(|e| Irregular::Io(e.into()))?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    let handle = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let meta = handle.metadata().map_err(Irregular::Io)?;
    if !meta.file_type().is_file() {
        return Err(Irregular::NotRegular(kind_of(&meta.file_type())));
    }
    if meta.len() > max {
        return Err(Irregular::TooLarge(meta.len()));
    }
    let open = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(p)
    };
    let file = match open(Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd()))) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // No /proc: the path itself, checked again once open.
            let f = open(path).map_err(Irregular::Io)?;
            if !f.metadata().map_err(Irregular::Io)?.file_type().is_file() {
                return Err(Irregular::NotRegular("not the regular file it was"));
            }
            f
        }
        other => other.map_err(Irregular::Io)?,
    };
    Ok((file, meta))
}

/// What a file that is not a regular one is, for a message.
fn kind_of(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "a special file"
    }
}

/// The flags every in-root lookup uses: stay inside the root, and refuse
/// /proc-style magic links, which could point anywhere.
fn in_root() -> ResolveFlag {
    ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS
}

/// Opens a directory to resolve paths in (`open_in_root`).
pub fn open_root(path: &Path) -> Result<OwnedFd, Errno> {
    let fd = nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: open returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens `rel` inside `root` as if `root` were `/`: symlinks and `..`
/// resolve within it, never out of it.
///
/// Ref: openat2(2), RESOLVE_IN_ROOT (Linux 5.6).
pub fn open_in_root(root: BorrowedFd, rel: &Path, flags: OFlag) -> Result<OwnedFd, Errno> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .resolve(in_root());
    openat2(root.as_raw_fd(), rel, how).map(|fd| {
        // SAFETY: openat2 returned a fresh descriptor that nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watched_process_is_alive_until_a_refresh_sees_it_exited_and_then_forgotten() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let p = Process::find(child.id() as i32).unwrap();
        let mut w = Watch::default();
        assert!(w.alive(p) && w.alive(p), "alive, then from its descriptor");
        assert_eq!(w.fds.len(), 1);
        assert!(
            !w.alive(Process {
                pid: p.pid,
                start: p.start + 1
            }),
            "another start: not it"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(w.alive(p), "until the next refresh, the answer stands");
        w.refresh();
        assert!(w.fds.is_empty(), "its descriptor said it exited");
        assert!(!w.alive(p), "exited");
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let q = Process::find(other.id() as i32).unwrap();
        assert!(w.alive(q));
        w.refresh();
        assert!(w.alive(q), "asked about in the round: kept, and alive");
        w.refresh();
        w.refresh();
        assert!(w.fds.is_empty(), "not asked about in a round: forgotten");
        other.kill().unwrap();
        other.wait().unwrap();
    }
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_613_680)),
            "2026-11-25T13:34:40Z"
        );
    }

    #[test]
    fn a_process_is_its_pid_and_start_time() {
        let me = Process::find(std::process::id() as i32).unwrap();
        assert!(me.is_alive());
        let reused = Process {
            start: me.start + 1,
            ..me
        };
        assert!(!reused.is_alive(), "another start time is another process");
        assert!(Process::find(i32::MAX).is_none());
        assert!(Process::find(0).is_none() && Process::find(-1).is_none());
    }

    #[test]
    fn writers_of_one_path_use_temp_files_of_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::thread::scope(|s| {
            for i in 0..8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        let body = vec![b'a' + i as u8; 4096];
                        write_atomic(p, &body, 0o600).unwrap();
                    }
                });
            }
        });
        let got = std::fs::read(&p).unwrap();
        assert_eq!(got.len(), 4096);
        assert!(
            got.iter().all(|b| *b == got[0]),
            "one writer's bytes, whole"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "no temp file is left behind");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(p.metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn in_root_lookups_stay_in_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "inside").unwrap();
        std::os::unix::fs::symlink("/etc", root.join("link")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        let fd = open_root(&root).unwrap();
        let read = |rel: &str| {
            let f = open_in_root(fd.as_fd(), Path::new(rel), OFlag::O_RDONLY).unwrap();
            std::fs::read_to_string(format!("/proc/self/fd/{}", f.as_raw_fd())).unwrap()
        };
        assert_eq!(read("link/passwd"), "inside");
        assert_eq!(read("up/etc/passwd"), "inside");
        assert_eq!(read("/etc/passwd"), "inside");
    }
}
