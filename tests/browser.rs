//! The web pages and their live updates (DESIGN 10, issue 17): a real controller with
//! `--listen 127.0.0.1:0` on a temp manifests folder, read over plain HTTP/1.1 (the server-sent
//! event streams, the HTML of each page, hostile names and log lines), and in headless Chromium
//! driven through WebDriver (`chromedriver`): the pages, the DAG's colours, a log line appearing
//! without a reload, no console error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Workspace, bin, manifest, text, wait_until};
use serde_json::Value;

/// A controller serving HTTP on a free port, stopped (SIGTERM) when dropped.
struct Served {
    child: Option<Child>,
    addr: SocketAddr,
}

impl Served {
    fn start(ws: &Workspace) -> Served {
        std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
        let child = Command::new(bin())
            .current_dir(ws.path())
            .args(["--state-dir", ws.state_dir().to_str().unwrap()])
            .args(["controller", "--manifests", "manifests"])
            .args(["--listen", "127.0.0.1:0"])
            .env("EXECUTIONER_RESYNC_INTERVAL", "1")
            .env_remove("EXECUTIONER_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(ws.path().join("controller.log")).unwrap(),
            ))
            .spawn()
            .unwrap();
        let mut served = Served {
            child: Some(child),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        let file = ws.state_dir().join("http.addr");
        let start = Instant::now();
        served.addr = loop {
            if let Some(addr) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break addr;
            }
            let exited = served.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "no {} (exited: {exited:?}):\n{}",
                file.display(),
                log(ws)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        served
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Waits until the job `job` of `run` is `phase`.
    fn wait_job(&self, run: i64, job: &str, phase: &str) {
        let mut last = Value::Null;
        let start = Instant::now();
        loop {
            let detail = get_json(self.addr, &format!("/api/v1/runs/{run}"));
            let jobs = detail["jobs"].as_array().unwrap();
            if let Some(j) = jobs.iter().find(|j| j["id"] == job) {
                if j["phase"] == phase {
                    return;
                }
                last = j.clone();
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{job} of run {run} never {phase}: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            let _ = c.wait();
        }
    }
}

fn log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default()
}

/// An answer read to its end: status, lowercased headers, the body (de-chunked).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A response being read: its head, then its body as it comes (chunked or not).
struct Reader {
    stream: TcpStream,
    raw: Vec<u8>,
    chunked: bool,
    /// The body's length when the head gave it (a server may keep the connection open after).
    length: Option<usize>,
    body: Vec<u8>,
    eof: bool,
}

impl Reader {
    /// Sends `GET target` with `headers` and reads the response head.
    fn get(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> (Reader, u16, Vec<(String, String)>) {
        Reader::send(addr, "GET", target, headers, None)
    }

    /// Sends a request (a JSON `body` if any) and reads the response head.
    fn send(
        addr: SocketAddr,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> (Reader, u16, Vec<(String, String)>) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut head =
            format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        head.push_str(body.unwrap_or_default());
        stream.write_all(head.as_bytes()).unwrap();
        let mut reader = Reader {
            stream,
            raw: Vec::new(),
            chunked: false,
            length: None,
            body: Vec::new(),
            eof: false,
        };
        let split = loop {
            if let Some(at) = reader.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            assert!(reader.fill(), "no response head: {}", text(&reader.raw));
        };
        let head = text(&reader.raw[..split]);
        reader.raw.drain(..split + 4);
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        reader.chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v == "chunked");
        reader.length = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok());
        (reader, status, headers)
    }

