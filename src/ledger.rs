//! Who holds which GPU: `<state_dir>/ledger` (a snapshot) and
//! `<state_dir>/ledger.journal` (what happened since). Every read-decide-
//! write runs under one exclusive `flock` on `<state_dir>/ledger.lock`, so
//! concurrent creates never double-book.
//!
//! Both files are lines, one record each, so that a decision costs little
//! however many containers are held:
//!
//! ```text
//! gpushare-ledger 2                                            (snapshot header)
//! S <offset> <gpu> <holders> <millionths>… $                   (snapshot: its bound entries' sums)
//! H <seed> <slots> <hash><offset>… $                            (snapshot: its bound lines by id)
//! E <id> <created> <pid> <pid_start> <share> <gpus> <len> <json>   an entry, added or replaced
//! X <id> $                                                     an entry released
//! ```
//!
//! `<id>` and each of `<gpus>` (comma-separated UUIDs) are percent-encoded,
//! so no field holds a space; `-` stands for an absent pid, start time or
//! share; `<json>` is the whole entry (for `status`), `<len>` its length in
//! bytes. A decision reads the leading fields only, as borrowed slices: no
//! JSON is parsed on the create path. A snapshot written by compaction
//! keeps its reservations first and its bound entries after `<offset>`,
//! summed per GPU on its `S` line and found by id through the table on
//! its `H` line, so a decision reads only the bound lines it must (see
//! `Summary` and `Table`); other readers skip both lines. A change is one
//! appended line (preceded by a newline, so a line torn by a crash stands
//! alone; a torn line fails its length or `$` check and is skipped). Once
//! the journal outgrows the snapshot, a commit folds it in: the live lines
//! are copied as they are into a new snapshot (temp file, fsync, rename,
//! directory fsync), expired reservations and entries whose process is
//! gone left out, and the journal emptied. Replaying a record is
//! idempotent, so a crash between the snapshot's rename and the journal's
//! truncation changes nothing.
//!
//! A ledger written by an earlier gpushare (one JSON document, JSON journal
//! records) is still read, and rewritten in this form at the next commit.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::decide::Load;
use crate::sys::{now, process_matches, write_atomic, IoError};

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("{0}; check that {dir} is writable by root", dir = .0.path.parent().unwrap_or(Path::new("/")).display())]
    Io(#[source] IoError),
    #[error("cannot read {path}: permission denied; the ledger names containers, their pids and pods, so only root may read it: run this as root")]
    NotRoot { path: PathBuf },
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
    /// The container's init pid, once the runtime has made it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The pid's start time (clock ticks after boot), so a reused pid is
    /// not mistaken for the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_start: Option<u64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub names: BTreeMap<String, String>,
    /// The variables gpushare set in the container's environment
    /// (`KEY=VALUE`), so a process exec'd into it later gets them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    /// Unix seconds when it was reserved.
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

/// The snapshot's first line.
const HEADER: &[u8] = b"gpushare-ledger 2\n";

/// How many bound entries a decision checks for liveness, in rotation, so
/// its cost does not grow with the number of containers held; compaction
/// and `gpushare gc` check them all.
const LIVENESS_PER_DECISION: usize = 16;

/// The directory of held containers' markers (see `Ledger::marker`).
pub const HELD_DIR: &str = "held";
/// Where the shim asks the runtime for a container's pid when its caller
/// gave no pid file: `<state_dir>/pid/<shim pid>`.
pub const PID_DIR: &str = "pid";

/// The journal is folded into the snapshot once it is larger than this, so
/// a decision reads little of it however many containers are held (the
/// snapshot itself is mapped, not read).
const COMPACT_AFTER: usize = 32 << 10;

#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

/// A change the runtime or the hook makes, as one journal record.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The entry, added or replaced (a reservation, or its pid bound). It
    /// carries the whole entry, so a reservation dropped meanwhile is made
    /// anew: the container really holds the GPU.
    Bind(Entry),
    Release {
        id: String,
    },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> LedgerError + 'a {
    move |source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied
            && !nix::unistd::geteuid().is_root()
        {
            return LedgerError::NotRoot {
                path: path.to_owned(),
            };
        }
        LedgerError::Io(crate::sys::io(action, path)(source))
    }
}

/// The ledger's files are root's alone (they name containers, their pids
/// and their pods): files 0600, directories 0700.
const PRIVATE_FILE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;

/// Opens (creating it, 0600, if need be) a file of the ledger's, making its
/// directory (0700) only when it is missing: the directories exist at every
/// call but the node's first, so the usual cost is one open.
fn create_private(path: &Path, read: bool) -> std::io::Result<File> {
    let open = || {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(read)
            .write(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(PRIVATE_DIR)
                    .create(dir)?;
            }
            open()
        }
        r => r,
    }
}

