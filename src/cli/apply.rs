//! `executioner apply -f PATH` and `executioner delete NAME`: the imperative way into the
//! declarative controller. Both only change files in the manifests folder; the controller notices.
//! This module does not talk to the controller nor touch status files; only `--wait` reads the
//! store.
//!
//! Choices, kubectl-like:
//! - `-f` takes a file, a folder (its manifest files, not recursive, as the controller reads them)
//!   or `-` (standard input, YAML, possibly several documents, at most 10 MiB).
//! - All or nothing before the first write: every document is validated (with the configuration's
//!   security policy), names must be unique within one apply, and every target is decided, before
//!   anything is written. Any problem prints every diagnostic and writes nothing (exit 1). The
//!   writes themselves are atomic one by one, not as a set.
//! - Identity is `metadata.name`. The manifests folder is scanned for the file holding that name:
//!   none means `created` (written to `NAME.yaml`, or `NAME-2.yaml`, ... when that path is taken by
//!   something else); an equal typed manifest means `unchanged` (comments and layout do not count)
//!   and nothing is written; otherwise `configured`, and that file is replaced. A file holding
//!   several documents is never rewritten: the user is told to edit it. A name defined twice in the
//!   folder is an error too (which file would win is the controller's `DuplicateName` problem).
//! - A replaced file keeps its path and therefore its format: YAML stays YAML, a `.toml` or `.json`
//!   manifest is rewritten as TOML or JSON. New files are YAML.
//! - Content: the source file's bytes, comments included, when the document is the whole file and
//!   the file has the target's format; otherwise the typed manifest rendered in the target's format
//!   (YAML with the schema modeline). The original tool's format is always written converted, as v1.
//!   Relative paths in a manifest (`workingDir`, checks) start at its folder, so after `apply` they
//!   start at the manifests folder.
//! - Writes: a hidden temp file in the manifests folder (the controller ignores hidden files),
//!   fsync, rename over the target (a new file is renamed into place with `RENAME_NOREPLACE`, so
//!   it never clobbers a file that appeared meanwhile; a link where the filesystem cannot: tempfile's
//!   `persist_noclobber`), fsync
//!   of the folder. A new file is mode 0644 whatever the umask; a replaced one keeps its mode
//!   (and, when run as root, its owner and group). A rename is a complete file to the controller, which acts on it at
//!   once. Symlinks are never followed nor written through. The folder is created when missing; a
//!   folder writable by others without the sticky bit is refused (the controller refuses it too).
//! - Warnings (stderr, exit 0): relative paths in a manifest without `workingDir` (a command
//!   starting with `./` or `../`, a relative check path), since they will start at the manifests
//!   folder.
//! - `--wait` waits for each pipeline of the apply in turn, all within one `--timeout`; the exit
//!   code is the worst of them. It waits as `wait` does: for the generation of the spec now in the
//!   folder (see `wait`), so the previous generation's finished run is never taken for the new
//!   one's, even when the controller has not seen the change yet.
//! - `--prune` also deletes what an earlier apply of the same PATH wrote and PATH no longer has,
//!   from the inventory kept in the state (see `prune`); an empty PATH is refused unless
//!   `--allow-empty`. An apply of a file or folder records what it writes there.
//! - `delete NAME` removes the single-document file defining the pipeline; the controller cancels
//!   its run. It does not touch the status file or the history.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::spec::{self, Format, LoadError, Manifest, PipelineName, Pos, RawDoc};
use crate::validate::{self, Diagnostic, Options, Severity};

use super::prune::{self, Inventory};
use super::{CliError, CliResult, Exit, GlobalArgs};

/// How many `NAME-N.yaml` candidates are tried for a new pipeline.
const MAX_NAME_SUFFIX: usize = 1000;

/// The arguments of `apply`.
#[derive(Debug, Clone, clap::Args)]
pub struct ApplyArgs {
    /// File, folder or `-` (stdin, YAML)
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    pub file: PathBuf,
    /// Manifests folder (default: config manifests_dir, i.e. manifests/)
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,
    /// Then wait until each applied pipeline's current run is terminal.
    #[arg(long)]
    pub wait: bool,
    /// With --wait: give up after this long, for all pipelines together (90s, 1h30m, seconds).
    #[arg(long, requires = "wait", value_parser = super::parse_duration, value_name = "D")]
    pub timeout: Option<Duration>,
    /// Validate and print what would change; write nothing.
    #[arg(long, conflicts_with = "wait")]
    pub dry_run: bool,
    /// Also delete the manifests an earlier apply of this same PATH wrote and PATH no longer
    /// has (never a file written by hand, nor one changed since apply wrote it).
    #[arg(long)]
    pub prune: bool,
    /// With --prune: let PATH hold no manifest, pruning everything it applied before.
    #[arg(long, requires = "prune")]
    pub allow_empty: bool,
}

