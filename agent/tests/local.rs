//! What the device does on its own, with no hub: a service's task that stops for good is
//! replaced locally; a first boot runs its bootstrap document from preloaded images with no
//! registry reachable; the hardware watchdog is fed. Documents that have not heard of the
//! device's own tasks leave them running; a document that refuses them stops them. One
//! daemon per data directory.

mod harness;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::{arn, env, sh_task, task, wait_for, Agent};
use serde_json::{json, Value};

/// A task definition whose container exits with 3 the first time it runs and then keeps
/// running: the marker file is on a host volume that outlives the task.
fn fails_once(image: &str, family: &str, marker_dir: &Path) -> Value {
    let mut def = sh_task(
        image,
        family,
        "if [ -e /d/once ]; then echo second run; exec sleep 600; fi; touch /d/once; exit 3",
    );
    def["networkMode"] = json!("none");
    def["volumes"] = json!([{"name": "d", "host": {"sourcePath": marker_dir}}]);
    def["containerDefinitions"][0]["mountPoints"] =
        json!([{"sourceVolume": "d", "containerPath": "/d"}]);
    def
}

fn replacement_of(a: &Agent, old: &str) -> Option<Value> {
    a.ps().into_iter().find(|t| t["replaces"] == old)
}

#[test]
fn a_service_task_that_stops_for_good_is_replaced_on_the_device() {
    let e = env();
    let scratch = tempfile::tempdir().expect("tempdir");
    let (svc_dir, plain_dir) = (scratch.path().join("svc"), scratch.path().join("plain"));
    std::fs::create_dir_all(&svc_dir).expect("mkdir");
    std::fs::create_dir_all(&plain_dir).expect("mkdir");
    let image = format!("{}/busybox:latest", e.registry);
    let mut a = Agent::new(35, "replace");
    a.start();
    let mut svc = task("svc", fails_once(&image, "web", &svc_dir));
    svc["group"] = json!("service:web");
    let plain = task("plain", fails_once(&image, "batch", &plain_dir));
    a.apply(vec![svc, plain]).expect("apply");

    let old = a.wait_task(&arn("svc"), Duration::from_secs(60), |t| {
        t["lastStatus"] == "STOPPED"
    });
    assert_eq!(old["stopCode"], "EssentialContainerExited", "{old:#}");
    let new_arn = old["replacedBy"]
        .as_str()
        .unwrap_or_else(|| panic!("the service's task names its replacement: {old:#}"))
        .to_string();
    assert!(new_arn.starts_with("arn:aws:ecs:us-east-1:000000000000:task/test/"));
    let new = a.wait_status(&new_arn, "RUNNING");
    assert_eq!(new["replaces"], arn("svc").as_str());
    assert_eq!(new["group"], "service:web");
    assert!(a.logs(&new_arn, "main").contains("second run"));

    // A task of no service is not replaced.
    a.wait_task(&arn("plain"), Duration::from_secs(60), |t| {
        t["lastStatus"] == "STOPPED"
    });
    assert!(replacement_of(&a, &arn("plain")).is_none(), "{:#?}", a.ps());
    assert_eq!(
        a.task(&arn("plain")).expect("plain")["replacedBy"],
        Value::Null
    );

    // The replacement is in the committed desired state: an agent restart keeps it.
    let container = format!("{}-main", new_arn.rsplit('/').next().expect("id"));
    let pid = a.ctr(&["tasks", "ls"]);
    a.stop();
    a.start();
    a.wait_status(&new_arn, "RUNNING");
    assert!(a.containers().contains(&container));
    assert_eq!(a.ctr(&["tasks", "ls"]), pid, "the same process runs on");

    // A document written before the hub heard of it leaves it running...
    a.apply(vec![]).expect("apply without it");
    std::thread::sleep(Duration::from_secs(4));
    let t = a.task(&new_arn).expect("still known");
    assert_eq!(
        (&t["lastStatus"], &t["desiredStatus"]),
        (&json!("RUNNING"), &json!("RUNNING")),
        "{t:#}"
    );
    // ...and one that refuses it stops it.
    let g = a.next_generation();
    a.apply_raw(&json!({"generation": g, "tasks": [], "refused": [new_arn]}).to_string())
        .expect("apply refusing it");
    let t = a.wait_task(&new_arn, Duration::from_secs(30), |t| {
        t["lastStatus"] == "STOPPED"
    });
    assert!(
        t["stoppedReason"]
            .as_str()
            .is_some_and(|r| r.contains("did not take on")),
        "{t:#}"
    );
    a.finish();
}

/// busybox-oci.tar renamed to `name`, so that nothing but the archive can provide it.
fn renamed_archive(src: &Path, name: &str, out: &Path) {
    let work = out.with_extension("d");
    std::fs::create_dir_all(&work).expect("mkdir");
    let ok = Command::new("tar")
        .arg("-xf")
        .arg(src)
        .arg("-C")
        .arg(&work)
        .status()
        .expect("tar");
    assert!(ok.success());
    let index_path = work.join("index.json");
    let mut index: Value =
        serde_json::from_slice(&std::fs::read(&index_path).expect("index.json")).expect("json");
    for m in index["manifests"].as_array_mut().expect("manifests") {
        m["annotations"] = json!({"io.containerd.image.name": name});
    }
    std::fs::write(&index_path, index.to_string()).expect("write index.json");
    let ok = Command::new("tar")
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(&work)
        .arg(".")
        .status()
        .expect("tar");
    assert!(ok.success());
    std::fs::remove_dir_all(&work).expect("rm");
}

