//! The hub's gate for registered task definitions: the same check the agent applies
//! (`skerry_proto::taskdef::TaskDefinition`), so a definition the hub accepts is one every
//! device can run, and one it refuses is refused with the field's JSON path.

use serde_json::Value;
use skerry_proto::taskdef::TaskDefinition;

/// Checks a RegisterTaskDefinition input (without `tags`). The error is the message the
/// client sees.
pub fn validate_task_definition(td: &Value) -> Result<(), String> {
    let first = match TaskDefinition::parse(&td.to_string()) {
        Ok(_) => return Ok(()),
        Err(e) => e.to_string(),
    };
    // Parsing stops at the first problem; a definition that parsed may have more.
    let all = serde_json::from_value::<TaskDefinition>(td.clone())
        .map(|parsed| parsed.errors())
        .unwrap_or_default();
    if all.is_empty() {
        return Err(first);
    }
    Err(all
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_valid_definition_passes() {
        let td = json!({"family": "web", "containerDefinitions": [
            {"name": "web", "image": "nginx", "memory": 128}]});
        assert_eq!(validate_task_definition(&td), Ok(()));
    }

    #[test]
    fn errors_name_the_field() {
        let missing = validate_task_definition(&json!({"containerDefinitions": []}));
        assert!(missing.expect_err("no family").contains("family"));
        let unsupported =
            validate_task_definition(&json!({"family": "web", "containerDefinitions": [
            {"name": "web", "image": "nginx", "memory": 128,
             "logConfiguration": {"logDriver": "awslogs"}}]}));
        let e = unsupported.expect_err("awslogs");
        assert!(
            e.contains("containerDefinitions[0].logConfiguration"),
            "{e}"
        );
    }
}
