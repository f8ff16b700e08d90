//! The agent running ECS task definitions on real containerd, runc, CNI plugins and the
//! loopback registry: one test per field group.

mod harness;

use std::time::Duration;

use harness::{container, free_port, http_get, sh_task, task, Agent};
use serde_json::json;

fn busybox(a: &Agent) -> String {
    format!("{}/busybox:latest", a.registry)
}

#[test]
fn nginx_example_from_the_ecs_anywhere_announcement_runs() {
    let mut a = Agent::new(1, "nginx");
    a.start();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../proto/tests/fixtures/nginx-anywhere.json"
    ))
    .expect("fixture");
    let mut def: serde_json::Value = serde_json::from_str(&text).expect("fixture is JSON");
    // The same definition, with the image from the loopback registry (an httpd image
    // standing in for nginx) and a host port no other test uses.
    def["containerDefinitions"][0]["image"] = json!(format!("{}/nginx:latest", a.registry));
    let port = free_port();
    def["containerDefinitions"][0]["portMappings"][0]["hostPort"] = json!(port);
    a.apply(vec![task("nginx", def)]).expect("apply");
    let t = a.wait_status(&harness::arn("nginx"), "RUNNING");
    let c = &t["containers"][0];
    assert_eq!(c["lastStatus"], "RUNNING");
    assert_eq!(c["networkBindings"][0]["hostPort"], port);
    assert_eq!(c["networkBindings"][0]["containerPort"], 80);
    let body = http_get(port);
    assert!(body.contains("hello from skerry"), "{body}");
    a.finish();
}

#[test]
fn network_modes_bridge_host_and_none() {
    let mut a = Agent::new(2, "netmodes");
    a.start();
    let image = busybox(&a);
    let host_port = free_port();
    let httpd = |port: u16| {
        vec![
            "httpd".to_string(),
            "-f".into(),
            "-p".into(),
            port.to_string(),
            "-h".into(),
            "/var/www".into(),
        ]
    };
    let bridge = json!({
        "family": "bridge", "networkMode": "bridge", "memory": "64",
        "containerDefinitions": [{"name": "web", "image": image, "command": httpd(80),
            "portMappings": [{"containerPort": 80, "hostPort": 0}]}]
    });
    let host = json!({
        "family": "host", "networkMode": "host", "memory": "64",
        "containerDefinitions": [{"name": "web", "image": image, "command": httpd(host_port),
            "portMappings": [{"containerPort": host_port, "hostPort": host_port}]}]
    });
    let none = json!({
        "family": "none", "networkMode": "none", "memory": "64",
        "containerDefinitions": [{"name": "main", "image": image,
            "command": ["sh", "-c", "ls /sys/class/net; echo done; sleep 600"]}]
    });
    a.apply(vec![
        task("bridge", bridge),
        task("host", host),
        task("none", none),
    ])
    .expect("apply");
    let t = a.wait_status(&harness::arn("bridge"), "RUNNING");
    let picked = t["containers"][0]["networkBindings"][0]["hostPort"]
        .as_u64()
        .expect("a host port was picked and reported");
    assert_ne!(picked, 0);
    assert!(http_get(picked as u16).contains("hello from skerry"));

    a.wait_status(&harness::arn("host"), "RUNNING");
    assert!(http_get(host_port).contains("hello from skerry"));

    a.wait_status(&harness::arn("none"), "RUNNING");
    harness::wait_for("none-mode output", Duration::from_secs(20), || {
        a.logs(&harness::arn("none"), "main").contains("done")
    });
    let out = a.logs(&harness::arn("none"), "main");
    let ifaces: Vec<&str> = out.lines().filter(|l| *l != "done").collect();
    assert_eq!(
        ifaces,
        vec!["lo"],
        "none mode must have only loopback: {out}"
    );
    a.finish();
}

