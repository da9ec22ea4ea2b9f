//! Who holds which GPU: `<state_dir>/ledger`. Every read-decide-write runs
//! under one exclusive `flock` on `<state_dir>/ledger.lock` (a separate file,
//! because the ledger itself is replaced on every write), and every write is
//! temp file + fsync + rename + directory fsync, so concurrent creates never
//! double-book and a crash leaves either the old or the new ledger, whole.
//!
//! The hook does not rewrite the ledger: binding a pid and releasing an
//! entry are appended, under the same lock, to `<state_dir>/ledger.journal`
//! as one small record each. Readers apply the journal to the ledger; the
//! next commit folds it in and empties it. A hook then costs the same with
//! a thousand entries as with one. Replaying a record is idempotent, so a
//! crash between a commit and the journal's truncation changes nothing.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::decide::Load;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("cannot {action} {path}: {source}; check that {dir} is writable by root", dir = path.parent().unwrap_or(Path::new("/")).display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("ledger {path} is unreadable ({message}); move it aside and run `gpushare gc`")]
    Corrupt { path: PathBuf, message: String },
}

/// One container's hold on its GPU(s).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    /// UUIDs of the GPUs held; empty never happens (no-GPU containers hold
    /// nothing and have no entry).
    pub gpus: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_mem_limit: Option<String>,
    /// The container's init pid, once the createRuntime hook has run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The pid's start time (clock ticks after boot), so a reused pid is
    /// not mistaken for the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
    /// Unix seconds when the shim reserved it.
    pub created: u64,
}

