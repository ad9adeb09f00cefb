//! Shipping one attempt's output to the database (DESIGN 9: `logs` from any host): a task that
//! tails the job's log file from the attempt's start offset and ships what was appended, in
//! chunks of at most [`CHUNK_BYTES`], every [`SHIP_EVERY`] and once more at [`ShipHandle::finish`].
//! It stops at a cap ([`DEFAULT_CAP`] unless told), after one marker line saying where the full
//! log is, or when the database rejects a chunk (the attempt's claim is gone: its fencing token
//! no longer holds). The log file itself stays whole on the worker's host; this module never
//! writes it. Only workers use it: nothing here is on the engine's SQLite path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::store::{AttemptId, Store, StoreError};

/// The most one chunk holds.
pub const CHUNK_BYTES: usize = 64 * 1024;

/// How often a running attempt's new output is shipped.
pub const SHIP_EVERY: Duration = Duration::from_millis(500);

/// How much of one attempt's output is shipped at most (16 MiB): a job that prints without end
/// does not fill the shared database. The rest stays in the log file on the worker's host, which
/// the marker line names. Each attempt of a job has its own cap, so a retry's output is shipped
/// even when an earlier attempt's reached it.
pub const DEFAULT_CAP: u64 = 16 * 1024 * 1024;

/// How shipping ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShipOutcome {
    /// Everything the attempt wrote was shipped.
    Complete,
    /// The cap was reached: the marker line was shipped and nothing after it.
    Truncated,
    /// The database refused a chunk (the claim moved on); nothing was shipped after it.
    Rejected,
}

/// What a shipper did, for the worker's log and its tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipReport {
    pub outcome: ShipOutcome,
    /// Bytes of the job's output shipped (the marker line not counted).
    pub bytes: u64,
    /// Chunks stored, the marker's included.
    pub chunks: i64,
}

/// A running shipper; [`ShipHandle::finish`] ships the rest and ends it.
#[derive(Debug)]
pub struct ShipHandle {
    finish: tokio::sync::oneshot::Sender<Finish>,
    task: tokio::task::JoinHandle<Result<Finished, StoreError>>,
}

/// How the shipper is to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Ship everything.
    All,
    /// Ship everything but the last chunk, which is handed back (see [`ShipHandle::finish_but_last`]).
    ButLast,
}

/// A shipper's end: its report, and the last chunk when it was handed back unshipped.
type Finished = (ShipReport, Option<LastChunk>);

/// The last chunk of an attempt's output, for the caller to store in a transaction of its own
/// (a worker stores it with the attempt's result: one commit for both).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastChunk {
    pub seq: i64,
    pub data: Vec<u8>,
}

impl ShipHandle {
    /// Starts shipping the output of `attempt` (claimed with `token`) that the log at `path`
    /// holds from `offset` on, at most `cap` bytes. A file that does not exist yet is read once
    /// it does. Call it on a tokio runtime; a handle dropped without [`ShipHandle::finish`]
    /// ships what the file holds then and ends, unwatched.
    ///
    /// For the shipped log to read like the local one, give the offset where the attempt's
    /// opening marker line starts, and call `finish` after its closing line is written and
    /// before the attempt is settled: once its queue item is settled, chunks are refused.
    pub fn start(
        store: Store,
        attempt: AttemptId,
        token: i64,
        path: PathBuf,
        offset: u64,
        cap: u64,
    ) -> ShipHandle {
        let (finish, finished) = tokio::sync::oneshot::channel();
        let shipper = Shipper {
            store,
            attempt,
            token,
            path,
            offset,
            cap,
            file: None,
            pending: Vec::with_capacity(CHUNK_BYTES),
            bytes: 0,
            seq: 0,
            at_line_start: true,
        };
        let task = tokio::spawn(shipper.run(finished));
        ShipHandle { finish, task }
    }

    /// Ships what the file holds now (call it once the attempt's process has exited and its last
    /// line is written) and ends. An error is the last shipment's: the database could not be
    /// reached then, and what was not shipped stays only in the file.
    pub async fn finish(self) -> Result<ShipReport, StoreError> {
        self.end(Finish::All).await.map(|(report, _)| report)
    }

