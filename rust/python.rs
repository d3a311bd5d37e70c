//! The Python bindings: argument conversion, GIL release, progress and Ctrl-C, error mapping.
//! Everything else lives in the pure-Rust modules.

use crate::diff::{Compare, Plan};
use crate::engine::{self, Control, HashOptions};
use crate::error::{strerror, Error};
use crate::filter::Filter;
use crate::hash::{self, Algorithm, PartRule, DEFAULT_PART_SIZE};
use crate::listing::{Entry, Listing};
use crate::scan::ScanOptions;
use crate::state::StateUnavailable;
use pyo3::buffer::PyBuffer;
use pyo3::exceptions::{PyIndexError, PyKeyboardInterrupt, PyRuntimeError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PySlice, PyString, PyTuple};
use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Files below this size are hashed on the calling thread when nobody watches progress:
/// starting a watcher thread would cost more than the hashing.
const INLINE_BYTES: u64 = 32 << 20;
/// Buffers above this size are hashed with the GIL released.
const DETACH_BYTES: usize = 64 << 10;
/// How often progress is reported and Ctrl-C checked.
const TICK: Duration = Duration::from_millis(100);

fn errors_class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("hashsync.errors")?.getattr(name)
}

fn build_err<'py, A>(py: Python<'py>, class: &str, args: A) -> PyErr
where
    A: IntoPyObject<'py, Target = PyTuple>,
    A::Error: Into<PyErr>,
{
    let args = match args.into_pyobject(py) {
        Ok(a) => pyo3::BoundObject::into_bound(a),
        Err(e) => return e.into(),
    };
    match errors_class(py, class).and_then(|c| c.call1(args)) {
        Ok(v) => PyErr::from_value(v),
        Err(e) => e,
    }
}

/// Maps a core error to the matching `hashsync.errors` class; I/O errors keep their errno.
pub(crate) fn to_pyerr(py: Python<'_>, err: Error) -> PyErr {
    let msg = err.to_string();
    match err {
        Error::Io { path, source } => {
            let errno = source.raw_os_error().unwrap_or(0);
            let args = (
                errno,
                strerror(&source),
                path.to_string_lossy().into_owned(),
            );
            match source.kind() {
                std::io::ErrorKind::NotFound => build_err(py, "NotFound", args),
                std::io::ErrorKind::PermissionDenied => build_err(py, "PermissionDenied", args),
                std::io::ErrorKind::NotADirectory => build_err(py, "NotADirectory", args),
                std::io::ErrorKind::IsADirectory => build_err(py, "IsADirectory", args),
                // Disk full, I/O error, too many open files...: still an OSError with errno.
                _ => build_err(py, "FileSystemError", args),
            }
        }
        Error::IsADirectory(p) => build_err(
            py,
            "IsADirectory",
            (
                libc_eisdir(),
                "Is a directory, not a file",
                p.to_string_lossy().into_owned(),
            ),
        ),
        Error::NotARegularFile(p) => build_err(
            py,
            "NotARegularFile",
            (
                0,
                "Not a regular file (FIFO, socket or device)",
                p.to_string_lossy().into_owned(),
            ),
        ),
        Error::UnknownAlgorithm(_) => build_err(py, "UnknownAlgorithm", (msg,)),
        Error::InvalidPartSize(_) => build_err(py, "InvalidPartSize", (msg,)),
        Error::InvalidValue(_) => build_err(py, "InvalidArgument", (msg,)),
        Error::Changed { path, .. } => {
            let e = build_err(py, "FileChanged", (msg,));
            let _ = e
                .value(py)
                .setattr("path", path.to_string_lossy().into_owned());
            e
        }
        Error::NotADirectory(p) => build_err(
            py,
            "NotADirectory",
            (20, "Not a directory", p.to_string_lossy().into_owned()),
        ),
        Error::State(_) => build_err(py, "HashsyncError", (msg,)),
        Error::Cancelled => PyKeyboardInterrupt::new_err("cancelled"),
    }
}

fn libc_eisdir() -> i32 {
    21 // EISDIR on Linux and macOS
}

fn algorithm(name: &str) -> Result<Algorithm, Error> {
    Algorithm::from_name(name)
}

fn rule(part_size: u64, threshold: Option<u64>) -> Result<PartRule, Error> {
    PartRule::new(part_size, threshold)
}

