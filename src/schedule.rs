//! Cron schedules of pipelines: `"0 2 * * *"`, optionally prefixed with `TZ=Area/City `.
//!
//! Parsing and validation only (5 fields, a known time zone name); computing ticks belongs to the
//! controller.

use std::str::FromStr;

/// A parsed schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub cron: croner::Cron,
    /// IANA zone name; `None` means UTC.
    pub time_zone: Option<String>,
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
                check_zone(zone)?;
                (Some(zone.to_owned()), expr.trim())
            }
            None => (None, trimmed),
        };
        let fields = expr.split_whitespace().count();
        if fields != 5 {
            return Err(format!(
                "schedule {text:?}: expected 5 cron fields (minute hour day-of-month month day-of-week), found {fields}"
            ));
        }
        let cron = croner::Cron::from_str(expr).map_err(|e| format!("schedule {text:?}: {e}"))?;
        Ok(Schedule { cron, time_zone })
    }
}

fn check_zone(zone: &str) -> Result<(), String> {
    let well_formed = !zone.is_empty()
        && !zone.starts_with('/')
        && !zone
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
        && zone
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '-' | '+'));
    if !well_formed {
        return Err(format!("unknown time zone {zone:?}"));
    }
    let zoneinfo = std::path::Path::new("/usr/share/zoneinfo");
    if zone != "UTC" && zoneinfo.is_dir() && !zoneinfo.join(zone).is_file() {
        return Err(format!("unknown time zone {zone:?}"));
    }
    Ok(())
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
    }
}
