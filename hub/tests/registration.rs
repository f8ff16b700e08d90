//! Device registration against the real `skerry-hub` binary: activations made with the real
//! aws CLI, a key and CSR made here as a device would, HTTPS with the hub's CA as the only
//! root. Loopback only.

mod common;

use std::fs;
use std::process::Command;
use std::sync::Arc;

use common::Hub;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use skerry_hub::store::Store;
use skerry_proto::registration::{is_instance_id, RegistrationResponse};

const ACCOUNT: &str = "arn:aws:ecs:us-east-1:000000000000";

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("PEM certificate")
        .to_vec()
}

fn ca_fingerprint(hub: &Hub) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_skerry-hub"))
        .args(["ca-fingerprint", "--config"])
        .arg(hub.config())
        .output()
        .expect("run ca-fingerprint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf8")
        .trim()
        .to_string()
}

/// A client that trusts the hub's CA and nothing else.
fn client(ca_pem: &str) -> Client {
    Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA"))
        .https_only(true)
        .timeout(std::time::Duration::from_secs(20))
        .build()
        .expect("client")
}

fn csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "pi-1");
    params
        .serialize_request(key)
        .expect("csr")
        .pem()
        .expect("pem")
}

fn activation(hub: &Hub, limit: u32) -> (String, String) {
    let a = hub.ok(&[
        "ssm",
        "create-activation",
        "--iam-role",
        "ecsAnywhereRole",
        "--registration-limit",
        &limit.to_string(),
    ]);
    (
        a["ActivationId"].as_str().expect("id").to_string(),
        a["ActivationCode"].as_str().expect("code").to_string(),
    )
}

fn request(id: &str, code: &str, csr: &str) -> Value {
    json!({
        "activationId": id,
        "activationCode": code,
        "hostname": "pi-1",
        "architecture": "arm64",
        "agentVersion": "0.1.0",
        "cpuUnits": 4096,
        "memoryMib": 3800,
        "csr": csr,
        "attributes": {"site": "shop"},
    })
}