    /// Reads more bytes; false at the end of the connection.
    fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16 * 1024];
        match self.stream.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.eof = true;
                false
            }
            Ok(n) => {
                self.raw.extend_from_slice(&buf[..n]);
                true
            }
        }
    }

    /// Moves the complete chunks read so far into `body`.
    fn decode(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        while let Some(line_end) = self.raw.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(text(&self.raw[..line_end]).trim(), 16).unwrap();
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            self.body
                .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    fn read_all(mut self) -> String {
        loop {
            self.decode();
            if self.length.is_some_and(|n| self.body.len() >= n) || !self.fill() {
                break;
            }
        }
        self.decode();
        text(&self.body)
    }

    /// The next server-sent event (`None` when the stream ended), comments skipped.
    fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            self.decode();
            if let Some(at) = self.body.windows(2).position(|w| w == b"\n\n") {
                let block = text(&self.body[..at]);
                self.body.drain(..at + 2);
                let mut event = SseEvent::default();
                let mut data = Vec::new();
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => event.event = value.to_owned(),
                        "id" => event.id = Some(value.to_owned()),
                        "data" => data.push(value.to_owned()),
                        _ => {}
                    }
                }
                if event.event.is_empty() && data.is_empty() {
                    continue;
                }
                event.data = data.join("\n");
                return Some(event);
            }
            if self.eof || !self.fill() {
                return None;
            }
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq)]
struct SseEvent {
    event: String,
    id: Option<String>,
    data: String,
}

fn get(addr: SocketAddr, target: &str) -> Answer {
    let (reader, status, headers) = Reader::get(addr, target, &[]);
    Answer {
        status,
        headers,
        body: reader.read_all(),
    }
}

fn get_json(addr: SocketAddr, target: &str) -> Value {
    let answer = get(addr, target);
    assert_eq!(answer.status, 200, "{target}: {}", answer.body);
    serde_json::from_str(&answer.body).unwrap()
}

/// The id of the latest run of `pipeline`, once there is one.
fn latest_run(addr: SocketAddr, pipeline: &str) -> i64 {
    let mut id = None;
    wait_until(Duration::from_secs(30), || {
        id = get_json(addr, &format!("/api/v1/runs?pipeline={pipeline}&limit=1"))[0]["id"].as_i64();
        id.is_some()
    });
    id.unwrap()
}

/// A pipeline whose job `talk` writes a line, waits for the file `go` in the workspace, then
/// writes a line with HTML in it and a last one without a newline.
fn gated_talker(ws: &Workspace, name: &str) {
    let go = ws.path().join("go");
    let jobs = format!(
        "    - id: talk\n      command: |\n        echo first\n        while [ ! -e {go} ]; do sleep 0.05; done\n        echo '<script>alert(1)</script>'\n        printf last\n",
        go = go.display()
    );
    ws.write(
        &format!("manifests/{name}.yaml"),
        &manifest(name, "", &jobs),
    );
}

