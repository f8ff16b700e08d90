//! The hub's side of the link for tests: a test CA (rcgen), a real Mosquitto with TLS and
//! the hub's ACL, a "hub" MQTT client that records what devices say, and an HTTPS
//! registration server that speaks `proto::registration`. Everything on 127.0.0.1 with
//! ports picked free; servers run on background threads with their own runtimes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use skerry_agent::identity::{Identity, IdentityMeta};
use skerry_proto::link::{Envelope, Message, Presence};
use skerry_proto::registration::{RegistrationRequest, RegistrationResponse};

use super::free_port;

pub const INSTANCE: &str = "mi-0123456789abcdef0";
pub const ACTIVATION: &str = "1da5d8c4-2a28-44b5-ac86-911892afea04";
pub const OTHER_ACTIVATION: &str = "2eb6e9d5-3b39-45c6-bd97-a22903b0fb15";

pub struct TestCa {
    key: KeyPair,
    params: CertificateParams,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("self-signed ca");
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            key,
            params,
        }
    }

    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// A certificate and key for `cn`, with `sans` (IP addresses or DNS names).
    pub fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Signs a device's CSR, with the subject the hub chooses: CN = `cn`.
    pub fn sign_csr(&self, csr_pem: &str, cn: &str) -> String {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).expect("csr");
        csr.params.distinguished_name = rcgen::DistinguishedName::new();
        csr.params.distinguished_name.push(DnType::CommonName, cn);
        let issuer = Issuer::from_params(&self.params, &self.key);
        csr.signed_by(&issuer).expect("sign csr").pem()
    }

    /// A stored identity for `instance`, as registration would leave it.
    pub fn identity(&self, instance: &str, broker_url: &str) -> Identity {
        let (cert_pem, key_pem) = self.issue(instance, &[]);
        Identity {
            meta: IdentityMeta {
                instance_id: instance.into(),
                container_instance_arn: format!(
                    "arn:aws:ecs:us-east-1:000000000000:container-instance/default/{instance}"
                ),
                cluster_arn: "arn:aws:ecs:us-east-1:000000000000:cluster/default".into(),
                broker_url: broker_url.into(),
                activation_id: ACTIVATION.into(),
                hub_url: "https://127.0.0.1:1".into(),
            },
            key_pem,
            cert_pem,
            ca_pem: self.pem.clone(),
        }
    }

    fn client_config(&self, cn: &str) -> rustls::ClientConfig {
        let (cert, key) = self.issue(cn, &[]);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("root");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<_, _>>()
            .expect("cert");
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client auth")
    }
}

