//! The agent binary as containerd's log driver (started by hand exactly as the runc shim
//! does, and by a real containerd) and as a container init.
//!
//! The containerd test needs `scripts/test-env up DIR` and `source DIR/env`.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{mkfifo, Pid};
use skerry_agent::logs::{self, LogLimits, ReadOptions, Stream};

const AGENT: &str = env!("CARGO_BIN_EXE_skerry-agent");

/// Waits for `child`, killing it and failing after `limit` so a hung process cannot hang
/// the test run.
fn wait_bounded(child: &mut Child, what: &str, limit: Duration) -> ExitStatus {
    let step = Duration::from_millis(20);
    for _ in 0..(limit.as_millis() / step.as_millis()) {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        sleep(step);
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what} did not exit within {limit:?}");
}

/// A driver started the way containerd's shim starts it: fd 3 and 4 read ends of the
/// container's stdout and stderr, fd 5 the readiness pipe, argv `skerry-log-dir DIR`.
struct Driver {
    child: Child,
    stdout: Option<File>,
    stderr: Option<File>,
    _fifos: tempfile::TempDir,
}

impl Driver {
    fn start(log_dir: &Path) -> Self {
        let fifos = tempfile::tempdir().expect("tempdir");
        let path = |name: &str| fifos.path().join(name);
        for name in ["out", "err", "ready"] {
            mkfifo(&path(name), Mode::S_IRUSR | Mode::S_IWUSR).expect("mkfifo");
        }
        let child = Command::new("/bin/sh")
            .arg("-c")
            .arg(r#"exec "$0" skerry-log-dir "$1" 3<"$2" 4<"$3" 5>"$4""#)
            .arg(AGENT)
            .arg(log_dir)
            .args([path("out"), path("err"), path("ready")])
            .env_clear()
            .env("CONTAINER_ID", "skt-logs-test")
            .env("CONTAINER_NAMESPACE", "skt-logs")
            .spawn()
            .expect("spawn sh");
        let stdout = open_writer(&path("out"));
        let stderr = open_writer(&path("err"));
        let mut ready = File::open(path("ready")).expect("open readiness fifo");
        let mut buf = Vec::new();
        ready
            .read_to_end(&mut buf)
            .expect("driver closes fd 5 once ready");
        Self {
            child,
            stdout: Some(stdout),
            stderr: Some(stderr),
            _fifos: fifos,
        }
    }

    fn out(&mut self) -> &mut File {
        self.stdout.as_mut().expect("stdout still open")
    }

    fn err(&mut self) -> &mut File {
        self.stderr.as_mut().expect("stderr still open")
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.child.id()).expect("pid fits i32"))
    }

    /// Closes both streams, as when the container exits, and waits for the driver.
    fn finish(mut self) -> ExitStatus {
        self.stdout = None;
        self.stderr = None;
        wait_bounded(&mut self.child, "log driver", Duration::from_secs(120))
    }
}

/// Opens a FIFO's write end once the driver's shell opens the read end (bounded retries:
/// O_NONBLOCK fails with ENXIO until then), then makes writes blocking again.
fn open_writer(path: &Path) -> File {
    for _ in 0..500 {
        match OpenOptions::new()
            .write(true)
            .custom_flags(OFlag::O_NONBLOCK.bits())
            .open(path)
        {
            Ok(f) => {
                fcntl(f.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).expect("clear O_NONBLOCK");
                return f;
            }
            Err(e) if e.raw_os_error() == Some(nix::libc::ENXIO) => {
                sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("open {}: {e}", path.display()),
        }
    }
    panic!("the driver never opened {}", path.display());
}

/// (timestamp, stream, line) of each record in `path`.
fn records(path: &Path) -> Vec<(String, String, String)> {
    let text = fs::read_to_string(path).expect("read log file");
    text.lines()
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            let ts = parts.next().expect("timestamp").to_string();
            let stream = parts.next().expect("stream").to_string();
            let line = parts.next().unwrap_or_default().to_string();
            (ts, stream, line)
        })
        .collect()
}