#[test]
fn a_jobs_log_streams_line_by_line_resumes_from_an_offset_and_ends_with_the_phase() {
    let ws = Workspace::new();
    gated_talker(&ws, "talker");
    let served = Served::start(&ws);
    let run = latest_run(served.addr, "talker");
    let target = format!("/api/v1/runs/{run}/jobs/talk/log/stream");

    let (mut changes, status, _) = Reader::get(served.addr, "/api/v1/events", &[]);
    assert_eq!(status, 200);
    let (mut stream, status, headers) = Reader::get(served.addr, &target, &[]);
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream")),
        "{headers:?}"
    );
    // The engine writes a header line of its own before the job's output.
    let lines: Vec<SseEvent> = std::iter::from_fn(|| stream.next_event())
        .take_while(|e| e.data != "first")
        .collect();
    assert!(lines.iter().all(|e| e.event == "line"), "{lines:?}");
    let mut offset = lines
        .last()
        .map_or(0, |e| e.id.as_ref().unwrap().parse().unwrap());
    offset += "first\n".len() as u64;
    // Only now does the job write the rest: it reaches the stream while it is open.
    std::fs::write(ws.path().join("go"), "").unwrap();
    let rest: Vec<SseEvent> = std::iter::from_fn(|| stream.next_event()).collect();
    let html = "<script>alert(1)</script>";
    let after_html = offset + html.len() as u64 + 1;
    assert_eq!(
        rest[0],
        SseEvent {
            event: "line".into(),
            id: Some(after_html.to_string()),
            data: html.into()
        }
    );
    assert!(rest[1].data.starts_with("last"), "{rest:?}");
    // Every id is the offset just after its line.
    let mut at = after_html;
    for e in &rest[1..rest.len() - 1] {
        assert_eq!(e.event, "line");
        at += e.data.len() as u64 + 1;
        let id: u64 = e.id.as_ref().unwrap().parse().unwrap();
        assert!(id == at || id == at - 1, "{e:?} after {at}");
        at = id;
    }
    assert_eq!(
        rest.last().unwrap(),
        &SseEvent {
            event: "end".into(),
            id: None,
            data: "Succeeded".into()
        }
    );
    let file = ws.state_dir().join(format!("logs/talker/{run}/talk.log"));
    let size = std::fs::metadata(file).unwrap().len();
    assert_eq!(at, size, "the stream ends at the end of the file");

    // A finished job's stream: from an offset, or after the last event id a client saw.
    let resumed = |headers: &[(&str, &str)], target: &str| {
        let (mut r, status, _) = Reader::get(served.addr, target, headers);
        assert_eq!(status, 200);
        std::iter::from_fn(move || r.next_event())
            .map(|e| e.data)
            .collect::<Vec<_>>()
    };
    let from_html = resumed(&[], &format!("{target}?from={offset}"));
    assert_eq!(from_html[0], html);
    assert_eq!(from_html.len(), rest.len());
    let after = resumed(
        &[("Last-Event-ID", &after_html.to_string())],
        &format!("{target}?from=0"),
    );
    assert_eq!(after.len(), rest.len() - 1, "Last-Event-ID wins over ?from");
    assert!(after[0].starts_with("last"), "{after:?}");

    // The change notices named the run as it progressed.
    let mut seen = Vec::new();
    while let Some(e) = changes.next_event() {
        let data: Value = serde_json::from_str(&e.data).unwrap();
        seen.push((e.event.clone(), data.clone()));
        if data["run"] == run && data["pipeline"] == "talker" {
            break;
        }
    }
    assert_eq!(seen.last().unwrap().0, "change", "{seen:?}");

    // Validated ids only; unknown ones are JSON 404s.
    for (target, status) in [
        (format!("/api/v1/runs/{run}/jobs/nope/log/stream"), 404),
        ("/api/v1/runs/99999/jobs/talk/log/stream".to_owned(), 404),
        ("/api/v1/runs/x/jobs/talk/log/stream".to_owned(), 400),
        (
            format!("/api/v1/runs/{run}/jobs/..%2F..%2Fetc/log/stream"),
            400,
        ),
        (format!("{target}?from=-1"), 400),
    ] {
        let answer = get(served.addr, &target);
        assert_eq!(answer.status, status, "{target}: {}", answer.body);
        assert_eq!(answer.header("content-type"), Some("application/json"));
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
}

/// A pipeline `live` whose job `talk` (its description holds HTML) writes a first line, waits
/// for the file `go` in the workspace, writes a line with HTML in it and another, lasts a
/// second more and writes a last one; `after` waits for it.
fn live_pipeline(ws: &Workspace) {
    let go = ws.path().join("go");
    let jobs = format!(
        "    - id: talk\n      description: \"<img src=x onerror=alert(2)> talks\"\n      command: |\n        echo first\n        while [ ! -e {go} ]; do sleep 0.05; done\n        echo '<script>alert(1)</script>'\n        echo 'second line'\n        sleep 1\n        printf last\n    - id: after\n      command: echo done\n      dependencies: [talk]\n",
        go = go.display()
    );
    ws.write("manifests/live.yaml", &manifest("live", "", &jobs));
}