fn threads(n: Option<usize>) -> PyResult<usize> {
    match n {
        Some(0) => Err(pyo3::exceptions::PyValueError::new_err(
            "threads must be at least 1",
        )),
        Some(n) => Ok(n),
        None => Ok(engine::default_threads()),
    }
}

/// Runs `work` on a helper thread while this thread, holding the GIL only briefly every
/// [`TICK`], reports progress and checks for Ctrl-C. A KeyboardInterrupt (or an exception from
/// the progress callback) cancels the work, waits for the workers to stop, and is re-raised.
fn run_watched<T: Send>(
    py: Python<'_>,
    progress: Option<&Bound<'_, PyAny>>,
    ctl: &Control,
    work: impl FnOnce() -> T + Send,
) -> PyResult<T> {
    let finished = (Mutex::new(false), Condvar::new());
    std::thread::scope(|s| {
        let handle = s.spawn(|| {
            // Signal completion even if `work` panics, so the watcher never waits forever.
            struct Done<'a>(&'a (Mutex<bool>, Condvar));
            impl Drop for Done<'_> {
                fn drop(&mut self) {
                    *self.0 .0.lock().unwrap_or_else(|e| e.into_inner()) = true;
                    self.0 .1.notify_all();
                }
            }
            let _done = Done(&finished);
            work()
        });
        let mut raised: Option<PyErr> = None;
        loop {
            let done = py.detach(|| {
                let guard = finished.0.lock().unwrap_or_else(|e| e.into_inner());
                let (guard, _) = finished
                    .1
                    .wait_timeout_while(guard, TICK, |d| !*d)
                    .unwrap_or_else(|e| e.into_inner());
                *guard
            });
            if done {
                break;
            }
            if raised.is_some() {
                continue;
            }
            let outcome = py.check_signals().and_then(|_| match progress {
                Some(cb) => cb
                    .call1((
                        ctl.done_bytes.load(Ordering::Relaxed),
                        ctl.total_bytes.load(Ordering::Relaxed),
                    ))
                    .map(|_| ()),
                None => Ok(()),
            });
            if let Err(e) = outcome {
                ctl.cancel.store(true, Ordering::Relaxed);
                raised = Some(e);
            }
        }
        let out = handle.join();
        if let Some(e) = raised {
            return Err(e);
        }
        let out = out.map_err(|_| PyRuntimeError::new_err("hashsync worker thread panicked"))?;
        if let Some(cb) = progress {
            let total = ctl.total_bytes.load(Ordering::Relaxed);
            cb.call1((ctl.done_bytes.load(Ordering::Relaxed).min(total), total))?;
        }
        Ok(out)
    })
}

/// Calls `f` on the bytes of a bytes-like object. `bytes` is immutable, so large ones are
/// hashed with the GIL released; other buffers (bytearray, memoryview, arrays) keep the GIL so
/// no Python thread can change them underneath.
fn with_buffer<R: Send>(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    f: impl FnOnce(&[u8]) -> R + Send,
) -> PyResult<R> {
    if let Ok(b) = data.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        return Ok(if bytes.len() > DETACH_BYTES {
            py.detach(|| f(bytes))
        } else {
            f(bytes)
        });
    }
    if data.is_instance_of::<PyString>() {
        return Err(PyTypeError::new_err(
            "strings must be encoded before hashing (e.g. text.encode())",
        ));
    }
    let buf = PyBuffer::<u8>::get(data)
        .map_err(|_| PyTypeError::new_err("expected a bytes-like object"))?;
    if !buf.is_c_contiguous() {
        return Err(PyTypeError::new_err("buffer must be C-contiguous"));
    }
    // SAFETY: the buffer is C-contiguous, holds len_bytes() bytes, stays alive while `buf`
    // lives, and the GIL is held throughout, so no Python code can mutate or free it.
    let slice = unsafe { std::slice::from_raw_parts(buf.buf_ptr() as *const u8, buf.len_bytes()) };
    Ok(f(slice))
}

