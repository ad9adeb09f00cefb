//! The `http` check end to end: `executioner run` against servers on loopback (python3's
//! http.server, wrapped in TLS under a throwaway CA for HTTPS): trust through
//! `EXECUTIONER_CA_FILE` (and its older name), a refused certificate, `expectStatus`, redirects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Workspace, job_state, json, manifest, run_with_timeout};

/// Answers `/health` with 204, `/moved` with a redirect to `/health`, `/loop` with a redirect to
/// itself, anything else with 404.
const SERVER: &str = r#"
import http.server, ssl, sys
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        target = {"/moved": "/health", "/loop": "/loop"}.get(self.path)
        self.send_response(302 if target else 204 if self.path == "/health" else 404)
        if target:
            self.send_header("Location", target)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) == 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[1], sys.argv[2])
    server.socket = context.wrap_socket(server.socket, server_side=True)
print(server.server_address[1], flush=True)
server.serve_forever()
"#;

/// A server process, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Server {
    /// Plain HTTP without `tls`, else HTTPS with this (certificate, key).
    fn start(tls: Option<(&Path, &Path)>) -> Server {
        let mut cmd = Command::new("python3");
        cmd.arg("-c").arg(SERVER);
        if let Some((cert, key)) = tls {
            cmd.arg(cert).arg(key);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("port: {line:?}"));
        Server { child, port }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `run -o json` of `file` with these CA variables set (the others removed): (exit code, run).
fn run_with_ca(
    ws: &Workspace,
    file: &str,
    ca_env: &[(&str, &Path)],
) -> (Option<i32>, serde_json::Value) {
    let mut cmd = Command::new(common::bin());
    cmd.current_dir(ws.path())
        .arg("--state-dir")
        .arg(ws.state_dir())
        .args(["run", file, "-o", "json"])
        .env_remove("EXECUTIONER_STATE_DIR")
        .env_remove("EXECUTIONER_CA_FILE")
        .env_remove("EXECUTIONER_SMTP_CA_FILE")
        .stdin(Stdio::null());
    for (name, value) in ca_env {
        cmd.env(name, value);
    }
    let out = run_with_timeout(cmd, Duration::from_secs(60));
    (out.status.code(), json(&out))
}

/// A job of the run as JSON text: its messages say what a failed check saw.
fn job_text(run: &serde_json::Value, id: &str) -> String {
    let job = run["jobs"]
        .as_array()
        .and_then(|jobs| jobs.iter().find(|j| j["id"] == id))
        .unwrap_or_else(|| panic!("no job {id} in {run}"));
    job.to_string()
}

fn http_job(id: &str, url: &str, expect: Option<u16>) -> String {
    let expect = expect.map_or(String::new(), |s| format!(", expectStatus: {s}"));
    format!(
        "    - id: {id}\n      command: \"true\"\n      preChecks: [{{http: {{url: \"{url}\", timeout: 10s{expect}}}}}]\n"
    )
}

#[test]
fn https_trusts_the_ca_file_and_refuses_an_unknown_certificate() {
    let ws = Workspace::new();
    let (ca, cert, key) = common::ca::throwaway_ca(ws.path());
    let server = Server::start(Some((&cert, &key)));
    let url = format!("https://127.0.0.1:{}/health", server.port);
    ws.write(
        "https.yaml",
        &manifest("https", "", &http_job("health", &url, Some(204))),
    );

    let (code, run) = run_with_ca(&ws, "https.yaml", &[("EXECUTIONER_CA_FILE", &ca)]);
    assert_eq!(code, Some(0), "{run}");
    assert_eq!(job_state(&run, "health").0, "Succeeded", "{run}");

    // The older name, from when only SMTP read it, still works.
    let (code, run) = run_with_ca(&ws, "https.yaml", &[("EXECUTIONER_SMTP_CA_FILE", &ca)]);
    assert_eq!(code, Some(0), "{run}");

    let (code, run) = run_with_ca(&ws, "https.yaml", &[]);
    assert_eq!(code, Some(1), "{run}");
    assert_eq!(job_state(&run, "health").1, "PreCheckFailed", "{run}");
    let message = job_text(&run, "health");
    assert!(
        message.contains(&url) && message.contains("certificate is not trusted"),
        "{message}"
    );
}

#[test]
fn plain_http_follows_redirects_and_compares_the_status() {
    let ws = Workspace::new();
    let server = Server::start(None);
    let base = format!("http://127.0.0.1:{}", server.port);
    let jobs = [
        http_job("expected", &format!("{base}/health"), Some(204)),
        http_job("redirected", &format!("{base}/moved"), Some(204)),
        http_job("any-2xx", &format!("{base}/moved"), None),
        http_job("other-status", &format!("{base}/health"), Some(200)),
        http_job("not-found", &format!("{base}/nothing"), None),
        http_job("endless", &format!("{base}/loop"), None),
    ]
    .concat();
    ws.write("plain.yaml", &manifest("plain", "", &jobs));
    let (code, run) = run_with_ca(&ws, "plain.yaml", &[]);
    assert_eq!(code, Some(1), "{run}");
    for (job, phase) in [
        ("expected", "Succeeded"),
        ("redirected", "Succeeded"),
        ("any-2xx", "Succeeded"),
        ("other-status", "Failed"),
        ("not-found", "Failed"),
        ("endless", "Failed"),
    ] {
        assert_eq!(job_state(&run, job).0, phase, "{job}: {run}");
    }
    assert!(
        job_text(&run, "other-status").contains("answered 204"),
        "{run}"
    );
    assert!(job_text(&run, "endless").contains("redirects"), "{run}");
}