#[test]
fn a_first_boot_runs_its_bootstrap_document_from_preloaded_images() {
    let e = env();
    let scratch = tempfile::tempdir().expect("tempdir");
    let images = scratch.path().join("images");
    std::fs::create_dir_all(&images).expect("mkdir");
    // Port 9 on loopback: nothing listens, so a pull would fail at once.
    let image = "127.0.0.1:9/skerry/offline:1";
    renamed_archive(
        &e.images.join("busybox-oci.tar"),
        image,
        &images.join("offline.tar"),
    );
    let mut def = sh_task(image, "boot", "echo booted; exec sleep 600");
    def["networkMode"] = json!("none");
    def["containerDefinitions"][0]["stopTimeout"] = json!(2);
    let boot = arn("boot");
    let bootstrap = json!({"generation": 0, "tasks": [{
        "taskArn": boot, "taskDefinition": def, "desiredStatus": "RUNNING"}]});
    let bootstrap_file = scratch.path().join("bootstrap.json");
    std::fs::write(&bootstrap_file, bootstrap.to_string()).expect("write");
    let watchdog = scratch.path().join("watchdog");
    std::fs::write(&watchdog, "").expect("watchdog");
    let mut a = Agent::with_top(
        36,
        "bootstrap",
        &format!(
            "bootstrap_file = \"{}\"\nwatchdog = \"{}\"",
            bootstrap_file.display(),
            watchdog.display()
        ),
        &format!("[images]\npreload_dir = \"{}\"", images.display()),
    );
    a.start();
    a.wait_status(&boot, "RUNNING");
    assert!(a.logs(&boot, "main").contains("booted"));
    let imported = |a: &Agent| {
        std::fs::read_to_string(&a.log)
            .unwrap_or_default()
            .matches("preloaded images imported")
            .count()
    };
    assert_eq!(imported(&a), 1, "{}", a.log_tail());

    // The watchdog is fed every 5 s while the reconciler answers.
    wait_for("the watchdog fed twice", Duration::from_secs(20), || {
        std::fs::metadata(&watchdog).map_or(0, |m| m.len()) >= 2
    });

    // The first document from elsewhere has not heard of it: it keeps running.
    let mut other = sh_task(image, "other", "echo other; exec sleep 600");
    other["networkMode"] = json!("none");
    let other = task("other", other);
    a.apply(vec![other]).expect("apply");
    a.wait_status(&arn("other"), "RUNNING");
    assert_eq!(a.task(&boot).expect("boot")["lastStatus"], "RUNNING");

    // A restart neither applies the bootstrap document again nor imports again.
    a.stop();
    a.start();
    a.wait_status(&arn("other"), "RUNNING");
    assert_eq!(a.task(&boot).expect("boot")["lastStatus"], "RUNNING");
    assert_eq!(imported(&a), 1, "{}", a.log_tail());

    // Refused, it stops like any other task.
    let g = a.next_generation();
    a.apply_raw(&json!({"generation": g, "tasks": [], "refused": [boot]}).to_string())
        .expect("apply refusing it");
    a.wait_task(&boot, Duration::from_secs(30), |t| {
        t["lastStatus"] == "STOPPED"
    });
    a.finish();
}

#[test]
fn a_bad_bootstrap_document_is_reported_and_the_agent_runs_on() {
    let scratch = tempfile::tempdir().expect("tempdir");
    let bootstrap_file = scratch.path().join("bootstrap.json");
    std::fs::write(&bootstrap_file, r#"{"generation": 3, "tasks": []}"#).expect("write");
    let mut a = Agent::with_top(
        37,
        "badboot",
        &format!("bootstrap_file = \"{}\"", bootstrap_file.display()),
        "",
    );
    a.start();
    wait_for("the error in the log", Duration::from_secs(10), || {
        a.log_tail().contains("must be 0")
    });
    let log = a.log_tail();
    assert!(log.contains("bootstrap.json"), "{log}");
    assert!(a.ps().is_empty());
    a.finish();
}

/// A second `run` with the same config waits out a short grace (what a restart right after
/// a kill -9 may need) and then refuses, naming the daemon that holds the data directory;
/// that one runs on with its control socket untouched, and once it stops the next starts.
#[test]
fn a_second_daemon_on_the_same_data_dir_is_refused() {
    let mut a = Agent::new(39, "twice");
    a.start();
    let first = a.pid();
    let mut second = Command::new(&a.bin)
        .args(["run", "--config"])
        .arg(&a.config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second agent");
    let deadline = Instant::now() + Duration::from_secs(40);
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second agent did not give up on the data directory");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = std::io::read_to_string(second.stderr.take().expect("stderr")).expect("read");
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "data_dir {} is in use by another skerry-agent (pid {first})",
            a.data_dir().display()
        )),
        "{stderr}"
    );
    assert!(a.ps().is_empty(), "the first agent still answers");
    a.stop();
    a.start();
    assert!(a.ps().is_empty());
    a.finish();
}
