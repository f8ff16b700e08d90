//! Task networking against the real CNI plugins (containernetworking-plugins in /usr/lib/cni,
//! or the dirs in SKERRY_TEST_CNI_DIRS, colon-separated). Needs root, iproute2 (`ip`,
//! `nsenter`) and iptables. Uses its own bridge and subnet so it can run next to other
//! networking tests on the same machine.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::mount::{umount2, MntFlags};
use nix::sched::{setns, CloneFlags};
use skerry_agent::network::{
    Attachment, Network, NetworkConfig, NetworkError, NetworkMode, PortRequest, Protocol,
};

const BRIDGE: &str = "skt-net0";
const SUBNET: &str = "10.210.0.0/16";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// The tests share one bridge and compare host-wide iptables and links, so they run one at
/// a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn config(&self) -> NetworkConfig {
        let dirs = std::env::var("SKERRY_TEST_CNI_DIRS").unwrap_or_else(|_| "/usr/lib/cni".into());
        NetworkConfig {
            cni_bin_dirs: std::env::split_paths(&dirs).collect(),
            state_dir: self.dir.path().join("state"),
            netns_dir: self.dir.path().join("netns"),
            bridge: BRIDGE.into(),
            subnet: SUBNET.into(),
        }
    }

    fn network(&self) -> Network {
        Network::new(self.config())
    }

    fn netns_dir(&self) -> PathBuf {
        self.dir.path().join("netns")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("state/ipam")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // setup makes the netns dir a mount point; the temp dir can't go while it is one.
        let _ = umount2(&self.netns_dir(), MntFlags::MNT_DETACH);
    }
}

fn tcp(container_port: u16, host_port: u16) -> PortRequest {
    PortRequest {
        container_port,
        host_port,
        protocol: Protocol::Tcp,
    }
}

fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn links_in(netns: &Path) -> Vec<String> {
    let arg = format!("--net={}", netns.display());
    run("nsenter", &[&arg, "ip", "-o", "link"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn host_link_count() -> usize {
    run("ip", &["-o", "link"]).lines().count()
}

/// nat and filter rules without counters and timestamps.
fn iptables_rules() -> String {
    let mut rules = String::new();
    for table in ["nat", "filter"] {
        for line in run("iptables-save", &["-t", table]).lines() {
            if line.starts_with('#') {
                continue;
            }
            // Chain lines carry "[packets:bytes]".
            let line = match line.rfind(" [") {
                Some(i) if line.starts_with(':') => &line[..i],
                _ => line,
            };
            rules.push_str(line);
            rules.push('\n');
        }
    }
    rules
}

/// host-local keeps one file per reserved IP, named after the IP.
fn reserved_ips(ipam: &Path) -> Vec<String> {
    let mut ips = Vec::new();
    let Ok(nets) = std::fs::read_dir(ipam) else {
        return ips;
    };
    for net in nets.flatten() {
        for f in std::fs::read_dir(net.path())
            .expect("read ipam dir")
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if name.parse::<IpAddr>().is_ok() {
                ips.push(name);
            }
        }
    }
    ips
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Serves `connections` echo connections on `port` inside `netns`, from a thread that has
/// joined that namespace. Returns once the listener is bound.
fn echo_server_in(netns: &Path, port: u16, connections: usize) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(netns).expect("open netns");
    let (ready_tx, ready_rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        setns(&ns, CloneFlags::CLONE_NEWNET).expect("join the task's netns");
        let listener =
            TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).expect("bind inside the netns");
        ready_tx.send(()).expect("test waits for ready");
        for _ in 0..connections {
            let (mut s, _) = listener.accept().expect("accept");
            s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).expect("read");
            s.write_all(b"echo:").expect("write");
            s.write_all(&buf[..n]).expect("write");
        }
    });
    ready_rx
        .recv_timeout(IO_TIMEOUT)
        .expect("echo server did not start");
    handle
}

fn exchange(addr: SocketAddr, msg: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    s.write_all(msg.as_bytes()).expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("receive");
    reply
}

fn state_file(fx: &Fixture, task: &str) -> PathBuf {
    fx.dir.path().join("state").join(format!("{task}.json"))
}

