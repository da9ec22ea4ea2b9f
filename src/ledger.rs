//! Who holds which GPU: `<state_dir>/ledger.db`, an SQLite database in WAL
//! mode, one row per container and GPU it holds (the schema is in
//! `SCHEMA`, and in the README). A container is named by its runtime root
//! and its id together, so the same id under containerd's namespaces,
//! Docker and a person's runc are three containers.
//!
//! Every read-decide-write is one `BEGIN IMMEDIATE` transaction, taken
//! behind an `flock` on `<state_dir>/ledger.lock` so that writers queue in
//! the kernel, in order, rather than poll SQLite's busy handler (readers
//! never wait: WAL). A crash at any point leaves the last committed state.
//! A hold counts while its process is the one that was bound (pid and
//! start time) or, before it is bound, for `reservation_timeout_seconds`;
//! every decision and `gpushare gc` drop the rest.
//!
//! A node upgraded from gpushare 0.1 keeps its holds: the 0.1 snapshot and
//! journal (`ledger`, `ledger.journal`) are imported when the database is
//! first made, then moved to `<state_dir>/ledger-0.1/`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::sys::{now, IoError, Lock, Process};

/// The database, in the state directory.
pub const FILE: &str = "ledger.db";
/// The lock writers queue on before they begin.
const LOCK_FILE: &str = "ledger.lock";
/// Where a 0.1 ledger is moved once imported.
const IMPORTED_DIR: &str = "ledger-0.1";

/// The schema (`PRAGMA user_version` 2): `holds`, one row per container
/// and GPU, and the device plugin's `allocations` (version 2 added them).
pub const SCHEMA: &str = "\
CREATE TABLE holds (
    root              TEXT NOT NULL,     -- runtime root (runc --root), '' for the runtime's default, 'hook:<bundle>' for the hook alone
    id                TEXT NOT NULL,     -- container id; (root, id) names the container
    gpu               TEXT NOT NULL,     -- the GPU's UUID
    thread_percentage REAL,              -- MPS share held (MPS clients only)
    pinned_mem_limit  TEXT,              -- CUDA_MPS_PINNED_DEVICE_MEM_LIMIT as the container got it
    pid               INTEGER,           -- the container's init pid, once bound
    pid_start         INTEGER,           -- its start time, clock ticks after boot (pid + start: one process)
    names             TEXT NOT NULL,     -- JSON object: pod, namespace, container, name from annotations
    env               TEXT NOT NULL,     -- JSON array: the KEY=VALUE gpushare set in the container
    created           INTEGER NOT NULL,  -- Unix seconds of the reservation
    source            TEXT NOT NULL,     -- runtime | hook | nri | imported
    bundle            TEXT NOT NULL,     -- the bundle directory the runtime was given
    reservation       INTEGER NOT NULL,  -- the create call that wrote the row (its undo removes only its own)
    PRIMARY KEY (root, id, gpu)
);
CREATE INDEX holds_by_gpu ON holds (gpu);
";

/// What schema version 2 added: the allocations `gpushare device-plugin`
/// answered kubelet with, which the runtime and the hook hold containers to.
pub const ALLOCATIONS_SCHEMA: &str = "\
CREATE TABLE allocations (
    key           TEXT PRIMARY KEY,  -- its first device id: kubelet gives a device to one container at a time
    gpu           TEXT NOT NULL,     -- the GPU's UUID
    units         INTEGER NOT NULL,  -- the units allocated
    units_per_gpu INTEGER NOT NULL,  -- the GPU's units when allocated (units / units_per_gpu of the GPU)
    devices       TEXT NOT NULL,     -- JSON array: every device id of the allocation
    created       INTEGER NOT NULL   -- Unix seconds of kubelet's Allocate
);
";

const SCHEMA_VERSION: i64 = 2;

/// How long a writer waits for another (a person's `sqlite3` holding the
/// database, say) before giving up; gpushare's own writers queue on the
/// lock file instead.
const BUSY_TIMEOUT_MS: u64 = 30_000;

/// The ledger's files are root's alone (they name containers, their pids
/// and their pods): files 0600, directories 0700.
const PRIVATE_FILE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;

#[derive(Debug, Error)]
pub enum LedgerError {
    #[error("{0}; check that the state directory is writable by root")]
    Io(#[source] IoError),
    #[error("cannot read {path}: permission denied; the ledger names containers, their pids and pods, so only root may read it: run this as root")]
    NotRoot { path: PathBuf },
    // SQLite's message says it all; its own cause repeats it.
    #[error("ledger {path}: {error}; move it aside (the next create starts a new one)")]
    Sqlite {
        path: PathBuf,
        error: rusqlite::Error,
    },
    #[error("ledger {path} has schema version {found}, newer than this gpushare knows ({SCHEMA_VERSION}); run the gpushare that wrote it")]
    Newer { path: PathBuf, found: i64 },
}

/// Where a hold came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `gpushare-runtime`'s create.
    Runtime,
    /// `gpushare-hook` used alone.
    Hook,
    /// Found in a gpushare 0.1 ledger at the upgrade.
    Imported,
    /// `gpushare nri`, the NRI plugin.
    Nri,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Runtime => "runtime",
            Source::Hook => "hook",
            Source::Imported => "imported",
            Source::Nri => "nri",
        }
    }

    fn parse(s: &str) -> Source {
        match s {
            "runtime" => Source::Runtime,
            "hook" => Source::Hook,
            "nri" => Source::Nri,
            _ => Source::Imported,
        }
    }
}

/// A container, as the ledger names it: its runtime root and its id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Container {
    /// runc's `--root` (absolute), `""` for the runtime's default, or
    /// `hook:<bundle>` for a container the hook placed alone (a hook is not
    /// told the runtime's root; its bundle directory is its own).
    pub root: String,
    pub id: String,
}