/// Percent-encodes a field: bytes outside `[A-Za-z0-9_.+-]` (runc's id
/// alphabet) become `%XX`, so a field never holds a space or a newline.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    // "." and ".." would name directories, not markers.
    let dots = s == "." || s == "..";
    for b in s.bytes() {
        if crate::front::ids::plain_byte(b) && !dots {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The record line (without its newlines) for a change.
fn record_line(r: &Record) -> String {
    match r {
        Record::Bind(e) => {
            let json = serde_json::to_string(e).expect("an entry serialises");
            let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            format!(
                "E {} {} {} {} {} {} {} {json}",
                encode(&e.id),
                e.created,
                opt(e.pid.map(|p| p.to_string())),
                opt(e.pid_start.map(|p| p.to_string())),
                opt(e.thread_percentage.map(|p| p.to_string())),
                e.gpus
                    .iter()
                    .map(|g| encode(g))
                    .collect::<Vec<_>>()
                    .join(","),
                json.len(),
            )
        }
        Record::Release { id } => format!("X {} $", encode(id)),
    }
}

/// One live entry as its record line gives it, borrowed from the bytes read.
#[derive(Debug, Clone, Copy)]
struct Line<'a> {
    id: &'a [u8],
    created: u64,
    pid: Option<i32>,
    pid_start: Option<u64>,
    share: Option<f64>,
    gpus: &'a [u8],
    json: &'a [u8],
    /// The whole record line, copied as it is into a new snapshot.
    raw: &'a [u8],
}

enum Parsed<'a> {
    Upsert(Line<'a>),
    Release(&'a [u8]),
}

/// A plain decimal integer field (every number but the share), read
/// without UTF-8 checks: it is on every line a decision reads.
fn integer(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &d in field {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// `-` (absent) or an integer; `None` when it is neither.
fn optional_integer(field: &[u8]) -> Option<Option<u64>> {
    if field == b"-" {
        return Some(None);
    }
    integer(field).map(Some)
}

/// The first `needle` in `hay`. On x86_64 with SSE2, which every x86_64
/// CPU has, rather than the memchr crate's own choice: that one probes the
/// CPU with `cpuid` on first use, and each `cpuid` traps to the hypervisor
/// on a VM (about 25 µs of every GPU create on the reference VMs).
fn find_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        memchr::arch::x86_64::sse2::memchr::One::new(needle)
            .expect("x86_64 has SSE2")
            .find(hay)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        memchr::memchr(needle, hay)
    }
}

/// The last `needle` in `hay` (SSE2 on x86_64, as `find_byte`).
fn rfind_byte(needle: u8, hay: &[u8]) -> Option<usize> {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        memchr::arch::x86_64::sse2::memchr::One::new(needle)
            .expect("x86_64 has SSE2")
            .rfind(hay)
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        memchr::memrchr(needle, hay)
    }
}

/// A lower-case hexadecimal field of at most 16 digits.
fn hex(field: &[u8]) -> Option<u64> {
    if field.is_empty() || field.len() > 16 {
        return None;
    }
    let mut n = 0u64;
    for &d in field {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        n = n << 4 | u64::from(v);
    }
    Some(n)
}

/// The lines of `bytes`, without their newlines (the last one also when
/// it has none).
fn lines_in(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_byte(b'\n', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// One bit per byte of `block` that is a space (bit i: byte i).
fn spaces_in(block: &[u8; 64]) -> u64 {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse2"))]
    {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut mask = 0u64;
        for k in 0..4 {
            // SAFETY: SSE2 is there (the cfg above); the load reads 16 of
            // the block's 64 bytes, unaligned loads allowed.
            let bits = unsafe {
                let v = _mm_loadu_si128(block.as_ptr().add(16 * k).cast());
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(b' ' as i8)))
            };
            mask |= u64::from(bits as u16) << (16 * k);
        }
        mask
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse2")))]
    {
        block
            .iter()
            .enumerate()
            .fold(0u64, |m, (i, &b)| m | (u64::from(b == b' ') << i))
    }
}

/// The first space in `s` from `from`, eight bytes at a time: the leading
/// fields are short (a vector search's set-up costs more than it saves),
/// and a decision splits a thousand lines' worth of them.
fn next_space(s: &[u8], from: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = from;
    while i + 8 <= s.len() {
        let word = u64::from_le_bytes(s[i..i + 8].try_into().expect("eight bytes"));
        // A byte of `x` is zero where `word` has a space; the lowest flagged
        // byte is exactly the first such (borrows only run upwards).
        let x = word ^ (ONES * u64::from(b' '));
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(i + zero.trailing_zeros() as usize / 8);
        }
        i += 8;
    }
    s[i.min(s.len())..]
        .iter()
        .position(|&b| b == b' ')
        .map(|p| i + p)
}

/// The first eight space-separated fields of a line (how many there were)
/// and the rest after the eighth space.
fn split_fields(raw: &[u8]) -> ([&[u8]; 8], usize, &[u8]) {
    let mut fields: [&[u8]; 8] = [b""; 8];
    let mut count = 0;
    let mut start = 0;
    // Whole 64-byte blocks first, their spaces found as one bit mask each;
    // what is left of the line (where the fields end in its last block)
    // eight bytes at a time.
    let mut block = 0;
    while count < 8 && block + 64 <= raw.len() {
        let mut spaces = spaces_in(raw[block..block + 64].try_into().expect("64 bytes"));
        while spaces != 0 && count < 8 {
            let i = block + spaces.trailing_zeros() as usize;
            fields[count] = &raw[start..i];
            count += 1;
            start = i + 1;
            spaces &= spaces - 1;
        }
        block += 64;
    }
    let mut from = block.max(start);
    while count < 8 {
        let Some(i) = next_space(raw, from) else {
            break;
        };
        fields[count] = &raw[start..i];
        count += 1;
        start = i + 1;
        from = start;
    }
    (fields, count, &raw[start..])
}

/// Reads one record line; `None` for anything else (a torn line, the
/// header, a blank). The leading fields are split in one pass over the
/// bytes and the integers read as digits; nothing else is decoded, and the
/// JSON only when an entry is wanted whole.
fn parse_line(raw: &[u8]) -> Option<Parsed<'_>> {
    // The first eight space-separated fields; the ninth is the rest.
    let (fields, count, rest) = split_fields(raw);
    match (fields[0], count) {
        (b"X", 2) if rest == b"$" && !fields[1].is_empty() => Some(Parsed::Release(fields[1])),
        (b"E", 8) => {
            let [_, id, created, pid, pid_start, share, gpus, len] = fields;
            let share = match share {
                b"-" => None,
                // Most shares are whole percentages.
                s => match integer(s) {
                    Some(n) => Some(n as f64),
                    None => Some(std::str::from_utf8(s).ok()?.parse().ok()?),
                },
            };
            let pid = match optional_integer(pid)? {
                Some(p) => Some(i32::try_from(p).ok()?),
                None => None,
            };
            (rest.len() as u64 == integer(len)? && !id.is_empty()).then_some(Parsed::Upsert(Line {
                id,
                created: integer(created)?,
                pid,
                pid_start: optional_integer(pid_start)?,
                share,
                gpus,
                json: rest,
                raw,
            }))
        }
        _ => None,
    }
}

/// A cheap hasher for the index's ids (a multiply-rotate over 8-byte
/// words), seeded per process from its stack address so that ids chosen to
/// collide cannot be prepared in advance.
#[derive(Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }

    /// Mixes every bit into every other (MurmurHash3's finaliser), so ids
    /// that differ only at their end still spread over the table.
    fn finish(&self) -> u64 {
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

#[derive(Clone, Copy)]
struct IdHash(u64);

impl Default for IdHash {
    fn default() -> Self {
        let here = 0u8;
        IdHash((&here as *const u8 as u64) ^ u64::from(std::process::id()).rotate_left(32))
    }
}

impl std::hash::BuildHasher for IdHash {
    type Hasher = IdHasher;
    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

/// The live entries of a snapshot and a journal, in the order first seen,
/// later records replacing earlier ones.
#[derive(Default)]
struct Index<'a> {
    lines: Vec<Option<Line<'a>>>,
    by_id: HashMap<&'a [u8], usize, IdHash>,
}

impl<'a> Index<'a> {
    fn apply(&mut self, bytes: &'a [u8]) {
        self.apply_naming(bytes, |_| {});
    }

    /// `apply`, telling `named` each record's id.
    fn apply_naming(&mut self, bytes: &'a [u8], mut named: impl FnMut(&'a [u8])) {
        // Record lines are a few hundred bytes each.
        let lines = bytes.len() / 200 + 1;
        self.lines.reserve(lines);
        self.by_id.reserve(lines);
        for raw in lines_in(bytes) {
            match parse_line(raw) {
                Some(Parsed::Upsert(l)) => {
                    named(l.id);
                    match self.by_id.get(l.id) {
                        Some(&i) => self.lines[i] = Some(l),
                        None => {
                            self.by_id.insert(l.id, self.lines.len());
                            self.lines.push(Some(l));
                        }
                    }
                }
                Some(Parsed::Release(id)) => {
                    named(id);
                    if let Some(i) = self.by_id.remove(id) {
                        self.lines[i] = None;
                    }
                }
                None => {}
            }
        }
    }

    fn live(&self) -> impl Iterator<Item = &Line<'a>> {
        self.lines.iter().flatten()
    }

    fn holds(&self, id: &[u8]) -> bool {
        self.by_id.contains_key(id)
    }
}

/// The ids the journal names: their snapshot lines are the journal's to
/// count.
type Touched<'a> = std::collections::HashSet<&'a [u8], IdHash>;

/// An entry in the JSON ledger of earlier versions, and its journal records.
#[derive(Deserialize)]
struct LegacyFile {
    version: u32,
    entries: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum LegacyRecord {
    Bind(Entry),
    Release { id: String },
}

/// The snapshot's bytes: mapped (it is only ever replaced by rename, never
/// changed in place, so a mapping of it stays whole; no copy, and few page
/// faults however many containers are held), or owned when converted from
/// the earlier form.
enum Snapshot {
    Mapped(std::ptr::NonNull<std::ffi::c_void>, usize),
    Owned(Vec<u8>),
}

impl Snapshot {
    fn map(file: &File, len: usize) -> std::io::Result<Snapshot> {
        let Some(size) = std::num::NonZeroUsize::new(len) else {
            return Ok(Snapshot::Owned(Vec::new()));
        };
        // SAFETY: a private read-only mapping of a file that is never
        // truncated or written in place; unmapped on drop.
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                size,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_PRIVATE,
                file,
                0,
            )
        }
        .map_err(std::io::Error::from)?;
        Ok(Snapshot::Mapped(ptr, len))
    }
}

