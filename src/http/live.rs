//! The live side of the web pages, as server-sent events: the change notices of
//! `GET /api/v1/events` (fed from the controller's events through a `tokio::sync::broadcast`,
//! so a slow client only ever misses notices and is told to refresh; it never slows the
//! controller) and `GET /api/v1/runs/{id}/jobs/{job}/log/stream`, a job's log file followed as
//! it grows. Owns neither the pages (`pages`) nor the JSON they re-fetch (`api`).
//!
//! The log stream's contract (shared with other clients, keep it): `text/event-stream`, one
//! `event: line` per line of the file with `id:` the byte offset just after that line and
//! `data:` the line (lossy UTF-8, without its `\n`); resumed from `Last-Event-ID` (what a
//! browser's `EventSource` sends when it reconnects), else `?from=OFFSET`; when the job is
//! terminal and the file drained, one `event: end` with the job's phase as its data, and the
//! stream closes; a keep-alive comment every 15 s.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::controller::ControllerEvent;
use crate::spec::JobId;
use crate::status::JobPhase;
use crate::store::RunId;

use super::api::{ErrorBody, job_id, known_run, path, run_id};
use super::{ApiError, App};

/// How often a followed log file is read again for new bytes.
///
/// Polling rather than inotify (`notify`): one read per client per interval costs nothing next
/// to a job's own work, needs no watch per client (200 clients following logs would be 200
/// inotify watches, against a per-user limit), and sees the bytes of any writer on any file
/// system. A line shows at most this long after it was written.
pub const POLL: Duration = Duration::from_millis(200);
/// The most bytes read from a log at once, and the longest line sent as one event (a longer
/// one is sent in pieces of this size): what one client can hold in memory.
pub const CHUNK: usize = 64 * 1024;
/// The interval of the keep-alive comments of both streams.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often a followed job's phase is read from the store when no change notice came (a run
/// driven by another process, e.g. a foreground `executioner run`, sends none).
const PHASE_EVERY: Duration = Duration::from_secs(5);
/// The most lines cut into events at once: with [`CHUNK`], what one client can hold.
const LINES_AT_ONCE: usize = 256;
/// Notices kept for a slow client before it is told to refresh instead.
const BACKLOG: usize = 256;

/// A change notice: what changed (a pipeline, a run of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Change {
    pub pipeline: Option<String>,
    #[schema(value_type = Option<i64>)]
    pub run: Option<RunId>,
}

/// Where change notices are published, and the signal that ends every stream (the server is
/// stopping: a stream never ends by itself, so the graceful shutdown would wait for it).
#[derive(Debug, Clone)]
pub struct Changes {
    tx: broadcast::Sender<Change>,
    closed: CancellationToken,
    /// One permit per open stream (see [`MAX_STREAMS`]).
    streams: Arc<tokio::sync::Semaphore>,
}

/// The most live streams (of both kinds) open at once; one more is answered 503. Each log
/// follower holds a file, a socket and up to two [`CHUNK`]s.
pub const MAX_STREAMS: usize = 256;

impl Default for Changes {
    fn default() -> Self {
        Changes::new()
    }
}

impl Changes {
    pub fn new() -> Changes {
        Changes {
            tx: broadcast::channel(BACKLOG).0,
            closed: CancellationToken::new(),
            streams: Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS)),
        }
    }

    /// A permit to open one more stream, or the 503 that says there are too many.
    fn stream_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.streams).try_acquire_owned().map_err(|_| {
            ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                format!("{MAX_STREAMS} live streams are open; try again later"),
            )
        })
    }

    /// Publishes what `event` changed, if anything a page shows. Never waits: a client that
    /// is behind loses its oldest notices (and is told to refresh).
    pub fn observe(&self, event: &ControllerEvent) {
        if let Some(change) = change_of(event) {
            // No subscriber is not an error: nobody is looking.
            let _ = self.tx.send(change);
        }
    }

    /// Ends every stream (the server is stopping).
    pub fn close(&self) {
        self.closed.cancel();
    }

    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.tx.subscribe()
    }
}

