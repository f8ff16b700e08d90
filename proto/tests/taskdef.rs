//! Task definition parsing and validation, through the public API.
#![recursion_limit = "256"]

use serde_json::{json, Value};
use skerry_proto::taskdef::{
    capability_name, DependencyCondition, NetworkMode, Protocol, TaskDefinition, VolumeKind,
};

fn fixture(name: &str) -> String {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(&path).expect("fixture is checked in")
}

/// A valid two-container task to break one field at a time.
fn base() -> Value {
    json!({
        "family": "web",
        "networkMode": "bridge",
        "requiresCompatibilities": ["EXTERNAL"],
        "memory": "512",
        "cpu": "1 vCPU",
        "volumes": [
            {"name": "data", "host": {"sourcePath": "/srv/data"}},
            {"name": "scratch"}
        ],
        "containerDefinitions": [
            {
                "name": "app",
                "image": "registry.example/app:1",
                "memory": 128,
                "portMappings": [{"containerPort": 80, "hostPort": 8080}],
                "healthCheck": {"command": ["CMD-SHELL", "true"]}
            },
            {
                "name": "sidecar",
                "image": "registry.example/sidecar:1",
                "essential": false,
                "memoryReservation": 64
            }
        ]
    })
}

fn parse(v: &Value) -> Result<TaskDefinition, skerry_proto::taskdef::TaskDefError> {
    TaskDefinition::parse(&v.to_string())
}

#[track_caller]
fn reject(v: Value, path: &str, msg_part: &str) {
    match parse(&v) {
        Ok(_) => panic!("expected an error at {path}, got Ok"),
        Err(e) => {
            assert_eq!(e.path, path, "wrong path; error was: {e}");
            assert!(
                e.message.contains(msg_part),
                "message {:?} lacks {msg_part:?}",
                e.message
            );
            assert_eq!(e.to_string(), format!("{path}: {}", e.message));
        }
    }
}

/// Sets `ptr` (a JSON pointer) in a copy of `base()`.
fn with(ptr: &str, value: Value) -> Value {
    let mut v = base();
    set(&mut v, ptr, value);
    v
}

fn set(v: &mut Value, ptr: &str, value: Value) {
    let (parent, key) = ptr.rsplit_once('/').expect("pointer has a parent");
    let p = v.pointer_mut(parent).expect("parent exists in base()");
    match p {
        Value::Object(o) => {
            o.insert(key.to_string(), value);
        }
        Value::Array(a) => {
            let i: usize = key.parse().expect("array index");
            if i == a.len() {
                a.push(value);
            } else {
                a[i] = value;
            }
        }
        _ => panic!("parent of {ptr} is not a container"),
    }
}

const C0: &str = "/containerDefinitions/0";
const C1: &str = "/containerDefinitions/1";

#[test]
fn nginx_anywhere_fixture_validates() {
    let td = TaskDefinition::parse(&fixture("nginx-anywhere.json")).expect("valid");
    assert_eq!(td.family, "nginx");
    assert_eq!(td.network_mode(), NetworkMode::Bridge);
    let c = td.container("nginx").expect("nginx container");
    assert_eq!(c.image, "public.ecr.aws/nginx/nginx:latest");
    assert!(c.is_essential());
    let pm = &c.port_mappings.as_ref().expect("ports")[0];
    assert_eq!(pm.container_port(), 80);
    assert_eq!(pm.fixed_host_port(), Some(8080));
    assert_eq!(pm.protocol(), Protocol::Tcp);
}

#[test]
fn base_is_valid() {
    let td = parse(&base()).expect("valid");
    assert_eq!(td.cpu_units(), Some(1024));
    assert_eq!(td.memory_mib(), Some(512));
    assert_eq!(
        td.volume("data").expect("data").kind(),
        VolumeKind::Host("/srv/data")
    );
    assert_eq!(
        td.volume("scratch").expect("scratch").kind(),
        VolumeKind::Task
    );
}

