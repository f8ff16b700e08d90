//! Device registration: the one request a device makes with the SSM activation it was given
//! (the ActivationId and ActivationCode `aws ssm create-activation` returned), and the hub's
//! answer: the identity the device keeps from then on: its instance id, a client certificate for
//! its key, and where its link connects.
//! JSON, camelCase, unknown fields rejected so a version mismatch shows up as an error.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A registration document error: the JSON path of the field and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RegistrationError {
    pub path: String,
    pub message: String,
}

fn error(path: &str, message: impl Into<String>) -> RegistrationError {
    RegistrationError {
        path: path.to_string(),
        message: message.into(),
    }
}

fn from_json<T: serde::de::DeserializeOwned>(json: &str) -> Result<T, RegistrationError> {
    let de = &mut serde_json::Deserializer::from_str(json);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        error(
            if path == "." { "" } else { &path },
            e.into_inner().to_string(),
        )
    })
}

/// CPU architectures by their ECS names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Architecture {
    #[serde(rename = "arm64")]
    Arm64,
    #[serde(rename = "x86_64")]
    X86_64,
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationRequest {
    pub activation_id: String,
    pub activation_code: String,
    /// The cluster to join, by name; ECS's `default` when absent.
    #[serde(default = "default_cluster")]
    pub cluster: String,
    pub hostname: String,
    pub architecture: Architecture,
    pub agent_version: String,
    /// What the device offers tasks: CPU units (1024 per core), as ECS counts them.
    pub cpu_units: u32,
    pub memory_mib: u64,
    /// A PKCS#10 certificate signing request in PEM, for a key made on the device that never
    /// leaves it. The hub signs it with its CA; the subject is the hub's to choose.
    pub csr: String,
    /// ECS custom attributes of the container instance (name -> value).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attributes: std::collections::BTreeMap<String, String>,
}

fn default_cluster() -> String {
    "default".into()
}

// Hand-written so the activation code never reaches a log line.
impl fmt::Debug for RegistrationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationRequest")
            .field("activation_id", &self.activation_id)
            .field("activation_code", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("hostname", &self.hostname)
            .field("architecture", &self.architecture)
            .field("agent_version", &self.agent_version)
            .field("cpu_units", &self.cpu_units)
            .field("memory_mib", &self.memory_mib)
            .field("attributes", &self.attributes)
            .finish()
    }
}