/// One container's hold on its GPU(s).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Hold {
    pub container: Container,
    /// UUIDs of the GPUs held (one row each); never empty.
    pub gpus: Vec<String>,
    pub thread_percentage: Option<f64>,
    pub pinned_mem_limit: Option<String>,
    /// The container's init pid, once the runtime has made it.
    pub pid: Option<i32>,
    /// That process's start time (clock ticks after boot): with the pid, it
    /// names the process. Unknown (the process was gone when it was bound):
    /// the hold never counts.
    pub pid_start: Option<u64>,
    pub names: BTreeMap<String, String>,
    /// The variables gpushare set in the container's environment
    /// (`KEY=VALUE`), so a process exec'd into it later gets them too.
    pub env: Vec<String>,
    /// Unix seconds when it was reserved.
    pub created: u64,
    pub source: Source,
    pub bundle: String,
    /// The create call that wrote it.
    pub reservation: i64,
}

/// Whether a hold still counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Reserved by a create that has not yet bound a pid, within the timeout.
    Reserved,
    /// Its process runs.
    Running,
    /// A reservation never bound within the timeout, or a process that is
    /// gone (or whose pid another process now has).
    Gone,
}

impl Hold {
    /// Whether the hold counts now: see `Standing`.
    pub fn standing(&self, timeout: u64) -> Standing {
        standing(self.pid, self.pid_start, self.created, timeout, now())
    }
}

/// The one rule of whether a hold counts: a reservation (no pid yet) for
/// `timeout` seconds after `created`; a bound hold while its pid and that
/// pid's start time name a live process (an unknown start never does).
fn standing(
    pid: Option<i32>,
    start: Option<u64>,
    created: u64,
    timeout: u64,
    now: u64,
) -> Standing {
    standing_by(pid, start, created, timeout, now, &mut |p| p.is_alive())
}

/// `standing`, with whether a process lives asked of `alive` (a resident
/// process may know it more cheaply than `/proc` says it).
fn standing_by(
    pid: Option<i32>,
    start: Option<u64>,
    created: u64,
    timeout: u64,
    now: u64,
    alive: &mut dyn FnMut(Process) -> bool,
) -> Standing {
    match (pid, start) {
        (None, _) if now.saturating_sub(created) < timeout => Standing::Reserved,
        (None, _) => Standing::Gone,
        (Some(pid), Some(start)) if alive(Process { pid, start }) => Standing::Running,
        (Some(_), _) => Standing::Gone,
    }
}

/// What a decision reads of the ledger (`Transaction::tally`).
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The load of the holds that count.
    pub load: Load,
    /// The GPUs the container being placed already holds (among those).
    pub held: Vec<String>,
}

/// How busy a GPU is, from the holds that count.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GpuLoad {
    pub holders: usize,
    /// Sum of the thread percentages of holders that set one.
    pub committed_percentage: f64,
}

/// Load per GPU UUID (upper-cased), and which GPUs have an MPS daemon
/// running (upper-cased UUIDs).
#[derive(Debug, Clone, Default)]
pub struct Load {
    per_gpu: HashMap<String, GpuLoad>,
    mps: HashSet<String>,
}

impl Load {
    pub fn of(&self, uuid: &str) -> GpuLoad {
        self.per_gpu
            .get(&uuid.to_ascii_uppercase())
            .copied()
            .unwrap_or_default()
    }

    pub fn add(&mut self, uuid: &str, percentage: Option<f64>) {
        let l = self.per_gpu.entry(uuid.to_ascii_uppercase()).or_default();
        l.holders += 1;
        l.committed_percentage += percentage.unwrap_or(0.0);
    }

    pub fn mps_on(&self, uuid: &str) -> bool {
        self.mps.contains(&uuid.to_ascii_uppercase())
    }

    pub fn set_mps(&mut self, uuid: &str) {
        self.mps.insert(uuid.to_ascii_uppercase());
    }

    /// The load of `holds`.
    pub fn of_holds<'a>(holds: impl IntoIterator<Item = &'a Hold>) -> Load {
        let mut load = Load::default();
        for h in holds {
            for g in &h.gpus {
                load.add(g, h.thread_percentage);
            }
        }
        load
    }
}

fn sqlite(path: &Path) -> impl FnOnce(rusqlite::Error) -> LedgerError + '_ {
    move |error| LedgerError::Sqlite {
        path: path.to_owned(),
        error,
    }
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

/// The ledger of one state directory, open.
pub struct Ledger {
    conn: Connection,
    dir: PathBuf,
    path: PathBuf,
    /// Whether this connection's commits are set to sync as `begin` says.
    durability_set: bool,
}

