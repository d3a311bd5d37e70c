//! delay-proxy: a TCP proxy that adds a fixed one-way delay, so a server on loopback looks like
//! one across a network with a round trip of twice that delay.
//!
//! ```text
//! delay-proxy --listen 127.0.0.1:0 --upstream 127.0.0.1:8333 --delay-ms 10
//! ```
//!
//! The first line on stdout is the bound address (`listening 127.0.0.1:NNNNN`); then it serves
//! until killed. It works on bytes, not on HTTP: whatever the client sends (Host header, SigV4
//! signatures, TLS) reaches the upstream unchanged.
//!
//! How the network is imitated:
//! - Every chunk read from one side is written to the other `delay` after it was read, in order:
//!   chunks in flight are pipelined, so a long transfer keeps its throughput and only gains
//!   latency (a chunk never overtakes an earlier one, and none leaves early).
//! - A new connection first pays for a TCP handshake: the upstream connection is opened one
//!   round trip (2 x delay) plus one delay after the client's, so the client's first bytes
//!   arrive at 3 x delay, like data sent right behind the handshake. A request/response on a
//!   fresh connection thus takes 2 round trips, on a kept-alive connection 1.
//! - A half-close (FIN) travels like data: it is passed on once everything before it is
//!   written. A reset or a failed write tears the connection down.
//! - Each direction queues at most `--queue-bytes` (like a TCP window); a full queue stops
//!   reading from the sender, whose socket buffers then fill and push back on it.
//!
//! Threads, std only. Per connection, one reader thread per direction stamps each chunk it
//! reads with the time it is due and queues it in that direction's `Pipe`. Delivery is split
//! in two so that small exchanges cost few thread wake-ups:
//! - A few `Shard` threads (one per core; each connection belongs to one) keep a FIFO of due
//!   times, sleep until the first, and send what is due without blocking (`MSG_DONTWAIT`). That
//!   covers requests and responses that fit in the socket buffers: per chunk, one wake-up (the
//!   reader's), the shard's being shared by every chunk due at about the same time.
//! - When a send would block (a bulk transfer outrunning its receiver), the direction is handed
//!   to its own writer thread, which writes with blocking calls, sleeping until each chunk is
//!   due, until the queue is empty, then hands the direction back.
//!
//! Only one of the two ever sends for a direction at a time (`PipeState::writer_owns`).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::mem;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: delay-proxy --upstream HOST:PORT [--listen ADDR:PORT] [--delay-ms MS] [--queue-bytes N]

  --upstream HOST:PORT   where every accepted connection is forwarded
  --listen ADDR:PORT     where to listen (default 127.0.0.1:0, any free port)
  --delay-ms MS          one-way delay added to every byte, in milliseconds (default 10)
  --queue-bytes N        bytes queued per direction before the proxy stops reading (default 32 MiB)

Prints `listening ADDR:PORT` on stdout once bound, then serves until killed.";

/// Reads start this size and double (up to `MAX_READ`) each time a read fills the buffer, so
/// idle connections stay small and bulk transfers move in big chunks.
const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;
/// Full-size buffers a direction keeps for reuse instead of freeing them.
const SPARE_BUFFERS: usize = 4;
/// The threads keep their buffers on the heap and need little stack.
const THREAD_STACK: usize = 128 * 1024;
const DEFAULT_QUEUE_BYTES: usize = 32 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A busy shard wakes at most this often, taking everything due by then: under load chunks may
/// leave up to this much late (never early), and one wake-up serves many of them.
const SHARD_TICK: Duration = Duration::from_micros(200);

struct Config {
    listen: SocketAddr,
    upstream: Vec<SocketAddr>,
    delay: Duration,
    queue_bytes: usize,
}

/// What a reader hands on: bytes, or the end of the stream, each with the time it is due.
enum Item {
    /// `buf[start..end]`; `buf` may be a whole read buffer handed over without copying.
    Data {
        buf: Vec<u8>,
        start: usize,
        end: usize,
        due: Instant,
    },
    /// The sender half-closed: shut down writing once everything before is written.
    Eof { due: Instant },
    /// Reading failed (a reset): tear down the destination.
    Reset { due: Instant },
}

