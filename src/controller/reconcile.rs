//! The reconcile decision: a pure function of what the folder says, what the store and this
//! controller's runs say, and the time, returning the actions to take and when to look again (as
//! kube-runtime's `reconcile` returns an `Action`). It reads nothing and writes nothing: the actor
//! in `mod.rs` gathers the [`Observed`] state, calls [`decide`] and carries the actions out in
//! order. Recovery at start and what a run's end does are the actor's, not decided here.
//!
//! Overlap (`concurrencyPolicy`, DESIGN 11) is decided here too: a run in the way is this
//! controller's own or one another live process (an `executioner run`) owns in the same state
//! folder. `Forbid` skips a due tick (recorded), `Replace` cancels the run in the way and starts
//! the new one after it, `Allow` starts alongside a foreground run and queues behind one of its
//! own (the controller drives one run per pipeline at a time). A `rerun` is queued behind a run
//! under `Forbid` and `Allow`, and replaces it under `Replace`. `suspend` starts nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::schedule::{Due, Schedule};
use crate::spec::{Catchup, ConcurrencyPolicy, OnSpecChange};
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
    /// Runs that another live process (a foreground `executioner run`) drives in this state
    /// folder, by pipeline (the newest one of each).
    pub elsewhere: HashMap<String, RunId>,
    /// Runs of `elsewhere` whose owner could not be asked to cancel (`Replace`): waited for.
    pub uncancellable: HashSet<RunId>,
    /// The pipelines last seen suspended (a change rewrites the status file).
    pub suspended: HashSet<String>,
    /// Runs an `executioner run` under `concurrencyPolicy: Replace` asked this controller to cancel.
    pub cancel_requested: HashSet<RunId>,
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
    RerunRequested {
        or_tick: bool,
    },
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
    /// A schedule tick while the pipeline runs (`Allow` or `Replace`): one queued rerun.
    RequestRerun { pipeline: String },
    /// A due tick not run because run `run` goes on (`concurrencyPolicy: Forbid`): recorded as an
    /// audit event of that run.
    SkipTick {
        pipeline: String,
        tick: NaiveDateTime,
        run: RunId,
    },
    /// Cancels a run that another process drives (a foreground `run`, `Replace`): its owner is
    /// asked to stop it as a user's cancel.
    CancelElsewhere { pipeline: String, run: RunId },
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
        decide_pipeline(d, generation, observed, now, &mut out);
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
    // Suspended or resumed: the status file says so.
    let now_suspended = suspended(folder);
    let mut flipped: Vec<&String> = now_suspended
        .symmetric_difference(&observed.suspended)
        .filter(|n| folder.desired.contains_key(*n))
        .collect();
    flipped.sort();
    for name in flipped {
        out.actions.push(Action::WriteStatus {
            pipeline: name.clone(),
        });
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

/// One pipeline of the folder: what its runs, its schedule and a rerun request call for.
fn decide_pipeline(
    d: &Desired,
    generation: i64,
    observed: &Observed,
    now: DateTime<Utc>,
    out: &mut Decision,
) {
    let spec = &d.manifest.spec;
    let name = &d.name;
    let row = observed.rows.get(name);
    let (due, wait, latest_tick) = schedule_tick(d, row, now);
    // Under `catchup: All`, a tick owed from the past (a later one has passed): it waits its
    // turn behind the run (a catch-up run) instead of replacing it.
    let owed_past = |tick| spec.catchup == crate::spec::Catchup::All && latest_tick != Some(tick);
    out.requeue_within(wait);
    let remember = |out: &mut Decision, tick| {
        out.actions.push(Action::RememberTick {
            pipeline: name.clone(),
            tick,
        })
    };
    let launch = |out: &mut Decision, why| {
        out.actions.push(Action::Launch {
            pipeline: name.clone(),
            generation,
            why,
        })
    };
    let rerun_requested = row.is_some_and(|r| r.rerun_requested);
    let active = observed.active.get(name);

    // A spec change under `onSpecChange: replace` cancels this controller's run (suspended or
    // not: the user asked for the new spec).
    if let Some(a) = active
        && a.generation < generation
        && spec.on_spec_change == OnSpecChange::Replace
        && !a.cancelling
    {
        out.actions.push(Action::Cancel {
            pipeline: name.clone(),
            run: a.run,
            why: "replaced by a new generation",
        });
    }

    // An `executioner run` of it under `Replace` asked for this run to make way.
    if let Some(a) = active
        && observed.cancel_requested.contains(&a.run)
        && !a.cancelling
    {
        out.actions.push(Action::Cancel {
            pipeline: name.clone(),
            run: a.run,
            why: "replaced by `executioner run` (concurrencyPolicy: Replace)",
        });
    }

    if spec.suspend {
        // Ticks pass without a run and are not owed after `unsuspend`; a rerun request waits.
        match due {
            Some(Due::Remember(tick) | Due::Run(tick) | Due::Missed(tick)) => remember(out, tick),
            Some(Due::Nothing) | None => {}
        }
        return;
    }

    // The run in the way: this controller's, else one a foreground process drives.
    let elsewhere = observed.elsewhere.get(name).copied();
    let in_the_way = active.map(|a| a.run).or(elsewhere);
    let policy = spec.concurrency_policy;
    let replace = |out: &mut Decision| match active {
        Some(a) if !a.cancelling => out.actions.push(Action::Cancel {
            pipeline: name.clone(),
            run: a.run,
            why: "replaced by a new run (concurrencyPolicy: Replace)",
        }),
        Some(_) => {}
        None => match elsewhere {
            // Its owner could not be signalled: its end is waited for, not polled for.
            Some(run) if observed.uncancellable.contains(&run) => {
                out.requeue_within(Some(BLOCKED_POLL))
            }
            Some(run) => {
                out.actions.push(Action::CancelElsewhere {
                    pipeline: name.clone(),
                    run,
                });
                // Its owner stops it on its own time: look again soon.
                out.requeue_within(Some(ELSEWHERE_POLL));
            }
            None => {}
        },
    };

    if let Some(running) = in_the_way {
        // Only a foreground run is in the way: `Allow` starts alongside it.
        let alongside = active.is_none() && policy == ConcurrencyPolicy::Allow;
        match due {
            Some(Due::Run(tick)) => match policy {
                // `catchup: All` owes every tick: it waits for the run instead of being skipped.
                ConcurrencyPolicy::Forbid if spec.catchup == crate::spec::Catchup::All => {}
                ConcurrencyPolicy::Forbid => {
                    remember(out, tick);
                    out.actions.push(Action::SkipTick {
                        pipeline: name.clone(),
                        tick,
                        run: running,
                    });
                }
                // Nor is it folded into one queued run behind this controller's run.
                ConcurrencyPolicy::Allow
                    if !alongside && spec.catchup == crate::spec::Catchup::All => {}
                ConcurrencyPolicy::Allow if alongside => {
                    remember(out, tick);
                    launch(out, Why::Schedule);
                    return;
                }
                ConcurrencyPolicy::Allow => {
                    remember(out, tick);
                    out.actions.push(Action::RequestRerun {
                        pipeline: name.clone(),
                    });
                }
                ConcurrencyPolicy::Replace if owed_past(tick) => {}
                ConcurrencyPolicy::Replace => {
                    remember(out, tick);
                    replace(out);
                    out.actions.push(Action::RequestRerun {
                        pipeline: name.clone(),
                    });
                }
            },
            Some(Due::Remember(tick) | Due::Missed(tick)) => remember(out, tick),
            Some(Due::Nothing) | None => {}
        }
        if active.is_some() {
            // A rerun waits for this controller's run to end (queued), or replaces it.
            if rerun_requested && policy == ConcurrencyPolicy::Replace {
                replace(out);
            }
            return;
        }
        // A foreground run only: the generation's own run and reruns follow the policy.
        let wanted = rerun_requested || observed.latest.get(name) == Some(&LatestRun::None);
        match policy {
            ConcurrencyPolicy::Forbid => {
                // Its end is no event of ours: look again soon for what waits on it.
                if wanted {
                    out.requeue_within(Some(BLOCKED_POLL));
                }
                return;
            }
            ConcurrencyPolicy::Replace => {
                if wanted {
                    replace(out);
                }
                return;
            }
            ConcurrencyPolicy::Allow => {}
        }
    }

    let Some(&latest) = observed.latest.get(name) else {
        return;
    };
    let tick_due = match due {
        Some(Due::Run(tick)) if in_the_way.is_none() => {
            remember(out, tick);
            true
        }
        Some(Due::Remember(tick) | Due::Missed(tick)) if in_the_way.is_none() => {
            remember(out, tick);
            false
        }
        // Already decided above (a foreground run alongside, `Allow`).
        Some(Due::Run(_) | Due::Remember(_) | Due::Missed(_) | Due::Nothing) | None => false,
    };
    match latest {
        LatestRun::None => launch(out, Why::NewGeneration),
        LatestRun::Unfinished => {}
        LatestRun::Terminal if rerun_requested => {
            launch(out, Why::RerunRequested { or_tick: tick_due })
        }
        LatestRun::Terminal if tick_due => launch(out, Why::Schedule),
        LatestRun::Terminal => {}
    }
}

/// How soon to look again after asking another process to cancel its run.
pub const ELSEWHERE_POLL: Duration = Duration::from_millis(200);

/// How often to look again while a run or a new generation waits for a foreground run to end.
pub const BLOCKED_POLL: Duration = Duration::from_secs(1);

/// The suspended pipelines of the folder: what is remembered after a pass.
pub fn suspended(folder: &Folder) -> HashSet<String> {
    folder
        .desired
        .values()
        .filter(|d| d.manifest.spec.suspend)
        .map(|d| d.name.clone())
        .collect()
}

/// The invalid manifests of the folder (source -> message): what is reported after a pass.
pub fn invalid_sources(folder: &Folder) -> HashMap<String, String> {
    folder
        .invalid
        .iter()
        .map(|i| (i.source.clone(), i.message.clone()))
        .collect()
}

/// What the schedule owes now (under `catchup` and `startingDeadline`), how long until the
/// next tick, and (under `catchup: All`) the latest tick since the last one acted on, to tell a
/// tick due now from one owed from the past. The store keeps the last tick as the wall-clock
/// time it was in the schedule's zone (labelled UTC): ticks are compared as wall-clock times.
fn schedule_tick(
    d: &Desired,
    row: Option<&PipelineRow>,
    now: DateTime<Utc>,
) -> (Option<Due>, Option<Duration>, Option<NaiveDateTime>) {
    let Some(text) = &d.manifest.spec.schedule else {
        return (None, None, None);
    };
    let Ok(schedule) = Schedule::parse(text) else {
        return (None, None, None);
    };
    let last_tick = row.and_then(|r| r.last_tick).and_then(|t| {
        chrono::DateTime::from_timestamp(t.unix_timestamp(), 0).map(|at| at.naive_utc())
    });
    let wait = schedule.next_tick(now).map(|(_, at)| {
        (at - now).to_std().unwrap_or(Duration::from_secs(1)) + Duration::from_millis(5)
    });
    let spec = &d.manifest.spec;
    let deadline = spec.starting_deadline.map(|d| d.as_std());
    let due = schedule.catch_up(last_tick, now, spec.catchup, deadline);
    let latest = match spec.catchup {
        crate::spec::Catchup::All => match schedule.catch_up(last_tick, now, Catchup::One, None) {
            Due::Run(tick) => Some(tick),
            Due::Remember(_) | Due::Missed(_) | Due::Nothing => None,
        },
        crate::spec::Catchup::One | crate::spec::Catchup::None => None,
    };
    (Some(due), wait, latest)
}

#[cfg(test)]
mod tests {
    //! The decision with tokio's paused clock: time moves only by `advance`, so files being
    //! written, parse retries and schedule ticks are decided at exact instants, with no sleeps.

    use std::path::Path;

    use tokio::time::{Instant, advance};

    use super::*;
    use crate::controller::folder::{FolderReader, PARSE_RETRY, WRITE_QUIET};
    use crate::controller::permissions::Trust;
    use crate::validate::Options;

    /// A wall clock that moves with tokio's (paused) one, from a known minute.
    struct Clock {
        start: Instant,
        wall: DateTime<Utc>,
    }

    impl Clock {
        fn new() -> Self {
            let wall = "2026-07-01T10:20:30Z".parse().unwrap();
            Clock {
                start: Instant::now(),
                wall,
            }
        }

        fn now(&self) -> DateTime<Utc> {
            self.wall + chrono::Duration::from_std(self.start.elapsed()).unwrap()
        }
    }

    fn manifest(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n{spec}  jobs:\n    - {{id: a, command: \"true\"}}\n"
        )
    }

    fn reader(dir: &Path) -> FolderReader {
        let trust = Trust::from_config(&crate::config::SecurityConfig::default()).unwrap();
        FolderReader::new(dir.to_owned(), Options::default(), trust)
    }

    fn read(reader: &mut FolderReader) -> Snapshot {
        reader.read(&HashMap::new()).unwrap()
    }

    fn row(name: &str, generation: i64) -> PipelineRow {
        PipelineRow {
            name: name.to_owned(),
            generation,
            spec_hash: String::new(),
            source: format!("{name}.yaml"),
            deleted: false,
            rerun_requested: false,
            last_tick: None,
            updated_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn observed(
        generations: &[(&str, i64)],
        latest: &[(&str, LatestRun)],
        active: &[(&str, i64, i64)],
    ) -> Observed {
        Observed {
            rows: generations
                .iter()
                .map(|(n, g)| ((*n).to_owned(), row(n, *g)))
                .collect(),
            generations: generations
                .iter()
                .map(|(n, g)| ((*n).to_owned(), *g))
                .collect(),
            latest: latest.iter().map(|(n, l)| ((*n).to_owned(), *l)).collect(),
            active: active
                .iter()
                .map(|(n, run, generation)| {
                    let a = ActiveRun {
                        run: RunId::from(*run),
                        generation: *generation,
                        cancelling: false,
                    };
                    ((*n).to_owned(), a)
                })
                .collect(),
            reported_invalid: HashMap::new(),
            elsewhere: HashMap::new(),
            uncancellable: HashSet::new(),
            suspended: HashSet::new(),
            cancel_requested: HashSet::new(),
        }
    }

    fn launch(pipeline: &str, generation: i64, why: Why) -> Action {
        Action::Launch {
            pipeline: pipeline.to_owned(),
            generation,
            why,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_manifest_starts_a_run_of_its_generation() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.yaml"), manifest("a", "")).unwrap();
        let clock = Clock::new();
        let snapshot = read(&mut reader(tmp.path()));
        let seen = observed(&[("a", 1)], &[("a", LatestRun::None)], &[]);
        let decision = decide(&snapshot, &seen, clock.now());
        assert_eq!(
            decision,
            Decision {
                actions: vec![launch("a", 1, Why::NewGeneration)],
                requeue: None,
            }
        );
        // Its run terminal: nothing more to do, and nothing to come back for.
        let seen = observed(&[("a", 1)], &[("a", LatestRun::Terminal)], &[]);
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
        // Left running by another process (a foreground `run`): left alone.
        let seen = observed(&[("a", 1)], &[("a", LatestRun::Unfinished)], &[]);
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_spec_change_under_queue_waits_for_the_run_then_starts_the_new_generation() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("a.yaml"), manifest("a", "")).unwrap();
        let clock = Clock::new();
        let snapshot = read(&mut reader(tmp.path()));
        // Generation 2 while run 7 of generation 1 goes on: it is not touched.
        let seen = observed(&[("a", 2)], &[], &[("a", 7, 1)]);
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
        // Once it ended, generation 2 gets its run.
        let seen = observed(&[("a", 2)], &[("a", LatestRun::None)], &[]);
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![launch("a", 2, Why::NewGeneration)]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_spec_change_under_replace_cancels_the_run_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("a.yaml"),
            manifest("a", "  onSpecChange: replace\n"),
        )
        .unwrap();
        let clock = Clock::new();
        let snapshot = read(&mut reader(tmp.path()));
        let mut seen = observed(&[("a", 2)], &[], &[("a", 7, 1)]);
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![Action::Cancel {
                pipeline: "a".into(),
                run: RunId::from(7),
                why: "replaced by a new generation",
            }]
        );
        // Asked already: not asked again while it stops.
        seen.active.get_mut("a").unwrap().cancelling = true;
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
        // The run of the current generation is not replaced by itself.
        let seen = observed(&[("a", 2)], &[], &[("a", 8, 2)]);
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
    }

    #[tokio::test(start_paused = true)]
    async fn an_invalid_manifest_while_a_run_goes_on_is_reported_once_and_the_run_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.yaml");
        std::fs::write(&file, manifest("a", "")).unwrap();
        let clock = Clock::new();
        let mut reader = reader(tmp.path());
        read(&mut reader);
        std::fs::write(&file, manifest("a", "  bogus: 1\n")).unwrap();
        let snapshot = read(&mut reader);
        assert!(snapshot.folder.desired.is_empty());
        let mut seen = observed(&[("a", 1)], &[], &[("a", 7, 1)]);
        let decision = decide(&snapshot, &seen, clock.now());
        let [
            Action::WriteStatus { pipeline },
            Action::ReportInvalid { source, message },
        ] = decision.actions.as_slice()
        else {
            panic!("{decision:?}");
        };
        assert_eq!((pipeline.as_str(), source.as_str()), ("a", "a.yaml"));
        assert!(message.contains("bogus"), "{message}");
        // Neither cancelled nor deleted; reported once.
        seen.reported_invalid = invalid_sources(&snapshot.folder);
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
        // Fixed: its status drops the Invalid phase; the run still goes on.
        std::fs::write(&file, manifest("a", "")).unwrap();
        let snapshot = read(&mut reader);
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![Action::WriteStatus {
                pipeline: "a".into()
            }]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_deleted_manifest_cancels_its_run_and_deletes_the_pipeline() {
        let tmp = tempfile::tempdir().unwrap();
        let clock = Clock::new();
        let snapshot = read(&mut reader(tmp.path()));
        let mut seen = observed(&[("a", 1), ("b", 3)], &[], &[("a", 7, 1)]);
        seen.generations.clear();
        seen.rows.insert(
            "gone".into(),
            PipelineRow {
                deleted: true,
                ..row("gone", 2)
            },
        );
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![
                Action::Cancel {
                    pipeline: "a".into(),
                    run: RunId::from(7),
                    why: "manifest deleted",
                },
                Action::MarkDeleted {
                    pipeline: "a".into()
                },
                Action::MarkDeleted {
                    pipeline: "b".into()
                },
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_schedule_tick_starts_one_run_and_while_running_is_skipped() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("a.yaml"),
            manifest("a", "  schedule: \"* * * * *\"\n"),
        )
        .unwrap();
        let clock = Clock::new();
        let snapshot = read(&mut reader(tmp.path()));
        let tick = |at: &str| chrono::NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").unwrap();
        let stored = |t: NaiveDateTime| {
            time::OffsetDateTime::from_unix_timestamp(t.and_utc().timestamp()).unwrap()
        };
        // First sight (10:20:30): the 10:20 tick is remembered, not owed; back at 10:21.
        let mut seen = observed(&[("a", 1)], &[("a", LatestRun::Terminal)], &[]);
        let decision = decide(&snapshot, &seen, clock.now());
        let remember = |at| Action::RememberTick {
            pipeline: "a".into(),
            tick: tick(at),
        };
        assert_eq!(decision.actions, vec![remember("2026-07-01 10:20")]);
        assert_eq!(decision.requeue, Some(Duration::from_millis(30_005)));
        seen.rows.get_mut("a").unwrap().last_tick = Some(stored(tick("2026-07-01 10:20")));
        // Between ticks: nothing.
        advance(Duration::from_secs(20)).await;
        let decision = decide(&snapshot, &seen, clock.now());
        assert_eq!(decision.actions, vec![]);
        assert_eq!(decision.requeue, Some(Duration::from_millis(10_005)));
        // 10:21:00 passed (two ticks missed): one run.
        advance(Duration::from_secs(70)).await;
        let decision = decide(&snapshot, &seen, clock.now());
        assert_eq!(
            decision.actions,
            vec![remember("2026-07-01 10:22"), launch("a", 1, Why::Schedule)]
        );
        assert_eq!(decision.requeue, Some(Duration::from_millis(60_005)));
        // The same tick while a run goes on (`concurrencyPolicy: Forbid`, the default): skipped.
        seen.active = observed(&[], &[], &[("a", 7, 1)]).active;
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![
                remember("2026-07-01 10:22"),
                Action::SkipTick {
                    pipeline: "a".into(),
                    tick: tick("2026-07-01 10:22"),
                    run: RunId::from(7),
                }
            ]
        );
        // A rerun requested (the queued one) after the run: one run for both it and the tick.
        seen.active.clear();
        seen.rows.get_mut("a").unwrap().rerun_requested = true;
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![
                remember("2026-07-01 10:22"),
                launch("a", 1, Why::RerunRequested { or_tick: true })
            ]
        );
    }

    /// A per-minute pipeline with `extra` spec lines, seen at 10:20:30 with the 10:19 tick
    /// remembered: the 10:20 tick is due.
    fn ticking(extra: &str) -> (tempfile::TempDir, Snapshot, Observed, Clock) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("a.yaml"),
            manifest("a", &format!("  schedule: \"* * * * *\"\n{extra}")),
        )
        .unwrap();
        let snapshot = read(&mut reader(tmp.path()));
        let mut seen = observed(&[("a", 1)], &[("a", LatestRun::Terminal)], &[]);
        seen.rows.get_mut("a").unwrap().last_tick =
            Some(time::macros::datetime!(2026-07-01 10:19 UTC));
        seen.suspended = suspended(&snapshot.folder);
        (tmp, snapshot, seen, Clock::new())
    }

    fn tick_at(at: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(at, "%Y-%m-%d %H:%M").unwrap()
    }

    fn remember(at: &str) -> Action {
        Action::RememberTick {
            pipeline: "a".into(),
            tick: tick_at(at),
        }
    }

    fn rerun() -> Action {
        Action::RequestRerun {
            pipeline: "a".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_tick_during_a_run_of_this_controller_follows_the_concurrency_policy() {
        let cancel = Action::Cancel {
            pipeline: "a".into(),
            run: RunId::from(7),
            why: "replaced by a new run (concurrencyPolicy: Replace)",
        };
        for (policy, want) in [
            (
                "",
                vec![
                    remember("2026-07-01 10:20"),
                    Action::SkipTick {
                        pipeline: "a".into(),
                        tick: tick_at("2026-07-01 10:20"),
                        run: RunId::from(7),
                    },
                ],
            ),
            ("Allow", vec![remember("2026-07-01 10:20"), rerun()]),
            (
                "Replace",
                vec![remember("2026-07-01 10:20"), cancel.clone(), rerun()],
            ),
            // `catchup: All` owes every tick: it waits for the run, neither skipped nor remembered.
            ("Forbid\n  catchup: All", vec![]),
            ("Allow\n  catchup: All", vec![]),
        ] {
            let extra = match policy {
                "" => String::new(),
                p => format!("  concurrencyPolicy: {p}\n"),
            };
            let (_tmp, snapshot, mut seen, clock) = ticking(&extra);
            seen.active = observed(&[], &[], &[("a", 7, 1)]).active;
            assert_eq!(
                decide(&snapshot, &seen, clock.now()).actions,
                want,
                "{policy}"
            );
            // Replace asks once: a run already stopping is not cancelled again.
            if policy == "Replace" {
                seen.active.get_mut("a").unwrap().cancelling = true;
                assert_eq!(
                    decide(&snapshot, &seen, clock.now()).actions,
                    vec![remember("2026-07-01 10:20"), rerun()]
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreground_run_in_the_same_state_is_in_the_way_of_ticks_new_generations_and_reruns()
    {
        let launch_tick = launch("a", 1, Why::Schedule);
        let cancel_there = Action::CancelElsewhere {
            pipeline: "a".into(),
            run: RunId::from(3),
        };
        for (policy, want) in [
            (
                "Forbid",
                vec![
                    remember("2026-07-01 10:20"),
                    Action::SkipTick {
                        pipeline: "a".into(),
                        tick: tick_at("2026-07-01 10:20"),
                        run: RunId::from(3),
                    },
                ],
            ),
            ("Allow", vec![remember("2026-07-01 10:20"), launch_tick]),
            (
                "Replace",
                vec![remember("2026-07-01 10:20"), cancel_there.clone(), rerun()],
            ),
        ] {
            let (_tmp, snapshot, mut seen, clock) =
                ticking(&format!("  concurrencyPolicy: {policy}\n"));
            seen.elsewhere.insert("a".into(), RunId::from(3));
            let decision = decide(&snapshot, &seen, clock.now());
            assert_eq!(decision.actions, want, "{policy}");
            if policy == "Replace" {
                assert_eq!(decision.requeue, Some(ELSEWHERE_POLL));
            }
        }
        // No tick due: a new generation (or a rerun) waits under Forbid, starts alongside under
        // Allow, and has the foreground run cancelled first under Replace.
        for (policy, want) in [
            ("Forbid", vec![]),
            ("Allow", vec![launch("a", 1, Why::NewGeneration)]),
            ("Replace", vec![cancel_there.clone()]),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(
                tmp.path().join("a.yaml"),
                manifest("a", &format!("  concurrencyPolicy: {policy}\n")),
            )
            .unwrap();
            let snapshot = read(&mut reader(tmp.path()));
            let mut seen = observed(&[("a", 1)], &[("a", LatestRun::None)], &[]);
            seen.elsewhere.insert("a".into(), RunId::from(3));
            let clock = Clock::new();
            let decision = decide(&snapshot, &seen, clock.now());
            assert_eq!(decision.actions, want, "{policy}");
            let requeue = match policy {
                "Forbid" => Some(BLOCKED_POLL),
                "Replace" => Some(ELSEWHERE_POLL),
                _ => None,
            };
            assert_eq!(decision.requeue, requeue, "{policy}");
            // Once it ended, the generation gets its run whatever the policy.
            seen.elsewhere.clear();
            assert_eq!(
                decide(&snapshot, &seen, clock.now()).actions,
                vec![launch("a", 1, Why::NewGeneration)]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreground_run_under_replace_has_this_controllers_run_cancelled_once() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("a.yaml"),
            manifest("a", "  concurrencyPolicy: Replace\n"),
        )
        .unwrap();
        let snapshot = read(&mut reader(tmp.path()));
        let mut seen = observed(&[("a", 1)], &[], &[("a", 7, 1)]);
        seen.cancel_requested.insert(RunId::from(7));
        let clock = Clock::new();
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![Action::Cancel {
                pipeline: "a".into(),
                run: RunId::from(7),
                why: "replaced by `executioner run` (concurrencyPolicy: Replace)",
            }]
        );
        seen.active.get_mut("a").unwrap().cancelling = true;
        assert_eq!(decide(&snapshot, &seen, clock.now()), Decision::default());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rerun_waits_for_the_run_under_forbid_and_replaces_it_under_replace() {
        for (policy, want) in [
            ("Forbid", vec![]),
            ("Allow", vec![]),
            (
                "Replace",
                vec![Action::Cancel {
                    pipeline: "a".into(),
                    run: RunId::from(7),
                    why: "replaced by a new run (concurrencyPolicy: Replace)",
                }],
            ),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            std::fs::write(
                tmp.path().join("a.yaml"),
                manifest("a", &format!("  concurrencyPolicy: {policy}\n")),
            )
            .unwrap();
            let snapshot = read(&mut reader(tmp.path()));
            let mut seen = observed(&[("a", 1)], &[], &[("a", 7, 1)]);
            seen.rows.get_mut("a").unwrap().rerun_requested = true;
            let clock = Clock::new();
            assert_eq!(
                decide(&snapshot, &seen, clock.now()).actions,
                want,
                "{policy}"
            );
            // The run ended: the queued rerun starts.
            seen.active.clear();
            seen.latest.insert("a".into(), LatestRun::Terminal);
            assert_eq!(
                decide(&snapshot, &seen, clock.now()).actions,
                vec![launch("a", 1, Why::RerunRequested { or_tick: false })]
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_suspended_pipeline_starts_nothing_lets_its_run_finish_and_resumes_when_unsuspended()
    {
        let (tmp, snapshot, mut seen, clock) = ticking("  suspend: true\n");
        // Suspended just now: its status says so; the due tick passes without a run.
        seen.suspended.clear();
        let decision = decide(&snapshot, &seen, clock.now());
        assert_eq!(
            decision.actions,
            vec![
                remember("2026-07-01 10:20"),
                Action::WriteStatus {
                    pipeline: "a".into()
                }
            ]
        );
        seen.suspended = suspended(&snapshot.folder);
        seen.rows.get_mut("a").unwrap().last_tick =
            Some(time::macros::datetime!(2026-07-01 10:20 UTC));
        // Ticks, a rerun request and a generation without a run: nothing starts.
        advance(Duration::from_secs(60)).await;
        seen.rows.get_mut("a").unwrap().rerun_requested = true;
        seen.latest.insert("a".into(), LatestRun::None);
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![remember("2026-07-01 10:21")]
        );
        // A run going on is not cancelled.
        seen.active = observed(&[], &[], &[("a", 7, 1)]).active;
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![remember("2026-07-01 10:21")]
        );
        // Unsuspended (the 10:21 tick remembered): the status changes, and what waited starts.
        seen.active.clear();
        seen.rows.get_mut("a").unwrap().last_tick =
            Some(time::macros::datetime!(2026-07-01 10:21 UTC));
        std::fs::write(
            tmp.path().join("a.yaml"),
            manifest("a", "  schedule: \"* * * * *\"\n"),
        )
        .unwrap();
        let snapshot = read(&mut reader(tmp.path()));
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![
                launch("a", 1, Why::NewGeneration),
                Action::WriteStatus {
                    pipeline: "a".into()
                }
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_foreground_run_whose_owner_cannot_be_signalled_is_waited_for_not_polled() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("a.yaml"),
            manifest("a", "  concurrencyPolicy: Replace\n"),
        )
        .unwrap();
        let snapshot = read(&mut reader(tmp.path()));
        let mut seen = observed(&[("a", 1)], &[("a", LatestRun::None)], &[]);
        seen.elsewhere.insert("a".into(), RunId::from(3));
        seen.uncancellable.insert(RunId::from(3));
        let decision = decide(&snapshot, &seen, Clock::new().now());
        assert_eq!(decision.actions, vec![]);
        assert_eq!(decision.requeue, Some(BLOCKED_POLL));
    }

    #[tokio::test(start_paused = true)]
    async fn under_replace_and_catchup_all_owed_ticks_wait_for_the_catch_up_run_and_a_due_one_replaces_it()
     {
        let (_tmp, snapshot, mut seen, clock) =
            ticking("  concurrencyPolicy: Replace\n  catchup: All\n");
        seen.active = observed(&[], &[], &[("a", 7, 1)]).active;
        // Run 7 is the 10:10 catch-up run; 10:11 is owed, not due now: it waits its turn.
        seen.rows.get_mut("a").unwrap().last_tick =
            Some(time::macros::datetime!(2026-07-01 10:10 UTC));
        assert_eq!(decide(&snapshot, &seen, clock.now()).actions, vec![]);
        // Caught up to 10:19: the 10:20 tick is due now and replaces the run.
        seen.rows.get_mut("a").unwrap().last_tick =
            Some(time::macros::datetime!(2026-07-01 10:19 UTC));
        let cancel = Action::Cancel {
            pipeline: "a".into(),
            run: RunId::from(7),
            why: "replaced by a new run (concurrencyPolicy: Replace)",
        };
        assert_eq!(
            decide(&snapshot, &seen, clock.now()).actions,
            vec![remember("2026-07-01 10:20"), cancel, rerun()]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn missed_ticks_follow_catchup_and_the_starting_deadline() {
        // Last tick 10:10, now 10:20:30: ten ticks missed.
        let at_1010 = Some(time::macros::datetime!(2026-07-01 10:10 UTC));
        for (extra, want) in [
            (
                "",
                vec![remember("2026-07-01 10:20"), launch("a", 1, Why::Schedule)],
            ),
            ("  catchup: None\n", vec![remember("2026-07-01 10:20")]),
            (
                "  catchup: All\n",
                vec![remember("2026-07-01 10:11"), launch("a", 1, Why::Schedule)],
            ),
            (
                "  catchup: All\n  startingDeadline: 3m\n",
                vec![remember("2026-07-01 10:18"), launch("a", 1, Why::Schedule)],
            ),
            (
                "  startingDeadline: 10s\n",
                vec![remember("2026-07-01 10:20")],
            ),
        ] {
            let (_tmp, snapshot, mut seen, clock) = ticking(extra);
            seen.rows.get_mut("a").unwrap().last_tick = at_1010;
            assert_eq!(
                decide(&snapshot, &seen, clock.now()).actions,
                want,
                "{extra}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_being_written_is_looked_at_again_when_it_has_been_quiet() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.yaml");
        std::fs::write(&file, manifest("a", "")).unwrap();
        let clock = Clock::new();
        let mut reader = reader(tmp.path());
        let event = notify::Event::new(notify::EventKind::Modify(notify::event::ModifyKind::Data(
            notify::event::DataChange::Any,
        )))
        .add_path(file.clone());
        reader.note_event(&event);
        let seen = observed(&[], &[], &[]);
        // Held back (not launched while it may be half-written); back when quiet.
        let decision = decide(&read(&mut reader), &seen, clock.now());
        assert_eq!(
            decision,
            Decision {
                actions: vec![],
                requeue: Some(WRITE_QUIET)
            }
        );
        advance(Duration::from_millis(1500)).await;
        let decision = decide(&read(&mut reader), &seen, clock.now());
        assert_eq!(
            decision.requeue,
            Some(WRITE_QUIET - Duration::from_millis(1500))
        );
        // Quiet long enough (the close never came): read as it is.
        advance(Duration::from_millis(500)).await;
        let snapshot = read(&mut reader);
        assert!(snapshot.folder.desired.contains_key("a"));
        assert_eq!(snapshot.retry_in, None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_parse_failure_is_retried_before_it_is_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("a.yaml");
        std::fs::write(&file, manifest("a", "")).unwrap();
        let clock = Clock::new();
        let mut reader = reader(tmp.path());
        read(&mut reader);
        std::fs::write(&file, "apiVersion: executioner.dev/v1\nkind: [\n").unwrap();
        // The first failure keeps the previous view, and asks to be read again.
        let snapshot = read(&mut reader);
        assert!(snapshot.folder.desired.contains_key("a"));
        assert!(reader.retrying());
        let seen = observed(&[("a", 1)], &[("a", LatestRun::Terminal)], &[]);
        assert_eq!(
            decide(&snapshot, &seen, clock.now()),
            Decision {
                actions: vec![],
                requeue: Some(PARSE_RETRY)
            }
        );
        advance(PARSE_RETRY / 3).await;
        let snapshot = read(&mut reader);
        assert_eq!(snapshot.retry_in, Some(PARSE_RETRY - PARSE_RETRY / 3));
        // Still failing after the retry time: reported Invalid, and nothing to come back for.
        advance(PARSE_RETRY).await;
        let snapshot = read(&mut reader);
        let decision = decide(&snapshot, &seen, clock.now());
        assert_eq!(decision.requeue, None);
        assert!(matches!(
            decision.actions.as_slice(),
            [Action::WriteStatus { .. }, Action::ReportInvalid { .. }]
        ));
    }
}
