//! The controllers' leader lease on PostgreSQL (table `leader`, migration 2): taking the one row
//! (or taking it over once it expired), renewing it, giving it up, reading it; and the fence, the
//! check every write transaction of a leader's store makes first. Every time is the database's
//! `now()`, never a host's clock, so controllers whose clocks disagree still agree on who leads.
//! When to try, renew or step down is the controller's (`controller/leader.rs`).

use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::Postgres;

use super::{Decoder, PgStore};
use crate::store::rows::Columns;
use crate::store::{LeaderRow, StoreError};

/// `ttl` in milliseconds, as the SQL below takes it (`$N * interval '1 millisecond'`).
fn millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Takes the lead for `holder` for `ttl`: inserts the row, takes it over when it expired
    /// (the epoch goes up by one), or renews it when `holder` already holds it (same epoch).
    /// Returns the epoch `holder` leads with, or `None` while another holder's lease runs.
    pub async fn try_lead(&self, holder: &str, ttl: Duration) -> Result<Option<i64>, StoreError> {
        // One statement: the row lock of the upsert makes two standbys racing for an expired
        // lease see each other (the second finds it taken and not expired).
        sqlx::query_scalar(
            "INSERT INTO leader AS l (id, holder, epoch, expires_at) \
             VALUES (1, $1, 1, now() + $2 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET \
               epoch = CASE WHEN l.holder = excluded.holder THEN l.epoch ELSE l.epoch + 1 END, \
               holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE l.holder = excluded.holder OR l.expires_at < now() \
             RETURNING epoch",
        )
        .bind(holder)
        .bind(millis(ttl))
        .fetch_optional(&self.pool)
        .await
        .map_err(self.sql("taking the controllers' lead"))
    }

    /// Extends the lease `holder` holds with `epoch` to `ttl` from now; false when it lost it
    /// (another holder took it over). An expired lease nobody took yet is still renewed.
    pub async fn renew_lead(
        &self,
        holder: &str,
        epoch: i64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE leader SET expires_at = now() + $3 * interval '1 millisecond' \
             WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(holder)
        .bind(epoch)
        .bind(millis(ttl))
        .execute(&self.pool)
        .await
        .map_err(self.sql("renewing the controllers' lead"))?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives up the lease `holder` holds with `epoch` (expired as of now), so that a standby takes
    /// over at its next try instead of after the lease's time; nothing when it is not held so.
    pub async fn resign(&self, holder: &str, epoch: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE leader SET expires_at = now() - interval '1 millisecond' \
             WHERE id = 1 AND holder = $1 AND epoch = $2",
        )
        .bind(holder)
        .bind(epoch)
        .execute(&self.pool)
        .await
        .map_err(self.sql("giving up the controllers' lead"))?;
        Ok(())
    }

    /// The lease as the database holds it, if any controller ever led.
    pub async fn leader(&self) -> Result<Option<LeaderRow>, StoreError> {
        let row = sqlx::query("SELECT holder, epoch, expires_at FROM leader WHERE id = 1")
            .fetch_optional(&self.pool)
            .await
            .map_err(self.sql("reading the controllers' lead"))?;
        let Some(row) = row else {
            return Ok(None);
        };
        let d = Decoder {
            row: &row,
            store: self,
        };
        Ok(Some(LeaderRow {
            holder: d.text("holder")?,
            epoch: d.int("epoch")?,
            expires_at: d.time("expires_at")?,
        }))
    }

    /// Makes every later write transaction of this handle and its clones check first that the
    /// lease still has epoch `epoch` (see [`PgStore::check_fence`]).
    pub fn fence(&self, epoch: i64) {
        self.fence.store(epoch, Ordering::Relaxed);
    }

    /// A handle on the same pool with no fence of its own (its writes check nothing), whatever
    /// this one's fence becomes.
    pub fn unfenced(&self) -> PgStore {
        PgStore {
            fence: Default::default(),
            ..self.clone()
        }
    }

    /// The epoch this handle's writes are fenced with; `None` when unfenced.
    pub fn fenced_with(&self) -> Option<i64> {
        match self.fence.load(Ordering::Relaxed) {
            NO_FENCE => None,
            epoch => Some(epoch),
        }
    }

    /// The first statement of a fenced write transaction: the lease must still have this handle's
    /// epoch. `FOR SHARE` holds the row until the transaction ends, so a takeover (an `UPDATE` of
    /// the row) waits for the writes already checked and every later one sees the new epoch:
    /// a deposed leader's write either committed before the takeover or fails.
    ///
    /// A leader frozen or cut off in the middle of such a transaction would hold the row, and so
    /// keep every standby out, for as long as its session lives: the same statement makes the
    /// server end the session once the transaction sits idle for [`FENCED_IDLE_LIMIT`] (rolled
    /// back, its lock released).
    pub(super) async fn check_fence(
        &self,
        tx: &mut sqlx::Transaction<'static, Postgres>,
        context: &'static str,
    ) -> Result<(), StoreError> {
        let Some(epoch) = self.fenced_with() else {
            return Ok(());
        };
        let current: Option<i64> = sqlx::query_scalar(
            "SELECT epoch, set_config('idle_in_transaction_session_timeout', $1, true) \
             FROM leader WHERE id = 1 FOR SHARE",
        )
        .bind(FENCED_IDLE_LIMIT.as_millis().to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(self.sql(context))?;
        if current == Some(epoch) {
            Ok(())
        } else {
            Err(StoreError::Deposed { epoch })
        }
    }
}

/// How long a fenced transaction may sit idle between its statements before the server ends its
/// session: far beyond what a live leader's back-to-back statements take, and short enough that
/// a standby's takeover is not held up past the lease itself (lease_ttl = 15 s by default).
const FENCED_IDLE_LIMIT: Duration = Duration::from_secs(2);

/// The fence of a handle that has none: epochs start at 1.
pub(super) const NO_FENCE: i64 = 0;