impl Item {
    fn due(&self) -> Instant {
        match self {
            Item::Data { due, .. } | Item::Eof { due } | Item::Reset { due } => *due,
        }
    }

    fn len(&self) -> usize {
        match self {
            Item::Data { start, end, .. } => end - start,
            Item::Eof { .. } | Item::Reset { .. } => 0,
        }
    }
}

/// One direction of one connection: a byte-bounded FIFO from its reader to its destination.
struct Pipe {
    state: Mutex<PipeState>,
    /// The writer thread waits here for the direction to be handed to it (or closed).
    writer_cv: Condvar,
    /// The reader waits here for room in the queue.
    room_cv: Condvar,
    capacity: usize,
    /// The socket read from (shut down if the destination fails).
    src: Arc<TcpStream>,
    /// The socket written to; set once the upstream connection is open.
    dst: OnceLock<Arc<TcpStream>>,
    shard: Arc<Shard>,
}

struct PipeState {
    items: VecDeque<Item>,
    /// Bytes in `items`.
    queued: usize,
    /// Buffers of `MAX_READ` bytes' capacity, already sent.
    spare: Vec<Vec<u8>>,
    /// The writer thread sends (and the shard keeps off) until it has emptied `items`.
    writer_owns: bool,
    /// Nothing more is sent: end of stream was passed on, or the destination failed.
    closed: bool,
    reader_waiting: bool,
}

impl Pipe {
    fn new(
        capacity: usize,
        src: Arc<TcpStream>,
        dst: Option<Arc<TcpStream>>,
        shard: Arc<Shard>,
    ) -> Self {
        let pipe = Pipe {
            state: Mutex::new(PipeState {
                items: VecDeque::new(),
                queued: 0,
                spare: Vec::new(),
                // Without a destination yet, the writer (the connecting thread) starts as owner.
                writer_owns: dst.is_none(),
                closed: false,
                reader_waiting: false,
            }),
            writer_cv: Condvar::new(),
            room_cv: Condvar::new(),
            capacity,
            src,
            dst: OnceLock::new(),
            shard,
        };
        if let Some(dst) = dst {
            let _ = pipe.dst.set(dst);
        }
        pipe
    }

