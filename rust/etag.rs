//! Checking a file against an S3 ETag whose part size is unknown.
//!
//! A multipart ETag `<md5>-N` only says how many parts there were. The part size p must satisfy
//! ceil(size / p) = N, and in practice it is one of a handful of values that tools use. All
//! plausible candidates are hashed in a single read of the file, each 1 MiB buffer feeding every
//! candidate's MD5 (in parallel when there are several).

use crate::engine::{read_full, Control, READ_BUF};
use crate::error::{Error, Result};
use crate::hash::{multipart_etag, to_hex, MAX_PART_SIZE, MIB};
use md5::Digest as _;
use std::fs::File;
use std::path::Path;
use std::sync::atomic::Ordering;

/// An S3 ETag split into its MD5 hex and, for multipart uploads, the part count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParsedEtag {
    pub md5_hex: String,
    pub parts: Option<u64>,
}

/// Parses `"<32 hex>"` or `"<32 hex>-N"`, with or without surrounding quotes (and a `W/`
/// weak prefix, which some proxies add).
pub fn parse_etag(etag: &str) -> Result<ParsedEtag> {
    let s = etag.trim();
    let s = s.strip_prefix("W/").unwrap_or(s);
    let s = s.trim_matches('"');
    let (hex, parts) = match s.split_once('-') {
        Some((h, n)) => {
            let n: u64 = n.parse().map_err(|_| bad_etag(etag))?;
            if n == 0 || n > crate::hash::MAX_PARTS {
                return Err(bad_etag(etag));
            }
            (h, Some(n))
        }
        None => (s, None),
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad_etag(etag));
    }
    Ok(ParsedEtag {
        md5_hex: hex.to_ascii_lowercase(),
        parts,
    })
}

fn bad_etag(etag: &str) -> Error {
    Error::InvalidValue(format!(
        "{etag:?} is not an S3 ETag (expected 32 hex digits, optionally followed by -N)"
    ))
}

/// Part sizes worth trying for an object of `size` bytes uploaded in `parts` parts: the sizes
/// that common tools use (5 MiB: aws-sdk minimum and rclone; 8 MiB and its doublings:
/// s3transfer/awscli, which double the part size until the object fits in 10,000 parts;
/// 15/16/50/64/100 MiB: other SDKs and tools), the even split ceil(size/N) exactly and rounded
/// up to a MiB, and the caller's own guesses. Only sizes that really give `parts` parts are kept.
pub fn candidate_part_sizes(size: u64, parts: u64, extra: &[u64]) -> Vec<u64> {
    if parts == 1 {
        // Every part size >= size gives the same single part; one representative suffices.
        return vec![size.max(1)];
    }
    let even = size.div_ceil(parts);
    let mut c: Vec<u64> = vec![5 * MIB, 15 * MIB, 16 * MIB, 50 * MIB, 64 * MIB, 100 * MIB];
    let mut p = 8 * MIB;
    while p <= MAX_PART_SIZE {
        c.push(p);
        p *= 2;
    }
    c.push(even);
    c.push(even.div_ceil(MIB) * MIB);
    c.extend_from_slice(extra);
    c.retain(|&p| p > 0 && size.div_ceil(p) == parts);
    c.sort_unstable();
    c.dedup();
    c
}

/// One candidate's running multipart MD5.
struct Candidate {
    part_size: u64,
    part: md5::Md5,
    part_len: u64,
    parts: Vec<[u8; 16]>,
}

impl Candidate {
    fn update(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let take = ((self.part_size - self.part_len) as usize).min(data.len());
            self.part.update(&data[..take]);
            self.part_len += take as u64;
            data = &data[take..];
            if self.part_len == self.part_size {
                self.parts.push(self.part.finalize_reset().into());
                self.part_len = 0;
            }
        }
    }

    fn finalize(mut self) -> String {
        if self.part_len > 0 || self.parts.is_empty() {
            self.parts.push(self.part.finalize().into());
        }
        multipart_etag(&self.parts)
    }
}

