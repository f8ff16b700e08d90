//! `/metrics` for Prometheus, on a listener of its own (`[metrics] listen` in the hub's
//! config) so it can be exposed to a monitoring network without exposing the API.
//!
//! # Layout
//! - `text`: the text exposition format's encoder.
//! - `hub`: the hub's own families, from its `health` counters.
//! - `fleet`: the instances, services and tasks from the store, and the cardinality bound.

pub mod fleet;
pub mod hub;
pub mod text;

use std::convert::Infallible;
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
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::listener::{accept_next, Accepted, PerAddress};
use crate::state::Hub;
use crate::store::StoreError;

/// A scraper or two, and someone with curl: more wait in the accept backlog.
const MAX_CONNECTIONS: usize = 8;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The whole body of `/metrics`: the hub's health, then the fleet.
pub fn render(hub: &Hub) -> Result<String, StoreError> {
    let fleet = hub.store.fleet_figures()?;
    let mut e = text::Encoder::new();
    self::hub::render(&hub.health.snapshot(), &mut e);
    fleet::render(&fleet, &mut e);
    Ok(e.finish())
}

pub struct Listener {
    listener: TcpListener,
}

impl Listener {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Listener> {
        Ok(Listener {
            listener: TcpListener::bind(addr).await?,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; a scrape in progress is dropped with the connection.
    pub async fn run(self, hub: Arc<Hub>, shutdown: CancellationToken) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        // A scraper or two per address; the rest of the slots stay for the others.
        let per_address = PerAddress::new(MAX_CONNECTIONS / 2);
        while let Some(Accepted { stream, peer, hold }) =
            accept_next(&self.listener, &slots, &per_address, &shutdown, "metrics").await
        {
            let hub = hub.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(
                        TokioIo::new(stream),
                        service_fn(move |req| respond(hub.clone(), req)),
                    );
                tokio::select! {
                    r = conn => if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "metrics connection ended with an error");
                    },
                    _ = stop.cancelled() => {}
                }
                drop(hold);
            });
        }
    }
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(hyper::header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body)))
        .expect("status and headers are constants")
}

async fn respond(
    hub: Arc<Hub>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "this listener serves only GET /metrics\n".into(),
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Ok(plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "/metrics takes GET\n".into(),
        ));
    }
    let body = tokio::task::spawn_blocking(move || render(&hub)).await;
    Ok(match body {
        Ok(Ok(text)) => Response::builder()
            .header(hyper::header::CONTENT_TYPE, text::CONTENT_TYPE)
            .body(Full::new(Bytes::from(text)))
            .expect("headers are constants"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the fleet for /metrics");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the fleet; see the hub's log\n".into(),
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "rendering /metrics panicked");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the hub's log\n".into(),
            )
        }
    })
}
