//! The broker configuration `skerry-hub broker-config` writes, run by a real Mosquitto on a
//! free loopback port and driven with the real `mosquitto_sub`/`mosquitto_pub`: devices
//! reach only their own topics, the hub's identity reaches all, and nobody without a
//! certificate from the hub's CA gets in.

mod common;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{sync_channel, Receiver};
use std::time::{Duration, Instant};

use common::{free_port, run_bounded};
use rcgen::{
    CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Transport};
use skerry_hub::ca::{Ca, HUB_IDENTITY};
use skerry_hub::config::Config;
use skerry_hub::link;
use skerry_hub::revocation::Revocation;
use skerry_hub::store::{ContainerInstance, Store};
use skerry_proto::link::{MAX_PACKET, MAX_PAYLOAD};
use std::sync::Arc;

const DEVICE_A: &str = "mi-0000000000000000a";
const DEVICE_B: &str = "mi-0000000000000000b";
const CLIENT_LIMIT: Duration = Duration::from_secs(20);

fn mosquitto_bin() -> String {
    std::env::var("MOSQUITTO").unwrap_or_else(|_| "/usr/sbin/mosquitto".into())
}

/// A client identity: certificate and key files.
struct Identity {
    cert: PathBuf,
    key: PathBuf,
}

fn save(dir: &Path, name: &str, cert: &str, key: &str) -> Identity {
    let id = Identity {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    fs::write(&id.cert, cert).expect("write cert");
    fs::write(&id.key, key).expect("write key");
    id
}

/// A device identity as registration makes it: a key of its own, signed through a CSR.
fn device(ca: &Ca, dir: &Path, instance_id: &str) -> Identity {
    device_with_serial(ca, dir, instance_id).0
}

/// [`device`], and its certificate's serial as the hub stores it.
fn device_with_serial(ca: &Ca, dir: &Path, instance_id: &str) -> (Identity, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let (cert, serial) = ca.sign_device_csr(&csr, instance_id).expect("sign");
    (save(dir, instance_id, &cert, &key.serialize_pem()), serial)
}

/// A device's name signed by the hub's own CA, valid from `from` days to `to` days from now.
fn signed(ca_dir: &Path, dir: &Path, instance_id: &str, from: i64, to: i64) -> Identity {
    let ca_key = KeyPair::from_pem(&fs::read_to_string(ca_dir.join("ca.key")).expect("CA key"))
        .expect("CA key PEM");
    let ca_pem = fs::read_to_string(ca_dir.join("ca.crt")).expect("CA certificate");
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).expect("issuer");
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, instance_id);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now + time::Duration::days(from);
    params.not_after = now + time::Duration::days(to);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    let name = format!("{instance_id}-{from}-{to}");
    save(dir, &name, &cert.pem(), &key.serialize_pem())
}

