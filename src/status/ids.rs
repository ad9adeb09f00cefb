//! The ids of observed state: [`RunId`] and [`AttemptId`], the numbers the store allocates for a
//! run and for one attempt of a job. They are shown and parsed as the bare number and serialized
//! as a plain number. How they go in and out of database columns is the store's (`store::ids`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A text given for an id (a command-line argument) that is not a whole number of at least 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a {kind} id (a whole number, at least 1)")]
pub struct IdParseError {
    kind: &'static str,
    text: String,
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            /// The number, for the edges that need it bare (SQL parameters, paths).
            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl From<i64> for $name {
            /// An id the store allocated (a row id) or read back.
            fn from(id: i64) -> $name {
                $name(id)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        /// The way users give an id: ids start at 1, so anything else names no row.
        impl FromStr for $name {
            type Err = IdParseError;

            fn from_str(text: &str) -> Result<$name, IdParseError> {
                match text.parse::<i64>() {
                    Ok(id) if id >= 1 => Ok($name(id)),
                    Ok(_) | Err(_) => Err(IdParseError {
                        kind: $kind,
                        text: text.to_owned(),
                    }),
                }
            }
        }
    };
}

id_type!(
    /// A run's id: the store's row id of the run, kept by its rounds (`resume` continues it).
    RunId,
    "run"
);

id_type!(
    /// One attempt's id: the store's row id of the attempt, unique across runs.
    AttemptId,
    "attempt"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_shown_parsed_and_serialized_as_the_bare_number() {
        let run: RunId = "42".parse().unwrap();
        assert_eq!(run, RunId::from(42));
        assert_eq!(run.to_string(), "42");
        assert_eq!(serde_json::to_string(&run).unwrap(), "42");
        assert_eq!(serde_json::from_str::<RunId>("42").unwrap(), run);
        assert_eq!(AttemptId::from(7).get(), 7);
    }

    #[test]
    fn a_text_that_names_no_row_is_refused() {
        for text in ["0", "-3", "abc", "", "1.5"] {
            let error = text.parse::<RunId>().unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("{text:?} is not a run id (a whole number, at least 1)")
            );
        }
    }
}
