//! The task's volumes: names, host paths, what Skerry cannot mount.

use std::collections::HashSet;

use super::*;
use crate::taskdef::*;

impl TaskDefinition {
    pub(super) fn check_volumes(&self, c: &mut Check) {
        let mut names = HashSet::new();
        for (i, v) in self.volumes.iter().flatten().enumerate() {
            let base = format!("volumes[{i}]");
            if !valid_name(&v.name, 255) {
                c.fail(
                    format!("{base}.name"),
                    "must be 1 to 255 letters, digits, '_' or '-'",
                );
            }
            if !names.insert(v.name.as_str()) {
                c.fail(
                    format!("{base}.name"),
                    format!("volume name {:?} is used twice", v.name),
                );
            }
            c.unsupported(
                &format!("{base}.efsVolumeConfiguration"),
                &v.efs_volume_configuration,
                "there is no EFS at the edge; use host.sourcePath",
            );
            c.unsupported(
                &format!("{base}.fsxWindowsFileServerVolumeConfiguration"),
                &v.fsx_windows_file_server_volume_configuration,
                "there is no FSx at the edge; use host.sourcePath",
            );
            if v.configured_at_launch == Some(true) {
                c.fail(
                    format!("{base}.configuredAtLaunch"),
                    "is not supported by Skerry: declare the volume in the task definition",
                );
            }
            if let Some(sp) = v.host.as_ref().and_then(|h| h.source_path.as_deref()) {
                if !sp.starts_with('/') {
                    c.fail(
                        format!("{base}.host.sourcePath"),
                        format!("{sp:?} must be an absolute path"),
                    );
                }
                if v.docker_volume_configuration.is_some() {
                    c.fail(
                        format!("{base}.dockerVolumeConfiguration"),
                        "cannot be combined with host; keep one",
                    );
                }
            }
            if let Some(dv) = &v.docker_volume_configuration {
                let p = format!("{base}.dockerVolumeConfiguration");
                if dv.scope.as_deref().is_some_and(|s| s != "task") {
                    c.fail(
                        format!("{p}.scope"),
                        "only scope \"task\" is supported by Skerry: for data that outlives the \
                         task use host.sourcePath",
                    );
                }
                if dv.driver.as_deref().is_some_and(|d| d != "local") {
                    c.fail(
                        format!("{p}.driver"),
                        "only the local driver is supported by Skerry",
                    );
                }
                if dv.driver_opts.as_ref().is_some_and(|o| !o.is_empty()) {
                    c.fail(
                        format!("{p}.driverOpts"),
                        "is not supported by Skerry: use host.sourcePath for a bind mount",
                    );
                }
                if dv.autoprovision == Some(true) {
                    c.fail(
                        format!("{p}.autoprovision"),
                        "applies to shared volumes, which Skerry does not support; remove it",
                    );
                }
            }
        }
    }
}