#[test]
fn depends_on_orders_starts_and_an_essential_exit_stops_the_task() {
    let mut a = Agent::new(3, "depends");
    a.start();
    let image = busybox(&a);
    let def = json!({
        "family": "deps", "memory": "128",
        "containerDefinitions": [
            {"name": "app", "image": image, "essential": true,
             "command": ["sh", "-c", "cat /shared/init-ran && sleep 600"],
             "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared"}],
             "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}]},
            {"name": "init", "image": image, "essential": false,
             "command": ["sh", "-c", "echo yes > /shared/init-ran"],
             "mountPoints": [{"sourceVolume": "shared", "containerPath": "/shared"}]},
            {"name": "sidecar", "image": image, "essential": false,
             "command": ["sleep", "600"],
             "dependsOn": [{"containerName": "app", "condition": "START"}]}
        ],
        "volumes": [{"name": "shared"}]
    });
    let failing = sh_task(&image, "failing", "echo bye; exit 3");
    a.apply(vec![task("deps", def), task("failing", failing)])
        .expect("apply");

    let t = a.wait_task(&harness::arn("deps"), Duration::from_secs(90), |t| {
        t["lastStatus"] == "RUNNING" && container(t, "sidecar")["lastStatus"] == "RUNNING"
    });
    assert_eq!(container(&t, "init")["exitCode"], 0);
    assert_eq!(container(&t, "init")["lastStatus"], "STOPPED");
    assert_eq!(container(&t, "app")["lastStatus"], "RUNNING");
    assert!(a.logs(&harness::arn("deps"), "app").contains("yes"));

    let f = a.wait_status(&harness::arn("failing"), "STOPPED");
    assert_eq!(f["stopCode"], "EssentialContainerExited");
    assert!(
        f["stoppedReason"]
            .as_str()
            .unwrap_or("")
            .contains("Essential container in task exited"),
        "{f:#}"
    );
    assert_eq!(container(&f, "main")["exitCode"], 3);
    assert!(a.logs(&harness::arn("failing"), "main").contains("bye"));
    a.finish();
}

#[test]
fn health_checks_gate_healthy_dependencies_and_report_unhealthy() {
    let mut a = Agent::new(4, "health");
    a.start();
    let image = busybox(&a);
    let def = json!({
        "family": "health", "memory": "128",
        "containerDefinitions": [
            {"name": "db", "image": image, "essential": true,
             "command": ["sh", "-c", "sleep 3; touch /tmp/ready; sleep 600"],
             "healthCheck": {"command": ["CMD-SHELL", "test -f /tmp/ready"],
                             "interval": 5, "timeout": 2, "retries": 3, "startPeriod": 10}},
            {"name": "web", "image": image, "essential": true,
             "command": ["sleep", "600"],
             "dependsOn": [{"containerName": "db", "condition": "HEALTHY"}]}
        ]
    });
    let sick = json!({
        "family": "sick", "memory": "64",
        "containerDefinitions": [
            {"name": "main", "image": image, "essential": true, "command": ["sleep", "600"],
             "healthCheck": {"command": ["CMD", "false"], "interval": 5, "timeout": 2, "retries": 1}}
        ]
    });
    a.apply(vec![task("health", def), task("sick", sick)])
        .expect("apply");
    let t = a.wait_task(&harness::arn("health"), Duration::from_secs(90), |t| {
        t["lastStatus"] == "RUNNING"
    });
    assert_eq!(container(&t, "db")["healthStatus"], "HEALTHY");
    assert_eq!(container(&t, "web")["lastStatus"], "RUNNING");
    let s = a.wait_task(&harness::arn("sick"), Duration::from_secs(60), |t| {
        t["healthStatus"] == "UNHEALTHY"
    });
    assert_eq!(container(&s, "main")["healthStatus"], "UNHEALTHY");
    a.finish();
}

