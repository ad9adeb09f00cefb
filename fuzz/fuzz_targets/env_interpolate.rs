//! Environment layering and `${}` interpolation on arbitrary text: must never panic.
//!
//! Input (lossy UTF-8), split on `\n`: the first line is a template; each later line (at most 8)
//! is `KEY=VALUE` (split at the first `=`; no `=` means an empty value). A line starting with `+`
//! goes, without the `+`, to the base layer (finished values); the others to the layer applied on
//! top of it. Keep in step with `env_interpolate` in `tests/fuzz_smoke.rs`.
#![no_main]

use executioner::env;
use indexmap::IndexMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
