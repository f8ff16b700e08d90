//! The fleet state in SQLite. All SQL lives here, so another database can replace this
//! module without touching the API code. One connection behind a mutex: SQLite serialises
//! writers anyway, and the hub's load is small. Calls block; callers on the async runtime
//! run them on the blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::config::DbConfig;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make {path} private to the hub's user: {source}")]
    Private {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this hub knows ({known}); run a newer skerry-hub")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("database query failed: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("database lock poisoned by an earlier panic; restart the hub")]
    Poisoned,
    #[error("container instance {instance} has used up its generation numbers; deregister it and register the device again")]
    GenerationExhausted { instance: String },
}

/// Numbered by position: `MIGRATIONS[0]` takes the schema to version 1. Append only.
const MIGRATIONS: &[&str] = &[
    // 1: clusters, task definitions, activations.
    r#"
CREATE TABLE clusters (
    name        TEXT PRIMARY KEY,
    status      TEXT NOT NULL,
    tags        TEXT NOT NULL,
    created_at  REAL NOT NULL
);
CREATE TABLE task_definitions (
    family          TEXT NOT NULL,
    revision        INTEGER NOT NULL,
    status          TEXT NOT NULL,
    body            TEXT NOT NULL,
    tags            TEXT NOT NULL,
    registered_at   REAL NOT NULL,
    deregistered_at REAL,
    PRIMARY KEY (family, revision)
);
CREATE TABLE activations (
    id                    TEXT PRIMARY KEY,
    code_salt             BLOB NOT NULL,
    code_hash             BLOB NOT NULL,
    description           TEXT,
    default_instance_name TEXT,
    iam_role              TEXT NOT NULL,
    registration_limit    INTEGER NOT NULL,
    registrations_count   INTEGER NOT NULL DEFAULT 0,
    expires_at            REAL NOT NULL,
    created_at            REAL NOT NULL,
    tags                  TEXT NOT NULL
);
"#,
    // 2: container instances, one per registered device.
    r#"
CREATE TABLE container_instances (
    id                 TEXT PRIMARY KEY,        -- mi-…, the certificate's CN
    arn                TEXT NOT NULL UNIQUE,
    cluster            TEXT NOT NULL REFERENCES clusters(name),
    activation_id      TEXT NOT NULL,
    hostname           TEXT NOT NULL,
    architecture       TEXT NOT NULL,
    agent_version      TEXT NOT NULL,
    cpu_units          INTEGER NOT NULL,
    memory_mib         INTEGER NOT NULL,
    attributes         TEXT NOT NULL,           -- JSON object
    cert_serial        TEXT NOT NULL,           -- hex, of the certificate issued last
    status             TEXT NOT NULL,           -- ACTIVE, DEREGISTERED
    agent_connected    INTEGER NOT NULL DEFAULT 0,
    generation         INTEGER NOT NULL DEFAULT 0,  -- of the desired state published last
    applied_generation INTEGER NOT NULL DEFAULT 0,  -- the device says it committed
    registered_at      REAL NOT NULL,
    last_seen_at       REAL
);
CREATE INDEX container_instances_cluster ON container_instances(cluster, status);
"#,
    // 3: services, tasks and what devices report; the link's bookkeeping per instance.
    r#"
ALTER TABLE container_instances ADD COLUMN up_seq INTEGER NOT NULL DEFAULT 0;  -- highest seq applied
ALTER TABLE container_instances ADD COLUMN metrics TEXT;                         -- latest HostMetrics JSON
ALTER TABLE container_instances ADD COLUMN metrics_at REAL;                      -- its device time
CREATE TABLE services (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster                 TEXT NOT NULL,
    name                    TEXT NOT NULL,
    status                  TEXT NOT NULL,      -- ACTIVE, DRAINING, INACTIVE
    family                  TEXT NOT NULL,
    revision                INTEGER NOT NULL,
    desired_count           INTEGER NOT NULL,
    scheduling_strategy     TEXT NOT NULL,      -- REPLICA, DAEMON
    maximum_percent         INTEGER NOT NULL,
    minimum_healthy_percent INTEGER NOT NULL,
    deployment_id           TEXT NOT NULL,      -- ecs-svc/..., the startedBy of its tasks
    deployment_created_at   REAL NOT NULL,
    tags                    TEXT NOT NULL,
    created_at              REAL NOT NULL,
    updated_at              REAL NOT NULL
);
-- One live service per name; an INACTIVE one stays describable until the name is reused.
CREATE UNIQUE INDEX services_live ON services(cluster, name) WHERE status <> 'INACTIVE';
CREATE INDEX services_name ON services(cluster, name, id);
CREATE TABLE tasks (
    seq                 INTEGER PRIMARY KEY AUTOINCREMENT,  -- creation order
    arn                 TEXT NOT NULL UNIQUE,
    cluster             TEXT NOT NULL,
    instance_id         TEXT NOT NULL,
    family              TEXT,               -- NULL: a device's task whose definition the hub lacks
    revision            INTEGER,
    task_definition_arn TEXT,
    service_id          INTEGER,
    started_by          TEXT,
    grp                 TEXT NOT NULL,
    client_token        TEXT,
    last_status         TEXT NOT NULL,
    desired_status      TEXT NOT NULL,
    health_status       TEXT NOT NULL,
    cpu                 INTEGER NOT NULL,   -- CPU units reserved
    memory              INTEGER NOT NULL,   -- MiB reserved
    ports               TEXT NOT NULL,      -- fixed host ports held, "8080/tcp" space-separated
    containers          TEXT NOT NULL,      -- JSON, DescribeTasks' containers without ARNs
    stopped_reason      TEXT,
    stop_code           TEXT,
    tags                TEXT NOT NULL,
    version             INTEGER NOT NULL,
    desired_generation  INTEGER NOT NULL,   -- the instance generation that carried its current entry
    created_at          REAL NOT NULL,
    started_at          REAL,
    stopping_at         REAL,
    stopped_at          REAL,
    updated_at          REAL NOT NULL       -- the hub's clock: device clocks may be far off
);
CREATE INDEX tasks_instance ON tasks(instance_id, desired_status, last_status);
CREATE INDEX tasks_cluster ON tasks(cluster, desired_status);
CREATE INDEX tasks_service ON tasks(service_id) WHERE service_id IS NOT NULL;
CREATE INDEX tasks_client_token ON tasks(cluster, client_token) WHERE client_token IS NOT NULL;
CREATE INDEX tasks_stopped ON tasks(updated_at) WHERE last_status = 'STOPPED';
CREATE TABLE device_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- arrival order, which is device order
    instance_id TEXT NOT NULL,
    seq         INTEGER,        -- the device's; NULL for what the hub itself saw
    time        REAL NOT NULL,  -- the device's clock for its own events, else the hub's
    task_arn    TEXT,
    container   TEXT,
    kind        TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX device_events_instance ON device_events(instance_id, id);
CREATE TABLE service_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    service_id  INTEGER NOT NULL,
    created_at  REAL NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX service_events_service ON service_events(service_id, id);
"#,
    // Generations a device pushed to the top of the range before they were bounded (an
    // overflowed `+ 1` leaves a REAL, which no read takes): back to a value every later
    // change can count from.
    r#"
UPDATE container_instances SET generation = 4503599627370496
    WHERE typeof(generation) <> 'integer' OR generation > 4503599627370496;
UPDATE container_instances SET applied_generation = 4503599627370496
    WHERE typeof(applied_generation) <> 'integer' OR applied_generation > 4503599627370496;
"#,
    // Device events since the instance's last trim, counted by the hub (a trim keyed to
    // device-chosen seqs could be avoided for ever).
    r#"
ALTER TABLE container_instances ADD COLUMN events_since_trim INTEGER NOT NULL DEFAULT 0;
"#,
    // (metrics): each instance's latest per-container figures, for /metrics.
    r#"
ALTER TABLE container_instances ADD COLUMN container_metrics TEXT;     -- JSON [ContainerUsage]
ALTER TABLE container_instances ADD COLUMN container_metrics_at REAL;  -- its device time
"#,
];

