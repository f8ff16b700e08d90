//! The on-disk queue behind the writer task: blocking file work, one owner, no locks.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use nix::fcntl::{Flock, FlockArg};

use super::frame::{self, MAX_KEY};
use super::segment::{self, ReadError, Reader, Segment, HEADER};
use super::{Class, OutboxConfig, OutboxError, Record, Shared, CURSOR_DELAY};

/// Where reading resumes: a frame boundary at or before the first unacked record.
#[derive(Debug, Clone, Copy)]
struct Pos {
    seg: u64,
    offset: u64,
}

pub struct Queue {
    pub(super) cfg: OutboxConfig,
    /// Ordered by start; the last one is the active segment appends go to.
    pub(super) segs: Vec<Segment>,
    active: File,
    pub(super) next_seq: u64,
    pub(super) acked: u64,
    persisted_acked: u64,
    last_persist: Instant,
    pos: Pos,
    /// (seq, segment, frame end) of the records the last peek returned, for cheap acks.
    peeked: Vec<(u64, u64, u64)>,
    pub(super) pending: u64,
    pub(super) shared: Arc<Shared>,
    poisoned: Option<String>,
    /// Size after a compaction that could not reach its target (State/Event alone fill the
    /// bound); the next one waits for a quarter bound of growth so each append does not
    /// rewrite the whole queue.
    stuck_at: Option<u64>,
    _lock: Flock<File>,
}

