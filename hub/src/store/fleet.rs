//! The fleet as `/metrics` shows it: every ACTIVE instance with its link and latest host
//! figures, every live service with its task counts, every task not yet STOPPED. Read in one
//! snapshot so the figures of a scrape agree with each other.

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

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetFigures {
    pub instances: Vec<InstanceFigures>,
    pub services: Vec<ServiceFigures>,
    pub tasks: Vec<TaskFigures>,
}

impl Store {
    pub fn fleet_figures(&self) -> Result<FleetFigures, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        Ok(FleetFigures {
            instances: instances(&tx)?,
            services: services(&tx)?,
            tasks: tasks(&tx)?,
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
