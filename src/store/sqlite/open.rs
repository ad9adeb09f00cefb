//! Opening the state database: the state folder and file with private permissions, a check that an
//! existing file is a healthy database of ours made before anything can write to it, then WAL mode,
//! the migrations, and the connections.
//!
//! A file that fails the check is left byte-for-byte as it was, and no `-wal`/`-shm` files appear
//! next to it: it is evidence, and never silently recreated.

use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection, SqlitePool};

use super::migrations;
use super::{Durability, StoreError, primary_code, sql_error};

/// How long a connection waits for another process's write lock before giving up.
pub(in crate::store) const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const MAX_READERS: u32 = 4;

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

/// An open, migrated database.
pub(in crate::store) struct Opened {
    pub(in crate::store) path: PathBuf,
    /// Readers, connected on demand.
    pub(in crate::store) pool: SqlitePool,
}

/// Creates or checks the state folder and the database file, verifies an existing database, and
/// returns it migrated (through a connection of its own, closed when done).
pub(in crate::store) async fn open(
    state_dir: &Path,
    durability: Durability,
) -> Result<Opened, StoreError> {
    prepare_dir(state_dir)?;
    let path = crate::state_dir::db_path(state_dir);
    prepare_file(&path)?;
    verify(&path).await?;

    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(false)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(true)
        .synchronous(match durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        });
    let new_file = fs::metadata(&path).is_ok_and(|meta| meta.len() == 0);
    let mut writer = options
        .connect()
        .await
        .map_err(sql_error(&path, "opening the database"))?;
    if new_file {
        // Only a database without tables takes the mode, and WAL mode would fix it first; on an
        // existing database the pragma would be a write (see `retention` for older databases).
        sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
            .execute(&mut writer)
            .await
            .map_err(sql_error(&path, "creating the database"))?;
    }
    enable_wal(&mut writer, &path).await?;
    migrations::migrate(&mut writer, &path).await?;
    let pool = SqlitePoolOptions::new()
        .max_connections(MAX_READERS)
        .min_connections(0)
        // A ping per acquire would double the cost of small reads; a broken connection shows up
        // as an error on the statement itself anyway.
        .test_before_acquire(false)
        .connect_lazy_with(options);
    // From here on every write goes through the direct writer; this connection only prepared the
    // file. Failing to close it cleanly loses nothing.
    let _ = writer.close().await;
    Ok(Opened { path, pool })
}

/// The state folder: created 0700, or refused when others could write into it (and so replace the
/// database that resumes run commands from).
pub(in crate::store) fn prepare_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) => {
            if !meta.is_dir() {
                return Err(StoreError::Io {
                    path: dir.to_owned(),
                    source: io::Error::new(io::ErrorKind::NotADirectory, "not a directory"),
                });
            }
            refuse_shared_write(dir, meta.mode(), "state folder")
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            crate::state_dir::create_private_dir(dir).map_err(|source| StoreError::Io {
                path: dir.to_owned(),
                source,
            })
        }
        Err(source) => Err(StoreError::Io {
            path: dir.to_owned(),
            source,
        }),
    }
}

