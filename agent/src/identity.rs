//! The device's identity: its key (made here, never sent anywhere), the client certificate
//! the hub's CA signed for it, the CA itself, and what registration answered (instance id,
//! ARNs, broker URL). Kept in `DATA_DIR/identity/` (`key.pem` 0600, `cert.pem`, `ca.pem`,
//! `identity.json`), written as a whole directory renamed into place, so a power cut leaves
//! no identity, the old one or the new one, never a mix.
//!
//! Registration is one HTTPS request to the hub, trusted only through the CA fingerprint of
//! the provisioning file ([`PinnedVerifier`]): no system roots, no trust on first use.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, PublicKeyData};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skerry_proto::registration::{Architecture, RegistrationRequest, RegistrationResponse};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::Backoff;
use crate::provision::Provision;

const KEY_FILE: &str = "key.pem";
const CERT_FILE: &str = "cert.pem";
const CA_FILE: &str = "ca.pem";
const META_FILE: &str = "identity.json";
const REGISTER_TIMEOUT: Duration = Duration::from_secs(30);
const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(240);

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("identity in {path} is unusable: {message}; remove the directory and provision the device again")]
    Invalid { path: PathBuf, message: String },
}

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

/// What `identity.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityMeta {
    pub instance_id: String,
    pub container_instance_arn: String,
    pub cluster_arn: String,
    pub broker_url: String,
    /// The activation and hub this identity came from: a provisioning file naming others
    /// asks for a new registration.
    pub activation_id: String,
    pub hub_url: String,
}

#[derive(Clone)]
pub struct Identity {
    pub meta: IdentityMeta,
    pub key_pem: String,
    pub cert_pem: String,
    pub ca_pem: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> IdentityError {
    let path = path.to_path_buf();
    move |source| IdentityError::Io { op, path, source }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), IdentityError> {
    std::fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", dir))
}

impl Identity {
    /// Loads the identity stored in `dir`; `Ok(None)` if the device has none. Finishes or
    /// undoes a replacement a crash interrupted.
    pub fn load(dir: &Path) -> Result<Option<Identity>, IdentityError> {
        let old = sibling(dir, ".old");
        let new = sibling(dir, ".new");
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !dir.exists() && old.exists() {
            // Crashed between moving the old identity aside and moving the new one in.
            std::fs::rename(&old, dir).map_err(io("restore", &old))?;
            sync_dir(parent)?;
        }
        for leftover in [&old, &new] {
            if leftover.exists() {
                std::fs::remove_dir_all(leftover).map_err(io("remove", leftover))?;
            }
        }
        if !dir.exists() {
            return Ok(None);
        }
        let read = |name: &str| {
            let p = dir.join(name);
            std::fs::read_to_string(&p).map_err(io("read", &p))
        };
        let meta_text = read(META_FILE)?;
        let meta: IdentityMeta =
            serde_json::from_str(&meta_text).map_err(|e| IdentityError::Invalid {
                path: dir.join(META_FILE),
                message: e.to_string(),
            })?;
        let id = Identity {
            meta,
            key_pem: read(KEY_FILE)?,
            cert_pem: read(CERT_FILE)?,
            ca_pem: read(CA_FILE)?,
        };
        let key = KeyPair::from_pem(&id.key_pem).map_err(|e| IdentityError::Invalid {
            path: dir.join(KEY_FILE),
            message: e.to_string(),
        })?;
        check_certificate(&id.cert_pem, &key, &id.meta.instance_id).map_err(|message| {
            IdentityError::Invalid {
                path: dir.join(CERT_FILE),
                message,
            }
        })?;
        Ok(Some(id))
    }

    /// Writes the identity to `dir` as a whole: files in `dir.new`, fsynced, then renamed
    /// over `dir` (the old one moved aside first and removed last).
    pub fn store(&self, dir: &Path) -> Result<(), IdentityError> {
        let parent = dir.parent().unwrap_or(Path::new("/"));
        let new = sibling(dir, ".new");
        let old = sibling(dir, ".old");
        if new.exists() {
            std::fs::remove_dir_all(&new).map_err(io("remove", &new))?;
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&new)
            .map_err(io("create", &new))?;
        let meta =
            serde_json::to_string_pretty(&self.meta).map_err(|e| IdentityError::Invalid {
                path: new.join(META_FILE),
                message: e.to_string(),
            })?;
        for (name, text, mode) in [
            (KEY_FILE, self.key_pem.as_str(), 0o600),
            (CERT_FILE, self.cert_pem.as_str(), 0o644),
            (CA_FILE, self.ca_pem.as_str(), 0o644),
            (META_FILE, meta.as_str(), 0o644),
        ] {
            let p = new.join(name);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&p)
                .map_err(io("create", &p))?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io("write", &p))?;
        }
        sync_dir(&new)?;
        if dir.exists() {
            if old.exists() {
                std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
            }
            std::fs::rename(dir, &old).map_err(io("move aside", dir))?;
            sync_dir(parent)?;
        }
        std::fs::rename(&new, dir).map_err(io("rename into place", &new))?;
        sync_dir(parent)?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io("remove", &old))?;
            sync_dir(parent)?;
        }
        Ok(())
    }

    /// The broker's `host:port` from `mqtts://HOST:PORT`.
    pub fn broker_addr(&self) -> Result<(String, u16), String> {
        broker_addr(&self.meta.broker_url)
    }
}

