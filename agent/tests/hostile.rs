//! A container image or a task that attacks the device, on real containerd and runc: the
//! task fails or is held to its limit, and the agent and the other tasks carry on.

mod harness;

use std::time::{Duration, Instant};

use harness::{arn, sh_task, task, Agent};
use serde_json::{json, Value};

/// A task running `image` as the user named `root`: the name makes the agent read the
/// image's /etc/passwd.
fn as_root_by_name(image: &str, family: &str) -> Value {
    json!({
        "family": family, "networkMode": "none", "memory": "32",
        "containerDefinitions": [{"name": "main", "image": image, "user": "root",
            "command": ["sleep", "600"]}]
    })
}

/// Each hostile image (see scripts/test-images) against the agent. The symlink to the
/// host's /etc/shadow would once have been read there (its `root` line gives a uid of the
/// password's age, and the task ran); now it resolves inside the image, which has no such
/// file. The symlink to /dev/zero meets the image's own character device; the FIFO would
/// once have hung the task forever; the 2 MiB file passes the 1 MiB cap.
#[test]
fn a_hostile_passwd_fails_its_task_and_nothing_else() {
    let mut a = Agent::new(44, "hostile");
    a.start();
    let calm = sh_task(
        &format!("{}/busybox:latest", a.registry),
        "calm",
        "sleep 600",
    );
    a.apply(vec![task("calm", calm.clone())]).expect("apply");
    a.wait_status(&arn("calm"), "RUNNING");

    let cases = [
        (
            "passwd-host",
            "user \"root\" is not in the image's /etc/passwd",
        ),
        (
            "passwd-zero",
            "etc/passwd in the image is a character device, not a regular file",
        ),
        (
            "passwd-fifo",
            "etc/passwd in the image is a FIFO, not a regular file",
        ),
        (
            "passwd-big",
            "etc/passwd in the image is larger than the agent reads (1048576 bytes)",
        ),
    ];
    let mut tasks = vec![task("calm", calm)];
    for (name, _) in &cases {
        let image = format!("{}/hostile:{name}", a.registry);
        tasks.push(task(name, as_root_by_name(&image, name)));
    }
    let started = Instant::now();
    a.apply(tasks).expect("apply");
    for (name, want) in &cases {
        let t = a.wait_task(&arn(name), Duration::from_secs(90), |t| {
            t["lastStatus"] == "STOPPED"
        });
        let reason = t["stoppedReason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(want) && reason.contains("container main"),
            "{name}: stoppedReason {reason:?} should name the container and say {want:?}"
        );
    }
    // Pulls included; a FIFO read would never have returned.
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
    // The agent is the same process, still answering, and the other task never noticed.
    let pid = a.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(
        a.task(&arn("calm")).expect("calm task")["lastStatus"],
        "RUNNING"
    );
    let log = std::fs::read_to_string(&a.log).unwrap_or_default();
    assert!(!log.contains("panicked"), "{}", a.log_tail());
    a.finish();
}

/// The container's pids cgroup file `name` (cgroup v1's pids hierarchy, else v2's).
fn pids_file(a: &Agent, task_id: &str, container: &str, name: &str) -> Option<String> {
    let rel = format!("skerry/{}/{task_id}/{container}/{name}", a.ns);
    ["/sys/fs/cgroup/pids", "/sys/fs/cgroup"]
        .iter()
        .find_map(|root| std::fs::read_to_string(format!("{root}/{rel}")).ok())
        .map(|s| s.trim().to_string())
}

/// A bounded fork bomb (up to 500 processes that live on) in a container whose limit is
/// 64: the forks past the limit fail inside it, the device can still start a new task,
/// the other task runs on, and the bomb's task is stopped at the end.
#[test]
fn a_fork_bomb_stops_at_pids_max() {
    let e = harness::env();
    let mut a = Agent::with(
        45,
        "forkbomb",
        &e.containerd,
        "[containers]\npids_max = 64\n",
    );
    a.start();
    let image = format!("{}/busybox:latest", a.registry);
    // The inner shell forks until it cannot and exits; its sleeps stay, holding the
    // container at its limit; the outer shell reports and becomes a sleep without forking.
    let bomb = sh_task(
        &image,
        "bomb",
        "sh -c 'i=0; while [ $i -lt 500 ]; do sleep 600 & i=$((i+1)); done'; \
         echo inner=$?; exec sleep 600",
    );
    let calm = sh_task(&image, "calm", "sleep 600");
    a.apply(vec![task("calm", calm.clone()), task("bomb", bomb.clone())])
        .expect("apply");
    a.wait_status(&arn("calm"), "RUNNING");
    a.wait_status(&arn("bomb"), "RUNNING");
    harness::wait_for("the bomb to hit its limit", Duration::from_secs(60), || {
        a.logs(&arn("bomb"), "main").contains("inner=")
    });
    let out = a.logs(&arn("bomb"), "main");
    assert!(out.contains("can't fork"), "{out}");
    assert_eq!(
        pids_file(&a, "bomb", "main", "pids.max").as_deref(),
        Some("64")
    );
    let current: u32 = pids_file(&a, "bomb", "main", "pids.current")
        .and_then(|s| s.parse().ok())
        .expect("pids.current");
    assert!((60..=64).contains(&current), "pids.current {current}");

    // The device still forks: a new task starts, and the calm one never stopped.
    let after = sh_task(&image, "after", "sleep 600");
    a.apply(vec![
        task("calm", calm),
        task("bomb", bomb),
        task("after", after),
    ])
    .expect("apply");
    a.wait_status(&arn("after"), "RUNNING");
    let calm = a.task(&arn("calm")).expect("calm task");
    assert_eq!(calm["lastStatus"], "RUNNING");
    assert_eq!(harness::container(&calm, "main")["lastStatus"], "RUNNING");
    a.finish();
}