impl std::ops::Deref for Snapshot {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            // SAFETY: the mapping is `len` readable bytes while self lives.
            Snapshot::Mapped(ptr, len) => unsafe {
                std::slice::from_raw_parts(ptr.as_ptr() as *const u8, *len)
            },
            Snapshot::Owned(v) => v,
        }
    }
}

/// Set by a process that ends right after its one runtime call (see
/// `leave_mappings_to_exit`).
static LEAVE_MAPPINGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Says that this process ends within moments: a snapshot's mapping is
/// then left to the exit, which tears every mapping down at once, instead
/// of being unmapped alone (a TLB flush of its own, about 15 µs of every
/// GPU create on the reference VMs). Not for long-lived processes.
pub fn leave_mappings_to_exit() {
    LEAVE_MAPPINGS.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        if LEAVE_MAPPINGS.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if let Snapshot::Mapped(ptr, len) = self {
            // SAFETY: unmaps what `map` mapped, once.
            let _ = unsafe { nix::sys::mman::munmap(*ptr, *len) };
        }
    }
}

/// The ledger's bytes as read: the snapshot (turned into record lines when
/// it was written by an earlier version) and the journal.
struct Bytes {
    snapshot: Snapshot,
    journal: Vec<u8>,
    /// The snapshot or the journal is in the earlier form: rewrite it.
    legacy: bool,
}

impl Bytes {
    fn index(&self) -> Index<'_> {
        let mut ix = Index::default();
        ix.apply(&self.snapshot[..]);
        ix.apply(&self.journal);
        ix
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

    fn journal_path(&self) -> PathBuf {
        self.dir.join("ledger.journal")
    }

    fn open_lock(&self, arg: FlockArg) -> Result<Flock<File>, LedgerError> {
        let lock_path = self.dir.join("ledger.lock");
        let file = create_private(&lock_path, true).map_err(io("open", &lock_path))?;
        Flock::lock(file, arg).map_err(|(_, e)| io("lock", &lock_path)(e.into()))
    }

    /// The marker of a held container: `<state_dir>/held/<encoded id>`, an
    /// empty file made before its entry is written and removed after its
    /// release, so whether gpushare holds a container costs one stat (the
    /// runtime's front asks at every delete). A marker left by a crash only
    /// makes one delete look closer; a missing one leaves the entry to the
    /// liveness check.
    fn marker(&self, id: &str) -> PathBuf {
        self.dir.join(HELD_DIR).join(encode(id))
    }

    /// Whether gpushare holds container `id` (its marker is there).
    pub fn mentions(&self, id: &str) -> bool {
        self.marker(id).symlink_metadata().is_ok()
    }

    /// Makes the markers of entries about to be written.
    fn mark<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Result<(), LedgerError> {
        for id in ids {
            let path = self.marker(id);
            create_private(&path, false).map_err(io("create", &path))?;
        }
        Ok(())
    }

