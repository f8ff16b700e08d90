//! Compaction, the outbox's answer to pressure: it rewrites the sealed segments into one,
//! leaving out acked records and, until the queue fits its target, (1) metrics oldest
//! first, (2) all but the latest State/Event record per key (a few, once their lists of
//! folded seqs reach [`max_ranges`]), (3) logs oldest first. The output is fsynced and
//! renamed over the first input before the other inputs are deleted (see `segment`).
//!
//! In steps: a [`Census`] of the inputs, the [`Shedding`] it calls for, the [`Survivors`]
//! streamed into a temporary segment (`write_survivors`), and `install`.

use std::collections::HashMap;
use std::fs;
use std::io::{BufWriter, Write};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
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

/// A keyed class's key: (State rather than Event, the key).
type Key = (bool, String);

/// Pass 1: what the unacked records of the inputs weigh, per class.
#[derive(Default)]
struct Census {
    total: u64,
    metric_bytes: u64,
    /// The newest metric's seq.
    last_metric: u64,
    log_bytes: u64,
    last_log: u64,
    keys: HashMap<Key, KeyBytes>,
}

/// One key's records: the newest one's seq and size, and the size of them all.
struct KeyBytes {
    latest: u64,
    latest_len: u64,
    sum: u64,
}

impl Census {
    fn count(&mut self, rec: &Record, size: u64) {
        self.total += size;
        match &rec.class {
            Class::Metric => {
                self.metric_bytes += size;
                self.last_metric = rec.seq;
            }
            Class::Log => {
                self.log_bytes += size;
                self.last_log = rec.seq;
            }
            c => {
                if let Some((is_state, key)) = keyed(c) {
                    let e = self
                        .keys
                        .entry((is_state, key.to_string()))
                        .or_insert(KeyBytes {
                            latest: 0,
                            latest_len: 0,
                            sum: 0,
                        });
                    e.latest = rec.seq;
                    e.latest_len = size;
                    e.sum += size;
                }
            }
        }
    }
}

/// What each step must shed to reach the target: metrics first, then all keyed records
/// but the latest per key (all keys or none), then logs for what is still missing.
struct Shedding {
    metric_bytes: u64,
    coalesce: bool,
    log_bytes: u64,
}

impl Shedding {
    fn new(census: &Census, target: u64) -> Self {
        let savings: u64 = census.keys.values().map(|k| k.sum - k.latest_len).sum();
        let mut need = census.total.saturating_sub(target);
        let metric_bytes = need.min(census.metric_bytes);
        need -= metric_bytes;
        let coalesce = need > 0;
        need = need.saturating_sub(savings);
        Self {
            metric_bytes,
            coalesce,
            log_bytes: need.min(census.log_bytes),
        }
    }
}

/// Folds each State/Event record into the latest one of its key, which then carries its
/// seqs in `folded`.
struct Folder {
    /// Folding at all: only when shedding metrics was not enough.
    active: bool,
    latest: HashMap<Key, u64>,
    folds: HashMap<Key, Vec<RangeInclusive<u64>>>,
    folded: u64,
    max_ranges: usize,
}

impl Folder {
    /// `None` if the record was folded; otherwise what to write.
    fn take(&mut self, rec: Record) -> Option<Record> {
        let k = match keyed(&rec.class) {
            Some((is_state, key)) if self.active => (is_state, key.to_string()),
            _ => return Some(rec),
        };
        let latest = self.latest.get(&k).copied().unwrap_or(rec.seq);
        let acc = self.folds.entry(k).or_default();
        if rec.seq == latest {
            return Some(carry(rec, acc));
        }
        let covers = rec.covers();
        if covers.len() > self.max_ranges / 2 {
            // As full as a record gets: kept as it is.
            return Some(rec);
        }
        if acc.len() + covers.len() > self.max_ranges {
            normalize(acc);
        }
        if acc.len() + covers.len() > self.max_ranges {
            // Full: this record is kept, carrying what was folded so far, and folding
            // starts over.
            return Some(carry(rec, acc));
        }
        self.folded += 1;
        acc.extend(covers);
        None
    }
}

/// Pass 2's filter: which records (or markers in their place) the rewrite keeps.
struct Survivors {
    metrics: Dropper,
    logs: Dropper,
    keyed: Folder,
}

impl Survivors {
    fn new(census: Census, shedding: &Shedding, max_ranges: usize) -> Self {
        Self {
            metrics: Dropper::new(
                shedding.metric_bytes,
                census.last_metric,
                "metrics",
                max_ranges,
            ),
            logs: Dropper::new(shedding.log_bytes, census.last_log, "lines", max_ranges),
            keyed: Folder {
                active: shedding.coalesce,
                latest: census
                    .keys
                    .into_iter()
                    .map(|(k, b)| (k, b.latest))
                    .collect(),
                folds: HashMap::new(),
                folded: 0,
                max_ranges,
            },
        }
    }

