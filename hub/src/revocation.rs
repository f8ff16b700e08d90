//! Cutting a device off at the broker. Deregistering an instance revokes its certificate:
//! the hub writes a revocation list naming the certificate of every deregistered instance
//! into the broker's directory (`broker.dir`) and signals the broker (SIGHUP to the pid in
//! its pid file), which loads the list for every new TLS handshake. An open connection
//! survives a reload, so the hub then takes the device's session over: it connects once
//! with a short-lived certificate of the device's own name (the broker uses the name as the
//! client id, and a second client with the same id closes the first) and disconnects. The
//! device's reconnects then fail the handshake.
//!
//! Mosquitto keeps every list it loaded and OpenSSL checks against the one issued last (and
//! ignores one dated in the future), so lists only grow and each is dated a second or more
//! after the one before, never ahead of the clock ([`Revocation::publish`] waits for the
//! next second when it must).
//!
//! Why not Mosquitto's dynamic security plugin: with `use_identity_as_username` it never
//! authenticates a client (the certificate is the identity), so a disabled or deleted client
//! still connects; it only loses its topics.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Transport};
use rustls_pki_types::pem::PemObject;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{CRL_FILE, PID_FILE};
use crate::ca::{self, Ca, CaError};
use crate::config::BrokerUrl;
use crate::state::Hub;
use crate::store::{Store, StoreError};

/// How long after a deregistration the device is cut off: time for the publisher to deliver
/// its last, empty desired-state document, so a connected device stops its tasks.
const GRACE: Duration = Duration::from_secs(2);
/// How long the broker is given to load the list before the takeover.
const RELOAD: Duration = Duration::from_millis(500);
/// The takeover's whole connection, handshake to disconnect.
const KICK_LIMIT: Duration = Duration::from_secs(10);
/// The takeover certificate's life: it is used once, at once.
const KICK_CERT_VALIDITY: Duration = Duration::from_secs(600);
/// Wait before retrying a list the hub could not write or signal, doubled up to
/// [`MAX_RETRY`] (a hub run without its broker, as in tests, says so every few minutes).
const RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] CaError),
    #[error("cannot write the revocation list {path}: {source}; is broker.dir the directory broker-config wrote?")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal the broker through {path}: {reason}; start it with the mosquitto.conf broker-config wrote there")]
    Signal { path: PathBuf, reason: String },
    #[error("cannot close the broker connection of {instance}: {reason}")]
    Kick { instance: String, reason: String },
}

/// The broker side of deregistration: the revocation list, the reload, the takeover.
pub struct Revocation {
    dir: PathBuf,
    ca: Arc<Ca>,
    broker: BrokerUrl,
    /// When the last list was issued, in Unix seconds.
    last_issued: u64,
}

impl Revocation {
    /// For the broker whose files are in `dir`, reached at `broker`.
    pub fn new(dir: &Path, ca: Arc<Ca>, broker: BrokerUrl) -> Revocation {
        Revocation {
            dir: dir.to_path_buf(),
            ca,
            broker,
            last_issued: 0,
        }
    }

    /// Writes the list for every deregistered instance in `store` and has the broker load
    /// it. Returns the instance ids it names.
    pub fn publish(&mut self, store: &Store) -> Result<Vec<String>, RevocationError> {
        let revoked = store.revoked_certificates()?;
        if self.last_issued == 0 {
            // The broker may hold the list an earlier hub run wrote.
            self.last_issued = list_date(&self.dir.join(CRL_FILE)).unwrap_or(0);
        }
        let issued = self.next_date();
        let serials: Vec<String> = revoked.iter().map(|(_, s)| s.clone()).collect();
        let pem = self
            .ca
            .revocation_list(&serials, UNIX_EPOCH + Duration::from_secs(issued))?;
        ca::write_atomically(&self.dir, CRL_FILE, pem.as_bytes(), 0o644).map_err(|source| {
            RevocationError::Write {
                path: self.dir.join(CRL_FILE),
                source,
            }
        })?;
        self.last_issued = issued;
        self.reload()?;
        Ok(revoked.into_iter().map(|(id, _)| id).collect())
    }

    /// Now, in Unix seconds, once that is later than the last list: OpenSSL takes the list
    /// issued last, and treats one dated in the future as not valid yet, so the next is
    /// dated neither in the same second nor ahead of the clock. Waits at most a second; a
    /// clock stepped back further gets a warning, and the broker goes on checking the
    /// later-dated list until the clock passes it.
    fn next_date(&self) -> u64 {
        loop {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            if now.as_secs() > self.last_issued {
                return now.as_secs();
            }
            if self.last_issued - now.as_secs() > 1 {
                warn!(
                    last = self.last_issued,
                    now = now.as_secs(),
                    "the clock is behind the last revocation list; the broker keeps that one until the clock passes it"
                );
                return now.as_secs();
            }
            std::thread::sleep(
                Duration::from_secs(1) - Duration::from_nanos(u64::from(now.subsec_nanos())),
            );
        }
    }

