//! Documents out: an instance's desired-state document, built from the rows the store
//! gives for it.

use std::collections::HashMap;

use skerry_proto::desired::{DesiredState, DesiredTask};
use skerry_proto::taskdef::TaskDefinition;

use super::DeviceError;
use crate::arn::Arns;
use crate::store::DocumentParts;

/// Parsed task definitions by (family, revision), with the ARN and revision the hub adds.
pub(super) type Definitions = HashMap<(String, i64), TaskDefinition>;

pub(super) fn document(
    arns: &Arns,
    instance_id: &str,
    parts: DocumentParts,
    definitions: &mut Definitions,
) -> Result<Option<DesiredState>, DeviceError> {
    let mut tasks = Vec::with_capacity(parts.tasks.len());
    for r in parts.tasks {
        let key = (r.family, r.revision);
        let td = match definitions.get(&key) {
            Some(td) => td.clone(),
            None => {
                let mut td =
                    TaskDefinition::parse(&r.body).map_err(|e| DeviceError::BadDocument {
                        instance: instance_id.to_string(),
                        message: format!(
                            "task {}: task definition {}:{}: {e}",
                            r.task_arn, key.0, key.1
                        ),
                    })?;
                td.task_definition_arn = Some(arns.task_definition(&key.0, key.1));
                td.revision = u32::try_from(key.1).ok();
                definitions.insert(key, td.clone());
                td
            }
        };
        tasks.push(DesiredTask {
            task_arn: r.task_arn,
            task_definition: td,
            desired_status: r.desired_status,
            group: Some(r.group),
        });
    }
    let doc = DesiredState {
        generation: u64::try_from(parts.generation).unwrap_or(0),
        tasks,
        refused: parts.refused,
    };
    // The agent refuses an invalid document whole; better to say so here.
    doc.validate().map_err(|e| DeviceError::BadDocument {
        instance: instance_id.to_string(),
        message: e.to_string(),
    })?;
    Ok(Some(doc))
}
