//! Signed HTTP exchanges with an S3 endpoint: one keep-alive connection pool (ureq, rustls),
//! SigV4 in Rust, and no interpreter lock held while a request is on the wire.
//!
//! This is the transport only: what a status or header means for an operation is decided by
//! the caller. Every status comes back as an answer (S3's error XML included); only a request
//! that got no answer at all is an error.

use super::sigv4::{self, Credentials, EMPTY_SHA256, UNSIGNED_PAYLOAD};
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use ureq::http;

/// How long an idle pooled connection is trusted. Servers close idle connections after a few
/// seconds (SeaweedFS, many load balancers); a request sent on one they closed fails.
const IDLE_SECONDS: u64 = 4;

/// One request: the URL is complete (path and query percent-encoded as they will be signed).
pub struct Request<'a> {
    pub method: &'a str,
    pub url: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
    /// None: an unsigned (anonymous) request.
    pub credentials: Option<&'a Credentials>,
    pub region: &'a str,
    /// Read the answer's body only if it is at most this long; a longer one is left unread
    /// (its connection closed) and [`Answer::body`] is None.
    pub max_body: u64,
}

/// What the server answered.
pub struct Answer {
    pub status: u16,
    /// Header names in lower case, in the order received.
    pub headers: Vec<(String, String)>,
    /// None when the body was longer than [`Request::max_body`].
    pub body: Option<Vec<u8>>,
}

/// A request that got no (complete) answer.
#[derive(Debug)]
pub struct TransportError {
    pub kind: io::ErrorKind,
    pub message: String,
    /// Set for a failure writing the caller's file (not the network's doing).
    pub file_errno: Option<i32>,
}

impl std::fmt::Display for TransportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for TransportError {}

impl TransportError {
    fn from_ureq(url: &str, e: ureq::Error) -> Self {
        let kind = match &e {
            ureq::Error::Io(io) => io.kind(),
            ureq::Error::Timeout(_) => io::ErrorKind::TimedOut,
            ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
                io::ErrorKind::ConnectionRefused
            }
            ureq::Error::BodyExceedsLimit(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::Other,
        };
        TransportError {
            kind,
            message: format!("{}: {e}", redact(url)),
            file_errno: None,
        }
    }

    /// A pooled connection the server had already closed: nothing reached it.
    fn stale_connection(&self) -> bool {
        matches!(
            self.kind,
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        )
    }
}

/// The URL without its query (which may carry a presigned signature or a listing token).
fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(u, _)| u)
}

