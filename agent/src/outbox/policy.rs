//! The pressure policy: compaction rewrites the sealed segments into one, leaving out acked
//! records and, until the queue fits its target, (1) metrics oldest first, (2) all but the
//! latest State/Event record per key (a few, once their lists of folded seqs reach
//! [`max_ranges`]), (3) logs oldest first. The output is fsynced and
//! renamed over the first input before the other inputs are deleted (see `segment`).

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;

use super::frame;
use super::queue::Queue;
use super::segment::{self, Segment, HEADER};
use super::{Class, OutboxError, Record};

/// How many ranges a marker or a coalesced record gathers before it is written and the next
/// one starts, for a queue bound of `max_bytes`. Dropped or folded seqs are interleaved with
/// other classes' seqs, so each is usually a range of its own: on a device that is never
/// acked the lists would otherwise grow without end, past what one frame may hold
/// (`max_bytes`), and the next open would cut the segment at that frame. A record carries at
/// most about 1.5 times this many, 16 bytes each: well under a quarter of the bound.
pub fn max_ranges(max_bytes: u64) -> usize {
    usize::try_from((max_bytes / 64).clamp(16, 4096)).unwrap_or(4096)
}

/// Sorts ranges and merges overlapping or adjacent ones.
pub fn normalize(v: &mut Vec<RangeInclusive<u64>>) {
    v.sort_by_key(|r| *r.start());
    let mut out: Vec<RangeInclusive<u64>> = Vec::with_capacity(v.len());
    for r in v.drain(..) {
        match out.last_mut() {
            Some(last) if *r.start() <= last.end().saturating_add(1) => {
                if r.end() > last.end() {
                    *last = *last.start()..=*r.end();
                }
            }
            _ => out.push(r),
        }
    }
    *v = out;
}

/// `rec` carrying the ranges folded into `acc` as well as its own; `acc` is left empty.
fn carry(mut rec: Record, acc: &mut Vec<RangeInclusive<u64>>) -> Record {
    acc.append(&mut rec.folded);
    normalize(acc);
    rec.folded = std::mem::take(acc);
    rec
}

/// Which keyed class a record coalesces within.
fn keyed(class: &Class) -> Option<(bool, &str)> {
    match class {
        Class::State { key } => Some((true, key)),
        Class::Event { key } => Some((false, key)),
        Class::Metric | Class::Log => None,
    }
}

/// Drops records of one class oldest first until `need` bytes are gone, then leaves a marker
/// in place of the newest one dropped.
struct Dropper {
    need: u64,
    last_seq: u64,
    done_bytes: u64,
    acc: Vec<RangeInclusive<u64>>,
    dropped: u64,
    finished: bool,
    unit: &'static str,
    max_ranges: usize,
}

impl Dropper {
    fn new(need: u64, last_seq: u64, unit: &'static str, max_ranges: usize) -> Self {
        Self {
            need,
            last_seq,
            done_bytes: 0,
            acc: Vec::new(),
            dropped: 0,
            finished: need == 0,
            unit,
            max_ranges,
        }
    }

    /// `None` if the record was dropped and no marker is due; otherwise what to write.
    fn take(&mut self, rec: Record, size: u64) -> Option<Record> {
        let covers = rec.covers();
        if self.finished || covers.len() > self.max_ranges / 2 {
            // A marker about as full as markers get stays as it is.
            return Some(rec);
        }
        if !rec.is_marker() {
            self.dropped += 1;
        }
        self.acc.extend(covers);
        self.done_bytes += size;
        if self.done_bytes < self.need && rec.seq != self.last_seq {
            if self.acc.len() >= self.max_ranges {
                normalize(&mut self.acc);
            }
            if self.acc.len() < self.max_ranges {
                return None;
            }
            // Full: this record becomes a marker, and the next dropped ones start another.
        } else {
            self.finished = true;
        }
        normalize(&mut self.acc);
        let n: u64 = self.acc.iter().map(|r| r.end() - r.start() + 1).sum();
        Some(Record {
            seq: rec.seq,
            class: rec.class,
            payload: format!("dropped {n} {}", self.unit).into_bytes(),
            folded: Vec::new(),
            dropped: std::mem::take(&mut self.acc),
        })
    }
}

