//! AWS Systems Manager activations: the one-time credentials a device presents when it
//! registers, as `aws ssm create-activation` makes them for ECS Anywhere. Only a salted
//! hash of each activation code is stored; the code itself is returned once.

use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::{self, ApiError};
use crate::state::Hub;
use crate::store::{self, ActivationFilter, StoreError};

/// SSM's limits: activations live at most 30 days and default to 24 hours.
const MAX_LIFETIME_SECS: f64 = 30.0 * 86_400.0;
const DEFAULT_LIFETIME_SECS: f64 = 86_400.0;
const MAX_REGISTRATIONS: i64 = 1000;
const MAX_PAGE: usize = 50;
const CODE_LEN: usize = 20;

fn validation(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("ValidationException", message)
}

fn server(err: StoreError) -> ApiError {
    api::internal("InternalServerError", err)
}

fn code_hash(salt: &[u8], code: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(code.as_bytes());
    h.finalize().to_vec()
}

/// Whether `code` is the activation code of activation `id` (the check `register` makes,
/// over the store). Codes are 20 random
/// alphanumerics (~119 bits), so a fast salted hash is enough; no password stretching needed.
#[cfg(test)]
fn activation_code_matches(store: &store::Store, id: &str, code: &str) -> Result<bool, StoreError> {
    Ok(match store.activation_code_hash(id)? {
        Some(stored) => code_hash(&stored.salt, code) == stored.hash,
        None => false,
    })
}

fn new_activation_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    // UUID version 4, variant 1, like SSM's activation ids.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateActivationInput {
    description: Option<String>,
    default_instance_name: Option<String>,
    iam_role: Option<String>,
    registration_limit: Option<i64>,
    expiration_date: Option<f64>,
    tags: Option<Vec<Value>>,
}

pub(crate) fn create_activation(
    hub: &Hub,
    input: CreateActivationInput,
    now: f64,
) -> Result<Value, ApiError> {
    let iam_role = input
        .iam_role
        .filter(|r| !r.is_empty())
        .ok_or_else(|| validation("IamRole is required"))?;
    let limit = input.registration_limit.unwrap_or(1);
    if !(1..=MAX_REGISTRATIONS).contains(&limit) {
        return Err(validation(format!(
            "RegistrationLimit {limit} is out of range: use 1 to {MAX_REGISTRATIONS}"
        )));
    }
    let expires_at = input.expiration_date.unwrap_or(now + DEFAULT_LIFETIME_SECS);
    if expires_at <= now {
        return Err(validation(format!(
            "ExpirationDate {expires_at} is in the past; give a time up to 30 days ahead"
        )));
    }
    if expires_at > now + MAX_LIFETIME_SECS {
        return Err(validation(format!(
            "ExpirationDate {expires_at} is more than 30 days ahead"
        )));
    }
    let tags = input.tags.unwrap_or_default();
    if tags
        .iter()
        .any(|t| !t.get("Key").is_some_and(Value::is_string))
    {
        return Err(validation("each tag needs a string \"Key\""));
    }
    let code: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(CODE_LEN)
        .map(char::from)
        .collect();
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let activation = store::Activation {
        id: new_activation_id(),
        description: input.description,
        default_instance_name: input.default_instance_name,
        iam_role,
        registration_limit: limit,
        registrations_count: 0,
        expires_at,
        created_at: now,
        tags: Value::Array(tags).to_string(),
    };
    hub.store
        .create_activation(&activation, &salt, &code_hash(&salt, &code))
        .map_err(server)?;
    Ok(json!({ "ActivationId": activation.id, "ActivationCode": code }))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Filter {
    filter_key: Option<String>,
    filter_values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DescribeActivationsInput {
    filters: Option<Vec<Filter>>,
    max_results: Option<i64>,
    next_token: Option<String>,
}

pub(crate) fn describe_activations(
    hub: &Hub,
    input: DescribeActivationsInput,
    now: f64,
) -> Result<Value, ApiError> {
    let limit = api::page_size(
        input.max_results,
        MAX_PAGE,
        "MaxResults",
        "ValidationException",
    )?;
    let mut filter = ActivationFilter::default();
    for f in input.filters.unwrap_or_default() {
        let values = f.filter_values.unwrap_or_default();
        match f.filter_key.as_deref() {
            Some("ActivationIds") => filter.ids.extend(values),
            Some("DefaultInstanceName") => filter.default_instance_names.extend(values),
            Some("IamRole") => filter.iam_roles.extend(values),
            other => {
                return Err(ApiError::bad_request(
                    "InvalidFilterKey",
                    format!(
                        "filter key {other:?} is invalid: use ActivationIds, DefaultInstanceName or IamRole"
                    ),
                ))
            }
        }
    }
    let after = match &input.next_token {
        Some(t) => Some(api::decode_token(t).ok_or_else(|| {
            ApiError::bad_request(
                "InvalidNextToken",
                "the NextToken is not one this hub issued",
            )
        })?),
        None => None,
    };
    let mut rows = hub
        .store
        .activations(&filter, after.as_deref(), limit + 1)
        .map_err(server)?;
    let next = if rows.len() > limit {
        rows.truncate(limit);
        rows.last().map(|a| api::encode_token(&a.id))
    } else {
        None
    };
    let list: Vec<Value> = rows
        .iter()
        .map(|a| {
            let mut v = json!({
                "ActivationId": a.id,
                "IamRole": a.iam_role,
                "RegistrationLimit": a.registration_limit,
                "RegistrationsCount": a.registrations_count,
                "ExpirationDate": a.expires_at,
                "Expired": a.expires_at <= now,
                "CreatedDate": a.created_at,
                "Tags": serde_json::from_str::<Value>(&a.tags).unwrap_or(Value::Null),
            });
            if let Some(d) = &a.description {
                v["Description"] = d.clone().into();
            }
            if let Some(n) = &a.default_instance_name {
                v["DefaultInstanceName"] = n.clone().into();
            }
            v
        })
        .collect();
    let mut out = json!({ "ActivationList": list });
    if let Some(t) = next {
        out["NextToken"] = t.into();
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeleteActivationInput {
    activation_id: Option<String>,
}

pub(crate) fn delete_activation(
    hub: &Hub,
    input: DeleteActivationInput,
) -> Result<Value, ApiError> {
    let id = input
        .activation_id
        .ok_or_else(|| validation("ActivationId is required"))?;
    if hub.store.delete_activation(&id).map_err(server)? {
        Ok(json!({}))
    } else {
        Err(ApiError::bad_request(
            "InvalidActivationId",
            format!("activation {id} does not exist"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_is_returned_once_and_only_its_hash_is_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Hub::new(
            store::Store::open(dir.path()).expect("open"),
            crate::arn::Arns::new("us-east-1", "000000000000"),
        );
        let input = CreateActivationInput {
            description: None,
            default_instance_name: None,
            iam_role: Some("ecsAnywhereRole".into()),
            registration_limit: None,
            expiration_date: None,
            tags: None,
        };
        let out = create_activation(&hub, input, 1000.0).expect("create");
        let id = out["ActivationId"].as_str().expect("id");
        let code = out["ActivationCode"].as_str().expect("code");
        assert_eq!(code.len(), CODE_LEN);
        assert!(activation_code_matches(&hub.store, id, code).expect("check"));
        assert!(!activation_code_matches(&hub.store, id, "wrong").expect("check"));
        let raw = std::fs::read(dir.path().join("hub.db")).expect("db");
        let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
        for bytes in [raw, wal] {
            assert!(!bytes.windows(code.len()).any(|w| w == code.as_bytes()));
        }
    }
}