/// Finds the part size with which `path` has the ETag `etag`.
///
/// Returns `Some(0)` when a single-part ETag matches the file's MD5, `Some(p)` when a multipart
/// ETag matches with part size `p`, and `None` when nothing matches.
pub fn match_etag(
    path: &Path,
    etag: &str,
    extra_part_sizes: &[u64],
    ctl: &Control,
) -> Result<Option<u64>> {
    let parsed = parse_etag(etag)?;
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let meta = file.metadata().map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Err(Error::IsADirectory(path.to_path_buf()));
    }
    let size = meta.len();
    let mut whole: Option<md5::Md5> = None;
    let mut cands: Vec<Candidate> = Vec::new();
    match parsed.parts {
        None => whole = Some(md5::Md5::new()),
        Some(n) => {
            cands = candidate_part_sizes(size, n, extra_part_sizes)
                .into_iter()
                .map(|p| Candidate {
                    part_size: p,
                    part: md5::Md5::new(),
                    part_len: 0,
                    parts: vec![],
                })
                .collect();
            if cands.is_empty() {
                return Ok(None);
            }
        }
    }
    ctl.total_bytes.store(size, Ordering::Relaxed);
    let mut buf = vec![0u8; READ_BUF];
    let mut pos = 0u64;
    while pos < size {
        if ctl.cancelled() {
            return Err(Error::Cancelled);
        }
        let want = ((size - pos) as usize).min(buf.len());
        read_full(&file, path, size, &mut buf[..want], pos)?;
        let n = want;
        let chunk = &buf[..n];
        if let Some(w) = whole.as_mut() {
            w.update(chunk);
        }
        if cands.len() > 1 {
            use rayon::prelude::*;
            cands.par_iter_mut().for_each(|c| c.update(chunk));
        } else if let Some(c) = cands.first_mut() {
            c.update(chunk);
        }
        pos += n as u64;
        ctl.done_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
    if let Some(w) = whole {
        return Ok((to_hex(&w.finalize()) == parsed.md5_hex).then_some(0));
    }
    let want = format!("{}-{}", parsed.md5_hex, parsed.parts.unwrap_or(0));
    Ok(cands.into_iter().find_map(|c| {
        let p = c.part_size;
        (c.finalize() == want).then_some(p)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{hash_bytes, Algorithm, PartRule};
    use std::io::Write;

    #[test]
    fn parse() {
        let h = "d41d8cd98f00b204e9800998ecf8427e";
        assert_eq!(parse_etag(&format!("\"{h}\"")).unwrap().parts, None);
        assert_eq!(
            parse_etag(&format!("{}-12", h.to_uppercase()))
                .unwrap()
                .parts,
            Some(12)
        );
        assert!(parse_etag("abc").is_err());
        assert!(parse_etag(&format!("{h}-0")).is_err());
        assert!(parse_etag(&format!("{h}-x")).is_err());
    }

    #[test]
    fn candidates_are_valid_and_include_common_sizes() {
        let size = 100 * MIB + 3;
        let c = candidate_part_sizes(size, 13, &[]);
        assert!(c.contains(&(8 * MIB)));
        assert!(c.iter().all(|&p| size.div_ceil(p) == 13));
        assert_eq!(candidate_part_sizes(size, 1, &[]), vec![size]);
        assert!(candidate_part_sizes(10, 3, &[4]).contains(&4));
    }

    #[test]
    fn matches_other_part_sizes_in_one_pass() {
        let d = std::env::temp_dir().join(format!("hashsync-etag-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        let data: Vec<u8> = (0..(21 * MIB + 5)).map(|i| (i % 253) as u8).collect();
        std::fs::File::create(&p).unwrap().write_all(&data).unwrap();
        let ctl = Control::default();
        for part in [5 * MIB, 8 * MIB, 16 * MIB] {
            let e = hash_bytes(&data, Algorithm::Etag, PartRule::new(part, None).unwrap());
            assert_eq!(match_etag(&p, &e, &[], &ctl).unwrap(), Some(part), "{e}");
        }
        // An unusual part size is found only when the caller suggests it.
        let odd = 6 * MIB + 17;
        let e = hash_bytes(&data, Algorithm::Etag, PartRule::new(odd, None).unwrap());
        assert_eq!(match_etag(&p, &e, &[], &ctl).unwrap(), None);
        assert_eq!(match_etag(&p, &e, &[odd], &ctl).unwrap(), Some(odd));
        let md5 = hash_bytes(&data, Algorithm::Md5, PartRule::default());
        assert_eq!(match_etag(&p, &md5, &[], &ctl).unwrap(), Some(0));
        let mut flipped = data.clone();
        flipped[12345] ^= 1;
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&flipped)
            .unwrap();
        assert_eq!(match_etag(&p, &md5, &[], &ctl).unwrap(), None);
        std::fs::remove_dir_all(d).unwrap();
    }
}
