//! Accepting connections under a bound, shared by the API and the registration listener:
//! a connection takes one of a fixed number of slots, and a failed accept is retried after
//! a pause.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// The next connection, once one of `slots` is free; None once `shutdown` is cancelled. A
/// failed accept (out of file descriptors and the like) is logged and retried after a pause
/// instead of spinning.
pub async fn accept_next(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, peer)) => return Some((permit, stream, peer)),
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}
