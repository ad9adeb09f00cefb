//! The one reader of the manifests folder (desired state): listing its manifest files, parsing
//! and validating them (with a cache of unchanged files), holding back files being written or
//! failing to parse for the first time, the permission check of each file, and binding pipeline
//! names to files (`bind`, duplicates). Used by the controller, `status`, `wait` and `apply`.
//! It does not touch the store (the bound sources are given to it) nor decide anything: what to do
//! about what it reads is `reconcile`'s question, whether a file may be trusted is `permissions`'.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::spec::{LoadError, Manifest, RawDoc};
use crate::store::PipelineRow;
use crate::validate::{self, Options, Severity};

use super::permissions::{InsecurePath, Trust};

/// How long a file that is being written (modified, not yet closed) is left alone at most.
pub const WRITE_QUIET: Duration = Duration::from_secs(2);
/// When a file fails to parse, it is read again after this before it is reported Invalid.
pub const PARSE_RETRY: Duration = Duration::from_millis(300);

/// A valid pipeline found in the folder.
#[derive(Debug, Clone)]
pub struct Desired {
    pub name: String,
    /// File name inside the manifests folder.
    pub source: String,
    pub manifest: Manifest,
    pub spec_hash: String,
    /// `FILE:LINE:COL` of its `metadata.name`, for the duplicate-name message.
    pub name_at: String,
}

/// Why a manifest (or document) is not acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// It does not parse or does not validate.
    InvalidManifest,
    /// Another file already holds its `metadata.name`.
    DuplicateName,
    /// Writable by group or others, or owned by an untrusted user (see `permissions`).
    InsecurePermissions,
}

/// A manifest (or document) that is not valid.
#[derive(Debug, Clone)]
pub struct Invalid {
    /// The pipeline name if it could be read, else the file stem when it is a valid name. For a
    /// `DuplicateName`, the name it wanted (the pipeline stays with the file it is bound to).
    pub name: Option<String>,
    pub source: String,
    /// `FILE:LINE:COL: message` lines.
    pub message: String,
    /// True for syntax errors (possibly a file still being written).
    pub syntax: bool,
    pub reason: InvalidReason,
}

/// What the folder says.
#[derive(Debug, Clone, Default)]
pub struct Folder {
    pub desired: BTreeMap<String, Desired>,
    pub invalid: Vec<Invalid>,
}

impl Folder {
    /// Why pipeline `name` is invalid, when no valid manifest holds it: the problem of the file
    /// that holds (or would hold) the name, not of a newcomer refused as a duplicate.
    pub fn invalid_named(&self, name: &str) -> Option<&Invalid> {
        if self.desired.contains_key(name) {
            return None;
        }
        let named = || {
            self.invalid
                .iter()
                .filter(|i| i.name.as_deref() == Some(name))
        };
        named()
            .find(|i| i.reason != InvalidReason::DuplicateName)
            .or_else(|| named().next())
    }

    /// Newcomers refused because another file holds their name.
    pub fn duplicates(&self) -> impl Iterator<Item = &Invalid> {
        self.invalid
            .iter()
            .filter(|i| i.reason == InvalidReason::DuplicateName)
    }
}

/// Merges what each file says (in file-name order) into one view, deciding who holds each name:
/// the file the store has it bound to, while that file still declares it (even invalidly: a bad
/// edit does not hand the pipeline to another file); otherwise the first file, by name, that
/// declares it validly. Every other file declaring it is Invalid with reason `DuplicateName`.
pub fn bind(files: Vec<Folder>, bound: &HashMap<String, String>) -> Folder {
    let mut holder: HashMap<String, String> = HashMap::new();
    for one in &files {
        for d in one.desired.values() {
            if bound.get(&d.name) == Some(&d.source) {
                holder.insert(d.name.clone(), d.source.clone());
            }
        }
        for i in &one.invalid {
            if let Some(n) = &i.name
                && i.reason != InvalidReason::DuplicateName
                && bound.get(n) == Some(&i.source)
            {
                holder.entry(n.clone()).or_insert_with(|| i.source.clone());
            }
        }
    }
    for one in &files {
        for d in one.desired.values() {
            holder
                .entry(d.name.clone())
                .or_insert_with(|| d.source.clone());
        }
    }
    let mut folder = Folder::default();
    for one in files {
        for (name, d) in one.desired {
            let holds = holder.get(&name) == Some(&d.source);
            if holds && !folder.desired.contains_key(&name) {
                folder.desired.insert(name, d);
            } else {
                let by = holder.get(&name).cloned().unwrap_or_default();
                folder.invalid.push(Invalid {
                    name: Some(name.clone()),
                    source: d.source.clone(),
                    message: format!(
                        "{}: pipeline name `{name}` is already used by {by} (DuplicateName)",
                        d.name_at
                    ),
                    syntax: false,
                    reason: InvalidReason::DuplicateName,
                });
            }
        }
        folder.invalid.extend(one.invalid);
    }
    folder
}