/// Digest of an in-memory buffer.
#[pyfunction]
#[pyo3(signature = (data, algorithm="sha256", *, part_size=DEFAULT_PART_SIZE, threshold=None))]
fn hash_bytes(
    py: Python<'_>,
    data: &Bound<'_, PyAny>,
    algorithm: &str,
    part_size: u64,
    threshold: Option<u64>,
) -> PyResult<String> {
    let alg = self::algorithm(algorithm).map_err(|e| to_pyerr(py, e))?;
    let rule = rule(part_size, threshold).map_err(|e| to_pyerr(py, e))?;
    with_buffer(py, data, |b| hash::hash_bytes(b, alg, rule))
}

fn hash_one(
    py: Python<'_>,
    path: PathBuf,
    opts: HashOptions,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<String> {
    let ctl = Control::default();
    let small = progress.is_none()
        && engine::file_size(&path)
            .map(|s| s < INLINE_BYTES)
            .unwrap_or(true);
    let r = if small {
        py.detach(|| engine::hash_file_inline(&path, &opts, &ctl))
    } else {
        run_watched(py, progress, &ctl, || {
            engine::hash_files(std::slice::from_ref(&path), &opts, &ctl)
                .pop()
                .expect("one result")
        })?
    };
    r.map_err(|e| to_pyerr(py, e))
}

/// Digest of one file.
#[pyfunction]
#[pyo3(signature = (path, algorithm="sha256", *, part_size=DEFAULT_PART_SIZE, threshold=None,
                    threads=None, progress=None))]
fn hash_file(
    py: Python<'_>,
    path: PathBuf,
    algorithm: &str,
    part_size: u64,
    threshold: Option<u64>,
    threads: Option<usize>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let opts = HashOptions {
        algorithm: self::algorithm(algorithm).map_err(|e| to_pyerr(py, e))?,
        rule: rule(part_size, threshold).map_err(|e| to_pyerr(py, e))?,
        threads: self::threads(threads)?,
        fail_fast: true,
    };
    hash_one(py, path, opts, progress.as_ref())
}

fn extract_paths(paths: &Bound<'_, PyAny>) -> PyResult<Vec<PathBuf>> {
    if paths.is_instance_of::<PyString>() || paths.is_instance_of::<PyBytes>() {
        return Err(PyTypeError::new_err(
            "paths must be an iterable of paths, not a single string (use hash_file)",
        ));
    }
    paths.try_iter()?.map(|p| p?.extract::<PathBuf>()).collect()
}

/// Digests of many files, in input order.
#[pyfunction]
#[pyo3(signature = (paths, algorithm="sha256", *, part_size=DEFAULT_PART_SIZE, threshold=None,
                    threads=None, progress=None, return_exceptions=false))]
#[allow(clippy::too_many_arguments)]
fn hash_files<'py>(
    py: Python<'py>,
    paths: &Bound<'py, PyAny>,
    algorithm: &str,
    part_size: u64,
    threshold: Option<u64>,
    threads: Option<usize>,
    progress: Option<Bound<'py, PyAny>>,
    return_exceptions: bool,
) -> PyResult<Bound<'py, PyList>> {
    let paths = extract_paths(paths)?;
    let opts = HashOptions {
        algorithm: self::algorithm(algorithm).map_err(|e| to_pyerr(py, e))?,
        rule: rule(part_size, threshold).map_err(|e| to_pyerr(py, e))?,
        threads: self::threads(threads)?,
        fail_fast: !return_exceptions,
    };
    let ctl = Control::default();
    let results = run_watched(py, progress.as_ref(), &ctl, || {
        engine::hash_files(&paths, &opts, &ctl)
    })?;
    let out = PyList::empty(py);
    for r in results {
        match r {
            Ok(d) => out.append(d)?,
            Err(Error::Cancelled) if !return_exceptions => continue,
            Err(e) if return_exceptions => out.append(to_pyerr(py, e).into_value(py))?,
            Err(e) => return Err(to_pyerr(py, e)),
        }
    }
    Ok(out)
}

/// The CRC of two pieces of data one after the other, from their CRCs and the second's length.
#[pyfunction]
#[pyo3(signature = (algorithm, first, second, second_len))]
fn crc_combine(
    py: Python<'_>,
    algorithm: &str,
    first: &str,
    second: &str,
    second_len: u64,
) -> PyResult<String> {
    let alg = Algorithm::from_name(algorithm).map_err(|e| to_pyerr(py, e))?;
    crate::hash::crc_combine(alg, first, second, second_len).map_err(|e| to_pyerr(py, e))
}

