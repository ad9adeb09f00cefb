//! Cron schedules of pipelines: `"0 2 * * *"`, optionally prefixed with `TZ=Area/City `, and
//! their ticks.
//!
//! Ticks are wall-clock times in the schedule's zone (UTC without a prefix), computed on the
//! local calendar and compared as wall-clock times, which is what makes daylight-saving
//! transitions safe (DESIGN §5, like Vixie cron):
//! - when clocks go back, a wall-clock time already ticked is never ticked again: `30 1 * * *`
//!   runs once on that night, and a `*/15` schedule pauses for the repeated hour;
//! - when clocks go forward, a tick whose wall-clock time does not exist that night (`30 2 * * *`
//!   in Europe/Paris on the last Sunday of March) is due at the first instant after the gap.
//!
//! The controller keeps the last tick it acted on (a wall-clock time) and decides with
//! [`Schedule::catch_up`] (which missed ticks are owed, under `spec.catchup` and
//! `spec.startingDeadline`) and [`Schedule::next_tick`]. What a due tick does while a run goes on
//! (`concurrencyPolicy`) is the controller's decision, not this module's.

use std::str::FromStr;

use chrono::offset::LocalResult;
use chrono::{DateTime, Duration, NaiveDateTime, TimeZone, Timelike, Utc};

use crate::spec::Catchup;

/// What [`Schedule::due`] and [`Schedule::catch_up`] decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// First sight of the schedule: ticks before now are not owed, this one is remembered.
    Remember(NaiveDateTime),
    /// This tick is due: one run for it (with `catchup: One`, however many ticks were missed
    /// since the last one; with `All`, the oldest tick still owed, the others come after it).
    Run(NaiveDateTime),
    /// Ticks were missed and none is owed (past `startingDeadline`, or `catchup: None`): this one,
    /// the latest, is remembered and nothing runs.
    Missed(NaiveDateTime),
    Nothing,
}

/// At most this many missed ticks are caught up with `catchup: All` (the latest ones): a
/// `* * * * *` schedule down for a day would otherwise owe 1,440 runs.
pub const CATCHUP_ALL_CAP: usize = 100;

/// The shortest `startingDeadline` validation accepts.
pub const MIN_STARTING_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// With `catchup: None`, how late a tick may be seen and still run (a pass can be held up by a
/// busy machine for a few seconds; a tick missed while the controller was down is minutes late).
pub const ON_TIME: std::time::Duration = std::time::Duration::from_secs(60);

/// The macros a schedule may be instead of five fields, and the fields each stands for.
pub const MACROS: [(&str, &str); 7] = [
    ("yearly", "0 0 1 1 *"),
    ("annually", "0 0 1 1 *"),
    ("monthly", "0 0 1 * *"),
    ("weekly", "0 0 * * 0"),
    ("daily", "0 0 * * *"),
    ("midnight", "0 0 * * *"),
    ("hourly", "0 * * * *"),
];

/// The five cron fields in order, with the range of their numbers (day-of-week 7 is Sunday too).
const FIELDS: [(&str, u32, u32); 5] = [
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day-of-month", 1, 31),
    ("month", 1, 12),
    ("day-of-week", 0, 7),
];

/// Checks the numbers of one cron field against its range, so that the message names the field;
/// anything else (names such as `mon`, `L`, `#`) is left to croner.
fn check_field(field: &str, name: &str, min: u32, max: u32) -> Result<(), String> {
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(0) => return Err(format!("{name} step must be at least 1, found 0")),
                Ok(_) => {}
                Err(_) => {
                    return Err(format!(
                        "{name} step {step:?} is not a number (as in `*/15`)"
                    ));
                }
            }
        }
        let bounds: Vec<&str> = match range {
            "*" | "?" => Vec::new(),
            r => r.split('-').collect(),
        };
        for bound in &bounds {
            if let Ok(n) = bound.parse::<u32>()
                && !(min..=max).contains(&n)
            {
                return Err(format!("{name} {n} is out of range {min}-{max}"));
            }
        }
        if let [low, high] = bounds[..]
            && let (Ok(low), Ok(high)) = (low.parse::<u32>(), high.parse::<u32>())
            && low > high
        {
            return Err(format!(
                "{name} range {low}-{high} is backwards (the first number must be the smaller)"
            ));
        }
    }
    Ok(())
}

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: croner::Cron,
    /// The IANA zone of the `TZ=` prefix; `None` means UTC.
    pub time_zone: Option<chrono_tz::Tz>,
}

