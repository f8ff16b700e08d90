//! The live log file with size-based rotation, and the list of a directory's log files
//! (`container.log`, `container.log.1`, ...) that rotation and reading share.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{LogLimits, Stream, LOG_FILE};

/// The live log file with size-based rotation. Records are batched per read and written
/// with one `write` by [`LogFile::flush`].
pub(super) struct LogFile {
    dir: PathBuf,
    limits: LogLimits,
    pub(super) file: Option<File>,
    /// Bytes in the file, batch excluded.
    size: u64,
    batch: Vec<u8>,
    batch_lines: u64,
    /// Dropped lines the batch's marker reports, if it has one.
    batch_marker: u64,
    pub(super) dropped: u64,
    /// Set after a failed open or rotation, so a broken disk costs one attempt per batch.
    failed: bool,
}

impl LogFile {
    pub(super) fn new(dir: &Path, limits: LogLimits) -> Self {
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
    pub(super) fn remove_stale(&self) {
        for (index, path) in log_files(&self.dir).unwrap_or_default() {
            if index >= self.limits.max_files {
                let _ = fs::remove_file(path);
            }
        }
    }

    pub(super) fn open(&mut self) -> io::Result<()> {
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

    pub(super) fn push(&mut self, stream: Stream, ts: &str, line: &[u8]) {
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

    pub(super) fn flush(&mut self) {
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
pub(super) fn log_files(dir: &Path) -> io::Result<Vec<(usize, PathBuf)>> {
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
