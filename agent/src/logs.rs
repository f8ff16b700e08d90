//! Container logs: the agent binary doubles as containerd's shim logging binary, and writes
//! each container's stdout and stderr to rotated files in a directory of its own.
//!
//! # How the shim runs the driver
//! A task created with stdout and stderr = [`stdio_uri`] makes containerd's runc shim (v2)
//! spawn `<agent> skerry-log-dir <dir>` (the URI's query pairs become `key value` argv) with
//! only `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment, fd 3 = the container's
//! stdout (read end), fd 4 = its stderr, and fd 5 = a pipe whose closing tells the shim the
//! driver is ready. The driver is the shim's child, so it outlives agent restarts. When the
//! task is deleted the shim closes its ends of the pipes and sends SIGTERM, then SIGKILL
//! 12 s later: the driver keeps draining until EOF for up to [`TERM_GRACE`] after SIGTERM.
//!
//! # Files
//! `dir/container.log` holds one record per line:
//! `<RFC 3339 UTC timestamp, nanoseconds> <stdout|stderr> <line>`. Lines longer than
//! [`MAX_LINE`] bytes are split into several records; a last line without a newline is
//! written when the stream ends. When a record would take the file past `max_bytes`, the
//! files rotate: `container.log.(n-1)` is removed, `container.log.i` becomes
//! `container.log.(i+1)` and `container.log` becomes `container.log.1`, keeping at most
//! `max_files` files (the live one included, as Docker's `max-file`). Kept size is thus at
//! most `max_bytes * max_files`, unless one record alone is larger than `max_bytes`.
//!
//! When writing fails (disk full, directory gone) lines are dropped and counted rather than
//! left in the pipe, so the container never blocks on its output; once a write works again
//! the driver writes a `stderr` record `skerry: dropped N lines`.
//!
//! # Limits
//! The agent may write `dir/limits.toml` ([`LogLimits::store`]) before creating the task;
//! the driver reads it once at start. Both keys are optional:
//! ```toml
//! max_bytes = 10485760  # rotate when container.log would exceed this many bytes
//! max_files = 3         # files kept, container.log included (1 to 100)
//! ```

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{SigSet, Signal};
use serde::{Deserialize, Serialize};

/// The argv key the driver recognises; the URI's only query pair.
pub const DIR_ARG: &str = "skerry-log-dir";
/// The live log file in a container's log directory.
pub const LOG_FILE: &str = "container.log";
/// The limits file the driver reads at start.
pub const LIMITS_FILE: &str = "limits.toml";
/// Longest line content in one record; longer lines are split.
pub const MAX_LINE: usize = 16 * 1024;
/// How long the driver keeps draining after SIGTERM (the shim kills it after 12 s).
pub const TERM_GRACE: Duration = Duration::from_secs(5);

