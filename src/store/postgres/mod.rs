//! The state database on PostgreSQL: [`PgStore`], the same public methods as the SQLite store with
//! the same arguments, results and meaning, for a database that several hosts share. This file owns
//! connecting (a sqlx pool, `sslmode` from the URL, the embedded migrations applied first),
//! the errors in the user's terms (host, port and database, never the password), and decoding rows
//! into the shared row types of `store/mod.rs`. What each operation writes is in the submodules,
//! split by mechanism as on the SQLite side; which transitions are allowed stays the engine's.
//!
//! Differences of mechanism, not of meaning: SQLite serialises writers with one file lock
//! (`BEGIN IMMEDIATE`); here every multi-row write is one transaction from the pool, and what SQLite
//! read under its global lock is read under row locks (`FOR UPDATE`, or an `UPDATE ... WHERE` whose
//! condition PostgreSQL checks again on the locked row). Ids come from identity columns with
//! `RETURNING`. Times are `timestamptz`, written with millisecond precision as SQLite keeps them.

mod batch;
mod generations;
mod inventory;
mod leader;
mod outbox;
mod outputs;
mod overlap;
mod pipelines;
pub mod queue;
mod retention;
mod rounds;
mod runs;
#[cfg(test)]
mod tests;
mod workers;

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Postgres, Row};
use time::OffsetDateTime;

use super::StoreError;

/// The embedded migrations (`migrations/postgres/NNNN_name.sql`), applied in order at connect.
/// sqlx records each one with its checksum in `_sqlx_migrations` and refuses a database whose
/// applied migration was edited since; `tests.rs` pins every checksum.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("migrations/postgres");

/// Connections per process: the engine's group commits, the controller's reads and the outbox
/// sender each hold one for a short transaction.
const MAX_CONNECTIONS: u32 = 8;

/// How long a call waits for a free connection, or for the server to answer a connect.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on a PostgreSQL state database; cheap to clone (the pool is shared).
#[derive(Debug, Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// `postgres://USER@HOST:PORT/DATABASE`: how messages name the database (no password).
    target: Arc<str>,
    identity: Arc<str>,
    /// The leader's epoch every write transaction checks first (`leader.rs`), shared by the
    /// clones; `leader::NO_FENCE` for a handle that checks nothing (commands, workers).
    fence: Arc<std::sync::atomic::AtomicI64>,
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/database?sslmode=...`),
    /// applies the migrations it lacks (concurrent connectors are serialised by sqlx's advisory
    /// lock, taken on a connection of its own that is closed afterwards, so the lock never stays
    /// with a pooled connection), and returns the pool. A database with a migration this build
    /// does not know is refused untouched ([`StoreError::NewerSchema`]).
    pub async fn connect(url: &str) -> Result<PgStore, StoreError> {
        let options = PgConnectOptions::from_str(url).map_err(|source| StoreError::Connect {
            database: "(the configured PostgreSQL URL)".to_owned(),
            detail: format!(
                "not a PostgreSQL URL (postgres://user:password@host:port/database): {}",
                crate::config::redact_secrets(&source.to_string(), url)
            ),
        })?;
        let target = target_of(&options);
        let connect_error = |source: sqlx::Error| StoreError::Connect {
            database: target.clone(),
            detail: crate::config::redact_secrets(&source.to_string(), url),
        };
        let mut conn = tokio::time::timeout(ACQUIRE_TIMEOUT, options.connect())
            .await
            .map_err(|_| StoreError::Connect {
                database: target.clone(),
                detail: format!("no answer within {}s", ACQUIRE_TIMEOUT.as_secs()),
            })?
            .map_err(connect_error)?;
        // `run_direct` rather than `run`: `run`'s `Acquire` bound makes this future not `Send`
        // (sqlx's own workaround), and callers spawn it.
        // A database already at this build's schema is not migrated again: the migrator's
        // bookkeeping needs CREATE on the schema, which a worker's role need not have.
        let migrated = match schema_is_current(&mut conn).await {
            true => Ok(()),
            false => MIGRATOR.run_direct(None, &mut conn, false).await,
        };
        // Closing ends the session, and with it the migrator's advisory lock even after an error.
        let _ = conn.close().await;
        migrated.map_err(|error| migrate_error(&target, error))?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_lazy_with(options);
        Ok(PgStore {
            identity: identity_of(&target).into(),
            target: target.into(),
            pool,
            fence: Arc::new(leader::NO_FENCE.into()),
        })
    }

    /// 16 hex digits of the SHA-256 of `USER@HOST:PORT/DATABASE` (never the password): tells this
    /// database's attempts apart from another's, as the SQLite store's canonical path does.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// `postgres://USER@HOST:PORT/DATABASE`, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Closes every connection (of every clone of this handle: their later calls fail).
    pub async fn close(self) {
        self.pool.close().await;
    }

    fn sql(&self, context: &'static str) -> impl Fn(sqlx::Error) -> StoreError + use<> {
        move |source| StoreError::Sql { context, source }
    }

    /// A value that does not decode: the database holds something this build did not write.
    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Corrupt {
            path: PathBuf::from(&*self.target),
            detail,
        }
    }

    /// Begins a write transaction, checked against the fence first when this handle has one (a
    /// leader's: one statement more, see [`PgStore::check_fence`]). Every multi-statement write
    /// starts here.
    async fn begin(
        &self,
        context: &'static str,
    ) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(self.sql(context))?;
        self.check_fence(&mut tx, context).await?;
        Ok(tx)
    }

    /// One write statement that is a leader's decision: straight on the pool when unfenced (one
    /// round trip, as before), else in a transaction from [`PgStore::begin`].
    async fn execute_decision(
        &self,
        context: &'static str,
        query: sqlx::query::Query<'_, Postgres, sqlx::postgres::PgArguments>,
    ) -> Result<sqlx::postgres::PgQueryResult, StoreError> {
        if self.fenced_with().is_none() {
            return query.execute(&self.pool).await.map_err(self.sql(context));
        }
        let mut tx = self.begin(context).await?;
        let done = query.execute(&mut *tx).await.map_err(self.sql(context))?;
        tx.commit().await.map_err(self.sql(context))?;
        Ok(done)
    }
}

