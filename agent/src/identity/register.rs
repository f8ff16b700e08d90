//! Registration: one HTTPS request to the hub with a CSR for the device key, over TLS
//! pinned to the provisioning file's CA fingerprint; the answer is checked before use.

use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair};
use serde::Deserialize;
use skerry_proto::registration::{Architecture, RegistrationRequest, RegistrationResponse};

use super::pin::{fingerprint, pem_certs, pinned_client_config};
use super::store::{broker_addr, check_certificate, Identity, IdentityMeta};
use crate::provision::Provision;

const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("cannot reach {url}: {message}")]
    Transport { url: String, message: String },
    #[error("{url} refused the registration: HTTP {status}: {code}: {message}")]
    Refused {
        url: String,
        status: u16,
        code: String,
        message: String,
    },
    #[error("{url} answered with an unusable registration: {message}")]
    BadResponse { url: String, message: String },
    #[error("cannot make the device key or its signing request: {0}")]
    Key(String),
    #[error("{0}")]
    Host(String),
}

/// What the device tells the hub about itself.
#[derive(Debug, Clone)]
pub struct HostFacts {
    pub hostname: String,
    pub architecture: Architecture,
    pub cpu_units: u32,
    pub memory_mib: u64,
}

impl HostFacts {
    pub fn gather() -> Result<HostFacts, RegisterError> {
        let architecture = match std::env::consts::ARCH {
            "aarch64" => Architecture::Arm64,
            "x86_64" => Architecture::X86_64,
            other => {
                return Err(RegisterError::Host(format!(
                    "architecture {other} has no ECS name; Skerry devices are arm64 or x86_64"
                )))
            }
        };
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let mut hostname: String = raw
            .trim()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .take(253)
            .collect();
        if hostname.is_empty() {
            hostname = "skerry-device".into();
        }
        use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::new()
                .with_cpu(CpuRefreshKind::new())
                .with_memory(MemoryRefreshKind::new().with_ram()),
        );
        let cores = match sys.cpus().len() {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(HostFacts {
            hostname,
            architecture,
            cpu_units: u32::try_from(cores * 1024).unwrap_or(u32::MAX),
            memory_mib: (sys.total_memory() >> 20).max(1),
        })
    }
}

/// What the hub says when it refuses.
#[derive(Deserialize)]
struct HubError {
    code: Option<String>,
    message: Option<String>,
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// One registration: POST `{hub_url}/v1/register` with a CSR for `key`, over TLS pinned to
/// the provisioning file's CA fingerprint; checks the answer before returning it.
pub async fn register(
    prov: &Provision,
    key: &KeyPair,
    facts: &HostFacts,
) -> Result<Identity, RegisterError> {
    let url = format!("{}/v1/register", prov.hub_url);
    let code = prov.activation_code.clone().ok_or_else(|| {
        RegisterError::Host(format!(
            "{} has no activation_code; write a fresh activation into it",
            prov.path.display()
        ))
    })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, facts.hostname.clone());
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(key)
        .and_then(|c| c.pem())
        .map_err(|e| RegisterError::Key(e.to_string()))?;
    let request = RegistrationRequest {
        activation_id: prov.activation_id.clone(),
        activation_code: code,
        cluster: prov.cluster.clone(),
        hostname: facts.hostname.clone(),
        architecture: facts.architecture,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        cpu_units: facts.cpu_units,
        memory_mib: facts.memory_mib,
        csr,
        attributes: prov.attributes.clone(),
    };
    let transport = |message: String| RegisterError::Transport {
        url: url.clone(),
        message,
    };
    let tls = pinned_client_config(prov.ca_fingerprint).map_err(transport)?;
    let client = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(REGISTER_TIMEOUT)
        .build()
        .map_err(|e| transport(chain(&e)))?;
    let resp = client
        .post(&url)
        .json(&request)
        .send()
        .await
        .map_err(|e| transport(chain(&e)))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| transport(chain(&e)))?;
    if !status.is_success() {
        let (code, message) = match serde_json::from_str::<HubError>(&body) {
            Ok(HubError { code, message }) => (
                code.unwrap_or_else(|| "unknown".into()),
                message.unwrap_or_default(),
            ),
            Err(_) => ("unknown".into(), body.chars().take(200).collect()),
        };
        return Err(RegisterError::Refused {
            url,
            status: status.as_u16(),
            code,
            message,
        });
    }
    let bad = |message: String| RegisterError::BadResponse {
        url: url.clone(),
        message,
    };
    let r = RegistrationResponse::parse(&body).map_err(|e| bad(e.to_string()))?;
    let ca = pem_certs(&r.ca_certificate).map_err(|e| bad(format!("caCertificate: {e}")))?;
    let actual = fingerprint(&ca[0]);
    if actual != prov.ca_fingerprint {
        return Err(bad(format!(
            "caCertificate has fingerprint {}, not the pinned {}",
            hex::encode(actual),
            hex::encode(prov.ca_fingerprint)
        )));
    }
    check_certificate(&r.certificate, key, &r.instance_id)
        .map_err(|e| bad(format!("certificate: {e}")))?;
    broker_addr(&r.broker_url).map_err(|e| bad(format!("brokerUrl: {e}")))?;
    Ok(Identity {
        meta: IdentityMeta {
            instance_id: r.instance_id,
            container_instance_arn: r.container_instance_arn,
            cluster_arn: r.cluster_arn,
            broker_url: r.broker_url,
            activation_id: prov.activation_id.clone(),
            hub_url: prov.hub_url.clone(),
        },
        key_pem: key.serialize_pem(),
        cert_pem: r.certificate,
        ca_pem: r.ca_certificate,
    })
}