/// What a controller event changed on the pages.
fn change_of(event: &ControllerEvent) -> Option<Change> {
    let both = |pipeline: &String, run: &RunId| {
        Some(Change {
            pipeline: Some(pipeline.clone()),
            run: Some(*run),
        })
    };
    match event {
        ControllerEvent::RunStarted { pipeline, run, .. }
        | ControllerEvent::RunResumed { pipeline, run, .. }
        | ControllerEvent::RunFinished { pipeline, run, .. }
        | ControllerEvent::Cancelling { pipeline, run, .. }
        | ControllerEvent::Interrupting { pipeline, run }
        | ControllerEvent::RunInterrupted { pipeline, run }
        | ControllerEvent::TickSkipped { pipeline, run, .. }
        | ControllerEvent::RunFault { pipeline, run, .. }
        | ControllerEvent::RunProgress { pipeline, run, .. } => both(pipeline, run),
        ControllerEvent::Deleted { pipeline } | ControllerEvent::StatusBuilt { pipeline, .. } => {
            Some(Change {
                pipeline: Some(pipeline.clone()),
                run: None,
            })
        }
        ControllerEvent::Invalid { .. } => Some(Change {
            pipeline: None,
            run: None,
        }),
        ControllerEvent::Started { .. }
        | ControllerEvent::HistoryPruned { .. }
        | ControllerEvent::Warning(_)
        | ControllerEvent::Stopping
        | ControllerEvent::Reconciled { .. }
        | ControllerEvent::NotificationsPending { .. }
        | ControllerEvent::Leadership(_) => None,
    }
}

type EventStream = std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>>;
type Events = Sse<axum::response::sse::KeepAliveStream<EventStream>>;

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Events {
    let stream: EventStream = Box::pin(stream);
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
}

#[utoipa::path(get, path = "/api/v1/events", tag = "api",
    responses((status = 200, description = "Server-sent events: `event: change` with `data: {\"pipeline\":..,\"run\":..}` (JSON, either may be null) whenever something a page shows changed; `event: refresh` when notices were lost (re-read everything); a keep-alive comment every 15 s", content_type = "text/event-stream", body = Change),
        (status = 503, description = "Too many live streams are open (256)", body = ErrorBody)))]
pub async fn events(State(app): State<Arc<App>>) -> Result<Events, ApiError> {
    let permit = app.changes.stream_permit()?;
    let state = (app.changes.subscribe(), app.changes.closed.clone(), permit);
    Ok(sse(futures_util::stream::unfold(
        state,
        |(mut rx, closed, permit)| async move {
            let event = tokio::select! {
                _ = closed.cancelled() => return None,
                received = rx.recv() => match received {
                    Ok(change) => Event::default()
                        .event("change")
                        .data(serde_json::to_string(&change).unwrap_or_default()),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        Event::default().event("refresh").data("{}")
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
            };
            Some((Ok(event), (rx, closed, permit)))
        },
    )))
}

/// `?from=OFFSET` of the log stream.
#[derive(Debug, Deserialize)]
pub struct FromQuery {
    from: Option<u64>,
}

#[utoipa::path(get, path = "/api/v1/runs/{id}/jobs/{job}/log/stream", tag = "api",
    params(
        ("id" = i64, Path, description = "A run id", minimum = 1),
        ("job" = String, Path, description = "A job id (A-Z, a-z, 0-9, `_`, `.`, `-`; not `.` or `..`)", min_length = 1, max_length = 63, pattern = "^([A-Za-z0-9_-][A-Za-z0-9_.-]*|\\.[A-Za-z0-9_-][A-Za-z0-9_.-]*|\\.\\.[A-Za-z0-9_.-]+)$"),
        ("from" = Option<u64>, Query, description = "The byte offset to start at (default 0); the `Last-Event-ID` header wins over it"),
        ("Last-Event-ID" = Option<u64>, Header, description = "The `id` of the last event received: resume just after it")),
    responses(
        (status = 200, description = "Server-sent events: `event: line`, `id: <byte offset just after the line>`, `data: <the line>` for each line of the job's log (secrets masked, lossy UTF-8); waits for a job that has not started; when the job has ended and its log is drained, `event: end` with `data: <the job's phase>`, and the stream closes; a keep-alive comment every 15 s", content_type = "text/event-stream", body = String),
        (status = 400, description = "Not a run id, job id or offset", body = ErrorBody),
        (status = 404, description = "No such run or job", body = ErrorBody),
        (status = 503, description = "Too many live streams are open (256)", body = ErrorBody)))]
