//! The hash state cache: digests remembered on disk so an unchanged file is never read twice.
//!
//! A digest is keyed on the file's identity (device, inode) plus algorithm and part size, and
//! is valid only while size, mtime and ctime are all unchanged; ctime catches an edit whose
//! mtime was put back with `os.utime`, because the kernel sets ctime on every write and utime.
//!
//! Racy timestamps are handled as git does: a digest is trusted only if the file's mtime and
//! ctime are safely (by [`RACY_NS`]) older than the moment hashing began. A file written in the
//! same clock tick as it was hashed could change again without its timestamps moving, so such
//! a file is re-hashed on the next scan.
//!
//! Storage is SQLite in WAL mode, so several processes can scan at once: readers never block,
//! writers queue on SQLite's lock (with a busy timeout). A file that is not a hashsync state
//! database, or is corrupt, is deleted and rebuilt — never trusted. A location that cannot be
//! written (read-only, immutable, not a directory) is left alone: opening fails, and the
//! scanner then hashes without the cache.

use crate::error::{strerror, Error, Result};
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior, MAIN_DB};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Safety margin for racy timestamps: coarse file systems (FAT, some network mounts) have
/// 2-second mtimes, and the kernel's file-time clock lags the wall clock by a tick.
pub const RACY_NS: i64 = 2_000_000_000;
/// Marks the database as ours (`PRAGMA application_id`): "hsyn".
const APPLICATION_ID: i32 = 0x6873_796e;
const SCHEMA_VERSION: i32 = 1;
const FILE_NAME: &str = "hash-state.sqlite3";

/// What identifies a version of a file's content without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

/// The default state directory: `$HASHSYNC_CACHE_DIR`, else `$XDG_CACHE_HOME/hashsync`, else
/// the platform's cache directory: `~/Library/Caches/hashsync` on macOS (which Time Machine
/// leaves out, unlike `~/.cache`), `~/.cache/hashsync` elsewhere.
pub fn default_cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name), cfg!(target_os = "macos"))
}

/// [`default_cache_dir`] from an environment lookup, for one platform (tested for both).
fn cache_dir_from(env: impl Fn(&str) -> Option<std::ffi::OsString>, macos: bool) -> PathBuf {
    if let Some(d) = env("HASHSYNC_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = env("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hashsync");
    }
    let home = env("HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    if macos {
        home.join("Library").join("Caches").join("hashsync")
    } else {
        home.join(".cache").join("hashsync")
    }
}

/// Why a scan ran without the hash state cache it was asked to use. The digests are right
/// regardless: what the cache would have vouched for was hashed instead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateUnavailable {
    /// The state directory, as configured.
    pub location: PathBuf,
    pub reason: String,
}

impl StateUnavailable {
    pub fn new(location: &Path, e: &Error) -> Self {
        let reason = match e {
            Error::Io { path, source } if path == location => strerror(source),
            Error::Io { path, source } => format!("{}: {}", path.display(), strerror(source)),
            Error::State(msg) => msg.clone(),
            other => other.to_string(),
        };
        StateUnavailable {
            location: location.to_path_buf(),
            reason,
        }
    }
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::State(format!("{}: {e}", path.display()))
}

/// How long an opener waits for other processes to finish creating, converting or rebuilding
/// the database before giving up on the cache.
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// Why [`StateStore::try_open`] failed, which decides what [`StateStore::open`] does next.
enum OpenError {
    /// Another process holds a lock SQLite does not wait for by itself (a journal mode change
    /// or WAL recovery under way): try again shortly.
    Busy(Error),
    /// Not a hashsync state database, or corrupt: safe to throw away.
    Bad(Error),
    /// SQLite could not open or create the file; the caller looks for the OS reason.
    CannotOpen(Error),
    /// The file is there but cannot be used (read-only, disk full, I/O errors): leave it
    /// alone, since deleting a database we merely cannot write would lose it for those who can.
    Unusable(Error),
}

impl OpenError {
    fn classify(path: &Path, e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let code = e.sqlite_error_code();
        let err = db_err(path, e);
        match code {
            // SQLITE_PROTOCOL: WAL locks changed hands too often while we tried to read.
            Some(C::DatabaseBusy | C::DatabaseLocked | C::FileLockingProtocolFailed) => {
                OpenError::Busy(err)
            }
            Some(C::DatabaseCorrupt | C::NotADatabase) => OpenError::Bad(err),
            Some(C::CannotOpen) => OpenError::CannotOpen(err),
            _ => OpenError::Unusable(err),
        }
    }

