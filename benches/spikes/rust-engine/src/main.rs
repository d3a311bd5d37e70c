//! rust-engine: the spike of issue 26, item 1 — an S3 transfer engine in Rust (ureq + rustls,
//! a fixed pool of worker threads over one shared queue), as a CLI so it can be measured alone.
//!
//! ```text
//! rust-engine put --endpoint URL --bucket B --prefix P --access-key K --secret S
//!     [--region us-east-1] [--concurrency 64] [--max-parts 16] [--part-size 8MiB]
//!     [--payload unsigned|sha256]
//!     [--if-none-match] [--no-content-md5] DIR
//! rust-engine get (same options) [--fsync] DIR
//! rust-engine sign --method M --url U [--header 'Name: value']... [--payload HEX|--body-file F]
//!     --now YYYYMMDDTHHMMSSZ --access-key K --secret S [--token T] [--region R]
//! ```
//!
//! put: every file under DIR becomes PREFIX + its relative path. A file of at most one part is
//! one PUT (Content-MD5, x-amz-checksum-crc64nvme); a larger one is a multipart upload whose parts
//! go in parallel (Content-MD5 and CRC64NVME per part, FULL_OBJECT CRC64NVME on completion,
//! optionally If-None-Match: *).
//!
//! get: lists PREFIX (ListObjectsV2, pages fed to the workers as they arrive) and downloads each
//! object to DIR through a temporary file and a rename. A small object is one GET with
//! x-amz-checksum-mode: ENABLED, checked against its size and x-amz-checksum-crc64nvme. A large
//! one gets a HEAD (ETag, native CRC64NVME), then ranged GETs in parallel pinned with If-Match,
//! each answer judged by its Content-Range; the part CRCs are combined into the whole-object CRC.

mod s3;
mod sigv4;

use crc_fast::CrcAlgorithm;
use md5::{Digest, Md5};
use s3::{drain, error_in_ok_body, header, tag, Client, Error};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

const CRC: CrcAlgorithm = CrcAlgorithm::Crc64Nvme;
const READ_CHUNK: usize = 256 * 1024;

#[derive(Default, Clone)]
struct Args {
    cmd: String,
    endpoint: String,
    bucket: String,
    prefix: String,
    access_key: String,
    secret: String,
    token: Option<String>,
    region: String,
    concurrency: usize,
    max_parts: usize,
    part_size: u64,
    sha256_payload: bool,
    if_none_match: bool,
    no_content_md5: bool,
    fsync: bool,
    dir: PathBuf,
    // sign
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    payload: Option<String>,
    body_file: Option<PathBuf>,
    now: String,
}

fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("bad size {text:?}"))?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        _ => return Err(format!("bad size unit in {text:?}")),
    };
    Ok(n * mult)
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        region: "us-east-1".into(),
        concurrency: 64,
        max_parts: 16,
        part_size: 8 << 20,
        ..Default::default()
    };
    let mut it = std::env::args().skip(1);
    a.cmd = it.next().ok_or("usage: rust-engine put|get|sign ...")?;
    let mut positional = Vec::new();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--endpoint" => a.endpoint = value(&arg)?,
            "--bucket" => a.bucket = value(&arg)?,
            "--prefix" => a.prefix = value(&arg)?,
            "--access-key" => a.access_key = value(&arg)?,
            "--secret" => a.secret = value(&arg)?,
            "--token" => a.token = Some(value(&arg)?),
            "--region" => a.region = value(&arg)?,
            "--concurrency" => {
                a.concurrency = value(&arg)?.parse().map_err(|_| "bad --concurrency")?
            }
            "--part-size" => a.part_size = parse_size(&value(&arg)?)?,
            "--max-parts" => a.max_parts = value(&arg)?.parse().map_err(|_| "bad --max-parts")?,
            "--payload" => match value(&arg)?.as_str() {
                "unsigned" => a.sha256_payload = false,
                "sha256" => a.sha256_payload = true,
                other if a.cmd == "sign" => a.payload = Some(other.to_string()),
                other => return Err(format!("--payload unsigned|sha256, not {other:?}")),
            },
            "--if-none-match" => a.if_none_match = true,
            "--fsync" => a.fsync = true,
            "--no-content-md5" => a.no_content_md5 = true,
            "--method" => a.method = value(&arg)?,
            "--url" => a.url = value(&arg)?,
            "--header" => {
                let h = value(&arg)?;
                let (k, v) = h.split_once(':').ok_or("--header 'Name: value'")?;
                a.headers.push((
                    k.trim().to_string(),
                    v.strip_prefix(' ').unwrap_or(v).to_string(),
                ));
            }
            "--body-file" => a.body_file = Some(PathBuf::from(value(&arg)?)),
            "--now" => a.now = value(&arg)?,
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ => positional.push(arg),
        }
    }
    if a.cmd != "sign" {
        if positional.len() != 1 {
            return Err("exactly one DIR".into());
        }
        a.dir = PathBuf::from(&positional[0]);
        if a.endpoint.is_empty() || a.bucket.is_empty() {
            return Err("--endpoint and --bucket are required".into());
        }
        if a.access_key.is_empty() {
            a.access_key = std::env::var("AWS_ACCESS_KEY_ID").unwrap_or_default();
            a.secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
        }
        a.concurrency = a.concurrency.max(1);
        a.max_parts = a.max_parts.clamp(1, a.concurrency);
        if a.part_size < 5 << 20 {
            return Err("--part-size must be at least 5MiB".into());
        }
    }
    Ok(a)
}