#[test]
fn every_field_group_parses() {
    let v = json!({
        "family": "full",
        "taskRoleArn": "",
        "networkMode": "bridge",
        "requiresCompatibilities": ["EXTERNAL", "EC2"],
        "cpu": 512,
        "memory": "1 gb",
        "pidMode": "none",
        "ipcMode": "none",
        "runtimePlatform": {"operatingSystemFamily": "LINUX", "cpuArchitecture": "ARM64"},
        "tags": [{"key": "team", "value": "edge"}],
        "placementConstraints": [],
        "volumes": [
            {"name": "data", "host": {"sourcePath": "/srv/data"}},
            {"name": "empty", "host": {}},
            {"name": "cache", "dockerVolumeConfiguration": {"scope": "task", "driver": "local", "labels": {"a": "b"}}}
        ],
        "containerDefinitions": [{
            "name": "main_1",
            "image": "busybox:1.36",
            "command": ["sleep", "infinity"],
            "entryPoint": ["/bin/sh", "-c"],
            "environment": [{"name": "A", "value": "1"}, {"name": "EMPTY"}],
            "essential": true,
            "cpu": 256,
            "memory": 256,
            "memoryReservation": 128,
            "portMappings": [
                {"containerPort": 53, "hostPort": 5353, "protocol": "udp", "name": "dns"},
                {"containerPort": 53, "hostPort": 5353, "protocol": "tcp"},
                {"containerPort": 9000}
            ],
            "mountPoints": [
                {"sourceVolume": "data", "containerPath": "/data", "readOnly": true},
                {"sourceVolume": "cache", "containerPath": "/cache"}
            ],
            "volumesFrom": [],
            "workingDirectory": "/srv/app",
            "user": "nobody:nogroup",
            "readonlyRootFilesystem": true,
            "privileged": false,
            "linuxParameters": {
                "initProcessEnabled": true,
                "capabilities": {"add": ["NET_ADMIN", "cap_sys_time"], "drop": ["ALL"]},
                "tmpfs": [{"containerPath": "/run", "size": 64, "mountOptions": ["noexec", "mode=1777"]}],
                "sharedMemorySize": 128,
                "devices": [{"hostPath": "/dev/null", "containerPath": "/dev/mynull", "permissions": ["read", "write"]}]
            },
            "ulimits": [{"name": "nofile", "softLimit": 4096, "hardLimit": 8192}],
            "healthCheck": {"command": ["CMD", "true"], "interval": 10, "timeout": 2, "retries": 5, "startPeriod": 30},
            "dependsOn": [{"containerName": "init", "condition": "SUCCESS"}, {"containerName": "db", "condition": "HEALTHY"}],
            "startTimeout": 60,
            "stopTimeout": 10,
            "restartPolicy": {"enabled": true, "ignoredExitCodes": [0], "restartAttemptPeriod": 60},
            "dockerLabels": {"com.example": "x"},
            "hostname": "main",
            "extraHosts": [{"hostname": "db.local", "ipAddress": "10.0.0.2"}],
            "dnsServers": ["1.1.1.1", "2606:4700:4700::1111"],
            "dnsSearchDomains": ["example.com"],
            "disableNetworking": false,
            "interactive": false,
            "pseudoTerminal": false,
            "versionConsistency": "disabled",
            "systemControls": []
        }, {
            "name": "init", "image": "busybox", "essential": false, "memory": 16
        }, {
            "name": "db", "image": "postgres", "essential": false, "memory": 256,
            "healthCheck": {"command": ["CMD-SHELL", "pg_isready"]}
        }]
    });
    let td = parse(&v).expect("valid");
    assert_eq!(td.cpu_units(), Some(512));
    assert_eq!(td.memory_mib(), Some(1024));
    assert_eq!(td.volume("empty").expect("empty").kind(), VolumeKind::Task);
    assert_eq!(td.volume("cache").expect("cache").kind(), VolumeKind::Task);
    let c = &td.container_definitions[0];
    assert!(c.init_process_enabled());
    assert!(c.is_readonly_root());
    assert_eq!(c.stop_timeout_secs(), 10);
    assert_eq!(c.env().collect::<Vec<_>>(), vec![("A", "1"), ("EMPTY", "")]);
    let hc = c.health_check.as_ref().expect("health check");
    assert_eq!(
        (
            hc.interval_secs(),
            hc.timeout_secs(),
            hc.retries(),
            hc.start_period_secs()
        ),
        (10, 2, 5, 30)
    );
    assert_eq!(hc.argv(), vec!["true".to_string()]);
    let deps = c.depends_on.as_ref().expect("deps");
    assert_eq!(deps[1].condition, DependencyCondition::Healthy);
    let lp = c.linux_parameters.as_ref().expect("linux");
    assert_eq!(lp.devices.as_ref().expect("devices")[0].access(), "rw");
    assert_eq!(
        lp.devices.as_ref().expect("devices")[0].container_path(),
        "/dev/mynull"
    );
    assert_eq!(
        c.restart_policy
            .as_ref()
            .expect("restart")
            .restart_attempt_period_secs(),
        60
    );
    // And it serializes back to what came in.
    let back = serde_json::to_value(&td).expect("serializes");
    assert_eq!(
        back["containerDefinitions"][0],
        v["containerDefinitions"][0]
    );
    assert_eq!(back["cpu"], json!("512"));
}

#[test]
fn defaults_apply_when_fields_are_absent() {
    let td = parse(&base()).expect("valid");
    let c = &td.container_definitions[0];
    assert!(c.is_essential());
    assert_eq!(c.stop_timeout_secs(), 30);
    assert!(!c.is_privileged());
    assert!(!c.init_process_enabled());
    let hc = c.health_check.as_ref().expect("health check");
    assert_eq!(
        (
            hc.interval_secs(),
            hc.timeout_secs(),
            hc.retries(),
            hc.start_period_secs()
        ),
        (30, 5, 3, 0)
    );
    assert_eq!(hc.argv(), vec!["/bin/sh", "-c", "true"]);
    let mut v = base();
    v.as_object_mut().expect("object").remove("networkMode");
    assert_eq!(
        parse(&v).expect("valid").network_mode(),
        NetworkMode::Bridge
    );
}