/// The part size an object of `size` bytes is uploaded with: `part_size`, doubled until it
/// fits in 10,000 parts (as s3transfer does).
#[pyfunction]
#[pyo3(signature = (size, *, part_size=DEFAULT_PART_SIZE))]
fn upload_part_size(py: Python<'_>, size: u64, part_size: u64) -> PyResult<u64> {
    let rule = rule(part_size, None).map_err(|e| to_pyerr(py, e))?;
    rule.checked_parts(size).map_err(|e| to_pyerr(py, e))?;
    Ok(rule.part_size_for(size))
}

/// The S3 ETag a file gets when uploaded with `part_size` parts above `threshold`.
#[pyfunction]
#[pyo3(signature = (path, *, part_size=DEFAULT_PART_SIZE, threshold=None, threads=None, progress=None))]
fn etag(
    py: Python<'_>,
    path: PathBuf,
    part_size: u64,
    threshold: Option<u64>,
    threads: Option<usize>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let opts = HashOptions {
        algorithm: Algorithm::Etag,
        rule: rule(part_size, threshold).map_err(|e| to_pyerr(py, e))?,
        threads: self::threads(threads)?,
        fail_fast: true,
    };
    hash_one(py, path, opts, progress.as_ref())
}

/// The part size with which `path` gets `etag` (0 for a single-part match), or None.
#[pyfunction]
#[pyo3(signature = (path, etag, *, part_sizes=None, progress=None))]
fn match_etag(
    py: Python<'_>,
    path: PathBuf,
    etag: &str,
    part_sizes: Option<Vec<u64>>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<Option<u64>> {
    let extra = part_sizes.unwrap_or_default();
    let ctl = Control::default();
    let r = run_watched(py, progress.as_ref(), &ctl, || {
        crate::etag::match_etag(&path, etag, &extra, &ctl)
    })?;
    r.map_err(|e| to_pyerr(py, e))
}

/// Whether `path`'s content has the S3 ETag `etag`, inferring the part size.
#[pyfunction]
#[pyo3(signature = (path, etag, *, part_sizes=None, progress=None))]
fn etag_matches(
    py: Python<'_>,
    path: PathBuf,
    etag: &str,
    part_sizes: Option<Vec<u64>>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<bool> {
    Ok(match_etag(py, path, etag, part_sizes, progress)?.is_some())
}

/// The directory of hashsync's caches (hash state among them).
#[pyfunction]
fn default_cache_dir() -> PathBuf {
    crate::state::default_cache_dir()
}

/// Streaming hasher.
#[pyclass(name = "Hasher", module = "hashsync._native")]
struct PyHasher {
    inner: hash::Hasher,
}

#[pymethods]
impl PyHasher {
    #[new]
    #[pyo3(signature = (algorithm="sha256", *, part_size=DEFAULT_PART_SIZE, threshold=None))]
    fn new(
        py: Python<'_>,
        algorithm: &str,
        part_size: u64,
        threshold: Option<u64>,
    ) -> PyResult<Self> {
        let alg = self::algorithm(algorithm).map_err(|e| to_pyerr(py, e))?;
        let rule = rule(part_size, threshold).map_err(|e| to_pyerr(py, e))?;
        Ok(PyHasher {
            inner: hash::Hasher::new(alg, rule),
        })
    }

    fn update(&mut self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let inner = &mut self.inner;
        with_buffer(py, data, |b| inner.update(b))
    }

    fn hexdigest(&self) -> String {
        self.inner.clone().finalize()
    }

    fn copy(&self) -> Self {
        PyHasher {
            inner: self.inner.clone(),
        }
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.inner.algorithm().name()
    }

    fn __repr__(&self) -> String {
        format!("<hashsync.Hasher {}>", self.inner.algorithm().name())
    }
}

/// One file of a listing.
#[pyclass(name = "FileEntry", module = "hashsync._native", frozen, eq, hash)]
#[derive(Clone, PartialEq, Eq, Hash)]
struct PyFileEntry {
    #[pyo3(get)]
    path: String,
    #[pyo3(get)]
    size: u64,
    #[pyo3(get)]
    mtime_ns: i64,
    #[pyo3(get)]
    digest: Option<String>,
}

impl PyFileEntry {
    fn from_entry(e: Entry<'_>) -> Self {
        PyFileEntry {
            path: e.path.to_string(),
            size: e.size,
            mtime_ns: e.mtime_ns,
            digest: e.digest.map(str::to_string),
        }
    }
}

#[pymethods]
impl PyFileEntry {
    #[new]
    #[pyo3(signature = (path, size, mtime_ns=0, digest=None))]
    fn new(path: String, size: u64, mtime_ns: i64, digest: Option<String>) -> Self {
        PyFileEntry {
            path,
            size,
            mtime_ns,
            digest,
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "FileEntry(path={:?}, size={}, mtime_ns={}, digest={})",
            self.path,
            self.size,
            self.mtime_ns,
            self.digest
                .as_ref()
                .map_or("None".to_string(), |d| format!("{d:?}"))
        )
    }
}

/// A sorted, compact sequence of FileEntry backed by Rust memory.
#[pyclass(name = "Listing", module = "hashsync._native", frozen, sequence)]
struct PyListing {
    inner: Arc<Listing>,
}

#[pymethods]
impl PyListing {
    /// A listing of FileEntry objects in any order (sorted here); paths must be unique.
    #[staticmethod]
    fn from_entries(entries: &Bound<'_, PyAny>) -> PyResult<PyListing> {
        Ok(PyListing {
            inner: listing_of(entries)?,
        })
    }

    fn __len__(&self) -> usize {
        self.inner.len()
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        index: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let n = self.inner.len() as isize;
        if let Ok(slice) = index.cast::<PySlice>() {
            let ind = slice.indices(n)?;
            let out = PyList::empty(py);
            let mut i = ind.start;
            for _ in 0..ind.slicelength {
                out.append(PyFileEntry::from_entry(self.inner.get(i as usize)))?;
                i += ind.step;
            }
            return Ok(out.into_any());
        }
        let mut i: isize = index.extract()?;
        if i < 0 {
            i += n;
        }
        if i < 0 || i >= n {
            return Err(PyIndexError::new_err("listing index out of range"));
        }
        Ok(Bound::new(py, PyFileEntry::from_entry(self.inner.get(i as usize)))?.into_any())
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyListingIter {
        PyListingIter {
            inner: slf.inner.clone(),
            next: AtomicUsize::new(0),
        }
    }

    fn __contains__(&self, path: &str) -> bool {
        self.inner.find(path).is_some()
    }

    /// The entries under `prefix` (only those directly in it when `shallow`), as a listing
    /// with the same root and algorithm.
    #[pyo3(signature = (prefix, shallow=false))]
    fn select(&self, prefix: &str, shallow: bool) -> PyListing {
        PyListing {
            inner: Arc::new(self.inner.select(prefix, shallow)),
        }
    }

    /// The entry for `path`, or None.
    fn find(&self, path: &str) -> Option<PyFileEntry> {
        self.inner
            .find(path)
            .map(|i| PyFileEntry::from_entry(self.inner.get(i)))
    }

    /// Whether `other` holds the same entries (paths, sizes, mtimes, digests), whatever else
    /// differs; compared in Rust memory without creating entries.
    fn same_entries(&self, other: PyRef<'_, PyListing>) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.same_entries(&other.inner)
    }

    /// The relative paths, in order.
    fn paths(&self) -> Vec<&str> {
        self.inner.iter().map(|e| e.path).collect()
    }

    /// Paths that could not be listed or hashed, as (path, reason) pairs.
    #[getter]
    fn errors(&self) -> Vec<(String, String)> {
        self.inner.errors.clone()
    }

    /// Directories that have no entries at all.
    #[getter]
    fn empty_dirs(&self) -> Vec<String> {
        self.inner.empty_dirs.clone()
    }

    /// Temporary files of hashsync (``.NAME.hashsync-tmp-HOST-PID-RANDOM``) the scan saw;
    /// never listed as entries.
    #[getter]
    fn temporaries(&self) -> Vec<String> {
        self.inner.temporaries.clone()
    }

    /// The symbolic links the scan met: those it skipped (``follow_symlinks=False``; links
    /// to files the filters exclude are left out) or those it followed.
    #[getter]
    fn symlinks(&self) -> Vec<String> {
        self.inner.symlinks.clone()
    }

    /// Scan counters: files, bytes, dirs, excluded, symlinks_skipped, internal_skipped,
    /// special_skipped, digests_computed, digests_reused, bytes_hashed, errors, state_unavailable.
    #[getter]
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = &self.inner.stats;
        let d = PyDict::new(py);
        d.set_item("files", s.files)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("dirs", s.dirs)?;
        d.set_item("excluded", s.excluded)?;
        d.set_item("symlinks_skipped", s.symlinks_skipped)?;
        d.set_item("internal_skipped", s.internal_skipped)?;
        d.set_item("special_skipped", s.special_skipped)?;
        d.set_item("digests_computed", s.digests_computed)?;
        d.set_item("digests_reused", s.digests_reused)?;
        d.set_item("bytes_hashed", s.bytes_hashed)?;
        d.set_item("errors", s.errors)?;
        d.set_item(
            "state_unavailable",
            u64::from(self.inner.state_unavailable.is_some()),
        )?;
        Ok(d)
    }

    #[getter]
    fn root(&self) -> Option<PathBuf> {
        self.inner.root.clone()
    }

    #[getter]
    fn algorithm(&self) -> Option<String> {
        self.inner.algorithm.clone()
    }

    fn __repr__(&self) -> String {
        format!(
            "<hashsync.Listing {} files, {} bytes{}>",
            self.inner.len(),
            self.inner.stats.bytes,
            self.inner
                .root
                .as_ref()
                .map_or(String::new(), |r| format!(" of {}", r.display()))
        )
    }
}

#[pyclass(module = "hashsync._native", frozen)]
struct PyListingIter {
    inner: Arc<Listing>,
    next: AtomicUsize,
}

#[pymethods]
impl PyListingIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self) -> Option<PyFileEntry> {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        (i < self.inner.len()).then(|| PyFileEntry::from_entry(self.inner.get(i)))
    }
}