/// The database file: created empty with mode 0600 before SQLite sees it (SQLite would use 0644),
/// or checked when it exists. An existing file is not opened for writing here.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    match fs::metadata(path) {
        Ok(meta) => {
            if !meta.is_file() {
                return Err(StoreError::Io {
                    path: path.to_owned(),
                    source: io::Error::other("not a regular file"),
                });
            }
            refuse_shared_write(path, meta.mode(), "state database")
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => Ok(()),
                // Another process created it in between: check that one instead.
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => prepare_file(path),
                Err(source) => Err(StoreError::Io {
                    path: path.to_owned(),
                    source,
                }),
            }
        }
        Err(source) => Err(StoreError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn refuse_shared_write(path: &Path, mode: u32, what: &str) -> Result<(), StoreError> {
    if mode & 0o022 == 0 {
        return Ok(());
    }
    Err(StoreError::Unsafe {
        path: path.to_owned(),
        detail: format!(
            "{what} is writable by group or others (mode {:o}); run `chmod go-w` on it",
            mode & 0o7777
        ),
    })
}

/// Checks an existing, non-empty database file without writing to it. A failure is checked once more
/// after a short pause, since a process creating or checkpointing the database at that moment can
/// make a lock-free read see a half-written file.
async fn verify(path: &Path) -> Result<(), StoreError> {
    match verify_once(path).await {
        Err(StoreError::Corrupt { .. }) => {
            tokio::time::sleep(Duration::from_millis(50)).await;
            verify_once(path).await
        }
        other => other,
    }
}

async fn verify_once(path: &Path) -> Result<(), StoreError> {
    let io_error = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = fs::File::open(path).map_err(io_error)?;
    let len = file.metadata().map_err(io_error)?.len();
    if len == 0 {
        // Just created (by us or a concurrent opener): nothing to protect yet.
        return Ok(());
    }
    let mut header = [0u8; 100];
    let read = read_up_to(&mut file, &mut header).map_err(io_error)?;
    drop(file);
    check_header(&header[..read], len).map_err(|detail| StoreError::Corrupt {
        path: path.to_owned(),
        detail,
    })?;

    // A read-only connection still creates -wal and -shm files for a WAL database, so one that
    // nobody has open (no -wal file) is read as immutable: no locks, no files. When a -wal exists,
    // a process may be writing, so the check takes the normal read locks and sees the WAL.
    let in_use = sibling(path, "-wal").exists();
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(!in_use)
        .busy_timeout(BUSY_TIMEOUT);
    let context = "checking the database";
    let mut conn = options.connect().await.map_err(sql_error(path, context))?;
    let result = check_contents(&mut conn, path).await;
    conn.close().await.map_err(sql_error(path, context))?;
    result
}

async fn check_contents(conn: &mut sqlx::SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let context = "checking the database";
    let rows = sqlx::query("PRAGMA quick_check")
        .fetch_all(&mut *conn)
        .await
        .map_err(sql_error(path, context))?;
    let problems: Vec<String> = rows
        .iter()
        .map(|row| row.try_get::<String, _>(0))
        .collect::<Result<_, _>>()
        .map_err(sql_error(path, context))?;
    if problems != ["ok"] {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("integrity check failed: {}", problems.join("; ")),
        });
    }
    migrations::checked_version(conn, path, context).await?;
    Ok(())
}

/// Structural checks of the 100-byte header that catch a foreign, zeroed or truncated file before
/// SQLite opens it (SQLite would create -wal/-shm files next to a truncated WAL database).
fn check_header(header: &[u8], len: u64) -> Result<(), String> {
    if header.len() < 100 || !header.starts_with(SQLITE_MAGIC) {
        return Err("not a SQLite database (bad header)".to_owned());
    }
    let page_size = match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65_536,
        n if n >= 512 && n.is_power_of_two() => u64::from(n),
        n => return Err(format!("invalid page size {n} in the header")),
    };
    if !len.is_multiple_of(page_size) {
        return Err(format!(
            "file size {len} is not a multiple of the page size {page_size} (truncated?)"
        ));
    }
    Ok(())
}

fn read_up_to(file: &mut fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(filled)
}

/// `PATH` + `suffix`, e.g. `executioner.db-wal`.
pub(in crate::store) fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(suffix);
    PathBuf::from(name)
}

/// Switches the database to WAL (a persistent property of the file). Changing the journal mode
/// takes an exclusive lock that SQLite does not wait for with the busy timeout, so concurrent
/// first openers retry here.
async fn enable_wal(conn: &mut SqliteConnection, path: &Path) -> Result<(), StoreError> {
    let context = "enabling WAL mode";
    let deadline = tokio::time::Instant::now() + BUSY_TIMEOUT;
    loop {
        let result = sqlx::query("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await
            .and_then(|row| row.try_get::<String, _>(0));
        let retry = match &result {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            // SQLite answers with the mode it kept when it could not take the lock.
            Ok(_) => true,
            Err(err) => matches!(primary_code(err), Some(SQLITE_BUSY | SQLITE_LOCKED)),
        };
        if !retry || tokio::time::Instant::now() >= deadline {
            return Err(match result {
                Ok(mode) => StoreError::Io {
                    path: path.to_owned(),
                    source: io::Error::other(format!(
                        "cannot switch the database to WAL mode (it stays in {mode:?} mode)"
                    )),
                },
                Err(err) => sql_error(path, context)(err),
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(page_size: u16) -> Vec<u8> {
        let mut h = vec![0u8; 100];
        h[..16].copy_from_slice(SQLITE_MAGIC);
        h[16..18].copy_from_slice(&page_size.to_be_bytes());
        h
    }

    #[test]
    fn header_checks() {
        assert!(check_header(&header(4096), 8192).is_ok());
        assert!(check_header(&header(1), 65_536).is_ok());
        assert!(check_header(&header(4096), 1000).is_err());
        assert!(check_header(&header(1000), 4000).is_err());
        assert!(check_header(&header(4096)[..50], 50).is_err());
        assert!(check_header(&[0u8; 100], 4096).is_err());
    }
}