impl Ledger {
    /// Opens the ledger for deciding, making it (0600, in a 0700 state
    /// directory) and importing a 0.1 ledger the first time.
    pub fn open(state_dir: &Path) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(FILE);
        // The file is made here, not by SQLite, so that it is 0600 from the
        // start (SQLite gives its -wal and -shm files the same mode).
        let made = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
            .open(&path)
        {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(PRIVATE_DIR)
                    .create(state_dir)
                    .map_err(io("create", state_dir))?;
                return Ledger::open(state_dir);
            }
            Err(e) => return Err(io("create", &path)(e)),
        };
        let mut ledger = Ledger::connect(state_dir, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        if made || ledger.version()? < SCHEMA_VERSION {
            ledger.initialise()?;
        }
        Ok(ledger)
    }

    /// Opens the ledger for reading (`status`, `metrics`, `explain`):
    /// `None` where none was ever made.
    pub fn open_if_exists(state_dir: &Path) -> Result<Option<Ledger>, LedgerError> {
        let path = state_dir.join(FILE);
        match path.symlink_metadata() {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A 0.1 ledger not yet imported: import it now, so readers
                // see the holds it has.
                if state_dir.join("ledger").exists() || state_dir.join("ledger.journal").exists() {
                    return Ledger::open(state_dir).map(Some);
                }
                return Ok(None);
            }
            Err(e) => return Err(io("read", &path)(e)),
            Ok(_) => {}
        }
        // Read and written alike: a reader of a WAL database may need to
        // recover or checkpoint it, as any SQLite reader does.
        let ledger = Ledger::connect(state_dir, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        if ledger.version()? == 0 {
            // Made by a writer that has not yet written its schema.
            return Ok(None);
        }
        Ok(Some(ledger))
    }

    fn connect(state_dir: &Path, flags: OpenFlags) -> Result<Ledger, LedgerError> {
        let path = state_dir.join(FILE);
        let conn = Connection::open_with_flags(
            &path,
            flags | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW,
        )
        .map_err(|e| match std::fs::File::open(&path) {
            // SQLite's own error would not say why.
            Err(os) => io("open", &path)(os),
            Ok(_) => sqlite(&path)(e),
        })?;
        conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
            .map_err(sqlite(&path))?;
        Ok(Ledger {
            conn,
            dir: state_dir.to_owned(),
            path,
            durability_set: false,
        })
    }

    fn version(&self) -> Result<i64, LedgerError> {
        let v: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite(&self.path))?;
        if v > SCHEMA_VERSION {
            return Err(LedgerError::Newer {
                path: self.path.clone(),
                found: v,
            });
        }
        Ok(v)
    }

    /// Writes the schema (once: whoever comes second finds it written) and
    /// imports a 0.1 ledger.
    fn initialise(&mut self) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let lock = self.lock()?;
        self.conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite(&path))?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&path))?;
        let v: i64 = tx
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(sqlite(&path))?;
        if v >= SCHEMA_VERSION {
            return Ok(());
        }
        let imported = if v == 0 {
            tx.execute_batch(SCHEMA).map_err(sqlite(&path))?;
            let imported = import::read(&self.dir).map_err(|e| io("read", &self.dir)(e))?;
            for hold in &imported {
                insert(&tx, hold).map_err(sqlite(&path))?;
            }
            true
        } else {
            false
        };
        tx.execute_batch(ALLOCATIONS_SCHEMA)
            .map_err(sqlite(&path))?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite(&path))?;
        tx.commit().map_err(sqlite(&path))?;
        if imported {
            import::set_aside(&self.dir);
        }
        drop(lock);
        Ok(())
    }

    fn lock(&self) -> Result<Lock, LedgerError> {
        let path = self.dir.join(LOCK_FILE);
        Lock::exclusive(&path).map_err(io("lock", &path))
    }

    /// Starts one decision: the writers' lock, then `BEGIN IMMEDIATE`.
    /// Dropping the transaction without committing changes nothing.
    pub fn begin(&mut self) -> Result<Transaction<'_>, LedgerError> {
        if !self.durability_set {
            // WAL is the file's own setting (made at initialise); NORMAL
            // syncs at checkpoints, not at each commit: a commit survives
            // any crash of a process, and the state directory is a tmpfs
            // cleared at boot.
            self.conn
                .pragma_update(None, "synchronous", "NORMAL")
                .map_err(sqlite(&self.path))?;
            self.durability_set = true;
        }
        let lock = self.lock()?;
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sqlite(&self.path))?;
        Ok(Transaction {
            tx,
            path: &self.path,
            _lock: lock,
        })
    }

    /// Releases the rows of `reservations` of container `c`, in one
    /// transaction of their own (a delete or an undo).
    pub fn release(&mut self, c: &Container, reservations: &[i64]) -> Result<(), LedgerError> {
        let mut tx = self.begin()?;
        for r in reservations {
            tx.remove(c, Some(*r))?;
        }
        tx.commit()
    }

    /// Every hold, as one consistent read (standing not judged).
    pub fn holds(&self) -> Result<Vec<Hold>, LedgerError> {
        select(&self.conn, "", []).map_err(sqlite(&self.path))
    }

    /// The holds of one container (one, unless a crash left another).
    pub fn holds_of(&self, c: &Container) -> Result<Vec<Hold>, LedgerError> {
        select(&self.conn, "WHERE root = ?1 AND id = ?2", [&c.root, &c.id])
            .map_err(sqlite(&self.path))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records what the device plugin answered kubelet's Allocate with, in
    /// a transaction of its own: an earlier allocation that held any of its
    /// devices is gone (kubelet gave them to this container), then this
    /// one is written.
    pub fn record_allocation(&mut self, a: &Allocation) -> Result<(), LedgerError> {
        let path = self.path.clone();
        let tx = self.begin()?;
        let older: Vec<Allocation> = select_allocations(&tx.tx).map_err(sqlite(&path))?;
        for o in older
            .iter()
            .filter(|o| o.devices.iter().any(|d| a.devices.contains(d)))
        {
            tx.tx
                .execute("DELETE FROM allocations WHERE key = ?1", [&o.key])
                .map_err(sqlite(&path))?;
        }
        tx.tx
            .execute(
                "INSERT OR REPLACE INTO allocations (key, gpu, units, units_per_gpu, devices, created) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                rusqlite::params![
                    a.key,
                    a.gpu,
                    a.units,
                    a.units_per_gpu,
                    serde_json::to_string(&a.devices).expect("serialises"),
                    a.created as i64,
                ],
            )
            .map_err(sqlite(&path))?;
        tx.commit()
    }

    /// The allocation recorded under `key`, if any.
    pub fn allocation(&self, key: &str) -> Result<Option<Allocation>, LedgerError> {
        allocation_by_key(&self.conn, key).map_err(sqlite(&self.path))
    }

    /// Every allocation recorded.
    pub fn allocations(&self) -> Result<Vec<Allocation>, LedgerError> {
        select_allocations(&self.conn).map_err(sqlite(&self.path))
    }
}

