//! Tasks: one row per task the hub placed or a device reported, and the write transaction
//! ([`Txn`]) every change to tasks, services and instances goes through, so that the
//! generation of each instance whose desired-state document changes is bumped with it.

use std::collections::BTreeSet;

use rusqlite::types::Type;
use rusqlite::{params, params_from_iter, Connection, Row, TransactionBehavior};
use serde_json::Value;
use skerry_proto::desired::DesiredStatus;
use skerry_proto::status::{HealthStatus, TaskStatus};

use super::{Store, StoreError};

/// One task as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    /// Creation order (0 until inserted); newer tasks have larger values.
    pub seq: i64,
    pub arn: String,
    pub cluster: String,
    pub instance_id: String,
    /// The container instance's ARN, read from its row (empty if it has none).
    pub instance_arn: String,
    /// `None` for a task a device reported whose definition this hub does not have.
    pub family: Option<String>,
    pub revision: Option<i64>,
    pub task_definition_arn: Option<String>,
    pub service_id: Option<i64>,
    pub started_by: Option<String>,
    pub group: String,
    pub client_token: Option<String>,
    pub last_status: TaskStatus,
    pub desired_status: DesiredStatus,
    pub health_status: HealthStatus,
    pub cpu: i64,
    pub memory: i64,
    /// Fixed host ports the task holds while desired RUNNING, as `8080/tcp`.
    pub ports: Vec<String>,
    /// DescribeTasks' container objects, without `containerArn` and `taskArn`.
    pub containers: Vec<Value>,
    pub stopped_reason: Option<String>,
    pub stop_code: Option<String>,
    /// ECS tag list.
    pub tags: Value,
    pub version: i64,
    pub desired_generation: i64,
    pub created_at: f64,
    pub started_at: Option<f64>,
    pub stopping_at: Option<f64>,
    pub stopped_at: Option<f64>,
    /// When the hub last changed the row, by its own clock.
    pub updated_at: f64,
}

impl TaskRow {
    /// What the instance's desired-state document says of this task: nothing once it is
    /// wanted and reported STOPPED (or when the hub lacks its definition), else its desired
    /// status.
    pub fn in_document(&self) -> Option<DesiredStatus> {
        self.family.as_ref()?;
        match (self.desired_status, self.last_status) {
            (DesiredStatus::Stopped, TaskStatus::Stopped) => None,
            (d, _) => Some(d),
        }
    }

    /// Neither wanted nor reported stopped: what services count and resources are held by.
    pub fn is_live(&self) -> bool {
        self.desired_status == DesiredStatus::Running && self.last_status != TaskStatus::Stopped
    }
}

pub fn task_status_name(s: TaskStatus) -> &'static str {
    match s {
        TaskStatus::Provisioning => "PROVISIONING",
        TaskStatus::Pending => "PENDING",
        TaskStatus::Activating => "ACTIVATING",
        TaskStatus::Running => "RUNNING",
        TaskStatus::Deactivating => "DEACTIVATING",
        TaskStatus::Stopping => "STOPPING",
        TaskStatus::Deprovisioning => "DEPROVISIONING",
        TaskStatus::Stopped => "STOPPED",
    }
}

fn parse_task_status(s: &str) -> Option<TaskStatus> {
    [
        TaskStatus::Provisioning,
        TaskStatus::Pending,
        TaskStatus::Activating,
        TaskStatus::Running,
        TaskStatus::Deactivating,
        TaskStatus::Stopping,
        TaskStatus::Deprovisioning,
        TaskStatus::Stopped,
    ]
    .into_iter()
    .find(|t| task_status_name(*t) == s)
}

pub fn desired_status_name(s: DesiredStatus) -> &'static str {
    match s {
        DesiredStatus::Running => "RUNNING",
        DesiredStatus::Stopped => "STOPPED",
    }
}

fn parse_desired_status(s: &str) -> Option<DesiredStatus> {
    match s {
        "RUNNING" => Some(DesiredStatus::Running),
        "STOPPED" => Some(DesiredStatus::Stopped),
        _ => None,
    }
}