fn listing_of(obj: &Bound<'_, PyAny>) -> PyResult<Arc<Listing>> {
    if let Ok(l) = obj.cast::<PyListing>() {
        return Ok(l.get().inner.clone());
    }
    let entries: Vec<PyFileEntry> = obj
        .try_iter()
        .map_err(|_| PyTypeError::new_err("expected a Listing or a sequence of FileEntry"))?
        .map(|e| Ok(e?.cast::<PyFileEntry>()?.get().clone()))
        .collect::<PyResult<_>>()?;
    let l = Listing::from_entries(entries.iter().map(|e| Entry {
        path: &e.path,
        size: e.size,
        mtime_ns: e.mtime_ns,
        digest: e.digest.as_deref(),
    }))
    .map_err(|e| to_pyerr(obj.py(), e))?;
    Ok(Arc::new(l))
}

fn string_list(v: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<String>> {
    match v {
        None => Ok(Vec::new()),
        Some(v) if v.is_instance_of::<PyString>() => Ok(vec![v.extract()?]),
        Some(v) => v.try_iter()?.map(|p| p?.extract::<String>()).collect(),
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_options(
    py: Python<'_>,
    algorithm: Option<&str>,
    include: Option<&Bound<'_, PyAny>>,
    exclude: Option<&Bound<'_, PyAny>>,
    filters: Option<Vec<(String, String)>>,
    follow_symlinks: bool,
    part_size: u64,
    threads: Option<usize>,
    state: bool,
    state_dir: Option<PathBuf>,
    subdir: Option<String>,
    recursive: bool,
) -> PyResult<ScanOptions> {
    let algorithm = algorithm
        .map(self::algorithm)
        .transpose()
        .map_err(|e| to_pyerr(py, e))?;
    let mut filter = Filter::from_lists(&string_list(include)?, &string_list(exclude)?);
    if let Some(pairs) = filters {
        if !filter.is_empty() {
            return Err(to_pyerr(
                py,
                Error::InvalidValue("give either filters= or include=/exclude=, not both".into()),
            ));
        }
        filter = Filter::from_pairs(&pairs).map_err(|e| to_pyerr(py, e))?;
    }
    Ok(ScanOptions {
        algorithm,
        rule: rule(part_size, None).map_err(|e| to_pyerr(py, e))?,
        filter,
        follow_symlinks,
        threads: self::threads(threads)?,
        state_dir: state.then(|| state_dir.unwrap_or_else(crate::state::default_cache_dir)),
        subdir: subdir.unwrap_or_default(),
        recursive,
        confined: false,
    })
}

/// Which of `paths` the `(kind, pattern)` rules keep: the scanner's rule, for listings that do
/// not come from a scan (S3, HTTP).
#[pyfunction]
fn filter_paths(
    py: Python<'_>,
    paths: Vec<String>,
    filters: Vec<(String, String)>,
) -> PyResult<Vec<bool>> {
    let filter = Filter::from_pairs(&filters).map_err(|e| to_pyerr(py, e))?;
    Ok(paths.iter().map(|p| filter.is_included(p)).collect())
}

/// Whether a file name (one path component) is exactly one of hashsync's temporary or lock
/// file names, random parts included; anything else is a user's file.
#[pyfunction]
fn is_internal_name(name: &str) -> bool {
    crate::scan::internal_name(name).is_some()
}

/// Scans a directory tree into a Listing.
#[pyfunction]
#[pyo3(signature = (root, *, algorithm=None, include=None, exclude=None, filters=None,
                    follow_symlinks=false, part_size=DEFAULT_PART_SIZE, threads=None,
                    state=true, state_dir=None, progress=None, subdir=None, recursive=true,
                    confined=false))]