    fn into_error(self) -> Error {
        match self {
            OpenError::Busy(e)
            | OpenError::Bad(e)
            | OpenError::CannotOpen(e)
            | OpenError::Unusable(e) => e,
        }
    }
}

/// What a database holds, as far as opening it is concerned.
#[derive(PartialEq, Eq)]
enum Found {
    Ready,
    /// Empty, or left half-made: by a process killed while creating it, or by hashsync 0.1.0,
    /// which set the header fields and created the table in separate transactions.
    Unfinished,
    Foreign,
}

fn inspect(conn: &Connection) -> rusqlite::Result<Found> {
    let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i32 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let (ours, others): (i64, i64) = conn.query_row(
        "SELECT coalesce(sum(type = 'table' AND name = 'digests'), 0),
                coalesce(sum(NOT (type = 'table' AND name = 'digests')), 0)
         FROM sqlite_master",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(
        if app == APPLICATION_ID && version == SCHEMA_VERSION && ours == 1 {
            Found::Ready
        } else if [0, APPLICATION_ID].contains(&app)
            && [0, SCHEMA_VERSION].contains(&version)
            && others == 0
        {
            Found::Unfinished
        } else {
            Found::Foreign
        },
    )
}

/// Why files cannot be created in `dir`, if that is the problem; SQLite only says "unable to
/// open database file".
fn why_not_writable(dir: &Path) -> Option<Error> {
    let probe = dir.join(format!(".{FILE_NAME}-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
    {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            None
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => None,
        Err(e) => Some(Error::io(dir, e)),
    }
}

/// An open state database.
pub struct StateStore {
    conn: Connection,
    path: PathBuf,
    /// Set when a corrupt or foreign file was found and replaced.
    pub rebuilt: bool,
}

impl StateStore {
    /// Opens (creating if needed) the state database in `dir`.
    ///
    /// Safe when several processes open a new or broken database at once: creation happens in
    /// one write transaction, so nobody sees a half-made schema, and only one process at a
    /// time replaces a broken file, so none deletes another's fresh replacement.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        let explain = |e: OpenError| match e {
            OpenError::CannotOpen(e) => why_not_writable(dir).unwrap_or(e),
            e => e.into_error(),
        };
        match Self::open_waiting(&path) {
            Ok(s) => return Ok(s),
            Err(OpenError::Bad(_)) => {}
            Err(e) => return Err(explain(e)),
        }
        let lock_path = dir.join(format!("{FILE_NAME}.lock"));
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        lock.lock().map_err(|e| Error::io(&lock_path, e))?;
        // Whoever held the lock before us may have replaced the file already.
        match Self::open_waiting(&path) {
            Ok(s) => return Ok(s),
            Err(OpenError::Bad(_)) => {}
            Err(e) => return Err(explain(e)),
        }
        // The database goes last: an opener that comes in between then finds the old file
        // without its journal (and waits on the lock above), never a new file with an old
        // journal that SQLite would replay into it.
        for suffix in ["-wal", "-shm", ""] {
            let mut p = path.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(PathBuf::from(p));
        }
        let mut s = Self::open_waiting(&path).map_err(explain)?;
        s.rebuilt = true;
        Ok(s)
    }

    fn open_waiting(path: &Path) -> std::result::Result<Self, OpenError> {
        let deadline = Instant::now() + BUSY_WAIT;
        let mut pause = Duration::from_millis(2);
        loop {
            match Self::try_open(path) {
                Err(OpenError::Busy(_)) if Instant::now() < deadline => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => return other,
            }
        }
    }

    fn try_open(path: &Path) -> std::result::Result<Self, OpenError> {
        let err = |e| OpenError::classify(path, e);
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let mut conn = Connection::open_with_flags(path, flags).map_err(err)?;
        conn.busy_timeout(BUSY_WAIT).map_err(err)?;
        // SQLite falls back to read-only when it cannot open the file for writing (an
        // immutable file, say); every record would then fail.
        if conn.is_readonly(MAIN_DB).map_err(err)? {
            return Err(OpenError::Unusable(Error::State(format!(
                "{}: the database file is read-only",
                path.display()
            ))));
        }
        // Outside any transaction: the journal mode cannot change inside one. WAL lets
        // readers run while another process writes.
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get::<_, String>(0))
            .map_err(err)?;
        match inspect(&conn).map_err(err)? {
            Found::Ready => {
                // Reads every page, so a truncated or damaged file fails here, not mid-scan.
                let s: String = conn
                    .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
                    .map_err(err)?;
                if s != "ok" {
                    return Err(OpenError::Bad(Error::State(format!(
                        "{}: corrupt: {s}",
                        path.display()
                    ))));
                }
            }
            Found::Unfinished | Found::Foreign => {
                // Decide again holding the write lock, which another creator may have held a
                // moment ago: what we saw may be finished by now.
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(err)?;
                match inspect(&tx).map_err(err)? {
                    Found::Ready => {}
                    Found::Unfinished => tx
                        .execute_batch(&format!(
                            "CREATE TABLE IF NOT EXISTS digests(
                                dev INTEGER NOT NULL, ino INTEGER NOT NULL,
                                algorithm TEXT NOT NULL, part_size INTEGER NOT NULL,
                                size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
                                ctime_ns INTEGER NOT NULL,
                                digest TEXT NOT NULL, recorded_ns INTEGER NOT NULL,
                                PRIMARY KEY (dev, ino, algorithm, part_size)) WITHOUT ROWID;
                             PRAGMA application_id={APPLICATION_ID};
                             PRAGMA user_version={SCHEMA_VERSION};"
                        ))
                        .map_err(err)?,
                    Found::Foreign => {
                        return Err(OpenError::Bad(Error::State(format!(
                            "{}: not a hashsync state database",
                            path.display()
                        ))))
                    }
                }
                tx.commit().map_err(err)?;
            }
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(err)?;
        Ok(StateStore {
            conn,
            path: path.to_path_buf(),
            rebuilt: false,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks up every key; `None` where there is no trustworthy digest.
    pub fn lookup(
        &mut self,
        keys: &[FileKey],
        algorithm: &str,
        part_size: u64,
    ) -> Result<Vec<Option<String>>> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| db_err(&path, e))?;
        let mut out = Vec::with_capacity(keys.len());
        {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT size, mtime_ns, ctime_ns, digest, recorded_ns FROM digests
                     WHERE dev=?1 AND ino=?2 AND algorithm=?3 AND part_size=?4",
                )
                .map_err(|e| db_err(&path, e))?;
            for k in keys {
                let row = stmt.query_row(
                    params![k.dev as i64, k.ino as i64, algorithm, part_size as i64],
                    |r| {
                        Ok((
                            r.get::<_, i64>(0)?,
                            r.get::<_, i64>(1)?,
                            r.get::<_, i64>(2)?,
                            r.get::<_, String>(3)?,
                            r.get::<_, i64>(4)?,
                        ))
                    },
                );
                out.push(match row {
                    Ok((size, mtime, ctime, digest, recorded)) => {
                        let same =
                            size as u64 == k.size && mtime == k.mtime_ns && ctime == k.ctime_ns;
                        let settled = mtime < recorded - RACY_NS && ctime < recorded - RACY_NS;
                        (same && settled).then_some(digest)
                    }
                    Err(rusqlite::Error::QueryReturnedNoRows) => None,
                    Err(e) => return Err(db_err(&path, e)),
                });
            }
        }
        tx.commit().map_err(|e| db_err(&path, e))?;
        Ok(out)
    }

    /// Records digests computed from reads that began at `recorded_ns` (wall clock, ns).
    pub fn record(
        &mut self,
        items: &[(FileKey, String)],
        algorithm: &str,
        part_size: u64,
        recorded_ns: i64,
    ) -> Result<()> {
        let path = self.path.clone();
        // Take the write lock up front: a read that turns into a write mid-transaction fails at
        // once, without waiting, if another process wrote in between.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| db_err(&path, e))?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO digests
                     (dev, ino, algorithm, part_size, size, mtime_ns, ctime_ns, digest, recorded_ns)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                )
                .map_err(|e| db_err(&path, e))?;
            for (k, d) in items {
                stmt.execute(params![
                    k.dev as i64,
                    k.ino as i64,
                    algorithm,
                    part_size as i64,
                    k.size as i64,
                    k.mtime_ns,
                    k.ctime_ns,
                    d,
                    recorded_ns
                ])
                .map_err(|e| db_err(&path, e))?;
            }
        }
        tx.commit().map_err(|e| db_err(&path, e))
    }
}