fn assert_timestamp(ts: &str) {
    let b = ts.as_bytes();
    let shape_ok = b.len() == 30
        && b[4] == b'-'
        && b[10] == b'T'
        && b[19] == b'.'
        && b[29] == b'Z'
        && ts[20..29].bytes().all(|c| c.is_ascii_digit());
    assert!(
        shape_ok,
        "not an RFC 3339 UTC timestamp with nanoseconds: {ts:?}"
    );
}

fn read_logs(dir: &Path, opts: ReadOptions) -> String {
    let mut out = Vec::new();
    logs::read(dir, opts, &mut out).expect("read logs");
    String::from_utf8(out).expect("utf-8 logs")
}

#[test]
fn driver_tags_streams_splits_long_lines_and_flushes_partial_last_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("task logs+1");
    let mut driver = Driver::start(&log_dir);
    let long = "L".repeat(40_000);
    write!(driver.out(), "hello\n\n{long}\nno newline").expect("write stdout");
    writeln!(driver.err(), "oops").expect("write stderr");
    let status = driver.finish();
    assert!(status.success(), "driver exited with {status}");

    let recs = records(&log_dir.join(logs::LOG_FILE));
    for (ts, _, _) in &recs {
        assert_timestamp(ts);
    }
    let stdout: Vec<&str> = recs
        .iter()
        .filter(|r| r.1 == "stdout")
        .map(|r| r.2.as_str())
        .collect();
    let (first, rest) = long.split_at(logs::MAX_LINE);
    let (second, third) = rest.split_at(logs::MAX_LINE);
    assert_eq!(
        stdout,
        vec!["hello", "", first, second, third, "no newline"]
    );
    let stderr: Vec<&str> = recs
        .iter()
        .filter(|r| r.1 == "stderr")
        .map(|r| r.2.as_str())
        .collect();
    assert_eq!(stderr, vec!["oops"]);
    assert_eq!(recs.len(), 7, "no other records: {recs:?}");

    let tail = ReadOptions {
        tail: Some(1),
        stream: Some(Stream::Stdout),
        ..Default::default()
    };
    assert_eq!(read_logs(&log_dir, tail), "no newline\n");
}

#[test]
fn fifty_mib_through_a_two_mib_limit_keeps_the_newest_within_bounds() {
    const MAX_BYTES: u64 = 2 << 20;
    const MAX_FILES: usize = 3;
    const LINES: usize = 50 * 1024 * 1024 / 100;
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("logs");
    LogLimits {
        max_bytes: MAX_BYTES,
        max_files: MAX_FILES,
    }
    .store(&log_dir)
    .expect("store limits");
    let mut driver = Driver::start(&log_dir);
    let pad = "x".repeat(90);
    let mut chunk = String::with_capacity(1 << 20);
    for i in 0..LINES {
        // 100 bytes per line, 50 MiB in all.
        chunk.push_str(&format!("{i:08} {pad}\n"));
        if chunk.len() >= 1 << 20 || i == LINES - 1 {
            driver
                .out()
                .write_all(chunk.as_bytes())
                .expect("write stdout");
            chunk.clear();
        }
    }
    let status = driver.finish();
    assert!(status.success(), "driver exited with {status}");

    let mut names: Vec<String> = fs::read_dir(&log_dir)
        .expect("list log dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(logs::LOG_FILE))
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["container.log", "container.log.1", "container.log.2"]
    );
    let record_len = 30 + 1 + 6 + 1 + 99 + 1;
    let mut total = 0;
    for name in &names {
        let size = fs::metadata(log_dir.join(name)).expect("stat").len();
        assert!(
            size <= MAX_BYTES,
            "{name} is {size} bytes, over {MAX_BYTES}"
        );
        if name != logs::LOG_FILE {
            assert!(
                size > MAX_BYTES - record_len,
                "{name} rotated early at {size} bytes"
            );
        }
        total += size;
    }
    assert!(total <= MAX_BYTES * MAX_FILES as u64, "kept {total} bytes");

    // The kept lines are the newest ones, consecutive, none dropped.
    let text = read_logs(&log_dir, ReadOptions::default());
    let numbers: Vec<usize> = text
        .lines()
        .map(|l| l[..8].parse().expect("line number"))
        .collect();
    assert_eq!(numbers.last(), Some(&(LINES - 1)));
    let first = numbers[0];
    assert_eq!(numbers, (first..LINES).collect::<Vec<_>>());
    assert!(!text.contains("skerry: dropped"), "lines were dropped");
}