// -- the work queue ------------------------------------------------------------------------

enum Task {
    Put {
        path: PathBuf,
        key: String,
    },
    Create(Arc<Upload>),
    Part(Arc<Upload>, usize),
    Get {
        key: String,
        dest: PathBuf,
    },
    GetBig {
        key: String,
        size: u64,
        dest: PathBuf,
    },
    Range(Arc<Download>, usize),
}

/// Tasks plus how many are being worked on: the workers stop when both are zero.
struct Queue {
    state: Mutex<(VecDeque<Task>, usize)>,
    cv: Condvar,
}

impl Queue {
    fn push(&self, task: Task, front: bool) {
        let mut s = self.state.lock().unwrap();
        if front {
            s.0.push_front(task)
        } else {
            s.0.push_back(task)
        }
        self.cv.notify_one();
    }

    /// Count the caller as busy (the lister), so the workers wait for its tasks.
    fn begin(&self) {
        self.state.lock().unwrap().1 += 1;
    }

    fn pop(&self) -> Option<Task> {
        let mut s = self.state.lock().unwrap();
        loop {
            if let Some(t) = s.0.pop_front() {
                s.1 += 1;
                return Some(t);
            }
            if s.1 == 0 {
                return None;
            }
            s = self.cv.wait(s).unwrap();
        }
    }

    fn done(&self) {
        let mut s = self.state.lock().unwrap();
        s.1 -= 1;
        if s.1 == 0 && s.0.is_empty() {
            self.cv.notify_all();
        }
    }
}

/// Counts the parts (upload parts, ranged GETs) in flight: many small requests help, but
/// many large ones at once only make the server slower (measured on SeaweedFS).
struct Slots {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Slots {
    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock().unwrap();
        while *free == 0 {
            free = self.cv.wait(free).unwrap();
        }
        *free -= 1;
        SlotGuard(self)
    }
}

struct SlotGuard<'a>(&'a Slots);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap() += 1;
        self.0.cv.notify_one();
    }
}

struct Ctx {
    client: Client,
    queue: Queue,
    parts: Slots,
    args: Args,
    errors: Mutex<Vec<String>>,
    files: AtomicU64,
    bytes: AtomicU64,
    tmp_counter: AtomicU64,
    /// Downloads checked against the store's CRC64NVME (the others by size only).
    crc_checked: AtomicU64,
}

impl Ctx {
    fn fail(&self, what: &str, e: &Error) {
        self.errors.lock().unwrap().push(format!("{what}: {e}"));
    }
}

fn run_workers(ctx: &Arc<Ctx>, feed: impl FnOnce(&Ctx) -> Result<(), Error>) -> Result<(), Error> {
    ctx.queue.begin();
    let workers: Vec<_> = (0..ctx.args.concurrency)
        .map(|_| {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn(move || {
                    while let Some(task) = ctx.queue.pop() {
                        run_task(&ctx, task);
                        ctx.queue.done();
                    }
                })
                .expect("spawn a worker")
        })
        .collect();
    let fed = feed(ctx);
    ctx.queue.done();
    for w in workers {
        let _ = w.join();
    }
    fed
}

