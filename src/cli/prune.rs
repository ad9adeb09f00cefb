//! The inventory side of `apply` and `diff`: recording which files of the manifests folder an
//! `apply` of a source wrote (kept in the state database, `store::inventory`), and deciding which
//! of them `apply --prune` deletes. It does not decide what apply writes (`apply`) nor render
//! anything but its own warnings.
//!
//! Choices:
//! - A source is what was given to `-f`, as a canonical path (a folder or a file); standard input
//!   is no source, so `--prune` refuses it. The manifests folder is keyed by its canonical path
//!   too, so one source applied to two folders has two inventories.
//! - An `apply` of a file or folder (not `--dry-run`) records each file it writes, with the
//!   SHA-256 of the bytes written. The source that wrote a file last owns it. A file apply leaves
//!   `unchanged` keeps its entry, or lack of one (a file written by hand is never adopted), but
//!   when another source wrote it and it still holds those bytes, the applying source takes it
//!   over: a pipeline moved unchanged from one source to another is not pruned by the first.
//!   `suspend`/`unsuspend` carry an entry over to the bytes they write, when the file held what
//!   apply wrote.
//!   `apply --prune` creates the state database when missing; a plain apply records only into one
//!   that exists (so an apply that never prunes leaves no state behind, and one that configures a
//!   file between two prunes keeps its hash current). Without `--prune`, a state database that
//!   cannot be opened is a warning: the manifests are still applied, and a file missing from the
//!   inventory is never pruned, the safe side.
//! - A prune deletes the files of the source's inventory whose pipeline the source no longer has,
//!   and only while the file holds exactly the bytes apply wrote: one changed since (by hand, by
//!   another tool), or replaced by a link or anything but a plain file, is skipped with a warning.
//!   An entry whose file is gone is forgotten.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::store::{AppliedFile, Store};

use super::CliError;

/// The canonical path of what `-f` names, or `None` for standard input (`-`).
pub fn source_key(file: &Path) -> Result<Option<String>, CliError> {
    if file == Path::new("-") {
        return Ok(None);
    }
    fs::canonicalize(file)
        .map(|p| Some(p.to_string_lossy().into_owned()))
        .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", file.display())))
}

/// `--prune` needs a source to keep an inventory of.
pub fn check_source(source: Option<&str>, prune: bool) -> Result<(), CliError> {
    if prune && source.is_none() {
        return Err(CliError::usage(
            "--prune needs a file or folder: standard input is no source an inventory is kept for",
        ));
    }
    Ok(())
}

/// An empty source would prune every pipeline it applied before (an empty checkout looks like
/// this): refused unless `--allow-empty`.
pub fn check_not_empty(
    file: &Path,
    documents: usize,
    prune: bool,
    allow_empty: bool,
) -> Result<(), CliError> {
    if prune && documents == 0 && !allow_empty {
        return Err(CliError::usage(format!(
            "{}: holds no manifest, so --prune would delete every pipeline an earlier apply of it \
             wrote; refused (add --allow-empty if that is meant)",
            file.display()
        )));
    }
    Ok(())
}

/// The manifests folder as the inventory knows it: canonical when it exists, absolute otherwise
/// (then it holds nothing to prune yet).
fn folder_key(dir: &Path) -> String {
    fs::canonicalize(dir)
        .unwrap_or_else(|_| super::absolute(dir))
        .to_string_lossy()
        .into_owned()
}

