//! Which service and operation a request is: `X-Amz-Target` is `PREFIX.Operation`, and each
//! service has its own prefix and SigV4 signing name.

pub const ECS_TARGET_PREFIX: &str = "AmazonEC2ContainerServiceV20141113.";
pub const SSM_TARGET_PREFIX: &str = "AmazonSSM.";
/// Skerry's own operations (the device event history), which neither ECS nor SSM has.
pub const SKERRY_TARGET_PREFIX: &str = "SkerryHub_20261126.";
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The AWS service an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Service {
    Ecs,
    Ssm,
    Skerry,
}

impl Service {
    /// The SigV4 signing name (the credential scope's service).
    pub fn signing_name(self) -> &'static str {
        match self {
            Service::Ecs => "ecs",
            Service::Ssm => "ssm",
            Service::Skerry => "skerry",
        }
    }

    /// The `X-Amz-Target` prefix, dot included.
    pub fn target_prefix(self) -> &'static str {
        match self {
            Service::Ecs => ECS_TARGET_PREFIX,
            Service::Ssm => SSM_TARGET_PREFIX,
            Service::Skerry => SKERRY_TARGET_PREFIX,
        }
    }

    /// The `X-Amz-Target` of `operation`.
    pub fn target(self, operation: &str) -> String {
        format!("{}{operation}", self.target_prefix())
    }
}

/// Splits `X-Amz-Target` into the service and operation name.
pub fn parse_target(target: &str) -> Option<(Service, &str)> {
    [Service::Ecs, Service::Ssm, Service::Skerry]
        .into_iter()
        .find_map(|s| target.strip_prefix(s.target_prefix()).map(|op| (s, op)))
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
        assert_eq!(
            parse_target("SkerryHub_20261126.ListEvents"),
            Some((Service::Skerry, "ListEvents"))
        );
        assert_eq!(parse_target("DynamoDB_20120810.ListTables"), None);
        for s in [Service::Ecs, Service::Ssm, Service::Skerry] {
            assert_eq!(parse_target(&s.target("Op")), Some((s, "Op")));
        }
    }
}
