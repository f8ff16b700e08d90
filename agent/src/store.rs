//! The agent's crash-safe state on the data partition: the desired-state document and one
//! record per task. redb was chosen because it is pure Rust (nothing to cross-compile for a
//! static musl binary), ACID with copy-on-write pages and checksummed commits (a power cut
//! leaves the last committed state), and one file. A document is committed here before the
//! reconciler acts on it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const DESIRED_KEY: &str = "desired";
/// How long opening waits for another holder of the file's lock to let go.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// redb's page cache (default 1 GiB) keeps every page it reads or writes, so it grows with
/// the file, and a new database keeps the ~0.5 MiB of allocator pages it writes at creation.
/// The records are a few KiB per task, read once at start; commits need only a B-tree path.
const CACHE_BYTES: usize = 256 * 1024;

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
    inner: Arc<Inner>,
}

struct Inner {
    /// None only while it is being reopened.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// redb refuses every transaction after one failed write ("previous I/O error", e.g. a
    /// full disk) until the database is opened again; the next operation does that.
    poisoned: AtomicBool,
}

/// The open database, held for one operation: a reopen waits until it is dropped.
struct Db<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for Db<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("a Db is only made of an open database")
    }
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Self::open_db(path)?;
        Ok(Self {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(db)),
                path: path.into(),
                poisoned: AtomicBool::new(false),
            }),
        })
    }

    fn open_db(path: &Path) -> Result<Database, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.into(),
            message: e.to_string(),
        };
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let db = loop {
            match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
                // A process killed while spawning a child (a CNI plugin) leaves the child
                // holding the file's lock until it has exec'ed: wait that out.
                Err(redb::DatabaseError::DatabaseAlreadyOpen)
                    if std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => break r.map_err(|e| err(&e))?,
            }
        };
        // Create the tables once so readers never meet a missing one.
        let tx = db.begin_write().map_err(|e| err(&e))?;
        tx.open_table(META).map_err(|e| err(&e))?;
        tx.open_table(TASKS).map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))?;
        Ok(db)
    }

    /// The database, opened again first if an I/O error poisoned it. The guard keeps a
    /// reopen from closing it under a transaction.
    fn db(&self) -> Result<Db<'_>, StoreError> {
        if self.inner.poisoned.load(Ordering::Acquire) {
            let mut w = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
            if self.inner.poisoned.load(Ordering::Acquire) {
                // redb allows one open handle per file: the old one goes first.
                drop(w.take());
                *w = Some(Self::open_db(&self.inner.path)?);
                self.inner.poisoned.store(false, Ordering::Release);
                tracing::info!(path = %self.inner.path.display(), "state store reopened after an I/O error");
            }
        }
        let r = self.inner.db.read().unwrap_or_else(|p| p.into_inner());
        if r.is_none() {
            return Err(self.err(redb::Error::PreviousIo));
        }
        Ok(Db(r))
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        let e: redb::Error = e.into();
        if matches!(e, redb::Error::PreviousIo) {
            self.inner.poisoned.store(true, Ordering::Release);
        }
        StoreError::Db {
            path: self.inner.path.clone(),
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
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
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
        let db = self.db()?;
        let tx = db.begin_write().map_err(|e| self.err(e))?;
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
        let db = self.db()?;
        let tx = db.begin_read().map_err(|e| self.err(e))?;
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
            path: self.inner.path.clone(),
            key: key.into(),
            source,
        })?;
        let db = self.db()?;
        let mut tx = db.begin_write().map_err(|e| self.err(e))?;
        tx.set_durability(durability);
        tx.open_table(table)
            .map_err(|e| self.err(e))?
            .insert(key, bytes.as_slice())
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    fn decode<T: DeserializeOwned>(&self, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
            path: self.inner.path.clone(),
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
    fn open_waits_for_a_lock_another_holder_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let first = Store::open(&path).expect("open");
        let holder = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(first);
        });
        let second = Store::open(&path).expect("opens once the first lets go");
        holder.join().expect("holder thread");
        assert!(second
            .desired::<serde_json::Value>()
            .expect("get")
            .is_none());
    }

    #[test]
    fn empty_store_has_no_desired_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.redb")).expect("open");
        assert!(s.desired::<serde_json::Value>().expect("get").is_none());
    }
}