    /// As [`ShipHandle::finish`], except that the last chunk (when what is left fits in one,
    /// under the cap) is returned instead of shipped: the caller stores it, fenced by the same
    /// token, in the transaction that records the attempt's result.
    pub async fn finish_but_last(self) -> Result<(ShipReport, Option<LastChunk>), StoreError> {
        self.end(Finish::ButLast).await
    }

    async fn end(self, how: Finish) -> Result<Finished, StoreError> {
        // The task may have ended already (capped or rejected): then nobody listens.
        let _ = self.finish.send(how);
        match self.task.await {
            Ok(result) => result,
            // The task is never aborted, and this runs on the runtime that would cancel it: the
            // error can only be a panic in the task, surfaced here rather than hidden.
            Err(join) => std::panic::resume_unwind(join.into_panic()),
        }
    }
}

/// Whether the shipper goes on.
enum Shipped {
    /// Everything readable now was shipped.
    UpToDate,
    /// Everything but this last chunk was shipped.
    Last(LastChunk),
    Ended(ShipOutcome),
}

struct Shipper {
    store: Store,
    attempt: AttemptId,
    token: i64,
    path: PathBuf,
    offset: u64,
    cap: u64,
    file: Option<tokio::fs::File>,
    /// Read from the file and not shipped yet (kept across a failed shipment, so it is retried).
    pending: Vec<u8>,
    bytes: u64,
    seq: i64,
    /// The output shipped so far ends with a whole line (or is empty).
    at_line_start: bool,
}

impl Shipper {
    async fn run(
        mut self,
        mut finished: tokio::sync::oneshot::Receiver<Finish>,
    ) -> Result<Finished, StoreError> {
        // The first shipment after a period, not at once: a short job's whole log then goes in
        // one chunk at finish (a commit per chunk is most of a short job's shipping cost).
        let mut every =
            tokio::time::interval_at(tokio::time::Instant::now() + SHIP_EVERY, SHIP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let end = tokio::select! {
                _ = every.tick() => None,
                how = &mut finished => Some(how.unwrap_or(Finish::All)),
            };
            let last = end.is_some();
            let shipped = match end {
                Some(Finish::ButLast) => self.ship_but_last().await,
                Some(Finish::All) | None => self.ship_available().await,
            };
            match shipped {
                Ok(Shipped::Ended(outcome)) => return Ok((self.report(outcome), None)),
                Ok(Shipped::Last(chunk)) => {
                    return Ok((self.report(ShipOutcome::Complete), Some(chunk)));
                }
                Ok(Shipped::UpToDate) if last => {
                    return Ok((self.report(ShipOutcome::Complete), None));
                }
                Ok(Shipped::UpToDate) => {}
                Err(error) if last => return Err(error),
                // The database may be back at the next tick; the unshipped bytes wait for it.
                Err(error) => tracing::warn!(
                    attempt = %self.attempt,
                    "shipping the log failed, trying again: {}",
                    crate::error_chain::render(&error)
                ),
            }
        }
    }

    fn report(&self, outcome: ShipOutcome) -> ShipReport {
        ShipReport {
            outcome,
            bytes: self.bytes,
            chunks: self.seq,
        }
    }

    /// Ships what the file holds beyond what was shipped, chunk by chunk, up to the cap.
    async fn ship_available(&mut self) -> Result<Shipped, StoreError> {
        loop {
            if self.pending.is_empty() && !self.read_more().await? {
                return Ok(Shipped::UpToDate);
            }
            let room = self.cap.saturating_sub(self.bytes);
            if (self.pending.len() as u64) > room {
                return self.ship_truncated(room).await;
            }
            let data = std::mem::take(&mut self.pending);
            match self.ship_output(&data).await {
                Ok(true) => {}
                Ok(false) => return Ok(Shipped::Ended(ShipOutcome::Rejected)),
                Err(error) => {
                    self.pending = data;
                    return Err(error);
                }
            }
        }
    }

