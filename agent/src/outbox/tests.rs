use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::*;

fn cfg(dir: &Path, max_bytes: u64, segment_bytes: u64) -> OutboxConfig {
    OutboxConfig {
        dir: dir.to_path_buf(),
        max_bytes,
        segment_bytes,
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .expect("list outbox dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn log(i: u64) -> Vec<u8> {
    format!("line {i:06} ").repeat(8).into_bytes()
}

async fn append_logs(ob: &Outbox, range: std::ops::Range<u64>) -> Vec<u64> {
    let mut seqs = Vec::new();
    for i in range {
        seqs.push(ob.append(Class::Log, log(i)).await.expect("append"));
    }
    seqs
}

/// Asserts that seqs strictly increase and that the records' covers are disjoint and make
/// up exactly `expected`.
fn assert_accounts_for(recs: &[Record], expected: &BTreeSet<u64>) {
    for w in recs.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "out of order: {} then {}",
            w[0].seq,
            w[1].seq
        );
    }
    let mut seen = BTreeSet::new();
    for r in recs {
        for range in r.covers() {
            for s in range {
                assert!(seen.insert(s), "seq {s} accounted twice (record {})", r.seq);
            }
        }
    }
    assert_eq!(&seen, expected);
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create copy dir");
    for e in fs::read_dir(from).expect("list dir") {
        let e = e.expect("dir entry");
        fs::copy(e.path(), to.join(e.file_name())).expect("copy file");
    }
}

#[tokio::test]
async fn torn_tail_at_every_offset_of_the_last_frame_keeps_earlier_records() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let orig = tmp.path().join("orig");
    let ob = Outbox::open(cfg(&orig, 1 << 20, 64 << 10))
        .await
        .expect("open");
    append_logs(&ob, 0..5).await;
    let want = ob.peek(10).await.expect("peek");
    ob.close().await;
    let seg = segments(&orig).pop().expect("a segment");
    let len = fs::metadata(&seg).expect("stat").len();
    let last_start = len - frame::frame_len(&want[4]) as u64;
    for cut in last_start..len {
        let dir = tmp.path().join(format!("cut{cut}"));
        copy_dir(&orig, &dir);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join(seg.file_name().expect("file name")))
            .expect("open copy");
        f.set_len(cut).expect("truncate");
        let ob = Outbox::open(cfg(&dir, 1 << 20, 64 << 10))
            .await
            .expect("reopen");
        assert_eq!(ob.peek(10).await.expect("peek"), want[..4], "cut at {cut}");
        // The torn record never counted as appended, so its seq is reused.
        assert_eq!(ob.append(Class::Log, log(9)).await.expect("append"), 5);
        let after = ob.peek(10).await.expect("peek");
        assert_eq!(after.len(), 5);
        assert_eq!(after[4].payload, log(9));
        ob.close().await;
    }
}

#[tokio::test]
async fn bad_crc_in_the_last_frame_is_truncated() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ob = Outbox::open(cfg(tmp.path(), 1 << 20, 64 << 10))
        .await
        .expect("open");
    append_logs(&ob, 0..3).await;
    let want = ob.peek(10).await.expect("peek");
    ob.close().await;
    let seg = segments(tmp.path()).pop().expect("a segment");
    let mut bytes = fs::read(&seg).expect("read segment");
    let n = bytes.len();
    bytes[n - 3] ^= 0x40;
    fs::write(&seg, &bytes).expect("write segment");
    let ob = Outbox::open(cfg(tmp.path(), 1 << 20, 64 << 10))
        .await
        .expect("reopen");
    assert_eq!(ob.peek(10).await.expect("peek"), want[..2]);
    ob.close().await;
    assert_eq!(
        fs::metadata(&seg).expect("stat").len(),
        (n - frame::frame_len(&want[2])) as u64
    );
}

#[tokio::test]
async fn order_holds_across_segments_and_restarts() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 1 << 20, 4096);
    let mut all = Vec::new();
    for round in 0..4u64 {
        let ob = Outbox::open(c.clone()).await.expect("open");
        all.extend(append_logs(&ob, round * 100..round * 100 + 100).await);
        ob.close().await;
    }
    assert_eq!(all, (1..=400).collect::<Vec<u64>>());
    assert!(segments(tmp.path()).len() > 4, "expected several segments");
    let ob = Outbox::open(c).await.expect("open");
    let recs = ob.peek(1000).await.expect("peek");
    assert_eq!(recs.len(), 400);
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r.seq, i as u64 + 1);
        assert_eq!(r.payload, log(i as u64));
    }
    assert_eq!(ob.stats().pending_records, 400);
    ob.close().await;
}