impl Entry {
    /// Whether the entry still stands: a reservation younger than
    /// `timeout` seconds, or a bound pid that is alive (and, with
    /// `check_start`, still the same process).
    pub fn is_live(&self, timeout: u64, check_start: bool) -> bool {
        match self.pid {
            None => now().saturating_sub(self.created) < timeout,
            Some(pid) => process_matches(pid, self.pid_start.filter(|_| check_start)),
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LedgerFile {
    version: u32,
    entries: Vec<Entry>,
}

const VERSION: u32 = 1;

#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

/// The ledger read under its exclusive lock; `commit` writes it back.
/// Dropping it without committing leaves the ledger as it was.
pub struct Locked {
    path: PathBuf,
    journal: PathBuf,
    _lock: Flock<File>,
    pub entries: Vec<Entry>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| LedgerError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

impl Ledger {
    pub fn new(state_dir: &Path) -> Ledger {
        Ledger {
            dir: state_dir.to_owned(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("ledger")
    }

    fn open_lock(&self, arg: FlockArg) -> Result<Flock<File>, LedgerError> {
        std::fs::create_dir_all(&self.dir).map_err(io("create", &self.dir))?;
        let lock_path = self.dir.join("ledger.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io("open", &lock_path))?;
        Flock::lock(file, arg).map_err(|(_, e)| LedgerError::Io {
            action: "lock",
            path: lock_path,
            source: e.into(),
        })
    }

    /// Whether the ledger or its journal names container `id` at all: a
    /// byte search, no parse and no lock, so a `delete` of a container
    /// gpushare never placed costs two small reads. A false hit (a released
    /// entry still in the journal) only means the caller looks closer.
    pub fn mentions(&self, id: &str) -> bool {
        let needle = format!(
            "\"id\":{}",
            serde_json::to_string(id).expect("a string serialises")
        );
        [self.path(), self.journal_path()].iter().any(|p| {
            std::fs::read(p)
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
    }

    /// Whether a ledger was ever written here.
    pub fn exists(&self) -> bool {
        self.path().exists() || self.journal_path().exists()
    }

    fn journal_path(&self) -> PathBuf {
        self.dir.join("ledger.journal")
    }

    /// Takes the exclusive lock and reads the ledger.
    pub fn lock(&self) -> Result<Locked, LedgerError> {
        let lock = self.open_lock(FlockArg::LockExclusive)?;
        Ok(Locked {
            entries: self.read()?,
            path: self.path(),
            journal: self.journal_path(),
            _lock: lock,
        })
    }

    /// A consistent snapshot for readers (status, explain), under a shared
    /// lock so it never sees a half-made decision.
    pub fn snapshot(&self) -> Result<Vec<Entry>, LedgerError> {
        if !self.dir.exists() {
            return Ok(Vec::new());
        }
        let _lock = self.open_lock(FlockArg::LockShared)?;
        self.read()
    }

    fn read(&self) -> Result<Vec<Entry>, LedgerError> {
        let mut entries = read_entries(&self.path())?;
        let journal = self.journal_path();
        match std::fs::read(&journal) {
            Ok(bytes) => replay(&mut entries, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", &journal)(e)),
        }
        Ok(entries)
    }

    /// Appends one record to the journal under the exclusive lock.
    pub fn append(&self, record: &Record) -> Result<(), LedgerError> {
        let _lock = self.open_lock(FlockArg::LockExclusive)?;
        let path = self.journal_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o644)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("open", &path))?;
        // A leading newline ends any torn record a crash left, so this one
        // always stands on a line of its own.
        let line = format!(
            "\n{}\n",
            serde_json::to_string(record).expect("record serialises")
        );
        f.write_all(line.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io("append to", &path))
    }
}

/// A change the hook makes to the ledger, journalled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Record {
    /// The container's init pid is known. Carries the entry itself so a
    /// reservation that was dropped meanwhile is made anew: the container
    /// really holds the GPU.
    Bind(Entry),
    Release {
        id: String,
    },
}

/// Applies journal records in order; a line that is not a whole record (a
/// write torn by a crash) is skipped.
fn replay(entries: &mut Vec<Entry>, journal: &[u8]) {
    for line in journal.split(|&b| b == b'\n') {
        match serde_json::from_slice::<Record>(line) {
            Ok(Record::Bind(bound)) => match entries.iter_mut().find(|e| e.id == bound.id) {
                Some(e) => {
                    e.pid = bound.pid;
                    e.pid_start = bound.pid_start;
                }
                None => entries.push(bound),
            },
            Ok(Record::Release { id }) => entries.retain(|e| e.id != id),
            Err(_) => {}
        }
    }
}

fn read_entries(path: &Path) -> Result<Vec<Entry>, LedgerError> {
    let mut text = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut text).map_err(io("read", path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("open", path)(e)),
    };
    let file: LedgerFile = serde_json::from_slice(&text).map_err(|e| LedgerError::Corrupt {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    if file.version != VERSION {
        return Err(LedgerError::Corrupt {
            path: path.to_owned(),
            message: format!("version {} where {VERSION} was expected", file.version),
        });
    }
    Ok(file.entries)
}

/// Writes `bytes` to `path` atomically: a temp file beside it, fsync,
/// rename over, fsync of the directory. Readers see old or new, never torn.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
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
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

impl Locked {
    pub fn get(&self, id: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.id == id)
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut Entry> {
        self.entries.iter_mut().find(|e| e.id == id)
    }

    /// Adds or replaces the entry with this id (a retried create of the same
    /// container holds once, not twice).
    pub fn reserve(&mut self, entry: Entry) {
        self.release(&entry.id);
        self.entries.push(entry);
    }

    pub fn release(&mut self, id: &str) -> Option<Entry> {
        let i = self.entries.iter().position(|e| e.id == id)?;
        Some(self.entries.remove(i))
    }

    /// The load every GPU carries, not counting container `except`.
    pub fn load(&self, except: Option<&str>) -> Load {
        load_of(&self.entries, except)
    }

    /// Drops what is certainly stale: reservations no hook bound within
    /// `timeout` seconds, and entries whose pid is gone. Cheap enough for
    /// every decision (one kill(pid, 0) per bound entry); `gc` also checks
    /// start times to catch reused pids.
    pub fn drop_stale(&mut self, timeout: u64, check_start: bool) -> Vec<Entry> {
        let (keep, gone) = std::mem::take(&mut self.entries)
            .into_iter()
            .partition(|e| e.is_live(timeout, check_start));
        self.entries = keep;
        gone
    }

    pub fn commit(self) -> Result<(), LedgerError> {
        let file = LedgerFile {
            version: VERSION,
            entries: self.entries,
        };
        let bytes = serde_json::to_vec(&file).expect("ledger serialises");
        write_atomic(&self.path, &bytes, 0o644).map_err(io("write", &self.path))?;
        // The ledger now holds what the journal said.
        match OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&self.journal)
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("truncate", &self.journal)(e)),
        }
    }
}

pub fn load_of(entries: &[Entry], except: Option<&str>) -> Load {
    let mut load = Load::default();
    for e in entries.iter().filter(|e| Some(e.id.as_str()) != except) {
        for uuid in &e.gpus {
            load.add(uuid, e.thread_percentage);
        }
    }
    load
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

/// State (field 3) and start time (field 22, clock ticks since boot) from
/// `/proc/<pid>/stat`.
fn process_stat(pid: i32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the
    // fields after the last ')' are plain.
    let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    Some((state, rest.nth(18)?.parse().ok()?))
}

/// The start time of `pid` in clock ticks since boot.
pub fn process_start_time(pid: i32) -> Option<u64> {
    process_stat(pid).map(|(_, start)| start)
}

/// Container names as engines put them in annotations, under short keys.
pub fn names_from_annotations<'a, I>(annotations: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (&'a str, &'a str)>,
{
    // Ref: containerd CRI (io.kubernetes.cri.*), CRI-O (io.kubernetes.*),
    // nerdctl (nerdctl/name).
    const KNOWN: &[(&str, &str)] = &[
        ("io.kubernetes.cri.sandbox-name", "pod"),
        ("io.kubernetes.cri.sandbox-namespace", "namespace"),
        ("io.kubernetes.cri.container-name", "container"),
        ("io.kubernetes.pod.name", "pod"),
        ("io.kubernetes.pod.namespace", "namespace"),
        ("io.kubernetes.container.name", "container"),
        ("nerdctl/name", "name"),
    ];
    let mut names = BTreeMap::new();
    for (k, v) in annotations {
        if let Some((_, short)) = KNOWN.iter().find(|(key, _)| *key == k) {
            let v: String = v.chars().filter(|c| !c.is_control()).take(253).collect();
            if !v.is_empty() {
                names.insert((*short).to_owned(), v);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, gpu: &str) -> Entry {
        Entry {
            id: id.into(),
            gpus: vec![gpu.into()],
            thread_percentage: None,
            pinned_mem_limit: None,
            pid: None,
            pid_start: None,
            names: BTreeMap::new(),
            created: now(),
        }
    }

    #[test]
    fn reserve_commit_read_release() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(&dir.path().join("state"));
        assert!(l.snapshot().unwrap().is_empty());
        let mut g = l.lock().unwrap();
        g.reserve(entry("a", "GPU-1"));
        g.reserve(entry("a", "GPU-2"));
        g.commit().unwrap();
        let s = l.snapshot().unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].gpus, vec!["GPU-2".to_string()]);
        let mut g = l.lock().unwrap();
        assert!(g.release("a").is_some());
        assert!(g.release("a").is_none());
        g.commit().unwrap();
        assert!(l.snapshot().unwrap().is_empty());
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(|n| n == "ledger" || n == "ledger.lock"),
            "{names:?}"
        );
    }

    #[test]
    fn journal_records_apply_in_order_and_fold_into_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let mut g = l.lock().unwrap();
        g.reserve(entry("a", "GPU-1"));
        g.reserve(entry("b", "GPU-1"));
        g.commit().unwrap();
        let mut bound = entry("a", "GPU-1");
        bound.pid = Some(7);
        l.append(&Record::Bind(bound)).unwrap();
        l.append(&Record::Release { id: "b".into() }).unwrap();
        let mut lost = entry("c", "GPU-2");
        lost.pid = Some(8);
        l.append(&Record::Bind(lost)).unwrap();
        // A torn record from a crash, then a good one after it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("ledger.journal"))
            .unwrap()
            .write_all(b"{\"op\":\"release\",\"id")
            .unwrap();
        l.append(&Record::Release {
            id: "nothing".into(),
        })
        .unwrap();
        let s = l.snapshot().unwrap();
        let got: Vec<(&str, Option<i32>)> = s.iter().map(|e| (e.id.as_str(), e.pid)).collect();
        assert_eq!(got, vec![("a", Some(7)), ("c", Some(8))]);
        // A commit folds the journal in and empties it.
        l.lock().unwrap().commit().unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("ledger.journal")).unwrap(),
            b""
        );
        assert_eq!(l.snapshot().unwrap(), s);
    }

    #[test]
    fn uncommitted_changes_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let mut g = l.lock().unwrap();
        g.reserve(entry("a", "GPU-1"));
        drop(g);
        assert!(l.snapshot().unwrap().is_empty());
    }

