//! Diffing two listings into a plan: what to copy from source to target, what to delete.
//!
//! Both listings are sorted by path, so the diff is one merge pass; the plan holds indices, not
//! strings, so a million-entry diff costs a few MB on top of the listings.

use crate::engine::Control;
use crate::error::{Error, Result};
use crate::etag::{match_etag, parse_etag};
use crate::listing::{Entry, Listing};
use rayon::prelude::*;
use std::cmp::Ordering;

/// How to decide that a file is unchanged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compare {
    /// Same size and same digest (S3 ETags of another part size are checked by inference).
    Checksum,
    /// `aws s3 sync`'s rule: same size, and the source is not newer than the target (in whole
    /// seconds).
    SizeMtime,
    /// `aws s3 sync`'s rule for downloads: same size, and the target (a local file) is not
    /// newer than the source object (exactly, not in whole seconds). A download stamps the file with the object's
    /// Last-Modified, so a newer local file means a local edit, which is replaced.
    SizeMtimeDownload,
    /// Same size.
    Size,
}

impl Compare {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "checksum" => Ok(Compare::Checksum),
            "size-mtime" | "size_mtime" => Ok(Compare::SizeMtime),
            "size" => Ok(Compare::Size),
            other => Err(Error::InvalidValue(format!(
                "unknown comparison {other:?}; valid: checksum, size-mtime, size"
            ))),
        }
    }

    /// The rule for a download (a store to local files): only size-mtime differs.
    pub fn for_download(self) -> Self {
        match self {
            Compare::SizeMtime => Compare::SizeMtimeDownload,
            other => other,
        }
    }
}

/// The result of a diff.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indices into the source listing of the files to copy.
    pub copy: Vec<u32>,
    /// Indices into the target listing of the files only the target has.
    pub delete: Vec<u32>,
    pub unchanged: u64,
    pub copy_bytes: u64,
}

enum Verdict {
    Same,
    Differs,
    /// Digests are S3 ETags that may differ only by part size: read a local file to decide.
    Infer,
}

fn is_multipart_etag(d: &str) -> Option<bool> {
    parse_etag(d).ok().map(|p| p.parts.is_some())
}

fn judge(s: Entry<'_>, t: Entry<'_>, cmp: Compare, can_infer: bool) -> Verdict {
    if s.size != t.size {
        return Verdict::Differs;
    }
    match cmp {
        Compare::Size => Verdict::Same,
        Compare::SizeMtime => {
            // Whole seconds: S3 keeps Last-Modified in seconds, so a file uploaded in the
            // second it was written would otherwise look newer than its own copy forever.
            if s.mtime_ns.div_euclid(1_000_000_000) > t.mtime_ns.div_euclid(1_000_000_000) {
                Verdict::Differs
            } else {
                Verdict::Same
            }
        }
        Compare::SizeMtimeDownload => {
            // Exact, as aws compares: a download stamps the file with the object's
            // Last-Modified to the nanosecond, so only a later local write is newer.
            if t.mtime_ns > s.mtime_ns {
                Verdict::Differs
            } else {
                Verdict::Same
            }
        }
        Compare::Checksum => match (s.digest, t.digest) {
            (Some(a), Some(b)) if a == b => Verdict::Same,
            (Some(a), Some(b)) => {
                // Two ETags, at least one multipart: equal content can still give different
                // strings when the part sizes differ. Plain MD5s that differ really differ.
                match (is_multipart_etag(a), is_multipart_etag(b)) {
                    (Some(x), Some(y)) if (x || y) && can_infer => Verdict::Infer,
                    _ => Verdict::Differs,
                }
            }
            // A side without a digest cannot be proven equal; copying is the safe answer.
            _ => Verdict::Differs,
        },
    }
}

