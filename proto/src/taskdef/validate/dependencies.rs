//! `dependsOn`: known containers, allowed conditions, no cycles.

use std::collections::HashMap;

use super::*;
use crate::taskdef::*;

impl TaskDefinition {
    pub(super) fn check_dependencies(&self, c: &mut Check) {
        for (i, cd) in self.container_definitions.iter().enumerate() {
            for (j, dep) in cd.depends_on.iter().flatten().enumerate() {
                let p = format!("containerDefinitions[{i}].dependsOn[{j}]");
                let Some(target) = self.container(&dep.container_name) else {
                    c.fail(
                        format!("{p}.containerName"),
                        format!("names no container of this task: {:?}", dep.container_name),
                    );
                    continue;
                };
                if target.name == cd.name {
                    c.fail(
                        format!("{p}.containerName"),
                        "a container cannot depend on itself",
                    );
                    continue;
                }
                match dep.condition {
                    DependencyCondition::Healthy if target.health_check.is_none() => c.fail(
                        format!("{p}.condition"),
                        format!(
                            "HEALTHY needs a healthCheck on container {:?}; add one or use START",
                            target.name
                        ),
                    ),
                    DependencyCondition::Complete | DependencyCondition::Success
                        if target.is_essential() =>
                    {
                        c.fail(
                            format!("{p}.condition"),
                            format!(
                                "{:?} needs container {:?} to exit, so it must be essential: false",
                                dep.condition, target.name
                            ),
                        )
                    }
                    _ => {}
                }
            }
        }
        // Cycle detection: depth-first search with colours over the containers' indices.
        let index: HashMap<&str, usize> = self
            .container_definitions
            .iter()
            .enumerate()
            .map(|(i, cd)| (cd.name.as_str(), i))
            .collect();
        let n = self.container_definitions.len();
        let mut state = vec![0u8; n]; // 0 new, 1 on stack, 2 done
        for start in 0..n {
            if state[start] != 0 {
                continue;
            }
            // Explicit stack of (node, next edge to visit).
            let mut stack = vec![(start, 0usize)];
            state[start] = 1;
            while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
                let deps = self.container_definitions[node]
                    .depends_on
                    .as_deref()
                    .unwrap_or(&[]);
                if *edge < deps.len() {
                    let j = *edge;
                    *edge += 1;
                    let Some(&next) = index.get(deps[j].container_name.as_str()) else {
                        continue;
                    };
                    match state[next] {
                        0 => {
                            state[next] = 1;
                            stack.push((next, 0));
                        }
                        1 if next != node => {
                            c.fail(
                                format!(
                                    "containerDefinitions[{node}].dependsOn[{j}].containerName"
                                ),
                                format!(
                                    "dependency cycle: {:?} and {:?} wait on each other",
                                    self.container_definitions[node].name,
                                    self.container_definitions[next].name
                                ),
                            );
                            return;
                        }
                        _ => {}
                    }
                } else {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
    }
}