pub fn run(args: &ApplyArgs, global: &GlobalArgs) -> CliResult {
    let config = super::load_config(global)?;
    let (dir, options) = target(args.manifests.as_deref(), &config);

    let source = prune::source_key(&args.file)?;
    prune::check_source(source.as_deref(), args.prune)?;
    let sources = read_sources(&args.file, args.prune)?;
    let incoming = validate_all(&sources, &options, global.quiet)?;
    prune::check_not_empty(&args.file, incoming.len(), args.prune, args.allow_empty)?;
    let folder = Folder::scan_warning(&dir, global.quiet)?;
    let plan = plan(&incoming, &folder)?;
    // The controller would refuse the folder; writing manifests there would only hand them to
    // whoever else can write it.
    crate::controller::permissions::check_folder(&dir)
        .map_err(|e| CliError::usage(format!("refusing to write manifests: {e}")))?;
    // The inventory's store is driven from here; it owns no runtime of its own.
    let runtime = super::runtime()?;
    let inventory = runtime.block_on(open_inventory(args, global, &config, source, &dir))?;
    let applied = runtime.block_on(write_plan(
        args,
        global,
        &dir,
        &plan,
        inventory.as_ref(),
        &incoming,
    ));
    if let Some(inventory) = inventory {
        runtime.block_on(inventory.close());
    }
    drop(runtime);
    applied?;
    if !args.wait {
        return Ok(Exit::Success);
    }
    wait_all(args, global, &dir, &plan)
}

