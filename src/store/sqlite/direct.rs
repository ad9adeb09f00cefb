//! The direct writer: the one connection this process writes the state database through
//! (rusqlite), used synchronously on the caller's thread when it can be. The write on the engine's
//! critical path, [`Store::commit`] (every attempt start and end goes through it), is why.
//!
//! Why not sqlx for writes: sqlx runs each connection on a worker thread, so every write is a
//! message there and rows and a wake-up back, two cross-thread hops that cost more than SQLite's
//! own work for these small transactions (measured in `bench/README.md`). SQLite is fast enough to
//! call inline: a chain job's transaction takes about 50–100 µs here (file locks and WAL writes).
//! Writes that grow with a run (creating it, a new round, its verdict) and the prune and vacuum
//! go to the blocking pool at once ([`DirectWriter::run_blocking`]).
//!
//! How it never stalls the async runtime for long:
//! - callers take the connection in turn, through an async FIFO mutex, so a write waiting for it
//!   blocks no thread and writes are made in the order they were asked for;
//! - the fast path then runs the transaction with a busy timeout of zero, so it either gets
//!   SQLite's write lock at once or gives up with nothing written;
//! - the slow path, taken when the write lock is busy (another process holds it), runs the
//!   same transaction on tokio's blocking pool and waits for the lock with the normal busy timeout.
//!   It keeps the connection until it is done, even if its caller stops waiting (a cancelled
//!   call): the write is then made or not as a whole, and before any later one.
//!
//! Either way a transaction that fails is rolled back before the connection is used again; a
//! connection left inside a transaction (a failed rollback) is closed and reopened on next use.
//!
//! [`Store::commit`]: super::Store::commit

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};
use tokio::sync::Mutex;

use super::{Durability, StoreError, closed};

/// The connection, opened lazily again after it had to be dropped.
#[derive(Debug)]
pub(in crate::store) struct DirectWriter {
    slot: Arc<Mutex<Slot>>,
    path: PathBuf,
    durability: Durability,
    busy_timeout: Duration,
}

#[derive(Debug)]
struct Slot {
    conn: Option<Connection>,
    /// Set by [`DirectWriter::close`]: no reopening after that.
    closed: bool,
}

/// How one try at a write went wrong.
#[derive(Debug)]
enum Failure {
    /// The write lock was busy and nothing was written: wait for it on the slow path.
    Busy(rusqlite::Error),
    Failed(StoreError),
}

impl DirectWriter {
    pub(in crate::store) fn new(
        path: &Path,
        durability: Durability,
        busy_timeout: Duration,
    ) -> DirectWriter {
        DirectWriter {
            slot: Arc::new(Mutex::new(Slot {
                conn: None,
                closed: false,
            })),
            path: path.to_owned(),
            durability,
            busy_timeout,
        }
    }

    /// Runs `write` on this thread once the connection is free, if SQLite's write lock is free
    /// too, else on the blocking pool, waiting for it. `write` must do all its work inside one
    /// [`Immediate`] transaction, so that an error saying the database is busy means nothing was
    /// written.
    pub(in crate::store) async fn run<T, F>(
        self: &Arc<Self>,
        context: &'static str,
        write: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let mut slot = Arc::clone(&self.slot).lock_owned().await;
        match self.attempt(&mut slot, context, Duration::ZERO, &write) {
            Ok(value) => return Ok(value),
            Err(Failure::Failed(error)) => return Err(error),
            Err(Failure::Busy(_)) => {}
        }
        self.slow(slot, context, write).await
    }

    /// Runs `write` on the blocking pool once the connection is free, waiting for SQLite's write
    /// lock with the busy timeout: for the long writes (a prune, a vacuum) that must not hold up
    /// the async runtime's thread even when the lock is free.
    pub(in crate::store) async fn run_blocking<T, F>(
        self: &Arc<Self>,
        context: &'static str,
        write: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let slot = Arc::clone(&self.slot).lock_owned().await;
        self.slow(slot, context, write).await
    }

    /// The slow path: `write` on the blocking pool, keeping the connection until it is done.
    async fn slow<T, F>(
        self: &Arc<Self>,
        mut slot: tokio::sync::OwnedMutexGuard<Slot>,
        context: &'static str,
        write: F,
    ) -> Result<T, StoreError>
    where
        F: Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let this = Arc::clone(self);
        let slow = tokio::task::spawn_blocking(move || {
            match this.attempt(&mut slot, context, this.busy_timeout, &write) {
                Ok(value) => Ok(value),
                Err(Failure::Failed(error)) => Err(error),
                Err(Failure::Busy(source)) => Err(StoreError::Direct { context, source }),
            }
        });
        match slow.await {
            Ok(result) => result,
            Err(join) if join.is_panic() => std::panic::resume_unwind(join.into_panic()),
            Err(_) => Err(closed(context)),
        }
    }

    /// Closes the connection (after the write in progress, if any); later writes fail.
    pub(in crate::store) async fn close(&self) {
        let mut slot = self.slot.lock().await;
        slot.closed = true;
        slot.conn = None;
    }

    fn attempt<T>(
        &self,
        slot: &mut Slot,
        context: &'static str,
        busy_timeout: Duration,
        write: &impl Fn(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, Failure> {
        if slot.closed {
            return Err(Failure::Failed(closed(context)));
        }
        let conn = match &mut slot.conn {
            Some(conn) => conn,
            empty => empty.insert(
                self.open()
                    .map_err(|e| Failure::Failed(self.error(context, e)))?,
            ),
        };
        let result = conn.busy_timeout(busy_timeout).and_then(|()| write(conn));
        if !conn.is_autocommit() {
            // A rollback that failed: never reuse a connection stuck in a transaction.
            slot.conn = None;
        }
        result.map_err(|source| match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => Failure::Busy(source),
            _ => Failure::Failed(self.error(context, source)),
        })
    }

    fn open(&self) -> rusqlite::Result<Connection> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(
            None,
            "synchronous",
            match self.durability {
                Durability::Normal => "NORMAL",
                Durability::Full => "FULL",
            },
        )?;
        Ok(conn)
    }

    /// Maps a rusqlite error; SQLite reporting a damaged file becomes [`StoreError::Corrupt`].
    fn error(&self, context: &'static str, source: rusqlite::Error) -> StoreError {
        match source.sqlite_error_code() {
            Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => StoreError::Corrupt {
                path: self.path.clone(),
                detail: source.to_string(),
            },
            _ => StoreError::Direct { context, source },
        }
    }
}

/// A `BEGIN IMMEDIATE` transaction, the kind a write passed to [`DirectWriter::run`] must do its
/// work in: it takes the write lock up front, so the only places the database can be busy are its
/// start and its COMMIT, and in both cases nothing was written. Dropped without a commit, it rolls
/// back. (rusqlite's own transaction prepares its BEGIN and COMMIT anew every time; these stay
/// prepared, which is measurable at one transaction per attempt.)
pub(in crate::store) struct Immediate<'c> {
    conn: &'c Connection,
}

impl<'c> Immediate<'c> {
    pub(in crate::store) fn begin(conn: &'c Connection) -> rusqlite::Result<Immediate<'c>> {
        conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        Ok(Immediate { conn })
    }

    pub(in crate::store) fn commit(self) -> rusqlite::Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
}

impl std::ops::Deref for Immediate<'_> {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Immediate<'_> {
    fn drop(&mut self) {
        if !self.conn.is_autocommit() {
            // If this fails too, the connection is still in the transaction and
            // `DirectWriter::attempt` drops it.
            let _ = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut rollback| rollback.execute([]));
        }
    }
}
