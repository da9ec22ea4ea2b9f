//! Host utilities every room uses: a file replaced atomically, whether a
//! process is still the one we saw, the clock, and the one shape of an I/O
//! error ("cannot <action> <path>: <why>").

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

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

fn write_via_temp(path: &Path, bytes: &[u8], mode: u32, durable: bool) -> std::io::Result<()> {
    // A bare file name's parent is "": the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.gpushare-tmp"));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&tmp)?;
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

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// UTC time as RFC 3339 with seconds, e.g. `2026-11-25T13:34:40Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
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

/// Whether `pid` is alive and, when `start` is given, is still the process
/// that had that start time. A zombie (exited, not yet reaped) is not alive.
pub fn process_matches(pid: i32, start: Option<u64>) -> bool {
    if pid <= 0 {
        return false;
    }
    match start {
        None => {
            // SAFETY: kill with signal 0 sends nothing; it only checks.
            let r = unsafe { libc::kill(pid, 0) };
            r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
        }
        Some(s) => {
            matches!(process_stat(pid), Some((state, start)) if start == s && state != 'Z' && state != 'X')
        }
    }
}

/// The start time of `pid` in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    process_stat(pid).map(|(_, start)| start)
}

/// State (field 3) and start time (field 22, clock ticks since boot) from
/// `/proc/<pid>/stat`.
fn process_stat(pid: i32) -> Option<(char, u64)> {
    // One read: the file is a line of a few hundred bytes, and procfs makes
    // it anew at each read (a growing read_to_end would read it in pieces).
    use std::io::Read;
    let mut buf = [0u8; 4096];
    let mut f = std::fs::File::open(format!("/proc/{pid}/stat")).ok()?;
    let n = f.read(&mut buf).ok()?;
    let stat = std::str::from_utf8(&buf[..n]).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after the last ')' are plain.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
