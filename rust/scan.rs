//! Parallel directory scanning with optional digests from the hash state cache.
//!
//! The walk recurses with rayon, one task per directory; regular files are stat'ed from their
//! directory entry (`lstat`), so a scan without digests reads no file content. With an
//! algorithm, digests are looked up in the [`StateStore`] and only the misses are hashed
//! (largest first, through [`engine::hash_files`]); the new digests are then recorded.

use crate::beneath::{self, Dir, Kind};
use crate::engine::{self, Control, HashOptions};
use crate::error::{strerror, Error, Result};
use crate::filter::Filter;
use crate::hash::{Algorithm, Hasher, PartRule};
use crate::listing::{Listing, ScanStats};
use crate::state::{now_ns, FileKey, StateStore, StateUnavailable};
use rayon::prelude::*;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Options of [`scan`].
#[derive(Clone, Debug)]
pub struct ScanOptions {
    /// Compute (or reuse) a digest per file with this algorithm.
    pub algorithm: Option<Algorithm>,
    pub rule: PartRule,
    pub filter: Filter,
    /// Follow symbolic links (with loop detection); by default they are skipped and counted.
    pub follow_symlinks: bool,
    pub threads: usize,
    /// Directory of the hash state cache; `None` disables it.
    pub state_dir: Option<PathBuf>,
    /// Scan only this subdirectory of the root (`/`-separated, relative); paths stay relative
    /// to the root. Empty: the whole root. One segment of a sharded sync.
    pub subdir: String,
    /// Descend into subdirectories; `false` lists only the files directly in the scanned
    /// directory.
    pub recursive: bool,
    /// Never read outside `root`, whatever is renamed or replaced while the scan runs: every
    /// directory is opened relative to its parent's descriptor without following links, and a
    /// file is hashed only if it is still the file (device, inode, size, mtime) the walk
    /// listed, opened the same way. For directories that others may write to (the hub).
    /// Incompatible with `follow_symlinks`.
    pub confined: bool,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            algorithm: None,
            rule: PartRule::default(),
            filter: Filter::default(),
            follow_symlinks: false,
            threads: engine::default_threads(),
            state_dir: None,
            subdir: String::new(),
            recursive: true,
            confined: false,
        }
    }
}

/// What hashsync's atomic writes put in the names of their temporary files
/// (`.NAME.hashsync-tmp-HOST-PID-RANDOM`, see `hashsync/atomic.py`).
pub const TEMPORARY_MARK: &str = ".hashsync-tmp-";
/// Ends the name of a key's lock file (`.NAME.hashsync-lock`).
pub const LOCK_SUFFIX: &str = ".hashsync-lock";

/// Which of hashsync's own files a name is, if any.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Internal {
    /// `.NAME.hashsync-tmp-HOST-PID-RANDOM` (an atomic write in flight, or a killed one's
    /// debris) or `.NAME.hashsync-tmp-partial-HEX16` (the hub client's resumable download).
    Temporary,
    /// `.NAME.hashsync-lock`, or `.NAME.hashsync-lock.broken-TOKEN16` (a lock being broken).
    Lock,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `name` (one path component) is exactly a name hashsync writes for itself.
///
/// Only the full patterns count, random parts included: `report.hashsync-tmp-v2.txt` or
/// `db.hashsync-lock` are a user's files and are synced like any other.
pub fn internal_name(name: &str) -> Option<Internal> {
    // Every internal name is ".STEM<marker>..." with a non-empty STEM.
    let body = name.strip_prefix('.')?;
    if let Some(at) = body.rfind(TEMPORARY_MARK) {
        let rest = &body[at + TEMPORARY_MARK.len()..];
        if at > 0 {
            if let Some(token) = rest.strip_prefix("partial-") {
                if is_hex(token, 16) {
                    return Some(Internal::Temporary);
                }
            }
            let mut parts = rest.splitn(3, '-');
            if let (Some(host), Some(pid), Some(random)) =
                (parts.next(), parts.next(), parts.next())
            {
                if is_hex(host, 8)
                    && !pid.is_empty()
                    && pid.len() <= 10
                    && pid.bytes().all(|b| b.is_ascii_digit())
                    && is_hex(random, 8)
                {
                    return Some(Internal::Temporary);
                }
            }
        }
    }
    if let Some(stem) = body.strip_suffix(LOCK_SUFFIX) {
        if !stem.is_empty() {
            return Some(Internal::Lock);
        }
    }
    if let Some(at) = body.rfind(".hashsync-lock.broken-") {
        let token = &body[at + ".hashsync-lock.broken-".len()..];
        if at > 0 && is_hex(token, 16) {
            return Some(Internal::Lock);
        }
    }
    None
}

struct RawFile {
    rel: String,
    key: FileKey,
}

#[derive(Default)]
struct WalkOut {
    files: Vec<RawFile>,
    errors: Vec<(String, String)>,
    empty_dirs: Vec<String>,
    temporaries: Vec<String>,
    symlinks: Vec<String>,
    dirs: u64,
    excluded: u64,
    internal: u64,
    special: u64,
}