pub fn health_status_name(s: HealthStatus) -> &'static str {
    match s {
        HealthStatus::Healthy => "HEALTHY",
        HealthStatus::Unhealthy => "UNHEALTHY",
        HealthStatus::Unknown => "UNKNOWN",
    }
}

fn parse_health_status(s: &str) -> Option<HealthStatus> {
    match s {
        "HEALTHY" => Some(HealthStatus::Healthy),
        "UNHEALTHY" => Some(HealthStatus::Unhealthy),
        "UNKNOWN" => Some(HealthStatus::Unknown),
        _ => None,
    }
}

/// A column that must parse with `f`; a bad value is a conversion error naming the column.
fn parsed<T>(r: &Row<'_>, idx: usize, f: fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let text: String = r.get(idx)?;
    f(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            format!("unexpected value {text:?}").into(),
        )
    })
}

fn json_column(r: &Row<'_>, idx: usize) -> rusqlite::Result<Value> {
    let text: String = r.get(idx)?;
    serde_json::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

pub(super) const TASK_COLUMNS: &str = "t.seq, t.arn, t.cluster, t.instance_id,
    COALESCE((SELECT arn FROM container_instances i WHERE i.id = t.instance_id), ''),
    t.family, t.revision, t.task_definition_arn, t.service_id, t.started_by, t.grp,
    t.client_token, t.last_status, t.desired_status, t.health_status, t.cpu, t.memory, t.ports,
    t.containers, t.stopped_reason, t.stop_code, t.tags, t.version, t.desired_generation,
    t.created_at, t.started_at, t.stopping_at, t.stopped_at, t.updated_at";

pub(super) fn task_from_row(r: &Row<'_>) -> rusqlite::Result<TaskRow> {
    let ports: String = r.get(17)?;
    let containers = match json_column(r, 18)? {
        Value::Array(a) => a,
        _ => Vec::new(),
    };
    Ok(TaskRow {
        seq: r.get(0)?,
        arn: r.get(1)?,
        cluster: r.get(2)?,
        instance_id: r.get(3)?,
        instance_arn: r.get(4)?,
        family: r.get(5)?,
        revision: r.get(6)?,
        task_definition_arn: r.get(7)?,
        service_id: r.get(8)?,
        started_by: r.get(9)?,
        group: r.get(10)?,
        client_token: r.get(11)?,
        last_status: parsed(r, 12, parse_task_status)?,
        desired_status: parsed(r, 13, parse_desired_status)?,
        health_status: parsed(r, 14, parse_health_status)?,
        cpu: r.get(15)?,
        memory: r.get(16)?,
        ports: ports.split_whitespace().map(str::to_string).collect(),
        containers,
        stopped_reason: r.get(19)?,
        stop_code: r.get(20)?,
        tags: json_column(r, 21)?,
        version: r.get(22)?,
        desired_generation: r.get(23)?,
        created_at: r.get(24)?,
        started_at: r.get(25)?,
        stopping_at: r.get(26)?,
        stopped_at: r.get(27)?,
        updated_at: r.get(28)?,
    })
}

fn query_tasks(
    conn: &Connection,
    where_clause: &str,
    args: &[&dyn rusqlite::ToSql],
) -> Result<Vec<TaskRow>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {TASK_COLUMNS} FROM tasks t WHERE {where_clause}"
    ))?;
    let rows = stmt.query_map(args, task_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn get_task(conn: &Connection, arn: &str) -> Result<Option<TaskRow>, StoreError> {
    Ok(query_tasks(conn, "t.arn = ?1", &[&arn])?.into_iter().next())
}

/// What a service's plan needs of one of its live tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveServiceTask {
    pub arn: String,
    pub instance_id: String,
    pub started_by: Option<String>,
    pub last_status: TaskStatus,
}

/// What ListTasks selects. `None` fields do not filter.
#[derive(Debug, Clone)]
pub struct TaskFilter<'a> {
    pub cluster: &'a str,
    pub desired_status: &'a str,
    pub instance_id: Option<&'a str>,
    pub family: Option<&'a str>,
    pub service_id: Option<i64>,
    pub started_by: Option<&'a str>,
}

