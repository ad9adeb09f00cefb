//! Pre- and post-checks: the built-in kinds and `executioner-check-NAME` plugins.
//!
//! A check gets the job's final environment (for `${VAR}` in its parameters), its working folder
//! and, for log checks, this attempt's output. It answers pass or fail with a message; it never
//! decides retries or phases.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indexmap::IndexMap;

use crate::env;
use crate::process::{self, ExitStatus, Output, SpawnSpec, Stdin};
use crate::spec::{Check, CheckKind, Command};
use crate::status::RunId;

/// What a check needs to know about the attempt it guards.
#[derive(Debug)]
pub struct CheckContext<'a> {
    pub pipeline: &'a str,
    pub run_id: RunId,
    pub job: &'a str,
    pub attempt: i64,
    pub env: &'a IndexMap<String, String>,
    pub cwd: &'a Path,
    /// The attempt's log file and where this attempt's output starts in it.
    pub log: Option<(&'a Path, u64)>,
    pub plugin_dirs: &'a [PathBuf],
    /// For `pipelineSucceeded`: the other pipeline's runs.
    pub store: &'a crate::store::Store,
}

/// The verdict of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub passed: bool,
    pub message: String,
}

impl Verdict {
    fn pass(message: impl Into<String>) -> Self {
        Self {
            passed: true,
            message: message.into(),
        }
    }

    fn fail(message: impl Into<String>) -> Self {
        Self {
            passed: false,
            message: message.into(),
        }
    }
}

/// Runs one check once.
pub async fn run_check(check: &Check, ctx: &CheckContext<'_>) -> Verdict {
    let kinds = check.kinds();
    let Some(kind) = kinds.first() else {
        return Verdict::fail("check has no kind");
    };
    let interp = |s: &str| env::interpolate("check", s, ctx.env).map_err(|e| e.to_string());
    let path_of = |s: &str| -> Result<PathBuf, String> {
        let p = PathBuf::from(interp(s)?);
        Ok(if p.is_absolute() { p } else { ctx.cwd.join(p) })
    };
    match kind {
        CheckKind::FileExists(c) => match path_of(&c.path) {
            Err(e) => Verdict::fail(e),
            Ok(path) => match std::fs::metadata(&path) {
                Ok(meta) if meta.is_file() => {
                    let min = c.min_size.unwrap_or(0);
                    if meta.len() >= min {
                        Verdict::pass(format!("{} exists ({} bytes)", path.display(), meta.len()))
                    } else {
                        Verdict::fail(format!(
                            "{} has {} bytes, fewer than {min}",
                            path.display(),
                            meta.len()
                        ))
                    }
                }
                Ok(_) => Verdict::fail(format!("{} is not a regular file", path.display())),
                Err(_) => Verdict::fail(format!("{} does not exist", path.display())),
            },
        },
        CheckKind::FileNotExists(c) => match path_of(&c.path) {
            Err(e) => Verdict::fail(e),
            Ok(path) => {
                if std::fs::symlink_metadata(&path).is_ok() {
                    Verdict::fail(format!("{} exists", path.display()))
                } else {
                    Verdict::pass(format!("{} does not exist", path.display()))
                }
            }
        },
        CheckKind::LogContains(c) | CheckKind::LogNotContains(c) => {
            let want = matches!(kind, CheckKind::LogContains(_));
            let re = match regex::Regex::new(&c.pattern) {
                Ok(re) => re,
                Err(e) => return Verdict::fail(format!("invalid regex: {e}")),
            };
            let found = match ctx.log {
                Some((path, offset)) => find_in_log(path, offset, &re).await,
                None => Ok(None),
            };
            match (found, want) {
                (Err(e), _) => Verdict::fail(format!("cannot read the log: {e}")),
                (Ok(Some(line)), true) => Verdict::pass(format!("output matches: {line}")),
                (Ok(None), true) => Verdict::fail(format!("output does not match /{}/", c.pattern)),
                (Ok(Some(line)), false) => {
                    Verdict::fail(format!("output matches /{}/: {line}", c.pattern))
                }
                (Ok(None), false) => {
                    Verdict::pass(format!("output does not match /{}/", c.pattern))
                }
            }
        }
        CheckKind::Command(command) => run_command_check(command, ctx).await,
        CheckKind::Tcp(c) => {
            let host = match interp(&c.host) {
                Ok(h) => h,
                Err(e) => return Verdict::fail(e),
            };
            let limit = c.timeout.map_or(Duration::from_secs(5), |d| d.as_std());
            match tokio::time::timeout(
                limit,
                tokio::net::TcpStream::connect((host.as_str(), c.port)),
            )
            .await
            {
                Ok(Ok(_)) => Verdict::pass(format!("{host}:{} accepts connections", c.port)),
                Ok(Err(e)) => Verdict::fail(format!("{host}:{}: {e}", c.port)),
                Err(_) => {
                    Verdict::fail(format!("{host}:{}: no connection within {limit:?}", c.port))
                }
            }
        }
        CheckKind::Http(c) => {
            let url = match interp(&c.url) {
                Ok(u) => u,
                Err(e) => return Verdict::fail(e),
            };
            let limit = c.timeout.map_or(Duration::from_secs(10), |d| d.as_std());
            match tokio::time::timeout(limit, http_get_status(&url, limit)).await {
                Ok(Ok(status)) => {
                    let ok = match c.expect_status {
                        Some(want) => status == want,
                        None => (200..300).contains(&status),
                    };
                    if ok {
                        Verdict::pass(format!("{url} answered {status}"))
                    } else {
                        Verdict::fail(format!("{url} answered {status}"))
                    }
                }
                Ok(Err(e)) => Verdict::fail(e),
                Err(_) => Verdict::fail(format!("{url}: no answer within {limit:?}")),
            }
        }
        CheckKind::PipelineSucceeded(c) => match ctx.store.latest_run(c.name.as_str()).await {
            Err(e) => Verdict::fail(format!("cannot read the history: {e}")),
            Ok(None) => Verdict::fail(format!("pipeline {} has no run", c.name)),
            Ok(Some(run)) if run.phase != crate::status::RunPhase::Succeeded => {
                Verdict::fail(format!("the latest run of {} is {}", c.name, run.phase))
            }
            Ok(Some(run)) => match (c.within, run.finished_at) {
                (Some(within), Some(at)) => {
                    let age = time::OffsetDateTime::now_utc() - at;
                    if age
                        <= time::Duration::try_from(within.as_std()).unwrap_or(time::Duration::MAX)
                    {
                        Verdict::pass(format!("{} succeeded {}s ago", c.name, age.whole_seconds()))
                    } else {
                        Verdict::fail(format!(
                            "{} last succeeded {}s ago, longer than {within}",
                            c.name,
                            age.whole_seconds()
                        ))
                    }
                }
                _ => Verdict::pass(format!("the latest run of {} succeeded", c.name)),
            },
        },
        CheckKind::Plugin(c) => run_plugin(c.name.as_str(), &c.params, ctx).await,
    }
}

