//! Every ARN the hub gives out or reads back, in one place: the shapes of the ECS API
//! reference (`arn:aws:ecs:REGION:ACCOUNT:cluster/NAME` and so on) under the region and
//! account the hub is configured with.

/// The hub's ARN namespace: its region and account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arns {
    region: String,
    account_id: String,
}

impl Arns {
    pub fn new(region: impl Into<String>, account_id: impl Into<String>) -> Self {
        Self {
            region: region.into(),
            account_id: account_id.into(),
        }
    }

    /// The region requests must be signed for.
    pub fn region(&self) -> &str {
        &self.region
    }

    fn ecs(&self, resource: &str) -> String {
        format!("arn:aws:ecs:{}:{}:{resource}", self.region, self.account_id)
    }

    pub fn cluster(&self, name: &str) -> String {
        self.ecs(&format!("cluster/{name}"))
    }

    /// What follows `cluster/` in a cluster ARN of this hub; `None` for any other ARN.
    pub fn cluster_name<'a>(&self, arn: &'a str) -> Option<&'a str> {
        arn.strip_prefix(&self.ecs("cluster/"))
    }

    pub fn task_definition(&self, family: &str, revision: i64) -> String {
        self.ecs(&format!("task-definition/{family}:{revision}"))
    }

    /// What follows `task-definition/` (`family:revision`) in a task definition ARN of this
    /// hub; `None` for any other ARN.
    pub fn task_definition_reference<'a>(&self, arn: &'a str) -> Option<&'a str> {
        arn.strip_prefix(&self.ecs("task-definition/"))
    }

    /// A task definition ARN of this hub split into its family and revision.
    pub fn parse_task_definition(&self, arn: &str) -> Option<(String, i64)> {
        let (family, revision) = self.task_definition_reference(arn)?.rsplit_once(':')?;
        Some((family.to_string(), revision.parse().ok()?))
    }

    pub fn task(&self, cluster: &str, id: &str) -> String {
        self.ecs(&format!("task/{cluster}/{id}"))
    }

    pub fn container(&self, cluster: &str, task_id: &str, name: &str) -> String {
        self.ecs(&format!("container/{cluster}/{task_id}/{name}"))
    }

    pub fn container_instance(&self, cluster: &str, id: &str) -> String {
        self.ecs(&format!("container-instance/{cluster}/{id}"))
    }

    pub fn service(&self, cluster: &str, name: &str) -> String {
        self.ecs(&format!("service/{cluster}/{name}"))
    }

    /// What follows `service/` in a service ARN of this hub (`CLUSTER/NAME`, or `NAME` in
    /// the old format); `None` for any other ARN.
    pub fn service_reference<'a>(&self, arn: &'a str) -> Option<&'a str> {
        arn.strip_prefix(&self.ecs("service/"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_round_trip() {
        let arns = Arns::new("eu-west-1", "123456789012");
        let c = arns.cluster("edge");
        assert_eq!(c, "arn:aws:ecs:eu-west-1:123456789012:cluster/edge");
        assert_eq!(arns.cluster_name(&c), Some("edge"));
        assert_eq!(
            arns.cluster_name("arn:aws:ecs:us-east-1:1:cluster/edge"),
            None
        );
        let td = arns.task_definition("web", 3);
        assert_eq!(arns.parse_task_definition(&td), Some(("web".into(), 3)));
        assert_eq!(arns.task_definition_reference(&td), Some("web:3"));
        let s = arns.service("edge", "api");
        assert_eq!(arns.service_reference(&s), Some("edge/api"));
    }
}