/// A write transaction. Dropping it without [`Store::write`] committing rolls it back.
pub struct Txn<'c> {
    pub(super) tx: rusqlite::Transaction<'c>,
    /// Instances whose generation this transaction bumped.
    pub(super) touched: BTreeSet<String>,
    /// Whether it added a device event.
    pub(super) events: bool,
}

/// What a committed write changed besides its own result.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Written {
    /// Instances whose desired-state document (and generation) changed.
    pub instances: BTreeSet<String>,
    /// Whether device events were added.
    pub events: bool,
}

impl Store {
    /// Runs `f` in one IMMEDIATE transaction (taking SQLite's write lock up front, so a second
    /// process writing the same file waits instead of failing mid-way) and commits when it
    /// returns `Ok`; on `Err` nothing of it is kept.
    pub fn write<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<(T, Written), E> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(StoreError::from)?;
        let mut txn = Txn {
            tx,
            touched: BTreeSet::new(),
            events: false,
        };
        let value = f(&mut txn)?;
        let Txn {
            tx,
            touched,
            events,
        } = txn;
        tx.commit().map_err(StoreError::from)?;
        Ok((
            value,
            Written {
                instances: touched,
                events,
            },
        ))
    }

    pub fn task(&self, arn: &str) -> Result<Option<TaskRow>, StoreError> {
        get_task(&*self.conn()?, arn)
    }

    /// The tasks by these ARNs that exist, in the order asked.
    pub fn tasks_by_arn(&self, arns: &[String]) -> Result<Vec<TaskRow>, StoreError> {
        let conn = self.conn()?;
        let mut out = Vec::with_capacity(arns.len());
        for arn in arns {
            if let Some(t) = get_task(&conn, arn)? {
                out.push(t);
            }
        }
        Ok(out)
    }

    /// (seq, ARN) of the tasks matching `f`, in creation order, after `after`.
    pub fn list_tasks(
        &self,
        f: &TaskFilter<'_>,
        after: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let mut sql = String::from(
            "SELECT seq, arn FROM tasks WHERE cluster = ? AND desired_status = ? AND seq > ?",
        );
        let mut args: Vec<rusqlite::types::Value> = vec![
            f.cluster.to_string().into(),
            f.desired_status.to_string().into(),
            after.unwrap_or(0).into(),
        ];
        for (column, value) in [
            ("instance_id", f.instance_id),
            ("family", f.family),
            ("started_by", f.started_by),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} = ?"));
                args.push(v.to_string().into());
            }
        }
        if let Some(id) = f.service_id {
            sql.push_str(" AND service_id = ?");
            args.push(id.into());
        }
        sql.push_str(" ORDER BY seq LIMIT ?");
        args.push((limit as i64).into());
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args), |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Forgets tasks wanted and reported STOPPED that the hub last changed before `before`
    /// (ECS shows stopped tasks for about an hour), so the table holds the fleet's live
    /// tasks and recent history. The hub's clock, not the device's `stoppedAt`, decides: a
    /// board without a real-time clock may report times years off.
    pub fn delete_stopped_tasks(&self, before: f64) -> Result<usize, StoreError> {
        Ok(self.conn()?.execute(
            "DELETE FROM tasks WHERE last_status = 'STOPPED' AND desired_status = 'STOPPED'
             AND updated_at < ?1",
            params![before],
        )?)
    }
}

