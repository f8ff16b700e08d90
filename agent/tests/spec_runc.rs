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
