//! Device registration over HTTPS: `POST /v1/register` takes a
//! [`RegistrationRequest`] (an SSM activation id and code, the cluster, what the device
//! offers, and a CSR for the key it made) and answers with its identity: instance id,
//! container instance ARN and a client certificate signed by the hub's CA. `GET /v1/ca`
//! serves the CA certificate. The listener's certificate comes from the same CA and is
//! served with the CA behind it, so a device that pins the CA's fingerprint verifies the
//! hub before it sends its activation code.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{header, Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rand::RngCore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use skerry_proto::registration::{RegistrationRequest, RegistrationResponse};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::ca::{Ca, CaError};
use crate::listener::{
    accept_next, read_body, Accepted, BodyError, PerAddress, REGISTRATION_PER_ADDRESS,
};
use crate::state::Hub;
use crate::store::{ActivationFilter, CodeHash, NewInstance, RegisterOutcome, StoreError};

/// The cluster ECS Anywhere registers into when none is named, made on first use.
pub const DEFAULT_CLUSTER: &str = "default";
/// A request is a few hundred bytes of JSON and a CSR; anything near this is not one.
const MAX_BODY: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 256;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("cannot make the registration listener's certificate: {0}")]
    Certificate(#[source] CaError),
    #[error("cannot set up TLS for the registration listener: {0}")]
    Tls(String),
    #[error("cannot listen for registrations on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Why a registration was refused; each names the thing concerned and the way forward.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is over {MAX_BODY} bytes")]
    TooLarge,
    #[error("the activation code does not match activation {id}; use the ActivationCode that create-activation returned with it")]
    WrongCode { id: String },
    #[error("activation {id} does not exist; create one with `aws ssm create-activation`")]
    UnknownActivation { id: String },
    #[error("activation {id} expired at {at}; create a new one with `aws ssm create-activation`")]
    Expired { id: String, at: String },
    #[error("activation {id} has been used for all {limit} of its registrations; create a new one with `aws ssm create-activation --registration-limit N`")]
    Exhausted { id: String, limit: i64 },
    #[error("cluster {name} does not exist; create it with `aws ecs create-cluster --cluster-name {name}` or register into {DEFAULT_CLUSTER}")]
    UnknownCluster { name: String },
    #[error("internal error; see the hub's log")]
    Internal,
}

impl Refusal {
    fn status(&self) -> StatusCode {
        match self {
            Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
            Refusal::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::WrongCode { .. } => StatusCode::FORBIDDEN,
            Refusal::UnknownActivation { .. } | Refusal::UnknownCluster { .. } => {
                StatusCode::NOT_FOUND
            }
            Refusal::Expired { .. } => StatusCode::GONE,
            Refusal::Exhausted { .. } => StatusCode::CONFLICT,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Refusal::BadRequest(_) => "InvalidRequest",
            Refusal::TooLarge => "RequestTooLarge",
            Refusal::WrongCode { .. } => "InvalidActivationCode",
            Refusal::UnknownActivation { .. } => "ActivationNotFound",
            Refusal::Expired { .. } => "ActivationExpired",
            Refusal::Exhausted { .. } => "ActivationLimitExceeded",
            Refusal::UnknownCluster { .. } => "ClusterNotFound",
            Refusal::Internal => "InternalError",
        }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "store failure during registration");
        Refusal::Internal
    }
}

/// What registration needs from the rest of the hub.
pub struct Registrar {
    pub hub: Arc<Hub>,
    pub ca: Arc<Ca>,
    /// Sent to devices: where their MQTT link connects.
    pub broker_url: String,
}