pub async fn log_stream(
    State(app): State<Arc<App>>,
    ids: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<FromQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Events, ApiError> {
    let (id, job) = path(ids)?;
    let (id, job) = (run_id(&id)?, job_id(&job)?);
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let resume = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_request("Last-Event-ID is not a byte offset"))?,
        ),
        None => None,
    };
    let run = known_run(&app, id).await?;
    if app.store.job(id, job.as_str()).await?.is_none() {
        return Err(ApiError::not_found(format!("run {id} has no job {job}")));
    }
    // Every part of the path is a validated name or id: it stays inside the state folder.
    let file = crate::state_dir::job_log_path(&app.state_dir, &run.pipeline, run.id, &job);
    let follow = Follow {
        _permit: app.changes.stream_permit()?,
        changes: app.changes.subscribe(),
        closed: app.changes.closed.clone(),
        app,
        run: id,
        job,
        path: file,
        file: None,
        offset: resume.or(query.from).unwrap_or(0),
        partial: Vec::new(),
        chunk: vec![0; CHUNK],
        ready: VecDeque::new(),
        check_phase: true,
        since_check: Duration::ZERO,
        last_check: None,
        ended: None,
        done: false,
    };
    Ok(sse(futures_util::stream::unfold(
        follow,
        |mut follow| async move {
            let event = follow.next().await?;
            Some((Ok(event), follow))
        },
    )))
}

