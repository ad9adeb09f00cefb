//! Configuration layering, `executioner config`, and the security policy (issue 6).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{Workspace, manifest, text};

fn config_json(
    ws: &Workspace,
    env: &[(&str, &str)],
    args: &[&str],
) -> (Option<i32>, serde_json::Value, String) {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .env("EXECUTIONER_SYSTEM_CONFIG", ws.path().join("system.toml"))
        .args(args)
        .args(["config", "-o", "json"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    let value = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), value, text(&out.stderr))
}

fn entry<'a>(all: &'a serde_json::Value, key: &str) -> (&'a serde_json::Value, &'a str) {
    let e = all
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["key"] == key)
        .unwrap_or_else(|| panic!("no {key}"));
    (&e["value"], e["source"].as_str().unwrap())
}

#[test]
fn five_layers_in_order_and_absent_flags_do_not_override() {
    let ws = Workspace::new();
    ws.write(
        "system.toml",
        "log_level = \"debug\"\nmanifests_dir = \"sys-manifests\"\nworkers = 1\nstate_dir = \"sys-state\"\n",
    );
    ws.write(
        "executioner.toml",
        "manifests_dir = \"proj-manifests\"\nworkers = 2\nstate_dir = \"proj-state\"\nlog_format = \"json\"\n",
    );
    let env = [
        ("EXECUTIONER_WORKERS", "3"),
        ("EXECUTIONER_STATE_DIR", "env-state"),
        ("EXECUTIONER_SMTP__PORT", "2525"),
    ];
    let (code, all, stderr) = config_json(&ws, &env, &["--state-dir", "flag-state"]);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(
        entry(&all, "resync_interval"),
        (&serde_json::json!("30s"), "default")
    );
    assert_eq!(
        entry(&all, "log_level").1,
        ws.path().join("system.toml").display().to_string()
    );
    assert_eq!(
        entry(&all, "manifests_dir"),
        (&serde_json::json!("proj-manifests"), "executioner.toml")
    );
    assert_eq!(
        entry(&all, "workers"),
        (&serde_json::json!(3), "env EXECUTIONER_WORKERS")
    );
    assert_eq!(
        entry(&all, "smtp.port"),
        (&serde_json::json!(2525), "env EXECUTIONER_SMTP__PORT")
    );
    assert_eq!(
        entry(&all, "state_dir"),
        (&serde_json::json!("flag-state"), "flag --state-dir")
    );
    // --log-format was not given: the file's value stands.
    assert_eq!(
        entry(&all, "log_format"),
        (&serde_json::json!("json"), "executioner.toml")
    );
    let (_, all, _) = config_json(&ws, &env, &["--log-format", "pretty"]);
    assert_eq!(
        entry(&all, "log_format"),
        (&serde_json::json!("pretty"), "flag --log-format")
    );
    // --config replaces the project file.
    ws.write("other.yaml", "workers: 7\nshutdown_grace: 2s\n");
    let (_, all, _) = config_json(&ws, &[], &["--config", "other.yaml"]);
    assert_eq!(
        entry(&all, "workers"),
        (&serde_json::json!(7), "other.yaml")
    );
    assert_eq!(
        entry(&all, "manifests_dir").0,
        "sys-manifests",
        "the project file is not read with --config (the system file still is)"
    );
}

#[test]
fn bad_configuration_names_the_key_and_file() {
    let ws = Workspace::new();
    ws.write("executioner.toml", "workerz = 2\n");
    let (code, _, stderr) = config_json(&ws, &[], &[]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("executioner.toml") && stderr.contains("workerz"),
        "{stderr}"
    );
    ws.write("executioner.toml", "workers = \"many\"\n");
    let (code, _, stderr) = config_json(&ws, &[], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("executioner.toml"), "{stderr}");
    std::fs::remove_file(ws.path().join("executioner.toml")).unwrap();
    let (code, _, stderr) = config_json(&ws, &[("EXECUTIONER_WORKERS", "many")], &[]);
    assert_eq!(code, Some(2));
    assert!(stderr.contains("EXECUTIONER_WORKERS"), "{stderr}");
}