/// The proxy URL for an error message, without a password in it.
fn redact_userinfo(url: &str, why: &str) -> String {
    let shown = match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((_, host)) => format!("{scheme}://***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    };
    format!("{shown} ({why})")
}

/// Name resolution that knows names under `localhost` are the loopback host (RFC 6761, 6.3),
/// as curl and browsers do; glibc resolves only `localhost` itself. A store on this machine
/// is reached with virtual-hosted addressing at `bucket.localhost`.
#[derive(Debug, Default)]
struct LoopbackNames(ureq::unversioned::resolver::DefaultResolver);

impl ureq::unversioned::resolver::Resolver for LoopbackNames {
    fn resolve(
        &self,
        uri: &http::Uri,
        config: &ureq::config::Config,
        timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        if host.ends_with(".localhost") {
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let mut out = self.empty();
            out.push(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
            return Ok(out);
        }
        self.0.resolve(uri, config, timeout)
    }
}

/// A connection pool to any number of endpoints; cheap to share between threads.
pub struct Transport {
    agent: ureq::Agent,
}

impl Transport {
    /// `timeout`: seconds allowed for each of sending and receiving an answer;
    /// `connect_timeout`: for establishing a connection.
    /// `ca_bundle`: PEM certificates trusted instead of the built-in Mozilla roots (https).
    /// `pool`: idle connections kept per host.
    /// `proxy`: an `http://`, `https://` or `socks5://` proxy URL for every request (HTTP
    /// proxies are asked to CONNECT, for http targets too); the caller decides from the
    /// environment whether one applies to its endpoint.
    pub fn new(
        timeout: f64,
        connect_timeout: f64,
        ca_bundle: Option<&Path>,
        pool: usize,
        proxy: Option<&str>,
    ) -> io::Result<Self> {
        let timeout = Duration::from_secs_f64(timeout.clamp(0.001, 86_400.0));
        let connect_timeout = Duration::from_secs_f64(connect_timeout.clamp(0.001, 86_400.0));
        let proxy = match proxy {
            Some(url) => Some(ureq::Proxy::new(url).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "not a usable proxy URL: {}",
                        redact_userinfo(url, &e.to_string())
                    ),
                )
            })?),
            None => None,
        };
        let mut builder = ureq::Agent::config_builder();
        if let Some(path) = ca_bundle {
            let pem = std::fs::read(path)?;
            let certs = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{}: not a PEM certificate bundle: {e}", path.display()),
                    )
                })?;
            if certs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no certificates in the bundle", path.display()),
                ));
            }
            let tls = ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
                .build();
            builder = builder.tls_config(tls);
        }
        let config = builder
            // The caller reads S3's error XML: every status is an answer.
            .http_status_as_error(false)
            // A redirect must be signed again for its new host: never followed here.
            .max_redirects(0)
            .max_redirects_will_error(false)
            // Never from the environment here: ureq would take ALL_PROXY / HTTPS_PROXY /
            // HTTP_PROXY whatever the target's scheme.
            .proxy(proxy)
            .max_idle_connections(pool.max(1) * 4)
            .max_idle_connections_per_host(pool.max(1))
            .max_idle_age(Duration::from_secs(IDLE_SECONDS))
            .timeout_connect(Some(connect_timeout))
            .timeout_send_body(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(Some(timeout))
            .user_agent(concat!("hashsync/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Transport {
            agent: ureq::Agent::with_parts(
                config,
                ureq::unversioned::transport::DefaultConnector::default(),
                LoopbackNames::default(),
            ),
        })
    }

    /// Sign and send `request`, then read the answer's body (up to [`Request::max_body`]).
    pub fn exchange(&self, request: &Request<'_>) -> Result<Answer, TransportError> {
        let url = request.url;
        let (status, headers, mut response) = self.send(request)?;
        let declared = content_length(&headers);
        if request.method.eq_ignore_ascii_case("HEAD") || status == 204 || status == 304 {
            return Ok(Answer {
                status,
                headers,
                body: Some(Vec::new()),
            });
        }
        if declared.is_some_and(|n| n > request.max_body) {
            // Dropping the unread body closes its connection.
            return Ok(Answer {
                status,
                headers,
                body: None,
            });
        }
        let mut body = Vec::with_capacity(declared.unwrap_or(0).min(request.max_body) as usize);
        let limit = request.max_body.saturating_add(1);
        response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .reader()
            .take(limit)
            .read_to_end(&mut body)
            .map_err(|e| TransportError {
                kind: e.kind(),
                message: format!("{}: reading the answer: {e}", redact(url)),
                file_errno: None,
            })?;
        if body.len() as u64 > request.max_body {
            return Ok(Answer {
                status,
                headers,
                body: None,
            });
        }
        if let Some(n) = declared {
            if body.len() as u64 != n {
                return Err(TransportError {
                    kind: io::ErrorKind::UnexpectedEof,
                    message: format!(
                        "{}: the answer ended after {} of {n} bytes",
                        redact(url),
                        body.len()
                    ),
                    file_errno: None,
                });
            }
        }
        Ok(Answer {
            status,
            headers,
            body: Some(body),
        })
    }

    /// A GET whose body goes straight into `file` at `offset`, for the bytes `offset..end` of
    /// an object (ranged or whole): the body of a big object never passes through Python.
    ///
    /// Nothing is written unless the answer is a 200/206 for the object `pinned_etag` names
    /// (when given) whose Content-Range starts at or before `offset` (bytes before `offset`
    /// are read past). A body that breaks off stops early: [`RangeAnswer::written`] says how
    /// far it got, so the caller can ask for the rest.
    ///
    /// Every [`PROGRESS_STEP`] bytes written (and at the end) `progress` is told how many
    /// there were; if it returns false the body is read no further and
    /// [`RangeAnswer::stopped`] is set. The writeback to disk of what was written is started
    /// at the end.
    pub fn get_into(
        &self,
        request: &Request<'_>,
        file: &std::fs::File,
        offset: u64,
        end: u64,
        pinned_etag: Option<&str>,
        progress: &mut dyn FnMut(u64) -> bool,
    ) -> Result<RangeAnswer, TransportError> {
        use std::os::unix::fs::FileExt;
        let ranged = request
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("range"));
        let (status, headers, mut response) = self.send(request)?;
        let mut answer = RangeAnswer {
            status,
            headers,
            written: 0,
            problem: None,
            error_body: None,
            stopped: false,
        };
        if status != 200 && status != 206 {
            let mut text = Vec::new();
            let _ = response
                .body_mut()
                .with_config()
                .limit(u64::MAX)
                .reader()
                .take(64 << 10)
                .read_to_end(&mut text);
            answer.error_body = Some(text);
            return Ok(answer);
        }
        let etag = header(&answer.headers, "etag").map(|e| e.trim().trim_matches('"').to_string());
        if let (Some(pinned), Some(got)) = (pinned_etag, etag.as_deref()) {
            if !got.is_empty() && got != pinned.trim_matches('"') {
                // The store ignored If-Match (rclone does): these bytes are another version.
                answer.problem = Some(Problem::Changed(got.to_string()));
                return Ok(answer);
            }
        }
        let mut skip = 0;
        if ranged {
            match header(&answer.headers, "content-range") {
                // No Content-Range: the whole object, from byte 0.
                None => skip = offset,
                Some(span) => {
                    let first = span
                        .trim()
                        .split_once(' ')
                        .and_then(|(_, r)| r.split_once('-'))
                        .and_then(|(f, _)| f.parse::<u64>().ok());
                    match first {
                        Some(first) if first <= offset => skip = offset - first,
                        _ => {
                            answer.problem = Some(Problem::Range(span.to_string()));
                            return Ok(answer);
                        }
                    }
                }
            }
        }
        let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
        let mut buf = vec![0u8; 1 << 20];
        let mut at = offset;
        let mut told = offset;
        while at < end {
            let want = if skip > 0 {
                skip.min(buf.len() as u64)
            } else {
                (end - at).min(buf.len() as u64)
            } as usize;
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    answer.problem = Some(Problem::Broken(format!(
                        "{}: the answer broke off: {e}",
                        redact(request.url)
                    )));
                    break;
                }
            };
            if skip > 0 {
                skip -= n as u64;
                continue;
            }
            file.write_all_at(&buf[..n], at)
                .map_err(|e| TransportError {
                    kind: e.kind(),
                    message: format!("writing the download: {e}"),
                    file_errno: None,
                })?;
            at += n as u64;
            if at - told >= PROGRESS_STEP {
                let more = progress(at - told);
                told = at;
                if !more {
                    answer.stopped = true;
                    break;
                }
            }
        }
        answer.written = at - offset;
        // Once per range: sync_file_range blocks while the device's queue is full, and
        // starting it every few MiB made a 2 x 1 GiB download 25% slower (2.88 s vs 2.31 s).
        start_writeback(file, offset, answer.written);
        if at > told && !progress(at - told) {
            answer.stopped = true;
        }
        Ok(answer)
    }

    /// Sign and send `request`; the answer's head. A request that fails on a pooled
    /// connection the server had already closed is sent once more on a new one.
    fn send(&self, request: &Request<'_>) -> Result<Sent, TransportError> {
        match self.send_once(request) {
            Err(e) if e.stale_connection() => self.send_once(request),
            other => other,
        }
    }

    fn send_once(&self, request: &Request<'_>) -> Result<Sent, TransportError> {
        let url = request.url;
        let bad = |message: String| TransportError {
            kind: io::ErrorKind::InvalidInput,
            message,
            file_errno: None,
        };
        let headers: Vec<(String, String)> = match request.credentials {
            Some(credentials) => {
                let payload = if request.body.is_empty() {
                    EMPTY_SHA256.to_string()
                } else if request.headers.iter().any(|(k, _)| {
                    k.eq_ignore_ascii_case("content-md5")
                        || k.to_ascii_lowercase().starts_with("x-amz-checksum-")
                }) {
                    // The body's digest is in a signed header, which the store checks: hashing
                    // it again with SHA-256 (a second pass over every part) adds nothing.
                    UNSIGNED_PAYLOAD.to_string()
                } else {
                    sigv4::sha256_hex(request.body)
                };
                sigv4::sign(
                    request.method,
                    url,
                    request.headers,
                    &payload,
                    &sigv4::now_amz_date(),
                    credentials,
                    request.region,
                )
            }
            None => request.headers.to_vec(),
        };
        let mut builder = http::Request::builder().method(request.method).uri(url);
        for (name, value) in &headers {
            // ureq writes these itself, from the URL and the body.
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("host") {
                continue;
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        let http_request = builder
            .body(request.body)
            .map_err(|e| bad(format!("{}: {e}", redact(url))))?;
        let response = self
            .agent
            .run(http_request)
            .map_err(|e| TransportError::from_ureq(url, e))?;
        let status = response.status().as_u16();
        let headers: Vec<(String, String)> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok((status, headers, response))
    }
}

/// Start writing `len` bytes at `offset` of `file` to disk, without waiting.
///
/// A download is fsynced before it is renamed into place; with the writeback of each part
/// started as soon as the part is in, that fsync finds most of the file on disk already
/// instead of writing all of it after the network is done.
fn start_writeback(file: &std::fs::File, offset: u64, len: u64) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        if len > 0 {
            // Advisory: a filesystem that cannot do it just leaves the work to the fsync.
            unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    offset as libc::off64_t,
                    len as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (file, offset, len);
}

/// A request's answer before its body is read: status, headers, the response.
type Sent = (u16, Vec<(String, String)>, http::Response<ureq::Body>);

/// Why [`Transport::get_into`] stopped before `end`.
#[derive(Debug, PartialEq, Eq)]
pub enum Problem {
    /// The answer is of another version of the object: its ETag.
    Changed(String),
    /// The answer's Content-Range does not cover the bytes asked for: the header.
    Range(String),
    /// The body broke off (connection dropped, timeout): what happened.
    Broken(String),
}

/// What [`Transport::get_into`] got.
pub struct RangeAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Bytes written from `offset` on.
    pub written: u64,
    pub problem: Option<Problem>,
    /// The start of an error answer's body (S3's error XML), for a status other than 200/206.
    pub error_body: Option<Vec<u8>>,
    /// The progress callback asked to stop.
    pub stopped: bool,
}