    fn lock(&self) -> MutexGuard<'_, PipeState> {
        // A panicking thread leaves consistent state behind (every update is one statement).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, cv: &Condvar, st: MutexGuard<'a, PipeState>) -> MutexGuard<'a, PipeState> {
        cv.wait(st).unwrap_or_else(|e| e.into_inner())
    }

    /// Reader: wait until there is room for another read; false once nothing more is sent.
    fn wait_for_room(&self) -> bool {
        let mut st = self.lock();
        while st.queued >= self.capacity && !st.closed {
            st.reader_waiting = true;
            st = self.wait(&self.room_cv, st);
        }
        st.reader_waiting = false;
        !st.closed
    }

    /// Reader: queue `item`, and tell the shard when it is due unless the writer owns the
    /// direction (it then finds the item itself). False once nothing more is sent.
    fn push(self: &Arc<Self>, item: Item) -> bool {
        let mut st = self.lock();
        if st.closed {
            return false;
        }
        let due = item.due();
        st.queued += item.len();
        st.items.push_back(item);
        let ticket = !st.writer_owns;
        drop(st);
        if ticket {
            self.shard.submit(due, Arc::clone(self));
        }
        true
    }

    fn take_spare(&self) -> Option<Vec<u8>> {
        self.lock().spare.pop()
    }

    /// After items were taken out: release a reader waiting for room.
    fn taken(&self, st: &PipeState) {
        if st.reader_waiting && st.queued < self.capacity {
            self.room_cv.notify_one();
        }
    }

    fn recycle(st: &mut PipeState, buf: Vec<u8>) {
        if buf.capacity() >= MAX_READ && st.spare.len() < SPARE_BUFFERS {
            st.spare.push(buf);
        }
    }

    /// Nothing more is sent in this direction: drop what is queued, release the reader and
    /// the writer thread.
    fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        st.items.clear();
        st.queued = 0;
        st.spare.clear();
        drop(st);
        self.room_cv.notify_all();
        self.writer_cv.notify_all();
    }

    /// The destination failed: close, and shut both sockets down so every thread of the
    /// connection wakes up and ends (the other direction sees end of stream and follows).
    fn tear_down(&self) {
        self.close();
        let _ = self.src.shutdown(Shutdown::Both);
        if let Some(dst) = self.dst.get() {
            let _ = dst.shutdown(Shutdown::Both);
        }
    }

    /// Pass on an end of stream (or a reset) and close.
    fn finish(&self, dst: &TcpStream, item: &Item) {
        let how = match item {
            Item::Reset { .. } => Shutdown::Both,
            _ => Shutdown::Write,
        };
        let _ = dst.shutdown(how);
        self.close();
    }

    /// Shard: send whatever is due without blocking. If a send would block, hand the rest
    /// to the writer thread.
    fn service(&self) {
        let now = Instant::now();
        let mut due_items = Vec::new();
        {
            let mut st = self.lock();
            if st.writer_owns || st.closed {
                return;
            }
            while st.items.front().is_some_and(|item| item.due() <= now) {
                let item = st.items.pop_front().expect("front exists");
                st.queued -= item.len();
                due_items.push(item);
            }
            self.taken(&st);
        }
        if due_items.is_empty() {
            return;
        }
        // Only this shard's thread sends while the writer does not own the direction, and the
        // writer only owns it once `hand_off` says so: the sends below cannot interleave.
        let dst = self
            .dst
            .get()
            .expect("a pipe without a destination is owned by its writer");
        let mut sent = Vec::new();
        let mut items = due_items.into_iter();
        while let Some(item) = items.next() {
            match item {
                Item::Data {
                    buf,
                    start,
                    end,
                    due,
                } => match os::send_nonblocking(dst, &buf[start..end]) {
                    Ok(n) if start + n == end => sent.push(buf),
                    Ok(n) => {
                        let rest = Item::Data {
                            buf,
                            start: start + n,
                            end,
                            due,
                        };
                        return self.hand_off(std::iter::once(rest).chain(items), sent);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let rest = Item::Data {
                            buf,
                            start,
                            end,
                            due,
                        };
                        return self.hand_off(std::iter::once(rest).chain(items), sent);
                    }
                    Err(_) => return self.tear_down(),
                },
                Item::Eof { .. } | Item::Reset { .. } => return self.finish(dst, &item),
            }
        }
        if sent.iter().any(|buf| buf.capacity() >= MAX_READ) {
            let mut st = self.lock();
            for buf in sent {
                Self::recycle(&mut st, buf);
            }
        }
    }

    /// Shard: put `rest` back in front of the queue and give the direction to the writer.
    fn hand_off(&self, rest: impl DoubleEndedIterator<Item = Item>, sent: Vec<Vec<u8>>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        for item in rest.rev() {
            st.queued += item.len();
            st.items.push_front(item);
        }
        for buf in sent {
            Self::recycle(&mut st, buf);
        }
        st.writer_owns = true;
        drop(st);
        self.writer_cv.notify_one();
    }

    /// Writer thread: whenever the direction is handed over, write the queue out with blocking
    /// writes, each chunk when it is due, until it is empty. Returns once the pipe is closed.
    fn run_writer(&self) {
        let dst = Arc::clone(
            self.dst
                .get()
                .expect("the destination is set before the writer runs"),
        );
        let mut st = self.lock();
        loop {
            if st.closed {
                return;
            }
            if !st.writer_owns {
                st = self.wait(&self.writer_cv, st);
                continue;
            }
            let Some(due) = st.items.front().map(Item::due) else {
                // Empty: the reader's next chunk goes to the shard again.
                st.writer_owns = false;
                continue;
            };
            let now = Instant::now();
            if due > now {
                drop(st);
                thread::sleep(due - now);
                st = self.lock();
                continue;
            }
            let item = st.items.pop_front().expect("front exists");
            st.queued -= item.len();
            self.taken(&st);
            drop(st);
            match item {
                Item::Data {
                    buf, start, end, ..
                } => {
                    if (&*dst).write_all(&buf[start..end]).is_err() {
                        return self.tear_down();
                    }
                    st = self.lock();
                    Self::recycle(&mut st, buf);
                }
                Item::Eof { .. } | Item::Reset { .. } => return self.finish(&dst, &item),
            }
        }
    }
}