#[test]
fn stop_sends_sigterm_then_sigkill_after_stop_timeout() {
    let mut a = Agent::new(5, "stop");
    a.start();
    let image = busybox(&a);
    let stubborn = json!({
        "family": "stubborn", "memory": "64",
        "containerDefinitions": [{"name": "main", "image": image, "stopTimeout": 2,
            "command": ["sh", "-c", "trap '' TERM; echo ready; while true; do sleep 1; done"]}]
    });
    let polite = sh_task(
        &image,
        "polite",
        "trap 'exit 0' TERM; echo ready; while true; do sleep 1; done",
    );
    a.apply(vec![
        task("stubborn", stubborn.clone()),
        task("polite", polite.clone()),
    ])
    .expect("apply");
    a.wait_status(&harness::arn("stubborn"), "RUNNING");
    a.wait_status(&harness::arn("polite"), "RUNNING");
    harness::wait_for("trap installed", Duration::from_secs(20), || {
        a.logs(&harness::arn("stubborn"), "main").contains("ready")
            && a.logs(&harness::arn("polite"), "main").contains("ready")
    });
    a.apply(vec![
        harness::stopped("stubborn", stubborn),
        harness::stopped("polite", polite),
    ])
    .expect("apply stop");
    let s = a.wait_status(&harness::arn("stubborn"), "STOPPED");
    assert_eq!(container(&s, "main")["exitCode"], 137, "{s:#}");
    assert_eq!(s["stopCode"], "UserInitiated");
    let p = a.wait_status(&harness::arn("polite"), "STOPPED");
    assert_eq!(container(&p, "main")["exitCode"], 0, "{p:#}");
    a.finish();
}

#[test]
fn restart_policy_restarts_after_the_attempt_period_and_honours_ignored_codes() {
    let mut a = Agent::new(6, "restart");
    a.start();
    let image = busybox(&a);
    // ECS's minimum restartAttemptPeriod is 60 s: the container must run that long.
    let def = |code: i32| {
        json!({
            "family": "restart", "memory": "64",
            "containerDefinitions": [{"name": "main", "image": image,
                "command": ["sh", "-c", format!("echo started; sleep 61; exit {code}")],
                "restartPolicy": {"enabled": true, "ignoredExitCodes": [7], "restartAttemptPeriod": 60}}]
        })
    };
    a.apply(vec![task("again", def(1)), task("ignored", def(7))])
        .expect("apply");
    harness::wait_for("a restart", Duration::from_secs(150), || {
        a.logs(&harness::arn("again"), "main")
            .matches("started")
            .count()
            >= 2
    });
    let t = a.wait_status(&harness::arn("again"), "RUNNING");
    assert_eq!(container(&t, "main")["lastStatus"], "RUNNING");
    let i = a.wait_status(&harness::arn("ignored"), "STOPPED");
    assert_eq!(container(&i, "main")["exitCode"], 7);
    assert_eq!(
        a.logs(&harness::arn("ignored"), "main")
            .matches("started")
            .count(),
        1
    );
    a.finish();
}