#[allow(clippy::too_many_arguments)]
fn scan(
    py: Python<'_>,
    root: PathBuf,
    algorithm: Option<&str>,
    include: Option<Bound<'_, PyAny>>,
    exclude: Option<Bound<'_, PyAny>>,
    filters: Option<Vec<(String, String)>>,
    follow_symlinks: bool,
    part_size: u64,
    threads: Option<usize>,
    state: bool,
    state_dir: Option<PathBuf>,
    progress: Option<Bound<'_, PyAny>>,
    subdir: Option<String>,
    recursive: bool,
    confined: bool,
) -> PyResult<PyListing> {
    let mut opts = scan_options(
        py,
        algorithm,
        include.as_ref(),
        exclude.as_ref(),
        filters,
        follow_symlinks,
        part_size,
        threads,
        state,
        state_dir,
        subdir,
        recursive,
    )?;
    opts.confined = confined;
    let ctl = Control::default();
    let listing = run_watched(py, progress.as_ref(), &ctl, || {
        crate::scan::scan(&root, &opts, &ctl)
    })?
    .map_err(|e| to_pyerr(py, e))?;
    if let Some(u) = &listing.state_unavailable {
        warn_state_unavailable(py, u)?;
    }
    Ok(PyListing {
        inner: Arc::new(listing),
    })
}