mod events;
mod fleet;
mod instances;
mod links;
mod services;
mod tasks;

pub use events::{DeviceEvent, ServiceEvent, DEVICE_EVENTS_KEPT, TRIM_EVERY};
pub use fleet::{ContainerFigures, FleetFigures, InstanceFigures, ServiceFigures, TaskFigures};
pub use instances::{ContainerInstance, NewInstance, RegisterOutcome};
pub use links::{DocumentParts, DocumentRow, InstanceLoad, LinkState};
pub use services::{DeploymentCounts, ServiceRow, StartFailures};
pub use tasks::{
    desired_status_name, health_status_name, task_status_name, LiveServiceTask, TaskFilter,
    TaskRow, Txn, Written,
};

pub struct Store {
    conn: Mutex<Connection>,
}

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 128;
/// SQLite's page cache for the hub's connection, in KiB (a negative `cache_size`). The
/// default of 2000 KiB holds a few hundred pages: a fleet-wide change walks every instance
/// row, every task and their indexes (about 14 MB at 10,000 devices), so most pages were
/// read again from the file, a system call and a copy each, on every pass. The cache only
/// grows as pages are read.
const PAGE_CACHE_KIB: i64 = 64 * 1024;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterCounts {
    pub instances: i64,
    pub running_tasks: i64,
    pub pending_tasks: i64,
    pub active_services: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub name: String,
    pub status: String,
    /// ECS tag list as JSON text.
    pub tags: String,
    pub created_at: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TaskDefinition {
    pub family: String,
    pub revision: i64,
    pub status: String,
    /// The registered definition as JSON text, without the fields the hub adds.
    pub body: String,
    pub tags: String,
    pub registered_at: f64,
    pub deregistered_at: Option<f64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Activation {
    pub id: String,
    pub description: Option<String>,
    pub default_instance_name: Option<String>,
    pub iam_role: String,
    pub registration_limit: i64,
    pub registrations_count: i64,
    pub expires_at: f64,
    pub created_at: f64,
    pub tags: String,
}

/// An activation code as stored: SHA-256 over salt then code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeHash {
    pub salt: Vec<u8>,
    pub hash: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Asc,
    Desc,
}

/// Which activations DescribeActivations wants; empty lists do not filter.
#[derive(Debug, Default)]
pub struct ActivationFilter {
    pub ids: Vec<String>,
    pub default_instance_names: Vec<String>,
    pub iam_roles: Vec<String>,
}

impl Store {
    /// Opens (creating if needed) `DIR/hub.db` and brings its schema up to date.
    /// The directory is made (or tightened to) 0700 and the database 0600: they hold the CA's
    /// key and every device's state, for the hub's user only. SQLite gives its WAL files the
    /// database's mode.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
        let dir_err = |source| StoreError::CreateDir {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| StoreError::Private {
                path: dir.to_path_buf(),
                source,
            },
        )?;
        let path = dir.join("hub.db");
        let file_err = |source| StoreError::Private {
            path: path.clone(),
            source,
        };
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(file_err)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(file_err)?;
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let mut conn = Connection::open(&path).map_err(open_err)?;
        // WAL lets readers proceed during a write and survives a crash mid-commit.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(open_err)?;
        // NORMAL in WAL mode: a commit is durable once the hub process has it (a hub that
        // is killed loses nothing), but is fsynced at the next checkpoint, not at commit, so
        // a power cut on the hub's host can lose the last transactions, device messages the
        // broker has been told were taken among them. FULL would fsync every commit (every
        // ingest batch).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(open_err)?;
        // rusqlite keeps 16 prepared statements by default; the link's ingest, the publisher
        // and the service loop use more than that between them, and a statement evicted is
        // parsed and planned again on its next use.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        // A stable plan, whatever the values bound. Without it SQLite (built with STAT4, as
        // the bundled one is) marks a statement whose plan could depend on a bound value,
        // and clearing that statement's bindings, as the statement cache does each time it
        // takes one back, expires it: every use of such a cached statement was parsed and
        // planned again. The hub keeps no statistics for a value-dependent plan to use.
        conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)
            .map_err(open_err)?;
        conn.pragma_update(None, "cache_size", -PAGE_CACHE_KIB)
            .map_err(open_err)?;
        migrate(&mut conn, &path)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>, StoreError> {
        self.conn.lock().map_err(|_| StoreError::Poisoned)
    }

    pub fn schema_version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()?
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))?)
    }

    // ---- clusters

    /// Creates the cluster, or reactivates an INACTIVE one; an ACTIVE one is returned as is.
    pub fn create_cluster(&self, name: &str, tags: &str, now: f64) -> Result<Cluster, StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "INSERT INTO clusters (name, status, tags, created_at) VALUES (?1, 'ACTIVE', ?2, ?3)
             ON CONFLICT (name) DO UPDATE SET status = 'ACTIVE', tags = ?2, created_at = ?3
             WHERE status <> 'ACTIVE'",
            params![name, tags, now],
        )?;
        get_cluster(&conn, name)?.ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    pub fn cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        get_cluster(&*self.conn()?, name)
    }

    /// Names of ACTIVE clusters after `after`, in name order.
    pub fn list_clusters(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.conn()?;
        let mut stmt = conn.prepare(
            "SELECT name FROM clusters WHERE status = 'ACTIVE' AND (?1 IS NULL OR name > ?1)
             ORDER BY name LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], |r| r.get(0))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks an ACTIVE cluster INACTIVE; `None` if there is no ACTIVE cluster by that name.
    /// What DescribeClusters counts: ACTIVE instances, tasks RUNNING and PENDING by their
    /// reported status, ACTIVE services.
    pub fn cluster_counts(&self, name: &str) -> Result<ClusterCounts, StoreError> {
        let conn = self.conn()?;
        let count = |sql: &str| -> Result<i64, StoreError> {
            Ok(conn.query_row(sql, params![name], |r| r.get(0))?)
        };
        Ok(ClusterCounts {
            instances: count(
                "SELECT COUNT(*) FROM container_instances WHERE cluster = ?1 AND status = 'ACTIVE'",
            )?,
            running_tasks: count(
                "SELECT COUNT(*) FROM tasks WHERE cluster = ?1 AND last_status = 'RUNNING'",
            )?,
            pending_tasks: count(
                "SELECT COUNT(*) FROM tasks WHERE cluster = ?1
                 AND last_status IN ('PROVISIONING', 'PENDING', 'ACTIVATING')",
            )?,
            active_services: count(
                "SELECT COUNT(*) FROM services WHERE cluster = ?1 AND status = 'ACTIVE'",
            )?,
        })
    }

    pub fn delete_cluster(&self, name: &str) -> Result<Option<Cluster>, StoreError> {
        let conn = self.conn()?;
        let n = conn.execute(
            "UPDATE clusters SET status = 'INACTIVE' WHERE name = ?1 AND status = 'ACTIVE'",
            params![name],
        )?;
        if n == 0 {
            return Ok(None);
        }
        get_cluster(&conn, name)
    }

    // ---- task definitions

    /// Stores the next revision of `family`. Revisions are never reused, not even after
    /// deregistration, as in ECS.
    pub fn register_task_definition(
        &self,
        family: &str,
        body: &str,
        tags: &str,
        now: f64,
    ) -> Result<TaskDefinition, StoreError> {
        let mut conn = self.conn()?;
        let tx = conn.transaction()?;
        let revision: i64 = tx.query_row(
            "SELECT COALESCE(MAX(revision), 0) + 1 FROM task_definitions WHERE family = ?1",
            params![family],
            |r| r.get(0),
        )?;
        tx.execute(
            "INSERT INTO task_definitions (family, revision, status, body, tags, registered_at)
             VALUES (?1, ?2, 'ACTIVE', ?3, ?4, ?5)",
            params![family, revision, body, tags, now],
        )?;
        tx.commit()?;
        get_task_definition(&conn, family, revision)?
            .ok_or(StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// One revision, or with `revision` `None` the latest ACTIVE one.
    pub fn task_definition(
        &self,
        family: &str,
        revision: Option<i64>,
    ) -> Result<Option<TaskDefinition>, StoreError> {
        let conn = self.conn()?;
        let revision = match revision {
            Some(r) => r,
            None => {
                let latest: Option<i64> = conn
                    .query_row(
                        "SELECT MAX(revision) FROM task_definitions
                         WHERE family = ?1 AND status = 'ACTIVE'",
                        params![family],
                        |r| r.get(0),
                    )
                    .optional()?
                    .flatten();
                match latest {
                    Some(r) => r,
                    None => return Ok(None),
                }
            }
        };
        get_task_definition(&conn, family, revision)
    }

    /// (family, revision) pairs with `status`, optionally of one family, after `after` in
    /// the given order.
    pub fn list_task_definitions(
        &self,
        family: Option<&str>,
        status: &str,
        order: Order,
        after: Option<(&str, i64)>,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let conn = self.conn()?;
        let sql = match order {
            Order::Asc => {
                "SELECT family, revision FROM task_definitions
                 WHERE status = ?1 AND (?2 IS NULL OR family = ?2)
                   AND (?3 IS NULL OR (family, revision) > (?3, ?4))
                 ORDER BY family ASC, revision ASC LIMIT ?5"
            }
            Order::Desc => {
                "SELECT family, revision FROM task_definitions
                 WHERE status = ?1 AND (?2 IS NULL OR family = ?2)
                   AND (?3 IS NULL OR (family, revision) < (?3, ?4))
                 ORDER BY family DESC, revision DESC LIMIT ?5"
            }
        };
        let (after_family, after_rev) = match after {
            Some((f, r)) => (Some(f), r),
            None => (None, 0),
        };
        let mut stmt = conn.prepare(sql)?;
        let rows = stmt.query_map(
            params![status, family, after_family, after_rev, limit as i64],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Marks a revision INACTIVE (once; later calls keep the first time); `None` if absent.
    pub fn deregister_task_definition(
        &self,
        family: &str,
        revision: i64,
        now: f64,
    ) -> Result<Option<TaskDefinition>, StoreError> {
        let conn = self.conn()?;
        conn.execute(
            "UPDATE task_definitions SET status = 'INACTIVE', deregistered_at = ?3
             WHERE family = ?1 AND revision = ?2 AND status = 'ACTIVE'",
            params![family, revision, now],
        )?;
        get_task_definition(&conn, family, revision)
    }

    // ---- activations

    pub fn create_activation(
        &self,
        a: &Activation,
        code_salt: &[u8],
        code_hash: &[u8],
    ) -> Result<(), StoreError> {
        self.conn()?.execute(
            "INSERT INTO activations (id, code_salt, code_hash, description,
                 default_instance_name, iam_role, registration_limit, registrations_count,
                 expires_at, created_at, tags)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                a.id,
                code_salt,
                code_hash,
                a.description,
                a.default_instance_name,
                a.iam_role,
                a.registration_limit,
                a.registrations_count,
                a.expires_at,
                a.created_at,
                a.tags
            ],
        )?;
        Ok(())
    }

    /// Activations matching `filter` with ids after `after`, in id order.
    pub fn activations(
        &self,
        filter: &ActivationFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Activation>, StoreError> {
        let mut sql = String::from(
            "SELECT id, description, default_instance_name, iam_role, registration_limit,
                    registrations_count, expires_at, created_at, tags
             FROM activations WHERE 1 = 1",
        );
        let mut args: Vec<String> = Vec::new();
        for (column, values) in [
            ("id", &filter.ids),
            ("default_instance_name", &filter.default_instance_names),
            ("iam_role", &filter.iam_roles),
        ] {
            if values.is_empty() {
                continue;
            }
            let marks = vec!["?"; values.len()].join(", ");
            sql.push_str(&format!(" AND {column} IN ({marks})"));
            args.extend(values.iter().cloned());
        }
        if let Some(after) = after {
            sql.push_str(" AND id > ?");
            args.push(after.to_string());
        }
        sql.push_str(&format!(" ORDER BY id LIMIT {limit}"));
        let conn = self.conn()?;
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(params_from_iter(args.iter()), |r| {
            Ok(Activation {
                id: r.get(0)?,
                description: r.get(1)?,
                default_instance_name: r.get(2)?,
                iam_role: r.get(3)?,
                registration_limit: r.get(4)?,
                registrations_count: r.get(5)?,
                expires_at: r.get(6)?,
                created_at: r.get(7)?,
                tags: r.get(8)?,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// The salt and hash stored for an activation's code, for the registration check.
    pub fn activation_code_hash(&self, id: &str) -> Result<Option<CodeHash>, StoreError> {
        Ok(self
            .conn()?
            .query_row(
                "SELECT code_salt, code_hash FROM activations WHERE id = ?1",
                params![id],
                |r| {
                    Ok(CodeHash {
                        salt: r.get(0)?,
                        hash: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Whether an activation by that id existed.
    pub fn delete_activation(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn()?
            .execute("DELETE FROM activations WHERE id = ?1", params![id])?
            > 0)
    }
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let open_err = |source| StoreError::Open {
        path: path.to_path_buf(),
        source,
    };
    let tx = conn.transaction().map_err(open_err)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             id INTEGER PRIMARY KEY CHECK (id = 1),
             version INTEGER NOT NULL
         );
         INSERT OR IGNORE INTO schema_version (id, version) VALUES (1, 0);",
    )
    .map_err(open_err)?;
    let found: i64 = tx
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .map_err(open_err)?;
    let known = MIGRATIONS.len() as i64;
    if found > known {
        return Err(StoreError::TooNew {
            path: path.to_path_buf(),
            found,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        tx.execute_batch(sql).map_err(open_err)?;
        tx.execute(
            "UPDATE schema_version SET version = ?1",
            params![i as i64 + 1],
        )
        .map_err(open_err)?;
    }
    tx.commit().map_err(open_err)
}

fn get_cluster(conn: &Connection, name: &str) -> Result<Option<Cluster>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT name, status, tags, created_at FROM clusters WHERE name = ?1",
            params![name],
            |r| {
                Ok(Cluster {
                    name: r.get(0)?,
                    status: r.get(1)?,
                    tags: r.get(2)?,
                    created_at: r.get(3)?,
                })
            },
        )
        .optional()?)
}

fn get_task_definition(
    conn: &Connection,
    family: &str,
    revision: i64,
) -> Result<Option<TaskDefinition>, StoreError> {
    Ok(conn
        .query_row(
            "SELECT family, revision, status, body, tags, registered_at, deregistered_at
             FROM task_definitions WHERE family = ?1 AND revision = ?2",
            params![family, revision],
            |r| {
                Ok(TaskDefinition {
                    family: r.get(0)?,
                    revision: r.get(1)?,
                    status: r.get(2)?,
                    body: r.get(3)?,
                    tags: r.get(4)?,
                    registered_at: r.get(5)?,
                    deregistered_at: r.get(6)?,
                })
            },
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_data_directory_and_database_are_the_hubs_alone() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        let fresh = tmp.path().join("new/state");
        Store::open(&fresh).expect("open");
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join("hub.db")), 0o600);
        // An older hub's world-readable ones are tightened.
        let old = tmp.path().join("old");
        std::fs::create_dir(&old).expect("mkdir");
        std::fs::write(old.join("hub.db"), b"").expect("db");
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(old.join("hub.db"), std::fs::Permissions::from_mode(0o644))
            .expect("chmod");
        Store::open(&old).expect("open");
        assert_eq!(mode(&old), 0o700);
        assert_eq!(mode(&old.join("hub.db")), 0o600);
        for wal in ["hub.db-wal", "hub.db-shm"] {
            if old.join(wal).exists() {
                assert_eq!(mode(&old.join(wal)), 0o600, "{wal}");
            }
        }
    }

    #[test]
    fn migrations_apply_once_and_state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            assert_eq!(
                s.schema_version().expect("version"),
                MIGRATIONS.len() as i64
            );
            s.create_cluster("edge", "[]", 1.0).expect("create");
            s.register_task_definition("web", "{}", "[]", 2.0)
                .expect("register");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            s.schema_version().expect("version"),
            MIGRATIONS.len() as i64
        );
        assert_eq!(s.list_clusters(None, 10).expect("list"), vec!["edge"]);
        assert!(s.task_definition("web", None).expect("get").is_some());
    }

    /// The migration that mends a generation an earlier hub let a device push past
    /// `i64::MAX`, run on such a row (directly: rewinding the schema version would rerun
    /// every later migration too).
    #[test]
    fn an_overflowed_generation_is_mended_on_upgrade() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fix = MIGRATIONS
            .iter()
            .find(|m| m.contains("SET generation = 4503599627370496"))
            .expect("the migration");
        let s = Store::open(dir.path()).expect("open");
        s.create_cluster("edge", "[]", 1.0).expect("cluster");
        let conn = s.conn().expect("conn");
        conn.execute_batch(
            "INSERT INTO container_instances (id, arn, cluster, activation_id, hostname,
                 architecture, agent_version, cpu_units, memory_mib, attributes, cert_serial,
                 status, agent_connected, generation, applied_generation, registered_at)
             VALUES ('mi-1', 'arn:1', 'edge', 'a', 'h', 'arm64', '0', 1, 1, '{}', '01',
                 'ACTIVE', 1, 9223372036854775807, 9223372036854775807, 1.0);
             UPDATE container_instances SET generation = generation + 1;",
        )
        .expect("an overflowed row");
        drop(conn);
        assert!(
            s.link_state("mi-1").is_err(),
            "the overflow made the row unreadable"
        );
        s.conn().expect("conn").execute_batch(fix).expect("migrate");
        let link = s.link_state("mi-1").expect("readable").expect("row");
        assert_eq!(link.generation, 1 << 52);
    }

    /// Each use of a cached statement runs the plan made once: a fleet-wide change runs the
    /// document statement once per instance, and planning it again each time took seven
    /// times as long as running it.
    #[test]
    fn a_cached_statement_is_not_planned_again_on_each_use() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        for id in ["mi-1", "mi-2", "mi-3"] {
            s.document_rows_many(&[id.to_string()]).expect("rows");
        }
        let conn = s.conn().expect("conn");
        let stmt = conn.prepare_cached(links::DOCUMENT_PARTS).expect("cached");
        assert_eq!(
            stmt.get_status(rusqlite::StatementStatus::RePrepare),
            0,
            "the document statement was prepared again on reuse"
        );
    }

    #[test]
    fn a_failed_attempt_rolls_back_only_its_own_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let ((), written) = s
            .write(|tx| -> Result<(), StoreError> {
                tx.tx.execute(
                    "INSERT INTO clusters (name, status, tags, created_at)
                     VALUES ('kept', 'ACTIVE', '[]', 1)",
                    [],
                )?;
                let failed = tx.attempt(|tx| -> Result<(), StoreError> {
                    tx.tx.execute(
                        "INSERT INTO clusters (name, status, tags, created_at)
                         VALUES ('undone', 'ACTIVE', '[]', 1)",
                        [],
                    )?;
                    tx.touched.insert("mi-undone".into());
                    Err(StoreError::Poisoned)
                });
                assert!(matches!(failed, Err(StoreError::Poisoned)));
                tx.attempt(|tx| -> Result<(), StoreError> {
                    tx.tx.execute(
                        "INSERT INTO clusters (name, status, tags, created_at)
                         VALUES ('also', 'ACTIVE', '[]', 1)",
                        [],
                    )?;
                    tx.touched.insert("mi-also".into());
                    Ok(())
                })
            })
            .expect("write");
        assert_eq!(
            s.list_clusters(None, 10).expect("list"),
            vec!["also", "kept"]
        );
        assert_eq!(
            written.instances.into_iter().collect::<Vec<_>>(),
            vec!["mi-also"]
        );
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("open"));
        let conn = Connection::open(dir.path().join("hub.db")).expect("raw open");
        conn.execute("UPDATE schema_version SET version = 99", [])
            .expect("bump");
        drop(conn);
        let err = Store::open(dir.path()).err().expect("too new");
        assert!(matches!(err, StoreError::TooNew { found: 99, .. }), "{err}");
    }

    #[test]
    fn revisions_are_not_reused_after_deregistration() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        assert_eq!(
            s.register_task_definition("a", "{}", "[]", 1.0)
                .expect("r1")
                .revision,
            1
        );
        assert_eq!(
            s.register_task_definition("a", "{}", "[]", 1.0)
                .expect("r2")
                .revision,
            2
        );
        let d = s
            .deregister_task_definition("a", 2, 3.0)
            .expect("dereg")
            .expect("exists");
        assert_eq!(
            (d.status.as_str(), d.deregistered_at),
            ("INACTIVE", Some(3.0))
        );
        assert_eq!(
            s.task_definition("a", None)
                .expect("latest")
                .expect("r1")
                .revision,
            1
        );
        assert_eq!(
            s.register_task_definition("a", "{}", "[]", 1.0)
                .expect("r3")
                .revision,
            3
        );
    }

    #[test]
    fn task_definition_pages_in_both_orders() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        for f in ["b", "a", "b"] {
            s.register_task_definition(f, "{}", "[]", 1.0)
                .expect("register");
        }
        let asc = s
            .list_task_definitions(None, "ACTIVE", Order::Asc, None, 2)
            .expect("asc");
        assert_eq!(asc, vec![("a".into(), 1), ("b".into(), 1)]);
        let rest = s
            .list_task_definitions(None, "ACTIVE", Order::Asc, Some(("b", 1)), 2)
            .expect("page 2");
        assert_eq!(rest, vec![("b".into(), 2)]);
        let desc = s
            .list_task_definitions(Some("b"), "ACTIVE", Order::Desc, None, 10)
            .expect("desc");
        assert_eq!(desc, vec![("b".into(), 2), ("b".into(), 1)]);
    }
}