/// What a file that fails the permission check says: each of its documents Invalid with reason
/// `InsecurePermissions` (names kept, so `status` shows the pipeline), nothing desired.
pub fn mark_insecure(one: Folder, insecure: &InsecurePath, file: &Path) -> Folder {
    let source = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut names: Vec<Option<String>> = one.desired.into_keys().map(Some).collect();
    names.extend(one.invalid.into_iter().map(|i| i.name));
    if names.is_empty() {
        names.push(None);
    }
    names.dedup();
    let message = insecure.to_string();
    Folder {
        desired: BTreeMap::new(),
        invalid: names
            .into_iter()
            .map(|name| Invalid {
                name,
                source: source.clone(),
                message: message.clone(),
                syntax: false,
                reason: InvalidReason::InsecurePermissions,
            })
            .collect(),
    }
}

/// Reads one manifest file into `folder` (a name used twice within the file: the later document
/// is Invalid with reason `DuplicateName`).
pub fn read_file(file: &Path, options: &Options, folder: &mut Folder) {
    let source = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem_name = file
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| crate::spec::PipelineName::parse(s).is_ok())
        .map(str::to_owned);
    let docs = match crate::spec::read_file(file) {
        Ok(docs) => docs,
        Err(e) => {
            let syntax = matches!(e, LoadError::Syntax { .. });
            folder.invalid.push(Invalid {
                name: stem_name,
                source,
                message: crate::error_chain::render(&e),
                syntax,
                reason: InvalidReason::InvalidManifest,
            });
            return;
        }
    };
    for doc in &docs {
        let name_guess = doc
            .value
            .pointer("/metadata/name")
            .and_then(|v| v.as_str())
            .filter(|s| crate::spec::PipelineName::parse(s).is_ok())
            .map(str::to_owned)
            .or_else(|| stem_name.clone());
        match validate::validate_doc(doc, options) {
            Ok(valid) => {
                let name = valid.manifest.metadata.name.to_string();
                let name_at = format!("{}:{}", file.display(), doc.pos_of("/metadata/name"));
                if let Some(first) = folder.desired.get(&name) {
                    folder.invalid.push(Invalid {
                        name: Some(name.clone()),
                        source: source.clone(),
                        message: format!(
                            "{name_at}: pipeline name `{name}` is already used by {} (DuplicateName)",
                            first.source
                        ),
                        syntax: false,
                        reason: InvalidReason::DuplicateName,
                    });
                    continue;
                }
                let spec_hash = crate::spec::spec_hash(&valid.manifest);
                folder.desired.insert(
                    name.clone(),
                    Desired {
                        name,
                        source: source.clone(),
                        manifest: valid.manifest,
                        spec_hash,
                        name_at,
                    },
                );
            }
            Err(diagnostics) => {
                let message = diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Error)
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n");
                folder.invalid.push(Invalid {
                    name: name_guess,
                    source: source.clone(),
                    message,
                    syntax: false,
                    reason: InvalidReason::InvalidManifest,
                });
            }
        }
    }
}

/// The manifest files of `dir`, sorted by name (see `validate::manifest_files`); a missing folder
/// is an empty one.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    match validate::manifest_files(dir) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// A manifest file and its documents as parsed.
pub type ParsedFile = (PathBuf, Result<Vec<RawDoc>, LoadError>);

