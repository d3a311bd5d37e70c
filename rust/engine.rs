//! Parallel file hashing.
//!
//! The unit of work is a (file, byte range) pair. ETags split at part boundaries and CRCs at
//! [`CRC_CHUNK`] boundaries, so one big file keeps every core busy; the CRC chunks are joined
//! with `crc_fast::checksum_combine`. MD5/SHA/BLAKE3/XXH3 of a whole file are inherently
//! sequential and form a single unit. Units run largest first on a rayon pool: workers pull the
//! next unit from a shared counter, which is the longest-processing-time-first schedule.
//!
//! Files are read with `pread` into a reused ~1 MiB buffer, never mapped: a file truncated while
//! it is hashed must give an error, and a mapping would give SIGBUS instead.

use crate::beneath::Dir;
use crate::error::{Error, Result};
use crate::hash::{multipart_etag, Algorithm, Hasher, PartRule};
use crate::state::FileKey;
use std::fs::{File, Metadata};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Read buffer size: big enough to amortise syscalls, small enough to stay in L2.
pub const READ_BUF: usize = 1 << 20;
/// CRC chunk size: CRCs run at tens of GB/s, so chunks only need to be big enough to balance.
pub const CRC_CHUNK: u64 = 32 << 20;

/// Shared between the workers and whoever watches them: cancellation and progress counters.
#[derive(Default)]
pub struct Control {
    pub cancel: AtomicBool,
    pub done_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
}

impl Control {
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

/// Options of [`hash_files`].
#[derive(Clone, Copy, Debug)]
pub struct HashOptions {
    pub algorithm: Algorithm,
    pub rule: PartRule,
    pub threads: usize,
    /// Stop everything at the first error (the other results are then `Cancelled`).
    pub fail_fast: bool,
}

/// The identity of a file when hashing began; any change while hashing is an error.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl Identity {
    fn of(m: &Metadata) -> Self {
        Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
        }
    }
}

/// Stats `path` and checks that it is a regular file.
fn regular_file(path: &Path) -> Result<Metadata> {
    let m = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if m.is_dir() {
        return Err(Error::IsADirectory(path.to_path_buf()));
    }
    if !m.is_file() {
        return Err(Error::NotARegularFile(path.to_path_buf()));
    }
    Ok(m)
}

enum UnitKind {
    /// The whole file with the requested algorithm.
    Whole,
    /// One ETag part: MD5 of the range.
    EtagPart,
    /// One CRC chunk: the raw CRC of the range.
    CrcChunk,
}

struct Unit {
    file: usize,
    offset: u64,
    len: u64,
    kind: UnitKind,
}

enum UnitOut {
    Hex(String),
    Md5([u8; 16]),
    Crc(u64),
}

/// Where the workers open files.
#[derive(Clone, Copy)]
enum Opener<'a> {
    /// By path, as `open(2)` resolves it.
    Path,
    /// By relative path below a directory, following no link (see [`crate::beneath`]).
    Beneath(&'a Dir),
}

/// Opens `path` and checks it is still the file that was stat'ed when the work was planned.
fn open_checked(path: &Path, ident: Identity, opener: Opener<'_>) -> Result<File> {
    let file = match opener {
        Opener::Path => File::open(path),
        Opener::Beneath(root) => match path.to_str() {
            Some(rel) => crate::beneath::open_file(root, rel),
            None => Err(std::io::Error::from(std::io::ErrorKind::InvalidInput)),
        },
    }
    .map_err(|e| Error::io(path, e))?;
    let now = Identity::of(&file.metadata().map_err(|e| Error::io(path, e))?);
    if now != ident {
        return Err(Error::changed(
            path,
            "replaced or modified before it was read",
        ));
    }
    Ok(file)
}

/// Checks, after reading, that nothing changed the file while it was read.
fn verify_unchanged(file: &File, path: &Path, ident: Identity) -> Result<()> {
    let after = Identity::of(&file.metadata().map_err(|e| Error::io(path, e))?);
    if after != ident {
        let what = if after.size != ident.size {
            format!("size went from {} to {} bytes", ident.size, after.size)
        } else {
            "modified while it was read".to_string()
        };
        return Err(Error::changed(path, what));
    }
    Ok(())
}

