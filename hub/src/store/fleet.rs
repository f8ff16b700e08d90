//! The fleet as `/metrics` shows it: every ACTIVE instance with its link and latest host
//! figures, every live service with its task counts, every task not yet STOPPED, and the
//! latest figures of each container of those tasks. Read in one snapshot so the figures of
//! a scrape agree with each other.

use rusqlite::Transaction;

use super::{Store, StoreError};

#[derive(Debug, Clone, PartialEq)]
pub struct InstanceFigures {
    pub id: String,
    pub cluster: String,
    pub architecture: String,
    pub agent_version: String,
    pub connected: bool,
    pub last_seen_at: Option<f64>,
    /// The latest `HostMetrics` JSON, as ingested.
    pub metrics: Option<String>,
    /// Its device time.
    pub metrics_at: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceFigures {
    pub cluster: String,
    pub name: String,
    pub desired: i64,
    pub running: i64,
    pub pending: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskFigures {
    pub arn: String,
    pub cluster: String,
    pub instance_id: String,
    pub family: Option<String>,
    pub last_status: String,
}

/// A container's latest figures, as its device sent them.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerFigures {
    pub cluster: String,
    pub instance_id: String,
    pub task_arn: String,
    pub container: String,
    pub cpu_usage_usec: i64,
    pub memory_bytes: i64,
    pub memory_limit_bytes: Option<i64>,
    pub memory_peak_bytes: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetFigures {
    pub instances: Vec<InstanceFigures>,
    pub services: Vec<ServiceFigures>,
    pub tasks: Vec<TaskFigures>,
    pub containers: Vec<ContainerFigures>,
}

impl Store {
    pub fn fleet_figures(&self) -> Result<FleetFigures, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        Ok(FleetFigures {
            instances: instances(&tx)?,
            services: services(&tx)?,
            tasks: tasks(&tx)?,
            containers: containers(&tx)?,
        })
    }
}

fn instances(tx: &Transaction<'_>) -> Result<Vec<InstanceFigures>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT id, cluster, architecture, agent_version, agent_connected, last_seen_at,
             metrics, metrics_at
         FROM container_instances WHERE status = 'ACTIVE' ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(InstanceFigures {
            id: r.get(0)?,
            cluster: r.get(1)?,
            architecture: r.get(2)?,
            agent_version: r.get(3)?,
            connected: r.get(4)?,
            last_seen_at: r.get(5)?,
            metrics: r.get(6)?,
            metrics_at: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn services(tx: &Transaction<'_>) -> Result<Vec<ServiceFigures>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT s.cluster, s.name, s.desired_count,
             COALESCE(SUM(t.last_status = 'RUNNING'), 0),
             COALESCE(SUM(t.last_status IN ('PROVISIONING', 'PENDING', 'ACTIVATING')), 0)
         FROM services s LEFT JOIN tasks t ON t.service_id = s.id AND t.last_status <> 'STOPPED'
         WHERE s.status <> 'INACTIVE' GROUP BY s.id ORDER BY s.cluster, s.name",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ServiceFigures {
            cluster: r.get(0)?,
            name: r.get(1)?,
            desired: r.get(2)?,
            running: r.get(3)?,
            pending: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn tasks(tx: &Transaction<'_>) -> Result<Vec<TaskFigures>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT arn, cluster, instance_id, family, last_status FROM tasks
         WHERE last_status <> 'STOPPED' ORDER BY seq",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(TaskFigures {
            arn: r.get(0)?,
            cluster: r.get(1)?,
            instance_id: r.get(2)?,
            family: r.get(3)?,
            last_status: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The entries of each ACTIVE instance's latest container figures that name a container of
/// one of its tasks not STOPPED: what a device sends about anything else is never shown, so
/// the series are bounded by the tasks the hub knows.
fn containers(tx: &Transaction<'_>) -> Result<Vec<ContainerFigures>, StoreError> {
    let mut stmt = tx.prepare_cached(
        "SELECT i.cluster, i.id, t.arn, u.value ->> '$.container', u.value ->> '$.cpuUsageUsec',
             u.value ->> '$.memoryBytes', u.value ->> '$.memoryLimitBytes',
             u.value ->> '$.memoryPeakBytes'
         FROM container_instances i, json_each(i.container_metrics) u
         JOIN tasks t ON t.arn = u.value ->> '$.taskArn' AND t.instance_id = i.id
             AND t.last_status <> 'STOPPED'
         WHERE i.status = 'ACTIVE' AND i.container_metrics IS NOT NULL
             AND EXISTS (SELECT 1 FROM json_each(t.containers) c
                         WHERE c.value ->> '$.name' = u.value ->> '$.container')
         ORDER BY i.id, t.seq, u.key",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(ContainerFigures {
            cluster: r.get(0)?,
            instance_id: r.get(1)?,
            task_arn: r.get(2)?,
            container: r.get(3)?,
            cpu_usage_usec: r.get(4)?,
            memory_bytes: r.get(5)?,
            memory_limit_bytes: r.get(6)?,
            memory_peak_bytes: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