/// Every manifest file of `dir` with its documents as parsed, not validated (`apply` compares
/// them with what it applies: an invalid manifest still has a name).
pub fn parse_all(dir: &Path) -> std::io::Result<Vec<ParsedFile>> {
    Ok(list(dir)?
        .into_iter()
        .map(|path| {
            let docs = crate::spec::read_file(&path);
            (path, docs)
        })
        .collect())
}

/// Reads every manifest file of the folder once and binds names to files (see [`bind`]): the
/// store's `bound` sources (name -> file name) keep their pipelines. What `status` and `wait` see.
pub fn read_folder(
    dir: &Path,
    options: &Options,
    trust: &Trust,
    bound: &HashMap<String, String>,
) -> std::io::Result<Folder> {
    let mut reader = FolderReader::new(dir.to_owned(), options.clone(), trust.clone());
    reader.scan(bound, Hold::Never).map(|(folder, _)| folder)
}

/// One read of the folder by the controller's reader.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub folder: Folder,
    /// When a file held back (being written, or failing to parse for the first time) is to be
    /// read again.
    pub retry_in: Option<Duration>,
}

/// Each file's (size, mtime, mtime ns, inode): unchanged files are not parsed again.
type FileStamp = (u64, i64, i64, u64);

/// Whether files being written or failing to parse for the first time keep their previous view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    Never,
    WhileUnsettled,
}

/// The controller's reader: it keeps the last view, so that a file caught half-written (by an
/// editor, by `cp`) does not flap to Invalid and back.
#[derive(Debug)]
pub struct FolderReader {
    dir: PathBuf,
    options: Options,
    trust: Trust,
    /// Files modified and not yet closed, with the time of the last event.
    writing: HashMap<PathBuf, Instant>,
    /// Sources whose parse failure is being retried, with when it was first seen.
    parse_failures: HashMap<String, Instant>,
    /// Each manifest file's parse, by its stamp.
    parsed: HashMap<PathBuf, (FileStamp, Folder)>,
    /// What the last read returned.
    view: Folder,
}

impl FolderReader {
    pub fn new(dir: PathBuf, options: Options, trust: Trust) -> Self {
        FolderReader {
            dir,
            options,
            trust,
            writing: HashMap::new(),
            parse_failures: HashMap::new(),
            parsed: HashMap::new(),
            view: Folder::default(),
        }
    }

    /// What the last read returned.
    pub fn folder(&self) -> &Folder {
        &self.view
    }

    /// True while a file fails to parse (first held back for a retry, then reported Invalid).
    pub fn retrying(&self) -> bool {
        !self.parse_failures.is_empty()
    }

    /// Tracks files being written: modified but not yet closed.
    ///
    /// A rename into place and a new hard link to an existing file (`ln`, or `apply` on a
    /// filesystem without `RENAME_NOREPLACE`) are complete files: acted on at once.
    pub fn note_event(&mut self, event: &notify::Event) {
        use notify::EventKind;
        use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
        for path in &event.paths {
            match event.kind {
                EventKind::Create(CreateKind::File) if is_link_to_existing(path) => {
                    self.writing.remove(path);
                }
                EventKind::Create(CreateKind::File) | EventKind::Modify(ModifyKind::Data(_)) => {
                    self.writing.insert(path.clone(), Instant::now());
                }
                EventKind::Access(AccessKind::Close(AccessMode::Write))
                | EventKind::Modify(ModifyKind::Name(RenameMode::To))
                | EventKind::Remove(_) => {
                    self.writing.remove(path);
                }
                _ => {}
            }
        }
    }

    /// Reads the folder, keeping the previous view of files still being written or failing to
    /// parse for the first time, and binds names to files (the store's `bound` sources keep their
    /// pipelines). Returns the view and when to look again, if a held-back file needs it.
    pub fn read(&mut self, bound: &HashMap<String, String>) -> std::io::Result<Snapshot> {
        let (folder, retry_in) = self.scan(bound, Hold::WhileUnsettled)?;
        self.view = folder.clone();
        Ok(Snapshot { folder, retry_in })
    }

