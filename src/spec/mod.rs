//! Desired state: the manifest types, reading manifest files into documents with positions, the
//! original tool's JSON format, the JSON Schema generated from the types, and the pinned spec a
//! run keeps with its hash.
//!
//! No I/O beyond reading the one file asked for; no semantic rules (those are `validate`).

pub mod duration;
pub mod legacy;
pub mod names;
pub mod params;
pub mod pinned;
pub mod schema;
pub mod source;
pub mod types;

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

pub use duration::Duration;
pub use names::{JobId, NameError, PipelineName};
pub use pinned::{Pinned, spec_hash};
pub use source::{Format, Pos, Positions, SourceDoc};
pub use types::*;

/// One document of a manifest file, parsed but not yet validated.
#[derive(Debug, Clone)]
pub struct RawDoc {
    pub file: PathBuf,
    /// 0-based index of the document within its file.
    pub index: usize,
    pub format: Format,
    /// Converted from the original tool's JSON format.
    pub legacy: bool,
    /// The document in v1 shape (converted when `legacy`).
    pub value: Value,
    pub positions: Positions,
    /// Remarks that do not make the document invalid (e.g. ignored legacy keys).
    pub warnings: Vec<(Pos, String)>,
}

impl RawDoc {
    /// Position of the value at a v1 JSON pointer, in the file as written.
    pub fn pos_of(&self, pointer: &str) -> Pos {
        self.positions.of_value(&self.source_pointer(pointer))
    }

    /// Position of the key of the value at a v1 JSON pointer.
    pub fn key_pos_of(&self, pointer: &str) -> Pos {
        self.positions.of_key(&self.source_pointer(pointer))
    }

    fn source_pointer(&self, pointer: &str) -> String {
        if self.legacy {
            legacy::source_pointer(pointer)
        } else {
            pointer.to_owned()
        }
    }
}

/// Why a file could not be read into documents.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{}: cannot read", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: larger than {} MiB, refused", path.display(), source::MAX_FILE_BYTES / 1024 / 1024)]
    TooLarge { path: PathBuf },
    #[error("{}: unknown manifest format (expected .yaml, .yml, .toml or .json)", path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}:{pos}: {message}", path.display())]
    Syntax {
        path: PathBuf,
        pos: Pos,
        message: String,
    },
}

impl LoadError {
    /// True when the file could not be read at all (exit 2), false when its content is bad (exit 1).
    pub fn is_unreadable(&self) -> bool {
        matches!(self, LoadError::Io { .. } | LoadError::UnknownFormat { .. })
    }
}

/// Reads a manifest file (YAML, TOML or JSON, by extension; `-` is standard input, read as YAML).
pub fn read_file(path: &Path) -> Result<Vec<RawDoc>, LoadError> {
    let format = if path == Path::new("-") {
        Format::Yaml
    } else {
        Format::from_path(path).ok_or_else(|| LoadError::UnknownFormat {
            path: path.to_owned(),
        })?
    };
    let io = |source| LoadError::Io {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    let limit = source::MAX_FILE_BYTES + 1;
    if path == Path::new("-") {
        std::io::stdin()
            .take(limit)
            .read_to_end(&mut bytes)
            .map_err(io)?;
    } else {
        let file = std::fs::File::open(path).map_err(io)?;
        if file.metadata().map_err(io)?.is_dir() {
            return Err(io(std::io::Error::other("is a directory")));
        }
        file.take(limit).read_to_end(&mut bytes).map_err(io)?;
    }
    if bytes.len() as u64 > source::MAX_FILE_BYTES {
        return Err(LoadError::TooLarge {
            path: path.to_owned(),
        });
    }
    parse_bytes(path, &bytes, format)
}

/// Parses manifest bytes as if read from `path`.
pub fn parse_bytes(path: &Path, bytes: &[u8], format: Format) -> Result<Vec<RawDoc>, LoadError> {
    let syntax = |e: source::SyntaxError| LoadError::Syntax {
        path: path.to_owned(),
        pos: e.pos.unwrap_or(Pos::START),
        message: e.message,
    };
    let text = source::decode(bytes).map_err(syntax)?;
    let docs = source::parse(text, format).map_err(syntax)?;
    if docs.is_empty() {
        return Err(LoadError::Syntax {
            path: path.to_owned(),
            pos: Pos::START,
            message: "no manifest in this file (it is empty)".into(),
        });
    }
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("pipeline")
        .to_owned();
    Ok(docs
        .into_iter()
        .enumerate()
        .map(|(index, doc)| {
            if legacy::is_legacy(&doc.value) {
                let converted = legacy::convert(&doc.value, &stem);
                let warnings = converted
                    .warnings
                    .into_iter()
                    .map(|(pointer, message)| (doc.positions.of_key(&pointer), message))
                    .collect();
                RawDoc {
                    file: path.to_owned(),
                    index,
                    format,
                    legacy: true,
                    value: converted.value,
                    positions: doc.positions,
                    warnings,
                }
            } else {
                RawDoc {
                    file: path.to_owned(),
                    index,
                    format,
                    legacy: false,
                    value: doc.value,
                    positions: doc.positions,
                    warnings: Vec::new(),
                }
            }
        })
        .collect())
}

/// The JSON Schema (draft 2020-12) of a Pipeline manifest, generated from the types.
pub fn pipeline_schema() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12().into_generator();
    let mut schema = generator.into_root_schema_for::<Manifest>().to_value();
    schema::polish(&mut schema);
    if let Some(obj) = schema.as_object_mut() {
        obj.insert(
            "$id".into(),
            Value::from("https://executioner.dev/schemas/pipeline.schema.json"),
        );
    }
    schema
}