#[tokio::test]
async fn ack_frees_whole_segments_and_survives_reopen() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 1 << 20, 4096);
    let ob = Outbox::open(c.clone()).await.expect("open");
    append_logs(&ob, 0..200).await;
    let before = segments(tmp.path()).len();
    let bytes_before = ob.stats().bytes_on_disk;
    let recs = ob.peek(150).await.expect("peek");
    ob.ack(recs[149].seq).await.expect("ack");
    let s = ob.stats();
    assert_eq!(s.acked_seq, 150);
    assert_eq!(s.pending_records, 50);
    assert!(
        segments(tmp.path()).len() < before,
        "no segment was deleted"
    );
    assert!(s.bytes_on_disk < bytes_before);
    assert_eq!(ob.peek(1).await.expect("peek")[0].seq, 151);
    // Acks not at a peeked record take the scanning path.
    ob.ack(160).await.expect("ack");
    assert_eq!(ob.peek(1).await.expect("peek")[0].seq, 161);
    assert!(matches!(
        ob.ack(500).await,
        Err(OutboxError::AckBeyondEnd {
            seq: 500,
            last: 200
        })
    ));
    ob.close().await;

    let ob = Outbox::open(c).await.expect("reopen");
    let recs = ob.peek(100).await.expect("peek");
    assert_eq!(recs.first().map(|r| r.seq), Some(161));
    assert_eq!(recs.len(), 40);
    assert_eq!(ob.stats().pending_records, 40);
    ob.close().await;
}

#[tokio::test]
async fn seq_keeps_increasing_after_everything_is_acked_and_freed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 1 << 20, 4096);
    let ob = Outbox::open(c.clone()).await.expect("open");
    append_logs(&ob, 0..100).await;
    ob.ack(100).await.expect("ack");
    // Rolls onto a new segment so every earlier one can be deleted.
    append_logs(&ob, 100..160).await;
    ob.ack(160).await.expect("ack");
    ob.close().await;
    let ob = Outbox::open(c.clone()).await.expect("reopen");
    assert!(ob.peek(10).await.expect("peek").is_empty());
    assert_eq!(
        ob.append(Class::Metric, vec![1]).await.expect("append"),
        161
    );
    ob.close().await;
    // Even with the cursor gone, segment names carry the seq forward.
    fs::remove_file(tmp.path().join("cursor")).expect("remove cursor");
    let ob = Outbox::open(c).await.expect("reopen");
    assert_eq!(
        ob.append(Class::Metric, vec![2]).await.expect("append"),
        162
    );
    ob.close().await;
}

#[tokio::test]
async fn state_records_coalesce_to_the_latest_per_key_accounting_for_every_seq() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 64 << 10, 8 << 10);
    let ob = Outbox::open(c.clone()).await.expect("open");
    let keys = ["task/a", "task/b", "container/c"];
    let mut latest = HashMap::new();
    let mut n = 0u64;
    for i in 0..3000u64 {
        let key = keys[(i % 3) as usize];
        let payload = format!("{key} transition {i:05} {}", "x".repeat(40)).into_bytes();
        let seq = ob
            .append(Class::State { key: key.into() }, payload.clone())
            .await
            .expect("state append is never refused");
        latest.insert(key, (seq, payload));
        n = seq;
        assert!(ob.stats().bytes_on_disk <= c.max_bytes, "bound exceeded");
    }
    assert!(
        ob.stats().compactions > 0,
        "the bound never triggered compaction"
    );
    let all: BTreeSet<u64> = (1..=n).collect();
    assert_accounts_for(&ob.peek(usize::MAX).await.expect("peek"), &all);

    ob.compact(0).await.expect("compact");
    let recs = ob.peek(usize::MAX).await.expect("peek");
    // A few records per key (each record's list of folded seqs is bounded), the last of
    // each key its latest transition.
    assert!(recs.len() <= 3 * 3, "{} records", recs.len());
    for key in keys {
        let last = recs
            .iter()
            .rfind(|r| matches!(&r.class, Class::State { key: k } if k == key))
            .expect("a record of each key");
        let (seq, payload) = &latest[key];
        assert_eq!((last.seq, &last.payload), (*seq, payload));
    }
    assert!(recs.iter().all(|r| r.dropped.is_empty()));
    assert_accounts_for(&recs, &all);
    ob.close().await;
    // The policy's result is durable.
    let ob = Outbox::open(c).await.expect("reopen");
    assert_eq!(ob.peek(usize::MAX).await.expect("peek"), recs);
    ob.close().await;
}

