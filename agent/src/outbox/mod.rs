//! The durable outbox: every message the hub must see is appended here, on the data
//! partition, before it counts as emitted; a sender task peeks the oldest records, publishes
//! them with QoS 1 in order and acks them once the broker has.
//!
//! - Durability: `append` returns after the record's frame is fsynced. One writer task owns
//!   the files and batches whatever appends are queued into one write and one fsync (group
//!   commit); callers reach it through a bounded channel.
//! - Crash safety: frames carry a length and a CRC32; open truncates a torn tail. Segments
//!   are freed whole once acked; the ack position lives in a small file replaced by rename.
//!   Acks are persisted lazily (within a second, before a compaction, before segments are
//!   deleted unless the disk is too full for it, and on close): a crash re-delivers, never
//!   loses.
//! - Sequence numbers are per outbox directory and strictly increase across restarts.
//! - Bound (`max_bytes`): when an append would exceed it, the queue is compacted down to 3/4
//!   of it, in this order until it fits: (1) `Metric` records dropped oldest first, (2)
//!   `State` and `Event` records coalesced to the latest per key, (3) `Log` records dropped
//!   oldest first. Dropped records leave one marker record ("dropped N lines"/"dropped N
//!   metrics") in place of the newest one dropped. A marker or a coalesced record names the
//!   seqs it stands for as ranges, and carries at most about 1.5 × `max_bytes / 64` of them
//!   (16 to 4096): past that the next one starts, so a device that is
//!   never acked keeps every frame readable. `State`/`Event` are never dropped nor
//!   refused: if they alone fill the bound they go beyond it, `Metric`/`Log` appends fail
//!   with [`OutboxError::Full`] until acks free space, and compaction waits for another
//!   quarter of the bound of growth before it tries again.
//! - A full disk (ENOSPC) fails the appends of that group with [`OutboxError::DiskFull`]
//!   naming the file; the partial write is cut off and the queue stays as it was. Compaction
//!   needs room for its output, so keep `max_bytes` well under the partition's free space.
//! - Accounting: every seq an append returned is accounted for by [`Record::covers`] of
//!   exactly one record in the queue until that record is acked. A record that
//!   replaces others lists them in `folded` (superseded by its payload) or `dropped`
//!   (payload lost; a marker lists its own seq there too). A record already delivered and
//!   then folded into a later one is reported again, so receivers must treat coverage as
//!   at-least-once, as QoS 1 delivery already is.

mod compaction;
mod frame;
mod queue;
mod segment;

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use queue::Queue;

/// Commands waiting for the writer; appenders beyond this wait in `send`.
const CHANNEL: usize = 1024;
/// Most commands the writer takes in one turn (one fsync for all appends among them).
const BATCH: usize = 1024;
/// How long an ack may stay only in memory while the writer is idle.
const CURSOR_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct OutboxConfig {
    pub dir: PathBuf,
    /// Bound on the bytes of segment files; default 64 MiB.
    pub max_bytes: u64,
    /// Size at which a new segment file is started; default 4 MiB.
    pub segment_bytes: u64,
}

impl OutboxConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 64 << 20,
            segment_bytes: 4 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Class {
    /// A task or container state change; `key` names the task or container.
    State {
        key: String,
    },
    /// An event such as a container restart; `key` names what it happened to.
    Event {
        key: String,
    },
    Metric,
    Log,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    pub class: Class,
    pub payload: Vec<u8>,
    /// Seqs of earlier records of the same class and key that this one supersedes.
    pub folded: Vec<RangeInclusive<u64>>,
    /// Seqs whose payload was dropped under pressure; only markers carry these.
    pub dropped: Vec<RangeInclusive<u64>>,
}

impl Record {
    /// How many transitions were folded into this record.
    pub fn folded_count(&self) -> u64 {
        count(&self.folded)
    }

    /// How many records this marker stands for.
    pub fn dropped_count(&self) -> u64 {
        count(&self.dropped)
    }

    /// A marker left where records were dropped; its payload says how many.
    pub fn is_marker(&self) -> bool {
        self.dropped.iter().any(|r| r.contains(&self.seq))
    }

    /// Every seq this record accounts for: its own, the folded and the dropped ones.
    pub fn covers(&self) -> Vec<RangeInclusive<u64>> {
        let mut v: Vec<_> = self
            .folded
            .iter()
            .chain(&self.dropped)
            .cloned()
            .chain(std::iter::once(self.seq..=self.seq))
            .collect();
        compaction::normalize(&mut v);
        v
    }
}