impl Txn<'_> {
    /// Runs `f` inside a savepoint: on `Err` what `f` wrote is rolled back and the rest of
    /// the transaction stands, so one bad message in a batch does not undo the others.
    pub fn attempt<T, E: From<StoreError>>(
        &mut self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.tx
            .prepare_cached("SAVEPOINT attempt")
            .and_then(|mut s| s.execute([]))
            .map_err(StoreError::from)?;
        let touched = self.touched.clone();
        match f(self) {
            Ok(v) => {
                self.tx
                    .prepare_cached("RELEASE attempt")
                    .and_then(|mut s| s.execute([]))
                    .map_err(StoreError::from)?;
                Ok(v)
            }
            Err(e) => {
                self.tx
                    .execute_batch("ROLLBACK TO attempt; RELEASE attempt")
                    .map_err(StoreError::from)?;
                self.touched = touched;
                Err(e)
            }
        }
    }

    pub fn task(&self, arn: &str) -> Result<Option<TaskRow>, StoreError> {
        get_task(&self.tx, arn)
    }

    /// Tasks of a RunTask call with this idempotency token, in creation order.
    pub fn tasks_by_client_token(
        &self,
        cluster: &str,
        token: &str,
    ) -> Result<Vec<TaskRow>, StoreError> {
        query_tasks(
            &self.tx,
            "t.cluster = ?1 AND t.client_token = ?2 ORDER BY t.seq",
            &[&cluster, &token],
        )
    }

    /// Live tasks (desired RUNNING, not reported STOPPED) of a service, oldest first.
    pub fn live_service_tasks(&self, service_id: i64) -> Result<Vec<TaskRow>, StoreError> {
        query_tasks(
            &self.tx,
            "t.service_id = ?1 AND t.desired_status = 'RUNNING' AND t.last_status <> 'STOPPED'
             ORDER BY t.seq",
            &[&service_id],
        )
    }

    /// Live tasks of a service as its plan sees them, oldest first: four columns, not the
    /// whole row, since the service loop reads them for every service every tick.
    pub fn live_service_task_states(
        &self,
        service_id: i64,
    ) -> Result<Vec<LiveServiceTask>, StoreError> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT arn, instance_id, started_by, last_status FROM tasks
             WHERE service_id = ?1 AND desired_status = 'RUNNING' AND last_status <> 'STOPPED'
             ORDER BY seq",
        )?;
        let rows = stmt.query_map(params![service_id], |r| {
            Ok(LiveServiceTask {
                arn: r.get(0)?,
                instance_id: r.get(1)?,
                started_by: r.get(2)?,
                last_status: parsed(r, 3, parse_task_status)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Tasks of a service not yet reported STOPPED, whatever their desired status.
    pub fn unstopped_service_tasks(&self, service_id: i64) -> Result<Vec<TaskRow>, StoreError> {
        query_tasks(
            &self.tx,
            "t.service_id = ?1 AND t.last_status <> 'STOPPED' ORDER BY t.seq",
            &[&service_id],
        )
    }

    /// Every task in the instance's desired-state document, oldest first.
    pub fn document_tasks(&self, instance_id: &str) -> Result<Vec<TaskRow>, StoreError> {
        query_tasks(
            &self.tx,
            "t.instance_id = ?1 AND t.family IS NOT NULL
             AND (t.desired_status = 'RUNNING' OR t.last_status <> 'STOPPED') ORDER BY t.seq",
            &[&instance_id],
        )
    }

    /// How many tasks on the instance are not reported STOPPED.
    pub fn unstopped_instance_task_count(&self, instance_id: &str) -> Result<usize, StoreError> {
        let n: i64 = self
            .tx
            .prepare_cached(
                "SELECT COUNT(*) FROM tasks WHERE instance_id = ?1 AND last_status <> 'STOPPED'",
            )?
            .query_row(params![instance_id], |r| r.get(0))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    }

    /// Tasks on the instance not reported STOPPED, oldest first.
    pub fn unstopped_instance_tasks(&self, instance_id: &str) -> Result<Vec<TaskRow>, StoreError> {
        query_tasks(
            &self.tx,
            "t.instance_id = ?1 AND t.last_status <> 'STOPPED' ORDER BY t.seq",
            &[&instance_id],
        )
    }

    /// Adds one to the instance's generation; the new value, or `None` for no such instance.
    pub fn bump_generation(&mut self, instance_id: &str) -> Result<Option<i64>, StoreError> {
        // An UPDATE and a SELECT: with RETURNING instead, SQLite keeps the result in a
        // temporary table and the change in a statement journal, three times the cost, and a
        // DAEMON service's placement bumps every instance of the fleet.
        // Checked in SQL: at i64::MAX SQLite's `+ 1` would store a REAL that no read takes.
        let bumped = self
            .tx
            .prepare_cached(
                "UPDATE container_instances SET generation = generation + 1
                 WHERE id = ?1 AND generation < ?2",
            )?
            .execute(params![instance_id, i64::MAX])?;
        if bumped == 0 {
            let exists = self
                .tx
                .prepare_cached("SELECT 1 FROM container_instances WHERE id = ?1")?
                .exists(params![instance_id])?;
            if exists {
                return Err(StoreError::GenerationExhausted {
                    instance: instance_id.to_string(),
                });
            }
            return Ok(None);
        }
        let g = self
            .tx
            .prepare_cached("SELECT generation FROM container_instances WHERE id = ?1")?
            .query_row(params![instance_id], |r| r.get(0))?;
        self.touched.insert(instance_id.to_string());
        Ok(Some(g))
    }

    /// Writes `row` at the hub's time `now`, inserting it when `before` is `None`. When the
    /// task's entry in its instance's document changes, the instance's generation is bumped
    /// and the row records it; otherwise the document (and generation) stay as they are.
    pub fn save_task(
        &mut self,
        before: Option<&TaskRow>,
        row: &mut TaskRow,
        now: f64,
    ) -> Result<(), StoreError> {
        row.updated_at = now;
        if before.and_then(TaskRow::in_document) != row.in_document() {
            if let Some(g) = self.bump_generation(&row.instance_id)? {
                row.desired_generation = g;
            }
        }
        let ports = row.ports.join(" ");
        let containers = Value::Array(row.containers.clone()).to_string();
        let tags = row.tags.to_string();
        match before {
            None => {
                row.version = 1;
                self.tx
                    .prepare_cached(
                        "INSERT INTO tasks (arn, cluster, instance_id, family, revision,
                             task_definition_arn, service_id, started_by, grp, client_token,
                             last_status, desired_status, health_status, cpu, memory, ports,
                             containers, stopped_reason, stop_code, tags, version,
                             desired_generation, created_at, started_at, stopping_at, stopped_at,
                             updated_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                             ?15, ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27)",
                    )?
                    .execute(params![
                        row.arn,
                        row.cluster,
                        row.instance_id,
                        row.family,
                        row.revision,
                        row.task_definition_arn,
                        row.service_id,
                        row.started_by,
                        row.group,
                        row.client_token,
                        task_status_name(row.last_status),
                        desired_status_name(row.desired_status),
                        health_status_name(row.health_status),
                        row.cpu,
                        row.memory,
                        ports,
                        containers,
                        row.stopped_reason,
                        row.stop_code,
                        tags,
                        row.version,
                        row.desired_generation,
                        row.created_at,
                        row.started_at,
                        row.stopping_at,
                        row.stopped_at,
                        row.updated_at,
                    ])?;
                row.seq = self.tx.last_insert_rowid();
            }
            Some(before) => {
                row.version = before.version + 1;
                self.tx
                    .prepare_cached(
                        "UPDATE tasks SET last_status = ?2, desired_status = ?3,
                             health_status = ?4, containers = ?5, stopped_reason = ?6,
                             stop_code = ?7, version = ?8, desired_generation = ?9,
                             started_at = ?10, stopping_at = ?11, stopped_at = ?12, ports = ?13,
                             updated_at = ?14
                         WHERE arn = ?1",
                    )?
                    .execute(params![
                        row.arn,
                        task_status_name(row.last_status),
                        desired_status_name(row.desired_status),
                        health_status_name(row.health_status),
                        containers,
                        row.stopped_reason,
                        row.stop_code,
                        row.version,
                        row.desired_generation,
                        row.started_at,
                        row.stopping_at,
                        row.stopped_at,
                        ports,
                        row.updated_at,
                    ])?;
            }
        }
        Ok(())
    }
}
