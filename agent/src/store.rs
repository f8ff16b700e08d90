//! The agent's crash-safe state on the data partition: the desired-state document and one
//! record per task. redb was chosen because it is pure Rust (nothing to cross-compile for a
//! static musl binary), ACID with copy-on-write pages and checksummed commits (a power cut
//! leaves the last committed state), and one file. A document is committed here before the
//! reconciler acts on it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const DESIRED_KEY: &str = "desired";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("state store {path}: {message}")]
    Db { path: PathBuf, message: String },
    #[error("state store {path}: record {key:?} is unreadable: {source}")]
    Decode {
        path: PathBuf,
        key: String,
        source: serde_json::Error,
    },
}

#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    path: PathBuf,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.into(),
            message: e.to_string(),
        };
        let db = Database::create(path).map_err(|e| err(&e))?;
        // Create the tables once so readers never meet a missing one.
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(META).map_err(|e| err(&e))?;
        tx.open_table(TASKS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        Ok(Self {
            db: Arc::new(db),
            path: path.into(),
        })
    }

    fn err(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Db {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }

    pub fn desired<T: DeserializeOwned>(&self) -> Result<Option<T>, StoreError> {
        self.get(META, DESIRED_KEY)
    }

    pub fn set_desired<T: Serialize>(&self, doc: &T) -> Result<(), StoreError> {
        self.put(META, DESIRED_KEY, doc, Durability::Immediate)
    }

    pub fn tasks<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let table = tx.open_table(TASKS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in table.iter().map_err(|e| self.err(e))? {
            let (k, v) = row.map_err(|e| self.err(e))?;
            out.push(self.decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn put_task<T: Serialize>(&self, task_arn: &str, record: &T) -> Result<(), StoreError> {
        self.put(TASKS, task_arn, record, Durability::Immediate)
    }

    /// Like [`Store::put_task`], without waiting for the disk: a crash may lose this record
    /// (never the store's consistency) until the next immediate commit. For progress that
    /// the agent re-derives from containerd on restart, so starting a task does not cost
    /// an fsync per step on an SD card.
    pub fn put_task_lazily<T: Serialize>(
        &self,
        task_arn: &str,
        record: &T,
    ) -> Result<(), StoreError> {
        self.put(TASKS, task_arn, record, Durability::Eventual)
    }

    pub fn remove_task(&self, task_arn: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.open_table(TASKS)
            .map_err(|e| self.err(e))?
            .remove(task_arn)
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = tx.open_table(table).map_err(|e| self.err(e))?;
        match t.get(key).map_err(|e| self.err(e))? {
            Some(v) => Ok(Some(self.decode(key, v.value())?)),
            None => Ok(None),
        }
    }

    fn put<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            key: key.into(),
            source,
        })?;
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability);
        tx.open_table(table)
            .map_err(|e| self.err(e))?
            .insert(key, bytes.as_slice())
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
            path: self.path.clone(),
            key: key.into(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        {
            let s = Store::open(&path).expect("open");
            s.set_desired(&serde_json::json!({"generation": 7}))
                .expect("put");
            s.put_task("arn:a", &serde_json::json!({"n": 1}))
                .expect("put");
            s.put_task("arn:b", &serde_json::json!({"n": 2}))
                .expect("put");
            s.remove_task("arn:a").expect("remove");
        }
        let s = Store::open(&path).expect("reopen");
        let d: serde_json::Value = s.desired().expect("get").expect("present");
        assert_eq!(d["generation"], 7);
        let tasks: Vec<serde_json::Value> = s.tasks().expect("tasks");
        assert_eq!(tasks, vec![serde_json::json!({"n": 2})]);
    }

    #[test]
    fn empty_store_has_no_desired_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.redb")).expect("open");
        assert!(s.desired::<serde_json::Value>().expect("get").is_none());
    }
}