    fn scan(
        &mut self,
        bound: &HashMap<String, String>,
        hold: Hold,
    ) -> std::io::Result<(Folder, Option<Duration>)> {
        let files = list(&self.dir)?;
        let now = Instant::now();
        self.writing
            .retain(|_, t| now.duration_since(*t) < WRITE_QUIET);
        let mut read: Vec<Folder> = Vec::with_capacity(files.len());
        let mut requeue: Option<Duration> = None;
        let previous = |source: &str, prev: &Folder| {
            let mut kept = Folder::default();
            for d in prev.desired.values().filter(|d| d.source == source) {
                kept.desired.insert(d.name.clone(), d.clone());
            }
            for i in prev.invalid.iter().filter(|i| i.source == source) {
                kept.invalid.push(i.clone());
            }
            kept
        };
        let mut seen_sources = HashSet::new();
        for file in files {
            let source = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen_sources.insert(source.clone());
            if hold == Hold::WhileUnsettled
                && let Some(t) = self.writing.get(&file)
            {
                read.push(held(previous(&source, &self.view), &source, bound));
                let left = WRITE_QUIET.saturating_sub(now.duration_since(*t));
                requeue = Some(requeue.map_or(left, |r| r.min(left)));
                continue;
            }
            // Unchanged files (same size, mtime and inode) are not parsed again: a pass over a
            // folder of thousands of manifests costs a stat each. Owner and mode are checked on
            // every pass (a chmod does not change the mtime).
            let meta = std::fs::symlink_metadata(&file).ok();
            let stamp = meta.as_ref().map(|m| {
                use std::os::unix::fs::MetadataExt;
                (m.len(), m.mtime(), m.mtime_nsec(), m.ino())
            });
            let one = match (stamp, self.parsed.get(&file)) {
                (Some(st), Some((cached, entries))) if *cached == st => entries.clone(),
                _ => {
                    let mut one = Folder::default();
                    read_file(&file, &self.options, &mut one);
                    if let Some(st) = stamp {
                        self.parsed.insert(file.clone(), (st, one.clone()));
                    }
                    one
                }
            };
            // A file that cannot be stat'ed is left to the parse.
            if let Some(Err(problem)) = meta.as_ref().map(|m| self.trust.check_manifest(m)) {
                let insecure = InsecurePath {
                    path: file.clone(),
                    problem,
                };
                self.parse_failures.remove(&source);
                read.push(mark_insecure(one, &insecure, &file));
                continue;
            }
            let syntax_failure = one.invalid.iter().any(|i| i.syntax);
            if syntax_failure && hold == Hold::WhileUnsettled {
                let first = *self.parse_failures.entry(source.clone()).or_insert(now);
                if now.duration_since(first) < PARSE_RETRY {
                    read.push(held(previous(&source, &self.view), &source, bound));
                    let left = PARSE_RETRY.saturating_sub(now.duration_since(first));
                    requeue = Some(requeue.map_or(left, |r| r.min(left)));
                    continue;
                }
            } else {
                self.parse_failures.remove(&source);
            }
            read.push(named_by_binding(one, &source, bound));
        }
        self.parse_failures.retain(|s, _| seen_sources.contains(s));
        self.parsed.retain(|path, _| {
            path.file_name()
                .is_some_and(|n| seen_sources.contains(n.to_string_lossy().as_ref()))
        });
        Ok((bind(read, bound), requeue))
    }
}

/// The names the store has bound to `source`, in name order.
fn bound_to(bound: &HashMap<String, String>, source: &str) -> Vec<String> {
    let mut names: Vec<String> = bound
        .iter()
        .filter(|(_, s)| s.as_str() == source)
        .map(|(n, _)| n.clone())
        .collect();
    names.sort();
    names
}