pub fn broker_addr(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("mqtts://")
        .ok_or_else(|| format!("broker URL {url:?} does not start with mqtts://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("broker URL {url:?} has an unclosed '['"))?;
            (host, after.strip_prefix(':'))
        }
        None => match rest.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (rest, None),
        },
    };
    let port = match port {
        None => 8883,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("broker URL {url:?} has a bad port {p:?}"))?,
    };
    if host.is_empty() {
        return Err(format!("broker URL {url:?} has no host"));
    }
    Ok((host.to_string(), port))
}

/// SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

/// The DER certificates of a PEM text, in order.
pub fn pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}

/// Checks that the PEM certificate is for `key` and names `instance_id` as its CN.
fn check_certificate(cert_pem: &str, key: &KeyPair, instance_id: &str) -> Result<(), String> {
    let der = pem_certs(cert_pem)?.remove(0);
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    if cert.public_key().raw != key.subject_public_key_info().as_slice() {
        return Err("the certificate is not for this device's key".into());
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default();
    if cn != instance_id {
        return Err(format!(
            "the certificate's CN is {cn:?}, not the instance id {instance_id:?}"
        ));
    }
    Ok(())
}

/// A rustls verifier that trusts exactly one CA: the certificate, among those the server
/// presents, whose SHA-256 is the pinned fingerprint. The end-entity is then verified
/// against it alone with webpki (name, signature, validity).
#[derive(Debug)]
pub struct PinnedVerifier {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl PinnedVerifier {
    pub fn new(pin: [u8; 32]) -> Self {
        Self {
            pin,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
        }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented: Vec<&CertificateDer<'_>> =
            std::iter::once(end_entity).chain(intermediates).collect();
        let Some(ca) = presented.iter().find(|c| fingerprint(c) == self.pin) else {
            let actual: Vec<String> = presented
                .iter()
                .map(|c| hex::encode(fingerprint(c)))
                .collect();
            return Err(rustls::Error::General(format!(
                "CA fingerprint mismatch: expected {}, the server presented {}; check \
                 ca_fingerprint in the provisioning file",
                hex::encode(self.pin),
                actual.join(", ")
            )));
        };
        let mut roots = RootCertStore::empty();
        roots
            .add((*ca).clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("the pinned CA is unusable: {e}")))?;
        let others: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| fingerprint(c) != self.pin)
            .cloned()
            .collect();
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(format!("cannot build a verifier: {e}")))?;
        inner.verify_server_cert(end_entity, &others, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A TLS client config that trusts only the pinned CA.
pub fn pinned_client_config(pin: [u8; 32]) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedVerifier::new(pin)))
        .with_no_client_auth())
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

/// What the device has to work with at start, read before anything connects.
#[derive(Debug)]
pub enum Plan {
    /// No provisioning file and no identity: local `apply` only.
    Standalone,
    /// An identity to use as it is.
    Stored(Identity),
    /// Registration to do (`replacing` the stored identity, if any).
    Register {
        provision: Provision,
        replacing: Option<Identity>,
    },
    /// Registered already with this activation; only the code is left to scrub (a crash
    /// came between storing the identity and scrubbing).
    Scrub {
        identity: Identity,
        provision: Provision,
    },
}