    /// Removes the markers of released entries, once the release is written.
    fn unmark<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        for id in ids {
            let _ = std::fs::remove_file(self.marker(id));
        }
    }

    /// Makes the state directory and the ledger's files root's alone where
    /// an earlier gpushare left them readable to all (`gpushare gc` does
    /// this; new files are made so). Says how many it changed.
    pub fn restrict(&self) -> Result<usize, LedgerError> {
        let mut changed = 0;
        let dirs = [
            self.dir.clone(),
            self.dir.join(HELD_DIR),
            self.dir.join(PID_DIR),
        ];
        let files = [
            self.path(),
            self.journal_path(),
            self.dir.join("ledger.lock"),
        ];
        for (path, mode) in dirs
            .iter()
            .map(|d| (d, PRIVATE_DIR))
            .chain(files.iter().map(|f| (f, PRIVATE_FILE)))
        {
            let Ok(meta) = path.symlink_metadata() else {
                continue;
            };
            if meta.file_type().is_symlink() || meta.permissions().mode() & 0o777 == mode {
                continue;
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
                .map_err(io("restrict", path))?;
            changed += 1;
        }
        Ok(changed)
    }

    /// Whether a ledger was ever written here.
    pub fn exists(&self) -> bool {
        self.path().exists() || self.journal_path().exists()
    }

    fn read(&self) -> Result<Bytes, LedgerError> {
        let path = self.path();
        let mut snapshot = match File::open(&path) {
            Ok(f) => {
                let len = f.metadata().map_err(io("read", &path))?.len() as usize;
                Snapshot::map(&f, len).map_err(io("map", &path))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::Owned(Vec::new()),
            Err(e) => return Err(io("open", &path)(e)),
        };
        let journal_path = self.journal_path();
        let mut journal = Vec::new();
        match File::open(&journal_path) {
            Ok(mut f) => f
                .read_to_end(&mut journal)
                .map_err(io("read", &journal_path))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(io("open", &journal_path)(e)),
        };
        let mut legacy = false;
        if snapshot.first() == Some(&b'{') {
            let file: LegacyFile =
                serde_json::from_slice(&snapshot).map_err(|e| LedgerError::Corrupt {
                    path: path.clone(),
                    message: e.to_string(),
                })?;
            if file.version != 1 {
                return Err(LedgerError::Corrupt {
                    path,
                    message: format!("version {} where 1 or 2 was expected", file.version),
                });
            }
            snapshot = Snapshot::Owned(lines_of(file.entries.into_iter().map(Record::Bind)));
            legacy = true;
        } else if !snapshot.is_empty() && !snapshot.starts_with(HEADER) {
            return Err(LedgerError::Corrupt {
                path,
                message: "it starts with neither gpushare-ledger 2 nor a JSON ledger".into(),
            });
        }
        if lines_in(&journal).any(|l| l.first() == Some(&b'{')) {
            let records = journal.split(|&b| b == b'\n').filter_map(|l| {
                match serde_json::from_slice::<LegacyRecord>(l).ok()? {
                    LegacyRecord::Bind(e) => Some(Record::Bind(e)),
                    LegacyRecord::Release { id } => Some(Record::Release { id }),
                }
            });
            journal = lines_of(records);
            legacy = true;
        }
        Ok(Bytes {
            snapshot,
            journal,
            legacy,
        })
    }

    /// Takes the exclusive lock and reads the ledger.
    pub fn lock(&self) -> Result<Locked, LedgerError> {
        let lock = self.open_lock(FlockArg::LockExclusive)?;
        Ok(Locked {
            bytes: self.read()?,
            pending: Vec::new(),
            ledger: self.clone(),
            timeout: None,
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
        let bytes = self.read()?;
        Ok(entries_of(&bytes.index()))
    }

    /// The entry of container `id`, if held: only its line is parsed.
    pub fn entry(&self, id: &str) -> Result<Option<Entry>, LedgerError> {
        if !self.dir.exists() {
            return Ok(None);
        }
        let _lock = self.open_lock(FlockArg::LockShared)?;
        let bytes = self.read()?;
        let ix = bytes.index();
        let key = encode(id);
        Ok(ix
            .by_id
            .get(key.as_bytes())
            .and_then(|&i| ix.lines[i].as_ref())
            .and_then(entry_of))
    }

    /// Appends one record to the journal under the exclusive lock.
    pub fn append(&self, record: &Record) -> Result<(), LedgerError> {
        let _lock = self.open_lock(FlockArg::LockExclusive)?;
        if let Record::Bind(e) = record {
            self.mark([e.id.as_str()])?;
        }
        self.append_lines(&[record_line(record)])?;
        if let Record::Release { id } = record {
            self.unmark([id.as_str()]);
        }
        Ok(())
    }

    fn append_lines(&self, lines: &[String]) -> Result<(), LedgerError> {
        let path = self.journal_path();
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io("open", &path))?;
        // A leading newline ends any torn record a crash left, so each one
        // always stands on a line of its own.
        let mut text = String::new();
        for l in lines {
            text.push('\n');
            text.push_str(l);
            text.push('\n');
        }
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_data())
            .map_err(io("append to", &path))
    }
}

/// Removes the pid files of shims that are gone (killed before they could
/// remove their own), for `gpushare gc`. Says how many went.
pub fn clean_pid_files(state_dir: &Path) -> usize {
    let Ok(list) = std::fs::read_dir(state_dir.join(PID_DIR)) else {
        return 0;
    };
    list.flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.parse::<i32>().ok())
                .is_some_and(|pid| !process_matches(pid, None))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// What `gpushare gc` took away.
pub struct Collected {
    /// Entries whose container is gone (its pid dead or reused), or never
    /// bound within the reservation timeout.
    pub dropped: Vec<Entry>,
    /// Pid files of runtime calls killed before they removed their own.
    pub pid_files: usize,
    /// Files and directories an earlier gpushare left readable to all.
    pub restricted: usize,
}

/// `gpushare gc`: drops what is stale now, checking every entry, removes
/// the pid files killed runtime calls left, and makes the ledger root's
/// alone where an earlier version had not.
pub fn gc(state_dir: &Path, timeout: u64) -> Result<Collected, LedgerError> {
    let ledger = Ledger::new(state_dir);
    let mut locked = ledger.lock()?;
    let dropped = locked.drop_stale(timeout, true);
    locked.commit()?;
    Ok(Collected {
        dropped,
        pid_files: clean_pid_files(state_dir),
        restricted: ledger.restrict()?,
    })
}

/// Record lines (snapshot form: header first) for `records`.
fn lines_of(records: impl Iterator<Item = Record>) -> Vec<u8> {
    let mut out = HEADER.to_vec();
    for r in records {
        out.extend_from_slice(record_line(&r).as_bytes());
        out.push(b'\n');
    }
    out
}

/// The entries of the live lines, parsed (for status, gc, explain).
fn entries_of(ix: &Index) -> Vec<Entry> {
    ix.live().filter_map(entry_of).collect()
}

/// One line's entry, parsed.
fn entry_of(l: &Line) -> Option<Entry> {
    let mut e: Entry = serde_json::from_slice(l.json).ok()?;
    // The leading fields are what decisions read: they win.
    e.pid = l.pid;
    e.pid_start = l.pid_start;
    Some(e)
}

/// The ledger read under its exclusive lock, with the changes made to it
/// so far; `commit` appends them. Dropping it without committing leaves the
/// ledger as it was.
pub struct Locked {
    bytes: Bytes,
    pending: Vec<Record>,
    ledger: Ledger,
    /// The reservation timeout a decision or a gc used, which compaction
    /// then applies too (unknown: reservations are kept).
    timeout: Option<u64>,
    _lock: Flock<File>,
}

impl Locked {
    /// The entries as they stand with the pending changes, parsed.
    pub fn entries(&self) -> Vec<Entry> {
        let mut all = entries_of(&self.bytes.index());
        for r in &self.pending {
            match r {
                Record::Bind(e) => {
                    all.retain(|x| x.id != e.id);
                    all.push(e.clone());
                }
                Record::Release { id } => all.retain(|x| &x.id != id),
            }
        }
        all
    }

    pub fn get(&self, id: &str) -> Option<Entry> {
        self.entries().into_iter().find(|e| e.id == id)
    }

    /// Adds or replaces the entry with this id (a retried create of the same
    /// container holds once, not twice).
    pub fn reserve(&mut self, entry: Entry) {
        self.pending.push(Record::Bind(entry));
    }

    /// Releases the entry with this id; whether there was one.
    pub fn release(&mut self, id: &str) -> bool {
        let mut held = self.bytes.index().holds(encode(id).as_bytes());
        for r in &self.pending {
            match r {
                Record::Bind(e) if e.id == id => held = true,
                Record::Release { id: x } if x == id => held = false,
                _ => {}
            }
        }
        if held {
            self.pending.push(Record::Release { id: id.to_owned() });
        }
        held
    }

    /// The load every GPU carries, not counting container `except`: what a
    /// decision needs, from the records' leading fields alone. Reservations
    /// older than `timeout` seconds and never bound are not counted; bound
    /// entries are checked for liveness a few at a time, in rotation (a
    /// dead one is released with this commit and not counted).
    pub fn load(&mut self, except: Option<&str>, timeout: u64) -> Load {
        self.load_with(except, timeout, true)
    }

    /// `load`, from the snapshot's summary (`use_summary`) or line by line.
    fn load_with(&mut self, except: Option<&str>, timeout: u64, use_summary: bool) -> Load {
        self.timeout = Some(timeout);
        let except = except.map(encode);
        let except = except.as_deref().map(str::as_bytes);
        let now = now();
        // The journal is small: indexed. The snapshot is streamed, a line
        // the journal touched (replaced or released) left to the journal.
        let mut journal = Index::default();
        let mut touched = Touched::default();
        journal.apply_naming(&self.bytes.journal, |id| {
            touched.insert(id);
        });
        let snapshot = &self.bytes.snapshot[..];
        // Liveness: about LIVENESS_PER_DECISION bound entries, spread over
        // the ledger and rotating with the clock (the number of lines
        // estimated from the size: a line is a few hundred bytes).
        let lines = snapshot.len() / 256 + journal.lines.len() + 1;
        let stride = (lines / LIVENESS_PER_DECISION).max(1);
        let phase = (now as usize) % stride;
        let mut acc = Tally {
            except,
            now,
            timeout,
            stride,
            phase,
            seen: 0,
            dead: Vec::new(),
            sums: Vec::new(),
        };
        let summary = Summary::read(snapshot).filter(|s| s.table.is_some());
        match summary {
            Some(Summary {
                bound_from,
                reserved_from,
                sums,
                table: Some(table),
            }) if use_summary => {
                acc.sums = sums;
                let bound = &snapshot[bound_from..];
                // The reservations, line by line.
                for raw in lines_in(&snapshot[reserved_from..bound_from]) {
                    if let Some(Parsed::Upsert(l)) = parse_line(raw) {
                        if !touched.contains(l.id) {
                            acc.add(&l, None);
                        }
                    }
                }
                // The bound lines the summary counted and this decision
                // must not: those the journal changed and the one being
                // placed, found by id.
                let except = acc.except.filter(|id| !touched.contains(id));
                for id in touched.iter().copied().chain(except) {
                    if let Some(Parsed::Upsert(l)) = table.find(bound, id).and_then(parse_line) {
                        count(&mut acc.sums, &l, -1);
                    }
                }
                // And those of the lines checked for liveness found dead.
                let mut last = None;
                for at in sample_points(bound.len(), now) {
                    let start = rfind_byte(b'\n', &bound[..at]).map_or(0, |i| i + 1);
                    if last.replace(start) == Some(start) {
                        continue;
                    }
                    let rest = &bound[start..];
                    let raw = &rest[..find_byte(b'\n', rest).unwrap_or(rest.len())];
                    let Some(Parsed::Upsert(l)) = parse_line(raw) else {
                        continue;
                    };
                    if !touched.contains(l.id) && Some(l.id) != acc.except && acc.gone(&l) {
                        count(&mut acc.sums, &l, -1);
                    }
                }
            }
            summary => {
                // Line by line; the bound lines of a snapshot with a table
                // checked for liveness as the table's reading checks them.
                let bound_from = summary.map(|s| s.bound_from);
                let mut points =
                    sample_points(bound_from.map_or(0, |b| snapshot.len() - b), now).peekable();
                for raw in lines_in(snapshot) {
                    let at = raw.as_ptr() as usize - snapshot.as_ptr() as usize;
                    let sampled = bound_from.filter(|&b| at >= b).map(|b| {
                        let end = at - b + raw.len();
                        let mut hit = false;
                        while points.next_if(|&p| p <= end).is_some() {
                            hit = true;
                        }
                        hit
                    });
                    if let Some(Parsed::Upsert(l)) = parse_line(raw) {
                        if !touched.contains(l.id) {
                            acc.add(&l, sampled);
                        }
                    }
                }
            }
        }
        for l in journal.live() {
            acc.add(l, None);
        }
        let Tally { sums, dead, .. } = acc;
        let mut load = Load::default();
        for (g, holders, committed) in sums {
            if holders == 0 && committed == 0 {
                continue;
            }
            let entry = load.0.entry(decode(g).to_ascii_uppercase()).or_default();
            entry.holders += usize::try_from(holders).unwrap_or(0);
            entry.committed_percentage += committed as f64 / 1e6;
        }
        for id in dead {
            self.pending.push(Record::Release { id });
        }
        load
    }

    /// Drops what is certainly stale, checking every entry: reservations no
    /// pid was bound to within `timeout` seconds, and entries whose pid is
    /// gone (with `check_start`, also a pid now held by another process).
    /// Returns what it dropped.
    pub fn drop_stale(&mut self, timeout: u64, check_start: bool) -> Vec<Entry> {
        self.timeout = Some(timeout);
        let gone: Vec<Entry> = self
            .entries()
            .into_iter()
            .filter(|e| !e.is_live(timeout, check_start))
            .collect();
        for e in &gone {
            self.pending.push(Record::Release { id: e.id.clone() });
        }
        gone
    }

    /// Writes the pending changes: appended to the journal, or, once the
    /// journal outgrows the snapshot (or the ledger was in the earlier
    /// form), folded with it into a new snapshot of the live lines.
    pub fn commit(mut self) -> Result<(), LedgerError> {
        let lines: Vec<String> = self.pending.iter().map(record_line).collect();
        self.ledger
            .mark(self.pending.iter().filter_map(|r| match r {
                Record::Bind(e) => Some(e.id.as_str()),
                Record::Release { .. } => None,
            }))?;
        let grown = self.bytes.journal.len() + lines.iter().map(|l| l.len() + 2).sum::<usize>();
        if !self.bytes.legacy && grown <= COMPACT_AFTER {
            if !lines.is_empty() {
                self.ledger.append_lines(&lines)?;
            }
        } else {
            self.compact(&lines)?;
        }
        // The last word on each id in this commit decides its marker.
        let mut released: Vec<&str> = Vec::new();
        for r in &self.pending {
            match r {
                Record::Release { id } => released.push(id),
                Record::Bind(e) => released.retain(|x| *x != e.id),
            }
        }
        self.ledger.unmark(released);
        Ok(())
    }

    fn compact(&mut self, pending: &[String]) -> Result<(), LedgerError> {
        let mut journal = std::mem::take(&mut self.bytes.journal);
        for l in pending {
            journal.extend_from_slice(format!("\n{l}\n").as_bytes());
        }
        let mut ix = Index::default();
        ix.apply(&self.bytes.snapshot[..]);
        ix.apply(&journal);
        let now = now();
        let mut dropped = Vec::new();
        let mut kept = Vec::new();
        // Reservations first, then the bound entries, which the summary
        // line between them sums (see `Summary`).
        let (mut reserved, mut bound) = (Vec::new(), Vec::new());
        for l in ix.live() {
            let live = match (l.pid, self.timeout) {
                (None, Some(t)) => now.saturating_sub(l.created) < t,
                (None, None) => true,
                (Some(pid), _) => process_matches(pid, None),
            };
            if live {
                if l.pid.is_some() {
                    bound.push(*l);
                } else {
                    reserved.push(*l);
                }
                kept.push(decode(l.id));
            } else {
                dropped.push(decode(l.id));
            }
        }
        let reserved_len: usize = reserved.iter().map(|l| l.raw.len() + 1).sum();
        let mut summary = Summary::line(&bound);
        let seed = std::hash::BuildHasher::hash_one(&std::hash::RandomState::new(), now);
        let table = Table::line(&bound, seed).unwrap_or_default();
        let bound_from = HEADER.len() + summary.len() + table.len() + reserved_len;
        Summary::set_offset(&mut summary, bound_from);
        let mut out = HEADER.to_vec();
        out.extend_from_slice(&summary);
        out.extend_from_slice(&table);
        for l in reserved.iter().chain(&bound) {
            out.extend_from_slice(l.raw);
            out.push(b'\n');
        }
        debug_assert_eq!(Summary::read(&out).map(|s| s.bound_from), Some(bound_from));
        if self.bytes.legacy {
            // A ledger of the earlier form had no markers: its entries get
            // theirs as it is rewritten.
            self.ledger.mark(kept.iter().map(String::as_str))?;
        }
        let path = self.ledger.path();
        write_atomic(&path, &out, PRIVATE_FILE).map_err(io("write", &path))?;
        self.ledger.unmark(dropped.iter().map(String::as_str));
        // The snapshot now holds what the journal said.
        let journal_path = self.ledger.journal_path();
        match OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&journal_path)
        {
            // A journal an earlier gpushare left readable to all is made
            // root's here too.
            Ok(f) => f
                .set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))
                .map_err(io("restrict", &journal_path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("truncate", &journal_path)(e)),
        }
    }
}