#[test]
fn secrets_are_masked_in_config_output() {
    let ws = Workspace::new();
    ws.write(
        "executioner.toml",
        "[smtp]\nusername = \"ops\"\npassword_env = \"SMTP_PW\"\n",
    );
    let (code, all, _) = config_json(&ws, &[("SMTP_PW", "very-secret")], &[]);
    assert_eq!(code, Some(0));
    assert!(!all.to_string().contains("very-secret"));
    assert_eq!(entry(&all, "smtp.password_env").0, "SMTP_PW");
}

#[test]
fn the_database_url_comes_from_flag_env_or_file_and_its_password_is_masked() {
    let ws = Workspace::new();
    let (code, all, _) = config_json(&ws, &[], &[]);
    assert_eq!(code, Some(0));
    assert_eq!(
        entry(&all, "database.url"),
        (&serde_json::Value::Null, "default")
    );
    ws.write(
        "executioner.toml",
        "[database]\nurl = \"postgres://ops:hunter2@db.example:5432/exe?sslmode=require\"\n",
    );
    let (code, all, _) = config_json(&ws, &[], &[]);
    assert_eq!(code, Some(0));
    assert!(!all.to_string().contains("hunter2"), "{all}");
    assert_eq!(
        entry(&all, "database.url").0,
        "postgres://ops:***@db.example:5432/exe?sslmode=require"
    );
    let (_, all, _) = config_json(
        &ws,
        &[("EXECUTIONER_DATABASE__URL", "postgres://env-host/exe")],
        &[],
    );
    assert_eq!(
        entry(&all, "database.url"),
        (
            &serde_json::json!("postgres://env-host/exe"),
            "env EXECUTIONER_DATABASE__URL"
        )
    );
    let (_, all, _) = config_json(
        &ws,
        &[("EXECUTIONER_DATABASE__URL", "postgres://env-host/exe")],
        &["--database-url", "postgres://flag-host/exe"],
    );
    assert_eq!(
        entry(&all, "database.url"),
        (
            &serde_json::json!("postgres://flag-host/exe"),
            "flag --database-url"
        )
    );
}

#[test]
fn security_policy_rejects_shell_and_unlisted_commands_with_positions() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("secured", "", "    - {id: shell, command: \"echo hi\"}\n    - {id: argv, command: [rm, -rf, /tmp/x]}\n    - {id: ok, command: [echo, hi]}\n"),
    );
    ws.write(
        "executioner.toml",
        "[security]\nallow_shell = false\nallowed_commands = [\"echo\", \"/usr/bin/*\"]\n",
    );
    let out = ws.run(&["validate", "p.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("p.yaml:7:") && stdout.contains("shell commands are not allowed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("p.yaml:8:") && stdout.contains("`rm` is not in security.allowed_commands"),
        "{stdout}"
    );
    assert!(!stdout.contains("p.yaml:9:"), "{stdout}");
    // `run` refuses it too.
    assert_eq!(ws.run(&["run", "p.yaml"]).status.code(), Some(1));
}