/// SSM activation ids are UUIDs: 8-4-4-4-12 hex digits.
fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// ECS cluster names: 1 to 255 letters, digits, hyphens and underscores.
pub fn is_cluster_name(s: &str) -> bool {
    (1..=255).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl RegistrationRequest {
    pub fn parse(json: &str) -> Result<Self, RegistrationError> {
        let r: Self = from_json(json)?;
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), RegistrationError> {
        if !is_uuid(&self.activation_id) {
            return Err(error(
                "activationId",
                format!(
                    "{:?} is not an activation id; use the ActivationId create-activation returned",
                    self.activation_id
                ),
            ));
        }
        let code = &self.activation_code;
        if code.is_empty() || code.len() > 128 || !code.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(error(
                "activationCode",
                "must be the 1 to 128 letters and digits create-activation returned",
            ));
        }
        if !is_cluster_name(&self.cluster) {
            return Err(error(
                "cluster",
                format!(
                    "{:?} must be 1 to 255 letters, digits, hyphens and underscores",
                    self.cluster
                ),
            ));
        }
        let host_ok = (1..=253).contains(&self.hostname.len())
            && self
                .hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !host_ok {
            return Err(error(
                "hostname",
                format!(
                    "{:?} must be 1 to 253 letters, digits, '-' and '.'",
                    self.hostname
                ),
            ));
        }
        if self.agent_version.is_empty() || self.agent_version.len() > 64 {
            return Err(error("agentVersion", "must be 1 to 64 characters"));
        }
        if self.cpu_units == 0 {
            return Err(error("cpuUnits", "must be at least 1 (1024 per core)"));
        }
        if self.memory_mib == 0 {
            return Err(error("memoryMib", "must be at least 1"));
        }
        if !self.csr.contains("-----BEGIN CERTIFICATE REQUEST-----") {
            return Err(error("csr", "must be a PEM certificate signing request"));
        }
        for name in self.attributes.keys() {
            let ok = (1..=128).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'/'));
            if !ok {
                return Err(error(
                    &format!("attributes.{name}"),
                    "attribute names are 1 to 128 letters, digits, '-', '_', '.' and '/'",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RegistrationResponse {
    /// The managed instance id, `mi-` and 17 hex digits, as SSM names ECS Anywhere devices.
    /// It is the CN of `certificate` and the device's name on the broker.
    pub instance_id: String,
    pub container_instance_arn: String,
    pub cluster_arn: String,
    /// The device's client certificate (PEM), signed by the hub's CA.
    pub certificate: String,
    /// The hub's CA certificate (PEM): the root the device trusts for the broker and the hub.
    pub ca_certificate: String,
    /// The MQTT broker as the device reaches it: `mqtts://HOST:PORT`.
    pub broker_url: String,
}

/// Whether `s` is a managed instance id: `mi-` and 17 lowercase hex digits.
pub fn is_instance_id(s: &str) -> bool {
    s.strip_prefix("mi-").is_some_and(|h| {
        h.len() == 17
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl RegistrationResponse {
    pub fn parse(json: &str) -> Result<Self, RegistrationError> {
        let r: Self = from_json(json)?;
        r.validate()?;
        Ok(r)
    }

    pub fn validate(&self) -> Result<(), RegistrationError> {
        if !is_instance_id(&self.instance_id) {
            return Err(error(
                "instanceId",
                format!("{:?} is not mi- and 17 hex digits", self.instance_id),
            ));
        }
        if !self.container_instance_arn.starts_with("arn:") {
            return Err(error("containerInstanceArn", "must be an ARN"));
        }
        if !self.cluster_arn.starts_with("arn:") {
            return Err(error("clusterArn", "must be an ARN"));
        }
        if !self.broker_url.starts_with("mqtts://") {
            return Err(error(
                "brokerUrl",
                format!("{:?} must start with mqtts://", self.broker_url),
            ));
        }
        for (path, value) in [
            ("certificate", &self.certificate),
            ("caCertificate", &self.ca_certificate),
        ] {
            if !value.contains("-----BEGIN CERTIFICATE-----") {
                return Err(error(path, "must be a PEM certificate"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUEST: &str = r#"{
        "activationId": "1da5d8c4-2a28-44b5-ac86-911892afea04",
        "activationCode": "z8Dou5q22cYMhuHuc0ww",
        "hostname": "pi-01",
        "architecture": "arm64",
        "agentVersion": "0.1.0",
        "cpuUnits": 4096,
        "memoryMib": 3800,
        "csr": "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"
    }"#;

    #[test]
    fn request_parses_with_default_cluster_and_hides_the_code() {
        let r = RegistrationRequest::parse(REQUEST).expect("valid");
        assert_eq!(r.cluster, "default");
        assert_eq!(r.architecture, Architecture::Arm64);
        assert!(!format!("{r:?}").contains("z8Dou5q22cYMhuHuc0ww"));
        let back = serde_json::to_string(&r).expect("serialize");
        assert_eq!(RegistrationRequest::parse(&back), Ok(r));
    }

    #[test]
    fn request_errors_name_the_field() {
        for (from, to, path) in [
            ("1da5d8c4-2a28", "1da5d8c4_2a28", "activationId"),
            ("z8Dou5q22cYMhuHuc0ww", "z8D ou5", "activationCode"),
            ("pi-01", "pi_01", "hostname"),
            ("-----BEGIN CERTIFICATE REQUEST-----", "", "csr"),
            ("\"arm64\"", "\"armhf\"", "architecture"),
            ("4096", "0", "cpuUnits"),
            ("\"hostname\"", "\"hostName\"", "hostName"),
        ] {
            let err = RegistrationRequest::parse(&REQUEST.replace(from, to)).expect_err(path);
            assert_eq!(err.path, path, "{err}");
        }
    }

    #[test]
    fn response_round_trips_and_checks_the_link() {
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let r = RegistrationResponse {
            instance_id: "mi-0123456789abcdef0".into(),
            container_instance_arn:
                "arn:aws:ecs:us-east-1:000000000000:container-instance/default/0123abcd".into(),
            cluster_arn: "arn:aws:ecs:us-east-1:000000000000:cluster/default".into(),
            certificate: cert.into(),
            ca_certificate: cert.into(),
            broker_url: "mqtts://hub.example:8883".into(),
        };
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(RegistrationResponse::parse(&json), Ok(r.clone()));
        let bad = json.replace("mqtts://", "mqtt://");
        assert_eq!(
            RegistrationResponse::parse(&bad).expect_err("scheme").path,
            "brokerUrl"
        );
        assert!(!is_instance_id("mi-0123456789ABCDEF0"));
    }
}
