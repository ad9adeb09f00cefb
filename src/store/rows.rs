//! The shared row types built from a database row, once for both backends: which column fills
//! which field, and that a value this build did not write (an unknown phase, a name against the
//! rules, a NULL where none goes) is a damaged database ([`StoreError::Corrupt`]). Each backend's
//! decoder says only how to read one typed column of its rows ([`Columns`]); the SQL that selects
//! the columns stays with each backend.

use std::fmt::Display;
use std::str::FromStr;

use time::OffsetDateTime;

use super::outbox::{OutboxEntry, OutboxState};
use super::{
    AppliedFile, AttemptId, AttemptRow, EventRow, JobRow, PipelineRow, RunId, RunRow, StoreError,
};
use crate::spec::{JobId, PipelineName};

/// Reads the typed columns of one row; every error is already the backend's `Corrupt`.
pub(super) trait Columns {
    /// The error for `column` holding a value this build did not write.
    fn corrupt_column(&self, column: &str, detail: &dyn Display) -> StoreError;
    fn text(&self, column: &str) -> Result<String, StoreError>;
    fn text_opt(&self, column: &str) -> Result<Option<String>, StoreError>;
    fn int(&self, column: &str) -> Result<i64, StoreError>;
    fn int_opt(&self, column: &str) -> Result<Option<i64>, StoreError>;
    fn flag(&self, column: &str) -> Result<bool, StoreError>;
    fn time(&self, column: &str) -> Result<OffsetDateTime, StoreError>;
    fn time_opt(&self, column: &str) -> Result<Option<OffsetDateTime>, StoreError>;

    /// A text column holding one of our names (a phase, a reason).
    fn parse<T>(&self, column: &str) -> Result<T, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        let text = self.text(column)?;
        text.parse()
            .map_err(|err| self.corrupt_column(column, &err))
    }

    fn parse_opt<T>(&self, column: &str) -> Result<Option<T>, StoreError>
    where
        T: FromStr,
        T::Err: Display,
    {
        self.text_opt(column)?
            .map(|text| {
                text.parse()
                    .map_err(|err| self.corrupt_column(column, &err))
            })
            .transpose()
    }

    fn run_id(&self, column: &str) -> Result<RunId, StoreError> {
        self.int(column).map(RunId::from)
    }

    fn attempt_id(&self, column: &str) -> Result<AttemptId, StoreError> {
        self.int(column).map(AttemptId::from)
    }

    /// A job id, checked again: one against the rules could escape the logs folder.
    fn job_id(&self, column: &str) -> Result<JobId, StoreError> {
        let text = self.text(column)?;
        JobId::parse(&text).map_err(|err| self.corrupt_column(column, &err))
    }

    fn job_id_opt(&self, column: &str) -> Result<Option<JobId>, StoreError> {
        self.text_opt(column)?
            .map(|text| JobId::parse(&text).map_err(|err| self.corrupt_column(column, &err)))
            .transpose()
    }

    /// A pipeline name, checked again like a job id.
    fn pipeline(&self, column: &str) -> Result<PipelineName, StoreError> {
        let text = self.text(column)?;
        PipelineName::parse(&text).map_err(|err| self.corrupt_column(column, &err))
    }
}

pub(super) fn run_row(row: &impl Columns) -> Result<RunRow, StoreError> {
    Ok(RunRow {
        id: row.run_id("id")?,
        pipeline: row.pipeline("pipeline")?,
        generation: row.int("generation")?,
        spec_json: row.text("spec_json")?,
        spec_hash: row.text("spec_hash")?,
        phase: row.parse("phase")?,
        reason: row.parse_opt("reason")?,
        rounds: row.int("rounds")?,
        owner_pid: row.int_opt("owner_pid")?,
        owner_host: row.text_opt("owner_host")?,
        owner_start_time: row.int_opt("owner_start_time")?,
        created_at: row.time("created_at")?,
        started_at: row.time_opt("started_at")?,
        finished_at: row.time_opt("finished_at")?,
    })
}

