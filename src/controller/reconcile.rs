//! The reconcile decision: a pure function of what the folder says, what the store and this
//! controller's runs say, and the time, returning the actions to take and when to look again (as
//! kube-runtime's `reconcile` returns an `Action`). It reads nothing and writes nothing: the actor
//! in `mod.rs` gathers the [`Observed`] state, calls [`decide`] and carries the actions out in
//! order. Recovery at start and what a run's end does are the actor's, not decided here.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::schedule::{Due, Schedule};
use crate::spec::OnSpecChange;
use crate::store::{PipelineRow, RunId};

use super::folder::{Desired, Folder, Snapshot};

/// What the store and this controller say, gathered by the actor before deciding.
#[derive(Debug, Default)]
pub struct Observed {
    /// The store's pipeline rows as they were at the start of the pass, by name.
    pub rows: HashMap<String, PipelineRow>,
    /// The current generation of each pipeline of the folder (recorded in the store by the actor).
    pub generations: HashMap<String, i64>,
    /// The latest run of the current generation of each pipeline of the folder that this
    /// controller does not run.
    pub latest: HashMap<String, LatestRun>,
    /// The runs of this controller, by pipeline.
    pub active: HashMap<String, ActiveRun>,
    /// The invalid manifests last reported (source -> message).
    pub reported_invalid: HashMap<String, String>,
}

/// The latest run of a pipeline's current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatestRun {
    /// No run of this generation yet.
    None,
    /// Not ended, and not run here: left by another process (the foreground `run` owning it goes on).
    Unfinished,
    Terminal,
}

/// A run of this controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActiveRun {
    pub run: RunId,
    pub generation: i64,
    /// Its cancellation was already asked for.
    pub cancelling: bool,
}

/// Why a run is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    NewGeneration,
    /// A rerun was requested: taken from the store first (another reader may have taken it);
    /// when it is gone, the run starts for the schedule's tick if `or_tick`.
    RerunRequested { or_tick: bool },
    Schedule,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::NewGeneration => "new generation",
            Why::RerunRequested { .. } => "rerun requested",
            Why::Schedule => "schedule",
        }
    }
}

/// One thing to do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Launch {
        pipeline: String,
        generation: i64,
        why: Why,
    },
    Cancel {
        pipeline: String,
        run: RunId,
        why: &'static str,
    },
    /// A schedule tick while the pipeline runs: one queued rerun.
    RequestRerun { pipeline: String },
    /// The schedule's tick seen (due or remembered at first sight), as the store keeps it.
    RememberTick {
        pipeline: String,
        tick: NaiveDateTime,
    },
    /// Its manifest is gone: the pipeline is deleted and its status file removed.
    MarkDeleted { pipeline: String },
    /// A manifest newly invalid (or with a new problem): reported once per change.
    ReportInvalid { source: String, message: String },
    /// The status file may be stale.
    WriteStatus { pipeline: String },
}

/// What one pass decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// When to come back early (a tick, a file being written, a parse retry), if at all.
    pub requeue: Option<Duration>,
}

impl Decision {
    fn requeue_within(&mut self, after: Option<Duration>) {
        if let Some(after) = after {
            self.requeue = Some(self.requeue.map_or(after, |r| r.min(after)));
        }
    }
}

