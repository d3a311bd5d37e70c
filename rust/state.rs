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
//! database, or is corrupt, is deleted and rebuilt — never trusted.

use crate::error::{Error, Result};
use rusqlite::{params, Connection, OpenFlags};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
/// `~/.cache/hashsync`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("HASHSYNC_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("hashsync");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("hashsync")
}

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::State(format!("{}: {e}", path.display()))
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
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(FILE_NAME);
        match Self::try_open(&path) {
            Ok(s) => Ok(s),
            Err(_) => {
                // Corrupt, truncated or foreign: throw it away and start over.
                for suffix in ["", "-wal", "-shm"] {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    let _ = std::fs::remove_file(PathBuf::from(p));
                }
                let mut s = Self::try_open(&path)?;
                s.rebuilt = true;
                Ok(s)
            }
        }
    }

    fn try_open(path: &Path) -> Result<Self> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(|e| db_err(path, e))?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| db_err(path, e))?;
        let app: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(|e| db_err(path, e))?;
        let version: i32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| db_err(path, e))?;
        let fresh = app == 0 && version == 0 && {
            let n: i64 = conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| db_err(path, e))?;
            n == 0
        };
        if fresh {
            conn.execute_batch(&format!(
                "PRAGMA journal_mode=WAL;
                 PRAGMA application_id={APPLICATION_ID};
                 PRAGMA user_version={SCHEMA_VERSION};
                 CREATE TABLE IF NOT EXISTS digests(
                    dev INTEGER NOT NULL, ino INTEGER NOT NULL,
                    algorithm TEXT NOT NULL, part_size INTEGER NOT NULL,
                    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
                    digest TEXT NOT NULL, recorded_ns INTEGER NOT NULL,
                    PRIMARY KEY (dev, ino, algorithm, part_size)) WITHOUT ROWID;"
            ))
            .map_err(|e| db_err(path, e))?;
        } else if app != APPLICATION_ID || version != SCHEMA_VERSION {
            return Err(Error::State(format!(
                "{}: not a hashsync state database",
                path.display()
            )));
        } else {
            // Touch every page of the table's B-tree root so a truncated file fails here.
            conn.query_row("PRAGMA quick_check(1)", [], |r| r.get::<_, String>(0))
                .map_err(|e| db_err(path, e))
                .and_then(|s| {
                    if s == "ok" {
                        Ok(())
                    } else {
                        Err(Error::State(format!("{}: corrupt: {s}", path.display())))
                    }
                })?;
        }
        conn.execute_batch("PRAGMA synchronous=NORMAL;")
            .map_err(|e| db_err(path, e))?;
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
        let tx = self.conn.transaction().map_err(|e| db_err(&path, e))?;
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