/// Hex SHA-256 of a file's bytes.
pub fn content_hash(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The inventory of one source in one manifests folder, with the store it is kept in. It owns
/// no runtime: its methods are async and the caller drives them, and [`Inventory::close`] ends
/// the store explicitly (a dropped inventory just drops its store, which cannot panic anywhere).
pub struct Inventory {
    store: Store,
    source: String,
    dir: PathBuf,
}

impl std::fmt::Debug for Inventory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inventory")
            .field("source", &self.source)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A file a prune deletes.
#[derive(Debug, Clone)]
pub struct Prunable {
    pub pipeline: String,
    pub path: PathBuf,
    content_hash: String,
}

impl Inventory {
    /// Opens the inventory of `source` in `dir`. With `create`, the state database is created
    /// when missing; without, a missing one is `None` (nothing was ever recorded).
    pub async fn open(
        config: &Config,
        state_dir: &Path,
        source: String,
        dir: &Path,
        create: bool,
    ) -> Result<Option<Self>, CliError> {
        let store = if create {
            Some(super::open_store(state_dir, config).await?)
        } else {
            super::open_store_existing(state_dir, config).await?
        };
        Ok(store.map(|store| Inventory {
            store,
            source,
            dir: dir.to_owned(),
        }))
    }

    /// Closes the store (its connections end cleanly).
    pub async fn close(self) {
        self.store.close().await;
    }

    /// Records that this source wrote `content` to `path` for `pipeline`.
    pub async fn record(
        &self,
        pipeline: &str,
        path: &Path,
        content: &[u8],
    ) -> Result<(), CliError> {
        let entry = AppliedFile {
            manifests_dir: folder_key(&self.dir),
            file: file_name(path),
            source: self.source.clone(),
            pipeline: pipeline.to_owned(),
            content_hash: content_hash(content),
        };
        self.store
            .record_applied(&entry)
            .await
            .map_err(CliError::from)
    }

    /// A file apply left `unchanged` at `path`: when another source's apply wrote it and it
    /// still holds exactly those bytes, this source now applies it and takes it over (else the
    /// other source's next `--prune` would delete a pipeline this one applies). A file with no
    /// entry (written by hand) or changed since is left alone: apply does not adopt files.
    pub async fn take_over(&self, pipeline: &str, path: &Path) -> Result<(), CliError> {
        let dir_key = folder_key(&self.dir);
        let Some(entry) = self.store.applied_file(&dir_key, &file_name(path)).await? else {
            return Ok(());
        };
        if entry.source == self.source {
            return Ok(());
        }
        let holds_what_was_written = fs::symlink_metadata(path)
            .is_ok_and(|m| m.file_type().is_file())
            && fs::read(path).is_ok_and(|bytes| content_hash(&bytes) == entry.content_hash);
        if !holds_what_was_written {
            return Ok(());
        }
        self.store
            .record_applied(&AppliedFile {
                source: self.source.clone(),
                pipeline: pipeline.to_owned(),
                ..entry
            })
            .await
            .map_err(CliError::from)
    }

    /// The files this source wrote whose pipeline is not in `keep`, still as apply wrote them.
    /// Files changed since are skipped with a warning (unless `quiet`); entries of files that are
    /// gone are forgotten, unless `dry_run`.
    pub async fn prunable(
        &self,
        keep: &HashSet<&str>,
        dry_run: bool,
        quiet: bool,
    ) -> Result<Vec<Prunable>, CliError> {
        let dir_key = folder_key(&self.dir);
        let entries = self.store.applied_by(&self.source, &dir_key).await?;
        let mut out = Vec::new();
        for entry in entries {
            if keep.contains(entry.pipeline.as_str()) {
                continue;
            }
            let path = self.dir.join(&entry.file);
            let gone = matches!(fs::symlink_metadata(&path),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound);
            if gone {
                if !dry_run {
                    self.store.forget_applied(&dir_key, &entry.file).await?;
                }
                continue;
            }
            let candidate = Prunable {
                pipeline: entry.pipeline,
                path,
                content_hash: entry.content_hash,
            };
            match candidate.unchanged() {
                Ok(()) => out.push(candidate),
                Err(why) => {
                    if !quiet {
                        eprintln!(
                            "warning: {}: pipeline/{} {why} since apply wrote it; not pruned \
                             (delete it yourself if it should go)",
                            candidate.path.display(),
                            candidate.pipeline
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    /// Deletes a prunable file (checked again just before) and forgets it.
    pub async fn prune(&self, file: &Prunable) -> Result<(), CliError> {
        if let Err(why) = file.unchanged() {
            return Err(CliError::usage(format!(
                "{}: pipeline/{} {why} while pruning; not pruned",
                file.path.display(),
                file.pipeline
            )));
        }
        let not_removed = |e: std::io::Error| {
            CliError::usage(format!("{}: cannot remove: {e}", file.path.display()))
        };
        fs::remove_file(&file.path).map_err(not_removed)?;
        fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(not_removed)?;
        self.store
            .forget_applied(&folder_key(&self.dir), &file_name(&file.path))
            .await
            .map_err(CliError::from)
    }
}

/// `suspend`/`unsuspend` rewrote `path` of `dir` from `before` to `after`: when an apply wrote
/// that file and it still held those bytes, its entry takes the new bytes, so the file stays
/// prunable by its source. A file changed by hand before stays unprunable; one with no entry
/// stays without.
pub async fn rewritten(
    store: &Store,
    dir: &Path,
    path: &Path,
    before: &[u8],
    after: &[u8],
) -> Result<(), CliError> {
    let Some(entry) = store
        .applied_file(&folder_key(dir), &file_name(path))
        .await?
    else {
        return Ok(());
    };
    if entry.content_hash != content_hash(before) {
        return Ok(());
    }
    store
        .record_applied(&AppliedFile {
            content_hash: content_hash(after),
            ..entry
        })
        .await
        .map_err(CliError::from)
}

impl Prunable {
    /// Whether the file still holds what apply wrote; if not, what became of it.
    fn unchanged(&self) -> Result<(), &'static str> {
        let meta = fs::symlink_metadata(&self.path).map_err(|_| "was removed")?;
        if !meta.file_type().is_file() {
            return Err("was replaced by something other than a file");
        }
        let bytes = fs::read(&self.path).map_err(|_| "cannot be read")?;
        if content_hash(&bytes) != self.content_hash {
            return Err("was changed");
        }
        Ok(())
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inventory is opened, used and dropped inside async code without a panic (it owns no
    /// runtime and blocks on none).
    #[tokio::test]
    async fn an_inventory_lives_and_dies_inside_async_code() {
        let tmp = tempfile::tempdir().unwrap();
        let config = Config::default();
        let state = tmp.path().join("state");
        let inventory = Inventory::open(&config, &state, "/src".into(), tmp.path(), true)
            .await
            .unwrap()
            .expect("created");
        let file = tmp.path().join("a.yaml");
        fs::write(&file, b"a").unwrap();
        inventory.record("a", &file, b"a").await.unwrap();
        let keep = HashSet::new();
        assert_eq!(
            inventory.prunable(&keep, true, true).await.unwrap().len(),
            1
        );
        drop(inventory);
        let again = Inventory::open(&config, &state, "/src".into(), tmp.path(), false)
            .await
            .unwrap()
            .expect("exists");
        again.close().await;
    }

    #[test]
    fn content_hash_is_hex_sha256() {
        assert_eq!(
            content_hash(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