/// State locations already warned about: a process that scans a thousand times with a broken
/// cache location needs to hear it once, not a thousand times.
static WARNED_STATE: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Warns (once per process and location) that the hash state cache is not being used.
fn warn_state_unavailable(py: Python<'_>, u: &StateUnavailable) -> PyResult<()> {
    let first = WARNED_STATE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(u.location.clone());
    if !first {
        return Ok(());
    }
    let message = format!(
        "the hash state cache at {} cannot be used, so files are hashed without it \
         (correct, but unchanged files are read again): {}",
        u.location.display(),
        u.reason
    );
    let message = CString::new(message).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let category = errors_class(py, "HashsyncWarning")?;
    // Level 1 is the Python code that called into hashsync: native functions have no frame.
    PyErr::warn(py, &category, &message, 1)
}

/// The difference between two listings.
#[pyclass(name = "Plan", module = "hashsync._native", frozen)]
struct PyPlan {
    source: Arc<Listing>,
    target: Arc<Listing>,
    plan: Plan,
}

#[pymethods]
impl PyPlan {
    /// Paths to copy from source to target (new or changed).
    #[getter]
    fn copy(&self) -> Vec<&str> {
        self.plan
            .copy
            .iter()
            .map(|&i| self.source.get(i as usize).path)
            .collect()
    }

    /// Paths only the target has.
    #[getter]
    fn delete(&self) -> Vec<&str> {
        self.plan
            .delete
            .iter()
            .map(|&i| self.target.get(i as usize).path)
            .collect()
    }

    /// Number of files that are the same on both sides.
    #[getter]
    fn unchanged(&self) -> u64 {
        self.plan.unchanged
    }

    /// Total size of the files to copy.
    #[getter]
    fn copy_bytes(&self) -> u64 {
        self.plan.copy_bytes
    }

