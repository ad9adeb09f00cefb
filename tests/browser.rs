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
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut head = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let mut reader = Reader {
            stream,
            raw: Vec::new(),
            chunked: false,
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
        while self.fill() {}
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
        (format!("/api/v1/runs/99999/jobs/talk/log/stream"), 404),
        (format!("/api/v1/runs/x/jobs/talk/log/stream"), 400),
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