impl Queue {
    /// Rewrites the sealed segments (after sealing the active one) so that they fit in
    /// `target` bytes if the policy allows. Returns whether anything was rewritten.
    pub fn compact(&mut self, target: u64) -> Result<bool, OutboxError> {
        // Records at or below the ack position are left out, so it must be on disk first.
        self.persist_cursor()?;
        self.roll()?;
        if self.segs.len() < 2 {
            return Ok(false);
        }
        let n_in = self.segs.len() - 1;
        let inputs: Vec<Segment> = self.segs[..n_in].to_vec();
        let until = self.segs[n_in].start;

        // Pass 1: sizes per class and the newest record per key.
        let mut total = HEADER;
        let (mut metric_bytes, mut log_bytes) = (0u64, 0u64);
        let (mut last_metric, mut last_log) = (0u64, 0u64);
        let mut keys: HashMap<(bool, String), (u64, u64, u64)> = HashMap::new(); // seq, len, sum
        for s in &inputs {
            let mut r = self.reader(s, HEADER)?;
            while let Some((rec, start, end)) = self.read(&mut r, s)? {
                if rec.seq <= self.acked {
                    continue;
                }
                let size = end - start;
                total += size;
                match &rec.class {
                    Class::Metric => {
                        metric_bytes += size;
                        last_metric = rec.seq;
                    }
                    Class::Log => {
                        log_bytes += size;
                        last_log = rec.seq;
                    }
                    c => {
                        if let Some((is_state, key)) = keyed(c) {
                            let e = keys.entry((is_state, key.to_string())).or_insert((0, 0, 0));
                            *e = (rec.seq, size, e.2 + size);
                        }
                    }
                }
            }
        }
        let savings: u64 = keys.values().map(|(_, len, sum)| sum - len).sum();
        let mut need = total.saturating_sub(target);
        let metric_need = need.min(metric_bytes);
        need -= metric_need;
        let coalesce = need > 0;
        need = need.saturating_sub(savings);
        let log_need = need.min(log_bytes);

        // Pass 2: stream the survivors into the replacement segment.
        let first = &inputs[0];
        let (tmp_file, tmp) =
            segment::create_tmp(&self.cfg.dir, first.start, until).map_err(|e| {
                OutboxError::io("create", self.cfg.dir.join(segment::name(first.start)), e)
            })?;
        let max = max_ranges(self.cfg.max_bytes);
        let mut metrics = Dropper::new(metric_need, last_metric, "metrics", max);
        let mut logs = Dropper::new(log_need, last_log, "lines", max);
        let mut folds: HashMap<(bool, String), Vec<RangeInclusive<u64>>> = HashMap::new();
        let mut folded = 0u64;
        let mut written = HEADER;
        let mut records = 0u64;
        let result = (|| -> Result<fs::File, OutboxError> {
            let mut w = BufWriter::with_capacity(256 * 1024, tmp_file);
            let mut buf = Vec::new();
            for s in &inputs {
                let mut r = self.reader(s, HEADER)?;
                while let Some((rec, start, end)) = self.read(&mut r, s)? {
                    if rec.seq <= self.acked {
                        continue;
                    }
                    let size = end - start;
                    let out = match &rec.class {
                        Class::Metric => metrics.take(rec, size),
                        Class::Log => logs.take(rec, size),
                        c => match keyed(c) {
                            Some((is_state, key)) if coalesce => {
                                let k = (is_state, key.to_string());
                                let latest = keys.get(&k).map_or(rec.seq, |e| e.0);
                                let acc = folds.entry(k).or_default();
                                if rec.seq == latest {
                                    Some(carry(rec, acc))
                                } else {
                                    let covers = rec.covers();
                                    if covers.len() > max / 2 {
                                        // As full as a record gets: kept as it is.
                                        Some(rec)
                                    } else {
                                        if acc.len() + covers.len() > max {
                                            normalize(acc);
                                        }
                                        if acc.len() + covers.len() > max {
                                            // Full: this record is kept, carrying what
                                            // was folded so far, and folding starts over.
                                            Some(carry(rec, acc))
                                        } else {
                                            folded += 1;
                                            acc.extend(covers);
                                            None
                                        }
                                    }
                                }
                            }
                            _ => Some(rec),
                        },
                    };
                    if let Some(rec) = out {
                        buf.clear();
                        frame::encode(&rec, &mut buf);
                        w.write_all(&buf)
                            .map_err(|e| OutboxError::io("write", &tmp, e))?;
                        written += buf.len() as u64;
                        records += 1;
                    }
                }
            }
            let f = w
                .into_inner()
                .map_err(|e| OutboxError::io("write", &tmp, e.into_error()))?;
            f.sync_data()
                .map_err(|e| OutboxError::io("fsync", &tmp, e))?;
            Ok(f)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        self.count_fsyncs(1);
        self.count_written(written);

        if let Err(e) = fs::rename(&tmp, &first.path) {
            let _ = fs::remove_file(&tmp);
            return Err(OutboxError::io("rename", &tmp, e));
        }
        // From here the replacement is in place, whatever else fails.
        let replaced = Segment {
            start: first.start,
            path: first.path.clone(),
            len: written,
        };
        let leftovers: Vec<Segment> = self.segs.splice(..n_in, [replaced]).skip(1).collect();
        self.pending = records;
        self.rewind();
        self.publish();
        let dir = self.cfg.dir.clone();
        segment::sync_dir(&dir).map_err(|e| OutboxError::io("fsync", &dir, e))?;
        // Leftovers that fail to go now are removed by the next open (`covers_until`).
        for s in &leftovers {
            fs::remove_file(&s.path).map_err(|e| OutboxError::io("remove", &s.path, e))?;
        }
        segment::sync_dir(&dir).map_err(|e| OutboxError::io("fsync", &dir, e))?;
        self.count_fsyncs(2);
        let sh = &self.shared;
        sh.compactions.fetch_add(1, Ordering::Relaxed);
        sh.folded.fetch_add(folded, Ordering::Relaxed);
        sh.dropped
            .fetch_add(metrics.dropped + logs.dropped, Ordering::Relaxed);
        tracing::info!(
            dir = %dir.display(),
            bytes = written,
            records,
            folded,
            dropped_metrics = metrics.dropped,
            dropped_logs = logs.dropped,
            "outbox compacted"
        );
        self.publish();
        Ok(true)
    }
}
