//! One container definition, field by field, and its health check.

use std::net::IpAddr;

use serde_json::Value;

use super::*;
use crate::taskdef::*;

impl TaskDefinition {
    pub(super) fn check_container(
        &self,
        c: &mut Check,
        base: &str,
        cd: &ContainerDefinition,
        mode: NetworkMode,
    ) {
        check_basics(c, base, cd);
        self.check_ports(c, base, cd, mode);
        self.check_mounts(c, base, cd);
        check_process(c, base, cd);
        if let Some(lp) = &cd.linux_parameters {
            self.check_linux(c, &format!("{base}.linuxParameters"), lp);
        }
        check_ulimits(c, base, cd);
        check_lifecycle(c, base, cd);
        check_names_and_dns(c, base, cd, mode);
        check_unsupported(c, base, cd);
    }

    /// `mountPoints`: each names a declared volume and an absolute path.
    fn check_mounts(&self, c: &mut Check, base: &str, cd: &ContainerDefinition) {
        for (i, mp) in cd.mount_points.iter().flatten().enumerate() {
            let p = format!("{base}.mountPoints[{i}]");
            if self.volume(&mp.source_volume).is_none() {
                c.fail(
                    format!("{p}.sourceVolume"),
                    format!(
                        "names no volume: declare {:?} under volumes",
                        mp.source_volume
                    ),
                );
            }
            if !mp.container_path.starts_with('/') {
                c.fail(format!("{p}.containerPath"), "must be an absolute path");
            }
        }
    }
}

/// The name, the image, the environment and the memory settings.
fn check_basics(c: &mut Check, base: &str, cd: &ContainerDefinition) {
    if !valid_name(&cd.name, 255) {
        c.fail(
            format!("{base}.name"),
            format!("{:?} must be 1 to 255 letters, digits, '_' or '-'", cd.name),
        );
    }
    if cd.image.trim().is_empty() {
        c.fail(format!("{base}.image"), "must name an image");
    }
    for (i, kv) in cd.environment.iter().flatten().enumerate() {
        if kv.name.is_empty() || kv.name.contains('=') || kv.name.contains('\0') {
            c.fail(
                format!("{base}.environment[{i}].name"),
                "must be non-empty and contain no '='",
            );
        }
    }
    if let Some(m) = cd.memory {
        if m < 6 {
            c.fail(
                format!("{base}.memory"),
                "must be at least 6 MiB (the container runtime needs that much)",
            );
        }
        if cd.memory_reservation.is_some_and(|r| r > m) {
            c.fail(
                format!("{base}.memoryReservation"),
                "must not exceed memory",
            );
        }
    }
    if cd.memory_reservation == Some(0) {
        c.fail(
            format!("{base}.memoryReservation"),
            "must be greater than 0 when given",
        );
    }
}

/// `workingDirectory` and `user`.
fn check_process(c: &mut Check, base: &str, cd: &ContainerDefinition) {
    if let Some(wd) = &cd.working_directory {
        if !wd.starts_with('/') {
            c.fail(
                format!("{base}.workingDirectory"),
                "must be an absolute path",
            );
        }
    }
    if let Some(u) = &cd.user {
        let ok = !u.is_empty()
            && u.split(':').count() <= 2
            && u.split(':')
                .all(|part| !part.is_empty() && !part.contains(char::is_whitespace));
        if !ok {
            c.fail(
                format!("{base}.user"),
                "must be \"user\" or \"user:group\", each a name or a number",
            );
        }
    }
}

/// `ulimits`: known names, soft within hard.
fn check_ulimits(c: &mut Check, base: &str, cd: &ContainerDefinition) {
    for (i, u) in cd.ulimits.iter().flatten().enumerate() {
        let p = format!("{base}.ulimits[{i}]");
        if !ULIMIT_NAMES.contains(&u.name.as_str()) {
            c.fail(
                format!("{p}.name"),
                format!(
                    "{:?} is not a ulimit: use one of {}",
                    u.name,
                    ULIMIT_NAMES.join(", ")
                ),
            );
        }
        if u.soft_limit > u.hard_limit {
            c.fail(format!("{p}.softLimit"), "must not exceed hardLimit");
        }
    }
}

/// The health check and the restart policy.
fn check_lifecycle(c: &mut Check, base: &str, cd: &ContainerDefinition) {
    if let Some(hc) = &cd.health_check {
        check_health(c, &format!("{base}.healthCheck"), hc);
    }
    if let Some(rp) = &cd.restart_policy {
        let p = format!("{base}.restartPolicy");
        if rp
            .restart_attempt_period
            .is_some_and(|s| !(60..=1800).contains(&s))
        {
            c.fail(
                format!("{p}.restartAttemptPeriod"),
                "must be 60 to 1800 seconds",
            );
        }
        if rp.ignored_exit_codes.as_ref().is_some_and(|e| e.len() > 50) {
            c.fail(
                format!("{p}.ignoredExitCodes"),
                "may list at most 50 exit codes",
            );
        }
    }
}

