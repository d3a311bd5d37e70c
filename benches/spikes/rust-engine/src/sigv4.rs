//! AWS Signature Version 4 for S3 (header-based), ported from `python/hashsync/storage/_sigv4.py`
//! line by line, plus the small encoders S3 needs (hex, base64, URI encoding, x-amz-date).
//!
//! `sign` takes the same inputs as the Python `sign` and returns the same headers; the spike's
//! `sign` subcommand prints them so `benches/spikes/rust_spike.py --check-signer` can compare
//! the two byte for byte.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Headers botocore leaves unsigned (proxies and HTTP stacks may change them).
const UNSIGNED: &[&str] = &[
    "authorization",
    "baggage",
    "connection",
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "traceparent",
    "tracestate",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "x-amzn-trace-id",
];

#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub token: Option<String>,
}

/// Signs requests; caches the day's signing key (four HMACs) across requests.
pub struct Signer {
    pub credentials: Credentials,
    pub region: String,
    key: Mutex<Option<(String, [u8; 32])>>,
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// S3's URI encoding: unreserved characters stay, everything else is %XX (uppercase);
/// `/` stays when `keep_slash` (object keys in the path).
pub fn uri_encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if keep_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `YYYYMMDDTHHMMSSZ` for a Unix time (UTC).
pub fn amz_date(unix: u64) -> String {
    let (days, secs) = ((unix / 86400) as i64, unix % 86400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn now_amz_date() -> String {
    amz_date(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
    )
}

/// `scheme://host[:port]/path?query` split the way Python's urlsplit does for our URLs.
pub struct UrlParts<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    pub path: &'a str,
    pub query: &'a str,
}

pub fn split_url(url: &str) -> UrlParts<'_> {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, rest) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        // [v6]:port
        let (h, after) = stripped.split_once(']').unwrap_or((stripped, ""));
        (h, after.strip_prefix(':').and_then(|p| p.parse().ok()))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()),
            None => (authority, None),
        }
    };
    UrlParts {
        scheme,
        host,
        port,
        path,
        query,
    }
}

/// The Host header SigV4 signs (and HTTP clients send) for a URL.
pub fn host_header(parts: &UrlParts) -> String {
    let default_port = match parts.scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    };
    let host = parts.host.to_ascii_lowercase();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    match parts.port {
        Some(p) if Some(p) != default_port => format!("{host}:{p}"),
        _ => host,
    }
}

fn canonical_query(query: &str) -> String {
    if query.is_empty() {
        return String::new();
    }
    let mut pairs: Vec<(&str, &str)> = query
        .split('&')
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

impl Signer {
    pub fn new(credentials: Credentials, region: &str) -> Self {
        Signer {
            credentials,
            region: region.to_string(),
            key: Mutex::new(None),
        }
    }

    fn signing_key(&self, date: &str) -> [u8; 32] {
        let mut cache = self.key.lock().unwrap();
        if let Some((d, k)) = cache.as_ref() {
            if d == date {
                return *k;
            }
        }
        let mut k = hmac(
            format!("AWS4{}", self.credentials.secret_key).as_bytes(),
            date.as_bytes(),
        );
        for part in [self.region.as_str(), "s3", "aws4_request"] {
            k = hmac(&k, part.as_bytes());
        }
        *cache = Some((date.to_string(), k));
        k
    }

    /// `headers` plus the SigV4 headers, in the order the Python signer produces them.
    ///
    /// `payload` is the hex SHA-256 of the body (`EMPTY_SHA256` for none) or `UNSIGNED-PAYLOAD`.
    /// `when` is `YYYYMMDDTHHMMSSZ`.
    pub fn sign(
        &self,
        method: &str,
        url: &str,
        headers: &[(String, String)],
        payload: &str,
        when: &str,
    ) -> Vec<(String, String)> {
        let parts = split_url(url);
        let mut out: Vec<(String, String)> = headers
            .iter()
            .filter(|(k, _)| {
                let l = k.to_ascii_lowercase();
                l != "authorization" && l != "x-amz-date"
            })
            .cloned()
            .collect();
        out.push(("X-Amz-Date".into(), when.into()));
        if let Some(token) = self.credentials.token.as_deref().filter(|t| !t.is_empty()) {
            out.push(("X-Amz-Security-Token".into(), token.into()));
        }
        out.push(("X-Amz-Content-SHA256".into(), payload.into()));
        // Lowercased name -> value with whitespace runs collapsed; a later duplicate wins.
        let mut signed: Vec<(String, String)> = Vec::with_capacity(out.len() + 1);
        for (name, value) in &out {
            let lname = name.to_ascii_lowercase();
            if UNSIGNED.contains(&lname.as_str()) {
                continue;
            }
            let v = value.split_whitespace().collect::<Vec<_>>().join(" ");
            match signed.iter_mut().find(|(n, _)| *n == lname) {
                Some(slot) => slot.1 = v,
                None => signed.push((lname, v)),
            }
        }
        if !signed.iter().any(|(n, _)| n == "host") {
            signed.push(("host".into(), host_header(&parts)));
        }
        signed.sort();
        let names = signed
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut canonical = String::with_capacity(512);
        canonical.push_str(&method.to_ascii_uppercase());
        canonical.push('\n');
        canonical.push_str(if parts.path.is_empty() {
            "/"
        } else {
            parts.path
        });
        canonical.push('\n');
        canonical.push_str(&canonical_query(parts.query));
        canonical.push('\n');
        for (n, v) in &signed {
            canonical.push_str(n);
            canonical.push(':');
            canonical.push_str(v);
            canonical.push('\n');
        }
        canonical.push('\n');
        canonical.push_str(&names);
        canonical.push('\n');
        canonical.push_str(payload);
        let date = &when[..8];
        let scope = format!("{date}/{}/s3/aws4_request", self.region);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{when}\n{scope}\n{}",
            sha256_hex(canonical.as_bytes())
        );
        let signature = hex(&hmac(&self.signing_key(date), to_sign.as_bytes()));
        out.push((
            "Authorization".into(),
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
                self.credentials.access_key
            ),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoders() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64_decode("Zm8=").unwrap(), b"fo");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(1_700_000_000), "20231114T221320Z");
        assert_eq!(uri_encode("a b/c~", true), "a%20b/c~");
        assert_eq!(percent_decode("a%20b%2Fc"), "a b/c");
        assert_eq!(sha256_hex(b""), EMPTY_SHA256);
    }
}