#[tokio::test]
async fn none_mode_has_only_loopback_and_it_is_up() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();
    let att = net
        .setup("none-1", NetworkMode::None, &[])
        .await
        .expect("setup");
    let ns = att.netns.clone().expect("none mode has a netns");
    assert_eq!(ns, fx.netns_dir().join("none-1"));
    assert_eq!(att.ip, None);
    assert!(att.bindings.is_empty());

    let links = links_in(&ns);
    assert_eq!(links.len(), 1, "only lo expected: {links:?}");
    assert!(links[0].contains(": lo:"), "{links:?}");
    assert!(links[0].contains(",UP"), "lo is down: {links:?}");

    net.teardown("none-1").await.expect("teardown");
    assert!(!ns.exists(), "netns file left behind");
    assert!(net.attachments().expect("list").is_empty());
}

#[tokio::test]
async fn bridge_mode_forwards_a_picked_host_port_to_the_container() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();
    let att = net
        .setup("bridge-1", NetworkMode::Bridge, &[tcp(8080, 0)])
        .await
        .expect("setup");
    let ns = att.netns.clone().expect("bridge mode has a netns");
    let ip = att.ip.expect("bridge mode has an ip");
    assert!(
        ip.to_string().starts_with("10.210."),
        "{ip} outside {SUBNET}"
    );
    assert_eq!(att.bindings.len(), 1);
    let b = att.bindings[0];
    assert_ne!(
        b.host_port, 0,
        "hostPort 0 must be replaced by the picked port"
    );
    assert_eq!(b.container_port, 8080);
    assert_eq!(b.protocol, Protocol::Tcp);
    assert_eq!(b.host_ip, IpAddr::V4(Ipv4Addr::UNSPECIFIED));

    assert_eq!(reserved_ips(&fx.ipam_dir()), vec![ip.to_string()]);
    assert!(
        iptables_rules().contains("bridge-1"),
        "no masquerade rule for bridge-1"
    );

    let server = echo_server_in(&ns, 8080, 2);
    let via_host = exchange(
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), b.host_port),
        "a",
    );
    assert_eq!(via_host, "echo:a");
    let direct = exchange(SocketAddr::new(ip, 8080), "b");
    assert_eq!(direct, "echo:b");
    server.join().expect("echo server");

    net.teardown("bridge-1").await.expect("teardown");
    assert!(!ns.exists());
    assert!(reserved_ips(&fx.ipam_dir()).is_empty());
    assert!(
        !iptables_rules().contains("bridge-1"),
        "rules for bridge-1 left"
    );
}

#[tokio::test]
async fn a_host_port_held_by_a_listener_or_another_task_is_in_use() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();

    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let held = listener.local_addr().expect("addr").port();
    let err = net
        .setup("busy-1", NetworkMode::Bridge, &[tcp(80, held)])
        .await
        .expect_err("port is held by a listener");
    assert!(
        matches!(err, NetworkError::PortInUse { port, protocol: Protocol::Tcp } if port == held),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("host port {held}/tcp is already in use; pick another hostPort or 0")
    );
    assert!(net.attachments().expect("list").is_empty());
    assert!(!fx.netns_dir().join("busy-1").exists());

    // A DNAT rule holds no socket; the other task's record is what makes the port taken.
    let first = net
        .setup("busy-2", NetworkMode::Bridge, &[tcp(80, 0)])
        .await
        .expect("setup");
    let mapped = first.bindings[0].host_port;
    let err = net
        .setup("busy-3", NetworkMode::Bridge, &[tcp(80, mapped)])
        .await
        .expect_err("port is mapped by busy-2");
    assert!(
        matches!(err, NetworkError::PortInUse { port, .. } if port == mapped),
        "{err:?}"
    );
    assert_eq!(net.attachments().expect("list"), vec!["busy-2".to_string()]);
    net.teardown("busy-2").await.expect("teardown");
}

