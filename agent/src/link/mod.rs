//! The link to the hub: provisioning and identity first, then one MQTT connection that
//! carries the desired-state document down and the outbox up.
//!
//! - `report`: task changes (told by the reconciler's observer) into the outbox.
//! - `metrics`: periodic host figures into the outbox.
//! - `usage`: periodic per-container CPU and memory (cgroup v2) into the outbox.
//! - `mqtt`: the broker connection: presence, the desired-state subscription, and the
//!   sender that publishes outbox records in order and acks them once the broker has.
//! - `window`: the sender's in-flight window.
//!
//! Nothing here blocks the reconciler: it starts first, and every change it makes is
//! appended to the durable outbox before it counts as emitted.

pub mod metrics;
pub mod mqtt;
pub mod report;
pub mod usage;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use skerry_proto::desired::DesiredState;
use skerry_proto::link::{Entry, EventKind, Message};
use skerry_proto::status::TaskReport;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Config;
use crate::identity::{self, Plan};
use crate::os::Os;
use crate::outbox::{Class, Outbox, OutboxConfig, OutboxError};
use crate::reconcile::{ApplyError, EventSink, Handle, Observer, TaskEvent};

/// Outbox keys of the records that only their latest value matters for.
const KEY_APPLIED: &str = "applied-generation";
const KEY_FULL_STATE: &str = "full-state";
const KEY_DESIRED_EVENT: &str = "desired";
/// Retries of a desired-state document the store could not persist.
const DESIRED_RETRY_MIN: Duration = Duration::from_secs(1);
const DESIRED_RETRY_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub identity_dir: PathBuf,
    pub data_dir: PathBuf,
    pub metrics_interval: Duration,
    /// The OS the device booted, said in its presence.
    pub os: Os,
    pub container_metrics_interval: Duration,
    /// The containerd namespace, which also names the containers' cgroups.
    pub namespace: String,
}

impl LinkConfig {
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            identity_dir: cfg.identity_dir(),
            data_dir: cfg.data_dir.clone(),
            metrics_interval: cfg.metrics_interval,
            os: Os::read(),
            container_metrics_interval: cfg.container_metrics_interval,
            namespace: cfg.namespace.clone(),
        }
    }
}

/// The outbox as the link writes to it: entries stamped with the time, and a wake-up for
/// the sender after each append.
#[derive(Clone)]
pub struct Outbound {
    outbox: Outbox,
    appended: Arc<Notify>,
}

impl Outbound {
    pub fn new(outbox: Outbox) -> Self {
        Self {
            outbox,
            appended: Arc::new(Notify::new()),
        }
    }

    pub fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// Appends `message` as an [`Entry`]; returns once it is on disk.
    pub async fn append(&self, class: Class, message: Message) -> Result<u64, OutboxError> {
        let entry = Entry {
            time: crate::reconcile::now_secs(),
            message,
        };
        let payload = serde_json::to_vec(&entry)
            .expect("an entry is plain data with string keys, which JSON always encodes");
        let seq = self.outbox.append(class, payload).await?;
        self.appended.notify_one();
        Ok(seq)
    }

    /// Resolves after the next append (or at once if one came since the last call).
    pub async fn appended(&self) {
        self.appended.notified().await
    }
}

/// A device that has (or is to get) an identity: the outbox is open and the reporter can be
/// installed before the reconciler starts.
pub struct Link {
    cfg: LinkConfig,
    plan: Plan,
    outbound: Outbound,
    changes: Arc<report::Changes>,
}

impl Link {
    /// Reads the stored identity and the provisioning file and opens the outbox. `None`
    /// when the device has neither: it runs standalone, as it says in one line.
    pub async fn prepare(cfg: &Config) -> Result<Option<Link>, OutboxError> {
        let link_cfg = LinkConfig::from_config(cfg);
        let plan = Plan::decide(&link_cfg.identity_dir, cfg.provision_file.as_deref());
        if matches!(plan, Plan::Standalone) {
            info!(
                provision_file = ?cfg.provision_file,
                "no provisioning file and no stored identity: running standalone \
                 (tasks come from `skerry-agent apply` only)"
            );
            return Ok(None);
        }
        let mut ocfg = OutboxConfig::new(cfg.outbox_dir());
        ocfg.max_bytes = cfg.outbox_max_bytes;
        ocfg.segment_bytes = crate::config::outbox_segment_bytes(cfg.outbox_max_bytes);
        let outbox = Outbox::open(ocfg).await?;
        Ok(Some(Link {
            cfg: link_cfg,
            plan,
            outbound: Outbound::new(outbox),
            changes: Arc::new(report::Changes::new()),
        }))
    }

    /// The reconciler's observer: marks the task for the reporter.
    pub fn observer(&self) -> Observer {
        let changes = self.changes.clone();
        Arc::new(move |arn: &str| changes.mark(arn))
    }

    /// The outbox, for what the device reports outside the reconciler (an OS rollback).
    pub fn outbound(&self) -> Outbound {
        self.outbound.clone()
    }

    /// The reconciler's event sink: queues the event for the reporter.
    pub fn event_sink(&self) -> EventSink {
        let changes = self.changes.clone();
        Arc::new(move |e: TaskEvent| changes.event(e))
    }