/// A Mosquitto on a free loopback port with TLS client certificates as identities and the
/// hub's ACL; it keeps sessions across restarts (persistence), as a production broker does.
pub struct Broker {
    pub port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start(ca: &TestCa) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("skerry-broker-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let (cert, key) = ca.issue("broker", &["127.0.0.1"]);
        let p = |n: &str| dir.path().join(n);
        std::fs::write(p("ca.pem"), &ca.pem).expect("ca");
        std::fs::write(p("server.pem"), cert).expect("cert");
        std::fs::write(p("server.key"), key).expect("key");
        std::fs::write(
            p("acl"),
            "pattern read skerry/v1/%u/desired\n\
             pattern write skerry/v1/%u/up\n\
             pattern readwrite skerry/v1/%u/presence\n\n\
             user hub\ntopic readwrite skerry/v1/#\n",
        )
        .expect("acl");
        std::fs::write(
            p("mosquitto.conf"),
            format!(
                "user root\n\
                 per_listener_settings false\n\
                 listener {port} 127.0.0.1\n\
                 cafile {d}/ca.pem\n\
                 certfile {d}/server.pem\n\
                 keyfile {d}/server.key\n\
                 require_certificate true\n\
                 use_identity_as_username true\n\
                 allow_anonymous false\n\
                 acl_file {d}/acl\n\
                 persistence true\n\
                 persistence_location {d}/\n\
                 log_dest file {d}/mosquitto.log\n\
                 log_type all\n",
                d = dir.path().display()
            ),
        )
        .expect("conf");
        let mut b = Self {
            port,
            dir,
            child: None,
        };
        b.resume();
        b
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port, with the sessions it saved.
    pub fn resume(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {}:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM: Mosquitto saves its sessions and drops every connection.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What the hub client received, in order.
#[derive(Default)]
pub struct Seen {
    pub up: Vec<Envelope>,
    pub presence: Vec<Presence>,
    pub unparsable: Vec<String>,
}

/// A hub-side MQTT client (user `hub`) with a persistent session, subscribed to every
/// device's `up` and `presence`; it can publish a device's desired state.
pub struct HubClient {
    pub seen: Arc<Mutex<Seen>>,
    client: rumqttc::AsyncClient,
    rt: Option<tokio::runtime::Runtime>,
    subscribed: Arc<Mutex<bool>>,
}

impl HubClient {
    pub fn connect(ca: &TestCa, broker: &Broker) -> Self {
        use rumqttc::{Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut o = MqttOptions::new(format!("hub-{}", broker.port), "127.0.0.1", broker.port);
        o.set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(8 << 20, 8 << 20)
            .set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
                ca.client_config("hub"),
            ))));
        let (client, mut eventloop) = rumqttc::AsyncClient::new(o, 64);
        let seen = Arc::new(Mutex::new(Seen::default()));
        let subscribed = Arc::new(Mutex::new(false));
        let (s, c, sub) = (seen.clone(), client.clone(), subscribed.clone());
        rt.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                        if !ack.session_present {
                            let _ = c.subscribe("skerry/v1/+/up", QoS::AtLeastOnce).await;
                            let _ = c.subscribe("skerry/v1/+/presence", QoS::AtLeastOnce).await;
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        *sub.lock().expect("lock") = true;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut seen = s.lock().expect("lock");
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        if p.topic.ends_with("/up") {
                            match serde_json::from_str::<Envelope>(&text) {
                                Ok(e) => seen.up.push(e),
                                Err(e) => seen.unparsable.push(format!("{e}: {text}")),
                            }
                        } else if p.topic.ends_with("/presence") {
                            match serde_json::from_str::<Presence>(&text) {
                                Ok(pr) => seen.presence.push(pr),
                                Err(e) => seen.unparsable.push(format!("{e}: {text}")),
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        let h = Self {
            seen,
            client,
            rt: Some(rt),
            subscribed,
        };
        super::wait_for(
            "the hub client's subscriptions",
            Duration::from_secs(20),
            || *h.subscribed.lock().expect("lock"),
        );
        h
    }

    pub fn publish_desired(&self, instance: &str, doc: &str) {
        let topic = skerry_proto::link::topic(instance, skerry_proto::link::Channel::Desired);
        self.client
            .try_publish(
                topic,
                rumqttc::QoS::AtLeastOnce,
                true,
                doc.as_bytes().to_vec(),
            )
            .expect("publish desired");
    }

    /// Waits until `pred` holds for what was seen; panics with it otherwise.
    pub fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            {
                let seen = self.seen.lock().expect("lock");
                if pred(&seen) {
                    return;
                }
                if Instant::now() > deadline {
                    panic!(
                        "hub did not see {what} within {timeout:?}; it saw:\n{}",
                        describe(&seen)
                    );
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for HubClient {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// One line per envelope: seq, coverage and message type.
pub fn describe(seen: &Seen) -> String {
    let mut s = String::new();
    for e in &seen.up {
        let what = match &e.entry.message {
            Message::TaskState { task } => format!(
                "taskState {} {:?}",
                task.task_arn.rsplit('/').next().unwrap_or_default(),
                task.last_status
            ),
            Message::Applied { generation } => format!("applied {generation}"),
            Message::FullState { generation, tasks } => {
                format!("fullState gen {generation}, {} tasks", tasks.len())
            }
            Message::Event { kind, message, .. } => format!("event {kind:?}: {message}"),
            Message::Metrics(_) => "metrics".into(),
            Message::ContainerMetrics { containers } => {
                format!("containerMetrics, {} containers", containers.len())
            }
            Message::Dropped { what, count } => format!("dropped {count} {what}"),
        };
        s.push_str(&format!(
            "  seq {} covers {:?}: {what}\n",
            e.seq,
            e.covers()
        ));
    }
    s.push_str(&format!("  presence: {:?}\n", seen.presence));
    if !seen.unparsable.is_empty() {
        s.push_str(&format!("  unparsable: {:?}\n", seen.unparsable));
    }
    s
}

/// Checks what the hub saw: every seq from 1 to the highest is covered by some envelope,
/// and each envelope is either a re-delivery or newer than everything before it.
pub fn check_no_gap_in_order(seen: &Seen) -> u64 {
    let mut covered = std::collections::BTreeSet::new();
    let mut newest = 0;
    let mut delivered = std::collections::BTreeSet::new();
    for e in &seen.up {
        if !delivered.insert(e.seq) {
            continue; // at-least-once: a re-delivery after a reconnect
        }
        assert!(
            e.seq > newest,
            "seq {} arrived after {newest} and was not a re-delivery:\n{}",
            e.seq,
            describe(seen)
        );
        newest = e.seq;
        for r in e.covers() {
            covered.extend(r);
        }
    }
    let missing: Vec<u64> = (1..=newest).filter(|s| !covered.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "seqs never accounted for: {missing:?}\n{}",
        describe(seen)
    );
    newest
}

/// How the registration server answers.
#[derive(Clone, Debug)]
pub enum Answer {
    Register {
        instance: String,
        broker_url: String,
    },
    Conflict,
}

#[derive(Default)]
pub struct RegState {
    pub calls: u32,
    /// When each call came.
    pub times: Vec<Instant>,
    pub requests: Vec<RegistrationRequest>,
}

/// An HTTPS server for `POST /v1/register`, its certificate signed by `ca` and presented
/// with the CA in its chain; it signs the device's CSR.
pub struct RegServer {
    pub url: String,
    pub state: Arc<Mutex<RegState>>,
    pub answer: Arc<Mutex<Answer>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl RegServer {
    pub fn start(ca: Arc<TestCa>, answer: Answer) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let (cert, key) = ca.issue("hub", &["127.0.0.1"]);
        let mut chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.as_bytes())
                .collect::<Result<_, _>>()
                .expect("cert");
        chain.push(ca.der.clone());
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server cert");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let state = Arc::new(Mutex::new(RegState::default()));
        let answer = Arc::new(Mutex::new(answer));
        let (st, an) = (state.clone(), answer.clone());
        rt.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let (st, an, ca) = (st.clone(), an.clone(), ca.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper::service::service_fn(move |req| {
                        let (st, an, ca) = (st.clone(), an.clone(), ca.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(handle(req, &st, &an, &ca).await)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("https://127.0.0.1:{port}"),
            state,
            answer,
            rt: Some(rt),
        }
    }

    pub fn calls(&self) -> u32 {
        self.state.lock().expect("lock").calls
    }
}

impl Drop for RegServer {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    state: &Mutex<RegState>,
    answer: &Mutex<Answer>,
    ca: &TestCa,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use http_body_util::BodyExt;
    let reply = |status: u16, body: String| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("response")
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/register" {
        return reply(
            404,
            r#"{"code":"NotFound","message":"no such endpoint"}"#.into(),
        );
    }
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return reply(400, format!(r#"{{"code":"BadRequest","message":"{e}"}}"#)),
    };
    let parsed = RegistrationRequest::parse(&String::from_utf8_lossy(&body));
    let mut st = state.lock().expect("lock");
    st.calls += 1;
    st.times.push(Instant::now());
    let request = match parsed {
        Ok(r) => r,
        Err(e) => {
            return reply(
                400,
                serde_json::json!({"code": "InvalidRequest", "message": e.to_string()}).to_string(),
            )
        }
    };
    st.requests.push(request.clone());
    let answer = answer.lock().expect("lock").clone();
    match answer {
        Answer::Conflict => reply(
            409,
            serde_json::json!({
                "code": "ActivationLimitExceeded",
                "message": format!("activation {} has reached its registration limit", request.activation_id)
            })
            .to_string(),
        ),
        Answer::Register {
            instance,
            broker_url,
        } => {
            let certificate = ca.sign_csr(&request.csr, &instance);
            let r = RegistrationResponse {
                container_instance_arn: format!(
                    "arn:aws:ecs:us-east-1:000000000000:container-instance/{}/{instance}",
                    request.cluster
                ),
                cluster_arn: format!(
                    "arn:aws:ecs:us-east-1:000000000000:cluster/{}",
                    request.cluster
                ),
                instance_id: instance,
                certificate,
                ca_certificate: ca.pem.clone(),
                broker_url,
            };
            reply(200, serde_json::to_string(&r).expect("response json"))
        }
    }
}

/// A provisioning file for the registration server at `hub_url`.
pub fn provision_file(
    path: &Path,
    hub_url: &str,
    activation: &str,
    fingerprint: &str,
    extra: &str,
) -> PathBuf {
    std::fs::write(
        path,
        format!(
            "# written by the test\n\
             hub_url = \"{hub_url}\"\n\
             activation_id = \"{activation}\"\n\
             activation_code = \"Code{n}\"\n\
             cluster = \"edge\"\n\
             ca_fingerprint = \"sha256:{fingerprint}\"\n\
             {extra}",
            n = activation.split('-').next().unwrap_or_default(),
        ),
    )
    .expect("write provisioning file");
    path.to_path_buf()
}

/// Attributes as the agent sent them.
pub fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
