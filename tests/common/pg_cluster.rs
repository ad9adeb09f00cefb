//! Throwaway PostgreSQL clusters for tests: one cluster per test binary (started on first use from
//! Debian's server binaries, `initdb` into a temporary folder, as an unprivileged user when the tests
//! run as root), a fresh database per test, and the faults the reliability tests need (stop, start,
//! kill -9 of the postmaster, restart). It owns the cluster's processes and folder; what a test does
//! with the database is the test's.
//!
//! The postmaster dies with the test process however that ends (a panic, a kill): it is spawned with
//! a parent-death signal (`setpriv --pdeathsig KILL`) from a thread that lives as long as the
//! process, since the kernel sends that signal when the spawning *thread* exits. A cluster folder
//! left by a killed test binary is removed by the next one (its owner's pid is written next to it).
//!
//! No PostgreSQL installed: with `EXECUTIONER_CI=1` (CI must not skip) the test panics with the
//! install command; otherwise it prints a line saying how to install it and the test returns early.
//!
//! Used by integration tests through `mod common;` and by the library's unit tests through
//! `#[path = "../../../tests/common/pg_cluster.rs"]`, so it uses nothing but the crate's own
//! dependencies.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

/// The role and password of every throwaway cluster.
pub const USER: &str = "executioner";
pub const PASSWORD: &str = "throwaway-secret";

const SKIP_MESSAGE: &str = "skipping: PostgreSQL is not installed (apt-get install postgresql)";
const FOLDER_PREFIX: &str = "executioner-pg-";

/// A running (or stopped, by a fault test) cluster.
#[derive(Debug)]
pub struct Cluster {
    bin: PathBuf,
    /// Removed by the next test binary once this process is gone (see `remove_stale_folders`).
    root: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    /// Chosen free when the cluster is made; chosen again if another process takes it before the
    /// first start (never after: the databases' URLs name it).
    port: std::sync::atomic::AtomicU16,
    started: std::sync::atomic::AtomicBool,
    /// Who runs the server: `None` when the tests do not run as root.
    os_user: Option<String>,
    postmaster: Mutex<Option<Child>>,
    spawner: Mutex<mpsc::Sender<Spawn>>,
}

