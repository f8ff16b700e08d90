//! Events: what devices reported (state changes, restarts, gaps in their sequence) in the
//! order they happened, and the service scheduler's messages that DescribeServices shows.
//! Both are bounded per instance and per service, oldest dropped first (ids are shared by
//! all instances, so the bound is by position, not by id distance), counted by the hub.

use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError, Txn};

/// Device events kept per instance.
pub const DEVICE_EVENTS_KEPT: i64 = 1000;
/// A device's events are trimmed back to [`DEVICE_EVENTS_KEPT`] every this many: an
/// instance holds fewer than `DEVICE_EVENTS_KEPT + TRIM_EVERY` at any time.
pub const TRIM_EVERY: i64 = 64;
/// Service events kept per service; DescribeServices shows up to 100.
pub const SERVICE_EVENTS_KEPT: i64 = 100;

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceEvent {
    pub instance_id: String,
    /// The device's sequence number; `None` for what the hub saw itself (connections).
    pub seq: Option<i64>,
    /// Epoch seconds: the device's clock for its own events, the hub's otherwise.
    pub time: f64,
    pub task_arn: Option<String>,
    pub container: Option<String>,
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEvent {
    pub id: i64,
    pub created_at: f64,
    pub message: String,
}

impl Store {
    /// The instance's newest `limit` events, oldest first.
    pub fn device_events(
        &self,
        instance_id: &str,
        limit: usize,
    ) -> Result<Vec<DeviceEvent>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT instance_id, seq, time, task_arn, container, kind, message FROM (
                 SELECT * FROM device_events WHERE instance_id = ?1 ORDER BY id DESC LIMIT ?2
             ) ORDER BY id",
        )?;
        let rows = stmt.query_map(params![instance_id, limit as i64], |r| {
            Ok(DeviceEvent {
                instance_id: r.get(0)?,
                seq: r.get(1)?,
                time: r.get(2)?,
                task_arn: r.get(3)?,
                container: r.get(4)?,
                kind: r.get(5)?,
                message: r.get(6)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Device events after the event id `after`, oldest first, of one instance, of one
    /// cluster's instances, or all; each with its id, which orders events as they arrived
    /// (for one device: its own order).
    pub fn device_events_after(
        &self,
        instance_id: Option<&str>,
        cluster: Option<&str>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<(i64, DeviceEvent)>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, instance_id, seq, time, task_arn, container, kind, message
             FROM device_events WHERE id > ?1 AND (?2 IS NULL OR instance_id = ?2)
             AND (?4 IS NULL OR instance_id IN
                  (SELECT id FROM container_instances WHERE cluster = ?4))
             ORDER BY id LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![after, instance_id, limit as i64, cluster], |r| {
            Ok((
                r.get(0)?,
                DeviceEvent {
                    instance_id: r.get(1)?,
                    seq: r.get(2)?,
                    time: r.get(3)?,
                    task_arn: r.get(4)?,
                    container: r.get(5)?,
                    kind: r.get(6)?,
                    message: r.get(7)?,
                },
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The service's newest `limit` events, newest first, as DescribeServices lists them.
    pub fn service_events(
        &self,
        service_id: i64,
        limit: usize,
    ) -> Result<Vec<ServiceEvent>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare_cached(
            "SELECT id, created_at, message FROM service_events WHERE service_id = ?1
             ORDER BY id DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![service_id, limit as i64], |r| {
            Ok(ServiceEvent {
                id: r.get(0)?,
                created_at: r.get(1)?,
                message: r.get(2)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

impl Txn<'_> {
    pub fn add_device_event(&mut self, e: &DeviceEvent) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO device_events (instance_id, seq, time, task_arn, container, kind,
                     message) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                e.instance_id,
                e.seq,
                e.time,
                e.task_arn,
                e.container,
                e.kind,
                e.message
            ])?;
        self.events = true;
        // Trimming walks the instance's newest events, so it runs every TRIM_EVERY-th event
        // of the instance, counted by the hub (a device chooses its seqs: counting by those,
        // it could avoid the trim for ever). An event of no known instance is trimmed each
        // time.
        let since_trim: Option<i64> = self
            .tx
            .prepare_cached(
                "UPDATE container_instances SET events_since_trim = events_since_trim + 1
                 WHERE id = ?1 RETURNING events_since_trim",
            )?
            .query_row(params![e.instance_id], |r| r.get(0))
            .optional()?;
        if since_trim.is_none_or(|n| n >= TRIM_EVERY) {
            self.tx
                .prepare_cached(
                    "UPDATE container_instances SET events_since_trim = 0 WHERE id = ?1",
                )?
                .execute(params![e.instance_id])?;
            self.tx
                .prepare_cached(
                    "DELETE FROM device_events WHERE instance_id = ?1 AND id < (
                         SELECT id FROM device_events WHERE instance_id = ?1
                         ORDER BY id DESC LIMIT 1 OFFSET ?2)",
                )?
                .execute(params![e.instance_id, DEVICE_EVENTS_KEPT - 1])?;
        }
        Ok(())
    }

    pub fn add_service_event(
        &mut self,
        service_id: i64,
        created_at: f64,
        message: &str,
    ) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "INSERT INTO service_events (service_id, created_at, message) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![service_id, created_at, message])?;
        self.tx
            .prepare_cached(
                "DELETE FROM service_events WHERE service_id = ?1 AND id < (
                     SELECT id FROM service_events WHERE service_id = ?1
                     ORDER BY id DESC LIMIT 1 OFFSET ?2)",
            )?
            .execute(params![service_id, SERVICE_EVENTS_KEPT - 1])?;
        Ok(())
    }

    /// The message of the service's newest event, so the scheduler does not repeat itself.
    pub fn last_service_event(&self, service_id: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .tx
            .prepare_cached(
                "SELECT message FROM service_events WHERE service_id = ?1
                 ORDER BY id DESC LIMIT 1",
            )?
            .query_row(params![service_id], |r| r.get(0))
            .optional()?)
    }
}