#[tokio::test]
async fn metrics_are_dropped_oldest_first_before_logs_with_a_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ob = Outbox::open(cfg(tmp.path(), 64 << 10, 8 << 10))
        .await
        .expect("open");
    let mut classes = HashMap::new();
    // Enough for two compactions, each of which metrics alone can satisfy.
    for i in 0..1100u64 {
        let (class, payload) = if i % 2 == 0 {
            (Class::Metric, format!("cpu {i:06} {}", "m".repeat(40)))
        } else {
            (Class::Log, format!("log {i:06} {}", "l".repeat(40)))
        };
        let seq = ob
            .append(class.clone(), payload.into_bytes())
            .await
            .expect("append");
        classes.insert(seq, class);
    }
    let recs = ob.peek(usize::MAX).await.expect("peek");
    let all: BTreeSet<u64> = classes.keys().copied().collect();
    assert_accounts_for(&recs, &all);
    assert!(ob.stats().records_dropped > 0);

    // Every log line is still there: metrics alone made room.
    let logs: Vec<u64> = recs
        .iter()
        .filter(|r| r.class == Class::Log)
        .map(|r| r.seq)
        .collect();
    let all_logs: Vec<u64> = all
        .iter()
        .filter(|s| classes[s] == Class::Log)
        .copied()
        .collect();
    assert_eq!(logs, all_logs);

    // Metrics: markers stand for a prefix; every kept metric is newer than all dropped ones.
    let metrics: Vec<&Record> = recs.iter().filter(|r| r.class == Class::Metric).collect();
    let markers: Vec<&&Record> = metrics.iter().filter(|r| r.is_marker()).collect();
    assert!(!markers.is_empty(), "no marker for the dropped metrics");
    for m in &markers {
        let text = String::from_utf8_lossy(&m.payload);
        assert_eq!(text, format!("dropped {} metrics", m.dropped_count()));
    }
    let newest_dropped = markers
        .iter()
        .flat_map(|m| m.dropped.iter().map(|r| *r.end()))
        .max()
        .expect("a dropped range");
    let kept = metrics.iter().filter(|r| !r.is_marker());
    for r in kept {
        assert!(
            r.seq > newest_dropped,
            "metric {} kept but older ones dropped",
            r.seq
        );
    }
    ob.close().await;
}

#[tokio::test]
async fn logs_are_dropped_oldest_first_leaving_a_marker() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ob = Outbox::open(cfg(tmp.path(), 64 << 10, 8 << 10))
        .await
        .expect("open");
    let mut last = 0;
    for i in 0..1500u64 {
        last = ob.append(Class::Log, log(i)).await.expect("append");
    }
    let recs = ob.peek(usize::MAX).await.expect("peek");
    assert_accounts_for(&recs, &(1..=last).collect());
    let (marker, rest) = recs.split_first().expect("records");
    assert!(marker.is_marker(), "the oldest record is not a marker");
    let n = marker.dropped_count();
    assert_eq!(marker.dropped, vec![1..=marker.seq]);
    assert_eq!(marker.payload, format!("dropped {n} lines").into_bytes());
    // The rest are the newest lines, intact and contiguous.
    for (k, r) in rest.iter().enumerate() {
        assert!(!r.is_marker());
        assert_eq!(r.seq, marker.seq + 1 + k as u64);
        assert_eq!(r.payload, log(r.seq - 1));
    }
    ob.close().await;
}

#[tokio::test]
async fn state_and_events_are_kept_when_they_alone_fill_the_bound() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 16 << 10, 8 << 10);
    let ob = Outbox::open(c).await.expect("open");
    // Distinct keys cannot coalesce, so they fill the bound for good.
    let mut n = 0;
    for i in 0..400u64 {
        let class = if i % 2 == 0 {
            Class::State {
                key: format!("task/{i}"),
            }
        } else {
            Class::Event {
                key: format!("container/{i}"),
            }
        };
        n = ob.append(class, vec![7; 60]).await.expect("never refused");
    }
    assert!(matches!(
        ob.append(Class::Log, log(0)).await,
        Err(OutboxError::Full { .. })
    ));
    let recs = ob.peek(usize::MAX).await.expect("peek");
    assert_eq!(recs.len(), 400);
    assert_accounts_for(&recs, &(1..=n).collect());
    // Acks make room again.
    ob.ack(n).await.expect("ack");
    ob.append(Class::Log, log(0)).await.expect("room after ack");
    ob.close().await;
}