/// Nanoseconds since the Unix epoch, on the same clock as file timestamps.
pub fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {

    #[test]
    fn cache_dir_follows_the_variables_then_the_platform() {
        use std::ffi::OsString;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let home = &[("HOME", "/home/u")];
        assert_eq!(
            cache_dir_from(env(home), false),
            PathBuf::from("/home/u/.cache/hashsync")
        );
        assert_eq!(
            cache_dir_from(env(home), true),
            PathBuf::from("/home/u/Library/Caches/hashsync")
        );
        let xdg = &[("HOME", "/home/u"), ("XDG_CACHE_HOME", "/x")];
        assert_eq!(cache_dir_from(env(xdg), true), PathBuf::from("/x/hashsync"));
        let own = &[
            ("HOME", "/home/u"),
            ("XDG_CACHE_HOME", "/x"),
            ("HASHSYNC_CACHE_DIR", "/h"),
        ];
        assert_eq!(cache_dir_from(env(own), true), PathBuf::from("/h"));
    }

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hashsync-state-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    const K: FileKey = FileKey {
        dev: 1,
        ino: 2,
        size: 3,
        mtime_ns: 1_000,
        ctime_ns: 1_000,
    };

    #[test]
    fn remembers_and_respects_racy_window() {
        let d = dir("racy");
        let mut s = StateStore::open(&d).unwrap();
        assert!(!s.rebuilt);
        s.record(&[(K, "abc".into())], "md5", 0, 1_000 + RACY_NS + 1)
            .unwrap();
        assert_eq!(
            s.lookup(&[K], "md5", 0).unwrap(),
            vec![Some("abc".to_string())]
        );
        assert_eq!(s.lookup(&[K], "sha256", 0).unwrap(), vec![None]);
        let changed = FileKey {
            ctime_ns: 2_000,
            ..K
        };
        assert_eq!(s.lookup(&[changed], "md5", 0).unwrap(), vec![None]);
        // Recorded too soon after the last write: not trusted.
        s.record(&[(K, "abc".into())], "md5", 0, 1_000 + RACY_NS)
            .unwrap();
        assert_eq!(s.lookup(&[K], "md5", 0).unwrap(), vec![None]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn half_made_database_is_finished_in_place() {
        // What hashsync 0.1.0 left when a second process looked between its statements, or
        // when it was killed there: header fields set, no table yet.
        let d = dir("half");
        std::fs::create_dir_all(&d).unwrap();
        let c = Connection::open(d.join(FILE_NAME)).unwrap();
        c.execute_batch(&format!(
            "PRAGMA journal_mode=WAL; PRAGMA application_id={APPLICATION_ID};"
        ))
        .unwrap();
        let mut s = StateStore::open(&d).unwrap();
        assert!(!s.rebuilt);
        s.record(&[(K, "abc".into())], "md5", 0, i64::MAX / 2)
            .unwrap();
        // The other process's connection still works on the same file.
        let n: i64 = c
            .query_row("SELECT count(*) FROM digests", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 1);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn many_open_a_new_database_at_once() {
        for round in 0..20 {
            let d = dir(&format!("many-{round}"));
            let go = std::sync::Barrier::new(8);
            std::thread::scope(|t| {
                let runs: Vec<_> = (0..8)
                    .map(|_| {
                        t.spawn(|| {
                            go.wait();
                            let mut s = StateStore::open(&d)?;
                            s.lookup(&[K], "md5", 0)?;
                            s.record(&[(K, "abc".into())], "md5", 0, i64::MAX / 2)?;
                            Ok::<_, Error>(s.rebuilt)
                        })
                    })
                    .collect();
                for r in runs {
                    assert!(!r.join().unwrap().unwrap(), "nothing was broken to rebuild");
                }
            });
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn unwritable_location_is_left_alone() {
        let d = dir("blocked");
        std::fs::write(&d, b"a file where a directory should be").unwrap();
        assert!(matches!(
            StateStore::open(&d.join("state")),
            Err(Error::Io { .. })
        ));
        assert_eq!(
            std::fs::read(&d).unwrap(),
            b"a file where a directory should be"
        );
        std::fs::remove_file(d).unwrap();
    }

    #[test]
    fn foreign_or_corrupt_file_is_rebuilt() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(FILE_NAME), b"{\"not\": \"sqlite\"}").unwrap();
        let mut s = StateStore::open(&d).unwrap();
        assert!(s.rebuilt);
        s.record(&[(K, "abc".into())], "md5", 0, i64::MAX / 2)
            .unwrap();
        drop(s);
        let s = StateStore::open(&d).unwrap();
        assert!(!s.rebuilt);
        std::fs::remove_dir_all(d).unwrap();
    }
}