#[test]
fn a_state_folder_writable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.state_dir()).unwrap();
    std::fs::set_permissions(ws.state_dir(), std::fs::Permissions::from_mode(0o777)).unwrap();
    ws.write(
        "p.yaml",
        &manifest("unsafe", "", "    - {id: a, command: \"true\"}\n"),
    );
    let out = ws.run(&["run", "p.yaml"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn trusted_owners_are_configurable_and_unknown_users_refused() {
    let ws = Workspace::new();
    let (code, all, err) = config_json(
        &ws,
        &[(
            "EXECUTIONER_SECURITY__TRUSTED_OWNERS",
            "[65534, \"nobody\"]",
        )],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
    let (value, source) = entry(&all, "security.trusted_owners");
    assert_eq!(value, &serde_json::json!([65534, "nobody"]), "{all}");
    assert!(
        source.contains("EXECUTIONER_SECURITY__TRUSTED_OWNERS"),
        "{source}"
    );
    // A name that is no user of this machine is a usage error where it matters.
    ws.write(
        "p.yaml",
        &manifest("p", "", "    - {id: a, command: \"true\"}\n"),
    );
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .env("EXECUTIONER_SYSTEM_CONFIG", ws.path().join("system.toml"))
        .env(
            "EXECUTIONER_SECURITY__TRUSTED_OWNERS",
            "[\"no-such-user-here\"]",
        )
        .args(["validate", "p.yaml"]);
    let out = common::run_with_timeout(cmd, Duration::from_secs(30));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no user named `no-such-user-here`"),
        "{}",
        text(&out.stderr)
    );
}

/// Issue 14: the table of `executioner config` names the layer of every value, `-v`/`-q`
/// included (they are the top layer of `log_level`).
#[test]
fn config_table_names_each_values_source() {
    let ws = Workspace::new();
    ws.write("system.toml", "workers = 1\n[smtp]\nhost = \"mail\"\n");
    ws.write("other.yaml", "shutdown_grace: 2s\nsmtp:\n  port: 2525\n");
    let table = |args: &[&str]| {
        let mut cmd = Command::new(common::bin());
        cmd.current_dir(ws.path())
            .env("EXECUTIONER_SYSTEM_CONFIG", ws.path().join("system.toml"))
            .env("EXECUTIONER_SMTP__TLS", "tls")
            .env("EXECUTIONER_FAILPOINT", "not-a-setting")
            .args(args)
            .arg("config");
        let out = common::run_with_timeout(cmd, Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    let out = table(&["--config", "other.yaml", "-v"]);
    let system = ws.path().join("system.toml").display().to_string();
    for line in [
        "resync_interval = \"30s\"    # default".to_owned(),
        format!("workers = 1    # {system}"),
        format!("smtp.host = \"mail\"    # {system}"),
        "shutdown_grace = \"2s\"    # other.yaml".to_owned(),
        "smtp.port = 2525    # other.yaml".to_owned(),
        "smtp.tls = \"tls\"    # env EXECUTIONER_SMTP__TLS".to_owned(),
        "log_level = \"debug\"    # flag -v".to_owned(),
    ] {
        assert!(out.lines().any(|l| l == line), "no `{line}` in:\n{out}");
    }
    assert!(table(&["-vv"]).contains("log_level = \"trace\"    # flag -vv"));
    assert!(table(&["-q", "-v"]).contains("log_level = \"error\"    # flag -q"));
}

/// Issue 14: `log_level` from the configuration sets what is logged, and `-q` overrides it.
#[test]
fn log_level_from_the_configuration_and_flags() {
    let ws = Workspace::new();
    ws.write(
        "p.yaml",
        &manifest("levels", "", "    - {id: a, command: \"true\"}\n"),
    );
    let stderr = |args: &[&str]| {
        let out = ws.run(args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let debug_line = "run{pipeline=levels run=";
    assert!(!stderr(&["run", "p.yaml"]).contains(debug_line));
    let verbose = stderr(&["-v", "run", "p.yaml"]);
    assert!(
        verbose.contains("DEBUG") && verbose.contains(debug_line),
        "{verbose}"
    );
    ws.write("executioner.toml", "log_level = \"debug\"\n");
    let configured = stderr(&["run", "p.yaml"]);
    assert!(
        configured.contains("attempt{job=a attempt=1}: attempt started"),
        "{configured}"
    );
    assert_eq!(stderr(&["-q", "run", "p.yaml"]), "");
    // A log_level that is neither a level nor a filter is said, and info is used.
    ws.write("executioner.toml", "log_level = \"executioner=loudest\"\n");
    let refused = stderr(&["run", "p.yaml"]);
    assert!(
        refused.contains("WARN") && refused.contains("log_level"),
        "{refused}"
    );
    assert!(!refused.contains("DEBUG"), "{refused}");
}