/// A decision's load as it is summed, line by line.
struct Tally<'b> {
    except: Option<&'b [u8]>,
    now: u64,
    timeout: u64,
    /// Every `stride`-th bound entry, from `phase`, is checked for liveness.
    stride: usize,
    phase: usize,
    seen: usize,
    dead: Vec<String>,
    /// In millionths of a percent, so that sums and differences are exact.
    sums: Sums<'b>,
}

/// A share in millionths of a percent.
fn micro(share: Option<f64>) -> i64 {
    (share.unwrap_or(0.0) * 1e6).round() as i64
}

impl<'b> Tally<'b> {
    /// Counts a live entry. `sampled`: whether a bound line of a snapshot
    /// with a table is one to check for liveness (see `sample_points`);
    /// `None` for other lines, every `stride`-th of which is checked.
    fn add(&mut self, l: &Line<'b>, sampled: Option<bool>) {
        if Some(l.id) == self.except {
            return;
        }
        if l.pid.is_some() {
            if sampled.unwrap_or_else(|| self.sampled()) && self.gone(l) {
                return;
            }
        } else if self.now.saturating_sub(l.created) >= self.timeout {
            return;
        }
        count(&mut self.sums, l, 1);
    }

    /// Whether the process of a bound entry is gone; if so, the entry is
    /// noted to be released with this commit.
    fn gone(&mut self, l: &Line<'b>) -> bool {
        let gone = l.pid.is_some_and(|pid| !process_matches(pid, None));
        if gone {
            self.dead.push(decode(l.id));
        }
        gone
    }