#[test]
fn sigterm_from_the_shim_still_drains_the_pipes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("logs");
    let mut driver = Driver::start(&log_dir);
    for i in 0..1000 {
        writeln!(driver.out(), "before {i}").expect("write stdout");
    }
    // The shim closes its pipe ends and sends SIGTERM together when the task is deleted.
    kill(driver.pid(), Signal::SIGTERM).expect("signal driver");
    for i in 0..1000 {
        writeln!(driver.out(), "after {i}").expect("write stdout");
    }
    writeln!(driver.err(), "last words").expect("write stderr");
    let status = driver.finish();
    assert!(status.success(), "driver exited with {status}");
    let text = read_logs(&log_dir, ReadOptions::default());
    let stdout = read_logs(
        &log_dir,
        ReadOptions {
            stream: Some(Stream::Stdout),
            ..Default::default()
        },
    );
    let expected: String = (0..1000)
        .map(|i| format!("before {i}\n"))
        .chain((0..1000).map(|i| format!("after {i}\n")))
        .collect();
    assert_eq!(stdout, expected);
    assert!(text.contains("last words\n"), "stderr line missing");
}

#[test]
fn driver_creates_the_log_file_before_reporting_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_dir = dir.path().join("quiet");
    let driver = Driver::start(&log_dir);
    let live = log_dir.join(logs::LOG_FILE);
    assert!(live.exists(), "no {} once ready", live.display());
    let status = driver.finish();
    assert!(status.success(), "driver exited with {status}");
    assert_eq!(fs::metadata(&live).expect("stat").len(), 0);
}

#[test]
fn unwritable_log_dir_still_drains_the_container_output() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A regular file where the directory should be: every open fails.
    let log_dir = dir.path().join("not-a-dir");
    fs::write(&log_dir, "").expect("write");
    let mut driver = Driver::start(&log_dir);
    let mut out = driver.stdout.take().expect("stdout");
    // Far more than a pipe holds: this only completes if the driver keeps reading.
    let writer = std::thread::spawn(move || {
        let line = format!("{}\n", "y".repeat(99));
        for _ in 0..40_000 {
            out.write_all(line.as_bytes()).expect("write stdout");
        }
    });
    let mut joined = false;
    for _ in 0..3000 {
        if writer.is_finished() {
            joined = true;
            break;
        }
        sleep(Duration::from_millis(20));
    }
    assert!(
        joined,
        "the container's writes blocked: the driver stopped reading"
    );
    writer.join().expect("writer thread");
    let status = driver.finish();
    assert!(status.success(), "driver exited with {status}");
}

fn env_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run `scripts/test-env up DIR` and `source DIR/env` first")
    })
}

