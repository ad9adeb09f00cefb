//! Serving connections: each accepted TCP connection is one of hyper's HTTP/1.1 connections with a
//! header read timeout (a client trickling its headers is dropped), behind [`HeadGuard`], which
//! reads every request head before hyper does and answers one that is too big (a URL longer than
//! hyper can parse, too many or too large headers) with the JSON error every other refusal gets,
//! where hyper would answer a bodyless 414 or 431 itself. Not the router, nor the limits on what a
//! parsed request may ask (`mod.rs`).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

/// The largest request head (request line and headers) read; a larger one is answered 414 (when
/// the request line alone is longer) or 431. Below hyper's own limits (a 64 KiB URI, a ~400 KiB
/// buffer), so that a head hyper would refuse is always refused here first, with a JSON body.
pub const MAX_HEAD: usize = 32 * 1024;
/// The most headers a request may have (hyper's own default, checked here first).
pub const MAX_HEADERS: usize = 100;
/// How long a client may take to send a request head (from its first byte, or from the end of
/// the previous answer on a kept-alive connection) before the connection is closed.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// The most bytes read and dropped after a refusal before the connection is closed.
const DRAIN: usize = 4 * 1024 * 1024;

/// The most connections served at once (each holds a socket; a log follower also a file): past
/// it a new connection is closed at once, so clients cannot take the file descriptors the
/// controller needs to start jobs.
pub const MAX_CONNECTIONS: usize = 512;

/// Serves `router` on `listener` until `stop`, then lets the connections in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    stop: CancellationToken,
) -> io::Result<()> {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_headers(MAX_HEADERS);
    let graceful = GracefulShutdown::new();
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: the listener is fine, wait a little
                    // (as axum::serve does) rather than spin.
                    tracing::debug!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let Ok(slot) = std::sync::Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!("refusing a connection: {MAX_CONNECTIONS} are open");
            drop(tcp);
            continue;
        };
        let connection = builder.serve_connection(
            TokioIo::new(HeadGuard::new(tcp)),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            // A client gone, a head refused or read too slowly: that connection's business only.
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// Where a connection's byte stream is, as far as the guard follows it.
#[derive(Debug)]
enum Framing {
    /// In a request head: its bytes so far.
    Head(Vec<u8>),
    /// In a body of this many bytes still to come.
    Body(u64),
    /// In a body the guard does not follow (chunked): the rest of the connection is passed as it
    /// is, under hyper's own limits (the router refuses such a request anyway).
    Opaque,
    /// Writing this refusal (from `written`).
    Refusing { answer: Vec<u8>, written: usize },
    /// The refusal is sent: what the client still sends (the rest of a huge URL) is read and
    /// dropped, up to `left` bytes, so that closing the socket with unread data does not reset
    /// the connection before the client has read the refusal.
    Draining { left: usize },
    /// Done: hyper reads the end of the stream.
    Refused,
}

/// A TCP stream whose request heads are checked before hyper reads them.
#[derive(Debug)]
pub struct HeadGuard<S> {
    inner: S,
    framing: Framing,
}

impl<S> HeadGuard<S> {
    pub fn new(inner: S) -> Self {
        HeadGuard {
            inner,
            framing: Framing::Head(Vec::new()),
        }
    }

    /// Follows the bytes just read; returns the refusal when they make a head too big.
    fn inspect(&mut self, mut bytes: &[u8]) -> Option<Vec<u8>> {
        while !bytes.is_empty() {
            match &mut self.framing {
                Framing::Head(head) => {
                    if head.is_empty() {
                        // Empty lines before a request are allowed (and skipped by hyper).
                        let skip = bytes.iter().take_while(|b| matches!(b, b'\r' | b'\n'));
                        bytes = &bytes[skip.count()..];
                        if bytes.is_empty() {
                            return None;
                        }
                    }
                    let before = head.len();
                    let room = MAX_HEAD + 1 - before;
                    head.extend_from_slice(&bytes[..bytes.len().min(room)]);
                    // httparse finds the end as hyper will (CRLF or bare LF line endings).
                    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
                    let mut request = httparse::Request::new(&mut headers);
                    let end = match request.parse(head) {
                        Ok(httparse::Status::Complete(end)) => end,
                        Ok(httparse::Status::Partial) if head.len() > MAX_HEAD => {
                            return Some(too_big(head));
                        }
                        Ok(httparse::Status::Partial) => return None,
                        Err(e) => return Some(malformed(e)),
                    };
                    if end > MAX_HEAD {
                        return Some(too_big(head));
                    }
                    let next = framing_after(request.headers);
                    // The head's part of these bytes; what follows is gone through again in the
                    // state after the head.
                    let consumed = end.saturating_sub(before);
                    self.framing = next;
                    bytes = &bytes[consumed.min(bytes.len())..];
                }
                Framing::Body(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    bytes = &bytes[n as usize..];
                    if *left == 0 {
                        self.framing = Framing::Head(Vec::new());
                    }
                }
                Framing::Opaque
                | Framing::Refusing { .. }
                | Framing::Draining { .. }
                | Framing::Refused => return None,
            }
        }
        None
    }
}

/// The refusal of a head httparse cannot read.
fn malformed(error: httparse::Error) -> Vec<u8> {
    match error {
        httparse::Error::TooManyHeaders => refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("a request may have at most {MAX_HEADERS} headers"),
        ),
        other => refusal(
            StatusCode::BAD_REQUEST,
            &format!("not an HTTP/1.1 request ({other})"),
        ),
    }
}