#[test]
fn cpu_and_memory_strings_in_ecs_forms() {
    for (cpu, units) in [
        (json!("256"), 256),
        (json!("1 vCPU"), 1024),
        (json!("0.5 vcpu"), 512),
        (json!("2vCPU"), 2048),
        (json!(1024), 1024),
    ] {
        let td = parse(&with("/cpu", cpu.clone())).expect("valid cpu");
        assert_eq!(td.cpu_units(), Some(units), "cpu {cpu}");
    }
    for (mem, mib) in [
        (json!("512"), 512),
        (json!("1GB"), 1024),
        (json!("1 gb"), 1024),
        (json!("0.5 GB"), 512),
        (json!(2048), 2048),
    ] {
        let td = parse(&with("/memory", mem.clone())).expect("valid memory");
        assert_eq!(td.memory_mib(), Some(mib), "memory {mem}");
    }
}

#[test]
fn describe_output_round_trips() {
    let mut v = base();
    let o = v.as_object_mut().expect("object");
    o.insert(
        "taskDefinitionArn".into(),
        json!("arn:aws:ecs:eu-west-1:123456789012:task-definition/web:3"),
    );
    o.insert("revision".into(), json!(3));
    o.insert("status".into(), json!("ACTIVE"));
    o.insert("compatibilities".into(), json!(["EC2", "EXTERNAL"]));
    o.insert(
        "requiresAttributes".into(),
        json!([{"name": "com.amazonaws.ecs.capability.docker-remote-api.1.18"}]),
    );
    o.insert("registeredAt".into(), json!(1700000000.123));
    o.insert("deregisteredAt".into(), json!(1700000100.5));
    o.insert(
        "registeredBy".into(),
        json!("arn:aws:iam::123456789012:root"),
    );
    o.insert("placementConstraints".into(), json!([]));
    let td = parse(&v).expect("valid");
    assert_eq!(td.revision, Some(3));
    let back = serde_json::to_value(&td).expect("serializes");
    for key in [
        "taskDefinitionArn",
        "revision",
        "status",
        "compatibilities",
        "requiresAttributes",
        "registeredAt",
        "deregisteredAt",
        "registeredBy",
    ] {
        assert_eq!(back[key], v[key], "{key}");
    }
    let again: TaskDefinition = serde_json::from_value(back).expect("parses again");
    assert_eq!(again, td);
}

#[test]
fn capability_names_accept_ecs_and_cap_prefixed_forms() {
    assert_eq!(capability_name("NET_ADMIN"), Some("NET_ADMIN"));
    assert_eq!(capability_name("CAP_NET_ADMIN"), Some("NET_ADMIN"));
    assert_eq!(capability_name("sys_time"), Some("SYS_TIME"));
    assert_eq!(capability_name("ALL"), Some("ALL"));
    assert_eq!(capability_name("NET_ADMINS"), None);
}

// ---- rejections: task level ----

#[test]
fn rejects_bad_family() {
    reject(with("/family", json!("my family")), "family", "letters");
}

#[test]
fn rejects_iam_roles() {
    reject(
        with("/taskRoleArn", json!("arn:aws:iam::1:role/x")),
        "taskRoleArn",
        "IAM",
    );
    reject(
        with("/executionRoleArn", json!("arn:aws:iam::1:role/x")),
        "executionRoleArn",
        "IAM",
    );
}

#[test]
fn rejects_network_modes() {
    reject(
        with("/networkMode", json!("awsvpc")),
        "networkMode",
        "not supported by Skerry",
    );
    reject(
        with("/networkMode", json!("overlay")),
        "networkMode",
        "unknown variant",
    );
}

#[test]
fn rejects_compatibilities() {
    reject(
        with("/requiresCompatibilities", json!(["EXTERNAL", "FARGATE"])),
        "requiresCompatibilities[1]",
        "FARGATE is not supported",
    );
    reject(
        with("/requiresCompatibilities", json!(["MOON"])),
        "requiresCompatibilities[0]",
        "unknown compatibility",
    );
}

#[test]
fn rejects_unreadable_sizes() {
    reject(with("/cpu", json!("lots")), "cpu", "cannot read");
    reject(with("/cpu", json!("0")), "cpu", "out of range");
    reject(with("/cpu", json!("64")), "cpu", "out of range");
    reject(with("/cpu", json!("200 vCPU")), "cpu", "out of range");
    reject(with("/memory", json!("1 TB")), "memory", "cannot read");
    reject(with("/memory", json!(true)), "memory", "invalid type");
}