/// Fills `buf` from `offset`, retrying short reads; a read of 0 bytes means the file shrank
/// (below `expected_size`, which the error names).
pub(crate) fn read_full(
    file: &File,
    path: &Path,
    expected_size: u64,
    buf: &mut [u8],
    offset: u64,
) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => {
                return Err(Error::changed(
                    path,
                    format!(
                        "shrank: expected {} bytes, ended at {}",
                        expected_size,
                        offset + got as u64
                    ),
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(path, e)),
        }
    }
    Ok(())
}

/// Reads `len` bytes at `offset` of `path` through `buf`, feeding `hasher`.
#[allow(clippy::too_many_arguments)]
fn hash_range(
    path: &Path,
    opener: Opener<'_>,
    ident: Identity,
    offset: u64,
    len: u64,
    hasher: &mut Hasher,
    buf: &mut [u8],
    ctl: &Control,
) -> Result<()> {
    let file = open_checked(path, ident, opener)?;
    let mut pos = offset;
    let end = offset + len;
    while pos < end {
        if ctl.cancelled() {
            return Err(Error::Cancelled);
        }
        let want = ((end - pos) as usize).min(buf.len());
        read_full(&file, path, ident.size, &mut buf[..want], pos)?;
        hasher.update(&buf[..want]);
        pos += want as u64;
        ctl.done_bytes.fetch_add(want as u64, Ordering::Relaxed);
    }
    verify_unchanged(&file, path, ident)
}

/// Per-lane read size of the multi-lane MD5 path (a multiple of 64, as the kernel requires).
const LANE_CHUNK: usize = 256 << 10;

/// Whether a unit is plain MD5 of its range, so it can share SIMD lanes with other units.
fn is_md5_unit(u: &Unit, alg: Algorithm) -> bool {
    match u.kind {
        UnitKind::EtagPart => true,
        // A single-part ETag is the MD5 of the whole file.
        UnitKind::Whole => matches!(alg, Algorithm::Md5 | Algorithm::Etag),
        UnitKind::CrcChunk => false,
    }
}

struct LaneJob<'a> {
    unit: usize,
    path: &'a Path,
    ident: Identity,
    file: File,
    pos: u64,
    end: u64,
}

/// Hashes several MD5 units at once, one per SIMD lane, reading each in [`LANE_CHUNK`] steps.
/// Returns one result per unit, in the order given.
fn run_md5_lanes(
    jobs: Vec<(usize, &Path, Identity, u64, u64)>,
    opener: Opener<'_>,
    kind_is_part: &[bool],
    lanes: &mut crate::md5x::Md5Lanes,
    bufs: &mut [Vec<u8>],
    ctl: &Control,
) -> Vec<(usize, Result<UnitOut>)> {
    let mut out: Vec<(usize, Result<UnitOut>)> = Vec::with_capacity(jobs.len());
    let mut active: Vec<Option<LaneJob<'_>>> = Vec::with_capacity(jobs.len());
    for (unit, path, ident, offset, len) in jobs {
        match open_checked(path, ident, opener) {
            Ok(file) => active.push(Some(LaneJob {
                unit,
                path,
                ident,
                file,
                pos: offset,
                end: offset + len,
            })),
            Err(e) => {
                out.push((unit, Err(e)));
                active.push(None);
            }
        }
    }
    // Each lane reads at a different offset within its buffer: page-aligned buffers all map to
    // the same L1 sets and evict each other.
    let lane_off = |lane: usize| (lane * 320) % 1024;
    let n = lanes.lanes();
    let mut lens = vec![0usize; n];
    let mut last = vec![false; n];
    while active.iter().any(Option::is_some) {
        if ctl.cancelled() {
            for j in active.iter_mut().filter_map(Option::take) {
                out.push((j.unit, Err(Error::Cancelled)));
            }
            break;
        }
        for lane in 0..n {
            lens[lane] = 0;
            last[lane] = false;
            let Some(job) = active.get_mut(lane).and_then(Option::as_mut) else {
                continue;
            };
            let want = ((job.end - job.pos) as usize).min(LANE_CHUNK);
            let off = lane_off(lane);
            match read_full(
                &job.file,
                job.path,
                job.ident.size,
                &mut bufs[lane][off..off + want],
                job.pos,
            ) {
                Ok(()) => {
                    job.pos += want as u64;
                    lens[lane] = want;
                    last[lane] = job.pos == job.end;
                    ctl.done_bytes.fetch_add(want as u64, Ordering::Relaxed);
                }
                Err(e) => {
                    let job = active[lane].take().expect("active");
                    out.push((job.unit, Err(e)));
                    // The lane may hold a partial stream; finishing it discards that state.
                    last[lane] = true;
                }
            }
        }
        let inputs: Vec<&[u8]> = (0..n)
            .map(|l| &bufs[l][lane_off(l)..lane_off(l) + lens[l]])
            .collect();
        let digests = lanes.update(&inputs, &last);
        for (lane, d) in digests.into_iter().enumerate() {
            let Some(d) = d else { continue };
            let Some(job) = active.get_mut(lane).and_then(Option::take) else {
                continue;
            };
            let r = verify_unchanged(&job.file, job.path, job.ident).map(|()| {
                if kind_is_part[lane] {
                    UnitOut::Md5(d)
                } else {
                    UnitOut::Hex(crate::hash::to_hex(&d))
                }
            });
            out.push((job.unit, r));
        }
    }
    out
}

