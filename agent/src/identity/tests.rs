//! Pinning, the stored identity and the start-up plan.

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

use super::store::{sibling, KEY_FILE};
use super::*;

struct Ca {
    key: KeyPair,
    params: CertificateParams,
    der: CertificateDer<'static>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("self-signed");
    Ca {
        der: cert.der().clone(),
        pem: cert.pem(),
        key,
        params,
    }
}

fn leaf(ca: &Ca, san: &str) -> CertificateDer<'static> {
    let key = KeyPair::generate().expect("key");
    let params = CertificateParams::new(vec![san.to_string()]).expect("params");
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    params.signed_by(&key, &issuer).expect("sign").der().clone()
}

fn verify(pin: [u8; 32], chain: &[CertificateDer<'static>], name: &str) -> Result<(), String> {
    let v = PinnedVerifier::new(pin);
    let name = ServerName::try_from(name.to_string()).expect("name");
    v.verify_server_cert(&chain[0], &chain[1..], &name, &[], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn pinned_verifier_accepts_the_right_pin_only() {
    let hub = ca("hub ca");
    let other = ca("other ca");
    let server = leaf(&hub, "hub.example");
    let pin = fingerprint(&hub.der);
    verify(pin, &[server.clone(), hub.der.clone()], "hub.example").expect("right pin");
    // Right pin, wrong name: webpki still checks the name.
    let e = verify(pin, &[server.clone(), hub.der.clone()], "evil.example").expect_err("name");
    assert!(
        e.contains("not valid for name") || e.contains("NotValidForName"),
        "{e}"
    );
    // A wrong pin is refused, naming both fingerprints.
    let wrong = fingerprint(&other.der);
    let e = verify(wrong, &[server.clone(), hub.der.clone()], "hub.example").expect_err("pin");
    assert!(e.contains("fingerprint mismatch"), "{e}");
    assert!(e.contains(&hex::encode(wrong)), "expected is named: {e}");
    assert!(e.contains(&hex::encode(pin)), "actual is named: {e}");
    // The pinned CA presented alongside a leaf it did not sign is no trust either.
    let forged = leaf(&other, "hub.example");
    verify(pin, &[forged, hub.der.clone()], "hub.example").expect_err("not signed by the pin");
    // No CA in the chain: nothing to pin to.
    verify(pin, &[server], "hub.example").expect_err("no CA presented");
}

fn device_identity(hub: &Ca) -> Identity {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "mi-0123456789abcdef0");
    let issuer = Issuer::from_params(&hub.params, &hub.key);
    let cert = params.signed_by(&key, &issuer).expect("sign");
    Identity {
        meta: IdentityMeta {
            instance_id: "mi-0123456789abcdef0".into(),
            container_instance_arn: "arn:aws:ecs:us-east-1:0:container-instance/default/x".into(),
            cluster_arn: "arn:aws:ecs:us-east-1:0:cluster/default".into(),
            broker_url: "mqtts://127.0.0.1:8883".into(),
            activation_id: "1da5d8c4-2a28-44b5-ac86-911892afea04".into(),
            hub_url: "https://127.0.0.1:8443".into(),
        },
        key_pem: key.serialize_pem(),
        cert_pem: cert.pem(),
        ca_pem: hub.pem.clone(),
    }
}

#[test]
fn identity_stores_whole_and_loads_back() {
    let hub = ca("hub ca");
    let id = device_identity(&hub);
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("identity");
    assert!(Identity::load(&dir).expect("load").is_none());
    id.store(&dir).expect("store");
    let back = Identity::load(&dir).expect("load").expect("stored");
    assert_eq!(back.meta, id.meta);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join(KEY_FILE))
        .expect("key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // Replacing it; a crash between the two renames restores the old one whole.
    id.store(&dir).expect("replace");
    std::fs::rename(&dir, sibling(&dir, ".old")).expect("simulate");
    assert_eq!(
        Identity::load(&dir).expect("recover").expect("old").meta,
        id.meta
    );
    // A certificate for another key is refused.
    let other = Identity {
        key_pem: KeyPair::generate().expect("key").serialize_pem(),
        ..id.clone()
    };
    other.store(&dir).expect("store");
    let e = Identity::load(&dir)
        .expect_err("mismatched key")
        .to_string();
    assert!(e.contains("not for this device's key"), "{e}");
}

#[test]
fn plan_follows_the_identity_and_the_activation() {
    let hub = ca("hub ca");
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("identity");
    let prov = tmp.path().join("provision.toml");
    let write = |activation: &str, code: bool| {
        std::fs::write(
            &prov,
            format!(
                "hub_url = \"https://127.0.0.1:8443\"\nactivation_id = \"{activation}\"\n{}\
                 ca_fingerprint = \"{}\"\n",
                if code {
                    "activation_code = \"abc123\"\n"
                } else {
                    ""
                },
                hex::encode(fingerprint(&hub.der))
            ),
        )
        .expect("write");
    };
    let same = "1da5d8c4-2a28-44b5-ac86-911892afea04";
    let other = "2eb6e9d5-3b39-45c6-bd97-a22903b0fb15";
    assert!(matches!(Plan::decide(&dir, None), Plan::Standalone));
    assert!(
        matches!(Plan::decide(&dir, Some(&prov)), Plan::Standalone),
        "no file"
    );
    write(same, false);
    assert!(
        matches!(Plan::decide(&dir, Some(&prov)), Plan::Standalone),
        "no code"
    );
    write(same, true);
    assert!(matches!(
        Plan::decide(&dir, Some(&prov)),
        Plan::Register {
            replacing: None,
            ..
        }
    ));
    device_identity(&hub).store(&dir).expect("store");
    assert!(matches!(Plan::decide(&dir, None), Plan::Stored(_)));
    assert!(
        matches!(Plan::decide(&dir, Some(&prov)), Plan::Scrub { .. }),
        "same activation"
    );
    write(other, true);
    assert!(matches!(
        Plan::decide(&dir, Some(&prov)),
        Plan::Register {
            replacing: Some(_),
            ..
        }
    ));
    write(other, false);
    assert!(
        matches!(Plan::decide(&dir, Some(&prov)), Plan::Stored(_)),
        "no code: keep"
    );
    std::fs::write(&prov, "hub_url = 1\n").expect("write");
    assert!(
        matches!(Plan::decide(&dir, Some(&prov)), Plan::Stored(_)),
        "bad file: keep"
    );
}

#[test]
fn broker_addresses() {
    assert_eq!(
        broker_addr("mqtts://hub.example:8883"),
        Ok(("hub.example".into(), 8883))
    );
    assert_eq!(
        broker_addr("mqtts://10.0.2.2"),
        Ok(("10.0.2.2".into(), 8883))
    );
    assert_eq!(broker_addr("mqtts://[::1]:1883"), Ok(("::1".into(), 1883)));
    assert!(broker_addr("mqtt://hub:1883").is_err());
    assert!(broker_addr("mqtts://hub:x").is_err());
}