#[tokio::test]
async fn host_mode_uses_the_host_network_and_checks_ports() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();

    let free = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let att = net
        .setup("host-1", NetworkMode::Host, &[tcp(free, free)])
        .await
        .expect("setup");
    assert_eq!(att.netns, None);
    assert_eq!(att.ip, None);
    assert_eq!(att.bindings.len(), 1);
    assert_eq!(att.bindings[0].host_port, free);
    assert_eq!(net.attachments().expect("list"), vec!["host-1".to_string()]);

    let err = net
        .setup("host-2", NetworkMode::Host, &[tcp(free, free + 1)])
        .await
        .expect_err("mismatch");
    assert!(
        matches!(err, NetworkError::HostPortMismatch { .. }),
        "{err:?}"
    );

    let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
    let held = listener.local_addr().expect("addr").port();
    let err = net
        .setup("host-3", NetworkMode::Host, &[tcp(held, 0)])
        .await
        .expect_err("held");
    assert!(
        matches!(err, NetworkError::PortInUse { port, .. } if port == held),
        "{err:?}"
    );

    net.teardown("host-1").await.expect("teardown");
    assert!(net.attachments().expect("list").is_empty());
}

#[tokio::test]
async fn setup_and_teardown_are_idempotent() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();

    net.teardown("never-set-up")
        .await
        .expect("nothing to tear down is fine");

    let ports = [tcp(8081, 0)];
    let first = net
        .setup("idem-1", NetworkMode::Bridge, &ports)
        .await
        .expect("setup");
    let again = net
        .setup("idem-1", NetworkMode::Bridge, &ports)
        .await
        .expect("setup again");
    assert_eq!(first, again, "a finished setup is returned as it is");
    assert_eq!(
        links_in(first.netns.as_deref().expect("netns")).len(),
        2,
        "lo and eth0"
    );

    net.teardown("idem-1").await.expect("teardown");
    net.teardown("idem-1").await.expect("second teardown");
    assert!(net.attachments().expect("list").is_empty());
    assert!(dir_entries(&fx.netns_dir()).is_empty());
    assert!(reserved_ips(&fx.ipam_dir()).is_empty());
}

#[tokio::test]
async fn a_fresh_agent_tears_down_what_a_crashed_one_set_up() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let before = iptables_rules();

    let att: Attachment = {
        let crashed = fx.network();
        crashed
            .setup("crash-1", NetworkMode::Bridge, &[tcp(9000, 0)])
            .await
            .expect("setup")
    };
    assert!(state_file(&fx, "crash-1").exists());

    let fresh = fx.network();
    assert_eq!(
        fresh.attachments().expect("list"),
        vec!["crash-1".to_string()]
    );
    fresh.teardown("crash-1").await.expect("teardown");
    assert!(!att.netns.expect("netns").exists());
    assert!(!state_file(&fx, "crash-1").exists());
    assert!(reserved_ips(&fx.ipam_dir()).is_empty());
    let after = iptables_rules();
    // iptables-save prints the rule comments, which name the task.
    assert!(
        !after.contains("crash-1"),
        "rules for crash-1 left:\n{after}"
    );
    // The first portmap use ever adds shared CNI-HOSTPORT-* chains, so compare only when
    // they existed before.
    if before.contains("CNI-HOSTPORT-DNAT") {
        assert_eq!(before, after);
    }
}

#[tokio::test]
async fn setup_after_a_crash_mid_setup_redoes_it() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();
    let first = net
        .setup("redo-1", NetworkMode::None, &[])
        .await
        .expect("setup");
    let ns = first.netns.clone().expect("netns");
    // A crash between creating the namespace file and mounting the namespace leaves a
    // plain file; setup must not take that for a namespace.
    umount2(&ns, MntFlags::MNT_DETACH).expect("unmount the namespace");
    assert!(ns.exists());

    let again = Network::new(fx.config())
        .setup("redo-1", NetworkMode::None, &[])
        .await
        .expect("setup again");
    assert_eq!(again.netns.as_deref(), Some(ns.as_path()));
    let links = links_in(&ns);
    assert_eq!(links.len(), 1, "{links:?}");
    assert!(links[0].contains(",UP"), "{links:?}");
    net.teardown("redo-1").await.expect("teardown");
    assert!(!ns.exists());
}

