//! Services: a task definition kept at a count of tasks (REPLICA) or one per instance
//! (DAEMON). A deleted service turns DRAINING until its tasks stopped, then INACTIVE; its
//! name is free again once it is INACTIVE.

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use super::{Store, StoreError, Txn};

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceRow {
    /// 0 until inserted.
    pub id: i64,
    pub cluster: String,
    pub name: String,
    /// ACTIVE, DRAINING or INACTIVE.
    pub status: String,
    pub family: String,
    pub revision: i64,
    pub desired_count: i64,
    /// REPLICA or DAEMON.
    pub scheduling_strategy: String,
    pub maximum_percent: i64,
    pub minimum_healthy_percent: i64,
    /// The current deployment, `ecs-svc/` and digits; the `startedBy` of its tasks.
    pub deployment_id: String,
    pub deployment_created_at: f64,
    /// ECS tag list.
    pub tags: Value,
    pub created_at: f64,
    pub updated_at: f64,
}

const COLUMNS: &str = "id, cluster, name, status, family, revision, desired_count,
    scheduling_strategy, maximum_percent, minimum_healthy_percent, deployment_id,
    deployment_created_at, tags, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ServiceRow> {
    let tags: String = r.get(12)?;
    Ok(ServiceRow {
        id: r.get(0)?,
        cluster: r.get(1)?,
        name: r.get(2)?,
        status: r.get(3)?,
        family: r.get(4)?,
        revision: r.get(5)?,
        desired_count: r.get(6)?,
        scheduling_strategy: r.get(7)?,
        maximum_percent: r.get(8)?,
        minimum_healthy_percent: r.get(9)?,
        deployment_id: r.get(10)?,
        deployment_created_at: r.get(11)?,
        // Only the hub writes this column, always from serde_json.
        tags: serde_json::from_str(&tags).unwrap_or(Value::Array(Vec::new())),
        created_at: r.get(13)?,
        updated_at: r.get(14)?,
    })
}

fn by_name(conn: &Connection, cluster: &str, name: &str) -> Result<Option<ServiceRow>, StoreError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM services WHERE cluster = ?1 AND name = ?2
             ORDER BY id DESC LIMIT 1"
        ))?
        .query_row(params![cluster, name], from_row)
        .optional()?)
}

/// Per deployment (`startedBy`) of a service: live tasks RUNNING and not yet RUNNING.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploymentCounts {
    pub started_by: String,
    pub task_definition_arn: Option<String>,
    pub running: i64,
    pub pending: i64,
}

impl Store {
    /// The service by that name: the live one, else the latest INACTIVE one.
    pub fn service_by_name(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<ServiceRow>, StoreError> {
        by_name(&*self.conn()?, cluster, name)
    }

    /// ACTIVE and DRAINING services of the cluster after `after` (an id), in creation order,
    /// optionally of one scheduling strategy.
    pub fn list_services(
        &self,
        cluster: &str,
        strategy: Option<&str>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<ServiceRow>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM services
             WHERE cluster = ?1 AND status <> 'INACTIVE' AND id > ?2
               AND (?3 IS NULL OR scheduling_strategy = ?3)
             ORDER BY id LIMIT ?4"
        ))?;
        let rows = stmt.query_map(
            params![cluster, after.unwrap_or(0), strategy, limit as i64],
            from_row,
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Ids of every ACTIVE or DRAINING service, for the service loop.
    pub fn live_service_ids(&self) -> Result<Vec<i64>, StoreError> {
        let conn = self.conn()?;
        let mut stmt =
            conn.prepare("SELECT id FROM services WHERE status <> 'INACTIVE' ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Live task counts of a service by deployment, the current one first.
    pub fn service_deployment_counts(
        &self,
        service: &ServiceRow,
    ) -> Result<Vec<DeploymentCounts>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT COALESCE(started_by, ''), MAX(task_definition_arn),
                    SUM(last_status = 'RUNNING'),
                    SUM(last_status IN ('PROVISIONING', 'PENDING', 'ACTIVATING'))
             FROM tasks WHERE service_id = ?1 AND desired_status = 'RUNNING'
               AND last_status <> 'STOPPED'
             GROUP BY started_by",
        )?;
        let rows = stmt.query_map(params![service.id], |r| {
            Ok(DeploymentCounts {
                started_by: r.get(0)?,
                task_definition_arn: r.get(1)?,
                running: r.get(2)?,
                pending: r.get(3)?,
            })
        })?;
        let mut out: Vec<DeploymentCounts> = rows.collect::<Result<_, _>>()?;
        if !out.iter().any(|d| d.started_by == service.deployment_id) {
            out.push(DeploymentCounts {
                started_by: service.deployment_id.clone(),
                task_definition_arn: None,
                running: 0,
                pending: 0,
            });
        }
        out.sort_by_key(|d| (d.started_by != service.deployment_id, d.started_by.clone()));
        Ok(out)
    }
}

/// A service's tasks that failed to start since the last of its tasks that reached RUNNING.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StartFailures {
    pub count: u32,
    /// When the hub recorded the latest of them (its clock).
    pub last_at: Option<f64>,
}

