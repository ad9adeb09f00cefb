//! The controller's HTTP server under hostile clients (DESIGN 10, issue 17): a 1 MB URL, many and
//! large headers, clients trickling their headers (slow loris), and 200 clients following a live
//! log while the controller reconciles. Real controller, raw HTTP/1.1 over TCP; no timing
//! assertion (the reaction time under load is measured by `bench/bench.py --ui`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::http::{Answer, Served, controller_log, exchange, get};
use common::{Workspace, manifest, text, wait_phase};

fn hello(ws: &Workspace) {
    ws.write(
        "manifests/hello.yaml",
        &manifest("hello", "", "    - {id: greet, command: \"echo hi\"}\n"),
    );
}

#[test]
fn heads_too_big_get_the_json_error_and_the_server_keeps_serving() {
    let ws = Workspace::new();
    hello(&ws);
    let mut served = Served::start(&ws, &[]);
    let addr = served.addr;
    wait_phase(&ws, "hello", "Succeeded", 1);

    // A 1 MB URL: beyond what hyper parses (64 KiB), refused before it with our JSON.
    let huge = format!(
        "GET /api/v1/runs?pipeline={} HTTP/1.1\r\nHost: t\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let message = Answer::parse(&exchange(addr, huge.as_bytes())).assert_error(414);
    assert!(message.contains("URL is longer"), "{message}");
    // A long URL hyper can parse is refused by the router's limit, the same way.
    let long = format!("/api/v1/runs?pipeline={}", "a".repeat(20_000));
    get(addr, &long).assert_error(414);

    // Large headers (40 of 4 KiB), and too many small ones.
    let mut big = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..40 {
        big.push_str(&format!("X-Big-{i}: {}\r\n", "v".repeat(4096)));
    }
    big.push_str("\r\n");
    let message = Answer::parse(&exchange(addr, big.as_bytes())).assert_error(431);
    assert!(message.contains("headers are larger"), "{message}");
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: t\r\n");
    for i in 0..150 {
        many.push_str(&format!("X-{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let message = Answer::parse(&exchange(addr, many.as_bytes())).assert_error(431);
    assert!(message.contains("at most 100 headers"), "{message}");

    // On a kept-alive connection: the first request is answered, the huge second one refused.
    let mut both = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec();
    both.extend_from_slice(huge.as_bytes());
    let raw = exchange(addr, &both);
    let first = Answer::parse(&raw);
    assert_eq!(first.status, 200, "{}", text(&raw));
    let second = text(&raw);
    let second = second.split("HTTP/1.1 ").nth(2).expect("a second answer");
    assert!(second.starts_with("414 "), "{second}");
    assert!(second.contains("application/json"), "{second}");

    // A body of a declared length is skipped over, and the next head is read as a head.
    // (Read as the start of the next head, the body would make it malformed: a 400.)
    let mut posted = b"POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 12\r\n\r\n".to_vec();
    posted.extend_from_slice(
        b"abcdefghijklGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    let raw = text(&exchange(addr, &posted));
    assert!(raw.starts_with("HTTP/1.1 405 "), "{raw}");
    assert!(raw.contains("HTTP/1.1 200 "), "{raw}");

    assert_eq!(get(addr, "/healthz").status, 200);
    assert!(served.alive(), "{}", controller_log(&ws));
}

#[test]
fn clients_trickling_their_headers_are_dropped_while_others_are_served() {
    let ws = Workspace::new();
    hello(&ws);
    let served = Served::start(&ws, &[]);
    let addr = served.addr;
    wait_phase(&ws, "hello", "Succeeded", 1);
    // Twenty slow-loris clients: a byte of their head every 100 ms, never the end of it.
    let loris: Vec<_> = (0..20)
        .map(|_| {
            let stream = TcpStream::connect(addr).unwrap();
            let mut writer = stream.try_clone().unwrap();
            std::thread::spawn(move || {
                let head = format!(
                    "GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: {}",
                    "s".repeat(10_000)
                );
                for byte in head.bytes() {
                    if writer.write_all(&[byte]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            stream
        })
        .collect();
    // Meanwhile everyone else is served.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(1) {
        assert_eq!(get(addr, "/healthz").status, 200);
    }
    // Each slow client is cut off by the header read timeout, with nothing served to it.
    for mut stream in loris {
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut got = Vec::new();
        match stream.read_to_end(&mut got) {
            Ok(_) => assert!(
                got.is_empty() || text(&got).starts_with("HTTP/1.1 408"),
                "{}",
                text(&got)
            ),
            Err(e) => assert!(
                matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                ),
                "the server never closed a slow client: {e}"
            ),
        }
    }
    assert_eq!(get(addr, "/healthz").status, 200);
}

/// Follows a job's log stream until told to stop; counts the `line` events it got in `lines`,
/// and itself in `following` once it got one.
async fn follow(
    addr: std::net::SocketAddr,
    target: String,
    (lines, following): (Arc<AtomicUsize>, Arc<AtomicUsize>),
    stop: tokio_util::sync::CancellationToken,
) -> usize {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {target} HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0; 16 * 1024];
    let mut counted = 0;
    loop {
        let n = tokio::select! {
            read = stream.read(&mut buf) => read.unwrap(),
            () = stop.cancelled() => break,
        };
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        let now = text(&seen).matches("event: line").count();
        lines.fetch_add(now - counted, Ordering::Relaxed);
        if counted == 0 && now > 0 {
            following.fetch_add(1, Ordering::Relaxed);
        }
        counted = now;
    }
    let seen = text(&seen);
    assert!(seen.starts_with("HTTP/1.1 200 "), "{seen}");
    assert!(seen.contains("text/event-stream"), "{seen}");
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_followers_of_a_live_log_leave_the_controller_reconciling() {
    let ws = Arc::new(Workspace::new());
    ws.write(
        "manifests/talk.yaml",
        &manifest(
            "talk",
            "",
            "    - {id: talk, command: \"for i in $(seq 1 1200); do echo line $i; sleep 0.05; done\"}\n",
        ),
    );
    let served = Served::start(&ws, &[]);
    let addr = served.addr;
    // The run's id once its job is running.
    let run = tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        loop {
            let answer = get(addr, "/api/v1/runs?pipeline=talk");
            let runs: serde_json::Value = serde_json::from_slice(&answer.body).unwrap();
            if let Some(id) = runs[0]["id"].as_i64() {
                return id;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "talk never started"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    })
    .await
    .unwrap();
    let target = format!("/api/v1/runs/{run}/jobs/talk/log/stream");
    let lines = Arc::new(AtomicUsize::new(0));
    let following = Arc::new(AtomicUsize::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let followers: Vec<_> = (0..200)
        .map(|_| {
            let counters = (lines.clone(), following.clone());
            tokio::spawn(follow(addr, target.clone(), counters, stop.clone()))
        })
        .collect();
    // Every follower gets lines (at least the log so far).
    let start = Instant::now();
    while following.load(Ordering::Relaxed) < 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} followers got a line",
            following.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A new manifest meanwhile: the controller starts (and finishes) its run.
    ws.write(
        "manifests/second.yaml",
        &manifest("second", "", "    - {id: x, command: \"true\"}\n"),
    );
    let waiting = ws.clone();
    tokio::task::spawn_blocking(move || wait_phase(&waiting, "second", "Succeeded", 1))
        .await
        .unwrap();
    // The followers are still following: more lines came while the other run ran.
    let before = lines.load(Ordering::Relaxed);
    let start = Instant::now();
    while lines.load(Ordering::Relaxed) < before + 200 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the followers stalled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.cancel();
    for f in followers {
        assert!(f.await.expect("a follower failed") > 0);
    }
}

/// Clients cannot hold more than `MAX_CONNECTIONS` connections (the file descriptors the
/// controller needs to start jobs): one past the limit is closed at once, and once the others
/// go, the server serves again.
#[test]
fn connections_past_the_limit_are_closed_and_the_server_recovers() {
    let ws = Workspace::new();
    hello(&ws);
    let served = Served::start(&ws, &[]);
    let addr = served.addr;
    wait_phase(&ws, "hello", "Succeeded", 1);
    let limit = executioner::http::conn::MAX_CONNECTIONS;
    // Idle connections (no request yet: they hold a slot until the header timeout).
    let idle: Vec<TcpStream> = (0..limit)
        .map(|_| TcpStream::connect(addr).unwrap())
        .collect();
    // Give the accept loop time to take them all.
    std::thread::sleep(Duration::from_millis(500));
    let mut extra = TcpStream::connect(addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut answer = Vec::new();
    let read = extra.read_to_end(&mut answer);
    assert!(
        matches!(read, Ok(0)) || answer.is_empty(),
        "one connection past {limit} is closed unanswered: {read:?} {}",
        String::from_utf8_lossy(&answer)
    );
    drop(idle);
    common::wait_until(Duration::from_secs(10), || {
        std::panic::catch_unwind(|| get(addr, "/healthz").status).is_ok_and(|s| s == 200)
    });
}