#[test]
fn rejects_namespace_sharing_modes() {
    reject(
        with("/pidMode", json!("host")),
        "pidMode",
        "not supported by Skerry",
    );
    reject(
        with("/ipcMode", json!("task")),
        "ipcMode",
        "not supported by Skerry",
    );
}

#[test]
fn rejects_foreign_runtime_platform() {
    reject(
        with(
            "/runtimePlatform",
            json!({"operatingSystemFamily": "WINDOWS_SERVER_2022_CORE"}),
        ),
        "runtimePlatform.operatingSystemFamily",
        "not supported by Skerry",
    );
    reject(
        with("/runtimePlatform", json!({"cpuArchitecture": "RISCV"})),
        "runtimePlatform.cpuArchitecture",
        "ARM64",
    );
}

#[test]
fn rejects_task_level_aws_features() {
    reject(
        with(
            "/placementConstraints",
            json!([{"type": "memberOf", "expression": "x"}]),
        ),
        "placementConstraints",
        "not supported by Skerry",
    );
    reject(
        with("/proxyConfiguration", json!({"containerName": "envoy"})),
        "proxyConfiguration",
        "not supported by Skerry",
    );
    reject(
        with(
            "/inferenceAccelerators",
            json!([{"deviceName": "a", "deviceType": "eia2.medium"}]),
        ),
        "inferenceAccelerators",
        "not supported by Skerry",
    );
    reject(
        with("/ephemeralStorage", json!({"sizeInGiB": 30})),
        "ephemeralStorage",
        "not supported by Skerry",
    );
    reject(
        with("/enableFaultInjection", json!(true)),
        "enableFaultInjection",
        "not supported by Skerry",
    );
}

#[test]
fn rejects_unknown_fields_with_their_path() {
    reject(with("/colour", json!("blue")), "colour", "unknown field");
    reject(
        with(&format!("{C1}/linuxParameters"), json!({"sysctls": {}})),
        "containerDefinitions[1].linuxParameters.sysctls",
        "unknown field",
    );
}

#[test]
fn rejects_wrong_types_with_their_path() {
    reject(
        with(&format!("{C0}/portMappings/0/protocol"), json!("sctp")),
        "containerDefinitions[0].portMappings[0].protocol",
        "unknown variant",
    );
    reject(
        with(&format!("{C1}/essential"), json!("yes")),
        "containerDefinitions[1].essential",
        "invalid type",
    );
}

#[test]
fn rejects_missing_required_fields() {
    let mut v = base();
    v.as_object_mut().expect("object").remove("family");
    reject(v, "", "missing field `family`");
    let mut v = base();
    v.pointer_mut(C0)
        .and_then(Value::as_object_mut)
        .expect("c0")
        .remove("image");
    reject(v, "containerDefinitions[0]", "missing field `image`");
}

#[test]
fn rejects_bad_volumes() {
    reject(
        with("/volumes/1/name", json!("a b")),
        "volumes[1].name",
        "letters",
    );
    reject(
        with("/volumes/1/name", json!("data")),
        "volumes[1].name",
        "twice",
    );
    reject(
        with(
            "/volumes/1/efsVolumeConfiguration",
            json!({"fileSystemId": "fs-1"}),
        ),
        "volumes[1].efsVolumeConfiguration",
        "not supported by Skerry",
    );
    reject(
        with(
            "/volumes/1/fsxWindowsFileServerVolumeConfiguration",
            json!({"fileSystemId": "fs-1"}),
        ),
        "volumes[1].fsxWindowsFileServerVolumeConfiguration",
        "not supported by Skerry",
    );
    reject(
        with("/volumes/1/configuredAtLaunch", json!(true)),
        "volumes[1].configuredAtLaunch",
        "not supported by Skerry",
    );
    reject(
        with("/volumes/0/host/sourcePath", json!("srv/data")),
        "volumes[0].host.sourcePath",
        "absolute",
    );
    reject(
        with(
            "/volumes/0/dockerVolumeConfiguration",
            json!({"scope": "task"}),
        ),
        "volumes[0].dockerVolumeConfiguration",
        "cannot be combined",
    );
    reject(
        with(
            "/volumes/1/dockerVolumeConfiguration",
            json!({"scope": "shared"}),
        ),
        "volumes[1].dockerVolumeConfiguration.scope",
        "only scope",
    );
    reject(
        with(
            "/volumes/1/dockerVolumeConfiguration",
            json!({"driver": "rexray/ebs"}),
        ),
        "volumes[1].dockerVolumeConfiguration.driver",
        "local driver",
    );
    reject(
        with(
            "/volumes/1/dockerVolumeConfiguration",
            json!({"driverOpts": {"type": "nfs"}}),
        ),
        "volumes[1].dockerVolumeConfiguration.driverOpts",
        "not supported by Skerry",
    );
    reject(
        with(
            "/volumes/1/dockerVolumeConfiguration",
            json!({"autoprovision": true}),
        ),
        "volumes[1].dockerVolumeConfiguration.autoprovision",
        "shared",
    );
}

