//! Runs a spec from `spec::build` under the real runc, with a busybox root filesystem, to
//! prove runc accepts it and that user, env, args, capabilities, mounts and /etc files
//! reach the process. Needs root, runc and a static busybox (`busybox-static`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;
use skerry_agent::spec::{build, etc_files, NetNs, SpecInput};
use skerry_proto::taskdef::TaskDefinition;

fn busybox() -> PathBuf {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .expect("this test needs a static busybox at /bin/busybox (package busybox-static)")
}

fn rootfs(dir: &Path) {
    for d in ["bin", "etc", "proc", "sys", "dev", "data", "tmp"] {
        std::fs::create_dir_all(dir.join(d)).expect("create rootfs dir");
    }
    std::fs::copy(busybox(), dir.join("bin/busybox")).expect("copy busybox");
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0::/root:/bin/sh\napp:x:1234:1234::/:/bin/sh\n",
    )
    .expect("write passwd");
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1234:\nextra:x:2000:app\n",
    )
    .expect("write group");
    for f in ["hosts", "resolv.conf", "hostname"] {
        std::fs::write(dir.join("etc").join(f), "").expect("write etc placeholder");
    }
}

#[test]
fn runc_runs_the_built_spec() {
    let td = TaskDefinition::parse(
        &json!({
            "family": "smoke",
            "volumes": [{"name": "data"}],
            "containerDefinitions": [{
                "name": "probe",
                "image": "busybox",
                "memory": 64,
                "cpu": 128,
                "user": "app",
                "hostname": "probe-host",
                "disableNetworking": true,
                "environment": [{"name": "GREETING", "value": "hello"}],
                "entryPoint": ["/bin/busybox", "sh", "-c"],
                "command": [concat!(
                    "echo uid=$(/bin/busybox id -u) gid=$(/bin/busybox id -g) groups=$(/bin/busybox id -G); ",
                    "echo env=$GREETING; ",
                    "echo host=$(/bin/busybox hostname); ",
                    "/bin/busybox grep -q '10.9.8.7' /etc/hosts && echo hosts=ok; ",
                    "/bin/busybox cat /data/in; ",
                    "/bin/busybox grep CapBnd /proc/self/status; ",
                    "/bin/busybox touch /probe 2>/dev/null || echo rootfs=ro; ",
                    "echo shm=$(/bin/busybox df -m /dev/shm | /bin/busybox tail -1 | /bin/busybox awk '{print $2}'); ",
                    // cgroup v1 shows the container's own memory cgroup there, v2 the unified file.
                    "echo mem=$(/bin/busybox cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || /bin/busybox cat /sys/fs/cgroup/memory.max)"
                )],
                "readonlyRootFilesystem": true,
                "extraHosts": [{"hostname": "peer", "ipAddress": "10.9.8.7"}],
                "mountPoints": [{"sourceVolume": "data", "containerPath": "/data", "readOnly": true}],
                "linuxParameters": {
                    "capabilities": {"drop": ["ALL"], "add": ["CHOWN"]},
                    "sharedMemorySize": 16
                }
            }]
        })
        .to_string(),
    )
    .expect("valid task definition");
    let cd = &td.container_definitions[0];

    let work = tempfile::tempdir().expect("temp dir");
    let bundle = work.path().join("bundle");
    rootfs(&bundle.join("rootfs"));
    let data = work.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::write(data.join("in"), "volume=ok\n").expect("write volume file");
    let etc = work.path().join("etc");
    std::fs::create_dir_all(&etc).expect("etc dir");
    let files = etc_files(&td, cd, "nameserver 192.0.2.53\n");
    std::fs::write(etc.join("hosts"), &files.hosts).expect("hosts");
    std::fs::write(etc.join("resolv.conf"), &files.resolv_conf).expect("resolv.conf");
    std::fs::write(etc.join("hostname"), &files.hostname).expect("hostname");

    let image: oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Env": ["PATH=/bin"]}
    }))
    .expect("image config");
    let volumes = HashMap::from([("data".to_string(), data.clone())]);
    let id = format!("skerry-spec-test-{}", std::process::id());
    let passwd = std::fs::read_to_string(bundle.join("rootfs/etc/passwd")).expect("passwd");
    let group = std::fs::read_to_string(bundle.join("rootfs/etc/group")).expect("group");
    let spec = build(&SpecInput {
        task: &td,
        container: cd,
        image: &image,
        netns: NetNs::Host,
        cgroups_path: format!("/{id}"),
        volumes: &volumes,
        etc_dir: Some(etc),
        passwd: Some(&passwd),
        group: Some(&group),
        init: None,
        pids_max: 64,
    })
    .expect("spec builds");
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).expect("serialize spec"),
    )
    .expect("write config.json");

    let root = work.path().join("runc-root");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .output()
        .expect("this test needs runc on PATH");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "runc failed: {stderr}\nstdout: {stdout}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    // CAP_CHOWN alone is bit 0.
    assert_eq!(
        lines,
        [
            "uid=1234 gid=1234 groups=1234 2000",
            "env=hello",
            "host=probe-host",
            "hosts=ok",
            "volume=ok",
            "CapBnd:\t0000000000000001",
            "rootfs=ro",
            "shm=16",
            "mem=67108864",
        ],
        "stderr: {stderr}"
    );
}