#[test]
fn pages_render_names_labels_and_log_lines_as_text() {
    let ws = Workspace::new();
    live_pipeline(&ws);
    let served = Served::start(&ws);
    let run = latest_run(served.addr, "live");
    served.wait_job(run, "talk", "Running");

    let page = get(served.addr, &format!("/runs/{run}?job=talk"));
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(
        page.header("content-security-policy")
            .is_some_and(|c| c.contains("script-src 'self'")),
        "{:?}",
        page.headers
    );
    let body = &page.body;
    // The only script is the page's own; the label is text in the picture's <title>.
    assert_eq!(body.matches("<script").count(), 1, "{body}");
    assert!(body.contains(r#"<script src="/assets/ui.js" defer></script>"#));
    assert!(!body.contains("<img src=x"), "{body}");
    assert!(
        body.contains("&lt;img src=x onerror=alert(2)&gt; talks"),
        "{body}"
    );
    assert!(body.contains(r#"class="job phase-Running""#), "{body}");
    assert!(body.contains(&format!(
        r#"data-stream="/api/v1/runs/{run}/jobs/talk/log/stream""#
    )));

    std::fs::write(ws.path().join("go"), "").unwrap();
    served.wait_job(run, "talk", "Succeeded");
    let page = get(served.addr, &format!("/runs/{run}?job=talk"));
    assert_eq!(page.body.matches("<script").count(), 1, "{}", page.body);
    assert!(
        page.body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;\nsecond line\nlast")
    );
    assert!(
        !page.body.contains("data-stream"),
        "a finished job's log is not followed"
    );

    for target in [
        "/".to_owned(),
        "/pipelines/live".to_owned(),
        format!("/runs/{run}"),
    ] {
        let page = get(served.addr, &target);
        assert_eq!(page.status, 200, "{target}: {}", page.body);
        assert_eq!(page.body.matches("<script").count(), 1, "{target}");
    }
    // A hostile id is refused, on a page that names it as text.
    for (target, status) in [
        (format!("/runs/{run}?job=%3Cscript%3E"), 400),
        (format!("/runs/{run}?job=nope"), 404),
        ("/runs/%3Cscript%3E".to_owned(), 400),
        ("/pipelines/%3Cscript%3Ex".to_owned(), 400),
        ("/pipelines/nope".to_owned(), 404),
        ("/runs/99999".to_owned(), 404),
    ] {
        let page = get(served.addr, &target);
        assert_eq!(page.status, status, "{target}: {}", page.body);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(
            page.body.matches("<script").count(),
            1,
            "{target}: {}",
            page.body
        );
    }
    let css = get(served.addr, "/assets/ui.css");
    assert_eq!(css.header("content-type"), Some("text/css; charset=utf-8"));
}

// ---------------------------------------------------------------------------------------------
// Headless Chromium through WebDriver.

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Whether the browser is there; when not, under `EXECUTIONER_CI=1` the test fails, else it
/// says how to install it and is skipped.
fn browser_installed() -> bool {
    if std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists() {
        return true;
    }
    let hint = "headless Chromium is needed: apt-get install chromium chromium-driver";
    assert!(
        std::env::var_os("EXECUTIONER_CI").is_none_or(|v| v != "1"),
        "{hint}"
    );
    eprintln!("skipped: {hint}");
    false
}

/// A chromedriver process and one browser session of it, both ended when dropped.
struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_until(Duration::from_secs(30), || TcpStream::connect(addr).is_ok());
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1280,900",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": CHROMIUM, "args": args},
            "goog:loggingPrefs": {"browser": "ALL"},
        }}});
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
            _profile: profile,
        };
        let answer = browser.command("POST", "/session", Some(caps));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        browser
    }

    /// One WebDriver command; its `value`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string());
        let (reader, status, _) = Reader::send(self.addr, method, path, &[], body.as_deref());
        let text = reader.read_all();
        let answer: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer["value"].clone()
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, &format!("/session/{}{path}", self.session), body)
    }

    fn open(&self, url: &str) {
        self.session("POST", "/url", Some(serde_json::json!({ "url": url })));
    }

    /// The value of a script's `return`.
    fn eval(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(serde_json::json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns true.
    fn wait_for(&self, what: &str, script: &str) {
        let start = Instant::now();
        while self.eval(script) != Value::Bool(true) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "never: {what} ({script})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The errors the page's hook and the browser's console saw.
    fn errors(&self) -> Vec<String> {
        let mut errors: Vec<String> = self
            .eval("return window.executionerErrors || ['ui.js did not run'];")
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.to_string())
            .collect();
        let log = self.session(
            "POST",
            "/se/log",
            Some(serde_json::json!({ "type": "browser" })),
        );
        for entry in log.as_array().into_iter().flatten() {
            if entry["level"] == "SEVERE" {
                errors.push(entry["message"].to_string());
            }
        }
        errors
    }

    /// Saves a PNG of the window as `DIR/name` when `EXECUTIONER_SCREENSHOTS=DIR` is set.
    fn screenshot(&self, name: &str) {
        let Some(dir) = std::env::var_os("EXECUTIONER_SCREENSHOTS") else {
            return;
        };
        let png = base64_decode(self.session("GET", "/screenshot", None).as_str().unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(name), png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = Reader::send(self.addr, "DELETE", &path, &[], None)
                .0
                .read_all();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (a screenshot), padding and line breaks ignored.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {c}"),
    };
    let digits: Vec<u8> = text
        .bytes()
        .filter(|c| !matches!(c, b'=' | b'\n' | b'\r'))
        .map(value)
        .collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let mut n = 0u32;
        for (i, d) in group.iter().enumerate() {
            n |= u32::from(*d) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..group.len()]);
    }
    out
}

