//! ECS task definition operations: RegisterTaskDefinition, DescribeTaskDefinition,
//! ListTaskDefinitions, DeregisterTaskDefinition.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    after_key, client, invalid, list_answer, max_results, page, parse_json, parse_reference,
    server, tags_json, valid_name,
};
use crate::api::ApiError;
use crate::state::Hub;
use crate::store::{self, Order};
use crate::taskdef::validate_task_definition;

fn task_definition_json(hub: &Hub, td: &store::TaskDefinition) -> Value {
    let mut v = match parse_json(&td.body) {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    for (k, default) in [
        ("volumes", json!([])),
        ("placementConstraints", json!([])),
        ("requiresAttributes", json!([])),
        ("compatibilities", json!(["EXTERNAL"])),
    ] {
        v.entry(k).or_insert(default);
    }
    v.insert(
        "taskDefinitionArn".into(),
        hub.arns.task_definition(&td.family, td.revision).into(),
    );
    v.insert("family".into(), td.family.clone().into());
    v.insert("revision".into(), td.revision.into());
    v.insert("status".into(), td.status.clone().into());
    v.insert("registeredAt".into(), td.registered_at.into());
    if let Some(at) = td.deregistered_at {
        v.insert("deregisteredAt".into(), at.into());
    }
    Value::Object(v)
}

pub(crate) fn register_task_definition(
    hub: &Hub,
    input: Value,
    now: f64,
) -> Result<Value, ApiError> {
    let Value::Object(mut body) = input else {
        return Err(client("the request body must be a JSON object"));
    };
    let tags = match body.remove("tags") {
        None | Some(Value::Null) => None,
        Some(Value::Array(t)) => Some(t),
        Some(_) => return Err(invalid("tags must be a list")),
    };
    let tags = tags_json(tags)?;
    // Fields the hub assigns are not the client's to set.
    for k in [
        "taskDefinitionArn",
        "revision",
        "status",
        "registeredAt",
        "deregisteredAt",
    ] {
        body.remove(k);
    }
    let body = Value::Object(body);
    validate_task_definition(&body).map_err(client)?;
    let family = body["family"].as_str().unwrap_or_default();
    if !valid_name(family) {
        return Err(client(format!(
            "family {family:?} is invalid: use 1 to 255 letters, digits, hyphens and underscores"
        )));
    }
    let td = hub
        .store
        .register_task_definition(family, &body.to_string(), &tags, now)
        .map_err(server)?;
    Ok(json!({
        "taskDefinition": task_definition_json(hub, &td),
        "tags": parse_json(&td.tags),
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DescribeTaskDefinitionInput {
    task_definition: Option<String>,
    include: Option<Vec<String>>,
}

pub(crate) fn describe_task_definition(
    hub: &Hub,
    input: DescribeTaskDefinitionInput,
) -> Result<Value, ApiError> {
    let reference = input
        .task_definition
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let not_found = || client("Unable to describe task definition.");
    let (family, revision) = parse_reference(hub, &reference).ok_or_else(not_found)?;
    let td = hub
        .store
        .task_definition(&family, revision)
        .map_err(server)?
        .ok_or_else(not_found)?;
    let mut out = json!({ "taskDefinition": task_definition_json(hub, &td) });
    if input
        .include
        .unwrap_or_default()
        .iter()
        .any(|i| i == "TAGS")
    {
        out["tags"] = parse_json(&td.tags);
    }
    Ok(out)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ListTaskDefinitionsInput {
    family_prefix: Option<String>,
    status: Option<String>,
    sort: Option<String>,
    next_token: Option<String>,
    max_results: Option<i64>,
}

pub(crate) fn list_task_definitions(
    hub: &Hub,
    input: ListTaskDefinitionsInput,
) -> Result<Value, ApiError> {
    let limit = max_results(input.max_results)?;
    let status = input.status.unwrap_or_else(|| "ACTIVE".into());
    if !matches!(
        status.as_str(),
        "ACTIVE" | "INACTIVE" | "DELETE_IN_PROGRESS"
    ) {
        return Err(invalid(format!(
            "status {status:?} is invalid: use ACTIVE, INACTIVE or DELETE_IN_PROGRESS"
        )));
    }
    let order = match input.sort.as_deref() {
        None | Some("ASC") => Order::Asc,
        Some("DESC") => Order::Desc,
        Some(other) => {
            return Err(invalid(format!(
                "sort {other:?} is invalid: use ASC or DESC"
            )))
        }
    };
    let after = match after_key(input.next_token.as_deref())? {
        Some(key) => {
            let (f, r) = key
                .rsplit_once(':')
                .ok_or_else(|| invalid("invalid nextToken"))?;
            let r: i64 = r.parse().map_err(|_| invalid("invalid nextToken"))?;
            Some((f.to_string(), r))
        }
        None => None,
    };
    let mut rows = hub
        .store
        .list_task_definitions(
            input.family_prefix.as_deref(),
            &status,
            order,
            after.as_ref().map(|(f, r)| (f.as_str(), *r)),
            limit + 1,
        )
        .map_err(server)?;
    let next = page(&mut rows, limit, |(f, r)| format!("{f}:{r}"));
    let arns = rows
        .iter()
        .map(|(f, r)| hub.arns.task_definition(f, *r))
        .collect();
    Ok(list_answer("taskDefinitionArns", arns, next))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct DeregisterTaskDefinitionInput {
    task_definition: Option<String>,
}

pub(crate) fn deregister_task_definition(
    hub: &Hub,
    input: DeregisterTaskDefinitionInput,
    now: f64,
) -> Result<Value, ApiError> {
    let reference = input
        .task_definition
        .ok_or_else(|| invalid("taskDefinition is required"))?;
    let Some((family, Some(revision))) = parse_reference(hub, &reference) else {
        return Err(client(format!(
            "task definition {reference:?} names no revision: use family:revision or the full ARN"
        )));
    };
    let td = hub
        .store
        .deregister_task_definition(&family, revision, now)
        .map_err(server)?
        .ok_or_else(|| {
            client(format!(
                "task definition {family}:{revision} does not exist"
            ))
        })?;
    Ok(json!({ "taskDefinition": task_definition_json(hub, &td) }))
}