impl WalkOut {
    fn merge(mut self, mut other: WalkOut) -> WalkOut {
        if self.files.len() < other.files.len() {
            std::mem::swap(&mut self.files, &mut other.files);
        }
        self.files.append(&mut other.files);
        self.errors.append(&mut other.errors);
        self.empty_dirs.append(&mut other.empty_dirs);
        self.temporaries.append(&mut other.temporaries);
        self.symlinks.append(&mut other.symlinks);
        self.dirs += other.dirs;
        self.excluded += other.excluded;
        self.internal += other.internal;
        self.special += other.special;
        self
    }
}

fn key_of(m: &Metadata) -> FileKey {
    FileKey {
        dev: m.dev(),
        ino: m.ino(),
        size: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    }
}

fn join_rel(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    }
}

/// Walks one directory and, in parallel, everything below it.
fn walk_dir(abs: &Path, rel: &str, ancestors: &[(u64, u64)], opts: &ScanOptions) -> WalkOut {
    let mut out = WalkOut {
        dirs: 1,
        ..Default::default()
    };
    let rd = match std::fs::read_dir(abs) {
        Ok(rd) => rd,
        // A subdirectory removed since its parent was read: like a vanished file, left out.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel != opts.subdir => {
            return WalkOut::default()
        }
        Err(e) => {
            out.errors.push((rel.to_string(), strerror(&e)));
            return out;
        }
    };
    // (absolute path, relative path, device/inode when following symlinks)
    type Subdir = (PathBuf, String, Option<(u64, u64)>);
    let mut subdirs: Vec<Subdir> = Vec::new();
    let mut seen_any = false;
    for ent in rd {
        let ent = match ent {
            Ok(e) => e,
            Err(e) => {
                out.errors.push((rel.to_string(), strerror(&e)));
                continue;
            }
        };
        seen_any = true;
        let name = ent.file_name();
        let Some(name) = name.to_str() else {
            let lossy = join_rel(rel, &name.to_string_lossy());
            out.errors
                .push((lossy, "file name is not valid UTF-8".to_string()));
            continue;
        };
        let child_rel = join_rel(rel, name);
        let child_abs = ent.path();
        let ft = match ent.file_type() {
            Ok(ft) => ft,
            Err(e) => {
                out.errors.push((child_rel, strerror(&e)));
                continue;
            }
        };
        if !ft.is_dir() {
            match internal_name(name) {
                // Never data: a download in flight, or the debris of a killed one.
                Some(Internal::Temporary) if ft.is_file() => {
                    out.temporaries.push(child_rel);
                    continue;
                }
                Some(_) => {
                    out.internal += 1;
                    continue;
                }
                None => {}
            }
        }
        let meta = if ft.is_symlink() {
            // Recorded either way: a skipped link is reported (its destination copy must not
            // look deletable); a followed one marks where later reads may pass through a link.
            if !opts.follow_symlinks {
                // A link to a file that the filters exclude would not be synced anyway.
                let excluded_file = std::fs::metadata(&child_abs).is_ok_and(|m| !m.is_dir())
                    && !opts.filter.is_included(&child_rel);
                if excluded_file {
                    out.excluded += 1;
                } else {
                    out.symlinks.push(child_rel);
                }
                continue;
            }
            out.symlinks.push(child_rel.clone());
            match std::fs::metadata(&child_abs) {
                Ok(m) => m,
                Err(e) => {
                    out.errors
                        .push((child_rel, format!("broken symbolic link: {}", strerror(&e))));
                    continue;
                }
            }
        } else if ft.is_dir() {
            let id = if opts.follow_symlinks {
                match ent.metadata() {
                    Ok(m) => Some((m.dev(), m.ino())),
                    Err(e) => {
                        out.errors.push((child_rel, strerror(&e)));
                        continue;
                    }
                }
            } else {
                None
            };
            subdirs.push((child_abs, child_rel, id));
            continue;
        } else if ft.is_file() {
            match ent.metadata() {
                Ok(m) => m,
                Err(e) => {
                    // Vanished between readdir and stat: not an error worth reporting.
                    if e.kind() != std::io::ErrorKind::NotFound {
                        out.errors.push((child_rel, strerror(&e)));
                    }
                    continue;
                }
            }
        } else {
            debug_assert!(
                ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device()
            );
            out.special += 1;
            continue;
        };
        // Here: a regular file, or whatever a followed symlink points to.
        if meta.is_dir() {
            let id = (meta.dev(), meta.ino());
            if ancestors.contains(&id) {
                out.errors
                    .push((child_rel, "symbolic link loop".to_string()));
            } else {
                subdirs.push((child_abs, child_rel, Some(id)));
            }
            continue;
        }
        if !meta.is_file() {
            out.special += 1;
            continue;
        }
        if !opts.filter.is_included(&child_rel) {
            out.excluded += 1;
            continue;
        }
        out.files.push(RawFile {
            rel: child_rel,
            key: key_of(&meta),
        });
    }
    if !seen_any && !rel.is_empty() {
        out.empty_dirs.push(rel.to_string());
    }
    if !opts.recursive {
        subdirs.clear();
    }
    let below = subdirs
        .into_par_iter()
        .map(|(abs, rel, id)| {
            let mut anc = ancestors.to_vec();
            anc.extend(id);
            walk_dir(&abs, &rel, &anc, opts)
        })
        .reduce(WalkOut::default, WalkOut::merge);
    out.merge(below)
}

