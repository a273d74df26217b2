//! loadrec: a load client that records every request it makes, for the per-request timelines
//! of the benchmark (gaps, latency during reloads vs steady state, the plot). wrk and hey give
//! throughput; they cannot say *when* a request failed or how long the longest silence was.
//!
//!   loadrec --out FILE [--stop-file PATH] [--max-seconds S] [--timeout S] [--path /]
//!           SPEC...          SPEC = tcp:HOST:PORT/MODE/N  or  unix:/PATH/MODE/N
//!                            MODE = keepalive (reuse connections) | close (one per request)
//!
//! Each of the N connections of a SPEC is a thread sending GET requests back to back until
//! the stop file appears or max-seconds pass. Output, one CSV line per request:
//!   start (unix seconds), latency_ms, outcome, spec, reused, worker pid, master pid, wait_ms
//! outcome: the HTTP status code, or refused | reset | timeout | eof | noent | error.
//! `reused` is 1 when the request went out on a kept-alive connection that had served before
//! (a failure there is the classic keep-alive close race).
//! `wait_ms` is the time the thread spent runnable but waiting for a CPU since its previous
//! record ended (the kernel's run_delay, /proc/thread-self/schedstat), empty where the kernel
//! does not keep it: a bound on the part of a gap between completions that was the client's
//! own doing, when the load generators share its CPU.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone)]
enum Addr {
    Tcp(std::net::SocketAddr),
    Unix(PathBuf),
}

#[derive(Clone)]
struct Spec {
    addr: Addr,
    keepalive: bool,
    conns: usize,
}

trait Stream: Read + Write + Send {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

struct Record {
    start: f64,
    latency_ms: f64,
    outcome: String,
    reused: bool,
    worker: u32,
    master: u32,
    wait_ms: Option<f64>,
}

/// The calling thread's time spent waiting on a run queue, as the kernel counts it.
struct RunDelay {
    file: Option<std::fs::File>,
    last_ns: Option<u64>,
}

impl RunDelay {
    /// Opened by the thread it measures: thread-self names the opening thread.
    fn open() -> RunDelay {
        let mut delay = RunDelay { file: std::fs::File::open("/proc/thread-self/schedstat").ok(), last_ns: None };
        delay.last_ns = delay.now_ns();
        delay
    }

    /// Nanoseconds waited so far ("cpu_ns run_delay_ns timeslices"), re-read from offset 0.
    fn now_ns(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.file.as_ref()?.read_at(&mut buf, 0).ok()?;
        std::str::from_utf8(&buf[..n]).ok()?.split_whitespace().nth(1)?.parse().ok()
    }

    /// Milliseconds waited since the previous call (or since it was opened).
    fn since_last_ms(&mut self) -> Option<f64> {
        let (last, now) = (self.last_ns, self.now_ns());
        self.last_ns = now;
        Some(now?.saturating_sub(last?) as f64 / 1e6)
    }
}

fn parse_spec(text: &str) -> Result<Spec, String> {
    let bad = || format!("invalid spec '{text}': expected tcp:HOST:PORT/MODE/N or unix:/PATH/MODE/N");
    let (rest, n) = text.rsplit_once('/').ok_or_else(bad)?;
    let (target, mode) = rest.rsplit_once('/').ok_or_else(bad)?;
    let conns: usize = n.parse().map_err(|_| bad())?;
    let keepalive = match mode {
        "keepalive" => true,
        "close" => false,
        _ => return Err(bad()),
    };
    let addr = if let Some(a) = target.strip_prefix("tcp:") {
        Addr::Tcp(a.to_socket_addrs().map_err(|e| format!("{text}: {e}"))?.next().ok_or_else(bad)?)
    } else if let Some(p) = target.strip_prefix("unix:") {
        Addr::Unix(PathBuf::from(p))
    } else {
        return Err(bad());
    };
    Ok(Spec { addr, keepalive, conns })
}

fn classify(e: &std::io::Error) -> &'static str {
    match e.kind() {
        ErrorKind::ConnectionRefused => "refused",
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe => "reset",
        ErrorKind::TimedOut | ErrorKind::WouldBlock => "timeout",
        ErrorKind::UnexpectedEof => "eof",
        ErrorKind::NotFound => "noent",
        _ => "error",
    }
}

fn connect(addr: &Addr, timeout: Duration) -> std::io::Result<Box<dyn Stream>> {
    match addr {
        Addr::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, timeout)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(Box::new(s))
        }
        Addr::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(Some(timeout))?;
            s.set_write_timeout(Some(timeout))?;
            Ok(Box::new(s))
        }
    }
}