/// One client following one job's log.
struct Follow {
    app: Arc<App>,
    run: RunId,
    job: JobId,
    path: PathBuf,
    file: Option<tokio::fs::File>,
    /// The offset just after the bytes read (`partial` included).
    offset: u64,
    /// The start of a line whose end was not read yet (less than [`CHUNK`] bytes).
    partial: Vec<u8>,
    /// The buffer each read goes into ([`CHUNK`] bytes, kept for the life of the stream).
    chunk: Vec<u8>,
    ready: VecDeque<Event>,
    /// A change notice of the run came (or none was looked at yet): read the job's phase.
    check_phase: bool,
    since_check: Duration,
    /// When the job's phase was last read.
    last_check: Option<tokio::time::Instant>,
    /// The job has ended with this phase: the rest of the file is read, then the stream ends.
    ended: Option<JobPhase>,
    done: bool,
    changes: broadcast::Receiver<Change>,
    closed: CancellationToken,
    /// Held for the life of the stream.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Follow {
    /// The next event, `None` when the stream ends.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            if self.done || self.closed.is_cancelled() {
                return None;
            }
            if self.cut() || self.read().await > 0 {
                continue;
            }
            if let Some(phase) = self.ended {
                // The job's process is gone and its file is drained.
                self.flush_partial();
                self.ready
                    .push_back(Event::default().event("end").data(phase.as_str()));
                self.done = true;
                continue;
            }
            // A notice arms the check; it runs at most once a poll however many notices come.
            let due = self.last_check.is_none_or(|at| at.elapsed() >= POLL);
            if (self.check_phase && due) || self.since_check >= PHASE_EVERY {
                self.check_phase = false;
                self.since_check = Duration::ZERO;
                self.last_check = Some(tokio::time::Instant::now());
                if let Some(phase) = self.terminal_phase().await {
                    // Read what is left before the end (a chunk at a time, as ever).
                    self.ended = Some(phase);
                    continue;
                }
            }
            self.wait().await;
        }
    }

    /// Reads what the file holds past the offset (at most [`CHUNK`] bytes) into events; the
    /// number of bytes read (0 at its end, or while it does not exist).
    async fn read(&mut self) -> usize {
        if self.file.is_none() {
            let Ok(mut file) = tokio::fs::File::open(&self.path).await else {
                return 0;
            };
            let start = self.offset - self.partial.len() as u64;
            if tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(start))
                .await
                .is_err()
            {
                return 0;
            }
            self.file = Some(file);
        }
        let Some(file) = self.file.as_mut() else {
            return 0;
        };
        let n = match file.read(&mut self.chunk).await {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let chunk = std::mem::take(&mut self.chunk);
        self.take(&chunk[..n]);
        self.chunk = chunk;
        n
    }

    /// Appends the bytes just read to `partial` and cuts its first lines into events.
    fn take(&mut self, bytes: &[u8]) {
        self.offset += bytes.len() as u64;
        self.partial.extend_from_slice(bytes);
        self.cut();
    }

    /// Cuts at most [`LINES_AT_ONCE`] complete lines of `partial` into events (so a client
    /// holds at most that many events and two chunks of bytes, however short the lines); true
    /// when it cut any.
    fn cut(&mut self) -> bool {
        let start = self.offset - self.partial.len() as u64;
        let (lines, used) = split_lines(&self.partial, start, LINES_AT_ONCE);
        let any = !lines.is_empty();
        self.ready
            .extend(lines.into_iter().map(|(line, end)| line_event(line, end)));
        self.partial.drain(..used);
        any
    }

    /// The last line of a finished job's log, when it does not end with a newline.
    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.ready.push_back(line_event(&line, self.offset));
        }
    }

    /// The job's phase when it is terminal (or when the run or job is gone: a pruned run's
    /// stream ends, with the last phase known).
    async fn terminal_phase(&self) -> Option<JobPhase> {
        match self.app.store.job(self.run, self.job.as_str()).await.ok()? {
            Some(j) if j.phase.is_terminal() => Some(j.phase),
            Some(_) => None,
            None => Some(JobPhase::Cancelled),
        }
    }

    /// Waits for the next poll, a change of the run, or the server's stop.
    async fn wait(&mut self) {
        tokio::select! {
            _ = tokio::time::sleep(POLL) => self.since_check += POLL,
            _ = self.closed.cancelled() => {}
            received = self.changes.recv() => match received {
                Ok(change) => {
                    if change.run == Some(self.run) {
                        self.check_phase = true;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => self.check_phase = true,
                // The sender lives as long as the server: only polling is left.
                Err(broadcast::error::RecvError::Closed) => {
                    tokio::time::sleep(POLL).await;
                    self.since_check += POLL;
                }
            },
        }
    }
}

/// The complete lines of `bytes` (which start at byte `start` of the file), each with the offset
/// just after it, and how many bytes they used; a line of [`CHUNK`] bytes or more without its
/// end yet is cut into pieces of at most [`CHUNK`] bytes at a character boundary.
fn split_lines(bytes: &[u8], start: u64, most: usize) -> (Vec<(&[u8], u64)>, usize) {
    let mut lines = Vec::new();
    let mut used = 0;
    while lines.len() < most {
        let rest = &bytes[used..];
        let window = &rest[..rest.len().min(CHUNK)];
        if let Some(end) = window.iter().position(|b| *b == b'\n') {
            used += end + 1;
            lines.push((&rest[..end], start + used as u64));
        } else if rest.len() >= CHUNK {
            let cut = utf8_cut(&rest[..CHUNK]);
            used += cut;
            lines.push((&rest[..cut], start + used as u64));
        } else {
            break;
        }
    }
    (lines, used)
}

/// The longest prefix of `bytes` that does not end inside a UTF-8 character (at most 3 bytes
/// shorter; never empty).
fn utf8_cut(bytes: &[u8]) -> usize {
    match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() && e.valid_up_to() > 0 => e.valid_up_to(),
        Err(_) => bytes.len(),
    }
}

