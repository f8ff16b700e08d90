//! Container instances: the devices registered with the hub.

use rusqlite::{params, OptionalExtension, Row};

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

impl Store {
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