    /// Counts the next bound entry; whether it is one to check for
    /// liveness.
    fn sampled(&mut self) -> bool {
        self.seen += 1;
        self.seen % self.stride == self.phase
    }
}

/// Holders and committed share (millionths) per GPU field as written.
type Sums<'b> = Vec<(&'b [u8], i64, i64)>;

/// Adds (`sign` 1) or takes away (-1) an entry's hold on its GPUs.
fn count<'b>(sums: &mut Sums<'b>, l: &Line<'b>, sign: i64) {
    let share = micro(l.share);
    for g in l.gpus.split(|&b| b == b',') {
        match sums.iter_mut().find(|(k, _, _)| *k == g) {
            Some(s) => {
                s.1 += sign;
                s.2 += sign * share;
            }
            None => sums.push((g, sign, sign * share)),
        }
    }
}

/// The sums a snapshot carries for its bound entries, which it keeps after
/// its reservations (`S <offset> <gpu> <holders> <millionths>… $`, the
/// offset where the bound lines start, zero-padded to a fixed width): a
/// decision then reads only the bound lines the journal changed and the
/// one being placed (found through the `Table` on the next line) and the
/// few it checks for liveness, where it parsed every line.
struct Summary<'a> {
    bound_from: usize,
    /// Where the reservations start: after the summary and the table.
    reserved_from: usize,
    sums: Sums<'a>,
    /// The table on the line after it; a snapshot of the previous version
    /// has none and is read line by line.
    table: Option<Table<'a>>,
}

const SUMMARY_OFFSET_WIDTH: usize = 19;

impl<'a> Summary<'a> {
    /// The summary of `snapshot`, if it has a whole one (a snapshot of an
    /// earlier version has none: it is read line by line).
    fn read(snapshot: &'a [u8]) -> Option<Summary<'a>> {
        let rest = snapshot.strip_prefix(HEADER)?;
        let line = &rest[..find_byte(b'\n', rest)?];
        let mut fields = line.split(|&b| b == b' ');
        if fields.next()? != b"S" {
            return None;
        }
        let bound_from = usize::try_from(integer(fields.next()?)?).ok()?;
        if bound_from > snapshot.len() || snapshot[..bound_from].last() != Some(&b'\n') {
            return None;
        }
        let mut sums = Vec::new();
        loop {
            let g = fields.next()?;
            if g == b"$" {
                break;
            }
            let holders = i64::try_from(integer(fields.next()?)?).ok()?;
            let committed = i64::try_from(integer(fields.next()?)?).ok()?;
            sums.push((g, holders, committed));
        }
        if fields.next().is_some() {
            return None;
        }
        let after = HEADER.len() + line.len() + 1;
        let table = Table::read(snapshot.get(after..bound_from)?);
        let reserved_from = after + table.as_ref().map_or(0, |t| t.line_len);
        Some(Summary {
            bound_from,
            reserved_from,
            sums,
            table,
        })
    }

    /// The summary line (with its newline) of `bound`, its offset field
    /// zeroed: the field has a fixed width, so the line's length is known
    /// before the offset is (`set_offset` fills it in).
    fn line(bound: &[Line]) -> Vec<u8> {
        let mut sums = Sums::new();
        for l in bound {
            count(&mut sums, l, 1);
        }
        let mut out = format!("S {:0SUMMARY_OFFSET_WIDTH$}", 0).into_bytes();
        for (g, holders, committed) in sums {
            out.push(b' ');
            out.extend_from_slice(g);
            out.extend_from_slice(format!(" {holders} {committed}").as_bytes());
        }
        out.extend_from_slice(b" $\n");
        out
    }

    /// Writes `bound_from` into the offset field of `line`.
    fn set_offset(line: &mut [u8], bound_from: usize) {
        let digits = format!("{bound_from:0SUMMARY_OFFSET_WIDTH$}");
        line[2..2 + SUMMARY_OFFSET_WIDTH].copy_from_slice(digits.as_bytes());
    }
}

/// A snapshot's bound lines by id: `H <seed> <slots> <slot>… $`, an open
/// addressing table (linear probing, at most half full, its size a power of
/// two) of fixed-width slots, each the hash of an id (16 hexadecimal
/// digits, keyed by the snapshot's random `<seed>`) and one more than its
/// line's offset from the first bound line (8 digits; 0: an empty slot).
/// A decision finds the few bound lines it must take away through it, where
/// it read every line's id: its cost no longer grows with the containers
/// held.
struct Table<'a> {
    seed: u64,
    slots: &'a [u8],
    /// The length of its line, newline included.
    line_len: usize,
}

/// A slot's width: the id's hash and its line's offset.
const SLOT: usize = 16 + 8;

impl<'a> Table<'a> {
    fn hash(seed: u64, id: &[u8]) -> u64 {
        use std::hash::Hasher;
        let mut h = IdHasher(seed);
        h.write(id);
        h.finish()
    }

