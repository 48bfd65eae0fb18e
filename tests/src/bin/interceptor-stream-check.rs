//! Byte-exactness checks of a TCP path (the acceleration suite): a server and a client that
//! agree on a byte stream generated from a seed, so that each side checks every byte it
//! receives against the stream it expects (first mismatch reported by offset), whatever the
//! path between them did.
//!
//! `serve --listen ADDR` accepts connections; each starts with one line from the client,
//! `CASE SIZE SEED`, and the server plays its part of the case, then prints one JSON line
//! (`{"case":..,"received":..,"ok":..,"detail":..}`) to stdout. `run --to ADDR --case CASE ...`
//! plays the client's part and prints its own JSON line. Cases (client's view):
//! - `up`: sends SIZE bytes (`--via write|sendfile|splice`, `--writes big|small`), shuts its
//!   write side down, reads the server's verdict to EOF (half-close from the client's side);
//! - `down`: reads SIZE bytes (`--recv plain|peek|waitall|epoll`) until the server's FIN, then
//!   answers over the direction still open (half-close from the server's side);
//! - `both`: sends and receives SIZE bytes at once (`--writes small`: many small writes);
//! - `reset`: the server resets the connection half-way: an error or an early EOF, never a
//!   hang, and what arrived is a correct prefix;
//! - `abort`: the client resets the connection half-way (the server checks the prefix);
//! - `echo --connections N`: N connections open at once, each echoing SIZE bytes.
//!
//! The client reports, besides its verdict, what a blocking application would have seen go
//! wrong without losing bytes: blocking reads that returned `EAGAIN` early (retried) and
//! `MSG_WAITALL` reads that returned short (read on).
//!
//! `--stall-at BYTES` (down): after that many bytes the client prints `stalled`, stops reading
//! until a line arrives on stdin, then reads on. The server prints `{"progress":N}` after each
//! MiB it writes in `down` (how far a writer got while its reader stalled).

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use serde::Serialize;

/// Bound on any blocking read or write: a hang becomes a reported timeout.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Progress line cadence in `down`.
const PROGRESS_EVERY: u64 = 1 << 20;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    Serve {
        #[arg(long)]
        listen: SocketAddr,
    },
    Run(RunArgs),
}

#[derive(Parser, Clone)]
struct RunArgs {
    #[arg(long)]
    to: SocketAddr,
    #[arg(long, value_enum)]
    case: Case,
    #[arg(long, default_value_t = 1 << 20)]
    size: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, value_enum, default_value = "write")]
    via: Via,
    #[arg(long, value_enum, default_value = "big")]
    writes: Writes,
    #[arg(long, value_enum, default_value = "plain")]
    recv: Recv,
    #[arg(long)]
    stall_at: Option<u64>,
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// A file to stage the bytes in for `--via sendfile|splice`.
    #[arg(long)]
    file: Option<std::path::PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Case {
    Up,
    Down,
    Both,
    Reset,
    Abort,
    Echo,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Via {
    Write,
    Sendfile,
    Splice,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Writes {
    Big,
    Small,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Recv {
    Plain,
    Peek,
    Waitall,
    Epoll,
}

/// One side's verdict.
#[derive(Serialize, Default)]
struct Verdict {
    case: String,
    sent: u64,
    received: u64,
    ok: bool,
    /// What went wrong, or how the stream ended (`eof`, `error:ECONNRESET`, ...).
    detail: String,
    /// Blocking reads that returned `EAGAIN` before their timeout (retried; see `recv`).
    spurious_eagain: u64,
    /// `MSG_WAITALL` reads that returned fewer bytes than asked before the end of the stream.
    short_waitall: u64,
}

/// `MSG_WAITALL` reads that came back short although the stream went on.
static SHORT_WAITALL: AtomicU64 = AtomicU64::new(0);

/// Blocking reads that returned `EAGAIN` although no timeout had passed.
static SPURIOUS_EAGAIN: AtomicU64 = AtomicU64::new(0);

/// The agreed byte stream: position `i` of seed `s` is a byte of splitmix64(s, i / 8).
struct Pattern {
    seed: u64,
    pos: u64,
}

impl Pattern {
    fn new(seed: u64) -> Self {
        Self { seed, pos: 0 }
    }

    fn byte_at(seed: u64, pos: u64) -> u8 {
        let mut z = seed
            .wrapping_mul(0x9e37_79b9_7f4a_7c15)
            .wrapping_add(pos / 8)
            .wrapping_add(0x632b_e59b_d9b4_e019);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        z.to_le_bytes()[(pos % 8) as usize]
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf.iter_mut() {
            *b = Self::byte_at(self.seed, self.pos);
            self.pos += 1;
        }
    }

    /// Checks `buf` as the next bytes; the offset of the first wrong one.
    fn check(&mut self, buf: &[u8]) -> Result<(), u64> {
        for b in buf {
            if *b != Self::byte_at(self.seed, self.pos) {
                return Err(self.pos);
            }
            self.pos += 1;
        }
        Ok(())
    }
}

/// A small pseudo-random number generator for write sizes.
struct Rng(u64);

impl Rng {
    fn next(&mut self, max: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        1 + (self.0 % max as u64) as usize
    }
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Serve { listen } => serve(listen),
        Cmd::Run(args) => run(&args),
    }
}

fn print_line(v: &impl Serialize) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(v).unwrap_or_default());
    let _ = out.flush();
}