    #[test]
    fn concurrent_threads_never_lose_an_entry() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let threads: Vec<_> = (0..16)
            .map(|t| {
                let l = l.clone();
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let mut g = l.lock().unwrap();
                        g.reserve(entry(&format!("c{t}-{i}"), "GPU-1"));
                        g.commit().unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(l.snapshot().unwrap().len(), 160);
    }

    #[test]
    fn stale_entries_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let mut g = l.lock().unwrap();
        let mut old = entry("old-reservation", "GPU-1");
        old.created -= 1000;
        g.reserve(old);
        g.reserve(entry("fresh-reservation", "GPU-1"));
        let mut me = entry("alive", "GPU-1");
        me.pid = Some(std::process::id() as i32);
        me.pid_start = process_start_time(me.pid.unwrap());
        assert!(me.pid_start.is_some());
        g.reserve(me.clone());
        let mut reused = me.clone();
        reused.id = "reused".into();
        reused.pid_start = Some(me.pid_start.unwrap() + 1);
        g.reserve(reused);
        let mut dead = entry("dead", "GPU-1");
        dead.pid = Some(i32::MAX - 1);
        g.reserve(dead);
        let gone: Vec<String> = g.drop_stale(60, false).into_iter().map(|e| e.id).collect();
        assert_eq!(gone, vec!["old-reservation", "dead"]);
        let gone: Vec<String> = g.drop_stale(60, true).into_iter().map(|e| e.id).collect();
        assert_eq!(gone, vec!["reused"]);
        let kept: Vec<&str> = g.entries.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(kept, vec!["fresh-reservation", "alive"]);
    }