fn run_task(ctx: &Ctx, task: Task) {
    let (what, result) = match task {
        Task::Put { path, key } => (key.clone(), put_small(ctx, &path, &key)),
        Task::Create(u) => (u.key.clone(), create_upload(ctx, &u)),
        Task::Part(u, i) => (format!("{} part {}", u.key, i + 1), upload_part(ctx, &u, i)),
        Task::Get { key, dest } => (key.clone(), get_small(ctx, &key, &dest)),
        Task::GetBig { key, size, dest } => (key.clone(), get_big(ctx, &key, size, &dest)),
        Task::Range(d, i) => (format!("{} range {}", d.key, i), get_range(ctx, &d, i)),
    };
    if let Err(e) = result {
        ctx.fail(&what, &e);
    }
}

// -- checksums -----------------------------------------------------------------------------

fn crc64(data: &[u8]) -> u64 {
    crc_fast::checksum(CRC, data)
}

fn crc_b64(crc: u64) -> String {
    sigv4::base64(&crc.to_be_bytes())
}

fn md5_b64(data: &[u8]) -> String {
    sigv4::base64(&Md5::digest(data))
}

/// The object's full-object CRC64NVME from a response, if it carries one.
fn native_crc(headers: &ureq::http::HeaderMap) -> Option<u64> {
    let value = header(headers, "x-amz-checksum-crc64nvme")?;
    if header(headers, "x-amz-checksum-type").is_some_and(|t| t != "FULL_OBJECT") {
        return None;
    }
    let raw = sigv4::base64_decode(value)?;
    Some(u64::from_be_bytes(raw.try_into().ok()?))
}

// -- put -----------------------------------------------------------------------------------

fn walk(dir: &Path, rel: &str, out: &mut Vec<(PathBuf, String, u64)>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let kind = entry.file_type()?;
        if kind.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else if kind.is_file() {
            out.push((entry.path(), rel, entry.metadata()?.len()));
        }
    }
    Ok(())
}

struct Upload {
    key: String,
    path: PathBuf,
    size: u64,
    part_size: u64,
    file: OnceLock<File>,
    upload_id: OnceLock<String>,
    /// (ETag, CRC64NVME) per part.
    parts: Mutex<Vec<Option<(String, u64)>>>,
    remaining: AtomicUsize,
    failed: AtomicBool,
}

impl Upload {
    fn count(&self) -> usize {
        self.size.div_ceil(self.part_size) as usize
    }

    fn span(&self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.part_size;
        (start, (start + self.part_size).min(self.size))
    }
}

fn put(ctx: &Arc<Ctx>) -> Result<(), Error> {
    let mut files = Vec::new();
    walk(&ctx.args.dir, "", &mut files)?;
    run_workers(ctx, |ctx| {
        // Large files first, so their parts spread over the workers from the start.
        let (big, small): (Vec<_>, Vec<_>) = files
            .into_iter()
            .partition(|(_, _, size)| *size > ctx.args.part_size);
        for (path, rel, size) in big {
            let upload = Upload {
                key: format!("{}{rel}", ctx.args.prefix),
                path,
                size,
                part_size: ctx.args.part_size,
                file: OnceLock::new(),
                upload_id: OnceLock::new(),
                parts: Mutex::new(Vec::new()),
                remaining: AtomicUsize::new(0),
                failed: AtomicBool::new(false),
            };
            ctx.queue.push(Task::Create(Arc::new(upload)), false);
        }
        for (path, rel, _) in small {
            ctx.queue.push(
                Task::Put {
                    path,
                    key: format!("{}{rel}", ctx.args.prefix),
                },
                false,
            );
        }
        Ok(())
    })
}

fn put_small(ctx: &Ctx, path: &Path, key: &str) -> Result<(), Error> {
    let data = std::fs::read(path)?;
    let mut headers = vec![(
        "x-amz-checksum-crc64nvme".to_string(),
        crc_b64(crc64(&data)),
    )];
    if !ctx.args.no_content_md5 {
        headers.push(("Content-MD5".to_string(), md5_b64(&data)));
    }
    if ctx.args.if_none_match {
        headers.push(("If-None-Match".into(), "*".into()));
    }
    ctx.client.retry(|| {
        let mut r = ctx.client.send("PUT", key, "", &headers, &data)?;
        drain(&mut r);
        Ok(())
    })?;
    ctx.files.fetch_add(1, Ordering::Relaxed);
    ctx.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    Ok(())
}

