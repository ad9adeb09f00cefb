//! The controllers' leader lease and the fence, as the rest of the program sees them (DESIGN 9):
//! one row names the controller that decides and its epoch; a leader's store checks that epoch
//! before every write transaction, so a deposed leader's writes fail ([`StoreError::Deposed`]).
//! Only the PostgreSQL store has them: on SQLite one controller per state folder is already
//! guaranteed by its file lock, and the controller elects only when [`Store::is_shared`].
//! When to try, renew or step down is `controller/leader.rs`'s.

use std::time::Duration;

use time::OffsetDateTime;

use super::{Backend, Store, StoreError};

/// Who leads, as the database says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderRow {
    /// The controller holding the lease (`HOST:PID`).
    pub holder: String,
    /// Higher for each new holder.
    pub epoch: i64,
    /// By the database's clock; past it, a standby may take over.
    pub expires_at: OffsetDateTime,
}

/// A SQLite store has no lease: calling one of these there is a defect of the caller.
fn not_shared() -> StoreError {
    StoreError::Unsupported {
        what: "leader election",
        detail: "only a PostgreSQL state database (database.url) is shared by several controllers",
    }
}

impl Store {
    /// Takes (or keeps) the lead for `holder` for `ttl`; the epoch it leads with, or `None` while
    /// another holder's lease runs (see `PgStore::try_lead`).
    pub async fn try_lead(&self, holder: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        match &self.backend {
            Backend::Postgres(db) => db.try_lead(holder, ttl).await,
            Backend::Sqlite(_) => Err(not_shared()),
        }
    }

    /// Extends `holder`'s lease of `epoch`; false when another holder took it over.
    pub async fn renew_lead(
        &self,
        holder: &str,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Postgres(db) => db.renew_lead(holder, epoch, ttl).await,
            Backend::Sqlite(_) => Err(not_shared()),
        }
    }

    /// Gives up `holder`'s lease of `epoch` now, so a standby takes over at once.
    pub async fn resign(&self, holder: &str, epoch: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(db) => db.resign(holder, epoch).await,
            Backend::Sqlite(_) => Err(not_shared()),
        }
    }

    /// The lease, if a controller ever led.
    pub async fn leader(&self) -> Result<Option<LeaderRow>, StoreError> {
        match &self.backend {
            Backend::Postgres(db) => db.leader().await,
            Backend::Sqlite(_) => Err(not_shared()),
        }
    }

    /// Fences this handle and its clones with `epoch`: each of their write transactions checks
    /// first that the lease still has it, and fails with [`StoreError::Deposed`] otherwise.
    pub fn fence(&self, epoch: i64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Postgres(db) => {
                db.fence(epoch);
                Ok(())
            }
            Backend::Sqlite(_) => Err(not_shared()),
        }
    }

    /// A handle on the same database whose writes check no fence, whatever this one's becomes:
    /// for what writes requests rather than decisions (the HTTP API's rerun and cancel) or
    /// answers to its own lease (a worker). On SQLite, a plain clone.
    pub fn unfenced(&self) -> Store {
        let backend = match &self.backend {
            Backend::Postgres(db) => Backend::Postgres(db.unfenced()),
            Backend::Sqlite(db) => Backend::Sqlite(db.clone()),
        };
        Store {
            backend,
            state_dir: self.state_dir.clone(),
        }
    }

    /// The epoch this handle's writes are fenced with, if any.
    pub fn fenced_with(&self) -> Option<i64> {
        match &self.backend {
            Backend::Postgres(db) => db.fenced_with(),
            Backend::Sqlite(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;

    #[tokio::test]
    async fn a_sqlite_store_has_no_lease_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Durability::Normal).await.unwrap();
        let error = store
            .try_lead("a", Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(error, StoreError::Unsupported { .. }), "{error:?}");
        assert!(error.to_string().contains("PostgreSQL"), "{error}");
        assert!(matches!(
            store.fence(1),
            Err(StoreError::Unsupported { .. })
        ));
        assert!(store.leader().await.is_err());
        assert_eq!(store.fenced_with(), None);
        // An unfenced handle of a SQLite store is a plain clone that still works.
        assert!(store.unfenced().pipelines().await.unwrap().is_empty());
    }
}