/// The annotation kubelet puts on a container from the device plugin's
/// Allocate answer: the key of its allocation here. kubelet writes a
/// container's annotations from device plugins and itself, never from the
/// pod's.
pub const ALLOCATION_ANNOTATION: &str = "gpushare.io/allocation";

/// An allocation of the device plugin's: `units` of GPU `gpu`'s
/// `units_per_gpu`, as kubelet's device ids `devices`.
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    pub key: String,
    pub gpu: String,
    pub units: u32,
    pub units_per_gpu: u32,
    pub devices: Vec<String>,
    pub created: u64,
}

impl Allocation {
    /// The allocation's share of its GPU, in percent.
    pub fn percentage(&self) -> f64 {
        f64::from(self.units) * 100.0 / f64::from(self.units_per_gpu.max(1))
    }

    /// The share as `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` says it ("30",
    /// "15.5"); `None` for the whole GPU, which needs no share.
    pub fn share_text(&self) -> Option<String> {
        (self.units < self.units_per_gpu).then(|| format!("{}", self.percentage()))
    }

    /// The pinned-memory limit in proportion to the units, of a GPU with
    /// `memory_mib` (at least 1 MiB).
    pub fn pinned_mib(&self, memory_mib: u64) -> u64 {
        (memory_mib * u64::from(self.units) / u64::from(self.units_per_gpu.max(1))).max(1)
    }
}

fn select_allocations(conn: &Connection) -> rusqlite::Result<Vec<Allocation>> {
    allocations_where(conn, "", [])
}

fn allocation_by_key(conn: &Connection, key: &str) -> rusqlite::Result<Option<Allocation>> {
    Ok(allocations_where(conn, "WHERE key = ?1", [key])?.pop())
}

fn allocations_where<P: rusqlite::Params>(
    conn: &Connection,
    filter: &str,
    params: P,
) -> rusqlite::Result<Vec<Allocation>> {
    let mut st = conn.prepare_cached(&format!(
        "SELECT key, gpu, units, units_per_gpu, devices, created FROM allocations {filter} ORDER BY key"
    ))?;
    let rows = st.query_map(params, |r| {
        let devices: String = r.get(4)?;
        Ok(Allocation {
            key: r.get(0)?,
            gpu: r.get(1)?,
            units: r.get(2)?,
            units_per_gpu: r.get(3)?,
            devices: serde_json::from_str(&devices).unwrap_or_default(),
            created: r.get::<_, i64>(5)?.max(0) as u64,
        })
    })?;
    rows.collect()
}

/// One decision's transaction, under the writers' lock.
pub struct Transaction<'a> {
    tx: rusqlite::Transaction<'a>,
    path: &'a Path,
    _lock: Lock,
}