/// Diffs `source` against `target`.
pub fn diff(source: &Listing, target: &Listing, cmp: Compare, ctl: &Control) -> Result<Plan> {
    let can_infer = source.root.is_some() || target.root.is_some();
    let mut plan = Plan::default();
    let mut infer: Vec<(u32, u32)> = Vec::new();
    let (mut i, mut j) = (0usize, 0usize);
    let (n, m) = (source.len(), target.len());
    while i < n || j < m {
        let ord = match (i < n, j < m) {
            (true, true) => source.get(i).path.cmp(target.get(j).path),
            (true, false) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match ord {
            Ordering::Less => {
                plan.copy.push(i as u32);
                i += 1;
            }
            Ordering::Greater => {
                plan.delete.push(j as u32);
                j += 1;
            }
            Ordering::Equal => {
                match judge(source.get(i), target.get(j), cmp, can_infer) {
                    Verdict::Same => plan.unchanged += 1,
                    Verdict::Differs => plan.copy.push(i as u32),
                    Verdict::Infer => infer.push((i as u32, j as u32)),
                }
                i += 1;
                j += 1;
            }
        }
    }
    if !infer.is_empty() {
        // Read the local side and check it against the other side's ETag, in parallel.
        let verdicts: Vec<Result<bool>> = infer
            .par_iter()
            .map(|&(si, ti)| {
                let (s, t) = (source.get(si as usize), target.get(ti as usize));
                let (root, path, etag) = match (&source.root, &target.root) {
                    (Some(r), _) => (r, s.path, t.digest.unwrap_or_default()),
                    (None, Some(r)) => (r, t.path, s.digest.unwrap_or_default()),
                    (None, None) => unreachable!("inference needs a local side"),
                };
                match_etag(&root.join(path), etag, &[], ctl).map(|m| m.is_some())
            })
            .collect();
        for ((si, _), v) in infer.into_iter().zip(verdicts) {
            match v {
                Ok(true) => plan.unchanged += 1,
                Ok(false) => plan.copy.push(si),
                Err(Error::Cancelled) => return Err(Error::Cancelled),
                // Unreadable now: copying is the safe answer; the copy will report the error.
                Err(_) => plan.copy.push(si),
            }
        }
        plan.copy.sort_unstable();
    }
    plan.copy_bytes = plan.copy.iter().map(|&i| source.get(i as usize).size).sum();
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(items: &[(&'static str, u64, i64, Option<&'static str>)]) -> Listing {
        Listing::from_entries(items.iter().map(|&(p, s, m, d)| Entry {
            path: p,
            size: s,
            mtime_ns: m,
            digest: d,
        }))
        .unwrap()
    }

    #[test]
    fn merge_modes() {
        const S: i64 = 1_000_000_000;
        let src = listing(&[
            ("a", 1, 5 * S, Some("x")),
            ("b", 2, 5 * S, Some("y")),
            // Newer by nanoseconds only: the same whole second, so not newer.
            ("c", 3, 9 * S + 5, Some("z")),
        ]);
        let dst = listing(&[
            ("b", 2, S, Some("y")),
            ("c", 3, 9 * S, Some("q")),
            ("d", 4, 0, None),
        ]);
        let ctl = Control::default();
        let p = diff(&src, &dst, Compare::Checksum, &ctl).unwrap();
        assert_eq!(
            (p.copy.clone(), p.delete.clone(), p.unchanged),
            (vec![0, 2], vec![2], 1)
        );
        assert_eq!(p.copy_bytes, 4);
        let p = diff(&src, &dst, Compare::SizeMtime, &ctl).unwrap();
        assert_eq!((p.copy, p.unchanged), (vec![0, 1], 1)); // b is newer at the source
                                                            // Downloading, the target's newer copy (a local edit) is what gets replaced.
        let newer_target = listing(&[("b", 2, 9 * S, Some("y")), ("c", 3, 9 * S, Some("q"))]);
        let p = diff(&src, &newer_target, Compare::SizeMtimeDownload, &ctl).unwrap();
        assert_eq!((p.copy, p.unchanged), (vec![0, 1], 1)); // b: local newer; c: older
        let p = diff(&src, &dst, Compare::SizeMtimeDownload, &ctl).unwrap();
        assert_eq!((p.copy, p.unchanged), (vec![0], 2)); // the object is newer: kept
        let p = diff(&src, &dst, Compare::Size, &ctl).unwrap();
        assert_eq!((p.copy, p.unchanged), (vec![0], 2));
        let p = diff(&src, &src, Compare::Checksum, &ctl).unwrap();
        assert!(p.copy.is_empty() && p.delete.is_empty());
        assert!(Compare::from_name("mtime").is_err());
    }
}