    /// The table at the start of `bytes`, if whole.
    fn read(bytes: &'a [u8]) -> Option<Table<'a>> {
        let rest = bytes.strip_prefix(b"H ")?;
        let seed = hex(rest.get(..16)?)?;
        let rest = rest.get(16..)?.strip_prefix(b" ")?;
        let space = find_byte(b' ', &rest[..rest.len().min(21)])?;
        let n = usize::try_from(integer(&rest[..space])?).ok()?;
        if !n.is_power_of_two() {
            return None;
        }
        let slots = rest.get(space + 1..space + 1 + n.checked_mul(SLOT)?)?;
        let end = space + 1 + slots.len() + 3;
        (rest.get(end - 3..end)? == b" $\n").then_some(Table {
            seed,
            slots,
            line_len: bytes.len() - rest.len() + end,
        })
    }

    /// The bound line of `id` in `bound` (the bound lines), if there is one.
    fn find(&self, bound: &'a [u8], id: &[u8]) -> Option<&'a [u8]> {
        let n = self.slots.len() / SLOT;
        let h = Self::hash(self.seed, id);
        let mut i = h as usize & (n - 1);
        for _ in 0..n {
            let slot = &self.slots[i * SLOT..(i + 1) * SLOT];
            let at = hex(&slot[16..])?;
            if at == 0 {
                return None;
            }
            if hex(&slot[..16])? == h {
                let rest = bound.get(usize::try_from(at - 1).ok()?..)?;
                let raw = &rest[..find_byte(b'\n', rest).unwrap_or(rest.len())];
                if line_id(raw) == Some(id) {
                    return Some(raw);
                }
            }
            i = (i + 1) & (n - 1);
        }
        None
    }

    /// The table line (with its newline) of `bound`, the lines written in
    /// this order from the first bound line on; `None` when they are too
    /// large for its offsets (then a decision reads every line).
    fn line(bound: &[Line], seed: u64) -> Option<Vec<u8>> {
        let n = (bound.len() * 2).next_power_of_two().max(2);
        let mut slots = vec![(0u64, 0u64); n];
        let mut at = 0u64;
        for l in bound {
            let h = Self::hash(seed, l.id);
            let mut i = h as usize & (n - 1);
            while slots[i].1 != 0 {
                i = (i + 1) & (n - 1);
            }
            slots[i] = (h, at + 1);
            at += l.raw.len() as u64 + 1;
        }
        if at >= u64::from(u32::MAX) {
            return None;
        }
        let mut out = Vec::with_capacity(32 + n * SLOT);
        out.extend_from_slice(format!("H {seed:016x} {n} ").as_bytes());
        for (h, at) in slots {
            out.extend_from_slice(format!("{h:016x}{at:08x}").as_bytes());
        }
        out.extend_from_slice(b" $\n");
        Some(out)
    }
}

/// The offsets, in a snapshot's bound lines of `len` bytes, of the lines a
/// decision checks for liveness: about `LIVENESS_PER_DECISION`, evenly
/// spaced from a start that moves with the clock, each offset standing for
/// the line it falls in.
fn sample_points(len: usize, now: u64) -> impl Iterator<Item = usize> {
    let step = (len / LIVENESS_PER_DECISION).max(1);
    let phase = (now.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize % step;
    (0..LIVENESS_PER_DECISION)
        .map(move |k| phase + k * step)
        .take_while(move |&at| at < len)
}

/// The id of a bound line (`E <id> …`), found without splitting the rest.
fn line_id(raw: &[u8]) -> Option<&[u8]> {
    let rest = raw.strip_prefix(b"E ")?;
    let end = next_space(rest, 0)?;
    Some(&rest[..end])
}

/// Decodes a percent-encoded field.
fn decode(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'%' && i + 2 < field.len() {
            let hex = std::str::from_utf8(&field[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(field[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
            // Kept as given (cut to a DNS name's length): what shows it
            // escapes it for its format (`error::visible` for terminals).
            let v: String = v.chars().take(253).collect();
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
            env: Vec::new(),
            created: now(),
        }
    }

    /// The next number of a small deterministic generator (xorshift64).
    fn xorshift(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    fn ids(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.id.as_str()).collect()
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
        assert!(g.release("a"));
        assert!(!g.release("a"));
        g.commit().unwrap();
        assert!(l.snapshot().unwrap().is_empty());
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("state"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(
            names.iter().all(
                |n| ["ledger", "ledger.lock", "ledger.journal", HELD_DIR].contains(&n.as_str())
            ),
            "{names:?}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("state").join(HELD_DIR))
                .unwrap()
                .count(),
            0,
            "no marker of a released entry"
        );
    }

    #[test]
    fn records_apply_in_order_and_torn_lines_are_skipped() {
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
        // Torn records from crashes: an entry cut short and a release cut
        // short (of "a"'s: it must not release "a"), then a good one.
        let full = record_line(&Record::Bind(entry("d", "GPU-1")));
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("ledger.journal"))
            .unwrap()
            .write_all(format!("\n{}\nX a", &full[..full.len() - 3]).as_bytes())
            .unwrap();
        l.append(&Record::Release {
            id: "nothing".into(),
        })
        .unwrap();
        let s = l.snapshot().unwrap();
        let got: Vec<(&str, Option<i32>)> = s.iter().map(|e| (e.id.as_str(), e.pid)).collect();
        assert_eq!(got, vec![("a", Some(7)), ("c", Some(8))]);
    }

    #[test]
    fn a_journal_that_outgrows_the_snapshot_is_folded_in() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let me = std::process::id() as i32;
        for round in 0..600 {
            let mut g = l.lock().unwrap();
            let mut e = entry(&format!("c{}", round % 10), "GPU-1");
            e.pid = Some(me);
            g.reserve(e);
            g.commit().unwrap();
        }
        let journal = std::fs::read(dir.path().join("ledger.journal")).unwrap();
        assert!(journal.len() <= COMPACT_AFTER, "{}", journal.len());
        let snapshot = std::fs::read(dir.path().join("ledger")).unwrap();
        assert!(snapshot.starts_with(HEADER), "folded at least once");
        let s = l.snapshot().unwrap();
        assert_eq!(s.len(), 10, "ten containers, each replaced many times");
        // A folded ledger keeps only the live: a dead pid goes.
        let mut g = l.lock().unwrap();
        let mut dead = entry("dead", "GPU-1");
        dead.pid = Some(i32::MAX - 1);
        g.reserve(dead);
        g.commit().unwrap();
        let mut g = l.lock().unwrap();
        g.compact(&[]).unwrap();
        drop(g);
        assert_eq!(l.snapshot().unwrap().len(), 10);
        assert_eq!(
            std::fs::read(dir.path().join("ledger.journal")).unwrap(),
            b""
        );
    }

    #[test]
    fn a_ledger_of_the_earlier_json_form_is_read_and_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = entry("a", "GPU-1");
        a.thread_percentage = Some(25.0);
        std::fs::write(
            dir.path().join("ledger"),
            serde_json::to_vec(
                &serde_json::json!({"version": 1, "entries": [a, entry("b", "GPU-2")]}),
            )
            .unwrap(),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("ledger.journal"),
            "\n{\"op\":\"release\",\"id\":\"b\"}\n",
        )
        .unwrap();
        let l = Ledger::new(dir.path());
        let s = l.snapshot().unwrap();
        assert_eq!(ids(&s), ["a"]);
        assert_eq!(s[0].thread_percentage, Some(25.0));
        l.lock().unwrap().commit().unwrap();
        assert!(
            l.mentions("a") && !l.mentions("b"),
            "markers made as it is rewritten"
        );
        assert!(std::fs::read(dir.path().join("ledger"))
            .unwrap()
            .starts_with(HEADER));
        assert_eq!(ids(&l.snapshot().unwrap()), ["a"]);
    }

    #[test]
    fn fields_split_by_blocks_are_those_a_plain_split_gives() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            for _ in 0..20 {
                let line: Vec<u8> = (0..len)
                    .map(|_| {
                        let r = xorshift(&mut seed);
                        if r.is_multiple_of(9) {
                            b' '
                        } else {
                            b'a' + (r % 26) as u8
                        }
                    })
                    .collect();
                let plain: Vec<&[u8]> = line.splitn(9, |&b| b == b' ').collect();
                let (fields, count, rest) = split_fields(&line);
                let n = plain.len() - 1;
                assert_eq!(count, n.min(8), "{line:?}");
                assert_eq!(&fields[..count], &plain[..count], "{line:?}");
                if count == 8 {
                    assert_eq!(rest, plain[8], "{line:?}");
                } else {
                    assert_eq!(rest, plain[n], "{line:?}");
                }
            }
        }
    }

    #[test]
    fn the_word_at_a_time_space_search_finds_what_a_plain_one_does() {
        // Every placement of spaces, and bytes next to a space in value
        // (0x1f, 0x21, 0xa0) that a faulty bit trick would mistake for it.
        let alphabet = [b' ', b'a', 0x1f, 0x21, 0xa0, 0x00];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..40 {
            for _ in 0..200 {
                let s: Vec<u8> = (0..len)
                    .map(|_| alphabet[(xorshift(&mut seed) % alphabet.len() as u64) as usize])
                    .collect();
                for from in 0..=len {
                    let plain = s[from..].iter().position(|&b| b == b' ').map(|p| from + p);
                    assert_eq!(next_space(&s, from), plain, "{s:?} from {from}");
                }
            }
        }
    }

    #[test]
    fn hostile_ids_stay_one_field_and_are_found_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let odd = ["a b", "a\nE x 1 - - - GPU-9 2 {}", "100%", "é\u{202e}", "a"];
        let mut g = l.lock().unwrap();
        for id in odd {
            g.reserve(entry(id, "GPU-1"));
        }
        g.commit().unwrap();
        let s = l.snapshot().unwrap();
        assert_eq!(ids(&s), odd, "each id comes back whole");
        assert!(s.iter().all(|e| e.gpus == ["GPU-1"]), "no forged entry");
        for id in odd {
            assert!(l.mentions(id), "{id:?}");
        }
        assert!(!l.mentions("ab") && !l.mentions("100"), "no prefix match");
        let mut g = l.lock().unwrap();
        assert!(g.release("a b"));
        g.commit().unwrap();
        assert!(
            !l.mentions("a b") && l.mentions("a"),
            "its marker went with it"
        );
        for id in ["", "a%20b", "%", "é"] {
            assert_eq!(decode(encode(id).as_bytes()), id);
        }
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
        me.pid_start = crate::sys::process_start_time(me.pid.unwrap());
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
        assert_eq!(ids(&g.entries()), vec!["fresh-reservation", "alive"]);
    }

    #[test]
    fn a_decisions_load_skips_expired_reservations_and_the_dead_it_checks() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::new(dir.path());
        let mut g = l.lock().unwrap();
        let mut a = entry("a", "GPU-X");
        a.thread_percentage = Some(25.0);
        a.pid = Some(std::process::id() as i32);
        g.reserve(a);
        g.reserve(entry("b", "gpu-x"));
        let mut old = entry("old", "GPU-X");
        old.created -= 1000;
        g.reserve(old);
        let mut dead = entry("dead", "GPU-Y");
        dead.pid = Some(i32::MAX - 1);
        g.reserve(dead);
        g.commit().unwrap();
        let mut g = l.lock().unwrap();
        let load = g.load(Some("c"), 60);
        let x = load.0["GPU-X"];
        assert_eq!((x.holders, x.committed_percentage), (2, 25.0));
        assert!(
            !load.0.contains_key("GPU-Y"),
            "a dead pid among those checked"
        );
        g.commit().unwrap();
        assert_eq!(
            ids(&l.snapshot().unwrap()),
            ["a", "b", "old"],
            "the dead one released"
        );
        let load = l.lock().unwrap().load(Some("a"), 60);
        assert_eq!(load.0["GPU-X"].holders, 1);
    }