/// A file that cannot be parsed names no pipeline of its own (at most its file stem): it is
/// invalid under the names the store has bound to it, so that a syntax error in a running
/// pipeline's file is an invalid edit (the run goes on), never a deletion.
fn named_by_binding(mut one: Folder, source: &str, bound: &HashMap<String, String>) -> Folder {
    if !one.desired.is_empty() {
        return one;
    }
    let Some(unparsed) = one.invalid.iter().position(|i| i.syntax) else {
        return one;
    };
    let template = one.invalid.remove(unparsed);
    let mut names = bound_to(bound, source);
    if names.is_empty() {
        names.extend(template.name.clone());
    }
    if names.is_empty() {
        one.invalid.insert(unparsed, template);
        return one;
    }
    for name in names {
        one.invalid.push(Invalid {
            name: Some(name),
            ..template.clone()
        });
    }
    one
}

/// What a file held back (being written, or failing to parse for the first time) stands for: its
/// previous view, or, when there is none yet (the controller just started), the pipelines the
/// store has bound to it, as invalid for now rather than absent (absent would mean deleted).
fn held(previous: Folder, source: &str, bound: &HashMap<String, String>) -> Folder {
    if !previous.desired.is_empty() || !previous.invalid.is_empty() {
        return previous;
    }
    let mut folder = previous;
    for name in bound_to(bound, source) {
        folder.invalid.push(Invalid {
            name: Some(name),
            source: source.to_owned(),
            message: format!("{source}: being written; read again shortly"),
            syntax: true,
            reason: InvalidReason::InvalidManifest,
        });
    }
    folder
}

/// Whether a file just created is a new name of a file that already has another (a hard link):
/// its content was written before, it is not being written through this name.
fn is_link_to_existing(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).is_ok_and(|m| m.is_file() && m.nlink() > 1)
}

/// The sources the store has each (not deleted) pipeline bound to.
pub fn bound_sources<'a>(
    rows: impl IntoIterator<Item = &'a PipelineRow>,
) -> HashMap<String, String> {
    rows.into_iter()
        .filter(|r| !r.deleted)
        .map(|r| (r.name.clone(), r.source.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dir: &Path, files: &[(&str, &str)], bound: &[(&str, &str)]) -> Folder {
        for (file, name) in files {
            std::fs::write(
                dir.join(file),
                format!(
                    "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: {name}\nspec:\n  jobs:\n    - {{id: a, command: \"true\"}}\n"
                ),
            )
            .unwrap();
        }
        let bound = bound
            .iter()
            .map(|(n, s)| ((*n).to_owned(), (*s).to_owned()))
            .collect();
        let trust = Trust::from_config(&crate::config::SecurityConfig::default()).unwrap();
        read_folder(dir, &Options::default(), &trust, &bound).unwrap()
    }

    #[test]
    fn a_bound_name_stays_with_its_file() {
        let tmp = tempfile::tempdir().unwrap();
        let files = [("a.yaml", "shared"), ("b.yaml", "shared")];
        // Unbound: the first file by name takes it.
        let folder = read(tmp.path(), &files, &[]);
        assert_eq!(folder.desired["shared"].source, "a.yaml");
        // Bound to b.yaml: a newcomer sorting first does not take it.
        let folder = read(tmp.path(), &files, &[("shared", "b.yaml")]);
        assert_eq!(folder.desired["shared"].source, "b.yaml");
        let dup: Vec<&Invalid> = folder.duplicates().collect();
        assert_eq!(dup.len(), 1);
        assert_eq!(dup[0].source, "a.yaml");
        assert_eq!(dup[0].name.as_deref(), Some("shared"));
        assert!(dup[0].message.contains("a.yaml:4:"), "{}", dup[0].message);
        assert!(folder.invalid_named("shared").is_none());
        // The bound file broken: the pipeline is Invalid, not handed to the other file.
        std::fs::write(tmp.path().join("b.yaml"), "apiVersion: executioner.dev/v1\nkind: Pipeline\nmetadata:\n  name: shared\nspec:\n  jobs: []\n  bogus: 1\n").unwrap();
        let folder = read(tmp.path(), &[("a.yaml", "shared")], &[("shared", "b.yaml")]);
        assert!(!folder.desired.contains_key("shared"));
        let invalid = folder.invalid_named("shared").unwrap();
        assert_eq!(invalid.source, "b.yaml");
        assert_eq!(invalid.reason, InvalidReason::InvalidManifest);
    }
}
