//! The fuzzing entry points, shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and their
//! stable replay test (`tests/fuzz_smoke.rs`), so the two can never drift apart. Each takes
//! arbitrary bytes and must never panic; results are discarded.

use std::path::Path;
use std::sync::LazyLock;

use indexmap::IndexMap;

use crate::env;
use crate::schedule::Schedule;
use crate::spec::{self, Format};
use crate::validate::{self, Options};

static OPTIONS: LazyLock<Options> = LazyLock::new(Options::default);

/// The manifest loader and validator: the first byte picks the format (`% 3`: YAML, TOML, JSON),
/// the rest is the file.
pub fn load_manifest(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let (path, format) = match selector % 3 {
        0 => ("fuzz.yaml", Format::Yaml),
        1 => ("fuzz.toml", Format::Toml),
        _ => ("fuzz.json", Format::Json),
    };
    if let Ok(docs) = spec::parse_bytes(Path::new(path), bytes, format) {
        for doc in &docs {
            let _ = validate::validate_doc(doc, &OPTIONS);
        }
    }
}

/// Environment interpolation: line 1 is a template, later lines `KEY=VALUE` (`+KEY=VALUE` for
/// the base layer), at most 8.
pub fn env_interpolate(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n');
    let template = lines.next().unwrap_or_default();
    let mut base = IndexMap::new();
    let mut layer = IndexMap::new();
    for line in lines.take(8) {
        let (target, pair) = match line.strip_prefix('+') {
            Some(rest) => (&mut base, rest),
            None => (&mut layer, line),
        };
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        target.insert(key.to_owned(), value.to_owned());
    }
    let _ = env::references(template);
    let _ = env::interpolate("fuzz", template, &base);
    let _ = env::check_layer(&|name: &str| base.contains_key(name), &layer);
    if let Ok(merged) = env::apply_layer(&base, &layer) {
        let _ = env::interpolate("fuzz", template, &merged);
    }
}

/// Cron schedule parsing.
pub fn cron_schedule(data: &[u8]) {
    let _ = Schedule::parse(&String::from_utf8_lossy(data));
}
