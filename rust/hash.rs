//! Algorithms, the streaming [`Hasher`], and the S3 multipart rules behind the `etag` algorithm.
//!
//! Digests are lowercase hex. CRCs are the hex of the big-endian value (crc32 of
//! `b"123456789"` is `cbf43926`), zero-padded to the CRC's width; xxh3 is XXH3-64 printed the
//! same way, matching the `xxhash` package's `xxh3_64_hexdigest`.

use crate::error::{Error, Result};
use crc_fast::CrcAlgorithm;
use md5::Digest as _;

pub const KIB: u64 = 1024;
pub const MIB: u64 = 1024 * KIB;
pub const GIB: u64 = 1024 * MIB;
/// The part size hashsync uploads with, and the default for `etag` (s3transfer uses 8 MiB too).
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// S3's smallest part (every part but the last must be at least this big).
pub const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest part.
pub const MAX_PART_SIZE: u64 = 5 * GIB;
/// S3's limit on the number of parts of one multipart upload.
pub const MAX_PARTS: u64 = 10_000;

/// A hash algorithm hashsync can compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
    Crc32,
    Crc32c,
    Crc64Nvme,
    Blake3,
    Xxh3,
    /// The S3 ETag: MD5 for single-part objects, MD5 of the part MD5s plus `-N` for multipart.
    Etag,
}

impl Algorithm {
    pub const ALL: [Algorithm; 9] = [
        Algorithm::Md5,
        Algorithm::Sha1,
        Algorithm::Sha256,
        Algorithm::Crc32,
        Algorithm::Crc32c,
        Algorithm::Crc64Nvme,
        Algorithm::Blake3,
        Algorithm::Xxh3,
        Algorithm::Etag,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "md5",
            Algorithm::Sha1 => "sha1",
            Algorithm::Sha256 => "sha256",
            Algorithm::Crc32 => "crc32",
            Algorithm::Crc32c => "crc32c",
            Algorithm::Crc64Nvme => "crc64nvme",
            Algorithm::Blake3 => "blake3",
            Algorithm::Xxh3 => "xxh3",
            Algorithm::Etag => "etag",
        }
    }

    /// Parses a name case-insensitively; the error lists the valid names.
    pub fn from_name(name: &str) -> Result<Self> {
        let lower = name.trim().to_ascii_lowercase();
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == lower)
            .ok_or_else(|| Error::UnknownAlgorithm(name.to_string()))
    }

    /// The crc-fast algorithm behind a CRC, `None` for the others.
    pub fn crc(self) -> Option<CrcAlgorithm> {
        match self {
            Algorithm::Crc32 => Some(CrcAlgorithm::Crc32IsoHdlc),
            Algorithm::Crc32c => Some(CrcAlgorithm::Crc32Iscsi),
            Algorithm::Crc64Nvme => Some(CrcAlgorithm::Crc64Nvme),
            _ => None,
        }
    }

    /// Width of a CRC in hex digits (8 or 16).
    pub(crate) fn crc_hex_width(self) -> usize {
        if self == Algorithm::Crc64Nvme {
            16
        } else {
            8
        }
    }
}

/// How a byte stream is cut into S3 parts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartRule {
    pub part_size: u64,
    /// Objects of at least this many bytes are multipart (s3transfer's `multipart_threshold`).
    pub threshold: u64,
}

impl Default for PartRule {
    fn default() -> Self {
        PartRule {
            part_size: DEFAULT_PART_SIZE,
            threshold: DEFAULT_PART_SIZE,
        }
    }
}

impl PartRule {
    /// A rule with S3's limits checked; `threshold` defaults to the part size.
    pub fn new(part_size: u64, threshold: Option<u64>) -> Result<Self> {
        validate_part_size(part_size)?;
        let threshold = threshold.unwrap_or(part_size);
        if threshold == 0 {
            return Err(Error::InvalidPartSize(
                "multipart threshold must be at least 1 byte".to_string(),
            ));
        }
        Ok(PartRule {
            part_size,
            threshold,
        })
    }

    /// The part size an object of `size` bytes is uploaded with: the rule's part size,
    /// doubled until the object fits in S3's 10,000 parts (what s3transfer and so aws-cli do,
    /// so a 100 GiB file gets 16 MiB parts and the ETag both tools predict is the same).
    pub fn part_size_for(&self, size: u64) -> u64 {
        let mut part = self.part_size;
        while size.div_ceil(part) > MAX_PARTS {
            part = part.saturating_mul(2);
        }
        part
    }