/// Whether the database has exactly this build's migrations applied, each with its checksum (a
/// read only; any doubt answers no and leaves the decision to the migrator).
async fn schema_is_current(conn: &mut sqlx::PgConnection) -> bool {
    let applied: Result<Vec<(i64, Vec<u8>, bool)>, sqlx::Error> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&mut *conn)
            .await;
    let Ok(applied) = applied else {
        // No table yet (a new database), or not readable: the migrator decides.
        return false;
    };
    let embedded: Vec<(i64, &[u8])> = MIGRATOR
        .iter()
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    applied.len() == embedded.len()
        && applied
            .iter()
            .zip(&embedded)
            .all(|((v, sum, ok), (ev, esum))| *ok && v == ev && sum.as_slice() == *esum)
}

/// `postgres://USER@HOST:PORT/DATABASE` of a URL's options.
fn target_of(options: &PgConnectOptions) -> String {
    format!(
        "postgres://{}@{}:{}/{}",
        options.get_username(),
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    )
}

fn identity_of(target: &str) -> String {
    use sha2::Digest;
    let name = target.trim_start_matches("postgres://");
    let digest = sha2::Sha256::digest(name.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn migrate_error(target: &str, error: MigrateError) -> StoreError {
    let path = PathBuf::from(target);
    let supported = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    match error {
        // Applied by a newer build: leave the database alone.
        MigrateError::VersionMissing(found) => StoreError::NewerSchema {
            path,
            found,
            supported,
        },
        MigrateError::VersionMismatch(version) => StoreError::Corrupt {
            path,
            detail: format!(
                "migration {version} applied to the database differs from this build's (edited after it landed)"
            ),
        },
        MigrateError::Dirty(version) => StoreError::Corrupt {
            path,
            detail: format!("migration {version} is only partly applied"),
        },
        MigrateError::Execute(source) | MigrateError::ExecuteMigration(source, _) => {
            StoreError::Sql {
                context: "migrating the schema",
                source,
            }
        }
        other => StoreError::Corrupt {
            path,
            detail: format!("migrating the schema: {other}"),
        },
    }
}

/// A time as the store keeps it: UTC, milliseconds (what SQLite's text holds), so both backends
/// read back the same value.
fn ms(at: OffsetDateTime) -> OffsetDateTime {
    let at = at.to_offset(time::UtcOffset::UTC);
    at.replace_nanosecond(u32::from(at.millisecond()) * 1_000_000)
        .unwrap_or(at)
}

fn now() -> OffsetDateTime {
    ms(OffsetDateTime::now_utc())
}

/// Reads typed columns; a value that does not decode means the database is not what we wrote.
struct Decoder<'a> {
    row: &'a PgRow,
    store: &'a PgStore,
}

impl Decoder<'_> {
    fn corrupt(&self, column: &str, detail: impl std::fmt::Display) -> StoreError {
        self.store.corrupt(format!("column {column}: {detail}"))
    }

    fn get<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: for<'r> sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
    {
        self.row
            .try_get(column)
            .map_err(|err| self.corrupt(column, err))
    }
}

impl crate::store::rows::Columns for Decoder<'_> {
    fn corrupt_column(&self, column: &str, detail: &dyn std::fmt::Display) -> StoreError {
        self.corrupt(column, detail)
    }

    fn text(&self, column: &str) -> Result<String, StoreError> {
        self.get(column)
    }

    fn text_opt(&self, column: &str) -> Result<Option<String>, StoreError> {
        self.get(column)
    }

    fn int(&self, column: &str) -> Result<i64, StoreError> {
        self.get(column)
    }

    fn int_opt(&self, column: &str) -> Result<Option<i64>, StoreError> {
        self.get(column)
    }

    fn flag(&self, column: &str) -> Result<bool, StoreError> {
        self.get(column)
    }

    fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError> {
        self.get(column)
    }

    fn time_opt(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError> {
        self.get(column)
    }
}