fn count(ranges: &[RangeInclusive<u64>]) -> u64 {
    ranges.iter().map(|r| r.end() - r.start() + 1).sum()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Bytes of segment files.
    pub bytes_on_disk: u64,
    /// Records not yet acked.
    pub pending_records: u64,
    /// fsync/fdatasync calls on files and the directory.
    pub fsyncs: u64,
    /// Bytes written to disk: frames, segment headers, compaction rewrites, the cursor.
    pub bytes_written: u64,
    /// Appends that returned a seq.
    pub appends: u64,
    pub acked_seq: u64,
    /// The newest durable seq.
    pub last_seq: u64,
    pub compactions: u64,
    pub records_folded: u64,
    pub records_dropped: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum OutboxError {
    #[error("outbox: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(
        "outbox: disk full writing {path}; free space on its filesystem or lower max_bytes \
         (the queue is unchanged)"
    )]
    DiskFull { path: PathBuf },
    #[error("outbox {path} is locked by another process; run one agent per data directory")]
    Locked { path: PathBuf },
    #[error("outbox {path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("outbox config for {dir}: {detail}")]
    Config { dir: PathBuf, detail: String },
    #[error("outbox: record of {size} bytes exceeds the segment size {max}; raise segment_bytes")]
    TooLarge { size: u64, max: u64 },
    #[error("outbox: key of {len} bytes is longer than {max}")]
    KeyTooLong { len: usize, max: usize },
    #[error(
        "outbox {dir} is full: state and event records (never dropped) fill max_bytes \
         {max_bytes}; metric and log records are refused until the hub acks"
    )]
    Full { dir: PathBuf, max_bytes: u64 },
    #[error("outbox: ack of seq {seq} beyond the newest durable seq {last}")]
    AckBeyondEnd { seq: u64, last: u64 },
    #[error("outbox {dir} stopped after a failed write it could not undo; reopen it: {detail}")]
    Poisoned { dir: PathBuf, detail: String },
    #[error("outbox writer has stopped")]
    Closed,
}

