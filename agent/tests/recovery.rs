//! Crash and restart: the agent killed at random moments, containerd restarted, a host
//! reboot with the registry gone, and many start/stop cycles leaving nothing behind.

mod harness;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::containerd::OwnContainerd;
use harness::{arn, container, env, sh_task, task, wait_for, Agent};
use rand::Rng;
use serde_json::{json, Value};

fn running_ids(a: &Agent) -> Vec<String> {
    let mut v: Vec<String> = a
        .ctr(&["tasks", "ls"])
        .lines()
        .skip(1)
        .filter(|l| l.contains("RUNNING"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// Waits until the agent converged on `running` (names of desired-RUNNING tasks) and
/// checks the recovery invariants: no duplicate or orphaned container, every desired task
/// RUNNING, every other task STOPPED.
fn check_converged(a: &Agent, running: &[String], stopped: &[String]) {
    let mut expected: Vec<String> = running.iter().map(|n| format!("{n}-main")).collect();
    expected.sort();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let tasks = a.ps();
        let status = |n: &str| {
            tasks
                .iter()
                .find(|t| t["taskArn"] == arn(n))
                .map(|t| t["lastStatus"].as_str().unwrap_or("").to_string())
        };
        let ok = running
            .iter()
            .all(|n| status(n).as_deref() == Some("RUNNING"))
            && stopped
                .iter()
                .all(|n| matches!(status(n).as_deref(), Some("STOPPED") | None))
            && a.containers() == expected
            && running_ids(a) == expected;
        if ok {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "did not converge: want running {running:?}, stopped {stopped:?}\ncontainers {:?}\nrunning {:?}\n{tasks:#?}\n{}",
                a.containers(),
                running_ids(a),
                a.log_tail()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_duplicates_nothing() {
    let mut a = Agent::new(30, "kill9");
    a.start();
    let image = format!("{}/busybox:latest", a.registry);
    let def = |n: &str| {
        let mut d = sh_task(&image, n, "sleep 600");
        d["containerDefinitions"][0]["portMappings"] =
            json!([{"containerPort": 80, "hostPort": 0}]);
        d
    };
    let mut rng = rand::thread_rng();
    let mut running: Vec<String> = Vec::new();
    let mut stopped: Vec<String> = Vec::new();
    let started = Instant::now();
    let iterations = 60;
    for i in 0..iterations {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "kill -9 loop exceeded its time bound at iteration {i}"
        );
        // Each round adds a task and, past three, stops one: the kill lands during pulls,
        // creates, starts and stops alike.
        running.push(format!("k{i}"));
        if running.len() > 3 {
            let gone = running.remove(rng.gen_range(0..running.len()));
            stopped.push(gone);
        }
        let tasks: Vec<Value> = running.iter().map(|n| task(n, def(n))).collect();
        a.apply(tasks).expect("apply");
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        a.kill9();
        a.start();
        check_converged(&a, &running, &stopped);
    }
    let netns: Vec<_> = std::fs::read_dir(a.dir.path().join("netns"))
        .expect("netns dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let mut netns_sorted = netns.clone();
    netns_sorted.sort();
    let mut want = running.clone();
    want.sort();
    assert_eq!(netns_sorted, want, "one network namespace per running task");
    a.finish();
}

/// SIGTERM used to close each task's desired-status channel while its supervisor was still
/// watching it, which read as "stop this task" about half the time: a graceful agent stop
/// stopped running tasks.
#[test]
fn graceful_agent_stop_never_stops_a_running_task() {
    let mut a = Agent::new(34, "sigterm");
    a.start();
    let image = format!("{}/busybox:latest", a.registry);
    let names: Vec<String> = (0..4).map(|i| format!("t{i}")).collect();
    let tasks: Vec<Value> = names
        .iter()
        .map(|n| task(n, sh_task(&image, n, "sleep 600")))
        .collect();
    a.apply(tasks).expect("apply");
    check_converged(&a, &names, &[]);
    let before = running_ids(&a);
    // Four tasks, five stops: with a coin flip per task the old race shows up for certain.
    for _ in 0..5 {
        a.stop();
        assert_eq!(
            running_ids(&a),
            before,
            "a graceful stop stopped a task:\n{}",
            a.log_tail()
        );
        a.start();
        check_converged(&a, &names, &[]);
    }
    a.finish();
}

#[test]
fn containerd_restart_is_survived_and_exits_are_still_seen() {
    let e = env();
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut cd = OwnContainerd::start(&scratch.path().join("containerd"));
    let mut a = Agent::with(31, "cdrestart", &cd.socket(), "");
    a.start();
    let image = format!("{}/busybox:latest", e.registry);
    let def = sh_task(
        &image,
        "watched",
        "echo up; while [ ! -f /tmp/stop ]; do sleep 0.2; done; exit 5",
    );
    a.apply(vec![task("watched", def)]).expect("apply");
    a.wait_status(&arn("watched"), "RUNNING");

    cd.restart();
    // The container keeps running through the restart (its shim does not depend on
    // containerd), and the agent must notice when it exits afterwards.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        a.task(&arn("watched")).expect("task")["lastStatus"],
        "RUNNING"
    );
    let out = a.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "t1",
        "watched-main",
        "touch",
        "/tmp/stop",
    ]);
    assert!(out.is_empty(), "{out}");
    let t = a.wait_status(&arn("watched"), "STOPPED");
    assert_eq!(container(&t, "main")["exitCode"], 5, "{t:#}");
    a.finish();
}

#[test]
fn a_shim_that_never_answers_is_killed_and_the_start_tried_again() {
    // A shim left half-started by an agent killed mid-create held every later create of
    // that container forever: containerd waits on it with no deadline of its own. The
    // fixture stands in for that shim on the first start of a container named "stuck-*".
    let e = env();
    let scratch = tempfile::tempdir().expect("tempdir");
    let shims = scratch.path().join("shims");
    std::fs::create_dir_all(&shims).expect("shims dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stuck-shim");
    std::fs::copy(&fixture, shims.join("containerd-shim-runc-v2")).expect("install fixture");
    let _stuck = KillPidInFile(shims.join("stuck-main.stuck"));
    let cd = OwnContainerd::start_with_shims(&scratch.path().join("containerd"), Some(&shims));
    let mut a = Agent::with(38, "stuckshim", &cd.socket(), "");
    a.start();
    let image = format!("{}/busybox:latest", e.registry);
    let def = sh_task(&image, "stuck", "echo up; sleep 600");
    a.apply(vec![task("stuck", def)]).expect("apply");

    let t = a.wait_task(&arn("stuck"), Duration::from_secs(150), |t| {
        t["lastStatus"] == "RUNNING" || t["lastStatus"] == "STOPPED"
    });
    assert_eq!(t["lastStatus"], "RUNNING", "{t:#}\n{}", a.log_tail());
    let stuck: i32 = std::fs::read_to_string(shims.join("stuck-main.stuck"))
        .expect("the fixture's stuck shim was started")
        .trim()
        .parse()
        .expect("its pid");
    let log = a.log_tail();
    assert!(
        log.contains("killed the container's shim") && log.contains(&stuck.to_string()),
        "no word of the stuck shim {stuck} being killed:\n{log}"
    );
    let state = std::fs::read_to_string(format!("/proc/{stuck}/stat")).unwrap_or_default();
    assert!(
        state.is_empty() || state.contains(") Z "),
        "the stuck shim still runs: {state}"
    );
    assert_eq!(a.containers(), vec!["stuck-main".to_string()]);
    wait_for("the container's output", Duration::from_secs(10), || {
        a.logs("stuck", "main").contains("up")
    });
    a.finish();
}

/// Kills the process whose pid is in the file, if any, when dropped: the fixture's stuck
/// shim must not outlive a failed test.
struct KillPidInFile(PathBuf);

impl Drop for KillPidInFile {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill")
                .args(["-9", pid.trim()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Copies the test image into a registry of this test's own, so that the test can take
/// the registry away.
fn own_registry(dir: &Path, port: u16, images: &Path) -> Child {
    std::fs::create_dir_all(dir.join("data")).expect("registry dir");
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.join("data").display()
        ),
    )
    .expect("registry config");
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("docker-registry");
    wait_for("registry", Duration::from_secs(20), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let status = Command::new("skopeo")
        .args(["copy", "-q", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:host", images.join("layout").display()))
        .arg(format!("docker://127.0.0.1:{port}/busybox:latest"))
        .status()
        .expect("skopeo");
    assert!(status.success());
    child
}

#[test]
fn host_reboot_without_network_brings_desired_tasks_back() {
    let e = env();
    let scratch = tempfile::tempdir().expect("tempdir");
    let port = harness::free_port();
    let mut registry = own_registry(&scratch.path().join("registry"), port, &e.images);
    let mut cd = OwnContainerd::start(&scratch.path().join("containerd"));
    let mut a = Agent::with(32, "reboot", &cd.socket(), "");
    a.start();
    let image = format!("127.0.0.1:{port}/busybox:latest");
    let mut web = sh_task(&image, "web", "echo boot; sleep 600");
    web["containerDefinitions"][0]["portMappings"] = json!([{"containerPort": 80, "hostPort": 0}]);
    let worker = sh_task(&image, "worker", "echo boot; sleep 600");
    a.apply(vec![task("web", web), task("worker", worker)])
        .expect("apply");
    a.wait_status(&arn("web"), "RUNNING");
    a.wait_status(&arn("worker"), "RUNNING");

    // The reboot: the agent and every process die, /run is wiped, the registry is gone.
    a.kill9();
    for id in a.containers() {
        a.ctr(&["tasks", "kill", "-s", "SIGKILL", &id]);
    }
    wait_for("containers dead", Duration::from_secs(20), || {
        running_ids(&a).is_empty()
    });
    cd.kill();
    kill_shims(&a.ns);
    let _ = registry.kill();
    let _ = registry.wait();
    for entry in std::fs::read_dir(a.dir.path().join("netns"))
        .expect("netns")
        .flatten()
    {
        let _ = Command::new("umount").arg("-l").arg(entry.path()).status();
        let _ = std::fs::remove_file(entry.path());
    }
    // A reboot unmounts the containers' root filesystems and empties /run.
    let state = cd.dir.join("state");
    let mounts = std::fs::read_to_string("/proc/mounts").expect("/proc/mounts");
    for target in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)) {
        if target.starts_with(&state.display().to_string()) {
            let _ = Command::new("umount").arg("-l").arg(target).status();
        }
    }
    std::fs::remove_dir_all(&state).expect("wipe containerd's state");
    let _ = std::fs::remove_dir_all(Path::new("/run/containerd/runc").join(&a.ns));
    cd.restart();
    a.start();
    check_converged(&a, &["web".to_string(), "worker".to_string()], &[]);
    assert_eq!(a.logs(&arn("worker"), "main").matches("boot").count(), 2);
    a.finish();
}

#[test]
fn a_hundred_start_stop_cycles_leave_no_ip_veth_or_iptables_rule() {
    let mut a = Agent::new(33, "cycles");
    a.start();
    let image = format!("{}/busybox:latest", a.registry);
    let subnet = "10.220.33.";
    let rules = || {
        let out = Command::new("iptables-save")
            .output()
            .expect("iptables-save");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(subnet))
            .count()
    };
    let veths = || {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", "skt33"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let ips = |dir: &Path| -> Vec<String> {
        walk(dir)
            .into_iter()
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(subnet))
            })
            .map(|p| p.display().to_string())
            .collect()
    };
    let started = Instant::now();
    let mut baseline = None;
    for i in 0..100 {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "cycle {i} exceeded the time bound"
        );
        let name = format!("c{i}");
        let mut def = sh_task(&image, "cycle", "sleep 600");
        def["containerDefinitions"][0]["portMappings"] =
            json!([{"containerPort": 80, "hostPort": 0}]);
        a.apply(vec![task(&name, def)]).expect("apply");
        a.wait_status(&arn(&name), "RUNNING");
        a.apply(vec![]).expect("apply empty");
        a.wait_status(&arn(&name), "STOPPED");
        wait_for("containers removed", Duration::from_secs(30), || {
            a.containers().is_empty()
        });
        if baseline.is_none() {
            baseline = Some(rules());
        }
    }
    assert_eq!(veths(), 0, "veths left on the bridge");
    assert_eq!(
        Some(rules()),
        baseline,
        "iptables rules for the subnet changed"
    );
    assert_eq!(rules(), 0, "iptables rules mention the subnet");
    assert!(
        ips(&a.data_dir()).is_empty(),
        "IP reservations left: {:?}",
        ips(&a.data_dir())
    );
    a.finish();
}

/// Kills the containerd shims serving `namespace`, as a power cut would.
fn kill_shims(namespace: &str) {
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_shim = args.first().is_some_and(|a| a.contains("containerd-shim"));
        if is_shim
            && args
                .windows(2)
                .any(|w| w[0] == "-namespace" && w[1] == namespace)
        {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
