//! Integration tests of the GitOps side of day-2 operations, against the real binary and a real
//! `git`: `diff` (its exit codes and unified diff), `apply --prune` (the inventory of what a
//! source applied, hand-written and hand-changed files left alone, the empty-source guard,
//! `--dry-run`), and the source revision each generation records (`status`, `runs show`, the
//! status file), with no git repository or no git at all as the quiet case.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use common::{Workspace, bin, manifest, run_with_timeout, text};

/// A one-job manifest running `command`.
fn pipeline(name: &str, command: &str) -> String {
    manifest(
        name,
        "",
        &format!("    - id: main\n      command: {command}\n"),
    )
}

/// `git ARGS...` in `dir`, with no global or system configuration and a fixed identity.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@t",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git must be installed to run these tests");
    assert!(
        out.status.success(),
        "git {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

/// A git repository at `dir` with everything in it committed.
fn commit_all(dir: &Path, message: &str) -> String {
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-q", "--allow-empty", "-m", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// `apply ARGS... --manifests m` in the workspace.
fn apply(ws: &Workspace, args: &[&str]) -> Output {
    let mut all = vec!["apply"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--manifests", "m"]);
    ws.run(&all)
}

/// `diff ARGS... --manifests m` in the workspace.
fn diff(ws: &Workspace, args: &[&str]) -> Output {
    let mut all = vec!["diff"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--manifests", "m"]);
    ws.run(&all)
}

/// File name -> content of the manifests folder `m` (hidden files left out).
fn folder(ws: &Workspace) -> BTreeMap<String, String> {
    std::fs::read_dir(ws.path().join("m"))
        .map(|entries| {
            entries
                .map(|e| e.expect("entry"))
                .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                .map(|e| {
                    let content = std::fs::read_to_string(e.path()).unwrap_or_default();
                    (e.file_name().to_string_lossy().into_owned(), content)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn says(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// diff

/// No change is exit 0 and nothing printed; a change is exit 1 with a unified diff under
/// kubectl's headers; a comment alone is no change; an invalid document is exit 2 with its
/// FILE:LINE:COL diagnostic. No state folder is created, no manifests folder either.
#[test]
fn diff_exit_codes_follow_kubectl() {
    let ws = Workspace::new();
    ws.write("src/a.yaml", &pipeline("a", "echo one"));

    let out = diff(&ws, &["-f", "src"]);
    assert_eq!(code(&out), Some(1), "{}", says(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("diff -u -N live/a merged/a\n--- live/a\n+++ merged/a\n@@ -0,0 +1,"),
        "{stdout}"
    );
    assert!(stdout.contains("+    command: echo one\n"), "{stdout}");
    assert!(
        !ws.path().join("m").exists(),
        "diff created the manifests folder"
    );
    assert!(!ws.state_dir().exists(), "diff created the state folder");

    let out = apply(&ws, &["-f", "src"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert!(
        !ws.state_dir().exists(),
        "an apply without --prune created the state folder"
    );
    let out = diff(&ws, &["-f", "src"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(text(&out.stdout), "");

    // Comments and layout are not the manifest: no change, as apply says `unchanged`.
    ws.write(
        "src/a.yaml",
        &format!("# a comment\n{}", pipeline("a", "'echo one'")),
    );
    let out = diff(&ws, &["-f", "src"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));

    ws.write("src/a.yaml", &pipeline("a", "echo two"));
    ws.write("src/b.yaml", &pipeline("b", "echo b"));
    let out = diff(&ws, &["-f", "src"]);
    assert_eq!(code(&out), Some(1), "{}", says(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(
            "--- live/a\n+++ merged/a\n@@ -5,4 +5,4 @@\n spec:\n   jobs:\n   - id: main\n-    command: echo one\n+    command: echo two\n"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("--- live/b\n+++ merged/b\n"), "{stdout}");
    // Nothing was written.
    assert_eq!(folder(&ws).len(), 1);

    ws.write(
        "bad/x.yaml",
        &manifest("x", "", "    - id: main\n      comand: echo x\n"),
    );
    let out = diff(&ws, &["-f", "bad"]);
    assert_eq!(code(&out), Some(2), "{}", says(&out));
    let stderr = text(&out.stderr);
    let diagnostic = regex::Regex::new(r"bad/x\.yaml:\d+:\d+: ").unwrap();
    assert!(diagnostic.is_match(&stderr), "{stderr}");
    assert_eq!(text(&out.stdout), "");

    let out = diff(&ws, &["-f", "missing"]);
    assert_eq!(code(&out), Some(2), "{}", says(&out));
}

// ---------------------------------------------------------------------------------------------
// apply --prune

/// In a git repository source: removing a manifest from the source and applying with --prune
/// deletes exactly that one; a hand-dropped file and a file changed by hand since apply wrote it
/// survive; --dry-run (of apply and of diff) changes nothing; an empty source is refused without
/// --allow-empty.
#[test]
fn prune_deletes_only_what_the_source_applied_and_no_longer_has() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    for name in ["a", "b", "c"] {
        ws.write(&format!("repo/{name}.yaml"), &pipeline(name, "echo x"));
    }
    commit_all(&repo, "three pipelines");

    let out = apply(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(
        text(&out.stdout),
        "pipeline/a created\npipeline/b created\npipeline/c created\n"
    );
    ws.write("m/hand.yaml", &pipeline("hand", "echo by hand"));

    git(&repo, &["rm", "-q", "b.yaml"]);
    commit_all(&repo, "drop b");

    let before = folder(&ws);
    let out = apply(&ws, &["-f", "repo", "--prune", "--dry-run"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(
        text(&out.stdout),
        "pipeline/a unchanged (dry run)\npipeline/c unchanged (dry run)\npipeline/b pruned (dry run)\n"
    );
    assert_eq!(folder(&ws), before, "--dry-run changed the folder");

    let out = diff(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(1), "{}", says(&out));
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .starts_with("diff -u -N live/b merged/b\n--- live/b\n+++ merged/b\n@@ -1,8 +0,0 @@\n"),
        "{stdout}"
    );
    assert!(stdout.contains("-  name: b\n"), "{stdout}");
    // Without --prune, diff says nothing about b.
    let out = diff(&ws, &["-f", "repo"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));

    let out = apply(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert!(
        text(&out.stdout).ends_with("pipeline/b pruned\n"),
        "{}",
        says(&out)
    );
    let names: Vec<String> = folder(&ws).into_keys().collect();
    assert_eq!(names, ["a.yaml", "c.yaml", "hand.yaml"]);
    // Once pruned, there is nothing left to prune.
    let out = apply(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert!(!text(&out.stdout).contains("pruned"), "{}", says(&out));

    // c changed by hand since apply wrote it: kept, with a warning.
    let c = ws.path().join("m/c.yaml");
    let mut edited = std::fs::read_to_string(&c).unwrap();
    edited.push_str("# tuned by hand\n");
    std::fs::write(&c, &edited).unwrap();
    git(&repo, &["rm", "-q", "c.yaml"]);
    commit_all(&repo, "drop c");
    let out = apply(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert!(!text(&out.stdout).contains("pruned"), "{}", says(&out));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("pipeline/c was changed since apply wrote it; not pruned"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&c).unwrap(), edited);

    // A plain apply that configures a file keeps its inventory entry current: a is still
    // pruned below, without a warning.
    ws.write("repo/a.yaml", &pipeline("a", "echo a2"));
    commit_all(&repo, "a2");
    let out = apply(&ws, &["-f", "repo"]);
    assert_eq!(
        text(&out.stdout),
        "pipeline/a configured\n",
        "{}",
        says(&out)
    );

    // An empty source (a failed checkout looks like this) is refused, and nothing is deleted.
    git(&repo, &["rm", "-q", "a.yaml"]);
    commit_all(&repo, "empty");
    let before = folder(&ws);
    let out = apply(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(2), "{}", says(&out));
    assert!(
        text(&out.stderr).contains("--allow-empty"),
        "{}",
        says(&out)
    );
    assert_eq!(folder(&ws), before);
    let out = diff(&ws, &["-f", "repo", "--prune"]);
    assert_eq!(code(&out), Some(2), "{}", says(&out));

    let out = apply(&ws, &["-f", "repo", "--prune", "--allow-empty"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(text(&out.stdout), "pipeline/a pruned\n");
    assert!(!text(&out.stderr).contains("pipeline/a"), "{}", says(&out));
    let names: Vec<String> = folder(&ws).into_keys().collect();
    assert_eq!(names, ["c.yaml", "hand.yaml"]);
}

/// --prune needs a source an inventory can be kept for; standard input is none.
#[test]
fn prune_refuses_standard_input() {
    let ws = Workspace::new();
    let out = apply(&ws, &["-f", "-", "--prune"]);
    assert_eq!(code(&out), Some(2), "{}", says(&out));
    assert!(
        text(&out.stderr).contains("standard input"),
        "{}",
        says(&out)
    );
    let out = apply(&ws, &["-f", "-", "--allow-empty"]);
    assert_eq!(
        code(&out),
        Some(2),
        "--allow-empty without --prune: {}",
        says(&out)
    );
}

// ---------------------------------------------------------------------------------------------
// Source revision

/// `controller --once` on `MANIFESTS` with `PATH` as given (the default one when `None`).
fn controller_once(ws: &Workspace, manifests: &str, path: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(["controller", "--once", "--manifests", manifests])
        .env_remove("EXECUTIONER_STATE_DIR")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .stdin(std::process::Stdio::null());
    if let Some(path) = path {
        cmd.env("PATH", path);
    }
    run_with_timeout(cmd, Duration::from_secs(60))
}

fn json(out: &Output) -> serde_json::Value {
    assert_eq!(code(out), Some(0), "{}", says(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", says(out)))
}

/// A committed folder's generation records the commit; an edit not committed is a new
/// generation at `COMMIT-dirty`; the older generation keeps its own. Shown by `status` (table,
/// JSON, the status file) and `runs show` (table, JSON). The controller's `.status/` files do
/// not make the folder dirty.
#[test]
fn each_generation_records_the_commit_it_came_from() {
    let ws = Workspace::new();
    let repo = ws.path().join("repo");
    ws.write("repo/manifests/p.yaml", &pipeline("p", "echo one"));
    git(&repo, &["init", "-q"]);
    let sha = commit_all(&repo, "p");
    let manifests = "repo/manifests";

    let out = controller_once(&ws, manifests, None);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    let status = json(&ws.run(&["status", "p", "-o", "json", "--manifests", manifests]));
    assert_eq!(status["metadata"]["revision"], sha.as_str(), "{status}");
    assert_eq!(status["metadata"]["generation"], 1);
    let table = text(&ws.run(&["status", "--manifests", manifests]).stdout);
    assert!(table.contains("REVISION"), "{table}");
    assert!(table.contains(&sha[..12]), "{table}");
    let file = std::fs::read_to_string(ws.path().join("repo/manifests/.status/p.yaml")).unwrap();
    assert!(file.contains(&format!("revision: {sha}\n")), "{file}");
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(run["revision"], sha.as_str(), "{run}");
    let shown = text(&ws.run(&["runs", "show", "1"]).stdout);
    assert!(
        shown.contains(&format!("generation 1, source revision {sha}\n")),
        "{shown}"
    );

    // A committed edit: a new generation at the new commit, clean although the controller's
    // `.status/` files lie untracked in the folder.
    ws.write("repo/manifests/p.yaml", &pipeline("p", "echo two"));
    git(&repo, &["add", "manifests/p.yaml"]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);
    assert!(
        !git(&repo, &["status", "--porcelain"]).is_empty(),
        "the status files should be untracked"
    );
    let out = controller_once(&ws, manifests, None);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    let status = json(&ws.run(&["status", "p", "-o", "json", "--manifests", manifests]));
    assert_eq!(status["metadata"]["generation"], 2, "{status}");
    assert_eq!(status["metadata"]["revision"], second.as_str(), "{status}");

    // An edit, not committed: a new generation, dirty.
    ws.write("repo/manifests/p.yaml", &pipeline("p", "echo three"));
    let out = controller_once(&ws, manifests, None);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    let dirty = format!("{second}-dirty");
    let status = json(&ws.run(&["status", "p", "-o", "json", "--manifests", manifests]));
    assert_eq!(status["metadata"]["generation"], 3, "{status}");
    assert_eq!(status["metadata"]["revision"], dirty.as_str(), "{status}");
    let table = text(&ws.run(&["status", "--manifests", manifests]).stdout);
    assert!(
        table.contains(&format!("{}-dirty", &second[..12])),
        "{table}"
    );
    let run = json(&ws.run(&["runs", "show", "3", "-o", "json"]));
    assert_eq!(run["revision"], dirty.as_str(), "{run}");
    let run = json(&ws.run(&["runs", "show", "1", "-o", "json"]));
    assert_eq!(
        run["revision"],
        sha.as_str(),
        "the first generation keeps its revision"
    );
}

/// Outside a git work tree, with no git on the PATH, with a git that answers nonsense or one
/// that hangs (killed at the timeout): no revision anywhere, and nothing fails.
#[test]
fn without_git_there_is_no_revision_and_no_failure() {
    let ws = Workspace::new();
    let outside = Command::new("git")
        .args(["rev-parse", "--is-inside-work-tree"])
        .current_dir(ws.path())
        .output()
        .map_or(true, |o| !o.status.success());
    assert!(outside, "the temp folder is inside a git work tree");
    ws.write("manifests/p.yaml", &pipeline("p", "exit 0"));

    // A PATH with a shell and no git; then one whose git prints something that is no commit.
    let no_git = ws.path().join("no-git");
    std::fs::create_dir_all(&no_git).unwrap();
    std::os::unix::fs::symlink("/bin/sh", no_git.join("sh")).unwrap();
    let odd_git = ws.path().join("odd-git");
    std::fs::create_dir_all(&odd_git).unwrap();
    std::os::unix::fs::symlink("/bin/sh", odd_git.join("sh")).unwrap();
    let fake = odd_git.join("git");
    std::fs::write(&fake, "#!/bin/sh\necho 'not a commit'\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    // And one whose git hangs: killed at the timeout.
    let slow_git = ws.path().join("slow-git");
    std::fs::create_dir_all(&slow_git).unwrap();
    std::os::unix::fs::symlink("/bin/sh", slow_git.join("sh")).unwrap();
    let sleep = ["/bin/sleep", "/usr/bin/sleep"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sleep");
    std::os::unix::fs::symlink(sleep, slow_git.join("sleep")).unwrap();
    let hanging = slow_git.join("git");
    std::fs::write(&hanging, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(
        &hanging,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    for (path, edit) in [
        (None, "exit 0"),
        (Some(&no_git), "exit 0 # 2"),
        (Some(&odd_git), "exit 0 # 3"),
        (Some(&slow_git), "exit 0 # 4"),
    ] {
        ws.write("manifests/p.yaml", &pipeline("p", &format!("'{edit}'")));
        let out = controller_once(&ws, "manifests", path.map(|p| p.as_path()));
        assert_eq!(code(&out), Some(0), "PATH {path:?}: {}", says(&out));
        let status = json(&ws.run(&["status", "p", "-o", "json", "--manifests", "manifests"]));
        assert!(status["metadata"].get("revision").is_none(), "{status}");
    }
    let table = text(&ws.run(&["status", "--manifests", "manifests"]).stdout);
    assert!(!table.contains("REVISION"), "{table}");
    let file = std::fs::read_to_string(ws.path().join("manifests/.status/p.yaml")).unwrap();
    assert!(!file.contains("revision"), "{file}");
    for run in ["1", "2", "3", "4"] {
        let shown = json(&ws.run(&["runs", "show", run, "-o", "json"]));
        assert!(shown.get("revision").is_none(), "{shown}");
        let table = text(&ws.run(&["runs", "show", run]).stdout);
        assert!(!table.contains("revision"), "{table}");
    }
}

/// A pipeline moved unchanged from one source to another: the second's apply says `unchanged`
/// and takes the file over, so the first source's next --prune leaves it alone, and the second
/// source prunes it once it drops it. A hand-written file is still never taken over.
#[test]
fn a_pipeline_moved_unchanged_to_another_source_is_not_pruned_by_the_first() {
    let ws = Workspace::new();
    ws.write("one/p.yaml", &pipeline("p", "echo p"));
    ws.write("one/q.yaml", &pipeline("q", "echo q"));
    let out = apply(&ws, &["-f", "one", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    ws.write("m/hand.yaml", &pipeline("hand", "echo hand"));

    // p moves to the source `two`, byte for byte; `hand` is applied from there too.
    std::fs::create_dir_all(ws.path().join("two")).unwrap();
    std::fs::rename(ws.path().join("one/p.yaml"), ws.path().join("two/p.yaml")).unwrap();
    ws.write("two/hand.yaml", &pipeline("hand", "echo hand"));
    let out = apply(&ws, &["-f", "two", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(
        text(&out.stdout),
        "pipeline/hand unchanged\npipeline/p unchanged\n"
    );

    let out = apply(&ws, &["-f", "one", "--prune"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(
        text(&out.stdout),
        "pipeline/q unchanged\n",
        "{}",
        says(&out)
    );
    assert!(
        ws.path().join("m/p.yaml").exists(),
        "p was pruned by its old source"
    );

    // `two` owns p now (it prunes it once it drops it), but not the hand-written file.
    std::fs::remove_file(ws.path().join("two/p.yaml")).unwrap();
    std::fs::remove_file(ws.path().join("two/hand.yaml")).unwrap();
    let out = apply(&ws, &["-f", "two", "--prune", "--allow-empty"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    assert_eq!(text(&out.stdout), "pipeline/p pruned\n", "{}", says(&out));
    let names: Vec<String> = folder(&ws).into_keys().collect();
    assert_eq!(names, ["hand.yaml", "q.yaml"]);
}

/// A manifest apply configures keeps its mode (a 0600 file does not become world-readable) and,
/// run as root, its owner and group; a new one is 0644.
#[test]
fn a_configured_manifest_keeps_its_mode_and_owner() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ws = Workspace::new();
    ws.write("src/a.yaml", &pipeline("a", "echo one"));
    let out = apply(&ws, &["-f", "src"]);
    assert_eq!(code(&out), Some(0), "{}", says(&out));
    let file = ws.path().join("m/a.yaml");
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o644);

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    }
    ws.write("src/a.yaml", &pipeline("a", "echo two"));
    let out = apply(&ws, &["-f", "src"]);
    assert_eq!(
        text(&out.stdout),
        "pipeline/a configured\n",
        "{}",
        says(&out)
    );
    let meta = std::fs::metadata(&file).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    if as_root {
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
    assert!(std::fs::read_to_string(&file).unwrap().contains("echo two"));
}
