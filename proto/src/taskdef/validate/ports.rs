//! Port mappings of one container, and host ports across the task.

use std::collections::HashMap;

use super::*;
use crate::taskdef::*;

impl TaskDefinition {
    pub(super) fn check_ports(
        &self,
        c: &mut Check,
        base: &str,
        cd: &ContainerDefinition,
        mode: NetworkMode,
    ) {
        let Some(pms) = &cd.port_mappings else { return };
        if !pms.is_empty() && mode == NetworkMode::None {
            c.fail(
                format!("{base}.portMappings"),
                "cannot be used with networkMode none: the task has no network; use bridge",
            );
        }
        if !pms.is_empty() && cd.is_networking_disabled() {
            c.fail(
                format!("{base}.portMappings"),
                "cannot be used with disableNetworking",
            );
        }
        for (i, pm) in pms.iter().enumerate() {
            let p = format!("{base}.portMappings[{i}]");
            c.unsupported(
                &format!("{p}.containerPortRange"),
                &pm.container_port_range,
                "map each port with containerPort",
            );
            c.unsupported(
                &format!("{p}.appProtocol"),
                &pm.app_protocol,
                "it is a Service Connect setting; remove it",
            );
            match pm.container_port {
                None => c.fail(format!("{p}.containerPort"), "is required"),
                Some(cp) if !(1..=65535).contains(&cp) => {
                    c.fail(format!("{p}.containerPort"), "must be 1 to 65535")
                }
                Some(_) => {}
            }
            if let Some(hp) = pm.host_port {
                if hp > 65535 {
                    c.fail(
                        format!("{p}.hostPort"),
                        "must be 1 to 65535 (or 0/absent for a dynamic port)",
                    );
                } else if mode == NetworkMode::Host && hp != 0 && Some(hp) != pm.container_port {
                    c.fail(
                        format!("{p}.hostPort"),
                        "must equal containerPort in host network mode (or be omitted)",
                    );
                }
            }
        }
    }

    pub(super) fn check_host_ports(&self, c: &mut Check, mode: NetworkMode) {
        let mut seen: HashMap<(u32, Protocol), String> = HashMap::new();
        for (i, cd) in self.container_definitions.iter().enumerate() {
            for (j, pm) in cd.port_mappings.iter().flatten().enumerate() {
                let port = match mode {
                    NetworkMode::Host => pm.container_port,
                    _ => pm.host_port.filter(|p| *p != 0),
                };
                let Some(port) = port else { continue };
                let path = format!("containerDefinitions[{i}].portMappings[{j}]");
                let key = (port, pm.protocol());
                if let Some(first) = seen.get(&key) {
                    let field = if mode == NetworkMode::Host {
                        "containerPort"
                    } else {
                        "hostPort"
                    };
                    c.fail(
                        format!("{path}.{field}"),
                        format!(
                            "host port {port}/{} is already mapped by {first}",
                            pm.protocol().as_str()
                        ),
                    );
                } else {
                    seen.insert(key, path);
                }
            }
        }
    }
}
