//! The hub's side of each device's link: what it has applied from the device (`up_seq`), the
//! generations of its desired-state document, its connection and metrics, the rows its
//! document is made of, and the load placement weighs.

use rusqlite::{params, Connection, OptionalExtension};
use skerry_proto::desired::DesiredStatus;

use super::tasks::desired_status_name;
use super::{ContainerInstance, Store, StoreError, Txn};

/// Where an instance's link stands.
#[derive(Debug, Clone, PartialEq)]
pub struct LinkState {
    pub id: String,
    pub arn: String,
    pub cluster: String,
    /// ACTIVE or DEREGISTERED.
    pub status: String,
    pub generation: i64,
    pub applied_generation: i64,
    /// The highest device sequence number applied.
    pub up_seq: i64,
}

/// One task of a desired-state document, with its definition as registered.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentRow {
    pub task_arn: String,
    pub desired_status: DesiredStatus,
    pub family: String,
    pub revision: i64,
    pub body: String,
    pub group: String,
}

/// What an instance's desired-state document is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentParts {
    pub generation: i64,
    pub tasks: Vec<DocumentRow>,
    /// Tasks the device started on its own whose definition the hub lacks, wanted STOPPED
    /// and not yet reported so.
    pub refused: Vec<String>,
}

/// An instance's capacity and what its tasks hold of it.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceLoad {
    pub id: String,
    pub arn: String,
    pub status: String,
    pub cpu_units: i64,
    pub memory_mib: i64,
    /// Reserved by live tasks (desired RUNNING, not reported STOPPED).
    pub cpu_used: i64,
    pub memory_used: i64,
    /// Fixed host ports held by tasks desired RUNNING, as `8080/tcp`.
    pub ports: Vec<String>,
    /// Live tasks of the group asked for.
    pub group_tasks: i64,
    /// Tasks reported RUNNING, and not yet RUNNING, among those not reported STOPPED.
    pub running: i64,
    pub pending: i64,
}