impl Plan {
    /// Decides from the stored identity in `dir` and the provisioning file at `provision`.
    /// Problems are logged with their fix; the agent runs its local tasks whatever they are.
    pub fn decide(dir: &Path, provision: Option<&Path>) -> Plan {
        let stored = match Identity::load(dir) {
            Ok(s) => s,
            Err(e) => {
                warn!("{e}");
                None
            }
        };
        let prov = match provision.map(Provision::load) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(p))) => Some(p),
            Some(Err(e)) => {
                tracing::error!("{e}");
                None
            }
        };
        match (stored, prov) {
            (None, None) => Plan::Standalone,
            (Some(id), None) => Plan::Stored(id),
            (Some(id), Some(p)) if p.activation_code.is_none() => {
                if p.activation_id != id.meta.activation_id || p.hub_url != id.meta.hub_url {
                    warn!(
                        instance = %id.meta.instance_id,
                        file = %p.path.display(),
                        "the provisioning file names another activation or hub but has no \
                         activation_code; keeping the stored identity (add the code to re-register)"
                    );
                }
                Plan::Stored(id)
            }
            (None, Some(p)) if p.activation_code.is_none() => {
                tracing::error!(
                    file = %p.path.display(),
                    "no identity is stored and the provisioning file has no activation_code; \
                     write a fresh activation (activation_id and activation_code) into it. \
                     Running standalone meanwhile"
                );
                Plan::Standalone
            }
            (Some(id), Some(p))
                if p.activation_id == id.meta.activation_id && p.hub_url == id.meta.hub_url =>
            {
                Plan::Scrub {
                    identity: id,
                    provision: p,
                }
            }
            (replacing, Some(provision)) => Plan::Register {
                provision,
                replacing,
            },
        }
    }
}

/// Carries out the plan: registers (retrying with backoff until it works or `shutdown`),
/// stores the identity, scrubs the activation code. Returns the identity to connect with and
/// whether it is a new registration.
pub async fn establish(
    plan: Plan,
    dir: &Path,
    shutdown: &CancellationToken,
) -> Option<(Identity, bool)> {
    let (provision, replacing) = match plan {
        Plan::Standalone => return None,
        Plan::Stored(id) => return Some((id, false)),
        Plan::Scrub {
            identity,
            provision,
        } => {
            info!(
                instance = %identity.meta.instance_id,
                activation = %provision.activation_id,
                "already registered with this activation; removing the activation code from {}",
                provision.path.display()
            );
            scrub(&provision, &identity.meta.instance_id);
            return Some((identity, false));
        }
        Plan::Register {
            provision,
            replacing,
        } => (provision, replacing),
    };
    match &replacing {
        Some(old) => warn!(
            instance = %old.meta.instance_id,
            old_activation = %old.meta.activation_id,
            old_hub = %old.meta.hub_url,
            activation = %provision.activation_id,
            hub = %provision.hub_url,
            "re-registering: the provisioning file carries a new activation; the stored identity \
             will be replaced"
        ),
        None => info!(
            activation = %provision.activation_id,
            hub = %provision.hub_url,
            cluster = %provision.cluster,
            "registering with the hub"
        ),
    }
    let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
    let key = match KeyPair::generate() {
        Ok(k) => k,
        Err(e) => {
            tracing::error!("cannot make the device key: {e}");
            return None;
        }
    };
    let identity = loop {
        let attempt = match HostFacts::gather() {
            Ok(facts) => register(&provision, &key, &facts).await,
            Err(e) => Err(e),
        };
        match attempt {
            Ok(id) => break id,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(
                    activation = %provision.activation_id,
                    retry_in_ms = delay.as_millis() as u64,
                    "registration failed: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    };
    backoff.reset();
    loop {
        match identity.store(dir) {
            Ok(()) => break,
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(
                    retry_in_ms = delay.as_millis() as u64,
                    "cannot store the identity: {e}"
                );
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.cancelled() => return None,
                }
            }
        }
    }
    info!(
        instance = %identity.meta.instance_id,
        container_instance = %identity.meta.container_instance_arn,
        broker = %identity.meta.broker_url,
        "registered; identity stored in {}",
        dir.display()
    );
    scrub(&provision, &identity.meta.instance_id);
    Some((identity, true))
}

fn scrub(provision: &Provision, instance_id: &str) {
    match provision.scrub(instance_id) {
        Ok(()) => info!(
            instance = %instance_id,
            "activation code removed from {}",
            provision.path.display()
        ),
        // The next start sees the same activation again and only scrubs.
        Err(e) => warn!("{e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, IsCa, Issuer};

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
                container_instance_arn: "arn:aws:ecs:us-east-1:0:container-instance/default/x"
                    .into(),
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
        let write =
            |activation: &str, code: bool| {
                std::fs::write(
                    &prov,
                    format!(
                    "hub_url = \"https://127.0.0.1:8443\"\nactivation_id = \"{activation}\"\n{}\
                     ca_fingerprint = \"{}\"\n",
                    if code { "activation_code = \"abc123\"\n" } else { "" },
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
}