#[test]
fn base64_decodes_what_it_should() {
    assert_eq!(base64_decode("aGVsbG8="), b"hello");
    assert_eq!(base64_decode("aGk="), b"hi");
    assert_eq!(base64_decode("YWJj"), b"abc");
}

/// The text and phase badge of each pipeline row of `/`.
const PIPELINE_PHASES: &str = "return Object.fromEntries([...document.querySelectorAll('tr[data-pipeline]')].map(r => [r.dataset.pipeline, r.querySelector('.badge').textContent]));";

#[test]
fn the_pages_in_chromium_show_pipelines_a_coloured_dag_and_a_live_log_line() {
    if !browser_installed() {
        return;
    }
    let ws = Workspace::new();
    for sample in ["hello.yaml", "flaky.yaml", "etl.yaml", "heartbeat.yaml"] {
        std::fs::copy(common::repo().join("manifests").join(sample), {
            std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
            ws.path().join("manifests").join(sample)
        })
        .unwrap();
    }
    live_pipeline(&ws);
    let served = Served::start(&ws);
    let run = latest_run(served.addr, "live");
    served.wait_job(run, "talk", "Running");
    for (name, phase) in [("hello", "Succeeded"), ("flaky-demo", "Failed")] {
        let id = latest_run(served.addr, name);
        wait_until(Duration::from_secs(60), || {
            get_json(served.addr, &format!("/api/v1/runs/{id}"))["phase"] == phase
        });
    }
    let browser = Browser::start();

    browser.open(&served.url("/"));
    let phases = browser.eval(PIPELINE_PHASES);
    assert_eq!(phases["hello"], "Succeeded", "{phases}");
    assert_eq!(phases["flaky-demo"], "Failed", "{phases}");
    assert_eq!(phases["live"], "Running", "{phases}");
    assert!(phases["nightly-etl"].is_string(), "{phases}");
    let tick = browser
        .eval("return document.querySelector('tr[data-pipeline=\"heartbeat\"] time').textContent;");
    assert!(
        tick.as_str().unwrap().ends_with(":00Z"),
        "the next tick: {tick}"
    );
    browser.wait_for(
        "the page is live",
        "return document.getElementById('live-state').textContent === 'live';",
    );
    browser.screenshot("pipelines.png");
    assert_eq!(browser.errors(), Vec::<String>::new());

    browser.open(&served.url("/pipelines/flaky-demo"));
    let rows = browser.eval("return document.querySelectorAll('tr[data-run]').length;");
    assert_eq!(rows, 1);
    browser.screenshot("pipeline.png");
    assert_eq!(browser.errors(), Vec::<String>::new());

    browser.open(&served.url(&format!("/runs/{run}?job=talk")));
    let fill = |job: &str| {
        browser.eval(&format!(
            "return getComputedStyle(document.querySelector('g[data-job=\"{job}\"] rect')).fill;"
        ))
    };
    assert_eq!(fill("talk"), "rgb(86, 180, 233)", "Running is blue");
    assert_eq!(fill("after"), "rgb(217, 217, 217)", "Pending is grey");
    browser.wait_for(
        "the log holds the first line",
        "return document.getElementById('log-text').textContent.includes('first\\n');",
    );
    // Marks this document: a reload would lose the mark.
    browser.eval("window.notReloaded = true; return true;");
    browser.wait_for(
        "the log stream is open",
        "return document.getElementById('live-state').textContent === 'live';",
    );
    std::fs::write(ws.path().join("go"), "").unwrap();
    browser.wait_for(
        "the line written after the page loaded",
        "return document.getElementById('log-text').textContent.includes('<script>alert(1)</script>\\nsecond line\\n');",
    );
    assert_eq!(
        browser.eval("return document.querySelectorAll('#log-text *').length;"),
        0,
        "the log's HTML is text"
    );
    browser.screenshot("run.png");
    browser.wait_for(
        "the picture turns Succeeded by itself",
        "return document.querySelector('g[data-job=\"after\"]').classList.contains('phase-Succeeded') && document.getElementById('log-state').textContent === 'Succeeded';",
    );
    assert_eq!(fill("talk"), "rgb(0, 158, 115)", "Succeeded is green");
    assert_eq!(
        browser.eval("return window.notReloaded === true;"),
        true,
        "no reload"
    );
    assert!(
        browser
            .eval("return document.getElementById('log-text').textContent;")
            .as_str()
            .unwrap()
            .contains("second line\nlast"),
    );
    assert_eq!(browser.errors(), Vec::<String>::new());
}

