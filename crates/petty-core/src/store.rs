//! Sandbox state in SQLite: one row per sandbox that exists (running or
//! stopped), and a history row for each one that was removed, with why.
//!
//! Several processes (CLI invocations, a daemon) share one database file;
//! WAL mode and a busy timeout let them take turns. Calls are blocking: the
//! manager runs them on the blocking pool.
//!
//! A [`Store`] writes through one connection (behind a mutex: SQLite takes
//! one writer at a time anyway) and reads through a small pool of read-only
//! ones. In WAL mode a reader neither waits for a writer nor holds one up,
//! and each read statement outside a transaction sees every write committed
//! before it began, by any connection of any process; so a lookup never
//! queues behind another sandbox's write (a create's insert, say) in this
//! process.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use crate::catalog::TemplateRecord;
use crate::metrics::StartKind;
use crate::{CoreError, SandboxId, SandboxState};

/// One sandbox as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// Unique id.
    pub id: SandboxId,
    /// Unique, user-chosen or derived from the id.
    pub name: String,
    /// Where it is in its life.
    pub state: SandboxState,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Kernel it boots.
    pub kernel: PathBuf,
    /// Base root filesystem.
    pub rootfs: PathBuf,
    /// VMM backend name (`qemu`).
    pub backend: String,
    /// VMM process id, once started.
    pub vmm_pid: Option<u32>,
    /// Run directory (sockets, overlay, logs).
    pub run_dir: Option<PathBuf>,
    /// Process that created it (for recovery of interrupted creates and pools).
    pub owner_pid: u32,
    /// Held by a warm pool, not yet handed out.
    pub pooled: bool,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// Last state change, ms since the epoch.
    pub updated_at_ms: i64,
    /// Last use (exec or file operation), ms since the epoch.
    pub last_used_ms: i64,
    /// Destroy this long after creation.
    pub ttl: Option<Duration>,
    /// Destroy after this long without use.
    pub idle_timeout: Option<Duration>,
    /// What its idle timeout does (`None`: the manager's default).
    pub on_idle: Option<crate::IdleAction>,
    /// What its TTL does when it ends (`None`: destroys it). A stop or a
    /// hibernation spends the TTL: it is cleared, so the sandbox comes back
    /// with none.
    pub on_expiry: Option<crate::IdleAction>,
    /// Why it is stopped or failed.
    pub reason: Option<String>,
    /// The snapshot it was restored from (its disk layers on that one's).
    pub from_snapshot: Option<String>,
    /// Root disk size in MiB it was asked for (`None`: the base image's).
    pub disk_size_mib: Option<u32>,
    /// Who asked for it (`cli`, `rest`, `mcp-stdio`, `mcp-http:<session>`;
    /// empty when not said).
    pub owner: String,
    /// It goes when its owner process (`owner_pid`) ends; recovery removes
    /// it if that process could not.
    pub bound_to_owner: bool,
    /// Its network (mode, rules, published ports with their host ports);
    /// `None`: none.
    pub network: Option<petty_net::NetworkSpec>,
    /// How it started.
    pub start_kind: StartKind,
    /// From the create call to ready (a pooled one: its hand-out), ms;
    /// `None` until ready.
    pub startup_ms: Option<u64>,
    /// Commands run in it, as recorded by the processes that ran them.
    pub execs: u64,
    /// Their total wall time, µs.
    pub exec_us: u64,
}