#[test]
fn rejects_container_set_problems() {
    reject(
        with("/containerDefinitions", json!([])),
        "containerDefinitions",
        "at least one container",
    );
    reject(
        with(&format!("{C0}/essential"), json!(false)),
        "containerDefinitions",
        "essential",
    );
    reject(
        with(&format!("{C1}/name"), json!("app")),
        "containerDefinitions[1].name",
        "twice",
    );
}

// ---- rejections: container level ----

#[test]
fn rejects_bad_container_names_and_images() {
    reject(
        with(&format!("{C1}/name"), json!("side.car")),
        "containerDefinitions[1].name",
        "letters",
    );
    reject(
        with(&format!("{C1}/name"), json!("x".repeat(256))),
        "containerDefinitions[1].name",
        "255",
    );
    reject(
        with(&format!("{C1}/image"), json!(" ")),
        "containerDefinitions[1].image",
        "image",
    );
}

#[test]
fn rejects_bad_environment_names() {
    reject(
        with(
            &format!("{C1}/environment"),
            json!([{"name": "OK", "value": "1"}, {"name": "", "value": "x"}]),
        ),
        "containerDefinitions[1].environment[1].name",
        "non-empty",
    );
    reject(
        with(&format!("{C1}/environment"), json!([{"name": "A=B"}])),
        "containerDefinitions[1].environment[0].name",
        "'='",
    );
}

#[test]
fn rejects_bad_memory() {
    reject(
        with(&format!("{C0}/memory"), json!(4)),
        "containerDefinitions[0].memory",
        "6 MiB",
    );
    reject(
        with(&format!("{C0}/memoryReservation"), json!(256)),
        "containerDefinitions[0].memoryReservation",
        "must not exceed memory",
    );
    reject(
        with(&format!("{C1}/memoryReservation"), json!(0)),
        "containerDefinitions[1].memoryReservation",
        "greater than 0",
    );
    reject(
        with(&format!("{C0}/memory"), json!(1024)),
        "containerDefinitions[0].memory",
        "exceeds the task's memory",
    );
    reject(
        with(&format!("{C1}/memoryReservation"), json!(500)),
        "memory",
        "reserve",
    );
    reject(with(&format!("{C1}/cpu"), json!(2000)), "cpu", "reserve");
}

#[test]
fn requires_memory_somewhere() {
    let mut v = base();
    v.as_object_mut().expect("object").remove("memory");
    assert!(
        parse(&v).is_ok(),
        "both containers have container-level memory"
    );
    v.pointer_mut(C1)
        .and_then(Value::as_object_mut)
        .expect("c1")
        .remove("memoryReservation");
    reject(v, "containerDefinitions[1].memory", "memoryReservation");
}

#[test]
fn rejects_bad_port_mappings() {
    let pm = format!("{C0}/portMappings/0");
    reject(
        with(&format!("{pm}/containerPort"), json!(0)),
        "containerDefinitions[0].portMappings[0].containerPort",
        "1 to 65535",
    );
    reject(
        with(&format!("{pm}/containerPort"), json!(70000)),
        "containerDefinitions[0].portMappings[0].containerPort",
        "1 to 65535",
    );
    reject(
        with(&pm, json!({"hostPort": 80})),
        "containerDefinitions[0].portMappings[0].containerPort",
        "required",
    );
    reject(
        with(&format!("{pm}/hostPort"), json!(65536)),
        "containerDefinitions[0].portMappings[0].hostPort",
        "1 to 65535",
    );
    reject(
        with(&format!("{pm}/containerPortRange"), json!("8000-8010")),
        "containerDefinitions[0].portMappings[0].containerPortRange",
        "not supported by Skerry",
    );
    reject(
        with(&format!("{pm}/appProtocol"), json!("http")),
        "containerDefinitions[0].portMappings[0].appProtocol",
        "not supported by Skerry",
    );
    reject(
        with("/networkMode", json!("none")),
        "containerDefinitions[0].portMappings",
        "networkMode none",
    );
    reject(
        with(&format!("{C0}/disableNetworking"), json!(true)),
        "containerDefinitions[0].portMappings",
        "disableNetworking",
    );
}

#[test]
fn rejects_host_port_clashes() {
    let v = with(
        &format!("{C1}/portMappings"),
        json!([{"containerPort": 81, "hostPort": 8080}]),
    );
    reject(
        v,
        "containerDefinitions[1].portMappings[0].hostPort",
        "already mapped by containerDefinitions[0].portMappings[0]",
    );
    // Different protocols do not clash; dynamic ports never do.
    let v = with(
        &format!("{C1}/portMappings"),
        json!([{"containerPort": 81, "hostPort": 8080, "protocol": "udp"}, {"containerPort": 82}, {"containerPort": 83, "hostPort": 0}]),
    );
    assert!(parse(&v).is_ok());
}

