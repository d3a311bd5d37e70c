//! A compact, sorted list of files: the result of a scan and the input of a diff.
//!
//! Paths and digests live in two string arenas with `u32` end offsets, so an entry costs its
//! path and digest bytes plus 24 bytes; a million entries with ETag digests take about 100 MB,
//! where a `Vec` of structs holding `String`s would take more than twice that.

use crate::error::{Error, Result};
use crate::state::StateUnavailable;
use std::path::PathBuf;

/// One file of a listing, borrowed from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// Relative path with `/` separators.
    pub path: &'a str,
    pub size: u64,
    pub mtime_ns: i64,
    /// Lowercase hex digest (an ETag may end in `-N`), if one was computed.
    pub digest: Option<&'a str>,
}

/// Counters of a scan.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScanStats {
    pub files: u64,
    pub bytes: u64,
    pub dirs: u64,
    pub excluded: u64,
    pub symlinks_skipped: u64,
    /// hashsync's own lock files (and temporaries of other kinds than regular files).
    pub internal_skipped: u64,
    pub special_skipped: u64,
    pub digests_computed: u64,
    pub digests_reused: u64,
    pub bytes_hashed: u64,
    pub errors: u64,
}

/// A sorted listing of files.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Where the files are, for listings of local directories (diff reads them to check ETags
    /// of another part size).
    pub root: Option<PathBuf>,
    /// The algorithm of the digests, if any.
    pub algorithm: Option<String>,
    paths: String,
    path_ends: Vec<u32>,
    sizes: Vec<u64>,
    mtimes: Vec<i64>,
    digests: String,
    digest_ends: Vec<u32>,
    /// Paths that could not be listed or hashed, with the reason.
    pub errors: Vec<(String, String)>,
    /// Directories with no entries at all (for `tree_hash`).
    pub empty_dirs: Vec<String>,
    /// hashsync's temporary files seen by the scan (never listed as entries), so that a
    /// caller can remove those that crashed writers left.
    pub temporaries: Vec<String>,
    /// The symbolic links the scan met: skipped ones when it does not follow links (what a
    /// sync reports and protects), followed ones when it does (where reads may pass a link).
    pub symlinks: Vec<String>,
    pub stats: ScanStats,
    /// Set when the scan was asked to use the hash state cache and could not.
    pub state_unavailable: Option<StateUnavailable>,
}

fn offset(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| {
        Error::InvalidValue("listing too large: paths or digests exceed 4 GiB".to_string())
    })
}

impl Listing {
    pub fn len(&self) -> usize {
        self.sizes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sizes.is_empty()
    }

