//! The on-disk frame: `len: u32 LE | crc32(body): u32 LE | body`, and the record body inside
//! it: `seq: u64 | class: u8 | [key_len: u16 | key] | n_folded: u32 | ranges | n_dropped: u32
//! | ranges | payload`. All integers little-endian; a range is `start: u64 | end: u64`.

use std::ops::RangeInclusive;

use super::{Class, Record};

pub const FRAME_HEADER: usize = 8;
/// Longest key accepted; keys name tasks and containers, so this is generous.
pub const MAX_KEY: usize = 1024;

const TAG_STATE: u8 = 0;
const TAG_EVENT: u8 = 1;
const TAG_METRIC: u8 = 2;
const TAG_LOG: u8 = 3;

/// Why a frame could not be read: the reader tells a clean end of file from a torn or
/// corrupt frame so that recovery can truncate exactly there.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than the header or the announced body length.
    Short,
    /// The length is beyond what any writer produces.
    Length(u32),
    Crc,
    /// The CRC matched but the body does not parse: a bug or a hostile file, never a crash.
    Body(&'static str),
}

/// Encoded size of a record's frame, header included.
pub fn frame_len(rec: &Record) -> usize {
    FRAME_HEADER + body_len(rec)
}

fn body_len(rec: &Record) -> usize {
    let key = match &rec.class {
        Class::State { key } | Class::Event { key } => 2 + key.len(),
        Class::Metric | Class::Log => 0,
    };
    8 + 1 + key + 4 + 16 * rec.folded.len() + 4 + 16 * rec.dropped.len() + rec.payload.len()
}

/// Appends the frame of `rec` to `out`.
pub fn encode(rec: &Record, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; FRAME_HEADER]);
    out.extend_from_slice(&rec.seq.to_le_bytes());
    match &rec.class {
        Class::State { key } => {
            out.push(TAG_STATE);
            put_key(key, out);
        }
        Class::Event { key } => {
            out.push(TAG_EVENT);
            put_key(key, out);
        }
        Class::Metric => out.push(TAG_METRIC),
        Class::Log => out.push(TAG_LOG),
    }
    put_ranges(&rec.folded, out);
    put_ranges(&rec.dropped, out);
    out.extend_from_slice(&rec.payload);
    let body = &out[start + FRAME_HEADER..];
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    let crc = crc32fast::hash(body);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn put_key(key: &str, out: &mut Vec<u8>) {
    // Append validates the key length; the cast cannot truncate.
    let n = key.len().min(MAX_KEY) as u16;
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(&key.as_bytes()[..n as usize]);
}

fn put_ranges(ranges: &[RangeInclusive<u64>], out: &mut Vec<u8>) {
    out.extend_from_slice(&(ranges.len() as u32).to_le_bytes());
    for r in ranges {
        out.extend_from_slice(&r.start().to_le_bytes());
        out.extend_from_slice(&r.end().to_le_bytes());
    }
}

/// Reads the frame header at the start of `buf`: the body length, after checking it
/// against `max_body`.
pub fn header(buf: &[u8], max_body: u32) -> Result<(u32, u32), FrameError> {
    if buf.len() < FRAME_HEADER {
        return Err(FrameError::Short);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    if len > max_body || (len as usize) < 8 + 1 + 4 + 4 {
        return Err(FrameError::Length(len));
    }
    Ok((len, crc))
}

/// Checks `body` against `crc` and decodes it.
pub fn decode_body(body: &[u8], crc: u32) -> Result<Record, FrameError> {
    if crc32fast::hash(body) != crc {
        return Err(FrameError::Crc);
    }
    let mut r = Cursor { buf: body };
    let seq = r.u64()?;
    let class = match r.u8()? {
        TAG_STATE => Class::State { key: r.key()? },
        TAG_EVENT => Class::Event { key: r.key()? },
        TAG_METRIC => Class::Metric,
        TAG_LOG => Class::Log,
        _ => return Err(FrameError::Body("unknown class")),
    };
    let folded = r.ranges()?;
    let dropped = r.ranges()?;
    Ok(Record {
        seq,
        class,
        payload: r.buf.to_vec(),
        folded,
        dropped,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        if self.buf.len() < n {
            return Err(FrameError::Body("truncated body"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, FrameError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, FrameError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn key(&mut self) -> Result<String, FrameError> {
        let n = self.u16()? as usize;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| FrameError::Body("key is not utf-8"))
    }
    fn ranges(&mut self) -> Result<Vec<RangeInclusive<u64>>, FrameError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / 16 {
            return Err(FrameError::Body("range count beyond body"));
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let s = self.u64()?;
            let e = self.u64()?;
            if s > e {
                return Err(FrameError::Body("inverted range"));
            }
            v.push(s..=e);
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            seq: 42,
            class: Class::State {
                key: "task/abc".into(),
            },
            payload: b"RUNNING".to_vec(),
            folded: vec![3..=5, 9..=9],
            dropped: vec![],
        }
    }

    fn decode(buf: &[u8]) -> Result<Record, FrameError> {
        let (len, crc) = header(buf, 1 << 20)?;
        let body = buf
            .get(FRAME_HEADER..FRAME_HEADER + len as usize)
            .ok_or(FrameError::Short)?;
        decode_body(body, crc)
    }

    #[test]
    fn round_trips_every_class() {
        for class in [
            Class::State { key: "k".into() },
            Class::Event { key: "".into() },
            Class::Metric,
            Class::Log,
        ] {
            let rec = Record {
                class,
                dropped: vec![1..=2],
                ..sample()
            };
            let mut buf = Vec::new();
            encode(&rec, &mut buf);
            assert_eq!(buf.len(), frame_len(&rec));
            assert_eq!(decode(&buf), Ok(rec));
        }
    }

    #[test]
    fn every_truncation_is_short_and_every_bit_flip_is_caught() {
        let mut buf = Vec::new();
        encode(&sample(), &mut buf);
        for cut in 0..buf.len() {
            assert!(decode(&buf[..cut]).is_err(), "cut at {cut} decoded");
        }
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut b = buf.clone();
                b[i] ^= 1 << bit;
                assert_ne!(decode(&b), Ok(sample()), "flip at byte {i} bit {bit}");
            }
        }
    }
}