/// An `event: line` of a log line ending just before byte `end`. A carriage return cannot be
/// sent in an event: a line's trailing one (CRLF) is dropped, an inner one (a progress bar
/// redrawn) becomes a line break, which `EventSource` hands over as `\n`.
fn line_event(line: &[u8], end: u64) -> Event {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let text = text.replace("\r\n", "\n").replace('\r', "\n");
    // An event with an empty data field is not dispatched by `EventSource`: an empty line is
    // sent as one space.
    let text = if text.is_empty() {
        " ".to_owned()
    } else {
        text
    };
    Event::default()
        .event("line")
        .id(end.to_string())
        .data(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_past_the_limit_are_refused_503() {
        let changes = Changes::new();
        let held: Vec<_> = (0..MAX_STREAMS)
            .map(|_| changes.stream_permit().expect("a permit"))
            .collect();
        let refused = changes.stream_permit().expect_err("one too many");
        assert_eq!(refused.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        assert!(
            changes.stream_permit().is_ok(),
            "permits come back with the streams"
        );
    }

    #[test]
    fn lines_are_cut_a_bounded_number_at_a_time() {
        let many = "x\n".repeat(1000);
        let (lines, used) = split_lines(many.as_bytes(), 0, LINES_AT_ONCE);
        assert_eq!(lines.len(), LINES_AT_ONCE);
        assert_eq!(used, 2 * LINES_AT_ONCE);
        assert_eq!(lines[0], (&b"x"[..], 2));
    }

    /// `EventSource` drops an event whose data is empty: a blank line is sent as one space, so
    /// it shows as a line and its offset is still the resume point.
    #[test]
    fn a_blank_line_is_an_event_with_data() {
        let (lines, _) = split_lines(b"a\n\nb\n", 0, usize::MAX);
        assert_eq!(lines[1], (&b""[..], 3));
        let text = format!("{:?}", line_event(lines[1].0, lines[1].1));
        assert!(text.contains("data:  \\n"), "{text}");
    }

    #[test]
    fn a_cut_never_splits_a_character() {
        let text = "aé".as_bytes();
        assert_eq!(utf8_cut(&text[..2]), 1);
        assert_eq!(utf8_cut(text), 3);
        assert_eq!(utf8_cut(b"\xff\xfe"), 2, "invalid bytes are cut anywhere");
    }

    #[test]
    fn lines_carry_the_offset_after_them_and_long_ones_come_in_pieces() {
        let (lines, used) = split_lines(b"ab\ncd\nhalf", 10, usize::MAX);
        assert_eq!(lines, [(&b"ab"[..], 13), (&b"cd"[..], 16)]);
        assert_eq!(used, 6, "the half line waits for its end");

        let mut long = "é".repeat(CHUNK / 2 + 10).into_bytes();
        long.push(b'\n');
        let (lines, used) = split_lines(&long, 0, usize::MAX);
        assert_eq!(used, long.len());
        assert!(lines.iter().all(|(l, _)| l.len() <= CHUNK));
        assert!(lines.iter().all(|(l, _)| std::str::from_utf8(l).is_ok()));
        assert_eq!(lines.last().map(|(_, end)| *end), Some(long.len() as u64));
    }

    #[test]
    fn every_controller_event_of_a_run_names_it() {
        let run = RunId::from(7);
        let event = ControllerEvent::RunFinished {
            pipeline: "p".into(),
            run,
            phase: crate::status::RunPhase::Succeeded,
        };
        assert_eq!(
            change_of(&event),
            Some(Change {
                pipeline: Some("p".into()),
                run: Some(run)
            })
        );
        assert_eq!(
            change_of(&ControllerEvent::Reconciled {
                took: Duration::ZERO
            }),
            None
        );
    }

    #[tokio::test]
    async fn a_lagging_subscriber_misses_notices_and_the_sender_never_waits() {
        let changes = Changes::new();
        let mut rx = changes.subscribe();
        let event = ControllerEvent::Deleted {
            pipeline: "p".into(),
        };
        for _ in 0..BACKLOG * 4 {
            changes.observe(&event);
        }
        assert!(matches!(
            rx.recv().await,
            Err(broadcast::error::RecvError::Lagged(_))
        ));
        assert!(rx.recv().await.is_ok(), "it goes on after the gap");
    }
}