/// The first line of the log after `offset` that matches, if any (streamed, memory-bounded).
async fn find_in_log(
    path: &Path,
    offset: u64,
    re: &regex::Regex,
) -> std::io::Result<Option<String>> {
    use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        if re.is_match(text) {
            return Ok(Some(text.trim_end().chars().take(200).collect()));
        }
    }
}

fn argv_of(command: &Command, env: &IndexMap<String, String>) -> Result<Vec<String>, String> {
    match command {
        Command::Shell(s) => Ok(vec!["sh".into(), "-c".into(), s.clone()]),
        Command::Exec(argv) => argv
            .iter()
            .map(|a| env::interpolate("command", a, env).map_err(|e| e.to_string()))
            .collect(),
    }
}

async fn run_command_check(command: &Command, ctx: &CheckContext<'_>) -> Verdict {
    let argv = match argv_of(command, ctx.env) {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return Verdict::fail("empty command"),
        Err(e) => return Verdict::fail(e),
    };
    let spec = SpawnSpec {
        program: argv[0].clone().into(),
        args: argv[1..].iter().map(Into::into).collect(),
        env: exported(ctx.env),
        cwd: ctx.cwd.to_owned(),
        stdin: Stdin::Null,
        output: Output::Capture,
    };
    match run_to_end(spec, Duration::from_secs(300)).await {
        Ok((ExitStatus::Code(0), out)) => Verdict::pass(first_line(&out, "exit 0")),
        Ok((status, out)) => {
            Verdict::fail(format!("{}: {}", describe(status), first_line(&out, "")))
        }
        Err(e) => Verdict::fail(e),
    }
}