#[test]
fn host_mode_ports_must_match() {
    let mut v = with("/networkMode", json!("host"));
    reject(
        v.clone(),
        "containerDefinitions[0].portMappings[0].hostPort",
        "equal containerPort",
    );
    set(
        &mut v,
        &format!("{C0}/portMappings"),
        json!([{"containerPort": 80}]),
    );
    assert!(parse(&v).is_ok());
    set(
        &mut v,
        &format!("{C1}/portMappings"),
        json!([{"containerPort": 80, "hostPort": 80}]),
    );
    reject(
        v,
        "containerDefinitions[1].portMappings[0].containerPort",
        "already mapped",
    );
}

#[test]
fn rejects_bad_mount_points() {
    reject(
        with(
            &format!("{C0}/mountPoints"),
            json!([{"sourceVolume": "nope", "containerPath": "/x"}]),
        ),
        "containerDefinitions[0].mountPoints[0].sourceVolume",
        "declare \"nope\"",
    );
    reject(
        with(
            &format!("{C0}/mountPoints"),
            json!([{"sourceVolume": "data", "containerPath": "x"}]),
        ),
        "containerDefinitions[0].mountPoints[0].containerPath",
        "absolute",
    );
}

#[test]
fn rejects_bad_working_directory_and_user() {
    reject(
        with(&format!("{C0}/workingDirectory"), json!("app")),
        "containerDefinitions[0].workingDirectory",
        "absolute",
    );
    reject(
        with(&format!("{C0}/user"), json!("a:b:c")),
        "containerDefinitions[0].user",
        "user:group",
    );
    reject(
        with(&format!("{C0}/user"), json!(":1")),
        "containerDefinitions[0].user",
        "user:group",
    );
}

#[test]
fn rejects_bad_capabilities() {
    reject(
        with(
            &format!("{C1}/linuxParameters"),
            json!({"capabilities": {"add": ["NET_ADMINS"]}}),
        ),
        "containerDefinitions[1].linuxParameters.capabilities.add[0]",
        "not a Linux capability",
    );
    reject(
        with(
            &format!("{C1}/linuxParameters"),
            json!({"capabilities": {"drop": ["CHOWN", "bogus"]}}),
        ),
        "containerDefinitions[1].linuxParameters.capabilities.drop[1]",
        "not a Linux capability",
    );
}

#[test]
fn rejects_bad_linux_parameters() {
    let lp = format!("{C1}/linuxParameters");
    reject(
        with(&lp, json!({"tmpfs": [{"containerPath": "run", "size": 1}]})),
        "containerDefinitions[1].linuxParameters.tmpfs[0].containerPath",
        "absolute",
    );
    reject(
        with(
            &lp,
            json!({"tmpfs": [{"containerPath": "/run", "size": 0}]}),
        ),
        "containerDefinitions[1].linuxParameters.tmpfs[0].size",
        "at least 1",
    );
    reject(
        with(
            &lp,
            json!({"tmpfs": [{"containerPath": "/run", "size": 1, "mountOptions": ["rw", "huge=always"]}]}),
        ),
        "containerDefinitions[1].linuxParameters.tmpfs[0].mountOptions[1]",
        "not a tmpfs mount option",
    );
    reject(
        with(&lp, json!({"tmpfs": [{"containerPath": "/run"}]})),
        "containerDefinitions[1].linuxParameters.tmpfs[0]",
        "missing field `size`",
    );
    reject(
        with(&lp, json!({"sharedMemorySize": 0})),
        "containerDefinitions[1].linuxParameters.sharedMemorySize",
        "at least 1",
    );
    reject(
        with(&lp, json!({"devices": [{"hostPath": "dev/null"}]})),
        "containerDefinitions[1].linuxParameters.devices[0].hostPath",
        "absolute",
    );
    reject(
        with(
            &lp,
            json!({"devices": [{"hostPath": "/dev/null", "containerPath": "null"}]}),
        ),
        "containerDefinitions[1].linuxParameters.devices[0].containerPath",
        "absolute",
    );
    reject(
        with(
            &lp,
            json!({"devices": [{"hostPath": "/dev/null", "permissions": []}]}),
        ),
        "containerDefinitions[1].linuxParameters.devices[0].permissions",
        "at least one",
    );
    reject(
        with(
            &lp,
            json!({"devices": [{"hostPath": "/dev/null", "permissions": ["execute"]}]}),
        ),
        "containerDefinitions[1].linuxParameters.devices[0].permissions[0]",
        "unknown variant",
    );
    reject(
        with(&lp, json!({"maxSwap": 100})),
        "containerDefinitions[1].linuxParameters.maxSwap",
        "not supported by Skerry",
    );
    reject(
        with(&lp, json!({"swappiness": 10})),
        "containerDefinitions[1].linuxParameters.swappiness",
        "not supported by Skerry",
    );
}

