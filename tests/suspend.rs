//! Integration tests of `suspend` / `unsuspend` as file edits, against the real binary: the
//! folder they edit (the one the controller of the state folder watches), the rewritten file's
//! mode and owner, and the `apply --prune` inventory following the edit. What a suspended
//! pipeline does is tested in `overlap.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Output;

use common::{Workspace, manifest, text};

fn pipeline(name: &str) -> String {
    manifest(name, "", "    - id: main\n      command: echo x\n")
}

fn says(out: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    )
}

fn ok(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", says(out));
    text(&out.stdout)
}

/// Without `--manifests`, suspend edits the folder the state folder's controller watches (as
/// `status` and `wait` read it), not the configuration's default folder.
#[test]
fn suspend_edits_the_folder_the_controller_watches() {
    let ws = Workspace::new();
    let watched = ws.write("watched/p.yaml", &pipeline("p"));
    let default = ws.write("manifests/p.yaml", &pipeline("p"));
    ok(&ws.run(&["controller", "--once", "--manifests", "watched"]));

    assert_eq!(ok(&ws.run(&["suspend", "p"])), "pipeline/p suspended\n");
    assert!(
        std::fs::read_to_string(&watched)
            .unwrap()
            .contains("suspend: true"),
        "the watched folder was not edited"
    );
    assert_eq!(std::fs::read_to_string(&default).unwrap(), pipeline("p"));
    assert_eq!(ok(&ws.run(&["unsuspend", "p"])), "pipeline/p unsuspended\n");
    assert!(
        std::fs::read_to_string(&watched)
            .unwrap()
            .contains("suspend: false")
    );
    // `--manifests` still wins.
    ok(&ws.run(&["suspend", "p", "--manifests", "manifests"]));
    assert!(
        std::fs::read_to_string(&default)
            .unwrap()
            .contains("suspend: true")
    );
}

/// The rewritten manifest keeps its mode (0600 stays 0600) and, run as root, its owner.
#[test]
fn suspend_keeps_the_files_mode_and_owner() {
    let ws = Workspace::new();
    let file = ws.write("manifests/p.yaml", &pipeline("p"));
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let as_root = nix::unistd::geteuid().is_root();
    if as_root {
        std::os::unix::fs::chown(&file, Some(65534), Some(65534)).unwrap();
    }
    for verb in ["suspend", "unsuspend"] {
        ok(&ws.run(&[verb, "p", "--manifests", "manifests"]));
        let meta = std::fs::metadata(&file).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "after {verb}");
        if as_root {
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534), "after {verb}");
        }
    }
}

/// A file apply wrote is still pruned by its source after suspend and unsuspend edited it; one
/// changed by hand before is still not.
#[test]
fn a_suspended_file_apply_wrote_can_still_be_pruned() {
    let ws = Workspace::new();
    ws.write("src/p.yaml", &pipeline("p"));
    ws.write("src/q.yaml", &pipeline("q"));
    ws.write("src/r.yaml", &pipeline("r"));
    ok(&ws.run(&["apply", "-f", "src", "--prune", "--manifests", "m"]));

    ok(&ws.run(&["suspend", "p", "--manifests", "m"]));
    // r is tuned by hand first: its inventory entry must not follow the suspend.
    let r = ws.path().join("m/r.yaml");
    let tuned = format!("# tuned\n{}", std::fs::read_to_string(&r).unwrap());
    std::fs::write(&r, &tuned).unwrap();
    ok(&ws.run(&["suspend", "r", "--manifests", "m"]));
    ok(&ws.run(&["suspend", "q", "--manifests", "m"]));
    ok(&ws.run(&["unsuspend", "q", "--manifests", "m"]));

    for name in ["p", "q", "r"] {
        std::fs::remove_file(ws.path().join(format!("src/{name}.yaml"))).unwrap();
    }
    ws.write("src/s.yaml", &pipeline("s"));
    let out = ws.run(&["apply", "-f", "src", "--prune", "--manifests", "m"]);
    let stdout = ok(&out);
    assert_eq!(
        stdout,
        "pipeline/s created\npipeline/p pruned\npipeline/q pruned\n",
        "{}",
        says(&out)
    );
    assert!(
        text(&out.stderr).contains("pipeline/r was changed since apply wrote it; not pruned"),
        "{}",
        says(&out)
    );
    assert!(r.exists());
}
