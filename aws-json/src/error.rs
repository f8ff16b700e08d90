//! The error shape of AWS JSON services: an HTTP status, and a body with `__type` (the
//! error code) and `message`, the way the aws CLI reads them.

use serde_json::Value;

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

/// The code and message of an error body, as a client reads it: `__type` may carry a
/// namespace (`ns#Code`), and some services spell the message `Message`. `None` when the
/// body has no `__type`.
pub fn read_error(body: &Value) -> Option<(String, String)> {
    let code = body
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t).to_string())?;
    let message = body
        .get("message")
        .or_else(|| body.get("Message"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Some((code, message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_reads_back() {
        let e = ApiError::bad_request("ClusterNotFoundException", "Cluster not found.");
        let body: Value = serde_json::from_slice(&e.body()).expect("json");
        assert_eq!(
            read_error(&body),
            Some((
                "ClusterNotFoundException".into(),
                "Cluster not found.".into()
            ))
        );
        let namespaced = serde_json::json!({"__type": "com.amazon#Throttling", "Message": "slow"});
        assert_eq!(
            read_error(&namespaced),
            Some(("Throttling".into(), "slow".into()))
        );
        assert_eq!(read_error(&serde_json::json!({"message": "x"})), None);
    }
}