fn create_upload(ctx: &Ctx, u: &Arc<Upload>) -> Result<(), Error> {
    let _ = u.file.set(File::open(&u.path)?);
    let headers = [
        (
            "x-amz-checksum-algorithm".to_string(),
            "CRC64NVME".to_string(),
        ),
        ("x-amz-checksum-type".to_string(), "FULL_OBJECT".to_string()),
    ];
    let (_, xml) = ctx.client.call("POST", &u.key, "uploads=", &headers, b"")?;
    let id = tag(&xml, "UploadId")
        .map(s3::unescape)
        .ok_or_else(|| Error::Protocol(format!("no UploadId in {xml:.200}")))?;
    let _ = u.upload_id.set(id);
    let n = u.count();
    *u.parts.lock().unwrap() = vec![None; n];
    u.remaining.store(n, Ordering::SeqCst);
    // At the front, last part first, so part 1 is taken first and the upload finishes early.
    for i in (0..n).rev() {
        ctx.queue.push(Task::Part(u.clone(), i), true);
    }
    Ok(())
}

fn upload_part(ctx: &Ctx, u: &Arc<Upload>, i: usize) -> Result<(), Error> {
    let result = if u.failed.load(Ordering::SeqCst) {
        Ok(())
    } else {
        let _slot = ctx.parts.acquire();
        send_part(ctx, u, i)
    };
    if result.is_err() {
        u.failed.store(true, Ordering::SeqCst);
    }
    if u.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
        let finished = if u.failed.load(Ordering::SeqCst) {
            abort_upload(ctx, u);
            Ok(())
        } else {
            complete_upload(ctx, u)
        };
        if let Err(e) = finished {
            ctx.fail(&format!("{} complete", u.key), &e);
        }
    }
    result
}

fn send_part(ctx: &Ctx, u: &Upload, i: usize) -> Result<(), Error> {
    let (start, end) = u.span(i);
    let mut data = vec![0u8; (end - start) as usize];
    u.file
        .get()
        .expect("opened")
        .read_exact_at(&mut data, start)?;
    let crc = crc64(&data);
    let mut headers = vec![("x-amz-checksum-crc64nvme".to_string(), crc_b64(crc))];
    if !ctx.args.no_content_md5 {
        headers.push(("Content-MD5".to_string(), md5_b64(&data)));
    }
    let query = format!(
        "partNumber={}&uploadId={}",
        i + 1,
        sigv4::uri_encode(u.upload_id.get().expect("created"), false)
    );
    let etag = ctx.client.retry(|| {
        let mut r = ctx.client.send("PUT", &u.key, &query, &headers, &data)?;
        drain(&mut r);
        header(r.headers(), "etag")
            .map(str::to_string)
            .ok_or_else(|| Error::Protocol("UploadPart answer without ETag".into()))
    })?;
    u.parts.lock().unwrap()[i] = Some((etag, crc));
    ctx.bytes.fetch_add(end - start, Ordering::Relaxed);
    Ok(())
}

fn complete_upload(ctx: &Ctx, u: &Upload) -> Result<(), Error> {
    let parts = u.parts.lock().unwrap().clone();
    let mut body = String::from("<CompleteMultipartUpload>");
    let mut whole: Option<u64> = None;
    for (i, part) in parts.iter().enumerate() {
        let (etag, crc) = part
            .as_ref()
            .ok_or_else(|| Error::Protocol("a part is missing".into()))?;
        let (start, end) = u.span(i);
        whole = Some(match whole {
            None => *crc,
            Some(w) => crc_fast::checksum_combine(CRC, w, *crc, end - start),
        });
        body.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag><ChecksumCRC64NVME>{}</ChecksumCRC64NVME></Part>",
            i + 1,
            s3::xml_escape(etag),
            crc_b64(*crc)
        ));
    }
    body.push_str("</CompleteMultipartUpload>");
    let mut headers = vec![
        ("Content-MD5".to_string(), md5_b64(body.as_bytes())),
        (
            "x-amz-checksum-crc64nvme".to_string(),
            crc_b64(whole.unwrap_or(0)),
        ),
        ("x-amz-checksum-type".to_string(), "FULL_OBJECT".to_string()),
    ];
    if ctx.args.if_none_match {
        headers.push(("If-None-Match".into(), "*".into()));
    }
    let query = format!(
        "uploadId={}",
        sigv4::uri_encode(u.upload_id.get().expect("created"), false)
    );
    let completed = ctx.client.retry(|| {
        let (_, xml) = ctx
            .client
            .call("POST", &u.key, &query, &headers, body.as_bytes())?;
        // 200 OK can still carry an <Error> (the store failed while assembling).
        match error_in_ok_body(&xml) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    });
    match completed {
        Ok(()) => {
            ctx.files.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(e) => {
            abort_upload(ctx, u);
            Err(e)
        }
    }
}