impl Registrar {
    /// Checks and performs one registration at the hub's time `now` (Unix seconds). Blocks
    /// on the store; run it on the blocking pool.
    pub fn register(&self, body: &[u8], now: f64) -> Result<RegistrationResponse, Refusal> {
        let text = std::str::from_utf8(body)
            .map_err(|_| Refusal::BadRequest("the request body is not UTF-8 JSON".into()))?;
        let req = RegistrationRequest::parse(text).map_err(|e| {
            Refusal::BadRequest(if e.path.is_empty() {
                e.message
            } else {
                e.to_string()
            })
        })?;
        let store = &self.hub.store;
        let id = &req.activation_id;
        let unknown = || Refusal::UnknownActivation { id: id.clone() };
        let stored = store.activation_code_hash(id)?.ok_or_else(unknown)?;
        if !code_matches(&stored, &req.activation_code) {
            return Err(Refusal::WrongCode { id: id.clone() });
        }
        // Checked here for a precise answer before any signing; the transaction below
        // checks again, because another device may take the last registration meanwhile.
        let filter = ActivationFilter {
            ids: vec![id.clone()],
            ..ActivationFilter::default()
        };
        let activation = store
            .activations(&filter, None, 1)?
            .pop()
            .ok_or_else(unknown)?;
        if activation.expires_at <= now {
            return Err(expired(id, activation.expires_at));
        }
        if activation.registrations_count >= activation.registration_limit {
            return Err(Refusal::Exhausted {
                id: id.clone(),
                limit: activation.registration_limit,
            });
        }
        let create_cluster = req.cluster == DEFAULT_CLUSTER;
        let unknown_cluster = || Refusal::UnknownCluster {
            name: req.cluster.clone(),
        };
        let cluster_active = store
            .cluster(&req.cluster)?
            .is_some_and(|c| c.status == "ACTIVE");
        if !create_cluster && !cluster_active {
            return Err(unknown_cluster());
        }
        let instance_id = new_instance_id();
        let (certificate, cert_serial) =
            self.ca
                .sign_device_csr(&req.csr, &instance_id)
                .map_err(|e| match e {
                    CaError::InvalidCsr(reason) => Refusal::BadRequest(format!("csr: {reason}")),
                    other => {
                        tracing::error!(error = %other, "cannot sign a device certificate");
                        Refusal::Internal
                    }
                })?;
        let memory_mib = i64::try_from(req.memory_mib)
            .map_err(|_| Refusal::BadRequest("memoryMib: is too large".into()))?;
        let container_instance_arn = self
            .hub
            .arns
            .container_instance(&req.cluster, &random_hex(16));
        let new = NewInstance {
            id: instance_id.clone(),
            arn: container_instance_arn.clone(),
            cluster: req.cluster.clone(),
            activation_id: id.clone(),
            hostname: req.hostname.clone(),
            architecture: architecture_name(&req),
            agent_version: req.agent_version.clone(),
            cpu_units: i64::from(req.cpu_units),
            memory_mib,
            attributes: serde_json::to_string(&req.attributes)
                .expect("a map of strings always serializes"),
            cert_serial,
        };
        match store.register_instance(&new, create_cluster, now)? {
            RegisterOutcome::Registered(_) => {}
            RegisterOutcome::ActivationGone => return Err(unknown()),
            RegisterOutcome::ActivationExpired { expires_at } => {
                return Err(expired(id, expires_at))
            }
            RegisterOutcome::ActivationExhausted { limit } => {
                return Err(Refusal::Exhausted {
                    id: id.clone(),
                    limit,
                })
            }
            RegisterOutcome::ClusterMissing => return Err(unknown_cluster()),
        }
        tracing::info!(
            instance = %instance_id,
            activation = %id,
            cluster = %req.cluster,
            hostname = %req.hostname,
            "device registered"
        );
        Ok(RegistrationResponse {
            instance_id,
            container_instance_arn,
            cluster_arn: self.hub.arns.cluster(&req.cluster),
            certificate,
            ca_certificate: self.ca.cert_pem().to_string(),
            broker_url: self.broker_url.clone(),
        })
    }
}

fn expired(id: &str, expires_at: f64) -> Refusal {
    let at = UNIX_EPOCH + Duration::from_secs_f64(expires_at.max(0.0));
    Refusal::Expired {
        id: id.to_string(),
        at: humantime::format_rfc3339_seconds(at).to_string(),
    }
}

fn architecture_name(req: &RegistrationRequest) -> String {
    serde_json::to_value(req.architecture)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("architectures serialize as their ECS name")
}

