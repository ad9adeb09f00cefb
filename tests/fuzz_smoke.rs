//! Stable-Rust replay of the cargo-fuzz targets in `fuzz/` (see docs/fuzzing.md): every file of
//! `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`, then deterministic pseudo-random
//! mutations of the seeds, go through the same entry points as the fuzz targets. None may panic.
//!
//! The targets and this test call the same functions, `executioner::fuzzing::*`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use executioner::fuzzing::{cron_schedule, env_interpolate, load_manifest};

type Target = fn(&[u8]);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The regular files of `fuzz/<kind>/<target>/` (dotfiles such as `.gitkeep` left out), sorted.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = fuzz_dir().join(kind).join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, bytes)
        })
        .collect()
}

/// Runs `target` on each input, catching panics; fails listing every input that panicked.
fn replay(target: Target, cases: impl IntoIterator<Item = (String, Vec<u8>)>) -> usize {
    let mut count = 0;
    let mut failures = Vec::new();
    for (label, data) in cases {
        count += 1;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| target(&data))) {
            let message = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            failures.push(format!(
                "{label}: panicked: {message}\n  input ({} bytes): {:?}",
                data.len(),
                String::from_utf8_lossy(&data)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {count} inputs panicked (save each as fuzz/regressions/<target>/NAME):\n{}",
        failures.len(),
        failures.join("\n")
    );
    count
}

fn replay_files(name: &str, target: Target) {
    let seeds = inputs("seeds", name);
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{name}/");
    let files = seeds.into_iter().chain(inputs("regressions", name));
    replay(
        target,
        files.map(|(path, bytes)| (path.display().to_string(), bytes)),
    );
}

/// xorshift64: deterministic, no extra crate.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that matter to the parsers under test, favoured by the mutator.
const INTERESTING: &[u8] = b"${}:-=+\n\r\t #*/,[]\"'&!|>?%@L,W0123456789TZ\\\0\xff\xc3";

/// One to four byte flips, interesting-byte writes, insertions, deletions, chunk duplications
/// or truncations of `seed`.
fn mutate(rng: &mut Rng, seed: &[u8], keep_first: bool) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let start = usize::from(keep_first && !data.is_empty());
        let len = data.len();
        let at = start + rng.below(len.saturating_sub(start) + 1);
        match rng.below(6) {
            0 if at < len => data[at] ^= 1 << rng.below(8),
            1 if at < len => data[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 => data.insert(at, INTERESTING[rng.below(INTERESTING.len())]),
            3 if at < len => {
                let end = (at + 1 + rng.below(16)).min(len);
                data.drain(at..end);
            }
            4 if at < len => {
                let end = (at + 1 + rng.below(32)).min(len);
                let chunk = data[at..end].to_vec();
                let to = start + rng.below(data.len() - start + 1);
                data.splice(to..to, chunk);
            }
            _ => data.truncate(at),
        }
    }
    data
}

fn replay_mutations(name: &str, target: Target, count: usize, seed: u64) {
    let seeds = inputs("seeds", name);
    assert!(!seeds.is_empty(), "no seeds in fuzz/seeds/{name}/");
    let mut rng = Rng(seed);
    // For manifests the first byte selects the format; mutate it only occasionally.
    let cases: Vec<(String, Vec<u8>)> = (0..count)
        .map(|i| {
            let (path, bytes) = &seeds[rng.below(seeds.len())];
            let keep_first = name == "load_manifest" && rng.below(8) != 0;
            let data = mutate(&mut rng, bytes, keep_first);
            (format!("mutation {i} of {}", path.display()), data)
        })
        .collect();
    assert_eq!(replay(target, cases), count);
}

#[test]
fn load_manifest_seeds_and_regressions() {
    replay_files("load_manifest", load_manifest);
}

#[test]
fn env_interpolate_seeds_and_regressions() {
    replay_files("env_interpolate", env_interpolate);
}

#[test]
fn cron_schedule_seeds_and_regressions() {
    replay_files("cron_schedule", cron_schedule);
}

#[test]
fn load_manifest_mutations() {
    replay_mutations("load_manifest", load_manifest, 1000, 0x9e37_79b9_7f4a_7c15);
}

#[test]
fn env_interpolate_mutations() {
    replay_mutations(
        "env_interpolate",
        env_interpolate,
        500,
        0xd1b5_4a32_d192_ed03,
    );
}

#[test]
fn cron_schedule_mutations() {
    replay_mutations("cron_schedule", cron_schedule, 500, 0x2545_f491_4f6c_dd1d);
}