/// Walks the directory `rel` below `root` and, in parallel, everything below it, resolving
/// every name against an open directory and following no link (see [`crate::beneath`]).
///
/// Each directory is opened from `root` again, component by component, so no descriptor is
/// held while its subdirectories are walked.
fn walk_confined(root: &Dir, rel: &str, opts: &ScanOptions) -> WalkOut {
    let mut out = WalkOut {
        dirs: 1,
        ..Default::default()
    };
    let listed = beneath::open_dir(root, rel).and_then(|dir| dir.entries().map(|e| (dir, e)));
    let (dir, entries) = match listed {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && rel != opts.subdir => {
            return WalkOut::default()
        }
        Err(e) => {
            out.errors.push((rel.to_string(), confined_reason(&e)));
            return out;
        }
    };
    let mut subdirs: Vec<String> = Vec::new();
    let seen_any = !entries.is_empty();
    for (name, kind) in entries {
        let Some(name) = name.to_str() else {
            let lossy = join_rel(rel, &name.to_string_lossy());
            out.errors
                .push((lossy, "file name is not valid UTF-8".to_string()));
            continue;
        };
        let child_rel = join_rel(rel, name);
        if kind == Kind::Dir {
            // Opened later without following links: if it is a link by then, that fails.
            subdirs.push(child_rel);
            continue;
        }
        let st = match dir.stat_at(std::ffi::OsStr::new(name)) {
            Ok(st) => st,
            // Vanished between readdir and stat: not an error worth reporting.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                out.errors.push((child_rel, strerror(&e)));
                continue;
            }
        };
        if st.is_dir() {
            subdirs.push(child_rel);
            continue;
        }
        match internal_name(name) {
            Some(Internal::Temporary) if st.is_file() => {
                out.temporaries.push(child_rel);
                continue;
            }
            Some(_) => {
                out.internal += 1;
                continue;
            }
            None => {}
        }
        if st.is_symlink() {
            // Never followed, so its target is not looked at either.
            if opts.filter.is_included(&child_rel) {
                out.symlinks.push(child_rel);
            } else {
                out.excluded += 1;
            }
            continue;
        }
        if !st.is_file() {
            out.special += 1;
            continue;
        }
        if !opts.filter.is_included(&child_rel) {
            out.excluded += 1;
            continue;
        }
        out.files.push(RawFile {
            rel: child_rel,
            key: st.key(),
        });
    }
    drop(dir);
    if !seen_any && !rel.is_empty() {
        out.empty_dirs.push(rel.to_string());
    }
    if !opts.recursive {
        subdirs.clear();
    }
    let below = subdirs
        .into_par_iter()
        .map(|rel| walk_confined(root, &rel, opts))
        .reduce(WalkOut::default, WalkOut::merge);
    out.merge(below)
}

fn confined_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) | Some(libc::ENOTDIR) => {
            "replaced by a symbolic link or a file while the scan ran (not followed)".to_string()
        }
        _ => strerror(e),
    }
}

/// Opens the root of a confined scan, and checks where it starts.
///
/// Returns the root, or None when `opts.subdir` is missing, a link or not a directory.
fn confined_start(root: &Path, opts: &ScanOptions) -> Result<Option<Dir>> {
    if opts.follow_symlinks {
        return Err(Error::InvalidValue(
            "a confined scan follows no symbolic links: follow_symlinks must be false".into(),
        ));
    }
    let is_link = |p: &Path| std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink());
    let link_error = || {
        Error::InvalidValue(format!(
            "{}: is a symbolic link, which a confined scan does not follow",
            root.display()
        ))
    };
    if is_link(root) {
        return Err(link_error());
    }
    let dir = Dir::open(root).map_err(|e| match e.raw_os_error() {
        // O_NOFOLLOW | O_DIRECTORY on a link says ELOOP or ENOTDIR: swapped since the check.
        Some(libc::ELOOP) | Some(libc::ENOTDIR) if is_link(root) => link_error(),
        Some(libc::ENOTDIR) => Error::NotADirectory(root.to_path_buf()),
        _ => Error::io(root, e),
    })?;
    if opts.subdir.is_empty() {
        return Ok(Some(dir));
    }
    check_subdir(&opts.subdir)?;
    match beneath::open_dir(&dir, &opts.subdir) {
        Ok(_) => Ok(Some(dir)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT) | Some(libc::ELOOP) | Some(libc::ENOTDIR)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(Error::io(root.join(&opts.subdir), e)),
    }
}