/// Runs `script` under runc in one busybox container built by `spec::build` from
/// `container` (a container definition without name, image or command); returns runc's
/// exit status and the script's output.
fn run_script(container: serde_json::Value, script: &str) -> (bool, String, String) {
    let mut cd = container;
    cd["name"] = json!("probe");
    cd["image"] = json!("busybox");
    cd["memory"] = json!(64);
    cd["entryPoint"] = json!(["/bin/busybox", "sh", "-c", script]);
    let td = TaskDefinition::parse(
        &json!({"family": "probe", "containerDefinitions": [cd]}).to_string(),
    )
    .expect("valid task definition");
    let work = tempfile::tempdir().expect("temp dir");
    let bundle = work.path().join("bundle");
    rootfs(&bundle.join("rootfs"));
    let image: oci_spec::image::ImageConfiguration = serde_json::from_value(json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": []},
        "config": {"Env": ["PATH=/bin"]}
    }))
    .expect("image config");
    let id = format!("skerry-spec-probe-{}-{}", std::process::id(), rand_suffix());
    let spec = build(&SpecInput {
        task: &td,
        container: &td.container_definitions[0],
        image: &image,
        netns: NetNs::Host,
        cgroups_path: format!("/{id}"),
        volumes: &HashMap::new(),
        etc_dir: None,
        passwd: None,
        group: None,
        init: None,
        pids_max: 64,
    })
    .expect("spec builds");
    let mut spec = serde_json::to_value(&spec).expect("serialize spec");
    held_capabilities_only(&mut spec["process"]["capabilities"]);
    std::fs::write(
        bundle.join("config.json"),
        serde_json::to_vec_pretty(&spec).expect("serialize spec"),
    )
    .expect("write config.json");
    let root = work.path().join("runc-root");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["run", "--bundle"])
        .arg(&bundle)
        .arg(&id)
        .output()
        .expect("this test needs runc on PATH");
    let _ = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["delete", "--force", &id])
        .output();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Capability names by number, as the kernel numbers them.
const CAP_BY_NUMBER: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// runc cannot grant a capability it does not hold itself: a sandboxed CI runner may lack
/// some (CAP_SYS_RESOURCE, say), which would fail every privileged container. Keeps only
/// those in this process's bounding set.
fn held_capabilities_only(caps: &mut serde_json::Value) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let bounding = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .expect("CapBnd in /proc/self/status");
    let held = |name: &str| {
        CAP_BY_NUMBER
            .iter()
            .position(|c| name.strip_prefix("CAP_") == Some(*c))
            .is_some_and(|bit| bounding & (1 << bit) != 0)
    };
    for set in ["bounding", "effective", "permitted"] {
        if let Some(list) = caps[set].as_array_mut() {
            list.retain(|c| c.as_str().is_some_and(held));
        }
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

/// A user namespace needs no capability, so only the seccomp profile stops `unshare -U`
/// (with EPERM, its default action); the privileged container has no profile and may.
#[test]
fn the_seccomp_profile_denies_namespaces_to_non_privileged_containers() {
    let script = "/bin/busybox grep Seccomp: /proc/self/status; \
                  /bin/busybox unshare -U /bin/busybox true 2>&1 && echo unshare=ok || echo unshare=denied";
    let (ok, out, err) = run_script(json!({}), script);
    assert!(ok, "runc failed: {err}\n{out}");
    assert_eq!(
        out, "Seccomp:\t2\nunshare: unshare(0x10000000): Operation not permitted\nunshare=denied\n",
        "a filter is installed and unshare(CLONE_NEWUSER) fails with EPERM"
    );

    let (ok, out, err) = run_script(json!({"privileged": true}), script);
    assert!(ok, "runc failed: {err}\n{out}");
    assert_eq!(out, "Seccomp:\t0\nunshare=ok\n", "privileged: no filter");

    // Granting CAP_SYS_ADMIN opens the namespace calls, as with Docker.
    let (ok, out, err) = run_script(
        json!({"linuxParameters": {"capabilities": {"add": ["SYS_ADMIN"]}}}),
        script,
    );
    assert!(ok, "runc failed: {err}\n{out}");
    assert_eq!(out, "Seccomp:\t2\nunshare=ok\n");
}