    /// Runs until `stop`: establishes the identity (registering if needed, with backoff),
    /// then keeps the broker connection. Closes the outbox at the end.
    pub async fn run(self, handle: Handle, stop: CancellationToken) {
        let Link {
            cfg,
            plan,
            outbound,
            changes,
        } = self;
        let reporter = tokio::spawn(report::run(
            changes,
            handle.clone(),
            outbound.clone(),
            stop.clone(),
        ));
        let metrics = tokio::spawn(metrics::run(
            cfg.data_dir.clone(),
            cfg.metrics_interval,
            outbound.clone(),
            stop.clone(),
        ));
        let usage = tokio::spawn(usage::run(
            handle.clone(),
            cfg.namespace.clone(),
            cfg.container_metrics_interval,
            outbound.clone(),
            stop.clone(),
        ));
        let (desired_tx, desired_rx) = watch::channel::<Option<Bytes>>(None);
        let applier = tokio::spawn(apply_desired(
            desired_rx,
            handle.clone(),
            outbound.clone(),
            stop.clone(),
        ));
        if let Some((id, registered)) = identity::establish(plan, &cfg.identity_dir, &stop).await {
            if registered {
                let message = Message::Event {
                    kind: EventKind::Registered,
                    task_arn: None,
                    container: None,
                    message: format!(
                        "registered as {} ({}) with activation {}",
                        id.meta.instance_id, id.meta.container_instance_arn, id.meta.activation_id
                    ),
                };
                let class = Class::Event {
                    key: "registration".into(),
                };
                if let Err(e) = outbound.append(class, message).await {
                    warn!("cannot record the registration event: {e}");
                }
            }
            mqtt::run(
                id,
                &cfg.os,
                outbound.clone(),
                &handle,
                desired_tx,
                stop.clone(),
            )
            .await;
        }
        stop.cancelled().await;
        let _ = tokio::join!(reporter, metrics, usage, applier);
        outbound.outbox.clone().close().await;
    }
}

/// Applies each desired-state document the hub publishes (the latest only, if several came
/// meanwhile): refused when invalid, ignored when not newer than the applied generation.
/// One the store could not persist (a full disk) is tried again with backoff until it
/// applies or a newer one comes: the hub publishes a document once, retained.
async fn apply_desired(
    mut rx: watch::Receiver<Option<Bytes>>,
    handle: Handle,
    out: Outbound,
    stop: CancellationToken,
) {
    let mut backoff = Backoff::new(DESIRED_RETRY_MIN, DESIRED_RETRY_MAX);
    // The last document failed to apply for the store's sake: it is tried again.
    let mut failed = false;
    loop {
        let delay = if failed {
            backoff.next_delay()
        } else {
            Duration::ZERO
        };
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(delay), if failed => {}
            _ = stop.cancelled() => return,
        }
        let retry = std::mem::take(&mut failed);
        let Some(payload) = rx.borrow_and_update().clone() else {
            continue;
        };
        if payload.is_empty() {
            // A cleared retained message: the hub has nothing for this device yet.
            continue;
        }
        let refuse = |message: String| Message::Event {
            kind: EventKind::Other,
            task_arn: None,
            container: None,
            message,
        };
        let text = String::from_utf8_lossy(&payload);
        let outcome = match DesiredState::parse(&text) {
            Err(e) => {
                warn!("desired-state document from the hub refused: {e}");
                Some((
                    Class::Event {
                        key: KEY_DESIRED_EVENT.into(),
                    },
                    refuse(format!("desired-state document refused: {e}")),
                ))
            }
            Ok(doc) => {
                let current = match handle.generation() {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("cannot read the applied generation: {e}");
                        None
                    }
                };
                // A failed apply may have committed the document but not every task record
                // (the disk filled in between): a retry applies the same generation again,
                // which only adds what is missing.
                if current.is_some_and(|c| doc.generation < c || (doc.generation == c && !retry)) {
                    debug!(
                        generation = doc.generation,
                        applied = ?current,
                        "desired-state document not newer than the applied one; ignored"
                    );
                    None
                } else {
                    let generation = doc.generation;
                    match handle.apply(doc).await {
                        Ok(g) => {
                            backoff.reset();
                            info!(generation = g, "desired state from the hub applied");
                            Some((
                                Class::State {
                                    key: KEY_APPLIED.into(),
                                },
                                Message::Applied { generation: g },
                            ))
                        }
                        Err(e @ ApplyError::Store(_)) if retry => {
                            warn!(generation, "desired-state document still not applied: {e}");
                            failed = true;
                            None
                        }
                        Err(e) => {
                            warn!(generation, "desired-state document not applied: {e}");
                            failed = matches!(e, ApplyError::Store(_));
                            Some((
                                Class::Event {
                                    key: KEY_DESIRED_EVENT.into(),
                                },
                                refuse(format!(
                                    "desired-state generation {generation} not applied: {e}"
                                )),
                            ))
                        }
                    }
                }
            }
        };
        if let Some((class, message)) = outcome {
            if let Err(e) = out.append(class, message).await {
                warn!("cannot record the desired-state outcome: {e}");
            }
        }
    }
}

/// What the broker connection reports after draining a backlog: the reconciler's
/// [`Handle`] on a device, a stand-in in the outbox benchmark (which needs no containerd).
pub trait DeviceState: Send + Sync {
    /// The generation of the desired-state document applied last, if any.
    fn generation(&self) -> Result<Option<u64>, String>;
    /// Every task the device knows.
    fn tasks(&self) -> Vec<TaskReport>;
}

impl DeviceState for Handle {
    fn generation(&self) -> Result<Option<u64>, String> {
        Handle::generation(self).map_err(|e| e.to_string())
    }
    fn tasks(&self) -> Vec<TaskReport> {
        Handle::tasks(self)
    }
}

/// The FullState message: every task the device knows and the applied generation.
pub(crate) async fn append_full_state(
    state: &dyn DeviceState,
    out: &Outbound,
) -> Result<u64, String> {
    let generation = state.generation()?.unwrap_or(0);
    let tasks = state.tasks();
    out.append(
        Class::State {
            key: KEY_FULL_STATE.into(),
        },
        Message::FullState { generation, tasks },
    )
    .await
    .map_err(|e| e.to_string())
}