pub(super) fn job_row(row: &impl Columns) -> Result<JobRow, StoreError> {
    Ok(JobRow {
        run_id: row.run_id("run_id")?,
        job_id: row.job_id("job_id")?,
        position: row.int("position")?,
        phase: row.parse("phase")?,
        reason: row.parse_opt("reason")?,
        attempts: row.int("attempts")?,
        lost: row.int("lost")?,
        exit_code: row.int_opt("exit_code")?,
        started_at: row.time_opt("started_at")?,
        finished_at: row.time_opt("finished_at")?,
        log_path: row.text("log_path")?,
        message: row.text_opt("message")?,
    })
}

pub(super) fn attempt_row(row: &impl Columns) -> Result<AttemptRow, StoreError> {
    Ok(AttemptRow {
        id: row.attempt_id("id")?,
        run_id: row.run_id("run_id")?,
        job_id: row.job_id("job_id")?,
        round: row.int("round")?,
        number: row.int("number")?,
        phase: row.parse("phase")?,
        reason: row.parse_opt("reason")?,
        pid: row.int_opt("pid")?,
        pgid: row.int_opt("pgid")?,
        process_start_time: row.int_opt("process_start_time")?,
        exit_code: row.int_opt("exit_code")?,
        signal: row.int_opt("signal")?,
        started_at: row.time("started_at")?,
        finished_at: row.time_opt("finished_at")?,
        user_time_us: row.int_opt("user_time_us")?,
        system_time_us: row.int_opt("system_time_us")?,
        max_rss_kib: row.int_opt("max_rss_kib")?,
        max_rss_upper_bound: row.flag("max_rss_upper_bound")?,
        message: row.text_opt("message")?,
    })
}

pub(super) fn event_row(row: &impl Columns) -> Result<EventRow, StoreError> {
    Ok(EventRow {
        id: row.int("id")?,
        run_id: row.run_id("run_id")?,
        job_id: row.job_id_opt("job_id")?,
        kind: row.text("kind")?,
        reason: row.text_opt("reason")?,
        actor: row.text_opt("actor")?,
        at: row.time("at")?,
        detail: row.text_opt("detail")?,
    })
}

pub(super) fn applied_file(row: &impl Columns) -> Result<AppliedFile, StoreError> {
    Ok(AppliedFile {
        manifests_dir: row.text("manifests_dir")?,
        file: row.text("file")?,
        source: row.text("source")?,
        pipeline: row.text("pipeline")?,
        content_hash: row.text("content_hash")?,
    })
}

pub(super) fn pipeline_row(row: &impl Columns) -> Result<PipelineRow, StoreError> {
    Ok(PipelineRow {
        name: row.text("name")?,
        generation: row.int("generation")?,
        spec_hash: row.text("spec_hash")?,
        source: row.text("source")?,
        deleted: row.flag("deleted")?,
        rerun_requested: row.flag("rerun_requested")?,
        last_tick: row.time_opt("last_tick")?,
        updated_at: row.time("updated_at")?,
    })
}

/// A message's state is told by which of its end times is set: sent wins over given up.
pub(super) fn outbox_row(row: &impl Columns) -> Result<OutboxEntry, StoreError> {
    let state = match (row.time_opt("sent_at")?, row.time_opt("failed_at")?) {
        (Some(at), _) => OutboxState::Sent { at },
        (None, Some(at)) => OutboxState::GaveUp {
            at,
            error: row.text_opt("last_error")?.unwrap_or_default(),
        },
        (None, None) => OutboxState::Pending {
            next_attempt_at: row.time("next_attempt_at")?,
            last_error: row.text_opt("last_error")?,
        },
    };
    Ok(OutboxEntry {
        id: row.int("id")?,
        run_id: row.run_id("run_id")?,
        round: row.int("round")?,
        channel: row.parse("channel")?,
        scope: row.text("scope")?,
        target: row.text("target")?,
        payload: row.text("payload")?,
        attempts: row.int("attempts")?,
        state,
        created_at: row.time("created_at")?,
    })
}