impl OutboxError {
    fn io(op: &'static str, path: impl Into<PathBuf>, e: std::io::Error) -> Self {
        let path = path.into();
        if e.raw_os_error() == Some(nix::libc::ENOSPC) {
            OutboxError::DiskFull { path }
        } else {
            OutboxError::Io {
                op,
                path,
                source: Arc::new(e),
            }
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, OutboxError>>;

enum Cmd {
    Append {
        class: Class,
        payload: Vec<u8>,
        reply: Reply<u64>,
    },
    Peek {
        max: usize,
        reply: Reply<Vec<Record>>,
    },
    Ack {
        seq: u64,
        reply: Reply<()>,
    },
    Compact {
        target: u64,
        reply: Reply<()>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// Counters shared between the writer and the handles.
#[derive(Debug, Default)]
struct Shared {
    bytes_on_disk: AtomicU64,
    pending: AtomicU64,
    fsyncs: AtomicU64,
    bytes_written: AtomicU64,
    appends: AtomicU64,
    acked: AtomicU64,
    last_seq: AtomicU64,
    compactions: AtomicU64,
    folded: AtomicU64,
    dropped: AtomicU64,
}

/// A handle on an open outbox; clones share the writer.
#[derive(Clone, Debug)]
pub struct Outbox {
    tx: mpsc::Sender<Cmd>,
    shared: Arc<Shared>,
    durable: watch::Receiver<u64>,
}

impl Outbox {
    /// Opens (creating if needed) the outbox in `cfg.dir`, recovering from any crash.
    pub async fn open(cfg: OutboxConfig) -> Result<Outbox, OutboxError> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let q = tokio::task::spawn_blocking(move || Queue::open(cfg, s))
            .await
            .map_err(|_| OutboxError::Closed)??;
        let (durable_tx, durable) = watch::channel(q.last_seq());
        let (tx, rx) = mpsc::channel(CHANNEL);
        tokio::spawn(run(q, rx, durable_tx));
        Ok(Outbox {
            tx,
            shared,
            durable,
        })
    }

    /// Appends a record and returns its seq once it is on disk.
    pub async fn append(&self, class: Class, payload: Vec<u8>) -> Result<u64, OutboxError> {
        self.call(|reply| Cmd::Append {
            class,
            payload,
            reply,
        })
        .await
    }

    /// The oldest unacked records, in seq order, at most `max`; they stay until acked.
    pub async fn peek(&self, max: usize) -> Result<Vec<Record>, OutboxError> {
        self.call(|reply| Cmd::Peek { max, reply }).await
    }

    /// Acknowledges every record up to and including `upto_seq`.
    pub async fn ack(&self, upto_seq: u64) -> Result<(), OutboxError> {
        self.call(|reply| Cmd::Ack {
            seq: upto_seq,
            reply,
        })
        .await
    }

    /// Applies the pressure policy now, until the segments fit in `target_bytes` or nothing
    /// more may go (it also runs by itself at the bound). For shrinking ahead of a known
    /// shortage of disk space.
    pub async fn compact(&self, target_bytes: u64) -> Result<(), OutboxError> {
        self.call(|reply| Cmd::Compact {
            target: target_bytes,
            reply,
        })
        .await
    }

    /// Returns once there is at least one unacked record, so a sender can sleep.
    pub async fn notified(&self) -> Result<(), OutboxError> {
        let mut rx = self.durable.clone();
        loop {
            let last = *rx.borrow_and_update();
            if last > self.shared.acked.load(Ordering::Acquire) {
                return Ok(());
            }
            rx.changed().await.map_err(|_| OutboxError::Closed)?;
        }
    }

    pub fn stats(&self) -> OutboxStats {
        let s = &self.shared;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        OutboxStats {
            bytes_on_disk: l(&s.bytes_on_disk),
            pending_records: l(&s.pending),
            fsyncs: l(&s.fsyncs),
            bytes_written: l(&s.bytes_written),
            appends: l(&s.appends),
            acked_seq: l(&s.acked),
            last_seq: l(&s.last_seq),
            compactions: l(&s.compactions),
            records_folded: l(&s.folded),
            records_dropped: l(&s.dropped),
        }
    }

    /// Lets the writer finish what is queued before this call, persists the ack position and
    /// releases the directory. Other clones get [`OutboxError::Closed`] afterwards.
    pub async fn close(self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Cmd::Close { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn call<T>(&self, cmd: impl FnOnce(Reply<T>) -> Cmd) -> Result<T, OutboxError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(cmd(reply))
            .await
            .map_err(|_| OutboxError::Closed)?;
        rx.await.map_err(|_| OutboxError::Closed)?
    }
}

/// The writer: takes whatever commands are queued and runs them on a blocking thread, so
/// that all appends among them share one fsync.
async fn run(mut q: Queue, mut rx: mpsc::Receiver<Cmd>, durable: watch::Sender<u64>) {
    let mut close_reply = None;
    loop {
        let first = if q.cursor_dirty() {
            match tokio::time::timeout(CURSOR_DELAY, rx.recv()).await {
                Ok(c) => c,
                Err(_) => {
                    q = match tokio::task::spawn_blocking(move || {
                        q.persist_cursor_logged();
                        q
                    })
                    .await
                    {
                        Ok(q) => q,
                        Err(_) => return,
                    };
                    continue;
                }
            }
        } else {
            rx.recv().await
        };
        let Some(first) = first else { break };
        let mut cmds = vec![first];
        while cmds.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => cmds.push(c),
                Err(_) => break,
            }
        }
        let (q2, close) = match tokio::task::spawn_blocking(move || {
            let close = handle(&mut q, cmds);
            (q, close)
        })
        .await
        {
            Ok(r) => r,
            // A panic in the writer drops the pending replies: callers see Closed.
            Err(_) => return,
        };
        q = q2;
        durable.send_if_modified(|v| {
            let changed = *v != q.last_seq();
            *v = q.last_seq();
            changed
        });
        if close.is_some() {
            close_reply = close;
            break;
        }
    }
    drop(rx);
    let q = tokio::task::spawn_blocking(move || {
        q.persist_cursor_logged();
        q
    })
    .await;
    drop(q);
    if let Some(reply) = close_reply {
        let _ = reply.send(());
    }
}

/// Runs `cmds` in order, appends in groups; returns the close reply if a close came.
fn handle(q: &mut Queue, cmds: Vec<Cmd>) -> Option<oneshot::Sender<()>> {
    let mut group: Vec<(Class, Vec<u8>, Reply<u64>)> = Vec::new();
    let mut close = None;
    for cmd in cmds {
        if close.is_some() {
            // Dropping the reply tells the caller the outbox is closed.
            continue;
        }
        match cmd {
            Cmd::Append {
                class,
                payload,
                reply,
            } => {
                group.push((class, payload, reply));
                continue;
            }
            other => {
                flush(q, &mut group);
                match other {
                    Cmd::Peek { max, reply } => {
                        let _ = reply.send(q.peek(max));
                    }
                    Cmd::Ack { seq, reply } => {
                        let _ = reply.send(q.ack(seq));
                    }
                    Cmd::Compact { target, reply } => {
                        let _ = reply.send(q.compact(target).map(|_| ()));
                    }
                    Cmd::Close { reply } => close = Some(reply),
                    Cmd::Append { .. } => {}
                }
            }
        }
    }
    flush(q, &mut group);
    q.persist_cursor_if_due();
    close
}

fn flush(q: &mut Queue, group: &mut Vec<(Class, Vec<u8>, Reply<u64>)>) {
    if group.is_empty() {
        return;
    }
    let (items, replies): (Vec<_>, Vec<_>) = group.drain(..).map(|(c, p, r)| ((c, p), r)).unzip();
    let results = q.append_batch(items);
    for (reply, res) in replies.into_iter().zip(results) {
        let _ = reply.send(res);
    }
}

#[cfg(test)]
mod tests;
