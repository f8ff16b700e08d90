//! The task-level fields, the task's resources, and the order the other checks run in.

use std::collections::HashSet;

use super::*;
use crate::taskdef::*;

impl TaskDefinition {
    /// Every check, in document order: task-level fields first, then each part.
    pub(in crate::taskdef) fn check(&self, c: &mut Check) {
        self.check_task_fields(c);
        self.check_sizes(c);
        self.check_task_unsupported(c);
        self.check_volumes(c);
        let mode = self.network_mode();
        self.check_containers(c, mode);
        self.check_dependencies(c);
        self.check_resources(c);
        self.check_host_ports(c, mode);
    }

    /// `family`, roles, the network mode and the compatibilities.
    fn check_task_fields(&self, c: &mut Check) {
        if !valid_name(&self.family, 255) {
            c.fail("family", "must be 1 to 255 letters, digits, '_' or '-'");
        }
        for (field, v) in [
            ("taskRoleArn", &self.task_role_arn),
            ("executionRoleArn", &self.execution_role_arn),
        ] {
            if v.as_deref().is_some_and(|s| !s.is_empty()) {
                c.fail(
                    field,
                    "is not supported by Skerry: there is no IAM on the device; remove it and \
                     give containers what they need through environment or mounted files",
                );
            }
        }
        if self.network_mode == Some(NetworkMode::Awsvpc) {
            c.fail(
                "networkMode",
                "awsvpc is not supported by Skerry: there are no ENIs at the edge; use bridge, \
                 host or none",
            );
        }
        for (i, compat) in self.requires_compatibilities.iter().flatten().enumerate() {
            let path = format!("requiresCompatibilities[{i}]");
            match compat.as_str() {
                "EXTERNAL" | "EC2" => {}
                "FARGATE" => c.fail(
                    path,
                    "FARGATE is not supported by Skerry: tasks run on your own devices; use \
                     EXTERNAL",
                ),
                other => c.fail(
                    path,
                    format!("unknown compatibility {other:?}: use EXTERNAL"),
                ),
            }
        }
    }

    /// The task's `cpu` and `memory` read as sizes.
    fn check_sizes(&self, c: &mut Check) {
        if let Some(cpu) = &self.cpu {
            if let Some(units) = cpu.as_cpu_units().filter(|u| !(128..=196_608).contains(u)) {
                c.fail(
                    "cpu",
                    format!("{units} CPU units is out of range: use 128 (0.125 vCPU) to 196608"),
                );
            } else if cpu.as_cpu_units().is_none() {
                c.fail(
                    "cpu",
                    format!(
                        "cannot read {:?} as CPU: use units (\"256\") or vCPUs (\"0.5 vCPU\")",
                        cpu.0
                    ),
                );
            }
        }
        if let Some(mem) = &self.memory {
            if mem.as_mib().is_none_or(|m| m == 0) {
                c.fail(
                    "memory",
                    format!(
                        "cannot read {:?} as memory: use MiB (\"512\") or GB (\"1 GB\")",
                        mem.0
                    ),
                );
            }
        }
    }

    /// Task-level settings Skerry does not honour, each with what to do instead.
    fn check_task_unsupported(&self, c: &mut Check) {
        for (field, v) in [("pidMode", &self.pid_mode), ("ipcMode", &self.ipc_mode)] {
            if let Some(mode) = v.as_deref().filter(|m| *m != "none") {
                c.fail(
                    field,
                    format!(
                        "{mode:?} is not supported by Skerry: each container gets its own \
                         namespace; remove it"
                    ),
                );
            }
        }
        if let Some(rp) = &self.runtime_platform {
            if rp
                .operating_system_family
                .as_deref()
                .is_some_and(|f| f != "LINUX")
            {
                c.fail(
                    "runtimePlatform.operatingSystemFamily",
                    "is not supported by Skerry unless LINUX: devices run Linux containers",
                );
            }
            if rp
                .cpu_architecture
                .as_deref()
                .is_some_and(|a| a != "ARM64" && a != "X86_64")
            {
                c.fail("runtimePlatform.cpuArchitecture", "must be ARM64 or X86_64");
            }
        }
        c.unsupported(
            "placementConstraints",
            &self.placement_constraints,
            "each device runs what the hub assigns to it; remove them",
        );
        c.unsupported(
            "proxyConfiguration",
            &self.proxy_configuration,
            "there is no App Mesh at the edge; remove it",
        );
        c.unsupported(
            "inferenceAccelerators",
            &self.inference_accelerators,
            "Elastic Inference does not exist on devices; pass devices through \
             linuxParameters.devices instead",
        );
        c.unsupported(
            "ephemeralStorage",
            &self.ephemeral_storage,
            "it is a Fargate setting; storage is the device's disk",
        );
        if self.enable_fault_injection == Some(true) {
            c.fail(
                "enableFaultInjection",
                "is not supported by Skerry: remove it or set it to false",
            );
        }
    }

    /// Each container, unique names, and at least one essential container.
    fn check_containers(&self, c: &mut Check, mode: NetworkMode) {
        let mut names = HashSet::new();
        for (i, cd) in self.container_definitions.iter().enumerate() {
            let base = format!("containerDefinitions[{i}]");
            if !names.insert(cd.name.as_str()) {
                c.fail(
                    format!("{base}.name"),
                    format!(
                        "container name {:?} is used twice; names must be unique",
                        cd.name
                    ),
                );
            }
            self.check_container(c, &base, cd, mode);
        }
        if self.container_definitions.is_empty() {
            c.fail("containerDefinitions", "must list at least one container");
        } else if !self
            .container_definitions
            .iter()
            .any(|cd| cd.is_essential())
        {
            c.fail(
                "containerDefinitions",
                "at least one container must be essential (essential defaults to true)",
            );
        }
    }

    pub(super) fn check_resources(&self, c: &mut Check) {
        let task_mem = self.memory_mib();
        let task_cpu = self.cpu_units();
        let mut reserved_mem = 0u64;
        let mut reserved_cpu = 0u64;
        for (i, cd) in self.container_definitions.iter().enumerate() {
            let base = format!("containerDefinitions[{i}]");
            if task_mem.is_none() && cd.memory.is_none() && cd.memory_reservation.is_none() {
                c.fail(
                    format!("{base}.memory"),
                    "without a task-level memory each container needs memory or \
                     memoryReservation (MiB), as ECS requires for EXTERNAL",
                );
            }
            if let (Some(tm), Some(m)) = (task_mem, cd.memory) {
                if m > tm {
                    c.fail(
                        format!("{base}.memory"),
                        format!("{m} MiB exceeds the task's memory of {tm} MiB"),
                    );
                }
            }
            reserved_mem += cd.memory_reservation.or(cd.memory).unwrap_or(0);
            reserved_cpu += u64::from(cd.cpu.unwrap_or(0));
        }
        if let Some(tm) = task_mem {
            if reserved_mem > tm {
                c.fail(
                    "memory",
                    format!(
                        "the containers reserve {reserved_mem} MiB, more than the task's {tm} MiB"
                    ),
                );
            }
        }
        if let Some(tc) = task_cpu {
            if reserved_cpu > u64::from(tc) {
                c.fail(
                    "cpu",
                    format!(
                        "the containers reserve {reserved_cpu} CPU units, more than the task's {tc}"
                    ),
                );
            }
        }
    }
}