fn abort_upload(ctx: &Ctx, u: &Upload) {
    if let Some(id) = u.upload_id.get() {
        let query = format!("uploadId={}", sigv4::uri_encode(id, false));
        let _ = ctx.client.call("DELETE", &u.key, &query, &[], b"");
    }
}

// -- get -----------------------------------------------------------------------------------

/// Where `key` goes under DIR, or None for a key that cannot be a file there.
fn destination(dir: &Path, prefix: &str, key: &str) -> Option<PathBuf> {
    let rel = key.strip_prefix(prefix)?;
    if rel.is_empty() || rel.starts_with('/') || rel.ends_with('/') {
        return None;
    }
    if rel
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return None;
    }
    Some(dir.join(rel))
}

fn temp_path(ctx: &Ctx, dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = ctx.tmp_counter.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.rsx{}-{n}", std::process::id()))
}

fn get(ctx: &Arc<Ctx>) -> Result<(), Error> {
    std::fs::create_dir_all(&ctx.args.dir)?;
    run_workers(ctx, |ctx| {
        ctx.client.list(&ctx.args.prefix, |objects| {
            for o in objects {
                let Some(dest) = destination(&ctx.args.dir, &ctx.args.prefix, &o.key) else {
                    eprintln!("skipped key {:?}", o.key);
                    continue;
                };
                if o.size > ctx.args.part_size {
                    ctx.queue.push(
                        Task::GetBig {
                            key: o.key,
                            size: o.size,
                            dest,
                        },
                        false,
                    );
                } else {
                    ctx.queue.push(Task::Get { key: o.key, dest }, false);
                }
            }
        })
    })
}

fn publish(ctx: &Ctx, tmp: &Path, dest: &Path, file: &File) -> Result<(), Error> {
    if ctx.args.fsync {
        file.sync_all()?;
    }
    std::fs::rename(tmp, dest)?;
    Ok(())
}

fn get_small(ctx: &Ctx, key: &str, dest: &Path) -> Result<(), Error> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let headers = [("x-amz-checksum-mode".to_string(), "ENABLED".to_string())];
    let (data, expected) = ctx.client.retry(|| {
        let mut r = ctx.client.send("GET", key, "", &headers, b"")?;
        if r.status().as_u16() != 200 {
            drain(&mut r);
            return Err(Error::Protocol(format!("GET answered {}", r.status())));
        }
        let length: Option<usize> =
            header(r.headers(), "content-length").and_then(|v| v.parse().ok());
        let expected = native_crc(r.headers());
        let mut data = Vec::with_capacity(length.unwrap_or(64 * 1024));
        r.body_mut()
            .as_reader()
            .read_to_end(&mut data)
            .map_err(|e| Error::Transport(format!("body: {e}")))?;
        if length.is_some_and(|n| n != data.len()) {
            return Err(Error::Transport(format!(
                "body of {} bytes, expected {length:?}",
                data.len()
            )));
        }
        Ok((data, expected))
    })?;
    if let Some(crc) = expected {
        let got = crc64(&data);
        if got != crc {
            return Err(Error::Integrity(format!(
                "CRC64NVME {got:016x}, the store says {crc:016x}"
            )));
        }
        ctx.crc_checked.fetch_add(1, Ordering::Relaxed);
    }
    let tmp = temp_path(ctx, dest);
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&data)?;
        publish(ctx, &tmp, dest, &f)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    ctx.files.fetch_add(1, Ordering::Relaxed);
    ctx.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
    Ok(())
}

struct Download {
    key: String,
    dest: PathBuf,
    tmp: PathBuf,
    size: u64,
    part_size: u64,
    etag: String,
    expected_crc: Option<u64>,
    file: File,
    crcs: Mutex<Vec<Option<u64>>>,
    remaining: AtomicUsize,
    failed: AtomicBool,
}