impl Transaction<'_> {
    /// Runs one statement, prepared once per connection (a resident
    /// caller keeps its connection, and so its statements).
    fn run<P: rusqlite::Params>(&self, sql: &str, params: P) -> rusqlite::Result<usize> {
        self.tx.prepare_cached(sql)?.execute(params)
    }

    /// The device plugin's allocation recorded under `key`, if any.
    pub fn allocation(&self, key: &str) -> Result<Option<Allocation>, LedgerError> {
        allocation_by_key(&self.tx, key).map_err(sqlite(self.path))
    }

    /// Every hold (standing not judged).
    pub fn holds(&self) -> Result<Vec<Hold>, LedgerError> {
        select(&self.tx, "", []).map_err(sqlite(self.path))
    }

    /// What a decision works from: the load of the holds that count now
    /// (each bound hold's process looked at), and the GPUs `container`
    /// already holds among them. The holds that no longer count are
    /// removed with this commit.
    pub fn tally(&mut self, timeout: u64, container: &Container) -> Result<Tally, LedgerError> {
        self.tally_by(timeout, container, &mut |p| p.is_alive())
    }

    /// `tally`, with whether a hold's process lives asked of `alive`.
    pub fn tally_by(
        &mut self,
        timeout: u64,
        container: &Container,
        alive: &mut dyn FnMut(Process) -> bool,
    ) -> Result<Tally, LedgerError> {
        let now = now();
        let mut tally = Tally::default();
        let mut gone: Vec<i64> = Vec::new();
        {
            let mut stmt = self
                .tx
                .prepare_cached(
                    "SELECT rowid, gpu, thread_percentage, pid, pid_start, created, root = ?1 AND id = ?2 FROM holds",
                )
                .map_err(sqlite(self.path))?;
            let mut rows = stmt
                .query(params![container.root, container.id])
                .map_err(sqlite(self.path))?;
            while let Some(r) = rows.next().map_err(sqlite(self.path))? {
                let row = (|| -> rusqlite::Result<_> {
                    let pid: Option<i32> = r.get(3)?;
                    let start: Option<i64> = r.get(4)?;
                    let created: i64 = r.get(5)?;
                    let counts = standing_by(
                        pid,
                        start.and_then(|s| u64::try_from(s).ok()),
                        u64::try_from(created).unwrap_or(0),
                        timeout,
                        now,
                        alive,
                    ) != Standing::Gone;
                    Ok((r.get::<_, i64>(0)?, counts))
                })()
                .map_err(sqlite(self.path))?;
                match row {
                    (rowid, false) => gone.push(rowid),
                    (_, true) => {
                        let gpu: String = r.get(1).map_err(sqlite(self.path))?;
                        let share: Option<f64> = r.get(2).map_err(sqlite(self.path))?;
                        if r.get::<_, bool>(6).map_err(sqlite(self.path))? {
                            tally.held.push(gpu.clone());
                        }
                        tally.load.add(&gpu, share);
                    }
                }
            }
        }
        for rowid in gone {
            self.run("DELETE FROM holds WHERE rowid = ?1", [rowid])
                .map_err(sqlite(self.path))?;
        }
        Ok(tally)
    }

    /// Writes a hold (one row per GPU), replacing any row of the same
    /// container and GPU.
    pub fn insert(&mut self, hold: &Hold) -> Result<(), LedgerError> {
        insert(&self.tx, hold).map_err(sqlite(self.path))
    }

    /// Binds the container's init process `pid` (its start time read now)
    /// to the reservation `reservation` made for it, or with `None` to
    /// every reservation of the container still waiting for its process;
    /// whether any was there.
    pub fn bind(
        &mut self,
        c: &Container,
        reservation: Option<i64>,
        pid: i32,
    ) -> Result<bool, LedgerError> {
        let start = Process::find(pid).and_then(|p| i64::try_from(p.start).ok());
        let n = match reservation {
            Some(r) => self.run(
                "UPDATE holds SET pid = ?1, pid_start = ?2 WHERE root = ?3 AND id = ?4 AND reservation = ?5",
                params![pid, start, c.root, c.id, r],
            ),
            None => self.run(
                "UPDATE holds SET pid = ?1, pid_start = ?2 WHERE root = ?3 AND id = ?4 AND pid IS NULL",
                params![pid, start, c.root, c.id],
            ),
        }
        .map_err(sqlite(self.path))?;
        Ok(n > 0)
    }

    /// Removes the holds of container `id` whose bundle is `bundle`: the
    /// container a hook's poststop names (the runtime's hold of it
    /// included, where the runtime placed it).
    pub fn remove_in_bundle(&mut self, id: &str, bundle: &str) -> Result<usize, LedgerError> {
        self.run(
            "DELETE FROM holds WHERE id = ?1 AND bundle = ?2",
            params![id, bundle],
        )
        .map_err(sqlite(self.path))
    }

    /// Removes the container's rows: those of one reservation, or all.
    /// How many went.
    pub fn remove(
        &mut self,
        c: &Container,
        reservation: Option<i64>,
    ) -> Result<usize, LedgerError> {
        let n = match reservation {
            Some(r) => self.run(
                "DELETE FROM holds WHERE root = ?1 AND id = ?2 AND reservation = ?3",
                params![c.root, c.id, r],
            ),
            None => self.run(
                "DELETE FROM holds WHERE root = ?1 AND id = ?2",
                params![c.root, c.id],
            ),
        }
        .map_err(sqlite(self.path))?;
        Ok(n)
    }

    /// The reservations waiting for a pid whose bundle is `bundle`, for
    /// the hook that runs under the runtime.
    pub fn unbound_in(&self, id: &str, bundle: &str) -> Result<Vec<Hold>, LedgerError> {
        select(
            &self.tx,
            "WHERE id = ?1 AND bundle = ?2 AND pid IS NULL",
            [id, bundle],
        )
        .map_err(sqlite(self.path))
    }

    pub fn commit(self) -> Result<(), LedgerError> {
        self.tx.commit().map_err(sqlite(self.path))
    }
}

fn insert(tx: &Connection, h: &Hold) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached(
        "INSERT OR REPLACE INTO holds (root, id, gpu, thread_percentage, pinned_mem_limit, pid, pid_start, names, env, created, source, bundle, reservation)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let names = serde_json::to_string(&h.names).expect("names serialise");
    let env = serde_json::to_string(&h.env).expect("env serialises");
    for gpu in &h.gpus {
        stmt.execute(params![
            h.container.root,
            h.container.id,
            gpu,
            h.thread_percentage,
            h.pinned_mem_limit,
            h.pid,
            h.pid_start.and_then(|s| i64::try_from(s).ok()),
            names,
            env,
            i64::try_from(h.created).unwrap_or(i64::MAX),
            h.source.as_str(),
            h.bundle,
            h.reservation,
        ])?;
    }
    Ok(())
}

/// The holds of the rows `filter` selects, a container's rows gathered
/// into one hold, in the order the containers were reserved.
fn select<P: rusqlite::Params>(
    conn: &Connection,
    filter: &str,
    params: P,
) -> rusqlite::Result<Vec<Hold>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT root, id, gpu, thread_percentage, pinned_mem_limit, pid, pid_start, names, env, created, source, bundle, reservation
         FROM holds {filter} ORDER BY created, root, id, rowid"
    ))?;
    let mut rows = stmt.query(params)?;
    let mut holds: Vec<Hold> = Vec::new();
    let mut at: HashMap<(String, String, i64), usize> = HashMap::new();
    while let Some(r) = rows.next()? {
        let container = Container {
            root: r.get(0)?,
            id: r.get(1)?,
        };
        let gpu: String = r.get(2)?;
        let reservation: i64 = r.get(12)?;
        let key = (container.root.clone(), container.id.clone(), reservation);
        if let Some(&i) = at.get(&key) {
            holds[i].gpus.push(gpu);
            continue;
        }
        let pid: Option<i32> = r.get(5)?;
        let start: Option<i64> = r.get(6)?;
        let created: i64 = r.get(9)?;
        let source: String = r.get(10)?;
        let (names, env): (String, String) = (r.get(7)?, r.get(8)?);
        at.insert(key, holds.len());
        holds.push(Hold {
            container,
            gpus: vec![gpu],
            thread_percentage: r.get(3)?,
            pinned_mem_limit: r.get(4)?,
            pid,
            pid_start: start.and_then(|s| u64::try_from(s).ok()),
            // Written by gpushare as JSON; a hand edit that broke them
            // loses the names, never the hold.
            names: serde_json::from_str(&names).unwrap_or_default(),
            env: serde_json::from_str(&env).unwrap_or_default(),
            created: u64::try_from(created).unwrap_or(0),
            source: Source::parse(&source),
            bundle: r.get(11)?,
            reservation,
        });
    }
    Ok(holds)
}

