//! Calls to the hub's API: the ECS and SSM JSON protocols, SigV4-signed with the operator's
//! access key, exactly as the aws CLI sends them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use skerry_aws_json::error::read_error;
use skerry_aws_json::sigv4::{self, Signed};
use skerry_aws_json::{Service, CONTENT_TYPE};

const DEFAULT_REGION: &str = "us-east-1";
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no hub given: set SKERRY_HUB (or AWS_ENDPOINT_URL) to the hub's API URL, or pass --hub; `scripts/hub-up DIR` writes them to DIR/env")]
    NoHub,
    #[error("hub URL {0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("{0} is not set: export the access key the hub is configured with (`source DIR/env` after scripts/hub-up)")]
    NoCredentials(&'static str),
    #[error("cannot reach the hub at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{operation} failed: {code}: {message}")]
    Api {
        operation: String,
        code: String,
        message: String,
    },
    #[error("{operation}: the hub answered {status} with a body that is not JSON")]
    BadResponse { operation: String, status: u16 },
    #[error("cannot sign the request: {0}")]
    Sign(#[from] sigv4::SigV4Error),
}

pub struct Hub {
    url: reqwest::Url,
    key_id: String,
    secret: String,
    region: String,
    http: reqwest::Client,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Hub {
    /// The hub at `url` (else `SKERRY_HUB`, else `AWS_ENDPOINT_URL`), with the access key from
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` and the region from `AWS_DEFAULT_REGION`.
    pub fn from_env(url: Option<String>) -> Result<Hub, ClientError> {
        let url = url
            .or_else(|| env("SKERRY_HUB"))
            .or_else(|| env("AWS_ENDPOINT_URL"))
            .ok_or(ClientError::NoHub)?;
        let parsed = reqwest::Url::parse(&url).map_err(|_| ClientError::BadUrl(url.clone()))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(ClientError::BadUrl(url));
        }
        let key_id =
            env("AWS_ACCESS_KEY_ID").ok_or(ClientError::NoCredentials("AWS_ACCESS_KEY_ID"))?;
        let secret = env("AWS_SECRET_ACCESS_KEY")
            .ok_or(ClientError::NoCredentials("AWS_SECRET_ACCESS_KEY"))?;
        let region = env("AWS_DEFAULT_REGION")
            .or_else(|| env("AWS_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .build()
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        Ok(Hub {
            url: parsed,
            key_id,
            secret,
            region,
            http,
        })
    }

    pub async fn ecs(&self, operation: &str, input: &Value) -> Result<Value, ClientError> {
        self.call(Service::Ecs, operation, input).await
    }

    pub async fn ssm(&self, operation: &str, input: &Value) -> Result<Value, ClientError> {
        self.call(Service::Ssm, operation, input).await
    }

    /// The hub's own operations, which neither ECS nor SSM has (`ListEvents`).
    pub async fn skerry(&self, operation: &str, input: &Value) -> Result<Value, ClientError> {
        self.call(Service::Skerry, operation, input).await
    }

    /// Any operation of `service`, for `skerry call`.
    pub async fn call(
        &self,
        service: Service,
        operation: &str,
        input: &Value,
    ) -> Result<Value, ClientError> {
        let body = serde_json::to_vec(input).expect("a JSON value always serializes");
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let amz_date = sigv4::format_amz_date(now);
        let host = match self.url.port() {
            Some(p) => format!("{}:{p}", self.url.host_str().unwrap_or_default()),
            None => self.url.host_str().unwrap_or_default().to_string(),
        };
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("content-type", CONTENT_TYPE.to_string()),
            ("host", host),
            ("x-amz-date", amz_date.clone()),
            ("x-amz-target", service.target(operation)),
        ] {
            let value = HeaderValue::from_str(&value)
                .map_err(|_| ClientError::BadUrl(self.url.to_string()))?;
            headers.insert(HeaderName::from_static(name), value);
        }
        let path = self.url.path().to_string();
        let signed = Signed {
            method: "POST",
            path: &path,
            query: "",
            headers: &headers,
            body: &body,
        };
        let auth = sigv4::authorization(
            &signed,
            &["content-type", "host", "x-amz-date", "x-amz-target"],
            (&self.key_id, &self.secret),
            &amz_date,
            &self.region,
            service.signing_name(),
        )?;
        let mut req = self.http.post(self.url.clone()).body(body);
        for (name, value) in &headers {
            if name != "host" {
                req = req.header(name.as_str(), value.as_bytes());
            }
        }
        let resp = req
            .header("authorization", auth)
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.to_string(),
                source,
            })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: self.url.to_string(),
                source,
            })?;
        let bad = || ClientError::BadResponse {
            operation: operation.to_string(),
            status: status.as_u16(),
        };
        let value: Value = if bytes.is_empty() {
            Value::Object(Default::default())
        } else {
            serde_json::from_slice(&bytes).map_err(|_| bad())?
        };
        if status.is_success() {
            return Ok(value);
        }
        let (code, message) = read_error(&value).ok_or_else(bad)?;
        Err(ClientError::Api {
            operation: operation.to_string(),
            code,
            message,
        })
    }
}