    #[test]
    fn a_decision_from_the_snapshots_summary_is_the_one_line_by_line() {
        // Random ledgers: reservations (fresh and expired), bound entries
        // (alive, and dying after the snapshot was written), shares whole
        // and not, one GPU or two; compacted, then changed by the journal
        // (releases, binds, new entries). Every decision, for several
        // containers being placed, must be the same from the summary as
        // from every line, dead entries found included.
        let gpus = ["GPU-A", "GPU-B", "GPU-C"];
        let mut seed = 0x853c_49e6_748f_ea9bu64;
        let mut next = move |n: u64| xorshift(&mut seed) % n;
        let me = std::process::id() as i32;
        let mut dead_found = 0;
        for round in 0..12 {
            let dir = tempfile::tempdir().unwrap();
            let l = Ledger::new(dir.path());
            let mut doomed = Vec::new();
            let mut made: Vec<String> = Vec::new();
            let mut g = l.lock().unwrap();
            for i in 0..(20 + next(60)) {
                let id = format!("{i}-{}", "x".repeat(next(64) as usize));
                let mut e = entry(&id, gpus[next(3) as usize]);
                if next(4) == 0 {
                    e.gpus.push(gpus[next(3) as usize].into());
                }
                e.thread_percentage = match next(3) {
                    0 => None,
                    1 => Some((1 + next(40)) as f64),
                    _ => Some((1 + next(400)) as f64 / 8.0),
                };
                match next(6) {
                    0 => {}
                    1 => e.created -= 10_000,
                    2 => {
                        let child = std::process::Command::new("sleep")
                            .arg("30")
                            .spawn()
                            .unwrap();
                        e.pid = Some(child.id() as i32);
                        doomed.push(child);
                    }
                    _ => e.pid = Some(me),
                }
                made.push(id);
                g.reserve(e);
            }
            g.commit().unwrap();
            let mut g = l.lock().unwrap();
            g.timeout = Some(60);
            g.compact(&[]).unwrap();
            drop(g);
            let snap = std::fs::read(l.path()).unwrap();
            let summary = Summary::read(&snap).expect("a summary");
            let table = summary.table.as_ref().expect("a table");
            // The table finds every bound line and nothing else.
            let bound = &snap[summary.bound_from..];
            let bound_ids: Vec<&[u8]> = lines_in(bound).filter_map(line_id).collect();
            for id in made.iter().map(|m| encode(m)) {
                let found = table.find(bound, id.as_bytes());
                assert_eq!(
                    found.and_then(line_id),
                    bound_ids.contains(&id.as_bytes()).then_some(id.as_bytes()),
                    "round {round}: {id}"
                );
            }
            for mut child in doomed {
                child.kill().unwrap();
                child.wait().unwrap();
            }
            let mut g = l.lock().unwrap();
            for id in &made {
                match next(5) {
                    0 => {
                        g.release(id);
                    }
                    1 => {
                        let mut e = entry(id, gpus[next(3) as usize]);
                        e.pid = Some(me);
                        g.reserve(e);
                    }
                    _ => {}
                }
            }
            for i in 0..next(10) {
                let mut e = entry(&format!("new-{i}"), gpus[next(3) as usize]);
                e.thread_percentage = Some(10.0);
                g.reserve(e);
            }
            g.commit().unwrap();
            let mut excepts: Vec<Option<String>> = vec![None, Some("absent".into())];
            excepts.extend((0..4).map(|_| Some(made[next(made.len() as u64) as usize].clone())));
            for except in excepts {
                let mut a = l.lock().unwrap();
                let by_summary = a.load_with(except.as_deref(), 60, true);
                let dead_a: Vec<_> = a.pending.iter().map(record_line).collect();
                drop(a);
                let mut b = l.lock().unwrap();
                let by_line = b.load_with(except.as_deref(), 60, false);
                let dead_b: Vec<_> = b.pending.iter().map(record_line).collect();
                drop(b);
                let view = |load: &Load| {
                    let mut v: Vec<(String, usize, i64)> = load
                        .0
                        .iter()
                        .filter(|(_, x)| x.holders > 0)
                        .map(|(k, x)| {
                            (
                                k.clone(),
                                x.holders,
                                (x.committed_percentage * 1e6).round() as i64,
                            )
                        })
                        .collect();
                    v.sort();
                    v
                };
                assert_eq!(
                    view(&by_summary),
                    view(&by_line),
                    "round {round}, except {except:?}"
                );
                assert_eq!(dead_a, dead_b, "round {round}, except {except:?}");
                dead_found += dead_a.len();
            }
        }
        assert!(dead_found > 0, "some decisions found the dead");
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
        for bad in ["{not json", "something else\n"] {
            std::fs::write(dir.path().join("ledger"), bad).unwrap();
            let e = Ledger::new(dir.path()).lock().err().unwrap().to_string();
            assert!(e.contains("move it aside"), "{e}");
            assert_eq!(
                std::fs::read_to_string(dir.path().join("ledger")).unwrap(),
                bad
            );
        }
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
        assert_eq!(n["name"], "cam\n1", "kept as given; shown escaped");
        assert_eq!(n.len(), 3);
    }
}