/// The page load of a 1,000-job run (HTML and DAG picture) in Chromium: the median of 5 loads,
/// navigation start to the load event (`performance.timing`). A measurement, not a check (no
/// timing assertion): `cargo test --release --test browser page_load -- --ignored --nocapture`
/// (bench/README.md).
#[test]
#[ignore = "a measurement: run it with --ignored --nocapture"]
fn page_load_of_a_1000_job_run() {
    if !browser_installed() {
        return;
    }
    let ws = Workspace::new();
    // 20 layers of 50 jobs, each after two of the layer before.
    let mut jobs = String::new();
    for layer in 0..20 {
        for i in 0..50 {
            jobs.push_str(&format!(
                "    - id: j{layer}-{i}\n      command: \"true\"\n"
            ));
            if layer > 0 {
                jobs.push_str(&format!(
                    "      dependencies: [j{p}-{i}, j{p}-{}]\n",
                    (i + 7) % 50,
                    p = layer - 1
                ));
            }
        }
    }
    ws.write("manifests/big.yaml", &manifest("big", "", &jobs));
    let served = Served::start(&ws);
    let run = latest_run(served.addr, "big");
    wait_until(Duration::from_secs(600), || {
        get_json(served.addr, &format!("/api/v1/runs/{run}"))["phase"] == "Succeeded"
    });
    let html = get(served.addr, &format!("/runs/{run}"));
    assert_eq!(html.status, 200);
    let browser = Browser::start();
    let mut loads: Vec<f64> = (0..5)
        .map(|_| {
            browser.open(&served.url(&format!("/runs/{run}")));
            browser.wait_for(
                "the load event",
                "return performance.timing.loadEventEnd > 0;",
            );
            browser
                .eval(
                    "return performance.timing.loadEventEnd - performance.timing.navigationStart;",
                )
                .as_f64()
                .unwrap()
        })
        .collect();
    loads.sort_by(f64::total_cmp);
    println!(
        "page load of a 1,000-job run ({} KiB of HTML): median {} ms of {loads:?}",
        html.body.len() / 1024,
        loads[2]
    );
    assert_eq!(browser.errors(), Vec::<String>::new());
}
