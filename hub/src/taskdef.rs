//! The hub's gate for registered task definitions. Deliberately thin for now: the full
//! check is `skerry_proto::taskdef::TaskDefinition::parse`, which this will call once that
//! contract lands, so the hub and agent accept exactly the same documents.

use serde_json::Value;

/// Checks a RegisterTaskDefinition input (without `tags`). The error is the message the
/// client sees.
pub fn validate_task_definition(td: &Value) -> Result<(), String> {
    match td.get("family") {
        Some(Value::String(_)) => {}
        Some(_) => return Err("family must be a string".into()),
        None => return Err("family is required".into()),
    }
    match td.get("containerDefinitions") {
        Some(Value::Array(defs)) if !defs.is_empty() => Ok(()),
        Some(Value::Array(_)) => {
            Err("containerDefinitions must list at least one container".into())
        }
        Some(_) => Err("containerDefinitions must be a list".into()),
        None => Err("containerDefinitions is required".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn family_and_containers_are_required() {
        assert_eq!(
            validate_task_definition(&json!({"family": "web", "containerDefinitions": [{}]})),
            Ok(())
        );
        let missing = validate_task_definition(&json!({"containerDefinitions": [{}]}));
        assert_eq!(missing, Err("family is required".to_string()));
        let empty = validate_task_definition(&json!({"family": "web", "containerDefinitions": []}));
        assert!(empty
            .expect_err("empty list")
            .contains("containerDefinitions"));
    }
}