fn errno_detail(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timeout".into(),
        _ => format!(
            "error:{}",
            interceptor_tests::errno_name(e.raw_os_error().unwrap_or(0))
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// Server

fn serve(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    // std listens with a backlog of 128: 1,000 connections at once would overflow it.
    // SAFETY: listen on our own bound socket; a second listen() only changes the backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), 4096) } != 0 {
        return Err(io::Error::last_os_error()).context("listen backlog");
    }
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let _ = thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || print_line(&serve_one(conn)));
    }
    Ok(())
}

fn serve_one(conn: TcpStream) -> Verdict {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_nodelay(true);
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut header = String::new();
    if reader.read_line(&mut header).is_err() {
        return Verdict {
            detail: "no header".into(),
            ..Verdict::default()
        };
    }
    let fields: Vec<&str> = header.split_whitespace().collect();
    let (case, size, seed) = match fields.as_slice() {
        [c, s, d] => (
            c.to_string(),
            s.parse().unwrap_or(0u64),
            d.parse().unwrap_or(0u64),
        ),
        _ => {
            return Verdict {
                detail: format!("bad header {header:?}"),
                ..Verdict::default()
            };
        }
    };
    let mut v = Verdict {
        case: case.clone(),
        ..Verdict::default()
    };
    let mut conn = conn;
    match case.as_str() {
        "up" | "abort" => {
            let (n, end) = read_checked(&mut reader, seed, u64::MAX);
            v.received = n;
            v.ok = case == "abort" || (end == "eof" && n == size);
            v.detail = end.clone();
            if case == "up" {
                let _ = conn.write_all(format!("ok {n} {end}\n").as_bytes());
            }
        }
        "down" | "reset" => {
            let limit = if case == "reset" { size / 2 } else { size };
            let sent = write_pattern(&mut conn, seed, limit, Writes::Big, true);
            v.sent = sent.as_ref().copied().unwrap_or(0);
            if case == "reset" {
                abort(&conn);
                v.ok = sent.is_ok();
                v.detail = "reset".into();
            } else {
                let _ = conn.shutdown(Shutdown::Write);
                let mut answer = String::new();
                let _ = reader.read_to_string(&mut answer);
                v.ok = sent.is_ok() && answer.starts_with(&format!("got {size}"));
                v.detail = format!("client said {:?}", answer.trim());
            }
        }
        "both" | "both-small" => {
            let writes = if case == "both" {
                Writes::Big
            } else {
                Writes::Small
            };
            let mut w = conn.try_clone().expect("clone");
            let writer = thread::spawn(move || {
                let r = write_pattern(&mut w, seed + 1, size, writes, false);
                let _ = w.shutdown(Shutdown::Write);
                r
            });
            let (n, end) = read_checked(&mut reader, seed, u64::MAX);
            let sent = writer.join().unwrap_or(Ok(0));
            v.received = n;
            v.sent = sent.as_ref().copied().unwrap_or(0);
            v.ok = end == "eof" && n == size && sent.is_ok();
            v.detail = end;
        }
        "echo" => {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        total += n as u64;
                    }
                    Err(_) => break,
                }
            }
            let _ = conn.shutdown(Shutdown::Write);
            v.received = total;
            v.sent = total;
            v.ok = total == size;
        }
        other => v.detail = format!("unknown case {other}"),
    }
    v
}