#[test]
fn container_settings_reach_the_process() {
    let mut a = Agent::new(7, "settings");
    a.start();
    let image = busybox(&a);
    let host_dir = a.dir.path().join("hostvol");
    let script = [
        "echo user=$(id -u):$(id -g)",
        "echo cwd=$(pwd)",
        "echo env=$GREETING",
        "echo hostname=$(hostname)",
        "grep -q '10.1.2.3 extra.example' /etc/hosts && echo extrahost=yes",
        "grep -q 'nameserver 192.0.2.53' /etc/resolv.conf && echo dns=yes",
        "touch /rootfile 2>/dev/null || echo rootfs=readonly",
        "echo data > /vol/out.txt && echo vol=yes",
        "grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs=yes",
        "grep ' /dev/shm ' /proc/mounts | grep -q size=32768k && echo shm=yes",
        "echo nofile=$(ulimit -n)",
        "echo pid1=$(tr '\\0' ' ' < /proc/1/cmdline)",
        "grep CapEff /proc/self/status",
        "echo finished; sleep 600",
    ]
    .join("; ");
    let def = json!({
        "family": "settings", "memory": "128",
        "volumes": [{"name": "vol", "host": {"sourcePath": host_dir}}],
        "containerDefinitions": [{
            "name": "main", "image": image,
            "entryPoint": ["sh", "-c"], "command": [script],
            "user": "65534:65534", "workingDirectory": "/tmp",
            "environment": [{"name": "GREETING", "value": "hi"}],
            "hostname": "edgebox",
            "extraHosts": [{"hostname": "extra.example", "ipAddress": "10.1.2.3"}],
            "dnsServers": ["192.0.2.53"],
            "readonlyRootFilesystem": true,
            "mountPoints": [{"sourceVolume": "vol", "containerPath": "/vol"}],
            "memory": 96, "memoryReservation": 32, "cpu": 512,
            "ulimits": [{"name": "nofile", "softLimit": 2048, "hardLimit": 4096}],
            "linuxParameters": {
                "initProcessEnabled": true,
                "capabilities": {"drop": ["ALL"]},
                "tmpfs": [{"containerPath": "/scratch", "size": 16}],
                "sharedMemorySize": 32
            },
            "dockerLabels": {"com.example.team": "edge"}
        }]
    });
    std::fs::create_dir_all(&host_dir).expect("host dir");
    std::fs::set_permissions(
        &host_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    a.apply(vec![task("settings", def)]).expect("apply");
    a.wait_status(&harness::arn("settings"), "RUNNING");
    harness::wait_for("the script", Duration::from_secs(30), || {
        a.logs(&harness::arn("settings"), "main")
            .contains("finished")
    });
    let out = a.logs(&harness::arn("settings"), "main");
    for want in [
        "user=65534:65534",
        "cwd=/tmp",
        "env=hi",
        "hostname=edgebox",
        "extrahost=yes",
        "dns=yes",
        "rootfs=readonly",
        "vol=yes",
        "tmpfs=yes",
        "shm=yes",
        "nofile=2048",
        "pid1=/.skerry/init",
        "CapEff:\t0000000000000000",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert_eq!(
        std::fs::read_to_string(host_dir.join("out.txt")).expect("file written through the volume"),
        "data\n"
    );
    let labels = a.ctr(&["containers", "info", &format!("{}-main", "settings")]);
    assert!(labels.contains("com.example.team"), "{labels}");
    // cgroup v1 memory controller here: the hard and soft limits from the definition.
    let cg = format!("/sys/fs/cgroup/memory/skerry/{}/settings/main", a.ns);
    if std::path::Path::new(&cg).exists() {
        let limit = std::fs::read_to_string(format!("{cg}/memory.limit_in_bytes")).expect("limit");
        assert_eq!(limit.trim(), (96u64 << 20).to_string());
        let soft =
            std::fs::read_to_string(format!("{cg}/memory.soft_limit_in_bytes")).expect("soft");
        assert_eq!(soft.trim(), (32u64 << 20).to_string());
        // The task's own limit (task memory "128") holds all its containers.
        let task_limit = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/memory/skerry/{}/settings/memory.limit_in_bytes",
            a.ns
        ))
        .expect("task cgroup");
        assert_eq!(task_limit.trim(), (128u64 << 20).to_string());
        let shares = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/cpu/skerry/{}/settings/main/cpu.shares",
            a.ns
        ))
        .expect("shares");
        assert_eq!(shares.trim(), "512");
    } else {
        let max = std::fs::read_to_string(format!(
            "/sys/fs/cgroup/skerry/{}/settings/main/memory.max",
            a.ns
        ))
        .expect("cgroup v2 memory.max");
        assert_eq!(max.trim(), (96u64 << 20).to_string());
    }
    let ns = a.ns.clone();
    a.finish();
    assert!(
        !std::path::Path::new(&format!("/sys/fs/cgroup/memory/skerry/{ns}/settings")).exists(),
        "the task's cgroup is removed with the task"
    );
}