impl Queue {
    pub fn open(cfg: OutboxConfig, shared: Arc<Shared>) -> Result<Queue, OutboxError> {
        let dir = cfg.dir.clone();
        let bad = |detail: &str| OutboxError::Config {
            dir: dir.clone(),
            detail: detail.to_string(),
        };
        if cfg.segment_bytes < 4096 {
            return Err(bad("segment_bytes must be at least 4096"));
        }
        if cfg.max_bytes < 2 * cfg.segment_bytes {
            return Err(bad("max_bytes must be at least twice segment_bytes"));
        }
        fs::create_dir_all(&dir).map_err(|e| OutboxError::io("create", &dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(|e| OutboxError::io("open", &lock_path, e))?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusiveNonblock)
            .map_err(|_| OutboxError::Locked { path: dir.clone() })?;

        let acked = segment::read_cursor(&dir)
            .map_err(|e| OutboxError::io("read", segment::cursor_path(&dir), e))?
            .unwrap_or(0);
        let segs = recover(&cfg, &shared)?;
        let mut q = Queue {
            active: File::open(&dir).map_err(|e| OutboxError::io("open", &dir, e))?,
            pos: Pos { seg: 0, offset: 0 },
            cfg,
            segs,
            next_seq: 1,
            acked,
            persisted_acked: acked,
            last_persist: Instant::now(),
            peeked: Vec::new(),
            pending: 0,
            shared,
            poisoned: None,
            stuck_at: None,
            _lock: lock,
        };
        let mut last = 0;
        let mut pending = 0;
        for s in &q.segs {
            let mut r = q.reader(s, HEADER)?;
            while let Some((rec, _, _)) = q.read(&mut r, s)? {
                last = rec.seq;
                if rec.seq > acked {
                    pending += 1;
                }
            }
        }
        q.pending = pending;
        let active_start = q.segs.last().map_or(0, |s| s.start);
        q.next_seq = (last + 1).max(active_start).max(acked + 1);
        if pending == 0 {
            // Records below a stale cursor that are gone were acked and freed; moving the
            // cursor up keeps `notified` from waking for nothing.
            q.acked = q.next_seq - 1;
        }
        match q.segs.last() {
            Some(s) => {
                q.active = OpenOptions::new()
                    .write(true)
                    .open(&s.path)
                    .map_err(|e| OutboxError::io("open", &s.path, e))?;
            }
            None => {
                let start = q.next_seq;
                let (f, s) = segment::create(&dir, start)
                    .map_err(|e| OutboxError::io("create", dir.join(segment::name(start)), e))?;
                q.count_fsyncs(2);
                q.active = f;
                q.segs.push(s);
            }
        }
        q.rewind();
        q.publish();
        Ok(q)
    }

    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn disk_bytes(&self) -> u64 {
        self.segs.iter().map(|s| s.len).sum()
    }

    pub(super) fn max_body(&self) -> u32 {
        u32::try_from(self.cfg.max_bytes).unwrap_or(u32::MAX)
    }

    pub(super) fn count_fsyncs(&self, n: u64) {
        self.shared.fsyncs.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn count_written(&self, n: u64) {
        self.shared.bytes_written.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn publish(&self) {
        let s = &self.shared;
        s.bytes_on_disk.store(self.disk_bytes(), Ordering::Relaxed);
        s.pending.store(self.pending, Ordering::Relaxed);
        s.acked.store(self.acked, Ordering::Release);
        s.last_seq.store(self.last_seq(), Ordering::Relaxed);
    }

    pub(super) fn reader(&self, s: &Segment, offset: u64) -> Result<Reader, OutboxError> {
        Reader::open(&s.path, offset, s.len, self.max_body())
            .map_err(|e| OutboxError::io("open", &s.path, e))
    }

    /// Next record of a segment recovery already validated: any failure now is the disk's.
    pub(super) fn read(
        &self,
        r: &mut Reader,
        s: &Segment,
    ) -> Result<Option<(Record, u64, u64)>, OutboxError> {
        r.next_record().map_err(|e| match e {
            ReadError::Io(e) => OutboxError::io("read", &s.path, e),
            ReadError::Frame { offset, err } => OutboxError::Corrupt {
                path: s.path.clone(),
                detail: format!("frame at offset {offset} changed after recovery: {err:?}"),
            },
        })
    }

    pub(super) fn rewind(&mut self) {
        self.pos = Pos {
            seg: self.segs.first().map_or(0, |s| s.start),
            offset: HEADER,
        };
        self.peeked.clear();
    }

    fn check_poison(&self) -> Result<(), OutboxError> {
        match &self.poisoned {
            Some(detail) => Err(OutboxError::Poisoned {
                dir: self.cfg.dir.clone(),
                detail: detail.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Writes a group of appends with as few fsyncs as segment boundaries allow; each result
    /// is the record's seq, or why it was not stored.
    pub fn append_batch(&mut self, items: Vec<(Class, Vec<u8>)>) -> Vec<Result<u64, OutboxError>> {
        let mut results: Vec<Option<Result<u64, OutboxError>>> = vec![None; items.len()];
        if let Err(e) = self.check_poison() {
            return vec![Err(e); items.len()];
        }
        let mut sizes = vec![0u64; items.len()];
        let mut batch_bytes = 0;
        for (i, (class, payload)) in items.iter().enumerate() {
            if let Class::State { key } | Class::Event { key } = class {
                if key.len() > MAX_KEY {
                    results[i] = Some(Err(OutboxError::KeyTooLong {
                        len: key.len(),
                        max: MAX_KEY,
                    }));
                    continue;
                }
            }
            let size = frame::frame_len(&Record {
                seq: 0,
                class: class.clone(),
                payload: Vec::new(),
                folded: Vec::new(),
                dropped: Vec::new(),
            }) as u64
                + payload.len() as u64;
            if size + HEADER > self.cfg.segment_bytes {
                results[i] = Some(Err(OutboxError::TooLarge {
                    size,
                    max: self.cfg.segment_bytes,
                }));
                continue;
            }
            sizes[i] = size;
            batch_bytes += size;
        }

        let over = self.disk_bytes() + batch_bytes > self.cfg.max_bytes;
        let worth = self
            .stuck_at
            .is_none_or(|b| self.disk_bytes() > b + self.cfg.max_bytes / 4);
        if over && worth {
            let target = (self.cfg.max_bytes / 4 * 3).saturating_sub(batch_bytes);
            let res = self.compact(target);
            // Markers and folded ranges make small overshoots normal; stuck means far off.
            let stuck = self.disk_bytes() > target / 2 + self.cfg.max_bytes / 2;
            self.stuck_at = stuck.then(|| self.disk_bytes());
            if let Err(e) = res {
                tracing::warn!(dir = %self.cfg.dir.display(), error = %e, "outbox compaction failed");
                for r in results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(Err(e.clone()));
                }
            }
        }
        if self.disk_bytes() + batch_bytes > self.cfg.max_bytes {
            // Never-dropped classes still go in; the rest wait for acks.
            for (i, (class, _)) in items.iter().enumerate() {
                if results[i].is_none() && matches!(class, Class::Metric | Class::Log) {
                    results[i] = Some(Err(OutboxError::Full {
                        dir: self.cfg.dir.clone(),
                        max_bytes: self.cfg.max_bytes,
                    }));
                }
            }
        }

        let mut buf = Vec::with_capacity(batch_bytes as usize);
        let mut in_buf: Vec<usize> = Vec::new();
        let mut failed: Option<OutboxError> = None;
        for (i, (class, payload)) in items.into_iter().enumerate() {
            if results[i].is_some() {
                continue;
            }
            if let Some(e) = &failed {
                results[i] = Some(Err(e.clone()));
                continue;
            }
            let active_len = self.segs.last().map_or(HEADER, |s| s.len);
            if (active_len > HEADER || !buf.is_empty())
                && active_len + buf.len() as u64 + sizes[i] > self.cfg.segment_bytes
            {
                let res = self
                    .commit(&mut buf, &mut in_buf, &mut results)
                    .and_then(|()| self.roll());
                if let Err(e) = res {
                    results[i] = Some(Err(e.clone()));
                    failed = Some(e);
                    continue;
                }
            }
            let rec = Record {
                seq: self.next_seq + in_buf.len() as u64,
                class,
                payload,
                folded: Vec::new(),
                dropped: Vec::new(),
            };
            frame::encode(&rec, &mut buf);
            in_buf.push(i);
        }
        if failed.is_none() {
            let _ = self.commit(&mut buf, &mut in_buf, &mut results);
        }
        self.publish();
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(OutboxError::Closed)))
            .collect()
    }

    /// Writes and fsyncs `buf` at the end of the active segment, then resolves the appends in
    /// it. On failure the segment is cut back, so the failed frames never existed.
    fn commit(
        &mut self,
        buf: &mut Vec<u8>,
        in_buf: &mut Vec<usize>,
        results: &mut [Option<Result<u64, OutboxError>>],
    ) -> Result<(), OutboxError> {
        if in_buf.is_empty() {
            return Ok(());
        }
        let Some(seg) = self.segs.last_mut() else {
            return Err(OutboxError::Closed);
        };
        let at = seg.len;
        let res = self
            .active
            .write_all_at(buf, at)
            .and_then(|()| self.active.sync_data());
        self.shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        match res {
            Ok(()) => {
                seg.len += buf.len() as u64;
                self.shared
                    .bytes_written
                    .fetch_add(buf.len() as u64, Ordering::Relaxed);
                self.shared
                    .appends
                    .fetch_add(in_buf.len() as u64, Ordering::Relaxed);
                for (k, &i) in in_buf.iter().enumerate() {
                    results[i] = Some(Ok(self.next_seq + k as u64));
                }
                self.next_seq += in_buf.len() as u64;
                self.pending += in_buf.len() as u64;
                buf.clear();
                in_buf.clear();
                Ok(())
            }
            Err(e) => {
                let path = seg.path.clone();
                let err = OutboxError::io("write", &path, e);
                if let Err(e2) = self
                    .active
                    .set_len(at)
                    .and_then(|()| self.active.sync_data())
                {
                    self.poisoned = Some(format!(
                        "cannot cut {} back to {at} bytes after {err}: {e2}",
                        path.display()
                    ));
                }
                for &i in in_buf.iter() {
                    results[i] = Some(Err(err.clone()));
                }
                buf.clear();
                in_buf.clear();
                Err(err)
            }
        }
    }

    /// Up to `max` records after the ack position, in order.
    pub fn peek(&mut self, max: usize) -> Result<Vec<Record>, OutboxError> {
        let mut out = Vec::new();
        self.peeked.clear();
        let Some(mut idx) = self.segs.iter().position(|s| s.start == self.pos.seg) else {
            return Ok(out);
        };
        let mut offset = self.pos.offset;
        while idx < self.segs.len() && out.len() < max {
            let s = self.segs[idx].clone();
            let mut r = self.reader(&s, offset)?;
            while out.len() < max {
                let Some((rec, _, end)) = self.read(&mut r, &s)? else {
                    break;
                };
                if rec.seq <= self.acked {
                    // Acked already: move the resume point past it for the next peek.
                    self.pos = Pos {
                        seg: s.start,
                        offset: end,
                    };
                    continue;
                }
                self.peeked.push((rec.seq, s.start, end));
                out.push(rec);
            }
            idx += 1;
            offset = HEADER;
        }
        Ok(out)
    }

    /// Acknowledges everything up to `upto`; frees whole segments that are fully acked.
    pub fn ack(&mut self, upto: u64) -> Result<(), OutboxError> {
        self.check_poison()?;
        if upto <= self.acked {
            return Ok(());
        }
        if upto > self.last_seq() {
            return Err(OutboxError::AckBeyondEnd {
                seq: upto,
                last: self.last_seq(),
            });
        }
        let mut n = 0;
        if let Some(k) = self.peeked.iter().position(|p| p.0 == upto) {
            n = self.peeked[..=k]
                .iter()
                .filter(|p| p.0 > self.acked)
                .count() as u64;
            self.pos = Pos {
                seg: self.peeked[k].1,
                offset: self.peeked[k].2,
            };
        } else if let Some(mut idx) = self.segs.iter().position(|s| s.start == self.pos.seg) {
            let mut offset = self.pos.offset;
            'segs: while idx < self.segs.len() {
                let s = self.segs[idx].clone();
                let mut r = self.reader(&s, offset)?;
                while let Some((rec, start, end)) = self.read(&mut r, &s)? {
                    if rec.seq > upto {
                        self.pos = Pos {
                            seg: s.start,
                            offset: start,
                        };
                        break 'segs;
                    }
                    if rec.seq > self.acked {
                        n += 1;
                    }
                    self.pos = Pos {
                        seg: s.start,
                        offset: end,
                    };
                }
                idx += 1;
                offset = HEADER;
            }
        }
        self.peeked.retain(|p| p.0 > upto);
        self.acked = upto;
        self.pending = self.pending.saturating_sub(n);
        let res = self.free_acked_segments();
        self.publish();
        res
    }

    /// Deletes sealed segments whose records are all acked. The cursor goes to disk first to
    /// keep re-delivery after a crash short, but a full disk must not stop the deletion that
    /// frees it: a stale cursor only means re-delivery.
    fn free_acked_segments(&mut self) -> Result<(), OutboxError> {
        let n = self
            .segs
            .windows(2)
            .take_while(|w| w[1].start.saturating_sub(1) <= self.acked)
            .count();
        if n == 0 {
            return Ok(());
        }
        self.persist_cursor_logged();
        self.stuck_at = None;
        for s in self.segs.drain(..n) {
            fs::remove_file(&s.path).map_err(|e| OutboxError::io("remove", &s.path, e))?;
        }
        segment::sync_dir(&self.cfg.dir).map_err(|e| OutboxError::io("fsync", &self.cfg.dir, e))?;
        self.count_fsyncs(1);
        if !self.segs.iter().any(|s| s.start == self.pos.seg) {
            self.rewind();
        }
        Ok(())
    }

    pub fn cursor_dirty(&self) -> bool {
        self.acked != self.persisted_acked
    }

    pub(super) fn persist_cursor(&mut self) -> Result<(), OutboxError> {
        if !self.cursor_dirty() {
            return Ok(());
        }
        let n = segment::write_cursor(&self.cfg.dir, self.acked)
            .map_err(|e| OutboxError::io("write", segment::cursor_path(&self.cfg.dir), e))?;
        self.count_fsyncs(2);
        self.count_written(n);
        self.persisted_acked = self.acked;
        self.last_persist = Instant::now();
        Ok(())
    }

    pub fn persist_cursor_logged(&mut self) {
        if let Err(e) = self.persist_cursor() {
            // Only costs re-delivery after a crash; the next ack retries.
            tracing::warn!(error = %e, "outbox: cannot persist the ack position");
        }
    }

    pub fn persist_cursor_if_due(&mut self) {
        if self.cursor_dirty() && self.last_persist.elapsed() >= CURSOR_DELAY {
            self.persist_cursor_logged();
        }
    }

    /// Seals the active segment if it holds records, so compaction can take every record.
    pub(super) fn roll(&mut self) -> Result<(), OutboxError> {
        let Some(last) = self.segs.last() else {
            return Ok(());
        };
        if last.len <= HEADER {
            return Ok(());
        }
        let start = self.next_seq;
        let dir = self.cfg.dir.clone();
        let (f, s) = segment::create(&dir, start)
            .map_err(|e| OutboxError::io("create", dir.join(segment::name(start)), e))?;
        self.count_fsyncs(2);
        self.count_written(HEADER);
        self.active = f;
        self.segs.push(s);
        Ok(())
    }
}

/// Lists segments, deletes leftovers of interrupted compactions and temp files, and cuts
/// every segment back to its last whole frame.
fn recover(cfg: &OutboxConfig, shared: &Shared) -> Result<Vec<Segment>, OutboxError> {
    let dir = &cfg.dir;
    let rd = fs::read_dir(dir).map_err(|e| OutboxError::io("list", dir, e))?;
    let mut found = Vec::new();
    let mut removed = false;
    for ent in rd {
        let ent = ent.map_err(|e| OutboxError::io("list", dir, e))?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".tmp") {
            fs::remove_file(ent.path()).map_err(|e| OutboxError::io("remove", ent.path(), e))?;
            removed = true;
        } else if let Some(start) = segment::parse_name(name) {
            found.push((start, ent.path()));
        }
    }
    found.sort();
    let max_body = u32::try_from(cfg.max_bytes).unwrap_or(u32::MAX);
    let mut segs: Vec<Segment> = Vec::new();
    let mut covered_until = 0;
    let last_index = found.len().saturating_sub(1);
    let mut prev_seq = 0;
    for (i, (start, path)) in found.into_iter().enumerate() {
        if start < covered_until {
            tracing::info!(path = %path.display(), "outbox: removing a segment an interrupted compaction replaced");
            fs::remove_file(&path).map_err(|e| OutboxError::io("remove", &path, e))?;
            removed = true;
            continue;
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| OutboxError::io("open", &path, e))?;
        let covers_until = segment::read_header(&mut f)
            .map_err(|e| OutboxError::io("read", &path, e))?
            .ok_or_else(|| OutboxError::Corrupt {
                path: path.clone(),
                detail: "bad segment header; move the file away to continue without it".into(),
            })?;
        covered_until = covered_until.max(covers_until);
        let file_len = f
            .metadata()
            .map_err(|e| OutboxError::io("stat", &path, e))?
            .len();
        let mut r = Reader::open(&path, HEADER, file_len, max_body)
            .map_err(|e| OutboxError::io("open", &path, e))?;
        let mut valid = HEADER;
        loop {
            match r.next_record() {
                Ok(None) => break,
                Ok(Some((rec, _, end))) if rec.seq > prev_seq => {
                    prev_seq = rec.seq;
                    valid = end;
                }
                Ok(Some((rec, start, _))) => {
                    tracing::error!(path = %path.display(), offset = start, seq = rec.seq, "outbox: out-of-order seq; cutting the segment there");
                    break;
                }
                Err(ReadError::Io(e)) => return Err(OutboxError::io("read", &path, e)),
                Err(ReadError::Frame { offset, err }) => {
                    if i == last_index {
                        tracing::warn!(path = %path.display(), offset, ?err, lost_bytes = file_len - offset, "outbox: torn tail after a crash; truncating");
                    } else {
                        tracing::error!(path = %path.display(), offset, ?err, lost_bytes = file_len - offset, "outbox: corrupt frame in a sealed segment; truncating");
                    }
                    break;
                }
            }
        }
        if valid < file_len {
            f.set_len(valid)
                .and_then(|()| f.sync_all())
                .map_err(|e| OutboxError::io("truncate", &path, e))?;
            shared.fsyncs.fetch_add(1, Ordering::Relaxed);
        }
        segs.push(Segment {
            start,
            path,
            len: valid,
        });
    }
    if removed {
        segment::sync_dir(dir).map_err(|e| OutboxError::io("fsync", dir, e))?;
        shared.fsyncs.fetch_add(1, Ordering::Relaxed);
    }
    Ok(segs)
}