fn check_subdir(subdir: &str) -> Result<()> {
    if subdir
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(Error::InvalidValue(format!(
            "subdir must be a relative path without '.', '..' or empty parts: {subdir:?}"
        )));
    }
    Ok(())
}

/// Scans `root`. Unreadable files and directories are reported in [`Listing::errors`]; they do
/// not abort the scan. Fails only when `root` itself cannot be scanned.
pub fn scan(root: &Path, opts: &ScanOptions, ctl: &Control) -> Result<Listing> {
    let nothing = || -> Result<Listing> {
        // The subdirectory does not exist here (or is a link a scan would skip): nothing to
        // list, as a scan of the whole root would list nothing under it.
        let mut listing = Listing::from_sorted(&[])?;
        listing.root = Some(root.to_path_buf());
        listing.algorithm = opts.algorithm.map(|a| a.name().to_string());
        Ok(listing)
    };
    let pool = engine::pool(opts.threads.max(1));
    let mut confined_root = None;
    let mut walked = if opts.confined {
        let Some(dir) = confined_start(root, opts)? else {
            return nothing();
        };
        let walked = pool.install(|| walk_confined(&dir, &opts.subdir, opts));
        confined_root = Some(dir);
        walked
    } else {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
        if !meta.is_dir() {
            return Err(Error::NotADirectory(root.to_path_buf()));
        }
        let Some((start, start_meta)) = segment_start(root, opts)? else {
            return nothing();
        };
        let root_id = [(start_meta.dev(), start_meta.ino())];
        pool.install(|| walk_dir(&start, &opts.subdir, &root_id, opts))
    };
    walked.dirs -= 1; // the scanned directory itself
    if ctl.cancelled() {
        return Err(Error::Cancelled);
    }
    walked.files.par_sort_unstable_by(|a, b| a.rel.cmp(&b.rel));
    walked.empty_dirs.sort_unstable();
    walked.temporaries.sort_unstable();
    walked.symlinks.sort_unstable();
    walked.errors.sort();

    let mut stats = ScanStats {
        files: walked.files.len() as u64,
        bytes: walked.files.iter().map(|f| f.key.size).sum(),
        dirs: walked.dirs,
        excluded: walked.excluded,
        symlinks_skipped: if opts.follow_symlinks {
            0
        } else {
            walked.symlinks.len() as u64
        },
        internal_skipped: walked.internal,
        special_skipped: walked.special,
        ..Default::default()
    };
    let mut errors = walked.errors;
    let mut digests: Vec<Option<String>> = vec![None; walked.files.len()];
    let mut state_unavailable = None;

    if let Some(alg) = opts.algorithm {
        let part = if alg == Algorithm::Etag {
            opts.rule.part_size
        } else {
            0
        };
        // A cache that cannot be used costs speed, not correctness: every file it would have
        // vouched for is hashed, so its failures are not errors of the scan.
        let mut store = match &opts.state_dir {
            Some(dir) => match StateStore::open(dir) {
                Ok(s) => Some((dir, s)),
                Err(e) => {
                    state_unavailable = Some(StateUnavailable::new(dir, &e));
                    None
                }
            },
            None => None,
        };
        let keys: Vec<FileKey> = walked.files.iter().map(|f| f.key).collect();
        if let Some((dir, s)) = store.as_mut() {
            match s.lookup(&keys, alg.name(), part) {
                Ok(found) => digests = found,
                Err(e) => {
                    state_unavailable = Some(StateUnavailable::new(dir, &e));
                    store = None;
                }
            }
        }
        let misses: Vec<usize> = (0..digests.len())
            .filter(|&i| digests[i].is_none())
            .collect();
        stats.digests_reused = (digests.len() - misses.len()) as u64;
        let hopts = HashOptions {
            algorithm: alg,
            rule: opts.rule,
            threads: opts.threads,
            fail_fast: false,
        };
        let began = now_ns();
        let results = match &confined_root {
            // What the walk listed, and nothing else: the same device and inode, reached
            // again from the root without following links.
            Some(dir) => {
                let rels: Vec<PathBuf> = misses
                    .iter()
                    .map(|&i| PathBuf::from(&walked.files[i].rel))
                    .collect();
                let keys: Vec<FileKey> = misses.iter().map(|&i| walked.files[i].key).collect();
                engine::hash_files_beneath(dir, &rels, &keys, &hopts, ctl)
            }
            None => {
                let paths: Vec<PathBuf> = misses
                    .iter()
                    .map(|&i| root.join(&walked.files[i].rel))
                    .collect();
                engine::hash_files(&paths, &hopts, ctl)
            }
        };
        if ctl.cancelled() {
            return Err(Error::Cancelled);
        }
        let mut fresh = Vec::new();
        for (&i, r) in misses.iter().zip(results) {
            match r {
                Ok(d) => {
                    stats.digests_computed += 1;
                    stats.bytes_hashed += walked.files[i].key.size;
                    fresh.push((walked.files[i].key, d.clone()));
                    digests[i] = Some(d);
                }
                // Deleted since the walk listed it: left out, as the walk leaves out a file
                // gone before its stat (a listing a moment later would not have it either).
                Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => errors.push((walked.files[i].rel.clone(), error_reason(&e))),
            }
        }
        if let Some((dir, s)) = store.as_mut() {
            if let Err(e) = s.record(&fresh, alg.name(), part, began) {
                state_unavailable = Some(StateUnavailable::new(dir, &e));
            }
        }
    }

    // Files that could not be hashed are left out: a listing never holds an entry whose digest
    // was asked for but is unknown.
    let rows: Vec<(String, u64, i64, Option<String>)> = walked
        .files
        .into_iter()
        .zip(digests)
        .filter(|(_, d)| opts.algorithm.is_none() || d.is_some())
        .map(|(f, d)| (f.rel, f.key.size, f.key.mtime_ns, d))
        .collect();
    let mut listing = Listing::from_sorted(&rows)?;
    stats.errors = errors.len() as u64;
    listing.root = Some(root.to_path_buf());
    listing.algorithm = opts.algorithm.map(|a| a.name().to_string());
    listing.errors = errors;
    listing.empty_dirs = walked.empty_dirs;
    listing.temporaries = walked.temporaries;
    listing.symlinks = walked.symlinks;
    listing.stats = stats;
    listing.state_unavailable = state_unavailable;
    Ok(listing)
}

