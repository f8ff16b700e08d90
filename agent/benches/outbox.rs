//! Outbox throughput: durable appends per second with group commit from many concurrent
//! appenders, fsyncs and bytes written per message (from the outbox's own counters), and the
//! peek+ack drain rate. Prints a table and writes it to bench/results/outbox.md.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use skerry_agent::outbox::{Class, Outbox, OutboxConfig, OutboxStats};

const PAYLOAD: usize = 100;

struct Row {
    name: String,
    msgs: u64,
    secs: f64,
    before: OutboxStats,
    after: OutboxStats,
}

impl Row {
    fn rate(&self) -> f64 {
        self.msgs as f64 / self.secs
    }
    fn per_msg(&self, f: impl Fn(&OutboxStats) -> u64) -> f64 {
        (f(&self.after) - f(&self.before)) as f64 / self.msgs as f64
    }
}

async fn appenders(ob: &Outbox, tasks: u64, per_task: u64, name: &str) -> Row {
    let before = ob.stats();
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..tasks {
        let ob = ob.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per_task {
                let mut p = format!("{t}:{i} ").into_bytes();
                p.resize(PAYLOAD, b'.');
                ob.append(Class::Log, p).await.expect("bench append");
            }
        }));
    }
    for h in handles {
        h.await.expect("appender task");
    }
    Row {
        name: name.to_string(),
        msgs: tasks * per_task,
        secs: start.elapsed().as_secs_f64(),
        before,
        after: ob.stats(),
    }
}

async fn drain(ob: &Outbox, batch: usize) -> Row {
    let before = ob.stats();
    let start = Instant::now();
    let mut msgs = 0;
    loop {
        let recs = ob.peek(batch).await.expect("bench peek");
        let Some(last) = recs.last() else { break };
        msgs += recs.len() as u64;
        ob.ack(last.seq).await.expect("bench ack");
    }
    Row {
        name: format!("drain: peek({batch}) + ack"),
        msgs,
        secs: start.elapsed().as_secs_f64(),
        before,
        after: ob.stats(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown cpu".into())
}

/// The filesystem type the bench directory lives on: fsync cost depends on it.
fn fs_type(dir: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return "unknown".into();
    };
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && dir.starts_with(f[1])).then(|| (f[1].len(), f[2].to_string()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, t)| t)
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown date".into())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("outbox-bench");
    let _ = std::fs::remove_dir_all(&dir);
    let rows = rt.block_on(async {
        let ob = Outbox::open(OutboxConfig::new(&dir))
            .await
            .expect("open bench outbox");
        let mut rows = Vec::new();
        rows.push(appenders(&ob, 1, 300, "append, 1 appender").await);
        rows.push(appenders(&ob, 64, 1000, "append, 64 concurrent appenders").await);
        rows.push(appenders(&ob, 256, 250, "append, 256 concurrent appenders").await);
        rows.push(drain(&ob, 256).await);
        ob.close().await;
        rows
    });
    let _ = std::fs::remove_dir_all(&dir);

    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let profile = if cfg!(debug_assertions) {
        "debug (unoptimized)"
    } else {
        "optimized"
    };
    let mut md = String::new();
    let _ = writeln!(md, "# Outbox benchmark\n");
    let _ = writeln!(md, "- date: {}", utc_now());
    let _ = writeln!(md, "- machine: {} x {nproc}", cpu_model());
    let _ = writeln!(
        md,
        "- filesystem: {}",
        fs_type(Path::new(env!("CARGO_TARGET_TMPDIR")))
    );
    let _ = writeln!(md, "- build: {profile}");
    let _ = writeln!(
        md,
        "- payload: {PAYLOAD} bytes, class Log; segments 4 MiB; bound 64 MiB\n"
    );
    let _ = writeln!(
        md,
        "| scenario | messages | seconds | messages/s | fsyncs/message | bytes written/message |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let _ = writeln!(
            md,
            "| {} | {} | {:.2} | {:.0} | {:.4} | {:.1} |",
            r.name,
            r.msgs,
            r.secs,
            r.rate(),
            r.per_msg(|s| s.fsyncs),
            r.per_msg(|s| s.bytes_written),
        );
    }
    print!("{md}");
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/results/outbox.md");
    if let Some(parent) = out.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    match std::fs::write(&out, &md) {
        Ok(()) => println!("\nwritten to bench/results/outbox.md"),
        Err(e) => eprintln!("cannot write bench/results/outbox.md: {e}"),
    }
}
