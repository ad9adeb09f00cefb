//! Integration tests of `apply` and `delete` against the real binary: created / configured /
//! unchanged, folders and standard input, all-or-nothing validation, atomic writes (no temp file
//! left), symlinks, and `delete`. `--wait` needs the controller and is tested with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use common::{Workspace, bin, manifest, text};

fn job(id: &str, command: &str) -> String {
    format!("    - id: {id}\n      command: {command}\n")
}

/// A valid one-job manifest.
fn simple(name: &str, command: &str) -> String {
    manifest(name, "", &job("main", command))
}

/// `apply ARGS... --manifests WS/m`.
fn apply(ws: &Workspace, args: &[&str]) -> Output {
    let manifests = ws.path().join("m");
    let mut all = vec!["apply"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--manifests", manifests.to_str().expect("UTF-8 path")]);
    ws.run(&all)
}

/// `apply -f - --manifests WS/m EXTRA...` with `input` on standard input.
fn apply_stdin(ws: &Workspace, input: &str, extra: &[&str]) -> Output {
    let mut child = std::process::Command::new(bin())
        .current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(["apply", "-f", "-", "--manifests"])
        .arg(ws.path().join("m"))
        .args(extra)
        .env_remove("EXECUTIONER_STATE_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn executioner");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer").expect("write stdin");
    out
}

/// File name -> content of every entry of a folder (hidden ones included); empty when missing.
fn listing(dir: &Path) -> BTreeMap<String, String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return BTreeMap::new();
    };
    entries
        .map(|e| {
            let e = e.expect("entry");
            let content = std::fs::read_to_string(e.path()).unwrap_or_default();
            (e.file_name().to_string_lossy().into_owned(), content)
        })
        .collect()
}