/// A thread that sends what is due for its share of the connections.
struct Shard {
    /// (due, pipe) in the order chunks were read. The delay is the same for every chunk, so
    /// due times only grow (up to the few microseconds between stamping and queueing).
    tickets: Mutex<VecDeque<(Instant, Arc<Pipe>)>>,
    cv: Condvar,
}

impl Shard {
    fn submit(&self, due: Instant, pipe: Arc<Pipe>) {
        let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        let was_empty = tickets.is_empty();
        tickets.push_back((due, pipe));
        drop(tickets);
        // Otherwise the shard is awake or sleeping until an earlier due time.
        if was_empty {
            self.cv.notify_one();
        }
    }

    fn run(&self) {
        let mut last_wake = Instant::now();
        let mut batch = Vec::new();
        loop {
            {
                let mut tickets = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
                loop {
                    let Some(&(due, _)) = tickets.front() else {
                        tickets = self.cv.wait(tickets).unwrap_or_else(|e| e.into_inner());
                        continue;
                    };
                    let now = Instant::now();
                    let wake_at = due.max(last_wake + SHARD_TICK);
                    if wake_at > now {
                        tickets = self
                            .cv
                            .wait_timeout(tickets, wake_at - now)
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                        continue;
                    }
                    while tickets.front().is_some_and(|(due, _)| *due <= now) {
                        batch.push(tickets.pop_front().expect("front exists").1);
                    }
                    break;
                }
            }
            last_wake = Instant::now();
            for pipe in batch.drain(..) {
                pipe.service();
            }
        }
    }
}

fn sleep_until(when: Instant) {
    let now = Instant::now();
    if when > now {
        thread::sleep(when - now);
    }
}

/// Reader thread: read `src` into `pipe`, stamping each chunk due `delay` after it was read.
fn pump_in(src: &TcpStream, pipe: &Arc<Pipe>, delay: Duration) {
    let mut size = MIN_READ;
    let mut buf = Vec::with_capacity(size);
    loop {
        // Room first, then read: while the queue is full the bytes stay in the kernel, and
        // they are stamped when the proxy actually takes them.
        if !pipe.wait_for_room() {
            return;
        }
        let len = match os::read_into(src, &mut buf, size) {
            Ok(0) => {
                pipe.push(Item::Eof {
                    due: Instant::now() + delay,
                });
                return;
            }
            Ok(n) => n,
            Err(_) => {
                pipe.push(Item::Reset {
                    due: Instant::now() + delay,
                });
                return;
            }
        };
        let due = Instant::now() + delay;
        let data = if len >= size / 4 {
            // Hand the buffer itself over; a read that filled it earns a bigger one.
            if len == size {
                size = (size * 2).min(MAX_READ);
            }
            let fresh = if size == MAX_READ {
                pipe.take_spare()
            } else {
                None
            };
            mem::replace(&mut buf, fresh.unwrap_or_else(|| Vec::with_capacity(size)))
        } else {
            // A small read: copy it out and keep the buffer.
            buf.clone()
        };
        let item = Item::Data {
            buf: data,
            start: 0,
            end: len,
            due,
        };
        if !pipe.push(item) {
            return;
        }
    }
}

fn spawn<F: FnOnce() + Send + 'static>(name: &str, f: F) -> io::Result<()> {
    thread::Builder::new()
        .name(name.to_string())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .map(drop)
}

