//! A minimal S3 client on ureq: path-style URLs, SigV4, error XML, retries with backoff,
//! ListObjectsV2 parsed by hand.

use crate::sigv4::{self, Signer, EMPTY_SHA256, UNSIGNED_PAYLOAD};
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use ureq::http;

#[derive(Debug)]
pub enum Error {
    /// Connection refused/reset, timeout, truncated body: worth another try.
    Transport(String),
    /// An HTTP error answer, with S3's error code and message when the body had them.
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// The data does not match what the store says it is.
    Integrity(String),
    /// The store answered something this client does not understand.
    Protocol(String),
    Io(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Transport(m) => write!(f, "transport: {m}"),
            Error::Status {
                status,
                code,
                message,
            } => write!(f, "HTTP {status} {code}: {message}"),
            Error::Integrity(m) => write!(f, "integrity: {m}"),
            Error::Protocol(m) => write!(f, "protocol: {m}"),
            Error::Io(e) => write!(f, "io: {e}"),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(e)
    }
}

impl Error {
    pub fn retryable(&self) -> bool {
        match self {
            Error::Transport(_) => true,
            Error::Status { status, code, .. } => {
                matches!(status, 429 | 500 | 502 | 503 | 504)
                    || matches!(
                        code.as_str(),
                        "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                    )
            }
            _ => false,
        }
    }
}

fn transport(e: ureq::Error) -> Error {
    let text = e.to_string();
    // A certificate or TLS setup problem does not go away by trying again.
    let permanent = matches!(
        e,
        ureq::Error::Tls(_) | ureq::Error::BadUri(_) | ureq::Error::Http(_)
    ) || matches!(&e, ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::InvalidData)
        || text.contains("certificate");
    if permanent {
        Error::Protocol(text)
    } else {
        Error::Transport(text)
    }
}

/// The first `<name>...</name>` in `xml`, raw (entities not decoded).
pub fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    tags(xml, name).next()
}

/// Every `<name>...</name>` in `xml`, in order, raw. Not a general XML parser: S3's answers
/// have no attributes on these elements, no CDATA and no nesting of an element in itself.
pub fn tags<'a>(xml: &'a str, name: &str) -> impl Iterator<Item = &'a str> + 'a {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    let mut rest = xml;
    std::iter::from_fn(move || {
        let start = rest.find(&open)? + open.len();
        let len = rest[start..].find(&close)?;
        let inner = &rest[start..start + len];
        rest = &rest[start + len + close.len()..];
        Some(inner)
    })
}