/// POSTs a registration; returns the status and the JSON body.
fn register(client: &Client, hub: &Hub, body: &Value) -> (StatusCode, Value) {
    let resp = client
        .post(hub.registration_url("/v1/register"))
        .json(body)
        .send()
        .expect("POST /v1/register");
    let status = resp.status();
    let text = resp.text().expect("body");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

/// The refusal's status, code and message; its message must name `needle`.
fn refused(client: &Client, hub: &Hub, body: &Value, status: StatusCode, code: &str, needle: &str) {
    let (got, v) = register(client, hub, body);
    assert_eq!(got, status, "{v}");
    assert_eq!(v["code"], code, "{v}");
    let message = v["message"].as_str().expect("message");
    assert!(
        message.contains(needle),
        "{message:?} should name {needle:?}"
    );
}

#[test]
fn device_registers_with_an_activation_and_refusals_say_why() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());

    // The CA on disk, the one the hub serves and the pinned fingerprint all agree.
    let ca_pem = fs::read_to_string(hub.dir.join("state/ca/ca.crt")).expect("CA file");
    let fingerprint = ca_fingerprint(&hub);
    assert_eq!(fingerprint, hex::encode(Sha256::digest(der(&ca_pem))));
    let client = client(&ca_pem);
    let served = client
        .get(hub.registration_url("/v1/ca"))
        .send()
        .expect("GET /v1/ca")
        .text()
        .expect("body");
    assert_eq!(served, ca_pem);
    // A client trusting only the public roots cannot talk to the hub.
    let stranger = Client::builder().use_rustls_tls().build().expect("client");
    assert!(stranger.get(hub.registration_url("/v1/ca")).send().is_err());

    let (id, code) = activation(&hub, 1);
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let (status, body) = register(&client, &hub, &request(&id, &code, &csr(&key)));
    assert_eq!(status, StatusCode::OK, "{body}");
    let resp = RegistrationResponse::parse(&body.to_string()).expect("response shape");
    assert!(is_instance_id(&resp.instance_id), "{}", resp.instance_id);
    assert_eq!(resp.cluster_arn, format!("{ACCOUNT}:cluster/default"));
    let ci = resp
        .container_instance_arn
        .strip_prefix(&format!("{ACCOUNT}:container-instance/default/"))
        .expect("container instance ARN in ECS's shape");
    assert!(
        ci.len() == 32 && ci.bytes().all(|b| b.is_ascii_hexdigit()),
        "{ci}"
    );
    assert_eq!(resp.broker_url, "mqtts://127.0.0.1:8883");
    assert_eq!(resp.ca_certificate, ca_pem);

    // The certificate chains to the CA for client authentication, is for the device's own
    // key, and names the instance.
    let leaf = der(&resp.certificate);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(&ca_pem))).expect("root");
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .expect("verifier");
    verifier
        .verify_client_cert(&CertificateDer::from(leaf.clone()), &[], UnixTime::now())
        .expect("the device certificate chains to the hub's CA");
    let (_, cert) = x509_parser::parse_x509_certificate(&leaf).expect("x509");
    let cns: Vec<&str> = cert
        .subject()
        .iter_common_name()
        .map(|c| c.as_str().expect("utf8"))
        .collect();
    assert_eq!(cns, [resp.instance_id.as_str()]);
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw()
    );

    // The cluster was made on demand, and the activation is used up.
    let clusters = hub.ok(&["ecs", "list-clusters"]);
    assert_eq!(
        clusters["clusterArns"],
        json!([format!("{ACCOUNT}:cluster/default")])
    );
    let listed = hub.ok(&[
        "ssm",
        "describe-activations",
        "--filters",
        &format!("FilterKey=ActivationIds,FilterValues={id}"),
    ]);
    assert_eq!(listed["ActivationList"][0]["RegistrationsCount"], 1);
    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    refused(
        &client,
        &hub,
        &request(&id, &code, &csr(&other)),
        StatusCode::CONFLICT,
        "ActivationLimitExceeded",
        "all 1 of its registrations",
    );

    let (id5, code5) = activation(&hub, 5);
    let mut wrong = code5.clone();
    let last = if wrong.ends_with('A') { "B" } else { "A" };
    wrong.replace_range(wrong.len() - 1.., last);
    refused(
        &client,
        &hub,
        &request(&id5, &wrong, &csr(&other)),
        StatusCode::FORBIDDEN,
        "InvalidActivationCode",
        &id5,
    );
    let unknown = "00000000-0000-4000-8000-000000000000";
    refused(
        &client,
        &hub,
        &request(unknown, &code5, &csr(&other)),
        StatusCode::NOT_FOUND,
        "ActivationNotFound",
        unknown,
    );
    let garbage =
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n";
    refused(
        &client,
        &hub,
        &request(&id5, &code5, garbage),
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        "csr",
    );
    refused(
        &client,
        &hub,
        &request(&id5, &code5, "hello"),
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        "csr",
    );
    let mut elsewhere = request(&id5, &code5, &csr(&other));
    elsewhere["cluster"] = "edge".into();
    refused(
        &client,
        &hub,
        &elsewhere,
        StatusCode::NOT_FOUND,
        "ClusterNotFound",
        "edge",
    );
    // Once the cluster exists, the same request registers into it.
    hub.ok(&["ecs", "create-cluster", "--cluster-name", "edge"]);
    let (status, body) = register(&client, &hub, &elsewhere);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["clusterArn"], format!("{ACCOUNT}:cluster/edge"));
    let edge_instance = body["instanceId"].as_str().expect("id").to_string();
    // None of the refusals used a registration.
    let listed = hub.ok(&[
        "ssm",
        "describe-activations",
        "--filters",
        &format!("FilterKey=ActivationIds,FilterValues={id5}"),
    ]);
    assert_eq!(listed["ActivationList"][0]["RegistrationsCount"], 1);

    // An expired activation: moved into the past through the store, as SSM has no call.
    let (old, old_code) = activation(&hub, 5);
    assert!(Store::open(&hub.dir.join("state"))
        .expect("store")
        .set_activation_expiry(&old, 1.0)
        .expect("expire"));
    refused(
        &client,
        &hub,
        &request(&old, &old_code, &csr(&other)),
        StatusCode::GONE,
        "ActivationExpired",
        "1970-01-01T00:00:01Z",
    );

    // Bad JSON names the field; an oversized body is refused before it is read whole.
    let mut bad = request(&id5, &code5, &csr(&other));
    bad["cpuUnits"] = 0.into();
    refused(
        &client,
        &hub,
        &bad,
        StatusCode::BAD_REQUEST,
        "InvalidRequest",
        "cpuUnits",
    );
    let big = client
        .post(hub.registration_url("/v1/register"))
        .body(vec![b' '; 128 * 1024])
        .send()
        .expect("POST");
    assert_eq!(big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let log = fs::read_to_string(hub.dir.join("hub.log")).expect("log");
    assert!(log.contains(&resp.instance_id), "registrations are logged");
    for secret in [&code, &code5, &old_code] {
        assert!(
            !log.contains(secret.as_str()),
            "an activation code reached the log"
        );
    }

    // A restart keeps the CA and the registrations.
    hub.stop();
    let hub = Hub::start(tmp.path());
    assert_eq!(ca_fingerprint(&hub), fingerprint);
    let served = client
        .get(hub.registration_url("/v1/ca"))
        .send()
        .expect("the restarted hub still verifies against the pinned CA")
        .text()
        .expect("body");
    assert_eq!(served, ca_pem);
    let store = Store::open(&hub.dir.join("state")).expect("store");
    let instances = store.container_instances("default").expect("list");
    assert_eq!(instances.len(), 1);
    let i = &instances[0];
    assert_eq!(i.id, resp.instance_id);
    assert_eq!(i.arn, resp.container_instance_arn);
    assert_eq!(
        (i.hostname.as_str(), i.architecture.as_str()),
        ("pi-1", "arm64")
    );
    assert_eq!((i.cpu_units, i.memory_mib), (4096, 3800));
    assert_eq!(i.status, "ACTIVE");
    assert_eq!(i.cert_serial, hex::encode(cert.raw_serial()));
    assert_eq!(
        serde_json::from_str::<Value>(&i.attributes).expect("json"),
        json!({"site": "shop"})
    );
    let edge = store.container_instances("edge").expect("list");
    assert_eq!(
        edge.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        [edge_instance.as_str()]
    );
    refused(
        &client,
        &hub,
        &request(&id, &code, &csr(&other)),
        StatusCode::CONFLICT,
        "ActivationLimitExceeded",
        &id,
    );
    hub.stop();
}

#[test]
fn two_devices_racing_for_the_last_registration_one_wins() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let hub = Hub::start(tmp.path());
    let ca_pem = fs::read_to_string(hub.dir.join("state/ca/ca.crt")).expect("CA file");
    let (id, code) = activation(&hub, 1);
    let answers: Vec<(StatusCode, Value)> = std::thread::scope(|s| {
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let (hub, id, code, ca_pem) = (&hub, &id, &code, &ca_pem);
                s.spawn(move || {
                    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
                    register(&client(ca_pem), hub, &request(id, code, &csr(&key)))
                })
            })
            .collect();
        racers
            .into_iter()
            .map(|r| r.join().expect("racer"))
            .collect()
    });
    let won = answers.iter().filter(|a| a.0 == StatusCode::OK).count();
    let lost = answers
        .iter()
        .filter(|a| a.0 == StatusCode::CONFLICT)
        .count();
    assert_eq!((won, lost), (1, 3), "{answers:?}");
    let store = Store::open(&hub.dir.join("state")).expect("store");
    assert_eq!(store.container_instances("default").expect("list").len(), 1);
    hub.stop();
}