    pub fn get(&self, i: usize) -> Entry<'_> {
        let p0 = if i == 0 {
            0
        } else {
            self.path_ends[i - 1] as usize
        };
        let d0 = if i == 0 {
            0
        } else {
            self.digest_ends[i - 1] as usize
        };
        let d1 = self.digest_ends[i] as usize;
        Entry {
            path: &self.paths[p0..self.path_ends[i] as usize],
            size: self.sizes[i],
            mtime_ns: self.mtimes[i],
            digest: (d1 > d0).then(|| &self.digests[d0..d1]),
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = Entry<'_>> + '_ {
        (0..self.len()).map(|i| self.get(i))
    }

    /// Whether both hold the same entries (paths, sizes, mtimes, digests), whatever else
    /// differs (errors, stats, root): a memory comparison, however many entries.
    pub fn same_entries(&self, other: &Listing) -> bool {
        self.paths == other.paths
            && self.path_ends == other.path_ends
            && self.sizes == other.sizes
            && self.mtimes == other.mtimes
            && self.digests == other.digests
            && self.digest_ends == other.digest_ends
    }

    /// Index of `path`, by binary search.
    pub fn find(&self, path: &str) -> Option<usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).path.cmp(path) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(mid),
            }
        }
        None
    }

    /// The entries whose paths start with `prefix` (only those with no further `/` when
    /// `shallow`), as a listing of the same root and algorithm: one segment of a sync.
    /// Errors, empty directories and temporaries are not carried over.
    pub fn select(&self, prefix: &str, shallow: bool) -> Listing {
        let start = {
            let (mut lo, mut hi) = (0, self.len());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if self.get(mid).path < prefix {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        let mut out = Listing {
            root: self.root.clone(),
            algorithm: self.algorithm.clone(),
            ..Default::default()
        };
        for i in start..self.len() {
            let e = self.get(i);
            let Some(rest) = e.path.strip_prefix(prefix) else {
                break;
            };
            if shallow && rest.contains('/') {
                continue;
            }
            // A slice of a valid listing: sorted, unique, and smaller than it.
            out.push(e)
                .expect("a slice of a listing fits where the listing did");
        }
        out
    }

    fn push(&mut self, e: Entry<'_>) -> Result<()> {
        self.paths.push_str(e.path);
        self.path_ends.push(offset(self.paths.len())?);
        self.sizes.push(e.size);
        self.mtimes.push(e.mtime_ns);
        if let Some(d) = e.digest {
            self.digests.push_str(d);
        }
        self.digest_ends.push(offset(self.digests.len())?);
        Ok(())
    }

    /// Builds a listing from entries in any order. Paths must be unique.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = Entry<'a>>) -> Result<Self> {
        let mut v: Vec<Entry<'a>> = entries.into_iter().collect();
        v.sort_unstable_by(|a, b| a.path.cmp(b.path));
        if let Some(w) = v.windows(2).find(|w| w[0].path == w[1].path) {
            return Err(Error::InvalidValue(format!(
                "duplicate path in listing: {:?}",
                w[0].path
            )));
        }
        let mut l = Listing::default();
        l.reserve(v.len(), v.iter().map(|e| e.path.len()).sum(), 0);
        for e in v {
            l.push(e)?;
        }
        Ok(l)
    }

    fn reserve(&mut self, n: usize, path_bytes: usize, digest_bytes: usize) {
        self.paths.reserve_exact(path_bytes);
        self.path_ends.reserve_exact(n);
        self.sizes.reserve_exact(n);
        self.mtimes.reserve_exact(n);
        self.digests.reserve_exact(digest_bytes);
        self.digest_ends.reserve_exact(n);
    }

    /// Builds a listing from already sorted, unique owned entries (the scanner's output).
    pub(crate) fn from_sorted(entries: &[(String, u64, i64, Option<String>)]) -> Result<Self> {
        let mut l = Listing::default();
        l.reserve(
            entries.len(),
            entries.iter().map(|e| e.0.len()).sum(),
            entries
                .iter()
                .map(|e| e.3.as_ref().map_or(0, |d| d.len()))
                .sum(),
        );
        for (p, s, m, d) in entries {
            l.push(Entry {
                path: p,
                size: *s,
                mtime_ns: *m,
                digest: d.as_deref(),
            })?;
        }
        Ok(l)
    }

    /// Appends an entry whose path sorts after every path already present.
    pub fn push_sorted(&mut self, e: Entry<'_>) -> Result<()> {
        if let Some(last) = self.len().checked_sub(1) {
            if self.get(last).path >= e.path {
                return Err(Error::InvalidValue(format!(
                    "entries out of order or duplicated: {:?} after {:?}",
                    e.path,
                    self.get(last).path
                )));
            }
        }
        self.push(e)
    }

    /// Pre-allocates room for `n` more entries with the given total path and digest bytes.
    pub fn reserve_for(&mut self, n: usize, path_bytes: usize, digest_bytes: usize) {
        self.reserve(n, path_bytes, digest_bytes);
    }

    /// Approximate heap bytes used by the entries.
    pub fn heap_bytes(&self) -> usize {
        self.paths.capacity()
            + self.digests.capacity()
            + 4 * (self.path_ends.capacity() + self.digest_ends.capacity())
            + 8 * (self.sizes.capacity() + self.mtimes.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_compact_round_trip() {
        let e = |p, s, d| Entry {
            path: p,
            size: s,
            mtime_ns: 7,
            digest: d,
        };
        let l = Listing::from_entries(vec![
            e("b", 2, None),
            e("a/x", 1, Some("ff")),
            e("a", 3, None),
        ])
        .unwrap();
        let got: Vec<_> = l.iter().map(|e| (e.path, e.size, e.digest)).collect();
        assert_eq!(
            got,
            vec![("a", 3, None), ("a/x", 1, Some("ff")), ("b", 2, None)]
        );
        assert_eq!(l.find("a/x"), Some(1));
        assert_eq!(l.find("c"), None);
        assert!(Listing::from_entries(vec![e("a", 1, None), e("a", 2, None)]).is_err());
    }

    #[test]
    fn select_takes_one_segment() {
        let e = |p| Entry {
            path: p,
            size: 1,
            mtime_ns: 7,
            digest: Some("ab"),
        };
        let l =
            Listing::from_entries(["a.txt", "a/b.txt", "a/b/c", "a/d", "a0", "b/x", "top"].map(e))
                .unwrap();
        let paths = |s: Listing| s.iter().map(|e| e.path.to_string()).collect::<Vec<_>>();
        assert_eq!(paths(l.select("a/", false)), ["a/b.txt", "a/b/c", "a/d"]);
        assert_eq!(paths(l.select("a/", true)), ["a/b.txt", "a/d"]);
        assert_eq!(paths(l.select("", true)), ["a.txt", "a0", "top"]);
        assert_eq!(paths(l.select("", false)).len(), 7);
        assert!(l.select("zz/", false).is_empty());
        assert_eq!(l.select("a/b/", false).get(0).digest, Some("ab"));
    }
}
