//! What the device does at start, decided from the stored identity and the provisioning
//! file before anything connects, and carrying it out (registering with backoff, storing,
//! scrubbing the activation code).

use std::path::Path;
use std::time::Duration;

use rcgen::KeyPair;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::register::{register, HostFacts};
use super::store::Identity;
use crate::backoff::Backoff;
use crate::provision::Provision;

const RETRY_BASE: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(240);

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
