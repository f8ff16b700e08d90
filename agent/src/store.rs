//! The agent's crash-safe state on the data partition: the desired-state document and one
//! record per task. redb was chosen because it is pure Rust (nothing to cross-compile for a
//! static musl binary), ACID with copy-on-write pages and checksummed commits (a power cut
//! leaves the last committed state), and one file. A document is committed here before the
//! reconciler acts on it.
//!
//! The file is open only while the agent uses it: redb 2 keeps its allocator state in
//! memory while a file is open, about 0.6 MiB whatever the file's size, and a device
//! running its tasks writes here only when one of them changes state. After
//! [`IDLE_CLOSE`] unused the database is closed (which commits that state, one fsync), and
//! the next operation opens it again (a cleanly closed file opens without a repair).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, TryLockError, Weak};
use std::time::{Duration, Instant};

use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::{de::DeserializeOwned, Serialize};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const TASKS: TableDefinition<&str, &[u8]> = TableDefinition::new("tasks");
const DESIRED_KEY: &str = "desired";
/// How long opening waits for another holder of the file's lock to let go.
const LOCK_WAIT: Duration = Duration::from_secs(10);
/// redb's page cache (default 1 GiB) keeps every page it reads or writes, so it grows with
/// the file, and a new database keeps the ~0.5 MiB of allocator pages it writes at creation.
/// The records are a few KiB per task, read once at start; commits need only a B-tree path.
const CACHE_BYTES: usize = 256 * 1024;
/// How long the database stays open after its last use. Long enough that a task starting
/// or an apply (a few commits within a second or two) opens it once.
pub const IDLE_CLOSE: Duration = Duration::from_secs(10);

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
    /// None while closed (idle, or a reopen failed): the next operation opens it.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    /// redb refuses every transaction after one failed write ("previous I/O error", e.g. a
    /// full disk) until the database is opened again; the next operation does that.
    poisoned: AtomicBool,
    /// The last operation's start, in milliseconds since `epoch`.
    last_use: AtomicU64,
    epoch: Instant,
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
        let store = Self {
            inner: Arc::new(Inner {
                db: RwLock::new(Some(Self::open_db(path)?)),
                path: path.into(),
                poisoned: AtomicBool::new(false),
                last_use: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        };
        // Create the tables once so readers never meet a missing one.
        let db = store.db()?;
        let tx = db.begin_write().map_err(|e| store.err(e))?;
        tx.open_table(META).map_err(|e| store.err(e))?;
        tx.open_table(TASKS).map_err(|e| store.err(e))?;
        tx.commit().map_err(|e| store.err(e))?;
        drop(db);
        Ok(store)
    }

    fn open_db(path: &Path) -> Result<Database, StoreError> {
        let err = |e: &dyn std::fmt::Display| StoreError::Db {
            path: path.into(),
            message: e.to_string(),
        };
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match Database::builder().set_cache_size(CACHE_BYTES).create(path) {
                // A process killed while spawning a child (a CNI plugin) leaves the child
                // holding the file's lock until it has exec'ed: wait that out.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                r => break r.map_err(|e| err(&e)),
            }
        }
    }

    /// The database, opened first if it is closed or an I/O error poisoned it. The guard
    /// keeps a reopen or an idle close from closing it under a transaction.
    fn db(&self) -> Result<Db<'_>, StoreError> {
        // Before the open, so that an idle close cannot come between the two.
        self.inner.last_use.store(self.now_ms(), Ordering::Release);
        loop {
            let r = self.inner.db.read().unwrap_or_else(|p| p.into_inner());
            if r.is_some() && !self.inner.poisoned.load(Ordering::Acquire) {
                return Ok(Db(r));
            }
            drop(r);
            let mut w = self.inner.db.write().unwrap_or_else(|p| p.into_inner());
            let poisoned = self.inner.poisoned.load(Ordering::Acquire);
            if poisoned {
                // redb allows one open handle per file: the old one goes first.
                drop(w.take());
            }
            if w.is_none() {
                *w = Some(Self::open_db(&self.inner.path)?);
                self.inner.poisoned.store(false, Ordering::Release);
                if poisoned {
                    tracing::info!(path = %self.inner.path.display(), "state store reopened after an I/O error");
                }
            }
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long since the last operation began.
    fn idle_for(&self) -> Duration {
        let last = self.inner.last_use.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Closes the database if no operation began within `idle` and none is running; the
    /// next operation opens it again. Returns whether it closed it.
    pub fn close_if_idle(&self, idle: Duration) -> bool {
        let mut w = match self.inner.db.try_write() {
            Ok(w) => w,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return false,
        };
        if w.is_none() || self.idle_for() < idle {
            return false;
        }
        // Dropping it commits redb's allocator state and syncs the file.
        drop(w.take());
        tracing::debug!(path = %self.inner.path.display(), "state store closed while idle");
        true
    }

    fn is_open(&self) -> bool {
        self.inner
            .db
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Closes the database each time it has been unused for `idle` (the daemon spawns
    /// this with [`IDLE_CLOSE`]). Ends once every other handle to the store is dropped.
    pub fn close_when_idle(&self, idle: Duration) -> impl std::future::Future<Output = ()> {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        async move {
            loop {
                let wait = match weak.upgrade() {
                    None => return,
                    Some(inner) => {
                        let store = Store { inner };
                        if store.close_if_idle(idle) || !store.is_open() {
                            idle
                        } else {
                            // Until it would have been idle long enough.
                            idle.saturating_sub(store.idle_for())
                                .max(Duration::from_millis(100))
                        }
                    }
                };
                tokio::time::sleep(wait).await;
            }
        }
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
    fn an_idle_store_closes_and_the_next_use_opens_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("state.redb");
        let s = Store::open(&path).expect("open");
        s.set_desired(&serde_json::json!({"generation": 3}))
            .expect("put");
        // Not closed while recently used, nor while an operation holds it.
        assert!(!s.close_if_idle(Duration::from_secs(3600)));
        let held = s.db().expect("db");
        assert!(!s.close_if_idle(Duration::ZERO));
        drop(held);
        // A commit that did not wait for the disk is made durable by the close.
        s.put_task_lazily("arn:a", &serde_json::json!({"n": 1}))
            .expect("put");
        assert!(s.close_if_idle(Duration::ZERO));
        assert!(!s.is_open());
        // The file lock went with it: another handle can open the file now.
        let other = Database::create(&path).expect("closed file opens elsewhere");
        let tx = other.begin_read().expect("read");
        let t = tx.open_table(TASKS).expect("table");
        assert!(t.get("arn:a").expect("get").is_some());
        drop((t, tx, other));
        // The next operation opens it again, with everything in it.
        let d: serde_json::Value = s.desired().expect("get").expect("present");
        assert_eq!(d["generation"], 3);
        assert!(s.is_open());
        s.put_task("arn:b", &serde_json::json!({"n": 2}))
            .expect("put");
        assert_eq!(s.tasks::<serde_json::Value>().expect("tasks").len(), 2);
    }

    #[tokio::test]
    async fn the_idle_closer_closes_after_the_last_use_and_ends_with_the_store() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("state.redb")).expect("open");
        let closer = tokio::spawn(s.close_when_idle(Duration::from_secs(1)));
        // Kept open while used more often than the idle time (checked before each use,
        // which would open it again).
        for _ in 0..15 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(s.is_open(), "closed while in use");
            s.put_task("arn:a", &serde_json::json!({"n": 1}))
                .expect("put");
        }
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!s.is_open(), "closed once idle");
        assert!(s.desired::<serde_json::Value>().expect("get").is_none());
        assert!(s.is_open(), "opened by the read");
        drop(s);
        tokio::time::timeout(Duration::from_secs(2), closer)
            .await
            .expect("the closer ends once the store is gone")
            .expect("closer task");
    }

    #[test]
    fn empty_store_has_no_desired_state() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(&dir.path().join("s.redb")).expect("open");
        assert!(s.desired::<serde_json::Value>().expect("get").is_none());
    }
}