/// Writes the plan (unless `--dry-run`), records it, then prunes; prints each step.
async fn write_plan(
    args: &ApplyArgs,
    global: &GlobalArgs,
    dir: &Path,
    plan: &[Step],
    inventory: Option<&Inventory>,
    incoming: &[Incoming<'_>],
) -> Result<(), CliError> {
    let prunable = match (inventory, args.prune) {
        (Some(inventory), true) => {
            let keep: HashSet<&str> = incoming.iter().map(|d| d.name().as_str()).collect();
            inventory
                .prunable(&keep, args.dry_run, global.quiet)
                .await?
        }
        (Some(_) | None, _) => Vec::new(),
    };

    let suffix = if args.dry_run { " (dry run)" } else { "" };
    if !args.dry_run && plan.iter().any(|s| s.action.writes()) {
        fs::create_dir_all(dir).map_err(|e| {
            CliError::usage(format!("{}: cannot create folder: {e}", dir.display()))
        })?;
    }
    for step in plan {
        if !args.dry_run {
            step.action.perform(dir)?;
            let recorded = match (inventory, &step.action) {
                (
                    Some(inventory),
                    Action::Create { path, content } | Action::Replace { path, content },
                ) => inventory.record(step.name.as_str(), path, content).await,
                (Some(inventory), Action::Keep { path }) => {
                    inventory.take_over(step.name.as_str(), path).await
                }
                (None, _) => Ok(()),
            };
            if let Err(e) = recorded {
                // The safe side: a file missing from the inventory is never pruned.
                eprintln!(
                    "warning: pipeline/{}: not recorded for a later --prune: {}",
                    step.name,
                    e.render()
                );
            }
        }
        if !global.quiet {
            println!("pipeline/{} {}{suffix}", step.name, step.action.verb());
        }
    }
    for file in &prunable {
        if let Some(inventory) = inventory.filter(|_| !args.dry_run) {
            inventory.prune(file).await?;
        }
        if !global.quiet {
            println!("pipeline/{} pruned{suffix}", file.pipeline);
        }
    }
    Ok(())
}

/// `--wait`: each applied pipeline in turn, within one `--timeout`; the worst exit code.
fn wait_all(args: &ApplyArgs, global: &GlobalArgs, dir: &Path, plan: &[Step]) -> CliResult {
    let deadline = args.timeout.map(|t| Instant::now() + t);
    let mut worst = Exit::Success;
    for step in plan {
        let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        let exit = match super::wait::wait_for(step.name.as_str(), Some(dir), timeout, global) {
            Ok(exit) => exit,
            Err(e) => {
                eprintln!("error: {}", e.render());
                e.exit_code()
            }
        };
        if severity(exit) > severity(worst) {
            worst = exit;
        }
        if exit == Exit::Interrupted {
            break;
        }
    }
    Ok(worst)
}

/// The inventory this apply reads (`--prune`) or records to (an apply of a file or folder that
/// writes). Only `--prune` creates the state database: an apply that never prunes leaves no
/// state behind, and records only into a database that exists. Without `--prune`, one that cannot
/// be opened is only a warning.
async fn open_inventory(
    args: &ApplyArgs,
    global: &GlobalArgs,
    config: &crate::config::Config,
    source: Option<String>,
    dir: &Path,
) -> Result<Option<Inventory>, CliError> {
    let Some(source) = source else {
        return Ok(None);
    };
    if args.dry_run && !args.prune {
        return Ok(None);
    }
    let state_dir = super::state_dir(config);
    let create = args.prune && !args.dry_run;
    match Inventory::open(config, &state_dir, source, dir, create).await {
        Ok(inventory) => Ok(inventory),
        Err(e) if !args.prune => {
            if !global.quiet {
                eprintln!(
                    "warning: what this apply writes is not recorded for a later --prune: {}",
                    e.render()
                );
            }
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Orders exit codes for `--wait` over several pipelines: the worst one is returned.
fn severity(exit: Exit) -> u8 {
    match exit {
        Exit::Success => 0,
        Exit::Failed => 1,
        Exit::Usage => 2,
        Exit::Corrupt => 3,
        Exit::Interrupted => 4,
    }
}

pub fn delete(name: &str, manifests: Option<&Path>, global: &GlobalArgs) -> CliResult {
    let name = PipelineName::parse(name).map_err(|e| CliError::usage(e.to_string()))?;
    let config = super::load_config(global)?;
    let dir = folder_to_write(manifests, &config);
    let folder = Folder::scan(&dir)?;
    let found = folder.find(name.as_str());
    let (file, docs) = match found.as_slice() {
        [] => {
            return Err(CliError::usage(format!(
                "pipeline/{name} not found in {}",
                dir.display()
            )));
        }
        [one] => *one,
        several => return Err(CliError::failed(defined_twice(&name, several))),
    };
    if docs > 1 {
        return Err(CliError::failed(format!(
            "pipeline/{name}: {} holds {docs} manifests and is not rewritten; edit that file to remove it",
            file.display()
        )));
    }
    let not_removed =
        |e: io::Error| CliError::usage(format!("{}: cannot remove: {e}", file.display()));
    if is_symlink(file) {
        return Err(not_removed(io::Error::other(
            "is a symbolic link, not followed",
        )));
    }
    fs::remove_file(file).map_err(not_removed)?;
    sync_dir(&dir).map_err(not_removed)?;
    if !global.quiet {
        println!("pipeline/{name} deleted");
    }
    Ok(Exit::Success)
}

// ---------------------------------------------------------------------------------------------
// Reading and validating what is applied

/// One file given to `apply` (or standard input), read once: what is validated is what is copied.
pub(super) struct Source {
    path: PathBuf,
    /// Standard input: never copied as written (there is no file to keep).
    stdin: bool,
    format: Format,
    bytes: Vec<u8>,
    docs: Result<Vec<RawDoc>, LoadError>,
}

/// Reads what `-f` names. A folder without manifest files is an error, unless `may_be_empty`
/// (`--prune`, which decides about an empty source itself).
/// The manifests folder to write and the validation options, as apply and diff both use them.
pub(super) fn target(
    manifests: Option<&Path>,
    config: &crate::config::Config,
) -> (PathBuf, Options) {
    let dir = folder_to_write(manifests, config);
    let options = Options {
        security: super::security_policy(config),
        ..Options::default()
    };
    (dir, options)
}

/// The manifests folder apply, diff and delete act on: `--manifests`, else the folder the
/// controller of this state folder watches (recorded in the store when it starts, as `status`,
/// `wait` and `suspend` read it), else the configured one. A state database that cannot be read
/// falls back to the configuration: apply never fails for want of a state it does not need.
pub(super) fn folder_to_write(manifests: Option<&Path>, config: &crate::config::Config) -> PathBuf {
    if let Some(dir) = manifests {
        return dir.to_path_buf();
    }
    let state_dir = super::state_dir(config);
    if crate::state_dir::db_path(&state_dir).exists()
        && let Ok(runtime) = super::runtime()
        && let Ok(Some(recorded)) = runtime.block_on(async {
            match super::open_store_existing(&state_dir, config).await {
                Ok(Some(store)) => store.manifests_dir().await.map_err(CliError::from),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            }
        })
    {
        return recorded;
    }
    config.manifests_dir.clone()
}

pub(super) fn read_sources(file: &Path, may_be_empty: bool) -> Result<Vec<Source>, CliError> {
    if file == Path::new("-") {
        let mut bytes = Vec::new();
        io::stdin()
            .lock()
            .take(spec::source::MAX_FILE_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::usage(format!("cannot read standard input: {e}")))?;
        return Ok(vec![Source::parse(file, true, Format::Yaml, bytes)]);
    }
    let meta = fs::metadata(file)
        .map_err(|e| CliError::usage(format!("{}: cannot read: {e}", file.display())))?;
    if meta.is_dir() {
        let files = validate::manifest_files(file)
            .map_err(|e| CliError::usage(format!("{}: cannot read folder: {e}", file.display())))?;
        if files.is_empty() && !may_be_empty {
            return Err(CliError::usage(format!(
                "{}: no manifest files in this folder",
                file.display()
            )));
        }
        files.iter().map(|f| read_source(f)).collect()
    } else {
        read_source(file).map(|s| vec![s])
    }
}

fn read_source(path: &Path) -> Result<Source, CliError> {
    let format = Format::from_path(path).ok_or_else(|| {
        CliError::usage(
            LoadError::UnknownFormat {
                path: path.to_owned(),
            }
            .to_string(),
        )
    })?;
    let unreadable =
        |e: io::Error| CliError::usage(format!("{}: cannot read: {e}", path.display()));
    let mut bytes = Vec::new();
    fs::File::open(path)
        .map_err(unreadable)?
        .take(spec::source::MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    Ok(Source::parse(path, false, format, bytes))
}

impl Source {
    fn parse(path: &Path, stdin: bool, format: Format, bytes: Vec<u8>) -> Self {
        let docs = if bytes.len() as u64 > spec::source::MAX_FILE_BYTES {
            Err(LoadError::TooLarge {
                path: path.to_owned(),
            })
        } else {
            spec::parse_bytes(path, &bytes, format)
        };
        Self {
            path: path.to_owned(),
            stdin,
            format,
            bytes,
            docs,
        }
    }
}

/// A valid document to apply.
pub(super) struct Incoming<'a> {
    source: &'a Source,
    pub(super) manifest: Manifest,
    /// Where `metadata.name` is written, for the duplicate-name diagnostic.
    name_pos: Pos,
    /// The source file is this document alone, in v1 shape: it can be copied as written.
    whole_file: bool,
}

impl Incoming<'_> {
    pub(super) fn name(&self) -> &PipelineName {
        &self.manifest.metadata.name
    }

    /// What to write at a path of `format`.
    fn content(&self, format: Format) -> Result<Vec<u8>, CliError> {
        if self.whole_file && self.source.format == format {
            return Ok(self.source.bytes.clone());
        }
        render(&self.manifest, format).map_err(|e| {
            CliError::failed(format!(
                "pipeline/{}: cannot render the manifest: {e}",
                self.name()
            ))
        })
    }
}

/// Validates every document of every source; prints all diagnostics and fails when any is invalid
/// or when a name is given twice.
pub(super) fn validate_all<'a>(
    sources: &'a [Source],
    options: &Options,
    quiet: bool,
) -> Result<Vec<Incoming<'a>>, CliError> {
    let mut incoming = Vec::new();
    let mut diagnostics = Vec::new();
    let mut invalid = 0usize;
    for source in sources {
        let docs = match &source.docs {
            Ok(docs) => docs,
            Err(e) => {
                invalid += 1;
                diagnostics.push(load_diagnostic(&source.path, e));
                continue;
            }
        };
        for doc in docs {
            match validate::validate_doc(doc, options) {
                Ok(valid) => {
                    diagnostics.extend(valid.warnings);
                    if !quiet {
                        diagnostics.extend(relative_paths(&valid.manifest).into_iter().map(
                            |(pointer, message)| Diagnostic {
                                file: source.path.clone(),
                                pos: doc.pos_of(&pointer),
                                severity: Severity::Warning,
                                message,
                            },
                        ));
                    }
                    incoming.push(Incoming {
                        source,
                        manifest: valid.manifest,
                        name_pos: doc.pos_of("/metadata/name"),
                        whole_file: docs.len() == 1 && !doc.legacy && !source.stdin,
                    });
                }
                Err(found) => {
                    invalid += 1;
                    diagnostics.extend(found);
                }
            }
        }
    }

    let mut first: HashMap<&str, &Incoming<'_>> = HashMap::new();
    for doc in &incoming {
        if let Some(earlier) = first.get(doc.name().as_str()) {
            invalid += 1;
            diagnostics.push(Diagnostic {
                file: doc.source.path.clone(),
                pos: doc.name_pos,
                severity: Severity::Error,
                message: format!(
                    "pipeline name `{}` is already used by {}:{} (DuplicateName)",
                    doc.name(),
                    earlier.source.path.display(),
                    earlier.name_pos
                ),
            });
        } else {
            first.insert(doc.name().as_str(), doc);
        }
    }

    for d in &diagnostics {
        eprintln!("{d}");
    }
    if invalid > 0 {
        return Err(CliError::failed(format!(
            "{invalid} invalid manifest{}; nothing was applied",
            if invalid == 1 { "" } else { "s" }
        )));
    }
    Ok(incoming)
}

/// The relative paths of a manifest without `workingDir` (a command starting with `./` or `../`,
/// a relative check path), as (JSON pointer, warning): after `apply` they start at the manifests
/// folder, which is rarely what was meant.
fn relative_paths(manifest: &Manifest) -> Vec<(String, String)> {
    fn relative(path: &str) -> bool {
        path.starts_with("./") || path.starts_with("../")
    }
    fn relative_path(path: &str) -> bool {
        !path.is_empty() && !path.starts_with(['/', '$', '~'])
    }
    fn command(c: &spec::Command) -> Option<&str> {
        match c {
            spec::Command::Shell(text) => Some(text.trim_start()).filter(|t| relative(t)),
            spec::Command::Exec(args) => args.first().map(String::as_str).filter(|a| relative(a)),
        }
    }
    fn checks(checks: Option<&Vec<spec::Check>>, at: &str, found: &mut Vec<(String, String)>) {
        for (k, check) in checks.into_iter().flatten().enumerate() {
            let paths = [
                check
                    .file_exists
                    .as_ref()
                    .map(|c| ("fileExists/path", c.path.as_str())),
                check
                    .file_not_exists
                    .as_ref()
                    .map(|c| ("fileNotExists/path", c.path.as_str())),
            ];
            for (field, path) in paths.into_iter().flatten() {
                if relative_path(path) {
                    found.push((format!("{at}/{k}/{field}"), path.to_owned()));
                }
            }
            if let Some(path) = check.command.as_ref().and_then(command) {
                found.push((format!("{at}/{k}/command"), path.to_owned()));
            }
        }
    }
    let spec = &manifest.spec;
    if spec.working_dir.is_some() {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut warn = |job: &str, found: Vec<(String, String)>| {
        for (pointer, path) in found {
            out.push((
                pointer,
                format!(
                    "job `{job}` uses the relative path `{path}` but the pipeline has no \
                     workingDir: it will run from the manifests folder; set spec.workingDir"
                ),
            ));
        }
    };
    for (i, job) in spec.jobs.iter().enumerate() {
        if job
            .working_dir
            .as_deref()
            .is_some_and(|d| !relative_path(d))
        {
            continue;
        }
        let mut found = Vec::new();
        if let Some(path) = command(&job.command) {
            found.push((format!("/spec/jobs/{i}/command"), path.to_owned()));
        }
        checks(
            job.pre_checks.as_ref(),
            &format!("/spec/jobs/{i}/preChecks"),
            &mut found,
        );
        checks(
            job.post_checks.as_ref(),
            &format!("/spec/jobs/{i}/postChecks"),
            &mut found,
        );
        // Defaults apply to the jobs that leave their own checks out.
        if job.pre_checks.is_none() {
            checks(
                spec.defaults.pre_checks.as_ref(),
                "/spec/defaults/preChecks",
                &mut found,
            );
        }
        if job.post_checks.is_none() {
            checks(
                spec.defaults.post_checks.as_ref(),
                "/spec/defaults/postChecks",
                &mut found,
            );
        }
        warn(job.id.as_str(), found);
    }
    out
}

/// A file that could be read but not parsed, as a diagnostic (as `validate` reports it).
fn load_diagnostic(path: &Path, e: &LoadError) -> Diagnostic {
    let pos = match e {
        LoadError::Syntax { pos, .. } => *pos,
        LoadError::Io { .. } | LoadError::TooLarge { .. } | LoadError::UnknownFormat { .. } => {
            Pos::START
        }
    };
    Diagnostic {
        file: path.to_owned(),
        pos,
        severity: Severity::Error,
        message: load_message(e),
    }
}

/// A load error's message without the path it starts with.
pub(super) fn load_message(e: &LoadError) -> String {
    match e {
        LoadError::Syntax { message, .. } => message.clone(),
        LoadError::TooLarge { .. } => format!(
            "larger than {} MiB, refused",
            spec::source::MAX_FILE_BYTES / 1024 / 1024
        ),
        LoadError::Io { source, .. } => format!("cannot read: {source}"),
        LoadError::UnknownFormat { .. } => "unknown manifest format".into(),
    }
}

/// The typed manifest as the text of a `format` file.
pub(super) fn render(manifest: &Manifest, format: Format) -> Result<Vec<u8>, String> {
    let mut text = match format {
        Format::Yaml => {
            // No schema modeline: a path written here would resolve on no one else's machine
            // (`executioner schema --out-dir` or `init` give editors the schema).
            serde_saphyr::to_string(manifest).map_err(|e| e.to_string())?
        }
        Format::Toml => toml::to_string(manifest).map_err(|e| e.to_string())?,
        Format::Json => serde_json::to_string_pretty(manifest).map_err(|e| e.to_string())?,
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text.into_bytes())
}

// ---------------------------------------------------------------------------------------------
// The manifests folder as it is

/// The manifest files of the manifests folder, parsed (not validated: an invalid manifest still
/// has a name, and applying a fixed version replaces it).
pub(super) struct Folder {
    dir: PathBuf,
    files: Vec<FolderFile>,
}

pub(super) struct FolderFile {
    pub(super) path: PathBuf,
    format: Format,
    docs: Result<Vec<FolderDoc>, LoadError>,
}

pub(super) struct FolderDoc {
    name: Option<String>,
    /// `None` when the document does not fit the manifest types (then it differs from anything
    /// applied).
    pub(super) manifest: Option<Manifest>,
}

impl Folder {
    /// [`Folder::scan`], with a warning on stderr (unless `quiet`) for each file that does not
    /// parse: it is left alone, and the user should know why.
    pub(super) fn scan_warning(dir: &Path, quiet: bool) -> Result<Self, CliError> {
        let folder = Self::scan(dir)?;
        if !quiet {
            for (path, e) in folder.unparsable() {
                eprintln!(
                    "warning: {}: ignored, cannot be parsed: {}",
                    path.display(),
                    load_message(e)
                );
            }
        }
        Ok(folder)
    }

    /// A missing folder is an empty one (`apply` creates it).
    pub(super) fn scan(dir: &Path) -> Result<Self, CliError> {
        let parsed = crate::controller::folder::parse_all(dir).map_err(|e| {
            CliError::usage(format!(
                "{}: cannot read the manifests folder: {e}",
                dir.display()
            ))
        })?;
        let files = parsed
            .into_iter()
            .filter_map(|(path, docs)| {
                let format = Format::from_path(&path)?;
                let docs = docs.map(|docs| {
                    docs.into_iter()
                        .map(|doc| FolderDoc {
                            name: doc
                                .value
                                .pointer("/metadata/name")
                                .and_then(|v| v.as_str())
                                .map(str::to_owned),
                            manifest: serde_json::from_value(doc.value).ok(),
                        })
                        .collect()
                });
                Some(FolderFile { path, format, docs })
            })
            .collect();
        Ok(Self {
            dir: dir.to_owned(),
            files,
        })
    }

    /// Every (file, documents in that file) defining `name`: once per definition.
    fn find<'a>(&'a self, name: &'a str) -> Vec<(&'a Path, usize)> {
        self.definitions(name)
            .map(|(file, docs, _)| (file.path.as_path(), docs))
            .collect()
    }

    pub(super) fn definitions<'a>(
        &'a self,
        name: &'a str,
    ) -> impl Iterator<Item = (&'a FolderFile, usize, &'a FolderDoc)> + 'a {
        self.files.iter().flat_map(move |file| {
            let docs = file.docs.as_deref().unwrap_or_default();
            docs.iter()
                .filter(move |d| d.name.as_deref() == Some(name))
                .map(move |d| (file, docs.len(), d))
        })
    }

    pub(super) fn unparsable(&self) -> impl Iterator<Item = (&Path, &LoadError)> {
        self.files
            .iter()
            .filter_map(|f| f.docs.as_ref().err().map(|e| (f.path.as_path(), e)))
    }

    fn unparsable_at(&self, path: &Path) -> Option<&LoadError> {
        self.files
            .iter()
            .find(|f| f.path == path)
            .and_then(|f| f.docs.as_ref().err())
    }
}