fn ctr(socket: &str, args: &[&str]) -> std::process::Output {
    let out = Command::new("ctr")
        .args(["--address", socket, "-n", "skt-logs"])
        .args(args)
        .output()
        .expect("run ctr");
    assert!(
        out.status.success(),
        "ctr {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn containerd_shim_runs_the_agent_as_log_driver() {
    let socket = env_var("SKERRY_TEST_CONTAINERD");
    let image = format!("{}/busybox:latest", env_var("SKERRY_TEST_REGISTRY"));
    ctr(&socket, &["images", "pull", "--plain-http", &image]);

    let dir = tempfile::tempdir().expect("tempdir");
    // Characters URIs and Go's query parsing treat specially must survive the trip.
    let log_dir = dir.path().join("task logs+a&b=c%d");
    let uri = logs::stdio_uri(Path::new(AGENT), &log_dir);
    let id = format!("skt-logs-{}", std::process::id());
    let script = r#"i=0; while [ $i -lt 1000 ]; do echo "out $i"; i=$((i+1)); done
echo "err one" >&2; echo "err two" >&2"#;
    // --rm deletes the task, which makes the shim wait for the driver to exit.
    ctr(
        &socket,
        &[
            "run",
            "--rm",
            "--log-uri",
            &uri,
            &image,
            &id,
            "sh",
            "-c",
            script,
        ],
    );

    let recs = records(&log_dir.join(logs::LOG_FILE));
    for (ts, _, _) in &recs {
        assert_timestamp(ts);
    }
    let of = |stream: &str| -> Vec<String> {
        recs.iter()
            .filter(|r| r.1 == stream)
            .map(|r| r.2.clone())
            .collect()
    };
    let expected: Vec<String> = (0..1000).map(|i| format!("out {i}")).collect();
    assert_eq!(of("stdout"), expected);
    assert_eq!(of("stderr"), ["err one", "err two"]);
    assert_eq!(recs.len(), 1002);
}

/// Starts the agent as init (`argv[0]` = `argv0`) over `sh -c script`, stdout piped.
fn start_init(argv0: &str, script: &str) -> Child {
    Command::new(AGENT)
        .arg0(argv0)
        .args(["--", "/bin/sh", "-c", script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn init")
}

fn first_line(child: &mut Child) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read child stdout");
    line
}

#[test]
fn init_forwards_sigterm_and_propagates_the_exit_code() {
    // The trap kills the background sleep so nothing outlives the test.
    let script = r#"trap 'kill $!; exit 42' TERM; sleep 100 & echo ready; wait $!"#;
    let mut init = start_init("/x/.skerry/init", script);
    assert_eq!(first_line(&mut init), "ready\n");
    let pid = Pid::from_raw(i32::try_from(init.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGTERM).expect("signal init");
    let status = wait_bounded(&mut init, "init", Duration::from_secs(30));
    assert_eq!(status.code(), Some(42), "init exited with {status}");
}

#[test]
fn init_exits_128_plus_the_signal_that_killed_the_command() {
    let mut init = start_init("init", "echo ready; exec sleep 100");
    assert_eq!(first_line(&mut init), "ready\n");
    let pid = Pid::from_raw(i32::try_from(init.id()).expect("pid fits i32"));
    kill(pid, Signal::SIGUSR1).expect("signal init");
    let status = wait_bounded(&mut init, "init", Duration::from_secs(30));
    assert_eq!(status.signal(), None, "init itself was killed: {status}");
    assert_eq!(status.code(), Some(128 + Signal::SIGUSR1 as i32));
}

#[test]
fn init_exit_code_of_a_missing_command_is_127() {
    let status = Command::new(AGENT)
        .arg0("/.skerry/init")
        .args(["--", "/nonexistent/command"])
        .stderr(Stdio::null())
        .status()
        .expect("run init");
    assert_eq!(status.code(), Some(127));
}

#[test]
fn init_reaps_orphaned_zombies() {
    // Orphans of the command are re-parented to init (a subreaper outside a PID namespace,
    // PID 1 inside one). The command checks its orphan became init's child, kills it, then
    // polls until init has no child but the command: a zombie stays listed until reaped.
    // Bounded: 100 polls, then exit 1.
    let script = r#"orphan=$( (sleep 100 >/dev/null 2>&1 & echo $!) )
kids() { echo $(cat /proc/$PPID/task/*/children); }
case " $(kids) " in *" $orphan "*) ;; *) echo "orphan $orphan not init's child" >&2; exit 2;; esac
kill $orphan
n=0
while [ $n -lt 100 ]; do
  if [ "$(kids)" = "$$" ]; then exit 7; fi
  n=$((n+1)); sleep 0.1
done
echo "init children left: $(kids)" >&2; exit 1"#;
    let mut init = start_init("/x/.skerry/init", script);
    let status = wait_bounded(&mut init, "init", Duration::from_secs(60));
    assert_eq!(status.code(), Some(7), "orphans were not reaped: {status}");
}