fn run_unit(
    unit: &Unit,
    path: &Path,
    opener: Opener<'_>,
    ident: Identity,
    opts: &HashOptions,
    buf: &mut [u8],
    ctl: &Control,
) -> Result<UnitOut> {
    let alg = match unit.kind {
        UnitKind::Whole => opts.algorithm,
        UnitKind::EtagPart => Algorithm::Md5,
        UnitKind::CrcChunk => opts.algorithm,
    };
    let mut hasher = Hasher::new(alg, opts.rule);
    hash_range(
        path,
        opener,
        ident,
        unit.offset,
        unit.len,
        &mut hasher,
        buf,
        ctl,
    )?;
    Ok(match unit.kind {
        UnitKind::Whole => UnitOut::Hex(hasher.finalize()),
        UnitKind::EtagPart => UnitOut::Md5(hasher.md5_bytes().expect("md5 state")),
        UnitKind::CrcChunk => UnitOut::Crc(hasher.crc_value().expect("crc state")),
    })
}

/// Splits one file into units for `opts`.
fn plan_file(file: usize, size: u64, opts: &HashOptions, units: &mut Vec<Unit>) -> Result<()> {
    let (kind, step) = match opts.algorithm {
        Algorithm::Etag => match opts.rule.checked_parts(size)? {
            0 => (UnitKind::Whole, u64::MAX),
            _ => (UnitKind::EtagPart, opts.rule.part_size_for(size)),
        },
        a if a.crc().is_some() && size > CRC_CHUNK => (UnitKind::CrcChunk, CRC_CHUNK),
        _ => (UnitKind::Whole, u64::MAX),
    };
    if step == u64::MAX {
        units.push(Unit {
            file,
            offset: 0,
            len: size,
            kind,
        });
        return Ok(());
    }
    let mut offset = 0;
    while offset < size {
        let len = step.min(size - offset);
        let kind = match kind {
            UnitKind::EtagPart => UnitKind::EtagPart,
            _ => UnitKind::CrcChunk,
        };
        units.push(Unit {
            file,
            offset,
            len,
            kind,
        });
        offset += len;
    }
    Ok(())
}

/// Joins a file's unit results (in offset order) into its digest.
fn assemble(alg: Algorithm, outs: Vec<(u64, UnitOut)>) -> String {
    if let [(_, UnitOut::Hex(_))] = outs.as_slice() {
        let Some((_, UnitOut::Hex(h))) = outs.into_iter().next() else {
            unreachable!()
        };
        return h;
    }
    match alg {
        Algorithm::Etag => {
            let parts: Vec<[u8; 16]> = outs
                .into_iter()
                .map(|(_, o)| match o {
                    UnitOut::Md5(d) => d,
                    _ => unreachable!("etag parts are md5"),
                })
                .collect();
            multipart_etag(&parts)
        }
        _ => {
            let crc_alg = alg.crc().expect("only CRCs are chunked");
            let mut acc: Option<u64> = None;
            for (len, o) in outs {
                let UnitOut::Crc(c) = o else {
                    unreachable!("crc chunks are crc")
                };
                acc = Some(match acc {
                    None => c,
                    Some(a) => crc_fast::checksum_combine(crc_alg, a, c, len),
                });
            }
            crate::hash::int_hex(acc.unwrap_or(0), alg.crc_hex_width())
        }
    }
}