/// Decode XML character references and the five predefined entities.
pub fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(end) = rest.find(';') else { break };
        let entity = &rest[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .map(|h| u32::from_str_radix(h, 16).ok())
                .unwrap_or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[end + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

pub fn xml_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[allow(dead_code)]
pub struct Object {
    pub key: String,
    pub size: u64,
    pub etag: String,
}

pub struct Client {
    agent: ureq::Agent,
    endpoint: String,
    bucket: String,
    signer: Signer,
    pub unsigned_payload: bool,
    pub max_attempts: u32,
    pub requests: AtomicU64,
    pub retries: AtomicU64,
}

pub type Response = http::Response<ureq::Body>;

impl Client {
    pub fn new(endpoint: &str, bucket: &str, signer: Signer, pool: usize) -> Result<Self, Error> {
        #[allow(unused_mut)]
        let mut builder = ureq::Agent::config_builder();
        // AWS_CA_BUNDLE, as botocore reads it: these roots instead of the built-in Mozilla set.
        #[cfg(feature = "tls")]
        if let Some(path) = std::env::var_os("AWS_CA_BUNDLE").filter(|p| !p.is_empty()) {
            let pem = std::fs::read(&path)?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| Error::Protocol(format!("AWS_CA_BUNDLE: {e}")))?;
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
                .build();
            builder = builder.tls_config(tls);
        }
        let config = builder
            // Every status comes back as a response: S3's error XML is read here.
            .http_status_as_error(false)
            // A redirect must be re-signed for its new host: not followed blindly.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .max_idle_connections(pool.max(1))
            .max_idle_connections_per_host(pool.max(1))
            .max_idle_age(Duration::from_secs(30))
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .user_agent("hashsync-rust-engine-spike/0.1")
            .build();
        Ok(Client {
            agent: config.new_agent(),
            endpoint: endpoint.trim_end_matches('/').to_string(),
            bucket: bucket.to_string(),
            signer,
            unsigned_payload: true,
            max_attempts: 5,
            requests: AtomicU64::new(0),
            retries: AtomicU64::new(0),
        })
    }

    pub fn url(&self, key: &str, query: &str) -> String {
        // The bucket itself (listing) is /bucket, as botocore sends it.
        let mut url = format!("{}/{}", self.endpoint, self.bucket);
        if !key.is_empty() {
            url.push('/');
            url.push_str(&sigv4::uri_encode(key, true));
        }
        if !query.is_empty() {
            url.push('?');
            url.push_str(query);
        }
        url
    }

    /// One signed request; error answers (status >= 300 other than 304) become `Error::Status`.
    pub fn send(
        &self,
        method: &str,
        key: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Response, Error> {
        let url = self.url(key, query);
        let payload = if body.is_empty() {
            EMPTY_SHA256.to_string()
        } else if self.unsigned_payload {
            UNSIGNED_PAYLOAD.to_string()
        } else {
            sigv4::sha256_hex(body)
        };
        let signed = self
            .signer
            .sign(method, &url, headers, &payload, &sigv4::now_amz_date());
        let mut builder = http::Request::builder().method(method).uri(&url);
        for (k, v) in &signed {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder
            .body(body)
            .map_err(|e| Error::Protocol(e.to_string()))?;
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut response = self.agent.run(request).map_err(transport)?;
        let status = response.status().as_u16();
        if status < 300 || status == 304 {
            return Ok(response);
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(64 * 1024)
            .read_to_string()
            .unwrap_or_default();
        Err(status_error(status, &text, &response))
    }

    /// `f` again after a retryable error, with exponential backoff and full jitter.
    pub fn retry<T>(&self, mut f: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
        let mut attempt = 0;
        loop {
            match f() {
                Err(e) if e.retryable() && attempt + 1 < self.max_attempts => {
                    attempt += 1;
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    let cap = (50u64 << attempt).min(5_000);
                    std::thread::sleep(Duration::from_millis(jitter(cap)));
                }
                other => return other,
            }
        }
    }

    /// Send and read the whole (small) answer body.
    pub fn call(
        &self,
        method: &str,
        key: &str,
        query: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<(http::HeaderMap, String), Error> {
        self.retry(|| {
            let mut r = self.send(method, key, query, headers, body)?;
            let text = r
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_string()
                .map_err(transport)?;
            Ok((r.headers().clone(), text))
        })
    }

    /// ListObjectsV2 over `prefix`, page by page (`encoding-type=url`, so any key survives XML).
    pub fn list(&self, prefix: &str, mut page: impl FnMut(Vec<Object>)) -> Result<(), Error> {
        let mut token: Option<String> = None;
        loop {
            let mut query = format!(
                "encoding-type=url&list-type=2&prefix={}",
                sigv4::uri_encode(prefix, false)
            );
            if let Some(t) = &token {
                query.push_str("&continuation-token=");
                query.push_str(&sigv4::uri_encode(t, false));
            }
            // The bucket itself: the key is empty, so the path is /bucket/ (as botocore sends).
            let (_, xml) = self.call("GET", "", &query, &[], b"")?;
            let encoded = tag(&xml, "EncodingType").is_some_and(|e| e == "url");
            let decode = |raw: &str| {
                let text = unescape(raw);
                if encoded {
                    sigv4::percent_decode(&text)
                } else {
                    text
                }
            };
            let objects = tags(&xml, "Contents")
                .map(|c| {
                    Ok(Object {
                        key: decode(
                            tag(c, "Key")
                                .ok_or_else(|| Error::Protocol("Contents without Key".into()))?,
                        ),
                        size: tag(c, "Size")
                            .and_then(|s| s.trim().parse().ok())
                            .ok_or_else(|| {
                                Error::Protocol("Contents without a valid Size".into())
                            })?,
                        etag: unescape(tag(c, "ETag").unwrap_or(""))
                            .trim_matches('"')
                            .to_string(),
                    })
                })
                .collect::<Result<Vec<_>, Error>>()?;
            page(objects);
            let truncated = tag(&xml, "IsTruncated").is_some_and(|t| t.trim() == "true");
            token = tag(&xml, "NextContinuationToken").map(unescape);
            if !truncated {
                return Ok(());
            }
            if token.is_none() {
                return Err(Error::Protocol(
                    "truncated listing without NextContinuationToken".into(),
                ));
            }
        }
    }
}

fn status_error(status: u16, body: &str, response: &Response) -> Error {
    let code = tag(body, "Code").map(unescape).unwrap_or_default();
    let mut message = tag(body, "Message").map(unescape).unwrap_or_default();
    if matches!(status, 301 | 307 | 308) {
        // Wrong region or endpoint: the answer says which one would do.
        let region = response
            .headers()
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?");
        message = format!("redirect (bucket region {region}) {message}");
    }
    Error::Status {
        status,
        code,
        message,
    }
}

/// A CompleteMultipartUpload (or CopyObject) answer can be 200 with an `<Error>` body.
pub fn error_in_ok_body(body: &str) -> Option<Error> {
    if tag(body, "Code").is_some() && body.contains("<Error>") {
        return Some(Error::Status {
            status: 200,
            code: tag(body, "Code").map(unescape).unwrap_or_default(),
            message: tag(body, "Message").map(unescape).unwrap_or_default(),
        });
    }
    None
}

fn jitter(cap_ms: u64) -> u64 {
    use std::cell::Cell;
    thread_local!(static STATE: Cell<u64> = const { Cell::new(0) });
    STATE.with(|s| {
        let mut x = s.get();
        if x == 0 {
            x = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64
                | 1;
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x % cap_ms.max(1)
    })
}

pub fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Read the rest of a body so the connection goes back to the pool.
pub fn drain(response: &mut Response) {
    let _ = std::io::copy(&mut response.body_mut().as_reader(), &mut std::io::sink());
}

pub fn read_into(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml() {
        let xml = "<R><Contents><Key>a&amp;b</Key><Size>3</Size></Contents><Contents><Key>c</Key></Contents></R>";
        let keys: Vec<_> = tags(xml, "Contents")
            .map(|c| unescape(tag(c, "Key").unwrap()))
            .collect();
        assert_eq!(keys, ["a&b", "c"]);
        assert_eq!(unescape("&#x41;&#66;&lt;&bogus;"), "AB<&bogus;");
    }
}
