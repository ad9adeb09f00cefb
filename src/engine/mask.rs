//! Secret masking of job output: when a job's environment holds secrets, its stdout and stderr go
//! through a pipe to a copier that writes them to the log with every secret value replaced by
//! `***`. A secret split across two reads is still caught: the copier holds back the last
//! `longest secret - 1` bytes until more output (or the end) arrives.

use std::fs::File;
use std::io::{Read, Write};

/// What replaces a secret.
pub const MASK: &[u8] = b"***";

/// Starts a copier into `log`; returns the pipe's write end (for the child) and the copier task,
/// which ends when every writer has closed the pipe.
pub fn start(
    log: File,
    secrets: &[String],
) -> std::io::Result<(File, tokio::task::JoinHandle<std::io::Result<()>>)> {
    let (read_end, write_end) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    let secrets: Vec<Vec<u8>> = secrets
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec())
        .collect();
    let task =
        tokio::task::spawn_blocking(move || copy_masked(File::from(read_end), log, &secrets));
    Ok((File::from(write_end), task))
}

/// Copies `src` to `dst`, masking every occurrence of every secret.
pub fn copy_masked(
    mut src: impl Read,
    mut dst: impl Write,
    secrets: &[Vec<u8>],
) -> std::io::Result<()> {
    let keep = secrets
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        pending.extend_from_slice(&buf[..n]);
        let safe = pending.len().saturating_sub(keep);
        let (out, consumed) = mask_prefix(&pending, safe, secrets);
        dst.write_all(&out)?;
        pending.drain(..consumed);
    }
    let (out, _) = mask_prefix(&pending, pending.len(), secrets);
    dst.write_all(&out)
}

/// `text` with every secret replaced by `***` (for outputs, which are stored and shown).
pub fn mask_text(text: &str, secrets: &[String]) -> String {
    let secrets: Vec<Vec<u8>> = secrets
        .iter()
        .filter(|s| !s.is_empty() && text.contains(s.as_str()))
        .map(|s| s.as_bytes().to_vec())
        .collect();
    if secrets.is_empty() {
        return text.to_owned();
    }
    let (out, _) = mask_prefix(text.as_bytes(), text.len(), &secrets);
    // Only whole secrets (valid UTF-8) were replaced by ASCII, so the text stays UTF-8.
    String::from_utf8_lossy(&out).into_owned()
}

/// Masks matches starting before `limit`; returns the output and how many input bytes it covers
/// (at least `limit`, more when a match straddles it).
fn mask_prefix(data: &[u8], limit: usize, secrets: &[Vec<u8>]) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(limit);
    let mut i = 0;
    while i < limit {
        let hit = secrets
            .iter()
            .filter(|s| data[i..].starts_with(s))
            .map(Vec::len)
            .max();
        match hit {
            Some(len) => {
                out.extend_from_slice(MASK);
                i += len;
            }
            None => {
                out.push(data[i]);
                i += 1;
            }
        }
    }
    (out, i.max(limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(input: &[u8], secrets: &[&str], chunk: usize) -> String {
        struct Chunked<'a>(&'a [u8], usize);
        impl Read for Chunked<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(self.1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let secrets: Vec<Vec<u8>> = secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        let mut out = Vec::new();
        copy_masked(Chunked(input, chunk), &mut out, &secrets).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn masks_secrets_even_across_reads() {
        for chunk in [1, 2, 3, 7, 64 * 1024] {
            assert_eq!(
                masked(b"user=admin pw=hunter2 again:hunter2!", &["hunter2"], chunk),
                "user=admin pw=*** again:***!",
                "chunk {chunk}"
            );
        }
        assert_eq!(masked(b"abcabc", &["abc", "bc"], 1), "******");
        assert_eq!(masked(b"no secrets here", &["zzz"], 4), "no secrets here");
        assert_eq!(masked(b"hunter", &["hunter2"], 2), "hunter");
    }

    #[test]
    fn masks_text() {
        let secrets = ["s3cr3t".to_owned()];
        assert_eq!(mask_text("url=a:s3cr3t@h", &secrets), "url=a:***@h");
        assert_eq!(mask_text("plain", &secrets), "plain");
    }
}
