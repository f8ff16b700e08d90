//! The HTTP front: one POST `/` endpoint in the AWS JSON 1.1 protocol, SigV4-checked, over
//! hyper's HTTP/1 connection driver. hyper rather than axum: there is a single route whose
//! dispatch is a header, SigV4 needs the raw bytes and headers anyway, and owning the
//! accept loop keeps the connection bound and the graceful drain explicit.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use rand::RngCore;
use skerry_aws_json::sigv4;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiError};
use crate::arn::Arns;
use crate::ca::{Ca, CaError};
use crate::config::Config;
use crate::health::{Outcome, UNKNOWN_OPERATION};
use crate::link::{Link, LinkError};
use crate::listener::{accept_next, read_body, Accepted, BodyError, PerAddress, API_PER_ADDRESS};
use crate::metrics;
use crate::register::{self, ListenError, Registrar};
use crate::revocation::{self, Revocation};
use crate::state::Hub;
use crate::store::{Store, StoreError};
use crate::{clock, scheduler};

/// Open connections beyond this wait in the kernel's accept backlog.
const MAX_CONNECTIONS: usize = 256;
/// ECS caps a task definition at 64 KiB; a megabyte leaves room and bounds memory.
const MAX_BODY: usize = 1 << 20;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error(transparent)]
    Registration(#[from] ListenError),
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the listener's address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(#[source] std::io::Error),
}

struct State {
    hub: Arc<Hub>,
    access_keys: HashMap<String, String>,
}

pub struct Server {
    state: Arc<State>,
    listener: TcpListener,
    registration: register::Listener,
    metrics: Option<metrics::Listener>,
    link: Link,
    revocation: Revocation,
    ca: Arc<Ca>,
    grace: Duration,
}

impl Server {
    /// Opens the store, loads (or makes) the CA and binds both listeners; serving starts
    /// with [`Server::run`].
    pub async fn bind(config: Config) -> Result<Self, ServeError> {
        let store = Store::open(&config.data_dir)?;
        let ca = Arc::new(Ca::load_or_create(&config.ca_dir())?);
        let cert_names = config.registration_cert_names();
        let hub = Arc::new(Hub::new(store, Arns::new(config.region, config.account_id)));
        hub.changes.resume(&hub.store)?;
        let registration = register::Listener::bind(
            config.registration.listen,
            &cert_names,
            Registrar {
                hub: hub.clone(),
                ca: ca.clone(),
                broker_url: config.broker.url.to_string(),
            },
        )
        .await?;
        let metrics = match config.metrics_listen {
            Some(addr) => Some(
                metrics::Listener::bind(addr)
                    .await
                    .map_err(|source| ServeError::Bind { addr, source })?,
            ),
            None => None,
        };
        let link = Link::new(&config.broker.hub_url, &ca)?;
        let revocation = Revocation::new(&config.broker.dir, ca.clone(), config.broker.hub_url);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServeError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(Self {
            state: Arc::new(State {
                hub,
                access_keys: config.access_keys,
            }),
            listener,
            registration,
            metrics,
            link,
            revocation,
            ca,
            grace: config.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The address of the HTTPS registration listener.
    pub fn registration_addr(&self) -> std::io::Result<SocketAddr> {
        self.registration.local_addr()
    }

    /// The address of the `/metrics` listener, if the config asks for one.
    pub fn metrics_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.metrics.as_ref().map(metrics::Listener::local_addr)
    }

    /// The hub's CA, for the parts of the hub that issue or check certificates.
    pub fn ca(&self) -> &Arc<Ca> {
        &self.ca
    }

    /// Serves until `shutdown` is cancelled, then lets open requests finish for up to the
    /// grace period.
    pub async fn run(self, shutdown: CancellationToken) {
        let registration = tokio::spawn(self.registration.run(shutdown.clone(), self.grace));
        let services = tokio::spawn(scheduler::run(self.state.hub.clone(), shutdown.clone()));
        let link = tokio::spawn(self.link.run(self.state.hub.clone(), shutdown.clone()));
        let revocation = tokio::spawn(revocation::run(
            self.revocation,
            self.state.hub.clone(),
            shutdown.clone(),
        ));
        let metrics = self
            .metrics
            .map(|m| tokio::spawn(m.run(self.state.hub.clone(), shutdown.clone())));
        let graceful = GracefulShutdown::new();
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_address = PerAddress::new(API_PER_ADDRESS);
        while let Some(Accepted { stream, peer, hold }) =
            accept_next(&self.listener, &slots, &per_address, &shutdown, "API").await
        {
            let state = self.state.clone();
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(
                    TokioIo::new(stream),
                    service_fn(move |req| handle(state.clone(), req)),
                );
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                drop(hold);
            });
        }
        drop(self.listener);
        // Long-polls of the event history answer now instead of at the end of their wait.
        self.state.hub.changes.stop_waiting();
        tracing::info!(grace = ?self.grace, "shutting down; draining open requests");
        tokio::select! {
            _ = graceful.shutdown() => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(self.grace) => {
                tracing::warn!("grace period over; dropping the remaining connections")
            }
        }
        if let Err(e) = registration.await {
            tracing::error!(error = %e, "the registration listener panicked");
        }
        if let Err(e) = services.await {
            tracing::error!(error = %e, "service loop panicked");
        }
        if let Err(e) = link.await {
            tracing::error!(error = %e, "the broker link panicked");
        }
        if let Err(e) = revocation.await {
            tracing::error!(error = %e, "the revocation task panicked");
        }
        if let Some(metrics) = metrics {
            if let Err(e) = metrics.await {
                tracing::error!(error = %e, "the metrics listener panicked");
            }
        }
    }
}

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) -> Result<(), ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    let mut int = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        token.cancel();
    });
    Ok(())
}