/// The framing after a complete head with these headers: its body, then the next head.
fn framing_after(headers: &[httparse::Header<'_>]) -> Framing {
    let mut length = 0;
    for header in headers {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Framing::Opaque;
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            match std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                Some(n) => length = n,
                None => return Framing::Opaque,
            }
        }
    }
    if length == 0 {
        Framing::Head(Vec::new())
    } else {
        Framing::Body(length)
    }
}

/// The refusal of a head over [`MAX_HEAD`]: 414 when its request line alone is that long.
fn too_big(head: &[u8]) -> Vec<u8> {
    let request_line_ended = head.contains(&b'\n');
    if request_line_ended {
        refusal(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            &format!("the request's headers are larger than {MAX_HEAD} bytes"),
        )
    } else {
        refusal(
            StatusCode::URI_TOO_LONG,
            &format!("the URL is longer than {} bytes", super::MAX_URL),
        )
    }
}

/// A whole answer, as the router's errors are: `{"error": "..."}`, and the connection closed.
fn refusal(status: StatusCode, message: &str) -> Vec<u8> {
    let body = serde_json::to_string(&super::api::ErrorBody {
        error: message.to_owned(),
    })
    .unwrap_or_default();
    format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default(),
        body.len()
    )
    .into_bytes()
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for HeadGuard<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.framing {
                Framing::Refusing { answer, written } => {
                    while *written < answer.len() {
                        let n =
                            ready!(Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]))?;
                        if n == 0 {
                            break;
                        }
                        *written += n;
                    }
                    ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
                    // The client sees the end of the answer even while it still writes.
                    let _ = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
                    this.framing = Framing::Draining { left: DRAIN };
                    continue;
                }
                Framing::Draining { left } => {
                    let before = buf.filled().len();
                    let read = ready!(Pin::new(&mut this.inner).poll_read(cx, buf));
                    let n = buf.filled().len() - before;
                    buf.set_filled(before);
                    match read {
                        Ok(()) if n > 0 && n < *left => *left -= n,
                        Ok(()) | Err(_) => this.framing = Framing::Refused,
                    }
                    continue;
                }
                // The end of the stream for hyper, in the middle of a head: it closes the
                // connection without an answer of its own.
                Framing::Refused => return Poll::Ready(Ok(())),
                Framing::Head(_) | Framing::Body(_) | Framing::Opaque => {}
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let Some(answer) = this.inspect(&buf.filled()[before..]) else {
                return Poll::Ready(Ok(()));
            };
            // hyper never sees the bytes that made the head too big.
            buf.set_filled(before);
            this.framing = Framing::Refusing { answer, written: 0 };
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeadGuard<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> HeadGuard<tokio::io::Empty> {
        HeadGuard::new(tokio::io::empty())
    }

    fn status_of(answer: &[u8]) -> String {
        String::from_utf8_lossy(answer)
            .split(' ')
            .nth(1)
            .unwrap_or_default()
            .to_owned()
    }

    #[test]
    fn heads_and_bodies_are_followed_across_reads() {
        let mut g = guard();
        assert!(g.inspect(b"\r\nGET /a HTTP/1.1\r\nHo").is_none());
        assert!(g.inspect(b"st: x\r\n\r").is_none());
        assert!(
            g.inspect(b"\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nab")
                .is_none()
        );
        assert!(matches!(g.framing, Framing::Body(3)));
        assert!(g.inspect(b"cdeGET /c HTTP/1.1\r\n\r\n").is_none());
        assert!(matches!(&g.framing, Framing::Head(h) if h.is_empty()));
    }

    /// hyper accepts bare-LF line endings: so does the guard, or many small requests on one
    /// connection would add up to one "head" too big, and a body holding CRLFCRLF would be
    /// taken for a head's end.
    #[test]
    fn bare_lf_heads_end_where_hyper_ends_them() {
        let mut g = guard();
        for _ in 0..2_000 {
            assert!(g.inspect(b"GET /healthz HTTP/1.1\nHost: x\n\n").is_none());
            assert!(matches!(&g.framing, Framing::Head(h) if h.is_empty()));
        }
        assert!(
            g.inspect(b"POST /b HTTP/1.1\nContent-Length: 6\n\nx\r\n\r\nyGET / HTTP/1.1\n\n")
                .is_none()
        );
        assert!(matches!(&g.framing, Framing::Head(h) if h.is_empty()));
    }

    #[test]
    fn a_head_too_big_is_refused_as_json() {
        let mut g = guard();
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD));
        let answer = g.inspect(long.as_bytes()).expect("refused");
        assert_eq!(status_of(&answer), "414");
        assert!(String::from_utf8_lossy(&answer).ends_with("\"}"));

        let mut g = guard();
        let mut head = String::from("GET / HTTP/1.1\r\n");
        while head.len() <= MAX_HEAD {
            head.push_str("X-Big: 0123456789012345678901234567890123456789\r\n");
        }
        assert_eq!(
            status_of(&g.inspect(head.as_bytes()).expect("refused")),
            "431"
        );

        let mut g = guard();
        let mut head = String::from("GET / HTTP/1.1\r\n");
        for i in 0..=MAX_HEADERS {
            head.push_str(&format!("X-{i}: y\r\n"));
        }
        head.push_str("\r\n");
        assert_eq!(
            status_of(&g.inspect(head.as_bytes()).expect("refused")),
            "431"
        );
    }
}
