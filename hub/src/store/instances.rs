//! Container instances: the devices registered with the hub, and the registration that
//! adds one while taking a use of its activation.

use rusqlite::{params, OptionalExtension, Row, TransactionBehavior};

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInstance {
    pub id: String,
    pub arn: String,
    pub cluster: String,
    pub activation_id: String,
    pub hostname: String,
    pub architecture: String,
    pub agent_version: String,
    pub cpu_units: i64,
    pub memory_mib: i64,
    /// JSON object of ECS custom attributes.
    pub attributes: String,
    pub cert_serial: String,
    pub status: String,
    pub agent_connected: bool,
    pub generation: i64,
    pub applied_generation: i64,
    pub registered_at: f64,
    pub last_seen_at: Option<f64>,
}

const COLUMNS: &str = "id, arn, cluster, activation_id, hostname, architecture, agent_version,
    cpu_units, memory_mib, attributes, cert_serial, status, agent_connected, generation,
    applied_generation, registered_at, last_seen_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ContainerInstance> {
    Ok(ContainerInstance {
        id: r.get(0)?,
        arn: r.get(1)?,
        cluster: r.get(2)?,
        activation_id: r.get(3)?,
        hostname: r.get(4)?,
        architecture: r.get(5)?,
        agent_version: r.get(6)?,
        cpu_units: r.get(7)?,
        memory_mib: r.get(8)?,
        attributes: r.get(9)?,
        cert_serial: r.get(10)?,
        status: r.get(11)?,
        agent_connected: r.get(12)?,
        generation: r.get(13)?,
        applied_generation: r.get(14)?,
        registered_at: r.get(15)?,
        last_seen_at: r.get(16)?,
    })
}

/// A device to add, as registration has checked it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewInstance {
    pub id: String,
    pub arn: String,
    pub cluster: String,
    pub activation_id: String,
    pub hostname: String,
    pub architecture: String,
    pub agent_version: String,
    pub cpu_units: i64,
    pub memory_mib: i64,
    /// JSON object of ECS custom attributes.
    pub attributes: String,
    pub cert_serial: String,
}

/// What [`Store::register_instance`] did. Anything but `Registered` changed nothing.
#[derive(Debug, Clone, PartialEq)]
pub enum RegisterOutcome {
    Registered(Box<ContainerInstance>),
    /// The activation was deleted meanwhile.
    ActivationGone,
    ActivationExpired {
        expires_at: f64,
    },
    ActivationExhausted {
        limit: i64,
    },
    /// The cluster does not exist or is INACTIVE (and was not to be made on demand).
    ClusterMissing,
}

impl Store {
    /// Adds the instance and counts one registration of its activation, in one transaction:
    /// of two devices racing for an activation's last registration exactly one gets it.
    /// With `create_cluster` the cluster is made (or reactivated) if needed, as ECS Anywhere
    /// does for `default`.
    pub fn register_instance(
        &self,
        new: &NewInstance,
        create_cluster: bool,
        now: f64,
    ) -> Result<RegisterOutcome, StoreError> {
        let mut conn = self.conn()?;
        // IMMEDIATE takes the write lock up front, so the count read and bump cannot
        // interleave with another writer's.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let taken = tx.execute(
            "UPDATE activations SET registrations_count = registrations_count + 1
             WHERE id = ?1 AND registrations_count < registration_limit AND expires_at > ?2",
            params![new.activation_id, now],
        )?;
        if taken == 0 {
            let row: Option<(i64, i64, f64)> = tx
                .query_row(
                    "SELECT registration_limit, registrations_count, expires_at
                     FROM activations WHERE id = ?1",
                    params![new.activation_id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            return Ok(match row {
                None => RegisterOutcome::ActivationGone,
                Some((_, _, expires_at)) if expires_at <= now => {
                    RegisterOutcome::ActivationExpired { expires_at }
                }
                Some((limit, _, _)) => RegisterOutcome::ActivationExhausted { limit },
            });
        }
        let status: Option<String> = tx
            .query_row(
                "SELECT status FROM clusters WHERE name = ?1",
                params![new.cluster],
                |r| r.get(0),
            )
            .optional()?;
        if status.as_deref() != Some("ACTIVE") {
            if !create_cluster {
                return Ok(RegisterOutcome::ClusterMissing);
            }
            tx.execute(
                "INSERT INTO clusters (name, status, tags, created_at) VALUES (?1, 'ACTIVE', '[]', ?2)
                 ON CONFLICT (name) DO UPDATE SET status = 'ACTIVE', tags = '[]', created_at = ?2",
                params![new.cluster, now],
            )?;
        }
        tx.execute(
            "INSERT INTO container_instances (id, arn, cluster, activation_id, hostname,
                 architecture, agent_version, cpu_units, memory_mib, attributes, cert_serial,
                 status, registered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, 'ACTIVE', ?12)",
            params![
                new.id,
                new.arn,
                new.cluster,
                new.activation_id,
                new.hostname,
                new.architecture,
                new.agent_version,
                new.cpu_units,
                new.memory_mib,
                new.attributes,
                new.cert_serial,
                now
            ],
        )?;
        let instance = tx.query_row(
            &format!("SELECT {COLUMNS} FROM container_instances WHERE id = ?1"),
            params![new.id],
            from_row,
        )?;
        tx.commit()?;
        Ok(RegisterOutcome::Registered(Box::new(instance)))
    }

