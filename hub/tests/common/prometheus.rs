//! A real Prometheus server (Debian's `prometheus`, from scripts/setup) for tests: started
//! on a loopback port with a config and storage of its own in a temporary directory,
//! scraping the given targets every second, killed when dropped. Also `promtool`.
// Each test crate that includes this file uses a different part of it.
#![allow(dead_code)]

use std::fs;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";
pub const PROMTOOL: &str = "/usr/bin/promtool";

pub struct Prometheus {
    child: Child,
    pub port: u16,
    http: reqwest::blocking::Client,
}

/// `promtool check metrics` on `text`: its complaints, empty when the text is clean.
pub fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {PROMTOOL}: {e}; scripts/setup installs it (prometheus)"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let text = text.to_string();
    let writer = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
    let out = child.wait_with_output().expect("wait for promtool");
    writer
        .join()
        .expect("writer thread")
        .expect("write to promtool");
    let mut said = String::from_utf8_lossy(&out.stdout).into_owned();
    said.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && said.trim().is_empty() {
        said = format!("promtool exited with {}", out.status);
    }
    said
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping `targets` (host:port) at `/metrics` every second.
    pub fn start(dir: &Path, targets: &[String]) -> Prometheus {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let list = targets
            .iter()
            .map(|t| format!("\"{t}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
                 scrape_configs:\n  - job_name: skerry\n    static_configs:\n      - targets: [{list}]\n"
            ),
        )
        .expect("write prometheus config");
        let log = fs::File::create(dir.join("prometheus.log")).expect("prometheus log");
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("run {PROMETHEUS}: {e}; scripts/setup installs it (prometheus)")
            });
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .expect("http client");
        Prometheus { child, port, http }
    }

    /// Runs `query` (PromQL, instant) until it returns at least one series, for at most
    /// `timeout`; the series' `metric` and `value` objects. The log is in the panic message
    /// when it never does.
    pub fn query_until(&self, query: &str, timeout: Duration, dir: &Path) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.http.get(&url).query(&[("query", query)]).send() {
                Ok(r) => match r.json::<Value>() {
                    Ok(v) if v["status"] == "success" => {
                        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
                        if !result.is_empty() {
                            return result;
                        }
                        v.to_string()
                    }
                    Ok(v) => v.to_string(),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                let log = fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                panic!(
                    "{query} returned nothing within {timeout:?}; last answer {last}; log:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