#[tokio::test]
async fn interrupted_compaction_leftovers_are_removed_on_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 1 << 20, 4096);
    let ob = Outbox::open(c.clone()).await.expect("open");
    for i in 0..300u64 {
        ob.append(
            Class::Event {
                key: format!("k{}", i % 2),
            },
            log(i),
        )
        .await
        .expect("append");
    }
    ob.close().await;
    let saved = tmp.path().join("saved");
    fs::create_dir(&saved).expect("mkdir");
    let old = segments(tmp.path());
    assert!(old.len() > 2);
    for p in &old {
        fs::copy(p, saved.join(p.file_name().expect("name"))).expect("save segment");
    }
    let ob = Outbox::open(c.clone()).await.expect("open");
    ob.compact(0).await.expect("compact");
    let compacted = ob.peek(usize::MAX).await.expect("peek");
    assert_eq!(compacted.len(), 2);
    ob.close().await;
    // As if the crash came after the rename and before the deletions, with the temp files
    // of a later compaction and cursor write left half-done.
    for p in &old[1..] {
        fs::copy(saved.join(p.file_name().expect("name")), p).expect("restore segment");
    }
    let stray = [
        tmp.path().join(format!("{}.tmp", segment::name(1))),
        tmp.path().join("cursor.tmp"),
    ];
    for p in &stray {
        fs::write(p, b"half written").expect("write stray temp file");
    }
    let ob = Outbox::open(c).await.expect("reopen");
    assert_eq!(ob.peek(usize::MAX).await.expect("peek"), compacted);
    assert_accounts_for(&compacted, &(1..=300).collect());
    for p in &stray {
        assert!(!p.exists(), "{} was not removed", p.display());
    }
    let on_disk: u64 = segments(tmp.path())
        .iter()
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum();
    assert_eq!(ob.stats().bytes_on_disk, on_disk);
    ob.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_fsyncs_and_get_distinct_seqs() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ob = Outbox::open(cfg(tmp.path(), 64 << 20, 4 << 20))
        .await
        .expect("open");
    let fsyncs_before = ob.stats().fsyncs;
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let ob = ob.clone();
        tasks.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..20u64 {
                seqs.push(
                    ob.append(Class::Log, log(t * 100 + i))
                        .await
                        .expect("append"),
                );
            }
            seqs
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        for s in t.await.expect("appender task") {
            assert!(all.insert(s), "seq {s} handed out twice");
        }
    }
    assert_eq!(all, (1..=1280).collect());
    let s = ob.stats();
    assert_eq!(s.appends, 1280);
    assert!(
        s.fsyncs - fsyncs_before < 1280,
        "no group commit: {} fsyncs",
        s.fsyncs - fsyncs_before
    );
    ob.close().await;
}

#[tokio::test]
async fn notified_wakes_on_append_and_a_second_open_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 1 << 20, 64 << 10);
    let ob = Outbox::open(c.clone()).await.expect("open");
    assert!(matches!(
        Outbox::open(c).await,
        Err(OutboxError::Locked { .. })
    ));
    let waiter = {
        let ob = ob.clone();
        tokio::spawn(async move { ob.notified().await })
    };
    let seq = ob.append(Class::Log, log(1)).await.expect("append");
    waiter.await.expect("waiter").expect("notified");
    ob.ack(seq).await.expect("ack");
    // Nothing pending: a fresh wait does not complete before the next append.
    let waiter = {
        let ob = ob.clone();
        tokio::spawn(async move { ob.notified().await })
    };
    tokio::task::yield_now().await;
    assert!(!waiter.is_finished());
    ob.append(Class::Log, log(2)).await.expect("append");
    waiter.await.expect("waiter").expect("notified");
    ob.close().await;
}

/// A tmpfs of 1 MiB mounted for one test, detached on drop.
struct SmallFs(PathBuf);