/// A new reservation's number: tells apart the create calls of one
/// container, so the undo of a failed one removes its own rows only.
pub fn new_reservation() -> i64 {
    use std::hash::{BuildHasher, Hasher};
    // The standard library's hasher keys are random per process.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now());
    h.write_u32(std::process::id());
    (h.finish() >> 1) as i64
}

/// Where the runtime asks for a container's pid when its caller gave no
/// pid file: `<state_dir>/pid/`.
pub const PID_DIR: &str = "pid";

/// What `gpushare gc` took away.
pub struct Collected {
    /// Holds whose container is gone (its process dead or its pid reused),
    /// or never bound within the reservation timeout.
    pub dropped: Vec<Hold>,
    /// Pid files of runtime calls killed before they removed their own,
    /// and temp files of writers killed before they renamed theirs.
    pub pid_files: usize,
    /// Files and directories an earlier gpushare left readable to all.
    pub restricted: usize,
}

/// `gpushare gc`: drops what no longer counts, removes the pid files that
/// killed runtime calls left, and makes the state root's alone where an
/// earlier version had not.
pub fn gc(state_dir: &Path, timeout: u64) -> Result<Collected, LedgerError> {
    let mut dropped = Vec::new();
    if let Some(mut ledger) = Ledger::open_if_exists(state_dir)? {
        let mut tx = ledger.begin()?;
        dropped = tx
            .holds()?
            .into_iter()
            .filter(|h| h.standing(timeout) == Standing::Gone)
            .collect();
        for h in &dropped {
            tx.remove(&h.container, Some(h.reservation))?;
        }
        tx.commit()?;
    }
    Ok(Collected {
        dropped,
        pid_files: clean_pid_files(state_dir) + crate::sys::remove_stale_temps(state_dir),
        restricted: restrict(state_dir)?,
    })
}