fn connect(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no upstream address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Serve one accepted connection; this thread ends up as the client-to-upstream writer.
fn serve(client: TcpStream, accepted: Instant, cfg: Arc<Config>, shard: Arc<Shard>) {
    let _ = client.set_nodelay(true);
    let client = Arc::new(client);
    let delay = cfg.delay;
    // Read the client right away, so its first bytes are stamped when they were sent.
    let up = Arc::new(Pipe::new(
        cfg.queue_bytes,
        Arc::clone(&client),
        None,
        Arc::clone(&shard),
    ));
    {
        let (src, pipe) = (Arc::clone(&client), Arc::clone(&up));
        if let Err(e) = spawn("read-client", move || pump_in(&src, &pipe, delay)) {
            eprintln!("delay-proxy: cannot start a thread: {e}");
            return;
        }
    }
    // The handshake: one round trip before the client's first bytes leave, one delay on the way.
    sleep_until(accepted + delay * 3);
    let upstream = match connect(&cfg.upstream) {
        Ok(stream) => Arc::new(stream),
        Err(e) => {
            eprintln!("delay-proxy: cannot connect to the upstream: {e}");
            up.close();
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = up.dst.set(Arc::clone(&upstream));
    let down = Arc::new(Pipe::new(
        cfg.queue_bytes,
        Arc::clone(&upstream),
        Some(Arc::clone(&client)),
        shard,
    ));
    let started = {
        let (src, pipe) = (Arc::clone(&upstream), Arc::clone(&down));
        spawn("read-upstream", move || pump_in(&src, &pipe, delay))
    }
    .and_then(|()| {
        let pipe = Arc::clone(&down);
        spawn("write-client", move || pipe.run_writer())
    });
    if let Err(e) = started {
        eprintln!("delay-proxy: cannot start a thread: {e}");
        up.close();
        down.tear_down();
        return;
    }
    up.run_writer();
}

#[cfg(target_os = "linux")]
mod os {
    //! What std does not expose, via the libc std links anyway.
    use std::ffi::{c_int, c_ulong, c_void};
    use std::io;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    #[repr(C)]
    struct RLimit {
        cur: c_ulong,
        max: c_ulong,
    }

    extern "C" {
        fn getrlimit(resource: c_int, rlim: *mut RLimit) -> c_int;
        fn setrlimit(resource: c_int, rlim: *const RLimit) -> c_int;
        fn listen(fd: c_int, backlog: c_int) -> c_int;
        fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize;
        fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize;
    }

    const RLIMIT_NOFILE: c_int = 7;
    const MSG_DONTWAIT: c_int = 0x40;
    const MSG_NOSIGNAL: c_int = 0x4000;

    /// Two descriptors per connection: raise the soft limit on open files to the hard one.
    pub fn raise_open_files_limit() {
        let mut lim = RLimit { cur: 0, max: 0 };
        // SAFETY: plain libc calls on a properly laid out struct.
        unsafe {
            if getrlimit(RLIMIT_NOFILE, &mut lim) == 0 && lim.cur < lim.max {
                lim.cur = lim.max;
                setrlimit(RLIMIT_NOFILE, &lim);
            }
        }
    }

    /// std listens with a backlog of 128; hundreds of clients connecting at once overflow it
    /// and wait a second for their SYN to be retried. Listening again only raises the backlog
    /// (the kernel caps it at net.core.somaxconn).
    pub fn raise_backlog(listener: &TcpListener) {
        // SAFETY: the descriptor is a listening socket owned by `listener`.
        unsafe {
            listen(listener.as_raw_fd(), 4096);
        }
    }

    /// Read at most `max` bytes into `buf` (emptied first), without zeroing it beforehand.
    pub fn read_into(stream: &TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        buf.clear();
        buf.reserve(max);
        loop {
            // SAFETY: `buf` has room for `max` bytes; the descriptor is owned by `stream`.
            let n = unsafe { recv(stream.as_raw_fd(), buf.as_mut_ptr().cast(), max, 0) };
            if let Ok(n) = usize::try_from(n) {
                // SAFETY: the kernel initialized the first `n` bytes.
                unsafe { buf.set_len(n) };
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// Send what fits in the socket buffer now, on a socket other threads use blocking.
    pub fn send_nonblocking(stream: &TcpStream, data: &[u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `data` is valid for `data.len()` bytes; the descriptor is owned by `stream`.
            let n = unsafe {
                send(
                    stream.as_raw_fd(),
                    data.as_ptr().cast(),
                    data.len(),
                    MSG_DONTWAIT | MSG_NOSIGNAL,
                )
            };
            if let Ok(n) = usize::try_from(n) {
                return Ok(n);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod os {
    use std::io::{self, Read};
    use std::net::{TcpListener, TcpStream};

    pub fn raise_open_files_limit() {}

    pub fn raise_backlog(_listener: &TcpListener) {}

    /// Read at most `max` bytes into `buf` (emptied first).
    pub fn read_into(mut stream: &TcpStream, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
        buf.clear();
        buf.resize(max, 0);
        let read = loop {
            match stream.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                read => break read,
            }
        };
        buf.truncate(*read.as_ref().unwrap_or(&0));
        read
    }

    /// Elsewhere every chunk goes through the writer thread.
    pub fn send_nonblocking(_stream: &TcpStream, _data: &[u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
}

fn parse_args() -> Result<Config, String> {
    let mut listen = "127.0.0.1:0".to_string();
    let mut upstream = None;
    let mut delay_ms = 10.0_f64;
    let mut queue_bytes = DEFAULT_QUEUE_BYTES;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "-h" || arg == "--help" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--upstream" => upstream = Some(value()?),
            "--delay-ms" => {
                let v = value()?;
                delay_ms = v
                    .parse()
                    .ok()
                    .filter(|ms: &f64| ms.is_finite() && *ms >= 0.0)
                    .ok_or_else(|| format!("--delay-ms: not a non-negative number: {v}"))?;
            }
            "--queue-bytes" => {
                let v = value()?;
                queue_bytes = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("--queue-bytes: not a positive integer: {v}"))?;
            }
            _ => return Err(format!("unknown argument: {arg}")),
        }
    }
    let upstream = upstream.ok_or("--upstream is required")?;
    let listen = listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {listen}: {e}"))?
        .next()
        .ok_or_else(|| format!("--listen {listen}: no address"))?;
    let upstream: Vec<SocketAddr> = upstream
        .to_socket_addrs()
        .map_err(|e| format!("--upstream {upstream}: {e}"))?
        .collect();
    Ok(Config {
        listen,
        upstream,
        delay: Duration::from_secs_f64(delay_ms / 1000.0),
        queue_bytes,
    })
}

fn main() -> ExitCode {
    let cfg = match parse_args() {
        Ok(cfg) => Arc::new(cfg),
        Err(msg) => {
            eprintln!("delay-proxy: {msg}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    os::raise_open_files_limit();
    let listener = match TcpListener::bind(cfg.listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("delay-proxy: cannot listen on {}: {e}", cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    os::raise_backlog(&listener);
    let bound = match listener.local_addr() {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("delay-proxy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cores = thread::available_parallelism().map_or(2, |n| n.get().min(16));
    let mut shards = Vec::with_capacity(cores);
    for _ in 0..cores {
        let shard = Arc::new(Shard {
            tickets: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
        });
        let runner = Arc::clone(&shard);
        if let Err(e) = spawn("shard", move || runner.run()) {
            eprintln!("delay-proxy: cannot start a thread: {e}");
            return ExitCode::FAILURE;
        }
        shards.push(shard);
    }
    {
        // Nothing else is ever written to stdout, so a reader may close it after this line.
        let mut out = io::stdout().lock();
        let _ = writeln!(out, "listening {bound}");
        let _ = out.flush();
    }
    let next = AtomicUsize::new(0);
    loop {
        match listener.accept() {
            Ok((client, _)) => {
                let accepted = Instant::now();
                let cfg = Arc::clone(&cfg);
                let shard = Arc::clone(&shards[next.fetch_add(1, Ordering::Relaxed) % cores]);
                // On failure the closure, and with it the client socket, is dropped: closed.
                if let Err(e) = spawn("connection", move || serve(client, accepted, cfg, shard)) {
                    eprintln!("delay-proxy: cannot start a thread: {e}");
                }
            }
            Err(e) => {
                // Out of descriptors or memory, or a connection aborted before it was taken.
                eprintln!("delay-proxy: accept: {e}");
                thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