const STDOUT_FD: i32 = 3;
const STDERR_FD: i32 = 4;
const READY_FD: i32 = 5;
const MAX_FILES_LIMIT: usize = 100;
const READ_CHUNK: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("cannot open the shim's {stream} pipe (fd {fd}) via /proc/self/fd: {source}; the driver must be started by the containerd shim")]
    Pipe {
        stream: Stream,
        fd: i32,
        #[source]
        source: io::Error,
    },
    #[error("cannot set up the log driver: {0}")]
    Setup(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid {path}: {source}")]
    LimitsSyntax {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("invalid {path}: {reason}")]
    Limits { path: PathBuf, reason: String },
    #[error("cannot write log output: {0}")]
    Output(#[source] io::Error),
}

/// Which of the container's output streams a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

impl std::fmt::Display for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Rotation limits; see the module docs for `limits.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogLimits {
    pub max_bytes: u64,
    pub max_files: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            max_files: 3,
        }
    }
}

impl LogLimits {
    /// Reads `dir/limits.toml`; the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(LIMITS_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => return Err(LogError::Read { path, source }),
        };
        let limits: Self = toml::from_str(&text).map_err(|source| LogError::LimitsSyntax {
            path: path.clone(),
            source,
        })?;
        limits.check(&path)?;
        Ok(limits)
    }

    /// Writes `dir/limits.toml` for the driver the shim will start.
    pub fn store(&self, dir: &Path) -> Result<(), LogError> {
        let path = dir.join(LIMITS_FILE);
        self.check(&path)?;
        let text = toml::to_string(self).map_err(|e| LogError::Limits {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        fs::create_dir_all(dir)
            .and_then(|()| fs::write(&path, text))
            .map_err(|source| LogError::Write { path, source })
    }

    fn check(&self, path: &Path) -> Result<(), LogError> {
        let reason = if self.max_bytes == 0 {
            "max_bytes must be at least 1"
        } else if self.max_files == 0 || self.max_files > MAX_FILES_LIMIT {
            "max_files must be between 1 and 100"
        } else {
            return Ok(());
        };
        Err(LogError::Limits {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        })
    }
}

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
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn feed(&mut self, mut data: &[u8], mut emit: impl FnMut(&[u8])) {
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

    fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial);
            self.partial.clear();
        }
    }
}

/// The live log file with size-based rotation. Records are batched per read and written
/// with one `write` by [`LogFile::flush`].
struct LogFile {
    dir: PathBuf,
    limits: LogLimits,
    file: Option<File>,
    /// Bytes in the file, batch excluded.
    size: u64,
    batch: Vec<u8>,
    batch_lines: u64,
    /// Dropped lines the batch's marker reports, if it has one.
    batch_marker: u64,
    dropped: u64,
    /// Set after a failed open or rotation, so a broken disk costs one attempt per batch.
    failed: bool,
}

impl LogFile {
    fn new(dir: &Path, limits: LogLimits) -> Self {
        Self {
            dir: dir.to_path_buf(),
            limits,
            file: None,
            size: 0,
            batch: Vec::new(),
            batch_lines: 0,
            batch_marker: 0,
            dropped: 0,
            failed: false,
        }
    }

    fn path(&self, index: usize) -> PathBuf {
        rotated_path(&self.dir, index)
    }

    /// Removes rotated files beyond `max_files`, left by a run with larger limits.
    fn remove_stale(&self) {
        for (index, path) in log_files(&self.dir).unwrap_or_default() {
            if index >= self.limits.max_files {
                let _ = fs::remove_file(path);
            }
        }
    }

    fn open(&mut self) -> io::Result<()> {
        let path = self.path(0);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)?;
        let size = file.metadata()?.len();
        // A failed write may have left half a record: end it so the next one parses.
        let mut last = [0u8; 1];
        if size > 0 && file.read_at(&mut last, size - 1)? == 1 && last[0] != b'\n' {
            self.batch.push(b'\n');
        }
        self.file = Some(file);
        self.size = size;
        Ok(())
    }

    fn push(&mut self, stream: Stream, ts: &str, line: &[u8]) {
        if self.file.is_none() && (self.failed || self.open().is_err()) {
            self.failed = true;
        }
        if self.dropped > 0 && self.batch_marker == 0 {
            let dropped = self.dropped;
            let marker = format!("skerry: dropped {dropped} lines");
            if self.append(Stream::Stderr, ts, marker.as_bytes()) {
                self.batch_marker = dropped;
            }
        }
        if self.append(stream, ts, line) {
            self.batch_lines += 1;
        } else {
            self.dropped += 1;
        }
    }

    /// Adds a record to the batch, rotating first if it would not fit; false if dropped.
    fn append(&mut self, stream: Stream, ts: &str, line: &[u8]) -> bool {
        if self.file.is_none() {
            return false;
        }
        let len = (ts.len() + stream.as_str().len() + line.len() + 3) as u64;
        let used = self.size + self.batch.len() as u64;
        if used > 0 && used + len > self.limits.max_bytes {
            self.flush();
            if self.rotate().is_err() {
                self.failed = true;
                self.file = None;
                return false;
            }
        }
        self.batch.extend_from_slice(ts.as_bytes());
        self.batch.push(b' ');
        self.batch.extend_from_slice(stream.as_str().as_bytes());
        self.batch.push(b' ');
        self.batch.extend_from_slice(line);
        self.batch.push(b'\n');
        true
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        self.size = 0;
        let max = self.limits.max_files;
        remove_if_exists(&self.path(max - 1))?;
        for index in (0..max - 1).rev() {
            match fs::rename(self.path(index), self.path(index + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        self.open()
    }

    fn flush(&mut self) {
        if !self.batch.is_empty() {
            let written = match &mut self.file {
                Some(file) => file.write_all(&self.batch),
                None => Err(io::ErrorKind::NotFound.into()),
            };
            match written {
                Ok(()) => {
                    self.size += self.batch.len() as u64;
                    self.dropped -= self.batch_marker;
                }
                Err(_) => {
                    self.dropped += self.batch_lines;
                    self.file = None;
                }
            }
            self.batch.clear();
            self.batch_lines = 0;
            self.batch_marker = 0;
        }
        self.failed = false;
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn rotated_path(dir: &Path, index: usize) -> PathBuf {
    if index == 0 {
        dir.join(LOG_FILE)
    } else {
        dir.join(format!("{LOG_FILE}.{index}"))
    }
}

/// The log files in `dir` as (rotation index, path), newest (0 = `container.log`) first.
fn log_files(dir: &Path) -> io::Result<Vec<(usize, PathBuf)>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let index = if name == LOG_FILE {
            Some(0)
        } else {
            name.strip_prefix(LOG_FILE)
                .and_then(|n| n.strip_prefix('.'))
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .filter(|&n| n > 0)
        };
        if let Some(index) = index {
            files.push((index, entry.path()));
        }
    }
    files.sort();
    Ok(files)
}

/// What [`read`] prints.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReadOptions {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Prefix each line with its timestamp.
    pub timestamps: bool,
    /// Only this stream's lines; both when `None`.
    pub stream: Option<Stream>,
}

/// Prints the log lines of `dir`, oldest first across rotated files.
pub fn read(dir: &Path, opts: ReadOptions, out: &mut impl Write) -> Result<(), LogError> {
    let files = log_files(dir).map_err(|source| LogError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut kept: VecDeque<Vec<u8>> = VecDeque::new();
    if opts.tail == Some(0) {
        return Ok(());
    }
    for (_, path) in files.iter().rev() {
        let file = match File::open(path) {
            Ok(f) => f,
            // Rotated away since listing: its lines are in the next file read.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(LogError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        let mut reader = BufReader::new(file);
        let mut record = Vec::new();
        loop {
            record.clear();
            match reader.read_until(b'\n', &mut record) {
                Ok(0) => break,
                Ok(_) => {}
                Err(source) => {
                    return Err(LogError::Read {
                        path: path.clone(),
                        source,
                    })
                }
            }
            let Some(line) = format_record(&record, opts) else {
                continue;
            };
            match opts.tail {
                None => out.write_all(&line).map_err(LogError::Output)?,
                Some(n) => {
                    if kept.len() == n {
                        kept.pop_front();
                    }
                    kept.push_back(line);
                }
            }
        }
    }
    for line in kept {
        out.write_all(&line).map_err(LogError::Output)?;
    }
    out.flush().map_err(LogError::Output)
}

/// One record as printed, or `None` if filtered out or not a record.
fn format_record(record: &[u8], opts: ReadOptions) -> Option<Vec<u8>> {
    let record = record.strip_suffix(b"\n").unwrap_or(record);
    let mut parts = record.splitn(3, |&b| b == b' ');
    let ts = parts.next()?;
    let stream = match parts.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    let line = parts.next().unwrap_or_default();
    if opts.stream.is_some_and(|s| s != stream) {
        return None;
    }
    let mut out = Vec::with_capacity(ts.len() + line.len() + 2);
    if opts.timestamps {
        out.extend_from_slice(ts);
        out.push(b' ');
    }
    out.extend_from_slice(line);
    out.push(b'\n');
    Some(out)
}

/// `2006-01-02T15:04:05.000000000Z`.
fn rfc3339_nanos(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2026-01-02T03:04:05.123456789Z";

    /// Go's `url.ParseQuery` value decoding: '+' is a space, `%XX` a byte.
    fn go_query_unescape(s: &str) -> Vec<u8> {
        let b = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = std::str::from_utf8(&b[i + 1..i + 3]).expect("escape is ascii");
                    out.push(u8::from_str_radix(hex, 16).expect("escape is hex"));
                    i += 2;
                }
                c => out.push(c),
            }
            i += 1;
        }
        out
    }

    fn lines_of(path: &Path) -> Vec<String> {
        fs::read_to_string(path)
            .expect("log file readable")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn read_to_string(dir: &Path, opts: ReadOptions) -> String {
        let mut out = Vec::new();
        read(dir, opts, &mut out).expect("read logs");
        String::from_utf8(out).expect("utf-8 output")
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_nanoseconds() {
        let at = |secs, nanos| rfc3339_nanos(std::time::UNIX_EPOCH + Duration::new(secs, nanos));
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000000007Z");
        assert_eq!(
            at(1_700_000_000, 123_456_789),
            "2023-11-14T22:13:20.123456789Z"
        );
        assert_eq!(
            at(4_102_444_799, 999_999_999),
            "2099-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn uri_round_trips_through_go_query_decoding() {
        let dir = Path::new("/var/lib/skerry/logs/task 1/a+b&c=d%e;f?g#h/é");
        let uri = stdio_uri(Path::new("/usr/bin/skerry agent"), dir);
        assert!(
            uri.starts_with("binary:///usr/bin/skerry%20agent?skerry-log-dir="),
            "{uri}"
        );
        let (path, query) = uri["binary://".len()..]
            .split_once('?')
            .expect("uri has a query");
        assert_eq!(go_query_unescape(path), b"/usr/bin/skerry agent");
        assert!(!query.contains(['&', '#', ' ', '+', ';']), "{query}");
        let (key, value) = query.split_once('=').expect("one key=value pair");
        let value = String::from_utf8(go_query_unescape(value)).expect("utf-8 dir");
        let argv = vec![path.to_string(), key.to_string(), value];
        assert_eq!(driver_invocation(&argv), Some(dir.to_path_buf()));
    }

    #[test]
    fn driver_invocation_needs_the_dir_pair() {
        let argv = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(driver_invocation(&argv(&["agent"])), None);
        assert_eq!(driver_invocation(&argv(&["agent", "run"])), None);
        assert_eq!(driver_invocation(&argv(&["agent", DIR_ARG, ""])), None);
        assert_eq!(driver_invocation(&argv(&["agent", "x", DIR_ARG])), None);
        assert_eq!(
            driver_invocation(&argv(&["agent", "other", "1", DIR_ARG, "/l"])),
            Some(PathBuf::from("/l"))
        );
    }

    #[test]
    fn splitter_cuts_long_lines_and_keeps_partials() {
        let mut out: Vec<Vec<u8>> = Vec::new();
        let mut s = LineSplitter::default();
        let exact = vec![b'a'; MAX_LINE];
        let double = vec![b'b'; 2 * MAX_LINE];
        let over = vec![b'c'; MAX_LINE + 1];
        let mut data = Vec::new();
        for line in [&b"one"[..], b"", &exact, &double, &over] {
            data.extend_from_slice(line);
            data.push(b'\n');
        }
        data.extend_from_slice(b"tail");
        // Odd-sized pieces put line ends and cut points inside and across feeds.
        for piece in data.chunks(7001) {
            s.feed(piece, |l| out.push(l.to_vec()));
        }
        assert_eq!(out.last().map(Vec::as_slice), Some(&b"c"[..]));
        s.finish(|l| out.push(l.to_vec()));
        let expected: Vec<Vec<u8>> = vec![
            b"one".to_vec(),
            vec![],
            exact.clone(),
            vec![b'b'; MAX_LINE],
            vec![b'b'; MAX_LINE],
            vec![b'c'; MAX_LINE],
            b"c".to_vec(),
            b"tail".to_vec(),
        ];
        assert_eq!(out, expected);
        s.finish(|l| out.push(l.to_vec()));
        assert_eq!(out.len(), expected.len(), "finish twice emits nothing more");
    }

    #[test]
    fn rotation_keeps_max_files_each_within_max_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits {
            max_bytes: 1000,
            max_files: 3,
        };
        let mut log = LogFile::new(dir.path(), limits);
        for i in 0..200 {
            log.push(Stream::Stdout, TS, format!("line {i:04}").as_bytes());
            if i % 7 == 0 {
                log.flush();
            }
        }
        log.flush();
        let files = log_files(dir.path()).expect("list");
        let indexes: Vec<usize> = files.iter().map(|(i, _)| *i).collect();
        assert_eq!(indexes, vec![0, 1, 2]);
        let mut kept = Vec::new();
        for (_, path) in files.iter().rev() {
            let size = fs::metadata(path).expect("stat").len();
            assert!(size <= 1000, "{} is {size} bytes", path.display());
            kept.extend(lines_of(path));
        }
        // Each record is 48 bytes: 20 fit in a file, so the 3 files hold the last 60 lines.
        let expected: Vec<String> = (140..200)
            .map(|i| format!("{TS} stdout line {i:04}"))
            .collect();
        assert_eq!(kept, expected);
    }

    #[test]
    fn rotation_with_one_file_starts_over() {
        let dir = tempfile::tempdir().expect("tempdir");
        let limits = LogLimits {
            max_bytes: 100,
            max_files: 1,
        };
        let mut log = LogFile::new(dir.path(), limits);
        for i in 0..5 {
            log.push(Stream::Stderr, TS, format!("line {i}").as_bytes());
        }
        log.flush();
        assert_eq!(log_files(dir.path()).expect("list").len(), 1);
        assert_eq!(
            lines_of(&dir.path().join(LOG_FILE)),
            vec![format!("{TS} stderr line 4")]
        );
    }

    #[test]
    fn stale_rotated_files_beyond_max_files_are_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        for name in [
            "container.log",
            "container.log.1",
            "container.log.5",
            "other.1",
        ] {
            fs::write(dir.path().join(name), "x\n").expect("write");
        }
        LogFile::new(dir.path(), LogLimits::default()).remove_stale();
        let indexes: Vec<usize> = log_files(dir.path())
            .expect("list")
            .iter()
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(indexes, vec![0, 1]);
        assert!(dir.path().join("other.1").exists());
    }

    fn write_rotated(dir: &Path) {
        let records = [
            ("container.log.2", &["1 stdout a", "2 stderr b"][..]),
            ("container.log.1", &["3 stdout c", "4 stdout d"][..]),
            (
                "container.log",
                &["5 stderr e", "garbage", "6 stdout f g"][..],
            ),
        ];
        for (name, lines) in records {
            let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
            fs::write(dir.join(name), text).expect("write");
        }
    }

    #[test]
    fn read_prints_oldest_first_across_rotated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_rotated(dir.path());
        let all = read_to_string(dir.path(), ReadOptions::default());
        assert_eq!(all, "a\nb\nc\nd\ne\nf g\n");
        let stdout = ReadOptions {
            stream: Some(Stream::Stdout),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(read_to_string(dir.path(), stdout), "1 a\n3 c\n4 d\n6 f g\n");
    }

    #[test]
    fn read_tail_spans_rotated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        write_rotated(dir.path());
        let tail = |n, stream| ReadOptions {
            tail: Some(n),
            stream,
            ..Default::default()
        };
        assert_eq!(read_to_string(dir.path(), tail(4, None)), "c\nd\ne\nf g\n");
        assert_eq!(read_to_string(dir.path(), tail(0, None)), "");
        assert_eq!(
            read_to_string(dir.path(), tail(100, None)).lines().count(),
            6
        );
        let stderr = tail(2, Some(Stream::Stderr));
        assert_eq!(read_to_string(dir.path(), stderr), "b\ne\n");
    }

    #[test]
    fn read_of_a_missing_dir_names_it() {
        let err = read(
            Path::new("/nonexistent/skerry-logs"),
            ReadOptions::default(),
            &mut Vec::new(),
        )
        .expect_err("missing dir");
        assert!(
            err.to_string().contains("/nonexistent/skerry-logs"),
            "{err}"
        );
    }

    #[test]
    fn write_errors_drop_lines_then_report_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let live = dir.path().join(LOG_FILE);
        fs::write(&live, format!("{TS} stdout before\n{TS} stdout torn")).expect("write");
        let mut log = LogFile::new(dir.path(), LogLimits::default());
        log.push(Stream::Stdout, TS, b"kept");
        log.flush();
        // Writes to /dev/full fail with ENOSPC, as on a full disk.
        fs::rename(&live, dir.path().join("saved")).expect("rename");
        std::os::unix::fs::symlink("/dev/full", &live).expect("symlink");
        log.file = None;
        for i in 0..3 {
            log.push(Stream::Stdout, TS, format!("lost {i}").as_bytes());
            log.push(Stream::Stderr, TS, b"lost");
            log.flush();
        }
        assert_eq!(log.dropped, 6);
        fs::remove_file(&live).expect("remove symlink");
        fs::rename(dir.path().join("saved"), &live).expect("rename back");
        log.push(Stream::Stdout, TS, b"after");
        log.flush();
        assert_eq!(log.dropped, 0);
        assert_eq!(
            lines_of(&live),
            vec![
                format!("{TS} stdout before"),
                format!("{TS} stdout torn"),
                format!("{TS} stdout kept"),
                format!("{TS} stderr skerry: dropped 6 lines"),
                format!("{TS} stdout after"),
            ]
        );
    }

    #[test]
    fn limits_round_trip_and_reject_nonsense() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            LogLimits::load(dir.path()).expect("defaults"),
            LogLimits::default()
        );
        let limits = LogLimits {
            max_bytes: 2 << 20,
            max_files: 5,
        };
        limits.store(dir.path()).expect("store");
        assert_eq!(LogLimits::load(dir.path()).expect("load"), limits);
        fs::write(dir.path().join(LIMITS_FILE), "max_files = 0\n").expect("write");
        let err = LogLimits::load(dir.path()).expect_err("zero files");
        assert!(err.to_string().contains("max_files"), "{err}");
        fs::write(dir.path().join(LIMITS_FILE), "max_bites = 1\n").expect("write");
        let err = LogLimits::load(dir.path()).expect_err("unknown key");
        assert!(err.to_string().contains(LIMITS_FILE), "{err}");
    }
}