/// How many bytes a ranged GET writes between two progress reports: as often as when each
/// 8 MiB part was its own request. Each report takes the GIL; in an interleaved run of
/// `benches/download_ranges.py` with 16 MiB steps, 2 x 1 GiB took 3.03 s with reports and 2.77 s
/// without (runs spread 2.2-3.8 s).
pub const PROGRESS_STEP: u64 = 8 << 20;

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn content_length(headers: &[(String, String)]) -> Option<u64> {
    header(headers, "content-length").and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-shot server: answers each connection's first request with `reply`, records it.
    fn serve(replies: Vec<&'static [u8]>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for reply in replies {
                let (stream, _) = listener.accept().unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                seen.push(head);
                (&stream).write_all(reply).unwrap();
            }
            seen
        });
        (url, handle)
    }

    fn get(
        url: &str,
        max_body: u64,
        credentials: Option<&Credentials>,
    ) -> Result<Answer, TransportError> {
        let t = Transport::new(5.0, 5.0, None, 4, None).unwrap();
        t.exchange(&Request {
            method: "GET",
            url,
            headers: &[("Range".into(), "bytes=0-3".into())],
            body: b"",
            credentials,
            region: "us-east-1",
            max_body,
        })
    }

    #[test]
    fn names_under_localhost_reach_this_machine_and_keep_their_host_header() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ]);
        let port = url.rsplit(':').next().unwrap();
        let a = get(&format!("http://bucket.localhost:{port}/k"), 100, None).unwrap();
        assert_eq!(a.body.as_deref(), Some(&b"ok"[..]));
        let seen = server.join().unwrap();
        assert!(
            seen[0]
                .to_ascii_lowercase()
                .contains(&format!("host: bucket.localhost:{port}")),
            "{seen:?}"
        );
    }

    #[test]
    fn requests_go_through_the_proxy_given() {
        // An HTTP proxy is asked to CONNECT to the target; its answer ends the exchange here.
        let (proxy, server) = serve(vec![
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]);
        let t = Transport::new(5.0, 5.0, None, 4, Some(&proxy)).unwrap();
        let result = t.exchange(&Request {
            method: "GET",
            url: "http://store.invalid:9000/b/k",
            headers: &[],
            body: b"",
            credentials: None,
            region: "us-east-1",
            max_body: 100,
        });
        assert!(result.is_err());
        let seen = server.join().unwrap();
        assert!(
            seen[0].starts_with("CONNECT store.invalid:9000 "),
            "{seen:?}"
        );
        assert!(Transport::new(5.0, 5.0, None, 4, Some("::not a url")).is_err());
    }

    #[test]
    fn signs_and_reads_an_answer() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-3/10\r\nContent-Length: 4\r\nConnection: close\r\n\r\nabcd",
        ]);
        let c = Credentials {
            access_key: "AK".into(),
            secret_key: "SK".into(),
            token: None,
        };
        let a = get(&format!("{url}/b/k"), 100, Some(&c)).unwrap();
        assert_eq!(a.status, 206);
        assert_eq!(a.body.as_deref(), Some(&b"abcd"[..]));
        assert!(a
            .headers
            .contains(&("content-range".into(), "bytes 0-3/10".into())));
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("GET /b/k HTTP/1.1"));
        assert!(seen[0]
            .to_ascii_lowercase()
            .contains("authorization: aws4-hmac-sha256 credential=ak/"));
        assert!(seen[0].to_ascii_lowercase().contains("range: bytes=0-3"));
    }

    #[test]
    fn a_body_with_a_signed_digest_is_not_hashed_again() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        ]);
        let c = Credentials {
            access_key: "AK".into(),
            secret_key: "SK".into(),
            token: None,
        };
        let t = Transport::new(5.0, 5.0, None, 4, None).unwrap();
        for headers in [
            vec![(
                "Content-MD5".to_string(),
                "XUFAKrxLKna5cZ2REBfFkg==".to_string(),
            )],
            vec![],
        ] {
            let a = t
                .exchange(&Request {
                    method: "PUT",
                    url: &format!("{url}/b/k"),
                    headers: &headers,
                    body: b"hello",
                    credentials: Some(&c),
                    region: "us-east-1",
                    max_body: 100,
                })
                .unwrap();
            assert_eq!(a.status, 200);
        }
        let seen: Vec<String> = server
            .join()
            .unwrap()
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        assert!(seen[0].contains("x-amz-content-sha256: unsigned-payload"));
        assert!(seen[0].contains("content-md5;host;"));
        let hello = sigv4::sha256_hex(b"hello");
        assert!(seen[1].contains(&format!("x-amz-content-sha256: {hello}")));
    }

    #[test]
    fn a_body_over_the_limit_is_not_read() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n0123456789",
        ]);
        let a = get(&format!("{url}/b/k"), 4, None).unwrap();
        assert_eq!((a.status, a.body), (200, None));
        // No Content-Length (read to the end of the connection): stopped past the limit too.
        let a = get(&format!("{url}/b/k"), 4, None).unwrap();
        assert_eq!((a.status, a.body), (200, None));
        let seen = server.join().unwrap();
        assert!(!seen[0].to_ascii_lowercase().contains("authorization"));
    }

    #[test]
    fn a_truncated_answer_is_an_error() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n01234",
        ]);
        let e = get(&format!("{url}/b/k"), 100, None)
            .err()
            .expect("truncated");
        assert!(e.to_string().contains("/b/k"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn a_server_that_is_down_is_connection_refused() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = get(
            &format!("http://127.0.0.1:{port}/b/k?token=secret"),
            100,
            None,
        )
        .err()
        .expect("refused");
        assert_eq!(e.kind, io::ErrorKind::ConnectionRefused, "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    fn get_range(
        url: &str,
        range: Option<&str>,
        offset: u64,
        end: u64,
        pinned: Option<&str>,
    ) -> (RangeAnswer, Vec<u8>) {
        let t = Transport::new(5.0, 5.0, None, 4, None).unwrap();
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("hashsync-get-into-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&dir)
            .unwrap();
        let headers: Vec<(String, String)> = range
            .map(|r| ("Range".to_string(), r.to_string()))
            .into_iter()
            .collect();
        let answer = t
            .get_into(
                &Request {
                    method: "GET",
                    url,
                    headers: &headers,
                    body: b"",
                    credentials: None,
                    region: "us-east-1",
                    max_body: 0,
                },
                &file,
                offset,
                end,
                pinned,
                &mut |_| true,
            )
            .unwrap();
        let data = std::fs::read(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        (answer, data)
    }

    #[test]
    fn get_into_writes_at_the_offset_and_judges_content_range() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 206 Partial\r\nETag: \"e1\"\r\nContent-Range: bytes 4-7/10\r\nContent-Length: 4\r\nConnection: close\r\n\r\n4567",
            // rclone: 200 with the range asked for.
            b"HTTP/1.1 200 OK\r\nContent-Range: bytes 4-7/10\r\nContent-Length: 4\r\nConnection: close\r\n\r\n4567",
            // Range ignored: the whole object; bytes before the offset are read past.
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789",
        ]);
        let url = format!("{url}/b/k");
        for _ in 0..3 {
            let (a, data) = get_range(&url, Some("bytes=4-7"), 4, 8, Some("e1"));
            assert_eq!((a.written, a.problem), (4, None));
            assert_eq!(&data, b"\0\0\0\x004567");
        }
        server.join().unwrap();
    }

    #[test]
    fn get_into_writes_nothing_of_another_version_or_span() {
        let (url, server) = serve(vec![
            b"HTTP/1.1 206 Partial\r\nETag: \"other\"\r\nContent-Range: bytes 4-7/10\r\nContent-Length: 4\r\nConnection: close\r\n\r\n4567",
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 6-7/10\r\nContent-Length: 2\r\nConnection: close\r\n\r\n67",
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 32\r\nConnection: close\r\n\r\n<Error><Code>NoSuchKey</Code></E",
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 4-7/10\r\nContent-Length: 4\r\nConnection: close\r\n\r\n45",
        ]);
        let url = format!("{url}/b/k");
        let (a, data) = get_range(&url, Some("bytes=4-7"), 4, 8, Some("e1"));
        assert_eq!(a.problem, Some(Problem::Changed("other".into())));
        assert_eq!((a.written, data.len()), (0, 0));
        let (a, data) = get_range(&url, Some("bytes=4-7"), 4, 8, None);
        assert_eq!(a.problem, Some(Problem::Range("bytes 6-7/10".into())));
        assert_eq!((a.written, data.len()), (0, 0));
        let (a, data) = get_range(&url, Some("bytes=4-7"), 4, 8, None);
        assert_eq!(a.status, 404);
        assert!(String::from_utf8_lossy(a.error_body.as_deref().unwrap()).contains("NoSuchKey"));
        assert_eq!(data.len(), 0);
        // Cut short: what arrived is written and counted, the rest is the caller's to ask for.
        let (a, data) = get_range(&url, Some("bytes=4-7"), 4, 8, None);
        assert_eq!(a.written, 2);
        assert!(matches!(a.problem, Some(Problem::Broken(_)) | None));
        assert_eq!(&data, b"\0\0\0\x0045");
        server.join().unwrap();
    }
}