    /// Number of parts an object of `size` bytes is uploaded in; 0 means a single PUT
    /// (plain MD5 ETag). An empty object is always a single PUT.
    pub fn parts(&self, size: u64) -> u64 {
        if size == 0 || size < self.threshold {
            0
        } else {
            size.div_ceil(self.part_size_for(size))
        }
    }

    /// Like [`PartRule::parts`], but fails when S3 would refuse the upload: parts would have
    /// to be larger than 5 GiB (an object of more than about 48 TiB; S3 itself stops at 5 TiB).
    pub fn checked_parts(&self, size: u64) -> Result<u64> {
        let n = self.parts(size);
        let part = self.part_size_for(size);
        if n > 0 && part > MAX_PART_SIZE {
            return Err(Error::InvalidPartSize(format!(
                "a {size}-byte object would need parts of {part} bytes to fit in S3's \
                 {MAX_PARTS} parts, above S3's maximum part size of 5 GiB"
            )));
        }
        Ok(n)
    }
}

/// Checks a part size against S3's limits, naming the rule that is broken.
pub fn validate_part_size(part_size: u64) -> Result<()> {
    if part_size < MIN_PART_SIZE {
        return Err(Error::InvalidPartSize(format!(
            "part size {part_size} is below S3's minimum part size of 5 MiB ({MIN_PART_SIZE} bytes)"
        )));
    }
    if part_size > MAX_PART_SIZE {
        return Err(Error::InvalidPartSize(format!(
            "part size {part_size} is above S3's maximum part size of 5 GiB ({MAX_PART_SIZE} bytes)"
        )));
    }
    Ok(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of a byte string.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Hex of an integer digest, zero-padded to `width` digits (big-endian, like zlib prints).
/// The CRC of `a` followed by `b`, from the CRCs of each (hex, as hashsync prints them) and
/// the length of `b`: what lets parts hashed separately (or out of order) be checked as a whole.
pub fn crc_combine(alg: Algorithm, first: &str, second: &str, second_len: u64) -> Result<String> {
    let crc = alg.crc().ok_or_else(|| {
        Error::InvalidValue(format!(
            "{} is not a CRC; combinable: crc32, crc32c, crc64nvme",
            alg.name()
        ))
    })?;
    let width = alg.crc_hex_width();
    let parse = |text: &str| {
        let text = text.trim();
        if text.is_empty() || text.len() > width {
            return Err(Error::InvalidValue(format!(
                "{text:?} is not a {width}-digit hex {}",
                alg.name()
            )));
        }
        u64::from_str_radix(text, 16)
            .map_err(|_| Error::InvalidValue(format!("{text:?} is not a hex {}", alg.name())))
    };
    let combined = crc_fast::checksum_combine(crc, parse(first)?, parse(second)?, second_len);
    Ok(int_hex(combined, width))
}

pub fn int_hex(value: u64, width: usize) -> String {
    format!("{value:0width$x}")
}

/// The final ETag of a multipart object from its part MD5s.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut h = md5::Md5::new();
    for d in part_md5s {
        h.update(d);
    }
    format!("{}-{}", to_hex(&h.finalize()), part_md5s.len())
}

/// Streaming ETag state for data whose length is not known in advance.
#[derive(Clone)]
pub(crate) struct EtagState {
    rule: PartRule,
    part: md5::Md5,
    part_len: u64,
    parts: Vec<[u8; 16]>,
    /// MD5 of everything so far, kept only while the total is below the threshold, because
    /// below it the ETag is the plain MD5 even when the threshold is larger than the part size.
    whole: Option<md5::Md5>,
    total: u64,
}

impl EtagState {
    pub(crate) fn new(rule: PartRule) -> Self {
        let whole = (rule.threshold > rule.part_size).then(md5::Md5::new);
        EtagState {
            rule,
            part: md5::Md5::new(),
            part_len: 0,
            parts: Vec::new(),
            whole,
            total: 0,
        }
    }

    fn update(&mut self, mut data: &[u8]) {
        if let Some(w) = self.whole.as_mut() {
            w.update(data);
            if self.total + data.len() as u64 >= self.rule.threshold {
                self.whole = None;
            }
        }
        self.total += data.len() as u64;
        while !data.is_empty() {
            let room = (self.rule.part_size - self.part_len) as usize;
            let take = room.min(data.len());
            self.part.update(&data[..take]);
            self.part_len += take as u64;
            data = &data[take..];
            if self.part_len == self.rule.part_size {
                self.parts.push(self.part.finalize_reset().into());
                self.part_len = 0;
            }
        }
    }

    fn finalize(mut self) -> String {
        if self.rule.parts(self.total) == 0 {
            return match self.whole {
                Some(w) => to_hex(&w.finalize()),
                // threshold == part size and total < part size: the open part is everything.
                None => to_hex(&self.part.finalize()),
            };
        }
        if self.part_len > 0 {
            self.parts.push(self.part.finalize().into());
        }
        multipart_etag(&self.parts)
    }
}

#[derive(Clone)]
enum State {
    Md5(md5::Md5),
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Crc(crc_fast::Digest),
    Blake3(Box<blake3::Hasher>),
    Xxh3(Box<xxhash_rust::xxh3::Xxh3>),
    Etag(Box<EtagState>),
}

/// A streaming hasher for one algorithm.
#[derive(Clone)]
pub struct Hasher {
    algorithm: Algorithm,
    state: State,
}

impl Hasher {
    /// A hasher; `rule` only matters for `etag`.
    pub fn new(algorithm: Algorithm, rule: PartRule) -> Self {
        let state = match algorithm {
            Algorithm::Md5 => State::Md5(md5::Md5::new()),
            Algorithm::Sha1 => State::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => State::Sha256(sha2::Sha256::new()),
            Algorithm::Crc32 | Algorithm::Crc32c | Algorithm::Crc64Nvme => {
                State::Crc(crc_fast::Digest::new(algorithm.crc().expect("a CRC")))
            }
            Algorithm::Blake3 => State::Blake3(Box::new(blake3::Hasher::new())),
            Algorithm::Xxh3 => State::Xxh3(Box::new(xxhash_rust::xxh3::Xxh3::new())),
            Algorithm::Etag => State::Etag(Box::new(EtagState::new(rule))),
        };
        Hasher { algorithm, state }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn update(&mut self, data: &[u8]) {
        match &mut self.state {
            State::Md5(h) => h.update(data),
            State::Sha1(h) => h.update(data),
            State::Sha256(h) => h.update(data),
            State::Crc(h) => h.update(data),
            State::Blake3(h) => {
                h.update(data);
            }
            State::Xxh3(h) => h.update(data),
            State::Etag(h) => h.update(data),
        }
    }

    /// The raw value of a CRC state (for combining chunk CRCs); `None` for other algorithms.
    pub(crate) fn crc_value(&self) -> Option<u64> {
        match &self.state {
            State::Crc(h) => Some(h.finalize()),
            _ => None,
        }
    }

    /// The raw 16-byte MD5 (for ETag parts); `None` for other algorithms.
    pub(crate) fn md5_bytes(self) -> Option<[u8; 16]> {
        match self.state {
            State::Md5(h) => Some(h.finalize().into()),
            _ => None,
        }
    }

    /// The digest as lowercase hex.
    pub fn finalize(self) -> String {
        let algorithm = self.algorithm;
        match self.state {
            State::Md5(h) => to_hex(&h.finalize()),
            State::Sha1(h) => to_hex(&h.finalize()),
            State::Sha256(h) => to_hex(&h.finalize()),
            State::Crc(h) => int_hex(h.finalize(), algorithm.crc_hex_width()),
            State::Blake3(h) => h.finalize().to_hex().to_string(),
            State::Xxh3(h) => int_hex(h.digest(), 16),
            State::Etag(h) => h.finalize(),
        }
    }
}

/// One-shot digest of an in-memory buffer.
pub fn hash_bytes(data: &[u8], algorithm: Algorithm, rule: PartRule) -> String {
    let mut h = Hasher::new(algorithm, rule);
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: &[u8] = b"123456789";

    fn hb(alg: &str, data: &[u8]) -> String {
        hash_bytes(
            data,
            Algorithm::from_name(alg).unwrap(),
            PartRule::default(),
        )
    }

    #[test]
    fn crc_combine_equals_the_crc_of_the_concatenation() {
        for name in ["crc32", "crc32c", "crc64nvme"] {
            let alg = Algorithm::from_name(name).unwrap();
            let (a, b) = (&CHECK[..4], &CHECK[4..]);
            let joined = crc_combine(alg, &hb(name, a), &hb(name, b), b.len() as u64).unwrap();
            assert_eq!(joined, hb(name, CHECK), "{name}");
        }
        let sha = Algorithm::from_name("sha256").unwrap();
        assert!(crc_combine(sha, "00", "00", 1).is_err());
        let crc = Algorithm::from_name("crc32").unwrap();
        assert!(crc_combine(crc, "xyz", "00", 1).is_err());
        assert!(crc_combine(crc, "123456789", "00", 1).is_err());
    }

    #[test]
    fn published_check_values() {
        assert_eq!(hb("crc32", CHECK), "cbf43926");
        assert_eq!(hb("crc32c", CHECK), "e3069283");
        assert_eq!(hb("crc64nvme", CHECK), "ae8b14860a799888");
        assert_eq!(hb("md5", b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(hb("md5", b"abc"), "900150983cd24fb0d6963f7d28e17f72");
        assert_eq!(
            hb("sha1", b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        assert_eq!(
            hb("sha256", b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hb("blake3", b""),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        assert_eq!(hb("xxh3", b""), "2d06800538d394c2");
        assert_eq!(hb("crc32", b""), "00000000");
    }

    #[test]
    fn names_round_trip_and_unknown_lists_valid() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name()).unwrap(), a);
        }
        assert_eq!(Algorithm::from_name("SHA256").unwrap(), Algorithm::Sha256);
        let msg = Algorithm::from_name("sha3").unwrap_err().to_string();
        assert!(msg.contains("sha3") && msg.contains("crc64nvme"), "{msg}");
    }

    #[test]
    fn etag_single_and_multipart() {
        let rule = PartRule::new(5 * MIB, None).unwrap();
        let small = vec![7u8; 1000];
        assert_eq!(hash_bytes(&small, Algorithm::Etag, rule), hb("md5", &small));
        // Exactly one part: s3transfer uploads size >= threshold as multipart.
        let one = vec![1u8; (5 * MIB) as usize];
        let part = md5::Md5::digest(&one);
        assert_eq!(
            hash_bytes(&one, Algorithm::Etag, rule),
            multipart_etag(&[part.into()])
        );
        assert!(hash_bytes(&one, Algorithm::Etag, rule).ends_with("-1"));
        let data: Vec<u8> = (0..(11 * MIB)).map(|i| (i * 31 % 251) as u8).collect();
        let parts: Vec<[u8; 16]> = data
            .chunks((5 * MIB) as usize)
            .map(|c| md5::Md5::digest(c).into())
            .collect();
        assert_eq!(
            hash_bytes(&data, Algorithm::Etag, rule),
            multipart_etag(&parts)
        );
        // Feeding in odd-sized pieces gives the same answer.
        let mut h = Hasher::new(Algorithm::Etag, rule);
        for c in data.chunks(777_777) {
            h.update(c);
        }
        assert_eq!(h.finalize(), multipart_etag(&parts));
    }

    #[test]
    fn etag_threshold_above_part_size() {
        let rule = PartRule::new(5 * MIB, Some(16 * MIB)).unwrap();
        let data = vec![3u8; (10 * MIB) as usize];
        assert_eq!(hash_bytes(&data, Algorithm::Etag, rule), hb("md5", &data));
        let big = vec![3u8; (16 * MIB) as usize];
        assert!(hash_bytes(&big, Algorithm::Etag, rule).ends_with("-4"));
        assert_eq!(hash_bytes(b"", Algorithm::Etag, rule), hb("md5", b""));
    }

    #[test]
    fn part_size_rules_are_named() {
        assert!(PartRule::new(MIB, None)
            .unwrap_err()
            .to_string()
            .contains("minimum"));
        assert!(PartRule::new(6 * GIB, None)
            .unwrap_err()
            .to_string()
            .contains("maximum"));
        let rule = PartRule::new(5 * MIB, None).unwrap();
        assert_eq!(rule.checked_parts(5 * MIB * 10_000).unwrap(), 10_000);
        let err = PartRule::new(5 * GIB, None)
            .unwrap()
            .checked_parts(5 * GIB * 10_001)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("10000 parts") && err.contains("5 GiB"),
            "{err}"
        );
    }

    #[test]
    fn part_size_doubles_past_ten_thousand_parts_as_s3transfer() {
        // s3transfer's ChunksizeAdjuster: double until ceil(size / part) <= 10,000.
        let rule = PartRule::new(8 * MIB, None).unwrap();
        assert_eq!(rule.part_size_for(8 * MIB * 10_000), 8 * MIB);
        assert_eq!(rule.part_size_for(8 * MIB * 10_000 + 1), 16 * MIB);
        assert_eq!(rule.parts(8 * MIB * 10_000 + 1), 5_001);
        assert_eq!(rule.part_size_for(100 * GIB), 16 * MIB);
        assert_eq!(rule.part_size_for(400 * GIB), 64 * MIB);
        assert_eq!(rule.checked_parts(400 * GIB).unwrap(), 6_400);
        let five = PartRule::new(5 * MIB, None).unwrap();
        assert_eq!(five.part_size_for(5 * MIB * 10_001), 10 * MIB);
    }
}
