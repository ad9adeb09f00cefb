//! The original tool's flag style (`-c FILE`, `--list-runs`, `--show-run N`, ...), translated into
//! the subcommand form before clap sees the arguments. Only applies when no subcommand is given.

use std::ffi::OsString;

const SUBCOMMANDS: &[&str] = &[
    "validate",
    "schema",
    "graph",
    "convert",
    "init",
    "completions",
    "run",
    "resume",
    "runs",
    "logs",
    "mark-success",
    "controller",
    "apply",
    "status",
    "wait",
    "delete",
    "rerun",
    "config",
    "help",
];

/// Rewrites the original's flags into subcommands; other argument lists are returned unchanged.
pub fn translate(args: Vec<OsString>) -> Vec<OsString> {
    let strings: Option<Vec<String>> = args.iter().map(|a| a.to_str().map(str::to_owned)).collect();
    let Some(words) = strings else { return args };
    if words
        .iter()
        .skip(1)
        .any(|w| SUBCOMMANDS.contains(&w.as_str()))
    {
        return args;
    }
    let legacy = [
        "-c",
        "--list-runs",
        "--show-run",
        "--mark-success",
        "--resume-from",
        "--sample-config",
        "--simple-config",
    ];
    if !words
        .iter()
        .skip(1)
        .any(|w| legacy.contains(&w.as_str()) || w.starts_with("-c"))
    {
        return args;
    }
    translate_words(&words)
        .into_iter()
        .map(OsString::from)
        .collect()
}

fn translate_words(words: &[String]) -> Vec<String> {
    let program = words
        .first()
        .cloned()
        .unwrap_or_else(|| "executioner".into());
    let mut rest: Vec<String> = Vec::new();
    let mut config: Option<String> = None;
    let mut mode: Option<Vec<String>> = None;
    let mut run_id: Option<String> = None;
    let mut jobs: Option<String> = None;
    let mut resume_from: Option<String> = None;
    let mut failed_only = false;
    let mut limit: Option<String> = None;
    let mut i = 1;
    while i < words.len() {
        let w = words[i].as_str();
        let next = words.get(i + 1).cloned();
        match w {
            "-c" => {
                config = next;
                i += 1;
            }
            _ if w.starts_with("-c") && w.len() > 2 && !w.starts_with("--") => {
                config = Some(w[2..].to_owned());
            }
            "--list-runs" => {
                let mut m = vec!["runs".to_owned()];
                if let Some(app) = next.filter(|n| !n.starts_with('-')) {
                    m.push("--pipeline".into());
                    m.push(app);
                    i += 1;
                }
                mode = Some(m);
            }
            "--limit" => {
                limit = next;
                i += 1;
            }
            "--show-run" => {
                mode = Some(vec!["runs".into(), "show".into(), next.unwrap_or_default()]);
                i += 1;
            }
            "--mark-success" => mode = Some(vec!["mark-success".into()]),
            "-r" | "--run-id" => {
                run_id = next;
                i += 1;
            }
            "-j" | "--jobs" => {
                jobs = next;
                i += 1;
            }
            "--resume-from" => {
                resume_from = next;
                i += 1;
            }
            "--resume-failed-only" => failed_only = true,
            "--sample-config" | "--simple-config" => {
                mode = Some(vec!["init".into(), "--print".into()])
            }
            // The converted file's `parallel: false` would keep `maxParallel: 1`: the flag lifts
            // it, so that `--workers N` (or the configuration's workers) is the limit.
            "--parallel" => rest.push("--parallel".into()),
            "--sequential" => {
                rest.push("--workers".into());
                rest.push("1".into());
            }
            "--env" => {
                // The original splits "A=1,B=2" on commas.
                for kv in next
                    .unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                {
                    rest.push("--env".into());
                    rest.push(kv.to_owned());
                }
                i += 1;
            }
            _ => rest.push(w.to_owned()),
        }
        i += 1;
    }
    let mut out = vec![program];
    match mode {
        Some(m) if m[0] == "mark-success" => {
            out.push("mark-success".into());
            out.push(run_id.unwrap_or_default());
            out.extend(
                jobs.unwrap_or_default()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            );
        }
        Some(m) => {
            out.extend(m);
            if let Some(l) = limit {
                out.push("--limit".into());
                out.push(l);
            }
        }
        None => {
            out.push("run".into());
            out.push(config.unwrap_or_else(|| "jobs_config.json".into()));
            if let Some(r) = resume_from {
                out.push("--resume-from".into());
                out.push(r);
                if failed_only {
                    out.push("--failed-only".into());
                }
            }
        }
    }
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(args: &[&str]) -> Vec<String> {
        translate(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|s| s.into_string().unwrap_or_default())
            .collect()
    }

    #[test]
    fn translates_the_original_flags() {
        assert_eq!(
            t(&["x", "-c", "a.json", "--sequential"]),
            ["x", "run", "a.json", "--workers", "1"]
        );
        assert_eq!(
            t(&["x", "-c", "a.json", "--env", "A=1,B=2"]),
            ["x", "run", "a.json", "--env", "A=1", "--env", "B=2"]
        );
        assert_eq!(
            t(&["x", "--list-runs", "app", "--limit", "5"]),
            ["x", "runs", "--pipeline", "app", "--limit", "5"]
        );
        assert_eq!(t(&["x", "--show-run", "7"]), ["x", "runs", "show", "7"]);
        assert_eq!(
            t(&["x", "--mark-success", "-r", "3", "-j", "a,b"]),
            ["x", "mark-success", "3", "a", "b"]
        );
        assert_eq!(
            t(&[
                "x",
                "-c",
                "a.json",
                "--resume-from",
                "4",
                "--resume-failed-only"
            ]),
            ["x", "run", "a.json", "--resume-from", "4", "--failed-only"]
        );
        assert_eq!(t(&["x", "validate", "-c"]), ["x", "validate", "-c"]);
        assert_eq!(
            t(&["x", "-c", "a.json", "--parallel", "--workers", "4"]),
            ["x", "run", "a.json", "--parallel", "--workers", "4"]
        );
    }
}