async fn run_plugin(
    name: &str,
    params: &serde_json::Map<String, serde_json::Value>,
    ctx: &CheckContext<'_>,
) -> Verdict {
    let file = format!("executioner-check-{name}");
    let mut dirs: Vec<PathBuf> = ctx.plugin_dirs.to_vec();
    if let Some(path) = ctx
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok())
    {
        dirs.extend(std::env::split_paths(&path));
    }
    let Some(program) = dirs
        .iter()
        .map(|d| d.join(&file))
        .find(|p| is_executable(p))
    else {
        return Verdict::fail(format!("plugin {file} not found in plugin_dirs or PATH"));
    };
    let context = serde_json::json!({
        "pipeline": ctx.pipeline,
        "runId": ctx.run_id,
        "job": ctx.job,
        "attempt": ctx.attempt,
        "workingDir": ctx.cwd,
        "log": ctx.log.map(|(p, _)| p.to_path_buf()),
        "params": params,
    });
    let spec = SpawnSpec {
        program: program.into_os_string(),
        args: Vec::new(),
        env: exported(ctx.env),
        cwd: ctx.cwd.to_owned(),
        stdin: Stdin::Bytes(context.to_string().into_bytes()),
        output: Output::Capture,
    };
    match run_to_end(spec, Duration::from_secs(300)).await {
        Ok((ExitStatus::Code(0), out)) => Verdict::pass(first_line(&out, "passed")),
        Ok((status, out)) => {
            Verdict::fail(format!("{}: {}", describe(status), first_line(&out, "")))
        }
        Err(e) => Verdict::fail(e),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

async fn run_to_end(spec: SpawnSpec, limit: Duration) -> Result<(ExitStatus, Vec<u8>), String> {
    let text = |e: process::ProcessError| crate::error_chain::render(&e);
    let mut child = process::spawn(spec).map_err(text)?;
    let exited = match tokio::time::timeout(limit, child.wait()).await {
        Ok(r) => r.map_err(text)?,
        Err(_) => child.stop(Duration::from_secs(1)).await.map_err(text)?,
    };
    Ok((exited.status, exited.captured.unwrap_or_default()))
}

fn describe(status: ExitStatus) -> String {
    match status {
        ExitStatus::Code(c) => format!("exit {c}"),
        ExitStatus::Signal(s) => format!("signal {s}"),
    }
}

fn first_line(out: &[u8], fallback: &str) -> String {
    let text = String::from_utf8_lossy(out);
    let line = text
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(fallback);
    line.chars().take(200).collect()
}

/// At most this many redirects are followed; one more is a failure.
const HTTP_MAX_REDIRECTS: u32 = 10;

/// GETs `url` within `limit`, following redirects, and returns the final status code. TLS trusts
/// the system's roots plus the extra CA file (see `tls`). ureq blocks: it runs on tokio's blocking
/// pool, and its own global timeout makes the thread give up when the check does.
async fn http_get_status(url: &str, limit: Duration) -> Result<u16, String> {
    let owned = url.to_owned();
    match tokio::task::spawn_blocking(move || http_get_status_blocking(&owned, limit)).await {
        Ok(answer) => answer,
        Err(e) => Err(format!("{url}: the request failed: {e}")),
    }
}

fn http_get_status_blocking(url: &str, limit: Duration) -> Result<u16, String> {
    use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
    let extra = match crate::tls::extra_ca_file() {
        Some(path) => crate::tls::read_ca_file(&path).map_err(|e| format!("{url}: {e}"))?,
        None => Vec::new(),
    };
    let roots: Vec<Certificate<'static>> = crate::tls::system_roots()
        .iter()
        .chain(&extra)
        .map(|der| Certificate::from_der(der.as_ref()).to_owned())
        .collect();
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(std::sync::Arc::new(roots)))
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(limit))
        .max_redirects(HTTP_MAX_REDIRECTS)
        .max_redirects_will_error(true)
        .http_status_as_error(false)
        .user_agent("executioner-check")
        .build()
        .into();
    match agent.get(url).call() {
        Ok(response) => Ok(response.status().as_u16()),
        Err(e) => Err(http_error_message(url, limit, &e)),
    }
}

/// Says what went wrong in words a user acts on; an untrusted certificate points at the CA file.
fn http_error_message(url: &str, limit: Duration, err: &ureq::Error) -> String {
    let tls = match err {
        ureq::Error::Rustls(e) => Some(e),
        ureq::Error::Io(e) => e.get_ref().and_then(|inner| inner.downcast_ref()),
        _ => None,
    };
    match (err, tls) {
        (_, Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer))) => {
            format!(
                "{url}: the server's certificate is not trusted (unknown issuer); a private CA \
                 can be given in {}",
                crate::tls::CA_FILE_ENV
            )
        }
        (_, Some(rustls::Error::InvalidCertificate(reason))) => {
            format!("{url}: the server's certificate is not trusted ({reason})")
        }
        (ureq::Error::Timeout(_), _) => format!("{url}: no answer within {limit:?}"),
        (ureq::Error::TooManyRedirects, _) => {
            format!("{url}: more than {HTTP_MAX_REDIRECTS} redirects")
        }
        _ => format!("{url}: {err}"),
    }
}

/// The environment a check's process gets: the job's, without the parameters and outputs that
/// are in it for interpolation only (see [`env::is_qualified`]).
fn exported(env: &IndexMap<String, String>) -> crate::process::Environment {
    env.iter().filter(|(k, _)| !env::is_qualified(k)).collect()
}