struct Answer {
    status: u16,
    close: bool,
    worker: u32,
    master: u32,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn number_after(body: &str, key: &str) -> u32 {
    body.split_whitespace().find_map(|w| w.strip_prefix(key)).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Sends one GET and reads one response (Content-Length framed, or up to EOF).
fn exchange(stream: &mut dyn Stream, request: &[u8], buf: &mut Vec<u8>) -> std::io::Result<Answer> {
    stream.write_all(request)?;
    buf.clear();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::new(ErrorKind::InvalidData, "not an HTTP response"))?;
    let mut length = None;
    let mut close = head.starts_with("http/1.0");
    for line in head.lines() {
        if let Some(v) = line.strip_prefix("content-length:") {
            length = v.trim().parse::<usize>().ok();
        } else if let Some(v) = line.strip_prefix("connection:") {
            let v = v.trim();
            if v == "close" {
                close = true;
            } else if v == "keep-alive" {
                close = false;
            }
        }
    }
    match length {
        Some(len) => {
            while buf.len() < head_end + len {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    return Err(std::io::Error::new(ErrorKind::UnexpectedEof, "connection closed mid-body"));
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        None => {
            close = true;
            loop {
                let n = stream.read(&mut chunk)?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
    let body = String::from_utf8_lossy(&buf[head_end..]);
    Ok(Answer { status, close, worker: number_after(&body, "pid="), master: number_after(&body, "master=") })
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// A thread's records, kept outside the thread: a thread that panics loses none of the requests
/// it recorded before (they are written out, and the run exits non-zero).
type Records = Arc<Mutex<Vec<Record>>>;

fn push(records: &Records, record: Record) {
    records.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(record);
}

fn worker(spec: Spec, path: String, timeout: Duration, stop: Arc<AtomicBool>, records: Records) {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: loadrec\r\n{}\r\n",
        if spec.keepalive { "" } else { "Connection: close\r\n" }
    );
    let mut conn: Option<Box<dyn Stream>> = None;
    let mut served = 0u64; // requests answered on the current connection
    let mut buf = Vec::with_capacity(8192);
    let mut run_delay = RunDelay::open();
    while !stop.load(Ordering::Relaxed) {
        let start = now_unix();
        let t0 = Instant::now();
        let reused = conn.is_some() && served > 0;
        let result = (|| {
            if conn.is_none() {
                conn = Some(connect(&spec.addr, timeout)?);
                served = 0;
            }
            exchange(conn.as_mut().unwrap().as_mut(), request.as_bytes(), &mut buf)
        })();
        let latency_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let wait_ms = run_delay.since_last_ms();
        match result {
            Ok(a) => {
                served += 1;
                if a.close || !spec.keepalive {
                    conn = None;
                }
                push(
                    &records,
                    Record {
                        start,
                        latency_ms,
                        outcome: a.status.to_string(),
                        reused,
                        worker: a.worker,
                        master: a.master,
                        wait_ms,
                    },
                );
            }
            Err(e) => {
                conn = None;
                push(
                    &records,
                    Record {
                        start,
                        latency_ms,
                        outcome: classify(&e).to_string(),
                        reused,
                        worker: 0,
                        master: 0,
                        wait_ms,
                    },
                );
                // Do not spin on an address that refuses: a client would back off a little too.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut stop_file: Option<PathBuf> = None;
    let mut max_seconds = 600.0f64;
    let mut timeout = 10.0f64;
    let mut path = "/".to_string();
    let mut specs = Vec::new();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| die(&format!("{name} needs a value")));
        match arg.as_str() {
            "--out" => out = Some(PathBuf::from(value("--out"))),
            "--stop-file" => stop_file = Some(PathBuf::from(value("--stop-file"))),
            "--max-seconds" => {
                max_seconds = value("--max-seconds").parse().unwrap_or_else(|_| die("bad --max-seconds"))
            }
            "--timeout" => timeout = value("--timeout").parse().unwrap_or_else(|_| die("bad --timeout")),
            "--path" => path = value("--path"),
            s if s.starts_with("--") => die(&format!("unknown option {s}")),
            s => specs.push(parse_spec(s).unwrap_or_else(|e| die(&e))),
        }
    }
    let out = out.unwrap_or_else(|| die("--out FILE is required"));
    if specs.is_empty() {
        die("give at least one SPEC");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for (index, spec) in specs.iter().enumerate() {
        for _ in 0..spec.conns {
            let (spec, path, stop) = (spec.clone(), path.clone(), stop.clone());
            let timeout = Duration::from_secs_f64(timeout);
            let records: Records = Arc::new(Mutex::new(Vec::with_capacity(100_000)));
            let mine = records.clone();
            threads.push((index, records, std::thread::spawn(move || worker(spec, path, timeout, stop, mine))));
        }
    }
    // Bounded: stop at the stop file, or after max-seconds whatever happens.
    let deadline = Instant::now() + Duration::from_secs_f64(max_seconds);
    while Instant::now() < deadline && !stop_file.as_ref().is_some_and(|f| f.exists()) {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let mut text = String::from("start,latency_ms,outcome,spec,reused,worker,master,wait_ms\n");
    let mut total = 0usize;
    let mut panicked = 0usize;
    for (index, records, thread) in threads {
        if thread.join().is_err() {
            panicked += 1;
        }
        let records = std::mem::take(&mut *records.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        total += records.len();
        for r in records {
            text.push_str(&format!(
                "{:.6},{:.3},{},{},{},{},{},{}\n",
                r.start,
                r.latency_ms,
                r.outcome,
                index,
                r.reused as u8,
                r.worker,
                r.master,
                r.wait_ms.map(|w| format!("{w:.3}")).unwrap_or_default()
            ));
        }
    }
    std::fs::write(&out, text).unwrap_or_else(|e| die(&format!("failed to write {}: {e}", out.display())));
    eprintln!("loadrec: {total} requests recorded in {}", out.display());
    if panicked > 0 {
        // The records are written (none lost), but the load was not what was asked for.
        eprintln!("loadrec: {panicked} load thread(s) panicked; their records up to the panic are in the file");
        std::process::exit(3);
    }
}

fn die(message: &str) -> ! {
    eprintln!("loadrec: {message}");
    std::process::exit(2);
}
