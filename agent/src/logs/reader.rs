//! Reading a container's log files back, oldest first across rotated files, with the
//! `tail`, timestamp and stream options that `skerry-agent logs` offers.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::path::Path;

use super::rotation::log_files;
use super::{LogError, Stream};

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
