//! The driver's line cutting and rotation, the reader, the limits.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::driver::{rfc3339_nanos, LineSplitter};
use super::rotation::{log_files, LogFile};
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
