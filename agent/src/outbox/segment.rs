//! Segment files and the ack cursor file.
//!
//! A segment is `<start>.seg`: a 16-byte header (`SKOBSEG1` | `covers_until: u64 LE`) and
//! frames. It holds records with seq >= `start` and below the next segment's start. New
//! segment files appear only by rename of a fsynced `.tmp`, so a header is never torn. A
//! compacted segment replaces its predecessors by taking the first one's name and recording
//! in `covers_until` the start of the first segment it did not replace: after a crash between
//! the rename and the deletions, open deletes the leftovers it names.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::frame::{self, FrameError, FRAME_HEADER};
use super::Record;

pub const MAGIC: &[u8; 8] = b"SKOBSEG1";
pub const HEADER: u64 = 16;
const CURSOR: &str = "cursor";
const CURSOR_MAGIC: &[u8; 4] = b"SKOC";

#[derive(Debug, Clone)]
pub struct Segment {
    pub start: u64,
    pub path: PathBuf,
    /// Bytes of valid data, header included.
    pub len: u64,
}

pub fn name(start: u64) -> String {
    format!("{start:020}.seg")
}

pub fn parse_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 {
        return None;
    }
    stem.parse().ok()
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes `<start>.seg.tmp` with a header and fsyncs it; the caller fills and renames it.
pub fn create_tmp(dir: &Path, start: u64, covers_until: u64) -> io::Result<(File, PathBuf)> {
    let tmp = dir.join(format!("{}.tmp", name(start)));
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&tmp)?;
    let mut h = [0u8; HEADER as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..].copy_from_slice(&covers_until.to_le_bytes());
    f.write_all(&h)?;
    Ok((f, tmp))
}

/// Creates an empty segment durably: header fsynced, renamed into place, directory fsynced.
pub fn create(dir: &Path, start: u64) -> io::Result<(File, Segment)> {
    let (f, tmp) = create_tmp(dir, start, 0)?;
    let path = dir.join(name(start));
    let done = f
        .sync_data()
        .and_then(|()| fs::rename(&tmp, &path))
        .and_then(|()| sync_dir(dir));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((
        f,
        Segment {
            start,
            path,
            len: HEADER,
        },
    ))
}

/// Reads a segment header: `Ok(covers_until)`, or `Err` if it is not a segment.
pub fn read_header(f: &mut File) -> io::Result<Option<u64>> {
    let mut h = [0u8; HEADER as usize];
    f.seek(SeekFrom::Start(0))?;
    match f.read_exact(&mut h) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if &h[..8] != MAGIC {
        return Ok(None);
    }
    let mut c = [0u8; 8];
    c.copy_from_slice(&h[8..]);
    Ok(Some(u64::from_le_bytes(c)))
}

#[derive(Debug)]
pub enum ReadError {
    Io(io::Error),
    Frame { offset: u64, err: FrameError },
}

/// Sequential frame reader over `[offset, len)` of one segment.
pub struct Reader {
    file: BufReader<File>,
    offset: u64,
    len: u64,
    max_body: u32,
}

impl Reader {
    pub fn open(path: &Path, offset: u64, len: u64, max_body: u32) -> io::Result<Reader> {
        let mut f = File::open(path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(Reader {
            file: BufReader::with_capacity(64 * 1024, f),
            offset,
            len,
            max_body,
        })
    }

    /// The next record with its frame's start and end offsets; `None` at `len`.
    pub fn next_record(&mut self) -> Result<Option<(Record, u64, u64)>, ReadError> {
        let start = self.offset;
        if start >= self.len {
            return Ok(None);
        }
        let bad = |err| ReadError::Frame { offset: start, err };
        if self.len - start < FRAME_HEADER as u64 {
            return Err(bad(FrameError::Short));
        }
        let mut h = [0u8; FRAME_HEADER];
        self.file.read_exact(&mut h).map_err(ReadError::Io)?;
        let (body_len, crc) = frame::header(&h, self.max_body).map_err(bad)?;
        let end = start + FRAME_HEADER as u64 + u64::from(body_len);
        if end > self.len {
            return Err(bad(FrameError::Short));
        }
        let mut body = vec![0u8; body_len as usize];
        self.file.read_exact(&mut body).map_err(ReadError::Io)?;
        let rec = frame::decode_body(&body, crc).map_err(bad)?;
        self.offset = end;
        Ok(Some((rec, start, end)))
    }
}

/// Reads the persisted ack position; a missing or unreadable cursor means nothing acked,
/// which only causes re-delivery.
pub fn read_cursor(dir: &Path) -> io::Result<Option<u64>> {
    let b = match fs::read(dir.join(CURSOR)) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if b.len() != 16 || &b[..4] != CURSOR_MAGIC {
        return Ok(None);
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(&b[4..12]);
    let crc = u32::from_le_bytes([b[12], b[13], b[14], b[15]]);
    if crc32fast::hash(&b[..12]) != crc {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(s)))
}

/// Writes the ack position atomically: tmp file, fsync, rename, fsync directory.
/// Returns the bytes written.
pub fn write_cursor(dir: &Path, acked: u64) -> io::Result<u64> {
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(CURSOR_MAGIC);
    b.extend_from_slice(&acked.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join("cursor.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(&b)?;
    f.sync_data()?;
    fs::rename(&tmp, dir.join(CURSOR))?;
    sync_dir(dir)?;
    Ok(b.len() as u64)
}

pub fn cursor_path(dir: &Path) -> PathBuf {
    dir.join(CURSOR)
}