/// `hostname`, `extraHosts`, `dnsServers`, `dnsSearchDomains`, and which the network mode
/// allows.
fn check_names_and_dns(c: &mut Check, base: &str, cd: &ContainerDefinition, mode: NetworkMode) {
    if let Some(h) = &cd.hostname {
        if mode == NetworkMode::Host {
            c.fail(
                format!("{base}.hostname"),
                "cannot be set in host network mode: the container uses the device's \
                 hostname; remove it",
            );
        } else if !valid_hostname(h) {
            c.fail(
                format!("{base}.hostname"),
                format!("{h:?} is not a valid hostname"),
            );
        }
    }
    for (i, e) in cd.extra_hosts.iter().flatten().enumerate() {
        let p = format!("{base}.extraHosts[{i}]");
        if !valid_hostname(&e.hostname) {
            c.fail(
                format!("{p}.hostname"),
                format!("{:?} is not a valid hostname", e.hostname),
            );
        }
        if e.ip_address.parse::<IpAddr>().is_err() {
            c.fail(
                format!("{p}.ipAddress"),
                format!("{:?} is not an IP address", e.ip_address),
            );
        }
    }
    for (i, s) in cd.dns_servers.iter().flatten().enumerate() {
        if s.parse::<IpAddr>().is_err() {
            c.fail(
                format!("{base}.dnsServers[{i}]"),
                format!("{s:?} is not an IP address"),
            );
        }
    }
    for (i, s) in cd.dns_search_domains.iter().flatten().enumerate() {
        if !valid_hostname(s) {
            c.fail(
                format!("{base}.dnsSearchDomains[{i}]"),
                format!("{s:?} is not a valid domain"),
            );
        }
    }
    if mode == NetworkMode::Host
        && (cd.extra_hosts.as_ref().is_some_and(|v| !v.is_empty())
            || cd.dns_servers.as_ref().is_some_and(|v| !v.is_empty())
            || cd
                .dns_search_domains
                .as_ref()
                .is_some_and(|v| !v.is_empty()))
    {
        // Host mode shares the device's /etc/hosts and resolv.conf, as Docker does.
        let field = if cd.extra_hosts.as_ref().is_some_and(|v| !v.is_empty()) {
            "extraHosts"
        } else if cd.dns_servers.as_ref().is_some_and(|v| !v.is_empty()) {
            "dnsServers"
        } else {
            "dnsSearchDomains"
        };
        c.fail(
            format!("{base}.{field}"),
            "cannot be set in host network mode: the container uses the device's files; \
             remove it or use bridge",
        );
    }
}

/// What Skerry does not do, each with what to use instead.
fn check_unsupported(c: &mut Check, base: &str, cd: &ContainerDefinition) {
    if cd
        .version_consistency
        .as_deref()
        .is_some_and(|v| v != "enabled" && v != "disabled")
    {
        c.fail(
            format!("{base}.versionConsistency"),
            "must be \"enabled\" or \"disabled\"",
        );
    }
    for (field, v) in [
        ("interactive", cd.interactive),
        ("pseudoTerminal", cd.pseudo_terminal),
    ] {
        if v == Some(true) {
            c.fail(
                format!("{base}.{field}"),
                "is not supported by Skerry: containers run detached without a terminal; \
                 remove it",
            );
        }
    }
    let unsupported: [(&str, &Option<Value>, &str); 11] = [
        (
            "links",
            &cd.links,
            "use bridge networking and reach containers by port, or extraHosts",
        ),
        (
            "volumesFrom",
            &cd.volumes_from,
            "declare a volume and mount it in both containers",
        ),
        (
            "secrets",
            &cd.secrets,
            "there is no Secrets Manager or SSM at the edge; use environment or a host volume",
        ),
        (
            "repositoryCredentials",
            &cd.repository_credentials,
            "registry credentials are configured on the device",
        ),
        (
            "logConfiguration",
            &cd.log_configuration,
            "Skerry keeps container logs on the device; remove it",
        ),
        (
            "firelensConfiguration",
            &cd.firelens_configuration,
            "Skerry keeps container logs on the device; remove it",
        ),
        (
            "environmentFiles",
            &cd.environment_files,
            "there is no S3 at the edge; use environment",
        ),
        (
            "dockerSecurityOptions",
            &cd.docker_security_options,
            "use linuxParameters.capabilities or privileged",
        ),
        (
            "systemControls",
            &cd.system_controls,
            "sysctls are not set per container; remove them",
        ),
        (
            "resourceRequirements",
            &cd.resource_requirements,
            "GPUs are passed through linuxParameters.devices",
        ),
        (
            "credentialSpecs",
            &cd.credential_specs,
            "there is no Active Directory integration; remove them",
        ),
    ];
    for (field, v, why) in unsupported {
        c.unsupported(&format!("{base}.{field}"), v, why);
    }
}

fn check_health(c: &mut Check, p: &str, hc: &HealthCheck) {
    match hc.command.first().map(String::as_str) {
        Some("CMD") | Some("CMD-SHELL") if hc.command.len() >= 2 => {}
        Some("CMD") | Some("CMD-SHELL") => c.fail(
            format!("{p}.command"),
            "needs the command after CMD or CMD-SHELL",
        ),
        _ => c.fail(
            format!("{p}.command"),
            "must start with \"CMD\" or \"CMD-SHELL\", e.g. [\"CMD-SHELL\", \"curl -f http://localhost/ || exit 1\"]",
        ),
    }
    for (field, v, lo, hi) in [
        ("interval", hc.interval, 5, 300),
        ("timeout", hc.timeout, 2, 60),
        ("retries", hc.retries, 1, 10),
        ("startPeriod", hc.start_period, 0, 300),
    ] {
        if v.is_some_and(|v| !(lo..=hi).contains(&v)) {
            c.fail(format!("{p}.{field}"), format!("must be {lo} to {hi}"));
        }
    }
}