    /// Moves an activation's expiry. SSM has no such call, so the API never makes it;
    /// repair tools and tests do. False if there is no such activation.
    pub fn set_activation_expiry(&self, id: &str, expires_at: f64) -> Result<bool, StoreError> {
        Ok(self.conn()?.execute(
            "UPDATE activations SET expires_at = ?2 WHERE id = ?1",
            params![id, expires_at],
        )? > 0)
    }

    pub fn container_instance(&self, id: &str) -> Result<Option<ContainerInstance>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                &format!("SELECT {COLUMNS} FROM container_instances WHERE id = ?1"),
                params![id],
                from_row,
            )
            .optional()?)
    }

    /// Every deregistered instance's id and certificate serial, in id order: what the
    /// broker's revocation list names.
    pub fn revoked_certificates(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, cert_serial FROM container_instances
             WHERE status = 'DEREGISTERED' AND cert_serial <> '' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The instances of `cluster` in registration order, deregistered ones included.
    pub fn container_instances(&self, cluster: &str) -> Result<Vec<ContainerInstance>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM container_instances WHERE cluster = ?1
             ORDER BY registered_at, id"
        ))?;
        let rows = stmt.query_map(params![cluster], from_row)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Activation;

    fn activation(store: &Store, id: &str, limit: i64, expires_at: f64) {
        let a = Activation {
            id: id.into(),
            description: None,
            default_instance_name: None,
            iam_role: "ecsAnywhereRole".into(),
            registration_limit: limit,
            registrations_count: 0,
            expires_at,
            created_at: 0.0,
            tags: "[]".into(),
        };
        store
            .create_activation(&a, b"salt", b"hash")
            .expect("activation");
    }

    fn instance(id: &str, cluster: &str, activation: &str) -> NewInstance {
        NewInstance {
            id: id.into(),
            arn: format!("arn:aws:ecs:us-east-1:000000000000:container-instance/{cluster}/{id}"),
            cluster: cluster.into(),
            activation_id: activation.into(),
            hostname: "pi".into(),
            architecture: "arm64".into(),
            agent_version: "0.1.0".into(),
            cpu_units: 4096,
            memory_mib: 1024,
            attributes: "{}".into(),
            cert_serial: "40".into(),
        }
    }

    fn count(store: &Store, id: &str) -> i64 {
        store
            .conn()
            .expect("conn")
            .query_row(
                "SELECT registrations_count FROM activations WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .expect("count")
    }

    #[test]
    fn registration_takes_one_use_and_refusals_change_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        activation(&s, "a1", 1, 100.0);
        let r = s
            .register_instance(&instance("mi-1", "default", "a1"), true, 10.0)
            .expect("register");
        let RegisterOutcome::Registered(ci) = r else {
            panic!("{r:?}")
        };
        assert_eq!((ci.status.as_str(), ci.registered_at), ("ACTIVE", 10.0));
        assert_eq!(
            s.cluster("default").expect("get").expect("made").status,
            "ACTIVE"
        );
        assert_eq!(count(&s, "a1"), 1);
        assert_eq!(
            s.register_instance(&instance("mi-2", "default", "a1"), true, 11.0)
                .expect("second"),
            RegisterOutcome::ActivationExhausted { limit: 1 }
        );
        activation(&s, "a2", 5, 100.0);
        assert_eq!(
            s.register_instance(&instance("mi-3", "edge", "a2"), false, 11.0)
                .expect("no cluster"),
            RegisterOutcome::ClusterMissing
        );
        assert_eq!(
            count(&s, "a2"),
            0,
            "the refused registration was rolled back"
        );
        assert!(s.container_instance("mi-3").expect("get").is_none());
        assert_eq!(
            s.register_instance(&instance("mi-4", "default", "a2"), true, 100.0)
                .expect("expired"),
            RegisterOutcome::ActivationExpired { expires_at: 100.0 }
        );
        assert_eq!(
            s.register_instance(&instance("mi-5", "default", "nope"), true, 1.0)
                .expect("gone"),
            RegisterOutcome::ActivationGone
        );
        assert!(s.set_activation_expiry("a2", 1.0).expect("expire"));
        assert!(!s.set_activation_expiry("nope", 1.0).expect("absent"));
        assert_eq!(
            s.container_instances("default")
                .expect("list")
                .iter()
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>(),
            ["mi-1"]
        );
    }

    #[test]
    fn racing_for_the_last_registration_one_wins() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = std::sync::Arc::new(Store::open(dir.path()).expect("open"));
        s.create_cluster("default", "[]", 0.0).expect("cluster");
        activation(&s, "a1", 1, 100.0);
        let racers: Vec<_> = (0..8)
            .map(|i| {
                let s = s.clone();
                std::thread::spawn(move || {
                    s.register_instance(&instance(&format!("mi-{i}"), "default", "a1"), true, 1.0)
                        .expect("register")
                })
            })
            .collect();
        let won = racers
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .filter(|r| matches!(r, RegisterOutcome::Registered(_)))
            .count();
        assert_eq!(won, 1);
        assert_eq!(count(&s, "a1"), 1);
        assert_eq!(s.container_instances("default").expect("list").len(), 1);
    }
}
