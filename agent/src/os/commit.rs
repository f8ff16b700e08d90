//! Committing the slot the device booted. Once the device is healthy by local evidence
//! (containerd answers, the reconciler answers, and every task it wants RUNNING is, for
//! [`HEALTHY_CHECKS`] checks in a row), the running slot gets all its tries back and comes
//! first in the boot order. No hub is needed: a device whose link is down after an update
//! must not roll back for that. If the device never gets there (an agent that crash-loops,
//! a hung boot, a kernel panic), U-Boot's count runs out and the other slot boots; the
//! agent there finds the order naming the other slot first and reports the rollback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skerry_proto::desired::DesiredStatus;
use skerry_proto::status::TaskStatus;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::boot::{self, BootState, BootStateError, TRIES};
use super::Slot;
use crate::reconcile::Handle;
use crate::runtime::Containerd;

/// How often the evidence is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);
/// Healthy checks in a row before committing: a task that crash-loops is RUNNING
/// between its restarts, so one look is not enough.
pub const HEALTHY_CHECKS: u32 = 3;
/// How long containerd and the reconciler have to answer a check.
const ANSWER: Duration = Duration::from_secs(3);

/// What the boot state says of this boot, read before anything else runs.
pub fn rollback(running: Slot, state: &BootState) -> Option<String> {
    state.fell_back(running).then(|| {
        let failed = running.other();
        format!(
            "OS rolled back: slot {failed} did not commit within its {TRIES} tries \
             ({} left); booted slot {running} instead",
            state.left(failed)
        )
    })
}

/// Whether the device is healthy by local evidence.
pub async fn healthy(containerd: &Containerd, handle: &Handle) -> bool {
    if !containerd.answers(ANSWER).await || !handle.ping(ANSWER).await {
        return false;
    }
    handle
        .tasks()
        .iter()
        .filter(|t| t.desired_status == DesiredStatus::Running)
        .all(|t| t.last_status == TaskStatus::Running)
}

/// Makes `running` the committed slot on `disk`: first in the order, all its tries.
/// `Ok(false)` when it already was. A boot state with no whole copy (which U-Boot
/// would have replaced with its defaults) is written afresh.
pub fn commit(disk: &Path, running: Slot) -> Result<bool, BootStateError> {
    let (state, fresh) = match boot::read(disk) {
        Ok(s) => (s, false),
        Err(e @ BootStateError::NoCopy(..)) => {
            warn!("{e}; writing a fresh one");
            let s = BootState {
                first: running,
                a_left: TRIES,
                b_left: TRIES,
            };
            (s, true)
        }
        Err(e) => return Err(e),
    };
    let next = state.committed(running);
    if next == state && !fresh {
        return Ok(false);
    }
    boot::write(disk, &next)?;
    Ok(true)
}

/// Waits for the device to be healthy, then commits `running` on `disk`; until `stop`.
pub async fn run(
    running: Slot,
    disk: PathBuf,
    containerd: Containerd,
    handle: Handle,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(CHECK_EVERY);
    let mut healthy_in_a_row = 0;
    while healthy_in_a_row < HEALTHY_CHECKS {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if healthy(&containerd, &handle).await {
            healthy_in_a_row += 1;
        } else {
            healthy_in_a_row = 0;
        }
    }
    let path = disk.clone();
    match tokio::task::spawn_blocking(move || commit(&path, running)).await {
        Ok(Ok(true)) => {
            info!(slot = %running, disk = %disk.display(), "healthy: OS slot committed")
        }
        Ok(Ok(false)) => info!(slot = %running, "healthy: OS slot was already committed"),
        Ok(Err(e)) => warn!(slot = %running, "cannot commit the OS slot: {e}"),
        Err(e) => warn!(slot = %running, "the commit did not finish: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fallback_is_reported_and_commit_resets_the_count() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("card.img");
        std::fs::write(&disk, vec![0u8; 2 * 1024 * 1024]).expect("card");
        // Slot B was installed and tried three times; U-Boot then booted A.
        let state = BootState {
            first: Slot::B,
            a_left: 2,
            b_left: 0,
        };
        boot::write(&disk, &state).expect("write");
        let why = rollback(Slot::A, &state).expect("a rollback");
        assert!(why.contains("slot B did not commit"), "{why}");
        assert_eq!(rollback(Slot::B, &state), None);

        assert!(commit(&disk, Slot::A).expect("commit"));
        let now = boot::read(&disk).expect("read");
        assert_eq!(
            now,
            BootState {
                first: Slot::A,
                a_left: TRIES,
                b_left: 0
            }
        );
        assert_eq!(rollback(Slot::A, &now), None, "reported once");
        assert!(!commit(&disk, Slot::A).expect("again"), "nothing to write");
    }

    #[test]
    fn a_card_without_boot_state_gets_a_committed_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = dir.path().join("card.img");
        std::fs::write(&disk, vec![0u8; 2 * 1024 * 1024]).expect("card");
        assert!(commit(&disk, Slot::B).expect("commit"));
        let s = boot::read(&disk).expect("read");
        assert_eq!((s.first, s.left(Slot::B)), (Slot::B, TRIES));
    }
}