#[test]
fn bad_input_is_refused_or_stops_only_its_own_task() {
    let mut a = Agent::new(8, "badinput");
    a.start();
    let image = busybox(&a);
    let good = sh_task(&image, "good", "sleep 600");
    a.apply(vec![task("good", good.clone())]).expect("apply");
    let before = a.wait_status(&harness::arn("good"), "RUNNING");

    // Refused before anything runs: malformed JSON, an unsupported field.
    let err = a
        .apply_raw("{\"generation\": 99, \"tasks\": [")
        .expect_err("malformed");
    assert!(err.contains("line") || err.contains("EOF"), "{err}");
    let mut unsupported = good.clone();
    unsupported["containerDefinitions"][0]["logConfiguration"] = json!({"logDriver": "awslogs"});
    let err = a
        .apply(vec![task("good", good.clone()), task("aws", unsupported)])
        .expect_err("unsupported");
    assert!(err.contains("logConfiguration"), "{err}");
    assert!(err.contains("not supported"), "{err}");

    // Accepted, then stopped with a reason: an unknown image, a taken port.
    let missing = sh_task(
        &format!("{}/no-such-image:1", a.registry),
        "missing",
        "true",
    );
    let taken = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
    let port = taken.local_addr().expect("addr").port();
    let mut clash = sh_task(&image, "clash", "sleep 600");
    clash["containerDefinitions"][0]["portMappings"] =
        json!([{"containerPort": 80, "hostPort": port}]);
    a.apply(vec![
        task("good", good),
        task("missing", missing),
        task("clash", clash),
    ])
    .expect("apply");
    let m = a.wait_status(&harness::arn("missing"), "STOPPED");
    let reason = m["stoppedReason"].as_str().unwrap_or("");
    assert!(
        reason.contains("CannotPullContainerError") && reason.contains("no-such-image"),
        "{reason}"
    );
    let c = a.wait_status(&harness::arn("clash"), "STOPPED");
    let reason = c["stoppedReason"].as_str().unwrap_or("");
    assert!(
        reason.contains(&port.to_string()) && reason.contains("in use"),
        "{reason}"
    );

    // The good task was not disturbed.
    let after = a.task(&harness::arn("good")).expect("good task");
    assert_eq!(after["lastStatus"], "RUNNING");
    assert_eq!(after["startedAt"], before["startedAt"]);
    drop(taken);
    a.finish();
}

#[test]
fn logs_command_prints_and_tails_container_output() {
    let mut a = Agent::new(9, "logs");
    a.start();
    let image = busybox(&a);
    let def = sh_task(
        &image,
        "logs",
        "for i in $(seq 1 500); do echo line-$i; done; sleep 1; echo oops >&2; sleep 600",
    );
    a.apply(vec![task("logs", def)]).expect("apply");
    a.wait_status(&harness::arn("logs"), "RUNNING");
    harness::wait_for("output", Duration::from_secs(20), || {
        a.logs(&harness::arn("logs"), "main").contains("oops")
    });
    let all = a.logs(&harness::arn("logs"), "main");
    assert!(
        all.contains("line-1\n") && all.contains("line-500\n"),
        "{all}"
    );
    // By task id too, and --tail.
    let (ok, tail, err) = {
        let out = std::process::Command::new(&a.bin)
            .args(["logs", "--config"])
            .arg(&a.config)
            .args(["--tail", "2", "logs", "main"])
            .output()
            .expect("logs --tail");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{err}");
    assert_eq!(tail.lines().collect::<Vec<_>>(), vec!["line-500", "oops"]);
    let err = std::process::Command::new(&a.bin)
        .args(["logs", "--config"])
        .arg(&a.config)
        .args(["logs", "nope"])
        .output()
        .expect("logs");
    assert!(!err.status.success());
    assert!(String::from_utf8_lossy(&err.stderr).contains("no container \"nope\""));
    a.finish();
}

#[test]
fn apply_wait_returns_once_tasks_settle_and_fails_for_a_task_that_stopped() {
    let mut a = Agent::new(10, "wait");
    a.start();
    let image = busybox(&a);
    let (first, second) = (a.next_generation(), a.next_generation());
    let run_wait = |doc: serde_json::Value| {
        let mut child = std::process::Command::new(&a.bin)
            .args(["apply", "--wait", "--timeout", "120", "--config"])
            .arg(&a.config)
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("apply --wait");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(doc.to_string().as_bytes())
            .expect("write");
        child.wait_with_output().expect("output")
    };
    let good = task("good", sh_task(&image, "good", "sleep 600"));
    let out = run_wait(json!({"generation": first, "tasks": [good.clone()]}));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It returned only once the task was RUNNING.
    assert_eq!(
        a.task(&harness::arn("good")).expect("task")["lastStatus"],
        "RUNNING"
    );

    // A task that never gets to RUNNING fails the wait, with its reason.
    let missing = format!("{}/no-such-image:1", a.registry);
    let bad = task("bad", sh_task(&missing, "bad", "true"));
    let out = run_wait(json!({"generation": second, "tasks": [good, bad]}));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("task/test/bad") && err.contains("CannotPullContainerError"),
        "{err}"
    );
    a.finish();
}