/// A rayon pool of `threads` threads, reused across calls of the same size.
pub fn pool(threads: usize) -> Arc<rayon::ThreadPool> {
    type Slot = Mutex<Option<(usize, Arc<rayon::ThreadPool>)>>;
    static POOL: OnceLock<Slot> = OnceLock::new();
    let mut slot = POOL
        .get_or_init(|| Mutex::new(None))
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some((n, p)) = slot.as_ref() {
        if *n == threads {
            return p.clone();
        }
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("hashsync-{i}"))
            .build()
            .expect("cannot start hashing threads"),
    );
    *slot = Some((threads, p.clone()));
    p
}

/// The default thread count: `HASHSYNC_THREADS`, else the number of CPUs.
pub fn default_threads() -> usize {
    std::env::var("HASHSYNC_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(cpus)
}

/// The CPUs this process may use, asked once: `available_parallelism` reads cgroup files
/// (several syscalls), which per `hash_file` call was most of the cost of hashing a small file.
fn cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

/// Hashes every path; results are in input order. With `fail_fast`, the first error cancels the
/// rest (they come back as `Error::Cancelled`).
pub fn hash_files(paths: &[PathBuf], opts: &HashOptions, ctl: &Control) -> Vec<Result<String>> {
    hash_files_with(paths, None, Opener::Path, opts, ctl)
}

/// Hashes files below `root` by their relative paths (`/`-separated), each opened one
/// component at a time without following links, and only if it is still the file that
/// `expected` describes (device, inode, size, mtime: what a walk of `root` found); any other
/// file there is [`Error::Changed`], a link or a missing file an [`Error::Io`].
pub fn hash_files_beneath(
    root: &Dir,
    rels: &[PathBuf],
    expected: &[FileKey],
    opts: &HashOptions,
    ctl: &Control,
) -> Vec<Result<String>> {
    assert_eq!(rels.len(), expected.len(), "one expected identity per path");
    let idents = expected
        .iter()
        .map(|k| Identity {
            dev: k.dev,
            ino: k.ino,
            size: k.size,
            mtime_ns: i128::from(k.mtime_ns),
        })
        .collect();
    hash_files_with(rels, Some(idents), Opener::Beneath(root), opts, ctl)
}

fn hash_files_with(
    paths: &[PathBuf],
    known: Option<Vec<Identity>>,
    opener: Opener<'_>,
    opts: &HashOptions,
    ctl: &Control,
) -> Vec<Result<String>> {
    let threads = opts.threads.max(1);
    let n = paths.len();
    let mut results: Vec<Option<Result<String>>> = (0..n).map(|_| None).collect();

    // Stat first: sizes decide the plan. Cheap compared to reading, so it runs on this thread
    // unless there are many files.
    let stat = |p: &PathBuf| regular_file(p).map(|m| Identity::of(&m));
    let idents: Vec<Result<Identity>> = if let Some(known) = known {
        known.into_iter().map(Ok).collect()
    } else if n > 64 && threads > 1 {
        use rayon::prelude::*;
        pool(threads).install(|| paths.par_iter().map(stat).collect())
    } else {
        paths.iter().map(stat).collect()
    };

    let mut units = Vec::new();
    let mut ids: Vec<Option<Identity>> = vec![None; n];
    for (i, r) in idents.into_iter().enumerate() {
        match r.and_then(|id| plan_file(i, id.size, opts, &mut units).map(|_| id)) {
            Ok(id) => ids[i] = Some(id),
            Err(e) => {
                if opts.fail_fast {
                    return fail_all(n, i, e);
                }
                results[i] = Some(Err(e));
            }
        }
    }
    let total: u64 = units.iter().map(|u| u.len).sum();
    ctl.total_bytes.store(total, Ordering::Relaxed);

    let mut order: Vec<usize> = (0..units.len()).collect();
    order.sort_by_key(|&u| std::cmp::Reverse(units[u].len));
    let outs: Vec<Mutex<Option<Result<UnitOut>>>> =
        (0..units.len()).map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);

    let workers = threads.min(units.len()).max(1);
    let lane_count = crate::md5x::lanes();
    let worker = || {
        let mut buf = vec![0u8; READ_BUF];
        let mut wide = crate::md5x::Md5Lanes::new();
        let mut narrow = crate::md5x::lanes_for(2);
        let mut lane_bufs: Vec<Vec<u8>> = (0..lane_count)
            .map(|_| vec![0u8; LANE_CHUNK + 1024])
            .collect();
        let store = |k: usize, r: Result<UnitOut>| {
            if r.is_err() && opts.fail_fast {
                failed.store(true, Ordering::Relaxed);
            }
            *outs[k].lock().unwrap() = Some(r);
        };
        loop {
            let start = next.load(Ordering::Relaxed);
            if start >= order.len() {
                break;
            }
            // MD5 units share SIMD lanes, so spread them over the workers up to one per lane;
            // other units go one at a time, which balances the tail best.
            let take =
                if lane_count > 1 && matches!(opts.algorithm, Algorithm::Md5 | Algorithm::Etag) {
                    // At least 4 streams per batch: a kernel step with only one or two busy lanes
                    // wastes most of its width (measured: 4 streams on one worker beat 2 + 2).
                    let rest = order.len() - start;
                    (rest / workers).max(rest.min(4)).clamp(1, lane_count)
                } else {
                    1
                };
            let k = next.fetch_add(take, Ordering::Relaxed);
            if k >= order.len() {
                break;
            }
            let batch = &order[k..(k + take).min(order.len())];
            let stop = ctl.cancelled() || (opts.fail_fast && failed.load(Ordering::Relaxed));
            let mut md5_jobs = Vec::new();
            let mut md5_kinds = Vec::new();
            for &ui in batch {
                let u = &units[ui];
                let id = ids[u.file].expect("planned files have an identity");
                if stop {
                    store(ui, Err(Error::Cancelled));
                } else if lane_count > 1 && is_md5_unit(u, opts.algorithm) {
                    md5_jobs.push((ui, paths[u.file].as_path(), id, u.offset, u.len));
                    md5_kinds.push(matches!(u.kind, UnitKind::EtagPart));
                } else {
                    store(
                        ui,
                        run_unit(u, &paths[u.file], opener, id, opts, &mut buf, ctl),
                    );
                }
            }
            if md5_jobs.len() == 1 {
                // One stream: the scalar MD5 beats a SIMD kernel with one busy lane.
                let ui = md5_jobs[0].0;
                let u = &units[ui];
                store(
                    ui,
                    run_unit(
                        u,
                        &paths[u.file],
                        opener,
                        md5_jobs[0].2,
                        opts,
                        &mut buf,
                        ctl,
                    ),
                );
            } else if !md5_jobs.is_empty() {
                let lanes = if md5_jobs.len() <= narrow.lanes() {
                    &mut narrow
                } else {
                    &mut wide
                };
                let done = run_md5_lanes(md5_jobs, opener, &md5_kinds, lanes, &mut lane_bufs, ctl);
                for (ui, r) in done {
                    store(ui, r);
                }
            }
        }
    };
    if workers <= 1 {
        worker();
    } else {
        pool(threads).scope(|s| {
            for _ in 0..workers {
                s.spawn(|_| worker());
            }
        });
    }

    // Units were planned file by file in offset order, so a linear walk regroups them.
    let mut per_file: Vec<Vec<(u64, UnitOut)>> = (0..n).map(|_| Vec::new()).collect();
    let mut first_error: Option<(usize, Error)> = None;
    for (u, out) in units.iter().zip(outs) {
        let out = out.into_inner().unwrap().expect("every unit ran");
        if results[u.file].is_some() {
            continue;
        }
        match out {
            Ok(o) => per_file[u.file].push((u.len, o)),
            Err(e) => {
                if opts.fail_fast
                    && !matches!(e, Error::Cancelled)
                    && first_error.as_ref().is_none_or(|(f, _)| u.file < *f)
                {
                    first_error = Some((u.file, e));
                    continue;
                }
                results[u.file] = Some(Err(e));
            }
        }
    }
    if let Some((i, e)) = first_error {
        return fail_all(n, i, e);
    }
    for (i, slot) in results.iter_mut().enumerate() {
        if slot.is_none() {
            *slot = Some(Ok(assemble(
                opts.algorithm,
                std::mem::take(&mut per_file[i]),
            )));
        }
    }
    results
        .into_iter()
        .map(|r| r.expect("every file has a result"))
        .collect()
}