/// Compares in constant time so the answer's timing says nothing about how much of a
/// guessed code was right. The hash is SHA-256 over salt then code, as `ssm` stores it.
fn code_matches(stored: &CodeHash, code: &str) -> bool {
    let mut h = Sha256::new();
    h.update(&stored.salt);
    h.update(code.as_bytes());
    bool::from(h.finalize().as_slice().ct_eq(&stored.hash))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// `mi-` and 17 lowercase hex digits, as SSM names managed instances.
fn new_instance_id() -> String {
    let mut h = random_hex(9);
    h.truncate(17);
    format!("mi-{h}")
}

/// The HTTPS listener devices register with.
pub struct Listener {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    registrar: Arc<Registrar>,
}

impl Listener {
    /// Issues the listener's certificate for `names` from the CA and binds `addr`.
    pub async fn bind(
        addr: SocketAddr,
        names: &[String],
        registrar: Registrar,
    ) -> Result<Self, ListenError> {
        let (cert_pem, key_pem) = registrar
            .ca
            .issue_server_cert(names)
            .map_err(ListenError::Certificate)?;
        let tls = |e: String| ListenError::Tls(e);
        let leaf =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| tls(e.to_string()))?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(e.to_string()))?;
        let chain = vec![leaf, CertificateDer::from(registrar.ca.cert_der().to_vec())];
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| tls(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ListenError::Bind { addr, source })?;
        Ok(Self {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            registrar: Arc::new(registrar),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled, then lets open requests finish for up to
    /// `grace`.
    pub async fn run(self, shutdown: CancellationToken, grace: Duration) {
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_address = PerAddress::new(REGISTRATION_PER_ADDRESS);
        while let Some(Accepted { stream, peer, hold }) = accept_next(
            &self.listener,
            &slots,
            &per_address,
            &shutdown,
            "registration",
        )
        .await
        {
            let acceptor = self.acceptor.clone();
            let registrar = self.registrar.clone();
            let watcher = graceful.watcher();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let tls = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)) => r,
                };
                let stream = match tls {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| handle(registrar.clone(), req)),
                    );
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "registration connection ended with an error");
                }
                drop(hold);
            });
        }
        drop(self.listener);
        tokio::select! {
            _ = graceful.shutdown() => {}
            _ = tokio::time::sleep(grace) => {
                tracing::warn!("grace period over; dropping the remaining registration connections")
            }
        }
    }
}

fn response(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("status and headers are valid constants")
}

fn refusal(r: &Refusal) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "code": r.code(), "message": r.to_string() });
    response(
        r.status(),
        "application/json",
        body.to_string().into_bytes(),
    )
}

async fn handle(
    registrar: Arc<Registrar>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    Ok(match (method, path.as_str()) {
        (Method::GET, "/v1/ca") => response(
            StatusCode::OK,
            "application/x-pem-file",
            registrar.ca.cert_pem().as_bytes().to_vec(),
        ),
        (Method::POST, "/v1/register") => match register(registrar, req).await {
            Ok(r) => response(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&r).expect("a response always serializes"),
            ),
            Err(r) => {
                tracing::info!(code = r.code(), detail = %r, "registration refused");
                refusal(&r)
            }
        },
        (_, "/v1/ca" | "/v1/register") => {
            let mut resp = refusal(&Refusal::BadRequest(format!(
                "{path} does not take this method; use GET /v1/ca or POST /v1/register"
            )));
            *resp.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
            resp
        }
        _ => {
            let mut resp = refusal(&Refusal::BadRequest(format!(
                "{path} is not served here; use GET /v1/ca or POST /v1/register"
            )));
            *resp.status_mut() = StatusCode::NOT_FOUND;
            resp
        }
    })
}

async fn register(
    registrar: Arc<Registrar>,
    req: Request<Incoming>,
) -> Result<RegistrationResponse, Refusal> {
    let body = match read_body(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(BodyError::TooLarge(_)) => return Err(Refusal::TooLarge),
        Err(e) => return Err(Refusal::BadRequest(e.to_string())),
    };
    tokio::task::spawn_blocking(move || registrar.register(&body, crate::clock::now()))
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "registration panicked");
            Refusal::Internal
        })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    #[test]
    fn instance_ids_are_what_proto_accepts() {
        for _ in 0..100 {
            let id = new_instance_id();
            assert!(skerry_proto::registration::is_instance_id(&id), "{id}");
        }
    }

    /// The check here and the hash ssm stores must agree, or no device could register.
    #[test]
    fn code_check_matches_what_ssm_stores() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Hub::new(
            Store::open(dir.path()).expect("open"),
            crate::arn::Arns::new("us-east-1", "000000000000"),
        );
        let out = crate::api::call(
            &hub,
            crate::api::Service::Ssm,
            "CreateActivation",
            br#"{"IamRole": "ecsAnywhereRole"}"#,
            1000.0,
        )
        .expect("create");
        let id = out["ActivationId"].as_str().expect("id");
        let code = out["ActivationCode"].as_str().expect("code");
        let stored = hub
            .store
            .activation_code_hash(id)
            .expect("read")
            .expect("stored");
        assert!(code_matches(&stored, code));
        let last = if code.ends_with('A') { "B" } else { "A" };
        assert!(!code_matches(
            &stored,
            &format!("{}{last}", &code[..code.len() - 1])
        ));
        assert!(!code_matches(&stored, ""));
    }
}