impl SmallFs {
    fn mount(at: &Path) -> SmallFs {
        fs::create_dir_all(at).expect("create mount point");
        nix::mount::mount(
            Some("tmpfs"),
            at,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some("size=1m"),
        )
        .expect("mount a 1 MiB tmpfs (this test needs root)");
        SmallFs(at.to_path_buf())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn disk_full_names_the_path_and_keeps_the_queue_consistent() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mnt = SmallFs::mount(&tmp.path().join("small"));
    let dir = mnt.0.join("outbox");
    let c = cfg(&dir, 64 << 20, 64 << 10);
    let ob = Outbox::open(c.clone()).await.expect("open");
    let mut ok = Vec::new();
    let mut err = None;
    for i in 0..10_000u64 {
        let payload = vec![(i % 251) as u8; 1000];
        match ob.append(Class::Log, payload).await {
            Ok(seq) => ok.push(seq),
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("a 1 MiB filesystem filled up");
    assert!(matches!(err, OutboxError::DiskFull { .. }), "got {err}");
    assert!(
        err.to_string().contains(&dir.display().to_string()),
        "error does not name the outbox path: {err}"
    );
    // Still full, still consistent: the failed frames left nothing behind.
    assert!(ob.append(Class::Log, vec![0; 1000]).await.is_err());
    let recs = ob.peek(usize::MAX).await.expect("peek");
    assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), ok);
    for r in &recs {
        assert_eq!(r.payload, vec![((r.seq - 1) % 251) as u8; 1000]);
    }
    let last = *ok.last().expect("some appends succeeded");
    ob.close().await;

    let ob = Outbox::open(c).await.expect("reopen on a full disk");
    assert_eq!(ob.peek(usize::MAX).await.expect("peek"), recs);
    // Acking frees segments, and appends work again.
    ob.ack(last).await.expect("ack");
    assert_eq!(
        ob.append(Class::Log, vec![1; 1000]).await.expect("append"),
        last + 1
    );
    ob.close().await;
    drop(mnt);
}

/// A device that is never acked, appending every class interleaved (as the SIGKILL test's
/// child does): each dropped metric or folded state is a range of its own, so without a
/// bound the markers' and coalesced records' lists grew past what a frame may hold
/// (`max_bytes`) at about 40,000 seqs; reads then failed, and the next open cut the segment
/// there, losing what came after. Bounded by seq count and time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_lists_stay_bounded_when_acks_lag_far_behind() {
    const SEQS: u64 = 60_000;
    let tmp = tempfile::tempdir().expect("tempdir");
    let c = cfg(tmp.path(), 128 << 10, 16 << 10);
    let ob = Outbox::open(c.clone()).await.expect("open");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut appenders = Vec::new();
    for t in 0..8u64 {
        let (ob, stop) = (ob.clone(), stop.clone());
        appenders.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let class = match (t + i) % 4 {
                    0 => Class::State {
                        key: format!("task/{}", i % 3),
                    },
                    1 => Class::Event {
                        key: format!("container/{}", i % 2),
                    },
                    2 => Class::Metric,
                    _ => Class::Log,
                };
                let _ = ob.append(class, format!("{t}:{i}").into_bytes()).await;
                i += 1;
            }
        }));
    }
    let bound = 3 * compaction::max_ranges(c.max_bytes);
    let widest = |recs: &[Record]| {
        recs.iter()
            .map(|r| r.folded.len() + r.dropped.len())
            .max()
            .unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while ob.stats().last_seq < SEQS && started.elapsed() < Duration::from_secs(90) {
        ob.peek(64).await.expect("peek");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in appenders {
        a.await.expect("appender");
    }
    let recs = ob.peek(usize::MAX).await.expect("every record still reads");
    assert!(
        widest(&recs) <= bound,
        "a record carries {} ranges (bound {bound})",
        widest(&recs)
    );
    let last = ob.stats().last_seq;
    let acked = ob.stats().acked_seq;
    ob.close().await;
    let ob = Outbox::open(c).await.expect("reopen");
    let again = ob.peek(usize::MAX).await.expect("peek after reopen");
    assert_eq!(again, recs);
    // Every seq after the ack position is accounted for once (a marker may also name
    // older ones, acked since it was written).
    let mut seen = BTreeSet::new();
    for r in &again {
        for s in r.covers().into_iter().flatten() {
            assert!(seen.insert(s), "seq {s} accounted twice");
        }
    }
    let missing: Vec<u64> = (acked + 1..=last).filter(|s| !seen.contains(s)).collect();
    assert!(missing.is_empty(), "seqs lost: {missing:?}");
    ob.close().await;
}
