//! The hardware watchdog (`/dev/watchdog`): fed every few seconds for as long as the
//! reconciler answers, so that a hung agent or a hung kernel reboots the device. The agent
//! never disarms it (no magic close): when the agent stops and init does not bring it back
//! within the watchdog's timeout, the device reboots, which is what an appliance wants.

use std::path::Path;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::reconcile::Handle;

/// Well inside the shortest timeout of the boards' watchdogs (15 s on a Raspberry Pi).
pub const FEED_INTERVAL: Duration = Duration::from_secs(5);
/// How long the reconciler has to answer before the watchdog goes hungry.
const ANSWER: Duration = Duration::from_secs(3);

/// Feeds the watchdog at `path` until `stop`. A missing device is logged once.
pub async fn feed(path: &Path, handle: Handle, stop: CancellationToken) {
    let mut dev = match tokio::fs::OpenOptions::new().write(true).open(path).await {
        Ok(f) => f,
        Err(e) => {
            warn!("cannot open the watchdog {}: {e}; the device will not reboot by itself if the agent hangs", path.display());
            return;
        }
    };
    info!(device = %path.display(), "feeding the watchdog every {}s", FEED_INTERVAL.as_secs());
    let mut tick = tokio::time::interval(FEED_INTERVAL);
    let mut hungry = false;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !handle.ping(ANSWER).await {
            if !hungry {
                warn!("the reconciler does not answer; not feeding the watchdog");
            }
            hungry = true;
            continue;
        }
        if hungry {
            info!("the reconciler answers again; feeding the watchdog");
            hungry = false;
        }
        let fed = async {
            dev.write_all(b"1").await?;
            dev.flush().await
        };
        if let Err(e) = fed.await {
            warn!("cannot feed the watchdog {}: {e}", path.display());
        }
    }
}