    /// SIGHUP to the broker named by its pid file, after checking it is a mosquitto.
    fn reload(&self) -> Result<(), RevocationError> {
        let path = self.dir.join(PID_FILE);
        let fail = |reason: String| RevocationError::Signal {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
        let pid: i32 = text
            .trim()
            .parse()
            .map_err(|_| fail(format!("{:?} is not a pid", text.trim())))?;
        // A stale file may name another process by now; signal only a broker.
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .map_err(|e| fail(format!("no process {pid}: {e}")))?;
        if comm.trim() != "mosquitto" {
            return Err(fail(format!(
                "process {pid} is {:?}, not mosquitto",
                comm.trim()
            )));
        }
        let pid = rustix::process::Pid::from_raw(pid)
            .ok_or_else(|| fail(format!("{pid} is not a pid")))?;
        rustix::process::kill_process(pid, rustix::process::Signal::Hup)
            .map_err(|e| fail(format!("kill -HUP {pid:?}: {e}")))
    }

    /// Closes the device's open broker connection, if it has one, by taking its session
    /// over with a certificate of its name and leaving at once (with a clean session, so
    /// the broker forgets what it queued for the device).
    pub async fn kick(&self, instance_id: &str) -> Result<(), RevocationError> {
        let fail = |reason: String| RevocationError::Kick {
            instance: instance_id.to_string(),
            reason,
        };
        let (cert, key) = self
            .ca
            .issue_client_cert_for(instance_id, KICK_CERT_VALIDITY)?;
        let tls =
            crate::link::client_tls_with(&self.ca, &cert, &key).map_err(|e| fail(e.to_string()))?;
        let mut opts = MqttOptions::new(instance_id, self.broker.host.clone(), self.broker.port);
        opts.set_clean_session(true)
            .set_keep_alive(Duration::from_secs(5))
            .set_transport(Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(Arc::new(tls)),
            ));
        let (client, mut events) = AsyncClient::new(opts, 4);
        let session = async {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                    Ok(_) => {}
                    Err(e) => return Err(fail(e.to_string())),
                }
            }
            client.disconnect().await.map_err(|e| fail(e.to_string()))?;
            // Until the DISCONNECT is out and the broker closes the connection.
            while events.poll().await.is_ok() {}
            Ok(())
        };
        tokio::time::timeout(KICK_LIMIT, session)
            .await
            .map_err(|_| fail(format!("no answer within {KICK_LIMIT:?}")))?
    }
}

/// The issue date of the list at `path`, in Unix seconds.
fn list_date(path: &Path) -> Option<u64> {
    let pem = std::fs::read(path).ok()?;
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(&pem).ok()?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).ok()?;
    u64::try_from(crl.last_update().timestamp()).ok()
}

/// Keeps the broker's list current until `shutdown`: once at start, then after every
/// deregistration, closing the connections of the instances newly named.
pub async fn run(mut revocation: Revocation, hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut named: Option<Vec<String>> = None;
    let mut retry = RETRY;
    loop {
        let published = {
            let hub = hub.clone();
            let mut r = revocation;
            let joined = tokio::task::spawn_blocking(move || {
                let out = r.publish(&hub.store);
                (r, out)
            })
            .await;
            match joined {
                Ok((r, out)) => {
                    revocation = r;
                    out
                }
                Err(e) => {
                    tracing::error!(error = %e, "the revocation list task panicked");
                    return;
                }
            }
        };
        match published {
            Ok(now_named) => {
                let new: Vec<&String> = match &named {
                    Some(before) => now_named.iter().filter(|id| !before.contains(id)).collect(),
                    // At start none: every earlier deregistration went through this hub,
                    // which kicked the device then. One a crash interrupted leaves a
                    // connection whose messages ingest drops; its next reconnect fails.
                    None => Vec::new(),
                };
                if !new.is_empty() {
                    tokio::time::sleep(RELOAD).await;
                }
                for id in new {
                    match revocation.kick(id).await {
                        Ok(()) => info!(instance = %id, "device cut off at the broker"),
                        Err(e) => warn!(error = %e, "cannot close a revoked device's connection"),
                    }
                }
                named = Some(now_named);
                retry = RETRY;
                tokio::select! {
                    _ = hub.changes.revocations_changed() => {}
                    _ = shutdown.cancelled() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(GRACE) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                warn!(error = %e, retry_in = ?retry, "cannot update the broker's revocation list");
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = hub.changes.revocations_changed() => {}
                    _ = shutdown.cancelled() => return,
                }
                retry = (retry * 2).min(MAX_RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
    }

    #[test]
    fn lists_are_dated_apart_and_never_ahead_of_the_clock() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Arc::new(Ca::load_or_create(&dir.path().join("ca")).expect("ca"));
        let broker = BrokerUrl {
            host: "127.0.0.1".into(),
            port: 1,
        };
        let mut r = Revocation::new(dir.path(), ca.clone(), broker);
        // The list a previous run left is where the dates continue from.
        let earlier = unix_now();
        let pem = ca
            .revocation_list(&[], UNIX_EPOCH + Duration::from_secs(earlier))
            .expect("list");
        std::fs::write(dir.path().join(CRL_FILE), pem).expect("write");
        assert_eq!(list_date(&dir.path().join(CRL_FILE)), Some(earlier));
        r.last_issued = list_date(&dir.path().join(CRL_FILE)).expect("date");
        let mut last = r.last_issued;
        for _ in 0..2 {
            let next = r.next_date();
            assert!(next > last, "{next} not after {last}");
            assert!(next <= unix_now(), "{next} is ahead of the clock");
            r.last_issued = next;
            last = next;
        }
        // No broker to signal: the list is written, and the error names the pid file.
        let store = Store::open(&dir.path().join("state")).expect("store");
        let err = r.publish(&store).expect_err("no broker");
        assert!(err.to_string().contains(PID_FILE), "{err}");
        assert!(list_date(&dir.path().join(CRL_FILE)).expect("date") > last);
    }
}