fn assert_no_hidden_files(dir: &Path) {
    let hidden: Vec<String> = listing(dir)
        .into_keys()
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty(),
        "left behind in {}: {hidden:?}",
        dir.display()
    );
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn apply_reports_created_then_unchanged_then_configured() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    let original = format!("# owned by the data team\n{}", simple("alpha", "echo one"));
    let src = ws.write("src/alpha.yaml", &original);
    let src = src.to_str().unwrap();

    let out = apply(&ws, &["-f", src]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha created\n");
    // A whole YAML file is copied as written, comments included.
    assert_eq!(read(m.join("alpha.yaml")), original);
    let mode = std::fs::metadata(m.join("alpha.yaml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);

    let out = apply(&ws, &["-f", src]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha unchanged\n");

    // Comments and layout are not part of the manifest: nothing to do, nothing rewritten.
    let recommented = format!("# owned by the ops team\n\n{}", simple("alpha", "echo one"));
    ws.write("src/alpha.yaml", &recommented);
    let out = apply(&ws, &["-f", src]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha unchanged\n");
    assert_eq!(read(m.join("alpha.yaml")), original);

    let edited = simple("alpha", "echo two");
    ws.write("src/alpha.yaml", &edited);
    let out = apply(&ws, &["-f", src]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha configured\n");
    assert_eq!(read(m.join("alpha.yaml")), edited);

    assert_eq!(listing(&m).into_keys().collect::<Vec<_>>(), ["alpha.yaml"]);
}

#[test]
fn apply_without_manifests_flag_uses_the_configured_folder() {
    let ws = Workspace::new();
    ws.write("alpha.yaml", &simple("alpha", "echo one"));
    let out = ws.run(&["apply", "-f", "alpha.yaml"]);
    assert_exit(&out, 0);
    assert!(ws.path().join("manifests/alpha.yaml").is_file());

    ws.write("executioner.toml", "manifests_dir = \"elsewhere\"\n");
    let out = ws.run(&["apply", "-f", "alpha.yaml"]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha created\n");
    assert!(ws.path().join("elsewhere/alpha.yaml").is_file());
}

#[test]
fn apply_folder_takes_every_manifest_file_and_nothing_else() {
    let ws = Workspace::new();
    ws.write("src/a.yaml", &simple("a", "echo a"));
    ws.write(
        "src/b.toml",
        "apiVersion = \"executioner.dev/v1\"\nkind = \"Pipeline\"\n[metadata]\nname = \"b\"\n[spec]\n[[spec.jobs]]\nid = \"main\"\ncommand = [\"echo\", \"b\"]\n",
    );
    ws.write(
        "src/c.json",
        r#"{"apiVersion": "executioner.dev/v1", "kind": "Pipeline", "metadata": {"name": "c"},
            "spec": {"jobs": [{"id": "main", "command": "echo c"}]}}"#,
    );
    ws.write("src/.hidden.yaml", &simple("hidden", "echo h"));
    ws.write("src/notes.txt", "not a manifest");
    ws.write("src/nested/d.yaml", &simple("d", "echo d"));
    let src = ws.path().join("src");

    let out = apply(&ws, &["-f", src.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "pipeline/a created\npipeline/b created\npipeline/c created\n"
    );
    let m = ws.path().join("m");
    assert_eq!(
        listing(&m).into_keys().collect::<Vec<_>>(),
        ["a.yaml", "b.yaml", "c.yaml"]
    );
    let out = ws.run(&["validate", m.to_str().unwrap()]);
    assert_exit(&out, 0);

    let out = apply(&ws, &["-f", src.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "pipeline/a unchanged\npipeline/b unchanged\npipeline/c unchanged\n"
    );
}

#[test]
fn toml_and_original_format_are_written_as_yaml_that_validates() {
    let ws = Workspace::new();
    let toml = common::repo().join("examples/pipeline.toml");
    let out = apply(&ws, &["-f", toml.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/example-toml created\n");
    let written = ws.path().join("m/example-toml.yaml");
    let yaml = read(written.clone());
    // Rendered manifests carry no schema modeline: a path would resolve on no one else's machine.
    assert!(
        yaml.starts_with("apiVersion: executioner.dev/v1\n"),
        "{yaml}"
    );
    assert!(yaml.contains("apiVersion: executioner.dev/v1"), "{yaml}");
    let out = ws.run(&["validate", written.to_str().unwrap()]);
    assert_exit(&out, 0);
    // The YAML written says the same as the TOML.
    let out = apply(&ws, &["-f", toml.to_str().unwrap()]);
    assert_eq!(text(&out.stdout), "pipeline/example-toml unchanged\n");

    let original = common::repo().join("examples/original.json");
    let out = apply(&ws, &["-f", original.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/legacy-report created\n");
    let written = ws.path().join("m/legacy-report.yaml");
    let yaml = read(written.clone());
    assert!(yaml.contains("kind: Pipeline"), "{yaml}");
    assert!(!yaml.contains("application_name"), "{yaml}");
    let out = ws.run(&["validate", written.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert_no_hidden_files(&ws.path().join("m"));
}

#[test]
fn apply_from_stdin_takes_several_documents() {
    let ws = Workspace::new();
    let input = format!(
        "{}---\n{}",
        simple("first", "echo 1"),
        simple("second", "[echo, two]")
    );
    let out = apply_stdin(&ws, &input, &[]);
    assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "pipeline/first created\npipeline/second created\n"
    );
    let m = ws.path().join("m");
    for name in ["first", "second"] {
        let yaml = read(m.join(format!("{name}.yaml")));
        assert!(
            yaml.starts_with("apiVersion: executioner.dev/v1\n"),
            "{yaml}"
        );
        assert!(yaml.contains(&format!("name: {name}")), "{yaml}");
    }
    let out = ws.run(&["validate", m.to_str().unwrap()]);
    assert_exit(&out, 0);

    let out = apply_stdin(&ws, &input, &[]);
    assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "pipeline/first unchanged\npipeline/second unchanged\n"
    );
    assert_no_hidden_files(&m);
}

#[test]
fn one_invalid_document_means_nothing_is_written() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    ws.write("m/alpha.yaml", &simple("alpha", "echo old"));
    let before = listing(&m);

    ws.write("src/alpha.yaml", &simple("alpha", "echo new"));
    ws.write("src/beta.yaml", &simple("beta", "echo beta"));
    // Line 9: an unknown field; line 10: an unknown dependency.
    let bad = manifest(
        "gamma",
        "",
        "    - id: main\n      command: echo g\n      dependecies: [x]\n      dependencies: [nope]\n",
    );
    let bad_path = ws.write("src/gamma.yaml", &bad);
    let out = apply(&ws, &["-f", ws.path().join("src").to_str().unwrap()]);
    assert_exit(&out, 1);
    assert_eq!(text(&out.stdout), "");
    let stderr = text(&out.stderr);
    let prefix = bad_path.display().to_string();
    assert!(
        stderr.contains(&format!("{prefix}:9:7: unknown field `dependecies`")),
        "{stderr}"
    );
    assert!(stderr.contains(&format!("{prefix}:10:")), "{stderr}");
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    assert_eq!(listing(&m), before);

    // A syntax error in one stdin document also stops the others.
    let input = format!("{}---\nmetadata: [unclosed\n", simple("delta", "echo d"));
    let out = apply_stdin(&ws, &input, &[]);
    assert_exit(&out, 1);
    assert!(text(&out.stderr).starts_with("-:"), "{}", text(&out.stderr));
    assert_eq!(listing(&m), before);
}

#[test]
fn the_same_name_twice_in_one_apply_is_refused() {
    let ws = Workspace::new();
    let input = format!(
        "{}---\n{}",
        simple("twin", "echo 1"),
        simple("twin", "echo 2")
    );
    let out = apply_stdin(&ws, &input, &[]);
    assert_exit(&out, 1);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("-:13:9: pipeline name `twin` is already used by -:4:9"),
        "{stderr}"
    );
    assert!(stderr.contains("DuplicateName"), "{stderr}");
    assert!(!ws.path().join("m").exists());

    ws.write("src/one.yaml", &simple("twin", "echo 1"));
    ws.write("src/two.yaml", &simple("twin", "echo 1"));
    let out = apply(&ws, &["-f", ws.path().join("src").to_str().unwrap()]);
    assert_exit(&out, 1);
    assert!(!ws.path().join("m").exists());
}

#[test]
fn dry_run_decides_but_writes_nothing() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    let src = ws.write("alpha.yaml", &simple("alpha", "echo one"));
    let src = src.to_str().unwrap();

    let out = apply(&ws, &["-f", src, "--dry-run"]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha created (dry run)\n");
    assert!(!m.exists());

    assert_exit(&apply(&ws, &["-f", src]), 0);
    let before = listing(&m);
    ws.write("alpha.yaml", &simple("alpha", "echo two"));
    let out = apply(&ws, &["-f", src, "--dry-run"]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha configured (dry run)\n");
    assert_eq!(listing(&m), before);
}

#[test]
fn a_file_holding_several_documents_is_never_rewritten() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    let both = format!("{}---\n{}", simple("a", "echo a"), simple("b", "echo b"));
    ws.write("m/both.yaml", &both);

    // Unchanged needs no write, so it is fine.
    let out = apply_stdin(&ws, &simple("a", "echo a"), &[]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/a unchanged\n");

    // A change is refused before anything is written, the new pipeline included.
    let input = format!(
        "{}---\n{}",
        simple("c", "echo c"),
        simple("a", "echo changed")
    );
    let out = apply_stdin(&ws, &input, &[]);
    assert_exit(&out, 1);
    let stderr = text(&out.stderr);
    assert!(stderr.contains("both.yaml holds 2 manifests"), "{stderr}");
    assert!(stderr.contains("edit that file"), "{stderr}");
    assert_eq!(listing(&m).into_keys().collect::<Vec<_>>(), ["both.yaml"]);
    assert_eq!(read(m.join("both.yaml")), both);
}

#[test]
fn the_file_holding_the_name_is_replaced_in_its_own_format() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    ws.write("m/custom-file-name.yaml", &simple("alpha", "echo old"));
    ws.write(
        "m/beta.toml",
        "apiVersion = \"executioner.dev/v1\"\nkind = \"Pipeline\"\n[metadata]\nname = \"beta\"\n[spec]\n[[spec.jobs]]\nid = \"main\"\ncommand = \"echo old\"\n",
    );
    let input = format!(
        "{}---\n{}",
        simple("alpha", "echo new"),
        simple("beta", "echo new")
    );
    let out = apply_stdin(&ws, &input, &[]);
    assert_exit(&out, 0);
    assert_eq!(
        text(&out.stdout),
        "pipeline/alpha configured\npipeline/beta configured\n"
    );
    assert_eq!(
        listing(&m).into_keys().collect::<Vec<_>>(),
        ["beta.toml", "custom-file-name.yaml"]
    );
    assert!(read(m.join("custom-file-name.yaml")).contains("echo new"));
    let toml = read(m.join("beta.toml"));
    assert!(toml.contains("command = \"echo new\""), "{toml}");
    let out = ws.run(&["validate", m.to_str().unwrap()]);
    assert_exit(&out, 0);
    let out = apply_stdin(&ws, &input, &[]);
    assert_eq!(
        text(&out.stdout),
        "pipeline/alpha unchanged\npipeline/beta unchanged\n"
    );
}

#[test]
fn a_name_taken_by_another_pipeline_gets_a_suffix() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    ws.write("m/alpha.yaml", &simple("other", "echo other"));
    let out = apply_stdin(&ws, &simple("alpha", "echo alpha"), &[]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha created\n");
    assert!(read(m.join("alpha.yaml")).contains("name: other"));
    assert!(read(m.join("alpha-2.yaml")).contains("name: alpha"));
}

#[test]
fn symlinks_in_the_manifests_folder_are_not_written_through() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    let outside = ws.write("outside/alpha.yaml", &simple("alpha", "echo outside"));
    std::fs::create_dir_all(&m).unwrap();
    std::os::unix::fs::symlink(&outside, m.join("alpha.yaml")).unwrap();

    let out = apply_stdin(&ws, &simple("alpha", "echo applied"), &[]);
    assert_exit(&out, 0);
    assert_eq!(read(outside.clone()), simple("alpha", "echo outside"));
    assert!(
        std::fs::symlink_metadata(m.join("alpha.yaml"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(read(m.join("alpha-2.yaml")).contains("echo applied"));

    // delete does not follow it either: the link is not a manifest of this folder.
    let out = ws.run(&["delete", "alpha", "--manifests", m.to_str().unwrap()]);
    assert_exit(&out, 0);
    assert!(!m.join("alpha-2.yaml").exists());
    assert_eq!(read(outside), simple("alpha", "echo outside"));
    let out = ws.run(&["delete", "alpha", "--manifests", m.to_str().unwrap()]);
    assert_exit(&out, 2);
}

#[test]
fn delete_removes_the_file_and_refuses_unknown_or_invalid_names() {
    let ws = Workspace::new();
    let m = ws.path().join("m");
    let dir = m.to_str().unwrap();
    assert_exit(&apply_stdin(&ws, &simple("alpha", "echo a"), &[]), 0);

    let out = ws.run(&["delete", "alpha", "--manifests", dir]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/alpha deleted\n");
    assert!(listing(&m).is_empty());

    let out = ws.run(&["delete", "alpha", "--manifests", dir]);
    assert_exit(&out, 2);
    assert!(
        text(&out.stderr).contains("pipeline/alpha not found"),
        "{}",
        text(&out.stderr)
    );

    ws.write("x.yaml", &simple("x", "echo x"));
    let out = ws.run(&["delete", "../x", "--manifests", dir]);
    assert_exit(&out, 2);
    assert!(ws.path().join("x.yaml").exists());

    ws.write(
        "m/both.yaml",
        &format!("{}---\n{}", simple("a", "echo a"), simple("b", "echo b")),
    );
    let out = ws.run(&["delete", "a", "--manifests", dir]);
    assert_exit(&out, 1);
    assert!(
        text(&out.stderr).contains("edit that file"),
        "{}",
        text(&out.stderr)
    );
    assert!(m.join("both.yaml").exists());
}

#[test]
fn usage_errors_exit_2() {
    let ws = Workspace::new();
    let out = apply(&ws, &["-f", "missing.yaml"]);
    assert_exit(&out, 2);
    ws.write("notes.txt", "hello");
    let out = apply(&ws, &["-f", "notes.txt"]);
    assert_exit(&out, 2);
    ws.write("alpha.yaml", &simple("alpha", "echo a"));
    let out = apply(&ws, &["-f", "alpha.yaml", "--timeout", "5s"]);
    assert_exit(&out, 2);
    let out = ws.run(&["apply"]);
    assert_exit(&out, 2);
    assert!(!ws.path().join("m").exists());
}

#[test]
fn relative_paths_without_a_working_dir_are_warned_about() {
    let ws = Workspace::new();
    let jobs = "    - id: build\n      command: ./build.sh\n      preChecks:\n        - fileExists: {path: input.csv}\n    - id: load\n      command: [../bin/load, x]\n    - {id: fine, command: \"echo ./not-first\"}\n";
    ws.write("relative.yaml", &manifest("relative", "", jobs));
    let out = apply(&ws, &["-f", "relative.yaml"]);
    assert_exit(&out, 0);
    let err = text(&out.stderr);
    assert!(err.contains("relative.yaml:8:16: warning"), "{err}");
    assert!(
        err.contains("warning: job `build` uses the relative path `./build.sh`"),
        "{err}"
    );
    assert!(err.contains("`input.csv`"), "{err}");
    assert!(
        err.contains("job `load` uses the relative path `../bin/load`"),
        "{err}"
    );
    assert!(err.contains("manifests folder"), "{err}");
    assert!(!err.contains("fine"), "{err}");
    // With a workingDir, the paths start where the user said: no warning.
    ws.write(
        "anchored.yaml",
        &manifest("anchored", "  workingDir: /srv/work\n", jobs),
    );
    let out = apply(&ws, &["-f", "anchored.yaml"]);
    assert_exit(&out, 0);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_manifests_apply_and_delete_use_the_folder_the_controller_watches() {
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("watched")).unwrap();
    // A controller of this state folder watches `watched/` (recorded in the store at its start).
    let out = ws.run(&["controller", "--once", "--manifests", "watched"]);
    assert_exit(&out, 0);
    ws.write("p.yaml", &simple("p", "echo hi"));
    let out = ws.run(&["apply", "-f", "p.yaml"]);
    assert_exit(&out, 0);
    assert_eq!(text(&out.stdout), "pipeline/p created\n");
    assert!(ws.path().join("watched/p.yaml").exists());
    assert!(!ws.path().join("manifests/p.yaml").exists());
    let out = ws.run(&["diff", "-f", "p.yaml"]);
    assert_exit(&out, 0);
    let out = ws.run(&["delete", "p"]);
    assert_exit(&out, 0);
    assert!(!ws.path().join("watched/p.yaml").exists());
    // --manifests still wins.
    let out = ws.run(&["apply", "-f", "p.yaml", "--manifests", "elsewhere"]);
    assert_exit(&out, 0);
    assert!(ws.path().join("elsewhere/p.yaml").exists());
}
