//! How an error becomes one line for a person: its message, then each of its sources once
//! (`outer: inner: innermost`). The modules' `#[error]` messages say what was being done and never
//! repeat their `#[source]`, so this never compares texts. It does not print: the CLI shows the
//! line, the engine records it as a job's message, the controller logs it.

use std::fmt::Write as _;

/// `error`, then each of its sources, joined by `: `.
pub fn render(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        let _ = write!(text, ": {s}");
        source = s.source();
    }
    text
}