fn fail_all(n: usize, at: usize, e: Error) -> Vec<Result<String>> {
    let mut e = Some(e);
    (0..n)
        .map(|i| {
            Err(if i == at {
                e.take().unwrap()
            } else {
                Error::Cancelled
            })
        })
        .collect()
}

/// Hashes one file on the calling thread (no pool): for small files, where starting
/// parallel work costs more than it saves.
pub fn hash_file_inline(path: &Path, opts: &HashOptions, ctl: &Control) -> Result<String> {
    let m = regular_file(path)?;
    let id = Identity::of(&m);
    let mut units = Vec::new();
    plan_file(0, id.size, opts, &mut units)?;
    ctl.total_bytes.store(id.size, Ordering::Relaxed);
    let mut buf = vec![0u8; READ_BUF.min(id.size.max(1) as usize)];
    let mut outs = Vec::with_capacity(units.len());
    for u in &units {
        outs.push((
            u.len,
            run_unit(u, path, Opener::Path, id, opts, &mut buf, ctl)?,
        ));
    }
    Ok(assemble(opts.algorithm, outs))
}

/// Size of a regular file, with the same checks as hashing.
pub fn file_size(path: &Path) -> Result<u64> {
    regular_file(path).map(|m| m.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{hash_bytes, MIB};
    use std::io::Write;

    fn tmpdir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("hashsync-engine-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn write(path: &Path, data: &[u8]) {
        std::fs::File::create(path)
            .unwrap()
            .write_all(data)
            .unwrap();
    }

    fn opts(alg: Algorithm, threads: usize) -> HashOptions {
        HashOptions {
            algorithm: alg,
            rule: PartRule::new(5 * MIB, None).unwrap(),
            threads,
            fail_fast: false,
        }
    }

    #[test]
    fn parallel_equals_streaming_for_every_algorithm() {
        let d = tmpdir("eq");
        let sizes = [
            0u64,
            1,
            5 * MIB,
            5 * MIB + 1,
            3 * CRC_CHUNK + 12345,
            11 * MIB,
        ];
        let mut paths = Vec::new();
        let mut datas = Vec::new();
        for (i, &s) in sizes.iter().enumerate() {
            let data: Vec<u8> = (0..s).map(|j| (j * 7 + i as u64) as u8).collect();
            let p = d.join(format!("f{i}"));
            write(&p, &data);
            paths.push(p);
            datas.push(data);
        }
        for alg in Algorithm::ALL {
            for threads in [1, 3] {
                let o = opts(alg, threads);
                let got = hash_files(&paths, &o, &Control::default());
                for (g, data) in got.iter().zip(&datas) {
                    assert_eq!(
                        g.as_ref().unwrap(),
                        &hash_bytes(data, alg, o.rule),
                        "{alg:?}"
                    );
                }
                let single = hash_file_inline(&paths[4], &o, &Control::default()).unwrap();
                assert_eq!(single, hash_bytes(&datas[4], alg, o.rule));
            }
        }
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn errors_name_the_path_and_do_not_hide_other_results() {
        let d = tmpdir("err");
        let ok = d.join("ok");
        write(&ok, b"hello");
        let missing = d.join("missing");
        let paths = vec![ok.clone(), missing.clone(), d.clone()];
        let r = hash_files(&paths, &opts(Algorithm::Sha256, 2), &Control::default());
        assert_eq!(
            r[0].as_ref().unwrap(),
            &hash_bytes(b"hello", Algorithm::Sha256, PartRule::default())
        );
        let e1 = r[1].as_ref().unwrap_err();
        assert!(
            matches!(e1, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
        );
        assert!(e1.to_string().contains("missing"));
        assert!(matches!(r[2], Err(Error::IsADirectory(_))));

        let mut o = opts(Algorithm::Sha256, 2);
        o.fail_fast = true;
        let r = hash_files(&paths, &o, &Control::default());
        assert!(matches!(&r[1], Err(Error::Io { .. })));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn cancel_stops_work() {
        let d = tmpdir("cancel");
        let p = d.join("big");
        write(&p, &vec![0u8; (8 * MIB) as usize]);
        let ctl = Control::default();
        ctl.cancel.store(true, Ordering::Relaxed);
        let r = hash_files(&[p], &opts(Algorithm::Md5, 2), &ctl);
        assert!(matches!(r[0], Err(Error::Cancelled)));
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn files_past_ten_thousand_parts_get_doubled_parts() {
        // Planned, not hashed: 48.8 GiB of zeros would take minutes.
        let size = 5 * MIB * 10_001;
        let mut units = Vec::new();
        plan_file(0, size, &opts(Algorithm::Etag, 2), &mut units).unwrap();
        assert_eq!(units.len(), 5_001);
        assert!(units[..5_000].iter().all(|u| u.len == 10 * MIB));
        assert_eq!(units[5_000].len, size - 5_000 * 10 * MIB);
        assert_eq!(units[5_000].offset, 5_000 * 10 * MIB);
    }
}