impl Schedule {
    /// Parses a schedule; the error is a sentence for the user.
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let trimmed = text.trim();
        let (time_zone, expr) = match trimmed.strip_prefix("TZ=") {
            Some(rest) => {
                let (zone, expr) = rest.split_once(char::is_whitespace).ok_or_else(|| {
                    format!("schedule {text:?}: expected `TZ=Area/City` followed by 5 cron fields")
                })?;
                let zone = chrono_tz::Tz::from_str(zone)
                    .map_err(|_| format!("unknown time zone {zone:?}"))?;
                (Some(zone), expr.trim())
            }
            None => (None, trimmed),
        };
        let expr = match expr.strip_prefix('@') {
            Some(name) => MACROS
                .iter()
                .find(|(macro_name, _)| macro_name.eq_ignore_ascii_case(name))
                .map(|(_, fields)| *fields)
                .ok_or_else(|| {
                    format!(
                        "schedule {text:?}: unknown macro @{name} (expected one of: {})",
                        MACROS
                            .iter()
                            .map(|(n, _)| format!("@{n}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?,
            None => expr,
        };
        let fields: Vec<&str> = expr.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "schedule {text:?}: expected 5 cron fields (minute hour day-of-month month day-of-week) or a macro such as @daily, found {}",
                fields.len()
            ));
        }
        for (field, (name, min, max)) in fields.iter().zip(FIELDS) {
            check_field(field, name, min, max).map_err(|m| format!("schedule {text:?}: {m}"))?;
        }
        let cron = croner::Cron::from_str(expr)
            .map_err(|e| format!("schedule {text:?}: not a valid cron expression ({e})"))?;
        Ok(Schedule { cron, time_zone })
    }

    /// What the schedule owes at `now`, given the last tick acted on (`None`: never seen).
    pub fn due(&self, last: Option<NaiveDateTime>, now: DateTime<Utc>) -> Due {
        match (last, self.previous_tick(now)) {
            (None, Some(tick)) => Due::Remember(tick),
            (Some(last), Some(tick)) if tick > last => Due::Run(tick),
            _ => Due::Nothing,
        }
    }

    /// What the schedule owes at `now` under `catchup` and `deadline` (a tick whose instant is
    /// older than that is not run), given the last tick acted on (`None`: never seen):
    /// - `One`: the latest tick since `last`, when it is within the deadline;
    /// - `All`: the oldest tick since `last` that is within the deadline, among the latest
    ///   [`CATCHUP_ALL_CAP`] (the next ones are owed once it is remembered);
    /// - `None`: the latest tick since `last` when no other was missed and it is at most
    ///   [`ON_TIME`] (or the deadline, when shorter) late.
    ///
    /// [`Due::Missed`] says ticks passed and none is owed.
    pub fn catch_up(
        &self,
        last: Option<NaiveDateTime>,
        now: DateTime<Utc>,
        catchup: Catchup,
        deadline: Option<std::time::Duration>,
    ) -> Due {
        let limit = match catchup {
            Catchup::All => CATCHUP_ALL_CAP,
            // One more than the one run, to tell "missed others" for `None`.
            Catchup::One | Catchup::None => 2,
        };
        let (missed, latest) = match last {
            None => return self.due(None, now),
            Some(last) => {
                let missed = self.ticks_since(last, now, limit);
                match missed.first() {
                    Some(&latest) => (missed, latest),
                    None => return Due::Nothing,
                }
            }
        };
        let window = match catchup {
            Catchup::None => Some(deadline.map_or(ON_TIME, |d| d.min(ON_TIME))),
            Catchup::One | Catchup::All => deadline,
        };
        let in_time = |tick: NaiveDateTime| {
            window.is_none_or(|window| {
                self.first_instant_showing(tick).is_some_and(|at| {
                    (now - at).to_std().unwrap_or(std::time::Duration::ZERO) <= window
                })
            })
        };
        let owed = match catchup {
            Catchup::None if missed.len() > 1 => None,
            Catchup::None | Catchup::One => Some(latest).filter(|t| in_time(*t)),
            Catchup::All => missed.iter().rev().copied().find(|t| in_time(*t)),
        };
        match owed {
            Some(tick) => Due::Run(tick),
            None => Due::Missed(latest),
        }
    }

    /// The ticks after `last` up to the wall-clock time of `now`, newest first, at most `limit`.
    fn ticks_since(
        &self,
        last: NaiveDateTime,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Vec<NaiveDateTime> {
        let mut ticks = Vec::new();
        let mut at = Utc.from_utc_datetime(&self.wall_clock(now));
        let mut inclusive = true;
        while ticks.len() < limit {
            let Ok(tick) = self.cron.find_previous_occurrence(&at, inclusive) else {
                break;
            };
            if tick.naive_utc() <= last {
                break;
            }
            ticks.push(tick.naive_utc());
            at = tick;
            inclusive = false;
        }
        ticks
    }

    /// The wall-clock time in the schedule's zone at `at`, in whole seconds (croner keeps the
    /// fraction of the time it is given in the ticks it returns, which would make every tick
    /// look later than the same one stored).
    fn wall_clock(&self, at: DateTime<Utc>) -> NaiveDateTime {
        let wall = match self.time_zone {
            Some(zone) => at.with_timezone(&zone).naive_local(),
            None => at.naive_utc(),
        };
        wall.with_nanosecond(0).unwrap_or(wall)
    }

    /// The latest tick at or before the wall-clock time of `now`.
    fn previous_tick(&self, now: DateTime<Utc>) -> Option<NaiveDateTime> {
        let wall = Utc.from_utc_datetime(&self.wall_clock(now));
        let tick = self.cron.find_previous_occurrence(&wall, true).ok()?;
        Some(tick.naive_utc())
    }

    /// The first tick after the wall-clock time of `now`, and the instant the zone's clock first
    /// shows it (or, for a time skipped by a daylight-saving gap, the end of the gap).
    pub fn next_tick(&self, now: DateTime<Utc>) -> Option<(NaiveDateTime, DateTime<Utc>)> {
        let wall = Utc.from_utc_datetime(&self.wall_clock(now));
        let tick = self
            .cron
            .find_next_occurrence(&wall, false)
            .ok()?
            .naive_utc();
        Some((tick, self.first_instant_showing(tick)?))
    }

    /// The first instant at which the zone's clock shows `wall` or a later time.
    fn first_instant_showing(&self, wall: NaiveDateTime) -> Option<DateTime<Utc>> {
        let Some(zone) = self.time_zone else {
            return Some(Utc.from_utc_datetime(&wall));
        };
        // A time in a gap: the clock jumps over it, so the first time shown after it is the end
        // of the gap, found minute by minute (gaps are whole minutes and at most a day, in
        // practice an hour).
        for minutes in 0..=24 * 60 {
            match zone.from_local_datetime(&(wall + Duration::minutes(minutes))) {
                LocalResult::Single(at) => return Some(at.with_timezone(&Utc)),
                // Shown twice (clocks went back): the first time counts.
                LocalResult::Ambiguous(first, _) => return Some(first.with_timezone(&Utc)),
                LocalResult::None => {}
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_five_fields_with_optional_zone() {
        assert!(Schedule::parse("0 2 * * *").is_ok());
        assert!(Schedule::parse("*/5 * * * 1-5").is_ok());
        assert!(Schedule::parse("TZ=UTC 30 6 * * *").is_ok());
        assert!(Schedule::parse("0 2 * *").is_err());
        assert!(Schedule::parse("0 0 2 * * *").is_err());
        assert!(Schedule::parse("61 2 * * *").is_err());
        assert!(Schedule::parse("TZ=../../etc/passwd 0 2 * * *").is_err());
        assert!(Schedule::parse("TZ=Mars/Olympus 0 2 * * *").is_err());
        assert!(Schedule::parse("TZ=Europe/Paris 0 2 * * *").is_ok());
    }

    #[test]
    fn macros_stand_for_their_five_fields_with_or_without_a_zone() {
        let at = utc("2026-07-01T10:20:00Z");
        for (text, next) in [
            ("@yearly", "2027-01-01T00:00:00Z"),
            ("@annually", "2027-01-01T00:00:00Z"),
            ("@monthly", "2026-08-01T00:00:00Z"),
            ("@weekly", "2026-07-05T00:00:00Z"),
            ("@daily", "2026-07-02T00:00:00Z"),
            ("@midnight", "2026-07-02T00:00:00Z"),
            ("@hourly", "2026-07-01T11:00:00Z"),
            ("@DAILY", "2026-07-02T00:00:00Z"),
        ] {
            let schedule = Schedule::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(
                schedule.next_tick(at).map(|(_, i)| i),
                Some(utc(next)),
                "{text}"
            );
        }
        let paris = Schedule::parse("TZ=Europe/Paris @daily").expect("zone and macro");
        assert_eq!(
            paris.next_tick(at).map(|(_, i)| i),
            Some(utc("2026-07-01T22:00:00Z"))
        );
        let e = Schedule::parse("@fortnightly").unwrap_err();
        assert!(
            e.contains("unknown macro @fortnightly") && e.contains("@weekly"),
            "{e}"
        );
    }

    #[test]
    fn an_out_of_range_field_is_named() {
        for (text, want) in [
            ("0 25 * * *", "hour 25 is out of range 0-23"),
            ("60 * * * *", "minute 60 is out of range 0-59"),
            ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
            ("0 0 1 13 *", "month 13 is out of range 1-12"),
            ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
            ("0 1-30 * * *", "hour 30 is out of range 0-23"),
            ("0,75 * * * *", "minute 75 is out of range 0-59"),
            ("*/0 * * * *", "minute step must be at least 1"),
            ("0 20-4 * * *", "hour range 20-4 is backwards"),
            ("TZ=Europe/Paris 0 24 * * *", "hour 24 is out of range 0-23"),
        ] {
            let e = Schedule::parse(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
            assert!(!e.contains("Component error"), "{text}: {e}");
        }
        for ok in ["0 0 * * 7", "0 9 * jan-mar mon-fri", "*/15 0-23/2 1,15 * *"] {
            assert!(Schedule::parse(ok).is_ok(), "{ok}");
        }
    }

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn wall(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").expect("wall-clock time")
    }

    /// The controller's loop, minute by minute from `from` to `to`: the instants at which a run
    /// starts, with the tick each one is for.
    fn runs(schedule: &str, from: &str, to: &str) -> Vec<(DateTime<Utc>, NaiveDateTime)> {
        let schedule = Schedule::parse(schedule).expect("schedule");
        // Each minute a fraction of a second past it, as a real clock would be read.
        let fraction = Duration::milliseconds(337);
        let (mut now, to) = (utc(from) + fraction, utc(to) + fraction);
        let mut last = None;
        let mut runs = Vec::new();
        while now <= to {
            match schedule.due(last, now) {
                Due::Remember(tick) => last = Some(tick),
                Due::Run(tick) => {
                    runs.push((now - fraction, tick));
                    last = Some(tick);
                }
                Due::Missed(_) | Due::Nothing => {}
            }
            now += Duration::minutes(1);
        }
        runs
    }

    #[test]
    fn a_daily_tick_in_the_hour_clocks_repeat_runs_once() {
        // Europe/Paris, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC), so 02:30 is shown
        // twice, at 00:30 and at 01:30 UTC.
        let runs = runs(
            "TZ=Europe/Paris 30 2 * * *",
            "2026-10-24T20:00:00Z",
            "2026-10-25T06:00:00Z",
        );
        assert_eq!(
            runs,
            [(utc("2026-10-25T00:30:00Z"), wall("2026-10-25 02:30"))]
        );
    }

    #[test]
    fn a_frequent_schedule_never_runs_a_wall_clock_time_twice_across_the_repeated_hour() {
        let runs = runs(
            "TZ=Europe/Paris */30 * * * *",
            "2026-10-24T22:00:00Z",
            "2026-10-25T03:00:00Z",
        );
        let ticks: Vec<NaiveDateTime> = runs.iter().map(|(_, tick)| *tick).collect();
        assert!(ticks.windows(2).all(|w| w[0] < w[1]), "{ticks:?}");
        // 00:30 .. 04:00 local: 02:00 and 02:30 once each, the second pass of that hour skipped.
        assert_eq!(ticks.first(), Some(&wall("2026-10-25 00:30")));
        assert_eq!(ticks.last(), Some(&wall("2026-10-25 04:00")));
        assert_eq!(ticks.len(), 8);
        let gaps: Vec<i64> = runs
            .windows(2)
            .map(|w| (w[1].0 - w[0].0).num_minutes())
            .collect();
        assert_eq!(gaps.iter().filter(|&&g| g == 90).count(), 1, "{gaps:?}");
    }

    #[test]
    fn a_tick_skipped_by_the_clocks_going_forward_runs_at_the_end_of_the_gap() {
        // Europe/Paris, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC); 02:30 never shows.
        let schedule = Schedule::parse("TZ=Europe/Paris 30 2 * * *").expect("schedule");
        assert_eq!(
            schedule.next_tick(utc("2026-03-29T00:10:00Z")),
            Some((wall("2026-03-29 02:30"), utc("2026-03-29T01:00:00Z")))
        );
        let runs = runs(
            "TZ=Europe/Paris 30 2 * * *",
            "2026-03-28T20:00:00Z",
            "2026-03-29T08:00:00Z",
        );
        assert_eq!(
            runs,
            [(utc("2026-03-29T01:00:00Z"), wall("2026-03-29 02:30"))]
        );
    }

    #[test]
    fn ticks_follow_the_zone_and_missed_ones_collapse_into_one_run() {
        let paris = Schedule::parse("TZ=Europe/Paris 0 9 * * *").expect("schedule");
        // 09:00 in Paris is 07:00 UTC in summer and 08:00 UTC in winter.
        assert_eq!(
            paris
                .next_tick(utc("2026-07-01T00:00:00Z"))
                .map(|(_, at)| at),
            Some(utc("2026-07-01T07:00:00Z"))
        );
        assert_eq!(
            paris
                .next_tick(utc("2026-12-01T00:00:00Z"))
                .map(|(_, at)| at),
            Some(utc("2026-12-01T08:00:00Z"))
        );
        let plain = Schedule::parse("0 9 * * *").expect("schedule");
        assert_eq!(
            plain
                .next_tick(utc("2026-07-01T00:00:00Z"))
                .map(|(_, at)| at),
            Some(utc("2026-07-01T09:00:00Z"))
        );
        // Down for three days: one run, for the latest tick.
        let last = Some(wall("2026-07-01 09:00"));
        assert_eq!(
            paris.due(last, utc("2026-07-04T12:00:00Z")),
            Due::Run(wall("2026-07-04 09:00"))
        );
        assert_eq!(
            paris.due(Some(wall("2026-07-04 09:00")), utc("2026-07-04T12:00:00Z")),
            Due::Nothing
        );
        assert_eq!(
            paris.due(None, utc("2026-07-04T12:00:00Z")),
            Due::Remember(wall("2026-07-04 09:00"))
        );
    }

    #[test]
    fn catchup_one_runs_the_latest_missed_tick_within_the_deadline() {
        let hourly = Schedule::parse("@hourly").expect("schedule");
        let last = Some(wall("2026-07-01 06:00"));
        let now = utc("2026-07-01T10:20:00Z");
        // Four ticks missed: one run, for the latest (the default, as before).
        assert_eq!(
            hourly.catch_up(last, now, Catchup::One, None),
            Due::Run(wall("2026-07-01 10:00"))
        );
        assert_eq!(hourly.due(last, now), Due::Run(wall("2026-07-01 10:00")));
        // 20 minutes late: within a 30-minute deadline, not within a 10-minute one.
        let minutes = |m: u64| Some(std::time::Duration::from_secs(m * 60));
        assert_eq!(
            hourly.catch_up(last, now, Catchup::One, minutes(30)),
            Due::Run(wall("2026-07-01 10:00"))
        );
        assert_eq!(
            hourly.catch_up(last, now, Catchup::One, minutes(10)),
            Due::Missed(wall("2026-07-01 10:00"))
        );
        // Caught up already; first sight remembers without a run.
        assert_eq!(
            hourly.catch_up(Some(wall("2026-07-01 10:00")), now, Catchup::One, None),
            Due::Nothing
        );
        assert_eq!(
            hourly.catch_up(None, now, Catchup::All, None),
            Due::Remember(wall("2026-07-01 10:00"))
        );
    }

    #[test]
    fn catchup_all_runs_every_missed_tick_oldest_first_within_the_deadline_and_the_cap() {
        let hourly = Schedule::parse("@hourly").expect("schedule");
        let now = utc("2026-07-01T10:20:00Z");
        let mut last = Some(wall("2026-07-01 06:00"));
        let mut ran = Vec::new();
        while let Due::Run(tick) = hourly.catch_up(last, now, Catchup::All, None) {
            ran.push(tick);
            last = Some(tick);
        }
        assert_eq!(
            ran,
            ["07:00", "08:00", "09:00", "10:00"].map(|t| wall(&format!("2026-07-01 {t}")))
        );
        // A 2h30 deadline: 07:00 (3h20 late) is dropped, 08:00 is the first owed.
        let deadline = Some(std::time::Duration::from_secs(150 * 60));
        assert_eq!(
            hourly.catch_up(Some(wall("2026-07-01 06:00")), now, Catchup::All, deadline),
            Due::Run(wall("2026-07-01 08:00"))
        );
        // Down for a week with a per-minute schedule: only the latest 100 ticks are owed.
        let every_minute = Schedule::parse("* * * * *").expect("schedule");
        let week_ago = Some(wall("2026-06-24 10:20"));
        assert_eq!(
            every_minute.catch_up(week_ago, now, Catchup::All, None),
            Due::Run(wall("2026-07-01 08:41"))
        );
        assert_eq!(CATCHUP_ALL_CAP, 100);
    }

    #[test]
    fn catchup_none_runs_a_tick_only_when_seen_on_time_and_nothing_was_missed() {
        let hourly = Schedule::parse("@hourly").expect("schedule");
        let last = Some(wall("2026-07-01 09:00"));
        assert_eq!(
            hourly.catch_up(last, utc("2026-07-01T10:00:00.300Z"), Catchup::None, None),
            Due::Run(wall("2026-07-01 10:00"))
        );
        // Seen 5 minutes late (the controller was down): missed.
        assert_eq!(
            hourly.catch_up(last, utc("2026-07-01T10:05:00Z"), Catchup::None, None),
            Due::Missed(wall("2026-07-01 10:00"))
        );
        // On time, but the 10:00 tick was missed before it: still nothing is caught up.
        assert_eq!(
            hourly.catch_up(
                Some(wall("2026-07-01 08:00")),
                utc("2026-07-01T10:00:01Z"),
                Catchup::None,
                None
            ),
            Due::Missed(wall("2026-07-01 10:00"))
        );
    }

    #[test]
    fn the_deadline_counts_from_the_instant_the_zone_showed_the_tick() {
        // 09:00 in Paris in July is 07:00 UTC: at 07:30 UTC the tick is 30 minutes old.
        let paris = Schedule::parse("TZ=Europe/Paris 0 9 * * *").expect("schedule");
        let last = Some(wall("2026-06-30 09:00"));
        let now = utc("2026-07-01T07:30:00Z");
        let deadline = |m: u64| Some(std::time::Duration::from_secs(m * 60));
        assert_eq!(
            paris.catch_up(last, now, Catchup::One, deadline(45)),
            Due::Run(wall("2026-07-01 09:00"))
        );
        assert_eq!(
            paris.catch_up(last, now, Catchup::One, deadline(15)),
            Due::Missed(wall("2026-07-01 09:00"))
        );
    }

    #[test]
    fn a_tick_is_due_once_however_often_it_is_asked_within_its_minute() {
        let every_minute = Schedule::parse("* * * * *").expect("schedule");
        let now = utc("2026-11-27T20:43:47.244Z");
        let tick = every_minute.previous_tick(now).expect("tick");
        assert_eq!(tick, wall("2026-11-27 20:43"));
        // Stored as whole seconds, as the store keeps it.
        for later in [0, 300, 12_000] {
            assert_eq!(
                every_minute.due(Some(tick), now + Duration::milliseconds(later)),
                Due::Nothing
            );
        }
        assert_eq!(
            every_minute.due(Some(tick), utc("2026-11-27T20:44:00.001Z")),
            Due::Run(wall("2026-11-27 20:44"))
        );
        let runs = runs("* * * * *", "2026-11-27T20:00:00Z", "2026-11-27T20:10:00Z");
        assert_eq!(runs.len(), 10, "{runs:?}");
    }
}
