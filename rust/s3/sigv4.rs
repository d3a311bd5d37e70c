//! AWS Signature Version 4 for S3 (header-based, as botocore's `S3SigV4Auth` signs), and the
//! small encoders S3 needs (hex, base64, URI encoding, x-amz-date).
//!
//! Checked against the signatures AWS publishes in its SigV4 examples for S3 (tests below) and,
//! in `tests/test_sigv4.py`, against botocore byte for byte.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
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

/// An access key, its secret and an optional session token.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub access_key: String,
    pub secret_key: String,
    pub token: Option<String>,
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

fn signing_key(secret: &str, date: &str, region: &str) -> [u8; 32] {
    let mut k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        k = hmac(&k, part.as_bytes());
    }
    k
}

/// `headers` plus the SigV4 headers (header-based signing, as botocore's `S3SigV4Auth`).
///
/// `url` is the full request URL with path and query already percent-encoded; `payload` is the
/// hex SHA-256 of the body (`EMPTY_SHA256` for none) or `UNSIGNED-PAYLOAD`; `when` is
/// `YYYYMMDDTHHMMSSZ`. Every header given is signed except hop-by-hop ones.
pub fn sign(
    method: &str,
    url: &str,
    headers: &[(String, String)],
    payload: &str,
    when: &str,
    credentials: &Credentials,
    region: &str,
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
    if let Some(token) = credentials.token.as_deref().filter(|t| !t.is_empty()) {
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
    let scope = format!("{date}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{when}\n{scope}\n{}",
        sha256_hex(canonical.as_bytes())
    );
    let key = signing_key(&credentials.secret_key, date, region);
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    out.push((
        "Authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={names}, Signature={signature}",
            credentials.access_key
        ),
    ));
    out
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

    fn example_credentials() -> Credentials {
        Credentials {
            access_key: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            token: None,
        }
    }

    fn signature(method: &str, url: &str, headers: &[(&str, &str)], payload: &str) -> String {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let out = sign(
            method,
            url,
            &headers,
            payload,
            "20130524T000000Z",
            &example_credentials(),
            "us-east-1",
        );
        let auth = &out.iter().find(|(k, _)| k == "Authorization").unwrap().1;
        auth.rsplit_once("Signature=").unwrap().1.to_string()
    }

    // The examples of AWS's "Signature Calculations for the Authorization Header" page for S3.
    #[test]
    fn published_examples() {
        let base = "https://examplebucket.s3.amazonaws.com";
        assert_eq!(
            signature(
                "GET",
                &format!("{base}/test.txt"),
                &[("Range", "bytes=0-9")],
                EMPTY_SHA256
            ),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(
            signature(
                "GET",
                &format!("{base}/?max-keys=2&prefix=J"),
                &[],
                EMPTY_SHA256
            ),
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
        );
        let body = b"Welcome to Amazon S3.";
        assert_eq!(
            signature(
                "PUT",
                &format!("{base}/test%24file.text"),
                &[
                    ("Date", "Fri, 24 May 2013 00:00:00 GMT"),
                    ("x-amz-storage-class", "REDUCED_REDUNDANCY")
                ],
                &sha256_hex(body)
            ),
            "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd"
        );
    }

    #[test]
    fn session_token_is_sent_and_signed() {
        let mut c = example_credentials();
        c.token = Some("tok".into());
        let out = sign(
            "GET",
            "http://[::1]:9000/b/k",
            &[],
            EMPTY_SHA256,
            "20130524T000000Z",
            &c,
            "eu-west-1",
        );
        assert!(out
            .iter()
            .any(|(k, v)| k == "X-Amz-Security-Token" && v == "tok"));
        let auth = &out.iter().find(|(k, _)| k == "Authorization").unwrap().1;
        assert!(auth
            .contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token"));
        assert!(auth.contains("/20130524/eu-west-1/s3/aws4_request"));
        assert_eq!(
            host_header(&split_url("http://[::1]:9000/b/k")),
            "[::1]:9000"
        );
        assert_eq!(
            host_header(&split_url("https://h.example:443/")),
            "h.example"
        );
    }
}