    /// As [`Shipper::ship_available`], but the last chunk, when it fits under the cap, is
    /// returned unshipped.
    async fn ship_but_last(&mut self) -> Result<Shipped, StoreError> {
        loop {
            if self.pending.is_empty() && !self.read_more().await? {
                return Ok(Shipped::UpToDate);
            }
            let room = self.cap.saturating_sub(self.bytes);
            if (self.pending.len() as u64) > room {
                return self.ship_truncated(room).await;
            }
            let data = std::mem::take(&mut self.pending);
            if !self.read_more().await? {
                return Ok(Shipped::Last(LastChunk {
                    seq: self.seq,
                    data,
                }));
            }
            // More follows (now in `pending`): this one is not the last.
            match self.ship_output(&data).await {
                Ok(true) => {}
                Ok(false) => return Ok(Shipped::Ended(ShipOutcome::Rejected)),
                Err(error) => {
                    let mut both = data;
                    both.extend_from_slice(&self.pending);
                    self.pending = both;
                    return Err(error);
                }
            }
        }
    }

    /// Ships the pending bytes that fit in `room` (cut after the last whole line when there is
    /// one), then the marker line.
    async fn ship_truncated(&mut self, room: u64) -> Result<Shipped, StoreError> {
        let room = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .min(self.pending.len());
        let cut = self.pending[..room]
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(room, |newline| newline + 1);
        if cut > 0 {
            let data = self.pending[..cut].to_vec();
            match self.ship_output(&data).await? {
                true => {
                    self.pending.drain(..cut);
                }
                false => return Ok(Shipped::Ended(ShipOutcome::Rejected)),
            }
        }
        let marker = truncation_marker(self.bytes, self.cap, &self.path, !self.at_line_start);
        match self.ship(marker.as_bytes()).await? {
            true => Ok(Shipped::Ended(ShipOutcome::Truncated)),
            false => Ok(Shipped::Ended(ShipOutcome::Rejected)),
        }
    }

    /// One chunk of the job's output, counted against the cap once stored; false when rejected.
    async fn ship_output(&mut self, data: &[u8]) -> Result<bool, StoreError> {
        let stored = self.ship(data).await?;
        if stored {
            self.bytes += data.len() as u64;
            self.at_line_start = data.last().is_none_or(|b| *b == b'\n');
        }
        Ok(stored)
    }

    /// One chunk, with the next seq; false when rejected.
    async fn ship(&mut self, data: &[u8]) -> Result<bool, StoreError> {
        let stored = self
            .store
            .append_log_chunk(self.attempt, self.token, self.seq, data)
            .await?;
        if stored {
            self.seq += 1;
        }
        Ok(stored)
    }

    /// Reads up to a chunk's worth of new output into `pending`; false when there is none.
    async fn read_more(&mut self) -> Result<bool, StoreError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| StoreError::Io { path, source }
        };
        if self.file.is_none() {
            match tokio::fs::File::open(&self.path).await {
                Ok(mut file) => {
                    file.seek(std::io::SeekFrom::Start(self.offset))
                        .await
                        .map_err(io(&self.path))?;
                    self.file = Some(file);
                }
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(error) => return Err(io(&self.path)(error)),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return Ok(false);
        };
        self.pending.resize(CHUNK_BYTES, 0);
        let read = file.read(&mut self.pending).await;
        let n = match read {
            Ok(n) => n,
            Err(error) => {
                self.pending.clear();
                return Err(io(&self.path)(error));
            }
        };
        self.pending.truncate(n);
        Ok(n > 0)
    }
}

/// The line shipped in place of the output beyond the cap; on a line of its own even when the
/// cut fell inside a line (`mid_line`).
fn truncation_marker(bytes: u64, cap: u64, path: &Path, mid_line: bool) -> String {
    let host = nix::unistd::gethostname()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "this worker's host".to_owned());
    format!(
        "{}[executioner] output truncated after {bytes} bytes (cap {cap}); the full log is in {} on {host}\n",
        if mid_line { "\n" } else { "" },
        path.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_names_the_cap_the_file_and_the_host() {
        let marker = truncation_marker(990, 1000, Path::new("/state/logs/p/1/a.log"), false);
        assert!(
            marker.starts_with(
                "[executioner] output truncated after 990 bytes (cap 1000); the full log is in /state/logs/p/1/a.log on "
            ),
            "{marker}"
        );
        assert!(marker.ends_with('\n'));
        assert!(truncation_marker(1, 1, Path::new("x"), true).starts_with("\n[executioner]"));
    }
}