    /// The source entries to copy (with sizes and digests).
    fn copy_entries(&self) -> Vec<PyFileEntry> {
        self.plan
            .copy
            .iter()
            .map(|&i| PyFileEntry::from_entry(self.source.get(i as usize)))
            .collect()
    }

    fn __bool__(&self) -> bool {
        !(self.plan.copy.is_empty() && self.plan.delete.is_empty())
    }

    fn __repr__(&self) -> String {
        format!(
            "<hashsync.Plan copy={} ({} bytes) delete={} unchanged={}>",
            self.plan.copy.len(),
            self.plan.copy_bytes,
            self.plan.delete.len(),
            self.plan.unchanged
        )
    }
}

/// Diffs two listings (or sequences of FileEntry).
#[pyfunction]
#[pyo3(signature = (source, target, *, compare="checksum", progress=None, download=false))]
fn diff(
    py: Python<'_>,
    source: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    compare: &str,
    progress: Option<Bound<'_, PyAny>>,
    download: bool,
) -> PyResult<PyPlan> {
    let mut cmp = Compare::from_name(compare).map_err(|e| to_pyerr(py, e))?;
    if download {
        cmp = cmp.for_download();
    }
    let (s, t) = (listing_of(source)?, listing_of(target)?);
    let ctl = Control::default();
    let plan = run_watched(py, progress.as_ref(), &ctl, || {
        crate::diff::diff(&s, &t, cmp, &ctl)
    })?
    .map_err(|e| to_pyerr(py, e))?;
    Ok(PyPlan {
        source: s,
        target: t,
        plan,
    })
}

/// Deterministic content hash of a directory tree.
#[pyfunction]
#[pyo3(signature = (root, algorithm="sha256", *, follow_symlinks=false, threads=None, state=true,
                    state_dir=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn tree_hash(
    py: Python<'_>,
    root: PathBuf,
    algorithm: &str,
    follow_symlinks: bool,
    threads: Option<usize>,
    state: bool,
    state_dir: Option<PathBuf>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<String> {
    let opts = scan_options(
        py,
        Some(algorithm),
        None,
        None,
        None,
        follow_symlinks,
        DEFAULT_PART_SIZE,
        threads,
        state,
        state_dir,
        None,
        true,
    )?;
    let alg = opts.algorithm.expect("set above");
    let ctl = Control::default();
    let (digest, state_unavailable) = run_watched(py, progress.as_ref(), &ctl, || {
        crate::scan::tree_hash(&root, alg, &opts, &ctl)
    })?
    .map_err(|e| to_pyerr(py, e))?;
    if let Some(u) = &state_unavailable {
        warn_state_unavailable(py, u)?;
    }
    Ok(digest)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let names: Vec<&str> = Algorithm::ALL.iter().map(|a| a.name()).collect();
    m.add("ALGORITHMS", PyTuple::new(m.py(), names)?)?;
    m.add("DEFAULT_PART_SIZE", DEFAULT_PART_SIZE)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(hash_bytes, m)?)?;
    m.add_function(wrap_pyfunction!(hash_file, m)?)?;
    m.add_function(wrap_pyfunction!(hash_files, m)?)?;
    m.add_function(wrap_pyfunction!(etag, m)?)?;
    m.add_function(wrap_pyfunction!(upload_part_size, m)?)?;
    m.add_function(wrap_pyfunction!(crc_combine, m)?)?;
    m.add_function(wrap_pyfunction!(etag_matches, m)?)?;
    m.add_function(wrap_pyfunction!(match_etag, m)?)?;
    m.add_class::<crate::python_s3::PyS3Transport>()?;
    m.add_function(wrap_pyfunction!(crate::python_s3::sigv4_sign, m)?)?;
    m.add_class::<PyHasher>()?;
    m.add_class::<PyFileEntry>()?;
    m.add_class::<PyListing>()?;
    m.add_class::<PyPlan>()?;
    m.add_function(wrap_pyfunction!(scan, m)?)?;
    m.add_function(wrap_pyfunction!(filter_paths, m)?)?;
    m.add_function(wrap_pyfunction!(is_internal_name, m)?)?;
    m.add_function(wrap_pyfunction!(diff, m)?)?;
    m.add_function(wrap_pyfunction!(tree_hash, m)?)?;
    m.add_function(wrap_pyfunction!(default_cache_dir, m)?)?;
    Ok(())
}