fn defined_twice(name: &PipelineName, files: &[(&Path, usize)]) -> String {
    let list: Vec<String> = files.iter().map(|(p, _)| p.display().to_string()).collect();
    format!(
        "pipeline/{name} is defined more than once in the manifests folder ({}); fix that first",
        list.join(", ")
    )
}

// ---------------------------------------------------------------------------------------------
// Deciding, then writing

/// What applying one document does to the manifests folder.
pub(super) enum Action {
    /// A new file, which must not exist yet.
    Create { path: PathBuf, content: Vec<u8> },
    /// The single-document file holding the pipeline, replaced.
    Replace { path: PathBuf, content: Vec<u8> },
    /// The folder already says the same, in this file.
    Keep { path: PathBuf },
}

impl Action {
    fn verb(&self) -> &'static str {
        match self {
            Action::Create { .. } => "created",
            Action::Replace { .. } => "configured",
            Action::Keep { .. } => "unchanged",
        }
    }

    fn writes(&self) -> bool {
        match self {
            Action::Create { .. } | Action::Replace { .. } => true,
            Action::Keep { .. } => false,
        }
    }

    fn perform(&self, dir: &Path) -> Result<(), CliError> {
        let (path, content, replace) = match self {
            Action::Create { path, content } => (path, content, false),
            Action::Replace { path, content } => (path, content, true),
            Action::Keep { .. } => return Ok(()),
        };
        write_atomic(dir, path, content, replace)
            .map_err(|e| CliError::usage(format!("{}: cannot write: {e}", path.display())))
    }
}