#[test]
fn rejects_bad_ulimits() {
    reject(
        with(
            &format!("{C1}/ulimits"),
            json!([{"name": "NOFILE", "softLimit": 1, "hardLimit": 1}]),
        ),
        "containerDefinitions[1].ulimits[0].name",
        "not a ulimit",
    );
    reject(
        with(
            &format!("{C1}/ulimits"),
            json!([{"name": "nofile", "softLimit": 2, "hardLimit": 1}]),
        ),
        "containerDefinitions[1].ulimits[0].softLimit",
        "hardLimit",
    );
}

#[test]
fn rejects_bad_health_checks() {
    let hc = format!("{C0}/healthCheck");
    reject(
        with(&hc, json!({"command": ["curl", "localhost"]})),
        "containerDefinitions[0].healthCheck.command",
        "CMD",
    );
    reject(
        with(&hc, json!({"command": ["CMD"]})),
        "containerDefinitions[0].healthCheck.command",
        "after CMD",
    );
    reject(
        with(&hc, json!({"command": []})),
        "containerDefinitions[0].healthCheck.command",
        "CMD",
    );
    for (field, bad) in [
        ("interval", 4),
        ("interval", 301),
        ("timeout", 1),
        ("timeout", 61),
        ("retries", 0),
        ("retries", 11),
        ("startPeriod", 301),
    ] {
        reject(
            with(&hc, json!({"command": ["CMD", "true"], field: bad})),
            &format!("containerDefinitions[0].healthCheck.{field}"),
            "must be",
        );
    }
}

#[test]
fn rejects_bad_restart_policies() {
    reject(
        with(
            &format!("{C1}/restartPolicy"),
            json!({"enabled": true, "restartAttemptPeriod": 59}),
        ),
        "containerDefinitions[1].restartPolicy.restartAttemptPeriod",
        "60 to 1800",
    );
    reject(
        with(
            &format!("{C1}/restartPolicy"),
            json!({"enabled": true, "restartAttemptPeriod": 1801}),
        ),
        "containerDefinitions[1].restartPolicy.restartAttemptPeriod",
        "60 to 1800",
    );
    let codes: Vec<i32> = (0..51).collect();
    reject(
        with(
            &format!("{C1}/restartPolicy"),
            json!({"enabled": true, "ignoredExitCodes": codes}),
        ),
        "containerDefinitions[1].restartPolicy.ignoredExitCodes",
        "50",
    );
}

#[test]
fn rejects_bad_names_and_addresses() {
    reject(
        with(&format!("{C1}/hostname"), json!("bad host")),
        "containerDefinitions[1].hostname",
        "not a valid hostname",
    );
    reject(
        with(
            &format!("{C1}/extraHosts"),
            json!([{"hostname": "-x", "ipAddress": "10.0.0.1"}]),
        ),
        "containerDefinitions[1].extraHosts[0].hostname",
        "not a valid hostname",
    );
    reject(
        with(
            &format!("{C1}/extraHosts"),
            json!([{"hostname": "db", "ipAddress": "10.0.0"}]),
        ),
        "containerDefinitions[1].extraHosts[0].ipAddress",
        "not an IP address",
    );
    reject(
        with(
            &format!("{C1}/dnsServers"),
            json!(["8.8.8.8", "dns.google"]),
        ),
        "containerDefinitions[1].dnsServers[1]",
        "not an IP address",
    );
    reject(
        with(&format!("{C1}/dnsSearchDomains"), json!(["a..b"])),
        "containerDefinitions[1].dnsSearchDomains[0]",
        "not a valid domain",
    );
}

#[test]
fn host_mode_refuses_per_container_names() {
    let mut v = with("/networkMode", json!("host"));
    set(&mut v, &format!("{C0}/portMappings"), json!([]));
    assert!(parse(&v).is_ok());
    reject(
        with_in(&v, &format!("{C1}/hostname"), json!("x")),
        "containerDefinitions[1].hostname",
        "host network mode",
    );
    reject(
        with_in(
            &v,
            &format!("{C1}/extraHosts"),
            json!([{"hostname": "db", "ipAddress": "10.0.0.1"}]),
        ),
        "containerDefinitions[1].extraHosts",
        "host network mode",
    );
    reject(
        with_in(&v, &format!("{C1}/dnsServers"), json!(["10.0.0.1"])),
        "containerDefinitions[1].dnsServers",
        "host network mode",
    );
    reject(
        with_in(
            &v,
            &format!("{C1}/dnsSearchDomains"),
            json!(["example.com"]),
        ),
        "containerDefinitions[1].dnsSearchDomains",
        "host network mode",
    );
}

