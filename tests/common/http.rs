//! A controller serving HTTP (`--listen 127.0.0.1:0`, its address read from `STATE/http.addr`)
//! and raw HTTP/1.1 exchanges over TCP, so that hostile input reaches the server exactly as
//! written: for the HTTP tests that are not `http_api.rs` (which keeps its own).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{Workspace, bin, text};

/// A controller serving HTTP on a free port, stopped (SIGTERM) when dropped.
pub struct Served {
    /// `None` once a test took it (to stop it its own way).
    pub child: Option<Child>,
    pub addr: SocketAddr,
}

impl Served {
    pub fn start(ws: &Workspace, env: &[(&str, &str)]) -> Served {
        std::fs::create_dir_all(ws.path().join("manifests")).unwrap();
        let mut cmd = Command::new(bin());
        cmd.current_dir(ws.path())
            .args(["--state-dir", ws.state_dir().to_str().unwrap()])
            .args(["controller", "--manifests", "manifests"])
            .args(["--listen", "127.0.0.1:0"])
            .env("EXECUTIONER_RESYNC_INTERVAL", "1")
            .env_remove("EXECUTIONER_STATE_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(ws.path().join("controller.log")).unwrap(),
            ));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let file = ws.state_dir().join("http.addr");
        let start = Instant::now();
        let addr = loop {
            if let Some(addr) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse().ok())
            {
                break addr;
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && start.elapsed() < Duration::from_secs(30),
                "no {} (exited: {exited:?}):\n{}",
                file.display(),
                controller_log(ws)
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        Served {
            child: Some(child),
            addr,
        }
    }

    /// `/readyz`'s status and body.
    pub fn ready(&self) -> (u16, String) {
        let answer = get(self.addr, "/readyz");
        (answer.status, text(&answer.body))
    }

    /// Kills it with SIGKILL (and reaps it).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Whether the controller process is still running.
    pub fn alive(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(c.id() as i32);
            // A test that froze it (SIGSTOP) and failed must not wait for it forever.
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }
}

pub fn controller_log(ws: &Workspace) -> String {
    std::fs::read_to_string(ws.path().join("controller.log")).unwrap_or_default()
}

/// An answer: status, lowercased header names, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    /// The first answer in `raw` (a whole exchange read to its end).
    pub fn parse(raw: &[u8]) -> Answer {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .unwrap_or_else(|| panic!("no response head: {}", text(raw)));
        let head = text(&raw[..split]);
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head}"));
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut answer = Answer {
            status,
            headers,
            body: raw[split + 4..].to_vec(),
        };
        if let Some(n) = answer.header("content-length").and_then(|n| n.parse().ok()) {
            answer.body.truncate(n);
        }
        answer
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An error answer: JSON `{"error": "..."}` with `status`; returns the message.
    pub fn assert_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", text(&self.body));
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body: serde_json::Value = serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&self.body)));
        body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error message: {body}"))
            .to_owned()
    }
}

/// Sends `bytes` on a new connection and reads until the server closes it.
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // The server may answer (and stop reading) before a huge request is all written.
    let _ = stream.write_all(bytes);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    raw
}

/// `GET target` on its own connection.
pub fn get(addr: SocketAddr, target: &str) -> Answer {
    let head = format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    Answer::parse(&exchange(addr, head.as_bytes()))
}