pub(super) struct Step {
    pub(super) name: PipelineName,
    pub(super) action: Action,
}

/// Decides every document's action; any conflict fails the whole apply before a write.
pub(super) fn plan(incoming: &[Incoming<'_>], folder: &Folder) -> Result<Vec<Step>, CliError> {
    let mut errors = Vec::new();
    let mut steps = Vec::new();
    let mut claimed: HashSet<PathBuf> = HashSet::new();
    for doc in incoming {
        let name = doc.name();
        let found: Vec<_> = folder.definitions(name.as_str()).collect();
        let action = match found.as_slice() {
            [] => match new_path(folder, &claimed, name) {
                Ok(path) => doc
                    .content(Format::Yaml)
                    .map(|content| Action::Create { path, content }),
                Err(message) => Err(CliError::failed(message)),
            },
            [(file, _, existing)] if existing.manifest.as_ref() == Some(&doc.manifest) => {
                Ok(Action::Keep {
                    path: file.path.clone(),
                })
            }
            [(file, docs, _)] if *docs > 1 => Err(CliError::failed(format!(
                "pipeline/{name}: {} holds {docs} manifests and is not rewritten by apply; edit that file instead",
                file.path.display()
            ))),
            [(file, _, _)] => doc.content(file.format).map(|content| Action::Replace {
                path: file.path.clone(),
                content,
            }),
            several => {
                let files: Vec<(&Path, usize)> = several
                    .iter()
                    .map(|(f, n, _)| (f.path.as_path(), *n))
                    .collect();
                Err(CliError::failed(defined_twice(name, &files)))
            }
        };
        match action {
            Ok(action) => {
                if let Action::Create { path, .. } | Action::Replace { path, .. } = &action {
                    claimed.insert(path.clone());
                }
                steps.push(Step {
                    name: name.clone(),
                    action,
                });
            }
            Err(e) => errors.push(e.render()),
        }
    }
    if errors.is_empty() {
        return Ok(steps);
    }
    for e in &errors {
        eprintln!("error: {e}");
    }
    Err(CliError::failed("nothing was applied"))
}

/// `NAME.yaml`, or the first free `NAME-N.yaml`. A path is taken when anything is there (a file
/// of another pipeline, a symlink, a folder) or another document of this apply claimed it.
fn new_path(
    folder: &Folder,
    claimed: &HashSet<PathBuf>,
    name: &PipelineName,
) -> Result<PathBuf, String> {
    let dir = &folder.dir;
    for n in 1..=MAX_NAME_SUFFIX {
        let file = if n == 1 {
            format!("{name}.yaml")
        } else {
            format!("{name}-{n}.yaml")
        };
        let path = dir.join(file);
        if n == 1
            && let Some(e) = folder.unparsable_at(&path)
        {
            // It may well be this pipeline, half edited: writing a second file would define it twice.
            return Err(format!(
                "pipeline/{name}: {} cannot be parsed ({}); fix or remove it first",
                path.display(),
                load_message(e)
            ));
        }
        if !claimed.contains(&path) && fs::symlink_metadata(&path).is_err() {
            return Ok(path);
        }
    }
    Err(format!(
        "pipeline/{name}: no free file name from {name}.yaml to {name}-{MAX_NAME_SUFFIX}.yaml"
    ))
}

/// Writes `content` to `target` through a hidden temp file in `dir`: fsync, then rename (for a
/// new file, one that fails instead of clobbering), then fsync of the folder.
pub(super) fn write_atomic(
    dir: &Path,
    target: &Path,
    content: &[u8],
    replace: bool,
) -> io::Result<()> {
    if is_symlink(target) {
        return Err(io::Error::other(
            "is a symbolic link; apply does not write through links",
        ));
    }
    let base = target
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("manifest");
    // A replaced file keeps its permission bits (a 0600 manifest must not become readable by
    // all) and, when we may, its owner and group (else the file would belong to whoever ran
    // the command, which the controller's ownership check may refuse). A new file is 0644.
    let replaced = fs::symlink_metadata(target)
        .ok()
        .filter(|m| replace && m.file_type().is_file());
    let mode = replaced.as_ref().map_or(0o644, |m| m.mode() & 0o777);
    // Hidden (`.NAME.yaml.XXXXXX.tmp`): the controller ignores it until it is renamed into place.
    let mut file = tempfile::Builder::new()
        .prefix(&format!(".{base}."))
        .suffix(".tmp")
        .permissions(fs::Permissions::from_mode(mode & 0o600))
        .tempfile_in(dir)?;
    if let Some(old) = replaced
        .as_ref()
        .filter(|_| nix::unistd::geteuid().is_root())
    {
        std::os::unix::fs::fchown(file.as_file(), Some(old.uid()), Some(old.gid()))?;
    }
    // Explicit, whatever the umask (and after the chown, which may clear bits): manifests are
    // meant to be read by the controller's user. Set before any byte is written.
    file.as_file()
        .set_permissions(fs::Permissions::from_mode(mode))?;
    file.write_all(content)?;
    file.as_file().sync_all()?;
    // A rename is what the controller takes for a complete file and acts on at once; a new link
    // looks like a file just created, maybe still being written, and is left alone a while. So a
    // new file is renamed with `RENAME_NOREPLACE`, and linked only where the filesystem cannot
    // do that. On failure the temp file is removed.
    if replace {
        file.persist(target)
    } else {
        file.persist_noclobber(target)
    }
    .map_err(|e| e.error)?;
    sync_dir(dir)
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// Makes a rename or removal in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new file never clobbers one that appeared meanwhile; a replacement does replace; the
    /// file is 0644 whatever the umask; no temp file is left either way.
    #[test]
    fn write_atomic_creates_without_clobbering_and_replaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("a.yaml");
        write_atomic(dir.path(), &target, b"first\n", false).expect("new file");
        let err = write_atomic(dir.path(), &target, b"second\n", false).expect_err("clobbered");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read(&target).expect("read"), b"first\n");
        write_atomic(dir.path(), &target, b"third\n", true).expect("replace");
        assert_eq!(fs::read(&target).expect("read"), b"third\n");
        let mode = fs::metadata(&target).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);

        // A replaced file keeps its mode, and (as root) its owner and group.
        fs::set_permissions(&target, fs::Permissions::from_mode(0o600)).expect("chmod");
        let as_root = nix::unistd::geteuid().is_root();
        if as_root {
            std::os::unix::fs::chown(&target, Some(65534), Some(65534)).expect("chown");
        }
        write_atomic(dir.path(), &target, b"fourth\n", true).expect("replace");
        let meta = fs::metadata(&target).expect("stat");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        if as_root {
            assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
        }
        assert_eq!(fs::read(&target).expect("read"), b"fourth\n");
    }

    /// Every example, rendered in each format, reads back as the same typed manifest.
    #[test]
    fn rendering_round_trips_in_every_format() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let mut seen = 0;
        for file in validate::manifest_files(&examples).unwrap() {
            let docs = spec::read_file(&file).unwrap();
            for doc in &docs {
                let manifest: Manifest = serde_json::from_value(doc.value.clone()).unwrap();
                for (format, ext) in [
                    (Format::Yaml, "yaml"),
                    (Format::Toml, "toml"),
                    (Format::Json, "json"),
                ] {
                    let text = render(&manifest, format)
                        .unwrap_or_else(|e| panic!("{}: {ext}: {e}", file.display()));
                    let path = PathBuf::from(format!("rendered.{ext}"));
                    let back = spec::parse_bytes(&path, &text, format).unwrap_or_else(|e| {
                        panic!(
                            "{}: {ext}: {e}\n{}",
                            file.display(),
                            String::from_utf8_lossy(&text)
                        )
                    });
                    assert_eq!(back.len(), 1);
                    let again: Manifest = serde_json::from_value(back[0].value.clone()).unwrap();
                    assert_eq!(again, manifest, "{}: {ext}", file.display());
                    seen += 1;
                }
            }
        }
        assert!(seen >= 3 * 8, "{seen}");
    }
}
