//! Host figures for the hub, sampled every `metrics_interval` and appended as `Metric`
//! records (the first the outbox drops under pressure): CPU use over all cores, memory,
//! the data partition's disk, and the board's temperature where it has a sensor.

use std::path::{Path, PathBuf};
use std::time::Duration;

use skerry_proto::link::{HostMetrics, Message};
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Outbound;
use crate::outbox::Class;

const THERMAL: &str = "/sys/class/thermal";

pub struct Sampler {
    sys: System,
    data_dir: PathBuf,
}

impl Sampler {
    pub fn new(data_dir: PathBuf) -> Self {
        let sys = System::new_with_specifics(
            RefreshKind::new()
                .with_cpu(CpuRefreshKind::new().with_cpu_usage())
                .with_memory(MemoryRefreshKind::new().with_ram()),
        );
        Self { sys, data_dir }
    }

    /// CPU use is measured since the previous call (or since `new` for the first).
    pub fn sample(&mut self) -> HostMetrics {
        self.sys.refresh_cpu_usage();
        self.sys
            .refresh_memory_specifics(MemoryRefreshKind::new().with_ram());
        let (disk_used_mib, disk_total_mib) = disk(&self.data_dir).unwrap_or((0, 0));
        HostMetrics {
            cpu_percent: self.sys.global_cpu_usage().clamp(0.0, 100.0),
            memory_used_mib: self.sys.used_memory() >> 20,
            memory_total_mib: self.sys.total_memory() >> 20,
            disk_used_mib,
            disk_total_mib,
            temperature_c: temperature(Path::new(THERMAL)),
            outbox_pending_records: None,
        }
    }
}

/// (used, total) MiB of the filesystem holding `dir`.
fn disk(dir: &Path) -> Option<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = st.fragment_size() as u64;
    let total = st.blocks() as u64 * frag;
    let free = st.blocks_free() as u64 * frag;
    Some((total.saturating_sub(free) >> 20, total >> 20))
}

/// The hottest thermal zone, in °C (the kernel reports millidegrees).
fn temperature(root: &Path) -> Option<f32> {
    let zones = std::fs::read_dir(root).ok()?;
    zones
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("thermal_zone"))
        .filter_map(|e| std::fs::read_to_string(e.path().join("temp")).ok())
        .filter_map(|t| t.trim().parse::<i64>().ok())
        .map(|m| m as f32 / 1000.0)
        .reduce(f32::max)
}

pub async fn run(data_dir: PathBuf, interval: Duration, out: Outbound, stop: CancellationToken) {
    let mut sampler = Sampler::new(data_dir);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; CPU use needs an interval behind it.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let mut m = sampler.sample();
        m.outbox_pending_records = Some(out.outbox().stats().pending_records);
        if let Err(e) = out.append(Class::Metric, Message::Metrics(m)).await {
            // Metrics are the first to go when the outbox is full; that is by design.
            debug!("metrics not recorded: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_is_the_hottest_zone() {
        let d = tempfile::tempdir().expect("tempdir");
        for (zone, milli) in [("thermal_zone0", "48312\n"), ("thermal_zone1", "51000\n")] {
            std::fs::create_dir(d.path().join(zone)).expect("zone");
            std::fs::write(d.path().join(zone).join("temp"), milli).expect("temp");
        }
        std::fs::create_dir(d.path().join("cooling_device0")).expect("other");
        assert_eq!(temperature(d.path()), Some(51.0));
        assert_eq!(temperature(&d.path().join("none")), None);
    }

    #[test]
    fn sample_reports_memory_and_disk() {
        let d = tempfile::tempdir().expect("tempdir");
        let mut s = Sampler::new(d.path().into());
        let m = s.sample();
        assert!(
            m.memory_total_mib > 0 && m.memory_used_mib <= m.memory_total_mib,
            "{m:?}"
        );
        assert!(
            m.disk_total_mib > 0 && m.disk_used_mib <= m.disk_total_mib,
            "{m:?}"
        );
        assert!((0.0..=100.0).contains(&m.cpu_percent));
    }
}