impl SandboxRecord {
    /// When its TTL or idle timeout, whichever comes first, will end it
    /// (ms since the epoch), if either is set.
    pub fn expires_at_ms(&self) -> Option<i64> {
        let at = |base: i64, d: Option<Duration>| d.map(|d| base + d.as_millis() as i64);
        match (
            at(self.created_at_ms, self.ttl),
            at(self.last_used_ms, self.idle_timeout),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A snapshot as stored: memory, device state and disk of a sandbox at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotRecord {
    /// Unique name.
    pub name: String,
    /// The snapshot its disk layers on, if its sandbox was itself restored.
    pub parent: Option<String>,
    /// Name of the sandbox it was taken from.
    pub source_sandbox: String,
    /// Directory holding its files.
    pub dir: PathBuf,
    /// Bytes on disk (state + disk layer).
    pub size_bytes: u64,
    /// Guest memory in MiB (a restore must use the same).
    pub memory_mib: u32,
    /// vCPUs (a restore must use the same).
    pub vcpus: u32,
    /// Kernel the guest runs.
    pub kernel: PathBuf,
    /// Base root filesystem under its disk layers.
    pub rootfs: PathBuf,
    /// Creation time, ms since the epoch.
    pub created_at_ms: i64,
    /// VMM backend that took it (`qemu`, `firecracker`); restores use the same.
    pub backend: String,
    /// The network of the sandbox it was taken from, when its VM had a
    /// network interface (its children need one, and get these rules
    /// unless they ask for others).
    pub network: Option<petty_net::NetworkSpec>,
}

/// A removed sandbox and why it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRecord {
    /// Its id.
    pub id: SandboxId,
    /// Its name.
    pub name: String,
    /// When it was removed, ms since the epoch.
    pub ended_at_ms: i64,
    /// Why.
    pub reason: String,
}

/// Milliseconds since the epoch, now: every timestamp of the store and the
/// manager (creation, last use, TTL and idle timeouts) comes from here.
///
/// It is the wall clock as tokio's clock sees it: the wall clock, moved by
/// however far tokio's clock is from the monotonic clock. In a running
/// program the two agree (the difference is the nanoseconds between two
/// reads); in a test whose runtime paused time (`tokio::time::pause`, with
/// tokio's `test-util`), this clock stands still with tokio's and moves by
/// what `tokio::time::advance` (or auto-advance) moves it, so lifetimes are
/// tested without waiting for them. Outside a runtime it is the wall clock.
pub fn now_ms() -> i64 {
    let wall = SystemTime::now();
    let (tokio_now, real_now) = (
        tokio::time::Instant::now().into_std(),
        std::time::Instant::now(),
    );
    let wall = if tokio_now >= real_now {
        wall + (tokio_now - real_now)
    } else {
        wall - (real_now - tokio_now)
    };
    wall.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS sandboxes (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    state         TEXT NOT NULL,
    memory_mib    INTEGER NOT NULL,
    vcpus         INTEGER NOT NULL,
    kernel        TEXT NOT NULL,
    rootfs        TEXT NOT NULL,
    backend       TEXT NOT NULL,
    vmm_pid       INTEGER,
    run_dir       TEXT,
    owner_pid     INTEGER NOT NULL,
    pooled        INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL,
    ttl_ms        INTEGER,
    idle_ms       INTEGER,
    reason        TEXT
);
CREATE TABLE IF NOT EXISTS history (
    id        TEXT NOT NULL,
    name      TEXT NOT NULL,
    ended_at  INTEGER NOT NULL,
    reason    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS history_id ON history(id);
CREATE TABLE IF NOT EXISTS snapshots (
    name            TEXT PRIMARY KEY,
    parent          TEXT,
    source_sandbox  TEXT NOT NULL,
    dir             TEXT NOT NULL,
    size_bytes      INTEGER NOT NULL,
    memory_mib      INTEGER NOT NULL,
    vcpus           INTEGER NOT NULL,
    kernel          TEXT NOT NULL,
    rootfs          TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    backend         TEXT NOT NULL DEFAULT 'qemu'
);
CREATE TABLE IF NOT EXISTS templates (
    name          TEXT PRIMARY KEY,
    source        TEXT NOT NULL,
    rootfs        TEXT NOT NULL,
    digest        TEXT NOT NULL,
    defaults      TEXT NOT NULL,
    size_bytes    INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER NOT NULL
);
";

/// How long a statement waits for another connection's lock (another
/// process's write, a checkpoint) before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The SQLite file.
pub struct Store {
    /// Read-only connections not in use (at most `max_idle_readers`).
    /// Declared before the writer so they close first: the last connection
    /// to close checkpoints the WAL and removes it, which only a writer can.
    readers: Mutex<Vec<Connection>>,
    /// The one connection that writes; it made the schema.
    writer: Mutex<Connection>,
    max_idle_readers: usize,
    path: PathBuf,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// What a [`Store`] has done since it was opened: the round trips to
/// SQLite that requests pay for, counted per call (a transaction is one
/// write).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Reads (lookups, lists), each through a reader connection.
    pub reads: u64,
    /// Writes (statements or transactions), each through the writer.
    pub writes: u64,
}

fn has_column(conn: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
        [table, column],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

fn db_err(path: &Path, e: rusqlite::Error) -> CoreError {
    CoreError::Store {
        path: path.to_path_buf(),
        source: e,
    }
}

impl Store {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, CoreError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| db_err(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| db_err(path, e))?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| db_err(path, e))?;
        conn.execute_batch(SCHEMA).map_err(|e| db_err(path, e))?;
        // Columns added after the first release of the schema.
        for (table, column, decl) in [
            ("sandboxes", "from_snapshot", "from_snapshot TEXT"),
            ("sandboxes", "disk_size_mib", "disk_size_mib INTEGER"),
            ("sandboxes", "owner", "owner TEXT NOT NULL DEFAULT ''"),
            (
                "sandboxes",
                "bound_to_owner",
                "bound_to_owner INTEGER NOT NULL DEFAULT 0",
            ),
            // Snapshots older than this column are QEMU's: Firecracker
            // restores came later.
            (
                "snapshots",
                "backend",
                "backend TEXT NOT NULL DEFAULT 'qemu'",
            ),
            ("sandboxes", "network", "network TEXT"),
            ("snapshots", "network", "network TEXT"),
            (
                "sandboxes",
                "start_kind",
                "start_kind TEXT NOT NULL DEFAULT 'unknown'",
            ),
            ("sandboxes", "startup_ms", "startup_ms INTEGER"),
            ("sandboxes", "execs", "execs INTEGER NOT NULL DEFAULT 0"),
            ("sandboxes", "exec_us", "exec_us INTEGER NOT NULL DEFAULT 0"),
            ("sandboxes", "on_idle", "on_idle TEXT"),
            ("sandboxes", "on_expiry", "on_expiry TEXT"),
        ] {
            if !has_column(&conn, table, column).map_err(|e| db_err(path, e))? {
                // Another process may add it between the check and here.
                match conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {decl}")) {
                    Err(rusqlite::Error::SqliteFailure(_, Some(m)))
                        if m.contains("duplicate column") => {}
                    other => other.map_err(|e| db_err(path, e))?,
                }
            }
        }
        // Columns dropped: `agent_socket` was written for every sandbox and
        // never read back (the backend knows where its sockets are).
        for (table, column) in [("sandboxes", "agent_socket")] {
            if has_column(&conn, table, column).map_err(|e| db_err(path, e))? {
                match conn.execute_batch(&format!("ALTER TABLE {table} DROP COLUMN {column}")) {
                    // Another process dropped it first.
                    Err(rusqlite::Error::SqliteFailure(_, Some(m)))
                        if m.contains("no such column") => {}
                    other => other.map_err(|e| db_err(path, e))?,
                }
            }
        }
        Ok(Self {
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(conn),
            // Reads are short; more than a few at once are rare outside a
            // burst, when the extra connections are opened and closed.
            max_idle_readers: (crate::host_cpus() * 2).clamp(1, 4),
            path: path.to_path_buf(),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and writes so far.
    pub fn stats(&self) -> StoreStats {
        StoreStats {
            reads: self.reads.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// The writer connection, counted as one write.
    fn writer(&self) -> MutexGuard<'_, Connection> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs one write statement (or several that need no transaction).
    fn write<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, CoreError> {
        let conn = self.writer();
        f(&conn).map_err(|e| db_err(&self.path, e))
    }

    /// Runs `f` on a free reader, opening one when none is: a read never
    /// waits for another read, nor for the writer.
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, CoreError> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let idle = self.idle_readers().pop();
        let conn = match idle {
            Some(c) => c,
            None => self.open_reader().map_err(|e| db_err(&self.path, e))?,
        };
        // Outside a transaction each statement reads the latest commit, and
        // its read ends when the statement is reset (by the time `f`
        // returns), so a reader kept idle holds no old snapshot.
        let out = f(&conn);
        let mut idle = self.idle_readers();
        if idle.len() < self.max_idle_readers {
            idle.push(conn);
        }
        out.map_err(|e| db_err(&self.path, e))
    }

    fn idle_readers(&self) -> MutexGuard<'_, Vec<Connection>> {
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection that cannot write, to the file the writer opened (and
    /// put in WAL mode, which the file keeps).
    fn open_reader(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        Ok(conn)
    }

    /// Adds a new sandbox. A taken name is [`CoreError::NameTaken`]; with a
    /// `limit`, one more sandbox holding a VM than it allows is
    /// [`CoreError::Capacity`]. The count and the insert are one transaction,
    /// so processes creating at the same time cannot overshoot together.
    pub fn insert(&self, r: &SandboxRecord, limit: Option<usize>) -> Result<(), CoreError> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_err(&self.path, e))?;
        if let Some(max) = limit {
            let n: i64 = tx
                .query_row(
                    "SELECT COUNT(*) FROM sandboxes WHERE state IN ('creating', 'ready', 'paused', 'stopping')",
                    [],
                    |row| row.get(0),
                )
                .map_err(|e| db_err(&self.path, e))?;
            if n as usize >= max {
                return Err(CoreError::Capacity { max });
            }
        }
        let res = tx.execute(
            "INSERT INTO sandboxes (id, name, state, memory_mib, vcpus, kernel, rootfs, backend,
                vmm_pid, run_dir, owner_pid, pooled, created_at, updated_at,
                last_used_at, ttl_ms, idle_ms, reason, from_snapshot, disk_size_mib, owner,
                bound_to_owner, network, start_kind, startup_ms, execs, exec_us, on_idle,
                on_expiry)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
                ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29)",
            params![
                r.id.to_string(),
                r.name,
                r.state.as_str(),
                r.memory_mib,
                r.vcpus,
                r.kernel.display().to_string(),
                r.rootfs.display().to_string(),
                r.backend,
                r.vmm_pid,
                r.run_dir.as_ref().map(|p| p.display().to_string()),
                r.owner_pid,
                r.pooled,
                r.created_at_ms,
                r.updated_at_ms,
                r.last_used_ms,
                r.ttl.map(|d| d.as_millis() as i64),
                r.idle_timeout.map(|d| d.as_millis() as i64),
                r.reason,
                r.from_snapshot,
                r.disk_size_mib,
                r.owner,
                r.bound_to_owner,
                network_json(r.network.as_ref()),
                r.start_kind.as_str(),
                r.startup_ms.map(|v| v as i64),
                r.execs as i64,
                r.exec_us as i64,
                r.on_idle.map(|a| a.as_str()),
                r.on_expiry.map(|a| a.as_str()),
            ],
        );
        match res {
            Ok(_) => tx.commit().map_err(|e| db_err(&self.path, e)),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(CoreError::NameTaken(r.name.clone()))
            }
            Err(e) => Err(db_err(&self.path, e)),
        }
    }

    /// Records the VM of a sandbox once it runs, and how long it took to
    /// start.
    pub fn set_vm(
        &self,
        id: SandboxId,
        pid: u32,
        run_dir: &Path,
        startup_ms: u64,
    ) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET vmm_pid = ?2, run_dir = ?3, updated_at = ?4, startup_ms = ?5
                 WHERE id = ?1",
                params![
                    id.to_string(),
                    pid,
                    run_dir.display().to_string(),
                    now_ms(),
                    startup_ms as i64
                ],
            )
        })?;
        Ok(())
    }

    /// Records a sandbox's network as it is now (its published ports).
    pub fn set_network(
        &self,
        id: SandboxId,
        spec: Option<&petty_net::NetworkSpec>,
    ) -> Result<(), CoreError> {
        let json = network_json(spec);
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET network = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.to_string(), json, now_ms()],
            )
        })?;
        Ok(())
    }

    /// Sets the state (and the reason, for stopped and failed ones).
    pub fn set_state(
        &self,
        id: SandboxId,
        state: SandboxState,
        reason: Option<&str>,
    ) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET state = ?2, reason = ?3, updated_at = ?4 WHERE id = ?1",
                params![id.to_string(), state.as_str(), reason, now_ms()],
            )
        })?;
        Ok(())
    }

    /// Moves sandbox `id` to `to` if its row is in a state that may become
    /// `to` ([`SandboxState::can_become`]), in one statement (so checked and
    /// written at once, whichever process races it), with `reason`; with
    /// `touch`, its last use is now too. `Ok(None)` when it moved, else the
    /// state it is in (`None` inside when there is no such row).
    pub fn transition(
        &self,
        id: SandboxId,
        to: SandboxState,
        reason: Option<&str>,
        touch: bool,
    ) -> Result<Option<Option<SandboxState>>, CoreError> {
        let from: Vec<String> = SandboxState::predecessors(to)
            .iter()
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let sql = format!(
            "UPDATE sandboxes SET state = ?2, reason = ?3, updated_at = ?4,
                 last_used_at = CASE WHEN ?5 THEN ?4 ELSE last_used_at END
             WHERE id = ?1 AND state IN ({})",
            from.join(", ")
        );
        let moved = self.write(|c| {
            c.execute(
                &sql,
                params![id.to_string(), to.as_str(), reason, now_ms(), touch],
            )
        })?;
        if moved == 1 {
            return Ok(None);
        }
        Ok(Some(self.get(&id.to_string())?.map(|r| r.state)))
    }

    /// Moves sandbox `id` to `to` only if its row is still as `seen` was
    /// read (same state, same last use): true if it moved. The reaper claims
    /// a sandbox this way, so one paused, used or stopped since it listed the
    /// rows is left alone.
    pub fn claim(
        &self,
        seen: &SandboxRecord,
        to: SandboxState,
        reason: &str,
    ) -> Result<bool, CoreError> {
        let changed = self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET state = ?4, reason = ?5, updated_at = ?6
                 WHERE id = ?1 AND state = ?2 AND last_used_at = ?3",
                params![
                    seen.id.to_string(),
                    seen.state.as_str(),
                    seen.last_used_ms,
                    to.as_str(),
                    reason,
                    now_ms()
                ],
            )
        })?;
        Ok(changed == 1)
    }

    /// Marks a pooled sandbox as handed out.
    /// Its lifetimes count from now; `owner` (when given) and
    /// `bound_to_owner` are its new owner's.
    pub fn unpool(
        &self,
        id: SandboxId,
        owner: Option<&str>,
        bound_to_owner: bool,
        startup_ms: u64,
    ) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET pooled = 0, created_at = ?2, last_used_at = ?2, owner_pid = ?3,
                    owner = COALESCE(?4, owner), bound_to_owner = ?5, start_kind = 'pool',
                    startup_ms = ?6, execs = 0, exec_us = 0
                 WHERE id = ?1",
                params![
                    id.to_string(),
                    now_ms(),
                    std::process::id(),
                    owner,
                    bound_to_owner,
                    startup_ms as i64
                ],
            )
        })?;
        Ok(())
    }

    /// A stopped sandbox starting again: its lifetimes count from now, and
    /// this process is its owner process (recovery judges it by that).
    pub fn restarted(&self, id: SandboxId) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET created_at = ?2, last_used_at = ?2, updated_at = ?2,
                    owner_pid = ?3 WHERE id = ?1",
                params![id.to_string(), now_ms(), std::process::id()],
            )
        })?;
        Ok(())
    }

    /// Replaces a sandbox's TTL (counted from its creation) and idle
    /// timeout; `None` is no limit.
    pub fn set_limits(
        &self,
        id: SandboxId,
        ttl: Option<Duration>,
        idle_timeout: Option<Duration>,
    ) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET ttl_ms = ?2, idle_ms = ?3, updated_at = ?4 WHERE id = ?1",
                params![
                    id.to_string(),
                    ttl.map(|d| d.as_millis() as i64),
                    idle_timeout.map(|d| d.as_millis() as i64),
                    now_ms()
                ],
            )
        })?;
        Ok(())
    }

    /// Sets what a sandbox's TTL does when it ends (`None`: destroys it).
    pub fn set_on_expiry(
        &self,
        id: SandboxId,
        action: Option<crate::IdleAction>,
    ) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE sandboxes SET on_expiry = ?2, updated_at = ?3 WHERE id = ?1",
                params![id.to_string(), action.map(|a| a.as_str()), now_ms()],
            )
        })?;
        Ok(())
    }

    /// Records a use, for the idle timeout.
    pub fn touch(&self, id: SandboxId) -> Result<(), CoreError> {
        self.record_use(id, 0, 0)
    }

    /// Records a use of sandbox `id` now, with `execs` more commands run in
    /// it taking `exec_us` µs together.
    pub fn record_use(&self, id: SandboxId, execs: u64, exec_us: u64) -> Result<(), CoreError> {
        // Cached: every exec and file operation runs it.
        self.write(|c| {
            c.prepare_cached(
                "UPDATE sandboxes SET last_used_at = ?2, execs = execs + ?3,
                    exec_us = exec_us + ?4 WHERE id = ?1",
            )?
            .execute(params![
                id.to_string(),
                now_ms(),
                execs as i64,
                exec_us as i64
            ])
        })?;
        Ok(())
    }

    /// Removes a sandbox's row and records why in the history.
    pub fn remove(&self, id: SandboxId, reason: &str) -> Result<(), CoreError> {
        let mut conn = self.writer();
        let tx = conn.transaction().map_err(|e| db_err(&self.path, e))?;
        tx.execute(
            "INSERT INTO history (id, name, ended_at, reason)
             SELECT id, name, ?2, ?3 FROM sandboxes WHERE id = ?1",
            params![id.to_string(), now_ms(), reason],
        )
        .map_err(|e| db_err(&self.path, e))?;
        tx.execute(
            "DELETE FROM sandboxes WHERE id = ?1",
            params![id.to_string()],
        )
        .map_err(|e| db_err(&self.path, e))?;
        tx.commit().map_err(|e| db_err(&self.path, e))
    }

    /// The sandbox with this id or name.
    pub fn get(&self, key: &str) -> Result<Option<SandboxRecord>, CoreError> {
        // Cached: every request about a sandbox runs it.
        self.read(|c| {
            c.prepare_cached("SELECT * FROM sandboxes WHERE id = ?1 OR name = ?1")?
                .query_row(params![key], from_row)
                .optional()
        })
    }

    /// Every sandbox, oldest first.
    pub fn list(&self) -> Result<Vec<SandboxRecord>, CoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT * FROM sandboxes ORDER BY created_at, name")?;
            let rows = stmt.query_map([], from_row)?;
            rows.collect()
        })
    }

    /// How many sandboxes hold a VM (anything but stopped and failed).
    pub fn count_with_vm(&self) -> Result<usize, CoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM sandboxes WHERE state IN ('creating', 'ready', 'paused', 'stopping')",
                [],
                |r| r.get::<_, i64>(0),
            )
        })
        .map(|n| n as usize)
    }

    /// Records a snapshot. A taken name is [`CoreError::NameTaken`].
    pub fn insert_snapshot(&self, r: &SnapshotRecord) -> Result<(), CoreError> {
        let conn = self.writer();
        let res = conn.execute(
            "INSERT INTO snapshots (name, parent, source_sandbox, dir, size_bytes, memory_mib,
                vcpus, kernel, rootfs, created_at, backend, network)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            params![
                r.name,
                r.parent,
                r.source_sandbox,
                r.dir.display().to_string(),
                r.size_bytes as i64,
                r.memory_mib,
                r.vcpus,
                r.kernel.display().to_string(),
                r.rootfs.display().to_string(),
                r.created_at_ms,
                r.backend,
                network_json(r.network.as_ref()),
            ],
        );
        match res {
            Ok(_) => Ok(()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(CoreError::NameTaken(r.name.clone()))
            }
            Err(e) => Err(db_err(&self.path, e)),
        }
    }

    /// The snapshot named `name`.
    pub fn get_snapshot(&self, name: &str) -> Result<Option<SnapshotRecord>, CoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT * FROM snapshots WHERE name = ?1",
                params![name],
                snapshot_from_row,
            )
            .optional()
        })
    }

    /// Every snapshot, oldest first.
    pub fn list_snapshots(&self) -> Result<Vec<SnapshotRecord>, CoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT * FROM snapshots ORDER BY created_at, name")?;
            let rows = stmt.query_map([], snapshot_from_row)?;
            rows.collect()
        })
    }

    /// What depends on snapshot `name`: its child snapshots and the
    /// sandboxes restored from it.
    pub fn snapshot_dependents(&self, name: &str) -> Result<Vec<String>, CoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT 'snapshot ' || name FROM snapshots WHERE parent = ?1
                 UNION ALL
                 SELECT 'sandbox ' || name FROM sandboxes WHERE from_snapshot = ?1",
            )?;
            let rows = stmt.query_map(params![name], |r| r.get::<_, String>(0))?;
            rows.collect()
        })
    }

    /// Forgets snapshot `name`.
    pub fn remove_snapshot(&self, name: &str) -> Result<(), CoreError> {
        self.write(|c| c.execute("DELETE FROM snapshots WHERE name = ?1", params![name]))?;
        Ok(())
    }

    /// Records template `r.name`, replacing one of that name; returns the
    /// one it replaced.
    pub fn put_template(&self, r: &TemplateRecord) -> Result<Option<TemplateRecord>, CoreError> {
        let mut conn = self.writer();
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(|e| db_err(&self.path, e))?;
        let old = tx
            .query_row(
                "SELECT * FROM templates WHERE name = ?1",
                params![r.name],
                template_from_row,
            )
            .optional()
            .map_err(|e| db_err(&self.path, e))?;
        tx.execute(
            "INSERT OR REPLACE INTO templates (name, source, rootfs, digest, defaults, size_bytes,
                created_at, last_used_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                r.name,
                r.source,
                r.rootfs.display().to_string(),
                r.digest,
                serde_json::to_string(&r.defaults).expect("defaults serialize"),
                r.size_bytes as i64,
                r.created_at_ms,
                r.last_used_ms,
            ],
        )
        .map_err(|e| db_err(&self.path, e))?;
        tx.commit().map_err(|e| db_err(&self.path, e))?;
        Ok(old)
    }

    /// The template named `name`.
    pub fn get_template(&self, name: &str) -> Result<Option<TemplateRecord>, CoreError> {
        self.read(|c| {
            c.query_row(
                "SELECT * FROM templates WHERE name = ?1",
                params![name],
                template_from_row,
            )
            .optional()
        })
    }

    /// The template whose image is `rootfs`, if any.
    pub fn template_by_rootfs(&self, rootfs: &Path) -> Result<Option<TemplateRecord>, CoreError> {
        let rootfs = rootfs.display().to_string();
        self.read(|c| {
            c.prepare_cached("SELECT * FROM templates WHERE rootfs = ?1 LIMIT 1")?
                .query_row(params![rootfs], template_from_row)
                .optional()
        })
    }

    /// Every template, by name.
    pub fn list_templates(&self) -> Result<Vec<TemplateRecord>, CoreError> {
        self.read(|c| {
            let mut stmt = c.prepare("SELECT * FROM templates ORDER BY name")?;
            let rows = stmt.query_map([], template_from_row)?;
            rows.collect()
        })
    }

    /// Who uses root file system `rootfs`: sandboxes, snapshots and
    /// templates, in words (`sandbox NAME`).
    pub fn rootfs_users(&self, rootfs: &Path) -> Result<Vec<String>, CoreError> {
        let rootfs = rootfs.display().to_string();
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT 'sandbox ' || name FROM sandboxes WHERE rootfs = ?1
                 UNION ALL
                 SELECT 'snapshot ' || name FROM snapshots WHERE rootfs = ?1
                 UNION ALL
                 SELECT 'template ' || name FROM templates WHERE rootfs = ?1",
            )?;
            let rows = stmt.query_map(params![rootfs], |r| r.get::<_, String>(0))?;
            rows.collect()
        })
    }

    /// Every root file system a sandbox, snapshot or template uses.
    pub fn rootfs_in_use(&self) -> Result<Vec<PathBuf>, CoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT rootfs FROM sandboxes UNION SELECT rootfs FROM snapshots
                 UNION SELECT rootfs FROM templates",
            )?;
            let rows = stmt.query_map([], |r| Ok(PathBuf::from(r.get::<_, String>(0)?)))?;
            rows.collect()
        })
    }

    /// Records a create from template `name`.
    pub fn touch_template(&self, name: &str) -> Result<(), CoreError> {
        self.write(|c| {
            c.execute(
                "UPDATE templates SET last_used_at = ?2 WHERE name = ?1",
                params![name, now_ms()],
            )
        })?;
        Ok(())
    }

    /// Forgets template `name`.
    pub fn remove_template(&self, name: &str) -> Result<(), CoreError> {
        self.write(|c| c.execute("DELETE FROM templates WHERE name = ?1", params![name]))?;
        Ok(())
    }

    /// The history of a removed sandbox (most recent first).
    pub fn history(&self, key: &str) -> Result<Vec<HistoryRecord>, CoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT id, name, ended_at, reason FROM history WHERE id = ?1 OR name = ?1 ORDER BY ended_at DESC",
            )?;
            let rows = stmt.query_map(params![key], |r| {
                Ok(HistoryRecord {
                    id: parse_id(r.get::<_, String>(0)?)?,
                    name: r.get(1)?,
                    ended_at_ms: r.get(2)?,
                    reason: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }
}

fn parse_id(s: String) -> rusqlite::Result<SandboxId> {
    s.parse().map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn snapshot_from_row(r: &Row<'_>) -> rusqlite::Result<SnapshotRecord> {
    Ok(SnapshotRecord {
        name: r.get("name")?,
        parent: r.get("parent")?,
        source_sandbox: r.get("source_sandbox")?,
        dir: PathBuf::from(r.get::<_, String>("dir")?),
        size_bytes: r.get::<_, i64>("size_bytes")? as u64,
        memory_mib: r.get("memory_mib")?,
        vcpus: r.get("vcpus")?,
        kernel: PathBuf::from(r.get::<_, String>("kernel")?),
        rootfs: PathBuf::from(r.get::<_, String>("rootfs")?),
        created_at_ms: r.get("created_at")?,
        backend: r.get("backend")?,
        network: network_from(r.get("network")?),
    })
}

/// A network spec as its column holds it.
fn network_json(spec: Option<&petty_net::NetworkSpec>) -> Option<String> {
    spec.map(|s| serde_json::to_string(s).expect("a network spec serializes"))
}

/// A network column's spec; one this release cannot read counts as none.
fn network_from(text: Option<String>) -> Option<petty_net::NetworkSpec> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

fn template_from_row(r: &Row<'_>) -> rusqlite::Result<TemplateRecord> {
    Ok(TemplateRecord {
        name: r.get("name")?,
        source: r.get("source")?,
        rootfs: PathBuf::from(r.get::<_, String>("rootfs")?),
        digest: r.get("digest")?,
        // Defaults this release cannot read count as none.
        defaults: serde_json::from_str(&r.get::<_, String>("defaults")?).unwrap_or_default(),
        size_bytes: r.get::<_, i64>("size_bytes")? as u64,
        created_at_ms: r.get("created_at")?,
        last_used_ms: r.get("last_used_at")?,
    })
}

fn from_row(r: &Row<'_>) -> rusqlite::Result<SandboxRecord> {
    let state: String = r.get("state")?;
    let ms = |v: Option<i64>| v.map(|v| Duration::from_millis(v.max(0) as u64));
    Ok(SandboxRecord {
        id: parse_id(r.get("id")?)?,
        name: r.get("name")?,
        state: SandboxState::parse(&state).unwrap_or(SandboxState::Failed),
        memory_mib: r.get("memory_mib")?,
        vcpus: r.get("vcpus")?,
        kernel: PathBuf::from(r.get::<_, String>("kernel")?),
        rootfs: PathBuf::from(r.get::<_, String>("rootfs")?),
        backend: r.get("backend")?,
        vmm_pid: r.get("vmm_pid")?,
        run_dir: r.get::<_, Option<String>>("run_dir")?.map(PathBuf::from),
        owner_pid: r.get("owner_pid")?,
        pooled: r.get("pooled")?,
        created_at_ms: r.get("created_at")?,
        updated_at_ms: r.get("updated_at")?,
        last_used_ms: r.get("last_used_at")?,
        ttl: ms(r.get("ttl_ms")?),
        idle_timeout: ms(r.get("idle_ms")?),
        reason: r.get("reason")?,
        from_snapshot: r.get("from_snapshot")?,
        disk_size_mib: r.get("disk_size_mib")?,
        owner: r.get("owner")?,
        bound_to_owner: r.get("bound_to_owner")?,
        network: network_from(r.get("network")?),
        start_kind: StartKind::parse(&r.get::<_, String>("start_kind")?),
        startup_ms: r
            .get::<_, Option<i64>>("startup_ms")?
            .map(|v| v.max(0) as u64),
        execs: r.get::<_, i64>("execs")?.max(0) as u64,
        exec_us: r.get::<_, i64>("exec_us")?.max(0) as u64,
        // A value this release does not know: the manager's default.
        on_idle: r
            .get::<_, Option<String>>("on_idle")?
            .and_then(|v| v.parse().ok()),
        // Likewise: destroyed, as a TTL always did.
        on_expiry: r
            .get::<_, Option<String>>("on_expiry")?
            .and_then(|v| v.parse().ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SandboxRecord {
        let now = now_ms();
        SandboxRecord {
            id: SandboxId::new(),
            name: name.into(),
            state: SandboxState::Creating,
            memory_mib: 256,
            vcpus: 2,
            kernel: "/k".into(),
            rootfs: "/r".into(),
            backend: "qemu".into(),
            vmm_pid: None,
            run_dir: None,
            owner_pid: std::process::id(),
            pooled: false,
            created_at_ms: now,
            updated_at_ms: now,
            last_used_ms: now,
            ttl: Some(Duration::from_secs(2)),
            idle_timeout: None,
            on_idle: None,
            on_expiry: None,
            reason: None,
            from_snapshot: None,
            disk_size_mib: Some(2048),
            owner: "rest".into(),
            bound_to_owner: true,
            network: None,
            start_kind: StartKind::Cold,
            startup_ms: None,
            execs: 0,
            exec_us: 0,
        }
    }

    #[test]
    fn transitions_are_checked_against_the_state_machine_as_they_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("petty.db")).unwrap();
        let r = record("moving");
        s.insert(&r, None).unwrap();
        assert_eq!(
            s.transition(r.id, SandboxState::Ready, None, false)
                .unwrap(),
            None
        );
        // Ready cannot become stopped without stopping first: refused, with
        // the state it is in.
        assert_eq!(
            s.transition(r.id, SandboxState::Stopped, Some("x"), false)
                .unwrap(),
            Some(Some(SandboxState::Ready))
        );
        let before = s.get("moving").unwrap().unwrap().last_used_ms;
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(
            s.transition(r.id, SandboxState::Paused, None, false)
                .unwrap(),
            None
        );
        assert_eq!(s.get("moving").unwrap().unwrap().last_used_ms, before);
        assert_eq!(
            s.transition(r.id, SandboxState::Ready, None, true).unwrap(),
            None
        );
        assert!(s.get("moving").unwrap().unwrap().last_used_ms > before);
        assert_eq!(
            s.transition(SandboxId::new(), SandboxState::Ready, None, false)
                .unwrap(),
            Some(None)
        );
    }

    #[test]
    fn a_claim_moves_only_a_row_unchanged_since_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("petty.db")).unwrap();
        let r = record("claimed");
        s.insert(&r, None).unwrap();
        s.set_state(r.id, SandboxState::Ready, None).unwrap();
        let seen = s.get("claimed").unwrap().unwrap();
        // Used since it was read: not claimed.
        std::thread::sleep(Duration::from_millis(2));
        s.touch(r.id).unwrap();
        assert!(!s.claim(&seen, SandboxState::Stopping, "idle").unwrap());
        // Paused since it was read: not claimed.
        let seen = s.get("claimed").unwrap().unwrap();
        s.set_state(r.id, SandboxState::Paused, None).unwrap();
        assert!(!s.claim(&seen, SandboxState::Stopping, "idle").unwrap());
        // As read: claimed, once.
        let seen = s.get("claimed").unwrap().unwrap();
        assert!(s.claim(&seen, SandboxState::Stopping, "idle").unwrap());
        assert!(!s.claim(&seen, SandboxState::Stopping, "idle").unwrap());
        assert_eq!(
            s.get("claimed").unwrap().unwrap().state,
            SandboxState::Stopping
        );
    }

    #[test]
    fn rows_survive_reopening_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petty.db");
        let r = record("alpha");
        {
            let s = Store::open(&path).unwrap();
            s.insert(&r, None).unwrap();
            s.set_vm(r.id, 42, Path::new("/run/x"), 90).unwrap();
            s.set_state(r.id, SandboxState::Ready, None).unwrap();
        }
        let s = Store::open(&path).unwrap();
        let got = s.get("alpha").unwrap().unwrap();
        assert_eq!(
            (got.id, got.vmm_pid, got.state),
            (r.id, Some(42), SandboxState::Ready)
        );
        assert_eq!(got.ttl, Some(Duration::from_secs(2)));
        assert_eq!(got.disk_size_mib, Some(2048));
        assert_eq!((got.owner.as_str(), got.bound_to_owner), ("rest", true));
        assert_eq!(got.expires_at_ms(), Some(got.created_at_ms + 2000));
        s.set_limits(r.id, None, Some(Duration::from_secs(5)))
            .unwrap();
        let got = s.get("alpha").unwrap().unwrap();
        assert_eq!(
            (got.ttl, got.idle_timeout),
            (None, Some(Duration::from_secs(5)))
        );
        assert_eq!(got.expires_at_ms(), Some(got.last_used_ms + 5000));
        s.set_limits(r.id, Some(Duration::from_secs(2)), None)
            .unwrap();
        assert_eq!(s.get(&r.id.to_string()).unwrap().unwrap().name, "alpha");
        assert_eq!(s.count_with_vm().unwrap(), 1);
    }

    #[test]
    fn a_database_from_before_new_columns_gains_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petty.db");
        let r = record("old");
        {
            // The first released schema: no from_snapshot, no disk_size_mib.
            let c = Connection::open(&path).unwrap();
            let first = SCHEMA.split("CREATE TABLE IF NOT EXISTS history").next();
            c.execute_batch(first.unwrap()).unwrap();
            c.execute(
                "INSERT INTO sandboxes (id, name, state, memory_mib, vcpus, kernel, rootfs,
                    backend, owner_pid, created_at, updated_at, last_used_at)
                 VALUES (?1, 'old', 'ready', 256, 2, '/k', '/r', 'qemu', 1, 0, 0, 0)",
                params![r.id.to_string()],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let got = s.get("old").unwrap().unwrap();
        assert_eq!((got.from_snapshot, got.disk_size_mib), (None, None));
        s.insert(&record("new"), None).unwrap();
        assert_eq!(s.get("new").unwrap().unwrap().disk_size_mib, Some(2048));
        // Opening again finds the columns there and adds nothing.
        drop(s);
        Store::open(&path).unwrap();
    }

    #[test]
    fn a_database_with_the_dropped_agent_socket_column_loses_it_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petty.db");
        let r = record("old");
        {
            // The schema before the column was dropped, with a row using it.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute_batch("ALTER TABLE sandboxes ADD COLUMN agent_socket TEXT")
                .unwrap();
            c.execute(
                "INSERT INTO sandboxes (id, name, state, memory_mib, vcpus, kernel, rootfs,
                    backend, owner_pid, created_at, updated_at, last_used_at, run_dir,
                    agent_socket)
                 VALUES (?1, 'old', 'ready', 256, 2, '/k', '/r', 'qemu', 1, 0, 0, 0,
                    '/run/x', '/run/x/agent.sock')",
                params![r.id.to_string()],
            )
            .unwrap();
        }
        let s = Store::open(&path).unwrap();
        let got = s.get("old").unwrap().unwrap();
        assert_eq!((got.id, got.run_dir), (r.id, Some(PathBuf::from("/run/x"))));
        let c = Connection::open(&path).unwrap();
        assert!(!has_column(&c, "sandboxes", "agent_socket").unwrap());
        s.insert(&record("new"), None).unwrap();
        drop(s);
        Store::open(&path).unwrap();
    }

    #[test]
    fn duplicate_names_are_refused_and_removal_keeps_history() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("petty.db")).unwrap();
        let a = record("same");
        s.insert(&a, None).unwrap();
        match s.insert(&record("same"), None) {
            Err(CoreError::NameTaken(n)) => assert_eq!(n, "same"),
            other => panic!("{other:?}"),
        }
        s.remove(a.id, "ttl expired").unwrap();
        assert!(s.get("same").unwrap().is_none());
        let h = s.history("same").unwrap();
        assert_eq!((h.len(), h[0].reason.as_str()), (1, "ttl expired"));
        s.insert(&record("same"), None).unwrap();
    }

    #[test]
    fn a_read_does_not_wait_for_a_write_transaction_in_this_process() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(Store::open(&dir.path().join("petty.db")).unwrap());
        let r = record("alpha");
        s.insert(&r, None).unwrap();
        // The writer, mid-transaction with a write not committed (as a
        // create's insert or a removal holds it).
        let mut w = s.writer.lock().unwrap();
        let tx = w
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "UPDATE sandboxes SET state = 'ready' WHERE id = ?1",
            [r.id.to_string()],
        )
        .unwrap();
        let (sent, seen) = std::sync::mpsc::channel();
        let reader = {
            let s = s.clone();
            std::thread::spawn(move || {
                let _ = sent.send((s.get("alpha"), s.list(), s.count_with_vm()));
            })
        };
        // The bound only keeps a broken build from hanging: a read that
        // needed the writer would wait for this commit forever.
        let seen = seen.recv_timeout(Duration::from_secs(60));
        tx.commit().unwrap();
        drop(w);
        let (one, all, n) = seen.expect("a read waited for the writer's transaction");
        reader.join().unwrap();
        // What was committed before the transaction, not what it wrote.
        assert_eq!(one.unwrap().unwrap().state, SandboxState::Creating);
        assert_eq!(all.unwrap().len(), 1);
        assert_eq!(n.unwrap(), 1);
        // And the commit, at once.
        assert_eq!(s.get("alpha").unwrap().unwrap().state, SandboxState::Ready);
    }

    #[test]
    fn readers_see_every_commit_at_once_and_never_an_uncommitted_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("petty.db");
        let s = Store::open(&path).unwrap();
        let r = record("beta");
        s.insert(&r, None).unwrap();
        let state = || s.get("beta").unwrap().unwrap().state;
        assert_eq!(state(), SandboxState::Creating);
        // This store's own writes.
        s.set_state(r.id, SandboxState::Ready, None).unwrap();
        assert_eq!(state(), SandboxState::Ready);
        // Another process's: its own connection, a transaction held open.
        let mut other = Connection::open(&path).unwrap();
        let tx = other
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        tx.execute(
            "UPDATE sandboxes SET state = 'stopped' WHERE id = ?1",
            [r.id.to_string()],
        )
        .unwrap();
        assert_eq!(state(), SandboxState::Ready);
        assert_eq!(s.count_with_vm().unwrap(), 1);
        tx.commit().unwrap();
        // The readers used above (kept idle in the pool) hold no old view.
        assert_eq!(state(), SandboxState::Stopped);
        assert_eq!(s.count_with_vm().unwrap(), 0);
        s.remove(r.id, "gone").unwrap();
        assert!(s.get("beta").unwrap().is_none());
        assert_eq!(s.history("beta").unwrap()[0].reason, "gone");
    }

    #[test]
    fn readers_cannot_write() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("petty.db")).unwrap();
        s.insert(&record("gamma"), None).unwrap();
        let wrote = s.read(|c| c.execute("DELETE FROM sandboxes", []));
        assert!(
            matches!(&wrote, Err(CoreError::Store { source, .. })
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)),
            "{wrote:?}"
        );
        assert!(s.get("gamma").unwrap().is_some());
    }

    #[test]
    fn many_reads_at_once_all_answer_and_few_readers_stay_open() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("petty.db")).unwrap();
        let r = record("delta");
        s.insert(&r, None).unwrap();
        let before = s.stats();
        std::thread::scope(|scope| {
            for _ in 0..16 {
                scope.spawn(|| {
                    for _ in 0..20 {
                        assert_eq!(s.get("delta").unwrap().unwrap().id, r.id);
                        s.touch(r.id).unwrap();
                    }
                });
            }
        });
        assert!(s.idle_readers().len() <= s.max_idle_readers);
        let after = s.stats();
        assert_eq!(
            (after.reads - before.reads, after.writes - before.writes),
            (320, 320)
        );
    }

    #[test]
    fn stats_count_each_call_to_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("petty.db")).unwrap();
        assert_eq!(s.stats(), StoreStats::default());
        let r = record("eps");
        s.insert(&r, Some(10)).unwrap();
        assert_eq!(
            s.stats(),
            StoreStats {
                reads: 0,
                writes: 1
            }
        );
        s.get("eps").unwrap();
        s.list().unwrap();
        assert_eq!(
            s.stats(),
            StoreStats {
                reads: 2,
                writes: 1
            }
        );
        s.touch(r.id).unwrap();
        s.remove(r.id, "done").unwrap();
        assert_eq!(
            s.stats(),
            StoreStats {
                reads: 2,
                writes: 3
            }
        );
    }
}