/// Runs the hub until SIGTERM/SIGINT. The first line on stdout is `listening on ADDR` (the
/// API), the second `registration listening on ADDR`, and with `[metrics]` configured a
/// third `metrics listening on ADDR`, so a supervisor or test can use port 0 and learn the
/// ports.
pub async fn run(config: Config) -> Result<(), ServeError> {
    let server = Server::bind(config).await?;
    let local = |r: std::io::Result<SocketAddr>| {
        r.map_err(|source| ServeError::Bind {
            addr: ([0, 0, 0, 0], 0).into(),
            source,
        })
    };
    let addr = local(server.local_addr())?;
    let registration = local(server.registration_addr())?;
    let metrics = server.metrics_addr().map(local).transpose()?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone())?;
    tracing::info!(%addr, %registration, fingerprint = %server.ca().fingerprint(), "skerry-hub listening");
    let mut out = std::io::stdout().lock();
    // stdout may be closed by the supervisor; the hub serves either way.
    let _ = writeln!(
        out,
        "listening on {addr}\nregistration listening on {registration}"
    )
    .and_then(|()| match metrics {
        Some(m) => writeln!(out, "metrics listening on {m}"),
        None => Ok(()),
    })
    .and_then(|()| out.flush());
    drop(out);
    server.run(shutdown).await;
    Ok(())
}

fn new_request_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let started = std::time::Instant::now();
    let request_id = new_request_id();
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let operation = api::parse_target(&target)
        .and_then(|(service, op)| api::operation_name(service, op))
        .unwrap_or(UNKNOWN_OPERATION);
    let hub = state.hub.clone();
    let (status, body, error_type) = match respond(state, req).await {
        Ok(v) => (StatusCode::OK, v.to_string().into_bytes(), None),
        Err(e) => {
            tracing::info!(%request_id, %target, code = e.code, detail = %e.message, "request refused");
            let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST);
            (status, e.body(), Some(e.code))
        }
    };
    hub.health.request(
        operation,
        Outcome::of_status(status.as_u16()),
        started.elapsed(),
    );
    let mut resp = Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, api::CONTENT_TYPE)
        .header("x-amzn-RequestId", &request_id);
    if let Some(code) = error_type {
        resp = resp.header("x-amzn-ErrorType", code);
    }
    Ok(resp
        .body(Full::new(Bytes::from(body)))
        .expect("status and headers are all valid constants or ASCII"))
}

async fn respond(state: Arc<State>, req: Request<Incoming>) -> Result<serde_json::Value, ApiError> {
    if req.method() != Method::POST || req.uri().path() != "/" {
        return Err(ApiError::new(
            404,
            "UnknownOperationException",
            "this hub serves only POST / in the AWS JSON 1.1 protocol",
        ));
    }
    let (parts, body) = req.into_parts();
    let body = match read_body(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e @ BodyError::TooLarge(_)) => {
            return Err(ApiError::new(
                413,
                "RequestEntityTooLargeException",
                e.to_string(),
            ))
        }
        Err(e @ BodyError::TimedOut) => {
            return Err(ApiError::new(408, "RequestTimeoutException", e.to_string()))
        }
        Err(e) => {
            return Err(ApiError::bad_request(
                "SerializationException",
                e.to_string(),
            ))
        }
    };
    let now = clock::since_epoch();
    let signed = sigv4::Signed {
        method: parts.method.as_str(),
        path: parts.uri.path(),
        query: parts.uri.query().unwrap_or(""),
        headers: &parts.headers,
        body: &body,
    };
    let secret_for = |id: &str| state.access_keys.get(id).map(String::as_str);
    let verified = sigv4::verify(&signed, secret_for, now.as_secs() as i64)
        .map_err(|e| ApiError::new(403, e.aws_code(), e.to_string()))?;
    let target = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (service, operation) = api::parse_target(target).ok_or_else(|| {
        ApiError::bad_request(
            "UnknownOperationException",
            format!("X-Amz-Target {target:?} names no ECS, SSM or Skerry operation"),
        )
    })?;
    let refuse = |m: String| ApiError::new(403, "InvalidSignatureException", m);
    if verified.region != state.hub.arns.region() {
        return Err(refuse(format!(
            "credential should be scoped to a valid region, not {:?}; this hub serves {}",
            verified.region,
            state.hub.arns.region()
        )));
    }
    if verified.service != service.signing_name() {
        return Err(refuse(format!(
            "credential should be scoped to correct service: {:?}",
            service.signing_name()
        )));
    }
    // An unsigned target would let a captured request be replayed as another operation.
    if !verified.signed_headers.iter().any(|h| h == "x-amz-target") {
        return Err(refuse("SignedHeaders must include x-amz-target".into()));
    }
    tracing::debug!(key = %verified.access_key_id, %target, "request");
    let operation = operation.to_string();
    tokio::task::spawn_blocking(move || {
        let now = now.as_secs_f64();
        api::call(&state.hub, service, &operation, &body, now)
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "operation panicked");
        ApiError::new(500, "InternalFailure", "internal error; see the hub's log")
    })?
}