/// Where a scan of `opts.subdir` starts, or None when that directory is missing or reached
/// through a symbolic link that the scan would not follow.
fn segment_start(root: &Path, opts: &ScanOptions) -> Result<Option<(PathBuf, Metadata)>> {
    if opts.subdir.is_empty() {
        let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
        return Ok(Some((root.to_path_buf(), meta)));
    }
    check_subdir(&opts.subdir)?;
    let mut at = root.to_path_buf();
    for part in opts.subdir.split('/') {
        at.push(part);
        let meta = match std::fs::symlink_metadata(&at) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&at, e)),
        };
        if meta.file_type().is_symlink() && !opts.follow_symlinks {
            return Ok(None);
        }
    }
    match std::fs::metadata(&at) {
        Ok(m) if m.is_dir() => Ok(Some((at, m))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&at, e)),
    }
}

fn error_reason(e: &Error) -> String {
    match e {
        Error::Io { source, .. } => strerror(source),
        Error::Changed { what, .. } => format!("changed while being hashed ({what})"),
        other => other.to_string(),
    }
}

/// A content hash of a whole tree, independent of scan order, mtimes and permissions.
///
/// Definition (enough to reimplement it): list every regular file (symlinks, FIFOs, sockets
/// and devices are skipped) and every directory that has no entries at all, by path relative
/// to `root` with `/` separators, sorted by the paths' UTF-8 bytes. For a file, the record is
/// `b"file\0" + path + b"\0" + hex digest of its content with `algorithm` + b"\n"`; for an
/// empty directory, `b"dir\0" + path + b"\0\n"`. The tree hash is `algorithm` applied to the
/// concatenated records (for `etag`, with 8 MiB parts), in hex. An empty tree hashes the empty
/// string.
///
/// Returns the hash, and why the hash state cache was not used if it was asked for and could
/// not be (the hash is right either way).
pub fn tree_hash(
    root: &Path,
    algorithm: Algorithm,
    opts: &ScanOptions,
    ctl: &Control,
) -> Result<(String, Option<StateUnavailable>)> {
    let opts = ScanOptions {
        algorithm: Some(algorithm),
        filter: Filter::default(),
        ..opts.clone()
    };
    let listing = scan(root, &opts, ctl)?;
    if let Some((path, why)) = listing.errors.first() {
        return Err(Error::InvalidValue(format!(
            "cannot hash the tree {}: {path}: {why}",
            root.display()
        )));
    }
    let mut records: Vec<(&str, Option<&str>)> =
        listing.iter().map(|e| (e.path, e.digest)).collect();
    records.extend(listing.empty_dirs.iter().map(|d| (d.as_str(), None)));
    records.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut h = Hasher::new(algorithm, PartRule::default());
    for (path, digest) in records {
        match digest {
            Some(d) => {
                h.update(b"file\0");
                h.update(path.as_bytes());
                h.update(b"\0");
                h.update(d.as_bytes());
                h.update(b"\n");
            }
            None => {
                h.update(b"dir\0");
                h.update(path.as_bytes());
                h.update(b"\0\n");
            }
        }
    }
    Ok((h.finalize(), listing.state_unavailable))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Pattern, Rule};

    fn tree(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hashsync-scan-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        for (p, data) in [
            ("a.txt", "a"),
            ("sub/b.bin", "bb"),
            ("sub/deep/c.txt", "ccc"),
        ] {
            let f = d.join(p);
            std::fs::create_dir_all(f.parent().unwrap()).unwrap();
            std::fs::write(f, data).unwrap();
        }
        std::fs::create_dir_all(d.join("empty")).unwrap();
        d
    }

    fn paths_of(d: &Path, subdir: &str, recursive: bool) -> Vec<String> {
        let opts = ScanOptions {
            subdir: subdir.to_string(),
            recursive,
            ..Default::default()
        };
        let l = scan(d, &opts, &Control::default()).unwrap();
        l.iter().map(|e| e.path.to_string()).collect()
    }

    #[test]
    fn a_segment_is_a_slice_of_the_whole_scan() {
        let d = tree("segment");
        assert_eq!(paths_of(&d, "", false), vec!["a.txt"]);
        assert_eq!(paths_of(&d, "sub", false), vec!["sub/b.bin"]);
        assert_eq!(
            paths_of(&d, "sub", true),
            vec!["sub/b.bin", "sub/deep/c.txt"]
        );
        assert_eq!(paths_of(&d, "sub/deep", true), vec!["sub/deep/c.txt"]);
        // Missing, a file, or a link the scan does not follow: nothing there.
        assert!(paths_of(&d, "missing/x", true).is_empty());
        assert!(paths_of(&d, "a.txt", true).is_empty());
        std::os::unix::fs::symlink(d.join("sub"), d.join("link")).unwrap();
        assert!(paths_of(&d, "link", true).is_empty());
        for bad in ["../x", "sub/../sub", "/etc", "sub//deep", "./sub"] {
            let opts = ScanOptions {
                subdir: bad.to_string(),
                ..Default::default()
            };
            assert!(scan(&d, &opts, &Control::default()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_confined_scan_lists_what_a_plain_one_does() {
        let d = tree("confined");
        std::fs::write(d.join(".sub.hashsync-lock"), "x").unwrap();
        std::os::unix::fs::symlink(d.join("sub"), d.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(d.join("a.txt"), d.join("file-link")).unwrap();
        let ctl = Control::default();
        let plain = ScanOptions {
            algorithm: Some(Algorithm::Sha256),
            ..Default::default()
        };
        let confined = ScanOptions {
            confined: true,
            ..plain.clone()
        };
        let a = scan(&d, &plain, &ctl).unwrap();
        let b = scan(&d, &confined, &ctl).unwrap();
        assert!(a.same_entries(&b) && a.len() == 3);
        assert_eq!(a.symlinks, b.symlinks);
        assert_eq!(a.empty_dirs, b.empty_dirs);
        assert_eq!(a.stats, b.stats);
        for (subdir, recursive) in [("sub", true), ("sub", false), ("dir-link", true)] {
            let o = |base: &ScanOptions| ScanOptions {
                subdir: subdir.to_string(),
                recursive,
                ..base.clone()
            };
            let a = scan(&d, &o(&plain), &ctl).unwrap();
            let b = scan(&d, &o(&confined), &ctl).unwrap();
            assert!(a.same_entries(&b), "{subdir}");
        }
        // A link as the root itself is refused, and so is following links.
        std::os::unix::fs::symlink(&d, d.with_extension("link")).unwrap();
        assert!(scan(&d.with_extension("link"), &confined, &ctl).is_err());
        let follow = ScanOptions {
            follow_symlinks: true,
            ..confined.clone()
        };
        assert!(scan(&d, &follow, &ctl).is_err());
        std::fs::remove_file(d.with_extension("link")).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn a_confined_scan_hashes_only_what_its_walk_listed() {
        let d = tree("confined-swap");
        let outside = d.with_extension("outside");
        let _ = std::fs::remove_dir_all(&outside);
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("b.bin"), "secret").unwrap();
        let opts = ScanOptions {
            algorithm: Some(Algorithm::Sha256),
            confined: true,
            ..Default::default()
        };
        let root = Dir::open(&d).unwrap();
        let mut walked = walk_confined(&root, "", &opts);
        walked.files.sort_by(|a, b| a.rel.cmp(&b.rel));
        assert_eq!(walked.files[1].rel, "sub/b.bin");
        // The walk has listed sub/b.bin; now sub becomes a link to a directory outside.
        std::fs::rename(d.join("sub"), d.with_extension("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("sub")).unwrap();
        let rels: Vec<PathBuf> = walked.files.iter().map(|f| PathBuf::from(&f.rel)).collect();
        let keys: Vec<FileKey> = walked.files.iter().map(|f| f.key).collect();
        let hopts = HashOptions {
            algorithm: Algorithm::Sha256,
            rule: PartRule::default(),
            threads: 2,
            fail_fast: false,
        };
        let r = engine::hash_files_beneath(&root, &rels, &keys, &hopts, &Control::default());
        assert!(r[0].is_ok());
        let e = r[1].as_ref().unwrap_err().to_string();
        assert!(
            e.contains("symbolic links") || e.contains("Not a directory"),
            "{e}"
        );
        // Even a real directory in its place holds other files: they are not the listed one.
        std::fs::remove_file(d.join("sub")).unwrap();
        std::fs::rename(&outside, d.join("sub")).unwrap();
        let r = engine::hash_files_beneath(&root, &rels, &keys, &hopts, &Control::default());
        assert!(matches!(r[1], Err(Error::Changed { .. })), "{:?}", r[1]);
        // And a whole scan now lists the new content, never the old digest for it.
        let l = scan(&d, &opts, &Control::default()).unwrap();
        let e = l
            .find("sub/b.bin")
            .map(|i| l.get(i).digest.unwrap().to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                crate::hash::hash_bytes(b"secret", Algorithm::Sha256, PartRule::default()).as_str()
            )
        );
        std::fs::remove_dir_all(d.with_extension("moved")).unwrap();
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn internal_names_are_recognised_exactly() {
        for ours in [
            ".b.bin.hashsync-tmp-0a1b2c3d-1-deadbeef",
            ".x.hashsync-tmp-0a1b2c3d-4194304-00000000",
            ".a.hashsync-tmp-b.hashsync-tmp-0a1b2c3d-12-deadbeef",
            ".f.txt.hashsync-tmp-partial-0123456789abcdef",
        ] {
            assert_eq!(internal_name(ours), Some(Internal::Temporary), "{ours}");
        }
        for ours in [
            ".db.hashsync-lock",
            ".k.hashsync-lock.broken-0123456789abcdef",
        ] {
            assert_eq!(internal_name(ours), Some(Internal::Lock), "{ours}");
        }
        for users in [
            "report.hashsync-tmp-v2.txt",
            "db.hashsync-lock",
            ".hashsync-lock",
            ".hashsync-tmp-0a1b2c3d-1-deadbeef",
            ".b.hashsync-tmp-0a1b2c3d-1-deadbeef.txt",
            ".b.hashsync-tmp-0A1B2C3D-1-deadbeef",
            ".b.hashsync-tmp-0a1b2c3d--deadbeef",
            ".b.hashsync-tmp-0a1b2c3d-1-deadbee",
            ".b.hashsync-tmp-partial-0123",
            ".db.hashsync-lock.bak",
            ".db.hashsync-lock.broken-xyz",
            "notes.txt",
        ] {
            assert_eq!(internal_name(users), None, "{users}");
        }
    }

    #[test]
    fn users_files_named_like_ours_are_listed() {
        let d = tree("lookalikes");
        for name in [
            "report.hashsync-tmp-v2.txt",
            "db.hashsync-lock",
            ".db.hashsync-lock",
        ] {
            std::fs::write(d.join(name), "x").unwrap();
        }
        let l = scan(&d, &ScanOptions::default(), &Control::default()).unwrap();
        let paths: Vec<_> = l.iter().map(|e| e.path).collect();
        assert_eq!(
            paths,
            vec![
                "a.txt",
                "db.hashsync-lock",
                "report.hashsync-tmp-v2.txt",
                "sub/b.bin",
                "sub/deep/c.txt"
            ]
        );
        assert_eq!(l.stats.internal_skipped, 1);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn symlinks_are_recorded_whether_skipped_or_followed() {
        let d = tree("links");
        std::os::unix::fs::symlink(d.join("a.txt"), d.join("file-link")).unwrap();
        std::os::unix::fs::symlink(d.join("sub"), d.join("dir-link")).unwrap();
        std::os::unix::fs::symlink(d.join("missing"), d.join("dangling")).unwrap();
        let ctl = Control::default();
        let skipped = scan(&d, &ScanOptions::default(), &ctl).unwrap();
        assert_eq!(skipped.symlinks, vec!["dangling", "dir-link", "file-link"]);
        assert_eq!(skipped.stats.symlinks_skipped, 3);
        let opts = ScanOptions {
            follow_symlinks: true,
            ..Default::default()
        };
        let followed = scan(&d, &opts, &ctl).unwrap();
        assert_eq!(followed.symlinks, vec!["dangling", "dir-link", "file-link"]);
        let paths: Vec<_> = followed.iter().map(|e| e.path).collect();
        assert!(paths.contains(&"dir-link/deep/c.txt") && paths.contains(&"file-link"));
        assert_eq!(followed.errors.len(), 1, "{:?}", followed.errors);
        // A link to a file that the filters exclude is not worth reporting.
        let filtered = ScanOptions {
            filter: Filter::new(vec![Rule {
                include: false,
                pattern: Pattern::new("file-*"),
            }]),
            ..Default::default()
        };
        let l = scan(&d, &filtered, &ctl).unwrap();
        assert_eq!(l.symlinks, vec!["dangling", "dir-link"]);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn temporaries_are_reported_not_listed() {
        let d = tree("tmps");
        let tmp = "sub/.b.bin.hashsync-tmp-0a1b2c3d-1-deadbeef";
        std::fs::write(d.join(tmp), "partial").unwrap();
        let l = scan(&d, &ScanOptions::default(), &Control::default()).unwrap();
        let paths: Vec<_> = l.iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["a.txt", "sub/b.bin", "sub/deep/c.txt"]);
        assert_eq!(l.temporaries, vec![tmp.to_string()]);
        assert_eq!(l.stats.files, 3);
    }

    #[test]
    fn lists_sorted_with_stats_and_filters() {
        let d = tree("list");
        std::os::unix::fs::symlink(d.join("a.txt"), d.join("link")).unwrap();
        let ctl = Control::default();
        let l = scan(&d, &ScanOptions::default(), &ctl).unwrap();
        let paths: Vec<_> = l.iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["a.txt", "sub/b.bin", "sub/deep/c.txt"]);
        assert_eq!(l.stats.symlinks_skipped, 1);
        assert_eq!(l.stats.bytes, 6);
        assert_eq!(l.empty_dirs, vec!["empty".to_string()]);
        assert!(l.iter().all(|e| e.digest.is_none()));

        let opts = ScanOptions {
            filter: Filter::new(vec![
                Rule {
                    include: false,
                    pattern: Pattern::new("*"),
                },
                Rule {
                    include: true,
                    pattern: Pattern::new("*.txt"),
                },
            ]),
            follow_symlinks: true,
            ..Default::default()
        };
        let l = scan(&d, &opts, &ctl).unwrap();
        let paths: Vec<_> = l.iter().map(|e| e.path).collect();
        assert_eq!(paths, vec!["a.txt", "sub/deep/c.txt"]);
        assert_eq!(l.stats.excluded, 2); // sub/b.bin and link (a file once followed)
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn symlink_loop_is_reported_not_followed_forever() {
        let d = tree("loop");
        std::os::unix::fs::symlink(&d, d.join("sub/back")).unwrap();
        let opts = ScanOptions {
            follow_symlinks: true,
            ..Default::default()
        };
        let l = scan(&d, &opts, &Control::default()).unwrap();
        assert_eq!(l.len(), 3);
        assert!(l
            .errors
            .iter()
            .any(|(p, why)| p == "sub/back" && why.contains("loop")));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn digests_are_reused_from_state() {
        let d = tree("state");
        let state = d.with_extension("state");
        let _ = std::fs::remove_dir_all(&state);
        let opts = ScanOptions {
            algorithm: Some(Algorithm::Md5),
            state_dir: Some(state.clone()),
            ..Default::default()
        };
        let ctl = Control::default();
        let first = scan(&d, &opts, &ctl).unwrap();
        assert_eq!(first.stats.digests_computed, 3);
        assert_eq!(
            first.get(0).digest,
            Some("0cc175b9c0f1b6a831c399e269772661")
        );
        // Just written, so racy: hashed again. Pretend they are old by moving mtimes back.
        for e in first.iter() {
            let f = std::fs::File::options()
                .write(true)
                .open(d.join(e.path))
                .unwrap();
            f.set_modified(
                std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
            )
            .unwrap();
        }
        let second = scan(&d, &opts, &ctl).unwrap();
        // ctime moved with set_modified, and is recent: still racy, so hashed once more.
        assert_eq!(second.stats.digests_computed, 3);
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_dir_all(state).unwrap();
    }

    #[test]
    fn unusable_state_is_not_an_error_of_the_scan() {
        let d = tree("nostate");
        let blocker = d.with_extension("blocker");
        std::fs::write(&blocker, b"a file where a directory should be").unwrap();
        let opts = ScanOptions {
            algorithm: Some(Algorithm::Md5),
            state_dir: Some(blocker.join("state")),
            ..Default::default()
        };
        let ctl = Control::default();
        let l = scan(&d, &opts, &ctl).unwrap();
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        assert_eq!(
            (l.len(), l.stats.digests_computed, l.stats.errors),
            (3, 3, 0)
        );
        let u = l.state_unavailable.expect("reported");
        assert_eq!(u.location, blocker.join("state"));
        assert!(u.reason.contains("Not a directory"), "{}", u.reason);
        let (h, u) = tree_hash(&d, Algorithm::Md5, &opts, &ctl).unwrap();
        assert!(u.is_some());
        assert_eq!(
            h,
            tree_hash(&d, Algorithm::Md5, &ScanOptions::default(), &ctl)
                .unwrap()
                .0
        );
        std::fs::remove_dir_all(d).unwrap();
        std::fs::remove_file(blocker).unwrap();
    }

    #[test]
    fn tree_hash_is_order_and_mtime_independent() {
        let a = tree("th-a");
        let b = tree("th-b");
        let ctl = Control::default();
        let o = ScanOptions::default();
        let th = |d: &Path| tree_hash(d, Algorithm::Sha256, &o, &ctl).unwrap().0;
        let ha = th(&a);
        assert_eq!(ha, th(&b));
        std::fs::remove_dir(b.join("empty")).unwrap();
        assert_ne!(ha, th(&b));
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }
}
