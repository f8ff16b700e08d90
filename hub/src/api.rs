//! The AWS JSON 1.1 protocol: `X-Amz-Target` names the operation, the body is its input,
//! and errors carry `__type` the way the aws CLI reads them. Operations are synchronous
//! over the store; the server runs them on the blocking pool.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::store::{Store, StoreError};
use crate::{ecs, events, ssm};

pub const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
pub const SSM_TARGET_PREFIX: &str = "AmazonSSM.";
/// Skerry's own operations (the device event history), which neither ECS nor SSM has.
pub const SKERRY_TARGET_PREFIX: &str = "SkerryHub_20261126.";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The AWS service an operation belongs to; its SigV4 signing name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Ecs,
    Ssm,
    Skerry,
}

impl Service {
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::Ecs => "ecs",
            Service::Ssm => "ssm",
            Service::Skerry => "skerry",
        }
    }
}

/// Splits `X-Amz-Target` into the service and operation name.
pub fn parse_target(target: &str) -> Option<(Service, &str)> {
    if let Some(op) = target.strip_prefix(ECS_TARGET_PREFIX) {
        Some((Service::Ecs, op))
    } else {
        target
            .strip_prefix(SSM_TARGET_PREFIX)
            .map(|op| (Service::Ssm, op))
            .or_else(|| {
                target
                    .strip_prefix(SKERRY_TARGET_PREFIX)
                    .map(|op| (Service::Skerry, op))
            })
    }
}

/// An error in the shape AWS JSON services answer with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::json!({ "__type": self.code, "message": self.message })
            .to_string()
            .into_bytes()
    }
}

/// The hub's API state: the store and the identity its ARNs carry.
pub struct Api {
    pub store: Store,
    pub region: String,
    pub account_id: String,
}

impl Api {
    /// Runs one operation at the hub's time `now` (Unix seconds, fractional).
    pub fn call(
        &self,
        service: Service,
        operation: &str,
        body: &[u8],
        now: f64,
    ) -> Result<Value, ApiError> {
        // The aws CLI sends an empty body for operations without input.
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            &b"{}"[..]
        } else {
            body
        };
        match service {
            Service::Ecs => ecs::call(self, operation, body, now),
            Service::Ssm => ssm::call(self, operation, body, now),
            Service::Skerry => events::call(self, operation, body),
        }
    }

    pub fn arn(&self, service: &str, resource: &str) -> String {
        format!(
            "arn:aws:{service}:{}:{}:{resource}",
            self.region, self.account_id
        )
    }
}

/// Decodes an operation's input; AWS answers type errors with SerializationException.
pub fn input<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(
            "SerializationException",
            format!("invalid request body: {e}"),
        )
    })
}

pub fn unknown_operation(operation: &str) -> ApiError {
    ApiError::bad_request(
        "UnknownOperationException",
        format!("operation {operation:?} is not supported by this hub"),
    )
}

/// Store failures are the hub's fault; the detail goes to the log, not to the client.
pub fn internal(code: &'static str, err: StoreError) -> ApiError {
    tracing::error!(error = %err, "store failure");
    ApiError::new(500, code, "internal error; see the hub's log")
}

/// Pagination tokens are opaque to clients; hex keeps them printable and unambiguous.
pub fn encode_token(key: &str) -> String {
    hex::encode(key.as_bytes())
}

pub fn decode_token(token: &str) -> Option<String> {
    String::from_utf8(hex::decode(token).ok()?).ok()
}

/// The row id a `nextToken` made by `encode_token(&id.to_string())` stands for; `None` for
/// no token, an `InvalidParameterException` for one this hub did not give out.
pub fn decode_id_token(token: Option<&str>) -> Result<Option<i64>, ApiError> {
    token
        .map(|t| {
            decode_token(t)
                .and_then(|s| s.parse::<i64>().ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "InvalidParameterException",
                        format!("nextToken {t:?} is not one this hub gave out"),
                    )
                })
        })
        .transpose()
}

/// Validates a page size against the operation's `1..=max`, defaulting to `max`.
pub fn page_size(
    value: Option<i64>,
    max: usize,
    field: &str,
    code: &'static str,
) -> Result<usize, ApiError> {
    match value {
        None => Ok(max),
        Some(n) if n >= 1 && n as usize <= max => Ok(n as usize),
        Some(n) => Err(ApiError::bad_request(
            code,
            format!("{field} {n} is out of range: use 1 to {max}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_by_service() {
        assert_eq!(
            parse_target("AmazonEC2ContainerServiceV20141113.ListClusters"),
            Some((Service::Ecs, "ListClusters"))
        );
        assert_eq!(
            parse_target("AmazonSSM.CreateActivation"),
            Some((Service::Ssm, "CreateActivation"))
        );
        assert_eq!(parse_target("DynamoDB_20120810.ListTables"), None);
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        assert_eq!(
            decode_token(&encode_token("web:3")).as_deref(),
            Some("web:3")
        );
        assert_eq!(decode_token("zz"), None);
    }
}