/// Removes the pid files (`<pid>.<start>`) of runtime calls that are gone.
fn clean_pid_files(state_dir: &Path) -> usize {
    let Ok(list) = std::fs::read_dir(state_dir.join(PID_DIR)) else {
        return 0;
    };
    list.flatten()
        .filter(|e| {
            let name = e.file_name();
            let owner = name.to_str().and_then(|n| {
                let (pid, start) = n.split_once('.')?;
                Some(Process {
                    pid: pid.parse().ok()?,
                    start: start.parse().ok()?,
                })
            });
            !owner.is_some_and(|p| p.is_alive())
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Makes the state directory and the ledger's files root's alone where an
/// earlier gpushare left them readable to all. Says how many it changed.
fn restrict(dir: &Path) -> Result<usize, LedgerError> {
    let mut changed = 0;
    let dirs = [dir.to_owned(), dir.join(PID_DIR)];
    let files = ["ledger.db", "ledger.db-wal", "ledger.db-shm", LOCK_FILE].map(|f| dir.join(f));
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
            // escapes it for its format (`text::visible` for terminals).
            let v: String = v.chars().take(253).collect();
            if !v.is_empty() {
                names.insert((*short).to_owned(), v);
            }
        }
    }
    names
}

/// The 0.1 ledger: a snapshot (`ledger`) and a journal (`ledger.journal`)
/// of record lines, or, from before that, one JSON document and JSON
/// records. Read once, at the upgrade.
mod import {
    use super::*;

    /// An entry as 0.1 wrote it (the JSON of its `E` lines).
    #[derive(Deserialize)]
    struct Entry {
        id: String,
        gpus: Vec<String>,
        #[serde(default)]
        thread_percentage: Option<f64>,
        #[serde(default)]
        pinned_mem_limit: Option<String>,
        #[serde(default)]
        pid: Option<i32>,
        #[serde(default)]
        pid_start: Option<u64>,
        #[serde(default)]
        names: BTreeMap<String, String>,
        #[serde(default)]
        env: Vec<String>,
        created: u64,
    }

    #[derive(Deserialize)]
    struct JsonLedger {
        entries: Vec<Entry>,
    }

    #[derive(Deserialize)]
    #[serde(tag = "op", rename_all = "lowercase")]
    enum JsonRecord {
        Bind(Entry),
        Release { id: String },
    }

    /// Applies one record line (`E …` or `X <id> $`, or a JSON record) to
    /// `held`; a line torn by a crash does not parse and is passed over.
    fn apply(line: &str, held: &mut Vec<Entry>) {
        if line.starts_with('{') {
            match serde_json::from_str::<JsonRecord>(line) {
                Ok(JsonRecord::Bind(e)) => upsert(held, e),
                Ok(JsonRecord::Release { id }) => held.retain(|e| e.id != id),
                Err(_) => {}
            }
            return;
        }
        // E <id> <created> <pid> <pid_start> <share> <gpus> <len> <json>
        let f: Vec<&str> = line.splitn(9, ' ').collect();
        match f.as_slice() {
            ["X", id, "$"] => {
                let id = decode(id);
                held.retain(|e| e.id != id);
            }
            ["E", _, _, pid, start, _, _, len, json] if len.parse() == Ok(json.len()) => {
                let Ok(mut e) = serde_json::from_str::<Entry>(json) else {
                    return;
                };
                // The leading fields were what 0.1 decided with: they win.
                e.pid = pid.parse().ok();
                e.pid_start = start.parse().ok();
                upsert(held, e);
            }
            _ => {}
        }
    }

    fn upsert(held: &mut Vec<Entry>, e: Entry) {
        held.retain(|x| x.id != e.id);
        held.push(e);
    }

    /// Decodes a percent-encoded field.
    fn decode(field: &str) -> String {
        let b = field.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' && i + 2 < b.len() {
                if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 3], 16) {
                    out.push(v);
                    i += 3;
                    continue;
                }
            }
            out.push(b[i]);
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The holds of the 0.1 ledger in `dir` (none when there is none).
    pub(super) fn read(dir: &Path) -> std::io::Result<Vec<Hold>> {
        let text = |name: &str| match std::fs::read(dir.join(name)) {
            Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(e),
        };
        let (snapshot, journal) = (text("ledger")?, text("ledger.journal")?);
        let mut held = Vec::new();
        if snapshot.starts_with('{') {
            if let Ok(doc) = serde_json::from_str::<JsonLedger>(&snapshot) {
                held = doc.entries;
            }
        } else {
            snapshot.lines().for_each(|l| apply(l, &mut held));
        }
        journal.lines().for_each(|l| apply(l, &mut held));
        Ok(held
            .into_iter()
            .filter(|e| !e.gpus.is_empty())
            .map(|e| Hold {
                // 0.1 did not record the runtime root: the runtime's default.
                container: Container {
                    root: String::new(),
                    id: e.id,
                },
                gpus: e.gpus,
                thread_percentage: e.thread_percentage,
                pinned_mem_limit: e.pinned_mem_limit,
                pid: e.pid,
                pid_start: e.pid_start,
                names: e.names,
                env: e.env,
                created: e.created,
                source: Source::Imported,
                bundle: String::new(),
                reservation: 0,
            })
            .collect())
    }

    /// Moves the 0.1 files into `<dir>/ledger-0.1/` (and its markers and
    /// lock away), so they are read once.
    pub(super) fn set_aside(dir: &Path) {
        let aside = dir.join(IMPORTED_DIR);
        let names = ["ledger", "ledger.journal", "held"];
        if !names.iter().any(|n| dir.join(n).exists()) {
            return;
        }
        let _ = std::fs::DirBuilder::new().mode(PRIVATE_DIR).create(&aside);
        for n in names {
            let _ = std::fs::rename(dir.join(n), aside.join(n));
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn percent_decoding() {
            assert_eq!(decode("c1"), "c1");
            assert_eq!(decode("a%20b%2F"), "a b/");
            assert_eq!(decode("bad%zz%"), "bad%zz%");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(root: &str, id: &str, gpu: &str, share: Option<f64>) -> Hold {
        Hold {
            container: Container {
                root: root.into(),
                id: id.into(),
            },
            gpus: vec![gpu.into()],
            thread_percentage: share,
            pinned_mem_limit: None,
            pid: None,
            pid_start: None,
            names: BTreeMap::new(),
            env: vec![format!("NVIDIA_VISIBLE_DEVICES={gpu}")],
            created: now(),
            source: Source::Runtime,
            bundle: "/b".into(),
            reservation: new_reservation(),
        }
    }

    fn me() -> Process {
        Process::find(std::process::id() as i32).unwrap()
    }

    #[test]
    fn reserve_bind_read_release() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let h = hold("/run/runc", "c1", "GPU-a", Some(25.0));
        let mut tx = l.begin().unwrap();
        tx.insert(&h).unwrap();
        tx.commit().unwrap();
        let mut tx = l.begin().unwrap();
        assert!(tx
            .bind(&h.container, Some(h.reservation), me().pid)
            .unwrap());
        assert!(!tx
            .bind(&h.container, Some(h.reservation + 1), me().pid)
            .unwrap());
        assert!(
            !tx.bind(&h.container, None, me().pid).unwrap(),
            "none waits"
        );
        tx.commit().unwrap();
        let got = l.holds_of(&h.container).unwrap().pop().unwrap();
        assert_eq!((got.pid, got.pid_start), (Some(me().pid), Some(me().start)));
        assert_eq!(got.standing(60), Standing::Running);
        assert_eq!(got.env, h.env);
        // Another root, the same id: another container.
        let other = Container {
            root: "/run/docker".into(),
            id: "c1".into(),
        };
        assert!(l.holds_of(&other).unwrap().is_empty());
        let mut tx = l.begin().unwrap();
        assert_eq!(tx.remove(&other, None).unwrap(), 0);
        assert_eq!(tx.remove(&h.container, Some(h.reservation)).unwrap(), 1);
        tx.commit().unwrap();
        assert!(l.holds().unwrap().is_empty());
    }

    #[test]
    fn a_multi_gpu_hold_is_one_hold_of_several_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let mut h = hold("", "c2", "GPU-a", None);
        h.gpus.push("GPU-b".into());
        let mut tx = l.begin().unwrap();
        tx.insert(&h).unwrap();
        tx.commit().unwrap();
        let holds = l.holds().unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].gpus, ["GPU-a", "GPU-b"]);
        let load = Load::of_holds(&holds);
        assert_eq!(load.of("gpu-b").holders, 1);
    }

    #[test]
    fn uncommitted_changes_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        {
            let mut tx = l.begin().unwrap();
            tx.insert(&hold("", "c1", "GPU-a", None)).unwrap();
        }
        assert!(l.holds().unwrap().is_empty());
    }

    #[test]
    fn standing_judges_reservations_by_age_and_holds_by_their_process() {
        let dir = tempfile::tempdir().unwrap();
        let mut l = Ledger::open(dir.path()).unwrap();
        let fresh = hold("", "fresh", "GPU-a", Some(10.0));
        let mut old = hold("", "old", "GPU-a", Some(20.0));
        old.created -= 1000;
        let mut running = hold("", "running", "GPU-a", Some(30.0));
        (running.pid, running.pid_start) = (Some(me().pid), Some(me().start));
        let mut reused = hold("", "reused", "GPU-a", Some(40.0));
        (reused.pid, reused.pid_start) = (Some(me().pid), Some(me().start + 7));
        let mut dead = hold("", "dead", "GPU-a", Some(50.0));
        (dead.pid, dead.pid_start) = (Some(i32::MAX), Some(1));
        let mut unknown = hold("", "unknown", "GPU-a", Some(60.0));
        unknown.pid = Some(me().pid);
        let mut tx = l.begin().unwrap();
        for h in [&fresh, &old, &running, &reused, &dead, &unknown] {
            tx.insert(h).unwrap();
        }
        let tally = tx.tally(120, &running.container).unwrap();
        assert_eq!(tally.load.of("GPU-A").holders, 2);
        assert_eq!(tally.load.of("GPU-A").committed_percentage, 40.0);
        assert_eq!(tally.held, ["GPU-a"], "what the container holds");
        tx.commit().unwrap();
        let ids: Vec<String> = l
            .holds()
            .unwrap()
            .into_iter()
            .map(|h| h.container.id)
            .collect();
        assert_eq!(ids, ["fresh", "running"], "the others were dropped");
        for h in l.holds().unwrap() {
            let want = if h.container.id == "fresh" {
                Standing::Reserved
            } else {
                Standing::Running
            };
            assert_eq!(h.standing(120), want);
        }
    }

    #[test]
    fn concurrent_writers_never_lose_a_hold() {
        let dir = tempfile::tempdir().unwrap();
        Ledger::open(dir.path()).unwrap();
        std::thread::scope(|s| {
            for t in 0..8 {
                let dir = dir.path();
                s.spawn(move || {
                    let mut l = Ledger::open(dir).unwrap();
                    for i in 0..25 {
                        let mut tx = l.begin().unwrap();
                        let n = tx.holds().unwrap().len();
                        tx.insert(&hold("", &format!("t{t}-{i}"), "GPU-a", None))
                            .unwrap();
                        assert_eq!(tx.holds().unwrap().len(), n + 1);
                        tx.commit().unwrap();
                    }
                });
            }
        });
        let l = Ledger::open(dir.path()).unwrap();
        assert_eq!(l.holds().unwrap().len(), 200);
    }

    #[test]
    fn the_files_are_roots_alone_and_the_schema_is_versioned() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let l = Ledger::open(&state).unwrap();
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(l.path()), 0o600);
        assert_eq!(l.version().unwrap(), SCHEMA_VERSION);
        l.conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(l);
        let e = Ledger::open(&state).err().unwrap().to_string();
        assert!(e.contains("newer"), "{e}");
    }

    #[test]
    fn a_0_1_ledger_is_imported_once_and_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let entry = |id: &str, pid: i32| {
            serde_json::json!({"id": id, "gpus": ["GPU-a"], "thread_percentage": 50.0,
                "pid": pid, "names": {"pod": "p"}, "env": ["NVIDIA_VISIBLE_DEVICES=GPU-a"], "created": now()})
            .to_string()
        };
        let line = |id: &str, enc: &str, pid: i32, start: &str| {
            let json = entry(id, pid);
            format!("E {enc} 1 {pid} {start} 50 GPU-a {} {json}", json.len())
        };
        let me = me();
        std::fs::write(
            d.join("ledger"),
            format!(
                "gpushare-ledger 2\nS 10 GPU-a 2 100000000 $\n{}\n{}\n",
                line("kept", "kept", me.pid, &me.start.to_string()),
                line("a b", "a%20b", me.pid, &me.start.to_string())
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("ledger.journal"),
            format!(
                "\nX a%20b $\n\n{}\n\nE torn 1 2",
                line("late", "late", me.pid, "-")
            ),
        )
        .unwrap();
        std::fs::create_dir(d.join("held")).unwrap();
        let l = Ledger::open(d).unwrap();
        let holds = l.holds().unwrap();
        let ids: Vec<&str> = holds.iter().map(|h| h.container.id.as_str()).collect();
        assert_eq!(ids.len(), 2, "{ids:?}");
        assert!(ids.contains(&"kept") && ids.contains(&"late"), "{ids:?}");
        let kept = holds.iter().find(|h| h.container.id == "kept").unwrap();
        assert_eq!(kept.source, Source::Imported);
        assert_eq!(kept.standing(120), Standing::Running);
        assert_eq!(kept.thread_percentage, Some(50.0));
        assert_eq!(kept.names["pod"], "p");
        let late = holds.iter().find(|h| h.container.id == "late").unwrap();
        assert_eq!(
            late.standing(120),
            Standing::Gone,
            "no start time: not counted"
        );
        for n in ["ledger", "ledger.journal", "held"] {
            assert!(!d.join(n).exists() && d.join(IMPORTED_DIR).join(n).exists());
        }
        drop(l);
        // Opened again: nothing is imported twice.
        let l = Ledger::open(d).unwrap();
        assert_eq!(l.holds().unwrap().len(), 2);
    }

    #[test]
    fn a_0_1_json_ledger_is_imported_too() {
        let dir = tempfile::tempdir().unwrap();
        let me = me();
        std::fs::write(
            dir.path().join("ledger"),
            serde_json::json!({"version": 1, "entries": [
                {"id": "j1", "gpus": ["GPU-b"], "pid": me.pid, "pid_start": me.start, "created": now()}]})
            .to_string(),
        )
        .unwrap();
        let l = Ledger::open_if_exists(dir.path()).unwrap().unwrap();
        let holds = l.holds().unwrap();
        assert_eq!(holds.len(), 1);
        assert_eq!(holds[0].standing(120), Standing::Running);
    }

    #[test]
    fn names_come_from_known_annotations_only() {
        let names = names_from_annotations([
            ("io.kubernetes.cri.sandbox-name", "pod-a"),
            ("io.kubernetes.pod.namespace", "ns"),
            ("gpushare/gpus", "x"),
            ("nerdctl/name", ""),
        ]);
        assert_eq!(names.len(), 2);
        assert_eq!(names["pod"], "pod-a");
        assert_eq!(names["namespace"], "ns");
    }
}