#[tokio::test]
async fn a_hundred_bridge_setups_and_teardowns_leak_nothing() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();
    let ports = [tcp(8080, 0)];

    // The bridge and portmap's shared CNI-HOSTPORT-* chains are created on first use and
    // stay by design; one round first makes them part of "before".
    net.setup("leak-warmup", NetworkMode::Bridge, &ports)
        .await
        .expect("warm-up setup");
    net.teardown("leak-warmup").await.expect("warm-up teardown");
    let links_before = host_link_count();
    let rules_before = iptables_rules();

    let deadline = Instant::now() + Duration::from_secs(300);
    for i in 0..100 {
        assert!(
            Instant::now() < deadline,
            "100 setup/teardown rounds did not finish in 5 minutes (at round {i})"
        );
        let task = format!("leak-{i}");
        let att = net
            .setup(&task, NetworkMode::Bridge, &ports)
            .await
            .unwrap_or_else(|e| panic!("setup round {i}: {e}"));
        assert_ne!(att.bindings[0].host_port, 0);
        net.teardown(&task)
            .await
            .unwrap_or_else(|e| panic!("teardown round {i}: {e}"));
    }

    assert!(dir_entries(&fx.netns_dir()).is_empty(), "netns files left");
    assert_eq!(
        host_link_count(),
        links_before,
        "veths left:\n{}",
        run("ip", &["-o", "link"])
    );
    let ips = reserved_ips(&fx.ipam_dir());
    assert!(ips.is_empty(), "ip reservations left: {ips:?}");
    assert!(net.attachments().expect("list").is_empty());
    assert_eq!(iptables_rules(), rules_before, "iptables rules changed");
}

#[tokio::test]
async fn a_failed_add_names_task_and_plugin_and_leaves_nothing_behind() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    // A /30 has one address for tasks after the gateway, so the second task can't get one.
    let net = Network::new(NetworkConfig {
        bridge: "skt-net1".into(),
        subnet: "10.211.0.0/30".into(),
        ..fx.config()
    });
    let first = net
        .setup("full-1", NetworkMode::Bridge, &[])
        .await
        .expect("setup");
    assert_eq!(first.ip, Some("10.211.0.2".parse().expect("ip")));
    let links_before = host_link_count();

    let err = net
        .setup("full-2", NetworkMode::Bridge, &[tcp(80, 0)])
        .await
        .expect_err("the subnet is full");
    let text = err.to_string();
    assert!(
        matches!(&err, NetworkError::Plugin { plugin, .. } if plugin == "bridge"),
        "{err:?}"
    );
    assert!(text.contains("full-2"), "{text}");
    assert!(text.contains("no IP addresses available"), "{text}");
    assert_eq!(
        host_link_count(),
        links_before,
        "the failed setup left a link"
    );
    assert_eq!(net.attachments().expect("list"), vec!["full-1".to_string()]);
    assert_eq!(dir_entries(&fx.netns_dir()), vec!["full-1".to_string()]);

    net.teardown("full-1").await.expect("teardown");
    assert!(reserved_ips(&fx.ipam_dir()).is_empty());
}

#[tokio::test]
async fn concurrent_setups_get_distinct_ports_and_addresses() {
    let _serial = SERIAL.lock().await;
    let fx = Fixture::new();
    let net = fx.network();
    let ports = [tcp(80, 0), tcp(81, 0)];
    let ids: Vec<String> = (0..4).map(|i| format!("conc-{i}")).collect();

    let results = futures::future::join_all(
        ids.iter()
            .map(|id| net.setup(id, NetworkMode::Bridge, &ports)),
    )
    .await;
    let mut host_ports = std::collections::HashSet::new();
    let mut ips = std::collections::HashSet::new();
    for (id, r) in ids.iter().zip(results) {
        let att = r.unwrap_or_else(|e| panic!("{id}: {e}"));
        ips.insert(att.ip.expect("ip"));
        for b in att.bindings {
            assert!(
                host_ports.insert(b.host_port),
                "host port {} given twice",
                b.host_port
            );
        }
    }
    assert_eq!(ips.len(), 4);
    assert_eq!(host_ports.len(), 8);

    for r in futures::future::join_all(ids.iter().map(|id| net.teardown(id))).await {
        r.expect("teardown");
    }
    assert!(net.attachments().expect("list").is_empty());
    assert!(dir_entries(&fx.netns_dir()).is_empty());
    assert!(reserved_ips(&fx.ipam_dir()).is_empty());
}
