//! What the API and the registration listener share, so that nobody can hold them before
//! authenticating: accepting under a bound (a connection takes one of a fixed number of
//! slots, and a failed accept is retried after a pause), a limit on connections from one
//! address, so one client cannot take every slot, and reading a request body under a size
//! limit and a deadline, so an idle client cannot keep a slot by never sending its body.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// API connections from one address at most (of 256), so one client cannot hold every slot.
pub const API_PER_ADDRESS: usize = 32;
/// Registration connections from one address at most (of 256): a site's devices behind one
/// NAT that register at once beyond it are closed and retry with their backoff. The load
/// generator (`bench/loadgen`) registers 32 at once from loopback.
pub const REGISTRATION_PER_ADDRESS: usize = 32;
/// How long a request body may take to arrive once its headers have.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// An accepted connection and what it holds until it is dropped: one of the listener's
/// slots and one of its address's.
pub struct Accepted {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub hold: (OwnedSemaphorePermit, AddressSlot),
}

/// Connections open per client IP address, at most `limit` each. Its map holds only
/// addresses with an open connection, so it is bounded by the listener's slots.
pub struct PerAddress {
    limit: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's share of its address's limit, given back on drop.
pub struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub fn new(limit: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.owner.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// The next connection, once one of `slots` is free and its address has room in
/// `per_address` (one from an address at its limit is closed at once); None once `shutdown`
/// is cancelled. A failed accept (out of file descriptors and the like) is logged and
/// retried after a pause instead of spinning.
pub async fn accept_next(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    per_address: &Arc<PerAddress>,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<Accepted> {
    let permit = tokio::select! {
        _ = shutdown.cancelled() => return None,
        p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = listener.accept() => match r {
                Ok((stream, peer)) => match per_address.try_take(peer.ip()) {
                    Some(slot) => return Some(Accepted { stream, peer, hold: (permit, slot) }),
                    None => {
                        tracing::debug!(%peer, "{what}: too many connections from this address; closed");
                        drop(stream);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "{what} accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("request body is over {0} bytes")]
    TooLarge(usize),
    #[error("the request body did not arrive within {} s", BODY_READ_TIMEOUT.as_secs())]
    TimedOut,
    #[error("cannot read the request body: {0}")]
    Read(String),
}

/// The whole body, at most `max` bytes, within [`BODY_READ_TIMEOUT`]. A body not read to its
/// end makes hyper close the connection after the answer, so a refused one frees its slot.
pub async fn read_body(body: Incoming, max: usize) -> Result<Bytes, BodyError> {
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, max).collect()).await {
        Err(_) => Err(BodyError::TimedOut),
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(BodyError::TooLarge(max))
        }
        Ok(Err(e)) => Err(BodyError::Read(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_at_its_limit_gets_no_slot_until_one_is_given_back() {
        let limits = PerAddress::new(2);
        let a: IpAddr = "127.0.0.1".parse().expect("ip");
        let b: IpAddr = "127.0.0.2".parse().expect("ip");
        let first = limits.try_take(a).expect("first");
        let _second = limits.try_take(a).expect("second");
        assert!(
            limits.try_take(a).is_none(),
            "a third from the same address"
        );
        let _other = limits
            .try_take(b)
            .expect("another address has its own room");
        drop(first);
        assert!(limits.try_take(a).is_some(), "room again once one closed");
        let open = limits.open.lock().expect("lock");
        assert_eq!(open.len(), 2, "only addresses with connections are kept");
    }
}
