//! Arbitrary bytes through the manifest loader and the validator: must never panic.
//!
//! The first byte picks the format (`data[0] % 3`: 0 YAML, 1 TOML, 2 JSON); the rest is the file.
//! Keep in step with `load_manifest` in `tests/fuzz_smoke.rs`.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use executioner::spec::{self, Format};
use executioner::validate::{self, Options};
use libfuzzer_sys::fuzz_target;

static OPTIONS: LazyLock<Options> = LazyLock::new(Options::default);

fuzz_target!(|data: &[u8]| {
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
});
