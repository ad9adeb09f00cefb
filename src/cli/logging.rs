//! The log subscriber: every log line the program writes (the controller's lines, warnings, `-v`
//! diagnostics) is a tracing event, written to stderr as `pretty` text or one JSON object a line.
//!
//! It does not own the output of commands (tables, the progress lines of `run`, `-o json`): the
//! commands print those themselves. Levels: the configuration's `log_level`, which `-v` (debug),
//! `-vv` (trace) and `-q` (errors only) override as flags.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

use crate::config::{Config, LogFormat};

use super::GlobalArgs;

/// Installs the global subscriber for this command line, from the configuration and its flags.
pub fn init(global: &GlobalArgs) {
    // A configuration that does not load is the command's to report (commands that need none
    // still work): logging then goes by the flags alone.
    let config = super::load_config(global).unwrap_or_else(|_| Config {
        log_format: global.log_format.unwrap_or_default(),
        log_level: super::verbosity(global)
            .map_or("info", |(level, _)| level)
            .to_owned(),
        ..Config::default()
    });
    let (filter, refused) = match filter(&config.log_level) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new("warn,executioner=info"), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Only fails when a subscriber is already installed, which then keeps logging.
    let _ = match config.log_format {
        LogFormat::Pretty => builder
            .with_target(false)
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        // Event fields at the top level (`message`, `pipeline`, `run`, ...), and the spans the
        // event happened in (`run` with `pipeline` and `run`, `attempt` with `job` and
        // `attempt`) as `spans`, outermost first.
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .try_init(),
    };
    if let Some(e) = refused {
        tracing::warn!(
            log_level = %config.log_level,
            "log_level is neither a level nor a filter ({e}); using info"
        );
    }
}

/// The filter for `log_level`: a bare level (`debug`) is the program's own, while libraries
/// (sqlx logs every statement at debug) stay at warnings and errors; anything else is
/// tracing-subscriber's directive syntax (`info,executioner::engine=trace`), used as given.
fn filter(log_level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    match log_level.parse::<LevelFilter>() {
        Ok(level) => EnvFilter::builder().parse(format!(
            "{},executioner={level}",
            level.min(LevelFilter::WARN)
        )),
        Err(_) => EnvFilter::builder().parse(log_level),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_level_is_the_programs_and_directives_are_taken_as_given() {
        assert_eq!(
            filter("debug").unwrap().to_string(),
            "executioner=debug,warn"
        );
        assert_eq!(
            filter("error").unwrap().to_string(),
            "executioner=error,error"
        );
        assert_eq!(
            filter("info,executioner::engine=trace")
                .unwrap()
                .to_string(),
            "executioner::engine=trace,info"
        );
        assert!(filter("executioner=loudest").is_err());
    }
}