fn with_in(v: &Value, ptr: &str, value: Value) -> Value {
    let mut v = v.clone();
    set(&mut v, ptr, value);
    v
}

#[test]
fn rejects_terminals_and_bad_version_consistency() {
    reject(
        with(&format!("{C1}/interactive"), json!(true)),
        "containerDefinitions[1].interactive",
        "not supported by Skerry",
    );
    reject(
        with(&format!("{C1}/pseudoTerminal"), json!(true)),
        "containerDefinitions[1].pseudoTerminal",
        "not supported by Skerry",
    );
    reject(
        with(&format!("{C1}/versionConsistency"), json!("sometimes")),
        "containerDefinitions[1].versionConsistency",
        "enabled",
    );
}

#[test]
fn rejects_container_level_aws_features() {
    for (field, value) in [
        ("links", json!(["db:db"])),
        ("volumesFrom", json!([{"sourceContainer": "app"}])),
        ("secrets", json!([{"name": "A", "valueFrom": "arn:x"}])),
        (
            "repositoryCredentials",
            json!({"credentialsParameter": "arn:x"}),
        ),
        ("logConfiguration", json!({"logDriver": "json-file"})),
        ("firelensConfiguration", json!({"type": "fluentbit"})),
        (
            "environmentFiles",
            json!([{"value": "arn:aws:s3:::b/x.env", "type": "s3"}]),
        ),
        ("dockerSecurityOptions", json!(["no-new-privileges"])),
        (
            "systemControls",
            json!([{"namespace": "net.core.somaxconn", "value": "1024"}]),
        ),
        (
            "resourceRequirements",
            json!([{"type": "GPU", "value": "1"}]),
        ),
        ("credentialSpecs", json!(["credentialspec:arn:x"])),
    ] {
        reject(
            with(&format!("{C1}/{field}"), value),
            &format!("containerDefinitions[1].{field}"),
            "is not supported by Skerry: ",
        );
    }
}

#[test]
fn rejects_bad_dependencies() {
    let dep = |name: &str, cond: &str| json!([{"containerName": name, "condition": cond}]);
    reject(
        with(&format!("{C0}/dependsOn"), dep("ghost", "START")),
        "containerDefinitions[0].dependsOn[0].containerName",
        "names no container",
    );
    reject(
        with(&format!("{C0}/dependsOn"), dep("app", "START")),
        "containerDefinitions[0].dependsOn[0].containerName",
        "itself",
    );
    reject(
        with(&format!("{C0}/dependsOn"), dep("sidecar", "HEALTHY")),
        "containerDefinitions[0].dependsOn[0].condition",
        "healthCheck",
    );
    reject(
        with(&format!("{C1}/dependsOn"), dep("app", "COMPLETE")),
        "containerDefinitions[1].dependsOn[0].condition",
        "essential: false",
    );
    reject(
        with(&format!("{C1}/dependsOn"), dep("app", "LATER")),
        "containerDefinitions[1].dependsOn[0].condition",
        "unknown variant",
    );
    assert!(parse(&with(&format!("{C0}/dependsOn"), dep("sidecar", "SUCCESS"))).is_ok());
    assert!(parse(&with(&format!("{C1}/dependsOn"), dep("app", "HEALTHY"))).is_ok());
}

#[test]
fn rejects_dependency_cycles() {
    let mut v = base();
    set(
        &mut v,
        &format!("{C0}/dependsOn"),
        json!([{"containerName": "sidecar", "condition": "START"}]),
    );
    set(
        &mut v,
        &format!("{C1}/dependsOn"),
        json!([{"containerName": "third", "condition": "START"}]),
    );
    set(
        &mut v,
        "/containerDefinitions/2",
        json!({"name": "third", "image": "x", "essential": false, "memory": 16,
        "dependsOn": [{"containerName": "app", "condition": "START"}]}),
    );
    match parse(&v) {
        Err(e) => {
            assert!(e.path.ends_with(".dependsOn[0].containerName"), "{e}");
            assert!(e.message.contains("dependency cycle"), "{e}");
        }
        Ok(_) => panic!("a cycle app -> sidecar -> third -> app must be refused"),
    }
    // A diamond is not a cycle.
    set(&mut v, "/containerDefinitions/2/dependsOn", json!([]));
    set(
        &mut v,
        &format!("{C0}/dependsOn"),
        json!([{"containerName": "sidecar", "condition": "START"}, {"containerName": "third", "condition": "START"}]),
    );
    assert!(parse(&v).is_ok());
}

#[test]
fn errors_lists_every_problem() {
    let mut v = with("/family", json!("bad family"));
    set(&mut v, &format!("{C1}/image"), json!(""));
    let td: TaskDefinition = serde_json::from_value(v).expect("well-formed");
    let paths: Vec<String> = td.errors().into_iter().map(|e| e.path).collect();
    assert_eq!(paths, ["family", "containerDefinitions[1].image"]);
}