    fn take(&mut self, rec: Record, size: u64) -> Option<Record> {
        match &rec.class {
            Class::Metric => self.metrics.take(rec, size),
            Class::Log => self.logs.take(rec, size),
            Class::State { .. } | Class::Event { .. } => self.keyed.take(rec),
        }
    }
}

/// The fsynced temporary segment pass 2 wrote.
struct Rewritten {
    tmp: PathBuf,
    written: u64,
    records: u64,
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

        let census = self.census(&inputs)?;
        let shedding = Shedding::new(&census, target);
        let mut survivors = Survivors::new(census, &shedding, max_ranges(self.cfg.max_bytes));
        let out = self.write_survivors(&inputs, until, &mut survivors)?;
        self.count_fsyncs(1);
        self.count_written(out.written);
        self.install(n_in, &out)?;

        let folded = survivors.keyed.folded;
        let (metrics, logs) = (survivors.metrics.dropped, survivors.logs.dropped);
        let sh = &self.shared;
        sh.compactions.fetch_add(1, Ordering::Relaxed);
        sh.folded.fetch_add(folded, Ordering::Relaxed);
        sh.dropped.fetch_add(metrics + logs, Ordering::Relaxed);
        tracing::info!(
            dir = %self.cfg.dir.display(),
            bytes = out.written,
            records = out.records,
            folded,
            dropped_metrics = metrics,
            dropped_logs = logs,
            "outbox compacted"
        );
        self.publish();
        Ok(true)
    }

    /// Pass 1 over the unacked records of `inputs`.
    fn census(&self, inputs: &[Segment]) -> Result<Census, OutboxError> {
        let mut census = Census {
            total: HEADER,
            ..Census::default()
        };
        for s in inputs {
            let mut r = self.reader(s, HEADER)?;
            while let Some((rec, start, end)) = self.read(&mut r, s)? {
                if rec.seq > self.acked {
                    census.count(&rec, end - start);
                }
            }
        }
        Ok(census)
    }

    /// Pass 2: streams the survivors of `inputs` into a temporary segment, fsynced; removed
    /// again if anything fails.
    fn write_survivors(
        &self,
        inputs: &[Segment],
        until: u64,
        survivors: &mut Survivors,
    ) -> Result<Rewritten, OutboxError> {
        let first = &inputs[0];
        let (file, tmp) = segment::create_tmp(&self.cfg.dir, first.start, until).map_err(|e| {
            OutboxError::io("create", self.cfg.dir.join(segment::name(first.start)), e)
        })?;
        match self.stream_survivors(inputs, file, &tmp, survivors) {
            Ok((written, records)) => Ok(Rewritten {
                tmp,
                written,
                records,
            }),
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    /// The bytes and records written.
    fn stream_survivors(
        &self,
        inputs: &[Segment],
        file: fs::File,
        tmp: &Path,
        survivors: &mut Survivors,
    ) -> Result<(u64, u64), OutboxError> {
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        let (mut written, mut records) = (HEADER, 0u64);
        for s in inputs {
            let mut r = self.reader(s, HEADER)?;
            while let Some((rec, start, end)) = self.read(&mut r, s)? {
                if rec.seq <= self.acked {
                    continue;
                }
                let Some(rec) = survivors.take(rec, end - start) else {
                    continue;
                };
                buf.clear();
                frame::encode(&rec, &mut buf);
                w.write_all(&buf)
                    .map_err(|e| OutboxError::io("write", tmp, e))?;
                written += buf.len() as u64;
                records += 1;
            }
        }
        let f = w
            .into_inner()
            .map_err(|e| OutboxError::io("write", tmp, e.into_error()))?;
        f.sync_data()
            .map_err(|e| OutboxError::io("fsync", tmp, e))?;
        Ok((written, records))
    }

    /// Puts the rewritten segment in place of the first `n_in` segments: renamed over the
    /// first, then the others removed.
    fn install(&mut self, n_in: usize, out: &Rewritten) -> Result<(), OutboxError> {
        let first = self.segs[0].clone();
        if let Err(e) = fs::rename(&out.tmp, &first.path) {
            let _ = fs::remove_file(&out.tmp);
            return Err(OutboxError::io("rename", &out.tmp, e));
        }
        // From here the replacement is in place, whatever else fails.
        let replaced = Segment {
            start: first.start,
            path: first.path,
            len: out.written,
        };
        let leftovers: Vec<Segment> = self.segs.splice(..n_in, [replaced]).skip(1).collect();
        self.pending = out.records;
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
        Ok(())
    }
}