/// Resets the connection: `SO_LINGER` 0, then close.
fn abort(conn: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct from a live local.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    // With a zero linger, closing resets; shutting both sides down first makes it happen now,
    // whatever other handles of the socket (a reader's clone) still live.
    // SAFETY: shutdown on a live descriptor.
    unsafe { libc::shutdown(conn.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Reads until EOF (or `limit` bytes), checking each byte; bytes read and how it ended.
fn read_checked(r: &mut impl Read, seed: u64, limit: u64) -> (u64, String) {
    read_checked_with(|buf| r.read(buf), seed, limit)
}

/// `read_checked` on a socket, with `recv` (spurious `EAGAIN`s counted).
fn recv_checked(fd: RawFd, seed: u64) -> (u64, String) {
    read_checked_with(|buf| recv(fd, buf, 0), seed, u64::MAX)
}

fn read_checked_with(
    mut read: impl FnMut(&mut [u8]) -> io::Result<usize>,
    seed: u64,
    limit: u64,
) -> (u64, String) {
    let mut pattern = Pattern::new(seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0;
    while n < limit {
        let want = buf.len().min((limit - n) as usize);
        match read(&mut buf[..want]) {
            Ok(0) => return (n, "eof".into()),
            Ok(k) => {
                if let Err(at) = pattern.check(&buf[..k]) {
                    return (n, format!("mismatch at {at}"));
                }
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, errno_detail(&e)),
        }
    }
    (n, "limit".into())
}

/// Writes `size` bytes of the pattern; with `progress`, a progress line every MiB.
fn write_pattern(
    w: &mut impl Write,
    seed: u64,
    size: u64,
    writes: Writes,
    progress: bool,
) -> io::Result<u64> {
    let mut pattern = Pattern::new(seed);
    let mut rng = Rng(seed | 1);
    let mut buf = vec![0u8; 128 * 1024];
    let mut sent = 0;
    let mut next_progress = PROGRESS_EVERY;
    while sent < size {
        let chunk = match writes {
            Writes::Big => buf.len(),
            Writes::Small => rng.next(100),
        }
        .min((size - sent) as usize);
        pattern.fill(&mut buf[..chunk]);
        w.write_all(&buf[..chunk])?;
        sent += chunk as u64;
        if progress && sent >= next_progress {
            print_line(&serde_json::json!({ "progress": sent }));
            next_progress += PROGRESS_EVERY;
        }
    }
    Ok(sent)
}

// ---------------------------------------------------------------------------------------------
// Client

fn run(args: &RunArgs) -> Result<()> {
    let mut verdict = match args.case {
        Case::Echo => echo_many(args)?,
        _ => run_one(args)?,
    };
    verdict.spurious_eagain = SPURIOUS_EAGAIN.load(Ordering::Relaxed);
    verdict.short_waitall = SHORT_WAITALL.load(Ordering::Relaxed);
    print_line(&verdict);
    Ok(())
}

fn connect(args: &RunArgs, case: &str) -> Result<TcpStream> {
    let conn = TcpStream::connect(args.to).with_context(|| format!("connecting {}", args.to))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_nodelay(true)?;
    (&conn).write_all(format!("{case} {} {}\n", args.size, args.seed).as_bytes())?;
    Ok(conn)
}

fn run_one(args: &RunArgs) -> Result<Verdict> {
    let name = match (args.case, args.writes) {
        (Case::Both, Writes::Small) => "both-small",
        (Case::Up, _) => "up",
        (Case::Down, _) => "down",
        (Case::Both, _) => "both",
        (Case::Reset, _) => "reset",
        (Case::Abort, _) => "abort",
        (Case::Echo, _) => "echo",
    };
    let mut conn = connect(args, name)?;
    let mut v = Verdict {
        case: name.into(),
        ..Verdict::default()
    };
    match args.case {
        Case::Up => {
            let sent = send_up(&mut conn, args);
            v.sent = *sent.as_ref().unwrap_or(&0);
            conn.shutdown(Shutdown::Write)?;
            let mut answer = Vec::new();
            let read = read_to_end(conn.as_raw_fd(), &mut answer);
            let answer = String::from_utf8_lossy(&answer);
            let expected = format!("ok {} eof", args.size);
            v.ok = sent.is_ok() && read.is_ok() && answer.trim() == expected;
            v.detail = format!("server said {:?}", answer.trim());
            if let Err(e) = sent {
                v.detail = format!("send: {e}");
            }
        }
        Case::Down => {
            let (n, end) = receive(&mut conn, args)?;
            v.received = n;
            v.ok = end == "eof" && n == args.size;
            v.detail = end;
            // The direction the server did not close still carries the answer.
            let _ = conn.write_all(format!("got {n}\n").as_bytes());
            let _ = conn.shutdown(Shutdown::Write);
        }
        Case::Both => {
            let mut w = conn.try_clone()?;
            let (seed, size, writes) = (args.seed, args.size, args.writes);
            let writer = thread::spawn(move || {
                let r = write_pattern(&mut w, seed, size, writes, false);
                let _ = w.shutdown(Shutdown::Write);
                r
            });
            let (n, end) = recv_checked(conn.as_raw_fd(), args.seed + 1);
            let sent = writer.join().unwrap_or(Ok(0));
            v.sent = sent.as_ref().copied().unwrap_or(0);
            v.received = n;
            v.ok = end == "eof" && n == args.size && sent.is_ok();
            v.detail = end;
        }
        Case::Reset => {
            let (n, end) = recv_checked(conn.as_raw_fd(), args.seed);
            v.received = n;
            // An early end, by error or EOF, never a hang or a wrong byte.
            v.ok = (end == "eof" || end.starts_with("error:")) && n <= args.size / 2;
            v.detail = end;
        }
        Case::Abort => {
            let half = args.size / 2;
            let sent = write_pattern(&mut conn, args.seed, half, Writes::Big, false);
            v.sent = sent.as_ref().copied().unwrap_or(0);
            abort(&conn);
            v.ok = sent.is_ok();
            v.detail = "reset".into();
        }
        Case::Echo => unreachable!("echo_many"),
    }
    Ok(v)
}

/// `up`'s sending, by the chosen system call.
fn send_up(conn: &mut TcpStream, args: &RunArgs) -> Result<u64> {
    match args.via {
        Via::Write => Ok(write_pattern(
            conn,
            args.seed,
            args.size,
            args.writes,
            false,
        )?),
        Via::Sendfile | Via::Splice => {
            let path = args.file.as_ref().context("--file is needed")?;
            {
                let mut f = File::create(path)?;
                write_pattern(&mut f, args.seed, args.size, Writes::Big, false)?;
            }
            let file = File::open(path)?;
            let sent = if args.via == Via::Sendfile {
                sendfile_all(conn.as_raw_fd(), file.as_raw_fd(), args.size)
            } else {
                splice_all(conn.as_raw_fd(), file.as_raw_fd(), args.size)
            };
            let _ = std::fs::remove_file(path);
            Ok(sent?)
        }
    }
}

fn sendfile_all(sock: RawFd, file: RawFd, size: u64) -> io::Result<u64> {
    let mut sent = 0u64;
    while sent < size {
        let chunk = (size - sent).min(1 << 20) as usize;
        // SAFETY: two live descriptors; a null offset uses and advances the file position.
        let n = unsafe { libc::sendfile(sock, file, std::ptr::null_mut(), chunk) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::other("sendfile: file ended early"));
        }
        sent += n as u64;
    }
    Ok(sent)
}

fn splice_all(sock: RawFd, file: RawFd, size: u64) -> io::Result<u64> {
    let mut pipe = [0; 2];
    // SAFETY: pipe fills the two-element array.
    if unsafe { libc::pipe(pipe.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let result = (|| {
        let mut sent = 0u64;
        while sent < size {
            let chunk = (size - sent).min(64 * 1024) as usize;
            // SAFETY: live descriptors; null offsets use the file position.
            let mut in_pipe = unsafe {
                libc::splice(
                    file,
                    std::ptr::null_mut(),
                    pipe[1],
                    std::ptr::null_mut(),
                    chunk,
                    0,
                )
            };
            if in_pipe <= 0 {
                return Err(io::Error::last_os_error());
            }
            while in_pipe > 0 {
                // SAFETY: as above.
                let n = unsafe {
                    libc::splice(
                        pipe[0],
                        std::ptr::null_mut(),
                        sock,
                        std::ptr::null_mut(),
                        in_pipe as usize,
                        0,
                    )
                };
                if n <= 0 {
                    return Err(io::Error::last_os_error());
                }
                in_pipe -= n;
                sent += n as u64;
            }
        }
        Ok(sent)
    })();
    for fd in pipe {
        // SAFETY: the pipe's own descriptors, each closed once.
        unsafe { libc::close(fd) };
    }
    result
}

/// `down`'s receiving, by the chosen method; bytes received and how the stream ended.
fn receive(conn: &mut TcpStream, args: &RunArgs) -> Result<(u64, String)> {
    let mut pattern = Pattern::new(args.seed);
    let mut buf = vec![0u8; 256 * 1024];
    let mut peeked = vec![0u8; 4096];
    let mut n = 0u64;
    let fd = conn.as_raw_fd();
    let epoll = if args.recv == Recv::Epoll {
        Some(Epoll::new(fd)?)
    } else {
        None
    };
    let mut stalled = false;
    loop {
        if let Some(at) = args.stall_at
            && !stalled
            && n >= at
        {
            stall();
            stalled = true;
        }
        let got = match args.recv {
            Recv::Plain => recv(fd, &mut buf, 0),
            Recv::Waitall => {
                let want = (args.size - n.min(args.size)).clamp(1, buf.len() as u64) as usize;
                let r = recv(fd, &mut buf[..want], libc::MSG_WAITALL);
                if let Ok(k) = r
                    && k > 0
                    && k < want
                {
                    SHORT_WAITALL.fetch_add(1, Ordering::Relaxed);
                }
                r
            }
            Recv::Peek => {
                let p = recv(fd, &mut peeked, libc::MSG_PEEK);
                match p {
                    Ok(0) => Ok(0),
                    Ok(k) => {
                        let r = recv(fd, &mut buf[..k], 0);
                        if let Ok(j) = r
                            && buf[..j] != peeked[..j]
                        {
                            return Ok((n, format!("peeked bytes differ at {n}")));
                        }
                        r
                    }
                    Err(e) => Err(e),
                }
            }
            Recv::Epoll => epoll.as_ref().expect("set").read(fd, &mut buf),
        };
        match got {
            Ok(0) => return Ok((n, "eof".into())),
            Ok(k) => {
                if let Err(at) = pattern.check(&buf[..k]) {
                    return Ok((n, format!("mismatch at {at}")));
                }
                n += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Ok((n, errno_detail(&e))),
        }
    }
}

/// Stops reading: `stalled` on stdout, then wait for a line on stdin.
fn stall() {
    println!("stalled");
    let _ = io::stdout().flush();
    let mut line = String::new();
    let _ = io::stdin().read_line(&mut line);
}

/// `recv`. On a blocking socket an `EAGAIN` before the receive timeout has passed is not an
/// answer POSIX allows: it is counted (`spurious_eagain`) and the read retried, so that the
/// bytes are still checked and the count says how often it happened.
fn recv(fd: RawFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
    let blocking = flags & libc::MSG_DONTWAIT == 0 && !is_nonblocking(fd);
    let started = Instant::now();
    loop {
        // SAFETY: the kernel writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        let early = started.elapsed() + Duration::from_secs(1) < IO_TIMEOUT;
        if blocking && e.kind() == io::ErrorKind::WouldBlock && early {
            SPURIOUS_EAGAIN.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        return Err(e);
    }
}

fn is_nonblocking(fd: RawFd) -> bool {
    // SAFETY: F_GETFL on a live descriptor.
    unsafe { libc::fcntl(fd, libc::F_GETFL) & libc::O_NONBLOCK != 0 }
}

/// Reads to EOF with `recv`.
fn read_to_end(fd: RawFd, out: &mut Vec<u8>) -> io::Result<()> {
    let mut buf = [0u8; 4096];
    loop {
        match recv(fd, &mut buf, 0) {
            Ok(0) => return Ok(()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// An edge-triggered epoll reader on a non-blocking socket: reads until `EAGAIN`, then
/// waits for the next edge. A wait that times out while the stream is not over is a lost
/// wake-up.
struct Epoll {
    ep: RawFd,
}

impl Epoll {
    fn new(fd: RawFd) -> io::Result<Self> {
        // SAFETY: F_GETFL on a live descriptor.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: F_SETFL on a live descriptor.
        if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: no arguments but a flag.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(io::Error::last_os_error());
        }
        let me = Self { ep };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: 0,
        };
        // SAFETY: two live descriptors and an event struct on the stack.
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(me)
    }

    fn read(&self, fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match recv(fd, buf, 0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let mut ev = libc::epoll_event { events: 0, u64: 0 };
                    // SAFETY: one event slot, a live epoll descriptor.
                    let n = unsafe {
                        libc::epoll_wait(self.ep, &mut ev, 1, IO_TIMEOUT.as_millis() as i32)
                    };
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no wake-up (lost edge)",
                        ));
                    }
                }
                other => return other,
            }
        }
    }
}

impl Drop for Epoll {
    fn drop(&mut self) {
        // SAFETY: our own descriptor, closed once.
        unsafe { libc::close(self.ep) };
    }
}

/// `echo`: `--connections` connections, all open before any transfer starts, each sending
/// SIZE bytes and reading them back.
fn echo_many(args: &RunArgs) -> Result<Verdict> {
    const WORKERS: usize = 8;
    let total = args.connections;
    let barrier = Arc::new(Barrier::new(WORKERS));
    let mut handles = Vec::new();
    for w in 0..WORKERS {
        let count = total / WORKERS + usize::from(w < total % WORKERS);
        let args = args.clone();
        let barrier = barrier.clone();
        handles.push(thread::spawn(move || -> Result<(u64, u64, Vec<String>)> {
            let opened = (0..count)
                .map(|i| {
                    let seed = args.seed + (w * 100_000 + i) as u64;
                    let a = RunArgs {
                        seed,
                        ..args.clone()
                    };
                    Ok((connect(&a, "echo")?, seed))
                })
                .collect::<Result<Vec<_>>>();
            barrier.wait(); // every connection is open now (or a worker failed)
            let conns = opened?;
            let (mut sent, mut received, mut errors) = (0, 0, Vec::new());
            for (mut conn, seed) in conns {
                let s = write_pattern(&mut conn, seed, args.size, Writes::Big, false)?;
                conn.shutdown(Shutdown::Write)?;
                let (n, end) = recv_checked(conn.as_raw_fd(), seed);
                sent += s;
                received += n;
                if end != "eof" || n != args.size {
                    errors.push(format!("seed {seed}: {n} bytes, {end}"));
                }
            }
            Ok((sent, received, errors))
        }));
    }
    let mut v = Verdict {
        case: "echo".into(),
        ok: true,
        ..Verdict::default()
    };
    for h in handles {
        match h.join() {
            Ok(Ok((s, r, errors))) => {
                v.sent += s;
                v.received += r;
                if !errors.is_empty() {
                    v.ok = false;
                    v.detail = errors.join("; ");
                }
            }
            Ok(Err(e)) => {
                v.ok = false;
                v.detail = format!("{e:#}");
            }
            Err(_) => bail!("a worker panicked"),
        }
    }
    Ok(v)
}
