//! `--param NAME=VALUE` on `run` and `rerun`: the flags read into a map and checked against the
//! manifest's `spec.params`, every problem in one usage error (exit 2).

use indexmap::IndexMap;

use super::CliError;
use crate::spec::{ParamSpec, params};

/// Reads `--param` flags (a name given twice keeps its last value).
pub fn parse(pairs: &[String]) -> Result<IndexMap<String, String>, CliError> {
    let mut out = IndexMap::new();
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CliError::usage(format!("--param {pair:?}: expected NAME=VALUE")))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// The run's parameter values, or a usage error listing what is wrong.
pub fn resolve(
    declared: &IndexMap<String, ParamSpec>,
    given: &IndexMap<String, String>,
) -> Result<IndexMap<String, String>, CliError> {
    params::resolve(declared, given).map_err(|errors| {
        CliError::usage(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })
}