impl Txn<'_> {
    /// Tasks of the service stopped as `TaskFailedToStart` that never reached RUNNING,
    /// newer than its newest task that did. Stopped tasks are kept an hour, so a failure
    /// older than that no longer counts.
    pub fn start_failures(&self, service_id: i64) -> Result<StartFailures, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT COUNT(*), MAX(updated_at) FROM tasks
                 WHERE service_id = ?1 AND last_status = 'STOPPED'
                   AND stop_code = 'TaskFailedToStart' AND started_at IS NULL
                   AND seq > COALESCE((SELECT MAX(seq) FROM tasks
                                       WHERE service_id = ?1 AND started_at IS NOT NULL), 0)",
            )?
            .query_row(params![service_id], |r| {
                Ok(StartFailures {
                    count: r.get(0)?,
                    last_at: r.get(1)?,
                })
            })?)
    }

    pub fn service(&self, id: i64) -> Result<Option<ServiceRow>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(&format!("SELECT {COLUMNS} FROM services WHERE id = ?1"))?
            .query_row(params![id], from_row)
            .optional()?)
    }

    pub fn service_by_name(
        &self,
        cluster: &str,
        name: &str,
    ) -> Result<Option<ServiceRow>, StoreError> {
        by_name(&self.tx, cluster, name)
    }

    /// Inserts `s` and sets its id.
    pub fn insert_service(&mut self, s: &mut ServiceRow) -> Result<(), StoreError> {
        self.tx.execute(
            "INSERT INTO services (cluster, name, status, family, revision, desired_count,
                 scheduling_strategy, maximum_percent, minimum_healthy_percent, deployment_id,
                 deployment_created_at, tags, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
            params![
                s.cluster,
                s.name,
                s.status,
                s.family,
                s.revision,
                s.desired_count,
                s.scheduling_strategy,
                s.maximum_percent,
                s.minimum_healthy_percent,
                s.deployment_id,
                s.deployment_created_at,
                s.tags.to_string(),
                s.created_at,
                s.updated_at,
            ],
        )?;
        s.id = self.tx.last_insert_rowid();
        Ok(())
    }

    /// Writes the mutable fields of `s` (by id).
    pub fn update_service(&mut self, s: &ServiceRow) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE services SET status = ?2, family = ?3, revision = ?4, desired_count = ?5,
                 maximum_percent = ?6, minimum_healthy_percent = ?7, deployment_id = ?8,
                 deployment_created_at = ?9, updated_at = ?10
             WHERE id = ?1",
            params![
                s.id,
                s.status,
                s.family,
                s.revision,
                s.desired_count,
                s.maximum_percent,
                s.minimum_healthy_percent,
                s.deployment_id,
                s.deployment_created_at,
                s.updated_at,
            ],
        )?;
        Ok(())
    }
}