fn instance_loads(
    conn: &Connection,
    cluster: &str,
    group: &str,
    active_only: bool,
    only: Option<&str>,
) -> Result<Vec<InstanceLoad>, StoreError> {
    // One instance is looked up by its key: a DAEMON service asks once per instance, and a
    // scan of the cluster each time made placing on N instances take N² steps.
    let instance_filter = if only.is_some() {
        "i.id = ?4"
    } else {
        "?4 IS NULL"
    };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT i.id, i.arn, i.status, i.cpu_units, i.memory_mib,
             COALESCE(SUM(CASE WHEN t.desired_status = 'RUNNING' THEN t.cpu END), 0),
             COALESCE(SUM(CASE WHEN t.desired_status = 'RUNNING' THEN t.memory END), 0),
             COALESCE(GROUP_CONCAT(CASE WHEN t.desired_status = 'RUNNING' THEN t.ports END, ' '), ''),
             COALESCE(SUM(t.desired_status = 'RUNNING' AND t.grp = ?2), 0),
             COALESCE(SUM(t.last_status = 'RUNNING'), 0),
             COALESCE(SUM(t.last_status IN ('PROVISIONING', 'PENDING', 'ACTIVATING')), 0)
         FROM container_instances i
         LEFT JOIN tasks t ON t.instance_id = i.id AND t.last_status <> 'STOPPED'
         WHERE {instance_filter} AND i.cluster = ?1 AND (?3 = 0 OR i.status = 'ACTIVE')
         GROUP BY i.id ORDER BY i.id"
    ))?;
    let rows = stmt.query_map(params![cluster, group, active_only, only], |r| {
        let ports: String = r.get(7)?;
        Ok(InstanceLoad {
            id: r.get(0)?,
            arn: r.get(1)?,
            status: r.get(2)?,
            cpu_units: r.get(3)?,
            memory_mib: r.get(4)?,
            cpu_used: r.get(5)?,
            memory_used: r.get(6)?,
            ports: ports.split_whitespace().map(str::to_string).collect(),
            group_tasks: r.get(8)?,
            running: r.get(9)?,
            pending: r.get(10)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Store {
    /// Adds a registered device. The registration flow and tests share it.
    pub fn insert_container_instance(&self, i: &ContainerInstance) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO container_instances (id, arn, cluster, activation_id, hostname,
                 architecture, agent_version, cpu_units, memory_mib, attributes, cert_serial,
                 status, agent_connected, generation, applied_generation, registered_at,
                 last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            params![
                i.id,
                i.arn,
                i.cluster,
                i.activation_id,
                i.hostname,
                i.architecture,
                i.agent_version,
                i.cpu_units,
                i.memory_mib,
                i.attributes,
                i.cert_serial,
                i.status,
                i.agent_connected,
                i.generation,
                i.applied_generation,
                i.registered_at,
                i.last_seen_at,
            ],
        )?;
        Ok(())
    }

    /// Every instance's id, for republishing all documents after a restart.
    pub fn instance_ids(&self) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare("SELECT id FROM container_instances ORDER BY id")?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    pub fn instance_id_by_arn(&self, arn: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT id FROM container_instances WHERE arn = ?1",
                params![arn],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// (id, ARN) of the cluster's instances after `after` (an id), in id order; `status`
    /// filters when given, else every instance not DEREGISTERED is listed.
    pub fn list_container_instances(
        &self,
        cluster: &str,
        status: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT id, arn FROM container_instances
             WHERE cluster = ?1
               AND CASE WHEN ?2 IS NULL THEN status <> 'DEREGISTERED' ELSE status = ?2 END
               AND (?3 IS NULL OR id > ?3)
             ORDER BY id LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![cluster, status, after, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Load of the cluster's instances (every status), or of one.
    pub fn instance_loads(
        &self,
        cluster: &str,
        only: Option<&str>,
    ) -> Result<Vec<InstanceLoad>, StoreError> {
        instance_loads(&*self.conn()?, cluster, "", false, only)
    }

    /// The instance's generation and the rows of its desired-state document, read in one
    /// snapshot; `None` for no such instance.
    pub fn document_rows(&self, instance_id: &str) -> Result<Option<DocumentParts>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        document_parts(&tx, instance_id)
    }

    /// [`Store::document_rows`] of each instance, in the order asked, all read in one
    /// snapshot: a fleet-wide change is published without taking the lock per instance.
    pub fn document_rows_many(
        &self,
        instance_ids: &[String],
    ) -> Result<Vec<Option<DocumentParts>>, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        instance_ids
            .iter()
            .map(|id| document_parts(&tx, id))
            .collect()
    }

    /// The instance's latest host metrics (JSON) and their device time.
    pub fn instance_metrics(&self, instance_id: &str) -> Result<Option<(String, f64)>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT metrics, metrics_at FROM container_instances
                 WHERE id = ?1 AND metrics IS NOT NULL",
                params![instance_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?)
    }

    pub fn link_state(&self, instance_id: &str) -> Result<Option<LinkState>, StoreError> {
        link_state(&*self.conn()?, instance_id)
    }
}

fn link_state(conn: &Connection, instance_id: &str) -> Result<Option<LinkState>, StoreError> {
    Ok(conn
        .prepare_cached(
            "SELECT id, arn, cluster, status, generation, applied_generation, up_seq
             FROM container_instances WHERE id = ?1",
        )?
        .query_row(params![instance_id], |r| {
            Ok(LinkState {
                id: r.get(0)?,
                arn: r.get(1)?,
                cluster: r.get(2)?,
                status: r.get(3)?,
                generation: r.get(4)?,
                applied_generation: r.get(5)?,
                up_seq: r.get(6)?,
            })
        })
        .optional()?)
}

/// What an instance's document is made of: one statement per instance, which a fleet-wide
/// change runs for every instance.
pub(super) const DOCUMENT_PARTS: &str =
    "SELECT i.generation, t.arn, t.desired_status, t.last_status, t.family, d.revision,
         d.body, t.grp
     FROM container_instances i
     LEFT JOIN tasks t ON t.instance_id = i.id
         AND (t.desired_status = 'RUNNING' OR t.last_status <> 'STOPPED')
     LEFT JOIN task_definitions d ON d.family = t.family AND d.revision = t.revision
     WHERE i.id = ?1
     ORDER BY t.seq";

fn document_parts(
    conn: &Connection,
    instance_id: &str,
) -> Result<Option<DocumentParts>, StoreError> {
    let mut stmt = conn.prepare_cached(DOCUMENT_PARTS)?;
    let mut rows = stmt.query(params![instance_id])?;
    let mut parts: Option<DocumentParts> = None;
    let running = desired_status_name(DesiredStatus::Running);
    while let Some(r) = rows.next()? {
        let p = parts.get_or_insert(DocumentParts {
            generation: r.get(0)?,
            tasks: Vec::new(),
            refused: Vec::new(),
        });
        let Some(arn) = r.get::<_, Option<String>>(1)? else {
            continue; // an instance without tasks
        };
        let desired: String = r.get(2)?;
        let last: String = r.get(3)?;
        let family: Option<String> = r.get(4)?;
        match (family, r.get::<_, Option<i64>>(5)?) {
            (Some(family), Some(revision)) => p.tasks.push(DocumentRow {
                task_arn: arn,
                desired_status: if desired == running {
                    DesiredStatus::Running
                } else {
                    DesiredStatus::Stopped
                },
                family,
                revision,
                body: r.get(6)?,
                group: r.get(7)?,
            }),
            // A device's task the hub has no definition for, wanted STOPPED.
            (None, _) if desired != running && last != "STOPPED" => p.refused.push(arn),
            _ => {}
        }
    }
    Ok(parts)
}

impl Txn<'_> {
    pub fn link_state(&self, instance_id: &str) -> Result<Option<LinkState>, StoreError> {
        link_state(&self.tx, instance_id)
    }

    /// Load of the cluster's ACTIVE instances (or of one of them), counting `group`'s tasks.
    pub fn placement_loads(
        &self,
        cluster: &str,
        group: &str,
        only: Option<&str>,
    ) -> Result<Vec<InstanceLoad>, StoreError> {
        instance_loads(&self.tx, cluster, group, true, only)
    }

    /// Ids of the cluster's ACTIVE instances.
    pub fn active_instance_ids(&self, cluster: &str) -> Result<Vec<String>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT id FROM container_instances WHERE cluster = ?1 AND status = 'ACTIVE'
             ORDER BY id",
        )?;
        let rows = stmt.query_map(params![cluster], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Records the highest seq applied and that the device was heard from at `now`.
    pub fn set_up_seq(&mut self, instance_id: &str, seq: i64, now: f64) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE container_instances SET up_seq = ?2, last_seen_at = ?3 WHERE id = ?1",
            )?
            .execute(params![instance_id, seq, now])?;
        Ok(())
    }

    pub fn set_applied_generation(
        &mut self,
        instance_id: &str,
        generation: i64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE container_instances SET applied_generation = ?2 WHERE id = ?1")?
            .execute(params![instance_id, generation])?;
        Ok(())
    }

    /// Raises the instance's generation to `at_least` (never lowers it) and marks its
    /// document changed.
    pub fn raise_generation(&mut self, instance_id: &str, at_least: i64) -> Result<(), StoreError> {
        let n = self.tx.execute(
            "UPDATE container_instances SET generation = ?2 WHERE id = ?1 AND generation < ?2",
            params![instance_id, at_least],
        )?;
        if n > 0 {
            self.touched.insert(instance_id.to_string());
        }
        Ok(())
    }

    pub fn set_metrics(
        &mut self,
        instance_id: &str,
        metrics_json: &str,
        time: f64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE container_instances SET metrics = ?2, metrics_at = ?3 WHERE id = ?1",
            )?
            .execute(params![instance_id, metrics_json, time])?;
        Ok(())
    }

    /// Replaces the instance's per-container figures (a JSON array of `ContainerUsage`).
    pub fn set_container_metrics(
        &mut self,
        instance_id: &str,
        containers_json: &str,
        time: f64,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "UPDATE container_instances SET container_metrics = ?2, container_metrics_at = ?3
                 WHERE id = ?1",
            )?
            .execute(params![instance_id, containers_json, time])?;
        Ok(())
    }

    /// Whether the instance exists.
    pub fn set_connected(
        &mut self,
        instance_id: &str,
        connected: bool,
        now: f64,
    ) -> Result<bool, StoreError> {
        Ok(self.tx.execute(
            "UPDATE container_instances SET agent_connected = ?2, last_seen_at = ?3 WHERE id = ?1",
            params![instance_id, connected, now],
        )? > 0)
    }

    /// Sets the custom attribute `name` of an instance to `value`, keeping the others.
    pub fn set_attribute(
        &mut self,
        instance_id: &str,
        name: &str,
        value: &str,
    ) -> Result<bool, StoreError> {
        // A JSON path member quoted: attribute names hold dots.
        let path = format!("$.\"{}\"", name.replace('"', ""));
        Ok(self.tx.execute(
            "UPDATE container_instances SET attributes = json_set(
                 CASE WHEN json_valid(attributes) THEN attributes ELSE '{}' END, ?2, ?3)
             WHERE id = ?1",
            params![instance_id, path, value],
        )? > 0)
    }

    pub fn set_instance_status(
        &mut self,
        instance_id: &str,
        status: &str,
    ) -> Result<(), StoreError> {
        self.tx.execute(
            "UPDATE container_instances SET status = ?2 WHERE id = ?1",
            params![instance_id, status],
        )?;
        Ok(())
    }

    /// Whether the hub has this task definition revision.
    pub fn task_definition_exists(&self, family: &str, revision: i64) -> Result<bool, StoreError> {
        Ok(self
            .tx
            .prepare_cached("SELECT 1 FROM task_definitions WHERE family = ?1 AND revision = ?2")?
            .query_row(params![family, revision], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// A task definition's body and status, by revision or (with `None`) the latest ACTIVE one.
    pub fn task_definition(
        &self,
        family: &str,
        revision: Option<i64>,
    ) -> Result<Option<super::TaskDefinition>, StoreError> {
        let revision = match revision {
            Some(r) => r,
            None => match self
                .tx
                .query_row(
                    "SELECT MAX(revision) FROM task_definitions
                     WHERE family = ?1 AND status = 'ACTIVE'",
                    params![family],
                    |r| r.get::<_, Option<i64>>(0),
                )
                .optional()?
                .flatten()
            {
                Some(r) => r,
                None => return Ok(None),
            },
        };
        super::get_task_definition(&self.tx, family, revision)
    }
}