    #[test]
    fn load_counts_holders_and_shares() {
        let mut a = entry("a", "GPU-X");
        a.thread_percentage = Some(25.0);
        let b = entry("b", "gpu-x");
        let load = load_of(&[a, b], Some("c"));
        let l = load.0["GPU-X"];
        assert_eq!((l.holders, l.committed_percentage), (2, 25.0));
        let load = load_of(&[entry("a", "GPU-X")], Some("a"));
        assert!(load.0.is_empty());
    }

    #[test]
    fn a_corrupt_ledger_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ledger"), "{not json").unwrap();
        let e = Ledger::new(dir.path()).lock().err().unwrap().to_string();
        assert!(e.contains("move it aside"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ledger")).unwrap(),
            "{not json"
        );
    }

    #[test]
    fn names_come_from_known_annotations_only() {
        let n = names_from_annotations([
            ("io.kubernetes.cri.sandbox-name", "web-7d9"),
            ("io.kubernetes.cri.sandbox-namespace", "edge"),
            ("nerdctl/name", "cam\n1"),
            ("random", "x"),
        ]);
        assert_eq!(n["pod"], "web-7d9");
        assert_eq!(n["namespace"], "edge");
        assert_eq!(n["name"], "cam1");
        assert_eq!(n.len(), 3);
    }
}