/// Decides one level-triggered pass.
pub fn decide(folder: &Snapshot, observed: &Observed, now: DateTime<Utc>) -> Decision {
    let mut out = Decision::default();
    out.requeue_within(folder.retry_in);
    let folder = &folder.folder;
    for d in folder.desired.values() {
        let Some(&generation) = observed.generations.get(&d.name) else {
            continue;
        };
        let row = observed.rows.get(&d.name);
        let (tick, wait) = schedule_tick(d, row, now);
        if let Some(a) = observed.active.get(&d.name) {
            if let Some((tick, due)) = tick {
                out.actions.push(Action::RememberTick {
                    pipeline: d.name.clone(),
                    tick,
                });
                if due {
                    out.actions.push(Action::RequestRerun {
                        pipeline: d.name.clone(),
                    });
                }
            }
            out.requeue_within(wait);
            if a.generation < generation
                && d.manifest.spec.on_spec_change == OnSpecChange::Replace
                && !a.cancelling
            {
                out.actions.push(Action::Cancel {
                    pipeline: d.name.clone(),
                    run: a.run,
                    why: "replaced by a new generation",
                });
            }
            continue;
        }
        let Some(&latest) = observed.latest.get(&d.name) else {
            continue;
        };
        if let Some((tick, _)) = tick {
            out.actions.push(Action::RememberTick {
                pipeline: d.name.clone(),
                tick,
            });
        }
        out.requeue_within(wait);
        let due = tick.is_some_and(|(_, due)| due);
        let launch = |why| Action::Launch {
            pipeline: d.name.clone(),
            generation,
            why,
        };
        match latest {
            LatestRun::None => out.actions.push(launch(Why::NewGeneration)),
            LatestRun::Unfinished => {}
            LatestRun::Terminal if row.is_some_and(|r| r.rerun_requested) => {
                out.actions
                    .push(launch(Why::RerunRequested { or_tick: due }));
            }
            LatestRun::Terminal if due => out.actions.push(launch(Why::Schedule)),
            LatestRun::Terminal => {}
        }
    }

    // Pipelines whose manifest is gone.
    let named_invalid: HashSet<&str> = folder
        .invalid
        .iter()
        .filter_map(|i| i.name.as_deref())
        .collect();
    let mut rows: Vec<&PipelineRow> = observed.rows.values().collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    for row in rows {
        if row.deleted
            || folder.desired.contains_key(&row.name)
            || named_invalid.contains(row.name.as_str())
        {
            continue;
        }
        if let Some(a) = observed.active.get(&row.name)
            && !a.cancelling
        {
            out.actions.push(Action::Cancel {
                pipeline: row.name.clone(),
                run: a.run,
                why: "manifest deleted",
            });
        }
        out.actions.push(Action::MarkDeleted {
            pipeline: row.name.clone(),
        });
    }

    // Invalid manifests: reported once per change; fixed ones drop their Invalid phase.
    for i in &folder.invalid {
        if observed.reported_invalid.get(&i.source) != Some(&i.message) {
            if let Some(n) = &i.name {
                out.actions.push(Action::WriteStatus {
                    pipeline: n.clone(),
                });
            }
            out.actions.push(Action::ReportInvalid {
                source: i.source.clone(),
                message: i.message.clone(),
            });
        }
    }
    let now_invalid = invalid_sources(folder);
    for source in observed.reported_invalid.keys() {
        if !now_invalid.contains_key(source) {
            for d in folder.desired.values().filter(|d| &d.source == source) {
                out.actions.push(Action::WriteStatus {
                    pipeline: d.name.clone(),
                });
            }
        }
    }
    out
}

/// The invalid manifests of the folder (source -> message): what is reported after a pass.
pub fn invalid_sources(folder: &Folder) -> HashMap<String, String> {
    folder
        .invalid
        .iter()
        .map(|i| (i.source.clone(), i.message.clone()))
        .collect()
}

/// The schedule's tick to remember now (and whether it is due: one run, however many were
/// missed), and how long until the next one. The store keeps the last tick as the wall-clock time
/// it was in the schedule's zone (labelled UTC): ticks are compared as wall-clock times.
fn schedule_tick(
    d: &Desired,
    row: Option<&PipelineRow>,
    now: DateTime<Utc>,
) -> (Option<(NaiveDateTime, bool)>, Option<Duration>) {
    let Some(text) = &d.manifest.spec.schedule else {
        return (None, None);
    };
    let Ok(schedule) = Schedule::parse(text) else {
        return (None, None);
    };
    let last_tick = row.and_then(|r| r.last_tick).and_then(|t| {
        chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).map(|at| at.naive_utc())
    });
    let wait = schedule.next_tick(now).map(|(_, at)| {
        (at - now).to_std().unwrap_or(Duration::from_secs(1)) + Duration::from_millis(5)
    });
    let tick = match schedule.due(last_tick, now) {
        Due::Remember(tick) => Some((tick, false)),
        Due::Run(tick) => Some((tick, true)),
        Due::Nothing => None,
    };
    (tick, wait)
}