fn get_big(ctx: &Ctx, key: &str, listed_size: u64, dest: &Path) -> Result<(), Error> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let headers = [("x-amz-checksum-mode".to_string(), "ENABLED".to_string())];
    let (h, _) = ctx.client.call("HEAD", key, "", &headers, b"")?;
    let size: u64 = header(&h, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(listed_size);
    let etag = header(&h, "etag")
        .map(str::to_string)
        .ok_or_else(|| Error::Protocol("HEAD without ETag".into()))?;
    let tmp = temp_path(ctx, dest);
    let file = File::create(&tmp)?;
    file.set_len(size)?;
    let n = size.div_ceil(ctx.args.part_size).max(1) as usize;
    let d = Arc::new(Download {
        key: key.to_string(),
        dest: dest.to_path_buf(),
        tmp,
        size,
        part_size: ctx.args.part_size,
        etag,
        expected_crc: native_crc(&h),
        file,
        crcs: Mutex::new(vec![None; n]),
        remaining: AtomicUsize::new(n),
        failed: AtomicBool::new(false),
    });
    for i in (0..n).rev() {
        ctx.queue.push(Task::Range(d.clone(), i), true);
    }
    Ok(())
}

/// `bytes START-END/TOTAL` -> (start, end inclusive, total).
fn content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (a, b) = span.split_once('-')?;
    Some((
        a.trim().parse().ok()?,
        b.trim().parse().ok()?,
        total.trim().parse().ok()?,
    ))
}

fn get_range(ctx: &Ctx, d: &Arc<Download>, i: usize) -> Result<(), Error> {
    let result = if d.failed.load(Ordering::SeqCst) {
        Ok(())
    } else {
        let _slot = ctx.parts.acquire();
        fetch_range(ctx, d, i)
    };
    if result.is_err() {
        d.failed.store(true, Ordering::SeqCst);
    }
    if d.remaining.fetch_sub(1, Ordering::SeqCst) == 1 {
        let finished = if d.failed.load(Ordering::SeqCst) {
            let _ = std::fs::remove_file(&d.tmp);
            Ok(())
        } else {
            finish_download(ctx, d)
        };
        if let Err(e) = finished {
            let _ = std::fs::remove_file(&d.tmp);
            ctx.fail(&d.key, &e);
        }
    }
    result
}

fn fetch_range(ctx: &Ctx, d: &Download, i: usize) -> Result<(), Error> {
    let start = i as u64 * d.part_size;
    let end = (start + d.part_size).min(d.size); // exclusive
    let headers = [
        (
            "Range".to_string(),
            format!("bytes={start}-{}", end.max(1) - 1),
        ),
        ("If-Match".to_string(), d.etag.clone()),
    ];
    let crc = ctx.client.retry(|| {
        let mut r = ctx.client.send("GET", &d.key, "", &headers, b"")?;
        let status = r.status().as_u16();
        // Judged by Content-Range, not by status: rclone answers 200 with the range asked for.
        match header(r.headers(), "content-range").map(content_range) {
            Some(Some((a, b, total))) if a == start && b + 1 == end && total == d.size => {}
            Some(other) => {
                drain(&mut r);
                return Err(Error::Protocol(format!(
                    "asked bytes {start}-{}, got Content-Range {other:?} (status {status})",
                    end - 1
                )));
            }
            None if status == 200 && start == 0 && end == d.size => {} // the whole object
            None => {
                drain(&mut r);
                return Err(Error::Protocol(format!(
                    "asked bytes {start}-{}, got status {status} without Content-Range: the store ignores Range",
                    end - 1
                )));
            }
        }
        let mut digest = crc_fast::Digest::new(CRC);
        let mut reader = r.body_mut().as_reader();
        let mut buf = vec![0u8; READ_CHUNK];
        let mut offset = start;
        loop {
            let n = s3::read_into(&mut reader, &mut buf)
                .map_err(|e| Error::Transport(format!("body at byte {offset}: {e}")))?;
            if n == 0 {
                break;
            }
            if offset + n as u64 > end {
                return Err(Error::Protocol(format!("range {start}-{end} got more bytes")));
            }
            d.file.write_all_at(&buf[..n], offset)?;
            digest.update(&buf[..n]);
            offset += n as u64;
        }
        if offset != end {
            return Err(Error::Transport(format!("range body ended at {offset}, expected {end}")));
        }
        Ok(digest.finalize())
    })?;
    d.crcs.lock().unwrap()[i] = Some(crc);
    ctx.bytes.fetch_add(end - start, Ordering::Relaxed);
    Ok(())
}

