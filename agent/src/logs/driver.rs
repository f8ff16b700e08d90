//! The log driver: the agent binary as the shim's logging process, draining the container's
//! stdout and stderr pipes into the rotated files until both close (or [`TERM_GRACE`] after
//! SIGTERM).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{SigSet, Signal};

use super::rotation::LogFile;
use super::{LogError, LogLimits, Stream, DIR_ARG, MAX_LINE, TERM_GRACE};

const STDOUT_FD: i32 = 3;
const STDERR_FD: i32 = 4;
const READY_FD: i32 = 5;
const READ_CHUNK: usize = 64 * 1024;

/// The stdout/stderr URI that makes the shim run `agent_bin` as the log driver for `dir`.
/// The log directory must be valid UTF-8 for the driver to recognise its argv.
pub fn stdio_uri(agent_bin: &Path, dir: &Path) -> String {
    format!(
        "binary://{}?{DIR_ARG}={}",
        percent_encode(agent_bin.as_os_str().as_bytes()),
        percent_encode(dir.as_os_str().as_bytes())
    )
}

/// Escapes every byte outside RFC 3986's unreserved set and '/', so Go's `url.Parse` and
/// `Query` (which reads '+' as a space) give back the exact bytes.
fn percent_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            s.push(char::from(b));
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

/// The log directory if `args` (the whole argv) is the shim starting the driver.
pub fn driver_invocation(args: &[String]) -> Option<PathBuf> {
    let rest = args.get(1..)?;
    if rest.len() % 2 != 0 {
        return None;
    }
    rest.chunks(2)
        .find(|pair| pair[0] == DIR_ARG && !pair[1].is_empty())
        .map(|pair| PathBuf::from(&pair[1]))
}

/// What `main` runs for a [`driver_invocation`]: the driver with `dir`'s limits, reporting
/// errors on stderr (which the shim discards unless debugging). Returns the exit code.
pub fn driver_main(dir: &Path) -> i32 {
    let limits = LogLimits::load(dir).unwrap_or_else(|e| {
        eprintln!("skerry log driver: {e}; using the default limits");
        LogLimits::default()
    });
    match run_driver(dir, limits) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("skerry log driver: {e}");
            1
        }
    }
}

/// Runs the log driver: reads fds 3 and 4 until both reach EOF, appending to
/// `dir/container.log`. Write errors drop lines rather than stop reading.
pub fn run_driver(dir: &Path, limits: LogLimits) -> Result<(), LogError> {
    // SIGTERM arrives together with EOF when the task is deleted; blocking it before any
    // thread exists lets the driver drain what is still in the pipes.
    let mut term = SigSet::empty();
    term.add(Signal::SIGTERM);
    term.thread_block()
        .map_err(|e| LogError::Setup(format!("cannot block SIGTERM: {e}")))?;

    let stdout = open_pipe(Stream::Stdout, STDOUT_FD)?;
    let stderr = open_pipe(Stream::Stderr, STDERR_FD)?;
    // A failure surfaces as write errors, which drop lines: the pipes are drained anyway.
    let _ = fs::create_dir_all(dir);
    let mut log = LogFile::new(dir, limits);
    log.remove_stale();
    // Opened before reporting ready so readers find the file; `push` retries a failure.
    let _ = log.open();
    let log = Arc::new(Mutex::new(log));
    // Tells the shim the driver is ready; EBADF when started by hand is harmless.
    let _ = nix::unistd::close(READY_FD);

    let (done_tx, done_rx) = mpsc::sync_channel::<Event>(4);
    for (stream, pipe) in [(Stream::Stdout, stdout), (Stream::Stderr, stderr)] {
        let log = Arc::clone(&log);
        let tx = done_tx.clone();
        std::thread::Builder::new()
            .name(format!("log-{stream}"))
            .spawn(move || {
                pump(pipe, stream, &log);
                let _ = tx.send(Event::Eof);
            })
            .map_err(|e| LogError::Setup(format!("cannot start the {stream} reader: {e}")))?;
    }
    let tx = done_tx;
    std::thread::Builder::new()
        .name("log-signal".into())
        .spawn(move || {
            if term.wait().is_ok() {
                let _ = tx.send(Event::Term);
            }
        })
        .map_err(|e| LogError::Setup(format!("cannot start the signal thread: {e}")))?;

    let mut open_streams = 2;
    let mut deadline: Option<Instant> = None;
    while open_streams > 0 {
        let event = match deadline {
            None => done_rx.recv().ok(),
            Some(d) => done_rx
                .recv_timeout(d.saturating_duration_since(Instant::now()))
                .ok(),
        };
        match event {
            Some(Event::Eof) => open_streams -= 1,
            Some(Event::Term) => deadline = deadline.or(Some(Instant::now() + TERM_GRACE)),
            // Grace period over: whatever a reader is still waiting for is abandoned.
            None => break,
        }
    }
    lock(&log).flush();
    Ok(())
}

enum Event {
    Eof,
    Term,
}

/// Opens our own description of an inherited pipe, without `unsafe`.
fn open_pipe(stream: Stream, fd: i32) -> Result<File, LogError> {
    let err = |source| LogError::Pipe { stream, fd, source };
    // O_NONBLOCK: opening a FIFO for reading must not wait for a writer.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(OFlag::O_NONBLOCK.bits())
        .open(format!("/proc/self/fd/{fd}"))
        .map_err(err)?;
    fcntl(file.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|e| err(io::Error::from(e)))?;
    let _ = nix::unistd::close(fd);
    Ok(file)
}

fn lock(log: &Mutex<LogFile>) -> MutexGuard<'_, LogFile> {
    // A panic cannot leave LogFile half-updated in a way that matters more than losing logs.
    log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Copies one stream into the log until EOF or a read error.
fn pump(mut pipe: File, stream: Stream, log: &Mutex<LogFile>) {
    let mut buf = vec![0u8; READ_CHUNK];
    let mut lines = LineSplitter::default();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let ts = rfc3339_nanos(SystemTime::now());
        let mut log = lock(log);
        lines.feed(&buf[..n], |line| log.push(stream, &ts, line));
        log.flush();
    }
    let ts = rfc3339_nanos(SystemTime::now());
    let mut log = lock(log);
    lines.finish(|line| log.push(stream, &ts, line));
    log.flush();
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes, holding at most one
/// partial line.
#[derive(Default)]
pub(super) struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    pub(super) fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (segment, ends_line) = match newline {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            if self.partial.is_empty() {
                // Fast path: whole lines straight from the read buffer.
                let mut seg = segment;
                while seg.len() > MAX_LINE {
                    emit(&seg[..MAX_LINE]);
                    seg = &seg[MAX_LINE..];
                }
                if ends_line {
                    emit(seg);
                } else {
                    self.partial.extend_from_slice(seg);
                }
            } else {
                self.partial.extend_from_slice(segment);
                let mut start = 0;
                while self.partial.len() - start > MAX_LINE {
                    emit(&self.partial[start..start + MAX_LINE]);
                    start += MAX_LINE;
                }
                self.partial.drain(..start);
                if ends_line {
                    emit(&self.partial);
                    self.partial.clear();
                }
            }
            data = match newline {
                Some(i) => &data[i + 1..],
                None => &[],
            };
        }
    }

    pub(super) fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// `2006-01-02T15:04:05.000000000Z`.
pub(super) fn rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}