struct Broker {
    child: Option<Child>,
    conf: PathBuf,
    ca_file: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Broker {
    fn start(conf: &Path, ca_file: &Path, port: u16, log: &Path) -> Broker {
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        let mut broker = Broker {
            child: Some(child),
            conf: conf.to_path_buf(),
            ca_file: ca_file.to_path_buf(),
            port,
            log: log.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = broker
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                panic!(
                    "mosquitto did not start listening ({exited:?}); log:\n{}",
                    fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        broker
    }

    /// SIGTERM, as a service manager stops it; Mosquitto saves its state on the way out.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill");
            let status = child.wait().expect("wait for mosquitto");
            assert!(status.success(), "mosquitto exited with {status}");
        }
    }

    fn tls_args(&self, cmd: &mut Command, who: Option<&Identity>) {
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-V", "mqttv311", "-q", "1"])
            .arg("--cafile")
            .arg(&self.ca_file);
        if let Some(id) = who {
            cmd.arg("--cert").arg(&id.cert).arg("--key").arg(&id.key);
        }
    }

    /// Publishes one message; returns whether mosquitto_pub succeeded and its stderr.
    fn publish(
        &self,
        who: Option<&Identity>,
        topic: &str,
        payload: &str,
        retain: bool,
    ) -> (bool, String) {
        let mut cmd = Command::new("mosquitto_pub");
        self.tls_args(&mut cmd, who);
        cmd.args(["-t", topic, "-m", payload]);
        if retain {
            cmd.arg("-r");
        }
        let out = run_bounded(&mut cmd, CLIENT_LIMIT);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Subscribes to `filter` for up to `wait`, or until `count` messages came; returns
    /// the `topic payload` lines received.
    fn receive(&self, who: &Identity, filter: &str, count: usize, wait: u64) -> Vec<String> {
        let mut cmd = Command::new("mosquitto_sub");
        self.tls_args(&mut cmd, Some(who));
        cmd.args(["-t", filter, "-v", "-C", &count.to_string()])
            .args(["-W", &wait.to_string()]);
        let out = run_bounded(&mut cmd, Duration::from_secs(wait) + CLIENT_LIMIT);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// A subscriber that keeps running; its lines arrive on the receiver.
    fn subscriber(&self, who: &Identity, filter: &str) -> (Child, Receiver<String>) {
        let mut cmd = Command::new("mosquitto_sub");
        self.tls_args(&mut cmd, Some(who));
        let mut child = cmd
            .args(["-t", filter, "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto_sub");
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = sync_channel(64);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        (child, rx)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a line equal to `want`, returning every line seen up to and including it.
fn wait_for(rx: &Receiver<String>, want: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let done = line == want;
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(_) => panic!("{want:?} did not arrive within {limit:?}; saw {seen:?}"),
        }
    }
}

#[test]
fn devices_reach_only_their_own_topics_and_strangers_none() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let port = free_port();
    let config = common::write_config(dir, &format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n"));
    let out_dir = dir.join("broker");
    let out = Command::new(env!("CARGO_BIN_EXE_skerry-hub"))
        .args(["broker-config", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("broker-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = PathBuf::from(String::from_utf8(out.stdout).expect("utf8").trim());
    assert_eq!(
        conf,
        out_dir.canonicalize().expect("abs").join("mosquitto.conf")
    );

    let ca = Ca::load_or_create(&dir.join("state/ca")).expect("the CA broker-config made");
    let ids = dir.join("ids");
    fs::create_dir(&ids).expect("mkdir");
    let (cert, key) = ca.issue_client_cert(HUB_IDENTITY).expect("hub identity");
    let hub = save(&ids, "hub", &cert, &key);
    let a = device(&ca, &ids, DEVICE_A);
    let b = device(&ca, &ids, DEVICE_B);
    let elsewhere = Ca::load_or_create(&dir.join("other-ca")).expect("another CA");
    let (cert, key) = elsewhere.issue_client_cert(DEVICE_A).expect("impostor");
    let impostor = save(&ids, "impostor", &cert, &key);
    let stale = signed(&dir.join("state/ca"), &ids, DEVICE_A, -30, -1);
    let fresh = signed(&dir.join("state/ca"), &ids, DEVICE_A, -1, 30);

    let mut broker = Broker::start(
        &conf,
        &out_dir.join("ca.crt"),
        port,
        &dir.join("mosquitto.log"),
    );
    // Started as root, the broker runs as its own user, and still reads its files.
    if rustix::process::geteuid().is_root() {
        let pid = broker.child.as_ref().expect("running").id();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let uid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .expect("effective uid");
        let mosquitto = nix::unistd::User::from_name("mosquitto")
            .expect("passwd")
            .expect("the mosquitto user");
        assert_eq!(uid, mosquitto.uid.to_string(), "the broker kept root");
    }
    let desired = |id: &str| format!("skerry/v1/{id}/desired");
    let up = |id: &str| format!("skerry/v1/{id}/up");

    // The hub publishes each device's retained desired state; each device reads its own.
    for (id, doc) in [(DEVICE_A, "doc-a"), (DEVICE_B, "doc-b")] {
        let (ok, err) = broker.publish(Some(&hub), &desired(id), doc, true);
        assert!(ok, "hub publish: {err}");
    }
    assert_eq!(
        broker.receive(&a, &desired(DEVICE_A), 1, 10),
        [format!("{} doc-a", desired(DEVICE_A))]
    );
    assert_eq!(
        broker.receive(&b, &desired(DEVICE_B), 1, 10),
        [format!("{} doc-b", desired(DEVICE_B))]
    );
    // A gets nothing of B's, named or through a wildcard, while B's document is there.
    assert_eq!(
        broker.receive(&a, &desired(DEVICE_B), 1, 2),
        Vec::<String>::new()
    );
    assert_eq!(
        broker.receive(&a, "skerry/v1/+/desired", 2, 2),
        [format!("{} doc-a", desired(DEVICE_A))]
    );
    // A device cannot write its own desired state.
    broker.publish(Some(&a), &desired(DEVICE_A), "forged", true);
    assert_eq!(
        broker.receive(&hub, &desired(DEVICE_A), 1, 10),
        [format!("{} doc-a", desired(DEVICE_A))]
    );

    // The hub hears a device on its own `up`, never on another's. Mosquitto handles
    // messages in order on one thread, so once A's own message is in, the forged one would
    // have been too.
    let (mut listener, rx) = broker.subscriber(&hub, "skerry/v1/+/up");
    // The probe comes from device A: a second connection as the hub would take over the
    // subscriber's session, since the broker makes each identity its own client id.
    let probe = format!("{} probe", up(DEVICE_A));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, err) = broker.publish(Some(&a), &up(DEVICE_A), "probe", false);
        assert!(ok, "device probe: {err}");
        if rx.recv_timeout(Duration::from_millis(300)).ok().as_deref() == Some(probe.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub's subscriber never started"
        );
    }
    broker.publish(Some(&a), &up(DEVICE_B), "forged-by-a", false);
    let (ok, err) = broker.publish(Some(&a), &up(DEVICE_A), "from-a", false);
    assert!(ok, "device publish: {err}");
    let seen = wait_for(
        &rx,
        &format!("{} from-a", up(DEVICE_A)),
        Duration::from_secs(10),
    );
    assert!(
        seen.iter().all(|l| !l.contains("forged-by-a")),
        "A's message reached B's up: {seen:?}"
    );
    let _ = listener.kill();
    let _ = listener.wait();

    // Strangers: a certificate from another CA (even with a device's name), none at all, and
    // the device's own name from the hub's CA but expired.
    let (ok, err) = broker.publish(Some(&impostor), &up(DEVICE_A), "x", false);
    assert!(!ok, "a certificate from another CA was let in: {err}");
    let (ok, err) = broker.publish(None, &up(DEVICE_A), "x", false);
    assert!(!ok, "a client without a certificate was let in: {err}");
    let (ok, err) = broker.publish(Some(&stale), &up(DEVICE_A), "x", false);
    assert!(
        !ok,
        "an expired certificate from the hub's CA was let in: {err}"
    );
    let (ok, err) = broker.publish(Some(&fresh), &up(DEVICE_A), "x", false);
    assert!(ok, "the same certificate in its validity is let in: {err}");
    // The same command with A's own certificate works: the refusals were about identity.
    let (ok, err) = broker.publish(Some(&a), &up(DEVICE_A), "x", false);
    assert!(ok, "{err}");

    // Retained desired state survives a broker restart.
    broker.stop();
    let log = broker.log.clone();
    let conf = broker.conf.clone();
    drop(broker);
    let broker = Broker::start(&conf, &out_dir.join("ca.crt"), port, &log);
    assert_eq!(
        broker.receive(&a, &desired(DEVICE_A), 1, 10),
        [format!("{} doc-a", desired(DEVICE_A))]
    );
}

/// `broker-config` for a broker on `port`, into its default directory (`broker` beside the
/// config); returns the config file and the directory.
fn broker_config(dir: &Path, port: u16) -> (PathBuf, PathBuf) {
    let config = common::write_config(dir, &format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n"));
    let out = Command::new(env!("CARGO_BIN_EXE_skerry-hub"))
        .args(["broker-config", "--config"])
        .arg(&config)
        .output()
        .expect("broker-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (config, dir.join("broker"))
}

/// An instance as registration stores it, with its certificate's serial.
fn instance(id: &str, serial: &str) -> ContainerInstance {
    ContainerInstance {
        id: id.into(),
        arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/default/{id}"),
        cluster: "default".into(),
        activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04".into(),
        hostname: id.into(),
        architecture: "arm64".into(),
        agent_version: "0.1.0".into(),
        cpu_units: 1024,
        memory_mib: 1024,
        attributes: "{}".into(),
        cert_serial: serial.into(),
        status: "ACTIVE".into(),
        agent_connected: true,
        generation: 0,
        applied_generation: 0,
        registered_at: 1.0,
        last_seen_at: None,
    }
}

/// A device's own MQTT session, as its agent holds one: connected until the broker ends it.
async fn device_session(
    ca: &Ca,
    id: &Identity,
    instance_id: &str,
    port: u16,
) -> rumqttc::EventLoop {
    let tls = link::client_tls_with(
        ca,
        &fs::read_to_string(&id.cert).expect("cert"),
        &fs::read_to_string(&id.key).expect("key"),
    )
    .expect("tls");
    let mut opts = MqttOptions::new(instance_id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_transport(Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
        ));
    let (client, mut events) = AsyncClient::new(opts, 8);
    std::mem::forget(client);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return events,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{instance_id} cannot connect: {e}"),
            Err(_) => panic!("{instance_id} did not connect within 10 s"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deregistered_device_is_refused_and_its_open_connection_closed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let port = free_port();
    let (config, out_dir) = broker_config(dir, port);
    let config = Config::load(&config).expect("config");
    assert_eq!(config.broker.dir, out_dir);
    let ca = Arc::new(Ca::load_or_create(&config.ca_dir()).expect("CA"));
    let ids = dir.join("ids");
    fs::create_dir(&ids).expect("mkdir");
    let (a, serial_a) = device_with_serial(&ca, &ids, DEVICE_A);
    let (b, serial_b) = device_with_serial(&ca, &ids, DEVICE_B);
    let store = Store::open(&config.data_dir).expect("store");
    store.create_cluster("default", "[]", 1.0).expect("cluster");
    for (id, serial) in [(DEVICE_A, &serial_a), (DEVICE_B, &serial_b)] {
        store
            .insert_container_instance(&instance(id, serial))
            .expect("insert");
    }
    let deregister = |id: &str| {
        store
            .write(|tx| tx.set_instance_status(id, "DEREGISTERED"))
            .expect("deregister");
    };
    let conf = out_dir.canonicalize().expect("abs").join("mosquitto.conf");
    let broker = Broker::start(
        &conf,
        &out_dir.join("ca.crt"),
        port,
        &dir.join("mosquitto.log"),
    );
    let up = |id: &str| format!("skerry/v1/{id}/up");
    let mut revocation = Revocation::new(&config.broker.dir, ca.clone(), config.broker.hub_url);
    // With nobody deregistered the list names nobody, and after the reload it signals
    // everyone still gets in (a reload that broke every handshake would show here).
    assert_eq!(
        revocation.publish(&store).expect("publish"),
        Vec::<String>::new()
    );
    let mut session_a = device_session(&ca, &a, DEVICE_A, port).await;

    let started = Instant::now();
    deregister(DEVICE_A);
    assert_eq!(revocation.publish(&store).expect("publish"), [DEVICE_A]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    revocation.kick(DEVICE_A).await.expect("kick");
    // A's open connection is closed, and its reconnects fail the handshake.
    let closed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Err(e) = session_a.poll().await {
                return e;
            }
        }
    })
    .await
    .expect("A's open connection was not closed");
    eprintln!("A's session ended: {closed}");
    for _ in 0..3 {
        let next = tokio::time::timeout(Duration::from_secs(5), session_a.poll()).await;
        assert!(
            !matches!(next, Ok(Ok(Event::Incoming(Packet::ConnAck(_))))),
            "A reconnected"
        );
    }
    let elapsed = started.elapsed();
    let probe = |who: &Identity, id: &str| broker.publish(Some(who), &up(id), "x", false);
    let (ok, err) = probe(&a, DEVICE_A);
    assert!(!ok, "a revoked certificate was let in: {err}");
    let (ok, err) = probe(&b, DEVICE_B);
    assert!(ok, "B was refused after the reload: {err}");
    eprintln!("A refused and its connection closed {elapsed:?} after deregistration");

    // A second revocation at once (the same second) takes effect too: each list is dated
    // after the one before, so the broker checks against the newest.
    deregister(DEVICE_B);
    let mut named = revocation.publish(&store).expect("publish");
    named.sort();
    assert_eq!(named, [DEVICE_A, DEVICE_B]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, err) = probe(&b, DEVICE_B);
    assert!(!ok, "B's revoked certificate was let in: {err}");
    let (ok, err) = probe(&a, DEVICE_A);
    assert!(!ok, "A was let in again: {err}");
    // The hub's own identity is untouched.
    let (cert, key) = ca.issue_client_cert(HUB_IDENTITY).expect("hub identity");
    let hub = save(&ids, "hub", &cert, &key);
    let (ok, err) = broker.publish(Some(&hub), "skerry/v1/x/desired", "doc", false);
    assert!(
        ok,
        "the hub was refused: {err}; log: {}",
        fs::read_to_string(dir.join("mosquitto.log")).unwrap_or_default()
    );
}

/// The whole path through the running hub: DeregisterContainerInstance, the revocation task,
/// the broker's reload and the takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_through_the_api_cuts_the_device_off() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let port = free_port();
    let (config, out_dir) = broker_config(dir, port);
    let config = Config::load(&config).expect("config");
    let ca = Ca::load_or_create(&config.ca_dir()).expect("CA");
    let ids = dir.join("ids");
    fs::create_dir(&ids).expect("mkdir");
    let (a, serial_a) = device_with_serial(&ca, &ids, DEVICE_A);
    {
        let store = Store::open(&config.data_dir).expect("store");
        store.create_cluster("default", "[]", 1.0).expect("cluster");
        store
            .insert_container_instance(&instance(DEVICE_A, &serial_a))
            .expect("insert");
    }
    let conf = out_dir.canonicalize().expect("abs").join("mosquitto.conf");
    let broker = Broker::start(
        &conf,
        &out_dir.join("ca.crt"),
        port,
        &dir.join("mosquitto.log"),
    );
    let hub = common::Hub::start(dir);
    let mut session_a = device_session(&ca, &a, DEVICE_A, port).await;

    let started = Instant::now();
    hub.ok(&[
        "ecs",
        "deregister-container-instance",
        "--cluster",
        "default",
        "--container-instance",
        DEVICE_A,
    ]);
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            if let Err(e) = session_a.poll().await {
                return e;
            }
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "A's connection was not closed; hub log:\n{}",
            fs::read_to_string(dir.join("hub.log")).unwrap_or_default()
        )
    });
    let elapsed = started.elapsed();
    eprintln!("A's session ended {elapsed:?} after DeregisterContainerInstance: {closed}");
    let next = tokio::time::timeout(Duration::from_secs(5), session_a.poll()).await;
    assert!(
        !matches!(next, Ok(Ok(Event::Incoming(Packet::ConnAck(_))))),
        "A reconnected"
    );
    let (ok, err) = broker.publish(Some(&a), &format!("skerry/v1/{DEVICE_A}/up"), "x", false);
    assert!(!ok, "the deregistered device was let in: {err}");
    common::eventually("the hub's log line", Duration::from_secs(10), || {
        fs::read_to_string(dir.join("hub.log"))
            .unwrap_or_default()
            .contains("device cut off at the broker")
            .then_some(())
    });
    hub.stop();
}

impl Broker {
    /// Publishes the file `payload` (too large for an argument); returns whether
    /// mosquitto_pub succeeded.
    fn publish_file(&self, who: &Identity, topic: &str, payload: &Path) -> bool {
        let mut cmd = Command::new("mosquitto_pub");
        self.tls_args(&mut cmd, Some(who));
        cmd.args(["-t", topic, "-f"]).arg(payload);
        run_bounded(&mut cmd, CLIENT_LIMIT).status.success()
    }
}

/// A registered container instance of the cluster `edge`, written into the hub's store.
fn add_instance(store: &Store, id: &str, n: u32, cpu: i64, memory: i64) -> String {
    let arn = format!(
        "arn:aws:ecs:{}:000000000000:container-instance/edge/{n:032x}",
        common::REGION
    );
    store
        .insert_container_instance(&ContainerInstance {
            arn: arn.clone(),
            cluster: "edge".into(),
            cpu_units: cpu,
            memory_mib: memory,
            registered_at: f64::from(n),
            ..instance(id, &format!("{n:02x}"))
        })
        .expect("insert instance");
    arn
}

/// One registered device attacks the link with its own certificate: a retained message on
/// its `up`, a payload over the link's limit and a packet over the broker's. The hub's link
/// stays up (no reconnect), another device still gets the task placed on it, and the
/// retained message is gone once the hub has seen it.
#[test]
fn one_device_cannot_stall_the_hubs_link() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    let port = free_port();
    common::write_config(dir, &format!("[broker]\nlisten = \"127.0.0.1:{port}\"\n"));
    let out_dir = dir.join("broker");
    let out = Command::new(env!("CARGO_BIN_EXE_skerry-hub"))
        .args(["broker-config", "--config"])
        .arg(dir.join("hub.toml"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .expect("broker-config");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ca = Ca::load_or_create(&dir.join("state/ca")).expect("the CA broker-config made");
    let ids = dir.join("ids");
    fs::create_dir(&ids).expect("mkdir");
    let a = device(&ca, &ids, DEVICE_A);
    let b = device(&ca, &ids, DEVICE_B);
    let (cert, key) = ca.issue_client_cert(HUB_IDENTITY).expect("hub identity");
    let hub_id = save(&ids, "hub", &cert, &key);
    let broker = Broker::start(
        &out_dir.join("mosquitto.conf"),
        &out_dir.join("ca.crt"),
        port,
        &dir.join("mosquitto.log"),
    );
    let up_a = format!("skerry/v1/{DEVICE_A}/up");
    // Retained before the hub is there: the broker hands it to the hub's new subscription
    // marked retained.
    let (ok, err) = broker.publish(Some(&a), &up_a, "retained-garbage", true);
    assert!(ok, "{err}");

    let hub = common::Hub::start(dir);
    hub.ok(&["ecs", "create-cluster", "--cluster-name", "edge"]);
    let store = Store::open(&hub.state_dir()).expect("open the hub's store");
    // A has no room, so the task can only go to B.
    add_instance(&store, DEVICE_A, 1, 0, 0);
    let b_arn = add_instance(&store, DEVICE_B, 2, 4096, 4096);
    let linked = || fs::read_to_string(dir.join("hub.log")).unwrap_or_default();
    common::eventually("the hub's link", Duration::from_secs(20), || {
        linked().contains("broker link up").then_some(())
    });

    // Over the payload limit but under the packet limit: the broker acks and drops it.
    let over_payload = dir.join("over-payload");
    fs::write(&over_payload, vec![b'x'; MAX_PAYLOAD + 1]).expect("write");
    broker.publish_file(&a, &up_a, &over_payload);
    // Over the packet limit, as in the original attack (6 MiB): the broker disconnects A.
    let over_packet = dir.join("over-packet");
    fs::write(&over_packet, vec![b'x'; 6 << 20]).expect("write");
    const { assert!(MAX_PACKET < 6 << 20) };
    broker.publish_file(&a, &up_a, &over_packet);
    // Retained again, while the hub is subscribed.
    broker.publish(Some(&a), &up_a, "retained-again", true);

    // B still gets its work.
    let (mut sub, rx) = broker.subscriber(&b, &format!("skerry/v1/{DEVICE_B}/desired"));
    hub.ok(&[
        "ecs",
        "register-task-definition",
        "--family",
        "web",
        "--container-definitions",
        r#"[{"name":"web","image":"busybox","memory":64,"cpu":128}]"#,
    ]);
    let run = hub.ok(&[
        "ecs",
        "run-task",
        "--cluster",
        "edge",
        "--task-definition",
        "web",
    ]);
    let task_arn = run["tasks"][0]["taskArn"]
        .as_str()
        .expect("a task")
        .to_string();
    assert_eq!(run["tasks"][0]["containerInstanceArn"], b_arn.as_str());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("B never got its task; hub log:\n{}", linked()));
        if line.contains(&task_arn) {
            break;
        }
    }
    let _ = sub.kill();
    let _ = sub.wait();
    let log = linked();
    assert_eq!(
        log.matches("broker link up").count(),
        1,
        "the hub's link went down during the attack:\n{log}"
    );
    assert!(!log.contains("broker link down"), "{log}");
    assert!(log.contains("clearing a retained device message"), "{log}");

    // The hub cleared what it saw retained; with it stopped, nothing retained is left on
    // A's `up` but what A sent while the hub was subscribed (the probe takes the hub's
    // client id, so only once the hub is gone).
    hub.stop();
    let left = broker.receive(&hub_id, "skerry/v1/+/up", 2, 2);
    assert_eq!(left, [format!("{up_a} retained-again")]);
    // That one goes when the hub next connects.
    let hub = common::Hub::start(dir);
    common::eventually("the hub clearing it", Duration::from_secs(20), || {
        (linked()
            .matches("clearing a retained device message")
            .count()
            == 2)
            .then_some(())
    });
    hub.stop();
    assert_eq!(
        broker.receive(&hub_id, "skerry/v1/+/up", 1, 2),
        Vec::<String>::new()
    );
}