/// A request to the spawning thread: the command, and where to send the child back.
struct Spawn {
    command: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

/// One test's database on the shared cluster.
#[derive(Debug)]
pub struct TestDatabase {
    pub name: String,
    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/NAME`.
    pub url: String,
    pub cluster: &'static Cluster,
}

static CLUSTER: OnceLock<Option<Cluster>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The cluster of this test binary, started on first use; `None` when PostgreSQL is not installed
/// and this is not CI (the caller returns; the skip message is printed).
pub fn cluster() -> Option<&'static Cluster> {
    let cluster = CLUSTER.get_or_init(|| {
        let bin = server_bin()?;
        Some(Cluster::create(bin))
    });
    match cluster {
        Some(cluster) => Some(cluster),
        None if std::env::var("EXECUTIONER_CI").is_ok_and(|v| v == "1") => {
            panic!("PostgreSQL is not installed, and CI must not skip: apt-get install postgresql")
        }
        None => {
            eprintln!("{SKIP_MESSAGE}");
            None
        }
    }
}

/// A new, empty database on this binary's cluster (see [`cluster`] for `None`).
pub async fn database() -> Option<TestDatabase> {
    let cluster = cluster()?;
    let name = format!(
        "t{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed)
    );
    cluster.create_database(&name).await;
    Some(TestDatabase {
        url: cluster.url(&name),
        name,
        cluster,
    })
}

/// The highest installed version's server binaries (`/usr/lib/postgresql/N/bin`), else
/// `pg_config --bindir`, when it has `initdb` and `postgres`.
fn server_bin() -> Option<PathBuf> {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, bin)| has_server(bin))
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let output = Command::new("pg_config").arg("--bindir").output().ok()?;
    let bin = PathBuf::from(String::from_utf8(output.stdout).ok()?.trim());
    has_server(&bin).then_some(bin)
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The unprivileged user a root test process runs the server as.
fn server_user() -> String {
    for name in ["postgres", "nobody"] {
        if let Ok(Some(_)) = nix::unistd::User::from_name(name) {
            return name.to_owned();
        }
    }
    panic!(
        "running as root, but there is neither a `postgres` nor a `nobody` user to run PostgreSQL as"
    )
}

/// Cluster folders whose test binary is gone (its pid file names a dead process).
fn remove_stale_folders() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with(FOLDER_PREFIX) {
            continue;
        }
        let pid = std::fs::read_to_string(entry.path().join("owner.pid"))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok());
        let alive = pid.is_some_and(|pid| {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
        });
        if pid.is_some() && !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

impl Cluster {
    fn create(bin: PathBuf) -> Cluster {
        remove_stale_folders();
        let root = tempfile::Builder::new()
            .prefix(FOLDER_PREFIX)
            .tempdir()
            .expect("a temporary folder for the cluster")
            .keep();
        std::fs::write(root.join("owner.pid"), std::process::id().to_string()).unwrap();
        let data = root.join("data");
        let socket_dir = root.join("sock");
        std::fs::create_dir(&socket_dir).unwrap();
        let pwfile = root.join("pwfile");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let os_user = is_root().then(server_user);
        if let Some(user) = &os_user {
            let user = nix::unistd::User::from_name(user).unwrap().unwrap();
            for path in [&root, &socket_dir, &pwfile] {
                nix::unistd::chown(path.as_path(), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        let mut initdb = as_server_user(os_user.as_deref(), &bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(&data)
            .args([
                "--username",
                USER,
                "--auth",
                "scram-sha-256",
                "--encoding",
                "UTF8",
            ])
            .args(["--locale", "C", "--no-sync"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .stdout(Stdio::null());
        let output = initdb.output().expect("initdb runs");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let (sender, requests) = mpsc::channel::<Spawn>();
        // The spawning thread never ends (it waits for requests forever): the parent-death signal
        // of the postmaster fires only when the whole test process goes.
        std::thread::Builder::new()
            .name("pg-cluster-spawner".into())
            .spawn(move || {
                for mut request in requests {
                    let _ = request.reply.send(request.command.spawn());
                }
                // The sender lives in a static: this is never reached while the process runs.
                loop {
                    std::thread::park();
                }
            })
            .expect("the cluster's spawning thread");
        let cluster = Cluster {
            bin,
            root,
            data,
            socket_dir,
            port: std::sync::atomic::AtomicU16::new(free_port()),
            started: std::sync::atomic::AtomicBool::new(false),
            os_user,
            postmaster: Mutex::new(None),
            spawner: Mutex::new(sender),
        };
        cluster.start();
        cluster
    }

    pub fn port(&self) -> u16 {
        self.port.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/NAME`.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{USER}:{PASSWORD}@127.0.0.1:{}/{database}",
            self.port()
        )
    }

    /// Starts the postmaster and waits until it accepts connections (after a kill -9 it first
    /// recovers: PostgreSQL replays its WAL).
    pub fn start(&self) {
        let mut postmaster = self.postmaster.lock().unwrap();
        assert!(postmaster.is_none(), "the cluster is already running");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut command = as_server_user(self.os_user.as_deref(), &self.bin.join("postgres"));
            command
                .arg("-D")
                .arg(&self.data)
                .args(["-p", &self.port().to_string()])
                .arg("-k")
                .arg(&self.socket_dir)
                .args(["-c", "listen_addresses=127.0.0.1"])
                // fsync off: a commit still reaches the OS before it returns, so a kill -9 of the
                // server loses nothing committed (only a power loss would); synchronous_commit
                // stays on for that reason.
                .args(["-c", "fsync=off"])
                .args(["-c", "full_page_writes=off", "-c", "max_connections=200"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let (reply, child) = mpsc::channel();
            self.spawner
                .lock()
                .unwrap()
                .send(Spawn { command, reply })
                .unwrap();
            let mut child = child.recv().unwrap().expect("postgres starts");
            if self.wait_ready(&mut child, deadline) {
                *postmaster = Some(child);
                self.started
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                return;
            }
            if !self.started.load(std::sync::atomic::Ordering::SeqCst) {
                // Most likely another process took the port since it was found free.
                self.port
                    .store(free_port(), std::sync::atomic::Ordering::SeqCst);
            }
            // It exited: after a kill -9, the old backends may still hold the shared memory for
            // a moment. Try again until the deadline.
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start on port {} (data in {})",
                self.port(),
                self.data.display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the postmaster accepts connections; false when it exited first.
    fn wait_ready(&self, child: &mut Child, deadline: Instant) -> bool {
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            // Through this cluster's own socket folder: a server of another test binary that
            // happens to listen on the same TCP port can never answer for this one.
            let ready = Command::new(self.bin.join("pg_isready"))
                .arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port().to_string(), "-q"])
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return true;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A fast shutdown (SIGINT): open sessions are ended, committed data is kept.
    pub fn stop(&self) {
        let child = self.postmaster.lock().unwrap().take();
        if let Some(mut child) = child {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let _ = child.wait();
        }
    }

    /// kill -9 of the postmaster, as a crash would; [`Cluster::start`] recovers it.
    pub fn kill_9_postmaster(&self) {
        let child = self.postmaster.lock().unwrap().take();
        if let Some(mut child) = child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    /// The cluster's folder (data, socket, password file).
    pub fn root(&self) -> &Path {
        &self.root
    }

    async fn create_database(&self, name: &str) {
        use sqlx::{Connection, Executor};
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .expect("connecting to the throwaway cluster");
        // A name we made (letters, digits, underscores): no quoting needed.
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await
            .expect("creating a test database");
        let _ = conn.close().await;
    }
}

/// `program` run as `user` (root: through `setpriv`), with the parent-death signal set either way.
fn as_server_user(user: Option<&str>, program: &Path) -> Command {
    let mut command = Command::new("setpriv");
    if let Some(user) = user {
        command.args([
            format!("--reuid={user}"),
            format!("--regid={user}"),
            "--init-groups".to_owned(),
        ]);
    }
    command.args(["--pdeathsig", "KILL", "--"]).arg(program);
    // The server user may not be allowed into the test's working folder.
    command.current_dir("/");
    command
}