fn finish_download(ctx: &Ctx, d: &Download) -> Result<(), Error> {
    let crcs = d.crcs.lock().unwrap().clone();
    let mut whole: Option<u64> = None;
    for (i, crc) in crcs.iter().enumerate() {
        let crc = crc.ok_or_else(|| Error::Protocol("a range is missing".into()))?;
        let start = i as u64 * d.part_size;
        let len = (start + d.part_size).min(d.size) - start;
        whole = Some(match whole {
            None => crc,
            Some(w) => crc_fast::checksum_combine(CRC, w, crc, len),
        });
    }
    let got = d.file.metadata()?.len();
    if got != d.size {
        return Err(Error::Integrity(format!(
            "{got} bytes, expected {}",
            d.size
        )));
    }
    if let (Some(expected), Some(whole)) = (d.expected_crc, whole) {
        if expected != whole {
            return Err(Error::Integrity(format!(
                "CRC64NVME {whole:016x}, the store says {expected:016x}"
            )));
        }
        ctx.crc_checked.fetch_add(1, Ordering::Relaxed);
    }
    publish(ctx, &d.tmp, &d.dest, &d.file)?;
    ctx.files.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

// -- sign ----------------------------------------------------------------------------------

fn sign(a: &Args) -> Result<(), String> {
    let payload = match (&a.payload, &a.body_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => {
            let body = std::fs::read(f).map_err(|e| e.to_string())?;
            if body.is_empty() {
                sigv4::EMPTY_SHA256.to_string()
            } else {
                sigv4::sha256_hex(&body)
            }
        }
        (None, None) => sigv4::EMPTY_SHA256.to_string(),
    };
    let signer = sigv4::Signer::new(
        sigv4::Credentials {
            access_key: a.access_key.clone(),
            secret_key: a.secret.clone(),
            token: a.token.clone(),
        },
        &a.region,
    );
    for (k, v) in signer.sign(&a.method, &a.url, &a.headers, &payload, &a.now) {
        println!("{k}: {v}");
    }
    Ok(())
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rust-engine: {e}");
            std::process::exit(2);
        }
    };
    if args.cmd == "sign" {
        if let Err(e) = sign(&args) {
            eprintln!("rust-engine: {e}");
            std::process::exit(2);
        }
        return;
    }
    let signer = sigv4::Signer::new(
        sigv4::Credentials {
            access_key: args.access_key.clone(),
            secret_key: args.secret.clone(),
            token: args.token.clone(),
        },
        &args.region,
    );
    let mut client = match Client::new(&args.endpoint, &args.bucket, signer, args.concurrency) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rust-engine: {e}");
            std::process::exit(2);
        }
    };
    client.unsigned_payload = !args.sha256_payload;
    let ctx = Arc::new(Ctx {
        client,
        queue: Queue {
            state: Mutex::new((VecDeque::new(), 0)),
            cv: Condvar::new(),
        },
        parts: Slots {
            free: Mutex::new(args.max_parts),
            cv: Condvar::new(),
        },
        args: args.clone(),
        errors: Mutex::new(Vec::new()),
        files: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        tmp_counter: AtomicU64::new(0),
        crc_checked: AtomicU64::new(0),
    });
    let started = Instant::now();
    let result = match args.cmd.as_str() {
        "put" => put(&ctx),
        "get" => get(&ctx),
        other => {
            eprintln!("rust-engine: unknown command {other:?}");
            std::process::exit(2);
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let errors = ctx.errors.lock().unwrap();
    eprintln!(
        "{}: {} files ({} CRC64NVME-checked), {} bytes in {elapsed:.3} s; {} requests, {} retries, {} errors",
        args.cmd,
        ctx.files.load(Ordering::Relaxed),
        ctx.crc_checked.load(Ordering::Relaxed),
        ctx.bytes.load(Ordering::Relaxed),
        ctx.client.requests.load(Ordering::Relaxed),
        ctx.client.retries.load(Ordering::Relaxed),
        errors.len()
    );
    for e in errors.iter().take(10) {
        eprintln!("  {e}");
    }
    if let Err(e) = &result {
        eprintln!("rust-engine: {e}");
    }
    if result.is_err() || !errors.is_empty() {
        std::process::exit(1);
    }
}
